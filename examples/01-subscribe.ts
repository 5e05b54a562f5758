/**
 * Subscribe to a topic filter and print what arrives.
 *
 * The client is a service: the program asks for `MqttClient.MqttClient`, and the layer provided at the end
 * connects before the program runs and disconnects after it. `client.messages` is a `Stream` of every
 * message received, whichever subscription it came from.
 *
 * Run: `npm run example examples/01-subscribe.ts` (set `MQTT_URL` to use your own broker).
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Stream } from "effect"
import { MqttClient } from "effect-mqtt"
import { publishSamples, withBroker } from "./_broker.ts"

const readings = [
  ["temperature/inside", "21.5"],
  ["temperature/outside", "8.0"],
  ["temperature/garage/floor", "12.25"]
] as const

const program = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  // Subscribe first: the broker only delivers messages that arrive after the subscription exists.
  // QoS 1 asks the broker to deliver at least once (QoS 0 messages may be lost on the way).
  yield* client.subscribe("temperature/#", { qos: 1 })

  // Another device publishes some readings.
  yield* publishSamples(readings)

  // Print each message as it arrives; stop after the three readings so the example ends.
  yield* client.messages.pipe(
    Stream.take(readings.length),
    Stream.runForEach((message) => Console.log(`${message.topic}: ${message.text}`))
  )
})

program.pipe(withBroker(), NodeRuntime.runMain)
