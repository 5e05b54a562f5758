/**
 * The message queue: what happens to messages that arrive faster than the program handles them.
 *
 * Received messages wait in the client's incoming queue until `client.messages` takes them. The `queue`
 * option picks its behaviour (see `IncomingQueue`):
 *
 * 1. `IncomingQueue.priority`: the next message out is the most urgent one, not the oldest.
 * 2. `IncomingQueue.sliding`: when full, the oldest message makes room; `client.droppedMessages` counts them.
 * 3. `IncomingQueue.bounded` (the default, capacity 1,024): when full, the client stops reading from the
 *    network, so the broker holds on to the rest. Nothing is dropped.
 *
 * Each part opens its own client with `MqttClient.make`, which lives until the end of its `Effect.scoped`.
 *
 * Run: `npm run example examples/03-queue.ts` (set `MQTT_URL` to use your own broker).
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Schedule, Stream } from "effect"
import { IncomingQueue, MqttClient, type MqttMessage, Topic } from "effect-mqtt"
import { Broker, BrokerLive, publishSamples } from "./_broker.ts"

const print = (message: MqttMessage.MqttMessage) => Console.log(`  ${message.topic}: ${message.text}`)

// 1. Humidity first: a lower priority number comes out first; ties come out in arrival order.
const priorityQueue = Effect.scoped(Effect.gen(function*() {
  const broker = yield* Broker
  const client = yield* MqttClient.make({
    ...broker.options,
    queue: IncomingQueue.priority({
      capacity: 100,
      priority: (message) => Topic.matches(message.topic, "humidity/#") ? 0 : 1
    })
  })
  yield* client.subscribe(["temperature/#", "humidity/#"], { qos: 1 })
  const samples = [
    ["temperature/inside", "21.5"],
    ["humidity/inside", "45"],
    ["temperature/outside", "8.0"],
    ["humidity/outside", "80"],
    ["temperature/garage", "12.0"]
  ] as const
  yield* publishSamples(samples)
  // The order matters only while messages wait: this consumer starts reading once all the samples are
  // in the queue.
  yield* client.queuedMessages.pipe(
    Effect.repeat({ until: (queued) => queued >= samples.length, schedule: Schedule.spaced("10 millis") })
  )
  yield* Console.log("priority queue, humidity first:")
  yield* client.messages.pipe(Stream.take(samples.length), Stream.runForEach(print))
}))

// 2. A sliding queue of 3 keeps the newest 3 readings of the 8 published.
const slidingQueue = Effect.scoped(Effect.gen(function*() {
  const broker = yield* Broker
  const client = yield* MqttClient.make({ ...broker.options, queue: IncomingQueue.sliding(3) })
  yield* client.subscribe("temperature/#", { qos: 1 })
  const samples = [1, 2, 3, 4, 5, 6, 7, 8].map((n) => ["temperature/inside", `reading ${n}`] as const)
  yield* publishSamples(samples)
  // Nobody reads yet: wait until the 8 readings have arrived, that is until 5 of them were dropped.
  yield* client.droppedMessages.pipe(
    Effect.repeat({ until: (dropped) => dropped >= 5, schedule: Schedule.spaced("10 millis") })
  )
  yield* Console.log("sliding queue of 3, after 8 readings:")
  yield* client.messages.pipe(Stream.take(3), Stream.runForEach(print))
  yield* Console.log(`  dropped: ${yield* client.droppedMessages}`)
}))

// 3. A bounded queue of 2 receives 6 readings: the client reads from the network only as fast as the
//    queue empties, and every reading arrives, in order.
const boundedQueue = Effect.scoped(Effect.gen(function*() {
  const broker = yield* Broker
  const client = yield* MqttClient.make({ ...broker.options, queue: IncomingQueue.bounded(2) })
  yield* client.subscribe("temperature/#", { qos: 1 })
  const samples = [1, 2, 3, 4, 5, 6].map((n) => ["temperature/outside", `reading ${n}`] as const)
  yield* publishSamples(samples)
  yield* Console.log("bounded queue of 2, after 6 readings:")
  yield* client.messages.pipe(Stream.take(samples.length), Stream.runForEach(print))
  yield* Console.log(`  dropped: ${yield* client.droppedMessages}`)
}))

Effect.gen(function*() {
  yield* priorityQueue
  yield* slidingQueue
  yield* boundedQueue
}).pipe(Effect.provide(BrokerLive), NodeRuntime.runMain)
