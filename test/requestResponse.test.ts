/**
 * Request/response robustness: what goes wrong with one request is that request's own (a warning, no reply, the
 * responder goes on), and what the caller gives is checked before anything is sent.
 *
 * - `respond` (untyped and typed) survives a refused reply (PUBACK 0x87: on the fake broker, and on a real
 *   Mosquitto whose ACL forbids the response topic), a reply over the broker's Maximum Packet Size (both), a
 *   failing handler, a reply that is not a payload, an invalid property, a request that does not decode; it ends
 *   when the client stops for good.
 * - `respond` never waits for a reply's acknowledgement before it takes the next request: 500 requests queued
 *   beyond a queue of 16 (Mosquitto sends past the Receive Maximum) are all answered, one at a time.
 * - A request whose Response Topic is no topic name (a wildcard) is not handed to the handler.
 * - `request` and `respond` check their arguments before the first packet (the response topic's SUBSCRIBE, the
 *   responder's SUBSCRIBE); typed topics check the share name (one topic level) before subscribing.
 * - An MQTT 5 CONNACK's Assigned Client Identifier is taken only when the CONNECT's was empty [MQTT-3.2.2.3.7].
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Cause, Deferred, Effect, Exit, Fiber, Logger, Option, Schema, Stream } from "effect"
import { IncomingQueue, MqttClient, type MqttError, MqttTopic } from "effect-mqtt"
import { connectAsync as connectMqttJs } from "mqtt"
import type { Packet } from "mqtt-packet"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as FakeBroker from "./support/FakeBroker.ts"
import { mosquitto, type MosquittoHandle, startMosquitto } from "./support/Mosquitto.ts"
import { guard } from "./support/peers.ts"

// ---------------------------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------------------------

/** The log lines written while the test runs (level, message, annotations). */
const makeLines = () => {
  const lines: Array<string> = []
  const logger = Logger.make((options) => {
    const message = Array.isArray(options.message) ? options.message.join(" ") : String(options.message)
    lines.push(`${options.logLevel} ${message}`)
  })
  return { lines, layer: Logger.layer([logger]) }
}

/** Waits until `condition` holds (polled), for what no event announces. */
const until = (condition: () => boolean) =>
  guard(Effect.gen(function*() {
    while (!condition()) yield* Effect.sleep("10 millis")
  }))

/** The typed failure of an exit; fails the test on a success or a defect. */
const errorOf = <A, E>(exit: Exit.Exit<A, E>): E => {
  if (Exit.isSuccess(exit)) return assert.fail("expected a failure, got a success")
  const error = Exit.findErrorOption(exit)
  if (Option.isNone(error)) return assert.fail(`expected a typed failure, got ${Cause.pretty(exit.cause)}`)
  return error.value
}

const connectFake = (options: MqttClient.Options = {}, connack?: FakeBroker.ConnackOptions) =>
  Effect.gen(function*() {
    const broker = yield* FakeBroker.make({ protocolVersion: options.protocolVersion ?? 5 })
    const fiber = yield* Effect.forkChild(
      MqttClient.make({ url: broker.url, protocolVersion: 5, reconnect: false, ...options })
    )
    const { connect, connection } = yield* broker.acceptAndConnack(connack)
    const client = yield* Fiber.join(fiber)
    return { broker, client, connection, connect }
  })

/** A request from the broker to the client: QoS 0, with a response topic and correlation data. */
const requestPacket = (topic: string, payload: string, responseTopic: string, correlation: string): Packet => ({
  cmd: "publish",
  topic,
  payload: Buffer.from(payload),
  qos: 0,
  retain: false,
  dup: false,
  properties: { responseTopic, correlationData: Buffer.from(correlation) }
})

/** Starts a responder on the fake broker, grants its SUBSCRIBE and returns its fiber. */
const serving = <E>(
  connection: FakeBroker.FakeConnection,
  responder: Effect.Effect<void, E>
) =>
  Effect.gen(function*() {
    const fiber = yield* Effect.forkChild(responder)
    const subscribe = yield* connection.expect("subscribe")
    yield* connection.send({ cmd: "suback", messageId: subscribe.messageId!, granted: [1] })
    return { fiber, filters: subscribe.subscriptions.map((s) => s.topic) }
  })

/** The next reply the client publishes; answered with PUBACK `reasonCode` when QoS 1. */
const nextReply = (connection: FakeBroker.FakeConnection, reasonCode = 0) =>
  Effect.gen(function*() {
    const reply = yield* connection.expect("publish")
    if (reply.qos === 1) yield* connection.send({ cmd: "puback", messageId: reply.messageId!, reasonCode })
    return {
      topic: reply.topic,
      payload: reply.payload.toString(),
      correlation: reply.properties?.correlationData?.toString()
    }
  })

/** Answers the UNSUBSCRIBE of a responder (or subscription) that ends: else its release waits 5 s for it. */
const unsubscribed = (connection: FakeBroker.FakeConnection) =>
  Effect.gen(function*() {
    const unsubscribe = yield* connection.expect("unsubscribe")
    yield* connection.send({ cmd: "unsuback", messageId: unsubscribe.messageId!, granted: [0] })
  })

const stillRunning = <A, E>(fiber: Fiber.Fiber<A, E>) =>
  Effect.sync(() => {
    const exit = fiber.pollUnsafe()
    assert.isUndefined(exit, exit === undefined ? "" : `the responder ended: ${String(exit)}`)
  })

// ---------------------------------------------------------------------------------------------------------------
// respond: a request's failure is its own
// ---------------------------------------------------------------------------------------------------------------

describe("respond: what goes wrong with one request does not end the responder", () => {
  it.live("a reply the broker refuses (PUBACK 0x87) is a warning naming the response topic; the next request is answered", () => {
    const { layer, lines } = makeLines()
    return Effect.gen(function*() {
      const { client, connection } = yield* connectFake()
      const { fiber } = yield* serving(
        connection,
        client.respond("svc", (request) => Effect.succeed(`re ${request.text}`))
      )
      yield* connection.send(requestPacket("svc", "1", "denied/1", "c1"))
      assert.deepStrictEqual(yield* nextReply(connection, 0x87), {
        topic: "denied/1",
        payload: "re 1",
        correlation: "c1"
      })
      yield* connection.send(requestPacket("svc", "2", "replies/2", "c2"))
      assert.deepStrictEqual(yield* nextReply(connection), { topic: "replies/2", payload: "re 2", correlation: "c2" })
      yield* stillRunning(fiber)
      const warning = lines.find((line) => line.includes("denied/1"))
      assert.isDefined(warning)
      assert.match(warning!, /^Warn /)
      assert.include(warning!, "0x87")
      assert.include(warning!, `request on "svc"`)
    }).pipe(Effect.provide(layer))
  })

  it.live("a failing handler, a reply that is not a payload, an invalid reply property, a reply over the broker's Maximum Packet Size: each a warning, the responder goes on", () => {
    const { layer, lines } = makeLines()
    return Effect.gen(function*() {
      const { client, connection } = yield* connectFake({}, { properties: { maximumPacketSize: 300 } })
      const { fiber } = yield* serving(
        connection,
        client.respond("svc", (request): Effect.Effect<MqttClient.Reply, string> => {
          switch (request.text) {
            case "fail":
              return Effect.fail("the handler's own failure")
            case "not a payload":
              return Effect.succeed(42 as unknown as MqttClient.Reply)
            case "bad property":
              return Effect.succeed({ payload: "x", properties: { contentType: "a\u0000b" } })
            case "big":
              return Effect.succeed("x".repeat(1000))
            default:
              return Effect.succeed(`re ${request.text}`)
          }
        })
      )
      for (const [i, text] of ["fail", "not a payload", "bad property", "big"].entries()) {
        yield* connection.send(requestPacket("svc", text, `replies/bad${i}`, `c${i}`))
      }
      yield* connection.send(requestPacket("svc", "ok", "replies/ok", "ok"))
      // nothing of the four went out: the first publish is the reply to "ok"
      assert.deepStrictEqual(yield* nextReply(connection), { topic: "replies/ok", payload: "re ok", correlation: "ok" })
      yield* stillRunning(fiber)
      const warnings = lines.filter((line) => line.startsWith("Warn ") && line.includes("no reply"))
      assert.strictEqual(warnings.length, 4, warnings.join("\n"))
      assert.include(warnings[0], "replies/bad0")
      assert.include(warnings[0], "the handler's own failure")
      assert.include(warnings[1], "replies/bad1")
      assert.include(warnings[2], "replies/bad2")
      assert.include(warnings[3], "replies/bad3")
      assert.include(warnings[3], "0x95")
    }).pipe(Effect.provide(layer))
  })

  it.live("the sender's topics and a handler's failure are escaped in the warning: a sender cannot write a log line", () => {
    const { layer, lines } = makeLines()
    return Effect.gen(function*() {
      const { client, connection } = yield* connectFake()
      yield* serving(connection, client.respond("svc/#", () => Effect.fail("bad\nWarn forged by the handler")))
      yield* connection.send(requestPacket("svc/a\u2028b", "x", "replies/\nWarn forged by the sender", "c"))
      yield* until(() => lines.some((line) => line.includes("no reply")))
      const warning = lines.find((line) => line.includes("no reply"))!
      assert.notMatch(warning, /[\n\r\u2028\u2029]/, warning)
      assert.include(
        warning,
        String.raw`request on "svc/a\u2028b" (response topic "replies/\nWarn forged by the sender")`
      )
      assert.include(warning, String.raw`bad\u000aWarn forged by the handler`)
    }).pipe(Effect.provide(layer))
  })

  it.live("the responder ends when the client stops for good, with the client's error", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connectFake()
      const { fiber } = yield* serving(connection, client.respond("svc", (request) => Effect.succeed(request.text)))
      yield* connection.destroy
      const error = errorOf(yield* guard(Fiber.await(fiber)))
      assert.strictEqual(error._tag, "ConnectionLostError")
    }))

  it.live("a defect of the handler still ends the responder", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connectFake()
      const { fiber } = yield* serving(connection, client.respond("svc", () => Effect.die("boom")))
      yield* connection.send(requestPacket("svc", "x", "replies/x", "c"))
      yield* unsubscribed(connection)
      const exit = yield* guard(Fiber.await(fiber))
      assert.isTrue(Exit.isFailure(exit) && Cause.hasDies(exit.cause), String(exit))
    }))
})

// ---------------------------------------------------------------------------------------------------------------
// arguments checked before anything is sent
// ---------------------------------------------------------------------------------------------------------------

describe("request and respond check their arguments before anything is sent", () => {
  it.live("request: an invalid topic, QoS, payload or property fails before the response topic's SUBSCRIBE", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connectFake()
      const cases: ReadonlyArray<[string, Effect.Effect<unknown, MqttError.MqttError>]> = [
        ["InvalidTopicError", client.request("a/#", "x")],
        ["InvalidTopicError", client.request("", "x")],
        ["InvalidTopicError", client.request(null as unknown as string, "x")],
        ["InvalidOptionError", client.request("a", "x", { qos: 5 as MqttClient.QoS })],
        ["InvalidOptionError", client.request("a", null as unknown as string)],
        ["InvalidOptionError", client.request("a", "x", { timeout: -1 })],
        [
          "InvalidOptionError",
          client.request("a", "x", { properties: { userProperties: [["k"]] as unknown as Array<[string, string]> } })
        ],
        ["InvalidOptionError", client.request("a", "x", { properties: { contentType: "\u0000" } })],
        [
          "InvalidOptionError",
          client.request("a", Uint8Array.of(0xff), { properties: { payloadFormatIndicator: true } })
        ]
      ]
      for (const [tag, request] of cases) {
        assert.strictEqual(errorOf(yield* Effect.exit(request))._tag, tag)
      }
      yield* connection.expectSilence(100)
      // a valid request subscribes to the response topic first, then publishes
      const fiber = yield* Effect.forkChild(client.request("a", "x", { timeout: "5 seconds" }))
      const subscribe = yield* connection.expect("subscribe")
      yield* connection.send({ cmd: "suback", messageId: subscribe.messageId!, granted: [1] })
      const published = yield* connection.expect("publish")
      assert.strictEqual(published.topic, "a")
      yield* Fiber.interrupt(fiber)
    }))

  it.live("respond: an invalid filter, handler, concurrency or QoS fails before its SUBSCRIBE, and so does `subscribed`", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connectFake()
      const handler = () => Effect.succeed("x")
      const cases: ReadonlyArray<
        [string, (subscribed: Deferred.Deferred<void, MqttError.MqttError>) => Effect.Effect<void, MqttError.MqttError>]
      > = [
        ["InvalidTopicError", (subscribed) => client.respond("a/#/b", handler, { subscribed })],
        ["InvalidOptionError", (subscribed) => client.respond(null as unknown as string, handler, { subscribed })],
        ["InvalidOptionError", (subscribed) => client.respond("svc", 5 as unknown as typeof handler, { subscribed })],
        ["InvalidOptionError", (subscribed) => client.respond("svc", handler, { concurrency: 0, subscribed })],
        ["InvalidOptionError", (subscribed) => client.respond("svc", handler, { concurrency: -1, subscribed })],
        ["InvalidOptionError", (subscribed) => client.respond("svc", handler, { concurrency: NaN, subscribed })],
        ["InvalidOptionError", (subscribed) => client.respond("svc", handler, { qos: 9 as MqttClient.QoS, subscribed })]
      ]
      for (const [tag, respond] of cases) {
        const subscribed = yield* Deferred.make<void, MqttError.MqttError>()
        const error = errorOf(yield* Effect.exit(respond(subscribed)))
        assert.strictEqual(error._tag, tag)
        assert.strictEqual(yield* Effect.flip(Deferred.await(subscribed)), error)
      }
      yield* connection.expectSilence(100)
    }))

  it.live("request: options or properties of the wrong type, a string payload with a lone surrogate: refused before the response topic's SUBSCRIBE", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connectFake()
      const cases: ReadonlyArray<[string, Effect.Effect<unknown, MqttError.MqttError>]> = [
        ["properties a string", client.request("a", "x", { properties: "abc" as never })],
        ["properties a number", client.request("a", "x", { properties: 5 as never })],
        ["properties null", client.request("a", "x", { properties: null as never })],
        ["options a number", client.request("a", "x", 5 as never)],
        ["options a string", client.request("a", "x", "abc" as never)],
        ["a lone surrogate in the payload", client.request("a", "a\ud800b")],
        ["a lone surrogate in the topic", client.request("a\udc00", "x")]
      ]
      for (const [label, request] of cases) {
        const error = errorOf(yield* Effect.exit(request))
        assert.include(["InvalidOptionError", "InvalidTopicError"], error._tag, label)
      }
      // neither the response topic's SUBSCRIBE nor a publish went out
      yield* connection.expectSilence(100)
    }))

  it.live("respond: a `subscribed` or options of the wrong type are refused before its SUBSCRIBE", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connectFake()
      const handler = () => Effect.succeed("x")
      for (
        const respond of [
          client.respond("svc", handler, { subscribed: 5 as never }),
          client.respond("svc", handler, 5 as never)
        ]
      ) {
        assert.strictEqual(errorOf(yield* Effect.exit(respond))._tag, "InvalidOptionError")
      }
      yield* connection.expectSilence(100)
    }))

  it.live("respond on MQTT 3.1.1 fails at once (no response topic to answer to): nothing is sent", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connectFake({ protocolVersion: 4 })
      const error = errorOf(yield* Effect.exit(client.respond("svc", () => Effect.succeed("x"))))
      assert.deepStrictEqual([error._tag, (error as MqttError.InvalidOptionError).option], [
        "InvalidOptionError",
        "respond"
      ])
      yield* connection.expectSilence(100)
    }))
})

// ---------------------------------------------------------------------------------------------------------------
// typed topics: share names, and the typed responder's per-request failures
// ---------------------------------------------------------------------------------------------------------------

describe("typed topics", () => {
  const Reading = MqttTopic.make("dev/{id}/t", Schema.Struct({ c: Schema.Number }))
  const Add = MqttTopic.make("calc/add", Schema.Tuple([Schema.Number, Schema.Number]), { reply: Schema.Number })

  it.live("a share name is one topic level: with /, +, # or empty, subscribe and respond fail with InvalidOptionError before anything is sent", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connectFake()
      for (const share of ["g/x", "/", "g/", "+", "#", "a+", "", "a\u0000"]) {
        const subscribeError = errorOf(
          yield* Effect.exit(Effect.scoped(MqttTopic.subscribe(client, Reading, { share })))
        )
        assert.deepStrictEqual(
          [subscribeError._tag, (subscribeError as MqttError.InvalidOptionError).option],
          ["InvalidOptionError", "share"],
          share
        )
        const subscribed = yield* Deferred.make<void, MqttError.MqttError | MqttTopic.TopicParamsError>()
        const respondError = errorOf(
          yield* Effect.exit(
            MqttTopic.respond(client, Add, ({ payload: [a, b] }) => Effect.succeed(a + b), { share, subscribed })
          )
        )
        assert.strictEqual(respondError._tag, "InvalidOptionError", share)
        assert.strictEqual(yield* Effect.flip(Deferred.await(subscribed)), respondError)
      }
      yield* connection.expectSilence(100)
      // a valid one: $share/{share}/{filter}
      const fiber = yield* Effect.forkChild(Effect.scoped(MqttTopic.subscribe(client, Reading, { share: "workers" })))
      const subscribe = yield* connection.expect("subscribe")
      assert.deepStrictEqual(subscribe.subscriptions.map((s) => s.topic), ["$share/workers/dev/+/t"])
      yield* connection.send({ cmd: "suback", messageId: subscribe.messageId!, granted: [0] })
      yield* unsubscribed(connection)
      yield* Fiber.join(fiber)
    }))

  it.live("respond's `subscribed` is done only once the SUBACK granted the filter, and fails with a refused subscription", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connectFake()
      const handler = ({ payload: [a, b] }: MqttTopic.ReceivedOf<typeof Add>) => Effect.succeed(a + b)
      // granted: not done while the broker has not answered the SUBSCRIBE, done after its SUBACK
      const granted = yield* Deferred.make<void, MqttError.MqttError | MqttTopic.TopicParamsError>()
      const fiber = yield* Effect.forkChild(MqttTopic.respond(client, Add, handler, { subscribed: granted }))
      const subscribe = yield* connection.expect("subscribe")
      yield* Effect.sleep("50 millis")
      assert.isFalse(yield* Deferred.isDone(granted), "done before the SUBACK")
      yield* connection.send({ cmd: "suback", messageId: subscribe.messageId!, granted: [1] })
      yield* guard(Deferred.await(granted))
      const stopping = yield* Effect.forkChild(Fiber.interrupt(fiber))
      yield* unsubscribed(connection)
      yield* Fiber.join(stopping)
      // refused (SUBACK 0x87): `subscribed` fails with the responder's SubscribeError, never succeeds first
      const refused = yield* Deferred.make<void, MqttError.MqttError | MqttTopic.TopicParamsError>()
      const second = yield* Effect.forkChild(MqttTopic.respond(client, Add, handler, { subscribed: refused }))
      const again = yield* connection.expect("subscribe")
      assert.isFalse(yield* Deferred.isDone(refused), "done before the SUBACK")
      yield* connection.send({ cmd: "suback", messageId: again.messageId!, granted: [0x87] })
      const error = errorOf(yield* guard(Fiber.await(second)))
      assert.strictEqual(error._tag, "SubscribeError")
      assert.strictEqual(yield* Effect.flip(Deferred.await(refused)), error)
    }))

  it.live("respond: a request that does not decode (default skip) and a failing handler: a warning each, the next request is answered", () => {
    const { layer, lines } = makeLines()
    return Effect.gen(function*() {
      const { client, connection } = yield* connectFake()
      const { fiber } = yield* serving(
        connection,
        MqttTopic.respond(
          client,
          Add,
          ({ payload: [a, b] }) => a === 0 ? Effect.fail("zero is refused") : Effect.succeed(a + b)
        )
      )
      yield* connection.send(requestPacket("calc/add", "[1,", "replies/undecodable", "c0"))
      yield* connection.send(requestPacket("calc/add", "[0,1]", "replies/failing", "c1"))
      yield* connection.send(requestPacket("calc/add", "[2,3]", "replies/ok", "c2"))
      // nothing went out for the first two: the first publish is the reply to the third
      assert.deepStrictEqual(yield* nextReply(connection), { topic: "replies/ok", payload: "5", correlation: "c2" })
      yield* stillRunning(fiber)
      const warnings = lines.filter((line) => line.startsWith("Warn ") && line.includes("no reply"))
      assert.isTrue(
        warnings.some((w) => w.includes("replies/undecodable") && w.includes("does not decode")),
        warnings.join("\n")
      )
      assert.isTrue(
        warnings.some((w) => w.includes("replies/failing") && w.includes("zero is refused")),
        warnings.join("\n")
      )
      assert.strictEqual(yield* MqttTopic.decodeFailureCount(Add, "skip"), 1)
    }).pipe(Effect.provide(layer))
  })

  it.live("respond: a reply that does not encode with the reply Schema is a warning; the responder goes on", () => {
    const { layer, lines } = makeLines()
    const Strict = MqttTopic.make("calc/strict", Schema.String, { reply: Schema.Struct({ n: Schema.Int }) })
    return Effect.gen(function*() {
      const { client, connection } = yield* connectFake()
      const { fiber } = yield* serving(
        connection,
        MqttTopic.respond(client, Strict, ({ payload }) => Effect.succeed({ n: payload === "bad" ? 1.5 : 2 }))
      )
      yield* connection.send(requestPacket("calc/strict", `"bad"`, "replies/bad", "c0"))
      yield* connection.send(requestPacket("calc/strict", `"good"`, "replies/good", "c1"))
      assert.deepStrictEqual(yield* nextReply(connection), {
        topic: "replies/good",
        payload: `{"n":2}`,
        correlation: "c1"
      })
      yield* stillRunning(fiber)
      assert.isTrue(lines.some((line) => line.startsWith("Warn ") && line.includes("replies/bad")), lines.join("\n"))
    }).pipe(Effect.provide(layer))
  })

  it.live("respond with onDecodeError \"fail\" (the caller's choice) ends with the TopicDecodeError", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connectFake()
      const { fiber } = yield* serving(
        connection,
        MqttTopic.respond(client, Add, ({ payload: [a, b] }) => Effect.succeed(a + b), { onDecodeError: "fail" })
      )
      yield* connection.send(requestPacket("calc/add", "[1,", "replies/x", "c0"))
      yield* unsubscribed(connection)
      const error = errorOf(yield* guard(Fiber.await(fiber)))
      assert.deepStrictEqual([error._tag, (error as MqttTopic.TopicDecodeError).reason], [
        "TopicDecodeError",
        "payload"
      ])
    }))
})

// ---------------------------------------------------------------------------------------------------------------
// MQTT 5 CONNACK: Assigned Client Identifier
// ---------------------------------------------------------------------------------------------------------------

describe("Assigned Client Identifier [MQTT-3.2.2.3.7]", () => {
  it.live("a client that sent its own identifier keeps it, with a warning", () => {
    const { layer, lines } = makeLines()
    return Effect.gen(function*() {
      const { client, connect } = yield* connectFake({ clientId: "cid" }, {
        properties: { assignedClientIdentifier: "zz" }
      })
      assert.strictEqual(connect.clientId, "cid")
      assert.strictEqual(client.connection.clientId, "cid")
      yield* until(() => lines.some((line) => line.startsWith("Warn ") && line.includes("zz")))
    }).pipe(Effect.provide(layer))
  })

  it.live("a client that sent an empty identifier takes the assigned one", () =>
    Effect.gen(function*() {
      const { client, connect } = yield* connectFake({ clientId: "" }, {
        properties: { assignedClientIdentifier: "assigned-1" }
      })
      assert.strictEqual(connect.clientId, "")
      assert.strictEqual(client.connection.clientId, "assigned-1")
    }))
})

// ---------------------------------------------------------------------------------------------------------------
// a real Mosquitto: an ACL that forbids the response topic (PUBACK 0x87), a Maximum Packet Size
// ---------------------------------------------------------------------------------------------------------------

describe("respond on Mosquitto", () => {
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-mqtt-rr-"))
  const acl = Path.join(dir, "acl")
  const run = Crypto.randomBytes(3).toString("hex")
  let broker: MosquittoHandle
  beforeAll(async () => {
    Fs.writeFileSync(acl, ["topic readwrite rr/#", "topic read denied/#", ""].join("\n"))
    broker = await startMosquitto({ protocolConfig: `acl_file ${acl}\nmax_packet_size 2000` })
  })
  afterAll(async () => {
    await broker?.dispose()
    Fs.rmSync(dir, { recursive: true, force: true })
  })

  const connect = () =>
    MqttClient.make({
      url: broker.url,
      protocolVersion: 5,
      reconnect: false,
      responseTopicPrefix: `rr/${run}/responses`
    })

  it.live("a reply to a response topic the ACL forbids (0x87) and a reply over the broker's Maximum Packet Size are warnings; the next request is answered", () => {
    const { layer, lines } = makeLines()
    return Effect.scoped(Effect.gen(function*() {
      const service = `rr/${run}/svc`
      const responder = yield* connect()
      const requester = yield* connect()
      const subscribed = yield* Deferred.make<void, MqttError.MqttError>()
      const fiber = yield* Effect.forkScoped(
        responder.respond(
          service,
          (request) => Effect.succeed(request.text === "big" ? "x".repeat(5000) : `re ${request.text}`),
          {
            subscribed
          }
        )
      )
      yield* guard(Deferred.await(subscribed))
      // a requester that names a response topic the responder may not publish to
      yield* requester.publish(service, "1", {
        qos: 1,
        properties: { responseTopic: `denied/${run}`, correlationData: Uint8Array.of(1) }
      })
      yield* until(() => lines.some((line) => line.includes(`denied/${run}`)))
      assert.include(lines.find((line) => line.includes(`denied/${run}`))!, "0x87")
      // a reply too large for the broker: refused by the client, unsent
      const big = errorOf(yield* Effect.exit(requester.request(service, "big", { timeout: "500 millis" })))
      assert.strictEqual(big._tag, "MqttTimeoutError")
      assert.isTrue(lines.some((line) => line.includes("0x95")), lines.join("\n"))
      // and the responder still answers
      const reply = yield* guard(requester.request(service, "2", { timeout: "5 seconds" }))
      assert.strictEqual(reply.text, "re 2")
      yield* stillRunning(fiber)
      assert.strictEqual((yield* responder.status)._tag, "Connected")
    })).pipe(Effect.provide(layer))
  })

  it.live("a request whose Response Topic has a wildcard (Mosquitto forwards it; MQTT.js sends it) is a warning, not a broken connection; the next request is answered", () => {
    const { layer, lines } = makeLines()
    return Effect.scoped(Effect.gen(function*() {
      const service = `rr/${run}/wild`
      const responder = yield* connect()
      const requester = yield* connect()
      const subscribed = yield* Deferred.make<void, MqttError.MqttError>()
      const handled: Array<string> = []
      const fiber = yield* Effect.forkScoped(
        responder.respond(service, (request) => {
          handled.push(request.text)
          return Effect.succeed(`re ${request.text}`)
        }, { subscribed })
      )
      yield* guard(Deferred.await(subscribed))
      const peer = yield* Effect.acquireRelease(
        Effect.promise(() => connectMqttJs(broker.url, { protocolVersion: 5, reconnectPeriod: 0 })),
        (client) => Effect.promise(() => client.endAsync(true))
      )
      for (const responseTopic of [`rr/${run}/reply/#`, `rr/${run}/+/x`]) {
        yield* Effect.promise(() =>
          peer.publishAsync(service, "1", { qos: 1, properties: { responseTopic, correlationData: Buffer.of(1) } })
        )
        yield* until(() => lines.some((line) => line.includes(responseTopic)))
        assert.include(lines.find((line) => line.includes(responseTopic))!, "wildcard")
      }
      const reply = yield* guard(requester.request(service, "2", { timeout: "5 seconds" }))
      assert.strictEqual(reply.text, "re 2")
      // the response topics were checked before the handler: it saw only the request it could answer
      assert.deepStrictEqual(handled, ["2"])
      yield* stillRunning(fiber)
      assert.strictEqual((yield* responder.status)._tag, "Connected")
    })).pipe(Effect.provide(layer))
  })

  it.live("a responder with concurrency 1 answers 500 requests queued beyond its queue of 16: it takes the next request without waiting for a reply's PUBACK", () =>
    Effect.scoped(Effect.gen(function*() {
      const count = 500
      const service = `rr/${run}/flood`
      const replies = `rr/${run}/flood-replies`
      const responder = yield* MqttClient.make({
        url: broker.url,
        protocolVersion: 5,
        reconnect: false,
        queue: IncomingQueue.bounded(16)
      })
      const peer = yield* Effect.acquireRelease(
        Effect.promise(() => connectMqttJs(broker.url, { protocolVersion: 5, reconnectPeriod: 0 })),
        (client) => Effect.promise(() => client.endAsync(true))
      )
      const answered = new Set<string>()
      peer.on("message", (topic) => {
        if (topic.startsWith(`${replies}/`)) answered.add(topic)
      })
      yield* Effect.promise(() => peer.subscribeAsync(`${replies}/#`, { qos: 1 }))
      // the responder holds its first request until every request is at the broker, which sends them on past
      // the responder's queue: the socket reader waits for room, with the PUBACKs of the replies behind
      const gate = yield* Deferred.make<void>()
      const subscribed = yield* Deferred.make<void, MqttError.MqttError>()
      yield* Effect.forkScoped(
        responder.respond(
          service,
          (request) => Effect.as(Deferred.await(gate), `re ${request.text}`),
          { subscribed }
        )
      )
      yield* guard(Deferred.await(subscribed))
      yield* Effect.promise(() =>
        Promise.all(Array.from({ length: count }, (_, i) =>
          peer.publishAsync(service, String(i), {
            qos: 1,
            properties: { responseTopic: `${replies}/${i}`, correlationData: Buffer.from(String(i)) }
          })))
      )
      yield* Deferred.succeed(gate, undefined)
      yield* until(() => answered.size === count).pipe(
        Effect.timeoutOrElse({
          duration: "15 seconds",
          orElse: () => Effect.sync(() => assert.fail(`${answered.size} of ${count} requests answered in 15 s`))
        })
      )
      assert.strictEqual((yield* responder.status)._tag, "Connected")
    })))
})

describe("request: the response topic's SUBSCRIBE is the client's, within each request's timeout (Mosquitto)", () => {
  const run = Crypto.randomBytes(3).toString("hex")
  const pair = (url: string) =>
    Effect.gen(function*() {
      const responder = yield* MqttClient.make({ url, protocolVersion: 5 })
      const requester = yield* MqttClient.make({ url, protocolVersion: 5, logLevel: "None" })
      const subscribed = yield* Deferred.make<void, MqttError.MqttError>()
      yield* Effect.forkScoped(
        responder.respond(`rq/${run}/echo`, (request) => Effect.succeed(`re ${request.text}`), { subscribed })
      )
      yield* guard(Deferred.await(subscribed))
      return requester
    })

  it.live("two requesters whose client identifiers differ only by / and _ have response topics of their own: each gets its responses, none is dropped as late", () =>
    Effect.scoped(Effect.gen(function*() {
      const broker = yield* mosquitto()
      const responder = yield* MqttClient.make({ url: broker.url, protocolVersion: 5 })
      const subscribed = yield* Deferred.make<void, MqttError.MqttError>()
      yield* Effect.forkScoped(
        responder.respond(`rq/${run}/ids`, (request) => Effect.succeed(`re ${request.text}`), { subscribed })
      )
      yield* guard(Deferred.await(subscribed))
      const slash = yield* MqttClient.make({ url: broker.url, protocolVersion: 5, clientId: `rq-${run}/x` })
      const underscore = yield* MqttClient.make({ url: broker.url, protocolVersion: 5, clientId: `rq-${run}_x` })
      for (const [requester, name] of [[slash, "slash"], [underscore, "underscore"]] as const) {
        for (let i = 0; i < 3; i++) {
          const reply = yield* guard(requester.request(`rq/${run}/ids`, `${name} ${i}`, { timeout: "10 seconds" }))
          assert.strictEqual(reply.text, `re ${name} ${i}`)
        }
      }
      assert.deepStrictEqual([yield* slash.droppedMessages, yield* underscore.droppedMessages], [0, 0])
    })))

  it.live("a responder on a client with manual acknowledgement acknowledges each request it served: 50 requests through a Receive Maximum of 5 are all answered", () =>
    Effect.scoped(Effect.gen(function*() {
      const broker = yield* mosquitto()
      const responder = yield* MqttClient.make({
        url: broker.url,
        protocolVersion: 5,
        acknowledgement: "manual",
        receiveMaximum: 5
      })
      const subscribed = yield* Deferred.make<void, MqttError.MqttError>()
      yield* Effect.forkScoped(
        responder.respond(`rq/${run}/manual`, (request) => Effect.succeed(`re ${request.text}`), { subscribed })
      )
      yield* guard(Deferred.await(subscribed))
      const requester = yield* MqttClient.make({ url: broker.url, protocolVersion: 5 })
      const replies = yield* guard(
        Effect.forEach(
          Array.from({ length: 50 }, (_, i) => String(i)),
          (text) => Effect.map(requester.request(`rq/${run}/manual`, text, { timeout: "10 seconds" }), (r) => r.text),
          { concurrency: 10 }
        )
      )
      assert.deepStrictEqual(replies, Array.from({ length: 50 }, (_, i) => `re ${i}`))
    })))

  it.live("a first request interrupted while its SUBSCRIBE is in flight leaves request working: the next ones are answered", () =>
    Effect.scoped(Effect.gen(function*() {
      const broker = yield* mosquitto()
      const requester = yield* pair(broker.url)
      const first = yield* Effect.exit(
        requester.request(`rq/${run}/echo`, "first", { timeout: "5 seconds" }).pipe(Effect.timeout("1 millis"))
      )
      assert.isTrue(Exit.isFailure(first))
      for (const text of ["second", "third"]) {
        const reply = yield* guard(requester.request(`rq/${run}/echo`, text, { timeout: "5 seconds" }))
        assert.strictEqual(reply.text, `re ${text}`)
      }
    })))

  it.live("a response that comes after its request gave up, or without Correlation Data: counted in droppedMessages, the first of each kind a warning; the next request is answered", () => {
    const { layer, lines } = makeLines()
    return Effect.scoped(Effect.gen(function*() {
      const broker = yield* mosquitto()
      const service = `rq/${run}/late`
      const peer = yield* Effect.acquireRelease(
        Effect.promise(() => connectMqttJs(broker.url, { protocolVersion: 5, reconnectPeriod: 0 })),
        (client) => Effect.promise(() => client.endAsync(true))
      )
      // a responder that holds each request until the test lets it answer
      const held: Array<{ readonly responseTopic: string; readonly correlationData: Buffer; readonly text: string }> =
        []
      peer.on("message", (_topic, payload, packet) => {
        const { responseTopic, correlationData } = packet.properties ?? {}
        if (typeof responseTopic === "string" && Buffer.isBuffer(correlationData)) {
          held.push({ responseTopic, correlationData, text: payload.toString() })
        }
      })
      yield* Effect.promise(() => peer.subscribeAsync(service, { qos: 1 }))
      const requester = yield* MqttClient.make({ url: broker.url, protocolVersion: 5 })
      const answer = (request: (typeof held)[number]) =>
        Effect.promise(() =>
          peer.publishAsync(request.responseTopic, `re ${request.text}`, {
            qos: 1,
            properties: { correlationData: request.correlationData }
          })
        )
      const late = (n: number) =>
        Effect.gen(function*() {
          const exit = yield* Effect.exit(requester.request(service, `late ${n}`, { timeout: "300 millis" }))
          assert.strictEqual(errorOf(exit)._tag, "MqttTimeoutError")
          yield* until(() => held.some((request) => request.text === `late ${n}`))
          yield* answer(held.find((request) => request.text === `late ${n}`)!)
        })
      yield* late(1)
      yield* until(() => lines.some((line) => line.includes("came after its request gave up")))
      assert.strictEqual(yield* requester.droppedMessages, 1)
      // the warning says what happened to this one: it is counted too
      assert.isTrue(
        lines.some((line) =>
          line.includes("came after its request gave up") &&
          line.includes("dropped and counted in droppedMessages (later ones are counted too, without this warning)")
        )
      )
      // a second late one: counted, not logged again
      yield* late(2)
      yield* guard(Effect.gen(function*() {
        while ((yield* requester.droppedMessages) < 2) yield* Effect.sleep("10 millis")
      }))
      // a message on the response topic without Correlation Data
      yield* Effect.promise(() => peer.publishAsync(held[0].responseTopic, "stray", { qos: 1 }))
      yield* until(() => lines.some((line) => line.includes("without Correlation Data")))
      assert.strictEqual(yield* requester.droppedMessages, 3)
      assert.isTrue(
        lines.some((line) =>
          line.includes("without Correlation Data is dropped and counted in droppedMessages (later ones are counted")
        )
      )
      assert.strictEqual(lines.filter((line) => line.includes("came after its request gave up")).length, 1)
      assert.isTrue(lines.every((line) => !line.includes("came after") || line.startsWith("Warn")))
      // the next request is answered as ever
      const reply = yield* Effect.forkChild(requester.request(service, "in time", { timeout: "10 seconds" }))
      yield* until(() => held.some((request) => request.text === "in time"))
      yield* answer(held.find((request) => request.text === "in time")!)
      assert.strictEqual((yield* guard(Fiber.join(reply))).text, "re in time")
      assert.strictEqual(yield* requester.droppedMessages, 3)
    })).pipe(Effect.provide(layer))
  })

  it.live("a restarted requester (persistent session) whose late responses arrived while it was down, reading subscription() streams only: they are given up (counted, warned, acknowledged), not holding back every later acknowledgement", () => {
    const { layer, lines } = makeLines()
    return Effect.scoped(Effect.gen(function*() {
      const broker = yield* mosquitto()
      const service = `rq/${run}/restart`
      const options: MqttClient.Options = {
        url: broker.url,
        protocolVersion: 5,
        clientId: `rq-restart-${run}`,
        cleanStart: false,
        sessionExpiryInterval: 600,
        // the broker's window: 20 messages unacknowledged
        receiveMaximum: 20
      }
      const peer = yield* Effect.acquireRelease(
        Effect.promise(() => connectMqttJs(broker.url, { protocolVersion: 5, reconnectPeriod: 0 })),
        (client) => Effect.promise(() => client.endAsync(true))
      )
      const held: Array<{ readonly responseTopic: string; readonly correlationData: Buffer }> = []
      peer.on("message", (_topic, _payload, packet) => {
        const { responseTopic, correlationData } = packet.properties ?? {}
        if (typeof responseTopic === "string" && Buffer.isBuffer(correlationData)) {
          held.push({ responseTopic, correlationData })
        }
      })
      yield* Effect.promise(() => peer.subscribeAsync(service, { qos: 1 }))
      // the first process: a request that times out, then the process goes (a redeploy)
      yield* Effect.scoped(Effect.gen(function*() {
        const requester = yield* MqttClient.make(options)
        const exit = yield* Effect.exit(requester.request(service, "slow", { timeout: "300 millis" }))
        assert.strictEqual(errorOf(exit)._tag, "MqttTimeoutError")
      }))
      // the responder answers while the requester is down: its session holds the response
      yield* until(() => held.length === 1)
      yield* Effect.promise(() =>
        peer.publishAsync(held[0].responseTopic, "late", {
          qos: 1,
          properties: { correlationData: held[0].correlationData }
        })
      )
      // the next process reads a subscription() stream only, and makes no request
      const requester = yield* MqttClient.make(options).pipe(Effect.provide(layer))
      assert.isTrue(requester.connection.sessionPresent)
      const stream = yield* requester.subscription(`${service}/data`, { qos: 1 })
      const total = 60
      for (let i = 1; i <= total; i++) peer.publish(`${service}/data`, String(i), { qos: 1 })
      const got = yield* guard(Stream.runCollect(Stream.take(stream, total)))
      assert.deepStrictEqual(got.map((message) => message.text), Array.from({ length: total }, (_, i) => String(i + 1)))
      assert.strictEqual(yield* requester.droppedMessages, 1)
      assert.isTrue(lines.some((line) => line.includes("effect-mqtt/responses/")), lines.join("\n"))
    }))
  })

  it.live("the timeout covers the wait for the SUBACK (broker frozen): MqttTimeoutError in time; after the thaw the next request is answered", () =>
    Effect.scoped(Effect.gen(function*() {
      const broker = yield* mosquitto()
      const requester = yield* pair(broker.url)
      broker.kill("SIGSTOP")
      const timedOut = yield* guard(
        Effect.exit(requester.request(`rq/${run}/echo`, "frozen", { timeout: "1 second" }))
      ).pipe(Effect.ensuring(Effect.sync(() => broker.kill("SIGCONT"))))
      const error = errorOf(timedOut)
      assert.strictEqual(error._tag, "MqttTimeoutError")
      const reply = yield* guard(requester.request(`rq/${run}/echo`, "thawed", { timeout: "10 seconds" }))
      assert.strictEqual(reply.text, "re thawed")
    })))
})
