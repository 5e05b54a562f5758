/**
 * How `sub` writes a received message on standard output.
 *
 * - `text` (the default, as `mosquitto_sub`): the payload's bytes as they are, then a newline;
 * - `text` with `-v`: the topic, a space, the payload, a newline;
 * - `json`: one JSON object a line:
 *   `{"topic", "payload", "payloadEncoding", "qos", "retain", "properties"}`. `payload` is the text when the
 *   payload is valid UTF-8 (`payloadEncoding` `"utf8"`), else its base64 (`payloadEncoding` `"base64"`).
 *   `properties` holds the MQTT 5 properties the message carries (empty on MQTT 3.1.1): `payloadFormatIndicator`,
 *   `messageExpiryInterval`, `contentType`, `responseTopic`, `correlationData` (always base64: it is opaque
 *   bytes), `userProperties` (an array of `[name, value]` pairs, in order, names may repeat) and
 *   `subscriptionIdentifiers`.
 *
 * @since 0.1.0
 */
import * as Base64 from "effect/encoding/Base64"
import type * as MqttMessage from "../MqttMessage.ts"

/**
 * The output formats of `sub`.
 *
 * @since 0.1.0
 * @category models
 */
export type Format = "text" | "json"

/**
 * The JSON object `sub --format json` writes for one message.
 *
 * @since 0.1.0
 * @category models
 */
export interface JsonMessage {
  readonly topic: string
  readonly payload: string
  readonly payloadEncoding: "utf8" | "base64"
  readonly qos: MqttMessage.QoS
  readonly retain: boolean
  readonly properties: {
    readonly payloadFormatIndicator?: boolean
    readonly messageExpiryInterval?: number
    readonly contentType?: string
    readonly responseTopic?: string
    readonly correlationData?: string
    readonly userProperties?: ReadonlyArray<MqttMessage.UserProperty>
    readonly subscriptionIdentifiers?: ReadonlyArray<number>
  }
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true })
const encoder = new TextEncoder()
const newline = Uint8Array.of(0x0a)

/** The payload as text when it is valid UTF-8, else `undefined`. */
const utf8 = (bytes: Uint8Array): string | undefined => {
  try {
    return strictUtf8.decode(bytes)
  } catch {
    return undefined
  }
}

/**
 * The JSON object of a message (see the module's description).
 *
 * @since 0.1.0
 * @category formatting
 */
export const toJson = (message: MqttMessage.MqttMessage): JsonMessage => {
  const text = utf8(message.payload)
  const p = message.properties
  return {
    topic: message.topic,
    payload: text ?? Base64.encode(message.payload),
    payloadEncoding: text === undefined ? "base64" : "utf8",
    qos: message.qos,
    retain: message.retain,
    properties: definedOnly({
      payloadFormatIndicator: p.payloadFormatIndicator,
      messageExpiryInterval: p.messageExpiryInterval,
      contentType: p.contentType,
      responseTopic: p.responseTopic,
      correlationData: p.correlationData === undefined ? undefined : Base64.encode(p.correlationData),
      userProperties: p.userProperties === undefined || p.userProperties.length === 0 ? undefined : p.userProperties,
      subscriptionIdentifiers: p.subscriptionIdentifiers === undefined || p.subscriptionIdentifiers.length === 0
        ? undefined
        : p.subscriptionIdentifiers
    })
  }
}

const definedOnly = (record: Record<string, unknown>): JsonMessage["properties"] =>
  Object.fromEntries(Object.entries(record).filter(([, value]) => value !== undefined))

/**
 * The bytes `sub` writes for one message: a JSON line, or the payload (after the topic and a space with
 * `verbose`) and a newline.
 *
 * @since 0.1.0
 * @category formatting
 */
export const render = (
  message: MqttMessage.MqttMessage,
  options: { readonly format: Format; readonly verbose: boolean }
): Uint8Array => {
  if (options.format === "json") return encoder.encode(JSON.stringify(toJson(message)) + "\n")
  const prefix = options.verbose ? encoder.encode(message.topic + " ") : undefined
  return concat(prefix, message.payload, newline)
}

const concat = (...parts: ReadonlyArray<Uint8Array | undefined>): Uint8Array => {
  let length = 0
  for (const part of parts) length += part?.byteLength ?? 0
  const out = new Uint8Array(length)
  let offset = 0
  for (const part of parts) {
    if (part === undefined) continue
    out.set(part, offset)
    offset += part.byteLength
  }
  return out
}
