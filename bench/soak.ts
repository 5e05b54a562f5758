/**
 * Soak: QoS 1 and QoS 2 messages through a private Mosquitto (persistence on) that is killed and restarted
 * several times while they flow, between a publisher and a subscriber with persistent sessions. Prints, for each
 * QoS, what was sent, received, lost and duplicated, and the reconnects of both clients. Run by hand:
 *
 *   npx node --conditions=effect-mqtt-source bench/soak.ts
 *
 * Environment: SOAK_QOS1 and SOAK_QOS2 (messages of each QoS, default 50,000), SOAK_FAULTS (broker stops, default
 * 6, alternately SIGKILL and SIGTERM), SOAK_WINDOW (publishes of each QoS waiting for their acknowledgement at
 * once, default 500), SOAK_PROTOCOL (4 or 5, default 5), SOAK_MAX_SECONDS (the whole run, default 600).
 *
 * How the broker is stopped, and why:
 * - SIGTERM while messages flow: Mosquitto saves its state on the way out.
 * - SIGKILL: Mosquitto saves its state every second or two (`autosave_interval 1`); what it acknowledged since its
 *   last save dies with it, and that loss would be the broker's, not the client's. So before a SIGKILL the
 *   publisher pauses until everything so far is acknowledged and received and the broker has saved twice; then
 *   the broker is frozen (SIGSTOP), publishing resumes into the frozen connection (unacknowledged, in flight), and
 *   the frozen broker is killed. Every message in flight at the kill is the client's to resend.
 * - Mosquitto 2.0.11 may resend a QoS 2 PUBLISH after it sent its PUBREL when a restart cut the exchange before
 *   the PUBCOMP: MQTT forbids the sender that (4.3.3), and the receiver must take such a PUBLISH for a new
 *   message. The subscriber's connection is read on the wire to count these: a duplicate they explain is shown
 *   as the broker's.
 * - MQTT 3.1.1 has no Receive Maximum, yet Mosquitto applies max_inflight_messages (default 20) to what it
 *   receives and drops a QoS 1 PUBLISH beyond it with a plain PUBACK. On 3.1.1 the broker runs with
 *   `max_inflight_messages 0`; on 5.0 it keeps its default and announces it as Receive Maximum.
 *
 * Only 127.0.0.1. Stops by itself; exits with 1 if a message was lost or (QoS 2) duplicated by the client.
 */
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import { MqttClient } from "effect-mqtt"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Socket from "effect/socket/Socket"
import * as Stream from "effect/Stream"
import * as MqttPacket from "mqtt-packet"
import { Buffer } from "node:buffer"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { startMosquitto } from "../test/support/Mosquitto.ts"
import * as Bench from "./support.ts"

const COUNT = { 1: Bench.envInt("SOAK_QOS1", 50_000, true), 2: Bench.envInt("SOAK_QOS2", 50_000, true) } as const
const FAULTS = Math.max(1, Bench.envInt("SOAK_FAULTS", 6, true))
const WINDOW = Math.max(1, Bench.envInt("SOAK_WINDOW", 500, true))
const VERSION: 4 | 5 = process.env.SOAK_PROTOCOL === "4" ? 4 : 5
const MAX_MS = Bench.envInt("SOAK_MAX_SECONDS", 600, true) * 1000

type QoS = 1 | 2

const started = Date.now()
const elapsed = () => ((Date.now() - started) / 1000).toFixed(1).padStart(6) + " s"
const log = (line: string) => console.log(`${elapsed()}  ${line}`)

const broker = await startMosquitto({
  persistence: true,
  protocolConfig: ["max_queued_messages 1000000", ...(VERSION === 4 ? ["max_inflight_messages 0"] : [])].join("\n")
})
const url = broker.url
const runId = Date.now().toString(36)
const topic = (qos: QoS) => `soak/${runId}/q${qos}`

/** acknowledged (PUBACK / PUBCOMP) publishes, and receptions per sequence number */
const completed = { 1: new Uint8Array(COUNT[1]), 2: new Uint8Array(COUNT[2]) }
const completedCount = { 1: 0, 2: 0 }
const received = { 1: new Uint16Array(COUNT[1]), 2: new Uint16Array(COUNT[2]) }
const failures: Array<string> = []
/** QoS 2 messages the broker sent again as PUBLISH after their PUBREL, by sequence number */
const resentAfterPubrel = new Map<number, number>()
const outstanding = { count: 0 }
const faults: Array<string> = []

const caughtUp = () => {
  for (const qos of [1, 2] as const) {
    for (let seq = 0; seq < COUNT[qos]; seq++) if (completed[qos][seq] === 1 && received[qos][seq] === 0) return false
  }
  return true
}

/** packet identifiers whose PUBREL the subscriber received, across connections (the session's) */
const releasedIds = new Set<number>()

/** The subscriber's TCP transport, its incoming packets also read here (see above). */
const tapped = Effect.map(
  NodeSocket.makeNet({ host: "127.0.0.1", port: broker.port, noDelay: true }),
  (inner) =>
    Socket.make({
      writer: inner.writer,
      reader: Effect.map(inner.reader, (reader) => {
        const parser = MqttPacket.parser({ protocolVersion: VERSION })
        parser.on("packet", (packet: MqttPacket.Packet) => {
          if (packet.cmd === "pubrel") releasedIds.add(packet.messageId!)
          if (packet.cmd === "publish" && packet.qos === 2) {
            const id = packet.messageId!
            if (packet.dup && releasedIds.has(id)) {
              const seq = Number(Buffer.from(packet.payload).toString())
              resentAfterPubrel.set(seq, (resentAfterPubrel.get(seq) ?? 0) + 1)
            }
            releasedIds.delete(id)
          }
        })
        return {
          ...reader,
          pull: Effect.tap(reader.pull, (chunks) =>
            Effect.sync(() => {
              for (const chunk of chunks) parser.parse(Buffer.from(chunk as Uint8Array))
            }))
        }
      })
    })
)
const session = (role: string): MqttClient.Options => ({
  url,
  protocolVersion: VERSION,
  clientId: `soak-${role}-${runId}`,
  keepAlive: 5,
  connectTimeout: "3 seconds",
  ...(VERSION === 5 ? { cleanStart: false, sessionExpiryInterval: 3600 } : { cleanSession: false })
})

const sleep = (ms: number) => Effect.sleep(ms)
const until = (condition: () => boolean, limitMs: number, what: string) =>
  Effect.gen(function*() {
    const deadline = Date.now() + limitMs
    while (!condition()) {
      if (Date.now() > deadline) return yield* Effect.fail(new Error(`${what}: not within ${limitMs / 1000} s`))
      yield* sleep(20)
    }
  })

/** Waits until the broker has written its database twice more: the second save began after this call. */
const twoSaves = Effect.gen(function*() {
  const file = Path.join(broker.dataDir, "mosquitto.db")
  const mtime = () => Fs.existsSync(file) ? Fs.statSync(file).mtimeMs : 0
  for (let i = 0; i < 2; i++) {
    const before = mtime()
    yield* until(() => mtime() !== before, 15_000, "a database save")
  }
})

const program = Effect.gen(function*() {
  const subscriber = yield* MqttClient.make({ ...session("sub"), transport: tapped })
  yield* subscriber.subscribe([{ filter: topic(1), qos: 1 }, { filter: topic(2), qos: 2 }])
  yield* Effect.forkChild(
    Stream.runForEach(subscriber.messages, (message) =>
      Effect.sync(() => {
        const qos: QoS = message.topic === topic(1) ? 1 : 2
        const seq = Number(message.text)
        if (seq >= 0 && seq < COUNT[qos]) received[qos][seq]++
      }))
  )
  const publisher = yield* MqttClient.make(session("pub"))
  const clients = [subscriber, publisher]
  const connected = Effect.forEach(
    clients,
    (client) => client.statusChanges.pipe(Stream.filter((s) => s._tag === "Connected"), Stream.runHead),
    { discard: true }
  )

  /** the broker stops so far: the publisher goes past the k-th stretch of its messages once k stops happened */
  let stopsDone = 0
  const issued = { 1: 0, 2: 0 }
  const stretch = (qos: QoS, seq: number) => Math.floor((seq * (FAULTS + 1)) / COUNT[qos])
  const boundary = (qos: QoS, k: number) => Math.ceil((k * COUNT[qos]) / (FAULTS + 1))

  const publishAll = (qos: QoS) =>
    Effect.forEach(
      Array.from({ length: COUNT[qos] }, (_, seq) => seq),
      (seq) =>
        Effect.gen(function*() {
          while (stopsDone < stretch(qos, seq)) yield* sleep(5)
          issued[qos]++
          outstanding.count++
          yield* publisher.publish(topic(qos), String(seq), { qos }).pipe(
            Effect.matchEffect({
              onSuccess: () =>
                Effect.sync(() => {
                  completed[qos][seq] = 1
                  completedCount[qos]++
                }),
              onFailure: (error) => Effect.sync(() => void failures.push(`QoS ${qos} #${seq}: ${error.message}`))
            }),
            Effect.ensuring(Effect.sync(() => outstanding.count--))
          )
        }),
      { concurrency: WINDOW, discard: true }
    )

  const total = COUNT[1] + COUNT[2]
  const progress = () => `${(((completedCount[1] + completedCount[2]) / total) * 100).toFixed(0)}% acknowledged`
  const stops = Effect.gen(function*() {
    for (let k = 1; k <= FAULTS; k++) {
      // both clients connected, and the publisher has issued its k-th stretch and waits, with up to WINDOW
      // publishes of each QoS in flight
      yield* connected
      yield* until(() => issued[1] >= boundary(1, k) && issued[2] >= boundary(2, k), MAX_MS, "the next stretch")
      if (k % 2 === 1) {
        yield* until(() => outstanding.count === 0 && caughtUp(), 60_000, "quiet before SIGKILL")
        yield* twoSaves
        broker.kill("SIGSTOP")
        stopsDone = k
        yield* sleep(500)
        broker.kill("SIGKILL")
        log(`SIGKILL (frozen for 0.5 s with ${outstanding.count} publishes in flight), ${progress()}`)
        faults.push("SIGKILL")
        yield* sleep(1000)
      } else {
        const inFlight = outstanding.count
        stopsDone = k
        log(`SIGTERM (${inFlight} publishes in flight), ${progress()}`)
        faults.push("SIGTERM")
      }
      // restart() stops what still runs (SIGTERM) and starts again on the same port and database
      yield* Effect.promise(() => broker.restart())
      log("broker restarted")
    }
  })

  log(
    `publishing ${COUNT[1]} QoS 1 and ${COUNT[2]} QoS 2 messages over MQTT ${VERSION === 5 ? "5" : "3.1.1"}, ` +
      `${WINDOW} of each in flight, ${FAULTS} broker stops`
  )
  const stopper = yield* Effect.forkChild(stops)
  yield* Effect.all([publishAll(1), publishAll(2)], { concurrency: 2, discard: true })
  log("every publish completed")
  yield* Fiber.join(stopper)
  yield* connected
  yield* until(caughtUp, 120_000, "the subscriber catching up").pipe(
    Effect.catch((error) => Effect.sync(() => log(String(error))))
  )
  // late duplicates would arrive now
  yield* sleep(2000)
  return { subscriber: yield* subscriber.metrics, publisher: yield* publisher.metrics }
})

const result = await Effect.runPromise(
  Effect.scoped(program).pipe(
    Effect.timeoutOption(MAX_MS),
    Effect.exit
  )
)
await broker.dispose()

console.log("")
let bad = false
if (result._tag === "Failure") {
  console.log(`the run failed: ${String(result.cause)}`)
  bad = true
} else if (result.value._tag === "None") {
  console.log(`TIMED OUT after ${MAX_MS / 1000} s: the figures below are partial`)
  bad = true
}
const rows: Array<Array<string>> = [["", "sent", "received", "lost", "duplicated", "by the broker", "failed"]]
for (const qos of [1, 2] as const) {
  let lost = 0
  let duplicated = 0
  let byBroker = 0
  let distinct = 0
  for (let seq = 0; seq < COUNT[qos]; seq++) {
    const times = received[qos][seq]
    if (times > 0) distinct++
    if (completed[qos][seq] === 1 && times === 0) lost++
    if (times > 1) {
      const excused = qos === 2 ? Math.min(times - 1, resentAfterPubrel.get(seq) ?? 0) : 0
      byBroker += excused
      duplicated += times - 1 - excused
    }
  }
  const failed = failures.filter((f) => f.startsWith(`QoS ${qos}`)).length
  rows.push([
    `QoS ${qos}`,
    String(completedCount[qos]),
    String(distinct),
    String(lost),
    String(duplicated),
    String(byBroker),
    String(failed)
  ])
  if (lost > 0 || failed > 0 || (qos === 2 && duplicated > 0)) bad = true
}
const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)))
for (const row of rows) {
  console.log(row.map((cell, i) => i === 0 ? cell.padEnd(widths[i]) : cell.padStart(widths[i])).join("  "))
}
console.log(
  "\n(sent: publishes acknowledged by the broker; received: distinct messages the subscriber got; duplicated: " +
    "extra deliveries, QoS 1 may have them; by the broker: QoS 2 duplicates caused by Mosquitto resending a " +
    "PUBLISH after its PUBREL)"
)
if (failures.length > 0) console.log(`failed publishes, first: ${failures[0]}`)
console.log(`broker stops: ${faults.length} (${faults.join(", ")})`)
if (result._tag === "Success" && result.value._tag === "Some") {
  const { publisher, subscriber } = result.value.value
  for (const [name, m] of [["publisher", publisher], ["subscriber", subscriber]] as const) {
    console.log(
      `${name}: ${m.reconnects} reconnects, ${m.failedAttempts} failed attempts, longest time to reconnect ` +
        `${m.longestDisconnectMillis} ms, ${m.disconnectedMillis} ms disconnected in all`
    )
  }
}
console.log(`total ${elapsed().trim()}`)
process.exit(bad ? 1 : 0)
