/**
 * Schema-typed topics: declare a topic once, then publish and subscribe with typed parameters and payloads.
 *
 * `MqttTopic.make(pattern, schema)` ties a topic's shape to its payload: `{deviceId}` is a level whose value
 * becomes a parameter (the filter has `+` there), a trailing `{path...}` stands for `#` and gives the remaining
 * levels. Payloads are JSON by default (`codec: "text"` for UTF-8 text, `"bytes"` for raw bytes). Publishing
 * checks the parameters and encodes with the Schema before anything is sent; subscribing decodes each message,
 * and `onDecodeError` says what to do with one that does not decode: fail the stream (the default), skip it,
 * or hand it to a dead-letter handler.
 *
 * Run: `npm run example examples/10-typed-topics.ts` (set `MQTT_URL` to use your own broker, `memory:` for the test
 * broker).
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Schema, Stream } from "effect"
import { MqttTopic } from "effect-mqtt"
import { publishSamples, withBroker } from "./_broker.ts"

const Temperature = MqttTopic.make(
  "sensors/{deviceId}/temperature",
  Schema.Struct({ celsius: Schema.Number, at: Schema.DateFromString })
)

const Logs = MqttTopic.make("logs/{app}/{path...}", Schema.String, { codec: "text" })

const program = Effect.gen(function*() {
  const readings = yield* MqttTopic.subscribe(Temperature, {
    qos: 1,
    // a malformed reading goes to the dead-letter handler, with the raw message; the stream goes on
    onDecodeError: {
      deadLetter: (error) => Console.log(`dead letter: ${error.topic} "${error.mqttMessage.text}"`)
    }
  })
  const logs = yield* MqttTopic.subscribe(Logs, { qos: 1 })

  yield* MqttTopic.publish(Temperature, { deviceId: "kitchen" }, {
    celsius: 21.5,
    at: new Date("2024-01-01T08:00:00Z")
  }, { qos: 1 })
  // another device sends something that is not a reading
  yield* publishSamples([["sensors/hall/temperature", "not json"]])
  yield* MqttTopic.publish(Temperature, { deviceId: "cellar" }, {
    celsius: 12,
    at: new Date("2024-01-01T08:01:00Z")
  }, { qos: 1 })

  // a parameter that would change the topic's shape is refused before anything is sent
  const refused = yield* Effect.flip(
    MqttTopic.publish(Temperature, { deviceId: "kitchen/oven" }, { celsius: 200, at: new Date() })
  )
  yield* Console.log(`refused: ${refused.message}`)

  yield* readings.pipe(
    Stream.take(2),
    Stream.runForEach(({ params, payload }) =>
      Console.log(`${params.deviceId}: ${payload.celsius} °C at ${payload.at.toISOString()}`)
    )
  )

  yield* MqttTopic.publish(Logs, { app: "api", path: ["http", "errors"] }, "upstream timed out", { qos: 1 })
  yield* logs.pipe(
    Stream.take(1),
    Stream.runForEach(({ params, payload }) => Console.log(`${params.app} [${params.path.join(" > ")}]: ${payload}`))
  )
})

program.pipe(Effect.scoped, withBroker(), NodeRuntime.runMain)
