/**
 * What a long-lived client keeps of the work it has done: nothing per ended piece of work. Subscription streams
 * opened and closed, filters subscribed and unsubscribed, requests answered, all on one client against a real
 * Mosquitto: after thousands of them the heap is where it was (each `subscription()` stream used to leave its
 * owner's empty set of filters behind for good).
 *
 * The clients made and released one after another are in test/telemetry.test.ts (their metric series).
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Stream } from "effect"
import { MqttClient } from "effect-mqtt"
import { heapUsed } from "./support/heap.ts"
import { type MosquittoHandle, startMosquitto } from "./support/Mosquitto.ts"

let broker: MosquittoHandle
beforeAll(async () => {
  broker = await startMosquitto()
})
afterAll(() => broker?.dispose())

describe("a long-lived client keeps nothing of ended work", () => {
  for (const protocolVersion of [4, 5] as const) {
    it.live(
      `MQTT ${protocolVersion === 4 ? "3.1.1" : "5"}: subscription streams, subscribe/unsubscribe${
        protocolVersion === 5 ? " and requests" : ""
      }, 3,000 of each: the heap stays where it was`,
      () =>
        Effect.gen(function*() {
          const base = `retention/${process.pid}/${protocolVersion}`
          const client = yield* MqttClient.make({ url: broker.url, protocolVersion, logLevel: "None" })
          if (protocolVersion === 5) {
            const responder = yield* MqttClient.make({ url: broker.url, protocolVersion, logLevel: "None" })
            yield* Effect.forkScoped(responder.respond(`${base}/svc/+`, (m) => Effect.succeed(m.payload)))
            yield* Effect.sleep("200 millis")
          }
          let k = 0
          const cycle = Effect.scoped(Effect.gen(function*() {
            // a fresh topic each time: nothing a filter leaves behind is shared with the next one
            const topic = `${base}/${k++}`
            const stream = yield* client.subscription(`${topic}/+`, { qos: 1 })
            yield* client.subscribe(`${topic}/x/#`, { qos: 1 })
            yield* client.publish(`${topic}/a`, "x", { qos: 1 })
            yield* stream.pipe(Stream.take(1), Stream.runDrain)
            yield* client.unsubscribe(`${topic}/x/#`)
            if (protocolVersion === 5) {
              const reply = yield* client.request(`${base}/svc/${k}`, "ping", { timeout: "10 seconds" })
              expect(new TextDecoder().decode(reply.payload)).toBe("ping")
            }
          }))
          const cycles = (n: number) =>
            Effect.forEach(Array.from({ length: n }), () => cycle, { concurrency: 8, discard: true })
          // warm-up: code compiled, tables at their working size
          yield* cycles(1500)
          const before = heapUsed()
          yield* cycles(3000)
          const perCycle = (heapUsed() - before) / 3000
          // one subscription stream left about 150 bytes behind (600 KB for these 3,000; 200 bytes a cycle in all)
          expect(perCycle).toBeLessThan(100)
        }),
      120_000
    )
  }
})
