import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Stream } from "effect"
import { MqttClient } from "effect-mqtt"
import { withBroker } from "./_broker.ts"

const program = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  yield* client.subscribe("readings/#", { qos: 1 })
  yield* client.publish("readings/kitchen", "21.5", { qos: 1 })
  yield* client.publish("readings/hall", "19.0", { qos: 1 })
  yield* client.messages.pipe(
    Stream.take(2),
    Stream.runForEach((message) => Console.log(`${message.topic}: ${message.text}`))
  )
})

program.pipe(
  withBroker({
    clientId: "docs-thermometer",
    will: { topic: "status/docs-thermometer", payload: "offline", qos: 1 }
  }),
  NodeRuntime.runMain
)
