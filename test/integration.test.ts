/**
 * Integration tests: the effect-mqtt client against real Mosquitto processes that these tests start (never the
 * shared broker on 1883), with independent peers: `mosquitto_pub` / `mosquitto_sub`, MQTT.js, and an
 * effect-mqtt client in a child process.
 *
 * Every wait ends on an event (a SUBACK, a CONNACK, a line printed by a process, the n-th message of a stream,
 * a line in the broker's log); the timeouts only guard against a hang. No assertion is about time.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Cause, Deferred, Effect, Exit, Fiber, Layer, Option, Redacted, Schedule, Scope, Stream } from "effect"
import { IncomingQueue, MqttClient, type MqttMessage } from "effect-mqtt"
import { connect as connectMqttJs, type IClientOptions } from "mqtt"
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Util from "node:util"
import { CLOSED_ON_LIMIT } from "../src/internal/outgoing.ts"
import {
  mosquitto,
  type MosquittoHandle,
  mosquittoPub,
  mosquittoSub,
  requireMosquittoClients,
  startMosquitto
} from "./support/Mosquitto.ts"
import { fromPromise, guard, mqttJsMessages, SOURCE_CONDITION, willClient } from "./support/peers.ts"

// ---------------------------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------------------------

type Version = 4 | 5
const versions: ReadonlyArray<Version> = [4, 5]
const label = (version: Version) => version === 4 ? "MQTT 3.1.1" : "MQTT 5"
/** The arguments of mosquitto_pub / mosquitto_sub that choose the broker, the protocol and the topic. */
const cliTarget = (broker: MosquittoHandle, version: Version, topic: string) => [
  ...["-p", String(broker.port)],
  ...["-V", version === 4 ? "mqttv311" : "mqttv5"],
  ...["-t", topic]
]
const qosLevels = [0, 1, 2] as const

/** Only a guard against a hang: every wait in these tests ends on an event, not on a delay. */
const runId = Crypto.randomBytes(3).toString("hex")
let topicCount = 0
/** A topic no other test (nor a previous run against a reused broker) publishes to. */
const uniqueTopic = (name: string) => `it-${runId}/${name}/${++topicCount}`

const connect = (broker: MosquittoHandle, options?: MqttClient.Options) =>
  MqttClient.make({ url: broker.url, ...options })

const take = (client: MqttClient.Client, n: number) => guard(Stream.runCollect(Stream.take(client.messages, n)))

const range = (n: number) => Array.from({ length: n }, (_, i) => i)

const sameBytes = (actual: Uint8Array, expected: Uint8Array, what: string) => {
  assert.strictEqual(actual.byteLength, expected.byteLength, `${what}: length`)
  assert.isTrue(Buffer.from(actual).equals(Buffer.from(expected)), `${what}: bytes differ`)
}

/** The typed failure of an exit; fails the test on a success or a defect. */
const errorOf = <A, E>(exit: Exit.Exit<A, E>): E => {
  if (Exit.isSuccess(exit)) return assert.fail("expected a failure, got a success")
  const error = Exit.findErrorOption(exit)
  if (Option.isNone(error)) return assert.fail(`expected a typed failure, got ${Cause.pretty(exit.cause)}`)
  return error.value
}

/** Waits until the broker's log has a line matching `pattern` (the broker logs each connection's end). */
const logLine = (broker: MosquittoHandle, pattern: RegExp) =>
  guard(Effect.gen(function*() {
    for (;;) {
      const line = broker.logs().split("\n").find((l) => pattern.test(l))
      if (line !== undefined) return line
      yield* Effect.sleep("20 millis")
    }
  }))

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")

/** Any of the lines Mosquitto logs when a connection ends ("Client x disconnected.", "Client x closed its
 * connection.", "Socket error on client x, disconnecting."). */
const endOfConnection = (clientId: string) => new RegExp(`[Cc]lient ${escape(clientId)}\\b.*(disconnect|closed)`)

const allByteValues = Uint8Array.from(range(256))

const tempDir = () => {
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-mqtt-it-"))
  return { dir, remove: () => Fs.rmSync(dir, { recursive: true, force: true }) }
}

/**
 * A TCP proxy to the broker on `port` (one connection at a time) that writes bytes to the broker as the client's
 * (`inject`), and closes the client's side as the broker closes its own: it ends it once what the broker sent is
 * written, and a packet the client sends then is answered with a reset, as by the broker's closed socket.
 */
const injectingProxy = (port: number) =>
  Effect.acquireRelease(
    Effect.promise(() =>
      new Promise<{ url: string; inject: (bytes: Uint8Array) => void; close: () => void }>((resolve) => {
        let upstream: Net.Socket | undefined
        const sockets = new Set<Net.Socket>()
        const server = Net.createServer((client) => {
          const broker = Net.connect(port, "127.0.0.1")
          upstream = broker
          sockets.add(client).add(broker)
          client.on("error", () => {})
          broker.on("error", () => {})
          client.on("data", (chunk) => broker.write(chunk))
          broker.on("data", (chunk) => client.write(chunk))
          broker.on("close", () => client.destroySoon())
          client.on("close", () => broker.destroy())
        })
        server.listen(0, "127.0.0.1", () =>
          resolve({
            url: `mqtt://127.0.0.1:${(server.address() as Net.AddressInfo).port}`,
            inject: (bytes) => upstream!.write(bytes),
            close: () => {
              server.close()
              for (const socket of sockets) socket.destroy()
            }
          }))
      })
    ),
    (proxy) => Effect.sync(proxy.close)
  )

// ---- MQTT.js -------------------------------------------------------------------------------------------------

/** An MQTT.js client, connected (CONNACK received), force-closed when the scope closes. */
const mqttJs = (url: string, options: IClientOptions) =>
  Effect.acquireRelease(
    fromPromise(() =>
      new Promise<ReturnType<typeof connectMqttJs>>((resolve, reject) => {
        const client = connectMqttJs(url, { reconnectPeriod: 0, connectTimeout: 10_000, ...options })
        client.once("connect", () => resolve(client))
        // an error after the CONNACK fails the test where it matters (a publish, a subscribe)
        client.on("error", reject)
      })
    ),
    (client) => Effect.promise(() => client.endAsync(true))
  )

// ---- a client in a child process -----------------------------------------------------------------------------

const RELEASE_CLIENT = Path.join(import.meta.dirname, "fixtures", "release-client.ts")

const exited = (child: ChildProcess) =>
  fromPromise(() =>
    child.exitCode !== null || child.signalCode !== null ?
      Promise.resolve() :
      new Promise<void>((resolve) => child.once("exit", () => resolve()))
  )

// ---------------------------------------------------------------------------------------------------------------
// one private broker for most tests
// ---------------------------------------------------------------------------------------------------------------

describe("effect-mqtt against a private Mosquitto", () => {
  let broker: MosquittoHandle
  beforeAll(async () => {
    requireMosquittoClients()
    // Mosquitto drops QoS 1/2 messages beyond max_queued_messages (default 1,000) per client: the back-pressure
    // tests queue 2,000 for a subscriber that does not read.
    broker = await startMosquitto({ protocolConfig: "max_queued_messages 10000" })
  })
  afterAll(() => broker?.dispose())

  for (const version of versions) {
    describe(`${label(version)}: publish and subscribe between two effect-mqtt clients`, () => {
      for (const pubQos of qosLevels) {
        for (const subQos of qosLevels) {
          const expected = Math.min(pubQos, subQos)
          it.live(
            `a QoS ${pubQos} publish to a QoS ${subQos} subscription is delivered once, with QoS ${expected}`,
            () =>
              Effect.gen(function*() {
                const topic = uniqueTopic("qos")
                const subscriber = yield* connect(broker, { protocolVersion: version })
                const publisher = yield* connect(broker, { protocolVersion: version })
                const granted = yield* subscriber.subscribe(topic, { qos: subQos })
                assert.deepStrictEqual(granted, [{ filter: topic, qos: subQos, reasonCode: subQos }])
                yield* publisher.publish(topic, `QoS ${pubQos}`, { qos: pubQos })
                // a second message at the same QoS from the same publisher comes after the first: a duplicate
                // of the first would show up in its place
                yield* publisher.publish(topic, "next", { qos: pubQos })
                const [first, second] = yield* take(subscriber, 2)
                assert.deepStrictEqual(
                  [first, second].map((m) => [m.topic, m.text, m.qos, m.retain, m.dup]),
                  [[topic, `QoS ${pubQos}`, expected, false, false], [topic, "next", expected, false, false]]
                )
              })
          )
        }
      }

      it.live("binary, UTF-8, empty and 1 MB payloads arrive byte for byte at QoS 0, 1 and 2", () =>
        Effect.gen(function*() {
          const base = uniqueTopic("payloads")
          const payloads: Record<string, Uint8Array | string> = {
            binary: allByteValues,
            utf8: "héllo wörld € 😀",
            empty: new Uint8Array(0),
            large: Crypto.randomBytes(1024 * 1024)
          }
          const subscriber = yield* connect(broker, { protocolVersion: version })
          const publisher = yield* connect(broker, { protocolVersion: version })
          yield* subscriber.subscribe(`${base}/#`, { qos: 2 })
          for (const qos of qosLevels) {
            for (const [name, payload] of Object.entries(payloads)) {
              yield* publisher.publish(`${base}/${name}/${qos}`, payload, { qos })
            }
          }
          const received = yield* take(subscriber, 3 * Object.keys(payloads).length)
          const byTopic = new Map(received.map((m) => [m.topic, m]))
          for (const qos of qosLevels) {
            for (const [name, payload] of Object.entries(payloads)) {
              const message = byTopic.get(`${base}/${name}/${qos}`)
              assert.isDefined(message, `${name} at QoS ${qos} was not received`)
              assert.strictEqual(message!.qos, qos)
              sameBytes(
                message!.payload,
                typeof payload === "string" ? Buffer.from(payload) : payload,
                `${name} at QoS ${qos}`
              )
            }
          }
          assert.strictEqual(byTopic.get(`${base}/utf8/0`)!.text, payloads.utf8)
        }))

      it.live("one SUBSCRIBE with three filters grants each its own QoS, and each delivers at that QoS", () =>
        Effect.gen(function*() {
          const base = uniqueTopic("filters")
          const subscriber = yield* connect(broker, { protocolVersion: version })
          const publisher = yield* connect(broker, { protocolVersion: version })
          const granted = yield* subscriber.subscribe([
            { filter: `${base}/zero`, qos: 0 },
            { filter: `${base}/one`, qos: 1 },
            { filter: `${base}/two/+`, qos: 2 }
          ])
          assert.deepStrictEqual(granted, [
            { filter: `${base}/zero`, qos: 0, reasonCode: 0 },
            { filter: `${base}/one`, qos: 1, reasonCode: 1 },
            { filter: `${base}/two/+`, qos: 2, reasonCode: 2 }
          ])
          for (const topic of [`${base}/zero`, `${base}/one`, `${base}/two/x`]) {
            yield* publisher.publish(topic, topic, { qos: 2 })
          }
          const received = yield* take(subscriber, 3)
          assert.deepStrictEqual(
            received.map((m) => [m.topic, m.qos]).sort(),
            [[`${base}/one`, 1], [`${base}/two/x`, 2], [`${base}/zero`, 0]]
          )
        }))

      it.live("after unsubscribe a filter delivers nothing while another filter of the client still delivers", () =>
        Effect.gen(function*() {
          const base = uniqueTopic("unsubscribe")
          const subscriber = yield* connect(broker, { protocolVersion: version })
          const publisher = yield* connect(broker, { protocolVersion: version })
          yield* subscriber.subscribe([`${base}/gone`, `${base}/kept`], { qos: 1 })
          yield* publisher.publish(`${base}/gone`, "before unsubscribe", { qos: 1 })
          assert.deepStrictEqual((yield* take(subscriber, 1)).map((m) => m.text), ["before unsubscribe"])

          yield* subscriber.unsubscribe(`${base}/gone`)
          // published first: had it been delivered, it would come before the message on the kept filter
          yield* publisher.publish(`${base}/gone`, "after unsubscribe", { qos: 1 })
          yield* publisher.publish(`${base}/kept`, "still subscribed", { qos: 1 })
          const [next] = yield* take(subscriber, 1)
          assert.deepStrictEqual([next.topic, next.text], [`${base}/kept`, "still subscribed"])
        }))
    })

    describe(`${label(version)}: retained messages`, () => {
      it.live("a retained message reaches a later subscriber with retain true, a current one with retain false", () =>
        Effect.gen(function*() {
          const topic = uniqueTopic("retained")
          const publisher = yield* connect(broker, { protocolVersion: version })
          const current = yield* connect(broker, { protocolVersion: version })
          yield* current.subscribe(topic, { qos: 1 })
          yield* publisher.publish(topic, "kept", { qos: 1, retain: true })
          const [live] = yield* take(current, 1)
          assert.deepStrictEqual([live.text, live.retain], ["kept", false])

          const later = yield* connect(broker, { protocolVersion: version })
          yield* later.subscribe(topic, { qos: 1 })
          const [retained] = yield* take(later, 1)
          assert.deepStrictEqual([retained.topic, retained.text, retained.qos, retained.retain], [
            topic,
            "kept",
            1,
            true
          ])
          yield* publisher.publish(topic, "", { qos: 1, retain: true })
        }))

      it.live("an empty retained publish clears the retained message: a later subscriber gets none", () =>
        Effect.gen(function*() {
          const topic = uniqueTopic("cleared")
          const publisher = yield* connect(broker, { protocolVersion: version })
          yield* publisher.publish(topic, "old", { qos: 1, retain: true })
          const probe = yield* connect(broker, { protocolVersion: version })
          yield* probe.subscribe(topic, { qos: 1 })
          assert.deepStrictEqual((yield* take(probe, 1)).map((m) => [m.text, m.retain]), [["old", true]])

          yield* publisher.publish(topic, new Uint8Array(0), { qos: 1, retain: true })
          const later = yield* connect(broker, { protocolVersion: version })
          yield* later.subscribe(topic, { qos: 1 })
          // a retained message is sent right after the SUBACK, so it would come before this one
          yield* publisher.publish(topic, "marker", { qos: 1 })
          const [first] = yield* take(later, 1)
          assert.deepStrictEqual([first.text, first.retain], ["marker", false])
        }))
    })

    describe(`${label(version)}: will`, () => {
      it.live("a client killed with SIGKILL (no DISCONNECT) has its will published to subscribers", () =>
        Effect.gen(function*() {
          const topic = uniqueTopic("will/killed")
          const subscriber = yield* connect(broker, { protocolVersion: version })
          yield* subscriber.subscribe(topic, { qos: 1 })
          const child = yield* willClient({
            url: broker.url,
            protocolVersion: version,
            will: {
              topic,
              payload: "went away",
              qos: 1,
              properties: { contentType: "text/plain", userProperties: [["cause", "SIGKILL"]] }
            }
          })
          child.kill("SIGKILL")
          yield* exited(child)
          const [will] = yield* take(subscriber, 1)
          assert.deepStrictEqual([will.topic, will.text, will.qos, will.retain], [topic, "went away", 1, false])
          if (version === 5) {
            assert.strictEqual(will.properties.contentType, "text/plain")
            assert.deepStrictEqual(will.properties.userProperties, [["cause", "SIGKILL"]])
          } else {
            assert.deepStrictEqual(will.properties, {})
          }
        }))

      it.live("a client closed normally sends DISCONNECT, so its will is not published", () =>
        Effect.gen(function*() {
          const base = uniqueTopic("will/closed")
          const clientId = `it-${runId}-closed-${version}`
          const subscriber = yield* connect(broker, { protocolVersion: version })
          yield* subscriber.subscribe(`${base}/#`, { qos: 1 })
          yield* Effect.scoped(
            connect(broker, {
              protocolVersion: version,
              clientId,
              will: { topic: `${base}/will`, payload: "must not be sent", qos: 1 }
            })
          )
          // the broker logs how the connection ended: "disconnected." only after a DISCONNECT packet
          const line = yield* logLine(broker, endOfConnection(clientId))
          assert.match(line, new RegExp(`Client ${escape(clientId)} disconnected\\.`))
          const publisher = yield* connect(broker, { protocolVersion: version })
          yield* publisher.publish(`${base}/marker`, "marker", { qos: 1 })
          const [first] = yield* take(subscriber, 1)
          assert.deepStrictEqual([first.topic, first.text], [`${base}/marker`, "marker"])
        }))
    })

    describe(`${label(version)}: interoperability`, () => {
      it.live("mosquitto_pub messages at QoS 0, 1 and 2 (text, binary, empty) arrive with their QoS and bytes", () =>
        Effect.gen(function*() {
          const base = uniqueTopic("from-mosquitto-pub")
          const files = tempDir()
          yield* Effect.addFinalizer(() => Effect.sync(files.remove))
          const binaryFile = Path.join(files.dir, "binary")
          Fs.writeFileSync(binaryFile, allByteValues)
          const subscriber = yield* connect(broker, { protocolVersion: version })
          yield* subscriber.subscribe(`${base}/#`, { qos: 2 })
          const sent: Array<[topic: string, qos: number, payload: Uint8Array, args: Array<string>]> = []
          for (const qos of qosLevels) {
            sent.push([`${base}/text/${qos}`, qos, Buffer.from(`text at QoS ${qos}`), ["-m", `text at QoS ${qos}`]])
          }
          sent.push([`${base}/binary`, 1, allByteValues, ["-f", binaryFile]])
          sent.push([`${base}/empty`, 2, new Uint8Array(0), ["-n"]])
          for (const [topic, qos, , payloadArgs] of sent) {
            const args = [...cliTarget(broker, version, topic), "-q", String(qos), ...payloadArgs]
            const result = yield* fromPromise(() => mosquittoPub(args))
            assert.strictEqual(result.code, 0, result.stderr)
          }
          const byTopic = new Map((yield* take(subscriber, sent.length)).map((m) => [m.topic, m]))
          for (const [topic, qos, payload] of sent) {
            const message = byTopic.get(topic)
            assert.isDefined(message, `${topic} was not received`)
            assert.strictEqual(message!.qos, qos, topic)
            sameBytes(message!.payload, payload, topic)
          }
        }))

      if (version === 5) {
        it.live("mosquitto_pub's user properties and content type arrive in message.properties", () =>
          Effect.gen(function*() {
            const topic = uniqueTopic("from-mosquitto-pub/properties")
            const subscriber = yield* connect(broker, { protocolVersion: 5 })
            yield* subscriber.subscribe(topic, { qos: 1 })
            const publishProperty = (...words: Array<string>) => ["-D", "publish", ...words]
            const args = [
              ...cliTarget(broker, 5, topic),
              ...["-q", "1", "-m", "{}"],
              ...publishProperty("user-property", "a", "b"),
              ...publishProperty("user-property", "trace", "42"),
              ...publishProperty("content-type", "application/json")
            ]
            const result = yield* fromPromise(() => mosquittoPub(args))
            assert.strictEqual(result.code, 0, result.stderr)
            const [message] = yield* take(subscriber, 1)
            assert.strictEqual(message.properties.contentType, "application/json")
            assert.deepStrictEqual([...(message.properties.userProperties ?? [])].sort(), [["a", "b"], ["trace", "42"]])
          }))
      }

      it.live("effect-mqtt publishes at QoS 0, 1 and 2 reach mosquitto_sub with their QoS and bytes", () =>
        Effect.gen(function*() {
          const base = uniqueTopic("to-mosquitto-sub")
          const sub = mosquittoSub([...cliTarget(broker, version, `${base}/#`), "-q", "2"], { expectedMessages: 4 })
          yield* Effect.addFinalizer(() => Effect.sync(() => sub.kill("SIGKILL")))
          yield* fromPromise(() => sub.ready)
          const publisher = yield* connect(broker, { protocolVersion: version })
          const sent: Array<[topic: string, qos: MqttMessage.QoS, payload: Uint8Array]> = [
            [`${base}/0`, 0, Buffer.from("QoS 0 from effect-mqtt")],
            [`${base}/1`, 1, Buffer.from("QoS 1 from effect-mqtt")],
            [`${base}/2`, 2, allByteValues],
            [`${base}/empty`, 1, new Uint8Array(0)]
          ]
          for (const [topic, qos, payload] of sent) yield* publisher.publish(topic, payload, { qos })
          const result = yield* fromPromise(() => sub.done)
          assert.strictEqual(result.code, 0, result.stderr)
          const byTopic = new Map(result.messages.map((m) => [m.topic, m]))
          for (const [topic, qos, payload] of sent) {
            const message = byTopic.get(topic)
            assert.isDefined(message, `${topic} was not received`)
            assert.strictEqual(message!.qos, qos, topic)
            sameBytes(message!.payload, payload, topic)
          }
        }))

      it.live("MQTT.js publishes at QoS 0, 1 and 2 arrive at effect-mqtt intact", () =>
        Effect.gen(function*() {
          const base = uniqueTopic("from-mqttjs")
          const subscriber = yield* connect(broker, { protocolVersion: version })
          yield* subscriber.subscribe(`${base}/#`, { qos: 2 })
          const peer = yield* mqttJs(broker.url, { protocolVersion: version })
          for (const qos of qosLevels) {
            yield* fromPromise(() =>
              peer.publishAsync(`${base}/${qos}`, Buffer.from([qos, 0, 255, 10]), {
                qos,
                ...(version === 5 ? { properties: { userProperties: { from: "MQTT.js" }, contentType: "bytes" } } : {})
              })
            )
          }
          const byTopic = new Map((yield* take(subscriber, 3)).map((m) => [m.topic, m]))
          for (const qos of qosLevels) {
            const message = byTopic.get(`${base}/${qos}`)!
            assert.isDefined(message)
            assert.strictEqual(message.qos, qos)
            sameBytes(message.payload, Uint8Array.of(qos, 0, 255, 10), `QoS ${qos}`)
            if (version === 5) {
              assert.deepStrictEqual(message.properties.userProperties, [["from", "MQTT.js"]])
              assert.strictEqual(message.properties.contentType, "bytes")
            }
          }
        }))

      it.live("effect-mqtt publishes at QoS 0, 1 and 2 arrive at MQTT.js intact", () =>
        Effect.gen(function*() {
          const base = uniqueTopic("to-mqttjs")
          const peer = yield* mqttJs(broker.url, { protocolVersion: version })
          yield* fromPromise(() => peer.subscribeAsync(`${base}/#`, { qos: 2 }))
          const received = mqttJsMessages(peer, 3)
          const publisher = yield* connect(broker, { protocolVersion: version })
          for (const qos of qosLevels) {
            yield* publisher.publish(`${base}/${qos}`, Uint8Array.of(qos, 0, 255, 10), {
              qos,
              properties: { userProperties: [["from", "effect-mqtt"]], contentType: "bytes" }
            })
          }
          const byTopic = new Map((yield* fromPromise(() => received)).map((m) => [m.topic, m]))
          for (const qos of qosLevels) {
            const message = byTopic.get(`${base}/${qos}`)!
            assert.isDefined(message)
            assert.strictEqual(message.packet.qos, qos)
            sameBytes(message.payload, Uint8Array.of(qos, 0, 255, 10), `QoS ${qos}`)
            if (version === 5) {
              assert.deepStrictEqual(message.packet.properties?.userProperties, { from: "effect-mqtt" })
              assert.strictEqual(message.packet.properties?.contentType, "bytes")
            } else {
              // MQTT 5 properties are not sent on an MQTT 3.1.1 connection
              assert.isUndefined(message.packet.properties)
            }
          }
        }))
    })

    describe(`${label(version)}: session takeover`, () => {
      it.live(
        "a second connection with the same client identifier ends the first with ConnectionLostError",
        () =>
          Effect.gen(function*() {
            const clientId = `it-${runId}-takeover-${version}`
            // without reconnecting, or the two clients would take the identifier from each other in turn
            const first = yield* connect(broker, { protocolVersion: version, clientId, reconnect: false })
            const consumer = yield* Effect.forkChild(Effect.exit(Stream.runDrain(first.messages)))
            const second = yield* connect(broker, { protocolVersion: version, clientId })
            const error = errorOf(yield* guard(Effect.exit(first.awaitClose)))
            if (error._tag !== "ConnectionLostError") {
              return assert.fail(`expected ConnectionLostError, got ${error._tag}`)
            }
            // Mosquitto 2.0.11 closes the old connection without an MQTT 5 DISCONNECT 0x8E (session taken over)
            assert.deepStrictEqual(errorOf(yield* guard(Fiber.join(consumer))), error)
            // the new connection works
            const topic = uniqueTopic("takeover")
            yield* second.subscribe(topic, { qos: 1 })
            yield* second.publish(topic, "mine now", { qos: 1 })
            assert.deepStrictEqual((yield* take(second, 1)).map((m) => m.text), ["mine now"])
          })
      )
    })

    describe(`${label(version)}: release and back-pressure`, () => {
      it.live("releasing the client sends DISCONNECT and ends the messages stream without an error", () =>
        Effect.gen(function*() {
          const topic = uniqueTopic("release")
          const clientId = `it-${runId}-release-${version}`
          const scope = yield* Scope.make()
          const client = yield* Scope.provide(connect(broker, { protocolVersion: version, clientId }), scope)
          yield* client.subscribe(topic, { qos: 1 })
          const seen = yield* Deferred.make<void>()
          const consumer = yield* Effect.forkChild(
            Effect.exit(Stream.runCollect(Stream.tap(client.messages, () => Deferred.succeed(seen, undefined))))
          )
          const publisher = yield* connect(broker, { protocolVersion: version })
          yield* publisher.publish(topic, "before release", { qos: 1 })
          yield* guard(Deferred.await(seen))

          yield* Scope.close(scope, Exit.void)
          const exit = yield* guard(Fiber.join(consumer))
          assert.isTrue(Exit.isSuccess(exit), `the stream did not complete: ${String(exit)}`)
          assert.deepStrictEqual(Exit.isSuccess(exit) ? exit.value.map((m) => m.text) : [], ["before release"])
          const line = yield* logLine(broker, endOfConnection(clientId))
          assert.match(line, new RegExp(`Client ${escape(clientId)} disconnected\\.`))
          // a closed client's awaitClose succeeds, and a publish on it fails at once with a typed error
          yield* guard(client.awaitClose)
          const late = errorOf(yield* guard(Effect.exit(client.publish(topic, "after release", { qos: 1 }))))
          assert.strictEqual(late._tag, "ConnectionLostError")
        }))

      it.live("a bounded(10) queue holds back 2,000 QoS 1 messages and then delivers all, in order, none dropped", () =>
        Effect.gen(function*() {
          const topic = uniqueTopic("bounded")
          const subscriber = yield* connect(broker, { protocolVersion: version, queue: IncomingQueue.bounded(10) })
          yield* subscriber.subscribe(topic, { qos: 1 })
          const publisher = yield* connect(broker, { protocolVersion: version })
          // every publish is acknowledged by the broker while the subscriber consumes nothing
          yield* guard(Effect.forEach(range(2000), (i) => publisher.publish(topic, String(i), { qos: 1 }), {
            discard: true
          }))
          const received = yield* take(subscriber, 2000)
          assert.deepStrictEqual(received.map((m) => Number(m.text)), range(2000))
          assert.isTrue(received.every((m) => m.qos === 1))
          assert.strictEqual(yield* subscriber.droppedMessages, 0)
        }))

      it.live("a sliding(10) queue under 2,000 QoS 1 messages drops the oldest and counts every drop", () =>
        Effect.gen(function*() {
          const topic = uniqueTopic("sliding")
          const subscriber = yield* connect(broker, { protocolVersion: version, queue: IncomingQueue.sliding(10) })
          yield* subscriber.subscribe(topic, { qos: 1 })
          const publisher = yield* connect(broker, { protocolVersion: version })
          yield* guard(Effect.forEach(range(2000), (i) => publisher.publish(topic, String(i), { qos: 1 }), {
            discard: true
          }))
          // the newest message is never the one a sliding queue drops
          yield* publisher.publish(topic, "end", { qos: 1 })
          const received = yield* guard(
            Stream.runCollect(Stream.takeUntil(subscriber.messages, (m) => m.text === "end"))
          )
          const dropped = yield* subscriber.droppedMessages
          const numbers = received.filter((m) => m.text !== "end").map((m) => Number(m.text))
          assert.isAbove(dropped, 0)
          assert.strictEqual(numbers.length + dropped, 2000)
          // what was kept is in order, without duplicates, and ends with the newest
          assert.deepStrictEqual(numbers, [...new Set(numbers)].sort((a, b) => a - b))
          assert.strictEqual(numbers.at(-1), 1999)
        }))

      it.live("after release the client leaves nothing running: no TCP socket, and its process exits by itself", () =>
        Effect.gen(function*() {
          // a fresh process, so that no other socket is counted, and so that anything left running (a socket, a
          // keepalive timer, a fiber) would keep it from exiting
          const child = yield* Effect.acquireRelease(
            Effect.sync(() =>
              spawn(process.execPath, [
                SOURCE_CONDITION,
                RELEASE_CLIENT,
                JSON.stringify({ url: broker.url, protocolVersion: version })
              ], {
                stdio: "pipe"
              })
            ),
            (child) => Effect.sync(() => child.kill("SIGKILL"))
          )
          const output = yield* fromPromise(() =>
            new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
              let stdout = ""
              let stderr = ""
              child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk))
              child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk))
              child.once("close", (code) => resolve({ code, stdout, stderr }))
            })
          )
          assert.strictEqual(output.code, 0, output.stderr)
          const counts = JSON.parse(output.stdout) as { before: number; connected: number; released: number }
          assert.strictEqual(counts.before, 0)
          // the count does see the client's socket
          assert.strictEqual(counts.connected, 1)
          // right after release the socket is still closing (counts.released is 1: release does not wait for the
          // socket's "close"); that it then closes by itself is what the exit of the process proves
        }))
    })
  }

  describe("MQTT 5 specifics", () => {
    it.live("the broker's DISCONNECT behind messages the reader has no room for still says why the connection ended", () =>
      Effect.gen(function*() {
        // Mosquitto 2.0.11 sends no DISCONNECT on a takeover (0x8E, see above) or a shutdown (0x8B); it sends one for a
        // malformed packet (0x81), which the proxy writes to it as the client's
        const proxy = yield* injectingProxy(broker.port)
        const topic = uniqueTopic("disconnect-behind-backlog")
        const client = yield* MqttClient.make({
          url: proxy.url,
          protocolVersion: 5,
          reconnect: false,
          keepAlive: 1,
          queue: IncomingQueue.bounded(1),
          receiveMaximum: 20
        })
        yield* client.subscribe(topic, { qos: 1 })
        const publisher = yield* connect(broker, { protocolVersion: 5 })
        // three messages for a queue of one, nobody consuming: the reader waits for room and reads nothing
        for (const i of range(3)) yield* publisher.publish(topic, `m${i}`, { qos: 1 })
        yield* Effect.sleep("200 millis")
        proxy.inject(Uint8Array.from([0x82, 0x02, 0x00, 0x01]))
        const error = errorOf(yield* guard(Effect.exit(client.awaitClose)))
        if (error._tag !== "ConnectionLostError") return assert.fail(`expected ConnectionLostError, got ${error._tag}`)
        assert.strictEqual(error.reasonCode, 0x81)
      }))

    it.live("a QoS 1 publish with no subscriber succeeds: PUBACK reason 0x10 (no matching subscribers) is not an error", () =>
      Effect.gen(function*() {
        const topic = uniqueTopic("nobody-listens")
        // what Mosquitto answers, seen by MQTT.js: reason code 0x10 "no matching subscribers"
        const peer = yield* mqttJs(broker.url, { protocolVersion: 5 })
        const pubacks: Array<number | undefined> = []
        peer.on("packetreceive", (packet) => {
          if (packet.cmd === "puback") pubacks.push(packet.reasonCode)
        })
        yield* fromPromise(() => peer.publishAsync(topic, "into the void", { qos: 1 }))
        assert.deepStrictEqual(pubacks, [0x10])

        const publisher = yield* connect(broker, { protocolVersion: 5 })
        yield* publisher.publish(topic, "into the void", { qos: 1 })
        // and the connection is still usable
        yield* publisher.subscribe(topic, { qos: 1 })
        yield* publisher.publish(topic, "to myself", { qos: 1 })
        assert.deepStrictEqual((yield* take(publisher, 1)).map((m) => m.text), ["to myself"])
      }))

    it.live("a publish with MQTT 5 properties arrives with those properties", () =>
      Effect.gen(function*() {
        const topic = uniqueTopic("properties")
        const subscriber = yield* connect(broker, { protocolVersion: 5 })
        const publisher = yield* connect(broker, { protocolVersion: 5 })
        yield* subscriber.subscribe(topic, { qos: 1 })
        const properties = {
          payloadFormatIndicator: true,
          contentType: "application/json",
          responseTopic: `${topic}/reply`,
          correlationData: Uint8Array.of(0, 1, 2, 254, 255),
          userProperties: [["tenant", "acme"], ["trace", "abc"]] as const,
          messageExpiryInterval: 3600
        }
        yield* publisher.publish(topic, "{\"ok\":true}", { qos: 1, properties })
        const [message] = yield* take(subscriber, 1)
        assert.strictEqual(message.properties.payloadFormatIndicator, true)
        assert.strictEqual(message.properties.contentType, "application/json")
        assert.strictEqual(message.properties.responseTopic, `${topic}/reply`)
        sameBytes(message.properties.correlationData ?? new Uint8Array(), properties.correlationData, "correlation")
        assert.deepStrictEqual(message.properties.userProperties, [["tenant", "acme"], ["trace", "abc"]])
        // the broker forwards the remaining lifetime, which may have lost a second on the way
        const expiry = message.properties.messageExpiryInterval
        assert.isDefined(expiry)
        assert.isAtMost(expiry!, 3600)
        assert.isAtLeast(expiry!, 3590)
      }))

    it.live("MQTT 5 properties are not forwarded to an MQTT 3.1.1 subscriber", () =>
      Effect.gen(function*() {
        const topic = uniqueTopic("properties-v4")
        const subscriber = yield* connect(broker, { protocolVersion: 4 })
        const publisher = yield* connect(broker, { protocolVersion: 5 })
        yield* subscriber.subscribe(topic, { qos: 1 })
        yield* publisher.publish(topic, "plain", {
          qos: 1,
          properties: { contentType: "text/plain", userProperties: [["a", "b"]] }
        })
        const [message] = yield* take(subscriber, 1)
        assert.strictEqual(message.text, "plain")
        assert.deepStrictEqual(message.properties, {})
      }))

    it.live("retainAsPublished keeps the retain flag for a current subscriber", () =>
      Effect.gen(function*() {
        const topic = uniqueTopic("retain-as-published")
        const subscriber = yield* connect(broker, { protocolVersion: 5 })
        const publisher = yield* connect(broker, { protocolVersion: 5 })
        yield* subscriber.subscribe(topic, { qos: 1, retainAsPublished: true })
        yield* publisher.publish(topic, "flagged", { qos: 1, retain: true })
        const [message] = yield* take(subscriber, 1)
        assert.deepStrictEqual([message.text, message.retain], ["flagged", true])
        yield* publisher.publish(topic, "", { qos: 1, retain: true })
      }))
  })

  describe("MQTT 3.1.1: a message over the client's maximumPacketSize (the broker cannot be told the limit)", () => {
    for (const qos of qosLevels) {
      it.live(`QoS ${qos}: dropped unread, counted, acknowledged; the connection stays up and a persistent session does not send it again`, () =>
        Effect.gen(function*() {
          const topic = uniqueTopic(`oversized-v4-q${qos}`)
          const clientId = `it-${runId}-oversized-${qos}`
          const options = { protocolVersion: 4, clientId, cleanStart: false, maximumPacketSize: 1024 } as const
          const first = yield* Effect.gen(function*() {
            const subscriber = yield* connect(broker, options)
            yield* subscriber.subscribe(topic, { qos: 2 })
            const pub = (message: string) =>
              mosquittoPub([...cliTarget(broker, 4, topic), "-q", String(qos), "-m", message])
            yield* fromPromise(() => pub("x".repeat(5000)))
            yield* fromPromise(() => pub("fits"))
            const [message] = yield* take(subscriber, 1)
            const metrics = yield* subscriber.metrics
            return {
              text: message.text,
              dropped: yield* subscriber.droppedMessages,
              reconnects: metrics.reconnects,
              status: (yield* subscriber.status)._tag
            }
          }).pipe(Effect.scoped)
          assert.deepStrictEqual(first, { text: "fits", dropped: 1, reconnects: 0, status: "Connected" })
          // the same session again: the broker holds nothing unacknowledged, so the next message comes first
          const again = yield* Effect.gen(function*() {
            const subscriber = yield* connect(broker, options)
            assert.strictEqual(subscriber.connection.sessionPresent, true)
            yield* fromPromise(() => mosquittoPub([...cliTarget(broker, 4, topic), "-q", String(qos), "-m", "after"]))
            const [message] = yield* take(subscriber, 1)
            return { text: message.text, dropped: yield* subscriber.droppedMessages }
          }).pipe(Effect.scoped)
          assert.deepStrictEqual(again, { text: "after", dropped: 0 })
        }))
    }
  })
})

// ---------------------------------------------------------------------------------------------------------------
// brokers with a special configuration
// ---------------------------------------------------------------------------------------------------------------

describe("MQTT 5 against Mosquitto's limits (max_inflight_messages 1, max_keepalive 10)", () => {
  let limited: MosquittoHandle
  beforeAll(async () => {
    limited = await startMosquitto({ protocolConfig: "max_inflight_messages 1\nmax_keepalive 10" })
  })
  afterAll(() => limited?.dispose())

  it.live("the CONNACK's Receive Maximum (1) and Server Keep Alive (10, asked 60) are adopted", () =>
    Effect.gen(function*() {
      const client = yield* connect(limited, { protocolVersion: 5, keepAlive: 60 })
      assert.strictEqual(client.connection.receiveMaximum, 1)
      assert.strictEqual(client.connection.keepAlive, 10)
    }))

  it.live("200 concurrent QoS 2 publishes under Receive Maximum 1 all complete and each arrives exactly once", () =>
    Effect.gen(function*() {
      const topic = uniqueTopic("receive-maximum")
      const subscriber = yield* connect(limited, { protocolVersion: 5 })
      const publisher = yield* connect(limited, { protocolVersion: 5 })
      assert.strictEqual(publisher.connection.receiveMaximum, 1)
      yield* subscriber.subscribe(topic, { qos: 2 })
      // Mosquitto disconnects a client that exceeds the Receive Maximum, which would fail the publishes
      yield* guard(
        Effect.forEach(range(200), (i) => publisher.publish(topic, String(i), { qos: 2 }), {
          concurrency: "unbounded",
          discard: true
        })
      )
      const received = yield* take(subscriber, 200)
      assert.deepStrictEqual(received.map((m) => Number(m.text)).sort((a, b) => a - b), range(200))
      assert.isTrue(received.every((m) => m.qos === 2))
      // nothing else follows: a duplicate would come before this marker
      yield* publisher.publish(topic, "end", { qos: 2 })
      assert.deepStrictEqual((yield* take(subscriber, 1)).map((m) => m.text), ["end"])
    }))

  it.live("MQTT 3.1.1 has no Server Keep Alive: the client keeps the keepalive it asked for", () =>
    Effect.gen(function*() {
      // Mosquitto 2.0.11 accepts an MQTT 3.1.1 keepalive above max_keepalive (later versions refuse it)
      const client = yield* connect(limited, { protocolVersion: 4, keepAlive: 60 })
      assert.strictEqual(client.connection.keepAlive, 60)
      assert.strictEqual(client.connection.receiveMaximum, 65535)
    }))
})

describe("a broker with max_packet_size 1000 and max_qos 1; the client's sendMaximumPacketSize", () => {
  let small: MosquittoHandle
  beforeAll(async () => {
    small = await startMosquitto({ protocolConfig: "max_packet_size 1000\nmax_qos 1" })
  })
  afterAll(() => small?.dispose())

  for (const version of versions) {
    it.live(`${label(version)}: a publish over sendMaximumPacketSize fails with PublishError 0x95 before sending; the connection stays up and the next one arrives`, () =>
      Effect.gen(function*() {
        const topic = uniqueTopic(`send-maximum-${version}`)
        const subscriber = yield* connect(small, { protocolVersion: version })
        yield* subscriber.subscribe(topic, { qos: 1 })
        const publisher = yield* connect(small, { protocolVersion: version, sendMaximumPacketSize: 900 })
        const error = errorOf(yield* Effect.exit(publisher.publish(topic, "x".repeat(5000), { qos: 1 })))
        assert.strictEqual(error._tag, "PublishError")
        assert.strictEqual(error._tag === "PublishError" && error.reasonCode, 0x95)
        assert.include(error.message, "sendMaximumPacketSize allows 900 at most")
        yield* publisher.publish(topic, "fits", { qos: 1 })
        assert.deepStrictEqual((yield* take(subscriber, 1)).map((m) => m.text), ["fits"])
        assert.strictEqual((yield* publisher.metrics).reconnects, 0)
      }))
  }

  it.live("MQTT 3.1.1 without it: the broker closes the connection on the larger publish (what the option is for)", () =>
    Effect.gen(function*() {
      const topic = uniqueTopic("send-maximum-none")
      const publisher = yield* connect(small, { protocolVersion: 4 })
      const changes = yield* Effect.forkChild(
        Stream.runHead(Stream.filter(publisher.statusChanges, (status) => status._tag === "Disconnected"))
      )
      yield* publisher.publish(topic, "x".repeat(5000))
      const disconnected = yield* guard(Fiber.join(changes))
      assert.isTrue(Option.isSome(disconnected))
    }))

  for (
    const [what, qos, payload] of [
      ["a QoS 2 publish (over max_qos 1)", 2, "over"],
      ["a QoS 1 publish of 5,000 bytes (over max_packet_size)", 1, "x".repeat(5000)]
    ] as const
  ) {
    it.live(`MQTT 3.1.1: ${what}, on which the broker closes every connection, fails after ${CLOSED_ON_LIMIT} connections; the publishes behind it go out`, () =>
      Effect.gen(function*() {
        const topic = uniqueTopic(`closed-on-${qos}`)
        const subscriber = yield* connect(small, { protocolVersion: 4 })
        yield* subscriber.subscribe(topic, { qos: 1 })
        const publisher = yield* connect(small, {
          protocolVersion: 4,
          reconnect: Schedule.spaced("50 millis"),
          logLevel: "None"
        })
        const poisoned = yield* Effect.forkChild(Effect.exit(publisher.publish(topic, payload, { qos })), {
          startImmediately: true
        })
        const behind = yield* Effect.forkChild(publisher.publish(topic, "behind", { qos: 1 }), {
          startImmediately: true
        })
        const error = errorOf(yield* guard(Fiber.join(poisoned)))
        assert.strictEqual(error._tag, "PublishError")
        assert.include(error.message, `closed the connection each of the last ${CLOSED_ON_LIMIT} times`)
        yield* guard(Fiber.join(behind))
        assert.deepStrictEqual((yield* take(subscriber, 1)).map((m) => m.text), ["behind"])
        assert.strictEqual((yield* publisher.metrics).reconnects, CLOSED_ON_LIMIT)
      }))
  }

  it.live("MQTT 5: the broker's own limit (1000) is kept when sendMaximumPacketSize is higher, and named", () =>
    Effect.gen(function*() {
      const publisher = yield* connect(small, { protocolVersion: 5, sendMaximumPacketSize: 100_000 })
      assert.strictEqual(publisher.connection.maximumPacketSize, 1000)
      const error = errorOf(yield* Effect.exit(publisher.publish(uniqueTopic("broker-max"), "x".repeat(5000))))
      assert.include(error.message, "the broker accepts 1000 at most")
    }))
})

describe("a broker that requires a username and password", () => {
  const password = `right-${Crypto.randomBytes(6).toString("hex")}`
  let secured: MosquittoHandle
  let files: ReturnType<typeof tempDir>
  beforeAll(async () => {
    files = tempDir()
    const passwordFile = Path.join(files.dir, "passwords")
    execFileSync("mosquitto_passwd", ["-c", "-b", passwordFile, "alice", password])
    secured = await startMosquitto({ protocolConfig: `allow_anonymous false\npassword_file ${passwordFile}` })
  })
  afterAll(async () => {
    await secured?.dispose()
    files?.remove()
  })

  for (const version of versions) {
    // Mosquitto 2.0.11 answers a wrong password with 5 "not authorized" in MQTT 3.1.1 and 0x87 (not 0x86) in MQTT 5
    const refused = version === 4 ? 5 : 0x87
    const shown = version === 4 ? "5" : "0x87"
    it.live(
      `${
        label(version)
      }: a wrong password fails the layer with ConnectRefusedError ${shown}, whose message says to check the credentials, and no output shows it`,
      () =>
        Effect.gen(function*() {
          const wrong = `wrong-${Crypto.randomBytes(6).toString("hex")}`
          const exit = yield* Effect.exit(Layer.build(MqttClient.layer({
            url: secured.url,
            protocolVersion: version,
            username: "alice",
            password: Redacted.make(wrong)
          })))
          const error = errorOf(exit)
          if (error._tag !== "ConnectRefusedError") {
            return assert.fail(`expected ConnectRefusedError, got ${error._tag}`)
          }
          assert.strictEqual(error.reasonCode, refused)
          assert.strictEqual(error.protocolVersion, version)
          assert.include(error.message, "Check username and password")
          const outputs = [
            error.message,
            String(error),
            JSON.stringify(error),
            Util.inspect(error, { depth: 10 }),
            Exit.isFailure(exit) ? Cause.pretty(exit.cause) : ""
          ]
          for (const output of outputs) {
            assert.notInclude(output, wrong)
            assert.notInclude(output, password)
          }
        })
    )

    it.live(`${label(version)}: no credentials are refused with ${shown}; the right ones connect`, () =>
      Effect.gen(function*() {
        const anonymous = errorOf(yield* Effect.exit(connect(secured, { protocolVersion: version })))
        if (anonymous._tag !== "ConnectRefusedError") {
          return assert.fail(`expected ConnectRefusedError, got ${anonymous._tag}`)
        }
        assert.strictEqual(anonymous.reasonCode, refused)

        const client = yield* connect(secured, {
          protocolVersion: version,
          username: "alice",
          password: Redacted.make(password)
        })
        const topic = uniqueTopic("authenticated")
        yield* client.subscribe(topic, { qos: 1 })
        yield* client.publish(topic, "hello", { qos: 1 })
        assert.deepStrictEqual((yield* take(client, 1)).map((m) => m.text), ["hello"])
        // the credentials can also come from the URL
        yield* MqttClient.make({
          url: `mqtt://alice:${encodeURIComponent(password)}@127.0.0.1:${secured.port}`,
          protocolVersion: version
        })
      }))
  }
})

/** Mosquitto's dynamic security plugin: in 2.0.11 an `acl_file` never refuses a SUBSCRIBE, this plugin does. */
const findDynamicSecurityPlugin = (): string => {
  const candidates = ["/usr/lib", "/usr/local/lib", "/usr/lib64"].flatMap((dir) => {
    const direct = Path.join(dir, "mosquitto_dynamic_security.so")
    const multiarch = Fs.existsSync(dir) ?
      Fs.readdirSync(dir).map((sub) => Path.join(dir, sub, "mosquitto_dynamic_security.so")) :
      []
    return [direct, ...multiarch]
  })
  const found = candidates.find((file) => Fs.existsSync(file))
  if (found === undefined) {
    throw new Error(
      "mosquitto_dynamic_security.so (Debian package mosquitto) is needed for the SUBSCRIBE refusal tests"
    )
  }
  return found
}

describe("a broker that refuses a subscription", () => {
  let guarded: MosquittoHandle
  let files: ReturnType<typeof tempDir>
  beforeAll(async () => {
    files = tempDir()
    const config = Path.join(files.dir, "dynamic-security.json")
    // anonymous clients get the role "restricted", which may not subscribe to secret/#
    Fs.writeFileSync(
      config,
      JSON.stringify({
        defaultACLAccess: { publishClientSend: true, publishClientReceive: true, subscribe: true, unsubscribe: true },
        clients: [],
        groups: [{ groupname: "anonymous", roles: [{ rolename: "restricted" }], clients: [] }],
        roles: [{
          rolename: "restricted",
          acls: [{ acltype: "subscribePattern", topic: "secret/#", allow: false, priority: 0 }]
        }],
        anonymousGroup: "anonymous"
      })
    )
    guarded = await startMosquitto({
      protocolConfig: `plugin ${findDynamicSecurityPlugin()}\nplugin_opt_config_file ${config}`
    })
  })
  afterAll(async () => {
    await guarded?.dispose()
    files?.remove()
  })

  for (const version of versions) {
    const code = version === 4 ? 0x80 : 0x87
    it.live(
      `${label(version)}: subscribe fails with SubscribeError naming the refused filter (0x${
        code.toString(16)
      }), while the permitted filter of the same SUBSCRIBE is active`,
      () =>
        Effect.gen(function*() {
          const allowed = uniqueTopic("allowed")
          const secret = `secret/${uniqueTopic("denied")}`
          const subscriber = yield* connect(guarded, { protocolVersion: version })
          const error = errorOf(yield* Effect.exit(subscriber.subscribe([allowed, secret], { qos: 1 })))
          if (error._tag !== "SubscribeError") return assert.fail(`expected SubscribeError, got ${error._tag}`)
          assert.strictEqual(error.filter, secret)
          assert.strictEqual(error.reasonCode, code)
          assert.include(error.message, secret)

          // the broker did subscribe the permitted filter, and the connection is still up
          const publisher = yield* connect(guarded, { protocolVersion: version })
          yield* publisher.publish(allowed, "permitted", { qos: 1 })
          const [message] = yield* take(subscriber, 1)
          assert.deepStrictEqual([message.topic, message.text], [allowed, "permitted"])
        })
    )
  }
})

for (const version of versions) {
  describe(`${label(version)}: connection loss`, () => {
    it.live(
      "without reconnect, when the broker dies the stream, a pending QoS 1 publish, a new publish and awaitClose fail with ConnectionLostError",
      () =>
        Effect.gen(function*() {
          const doomed = yield* mosquitto()
          // the client gives up at once instead of reconnecting (the default)
          const client = yield* connect(doomed, { protocolVersion: version, reconnect: false })
          const topic = uniqueTopic("lost")
          yield* client.subscribe(topic, { qos: 1 })
          const consumer = yield* Effect.forkChild(Effect.exit(Stream.runDrain(client.messages)))
          const closed = yield* Effect.forkChild(Effect.exit(client.awaitClose))

          // frozen, the broker cannot acknowledge: the publish is in flight when the broker dies
          doomed.kill("SIGSTOP")
          const pending = yield* Effect.forkChild(Effect.exit(client.publish(topic, "in flight", { qos: 1 })), {
            startImmediately: true
          })
          assert.isUndefined(pending.pollUnsafe(), "the publish completed while the broker was frozen")
          doomed.kill("SIGKILL")

          const publishError = errorOf(yield* guard(Fiber.join(pending)))
          const streamError = errorOf(yield* guard(Fiber.join(consumer)))
          const closeError = errorOf(yield* guard(Fiber.join(closed)))
          const laterError = errorOf(yield* Effect.exit(client.publish(topic, "too late", { qos: 1 })))
          const laterQos0Error = errorOf(yield* Effect.exit(client.publish(topic, "too late")))
          for (const error of [publishError, streamError, closeError, laterError, laterQos0Error]) {
            assert.strictEqual(error._tag, "ConnectionLostError", String(error))
          }
          assert.deepStrictEqual(laterError, closeError)
          assert.deepStrictEqual(streamError, closeError)
        })
    )

    it.live("with reconnect (the default), after the broker is killed and restarted the subscription is restored", () =>
      Effect.gen(function*() {
        const restarted = yield* mosquitto()
        const topic = uniqueTopic("reconnect")
        const subscriber = yield* connect(restarted, { protocolVersion: version })
        yield* subscriber.subscribe(topic, { qos: 1 })
        restarted.kill("SIGKILL")
        yield* fromPromise(() => restarted.restart())
        // the broker has no persistence: the client must subscribe again by itself. The message is retained, so it
        // arrives once whether that SUBSCRIBE reaches the broker before or after the publish
        const publisher = yield* connect(restarted, { protocolVersion: version, reconnect: false })
        yield* publisher.publish(topic, "after restart", { qos: 1, retain: true })
        const [message] = yield* take(subscriber, 1)
        assert.deepStrictEqual([message.topic, message.text], [topic, "after restart"])
        assert.strictEqual((yield* subscriber.metrics).reconnects, 1)
      }))
  })
}
