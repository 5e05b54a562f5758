/**
 * One conformance suite, run against the in-memory test broker (`MqttTestBroker`) and against a private
 * Mosquitto process with the same assertions: topic matching, retained messages, QoS 0/1/2 delivery, `$share`
 * groups, wills, No Local, Retain Handling and Retain As Published, persistent sessions, restarts.
 *
 * Every wait ends on an event (a message, a log line of the broker); absence is shown by a later marker
 * message arriving first. The clients are effect-mqtt clients in both cases.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Effect, Stream } from "effect"
import type { MqttClient, MqttMessage } from "effect-mqtt"
import * as Crypto from "node:crypto"
import { type Backend, type BrokerUnderTest, mosquittoBackend, testBrokerBackend } from "./support/brokers.ts"
import { type MosquittoHandle, startMosquitto } from "./support/Mosquitto.ts"
import { guard } from "./support/peers.ts"

type Version = 4 | 5
const versions: ReadonlyArray<Version> = [4, 5]
const label = (version: Version) => version === 4 ? "MQTT 3.1.1" : "MQTT 5"
const qosLevels = [0, 1, 2] as const

const runId = Crypto.randomBytes(3).toString("hex")
let count = 0
/** A topic level (and client identifier part) no other test uses. */
const unique = (name: string) => `${name}${runId}x${++count}`

const take = <E>(stream: Stream.Stream<MqttMessage.MqttMessage, E>, n: number) =>
  guard(Effect.map(Stream.runCollect(Stream.take(stream, n)), (chunk) => Array.from(chunk)))

const describeMessage = (m: MqttMessage.MqttMessage) => `${m.topic} ${m.text} q${m.qos}${m.retain ? " retained" : ""}`

let mosquitto: MosquittoHandle
beforeAll(async () => {
  mosquitto = await startMosquitto()
})
afterAll(() => mosquitto?.dispose())

const backends: ReadonlyArray<Backend> = [testBrokerBackend, mosquittoBackend(() => mosquitto)]

const suite = (backend: Backend, version: Version) => {
  const connect = (broker: BrokerUnderTest, options?: MqttClient.Options) =>
    broker.client({ protocolVersion: version, ...options })

  it.live("+ matches one level, # the parent and every level below, a wildcard-first filter no $ topic", () =>
    Effect.gen(function*() {
      const broker = yield* backend.shared()
      const p = unique("match")
      const subscriber = yield* connect(broker)
      const publisher = yield* connect(broker)
      yield* subscriber.subscribe([`${p}/sport/+/player1`, `${p}/sport/#`, `+/${p}/dollar`, `$x/${p}/dollar`], {
        qos: 1
      })
      const topics = [
        `${p}/sport/tennis/player1`,
        `${p}/sport`,
        `${p}/sport/tennis/player2`,
        `${p}/other`,
        `$x/${p}/dollar`,
        `y/${p}/dollar`,
        `${p}/sport/end`
      ]
      for (const topic of topics) yield* publisher.publish(topic, "m", { qos: 1 })
      // MQTT 5 (as Mosquitto): one copy per matching subscription; 3.1.1: one copy per client
      const expected = [
        `${p}/sport/tennis/player1`,
        ...(version === 5 ? [`${p}/sport/tennis/player1`] : []),
        `${p}/sport`,
        `${p}/sport/tennis/player2`,
        `$x/${p}/dollar`,
        `y/${p}/dollar`,
        `${p}/sport/end`
      ]
      const received = yield* take(subscriber.messages, expected.length)
      assert.deepStrictEqual(received.map((m) => m.topic), expected)
    }))

  it.live("a QoS p publish to a QoS s subscription is delivered once at QoS min(p, s), payload intact", () =>
    Effect.gen(function*() {
      const broker = yield* backend.shared()
      const p = unique("qos")
      const subscriber = yield* connect(broker)
      const publisher = yield* connect(broker)
      for (const s of qosLevels) yield* subscriber.subscribe(`${p}/s${s}/+`, { qos: s })
      const binary = Uint8Array.from({ length: 256 }, (_, i) => i)
      for (const s of qosLevels) {
        for (const pub of qosLevels) {
          // a second message after the first: a duplicate of the first would show up in its place
          yield* publisher.publish(`${p}/s${s}/p${pub}`, binary, { qos: pub })
          yield* publisher.publish(`${p}/s${s}/p${pub}`, "next", { qos: pub })
        }
      }
      const received = yield* take(subscriber.messages, 18)
      for (const s of qosLevels) {
        for (const pub of qosLevels) {
          const topic = `${p}/s${s}/p${pub}`
          const mine = received.filter((m) => m.topic === topic)
          assert.deepStrictEqual(mine.map((m) => [m.qos, m.dup]), [[Math.min(s, pub), false], [
            Math.min(s, pub),
            false
          ]])
          assert.deepStrictEqual(Array.from(mine[0].payload), Array.from(binary), topic)
          assert.strictEqual(mine[1].text, "next")
        }
      }
    }))

  it.live("retained messages reach later subscribers with retain set; live ones without; an empty one clears", () =>
    Effect.gen(function*() {
      const broker = yield* backend.shared()
      const p = unique("retained")
      const publisher = yield* connect(broker)
      yield* publisher.publish(`${p}/r/a`, "A", { qos: 1, retain: true })
      yield* publisher.publish(`${p}/r/b`, "B", { qos: 1, retain: true })
      const early = yield* connect(broker)
      yield* early.subscribe(`${p}/r/+`, { qos: 1 })
      const retained = yield* take(early.messages, 2)
      assert.deepStrictEqual(retained.map(describeMessage).sort(), [
        `${p}/r/a A q1 retained`,
        `${p}/r/b B q1 retained`
      ])
      yield* publisher.publish(`${p}/r/a`, "A2", { qos: 1, retain: true })
      yield* publisher.publish(`${p}/r/b`, "", { qos: 1, retain: true })
      const live = yield* take(early.messages, 2)
      assert.deepStrictEqual(live.map(describeMessage), [`${p}/r/a A2 q1`, `${p}/r/b  q1`])
      const late = yield* connect(broker)
      yield* late.subscribe(`${p}/r/+`, { qos: 1 })
      yield* publisher.publish(`${p}/r/end`, "marker", { qos: 1 })
      const afterClear = yield* take(late.messages, 2)
      assert.deepStrictEqual(afterClear.map(describeMessage), [`${p}/r/a A2 q1 retained`, `${p}/r/end marker q1`])
    }))

  it.live("$share: each message goes to one member of the group; a plain subscriber gets them all", () =>
    Effect.gen(function*() {
      const broker = yield* backend.shared()
      const p = unique("share")
      const members = [yield* connect(broker), yield* connect(broker)]
      const plain = yield* connect(broker)
      for (const member of members) yield* member.subscribe(`$share/g${p}/${p}/jobs`, { qos: 1 })
      yield* plain.subscribe(`${p}/jobs`, { qos: 1 })
      const publisher = yield* connect(broker)
      const jobs = Array.from({ length: 10 }, (_, i) => `job ${i}`)
      for (const job of jobs) yield* publisher.publish(`${p}/jobs`, job, { qos: 1 })
      const all = yield* take(plain.messages, jobs.length)
      assert.deepStrictEqual(all.map((m) => m.text), jobs)
      const shared = yield* guard(Stream.runCollect(Stream.take(
        Stream.merge(
          Stream.map(members[0].messages, (m) => ({ member: "first", text: m.text })),
          Stream.map(members[1].messages, (m) => ({ member: "second", text: m.text }))
        ),
        jobs.length
      )))
      assert.deepStrictEqual(shared.map((s) => s.text).sort(), [...jobs].sort())
      assert.isTrue(shared.some((s) => s.member === "first") && shared.some((s) => s.member === "second"))
    }))

  it.live("a dropped connection publishes the will; a normal DISCONNECT does not", () =>
    Effect.gen(function*() {
      const broker = yield* backend.shared()
      const p = unique("will")
      const watcher = yield* connect(broker)
      yield* watcher.subscribe(`${p}/will/#`, { qos: 1 })
      const will = (name: string): MqttClient.Options["will"] => ({
        topic: `${p}/will/${name}`,
        payload: "gone",
        qos: 1
      })
      const dropped = unique("dropped")
      yield* connect(broker, { clientId: dropped, will: will("dropped"), reconnect: false })
      yield* broker.drop(dropped)
      const [first] = yield* take(watcher.messages, 1)
      assert.strictEqual(describeMessage(first), `${p}/will/dropped gone q1`)
      const polite = unique("polite")
      yield* Effect.scoped(connect(broker, { clientId: polite, will: will("polite") }))
      yield* broker.awaitGone(polite)
      const publisher = yield* connect(broker)
      yield* publisher.publish(`${p}/will/marker`, "marker", { qos: 1 })
      const [next] = yield* take(watcher.messages, 1)
      assert.strictEqual(describeMessage(next), `${p}/will/marker marker q1`)
    }))

  it.live("a persistent session keeps subscriptions and queues QoS 1 and 2 (not QoS 0) while offline", () =>
    Effect.gen(function*() {
      const broker = yield* backend.shared()
      const p = unique("session")
      const clientId = unique("persistent")
      const session: MqttClient.Options = version === 5
        ? { clientId, cleanStart: false, sessionExpiryInterval: 300 }
        : { clientId, cleanSession: false }
      yield* Effect.scoped(Effect.gen(function*() {
        const first = yield* connect(broker, session)
        yield* first.subscribe(`${p}/#`, { qos: 2 })
      }))
      yield* broker.awaitGone(clientId)
      const publisher = yield* connect(broker)
      for (const qos of qosLevels) yield* publisher.publish(`${p}/q${qos}`, `offline ${qos}`, { qos })
      const again = yield* connect(broker, session)
      assert.isTrue(again.connection.sessionPresent)
      yield* publisher.publish(`${p}/end`, "marker", { qos: 1 })
      const received = yield* take(again.messages, 3)
      assert.deepStrictEqual(received.map(describeMessage), [
        `${p}/q1 offline 1 q1`,
        `${p}/q2 offline 2 q2`,
        `${p}/end marker q1`
      ])
    }))

  if (version === 5) {
    it.live("No Local: a client does not receive its own publishes on that subscription", () =>
      Effect.gen(function*() {
        const broker = yield* backend.shared()
        const p = unique("nolocal")
        const self = yield* connect(broker)
        const other = yield* connect(broker)
        yield* self.subscribe(`${p}/t`, { qos: 1, noLocal: true })
        yield* self.publish(`${p}/t`, "mine", { qos: 1 })
        yield* other.publish(`${p}/t`, "theirs", { qos: 1 })
        const [first] = yield* take(self.messages, 1)
        assert.strictEqual(first.text, "theirs")
      }))

    it.live("Retain Handling 0/1/2 and Retain As Published", () =>
      Effect.gen(function*() {
        const broker = yield* backend.shared()
        const p = unique("rh")
        const publisher = yield* connect(broker)
        yield* publisher.publish(`${p}/r`, "kept", { qos: 1, retain: true })
        const client = yield* connect(broker)
        // 0: sent on subscribe; 1 on an existing subscription: not sent; 1 on a new one: sent; 2: never
        yield* client.subscribe(`${p}/r`, { qos: 1, retainHandling: 0 })
        yield* client.subscribe(`${p}/r`, { qos: 1, retainHandling: 1 })
        yield* client.subscribe(`${p}/+`, { qos: 1, retainHandling: 1 })
        yield* client.subscribe(`${p}/#`, { qos: 1, retainHandling: 2 })
        // a live retained publish: retain kept only with Retain As Published
        const rap = yield* connect(broker)
        yield* rap.subscribe(`${p}/live`, { qos: 1, retainAsPublished: true })
        yield* rap.subscribe(`${p}/+`, { qos: 1, retainHandling: 2 })
        yield* publisher.publish(`${p}/live`, "now", { qos: 1, retain: true })
        yield* publisher.publish(`${p}/end`, "marker", { qos: 1 })
        // MQTT 5: a copy per matching subscription (`${p}/+` and `${p}/#` for the live ones)
        const received = yield* take(client.messages, 6)
        assert.deepStrictEqual(received.map(describeMessage), [
          `${p}/r kept q1 retained`,
          `${p}/r kept q1 retained`,
          `${p}/live now q1`,
          `${p}/live now q1`,
          `${p}/end marker q1`,
          `${p}/end marker q1`
        ])
        const rapReceived = yield* take(rap.messages, 3)
        assert.deepStrictEqual(rapReceived.map(describeMessage).sort(), [
          `${p}/end marker q1`,
          `${p}/live now q1`,
          `${p}/live now q1 retained`
        ])
      }))

    it.live("DISCONNECT with reason code 0x04 publishes the will", () =>
      Effect.gen(function*() {
        const broker = yield* backend.shared()
        const p = unique("will4")
        const watcher = yield* connect(broker)
        yield* watcher.subscribe(`${p}/will`, { qos: 1 })
        yield* Effect.scoped(
          connect(broker, { will: { topic: `${p}/will`, payload: "asked for" }, disconnect: { reasonCode: 4 } })
        )
        const [will] = yield* take(watcher.messages, 1)
        assert.strictEqual(describeMessage(will), `${p}/will asked for q0`)
      }))
  }

  it.live("a restart with persistence keeps sessions, queued messages and retained messages", () =>
    Effect.gen(function*() {
      const broker = yield* backend.dedicated({ persistence: true })
      const p = unique("restart")
      const clientId = unique("survivor")
      const session: MqttClient.Options = version === 5
        ? { clientId, cleanStart: false, sessionExpiryInterval: 300 }
        : { clientId, cleanSession: false }
      yield* Effect.scoped(Effect.gen(function*() {
        const first = yield* connect(broker, session)
        yield* first.subscribe(`${p}/#`, { qos: 1 })
      }))
      yield* broker.awaitGone(clientId)
      yield* Effect.scoped(Effect.gen(function*() {
        const publisher = yield* connect(broker)
        yield* publisher.publish(`${p}/queued`, "waiting", { qos: 1 })
        yield* publisher.publish(`${p}/kept`, "retained", { qos: 1, retain: true })
      }))
      yield* broker.restart
      const again = yield* connect(broker, session)
      assert.isTrue(again.connection.sessionPresent)
      const [queued] = yield* take(again.messages, 1)
      assert.strictEqual(describeMessage(queued), `${p}/queued waiting q1`)
      const reader = yield* connect(broker)
      yield* reader.subscribe(`${p}/kept`, { qos: 1 })
      const [kept] = yield* take(reader.messages, 1)
      assert.strictEqual(describeMessage(kept), `${p}/kept retained q1 retained`)
    }))

  it.live("a restart without persistence loses sessions and retained messages", () =>
    Effect.gen(function*() {
      const broker = yield* backend.dedicated({ persistence: false })
      const p = unique("amnesia")
      const clientId = unique("forgotten")
      const session: MqttClient.Options = version === 5
        ? { clientId, cleanStart: false, sessionExpiryInterval: 300 }
        : { clientId, cleanSession: false }
      yield* Effect.scoped(Effect.gen(function*() {
        const first = yield* connect(broker, session)
        yield* first.subscribe(`${p}/#`, { qos: 1 })
        yield* first.publish(`${p}/kept`, "retained", { qos: 1, retain: true })
      }))
      yield* broker.awaitGone(clientId)
      yield* broker.restart
      const again = yield* connect(broker, session)
      assert.isFalse(again.connection.sessionPresent)
      yield* again.subscribe(`${p}/#`, { qos: 1 })
      yield* again.publish(`${p}/end`, "marker", { qos: 1 })
      const [first] = yield* take(again.messages, 1)
      assert.strictEqual(describeMessage(first), `${p}/end marker q1`)
    }))
}

for (const backend of backends) {
  for (const version of versions) {
    describe(`${backend.name}, ${label(version)}`, () => suite(backend, version))
  }
}
