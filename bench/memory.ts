/**
 * Memory of a subscriber whose consumer has stalled, while a publisher sends `BENCH_MEMORY_MESSAGES`
 * (default 200,000) messages of 64 bytes, at QoS 0 and QoS 1, on a private Mosquitto.
 *
 * Each subscriber runs in a child process of its own (this file, started with a role argument and
 * `--expose-gc`), so its memory is measured alone:
 * - effect-mqtt with the default `IncomingQueue.bounded(1024)`: never reads `client.messages`;
 * - effect-mqtt with `IncomingQueue.unbounded`: never reads `client.messages`;
 * - MQTT.js, `on("message")` handing each message to an application buffer nobody reads (MQTT.js has no
 *   queue of its own: this is how a slow consumer is fed);
 * - MQTT.js with `handleMessage` never calling back (its back-pressure hook).
 *
 * Baseline: after connecting and subscribing, after `gc()`. Then the publisher (effect-mqtt, in this process)
 * sends everything: QoS 0 completes when written, QoS 1 on the broker's PUBACK, which does not depend on the
 * subscriber. Once it is done the subscriber is sampled (after `gc()`) every 500 ms until its memory is steady
 * (at least 2 s, at most 30 s). Then the consumer resumes and counts what it receives, to show what was lost.
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
import { startBroker } from "./broker.ts"
import * as Bench from "./support.ts"

const MESSAGES = Bench.envInt("BENCH_MEMORY_MESSAGES", 200_000)
const WINDOW = 1000
const PAYLOAD = Buffer.alloc(64, "x")
const LIMIT_MB = 50
const MB = 1024 * 1024

type QoS = 0 | 1
type Kind = "effect-bounded" | "effect-unbounded" | "mqttjs-buffered" | "mqttjs-held"

const kinds: ReadonlyArray<{ readonly kind: Kind; readonly label: string }> = [
  { kind: "effect-bounded", label: "effect-mqtt, IncomingQueue.bounded(1024) (default)" },
  { kind: "effect-unbounded", label: "effect-mqtt, IncomingQueue.unbounded" },
  { kind: "mqttjs-buffered", label: "MQTT.js, on(\"message\") into an app buffer" },
  { kind: "mqttjs-held", label: "MQTT.js, handleMessage held (back-pressure hook)" }
]

interface Sample {
  readonly rss: number
  readonly heapUsed: number
  readonly external: number
  /** messages the subscriber has taken in (MQTT.js) or consumed after resuming; -1 when unknown */
  readonly received: number
}

type ToChild = { readonly type: "sample" } | { readonly type: "resume" } | { readonly type: "exit" }
type FromChild =
  | { readonly type: "ready"; readonly sample: Sample }
  | { readonly type: "sample"; readonly sample: Sample }
  | { readonly type: "error"; readonly message: string }

// ---------------------------------------------------------------------------------------------------------
// the subscriber (child process)
// ---------------------------------------------------------------------------------------------------------

const subscriber = async (kind: Kind, qos: QoS, url: string, topic: string) => {
  const send = (message: FromChild) => process.send?.(message)
  // never outlive the parent
  setTimeout(() => process.exit(0), 300_000).unref()
  process.on("disconnect", () => process.exit(0))
  let received = 0
  const sample = (): Sample => {
    Bench.gc()
    const m = process.memoryUsage()
    return { rss: m.rss, heapUsed: m.heapUsed, external: m.external + m.arrayBuffers, received }
  }
  let resume: () => void = () => {}

  if (kind === "effect-bounded" || kind === "effect-unbounded") {
    let resolveResumed: () => void = () => {}
    const resumed = new Promise<void>((resolve) => {
      resolveResumed = resolve
    })
    resume = () => resolveResumed()
    const program = Effect.scoped(Effect.gen(function*() {
      const client = yield* MqttClient.make({
        url,
        queue: kind === "effect-bounded" ? IncomingQueue.bounded(1024) : IncomingQueue.unbounded
      })
      yield* client.subscribe(topic, { qos })
      send({ type: "ready", sample: sample() })
      // the consumer is stalled until the parent says otherwise
      yield* Effect.promise(() => resumed)
      yield* Stream.runForEachArray(client.messages, (messages) =>
        Effect.sync(() => {
          received += messages.length
        }))
    }))
    Effect.runPromise(program).catch((error) => send({ type: "error", message: String(error) }))
  } else {
    const client = await mqtt.connectAsync(url, { reconnectPeriod: 0, keepalive: 60 })
    if (kind === "mqttjs-buffered") {
      const buffer: Array<Buffer> = []
      client.on("message", (_topic, payload) => {
        buffer.push(payload)
        received++
      })
      resume = () => {
        buffer.length = 0
      }
    } else {
      let held: Array<() => void> = []
      let holding = true
      client.on("message", () => {
        received++
      })
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
    await client.subscribeAsync(topic, { qos })
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

  constructor(kind: Kind, qos: QoS, url: string, topic: string) {
    this.process = fork(fileURLToPath(import.meta.url), ["subscriber", kind, String(qos), url, topic], {
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

/** Publishes `n` messages with effect-mqtt: QoS 0 in batches, QoS 1 with a window of outstanding publishes. */
const publishAll = (url: string, topic: string, qos: QoS, n: number): Promise<number> =>
  Effect.scoped(Effect.gen(function*() {
    const client = yield* MqttClient.make({ url })
    const start = performance.now()
    yield* Bench.publishEach(() => client.publish(topic, PAYLOAD, { qos }), { n, qos, mode: "window", window: WINDOW })
    return performance.now() - start
  })).pipe(Effect.timeout(120_000), Effect.runPromise)

interface Outcome {
  readonly baseline: Sample
  readonly stalled: Sample
  readonly publishMs: number
  readonly afterResume: number
  readonly error?: string
}

const scenario = async (url: string, kind: Kind, qos: QoS): Promise<Outcome> => {
  const topic = `bench/memory/${process.pid}/${kind}/${qos}/${Date.now().toString(36)}`
  const child = new Child(kind, qos, url, topic)
  try {
    const ready = await child.next(20_000)
    if (ready.type !== "ready") throw new Error(ready.type === "error" ? ready.message : "unexpected message")
    const baseline = ready.sample
    const publishMs = await publishAll(url, topic, qos, MESSAGES)
    // until the subscriber's memory is steady: at least 2 s, at most 30 s after the publisher is done
    const started = performance.now()
    let last = await child.sample()
    let steadySince = performance.now()
    for (;;) {
      await Bench.sleep(500)
      const now = await child.sample()
      const t = performance.now()
      if (Math.abs(now.rss - last.rss) > 2 * MB || now.received !== last.received) steadySince = t
      last = now
      if (t - started >= 2000 && t - steadySince >= 2000) break
      if (t - started >= 30_000) break
    }
    const stalled = last
    // the consumer resumes: how many of the messages arrive in the end
    child.resume()
    let count = -1
    let quietSince = performance.now()
    const resumed = performance.now()
    for (;;) {
      await Bench.sleep(250)
      const now = await child.sample()
      const t = performance.now()
      if (now.received !== count) quietSince = t
      count = now.received
      if (count >= MESSAGES || t - quietSince > 3000 || t - resumed > 60_000) break
    }
    return { baseline, stalled, publishMs, afterResume: count }
  } finally {
    await child.stop()
  }
}

const mb = (bytes: number) => (bytes / MB).toFixed(1)

const main = async () => {
  Bench.watchdog("memory", 20)
  const broker = await startBroker()
  console.log(
    `# Memory of a subscriber whose consumer stalls\n\n` +
      `node ${process.version}, mosquitto on 127.0.0.1:${broker.port}; the publisher (effect-mqtt, another ` +
      `process) sends ${Bench.fmt(MESSAGES)} messages of ${PAYLOAD.length} bytes; growth of the ` +
      `subscriber process from after subscribing to when the broker has sent what it can, both after gc(). ` +
      `"after resuming": messages the consumer gets once it reads again (of ${Bench.fmt(MESSAGES)}).\n`
  )
  const floors: Array<Array<string>> = []
  try {
    for (const qos of [0, 1] as const) {
      const rows: Array<Array<string>> = []
      let boundedRss = NaN
      for (const { kind, label } of kinds) {
        process.stderr.write(`  QoS ${qos}: ${label}...\n`)
        let outcome: Outcome
        try {
          outcome = await scenario(broker.url, kind, qos)
        } catch (error) {
          rows.push([label, `error: ${error instanceof Error ? error.message : String(error)}`, "", "", "", "", ""])
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
          label,
          mb(rss),
          mb(heap),
          mb(external),
          kind === "effect-bounded" ? "1.0x" : Number.isFinite(boundedRss) && boundedRss > 0 ?
            (rss / boundedRss).toFixed(1) + "x" :
            "n/a",
          outcome.stalled.received < 0 || kind.startsWith("effect") ?
            "0 (stalled)" :
            Bench.fmt(outcome.stalled.received),
          Bench.fmt(outcome.afterResume)
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
  } finally {
    await broker.stop()
  }
  console.log("## Floors\n")
  console.log(Bench.table(["floor", "measured", "result"], floors))
  console.log("")
  Bench.exit()
}

const [role, kind, qos, url, topic] = process.argv.slice(2)
if (role === "subscriber") {
  subscriber(kind as Kind, Number(qos) as QoS, url, topic).catch((error) => {
    process.send?.({ type: "error", message: String(error) } satisfies FromChild)
  })
} else {
  main().catch((error) => {
    console.log(`memory: failed: ${error instanceof Error ? error.stack : String(error)}`)
    Bench.exit()
  })
}
