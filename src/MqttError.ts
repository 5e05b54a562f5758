/**
 * The typed errors of effect-mqtt.
 *
 * Errors are split by whose mistake they are, as in aiomqtt:
 *
 * - the caller's: {@link InvalidTopicError}, {@link InvalidOptionError}. They are raised before anything is
 *   sent, so nothing reaches the broker.
 * - the broker's answer: {@link ConnectRefusedError}, {@link SubscribeError}, {@link UnsubscribeError},
 *   {@link PublishError}. Each carries the MQTT reason code and, in MQTT 5, the reason string.
 * - the network or the protocol: {@link ConnectionLostError}, {@link TimeoutError}, {@link ProtocolError},
 *   {@link TlsError}. After one of these the connection is closed.
 *
 * Every error has a readable `message`. `MqttError` is the union of all of them.
 *
 * @since 0.1.0
 */
import * as Predicate from "effect/Predicate"
import * as Schema from "effect/Schema"

const TypeId = "~effect-mqtt/MqttError"

const optionalString = Schema.optionalKey(Schema.String)
const optionalNumber = Schema.optionalKey(Schema.Number)

const hex = (code: number): string => `0x${code.toString(16).padStart(2, "0")}`

const withReason = (text: string, reasonCode: number | undefined, reasonString: string | undefined): string =>
  text + (reasonCode === undefined ? "" : ` (reason code ${hex(reasonCode)}`) +
  (reasonCode === undefined ? "" : reasonString === undefined ? ")" : `: ${reasonString})`)

/**
 * The broker answered CONNECT with a CONNACK that refuses the connection.
 *
 * `reasonCode` is the CONNACK return code (MQTT 3.1.1: 1 to 5) or reason code (MQTT 5: 0x80 and above).
 *
 * @since 0.1.0
 * @category errors
 */
export class ConnectRefusedError extends Schema.TaggedError<ConnectRefusedError>()("ConnectRefusedError", {
  reasonCode: Schema.Number,
  reasonString: optionalString,
  protocolVersion: Schema.Number
}) {
  readonly [TypeId] = TypeId
  override get message(): string {
    return withReason(
      `The broker refused the connection: ${connackReason(this.protocolVersion, this.reasonCode)}`,
      this.reasonCode,
      this.reasonString
    )
  }
}

/**
 * The connection to the broker ended: the socket closed or failed, or the broker sent DISCONNECT.
 *
 * `reasonCode` is set when the broker sent an MQTT 5 DISCONNECT.
 *
 * @since 0.1.0
 * @category errors
 */
export class ConnectionLostError extends Schema.TaggedError<ConnectionLostError>()("ConnectionLostError", {
  reason: Schema.String,
  reasonCode: optionalNumber,
  reasonString: optionalString,
  /** MQTT 5: the other server the broker named (DISCONNECT 0x9C use another server, 0x9D server moved).
   * The client does not follow it by itself. */
  serverReference: optionalString,
  cause: Schema.optionalKey(Schema.Defect())
}) {
  readonly [TypeId] = TypeId
  override get message(): string {
    return withReason(`The connection to the broker was lost: ${this.reason}`, this.reasonCode, this.reasonString)
  }
}

/**
 * An exchange did not complete in time: `operation` is `"connect"` (no CONNACK within `connectTimeout`),
 * `"ping"` (no PINGRESP within the ping timeout) or `"request"` (no response to `request` within its timeout).
 *
 * @since 0.1.0
 * @category errors
 */
export class TimeoutError extends Schema.TaggedError<TimeoutError>()("TimeoutError", {
  operation: Schema.Literals(["connect", "ping", "request"]),
  millis: Schema.Number
}) {
  readonly [TypeId] = TypeId
  override get message(): string {
    return this.operation === "connect"
      ? `No CONNACK from the broker within ${this.millis} ms`
      : this.operation === "ping"
      ? `No PINGRESP from the broker within ${this.millis} ms`
      : `No response to the request within ${this.millis} ms`
  }
}

/**
 * The TLS connection to the broker could not be established or was refused. The connection is closed and
 * nothing was sent in plaintext. `kind` says what failed:
 *
 * - `"ServerCertificateUntrusted"`: the broker's certificate does not chain to a trusted certificate authority
 *   (a wrong or missing `tls.ca`), or it is expired, not yet valid or revoked.
 * - `"HostnameMismatch"`: the certificate is valid but not for the host in the URL (or `tls.servername`).
 * - `"ClientCertificateRequired"`: the broker requires a client certificate and none was given.
 * - `"ClientCertificateRejected"`: the broker does not accept the client certificate that was given.
 * - `"HandshakeFailed"`: any other handshake failure, such as no common TLS version or cipher, or a port that
 *   does not speak TLS (the broker closed the connection during the handshake).
 *
 * `code` is the OpenSSL or Node.js error code when there is one (for example `SELF_SIGNED_CERT_IN_CHAIN`).
 *
 * @since 0.1.0
 * @category errors
 */
export class TlsError extends Schema.TaggedError<TlsError>()("TlsError", {
  kind: Schema.Literals([
    "ServerCertificateUntrusted",
    "HostnameMismatch",
    "ClientCertificateRequired",
    "ClientCertificateRejected",
    "HandshakeFailed"
  ]),
  reason: Schema.String,
  code: optionalString
}) {
  readonly [TypeId] = TypeId
  override get message(): string {
    return `TLS failed (${tlsKinds[this.kind]}): ${this.reason}` + (this.code === undefined ? "" : ` [${this.code}]`)
  }
}

const tlsKinds: Record<TlsError["kind"], string> = {
  ServerCertificateUntrusted: "the broker's certificate is not trusted",
  HostnameMismatch: "the broker's certificate is not valid for this host name",
  ClientCertificateRequired: "the broker requires a client certificate",
  ClientCertificateRejected: "the broker rejected the client certificate",
  HandshakeFailed: "handshake failed"
}

/**
 * The broker broke the protocol: a malformed packet, a packet a server never sends, an acknowledgement for
 * a packet identifier that is not in flight. The connection is closed when this is raised.
 *
 * `reasonCode` is the MQTT 5 reason code the client sent in its DISCONNECT (0x81 malformed packet,
 * 0x82 protocol error), when it sent one.
 *
 * @since 0.1.0
 * @category errors
 */
export class ProtocolError extends Schema.TaggedError<ProtocolError>()("ProtocolError", {
  reason: Schema.String,
  reasonCode: optionalNumber,
  /** The packet type that broke the rule (`"PUBLISH"`, `"CONNACK"`...), when one did. */
  packet: optionalString,
  /** The normative statement of the specification broken (`"MQTT-3.3.2-2"`), when it has a number. */
  rule: optionalString
}) {
  readonly [TypeId] = TypeId
  override get message(): string {
    return `The broker violated the MQTT protocol: ${this.reason}` + (this.rule === undefined ? "" : ` [${this.rule}]`)
  }
}

/**
 * The broker refused one of the filters of a SUBSCRIBE (a SUBACK return code 0x80 or MQTT 5 reason code
 * at or above 0x80). `filter` is the first refused one; `codes` gives every filter's code, since the broker
 * holds the subscriptions it granted in the same SUBSCRIBE (unsubscribe them if they are not wanted alone).
 *
 * @since 0.1.0
 * @category errors
 */
export class SubscribeError extends Schema.TaggedError<SubscribeError>()("SubscribeError", {
  filter: Schema.String,
  reasonCode: Schema.Number,
  reasonString: optionalString,
  /** The reason code of every filter of the SUBSCRIBE, in order: the broker holds the granted ones. */
  codes: Schema.optionalKey(Schema.Array(Schema.Struct({ filter: Schema.String, reasonCode: Schema.Number })))
}) {
  readonly [TypeId] = TypeId
  override get message(): string {
    return withReason(`The broker refused the subscription to "${this.filter}"`, this.reasonCode, this.reasonString)
  }
}

/**
 * The broker refused to remove a subscription (MQTT 5 UNSUBACK reason code at or above 0x80).
 *
 * @since 0.1.0
 * @category errors
 */
export class UnsubscribeError extends Schema.TaggedError<UnsubscribeError>()("UnsubscribeError", {
  filter: Schema.String,
  reasonCode: Schema.Number,
  reasonString: optionalString
}) {
  readonly [TypeId] = TypeId
  override get message(): string {
    return withReason(`The broker refused to unsubscribe "${this.filter}"`, this.reasonCode, this.reasonString)
  }
}

/**
 * The broker refused a QoS 1 or QoS 2 publish (MQTT 5 PUBACK or PUBREC reason code at or above 0x80).
 *
 * @since 0.1.0
 * @category errors
 */
export class PublishError extends Schema.TaggedError<PublishError>()("PublishError", {
  topic: Schema.String,
  reasonCode: Schema.Number,
  reasonString: optionalString
}) {
  readonly [TypeId] = TypeId
  override get message(): string {
    return withReason(`The broker refused the publish to "${this.topic}"`, this.reasonCode, this.reasonString)
  }
}

/**
 * The client is not connected (it is reconnecting) and the operation could not wait: the offline buffer is
 * full, or the options say to fail instead of waiting (`offline.qos0: "fail"`, `offline.overflow: "fail"`,
 * `offline.requests: "fail"`).
 *
 * @since 0.1.0
 * @category errors
 */
export class OfflineError extends Schema.TaggedError<OfflineError>()("OfflineError", {
  operation: Schema.Literals(["publish", "subscribe", "unsubscribe", "reauthenticate"]),
  reason: Schema.String
}) {
  readonly [TypeId] = TypeId
  override get message(): string {
    return `Cannot ${this.operation} while disconnected: ${this.reason}`
  }
}

/**
 * A topic name or topic filter given by the caller is not valid. Raised before anything is sent.
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidTopicError extends Schema.TaggedError<InvalidTopicError>()("InvalidTopicError", {
  topic: Schema.String,
  kind: Schema.Literals(["name", "filter"]),
  reason: Schema.String
}) {
  readonly [TypeId] = TypeId
  override get message(): string {
    return `Invalid topic ${this.kind} "${printable(this.topic)}": ${this.reason}`
  }
}

/**
 * An option given by the caller is not valid (a QoS of 3, a keepalive out of range, a malformed URL...).
 * Raised before anything is sent.
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidOptionError extends Schema.TaggedError<InvalidOptionError>()("InvalidOptionError", {
  option: Schema.String,
  reason: Schema.String
}) {
  readonly [TypeId] = TypeId
  override get message(): string {
    return `Invalid option "${this.option}": ${this.reason}`
  }
}

/**
 * Any error raised by effect-mqtt.
 *
 * @since 0.1.0
 * @category models
 */
export type MqttError =
  | ConnectRefusedError
  | ConnectionLostError
  | TimeoutError
  | ProtocolError
  | TlsError
  | SubscribeError
  | UnsubscribeError
  | PublishError
  | OfflineError
  | InvalidTopicError
  | InvalidOptionError

/**
 * Whether a value is one of the errors of effect-mqtt.
 *
 * @since 0.1.0
 * @category guards
 */
export const isMqttError = (u: unknown): u is MqttError => Predicate.hasProperty(u, TypeId)

/**
 * Whether an error is the caller's mistake ({@link InvalidTopicError} or {@link InvalidOptionError}).
 *
 * @since 0.1.0
 * @category guards
 */
export const isInvalidInput = (u: unknown): u is InvalidTopicError | InvalidOptionError =>
  isMqttError(u) && (u._tag === "InvalidTopicError" || u._tag === "InvalidOptionError")

/**
 * Whether an error ended the connection ({@link ConnectionLostError}, {@link TimeoutError},
 * {@link ProtocolError} or {@link TlsError}): a new connection is needed to go on.
 *
 * @since 0.1.0
 * @category guards
 */
export const isConnectionError = (
  u: unknown
): u is ConnectionLostError | TimeoutError | ProtocolError | TlsError =>
  isMqttError(u) &&
  (u._tag === "ConnectionLostError" || u._tag === "TimeoutError" || u._tag === "ProtocolError" ||
    u._tag === "TlsError")

/**
 * Whether an error is a refusal by the broker that carries a reason code ({@link ConnectRefusedError},
 * {@link SubscribeError}, {@link UnsubscribeError} or {@link PublishError}).
 *
 * @since 0.1.0
 * @category guards
 */
export const isRefusal = (
  u: unknown
): u is ConnectRefusedError | SubscribeError | UnsubscribeError | PublishError =>
  isMqttError(u) &&
  (u._tag === "ConnectRefusedError" || u._tag === "SubscribeError" || u._tag === "UnsubscribeError" ||
    u._tag === "PublishError")

const v4ConnackReasons: Record<number, string> = {
  1: "unacceptable protocol version",
  2: "identifier rejected",
  3: "server unavailable",
  4: "bad user name or password",
  5: "not authorized"
}

const v5ConnackReasons: Record<number, string> = {
  0x80: "unspecified error",
  0x81: "malformed packet",
  0x82: "protocol error",
  0x83: "implementation specific error",
  0x84: "unsupported protocol version",
  0x85: "client identifier not valid",
  0x86: "bad user name or password",
  0x87: "not authorized",
  0x88: "server unavailable",
  0x89: "server busy",
  0x8a: "banned",
  0x8c: "bad authentication method",
  0x90: "topic name invalid",
  0x95: "packet too large",
  0x97: "quota exceeded",
  0x99: "payload format invalid",
  0x9a: "retain not supported",
  0x9b: "QoS not supported",
  0x9c: "use another server",
  0x9d: "server moved",
  0x9f: "connection rate exceeded"
}

const connackReason = (protocolVersion: number, code: number): string =>
  (protocolVersion === 5 ? v5ConnackReasons[code] : v4ConnackReasons[code]) ?? "unknown reason"

const printable = (s: string): string => {
  const shown = s.length > 80 ? s.slice(0, 80) + "…" : s
  // eslint-disable-next-line no-control-regex
  return shown.replace(/[\u0000-\u001f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`)
}
