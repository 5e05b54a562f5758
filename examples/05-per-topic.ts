/**
 * Per-topic order with cross-topic concurrency, two ways.
 *
 * 1. `Stream.groupByKey` splits the messages into one stream per topic. Each topic's stream is handled
 *    serially, so the readings of one sensor are handled one at a time and in order, while different
 *    topics are handled concurrently. (Each topic keeps its own small buffer until the stream ends: for
 *    topics that come and go, give `idleTimeToLive`.)
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
import { Console, Effect, Stream } from "effect"
import { IncomingQueue, MqttClient, type MqttMessage, Topic } from "effect-mqtt"
import { publishSamples, withBroker } from "./_broker.ts"

const samples = [1, 2, 3].flatMap((n) => [
  ["temperature/inside", `reading ${n}`] as const,
  ["humidity/inside", `reading ${n}`] as const
])

// 1. One stream per topic.
const perTopic = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  yield* publishSamples(samples)
  let topicsAtOnce = 0
  let mostTopicsAtOnce = 0
  yield* client.messages.pipe(
    Stream.take(samples.length),
    Stream.groupByKey((message) => message.topic),
    Stream.mapEffect(
      ([topic, messages]) =>
        Effect.gen(function*() {
          topicsAtOnce++
          mostTopicsAtOnce = Math.max(mostTopicsAtOnce, topicsAtOnce)
          // Within a topic, one message at a time: the next one starts when this one is done.
          yield* Stream.runForEach(messages, (message) =>
            Effect.gen(function*() {
              yield* Console.log(`${topic}: start ${message.text}`)
              yield* Effect.sleep("200 millis")
              yield* Console.log(`${topic}: done  ${message.text}`)
            }))
          topicsAtOnce--
        }),
      { concurrency: "unbounded" }
    ),
    Stream.runDrain
  )
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
  yield* Console.log("groupByKey:")
  yield* perTopic
  yield* Console.log("distributor:")
  yield* distributor
})

program.pipe(withBroker(), NodeRuntime.runMain)
