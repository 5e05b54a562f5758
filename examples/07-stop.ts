/**
 * Stop listening: interrupt the listener's fiber.
 *
 * A listener that runs forever is stopped with `Fiber.interrupt`, which runs its finalizers and waits for
 * it to end. The client stays connected (it could subscribe and listen again) until its layer is
 * released: then it sends DISCONNECT and closes the socket. `client.awaitClose` succeeds after a clean
 * close and fails with the error when the connection was lost instead.
 *
 * Run: `npm run example examples/07-stop.ts` (set `MQTT_URL` to use your own broker).
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Deferred, Effect, Fiber, Stream } from "effect"
import { MqttClient } from "effect-mqtt"
import { publishSamples, withBroker } from "./_broker.ts"

const program = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  yield* client.subscribe("temperature/#", { qos: 1 })

  // Completed by the listener when it has seen the last sample, so we know when to stop it.
  const sawLast = yield* Deferred.make<void>()
  const listener = yield* client.messages.pipe(
    Stream.runForEach((message) =>
      Effect.gen(function*() {
        yield* Console.log(`listener: ${message.topic} ${message.text}`)
        if (message.text === "reading 3") yield* Deferred.succeed(sawLast, undefined)
      })
    ),
    Effect.onInterrupt(() => Console.log("listener: interrupted")),
    Effect.forkChild
  )

  yield* publishSamples([1, 2, 3].map((n) => ["temperature/inside", `reading ${n}`] as const))
  yield* Deferred.await(sawLast)

  yield* Fiber.interrupt(listener)
  yield* Console.log("main: the listener has stopped; the client is still connected")
  return client
})

program.pipe(
  withBroker(),
  // The layer has been released here: the client sent DISCONNECT and closed its socket.
  Effect.flatMap((client) => client.awaitClose),
  Effect.andThen(Console.log("main: the client disconnected cleanly")),
  NodeRuntime.runMain
)
