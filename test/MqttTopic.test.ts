/**
 * Schema-typed topics: patterns (filters, parameter extraction with `{rest...}` tails and the `$` rule,
 * parameter validation), codecs (JSON, UTF-8 text, bytes, a Schema transformation from bytes), and the
 * operations end to end against a private Mosquitto and the test broker with the same assertions: round trips,
 * invalid parameters refused before anything is sent, each decode failure policy, every incoming queue kind,
 * typed request/respond over MQTT 5.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, Metric, Option, Schema, SchemaGetter, Stream } from "effect"
import { IncomingQueue, MqttClient, type MqttError, MqttMessage, MqttTestBroker, MqttTopic } from "effect-mqtt"
import * as Crypto from "node:crypto"
import { type Backend, type BrokerUnderTest, mosquittoBackend, testBrokerBackend } from "./support/brokers.ts"
import { type MosquittoHandle, startMosquitto } from "./support/Mosquitto.ts"
import { guard } from "./support/peers.ts"

const runId = Crypto.randomBytes(3).toString("hex")
let count = 0
const unique = (name: string) => `${name}${runId}x${++count}`

const errorOf = <A, E>(exit: Exit.Exit<A, E>): E => {
  if (Exit.isSuccess(exit)) return assert.fail("expected a failure, got a success")
  const failure = exit.cause.reasons.find((reason) => reason._tag === "Fail")
  if (failure === undefined || failure._tag !== "Fail") return assert.fail(`expected a typed failure: ${exit.cause}`)
  return failure.error
}

const messageOn = (topic: string, payload: Uint8Array | string) =>
  new MqttMessage.MqttMessage(topic, typeof payload === "string" ? Buffer.from(payload) : payload, 0, false, false)

const Celsius = Schema.Struct({ celsius: Schema.Number })

// ---------------------------------------------------------------------------------------------------------------
// patterns
// ---------------------------------------------------------------------------------------------------------------

describe("patterns", () => {
  it("a pattern gives its filter and parameter names", () => {
    const topic = MqttTopic.make("sites/{site}/sensors/{sensor}/{path...}", Celsius)
    assert.strictEqual(topic.filter, "sites/+/sensors/+/#")
    assert.deepStrictEqual(topic.params, ["site", "sensor", "path"])
    assert.isUndefined(topic.problem)
    assert.strictEqual(MqttTopic.make("plain/topic", Celsius).filter, "plain/topic")
  })

  it("the parameters and the payload are typed from the declaration", () => {
    const topic = MqttTopic.make("sites/{site}/logs/{path...}", Celsius)
    const params: MqttTopic.Params<typeof topic> = { site: "a", path: ["b"] }
    const value: MqttTopic.Type<typeof topic> = { celsius: 1 }
    // @ts-expect-error: a parameter the pattern does not have
    const wrongName: MqttTopic.Params<typeof topic> = { site: "a", path: [], other: "x" }
    // @ts-expect-error: a tail is an array of levels
    const wrongTail: MqttTopic.Params<typeof topic> = { site: "a", path: "b/c" }
    // @ts-expect-error: the payload type comes from the Schema
    const wrongValue: MqttTopic.Type<typeof topic> = { celsius: "1" }
    // @ts-expect-error: the text codec needs a Schema that decodes from a string
    MqttTopic.make("t", Celsius, { codec: "text" })
    // @ts-expect-error: the bytes codec needs a Schema that decodes from a Uint8Array
    MqttTopic.make("t", Schema.String, { codec: "bytes" })
    assert.deepStrictEqual([params, value, wrongName, wrongTail, wrongValue].length, 5)
  })

  it("match extracts the parameters; a tail gets the remaining levels, empty ones included, [] for the parent", () => {
    const topic = MqttTopic.make("logs/{app}/{path...}", Schema.String, { codec: "text" })
    assert.deepStrictEqual(
      MqttTopic.match(topic, "logs/api/http/errors"),
      Option.some({ app: "api", path: ["http", "errors"] })
    )
    assert.deepStrictEqual(MqttTopic.match(topic, "logs/api"), Option.some({ app: "api", path: [] }))
    assert.deepStrictEqual(MqttTopic.match(topic, "logs/api/"), Option.some({ app: "api", path: [""] }))
    assert.deepStrictEqual(MqttTopic.match(topic, "logs//a//b"), Option.some({ app: "", path: ["a", "", "b"] }))
    assert.deepStrictEqual(MqttTopic.match(topic, "metrics/api/x"), Option.none())
    assert.deepStrictEqual(MqttTopic.match(topic, "logs"), Option.none())
  })

  it("a pattern that starts with a parameter matches no topic that starts with $; a literal $ level does", () => {
    const status = MqttTopic.make("{site}/status", Schema.String, { codec: "text" })
    const everything = MqttTopic.make("{all...}", Schema.String, { codec: "text" })
    const sys = MqttTopic.make("$SYS/{stat...}", Schema.String, { codec: "text" })
    assert.deepStrictEqual(MqttTopic.match(status, "$SYS/status"), Option.none())
    assert.deepStrictEqual(MqttTopic.match(status, "plant/status"), Option.some({ site: "plant" }))
    assert.deepStrictEqual(MqttTopic.match(everything, "$SYS/uptime"), Option.none())
    assert.deepStrictEqual(MqttTopic.match(everything, "a/b"), Option.some({ all: ["a", "b"] }))
    assert.deepStrictEqual(MqttTopic.match(sys, "$SYS/broker/uptime"), Option.some({ stat: ["broker", "uptime"] }))
  })

  it("invalid patterns say why, and every operation fails with TopicParamsError", () => {
    const problems = [
      "",
      "a/+/b",
      "a/#",
      "a/{x}/{x}",
      "a/{rest...}/b",
      "a/x{y}",
      "a/{1x}",
      "$share/group/a",
      "a/\u0000"
    ].map((pattern) => MqttTopic.make(pattern, Celsius).problem)
    for (const problem of problems) assert.isString(problem)
    const invalid = MqttTopic.make("a/{x}/{x}", Celsius)
    const error = errorOf(Effect.runSyncExit(MqttTopic.format(invalid, { x: "1" })))
    assert.deepStrictEqual([error._tag, error.param], ["TopicParamsError", ""])
    assert.match(error.message, /appears twice/)
  })

  it.effect("with an invalid pattern, publish, subscribe, request and respond fail before anything is sent", () =>
    Effect.gen(function*() {
      const broker = yield* MqttTestBroker.MqttTestBroker
      const client = yield* MqttClient.MqttClient
      const invalid = MqttTopic.make("a/{x}/{x}", Celsius, { reply: Celsius })
      const failures = [
        errorOf(yield* Effect.exit(MqttTopic.publish(client, invalid, { x: "1" }, { celsius: 1 })))._tag,
        errorOf(yield* Effect.exit(Effect.scoped(MqttTopic.subscribe(client, invalid))))._tag,
        errorOf(yield* Effect.exit(MqttTopic.request(client, invalid, { x: "1" }, { celsius: 1 })))._tag,
        errorOf(yield* Effect.exit(MqttTopic.respond(client, invalid, () => Effect.succeed({ celsius: 1 }))))._tag
      ]
      assert.deepStrictEqual(failures, Array(4).fill("TopicParamsError"))
      assert.deepStrictEqual(yield* broker.published(), [])
      assert.deepStrictEqual((yield* broker.clients).flatMap((c) => c.subscriptions), [])
    }).pipe(Effect.provide(MqttTestBroker.layerWithClient({ protocolVersion: 5 }))))

  it("format refuses an empty parameter, one with /, + or #, a non-string, and a tail level likewise", () => {
    const topic = MqttTopic.make("a/{id}/{rest...}", Celsius)
    const refused = (params: any) => errorOf(Effect.runSyncExit(MqttTopic.format(topic, params)))
    for (const id of ["", "x/y", "x+", "#", 42, undefined]) {
      const error = refused({ id, rest: [] })
      assert.deepStrictEqual([error._tag, error.param], ["TopicParamsError", "id"])
    }
    for (const rest of [["ok", ""], ["a/b"], ["+"], "not-an-array"]) {
      assert.strictEqual(refused({ id: "ok", rest }).param, "rest")
    }
    assert.strictEqual(Effect.runSync(MqttTopic.format(topic, { id: "x", rest: [] })), "a/x")
    assert.strictEqual(Effect.runSync(MqttTopic.format(topic, { id: "x", rest: ["y", "z"] })), "a/x/y/z")
  })

  it("format refuses a first level made by a parameter that starts with $: the topic's own filter would not match it [MQTT-4.7.2-1]", () => {
    const status = MqttTopic.make("{site}/status", Schema.String, { codec: "text" })
    const everything = MqttTopic.make("{all...}", Schema.String, { codec: "text" })
    const refused = (topic: MqttTopic.Any, params: any) => errorOf(Effect.runSyncExit(MqttTopic.format(topic, params)))
    const error = refused(status, { site: "$x" })
    assert.deepStrictEqual([error._tag, error.param], ["TopicParamsError", "site"])
    assert.match(error.message, /"\+\/status" does not match a topic that starts with "\$"/)
    assert.strictEqual(refused(everything, { all: ["$SYS", "uptime"] }).param, "all")
    // not the first level, or a literal first level: the filter matches the name
    assert.strictEqual(Effect.runSync(MqttTopic.format(status, { site: "x$" })), "x$/status")
    assert.strictEqual(Effect.runSync(MqttTopic.format(everything, { all: ["a", "$b"] })), "a/$b")
    const sys = MqttTopic.make("$SYS/{stat}", Schema.String, { codec: "text" })
    assert.strictEqual(Effect.runSync(MqttTopic.format(sys, { stat: "$uptime" })), "$SYS/$uptime")
  })

  it.effect("publish with a first-level parameter that starts with $ fails before anything is sent", () =>
    Effect.gen(function*() {
      const broker = yield* MqttTestBroker.MqttTestBroker
      const client = yield* MqttClient.MqttClient
      const status = MqttTopic.make("{site}/status", Schema.String, { codec: "text" })
      const error = errorOf(yield* Effect.exit(MqttTopic.publish(client, status, { site: "$x" }, "up")))
      assert.deepStrictEqual([error._tag, (error as MqttTopic.TopicParamsError).param], ["TopicParamsError", "site"])
      assert.deepStrictEqual(yield* broker.published(), [])
    }).pipe(Effect.provide(MqttTestBroker.layerWithClient({ protocolVersion: 5 }))))
})

// ---------------------------------------------------------------------------------------------------------------
// codecs
// ---------------------------------------------------------------------------------------------------------------

describe("codecs", () => {
  it("json: a Schema over the parsed JSON; bad JSON, bad UTF-8 and a value the Schema refuses do not decode", () => {
    const topic = MqttTopic.make("t/{id}", Schema.Struct({ at: Schema.DateFromString, n: Schema.Number }))
    const bytes = Effect.runSync(MqttTopic.encode(topic, { at: new Date(0), n: 1 }))
    assert.strictEqual(Buffer.from(bytes).toString(), `{"at":"1970-01-01T00:00:00.000Z","n":1}`)
    const received = Effect.runSync(MqttTopic.decode(topic, messageOn("t/x", bytes)))
    assert.deepStrictEqual([received.params, received.payload.at.getTime(), received.payload.n], [{ id: "x" }, 0, 1])
    for (const bad of ["{not json", `{"at":"1970-01-01T00:00:00.000Z","n":"one"}`, Uint8Array.of(0x7b, 0xff, 0x7d)]) {
      const error = errorOf(Effect.runSyncExit(MqttTopic.decode(topic, messageOn("t/x", bad))))
      assert.deepStrictEqual([error._tag, error.reason, error.topic], ["TopicDecodeError", "payload", "t/x"])
      assert.isDefined(error.issue)
    }
    const wrongTopic = errorOf(Effect.runSyncExit(MqttTopic.decode(topic, messageOn("u/x", bytes))))
    assert.deepStrictEqual([wrongTopic.reason, wrongTopic.issue], ["topic", undefined])
    const encodeError = errorOf(Effect.runSyncExit(MqttTopic.encode(topic, { at: new Date(0), n: "x" as never })))
    assert.strictEqual(encodeError._tag, "TopicEncodeError")
  })

  it("text: UTF-8 text through a Schema from string; bytes: the raw bytes or any transformation from them", () => {
    const level = MqttTopic.make("tanks/{tank}/level", Schema.NumberFromString, { codec: "text" })
    assert.strictEqual(Buffer.from(Effect.runSync(MqttTopic.encode(level, 0.75))).toString(), "0.75")
    assert.strictEqual(Effect.runSync(MqttTopic.decode(level, messageOn("tanks/a/level", "12.5"))).payload, 12.5)
    const raw = MqttTopic.make("raw/{id}", Schema.Uint8Array, { codec: "bytes" })
    const all = Uint8Array.from({ length: 256 }, (_, i) => i)
    assert.deepStrictEqual(Effect.runSync(MqttTopic.decode(raw, messageOn("raw/a", all))).payload, all)
    // a transformation from bytes: a big-endian uint16
    const Uint16 = Schema.Uint8Array.pipe(Schema.decodeTo(Schema.Number, {
      decode: SchemaGetter.transform((b: Uint8Array) => (b[0] << 8) | b[1]),
      encode: SchemaGetter.transform((n: number) => Uint8Array.of(n >> 8, n & 0xff))
    }))
    const counter = MqttTopic.make("counters/{id}", Uint16, { codec: "bytes" })
    assert.deepStrictEqual(Array.from(Effect.runSync(MqttTopic.encode(counter, 513))), [2, 1])
    assert.strictEqual(
      Effect.runSync(MqttTopic.decode(counter, messageOn("counters/a", Uint8Array.of(1, 2)))).payload,
      258
    )
  })
})

// ---------------------------------------------------------------------------------------------------------------
// end to end, against Mosquitto and the test broker
// ---------------------------------------------------------------------------------------------------------------

let mosquitto: MosquittoHandle
beforeAll(async () => {
  mosquitto = await startMosquitto()
})
afterAll(() => mosquitto?.dispose())

const backends: ReadonlyArray<Backend> = [mosquittoBackend(() => mosquitto), testBrokerBackend]

const take = <A, E, R>(stream: Stream.Stream<A, E, R>, n: number) =>
  guard(Effect.map(Stream.runCollect(Stream.take(stream, n)), (chunk) => Array.from(chunk)))

const suite = (backend: Backend) => {
  const withClients = <A, E>(
    version: 4 | 5,
    f: (clients: {
      readonly broker: BrokerUnderTest
      readonly connect: (options?: MqttClient.Options) => ReturnType<BrokerUnderTest["client"]>
    }) => Effect.Effect<A, E, any>
  ) =>
    Effect.flatMap(
      backend.shared(),
      (broker) => f({ broker, connect: (options) => broker.client({ protocolVersion: version, ...options }) })
    )

  for (const version of [4, 5] as const) {
    describe(`MQTT ${version === 4 ? "3.1.1" : "5"}`, () => {
      it.live("JSON round trip: parameters and payload come back typed, a {rest...} tail too", () =>
        withClients(version, ({ connect }) =>
          Effect.gen(function*() {
            const p = unique("json")
            const Reading = MqttTopic.make(
              `${p}/{site}/{path...}`,
              Schema.Struct({ celsius: Schema.Number, at: Schema.DateFromString })
            )
            const subscriber = yield* connect()
            const publisher = yield* connect()
            const readings = yield* MqttTopic.subscribe(subscriber, Reading, { qos: 1 })
            yield* MqttTopic.publish(publisher, Reading, { site: "plant", path: ["hall", "north"] }, {
              celsius: 21.5,
              at: new Date(1000)
            }, { qos: 1 })
            yield* MqttTopic.publish(
              publisher,
              Reading,
              { site: "depot", path: [] },
              { celsius: -3, at: new Date(0) },
              {
                qos: 1
              }
            )
            const received = yield* take(readings, 2)
            assert.deepStrictEqual(received.map((r) => [r.params, r.payload.celsius, r.payload.at.getTime()]), [
              [{ site: "plant", path: ["hall", "north"] }, 21.5, 1000],
              [{ site: "depot", path: [] }, -3, 0]
            ])
            assert.deepStrictEqual(received.map((r) => [r.message.topic, r.message.qos]), [
              [`${p}/plant/hall/north`, 1],
              [`${p}/depot`, 1]
            ])
          })))

      it.live("manual acknowledgement: a message onDecodeError skips is acknowledged (it holds back no later one), so a resumed session does not send it again", () =>
        withClients(version, ({ connect }) =>
          Effect.gen(function*() {
            const p = unique("manual-skip")
            const Count = MqttTopic.make(`${p}/{id}`, Schema.Struct({ n: Schema.Number }))
            const options: MqttClient.Options = {
              clientId: p.replace(/\W/g, "").slice(-20),
              cleanStart: false,
              ...(version === 5 ? { sessionExpiryInterval: 60 } : {}),
              acknowledgement: "manual"
            }
            const publisher = yield* connect()
            const first = yield* Effect.scoped(Effect.gen(function*() {
              const client = yield* connect(options)
              const counts = yield* MqttTopic.subscribe(client, Count, { qos: 1, onDecodeError: "skip" })
              for (const payload of [`{"n":1}`, "not json", `{"n":2}`]) {
                yield* publisher.publish(`${p}/a`, payload, { qos: 1 })
              }
              const taken = yield* take(counts, 2)
              for (const received of taken) yield* received.message.ack
              return taken.map((r) => r.payload.n)
            }))
            assert.deepStrictEqual(first, [1, 2])
            const next = yield* Effect.scoped(Effect.gen(function*() {
              const client = yield* connect(options)
              const counts = yield* MqttTopic.subscribe(client, Count, { qos: 1, onDecodeError: "skip" })
              yield* publisher.publish(`${p}/a`, `{"n":3}`, { qos: 1 })
              return (yield* take(counts, 1)).map((r) => r.payload.n)
            }))
            assert.deepStrictEqual(next, [3])
          })))

      it.live("bytes round trip: every byte value, and an empty payload, arrive intact", () =>
        withClients(version, ({ connect }) =>
          Effect.gen(function*() {
            const p = unique("bytes")
            const Blob = MqttTopic.make(`${p}/{id}`, Schema.Uint8Array, { codec: "bytes" })
            const client = yield* connect()
            const blobs = yield* MqttTopic.subscribe(client, Blob, { qos: 2 })
            const all = Uint8Array.from({ length: 256 }, (_, i) => i)
            yield* MqttTopic.publish(client, Blob, { id: "all" }, all, { qos: 2 })
            yield* MqttTopic.publish(client, Blob, { id: "empty" }, new Uint8Array(0), { qos: 2 })
            const received = yield* take(blobs, 2)
            assert.deepStrictEqual(received.map((r) => [r.params.id, Array.from(r.payload)]), [
              ["all", Array.from(all)],
              ["empty", []]
            ])
          })))

      it.live("a wildcard-first pattern receives no topic that starts with $", () =>
        withClients(version, ({ connect }) =>
          Effect.gen(function*() {
            const p = unique("dollar")
            const Status = MqttTopic.make(`{site}/${p}`, Schema.String, { codec: "text" })
            const client = yield* connect()
            const statuses = yield* MqttTopic.subscribe(client, Status, { qos: 1 })
            yield* client.publish(`$site/${p}`, "hidden", { qos: 1 })
            yield* client.publish(`plant/${p}`, "seen", { qos: 1 })
            const [first] = yield* take(statuses, 1)
            assert.deepStrictEqual([first.params, first.payload], [{ site: "plant" }, "seen"])
          })))

      it.live("invalid parameters and values the Schema refuses fail before anything is sent", () =>
        withClients(version, ({ connect }) =>
          Effect.gen(function*() {
            const p = unique("refused")
            const Reading = MqttTopic.make(`${p}/{site}`, Celsius)
            const client = yield* connect()
            const everything = yield* client.subscription(`${p}/#`, { qos: 1 })
            for (const site of ["a/b", "+", "#", ""]) {
              const error = errorOf(yield* Effect.exit(MqttTopic.publish(client, Reading, { site }, { celsius: 1 })))
              assert.deepStrictEqual([error._tag, (error as MqttTopic.TopicParamsError).param], [
                "TopicParamsError",
                "site"
              ])
            }
            const badValue = errorOf(
              yield* Effect.exit(MqttTopic.publish(client, Reading, { site: "ok" }, { celsius: "hot" } as never))
            )
            assert.strictEqual(badValue._tag, "TopicEncodeError")
            // nothing of the above reached the broker: the first message is the marker
            yield* client.publish(`${p}/marker`, "marker", { qos: 1 })
            const [first] = yield* take(everything, 1)
            assert.strictEqual(first.topic, `${p}/marker`)
          })))

      it.live("decode failure policy fail: the stream fails with TopicDecodeError, the topic and the issue", () =>
        withClients(version, ({ connect }) =>
          Effect.gen(function*() {
            const p = unique("fail")
            const Reading = MqttTopic.make(`${p}/{site}`, Celsius)
            const client = yield* connect()
            const readings = yield* MqttTopic.subscribe(client, Reading, { qos: 1 })
            yield* client.publish(`${p}/a`, `{"celsius":1}`, { qos: 1 })
            yield* client.publish(`${p}/b`, `{"celsius":"warm"}`, { qos: 1 })
            const received: Array<number> = []
            const exit = yield* guard(Effect.exit(
              Stream.runForEach(readings, (r) => Effect.sync(() => received.push(r.payload.celsius)))
            ))
            const error = errorOf(exit) as MqttTopic.TopicDecodeError
            assert.deepStrictEqual(received, [1])
            assert.deepStrictEqual([error._tag, error.reason, error.topic, error.pattern], [
              "TopicDecodeError",
              "payload",
              `${p}/b`,
              `${p}/{site}`
            ])
            assert.match(String(error.message), /celsius/)
            assert.strictEqual(error.mqttMessage.text, `{"celsius":"warm"}`)
          })))

      it.live("decode failure policy skip: bad messages are dropped and counted, the stream goes on", () =>
        withClients(version, ({ connect }) =>
          Effect.gen(function*() {
            const p = unique("skip")
            const Reading = MqttTopic.make(`${p}/{site}`, Celsius)
            const client = yield* connect()
            const readings = yield* MqttTopic.subscribe(client, Reading, { qos: 1, onDecodeError: "skip" })
            for (const payload of [`{"celsius":1}`, "garbage", `{"celsius":2}`, `{"kelvin":3}`, `{"celsius":3}`]) {
              yield* client.publish(`${p}/x`, payload, { qos: 1 })
            }
            const received = yield* take(readings, 3)
            assert.deepStrictEqual(received.map((r) => r.payload.celsius), [1, 2, 3])
            assert.strictEqual(yield* MqttTopic.decodeFailureCount(Reading), 2)
            assert.strictEqual(yield* MqttTopic.decodeFailureCount(Reading, "fail"), 0)
          }).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))))

      it.live("decode failure policy deadLetter: the raw message goes to the handler, the stream goes on", () =>
        withClients(version, ({ connect }) =>
          Effect.gen(function*() {
            const p = unique("dead")
            const Reading = MqttTopic.make(`${p}/{site}`, Celsius)
            const client = yield* connect()
            const dead: Array<string> = []
            const readings = yield* MqttTopic.subscribe(client, Reading, {
              qos: 1,
              onDecodeError: {
                deadLetter: (error) =>
                  Effect.sync(() => dead.push(`${error.topic} ${error.reason} ${error.mqttMessage.text}`))
              }
            })
            yield* client.publish(`${p}/a`, "not json", { qos: 1 })
            yield* client.publish(`${p}/b`, `{"celsius":7}`, { qos: 1 })
            const [good] = yield* take(readings, 1)
            assert.strictEqual(good.payload.celsius, 7)
            assert.deepStrictEqual(dead, [`${p}/a payload not json`])
          })))

      it.live("typed subscriptions work with every incoming queue kind", () =>
        withClients(version, ({ connect }) =>
          Effect.gen(function*() {
            const queues: ReadonlyArray<IncomingQueue.Strategy> = [
              IncomingQueue.bounded(2),
              IncomingQueue.sliding(100),
              IncomingQueue.dropping(100),
              IncomingQueue.unbounded,
              IncomingQueue.priority({ capacity: 100, priority: (m) => (m.topic.endsWith("urgent") ? 0 : 1) })
            ]
            for (const queue of queues) {
              const p = unique(queue._tag)
              const Reading = MqttTopic.make(`${p}/{site}`, Celsius)
              const client = yield* connect({ queue })
              // another client publishes: a client publishing to itself with a full bounded queue would stop
              // reading its socket, and so never see its own PUBACKs
              const publisher = yield* connect()
              const readings = yield* MqttTopic.subscribe(client, Reading, { qos: 1 })
              for (let i = 1; i <= 5; i++) {
                yield* MqttTopic.publish(publisher, Reading, { site: `s${i}` }, { celsius: i }, { qos: 1 })
              }
              const received = yield* take(readings, 5)
              assert.deepStrictEqual(received.map((r) => [r.params.site, r.payload.celsius]).sort(), [
                ["s1", 1],
                ["s2", 2],
                ["s3", 3],
                ["s4", 4],
                ["s5", 5]
              ], queue._tag)
            }
          })))

      it.live("the service form uses the MqttClient of the context; share subscribes to $share/{group}/", () =>
        withClients(version, ({ connect }) =>
          Effect.gen(function*() {
            const p = unique("service")
            const Job = MqttTopic.make(`${p}/jobs/{id}`, Schema.String, { codec: "text" })
            const worker = yield* connect()
            const jobs = yield* MqttTopic.subscribe(worker, Job, { qos: 1, share: "workers" })
            const client = yield* connect()
            yield* MqttTopic.publish(Job, { id: "42" }, "build", { qos: 1 }).pipe(
              Effect.provideService(MqttClient.MqttClient, client)
            )
            const [job] = yield* take(jobs, 1)
            assert.deepStrictEqual([job.params.id, job.payload], ["42", "build"])
          })))
    })
  }

  describe("MQTT 5 request/respond", () => {
    const Add = (p: string) =>
      MqttTopic.make(`${p}/calc/{precision}/add`, Schema.Tuple([Schema.Number, Schema.Number]), { reply: Celsius })

    it.live("typed request and respond: the request decoded, the reply encoded and decoded", () =>
      withClients(5, ({ connect }) =>
        Effect.gen(function*() {
          const topic = Add(unique("rpc"))
          const responder = yield* connect()
          const requester = yield* connect()
          const seen: Array<string> = []
          yield* Effect.forkScoped(MqttTopic.respond(responder, topic, ({ params, payload: [a, b] }) =>
            Effect.sync(() => {
              seen.push(params.precision)
              return { celsius: params.precision === "exact" ? a + b : Math.round(a + b) }
            }), { concurrency: 2 }))
          yield* guard(Effect.gen(function*() {
            // the responder subscribes in its fiber: retry the first request until it is there
            return yield* MqttTopic.request(requester, topic, { precision: "exact" }, [1.25, 2], {
              timeout: "200 millis"
            }).pipe(
              Effect.retry({
                while: (e) =>
                  e._tag === "MqttTimeoutError",
                times: 50
              })
            )
          }))
          const answers = yield* Effect.all([
            MqttTopic.request(requester, topic, { precision: "exact" }, [1.25, 2]),
            MqttTopic.request(requester, topic, { precision: "rounded" }, [1.25, 2])
          ], { concurrency: "unbounded" })
          assert.deepStrictEqual(answers, [{ celsius: 3.25 }, { celsius: 3 }])
          assert.includeMembers(seen, ["exact", "rounded"])
        })))

    it.live("respond's `subscribed`: once it completes, the first request is answered without a retry; a pattern that makes no filter fails it", () =>
      withClients(5, ({ connect }) =>
        Effect.gen(function*() {
          const topic = Add(unique("rpcready"))
          const responder = yield* connect()
          const requester = yield* connect()
          const subscribed = yield* Deferred.make<void, MqttError.MqttError | MqttTopic.TopicParamsError>()
          yield* Effect.forkScoped(
            MqttTopic.respond(responder, topic, ({ payload: [a, b] }) => Effect.succeed({ celsius: a + b }), {
              subscribed
            })
          )
          yield* Deferred.await(subscribed)
          const answer = yield* guard(
            MqttTopic.request(requester, topic, { precision: "exact" }, [1, 2], { timeout: "5 seconds" })
          )
          assert.deepStrictEqual(answer, { celsius: 3 })
          // a pattern that makes no filter: the responder fails before subscribing, and so does `subscribed`
          const invalid = MqttTopic.make("a/{x}/{x}", Celsius, { reply: Celsius })
          const never = yield* Deferred.make<void, MqttError.MqttError | MqttTopic.TopicParamsError>()
          yield* Effect.exit(MqttTopic.respond(responder, invalid, () => Effect.succeed({ celsius: 1 }), {
            subscribed: never
          }))
          assert.strictEqual((yield* Effect.flip(Deferred.await(never)))._tag, "TopicParamsError")
        })))

    it.live("a request that does not decode gets no reply and goes to the dead letter handler; the responder goes on", () =>
      withClients(5, ({ connect }) =>
        Effect.gen(function*() {
          const p = unique("rpcbad")
          const topic = Add(p)
          const responder = yield* connect()
          const requester = yield* connect()
          const dead: Array<string> = []
          yield* Effect.forkScoped(
            MqttTopic.respond(responder, topic, ({ payload: [a, b] }) => Effect.succeed({ celsius: a + b }), {
              onDecodeError: { deadLetter: (error) => Effect.sync(() => dead.push(error.mqttMessage.text)) }
            })
          )
          yield* guard(
            MqttTopic.request(requester, topic, { precision: "x" }, [0, 0], { timeout: "200 millis" }).pipe(
              Effect.retry({ while: (e) => e._tag === "MqttTimeoutError", times: 50 })
            )
          )
          // an untyped request with a bad payload gets no reply: it times out, and the responder goes on
          const timedOut = errorOf(
            yield* Effect.exit(requester.request(`${p}/calc/x/add`, "[1,", { timeout: "300 millis" }))
          )
          assert.strictEqual(timedOut._tag, "MqttTimeoutError")
          assert.deepStrictEqual(yield* MqttTopic.request(requester, topic, { precision: "x" }, [2, 3]), { celsius: 5 })
          // the responder handles requests in order: the bad one was handled before the reply above was sent
          assert.deepStrictEqual(dead, ["[1,"])
        })))

    it.live("a reply that does not decode with the reply Schema fails the request with reason reply", () =>
      withClients(5, ({ connect }) =>
        Effect.gen(function*() {
          const p = unique("rpcreply")
          const topic = Add(p)
          const responder = yield* connect()
          const requester = yield* connect()
          const ready = yield* Effect.forkScoped(
            responder.respond(`${p}/calc/+/add`, () => Effect.succeed(`{"kelvin":1}`))
          )
          const exit = yield* guard(Effect.exit(
            MqttTopic.request(requester, topic, { precision: "x" }, [1, 2], { timeout: "200 millis" }).pipe(
              Effect.retry({ while: (e) => e._tag === "MqttTimeoutError", times: 50 })
            )
          ))
          const error = errorOf(exit) as MqttTopic.TopicDecodeError
          assert.deepStrictEqual([error._tag, error.reason, error.mqttMessage.text], [
            "TopicDecodeError",
            "reply",
            `{"kelvin":1}`
          ])
          yield* Fiber.interrupt(ready)
        })))
  })
}

for (const backend of backends) {
  describe(`typed topics on ${backend.name}`, () => suite(backend))
}
