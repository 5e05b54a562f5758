import type * as MqttMessage from "../MqttMessage.ts"
import * as Bytes from "./bytes.ts"
import { describe } from "./describe.ts"

/** The fixed-header bytes of the acknowledgements, with their flags. */
export const PUBACK = 0x40
export const PUBREC = 0x50
export const PUBREL = 0x62
export const PUBCOMP = 0x70

/** PINGREQ: fixed header, remaining length 0. */
export const pingreq: Uint8Array = Uint8Array.of(0xc0, 0x00)

/** DISCONNECT. In MQTT 5 with a reason code (1 byte) and, when given, a Session Expiry Interval property. */
export const disconnect = (protocolVersion: number, reasonCode = 0, sessionExpiry?: number): Uint8Array => {
  if (protocolVersion !== 5) return Uint8Array.of(0xe0, 0x00)
  if (sessionExpiry !== undefined) {
    const out = Uint8Array.of(0xe0, 7, reasonCode, 5, 0x11, 0, 0, 0, 0)
    Bytes.writeUint32(out, 5, sessionExpiry)
    return out
  }
  return reasonCode !== 0 ? Uint8Array.of(0xe0, 0x01, reasonCode) : Uint8Array.of(0xe0, 0x00)
}

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
    this.pushBytes(Uint8Array.of(type, 3, id >> 8, id & 0xff, reasonCode))
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
    const out = Bytes.allocate(this.length)
    out.set(this.bytes.subarray(0, this.length))
    this.length = 0
    return out
  }
}

/**
 * An encoded PUBLISH and where its packet identifier sits, so it can be set once one is allocated. A payload of
 * `SEPARATE_PAYLOAD` bytes or more is not copied: `bytes` is then the packet up to the payload, and `payload`
 * the caller's bytes, written after it as they are (one batched socket write, as MQTT.js does).
 */
export interface EncodedPublish {
  /** the whole packet, or its fixed and variable header when `payload` is given */
  readonly bytes: Uint8Array
  readonly idOffset: number
  /** the payload, written after `bytes`, when it is not in `bytes` */
  readonly payload: Uint8Array | undefined
  /** the size of the whole packet, in bytes */
  readonly size: number
}

/**
 * From this payload size on, a PUBLISH is written as its header and the caller's payload, uncopied: copying
 * costs more than a second chunk in the socket's batched write (and the packet would not fit the allocator's
 * pool anyway).
 */
export const SEPARATE_PAYLOAD = 4096

/** The largest Variable Byte Integer: four bytes [MQTT-1.5.5-1]. */
export const MAX_VARINT = 268_435_455

const varintLength = (n: number): number => n < 128 ? 1 : n < 16384 ? 2 : n < 2097152 ? 3 : 4

/**
 * Encodes a PUBLISH, written byte by byte (the hot path).
 * `alias` replaces the topic by an MQTT 5 Topic Alias (`omitTopic`) or sets one up. Throws an `Error` whose
 * message says what is wrong when a property cannot be encoded: callers validate first and catch.
 */
export const encodePublish = (
  protocolVersion: number,
  topic: string,
  payload: Uint8Array,
  qos: number,
  retain: boolean,
  properties: MqttMessage.PublishProperties | undefined,
  alias?: { readonly alias: number; readonly omitTopic: boolean }
): EncodedPublish => {
  const sentTopic = alias?.omitTopic === true ? "" : topic
  const topicLength = Bytes.utf8Length(sentTopic)
  const idLength = qos > 0 ? 2 : 0
  let props: Uint8Array | undefined
  if (protocolVersion === 5) {
    props = properties === undefined && alias === undefined ? Bytes.empty : encodeProperties(properties, alias?.alias)
    if (properties?.payloadFormatIndicator === true && !Bytes.isUtf8(payload)) {
      throw new Error("the payload is marked UTF-8 (payloadFormatIndicator) but is not valid UTF-8")
    }
  }
  const propsLength = props === undefined ? 0 : varintLength(props.length) + props.length
  const payloadLength = payload.byteLength
  const remaining = 2 + topicLength + idLength + propsLength + payloadLength
  if (remaining > MAX_VARINT) throw new Error("the packet is larger than MQTT allows (256 MB)")
  const header = 1 + varintLength(remaining)
  const separate = payloadLength >= SEPARATE_PAYLOAD
  const bytes = Bytes.allocate(header + remaining - (separate ? payloadLength : 0))
  bytes[0] = 0x30 | (qos << 1) | (retain ? 1 : 0)
  let i = writeVarint(bytes, 1, remaining)
  bytes[i++] = topicLength >> 8
  bytes[i++] = topicLength & 0xff
  i = Bytes.writeUtf8(bytes, i, sentTopic)
  const idOffset = i
  if (qos > 0) {
    bytes[i++] = 0
    bytes[i++] = 0
  }
  if (props !== undefined) {
    i = writeVarint(bytes, i, props.length)
    bytes.set(props, i)
    i += props.length
  }
  if (!separate) bytes.set(payload, i)
  return { bytes, idOffset, payload: separate ? payload : undefined, size: header + remaining }
}

/** Appends the chunks of an encoded PUBLISH to `send`: the packet, or its header and then its payload. */
export const pushPublish = (send: Array<Uint8Array>, encoded: EncodedPublish): void => {
  send.push(encoded.bytes)
  if (encoded.payload !== undefined) send.push(encoded.payload)
}

/** The whole packet in one array (a copy when the payload is separate): for tests and tools, not the hot path. */
export const publishPacket = (encoded: EncodedPublish): Uint8Array =>
  encoded.payload === undefined ? encoded.bytes : Bytes.concat([encoded.bytes, encoded.payload], encoded.size)

/**
 * Writes a Variable Byte Integer (the Remaining Length, a property length, a Subscription Identifier). Throws for
 * a value that is not a whole number from 0 to `MAX_VARINT` rather than write a fifth byte (a malformed packet) or
 * leave one out (a wrong value).
 */
const writeVarint = (bytes: Uint8Array, offset: number, value: number): number => {
  if (!(value >= 0 && value <= MAX_VARINT && Number.isInteger(value))) {
    throw new Error(`a variable byte integer must be a whole number from 0 to ${MAX_VARINT}, not ${value}`)
  }
  let i = offset
  let n = value
  do {
    let digit = n % 128
    n = Math.floor(n / 128)
    if (n > 0) digit |= 0x80
    bytes[i++] = digit
  } while (n > 0)
  return i
}

/** Encodes the properties of a PUBLISH (or a will), user properties in the order given. */
/**
 * Why a value is not a list of user properties (`[name, value]` pairs of strings), or `undefined` (the strings'
 * contents are checked as they are written).
 */
export const userPropertiesProblem = (list: unknown): string | undefined =>
  Array.isArray(list) &&
    list.every((pair) =>
      Array.isArray(pair) && pair.length === 2 && typeof pair[0] === "string" && typeof pair[1] === "string"
    )
    ? undefined
    : "userProperties must be a list of [name, value] pairs of strings"

const checkUserProperties = (list: unknown): void => {
  const problem = userPropertiesProblem(list)
  if (problem !== undefined) throw new Error(problem)
}

export const encodeProperties = (p: MqttMessage.PublishProperties | undefined, topicAlias?: number): Uint8Array => {
  const parts: Array<Uint8Array> = []
  const string = (name: string, value: unknown): Uint8Array => {
    if (typeof value !== "string") throw new Error(`${name} must be a string`)
    if (value.includes("\u0000")) throw new Error(`${name} must not contain U+0000`)
    if (!Bytes.isWellFormed(value)) throw new Error(`${name} is not well-formed UTF-16 (lone surrogate)`)
    const length = Bytes.utf8Length(value)
    if (length > 65535) throw new Error(`${name} is longer than 65,535 bytes`)
    const out = Bytes.allocate(2 + length)
    out[0] = length >> 8
    out[1] = length & 0xff
    Bytes.writeUtf8(out, 2, value)
    return out
  }
  if (p !== undefined) {
    if (p.payloadFormatIndicator !== undefined) {
      if (typeof p.payloadFormatIndicator !== "boolean") throw new Error("payloadFormatIndicator must be a boolean")
      parts.push(Uint8Array.of(0x01, p.payloadFormatIndicator ? 1 : 0))
    }
    if (p.messageExpiryInterval !== undefined) {
      const v = p.messageExpiryInterval
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
        throw new Error("messageExpiryInterval must be whole seconds from 0 to 4294967295")
      }
      const out = Bytes.allocate(5)
      out[0] = 0x02
      Bytes.writeUint32(out, 1, v)
      parts.push(out)
    }
    if (p.contentType !== undefined) parts.push(Uint8Array.of(0x03), string("contentType", p.contentType))
    if (p.responseTopic !== undefined) {
      if (/[+#]/.test(p.responseTopic) || p.responseTopic === "") {
        throw new Error("responseTopic must be a topic name, without wildcards")
      }
      parts.push(Uint8Array.of(0x08), string("responseTopic", p.responseTopic))
    }
    if (p.correlationData !== undefined) {
      if (!(p.correlationData instanceof Uint8Array)) throw new Error("correlationData must be a Uint8Array")
      if (p.correlationData.length > 65535) throw new Error("correlationData is longer than 65,535 bytes")
      const out = Bytes.allocate(3 + p.correlationData.length)
      out[0] = 0x09
      out[1] = p.correlationData.length >> 8
      out[2] = p.correlationData.length & 0xff
      out.set(p.correlationData, 3)
      parts.push(out)
    }
    if (p.userProperties !== undefined) {
      checkUserProperties(p.userProperties)
      for (const pair of p.userProperties) {
        parts.push(
          Uint8Array.of(0x26),
          string("a user property name", pair[0]),
          string("a user property value", pair[1])
        )
      }
    }
  }
  if (topicAlias !== undefined) {
    parts.push(Uint8Array.of(0x23, topicAlias >> 8, topicAlias & 0xff))
  }
  if (parts.length === 0) return Bytes.empty
  let total = 0
  for (const part of parts) total += part.length
  return Bytes.concat(parts, total)
}

/**
 * Sets the packet identifier of an encoded PUBLISH; with `dup`, also sets the DUP flag. Returns `bytes` (with a
 * separate payload, only the header: the payload follows it).
 */
export const setPublishId = (encoded: EncodedPublish, id: number, dup = false): Uint8Array => {
  const bytes = encoded.bytes
  bytes[encoded.idOffset] = id >> 8
  bytes[encoded.idOffset + 1] = id & 0xff
  if (dup) bytes[0] |= 0x08
  return bytes
}

/** A PUBREL for a packet identifier. */
export const pubrel = (id: number): Uint8Array => Uint8Array.of(PUBREL, 2, id >> 8, id & 0xff)

/**
 * Writes packets field by field: CONNECT, SUBSCRIBE, UNSUBSCRIBE and AUTH, user properties in the order given.
 * Throws an `Error` saying what cannot be encoded.
 */
class PacketWriter {
  private readonly parts: Array<Uint8Array> = []
  private size = 0

  get length(): number {
    return this.size
  }

  bytes(value: Uint8Array): this {
    this.parts.push(value)
    this.size += value.length
    return this
  }

  byte(value: number): this {
    return this.bytes(Uint8Array.of(value))
  }

  u16(value: number): this {
    return this.bytes(Uint8Array.of(value >> 8, value & 0xff))
  }

  /** A Four Byte Integer; `name` says which, for the error when `value` is not a whole number that fits. */
  u32(value: number, name = "a four-byte integer"): this {
    if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
      throw new Error(`${name} must be a whole number from 0 to 4294967295`)
    }
    const out = new Uint8Array(4)
    Bytes.writeUint32(out, 0, value)
    return this.bytes(out)
  }

  varint(value: number): this {
    const out = new Uint8Array(4)
    return this.bytes(out.subarray(0, writeVarint(out, 0, value)))
  }

  string(name: string, value: string): this {
    if (typeof value !== "string") throw new Error(`${name} must be a string`)
    if (value.includes("\u0000")) throw new Error(`${name} must not contain U+0000`)
    if (!Bytes.isWellFormed(value)) throw new Error(`${name} is not well-formed UTF-16 (lone surrogate)`)
    return this.binary(name, Bytes.utf8(value))
  }

  binary(name: string, value: Uint8Array): this {
    if (!(value instanceof Uint8Array)) throw new Error(`${name} must be a Uint8Array`)
    if (value.length > 65535) throw new Error(`${name} is longer than 65,535 bytes`)
    return this.u16(value.length).bytes(value)
  }

  userProperties(list: ReadonlyArray<MqttMessage.UserProperty> | undefined): this {
    if (list === undefined) return this
    checkUserProperties(list)
    for (const [name, value] of list) {
      this.byte(0x26).string("a user property name", name).string("a user property value", value)
    }
    return this
  }

  /** A property block: its length, then what `write` writes. */
  properties(write: (w: PacketWriter) => void): this {
    const inner = new PacketWriter()
    write(inner)
    return this.varint(inner.length).bytes(inner.concat())
  }

  concat(): Uint8Array {
    return Bytes.concat(this.parts, this.size)
  }

  /** The packet: fixed header byte, remaining length, then what was written. */
  packet(header: number): Uint8Array {
    if (this.size > MAX_VARINT) throw new Error("the packet is larger than MQTT allows (256 MB)")
    const head = new Uint8Array(5)
    head[0] = header
    const end = writeVarint(head, 1, this.size)
    return Bytes.concat([head.subarray(0, end), ...this.parts], end + this.size)
  }
}

/** What a CONNECT says. `protocolVersion` 3 is MQTT 3.1 (protocol name `MQIsdp`), 4 MQTT 3.1.1, 5 MQTT 5.0. */
export interface ConnectFields {
  readonly protocolVersion: 3 | 4 | 5
  readonly clientId: string
  readonly clean: boolean
  readonly keepAlive: number
  readonly username: string | undefined
  readonly password: Uint8Array | undefined
  readonly will:
    | {
      readonly topic: string
      readonly payload: Uint8Array
      readonly qos: number
      readonly retain: boolean
      readonly properties:
        | (MqttMessage.PublishProperties & { readonly willDelayInterval?: number | undefined })
        | undefined
    }
    | undefined
  readonly sessionExpiryInterval: number | undefined
  readonly receiveMaximum: number | undefined
  readonly maximumPacketSize: number | undefined
  readonly topicAliasMaximum: number | undefined
  readonly userProperties: ReadonlyArray<MqttMessage.UserProperty> | undefined
  readonly authenticationMethod: string | undefined
  readonly authenticationData: Uint8Array | undefined
}

/**
 * Encodes a CONNECT. MQTT 3.1 differs from 3.1.1 only in its protocol name and level (`MQIsdp`, 3): its flags
 * and payload fields are laid out the same. Check the fields with `clientIdProblem` and `credentialsProblem`
 * first.
 */
export const encodeConnect = (c: ConnectFields): Uint8Array => {
  const w = new PacketWriter()
  const will = c.will
  const flags = (c.username !== undefined ? 0x80 : 0) | (c.password !== undefined ? 0x40 : 0) |
    (will !== undefined ? 0x04 | (will.qos << 3) | (will.retain ? 0x20 : 0) : 0) | (c.clean ? 0x02 : 0)
  w.string("the protocol name", c.protocolVersion === 3 ? "MQIsdp" : "MQTT").byte(c.protocolVersion).byte(flags)
    .u16(c.keepAlive)
  if (c.protocolVersion === 5) {
    w.properties((p) => {
      if (c.sessionExpiryInterval !== undefined) p.byte(0x11).u32(c.sessionExpiryInterval, "sessionExpiryInterval")
      if (c.receiveMaximum !== undefined) p.byte(0x21).u16(c.receiveMaximum)
      if (c.maximumPacketSize !== undefined) p.byte(0x27).u32(c.maximumPacketSize)
      if (c.topicAliasMaximum !== undefined) p.byte(0x22).u16(c.topicAliasMaximum)
      p.userProperties(c.userProperties)
      if (c.authenticationMethod !== undefined) p.byte(0x15).string("auth.method", c.authenticationMethod)
      if (c.authenticationData !== undefined) p.byte(0x16).binary("auth.data", c.authenticationData)
    })
  }
  w.string("clientId", c.clientId)
  if (will !== undefined) {
    if (c.protocolVersion === 5) {
      const { willDelayInterval, ...rest } = will.properties ?? {}
      w.properties((p) => {
        if (willDelayInterval !== undefined) p.byte(0x18).u32(willDelayInterval, "will.properties.willDelayInterval")
        p.bytes(encodeProperties(rest))
      })
      if (will.properties?.payloadFormatIndicator === true && !Bytes.isUtf8(will.payload)) {
        throw new Error("the will payload is marked UTF-8 (payloadFormatIndicator) but is not valid UTF-8")
      }
    }
    w.string("will.topic", will.topic).binary("will.payload", will.payload)
  }
  if (c.username !== undefined) w.string("username", c.username)
  if (c.password !== undefined) w.binary("password", c.password)
  return w.packet(0x10)
}

/**
 * Why a client identifier cannot be sent in a CONNECT of this protocol version, or `undefined` when it can.
 *
 * - every version: at most 65,535 UTF-8 bytes, no U+0000 ([MQTT-1.5.4-2]);
 * - MQTT 3.1: 1 to 23 bytes. Its specification says "between 1 and 23 characters long" and has a broker answer
 *   a longer one with CONNACK return code 2 (Identifier Rejected); the brokers of its time count bytes, so the
 *   bytes are counted here, which is the same for the ASCII identifiers they expect. It has no empty identifier;
 * - MQTT 3.1.1: an empty identifier needs a clean session [MQTT-3.1.3-7].
 */
export const clientIdProblem = (protocolVersion: 3 | 4 | 5, clientId: string, clean: boolean): string | undefined => {
  const length = Bytes.utf8Length(clientId)
  if (length > 65535 || clientId.includes("\u0000")) {
    return "expected a string of at most 65,535 UTF-8 bytes without U+0000"
  }
  if (protocolVersion === 3 && (length === 0 || length > 23)) {
    return "MQTT 3.1 takes a client identifier of 1 to 23 bytes"
  }
  if (protocolVersion === 4 && length === 0 && !clean) {
    return "an empty client identifier needs cleanSession: true in MQTT 3.1.1 [MQTT-3.1.3-7]"
  }
  return undefined
}

/**
 * Why a user name and password cannot be sent in a CONNECT of this protocol version, or `undefined` when they
 * can: MQTT 3.1 and 3.1.1 cannot carry a password without a user name ("If the User Name Flag is set to 0, the
 * Password Flag MUST be set to 0" [MQTT-3.1.2-22]; MQTT 3.1 says the same); MQTT 5 can.
 */
export const credentialsProblem = (
  protocolVersion: 3 | 4 | 5,
  username: string | undefined,
  password: unknown
): string | undefined =>
  protocolVersion !== 5 && username === undefined && password !== undefined
    ? `MQTT ${protocolVersion === 3 ? "3.1" : "3.1.1"} cannot send a password without a user name [MQTT-3.1.2-22]`
    : undefined

/** One filter of a SUBSCRIBE. */
export interface SubscribeFilter {
  readonly topic: string
  readonly qos: number
  readonly nl?: boolean | undefined
  readonly rap?: boolean | undefined
  readonly rh?: number | undefined
}

/** Encodes a SUBSCRIBE. */
export const encodeSubscribe = (
  protocolVersion: number,
  messageId: number,
  filters: ReadonlyArray<SubscribeFilter>,
  identifier: number,
  userProperties: ReadonlyArray<MqttMessage.UserProperty> | undefined
): Uint8Array => {
  const w = new PacketWriter().u16(messageId)
  if (protocolVersion === 5) {
    w.properties((p) => {
      if (identifier > 0) p.byte(0x0b).varint(identifier)
      p.userProperties(userProperties)
    })
  }
  for (const f of filters) {
    w.string("a topic filter", f.topic)
    w.byte(f.qos | (f.nl === true ? 4 : 0) | (f.rap === true ? 8 : 0) | ((f.rh ?? 0) << 4))
  }
  return w.packet(0x82)
}

/** Encodes an UNSUBSCRIBE. */
export const encodeUnsubscribe = (
  protocolVersion: number,
  messageId: number,
  filters: ReadonlyArray<string>,
  userProperties: ReadonlyArray<MqttMessage.UserProperty> | undefined
): Uint8Array => {
  const w = new PacketWriter().u16(messageId)
  if (protocolVersion === 5) w.properties((p) => p.userProperties(userProperties))
  for (const filter of filters) w.string("a topic filter", filter)
  return w.packet(0xa2)
}

/** Runs an encoder, turning its exception into a value. */
export const tryEncode = (encode: () => Uint8Array): Uint8Array | { readonly error: string } => {
  try {
    return encode()
  } catch (e) {
    return { error: describe(e) }
  }
}

/**
 * Encodes an MQTT 5 AUTH (section 3.15): a reason code (0x18 Continue Authentication, 0x19 Re-authenticate),
 * the Authentication Method and, when given, the Authentication Data.
 */
export const encodeAuth = (reasonCode: number, method: string, data: Uint8Array | undefined): Uint8Array =>
  new PacketWriter().byte(reasonCode).properties((p) => {
    p.byte(0x15).string("auth.method", method)
    if (data !== undefined) p.byte(0x16).binary("auth.data", data)
  }).packet(0xf0)
