import { Buffer, isUtf8 } from "node:buffer"
import type * as MqttMessage from "../MqttMessage.ts"

/**
 * Splits the bytes of a connection into MQTT packets.
 *
 * The fixed header is read here, before the packet's bytes are buffered: a packet larger than the client's
 * Maximum Packet Size is refused as soon as its header arrives, whatever length it declares. Each complete
 * packet is copied out only when it spans several reads.
 */
export class Framer {
  private parts: Array<Buffer> = []
  private buffered = 0
  private readonly maximumPacketSize: number

  constructor(maximumPacketSize: number) {
    this.maximumPacketSize = maximumPacketSize
  }

  /**
   * Adds bytes and calls `onPacket` with each complete packet (its first byte and its body). Returns an
   * error instead when the bytes cannot be a packet or a packet is too large.
   */
  push(
    chunk: Buffer,
    onPacket: (header: number, body: Buffer, packet: Buffer) => void
  ): FrameError | undefined {
    let data: Buffer
    if (this.buffered === 0) {
      data = chunk
    } else {
      this.parts.push(chunk)
      this.buffered += chunk.length
      // wait for the rest of a large packet without copying what arrived so far
      const needed = this.needed()
      if (typeof needed !== "number") return needed
      if (this.buffered < needed) return undefined
      data = Buffer.concat(this.parts, this.buffered)
      this.parts = []
      this.buffered = 0
    }
    let offset = 0
    while (offset < data.length) {
      const header = readHeader(data, offset)
      if (header === undefined) break
      if (typeof header === "string") return { reason: header, reasonCode: 0x81 }
      const total = this.check(header)
      if (typeof total !== "number") return total
      if (offset + total > data.length) break
      const packet = data.subarray(offset, offset + total)
      onPacket(data[offset], packet.subarray(header.headerLength), packet)
      offset += total
    }
    if (offset < data.length) {
      this.parts = [data.subarray(offset)]
      this.buffered = data.length - offset
      const needed = this.needed()
      if (typeof needed !== "number") return needed
    }
    return undefined
  }

  /** The bytes the buffered packet needs in all, once its header is known. */
  private needed(): number | FrameError {
    const first = this.parts[0]
    const head = first.length >= 5 || this.parts.length === 1 ? first : Buffer.concat(this.parts, this.buffered)
    const header = readHeader(head, 0)
    if (header === undefined) return Number.MAX_SAFE_INTEGER
    if (typeof header === "string") return { reason: header, reasonCode: 0x81 }
    return this.check(header)
  }

  /** The whole size of a packet from its header, or why it is refused. */
  private check(header: { readonly headerLength: number; readonly remaining: number }): number | FrameError {
    const total = header.headerLength + header.remaining
    if (total > this.maximumPacketSize) {
      return {
        reason: `a packet of ${total} bytes, over the client's Maximum Packet Size of ${this.maximumPacketSize}`,
        reasonCode: 0x95
      }
    }
    return total
  }
}

/** Why the bytes from the broker cannot be read: the MQTT 5 reason code for the DISCONNECT. */
export interface FrameError {
  readonly reason: string
  readonly reasonCode: number
}

/** Reads a fixed header: undefined when incomplete, a string when malformed. */
const readHeader = (
  data: Buffer,
  offset: number
): { readonly headerLength: number; readonly remaining: number } | string | undefined => {
  let remaining = 0
  let multiplier = 1
  for (let i = 1; i <= 4; i++) {
    if (offset + i >= data.length) return undefined
    const byte = data[offset + i]
    remaining += (byte & 0x7f) * multiplier
    if ((byte & 0x80) === 0) {
      // a last byte of 0 after a continuation byte adds nothing: MQTT 5 [MQTT-1.5.5-1] wants the shortest form,
      // which is also the only one MQTT 3.1.1's encoding algorithm produces
      if (byte === 0 && i > 1) return "a Remaining Length not in its shortest form"
      return { headerLength: i + 1, remaining }
    }
    multiplier *= 128
  }
  return "a Remaining Length longer than four bytes"
}

/** A PUBLISH decoded by the client itself: the hot path, and the only way to keep user properties in order. */
export interface DecodedPublish {
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
export const decodePublish = (
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
