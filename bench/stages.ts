/**
 * Where the time of one message goes, publish to receive, for each library: the publisher and the subscriber in one
 * process (as bench/scale.ts's latency section), 64 B at QoS 0 or 1 paced every millisecond, each message stamped
 *
 * - when it is made (the time travels in its payload),
 * - when its bytes reach the socket (Node's `Socket#_writeGeneric`, where a write leaves the stream: after MQTT.js's
 *   cork, after effect-mqtt's outbox),
 * - when the subscriber's socket reads it (`Socket#push`),
 * - when the consumer gets it (effect-mqtt: `Stream.runForEachArray` on `messages`; MQTT.js: its `message` event).
 *
 * A third row, the floor, does the same with raw sockets that only frame (bench/raw.ts): the broker's and the
 * machine's share, with no client library in the way.
 *
 * For each run: the percentiles p50/p90/p99/p99.9 in µs of "publish" (made → written), "read → consumer" and
 * "end to end", the mean of each stage over the messages in the 98.5th to 99.5th percentile of end to end (the slow
 * ones around the p99: which stage made them slow), and the process's CPU per message. A diagnostic, not a figure of
 * the README's tables: it patches Node's socket methods to stamp.
 *
 * Run: `node --conditions=effect-mqtt-source bench/stages.ts`. Environment: BENCH_STAGES_RUNS (default 3 per
 * library and floor, alternating), BENCH_STAGES_RATE (default 1000 msg/s), BENCH_STAGES_QOS (default 0),
 * BENCH_STAGES_WARMUP_MS (default 15000: V8 still compiles both libraries' paths for ~10 s at 1,000/s),
 * BENCH_STAGES_MS (default 6000 measured), BENCH_STAGES_FLOOD (msg/s of a 4 s flood between the warm-up and the
 * measured window, as before bench/scale.ts's last latency row; default 0: none).
 */
import { MqttClient } from "effect-mqtt"
import * as Effect from "effect/Effect"
import * as Stream from "effect/Stream"
import * as mqtt from "mqtt"
import { Buffer } from "node:buffer"
import { execFileSync } from "node:child_process"
import * as Net from "node:net"
import { performance } from "node:perf_hooks"
import { fileURLToPath } from "node:url"
import { startBroker } from "./broker.ts"
import { rawPair, stampedPublishes } from "./raw.ts"
import { envInt, sleep } from "./support.ts"

const RATE = envInt("BENCH_STAGES_RATE", 1000)
const QOS = envInt("BENCH_STAGES_QOS", 0, true) === 1 ? 1 : 0
const WARMUP_MS = envInt("BENCH_STAGES_WARMUP_MS", 15_000)
const MEASURED_MS = envInt("BENCH_STAGES_MS", 6000)
const RUNS = envInt("BENCH_STAGES_RUNS", 3)
const FLOOD = envInt("BENCH_STAGES_FLOOD", 0, true)
const FLOOD_MS = 4000
/** Marks the payloads of this bench (byte 8), so that other packets are not taken for them. */
const MARK = 0xab

const LABELS: Record<string, string> = {
  effect: "effect-mqtt",
  mqttjs: "MQTT.js",
  raw: "floor: raw sockets"
}

/** One message's stamps, in ms (performance.now()). */
interface Stamps {
  written?: number
  read?: number
}

const child = async (kind: string, url: string) => {
  const stamps = new Map<number, Stamps>()
  const rows: Array<[endToEnd: number, publish: number, network: number, receive: number]> = []
  let measuring = false
  const subscriberSockets = new WeakSet<object>()

  /** The made-at time of each of this bench's PUBLISH packets in a chunk (whole packets, or a bare payload). */
  const madeAt = (chunk: Uint8Array, each: (made: number) => void) => {
    // MQTT.js writes a packet's payload as a chunk of its own
    if (chunk.length === 64) return chunk[8] === MARK ? each(Buffer.from(chunk).readDoubleLE(0)) : undefined
    stampedPublishes(chunk, MARK, each)
  }
  const stampOf = (made: number) => {
    let s = stamps.get(made)
    if (s === undefined) stamps.set(made, s = {})
    return s
  }

  const proto = Net.Socket.prototype as unknown as Record<string, (...args: Array<unknown>) => unknown>
  const writeGeneric = proto._writeGeneric
  proto._writeGeneric = function(this: unknown, writev, data, ...rest) {
    if (measuring) {
      const now = performance.now()
      const chunks = writev ? (data as Array<{ chunk: unknown }>).map((d) => d.chunk) : [data]
      for (const chunk of chunks) {
        if (chunk instanceof Uint8Array) madeAt(chunk, (made) => stampOf(made).written = now)
      }
    }
    return writeGeneric.call(this, writev, data, ...rest)
  }
  const push = proto.push
  proto.push = function(this: object, chunk, ...rest) {
    if (measuring && chunk instanceof Uint8Array && subscriberSockets.has(this)) {
      const now = performance.now()
      madeAt(chunk, (made) => stampOf(made).read = now)
    }
    return push.call(this, chunk, ...rest)
  }
  // the next socket connected is the subscriber's
  let nextIsSubscriber = false
  const connect = proto.connect
  proto.connect = function(this: object, ...args) {
    if (nextIsSubscriber) subscriberSockets.add(this)
    nextIsSubscriber = false
    return connect.apply(this, args)
  }

  const consumed = (payload: Uint8Array) => {
    if (!measuring) return
    const now = performance.now()
    const made = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).readDoubleLE(0)
    const s = stamps.get(made)
    stamps.delete(made)
    if (s?.written !== undefined && s.read !== undefined) {
      rows.push([now - made, s.written - made, s.read - s.written, now - s.read])
    }
  }

  const paced = async (ms: number, send: (payloads: ReadonlyArray<Buffer>) => void, rate = RATE) => {
    const start = performance.now()
    let issued = 0
    while (performance.now() - start < ms) {
      const target = Math.floor(((performance.now() - start) * rate) / 1000)
      const batch: Array<Buffer> = []
      for (; issued < target; issued++) {
        const payload = Buffer.alloc(64)
        payload[8] = MARK
        payload.writeDoubleLE(performance.now(), 0)
        batch.push(payload)
      }
      if (batch.length > 0) send(batch)
      await sleep(1)
    }
  }
  let cpu = 0
  const series = async (publish: (payloads: ReadonlyArray<Buffer>) => void) => {
    await paced(WARMUP_MS, publish)
    if (FLOOD > 0) {
      // as bench/scale.ts's last latency row: the measured rate after a flood
      await paced(FLOOD_MS, publish, FLOOD)
      await sleep(300)
    }
    measuring = true
    const before = process.cpuUsage()
    await paced(MEASURED_MS, publish)
    await sleep(300)
    const used = process.cpuUsage(before)
    cpu = used.user + used.system
    measuring = false
  }

  const topic = `stages/${kind}/${process.pid}`
  if (kind === "effect") {
    await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      nextIsSubscriber = true
      const sub = yield* MqttClient.make({ url })
      yield* sub.subscribe(topic, { qos: QOS })
      yield* Effect.forkScoped(Stream.runForEachArray(sub.messages, (messages) =>
        Effect.sync(() => {
          for (const m of messages) consumed(m.payload)
        })))
      const pub = yield* MqttClient.make({ url, maxInflight: 1000 })
      const publish = (payloads: ReadonlyArray<Buffer>) =>
        Effect.runFork(Effect.forEach(payloads, (payload) => pub.publishAccepted(topic, payload, { qos: QOS }), {
          discard: true
        }))
      yield* Effect.promise(() => series(publish))
    })))
  } else if (kind === "raw") {
    nextIsSubscriber = true
    const pair = await rawPair(Number(new URL(url).port), `stages${process.pid}`, topic, QOS, consumed)
    await series(pair.publish)
    pair.close()
  } else {
    nextIsSubscriber = true
    const sub = await mqtt.connectAsync(url, { reconnectPeriod: 0 })
    await sub.subscribeAsync(topic, { qos: QOS })
    sub.on("message", (_topic, payload) => consumed(payload))
    const pub = await mqtt.connectAsync(url, { reconnectPeriod: 0 })
    await series((payloads) => {
      for (const payload of payloads) pub.publish(topic, payload, { qos: QOS })
    })
    sub.end(true)
    pub.end(true)
  }

  const percentiles = (k: number) => {
    const sorted = rows.map((r) => r[k]).sort((a, b) => a - b)
    const at = (p: number) => (sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] * 1000).toFixed(0)
    return `${at(0.5)} / ${at(0.9)} / ${at(0.99)} / ${at(0.999)}`
  }
  const byEndToEnd = [...rows].sort((a, b) => a[0] - b[0])
  const slow = byEndToEnd.slice(Math.floor(0.985 * rows.length), Math.floor(0.995 * rows.length))
  const mean = (k: number) => (slow.reduce((sum, r) => sum + r[k], 0) / slow.length * 1000).toFixed(0)
  console.log(
    `| ${LABELS[kind] ?? kind} | ${rows.length} | ${percentiles(1)} | ${percentiles(3)} | ` +
      `${percentiles(0)} | ${mean(0)} = ${mean(1)} + ${mean(2)} + ${mean(3)} | ${(cpu / rows.length).toFixed(1)} |`
  )
  process.exit(0)
}

const main = async () => {
  const broker = await startBroker({ tcpNoDelay: true })
  try {
    console.log(
      `# Stages: ${RATE.toLocaleString("en-US")} msg/s, QoS ${QOS}, measured ${MEASURED_MS / 1000} s after ` +
        `${WARMUP_MS / 1000} s${
          FLOOD > 0 ? ` and ${FLOOD_MS / 1000} s at ${FLOOD.toLocaleString("en-US")} msg/s` : ""
        }, Mosquitto with set_tcp_nodelay true\n`
    )
    console.log(
      "| library | messages | publish p50 / p90 / p99 / p99.9 µs | read → consumer µs | end to end µs | " +
        "98.5–99.5th percentile: end to end = publish + broker + receive, mean µs | CPU µs/msg |"
    )
    console.log("| --- | --- | --- | --- | --- | --- | --- |")
    for (let run = 0; run < RUNS; run++) {
      for (const kind of ["effect", "mqttjs", "raw"]) {
        const out = execFileSync(process.execPath, [
          ...process.execArgv,
          fileURLToPath(import.meta.url),
          kind,
          broker.url
        ], {
          stdio: ["ignore", "pipe", "inherit"]
        })
        process.stdout.write(out.toString())
      }
    }
  } finally {
    await broker.stop()
  }
}

const [kind, url] = process.argv.slice(2)
if (kind !== undefined && url !== undefined) await child(kind, url)
else await main()
