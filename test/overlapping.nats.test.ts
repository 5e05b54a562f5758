/**
 * A real NATS server (one `nats-server` process, MQTT 3.1.1), which sends a copy of a message per matching
 * subscription without saying which subscription a copy is for: the client's `overlapping:
 * "copy-per-subscription"` tells the copies apart by counting them (see `Subscriptions.attributeCopy`).
 *
 * What NATS 2.9 does, seen here: at QoS 0 the copies of a message come one after the other; at QoS 1 each
 * subscription's copies come from a stream of their own, so a burst comes for one subscription, then for the next;
 * a retained message sent for a new subscription comes once, RETAIN 1, and a message published retained comes to
 * the subscriptions already made with RETAIN 0 [MQTT-3.3.1-8], [MQTT-3.3.1-9].
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Stream } from "effect"
import { MqttClient, type MqttMessage } from "effect-mqtt"
import { natsCluster } from "./support/NatsCluster.ts"

const sleepReal = (ms: number) => Effect.promise(() => new Promise<void>((resolve) => setTimeout(resolve, ms)))

/** Polls a condition every 20 ms; dies with `what` after 30 s (a guard against a hang, not a timing claim). */
const until = (what: () => string, condition: () => boolean) =>
  Effect.gen(function*() {
    const deadline = Date.now() + 30_000
    while (!condition()) {
      if (Date.now() > deadline) return yield* Effect.die(new Error(`${what()}: not within 30 s`))
      yield* sleepReal(20)
    }
  })

const natsOptions = { protocolVersion: 4, overlapping: "copy-per-subscription", connectTimeout: "10 seconds" } as const

/** Every message a stream brings from now on, as `text` (`text (retained)` with RETAIN 1). */
const collect = (stream: Stream.Stream<MqttMessage.MqttMessage, unknown>) =>
  Effect.gen(function*() {
    const got: Array<string> = []
    yield* Effect.forkChild(
      Stream.runForEach(stream, (m) => Effect.sync(() => got.push(m.retain ? `${m.text} (retained)` : m.text))),
      { startImmediately: true }
    )
    return got
  })

describe("NATS: a copy per subscription (overlapping: copy-per-subscription)", () => {
  it.live(
    "the retained message sent for a new subscription() stream reaches it, while `messages` holds an overlapping filter",
    () =>
      Effect.gen(function*() {
        const [url] = (yield* natsCluster({ nodes: 1 })).urls
        const publisher = yield* MqttClient.make({ ...natsOptions, url })
        yield* publisher.publish("sensors/temp", "21.5", { qos: 1, retain: true })
        const client = yield* MqttClient.make({ ...natsOptions, url })
        const onMessages = yield* collect(client.messages)
        yield* client.subscribe("sensors/#", { qos: 1 })
        yield* until(() => `the retained message on messages (${onMessages})`, () => onMessages.length === 1)
        const onStream = yield* collect(yield* client.subscription("sensors/temp", { qos: 1 }))
        yield* until(() => `the retained message on the stream (${onStream})`, () => onStream.length === 1)
        yield* publisher.publish("sensors/temp", "22", { qos: 1 })
        yield* until(() => `the live message on the stream (${onStream})`, () => onStream.length === 2)
        yield* until(() => `the live message on messages (${onMessages})`, () => onMessages.includes("22"))
        yield* sleepReal(300)
        expect(onStream).toEqual(["21.5 (retained)", "22"])
        // `messages` is given the retained message sent for the stream's subscription too: the client cannot tell
        // which subscription a retained message was sent for, and a duplicate is no loss
        expect(onMessages).toEqual(["21.5 (retained)", "21.5 (retained)", "22"])
      }),
    60_000
  )

  it.live(
    "QoS 1: the copies of a burst come a subscription at a time; `messages` and a subscription() stream each receive every message once",
    () =>
      Effect.gen(function*() {
        const [url] = (yield* natsCluster({ nodes: 1 })).urls
        const client = yield* MqttClient.make({ ...natsOptions, url })
        const onMessages = yield* collect(client.messages)
        yield* client.subscribe("burst/#", { qos: 1 })
        const onStream = yield* collect(yield* client.subscription("burst/b", { qos: 1 }))
        const publisher = yield* MqttClient.make({ ...natsOptions, url })
        const sent = Array.from({ length: 40 }, (_, i) => `m${i}`)
        yield* Effect.forEach(sent, (text) => publisher.publish("burst/b", text, { qos: 1 }), { concurrency: 40 })
        yield* until(
          () => `every message on both (messages: ${onMessages.length}, stream: ${onStream.length})`,
          () => onMessages.length >= sent.length && onStream.length >= sent.length
        )
        yield* sleepReal(300)
        const sorted = (texts: ReadonlyArray<string>) => [...texts].sort()
        expect([sorted(onMessages), sorted(onStream)]).toEqual([sorted(sent), sorted(sent)])
      }),
    60_000
  )
})
