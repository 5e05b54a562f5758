import { NodeFileSystem, NodePath, NodeRuntime } from "@effect/platform-node"
import { Console, Effect, FileSystem, Layer, Schedule, Stream } from "effect"
import { MqttClient, MqttSessionStore } from "effect-mqtt"
import { Broker, publishSamples, withBroker } from "./_broker.ts"

// 1. The connection drops and comes back; subscriptions are restored.
const reconnection = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  yield* client.statusChanges.pipe(
    Stream.runForEach((status) =>
      Console.log(status._tag === "Disconnected" ? `Disconnected: ${status.cause._tag}` : status._tag)
    ),
    Effect.forkScoped
  )
  yield* client.subscribe("docs/reconnect/#", { qos: 1 })

  // a second connection with the same client identifier: the broker closes the first, as a lost network would
  const broker = yield* Broker
  yield* Effect.scoped(MqttClient.make({ ...broker.options, clientId: "docs-reconnect", reconnect: false }))
  yield* client.metrics.pipe(
    Effect.repeat({ until: (metrics) => metrics.reconnects === 1, schedule: Schedule.spaced("10 millis") })
  )

  yield* publishSamples([["docs/reconnect/door", "open"]])
  const [message] = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
  yield* Console.log(`after the reconnection: ${message.topic} ${message.text}`)
}).pipe(Effect.scoped)

// 2. A persistent session outlives the process: the broker keeps the subscriptions and queues QoS 1/2 messages,
//    the store keeps the client's half (its unfinished publishes and acknowledgements).
const durableSession = Effect.gen(function*() {
  const broker = yield* Broker
  const directory = yield* FileSystem.FileSystem.use((fs) => fs.makeTempDirectoryScoped())
  const store = yield* MqttSessionStore.fileSystem(directory)
  const options = { ...broker.options, clientId: "docs-session", cleanStart: false, store }

  yield* Effect.scoped(Effect.gen(function*() {
    const device = yield* MqttClient.make(options)
    yield* device.subscribe("docs/session/#", { qos: 1 })
  }))
  // the device is offline (its process stopped); commands for it are queued by the broker
  yield* publishSamples([["docs/session/cmd", "reboot"], ["docs/session/cmd", "update"]])

  yield* Effect.scoped(Effect.gen(function*() {
    // the process starts again, with the same client identifier and store
    const device = yield* MqttClient.make(options)
    yield* Console.log(`session present: ${device.connection.sessionPresent}`)
    yield* device.messages.pipe(
      Stream.take(2),
      Stream.runForEach((message) => Console.log(`queued while offline: ${message.text}`))
    )
  }))

  // end the session: a clean start, with the store cleared
  yield* Effect.scoped(MqttClient.make({ ...options, cleanStart: true, clearStore: true }))
}).pipe(Effect.scoped)

Effect.gen(function*() {
  yield* reconnection
  yield* durableSession
}).pipe(
  withBroker({ clientId: "docs-reconnect" }),
  Effect.provide(Layer.merge(NodeFileSystem.layer, NodePath.layer)),
  NodeRuntime.runMain
)
