import { NodeRuntime } from "@effect/platform-node"
import { Cause, Console, Deferred, Effect, Fiber, Stream } from "effect"
import { MqttClient } from "effect-mqtt"
import { publishSamples, withBroker } from "./_broker.ts"

const readings = (n: number) => Array.from({ length: n }, (_, i) => ["sensors/1", `reading ${i + 1}`] as const)

const program = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  yield* client.subscribe("sensors/#", { qos: 1 })

  // 1. interrupt a listener that would run forever
  const sawThree = yield* Deferred.make<void>()
  const listener = yield* client.messages.pipe(
    Stream.runForEach((message) => message.text === "reading 3" ? Deferred.succeed(sawThree, undefined) : Effect.void),
    Effect.onInterrupt(() => Console.log("listener interrupted")),
    Effect.forkChild
  )
  for (const [topic, payload] of readings(3)) yield* client.publish(topic, payload, { qos: 1 })
  yield* Deferred.await(sawThree)
  yield* Fiber.interrupt(listener)

  // 2. stop after a time: Effect.timeout interrupts the listener and fails with Cause.TimeoutError
  yield* client.messages.pipe(
    Stream.runForEach((message) => Console.log(`received ${message.text}`)),
    Effect.timeout("1 second"),
    Effect.catchIf(Cause.isTimeoutError, () => Console.log("stopped listening after 1 second"))
  )

  // 3. stop after some messages: the others stay queued for the next consumer
  yield* publishSamples(readings(5))
  const first = yield* client.messages.pipe(Stream.take(2), Stream.runCollect)
  const rest = yield* client.messages.pipe(Stream.take(3), Stream.runCollect)
  yield* Console.log(`first consumer: ${first.map((m) => m.text).join(", ")}`)
  yield* Console.log(`next consumer: ${rest.map((m) => m.text).join(", ")}`)
  return client
})

program.pipe(
  withBroker(),
  // 4. the client was released with its layer: DISCONNECT sent, socket closed
  Effect.flatMap((client) => client.awaitClose),
  Effect.andThen(Console.log("disconnected")),
  NodeRuntime.runMain
)
