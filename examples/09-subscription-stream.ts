/**
 * A stream per subscription, and the connection's status.
 *
 * `client.subscription(filter)` subscribes for as long as its scope lives and returns a stream of the messages
 * that subscription matches: they go there instead of `client.messages`. Closing the scope unsubscribes.
 * `client.statusChanges` reports the connection: `Connecting` (each attempt), `Connected` (with what the broker
 * said), `Disconnected` (with the cause and the delay before the next attempt), `Closed`.
 *
 * Run: `npm run example examples/09-subscription-stream.ts` (set `MQTT_URL` to use your own broker).
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Stream } from "effect"
import { MqttClient } from "effect-mqtt"
import { publishSamples, withBroker } from "./_broker.ts"

const program = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  const status = yield* client.status
  yield* Console.log(`status: ${status._tag}, session present: ${client.connection.sessionPresent}`)

  // everything else arrives on `messages`
  yield* client.subscribe("temperature/#", { qos: 1 })

  yield* Effect.scoped(Effect.gen(function*() {
    // the alerts have a stream of their own
    const alerts = yield* client.subscription("alerts/#", { qos: 1 })
    yield* publishSamples([
      ["temperature/inside", "21.5"],
      ["alerts/smoke", "kitchen"],
      ["temperature/outside", "8.0"],
      ["alerts/door", "open"]
    ])
    yield* alerts.pipe(
      Stream.take(2),
      Stream.runForEach((message) => Console.log(`alert stream: ${message.topic} ${message.text}`))
    )
    yield* client.messages.pipe(
      Stream.take(2),
      Stream.runForEach((message) => Console.log(`messages: ${message.topic} ${message.text}`))
    )
  }))
  // the scope closed: the alerts subscription is gone, and so would be any later alert
  yield* Console.log("alert subscription closed")
})

program.pipe(withBroker(), NodeRuntime.runMain)
