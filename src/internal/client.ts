/**
 * `MqttClient.make`: wiring. The session (session.ts) holds the protocol state; the driver runs what it
 * produces; the supervisor (supervisor.ts) owns the connections (connection.ts); deliveries (delivery.ts) own
 * the queues behind the streams; operations.ts and requestResponse.ts are the caller's side.
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Scope from "effect/Scope"
import type * as Stream from "effect/Stream"
import * as SubscriptionRef from "effect/SubscriptionRef"
import type * as MqttClient from "../MqttClient.ts"
import * as MqttError from "../MqttError.ts"
import { reauthenticate } from "./auth.ts"
import * as Broker from "./broker.ts"
import { Deliveries } from "./delivery.ts"
import { Driver } from "./driver.ts"
import * as Operations from "./operations.ts"
import { invalid, resolveOptions } from "./options.ts"
import * as RequestResponse from "./requestResponse.ts"
import { Session } from "./session.ts"
import { clear, JournalWriter, load, prefixOf, type SessionStore } from "./store.ts"
import { closedByClient, Supervisor } from "./supervisor.ts"
import * as Transport from "./transport.ts"

export { defaultReconnect } from "./options.ts"

/**
 * A durable session: restores what the store holds for this broker and client identifier, then journals every
 * change ahead of the packets that depend on it (see store.ts).
 */
const durable = (
  store: SessionStore,
  clearStore: boolean,
  broker: string | undefined,
  session: Session,
  driver: Driver,
  supervisor: Supervisor,
  scope: Scope.Scope
) =>
  Effect.gen(function*() {
    const prefix = prefixOf(broker ?? "custom-transport", session.clientId)
    if (clearStore) yield* clear(store, prefix)
    const loaded = yield* load(store, prefix)
    session.restore(loaded.image)
    const journal = new JournalWriter(store, prefix, loaded, () => driver.outbox, (m) => supervisor.log("Warn", m))
    driver.journal = journal
    driver.out.journal = []
    yield* Effect.forkIn(journal.run, scope)
  })

/** Connects and returns the client; releasing the scope disconnects. */
export const make = (
  options: MqttClient.Options = {}
): Effect.Effect<MqttClient.Client, MqttError.MqttError, Scope.Scope> =>
  Effect.gen(function*() {
    const o = yield* resolveOptions(options)
    const scope = yield* Effect.scope
    const session = new Session({
      protocolVersion: o.protocolVersion,
      clientId: o.clientId,
      cleanStart: o.cleanStart,
      sessionExpiryInterval: o.sessionExpiryInterval,
      keepAlive: o.keepAlive,
      maxInflight: o.maxInflight,
      receiveMaximum: o.receiveMaximum,
      topicAliasMaximum: o.topicAliasMaximum,
      topicAliases: o.topicAliases,
      offlineCapacity: o.offlineCapacity,
      offlineQos0: o.offlineQos0,
      offlineRequests: o.offlineRequests,
      overlapping: o.overlapping
    })
    let driver: Driver
    const deliveries = new Deliveries(o.queue, o.acknowledgement === "manual", (record) => driver.settled(record))
    driver = new Driver(session, deliveries, (warning) => Effect.runFork(Effect.logWarning(warning)))
    const socket = yield* Transport.makeSocket(o.endpoint, options)
    const writer = yield* socket.writer
    // the parent of every connection's scope, made before the finalizer that sends DISCONNECT, so that on
    // release it closes after it: the connection is still open when the DISCONNECT is written
    const parent = yield* Scope.fork(scope)
    const status = yield* SubscriptionRef.make<MqttClient.ConnectionStatus>({ _tag: "Connecting", attempt: 1 })
    const broker = options.transport === undefined ? Broker.display(options.url ?? "mqtt://localhost:1883") : undefined
    const supervisor = new Supervisor({ options: o, socket, writer: writer.writeAll, parent, driver, broker }, status)
    if (o.store !== undefined) yield* durable(o.store, o.clearStore, broker, session, driver, supervisor, scope)
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
      subscribe: Effect.fn("MqttClient.subscribe")(function*(filters, options) {
        return yield* subscribe(filters, options)
      }),
      unsubscribe: Effect.fn("MqttClient.unsubscribe")(function*(filters, options) {
        return yield* unsubscribe(filters, options)
      }),
      messages: deliveries.messages.stream,
      droppedMessages: Effect.sync(() => deliveries.dropped),
      queuedMessages: Effect.sync(() => deliveries.messages.size),
      get connection() {
        return session.info!
      },
      status: SubscriptionRef.get(status),
      statusChanges: SubscriptionRef.changes(status) as Stream.Stream<MqttClient.ConnectionStatus>,
      metrics: Effect.sync(() => ({ ...supervisor.metrics, droppedMessages: deliveries.dropped })),
      awaitClose: Deferred.await(supervisor.closedSignal),
      subscription: Operations.subscription(ctx),
      request,
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
          return reauthenticate(o, c, data)
        })
    }
    return client
  })
