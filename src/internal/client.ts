/**
 * `MqttClient.make`: wiring. The session (session.ts) holds the protocol state; the driver runs what it
 * produces; the supervisor (supervisor.ts) owns the connections (connection.ts); deliveries (delivery.ts) own
 * the queues behind the streams; operations.ts and requestResponse.ts are the caller's side.
 */
import type * as Arr from "effect/Array"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as SubscriptionRef from "effect/SubscriptionRef"
import type * as MqttClient from "../MqttClient.ts"
import * as MqttError from "../MqttError.ts"
import { reauthenticate } from "./auth.ts"
import * as Broker from "./broker.ts"
import { runForEachByKey } from "./byKey.ts"
import { Deliveries } from "./delivery.ts"
import { Driver } from "./driver.ts"
import * as Failover from "./failover.ts"
import * as Operations from "./operations.ts"
import { invalid, type Resolved, resolveOptions } from "./options.ts"
import type { Platform } from "./platform.ts"
import * as RequestResponse from "./requestResponse.ts"
import { Session } from "./session.ts"
import { clear, JournalWriter, load, locate, prefixOf, type SessionStore } from "./store.ts"
import { closedByClient, Supervisor } from "./supervisor.ts"
import { ClientMetrics, receiveSpan } from "./telemetry.ts"
import type { Endpoint } from "./url.ts"

export { defaultReconnect } from "./options.ts"

/**
 * A durable session: restores what the store holds for this broker and client identifier, then journals every
 * change ahead of the packets that depend on it (see store.ts).
 */
const durable = (
  store: SessionStore,
  clearStore: boolean,
  /** the nodes of `url`, in order (undefined: a custom transport) */
  brokers: readonly [string | undefined, ...Array<string | undefined>],
  session: Session,
  driver: Driver,
  supervisor: Supervisor,
  scope: Scope.Scope
) =>
  Effect.gen(function*() {
    const [first, ...others] = brokers.map((broker) => prefixOf(broker ?? "custom-transport", session.clientId))
    if (clearStore) yield* Effect.forEach([first, ...others], (prefix) => clear(store, prefix), { discard: true })
    const prefix = yield* locate(store, [first, ...others])
    const loaded = yield* load(store, prefix)
    session.restore(loaded.image, brokers.length)
    const journal = new JournalWriter(store, prefix, loaded, () => driver.outbox, (m) => supervisor.log("Warn", m))
    driver.journal = journal
    driver.out.journal = []
    driver.deliveries.storeBeforeTake(driver.beforeTake)
    yield* Effect.forkIn(journal.run, scope)
  })

/** The attributes of an operation's span, in OpenTelemetry's messaging conventions. */
const span = (operation: string, destination: string) => ({
  attributes: {
    "messaging.system": "mqtt",
    "messaging.operation.name": operation,
    "messaging.destination.name": destination
  }
})

const filtersOf = (
  filters: string | MqttClient.Subscription | ReadonlyArray<string | MqttClient.Subscription>
): string =>
  (Array.isArray(filters) ? filters : [filters as string | MqttClient.Subscription])
    .map((f) => typeof f === "object" && f !== null ? String(f.filter) : String(f)).join(",")

/** The socket and writer to one broker, for the life of the scope. */
const makeNode = (
  options: MqttClient.Options,
  platform: Platform,
  endpoint: Endpoint,
  node: Pick<Failover.Node, "broker" | "username" | "password" | "index" | "origin">
): Effect.Effect<Failover.Node, MqttError.MqttError, Scope.Scope> =>
  Effect.gen(function*() {
    const socket = yield* platform.makeSocket(endpoint, options)
    const writer = yield* socket.writer
    return {
      ...node,
      endpoint: options.transport === undefined ? endpoint : undefined,
      socket,
      writer: writer.writeAll,
      writeNow: socket.writeNow,
      readNow: socket.readNow
    }
  })

/** The session of the resolved options: what the protocol remembers, with no Effect inside. */
const sessionOf = (o: Resolved): Session =>
  new Session({
    protocolVersion: o.protocolVersion,
    clientId: o.clientId,
    cleanStart: o.cleanStart,
    sessionExpiryInterval: o.sessionExpiryInterval,
    keepAlive: o.keepAlive,
    maxInflight: o.maxInflight,
    sendMaximumPacketSize: o.sendMaximumPacketSize,
    // announced in CONNECT is `o.receiveMaximum`; the session disconnects beyond what it enforces
    receiveMaximum: o.receiveMaximum,
    topicAliasMaximum: o.topicAliasMaximum,
    topicAliases: o.topicAliases,
    offlineCapacity: o.offlineCapacity,
    offlineQos0: o.offlineQos0,
    offlineRequests: o.offlineRequests,
    overlapping: o.overlapping,
    strictReceiveMaximum: o.strictReceiveMaximum,
    authenticationMethod: o.protocolVersion === 5 ? o.auth?.method : undefined
  })

/**
 * Connects and returns the client; releasing the scope disconnects. The platform's transports make the socket
 * (Node's entry passes transport.ts, the browser's browserTransport.ts).
 */
export const make = (
  options: MqttClient.Options,
  platform: Platform
): Effect.Effect<MqttClient.Client, MqttError.MqttError, Scope.Scope> =>
  Effect.gen(function*() {
    const o = yield* resolveOptions(options)
    const scope = yield* Effect.scope
    const session = sessionOf(o)
    const metrics = new ClientMetrics(o.clientId, yield* Effect.context<never>())
    // added before the shutdown's finalizer, so run after it: the series' last read sees its last updates
    yield* Scope.addFinalizer(scope, Effect.sync(() => metrics.release()))
    // the session's and the deliveries' warnings are the client's log lines: through the application's logger
    // (the services of `make`), filtered by `logLevel`, annotated with the broker
    const context = yield* Effect.context<never>()
    let supervisor: Supervisor | undefined
    const warn = (warning: string) => {
      if (supervisor !== undefined) Effect.runForkWith(context)(supervisor.log("Warn", warning))
    }
    let driver: Driver
    const deliveries = new Deliveries(
      o.queue,
      o.acknowledgement === "manual",
      (record) => driver.settled(record),
      {
        isStale: (record) => driver.isStale(record),
        awaitsConnection: (record) => driver.awaitsConnection(record),
        abandon: (record) => driver.abandon(record)
      },
      metrics,
      warn,
      // half the broker's window (see `Deliveries.watchUnread`)
      o.protocolVersion === 5 ? Math.max(1, Math.floor(o.receiveMaximum / 2)) : 10
    )
    driver = new Driver(session, deliveries, metrics, warn)
    const configured: Array<Failover.Node> = []
    for (let index = 0; index < o.nodes.length; index++) {
      const { url, endpoint, username, password } = o.nodes[index]
      const broker = options.transport === undefined ? Broker.display(url) : undefined
      configured.push(
        yield* makeNode(options, platform, endpoint, { broker, username, password, index, origin: index })
      )
    }
    // the parent of every connection's scope, made before the finalizer that sends DISCONNECT, so that on
    // release it closes after it: the connection is still open when the DISCONNECT is written
    const parent = yield* Scope.fork(scope)
    const nodes = new Failover.Nodes(
      configured as unknown as Arr.NonEmptyReadonlyArray<Failover.Node>,
      o.followServerReference,
      // a place a Server Reference led to: its socket writer lives in a scope of its own under the connections',
      // closed when the place is let go
      (endpoint, broker, from) =>
        Effect.gen(function*() {
          const own = yield* Scope.fork(parent)
          const node = yield* Scope.provide(
            makeNode(options, platform, endpoint, {
              broker,
              username: from.username,
              password: from.password,
              index: -1,
              origin: from.origin
            }),
            own
          ).pipe(Effect.onError(() => Scope.close(own, Exit.void)))
          return { node, release: Scope.close(own, Exit.void) }
        })
    )
    const status = yield* SubscriptionRef.make<MqttClient.ConnectionStatus>({
      _tag: "Connecting",
      attempt: 1,
      ...(nodes.first.broker === undefined ? {} : { broker: nodes.first.broker })
    })
    const authData = { current: o.auth?.data }
    supervisor = new Supervisor({ options: o, parent, driver, authData }, nodes, status)
    // a durable session is kept per broker (the first of a cluster's list, or the node under which the last process
    // stored it) and client identifier
    if (o.store !== undefined) {
      const brokers = nodes.configured.map((node) => node.broker) as unknown as readonly [string | undefined]
      yield* durable(o.store, o.clearStore, brokers, session, driver, supervisor, scope)
    }
    yield* supervisor.start(scope)
    yield* Scope.addFinalizer(
      scope,
      supervisor.shutdown(closedByClient, o.disconnectReasonCode, o.disconnectSessionExpiry)
    )

    const ctx: Operations.Context = { options: o, session, driver, deliveries, supervisor }
    const { request, respond } = RequestResponse.make(ctx)
    const subscribe = Operations.subscribe(ctx)
    const unsubscribe = Operations.unsubscribe(ctx)
    const client: MqttClient.Client = {
      // publish is the hot path: a span per message would cost more than the rest of the publish
      publish: Operations.publish(ctx),
      publishAccepted: Operations.publishAccepted(ctx),
      subscribe: (filters, options) =>
        Effect.withSpan(subscribe(filters, options), "MqttClient.subscribe", span("subscribe", filtersOf(filters))),
      unsubscribe: (filters, options) =>
        Effect.withSpan(
          unsubscribe(filters, options),
          "MqttClient.unsubscribe",
          span("unsubscribe", filtersOf(filters))
        ),
      messages: o.tracing.messages ? Stream.tap(deliveries.messages.stream, receiveSpan) : deliveries.messages.stream,
      runForEachByKey: (handler, options) =>
        runForEachByKey(
          deliveries.messages,
          o.tracing.messages ? (m) => Effect.andThen(receiveSpan(m), handler(m)) : handler,
          options
        ),
      droppedMessages: Effect.sync(() => deliveries.dropped),
      queuedMessages: Effect.sync(() => deliveries.messages.size),
      get connection() {
        return supervisor.info ?? session.info!
      },
      status: SubscriptionRef.get(status),
      // `Closed` is the last state: the stream ends with it (a consumer outside the client's scope is not left waiting)
      statusChanges: Stream.takeUntil(
        SubscriptionRef.changes(status) as Stream.Stream<MqttClient.ConnectionStatus>,
        (s) => s._tag === "Closed"
      ),
      metrics: Effect.sync(() => ({ ...supervisor.metrics, droppedMessages: deliveries.dropped })),
      awaitClose: Deferred.await(supervisor.closedSignal),
      subscription: Operations.subscription(ctx),
      request: (topic, payload, options) =>
        Effect.withSpan(request(topic, payload, options), "MqttClient.request", {
          ...span("request", topic),
          kind: "client"
        }),
      respond,
      reauthenticate: (data) =>
        Effect.suspend(() => {
          if (o.auth === undefined) {
            return Effect.fail(invalid("auth", "the client was connected without enhanced authentication"))
          }
          if (session.closed !== undefined) return Effect.fail(session.closed)
          const c = supervisor.current
          if (c === undefined) {
            return Effect.fail(
              new MqttError.OfflineError({
                operation: "reauthenticate",
                reason: "re-authentication needs a connection"
              })
            )
          }
          return reauthenticate(o, c, data, () => {
            if (data !== undefined) authData.current = data
          })
        })
    }
    return client
  })
