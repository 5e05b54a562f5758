import { NodeRuntime } from "@effect/platform-node"
import { Console, Data, Effect, Stream } from "effect"
import { MqttClient, MqttMessage } from "effect-mqtt"
import { Broker, BrokerLive, publishSamples } from "./_broker.ts"

class SaveError extends Data.TaggedError("SaveError")<{ readonly order: string }> {}

let failures = 1
// saving order 2 fails once, say the database was away
const save = (message: MqttMessage.MqttMessage) =>
  message.text === "order 2" && failures-- > 0
    ? Effect.fail(new SaveError({ order: message.text }))
    : Console.log(`saved ${message.text}`)

const program = Effect.gen(function*() {
  const broker = yield* Broker
  const options: MqttClient.Options = {
    ...broker.options,
    clientId: "docs-orders",
    cleanStart: false, // a persistent session (on MQTT 5, also a sessionExpiryInterval)
    acknowledgement: "manual"
  }

  const run = Effect.scoped(Effect.gen(function*() {
    const client = yield* MqttClient.make(options)
    yield* client.subscribe("docs/orders/#", { qos: 1 })
    yield* publishSamples([["docs/orders/1", "order 1"], ["docs/orders/2", "order 2"], ["docs/orders/3", "order 3"]])
    // each order is acknowledged once saved; a failure stops the stream and leaves its order unacknowledged
    yield* client.messages.pipe(Stream.take(3), Stream.runForEach(MqttMessage.ackAfter(save)))
  }))

  yield* run.pipe(Effect.catchTag("SaveError", (error) => Console.log(`could not save ${error.order}: stopped`)))
  // the next connection of the session: the broker sends again what was not acknowledged
  yield* Effect.scoped(Effect.gen(function*() {
    const client = yield* MqttClient.make(options)
    yield* client.messages.pipe(Stream.take(2), Stream.runForEach(MqttMessage.ackAfter(save)))
  }))

  // end the session
  yield* Effect.scoped(MqttClient.make({ ...options, cleanStart: true }))
})

program.pipe(Effect.provide(BrokerLive), NodeRuntime.runMain)
