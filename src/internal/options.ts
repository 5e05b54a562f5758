/**
 * The client's options: validated, defaults applied, and narrowed to what the other modules need. Every
 * mistake is an `InvalidOptionError` naming the option, before anything is sent.
 */
import type * as Arr from "effect/Array"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Base64Url from "effect/encoding/Base64Url"
import * as LogLevel from "effect/LogLevel"
import * as Random from "effect/Random"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as IncomingQueue from "../IncomingQueue.ts"
import type * as MqttClient from "../MqttClient.ts"
import * as MqttError from "../MqttError.ts"
import type { QoS } from "../MqttMessage.ts"
import * as Bytes from "./bytes.ts"
import * as Codec from "./codec.ts"
import { capacityOf, strategyProblem } from "./queue.ts"
import type { SessionStore } from "./store.ts"
import { nameProblem } from "./topic.ts"
import * as Url from "./url.ts"

/** One node of `url`, with the credentials CONNECT carries to it. */
export interface ResolvedNode {
  readonly url: string
  readonly endpoint: Url.Endpoint
  readonly username: string | undefined
  readonly password: Redacted.Redacted<string> | undefined
}

export interface Resolved {
  /** the first node's endpoint */
  readonly endpoint: Url.Endpoint
  /** every node of `url`, in order (one for a single URL) */
  readonly nodes: Arr.NonEmptyReadonlyArray<ResolvedNode>
  readonly followServerReference: MqttClient.Options["followServerReference"]
  readonly clientId: string
  readonly protocolVersion: 3 | 4 | 5
  readonly keepAlive: number
  readonly pingTimeout: Duration.Duration | undefined
  readonly cleanStart: boolean
  readonly sessionExpiryInterval: number | undefined
  readonly username: string | undefined
  readonly password: Redacted.Redacted<string> | undefined
  /** asked for each CONNECT's user name and password instead (`username`, `password` and the nodes' are none) */
  readonly credentials: MqttClient.Options["credentials"]
  readonly will: MqttClient.Will | undefined
  readonly connectTimeout: Duration.Duration
  readonly queue: IncomingQueue.Strategy
  readonly userProperties: ReadonlyArray<readonly [string, string]> | undefined
  readonly reconnect: Schedule.Schedule<unknown, MqttError.MqttError> | undefined
  readonly retryFirstConnect: boolean
  readonly maximumPacketSize: number
  readonly sendMaximumPacketSize: number | undefined
  readonly receiveMaximum: number
  /** what the session enforces: `receiveMaximum`, or 65535 when the client accepts a broker's excess */
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
  readonly acknowledgement: "auto" | "manual"
  readonly logLevel: LogLevel.LogLevel
  readonly overlapping: "single-copy" | "copy-per-subscription"
  readonly store: SessionStore | undefined
  readonly clearStore: boolean
  readonly tracing: { readonly messages: boolean; readonly propagate: boolean }
  readonly strictReceiveMaximum: boolean
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

/** A session store from the `store` option: an `MqttSessionStore` or any `KeyValueStore`. */
const storeOf = (store: MqttClient.Options["store"]): SessionStore | undefined => {
  if (store === undefined || typeof store !== "object" || store === null) return undefined
  if ("kv" in store && "name" in store) return store
  return "set" in store && "keys" in store ? { name: "key-value store", kv: store } : undefined
}

export const invalid = (option: string, reason: string) => new MqttError.InvalidOptionError({ option, reason })

export const isUint = (n: unknown, max: number): n is number =>
  typeof n === "number" && Number.isInteger(n) && n >= 0 && n <= max

export const isQoS = (n: unknown): n is QoS => n === 0 || n === 1 || n === 2

const randomClientId = (): string => "effect-mqtt-" + Base64Url.encode(Bytes.random(8)).slice(0, 10)

export const decodeDuration = (option: string, input: Duration.Input | undefined, fallback: Duration.Duration) => {
  if (input === undefined) return Effect.succeed(fallback)
  const decoded = Duration.fromInput(input)
  return decoded._tag === "Some" && Duration.isFinite(decoded.value) && Duration.toMillis(decoded.value) > 0
    ? Effect.succeed(decoded.value)
    : Effect.fail(invalid(option, "expected a positive, finite duration"))
}

/** The URLs of `url`: one, or the nodes of a cluster. */
const urlsOf = (
  url: MqttClient.Options["url"]
): Effect.Effect<Arr.NonEmptyReadonlyArray<string>, MqttError.MqttError> => {
  if (url === undefined) return Effect.succeed(["mqtt://localhost:1883"])
  if (typeof url === "string") return Effect.succeed([url])
  if (!Array.isArray(url)) return Effect.fail(invalid("url", "expected a URL or a list of URLs"))
  if (url.length === 0) return Effect.fail(invalid("url", "the list of brokers is empty"))
  return Effect.succeed(url as unknown as Arr.NonEmptyReadonlyArray<string>)
}

/** `followServerReference`: a list of host names (or `host:port`), or a predicate. */
const checkFollow = (follow: MqttClient.Options["followServerReference"]) =>
  follow === undefined || typeof follow === "function" ||
    (Array.isArray(follow) && follow.every((host) => typeof host === "string" && Url.hostEntry(host) !== undefined))
    ? Effect.succeed(follow)
    : Effect.fail(
      invalid(
        "followServerReference",
        "expected a list of hosts (a name or an IP address, or host:port; no scheme) or a function"
      )
    )

const isObject = (value: unknown): value is object => typeof value === "object" && value !== null

/** The booleans among the options, and the option objects: a value of another type is refused. */
const BOOLEANS = [
  "cleanStart",
  "cleanSession",
  "retryFirstConnect",
  "topicAliases",
  "strictReceiveMaximum",
  "clearStore"
] as const
const OBJECTS = ["will", "offline", "tracing", "disconnect", "auth"] as const

/** The names of `MqttClient.Options`: another name (from an untyped configuration, an MQTT.js habit) is refused. */
const OPTION_NAMES: Record<keyof MqttClient.Options, true> = {
  url: true,
  followServerReference: true,
  tls: true,
  transport: true,
  clientId: true,
  protocolVersion: true,
  keepAlive: true,
  pingTimeout: true,
  cleanStart: true,
  cleanSession: true,
  sessionExpiryInterval: true,
  username: true,
  password: true,
  credentials: true,
  will: true,
  connectTimeout: true,
  queue: true,
  userProperties: true,
  reconnect: true,
  retryFirstConnect: true,
  acknowledgement: true,
  logLevel: true,
  overlapping: true,
  store: true,
  clearStore: true,
  tracing: true,
  strictReceiveMaximum: true,
  offline: true,
  maximumPacketSize: true,
  sendMaximumPacketSize: true,
  receiveMaximum: true,
  topicAliasMaximum: true,
  topicAliases: true,
  auth: true,
  maxInflight: true,
  responseTopicPrefix: true,
  disconnect: true
}

/** What MQTT.js's option names are here. */
const MQTTJS_NAMES: Record<string, string> = {
  clean: "cleanStart",
  keepalive: "keepAlive",
  reconnectPeriod: "reconnect (a Schedule, or false)",
  properties:
    "the MQTT 5 CONNECT properties are options of their own: sessionExpiryInterval, receiveMaximum, maximumPacketSize, topicAliasMaximum, userProperties",
  servers: "url (a list of URLs)",
  host: "url",
  hostname: "url",
  port: "url",
  protocol: "url",
  path: "url",
  ca: "tls.ca",
  cert: "tls.cert",
  key: "tls.key",
  rejectUnauthorized: "tls.insecureSkipVerify",
  queueQoSZero: "offline.qos0",
  resubscribe: "nothing: subscriptions are always restored",
  incomingStore: "store",
  outgoingStore: "store",
  customHandleAcks: "acknowledgement: \"manual\""
}

const unknownOption = (name: string): string => {
  const instead = MQTTJS_NAMES[name]
  return instead === undefined
    ? "not an option of MqttClient.Options"
    : `not an option of MqttClient.Options (MQTT.js's; here: ${instead})`
}

/** Why a string payload cannot be sent as it is (`undefined` when it can): UTF-8 has no lone surrogate. */
export const stringPayloadProblem = (payload: string): string | undefined =>
  Bytes.isWellFormed(payload)
    ? undefined
    : "a string payload must be well-formed UTF-16: a lone surrogate would be sent as U+FFFD"

/**
 * The checks of the options' types that the rest of `resolveOptions` takes for granted: a value of the wrong
 * type (from a JSON configuration, or an `as any`) is an `InvalidOptionError`, never a defect or bytes sent.
 */
const checkShapes = (options: MqttClient.Options): MqttError.InvalidOptionError | undefined => {
  if (!isObject(options)) return invalid("options", "expected an object")
  for (const [name, value] of Object.entries(options)) {
    if (value !== undefined && !Object.hasOwn(OPTION_NAMES, name)) return invalid(name, unknownOption(name))
  }
  for (const name of BOOLEANS) {
    if (options[name] !== undefined && typeof options[name] !== "boolean") return invalid(name, "expected a boolean")
  }
  for (const name of OBJECTS) {
    if (options[name] !== undefined && !isObject(options[name])) return invalid(name, "expected an object")
  }
  // one setting under two names: which one was meant is not for the client to guess
  if (
    options.cleanStart !== undefined && options.cleanSession !== undefined &&
    options.cleanStart !== options.cleanSession
  ) {
    return invalid(
      "cleanSession",
      `cleanSession: ${options.cleanSession} disagrees with cleanStart: ${options.cleanStart}, the same setting ` +
        "(cleanSession is its MQTT 3.1.1 name): give one of them"
    )
  }
  if (options.tls !== undefined && !isObject(options.tls)) return invalid("tls", "expected an object")
  const password = options.password
  if (password !== undefined && !(Redacted.isRedacted(password) && typeof Redacted.value(password) === "string")) {
    return invalid("password", "expected a Redacted string (Redacted.make(password))")
  }
  if (options.username !== undefined && typeof options.username !== "string") {
    return invalid("username", "expected a string")
  }
  if (options.credentials !== undefined && typeof options.credentials !== "function") {
    return invalid("credentials", "expected a function returning an Effect of { username, password }")
  }
  const will = options.will
  if (will !== undefined) {
    if (will.retain !== undefined && typeof will.retain !== "boolean") {
      return invalid("will.retain", "expected a boolean")
    }
    if (will.properties !== undefined && !isObject(will.properties)) {
      return invalid("will.properties", "expected an object")
    }
    if (typeof will.payload !== "string" && !(will.payload instanceof Uint8Array)) {
      return invalid("will.payload", "expected a Uint8Array or a string")
    }
    if (typeof will.payload === "string" && stringPayloadProblem(will.payload) !== undefined) {
      return invalid("will.payload", stringPayloadProblem(will.payload)!)
    }
  }
  if (options.auth?.data !== undefined && !(options.auth.data instanceof Uint8Array)) {
    return invalid("auth.data", "expected a Uint8Array")
  }
  if (options.responseTopicPrefix !== undefined && typeof options.responseTopicPrefix !== "string") {
    return invalid("responseTopicPrefix", "expected a string")
  }
  const userPropertiesProblem = options.userProperties === undefined
    ? undefined
    : Codec.userPropertiesProblem(options.userProperties)
  if (userPropertiesProblem !== undefined) return invalid("userProperties", userPropertiesProblem)
  const queueProblem = options.queue === undefined ? undefined : strategyProblem(options.queue)
  return queueProblem === undefined ? undefined : invalid("queue", queueProblem)
}

/**
 * The Receive Maximum a client announces by default for its queue. With acknowledgement on hand-over, a queue at
 * least as large as the Receive Maximum never fills with QoS 1/2 messages, so the reader never has to stop reading
 * the socket for them. A queue that drops rather than waits (sliding, dropping, LIFO with either) never holds the
 * reader back: bounded by its capacity, the broker's window would keep the newest messages at the broker for a
 * stalled consumer, which then gets the oldest (and the queue drops nothing): the most the protocol allows instead,
 * as on MQTT 3.1.1.
 */
const defaultReceiveMaximum = (queue: IncomingQueue.Strategy): number => {
  const drops = queue._tag === "Sliding" || queue._tag === "Dropping" ||
    (queue._tag === "Lifo" && queue.overflow !== "suspend")
  return drops ? 65535 : Math.min(65535, capacityOf(queue))
}

/** `credentials` given with fixed credentials: which one counts is not for the client to guess. */
const credentialsConflict = (
  options: MqttClient.Options,
  endpoints: ReadonlyArray<Url.Endpoint>
): MqttError.InvalidOptionError | undefined => {
  if (options.credentials === undefined) return undefined
  const fixed = options.username !== undefined
    ? "username"
    : options.password !== undefined
    ? "password"
    : endpoints.findIndex((e) => e.username !== undefined || e.password !== undefined)
  if (fixed === -1) return undefined
  const given = typeof fixed === "string"
    ? fixed
    : `the user info of url${endpoints.length > 1 ? `[${fixed}]` : ""}`
  return invalid(
    "credentials",
    `given with ${given}: credentials asks for each CONNECT's user name and password, so give one or the other`
  )
}

export const resolveOptions = Effect.fnUntraced(function*(options: MqttClient.Options) {
  const shapeProblem = checkShapes(options)
  if (shapeProblem !== undefined) return yield* shapeProblem
  const urls = yield* urlsOf(options.url)
  const endpoints: Array<Url.Endpoint> = []
  for (let i = 0; i < urls.length; i++) {
    const parsed = yield* Effect.mapError(
      Url.parseUrl(urls[i]),
      (error) => urls.length === 1 ? error : invalid(`url[${i}]`, error.reason)
    )
    const same = endpoints.findIndex((other) => Url.brokerKey(other) === Url.brokerKey(parsed))
    if (same >= 0) return yield* invalid(`url[${i}]`, `the same broker as url[${same}]`)
    endpoints.push(parsed)
  }
  const endpoint = endpoints[0]
  if (endpoints.length > 1) {
    if (options.transport !== undefined) {
      return yield* invalid("url", "a custom transport connects to one place: give one URL with it")
    }
    if (new Set(endpoints.map(Url.isEncrypted)).size > 1) {
      return yield* invalid(
        "url",
        "the brokers of a list are either all encrypted (mqtts://, wss://) or all plaintext: a failover must not " +
          "leave TLS"
      )
    }
  }
  const followServerReference = yield* checkFollow(options.followServerReference)
  if (followServerReference !== undefined && options.transport !== undefined) {
    return yield* invalid("followServerReference", "a custom transport cannot be redirected to another server")
  }
  const protocolVersion = options.protocolVersion ?? 4
  if (protocolVersion !== 3 && protocolVersion !== 4 && protocolVersion !== 5) {
    return yield* invalid("protocolVersion", "expected 3 (MQTT 3.1), 4 (MQTT 3.1.1) or 5 (MQTT 5.0)")
  }
  const keepAlive = options.keepAlive ?? 60
  if (!isUint(keepAlive, 65535)) return yield* invalid("keepAlive", "expected whole seconds from 0 to 65535")
  // MQTT 3.1 takes 1 to 23 bytes: the generated identifier is 22
  const clientId = options.clientId ?? randomClientId()
  const cleanStart = options.cleanStart ?? options.cleanSession ?? true
  if (typeof clientId !== "string") return yield* invalid("clientId", "expected a string")
  const clientIdProblem = Codec.clientIdProblem(protocolVersion, clientId, cleanStart)
  if (clientIdProblem !== undefined) return yield* invalid("clientId", clientIdProblem)
  const sessionExpiryInterval = options.sessionExpiryInterval
  if (sessionExpiryInterval !== undefined && !isUint(sessionExpiryInterval, 0xffffffff)) {
    return yield* invalid("sessionExpiryInterval", "expected whole seconds from 0 to 4294967295")
  }
  // MQTT 3.1.1 has no Session Expiry: a caller who sets one believes the session is kept for that long
  if (protocolVersion !== 5 && (sessionExpiryInterval ?? 0) > 0) {
    return yield* invalid(
      "sessionExpiryInterval",
      "needs MQTT 5 (protocolVersion: 5); on MQTT 3.1.1, cleanSession: false keeps the session (for as long as the " +
        "broker keeps sessions)"
    )
  }
  const conflict = credentialsConflict(options, endpoints)
  if (conflict !== undefined) return yield* conflict
  const nodes: Array<ResolvedNode> = []
  for (let i = 0; i < endpoints.length; i++) {
    const e = endpoints[i]
    const username = options.username ?? e.username
    const password = options.password ?? (e.password === undefined ? undefined : Redacted.make(e.password))
    const credentialsProblem = Codec.credentialsProblem(protocolVersion, username, password)
    if (credentialsProblem !== undefined) {
      // in a list, a password from a node's user info is named by the node's position
      const from = options.password === undefined && endpoints.length > 1 ? `url[${i}]` : "password"
      return yield* invalid(from, credentialsProblem)
    }
    nodes.push({ url: urls[i], endpoint: e, username, password })
  }
  const { username, password } = nodes[0]
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
  const offline = options.offline ?? {}
  const offlineCapacity = offline.capacity ?? 10_000
  if (!isUint(offlineCapacity, Number.MAX_SAFE_INTEGER)) {
    return yield* invalid("offline.capacity", "expected a whole number of publishes")
  }
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
  const sendMaximumPacketSize = options.sendMaximumPacketSize
  if (
    sendMaximumPacketSize !== undefined &&
    (!isUint(sendMaximumPacketSize, 268_435_460) || sendMaximumPacketSize < 16)
  ) {
    return yield* invalid("sendMaximumPacketSize", "expected a whole number of bytes from 16 to 268435460")
  }
  const receiveMaximum = options.receiveMaximum ?? defaultReceiveMaximum(queue)
  if (!isUint(receiveMaximum, 65535) || receiveMaximum === 0) {
    return yield* invalid("receiveMaximum", "expected a whole number from 1 to 65535")
  }
  // MQTT 3.1.1 has no Receive Maximum: Mosquitto's default (max_inflight_messages 20) silently drops what a
  // 3.1.1 client sends beyond 20 unacknowledged messages while acknowledging it, so keep to 20 there, as paho does
  const maxInflight = options.maxInflight ?? (protocolVersion === 5 ? 1000 : 20)
  if (!isUint(maxInflight, 65535) || maxInflight === 0) {
    return yield* invalid("maxInflight", "expected a whole number from 1 to 65535")
  }
  const extras = yield* resolveExtras(options, protocolVersion)
  return {
    reconnect,
    retryFirstConnect: options.retryFirstConnect ?? false,
    maximumPacketSize,
    sendMaximumPacketSize,
    receiveMaximum,
    topicAliases: options.topicAliases ?? true,
    maxInflight,
    offlineCapacity,
    offlineOverflow,
    offlineQos0,
    offlineRequests,
    endpoint,
    nodes: nodes as unknown as Arr.NonEmptyReadonlyArray<ResolvedNode>,
    followServerReference,
    clientId,
    protocolVersion,
    keepAlive,
    pingTimeout,
    cleanStart,
    sessionExpiryInterval,
    username,
    password,
    credentials: options.credentials,
    will,
    connectTimeout,
    queue,
    userProperties: options.userProperties,
    ...extras
  } satisfies Resolved
})

/** `oneOf` checks a choice among strings. */
const oneOf = <A extends string>(option: string, value: A | undefined, fallback: A, allowed: ReadonlyArray<A>) =>
  value === undefined
    ? Effect.succeed(fallback)
    : allowed.includes(value)
    ? Effect.succeed(value)
    : Effect.fail(invalid(option, `expected ${allowed.map((a) => `"${a}"`).join(" or ")}`))

/** The options beyond the connection and the flow: authentication, release, logging, store, tracing. */
const resolveExtras = Effect.fnUntraced(function*(options: MqttClient.Options, protocolVersion: 3 | 4 | 5) {
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
  const logLevel = options.logLevel ?? "Warn"
  if (!LogLevel.values.includes(logLevel)) {
    return yield* invalid("logLevel", `expected one of ${LogLevel.values.map((l) => `"${l}"`).join(", ")}`)
  }
  const store = storeOf(options.store)
  if (options.store !== undefined && store === undefined) {
    return yield* invalid("store", "expected a KeyValueStore or an MqttSessionStore")
  }
  if (store !== undefined && options.clientId === undefined) {
    return yield* invalid("store", "a durable session needs a fixed clientId: the store is kept per client identifier")
  }
  const overlapping = yield* oneOf("overlapping", options.overlapping, "single-copy", [
    "single-copy",
    "copy-per-subscription"
  ])
  const acknowledgement = yield* oneOf("acknowledgement", options.acknowledgement, "auto", ["auto", "manual"])
  const topicAliasMaximum = options.topicAliasMaximum ?? (protocolVersion === 5 ? 16 : 0)
  if (!isUint(topicAliasMaximum, 65535)) {
    return yield* invalid("topicAliasMaximum", "expected a whole number from 0 to 65535")
  }
  return {
    topicAliasMaximum,
    responseTopicPrefix,
    auth,
    disconnectReasonCode,
    disconnectSessionExpiry,
    acknowledgement,
    logLevel,
    overlapping,
    store,
    clearStore: options.clearStore ?? false,
    strictReceiveMaximum: options.strictReceiveMaximum ?? false,
    tracing: { messages: options.tracing?.messages ?? false, propagate: options.tracing?.propagate ?? true }
  }
})

export const encodeConnect = (o: Resolved, clientId: string, clean: boolean) =>
  Codec.tryEncode(() =>
    Codec.encodeConnect({
      protocolVersion: o.protocolVersion,
      clientId,
      clean,
      keepAlive: o.keepAlive,
      username: o.username,
      password: o.password === undefined ? undefined : Bytes.utf8(Redacted.value(o.password)),
      will: o.will === undefined ? undefined : {
        topic: o.will.topic,
        payload: typeof o.will.payload === "string" ? Bytes.utf8(o.will.payload) : o.will.payload,
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
