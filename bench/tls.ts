/**
 * Throughput over TLS: effect-mqtt against MQTT.js, side by side, on a private Mosquitto with a TLS listener
 * (certificates made by openssl for this run; the broker's certificate is verified, no client certificate).
 *
 * For each client and QoS (0 and 1): one publisher and one subscriber in this process, `BENCH_MESSAGES`
 * (default 100,000) messages of 64 bytes on a fresh topic; the rate is messages received per second from the
 * first publish until the subscriber has received the last one. QoS 0 publishes in batches of 1,000 and yields
 * to the event loop between batches; QoS 1 keeps at most `BENCH_WINDOW` (default 1,000) publishes outstanding.
 * A warm-up run of each client comes first, then `BENCH_RUNS` (default 3) runs of each, alternating; the
 * median is shown with the range.
 *
 * Environment: BENCH_MESSAGES, BENCH_WINDOW, BENCH_RUNS, BENCH_CAP_SECONDS (default 300: the most one
 * measurement may take), MOSQUITTO (default /usr/sbin/mosquitto).
 *
 * Always exits with 0: it is a report.
 */
import { MqttClient } from "effect-mqtt"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Stream from "effect/Stream"
import * as mqtt from "mqtt"
import { Buffer } from "node:buffer"
import { execFileSync } from "node:child_process"
import * as Fs from "node:fs"
import { createRequire } from "node:module"
import { performance } from "node:perf_hooks"
import * as Tls from "node:tls"
import { type Certs, makeCerts } from "../test/support/certs.ts"
import { startBroker } from "./broker.ts"

const envInt = (name: string, fallback: number): number => {
  const value = Number(process.env[name])
  return Number.isFinite(value) && value > 0 ? Math.floor(value) : fallback
}

const MESSAGES = envInt("BENCH_MESSAGES", 100_000)
const WINDOW = envInt("BENCH_WINDOW", 1000)
const RUNS = envInt("BENCH_RUNS", 3)
const CAP_MS = envInt("BENCH_CAP_SECONDS", 300) * 1000
const BATCH = 1000
const QUIET_MS = 2000
const WARMUP = Math.min(5000, Math.max(100, Math.floor(MESSAGES / 10)))
const PAYLOAD = Buffer.alloc(64, "x")
const MOSQUITTO = process.env.MOSQUITTO ?? "/usr/sbin/mosquitto"

type QoS = 0 | 1

interface Result {
  readonly received: number
  readonly sent: number
  /** from the first publish to the last message received */
  readonly ms: number
  readonly error?: string
}

const rateOf = (r: Result) => r.ms > 0 ? (r.received / r.ms) * 1000 : 0

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))
const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve))

let topicSeq = 0
const freshTopic = (tag: string) => `bench-tls/${process.pid}/${tag}/${topicSeq++}`

interface Counter {
  count: number
  last: number
}

/** Waits for `n` messages, or until nothing arrives for `QUIET_MS` once publishing is done, or the deadline. */
const awaitReceived = async (counter: Counter, n: number, isPublished: () => boolean, deadline: number) => {
  let quietSince = performance.now()
  let seen = counter.count
  for (;;) {
    if (counter.count >= n) return
    const now = performance.now()
    if (now > deadline) return
    if (counter.count !== seen) {
      seen = counter.count
      quietSince = now
    }
    if (isPublished() && now - quietSince > QUIET_MS) return
    await sleep(10)
  }
}

// ---------------------------------------------------------------------------------------------------------
// the broker
// ---------------------------------------------------------------------------------------------------------

/** Mosquitto with only a TLS listener, and limits that never drop a message during a run. */
const startTlsBroker = (certs: Certs) =>
  startBroker({
    listenerLines: [`cafile ${certs.ca.cert}`, `certfile ${certs.server.cert}`, `keyfile ${certs.server.key}`]
  })

// ---------------------------------------------------------------------------------------------------------
// the clients
// ---------------------------------------------------------------------------------------------------------

const effectRun = (url: string, caFile: string, qos: QoS, n: number): Promise<Result> =>
  Effect.scoped(Effect.gen(function*() {
    const topic = freshTopic(`effect-q${qos}`)
    const options: MqttClient.Options = { url, tls: { caFile } }
    const sub = yield* MqttClient.make(options)
    const pub = yield* MqttClient.make({ ...options, maxInflight: 1000 }) // the broker has no in-flight limit
    yield* sub.subscribe(topic, { qos })
    const counter: Counter = { count: 0, last: 0 }
    yield* Effect.forkScoped(
      Stream.runForEachArray(sub.messages, (messages) =>
        Effect.sync(() => {
          counter.count += messages.length
          counter.last = performance.now()
        }))
    )
    let sent = 0
    let published = false
    // a fresh publish effect per message: each is one message with its own packet identifier
    const one = () =>
      Effect.map(pub.publish(topic, PAYLOAD, { qos }), () => {
        sent++
      })
    const ids = Array.from({ length: n }, (_, i) => i)
    const publishing: Effect.Effect<void, unknown> = qos === 0
      ? Effect.forEach(
        Array.from({ length: Math.ceil(n / BATCH) }, (_, b) => ids.slice(b * BATCH, (b + 1) * BATCH)),
        (batch) => Effect.andThen(Effect.forEach(batch, one, { discard: true }), Effect.promise(nextTurn)),
        { discard: true }
      )
      : Effect.forEach(ids, one, { concurrency: WINDOW, discard: true })
    const start = performance.now()
    const publisher = yield* Effect.forkScoped(
      publishing.pipe(
        Effect.timeoutOption(CAP_MS),
        Effect.ensuring(Effect.sync(() => {
          published = true
        })),
        Effect.exit
      )
    )
    yield* Effect.promise(() => awaitReceived(counter, n, () => published, start + CAP_MS))
    const exit = yield* Fiber.join(publisher)
    const end = counter.count > 0 ? counter.last : performance.now()
    return {
      received: counter.count,
      sent,
      ms: end - start,
      ...(exit._tag === "Failure" ? { error: String(exit.cause) } : {})
    } satisfies Result
  })).pipe(
    Effect.catchCause((cause) => Effect.succeed({ received: 0, sent: 0, ms: 0, error: String(cause) })),
    Effect.runPromise
  )

const mqttjsRun = async (url: string, ca: Buffer, qos: QoS, n: number): Promise<Result> => {
  const topic = freshTopic(`mqttjs-q${qos}`)
  const options = { protocolVersion: 4, reconnectPeriod: 0, clean: true, keepalive: 60, ca } as const
  const sub = await mqtt.connectAsync(url, options)
  const pub = await mqtt.connectAsync(url, options)
  try {
    await sub.subscribeAsync(topic, { qos })
    const counter: Counter = { count: 0, last: 0 }
    sub.on("message", () => {
      counter.count++
      counter.last = performance.now()
    })
    let sent = 0
    let published = false
    let error: string | undefined
    const start = performance.now()
    const deadline = start + CAP_MS
    const publishing = new Promise<void>((resolve) => {
      let issued = 0
      const onDone = (err?: Error) => {
        if (err !== undefined && err !== null) error ??= err.message
        sent++
        if (sent === n) resolve()
        else if (qos > 0) issue()
      }
      const issue = () => {
        while (issued < n && issued - sent < WINDOW) {
          issued++
          pub.publish(topic, PAYLOAD, { qos }, onDone)
        }
      }
      if (qos > 0) {
        issue()
      } else {
        void (async () => {
          while (issued < n) {
            const end = Math.min(n, issued + BATCH)
            for (; issued < end; issued++) pub.publish(topic, PAYLOAD, { qos }, onDone)
            await nextTurn()
            // a publish whose write filled the socket completes on `drain`: wait for it as effect-mqtt does
            while (sent < issued && performance.now() < deadline) await nextTurn()
          }
        })()
      }
    }).then(() => {
      published = true
    })
    await awaitReceived(counter, n, () => published, deadline)
    await Promise.race([publishing, sleep(Math.max(0, deadline - performance.now()))])
    const end = counter.count > 0 ? counter.last : performance.now()
    return { received: counter.count, sent, ms: end - start, ...(error === undefined ? {} : { error }) }
  } finally {
    pub.end(true)
    sub.end(true)
  }
}

// ---------------------------------------------------------------------------------------------------------
// report
// ---------------------------------------------------------------------------------------------------------

const fmtRate = (n: number) => Math.round(n).toLocaleString("en-US")

const median = (results: ReadonlyArray<Result>) => {
  const sorted = [...results].sort((a, b) => rateOf(a) - rateOf(b))
  const k = (r: Result) => (rateOf(r) / 1000).toFixed(1) + "k"
  return {
    result: sorted[Math.floor((sorted.length - 1) / 2)],
    range: sorted.length > 1 ? ` (${k(sorted[0])}–${k(sorted[sorted.length - 1])})` : ""
  }
}

const show = (m: { result: Result; range: string }): string => {
  const r = m.result
  if (r.error !== undefined && r.received === 0) return `error: ${r.error.split("\n")[0]}`
  const missing = MESSAGES - r.received
  return fmtRate(rateOf(r)) + m.range +
    (missing > 0 ? ` (${missing.toLocaleString("en-US")} of ${MESSAGES.toLocaleString("en-US")} not received)` : "")
}

const table = (header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>): string => {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)))
  const line = (cells: ReadonlyArray<string>) => "| " + cells.map((c, i) => c.padEnd(widths[i])).join(" | ") + " |"
  return [line(header), "| " + widths.map((w) => "-".repeat(w)).join(" | ") + " |", ...rows.map(line)].join("\n")
}

const versionOf = (run: () => string): string => {
  try {
    return run()
  } catch (e) {
    // `mosquitto -h` exits with 3 after printing its usage
    const out = (e as { stdout?: string }).stdout
    return typeof out === "string" && out !== "" ? out : "unknown"
  }
}

const gc = () => (globalThis as { gc?: () => void }).gc?.()

const main = async () => {
  const mosquittoVersion = versionOf(() => execFileSync(MOSQUITTO, ["-h"], { encoding: "utf8" })).split("\n")[0]
  const mqttVersion = versionOf(() =>
    (createRequire(import.meta.url)("mqtt/package.json") as { version: string }).version
  )
  const certs = makeCerts()
  const broker = await startTlsBroker(certs)
  const url = `mqtts://localhost:${broker.port}`
  const ca = Fs.readFileSync(certs.ca.cert)
  const tlsVersion = await new Promise<string>((resolve) => {
    const socket = Tls.connect({ host: "localhost", port: broker.port, ca }, () => {
      resolve(`${socket.getProtocol()} ${socket.getCipher().name}`)
      socket.destroy()
    })
    socket.once("error", (e) => resolve(`unknown (${e.message})`))
  })
  console.log(
    `# Throughput over TLS: effect-mqtt vs MQTT.js ${mqttVersion}\n\n` +
      `node ${process.version}, ${mosquittoVersion}, TLS listener on localhost:${broker.port} (${tlsVersion}, ` +
      `the broker's certificate verified against a test CA, no client certificate); MQTT 3.1.1; one publisher ` +
      `and one subscriber in this process; ${MESSAGES.toLocaleString("en-US")} messages of ${PAYLOAD.length} ` +
      `bytes; at most ${WINDOW} QoS 1 publishes outstanding (QoS 0: batches of ${BATCH}, yielding between); ` +
      `warm-up ${WARMUP}; median of ${RUNS} runs (range in brackets).\n`
  )
  const rows: Array<Array<string>> = []
  try {
    for (const qos of [0, 1] as const) {
      process.stderr.write(`  measuring QoS ${qos} over TLS...\n`)
      await effectRun(url, certs.ca.cert, qos, WARMUP)
      await mqttjsRun(url, ca, qos, WARMUP)
      const effect: Array<Result> = []
      const mqttjs: Array<Result> = []
      for (let run = 0; run < RUNS; run++) {
        gc()
        effect.push(await effectRun(url, certs.ca.cert, qos, MESSAGES))
        gc()
        mqttjs.push(await mqttjsRun(url, ca, qos, MESSAGES))
      }
      const e = median(effect)
      const m = median(mqttjs)
      const ratio = rateOf(m.result) > 0 ? rateOf(e.result) / rateOf(m.result) : NaN
      rows.push([
        `${qos} over TLS`,
        show(e),
        show(m),
        Number.isFinite(ratio) ? ratio.toFixed(2) + "x" : "n/a"
      ])
    }
  } finally {
    await broker.stop()
    certs.dispose()
  }
  console.log(table(["QoS", "effect-mqtt msg/s", "MQTT.js msg/s", "effect-mqtt / MQTT.js"], rows))
}

main().catch((error) => {
  console.log(`tls benchmark failed: ${error instanceof Error ? error.stack : String(error)}`)
}).finally(() => process.exit(0))
