/** The durable QoS 2 gate (a QoS 2 message taken only once the ones before it are stored) when the store cannot be written and the client stops: the consumer ends, it does not hang. */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Option, Stream } from "effect"
import { MqttClient, MqttSessionStore } from "effect-mqtt"
import * as KeyValueStore from "effect/persistence/KeyValueStore"
import { Buffer } from "node:buffer"
import * as FakeBroker from "./support/FakeBroker.ts"

const flakyStore = Effect.gen(function*() {
  const inner = yield* MqttSessionStore.memory
  const state = { failing: false }
  const kv = KeyValueStore.make({
    get: inner.kv.get,
    getUint8Array: inner.kv.getUint8Array,
    set: (key, value) =>
      Effect.suspend(() =>
        state.failing
          ? Effect.fail(new KeyValueStore.KeyValueStoreError({ method: "set", key, message: "down" }))
          : inner.kv.set(key, value)
      ),
    remove: inner.kv.remove,
    clear: inner.kv.clear,
    size: inner.kv.size,
    keys: inner.kv.keys
  })
  return { store: MqttSessionStore.fromKeyValueStore(kv, "flaky"), state }
})

const publish = (id: number, payload: string) => ({
  cmd: "publish" as const,
  topic: "in/x",
  payload: Buffer.from(payload),
  qos: 2 as const,
  messageId: id,
  retain: false,
  dup: false
})

describe("the durable QoS 2 gate when the store is down and the client stops", () => {
  for (const consumerKind of ["messages", "runForEachByKey"] as const) {
    it.live(`the client gave up (reconnect: false) while the store is down: ${consumerKind} delivers what it holds, then fails`, () =>
      Effect.gen(function*() {
        const broker = yield* FakeBroker.make({ protocolVersion: 5 })
        const { state, store } = yield* flakyStore
        const fiber = yield* Effect.forkChild(MqttClient.make({
          url: broker.url,
          protocolVersion: 5,
          clientId: `gate-gave-up-${consumerKind}`,
          store,
          sessionExpiryInterval: 60,
          reconnect: false,
          logLevel: "None"
        }))
        const { connection } = yield* broker.acceptAndConnack()
        const client = yield* Fiber.join(fiber)
        const taken: Array<string> = []
        const handle = (m: { readonly text: string }) => Effect.sync(() => taken.push(m.text))
        const consumer = yield* Effect.forkChild(
          consumerKind === "messages"
            ? Stream.runForEach(client.messages, handle)
            : client.runForEachByKey(handle, { key: (m) => m.text })
        )
        yield* Effect.sleep("50 millis")
        state.failing = true
        yield* connection.sendMany([publish(1, "a"), publish(2, "b")])
        yield* Effect.sleep("200 millis")
        console.log("H-REV taken while the store is down:", taken)
        // the broker goes away; the client does not reconnect: it stops for good
        yield* connection.destroy
        yield* Effect.exit(client.awaitClose)
        const ended = yield* Fiber.await(consumer).pipe(Effect.timeoutOption("3 seconds"))
        console.log("H-REV taken after the client stopped:", taken, "consumer ended:", Option.isSome(ended))
        if (Option.isSome(ended)) console.log("H-REV consumer exit failure:", Exit.isFailure(ended.value))
        expect(Option.isSome(ended)).toBe(true)
        expect(taken).toEqual(["a", "b"])
      }).pipe(Effect.scoped))
  }
})
