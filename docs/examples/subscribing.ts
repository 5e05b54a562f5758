import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Stream } from "effect"
import { MqttClient, Topic } from "effect-mqtt"
import { publishSamples, withBroker } from "./_broker.ts"

const program = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient

  // one SUBSCRIBE for several filters; the broker says what it granted for each
  const granted = yield* client.subscribe(["temperature/#", { filter: "humidity/+", qos: 0 }], { qos: 1 })
  for (const { filter, qos } of granted) yield* Console.log(`subscribed to ${filter} with qos ${qos}`)

  yield* publishSamples([
    ["temperature/inside", "21.5"],
    ["humidity/inside", "45"],
    ["temperature/outside", "8.0"]
  ])

  // every message of every subscription arrives on `messages`; filter them by topic
  yield* client.messages.pipe(
    Stream.take(3),
    Stream.runForEach((message) =>
      Topic.matches(message.topic, "+/outside")
        ? Console.log(`outside: ${message.text}`)
        : Console.log(`${message.topic}: ${message.text}`)
    )
  )

  // a subscription with a stream of its own, for as long as its scope lasts
  yield* Effect.scoped(Effect.gen(function*() {
    const alerts = yield* client.subscription("alerts/#", { qos: 1 })
    yield* publishSamples([["alerts/smoke", "kitchen"]])
    yield* alerts.pipe(
      Stream.take(1),
      Stream.runForEach((message) => Console.log(`alert: ${message.topic} ${message.text}`))
    )
  }))

  yield* client.unsubscribe(["temperature/#", "humidity/+"])
  yield* Console.log("unsubscribed")
})

program.pipe(withBroker(), NodeRuntime.runMain)
