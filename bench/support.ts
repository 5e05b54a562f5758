/**
 * What the benchmarks share: settings from the environment, timing, one publisher-and-subscriber run of each
 * client (effect-mqtt and MQTT.js) on the same terms, medians and ratios, tables, versions, and process figures
 * read from /proc. The private Mosquitto is started by `broker.ts`.
 */
import { MqttClient, type MqttMessage } from "effect-mqtt"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Stream from "effect/Stream"
import * as mqtt from "mqtt"
import { Buffer } from "node:buffer"
import * as Fs from "node:fs"
import { createRequire } from "node:module"
import { performance } from "node:perf_hooks"

// ---------------------------------------------------------------------------------------------------------
// settings, timing, process
// ---------------------------------------------------------------------------------------------------------

/** A whole number from the environment; `fallback` when unset or not a number above 0 (or at least 0). */
export const envInt = (name: string, fallback: number, allowZero = false): number => {
  const value = Number(process.env[name])
  return Number.isFinite(value) && (allowZero ? value >= 0 : value > 0) ? Math.floor(value) : fallback
}

/** A comma-separated list from the environment, each item trimmed. */
export const envList = (name: string, fallback: string): Array<string> =>
  (process.env[name] ?? fallback).split(",").map((s) => s.trim())

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** The next turn of the event loop, after pending I/O. */
export const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve))

/** A full collection where node runs with `--expose-gc`; nothing otherwise. */
export const gc = () => (globalThis as { gc?: () => void }).gc?.()

/** Exits once stdout is flushed, whatever is still running (clients stopped by a cap). */
export const exit = () => process.stdout.write("", () => process.exit(0))

/** Gives up the whole benchmark after `minutes`, with a line saying so. */
export const watchdog = (name: string, minutes: number) =>
  setTimeout(() => {
    console.log(`\n${name}: watchdog fired (${minutes} min): giving up`)
    exit()
  }, minutes * 60 * 1000).unref()

const procFile = (pid: number, file: string): string | undefined => {
  try {
    return Fs.readFileSync(`/proc/${pid}/${file}`, "utf8")
  } catch {
    return undefined
  }
}

/** CPU seconds (user + system) of a process, from /proc; 0 where there is no /proc. */
export const procCpu = (pid: number): number => {
  const stat = procFile(pid, "stat")
  if (stat === undefined) return 0
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  return (Number(fields[11]) + Number(fields[12])) / 100
}

/** Resident set size of a process in bytes, from /proc; NaN where there is no /proc. */
export const procRss = (pid: number): number => {
  const match = /^VmRSS:\s+(\d+) kB/m.exec(procFile(pid, "status") ?? "")
  return match === null ? NaN : Number(match[1]) * 1024
}

/** The version of an installed npm package, or "?". */
export const packageVersion = (pkg: string): string => {
  try {
    return (createRequire(import.meta.url)(`${pkg}/package.json`) as { version: string }).version
  } catch {
    return "?"
  }
}

// ---------------------------------------------------------------------------------------------------------
// the settings of the throughput benchmarks (throughput.ts, mqtt5.ts, tls.ts)
// ---------------------------------------------------------------------------------------------------------

/** Messages of each measured run: `BENCH_MESSAGES`, default 100,000. */
export const MESSAGES = envInt("BENCH_MESSAGES", 100_000)
/** QoS 1/2 publishes outstanding at most: `BENCH_WINDOW`, default 1,000. */
export const WINDOW = envInt("BENCH_WINDOW", 1000)
/** Measured runs of each client, the median shown: `BENCH_RUNS`, default 3. */
export const RUNS = envInt("BENCH_RUNS", 3)
/** The most one measurement may take: `BENCH_CAP_SECONDS`, default 300. */
export const CAP_MS = envInt("BENCH_CAP_SECONDS", 300) * 1000
/** Messages of the warm-up run of each client: a tenth of `MESSAGES`, from 100 to 5,000. */
export const WARMUP = Math.min(5000, Math.max(100, Math.floor(MESSAGES / 10)))
/** The clients measured: `BENCH_CLIENTS`, default "effect,mqttjs". */
export const CLIENTS = envList("BENCH_CLIENTS", "effect,mqttjs")
/** The payload of every message. */
export const PAYLOAD = Buffer.alloc(64, "x")

// ---------------------------------------------------------------------------------------------------------
// report
// ---------------------------------------------------------------------------------------------------------

/** A whole number with thousands separators. */
export const fmt = (n: number) => Math.round(n).toLocaleString("en-US")

/** A Markdown table, each column as wide as its widest cell. */
export const table = (header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>): string => {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)))
  const line = (cells: ReadonlyArray<string>) => "| " + cells.map((c, i) => c.padEnd(widths[i])).join(" | ") + " |"
  return [line(header), "| " + widths.map((w) => "-".repeat(w)).join(" | ") + " |", ...rows.map(line)].join("\n")
}

/** The middle value (the lower of the two middle ones for an even count). */
export const median = (values: ReadonlyArray<number>): number =>
  [...values].sort((a, b) => a - b)[Math.floor((values.length - 1) / 2)]

// ---------------------------------------------------------------------------------------------------------
// one run: a publisher and a subscriber of one client, in this process
// ---------------------------------------------------------------------------------------------------------

export type QoS = 0 | 1 | 2

/** QoS 0 publishes in batches of this many, yielding to the event loop between batches. */
export const BATCH = 1000

/** How long nothing may arrive, once publishing is done, before a run stops waiting for the rest. */
const QUIET_MS = 2000

export interface RunResult {
  /** publishes completed */
  readonly sent: number
  readonly received: number
  /** received messages that failed the run's check */
  readonly bad: number
  /** from the first publish to the last message received */
  readonly ms: number
  /** from the first publish until every publish completed */
  readonly publishMs: number
  /** every message received and every publish completed */
  readonly finished: boolean
  readonly error?: string
}

export const skipped: RunResult = {
  sent: 0,
  received: 0,
  bad: 0,
  ms: 0,
  publishMs: 0,
  finished: false,
  error: "skipped"
}

/** Messages received per second. */
export const rateOf = (r: RunResult) => r.ms > 0 ? (r.received / r.ms) * 1000 : 0

/** The run of median rate, and the range of all runs ("12.3k–14.5k"; empty for one run or skipped runs). */
export const medianRun = <R extends RunResult>(results: ReadonlyArray<R>): { result: R; range: string } => {
  const sorted = [...results].sort((a, b) => rateOf(a) - rateOf(b))
  const result = sorted[Math.floor((sorted.length - 1) / 2)]
  const k = (r: R) => (rateOf(r) / 1000).toFixed(1) + "k"
  const range = sorted.length > 1 && result.error !== "skipped" ? `${k(sorted[0])}–${k(sorted[sorted.length - 1])}` : ""
  return { result, range }
}

/** effect-mqtt's rate over MQTT.js's; NaN when MQTT.js received nothing. */
export const ratioOf = (effect: RunResult, mqttjs: RunResult): number =>
  rateOf(mqttjs) > 0 ? rateOf(effect) / rateOf(mqttjs) : NaN

/** A ratio as "1.23x", or "n/a". */
export const showRatio = (ratio: number): string => Number.isFinite(ratio) ? ratio.toFixed(2) + "x" : "n/a"

/**
 * Both clients side by side: a warm-up run of each with `WARMUP` messages, then `RUNS` runs of each with
 * `MESSAGES`, alternating which client goes first, after a `gc()` before each run.
 */
export const sideBySide = async <R>(
  run: (client: "effect" | "mqttjs", n: number) => Promise<R>
): Promise<{ readonly effect: Array<R>; readonly mqttjs: Array<R> }> => {
  await run("effect", WARMUP)
  await run("mqttjs", WARMUP)
  const results = { effect: [] as Array<R>, mqttjs: [] as Array<R> }
  for (let i = 0; i < RUNS; i++) {
    for (const client of i % 2 === 0 ? ["effect", "mqttjs"] as const : ["mqttjs", "effect"] as const) {
      gc()
      results[client].push(await run(client, MESSAGES))
    }
  }
  return results
}

let topicSeq = 0
/** A topic no earlier run used: `prefix/pid/time/tag/sequence`. */
export const freshTopic = (prefix: string, tag: string) =>
  `${prefix}/${process.pid}/${Date.now().toString(36)}/${tag}/${topicSeq++}`

export interface Counter {
  count: number
  bad: number
  /** when the last message arrived */
  last: number
}

/**
 * Waits until `n` messages were received (true), or nothing arrived for `QUIET_MS` once publishing is done, or
 * the deadline passes (false). Polls: the time of the last message is recorded by the subscriber itself.
 */
export const awaitReceived = async (
  counter: Counter,
  n: number,
  isPublished: () => boolean,
  deadline: number
): Promise<boolean> => {
  let quietSince = performance.now()
  let seen = counter.count
  for (;;) {
    if (counter.count >= n) return true
    const now = performance.now()
    if (now > deadline) return false
    if (counter.count !== seen) {
      seen = counter.count
      quietSince = now
    }
    if (isPublished() && now - quietSince > QUIET_MS) return false
    await sleep(10)
  }
}

/** What both clients' runs are given. */
export interface RunSpec {
  /** the subscriber's broker */
  readonly url: string
  /** the publisher's broker: `url` unless given (a counting proxy in front of it, for instance) */
  readonly publishUrl?: string
  readonly protocolVersion: 4 | 5
  /** what the subscriber subscribes to, at `qos` */
  readonly filter: string
  /** the topic of the i-th message */
  readonly topicOf: (i: number) => string
  readonly qos: QoS
  readonly n: number
  /** default `PAYLOAD` */
  readonly payload?: Buffer
  /**
   * `window` (the default): at most `window` (default `WINDOW`) QoS 1/2 publishes outstanding, QoS 0 in
   * batches of `BATCH` with a turn of the event loop between; `burst`: every publish issued at once.
   */
  readonly mode?: "window" | "burst"
  readonly window?: number
  /** the most the run may take: default `CAP_MS` */
  readonly capMs?: number
}

export interface EffectRunSpec extends RunSpec {
  /** more options of the subscribing client */
  readonly subscriber?: Omit<MqttClient.Options, "url">
  /** more options of the publishing client */
  readonly publisher?: Omit<MqttClient.Options, "url">
  /** more options of each publish (its QoS is the run's) */
  readonly publish?: MqttClient.PublishOptions
  /** whether a received message is what was sent; counted in `bad` when not */
  readonly check?: (message: MqttMessage.MqttMessage) => boolean
}

/**
 * Publishes `n` messages through `publishOne(i)`: QoS 0 in batches of `BATCH`, yielding to the event loop
 * between batches; QoS 1/2 with at most `window` outstanding; in `burst` mode all at once.
 */
export const publishEach = <E>(
  publishOne: (i: number) => Effect.Effect<void, E>,
  options: { readonly n: number; readonly qos: QoS; readonly mode?: "window" | "burst"; readonly window?: number }
): Effect.Effect<void, E> => {
  const ids = Array.from({ length: options.n }, (_, i) => i)
  if (options.mode === "burst") return Effect.forEach(ids, publishOne, { concurrency: "unbounded", discard: true })
  if (options.qos > 0) return Effect.forEach(ids, publishOne, { concurrency: options.window ?? WINDOW, discard: true })
  const batches: Array<Array<number>> = []
  for (let i = 0; i < options.n; i += BATCH) batches.push(ids.slice(i, i + BATCH))
  return Effect.forEach(
    batches,
    (batch) => Effect.andThen(Effect.forEach(batch, publishOne, { discard: true }), Effect.promise(nextTurn)),
    { discard: true }
  )
}

/** One run of effect-mqtt: a subscriber and a publisher on `spec.url`, each a client of its own. */
export const runEffect = (spec: EffectRunSpec): Promise<RunResult> =>
  Effect.scoped(Effect.gen(function*() {
    const { n, qos } = spec
    const capMs = spec.capMs ?? CAP_MS
    const payload = spec.payload ?? PAYLOAD
    const sub = yield* MqttClient.make({ url: spec.url, protocolVersion: spec.protocolVersion, ...spec.subscriber })
    const pub = yield* MqttClient.make({
      url: spec.publishUrl ?? spec.url,
      protocolVersion: spec.protocolVersion,
      ...spec.publisher
    })
    yield* sub.subscribe(spec.filter, { qos })
    const counter: Counter = { count: 0, bad: 0, last: 0 }
    const check = spec.check
    yield* Effect.forkScoped(
      Stream.runForEachArray(sub.messages, (messages) =>
        Effect.sync(() => {
          if (check !== undefined) { for (const message of messages) if (!check(message)) counter.bad++ }
          counter.count += messages.length
          counter.last = performance.now()
        }))
    )
    let sent = 0
    let publishedAt = 0
    const options: MqttClient.PublishOptions = { ...spec.publish, qos }
    const publishOne = (i: number) =>
      Effect.map(pub.publish(spec.topicOf(i), payload, options), () => {
        sent++
      })
    const start = performance.now()
    const deadline = start + capMs
    const publisher = yield* Effect.forkScoped(
      publishEach(publishOne, spec).pipe(
        Effect.timeoutOption(capMs),
        Effect.ensuring(Effect.sync(() => {
          publishedAt = performance.now()
        })),
        Effect.exit
      )
    )
    const finished = yield* Effect.promise(() => awaitReceived(counter, n, () => publishedAt !== 0, deadline))
    // the publisher ends by itself: by its own timeout at the latest
    const exit = yield* Fiber.join(publisher)
    const end = counter.count > 0 ? counter.last : performance.now()
    return {
      sent,
      received: counter.count,
      bad: counter.bad,
      ms: end - start,
      publishMs: (publishedAt || performance.now()) - start,
      finished: finished && sent === n,
      ...(exit._tag === "Failure" ? { error: String(exit.cause) } : {})
    } satisfies RunResult
  })).pipe(
    Effect.catchCause((cause) => Effect.succeed({ ...skipped, error: String(cause) })),
    Effect.runPromise
  )

export interface MqttjsRunSpec extends RunSpec {
  /** more options of the subscribing client */
  readonly subscriber?: mqtt.IClientOptions
  /** more options of the publishing client */
  readonly publisher?: mqtt.IClientOptions
  /** more options of each publish (its QoS is the run's) */
  readonly publish?: mqtt.IClientPublishOptions
  /** whether a received message is what was sent; counted in `bad` when not */
  readonly check?: (topic: string, packet: mqtt.IPublishPacket) => boolean
}

/** What the publishes of an MQTT.js run have done so far. */
interface Progress {
  sent: number
  error: string | undefined
}

/**
 * Issues the publishes of a run on an MQTT.js client, as `publishEach` does for effect-mqtt; resolves when every
 * publish completed. A QoS 0 publish whose write filled the socket completes on `drain`: the next batch waits
 * for it, as effect-mqtt's does.
 */
const mqttjsPublishing = (pub: mqtt.MqttClient, spec: MqttjsRunSpec, deadline: number, progress: Progress) =>
  new Promise<void>((resolve) => {
    const { n, qos } = spec
    const window = spec.window ?? WINDOW
    const payload = spec.payload ?? PAYLOAD
    const options: mqtt.IClientPublishOptions = { ...spec.publish, qos }
    let issued = 0
    const done = (err?: Error) => {
      if (err !== undefined && err !== null) progress.error ??= err.message
      progress.sent++
      if (progress.sent === n) resolve()
      else if (spec.mode !== "burst" && qos > 0) issue()
    }
    const publishNext = () => pub.publish(spec.topicOf(issued++), payload, options, done)
    const issue = () => {
      while (issued < n && issued - progress.sent < window) publishNext()
    }
    if (spec.mode === "burst") {
      while (issued < n) publishNext()
    } else if (qos > 0) {
      issue()
    } else {
      void (async () => {
        while (issued < n) {
          const end = Math.min(n, issued + BATCH)
          while (issued < end) publishNext()
          await nextTurn()
          while (progress.sent < issued && performance.now() < deadline) await nextTurn()
        }
      })()
    }
  })

/** One run of MQTT.js: a subscriber and a publisher on `spec.url`, each a client of its own. */
export const runMqttjs = async (spec: MqttjsRunSpec): Promise<RunResult> => {
  const { n } = spec
  const common = { protocolVersion: spec.protocolVersion, reconnectPeriod: 0, clean: true, keepalive: 60 } as const
  const sub = await mqtt.connectAsync(spec.url, { ...common, ...spec.subscriber })
  const pub = await mqtt.connectAsync(spec.publishUrl ?? spec.url, { ...common, ...spec.publisher })
  try {
    await sub.subscribeAsync(spec.filter, { qos: spec.qos })
    const counter: Counter = { count: 0, bad: 0, last: 0 }
    const check = spec.check
    sub.on("message", (topic, _payload, packet) => {
      if (check !== undefined && !check(topic, packet)) counter.bad++
      counter.count++
      counter.last = performance.now()
    })
    const progress: Progress = { sent: 0, error: undefined }
    let publishedAt = 0
    const start = performance.now()
    const deadline = start + (spec.capMs ?? CAP_MS)
    const publishing = mqttjsPublishing(pub, spec, deadline, progress).then(() => {
      publishedAt = performance.now()
    })
    const finished = await awaitReceived(counter, n, () => publishedAt !== 0, deadline)
    await Promise.race([publishing, sleep(Math.max(0, deadline - performance.now()))])
    const end = counter.count > 0 ? counter.last : performance.now()
    return {
      sent: progress.sent,
      received: counter.count,
      bad: counter.bad,
      ms: end - start,
      publishMs: (publishedAt || performance.now()) - start,
      finished: finished && progress.sent === n,
      ...(progress.error === undefined ? {} : { error: progress.error })
    }
  } finally {
    // forcibly: a run stopped by its cap leaves publishes outstanding
    pub.end(true)
    sub.end(true)
  }
}
