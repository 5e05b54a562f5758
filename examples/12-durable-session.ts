/**
 * Durable sessions: the client's half of a persistent session in a store, so that what it accepted survives the
 * process.
 *
 * An orders service publishes with QoS 2 and a file store. `publishAccepted` completes once a publish is stored:
 * from then on it is sent, by this client or by the next one started with the same store and client identifier.
 * Here the first client stops right after, before the broker has acknowledged everything, as a process that is
 * redeployed or killed would; its unfinished publishes fail for their callers but stay in the store. The next
 * client, with the same store, sends them again (with DUP, under the same packet identifiers) before anything
 * new, and the subscriber receives each order once.
 *
 * Run: `npm run example examples/12-durable-session.ts` (set `MQTT_URL` to use your own broker).
 */
import { NodeFileSystem, NodePath, NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Exit, Layer, Scope, Stream } from "effect"
import { MqttClient, MqttSessionStore } from "effect-mqtt"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { Broker, BrokerLive } from "./_broker.ts"

/** A directory of its own for the store, removed at the end. */
const storeDirectory = Effect.acquireRelease(
  Effect.sync(() => Fs.mkdtempSync(Path.join(Os.tmpdir(), "orders-service-"))),
  (directory) => Effect.sync(() => Fs.rmSync(directory, { recursive: true, force: true }))
)

const program = Effect.gen(function*() {
  const broker = yield* Broker
  // on Node.js: NodeFileSystem.layer and NodePath.layer (provided below)
  const store = yield* MqttSessionStore.fileSystem(yield* storeDirectory)
  const options: MqttClient.Options = {
    ...broker.options,
    clientId: "orders-service", // the store keeps one session per broker and client identifier
    cleanStart: false, // a persistent session (MQTT 5: a sessionExpiryInterval)
    store
  }

  // someone who wants the orders, connected all along
  const subscriber = yield* MqttClient.make(broker.options)
  yield* subscriber.subscribe("orders/#", { qos: 2 })

  // the first process; the service also listens for cancellations (and aedes, the examples' embedded broker,
  // answers Session Present 1 only to a client with subscriptions: with Session Present 0 the unfinished QoS 2
  // publishes would have to go again as new messages, which a broker that already had them delivers twice)
  const first = yield* Scope.make()
  const client = yield* MqttClient.make(options).pipe(Scope.provide(first))
  yield* client.subscribe("orders/cancelled", { qos: 1 })
  for (const id of [1, 2, 3]) {
    // accepted = stored: safe to tell the producer; the broker's PUBCOMP comes later
    yield* client.publishAccepted(`orders/${id}`, `order ${id}`, { qos: 2 })
    yield* Console.log(`stored: order ${id}`)
  }
  // it stops before the broker acknowledged everything
  yield* Scope.close(first, Exit.void)
  yield* Console.log("the first client stopped; what it did not finish is in the store")

  // the next process: the same store and client identifier carry on; what it resends goes before anything new
  const next = yield* MqttClient.make(options)
  yield* next.publish("orders/end", "that is all", { qos: 2 })
  const received = yield* subscriber.messages.pipe(
    Stream.takeWhile((message) => message.topic !== "orders/end"),
    Stream.runCollect
  )
  for (const message of [...received].sort((a, b) => a.topic.localeCompare(b.topic))) {
    yield* Console.log(`received: ${message.topic} ${message.text}`)
  }
})

program.pipe(
  Effect.scoped,
  Effect.provide(Layer.mergeAll(BrokerLive, NodeFileSystem.layer, NodePath.layer)),
  NodeRuntime.runMain
)
