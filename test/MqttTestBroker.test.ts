/**
 * The in-memory test broker: a user-style test on TestClock that moves the clock by hours (run 50 times), the
 * broker's timers on TestClock (keepalive, will delay, session and message expiry), its protocol handling seen
 * on the wire by a raw client (resends with DUP, the client's Receive Maximum, malformed packets, packets split
 * at every byte, duplicate QoS 2, topic aliases), and the test helpers (publish, published, retained, clients,
 * disconnect, stop/start/restart).
 *
 * What the broker shares with Mosquitto is in test/broker-conformance.test.ts.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Layer, Schedule, Schema, Stream } from "effect"
import type { Scope } from "effect"
import { IncomingQueue, MqttClient, type MqttError, type MqttMessage, MqttTestBroker, MqttTopic } from "effect-mqtt"
import * as Socket from "effect/socket/Socket"
import { TestClock } from "effect/testing"
import * as MqttPacket from "mqtt-packet"

// ---------------------------------------------------------------------------------------------------------------
// a raw MQTT client over the broker's in-memory socket, to see the broker's packets on the wire
// ---------------------------------------------------------------------------------------------------------------

interface Raw {
  readonly send: (packet: MqttPacket.Packet) => Effect.Effect<void, Socket.SocketError>
  readonly sendBytes: (bytes: Uint8Array) => Effect.Effect<void, Socket.SocketError>
  /** The next packet from the broker; fails with the SocketError when the connection ended first. */
  readonly next: Effect.Effect<MqttPacket.Packet, Socket.SocketError>
  /** Every packet received until the connection ends, and how it ended. */
  readonly untilClosed: Effect.Effect<{ packets: Array<MqttPacket.Packet>; error: Socket.SocketError }>
}

const raw = (
  broker: MqttTestBroker.Broker,
  version: 4 | 5 = 5
): Effect.Effect<Raw, Socket.SocketError, Scope.Scope> =>
  Effect.gen(function*() {
    const socket = yield* broker.socket
    const { pull } = yield* socket.reader
    const writer = yield* socket.writer
    const parser = MqttPacket.parser({ protocolVersion: version })
    const received: Array<MqttPacket.Packet> = []
    parser.on("packet", (packet: MqttPacket.Packet) => received.push(packet))
    const next: Effect.Effect<MqttPacket.Packet, Socket.SocketError> = Effect.suspend(() =>
      received.length > 0
        ? Effect.succeed(received.shift()!)
        : Effect.flatMap(pull, (chunks) => {
          for (const chunk of chunks) parser.parse(Buffer.from(chunk as Uint8Array))
          return next
        })
    )
    const untilClosed = Effect.suspend(() => {
      const packets: Array<MqttPacket.Packet> = []
      return next.pipe(
        Effect.tap((packet) => Effect.sync(() => packets.push(packet))),
        Effect.forever,
        Effect.catch((error) => Effect.succeed({ packets, error }))
      )
    })
    return {
      send: (packet) => writer.write(MqttPacket.generate(packet, { protocolVersion: version })),
      sendBytes: (bytes) => writer.write(bytes),
      next,
      untilClosed
    }
  })

const rawConnect = (
  broker: MqttTestBroker.Broker,
  connect: Partial<MqttPacket.IConnectPacket> & { clientId: string },
  version: 4 | 5 = 5
) =>
  Effect.gen(function*() {
    const client = yield* raw(broker, version)
    yield* client.send({ cmd: "connect", protocolVersion: version, clean: true, keepalive: 0, ...connect })
    const connack = yield* client.next
    assert.strictEqual(connack.cmd, "connack")
    return { client, connack: connack as MqttPacket.IConnackPacket }
  })

const withBroker = <A, E>(
  f: (broker: MqttTestBroker.Broker) => Effect.Effect<A, E, Scope.Scope>,
  options?: MqttTestBroker.Options
) => Effect.scoped(Effect.flatMap(MqttTestBroker.make(options), f))

const texts = (messages: ReadonlyArray<{ readonly topic: string; readonly text: string }>) =>
  messages.map((m) => `${m.topic} ${m.text}`)

// ---------------------------------------------------------------------------------------------------------------
// a user-style test on TestClock
// ---------------------------------------------------------------------------------------------------------------

/** The application under test: alerts for hot readings, and a heartbeat every 10 minutes. */
const Reading = MqttTopic.make("sensors/{deviceId}/temperature", Schema.Struct({ celsius: Schema.Number }))
const Alert = MqttTopic.make("alerts/{deviceId}", Schema.Struct({ celsius: Schema.Number }))
const Heartbeat = MqttTopic.make("app/heartbeat", Schema.Number)

const application = Effect.gen(function*() {
  const readings = yield* MqttTopic.subscribe(Reading, { qos: 1 })
  yield* Effect.forkScoped(
    Effect.clockWith((clock) => MqttTopic.publish(Heartbeat, {}, clock.currentTimeMillisUnsafe(), { qos: 1 })).pipe(
      Effect.repeat(Schedule.spaced("10 minutes"))
    )
  )
  yield* readings.pipe(
    Stream.filter(({ payload }) => payload.celsius > 30),
    Stream.runForEach(({ params, payload }) => MqttTopic.publish(Alert, params, payload, { qos: 1 }))
  )
})

describe("a user-style test on TestClock", () => {
  for (const protocolVersion of [4, 5] as const) {
    it.effect(
      `MQTT ${protocolVersion === 4 ? "3.1.1" : "5"}: 6 hours of clock moves keep the client connected, 50 runs`,
      () =>
        Effect.gen(function*() {
          for (let run = 0; run < 50; run++) {
            yield* Effect.gen(function*() {
              const broker = yield* MqttTestBroker.MqttTestBroker
              const client = yield* MqttClient.MqttClient
              yield* Effect.forkScoped(application)
              yield* broker.awaitSubscription(Reading.filter)
              yield* broker.awaitPublished("app/heartbeat")

              yield* broker.publish("sensors/kitchen/temperature", JSON.stringify({ celsius: 35 }), { qos: 1 })
              yield* broker.publish("sensors/hall/temperature", JSON.stringify({ celsius: 20 }), { qos: 1 })
              const [alert] = yield* broker.awaitPublished("alerts/+")
              assert.deepStrictEqual([alert.topic, alert.text], ["alerts/kitchen", `{"celsius":35}`])

              // keepalive 60 s: 360 PINGREQs, each answered before the ping timeout is looked at; the broker
              // would close a client silent for 90 s, so a missed ping would show as a reconnect
              for (let hour = 0; hour < 6; hour++) yield* TestClock.adjust("1 hour")

              const status = yield* client.status
              assert.strictEqual(status._tag, "Connected")
              const metrics = yield* client.metrics
              assert.deepStrictEqual([metrics.connects, metrics.reconnects, metrics.failedAttempts], [1, 0, 0])
              // the application's own timer ran on the same clock: the first heartbeat, then one every 10 minutes
              const heartbeats = (yield* broker.published("app/heartbeat")).map((m) => Number(m.text))
              assert.strictEqual(heartbeats.length, 37)
              assert.deepStrictEqual(heartbeats.slice(1).map((at, i) => at - heartbeats[i]), Array(36).fill(600_000))

              yield* broker.publish("sensors/cellar/temperature", JSON.stringify({ celsius: 31 }), { qos: 1 })
              const alerts = yield* broker.awaitPublished("alerts/+", 2)
              assert.deepStrictEqual(texts(alerts), [
                "alerts/kitchen {\"celsius\":35}",
                "alerts/cellar {\"celsius\":31}"
              ])
            }).pipe(Effect.scoped, Effect.provide(MqttTestBroker.layerWithClient({ protocolVersion })))
          }
        })
    )
  }

  // docs/testing.md, "Waiting for messages": what the page advises, on TestClock
  it.effect("waiting for queued messages: a loop that yields sees them come; a Schedule waits for the clock; on MQTT 3.1.1 the broker sends maxInflight QoS 1 at most", () =>
    Effect.gen(function*() {
      const broker = yield* MqttTestBroker.MqttTestBroker
      const client = yield* MqttClient.MqttClient
      /** The page's helper: waits until `n` messages wait on `messages`, letting the client's fibers run. */
      const queued = (n: number) =>
        MqttClient.MqttClient.use((client) =>
          Effect.repeat(Effect.andThen(Effect.yieldNow, client.queuedMessages), { until: (queued) => queued >= n })
        )
      yield* client.subscribe("docs/time/#", { qos: 1 })
      for (let i = 1; i <= 3; i++) yield* broker.publish("docs/time/a", `${i}`, { qos: 1 })
      yield* queued(3)
      assert.strictEqual(yield* client.queuedMessages, 3)

      // a wait on a Schedule sleeps on the test clock: it checks once, then waits for the clock to move
      let checks = 0
      const spaced = yield* Effect.forkChild(
        Effect.repeat(Effect.andThen(Effect.sync(() => checks++), client.queuedMessages), {
          until: (queued) => queued >= 4,
          schedule: Schedule.spaced("10 millis")
        })
      )
      while (checks === 0) yield* Effect.yieldNow
      yield* broker.publish("docs/time/a", "4", { qos: 1 })
      yield* queued(4)
      for (let i = 0; i < 100; i++) yield* Effect.yieldNow
      assert.strictEqual(spaced.pollUnsafe(), undefined, "the Schedule's wait is still asleep")
      assert.strictEqual(checks, 1)
      yield* TestClock.adjust("10 millis")
      assert.strictEqual(yield* Fiber.join(spaced), 4)

      // MQTT 3.1.1: 20 unacknowledged QoS 1 messages at most (maxInflight); the rest come as the client takes some
      for (let i = 5; i <= 30; i++) yield* broker.publish("docs/time/a", `${i}`, { qos: 1 })
      yield* queued(20)
      for (let i = 0; i < 100; i++) yield* Effect.yieldNow
      assert.strictEqual(yield* client.queuedMessages, 20)
      const taken = yield* client.messages.pipe(Stream.take(30), Stream.runCollect)
      assert.deepStrictEqual(taken.map((message) => Number(message.text)), Array.from({ length: 30 }, (_, i) => i + 1))
    }).pipe(Effect.provide(MqttTestBroker.layerWithClient({ clientId: "waits" }))))
})

// ---------------------------------------------------------------------------------------------------------------
// timers on TestClock
// ---------------------------------------------------------------------------------------------------------------

describe("the broker's timers run on the Effect Clock", () => {
  it.effect("a client silent for 1.5 times its keepalive is disconnected, and its will published", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        const { client } = yield* rawConnect(broker, {
          clientId: "silent",
          keepalive: 10,
          will: { topic: "wills/silent", payload: Buffer.from("gone"), qos: 0, retain: false }
        })
        yield* TestClock.adjust("14999 millis")
        assert.isTrue((yield* broker.clients).some((c) => c.clientId === "silent" && c.connected))
        yield* TestClock.adjust("1 millis")
        const { error, packets } = yield* client.untilClosed
        assert.deepStrictEqual(packets.map((p) => [p.cmd, (p as MqttPacket.IDisconnectPacket).reasonCode]), [[
          "disconnect",
          0x8d
        ]])
        assert.strictEqual(error.reason._tag, "SocketCloseError")
        assert.deepStrictEqual(texts(yield* broker.published("wills/#")), ["wills/silent gone"])
      })
    ))

  it.effect("a PINGREQ restarts the keepalive countdown", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        const { client } = yield* rawConnect(broker, { clientId: "pinger", keepalive: 10 })
        for (let i = 0; i < 10; i++) {
          yield* TestClock.adjust("10 seconds")
          yield* client.send({ cmd: "pingreq" })
          assert.strictEqual((yield* client.next).cmd, "pingresp")
        }
        assert.isTrue((yield* broker.clients).some((c) => c.clientId === "pinger" && c.connected))
      })
    ))

  it.effect("MQTT 5 Will Delay Interval: the will waits for the delay, and a reconnection in time cancels it", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        const will = (clientId: string): MqttClient.Options => ({
          clientId,
          protocolVersion: 5,
          cleanStart: false,
          sessionExpiryInterval: 300,
          reconnect: false,
          will: { topic: `wills/${clientId}`, payload: "gone", properties: { willDelayInterval: 30 } }
        })
        yield* broker.makeClient(will("late"))
        yield* broker.makeClient(will("back"))
        yield* broker.disconnect("late")
        yield* broker.disconnect("back")
        yield* TestClock.adjust("29 seconds")
        assert.deepStrictEqual(yield* broker.published("wills/#"), [])
        // "back" comes back before its delay: its session continues, its will is not published
        yield* Effect.scoped(broker.makeClient({ ...will("back"), will: undefined }))
        yield* TestClock.adjust("1 second")
        assert.deepStrictEqual(texts(yield* broker.published("wills/#")), ["wills/late gone"])
        yield* TestClock.adjust("1 hour")
        assert.deepStrictEqual(texts(yield* broker.published("wills/#")), ["wills/late gone"])
      })
    ))

  it.effect("MQTT 5 Session Expiry: a session outlives its connection by the interval, then it is gone", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        yield* Effect.scoped(
          Effect.flatMap(
            broker.makeClient({ clientId: "expiring", protocolVersion: 5, sessionExpiryInterval: 60 }),
            (client) => client.subscribe("things/#", { qos: 1 })
          )
        )
        yield* broker.publish("things/a", "queued", { qos: 1 })
        yield* TestClock.adjust("59 seconds")
        const [held] = yield* broker.clients
        assert.deepStrictEqual([held.clientId, held.connected, held.queued], ["expiring", false, 1])
        yield* TestClock.adjust("1 second")
        assert.deepStrictEqual(yield* broker.clients, [])
      })
    ))

  it.effect("MQTT 3.1.1 persistent sessions do not expire", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        yield* Effect.scoped(broker.makeClient({ clientId: "forever", cleanSession: false }))
        yield* TestClock.adjust("30 days")
        assert.deepStrictEqual((yield* broker.clients).map((c) => c.clientId), ["forever"])
      })
    ))

  it.effect("Message Expiry: a queued message past its interval is dropped; one within it gets the time left", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        const session: MqttClient.Options = {
          clientId: "traveller",
          protocolVersion: 5,
          cleanStart: false,
          sessionExpiryInterval: 3600
        }
        yield* Effect.scoped(Effect.flatMap(broker.makeClient(session), (c) => c.subscribe("news/#", { qos: 1 })))
        yield* broker.publish("news/short", "stale", { qos: 1, properties: { messageExpiryInterval: 10 } })
        yield* broker.publish("news/long", "fresh", { qos: 1, properties: { messageExpiryInterval: 100 } })
        yield* TestClock.adjust("30 seconds")
        const client = yield* broker.makeClient(session)
        const [message] = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
        assert.deepStrictEqual([message.topic, message.properties.messageExpiryInterval], ["news/long", 70])
        yield* broker.publish("news/end", "marker", { qos: 1 })
        const [next] = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
        assert.strictEqual(next.topic, "news/end")
      })
    ))
})

// ---------------------------------------------------------------------------------------------------------------
// the protocol on the wire
// ---------------------------------------------------------------------------------------------------------------

describe("the protocol, seen by a raw client", () => {
  it.effect("unacknowledged QoS 1 and 2 messages are sent again with DUP on reconnection, in order, PUBREL too", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        const connect = { clientId: "resend", clean: false, properties: { sessionExpiryInterval: 600 } }
        const first = yield* Effect.scoped(Effect.gen(function*() {
          const { client } = yield* rawConnect(broker, connect)
          yield* client.send({ cmd: "subscribe", messageId: 1, subscriptions: [{ topic: "r/#", qos: 2 }] })
          assert.strictEqual((yield* client.next).cmd, "suback")
          yield* broker.publish("r/1", "one", { qos: 1 })
          yield* broker.publish("r/2", "two", { qos: 2 })
          yield* broker.publish("r/3", "three", { qos: 2 })
          const sent = [yield* client.next, yield* client.next, yield* client.next] as Array<MqttPacket.IPublishPacket>
          // the client answers the first QoS 2 message with PUBREC, then the connection drops
          yield* client.send({ cmd: "pubrec", messageId: sent[1].messageId! })
          const pubrel = yield* client.next
          assert.deepStrictEqual([pubrel.cmd, pubrel.messageId], ["pubrel", sent[1].messageId])
          return sent
        }))
        const { client, connack } = yield* rawConnect(broker, connect)
        assert.isTrue(connack.sessionPresent)
        const again = [yield* client.next, yield* client.next, yield* client.next]
        assert.deepStrictEqual(
          again.map((p) => [p.cmd, p.messageId, p.cmd === "publish" ? [p.topic, p.dup, p.qos] : undefined]),
          [
            ["publish", first[0].messageId, ["r/1", true, 1]],
            ["pubrel", first[1].messageId, undefined],
            ["publish", first[2].messageId, ["r/3", true, 2]]
          ]
        )
      })
    ))

  it.effect("no more unacknowledged QoS 1 messages than the client's Receive Maximum; each PUBACK lets one more", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        const { client } = yield* rawConnect(broker, { clientId: "narrow", properties: { receiveMaximum: 2 } })
        yield* client.send({ cmd: "subscribe", messageId: 1, subscriptions: [{ topic: "w/#", qos: 1 }] })
        yield* client.next
        for (let i = 1; i <= 5; i++) yield* broker.publish(`w/${i}`, `${i}`, { qos: 1 })
        const window = [yield* client.next, yield* client.next] as Array<MqttPacket.IPublishPacket>
        assert.deepStrictEqual(window.map((p) => p.topic), ["w/1", "w/2"])
        const [info] = yield* broker.clients
        assert.deepStrictEqual([info.inflight, info.queued], [2, 3])
        yield* client.send({ cmd: "puback", messageId: window[0].messageId! })
        const third = (yield* client.next) as MqttPacket.IPublishPacket
        assert.strictEqual(third.topic, "w/3")
      })
    ))

  it.effect("QoS 2 from a client: a resent PUBLISH before PUBREL is not delivered twice; PUBREL gets PUBCOMP", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        const { client } = yield* rawConnect(broker, { clientId: "twice" })
        const publish: MqttPacket.IPublishPacket = {
          cmd: "publish",
          topic: "once/only",
          payload: Buffer.from("x"),
          qos: 2,
          dup: false,
          retain: false,
          messageId: 7
        }
        yield* client.send(publish)
        yield* client.send({ ...publish, dup: true })
        const acks = [yield* client.next, yield* client.next]
        assert.deepStrictEqual(acks.map((p) => [p.cmd, p.messageId]), [["pubrec", 7], ["pubrec", 7]])
        yield* client.send({ cmd: "pubrel", messageId: 7 })
        const pubcomp = yield* client.next
        assert.deepStrictEqual([pubcomp.cmd, pubcomp.messageId], ["pubcomp", 7])
        assert.strictEqual((yield* broker.published("once/#")).length, 1)
      })
    ))

  it.effect("packets split at every byte, and many packets in one write, are all understood", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        const client = yield* raw(broker, 5)
        const bytes = Buffer.concat([
          MqttPacket.generate({ cmd: "connect", protocolVersion: 5, clientId: "bytes", clean: true, keepalive: 0 }, {
            protocolVersion: 5
          }),
          ...[1, 2, 3].map((i) =>
            MqttPacket.generate({
              cmd: "publish",
              topic: `split/${i}`,
              payload: Buffer.from(`payload ${i}`),
              qos: 1,
              dup: false,
              retain: false,
              messageId: i,
              properties: { userProperties: { n: String(i) } }
            }, { protocolVersion: 5 })
          )
        ])
        for (const byte of bytes.subarray(0, 40)) yield* client.sendBytes(Uint8Array.of(byte))
        yield* client.sendBytes(bytes.subarray(40))
        const answers = [yield* client.next, yield* client.next, yield* client.next, yield* client.next]
        assert.deepStrictEqual(answers.map((p) => p.cmd), ["connack", "puback", "puback", "puback"])
        const published = yield* broker.published("split/+")
        assert.deepStrictEqual(texts(published), ["split/1 payload 1", "split/2 payload 2", "split/3 payload 3"])
        assert.deepStrictEqual(published.map((m) => m.properties.userProperties), [[["n", "1"]], [["n", "2"]], [[
          "n",
          "3"
        ]]])
      })
    ))

  it.effect("a 1 MB PUBLISH whose first byte comes alone, then the rest in reads of 1,460 bytes, arrives whole", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        const client = yield* raw(broker, 5)
        yield* client.sendBytes(
          MqttPacket.generate({ cmd: "connect", protocolVersion: 5, clientId: "large", clean: true, keepalive: 0 }, {
            protocolVersion: 5
          })
        )
        assert.strictEqual((yield* client.next).cmd, "connack")
        const payload = Buffer.alloc(1 << 20, 7)
        payload.write("first", 0)
        payload.write("last", payload.length - 4)
        const packet = MqttPacket.generate(
          { cmd: "publish", topic: "large/one", payload, qos: 1, dup: false, retain: false, messageId: 9 },
          { protocolVersion: 5 }
        )
        // the test broker frames with the client's framer (its own copied everything buffered at each read once a
        // header came apart from its body: slow, not wrong; test/bytes.test.ts counts the framer's copies)
        yield* client.sendBytes(packet.subarray(0, 1))
        for (let at = 1; at < packet.length; at += 1460) yield* client.sendBytes(packet.subarray(at, at + 1460))
        assert.strictEqual((yield* client.next).cmd, "puback")
        const [message] = yield* broker.published("large/one")
        assert.isTrue(Buffer.from(message.payload).equals(payload))
      })
    ))

  it.effect("an MQTT 5 DISCONNECT without a reason code, followed by more bytes in the same write, is normal", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        const { client } = yield* rawConnect(broker, {
          clientId: "tidy",
          will: { topic: "wills/tidy", payload: Buffer.from("bye"), qos: 0, retain: false }
        })
        // mqtt-packet alone would read the PINGREQ's first byte as the DISCONNECT's reason code
        yield* client.sendBytes(Uint8Array.of(0xe0, 0x00, 0xc0, 0x00))
        const { packets, error } = yield* client.untilClosed
        assert.deepStrictEqual([packets, error.reason._tag], [[], "SocketCloseError"])
        assert.deepStrictEqual(yield* broker.published("wills/#"), [])
      })
    ))

  it.effect("a malformed packet closes the connection with DISCONNECT 0x81, and the will is published", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        const { client } = yield* rawConnect(broker, {
          clientId: "garbled",
          will: { topic: "wills/garbled", payload: Buffer.from("bye"), qos: 0, retain: false }
        })
        // a SUBSCRIBE with reserved flags 0000 instead of 0010 [MQTT-3.8.1-1]
        yield* client.sendBytes(Uint8Array.of(0x80, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00))
        const { packets } = yield* client.untilClosed
        assert.deepStrictEqual(packets.map((p) => [p.cmd, (p as MqttPacket.IDisconnectPacket).reasonCode]), [[
          "disconnect",
          0x81
        ]])
        assert.deepStrictEqual(texts(yield* broker.published("wills/#")), ["wills/garbled bye"])
      })
    ))

  it.effect("topic aliases: a known alias stands for its topic; an alias over the maximum is DISCONNECT 0x94", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        const { client, connack } = yield* rawConnect(broker, { clientId: "aliases" })
        assert.strictEqual(connack.properties?.topicAliasMaximum, 10)
        const publish = (topic: string, alias: number, text: string): MqttPacket.IPublishPacket => ({
          cmd: "publish",
          topic,
          payload: Buffer.from(text),
          qos: 0,
          dup: false,
          retain: false,
          properties: { topicAlias: alias }
        })
        yield* client.send(publish("long/topic/name", 3, "first"))
        yield* client.send(publish("", 3, "second"))
        assert.deepStrictEqual(texts(yield* broker.published("long/#")), [
          "long/topic/name first",
          "long/topic/name second"
        ])
        yield* client.send(publish("other", 11, "third"))
        const { packets } = yield* client.untilClosed
        assert.deepStrictEqual(packets.map((p) => [p.cmd, (p as MqttPacket.IDisconnectPacket).reasonCode]), [[
          "disconnect",
          0x94
        ]])
      })
    ))

  it.effect("a packet before CONNECT closes the connection without an answer", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        const client = yield* raw(broker, 4)
        yield* client.send({ cmd: "pingreq" })
        const { error, packets } = yield* client.untilClosed
        assert.deepStrictEqual(packets, [])
        assert.strictEqual(error.reason._tag, "SocketCloseError")
      })
    ))
})

// ---------------------------------------------------------------------------------------------------------------
// the helpers, with real clients
// ---------------------------------------------------------------------------------------------------------------

const errorOf = <A, E>(exit: Exit.Exit<A, E>): E => {
  if (Exit.isSuccess(exit)) return assert.fail("expected a failure")
  const failure = exit.cause.reasons.find((reason) => reason._tag === "Fail")
  if (failure === undefined || failure._tag !== "Fail") return assert.fail("expected a typed failure")
  return failure.error
}

describe("the helpers", () => {
  it.effect("published, retained and clients show what the broker holds; publish routes like a client", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        const device = yield* broker.makeClient({ clientId: "device", protocolVersion: 5 })
        yield* device.subscribe("cmd/device", { qos: 1 })
        yield* device.publish("status/device", "online", { qos: 1, retain: true })
        yield* broker.publish("cmd/device", "reboot", { qos: 1, properties: { contentType: "text/plain" } })
        const [command] = yield* device.messages.pipe(Stream.take(1), Stream.runCollect)
        assert.deepStrictEqual([command.text, command.properties.contentType], ["reboot", "text/plain"])
        assert.deepStrictEqual(texts(yield* broker.published()), ["status/device online", "cmd/device reboot"])
        assert.deepStrictEqual(texts(yield* broker.retained("status/+")), ["status/device online"])
        const clients = yield* broker.clients
        assert.deepStrictEqual(clients.map((c) => [c.clientId, c.connected, c.protocolVersion, c.subscriptions]), [[
          "device",
          true,
          5,
          ["cmd/device"]
        ]])
        const invalid = yield* Effect.exit(broker.publish("cmd/+", "x"))
        assert.strictEqual(errorOf(invalid)._tag, "InvalidTopicError")
        // from untyped code: a QoS out of range, a payload of the wrong type; nothing is published
        for (
          const [exit, option] of [
            [yield* Effect.exit(broker.publish("cmd/device", "x", { qos: 3 as 2 })), "qos"],
            [yield* Effect.exit(broker.publish("cmd/device", 42 as unknown as string)), "payload"]
          ] as const
        ) {
          const error = errorOf(exit)
          assert.strictEqual(error._tag, "InvalidOptionError")
          assert.strictEqual((error as MqttError.InvalidOptionError).option, option)
        }
        assert.deepStrictEqual(texts(yield* broker.published()), ["status/device online", "cmd/device reboot"])
      })
    ))

  it.effect("awaitPublished waits for a message that comes later", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        const waiting = yield* Effect.forkChild(broker.awaitPublished("late/#", 2))
        const client = yield* broker.makeClient()
        yield* client.publish("late/1", "a", { qos: 1 })
        yield* client.publish("other", "b", { qos: 1 })
        yield* client.publish("late/2", "c", { qos: 1 })
        assert.deepStrictEqual(texts(yield* Fiber.join(waiting)), ["late/1 a", "late/2 c"])
      })
    ))

  it.effect("awaitPublished returns one message at least, typed so (a count below 1 waits for one)", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        const waiting = yield* Effect.forkChild(broker.awaitPublished("first/#", 0))
        for (let i = 0; i < 10; i++) yield* Effect.yieldNow
        assert.strictEqual(waiting.pollUnsafe(), undefined, "nothing published yet")
        yield* broker.publish("first/1", "a")
        // the type says so: `first` needs no check under noUncheckedIndexedAccess
        const [first]: readonly [MqttMessage.MqttMessage, ...Array<MqttMessage.MqttMessage>] = yield* Fiber.join(
          waiting
        )
        assert.strictEqual(first.text, "a")
      })
    ))

  it.effect("disconnect drops the client as a lost network: it reconnects when the clock moves, will published", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        const watcher = yield* broker.makeClient()
        yield* watcher.subscribe("wills/#", { qos: 1 })
        const client = yield* broker.makeClient({
          clientId: "fragile",
          will: { topic: "wills/fragile", payload: "lost", qos: 1 }
        })
        assert.isTrue(yield* broker.disconnect("fragile"))
        const [will] = yield* watcher.messages.pipe(Stream.take(1), Stream.runCollect)
        assert.strictEqual(will.text, "lost")
        const status = yield* client.status
        assert.strictEqual(status._tag, "Disconnected")
        yield* TestClock.adjust("1 second")
        yield* broker.awaitClient("fragile")
        assert.strictEqual((yield* client.status)._tag, "Connected")
        assert.strictEqual((yield* client.metrics).reconnects, 1)
        assert.isFalse(yield* broker.disconnect("nobody"))
      })
    ))

  for (const kept of [true, false]) {
    it.effect(`a subscription() released while the client is offline ends without the clock moving; the UNSUBSCRIBE goes out at the next connection (${kept ? "the broker kept the session" : "a clean session"})`, () =>
      withBroker((broker) =>
        Effect.gen(function*() {
          const client = yield* broker.makeClient({ clientId: "leaving", cleanStart: !kept })
          yield* client.subscribe("kept/#", { qos: 1 })
          const released = Effect.scoped(Effect.gen(function*() {
            const stream = yield* client.subscription("gone/#", { qos: 1 })
            yield* Effect.forkScoped(Stream.runDrain(stream))
            assert.isTrue(yield* broker.disconnect("leaving"))
          }))
          // nothing moves the test clock while the scope closes: the release must not wait on it
          const guard = Effect.andThen(
            Effect.promise(() => new Promise<void>((resolve) => setTimeout(resolve, 10_000).unref())),
            Effect.fail("the release waited for an UNSUBACK that cannot come while offline")
          )
          yield* Effect.raceFirst(released, guard)
          yield* TestClock.adjust("1 minute")
          yield* broker.awaitClient("leaving")
          yield* broker.awaitSubscription("kept/#")
          const subscriptions = Effect.map(
            broker.clients,
            (clients) => clients.find((c) => c.clientId === "leaving")?.subscriptions
          )
          for (let i = 0; i < 100 && (yield* subscriptions)?.length !== 1; i++) yield* TestClock.adjust("10 millis")
          assert.deepStrictEqual(yield* subscriptions, ["kept/#"])
        })
      ))
  }

  it.effect("disconnect with an MQTT 5 reason code sends DISCONNECT with it", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        const client = yield* broker.makeClient({ clientId: "kicked", protocolVersion: 5, reconnect: false })
        yield* broker.disconnect("kicked", { reasonCode: 0x98 })
        const exit = yield* Effect.exit(client.awaitClose)
        const error = errorOf(exit) as MqttError.ConnectionLostError
        assert.deepStrictEqual([error._tag, error.reasonCode], ["ConnectionLostError", 0x98])
      })
    ))

  it.effect("a stopped broker refuses connections; once started the client reconnects and resubscribes", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        const client = yield* broker.makeClient({ clientId: "patient" })
        yield* client.subscribe("back/#", { qos: 1 })
        yield* broker.stop()
        yield* TestClock.adjust("10 seconds")
        assert.isAbove((yield* client.metrics).failedAttempts, 0)
        yield* broker.start
        yield* TestClock.adjust("1 minute")
        yield* broker.awaitSubscription("back/#")
        yield* broker.publish("back/again", "hello", { qos: 1 })
        const [message] = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
        assert.strictEqual(message.text, "hello")
      })
    ))

  it.effect("a second connection with the same client identifier takes the session over (0x8E)", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        const first = yield* broker.makeClient({ clientId: "twin", protocolVersion: 5, reconnect: false })
        yield* broker.makeClient({ clientId: "twin", protocolVersion: 5 })
        const error = errorOf(yield* Effect.exit(first.awaitClose)) as MqttError.ConnectionLostError
        assert.strictEqual(error.reasonCode, 0x8e)
      })
    ))

  for (const readAhead of [true, false]) {
    const where = readAhead ? "the DISCONNECT read ahead" : "the DISCONNECT in the read of the messages"
    it.effect(`a session taken over while the reader waits for room ends with 0x8E (${where})`, () =>
      withBroker((broker) =>
        Effect.gen(function*() {
          const first = yield* broker.makeClient({
            clientId: "twin",
            protocolVersion: 5,
            reconnect: false,
            queue: IncomingQueue.bounded(1),
            receiveMaximum: 100
          })
          yield* first.subscribe("t", { qos: 1 })
          // nothing consumes: the first fills the queue of one, the reader waits for room with the second
          for (const text of ["1", "2", "3"]) yield* broker.publish("t", text, { qos: 1 })
          // read ahead: the client's reader reads them, and waits, before the broker takes the session over;
          // otherwise it has not run yet, and reads the DISCONNECT in the same read as the messages
          if (readAhead) { for (let i = 0; i < 10; i++) yield* Effect.yieldNow }
          const closed = yield* Effect.forkChild(Effect.exit(first.awaitClose))
          yield* broker.makeClient({ clientId: "twin", protocolVersion: 5 })
          // a keepalive that would find the connection closed, and take it for lost
          yield* TestClock.adjust("2 minutes")
          const error = errorOf(yield* Fiber.join(closed)) as MqttError.ConnectionLostError
          assert.deepStrictEqual([error._tag, error.reasonCode], ["ConnectionLostError", 0x8e])
        })
      ))
  }

  it.effect("authenticate refuses a CONNECT: ConnectRefusedError 4 on MQTT 3.1.1, 0x86 on MQTT 5", () =>
    withBroker(
      (broker) =>
        Effect.gen(function*() {
          for (const [protocolVersion, code] of [[4, 4], [5, 0x86]] as const) {
            const exit = yield* Effect.exit(broker.makeClient({ protocolVersion, username: "mallory" }))
            const error = errorOf(exit) as MqttError.ConnectRefusedError
            assert.deepStrictEqual([error._tag, error.reasonCode], ["ConnectRefusedError", code])
          }
          const ok = yield* broker.makeClient({ username: "alice" })
          assert.isFalse(ok.connection.sessionPresent)
        }),
      { authenticate: ({ username }) => username === "alice" }
    ))

  it.effect("an MQTT 5 client with an empty identifier is given one", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        const exit = yield* Effect.exit(broker.makeClient({ clientId: "", protocolVersion: 5 }))
        if (Exit.isSuccess(exit)) assert.match(exit.value.connection.clientId, /^test-broker-\d+$/)
        else assert.fail(String(exit.cause))
      })
    ))

  it.effect("layerClient gives a client of the broker in the context", () =>
    Effect.gen(function*() {
      const client = yield* MqttClient.MqttClient
      const broker = yield* MqttTestBroker.MqttTestBroker
      yield* client.publish("layer/ok", "yes", { qos: 2 })
      assert.deepStrictEqual(texts(yield* broker.published("layer/#")), ["layer/ok yes"])
    }).pipe(
      Effect.provide(
        MqttTestBroker.layerClient({ protocolVersion: 5 }).pipe(Layer.provideMerge(MqttTestBroker.layer()))
      )
    ))
})

// ---------------------------------------------------------------------------------------------------------------
// the in-memory socket
// ---------------------------------------------------------------------------------------------------------------

describe("the in-memory socket", () => {
  it.effect("each acquisition of the reader is a new connection; the writer waits while there is none", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        const socket = yield* broker.socket
        const writer = yield* socket.writer
        const connect = (clientId: string) =>
          MqttPacket.generate({ cmd: "connect", protocolVersion: 4, clientId, clean: true, keepalive: 0 })
        // no connection yet: the write waits
        const pending = yield* Effect.forkChild(writer.write(connect("first")))
        yield* Effect.yieldNow
        assert.deepStrictEqual(yield* broker.clients, [])
        yield* Effect.scoped(Effect.gen(function*() {
          const { pull } = yield* socket.reader
          yield* Fiber.join(pending)
          const [connack] = yield* pull
          assert.strictEqual(connack[0], 0x20)
          assert.deepStrictEqual((yield* broker.clients).map((c) => c.clientId), ["first"])
        }))
        // the scope closed the first connection: the broker has seen it go
        assert.deepStrictEqual(yield* broker.clients, [])
        yield* Effect.scoped(Effect.gen(function*() {
          const { pull } = yield* socket.reader
          yield* writer.write(connect("second"))
          yield* pull
          assert.deepStrictEqual((yield* broker.clients).map((c) => c.clientId), ["second"])
        }))
      })
    ))

  it.effect("a clean close delivers what was sent, then fails the pull with close code 1000", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        const socket = yield* broker.socket
        const writer = yield* socket.writer
        const { pull } = yield* socket.reader
        // CONNECT then DISCONNECT in one write: the broker answers CONNACK, then closes
        yield* writer.write(Buffer.concat([
          MqttPacket.generate({ cmd: "connect", protocolVersion: 4, clientId: "brief", clean: true, keepalive: 0 }),
          MqttPacket.generate({ cmd: "disconnect" })
        ]))
        const [connack] = yield* pull
        assert.strictEqual(connack[0], 0x20)
        const closed = yield* Effect.flip(pull)
        assert.deepStrictEqual(
          [closed.reason._tag, (closed.reason as Socket.SocketCloseError).code],
          ["SocketCloseError", 1000]
        )
        const write = yield* Effect.flip(writer.write(Uint8Array.of(0xc0, 0x00)))
        assert.strictEqual(write.reason._tag, "SocketWriteError")
      })
    ))

  it.effect("a reset drops what was not read and fails the pull with a read error", () =>
    withBroker((broker) =>
      Effect.gen(function*() {
        const { client } = yield* rawConnect(broker, { clientId: "reset" }, 4)
        yield* client.send({ cmd: "subscribe", messageId: 1, subscriptions: [{ topic: "x", qos: 0 }] })
        // the SUBACK is waiting, unread, when the network drops
        yield* broker.disconnect("reset")
        const error = yield* Effect.flip(client.next)
        assert.strictEqual(error.reason._tag, "SocketReadError")
      })
    ))
})

describe("a transport that answers while the client writes", () => {
  it.effect("each QoS 1 publish reaches the broker once (the driver never hands the same packets on twice)", () =>
    Effect.gen(function*() {
      const broker = yield* MqttTestBroker.make()
      yield* Effect.scoped(Effect.gen(function*() {
        const client = yield* broker.makeClient({ protocolVersion: 5 })
        yield* client.publish("a", "1", { qos: 1 })
        yield* TestClock.adjust("2 minutes")
        yield* client.publish("a", "2", { qos: 1 })
      }))
      assert.deepStrictEqual((yield* broker.published("a")).map((m) => m.text), ["1", "2"])
    }))
})

describe("the test broker's parser", () => {
  it.effect("a packet written while the broker handles the previous one is handled once, after it", () =>
    Effect.gen(function*() {
      const broker = yield* MqttTestBroker.make()
      const subscriber = yield* broker.makeClient({ clientId: "sub" })
      yield* subscriber.subscribe("s/#", { qos: 1 })
      const consumer = yield* Effect.forkScoped(subscriber.messages.pipe(Stream.take(3), Stream.runCollect))
      yield* Effect.scoped(Effect.gen(function*() {
        const publisher = yield* broker.makeClient({ clientId: "pub" })
        for (const n of ["1", "2", "3"]) yield* publisher.publish("s/x", n, { qos: 1 })
      }))
      assert.deepStrictEqual((yield* broker.published("s/#")).map((m) => m.text), ["1", "2", "3"])
      assert.deepStrictEqual([...(yield* Fiber.join(consumer))].map((m) => m.text), ["1", "2", "3"])
    }))
})
