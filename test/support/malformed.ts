/**
 * Malformed or forbidden packets a broker might send, for every packet type and MQTT 3.1 (3), 3.1.1 (4) and 5.
 *
 * Each row is a whole packet in hex (first byte, Remaining Length, body: the Remaining Length always matches the
 * bytes that follow, so the framer passes each one whole to the decoder), the protocol version of the
 * connection, the packet named in the violation, the reason code an MQTT 5 client sends in its DISCONNECT (MQTT
 * 3.1 and 3.1.1 just close), and the specification's statement where the rule has a number (MQTT 3.1 rows cite
 * the MQTT 3.1.1 statement of the same rule). test/decode.test.ts replays the table against `decode`; a test of
 * the whole client can replay it through the fake broker (CONNACK rows as the answer to CONNECT, the others after
 * a valid CONNACK).
 */
import { Buffer } from "node:buffer"

export interface MalformedRow {
  readonly name: string
  readonly version: 3 | 4 | 5
  /** the whole packet, in hex */
  readonly hex: string
  /** the packet the violation names */
  readonly packet: string
  /** 0x81 Malformed Packet, 0x82 Protocol Error, or the more specific code */
  readonly reasonCode: number
  /** the statement number, when the rule has one */
  readonly rule?: string
}

const M = 0x81
const P = 0x82

/** A UTF-8 string field in hex. */
const s = (text: string) => {
  const b = Buffer.from(text, "utf8")
  return b.length.toString(16).padStart(4, "0") + b.toString("hex")
}

/** Binary or string field from raw hex bytes: two-byte length, then the bytes. */
const raw = (hex: string) => (hex.length / 2).toString(16).padStart(4, "0") + hex

const vbi = (n: number) => {
  const out: Array<number> = []
  do {
    let d = n % 128
    n = Math.floor(n / 128)
    if (n > 0) d |= 0x80
    out.push(d)
  } while (n > 0)
  return Buffer.from(out).toString("hex")
}

/** A property block: Property Length, then the properties (given in hex). */
const props = (...hex: Array<string>) => {
  const body = hex.join("")
  return vbi(body.length / 2) + body
}

/** A whole packet from its first byte and its body (hex): the Remaining Length is computed. */
const pkt = (header: number, ...body: Array<string>) => {
  const b = body.join("").replace(/\s+/g, "")
  return header.toString(16).padStart(2, "0") + vbi(b.length / 2) + b
}

const rows: Array<MalformedRow> = []
const row = (
  version: 3 | 4 | 5,
  packet: string,
  name: string,
  hex: string,
  reasonCode: number,
  rule?: string
) => {
  rows.push(
    rule === undefined ? { name, version, hex, packet, reasonCode } : { name, version, hex, packet, reasonCode, rule }
  )
}

// ---- from the issue, as reported -------------------------------------------------------------------------------
row(4, "CONNACK", "Remaining Length 3", "2003000000", M)
row(4, "CONNACK", "Remaining Length 0", "2000", M)
row(5, "CONNACK", "no Property Length", "20020000", M)
row(5, "CONNACK", "Receive Maximum 0", "2006000003210000", P)
row(5, "CONNACK", "Receive Maximum without its value", "200400000121", M)
row(5, "CONNACK", "Maximum Packet Size without its value", "200400000127", M)
row(5, "CONNACK", "Maximum QoS 2", "20050000022402", P)
row(5, "CONNACK", "Payload Format Indicator, not a CONNACK property", "20050000020100", M)
row(5, "PUBREC", "Reason String twice", "500c000100081f0001701f000171", P)
row(5, "PUBACK", "Topic Alias, not a PUBACK property", "400700010003230005", M)
row(5, "PUBACK", "User Property without its value", "40080001000426000170", M)
row(5, "UNSUBACK", "Maximum QoS, not an UNSUBACK property", "b006000102240000", M)
row(5, "PINGRESP", "a trailing byte", "d00100", M)
row(4, "PUBACK", "a reason code in MQTT 3.1.1", "4003000100", M)
row(5, "PUBREC", "a trailing byte after an empty property block", "50050001000000", M)

// ---- CONNACK ---------------------------------------------------------------------------------------------------
row(4, "CONNACK", "Remaining Length 1", "200100", M)
row(4, "CONNACK", "reserved acknowledge flag bit", "20020200", M)
row(4, "CONNACK", "reserved acknowledge flag bit 7", "20028000", M)
row(4, "CONNACK", "return code 6 (reserved)", "20020006", P)
row(4, "CONNACK", "return code 0x80 (MQTT 5 only)", "20020080", P)
row(4, "CONNACK", "Session Present with a refusal", "20020105", P, "MQTT-3.2.2-4")
row(4, "CONNACK", "fixed-header flags 1", "21020000", M, "MQTT-2.2.2-1")
row(4, "CONNACK", "fixed-header flags 8", "28020000", M, "MQTT-2.2.2-1")
row(3, "CONNACK", "Session Present (MQTT 3.1 has none)", "20020100", M)
row(3, "CONNACK", "reserved first byte 0x02", "20020200", M)
row(3, "CONNACK", "Remaining Length 3", "2003000000", M)
row(3, "CONNACK", "Remaining Length 0", "2000", M)
row(3, "CONNACK", "return code 6", "20020006", P)
row(5, "CONNACK", "a 3.1.1 CONNACK of success", "20020000", M)
row(5, "CONNACK", "a 3.1.1 CONNACK refusing with return code 5", "20020005", M)
row(5, "CONNACK", "Remaining Length 1", "200100", M)
row(5, "CONNACK", "Remaining Length 0", "2000", M)
row(5, "CONNACK", "reserved acknowledge flag bit", "2003020000", M, "MQTT-3.2.2-1")
row(5, "CONNACK", "reason code 0x01, not a CONNACK code", "2003000100", P, "MQTT-3.2.2-8")
row(5, "CONNACK", "reason code 0x8b, not a CONNACK code", "2003008b00", P, "MQTT-3.2.2-8")
row(5, "CONNACK", "Session Present with a refusal", "2003018700", P, "MQTT-3.2.2-6")
row(5, "CONNACK", "fixed-header flags 2", "2203000000", M, "MQTT-2.1.3-1")
row(5, "CONNACK", "unknown property 0x00", pkt(0x20, "0000", props("00")), M)
row(5, "CONNACK", "unknown property 0x7f", pkt(0x20, "0000", props("7f00")), M)
row(5, "CONNACK", "property identifier 0xff", pkt(0x20, "0000", props("ff01")), M)
row(5, "CONNACK", "Property Length past the end", "2003000005", M)
row(5, "CONNACK", "a trailing byte after the properties", "200400000000", M)
row(5, "CONNACK", "Property Length not in its shortest form", "200400008000", M, "MQTT-1.5.5-1")
row(5, "CONNACK", "Property Length of five bytes", "20070000ffffffff7f", M, "MQTT-1.5.5-1")
row(5, "CONNACK", "Receive Maximum twice", pkt(0x20, "0000", props("210001", "210002")), P)
row(5, "CONNACK", "Maximum Packet Size 0", pkt(0x20, "0000", props("2700000000")), P)
row(5, "CONNACK", "Maximum Packet Size twice", pkt(0x20, "0000", props("2700000100", "2700000200")), P)
row(5, "CONNACK", "Maximum QoS 3", pkt(0x20, "0000", props("2403")), P)
row(5, "CONNACK", "Maximum QoS twice", pkt(0x20, "0000", props("2400", "2401")), P)
row(5, "CONNACK", "Retain Available 2", pkt(0x20, "0000", props("2502")), P)
row(5, "CONNACK", "Retain Available twice", pkt(0x20, "0000", props("2501", "2500")), P)
row(5, "CONNACK", "Wildcard Subscription Available 3", pkt(0x20, "0000", props("2803")), P)
row(5, "CONNACK", "Subscription Identifier Available 2", pkt(0x20, "0000", props("2902")), P)
row(5, "CONNACK", "Shared Subscription Available 255", pkt(0x20, "0000", props("2aff")), P)
row(5, "CONNACK", "Shared Subscription Available twice", pkt(0x20, "0000", props("2a01", "2a01")), P)
row(5, "CONNACK", "Topic Alias Maximum twice", pkt(0x20, "0000", props("220001", "220001")), P)
row(5, "CONNACK", "Server Keep Alive twice", pkt(0x20, "0000", props("13000a", "13000a")), P)
row(5, "CONNACK", "Server Keep Alive cut short", pkt(0x20, "0000", props("1300")), M)
row(5, "CONNACK", "Session Expiry Interval cut short", pkt(0x20, "0000", props("11000000")), M)
row(5, "CONNACK", "Session Expiry Interval twice", pkt(0x20, "0000", props("1100000001", "1100000002")), P)
row(5, "CONNACK", "Topic Alias, a PUBLISH property", pkt(0x20, "0000", props("230001")), M)
row(5, "CONNACK", "Subscription Identifier, a PUBLISH property", pkt(0x20, "0000", props("0b01")), M)
row(5, "CONNACK", "Will Delay Interval, a will property", pkt(0x20, "0000", props("1800000001")), M)
row(5, "CONNACK", "Request Problem Information, a CONNECT property", pkt(0x20, "0000", props("1701")), M)
row(5, "CONNACK", "Request Response Information, a CONNECT property", pkt(0x20, "0000", props("1901")), M)
row(5, "CONNACK", "Response Topic, a PUBLISH property", pkt(0x20, "0000", props("08" + s("a"))), M)
row(5, "CONNACK", "Correlation Data, a PUBLISH property", pkt(0x20, "0000", props("09" + raw("01"))), M)
row(5, "CONNACK", "Content Type, a PUBLISH property", pkt(0x20, "0000", props("03" + s("x"))), M)
row(5, "CONNACK", "Message Expiry Interval, a PUBLISH property", pkt(0x20, "0000", props("0200000001")), M)
row(
  5,
  "CONNACK",
  "Assigned Client Identifier not UTF-8",
  pkt(0x20, "0000", props("12" + raw("c328"))),
  M,
  "MQTT-1.5.4-1"
)
row(5, "CONNACK", "Assigned Client Identifier past the block", pkt(0x20, "0000", props("12000561")), M)
row(5, "CONNACK", "Assigned Client Identifier twice", pkt(0x20, "0000", props("12" + s("a"), "12" + s("b"))), P)
row(5, "CONNACK", "Reason String with U+0000", pkt(0x20, "0080", props("1f" + raw("6100"))), M, "MQTT-1.5.4-2")
row(
  5,
  "CONNACK",
  "Reason String with an encoded surrogate",
  pkt(0x20, "0080", props("1f" + raw("eda080"))),
  M,
  "MQTT-1.5.4-1"
)
row(
  5,
  "CONNACK",
  "Reason String with an overlong encoding",
  pkt(0x20, "0080", props("1f" + raw("c0af"))),
  M,
  "MQTT-1.5.4-1"
)
row(
  5,
  "CONNACK",
  "Reason String with a truncated sequence",
  pkt(0x20, "0080", props("1f" + raw("61e282"))),
  M,
  "MQTT-1.5.4-1"
)
row(5, "CONNACK", "Reason String twice", pkt(0x20, "0080", props("1f" + s("a"), "1f" + s("b"))), P)
row(5, "CONNACK", "Response Information twice", pkt(0x20, "0000", props("1a" + s("a"), "1a" + s("a"))), P)
row(5, "CONNACK", "Server Reference twice", pkt(0x20, "009c", props("1c" + s("a"), "1c" + s("b"))), P)
row(5, "CONNACK", "Authentication Method twice", pkt(0x20, "0000", props("15" + s("m"), "15" + s("m"))), P)
row(5, "CONNACK", "Authentication Data twice", pkt(0x20, "0000", props("16" + raw("01"), "16" + raw("02"))), P)
row(5, "CONNACK", "Authentication Data past the block", pkt(0x20, "0000", props("160009")), M)
row(
  5,
  "CONNACK",
  "User Property name with U+0000",
  pkt(0x20, "0000", props("26" + raw("00") + s("v"))),
  M,
  "MQTT-1.5.4-2"
)
row(
  5,
  "CONNACK",
  "User Property value not UTF-8",
  pkt(0x20, "0000", props("26" + s("k") + raw("ff"))),
  M,
  "MQTT-1.5.4-1"
)
row(5, "CONNACK", "User Property with only a name length", pkt(0x20, "0000", props("2600")), M)

// ---- PUBLISH ---------------------------------------------------------------------------------------------------
for (const version of [3, 4, 5] as const) {
  const noProps = version === 5 ? "00" : ""
  row(version, "PUBLISH", "QoS 3", pkt(0x36, s("a"), "0001", noProps), M, "MQTT-3.3.1-4")
  row(version, "PUBLISH", "empty body", "3000", M)
  row(version, "PUBLISH", "a body of one byte", "300100", M)
  row(version, "PUBLISH", "topic length past the end", pkt(0x30, "000561"), M)
  row(version, "PUBLISH", "QoS 1 without a packet identifier", pkt(0x32, s("a")), M)
  row(version, "PUBLISH", "QoS 2 with half a packet identifier", pkt(0x34, s("a"), "00"), M)
  row(
    version,
    "PUBLISH",
    "packet identifier 0",
    pkt(0x32, s("a"), "0000", noProps),
    P,
    version === 5 ? "MQTT-2.2.1-4" : "MQTT-2.3.1-1"
  )
  row(version, "PUBLISH", "topic with a +", pkt(0x30, s("a/+"), noProps), P, "MQTT-3.3.2-2")
  row(version, "PUBLISH", "topic #", pkt(0x30, s("#"), noProps), P, "MQTT-3.3.2-2")
  row(
    version,
    "PUBLISH",
    "topic not UTF-8",
    pkt(0x30, raw("c328"), noProps),
    M,
    version === 5 ? "MQTT-1.5.4-1" : "MQTT-1.5.3-1"
  )
  row(
    version,
    "PUBLISH",
    "topic with U+0000",
    pkt(0x30, raw("6100"), noProps),
    M,
    version === 5 ? "MQTT-1.5.4-2" : "MQTT-1.5.3-2"
  )
  if (version !== 5) row(version, "PUBLISH", "empty topic", pkt(0x30, s("")), P, "MQTT-4.7.3-1")
}
row(4, "PUBLISH", "DUP on QoS 0", pkt(0x38, s("a")), M, "MQTT-3.3.1-2")
row(5, "PUBLISH", "DUP on QoS 0", pkt(0x38, s("a"), "00"), M, "MQTT-3.3.1-2")
row(5, "PUBLISH", "no Property Length", pkt(0x30, s("a")), M)
row(5, "PUBLISH", "Property Length past the end", pkt(0x30, s("a"), "05"), M)
row(5, "PUBLISH", "empty topic and no Topic Alias", pkt(0x30, s(""), "00"), P)
row(5, "PUBLISH", "Subscription Identifier 0", pkt(0x30, s("a"), props("0b00")), P)
row(
  5,
  "PUBLISH",
  "Subscription Identifier not in its shortest form",
  pkt(0x30, s("a"), props("0b8100")),
  M,
  "MQTT-1.5.5-1"
)
row(5, "PUBLISH", "Subscription Identifier cut short", pkt(0x30, s("a"), props("0b81")), M)
row(5, "PUBLISH", "Topic Alias 0", pkt(0x30, s("a"), props("230000")), 0x94, "MQTT-3.3.2-8")
row(5, "PUBLISH", "Topic Alias twice", pkt(0x30, s("a"), props("230001", "230002")), P)
row(5, "PUBLISH", "Topic Alias cut short", pkt(0x30, s("a"), props("2300")), M)
row(5, "PUBLISH", "Response Topic twice", pkt(0x30, s("a"), props("08" + s("r"), "08" + s("r"))), P)
row(5, "PUBLISH", "Response Topic not UTF-8", pkt(0x30, s("a"), props("08" + raw("80"))), M, "MQTT-1.5.4-1")
row(5, "PUBLISH", "Payload Format Indicator 2", pkt(0x30, s("a"), props("0102")), P)
row(5, "PUBLISH", "Payload Format Indicator twice", pkt(0x30, s("a"), props("0101", "0100")), P)
row(5, "PUBLISH", "Message Expiry Interval twice", pkt(0x30, s("a"), props("0200000001", "0200000001")), P)
row(5, "PUBLISH", "Message Expiry Interval cut short", pkt(0x30, s("a"), props("020000")), M)
row(5, "PUBLISH", "Content Type twice", pkt(0x30, s("a"), props("03" + s("t"), "03" + s("t"))), P)
row(5, "PUBLISH", "Content Type with U+0000", pkt(0x30, s("a"), props("03" + raw("00"))), M, "MQTT-1.5.4-2")
row(5, "PUBLISH", "Correlation Data twice", pkt(0x30, s("a"), props("09" + raw("01"), "09" + raw("02"))), P)
row(5, "PUBLISH", "Correlation Data past the block", pkt(0x30, s("a"), props("090004ab"), "abcdef"), M)
row(5, "PUBLISH", "Reason String, not a PUBLISH property", pkt(0x30, s("a"), props("1f" + s("r"))), M)
row(5, "PUBLISH", "Session Expiry Interval, not a PUBLISH property", pkt(0x30, s("a"), props("1100000001")), M)
row(5, "PUBLISH", "Receive Maximum, not a PUBLISH property", pkt(0x30, s("a"), props("210001")), M)
row(
  5,
  "PUBLISH",
  "User Property value with U+0000",
  pkt(0x30, s("a"), props("26" + s("k") + raw("00"))),
  M,
  "MQTT-1.5.4-2"
)

// ---- PUBACK, PUBREC, PUBREL, PUBCOMP ------------------------------------------------------------------------------
const ACKS = [["PUBACK", 0x40], ["PUBREC", 0x50], ["PUBREL", 0x62], ["PUBCOMP", 0x70]] as const
for (const [name, header] of ACKS) {
  row(4, name, "Remaining Length 3", pkt(header, "000100"), M)
  row(4, name, "Remaining Length 1", pkt(header, "00"), M)
  row(4, name, "Remaining Length 0", pkt(header), M)
  row(4, name, "Remaining Length 4", pkt(header, "00010000"), M)
  row(4, name, "packet identifier 0", pkt(header, "0000"), P, "MQTT-2.3.1-6")
  row(3, name, "Remaining Length 3", pkt(header, "000100"), M)
  row(3, name, "packet identifier 0", pkt(header, "0000"), P, "MQTT-2.3.1-6")
  row(5, name, "Remaining Length 1", pkt(header, "00"), M)
  row(5, name, "packet identifier 0", pkt(header, "0000"), P, "MQTT-2.2.1-5")
  row(5, name, "Property Length past the end", pkt(header, "0001", "00", "05"), M)
  row(
    5,
    name,
    "Reason String twice, different values",
    pkt(header, "0001", "00", props("1f" + s("a"), "1f" + s("b"))),
    P
  )
  row(
    5,
    name,
    "Session Expiry Interval, not an acknowledgement property",
    pkt(header, "0001", "00", props("1100000000")),
    M
  )
  row(5, name, "Server Reference, not an acknowledgement property", pkt(header, "0001", "00", props("1c" + s("s"))), M)
  row(5, name, "two trailing bytes", pkt(header, "0001", "00", "00", "0000"), M)
}
row(4, "PUBACK", "fixed-header flags 1", pkt(0x41, "0001"), M, "MQTT-2.2.2-1")
row(4, "PUBREC", "fixed-header flags 8", pkt(0x58, "0001"), M, "MQTT-2.2.2-1")
row(4, "PUBREL", "fixed-header flags 0", pkt(0x60, "0001"), M, "MQTT-3.6.1-1")
row(4, "PUBREL", "fixed-header flags 0xa (DUP)", pkt(0x6a, "0001"), M, "MQTT-3.6.1-1")
row(4, "PUBCOMP", "fixed-header flags 2", pkt(0x72, "0001"), M, "MQTT-2.2.2-1")
row(3, "PUBREL", "QoS 0 in the fixed header", pkt(0x60, "0001"), M)
row(3, "PUBREL", "QoS 2 in the fixed header", pkt(0x64, "0001"), M)
row(5, "PUBACK", "fixed-header flags 2", pkt(0x42, "0001"), M, "MQTT-2.1.3-1")
row(5, "PUBREL", "fixed-header flags 0", pkt(0x60, "0001"), M, "MQTT-3.6.1-1")
row(5, "PUBCOMP", "fixed-header flags 1", pkt(0x71, "0001"), M, "MQTT-2.1.3-1")
row(5, "PUBACK", "reason code 0x01", pkt(0x40, "0001", "01"), P, "MQTT-3.4.2-1")
row(5, "PUBACK", "reason code 0x92 (PUBREL/PUBCOMP only)", pkt(0x40, "0001", "92"), P, "MQTT-3.4.2-1")
row(5, "PUBREC", "reason code 0x92 (PUBREL/PUBCOMP only)", pkt(0x50, "0001", "92", "00"), P, "MQTT-3.5.2-1")
row(5, "PUBREL", "reason code 0x10 (PUBACK/PUBREC only)", pkt(0x62, "0001", "10"), P, "MQTT-3.6.2-1")
row(5, "PUBCOMP", "reason code 0x80", pkt(0x70, "0001", "80"), P, "MQTT-3.7.2-1")
row(5, "PUBCOMP", "Reason String not UTF-8", pkt(0x70, "0001", "92", props("1f" + raw("fe"))), M, "MQTT-1.5.4-1")
row(5, "PUBACK", "Property Length not in its shortest form", pkt(0x40, "0001", "00", "8000"), M, "MQTT-1.5.5-1")
row(5, "PUBREL", "User Property then a trailing byte", pkt(0x62, "0001", "00", props("26" + s("a") + s("b")), "00"), M)

// ---- SUBACK ------------------------------------------------------------------------------------------------------
row(4, "SUBACK", "no return code", pkt(0x90, "0001"), P, "MQTT-3.8.4-5")
row(4, "SUBACK", "return code 3", pkt(0x90, "0001", "03"), P, "MQTT-3.9.3-2")
row(4, "SUBACK", "return code 0x81", pkt(0x90, "0001", "0081"), P, "MQTT-3.9.3-2")
row(4, "SUBACK", "packet identifier 0", pkt(0x90, "0000", "00"), P, "MQTT-2.3.1-7")
row(4, "SUBACK", "fixed-header flags 2", pkt(0x92, "0001", "00"), M, "MQTT-2.2.2-1")
row(4, "SUBACK", "Remaining Length 1", pkt(0x90, "00"), M)
row(4, "SUBACK", "Remaining Length 0", pkt(0x90), M)
row(3, "SUBACK", "failure code 0x80 (MQTT 3.1.1 and later)", pkt(0x90, "0001", "80"), P, "MQTT-3.9.3-2")
row(3, "SUBACK", "return code 3", pkt(0x90, "0001", "0103"), P, "MQTT-3.9.3-2")
row(3, "SUBACK", "no return code", pkt(0x90, "0001"), P, "MQTT-3.8.4-5")
row(3, "SUBACK", "packet identifier 0", pkt(0x90, "0000", "01"), P, "MQTT-2.3.1-7")
row(5, "SUBACK", "no Property Length", pkt(0x90, "0001"), M)
row(5, "SUBACK", "no reason code", pkt(0x90, "0001", "00"), P, "MQTT-3.8.4-6")
row(5, "SUBACK", "reason code 3", pkt(0x90, "0001", "00", "03"), P, "MQTT-3.9.3-2")
row(5, "SUBACK", "reason code 0x11 (UNSUBACK only)", pkt(0x90, "0001", "00", "0011"), P, "MQTT-3.9.3-2")
row(5, "SUBACK", "packet identifier 0", pkt(0x90, "0000", "00", "00"), P, "MQTT-2.2.1-6")
row(5, "SUBACK", "Reason String twice", pkt(0x90, "0001", props("1f" + s("a"), "1f" + s("a")), "00"), P)
row(5, "SUBACK", "Topic Alias, not a SUBACK property", pkt(0x90, "0001", props("230001"), "00"), M)
row(5, "SUBACK", "Subscription Identifier, not a SUBACK property", pkt(0x90, "0001", props("0b05"), "00"), M)
row(5, "SUBACK", "Property Length past the end", pkt(0x90, "0001", "09", "00"), M)

// ---- UNSUBACK ----------------------------------------------------------------------------------------------------
row(4, "UNSUBACK", "Remaining Length 3", pkt(0xb0, "000100"), M)
row(4, "UNSUBACK", "Remaining Length 1", pkt(0xb0, "00"), M)
row(4, "UNSUBACK", "fixed-header flags 2", pkt(0xb2, "0001"), M, "MQTT-2.2.2-1")
row(4, "UNSUBACK", "packet identifier 0", pkt(0xb0, "0000"), P, "MQTT-2.3.1-7")
row(3, "UNSUBACK", "Remaining Length 3", pkt(0xb0, "000100"), M)
row(3, "UNSUBACK", "packet identifier 0", pkt(0xb0, "0000"), P, "MQTT-2.3.1-7")
row(5, "UNSUBACK", "no Property Length", pkt(0xb0, "0001"), M)
row(5, "UNSUBACK", "no reason code", pkt(0xb0, "0001", "00"), P)
row(5, "UNSUBACK", "reason code 0x01", pkt(0xb0, "0001", "00", "01"), P, "MQTT-3.11.3-2")
row(5, "UNSUBACK", "reason code 0x10 (PUBACK/PUBREC only)", pkt(0xb0, "0001", "00", "1000"), P, "MQTT-3.11.3-2")
row(5, "UNSUBACK", "Reason String twice", pkt(0xb0, "0001", props("1f" + s("a"), "1f" + s("a")), "00"), P)
row(5, "UNSUBACK", "packet identifier 0", pkt(0xb0, "0000", "00", "00"), P, "MQTT-2.2.1-6")

// ---- PINGRESP ----------------------------------------------------------------------------------------------------
row(4, "PINGRESP", "a trailing byte", "d00100", M)
row(4, "PINGRESP", "fixed-header flags 1", "d100", M, "MQTT-2.2.2-1")
row(3, "PINGRESP", "two trailing bytes", "d0020000", M)
row(5, "PINGRESP", "fixed-header flags 8", "d800", M, "MQTT-2.1.3-1")

// ---- DISCONNECT --------------------------------------------------------------------------------------------------
row(4, "DISCONNECT", "a DISCONNECT from the server (MQTT 3.1.1)", "e000", P)
row(3, "DISCONNECT", "a DISCONNECT from the server (MQTT 3.1)", "e000", P)
row(5, "DISCONNECT", "reason code 0x04 (client only)", "e00104", P, "MQTT-3.14.2-1")
row(5, "DISCONNECT", "reason code 0x05", "e00105", P, "MQTT-3.14.2-1")
row(5, "DISCONNECT", "reason code 0x92", "e00192", P, "MQTT-3.14.2-1")
row(
  5,
  "DISCONNECT",
  "Session Expiry Interval from the server",
  pkt(0xe0, "00", props("1100000000")),
  P,
  "MQTT-3.14.2-2"
)
row(5, "DISCONNECT", "fixed-header flags 1", "e100", M, "MQTT-3.14.1-1")
row(5, "DISCONNECT", "a trailing byte", pkt(0xe0, "00", "00", "00"), M)
row(5, "DISCONNECT", "Property Length past the end", pkt(0xe0, "8b", "05"), M)
row(5, "DISCONNECT", "Reason String twice", pkt(0xe0, "8b", props("1f" + s("a"), "1f" + s("a"))), P)
row(5, "DISCONNECT", "Server Reference twice", pkt(0xe0, "9c", props("1c" + s("a"), "1c" + s("b"))), P)
row(5, "DISCONNECT", "Topic Alias, not a DISCONNECT property", pkt(0xe0, "00", props("230001")), M)
row(5, "DISCONNECT", "Assigned Client Identifier, not a DISCONNECT property", pkt(0xe0, "00", props("12" + s("c"))), M)
row(5, "DISCONNECT", "Server Reference not UTF-8", pkt(0xe0, "9d", props("1c" + raw("e2"))), M, "MQTT-1.5.4-1")

// ---- AUTH --------------------------------------------------------------------------------------------------------
row(4, "reserved packet type 15", "packet type 15 in MQTT 3.1.1", "f000", M)
row(3, "reserved packet type 15", "packet type 15 in MQTT 3.1", "f000", M)
row(5, "AUTH", "Remaining Length 1", "f00100", M)
row(5, "AUTH", "reason code 0x19 (client only)", pkt(0xf0, "19", props("15" + s("m"))), P, "MQTT-3.15.2-1")
row(5, "AUTH", "reason code 0x01", pkt(0xf0, "01", props("15" + s("m"))), P, "MQTT-3.15.2-1")
row(5, "AUTH", "Authentication Method with U+0000", pkt(0xf0, "18", props("15" + raw("6d00"))), M, "MQTT-1.5.4-2")
row(5, "AUTH", "Property Length past the end", pkt(0xf0, "18", "04", "15"), M)
row(5, "AUTH", "fixed-header flags 1", "f100", M, "MQTT-3.15.1-1")
row(5, "AUTH", "Authentication Method twice", pkt(0xf0, "18", props("15" + s("m"), "15" + s("m"))), P)
row(
  5,
  "AUTH",
  "Authentication Data twice",
  pkt(0xf0, "18", props("15" + s("m"), "16" + raw("01"), "16" + raw("01"))),
  P
)
row(5, "AUTH", "a trailing byte", pkt(0xf0, "18", props("15" + s("m")), "00"), M)
row(5, "AUTH", "Receive Maximum, not an AUTH property", pkt(0xf0, "18", props("15" + s("m"), "210001")), M)

// ---- packets a server never sends, and reserved types ----------------------------------------------------------
for (const version of [3, 4, 5] as const) {
  row(
    version,
    "CONNECT",
    "CONNECT from the server",
    pkt(0x10, s(version === 3 ? "MQIsdp" : "MQTT"), "04", "02", "003c", s("c")),
    P
  )
  row(version, "SUBSCRIBE", "SUBSCRIBE from the server", pkt(0x82, "0001", s("a"), "00"), P)
  row(version, "UNSUBSCRIBE", "UNSUBSCRIBE from the server", pkt(0xa2, "0001", s("a")), P)
  row(version, "PINGREQ", "PINGREQ from the server", "c000", P)
  row(version, "reserved packet type 0", "packet type 0", "0000", M)
}

/** The table: at least 150 rows, every packet type, versions 3, 4 and 5. */
export const malformedPackets: ReadonlyArray<MalformedRow> = rows
