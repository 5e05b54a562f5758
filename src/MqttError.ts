/**
 * The typed errors of effect-mqtt.
 *
 * (The module is long because it documents every public member where it is declared: about half of it is doc
 * comments. The implementation lives in `internal/`.)
 *
 * Errors are split by whose mistake they are, as in aiomqtt:
 *
 * - the caller's: {@link InvalidTopicError}, {@link InvalidOptionError}. They are raised before anything is
 *   sent, so nothing reaches the broker.
 * - the broker's answer: {@link ConnectRefusedError}, {@link SubscribeError}, {@link UnsubscribeError},
 *   {@link PublishError}. Each carries the MQTT reason code and, in MQTT 5, the reason string.
 * - the network or the protocol: {@link ConnectionLostError}, {@link MqttTimeoutError}, {@link ProtocolError},
 *   {@link TlsError}. After one of these the connection is closed.
 *
 * Every error has a readable `message` that names the broker (`mqtt://host:port`, never with a password) when
 * the error is about the connection, and says what to check. `MqttError` is the union of all of them.
 *
 * @since 0.1.0
 */
import * as Predicate from "effect/Predicate"
import * as Schema from "effect/Schema"
import { escapeControls } from "./internal/describe.ts"
import { tlsFailure, tlsHints } from "./internal/tlsText.ts"

const TypeId = "~effect-mqtt/MqttError"

const optionalString = Schema.optionalKey(Schema.String)
const optionalNumber = Schema.optionalKey(Schema.Number)

const hex = (code: number): string => `0x${code.toString(16).padStart(2, "0")}`

const withReason = (
  text: string,
  reasonCode: number | undefined,
  reasonString: string | undefined,
  names?: Record<number, string>
): string => {
  if (reasonCode === undefined) return text
  const name = names?.[reasonCode]
  return `${text} (reason code ${hex(reasonCode)}${name === undefined ? "" : `, ${name}`}` +
    (reasonString === undefined ? ")" : `: ${escapeControls(reasonString)})`)
}

/**
 * The names of the reason codes that refuse a publish, a subscription or an unsubscription: the broker's
 * (MQTT 5 sections 3.4.2.1, 3.5.2.1, 3.9.3 and 3.11.3; 0x80 is also MQTT 3.1.1's SUBACK failure) and the client's
 * own, for what the connection's limits rule out before sending.
 */
const refusalReasons: Record<number, string> = {
  0x80: "unspecified error",
  0x83: "implementation specific error",
  0x87: "not authorized",
  0x8f: "topic filter invalid",
  0x90: "topic name invalid",
  0x91: "packet identifier in use",
  0x95: "packet too large",
  0x97: "quota exceeded",
  0x99: "payload format invalid",
  0x9a: "retain not supported",
  0x9b: "QoS not supported",
  0x9e: "shared subscriptions not supported",
  0xa1: "subscription identifiers not supported",
  0xa2: "wildcard subscriptions not supported"
}

/** " at mqtt://host:port", or nothing when the broker is not known. */
const at = (broker: string | undefined): string => broker === undefined ? "" : ` at ${broker}`

/** Appends a hint as its own sentence. */
const hinted = (text: string, hint: string | undefined): string => hint === undefined ? text : `${text}. ${hint}`

/**
 * The broker answered CONNECT with a CONNACK that refuses the connection.
 *
 * The message names the reason and what to check: for example `bad user name or password` says to check
 * `username` and `password`, and an MQTT 5 CONNECT answered by an MQTT 3.1.1 broker (return code 1, unacceptable
 * protocol version) says to use `protocolVersion: 4`.
 *
 * @since 0.1.0
 * @category errors
 */
export class ConnectRefusedError extends Schema.TaggedError<ConnectRefusedError>()("ConnectRefusedError", {
  /** The CONNACK return code (MQTT 3.1.1: 1 to 5) or reason code (MQTT 5: 0x80 and above). An MQTT 3.1.1
   * broker answers an MQTT 5 CONNECT with return code 1, which then arrives with `protocolVersion` 5. */
  reasonCode: Schema.Number,
  /** MQTT 5: the broker's human-readable reason, when it sent one. */
  reasonString: optionalString,
  /** The protocol version of the CONNECT that was refused: 4 (MQTT 3.1.1) or 5 (MQTT 5.0). */
  protocolVersion: Schema.Number,
  /** The broker, as `scheme://host:port` without user info (see {@link ConnectionLostError.broker}). */
  broker: optionalString,
  /** MQTT 5: the other server the broker named (CONNACK 0x9C use another server, 0x9D server moved). */
  serverReference: optionalString
}) {
  /**
   * @since 0.1.0
   */
  readonly [TypeId] = TypeId
  /**
   * `The broker at mqtt://host:port refused the connection: <reason> (return code N)`, then what to check.
   *
   * @since 0.1.0
   */
  override get message(): string {
    if (this.protocolVersion === 5 && this.reasonCode > 0 && this.reasonCode <= 5) {
      return `The broker${at(this.broker)} does not support MQTT 5: it answered with the MQTT 3.1.1 return code ` +
        `${this.reasonCode} (${v4ConnackReasons[this.reasonCode]}). Use protocolVersion: 4`
    }
    const text = `The broker${at(this.broker)} refused the connection: ${
      connackReason(this.protocolVersion, this.reasonCode)
    }`
    const coded = this.protocolVersion === 5
      ? withReason(text, this.reasonCode, this.reasonString)
      : `${text} (return code ${this.reasonCode})`
    const hint = connackHints[connackKey(this.protocolVersion, this.reasonCode)]
    // the broker's text, on one line; an empty one suggests nothing
    const moved = this.serverReference === undefined || this.serverReference.trim() === ""
      ? ""
      : ` The broker suggests ${escapeControls(this.serverReference)}.`
    return hinted(coded, hint) + moved
  }
}

/**
 * The connection to the broker could not be opened, or it ended: the socket closed or failed, or the broker
 * sent DISCONNECT.
 *
 * `phase` tells the two apart: `"connecting"` for a connection that never reached CONNACK (a wrong host or
 * port, a broker that is down), `"connected"` for one that was up. The message of a failed connection says
 * what to check for the network error it met (`ECONNREFUSED`: the host and port, and that the broker runs;
 * `ENOTFOUND`: the host name...).
 *
 * @since 0.1.0
 * @category errors
 */
export class ConnectionLostError extends Schema.TaggedError<ConnectionLostError>()("ConnectionLostError", {
  /** What happened, in words (for a socket error, its message, such as `connect ECONNREFUSED 127.0.0.1:1`). */
  reason: Schema.String,
  /** MQTT 5: the reason code of the broker's DISCONNECT, when it sent one. */
  reasonCode: optionalNumber,
  /** MQTT 5: the reason string of the broker's DISCONNECT, when it sent one. */
  reasonString: optionalString,
  /** MQTT 5: the other server the broker named (DISCONNECT 0x9C use another server, 0x9D server moved).
   * The client does not follow it by itself. */
  serverReference: optionalString,
  /** The underlying error, such as the Node.js socket error (its `code` is used for the hint). */
  cause: Schema.optionalKey(Schema.Defect()),
  /** The broker, as `scheme://host:port` (`ws://host:port/path` for WebSocket, `unix:///path` for a Unix
   * socket), never with user info or a query string. Absent when the client does not know it (a custom
   * `transport`). */
  broker: optionalString,
  /** `"connecting"`: the connection was never established (no CONNACK); `"connected"`: an established
   * connection ended. Absent when not known. */
  phase: Schema.optionalKey(Schema.Literals(["connecting", "connected"]))
}) {
  /**
   * @since 0.1.0
   */
  readonly [TypeId] = TypeId
  /**
   * `Could not connect to the broker at mqtt://host:port: <reason>` and what to check, for a connection
   * that was never established; `The connection to the broker at mqtt://host:port was lost: <reason>`
   * otherwise.
   *
   * @since 0.1.0
   */
  override get message(): string {
    if (this.phase === "connecting") {
      const reason = this.reason.replace(/^could not connect:\s*/i, "")
      return hinted(`Could not connect to the broker${at(this.broker)}: ${reason}`, networkHint(this.cause, reason))
    }
    return withReason(
      `The connection to the broker${at(this.broker)} was lost: ${this.reason}`,
      this.reasonCode,
      this.reasonString
    )
  }
}

/**
 * An exchange with the broker did not complete in time: `operation` is `"connect"` (no CONNACK within
 * `connectTimeout`), `"ping"` (no PINGRESP within the ping timeout) or `"request"` (no response to `request`
 * within its timeout).
 *
 * Its tag is `"MqttTimeoutError"`, not `"TimeoutError"`: `Effect.catchTag("TimeoutError")` after
 * `Effect.timeout` catches Effect's own `Cause.TimeoutError` only, never the client's timeouts.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { MqttClient } from "effect-mqtt"
 *
 * const add = (client: MqttClient.Client, n: number) =>
 *   client.request("services/add", String(n), { timeout: "5 seconds" }).pipe(
 *     Effect.map((reply) => reply.text),
 *     Effect.catchTag("MqttTimeoutError", (error) => Effect.succeed(`no reply within ${error.millis} ms`))
 *   )
 * ```
 *
 * @since 0.1.0
 * @category errors
 */
export class MqttTimeoutError extends Schema.TaggedError<MqttTimeoutError>()("MqttTimeoutError", {
  /** What timed out: `"connect"` (CONNACK), `"ping"` (PINGRESP) or `"request"` (a response to `request`). */
  operation: Schema.Literals(["connect", "ping", "request"]),
  /** The time limit that passed, in milliseconds. */
  millis: Schema.Number,
  /** The broker, as `scheme://host:port` without user info (see {@link ConnectionLostError.broker}). */
  broker: optionalString
}) {
  /**
   * @since 0.1.0
   */
  readonly [TypeId] = TypeId
  /**
   * Says what did not arrive, from which broker, within how long, and what to check.
   *
   * @since 0.1.0
   */
  override get message(): string {
    switch (this.operation) {
      case "connect":
        return `The broker${at(this.broker)} did not accept the connection within ${this.millis} ms ` +
          `(no CONNACK). Check that the port is an MQTT listener for this scheme (a TLS listener needs ` +
          `mqtts://, a WebSocket one ws://) and that the broker is not overloaded; connectTimeout sets the limit`
      case "ping":
        return `No PINGRESP from the broker${at(this.broker)} within ${this.millis} ms: the connection is ` +
          `considered dead (the network dropped it, or the broker stalled); pingTimeout sets the limit`
      case "request":
        return `No response to the request within ${this.millis} ms: is a responder subscribed to the ` +
          `request topic? A response the broker had for the client while its connection was down is lost with a ` +
          `session that ends with the connection (keep it: cleanStart false and a sessionExpiryInterval). The ` +
          `timeout option sets the limit`
    }
  }
}

/**
 * The former name of {@link MqttTimeoutError}, kept so that code written against it compiles. The class is
 * the same, and so is its tag: `"MqttTimeoutError"` (it was `"TimeoutError"` before, the tag of Effect's own
 * `Cause.TimeoutError`). Match on `"MqttTimeoutError"` in `catchTag`.
 *
 * @deprecated Use {@link MqttTimeoutError}.
 * @since 0.1.0
 * @category errors
 */
export const TimeoutError: typeof MqttTimeoutError = MqttTimeoutError

/**
 * The former name of {@link MqttTimeoutError}.
 *
 * @deprecated Use {@link MqttTimeoutError}.
 * @since 0.1.0
 * @category errors
 */
export type TimeoutError = MqttTimeoutError

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
 * The message says what to check for each kind (for an untrusted certificate: give the broker's certificate
 * authority in `tls.ca` or `tls.caFile`).
 *
 * @since 0.1.0
 * @category errors
 */
export class TlsError extends Schema.TaggedError<TlsError>()("TlsError", {
  /** What failed (see above). */
  kind: Schema.Literals([
    "ServerCertificateUntrusted",
    "HostnameMismatch",
    "ClientCertificateRequired",
    "ClientCertificateRejected",
    "HandshakeFailed"
  ]),
  /** What Node.js or OpenSSL said. */
  reason: Schema.String,
  /** The OpenSSL or Node.js error code when there is one (for example `SELF_SIGNED_CERT_IN_CHAIN`). */
  code: optionalString,
  /** The broker, as `scheme://host:port` without user info (see {@link ConnectionLostError.broker}). */
  broker: optionalString
}) {
  /**
   * @since 0.1.0
   */
  readonly [TypeId] = TypeId
  /**
   * `TLS with the broker at mqtts://host:port failed (<kind>): <reason> [<code>]`, then what to check.
   *
   * @since 0.1.0
   */
  override get message(): string {
    return hinted(tlsFailure(this), tlsHints[this.kind])
  }
}

/**
 * The broker broke the protocol: a malformed packet, a packet a server never sends, an acknowledgement for
 * a packet identifier that is not in flight. The connection is closed when this is raised.
 *
 * @since 0.1.0
 * @category errors
 */
export class ProtocolError extends Schema.TaggedError<ProtocolError>()("ProtocolError", {
  /** What the broker did wrong. */
  reason: Schema.String,
  /** The MQTT 5 reason code the client sent in its DISCONNECT (0x81 malformed packet, 0x82 protocol error, or
   * a more specific one such as 0x93 Receive Maximum exceeded), when it sent one. */
  reasonCode: optionalNumber,
  /** The packet type that broke the rule (`"PUBLISH"`, `"CONNACK"`...), when one did. */
  packet: optionalString,
  /** The normative statement of the specification broken (`"MQTT-3.3.2-2"`), when it has a number. */
  rule: optionalString,
  /** The broker, as `scheme://host:port` without user info (see {@link ConnectionLostError.broker}). */
  broker: optionalString
}) {
  /**
   * @since 0.1.0
   */
  readonly [TypeId] = TypeId
  /**
   * `The broker at mqtt://host:port violated the MQTT protocol: <reason>`.
   *
   * @since 0.1.0
   */
  override get message(): string {
    return `The broker${at(this.broker)} violated the MQTT protocol: ${this.reason}` +
      (this.rule === undefined ? "" : ` [${this.rule}]`)
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
  /** The first filter the broker refused. */
  filter: Schema.String,
  /** Its SUBACK code: 0x80 on MQTT 3.1.1, an MQTT 5 reason code at or above 0x80 (0x87 not authorized...). */
  reasonCode: Schema.Number,
  /** MQTT 5: the broker's human-readable reason, when it sent one. */
  reasonString: optionalString,
  /** The reason code of every filter of the SUBSCRIBE, in order: the broker holds the granted ones. */
  codes: Schema.optionalKey(Schema.Array(Schema.Struct({ filter: Schema.String, reasonCode: Schema.Number })))
}) {
  /**
   * @since 0.1.0
   */
  readonly [TypeId] = TypeId
  /**
   * `The broker refused the subscription to "<filter>" (reason code 0x.., <its name>: <reason string>)`.
   *
   * @since 0.1.0
   */
  override get message(): string {
    return withReason(
      `The broker refused the subscription to "${this.filter}"`,
      this.reasonCode,
      this.reasonString,
      refusalReasons
    )
  }
}

/**
 * The broker refused to remove a subscription (MQTT 5 UNSUBACK reason code at or above 0x80).
 *
 * @since 0.1.0
 * @category errors
 */
export class UnsubscribeError extends Schema.TaggedError<UnsubscribeError>()("UnsubscribeError", {
  /** The first filter the broker refused to unsubscribe. */
  filter: Schema.String,
  /** Its MQTT 5 UNSUBACK reason code (0x80 and above). */
  reasonCode: Schema.Number,
  /** MQTT 5: the broker's human-readable reason, when it sent one. */
  reasonString: optionalString
}) {
  /**
   * @since 0.1.0
   */
  readonly [TypeId] = TypeId
  /**
   * `The broker refused to unsubscribe "<filter>" (reason code 0x.., <its name>: <reason string>)`.
   *
   * @since 0.1.0
   */
  override get message(): string {
    return withReason(
      `The broker refused to unsubscribe "${this.filter}"`,
      this.reasonCode,
      this.reasonString,
      refusalReasons
    )
  }
}

/**
 * The broker refused a QoS 1 or QoS 2 publish (MQTT 5 PUBACK or PUBREC reason code at or above 0x80), or the
 * client refused it before sending because the broker's CONNACK rules it out (Maximum QoS 0x9B, Retain
 * Available 0x9A, Maximum Packet Size 0x95).
 *
 * @since 0.1.0
 * @category errors
 */
export class PublishError extends Schema.TaggedError<PublishError>()("PublishError", {
  /** The topic of the refused publish. */
  topic: Schema.String,
  /** The MQTT 5 reason code (0x80 and above). */
  reasonCode: Schema.Number,
  /** MQTT 5: the broker's human-readable reason, when it sent one. */
  reasonString: optionalString
}) {
  /**
   * @since 0.1.0
   */
  readonly [TypeId] = TypeId
  /**
   * `The broker refused the publish to "<topic>" (reason code 0x.., <its name>: <reason string>)`.
   *
   * @since 0.1.0
   */
  override get message(): string {
    return withReason(
      `The broker refused the publish to "${this.topic}"`,
      this.reasonCode,
      this.reasonString,
      refusalReasons
    )
  }
}

/**
 * The session store (the `store` option: the client's half of a persistent session kept in a `KeyValueStore`)
 * failed. At start (`operation: "load"`): a stored session that cannot be read is never reset silently; the
 * client does not start, and `clearStore: true` discards it. While running (`operation: "write"`): a QoS 1/2
 * publish made while the store cannot be written fails with this error, so that nothing is acknowledged to the
 * application that is not stored; what was already accepted waits until the store is back.
 *
 * @since 0.2.0
 * @category errors
 */
export class StoreError extends Schema.TaggedError<StoreError>()("StoreError", {
  /** Which store: `"file:/path"`, `"redis"`, `"memory"`, or the name a custom store was given. */
  store: Schema.String,
  /** What the client was doing with it. */
  operation: Schema.Literals(["load", "write", "clear"]),
  /** The key that could not be read or written, when there is one. */
  key: optionalString,
  /** What went wrong. */
  reason: Schema.String,
  /** The store's own error. */
  cause: Schema.optionalKey(Schema.Defect())
}) {
  /**
   * @since 0.2.0
   */
  readonly [TypeId] = TypeId
  /**
   * `The session store (<store>) could not <operation> [key "<key>"]: <reason>`, then what to do.
   *
   * @since 0.2.0
   */
  override get message(): string {
    const key = this.key === undefined ? "" : ` key "${this.key}"`
    const hint = this.operation === "load"
      ? "; the stored session is kept: fix the store, or start with clearStore: true to discard it"
      : this.operation === "write"
      ? "; QoS 1/2 publishes fail until it can be written again"
      : ""
    return `The session store (${this.store}) could not ${this.operation}${key}: ${this.reason}${hint}`
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
  /** The operation that could not wait. */
  operation: Schema.Literals(["publish", "subscribe", "unsubscribe", "reauthenticate"]),
  /** Why it could not wait (the buffer is full, the options say to fail). */
  reason: Schema.String
}) {
  /**
   * @since 0.1.0
   */
  readonly [TypeId] = TypeId
  /**
   * `Cannot <operation> while disconnected: <reason>`.
   *
   * @since 0.1.0
   */
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
  /** The invalid topic name or filter, as given. */
  topic: Schema.String,
  /** `"name"` for a topic name (publish), `"filter"` for a topic filter (subscribe). */
  kind: Schema.Literals(["name", "filter"]),
  /** What is wrong with it. */
  reason: Schema.String
}) {
  /**
   * @since 0.1.0
   */
  readonly [TypeId] = TypeId
  /**
   * `Invalid topic <kind> "<topic>": <reason>`, the topic cut at 80 characters and control characters escaped.
   *
   * @since 0.1.0
   */
  override get message(): string {
    return `Invalid topic ${this.kind} "${printable(this.topic)}": ${this.reason}`
  }
}

/**
 * An option given by the caller is not valid (a QoS of 3, a keepalive out of range, a malformed URL, TLS
 * settings with a plaintext URL...). Raised before anything is sent.
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidOptionError extends Schema.TaggedError<InvalidOptionError>()("InvalidOptionError", {
  /** The option, as its path in the options (`"tls"`, `"keepAlive"`) or, for `MqttClient.layerConfig`, the
   * environment variable it came from (`"MQTT_CA_FILE"`). */
  option: Schema.String,
  /** What is wrong with it. */
  reason: Schema.String
}) {
  /**
   * @since 0.1.0
   */
  readonly [TypeId] = TypeId
  /**
   * `Invalid option "<option>": <reason>`.
   *
   * @since 0.1.0
   */
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
  | MqttTimeoutError
  | ProtocolError
  | TlsError
  | SubscribeError
  | UnsubscribeError
  | PublishError
  | OfflineError
  | StoreError
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
 * Whether an error ended the connection ({@link ConnectionLostError}, {@link MqttTimeoutError},
 * {@link ProtocolError} or {@link TlsError}): a new connection is needed to go on.
 *
 * @since 0.1.0
 * @category guards
 */
export const isConnectionError = (
  u: unknown
): u is ConnectionLostError | MqttTimeoutError | ProtocolError | TlsError =>
  isMqttError(u) &&
  (u._tag === "ConnectionLostError" || u._tag === "MqttTimeoutError" || u._tag === "ProtocolError" ||
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

// MQTT 3.1.1 section 3.2.2.3, table 3.1
const v4ConnackReasons: Record<number, string> = {
  1: "unacceptable protocol version",
  2: "identifier rejected",
  3: "server unavailable",
  4: "bad user name or password",
  5: "not authorized"
}

// MQTT 5 section 3.2.2.2
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

/** What to check, by `v<version>:<code>`. */
const connackHints: Record<string, string> = {
  "v4:1": "The broker does not accept MQTT 3.1.1; if it speaks MQTT 5, use protocolVersion: 5",
  "v5:132": "Use protocolVersion: 4 (MQTT 3.1.1)",
  "v4:2": "Check clientId: the broker refused it (too long, characters it does not allow, or an empty one " +
    "with a persistent session)",
  "v5:133": "Check clientId: the broker refused it (too long, characters it does not allow, or an empty one " +
    "with a persistent session)",
  "v4:3": "The broker is up but takes no connections now; the client tries again when it reconnects",
  "v5:136": "The broker is up but takes no connections now; the client tries again when it reconnects",
  "v5:137": "The broker is up but takes no connections now; the client tries again when it reconnects",
  "v4:4":
    "Check username and password (MQTT_USERNAME, MQTT_PASSWORD, the user info of the URL, or what `credentials` returned)",
  "v5:134":
    "Check username and password (MQTT_USERNAME, MQTT_PASSWORD, the user info of the URL, or what `credentials` returned)",
  // Mosquitto 2.0 answers a wrong password with this code, not with the bad-credentials one
  "v4:5":
    "Check username and password (MQTT_USERNAME, MQTT_PASSWORD, the user info of the URL, or what `credentials` returned; some brokers, " +
    "Mosquitto among them, refuse a wrong password with this code), and the broker's access rules for this user " +
    "and client identifier",
  "v5:135":
    "Check username and password (MQTT_USERNAME, MQTT_PASSWORD, the user info of the URL, or what `credentials` returned; some brokers, " +
    "Mosquitto among them, refuse a wrong password with this code), and the broker's access rules for this user " +
    "and client identifier",
  "v5:140": "Check auth.method: the broker does not support it",
  "v5:149": "The CONNECT is larger than the broker accepts: check the size of the will and the user properties",
  "v5:159": "The client connects too often; the reconnect schedule spaces the attempts"
}

const connackKey = (protocolVersion: number, code: number): string => `v${protocolVersion === 5 ? 5 : 4}:${code}`

/** What to check for a Node.js network error met while connecting, by its code. */
const networkHints: Record<string, string> = {
  ECONNREFUSED: "Nothing accepts connections there: check the host and port of the URL, and that the broker is " +
    "running",
  ENOTFOUND: "The host name does not resolve: check the host of the URL",
  EAI_AGAIN: "The host name could not be resolved (DNS did not answer): check the host and the network",
  ETIMEDOUT: "The host did not answer: check the host and port, and firewalls on the way",
  EHOSTUNREACH: "The host cannot be reached: check the address and the network",
  ENETUNREACH: "The network cannot be reached: check the address and the network",
  ECONNRESET: "The broker closed the connection: check that the port speaks MQTT over this scheme (a TLS " +
    "listener needs mqtts://)",
  ENOENT: "There is no socket at that path: check the path of the unix:// URL and that the broker is running",
  EACCES: "Permission denied: check the permissions of the socket file",
  ECONNABORTED: "The connection was aborted: check that the broker is running"
}

const networkHint = (cause: unknown, reason: string): string | undefined => {
  const code = Predicate.hasProperty(cause, "code") && typeof cause.code === "string"
    ? cause.code
    : /\b(E[A-Z_]{3,})\b/.exec(reason)?.[1]
  return code === undefined ? undefined : networkHints[code]
}

const printable = (s: string): string => {
  const shown = s.length > 80 ? s.slice(0, 80) + "…" : s
  // eslint-disable-next-line no-control-regex
  return shown.replace(/[\u0000-\u001f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`)
}
