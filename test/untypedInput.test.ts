/**
 * Values of the wrong type, as untyped code (a JSON configuration, an `as any`) passes them: each is a typed
 * error before anything is sent, never a defect, a synchronous throw, or bytes on the wire. A value of the wrong
 * type once reached the shared allocation pool as `NaN` and overwrote a QoS 1 publish kept for its resend: the
 * property test below checks that no such call changes what the client sends afterwards.
 */
import { assert, describe, expect, it } from "@effect/vitest"
import { Cause, Effect, Exit, Fiber, Option, Redacted, Schema } from "effect"
import { ConsumerGroup, IncomingQueue, MqttClient, MqttError, MqttMessage, MqttTopic, Topic } from "effect-mqtt"
import * as fc from "fast-check"
import * as Bytes from "../src/internal/bytes.ts"
import * as FakeBroker from "./support/FakeBroker.ts"

const connect = (options: MqttClient.Options = {}) =>
  Effect.gen(function*() {
    const broker = yield* FakeBroker.make({ protocolVersion: options.protocolVersion ?? 4 })
    const fiber = yield* Effect.forkChild(MqttClient.make({ url: broker.url, ...options }))
    const { connection } = yield* broker.acceptAndConnack()
    const client = yield* Fiber.join(fiber)
    return { broker, client, connection }
  })

/** The exit of an effect made by `make` (a call that throws while making the effect counts as a throw). */
interface Outcome {
  readonly thrown: unknown
  readonly exit: Exit.Exit<unknown, unknown> | undefined
}

const exitOf = <A, E, R>(make: () => Effect.Effect<A, E, R>): Effect.Effect<Outcome, never, R> =>
  Effect.suspend((): Effect.Effect<Outcome, never, R> => {
    let effect: Effect.Effect<A, E, R>
    try {
      effect = make()
    } catch (error) {
      return Effect.succeed({ thrown: error, exit: undefined })
    }
    return Effect.map(Effect.exit(effect), (exit): Outcome => ({ thrown: undefined, exit }))
  })

/** The typed failure of an exit, or a description of what else it was. */
const typedFailure = (result: Outcome): unknown => {
  if (result.exit === undefined) return `threw ${String(result.thrown)}`
  if (Exit.isSuccess(result.exit)) return "succeeded"
  const failure = Cause.findErrorOption(result.exit.cause)
  return Option.isSome(failure) ? failure.value : `not a typed failure: ${Cause.pretty(result.exit.cause)}`
}

const expectInvalid = (label: string, failure: unknown, option?: string) => {
  assert(MqttError.isMqttError(failure) && MqttError.isInvalidInput(failure), `${label}: ${String(failure)}`)
  if (option !== undefined) {
    assert(failure instanceof MqttError.InvalidOptionError, `${label}: ${String(failure)}`)
    expect(failure.option, label).toBe(option)
  }
}

describe("options of the wrong type", () => {
  it.live("are InvalidOptionError naming the option, before any connection", () =>
    Effect.gen(function*() {
      const will = { topic: "w", payload: "x" }
      const cases: Array<[string, unknown, string]> = [
        ["options null", null, "options"],
        ["options a number", 5, "options"],
        ["will null", { will: null }, "will"],
        ["will.topic null", { will: { ...will, topic: null } }, "will.topic"],
        ["will.retain a string", { will: { ...will, retain: "yes" } }, "will.retain"],
        ["will.properties null", { protocolVersion: 5, will: { ...will, properties: null } }, "will.properties"],
        ["will.payload with a lone surrogate", { will: { ...will, payload: "a\ud800" } }, "will.payload"],
        ["will.payload a number", { will: { ...will, payload: 5 } }, "will.payload"],
        ["will.payload missing", { will: { topic: "w" } }, "will.payload"],
        ["password a Redacted number", { username: "u", password: Redacted.make(123456) }, "password"],
        ["password a plain string", { username: "u", password: "pw" }, "password"],
        ["username a number", { username: 5 }, "username"],
        ["cleanStart a string", { cleanStart: "no" }, "cleanStart"],
        ["topicAliases a string", { topicAliases: "no" }, "topicAliases"],
        ["retryFirstConnect a string", { retryFirstConnect: "yes" }, "retryFirstConnect"],
        ["queue null", { queue: null }, "queue"],
        ["queue of no strategy", { queue: { _tag: "Fancy", capacity: 3 } }, "queue"],
        ["a LIFO queue's overflow", { queue: { _tag: "Lifo", capacity: 3, overflow: "xx" } }, "queue"],
        [
          "a priority that is no function",
          { queue: IncomingQueue.priority({ capacity: 3, priority: 5 as never }) },
          "queue"
        ],
        ["offline null", { offline: null }, "offline"],
        ["tracing null", { tracing: null }, "tracing"],
        ["userProperties an object", { userProperties: { unit: "C" } }, "userProperties"],
        ["userProperties on 3.1.1, a bad pair", { protocolVersion: 4, userProperties: [["a"]] }, "userProperties"],
        ["responseTopicPrefix a number", { responseTopicPrefix: 5 }, "responseTopicPrefix"],
        ["credentials a string", { credentials: "token" }, "credentials"],
        ["auth.data a string", {
          protocolVersion: 5,
          auth: {
            method: "m",
            data: "s",
            onChallenge: () => 0
          }
        }, "auth.data"],
        ["tls a string", { url: "mqtts://127.0.0.1:1", tls: "yes" }, "tls"],
        ["tls.ca a number", { url: "mqtts://127.0.0.1:1", tls: { ca: 5 } }, "tls.ca"],
        ["tls.ca a list with a number", { url: "mqtts://127.0.0.1:1", tls: { ca: ["x", 5] } }, "tls.ca"],
        ["tls.key a Redacted number", { url: "mqtts://127.0.0.1:1", tls: { key: Redacted.make(5) } }, "tls.key"],
        ["transport a number", { transport: 5 }, "transport"],
        ["transport null", { transport: null }, "transport"],
        // names that are no option (MQTT.js's, a typo) would be ignored: a session thought persistent would not be
        ["MQTT.js's clean", { clean: false }, "clean"],
        ["MQTT.js's keepalive", { keepalive: 5 }, "keepalive"],
        ["MQTT.js's properties", { protocolVersion: 5, properties: { sessionExpiryInterval: 60 } }, "properties"],
        ["a typo", { sessionExpiry: 60 }, "sessionExpiry"]
      ]
      for (const [label, options, option] of cases) {
        const merged = typeof options === "object" && options !== null
          ? { url: "mqtt://127.0.0.1:1", reconnect: false, ...options }
          : options
        const result = yield* exitOf(() => MqttClient.make(merged as MqttClient.Options).pipe(Effect.scoped))
        expectInvalid(label, typedFailure(result), option)
      }
      // the message says what the option is called here
      const clean = typedFailure(
        yield* exitOf(() =>
          MqttClient.make({ url: "mqtt://127.0.0.1:1", reconnect: false, clean: false } as MqttClient.Options).pipe(
            Effect.scoped
          )
        )
      )
      assert.include(String((clean as Error).message), "cleanStart")
      // a name present with the value undefined (a spread of a wider configuration) is let through
      const spread = typedFailure(
        yield* exitOf(() =>
          MqttClient.make({ url: "mqtt://127.0.0.1:1", reconnect: false, extra: undefined } as MqttClient.Options)
            .pipe(Effect.scoped)
        )
      )
      assert.notStrictEqual((spread as { _tag?: string })._tag, "InvalidOptionError")
    }))

  it.live("a value the CONNECT cannot carry (Will Delay Interval out of range) fails before the CONNECT is sent", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5 })
      for (const willDelayInterval of [-1, 1.5, Number.NaN, 2 ** 32 + 5]) {
        const error = yield* Effect.flip(Effect.scoped(MqttClient.make({
          url: broker.url,
          protocolVersion: 5,
          reconnect: false,
          will: { topic: "w", payload: "x", properties: { willDelayInterval } }
        })))
        assert(error instanceof MqttError.InvalidOptionError, String(error))
        expect(error.reason).toMatch(/willDelayInterval/)
      }
      expect(broker.connections.length).toBe(0)
    }))
})

describe("operations given values of the wrong type", () => {
  for (const protocolVersion of [4, 5] as const) {
    it.live(`are typed errors and nothing is sent (MQTT ${protocolVersion})`, () =>
      Effect.gen(function*() {
        const { client, connection } = yield* connect({ protocolVersion, reconnect: false })
        const calls: Array<[string, () => Effect.Effect<unknown, unknown, never>]> = [
          ["publish to a number", () => client.publish(4711 as never, "x")],
          ["publish to null", () => client.publish(null as never, "x")],
          ["publish to an object", () => client.publish({} as never, "x")],
          ["publish a null payload", () => client.publish("t", null as never)],
          ["publish an object payload", () => client.publish("t", {} as never)],
          ["publish a string with a lone surrogate", () => client.publish("t", "a\udc00b")],
          ["publish with options a number", () => client.publish("t", "x", 5 as never)],
          ["publish with options a list", () => client.publish("t", "x", [1] as never)],
          ["publishAccepted to a number", () => client.publishAccepted(5 as never, "x", { qos: 1 })],
          ["subscribe null", () => client.subscribe(null as never)],
          ["subscribe undefined", () => client.subscribe(undefined as never)],
          ["subscribe [null]", () => client.subscribe([null] as never)],
          ["subscribe noLocal a string", () => client.subscribe({ filter: "a", noLocal: "y" as never })],
          ["unsubscribe null", () => client.unsubscribe(null as never)],
          ["unsubscribe [5]", () => client.unsubscribe([5] as never)],
          ["subscription null", () => Effect.scoped(client.subscription(null as never))],
          [
            "subscription with an unknown acknowledgement",
            () => Effect.scoped(client.subscription("a", { acknowledgement: "x" as never }))
          ]
        ]
        if (protocolVersion === 5) {
          calls.push(
            ["publish with properties a number", () => client.publish("t", "x", { properties: 5 as never })],
            [
              "publish with userProperties an object",
              () => client.publish("t", "x", { properties: { userProperties: { unit: "C" } as never } })
            ],
            [
              "publish with userProperties an object, inside a span",
              () =>
                client.publish("t", "x", { properties: { userProperties: { unit: "C" } as never } }).pipe(
                  Effect.withSpan("producer")
                )
            ],
            [
              "publish with payloadFormatIndicator 1 and bytes that are not UTF-8",
              () => client.publish("t", Uint8Array.of(0xff), { properties: { payloadFormatIndicator: 1 as never } })
            ]
          )
        }
        for (const [label, call] of calls) {
          expectInvalid(label, typedFailure(yield* exitOf(call)))
        }
        yield* connection.expectSilence(100)
      }))
  }

  it.live("a payload larger than MQTT allows (256 MB) is an InvalidOptionError naming the payload, unsent", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ reconnect: false })
      // a view that says it holds 300 MB: the encoder refuses it by its length, before reading a byte
      const huge = Object.defineProperty(new Uint8Array(1), "byteLength", { value: 300_000_000 })
      expectInvalid("300 MB payload", typedFailure(yield* exitOf(() => client.publish("t", huge))), "payload")
      yield* connection.expectSilence(50)
    }))

  it.live("with tracing, a null payload is a typed error, not a defect of the span", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ reconnect: false, tracing: { messages: true } })
      expectInvalid("null payload", typedFailure(yield* exitOf(() => client.publish("t", null as never))), "payload")
      yield* connection.expectSilence(50)
    }))

  it.live(
    "no call with values of the wrong type changes what the client sends afterwards (the QoS 1 publish it resends)",
    () =>
      Effect.gen(function*() {
        const junk = fc.oneof(
          fc.constantFrom<unknown>(null, undefined, Number.NaN, -1, 4711, 1.5, true, {}, [], [null], () => 1),
          fc.string(),
          fc.integer(),
          fc.object()
        )
        const samples = fc.sample(fc.tuple(junk, junk, junk), { numRuns: 150, seed: 7 })
        const broker = yield* FakeBroker.make({ protocolVersion: 5 })
        const fiber = yield* Effect.forkChild(MqttClient.make({
          url: broker.url,
          protocolVersion: 5,
          clientId: "junk",
          cleanStart: false,
          sessionExpiryInterval: 60
        }))
        const first = yield* broker.acceptAndConnack()
        const client = yield* Fiber.join(fiber)
        // kept for its resend: the broker never acknowledges it on this connection
        const pending = yield* Effect.forkChild(client.publish("orders/1", "ORIGINAL-PAYLOAD-0123456789", { qos: 1 }))
        const sent = yield* first.connection.expect("publish")
        for (const [topic, payload, options] of samples) {
          yield* exitOf(() => client.publish(topic as never, payload as never, options as never))
          yield* exitOf(() => client.publish("t", payload as never, options as never))
          // a valid filter would be subscribed, and this broker never answers a SUBSCRIBE
          if (typeof topic !== "string") yield* exitOf(() => client.subscribe(topic as never, options as never))
        }
        for (let i = 0; i < 20; i++) yield* client.publish(`telemetry/${i}`, "X".repeat(40))
        yield* first.connection.destroy
        const second = yield* broker.acceptAndConnack({ sessionPresent: true })
        const resent = yield* second.connection.expect("publish")
        expect(resent.topic).toBe("orders/1")
        expect(Buffer.from(resent.payload).toString()).toBe("ORIGINAL-PAYLOAD-0123456789")
        expect(resent.messageId).toBe(sent.messageId)
        expect(resent.dup).toBe(true)
        yield* second.connection.send({ cmd: "puback", messageId: resent.messageId!, reasonCode: 0 })
        yield* Fiber.join(pending)
      }).pipe(Effect.scoped)
  )
})

describe("pure functions given values of the wrong type", () => {
  it("match nothing rather than throw", () => {
    expect(Topic.matches(null as never, "a/#")).toBe(false)
    expect(Topic.matches("a/b", 5 as never)).toBe(false)
    expect(Topic.overlaps(null as never, "a")).toBe(false)
    expect(Topic.parseShared(5 as never)).toBeUndefined()
    expect(Topic.isValidName(null as never)).toBe(false)
    expect(Topic.isValidFilter({} as never)).toBe(false)
    const Readings = MqttTopic.make("sensors/{id}", Schema.String)
    expect(Option.isNone(MqttTopic.match(Readings, null as never))).toBe(true)
  })

  it("the allocation pool refuses a size that is not a whole number, and stays as it was", () => {
    const before = Bytes.allocate(8)
    before.set([1, 2, 3, 4, 5, 6, 7, 8])
    for (const size of [Number.NaN, -1, 1.5, undefined as never]) {
      expect(() => Bytes.allocate(size)).toThrow(RangeError)
    }
    const after = Bytes.allocate(8)
    after.fill(9)
    expect([...before]).toEqual([1, 2, 3, 4, 5, 6, 7, 8])
  })
})

describe("typed topics given values of the wrong type", () => {
  const Reading = MqttTopic.make("dev/{id}/t", Schema.Struct({ c: Schema.Number }))
  const Add = MqttTopic.make("calc/add", Schema.Tuple([Schema.Number, Schema.Number]), { reply: Schema.Number })
  /** The module as untyped code sees it: any argument of any type. */
  const untyped = MqttTopic as unknown as Record<
    "format" | "encode" | "decode" | "publish" | "subscribe" | "request" | "respond",
    (...args: ReadonlyArray<unknown>) => Effect.Effect<unknown, unknown>
  >
  const messageOn = (topic: string, payload: string) =>
    new MqttMessage.MqttMessage(topic, new TextEncoder().encode(payload), 0, false, false)
  const typedTags = ["TopicParamsError", "TopicEncodeError", "TopicDecodeError", "InvalidOptionError"]

  const expectTyped = (label: string, failure: unknown, tag?: string) => {
    const failureTag = typeof failure === "object" && failure !== null && "_tag" in failure ? failure._tag : undefined
    assert(typedTags.includes(String(failureTag)), `${label}: ${String(failure)}`)
    if (tag !== undefined) expect(failureTag, label).toBe(tag)
  }

  it("make never throws: a pattern, Schema, codec or options of the wrong type make an invalid topic", () => {
    const cases: Array<[string, () => MqttTopic.Any]> = [
      ["pattern a number", () => MqttTopic.make(5 as never, Schema.String)],
      ["pattern null", () => MqttTopic.make(null as never, Schema.String)],
      ["pattern an object", () => MqttTopic.make({} as never, Schema.String)],
      ["pattern an object without prototype", () => MqttTopic.make(Object.create(null) as never, Schema.String)],
      ["schema a number", () => MqttTopic.make("a/{x}", 5 as never)],
      ["schema null", () => MqttTopic.make("a/{x}", null as never)],
      ["an unknown codec", () => MqttTopic.make("a/{x}", Schema.String, { codec: "xml" as never })],
      ["options a number", () => MqttTopic.make("a/{x}", Schema.String, 5 as never)],
      ["reply a number", () => MqttTopic.make("a/{x}", Schema.String, { reply: 5 as never })],
      [
        "an unknown reply codec",
        () => MqttTopic.make("a/{x}", Schema.String, { reply: Schema.String, replyCodec: "q" as never })
      ]
    ]
    for (const [label, make] of cases) {
      let topic: MqttTopic.Any | undefined
      expect(() => {
        topic = make()
      }, label).not.toThrow()
      assert.isString(topic!.problem, label)
      assert.isString(topic!.pattern, label)
      expectTyped(label, typedFailure(Effect.runSync(exitOf(() => untyped.format(topic!, { x: "1" })))))
      expect(Option.isNone(MqttTopic.match(topic!, "a/1")), label).toBe(true)
      expectTyped(
        label,
        typedFailure(Effect.runSync(exitOf(() => untyped.decode(topic!, messageOn("a/1", "1")))))
      )
    }
    // a Schema that is no Schema: encode fails as well, typed
    const noSchema = MqttTopic.make("a", 5 as never)
    expectTyped("encode", typedFailure(Effect.runSync(exitOf(() => untyped.encode(noSchema, 1)))), "TopicEncodeError")
  })

  it("format, match, encode, decode and decodeFailureCount: typed errors (or nothing) for values of the wrong type", () => {
    const run = (make: () => Effect.Effect<unknown, unknown>) => typedFailure(Effect.runSync(exitOf(make)))
    for (const params of [null, undefined, 5, "id", { id: 5 }, { id: null }, { id: ["a"] }]) {
      expectTyped(`params ${String(params)}`, run(() => untyped.format(Reading, params as never)), "TopicParamsError")
    }
    for (const topic of [5, null, {}, "dev/{id}/t"]) {
      const label = `topic ${String(topic)}`
      expectTyped(label, run(() => untyped.format(topic as never, { id: "1" })), "TopicParamsError")
      expectTyped(label, run(() => untyped.encode(topic as never, { c: 1 })), "TopicEncodeError")
      expectTyped(
        label,
        run(() => untyped.decode(topic as never, messageOn("dev/1/t", "{}"))),
        "TopicDecodeError"
      )
      expect(Option.isNone(MqttTopic.match(topic as never, "dev/1/t")), label).toBe(true)
      expect(Effect.runSync(MqttTopic.decodeFailureCount(topic as never)), label).toBe(0)
    }
    for (const message of [null, 5, {}, { topic: 5, payload: "x" }]) {
      expectTyped(
        `message ${String(message)}`,
        run(() => untyped.decode(Reading, message as never)),
        "TopicDecodeError"
      )
    }
  })

  it.live("publish, subscribe, request and respond: typed errors before anything is sent", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ protocolVersion: 5, reconnect: false })
      const invalid = MqttTopic.make(5 as never, Schema.String, { reply: Schema.String })
      const handler = () => Effect.succeed(1)
      const calls: Array<[string, () => Effect.Effect<unknown, unknown, never>]> = [
        ["publish to a pattern that is a number", () => untyped.publish(client, invalid, {}, "x")],
        ["publish to no topic", () => untyped.publish(client, 5 as never, {}, "x")],
        ["publish with params a number", () => untyped.publish(client, Reading, 5 as never, { c: 1 })],
        ["publish with options a number", () => untyped.publish(client, Reading, { id: "1" }, { c: 1 }, 5 as never)],
        ["publish with no client", () => untyped.publish(5 as never, Reading, { id: "1" }, { c: 1 })],
        ["subscribe to no topic", () => Effect.scoped(untyped.subscribe(client, null as never))],
        ["subscribe to an invalid topic", () => Effect.scoped(untyped.subscribe(client, invalid))],
        ["subscribe with options a number", () => Effect.scoped(untyped.subscribe(client, Reading, 5 as never))],
        [
          "subscribe with a share a number",
          () => Effect.scoped(untyped.subscribe(client, Reading, { share: 5 as never }))
        ],
        [
          "subscribe with an unknown onDecodeError",
          () => Effect.scoped(untyped.subscribe(client, Reading, { onDecodeError: "ignore" as never }))
        ],
        [
          "request on a topic without a reply",
          () => untyped.request(client, Reading as never, { id: "1" }, { c: 1 })
        ],
        ["request with options a number", () => untyped.request(client, Add, {}, [1, 2], 5 as never)],
        [
          "request with properties a string",
          () => untyped.request(client, Add, {}, [1, 2], { properties: "p" as never })
        ],
        ["respond on a topic without a reply", () => untyped.respond(client, Reading as never, handler)],
        ["respond with a handler a number", () => untyped.respond(client, Add, 5 as never)],
        ["respond with options a number", () => untyped.respond(client, Add, handler, 5 as never)],
        [
          "respond with `subscribed` a number",
          () => untyped.respond(client, Add, handler, { subscribed: 5 as never })
        ],
        [
          "respond with an unknown onDecodeError",
          () => untyped.respond(client, Add, handler, { onDecodeError: 5 as never })
        ],
        ["respond with qos a string", () => untyped.respond(client, Add, handler, { qos: "1" as never })]
      ]
      for (const [label, call] of calls) {
        const failure = typedFailure(yield* exitOf(call))
        expectTyped(label, failure)
      }
      yield* connection.expectSilence(100)
    }))
})

describe("values the other entry points would send changed, ignore, or throw at", () => {
  const tagOf = (failure: unknown) =>
    typeof failure === "object" && failure !== null && "_tag" in failure ? failure._tag : String(failure)

  it.live("typed topics refuse on encode a lone surrogate (text) and a number that is not finite (JSON)", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ protocolVersion: 5, reconnect: false })
      const Text = MqttTopic.make("dev/{id}/text", Schema.String, { codec: "text" })
      const Reading = MqttTopic.make("dev/{id}/t", Schema.Struct({ c: Schema.Number }))
      const Values = MqttTopic.make("dev/{id}/v", Schema.Array(Schema.Number))
      const calls: Array<[string, () => Effect.Effect<unknown, unknown, never>]> = [
        ["publish text with a lone surrogate", () => MqttTopic.publish(client, Text, { id: "a" }, "x\ud800")],
        ["encode text with a lone surrogate", () => MqttTopic.encode(Text, "\udc00x")],
        ["publish JSON with NaN", () => MqttTopic.publish(client, Reading, { id: "a" }, { c: Number.NaN })],
        ["encode JSON with Infinity", () => MqttTopic.encode(Reading, { c: Number.POSITIVE_INFINITY })],
        ["publish JSON with -Infinity in a list", () => MqttTopic.publish(client, Values, { id: "a" }, [1, -Infinity])]
      ]
      for (const [label, call] of calls) {
        expect(tagOf(typedFailure(yield* exitOf(call))), label).toBe("TopicEncodeError")
      }
      yield* connection.expectSilence(100)
      // JSON text escapes a lone surrogate (valid JSON that decodes back to the same string): sent as it is
      const Json = MqttTopic.make("dev/{id}/j", Schema.String)
      const bytes = yield* MqttTopic.encode(Json, "a\ud800")
      expect(new TextDecoder().decode(bytes)).toBe(JSON.stringify("a\ud800"))
      const decoded = yield* MqttTopic.decode(Json, messageOn("dev/1/j", bytes))
      expect(decoded.payload).toBe("a\ud800")
    }))

  const messageOn = (topic: string, payload: Uint8Array) => new MqttMessage.MqttMessage(topic, payload, 0, false, false)

  it.live("ConsumerGroup: options, client and handler of the wrong type are InvalidOptionError, nothing connects", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5 })
      const base = { client: { url: broker.url, reconnect: false as const }, group: "g", filter: "a/#", member: "m1" }
      const handler = () => Effect.void
      const untyped = ConsumerGroup as unknown as Record<
        "run" | "adopt",
        (...args: ReadonlyArray<unknown>) => Effect.Effect<unknown, unknown>
      >
      // a pure function: it cannot fail, so it gives options that MqttClient.make refuses, and never throws
      // (first: a client of the wrong type would be made with the default URL, another broker than this test's)
      for (const options of [null, 5, { ...base, group: 5 }, { ...base, client: null }, { ...base, client: 5 }]) {
        let memberOptions: MqttClient.Options | undefined
        expect(() => {
          memberOptions = ConsumerGroup.memberOptions(options as never)
        }).not.toThrow()
        const label = `memberOptions(${JSON.stringify(options)})`
        // refused also when spread into other options (with a URL): never a plain client
        const made = yield* exitOf(() =>
          Effect.scoped(MqttClient.make({ ...memberOptions!, url: "mqtt://127.0.0.1:1", reconnect: false }))
        )
        expectInvalid(label, typedFailure(made), "clientId")
      }
      const calls: Array<[string, () => Effect.Effect<unknown, unknown>, string]> = [
        ["run with options null", () => untyped.run(null, handler), "options"],
        ["run with options a number", () => untyped.run(5, handler), "options"],
        ["run with a client null (the default URL)", () => untyped.run({ ...base, client: null }, handler), "client"],
        ["run with a client a number", () => untyped.run({ ...base, client: 5 }, handler), "client"],
        ["run with a handler null", () => untyped.run(base, null), "handler"],
        ["run with a handler a string", () => untyped.run(base, "h"), "handler"],
        ["adopt with options null", () => untyped.adopt(null, "m2", handler), "options"],
        ["adopt with a handler a number", () => untyped.adopt(base, "m2", 5), "handler"]
      ]
      for (const [label, call, option] of calls) {
        expectInvalid(label, typedFailure(yield* exitOf(() => Effect.timeout(call(), "1 second"))), option)
      }
      expect(broker.connections.length).toBe(0)
    }))

  it.effect("IncomingQueue.make refuses what MqttClient.make refuses as a queue", () =>
    Effect.gen(function*() {
      const cases: Array<[string, unknown]> = [
        ["null", null],
        ["a number", 5],
        ["bounded(-1)", IncomingQueue.bounded(-1)],
        ["bounded(NaN)", IncomingQueue.bounded(Number.NaN)],
        ["sliding(1.5)", IncomingQueue.sliding(1.5)],
        ["dropping(0)", IncomingQueue.dropping(0)],
        ["lifo with an unknown overflow", IncomingQueue.lifo(3, { overflow: "x" as never })],
        ["priority without an order", IncomingQueue.priority({ capacity: 3, priority: 5 as never })],
        ["no strategy", { _tag: "Fancy", capacity: 3 }]
      ]
      for (const [label, strategy] of cases) {
        expectInvalid(label, typedFailure(yield* exitOf(() => IncomingQueue.make(strategy as never))), "queue")
      }
      const queue = yield* IncomingQueue.make<number, never>(IncomingQueue.unbounded)
      expect(yield* queue.size).toBe(0)
    }))

  for (const protocolVersion of [4, 5] as const) {
    it.live(`subscribe, subscription and unsubscribe refuse options that are no object (MQTT ${protocolVersion})`, () =>
      Effect.gen(function*() {
        const { client, connection } = yield* connect({ protocolVersion, reconnect: false })
        const calls: Array<[string, () => Effect.Effect<unknown, unknown, never>]> = []
        for (const options of [5, "x", true, [1], null]) {
          const label = JSON.stringify(options)
          calls.push(
            [`subscribe("a", ${label})`, () => client.subscribe("a", options as never)],
            [`subscribe(["a", "b"], ${label})`, () => client.subscribe(["a", "b"], options as never)],
            [`subscription("a", ${label})`, () => Effect.scoped(client.subscription("a", options as never))],
            [`unsubscribe("a", ${label})`, () => client.unsubscribe("a", options as never)]
          )
        }
        for (const [label, call] of calls) {
          // the fake broker never answers a SUBSCRIBE: a call that sends one times out
          expectInvalid(label, typedFailure(yield* exitOf(() => Effect.timeout(call(), "1 second"))), "options")
        }
        // MQTT.js's object of filters: an InvalidOptionError that says what the shape is here
        const mqttjs = typedFailure(
          yield* exitOf(() => Effect.timeout(client.subscribe({ "a/b": { qos: 1 } } as never), "1 second"))
        )
        expectInvalid("subscribe({ [filter]: { qos } })", mqttjs, "filters")
        assert.include((mqttjs as Error).message, "[{ filter, qos }]")
        yield* connection.expectSilence(100)
      }))
  }
})
