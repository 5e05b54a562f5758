/**
 * The test broker's use of mqtt-packet: a parser per connection, generating packets without letting a throw
 * escape, and converting properties between mqtt-packet's shape and the library's.
 *
 * @internal
 */
import * as MqttPacket from "mqtt-packet"
import { Buffer } from "node:buffer"
import type * as MqttMessage from "../../MqttMessage.ts"
import { Framer } from "../framer.ts"

/** The MQTT 5 properties of a PUBLISH, in mqtt-packet's shape. */
export type PublishPacketProperties = NonNullable<MqttPacket.IPublishPacket["properties"]>

export type Packet = MqttPacket.Packet

/** Encodes a packet; `undefined` when mqtt-packet refuses it (never throws). */
export const generate = (packet: Packet, protocolVersion: 4 | 5): Uint8Array | undefined => {
  try {
    return MqttPacket.generate(packet, { protocolVersion })
  } catch {
    return undefined
  }
}

/**
 * A parser that reports each packet, and its first error; after an error it must not be used again.
 *
 * mqtt-packet is given one whole packet at a time: some of its MQTT 5 checks look at the bytes buffered rather
 * than at the packet's length (a DISCONNECT with no reason code followed by another packet would read the next
 * packet's first byte as its reason code).
 */
export const parser = (onPacket: (packet: Packet) => void, onError: () => void) => {
  // The parser reads only `protocolVersion` from its settings; a CONNECT of version 5 switches it to 5.
  const p = MqttPacket.parser({ protocolVersion: 4 })
  // the client's framer, with no limit but MQTT's own: 268,435,455 bytes after a fixed header of at most 5
  const framer = new Framer(268_435_460)
  let failed = false
  p.on("packet", (packet: Packet) => {
    if (packet.cmd === "connect" && packet.protocolVersion === 5) {
      ;(p as unknown as { settings: { protocolVersion: number } }).settings.protocolVersion = 5
    }
    onPacket(packet)
  })
  p.on("error", () => {
    failed = true
    onError()
  })
  // a packet's handling may make the client write again at once (an in-memory socket delivers synchronously):
  // that chunk waits until this one is done, since mqtt-packet's parser must not be entered while it emits
  const waiting: Array<Uint8Array> = []
  let parsing = false
  const parseOne = (chunk: Uint8Array): void => {
    const packets: Array<Buffer> = []
    const error = framer.frame(chunk, (bytes, start, _bodyStart, end) => {
      packets.push(Buffer.from(bytes.buffer, bytes.byteOffset + start, end - start))
    })
    if (error !== undefined) return onError()
    for (const packet of packets) {
      if (failed) return
      p.parse(packet)
    }
  }
  return {
    parse: (chunk: Uint8Array): void => {
      waiting.push(chunk)
      if (parsing) return
      parsing = true
      try {
        for (let next = waiting.shift(); next !== undefined && !failed; next = waiting.shift()) parseOne(next)
      } finally {
        parsing = false
        waiting.length = 0
      }
    }
  }
}

/** The properties that travel with a message from publisher to subscriber (MQTT 5 section 3.3.2.3). */
export const forwardable = (
  properties: MqttPacket.IPublishPacket["properties"] | undefined
): PublishPacketProperties => {
  if (properties === undefined) return {}
  const out: PublishPacketProperties = {}
  if (properties.payloadFormatIndicator !== undefined) out.payloadFormatIndicator = properties.payloadFormatIndicator
  if (properties.messageExpiryInterval !== undefined) out.messageExpiryInterval = properties.messageExpiryInterval
  if (properties.contentType !== undefined) out.contentType = properties.contentType
  if (properties.responseTopic !== undefined) out.responseTopic = properties.responseTopic
  if (properties.correlationData !== undefined) out.correlationData = properties.correlationData
  if (properties.userProperties !== undefined) out.userProperties = properties.userProperties
  return out
}

/** The library's publish properties in mqtt-packet's shape. */
export const fromPublishProperties = (
  properties: MqttMessage.PublishProperties | undefined
): PublishPacketProperties => {
  if (properties === undefined) return {}
  const out: PublishPacketProperties = {}
  if (properties.payloadFormatIndicator !== undefined) out.payloadFormatIndicator = properties.payloadFormatIndicator
  if (properties.messageExpiryInterval !== undefined) out.messageExpiryInterval = properties.messageExpiryInterval
  if (properties.contentType !== undefined) out.contentType = properties.contentType
  if (properties.responseTopic !== undefined) out.responseTopic = properties.responseTopic
  if (properties.correlationData !== undefined) out.correlationData = Buffer.from(properties.correlationData)
  if (properties.userProperties !== undefined && properties.userProperties.length > 0) {
    const user: Record<string, string | Array<string>> = {}
    for (const [name, value] of properties.userProperties) {
      const previous = user[name]
      user[name] = previous === undefined ? value : Array.isArray(previous) ? [...previous, value] : [previous, value]
    }
    out.userProperties = user
  }
  return out
}

/** mqtt-packet's publish properties in the library's shape. */
export const toMessageProperties = (
  properties: PublishPacketProperties,
  subscriptionIdentifiers?: ReadonlyArray<number>
): MqttMessage.MessageProperties => {
  const out: {
    -readonly [K in keyof MqttMessage.MessageProperties]: MqttMessage.MessageProperties[K]
  } = {}
  if (properties.payloadFormatIndicator !== undefined) out.payloadFormatIndicator = properties.payloadFormatIndicator
  if (properties.messageExpiryInterval !== undefined) out.messageExpiryInterval = properties.messageExpiryInterval
  if (properties.contentType !== undefined) out.contentType = properties.contentType
  if (properties.responseTopic !== undefined) out.responseTopic = properties.responseTopic
  if (properties.correlationData !== undefined) out.correlationData = new Uint8Array(properties.correlationData)
  if (properties.userProperties !== undefined) {
    const pairs: Array<MqttMessage.UserProperty> = []
    for (const [name, value] of Object.entries(properties.userProperties)) {
      for (const v of Array.isArray(value) ? value : [value]) pairs.push([name, v])
    }
    out.userProperties = pairs
  }
  if (subscriptionIdentifiers !== undefined && subscriptionIdentifiers.length > 0) {
    out.subscriptionIdentifiers = subscriptionIdentifiers
  }
  return out
}
