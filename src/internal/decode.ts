/**
 * Bytes to packets. TEMPORARY adapter over the previous decoding (PUBLISH by the client, the 4-byte
 * acknowledgements read directly, mqtt-packet for the rest); replaced by the strict decoder.
 */
import * as MqttPacket from "mqtt-packet"
import { Buffer } from "node:buffer"
import type { UserProperty } from "../MqttMessage.ts"
import { decodePublish } from "./framer.ts"
import type * as Packets from "./packets.ts"

const ackTags: Record<number, Packets.Ack["_tag"]> = { 0x40: "Puback", 0x50: "Pubrec", 0x62: "Pubrel", 0x70: "Pubcomp" }

const userProperties = (props: MqttPacket.UserProperties | undefined): ReadonlyArray<UserProperty> | undefined => {
  if (props === undefined) return undefined
  const out: Array<UserProperty> = []
  for (const name of Object.keys(props)) {
    const value = props[name]
    if (typeof value === "string") out.push([name, value])
    else for (const v of value) out.push([name, v])
  }
  return out
}

const clean = <A extends object>(a: A): A => {
  for (const key of Object.keys(a) as Array<keyof A>) if (a[key] === undefined) delete a[key]
  return a
}

export const decode = (
  header: number,
  body: Uint8Array,
  version: Packets.ProtocolVersion
): Packets.Packet | Packets.Violation => {
  const buffer = Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength)
  if (header >> 4 === 3) {
    const decoded = decodePublish(header, buffer, version, 16 * 1024)
    if ("error" in decoded) {
      return { _tag: "Violation", packet: "PUBLISH", reason: decoded.error, reasonCode: decoded.reasonCode }
    }
    if (decoded.topic.includes("+") || decoded.topic.includes("#")) {
      return {
        _tag: "Violation",
        packet: "PUBLISH",
        reason: `a PUBLISH with an invalid topic name "${decoded.topic}"`,
        reasonCode: 0x82
      }
    }
    return { _tag: "Publish", ...decoded, qos: decoded.qos }
  }
  const tag = body.length === 2 ? ackTags[header] : undefined
  if (tag !== undefined) return { _tag: tag, id: (body[0] << 8) | body[1], reasonCode: 0 }
  const parser = MqttPacket.parser({ protocolVersion: version === 3 ? 4 : version })
  let packet: MqttPacket.Packet | undefined
  let error: Error | undefined
  parser.on("packet", (p: MqttPacket.Packet) => packet ??= p)
  parser.on("error", (e: Error) => error ??= e)
  const head = Buffer.alloc(5)
  let n = body.length
  let i = 1
  head[0] = header
  do {
    let digit = n % 128
    n = Math.floor(n / 128)
    if (n > 0) digit |= 0x80
    head[i++] = digit
  } while (n > 0)
  try {
    parser.parse(Buffer.concat([head.subarray(0, i), buffer]))
  } catch (e) {
    error ??= e instanceof Error ? e : new Error(String(e))
  }
  if (error !== undefined || packet === undefined) {
    return {
      _tag: "Violation",
      packet: "?",
      reason: `malformed packet: ${error?.message ?? "incomplete"}`,
      reasonCode: 0x81
    }
  }
  const p = packet as any
  const props = p.properties ?? {}
  switch (packet.cmd) {
    case "connack":
      return {
        _tag: "Connack",
        sessionPresent: p.sessionPresent,
        reasonCode: (version === 5 ? p.reasonCode : p.returnCode) ?? 0,
        properties: clean({ ...props, userProperties: userProperties(props.userProperties) })
      }
    case "puback":
    case "pubrec":
    case "pubrel":
    case "pubcomp":
      return clean({
        _tag: ackTags[header] ??
          (packet.cmd === "puback"
            ? "Puback"
            : packet.cmd === "pubrec"
            ? "Pubrec"
            : packet.cmd === "pubrel"
            ? "Pubrel"
            : "Pubcomp"),
        id: p.messageId ?? -1,
        reasonCode: p.reasonCode ?? 0,
        reasonString: props.reasonString,
        userProperties: userProperties(props.userProperties)
      }) as Packets.Ack
    case "suback":
      return clean({
        _tag: "Suback",
        id: p.messageId ?? -1,
        codes: p.granted,
        reasonString: props.reasonString
      }) as Packets.Suback
    case "unsuback":
      return clean({
        _tag: "Unsuback",
        id: p.messageId ?? -1,
        codes: version === 5 ? (p.granted ?? []) : undefined,
        reasonString: props.reasonString
      }) as Packets.Unsuback
    case "pingresp":
      return { _tag: "Pingresp" }
    case "disconnect":
      return clean({
        _tag: "Disconnect",
        reasonCode: p.reasonCode ?? 0,
        reasonString: props.reasonString,
        serverReference: props.serverReference
      }) as Packets.Disconnect
    case "auth":
      return clean({
        _tag: "Auth",
        reasonCode: p.reasonCode ?? 0,
        authenticationMethod: props.authenticationMethod,
        authenticationData: props.authenticationData,
        reasonString: props.reasonString
      }) as Packets.Auth
    default:
      return {
        _tag: "Violation",
        packet: packet.cmd.toUpperCase(),
        reason: `a ${packet.cmd.toUpperCase()} packet, which a server never sends`,
        reasonCode: 0x82
      }
  }
}
