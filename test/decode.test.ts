import * as fc from "fast-check"
import * as MqttPacket from "mqtt-packet"
import { Buffer } from "node:buffer"
import { describe, expect, it } from "vitest"
import * as Codec from "../src/internal/codec.ts"
import { checkFirstByte, COPY_PAYLOADS_BELOW, decode } from "../src/internal/decode.ts"
import { Framer } from "../src/internal/framer.ts"
import type * as Packets from "../src/internal/packets.ts"
import { STRAY_ACTIONS, strayAnswer } from "../src/internal/strayAck.ts"
import type { UserProperty } from "../src/MqttMessage.ts"
import { malformedPackets } from "./support/malformed.ts"
import { encodeServerPacket, frame, propertyBlock, split, splitHex } from "./support/serverPackets.ts"

const decodeHex = (hex: string, version: Packets.ProtocolVersion) => {
  const { body, header } = splitHex(hex)
  return decode(header, body, version)
}

/** Uint8Arrays as plain arrays, so that a Buffer and a Uint8Array of the same bytes compare equal. */
const plain = (value: unknown): unknown => {
  if (value instanceof Uint8Array) return Array.from(value)
  if (Array.isArray(value)) return value.map(plain)
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined).map(([k, v]) => [k, plain(v)]))
  }
  return value
}

const hex = (n: number) => `0x${n.toString(16)}`

describe("the malformed-packet table", () => {
  it("has at least 150 rows, every packet type a server can send or must not send, in versions 3, 4 and 5", () => {
    expect(malformedPackets.length).toBeGreaterThanOrEqual(150)
    const types = new Set(malformedPackets.map((r) => `${r.version} ${r.packet}`))
    for (const version of [3, 4, 5]) {
      for (
        const packet of [
          "CONNACK",
          "PUBLISH",
          "PUBACK",
          "PUBREC",
          "PUBREL",
          "PUBCOMP",
          "SUBACK",
          "UNSUBACK",
          "PINGRESP",
          "DISCONNECT",
          "CONNECT",
          "SUBSCRIBE",
          "UNSUBSCRIBE",
          "PINGREQ",
          "reserved packet type 0"
        ]
      ) {
        expect(types, `${version} ${packet}`).toContain(`${version} ${packet}`)
      }
    }
    expect(types).toContain("5 AUTH")
    // the names identify the rows
    expect(new Set(malformedPackets.map((r) => `${r.version} ${r.packet} ${r.name}`)).size).toBe(
      malformedPackets.length
    )
  })

  it.each(
    malformedPackets.map((r) =>
      [
        `MQTT ${r.version === 3 ? "3.1" : r.version === 4 ? "3.1.1" : "5"} ${r.packet}: ${r.name} (${r.hex})`,
        r
      ] as const
    )
  )(
    "%s is refused with its reason code and rule",
    (_, r) => {
      const result = decodeHex(r.hex, r.version)
      expect(result._tag, JSON.stringify(result)).toBe("Violation")
      const v = result as Packets.Violation
      expect({ packet: v.packet, reasonCode: hex(v.reasonCode), rule: v.rule }).toEqual({
        packet: r.packet,
        reasonCode: hex(r.reasonCode),
        rule: r.rule
      })
      expect(v.reason.length).toBeGreaterThan(5)
    }
  )

  it("each row's bytes pass the framer whole, so the same table can be replayed against the client", () => {
    for (const r of malformedPackets) {
      const bytes = Buffer.from(r.hex, "hex")
      const got: Array<string> = []
      const error = new Framer(1024 * 1024).push(bytes, (header, body) => {
        got.push(Buffer.concat([Buffer.from([header]), body]).toString("hex"))
      })
      expect(error, r.hex).toBeUndefined()
      expect(got.length, r.hex).toBe(1)
    }
  })
})

const ORDERED: ReadonlyArray<UserProperty> = [
  ["app-id", "0001"],
  ["trace-id", "abc"],
  ["app-id", "0002"],
  ["note", ""],
  ["note", "second"],
  ["7", "numeric"]
]

describe("valid packets decode to their data", () => {
  it("CONNACK in MQTT 3.1, 3.1.1 and 5", () => {
    expect(decodeHex("20020000", 3)).toEqual({ _tag: "Connack", sessionPresent: false, reasonCode: 0, properties: {} })
    expect(decodeHex("20020005", 3)).toEqual({ _tag: "Connack", sessionPresent: false, reasonCode: 5, properties: {} })
    expect(decodeHex("20020100", 4)).toEqual({ _tag: "Connack", sessionPresent: true, reasonCode: 0, properties: {} })
    expect(decodeHex("20020004", 4)).toEqual({ _tag: "Connack", sessionPresent: false, reasonCode: 4, properties: {} })
    expect(decodeHex("2003010000", 5)).toEqual({ _tag: "Connack", sessionPresent: true, reasonCode: 0, properties: {} })
    const full = frame(
      0x20,
      Buffer.concat([
        Buffer.from([0, 0]),
        Buffer.from(
          propertyBlock({
            sessionExpiryInterval: 0xffffffff,
            receiveMaximum: 1,
            maximumQoS: 1,
            retainAvailable: false,
            maximumPacketSize: 268435460,
            assignedClientIdentifier: "auto-\u00e9\u{1f600}",
            topicAliasMaximum: 65535,
            reasonString: "",
            wildcardSubscriptionAvailable: true,
            subscriptionIdentifiersAvailable: false,
            sharedSubscriptionAvailable: true,
            serverKeepAlive: 0,
            responseInformation: "resp",
            serverReference: "other:1883",
            authenticationMethod: "SCRAM",
            authenticationData: Uint8Array.of(0, 1, 255)
          })
        )
      ])
    )
    const { body, header } = split(full)
    expect(plain(decode(header, body, 5))).toEqual({
      _tag: "Connack",
      sessionPresent: false,
      reasonCode: 0,
      properties: {
        sessionExpiryInterval: 0xffffffff,
        receiveMaximum: 1,
        maximumQoS: 1,
        retainAvailable: false,
        maximumPacketSize: 268435460,
        assignedClientIdentifier: "auto-\u00e9\u{1f600}",
        topicAliasMaximum: 65535,
        reasonString: "",
        wildcardSubscriptionAvailable: true,
        subscriptionIdentifiersAvailable: false,
        sharedSubscriptionAvailable: true,
        serverKeepAlive: 0,
        responseInformation: "resp",
        serverReference: "other:1883",
        authenticationMethod: "SCRAM",
        authenticationData: [0, 1, 255]
      }
    })
  })

  it("an MQTT 3.1.1 broker's refusal of MQTT 5 (20 02 00 01) is a refusal with 0x84, not a malformed packet", () => {
    expect(decodeHex("20020001", 5)).toEqual({
      _tag: "Connack",
      sessionPresent: false,
      reasonCode: 0x84,
      properties: {},
      legacyReturnCode: 1
    })
    // the same bytes are an ordinary refusal in MQTT 3.1.1 and 3.1
    expect(decodeHex("20020001", 4)).toEqual({ _tag: "Connack", sessionPresent: false, reasonCode: 1, properties: {} })
  })

  it("PUBLISH at each QoS in every version, with DUP and RETAIN, empty and binary payloads", () => {
    expect(plain(decodeHex("3106000161006869", 5))).toEqual({
      _tag: "Publish",
      topic: "a",
      payload: [0x68, 0x69],
      qos: 0,
      retain: true,
      dup: false,
      id: 0
    })
    expect(plain(decodeHex("3d0700036127620001", 4))).toEqual({
      _tag: "Publish",
      topic: "a'b",
      payload: [],
      qos: 2,
      retain: true,
      dup: true,
      id: 1
    })
    expect(plain(decodeHex("3a050001610001", 3))).toEqual({
      _tag: "Publish",
      topic: "a",
      payload: [],
      qos: 1,
      retain: false,
      dup: true,
      id: 1
    })
    // MQTT 3.1 does not forbid DUP on QoS 0
    expect(decodeHex("3803000161", 3)._tag).toBe("Publish")
  })

  it("PUBLISH with every MQTT 5 property, an empty topic with a Topic Alias, and repeated Subscription Identifiers", () => {
    const properties = {
      payloadFormatIndicator: true,
      messageExpiryInterval: 60,
      contentType: "application/json",
      responseTopic: "reply/\u00fc",
      correlationData: Uint8Array.of(9, 8, 7),
      userProperties: ORDERED,
      subscriptionIdentifiers: [1, 268435455, 1, 300]
    }
    const body = Buffer.concat([
      Buffer.from("0000" + "1234", "hex"),
      propertyBlock({ ...properties, topicAlias: 7 }, 3),
      Buffer.from("{}")
    ])
    expect(plain(decode(0x34, body, 5))).toEqual({
      _tag: "Publish",
      topic: "",
      payload: [0x7b, 0x7d],
      qos: 2,
      retain: false,
      dup: false,
      id: 0x1234,
      properties: plain(properties),
      topicAlias: 7
    })
  })

  it("acknowledgements with and without reason codes and properties", () => {
    expect(decodeHex("40020001", 3)).toEqual({ _tag: "Puback", id: 1, reasonCode: 0 })
    expect(decodeHex("5002ffff", 4)).toEqual({ _tag: "Pubrec", id: 65535, reasonCode: 0 })
    expect(decodeHex("62020102", 5)).toEqual({ _tag: "Pubrel", id: 0x102, reasonCode: 0 })
    expect(decodeHex("7003000192", 5)).toEqual({ _tag: "Pubcomp", id: 1, reasonCode: 0x92 })
    expect(decodeHex("400400011000", 5)).toEqual({ _tag: "Puback", id: 1, reasonCode: 0x10 })
    expect(decodeHex("5009000187051f00026e6f", 5)).toEqual({
      _tag: "Pubrec",
      id: 1,
      reasonCode: 0x87,
      reasonString: "no"
    })
  })

  it("MQTT 3.1 ignores the fixed-header flags it calls \"not used\" and accepts a PUBREL retried with DUP", () => {
    expect(decodeHex("41020001", 3)).toEqual({ _tag: "Puback", id: 1, reasonCode: 0 })
    expect(decodeHex("6a020001", 3)).toEqual({ _tag: "Pubrel", id: 1, reasonCode: 0 })
    expect(decodeHex("63020001", 3)).toEqual({ _tag: "Pubrel", id: 1, reasonCode: 0 })
    expect(decodeHex("d100", 3)).toEqual({ _tag: "Pingresp" })
    expect(decodeHex("29020000", 3)).toEqual({ _tag: "Connack", sessionPresent: false, reasonCode: 0, properties: {} })
  })

  it("SUBACK and UNSUBACK in each version", () => {
    expect(decodeHex("90050001000102", 3)).toEqual({ _tag: "Suback", id: 1, codes: [0, 1, 2] })
    expect(decodeHex("9004000a0180", 4)).toEqual({ _tag: "Suback", id: 10, codes: [1, 0x80] })
    expect(decodeHex("9005000a0001a2", 5)).toEqual({ _tag: "Suback", id: 10, codes: [1, 0xa2] })
    expect(decodeHex("b0020001", 3)).toEqual({ _tag: "Unsuback", id: 1, codes: undefined })
    expect(decodeHex("b0020001", 4)).toEqual({ _tag: "Unsuback", id: 1, codes: undefined })
    expect(decodeHex("b0050001000011", 5)).toEqual({ _tag: "Unsuback", id: 1, codes: [0, 0x11] })
  })

  it("PINGRESP, DISCONNECT and AUTH", () => {
    for (const version of [3, 4, 5] as const) expect(decodeHex("d000", version)).toEqual({ _tag: "Pingresp" })
    expect(decodeHex("e000", 5)).toEqual({ _tag: "Disconnect", reasonCode: 0 })
    expect(decodeHex("e0018e", 5)).toEqual({ _tag: "Disconnect", reasonCode: 0x8e })
    expect(decodeHex("e0029c00", 5)).toEqual({ _tag: "Disconnect", reasonCode: 0x9c })
    expect(decodeHex("e0089d061c00036f7468", 5)).toEqual({
      _tag: "Disconnect",
      reasonCode: 0x9d,
      serverReference: "oth"
    })
    expect(decodeHex("f000", 5)).toEqual({ _tag: "Auth", reasonCode: 0 })
    expect(plain(decodeHex("f00b180915" + "00016d" + "16000201ff", 5))).toEqual({
      _tag: "Auth",
      reasonCode: 0x18,
      authenticationMethod: "m",
      authenticationData: [1, 255]
    })
  })

  it("user properties keep wire order, repeats and empty values, in every packet type that carries them", () => {
    const block = propertyBlock({ userProperties: ORDERED })
    const cases: Array<[string, number, Buffer]> = [
      ["CONNACK", 0x20, Buffer.concat([Buffer.from([0, 0]), block])],
      ["PUBACK", 0x40, Buffer.concat([Buffer.from([0, 1, 0]), block])],
      ["PUBREC", 0x50, Buffer.concat([Buffer.from([0, 1, 0x10]), block])],
      ["PUBREL", 0x62, Buffer.concat([Buffer.from([0, 1, 0x92]), block])],
      ["PUBCOMP", 0x70, Buffer.concat([Buffer.from([0, 1, 0]), block])],
      ["SUBACK", 0x90, Buffer.concat([Buffer.from([0, 1]), block, Buffer.from([1])])],
      ["UNSUBACK", 0xb0, Buffer.concat([Buffer.from([0, 1]), block, Buffer.from([0])])],
      ["DISCONNECT", 0xe0, Buffer.concat([Buffer.from([0x8b]), block])],
      [
        "AUTH",
        0xf0,
        Buffer.concat([Buffer.from([0x18]), propertyBlock({ authenticationMethod: "m", userProperties: ORDERED })])
      ],
      ["PUBLISH", 0x30, Buffer.concat([Buffer.from("000161", "hex"), block])]
    ]
    for (const [name, header, body] of cases) {
      const packet = decode(header, body, 5) as unknown as Record<string, any>
      const got = packet._tag === "Connack"
        ? packet.properties.userProperties
        : packet._tag === "Publish"
        ? packet.properties.userProperties
        : packet.userProperties
      expect(got, name).toEqual([
        ["app-id", "0001"],
        ["trace-id", "abc"],
        ["app-id", "0002"],
        ["note", ""],
        ["note", "second"],
        ["7", "numeric"]
      ])
    }
  })

  it("a U+FEFF (byte order mark) in a string is kept, not stripped [MQTT-1.5.4-3]", () => {
    const p = decode(0x30, Buffer.concat([Buffer.from("0005", "hex"), Buffer.from("\ufeffab"), Buffer.from([0])]), 5)
    expect(p._tag === "Publish" && p.topic).toBe("\ufeffab")
    const c = decode(0x20, Buffer.concat([Buffer.from([0, 0]), propertyBlock({ reasonString: "\ufeffok" })]), 5)
    expect(c._tag === "Connack" && c.properties.reasonString).toBe("\ufeffok")
  })

  it("a small payload is a copy of its own; a large one is a view of the read", () => {
    const small = Buffer.from("300600016178797a", "hex")
    const read = Buffer.concat([Buffer.alloc(3), small])
    const { body, header } = split(read.subarray(3))
    const p = decode(header, body, 4)
    read.fill(0)
    expect(p._tag === "Publish" && Buffer.from(p.payload).toString()).toBe("xyz")
    const bigBody = Buffer.concat([Buffer.from("000161", "hex"), Buffer.alloc(COPY_PAYLOADS_BELOW, 1)])
    const big = decode(0x30, bigBody, 4)
    bigBody[3] = 2
    expect(big._tag === "Publish" && big.payload[0]).toBe(2)
  })

  it("takes a plain Uint8Array body as well as a Buffer", () => {
    expect(decode(0x90, Uint8Array.of(0, 1, 0, 1), 5)).toEqual({ _tag: "Suback", id: 1, codes: [1] })
    expect(decode(0x30, Uint8Array.of(0, 1, 0x61, 0, 9), 5)).toMatchObject({ _tag: "Publish", topic: "a" })
  })
})

// ---------------------------------------------------------------------------------------------------------------
// Property-based tests
// ---------------------------------------------------------------------------------------------------------------

/** Well-formed strings without U+0000, any code point (surrogate pairs, U+FEFF) included. */
const text = (maxLength = 12) =>
  fc.string({ unit: "binary", maxLength }).filter((s) => !s.includes("\u0000") && Buffer.from(s).toString() === s)
const topicName = text(16).filter((s) => s !== "" && !s.includes("+") && !s.includes("#"))
const bytes = (maxLength = 16) => fc.uint8Array({ maxLength })
const u16 = fc.integer({ min: 0, max: 65535 })
const u32 = fc.integer({ min: 0, max: 0xffffffff })
const id = fc.integer({ min: 1, max: 65535 })
const userProperties = fc.array(fc.tuple(text(6), text(6)), { minLength: 1, maxLength: 4 })
const maybe = <A>(arb: fc.Arbitrary<A>) => fc.option(arb, { nil: undefined })

const ackProperties: fc.Arbitrary<Packets.AckProperties> = fc.record({ reasonString: text(), userProperties }, {
  requiredKeys: []
})

const pick = (codes: ReadonlyArray<number>) => fc.constantFrom(...codes)

const connack = (version: Packets.ProtocolVersion): fc.Arbitrary<Packets.Packet> =>
  version !== 5
    ? fc.integer({ min: 0, max: 5 }).chain((code) =>
      fc.record({
        _tag: fc.constant("Connack" as const),
        sessionPresent: version === 3 || code !== 0 ? fc.constant(false) : fc.boolean(),
        reasonCode: fc.constant(code),
        properties: fc.constant({})
      })
    )
    : pick([0x00, 0x80, 0x84, 0x87, 0x8c, 0x9c, 0x9f]).chain((code) =>
      fc.record({
        _tag: fc.constant("Connack" as const),
        sessionPresent: code !== 0 ? fc.constant(false) : fc.boolean(),
        reasonCode: fc.constant(code),
        properties: fc.record({
          sessionExpiryInterval: u32,
          receiveMaximum: fc.integer({ min: 1, max: 65535 }),
          maximumQoS: fc.constantFrom(0 as const, 1 as const),
          retainAvailable: fc.boolean(),
          maximumPacketSize: fc.integer({ min: 1, max: 0xffffffff }),
          assignedClientIdentifier: text(),
          topicAliasMaximum: u16,
          reasonString: text(),
          userProperties,
          wildcardSubscriptionAvailable: fc.boolean(),
          subscriptionIdentifiersAvailable: fc.boolean(),
          sharedSubscriptionAvailable: fc.boolean(),
          serverKeepAlive: u16,
          responseInformation: text(),
          serverReference: text(),
          authenticationMethod: text(),
          authenticationData: bytes()
        }, { requiredKeys: [] })
      })
    )

const publish = (version: Packets.ProtocolVersion): fc.Arbitrary<Packets.Packet> =>
  fc.record({
    qos: fc.constantFrom(0 as const, 1 as const, 2 as const),
    dup: fc.boolean(),
    retain: fc.boolean(),
    id,
    topic: topicName,
    alias: version === 5 ? maybe(fc.integer({ min: 1, max: 65535 })) : fc.constant(undefined),
    aliasOnly: fc.boolean(),
    payload: bytes(40),
    properties: version === 5
      ? maybe(
        fc.record({
          payloadFormatIndicator: fc.boolean(),
          messageExpiryInterval: u32,
          contentType: text(),
          responseTopic: topicName,
          correlationData: bytes(),
          userProperties,
          subscriptionIdentifiers: fc.array(fc.integer({ min: 1, max: 268435455 }), { minLength: 1, maxLength: 3 })
        }, { requiredKeys: [] }).filter((p) => Object.keys(p).length > 0)
      )
      : fc.constant(undefined)
  }).map((p): Packets.Publish => ({
    _tag: "Publish",
    topic: p.alias !== undefined && p.aliasOnly ? "" : p.topic,
    payload: p.payload,
    qos: p.qos,
    retain: p.retain,
    dup: p.qos === 0 ? false : p.dup,
    id: p.qos === 0 ? 0 : p.id,
    properties: p.properties,
    topicAlias: p.alias
  }))

const ack = (version: Packets.ProtocolVersion): fc.Arbitrary<Packets.Packet> =>
  fc.constantFrom("Puback" as const, "Pubrec" as const, "Pubrel" as const, "Pubcomp" as const).chain((tag) =>
    version !== 5
      ? id.map((id): Packets.Ack => ({ _tag: tag, id, reasonCode: 0 }))
      : fc.tuple(
        id,
        pick(
          tag === "Puback" || tag === "Pubrec" ? [0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99] : [0x00, 0x92]
        ),
        ackProperties
      ).map(([id, reasonCode, props]): Packets.Ack => ({ _tag: tag, id, reasonCode, ...props }))
  )

const suback = (version: Packets.ProtocolVersion): fc.Arbitrary<Packets.Packet> =>
  fc.record({
    id,
    codes: fc.array(
      pick(
        version === 3
          ? [0, 1, 2]
          : version === 4
          ? [0, 1, 2, 0x80]
          : [0, 1, 2, 0x80, 0x83, 0x87, 0x8f, 0x91, 0x97, 0x9e, 0xa1, 0xa2]
      ),
      { minLength: 1, maxLength: 5 }
    ),
    props: version === 5 ? ackProperties : fc.constant({})
  }).map(({ codes, id, props }) => ({ _tag: "Suback" as const, id, codes, ...props }))

const unsuback = (version: Packets.ProtocolVersion): fc.Arbitrary<Packets.Packet> =>
  version !== 5
    ? id.map((id) => ({ _tag: "Unsuback" as const, id, codes: undefined }))
    : fc.record({
      id,
      codes: fc.array(pick([0x00, 0x11, 0x80, 0x83, 0x87, 0x8f, 0x91]), { minLength: 1, maxLength: 5 }),
      props: ackProperties
    }).map(({ codes, id, props }) => ({ _tag: "Unsuback" as const, id, codes, ...props }))

const disconnect: fc.Arbitrary<Packets.Packet> = fc.record({
  reasonCode: pick([0x00, 0x80, 0x81, 0x82, 0x8b, 0x8e, 0x93, 0x9c, 0x9d, 0xa2]),
  props: ackProperties,
  serverReference: maybe(text())
}).map(({ props, reasonCode, serverReference }) => ({
  _tag: "Disconnect" as const,
  reasonCode,
  ...props,
  ...(serverReference === undefined ? {} : { serverReference })
}))

const auth: fc.Arbitrary<Packets.Packet> = fc.record({
  reasonCode: pick([0x00, 0x18]),
  authenticationMethod: text(),
  authenticationData: maybe(bytes()),
  props: ackProperties
}).map(({ authenticationData, authenticationMethod, props, reasonCode }) => ({
  _tag: "Auth" as const,
  reasonCode,
  authenticationMethod,
  ...(authenticationData === undefined ? {} : { authenticationData }),
  ...props
}))

const serverPacket = (version: Packets.ProtocolVersion): fc.Arbitrary<Packets.Packet> =>
  fc.oneof(
    connack(version),
    publish(version),
    ack(version),
    suback(version),
    unsuback(version),
    fc.constant({ _tag: "Pingresp" as const }),
    ...(version === 5 ? [disconnect, auth] : [])
  )

const anyVersion = fc.constantFrom(3 as const, 4 as const, 5 as const)
const encoded = anyVersion.chain((version) =>
  fc.record({
    version: fc.constant(version),
    packet: serverPacket(version),
    compact: fc.boolean(),
    seed: fc.nat(50)
  })
)

/** The decoded packet in the shape the generators make (absent fields dropped; properties as given). */
const comparable = (p: Packets.Packet | Packets.Violation) => plain(p)

describe("property-based", () => {
  it("random valid packets of every type, in every version, round-trip through the encoder and decode", () => {
    fc.assert(
      fc.property(encoded, ({ compact, packet, seed, version }) => {
        const { body, header } = split(encodeServerPacket(packet, version, { compact, seed }))
        expect(comparable(decode(header, body, version))).toEqual(comparable(packet))
      }),
      { numRuns: 3000 }
    )
  })

  const mutation = fc.oneof(
    fc.record({ kind: fc.constant("set" as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
    fc.record({ kind: fc.constant("truncate" as const), at: fc.nat(), value: fc.constant(0) }),
    fc.record({ kind: fc.constant("insert" as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
    fc.record({ kind: fc.constant("header" as const), at: fc.constant(0), value: fc.integer({ min: 0, max: 255 }) })
  )

  it("mutated and truncated valid packets never throw, and give a Packet or a Violation; a Packet is valid", () => {
    fc.assert(
      fc.property(encoded, fc.array(mutation, { minLength: 1, maxLength: 4 }), ({ packet, version }, mutations) => {
        let { body, header } = split(encodeServerPacket(packet, version))
        let bytes = Array.from(body)
        for (const m of mutations) {
          const at = bytes.length === 0 ? 0 : m.at % (bytes.length + 1)
          if (m.kind === "set" && at < bytes.length) bytes[at] = m.value
          else if (m.kind === "truncate") bytes = bytes.slice(0, at)
          else if (m.kind === "insert") bytes.splice(at, 0, m.value)
          else if (m.kind === "header") header = m.value
        }
        body = Buffer.from(bytes)
        const result = decode(header, body, version)
        if (result._tag === "Violation") {
          expect([0x81, 0x82, 0x94]).toContain(result.reasonCode)
          expect(result.packet.length).toBeGreaterThan(0)
          if (result.rule !== undefined) expect(result.rule).toMatch(/^MQTT-\d+\.\d+\.\d+-\d+$/)
          return
        }
        // whatever was accepted is a packet the encoder can write and the decoder reads back the same
        const again = split(encodeServerPacket(result, version))
        expect(comparable(decode(again.header, again.body, version))).toEqual(comparable(result))
      }),
      { numRuns: 5000 }
    )
  })

  it("random bytes never throw", () => {
    fc.assert(
      fc.property(
        anyVersion,
        fc.integer({ min: 0, max: 255 }),
        fc.uint8Array({ maxLength: 40 }),
        (version, header, body) => {
          const result = decode(header, body, version)
          expect(typeof result._tag).toBe("string")
        }
      ),
      { numRuns: 5000 }
    )
  })
})

describe("the acknowledgement fast path", () => {
  it("gives the same packet as the full path would for every identifier", () => {
    for (const id of [1, 2, 255, 256, 65535]) {
      for (const [header, tag] of [[0x40, "Puback"], [0x50, "Pubrec"], [0x62, "Pubrel"], [0x70, "Pubcomp"]] as const) {
        for (const version of [3, 4, 5] as const) {
          expect(decode(header, Uint8Array.of(id >> 8, id & 0xff), version)).toEqual({ _tag: tag, id, reasonCode: 0 })
        }
      }
    }
  })
})

describe("the first byte of a connection", () => {
  it("must start a CONNACK (or an MQTT 5 AUTH): an HTTP answer is refused on its first byte", () => {
    for (const version of [3, 4, 5] as const) {
      expect(checkFirstByte(0x20, version)).toBeUndefined()
      const http = checkFirstByte(Buffer.from("HTTP/1.1 400")[0], version)
      expect(http).toMatchObject({ _tag: "Violation", reasonCode: 0x82 })
      expect(http?.reason).toContain("\"H\"")
      expect(checkFirstByte(0x30, version)?.packet).toBe("PUBLISH")
      expect(checkFirstByte(0xd0, version)?.packet).toBe("PINGRESP")
    }
    expect(checkFirstByte(0xf0, 5)).toBeUndefined()
    expect(checkFirstByte(0xf0, 4)).toMatchObject({ _tag: "Violation", reasonCode: 0x82 })
    expect(checkFirstByte(0x48, 5)?.rule).toBe("MQTT-3.2.0-1")
  })
})

describe("the framer", () => {
  it("refuses a Remaining Length not in its shortest form", () => {
    const error = new Framer(1024).push(Buffer.from("d08000", "hex"), () => {})
    expect(error).toEqual({ reason: "a Remaining Length not in its shortest form", reasonCode: 0x81 })
    // the shortest forms of 0, 127, 128 and 16383 pass
    for (const length of [0, 127, 128, 16383]) {
      const packet = frame(0x30, Buffer.concat([Buffer.from("000161", "hex"), Buffer.alloc(Math.max(0, length - 3))]))
      let seen = 0
      expect(new Framer(1 << 20).push(packet.subarray(0, length === 0 ? 2 : packet.length), () => seen++))
        .toBeUndefined()
      if (length > 0) expect(seen).toBe(1)
    }
  })
})

describe("the framer passing over an oversized PUBLISH (MQTT 3.1.1)", () => {
  const MAX = 256
  /** A PUBLISH of MQTT 3.1.1: topic, QoS, identifier, payload size. */
  const publish = (topic: string, qos: 0 | 1 | 2, id: number, size: number, dup = false) => {
    const name = Buffer.from(topic)
    const fields = Buffer.concat([
      Buffer.from([name.length >> 8, name.length & 0xff]),
      name,
      qos > 0 ? Buffer.from([id >> 8, id & 0xff]) : Buffer.alloc(0),
      Buffer.alloc(size, 0x61)
    ])
    return frame(0x30 | (dup ? 8 : 0) | (qos << 1), fields)
  }
  /** Frames `chunks` with a framer that passes over, returning what it saw, in order. */
  const run = (chunks: ReadonlyArray<Uint8Array>) => {
    const seen: Array<string> = []
    const framer = new Framer(MAX, (head, headerLength, total) => {
      const packet = decode(head[0], head.subarray(headerLength), 4)
      seen.push(
        packet._tag === "Publish"
          ? `over ${packet.topic} q${packet.qos} #${packet.id} ${total} payload ${packet.payload.length}`
          : `over ${packet._tag}`
      )
    })
    for (const chunk of chunks) {
      const error = framer.push(chunk, (header, body) => {
        const packet = decode(header, body, 4)
        seen.push(packet._tag === "Publish" ? `packet ${packet.topic} ${packet.payload.length}` : packet._tag)
      })
      if (error !== undefined) seen.push(`error ${error.reasonCode}`)
    }
    return seen
  }
  const longTopic = "t/" + "x".repeat(300)
  const stream = Buffer.concat([
    publish("a", 1, 1, 10),
    publish("big", 1, 2, 5000),
    Buffer.from([0xd0, 0]),
    publish("big0", 0, 0, 300, false),
    publish(longTopic, 2, 3, 0),
    publish("dup", 2, 4, 1000, true),
    publish("z", 0, 0, 3)
  ])
  const expected = [
    "packet a 10",
    `over big q1 #2 ${publish("big", 1, 2, 5000).length} payload 0`,
    "Pingresp",
    `over big0 q0 #0 ${publish("big0", 0, 0, 300).length} payload 0`,
    `over ${longTopic} q2 #3 ${publish(longTopic, 2, 3, 0).length} payload 0`,
    `over dup q2 #4 ${publish("dup", 2, 4, 1000, true).length} payload 0`,
    "packet z 3"
  ]

  it("hands on the packets around it and its headers once it has gone by, in one read or byte by byte", () => {
    expect(run([stream])).toEqual(expected)
    expect(run(Array.from(stream, (byte) => Uint8Array.of(byte)))).toEqual(expected)
  })

  it("whatever the reads' boundaries", () => {
    fc.assert(fc.property(fc.uniqueArray(fc.integer({ min: 1, max: stream.length - 1 }), { maxLength: 12 }), (cuts) => {
      const points = [0, ...cuts.sort((a, b) => a - b), stream.length]
      const chunks = points.slice(1).map((end, i) => stream.subarray(points[i], end))
      expect(run(chunks)).toEqual(expected)
    }))
  })

  it("keeps no more than its headers: a PUBLISH of 256 MB declared and trickled in costs no buffer", () => {
    const total = 268_435_455
    const head = Buffer.concat([Buffer.from([0x32, 0xff, 0xff, 0xff, 0x7f, 0, 1, 0x62, 0, 9])])
    const chunk = Buffer.alloc(1 << 20)
    const seen: Array<number> = []
    const framer = new Framer(MAX, (kept, _headerLength, size) => seen.push(kept.length, size))
    expect(framer.push(head, () => {})).toBeUndefined()
    let left = total + 5 - head.length
    while (left > 0) {
      const n = Math.min(left, chunk.length)
      expect(framer.push(chunk.subarray(0, n), () => {})).toBeUndefined()
      left -= n
    }
    expect(seen).toEqual([head.length, total + 5])
  })

  it("without the handler (MQTT 5) an oversized PUBLISH is refused with 0x95, as before", () => {
    expect(new Framer(MAX).push(publish("big", 1, 2, 5000), () => {})).toMatchObject({ reasonCode: 0x95 })
  })

  it("an oversized packet of another kind is still refused", () => {
    const framer = new Framer(MAX, () => expect.unreachable())
    expect(framer.push(frame(0x90, Buffer.alloc(400)), () => {})).toMatchObject({ reasonCode: 0x95 })
  })

  it("a topic length past the packet's end is kept as far as the packet goes, and its decoding fails", () => {
    const bad = frame(0x32, Buffer.concat([Buffer.from([0xff, 0xff]), Buffer.alloc(300)]))
    expect(run([bad])).toEqual(["over Violation"])
  })
})

describe("stray acknowledgements (identifier not in flight)", () => {
  it("PUBREC is answered with PUBREL 0x92 in MQTT 5 and a plain PUBREL before; PUBREL with PUBCOMP", () => {
    expect(Array.from(strayAnswer({ _tag: "Pubrec", id: 0x0102, reasonCode: 0 }, 5)!)).toEqual([0x62, 3, 1, 2, 0x92])
    expect(Array.from(strayAnswer({ _tag: "Pubrec", id: 7, reasonCode: 0x10 }, 5)!)).toEqual([0x62, 3, 0, 7, 0x92])
    expect(Array.from(strayAnswer({ _tag: "Pubrec", id: 7, reasonCode: 0 }, 4)!)).toEqual([0x62, 2, 0, 7])
    expect(Array.from(strayAnswer({ _tag: "Pubrec", id: 7, reasonCode: 0 }, 3)!)).toEqual([0x62, 2, 0, 7])
    expect(Array.from(strayAnswer({ _tag: "Pubrel", id: 7, reasonCode: 0 }, 5)!)).toEqual([0x70, 3, 0, 7, 0x92])
    expect(Array.from(strayAnswer({ _tag: "Pubrel", id: 7, reasonCode: 0 }, 4)!)).toEqual([0x70, 2, 0, 7])
    // the answers are packets the decoder accepts
    const pubrel = split(strayAnswer({ _tag: "Pubrec", id: 9, reasonCode: 0 }, 5)!)
    expect(decode(pubrel.header, pubrel.body, 5)).toEqual({ _tag: "Pubrel", id: 9, reasonCode: 0x92 })
  })

  it("a failed PUBREC, PUBACK, PUBCOMP, SUBACK and UNSUBACK are ignored, never fatal", () => {
    expect(strayAnswer({ _tag: "Pubrec", id: 7, reasonCode: 0x80 }, 5)).toBeUndefined()
    expect(strayAnswer({ _tag: "Puback", id: 7, reasonCode: 0 }, 5)).toBeUndefined()
    expect(strayAnswer({ _tag: "Pubcomp", id: 7, reasonCode: 0 }, 4)).toBeUndefined()
    expect(strayAnswer({ _tag: "Suback", id: 7, codes: [0] }, 5)).toBeUndefined()
    expect(strayAnswer({ _tag: "Unsuback", id: 7, codes: undefined }, 4)).toBeUndefined()
    expect(STRAY_ACTIONS).toEqual({
      Puback: "ignore",
      Pubrec: "answer",
      Pubrel: "answer",
      Pubcomp: "ignore",
      Suback: "ignore",
      Unsuback: "ignore"
    })
  })
})

describe("CONNECT for MQTT 3.1", () => {
  const base: Codec.ConnectFields = {
    protocolVersion: 4,
    clientId: "client-1",
    clean: true,
    keepAlive: 30,
    username: undefined,
    password: undefined,
    will: undefined,
    sessionExpiryInterval: undefined,
    receiveMaximum: undefined,
    maximumPacketSize: undefined,
    topicAliasMaximum: undefined,
    userProperties: undefined,
    authenticationMethod: undefined,
    authenticationData: undefined
  }
  const fields = fc.record({
    clientId: fc.string({ minLength: 1, maxLength: 23, unit: fc.constantFrom(..."abcXYZ0189-_") }),
    clean: fc.boolean(),
    keepAlive: u16,
    username: maybe(fc.string({ maxLength: 8 })),
    password: maybe(fc.string({ maxLength: 8 })),
    will: maybe(fc.record({
      topic: fc.string({ minLength: 1, maxLength: 8, unit: fc.constantFrom(..."ab/c") }),
      payload: bytes(8),
      qos: fc.constantFrom(0, 1, 2),
      retain: fc.boolean()
    }))
  }).filter((f) => f.password === undefined || f.username !== undefined)

  it("has protocol name MQIsdp and level 3, and is otherwise laid out as mqtt-packet lays out MQTT 3.1, 3.1.1 and 5", () => {
    fc.assert(
      fc.property(fields, anyVersion, (f, version) => {
        const ours = Codec.encodeConnect({
          ...base,
          protocolVersion: version,
          clientId: f.clientId,
          clean: f.clean,
          keepAlive: f.keepAlive,
          username: f.username,
          password: f.password === undefined ? undefined : Buffer.from(f.password),
          will: f.will === undefined ? undefined : { ...f.will, properties: undefined }
        })
        const theirs = MqttPacket.generate({
          cmd: "connect",
          protocolId: version === 3 ? "MQIsdp" : "MQTT",
          protocolVersion: version,
          clientId: f.clientId,
          clean: f.clean,
          keepalive: f.keepAlive,
          ...(f.username === undefined ? {} : { username: f.username }),
          ...(f.password === undefined ? {} : { password: Buffer.from(f.password) }),
          ...(f.will === undefined
            ? {}
            : { will: { ...f.will, payload: Buffer.from(f.will.payload), qos: f.will.qos as 0 | 1 | 2 } }),
          ...(version === 5 ? { properties: {} } : {})
        }, { protocolVersion: version })
        expect(Buffer.from(ours).toString("hex")).toBe(theirs.toString("hex"))
      }),
      { numRuns: 300 }
    )
    const v3 = Codec.encodeConnect({ ...base, protocolVersion: 3, clientId: "c" })
    expect(Buffer.from(v3.subarray(2, 11)).toString("hex")).toBe("00064d514973647003")
  })

  it("MQTT 5 properties keep their encoding (byte-identical to mqtt-packet's for one user property)", () => {
    const ours = Codec.encodeConnect({
      ...base,
      protocolVersion: 5,
      sessionExpiryInterval: 3600,
      receiveMaximum: 100,
      maximumPacketSize: 65536,
      topicAliasMaximum: 16,
      userProperties: [["k", "v"]],
      will: {
        topic: "w",
        payload: Buffer.from("bye"),
        qos: 1,
        retain: true,
        properties: { willDelayInterval: 5, messageExpiryInterval: 10, contentType: "text/plain" }
      }
    })
    const theirs = MqttPacket.generate({
      cmd: "connect",
      protocolId: "MQTT",
      protocolVersion: 5,
      clientId: "client-1",
      clean: true,
      keepalive: 30,
      properties: {
        sessionExpiryInterval: 3600,
        receiveMaximum: 100,
        maximumPacketSize: 65536,
        topicAliasMaximum: 16,
        userProperties: { k: "v" }
      },
      will: {
        topic: "w",
        payload: Buffer.from("bye"),
        qos: 1,
        retain: true,
        properties: { willDelayInterval: 5, messageExpiryInterval: 10, contentType: "text/plain" }
      }
    }, { protocolVersion: 5 })
    expect(Buffer.from(ours).toString("hex")).toBe(theirs.toString("hex"))
  })

  it("client identifiers: MQTT 3.1 takes 1 to 23 bytes; MQTT 3.1.1 an empty one only with a clean session", () => {
    expect(Codec.clientIdProblem(3, "a".repeat(23), false)).toBeUndefined()
    expect(Codec.clientIdProblem(3, "a".repeat(24), true)).toMatch(/1 to 23/)
    expect(Codec.clientIdProblem(3, "", true)).toMatch(/1 to 23/)
    // 12 characters, 24 bytes
    expect(Codec.clientIdProblem(3, "\u00e9".repeat(12), true)).toMatch(/1 to 23/)
    expect(Codec.clientIdProblem(4, "a".repeat(24), true)).toBeUndefined()
    expect(Codec.clientIdProblem(4, "", true)).toBeUndefined()
    expect(Codec.clientIdProblem(4, "", false)).toMatch(/MQTT-3\.1\.3-7/)
    expect(Codec.clientIdProblem(5, "", false)).toBeUndefined()
    expect(Codec.clientIdProblem(5, "a\u0000", true)).toMatch(/U\+0000/)
    expect(Codec.clientIdProblem(5, "a".repeat(65536), true)).toMatch(/65,535/)
  })

  it("credentials: a password without a user name is refused before MQTT 5 [MQTT-3.1.2-22]", () => {
    expect(Codec.credentialsProblem(3, undefined, "secret")).toMatch(/MQTT 3\.1 cannot/)
    expect(Codec.credentialsProblem(4, undefined, "secret")).toMatch(/MQTT-3\.1\.2-22/)
    expect(Codec.credentialsProblem(5, undefined, "secret")).toBeUndefined()
    expect(Codec.credentialsProblem(4, "user", "secret")).toBeUndefined()
    expect(Codec.credentialsProblem(4, "user", undefined)).toBeUndefined()
    expect(Codec.credentialsProblem(3, undefined, undefined)).toBeUndefined()
  })
})
