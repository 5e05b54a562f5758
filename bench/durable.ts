/**
 * Durable sessions: QoS 1 and QoS 2 throughput of effect-mqtt with each session store (memory, file, file with
 * fsync, Redis) beside the in-memory client (no store) and MQTT.js (its default in-memory store), in one run, on
 * one private Mosquitto. The goal of issue 12: the file store within 2x of memory at QoS 1.
 *
 * Each run: one publisher (with the store) and one subscriber (no store) in this process, `BENCH_MESSAGES`
 * (default 20,000) messages of 64 bytes on a fresh topic, at most `BENCH_WINDOW` (default 1,000) publishes
 * outstanding; the rate is messages received per second from the first publish until the subscriber has the
 * last one. Each configuration runs `BENCH_RUNS` times (default 3, in rotating order); the median is shown. For
 * the stores, the second table shows where the time goes: store writes (one per group commit), journal entries
 * and bytes per write, and the share of the run spent waiting for writes.
 *
 * The file stores write to a fresh directory under the system's temporary directory; the Redis store to a
 * private `redis-server` on a free port, without persistence (`--save "" --appendonly no`).
 *
 * Environment: BENCH_MESSAGES, BENCH_WINDOW, BENCH_RUNS, BENCH_QOS (default "1,2"), BENCH_CLIENTS (default
 * "none,memory,file,file-fsync,redis,mqttjs"), BENCH_CAP_SECONDS (default 120: the most one run may take).
 *
 * Run: `npm exec -- node --conditions=effect-mqtt-source bench/durable.ts`. Always exits with 0: it is a report.
 */
import { NodeFileSystem, NodePath, NodeRedis } from "@effect/platform-node"
import { MqttClient, MqttSessionStore } from "effect-mqtt"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as KeyValueStore from "effect/persistence/KeyValueStore"
import * as Stream from "effect/Stream"
import * as mqtt from "mqtt"
import { type ChildProcess, spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { performance } from "node:perf_hooks"
import { startBroker } from "./broker.ts"
import { awaitReceived, envInt, envList, fmt, median, sleep, table } from "./support.ts"

// ---------------------------------------------------------------------------------------------------------
// settings
// ---------------------------------------------------------------------------------------------------------

const MESSAGES = envInt("BENCH_MESSAGES", 20_000)
const WINDOW = envInt("BENCH_WINDOW", 1000)
const RUNS = envInt("BENCH_RUNS", 3)
const CAP_MS = envInt("BENCH_CAP_SECONDS", 120) * 1000
const QOS_LEVELS = envList("BENCH_QOS", "1,2").map(Number).filter((q): q is 1 | 2 => q === 1 || q === 2)
const CONFIGS = ["none", "memory", "file", "file-fsync", "redis", "mqttjs"] as const
type Config = typeof CONFIGS[number]
const CHOSEN = envList("BENCH_CLIENTS", CONFIGS.join(",")).filter((c): c is Config => CONFIGS.includes(c as Config))
const PAYLOAD = Buffer.alloc(64, "x")

const label: Record<Config, string> = {
  none: "effect-mqtt, no store (in memory)",
  memory: "effect-mqtt, memory store",
  file: "effect-mqtt, file store",
  "file-fsync": "effect-mqtt, file store, sync: true",
  redis: "effect-mqtt, Redis store",
  mqttjs: "MQTT.js (default in-memory store)"
}

interface StoreStats {
  writes: number
  entries: number
  bytes: number
  /** time spent in writes, in ms (writes do not overlap: one writer) */
  writeMs: number
}

interface Result {
  readonly received: number
  readonly ms: number
  readonly finished: boolean
  readonly error?: string
  readonly stats?: StoreStats
}

const rateOf = (r: Result) => r.ms > 0 ? (r.received / r.ms) * 1000 : 0

let topicSeq = 0
const freshTopic = (tag: string) => `bench-durable/${process.pid}/${tag}/${topicSeq++}`

// ---------------------------------------------------------------------------------------------------------
// stores
// ---------------------------------------------------------------------------------------------------------

/** A store that counts its writes, the journal entries and bytes written, and the time spent writing. */
const counted = (store: MqttSessionStore.SessionStore, stats: StoreStats): MqttSessionStore.SessionStore => {
  const kv = store.kv
  return MqttSessionStore.fromKeyValueStore(
    KeyValueStore.make({
      get: kv.get,
      getUint8Array: kv.getUint8Array,
      set: (key, value) =>
        Effect.suspend(() => {
          const start = performance.now()
          const text = typeof value === "string" ? value : ""
          stats.writes++
          stats.bytes += typeof value === "string" ? value.length : value.byteLength
          // a segment is {"v":1,"e":[...]}: count its entries by their tags
          stats.entries += text.split("{\"t\":").length - 1
          return Effect.ensuring(kv.set(key, value), Effect.sync(() => (stats.writeMs += performance.now() - start)))
        }),
      remove: kv.remove,
      clear: kv.clear,
      size: kv.size,
      keys: kv.keys
    }),
    store.name
  )
}

const temporaryRoot = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-mqtt-bench-durable-"))
let storeSeq = 0

/** The store of a configuration, and what it needs; undefined for the client without a store. */
const storeOf = (config: Config, redisUrl: string | undefined) => {
  const directory = Path.join(temporaryRoot, `store-${storeSeq++}`)
  switch (config) {
    case "memory":
      return MqttSessionStore.memory
    case "file":
      return Effect.provide(MqttSessionStore.fileSystem(directory), [NodeFileSystem.layer, NodePath.layer])
    case "file-fsync":
      return Effect.provide(
        MqttSessionStore.fileSystem(directory, { sync: true }),
        [NodeFileSystem.layer, NodePath.layer]
      )
    case "redis":
      // the connection lives as long as the run's scope
      return Effect.flatMap(
        Layer.build(NodeRedis.layer({ url: redisUrl! })),
        (context) =>
          Effect.provideContext(MqttSessionStore.redis({ namespace: `bench-${process.pid}-${storeSeq}:` }), context)
      )
    default:
      return undefined
  }
}

/** A private redis-server on a free port, without persistence; undefined when it is not installed. */
const startRedis = async (): Promise<{ readonly url: string; readonly stop: () => void } | undefined> => {
  const port = await new Promise<number>((resolve) => {
    const server = Net.createServer()
    server.listen(0, "127.0.0.1", () => {
      const address = server.address() as Net.AddressInfo
      server.close(() => resolve(address.port))
    })
  })
  let child: ChildProcess
  try {
    child = spawn(
      "redis-server",
      ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", temporaryRoot],
      { stdio: "ignore" }
    )
  } catch {
    return undefined
  }
  const failed = new Promise<boolean>((resolve) => child.once("error", () => resolve(true)))
  for (let i = 0; i < 100; i++) {
    const ok = await Promise.race([
      failed,
      new Promise<boolean>((resolve) => {
        const socket = Net.connect({ port, host: "127.0.0.1" })
        socket.once("connect", () => {
          socket.destroy()
          resolve(true)
        })
        socket.once("error", () => resolve(false))
      })
    ])
    if (ok && child.exitCode === null) return { url: `redis://127.0.0.1:${port}`, stop: () => child.kill("SIGKILL") }
    await sleep(50)
  }
  child.kill("SIGKILL")
  return undefined
}

// ---------------------------------------------------------------------------------------------------------
// runs
// ---------------------------------------------------------------------------------------------------------

const effectRun = (url: string, config: Config, qos: 1 | 2, n: number, redisUrl: string | undefined) =>
  Effect.gen(function*() {
    const stats: StoreStats = { writes: 0, entries: 0, bytes: 0, writeMs: 0 }
    const made = storeOf(config, redisUrl)
    const store = made === undefined ? undefined : counted(yield* made, stats)
    const topic = freshTopic(`${config}-q${qos}`)
    const sub = yield* MqttClient.make({ url })
    // the benchmark's broker has no in-flight limit: the publisher keeps up to 1,000 in flight, as MQTT.js does
    const pub = yield* MqttClient.make({
      url,
      maxInflight: 1000,
      ...(store === undefined ? {} : { store, clientId: `bench-${config}-${storeSeq}`, cleanStart: false })
    })
    yield* sub.subscribe(topic, { qos })
    const counter = { count: 0, bad: 0, last: 0 }
    yield* Effect.forkScoped(
      Stream.runForEachArray(sub.messages, (messages) =>
        Effect.sync(() => {
          counter.count += messages.length
          counter.last = performance.now()
        }))
    )
    let publishedAt = 0
    const start = performance.now()
    const writesBefore = { ...stats }
    const publisher = yield* Effect.forkScoped(
      Effect.forEach(
        Array.from({ length: n }, (_, i) => i),
        () => pub.publish(topic, PAYLOAD, { qos }),
        { concurrency: WINDOW, discard: true }
      ).pipe(
        Effect.timeoutOption(CAP_MS),
        Effect.ensuring(Effect.sync(() => (publishedAt = performance.now()))),
        Effect.exit
      )
    )
    const finished = yield* Effect.promise(() => awaitReceived(counter, n, () => publishedAt !== 0, start + CAP_MS))
    const exit = yield* Fiber.join(publisher)
    const during: StoreStats = {
      writes: stats.writes - writesBefore.writes,
      entries: stats.entries - writesBefore.entries,
      bytes: stats.bytes - writesBefore.bytes,
      writeMs: stats.writeMs - writesBefore.writeMs
    }
    return {
      received: counter.count,
      ms: (counter.count > 0 ? counter.last : performance.now()) - start,
      finished,
      ...(exit._tag === "Failure" ? { error: String(exit.cause).split("\n")[0] } : {}),
      ...(store === undefined ? {} : { stats: during })
    } satisfies Result
  }).pipe(
    Effect.scoped,
    Effect.catchCause((cause) =>
      Effect.succeed({ received: 0, ms: 0, finished: false, error: String(cause).split("\n")[0] })
    ),
    Effect.runPromise
  )

const mqttjsRun = async (url: string, qos: 1 | 2, n: number): Promise<Result> => {
  const topic = freshTopic(`mqttjs-q${qos}`)
  const options = { reconnectPeriod: 0, clean: true, keepalive: 60 } as const
  const sub = await mqtt.connectAsync(url, options)
  const pub = await mqtt.connectAsync(url, options)
  try {
    await sub.subscribeAsync(topic, { qos })
    const counter = { count: 0, bad: 0, last: 0 }
    sub.on("message", () => {
      counter.count++
      counter.last = performance.now()
    })
    let publishedAt = 0
    let error: string | undefined
    const start = performance.now()
    void new Promise<void>((resolve) => {
      let issued = 0
      let done = 0
      const issue = () => {
        while (issued < n && issued - done < WINDOW) {
          issued++
          pub.publish(topic, PAYLOAD, { qos }, (err) => {
            if (err !== undefined && err !== null) error ??= err.message
            if (++done === n) resolve()
            else issue()
          })
        }
      }
      issue()
    }).then(() => (publishedAt = performance.now()))
    const finished = await awaitReceived(counter, n, () => publishedAt !== 0, start + CAP_MS)
    return {
      received: counter.count,
      ms: (counter.count > 0 ? counter.last : performance.now()) - start,
      finished,
      ...(error === undefined ? {} : { error })
    }
  } finally {
    pub.end(true)
    sub.end(true)
  }
}

// ---------------------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------------------

const main = async () => {
  const broker = await startBroker()
  const redis = CHOSEN.includes("redis") ? await startRedis() : undefined
  const configs = CHOSEN.filter((c) => c !== "redis" || redis !== undefined)
  const run = (config: Config, qos: 1 | 2, n: number) =>
    config === "mqttjs" ? mqttjsRun(broker.url, qos, n) : effectRun(broker.url, config, qos, n, redis?.url)
  console.log(
    `bench/durable.ts: ${fmt(MESSAGES)} messages of 64 bytes per run, window ${fmt(WINDOW)}, ${RUNS} runs ` +
      `(median), MQTT 3.1.1, Node.js ${process.version}, ${Os.cpus().length} CPUs; file stores in ${temporaryRoot}` +
      (redis === undefined && CHOSEN.includes("redis") ? "; redis-server not found: no Redis store" : "")
  )
  const results = new Map<string, Array<Result>>()
  for (const qos of QOS_LEVELS) {
    // a warm-up of each, then the runs, rotating which configuration goes first
    for (const config of configs) await run(config, qos, Math.min(2000, MESSAGES))
    for (let i = 0; i < RUNS; i++) {
      for (let j = 0; j < configs.length; j++) {
        const config = configs[(i + j) % configs.length]
        const result = await run(config, qos, MESSAGES)
        const key = `${config}/${qos}`
        results.set(key, [...(results.get(key) ?? []), result])
      }
    }
  }
  const medianOf = (config: Config, qos: 1 | 2): Result | undefined => {
    const all = results.get(`${config}/${qos}`)
    if (all === undefined) return undefined
    const m = median(all.map(rateOf))
    return all.find((r) => rateOf(r) === m)
  }
  const show = (r: Result | undefined) =>
    r === undefined
      ? "-"
      : r.error !== undefined && r.received === 0
      ? `error: ${r.error}`
      : `${fmt(rateOf(r))}${r.received < MESSAGES ? ` (${fmt(MESSAGES - r.received)} not received)` : ""}`
  const ratio = (r: Result | undefined, base: Result | undefined) =>
    r === undefined || base === undefined || rateOf(base) === 0 ? "-" : (rateOf(r) / rateOf(base)).toFixed(2)
  const header = ["client", ...QOS_LEVELS.flatMap((q) => [`QoS ${q} msg/s`, `QoS ${q} / no store`])]
  console.log(
    "\n" + table(
      header,
      configs.map((c) => [
        label[c],
        ...QOS_LEVELS.flatMap((q) => [show(medianOf(c, q)), ratio(medianOf(c, q), medianOf("none", q))])
      ])
    )
  )
  const stored = configs.filter((c) => c !== "none" && c !== "mqttjs")
  console.log(
    "\nWhere the time goes (median run): one store write per group commit\n" + table(
      [
        "store",
        "QoS",
        "writes",
        "messages per write",
        "journal entries per write",
        "bytes per write",
        "waiting for writes"
      ],
      stored.flatMap((c) =>
        QOS_LEVELS.map((q) => {
          const r = medianOf(c, q)
          const s = r?.stats
          if (r === undefined || s === undefined || s.writes === 0) {
            return [label[c], String(q), "-", "-", "-", "-", "-"]
          }
          return [
            label[c],
            String(q),
            fmt(s.writes),
            (r.received / s.writes).toFixed(1),
            (s.entries / s.writes).toFixed(1),
            fmt(s.bytes / s.writes),
            `${((s.writeMs / r.ms) * 100).toFixed(0)}% of the run`
          ]
        })
      )
    )
  )
  const file = medianOf("file", 1)
  const memory = medianOf("memory", 1)
  if (file !== undefined && memory !== undefined) {
    console.log(
      `\nGoal (issue 12): file store within 2x of memory at QoS 1: file / memory store = ` +
        `${ratio(file, memory)} (goal >= 0.50); file / no store = ${ratio(file, medianOf("none", 1))}`
    )
  }
  redis?.stop()
  await broker.stop()
  Fs.rmSync(temporaryRoot, { recursive: true, force: true })
}

main().then(
  () => process.stdout.write("", () => process.exit(0)),
  (error: unknown) => {
    console.log(`bench/durable.ts failed: ${String(error)}`)
    process.stdout.write("", () => process.exit(0))
  }
)
