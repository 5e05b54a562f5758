/**
 * Per-topic order with cross-topic concurrency, two ways.
 *
 * 1. `Stream.groupByKey` splits the messages into one stream per topic. Each topic's stream is handled
 *    serially, so the readings of one sensor are handled one at a time and in order, while different
 *    topics are handled concurrently. (Each topic keeps its own small buffer until the stream ends: for
 *    topics that come and go, give `idleTimeToLive`.)
 * 2. The distributor: one reader fiber takes every message and puts it in the `Queue` of the worker for
 *    its kind; two workers each drain their own queue. The reader ends the queues when it is done, which
 *    ends the workers.
 *
 * Run: `npm run example examples/05-per-topic.ts` (set `MQTT_URL` to use your own broker).
 */
import { NodeRuntime } from "@effect/platform-node"
import { type Cause, Console, Effect, Queue, Stream } from "effect"
import { MqttClient, type MqttMessage, Topic } from "effect-mqtt"
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

// 2. One reader, two queues, two workers.
const distributor = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  yield* publishSamples(samples)
  const temperatures = yield* Queue.bounded<MqttMessage.MqttMessage, Cause.Done>(16)
  const humidities = yield* Queue.bounded<MqttMessage.MqttMessage, Cause.Done>(16)

  const reader = client.messages.pipe(
    Stream.take(samples.length),
    Stream.runForEach((message) =>
      Queue.offer(Topic.matches(message.topic, "temperature/#") ? temperatures : humidities, message)
    ),
    // Whatever way the reader ends, the workers end too once their queue is empty.
    Effect.ensuring(Effect.all([Queue.end(temperatures), Queue.end(humidities)]))
  )
  const worker = (name: string, queue: Queue.Dequeue<MqttMessage.MqttMessage, Cause.Done>) =>
    Stream.fromQueue(queue).pipe(
      Stream.runForEach((message) => Console.log(`${name} worker: ${message.topic} ${message.text}`))
    )

  // Three fibers, all children of this one: if one fails, the others are interrupted.
  yield* Effect.all([reader, worker("temperature", temperatures), worker("humidity", humidities)], {
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
