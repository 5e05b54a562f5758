/**
 * Decoding micro-benchmark: the client's current paths against `decode` (src/internal/decode.ts), in one run.
 *
 * Rows:
 * - acknowledgements with a 2-byte body (PUBACK, PUBREC, PUBCOMP in rotation): today's fast path in client.ts
 *   (`acks[header]` and two bytes read into a packet object) against `decode`;
 * - PUBLISH, QoS 1, 64-byte payload, 13-byte topic: `decodePublish` (the client's earlier PUBLISH decoder, kept
 *   below as it was in framer.ts) against `decode`, for MQTT 3.1.1,
 *   MQTT 5 without properties, and MQTT 5 with two user properties.
 *
 * Each row runs `BENCH_ROUNDS` (default 7) rounds of `BENCH_ITERATIONS` (default 1,000,000) decodes per path,
 * alternating which path goes first, after a warm-up; it prints the median nanoseconds per decode, the range, and
 * new/old (below 1 is faster). Run with `npm exec -- node --conditions=effect-mqtt-source bench/decode.ts` (the
 * shared bench module imports the client from its source). Always exits with 0: it is a report.
 */
import { Buffer, isUtf8 } from "node:buffer"
import { performance } from "node:perf_hooks"
import { decode } from "../src/internal/decode.ts"
import type * as MqttMessage from "../src/MqttMessage.ts"
import * as Bench from "./support.ts"

const ROUNDS = Bench.envInt("BENCH_ROUNDS", 7)
const ITERATIONS = Bench.envInt("BENCH_ITERATIONS", 1_000_000)
const COPY_PAYLOADS_BELOW = 16 * 1024

/** As in client.ts: the fixed-header bytes of the acknowledgements that `onFrame` reads itself. */
const acks: Record<number, "puback" | "pubrec" | "pubrel" | "pubcomp"> = {
  0x40: "puback",
  0x50: "pubrec",
  0x62: "pubrel",
  0x70: "pubcomp"
}

/** What `onFrame` in client.ts does for a 2-byte acknowledgement, up to the packet object it hands on. */
const oldAck = (header: number, body: Buffer): { cmd: string; messageId: number } | undefined => {
  const ack = body.length === 2 ? acks[header] : undefined
  if (ack !== undefined) return { cmd: ack, messageId: (body[0] << 8) | body[1] }
  return undefined
}

// ---------------------------------------------------------------------------------------------------------------
// the earlier PUBLISH decoder of framer.ts, as it was
// ---------------------------------------------------------------------------------------------------------------

/** A PUBLISH decoded by the client itself: the hot path, and the only way to keep user properties in order. */
interface DecodedPublish {
  readonly topic: string
  readonly payload: Uint8Array
  readonly qos: 0 | 1 | 2
  readonly retain: boolean
  readonly dup: boolean
  readonly id: number
  readonly properties: MqttMessage.MessageProperties | undefined
  readonly topicAlias: number | undefined
}

/** Decodes the body of a PUBLISH. A string is the reason it is malformed (0x81) or breaks the protocol. */
const decodePublish = (
  header: number,
  body: Buffer,
  version: number,
  copyBelow: number
): DecodedPublish | { readonly error: string; readonly reasonCode: number } => {
  const qos = (header >> 1) & 3
  if (qos === 3) return { error: "a PUBLISH with QoS 3", reasonCode: 0x81 }
  const dup = (header & 8) !== 0
  if (dup && qos === 0) return { error: "a QoS 0 PUBLISH with DUP set", reasonCode: 0x81 }
  if (body.length < 2) return { error: "a PUBLISH too short for its topic", reasonCode: 0x81 }
  const topicLength = (body[0] << 8) | body[1]
  let i = 2 + topicLength
  if (i > body.length) return { error: "a PUBLISH too short for its topic", reasonCode: 0x81 }
  const topicBytes = body.subarray(2, i)
  if (!isUtf8(topicBytes) || topicBytes.includes(0)) {
    return { error: "a PUBLISH whose topic is not valid UTF-8", reasonCode: 0x81 }
  }
  const topic = topicBytes.toString("utf8")
  let id = 0
  if (qos > 0) {
    if (i + 2 > body.length) return { error: "a PUBLISH without its packet identifier", reasonCode: 0x81 }
    id = (body[i] << 8) | body[i + 1]
    if (id === 0) return { error: "a PUBLISH with packet identifier 0", reasonCode: 0x81 }
    i += 2
  }
  let properties: MqttMessage.MessageProperties | undefined
  let topicAlias: number | undefined
  if (version === 5) {
    const length = readVarint(body, i)
    if (length === undefined) return { error: "a PUBLISH with a malformed property length", reasonCode: 0x81 }
    i += length.size
    const end = i + length.value
    if (end > body.length) return { error: "a PUBLISH whose properties overrun it", reasonCode: 0x81 }
    if (length.value > 0) {
      const decoded = decodeProperties(body, i, end)
      if (decoded === "duplicate") return { error: "a PUBLISH with a repeated property", reasonCode: 0x82 }
      if (typeof decoded === "string") return { error: decoded, reasonCode: 0x81 }
      properties = decoded.properties
      topicAlias = decoded.topicAlias
    }
    i = end
  }
  const payloadBytes = body.subarray(i)
  // a small payload is copied, so that it does not keep the whole socket read alive in the queue
  const payload = payloadBytes.length < copyBelow ? Uint8Array.prototype.slice.call(payloadBytes) : payloadBytes
  return { topic, payload, qos: qos as 0 | 1 | 2, retain: (header & 1) !== 0, dup, id, properties, topicAlias }
}

const readVarint = (data: Buffer, offset: number): { readonly value: number; readonly size: number } | undefined => {
  let value = 0
  let multiplier = 1
  for (let i = 0; i < 4; i++) {
    if (offset + i >= data.length) return undefined
    const byte = data[offset + i]
    value += (byte & 0x7f) * multiplier
    if ((byte & 0x80) === 0) return { value, size: i + 1 }
    multiplier *= 128
  }
  return undefined
}

const decoder = new TextDecoder("utf-8", { fatal: true })

const decodeProperties = (
  data: Buffer,
  start: number,
  end: number
):
  | { properties: MqttMessage.MessageProperties; topicAlias: number | undefined }
  | string
  | "duplicate" =>
{
  const out: {
    -readonly [K in keyof MqttMessage.MessageProperties]: MqttMessage.MessageProperties[K]
  } = {}
  let topicAlias: number | undefined
  const userProperties: Array<MqttMessage.UserProperty> = []
  const subscriptionIdentifiers: Array<number> = []
  let i = start
  const string = (): string | undefined => {
    if (i + 2 > end) return undefined
    const length = (data[i] << 8) | data[i + 1]
    if (i + 2 + length > end) return undefined
    try {
      const value = decoder.decode(data.subarray(i + 2, i + 2 + length))
      if (value.includes("\u0000")) return undefined
      i += 2 + length
      return value
    } catch {
      return undefined
    }
  }
  while (i < end) {
    const id = data[i++]
    switch (id) {
      case 0x01: {
        if (out.payloadFormatIndicator !== undefined) return "duplicate"
        if (i + 1 > end || data[i] > 1) return "a malformed Payload Format Indicator"
        out.payloadFormatIndicator = data[i++] === 1
        break
      }
      case 0x02: {
        if (out.messageExpiryInterval !== undefined) return "duplicate"
        if (i + 4 > end) return "a malformed Message Expiry Interval"
        out.messageExpiryInterval = data.readUInt32BE(i)
        i += 4
        break
      }
      case 0x03: {
        if (out.contentType !== undefined) return "duplicate"
        const value = string()
        if (value === undefined) return "a malformed Content Type"
        out.contentType = value
        break
      }
      case 0x08: {
        if (out.responseTopic !== undefined) return "duplicate"
        const value = string()
        if (value === undefined) return "a malformed Response Topic"
        out.responseTopic = value
        break
      }
      case 0x09: {
        if (out.correlationData !== undefined) return "duplicate"
        if (i + 2 > end) return "malformed Correlation Data"
        const length = (data[i] << 8) | data[i + 1]
        if (i + 2 + length > end) return "malformed Correlation Data"
        out.correlationData = Uint8Array.prototype.slice.call(data, i + 2, i + 2 + length)
        i += 2 + length
        break
      }
      case 0x0b: {
        const value = readVarint(data, i)
        if (value === undefined || value.value === 0 || i + value.size > end) {
          return "a malformed Subscription Identifier"
        }
        subscriptionIdentifiers.push(value.value)
        i += value.size
        break
      }
      case 0x23: {
        if (topicAlias !== undefined) return "duplicate"
        if (i + 2 > end) return "a malformed Topic Alias"
        topicAlias = (data[i] << 8) | data[i + 1]
        i += 2
        break
      }
      case 0x26: {
        const name = string()
        const value = name === undefined ? undefined : string()
        if (name === undefined || value === undefined) return "a malformed User Property"
        userProperties.push([name, value])
        break
      }
      default:
        return `a PUBLISH with property 0x${id.toString(16).padStart(2, "0")}, which PUBLISH does not have`
    }
  }
  if (userProperties.length > 0) out.userProperties = userProperties
  if (subscriptionIdentifiers.length > 0) out.subscriptionIdentifiers = subscriptionIdentifiers
  return { properties: out, topicAlias }
}

// inputs: many distinct buffers, as socket reads give, so that nothing is constant
const SAMPLES = 4096
const ackHeaders = [0x40, 0x50, 0x70]
const ackInputs = Array.from({ length: SAMPLES }, (_, i) => {
  const chunk = Buffer.from([ackHeaders[i % 3], 2, (i + 1) >> 8, (i + 1) & 0xff])
  return { header: chunk[0], body: chunk.subarray(2) }
})

const publishBody = (id: number, version: 4 | 5, userProperties: boolean): Buffer => {
  const topic = Buffer.from(`bench/topic/${id % 10}`)
  const parts: Array<Buffer> = [Buffer.from([topic.length >> 8, topic.length & 0xff]), topic]
  parts.push(Buffer.from([id >> 8, id & 0xff]))
  if (version === 5) {
    if (userProperties) {
      const pair = (name: string, value: string) => {
        const n = Buffer.from(name)
        const v = Buffer.from(value)
        return Buffer.concat([Buffer.from([0x26, 0, n.length]), n, Buffer.from([0, v.length]), v])
      }
      const props = Buffer.concat([pair("app-id", "0001"), pair("trace-id", `abc${id % 100}`)])
      parts.push(Buffer.from([props.length]), props)
    } else {
      parts.push(Buffer.from([0]))
    }
  }
  parts.push(Buffer.alloc(64, id & 0xff))
  // inside a larger read, as the framer hands it
  const packet = Buffer.concat(parts)
  const read = Buffer.concat([Buffer.alloc(7), packet, Buffer.alloc(9)])
  return read.subarray(7, 7 + packet.length)
}

const publishInputs = (version: 4 | 5, userProperties: boolean) =>
  Array.from(
    { length: SAMPLES },
    (_, i) => ({ header: 0x32, body: publishBody((i % 65535) + 1, version, userProperties) })
  )

let sink = 0

const time = (run: () => void): number => {
  const start = performance.now()
  run()
  return ((performance.now() - start) * 1e6) / ITERATIONS
}

interface Row {
  readonly name: string
  readonly old: () => void
  readonly next: () => void
}

const ackRow: Row = {
  name: "PUBACK/PUBREC/PUBCOMP, 2-byte body",
  old: () => {
    for (let n = 0; n < ITERATIONS; n++) {
      const input = ackInputs[n & (SAMPLES - 1)]
      const packet = oldAck(input.header, input.body)
      if (packet !== undefined) sink += packet.messageId
    }
  },
  next: () => {
    for (let n = 0; n < ITERATIONS; n++) {
      const input = ackInputs[n & (SAMPLES - 1)]
      const packet = decode(input.header, input.body, 5)
      if (packet._tag !== "Violation" && "id" in packet) sink += packet.id
    }
  }
}

const publishRow = (name: string, version: 4 | 5, userProperties: boolean): Row => {
  const inputs = publishInputs(version, userProperties)
  return {
    name,
    old: () => {
      for (let n = 0; n < ITERATIONS; n++) {
        const input = inputs[n & (SAMPLES - 1)]
        const packet = decodePublish(input.header, input.body, version, COPY_PAYLOADS_BELOW)
        if (!("error" in packet)) sink += packet.id + packet.topic.length + packet.payload.length
      }
    },
    next: () => {
      for (let n = 0; n < ITERATIONS; n++) {
        const input = inputs[n & (SAMPLES - 1)]
        const packet = decode(input.header, input.body, version)
        if (packet._tag === "Publish") sink += packet.id + packet.topic.length + packet.payload.length
      }
    }
  }
}

const rows: Array<Row> = [
  ackRow,
  publishRow("PUBLISH QoS 1, MQTT 3.1.1", 4, false),
  publishRow("PUBLISH QoS 1, MQTT 5, no properties", 5, false),
  publishRow("PUBLISH QoS 1, MQTT 5, 2 user properties", 5, true)
]

// the checks that the two paths decode the same thing, before timing them
{
  const a = oldAck(ackInputs[4].header, ackInputs[4].body)
  const b = decode(ackInputs[4].header, ackInputs[4].body, 5)
  if (a === undefined || b._tag !== "Pubrec" || b.id !== a.messageId) throw new Error("the ack paths disagree")
  const input = publishInputs(5, true)[3]
  const p = decodePublish(input.header, input.body, 5, COPY_PAYLOADS_BELOW)
  const q = decode(input.header, input.body, 5)
  if ("error" in p || q._tag !== "Publish" || JSON.stringify(p.properties) !== JSON.stringify(q.properties)) {
    throw new Error("the PUBLISH paths disagree")
  }
}

const ns = (n: number) => n.toFixed(1).padStart(6)

console.log(`node ${process.version}, ${ROUNDS} rounds of ${ITERATIONS.toLocaleString("en")} decodes per path`)
console.log(
  `${"row".padEnd(44)} ${"old ns".padStart(6)} ${"range".padStart(13)} ${"new ns".padStart(6)} ${
    "range".padStart(13)
  }  new/old`
)
for (const row of rows) {
  // warm-up: both paths optimised before timing
  row.old()
  row.next()
  const old: Array<number> = []
  const next: Array<number> = []
  for (let r = 0; r < ROUNDS; r++) {
    if (r % 2 === 0) {
      old.push(time(row.old))
      next.push(time(row.next))
    } else {
      next.push(time(row.next))
      old.push(time(row.old))
    }
  }
  const o = Bench.median(old)
  const n = Bench.median(next)
  const range = (v: Array<number>) => `${ns(Math.min(...v))}-${ns(Math.max(...v)).trim()}`.padStart(13)
  console.log(`${row.name.padEnd(44)} ${ns(o)} ${range(old)} ${ns(n)} ${range(next)}  ${(n / o).toFixed(2)}`)
}
if (sink === 0.5) console.log(sink)
