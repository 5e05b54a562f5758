/**
 * Stop listening after a timeout.
 *
 * `Effect.timeout` interrupts the listener when the time is up and fails with `Cause.TimeoutError`;
 * whatever the listener did before that is kept. (`Effect.timeoutOption` gives `Option.none()` instead of
 * failing.) Match the error with `Cause.isTimeoutError` (or `catchTag("TimeoutError")`): the client's own
 * timeouts, raised when the broker does not answer, are `MqttError.MqttTimeoutError`, tagged `"MqttTimeoutError"`,
 * and are not caught by either.
 *
 * Run: `npm run example examples/08-timeout.ts` (set `MQTT_URL` to use your own broker).
 */
import { NodeRuntime } from "@effect/platform-node"
import { Cause, Console, Effect, Stream } from "effect"
import { MqttClient, type MqttMessage } from "effect-mqtt"
import { publishSamples, withBroker } from "./_broker.ts"

const program = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  yield* client.subscribe("temperature/#", { qos: 1 })
  yield* publishSamples([1, 2, 3].map((n) => ["temperature/inside", `reading ${n}`] as const))

  const received: Array<MqttMessage.MqttMessage> = []
  // This listener never ends by itself: the timeout stops it.
  yield* client.messages.pipe(
    Stream.runForEach((message) =>
      Effect.sync(() => received.push(message)).pipe(
        Effect.andThen(Console.log(`received ${message.topic} ${message.text}`))
      )
    ),
    Effect.timeout("2 seconds"),
    Effect.catchIf(Cause.isTimeoutError, () => Console.log("timed out after 2 seconds"))
  )
  yield* Console.log(`received ${received.length} messages before the timeout`)
})

program.pipe(withBroker(), NodeRuntime.runMain)
