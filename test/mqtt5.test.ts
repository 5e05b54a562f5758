/**
 * MQTT 5 against a real Mosquitto 2.0.11 in 5.0 mode: every feature of issue 4 that Mosquitto supports, between
 * effect-mqtt clients, MQTT.js, mosquitto_pub and an effect-mqtt client in a child process. What Mosquitto will not
 * do (break our Receive Maximum or Maximum Packet Size, send an invalid topic alias, send AUTH challenges, send
 * topic aliases at all) is in protocol.test.ts, on the fake broker.
 *
 * Where the wire matters (topic aliases, in-flight windows, what is sent before a refusal), a client connects
 * through a `tap`: a TCP proxy in this process that forwards both directions unchanged and parses a copy of each
 * with mqtt-packet, so the test sees exactly what went to and came from the real broker.
 *
 * Every wait ends on an event; the timeouts only guard against a hang. The few real sleeps (message expiry, will
 * delay) wait for the broker's clock, and no assertion is about how fast anything happened.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, Logger, Option, Schedule, Scope, Stream } from "effect"
import { MqttClient, type MqttError, type MqttMessage } from "effect-mqtt"
import { connectAsync as connectMqttJs, type IClientOptions } from "mqtt"
import * as MqttPacket from "mqtt-packet"
import type { ChildProcess } from "node:child_process"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { type MosquittoHandle, mosquittoPub, startMosquitto } from "./support/Mosquitto.ts"
import { fromPromise, guard, mqttJsMessages, willClient } from "./support/peers.ts"

// ---------------------------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------------------------

/** Only a guard against a hang: every wait in these tests ends on an event, not on a delay. */
const runId = Crypto.randomBytes(3).toString("hex")
let topicCount = 0
/** A topic no other test (nor a previous run) publishes to. */
const uniqueTopic = (name: string) => `m5-${runId}/${name}/${++topicCount}`

/**
 * An MQTT 5 client on `url`. It does not reconnect unless told to: a connection the broker closes (for a
 * violated limit, say) fails the test instead of being papered over by a reconnect and a resend.
 */
const connect = (url: string, options?: MqttClient.Options) =>
  MqttClient.make({ url, protocolVersion: 5, reconnect: false, ...options })

/** A reconnect schedule for tests that cut the connection: the next attempt 20 ms after a loss. */
const fast = Schedule.spaced("20 millis")

const take = <E>(stream: Stream.Stream<MqttMessage.MqttMessage, E>, n: number) =>
  Effect.map(guard(Stream.runCollect(Stream.take(stream, n))), (chunk) => Array.from(chunk))

/** Takes messages up to and including the first whose text is `marker`. */
const takeUntilMarker = <E>(stream: Stream.Stream<MqttMessage.MqttMessage, E>, marker: string) =>
  Effect.map(
    guard(Stream.runCollect(Stream.takeUntil(stream, (message) => message.text === marker))),
    (chunk) => Array.from(chunk)
  )

const range = (n: number) => Array.from({ length: n }, (_, i) => i)

/** The typed failure of an exit; fails the test on a success or a defect. */
const errorOf = <A, E>(exit: Exit.Exit<A, E>): E => {
  if (Exit.isSuccess(exit)) return assert.fail("expected a failure, got a success")
  const error = Exit.findErrorOption(exit)
  if (Option.isNone(error)) return assert.fail(`expected a typed failure, got ${Cause.pretty(exit.cause)}`)
  return error.value
}

/** Waits until `condition` holds (polled), for state that no event announces. */
const until = (condition: () => boolean) =>
  guard(Effect.gen(function*() {
    while (!condition()) yield* Effect.sleep("20 millis")
  }))

/** Waits until the broker's log has a line matching `pattern`. */
const logLine = (broker: MosquittoHandle, pattern: RegExp) =>
  guard(Effect.gen(function*() {
    for (;;) {
      const line = broker.logs().split("\n").find((l) => pattern.test(l))
      if (line !== undefined) return line
      yield* Effect.sleep("20 millis")
    }
  }))

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")

/**
 * Waits until `count` subscriptions to exactly `filter` were logged (the broker logs each SUBSCRIBE with
 * `log_type subscribe`): for subscriptions made by a forked fiber (`respond`), which nothing else announces.
 */
const subscribed = (broker: MosquittoHandle, filter: string, count = 1) => {
  const pattern = new RegExp(` \\d ${escape(filter)}$`)
  return until(() => broker.logs().split("\n").filter((line) => pattern.test(line)).length >= count)
}

/** A real wait for the broker's clock (message expiry, will delay). Never asserted on. */
const brokerTime = (millis: number) => Effect.sleep(millis)

// ---- the tap: a recording TCP proxy --------------------------------------------------------------------------

interface Seen {
  /** 1 for the first connection through the tap, 2 for the next... */
  readonly connection: number
  /** "up": client to broker; "down": broker to client */
  readonly direction: "up" | "down"
  readonly packet: MqttPacket.Packet
}

interface Tap {
  /** Where the client connects instead of the broker. */
  readonly url: string
  /** Every packet that went through, in the order the proxy forwarded it. */
  readonly seen: ReadonlyArray<Seen>
  /** What the proxy could not parse (it still forwarded the bytes): `packetsOf` fails when this is not empty. */
  readonly problems: ReadonlyArray<string>
  /** How many connections the tap has carried. */
  readonly connections: () => number
  /** Destroys every open connection on both sides, like a network failure: no DISCONNECT. */
  readonly cut: () => void
}

/**
 * A proxy in front of `broker` that records every MQTT 5 packet in both directions. A copy of the bytes is
 * parsed before they are forwarded, so a packet is recorded before the other side can react to it.
 */
const tap = (broker: MosquittoHandle): Effect.Effect<Tap, Cause.TimeoutError, Scope.Scope> =>
  Effect.acquireRelease(
    fromPromise(() =>
      new Promise<Tap & { readonly server: Net.Server; readonly sockets: Set<Net.Socket> }>((resolve) => {
        const seen: Array<Seen> = []
        const problems: Array<string> = []
        const sockets = new Set<Net.Socket>()
        let connections = 0
        const server = Net.createServer((client) => {
          const connection = ++connections
          const upstream = Net.connect({ host: "127.0.0.1", port: broker.port })
          sockets.add(client)
          sockets.add(upstream)
          const recorder = (direction: Seen["direction"]) => {
            const parser = MqttPacket.parser({ protocolVersion: 5 })
            parser.on("packet", (packet: MqttPacket.Packet) => seen.push({ connection, direction, packet }))
            parser.on("error", (error: Error) => {
              problems.push(`connection ${connection}, going ${direction}: ${error.message}`)
            })
            return parser
          }
          const up = recorder("up")
          const down = recorder("down")
          client.on("data", (bytes: Buffer) => {
            up.parse(bytes)
            upstream.write(bytes)
          })
          upstream.on("data", (bytes: Buffer) => {
            down.parse(bytes)
            client.write(bytes)
          })
          const end = () => {
            client.destroy()
            upstream.destroy()
            sockets.delete(client)
            sockets.delete(upstream)
          }
          for (const socket of [client, upstream]) {
            socket.on("close", end)
            socket.on("error", end)
          }
        })
        server.listen(0, "127.0.0.1", () => {
          const address = server.address() as Net.AddressInfo
          resolve({
            url: `mqtt://127.0.0.1:${address.port}`,
            seen,
            problems,
            connections: () => connections,
            cut: () => {
              for (const socket of sockets) socket.destroy()
            },
            server,
            sockets
          })
        })
      })
    ),
    (t) =>
      Effect.promise(() =>
        new Promise<void>((resolve) => {
          for (const socket of t.sockets) socket.destroy()
          t.server.close(() => resolve())
        })
      )
  )

/** What the tap saw, after checking that it understood everything. */
const seenBy = (t: Tap): ReadonlyArray<Seen> => {
  assert.deepStrictEqual(t.problems, [], "the tap could not parse everything")
  return t.seen
}

const packetsOf = <C extends MqttPacket.PacketCmd>(
  t: Tap,
  cmd: C,
  direction: Seen["direction"],
  connection?: number
): Array<Extract<MqttPacket.Packet, { cmd: C }>> =>
  seenBy(t).filter((s) =>
    s.packet.cmd === cmd && s.direction === direction && (connection === undefined || s.connection === connection)
  ).map((s) => s.packet as Extract<MqttPacket.Packet, { cmd: C }>)

/**
 * The most QoS 1/2 PUBLISH packets sent in `direction` and not yet completed (PUBACK, PUBCOMP, or a refusing
 * PUBREC from the other side) at any one time, as the tap saw them.
 */
const maxInFlight = (t: Tap, direction: Seen["direction"]): number => {
  const open = new Set<number>()
  let max = 0
  for (const { direction: d, packet } of seenBy(t)) {
    if (d === direction && packet.cmd === "publish" && packet.qos > 0) {
      open.add(packet.messageId!)
      max = Math.max(max, open.size)
    } else if (
      d !== direction &&
      (packet.cmd === "puback" || packet.cmd === "pubcomp" ||
        (packet.cmd === "pubrec" && (packet.reasonCode ?? 0) >= 0x80))
    ) {
      open.delete(packet.messageId!)
    }
  }
  return max
}

// ---- MQTT.js ----------------------------------------------------------------------------------------------------

/** An MQTT.js client in MQTT 5 mode, connected, force-closed when the scope closes. */
const mqttJs = (url: string, options?: IClientOptions) =>
  Effect.acquireRelease(
    fromPromise(() =>
      connectMqttJs(url, { protocolVersion: 5, reconnectPeriod: 0, connectTimeout: 10_000, ...options })
    ),
    (client) => Effect.promise(() => client.endAsync(true))
  )

// ---- an effect-mqtt client in a child process ------------------------------------------------------------------

const killed = (child: ChildProcess) =>
  fromPromise(() =>
    new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve()
      child.once("exit", () => resolve())
      child.kill("SIGKILL")
    })
  )

/** Whether a message arrives on `stream` within `millis` (a real wait: an ordering check, not a speed test). */
const arrivesWithin = <E>(stream: Stream.Stream<MqttMessage.MqttMessage, E>, millis: number) =>
  Effect.map(Effect.timeoutOption(Stream.runHead(stream), millis), (result) => Option.flatten(result))

// ---------------------------------------------------------------------------------------------------------------
// one private broker with the default configuration
// ---------------------------------------------------------------------------------------------------------------

describe("MQTT 5 against a private Mosquitto", () => {
  let broker: MosquittoHandle
  beforeAll(async () => {
    // SUBSCRIBE is logged, so a test can wait for the subscription of a forked responder
    broker = await startMosquitto({ protocolConfig: "log_type subscribe" })
  })
  afterAll(() => broker?.dispose())

  describe("user properties", () => {
    /** Interleaved repeats: an object keyed by name (mqtt-packet's form) cannot hold this order. */
    const interleaved: ReadonlyArray<MqttMessage.UserProperty> = [
      ["b", "1"],
      ["a", "2"],
      ["b", "3"],
      ["a", "4"],
      ["empty", ""],
      ["ü", "✓ ünïcödé"]
    ]

    it.live("effect-mqtt to effect-mqtt at QoS 0, 1 and 2: user properties arrive in the order sent, each repeat in its place", () =>
      Effect.gen(function*() {
        const topic = uniqueTopic("user-properties")
        const subscriber = yield* connect(broker.url)
        const publisher = yield* connect(broker.url)
        yield* subscriber.subscribe(topic, { qos: 2 })
        for (const qos of [0, 1, 2] as const) {
          yield* publisher.publish(topic, `qos ${qos}`, { qos, properties: { userProperties: interleaved } })
        }
        const received = yield* take(subscriber.messages, 3)
        assert.deepStrictEqual(received.map((m) => m.text).sort(), ["qos 0", "qos 1", "qos 2"])
        for (const message of received) assert.deepStrictEqual(message.properties.userProperties, interleaved)
      }))

    it.live("effect-mqtt to MQTT.js: each name's values arrive in order, names in order of first appearance", () =>
      Effect.gen(function*() {
        const topic = uniqueTopic("user-properties/to-mqttjs")
        const peer = yield* mqttJs(broker.url)
        yield* fromPromise(() => peer.subscribeAsync(topic, { qos: 1 }))
        const arriving = mqttJsMessages(peer, 1)
        const publisher = yield* connect(broker.url)
        yield* publisher.publish(topic, "to MQTT.js", { qos: 1, properties: { userProperties: interleaved } })
        const [message] = yield* fromPromise(() => arriving)
        // MQTT.js gives an object: what it can show is each name's values in order, and the names in the order
        // they first appear on the wire. The interleaving itself (b, a, b, a) cannot be shown by an object.
        assert.deepStrictEqual(Object.entries(message.packet.properties?.userProperties ?? {}), [
          ["b", ["1", "3"]],
          ["a", ["2", "4"]],
          ["empty", ""],
          ["ü", "✓ ünïcödé"]
        ])
      }))

    it.live("MQTT.js to effect-mqtt: a name MQTT.js sends with several values arrives as repeated pairs, in order", () =>
      Effect.gen(function*() {
        const topic = uniqueTopic("user-properties/from-mqttjs")
        const subscriber = yield* connect(broker.url)
        yield* subscriber.subscribe(topic, { qos: 1 })
        const peer = yield* mqttJs(broker.url)
        yield* fromPromise(() =>
          peer.publishAsync(topic, "from MQTT.js", {
            qos: 1,
            properties: { userProperties: { z: ["3", "1", "2"], a: "only" } }
          })
        )
        const [message] = yield* take(subscriber.messages, 1)
        assert.deepStrictEqual(message.properties.userProperties, [["z", "3"], ["z", "1"], ["z", "2"], ["a", "only"]])
      }))

    it.live("mosquitto_pub -D publish user-property to effect-mqtt: interleaved repeats arrive in the order given", () =>
      Effect.gen(function*() {
        const topic = uniqueTopic("user-properties/from-mosquitto-pub")
        const subscriber = yield* connect(broker.url)
        yield* subscriber.subscribe(topic, { qos: 1 })
        const args = ["-p", String(broker.port), "-V", "mqttv5", "-t", topic, "-q", "1", "-m", "from mosquitto_pub"]
        for (const [name, value] of interleaved.slice(0, 4)) args.push("-D", "publish", "user-property", name, value)
        const result = yield* fromPromise(() => mosquittoPub(args))
        assert.strictEqual(result.code, 0, result.stderr)
        const [message] = yield* take(subscriber.messages, 1)
        assert.deepStrictEqual(message.properties.userProperties, interleaved.slice(0, 4))
      }))

    // CONNECT (and so the will) is encoded by the client itself: mqtt-packet's object form of user properties
    // would group the values of a name together
    it.live("a will's user properties arrive in the order given, each repeat in its place", () =>
      Effect.gen(function*() {
        const topic = uniqueTopic("user-properties/will")
        const subscriber = yield* connect(broker.url)
        yield* subscriber.subscribe(topic, { qos: 1 })
        yield* Effect.scoped(connect(broker.url, {
          will: { topic, payload: "gone", qos: 1, properties: { userProperties: interleaved } },
          disconnect: { reasonCode: 4 }
        }))
        const [will] = yield* take(subscriber.messages, 1)
        assert.strictEqual(will.text, "gone")
        assert.deepStrictEqual(will.properties.userProperties, interleaved)
      }))
  })

  describe("message expiry", () => {
    it.live("a retained message with messageExpiryInterval 1 is gone once it expired; one without expiry stays; one of 10 s arrives with less than 10 s left", () =>
      Effect.gen(function*() {
        const base = uniqueTopic("expiry/retained")
        const publisher = yield* connect(broker.url)
        yield* publisher.publish(`${base}/short`, "short", {
          qos: 1,
          retain: true,
          properties: { messageExpiryInterval: 1 }
        })
        yield* publisher.publish(`${base}/long`, "long", {
          qos: 1,
          retain: true,
          properties: { messageExpiryInterval: 10 }
        })
        yield* publisher.publish(`${base}/forever`, "forever", { qos: 1, retain: true })
        yield* brokerTime(2100)
        const subscriber = yield* connect(broker.url)
        yield* subscriber.subscribe([`${base}/+`, `${base}/marker/end`], { qos: 1 })
        yield* publisher.publish(`${base}/marker/end`, "end", { qos: 1 })
        const received = yield* takeUntilMarker(subscriber.messages, "end")
        const retained = received.filter((m) => m.retain)
        assert.deepStrictEqual(retained.map((m) => m.text).sort(), ["forever", "long"])
        const long = retained.find((m) => m.text === "long")!
        const forever = retained.find((m) => m.text === "forever")!
        // the broker sends what is left of the lifetime; a message without one has none
        assert.isDefined(long.properties.messageExpiryInterval)
        assert.isBelow(long.properties.messageExpiryInterval!, 10)
        assert.isAtLeast(long.properties.messageExpiryInterval!, 1)
        assert.isUndefined(forever.properties.messageExpiryInterval)
        for (const topic of ["short", "long", "forever"]) {
          yield* publisher.publish(`${base}/${topic}`, "", { qos: 1, retain: true })
        }
      }))

    it.live("a QoS 1 message queued for an offline persistent session expires while it waits; the one without expiry is delivered on reconnect", () =>
      Effect.gen(function*() {
        const topic = uniqueTopic("expiry/queued")
        const clientId = `m5-${runId}-expiry`
        const session = { clientId, sessionExpiryInterval: 60 } as const
        yield* Effect.scoped(Effect.gen(function*() {
          const subscriber = yield* connect(broker.url, session)
          yield* subscriber.subscribe(topic, { qos: 1 })
        }))
        const publisher = yield* connect(broker.url)
        yield* publisher.publish(topic, "expires", { qos: 1, properties: { messageExpiryInterval: 1 } })
        yield* publisher.publish(topic, "kept", { qos: 1 })
        yield* publisher.publish(topic, "kept with 60 s", { qos: 1, properties: { messageExpiryInterval: 60 } })
        yield* brokerTime(2100)
        // back, and this time the session ends with the connection
        const subscriber = yield* connect(broker.url, {
          ...session,
          cleanStart: false,
          disconnect: { sessionExpiryInterval: 0 }
        })
        assert.isTrue(subscriber.connection.sessionPresent)
        yield* publisher.publish(topic, "end", { qos: 1 })
        const received = yield* takeUntilMarker(subscriber.messages, "end")
        assert.deepStrictEqual(received.map((m) => m.text), ["kept", "kept with 60 s", "end"])
        assert.isUndefined(received[0].properties.messageExpiryInterval)
        const left = received[1].properties.messageExpiryInterval
        assert.isDefined(left)
        assert.isBelow(left!, 60)
      }))
  })

  describe("Receive Maximum announced by the client", () => {
    it.live("announcing receiveMaximum 1, the client never has more than one QoS 1 message unacknowledged, and a burst of 200 all arrive in order", () =>
      Effect.gen(function*() {
        const topic = uniqueTopic("receive-maximum/ours")
        const limitedTap = yield* tap(broker)
        const limited = yield* connect(limitedTap.url, { receiveMaximum: 1 })
        const defaultTap = yield* tap(broker)
        const unlimited = yield* connect(defaultTap.url)
        yield* limited.subscribe(topic, { qos: 1 })
        yield* unlimited.subscribe(topic, { qos: 1 })
        const publisher = yield* connect(broker.url)
        yield* guard(Effect.forEach(range(200), (i) => publisher.publish(topic, String(i), { qos: 1 }), {
          concurrency: "unbounded",
          discard: true
        }))
        const receivedLimited = yield* take(limited.messages, 200)
        const receivedUnlimited = yield* take(unlimited.messages, 200)
        assert.deepStrictEqual(receivedLimited.map((m) => m.text), range(200).map(String))
        assert.strictEqual(receivedUnlimited.length, 200)
        assert.strictEqual(packetsOf(limitedTap, "connect", "up")[0].properties?.receiveMaximum, 1)
        assert.strictEqual(packetsOf(limitedTap, "publish", "down").length, 200)
        assert.strictEqual(maxInFlight(limitedTap, "down"), 1)
        // the measurement can see more: with the default, Mosquitto does not wait for each PUBACK
        assert.isAbove(maxInFlight(defaultTap, "down"), 1)
        // and the limited client was never disconnected for a violation (it would have sent DISCONNECT 0x93)
        assert.strictEqual((yield* limited.status)._tag, "Connected")
      }))
  })

  describe("Maximum Packet Size announced by the client", () => {
    it.live("Mosquitto drops a message larger than the client's maximumPacketSize instead of sending it; the connection stays up", () =>
      Effect.gen(function*() {
        const topic = uniqueTopic("maximum-packet-size/ours")
        const subscriber = yield* connect(broker.url, { maximumPacketSize: 256 })
        yield* subscriber.subscribe(topic, { qos: 1 })
        const publisher = yield* connect(broker.url)
        yield* publisher.publish(topic, "x".repeat(1000), { qos: 1 })
        yield* publisher.publish(topic, "fits", { qos: 1 })
        const [message] = yield* take(subscriber.messages, 1)
        assert.strictEqual(message.text, "fits")
        assert.strictEqual((yield* subscriber.status)._tag, "Connected")
        yield* logLine(broker, /Dropping too large outgoing PUBLISH/)
      }))
  })

  describe("shared subscriptions", () => {
    it.live("$share/group/topic spreads messages over three clients: each message reaches exactly one member, every member gets some", () =>
      Effect.gen(function*() {
        const topic = uniqueTopic("shared")
        const group = `g${runId}`
        const members = yield* Effect.forEach(range(3), () => connect(broker.url))
        for (const member of members) {
          assert.isTrue(member.connection.sharedSubscriptionAvailable)
          yield* member.subscribe([`$share/${group}/${topic}`, `${topic}/end`], { qos: 1 })
        }
        const publisher = yield* connect(broker.url)
        for (const i of range(60)) yield* publisher.publish(topic, String(i), { qos: 1 })
        // every member gets the end marker after whatever share of the 60 it was given
        yield* publisher.publish(`${topic}/end`, "end", { qos: 1 })
        const shares = yield* Effect.forEach(
          members,
          (member) => Effect.map(takeUntilMarker(member.messages, "end"), (received) => received.slice(0, -1)),
          { concurrency: "unbounded" }
        )
        for (const share of shares) {
          assert.isAbove(share.length, 0, "a member got no message")
          for (const message of share) assert.strictEqual(message.topic, topic)
        }
        const all = shares.flat().map((m) => Number(m.text)).sort((a, b) => a - b)
        assert.deepStrictEqual(all, range(60), "each message exactly once over the group")
      }))

    it.live("noLocal on a shared subscription is an InvalidOptionError before sending: no SUBSCRIBE reaches the broker", () =>
      Effect.gen(function*() {
        const topic = uniqueTopic("shared/no-local")
        const t = yield* tap(broker)
        const client = yield* connect(t.url)
        const exit = yield* Effect.exit(client.subscribe(`$share/g/${topic}`, { qos: 1, noLocal: true }))
        const error = errorOf(exit)
        assert.strictEqual(error._tag, "InvalidOptionError")
        assert.strictEqual((error as MqttError.InvalidOptionError).option, "noLocal")
        // the connection is untouched: the same shared subscription without noLocal works
        yield* client.subscribe(`$share/g/${topic}`, { qos: 1 })
        const subscribes = packetsOf(t, "subscribe", "up")
        assert.deepStrictEqual(subscribes.map((s) => s.subscriptions.map((f) => [f.topic, f.nl])), [[[
          `$share/g/${topic}`,
          false
        ]]])
      }))

    it.live("a Subscription Identifier or user properties on one filter of a list (they belong to the whole SUBSCRIBE) are an InvalidOptionError before sending; in the call's options they apply", () =>
      Effect.gen(function*() {
        const topic = uniqueTopic("per-filter")
        const t = yield* tap(broker)
        const client = yield* connect(t.url)
        for (const option of [{ subscriptionIdentifier: 7 }, { userProperties: [["k", "v"]] as const }]) {
          // from untyped code (the type has no such field on a filter)
          const filter = { filter: `${topic}/a`, qos: 1, ...option } as unknown as MqttClient.Subscription
          const error = errorOf(yield* Effect.exit(client.subscribe([filter, { filter: `${topic}/b`, qos: 1 }])))
          assert.strictEqual(error._tag, "InvalidOptionError")
          assert.strictEqual((error as MqttError.InvalidOptionError).option, Object.keys(option)[0])
        }
        assert.deepStrictEqual(packetsOf(t, "subscribe", "up"), [])
        yield* client.subscribe([{ filter: `${topic}/a`, qos: 1 }, { filter: `${topic}/b`, qos: 1 }], {
          subscriptionIdentifier: 7
        })
        const publisher = yield* connect(broker.url)
        yield* publisher.publish(`${topic}/b`, "x", { qos: 1 })
        const [message] = yield* Stream.runCollect(Stream.take(client.messages, 1))
        assert.deepStrictEqual(message.properties.subscriptionIdentifiers, [7])
      }))

    it.live("respond on $share/group/topic in two clients: requests are spread over both and each is answered", () =>
      Effect.gen(function*() {
        const topic = uniqueTopic("shared/service")
        const filter = `$share/workers${runId}/${topic}`
        for (const name of ["r1", "r2"]) {
          const responder = yield* connect(broker.url)
          yield* Effect.forkScoped(responder.respond(filter, (request) => Effect.succeed(`${name}:${request.text}`)))
        }
        const requester = yield* connect(broker.url)
        // a request sent before both responders have subscribed would go to one only: wait for the subscriptions
        yield* subscribed(broker, filter, 2)
        const answers = yield* guard(Effect.forEach(
          range(40),
          (i) => Effect.map(requester.request(topic, String(i), { timeout: "10 seconds" }), (m) => m.text),
          { concurrency: "unbounded" }
        ))
        for (const [i, answer] of answers.entries()) assert.match(answer, new RegExp(`^r[12]:${i}$`))
        assert.isTrue(answers.some((a) => a.startsWith("r1:")), "r1 answered none")
        assert.isTrue(answers.some((a) => a.startsWith("r2:")), "r2 answered none")
      }))
  })

  describe("subscription options", () => {
    it.live("noLocal: the client does not receive its own publishes on a noLocal subscription, but does receive another client's; without noLocal it receives its own", () =>
      Effect.gen(function*() {
        const base = uniqueTopic("no-local")
        const client = yield* connect(broker.url)
        const other = yield* connect(broker.url)
        yield* client.subscribe([
          { filter: `${base}/quiet`, qos: 1, noLocal: true },
          { filter: `${base}/echo`, qos: 1 }
        ])
        yield* client.publish(`${base}/quiet`, "own on quiet", { qos: 1 })
        yield* client.publish(`${base}/echo`, "own on echo", { qos: 1 })
        yield* other.publish(`${base}/quiet`, "other's on quiet", { qos: 1 })
        const received = yield* take(client.messages, 2)
        assert.deepStrictEqual(received.map((m) => [m.topic, m.text]), [
          [`${base}/echo`, "own on echo"],
          [`${base}/quiet`, "other's on quiet"]
        ])
      }))

    it.live("retainHandling: 0 sends the retained message on every SUBSCRIBE, 1 only when the subscription is new, 2 never", () =>
      Effect.gen(function*() {
        const topic = uniqueTopic("retain-handling")
        const publisher = yield* connect(broker.url)
        yield* publisher.publish(topic, "retained", { qos: 1, retain: true })
        const seenBy = (retainHandling: 0 | 1 | 2) =>
          Effect.gen(function*() {
            const client = yield* connect(broker.url)
            yield* client.subscribe(`${topic}/end`, { qos: 1 })
            yield* client.subscribe(topic, { qos: 1, retainHandling })
            yield* client.subscribe(topic, { qos: 1, retainHandling })
            yield* publisher.publish(`${topic}/end`, `end ${retainHandling}`, { qos: 1 })
            const received = yield* takeUntilMarker(client.messages, `end ${retainHandling}`)
            return received.slice(0, -1).map((m) => [m.text, m.retain])
          })
        assert.deepStrictEqual(yield* seenBy(0), [["retained", true], ["retained", true]])
        assert.deepStrictEqual(yield* seenBy(1), [["retained", true]])
        assert.deepStrictEqual(yield* seenBy(2), [])
        yield* publisher.publish(topic, "", { qos: 1, retain: true })
      }))

    it.live("one SUBSCRIBE with per-filter options: retainAsPublished keeps the retain flag on its filter only", () =>
      Effect.gen(function*() {
        const base = uniqueTopic("retain-as-published")
        const client = yield* connect(broker.url)
        yield* client.subscribe([
          { filter: `${base}/as-published`, qos: 1, retainAsPublished: true },
          { filter: `${base}/plain`, qos: 1 }
        ])
        const publisher = yield* connect(broker.url)
        yield* publisher.publish(`${base}/as-published`, "a", { qos: 1, retain: true })
        yield* publisher.publish(`${base}/plain`, "p", { qos: 1, retain: true })
        const received = yield* take(client.messages, 2)
        assert.deepStrictEqual(received.map((m) => [m.text, m.retain]), [["a", true], ["p", false]])
        yield* publisher.publish(`${base}/as-published`, "", { qos: 1, retain: true })
        yield* publisher.publish(`${base}/plain`, "", { qos: 1, retain: true })
      }))
  })

  describe("subscription identifiers", () => {
    it.live("subscriptionIdentifier 0 is an InvalidOptionError before sending (a Subscription Identifier of 0 is a Protocol Error, MQTT 5 3.8.2.1.2)", () =>
      Effect.gen(function*() {
        const client = yield* connect(broker.url)
        for (const identifier of [0, -1, 1.5, 268_435_456]) {
          const error = yield* Effect.flip(
            client.subscribe(uniqueTopic("identifier-zero"), { subscriptionIdentifier: identifier })
          )
          assert.strictEqual(error._tag, "InvalidOptionError", String(identifier))
          assert.strictEqual((error as MqttError.InvalidOptionError).option, "subscriptionIdentifier")
        }
      }))

    it.live("subscriptionIdentifier 7: its messages carry subscriptionIdentifiers [7]; a subscription without one gives none", () =>
      Effect.gen(function*() {
        const base = uniqueTopic("subscription-identifier")
        const client = yield* connect(broker.url)
        assert.isTrue(client.connection.subscriptionIdentifiersAvailable)
        yield* client.subscribe(`${base}/seven/#`, { qos: 1, subscriptionIdentifier: 7 })
        yield* client.subscribe(`${base}/none`, { qos: 1 })
        const publisher = yield* connect(broker.url)
        yield* publisher.publish(`${base}/seven/x`, "seven", { qos: 1 })
        yield* publisher.publish(`${base}/none`, "none", { qos: 1 })
        const received = yield* take(client.messages, 2)
        assert.deepStrictEqual(received.map((m) => [m.text, m.properties.subscriptionIdentifiers]), [
          ["seven", [7]],
          ["none", undefined]
        ])
      }))

    it.live("a message matching two subscriptions with identifiers 7 and 8 comes once per subscription, each copy listing its identifier", () =>
      Effect.gen(function*() {
        const base = uniqueTopic("subscription-identifier/overlap")
        const client = yield* connect(broker.url)
        yield* client.subscribe(`${base}/#`, { qos: 1, subscriptionIdentifier: 7 })
        yield* client.subscribe(`${base}/both`, { qos: 1, subscriptionIdentifier: 8 })
        const publisher = yield* connect(broker.url)
        yield* publisher.publish(`${base}/both`, "both", { qos: 1 })
        yield* publisher.publish(`${base}/end`, "end", { qos: 1 })
        const received = yield* takeUntilMarker(client.messages, "end")
        // Mosquitto sends a copy per matching subscription (MQTT 5 allows that or one copy listing both)
        const copies = received.filter((m) => m.text === "both")
        assert.deepStrictEqual(copies.map((m) => m.properties.subscriptionIdentifiers).sort(), [[7], [8]])
        assert.deepStrictEqual(received.at(-1)!.properties.subscriptionIdentifiers, [7])
      }))

    it.live("client.subscription(filter) streams only its own matches while messages gets the rest; closing its scope unsubscribes", () =>
      Effect.gen(function*() {
        const base = uniqueTopic("subscription-stream")
        const client = yield* connect(broker.url)
        yield* client.subscribe(`${base}/rest/#`, { qos: 1 })
        const publisher = yield* connect(broker.url)
        const scope = yield* Scope.make()
        const own = yield* Scope.provide(client.subscription(`${base}/own/#`, { qos: 1 }), scope)
        yield* publisher.publish(`${base}/own/1`, "own 1", { qos: 1 })
        yield* publisher.publish(`${base}/rest/1`, "rest 1", { qos: 1 })
        yield* publisher.publish(`${base}/own/2`, "own 2", { qos: 1 })
        assert.deepStrictEqual((yield* take(own, 2)).map((m) => m.text), ["own 1", "own 2"])
        assert.deepStrictEqual((yield* take(client.messages, 1)).map((m) => m.text), ["rest 1"])
        yield* Scope.close(scope, Exit.void)
        // unsubscribed: nothing on own/ arrives anywhere, not even on messages
        yield* publisher.publish(`${base}/own/3`, "own 3", { qos: 1 })
        yield* publisher.publish(`${base}/rest/end`, "end", { qos: 1 })
        assert.deepStrictEqual((yield* takeUntilMarker(client.messages, "end")).map((m) => m.text), ["end"])
      }))

    // the copy Mosquitto sends for the `messages` subscription has no subscription identifier: it must not be
    // taken by the subscription's stream, whose own copy carries its identifier
    it.live("a message that matches both a subscription() and a plain subscription reaches the subscription's stream once and messages once", () =>
      Effect.gen(function*() {
        const base = uniqueTopic("subscription-stream/overlap")
        const client = yield* connect(broker.url)
        yield* client.subscribe(`${base}/#`, { qos: 1 })
        const own = yield* client.subscription(`${base}/own`, { qos: 1 })
        const publisher = yield* connect(broker.url)
        yield* publisher.publish(`${base}/own`, "both", { qos: 1 })
        yield* publisher.publish(`${base}/end`, "end", { qos: 1 })
        const onMessages = yield* takeUntilMarker(client.messages, "end")
        assert.deepStrictEqual(onMessages.map((m) => m.text), ["both", "end"])
        const onOwn = yield* Effect.timeoutOption(Stream.runCollect(Stream.take(own, 2)), 500)
        assert.deepStrictEqual(Option.map(onOwn, (chunk) => Array.from(chunk).length), Option.none())
      }))
  })

  describe("request/response", () => {
    it.live("100 concurrent requests from one client to a responder in another are all answered, each with the reply to its own payload", () =>
      Effect.gen(function*() {
        const topic = uniqueTopic("request/echo")
        const responder = yield* connect(broker.url)
        const seenResponseTopics = new Set<string>()
        yield* Effect.forkScoped(responder.respond(topic, (request) =>
          Effect.sync(() => {
            seenResponseTopics.add(request.properties.responseTopic!)
            return {
              payload: `reply to ${request.text}`,
              properties: { contentType: "text/plain", userProperties: [["by", "responder"]] as const }
            }
          }), { concurrency: 8 }))
        yield* subscribed(broker, topic)
        const requester = yield* connect(broker.url)
        const replies = yield* guard(Effect.forEach(
          range(100),
          (i) => requester.request(topic, `request ${i}`, { timeout: "10 seconds" }),
          { concurrency: "unbounded" }
        ))
        assert.deepStrictEqual(replies.map((m) => m.text), range(100).map((i) => `reply to request ${i}`))
        for (const reply of replies) {
          assert.strictEqual(reply.properties.contentType, "text/plain")
          // the reply was published inside the responder's span for the request: it carries a traceparent too
          assert.deepStrictEqual(reply.properties.userProperties?.filter(([name]) => name !== "traceparent"), [[
            "by",
            "responder"
          ]])
        }
        // one response topic for all the requests, named after the requester
        assert.deepStrictEqual([...seenResponseTopics], [`effect-mqtt/responses/${requester.connection.clientId}`])
      }))

    it.live("a request nobody answers fails with TimeoutError, operation \"request\"", () =>
      Effect.gen(function*() {
        const requester = yield* connect(broker.url)
        const exit = yield* Effect.exit(requester.request(uniqueTopic("request/nobody"), "hello?", { timeout: 300 }))
        const error = errorOf(exit)
        assert.strictEqual(error._tag, "MqttTimeoutError")
        assert.strictEqual((error as MqttError.MqttTimeoutError).operation, "request")
        // the client goes on: a request that is answered still works
        const topic = uniqueTopic("request/somebody")
        yield* Effect.forkScoped(requester.respond(topic, (r) => Effect.succeed(`yes: ${r.text}`)))
        yield* subscribed(broker, topic)
        assert.strictEqual((yield* requester.request(topic, "hello?", { timeout: "10 seconds" })).text, "yes: hello?")
      }))

    it.live("MQTT.js request to effect-mqtt respond: the reply goes to its response topic with its correlation data", () =>
      Effect.gen(function*() {
        const topic = uniqueTopic("request/from-mqttjs")
        const responder = yield* connect(broker.url)
        yield* Effect.forkScoped(responder.respond(topic, (request) => Effect.succeed(request.text.toUpperCase())))
        yield* subscribed(broker, topic)
        const peer = yield* mqttJs(broker.url)
        const replyTo = `${topic}/reply`
        yield* fromPromise(() => peer.subscribeAsync(replyTo, { qos: 1 }))
        const arriving = mqttJsMessages(peer, 2)
        for (const [payload, id] of [["first", 1], ["second", 2]] as const) {
          yield* fromPromise(() =>
            peer.publishAsync(topic, payload, {
              qos: 1,
              properties: { responseTopic: replyTo, correlationData: Buffer.from([0, id, 255]) }
            })
          )
        }
        const replies = yield* fromPromise(() => arriving)
        assert.deepStrictEqual(
          replies.map((r) => [r.topic, r.payload.toString(), [...(r.packet.properties?.correlationData ?? [])]]),
          [[replyTo, "FIRST", [0, 1, 255]], [replyTo, "SECOND", [0, 2, 255]]]
        )
      }))

    it.live("effect-mqtt request answered by an MQTT.js responder that copies the correlation data", () =>
      Effect.gen(function*() {
        const topic = uniqueTopic("request/to-mqttjs")
        const peer = yield* mqttJs(broker.url)
        peer.on("message", (_topic, payload, packet) => {
          const { responseTopic, correlationData } = packet.properties ?? {}
          if (responseTopic === undefined) return
          peer.publish(responseTopic, `MQTT.js got ${payload.toString()}`, {
            qos: 1,
            properties: correlationData === undefined ? {} : { correlationData }
          })
        })
        yield* fromPromise(() => peer.subscribeAsync(topic, { qos: 1 }))
        const requester = yield* connect(broker.url)
        const replies = yield* Effect.forEach(
          ["a", "b", "c"],
          (payload) => requester.request(topic, payload, { timeout: "10 seconds" }),
          { concurrency: "unbounded" }
        )
        assert.deepStrictEqual(replies.map((m) => m.text), ["MQTT.js got a", "MQTT.js got b", "MQTT.js got c"])
      }))
  })

  describe("will delay interval and will properties", () => {
    it.live("a client killed with SIGKILL has its will published with its properties after willDelayInterval 2, not at once", () =>
      Effect.gen(function*() {
        const topic = uniqueTopic("will/delayed")
        const subscriber = yield* connect(broker.url)
        yield* subscriber.subscribe(topic, { qos: 1 })
        const child = yield* willClient({
          url: broker.url,
          protocolVersion: 5,
          // the will waits for the shorter of the will delay and the session: the session must outlast the delay
          sessionExpiryInterval: 30,
          will: {
            topic,
            payload: "{\"gone\":true}",
            qos: 1,
            properties: {
              willDelayInterval: 2,
              contentType: "application/json",
              payloadFormatIndicator: true,
              responseTopic: `${topic}/reply`,
              messageExpiryInterval: 120,
              userProperties: [["cause", "SIGKILL"], ["cause", "test"], ["host", Os.hostname()]]
            }
          }
        })
        yield* killed(child)
        assert.isTrue(Option.isNone(yield* arrivesWithin(subscriber.messages, 500)), "the will came at once")
        const [will] = yield* take(subscriber.messages, 1)
        assert.deepStrictEqual([will.topic, will.text, will.qos, will.json], [topic, "{\"gone\":true}", 1, {
          gone: true
        }])
        assert.strictEqual(will.properties.contentType, "application/json")
        assert.strictEqual(will.properties.payloadFormatIndicator, true)
        assert.strictEqual(will.properties.responseTopic, `${topic}/reply`)
        assert.deepStrictEqual(will.properties.userProperties, [["cause", "SIGKILL"], ["cause", "test"], [
          "host",
          Os.hostname()
        ]])
        assert.isDefined(will.properties.messageExpiryInterval)
        assert.isAtMost(will.properties.messageExpiryInterval!, 120)
      }))

    it.live("a client that reconnects to its session within the will delay cancels the will", () =>
      Effect.gen(function*() {
        const topic = uniqueTopic("will/cancelled")
        const clientId = `m5-${runId}-will-cancelled`
        const subscriber = yield* connect(broker.url)
        yield* subscriber.subscribe([topic, `${topic}/end`], { qos: 1 })
        const child = yield* willClient({
          url: broker.url,
          protocolVersion: 5,
          clientId,
          sessionExpiryInterval: 30,
          will: { topic, payload: "must not be sent", qos: 1, properties: { willDelayInterval: 2 } }
        })
        yield* killed(child)
        // the broker must have seen the connection end before the client comes back, or nothing is proved
        yield* logLine(
          broker,
          new RegExp(`Client ${escape(clientId)} closed its connection|${escape(clientId)}.*disconnect`)
        )
        const back = yield* connect(broker.url, {
          clientId,
          cleanStart: false,
          sessionExpiryInterval: 30,
          disconnect: { sessionExpiryInterval: 0 }
        })
        assert.isTrue(back.connection.sessionPresent)
        // past the delay: a will still pending would have been published by now
        yield* brokerTime(3000)
        const publisher = yield* connect(broker.url)
        yield* publisher.publish(`${topic}/end`, "end", { qos: 1 })
        assert.deepStrictEqual((yield* takeUntilMarker(subscriber.messages, "end")).map((m) => m.text), ["end"])
      }))
  })

  describe("client identifier assigned by the broker", () => {
    it.live("clientId \"\": client.connection.clientId is the identifier Mosquitto assigned", () =>
      Effect.gen(function*() {
        const client = yield* connect(broker.url, { clientId: "" })
        const assigned = client.connection.clientId
        assert.match(assigned, /^auto-/)
        yield* logLine(broker, new RegExp(`New client connected from .* as ${escape(assigned)} \\(p5`))
      }))

    it.live("after a connection drop, a client with an assigned identifier and a session expiry comes back under that identifier and resumes its session", () =>
      Effect.gen(function*() {
        const topic = uniqueTopic("assigned-id/resume")
        const t = yield* tap(broker)
        const client = yield* connect(t.url, {
          clientId: "",
          sessionExpiryInterval: 30,
          reconnect: fast,
          disconnect: { sessionExpiryInterval: 0 }
        })
        const first = client.connection
        yield* client.subscribe(topic, { qos: 1 })
        t.cut()
        const publisher = yield* connect(broker.url)
        yield* publisher.publish(topic, "while away", { qos: 1 })
        yield* until(() => client.connection !== first)
        const connects = packetsOf(t, "connect", "up")
        assert.strictEqual(connects.length, 2)
        assert.deepStrictEqual([connects[0].clientId, connects[0].clean], ["", true])
        assert.deepStrictEqual([connects[1].clientId, connects[1].clean], [first.clientId, false])
        assert.deepStrictEqual([client.connection.clientId, client.connection.sessionPresent], [first.clientId, true])
        assert.deepStrictEqual((yield* take(client.messages, 1)).map((m) => m.text), ["while away"])
      }))
  })

  describe("DISCONNECT on release", () => {
    it.live("released with disconnect reasonCode 4 (disconnect with will message), the broker publishes the will", () =>
      Effect.gen(function*() {
        const topic = uniqueTopic("disconnect/with-will")
        const subscriber = yield* connect(broker.url)
        yield* subscriber.subscribe(topic, { qos: 1 })
        const t = yield* tap(broker)
        yield* Effect.scoped(connect(t.url, {
          will: { topic, payload: "said goodbye with a will", qos: 1 },
          disconnect: { reasonCode: 4 }
        }))
        assert.deepStrictEqual((yield* take(subscriber.messages, 1)).map((m) => m.text), ["said goodbye with a will"])
        // the tap forwarded the DISCONNECT before the broker could act on it
        assert.deepStrictEqual(packetsOf(t, "disconnect", "up").map((d) => d.reasonCode), [4])
      }))

    it.live("sessionExpiryInterval at DISCONNECT replaces CONNECT's: CONNECT 60 then DISCONNECT 0 ends the session, while without it the session is kept", () =>
      Effect.gen(function*() {
        const clientId = `m5-${runId}-disconnect-expiry`
        const topic = uniqueTopic("disconnect/session-expiry")
        const publisher = yield* connect(broker.url)
        const visit = (disconnect: MqttClient.Options["disconnect"]) =>
          Effect.scoped(Effect.gen(function*() {
            const client = yield* connect(broker.url, {
              clientId,
              cleanStart: false,
              sessionExpiryInterval: 60,
              ...(disconnect === undefined ? {} : { disconnect })
            })
            yield* client.subscribe(topic, { qos: 1 })
            return client.connection.sessionPresent
          }))
        yield* visit({ sessionExpiryInterval: 0 })
        // kept (CONNECT's 60 s): the next connection finds it
        yield* visit(undefined)
        assert.isTrue(yield* visit({ sessionExpiryInterval: 0 }))
        // ended by DISCONNECT's 0: the next connection starts afresh, and nothing was queued for it
        yield* publisher.publish(topic, "for nobody", { qos: 1 })
        const client = yield* connect(broker.url, {
          clientId,
          cleanStart: false,
          sessionExpiryInterval: 60,
          disconnect: { sessionExpiryInterval: 0 }
        })
        assert.isFalse(client.connection.sessionPresent)
        yield* client.subscribe(topic, { qos: 1 })
        yield* publisher.publish(topic, "end", { qos: 1 })
        assert.deepStrictEqual((yield* takeUntilMarker(client.messages, "end")).map((m) => m.text), ["end"])
      }))
  })
})

// ---------------------------------------------------------------------------------------------------------------
// topic aliases: max_topic_alias 2
// ---------------------------------------------------------------------------------------------------------------

describe("topic aliases against Mosquitto with max_topic_alias 2", () => {
  let broker: MosquittoHandle
  beforeAll(async () => {
    broker = await startMosquitto({ protocolConfig: "max_topic_alias 2" })
  })
  afterAll(() => broker?.dispose())

  /** Five topics of about 200 bytes. */
  const longTopics = (base: string) => range(5).map((i) => `${base}/${i}/${"long-topic-level/".repeat(12)}end`)

  /** An irregular rotation: hits and misses of a two-entry LRU cache. */
  const sequence = [0, 0, 1, 0, 2, 2, 1, 3, 0, 4, 4, 1, 2, 3, 4, 0, 1, 1, 0, 2, 3, 3, 2, 4, 0, 1, 0, 1, 4, 3]

  /** What a client that re-uses the least recently used of `maximum` aliases sends for each publish. */
  const lruModel = (topics: ReadonlyArray<string>, maximum: number) => {
    const aliases = new Map<string, number>()
    return topics.map((topic) => {
      let alias = aliases.get(topic)
      const known = alias !== undefined
      if (alias !== undefined) aliases.delete(topic)
      else if (aliases.size < maximum) alias = aliases.size + 1
      else {
        const [oldest, reused] = aliases.entries().next().value!
        aliases.delete(oldest)
        alias = reused
      }
      aliases.set(topic, alias)
      return { alias, topicSent: !known }
    })
  }

  /** What a broker makes of the PUBLISH packets: each topic, resolved through the aliases they set. */
  const resolve = (publishes: ReadonlyArray<MqttPacket.IPublishPacket>) => {
    const aliases = new Map<number, string>()
    return publishes.map((p) => {
      const alias = p.properties?.topicAlias
      if (alias === undefined) return p.topic
      if (p.topic !== "") aliases.set(alias, p.topic)
      return aliases.get(alias)
    })
  }

  it.live("Topic Alias Maximum 2 is adopted; 30 publishes over five 200-byte topics re-use aliases 1 and 2, least recently used first, and each message arrives under its full topic", () =>
    Effect.gen(function*() {
      const topics = longTopics(uniqueTopic("aliases"))
      const subscriber = yield* connect(broker.url)
      yield* subscriber.subscribe(topics.map((filter) => ({ filter, qos: 1 })))
      const t = yield* tap(broker)
      const publisher = yield* connect(t.url)
      assert.strictEqual(publisher.connection.topicAliasMaximum, 2)
      const sent = sequence.map((i) => topics[i])
      for (const [n, topic] of sent.entries()) {
        yield* publisher.publish(topic, String(n), { qos: n % 2 === 0 ? 1 : 0 })
      }
      const received = yield* take(subscriber.messages, sent.length)
      const byIndex = received.map((m) => [Number(m.text), m.topic] as const).sort(([a], [b]) => a - b)
      assert.deepStrictEqual(byIndex, sent.map((topic, n) => [n, topic] as const))
      const publishes = packetsOf(t, "publish", "up")
      assert.deepStrictEqual(
        publishes.map((p) => ({ alias: p.properties?.topicAlias, topicSent: p.topic !== "" })),
        lruModel(sent, 2)
      )
      assert.deepStrictEqual(resolve(publishes), sent)
      assert.isAbove(publishes.filter((p) => p.topic === "").length, 0, "no topic was ever left out")
      assert.strictEqual((yield* publisher.status)._tag, "Connected")
    }))

  it.live("with topicAliases: false no PUBLISH carries a Topic Alias, and each message still arrives under its topic", () =>
    Effect.gen(function*() {
      const topics = longTopics(uniqueTopic("aliases/off"))
      const subscriber = yield* connect(broker.url)
      yield* subscriber.subscribe(topics.map((filter) => ({ filter, qos: 1 })))
      const t = yield* tap(broker)
      const publisher = yield* connect(t.url, { topicAliases: false })
      const sent = sequence.map((i) => topics[i])
      for (const [n, topic] of sent.entries()) yield* publisher.publish(topic, String(n), { qos: 1 })
      const received = yield* take(subscriber.messages, sent.length)
      assert.deepStrictEqual(received.map((m) => m.topic), sent)
      const publishes = packetsOf(t, "publish", "up")
      assert.strictEqual(publishes.length, sent.length)
      assert.isTrue(publishes.every((p) => p.properties?.topicAlias === undefined && p.topic !== ""))
    }))

  it.live("after a connection drop the aliases start afresh: the first publish to each topic on the new connection carries its full topic, and all arrive", () =>
    Effect.gen(function*() {
      const topics = longTopics(uniqueTopic("aliases/reconnect")).slice(0, 2)
      const subscriber = yield* connect(broker.url)
      yield* subscriber.subscribe(topics.map((filter) => ({ filter, qos: 1 })))
      const t = yield* tap(broker)
      const publisher = yield* connect(t.url, { reconnect: fast })
      const first = publisher.connection
      for (const n of range(6)) yield* publisher.publish(topics[n % 2], `before ${n}`, { qos: 1 })
      t.cut()
      // published while the client reconnects: sent on the new connection
      for (const n of range(6)) yield* publisher.publish(topics[n % 2], `after ${n}`, { qos: 1 })
      assert.notStrictEqual(publisher.connection, first)
      const received = yield* take(subscriber.messages, 12)
      assert.deepStrictEqual(
        received.map((m) => [m.text, m.topic]),
        [...range(6).map((n) => [`before ${n}`, topics[n % 2]]), ...range(6).map((n) => [`after ${n}`, topics[n % 2]])]
      )
      assert.strictEqual(t.connections(), 2)
      const second = packetsOf(t, "publish", "up", 2)
      assert.strictEqual(second.length, 6)
      assert.deepStrictEqual(resolve(second), range(6).map((n) => topics[n % 2]))
      assert.deepStrictEqual(second.slice(0, 2).map((p) => p.topic), topics)
      assert.isTrue(second.slice(2).every((p) => p.topic === ""), "later publishes use the new aliases")
    }))
})

// ---------------------------------------------------------------------------------------------------------------
// Receive Maximum: max_inflight_messages 2
// ---------------------------------------------------------------------------------------------------------------

describe("the broker's Receive Maximum against Mosquitto with max_inflight_messages 2", () => {
  let broker: MosquittoHandle
  beforeAll(async () => {
    broker = await startMosquitto({ protocolConfig: "max_inflight_messages 2" })
  })
  afterAll(() => broker?.dispose())

  for (const qos of [1, 2] as const) {
    it.live(`300 concurrent QoS ${qos} publishes all complete with never more than 2 in flight, and each arrives exactly once`, () =>
      Effect.gen(function*() {
        const topic = uniqueTopic(`receive-maximum/qos${qos}`)
        const subscriber = yield* connect(broker.url)
        yield* subscriber.subscribe(topic, { qos })
        const t = yield* tap(broker)
        const publisher = yield* connect(t.url)
        assert.strictEqual(publisher.connection.receiveMaximum, 2)
        yield* guard(Effect.forEach(range(300), (i) => publisher.publish(topic, String(i), { qos }), {
          concurrency: "unbounded",
          discard: true
        }))
        const received = yield* take(subscriber.messages, 300)
        assert.deepStrictEqual(received.map((m) => Number(m.text)).sort((a, b) => a - b), range(300))
        assert.isTrue(received.every((m) => m.qos === qos))
        assert.strictEqual(packetsOf(t, "publish", "up").length, 300)
        assert.strictEqual(maxInFlight(t, "up"), 2)
        // nothing else follows: a duplicate would come before this marker
        yield* publisher.publish(topic, "end", { qos })
        assert.deepStrictEqual((yield* take(subscriber.messages, 1)).map((m) => m.text), ["end"])
      }))
  }
})

// ---------------------------------------------------------------------------------------------------------------
// refusals: max_qos 1, max_packet_size 300, retain_available false, an ACL
// ---------------------------------------------------------------------------------------------------------------

describe("refusals against Mosquitto with max_qos 1, max_packet_size 300, retain_available false and an ACL", () => {
  let broker: MosquittoHandle
  let aclDir: string
  beforeAll(async () => {
    aclDir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-mqtt-mqtt5-"))
    const aclFile = Path.join(aclDir, "acl")
    Fs.writeFileSync(aclFile, "topic readwrite open/#\ntopic read readonly/#\n")
    broker = await startMosquitto({
      protocolConfig: `max_qos 1\nmax_packet_size 300\nretain_available false\nacl_file ${aclFile}`
    })
  })
  afterAll(async () => {
    await broker?.dispose()
    Fs.rmSync(aclDir, { recursive: true, force: true })
  })

  /** Subscribes `client` to `topic`, publishes `text` from it and checks that it comes back: the connection works. */
  const stillUsable = (client: MqttClient.Client, topic: string, text: string) =>
    Effect.gen(function*() {
      yield* client.subscribe(topic, { qos: 1 })
      yield* client.publish(topic, text, { qos: 1 })
      assert.deepStrictEqual((yield* take(client.messages, 1)).map((m) => m.text), [text])
      assert.strictEqual((yield* client.status)._tag, "Connected")
    })

  it.live("the CONNACK's limits are adopted: maximumQoS 1, retainAvailable false, maximumPacketSize 300", () =>
    Effect.gen(function*() {
      const client = yield* connect(broker.url)
      const { maximumQoS, retainAvailable, maximumPacketSize } = client.connection
      assert.deepStrictEqual({ maximumQoS, retainAvailable, maximumPacketSize }, {
        maximumQoS: 1,
        retainAvailable: false,
        maximumPacketSize: 300
      })
    }))

  it.live("a publish the ACL denies is a PublishError with Mosquitto's reason code 0x87 (not authorized), and the connection stays usable", () =>
    Effect.gen(function*() {
      const t = yield* tap(broker)
      const client = yield* connect(t.url)
      const topic = `readonly/${runId}/denied`
      const error = errorOf(yield* Effect.exit(client.publish(topic, "denied", { qos: 1 })))
      assert.strictEqual(error._tag, "PublishError")
      assert.deepStrictEqual([(error as MqttError.PublishError).topic, (error as MqttError.PublishError).reasonCode], [
        topic,
        0x87
      ])
      // the refusal came from the broker: the PUBLISH went out and a PUBACK 0x87 came back
      assert.deepStrictEqual(packetsOf(t, "puback", "down").map((p) => p.reasonCode), [0x87])
      yield* stillUsable(client, `open/${runId}/after-acl`, "still here")
    }))

  it.live("a publish larger than max_packet_size is a PublishError 0x95 before sending, and the connection stays usable", () =>
    Effect.gen(function*() {
      const t = yield* tap(broker)
      const client = yield* connect(t.url)
      const topic = `open/${runId}/too-large`
      const error = errorOf(yield* Effect.exit(client.publish(topic, "x".repeat(400), { qos: 1 })))
      assert.strictEqual(error._tag, "PublishError")
      assert.strictEqual((error as MqttError.PublishError).reasonCode, 0x95)
      assert.match(error.message, /300/)
      assert.deepStrictEqual(packetsOf(t, "publish", "up"), [], "nothing was sent")
      // just under the limit is fine (Mosquitto disconnects a client that sends more)
      yield* stillUsable(client, topic, "x".repeat(200))
    }))

  it.live("a SUBSCRIBE or UNSUBSCRIBE larger than max_packet_size is a typed error 0x95 before sending: no disconnect, no reconnect loop, a later subscribe works", () =>
    Effect.gen(function*() {
      const t = yield* tap(broker)
      // reconnecting, as in an application: a SUBSCRIBE that Mosquitto disconnects for would be sent on each connection
      const client = yield* connect(t.url, { reconnect: fast })
      const filter = `open/${runId}/${"long-level/".repeat(30)}#`
      const subscribe = errorOf(yield* Effect.exit(guard(client.subscribe(filter, { qos: 1 }))))
      assert.deepStrictEqual([subscribe._tag, (subscribe as MqttError.SubscribeError).reasonCode], [
        "SubscribeError",
        0x95
      ])
      assert.match(subscribe.message, /not sent: .*300/)
      const stream = errorOf(yield* Effect.exit(guard(Effect.scoped(client.subscription(filter)))))
      assert.deepStrictEqual([stream._tag, (stream as MqttError.SubscribeError).reasonCode], ["SubscribeError", 0x95])
      const unsubscribe = errorOf(yield* Effect.exit(guard(client.unsubscribe(filter))))
      assert.deepStrictEqual([unsubscribe._tag, (unsubscribe as MqttError.UnsubscribeError).reasonCode], [
        "UnsubscribeError",
        0x95
      ])
      assert.deepStrictEqual(packetsOf(t, "subscribe", "up"), [], "nothing was sent")
      assert.deepStrictEqual(packetsOf(t, "unsubscribe", "up"), [], "nothing was sent")
      yield* stillUsable(client, `open/${runId}/after-too-large`, "still subscribed")
      assert.strictEqual(t.connections(), 1, "one connection: never disconnected")
      assert.deepStrictEqual(packetsOf(t, "disconnect", "down"), [])
      assert.strictEqual((yield* client.metrics).reconnects, 0)
    }))

  it.live("a QoS 2 publish under max_qos 1 is a PublishError 0x9B before sending; QoS 1 goes through", () =>
    Effect.gen(function*() {
      const t = yield* tap(broker)
      const client = yield* connect(t.url)
      const topic = `open/${runId}/qos2`
      const error = errorOf(yield* Effect.exit(client.publish(topic, "exactly once?", { qos: 2 })))
      assert.strictEqual(error._tag, "PublishError")
      assert.strictEqual((error as MqttError.PublishError).reasonCode, 0x9b)
      assert.deepStrictEqual(packetsOf(t, "publish", "up"), [], "nothing was sent")
      yield* stillUsable(client, topic, "at least once")
    }))

  it.live("a publish refused before sending (0x9B, 0x95, 0x9A) is its caller's error only: no warning says it was accepted and not sent", () => {
    const lines: Array<string> = []
    const logger = Logger.make((options) => {
      lines.push(`${options.logLevel} ${Array.isArray(options.message) ? options.message.join(" ") : options.message}`)
    })
    return Effect.gen(function*() {
      const client = yield* connect(broker.url)
      const topic = `open/${runId}/refused-quietly`
      const refusals: ReadonlyArray<readonly [string | Uint8Array, MqttClient.PublishOptions, number]> = [
        ["q2", { qos: 2 }, 0x9b],
        ["x".repeat(400), { qos: 1 }, 0x95],
        ["r", { qos: 1, retain: true }, 0x9a],
        ["x".repeat(400), { qos: 0 }, 0x95]
      ]
      for (const [payload, options, reasonCode] of refusals) {
        const published = errorOf(yield* Effect.exit(client.publish(topic, payload, options)))
        assert.deepStrictEqual([published._tag, (published as MqttError.PublishError).reasonCode], [
          "PublishError",
          reasonCode
        ])
        const accepted = errorOf(yield* Effect.exit(client.publishAccepted(topic, payload, options)))
        assert.deepStrictEqual([accepted._tag, (accepted as MqttError.PublishError).reasonCode], [
          "PublishError",
          reasonCode
        ])
      }
      yield* stillUsable(client, topic, "fine")
      assert.deepStrictEqual(lines.filter((line) => line.includes("not sent")), [])
    }).pipe(Effect.provide(Logger.layer([logger])))
  })

  it.live("a retained publish under retain_available false is a PublishError 0x9A before sending, not a disconnect", () =>
    Effect.gen(function*() {
      const t = yield* tap(broker)
      const client = yield* connect(t.url)
      const topic = `open/${runId}/retained`
      const error = errorOf(yield* Effect.exit(client.publish(topic, "keep me", { qos: 1, retain: true })))
      assert.strictEqual(error._tag, "PublishError")
      assert.strictEqual((error as MqttError.PublishError).reasonCode, 0x9a)
      assert.deepStrictEqual(packetsOf(t, "publish", "up"), [], "nothing was sent")
      yield* stillUsable(client, topic, "not retained")
    }))
})
