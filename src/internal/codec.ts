import * as MqttPacket from "mqtt-packet"
import { Buffer } from "node:buffer"
import type * as MqttMessage from "../MqttMessage.ts"

/** The fixed-header bytes of the acknowledgements, with their flags. */
export const PUBACK = 0x40
export const PUBREC = 0x50
export const PUBREL = 0x62
export const PUBCOMP = 0x70

/** PINGREQ: fixed header, remaining length 0. */
export const pingreq: Uint8Array = Uint8Array.of(0xc0, 0x00)

/** DISCONNECT. MQTT 5 with a reason code other than 0: reason code, no properties. */
export const disconnect = (protocolVersion: number, reasonCode = 0): Uint8Array =>
  protocolVersion === 5 && reasonCode !== 0 ? Uint8Array.of(0xe0, 0x01, reasonCode) : Uint8Array.of(0xe0, 0x00)

/**
 * Writes acknowledgements into one buffer: 4 bytes each (packet type, remaining length 2, identifier).
 * In MQTT 5 a reason code of 0 with no properties may be left out, so the same bytes serve both versions.
 */
export class AckBuffer {
  private bytes = new Uint8Array(64)
  private length = 0

  get isEmpty(): boolean {
    return this.length === 0
  }

  push(type: number, id: number): void {
    if (this.length + 4 > this.bytes.length) {
      const grown = new Uint8Array(this.bytes.length * 2)
      grown.set(this.bytes.subarray(0, this.length))
      this.bytes = grown
    }
    const b = this.bytes
    const i = this.length
    b[i] = type
    b[i + 1] = 2
    b[i + 2] = id >> 8
    b[i + 3] = id & 0xff
    this.length = i + 4
  }

  /** Pushes an MQTT 5 acknowledgement with a reason code. */
  pushWithReason(type: number, id: number, reasonCode: number): void {
    if (reasonCode === 0) return this.push(type, id)
    const extra = Buffer.of(type, 3, id >> 8, id & 0xff, reasonCode)
    this.pushBytes(extra)
  }

  pushBytes(bytes: Uint8Array): void {
    while (this.length + bytes.length > this.bytes.length) {
      const grown = new Uint8Array(this.bytes.length * 2)
      grown.set(this.bytes.subarray(0, this.length))
      this.bytes = grown
    }
    this.bytes.set(bytes, this.length)
    this.length += bytes.length
  }

  /** Takes the bytes written so far and empties the buffer. */
  take(): Uint8Array {
    const out = Buffer.from(this.bytes.subarray(0, this.length))
    this.length = 0
    return out
  }
}

/** An encoded PUBLISH and where its packet identifier sits, so it can be set once one is allocated. */
export interface EncodedPublish {
  readonly bytes: Buffer
  readonly idOffset: number
}

const varintLength = (n: number): number => n < 128 ? 1 : n < 16384 ? 2 : n < 2097152 ? 3 : 4

/**
 * Encodes a PUBLISH. Without MQTT 5 properties the bytes are written directly (the hot path); with
 * properties mqtt-packet encodes them. Throws when mqtt-packet refuses the packet: callers validate first
 * and catch.
 */
export const encodePublish = (
  protocolVersion: number,
  topic: string,
  payload: Uint8Array,
  qos: number,
  retain: boolean,
  properties: MqttMessage.PublishProperties | undefined
): EncodedPublish => {
  const topicLength = Buffer.byteLength(topic)
  const idLength = qos > 0 ? 2 : 0
  if (protocolVersion === 5 && properties !== undefined && hasProperties(properties)) {
    const bytes = MqttPacket.generate({
      cmd: "publish",
      topic,
      payload: Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength),
      qos: qos as 0 | 1 | 2,
      retain,
      dup: false,
      ...(qos > 0 ? { messageId: 1 } : {}),
      properties: toPacketProperties(properties)
    }, { protocolVersion: 5 })
    const remaining = bytes.length - 1 - varintLengthAt(bytes)
    return { bytes, idOffset: bytes.length - remaining + 2 + topicLength }
  }
  const remaining = 2 + topicLength + idLength + (protocolVersion === 5 ? 1 : 0) + payload.byteLength
  const header = 1 + varintLength(remaining)
  const bytes = Buffer.allocUnsafe(header + remaining)
  bytes[0] = 0x30 | (qos << 1) | (retain ? 1 : 0)
  let i = 1
  let n = remaining
  do {
    let digit = n % 128
    n = Math.floor(n / 128)
    if (n > 0) digit |= 0x80
    bytes[i++] = digit
  } while (n > 0)
  bytes[i++] = topicLength >> 8
  bytes[i++] = topicLength & 0xff
  i += bytes.write(topic, i, "utf8")
  const idOffset = i
  if (qos > 0) {
    bytes[i++] = 0
    bytes[i++] = 0
  }
  if (protocolVersion === 5) bytes[i++] = 0
  bytes.set(payload, i)
  return { bytes, idOffset }
}

const varintLengthAt = (bytes: Uint8Array): number => {
  let i = 1
  while (bytes[i] & 0x80) i++
  return i
}

/** Sets the packet identifier of an encoded PUBLISH; with `dup`, also sets the DUP flag. */
export const setPublishId = (encoded: EncodedPublish, id: number, dup = false): Buffer => {
  const bytes = encoded.bytes
  bytes[encoded.idOffset] = id >> 8
  bytes[encoded.idOffset + 1] = id & 0xff
  if (dup) bytes[0] |= 0x08
  return bytes
}

const hasProperties = (p: MqttMessage.PublishProperties): boolean =>
  p.payloadFormatIndicator !== undefined || p.messageExpiryInterval !== undefined ||
  p.contentType !== undefined || p.responseTopic !== undefined || p.correlationData !== undefined ||
  (p.userProperties !== undefined && p.userProperties.length > 0)

/** Converts user properties to mqtt-packet's form: repeated names become arrays. */
export const toPacketUserProperties = (
  list: ReadonlyArray<MqttMessage.UserProperty>
): MqttPacket.UserProperties => {
  const out: Record<string, string | Array<string>> = {}
  for (const [name, value] of list) {
    const existing = out[name]
    if (existing === undefined) out[name] = value
    else if (typeof existing === "string") out[name] = [existing, value]
    else existing.push(value)
  }
  return out
}

/** Converts mqtt-packet's user properties to a list of pairs. */
export const fromPacketUserProperties = (
  props: MqttPacket.UserProperties | undefined
): ReadonlyArray<MqttMessage.UserProperty> | undefined => {
  if (props === undefined) return undefined
  const out: Array<MqttMessage.UserProperty> = []
  for (const name of Object.keys(props)) {
    const value = props[name]
    if (typeof value === "string") out.push([name, value])
    else for (const v of value) out.push([name, v])
  }
  return out
}

/** Converts publish properties to mqtt-packet's form. */
export const toPacketProperties = (
  p: MqttMessage.PublishProperties
): NonNullable<MqttPacket.IPublishPacket["properties"]> => {
  const out: NonNullable<MqttPacket.IPublishPacket["properties"]> = {}
  if (p.payloadFormatIndicator !== undefined) out.payloadFormatIndicator = p.payloadFormatIndicator
  if (p.messageExpiryInterval !== undefined) out.messageExpiryInterval = p.messageExpiryInterval
  if (p.contentType !== undefined) out.contentType = p.contentType
  if (p.responseTopic !== undefined) out.responseTopic = p.responseTopic
  if (p.correlationData !== undefined) out.correlationData = Buffer.from(p.correlationData)
  if (p.userProperties !== undefined && p.userProperties.length > 0) {
    out.userProperties = toPacketUserProperties(p.userProperties)
  }
  return out
}

/** Converts the properties of a received PUBLISH. */
export const fromPacketProperties = (
  p: NonNullable<MqttPacket.IPublishPacket["properties"]>
): MqttMessage.MessageProperties => {
  const out: {
    -readonly [K in keyof MqttMessage.MessageProperties]: MqttMessage.MessageProperties[K]
  } = {}
  if (p.payloadFormatIndicator !== undefined) out.payloadFormatIndicator = p.payloadFormatIndicator
  if (p.messageExpiryInterval !== undefined) out.messageExpiryInterval = p.messageExpiryInterval
  if (p.contentType !== undefined) out.contentType = p.contentType
  if (p.responseTopic !== undefined) out.responseTopic = p.responseTopic
  if (p.correlationData !== undefined) out.correlationData = p.correlationData
  const user = fromPacketUserProperties(p.userProperties)
  if (user !== undefined) out.userProperties = user
  if (p.subscriptionIdentifier !== undefined) {
    out.subscriptionIdentifiers = typeof p.subscriptionIdentifier === "number"
      ? [p.subscriptionIdentifier]
      : p.subscriptionIdentifier
  }
  return out
}

/** Generates a packet, turning mqtt-packet's exception into a value. */
export const generate = (
  packet: MqttPacket.Packet,
  protocolVersion: number
): Buffer | { readonly error: string } => {
  try {
    return MqttPacket.generate(packet, { protocolVersion })
  } catch (e) {
    return { error: e instanceof Error ? e.message : String(e) }
  }
}

/** A PUBREL for a packet identifier. */
export const pubrel = (id: number): Uint8Array => Uint8Array.of(PUBREL, 2, id >> 8, id & 0xff)
