/**
 * Durable sessions (issue 12), protocol level: the client's half of the session kept in a store survives the
 * client, against the scripted fake broker that checks the exact packets. The same store given to a second client
 * stands for a new process after a crash. (Crash tests with real processes, Mosquitto and Redis are in
 * durable.crash.test.ts.)
 */
import { assert, describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, Schedule, Scope, Stream } from "effect"
import { MqttClient, MqttError, MqttSessionStore } from "effect-mqtt"
import * as KeyValueStore from "effect/persistence/KeyValueStore"
import { Buffer } from "node:buffer"
import * as FakeBroker from "./support/FakeBroker.ts"

const text = (packet: any) => Buffer.from(packet.payload).toString()

/** A memory store whose writes can be made to fail, as a store that goes away. */
const flakyStore = Effect.gen(function*() {
  const inner = yield* MqttSessionStore.memory
  const state = { failing: false, writes: 0 }
  const kv = KeyValueStore.make({
    get: inner.kv.get,
    getUint8Array: inner.kv.getUint8Array,
    set: (key, value) =>
      Effect.suspend(() => {
        if (state.failing) {
          return Effect.fail(new KeyValueStore.KeyValueStoreError({ method: "set", key, message: "down" }))
        }
        state.writes++
        return inner.kv.set(key, value)
      }),
    remove: inner.kv.remove,
    clear: inner.kv.clear,
    size: inner.kv.size,
    keys: inner.kv.keys
  })
  return { store: MqttSessionStore.fromKeyValueStore(kv, "flaky"), state, inner }
})

/** A memory store whose writes wait, while `closed`, until the gate opens: a slow store, under the test's control. */
const gatedStore = Effect.gen(function*() {
  const inner = yield* MqttSessionStore.memory
  const gate = { open: yield* Deferred.make<void>(), closed: false, waiting: 0 }
  const kv = KeyValueStore.make({
    get: inner.kv.get,
    getUint8Array: inner.kv.getUint8Array,
    set: (key, value) =>
      Effect.suspend(() => {
        if (!gate.closed) return inner.kv.set(key, value)
        gate.waiting++
        return Effect.andThen(Deferred.await(gate.open), inner.kv.set(key, value))
      }),
    remove: inner.kv.remove,
    clear: inner.kv.clear,
    size: inner.kv.size,
    keys: inner.kv.keys
  })
  const close = Effect.sync(() => {
    gate.closed = true
  })
  const open = Effect.andThen(
    Effect.sync(() => {
      gate.closed = false
    }),
    Deferred.succeed(gate.open, undefined)
  )
  return { store: MqttSessionStore.fromKeyValueStore(kv, "gated"), gate, close, open }
})

/** A client in a scope of its own: closing the scope stands for the process going away. */
const clientIn = (options: MqttClient.Options) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const fiber = yield* Effect.forkChild(Scope.provide(MqttClient.make(options), scope))
    return { scope, fiber }
  })

describe("durable sessions", () => {
  for (const version of [4, 5] as const) {
    const persistent = version === 5 ? { sessionExpiryInterval: 3600, cleanStart: false } : { cleanStart: false }

    it.live(`v${version}: publishes accepted and not finished are resent by the next client with their identifiers and DUP, in order`, () =>
      Effect.gen(function*() {
        const broker = yield* FakeBroker.make({ protocolVersion: version })
        const store = yield* MqttSessionStore.memory
        const options = {
          url: broker.url,
          protocolVersion: version,
          clientId: "durable-1",
          store,
          ...persistent,
          reconnect: false as const
        }
        const first = yield* clientIn(options)
        const { connection } = yield* broker.acceptAndConnack()
        const client = yield* Fiber.join(first.fiber)
        const q1 = yield* Effect.forkChild(client.publish("t", "one", { qos: 1 }))
        const q2 = yield* Effect.forkChild(client.publish("t", "two", { qos: 2 }))
        const q2released = yield* Effect.forkChild(client.publish("t", "three", { qos: 2 }))
        const sent = [
          yield* connection.expect("publish"),
          yield* connection.expect("publish"),
          yield* connection.expect("publish")
        ]
        yield* connection.send({ cmd: "pubrec", messageId: sent[2].messageId! })
        yield* connection.expect("pubrel")
        // the process goes away (its publishes fail for their callers, but stay in the store)
        yield* Scope.close(first.scope, Exit.void)
        for (const fiber of [q1, q2, q2released]) expect(Exit.isFailure(yield* Fiber.await(fiber))).toBe(true)

        const second = yield* clientIn(options)
        const next = yield* broker.accept
        const connect = yield* next.expect("connect")
        expect(connect.clean).toBe(false)
        yield* next.connack({ sessionPresent: true })
        const resent = [yield* next.expect("publish"), yield* next.expect("publish"), yield* next.expect("pubrel")]
        expect(
          resent.map((
            p: any
          ) => [p.cmd, p.cmd === "publish" ? text(p) : undefined, p.messageId, p.cmd === "publish" ? p.dup : undefined])
        )
          .toEqual([
            ["publish", "one", sent[0].messageId, true],
            ["publish", "two", sent[1].messageId, true],
            ["pubrel", undefined, sent[2].messageId, undefined]
          ])
        yield* Fiber.join(second.fiber)
        yield* Scope.close(second.scope, Exit.void)
      }))

    it.live(`v${version}: with Session Present 0 the stored publishes go again as new messages`, () =>
      Effect.gen(function*() {
        const broker = yield* FakeBroker.make({ protocolVersion: version })
        const store = yield* MqttSessionStore.memory
        const options = {
          url: broker.url,
          protocolVersion: version,
          clientId: "durable-2",
          store,
          ...persistent,
          reconnect: false as const
        }
        const first = yield* clientIn(options)
        const { connection } = yield* broker.acceptAndConnack()
        const client = yield* Fiber.join(first.fiber)
        yield* Effect.forkChild(client.publish("t", "one", { qos: 1 }))
        yield* connection.expect("publish")
        yield* Scope.close(first.scope, Exit.void)
        const second = yield* clientIn(options)
        const next = yield* broker.accept
        yield* next.expect("connect")
        yield* next.connack({ sessionPresent: false })
        const again = yield* next.expect("publish")
        expect([text(again), again.dup]).toEqual(["one", false])
        yield* next.send({ cmd: "puback", messageId: again.messageId! })
        const client2 = yield* Fiber.join(second.fiber)
        // acknowledgements are handled in order: once a later publish completes, the PUBACK above was handled
        const later = yield* Effect.forkChild(client2.publish("t", "later", { qos: 1 }))
        const latePublish = yield* next.expect("publish")
        yield* next.send({ cmd: "puback", messageId: latePublish.messageId! })
        yield* Fiber.join(later)
        yield* Scope.close(second.scope, Exit.void)
        // acknowledged: the next client finds nothing to resend
        const third = yield* clientIn(options)
        const last = yield* broker.accept
        yield* last.expect("connect")
        yield* last.connack({ sessionPresent: true })
        yield* last.expectSilence(200)
        yield* Fiber.join(third.fiber)
        yield* Scope.close(third.scope, Exit.void)
      }))
  }

  it.live("an incoming QoS 2 message acknowledged before the crash is not delivered again by the next client", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5 })
      const store = yield* MqttSessionStore.memory
      const options = {
        url: broker.url,
        protocolVersion: 5 as const,
        clientId: "durable-3",
        store,
        sessionExpiryInterval: 60,
        cleanStart: false,
        reconnect: false as const
      }
      const first = yield* clientIn(options)
      const { connection } = yield* broker.acceptAndConnack()
      const client = yield* Fiber.join(first.fiber)
      const publish = {
        cmd: "publish" as const,
        topic: "in",
        payload: Buffer.from("once"),
        qos: 2 as const,
        messageId: 5,
        retain: false,
        dup: false
      }
      yield* connection.send(publish)
      const [message] = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
      expect(message.text).toBe("once")
      yield* connection.expect("pubrec")
      yield* Scope.close(first.scope, Exit.void)
      const second = yield* clientIn(options)
      const next = yield* broker.accept
      yield* next.expect("connect")
      yield* next.connack({ sessionPresent: true })
      const restarted = yield* Fiber.join(second.fiber)
      // the broker did not see the PUBREC: it resends the PUBLISH, which is answered, not delivered
      yield* next.send({ ...publish, dup: true })
      expect((yield* next.expect("pubrec")).messageId).toBe(5)
      yield* next.send({ cmd: "pubrel", messageId: 5 })
      expect((yield* next.expect("pubcomp")).messageId).toBe(5)
      yield* next.send({
        cmd: "publish",
        topic: "in",
        payload: Buffer.from("marker"),
        qos: 0,
        retain: false,
        dup: false
      })
      const [after] = yield* restarted.messages.pipe(Stream.take(1), Stream.runCollect)
      expect(after.text).toBe("marker")
      yield* Scope.close(second.scope, Exit.void)
    }))

  it.live("a corrupt store is a StoreError at start naming the store and the key; clearStore discards it", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 4 })
      const { store, inner } = yield* flakyStore
      const options = { url: broker.url, clientId: "durable-4", store, cleanStart: false, reconnect: false as const }
      const keys = yield* Effect.scoped(Effect.gen(function*() {
        const fiber = yield* Effect.forkChild(MqttClient.make(options))
        const { connection } = yield* broker.acceptAndConnack()
        const client = yield* Fiber.join(fiber)
        yield* Effect.forkChild(client.publish("t", "x", { qos: 1 }))
        yield* connection.expect("publish")
        return yield* inner.kv.keys
      }))
      const segment = keys.find((key) => key.includes("/j"))!
      yield* inner.kv.set(segment, "{ not json")
      const error = yield* Effect.flip(Effect.scoped(MqttClient.make(options)))
      assert(error instanceof MqttError.StoreError, String(error))
      expect([error.store, error.operation, error.key]).toEqual(["flaky", "load", segment])
      expect(error.message).toContain("clearStore")
      const fiber = yield* Effect.forkChild(
        Effect.scoped(Effect.andThen(MqttClient.make({ ...options, clearStore: true }), Effect.void))
      )
      const next = yield* broker.accept
      yield* next.expect("connect")
      yield* next.connack({ sessionPresent: true })
      // the discarded session's publish is not resent: the next packet is the client's DISCONNECT on release
      yield* next.expect("disconnect")
      yield* Fiber.join(fiber)
    }))

  it.live("while the store cannot be written, QoS 1/2 publishes fail with StoreError; once it can, the client goes on", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 4 })
      const { store, state } = yield* flakyStore
      const fiber = yield* Effect.forkChild(
        MqttClient.make({
          url: broker.url,
          clientId: "durable-5",
          store,
          cleanStart: false,
          reconnect: false,
          logLevel: "None"
        })
      )
      const { connection } = yield* broker.acceptAndConnack()
      const client = yield* Fiber.join(fiber)
      state.failing = true
      // accepted into the session while the store fails: held, not written, until the store is back
      const held = yield* Effect.forkChild(client.publish("t", "held", { qos: 1 }))
      yield* connection.expectSilence(300)
      const refused = yield* Effect.flip(client.publish("t", "refused", { qos: 1 }))
      assert(refused instanceof MqttError.StoreError, String(refused))
      expect(refused.operation).toBe("write")
      // QoS 0 is not stored: it goes on (behind the held packets)
      state.failing = false
      const publish = yield* connection.expect("publish")
      expect(text(publish)).toBe("held")
      yield* connection.send({ cmd: "puback", messageId: publish.messageId! })
      yield* Fiber.join(held)
      const after = yield* Effect.forkChild(client.publish("t", "after", { qos: 1 }))
      const next = yield* connection.expect("publish")
      expect(text(next)).toBe("after")
      yield* connection.send({ cmd: "puback", messageId: next.messageId! })
      yield* Fiber.join(after)
    }).pipe(Effect.scoped))

  it.live("publishAccepted completes once the publish is stored, before it is sent; the wait it returns ends on PUBACK", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5 })
      const { close, gate, open, store } = yield* gatedStore
      const fiber = yield* Effect.forkChild(
        MqttClient.make({
          url: broker.url,
          protocolVersion: 5,
          clientId: "durable-6",
          store,
          sessionExpiryInterval: 60,
          reconnect: false
        })
      )
      const { connection } = yield* broker.acceptAndConnack()
      const client = yield* Fiber.join(fiber)
      yield* close
      const accepting = yield* Effect.forkChild(client.publishAccepted("t", "stored first", { qos: 1 }))
      // not stored: neither accepted nor sent
      yield* connection.expectSilence(200)
      expect(gate.waiting).toBeGreaterThan(0)
      expect(accepting.pollUnsafe()).toBeUndefined()
      yield* open
      const acknowledged = yield* Fiber.join(accepting)
      const publish = yield* connection.expect("publish")
      expect(text(publish)).toBe("stored first")
      const waiting = yield* Effect.forkChild(acknowledged)
      yield* connection.expectSilence(100)
      expect(waiting.pollUnsafe()).toBeUndefined()
      yield* connection.send({ cmd: "puback", messageId: publish.messageId! })
      yield* Fiber.join(waiting)
    }).pipe(Effect.scoped))

  it.live("an accepted publish whose wait is interrupted is still sent and stays in the store until acknowledged", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 4 })
      const store = yield* MqttSessionStore.memory
      const options = { url: broker.url, clientId: "durable-7", store, cleanStart: false, reconnect: false as const }
      const first = yield* clientIn(options)
      // Receive Maximum 1 (from the broker's CONNACK is MQTT 5 only): hold the line with an unanswered publish
      const { connection } = yield* broker.acceptAndConnack()
      const client = yield* Fiber.join(first.fiber)
      const acknowledged = yield* client.publishAccepted("t", "accepted", { qos: 2 })
      const waiting = yield* Effect.forkChild(acknowledged)
      yield* Fiber.interrupt(waiting)
      const publish = yield* connection.expect("publish")
      expect(text(publish)).toBe("accepted")
      yield* Scope.close(first.scope, Exit.void)
      const second = yield* clientIn(options)
      const next = yield* broker.accept
      yield* next.expect("connect")
      yield* next.connack({ sessionPresent: true })
      const resent = yield* next.expect("publish")
      expect([text(resent), resent.messageId, resent.dup]).toEqual(["accepted", publish.messageId, true])
      yield* Fiber.join(second.fiber)
      yield* Scope.close(second.scope, Exit.void)
    }))

  it.live("without a store, publishAccepted completes at once and returns the wait for PUBACK", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 4 })
      const fiber = yield* Effect.forkChild(MqttClient.make({ url: broker.url, reconnect: false }))
      const { connection } = yield* broker.acceptAndConnack()
      const client = yield* Fiber.join(fiber)
      const acknowledged = yield* client.publishAccepted("t", "in memory", { qos: 1 })
      const publish = yield* connection.expect("publish")
      const waiting = yield* Effect.forkChild(acknowledged)
      yield* connection.expectSilence(100)
      expect(waiting.pollUnsafe()).toBeUndefined()
      yield* connection.send({ cmd: "puback", messageId: publish.messageId! })
      yield* Fiber.join(waiting)
      const invalid = yield* Effect.flip(client.publishAccepted("bad/#", "x", { qos: 1 }))
      expect(invalid._tag).toBe("InvalidTopicError")
    }).pipe(Effect.scoped))

  it.live("while the store cannot be written, publishAccepted fails with StoreError", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 4 })
      const { state, store } = yield* flakyStore
      const fiber = yield* Effect.forkChild(
        MqttClient.make({ url: broker.url, clientId: "durable-8", store, reconnect: false, logLevel: "None" })
      )
      const { connection } = yield* broker.acceptAndConnack()
      const client = yield* Fiber.join(fiber)
      state.failing = true
      // the first is accepted into the session and waits, unstored, until the store is back; it is not sent
      const held = yield* Effect.forkChild(client.publishAccepted("t", "held", { qos: 1 }))
      yield* connection.expectSilence(300)
      expect(held.pollUnsafe()).toBeUndefined()
      const refused = yield* Effect.flip(client.publishAccepted("t", "refused", { qos: 2 }))
      assert(refused instanceof MqttError.StoreError, String(refused))
      state.failing = false
      const acknowledged = yield* Fiber.join(held)
      const publish = yield* connection.expect("publish")
      expect(text(publish)).toBe("held")
      yield* connection.send({ cmd: "puback", messageId: publish.messageId! })
      yield* acknowledged
    }).pipe(Effect.scoped))

  it.live("a QoS 2 message whose ack completed behind an earlier unacknowledged one (its PUBREC waits) is not delivered again by the next client", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5 })
      const store = yield* MqttSessionStore.memory
      const options = {
        url: broker.url,
        protocolVersion: 5 as const,
        clientId: "durable-behind",
        store,
        sessionExpiryInterval: 60,
        cleanStart: false,
        acknowledgement: "manual" as const,
        reconnect: false as const
      }
      const first = yield* clientIn(options)
      const { connection } = yield* broker.acceptAndConnack()
      const client = yield* Fiber.join(first.fiber)
      const publish = (id: number, payload: string, dup = false) => ({
        cmd: "publish" as const,
        topic: "in",
        payload: Buffer.from(payload),
        qos: 2 as const,
        messageId: id,
        retain: false,
        dup
      })
      yield* connection.send(publish(1, "cut short"))
      yield* connection.send(publish(2, "handled"))
      const [cut, handled] = yield* client.messages.pipe(Stream.take(2), Stream.runCollect)
      expect([cut.text, handled.text]).toEqual(["cut short", "handled"])
      // the first one's handler never finishes; the second's ack completes (stored), its PUBREC waits behind
      yield* handled.ack
      yield* connection.expectSilence(100)
      yield* Scope.close(first.scope, Exit.void)
      const second = yield* clientIn(options)
      const next = yield* broker.accept
      yield* next.expect("connect")
      yield* next.connack({ sessionPresent: true })
      const restarted = yield* Fiber.join(second.fiber)
      // the broker resends both: the first is delivered again, the second answered in its turn, behind the first
      // [MQTT-4.6.0-3]
      yield* next.send(publish(1, "cut short", true))
      yield* next.send(publish(2, "handled", true))
      yield* next.send({
        cmd: "publish",
        topic: "in",
        payload: Buffer.from("marker"),
        qos: 0,
        retain: false,
        dup: false
      })
      const got = yield* restarted.messages.pipe(Stream.take(2), Stream.runCollect)
      expect(got.map((m) => m.text)).toEqual(["cut short", "marker"])
      yield* next.expectSilence(100)
      yield* got[0].ack
      expect((yield* next.expect("pubrec")).messageId).toBe(1)
      expect((yield* next.expect("pubrec")).messageId).toBe(2)
      yield* Scope.close(second.scope, Exit.void)
    }))

  it.live("with a store, message.ack of a QoS 2 message completes once its identifier is stored, before PUBREC", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5 })
      const { close, open, store } = yield* gatedStore
      const fiber = yield* Effect.forkChild(
        MqttClient.make({
          url: broker.url,
          protocolVersion: 5,
          clientId: "durable-9",
          store,
          sessionExpiryInterval: 60,
          acknowledgement: "manual",
          reconnect: false
        })
      )
      const { connection } = yield* broker.acceptAndConnack()
      const client = yield* Fiber.join(fiber)
      yield* connection.send({
        cmd: "publish",
        topic: "in",
        payload: Buffer.from("exactly once"),
        qos: 2,
        messageId: 9,
        retain: false,
        dup: false
      })
      const [message] = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
      // not acknowledged yet: no PUBREC
      yield* connection.expectSilence(100)
      yield* close
      const acking = yield* Effect.forkChild(message.ack)
      yield* connection.expectSilence(200)
      expect(acking.pollUnsafe()).toBeUndefined()
      yield* open
      yield* Fiber.join(acking)
      expect((yield* connection.expect("pubrec")).messageId).toBe(9)
    }).pipe(Effect.scoped))

  for (
    const consumer of [
      "messages",
      "subscription()",
      "runForEachByKey",
      "manual acknowledgement"
    ] as const
  ) {
    const gated = consumer !== "manual acknowledgement"
    it.live(
      gated
        ? `with a store and acknowledgement on hand-over (${consumer}), a QoS 2 message is taken only once the QoS 2 message taken before it is stored as delivered; QoS 1 is not held`
        : "with a store and manual acknowledgement, taking a QoS 2 message does not wait for the store",
      () =>
        Effect.gen(function*() {
          const broker = yield* FakeBroker.make({ protocolVersion: 5 })
          const { close, gate, open, store } = yield* gatedStore
          const fiber = yield* Effect.forkChild(
            MqttClient.make({
              url: broker.url,
              protocolVersion: 5,
              clientId: `durable-gate-${consumer}`,
              store,
              sessionExpiryInterval: 60,
              reconnect: false,
              ...(consumer === "manual acknowledgement" ? { acknowledgement: "manual" as const } : {})
            })
          )
          const { connection } = yield* broker.acceptAndConnack()
          const client = yield* Fiber.join(fiber)
          const taken: Array<string> = []
          const handle = (message: { readonly text: string }) => Effect.sync(() => taken.push(message.text))
          // the subscription() stream's scope: released at the end, its UNSUBSCRIBE answered
          const streamScope = yield* Scope.make()
          if (consumer === "subscription()") {
            const subscribing = yield* Effect.forkChild(
              Scope.provide(client.subscription("in/#", { qos: 2 }), streamScope)
            )
            const subscribe = yield* connection.expect("subscribe")
            yield* connection.send({ cmd: "suback", messageId: subscribe.messageId!, granted: [2] })
            const stream = yield* Fiber.join(subscribing)
            yield* Effect.forkChild(Stream.runForEach(stream, handle))
          } else if (consumer === "runForEachByKey") {
            // one key per message: the runner would take each at once
            yield* Effect.forkChild(client.runForEachByKey(handle, { key: (message) => message.text }))
          } else {
            yield* Effect.forkChild(Stream.runForEach(client.messages, handle))
          }
          // what the connection and the subscription stored is written; from now on the writes wait
          yield* Effect.sleep("50 millis")
          yield* close
          const publish = (id: number, payload: string, qos: 1 | 2) => ({
            cmd: "publish" as const,
            topic: "in/x",
            payload: Buffer.from(payload),
            qos,
            messageId: id,
            retain: false,
            dup: false
          })
          yield* connection.sendMany([publish(1, "a", 2), publish(2, "q1", 1), publish(3, "b", 2)])
          yield* Effect.sleep("200 millis")
          if (!gated) {
            // taken at once; nothing is stored as delivered until `ack`
            expect(taken).toEqual(["a", "q1", "b"])
            return
          }
          // "a" was taken and its identifier waits for the store; "q1" passed; "b" waits, untaken
          expect(taken).toEqual(["a", "q1"])
          expect(gate.waiting).toBeGreaterThan(0)
          yield* open
          yield* Effect.sleep("100 millis")
          expect(taken).toEqual(["a", "q1", "b"])
          if (consumer === "subscription()") {
            const releasing = yield* Effect.forkChild(Scope.close(streamScope, Exit.void))
            // past the acknowledgements written once the store let them go
            let unsubscribe = yield* connection.receive
            while (unsubscribe.cmd !== "unsubscribe") unsubscribe = yield* connection.receive
            yield* connection.send({ cmd: "unsuback", messageId: unsubscribe.messageId!, granted: [0] })
            yield* Fiber.join(releasing)
          }
        }).pipe(Effect.scoped)
    )
  }

  it.live("a durable client that is closing does not answer the broker's PUBREC: the next client resends, and the broker does not see the flow completed twice", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 4 })
      const { close, open, store } = yield* gatedStore
      const options = { url: broker.url, clientId: "durable-10", store, cleanStart: false, reconnect: false as const }
      const first = yield* clientIn(options)
      const { connection } = yield* broker.acceptAndConnack()
      const client = yield* Fiber.join(first.fiber)
      yield* Effect.forkChild(client.publish("t", "once", { qos: 2 }))
      const publish = yield* connection.expect("publish")
      // the client closes while a store write is slow (another publish's), so the connection is still open when
      // the PUBREC comes
      yield* close
      yield* Effect.forkChild(client.publish("t", "pending", { qos: 1 }))
      const closing = yield* Effect.forkChild(Scope.close(first.scope, Exit.void))
      yield* connection.send({ cmd: "pubrec", messageId: publish.messageId! })
      yield* Effect.sleep("100 millis")
      yield* open
      yield* Fiber.join(closing)
      // no PUBREL before the DISCONNECT: it would let the broker complete the flow, and the next client, whose store
      // says the PUBLISH was sent and not received, would send it again: a new message for the broker
      const before: Array<string> = []
      for (;;) {
        const packet = yield* connection.receive
        if (packet.cmd === "disconnect") break
        before.push(packet.cmd)
      }
      expect(before.filter((cmd) => cmd === "pubrel")).toEqual([])
      const second = yield* clientIn(options)
      const next = yield* broker.accept
      yield* next.expect("connect")
      yield* next.connack({ sessionPresent: true })
      const resent = yield* next.expect("publish")
      expect([text(resent), resent.messageId, resent.dup]).toEqual(["once", publish.messageId, true])
      yield* Fiber.join(second.fiber)
      yield* Scope.close(second.scope, Exit.void)
    }))

  it.live("a store needs a fixed client identifier", () =>
    Effect.gen(function*() {
      const store = yield* MqttSessionStore.memory
      const error = yield* Effect.flip(Effect.scoped(MqttClient.make({ url: "mqtt://127.0.0.1:1", store })))
      assert(error instanceof MqttError.InvalidOptionError)
      expect(error.option).toBe("store")
    }))
})

describe("durable sessions with a list of brokers", () => {
  it.live("the next client, given the nodes in another order, finds the session its predecessor stored and resends its publishes", () =>
    Effect.gen(function*() {
      const a = yield* FakeBroker.make({ protocolVersion: 5 })
      const b = yield* FakeBroker.make({ protocolVersion: 5 })
      const store = yield* MqttSessionStore.memory
      const options = {
        protocolVersion: 5 as const,
        clientId: "durable-list",
        store,
        sessionExpiryInterval: 3600,
        cleanStart: false,
        reconnect: false as const
      }
      const first = yield* clientIn({ ...options, url: [a.url, b.url] })
      const { connection } = yield* a.acceptAndConnack()
      const client = yield* Fiber.join(first.fiber)
      const pending = yield* Effect.forkChild(client.publish("t", "owed", { qos: 1 }))
      const sent = yield* connection.expect("publish")
      // the process goes away before the PUBACK; the next one lists the nodes in another order (a shuffled list)
      yield* Scope.close(first.scope, Exit.void)
      expect(Exit.isFailure(yield* Fiber.await(pending))).toBe(true)
      const second = yield* clientIn({ ...options, url: [b.url, a.url] })
      const next = yield* b.accept
      yield* next.expect("connect")
      yield* next.connack({ sessionPresent: false })
      const resent = yield* next.expect("publish")
      expect([text(resent), resent.qos]).toEqual(["owed", 1])
      expect(text(sent)).toBe("owed")
      yield* next.send({ cmd: "puback", messageId: resent.messageId!, reasonCode: 0 })
      yield* Fiber.join(second.fiber)
      yield* Scope.close(second.scope, Exit.void)
      // clearStore clears the session under every node of the list
      const storedUnder = (broker: FakeBroker.FakeBroker) =>
        Effect.map(store.kv.keys, (keys) => keys.filter((key) => key.includes(encodeURIComponent(broker.url))).length)
      expect(yield* storedUnder(a)).toBeGreaterThan(0)
      const third = yield* clientIn({ ...options, url: [b.url, a.url], clearStore: true })
      yield* b.acceptAndConnack()
      yield* Fiber.join(third.fiber)
      expect(yield* storedUnder(a)).toBe(0)
      yield* Scope.close(third.scope, Exit.void)
    }))
})

describe("durable sessions with a list of brokers: the node that carried the session last is not known", () => {
  it.live("the next client, resumed (Session Present 1) on a node of the list, makes every stored subscription again there", () =>
    Effect.gen(function*() {
      const a = yield* FakeBroker.make({ protocolVersion: 5 })
      const b = yield* FakeBroker.make({ protocolVersion: 5 })
      const store = yield* MqttSessionStore.memory
      const options = {
        url: [a.url, b.url],
        protocolVersion: 5 as const,
        clientId: "durable-carrier",
        store,
        sessionExpiryInterval: 3600,
        cleanStart: false
      }
      const first = yield* clientIn({ ...options, reconnect: Schedule.spaced("10 millis") })
      const onA = yield* a.acceptAndConnack()
      const client = yield* Fiber.join(first.fiber)
      const subscribed = (connection: FakeBroker.FakeConnection, filter: string) =>
        Effect.gen(function*() {
          const fiber = yield* Effect.forkChild(client.subscribe(filter, { qos: 1 }))
          const subscribe = yield* connection.expect("subscribe")
          yield* connection.send({ cmd: "suback", messageId: subscribe.messageId!, granted: [1] })
          yield* Fiber.join(fiber)
        })
      yield* subscribed(onA.connection, "on/a")
      // a goes down: the session moves to b (a fresh one there: restored), where another filter is subscribed
      yield* onA.connection.destroy
      const onB = yield* b.accept
      yield* onB.expect("connect")
      yield* onB.connack({ sessionPresent: false })
      const restore = yield* onB.expect("subscribe")
      yield* onB.send({ cmd: "suback", messageId: restore.messageId!, granted: [1] })
      yield* subscribed(onB, "on/b")
      yield* Scope.close(first.scope, Exit.void)
      // the next process starts on a, which kept its older session (Session Present 1): without "on/b"
      const second = yield* clientIn({ ...options, reconnect: false })
      const next = yield* a.accept
      yield* next.expect("connect")
      yield* next.connack({ sessionPresent: true })
      // a SUBSCRIBE per subscription identifier: one for each filter here
      const again = [yield* next.expect("subscribe"), yield* next.expect("subscribe")]
      expect(again.flatMap((p) => p.subscriptions.map((s) => [s.topic, s.rh])).sort()).toEqual([["on/a", 1], [
        "on/b",
        1
      ]])
      yield* Fiber.join(second.fiber)
      yield* Scope.close(second.scope, Exit.void)
    }))
})
