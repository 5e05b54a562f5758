/**
 * Protocol tests against the scripted fake broker: the exact packets the client sends, and the faults a real
 * broker cannot be made to produce (withheld acknowledgements, malformed packets, exact packet order).
 */
import { assert, describe, expect, it } from "@effect/vitest"
import { Cause, Deferred, Effect, Exit, Fiber, Option, Redacted, Schedule, Scope, Stream } from "effect"
import { IncomingQueue, MqttClient, MqttError } from "effect-mqtt"
import { TestClock } from "effect/testing"
import * as fc from "fast-check"
import type { Packet } from "mqtt-packet"
import * as FakeBroker from "./support/FakeBroker.ts"

/** Lets real I/O happen (the fake broker and the client talk over real sockets, even on TestClock). */
const settle = Effect.promise(() => new Promise<void>((resolve) => setTimeout(resolve, 30)))

const connect = (
  options: MqttClient.Options = {},
  connack?: FakeBroker.ConnackOptions
) =>
  Effect.gen(function*() {
    const broker = yield* FakeBroker.make({ protocolVersion: options.protocolVersion ?? 4 })
    // these tests are about one connection: reconnection has its own tests
    const fiber = yield* Effect.forkChild(MqttClient.make({ url: broker.url, reconnect: false, ...options }))
    const { connect, connection } = yield* broker.acceptAndConnack(connack)
    const client = yield* Fiber.join(fiber)
    return { broker, client, connection, connect }
  })

const publishPacket = (
  topic: string,
  payload: string,
  qos: 0 | 1 | 2,
  messageId?: number,
  extra: Partial<FakeBroker.PacketOf<"publish">> = {}
): Packet => ({
  cmd: "publish",
  topic,
  payload: Buffer.from(payload),
  qos,
  retain: false,
  dup: false,
  ...(messageId === undefined ? {} : { messageId }),
  ...extra
})

const versions = [4, 5] as const

describe("CONNECT and CONNACK", () => {
  for (const protocolVersion of versions) {
    it.live(`v${protocolVersion}: CONNECT carries the client's options`, () =>
      Effect.gen(function*() {
        const { connect: packet } = yield* connect({
          protocolVersion,
          clientId: "client-1",
          keepAlive: 17,
          cleanStart: false,
          username: "user",
          password: Redacted.make("secret"),
          will: { topic: "will/topic", payload: "bye", qos: 1, retain: true },
          ...(protocolVersion === 5 ? { sessionExpiryInterval: 300 } : {})
        })
        expect(packet.protocolVersion).toBe(protocolVersion)
        expect(packet.clientId).toBe("client-1")
        expect(packet.keepalive).toBe(17)
        expect(packet.clean).toBe(false)
        expect(packet.username).toBe("user")
        expect(Buffer.from(packet.password!).toString()).toBe("secret")
        expect(packet.will?.topic).toBe("will/topic")
        expect(Buffer.from(packet.will!.payload as Buffer).toString()).toBe("bye")
        expect(packet.will?.qos).toBe(1)
        expect(packet.will?.retain).toBe(true)
        if (protocolVersion === 5) expect(packet.properties?.sessionExpiryInterval).toBe(300)
      }))

    it.live(`v${protocolVersion}: a generated client identifier is used when none is given`, () =>
      Effect.gen(function*() {
        const { client, connect: packet } = yield* connect({ protocolVersion })
        expect(packet.clientId).toMatch(/^effect-mqtt-[A-Za-z0-9_-]{10}$/)
        expect(client.connection.clientId).toBe(packet.clientId)
      }))
  }

  it.live("v4: a refused CONNACK fails the layer with the return code", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make()
      const fiber = yield* Effect.forkChild(Effect.exit(MqttClient.make({ url: broker.url })))
      const connection = yield* broker.accept
      yield* connection.expect("connect")
      yield* connection.connack({ returnCode: 5 })
      const exit = yield* Fiber.join(fiber)
      const error = Exit.isFailure(exit) ? Cause.squash(exit.cause) : undefined
      assert(error instanceof MqttError.ConnectRefusedError)
      expect(error.reasonCode).toBe(5)
      expect(error.message).toContain("not authorized")
      yield* connection.closed
    }))

  it.live("v5: a refused CONNACK carries the reason code and reason string", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5 })
      const fiber = yield* Effect.forkChild(Effect.flip(MqttClient.make({ url: broker.url, protocolVersion: 5 })))
      const connection = yield* broker.accept
      yield* connection.expect("connect")
      yield* connection.connack({ reasonCode: 0x86, properties: { reasonString: "who are you" } })
      const error = yield* Fiber.join(fiber)
      assert(error instanceof MqttError.ConnectRefusedError)
      expect(error.reasonCode).toBe(0x86)
      expect(error.reasonString).toBe("who are you")
      expect(error.message).toContain("bad user name or password")
    }))

  it.effect("a CONNACK that never comes fails with a connect TimeoutError after connectTimeout", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make()
      const fiber = yield* Effect.forkChild(
        Effect.flip(MqttClient.make({ url: broker.url, connectTimeout: "5 seconds" }))
      )
      const connection = yield* broker.accept
      yield* connection.expect("connect")
      yield* settle
      yield* TestClock.adjust("4 seconds")
      yield* settle
      expect(fiber.pollUnsafe()).toBeUndefined()
      yield* TestClock.adjust("1 second")
      const error = yield* Fiber.join(fiber)
      assert(error instanceof MqttError.MqttTimeoutError)
      expect(error.operation).toBe("connect")
      yield* connection.closed
    }))

  it.live("a broker that is not listening fails the layer with ConnectionLostError", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(MqttClient.make({ url: "mqtt://127.0.0.1:1", connectTimeout: "5 seconds" }))
      assert(error instanceof MqttError.ConnectionLostError)
      expect(error.message).toMatch(/could not connect/i)
    }))

  it.live("invalid options are typed errors and nothing is sent", () =>
    Effect.gen(function*() {
      const cases: Array<[MqttClient.Options, string]> = [
        [{ url: "http://localhost" }, "url"],
        [{ url: "not a url" }, "url"],
        [{ keepAlive: -1 }, "keepAlive"],
        [{ keepAlive: 1.5 }, "keepAlive"],
        [{ protocolVersion: 6 as 4 }, "protocolVersion"],
        [{ connectTimeout: -5 }, "connectTimeout"],
        [{ queue: IncomingQueue.bounded(0) }, "queue"],
        [{ will: { topic: "a/#", payload: "x" } }, "will.topic"],
        [{ will: { topic: "a", payload: "x", qos: 3 as 0 } }, "will.qos"],
        [{ maximumPacketSize: 15 }, "maximumPacketSize"],
        [{ sendMaximumPacketSize: 15 }, "sendMaximumPacketSize"],
        [{ sendMaximumPacketSize: 1.5 }, "sendMaximumPacketSize"],
        [{ sendMaximumPacketSize: "1000" as unknown as number }, "sendMaximumPacketSize"],
        // MQTT 3.1.1 (the default) has no Session Expiry
        [{ sessionExpiryInterval: 3600, cleanStart: false }, "sessionExpiryInterval"],
        [{ protocolVersion: 3, sessionExpiryInterval: 60 }, "sessionExpiryInterval"],
        // one setting under two names, with two values
        [{ cleanStart: true, cleanSession: false }, "cleanSession"],
        [{ clientId: "c", cleanStart: false, cleanSession: true }, "cleanSession"]
      ]
      for (const [options, option] of cases) {
        const error = yield* Effect.flip(MqttClient.make({ url: "mqtt://127.0.0.1:1", ...options }))
        assert(error instanceof MqttError.InvalidOptionError, `${option}: ${String(error)}`)
        expect(error.option).toBe(option)
      }
    }))

  it.live("cleanStart and cleanSession, one setting: both given, they must agree; the error names both", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(
        MqttClient.make({ url: "mqtt://127.0.0.1:1", clientId: "c", cleanSession: false, cleanStart: true })
      )
      assert(error instanceof MqttError.InvalidOptionError, String(error))
      expect(error.reason).toContain("cleanSession: false disagrees with cleanStart: true")
      const { connect: agreed } = yield* connect({ clientId: "c", cleanSession: false, cleanStart: false })
      expect(agreed.clean).toBe(false)
    }).pipe(Effect.scoped))

  it.live("releasing the client sends DISCONNECT and closes the socket", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make()
      const fiber = yield* Effect.forkChild(
        Effect.scoped(Effect.andThen(MqttClient.make({ url: broker.url }), Effect.void))
      )
      const { connection } = yield* broker.acceptAndConnack()
      yield* Fiber.join(fiber)
      expect((yield* connection.receive).cmd).toBe("disconnect")
      yield* connection.closed
    }))
})

describe("keepalive (TestClock)", () => {
  it.effect("PINGREQ is sent after keepAlive seconds without sending, and PINGRESP keeps the connection", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ keepAlive: 10 })
      yield* settle
      yield* TestClock.adjust("9 seconds")
      yield* connection.expectSilence(50)
      yield* TestClock.adjust("1 second")
      yield* connection.expect("pingreq")
      yield* connection.send({ cmd: "pingresp" })
      yield* settle
      yield* TestClock.adjust("10 seconds")
      yield* connection.expect("pingreq")
      yield* connection.send({ cmd: "pingresp" })
      yield* settle
      // still connected: a publish goes through
      yield* client.publish("a", "b")
      expect((yield* connection.expect("publish")).topic).toBe("a")
    }))

  it.effect("sending resets the keepalive timer [MQTT-3.1.2-20]", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ keepAlive: 10 })
      yield* settle
      yield* TestClock.adjust("6 seconds")
      // traffic both ways at 6 s: neither silence rule is due before 16 s
      yield* client.publish("a", "b")
      yield* connection.expect("publish")
      yield* connection.send(publishPacket("in", "x", 0))
      yield* settle
      yield* TestClock.adjust("6 seconds")
      yield* connection.expectSilence(50)
      yield* TestClock.adjust("4 seconds")
      yield* connection.expect("pingreq")
    }))

  it.effect("a client that keeps sending but receives nothing still pings within the keepalive", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ keepAlive: 10 })
      yield* settle
      for (let i = 0; i < 3; i++) {
        yield* TestClock.adjust("3 seconds")
        yield* client.publish("a", String(i))
        yield* connection.expect("publish")
      }
      // sent at 9 s, but nothing received since the CONNACK at 0 s
      yield* TestClock.adjust("1 second")
      yield* connection.expect("pingreq")
    }))

  it.effect("a client that only receives still sends PINGREQ within the keepalive", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ keepAlive: 10 })
      yield* client.subscribe("flood/#").pipe(Effect.forkChild)
      const subscribe = yield* connection.expect("subscribe")
      yield* connection.send({ cmd: "suback", messageId: subscribe.messageId!, granted: [0] })
      yield* settle
      for (let i = 0; i < 9; i++) {
        yield* connection.send(publishPacket("flood/x", `m${i}`, 0))
        yield* TestClock.adjust("1 second")
      }
      yield* connection.expectSilence(50)
      yield* TestClock.adjust("1 second")
      yield* connection.expect("pingreq")
    }))

  it.effect("a withheld PINGRESP closes the connection with a ping TimeoutError", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ keepAlive: 10, pingTimeout: "4 seconds" })
      const messages = yield* Effect.forkChild(Effect.flip(Stream.runDrain(client.messages)))
      yield* settle
      yield* TestClock.adjust("10 seconds")
      yield* connection.expect("pingreq")
      yield* TestClock.adjust("3 seconds")
      yield* settle
      expect(connection.isClosed).toBe(false)
      yield* TestClock.adjust("1 second")
      yield* connection.closed
      const error = yield* Effect.flip(client.awaitClose)
      assert(error instanceof MqttError.MqttTimeoutError)
      expect(error.operation).toBe("ping")
      expect((yield* Fiber.join(messages))._tag).toBe("MqttTimeoutError")
      expect((yield* Effect.flip(client.publish("a", "b")))._tag).toBe("MqttTimeoutError")
    }))

  it.effect("v5: the broker's Server Keep Alive replaces the client's [MQTT-3.1.2-21]", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ protocolVersion: 5, keepAlive: 60 }, {
        properties: { serverKeepAlive: 5 }
      })
      expect(client.connection.keepAlive).toBe(5)
      yield* settle
      yield* TestClock.adjust("5 seconds")
      yield* connection.expect("pingreq")
    }))

  it.effect("keepAlive 0 sends no PINGREQ", () =>
    Effect.gen(function*() {
      const { connection } = yield* connect({ keepAlive: 0 })
      yield* settle
      yield* TestClock.adjust("1 hour")
      yield* connection.expectSilence(100)
    }))

  it.effect("a reader held back by a full queue does not count a late PINGRESP against the broker", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({
        keepAlive: 10,
        pingTimeout: "2 seconds",
        queue: IncomingQueue.bounded(1)
      })
      yield* client.subscribe("t").pipe(Effect.forkChild)
      const subscribe = yield* connection.expect("subscribe")
      yield* connection.send({ cmd: "suback", messageId: subscribe.messageId!, granted: [0] })
      yield* settle
      // fill the queue and leave the reader waiting for room
      yield* connection.send(publishPacket("t", "1", 0))
      yield* settle
      yield* connection.send(publishPacket("t", "2", 0))
      yield* settle
      yield* TestClock.adjust("10 seconds")
      yield* connection.expect("pingreq")
      yield* connection.send({ cmd: "pingresp" })
      yield* settle
      yield* TestClock.adjust("5 seconds")
      yield* settle
      expect(connection.isClosed).toBe(false)
      const received = yield* client.messages.pipe(Stream.take(2), Stream.runCollect)
      expect(received.map((m) => m.text)).toEqual(["1", "2"])
    }))
})

describe("publishing", () => {
  for (const protocolVersion of versions) {
    it.live(`v${protocolVersion}: QoS 0 is written at once, QoS 1 completes on PUBACK`, () =>
      Effect.gen(function*() {
        const { client, connection } = yield* connect({ protocolVersion })
        yield* client.publish("t/0", "zero", { retain: true })
        const p0 = yield* connection.expect("publish")
        expect([p0.topic, Buffer.from(p0.payload).toString(), p0.qos, p0.retain]).toEqual(["t/0", "zero", 0, true])
        const fiber = yield* Effect.forkChild(client.publish("t/1", new Uint8Array([1, 2, 3]), { qos: 1 }))
        const p1 = yield* connection.expect("publish")
        expect(p1.qos).toBe(1)
        expect([...p1.payload as Buffer]).toEqual([1, 2, 3])
        yield* settle
        expect(fiber.pollUnsafe()).toBeUndefined()
        yield* connection.send({ cmd: "puback", messageId: p1.messageId! })
        yield* Fiber.join(fiber)
      }))

    it.live(`v${protocolVersion}: QoS 2 goes PUBLISH, PUBREC, PUBREL, PUBCOMP and completes on PUBCOMP`, () =>
      Effect.gen(function*() {
        const { client, connection } = yield* connect({ protocolVersion })
        const fiber = yield* Effect.forkChild(client.publish("t/2", "two", { qos: 2 }))
        const publish = yield* connection.expect("publish")
        expect(publish.qos).toBe(2)
        yield* connection.send({ cmd: "pubrec", messageId: publish.messageId! })
        const pubrel = yield* connection.expect("pubrel")
        expect(pubrel.messageId).toBe(publish.messageId)
        yield* settle
        expect(fiber.pollUnsafe()).toBeUndefined()
        yield* connection.send({ cmd: "pubcomp", messageId: publish.messageId! })
        yield* Fiber.join(fiber)
      }))
  }

  it.live("v5: a PUBACK reason code >= 0x80 fails the publish with PublishError and the reason string", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ protocolVersion: 5 })
      const fiber = yield* Effect.forkChild(Effect.flip(client.publish("t", "x", { qos: 1 })))
      const publish = yield* connection.expect("publish")
      yield* connection.send({
        cmd: "puback",
        messageId: publish.messageId!,
        reasonCode: 0x87,
        properties: { reasonString: "not for you" }
      })
      const error = yield* Fiber.join(fiber)
      assert(error instanceof MqttError.PublishError)
      expect([error.topic, error.reasonCode, error.reasonString]).toEqual(["t", 0x87, "not for you"])
    }))

  it.live("v5: PUBACK 0x10 (no matching subscribers) is a success", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ protocolVersion: 5 })
      const fiber = yield* Effect.forkChild(client.publish("t", "x", { qos: 1 }))
      const publish = yield* connection.expect("publish")
      yield* connection.send({ cmd: "puback", messageId: publish.messageId!, reasonCode: 0x10 })
      yield* Fiber.join(fiber)
    }))

  it.live("v5: a PUBREC reason code >= 0x80 fails the QoS 2 publish and sends no PUBREL", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ protocolVersion: 5 })
      const fiber = yield* Effect.forkChild(Effect.flip(client.publish("t", "x", { qos: 2 })))
      const publish = yield* connection.expect("publish")
      yield* connection.send({ cmd: "pubrec", messageId: publish.messageId!, reasonCode: 0x97 })
      const error = yield* Fiber.join(fiber)
      assert(error instanceof MqttError.PublishError)
      expect(error.reasonCode).toBe(0x97)
      yield* connection.expectSilence(100)
    }))

  it.live("v5: publish properties are sent", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ protocolVersion: 5 })
      yield* client.publish("t", "{}", {
        properties: {
          contentType: "application/json",
          payloadFormatIndicator: true,
          messageExpiryInterval: 60,
          responseTopic: "reply/here",
          correlationData: new Uint8Array([9, 8]),
          userProperties: [["a", "1"], ["b", "2"], ["a", "3"]]
        }
      })
      const publish = yield* connection.expect("publish")
      expect(publish.properties?.contentType).toBe("application/json")
      expect(publish.properties?.payloadFormatIndicator).toBe(true)
      expect(publish.properties?.messageExpiryInterval).toBe(60)
      expect(publish.properties?.responseTopic).toBe("reply/here")
      expect([...publish.properties!.correlationData!]).toEqual([9, 8])
      expect(publish.properties?.userProperties).toEqual({ a: ["1", "3"], b: "2" })
      expect(Buffer.from(publish.payload).toString()).toBe("{}")
    }))

  it.live("the caller's mistakes are typed errors and nothing is sent", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({})
      const errors = [
        yield* Effect.flip(client.publish("a/+", "x")),
        yield* Effect.flip(client.publish("", "x")),
        yield* Effect.flip(client.publish("a\u0000b", "x")),
        yield* Effect.flip(client.publish("a", "x", { qos: 3 as 0 })),
        yield* Effect.flip(client.publish("a", 42 as unknown as string)),
        yield* Effect.flip(client.subscribe("a/#/b")),
        yield* Effect.flip(client.subscribe([])),
        yield* Effect.flip(client.subscribe("a", { qos: -1 as 0 })),
        yield* Effect.flip(client.subscribe({ filter: "a", noLocal: true })),
        yield* Effect.flip(client.unsubscribe("a+"))
      ]
      expect(errors.map((e) => e._tag)).toEqual([
        "InvalidTopicError",
        "InvalidTopicError",
        "InvalidTopicError",
        "InvalidOptionError",
        "InvalidOptionError",
        "InvalidTopicError",
        "InvalidOptionError",
        "InvalidOptionError",
        "InvalidOptionError",
        "InvalidTopicError"
      ])
      for (const error of errors) expect(MqttError.isInvalidInput(error)).toBe(true)
      yield* connection.expectSilence(100)
    }))

  it.live(
    "connected, publishAccepted waits while the waiting line behind maxInflight holds offline.capacity publishes; a PUBACK makes room",
    () =>
      Effect.gen(function*() {
        const { client, connection } = yield* connect({ maxInflight: 2, offline: { capacity: 3 } })
        // 2 in flight, 3 waiting: accepted at once
        for (let i = 1; i <= 5; i++) yield* client.publishAccepted("t", String(i), { qos: 1 })
        const sixth = yield* Effect.forkChild(client.publishAccepted("t", "6", { qos: 1 }))
        const first = yield* connection.expect("publish")
        yield* connection.expect("publish")
        yield* settle
        expect(sixth.pollUnsafe()).toBeUndefined()
        yield* connection.send({ cmd: "puback", messageId: first.messageId! })
        yield* Fiber.join(sixth)
        const rest: Array<string> = []
        for (let i = 0; i < 4; i++) {
          const publish = yield* connection.expect("publish")
          rest.push(Buffer.from(publish.payload).toString())
          yield* connection.send({ cmd: "puback", messageId: publish.messageId! })
        }
        expect(rest).toEqual(["3", "4", "5", "6"])
      })
  )

  it.live("the acknowledgement publishAccepted returns, awaited by two fibers at once (one of them interrupted): the other completes at the PUBACK", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect()
      const acknowledged = yield* client.publishAccepted("t", "x", { qos: 1 })
      const one = yield* Effect.forkChild(acknowledged, { startImmediately: true })
      const two = yield* Effect.forkChild(acknowledged, { startImmediately: true })
      const three = yield* Effect.forkChild(acknowledged, { startImmediately: true })
      const publish = yield* connection.expect("publish")
      yield* Fiber.interrupt(three)
      yield* connection.send({ cmd: "puback", messageId: publish.messageId! })
      yield* Fiber.join(one)
      yield* Fiber.join(two)
    }))

  it.live(
    "packet identifiers are never reused while in flight; the 65,536th QoS 1 publish waits for a free one",
    () =>
      Effect.gen(function*() {
        const { client, connection } = yield* connect({ maxInflight: 65535 })
        const fibers = yield* Effect.forEach(
          Array.from({ length: 65536 }, (_, i) => i),
          (i) => Effect.forkChild(client.publish("t", String(i), { qos: 1 }))
        )
        const ids = new Set<number>()
        for (let i = 0; i < 65535; i++) {
          const publish = yield* connection.expect("publish")
          ids.add(publish.messageId!)
        }
        expect(ids.size).toBe(65535)
        yield* connection.expectSilence(100)
        yield* connection.send({ cmd: "puback", messageId: 777 })
        const last = yield* connection.expect("publish")
        expect(last.messageId).toBe(777)
        expect(Buffer.from(last.payload).toString()).toBe("65535")
        // the publish that held 777 completed; the others still wait for their PUBACK
        const holder = connection.received.findIndex((p) => p.cmd === "publish" && p.messageId === 777) - 1
        yield* Fiber.join(fibers[holder])
        expect(fibers[0].pollUnsafe()).toBeUndefined()
      }),
    120_000
  )

  it.live("one publish effect run several times at once sends each run under its own packet identifier", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({})
      const once = client.publish("t", "x", { qos: 1 })
      const runs = yield* Effect.forkChild(Effect.all([once, once, once, once], { concurrency: "unbounded" }))
      const ids = []
      for (let i = 0; i < 4; i++) ids.push((yield* connection.expect("publish")).messageId!)
      expect(new Set(ids).size).toBe(4)
      for (const messageId of ids) yield* connection.send({ cmd: "puback", messageId })
      yield* Fiber.join(runs)
    }))

  it.live("closing the client with a thousand publishes waiting fails each of them, and nothing else", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make()
      const scope = yield* Scope.make()
      const fiber = yield* Effect.forkChild(
        Scope.provide(MqttClient.make({ url: broker.url, reconnect: false }), scope)
      )
      const { connection } = yield* broker.acceptAndConnack()
      const client = yield* Fiber.join(fiber)
      const publishes = yield* Effect.forEach(
        Array.from({ length: 1000 }, (_, i) => i),
        (i) => Effect.forkChild(Effect.exit(client.publish("t", String(i), { qos: i % 2 === 0 ? 1 : 2 })))
      )
      yield* connection.expect("publish")
      yield* Scope.close(scope, Exit.void)
      const exits = yield* Fiber.joinAll(publishes)
      expect(exits.every((exit) => Exit.isFailure(exit))).toBe(true)
      yield* connection.closed
    }))

  it.live("maxInflight caps the QoS 1/2 publishes waiting for acknowledgement; the rest go in order", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ maxInflight: 2 })
      const all = yield* Effect.forkChild(
        Effect.forEach([1, 2, 3, 4], (i) => client.publish("t", String(i), { qos: 2 }), {
          concurrency: "unbounded",
          discard: true
        })
      )
      const complete = (p: FakeBroker.PacketOf<"publish">) =>
        Effect.gen(function*() {
          yield* connection.send({ cmd: "pubrec", messageId: p.messageId! })
          yield* connection.expect("pubrel")
          yield* connection.send({ cmd: "pubcomp", messageId: p.messageId! })
        })
      const first = [yield* connection.expect("publish"), yield* connection.expect("publish")]
      yield* connection.expectSilence(100)
      // each completed flow lets exactly one more PUBLISH go
      yield* complete(first[0])
      const third = yield* connection.expect("publish")
      yield* connection.expectSilence(50)
      yield* complete(first[1])
      const fourth = yield* connection.expect("publish")
      expect([...first, third, fourth].map((p) => Buffer.from(p.payload).toString())).toEqual(["1", "2", "3", "4"])
      yield* complete(third)
      yield* complete(fourth)
      yield* Fiber.join(all)
    }))

  it.live("v5: the broker's Receive Maximum limits in-flight publishes, not other packets", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ protocolVersion: 5 }, { properties: { receiveMaximum: 3 } })
      expect(client.connection.receiveMaximum).toBe(3)
      const publishes = yield* Effect.forkChild(
        Effect.forEach([1, 2, 3, 4, 5], (i) => client.publish("t", String(i), { qos: 1 }), {
          concurrency: "unbounded",
          discard: true
        })
      )
      const first = [
        yield* connection.expect("publish"),
        yield* connection.expect("publish"),
        yield* connection.expect("publish")
      ]
      yield* connection.expectSilence(100)
      // a SUBSCRIBE is not held back by the quota
      const subscribe = yield* Effect.forkChild(client.subscribe("s"))
      const sub = yield* connection.expect("subscribe")
      yield* connection.send({ cmd: "suback", messageId: sub.messageId!, granted: [0] })
      yield* Fiber.join(subscribe)
      yield* connection.send({ cmd: "puback", messageId: first[0].messageId! })
      yield* connection.expect("publish")
      yield* connection.expectSilence(100)
      for (const p of first.slice(1)) yield* connection.send({ cmd: "puback", messageId: p.messageId! })
      const fifth = yield* connection.expect("publish")
      yield* connection.send({ cmd: "puback", messageId: fifth.messageId! })
      const fourthId = connection.received.filter((p) => p.cmd === "publish")[3].messageId!
      yield* connection.send({ cmd: "puback", messageId: fourthId })
      yield* Fiber.join(publishes)
    }))

  it.live("interrupting a QoS 1 publish after it was sent still accepts its PUBACK and frees the identifier", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ protocolVersion: 5 }, { properties: { receiveMaximum: 1 } })
      const fiber = yield* Effect.forkChild(client.publish("t", "x", { qos: 1 }))
      const publish = yield* connection.expect("publish")
      yield* Fiber.interrupt(fiber)
      yield* connection.send({ cmd: "puback", messageId: publish.messageId! })
      // with a quota of 1, the next publish can only go once the first was acknowledged
      const next = yield* Effect.forkChild(client.publish("t", "y", { qos: 1 }))
      const second = yield* connection.expect("publish")
      yield* connection.send({ cmd: "puback", messageId: second.messageId! })
      yield* Fiber.join(next)
      expect(connection.isClosed).toBe(false)
    }))
  it.live("v5: a publish the broker's CONNACK rules out fails before sending (Maximum QoS, Retain Available, Maximum Packet Size)", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ protocolVersion: 5 }, {
        properties: { maximumQoS: 1, retainAvailable: false, maximumPacketSize: 40 }
      })
      const qos = yield* Effect.flip(client.publish("t", "x", { qos: 2 }))
      const retain = yield* Effect.flip(client.publish("t", "x", { retain: true }))
      const size = yield* Effect.flip(client.publish("t", "x".repeat(64)))
      for (const [error, code] of [[qos, 0x9b], [retain, 0x9a], [size, 0x95]] as const) {
        assert(error instanceof MqttError.PublishError, String(error))
        expect(error.reasonCode).toBe(code)
      }
      yield* connection.expectSilence(100)
      // what fits is sent
      yield* client.publish("t", "x".repeat(20))
      expect((yield* connection.expect("publish")).topic).toBe("t")
    }))

  it.live("a message read before an acknowledgement is queued when the acknowledged publish returns", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({})
      const fiber = yield* Effect.forkChild(client.publish("echo", "x", { qos: 1 }))
      const publish = yield* connection.expect("publish")
      yield* connection.sendMany([publishPacket("echo", "x", 0), { cmd: "puback", messageId: publish.messageId! }])
      yield* Fiber.join(fiber)
      expect(yield* client.queuedMessages).toBe(1)
    }))
})

describe("subscribing", () => {
  it.live("one SUBSCRIBE carries every filter with its own options; SUBACK codes map to granted QoS", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ protocolVersion: 5 })
      const fiber = yield* Effect.forkChild(
        client.subscribe(["a/+", { filter: "b/#", qos: 2, noLocal: true }], { qos: 1 })
      )
      const subscribe = yield* connection.expect("subscribe")
      expect(subscribe.subscriptions.map((s) => [s.topic, s.qos, s.nl ?? false])).toEqual([
        ["a/+", 1, false],
        ["b/#", 2, true]
      ])
      yield* connection.send({ cmd: "suback", messageId: subscribe.messageId!, granted: [1, 1] })
      expect(yield* Fiber.join(fiber)).toEqual([
        { filter: "a/+", qos: 1, reasonCode: 1 },
        { filter: "b/#", qos: 1, reasonCode: 1 }
      ])
    }))

  it.live("a refused filter fails with SubscribeError naming it", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ protocolVersion: 5 })
      const fiber = yield* Effect.forkChild(Effect.flip(client.subscribe(["ok", "denied"])))
      const subscribe = yield* connection.expect("subscribe")
      yield* connection.send({
        cmd: "suback",
        messageId: subscribe.messageId!,
        granted: [0, 0x87],
        properties: { reasonString: "acl" }
      })
      const error = yield* Fiber.join(fiber)
      assert(error instanceof MqttError.SubscribeError)
      expect([error.filter, error.reasonCode, error.reasonString]).toEqual(["denied", 0x87, "acl"])
      expect(error.codes).toEqual([{ filter: "ok", reasonCode: 0 }, { filter: "denied", reasonCode: 0x87 }])
    }))

  it.live("v4: SUBACK 0x80 fails with SubscribeError", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({})
      const fiber = yield* Effect.forkChild(Effect.flip(client.subscribe("x")))
      const subscribe = yield* connection.expect("subscribe")
      yield* connection.send({ cmd: "suback", messageId: subscribe.messageId!, granted: [0x80] })
      const error = yield* Fiber.join(fiber)
      assert(error instanceof MqttError.SubscribeError)
      expect(error.reasonCode).toBe(0x80)
    }))

  it.live("respond's `subscribed` completes when the SUBACK grants the responder's subscription, not before", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ protocolVersion: 5 })
      const subscribed = yield* Deferred.make<void, MqttError.MqttError>()
      yield* Effect.forkChild(client.respond("rpc/add", (request) => Effect.succeed(request.text), { subscribed }))
      const subscribe = yield* connection.expect("subscribe")
      expect(subscribe.subscriptions.map((s) => s.topic)).toEqual(["rpc/add"])
      yield* settle
      // the SUBSCRIBE is on its way but not granted: a request now may find no subscriber
      expect(yield* Deferred.isDone(subscribed)).toBe(false)
      yield* connection.send({ cmd: "suback", messageId: subscribe.messageId!, granted: [1] })
      yield* Deferred.await(subscribed)
      // and the responder answers what comes after it
      yield* connection.send(
        publishPacket("rpc/add", "41", 0, undefined, {
          properties: { responseTopic: "replies/1", correlationData: Buffer.from("c1") }
        })
      )
      const reply = yield* connection.expect("publish")
      expect([reply.topic, reply.payload.toString(), reply.properties?.correlationData?.toString()]).toEqual([
        "replies/1",
        "41",
        "c1"
      ])
    }))

  it.live("respond's `subscribed` fails with the SubscribeError when the SUBACK refuses the subscription", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ protocolVersion: 5 })
      const subscribed = yield* Deferred.make<void, MqttError.MqttError>()
      const responder = yield* Effect.forkChild(
        Effect.flip(client.respond("rpc/denied", (request) => Effect.succeed(request.text), { subscribed }))
      )
      const subscribe = yield* connection.expect("subscribe")
      yield* connection.send({ cmd: "suback", messageId: subscribe.messageId!, granted: [0x87] })
      const error = yield* Effect.flip(Deferred.await(subscribed))
      assert(error instanceof MqttError.SubscribeError)
      expect([error.filter, error.reasonCode]).toEqual(["rpc/denied", 0x87])
      // the responder itself fails with the same error
      expect(yield* Fiber.join(responder)).toBe(error)
    }))

  it.live("respond's `subscribed` is interrupted when the responder is interrupted before the SUBACK", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ protocolVersion: 5 })
      const subscribed = yield* Deferred.make<void, MqttError.MqttError>()
      const responder = yield* Effect.forkChild(
        client.respond("rpc/slow", (request) => Effect.succeed(request.text), { subscribed })
      )
      yield* connection.expect("subscribe")
      // letting go of the filter sends UNSUBSCRIBE and waits for the UNSUBACK: answer it
      const interrupted = yield* Effect.forkChild(Fiber.interrupt(responder))
      const unsubscribe = yield* connection.expect("unsubscribe")
      yield* connection.send({ cmd: "unsuback", messageId: unsubscribe.messageId!, granted: [0] })
      yield* Fiber.join(interrupted)
      const exit = yield* Effect.exit(Deferred.await(subscribed))
      assert(Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause))
    }))

  it.live("unsubscribe waits for UNSUBACK; v5 refusals fail with UnsubscribeError, 0x11 is a success", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ protocolVersion: 5 })
      const ok = yield* Effect.forkChild(client.unsubscribe(["a", "b"]))
      const first = yield* connection.expect("unsubscribe")
      expect(first.unsubscriptions).toEqual(["a", "b"])
      yield* connection.send({ cmd: "unsuback", messageId: first.messageId!, granted: [0, 0x11] })
      yield* Fiber.join(ok)
      const refused = yield* Effect.forkChild(Effect.flip(client.unsubscribe("c")))
      const second = yield* connection.expect("unsubscribe")
      yield* connection.send({ cmd: "unsuback", messageId: second.messageId!, granted: [0x87] })
      const error = yield* Fiber.join(refused)
      assert(error instanceof MqttError.UnsubscribeError)
      expect(error.filter).toBe("c")
    }))
})

describe("receiving", () => {
  for (const protocolVersion of versions) {
    it.live(`v${protocolVersion}: incoming QoS 1 is delivered and acknowledged with its identifier`, () =>
      Effect.gen(function*() {
        const { client, connection } = yield* connect({ protocolVersion })
        yield* connection.send(publishPacket("in/1", "one", 1, 42))
        // acknowledged when a consumer takes it, not when it is queued
        yield* connection.expectSilence(200)
        const [message] = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
        expect([message.topic, message.text, message.qos]).toEqual(["in/1", "one", 1])
        const puback = yield* connection.expect("puback")
        expect(puback.messageId).toBe(42)
      }))

    it.live(`v${protocolVersion}: incoming QoS 2 is delivered exactly once despite a duplicate before PUBREL`, () =>
      Effect.gen(function*() {
        const { client, connection } = yield* connect({ protocolVersion })
        yield* connection.send(publishPacket("in/2", "first", 2, 7))
        // a resend before the consumer took it is not delivered again
        yield* connection.send(publishPacket("in/2", "first", 2, 7, { dup: true }))
        const first = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
        expect((yield* connection.expect("pubrec")).messageId).toBe(7)
        // a resend after PUBREC is answered again, not delivered
        yield* connection.send(publishPacket("in/2", "first", 2, 7, { dup: true }))
        expect((yield* connection.expect("pubrec")).messageId).toBe(7)
        yield* connection.send({ cmd: "pubrel", messageId: 7 })
        expect((yield* connection.expect("pubcomp")).messageId).toBe(7)
        // after PUBREL the identifier may carry a new message
        yield* connection.send(publishPacket("in/2", "second", 2, 7))
        const second = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
        yield* connection.expect("pubrec")
        yield* connection.send({ cmd: "pubrel", messageId: 7 })
        yield* connection.expect("pubcomp")
        expect([...first, ...second].map((m) => m.text)).toEqual(["first", "second"])
        expect(yield* client.queuedMessages).toBe(0)
        yield* connection.send(publishPacket("in/2", "third", 0))
        const [third] = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
        expect(third.text).toBe("third")
      }))
  }

  it.live("packets split at every byte are reassembled", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ protocolVersion: 5 })
      const packets: Array<Packet> = [
        publishPacket("split/a", "x".repeat(200), 0),
        publishPacket("split/b", "hello", 1, 3, {
          properties: { userProperties: { k: "v" }, contentType: "text/plain" }
        }),
        publishPacket("split/c", "", 2, 4)
      ]
      for (const packet of packets) yield* connection.sendSplit(packet, 1)
      const received = yield* client.messages.pipe(Stream.take(3), Stream.runCollect)
      yield* connection.expect("puback")
      yield* connection.expect("pubrec")
      yield* connection.sendSplit({ cmd: "pubrel", messageId: 4 }, 1)
      yield* connection.expect("pubcomp")
      expect(received.map((m) => [m.topic, m.payload.byteLength, m.qos])).toEqual([
        ["split/a", 200, 0],
        ["split/b", 5, 1],
        ["split/c", 0, 2]
      ])
      expect(received[1].properties.userProperties).toEqual([["k", "v"]])
      expect(received[1].properties.contentType).toBe("text/plain")
    }))

  for (const protocolVersion of versions) {
    it.live(`v${protocolVersion}: many packets in one chunk are all delivered, in order`, () =>
      Effect.gen(function*() {
        const { client, connection } = yield* connect({ protocolVersion })
        const packets = Array.from({ length: 2000 }, (_, i) =>
          i % 2 === 0 ? publishPacket("many", String(i), 0) : publishPacket("many", String(i), 1, i))
        yield* connection.sendMany([...packets, { cmd: "pingresp" }])
        const received = yield* client.messages.pipe(Stream.take(2000), Stream.runCollect)
        expect(received.map((m) =>
          m.text
        )).toEqual(packets.map((_, i) => String(i)))
        for (let i = 1; i < 2000; i += 2) expect((yield* connection.expect("puback")).messageId).toBe(i)
      }))
  }

  it.live("a 10 MB payload arrives intact", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({})
      const payload = Buffer.alloc(10 * 1024 * 1024, 7)
      payload[12345] = 1
      yield* connection.send({ cmd: "publish", topic: "big", payload, qos: 0, retain: false, dup: false })
      const [message] = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
      expect(Buffer.compare(Buffer.from(message.payload), payload)).toBe(0)
    }))
})

describe("MQTT 5 on the receiving side", () => {
  it.live("user properties keep their order and repeats; topic aliases are resolved", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ protocolVersion: 5 })
      // mqtt-packet's object form would lose the order across names: write the properties by hand
      // PUBLISH "t/a", alias 2, user properties b=1, a=2, b=3
      const props = [
        0x23,
        0x00,
        0x02,
        0x26,
        0x00,
        0x01,
        0x62,
        0x00,
        0x01,
        0x31,
        0x26,
        0x00,
        0x01,
        0x61,
        0x00,
        0x01,
        0x32,
        0x26,
        0x00,
        0x01,
        0x62,
        0x00,
        0x01,
        0x33
      ]
      const body = [0x00, 0x03, 0x74, 0x2f, 0x61, props.length, ...props, 0x78]
      yield* connection.sendRaw(Uint8Array.of(0x30, body.length, ...body))
      // the same alias with an empty topic
      yield* connection.send(publishPacket("", "y", 0, undefined, { properties: { topicAlias: 2 } }))
      const received = yield* client.messages.pipe(Stream.take(2), Stream.runCollect)
      expect(received[0].properties.userProperties).toEqual([["b", "1"], ["a", "2"], ["b", "3"]])
      expect(received.map((m) => [m.topic, m.text])).toEqual([["t/a", "x"], ["t/a", "y"]])
    }))

  it.live("CONNECT announces Maximum Packet Size, Receive Maximum and Topic Alias Maximum", () =>
    Effect.gen(function*() {
      const { connect: packet } = yield* connect({
        protocolVersion: 5,
        maximumPacketSize: 4096,
        receiveMaximum: 2,
        topicAliasMaximum: 4
      })
      expect(packet.properties?.maximumPacketSize).toBe(4096)
      expect(packet.properties?.receiveMaximum).toBe(2)
      expect(packet.properties?.topicAliasMaximum).toBe(4)
    }))

  it.live("a broker exceeding the client's Receive Maximum gets DISCONNECT 0x93 with strictReceiveMaximum", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({
        protocolVersion: 5,
        receiveMaximum: 2,
        strictReceiveMaximum: true
      })
      // QoS 2 messages count until their PUBREL, which this broker never sends
      yield* connection.send(publishPacket("t", "1", 2, 1))
      yield* connection.send(publishPacket("t", "2", 2, 2))
      yield* client.messages.pipe(Stream.take(2), Stream.runDrain)
      yield* connection.expect("pubrec")
      yield* connection.expect("pubrec")
      yield* connection.send(publishPacket("t", "3", 1, 3))
      const disconnect = yield* connection.expect("disconnect")
      expect(disconnect.reasonCode).toBe(0x93)
      const error = yield* Effect.flip(client.awaitClose)
      assert(error instanceof MqttError.ProtocolError)
    }))

  it.live("by default a broker exceeding the client's Receive Maximum is reported, not disconnected: nothing is lost", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ protocolVersion: 5, receiveMaximum: 2, logLevel: "None" })
      for (const id of [1, 2, 3, 4]) yield* connection.send(publishPacket("t", String(id), 1, id))
      const received = yield* client.messages.pipe(Stream.take(4), Stream.runCollect)
      expect(received.map((m) => m.text)).toEqual(["1", "2", "3", "4"])
      for (const id of [1, 2, 3, 4]) expect((yield* connection.expect("puback")).messageId).toBe(id)
      expect(connection.isClosed).toBe(false)
    }))

  it.live("Receive Maximum counts a QoS 2 message until its PUBREL", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ protocolVersion: 5, receiveMaximum: 1 })
      const received: Array<string> = []
      for (const id of [1, 2, 3]) {
        yield* connection.send(publishPacket("t", String(id), 2, id))
        const [message] = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
        received.push(message.text)
        yield* connection.expect("pubrec")
        yield* connection.send({ cmd: "pubrel", messageId: id })
        yield* connection.expect("pubcomp")
      }
      expect(received).toEqual(["1", "2", "3"])
      expect(connection.isClosed).toBe(false)
    }))

  it.live("v5: publish user properties go out in the order given, repeats kept", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ protocolVersion: 5 })
      yield* client.publish("t", "x", { properties: { userProperties: [["b", "1"], ["a", "2"], ["b", "3"]] } })
      yield* connection.expect("publish")
      const raw = Buffer.from(connection.receivedRaw[connection.receivedRaw.length - 1])
      const order = [...raw.toString("latin1").matchAll(/\x26\x00\x01(.)\x00\x01(.)/g)].map((m) => m[1] + m[2])
      expect(order).toEqual(["b1", "a2", "b3"])
    }))

  it.live("v5: outgoing topics get aliases within the broker's maximum, the least recently used replaced", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ protocolVersion: 5 }, { properties: { topicAliasMaximum: 2 } })
      for (const topic of ["long/topic/a", "long/topic/a", "long/topic/b", "long/topic/c", "long/topic/a"]) {
        yield* client.publish(topic, "x")
      }
      const sent = []
      for (let i = 0; i < 5; i++) {
        const p = yield* connection.expect("publish")
        sent.push([p.topic, p.properties?.topicAlias])
      }
      expect(sent).toEqual([
        ["long/topic/a", 1],
        ["", 1],
        ["long/topic/b", 2],
        ["long/topic/c", 1],
        ["long/topic/a", 2]
      ])
    }))

  it.live("v5: no topic alias survives a reconnect: the resent PUBLISH carries its full topic", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5 })
      const fiber = yield* Effect.forkChild(MqttClient.make({
        url: broker.url,
        protocolVersion: 5,
        clientId: "alias-client",
        sessionExpiryInterval: 60,
        reconnect: Schedule.spaced("10 millis")
      }))
      const first = yield* broker.acceptAndConnack({ properties: { topicAliasMaximum: 5 } })
      const client = yield* Fiber.join(fiber)
      yield* client.publish("long/topic/a", "0")
      expect((yield* first.connection.expect("publish")).properties?.topicAlias).toBe(1)
      const pending = yield* Effect.forkChild(client.publish("long/topic/a", "1", { qos: 1 }))
      const aliased = yield* first.connection.expect("publish")
      expect([aliased.topic, aliased.properties?.topicAlias]).toEqual(["", 1])
      yield* first.connection.destroy
      const second = yield* broker.acceptAndConnack({ sessionPresent: true, properties: { topicAliasMaximum: 5 } })
      const resent = yield* second.connection.expect("publish")
      expect([resent.topic, resent.dup, resent.messageId]).toEqual(["long/topic/a", true, aliased.messageId])
      yield* second.connection.send({ cmd: "puback", messageId: resent.messageId! })
      yield* Fiber.join(pending)
    }))

  it.live("v5: a payload marked UTF-8 that is not is refused before sending", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ protocolVersion: 5 })
      const error = yield* Effect.flip(
        client.publish("t", Uint8Array.of(0xff, 0xfe), { properties: { payloadFormatIndicator: true } })
      )
      assert(error instanceof MqttError.InvalidOptionError)
      yield* connection.expectSilence(50)
    }))
})

describe("MQTT 5 enhanced authentication", () => {
  const auth: MqttClient.Authentication = {
    method: "TEST-SCRAM",
    data: Buffer.from("client-first"),
    onChallenge: ({ data }) => Effect.succeed(Buffer.from(`answer:${Buffer.from(data ?? []).toString()}`))
  }

  it.live("CONNECT carries the method; each AUTH challenge is answered by the handler before CONNACK", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5 })
      const fiber = yield* Effect.forkChild(
        MqttClient.make({ url: broker.url, protocolVersion: 5, reconnect: false, auth })
      )
      const connection = yield* broker.accept
      const connect = yield* connection.expect("connect")
      expect(connect.properties?.authenticationMethod).toBe("TEST-SCRAM")
      expect(Buffer.from(connect.properties!.authenticationData!).toString()).toBe("client-first")
      for (const round of ["one", "two"]) {
        yield* connection.send({
          cmd: "auth",
          reasonCode: 0x18,
          properties: { authenticationMethod: "TEST-SCRAM", authenticationData: Buffer.from(round) }
        })
        const reply = yield* connection.expect("auth")
        expect(reply.reasonCode).toBe(0x18)
        expect(Buffer.from(reply.properties!.authenticationData!).toString()).toBe(`answer:${round}`)
      }
      yield* connection.connack({ properties: { authenticationMethod: "TEST-SCRAM" } })
      yield* Fiber.join(fiber)
    }))

  it.live("reauthenticate sends AUTH 0x19 and completes on the broker's AUTH 0x00", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5 })
      const fiber = yield* Effect.forkChild(
        MqttClient.make({ url: broker.url, protocolVersion: 5, reconnect: false, auth })
      )
      const { connection } = yield* broker.acceptAndConnack({ properties: { authenticationMethod: "TEST-SCRAM" } })
      const client = yield* Fiber.join(fiber)
      const reauth = yield* Effect.forkChild(client.reauthenticate(Buffer.from("again")))
      const start = yield* connection.expect("auth")
      expect(start.reasonCode).toBe(0x19)
      yield* connection.send({
        cmd: "auth",
        reasonCode: 0x18,
        properties: { authenticationMethod: "TEST-SCRAM", authenticationData: Buffer.from("prove it") }
      })
      expect(Buffer.from((yield* connection.expect("auth")).properties!.authenticationData!).toString()).toBe(
        "answer:prove it"
      )
      yield* connection.send({ cmd: "auth", reasonCode: 0x00, properties: { authenticationMethod: "TEST-SCRAM" } })
      yield* Fiber.join(reauth)
    }))

  it.live("a reconnection's CONNECT carries the data of the last re-authentication the broker accepted, not the first auth.data (a renewed token)", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5, autoPingresp: true })
      const fiber = yield* Effect.forkChild(
        MqttClient.make({ url: broker.url, protocolVersion: 5, reconnect: Schedule.spaced("10 millis"), auth })
      )
      const first = yield* broker.acceptAndConnack({ properties: { authenticationMethod: "TEST-SCRAM" } })
      expect(Buffer.from(first.connect.properties!.authenticationData!).toString()).toBe("client-first")
      const client = yield* Fiber.join(fiber)
      // a re-authentication the broker accepts, after its caller gave up waiting: the new data counts
      const gaveUp = yield* Effect.exit(client.reauthenticate(Buffer.from("token-2")).pipe(Effect.timeout("1 millis")))
      expect(gaveUp._tag).toBe("Failure")
      expect((yield* first.connection.expect("auth")).reasonCode).toBe(0x19)
      yield* first.connection.send({
        cmd: "auth",
        reasonCode: 0x00,
        properties: { authenticationMethod: "TEST-SCRAM" }
      })
      // read in order: once this message is here, so was the AUTH 0x00
      yield* first.connection.send(publishPacket("after/reauth", "m", 0))
      yield* client.messages.pipe(Stream.take(1), Stream.runDrain)
      // a call without data keeps the last data
      const reauth = yield* Effect.forkChild(client.reauthenticate())
      expect((yield* first.connection.expect("auth")).reasonCode).toBe(0x19)
      yield* first.connection.send({
        cmd: "auth",
        reasonCode: 0x00,
        properties: { authenticationMethod: "TEST-SCRAM" }
      })
      yield* Fiber.join(reauth)
      yield* first.connection.destroy
      const second = yield* broker.acceptAndConnack({ properties: { authenticationMethod: "TEST-SCRAM" } })
      expect(Buffer.from(second.connect.properties!.authenticationData!).toString()).toBe("token-2")
      yield* client.status.pipe(
        Effect.repeat({ until: (status) => status._tag === "Connected", schedule: Schedule.spaced("10 millis") })
      )
      // a refused re-authentication changes nothing
      const refused = yield* Effect.forkChild(Effect.exit(client.reauthenticate(Buffer.from("token-3"))))
      expect((yield* second.connection.expect("auth")).reasonCode).toBe(0x19)
      yield* second.connection.send({ cmd: "disconnect", reasonCode: 0x87 })
      expect((yield* Fiber.join(refused))._tag).toBe("Failure")
      const third = yield* broker.acceptAndConnack({ properties: { authenticationMethod: "TEST-SCRAM" } })
      expect(Buffer.from(third.connect.properties!.authenticationData!).toString()).toBe("token-2")
    }))

  it.live("an AUTH 0x18 (continue) while no re-authentication is under way is a protocol error: DISCONNECT 0x82, onChallenge not asked [MQTT-4.12.1]", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5, autoPingresp: true })
      let asked = 0
      const fiber = yield* Effect.forkChild(MqttClient.make({
        url: broker.url,
        protocolVersion: 5,
        reconnect: false,
        auth: { ...auth, onChallenge: () => Effect.sync(() => void asked++).pipe(Effect.as(undefined)) }
      }))
      const { connection } = yield* broker.acceptAndConnack({ properties: { authenticationMethod: "TEST-SCRAM" } })
      const client = yield* Fiber.join(fiber)
      yield* connection.send({ cmd: "auth", reasonCode: 0x18, properties: { authenticationMethod: "TEST-SCRAM" } })
      expect((yield* connection.expect("disconnect")).reasonCode).toBe(0x82)
      yield* connection.closed
      expect(asked).toBe(0)
      const closed = yield* client.awaitClose.pipe(Effect.flip)
      expect(closed.message).toMatch(/AUTH/)
    }))

  it.live("an AUTH larger than the broker's Maximum Packet Size is refused before it is written; the connection stays", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5 })
      const fiber = yield* Effect.forkChild(
        MqttClient.make({ url: broker.url, protocolVersion: 5, reconnect: false, auth })
      )
      const { connection } = yield* broker.acceptAndConnack({
        properties: { authenticationMethod: "TEST-SCRAM", maximumPacketSize: 100 }
      })
      const client = yield* Fiber.join(fiber)
      const error = yield* Effect.flip(client.reauthenticate(new Uint8Array(200)))
      assert(error instanceof MqttError.InvalidOptionError, String(error))
      expect(error.reason).toMatch(/Maximum Packet Size \(100\)/)
      yield* connection.expectSilence(100)
      // a small one goes out
      const reauth = yield* Effect.forkChild(client.reauthenticate(Buffer.from("again")))
      expect((yield* connection.expect("auth")).reasonCode).toBe(0x19)
      yield* connection.send({ cmd: "auth", reasonCode: 0x00, properties: { authenticationMethod: "TEST-SCRAM" } })
      yield* Fiber.join(reauth)
      expect((yield* client.status)._tag).toBe("Connected")
    }))

  it.live("reauthenticate: a second call joins the one under way; one given up by Effect.timeout leaves the connection up and the broker's late AUTH 0x00 taken; a refusal is the broker's DISCONNECT", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5 })
      const fiber = yield* Effect.forkChild(
        MqttClient.make({ url: broker.url, protocolVersion: 5, reconnect: false, auth })
      )
      const { connection } = yield* broker.acceptAndConnack({ properties: { authenticationMethod: "TEST-SCRAM" } })
      const client = yield* Fiber.join(fiber)
      const accept = connection.send({
        cmd: "auth",
        reasonCode: 0x00,
        properties: { authenticationMethod: "TEST-SCRAM" }
      })
      // a second call waits for the one under way: without data, it is done at the same acceptance; with data, it
      // then presents its own
      const first = yield* Effect.forkChild(client.reauthenticate(Buffer.from("one")))
      expect((yield* connection.expect("auth")).reasonCode).toBe(0x19)
      const joined = yield* Effect.forkChild(client.reauthenticate())
      const second = yield* Effect.forkChild(client.reauthenticate(Buffer.from("two")))
      yield* connection.expectSilence(100)
      yield* accept
      yield* Fiber.join(first)
      yield* Fiber.join(joined)
      const own = yield* connection.expect("auth")
      expect([own.reasonCode, Buffer.from(own.properties!.authenticationData!).toString()]).toEqual([0x19, "two"])
      yield* accept
      yield* Fiber.join(second)
      // given up before the broker answers: the acceptance that comes later is no violation
      const gaveUp = yield* Effect.exit(client.reauthenticate().pipe(Effect.timeout("50 millis")))
      expect(Exit.isFailure(gaveUp)).toBe(true)
      expect((yield* connection.expect("auth")).reasonCode).toBe(0x19)
      yield* accept
      // the next one is a new exchange, and the connection is still up
      const next = yield* Effect.forkChild(client.reauthenticate())
      expect((yield* connection.expect("auth")).reasonCode).toBe(0x19)
      expect((yield* client.status)._tag).toBe("Connected")
      // the broker refuses it: DISCONNECT 0x87 (Not authorized) ends the connection, and the call with it
      yield* connection.send({ cmd: "disconnect", reasonCode: 0x87 })
      const refused = yield* Effect.flip(Fiber.join(next))
      assert(refused instanceof MqttError.ConnectionLostError, String(refused))
      expect(refused.reasonCode).toBe(0x87)
    }))

  it.live("an AUTH for another method is a protocol error", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5 })
      const fiber = yield* Effect.forkChild(
        Effect.flip(MqttClient.make({ url: broker.url, protocolVersion: 5, reconnect: false, auth }))
      )
      const connection = yield* broker.accept
      yield* connection.expect("connect")
      yield* connection.send({ cmd: "auth", reasonCode: 0x18, properties: { authenticationMethod: "OTHER" } })
      const error = yield* Fiber.join(fiber)
      assert(error instanceof MqttError.ProtocolError)
      expect((yield* connection.expect("disconnect")).reasonCode).toBe(0x82)
    }))

  it.live("a successful CONNACK must repeat the CONNECT's method [MQTT-4.12.0-5] and carry none when none was sent [MQTT-4.12.0-6]: else a ProtocolError and DISCONNECT 0x82", () =>
    Effect.gen(function*() {
      const cases: ReadonlyArray<
        readonly [string, MqttClient.Authentication | undefined, string | undefined, RegExp, string]
      > = [
        ["no method", auth, undefined, /without the CONNECT's Authentication Method "TEST-SCRAM"/, "MQTT-4.12.0-5"],
        [
          "another method",
          auth,
          "OTHER",
          /Authentication Method "OTHER", not the CONNECT's "TEST-SCRAM"/,
          "MQTT-4.12.0-5"
        ],
        ["a method never asked for", undefined, "TEST-SCRAM", /but the CONNECT asked for no/, "MQTT-4.12.0-6"]
      ]
      for (const [what, withAuth, method, reason, rule] of cases) {
        const broker = yield* FakeBroker.make({ protocolVersion: 5 })
        const fiber = yield* Effect.forkChild(Effect.flip(
          MqttClient.make({ url: broker.url, protocolVersion: 5, reconnect: false, ...(withAuth ? { auth } : {}) })
        ))
        const connection = yield* broker.accept
        yield* connection.expect("connect")
        yield* connection.connack(method === undefined ? {} : { properties: { authenticationMethod: method } })
        const error = yield* Fiber.join(fiber)
        assert(error instanceof MqttError.ProtocolError, `${what}: ${String(error)}`)
        expect(error.message, what).toMatch(reason)
        expect([error.packet, error.rule], what).toEqual(["CONNACK", rule])
        expect((yield* connection.expect("disconnect")).reasonCode, what).toBe(0x82)
      }
    }))

  it.live("an AUTH without a method is a protocol error that names the method expected", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5 })
      const fiber = yield* Effect.forkChild(
        Effect.flip(MqttClient.make({ url: broker.url, protocolVersion: 5, reconnect: false, auth }))
      )
      const connection = yield* broker.accept
      yield* connection.expect("connect")
      yield* connection.sendRaw(Uint8Array.of(0xf0, 0x02, 0x18, 0x00))
      const error = yield* Fiber.join(fiber)
      assert(error instanceof MqttError.ProtocolError)
      expect(error.message).toMatch(/an AUTH without the CONNECT's Authentication Method "TEST-SCRAM"/)
      expect((yield* connection.expect("disconnect")).reasonCode).toBe(0x82)
    }))

  it.live("an onChallenge that dies or throws ends the connection with a typed error that names it, and closes the socket; a reconnecting client tries again", () =>
    Effect.gen(function*() {
      const failing: ReadonlyArray<readonly [string, MqttClient.Authentication["onChallenge"]]> = [
        ["dies", () => Effect.die(new Error("no key"))],
        ["throws", () => {
          throw new Error("no key")
        }]
      ]
      for (const [how, onChallenge] of failing) {
        const broker = yield* FakeBroker.make({ protocolVersion: 5 })
        const fiber = yield* Effect.forkChild(Effect.exit(
          MqttClient.make({ url: broker.url, protocolVersion: 5, reconnect: false, auth: { ...auth, onChallenge } })
        ))
        const connection = yield* broker.accept
        yield* connection.expect("connect")
        yield* connection.send({ cmd: "auth", reasonCode: 0x18, properties: { authenticationMethod: "TEST-SCRAM" } })
        const exit = yield* Fiber.join(fiber)
        assert(Exit.isFailure(exit) && !Cause.hasDies(exit.cause), `${how}: ${String(exit)}`)
        const error = Cause.squash(exit.cause)
        assert(error instanceof MqttError.ConnectionLostError, `${how}: ${String(error)}`)
        expect(error.message, how).toMatch(/auth\.onChallenge died: .*no key/)
        // the socket of the failed attempt is closed, not left open
        yield* connection.closed
      }
      // a reconnection whose onChallenge throws: the client tries again, and connects
      const broker = yield* FakeBroker.make({ protocolVersion: 5, autoPingresp: true })
      let challenges = 0
      const fiber = yield* Effect.forkChild(MqttClient.make({
        url: broker.url,
        protocolVersion: 5,
        reconnect: Schedule.spaced("20 millis"),
        auth: {
          ...auth,
          onChallenge: () => {
            if (challenges++ === 0) throw new Error("no key")
            return Effect.succeed(undefined)
          }
        }
      }))
      const { connection } = yield* broker.acceptAndConnack({ properties: { authenticationMethod: "TEST-SCRAM" } })
      const client = yield* Fiber.join(fiber)
      yield* connection.destroy
      const second = yield* broker.accept
      yield* second.expect("connect")
      yield* second.send({ cmd: "auth", reasonCode: 0x18, properties: { authenticationMethod: "TEST-SCRAM" } })
      yield* second.closed
      const third = yield* broker.accept
      yield* third.expect("connect")
      yield* third.send({ cmd: "auth", reasonCode: 0x18, properties: { authenticationMethod: "TEST-SCRAM" } })
      yield* third.expect("auth")
      yield* third.connack({ properties: { authenticationMethod: "TEST-SCRAM" } })
      yield* client.status.pipe(
        Effect.repeat({ until: (status) => status._tag === "Connected", schedule: Schedule.spaced("10 millis") })
      )
    }))

  it.live("during a re-authentication the client reads on while onChallenge computes its answer: messages are delivered and acknowledged meanwhile [MQTT-4.12.1]", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5, autoPingresp: true })
      const answer = yield* Deferred.make<void>()
      const challenged = yield* Deferred.make<void>()
      let reauthenticating = false
      const fiber = yield* Effect.forkChild(MqttClient.make({
        url: broker.url,
        protocolVersion: 5,
        reconnect: false,
        auth: {
          ...auth,
          onChallenge: () =>
            reauthenticating
              ? Deferred.succeed(challenged, undefined).pipe(
                Effect.andThen(Deferred.await(answer)),
                Effect.as(Buffer.from("slow"))
              )
              : Effect.succeed(undefined)
        }
      }))
      const { connection } = yield* broker.acceptAndConnack({ properties: { authenticationMethod: "TEST-SCRAM" } })
      const client = yield* Fiber.join(fiber)
      reauthenticating = true
      const reauth = yield* Effect.forkChild(client.reauthenticate())
      expect((yield* connection.expect("auth")).reasonCode).toBe(0x19)
      yield* connection.send({ cmd: "auth", reasonCode: 0x18, properties: { authenticationMethod: "TEST-SCRAM" } })
      // onChallenge has not answered yet: a message sent now is still delivered and acknowledged
      yield* Deferred.await(challenged)
      yield* connection.send(publishPacket("during/reauth", "m", 1, 7))
      // a generous wait: without reading, the message would never come
      const [message] = yield* client.messages.pipe(Stream.take(1), Stream.runCollect, Effect.timeout("10 seconds"))
      expect(message.topic).toBe("during/reauth")
      expect((yield* connection.expect("puback")).messageId).toBe(7)
      yield* Deferred.succeed(answer, undefined)
      const reply = yield* connection.expect("auth")
      expect([reply.reasonCode, Buffer.from(reply.properties!.authenticationData!).toString()]).toEqual([0x18, "slow"])
      yield* connection.send({ cmd: "auth", reasonCode: 0x00, properties: { authenticationMethod: "TEST-SCRAM" } })
      yield* Fiber.join(reauth)
      expect((yield* client.status)._tag).toBe("Connected")
    }))

  it.live("auth on MQTT 3.1.1 is an InvalidOptionError", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(MqttClient.make({ url: "mqtt://127.0.0.1:1", auth }))
      assert(error instanceof MqttError.InvalidOptionError)
      expect(error.option).toBe("auth")
    }))
})

describe("a broker that breaks the protocol", () => {
  const violations: Array<[string, 4 | 5, (c: FakeBroker.FakeConnection) => Effect.Effect<void>, number]> = [
    ["garbage bytes", 4, (c) => c.sendRaw(Uint8Array.of(0x00, 0x00)), 0x81],
    // a well-formed AUTH (Remaining Length 0: success) that the client never asked for
    ["an AUTH without enhanced authentication", 5, (c) => c.sendRaw(Uint8Array.of(0xf0, 0x00)), 0x82],
    ["a PUBLISH with QoS 3", 5, (c) => c.sendRaw(Uint8Array.of(0x36, 0x05, 0x00, 0x01, 0x61, 0x00, 0x01)), 0x81],
    ["a CONNECT from the server", 5, (c) => c.send({ cmd: "connect", clientId: "x", protocolVersion: 5 }), 0x82],
    [
      "a SUBSCRIBE from the server",
      5,
      (c) => c.send({ cmd: "subscribe", messageId: 1, subscriptions: [{ topic: "a", qos: 0 }] }),
      0x82
    ],
    ["a PINGREQ from the server", 4, (c) => c.send({ cmd: "pingreq" }), 0x82],
    ["a second CONNACK", 5, (c) => c.connack(), 0x82],
    ["a PUBLISH with a wildcard in its topic", 5, (c) => c.send(publishPacket("a/+", "x", 0)), 0x82],
    [
      "a topic alias over the client's Topic Alias Maximum",
      5,
      (c) => c.send(publishPacket("a", "x", 0, undefined, { properties: { topicAlias: 17 } })),
      0x94
    ],
    [
      "topic alias 0",
      5,
      (c) => c.sendRaw(Uint8Array.of(0x30, 0x08, 0x00, 0x01, 0x61, 0x03, 0x23, 0x00, 0x00, 0x78)),
      0x94
    ],
    [
      "an unknown topic alias with an empty topic",
      5,
      (c) => c.send(publishPacket("", "x", 0, undefined, { properties: { topicAlias: 3 } })),
      0x82
    ],
    [
      "a PUBLISH with a property it cannot have",
      5,
      (c) => c.sendRaw(Uint8Array.of(0x30, 0x08, 0x00, 0x01, 0x61, 0x03, 0x11, 0x00, 0x00, 0x78)),
      0x81
    ],
    [
      "a PUBLISH with a repeated Content Type",
      5,
      (c) =>
        c.sendRaw(Uint8Array.of(0x30, 0x0c, 0x00, 0x01, 0x61, 0x07, 0x03, 0x00, 0x01, 0x61, 0x03, 0x00, 0x00, 0x78)),
      0x82
    ],
    ["a topic that is not UTF-8", 4, (c) => c.sendRaw(Uint8Array.of(0x30, 0x04, 0x00, 0x01, 0xff, 0x78)), 0x81],
    ["a Remaining Length of five bytes", 5, (c) => c.sendRaw(Uint8Array.of(0x30, 0xff, 0xff, 0xff, 0xff, 0x01)), 0x81],
    [
      "a packet over the client's Maximum Packet Size, refused at its header",
      5,
      (c) => c.sendRaw(Uint8Array.of(0x30, 0xff, 0xff, 0xff, 0x7f, 0x00, 0x01)),
      0x95
    ]
  ]
  for (const [name, protocolVersion, inject, reasonCode] of violations) {
    it.live(`v${protocolVersion}: ${name} is a ProtocolError that closes the connection cleanly`, () =>
      Effect.gen(function*() {
        const { client, connection } = yield* connect({ protocolVersion })
        const messages = yield* Effect.forkChild(Effect.flip(Stream.runDrain(client.messages)))
        const pending = yield* Effect.forkChild(Effect.flip(client.publish("p", "x", { qos: 1 })))
        yield* connection.expect("publish")
        yield* inject(connection)
        if (protocolVersion === 5) {
          const disconnect = yield* connection.expect("disconnect")
          expect(disconnect.reasonCode).toBe(reasonCode)
        }
        yield* connection.closed
        const error = yield* Effect.flip(client.awaitClose)
        assert(error instanceof MqttError.ProtocolError, String(error))
        expect(MqttError.isConnectionError(error)).toBe(true)
        expect((yield* Fiber.join(messages))._tag).toBe("ProtocolError")
        expect((yield* Fiber.join(pending))._tag).toBe("ProtocolError")
        expect((yield* Effect.flip(client.subscribe("x")))._tag).toBe("ProtocolError")
      }))
  }

  // stray acknowledgements are a mismatch of session state, not a broken connection (see src/internal/strayAck.ts)
  const strays: ReadonlyArray<readonly [string, 4 | 5, Packet, "pubrel" | "pubcomp" | undefined, number | undefined]> =
    [
      ["PUBACK", 5, { cmd: "puback", messageId: 99 }, undefined, undefined],
      ["PUBACK", 4, { cmd: "puback", messageId: 99 }, undefined, undefined],
      ["PUBCOMP", 4, { cmd: "pubcomp", messageId: 99 }, undefined, undefined],
      ["PUBCOMP", 5, { cmd: "pubcomp", messageId: 99 }, undefined, undefined],
      ["SUBACK", 5, { cmd: "suback", messageId: 5, granted: [0] }, undefined, undefined],
      ["UNSUBACK", 4, { cmd: "unsuback", messageId: 5 } as Packet, undefined, undefined],
      ["PUBREC", 5, { cmd: "pubrec", messageId: 99 }, "pubrel", 0x92],
      ["PUBREC", 4, { cmd: "pubrec", messageId: 99 }, "pubrel", undefined],
      ["PUBREL", 5, { cmd: "pubrel", messageId: 99 }, "pubcomp", 0x92],
      ["PUBREL", 4, { cmd: "pubrel", messageId: 99 }, "pubcomp", undefined]
    ]
  for (const [name, protocolVersion, stray, answer, reasonCode] of strays) {
    it.live(
      `v${protocolVersion}: a ${name} for an identifier not in flight is ${
        answer === undefined ? "ignored" : `answered with ${answer.toUpperCase()}`
      }; the connection and the publish in flight go on`,
      () =>
        Effect.gen(function*() {
          const { client, connection } = yield* connect({ protocolVersion })
          const pending = yield* Effect.forkChild(client.publish("p", "x", { qos: 1 }))
          const publish = yield* connection.expect("publish")
          yield* connection.send(stray)
          if (answer !== undefined) {
            const reply = yield* connection.expect(answer)
            expect([reply.messageId, protocolVersion === 5 ? reply.reasonCode : undefined]).toEqual([99, reasonCode])
          }
          yield* connection.send({ cmd: "puback", messageId: publish.messageId! })
          yield* Fiber.join(pending)
          yield* connection.expectSilence(100)
          expect(connection.isClosed).toBe(false)
          expect((yield* client.status)._tag).toBe("Connected")
        })
    )
  }

  for (const protocolVersion of versions) {
    it.live(`v${protocolVersion}: a PUBACK for a QoS 2 publish awaiting PUBREC (a broker that downgrades QoS 2 to 1) fails that publish with PublishError 0x82; the connection stays and other publishes go on`, () =>
      Effect.gen(function*() {
        const { client, connection } = yield* connect({ protocolVersion })
        const q2 = yield* Effect.forkChild(Effect.flip(client.publish("p", "two", { qos: 2 })))
        const id = ((yield* connection.receive) as { messageId: number }).messageId
        yield* connection.send({ cmd: "puback", messageId: id })
        const failed = yield* Fiber.join(q2)
        assert(failed instanceof MqttError.PublishError, String(failed))
        expect([failed.reasonCode, failed.reasonString]).toEqual([0x82, expect.stringMatching(/downgrades QoS 2 to 1/)])
        const q1 = yield* Effect.forkChild(client.publish("p", "one", { qos: 1 }))
        const sent = (yield* connection.expect("publish")) as { messageId: number; payload: Buffer }
        expect(String(sent.payload)).toBe("one")
        yield* connection.send({ cmd: "puback", messageId: sent.messageId })
        yield* Fiber.join(q1)
        expect((yield* client.status)._tag).toBe("Connected")
      }))
  }

  // an acknowledgement the flow holding its identifier cannot take: the broker and the client disagree about that
  // flow (see Outgoing.mismatch and Session.notInFlight)
  const mismatches: ReadonlyArray<
    readonly [string, 1 | 2 | "subscribe", ReadonlyArray<"pubrec">, (id: number) => Packet, "pubrel" | undefined]
  > = [
    [
      "a PUBACK for a QoS 2 publish after its PUBREL",
      2,
      ["pubrec"],
      (id) => ({ cmd: "puback", messageId: id }),
      undefined
    ],
    ["a PUBCOMP before the PUBREC", 2, [], (id) => ({ cmd: "pubcomp", messageId: id }), undefined],
    ["a PUBREC for a QoS 1 publish", 1, [], (id) => ({ cmd: "pubrec", messageId: id }), "pubrel"],
    ["a PUBCOMP for a QoS 1 publish", 1, [], (id) => ({ cmd: "pubcomp", messageId: id }), undefined],
    ["a PUBACK for a SUBSCRIBE", "subscribe", [], (id) => ({ cmd: "puback", messageId: id }), undefined],
    [
      "an UNSUBACK for a SUBSCRIBE",
      "subscribe",
      [],
      (id) => ({ cmd: "unsuback", messageId: id, granted: [0] } as Packet),
      undefined
    ]
  ]
  for (const protocolVersion of versions) {
    for (const [name, flow, before, wrong, answer] of mismatches) {
      it.live(
        `v${protocolVersion}: ${name} is a ProtocolError that closes the connection${
          typeof flow === "number" ? "; the publish fails with PublishError 0x82, not sent again" : ""
        }${answer === undefined ? "" : "; the PUBREC is answered with PUBREL first"}`,
        () =>
          Effect.gen(function*() {
            const { client, connection } = yield* connect({ protocolVersion })
            const op = yield* Effect.forkChild(Effect.flip(
              flow === "subscribe" ? client.subscribe("a/#") : client.publish("p", "x", { qos: flow })
            ))
            const sent = yield* connection.receive
            const id = (sent as { messageId: number }).messageId
            for (const cmd of before) {
              yield* connection.send({ cmd, messageId: id })
              yield* connection.expect("pubrel")
            }
            yield* connection.send(wrong(id))
            if (answer !== undefined) expect((yield* connection.expect(answer)).messageId).toBe(id)
            if (protocolVersion === 5) expect((yield* connection.expect("disconnect")).reasonCode).toBe(0x82)
            yield* connection.closed
            const error = yield* Effect.flip(client.awaitClose)
            assert(error instanceof MqttError.ProtocolError, String(error))
            expect(error.packet).toBe(name.split(" ")[1])
            const failed = yield* Fiber.join(op)
            if (flow === "subscribe") expect(failed).toBe(error)
            else {
              assert(failed instanceof MqttError.PublishError, String(failed))
              expect(failed.reasonCode).toBe(0x82)
            }
          })
      )
    }
  }

  it.live("v5: a server DISCONNECT is a ConnectionLostError with its reason code", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ protocolVersion: 5 })
      yield* connection.send({ cmd: "disconnect", reasonCode: 0x8b, properties: { reasonString: "bye" } })
      const error = yield* Effect.flip(client.awaitClose)
      assert(error instanceof MqttError.ConnectionLostError)
      expect([error.reasonCode, error.reasonString]).toEqual([0x8b, "bye"])
      yield* connection.closed
    }))

  it.live("the broker closing the socket fails waiting operations and the messages stream", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({})
      const messages = yield* Effect.forkChild(Effect.flip(Stream.runDrain(client.messages)))
      const pending = yield* Effect.forkChild(Effect.flip(client.publish("p", "x", { qos: 2 })))
      yield* connection.expect("publish")
      yield* connection.destroy
      const error = yield* Fiber.join(pending)
      assert(error instanceof MqttError.ConnectionLostError)
      expect((yield* Fiber.join(messages))._tag).toBe("ConnectionLostError")
      const status = yield* Effect.exit(client.awaitClose)
      expect(Exit.isFailure(status)).toBe(true)
    }))

  it.live("a protocol violation harms no other fiber and no other client", () =>
    Effect.gen(function*() {
      const a = yield* connect({})
      const b = yield* connect({})
      yield* a.connection.sendRaw(Uint8Array.of(0x00, 0x00))
      yield* Effect.flip(a.client.awaitClose)
      const fiber = yield* Effect.forkChild(b.client.publish("still", "alive", { qos: 1 }))
      const publish = yield* b.connection.expect("publish")
      yield* b.connection.send({ cmd: "puback", messageId: publish.messageId! })
      yield* Fiber.join(fiber)
      expect(Option.isNone(yield* Effect.sync(() => Option.none()))).toBe(true)
    }))
})

describe("any input from the broker", () => {
  // random bytes after the CONNACK: the client either goes on or closes with a typed error, never a defect
  for (const protocolVersion of versions) {
    it.live(
      `v${protocolVersion}: random bytes end in a typed error or nothing, never a defect`,
      () =>
        Effect.gen(function*() {
          const samples = fc.sample(
            fc.oneof(
              fc.uint8Array({ minLength: 1, maxLength: 64 }),
              // a valid-looking fixed header followed by random bytes
              fc.tuple(fc.integer({ min: 0, max: 15 }), fc.uint8Array({ maxLength: 40 })).map(([type, rest]) =>
                Uint8Array.of(type << 4 | (rest[0] ?? 0) & 0x0f, rest.length, ...rest)
              )
            ),
            { numRuns: 150, seed: 42 + protocolVersion }
          )
          const broker = yield* FakeBroker.make({ protocolVersion })
          for (const bytes of samples) {
            yield* Effect.scoped(Effect.gen(function*() {
              const fiber = yield* Effect.forkChild(
                MqttClient.make({ url: broker.url, protocolVersion, reconnect: false })
              )
              const connection = yield* broker.accept
              yield* connection.expect("connect")
              yield* connection.connack()
              const client = yield* Fiber.join(fiber)
              yield* connection.sendRaw(bytes)
              yield* connection.close
              const exit = yield* Effect.exit(client.awaitClose)
              assert(Exit.isFailure(exit), "the connection ended")
              const failure = exit.cause.reasons.find(Cause.isFailReason)
              assert(
                failure !== undefined && exit.cause.reasons.length === 1,
                `a typed failure: ${Cause.pretty(exit.cause)}`
              )
              expect(MqttError.isConnectionError(failure.error)).toBe(true)
            }))
          }
        }),
      120_000
    )
  }
})
