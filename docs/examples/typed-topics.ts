import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Option, Schema, Stream } from "effect"
import { MqttTopic } from "effect-mqtt"
import { publishSamples, withBroker } from "./_broker.ts"

// the topic's shape and its payload, declared once
const Temperature = MqttTopic.make(
  "sensors/{room}/temperature",
  Schema.Struct({ celsius: Schema.Number })
)

const program = Effect.gen(function*() {
  // the filter is sensors/+/temperature; a message that does not decode is skipped
  const readings = yield* MqttTopic.subscribe(Temperature, { qos: 1, onDecodeError: "skip" })

  yield* MqttTopic.publish(Temperature, { room: "kitchen" }, { celsius: 21.5 }, { qos: 1 })
  yield* publishSamples([["sensors/hall/temperature", "not json"]])
  yield* MqttTopic.publish(Temperature, { room: "cellar" }, { celsius: 12 }, { qos: 1 })

  yield* readings.pipe(
    Stream.take(2),
    Stream.runForEach(({ params, payload }) => Console.log(`${params.room}: ${payload.celsius} °C`))
  )
  yield* Console.log(`skipped: ${yield* MqttTopic.decodeFailureCount(Temperature)}`)

  // checked before anything is sent: a parameter must be one level, the payload must encode
  const badRoom = yield* Effect.flip(MqttTopic.publish(Temperature, { room: "a/b" }, { celsius: 1 }))
  yield* Console.log(`${badRoom._tag}: ${badRoom.message}`)

  // topic names without a client
  const name = yield* MqttTopic.format(Temperature, { room: "attic" })
  const params = MqttTopic.match(Temperature, "sensors/garage/temperature")
  yield* Console.log(`format: ${name}, match: ${Option.getOrUndefined(params)?.room}`)
}).pipe(Effect.scoped)

program.pipe(withBroker(), NodeRuntime.runMain)
