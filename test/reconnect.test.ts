/**
 * Reconnection and session continuity against the scripted fake broker: what the client sends on the next
 * connection after a drop (resends with DUP and the same identifiers, in order, before new publishes; PUBREL;
 * restored subscriptions), when it reconnects and when it gives up, its backoff on `TestClock`, and what
 * operations do while it is offline.
 */
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import { assert, describe, expect, it } from "@effect/vitest"
import { Cause, Clock, Deferred, Duration, Effect, Exit, Fiber, Logger, Option, Schedule, Scope, Stream } from "effect"
import { IncomingQueue, MqttClient, MqttError, MqttSessionStore, MqttTestBroker } from "effect-mqtt"
import * as KeyValueStore from "effect/persistence/KeyValueStore"
import { TestClock } from "effect/testing"
import type { Packet } from "mqtt-packet"
import * as FakeBroker from "./support/FakeBroker.ts"
import { mosquitto } from "./support/Mosquitto.ts"

// ---------------------------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------------------------

type Version = 4 | 5
const versions: ReadonlyArray<Version> = [4, 5]

/** Lets real I/O happen (the fake broker and the client talk over real sockets, even on TestClock). */
const settle = Effect.promise(() => new Promise<void>((resolve) => setTimeout(resolve, 30)))
const sleepReal = (ms: number) => Effect.promise(() => new Promise<void>((resolve) => setTimeout(resolve, ms)))

/** A session the broker keeps between connections: 3.1.1 Clean Session 0; 5.0 Clean Start 0 and an expiry. */
const persistent = (protocolVersion: Version): MqttClient.Options =>
  protocolVersion === 5
    ? { protocolVersion, clientId: "persistent-5", cleanStart: false, sessionExpiryInterval: 3600 }
    : { protocolVersion, clientId: "persistent-4", cleanSession: false }

/** A fast schedule for `it.live` tests: the next attempt 10 ms after a loss, forever. */
const fast = Schedule.spaced("10 millis")

/**
 * How the client reaches the fake broker: Node's TCP socket (read in its own events), or a socket read by a fiber
 * (Node's WebSocket; a custom transport, here Effect's TCP socket).
 */
type Transport = "TCP" | "WebSocket" | "a custom transport"

/**
 * A client connected to a fresh fake broker, and the status changes it reports from then on. The fake broker
 * answers nothing by itself: each test scripts the next connection with `broker.accept`.
 */
const start = (options: MqttClient.Options = {}, connack?: FakeBroker.ConnackOptions, over: Transport = "TCP") =>
  Effect.gen(function*() {
    const broker = yield* FakeBroker.make({
      protocolVersion: options.protocolVersion ?? 4,
      websocket: over === "WebSocket"
    })
    const transport = over === "a custom transport"
      ? { transport: NodeSocket.makeNet({ host: "127.0.0.1", port: broker.port }) }
      : {}
    const fiber = yield* Effect.forkChild(
      MqttClient.make({ url: broker.url, reconnect: fast, ...transport, ...options })
    )
    const { connect, connection } = yield* broker.acceptAndConnack(connack)
    const client = yield* Fiber.join(fiber)
    const statuses = yield* record(client)
    return { broker, client, connection, connect, statuses }
  })

/** Every status the client reports from now on (the current one first). */
const record = (client: MqttClient.Client) =>
  Effect.gen(function*() {
    const seen: Array<MqttClient.ConnectionStatus> = []
    yield* Effect.forkChild(
      Stream.runForEach(client.statusChanges, (status) => Effect.sync(() => seen.push(status))),
      { startImmediately: true }
    )
    yield* Effect.yieldNow
    return seen
  })

/** Waits (in real time, at most 10 s) until the client reports a status with this tag. */
const awaitStatus = (client: MqttClient.Client, tag: MqttClient.ConnectionStatus["_tag"]) =>
  client.statusChanges.pipe(
    Stream.filter((status) => status._tag === tag),
    Stream.runHead,
    Effect.map(Option.getOrThrow),
    Effect.timeoutOrElse({
      duration: "10 seconds",
      orElse: () => Effect.die(new Error(`the client never reported ${tag}`))
    })
  )

const text = (packet: { readonly payload: Buffer | string | Uint8Array }) => Buffer.from(packet.payload).toString()

/** The DUP flag as it was on the wire (bit 3 of the first byte). */
const dupOnWire = (connection: FakeBroker.FakeConnection, packet: Packet): boolean => {
  const index = connection.received.indexOf(packet)
  assert(index >= 0, "the packet was received on this connection")
  return (connection.receivedRaw[index][0] & 0x08) !== 0
}

/** Forks a publish and waits until the broker has received its PUBLISH, so that forks keep their call order. */
const publishSent = (
  client: MqttClient.Client,
  connection: FakeBroker.FakeConnection,
  payload: string,
  qos: 1 | 2,
  topic = "t"
) =>
  Effect.gen(function*() {
    const fiber = yield* Effect.forkChild(client.publish(topic, payload, { qos }))
    const packet = yield* connection.expect("publish")
    expect(text(packet)).toBe(payload)
    return { fiber, packet, id: packet.messageId! }
  })

/** The next connection, its CONNECT checked to ask for the persistent session again. */
const acceptPersistent = (broker: FakeBroker.FakeBroker, protocolVersion: Version) =>
  Effect.gen(function*() {
    const connection = yield* broker.accept
    const connect = yield* connection.expect("connect")
    expect(connect.clean).toBe(false)
    if (protocolVersion === 5) expect(connect.properties?.sessionExpiryInterval).toBe(3600)
    return connection
  })

/** The typed failure of an exit; fails the test on a success or a defect. */
const errorOf = <A, E>(exit: Exit.Exit<A, E>): E => {
  if (Exit.isSuccess(exit)) return assert.fail("expected a failure, got a success")
  const failure = exit.cause.reasons.find(Cause.isFailReason)
  if (failure === undefined) return assert.fail(`expected a typed failure, got ${Cause.pretty(exit.cause)}`)
  return failure.error
}

const isDone = (fiber: Fiber.Fiber<unknown, unknown>) => fiber.pollUnsafe() !== undefined

// ---------------------------------------------------------------------------------------------------------------
// session continuity
// ---------------------------------------------------------------------------------------------------------------

describe("session continuity (Session Present 1)", () => {
  for (const version of versions) {
    it.live(
      `v${version}: unacknowledged QoS 1 PUBLISHes are resent with the same ids and DUP, in order, before a publish made during the outage [MQTT-4.4.0-1]`,
      () =>
        Effect.gen(function*() {
          const { broker, client, connection } = yield* start(persistent(version))
          const sent = [
            yield* publishSent(client, connection, "one", 1),
            yield* publishSent(client, connection, "two", 1),
            yield* publishSent(client, connection, "three", 1)
          ]
          for (const { packet } of sent) expect(dupOnWire(connection, packet)).toBe(false)
          yield* connection.destroy

          const second = yield* acceptPersistent(broker, version)
          // the client is offline until the CONNACK: this publish is newer than the three in flight
          const during = yield* Effect.forkChild(client.publish("t", "four", { qos: 1 }))
          yield* settle
          yield* second.connack({ sessionPresent: true })

          const resent = [
            yield* second.expect("publish"),
            yield* second.expect("publish"),
            yield* second.expect("publish")
          ]
          expect(resent.map((p) => [p.messageId, text(p), p.qos])).toEqual(
            sent.map(({ id, packet }) => [id, text(packet), 1])
          )
          for (const packet of resent) {
            expect(packet.dup).toBe(true)
            expect(dupOnWire(second, packet)).toBe(true)
          }
          const fresh = yield* second.expect("publish")
          expect(text(fresh)).toBe("four")
          expect(dupOnWire(second, fresh)).toBe(false)
          expect(sent.map(({ id }) => id)).not.toContain(fresh.messageId)

          // the callers still wait: they complete on the new connection's PUBACKs
          yield* settle
          for (const { fiber } of sent) expect(isDone(fiber)).toBe(false)
          for (const packet of [...resent, fresh]) yield* second.send({ cmd: "puback", messageId: packet.messageId! })
          for (const { fiber } of sent) yield* Fiber.join(fiber)
          yield* Fiber.join(during)
          yield* second.expectSilence(100)
          expect(second.isClosed).toBe(false)
        })
    )

    it.live(
      `v${version}: after PUBREC the PUBREL is resent with the same id and the PUBLISH is not; completes on PUBCOMP`,
      () =>
        Effect.gen(function*() {
          const { broker, client, connection } = yield* start(persistent(version))
          const released = yield* publishSent(client, connection, "released", 2)
          yield* connection.send({ cmd: "pubrec", messageId: released.id })
          expect((yield* connection.expect("pubrel")).messageId).toBe(released.id)
          // a second QoS 2 publish, only PUBLISHed: resent as PUBLISH, after the PUBREL (call order)
          const unanswered = yield* publishSent(client, connection, "unanswered", 2)
          yield* connection.destroy

          const second = yield* acceptPersistent(broker, version)
          yield* second.connack({ sessionPresent: true })
          const pubrel = yield* second.expect("pubrel")
          expect(pubrel.messageId).toBe(released.id)
          const publish = yield* second.expect("publish")
          expect([publish.messageId, text(publish), publish.dup]).toEqual([unanswered.id, "unanswered", true])
          yield* second.expectSilence(100)
          expect(second.received.filter((p) => p.cmd === "publish").map(text)).toEqual(["unanswered"])

          expect(isDone(released.fiber)).toBe(false)
          yield* second.send({ cmd: "pubcomp", messageId: released.id })
          yield* Fiber.join(released.fiber)
          yield* second.send({ cmd: "pubrec", messageId: unanswered.id })
          expect((yield* second.expect("pubrel")).messageId).toBe(unanswered.id)
          yield* second.send({ cmd: "pubcomp", messageId: unanswered.id })
          yield* Fiber.join(unanswered.fiber)
          expect(second.isClosed).toBe(false)
        })
    )

    it.live(`v${version}: an incoming QoS 2 message resent after a reconnect is delivered once`, () =>
      Effect.gen(function*() {
        const { broker, client, connection } = yield* start(persistent(version))
        const publish: Packet = {
          cmd: "publish",
          topic: "in",
          payload: Buffer.from("once"),
          qos: 2,
          messageId: 9,
          retain: false,
          dup: false
        }
        yield* connection.send(publish)
        const first = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
        expect((yield* connection.expect("pubrec")).messageId).toBe(9)
        yield* connection.destroy
        const second = yield* acceptPersistent(broker, version)
        yield* second.connack({ sessionPresent: true })
        // the broker did not see the PUBREC: it resends the PUBLISH with DUP, then releases it
        yield* second.send({ ...publish, dup: true })
        expect((yield* second.expect("pubrec")).messageId).toBe(9)
        yield* second.send({ cmd: "pubrel", messageId: 9 })
        expect((yield* second.expect("pubcomp")).messageId).toBe(9)
        yield* second.send({
          cmd: "publish",
          topic: "in",
          payload: Buffer.from("marker"),
          qos: 0,
          retain: false,
          dup: false
        })
        const rest = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
        expect([...first, ...rest].map((m) => m.text)).toEqual(["once", "marker"])
      }))
  }

  it.live(
    "after its PUBCOMP, a PUBLISH with the same identifier is a new message, DUP or not (MQTT 4.3.3): delivered again",
    () =>
      Effect.gen(function*() {
        const { broker, client, connection } = yield* start(persistent(4))
        const publish: Packet = {
          cmd: "publish",
          topic: "in",
          payload: Buffer.from("first"),
          qos: 2,
          messageId: 11,
          retain: false,
          dup: false
        }
        yield* connection.send(publish)
        const first = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
        yield* connection.expect("pubrec")
        yield* connection.send({ cmd: "pubrel", messageId: 11 })
        yield* connection.expect("pubcomp")
        yield* connection.destroy
        const next = yield* acceptPersistent(broker, 4)
        yield* next.connack({ sessionPresent: true })
        // a broker that lost the PUBCOMP must resend PUBREL; a PUBLISH is a new message for the receiver
        yield* next.send({ ...publish, dup: true, payload: Buffer.from("second") })
        const second = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
        expect((yield* next.expect("pubrec")).messageId).toBe(11)
        expect([...first, ...second].map((m) => m.text)).toEqual(["first", "second"])
      })
  )

  it.live("v5: topic aliases belong to one connection: resends after a reconnect name their topic again", () =>
    Effect.gen(function*() {
      const { broker, client, connection } = yield* start(persistent(5), { properties: { topicAliasMaximum: 5 } })
      const topic = "a/rather/long/topic/name"
      const first = yield* publishSent(client, connection, "one", 1, topic)
      const second = yield* publishSent(client, connection, "two", 1, topic)
      // on the first connection the second PUBLISH went by alias alone
      expect(first.packet.topic).toBe(topic)
      const alias = first.packet.properties?.topicAlias
      expect(alias).toBeDefined()
      expect([second.packet.topic, second.packet.properties?.topicAlias]).toEqual(["", alias])
      yield* connection.destroy

      const next = yield* acceptPersistent(broker, 5)
      yield* next.connack({ sessionPresent: true, properties: { topicAliasMaximum: 5 } })
      const resent = [yield* next.expect("publish"), yield* next.expect("publish")]
      expect(resent.map((p) => [p.messageId, text(p), p.dup])).toEqual([[first.id, "one", true], [
        second.id,
        "two",
        true
      ]])
      // the first resend names the topic; any later PUBLISH without a name uses an alias set on this connection
      expect(resent[0].topic).toBe(topic)
      const defined = new Map<number, string>()
      for (const p of resent) {
        const a = p.properties?.topicAlias
        if (p.topic !== "") {
          if (a !== undefined) defined.set(a, p.topic)
          continue
        }
        assert(a !== undefined && defined.get(a) === topic, `an alias set on this connection: ${JSON.stringify(p)}`)
      }
      for (const p of resent) yield* next.send({ cmd: "puback", messageId: p.messageId! })
      yield* Fiber.join(first.fiber)
      yield* Fiber.join(second.fiber)
    }))

  it.live("v5: the broker's Receive Maximum quota restarts with each connection", () =>
    Effect.gen(function*() {
      const { broker, client, connection } = yield* start(persistent(5), { properties: { receiveMaximum: 2 } })
      const fibers: Array<Fiber.Fiber<void, MqttError.MqttError>> = []
      for (let i = 0; i < 7; i++) {
        fibers.push(yield* Effect.forkChild(client.publish("t", `m${i}`, { qos: 1 }), { startImmediately: true }))
      }
      const first = [yield* connection.expect("publish"), yield* connection.expect("publish")]
      yield* connection.expectSilence(100)
      yield* connection.destroy

      const second = yield* acceptPersistent(broker, 5)
      yield* second.connack({ sessionPresent: true, properties: { receiveMaximum: 4 } })
      // the two still unacknowledged count against the new quota as resends, and the quota is 4, not 4 - 2
      const window = [
        yield* second.expect("publish"),
        yield* second.expect("publish"),
        yield* second.expect("publish"),
        yield* second.expect("publish")
      ]
      yield* second.expectSilence(100)
      expect(window.map(text)).toEqual(["m0", "m1", "m2", "m3"])
      expect(window.slice(0, 2).map((p) => [p.messageId, p.dup])).toEqual(first.map((p) => [p.messageId, true]))
      yield* second.send({ cmd: "puback", messageId: window[0].messageId! })
      const fifth = yield* second.expect("publish")
      expect(text(fifth)).toBe("m4")
      yield* second.expectSilence(100)
      const rest: Array<Packet & { cmd: "publish" }> = [fifth]
      for (const p of window.slice(1)) yield* second.send({ cmd: "puback", messageId: p.messageId! })
      rest.push(yield* second.expect("publish"), yield* second.expect("publish"))
      for (const p of rest) yield* second.send({ cmd: "puback", messageId: p.messageId! })
      for (const fiber of fibers) yield* Fiber.join(fiber)
      expect(rest.map(text)).toEqual(["m4", "m5", "m6"])
    }))
})

describe("a handshake that fails after its CONNACK was accepted (the CONNACK and a bad packet in one read)", () => {
  /** A client of a fake broker that reconnects every `spacing`, with its first connection. */
  const connected = (spacing: Duration.Input) =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5, autoPingresp: true })
      const fiber = yield* Effect.forkChild(MqttClient.make({
        url: broker.url,
        protocolVersion: 5,
        reconnect: Schedule.spaced(spacing),
        logLevel: "Error"
      }))
      const { connection } = yield* broker.acceptAndConnack()
      return { broker, client: yield* Fiber.join(fiber), c1: connection }
    })

  /** CONNACK (Session Present 0) and a PUBLISH with topic alias 0, a Protocol Error, in one write. */
  const connackThenViolation = (c: FakeBroker.FakeConnection) =>
    Effect.gen(function*() {
      yield* c.expect("connect")
      const connack = c.encode({ cmd: "connack", sessionPresent: false, reasonCode: 0 } as Packet)
      const bad = Uint8Array.from([0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x00])
      yield* c.sendMany([connack, bad])
    })

  it.live(
    "the session loses that connection too: the next one restores the subscriptions, also one made meanwhile",
    () =>
      Effect.gen(function*() {
        const { broker, c1, client } = yield* connected("50 millis")
        const subscribed = yield* Effect.forkChild(client.subscribe("a/#", { qos: 1 }))
        const s1 = yield* c1.expect("subscribe")
        yield* c1.send({ cmd: "suback", messageId: s1.messageId!, granted: [1], properties: {} } as Packet)
        yield* Fiber.join(subscribed)
        yield* c1.destroy
        yield* connackThenViolation(yield* broker.accept)
        const meanwhile = yield* Effect.forkChild(client.subscribe("b/#", { qos: 1 }))
        const c3 = yield* broker.accept
        yield* c3.expect("connect")
        yield* c3.connack({ sessionPresent: false })
        const filters: Array<string> = []
        while (filters.length < 2) {
          const packet = yield* c3.expect("subscribe")
          for (const s of packet.subscriptions) filters.push(s.topic)
          yield* c3.send(
            {
              cmd: "suback",
              messageId: packet.messageId!,
              granted: packet.subscriptions.map(() => 1),
              properties: {}
            } as Packet
          )
        }
        expect(filters.sort()).toEqual(["a/#", "b/#"])
        yield* Fiber.join(meanwhile)
      }).pipe(Effect.scoped),
    30_000
  )

  it.live(
    "a QoS 0 publish made while reconnecting is kept for the next connection (offline buffer), not written to the dead one",
    () =>
      Effect.gen(function*() {
        const { broker, c1, client } = yield* connected("300 millis")
        yield* c1.destroy
        const c2 = yield* broker.accept
        yield* connackThenViolation(c2)
        yield* c2.closed
        yield* Stream.runDrain(Stream.take(Stream.filter(client.statusChanges, (s) => s._tag === "Disconnected"), 1))
        yield* client.publish("t", "while offline")
        const c3 = yield* broker.accept
        yield* c3.expect("connect")
        yield* c3.connack({ sessionPresent: false })
        const publish = yield* c3.expect("publish")
        expect(Buffer.from(publish.payload).toString()).toBe("while offline")
      }).pipe(Effect.scoped),
    30_000
  )
})

describe("Session Present 0 while the client holds state", () => {
  for (const version of versions) {
    it.live(
      `v${version}: subscriptions are restored, unacknowledged publishes are sent again as new messages, a PUBREC'd QoS 2 publish fails (delivery unknown), incoming QoS 2 state is discarded`,
      () =>
        Effect.gen(function*() {
          const { broker, client, connection } = yield* start(persistent(version))
          const subscription = yield* Effect.forkChild(
            client.subscribe(
              version === 5
                ? ["a/+", { filter: "b/#", qos: 2, noLocal: true, retainAsPublished: true, retainHandling: 2 }]
                : ["a/+", { filter: "b/#", qos: 2 }],
              { qos: 1 }
            )
          )
          const subscribe = yield* connection.expect("subscribe")
          yield* connection.send({ cmd: "suback", messageId: subscribe.messageId!, granted: [1, 2] })
          yield* Fiber.join(subscription)

          const q1 = yield* publishSent(client, connection, "q1", 1)
          const q2Released = yield* publishSent(client, connection, "q2-released", 2)
          yield* connection.send({ cmd: "pubrec", messageId: q2Released.id })
          yield* connection.expect("pubrel")
          const q2 = yield* publishSent(client, connection, "q2", 2)
          // an incoming QoS 2 message, delivered and PUBREC'd, never released
          yield* connection.send({
            cmd: "publish",
            topic: "a/x",
            payload: Buffer.from("before"),
            qos: 2,
            messageId: 7,
            retain: false,
            dup: false
          })
          const before = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
          expect((yield* connection.expect("pubrec")).messageId).toBe(7)
          yield* connection.destroy

          const second = yield* acceptPersistent(broker, version)
          yield* second.connack({ sessionPresent: false })

          const restore = yield* second.expect("subscribe")
          expect(restore.subscriptions).toEqual(subscribe.subscriptions)
          const again = [yield* second.expect("publish"), yield* second.expect("publish")]
          expect(again.map((p) => [text(p), p.qos, p.dup])).toEqual([["q1", 1, false], ["q2", 2, false]])
          for (const packet of again) expect(dupOnWire(second, packet)).toBe(false)
          yield* second.expectSilence(100)
          // whether the broker sent the PUBREC'd message on is not known: no PUBLISH and no PUBREL for it, and it
          // fails with ConnectionLostError
          expect(second.received.some((p) => p.cmd === "pubrel")).toBe(false)
          const releasedExit = yield* Fiber.await(q2Released.fiber)
          assert(Exit.isFailure(releasedExit))
          expect(String(Cause.squash(releasedExit.cause))).toContain("whether it was delivered is not known")

          yield* second.send({ cmd: "suback", messageId: restore.messageId!, granted: [1, 2] })
          yield* second.send({ cmd: "puback", messageId: again[0].messageId! })
          yield* Fiber.join(q1.fiber)
          yield* second.send({ cmd: "pubrec", messageId: again[1].messageId! })
          expect((yield* second.expect("pubrel")).messageId).toBe(again[1].messageId)
          yield* second.send({ cmd: "pubcomp", messageId: again[1].messageId! })
          yield* Fiber.join(q2.fiber)

          // the new session may use identifier 7 for a new message: it is delivered, not taken for a resend
          yield* second.send({
            cmd: "publish",
            topic: "a/x",
            payload: Buffer.from("after"),
            qos: 2,
            messageId: 7,
            retain: false,
            dup: false
          })
          const after = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
          expect((yield* second.expect("pubrec")).messageId).toBe(7)
          expect([...before, ...after].map((m) => m.text)).toEqual(["before", "after"])
        })
    )

    it.live(`v${version}: Session Present 1 in answer to Clean Start fails the first connection [MQTT-3.2.2-4]`, () =>
      Effect.gen(function*() {
        const broker = yield* FakeBroker.make({ protocolVersion: version })
        const fiber = yield* Effect.forkChild(
          Effect.exit(MqttClient.make({ url: broker.url, protocolVersion: version }))
        )
        const connection = yield* broker.accept
        expect((yield* connection.expect("connect")).clean).toBe(true)
        yield* connection.connack({ sessionPresent: true })
        if (version === 5) expect((yield* connection.expect("disconnect")).reasonCode).toBe(0x82)
        yield* connection.closed
        const error = errorOf(yield* Fiber.join(fiber))
        assert(error instanceof MqttError.ProtocolError, String(error))
        yield* sleepReal(100)
        expect(broker.connections.length).toBe(1)
      }))

    it.live(
      `v${version}: Session Present 1 in answer to a reconnect with Clean Start closes that connection, and the next attempt restores the subscriptions`,
      () =>
        Effect.gen(function*() {
          const { broker, client, connection, statuses } = yield* start({ protocolVersion: version })
          const subscription = yield* Effect.forkChild(client.subscribe("s/#", { qos: 1 }))
          const subscribe = yield* connection.expect("subscribe")
          yield* connection.send({ cmd: "suback", messageId: subscribe.messageId!, granted: [1] })
          yield* Fiber.join(subscription)
          yield* connection.destroy

          const second = yield* broker.accept
          expect((yield* second.expect("connect")).clean).toBe(true)
          yield* second.connack({ sessionPresent: true })
          if (version === 5) expect((yield* second.expect("disconnect")).reasonCode).toBe(0x82)
          yield* second.closed
          expect(second.received.map((p) => p.cmd)).toEqual(version === 5 ? ["connect", "disconnect"] : ["connect"])

          const third = yield* broker.accept
          yield* third.expect("connect")
          yield* third.connack({ sessionPresent: false })
          expect((yield* third.expect("subscribe")).subscriptions).toEqual(subscribe.subscriptions)
          const refusal = statuses.find((s) => s._tag === "Disconnected" && s.cause._tag === "ProtocolError")
          assert(refusal !== undefined, `a Disconnected status with the ProtocolError: ${JSON.stringify(statuses)}`)
        })
    )
  }
})

// ---------------------------------------------------------------------------------------------------------------
// detecting a dead connection (TestClock)
// ---------------------------------------------------------------------------------------------------------------

describe("dead connections (TestClock)", () => {
  it.effect("a withheld PINGRESP closes the connection after the ping timeout, and the client reconnects", () =>
    Effect.gen(function*() {
      const { broker, client, connection, statuses } = yield* start({
        keepAlive: 10,
        pingTimeout: "4 seconds",
        reconnect: Schedule.exponential("100 millis")
      })
      yield* settle
      yield* TestClock.adjust("10 seconds")
      yield* connection.expect("pingreq")
      yield* TestClock.adjust("3 seconds")
      yield* settle
      expect(connection.isClosed).toBe(false)
      yield* TestClock.adjust("1 second")
      yield* connection.closed
      yield* settle
      const disconnected = statuses.at(-1)
      assert(disconnected?._tag === "Disconnected", JSON.stringify(statuses))
      assert(disconnected.cause instanceof MqttError.MqttTimeoutError)
      expect(disconnected.cause.operation).toBe("ping")
      expect(Duration.toMillis(disconnected.retryIn!)).toBe(100)
      expect(broker.connections.length).toBe(1)
      yield* TestClock.adjust("100 millis")
      const second = yield* broker.accept
      yield* second.expect("connect")
      yield* second.connack()
      yield* settle
      expect(statuses.at(-1)?._tag).toBe("Connected")
      expect((yield* client.metrics).reconnects).toBe(1)
    }))

  it.effect("a half-open connection (the broker stops reading) is detected by the keepalive; the QoS 1 in flight is resent", () =>
    Effect.gen(function*() {
      const { broker, client, connection, statuses } = yield* start({
        ...persistent(4),
        keepAlive: 10,
        pingTimeout: "5 seconds",
        reconnect: Schedule.exponential("100 millis")
      })
      const sent = yield* publishSent(client, connection, "in flight", 1)
      yield* connection.pause
      yield* settle
      yield* TestClock.adjust("10 seconds")
      yield* settle
      expect(connection.isClosed).toBe(false)
      yield* TestClock.adjust("5 seconds")
      yield* settle
      // a paused peer never reads the FIN, so `connection.closed` cannot tell: the client's status does
      const disconnected = statuses.at(-1)
      assert(disconnected?._tag === "Disconnected", JSON.stringify(statuses))
      assert(disconnected.cause instanceof MqttError.MqttTimeoutError)
      expect(disconnected.cause.operation).toBe("ping")
      yield* TestClock.adjust("100 millis")
      const next = yield* acceptPersistent(broker, 4)
      yield* next.connack({ sessionPresent: true })
      const resent = yield* next.expect("publish")
      expect([resent.messageId, text(resent), resent.dup]).toEqual([sent.id, "in flight", true])
      yield* next.send({ cmd: "puback", messageId: sent.id })
      yield* Fiber.join(sent.fiber)
    }))

  it.effect(
    "a half-open connection is detected while the client keeps publishing QoS 1 that is never acknowledged",
    () =>
      Effect.gen(function*() {
        const { broker, client, connection, statuses } = yield* start({
          ...persistent(4),
          keepAlive: 10,
          pingTimeout: "5 seconds",
          reconnect: Schedule.exponential("100 millis")
        })
        yield* connection.pause
        // the application publishes every 3 s: the client always has something to send, so a keepalive that
        // only counts what is sent never pings, while nothing at all comes back from the broker
        const fibers: Array<Fiber.Fiber<void, MqttError.MqttError>> = []
        for (let second = 0; second < 45; second += 3) {
          if (statuses.some((s) => s._tag === "Disconnected")) break
          fibers.push(
            yield* Effect.forkChild(client.publish("t", `m${second}`, { qos: 1 }), { startImmediately: true })
          )
          yield* settle
          yield* TestClock.adjust("3 seconds")
        }
        yield* settle
        // keepalive 10 s plus a 5 s ping timeout: after 45 s of silence the connection must have been given up
        const lostAt = statuses.findIndex((s) => s._tag === "Disconnected")
        assert(lostAt >= 0, `still ${statuses.at(-1)?._tag} after 45 s without a packet from the broker`)
        yield* TestClock.adjust("1 second")
        const next = yield* acceptPersistent(broker, 4)
        yield* next.connack({ sessionPresent: true })
        const resent = yield* next.expect("publish")
        expect([text(resent), resent.dup]).toEqual(["m0", true])
        for (const fiber of fibers) expect(isDone(fiber)).toBe(false)
      })
  )

  it.effect("a CONNACK that never comes on a reconnect times out, then the next attempt waits its backoff", () =>
    Effect.gen(function*() {
      const { broker, connection, statuses } = yield* start({
        keepAlive: 0,
        connectTimeout: "5 seconds",
        reconnect: Schedule.exponential("100 millis")
      })
      yield* connection.destroy
      yield* settle
      yield* TestClock.adjust("100 millis")
      const silent = yield* broker.accept
      yield* silent.expect("connect")
      yield* settle
      yield* TestClock.adjust("4900 millis")
      yield* settle
      expect(silent.isClosed).toBe(false)
      yield* TestClock.adjust("100 millis")
      yield* silent.closed
      yield* settle
      const disconnected = statuses.at(-1)
      assert(disconnected?._tag === "Disconnected", JSON.stringify(statuses))
      assert(disconnected.cause instanceof MqttError.MqttTimeoutError)
      expect(disconnected.cause.operation).toBe("connect")
      expect(Duration.toMillis(disconnected.retryIn!)).toBe(200)
      yield* TestClock.adjust("199 millis")
      yield* settle
      expect(broker.connections.length).toBe(2)
      yield* TestClock.adjust("1 millis")
      const third = yield* broker.accept
      yield* third.expect("connect")
      yield* third.connack()
      yield* settle
      expect(statuses.at(-1)?._tag).toBe("Connected")
    }))
})

// ---------------------------------------------------------------------------------------------------------------
// server DISCONNECT (MQTT 5)
// ---------------------------------------------------------------------------------------------------------------

describe("v5 server DISCONNECT", () => {
  for (const [code, name] of [[0x8b, "server shutting down"], [0x9c, "use another server"]] as const) {
    it.live(`0x${code.toString(16)} (${name}) is a typed cause, and the client reconnects to the same broker`, () =>
      Effect.gen(function*() {
        const { broker, client, connection, statuses } = yield* start({ protocolVersion: 5 })
        yield* connection.send({
          cmd: "disconnect",
          reasonCode: code,
          properties: { reasonString: name, ...(code === 0x9c ? { serverReference: "127.0.0.1:1" } : {}) }
        })
        yield* connection.closed
        const second = yield* broker.accept
        yield* second.expect("connect")
        yield* second.connack()
        yield* awaitStatus(client, "Connected")
        const cause = statuses.find((s) => s._tag === "Disconnected")
        assert(cause?._tag === "Disconnected", JSON.stringify(statuses))
        assert(cause.cause instanceof MqttError.ConnectionLostError)
        expect([cause.cause.reasonCode, cause.cause.reasonString]).toEqual([code, name])
      }))
  }

  for (const [code, name] of [[0x8e, "session taken over"], [0x9d, "server moved"]] as const) {
    it.live(
      `0x${
        code.toString(16)
      } (${name}) stops the client: no reconnect, awaitClose and waiting operations fail with the reason code`,
      () =>
        Effect.gen(function*() {
          const { broker, client, connection, statuses } = yield* start({ protocolVersion: 5 })
          const pending = yield* publishSent(client, connection, "pending", 1)
          const messages = yield* Effect.forkChild(Effect.exit(Stream.runDrain(client.messages)))
          yield* connection.send({
            cmd: "disconnect",
            reasonCode: code,
            properties: { reasonString: name, ...(code === 0x9d ? { serverReference: "127.0.0.1:1" } : {}) }
          })
          const error = errorOf(yield* Effect.exit(client.awaitClose))
          assert(error instanceof MqttError.ConnectionLostError, String(error))
          expect(error.reasonCode).toBe(code)
          expect(errorOf(yield* Fiber.await(pending.fiber))).toEqual(error)
          expect(errorOf(yield* Fiber.join(messages))).toEqual(error)
          yield* connection.closed
          // with a 10 ms schedule, a reconnect would have come by now
          yield* sleepReal(300)
          expect(broker.connections.length).toBe(1)
          const last = statuses.at(-1)
          assert(last?._tag === "Closed", JSON.stringify(statuses))
          expect(last.cause).toEqual(error)
        })
    )
  }
})

for (const over of ["TCP", "WebSocket", "a custom transport"] as const) {
  describe(`a DISCONNECT behind messages the reader has no room for (${over})`, () => {
    /** As `stalled`, with `behind` sent in the same write as the messages. */
    const stalledWith = (behind: ReadonlyArray<Packet>, options: MqttClient.Options = {}) =>
      Effect.gen(function*() {
        const started = yield* start(
          {
            protocolVersion: 5,
            keepAlive: 1,
            queue: IncomingQueue.bounded(1),
            receiveMaximum: 100,
            ...options
          },
          undefined,
          over
        )
        const { client, connection } = started
        yield* Effect.forkChild(client.subscribe("t", { qos: 1 }))
        const subscribe = yield* connection.expect("subscribe")
        yield* connection.send({ cmd: "suback", messageId: subscribe.messageId!, granted: [1] })
        yield* settle
        yield* connection.sendMany([...[1, 2, 3].map((i) => qos1("t", `${i}`, i)), ...behind])
        yield* settle
        return started
      })
    /** Subscribes to "t" (QoS 1) with a queue of one, and sends three QoS 1 messages: the reader waits for room. */
    const stalled = (options: MqttClient.Options = {}) => stalledWith([], options)
    /** The client's next Disconnected status, or a defect saying what was not seen within 15 s. */
    const disconnected = (client: MqttClient.Client, notSeen: string) =>
      client.statusChanges.pipe(
        Stream.filter((s) => s._tag === "Disconnected"),
        Stream.runHead,
        Effect.map(Option.getOrThrow),
        Effect.timeoutOrElse({ duration: "15 seconds", orElse: () => Effect.die(new Error(notSeen)) })
      )

    for (const [code, name] of [[0x8e, "session taken over"], [0x9d, "server moved"]] as const) {
      it.live(`0x${code.toString(16)} (${name}) still stops the client with its reason code, nothing acknowledged`, () =>
        Effect.gen(function*() {
          const { broker, client, connection, statuses } = yield* stalled()
          yield* connection.send({
            cmd: "disconnect",
            reasonCode: code,
            properties: { reasonString: name, ...(code === 0x9d ? { serverReference: "127.0.0.1:1" } : {}) }
          })
          yield* connection.close
          // as a broker that closed its socket: the client's next packet (its PINGREQ) is answered with a reset
          yield* Effect.forkChild(Effect.andThen(Effect.exit(connection.receive), connection.destroy))
          const status = yield* client.statusChanges.pipe(
            Stream.filter((s) => s._tag === "Disconnected" || s._tag === "Closed"),
            Stream.runHead,
            Effect.map(Option.getOrThrow),
            Effect.timeoutOrElse({ duration: "10 seconds", orElse: () => Effect.die(new Error("still connected")) })
          )
          const cause = status._tag === "Disconnected" || status._tag === "Closed" ? status.cause : undefined
          assert(cause instanceof MqttError.ConnectionLostError, JSON.stringify(status))
          expect([cause.reasonCode, cause.reasonString]).toEqual([code, name])
          if (code === 0x9d) expect(cause.serverReference).toBe("127.0.0.1:1")
          // final: no reconnect (with a 10 ms schedule, one would have come by now)
          const error = errorOf(yield* Effect.exit(client.awaitClose))
          expect(error).toEqual(cause)
          yield* sleepReal(300)
          expect(broker.connections.length).toBe(1)
          expect(statuses.at(-1)?._tag).toBe("Closed")
          // nothing was taken: nothing was acknowledged (the broker sends the messages again on a resumed session)
          expect(connection.received.filter((p) => p.cmd === "puback")).toEqual([])
        }))
    }

    it.live("0x8e in the same read as the messages that do not fit, the close during the wait: the reason code wins", () =>
      Effect.gen(function*() {
        const { broker, client, connection, statuses } = yield* stalledWith([
          { cmd: "disconnect", reasonCode: 0x8e, properties: { reasonString: "session taken over" } }
        ])
        yield* connection.close
        yield* Effect.forkChild(Effect.andThen(Effect.exit(connection.receive), connection.destroy))
        const error = errorOf(
          yield* Effect.exit(
            client.awaitClose.pipe(
              Effect.timeoutOrElse({ duration: "10 seconds", orElse: () => Effect.die(new Error("still connected")) })
            )
          )
        )
        assert(error instanceof MqttError.ConnectionLostError, String(error))
        expect([error.reasonCode, error.reasonString]).toEqual([0x8e, "session taken over"])
        yield* sleepReal(300)
        expect(broker.connections.length).toBe(1)
        expect(statuses.at(-1)?._tag).toBe("Closed")
      }))

    for (const protocolVersion of [4, 5] as const) {
      it.live(`MQTT ${protocolVersion === 5 ? "5" : "3.1.1"}: a broker gone silent without closing (half-open) is found by the keepalive`, () =>
        Effect.gen(function*() {
          const { client, connection } = yield* stalled({
            protocolVersion,
            pingTimeout: "500 millis",
            ...(protocolVersion === 5 ? {} : { receiveMaximum: undefined })
          })
          // the broker neither reads nor writes any more, and does not close: no PINGRESP comes
          yield* connection.pause
          const status = yield* disconnected(client, "the silent broker was not found while the reader waited for room")
          assert(status._tag === "Disconnected")
          assert(status.cause instanceof MqttError.MqttTimeoutError, JSON.stringify(status.cause))
          expect(status.cause.operation).toBe("ping")
          // nothing was taken: nothing was acknowledged
          expect(connection.received.filter((p) => p.cmd === "puback")).toEqual([])
        }))
    }

    it.live("a broker that answers the PINGREQs keeps the connection while the reader waits for room", () =>
      Effect.gen(function*() {
        // a ping timeout long enough for a loaded machine; the keepalive is 1 s: PINGREQs at about 1 s and 4 s, the
        // second's timeout at about 6 s
        const { broker, client, connection } = yield* stalled({ pingTimeout: "2 seconds" })
        connection.autoPingresp = true
        yield* sleepReal(6500)
        expect(connection.received.filter((p) => p.cmd === "pingreq").length).toBeGreaterThanOrEqual(2)
        expect(broker.connections.length).toBe(1)
        expect((yield* client.status)._tag).toBe("Connected")
        const taken = yield* client.messages.pipe(Stream.take(3), Stream.runCollect)
        expect(taken.map((m) => m.text)).toEqual(["1", "2", "3"])
      }))

    for (const protocolVersion of [4, 5] as const) {
      it.live(`MQTT ${protocolVersion === 5 ? "5" : "3.1.1"}: what the reader read ahead is kept when the broker closes during the wait (QoS 0 too), in order`, () =>
        Effect.gen(function*() {
          const { client, connection } = yield* stalled({
            protocolVersion,
            keepAlive: 0,
            ...(protocolVersion === 5 ? {} : { receiveMaximum: undefined })
          })
          yield* connection.sendMany([
            { cmd: "publish", topic: "t", payload: Buffer.from("q0-4"), qos: 0, retain: false, dup: false },
            qos1("t", "5", 5)
          ])
          yield* settle
          // the broker closes, without DISCONNECT: the reader reads the close ahead while it waits for room
          yield* connection.close
          yield* sleepReal(300)
          const seen: Array<string> = []
          yield* client.messages.pipe(
            Stream.runForEach((m) => Effect.sync(() => seen.push(m.text))),
            Effect.timeoutOption("2 seconds")
          )
          expect(seen).toEqual(["1", "2", "3", "q0-4", "5"])
          // nothing is acknowledged on a connection that ended
          expect(connection.received.filter((p) => p.cmd === "puback")).toEqual([])
        }))
    }

    it.live("what the reader read while it waited is handled in order once room comes", () =>
      Effect.gen(function*() {
        const { client, connection } = yield* stalled({ keepAlive: 0 })
        yield* connection.sendMany([4, 5, 6].map((i) => qos1("t", `${i}`, i)))
        yield* settle
        const taken = yield* client.messages.pipe(Stream.take(6), Stream.runCollect)
        expect(taken.map((m) => m.text)).toEqual(["1", "2", "3", "4", "5", "6"])
        yield* Effect.forEach([1, 2, 3, 4, 5, 6], (id) =>
          Effect.map(connection.expect("puback"), (puback) => expect(puback.messageId).toBe(id)))
      }))

    it.live("a backlog beyond what the reader reads ahead waits in the socket, and arrives whole once room comes", () =>
      Effect.gen(function*() {
        const { client, connection } = yield* stalled({ keepAlive: 0 })
        // 200 messages of 2 KB: three times what the reader reads ahead while it waits
        const payload = (i: number) => `${i}`.padEnd(2000, ".")
        yield* connection.sendMany(Array.from({ length: 200 }, (_, i) => qos1("t", payload(i + 4), i + 4)))
        yield* settle
        const taken = yield* client.messages.pipe(Stream.take(203), Stream.runCollect)
        expect(taken.map((m) => m.text)).toEqual([
          "1",
          "2",
          "3",
          ...Array.from({ length: 200 }, (_, i) => payload(i + 4))
        ])
      }))

    it.live("a broker gone while more than the reader reads ahead waits unread: a failed write still ends the connection", () =>
      Effect.gen(function*() {
        const { client, connection } = yield* stalled()
        // 200 KB more: the read-ahead is full, and nothing reads the socket until room comes
        yield* connection.sendMany(Array.from({ length: 20 }, (_, i) => qos1("t", "x".repeat(10_000), i + 4)))
        yield* settle
        yield* connection.close
        // as a broker that closed its socket: the client's next packet (its PINGREQ) is answered with a reset
        yield* Effect.forkChild(Effect.andThen(Effect.exit(connection.receive), connection.destroy))
        const status = yield* disconnected(client, "the broker's close was not seen while the reader waited for room")
        assert(status._tag === "Disconnected")
        assert(status.cause instanceof MqttError.ConnectionLostError, JSON.stringify(status.cause))
        // nothing was taken: nothing was acknowledged
        expect(connection.received.filter((p) => p.cmd === "puback")).toEqual([])
      }))
  })
}

describe("releasing a subscription() while the reader waits for room", () => {
  it.effect("the release does not wait for an UNSUBACK the reader cannot read (TestClock: no 5 s timeout runs)", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* start({ protocolVersion: 5, keepAlive: 0, queue: IncomingQueue.bounded(1) })
      const scope = yield* Scope.make()
      const subscribing = yield* Effect.forkChild(Scope.provide(client.subscription("u", { qos: 1 }), scope))
      const subscribe = yield* connection.expect("subscribe")
      yield* connection.send({ cmd: "suback", messageId: subscribe.messageId!, granted: [1] })
      yield* Fiber.join(subscribing)
      yield* Effect.forkChild(client.subscribe("t", { qos: 1 }))
      const second = yield* connection.expect("subscribe")
      yield* connection.send({ cmd: "suback", messageId: second.messageId!, granted: [1] })
      yield* settle
      // `messages` is read once, then its queue of one fills again: the reader waits for room
      yield* connection.sendMany([1, 2, 3].map((i) => qos1("t", `${i}`, i)))
      yield* settle
      const first = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
      expect(first.map((m) => m.text)).toEqual(["1"])
      expect((yield* connection.expect("puback")).messageId).toBe(1)
      yield* settle
      const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
      const unsubscribe = yield* connection.expect("unsubscribe")
      expect(unsubscribe.unsubscriptions).toEqual(["u"])
      // no UNSUBACK is sent, and the clock does not move: the release ends all the same
      yield* settle
      yield* settle
      expect(isDone(closing)).toBe(true)
      // and the rest is still there for the consumer, in order
      const rest = yield* client.messages.pipe(Stream.take(2), Stream.runCollect)
      expect(rest.map((m) => m.text)).toEqual(["2", "3"])
    }))
})

const qos1 = (topic: string, payload: string, messageId: number): Packet => ({
  cmd: "publish",
  topic,
  payload: Buffer.from(payload),
  qos: 1,
  retain: false,
  dup: false,
  messageId
})

// ---------------------------------------------------------------------------------------------------------------
// backoff (TestClock)
// ---------------------------------------------------------------------------------------------------------------

/**
 * Refuses attempts with the 3.1.1 return code 3 (server unavailable: worth retrying) and checks on TestClock that
 * each one comes exactly when the client said it would (`retryIn` of its Disconnected status), not a millisecond
 * before. Returns the announced delays in milliseconds.
 */
const refuseAttempts = (
  broker: FakeBroker.FakeBroker,
  statuses: ReadonlyArray<MqttClient.ConnectionStatus>,
  attempts: number
) =>
  Effect.gen(function*() {
    const delays: Array<number> = []
    for (let attempt = 1; attempt <= attempts; attempt++) {
      yield* settle
      const disconnected = statuses.at(-1)
      assert(disconnected?._tag === "Disconnected", `attempt ${attempt}: ${JSON.stringify(statuses.at(-1))}`)
      const delay = Duration.toMillis(disconnected.retryIn!)
      delays.push(delay)
      const before = broker.connections.length
      yield* TestClock.adjust(Duration.millis(Math.ceil(delay) - 1))
      yield* settle
      expect(broker.connections.length, `attempt ${attempt} came before its delay of ${delay} ms`).toBe(before)
      yield* TestClock.adjust("1 millis")
      const connection = yield* broker.accept
      yield* connection.expect("connect")
      const connecting = statuses.at(-1)
      assert(connecting?._tag === "Connecting", JSON.stringify(connecting))
      expect(connecting.attempt).toBe(attempt)
      yield* connection.connack({ returnCode: 3 })
      yield* connection.closed
    }
    return delays
  })

describe("backoff (TestClock)", () => {
  it.effect("Schedule.exponential(100 ms): attempts come 100, 200, 400, 800, 1600 ms after each failure", () =>
    Effect.gen(function*() {
      const { broker, client, connection, statuses } = yield* start({
        keepAlive: 0,
        reconnect: Schedule.exponential("100 millis")
      })
      yield* connection.destroy
      const delays = yield* refuseAttempts(broker, statuses, 5)
      expect(delays).toEqual([100, 200, 400, 800, 1600])
      yield* settle
      yield* TestClock.adjust("3200 millis")
      const last = yield* broker.accept
      yield* last.expect("connect")
      yield* last.connack()
      yield* settle
      expect(statuses.at(-1)?._tag).toBe("Connected")
      const metrics = yield* client.metrics
      expect([metrics.connects, metrics.reconnects, metrics.failedAttempts]).toEqual([2, 1, 5])
      expect(metrics.longestDisconnectMillis).toBe(100 + 200 + 400 + 800 + 1600 + 3200)
    }))

  it.effect(
    "the backoff goes on after connections shorter than a second, and starts afresh after one that lasted a second",
    () =>
      Effect.gen(function*() {
        const { broker, connection, statuses } = yield* start({
          keepAlive: 0,
          reconnect: Schedule.exponential("100 millis")
        })
        const dropAndReconnectAfter = (dropped: FakeBroker.FakeConnection, expected: number) =>
          Effect.gen(function*() {
            yield* dropped.destroy
            yield* settle
            const disconnected = statuses.at(-1)
            assert(disconnected?._tag === "Disconnected", JSON.stringify(statuses.at(-1)))
            expect(Duration.toMillis(disconnected.retryIn!)).toBe(expected)
            yield* TestClock.adjust(Duration.millis(expected))
            const next = yield* broker.accept
            yield* next.expect("connect")
            yield* next.connack()
            yield* settle
            return next
          })
        // the first connection lasted (from the client's start): the first outage starts at the first delay
        yield* TestClock.adjust("1 second")
        const second = yield* dropAndReconnectAfter(connection, 100)
        // a broker that accepts and drops at once (no time passes) meets a growing delay
        const third = yield* dropAndReconnectAfter(second, 200)
        const fourth = yield* dropAndReconnectAfter(third, 400)
        // one of 999 ms is still short: the delay grows on
        yield* TestClock.adjust("999 millis")
        const fifth = yield* dropAndReconnectAfter(fourth, 800)
        // one that lasted a second: the next outage starts afresh
        yield* TestClock.adjust("1 second")
        yield* dropAndReconnectAfter(fifth, 100)
      })
  )

  it.effect("defaultReconnect: each delay lies in [d/2, d] of 100 ms doubling, capped at 30 s, and is jittered", () =>
    Effect.gen(function*() {
      const { broker, connection, statuses } = yield* start({
        keepAlive: 0,
        reconnect: MqttClient.defaultReconnect
      })
      yield* connection.destroy
      const delays = yield* refuseAttempts(broker, statuses, 12)
      delays.forEach((delay, i) => {
        const d = Math.min(100 * 2 ** i, 30_000)
        expect(delay, `attempt ${i + 1}`).toBeGreaterThanOrEqual(d / 2)
        expect(delay, `attempt ${i + 1}`).toBeLessThanOrEqual(d)
      })
      // the cap: from the 10th attempt on (51.2 s uncapped) the delay stays within [15 s, 30 s]
      expect(Math.max(...delays)).toBeLessThanOrEqual(30_000)
      const ratios = delays.map((delay, i) => delay / Math.min(100 * 2 ** i, 30_000))
      expect(new Set(ratios).size, `jittered, not a fixed fraction: ${ratios.join(", ")}`).toBeGreaterThan(1)
    }))

  it.live("a schedule that ends (Schedule.recurs(2)) gives up: awaitClose, waiting publishes fail with the last error", () =>
    Effect.gen(function*() {
      const { broker, client, connection, statuses } = yield* start({ reconnect: Schedule.recurs(2) })
      yield* connection.destroy
      const first = yield* broker.accept
      yield* first.expect("connect")
      // offline: this publish waits for a connection that never comes
      const pending = yield* Effect.forkChild(client.publish("t", "never", { qos: 1 }))
      yield* first.connack({ returnCode: 3 })
      const second = yield* broker.accept
      yield* second.expect("connect")
      // the last attempt ends differently, so the error proves it is the last one
      yield* second.destroy
      const error = errorOf(yield* Effect.exit(client.awaitClose))
      assert(error instanceof MqttError.ConnectionLostError, String(error))
      expect(errorOf(yield* Fiber.await(pending))).toEqual(error)
      const last = statuses.at(-1)
      assert(last?._tag === "Closed", JSON.stringify(statuses))
      expect(last.cause).toEqual(error)
      expect(errorOf(yield* Effect.exit(client.publish("t", "later", { qos: 1 })))).toEqual(error)
      yield* sleepReal(200)
      expect(broker.connections.length).toBe(3)
      expect((yield* client.metrics).failedAttempts).toBe(2)
    }))
})

// ---------------------------------------------------------------------------------------------------------------
// reconnect: false and the first connection
// ---------------------------------------------------------------------------------------------------------------

describe("reconnect: false and retryFirstConnect", () => {
  it.live("reconnect: false: a lost connection fails messages, operations and awaitClose, and nothing reconnects", () =>
    Effect.gen(function*() {
      const { broker, client, connection } = yield* start({ reconnect: false })
      const messages = yield* Effect.forkChild(Effect.exit(Stream.runDrain(client.messages)))
      const pending = yield* publishSent(client, connection, "pending", 1)
      yield* connection.destroy
      const error = errorOf(yield* Effect.exit(client.awaitClose))
      assert(error instanceof MqttError.ConnectionLostError, String(error))
      expect(errorOf(yield* Fiber.join(messages))).toEqual(error)
      expect(errorOf(yield* Fiber.await(pending.fiber))).toEqual(error)
      expect(errorOf(yield* Effect.exit(client.subscribe("x")))).toEqual(error)
      yield* sleepReal(200)
      expect(broker.connections.length).toBe(1)
    }))

  it.live("retryFirstConnect: true keeps trying the first connection on the reconnect schedule", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make()
      const fiber = yield* Effect.forkChild(
        MqttClient.make({ url: broker.url, reconnect: fast, retryFirstConnect: true })
      )
      for (let i = 0; i < 3; i++) {
        const refused = yield* broker.accept
        yield* refused.expect("connect")
        yield* refused.connack({ returnCode: 3 })
      }
      const accepted = yield* broker.accept
      expect((yield* accepted.expect("connect")).clean).toBe(true)
      yield* accepted.connack()
      const client = yield* Fiber.join(fiber)
      expect((yield* client.status)._tag).toBe("Connected")
      const metrics = yield* client.metrics
      expect([metrics.connects, metrics.failedAttempts]).toEqual([1, 3])
    }))

  it.live("by default the first connection is not retried: the layer fails at once with the cause", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make()
      const fiber = yield* Effect.forkChild(Effect.exit(MqttClient.make({ url: broker.url, reconnect: fast })))
      const refused = yield* broker.accept
      yield* refused.expect("connect")
      yield* refused.connack({ returnCode: 3 })
      const error = errorOf(yield* Fiber.join(fiber))
      assert(error instanceof MqttError.ConnectRefusedError, String(error))
      expect(error.reasonCode).toBe(3)
      yield* sleepReal(200)
      expect(broker.connections.length).toBe(1)
    }))

  it.live("retryFirstConnect: true still fails at once on a refusal another attempt cannot change", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make()
      const fiber = yield* Effect.forkChild(
        Effect.exit(MqttClient.make({ url: broker.url, reconnect: fast, retryFirstConnect: true }))
      )
      const refused = yield* broker.accept
      yield* refused.expect("connect")
      yield* refused.connack({ returnCode: 5 })
      const error = errorOf(yield* Fiber.join(fiber))
      assert(error instanceof MqttError.ConnectRefusedError, String(error))
      expect(error.reasonCode).toBe(5)
      yield* sleepReal(200)
      expect(broker.connections.length).toBe(1)
    }))
})

// ---------------------------------------------------------------------------------------------------------------
// offline
// ---------------------------------------------------------------------------------------------------------------

/**
 * Drops the connection and holds the client offline: the next connection is accepted and its CONNECT read, but
 * the CONNACK is left to the test.
 */
const goOffline = (broker: FakeBroker.FakeBroker, connection: FakeBroker.FakeConnection) =>
  Effect.gen(function*() {
    yield* connection.destroy
    const next = yield* broker.accept
    yield* next.expect("connect")
    return next
  })

describe("offline", () => {
  it.live("while reconnecting, the messages stream stays open and a consumer receives from the new connection", () =>
    Effect.gen(function*() {
      const { broker, client, connection } = yield* start()
      const consumer = yield* Effect.forkChild(client.messages.pipe(Stream.take(1), Stream.runCollect))
      const next = yield* goOffline(broker, connection)
      yield* settle
      expect(isDone(consumer)).toBe(false)
      yield* next.connack()
      yield* next.send({ cmd: "publish", topic: "t", payload: Buffer.from("after"), qos: 0, retain: false, dup: false })
      const [message] = yield* Fiber.join(consumer)
      expect(message.text).toBe("after")
    }))

  it.live("QoS 1 and QoS 0 publishes made offline are sent after the reconnect (qos0: buffer, the default)", () =>
    Effect.gen(function*() {
      const { broker, client, connection } = yield* start()
      const next = yield* goOffline(broker, connection)
      const q1 = yield* Effect.forkChild(client.publish("t", "offline-1", { qos: 1 }))
      // QoS 0 completes once buffered
      yield* client.publish("t", "offline-0")
      yield* settle
      expect(isDone(q1)).toBe(false)
      yield* next.connack()
      const sent = [yield* next.expect("publish"), yield* next.expect("publish")]
      expect(sent.map(text).sort()).toEqual(["offline-0", "offline-1"])
      const p1 = sent.find((p) => p.qos === 1)!
      expect(p1.dup).toBe(false)
      yield* next.send({ cmd: "puback", messageId: p1.messageId! })
      yield* Fiber.join(q1)
    }))

  it.live("offline.qos0: fail: a QoS 0 publish while offline fails with OfflineError", () =>
    Effect.gen(function*() {
      const { broker, client, connection } = yield* start({ offline: { qos0: "fail" } })
      const next = yield* goOffline(broker, connection)
      const error = errorOf(yield* Effect.exit(client.publish("t", "x")))
      assert(error instanceof MqttError.OfflineError, String(error))
      expect(error.operation).toBe("publish")
      yield* next.connack()
      yield* next.expectSilence(100)
      // connected again: QoS 0 goes out
      yield* client.publish("t", "online")
      expect(text(yield* next.expect("publish"))).toBe("online")
    }))

  it.live("offline.capacity 2, overflow fail: the third offline publish fails with OfflineError, the two are sent", () =>
    Effect.gen(function*() {
      const { broker, client, connection } = yield* start({ offline: { capacity: 2, overflow: "fail" } })
      const next = yield* goOffline(broker, connection)
      const a = yield* Effect.forkChild(client.publish("t", "a", { qos: 1 }), { startImmediately: true })
      const b = yield* Effect.forkChild(client.publish("t", "b", { qos: 2 }), { startImmediately: true })
      const error = errorOf(yield* Effect.exit(client.publish("t", "c", { qos: 1 })))
      assert(error instanceof MqttError.OfflineError, String(error))
      yield* next.connack()
      const sent = [yield* next.expect("publish"), yield* next.expect("publish")]
      expect(sent.map(text)).toEqual(["a", "b"])
      yield* next.expectSilence(100)
      yield* next.send({ cmd: "puback", messageId: sent[0].messageId! })
      yield* next.send({ cmd: "pubrec", messageId: sent[1].messageId! })
      yield* next.expect("pubrel")
      yield* next.send({ cmd: "pubcomp", messageId: sent[1].messageId! })
      yield* Fiber.join(a)
      yield* Fiber.join(b)
    }))

  it.live("offline.capacity 2, overflow wait: the third offline publish waits and is sent once connected", () =>
    Effect.gen(function*() {
      const { broker, client, connection } = yield* start({ offline: { capacity: 2, overflow: "wait" } })
      const next = yield* goOffline(broker, connection)
      const fibers = [
        yield* Effect.forkChild(client.publish("t", "a", { qos: 1 }), { startImmediately: true }),
        yield* Effect.forkChild(client.publish("t", "b", { qos: 1 }), { startImmediately: true }),
        yield* Effect.forkChild(client.publish("t", "c", { qos: 1 }), { startImmediately: true })
      ]
      yield* settle
      for (const fiber of fibers) expect(isDone(fiber)).toBe(false)
      yield* next.connack()
      const sent = [yield* next.expect("publish"), yield* next.expect("publish"), yield* next.expect("publish")]
      expect(sent.map(text).sort()).toEqual(["a", "b", "c"])
      for (const p of sent) yield* next.send({ cmd: "puback", messageId: p.messageId! })
      for (const fiber of fibers) yield* Fiber.join(fiber)
    }))

  it.live("offline.capacity counts the publishes the buffer holds: one interrupted while offline frees its place", () =>
    Effect.gen(function*() {
      const { broker, client, connection } = yield* start({ offline: { capacity: 1, overflow: "fail" } })
      const next = yield* goOffline(broker, connection)
      const abandoned = yield* Effect.forkChild(client.publish("t", "abandoned", { qos: 1 }), {
        startImmediately: true
      })
      yield* Fiber.interrupt(abandoned)
      // the buffer is empty again: this publish is kept, not refused
      const kept = yield* Effect.forkChild(Effect.exit(client.publish("t", "kept", { qos: 1 })), {
        startImmediately: true
      })
      yield* settle
      assert(!isDone(kept), `the publish was refused: ${JSON.stringify(kept.pollUnsafe())}`)
      yield* next.connack()
      const publish = yield* next.expect("publish")
      expect(text(publish)).toBe("kept")
      yield* next.send({ cmd: "puback", messageId: publish.messageId! })
      expect(Exit.isSuccess(yield* Fiber.join(kept))).toBe(true)
    }))

  it.live("requests: wait (default): subscribe and unsubscribe made offline complete after the reconnect", () =>
    Effect.gen(function*() {
      const { broker, client, connection } = yield* start()
      const next = yield* goOffline(broker, connection)
      const subscribe = yield* Effect.forkChild(client.subscribe("offline/#", { qos: 1 }))
      const unsubscribe = yield* Effect.forkChild(client.unsubscribe("other"))
      yield* settle
      expect(isDone(subscribe)).toBe(false)
      expect(isDone(unsubscribe)).toBe(false)
      yield* next.connack()
      const packets = [yield* next.receive, yield* next.receive]
      const sub = packets.find((p) => p.cmd === "subscribe")
      const unsub = packets.find((p) => p.cmd === "unsubscribe")
      assert(sub?.cmd === "subscribe" && unsub?.cmd === "unsubscribe", JSON.stringify(packets))
      expect(sub.subscriptions).toEqual([{ topic: "offline/#", qos: 1 }])
      expect(unsub.unsubscriptions).toEqual(["other"])
      yield* next.send({ cmd: "suback", messageId: sub.messageId!, granted: [1] })
      yield* next.send({ cmd: "unsuback", messageId: unsub.messageId!, granted: [] })
      expect(yield* Fiber.join(subscribe)).toEqual([{ filter: "offline/#", qos: 1, reasonCode: 1 }])
      yield* Fiber.join(unsubscribe)
    }))

  it.live("requests: wait: a SUBSCRIBE in flight when the connection drops is sent again and completes", () =>
    Effect.gen(function*() {
      const { broker, client, connection } = yield* start()
      const subscribe = yield* Effect.forkChild(client.subscribe("inflight/#", { qos: 2 }))
      yield* connection.expect("subscribe")
      const next = yield* goOffline(broker, connection)
      yield* next.connack()
      const again = yield* next.expect("subscribe")
      expect(again.subscriptions).toEqual([{ topic: "inflight/#", qos: 2 }])
      yield* next.send({ cmd: "suback", messageId: again.messageId!, granted: [2] })
      expect(yield* Fiber.join(subscribe)).toEqual([{ filter: "inflight/#", qos: 2, reasonCode: 2 }])
    }))

  it.live("requests: fail: subscribe and unsubscribe while offline fail with OfflineError", () =>
    Effect.gen(function*() {
      const { broker, client, connection } = yield* start({ offline: { requests: "fail" } })
      const next = yield* goOffline(broker, connection)
      const subscribeError = errorOf(yield* Effect.exit(client.subscribe("x")))
      assert(subscribeError instanceof MqttError.OfflineError, String(subscribeError))
      expect(subscribeError.operation).toBe("subscribe")
      const unsubscribeError = errorOf(yield* Effect.exit(client.unsubscribe("x")))
      assert(unsubscribeError instanceof MqttError.OfflineError, String(unsubscribeError))
      expect(unsubscribeError.operation).toBe("unsubscribe")
      yield* next.connack()
      yield* next.expectSilence(100)
    }))

  it.live("requests: fail: a SUBSCRIBE in flight when the connection drops fails instead of being sent again", () =>
    Effect.gen(function*() {
      const { broker, client, connection } = yield* start({ offline: { requests: "fail" } })
      const subscribe = yield* Effect.forkChild(Effect.exit(client.subscribe("inflight/#", { qos: 1 })))
      yield* connection.expect("subscribe")
      const next = yield* goOffline(broker, connection)
      yield* settle
      // documented in MqttClient.OfflineOptions.requests: "in flight when the connection drops ... fails, likewise"
      const exit = yield* Effect.timeoutOption(Fiber.join(subscribe), "1 second")
      assert(Option.isSome(exit), "the in-flight subscribe is still waiting while the client is offline")
      const error = errorOf(exit.value)
      expect(MqttError.isConnectionError(error) || error instanceof MqttError.OfflineError).toBe(true)
      yield* next.connack()
      yield* next.expectSilence(100)
    }))
})

// ---------------------------------------------------------------------------------------------------------------
// status and metrics
// ---------------------------------------------------------------------------------------------------------------

describe("status and metrics", () => {
  it.live("statusChanges: Connected, Disconnected with the cause, Connecting, Connected; metrics count it", () =>
    Effect.gen(function*() {
      const { broker, client, connection, statuses } = yield* start()
      yield* connection.destroy
      const next = yield* broker.accept
      yield* next.expect("connect")
      yield* next.connack()
      yield* awaitStatus(client, "Connected")
      yield* settle
      expect(statuses.map((s) => s._tag)).toEqual(["Connected", "Disconnected", "Connecting", "Connected"])
      const [, disconnected, connecting, connected] = statuses
      assert(disconnected._tag === "Disconnected" && connecting._tag === "Connecting" && connected._tag === "Connected")
      assert(disconnected.cause instanceof MqttError.ConnectionLostError, String(disconnected.cause))
      expect(Duration.toMillis(disconnected.retryIn!)).toBe(10)
      expect(connecting.attempt).toBe(1)
      expect(connected.info.sessionPresent).toBe(false)
      const metrics = yield* client.metrics
      expect([metrics.connects, metrics.reconnects, metrics.failedAttempts]).toEqual([2, 1, 0])
      expect(metrics.longestDisconnectMillis).toBeGreaterThanOrEqual(10)
      expect(metrics.disconnectedMillis).toBe(metrics.longestDisconnectMillis)
    }))
})

describe("statusChanges ends with Closed", () => {
  it.live("a consumer outside the client's scope sees Connected then Closed, and its stream ends; on a closed client, at once", () =>
    Effect.gen(function*() {
      const broker = yield* mosquitto()
      const scope = yield* Scope.make()
      const client = yield* Scope.provide(MqttClient.make({ url: broker.url }), scope)
      const seen = yield* Effect.forkChild(Stream.runCollect(client.statusChanges), { startImmediately: true })
      yield* Scope.close(scope, Exit.void)
      const statuses = yield* Effect.timeout(Fiber.join(seen), "10 seconds")
      expect(statuses.map((s) => s._tag)).toEqual(["Connected", "Closed"])
      const again = yield* Effect.timeout(Stream.runCollect(client.statusChanges), "10 seconds")
      expect(again.map((s) => s._tag)).toEqual(["Closed"])
    }))
})

// ---------------------------------------------------------------------------------------------------------------
// interruption and closing
// ---------------------------------------------------------------------------------------------------------------

describe("two clients with one client identifier (Mosquitto)", () => {
  it.live(
    "they take the session from each other: after 3 connections in a row that each ended within a second, the log line asks whether another client uses the same client identifier",
    () =>
      Effect.gen(function*() {
        const broker = yield* mosquitto()
        const lines: Array<string> = []
        const logger = Logger.make((options) => {
          lines.push(Array.isArray(options.message) ? options.message.join(" ") : String(options.message))
        })
        const options: MqttClient.Options = {
          url: broker.url,
          protocolVersion: 4,
          clientId: `twin-${Date.now().toString(36)}`,
          reconnect: Schedule.spaced("50 millis")
        }
        yield* MqttClient.make(options).pipe(Effect.provide(Logger.layer([logger])))
        yield* MqttClient.make(options).pipe(Effect.provide(Logger.layer([Logger.make(() => {})])))
        const deadline = Date.now() + 20_000
        while (!lines.some((line) => line.includes("same client identifier")) && Date.now() < deadline) {
          yield* sleepReal(50)
        }
        const hint = lines.find((line) => line.includes("same client identifier"))
        assert(hint !== undefined, lines.join("\n"))
        expect(hint).toMatch(/the last \d+ connections each ended within a second/)
      }).pipe(Effect.scoped),
    30_000
  )
})

describe("connections that a broker ends with a reason", () => {
  it.live("a broker that ends each connection at once with DISCONNECT 0x89 (server busy) gets no hint of a second client", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5 })
      const lines: Array<string> = []
      const logger = Logger.make((options) => {
        lines.push(Array.isArray(options.message) ? options.message.join(" ") : String(options.message))
      })
      const fiber = yield* Effect.forkChild(
        MqttClient.make({ url: broker.url, protocolVersion: 5, reconnect: fast }).pipe(
          Effect.provide(Logger.layer([logger]))
        )
      )
      for (let i = 0; i < 5; i++) {
        const { connection } = yield* broker.acceptAndConnack()
        if (i === 0) yield* Fiber.join(fiber)
        // connected (the CONNACK handled), then ended within a second
        yield* settle
        yield* connection.send({ cmd: "disconnect", reasonCode: 0x89, properties: { reasonString: "busy" } })
      }
      yield* broker.acceptAndConnack()
      const ended = lines.filter((line) => line.includes("busy"))
      expect(ended.length).toBeGreaterThanOrEqual(4)
      expect(lines.filter((line) => line.includes("same client identifier"))).toEqual([])
    }).pipe(Effect.scoped))
})

describe("interruption and closing", () => {
  it.live(
    "closed while a slow store holds a write and a reconnect's CONNACK comes meanwhile: that connection ends with DISCONNECT (no will), never Connected after the close",
    () =>
      Effect.gen(function*() {
        const inner = yield* MqttSessionStore.memory
        const gate = { closed: false, open: yield* Deferred.make<void>() }
        const kv = KeyValueStore.make({
          get: inner.kv.get,
          getUint8Array: inner.kv.getUint8Array,
          set: (key, value) =>
            Effect.suspend(() =>
              gate.closed
                ? Effect.andThen(Deferred.await(gate.open), inner.kv.set(key, value))
                : inner.kv.set(key, value)
            ),
          remove: inner.kv.remove,
          clear: inner.kv.clear,
          size: inner.kv.size,
          keys: inner.kv.keys
        })
        const broker = yield* FakeBroker.make({ protocolVersion: 5, autoPingresp: true })
        const scope = yield* Scope.make()
        const fiber = yield* Effect.forkChild(Scope.provide(
          MqttClient.make({
            url: broker.url,
            protocolVersion: 5,
            clientId: "close-race",
            cleanStart: false,
            sessionExpiryInterval: 3600,
            store: MqttSessionStore.fromKeyValueStore(kv, "gated"),
            reconnect: Schedule.spaced("10 millis"),
            logLevel: "Error",
            will: { topic: "will", payload: "gone" }
          }),
          scope
        ))
        const { connection: c1 } = yield* broker.acceptAndConnack()
        const client = yield* Fiber.join(fiber)
        const statuses: Array<string> = []
        yield* Effect.forkChild(
          Stream.runForEach(client.statusChanges, (status) => Effect.sync(() => statuses.push(status._tag))),
          { startImmediately: true }
        )
        yield* c1.destroy
        const c2 = yield* broker.accept
        yield* c2.expect("connect")
        // the journal's next write waits: the close waits for it (a bounded while), and the CONNACK comes then
        gate.closed = true
        yield* Effect.forkChild(Effect.exit(client.publish("t", "held", { qos: 1 })), { startImmediately: true })
        const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void), { startImmediately: true })
        yield* sleepReal(50)
        yield* c2.connack({ sessionPresent: true })
        yield* Fiber.join(closing)
        yield* c2.closed
        expect(c2.received.map((packet) => packet.cmd)).toContain("disconnect")
        expect(statuses.slice(statuses.lastIndexOf("Connecting"))).toEqual(["Connecting", "Closed"])
      }),
    30_000
  )

  for (const version of versions) {
    it.live(`v${version}: an interrupted QoS 1 publish that was sent is still resent after a drop, and its PUBACK accepted`, () =>
      Effect.gen(function*() {
        const { broker, client, connection } = yield* start(persistent(version))
        const sent = yield* publishSent(client, connection, "interrupted", 1)
        yield* Fiber.interrupt(sent.fiber)
        yield* connection.destroy
        const next = yield* acceptPersistent(broker, version)
        yield* next.connack({ sessionPresent: true })
        const resent = yield* next.expect("publish")
        expect([resent.messageId, text(resent), resent.dup]).toEqual([sent.id, "interrupted", true])
        yield* next.send({ cmd: "puback", messageId: sent.id })
        // accepted: no protocol error, and the connection carries on
        const after = yield* publishSent(client, next, "after", 1)
        yield* next.send({ cmd: "puback", messageId: after.id })
        yield* Fiber.join(after.fiber)
        expect(next.isClosed).toBe(false)
        expect((yield* client.status)._tag).toBe("Connected")
      }))
  }

  it.live("v4: an interrupted QoS 2 publish after PUBREC still gets its PUBREL resent after a drop", () =>
    Effect.gen(function*() {
      const { broker, client, connection } = yield* start(persistent(4))
      const sent = yield* publishSent(client, connection, "interrupted", 2)
      yield* connection.send({ cmd: "pubrec", messageId: sent.id })
      yield* connection.expect("pubrel")
      yield* Fiber.interrupt(sent.fiber)
      yield* connection.destroy
      const next = yield* acceptPersistent(broker, 4)
      yield* next.connack({ sessionPresent: true })
      expect((yield* next.expect("pubrel")).messageId).toBe(sent.id)
      yield* next.send({ cmd: "pubcomp", messageId: sent.id })
      yield* next.expectSilence(100)
      expect(next.isClosed).toBe(false)
    }))

  it.live("a publish interrupted while it waits offline is never sent", () =>
    Effect.gen(function*() {
      const { broker, client, connection } = yield* start()
      const next = yield* goOffline(broker, connection)
      const fiber = yield* Effect.forkChild(client.publish("t", "abandoned", { qos: 1 }), { startImmediately: true })
      yield* Fiber.interrupt(fiber)
      yield* next.connack()
      yield* next.expectSilence(150)
    }))

  it.live("closing the client after a reconnect sends DISCONNECT on the new connection and ends at once", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make()
      const scope = yield* Scope.make()
      const fiber = yield* Effect.forkChild(Scope.provide(MqttClient.make({ url: broker.url, reconnect: fast }), scope))
      const { connection } = yield* broker.acceptAndConnack()
      const client = yield* Fiber.join(fiber)
      yield* connection.destroy
      const { connection: next } = yield* broker.acceptAndConnack()
      yield* awaitStatus(client, "Connected")
      yield* Scope.close(scope, Exit.void)
      yield* next.closed
      // without DISCONNECT the broker takes the close for a lost connection and publishes the Will
      expect(next.received.map((p) => p.cmd)).toEqual(["connect", "disconnect"])
    }))

  it.live("closing the scope during the backoff delay ends at once, fails waiting publishes, and nothing reconnects", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make()
      const scope = yield* Scope.make()
      const fiber = yield* Effect.forkChild(
        Scope.provide(MqttClient.make({ url: broker.url, reconnect: Schedule.spaced("1 hour") }), scope)
      )
      const { connection } = yield* broker.acceptAndConnack()
      const client = yield* Fiber.join(fiber)
      yield* connection.destroy
      yield* awaitStatus(client, "Disconnected")
      const pending = yield* Effect.forkChild(client.publish("t", "offline", { qos: 1 }), { startImmediately: true })
      // the close does not wait for the backoff delay (an hour here): were it to, the test would time out
      yield* Scope.close(scope, Exit.void)
      yield* client.awaitClose
      const last = yield* client.status
      expect(last).toEqual({ _tag: "Closed", cause: undefined })
      expect(MqttError.isConnectionError(errorOf(yield* Fiber.await(pending)))).toBe(true)
      yield* sleepReal(100)
      expect(broker.connections.length).toBe(1)
    }))

  it.live("closing the scope while a reconnect waits for its CONNACK ends at once and no attempt follows", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make()
      const scope = yield* Scope.make()
      const fiber = yield* Effect.forkChild(
        Scope.provide(MqttClient.make({ url: broker.url, reconnect: fast, connectTimeout: "30 seconds" }), scope)
      )
      const { connection } = yield* broker.acceptAndConnack()
      const client = yield* Fiber.join(fiber)
      const next = yield* goOffline(broker, connection)
      // the close does not wait for the backoff delay (an hour here): were it to, the test would time out
      yield* Scope.close(scope, Exit.void)
      yield* next.closed
      yield* client.awaitClose
      // a 10 ms schedule: any attempt after the close would have come by now
      yield* sleepReal(300)
      expect(broker.connections.length).toBe(2)
      expect((yield* client.status)._tag).toBe("Closed")
    }))
})

describe("a reconnect storm on TestClock", () => {
  it.effect("100 clients that lose the same broker each attempt at their own jittered delay, never before it", () =>
    Effect.gen(function*() {
      const broker = yield* MqttTestBroker.make()
      const n = 100
      const records = yield* Effect.forEach(Array.from({ length: n }, (_, i) => i), (i) =>
        Effect.gen(function*() {
          const client = yield* broker.makeClient({
            clientId: `storm-${i}`,
            keepAlive: 0,
            logLevel: "None",
            reconnect: MqttClient.defaultReconnect
          })
          const record = { retryIn: -1, attemptAt: -1 }
          yield* Effect.forkScoped(Stream.runForEach(client.statusChanges, (status) =>
            Effect.gen(function*() {
              const now = yield* Clock.currentTimeMillis
              if (status._tag === "Disconnected" && record.retryIn < 0) {
                record.retryIn = Duration.toMillis(status.retryIn!)
                expect(now).toBe(0)
              }
              if (status._tag === "Connecting" && record.retryIn >= 0 && record.attemptAt < 0) record.attemptAt = now
            })))
          return record
        }))
      yield* Effect.yieldNow
      yield* broker.stop()
      // move the clock a millisecond at a time through the first backoff range (50 to 100 ms)
      for (let t = 0; t <= 100; t++) {
        for (const r of records) {
          // no attempt before its delay; each at the moment its delay ends
          if (r.attemptAt >= 0) expect(r.attemptAt).toBeCloseTo(r.retryIn, 6)
          else expect(t).toBeLessThanOrEqual(Math.ceil(r.retryIn))
        }
        yield* TestClock.adjust("1 millis")
      }
      const delays = records.map((r) => r.retryIn)
      for (const delay of delays) {
        expect(delay).toBeGreaterThanOrEqual(50)
        expect(delay).toBeLessThanOrEqual(100)
      }
      // spread, not in step: the attempts of 100 clients fall on at least 20 distinct milliseconds
      expect(new Set(records.map((r) => r.attemptAt)).size).toBeGreaterThanOrEqual(20)
      yield* broker.start
    }))
})
