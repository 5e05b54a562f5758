/**
 * Per-topic order with cross-topic concurrency, two ways.
 *
 * 1. `client.runForEachByKey` handles the readings of one sensor (topic) one at a time and in order, while
 *    different topics are handled concurrently. It takes a message only when its handler starts, so stopping
 *    it (here, once every reading is handled) leaves whatever it did not start in the queue, unacknowledged.
 *    (`Stream.groupByKey` splits a stream the same way, but takes messages ahead into a buffer per topic, which
 *    a stop drops: see docs/concurrency.md.)
 * 2. The distributor, as in aiomqtt's guide: one reader takes every message and puts it in the queue of the
 *    worker for its kind, and each worker drains its own queue. The queues need not hand messages out in the
 *    same order: the temperature readings go through a FIFO queue (`IncomingQueue.bounded`, oldest first),
 *    the humidity readings through a LIFO queue (`IncomingQueue.lifo`, newest first: when readings pile up,
 *    the latest is the one worth handling first). The reader ends the queues when it is done, which ends the
 *    workers once their queue is empty.
 *
 * Run: `npm run example examples/05-per-topic.ts` (set `MQTT_URL` to use your own broker).
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Deferred, Effect, Stream } from "effect"
import { IncomingQueue, MqttClient, type MqttMessage, Topic } from "effect-mqtt"
import { publishSamples, withBroker } from "./_broker.ts"

const samples = [1, 2, 3].flatMap((n) => [
  ["temperature/inside", `reading ${n}`] as const,
  ["humidity/inside", `reading ${n}`] as const
])

// 1. One message at a time per topic, the topics at the same time.
const perTopic = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  yield* publishSamples(samples)
  let topicsAtOnce = 0
  let mostTopicsAtOnce = 0
  let handled = 0
  const allHandled = yield* Deferred.make<void>()
  const handle = (message: MqttMessage.MqttMessage) =>
    Effect.gen(function*() {
      mostTopicsAtOnce = Math.max(mostTopicsAtOnce, ++topicsAtOnce)
      // Within a topic, one message at a time: the next one starts when this one is done.
      yield* Console.log(`${message.topic}: start ${message.text}`)
      yield* Effect.sleep("200 millis")
      yield* Console.log(`${message.topic}: done  ${message.text}`)
      topicsAtOnce--
      if (++handled === samples.length) yield* Deferred.succeed(allHandled, undefined)
    })
  // it runs until interrupted: here, once every reading is handled
  yield* client.runForEachByKey(handle).pipe(Effect.raceFirst(Deferred.await(allHandled)))
  yield* Console.log(`${mostTopicsAtOnce} topics were handled at the same time`)
})

// 2. One reader, two queues (FIFO and LIFO), two workers.
const distributor = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  yield* publishSamples(samples)
  const temperatures = yield* IncomingQueue.make<MqttMessage.MqttMessage, never>(IncomingQueue.bounded(16))
  const humidities = yield* IncomingQueue.make<MqttMessage.MqttMessage, never>(IncomingQueue.lifo(16))

  const reader = client.messages.pipe(
    Stream.take(samples.length),
    Stream.runForEach((message) =>
      (Topic.matches(message.topic, "temperature/#") ? temperatures : humidities).offerAll([message])
    ),
    // Whatever way the reader ends, the workers end too once their queue is empty.
    Effect.ensuring(Effect.all([temperatures.end, humidities.end]))
  )
  const worker = (name: string, queue: IncomingQueue.IncomingQueue<MqttMessage.MqttMessage, never>) =>
    queue.stream.pipe(
      Stream.runForEach((message) => Console.log(`${name} worker: ${message.topic} ${message.text}`))
    )

  // Here the workers start once the reader has distributed every reading, so that each queue's order shows (a
  // worker that keeps up takes each reading as it arrives, whatever its queue's order). In an application they
  // run beside the reader: `Effect.all([reader, ...workers], { concurrency: "unbounded" })`.
  yield* reader
  yield* Effect.all([worker("temperature", temperatures), worker("humidity", humidities)], {
    concurrency: "unbounded"
  })
})

const program = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  yield* client.subscribe(["temperature/#", "humidity/#"], { qos: 1 })
  yield* Console.log("runForEachByKey:")
  yield* perTopic
  yield* Console.log("distributor:")
  yield* distributor
})

program.pipe(withBroker(), NodeRuntime.runMain)
