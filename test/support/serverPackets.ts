/**
 * A test-side encoder of the packets a broker sends (the `Packet` types of src/internal/packets.ts), written
 * apart from the decoder so that the two check each other, and a splitter of whole packets into the first byte
 * and the body, as the framer hands them to `decode`.
 *
 * `encodeServerPacket(packet, version, { compact, seed })`:
 * - `compact` picks the shortest form MQTT 5 allows (an acknowledgement of Success with no properties in 2 bytes,
 *   a DISCONNECT of Normal disconnection in 0, an omitted Property Length); otherwise every field is written;
 * - `seed` moves the properties around in the property block (user properties and subscription identifiers
 *   keep their order among themselves, as the decoder keeps it).
 */
import { Buffer } from "node:buffer"
import type * as Packets from "../../src/internal/packets.ts"
import type { UserProperty } from "../../src/MqttMessage.ts"

export interface EncodeOptions {
  readonly compact?: boolean
  readonly seed?: number
}

/** One packet as `decode` takes it. */
export interface Split {
  readonly header: number
  readonly body: Buffer
}

/** Splits a whole packet (fixed header, Remaining Length, body) into its first byte and its body. */
export const split = (packet: Uint8Array): Split => {
  const bytes = Buffer.from(packet)
  let i = 1
  let multiplier = 1
  let length = 0
  for (;;) {
    if (i >= bytes.length || i > 4) throw new Error(`no complete Remaining Length in ${bytes.toString("hex")}`)
    const byte = bytes[i++]
    length += (byte & 0x7f) * multiplier
    if ((byte & 0x80) === 0) break
    multiplier *= 128
  }
  const body = bytes.subarray(i)
  if (body.length !== length) {
    throw new Error(`${bytes.toString("hex")}: Remaining Length ${length}, but ${body.length} bytes follow`)
  }
  return { header: bytes[0], body }
}

/** Splits a packet given in hex (spaces allowed). */
export const splitHex = (hex: string): Split => split(Buffer.from(hex.replace(/\s+/g, ""), "hex"))

const varint = (value: number): Buffer => {
  const out: Array<number> = []
  let n = value
  do {
    let digit = n % 128
    n = Math.floor(n / 128)
    if (n > 0) digit |= 0x80
    out.push(digit)
  } while (n > 0)
  return Buffer.from(out)
}

const u16 = (n: number) => Buffer.from([n >> 8, n & 0xff])
const u32 = (n: number) => {
  const b = Buffer.alloc(4)
  b.writeUInt32BE(n)
  return b
}
const str = (s: string) => {
  const b = Buffer.from(s, "utf8")
  return Buffer.concat([u16(b.length), b])
}
const bin = (b: Uint8Array) => Buffer.concat([u16(b.length), Buffer.from(b)])

/** The whole packet: first byte, Remaining Length, body. */
export const frame = (header: number, body: Uint8Array): Buffer =>
  Buffer.concat([Buffer.from([header]), varint(body.length), Buffer.from(body)])

type Entry = readonly [kind: "user" | "subscription" | "other", bytes: Buffer]

/** How each property is written: identifier and value type. */
const WRITERS: Record<string, (value: any) => Buffer> = {
  payloadFormatIndicator: (v: boolean) => Buffer.from([0x01, v ? 1 : 0]),
  messageExpiryInterval: (v: number) => Buffer.concat([Buffer.from([0x02]), u32(v)]),
  contentType: (v: string) => Buffer.concat([Buffer.from([0x03]), str(v)]),
  responseTopic: (v: string) => Buffer.concat([Buffer.from([0x08]), str(v)]),
  correlationData: (v: Uint8Array) => Buffer.concat([Buffer.from([0x09]), bin(v)]),
  sessionExpiryInterval: (v: number) => Buffer.concat([Buffer.from([0x11]), u32(v)]),
  assignedClientIdentifier: (v: string) => Buffer.concat([Buffer.from([0x12]), str(v)]),
  serverKeepAlive: (v: number) => Buffer.concat([Buffer.from([0x13]), u16(v)]),
  authenticationMethod: (v: string) => Buffer.concat([Buffer.from([0x15]), str(v)]),
  authenticationData: (v: Uint8Array) => Buffer.concat([Buffer.from([0x16]), bin(v)]),
  responseInformation: (v: string) => Buffer.concat([Buffer.from([0x1a]), str(v)]),
  serverReference: (v: string) => Buffer.concat([Buffer.from([0x1c]), str(v)]),
  reasonString: (v: string) => Buffer.concat([Buffer.from([0x1f]), str(v)]),
  receiveMaximum: (v: number) => Buffer.concat([Buffer.from([0x21]), u16(v)]),
  topicAliasMaximum: (v: number) => Buffer.concat([Buffer.from([0x22]), u16(v)]),
  topicAlias: (v: number) => Buffer.concat([Buffer.from([0x23]), u16(v)]),
  maximumQoS: (v: number) => Buffer.from([0x24, v]),
  retainAvailable: (v: boolean) => Buffer.from([0x25, v ? 1 : 0]),
  maximumPacketSize: (v: number) => Buffer.concat([Buffer.from([0x27]), u32(v)]),
  wildcardSubscriptionAvailable: (v: boolean) => Buffer.from([0x28, v ? 1 : 0]),
  subscriptionIdentifiersAvailable: (v: boolean) => Buffer.from([0x29, v ? 1 : 0]),
  sharedSubscriptionAvailable: (v: boolean) => Buffer.from([0x2a, v ? 1 : 0])
}

/** A property block (with its Property Length) from an object of properties. */
export const propertyBlock = (props: Record<string, unknown>, seed = 0): Buffer => {
  const entries: Array<Entry> = []
  const users: Array<Entry> = []
  const subscriptions: Array<Entry> = []
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined) continue
    if (key === "userProperties") {
      for (const [name, v] of value as ReadonlyArray<UserProperty>) {
        users.push(["user", Buffer.concat([Buffer.from([0x26]), str(name), str(v)])])
      }
    } else if (key === "subscriptionIdentifiers") {
      for (const id of value as ReadonlyArray<number>) {
        subscriptions.push(["subscription", Buffer.concat([Buffer.from([0x0b]), varint(id)])])
      }
    } else {
      const write = WRITERS[key]
      if (write === undefined) throw new Error(`no writer for the property ${key}`)
      entries.push(["other", write(value)])
    }
  }
  const all = [...entries, ...subscriptions, ...users]
  const turn = all.length === 0 ? 0 : seed % all.length
  const rotated = [...all.slice(turn), ...all.slice(0, turn)]
  // user properties and subscription identifiers back in their order, in the slots the rotation gave them
  let u = 0
  let k = 0
  const placed = rotated.map((e) => e[0] === "user" ? users[u++] : e[0] === "subscription" ? subscriptions[k++] : e)
  const bytes = Buffer.concat(placed.map((e) => e[1]))
  return Buffer.concat([varint(bytes.length), bytes])
}

const ACK_TYPES = { Puback: 0x40, Pubrec: 0x50, Pubrel: 0x62, Pubcomp: 0x70 } as const

const ackProps = (p: Packets.AckProperties): Record<string, unknown> => ({
  reasonString: p.reasonString,
  userProperties: p.userProperties
})

const hasAny = (props: Record<string, unknown>) => Object.values(props).some((v) => v !== undefined)

/** Encodes a packet a broker sends, for a connection of `version`. */
export const encodeServerPacket = (
  packet: Packets.Packet,
  version: Packets.ProtocolVersion,
  options: EncodeOptions = {}
): Buffer => {
  const compact = options.compact ?? false
  const seed = options.seed ?? 0
  switch (packet._tag) {
    case "Connack": {
      if (packet.legacyReturnCode !== undefined) return frame(0x20, Buffer.from([0, packet.legacyReturnCode]))
      const head = Buffer.from([packet.sessionPresent ? 1 : 0, packet.reasonCode])
      if (version !== 5) return frame(0x20, head)
      return frame(0x20, Buffer.concat([head, propertyBlock({ ...packet.properties }, seed)]))
    }
    case "Publish": {
      const parts: Array<Buffer> = [str(packet.topic)]
      if (packet.qos > 0) parts.push(u16(packet.id))
      if (version === 5) {
        parts.push(propertyBlock({ ...packet.properties, topicAlias: packet.topicAlias }, seed))
      }
      parts.push(Buffer.from(packet.payload))
      const header = 0x30 | (packet.dup ? 8 : 0) | (packet.qos << 1) | (packet.retain ? 1 : 0)
      return frame(header, Buffer.concat(parts))
    }
    case "Puback":
    case "Pubrec":
    case "Pubrel":
    case "Pubcomp": {
      const header = ACK_TYPES[packet._tag]
      const props = ackProps(packet)
      if (version !== 5 || (compact && packet.reasonCode === 0 && !hasAny(props))) {
        return frame(header, u16(packet.id))
      }
      if (compact && !hasAny(props)) {
        return frame(header, Buffer.concat([u16(packet.id), Buffer.from([packet.reasonCode])]))
      }
      return frame(
        header,
        Buffer.concat([u16(packet.id), Buffer.from([packet.reasonCode]), propertyBlock(props, seed)])
      )
    }
    case "Suback": {
      const props = version === 5 ? propertyBlock(ackProps(packet), seed) : Buffer.alloc(0)
      return frame(0x90, Buffer.concat([u16(packet.id), props, Buffer.from(packet.codes)]))
    }
    case "Unsuback": {
      if (version !== 5) return frame(0xb0, u16(packet.id))
      return frame(
        0xb0,
        Buffer.concat([u16(packet.id), propertyBlock(ackProps(packet), seed), Buffer.from(packet.codes ?? [])])
      )
    }
    case "Pingresp":
      return frame(0xd0, Buffer.alloc(0))
    case "Disconnect": {
      const props = { ...ackProps(packet), serverReference: packet.serverReference }
      if (compact && !hasAny(props)) {
        return frame(0xe0, packet.reasonCode === 0 ? Buffer.alloc(0) : Buffer.from([packet.reasonCode]))
      }
      return frame(0xe0, Buffer.concat([Buffer.from([packet.reasonCode]), propertyBlock(props, seed)]))
    }
    case "Auth": {
      const props = {
        authenticationMethod: packet.authenticationMethod,
        authenticationData: packet.authenticationData,
        ...ackProps(packet)
      }
      if (compact && packet.reasonCode === 0 && !hasAny(props)) return frame(0xf0, Buffer.alloc(0))
      return frame(0xf0, Buffer.concat([Buffer.from([packet.reasonCode]), propertyBlock(props, seed)]))
    }
  }
}
