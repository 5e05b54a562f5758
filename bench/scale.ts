/**
 * Scale: how the client's cost grows with the work, side by side with MQTT.js in one run, on a private
 * Mosquitto (no in-flight limit, queues that never drop during a run). Five sections:
 *
 * - routing: 1, 100 and 10,000 subscription filters (distinct wildcards, `route/<i>/+/v`) on one MQTT 3.1.1
 *   subscriber; each message matches one of them. effect-mqtt with one `subscription()` stream per filter (each
 *   message routed to its stream through the topic trie; the messages spread over the filters, or all to the
 *   last one), effect-mqtt with the filters on `messages` (no routing), MQTT.js (one `message` handler: no
 *   routing; the application would have to find the filter itself). The messages come from bench/peer.ts (a
 *   process of its own, never the bottleneck), so msg/s is the subscriber's limit and the CPU is its own;
 * - clients: 1,000 idle clients connected from one process (a child process of its own per library, measured
 *   after `gc()`): memory per client, time to connect them all (100 at a time);
 * - payload: 64 B, 16 KB and 1 MB messages at QoS 0, one publisher and one subscriber: MB/s, against the broker's
 *   own limit measured with framing-only clients (raw sockets, pre-encoded packets);
 * - latency: publish-to-receive p50/p99/p99.9 at 1,000, 5,000, 20,000 and again 1,000 messages/s (from 16 s, the JIT
 *   done), QoS 0 and 1, beside a floor of raw sockets that only frame (publisher and
 *   subscriber in one child process per run; the publish time travels in the payload), against Mosquitto as
 *   Debian ships it and against a second Mosquitto with `set_tcp_nodelay true`; then 1,000/s only with both
 *   libraries at the same moments (an effect-mqtt process and an MQTT.js process started together in each run),
 *   against each Mosquitto;
 * - group: 1, 2 and 4 consumer processes sharing `$share/<group>/...` (effect-mqtt: `ConsumerGroup.run`,
 *   prefetch 10; MQTT.js: a shared subscription with Receive Maximum 10), 30,000 QoS 1 messages: total messages/s
 *   and what each process got.
 *
 * Run: `node --conditions=effect-mqtt-source --expose-gc bench/scale.ts` (about 35 minutes, 29 of them latency).
 * Environment: BENCH_SCALE (sections, default "routing,clients,payload,latency,group"), BENCH_LATENCY_RUNS
 * (default 5). Always exits with 0: it is a report.
 */
import { ConsumerGroup, MqttClient } from "effect-mqtt"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as mqtt from "mqtt"
import * as MqttPacket from "mqtt-packet"
import { Buffer } from "node:buffer"
import { type ChildProcess, fork } from "node:child_process"
import { createRequire } from "node:module"
import * as Os from "node:os"
import { performance } from "node:perf_hooks"
import { fileURLToPath } from "node:url"
import { type Broker, startBroker } from "./broker.ts"
import { type Job, type Peer, startPeer, type Usage, usageOf } from "./peerControl.ts"
import { publishPacket, rawConnect, rawPair, rawWrite } from "./raw.ts"
import { gc, median, nextTurn, procCpu, sleep, table } from "./support.ts"

const SECTIONS = (process.env.BENCH_SCALE ?? "routing,clients,payload,latency,group").split(",").map((s) => s.trim())

const fmt = (n: number, digits = 0) =>
  Number.isFinite(n) ? n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits }) : "-"

/** Polls until `done()` or the deadline; true when done. */
const waitFor = async (done: () => boolean, ms: number): Promise<boolean> => {
  const deadline = performance.now() + ms
  while (!done()) {
    if (performance.now() > deadline) return false
    await sleep(5)
  }
  return true
}

let topicSeq = 0
const fresh = (tag: string) => `${tag}${process.pid}x${Date.now().toString(36)}x${topicSeq++}`

// ---------------------------------------------------------------------------------------------------------
// routing (against bench/peer.ts, not the broker)
// ---------------------------------------------------------------------------------------------------------

const ROUTING_MESSAGES = 100_000
const ROUTING_RUNS = 3

type Subscriber = "effect-streams" | "effect-messages" | "mqttjs"

interface Routed extends Usage {
  /** from the first SUBSCRIBE to the last SUBACK */
  readonly setupMs: number
}

const filtersOf = (n: number) => Array.from({ length: n }, (_, i) => `route/${i}/+/v`)

/** effect-mqtt: a `subscription()` stream per filter (each message routed to its stream), or all on `messages`. */
const routingEffect = async (peer: Peer, job: Job, streams: boolean): Promise<Routed> => {
  let setupMs = 0
  const usage = await usageOf((start, end) =>
    Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const client = yield* MqttClient.make({ url: peer.url, protocolVersion: job.version })
      let resolve = () => {}
      const done = new Promise<void>((r) => (resolve = r))
      let count = 0
      const counter = (messages: ReadonlyArray<unknown>) =>
        Effect.sync(() => {
          count += messages.length
          if (count >= job.n) {
            end()
            resolve()
          }
        })
      const filters = filtersOf(job.filters!)
      const setup = performance.now()
      if (streams) {
        yield* Effect.forEach(
          filters,
          (filter) =>
            Effect.flatMap(client.subscription(filter), (stream) =>
              Effect.forkScoped(Stream.runForEachArray(stream, counter))),
          { concurrency: 200, discard: true }
        )
      } else {
        for (let i = 0; i < filters.length; i += 500) {
          yield* client.subscribe(filters.slice(i, i + 500))
        }
        yield* Effect.forkScoped(Stream.runForEachArray(client.messages, counter))
      }
      setupMs = performance.now() - setup
      start()
      peer.go()
      yield* Effect.promise(() =>
        done
      )
    })))
  )
  return { ...usage, setupMs }
}

/** MQTT.js: one `message` handler for all filters (no routing: the application would find the filter itself). */
const routingMqttJs = async (peer: Peer, job: Job): Promise<Routed> => {
  let setupMs = 0
  const usage = await usageOf(async (start, end) => {
    const client = await mqtt.connectAsync(peer.url, { protocolVersion: job.version, reconnectPeriod: 0 })
    const filters = filtersOf(job.filters!)
    const setup = performance.now()
    for (let i = 0; i < filters.length; i += 500) await client.subscribeAsync(filters.slice(i, i + 500), { qos: 0 })
    setupMs = performance.now() - setup
    await new Promise<void>((resolve) => {
      let count = 0
      client.on("message", () => {
        if (++count === job.n) {
          end()
          resolve()
        }
      })
      start()
      peer.go()
    })
    await client.endAsync()
  })
  return { ...usage, setupMs }
}

const routing = async () => {
  const peer = await startPeer()
  try {
    const rows: Array<Array<string>> = []
    const variants: ReadonlyArray<readonly [string, Subscriber, "even" | "last"]> = [
      ["effect-mqtt: a subscription() stream per filter, messages spread over them", "effect-streams", "even"],
      ["effect-mqtt: a subscription() stream per filter, messages all to the last one", "effect-streams", "last"],
      ["effect-mqtt: the filters on `messages` (no routing)", "effect-messages", "even"],
      ["MQTT.js: one `message` handler (no routing)", "mqttjs", "even"]
    ]
    for (const filters of [1, 100, 10_000]) {
      for (const [label, subscriber, spread] of variants) {
        if (filters === 1 && spread === "last") continue
        process.stderr.write(`  routing: ${filters} filters, ${subscriber} (${spread})\n`)
        const job: Job = { mode: "receive", n: ROUTING_MESSAGES, version: 4, filters, spread }
        const runs: Array<Routed> = []
        // one warm-up run, then the measured ones
        for (let i = 0; i <= ROUTING_RUNS; i++) {
          gc()
          await peer.prepare(job)
          const r = subscriber === "mqttjs"
            ? await routingMqttJs(peer, job)
            : await routingEffect(peer, job, subscriber === "effect-streams")
          if (i > 0) runs.push(r)
        }
        const cpu = runs.map((r) => (1e6 * r.cpuSeconds) / ROUTING_MESSAGES)
        rows.push([
          fmt(filters),
          label,
          fmt(median(runs.map((r) => (ROUTING_MESSAGES / r.ms) * 1000))),
          `${fmt(median(cpu), 2)} (${fmt(Math.min(...cpu), 2)}–${fmt(Math.max(...cpu), 2)})`,
          `${fmt(median(runs.map((r) => r.setupMs)) / 1000, 2)} s`
        ])
      }
    }
    return `## Routing: subscription filters on one client (MQTT 3.1.1, QoS 0, ${
      fmt(ROUTING_MESSAGES)
    } messages of 64 B, each matching one filter \`route/<i>/+/v\`)\n\n` +
      table(["filters", "subscriber", "msg/s", "CPU µs/msg", "subscribing"], rows) +
      "\n\nThe messages come from bench/peer.ts, a minimal server in a process of its own that writes 64 KB at a " +
      "time and is never the bottleneck (through Mosquitto, which writes each packet with a system call of its " +
      "own, the CPU per message swings with how many messages each socket read brings). msg/s: the subscriber's " +
      "own limit; CPU: this process's, from the first message to the last (range over the runs in brackets); " +
      `the median of ${ROUTING_RUNS} runs after a warm-up. subscribing: from the first SUBSCRIBE to the last ` +
      "SUBACK (500 filters per SUBSCRIBE, or one per `subscription()`, 200 at a time).\n"
  } finally {
    peer.stop()
  }
}

// ---------------------------------------------------------------------------------------------------------
// many clients (a child process per library)
// ---------------------------------------------------------------------------------------------------------

const CLIENTS = 1000

interface ClientsResult {
  readonly connectMs: number
  readonly heapPerClient: number
  readonly rssPerClient: number
  readonly error?: string
}

const memory = () => {
  gc()
  gc()
  const m = process.memoryUsage()
  return { heap: m.heapUsed + m.external, rss: m.rss }
}

const clientsChild = async (kind: string, url: string, n: number): Promise<ClientsResult> => {
  await sleep(200)
  const base = memory()
  const start = performance.now()
  if (kind === "effect") {
    const scope = Effect.runSync(Scope.make())
    await Effect.runPromise(
      Effect.forEach(
        Array.from({ length: n }, (_, i) => i),
        () => Scope.provide(MqttClient.make({ url, keepAlive: 600 }), scope),
        { concurrency: 100, discard: true }
      )
    )
    const connectMs = performance.now() - start
    await sleep(1000)
    const after = memory()
    const result = {
      connectMs,
      heapPerClient: (after.heap - base.heap) / n,
      rssPerClient: (after.rss - base.rss) / n
    }
    await Effect.runPromise(Scope.close(scope, Exit.void))
    return result
  }
  const clients: Array<mqtt.MqttClient> = []
  let next = 0
  await Promise.all(Array.from({ length: 100 }, async () => {
    while (next < n) {
      next++
      clients.push(await mqtt.connectAsync(url, { reconnectPeriod: 0, keepalive: 600 }))
    }
  }))
  const connectMs = performance.now() - start
  await sleep(1000)
  const after = memory()
  for (const c of clients) c.end(true)
  return { connectMs, heapPerClient: (after.heap - base.heap) / n, rssPerClient: (after.rss - base.rss) / n }
}

const runChild = <A>(args: ReadonlyArray<string>, timeoutMs: number): Promise<A | { error: string }> =>
  new Promise((resolve) => {
    const child = fork(fileURLToPath(import.meta.url), [...args], {
      execArgv: [...process.execArgv.filter((a) => a !== "--expose-gc"), "--expose-gc"],
      stdio: ["ignore", "ignore", "inherit", "ipc"]
    })
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      resolve({ error: "timed out" })
    }, timeoutMs)
    child.once("message", (message) => {
      clearTimeout(timer)
      resolve(message as A)
      setTimeout(() => child.kill("SIGKILL"), 2000).unref()
    })
    child.once("exit", (code) => {
      clearTimeout(timer)
      resolve({ error: `exited with ${code}` })
    })
  })

const clients = async (broker: Broker) => {
  const rows: Array<Array<string>> = []
  for (const [kind, label] of [["effect", "effect-mqtt"], ["mqttjs", "MQTT.js"]] as const) {
    process.stderr.write(`  clients: ${label}\n`)
    const r = await runChild<ClientsResult>(["clients", kind, broker.url, String(CLIENTS)], 120_000)
    rows.push(
      "error" in r && r.error !== undefined
        ? [label, r.error, "", ""]
        : [
          label,
          `${fmt((r as ClientsResult).connectMs / 1000, 2)} s`,
          `${fmt((r as ClientsResult).heapPerClient / 1024, 1)} KB`,
          `${fmt((r as ClientsResult).rssPerClient / 1024, 1)} KB`
        ]
    )
  }
  return `## Many clients: ${fmt(CLIENTS)} idle clients in one process (MQTT 3.1.1, connected 100 at a time)\n\n` +
    table(["library", "time to connect all", "heap + external per client", "RSS per client"], rows) +
    "\n\nMemory after `gc()`, one second after the last CONNACK, less the process's own before the first.\n"
}

// ---------------------------------------------------------------------------------------------------------
// payload sizes
// ---------------------------------------------------------------------------------------------------------

const PAYLOADS: ReadonlyArray<readonly [string, number, number]> = [
  ["64 B", 64, 50_000],
  ["16 KB", 16 * 1024, 20_000],
  ["1 MB", 1024 * 1024, 300]
]

/** The broker's limit: a raw publisher and a raw subscriber that only frame. */
const payloadRaw = async (broker: Broker, size: number, n: number): Promise<number> => {
  const topic = fresh("size/raw")
  const sub = await rawConnect(broker.port, fresh("raw"))
  const pub = await rawConnect(broker.port, fresh("raw"))
  try {
    const subscribed = new Promise<void>((resolve) => sub.once("data", () => resolve()))
    sub.write(MqttPacket.generate({ cmd: "subscribe", messageId: 1, subscriptions: [{ topic, qos: 0 }] }))
    await subscribed
    const packet = publishPacket(topic, Buffer.alloc(size, "x"))
    let bytes = 0
    sub.on("data", (chunk: Buffer) => {
      bytes += chunk.length
    })
    const start = performance.now()
    // writes of about 256 KB, as the clients' batched writes
    await rawWrite(pub, Array.from({ length: n }, () => packet), Math.max(1, Math.floor(262_144 / packet.length)))
    await waitFor(() => bytes >= packet.length * n, 60_000)
    return (bytes / (performance.now() - start)) * 1000
  } finally {
    sub.destroy()
    pub.destroy()
  }
}

const payloadEffect = (broker: Broker, size: number, n: number): Promise<number> =>
  Effect.scoped(Effect.gen(function*() {
    const topic = fresh("size/effect")
    const sub = yield* MqttClient.make({ url: broker.url })
    const pub = yield* MqttClient.make({ url: broker.url })
    yield* sub.subscribe(topic)
    let bytes = 0
    yield* Effect.forkScoped(Stream.runForEachArray(sub.messages, (messages) =>
      Effect.sync(() => {
        for (const m of messages) bytes += m.payload.length
      })))
    const payload = Buffer.alloc(size, "x")
    const start = performance.now()
    const batch = Math.max(1, Math.min(1000, Math.floor(1_000_000 / size)))
    for (let i = 0; i < n; i += batch) {
      yield* Effect.forEach(Array.from({ length: Math.min(batch, n - i) }), () => pub.publish(topic, payload), {
        discard: true
      })
      yield* Effect.promise(nextTurn)
    }
    yield* Effect.promise(() => waitFor(() => bytes >= size * n, 60_000))
    return (bytes / (performance.now() - start)) * 1000
  })).pipe(Effect.runPromise)

const payloadMqttJs = async (broker: Broker, size: number, n: number): Promise<number> => {
  const topic = fresh("size/mqttjs")
  const sub = await mqtt.connectAsync(broker.url, { reconnectPeriod: 0 })
  const pub = await mqtt.connectAsync(broker.url, { reconnectPeriod: 0 })
  try {
    await sub.subscribeAsync(topic, { qos: 0 })
    let bytes = 0
    sub.on("message", (_t, payload) => {
      bytes += payload.length
    })
    const payload = Buffer.alloc(size, "x")
    const start = performance.now()
    const batch = Math.max(1, Math.min(1000, Math.floor(1_000_000 / size)))
    let done = 0
    for (let i = 0; i < n; i += batch) {
      const end = Math.min(n, i + batch)
      for (let j = i; j < end; j++) pub.publish(topic, payload, { qos: 0 }, () => done++)
      await nextTurn()
      while (done < end) await nextTurn()
    }
    await waitFor(() => bytes >= size * n, 60_000)
    return (bytes / (performance.now() - start)) * 1000
  } finally {
    sub.end(true)
    pub.end(true)
  }
}

const payloads = async (broker: Broker) => {
  const rows: Array<Array<string>> = []
  const mb = (bytesPerSecond: number) => `${fmt(bytesPerSecond / 1e6, 1)} MB/s`
  for (const [label, size, n] of PAYLOADS) {
    process.stderr.write(`  payload: ${label}\n`)
    // the best of three: the first run of a size also warms the broker up
    let raw = 0
    for (let run = 0; run < 3; run++) raw = Math.max(raw, await payloadRaw(broker, size, n))
    // the median of three runs each, alternating the libraries
    const effectRuns: Array<number> = []
    const jsRuns: Array<number> = []
    for (let run = 0; run < 3; run++) {
      gc()
      effectRuns.push(await payloadEffect(broker, size, n))
      gc()
      jsRuns.push(await payloadMqttJs(broker, size, n))
    }
    const effect = median(effectRuns)
    const js = median(jsRuns)
    rows.push([
      label,
      fmt(n),
      mb(raw),
      `${mb(effect)} (${fmt((100 * effect) / raw)}%)`,
      `${mb(js)} (${fmt((100 * js) / raw)}%)`,
      `${(effect / js).toFixed(2)}x`
    ])
  }
  return `## Payload size (MQTT 3.1.1, QoS 0, one publisher and one subscriber)\n\n` +
    table(["payload", "messages", "broker limit (framing only)", "effect-mqtt", "MQTT.js", "ratio"], rows) +
    "\n\nMB/s of payload received, from the first publish to the last byte, the median of three runs; in brackets, of the broker's limit (the " +
    "best of three runs of a raw publisher and subscriber that only frame, writing about 256 KB at a time).\n"
}

// ---------------------------------------------------------------------------------------------------------
// latency
// ---------------------------------------------------------------------------------------------------------

const LATENCY_SECONDS = 4
const LATENCY_WARMUP_MS = 3000
/** The pause after each rate, for the last messages to arrive. */
const LATENCY_SETTLE_MS = 300

interface Latency {
  readonly p50: number
  readonly p99: number
  readonly p999: number
  readonly achieved: number
  readonly received: number
}

const percentiles = (samples: Array<number>, seconds: number): Latency => {
  const sorted = samples.sort((a, b) => a - b)
  const at = (p: number) =>
    sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]
  return { p50: at(0.5), p99: at(0.99), p999: at(0.999), achieved: sorted.length / seconds, received: sorted.length }
}

/**
 * Publishes at `rate` messages/s for the duration: every millisecond, the messages due so far, handed to `send` as
 * one batch; each payload carries the time it was made.
 */
const paced = async (rate: number, ms: number, send: (payloads: ReadonlyArray<Buffer>) => void): Promise<void> => {
  const start = performance.now()
  let issued = 0
  while (true) {
    const elapsed = performance.now() - start
    if (elapsed >= ms) return
    const target = Math.floor((elapsed * rate) / 1000)
    const batch: Array<Buffer> = []
    for (; issued < target; issued++) {
      const payload = Buffer.alloc(64)
      payload.writeDoubleLE(performance.now(), 0)
      batch.push(payload)
    }
    if (batch.length > 0) send(batch)
    await sleep(1)
  }
}

/** The time a payload was made, from its first 8 bytes (a Node read's payloads are `Buffer`s: read in place). */
const sentAt = (payload: Uint8Array): number =>
  Buffer.isBuffer(payload) ? payload.readDoubleLE(0) : Buffer.from(payload).readDoubleLE(0)

/**
 * The rates measured, in this order, by one process of each library after its warm-up. 1,000/s comes twice: from
 * 3 s after the start, and again from 16 s, when the JIT has compiled each library's paths (at 1,000/s, V8 is
 * still compiling and recompiling effect-mqtt's, and Effect's, functions 10 s in: `--trace-opt`).
 */
const LATENCY_RATES: ReadonlyArray<number> = [1000, 5000, 20_000, 1000]

/**
 * The rates of the paired runs (effect-mqtt and MQTT.js at the same moments): 1,000/s only, so that the two
 * processes together stay well within what the broker and the machine keep up with.
 */
const PAIRED_RATES: ReadonlyArray<number> = [1000, 1000, 1000, 1000]

/** The row label of the i-th point of `rates`: its rate, and when it starts for a repeated rate. */
const latencyPoint = (rates: ReadonlyArray<number>, i: number): string => {
  const rate = rates[i]
  if (rates.indexOf(rate) === rates.lastIndexOf(rate)) return fmt(rate)
  const start = LATENCY_WARMUP_MS + i * (LATENCY_SECONDS * 1000 + LATENCY_SETTLE_MS) + LATENCY_SETTLE_MS
  return `${fmt(rate)}, from ${Math.round(start / 1000)} s`
}

/** What a library's subscriber records: the latency of each message received while `measuring`. */
interface Recorder {
  samples: Array<number>
  measuring: boolean
}

/**
 * Warms up (LATENCY_WARMUP_MS at the first rate: the JIT compiles each library's publish and receive paths), then
 * measures each rate in turn for LATENCY_SECONDS, with LATENCY_SETTLE_MS after each for the last messages to arrive.
 */
const latencySeries = async (
  rates: ReadonlyArray<number>,
  publish: (payloads: ReadonlyArray<Buffer>) => void,
  recorder: Recorder
): Promise<Array<Latency>> => {
  await paced(rates[0], LATENCY_WARMUP_MS, publish)
  await sleep(LATENCY_SETTLE_MS)
  const out: Array<Latency> = []
  for (const rate of rates) {
    recorder.samples = []
    recorder.measuring = true
    await paced(rate, LATENCY_SECONDS * 1000, publish)
    await sleep(LATENCY_SETTLE_MS)
    recorder.measuring = false
    out.push(percentiles(recorder.samples, LATENCY_SECONDS))
  }
  return out
}

const latencyEffect = (url: string, qos: 0 | 1, rates: ReadonlyArray<number>): Promise<Array<Latency>> =>
  Effect.scoped(Effect.gen(function*() {
    const topic = fresh("lat/effect")
    const sub = yield* MqttClient.make({ url })
    const pub = yield* MqttClient.make({ url, maxInflight: 1000 })
    yield* sub.subscribe(topic, { qos })
    const recorder: Recorder = { samples: [], measuring: false }
    yield* Effect.forkScoped(Stream.runForEachArray(sub.messages, (messages) =>
      Effect.sync(() => {
        const now = performance.now()
        if (!recorder.measuring) return
        for (const m of messages) recorder.samples.push(now - sentAt(m.payload))
      })))
    // one fiber per batch, its publishes made one after the other, as MQTT.js's `publish` (which returns at once):
    // `publishAccepted` returns once the publish is in the session; the wait for its PUBACK is left alone
    const publish = (payloads: ReadonlyArray<Buffer>) =>
      Effect.runFork(Effect.forEach(payloads, (payload) => pub.publishAccepted(topic, payload, { qos }), {
        discard: true
      }))
    return yield* Effect.promise(() => latencySeries(rates, publish, recorder))
  })).pipe(Effect.runPromise)

const latencyMqttJs = async (url: string, qos: 0 | 1, rates: ReadonlyArray<number>): Promise<Array<Latency>> => {
  const topic = fresh("lat/mqttjs")
  const sub = await mqtt.connectAsync(url, { reconnectPeriod: 0 })
  const pub = await mqtt.connectAsync(url, { reconnectPeriod: 0 })
  try {
    await sub.subscribeAsync(topic, { qos })
    const recorder: Recorder = { samples: [], measuring: false }
    sub.on("message", (_t, payload) => {
      if (recorder.measuring) recorder.samples.push(performance.now() - payload.readDoubleLE(0))
    })
    const publish = (payloads: ReadonlyArray<Buffer>) => {
      for (const payload of payloads) pub.publish(topic, payload, { qos })
    }
    return await latencySeries(rates, publish, recorder)
  } finally {
    sub.end(true)
    pub.end(true)
  }
}

/**
 * The floor: a publisher and a subscriber on raw sockets that only frame (bench/raw.ts), each PUBLISH written at
 * once: what no client goes below on this machine and broker.
 */
const latencyRaw = async (url: string, qos: 0 | 1, rates: ReadonlyArray<number>): Promise<Array<Latency>> => {
  const recorder: Recorder = { samples: [], measuring: false }
  const now = () => performance.now()
  const pair = await rawPair(Number(new URL(url).port), fresh("raw"), fresh("lat/raw"), qos, (payload) => {
    if (recorder.measuring) recorder.samples.push(now() - payload.readDoubleLE(0))
  })
  try {
    return await latencySeries(rates, pair.publish, recorder)
  } finally {
    pair.close()
  }
}

/** Runs of each latency point (alternating the clients): a p99 of one run moves by a fraction of a millisecond. */
const LATENCY_RUNS = Math.max(1, Number(process.env.BENCH_LATENCY_RUNS ?? 5) || 5)

/** The median of each percentile over the runs. */
const medianLatency = (runs: ReadonlyArray<Latency>): Latency => ({
  p50: median(runs.map((r) => r.p50)),
  p99: median(runs.map((r) => r.p99)),
  p999: median(runs.map((r) => r.p999)),
  achieved: median(runs.map((r) => r.achieved)),
  received: median(runs.map((r) => r.received))
})

/**
 * One latency run in a child process of its own: a fresh heap for each run, so that neither library's figures
 * carry what an earlier run or section left to collect.
 */
const latencyRun = (
  kind: "effect" | "mqttjs" | "raw",
  url: string,
  qos: 0 | 1,
  rates: ReadonlyArray<number> = LATENCY_RATES
): Promise<Array<Latency>> =>
  new Promise((resolve, reject) => {
    const child = fork(fileURLToPath(import.meta.url), ["latency", kind, url, String(qos), rates.join(",")], {
      execArgv: process.execArgv,
      stdio: ["ignore", "ignore", "inherit", "ipc"]
    })
    child.once("message", (message) => {
      resolve(message as Array<Latency>)
      child.kill()
    })
    child.once("exit", (code) => reject(new Error(`the latency run exited with ${code}`)))
  })

const latencyChild = (kind: string, url: string, qos: 0 | 1, rates: ReadonlyArray<number>): Promise<Array<Latency>> =>
  kind === "effect"
    ? latencyEffect(url, qos, rates)
    : kind === "raw"
    ? latencyRaw(url, qos, rates)
    : latencyMqttJs(url, qos, rates)

/**
 * One latency table for each QoS: LATENCY_RUNS runs of each library and of the floor, one after the other; or,
 * `paired`, the 1,000/s comparison with the two libraries at the same moments: each run starts an effect-mqtt
 * process and an MQTT.js process together (their own topics, the same broker), so that both meet whatever else the
 * machine does at the same time. Between runs one after the other, the machine's load moves the p99 at 1,000/s by
 * more than the libraries differ (the floor's p99 moves as much).
 */
const latencyTable = async (broker: Broker, label: string, paired = false): Promise<string> => {
  const rates = paired ? PAIRED_RATES : LATENCY_RATES
  const rows: Array<Array<string>> = []
  const ms = (x: number) => fmt(x, 2)
  const figures = (l: Latency) => `${ms(l.p50)} / ${ms(l.p99)} / ${ms(l.p999)}`
  for (const qos of [0, 1] as const) {
    process.stderr.write(`  latency${paired ? ", paired" : ""} (${label}): QoS ${qos}\n`)
    // runs[k][i]: run k's figures at the i-th rate
    const effectRuns: Array<Array<Latency>> = []
    const mqttjsRuns: Array<Array<Latency>> = []
    const rawRuns: Array<Array<Latency>> = []
    for (let run = 0; run < LATENCY_RUNS; run++) {
      // which library goes (or, paired, is started) first changes from run to run: neither always meets what the
      // other leaves behind (the broker's state, the other process's start-up and compiling)
      if (paired) {
        const kinds = run % 2 === 0 ? (["effect", "mqttjs"] as const) : (["mqttjs", "effect"] as const)
        const results = await Promise.all(kinds.map((kind) => latencyRun(kind, broker.url, qos, rates)))
        effectRuns.push(results[kinds.indexOf("effect")])
        mqttjsRuns.push(results[kinds.indexOf("mqttjs")])
      } else {
        const order = (["effect", "mqttjs", "raw"] as const).map((_, i, all) => all[(i + run) % all.length])
        const results = new Map<string, Array<Latency>>()
        for (const kind of order) results.set(kind, await latencyRun(kind, broker.url, qos, rates))
        effectRuns.push(results.get("effect")!)
        mqttjsRuns.push(results.get("mqttjs")!)
        rawRuns.push(results.get("raw")!)
      }
    }
    for (let i = 0; i < rates.length; i++) {
      const effect = effectRuns.map((runs) => runs[i])
      const mqttjs = mqttjsRuns.map((runs) => runs[i])
      const e = medianLatency(effect)
      const j = medianLatency(mqttjs)
      const below = effect.filter((r, i) => r.p99 <= mqttjs[i].p99).length
      rows.push([
        String(qos),
        latencyPoint(rates, i),
        figures(e),
        figures(j),
        ...(paired ? [] : [figures(medianLatency(rawRuns.map((runs) => runs[i])))]),
        (e.p99 / j.p99).toFixed(2),
        `${below} of ${LATENCY_RUNS}`,
        `${fmt(e.achieved)} / ${fmt(j.achieved)}`
      ])
    }
  }
  return `### ${paired ? `Paired: both libraries at the same moments, ${label}` : label}\n\n` + table(
    [
      "QoS",
      "msg/s asked",
      "effect-mqtt p50 / p99 / p99.9 ms",
      "MQTT.js p50 / p99 / p99.9 ms",
      ...(paired ? [] : ["floor: raw sockets p50 / p99 / p99.9 ms"]),
      "p99 effect-mqtt / MQTT.js",
      "runs with effect-mqtt's p99 at or below",
      "received/s"
    ],
    rows
  )
}

const latency = async (broker: Broker) => {
  const noDelay = await startBroker({ tcpNoDelay: true })
  try {
    const nagle = await latencyTable(broker, "Mosquitto as Debian ships it (`set_tcp_nodelay false`)")
    const direct = await latencyTable(noDelay, "Mosquitto with `set_tcp_nodelay true`")
    const pairedNagle = await latencyTable(broker, "Mosquitto as Debian ships it", true)
    const pairedDirect = await latencyTable(noDelay, "Mosquitto with `set_tcp_nodelay true`", true)
    return `## Latency: publish to receive (MQTT 3.1.1, 64 B, ${LATENCY_SECONDS} s per rate, median of ${LATENCY_RUNS} runs)\n\n` +
      nagle + "\n\n" + direct + "\n\n" + pairedNagle + "\n\n" + pairedDirect +
      "\n\nPublisher and subscriber of one library in one process, a fresh process for each run and QoS: " +
      `${LATENCY_WARMUP_MS / 1000} s of warm-up at 1,000/s, then each rate in turn, and 1,000/s once more at the ` +
      "end: at 1,000/s V8 still compiles and recompiles effect-mqtt's and Effect's functions 10 s after the start " +
      "(`--trace-opt`), and the first 1,000/s row shows it; the last one is the client of a process that has run " +
      "16 s. The publisher is paced every millisecond. Each percentile is the median over the runs; the runs " +
      "alternate between the libraries and the floor (which goes first turns round from run to run), and the " +
      "next-to-last column counts the runs in which effect-mqtt's p99 was at or below that of the MQTT.js run of " +
      "the same round. The floor is a publisher and a " +
      "subscriber on raw sockets that only frame (bench/raw.ts): what the broker and the machine give with no client " +
      "library in the way. Without `set_tcp_nodelay`, Mosquitto holds a " +
      "small packet back while an earlier one is unacknowledged (Nagle's algorithm) and a subscriber that only " +
      "reads (QoS 0) acknowledges late; MQTT.js's own socket does the same (it does not set `noDelay`, " +
      "effect-mqtt does): whole runs then wait 10 to 40 ms a message. The paired tables run 1,000/s only, an " +
      "effect-mqtt process and an MQTT.js process started together in each run (the same warm-up and points; " +
      "each library started first in every other run), and count the runs in which effect-mqtt's p99 was at or below that of the MQTT.js process beside it.\n"
  } finally {
    await noDelay.stop()
  }
}

// ---------------------------------------------------------------------------------------------------------
// consumer group (child processes)
// ---------------------------------------------------------------------------------------------------------

const GROUP_MESSAGES = 30_000

type MemberMessage = { readonly type: "count"; readonly count: number }

const memberChild = async (kind: string, url: string, group: string, filter: string, member: string) => {
  let count = 0
  setInterval(() => process.send?.({ type: "count", count } satisfies MemberMessage), 50)
  process.on("disconnect", () => process.exit(0))
  if (kind === "effect") {
    await Effect.runPromise(
      ConsumerGroup.run({ client: { url }, group, filter, member, prefetch: 10 }, () =>
        Effect.sync(() => {
          count++
        }))
    )
  } else {
    const client = await mqtt.connectAsync(url, {
      reconnectPeriod: 0,
      protocolVersion: 5,
      clientId: member,
      properties: { receiveMaximum: 10 }
    })
    client.on("message", () => {
      count++
    })
    await client.subscribeAsync(`$share/${group}/${filter}`, { qos: 1 })
  }
}

const groupRun = async (broker: Broker, kind: string, members: number) => {
  const run = fresh("g")
  const filter = `grp/${run}/#`
  const counts = new Array<number>(members).fill(0)
  const children: Array<ChildProcess> = []
  for (let i = 0; i < members; i++) {
    const child = fork(fileURLToPath(import.meta.url), ["member", kind, broker.url, run, filter, `${run}-${i}`], {
      execArgv: process.execArgv,
      stdio: ["ignore", "ignore", "inherit", "ipc"]
    })
    child.on("message", (message) => {
      counts[i] = (message as MemberMessage).count
    })
    children.push(child)
  }
  try {
    return await Effect.scoped(Effect.gen(function*() {
      const pub = yield* MqttClient.make({ url: broker.url, protocolVersion: 5, maxInflight: 1000 })
      // warm-up: until every member has had a message (the round robin reaches each once all have subscribed)
      for (let k = 0; counts.some((c) => c === 0); k++) {
        if (k > 400) return { error: "members did not subscribe" }
        yield* pub.publish(`grp/${run}/warm`, "w", { qos: 1 })
        yield* Effect.promise(() => sleep(25))
      }
      yield* Effect.promise(() => sleep(300))
      const base = [...counts]
      const total = () => counts.reduce((a, c) => a + c, 0) - base.reduce((a, c) => a + c, 0)
      const start = performance.now()
      yield* Effect.forEach(
        Array.from({ length: GROUP_MESSAGES }, (_, i) => i),
        (i) => pub.publish(`grp/${run}/work`, String(i), { qos: 1 }),
        { concurrency: 1000, discard: true }
      )
      const done = yield* Effect.promise(() => waitFor(() => total() >= GROUP_MESSAGES, 120_000))
      const ms = performance.now() - start
      return {
        rate: (total() / ms) * 1000,
        each: counts.map((c, i) => c - base[i]),
        ...(done ? {} : { error: `${total()} of ${GROUP_MESSAGES} received` })
      }
    })).pipe(Effect.runPromise)
  } finally {
    for (const child of children) child.kill("SIGKILL")
  }
}

const groups = async (broker: Broker) => {
  const rows: Array<Array<string>> = []
  for (const members of [1, 2, 4]) {
    for (const [kind, label] of [["effect", "effect-mqtt ConsumerGroup"], ["mqttjs", "MQTT.js"]] as const) {
      process.stderr.write(`  group: ${members} ${label}\n`)
      const r = await groupRun(broker, kind, members)
      rows.push([
        String(members),
        label,
        "rate" in r ? fmt(r.rate) : "-",
        "each" in r ? r.each.map((c) => fmt(c)).join(" / ") : "",
        r.error ?? ""
      ])
    }
  }
  return `## Consumer group: ${fmt(GROUP_MESSAGES)} QoS 1 messages on one $share group (MQTT 5, prefetch 10)\n\n` +
    table(["processes", "consumers", "total msg/s", "messages each got", "note"], rows) +
    `\n\nOne process per consumer, the publisher in this process; ${Os.cpus().length} cores for all of them and ` +
    "the broker.\n"
}

// ---------------------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------------------

const mqttVersion = () => {
  try {
    return (createRequire(import.meta.url)("mqtt/package.json") as { version: string }).version
  } catch {
    return "?"
  }
}

const main = async () => {
  const watchdog = setTimeout(() => {
    console.log("\nscale: watchdog fired (45 min): giving up")
    process.exit(0)
  }, 45 * 60 * 1000)
  watchdog.unref()
  const broker = await startBroker()
  const started = performance.now()
  console.log(
    `# Scale: effect-mqtt vs MQTT.js ${mqttVersion()}\n\nnode ${process.version}, Mosquitto on 127.0.0.1:${broker.port}, ` +
      `${Os.cpus().length} cores (shared with the broker and, on a shared machine, with whatever else runs: ` +
      `compare the libraries within one run).\n`
  )
  const sections: Record<string, (b: Broker) => Promise<string>> = {
    routing: () => routing(),
    clients,
    payload: payloads,
    latency,
    group: groups
  }
  try {
    for (const name of SECTIONS) {
      const section = sections[name]
      if (section === undefined) continue
      const brokerCpu = procCpu(broker.pid)
      const t = performance.now()
      try {
        console.log(await section(broker))
      } catch (error) {
        console.log(`## ${name}: failed: ${String(error)}\n`)
      }
      process.stderr.write(
        `  ${name}: ${fmt((performance.now() - t) / 1000, 1)} s, broker CPU ${
          fmt(procCpu(broker.pid) - brokerCpu, 1)
        } s\n`
      )
    }
  } finally {
    await broker.stop()
  }
  console.log(`(${fmt((performance.now() - started) / 1000)} s in all)`)
  process.exit(0)
}

const [role, ...args] = process.argv.slice(2)
if (role === "clients") {
  clientsChild(args[0], args[1], Number(args[2])).then(
    (result) => process.send?.(result),
    (error) => process.send?.({ error: String(error) })
  )
} else if (role === "latency") {
  latencyChild(args[0], args[1], Number(args[2]) as 0 | 1, args[3].split(",").map(Number)).then(
    (result) => process.send?.(result),
    (error) => {
      process.stderr.write(`latency run failed: ${String(error)}\n`)
      process.exit(1)
    }
  )
} else if (role === "member") {
  memberChild(args[0], args[1], args[2], args[3], args[4]).catch((error) => {
    process.stderr.write(`member failed: ${String(error)}\n`)
    process.exit(1)
  })
} else {
  void main()
}
