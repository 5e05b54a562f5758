import { NodeRuntime } from "@effect/platform-node"
import { Console, Deferred, Effect, Fiber, Schedule, Stream } from "effect"
import { MqttClient, type MqttMessage } from "effect-mqtt"
import { publishSamples, withBroker } from "./_broker.ts"

let running = 0
let mostAtOnce = 0

// a slow handler, say one that calls a web service
const handle = (message: MqttMessage.MqttMessage) =>
  Effect.gen(function*() {
    mostAtOnce = Math.max(mostAtOnce, ++running)
    yield* Effect.logDebug(`handling ${message.topic}`)
    yield* Effect.sleep("500 millis")
  }).pipe(Effect.ensuring(Effect.sync(() => running--)))

const program = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  yield* client.subscribe("sensors/#", { qos: 1 })

  // 1. at most 3 handlers at once; the stream owns their fibers
  yield* publishSamples([1, 2, 3, 4, 5, 6].map((n) => [`sensors/${n}`, "on"] as const))
  // (for the example's sake: start once all six wait, so that the limit shows)
  yield* Effect.repeat(client.queuedMessages, { until: (n) => n === 6, schedule: Schedule.spaced("10 millis") })
  yield* client.messages.pipe(Stream.take(6), Stream.mapEffect(handle, { concurrency: 3 }), Stream.runDrain)
  yield* Console.log(`6 messages, at most ${mostAtOnce} handled at once, ${running} still running`)

  // 2. in order within a topic, topics at the same time: a message is taken when its handler starts, so stopping
  // (here once all six are handled) leaves the rest in the queue
  const order: Array<string> = []
  const allSix = yield* Deferred.make<void>()
  yield* publishSamples([1, 2, 3].flatMap((n) => [["sensors/a", `${n}`], ["sensors/b", `${n}`]] as const))
  yield* client.runForEachByKey((m) =>
    Effect.gen(function*() {
      order.push(`${m.topic}:${m.text}`)
      if (order.length === 6) yield* Deferred.succeed(allSix, undefined)
    })
  ).pipe(Effect.raceFirst(Deferred.await(allSix)))
  for (const topic of ["sensors/a", "sensors/b"]) {
    yield* Console.log(`${topic} in order: ${order.filter((entry) => entry.startsWith(topic)).join(" ")}`)
  }

  // 3. a listener in the background while the program goes on
  const listener = yield* client.messages.pipe(
    Stream.take(2),
    Stream.runForEach((message) => Console.log(`listener: ${message.topic} ${message.text}`)),
    Effect.forkScoped
  )
  yield* client.publish("sensors/door", "open", { qos: 1 })
  yield* client.publish("sensors/door", "closed", { qos: 1 })
  yield* Fiber.join(listener)
})

program.pipe(Effect.scoped, withBroker(), NodeRuntime.runMain)
