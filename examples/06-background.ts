/**
 * Listen in the background while the program does something else.
 *
 * `Effect.forkScoped` starts the listener in its own fiber and ties it to the enclosing scope: the main
 * fiber carries on at once, and if it ends or fails before the listener is done, closing the scope
 * interrupts the listener. Nothing outlives the program. (`Effect.forkChild` ties the fiber to the parent
 * fiber instead.)
 *
 * Run: `npm run example examples/06-background.ts` (set `MQTT_URL` to use your own broker).
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Fiber, Stream } from "effect"
import { MqttClient } from "effect-mqtt"
import { withBroker } from "./_broker.ts"

const program = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  yield* client.subscribe("temperature/#", { qos: 1 })

  const listener = yield* client.messages.pipe(
    Stream.take(3),
    Stream.runForEach((message) => Console.log(`listener: ${message.topic} ${message.text}`)),
    Effect.forkScoped
  )

  // Meanwhile the main fiber goes on with its own work: here, it measures and publishes readings.
  for (const n of [1, 2, 3]) {
    yield* Console.log(`main: measuring, step ${n}`)
    yield* client.publish("temperature/inside", `reading ${n}`, { qos: 1 })
    yield* Effect.sleep("100 millis")
  }

  yield* Fiber.join(listener)
  yield* Console.log("main: the listener received all the readings")
})

program.pipe(Effect.scoped, withBroker(), NodeRuntime.runMain)
