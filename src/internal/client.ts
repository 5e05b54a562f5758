import * as Arr from "effect/Array"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Random from "effect/Random"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import type * as Socket from "effect/socket/Socket"
import * as Stream from "effect/Stream"
import * as SubscriptionRef from "effect/SubscriptionRef"
import * as MqttPacket from "mqtt-packet"
import { Buffer } from "node:buffer"
import * as Crypto from "node:crypto"
import * as IncomingQueue from "../IncomingQueue.ts"
import type * as MqttClient from "../MqttClient.ts"
import * as MqttError from "../MqttError.ts"
import { MqttMessage, type PublishProperties, type QoS } from "../MqttMessage.ts"
import * as Codec from "./codec.ts"
import { decodePublish, Framer } from "./framer.ts"
import { Inflight, Line } from "./inflight.ts"
import { Outbox } from "./outbox.ts"
import { filterProblem, matches as topicMatches, nameProblem } from "./topic.ts"
import * as Transport from "./transport.ts"

// ---------------------------------------------------------------------------------------------------------
// options
// ---------------------------------------------------------------------------------------------------------

interface Resolved {
  readonly endpoint: Transport.Endpoint
  readonly clientId: string
  readonly protocolVersion: 4 | 5
  readonly keepAlive: number
  readonly pingTimeout: Duration.Duration | undefined
  readonly cleanStart: boolean
  readonly sessionExpiryInterval: number | undefined
  readonly username: string | undefined
  readonly password: Redacted.Redacted<string> | undefined
  readonly will: MqttClient.Will | undefined
  readonly connectTimeout: Duration.Duration
  readonly queue: IncomingQueue.Strategy
  readonly userProperties: ReadonlyArray<readonly [string, string]> | undefined
  readonly reconnect: Schedule.Schedule<unknown, MqttError.MqttError> | undefined
  readonly retryFirstConnect: boolean
  readonly maximumPacketSize: number
  readonly receiveMaximum: number
  readonly topicAliasMaximum: number
  readonly topicAliases: boolean
  readonly maxInflight: number
  readonly responseTopicPrefix: string
  readonly auth: MqttClient.Authentication | undefined
  readonly disconnectReasonCode: number
  readonly disconnectSessionExpiry: number | undefined
  readonly offlineCapacity: number
  readonly offlineOverflow: "fail" | "wait"
  readonly offlineQos0: "buffer" | "fail"
  readonly offlineRequests: "wait" | "fail"
}

/** The largest packet the client accepts unless told otherwise: 32 MiB. */
const DEFAULT_MAXIMUM_PACKET_SIZE = 32 * 1024 * 1024

/**
 * 100 ms doubling up to 30 s, each delay drawn between half and all of it ("equal jitter"): clients that lost
 * the same broker spread their attempts instead of coming back together.
 */
export const defaultReconnect: Schedule.Schedule<Duration.Duration> = Schedule.exponential("100 millis").pipe(
  Schedule.modifyDelay(({ duration }) =>
    Effect.map(Random.next, (r) => Duration.millis(Math.min(Duration.toMillis(duration), 30_000) * (0.5 + r / 2)))
  )
)

const invalid = (option: string, reason: string) => new MqttError.InvalidOptionError({ option, reason })

const isUint = (n: unknown, max: number): n is number =>
  typeof n === "number" && Number.isInteger(n) && n >= 0 && n <= max

const isQoS = (n: unknown): n is QoS => n === 0 || n === 1 || n === 2

const randomClientId = (): string => "effect-mqtt-" + Crypto.randomBytes(8).toString("base64url").slice(0, 10)

const decodeDuration = (option: string, input: Duration.Input | undefined, fallback: Duration.Duration) => {
  if (input === undefined) return Effect.succeed(fallback)
  const decoded = Duration.fromInput(input)
  return decoded._tag === "Some" && Duration.isFinite(decoded.value) && Duration.toMillis(decoded.value) > 0
    ? Effect.succeed(decoded.value)
    : Effect.fail(invalid(option, "expected a positive, finite duration"))
}

const resolveOptions = Effect.fnUntraced(function*(options: MqttClient.Options) {
  const endpoint = yield* Transport.parseUrl(options.url ?? "mqtt://localhost:1883")
  const protocolVersion = options.protocolVersion ?? 4
  if (protocolVersion !== 4 && protocolVersion !== 5) {
    return yield* invalid("protocolVersion", "expected 4 (MQTT 3.1.1) or 5 (MQTT 5.0)")
  }
  const keepAlive = options.keepAlive ?? 60
  if (!isUint(keepAlive, 65535)) return yield* invalid("keepAlive", "expected whole seconds from 0 to 65535")
  const clientId = options.clientId ?? randomClientId()
  if (typeof clientId !== "string" || Buffer.byteLength(clientId) > 65535 || clientId.includes("\u0000")) {
    return yield* invalid("clientId", "expected a string of at most 65,535 UTF-8 bytes without U+0000")
  }
  const cleanStart = options.cleanStart ?? options.cleanSession ?? true
  if (clientId === "" && !cleanStart && protocolVersion === 4) {
    return yield* invalid("clientId", "an empty client identifier needs cleanSession: true in MQTT 3.1.1")
  }
  const sessionExpiryInterval = options.sessionExpiryInterval
  if (sessionExpiryInterval !== undefined && !isUint(sessionExpiryInterval, 0xffffffff)) {
    return yield* invalid("sessionExpiryInterval", "expected whole seconds from 0 to 4294967295")
  }
  const username = options.username ?? endpoint.username
  const password = options.password ??
    (endpoint.password === undefined ? undefined : Redacted.make(endpoint.password))
  const will = options.will
  if (will !== undefined) {
    const problem = nameProblem(will.topic)
    if (problem !== undefined) return yield* invalid("will.topic", problem)
    if (will.qos !== undefined && !isQoS(will.qos)) return yield* invalid("will.qos", "expected 0, 1 or 2")
  }
  const connectTimeout = yield* decodeDuration("connectTimeout", options.connectTimeout, Duration.seconds(30))
  const pingTimeout = options.pingTimeout === undefined
    ? undefined
    : yield* decodeDuration("pingTimeout", options.pingTimeout, Duration.seconds(30))
  const queue = options.queue ?? IncomingQueue.defaultStrategy
  if (queue._tag !== "Unbounded" && !(Number.isInteger(queue.capacity) && queue.capacity > 0)) {
    return yield* invalid("queue", "the capacity must be a positive integer")
  }
  const offline = options.offline ?? {}
  const offlineCapacity = offline.capacity ?? 10_000
  if (!isUint(offlineCapacity, Number.MAX_SAFE_INTEGER)) {
    return yield* invalid("offline.capacity", "expected a whole number of publishes")
  }
  const oneOf = <A extends string>(option: string, value: A | undefined, fallback: A, allowed: ReadonlyArray<A>) =>
    value === undefined
      ? Effect.succeed(fallback)
      : allowed.includes(value)
      ? Effect.succeed(value)
      : Effect.fail(invalid(option, `expected ${allowed.map((a) => `"${a}"`).join(" or ")}`))
  const offlineOverflow = yield* oneOf("offline.overflow", offline.overflow, "fail", ["fail", "wait"])
  const offlineQos0 = yield* oneOf("offline.qos0", offline.qos0, "buffer", ["buffer", "fail"])
  const offlineRequests = yield* oneOf("offline.requests", offline.requests, "wait", ["wait", "fail"])
  const reconnect = options.reconnect === false ? undefined : options.reconnect ?? defaultReconnect
  if (reconnect !== undefined && !Schedule.isSchedule(reconnect)) {
    return yield* invalid("reconnect", "expected a Schedule or false")
  }
  const maximumPacketSize = options.maximumPacketSize ?? DEFAULT_MAXIMUM_PACKET_SIZE
  if (!isUint(maximumPacketSize, 268_435_460) || maximumPacketSize < 16) {
    return yield* invalid("maximumPacketSize", "expected a whole number of bytes from 16 to 268435460")
  }
  const receiveMaximum = options.receiveMaximum ?? 65535
  if (!isUint(receiveMaximum, 65535) || receiveMaximum === 0) {
    return yield* invalid("receiveMaximum", "expected a whole number from 1 to 65535")
  }
  // MQTT 3.1.1 has no Receive Maximum: Mosquitto's default (max_inflight_messages 20) silently drops what a
  // 3.1.1 client sends beyond 20 unacknowledged messages while acknowledging it, so keep to 20 there, as paho does
  const maxInflight = options.maxInflight ?? (protocolVersion === 5 ? 1000 : 20)
  if (!isUint(maxInflight, 65535) || maxInflight === 0) {
    return yield* invalid("maxInflight", "expected a whole number from 1 to 65535")
  }
  const auth = options.auth
  if (auth !== undefined) {
    if (protocolVersion !== 5) return yield* invalid("auth", "enhanced authentication needs MQTT 5")
    if (typeof auth.method !== "string" || auth.method === "") return yield* invalid("auth.method", "expected a name")
    if (typeof auth.onChallenge !== "function") return yield* invalid("auth.onChallenge", "expected a function")
  }
  const responseTopicPrefix = options.responseTopicPrefix ?? "effect-mqtt/responses"
  const prefixProblem = nameProblem(responseTopicPrefix + "/x")
  if (prefixProblem !== undefined) return yield* invalid("responseTopicPrefix", prefixProblem)
  const disconnectReasonCode = options.disconnect?.reasonCode ?? 0
  if (disconnectReasonCode !== 0 && disconnectReasonCode !== 4) {
    return yield* invalid("disconnect.reasonCode", "a client disconnects with 0 (normal) or 4 (send the will)")
  }
  const disconnectSessionExpiry = options.disconnect?.sessionExpiryInterval
  if (disconnectSessionExpiry !== undefined) {
    if (!isUint(disconnectSessionExpiry, 0xffffffff)) {
      return yield* invalid("disconnect.sessionExpiryInterval", "expected whole seconds from 0 to 4294967295")
    }
    if ((options.sessionExpiryInterval ?? 0) === 0 && disconnectSessionExpiry !== 0) {
      return yield* invalid(
        "disconnect.sessionExpiryInterval",
        "a session that expires with its connection cannot be given a later expiry at DISCONNECT [MQTT-3.14.2-2]"
      )
    }
  }
  const topicAliasMaximum = options.topicAliasMaximum ?? (protocolVersion === 5 ? 16 : 0)
  if (!isUint(topicAliasMaximum, 65535)) {
    return yield* invalid("topicAliasMaximum", "expected a whole number from 0 to 65535")
  }
  return {
    reconnect,
    retryFirstConnect: options.retryFirstConnect ?? false,
    maximumPacketSize,
    receiveMaximum,
    topicAliasMaximum,
    topicAliases: options.topicAliases ?? true,
    maxInflight,
    responseTopicPrefix,
    auth,
    disconnectReasonCode,
    disconnectSessionExpiry,
    offlineCapacity,
    offlineOverflow,
    offlineQos0,
    offlineRequests,
    endpoint,
    clientId,
    protocolVersion,
    keepAlive,
    pingTimeout,
    cleanStart,
    sessionExpiryInterval,
    username,
    password,
    will,
    connectTimeout,
    queue,
    userProperties: options.userProperties
  } satisfies Resolved
})

const encodeConnect = (o: Resolved, clientId: string, clean: boolean) =>
  Codec.tryEncode(() =>
    Codec.encodeConnect({
      protocolVersion: o.protocolVersion,
      clientId,
      clean,
      keepAlive: o.keepAlive,
      username: o.username,
      password: o.password === undefined ? undefined : Buffer.from(Redacted.value(o.password)),
      will: o.will === undefined ? undefined : {
        topic: o.will.topic,
        payload: typeof o.will.payload === "string" ? Buffer.from(o.will.payload) : o.will.payload,
        qos: o.will.qos ?? 0,
        retain: o.will.retain ?? false,
        properties: o.will.properties
      },
      sessionExpiryInterval: o.sessionExpiryInterval,
      receiveMaximum: o.receiveMaximum === 65535 ? undefined : o.receiveMaximum,
      maximumPacketSize: o.maximumPacketSize,
      topicAliasMaximum: o.topicAliasMaximum > 0 ? o.topicAliasMaximum : undefined,
      userProperties: o.userProperties,
      authenticationMethod: o.auth?.method,
      authenticationData: o.auth?.data
    })
  )

// ---------------------------------------------------------------------------------------------------------
// the client
// ---------------------------------------------------------------------------------------------------------

/** A QoS 1/2 publish from its call until its acknowledgement, across connections. */
/** A publish as the caller gave it, and its encoding without a topic alias. */
interface Outgoing {
  readonly topic: string
  readonly payload: Uint8Array
  readonly qos: QoS
  readonly retain: boolean
  readonly properties: PublishProperties | undefined
  readonly encoded: Codec.EncodedPublish
}

interface PublishEntry {
  readonly _tag: "Publish"
  readonly id: number
  readonly qos: 1 | 2
  readonly topic: string
  readonly message: Outgoing
  /** "queued": not sent on this connection yet; "sent": PUBLISH sent; "released": PUBREC received, PUBREL sent */
  state: "queued" | "sent" | "released"
  /** sent on an earlier connection of the same session: sent again with DUP */
  dup: boolean
  /** whether the PUBLISH or PUBREL on the current connection holds a unit of the send quota */
  counted: boolean
  /** false while in the send line */
  cancelled: boolean
  /** the waiting caller, once it waits; and the outcome, once known */
  resume: ((result: Effect.Effect<void, MqttError.MqttError>) => void) | undefined
  result: Effect.Effect<void, MqttError.MqttError> | undefined
  /** accepted while disconnected: it holds a place in the offline buffer until a connection takes it */
  offline: boolean
}

/** A subscription whose messages go to a stream of their own, or to a handler. */
interface Route {
  readonly filters: ReadonlyArray<string>
  /** its MQTT 5 subscription identifier (0: match by topic) */
  readonly identifier: number
  readonly queue: IncomingQueue.IncomingQueue<MqttMessage, MqttError.MqttError> | undefined
  readonly handle: ((message: MqttMessage) => void) | undefined
}

/** A SUBSCRIBE or UNSUBSCRIBE waiting for its acknowledgement; sent again after a reconnect. */
interface RequestEntry {
  readonly _tag: "Subscribe" | "Unsubscribe"
  readonly id: number
  readonly bytes: Uint8Array
  readonly filters: ReadonlyArray<MqttPacket.ISubscription>
  /** the MQTT 5 subscription identifier of a SUBSCRIBE (0: none) */
  readonly identifier: number
  /** undefined for the SUBSCRIBE that restores the subscriptions of a lost session */
  readonly deferred: Deferred.Deferred<Acknowledged, MqttError.MqttError> | undefined
}

/** The reason codes of a SUBACK or UNSUBACK, one per filter. */
interface Acknowledged {
  readonly codes: ReadonlyArray<number>
  readonly reasonString: string | undefined
}

/** One network connection: its socket scope, writer, and keepalive state. */
interface Connection {
  readonly scope: Scope.Closeable
  readonly outbox: Outbox
  /** the first error ends the connection */
  readonly lost: Deferred.Deferred<never, MqttError.MqttError>
  /** whether CONNECT asked for a new session */
  readonly cleanStart: boolean
  info: MqttClient.ConnectionInfo | undefined
  /** an MQTT 5 re-authentication in progress */
  reauthentication: Deferred.Deferred<void, MqttError.MqttError> | undefined
  /** MQTT 5 topic aliases of this connection, least recently used first (undefined: none) */
  aliases: Map<string, number> | undefined
  /** the broker's Receive Maximum, and how much of it is in use */
  quota: number
  used: number
  lastSent: number
  lastReceived: number
  pong: Deferred.Deferred<void> | undefined
  /** the reader is waiting for room in the incoming queue, so the socket is not being read */
  stalled: boolean
  stalledDuringPing: boolean
}

/** The step function of the reconnect schedule: its state is the backoff so far. */
type ScheduleStep = (
  now: number,
  input: MqttError.MqttError
) => Effect.Effect<[unknown, Duration.Duration], unknown>

/** How long a connection must last for the reconnect backoff to start again from its first delay. */
const STABLE_CONNECTION_MILLIS = 1_000

/** Subscription identifiers the client gives by itself start here, away from the small ones users pick. */
const AUTOMATIC_IDENTIFIERS_FROM = 200_000_000

/** The fixed-header bytes of the acknowledgements that `onFrame` reads itself. */
const acks: Record<number, "puback" | "pubrec" | "pubrel" | "pubcomp"> = {
  0x40: "puback",
  0x50: "pubrec",
  0x62: "pubrel",
  0x70: "pubcomp"
}

/** Payloads smaller than this are copied out of the socket read, so that they do not keep it alive. */
const COPY_PAYLOADS_BELOW = 16 * 1024

/** Bytes waiting to be written beyond which publishers wait for the socket. */
const OUTBOX_HIGH_WATER_MARK = 256 * 1024
/** How long closing waits for the last bytes to be taken by the socket. */
const SHUTDOWN_WRITE_TIMEOUT = Duration.seconds(2)

const lost = (reason: string, cause?: unknown) =>
  new MqttError.ConnectionLostError(cause === undefined ? { reason } : { reason, cause })

const closedByClient = lost("the client was closed")

const socketLost = (error: Socket.SocketError): MqttError.MqttError => {
  const reason = error.reason
  // the transport explains the failures it recognises (TLS, WebSocket framing) with a typed error as the cause
  if ("cause" in reason && MqttError.isMqttError(reason.cause)) return reason.cause
  switch (reason._tag) {
    case "SocketCloseError":
      return lost(reason.code === 1000 ? "the broker closed the connection" : "the connection was reset")
    case "SocketOpenError":
      return lost(
        reason.kind === "Timeout" ? "the TCP connection timed out" : `could not connect: ${describe(reason.cause)}`,
        reason.cause
      )
    default:
      return lost(`socket error: ${describe(reason.cause)}`, reason.cause)
  }
}

const describe = (cause: unknown): string => cause instanceof Error ? cause.message : String(cause)

/** MQTT 5 DISCONNECT reasons after which reconnecting would do harm or cannot help. */
const finalDisconnects = new Set([
  0x8e, // session taken over: reconnecting would take it back, and the two clients would ping-pong
  0x9d // server moved: the client does not follow a redirect silently
])

/** CONNACK refusals that another attempt will not change (credentials, identifier, protocol, ban). */
const isFinalRefusal = (error: MqttError.ConnectRefusedError): boolean =>
  error.protocolVersion === 5
    ? ![0x88, 0x89, 0x97, 0x9c, 0x9f].includes(error.reasonCode)
    : error.reasonCode !== 3

/** Whether the client should give up after this error instead of reconnecting. */
const isFinal = (error: MqttError.MqttError): boolean =>
  error._tag === "ConnectRefusedError"
    ? isFinalRefusal(error)
    : error._tag === "ConnectionLostError"
    ? error.reasonCode !== undefined && finalDisconnects.has(error.reasonCode)
    : error._tag === "TlsError"
    ? error.kind !== "HandshakeFailed" // a certificate problem does not go away by itself
    : error._tag === "InvalidOptionError"

/**
 * Connects and returns the client.
 *
 * The session (packet identifiers, publishes and requests waiting for acknowledgement, incoming QoS 2
 * identifiers awaiting PUBREL, subscriptions) outlives each connection; a connection only carries it. The
 * protocol state is plain mutable state: the reader fiber of the current connection changes it, and the
 * operations register what they wait for.
 */
export const make = (
  options: MqttClient.Options = {}
): Effect.Effect<MqttClient.Client, MqttError.MqttError, Scope.Scope> =>
  Effect.gen(function*() {
    const o = yield* resolveOptions(options)
    const version = o.protocolVersion
    const scope = yield* Effect.scope
    const clock = yield* Clock.Clock
    const incoming = yield* IncomingQueue.make<MqttMessage, MqttError.MqttError>(o.queue)
    const socket = yield* Transport.makeSocket(o.endpoint, options)
    const writer = yield* socket.writer
    /**
     * The parent of every connection's scope. Made before the finalizer that sends DISCONNECT, so that on
     * release it closes after it: the connection is still open when the DISCONNECT is written.
     */
    const connections = yield* Scope.fork(scope)
    const status = yield* SubscriptionRef.make<MqttClient.ConnectionStatus>({ _tag: "Connecting", attempt: 1 })
    const closedSignal = yield* Deferred.make<void, MqttError.MqttError>()
    /** a persistent session: the broker keeps it between connections, so reconnects resume it */
    const persistent = version === 5 ? (o.sessionExpiryInterval ?? 0) > 0 : !o.cleanStart

    // ---- the session: outlives each connection ---------------------------------------------------------
    const ids = new Inflight()
    const publishes: Array<PublishEntry | undefined> = new Array(65536)
    /** publishes in call order: the order of resending [MQTT-4.4.0-1] */
    const order = new Map<number, PublishEntry>()
    /** publishes waiting for the connection or for send quota, in order */
    let sendLine = new Line<PublishEntry>()
    const requests = new Map<number, RequestEntry>()
    /** incoming QoS 2: 1 delivered and awaiting PUBREL; 2 in the batch being delivered */
    const awaitingRelease = new Uint8Array(65536)
    /** the session's subscriptions, with the identifier of the SUBSCRIBE that made each (0: none) */
    const subscriptions = new Map<string, { readonly filter: MqttPacket.ISubscription; readonly identifier: number }>()
    /**
     * Subscriptions with a stream of their own (`subscription`) or a handler (responses to `request`):
     * a message they match goes to them instead of `messages`.
     */
    const routes: Array<Route> = []
    const route = (
      message: MqttMessage
    ): ReadonlyArray<IncomingQueue.IncomingQueue<MqttMessage, MqttError.MqttError>> | undefined | "handled" => {
      const identifiers = message.properties.subscriptionIdentifiers
      let queues: Array<IncomingQueue.IncomingQueue<MqttMessage, MqttError.MqttError>> | undefined
      let handled = false
      for (const r of routes) {
        // a route with an identifier takes only the copies the broker says match it: another subscription of
        // the client may match the same topic, and its copy (with no or another identifier) is not the route's
        const match = r.identifier > 0
          ? identifiers !== undefined && identifiers.includes(r.identifier)
          : r.filters.some((filter) => topicMatches(message.topic, filter))
        if (!match) continue
        if (r.handle !== undefined) {
          r.handle(message)
          handled = true
        } else if (r.queue !== undefined) {
          ;(queues ??= []).push(r.queue)
        }
      }
      return queues !== undefined ? queues : handled ? "handled" : undefined
    }

    /** QoS 0 publishes accepted while disconnected */
    let offlineQos0: Array<Uint8Array> = []
    /** publishes accepted while disconnected and not sent yet */
    let offlineCount = 0
    /** completed at each connection; callers waiting for one await it */
    let connected = Deferred.makeUnsafe<void, MqttError.MqttError>()
    let conn: Connection | undefined
    let lastInfo: MqttClient.ConnectionInfo | undefined
    let closed: MqttError.MqttError | undefined
    let hasConnected = false
    let clientId = o.clientId
    const metrics = { connects: 0, reconnects: 0, failedAttempts: 0, disconnectedMillis: 0, longestDisconnectMillis: 0 }

    const protocolError = (reason: string, reasonCode = 0x82) =>
      new MqttError.ProtocolError(version === 5 ? { reason, reasonCode } : { reason })

    /**
     * Operations completed by the packets of one socket read, completed together once the read's messages
     * are queued (see `deliver`).
     */
    const completions: Array<[Deferred.Deferred<any, MqttError.MqttError>, Effect.Effect<any, MqttError.MqttError>]> =
      []
    /** Publishes completed by one socket read, likewise. */
    const completedPublishes: Array<PublishEntry> = []
    const runCompletions = () => {
      if (completedPublishes.length > 0) {
        const done = completedPublishes.splice(0)
        for (let i = 0; i < done.length; i++) completePublish(done[i])
      }
      if (completions.length === 0) return
      const done = completions.splice(0)
      for (const [deferred, result] of done) Deferred.doneUnsafe(deferred, result)
    }
    const completePublish = (entry: PublishEntry) => {
      const result = entry.result!
      const resume = entry.resume
      entry.resume = undefined
      resume?.(result)
    }

    // ---- sending ----------------------------------------------------------------------------------------

    /** Sends what the send line holds while the broker's Receive Maximum allows. */
    const pump = (c: Connection) => {
      while (sendLine.size > 0 && c.used < c.quota) {
        const entry = sendLine.shift()!
        if (publishes[entry.id] !== entry) continue
        transmit(c, entry)
      }
    }

    const transmit = (c: Connection, entry: PublishEntry) => {
      c.used++
      entry.counted = true
      if (entry.state === "released") {
        c.outbox.push(Codec.pubrel(entry.id))
      } else {
        c.outbox.push(wire(c, entry.message, entry.id, entry.dup))
        entry.state = "sent"
      }
    }

    /**
     * The bytes of a PUBLISH on connection `c`. In MQTT 5, topics get aliases within the broker's Topic Alias
     * Maximum, the least recently used replaced; aliases belong to one connection, so a resend on the next
     * connection carries its full topic again.
     */
    const wire = (c: Connection, m: Outgoing, id: number, dup: boolean): Uint8Array => {
      const aliases = c.aliases
      if (aliases === undefined || m.topic.length < 3) {
        if (m.qos === 0) return m.encoded.bytes
        // a resend is a copy: the first bytes may still sit in the socket's buffer
        return dup
          ? Codec.setPublishId({ ...m.encoded, bytes: Buffer.from(m.encoded.bytes) }, id, true)
          : Codec.setPublishId(m.encoded, id)
      }
      let alias = aliases.get(m.topic)
      const known = alias !== undefined
      if (alias !== undefined) {
        aliases.delete(m.topic)
      } else if (aliases.size < c.info!.topicAliasMaximum) {
        alias = aliases.size + 1
      } else {
        const [oldest, reused] = aliases.entries().next().value!
        aliases.delete(oldest)
        alias = reused
      }
      aliases.set(m.topic, alias)
      const encoded = Codec.encodePublish(version, m.topic, m.payload, m.qos, m.retain, m.properties, {
        alias,
        omitTopic: known
      })
      return m.qos === 0 ? encoded.bytes : Codec.setPublishId(encoded, id, dup)
    }

    /** Ends a publish: frees its identifier and quota, completes its caller. */
    const settlePublish = (entry: PublishEntry, result: Effect.Effect<void, MqttError.MqttError>) => {
      publishes[entry.id] = undefined
      order.delete(entry.id)
      sendLine.cancel(entry)
      ids.release(entry.id, false)
      if (entry.counted && conn !== undefined) {
        conn.used--
        pump(conn)
      }
      entry.counted = false
      entry.result = result
      completedPublishes.push(entry)
    }

    const settleRequest = (entry: RequestEntry, result: Effect.Effect<Acknowledged, MqttError.MqttError>) => {
      requests.delete(entry.id)
      ids.release(entry.id, false)
      if (entry.deferred !== undefined) completions.push([entry.deferred, result])
    }

    // ---- ending -----------------------------------------------------------------------------------------

    /**
     * Stops the client for good: every waiting operation fails with `error`, the messages stream fails with
     * it (or ends, when the client itself closes), and the connection is closed, after a DISCONNECT when
     * `disconnectReason` is given.
     */
    const shutdown = (
      error: MqttError.MqttError,
      disconnectReason?: number,
      sessionExpiry?: number
    ): Effect.Effect<void> =>
      Effect.suspend(() => {
        if (closed !== undefined) return Effect.void
        closed = error
        const failure = Effect.fail(error)
        for (const entry of order.values()) {
          publishes[entry.id] = undefined
          entry.result = failure
          completePublish(entry)
        }
        order.clear()
        for (const entry of requests.values()) {
          if (entry.deferred !== undefined) Deferred.doneUnsafe(entry.deferred, failure)
        }
        requests.clear()
        ids.failWaiters(error)
        for (const r of routes) {
          if (r.queue !== undefined) {
            Effect.runFork(error === closedByClient ? r.queue.end : r.queue.fail(error))
          }
        }
        for (const waiting of responses.values()) Deferred.doneUnsafe(waiting, failure)
        responses.clear()
        Deferred.doneUnsafe(connected, failure)
        const c = conn
        conn = undefined
        const goodbye = c === undefined ? Effect.void : closeConnection(c, error, disconnectReason, sessionExpiry)
        return goodbye.pipe(
          Effect.andThen(error === closedByClient ? incoming.end : incoming.fail(error)),
          Effect.andThen(
            SubscriptionRef.set(status, { _tag: "Closed", cause: error === closedByClient ? undefined : error })
          ),
          Effect.andThen(
            error === closedByClient ? Deferred.done(closedSignal, Exit.void) : Deferred.fail(closedSignal, error)
          )
        )
      })

    /** Writes what is still queued (and a DISCONNECT), then closes the socket and the connection's fibers. */
    const closeConnection = (
      c: Connection,
      error: MqttError.MqttError,
      disconnectReason?: number,
      sessionExpiry?: number
    ) =>
      Effect.suspend(() => {
        if (c.pong !== undefined) Deferred.doneUnsafe(c.pong, Effect.void)
        const rest: Array<Uint8Array> = [...c.outbox.close(error)]
        if (disconnectReason !== undefined) rest.push(Codec.disconnect(version, disconnectReason, sessionExpiry))
        const goodbye = Arr.isArrayNonEmpty(rest)
          ? writer.writeAll(rest).pipe(Effect.timeoutOption(SHUTDOWN_WRITE_TIMEOUT), Effect.ignore)
          : Effect.void
        Deferred.doneUnsafe(c.lost, Effect.fail(error))
        return Effect.andThen(goodbye, Scope.close(c.scope, Exit.void))
      })

    /** The connection ended and the client goes on: the session waits for the next connection. */
    const detach = (c: Connection, error: MqttError.MqttError) =>
      Effect.suspend(() => {
        if (conn === c) conn = undefined
        connected = Deferred.makeUnsafe()
        for (const entry of order.values()) {
          if (entry.state !== "queued") entry.dup = true
          entry.counted = false
        }
        if (o.offlineRequests === "fail") {
          // a SUBSCRIBE or UNSUBSCRIBE whose acknowledgement was lost with the connection is not sent again
          for (const entry of requests.values()) {
            if (entry.deferred === undefined) continue
            requests.delete(entry.id)
            ids.release(entry.id, false)
            Deferred.doneUnsafe(entry.deferred, Effect.fail(error))
          }
        }
        return closeConnection(c, error, error._tag === "ProtocolError" ? error.reasonCode : undefined)
      })

    // ---- receiving --------------------------------------------------------------------------------------

    /** The state of reading one connection: the parser and what one batch of packets produced. */
    const makeReader = (c: Connection) => {
      const framer = new Framer(o.maximumPacketSize)
      // mqtt-packet is given one whole packet at a time: its length checks then do not depend on how the
      // bytes were split into reads
      const parser = MqttPacket.parser({ protocolVersion: version })
      const packets: Array<MqttPacket.Packet> = []
      let parseError: Error | undefined
      parser.on("packet", (packet: MqttPacket.Packet) => packets.push(packet))
      parser.on("error", (error: Error) => {
        parseError ??= error
      })
      /** acknowledgements that do not depend on delivery (PUBREL, PUBCOMP): written at once */
      const acksNow = new Codec.AckBuffer()
      let delivered: Array<MqttMessage> = []
      /** per delivered message: its packet identifier and the acknowledgement it is owed (0 for QoS 0) */
      let owed: Array<number> = []
      /** per delivered message: the subscription streams it goes to, or undefined for `messages` */
      let targets: Array<ReadonlyArray<IncomingQueue.IncomingQueue<MqttMessage, MqttError.MqttError>> | undefined> = []
      let routed = false
      /** acknowledgements owed to duplicates of messages in this batch: written after the batch */
      const acksLater = new Codec.AckBuffer()
      let fatal: MqttError.MqttError | undefined
      let connack: MqttPacket.IConnackPacket | undefined

      const fail = (error: MqttError.MqttError) => {
        fatal ??= error
      }

      const reasonOf = (packet: { readonly properties?: { readonly reasonString?: string } }) =>
        packet.properties?.reasonString

      const publishEntry = (id: number, packet: string): PublishEntry | undefined => {
        const entry = id > 0 ? publishes[id] : undefined
        if (entry === undefined) fail(protocolError(`a ${packet} for packet ${id}, which is not in flight`))
        return entry
      }

      /** incoming QoS 1/2 publishes not yet acknowledged on this connection: our Receive Maximum bounds them */
      const inbound = new Uint8Array(65536)
      let inboundCount = 0
      const releaseInbound = (id: number) => {
        if (inbound[id] === 1) {
          inbound[id] = 0
          inboundCount--
        }
      }
      /** topic aliases the broker set on this connection */
      const aliases: Array<string | undefined> = []

      const onPublish = (header: number, body: Buffer) => {
        const decoded = decodePublish(header, body, version, COPY_PAYLOADS_BELOW)
        if ("error" in decoded) return fail(protocolError(decoded.error, decoded.reasonCode))
        let topic = decoded.topic
        const alias = decoded.topicAlias
        if (alias !== undefined) {
          if (alias === 0 || alias > o.topicAliasMaximum) {
            return fail(protocolError(`topic alias ${alias}, outside 1 to ${o.topicAliasMaximum}`, 0x94))
          }
          if (topic === "") {
            const known = aliases[alias]
            if (known === undefined) return fail(protocolError(`topic alias ${alias}, which was never set`))
            topic = known
          } else {
            aliases[alias] = topic
          }
        }
        if (topic === "" || topic.includes("+") || topic.includes("#")) {
          return fail(protocolError(`a PUBLISH with an invalid topic name "${topic}"`))
        }
        const qos = decoded.qos
        const id = decoded.id
        if (qos > 0 && inbound[id] === 0) {
          // MQTT 3.1.1 has no Receive Maximum to announce, so there is nothing for the broker to exceed
          if (inboundCount >= o.receiveMaximum && version === 5) {
            return fail(protocolError(`more than ${o.receiveMaximum} unacknowledged publishes (Receive Maximum)`, 0x93))
          }
          inbound[id] = 1
          inboundCount++
        }
        if (qos === 2) {
          if (awaitingRelease[id] !== 0) {
            // a resend of a message already delivered (or in this batch): acknowledge, do not deliver
            if (awaitingRelease[id] === 1) acksNow.push(Codec.PUBREC, id)
            else acksLater.push(Codec.PUBREC, id)
            return
          }
          awaitingRelease[id] = 2
        }
        const message = new MqttMessage(topic, decoded.payload, qos, decoded.retain, decoded.dup, decoded.properties)
        const ack = qos === 0 ? 0 : qos === 1 ? (Codec.PUBACK << 16) | id : (Codec.PUBREC << 16) | id
        const queues = routes.length === 0 ? undefined : route(message)
        if (queues === "handled") {
          // taken by a handler at once (responses to requests)
          acknowledgeOne(ack)
          return
        }
        if (queues !== undefined) routed = true
        delivered.push(message)
        owed.push(ack)
        targets.push(queues)
      }

      /** AUTH packets waiting for the `auth.onChallenge` handler (it is effectful: run after the read). */
      let challenges: Array<MqttPacket.IAuthPacket> = []

      const onAuth = (packet: MqttPacket.IAuthPacket) => {
        const auth = o.auth
        if (auth === undefined) return fail(protocolError("an AUTH packet, but the client asked for no authentication"))
        if (packet.properties?.authenticationMethod !== auth.method) {
          return fail(protocolError(`an AUTH for method "${packet.properties?.authenticationMethod}"`))
        }
        const code = packet.reasonCode ?? 0
        if (code === 0x18) return void challenges.push(packet)
        if (code === 0x00 && connack !== undefined && c.reauthentication !== undefined) {
          // re-authentication succeeded
          const done = c.reauthentication
          c.reauthentication = undefined
          completions.push([done, Effect.void])
          return
        }
        return fail(protocolError(`an AUTH with reason code 0x${code.toString(16)}`))
      }

      /** Answers a challenge with what the handler computes. */
      const answer = (packet: MqttPacket.IAuthPacket): Effect.Effect<void, MqttError.MqttError> =>
        Effect.flatMap(
          o.auth!.onChallenge({
            data: packet.properties?.authenticationData,
            reasonString: packet.properties?.reasonString
          }),
          (data) =>
            Effect.sync(() => {
              const bytes = Codec.generate({
                cmd: "auth",
                reasonCode: 0x18,
                properties: {
                  authenticationMethod: o.auth!.method,
                  ...(data === undefined ? {} : { authenticationData: Buffer.from(data) })
                }
              }, version)
              if (bytes instanceof Uint8Array) c.outbox.push(bytes)
              else fail(invalid("auth", bytes.error))
            })
        )

      /** Handles one complete packet: PUBLISH decoded here, the rest by mqtt-packet. */
      const onFrame = (header: number, body: Buffer, packet: Buffer) => {
        if (fatal !== undefined) return
        if (header >> 4 === 3) {
          if (connack === undefined) return fail(protocolError("a PUBLISH before CONNACK"))
          return onPublish(header, body)
        }
        const ack = body.length === 2 ? acks[header] : undefined
        if (ack !== undefined) {
          // the common acknowledgements (no reason code) skip mqtt-packet: a few bytes to read
          if (connack === undefined) return fail(protocolError(`a ${ack.toUpperCase()} before CONNACK`))
          return onPacket({ cmd: ack, messageId: (body[0] << 8) | body[1] } as MqttPacket.Packet)
        }
        parser.parse(packet)
        if (parseError !== undefined) return fail(protocolError(`malformed packet: ${parseError.message}`, 0x81))
        for (let i = 0; i < packets.length && fatal === undefined; i++) onPacket(packets[i])
        packets.length = 0
      }

      const onConnack = (packet: MqttPacket.IConnackPacket) => {
        if (connack !== undefined) return fail(protocolError("a second CONNACK"))
        connack = packet
        const code = (version === 5 ? packet.reasonCode : packet.returnCode) ?? 0
        if (code !== 0) {
          return fail(
            new MqttError.ConnectRefusedError({
              reasonCode: code,
              protocolVersion: version,
              ...optionalReason(packet.properties?.reasonString)
            })
          )
        }
        if (packet.sessionPresent && c.cleanStart) {
          // the client asked for a new session and holds no state for an old one [MQTT-3.2.2-4]
          return fail(protocolError("Session Present in answer to a CONNECT with Clean Start"))
        }
        const props = packet.properties ?? {}
        // a client identifier the broker assigned is the session's: later connections present it
        if (props.assignedClientIdentifier !== undefined) clientId = props.assignedClientIdentifier
        c.info = {
          protocolVersion: version,
          clientId,
          sessionPresent: packet.sessionPresent,
          keepAlive: props.serverKeepAlive ?? o.keepAlive,
          receiveMaximum: props.receiveMaximum ?? 65535,
          maximumQoS: (props.maximumQoS ?? 2) as QoS,
          retainAvailable: props.retainAvailable ?? true,
          maximumPacketSize: props.maximumPacketSize,
          topicAliasMaximum: props.topicAliasMaximum ?? 0,
          sessionExpiryInterval: props.sessionExpiryInterval ?? o.sessionExpiryInterval,
          reasonString: props.reasonString,
          userProperties: Codec.fromPacketUserProperties(props.userProperties) ?? [],
          wildcardSubscriptionAvailable: props.wildcardSubscriptionAvailable ?? true,
          subscriptionIdentifiersAvailable: props.subscriptionIdentifiersAvailable ?? true,
          sharedSubscriptionAvailable: props.sharedSubscriptionAvailable ?? true,
          responseInformation: props.responseInformation,
          serverReference: props.serverReference
        }
        // the broker's Receive Maximum, and the client's own cap: a broker with thousands of messages in
        // flight for one client slows down for all of them (Mosquitto scans its in-flight list per packet)
        c.quota = Math.min(c.info.receiveMaximum, o.maxInflight)
        if (o.topicAliases && c.info.topicAliasMaximum > 0) c.aliases = new Map()
        resume(c, packet.sessionPresent)
      }

      const onPacket = (packet: MqttPacket.Packet): void => {
        if (connack === undefined && packet.cmd !== "connack" && packet.cmd !== "auth") {
          return fail(protocolError(`a ${packet.cmd.toUpperCase()} before CONNACK`))
        }
        switch (packet.cmd) {
          case "puback": {
            const id = packet.messageId ?? -1
            const entry = publishEntry(id, "PUBACK")
            if (entry === undefined) return
            if (entry.qos !== 1) return fail(protocolError(`a PUBACK for the QoS 2 publish ${id}`))
            const code = packet.reasonCode ?? 0
            return settlePublish(
              entry,
              code >= 0x80
                ? Effect.fail(
                  new MqttError.PublishError({
                    topic: entry.topic,
                    reasonCode: code,
                    ...optionalReason(reasonOf(packet))
                  })
                )
                : Effect.void
            )
          }
          case "pubrec": {
            const id = packet.messageId ?? -1
            const entry = publishEntry(id, "PUBREC")
            if (entry === undefined) return
            if (entry.qos !== 2) return fail(protocolError(`a PUBREC for the QoS 1 publish ${id}`))
            const code = packet.reasonCode ?? 0
            if (code >= 0x80) {
              return settlePublish(
                entry,
                Effect.fail(
                  new MqttError.PublishError({
                    topic: entry.topic,
                    reasonCode: code,
                    ...optionalReason(reasonOf(packet))
                  })
                )
              )
            }
            // a repeated PUBREC (after PUBREL was sent) is answered again [MQTT-4.3.3]
            entry.state = "released"
            acksNow.push(Codec.PUBREL, id)
            return
          }
          case "pubcomp": {
            const id = packet.messageId ?? -1
            const entry = publishEntry(id, "PUBCOMP")
            if (entry === undefined) return
            if (entry.state !== "released") {
              return fail(protocolError(`a PUBCOMP for packet ${id} before its PUBREC`))
            }
            return settlePublish(entry, Effect.void)
          }
          case "pubrel": {
            const id = packet.messageId ?? 0
            // an unknown identifier is answered too: our PUBCOMP may have been lost [MQTT-4.3.3]
            if (version === 5 && awaitingRelease[id] === 0) acksNow.pushWithReason(Codec.PUBCOMP, id, 0x92)
            else acksNow.push(Codec.PUBCOMP, id)
            if (awaitingRelease[id] === 1) awaitingRelease[id] = 0
            releaseInbound(id)
            return
          }
          case "suback":
          case "unsuback": {
            const id = packet.messageId ?? -1
            const tag = packet.cmd === "suback" ? "Subscribe" : "Unsubscribe"
            const entry = id > 0 ? requests.get(id) : undefined
            if (entry === undefined || entry._tag !== tag) {
              return fail(protocolError(`a ${packet.cmd.toUpperCase()} for packet ${id}, which is not in flight`))
            }
            const codes = packet.cmd === "suback"
              ? (packet.granted as Array<number>)
              : version === 5
              ? ((packet as { granted?: Array<number> }).granted ?? [])
              : new Array<number>(entry.filters.length).fill(0)
            if (codes.length !== entry.filters.length) {
              return fail(
                protocolError(
                  `a ${packet.cmd.toUpperCase()} with ${codes.length} codes for ${entry.filters.length} filters`
                )
              )
            }
            // the subscriptions the session holds, to restore them if the broker loses it
            entry.filters.forEach((filter, i) => {
              if (codes[i] >= 0x80) return
              if (tag === "Subscribe") subscriptions.set(filter.topic, { filter, identifier: entry.identifier })
              else subscriptions.delete(filter.topic)
            })
            return settleRequest(entry, Effect.succeed({ codes, reasonString: reasonOf(packet) }))
          }
          case "pingresp":
            if (c.pong !== undefined) Deferred.doneUnsafe(c.pong, Effect.void)
            return
          case "connack":
            return onConnack(packet)
          case "auth":
            return onAuth(packet)
          case "disconnect": {
            const code = packet.reasonCode ?? 0
            return fail(
              new MqttError.ConnectionLostError({
                reason: "the broker sent DISCONNECT",
                reasonCode: code,
                ...optionalReason(packet.properties?.reasonString),
                ...(packet.properties?.serverReference === undefined
                  ? {}
                  : { serverReference: packet.properties.serverReference })
              })
            )
          }
          default:
            // PUBLISH never gets here (see onFrame); CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, AUTH do
            return fail(protocolError(`a ${packet.cmd.toUpperCase()} packet, which a server never sends`))
        }
      }

      /** Hands a batch of messages to the queues, then acknowledges what they took. */
      const deliver = (
        messages: Array<MqttMessage>,
        acks: Array<number>,
        to: Array<ReadonlyArray<IncomingQueue.IncomingQueue<MqttMessage, MqttError.MqttError>> | undefined>,
        anyRouted: boolean
      ): Effect.Effect<void> => {
        if (anyRouted) return deliverRouted(messages, acks, to)
        const progress = { accepted: 0 }
        // what fits goes in at once; the operations the same read completed return only after that, so
        // that a message that arrived before an acknowledgement is queued when the operation returns
        incoming.offerAllUnsafe(messages, progress)
        runCompletions()
        if (progress.accepted === messages.length) {
          acknowledge(acks, (i) => i < progress.accepted)
          return Effect.void
        }
        c.stalled = true
        c.stalledDuringPing = true
        return Effect.ensuring(
          incoming.offerAll(messages.slice(progress.accepted), progress),
          Effect.sync(() => {
            c.stalled = false
            acknowledge(acks, (i) => i < progress.accepted)
          })
        )
      }

      /** `deliver` when some messages go to subscription streams: each queue takes its messages in order. */
      const deliverRouted = (
        messages: Array<MqttMessage>,
        acks: Array<number>,
        to: Array<ReadonlyArray<IncomingQueue.IncomingQueue<MqttMessage, MqttError.MqttError>> | undefined>
      ): Effect.Effect<void> => {
        const batches = new Map<
          IncomingQueue.IncomingQueue<MqttMessage, MqttError.MqttError>,
          {
            readonly messages: Array<MqttMessage>
            readonly indices: Array<number>
            readonly progress: { accepted: number }
          }
        >()
        for (let i = 0; i < messages.length; i++) {
          for (const queue of to[i] ?? [incoming]) {
            let batch = batches.get(queue)
            if (batch === undefined) {
              batches.set(queue, batch = { messages: [], indices: [], progress: { accepted: 0 } })
            }
            batch.messages.push(messages[i])
            batch.indices.push(i)
          }
        }
        for (const [queue, batch] of batches) queue.offerAllUnsafe(batch.messages, batch.progress)
        runCompletions()
        // a message is taken when every queue it goes to took it
        const taken = (i: number) => {
          for (const [, batch] of batches) {
            const at = batch.indices.indexOf(i)
            if (at >= 0 && at >= batch.progress.accepted) return false
          }
          return true
        }
        const rest = [...batches].filter(([, batch]) => batch.progress.accepted < batch.messages.length)
        if (rest.length === 0) {
          acknowledge(acks, () => true)
          return Effect.void
        }
        c.stalled = true
        c.stalledDuringPing = true
        return Effect.ensuring(
          Effect.forEach(
            rest,
            ([queue, batch]) => queue.offerAll(batch.messages.slice(batch.progress.accepted), batch.progress),
            { discard: true }
          ),
          Effect.sync(() => {
            c.stalled = false
            acknowledge(acks, taken)
          })
        )
      }

      /** Acknowledges a message taken at once. */
      const acknowledgeOne = (ack: number) => {
        if (ack === 0) return
        const type = ack >>> 16
        const id = ack & 0xffff
        if (type === Codec.PUBREC) awaitingRelease[id] = 1
        else releaseInbound(id)
        acksNow.push(type, id)
      }

      /**
       * Acknowledges the messages the queues took. The others were never delivered: a resent QoS 2 copy of
       * one of them must be delivered, so it is not remembered as awaiting PUBREL.
       */
      const acknowledge = (acks: Array<number>, accepted: (index: number) => boolean) => {
        const out = new Codec.AckBuffer()
        for (let i = 0; i < acks.length; i++) {
          const ack = acks[i]
          if (ack === 0) continue
          const type = ack >>> 16
          const id = ack & 0xffff
          if (accepted(i)) {
            if (type === Codec.PUBREC) awaitingRelease[id] = 1
            else releaseInbound(id)
            out.push(type, id)
          } else if (type === Codec.PUBREC) {
            awaitingRelease[id] = 0
          }
        }
        if (!out.isEmpty && !c.outbox.isClosed) c.outbox.push(out.take())
      }

      /** Reads one batch from the socket and handles every packet in it. */
      const step = (pull: Effect.Effect<Arr.NonEmptyReadonlyArray<Uint8Array | string>, Socket.SocketError>) =>
        Effect.flatMap(
          Effect.mapError(pull, socketLost),
          (chunks): Effect.Effect<void, MqttError.MqttError> => {
            c.lastReceived = clock.currentTimeMillisUnsafe()
            // mqtt-packet parses synchronously and may throw on input it does not expect: whatever the
            // broker sends, it becomes a typed protocol error, never a defect
            try {
              for (let i = 0; i < chunks.length && fatal === undefined; i++) {
                const error = framer.push(toBuffer(chunks[i]), onFrame)
                if (error !== undefined) fail(protocolError(error.reason, error.reasonCode))
              }
            } catch (e) {
              fail(protocolError(`malformed packet: ${describe(e)}`, 0x81))
            }
            packets.length = 0
            if (!acksNow.isEmpty) c.outbox.push(acksNow.take())
            let effect: Effect.Effect<void, MqttError.MqttError> = Effect.void
            if (delivered.length > 0) {
              effect = deliver(delivered, owed, targets, routed)
              delivered = []
              owed = []
              targets = []
              routed = false
            } else {
              runCompletions()
            }
            if (!acksLater.isEmpty) {
              const later = acksLater.take()
              effect = Effect.andThen(effect, Effect.sync(() => c.outbox.push(later)))
            }
            if (challenges.length > 0 && fatal === undefined) {
              const pending = challenges
              challenges = []
              for (const challenge of pending) effect = Effect.andThen(effect, answer(challenge))
            }
            if (fatal !== undefined) {
              const error = fatal
              effect = Effect.andThen(effect, Effect.fail(error))
            }
            return effect
          }
        )

      return { step, connected: () => connack !== undefined && fatal === undefined }
    }

    /**
     * The CONNACK accepted a connection: carry the session over to it. Runs synchronously in the reader, so
     * that what the same socket read brings after the CONNACK sees the session as the broker does.
     */
    const resume = (c: Connection, sessionPresent: boolean) => {
      c.used = 0
      if (!sessionPresent) {
        // the broker has no session: discard ours [MQTT-3.2.2-5], keeping what the application waits for
        awaitingRelease.fill(0)
        for (const entry of order.values()) {
          if (entry.state === "released") {
            // PUBREC: the broker took the message over before it lost the session
            settlePublish(entry, Effect.void)
          } else {
            entry.state = "queued"
            entry.dup = false
          }
        }
        // one SUBSCRIBE per subscription identifier, so that messages keep telling which subscription they match
        const groups = new Map<number, Array<MqttPacket.ISubscription>>()
        for (const { filter, identifier } of subscriptions.values()) {
          const group = groups.get(identifier)
          if (group === undefined) groups.set(identifier, [filter])
          else group.push(filter)
        }
        for (const [identifier, filters] of groups) {
          const id = ids.tryAcquire(false)
          if (id === 0) break
          const bytes = Codec.tryEncode(() => Codec.encodeSubscribe(version, id, filters, identifier, undefined))
          if (bytes instanceof Uint8Array) {
            requests.set(id, { _tag: "Subscribe", id, bytes, filters, identifier, deferred: undefined })
          } else {
            ids.release(id, false)
          }
        }
      }
      // SUBSCRIBE/UNSUBSCRIBE still waiting, then the publishes in their original order
      for (const entry of requests.values()) c.outbox.push(entry.bytes)
      sendLine = new Line()
      for (const entry of order.values()) sendLine.push(entry)
      pump(c)
      for (const bytes of offlineQos0) c.outbox.push(bytes)
      offlineQos0 = []
      offlineCount = 0
      for (const entry of order.values()) entry.offline = false
    }

    // ---- connecting -------------------------------------------------------------------------------------

    /**
     * Opens a connection, sends CONNECT and waits for CONNACK, then runs the reader, the writer and the
     * keepalive in the connection's scope. Succeeds with the connection once it carries the session.
     */
    const connect = (first: boolean): Effect.Effect<Connection, MqttError.MqttError> =>
      Effect.gen(function*() {
        const connectionScope = yield* Scope.fork(connections)
        const cleanStart = first ? o.cleanStart : !persistent && o.cleanStart
        const connectBytes = encodeConnect(o, clientId, cleanStart)
        if (!(connectBytes instanceof Uint8Array)) {
          yield* Scope.close(connectionScope, Exit.void)
          return yield* invalid("connect", connectBytes.error)
        }
        const c: Connection = {
          scope: connectionScope,
          outbox: new Outbox(OUTBOX_HIGH_WATER_MARK, () => {
            c.lastSent = clock.currentTimeMillisUnsafe()
          }),
          lost: Deferred.makeUnsafe(),
          cleanStart,
          info: undefined,
          reauthentication: undefined,
          aliases: undefined,
          quota: 65535,
          used: 0,
          lastSent: clock.currentTimeMillisUnsafe(),
          lastReceived: clock.currentTimeMillisUnsafe(),
          pong: undefined,
          stalled: false,
          stalledDuringPing: false
        }
        const timeout = new MqttError.TimeoutError({
          operation: "connect",
          millis: Duration.toMillis(o.connectTimeout)
        })
        const reader = makeReader(c)
        const handshake = Effect.gen(function*() {
          const { pull } = yield* Scope.provide(socket.reader, connectionScope).pipe(
            Effect.mapError(socketLost)
          )
          yield* Effect.mapError(writer.write(connectBytes), socketLost)
          c.lastSent = clock.currentTimeMillisUnsafe()
          // the writer starts now: what the CONNACK's handling queues (resends) goes out after CONNECT
          yield* Effect.forkIn(
            guard(
              c,
              Effect.forever(Effect.flatMap(c.outbox.take, (batch) =>
                // empty only when the connection closed between the wake-up and the take
                Arr.isArrayNonEmpty(batch as Array<Uint8Array>)
                  ? Effect.map(
                    Effect.mapError(writer.writeAll(batch as Arr.NonEmptyReadonlyArray<Uint8Array>), socketLost),
                    () => c.outbox.written()
                  )
                  : Effect.void))
            ),
            connectionScope
          )
          while (!reader.connected()) yield* reader.step(pull)
          return pull
        })
        const pull = yield* handshake.pipe(
          Effect.timeoutOrElse({ duration: o.connectTimeout, orElse: () => Effect.fail(timeout) }),
          Effect.tapError((error) =>
            closeConnection(c, error, error._tag === "ProtocolError" ? error.reasonCode : undefined)
          )
        )
        yield* Effect.forkIn(guard(c, Effect.forever(reader.step(pull))), connectionScope)
        const keepAlive = c.info!.keepAlive
        if (keepAlive > 0) yield* Effect.forkIn(guard(c, pinger(c, keepAlive)), connectionScope)
        return c
      })

    /** Runs a loop of the connection: its first failure, or a defect (a bug of this client), ends it. */
    const guard = (c: Connection, loop: Effect.Effect<unknown, MqttError.MqttError>): Effect.Effect<void> =>
      Effect.catchCause(loop, (cause) => {
        if (Cause.hasInterruptsOnly(cause)) return Effect.void
        const failure = cause.reasons.find(Cause.isFailReason)
        const error = failure !== undefined
          ? failure.error
          : lost(`internal error: ${Cause.pretty(cause)}`, Cause.squash(cause))
        return Deferred.fail(c.lost, error)
      })

    /** PINGREQ after `keepAlive` seconds without sending; no PINGRESP in time ends the connection. */
    const pinger = (c: Connection, keepAlive: number): Effect.Effect<never, MqttError.MqttError> => {
      const keepAliveMillis = keepAlive * 1000
      const pingTimeoutMillis = o.pingTimeout === undefined
        ? Math.min(keepAliveMillis, 30_000)
        : Duration.toMillis(o.pingTimeout)
      const ping: Effect.Effect<void, MqttError.MqttError> = Effect.suspend(() => {
        // a PINGREQ when nothing was sent for the keepalive [MQTT-3.1.2-20], and also when nothing was received:
        // a client that keeps publishing into a dead connection would otherwise never find out
        const wait = Math.min(c.lastSent, c.lastReceived) + keepAliveMillis - clock.currentTimeMillisUnsafe()
        if (wait > 0) return Effect.sleep(wait)
        const answer = Deferred.makeUnsafe<void>()
        c.pong = answer
        c.stalledDuringPing = c.stalled
        const awaitPong: Effect.Effect<void, MqttError.MqttError> = Effect.flatMap(
          Effect.timeoutOption(Deferred.await(answer), pingTimeoutMillis),
          (result) => {
            if (result._tag === "Some") return Effect.void
            // a reader held back by a full queue cannot see the PINGRESP: keep waiting
            if (c.stalledDuringPing || c.stalled) {
              c.stalledDuringPing = c.stalled
              return awaitPong
            }
            return Effect.fail(new MqttError.TimeoutError({ operation: "ping", millis: pingTimeoutMillis }))
          }
        )
        c.outbox.push(Codec.pingreq)
        return awaitPong
      })
      return Effect.forever(ping)
    }

    /** The connection is up and carries the session: make it current. */
    const attach = (c: Connection) =>
      Effect.suspend(() => {
        conn = c
        lastInfo = c.info
        hasConnected = true
        metrics.connects++
        Deferred.doneUnsafe(connected, Effect.void)
        return SubscriptionRef.set(status, { _tag: "Connected", info: c.info! })
      })

    /**
     * Tries to connect again on the `reconnect` schedule until it succeeds (the connection) or gives up (the
     * last error). The schedule starts afresh after a connection that lasted (see `supervise`), and even the
     * first attempt waits its delay, so that
     * many clients that lost the same broker spread out.
     */
    const reconnect = (
      step: ScheduleStep,
      cause: MqttError.MqttError
    ): Effect.Effect<Connection, MqttError.MqttError> =>
      Effect.gen(function*() {
        let error = cause
        for (let attempt = 1;; attempt++) {
          const next = yield* Effect.exit(step(clock.currentTimeMillisUnsafe(), error))
          if (Exit.isFailure(next)) return yield* Effect.fail(error)
          const delay = next.value[1]
          yield* SubscriptionRef.set(status, { _tag: "Disconnected", cause: error, retryIn: delay })
          yield* Effect.sleep(delay)
          yield* SubscriptionRef.set(status, { _tag: "Connecting", attempt })
          const exit = yield* Effect.exit(connect(!hasConnected))
          if (Exit.isSuccess(exit)) return exit.value
          metrics.failedAttempts++
          const failure = exit.cause.reasons.find(Cause.isFailReason)
          if (failure === undefined) return yield* Effect.failCause(exit.cause)
          error = failure.error
          if (isFinal(error)) return yield* Effect.fail(error)
        }
      })

    /** Watches the current connection; when it ends, reconnects or shuts the client down. */
    const supervise = (first: Connection): Effect.Effect<void> =>
      Effect.gen(function*() {
        let c = first
        let connectedAt = clock.currentTimeMillisUnsafe()
        let step: ScheduleStep | undefined
        while (true) {
          const error = yield* Effect.flip(Deferred.await(c.lost))
          if (closed !== undefined) return
          const schedule = o.reconnect
          if (schedule === undefined || isFinal(error)) {
            yield* shutdown(error, error._tag === "ProtocolError" ? error.reasonCode : undefined)
            return
          }
          yield* detach(c, error)
          const since = clock.currentTimeMillisUnsafe()
          // the backoff starts afresh only after a connection that lasted a second: a broker that accepts and
          // drops each connection at once meets a growing delay, and of two clients that take one session from
          // each other at least one backs off (the other's connections last its whole delay); a broker that
          // restarts now and then is reconnected to at the first delay each time
          if (step === undefined || since - connectedAt >= STABLE_CONNECTION_MILLIS) {
            step = yield* Schedule.toStep(schedule)
          }
          const exit = yield* Effect.exit(reconnect(step, error))
          if (Exit.isFailure(exit)) {
            const failure = exit.cause.reasons.find(Cause.isFailReason)
            yield* shutdown(failure?.error ?? error)
            return
          }
          c = exit.value
          connectedAt = clock.currentTimeMillisUnsafe()
          const outage = connectedAt - since
          metrics.reconnects++
          metrics.disconnectedMillis += outage
          metrics.longestDisconnectMillis = Math.max(metrics.longestDisconnectMillis, outage)
          yield* attach(c)
        }
      })

    const firstExit = yield* Effect.exit(connect(true))
    let first: Connection
    if (Exit.isSuccess(firstExit)) {
      first = firstExit.value
    } else {
      const failure = firstExit.cause.reasons.find(Cause.isFailReason)
      if (failure === undefined || !o.retryFirstConnect || o.reconnect === undefined || isFinal(failure.error)) {
        return yield* Effect.failCause(firstExit.cause)
      }
      metrics.failedAttempts++
      first = yield* reconnect(yield* Schedule.toStep(o.reconnect), failure.error)
    }
    yield* attach(first)
    yield* Effect.forkIn(supervise(first), scope)
    yield* Scope.addFinalizer(scope, shutdown(closedByClient, o.disconnectReasonCode, o.disconnectSessionExpiry))

    // ---- operations -------------------------------------------------------------------------------------

    /** Waits for the next connection, unless the client has stopped. */
    const awaitConnected = Effect.suspend(() => closed !== undefined ? Effect.fail(closed) : Deferred.await(connected))

    const publish = (
      topic: string,
      payload: Uint8Array | string,
      options?: MqttClient.PublishOptions
    ): Effect.Effect<void, MqttError.MqttError> =>
      // each run encodes afresh: the same publish effect may run several times, even at once
      Effect.suspend(() => publishNow(topic, payload, options))

    const publishNow = (
      topic: string,
      payload: Uint8Array | string,
      options?: MqttClient.PublishOptions
    ): Effect.Effect<void, MqttError.MqttError> => {
      const qos = options?.qos ?? 0
      const retain = options?.retain ?? false
      const problem = nameProblem(topic)
      if (problem !== undefined) {
        return Effect.fail(new MqttError.InvalidTopicError({ topic, kind: "name", reason: problem }))
      }
      if (!isQoS(qos)) return Effect.fail(invalid("qos", "expected 0, 1 or 2"))
      if (typeof retain !== "boolean") return Effect.fail(invalid("retain", "expected a boolean"))
      const bytes = typeof payload === "string" ? Buffer.from(payload) : payload
      if (!(bytes instanceof Uint8Array)) return Effect.fail(invalid("payload", "expected a Uint8Array or a string"))
      let encoded: Codec.EncodedPublish
      try {
        encoded = Codec.encodePublish(version, topic, bytes, qos, retain, options?.properties)
      } catch (e) {
        return Effect.fail(invalid("properties", describe(e)))
      }
      // what the broker said it cannot take is refused here, before it costs the connection
      const info = lastInfo
      if (info !== undefined && version === 5) {
        if (qos > info.maximumQoS) {
          return Effect.fail(refusedBeforeSending(topic, 0x9b, `the broker accepts QoS ${info.maximumQoS} at most`))
        }
        if (retain && !info.retainAvailable) {
          return Effect.fail(refusedBeforeSending(topic, 0x9a, "the broker does not keep retained messages"))
        }
        if (info.maximumPacketSize !== undefined && encoded.bytes.byteLength > info.maximumPacketSize) {
          return Effect.fail(
            refusedBeforeSending(
              topic,
              0x95,
              `the packet is ${encoded.bytes.byteLength} bytes, the broker accepts ${info.maximumPacketSize} at most`
            )
          )
        }
      }
      return send({ topic, payload: bytes, qos, retain, properties: options?.properties, encoded })
    }

    const offline = (operation: "publish" | "subscribe" | "unsubscribe" | "reauthenticate", reason: string) =>
      Effect.fail(new MqttError.OfflineError({ operation, reason }))

    const send = (message: Outgoing): Effect.Effect<void, MqttError.MqttError> =>
      Effect.suspend(() => {
        const { encoded, qos } = message
        if (closed !== undefined) return Effect.fail(closed)
        const c = conn
        if (c === undefined) {
          if (qos === 0 && o.offlineQos0 === "fail") return offline("publish", "QoS 0 is not buffered while offline")
          if (offlineCount >= o.offlineCapacity) {
            return o.offlineOverflow === "wait"
              ? Effect.andThen(awaitConnected, send(message))
              : offline("publish", `the offline buffer is full (${o.offlineCapacity} publishes)`)
          }
          offlineCount++
          if (qos === 0) {
            offlineQos0.push(encoded.bytes)
            return Effect.void
          }
        } else if (qos === 0) {
          return c.outbox.write(wire(c, message, 0, false))
        }
        const buffered = c === undefined
        // the common case, an identifier free at once, takes no extra effect
        const id = ids.tryAcquire(false)
        if (id !== 0) return track(id, message, buffered)
        return Effect.uninterruptibleMask((restore) =>
          Effect.flatMap(restore(ids.acquire(false)), (id) => restore(track(id, message, buffered)))
        )
      })

    /** Registers a QoS 1/2 publish under its identifier, sends it when it may, and waits for its outcome. */
    const track = (id: number, message: Outgoing, buffered: boolean): Effect.Effect<void, MqttError.MqttError> => {
      const entry: PublishEntry = {
        _tag: "Publish",
        id,
        qos: message.qos as 1 | 2,
        topic: message.topic,
        message,
        state: "queued",
        dup: false,
        counted: false,
        cancelled: true,
        resume: undefined,
        result: undefined,
        offline: buffered
      }
      publishes[id] = entry
      order.set(id, entry)
      const current = conn
      if (current !== undefined && sendLine.size === 0 && current.used < current.quota) {
        transmit(current, entry)
      } else {
        sendLine.push(entry)
      }
      return Effect.callback<void, MqttError.MqttError>((resume) => {
        if (entry.result !== undefined) return resume(entry.result)
        entry.resume = resume
        return Effect.sync(() => {
          entry.resume = undefined
          // never sent: the caller gave it up, so it is not sent at all; once sent, its flow completes
          if (entry.state === "queued" && !entry.dup && publishes[id] === entry) {
            publishes[id] = undefined
            order.delete(id)
            sendLine.cancel(entry)
            ids.release(id, false)
            // it no longer takes a place in the offline buffer
            if (entry.offline) offlineCount--
          }
        })
      })
    }

    const subscribe = (
      input: string | MqttClient.Subscription | ReadonlyArray<string | MqttClient.Subscription>,
      options?: MqttClient.SubscribeOptions
    ): Effect.Effect<ReadonlyArray<MqttClient.Granted>, MqttError.MqttError> =>
      Effect.suspend(() => {
        const list = Array.isArray(input) ? input : [input as string | MqttClient.Subscription]
        if (list.length === 0) return Effect.fail(invalid("filters", "at least one filter is needed"))
        const filters: Array<MqttPacket.ISubscription> = []
        for (const item of list) {
          const sub: MqttClient.Subscription = typeof item === "string" ? { ...options, filter: item } : item
          const problem = typeof sub.filter === "string" ? filterProblem(sub.filter) : "expected a string"
          if (problem !== undefined) {
            return Effect.fail(
              new MqttError.InvalidTopicError({ topic: String(sub.filter), kind: "filter", reason: problem })
            )
          }
          const qos = sub.qos ?? 0
          if (!isQoS(qos)) return Effect.fail(invalid("qos", "expected 0, 1 or 2"))
          const v5Only = sub.noLocal !== undefined || sub.retainAsPublished !== undefined ||
            sub.retainHandling !== undefined
          if (v5Only && version !== 5) {
            return Effect.fail(invalid("subscribe", "noLocal, retainAsPublished and retainHandling need MQTT 5"))
          }
          if (sub.retainHandling !== undefined && !isQoS(sub.retainHandling)) {
            return Effect.fail(invalid("retainHandling", "expected 0, 1 or 2"))
          }
          if (sub.noLocal === true && sub.filter.startsWith("$share/")) {
            return Effect.fail(invalid("noLocal", "a shared subscription cannot be no local [MQTT-3.8.3-4]"))
          }
          filters.push({
            topic: sub.filter,
            qos,
            ...(version === 5 ?
              { nl: sub.noLocal ?? false, rap: sub.retainAsPublished ?? false, rh: sub.retainHandling ?? 0 } :
              {})
          })
        }
        const identifier = options?.subscriptionIdentifier ?? 0
        if (identifier !== 0) {
          if (version !== 5) return Effect.fail(invalid("subscriptionIdentifier", "needs MQTT 5"))
          if (!isUint(identifier, 268_435_455) || identifier === 0) {
            return Effect.fail(invalid("subscriptionIdentifier", "expected a whole number from 1 to 268435455"))
          }
          if (lastInfo !== undefined && !lastInfo.subscriptionIdentifiersAvailable) {
            return Effect.fail(
              invalid("subscriptionIdentifier", "the broker does not support subscription identifiers")
            )
          }
        }
        return Effect.flatMap(
          sendRequest(
            "Subscribe",
            filters,
            identifier,
            (messageId) => Codec.encodeSubscribe(version, messageId, filters, identifier, options?.userProperties)
          ),
          ({ codes, reasonString }) => {
            const refused = codes.findIndex((code) => code >= 0x80)
            if (refused >= 0) {
              return Effect.fail(
                new MqttError.SubscribeError({
                  filter: filters[refused].topic,
                  reasonCode: codes[refused],
                  ...optionalReason(reasonString),
                  codes: codes.map((reasonCode, i) => ({ filter: filters[i].topic, reasonCode }))
                })
              )
            }
            return Effect.succeed(
              codes.map((reasonCode, i) => ({ filter: filters[i].topic, reasonCode, qos: (reasonCode & 3) as QoS }))
            )
          }
        )
      })

    const unsubscribe = (
      input: string | ReadonlyArray<string>,
      options?: MqttClient.UnsubscribeOptions
    ): Effect.Effect<void, MqttError.MqttError> =>
      Effect.suspend(() => {
        const userProperties = options?.userProperties
        const list: ReadonlyArray<string> = typeof input === "string" ? [input] : input
        if (list.length === 0) return Effect.fail(invalid("filters", "at least one filter is needed"))
        for (const filter of list) {
          const problem = typeof filter === "string" ? filterProblem(filter) : "expected a string"
          if (problem !== undefined) {
            return Effect.fail(
              new MqttError.InvalidTopicError({ topic: String(filter), kind: "filter", reason: problem })
            )
          }
        }
        const filters = list.map((topic) => ({ topic, qos: 0 as const }))
        return Effect.flatMap(
          sendRequest(
            "Unsubscribe",
            filters,
            0,
            (messageId) => Codec.encodeUnsubscribe(version, messageId, list, userProperties)
          ),
          ({ codes, reasonString }) => {
            const index = codes.findIndex((code) => code >= 0x80)
            if (index < 0) return Effect.void
            return Effect.fail(
              new MqttError.UnsubscribeError({
                filter: list[index],
                reasonCode: codes[index],
                ...optionalReason(reasonString)
              })
            )
          }
        )
      })

    /** Sends a SUBSCRIBE or UNSUBSCRIBE (now, or once connected) and waits for its reason codes. */
    const sendRequest = (
      tag: "Subscribe" | "Unsubscribe",
      filters: ReadonlyArray<MqttPacket.ISubscription>,
      identifier: number,
      packet: (messageId: number) => Buffer
    ): Effect.Effect<Acknowledged, MqttError.MqttError> =>
      Effect.suspend(() => {
        const probe = Codec.tryEncode(() => packet(1))
        if (!(probe instanceof Uint8Array)) return Effect.fail(invalid(tag.toLowerCase(), probe.error))
        if (closed !== undefined) return Effect.fail(closed)
        if (conn === undefined && o.offlineRequests === "fail") {
          return offline(tag === "Subscribe" ? "subscribe" : "unsubscribe", "the client is reconnecting")
        }
        return Effect.uninterruptibleMask((restore) =>
          Effect.flatMap(restore(ids.acquire(false)), (id) => {
            const bytes = Buffer.from(probe)
            const offset = idOffsetOf(bytes)
            bytes[offset] = id >> 8
            bytes[offset + 1] = id & 0xff
            const deferred = Deferred.makeUnsafe<Acknowledged, MqttError.MqttError>()
            const entry: RequestEntry = { _tag: tag, id, bytes, filters, identifier, deferred }
            requests.set(id, entry)
            // sent now, or by `resume` once connected
            conn?.outbox.push(bytes)
            return restore(Deferred.await(deferred))
          })
        )
      })

    // ---- subscriptions with their own stream, request/response ----------------------------------------

    /** Identifiers given automatically to `subscription` and response subscriptions, apart from small ones. */
    let nextIdentifier = AUTOMATIC_IDENTIFIERS_FROM
    const automaticIdentifier = () =>
      version === 5 && (lastInfo?.subscriptionIdentifiersAvailable ?? true) ? nextIdentifier++ : 0

    const subscription = (
      input: string | MqttClient.Subscription | ReadonlyArray<string | MqttClient.Subscription>,
      options?: MqttClient.SubscribeOptions
    ): Effect.Effect<Stream.Stream<MqttMessage, MqttError.MqttError>, MqttError.MqttError, Scope.Scope> =>
      Effect.gen(function*() {
        const list = Array.isArray(input) ? input : [input as string | MqttClient.Subscription]
        const filters = list.map((item) => typeof item === "string" ? item : item.filter)
        const identifier = options?.subscriptionIdentifier ?? automaticIdentifier()
        const queue = yield* IncomingQueue.make<MqttMessage, MqttError.MqttError>(o.queue)
        const r: Route = { filters, identifier, queue, handle: undefined }
        // the route exists before the SUBACK, so that retained messages sent with it are not missed
        yield* Effect.acquireRelease(
          Effect.sync(() => routes.push(r)),
          () =>
            Effect.andThen(
              Effect.sync(() => {
                const index = routes.indexOf(r)
                if (index >= 0) routes.splice(index, 1)
              }),
              queue.end
            )
        )
        yield* Effect.acquireRelease(
          subscribe(input, identifier > 0 ? { ...options, subscriptionIdentifier: identifier } : options),
          () => Effect.ignore(unsubscribe(filters))
        )
        return queue.stream
      })

    /** Responses waiting for their request, by correlation data (hex). */
    const responses = new Map<string, Deferred.Deferred<MqttMessage, MqttError.MqttError>>()
    let responseTopic: Deferred.Deferred<string, MqttError.MqttError> | undefined
    /** Subscribes once to this client's response topic; its messages complete the waiting requests. */
    const ensureResponseTopic: Effect.Effect<string, MqttError.MqttError> = Effect.suspend(() => {
      if (responseTopic !== undefined) return Deferred.await(responseTopic)
      const ready = Deferred.makeUnsafe<string, MqttError.MqttError>()
      responseTopic = ready
      const topic = `${o.responseTopicPrefix}/${clientId.replace(/[+#/\u0000]/g, "_")}`
      const identifier = automaticIdentifier()
      routes.push({
        filters: [topic],
        identifier,
        queue: undefined,
        handle: (message) => {
          const correlation = message.properties.correlationData
          if (correlation === undefined) return
          const key = Buffer.from(correlation).toString("hex")
          const waiting = responses.get(key)
          if (waiting === undefined) return
          responses.delete(key)
          Deferred.doneUnsafe(waiting, Effect.succeed(message))
        }
      })
      return subscribe(topic, { qos: 1, ...(identifier > 0 ? { subscriptionIdentifier: identifier } : {}) }).pipe(
        Effect.matchEffect({
          onFailure: (error) => {
            responseTopic = undefined
            routes.splice(routes.findIndex((r) => r.filters[0] === topic), 1)
            return Effect.andThen(Deferred.fail(ready, error), Effect.fail(error))
          },
          onSuccess: () => Effect.andThen(Deferred.succeed(ready, topic), Effect.succeed(topic))
        })
      )
    })

    const request = (
      topic: string,
      payload: Uint8Array | string,
      options?: MqttClient.RequestOptions
    ): Effect.Effect<MqttMessage, MqttError.MqttError> =>
      Effect.gen(function*() {
        if (version !== 5) {
          return yield* invalid("request", "request/response needs MQTT 5 (response topic and correlation data)")
        }
        const timeout = yield* decodeDuration("timeout", options?.timeout, Duration.seconds(30))
        const replyTo = yield* ensureResponseTopic
        const correlationData = Crypto.randomBytes(16)
        const key = correlationData.toString("hex")
        const waiting = Deferred.makeUnsafe<MqttMessage, MqttError.MqttError>()
        responses.set(key, waiting)
        return yield* Effect.andThen(
          publish(topic, payload, {
            qos: options?.qos ?? 1,
            properties: { ...options?.properties, responseTopic: replyTo, correlationData }
          }),
          Deferred.await(waiting)
        ).pipe(
          Effect.timeoutOrElse({
            duration: timeout,
            orElse: () =>
              Effect.fail(new MqttError.TimeoutError({ operation: "request", millis: Duration.toMillis(timeout) }))
          }),
          Effect.ensuring(Effect.sync(() => responses.delete(key)))
        )
      })

    const respond = <E, R>(
      filter: string | ReadonlyArray<string>,
      handler: (request: MqttMessage) => Effect.Effect<MqttClient.Reply, E, R>,
      options?: MqttClient.RespondOptions
    ): Effect.Effect<void, MqttError.MqttError | E, R> =>
      Effect.scoped(Effect.gen(function*() {
        const requests = yield* subscription(
          typeof filter === "string" ? filter : [...filter],
          { qos: options?.qos ?? 1 }
        )
        yield* requests.pipe(
          Stream.mapEffect((message) => {
            const replyTo = message.properties.responseTopic
            // a message without a response topic asks for no response
            if (replyTo === undefined) return Effect.void
            return Effect.flatMap(handler(message), (reply) => {
              const { payload, properties } = typeof reply === "string" || reply instanceof Uint8Array
                ? { payload: reply, properties: undefined }
                : reply
              const correlationData = message.properties.correlationData
              return publish(replyTo, payload, {
                qos: options?.qos ?? 1,
                properties: { ...properties, ...(correlationData === undefined ? {} : { correlationData }) }
              })
            })
          }, { concurrency: options?.concurrency ?? 1 }),
          Stream.runDrain
        )
      }))

    const reauthenticate = (data?: Uint8Array): Effect.Effect<void, MqttError.MqttError> =>
      Effect.suspend(() => {
        const auth = o.auth
        if (auth === undefined) {
          return Effect.fail(invalid("auth", "the client was connected without enhanced authentication"))
        }
        if (closed !== undefined) return Effect.fail(closed)
        const c = conn
        if (c === undefined) return offline("reauthenticate", "re-authentication needs a connection")
        if (c.reauthentication !== undefined) return Deferred.await(c.reauthentication)
        const bytes = Codec.generate({
          cmd: "auth",
          reasonCode: 0x19,
          properties: {
            authenticationMethod: auth.method,
            ...(data === undefined ? {} : { authenticationData: Buffer.from(data) })
          }
        }, version)
        if (!(bytes instanceof Uint8Array)) return Effect.fail(invalid("auth", bytes.error))
        const done = Deferred.makeUnsafe<void, MqttError.MqttError>()
        c.reauthentication = done
        c.outbox.push(bytes)
        // if the connection ends first, so does the re-authentication
        return Effect.raceFirst(Deferred.await(done), Effect.flatMap(Effect.flip(Deferred.await(c.lost)), Effect.fail))
      })

    const client: MqttClient.Client = {
      // publish is the hot path: a span per message would cost more than the rest of the publish
      publish,
      subscribe: Effect.fn("MqttClient.subscribe")(function*(filters, options) {
        return yield* subscribe(filters, options)
      }),
      unsubscribe: Effect.fn("MqttClient.unsubscribe")(function*(filters, options) {
        return yield* unsubscribe(filters, options)
      }),
      messages: incoming.stream,
      droppedMessages: incoming.dropped,
      queuedMessages: incoming.size,
      get connection() {
        return lastInfo!
      },
      status: SubscriptionRef.get(status),
      statusChanges: SubscriptionRef.changes(status) as Stream.Stream<MqttClient.ConnectionStatus>,
      metrics: Effect.map(incoming.dropped, (droppedMessages) => ({ ...metrics, droppedMessages })),
      awaitClose: Deferred.await(closedSignal),
      subscription,
      request,
      respond,
      reauthenticate
    }
    return client
  })

const toBuffer = (chunk: Uint8Array | string): Buffer =>
  typeof chunk === "string"
    ? Buffer.from(chunk)
    : Buffer.isBuffer(chunk)
    ? chunk
    : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength)

/** The packet identifier of SUBSCRIBE and UNSUBSCRIBE comes right after the fixed header. */
const idOffsetOf = (bytes: Uint8Array): number => {
  let i = 1
  while (bytes[i] & 0x80) i++
  return i + 1
}

const refusedBeforeSending = (topic: string, reasonCode: number, reason: string) =>
  new MqttError.PublishError({ topic, reasonCode, reasonString: `not sent: ${reason}` })

const optionalReason = (reasonString: string | undefined): { reasonString?: string } =>
  reasonString === undefined ? {} : { reasonString }
