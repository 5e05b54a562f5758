/**
 * Filter messages: one stream for all subscriptions, dispatched by topic with `Topic.matches`.
 *
 * `client.messages` carries the messages of every subscription together. To handle topics differently,
 * test each message's topic against topic filters with `Topic.matches`, which follows the MQTT rules:
 * `+` is exactly one level, `#` is any number of levels. A topic can match several filters: here
 * `temperature/outside` matches both `+/outside` and `temperature/#`, so two handlers run for it.
 *
 * Run: `npm run example examples/02-filtering.ts` (set `MQTT_URL` to use your own broker).
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Stream } from "effect"
import { MqttClient, type MqttMessage, Topic } from "effect-mqtt"
import { publishSamples, withBroker } from "./_broker.ts"

// A handler per topic filter. These only print which handler ran; yours would do the work.
const handlers = ["humidity/inside", "+/outside", "temperature/#"].map((filter) => ({
  filter,
  handle: (message: MqttMessage.MqttMessage) => Console.log(`[${filter}] ${message.topic}: ${message.text}`)
}))

// Every handler whose filter matches the topic runs, not only the first one.
const dispatch = (message: MqttMessage.MqttMessage) =>
  Effect.forEach(
    handlers.filter(({ filter }) => Topic.matches(message.topic, filter)),
    ({ handle }) => handle(message),
    { discard: true }
  )

const samples = [
  ["humidity/inside", "45"],
  ["humidity/outside", "80"],
  ["temperature/inside", "21.5"],
  ["temperature/outside", "8.0"]
] as const

const program = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  // Two filters that do not overlap cover every sample. Overlapping subscriptions (say `#` and
  // `temperature/#`) would let the broker send a message once per subscription or once in all:
  // MQTT 3.1.1 allows both.
  yield* client.subscribe(["humidity/#", "temperature/#"], { qos: 1 })
  yield* publishSamples(samples)
  yield* client.messages.pipe(
    Stream.take(samples.length),
    Stream.runForEach(dispatch)
  )
})

program.pipe(withBroker(), NodeRuntime.runMain)
