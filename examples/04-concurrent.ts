/**
 * Handle messages concurrently: each message in its own fiber, so a slow handler does not hold up the
 * others.
 *
 * `Stream.mapEffect` with a `concurrency` option runs the handler for several messages at once. The fibers
 * are structured: they belong to the stream, so when the stream ends or is interrupted they are awaited or
 * interrupted with it, and none is left running. Use a number instead of `"unbounded"` to cap how many
 * handlers run at once.
 *
 * Run: `npm run example examples/04-concurrent.ts` (set `MQTT_URL` to use your own broker).
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Stream } from "effect"
import { MqttClient, type MqttMessage } from "effect-mqtt"
import { publishSamples, withBroker } from "./_broker.ts"

let running = 0
let mostAtOnce = 0

// A slow handler, say one that calls a web service.
const handle = (message: MqttMessage.MqttMessage) =>
  Effect.gen(function*() {
    running++
    mostAtOnce = Math.max(mostAtOnce, running)
    yield* Console.log(`start ${message.topic}: ${message.text}`)
    yield* Effect.sleep("1 second")
    yield* Console.log(`done  ${message.topic}`)
  }).pipe(Effect.ensuring(Effect.sync(() => running--)))

const samples = [
  ["temperature/inside", "21.5"],
  ["temperature/outside", "8.0"],
  ["humidity/inside", "45"]
] as const

const program = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  yield* client.subscribe(["temperature/#", "humidity/#"], { qos: 1 })
  yield* publishSamples(samples)
  yield* client.messages.pipe(
    Stream.take(samples.length),
    Stream.mapEffect(handle, { concurrency: "unbounded" }),
    Stream.runDrain
  )
  yield* Console.log(`${mostAtOnce} handlers ran at the same time; ${running} still running`)
})

program.pipe(withBroker(), NodeRuntime.runMain)
