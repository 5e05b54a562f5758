import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Schedule, Stream } from "effect"
import { IncomingQueue, MqttClient, Topic } from "effect-mqtt"
import { Broker, publishSamples, withBroker } from "./_broker.ts"

const readings = [
  ["temperature/inside", "21.5"],
  ["humidity/inside", "45"],
  ["temperature/outside", "8.0"],
  ["humidity/outside", "80"]
] as const

const program = Effect.gen(function*() {
  // the client of `withBroker`, below: a priority queue
  const client = yield* MqttClient.MqttClient
  // a second client, whose queue drops the oldest message when full
  const broker = yield* Broker
  const latest = yield* MqttClient.make({ ...broker.options, queue: IncomingQueue.sliding(2) })
  yield* client.subscribe(["temperature/#", "humidity/#"], { qos: 1 })
  yield* latest.subscribe(["temperature/#", "humidity/#"], { qos: 1 })
  yield* publishSamples(readings)

  // nobody reads yet: wait until the readings wait in both queues
  const waitFor = (count: Effect.Effect<number>, n: number) =>
    Effect.repeat(count, { until: (found) => found >= n, schedule: Schedule.spaced("10 millis") })
  yield* waitFor(client.queuedMessages, 4)
  yield* waitFor(latest.droppedMessages, 2)

  yield* Console.log("priority queue: humidity first")
  yield* client.messages.pipe(
    Stream.take(4),
    Stream.runForEach((message) => Console.log(`  ${message.topic}: ${message.text}`))
  )
  yield* Console.log(`sliding queue of 2: dropped ${yield* latest.droppedMessages}, kept`)
  yield* latest.messages.pipe(
    Stream.take(2),
    Stream.runForEach((message) => Console.log(`  ${message.topic}: ${message.text}`))
  )
})

program.pipe(
  Effect.scoped,
  withBroker({
    // a lower number comes out first; ties in arrival order. Full: the client stops reading, nothing is lost.
    queue: IncomingQueue.priority({
      capacity: 100,
      priority: (message) => Topic.matches(message.topic, "humidity/#") ? 0 : 1
    })
  }),
  NodeRuntime.runMain
)
