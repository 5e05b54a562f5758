/**
 * Memory of a subscriber whose consumer has stalled, while a publisher sends messages of 64 bytes on a private
 * Mosquitto. Two parts, each runnable alone with `BENCH_MEMORY_PARTS` (default "qos0,qos1,stalled"):
 *
 * `qos0`, `qos1`: `BENCH_MEMORY_MESSAGES` (default 200,000) messages at that QoS, MQTT 3.1.1, to four subscribers:
 * - effect-mqtt with the default `IncomingQueue.bounded(1024)`: never reads `client.messages`;
 * - effect-mqtt with `IncomingQueue.unbounded`: never reads `client.messages`;
 * - MQTT.js, `on("message")` handing each message to an application buffer nobody reads (MQTT.js has no
 *   queue of its own: this is how a slow consumer is fed);
 * - MQTT.js with `handleMessage` never calling back (its back-pressure hook).
 *
 * `stalled`: `BENCH_MEMORY_STALLED_MESSAGES` (default 1,000,000) QoS 1 messages, on MQTT 3.1.1 and on MQTT 5, to
 * effect-mqtt with its default queue and to MQTT.js with `handleMessage` held, each on a fresh broker that keeps
 * every message a subscriber has not taken (`max_queued_messages 0`: no limit). effect-mqtt acknowledges a
 * QoS 1 message when the consumer takes it, not when it is queued, and on MQTT 5 announces Receive Maximum = the
 * queue's capacity (1024): a stalled consumer leaves the backlog with the broker. On MQTT 3.1.1 there is no
 * Receive Maximum (and this broker has no in-flight limit): the client stops reading the socket once its queue
 * is full, and the broker holds the rest. Every payload carries its sequence number: once the consumer resumes,
 * the subscriber counts distinct messages and duplicates. Mosquitto's own memory is shown apart (its RSS from
 * /proc, growth over the same span).
 *
 * Each subscriber runs in a child process of its own (this file, started with a role argument and
 * `--expose-gc`), so its memory is measured alone. Baseline: after connecting and subscribing, after `gc()`.
 * Then the publisher (effect-mqtt, in this process) sends everything: QoS 0 completes when written, QoS 1 on the
 * broker's PUBACK, which does not depend on the subscriber. Once it is done the subscriber is sampled (after
 * `gc()`) every 500 ms until its memory is steady (at least 2 s, at most 30 s). Then the consumer resumes and
 * counts what it receives, to show what was lost.
 *
 * Always exits with 0: it is a report.
 */
import { IncomingQueue, MqttClient } from "effect-mqtt"
import * as Effect from "effect/Effect"
import * as Stream from "effect/Stream"
import * as mqtt from "mqtt"
import { Buffer } from "node:buffer"
import { type ChildProcess, fork } from "node:child_process"
import { fileURLToPath } from "node:url"
import { type Broker, startBroker } from "./broker.ts"
import * as Bench from "./support.ts"

const MESSAGES = Bench.envInt("BENCH_MEMORY_MESSAGES", 200_000)
const STALLED_MESSAGES = Bench.envInt("BENCH_MEMORY_STALLED_MESSAGES", 1_000_000)
const PARTS = Bench.envList("BENCH_MEMORY_PARTS", "qos0,qos1,stalled")
const WINDOW = 1000
const LIMIT_MB = 50
const STALLED_LIMIT_MB = 20
const MB = 1024 * 1024

type QoS = 0 | 1
type Kind = "effect-bounded" | "effect-unbounded" | "mqttjs-buffered" | "mqttjs-held"

const labels: Record<Kind, string> = {
  "effect-bounded": "effect-mqtt, IncomingQueue.bounded(1024) (default)",
  "effect-unbounded": "effect-mqtt, IncomingQueue.unbounded",
  "mqttjs-buffered": "MQTT.js, on(\"message\") into an app buffer",
  "mqttjs-held": "MQTT.js, handleMessage held (back-pressure hook)"
}
const kinds: ReadonlyArray<Kind> = ["effect-bounded", "effect-unbounded", "mqttjs-buffered", "mqttjs-held"]
const stalledKinds: ReadonlyArray<Kind> = ["effect-bounded", "mqttjs-held"]

/** What one subscriber process is asked to do. */
interface Job {
  readonly kind: Kind
  readonly qos: QoS
  readonly protocolVersion: 4 | 5
  readonly n: number
  /** payloads carry their sequence number (UInt32BE at 0): the subscriber counts distinct messages */
  readonly numbered: boolean
}

interface Sample {
  readonly rss: number
  readonly heapUsed: number
  readonly external: number
  /** messages the subscriber has taken in (MQTT.js) or consumed after resuming */
  readonly received: number
  /** numbered jobs: distinct sequence numbers received, and messages received again */
  readonly distinct: number
  readonly duplicates: number
  /** connections lost since the start: effect-mqtt's reconnects, MQTT.js's closes (it does not reconnect here) */
  readonly lost: number
}

type ToChild = { readonly type: "sample" } | { readonly type: "resume" } | { readonly type: "exit" }
type FromChild =
  | { readonly type: "ready"; readonly sample: Sample }
  | { readonly type: "sample"; readonly sample: Sample }
  | { readonly type: "error"; readonly message: string }

// ---------------------------------------------------------------------------------------------------------
// the subscriber (child process)
// ---------------------------------------------------------------------------------------------------------

/** Counts what a subscriber receives; for numbered jobs, which sequence numbers, and how often. */
const makeCounter = (job: Job) => {
  const seen = job.numbered ? new Uint8Array(job.n) : undefined
  const counts = { received: 0, distinct: 0, duplicates: 0, lost: 0 }
  const count = (payload: Uint8Array) => {
    counts.received++
    if (seen === undefined || payload.length < 4) return
    const seq = ((payload[0] << 24) | (payload[1] << 16) | (payload[2] << 8) | payload[3]) >>> 0
    if (seq >= seen.length) return
    if (seen[seq] === 0) {
      seen[seq] = 1
      counts.distinct++
    } else counts.duplicates++
  }
  return { counts, count }
}

/** effect-mqtt: subscribes, then never reads `client.messages` until `resumed`. */
const effectSubscriber = (
  job: Job,
  url: string,
  topic: string,
  count: (payload: Uint8Array) => void,
  ready: (metrics: Effect.Effect<MqttClient.Metrics>) => void,
  resumed: Promise<void>
) =>
  Effect.scoped(Effect.gen(function*() {
    const client = yield* MqttClient.make({
      url,
      protocolVersion: job.protocolVersion,
      queue: job.kind === "effect-bounded" ? IncomingQueue.bounded(1024) : IncomingQueue.unbounded
    })
    yield* client.subscribe(topic, { qos: job.qos })
    ready(client.metrics)
    // the consumer is stalled until the parent says otherwise
    yield* Effect.promise(() => resumed)
    yield* Stream.runForEachArray(client.messages, (messages) =>
      Effect.sync(() => {
        for (const message of messages) count(message.payload)
      }))
  }))

/** MQTT.js: subscribes; holds messages back (buffered or held) until the returned `resume` is called. */
const mqttjsSubscriber = async (
  job: Job,
  url: string,
  topic: string,
  count: (payload: Uint8Array) => void,
  lost: () => void
) => {
  const client = await mqtt.connectAsync(url, {
    protocolVersion: job.protocolVersion,
    reconnectPeriod: 0,
    keepalive: 60
  })
  client.on("close", lost)
  let resume: () => void
  if (job.kind === "mqttjs-buffered") {
    const buffer: Array<Buffer> = []
    client.on("message", (_topic, payload) => {
      buffer.push(payload)
      count(payload)
    })
    resume = () => {
      buffer.length = 0
    }
  } else {
    let held: Array<() => void> = []
    let holding = true
    client.on("message", (_topic, payload) => count(payload))
    client.handleMessage = (_packet, callback) => {
      if (holding) held.push(() => callback())
      else callback()
    }
    resume = () => {
      holding = false
      const waiting = held
      held = []
      for (const callback of waiting) callback()
    }
  }
  await client.subscribeAsync(topic, { qos: job.qos })
  return resume
}

const subscriber = async (job: Job, url: string, topic: string) => {
  const send = (message: FromChild) => process.send?.(message)
  // never outlive the parent
  setTimeout(() => process.exit(0), 900_000).unref()
  process.on("disconnect", () => process.exit(0))
  const { count, counts } = makeCounter(job)
  let metrics: Effect.Effect<MqttClient.Metrics> | undefined
  const sample = (): Sample => {
    if (metrics !== undefined) counts.lost = Effect.runSync(metrics).reconnects
    Bench.gc()
    const m = process.memoryUsage()
    return { rss: m.rss, heapUsed: m.heapUsed, external: m.external + m.arrayBuffers, ...counts }
  }
  let resume: () => void = () => {}

  if (job.kind === "effect-bounded" || job.kind === "effect-unbounded") {
    const resumed = new Promise<void>((resolve) => {
      resume = resolve
    })
    const ready = (clientMetrics: Effect.Effect<MqttClient.Metrics>) => {
      metrics = clientMetrics
      send({ type: "ready", sample: sample() })
    }
    Effect.runPromise(effectSubscriber(job, url, topic, count, ready, resumed)).catch((error) =>
      send({ type: "error", message: String(error) })
    )
  } else {
    resume = await mqttjsSubscriber(job, url, topic, count, () => counts.lost++)
    send({ type: "ready", sample: sample() })
  }

  process.on("message", (message: ToChild) => {
    switch (message.type) {
      case "sample":
        return send({ type: "sample", sample: sample() })
      case "resume":
        return resume()
      case "exit":
        return process.exit(0)
    }
  })
}

// ---------------------------------------------------------------------------------------------------------
// the parent
// ---------------------------------------------------------------------------------------------------------

class Child {
  readonly process: ChildProcess
  private waiting: Array<(message: FromChild) => void> = []
  exited = false

  constructor(job: Job, url: string, topic: string) {
    this.process = fork(fileURLToPath(import.meta.url), ["subscriber", JSON.stringify(job), url, topic], {
      // the parent's flags (--conditions=effect-mqtt-source: the client from its source), and gc()
      execArgv: [...process.execArgv, "--expose-gc"],
      stdio: ["ignore", "inherit", "inherit", "ipc"]
    })
    this.process.on("message", (message: FromChild) => {
      const waiter = this.waiting.shift()
      if (waiter !== undefined) waiter(message)
    })
    this.process.once("exit", () => {
      this.exited = true
      for (const waiter of this.waiting.splice(0)) waiter({ type: "error", message: "the subscriber exited" })
    })
  }

  next(timeoutMs: number): Promise<FromChild> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        const index = this.waiting.indexOf(waiter)
        if (index >= 0) this.waiting.splice(index, 1)
        resolve({ type: "error", message: `no answer from the subscriber in ${timeoutMs} ms` })
      }, timeoutMs)
      const waiter = (message: FromChild) => {
        clearTimeout(timer)
        resolve(message)
      }
      this.waiting.push(waiter)
    })
  }

  async sample(): Promise<Sample> {
    if (this.exited) throw new Error("the subscriber exited")
    const answer = this.next(10_000)
    this.process.send({ type: "sample" } satisfies ToChild)
    const message = await answer
    if (message.type === "error") throw new Error(message.message)
    return message.sample
  }

  resume(): void {
    this.process.send({ type: "resume" } satisfies ToChild)
  }

  async stop(): Promise<void> {
    if (this.exited) return
    const exited = new Promise<void>((resolve) => this.process.once("exit", () => resolve()))
    this.process.send({ type: "exit" } satisfies ToChild)
    const timer = setTimeout(() => this.process.kill("SIGKILL"), 3000)
    await exited
    clearTimeout(timer)
  }
}

/** The payload of the i-th message: 64 bytes, numbered (UInt32BE at 0) or all alike. */
const ALIKE = Buffer.alloc(64, "x")
const payloadOf = (numbered: boolean) => (i: number) => {
  if (!numbered) return ALIKE
  const payload = Buffer.alloc(64, "x")
  payload.writeUInt32BE(i, 0)
  return payload
}

/**
 * Publishes `n` messages with effect-mqtt: QoS 0 in batches, QoS 1 with a window of outstanding publishes (the
 * broker has no in-flight limit: as many in flight as the window).
 */
const publishAll = (url: string, topic: string, job: Job): Promise<number> =>
  Effect.scoped(Effect.gen(function*() {
    const client = yield* MqttClient.make({ url, maxInflight: WINDOW })
    const payload = payloadOf(job.numbered)
    const start = performance.now()
    yield* Bench.publishEach((i) => client.publish(topic, payload(i), { qos: job.qos }), {
      n: job.n,
      qos: job.qos,
      window: WINDOW
    })
    return performance.now() - start
  })).pipe(Effect.timeout(Math.max(120_000, job.n / 5)), Effect.runPromise)

interface Outcome {
  readonly baseline: Sample
  readonly stalled: Sample
  /** after the consumer resumed, once everything arrived or nothing more came */
  readonly resumed: Sample
  /** the broker's RSS at the subscriber's baseline and when it was stalled */
  readonly broker: { readonly baseline: number; readonly stalled: number }
  readonly publishMs: number
}

/** Samples the stalled subscriber until its memory is steady: at least 2 s, at most 30 s. */
const steady = async (child: Child): Promise<Sample> => {
  const started = performance.now()
  let last = await child.sample()
  let steadySince = performance.now()
  for (;;) {
    await Bench.sleep(500)
    const now = await child.sample()
    const t = performance.now()
    if (Math.abs(now.rss - last.rss) > 2 * MB || now.received !== last.received) steadySince = t
    last = now
    if (t - started >= 2000 && t - steadySince >= 2000) return last
    if (t - started >= 30_000) return last
  }
}

/** Resumes the consumer and samples until all `n` arrived, nothing came for 3 s, or the cap passed. */
const resumed = async (child: Child, n: number): Promise<Sample> => {
  child.resume()
  let last: Sample | undefined
  let quietSince = performance.now()
  const start = performance.now()
  for (;;) {
    await Bench.sleep(250)
    const now = await child.sample()
    const t = performance.now()
    if (now.received !== last?.received) quietSince = t
    last = now
    if (now.received >= n || t - quietSince > 3000 || t - start > Math.max(60_000, n / 10)) return last
  }
}

const scenario = async (broker: Broker, job: Job): Promise<Outcome> => {
  const topic = `bench/memory/${process.pid}/${job.kind}/${job.qos}/${job.protocolVersion}/${Date.now().toString(36)}`
  const child = new Child(job, broker.url, topic)
  try {
    const ready = await child.next(20_000)
    if (ready.type !== "ready") throw new Error(ready.type === "error" ? ready.message : "unexpected message")
    const brokerBaseline = Bench.procRss(broker.pid)
    const publishMs = await publishAll(broker.url, topic, job)
    process.stderr.write(`    published in ${(publishMs / 1000).toFixed(1)} s\n`)
    const stalled = await steady(child)
    const brokerStalled = Bench.procRss(broker.pid)
    process.stderr.write(`    steady: the consumer resumes\n`)
    return {
      baseline: ready.sample,
      stalled,
      resumed: await resumed(child, job.n),
      broker: { baseline: brokerBaseline, stalled: brokerStalled },
      publishMs
    }
  } finally {
    await child.stop()
  }
}

const mb = (bytes: number) => (bytes / MB).toFixed(1)
const errorOf = (error: unknown) => `error: ${error instanceof Error ? error.message : String(error)}`

/** The table of the `qos0` or `qos1` part: four subscribers on one broker; its floor. */
const qosTable = async (broker: Broker, qos: QoS, floors: Array<Array<string>>) => {
  const rows: Array<Array<string>> = []
  let boundedRss = NaN
  for (const kind of kinds) {
    process.stderr.write(`  QoS ${qos}: ${labels[kind]}...\n`)
    let outcome: Outcome
    try {
      outcome = await scenario(broker, { kind, qos, protocolVersion: 4, n: MESSAGES, numbered: false })
    } catch (error) {
      rows.push([labels[kind], errorOf(error), "", "", "", "", ""])
      continue
    }
    const rss = outcome.stalled.rss - outcome.baseline.rss
    const heap = outcome.stalled.heapUsed - outcome.baseline.heapUsed
    const external = outcome.stalled.external - outcome.baseline.external
    if (kind === "effect-bounded") {
      boundedRss = rss
      const pass = rss < LIMIT_MB * MB && heap < LIMIT_MB * MB
      floors.push([
        `QoS ${qos}: bounded queue, stalled consumer: growth < ${LIMIT_MB} MB`,
        `RSS ${mb(rss)} MB, heap ${mb(heap)} MB`,
        pass ? "PASS" : "FAIL"
      ])
    }
    rows.push([
      labels[kind],
      mb(rss),
      mb(heap),
      mb(external),
      kind === "effect-bounded" ? "1.0x" : Number.isFinite(boundedRss) && boundedRss > 0 ?
        (rss / boundedRss).toFixed(1) + "x" :
        "n/a",
      kind.startsWith("effect") ? "0 (stalled)" : Bench.fmt(outcome.stalled.received),
      Bench.fmt(outcome.resumed.received)
    ])
  }
  console.log(`## QoS ${qos}\n`)
  console.log(
    Bench.table([
      "subscriber",
      "RSS growth MB",
      "heapUsed growth MB",
      "external+arrayBuffers MB",
      "RSS vs bounded",
      "taken in while stalled",
      "after resuming"
    ], rows)
  )
  console.log("")
}

/** The table of the `stalled` part: QoS 1 on MQTT 3.1.1 and 5, each subscriber on a fresh broker; its floors. */
const stalledTable = async (floors: Array<Array<string>>) => {
  const n = STALLED_MESSAGES
  const rows: Array<Array<string>> = []
  for (const protocolVersion of [4, 5] as const) {
    const protocol = protocolVersion === 4 ? "3.1.1" : "5"
    for (const kind of stalledKinds) {
      process.stderr.write(`  stalled, MQTT ${protocol}: ${labels[kind]}...\n`)
      // a fresh broker: its memory is this subscriber's backlog alone; no limit on what it queues for a client
      const broker = await startBroker({ maxQueuedMessages: 0 })
      let outcome: Outcome
      try {
        outcome = await scenario(broker, { kind, qos: 1, protocolVersion, n, numbered: true })
      } catch (error) {
        rows.push([protocol, labels[kind], errorOf(error), "", "", "", "", "", "", ""])
        continue
      } finally {
        await broker.stop()
      }
      const rss = outcome.stalled.rss - outcome.baseline.rss
      const heap = outcome.stalled.heapUsed - outcome.baseline.heapUsed
      const all = outcome.resumed.distinct === n
      if (kind === "effect-bounded") {
        const pass = rss < STALLED_LIMIT_MB * MB && heap < STALLED_LIMIT_MB * MB && all
        floors.push([
          `QoS 1, ${Bench.fmt(n)} messages, MQTT ${protocol}: stalled consumer growth < ${STALLED_LIMIT_MB} MB, ` +
          `every message arrives after resuming`,
          `RSS ${mb(rss)} MB, heap ${mb(heap)} MB, ${Bench.fmt(outcome.resumed.distinct)} of ${Bench.fmt(n)}`,
          pass ? "PASS" : "FAIL"
        ])
      }
      rows.push([
        protocol,
        labels[kind],
        mb(rss),
        mb(heap),
        mb(outcome.broker.stalled - outcome.broker.baseline),
        kind.startsWith("effect") ? "0 (stalled)" : Bench.fmt(outcome.stalled.received),
        Bench.fmt(outcome.resumed.distinct),
        Bench.fmt(outcome.resumed.duplicates),
        String(outcome.resumed.lost),
        all ? "yes" : "NO"
      ])
    }
  }
  console.log(`## Stalled consumer, ${Bench.fmt(n)} QoS 1 messages\n`)
  console.log(
    `Each subscriber on a fresh Mosquitto with \`max_queued_messages 0\` (no limit); "Mosquitto RSS growth": the ` +
      `broker holding what the subscriber has not taken. "after resuming": distinct messages received in all.\n`
  )
  console.log(
    Bench.table([
      "MQTT",
      "subscriber",
      "client RSS growth MB",
      "heapUsed growth MB",
      "Mosquitto RSS growth MB",
      "taken in while stalled",
      "after resuming",
      "duplicates",
      "connections lost",
      "every message arrived"
    ], rows)
  )
  console.log("")
}

const main = async () => {
  Bench.watchdog("memory", 40)
  const broker = await startBroker()
  console.log(
    `# Memory of a subscriber whose consumer stalls\n\n` +
      `node ${process.version}, mosquitto on 127.0.0.1:${broker.port}; the publisher (effect-mqtt, another ` +
      `process) sends ${Bench.fmt(MESSAGES)} messages of 64 bytes (the stalled part: ` +
      `${Bench.fmt(STALLED_MESSAGES)}); growth of the subscriber process from after subscribing to when the ` +
      `broker has sent what it can, both after gc(). "after resuming": messages the consumer gets once it reads ` +
      `again.\n`
  )
  const floors: Array<Array<string>> = []
  try {
    for (const qos of [0, 1] as const) if (PARTS.includes(`qos${qos}`)) await qosTable(broker, qos, floors)
  } finally {
    await broker.stop()
  }
  if (PARTS.includes("stalled")) await stalledTable(floors)
  console.log("## Floors\n")
  console.log(Bench.table(["floor", "measured", "result"], floors))
  console.log("")
  Bench.exit()
}

const [role, job, url, topic] = process.argv.slice(2)
if (role === "subscriber") {
  subscriber(JSON.parse(job) as Job, url, topic).catch((error) => {
    process.send?.({ type: "error", message: String(error) } satisfies FromChild)
  })
} else {
  main().catch((error) => {
    console.log(`memory: failed: ${error instanceof Error ? error.stack : String(error)}`)
    Bench.exit()
  })
}
