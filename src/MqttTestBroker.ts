/**
 * An in-memory MQTT broker for tests: real `MqttClient` instances connect to it through an in-memory socket (the
 * client's `transport` option), so the code under test runs the same client code as in production, speaking
 * MQTT 3.1.1 or 5 bytes, without a network or a broker process.
 *
 * It follows the MQTT semantics a test depends on: topic matching with `+`, `#` and the `$` rule, retained
 * messages, QoS 0, 1 and 2 delivery, `$share` groups, No Local, Retain As Published, Retain Handling, wills on
 * a lost connection (with the MQTT 5 Will Delay Interval), persistent sessions that queue QoS 1/2 messages for
 * offline clients, Session Expiry, Message Expiry, topic aliases from the client, the keepalive (a client
 * silent for 1.5 times its keepalive is disconnected). It behaves as Mosquitto 2 with its default settings
 * where MQTT leaves a choice: 20 QoS 1/2 messages in flight per MQTT 3.1.1 client, 1,000 queued per session,
 * QoS 0 not queued for offline clients, one copy per matching subscription on MQTT 5 and one copy at the
 * highest QoS on 3.1.1, PUBACK 0x10 when no one subscribed.
 *
 * **Time**: every timer of the broker (keepalive, will delay, session expiry, message expiry) runs on the
 * Effect `Clock`, and the broker answers each packet synchronously, while the client writes it. Under
 * `TestClock` nothing sleeps for real: moving the clock by hours runs the client's keepalive pings, each
 * answered before the next timer is looked at, so the client's ping and connect timeouts do not fire.
 *
 * Not supported: MQTT 5 enhanced authentication (AUTH; CONNECT with an authentication method is refused with
 * 0x8C), topic aliases from the broker to the client, TLS and WebSocket (there is no network).
 *
 * @example
 * ```ts
 * import { Effect, Stream } from "effect"
 * import { MqttClient, MqttTestBroker } from "effect-mqtt"
 *
 * // in a test file: it.effect("receives alerts", () => receivesAlerts), with `it` from "@effect/vitest"
 * const receivesAlerts = Effect.gen(function*() {
 *   const client = yield* MqttClient.MqttClient
 *   const broker = yield* MqttTestBroker.MqttTestBroker
 *   yield* client.subscribe("alerts/#", { qos: 1 })
 *   yield* broker.publish("alerts/smoke", "kitchen", { qos: 1 })
 *   const [message] = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
 * }).pipe(Effect.provide(MqttTestBroker.layerWithClient()))
 * ```
 *
 * @since 0.2.0
 */
import * as Arr from "effect/Array"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as FiberSet from "effect/FiberSet"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import type * as Socket from "effect/socket/Socket"
import { Broker as Engine } from "./internal/broker/broker.ts"
import * as Packets from "./internal/broker/packets.ts"
import type { Message } from "./internal/broker/session.ts"
import * as MemorySocket from "./internal/memorySocket.ts"
import * as Topic from "./internal/topic.ts"
import * as MqttClient from "./MqttClient.ts"
import * as MqttError from "./MqttError.ts"
import { MqttMessage } from "./MqttMessage.ts"

/**
 * The settings of a test broker. The defaults are Mosquitto 2's.
 *
 * @example
 * ```ts
 * import { MqttTestBroker } from "effect-mqtt"
 *
 * const StrictBroker = MqttTestBroker.layer({
 *   maximumQoS: 1,
 *   maxQueued: 10,
 *   authenticate: ({ username }) => username === "device"
 * })
 * ```
 *
 * @since 0.2.0
 * @category models
 */
export interface Options {
  /** QoS 1/2 messages sent to an MQTT 3.1.1 client and not yet acknowledged, at most (MQTT 5 clients: their own
   * Receive Maximum). Default 20. */
  readonly maxInflight?: number | undefined
  /** Messages queued per session beyond that (or while its client is offline), at most; more are dropped.
   * Default 1,000. */
  readonly maxQueued?: number | undefined
  /** MQTT 5: the Receive Maximum announced in CONNACK. Default 20. */
  readonly receiveMaximum?: number | undefined
  /** The highest QoS accepted (announced on MQTT 5; a higher publish closes the connection). Default 2. */
  readonly maximumQoS?: 0 | 1 | 2 | undefined
  /** Whether retained messages are supported. Default `true`. */
  readonly retainAvailable?: boolean | undefined
  /** MQTT 5: how many topic aliases a client may set. Default 10. */
  readonly topicAliasMaximum?: number | undefined
  /** How many published messages {@link Broker.published} remembers. Default 10,000. */
  readonly history?: number | undefined
  /** Accepts or refuses each CONNECT (refused: CONNACK 4 on MQTT 3.1.1, 0x86 on MQTT 5). Default: all. */
  readonly authenticate?:
    | ((credentials: {
      readonly clientId: string
      readonly username: string | undefined
      readonly password: Uint8Array | undefined
    }) => boolean)
    | undefined
}

/**
 * What the broker knows of a client's session.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { MqttTestBroker } from "effect-mqtt"
 *
 * const offline = MqttTestBroker.MqttTestBroker.use((broker) =>
 *   Effect.map(broker.clients, (clients) => clients.filter((client) => !client.connected))
 * )
 * ```
 *
 * @since 0.2.0
 * @category models
 */
export interface ClientInfo {
  /** The client identifier of the session (the one the client sent, or the one the broker assigned to it). */
  readonly clientId: string
  /** Whether the session's client is connected now; `false` for a persistent session kept for an offline
   * client. */
  readonly connected: boolean
  /** The MQTT version of the client's latest connection: 4 (MQTT 3.1.1) or 5 (MQTT 5.0). */
  readonly protocolVersion: 4 | 5
  /** The filters subscribed, `$share/{group}/` included. */
  readonly subscriptions: ReadonlyArray<string>
  /** QoS 1/2 messages sent and not yet acknowledged. */
  readonly inflight: number
  /** Messages waiting for room in the client's window, or for the client to come back. */
  readonly queued: number
  /** Messages dropped because the session's queue was full. */
  readonly dropped: number
}

/**
 * The test broker service.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { MqttTestBroker } from "effect-mqtt"
 *
 * const program = Effect.gen(function*() {
 *   const broker = yield* MqttTestBroker.MqttTestBroker
 *   yield* broker.publish("cmd/device-1", "reboot", { qos: 1 })
 *   const replies = yield* broker.awaitPublished("status/device-1")
 *   yield* broker.disconnect("device-1") // a lost network: its will is published
 * })
 * ```
 *
 * @since 0.2.0
 * @category models
 */
export interface Broker {
  /** A new in-memory socket to this broker, for the `transport` option of `MqttClient`: each acquisition of its
   * `reader` is a new connection. Give each client its own. */
  readonly socket: Effect.Effect<Socket.Socket>

  /** A client connected to this broker for the life of the scope, made with `MqttClient.make` and `options`
   * (`transport` is this broker's; `tls` must not be given). */
  readonly makeClient: (
    options?: MqttClient.Options
  ) => Effect.Effect<MqttClient.Client, MqttError.MqttError, Scope.Scope>

  /** Publishes as another client would (the broker's own publish: No Local does not apply). Routed as any
   * publish, at once. Fails with `InvalidTopicError` for an invalid topic name, and with `InvalidOptionError` for a
   * QoS other than 0, 1 or 2 or a payload that is neither bytes nor a string. */
  readonly publish: (
    topic: string,
    payload: Uint8Array | string,
    options?: MqttClient.PublishOptions
  ) => Effect.Effect<void, MqttError.InvalidTopicError | MqttError.InvalidOptionError>

  /** The messages published so far (by clients, wills and `publish`), oldest first, whose topic matches
   * `filter` (default `#`; note that `#` does not match topics that start with `$`). */
  readonly published: (filter?: string) => Effect.Effect<ReadonlyArray<MqttMessage>>

  /** Waits until at least `count` (default 1; less than 1 waits for one) messages matching `filter` were
   * published, and returns all of them so far, oldest first: never none, so `const [first] = yield*
   * broker.awaitPublished(filter)` needs no check under `noUncheckedIndexedAccess`. Does not time out: put a
   * timeout around it if the message may never come. */
  readonly awaitPublished: (
    filter: string,
    count?: number
  ) => Effect.Effect<readonly [MqttMessage, ...Array<MqttMessage>]>

  /** The retained messages whose topic matches `filter` (default `#`). */
  readonly retained: (filter?: string) => Effect.Effect<ReadonlyArray<MqttMessage>>

  /** Every session the broker holds: connected clients and persistent sessions of offline clients. */
  readonly clients: Effect.Effect<ReadonlyArray<ClientInfo>>

  /** Waits until a client's session satisfies `predicate` (default: it is connected); returns its info. */
  readonly awaitClient: (
    clientId: string,
    predicate?: (client: ClientInfo) => boolean
  ) => Effect.Effect<ClientInfo>

  /** Waits until some connected client has subscribed to exactly `filter` (as written, `$share/` included). */
  readonly awaitSubscription: (filter: string) => Effect.Effect<ClientInfo>

  /**
   * Ends a client's connection. Without `reasonCode`, as a lost network would: the client reads a reset, its
   * will is published (after its MQTT 5 Will Delay Interval), its persistent session is kept. With an MQTT 5
   * `reasonCode` (e.g. 0x98 administrative action), the broker sends DISCONNECT with it first (the will is
   * still published). Returns `false` when the client is not connected. The client reconnects on its own
   * schedule: under `TestClock`, move the clock for it to happen.
   */
  readonly disconnect: (clientId: string, options?: { readonly reasonCode?: number | undefined }) => Effect.Effect<
    boolean
  >

  /**
   * Stops the broker: every connection is dropped (the clients read a reset; no will is published, since the
   * broker itself went away) and new connections are refused until {@link Broker.start}. With `persistence`
   * (default `false`, as Mosquitto's default), sessions, their queued and in-flight messages and the retained
   * messages survive; without, they are lost.
   */
  readonly stop: (options?: { readonly persistence?: boolean | undefined }) => Effect.Effect<void>

  /** Accepts connections again after {@link Broker.stop}. */
  readonly start: Effect.Effect<void>

  /** {@link Broker.stop} then {@link Broker.start}: the clients see their connection drop and reconnect on their
   * own schedule (under `TestClock`, move the clock). */
  readonly restart: (options?: { readonly persistence?: boolean | undefined }) => Effect.Effect<void>
}

/**
 * The test broker service tag.
 *
 * @example
 * ```ts
 * import { MqttTestBroker } from "effect-mqtt"
 *
 * const retained = MqttTestBroker.MqttTestBroker.use((broker) => broker.retained("status/#"))
 * ```
 *
 * @since 0.2.0
 * @category services
 */
export class MqttTestBroker extends Context.Service<MqttTestBroker, Broker>()("effect-mqtt/MqttTestBroker") {}

const toMqttMessage = (message: Message): MqttMessage =>
  new MqttMessage(
    message.topic,
    message.payload,
    message.qos,
    message.retain,
    false,
    Packets.toMessageProperties(message.properties)
  )

const encoder = new TextEncoder()

/**
 * Suspends until `check` returns a value, checking again after every change in the broker. A `check` that
 * throws (a test's predicate) ends the wait with a defect, not the connection whose packet caused the change.
 */
const waitFor = <A>(engine: Engine, check: () => A | undefined): Effect.Effect<A> =>
  Effect.callback<A>((resume) => {
    const attempt = (): Effect.Effect<A> | undefined => {
      try {
        const found = check()
        return found === undefined ? undefined : Effect.succeed(found)
      } catch (defect) {
        return Effect.die(defect)
      }
    }
    const first = attempt()
    if (first !== undefined) return resume(first)
    const listener = () => {
      const done = attempt()
      if (done === undefined) return
      engine.listeners.delete(listener)
      resume(done)
    }
    engine.listeners.add(listener)
    return Effect.sync(() => {
      engine.listeners.delete(listener)
    })
  })

/**
 * Starts a test broker that lives as long as the scope; closing the scope drops every connection still open.
 * Most tests use {@link layer} or {@link layerWithClient}.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { MqttTestBroker } from "effect-mqtt"
 *
 * const program = Effect.gen(function*() {
 *   const broker = yield* MqttTestBroker.make({ maxQueued: 10 })
 *   const client = yield* broker.makeClient({ clientId: "device-1", protocolVersion: 5 })
 *   yield* client.publish("status/device-1", "online", { qos: 1, retain: true })
 *   const retained = yield* broker.retained("status/#")
 * }).pipe(Effect.scoped)
 * ```
 *
 * @since 0.2.0
 * @category constructors
 */
export const make = (options?: Options): Effect.Effect<Broker, never, Scope.Scope> =>
  Effect.gen(function*() {
    const clock = yield* Clock.Clock
    const timers = yield* FiberSet.make()
    const run = yield* FiberSet.runtime(timers)()
    const engine = new Engine(
      {
        maxInflight: options?.maxInflight ?? 20,
        maxQueued: options?.maxQueued ?? 1000,
        receiveMaximum: options?.receiveMaximum ?? 20,
        maximumQoS: options?.maximumQoS ?? 2,
        retainAvailable: options?.retainAvailable ?? true,
        topicAliasMaximum: options?.topicAliasMaximum ?? 10,
        history: options?.history ?? 10_000,
        authenticate: options?.authenticate
      },
      () => clock.currentTimeMillisUnsafe(),
      (millis, f) => {
        const fiber = run(Effect.andThen(Effect.sleep(millis), Effect.sync(f)))
        return () => fiber.interruptUnsafe()
      }
    )
    yield* Effect.addFinalizer(() => Effect.sync(() => engine.stop(false)))

    const socket = Effect.sync(() => MemorySocket.make((wire) => engine.accept(wire)))
    const matching = (filter: string, messages: Iterable<Message>) =>
      [...messages].filter((message) => Topic.matches(message.topic, filter)).map(toMqttMessage)
    const clientInfo = (clientId: string) => engine.sessionInfo().find((info) => info.clientId === clientId)
    const stop = (persistence: boolean | undefined) => Effect.sync(() => engine.stop(persistence === true))

    const broker: Broker = {
      socket,
      makeClient: (clientOptions) => MqttClient.make({ ...clientOptions, transport: socket }),
      publish: (topic, payload, publishOptions) =>
        Effect.suspend((): Effect.Effect<void, MqttError.InvalidTopicError | MqttError.InvalidOptionError> => {
          const reason = Topic.nameProblem(topic)
          if (reason !== undefined) {
            return Effect.fail(new MqttError.InvalidTopicError({ topic: String(topic), kind: "name", reason }))
          }
          const qos = publishOptions?.qos ?? 0
          if (qos !== 0 && qos !== 1 && qos !== 2) {
            return Effect.fail(new MqttError.InvalidOptionError({ option: "qos", reason: "expected 0, 1 or 2" }))
          }
          if (typeof payload !== "string" && !(payload instanceof Uint8Array)) {
            return Effect.fail(
              new MqttError.InvalidOptionError({ option: "payload", reason: "expected a Uint8Array or a string" })
            )
          }
          const properties = Packets.fromPublishProperties(publishOptions?.properties)
          const expiry = properties.messageExpiryInterval
          engine.publish({
            topic,
            payload: typeof payload === "string" ? encoder.encode(payload) : payload,
            qos,
            retain: publishOptions?.retain ?? false,
            properties,
            expiresAt: expiry === undefined ? undefined : clock.currentTimeMillisUnsafe() + expiry * 1000,
            publisher: undefined
          })
          return Effect.void
        }),
      published: (filter = "#") => Effect.sync(() => matching(filter, engine.history)),
      awaitPublished: (filter, count = 1) =>
        waitFor(engine, () => {
          const found = matching(filter, engine.history)
          return found.length >= count && Arr.isArrayNonEmpty(found) ? found : undefined
        }),
      retained: (filter = "#") => Effect.sync(() => matching(filter, engine.retained.values())),
      clients: Effect.sync(() => engine.sessionInfo()),
      awaitClient: (clientId, predicate = (info) => info.connected) =>
        waitFor(engine, () => {
          const info = clientInfo(clientId)
          return info !== undefined && predicate(info) ? info : undefined
        }),
      awaitSubscription: (filter) =>
        waitFor(
          engine,
          () => engine.sessionInfo().find((info) => info.connected && info.subscriptions.includes(filter))
        ),
      disconnect: (clientId, disconnectOptions) =>
        Effect.sync(() => engine.disconnect(clientId, disconnectOptions?.reasonCode)),
      stop: (stopOptions) => stop(stopOptions?.persistence),
      start: Effect.sync(() => engine.start()),
      restart: (restartOptions) => Effect.andThen(stop(restartOptions?.persistence), Effect.sync(() => engine.start()))
    }
    return broker
  })

/**
 * A layer with a test broker, for the life of the layer.
 *
 * @example
 * ```ts
 * import { Layer } from "effect"
 * import { MqttTestBroker } from "effect-mqtt"
 *
 * // the broker and a client connected to it
 * const TestLive = MqttTestBroker.layerClient({ clientId: "app" }).pipe(Layer.provideMerge(MqttTestBroker.layer()))
 * ```
 *
 * @since 0.2.0
 * @category layers
 */
export const layer = (options?: Options): Layer.Layer<MqttTestBroker> => Layer.effect(MqttTestBroker, make(options))

/**
 * An `MqttClient` connected to the test broker of the context, built with `options` (its `transport` is the
 * broker's). Its keepalive, reconnect and timeouts are the client's own defaults: under `TestClock` they run
 * only when the test moves the clock, and the broker answers every ping before the ping timeout is looked at.
 *
 * @example
 * ```ts
 * import { Layer } from "effect"
 * import { MqttTestBroker } from "effect-mqtt"
 *
 * const ClientLive = MqttTestBroker.layerClient({ protocolVersion: 5 })
 * const TestLive = ClientLive.pipe(Layer.provideMerge(MqttTestBroker.layer()))
 * ```
 *
 * @since 0.2.0
 * @category layers
 */
export const layerClient = (
  options?: MqttClient.Options
): Layer.Layer<MqttClient.MqttClient, MqttError.MqttError, MqttTestBroker> =>
  Layer.effect(
    MqttClient.MqttClient,
    Effect.flatMap(Effect.service(MqttTestBroker), (broker) => broker.makeClient(options))
  )

/**
 * Both: a test broker and an `MqttClient` connected to it (see {@link layer} and {@link layerClient}). The
 * client is released (DISCONNECT sent) before the broker.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { MqttClient, MqttTestBroker } from "effect-mqtt"
 *
 * const program = Effect.gen(function*() {
 *   const client = yield* MqttClient.MqttClient
 *   const broker = yield* MqttTestBroker.MqttTestBroker
 *   yield* client.publish("status", "up", { qos: 1 })
 *   const [message] = yield* broker.awaitPublished("status")
 * }).pipe(Effect.provide(MqttTestBroker.layerWithClient({ protocolVersion: 5 })))
 * ```
 *
 * @since 0.2.0
 * @category layers
 */
export const layerWithClient = (
  clientOptions?: MqttClient.Options,
  brokerOptions?: Options
): Layer.Layer<MqttTestBroker | MqttClient.MqttClient, MqttError.MqttError> =>
  layerClient(clientOptions).pipe(Layer.provideMerge(layer(brokerOptions)))
