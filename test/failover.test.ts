/**
 * Failover across the nodes of a `url` list and MQTT 5 Server References, against scripted fake brokers (one per
 * node): the order of attempts (the next node, the lost one last), one schedule delay per full round (on
 * TestClock), which node `connection.broker` and `statusChanges` name, what the session carries to the next node
 * (Session Present 0: restore and resend as new; Session Present 1: resend with DUP), errors that name the node,
 * and `followServerReference`: followed only to the hosts it allows, never from TLS to plaintext.
 */
import { assert, describe, expect, it } from "@effect/vitest"
import { Cause, Duration, Effect, Exit, Fiber, Logger, Queue, Schedule, Stream } from "effect"
import { MqttClient, MqttError, type MqttMessage } from "effect-mqtt"
import { TestClock } from "effect/testing"
import * as Net from "node:net"
import * as Tls from "node:tls"
import * as Failover from "../src/internal/failover.ts"
import * as Url from "../src/internal/url.ts"
import { makeCerts } from "./support/certs.ts"
import * as FakeBroker from "./support/FakeBroker.ts"

/** Lets real I/O happen (the fake brokers and the client talk over real sockets, even on TestClock). */
const settle = Effect.promise(() => new Promise<void>((resolve) => setTimeout(resolve, 30)))
const sleepReal = (ms: number) => Effect.promise(() => new Promise<void>((resolve) => setTimeout(resolve, ms)))

const fast = Schedule.spaced("10 millis")

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

/** Waits (real time, at most 10 s) until the last status is the one described. */
const awaitLast = (statuses: ReadonlyArray<MqttClient.ConnectionStatus>, described: string) =>
  Effect.gen(function*() {
    const deadline = Date.now() + 10_000
    while (statuses.length === 0 || brief(statuses.at(-1)!) !== described) {
      if (Date.now() > deadline) {
        return yield* Effect.die(new Error(`never "${described}": ${JSON.stringify(statuses.map(brief))}`))
      }
      yield* sleepReal(10)
    }
  })

/** Waits (real time) until the client is connected to `broker`. */
const awaitConnectedTo = (client: MqttClient.Client, broker: string) =>
  Effect.gen(function*() {
    const deadline = Date.now() + 10_000
    while (client.connection.broker !== broker || (yield* client.status)._tag !== "Connected") {
      if (Date.now() > deadline) return yield* Effect.die(new Error(`never connected to ${broker}`))
      yield* sleepReal(10)
    }
  })

/** A status in a few words, for comparing sequences. */
const brief = (s: MqttClient.ConnectionStatus): string =>
  s._tag === "Connecting"
    ? `Connecting ${s.attempt} ${s.broker}`
    : s._tag === "Connected"
    ? `Connected ${s.info.broker}${s.movedFrom === undefined ? "" : ` from ${s.movedFrom}`}`
    : s._tag === "Disconnected"
    ? `Disconnected ${s.retryIn === undefined ? "-" : Duration.toMillis(s.retryIn)} ms`
    : `Closed ${s.cause?._tag ?? ""}`

/** The typed failure of an exit; fails the test on a success or a defect. */
const errorOf = <A, E>(exit: Exit.Exit<A, E>): E => {
  if (Exit.isSuccess(exit)) return assert.fail("expected a failure, got a success")
  const failure = exit.cause.reasons.find(Cause.isFailReason)
  if (failure === undefined) return assert.fail(`expected a typed failure, got ${Cause.pretty(exit.cause)}`)
  return failure.error
}

/** Runs an effect with a logger that keeps every line. */
const logged = <A, E, R>(effect: Effect.Effect<A, E, R>, lines: Array<string>) =>
  Effect.provide(
    effect,
    Logger.layer([Logger.make((options) => lines.push(`${options.logLevel} ${String(options.message)}`))])
  )

/**
 * A client of the list [a, b] with a session kept (Clean Start 0, Session Expiry 600 s), connected to a: it and
 * a's side of the connection.
 */
const sessionOnFirst = (
  a: FakeBroker.FakeBroker,
  b: FakeBroker.FakeBroker,
  clientId: string,
  options: Partial<MqttClient.Options> = {}
) =>
  Effect.gen(function*() {
    const fiber = yield* Effect.forkChild(MqttClient.make({
      url: [a.url, b.url],
      protocolVersion: 5,
      clientId,
      cleanStart: false,
      sessionExpiryInterval: 600,
      reconnect: fast,
      ...options
    }))
    const onA = yield* a.acceptAndConnack()
    const client = yield* Fiber.join(fiber)
    return { client, onA }
  })

const fakes = (n: number, protocolVersion: 4 | 5 = 4) =>
  Effect.all(Array.from({ length: n }, () => FakeBroker.make({ protocolVersion })))

const text = (packet: { readonly payload: Buffer | string | Uint8Array }) => Buffer.from(packet.payload).toString()

/** A port nothing listens on. */
const closedPort = Effect.promise(() =>
  new Promise<number>((resolve) => {
    const server = Net.createServer()
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as Net.AddressInfo
      server.close(() => resolve(port))
    })
  })
)

// ---------------------------------------------------------------------------------------------------------------
// the list of nodes
// ---------------------------------------------------------------------------------------------------------------

describe("a list of brokers", () => {
  it.live("the first connection tries the nodes in order: a node that is down is skipped", () =>
    Effect.gen(function*() {
      const [b] = yield* fakes(1)
      const down = `mqtt://127.0.0.1:${yield* closedPort}`
      const lines: Array<string> = []
      const fiber = yield* Effect.forkChild(logged(MqttClient.make({ url: [down, b.url], reconnect: fast }), lines))
      yield* b.acceptAndConnack()
      const client = yield* Fiber.join(fiber)
      expect(client.connection.broker).toBe(b.url)
      const status = yield* client.status
      assert(status._tag === "Connected")
      expect(status.info.broker).toBe(b.url)
      expect(status.movedFrom).toBeUndefined()
      // the skipped node is named in a warning that says where the client goes next
      expect(lines.filter((l) => l.startsWith("Warn"))).toEqual([
        expect.stringMatching(new RegExp(`^Warn Could not connect to the broker at ${down}: .*; trying ${b.url} now$`))
      ])
    }))

  it.live("when every node is down, the first connection fails with the last node's error, naming it", () =>
    Effect.gen(function*() {
      const urls = [`mqtt://127.0.0.1:${yield* closedPort}`, `mqtt://127.0.0.1:${yield* closedPort}`]
      const error = errorOf(yield* Effect.exit(MqttClient.make({ url: urls })))
      assert(error instanceof MqttError.ConnectionLostError, String(error))
      expect([error.broker, error.phase]).toEqual([urls[1], "connecting"])
      expect(error.message).toContain(`Could not connect to the broker at ${urls[1]}`)
    }))

  it.effect(
    "a lost connection goes to the next node, then the others, the lost one last; one schedule delay per full round",
    () =>
      Effect.gen(function*() {
        const [a, b, c] = yield* fakes(3)
        const fiber = yield* Effect.forkChild(
          MqttClient.make({ url: [a.url, b.url, c.url], keepAlive: 0, reconnect: Schedule.exponential("100 millis") })
        )
        const first = yield* a.acceptAndConnack()
        const client = yield* Fiber.join(fiber)
        const statuses = yield* record(client)
        yield* first.connection.destroy
        yield* awaitLast(statuses, "Disconnected 100 ms")
        // the first round waits the schedule's first delay, then tries B, C and A one after the other
        expect(b.connections.length).toBe(0)
        yield* TestClock.adjust("99 millis")
        yield* settle
        expect(b.connections.length).toBe(0)
        yield* TestClock.adjust("1 millis")
        for (const node of [b, c, a]) {
          const refused = yield* node.accept
          yield* refused.expect("connect")
          yield* refused.connack({ returnCode: 3 })
          yield* refused.closed
        }
        // the second round waits the second delay (200 ms), then begins again with B, which accepts
        yield* awaitLast(statuses, "Disconnected 200 ms")
        expect(b.connections.length).toBe(1)
        yield* TestClock.adjust("199 millis")
        yield* settle
        expect(b.connections.length).toBe(1)
        yield* TestClock.adjust("1 millis")
        yield* b.acceptAndConnack()
        yield* awaitLast(statuses, `Connected ${b.url} from ${a.url}`)
        expect(statuses.map(brief)).toEqual([
          `Connected ${a.url}`,
          "Disconnected 100 ms",
          `Connecting 1 ${b.url}`,
          "Disconnected 0 ms",
          `Connecting 2 ${c.url}`,
          "Disconnected 0 ms",
          `Connecting 3 ${a.url}`,
          "Disconnected 200 ms",
          `Connecting 4 ${b.url}`,
          `Connected ${b.url} from ${a.url}`
        ])
        // each failed attempt's error names its own node
        const causes = statuses.flatMap((s) => s._tag === "Disconnected" ? [s.cause] : [])
        expect(causes.map((e) => "broker" in e ? e.broker : undefined)).toEqual([a.url, b.url, c.url, a.url])
        expect(client.connection.broker).toBe(b.url)
        // and the next loss, on B, goes to C first (the backoff goes on: the connection lasted less than a second)
        yield* b.connections[1].destroy
        yield* awaitLast(statuses, "Disconnected 400 ms")
        yield* TestClock.adjust("400 millis")
        yield* c.acceptAndConnack()
        yield* awaitLast(statuses, `Connected ${c.url} from ${b.url}`)
      })
  )

  it.live("a node that refuses the client for good does not end the round: the next node is tried", () =>
    Effect.gen(function*() {
      const [a, b] = yield* fakes(2)
      const lines: Array<string> = []
      const fiber = yield* Effect.forkChild(logged(MqttClient.make({ url: [a.url, b.url], reconnect: fast }), lines))
      const onA = yield* a.accept
      yield* onA.expect("connect")
      yield* onA.connack({ returnCode: 5 })
      const onB = yield* b.acceptAndConnack()
      const client = yield* Fiber.join(fiber)
      expect(client.connection.broker).toBe(b.url)
      expect(lines.some((line) => line.startsWith("Warn") && line.includes(`trying ${b.url} now`))).toBe(true)
      // and after a loss: the round goes on past a node that refuses for good
      const statuses = yield* record(client)
      yield* onB.connection.destroy
      const again = yield* a.accept
      yield* again.expect("connect")
      yield* again.connack({ returnCode: 4 })
      yield* b.acceptAndConnack()
      yield* awaitLast(statuses, `Connected ${b.url}`)
    }))

  it.live("every node of a round refuses the client for good: it gives up with the last refusal", () =>
    Effect.gen(function*() {
      const [a, b] = yield* fakes(2)
      const refuse = (broker: FakeBroker.FakeBroker, returnCode: number) =>
        Effect.gen(function*() {
          const connection = yield* broker.accept
          yield* connection.expect("connect")
          yield* connection.connack({ returnCode })
        })
      const first = yield* Effect.forkChild(Effect.exit(MqttClient.make({ url: [a.url, b.url], reconnect: fast })))
      yield* refuse(a, 5)
      yield* refuse(b, 4)
      const error = errorOf(yield* Fiber.join(first))
      assert(error instanceof MqttError.ConnectRefusedError, String(error))
      expect([error.reasonCode, error.broker]).toEqual([4, b.url])
      // after a loss: B, then A, both for good: the client stops
      const fiber = yield* Effect.forkChild(MqttClient.make({ url: [a.url, b.url], reconnect: fast }))
      const onA = yield* a.acceptAndConnack()
      const client = yield* Fiber.join(fiber)
      yield* onA.connection.destroy
      yield* refuse(b, 5)
      yield* refuse(a, 5)
      const closed = errorOf(yield* Effect.exit(client.awaitClose))
      assert(closed instanceof MqttError.ConnectRefusedError, String(closed))
      expect([closed.reasonCode, closed.broker]).toEqual([5, a.url])
    }))

  it.live("a single URL in a list behaves as the URL: the client comes back to it, and no move is reported", () =>
    Effect.gen(function*() {
      const [a] = yield* fakes(1)
      const fiber = yield* Effect.forkChild(MqttClient.make({ url: [a.url], reconnect: fast }))
      const first = yield* a.acceptAndConnack()
      const client = yield* Fiber.join(fiber)
      const statuses = yield* record(client)
      yield* first.connection.destroy
      yield* a.acceptAndConnack()
      yield* awaitLast(statuses, `Connected ${a.url}`)
      expect(statuses.map(brief)).toEqual([
        `Connected ${a.url}`,
        "Disconnected 10 ms",
        `Connecting 1 ${a.url}`,
        `Connected ${a.url}`
      ])
    }))
})

// ---------------------------------------------------------------------------------------------------------------
// the session goes along
// ---------------------------------------------------------------------------------------------------------------

describe("the session moves with the client", () => {
  it.live(
    "Session Present 0 on the next node: subscriptions are restored there and the unacknowledged QoS 1 publish is sent again, before new ones",
    () =>
      Effect.gen(function*() {
        const [a, b] = yield* fakes(2)
        const fiber = yield* Effect.forkChild(MqttClient.make({ url: [a.url, b.url], reconnect: fast }))
        const onA = yield* a.acceptAndConnack()
        const client = yield* Fiber.join(fiber)
        const subscribed = yield* Effect.forkChild(client.subscribe("sensors/#", { qos: 1 }))
        const subscribe = yield* onA.connection.expect("subscribe")
        yield* onA.connection.send({ cmd: "suback", messageId: subscribe.messageId!, granted: [1] })
        yield* Fiber.join(subscribed)
        const pending = yield* Effect.forkChild(client.publish("out", "in flight", { qos: 1 }))
        const first = yield* onA.connection.expect("publish")
        yield* onA.connection.destroy
        const onB = yield* b.accept
        const connect = yield* onB.expect("connect")
        expect(connect.clean).toBe(true)
        yield* onB.connack({ sessionPresent: false })
        const restore = yield* onB.expect("subscribe")
        expect(restore.subscriptions.map((s) => [s.topic, s.qos])).toEqual([["sensors/#", 1]])
        yield* onB.send({ cmd: "suback", messageId: restore.messageId!, granted: [1] })
        const resent = yield* onB.expect("publish")
        expect([resent.topic, text(resent), resent.qos]).toEqual(["out", "in flight", 1])
        expect(text(first)).toBe("in flight")
        yield* onB.send({ cmd: "puback", messageId: resent.messageId! })
        yield* Fiber.join(pending)
        expect(client.connection.broker).toBe(b.url)
      })
  )

  it.live(
    "Session Present 1 on the next node (a cluster that shares sessions): the publish is resent with DUP and its identifier; the subscriptions are made again with Retain Handling 1",
    () =>
      Effect.gen(function*() {
        const [a, b] = yield* fakes(2, 5)
        const { client, onA } = yield* sessionOnFirst(a, b, "shared-session")
        const subscribed = yield* Effect.forkChild(client.subscribe("sensors/#", { qos: 1 }))
        const subscribe = yield* onA.connection.expect("subscribe")
        yield* onA.connection.send({ cmd: "suback", messageId: subscribe.messageId!, granted: [1] })
        yield* Fiber.join(subscribed)
        const pending = yield* Effect.forkChild(client.publish("out", "in flight", { qos: 1 }))
        const first = yield* onA.connection.expect("publish")
        yield* onA.connection.destroy
        const onB = yield* b.accept
        const connect = yield* onB.expect("connect")
        expect([connect.clean, connect.clientId]).toEqual([false, "shared-session"])
        yield* onB.connack({ sessionPresent: true })
        // the node may hold an older form of the session (independent brokers): the subscriptions are made again;
        // Retain Handling 1 sends the retained messages only where the node did not hold the subscription
        const again = yield* onB.expect("subscribe")
        expect(again.subscriptions.map((s) => [s.topic, s.qos, s.rh])).toEqual([["sensors/#", 1, 1]])
        yield* onB.send({ cmd: "suback", messageId: again.messageId!, granted: [1] })
        const resent = yield* onB.expect("publish")
        expect([resent.messageId, resent.dup, text(resent)]).toEqual([first.messageId, true, "in flight"])
        yield* onB.send({ cmd: "puback", messageId: resent.messageId!, reasonCode: 0 })
        yield* Fiber.join(pending)
        yield* onB.expectSilence(200)
        expect(client.connection.sessionPresent).toBe(true)
      })
  )

  it.live(
    "Session Present 1 on the next node, which answers the PUBREL of a QoS 2 publish received by the last one with PUBCOMP 0x92: the publish fails (delivery not known); on the same node it succeeds",
    () =>
      Effect.gen(function*() {
        const [a, b] = yield* fakes(2, 5)
        const { client, onA } = yield* sessionOnFirst(a, b, "qos2-moves")
        /** a QoS 2 publish received (PUBREC) on `connection`, which then drops before PUBCOMP */
        const receivedThenLost = (connection: FakeBroker.FakeConnection, payload: string) =>
          Effect.gen(function*() {
            const pending = yield* Effect.forkChild(Effect.exit(client.publish("out", payload, { qos: 2 })))
            const publish = yield* connection.expect("publish")
            yield* connection.send({ cmd: "pubrec", messageId: publish.messageId! })
            yield* connection.expect("pubrel")
            yield* connection.destroy
            return pending
          })
        // received by a; b (an older session of the client, or a node that lost the flow) does not know it
        const first = yield* receivedThenLost(onA.connection, "on a")
        const onB = yield* b.accept
        yield* onB.expect("connect")
        yield* onB.connack({ sessionPresent: true })
        const released = yield* onB.expect("pubrel")
        yield* onB.send({ cmd: "pubcomp", messageId: released.messageId!, reasonCode: 0x92 })
        const error = errorOf(yield* Fiber.join(first))
        assert(error instanceof MqttError.PublishError, String(error))
        expect(error.reasonCode).toBe(0x92)
        expect(error.reasonString).toContain("whether it was delivered is not known")
        // received by b, answered 0x92 by b itself: its PUBCOMP was lost, the flow ended there
        const second = yield* receivedThenLost(onB, "on b")
        // the round tries a first (b, the lost node, last): a is down
        yield* Effect.flatMap(a.accept, (connection) => connection.destroy)
        const again = yield* b.accept
        yield* again.expect("connect")
        yield* again.connack({ sessionPresent: true })
        const releasedAgain = yield* again.expect("pubrel")
        yield* again.send({ cmd: "pubcomp", messageId: releasedAgain.messageId!, reasonCode: 0x92 })
        expect(Exit.isSuccess(yield* Fiber.join(second))).toBe(true)
      })
  )
  it.live(
    "Session Present 1 on the next node, which sends a new QoS 1 message under the identifier of one the last node sent and the application has not acknowledged: acknowledging the old one does not acknowledge the new one",
    () =>
      Effect.gen(function*() {
        const [a, b] = yield* fakes(2, 5)
        const { client, onA } = yield* sessionOnFirst(a, b, "manual-moves", { acknowledgement: "manual" })
        const received = yield* Queue.unbounded<MqttMessage.MqttMessage>()
        yield* Effect.forkChild(Stream.runForEach(client.messages, (m) => Queue.offer(received, m)), {
          startImmediately: true
        })
        const message = (payload: string) =>
          ({ cmd: "publish", topic: "in", payload, qos: 1, messageId: 7, retain: false, dup: false }) as const
        yield* onA.connection.send(message("from a"))
        const old = yield* Queue.take(received)
        yield* onA.connection.destroy
        const onB = yield* b.accept
        yield* onB.expect("connect")
        yield* onB.connack({ sessionPresent: true })
        // b holds no flow for a's message (it would resend it first, with DUP): identifier 7 is free there
        yield* onB.send(message("from b"))
        const fresh = yield* Queue.take(received)
        expect([old.text, fresh.text]).toEqual(["from a", "from b"])
        yield* old.ack
        // a marker: what the acknowledgement wrote would come before it
        yield* client.publish("marker", "after the old one's ack", { qos: 0 })
        const next = yield* onB.receive
        assert(next.cmd === "publish", `expected the marker, got ${next.cmd}`)
        yield* fresh.ack
        const puback = yield* onB.expect("puback")
        expect(puback.messageId).toBe(7)
      })
  )

  it.live(
    "Session Present 1 on the next node, which resends (DUP) a message of its own under the identifier of one the last node sent and the client still holds: it is delivered, not taken for a resend",
    () =>
      Effect.gen(function*() {
        const [a, b] = yield* fakes(2, 5)
        const { client, onA } = yield* sessionOnFirst(a, b, "dup-moves")
        const message = (payload: string, qos: 0 | 1, dup: boolean) =>
          ({ cmd: "publish", topic: "in", payload, qos, messageId: 7, retain: false, dup }) as const
        // not read yet: it waits in the queue, unacknowledged
        yield* onA.connection.send(message("from a", 1, false))
        while ((yield* client.queuedMessages) === 0) yield* sleepReal(10)
        yield* onA.connection.destroy
        const onB = yield* b.accept
        yield* onB.expect("connect")
        yield* onB.connack({ sessionPresent: true })
        // b's older session held a message of its own under identifier 7, sent before the client left b
        yield* onB.sendMany([message("older from b", 1, true), {
          cmd: "publish",
          topic: "in",
          payload: "end",
          qos: 0,
          retain: false,
          dup: false
        }])
        const texts = yield* client.messages.pipe(
          Stream.map((m) => m.text),
          Stream.takeUntil((text) => text === "end"),
          Stream.runCollect
        )
        expect(texts).toEqual(["from a", "older from b", "end"])
      })
  )

  it.live(
    "Session Present 1 on the next node, which resends (DUP) a QoS 2 message of its own under the identifier of one the last node sent and whose PUBREL the client awaits: it is delivered",
    () =>
      Effect.gen(function*() {
        const [a, b] = yield* fakes(2, 5)
        const { client, onA } = yield* sessionOnFirst(a, b, "qos2-dup-moves")
        const texts: Array<string> = []
        const reading = yield* Effect.forkChild(
          client.messages.pipe(
            Stream.map((m) => m.text),
            Stream.takeUntil((text) => text === "end"),
            Stream.runForEach((text) => Effect.sync(() => texts.push(text)))
          ),
          { startImmediately: true }
        )
        yield* onA.connection.send({
          cmd: "publish",
          topic: "in",
          payload: "from a",
          qos: 2,
          messageId: 7,
          retain: false,
          dup: false
        })
        // taken: PUBREC; a goes down before its PUBREL
        expect((yield* onA.connection.expect("pubrec")).messageId).toBe(7)
        yield* onA.connection.destroy
        const onB = yield* b.accept
        yield* onB.expect("connect")
        yield* onB.connack({ sessionPresent: true })
        yield* onB.sendMany([
          { cmd: "publish", topic: "in", payload: "older from b", qos: 2, messageId: 7, retain: false, dup: true },
          { cmd: "publish", topic: "in", payload: "end", qos: 0, retain: false, dup: false }
        ])
        yield* Fiber.join(reading)
        expect(texts).toEqual(["from a", "older from b", "end"])
      })
  )

  it.live(
    "Session Present 1 on the next node: a message of the last node's, acknowledged there, does not make a DUP of the node's own under its identifier a crossing resend",
    () =>
      Effect.gen(function*() {
        const [a, b] = yield* fakes(2, 5)
        const { client, onA } = yield* sessionOnFirst(a, b, "acked-across-moves")
        const message = (payload: string, qos: 0 | 1, dup: boolean) =>
          ({ cmd: "publish", topic: "in", payload, qos, messageId: 7, retain: false, dup }) as const
        yield* onA.connection.send(message("from a", 1, false))
        while ((yield* client.queuedMessages) === 0) yield* sleepReal(10)
        yield* onA.connection.destroy
        const onB = yield* b.accept
        yield* onB.expect("connect")
        yield* onB.connack({ sessionPresent: true })
        yield* awaitConnectedTo(client, b.url)
        const texts: Array<string> = []
        const reading = yield* Effect.forkChild(
          client.messages.pipe(
            Stream.map((m) => m.text),
            Stream.takeUntil((text) => text === "end"),
            Stream.runForEach((text) => Effect.sync(() => texts.push(text)))
          )
        )
        // taken on b's connection: acknowledged there (a resend of it by b would cross this PUBACK)
        expect((yield* onB.expect("puback")).messageId).toBe(7)
        yield* onB.sendMany([message("older from b", 1, true), {
          cmd: "publish",
          topic: "in",
          payload: "end",
          qos: 0,
          retain: false,
          dup: false
        }])
        yield* Fiber.join(reading)
        expect(texts).toEqual(["from a", "older from b", "end"])
      })
  )
})

// ---------------------------------------------------------------------------------------------------------------
// Server Reference
// ---------------------------------------------------------------------------------------------------------------

/** A v5 client on `a` that follows what `follow` allows, connected; and the status changes from then on. */
const connectedV5 = (
  a: FakeBroker.FakeBroker,
  options: Partial<MqttClient.Options> = {}
) =>
  Effect.gen(function*() {
    const fiber = yield* Effect.forkChild(
      MqttClient.make({ url: a.url, protocolVersion: 5, reconnect: fast, ...options })
    )
    const { connection } = yield* a.acceptAndConnack()
    const client = yield* Fiber.join(fiber)
    const statuses = yield* record(client)
    return { client, connection, statuses }
  })

const disconnectTo = (connection: FakeBroker.FakeConnection, reasonCode: number, serverReference: string) =>
  connection.send({ cmd: "disconnect", reasonCode, properties: { serverReference } })

describe("followServerReference", () => {
  for (const code of [0x9c, 0x9d]) {
    it.live(`DISCONNECT 0x${code.toString(16)} to an allowed host:port: the client connects there next`, () =>
      Effect.gen(function*() {
        const [a, b] = yield* fakes(2, 5)
        const { client, connection, statuses } = yield* connectedV5(a, { followServerReference: ["127.0.0.1"] })
        yield* disconnectTo(connection, code, `127.0.0.1:${b.port}`)
        yield* b.acceptAndConnack()
        yield* awaitConnectedTo(client, b.url)
        const last = statuses.at(-1)
        assert(last?._tag === "Connected")
        expect(last.movedFrom).toBe(a.url)
        const disconnected = statuses.find((s) => s._tag === "Disconnected")
        assert(disconnected?._tag === "Disconnected")
        assert(disconnected.cause instanceof MqttError.ConnectionLostError)
        expect([disconnected.cause.reasonCode, disconnected.cause.serverReference]).toEqual([
          code,
          `127.0.0.1:${b.port}`
        ])
        // the broker that sent the client away gets no attempt in between
        expect(a.connections.length).toBe(1)
      }))
  }

  it.live("CONNACK 0x9C on the first connection is followed at once; the layer is built on the referenced server", () =>
    Effect.gen(function*() {
      const [a, b] = yield* fakes(2, 5)
      const fiber = yield* Effect.forkChild(
        MqttClient.make({ url: a.url, protocolVersion: 5, followServerReference: [`127.0.0.1:${b.port}`] })
      )
      const onA = yield* a.accept
      yield* onA.expect("connect")
      yield* onA.connack({ reasonCode: 0x9c, properties: { serverReference: `127.0.0.1:${b.port}` } })
      yield* b.acceptAndConnack()
      const client = yield* Fiber.join(fiber)
      expect(client.connection.broker).toBe(b.url)
    }))

  it.live("when the connection on the referenced server is lost, the client goes back to its own list", () =>
    Effect.gen(function*() {
      const [a, b] = yield* fakes(2, 5)
      const { client, connection } = yield* connectedV5(a, { followServerReference: ["127.0.0.1"] })
      yield* disconnectTo(connection, 0x9c, `127.0.0.1:${b.port}`)
      const onB = yield* b.acceptAndConnack()
      yield* onB.connection.destroy
      yield* a.acceptAndConnack()
      yield* awaitConnectedTo(client, a.url)
      expect(b.connections.length).toBe(1)
    }))

  it.live("a predicate sees the target and decides: refused, then allowed", () =>
    Effect.gen(function*() {
      const [a, b] = yield* fakes(2, 5)
      const seen: Array<MqttClient.ServerReferenceTarget> = []
      let allow = false
      const { client, connection } = yield* connectedV5(a, {
        followServerReference: (target) => {
          seen.push(target)
          return allow
        }
      })
      yield* disconnectTo(connection, 0x9c, `127.0.0.1:${b.port}`)
      // refused: 0x9C is retried on the list, that is on A
      const second = yield* a.acceptAndConnack()
      expect(b.connections.length).toBe(0)
      allow = true
      yield* disconnectTo(second.connection, 0x9d, `127.0.0.1:${b.port}`)
      yield* b.acceptAndConnack()
      yield* awaitConnectedTo(client, b.url)
      expect(seen).toEqual([
        { url: b.url, host: "127.0.0.1", port: b.port, reasonCode: 0x9c, from: a.url },
        { url: b.url, host: "127.0.0.1", port: b.port, reasonCode: 0x9d, from: a.url }
      ])
    }))

  it.live("a list of references is followed to its first allowed entry", () =>
    Effect.gen(function*() {
      const [a, b] = yield* fakes(2, 5)
      const { client, connection } = yield* connectedV5(a, { followServerReference: [`127.0.0.1:${b.port}`] })
      yield* disconnectTo(connection, 0x9c, `elsewhere.invalid:1883 127.0.0.1:${b.port}`)
      yield* b.acceptAndConnack()
      yield* awaitConnectedTo(client, b.url)
    }))

  it.live("a referenced server that refuses the client for good sends it back to its list", () =>
    Effect.gen(function*() {
      const [a, b] = yield* fakes(2, 5)
      const { client, connection } = yield* connectedV5(a, { followServerReference: ["127.0.0.1"] })
      yield* disconnectTo(connection, 0x9c, `127.0.0.1:${b.port}`)
      const onB = yield* b.accept
      yield* onB.expect("connect")
      yield* onB.connack({ reasonCode: 0x87 })
      yield* a.acceptAndConnack()
      yield* awaitConnectedTo(client, a.url)
      expect((yield* client.status)._tag).toBe("Connected")
    }))

  it.live(
    "a reference to a node of the list leads to that node: its own credentials, and the next round goes on from it",
    () =>
      Effect.gen(function*() {
        const [a, b, c] = yield* fakes(3, 5)
        const withUser = (broker: FakeBroker.FakeBroker, user: string) =>
          `mqtt://${user}:${user}-secret@127.0.0.1:${broker.port}`
        const fiber = yield* Effect.forkChild(MqttClient.make({
          url: [withUser(a, "alice"), withUser(b, "bob"), withUser(c, "carol")],
          protocolVersion: 5,
          reconnect: fast,
          followServerReference: ["127.0.0.1"]
        }))
        const onA = yield* a.acceptAndConnack()
        expect(onA.connect.username).toBe("alice")
        const client = yield* Fiber.join(fiber)
        yield* disconnectTo(onA.connection, 0x9c, `127.0.0.1:${b.port}`)
        const onB = yield* b.acceptAndConnack()
        expect([onB.connect.username, Buffer.from(onB.connect.password!).toString()]).toEqual(["bob", "bob-secret"])
        yield* awaitConnectedTo(client, b.url)
        // B is lost: the node after B comes first, B last
        yield* onB.connection.destroy
        const onC = yield* c.acceptAndConnack()
        expect(onC.connect.username).toBe("carol")
        yield* awaitConnectedTo(client, c.url)
        expect([a.connections.length, b.connections.length]).toEqual([1, 1])
      })
  )

  it.live(
    "CONNACK 0x9D (server moved) to a place that refuses for good: the node refused for good, the client gives up; 0x9C (for now) is tried again",
    () =>
      Effect.gen(function*() {
        const [a, b] = yield* fakes(2, 5)
        const refuse = (broker: FakeBroker.FakeBroker, reasonCode: number, serverReference?: string) =>
          Effect.gen(function*() {
            const connection = yield* broker.accept
            yield* connection.expect("connect")
            yield* connection.connack({
              reasonCode,
              properties: serverReference === undefined ? {} : { serverReference }
            })
          })
        const options = {
          url: a.url,
          protocolVersion: 5,
          followServerReference: ["127.0.0.1"],
          retryFirstConnect: true,
          reconnect: fast
        } as const
        const moved = yield* Effect.forkChild(Effect.exit(MqttClient.make(options)))
        yield* refuse(a, 0x9d, `127.0.0.1:${b.port}`)
        yield* refuse(b, 0x87)
        const error = errorOf(yield* Fiber.join(moved))
        assert(error instanceof MqttError.ConnectRefusedError, String(error))
        expect([error.reasonCode, error.broker]).toEqual([0x87, b.url])
        yield* sleepReal(100)
        expect([a.connections.length, b.connections.length]).toEqual([1, 1])
        // "use another server" for now: the next round tries A again, which takes the client
        const forNow = yield* Effect.forkChild(MqttClient.make(options))
        yield* refuse(a, 0x9c, `127.0.0.1:${b.port}`)
        yield* refuse(b, 0x87)
        yield* a.acceptAndConnack()
        const client = yield* Fiber.join(forNow)
        expect(client.connection.broker).toBe(a.url)
      })
  )

  it.live("a node of the list that a reference leads to is not tried again later in the same round", () =>
    Effect.gen(function*() {
      const [a, b, c] = yield* fakes(3, 5)
      const refuse = (broker: FakeBroker.FakeBroker, properties: Record<string, unknown>, reasonCode: number) =>
        Effect.gen(function*() {
          const connection = yield* broker.accept
          yield* connection.expect("connect")
          yield* connection.connack({ reasonCode, properties })
        })
      const fiber = yield* Effect.forkChild(Effect.exit(MqttClient.make({
        url: [a.url, b.url, c.url],
        protocolVersion: 5,
        followServerReference: ["127.0.0.1"]
      })))
      yield* refuse(a, { serverReference: `127.0.0.1:${c.port}` }, 0x9c)
      yield* refuse(c, {}, 0x87)
      yield* refuse(b, {}, 0x87)
      const error = errorOf(yield* Fiber.join(fiber))
      assert(error instanceof MqttError.ConnectRefusedError, String(error))
      expect([error.reasonCode, error.broker]).toEqual([0x87, b.url])
      yield* sleepReal(100)
      expect([a.connections.length, b.connections.length, c.connections.length]).toEqual([1, 1, 1])
    }))

  it.live("reconnect: false: a DISCONNECT's Server Reference is not followed, and a log line says so", () =>
    Effect.gen(function*() {
      const [a, b] = yield* fakes(2, 5)
      const lines: Array<string> = []
      const { client, connection } = yield* logged(
        connectedV5(a, { followServerReference: ["127.0.0.1"], reconnect: false }),
        lines
      )
      const reference = `127.0.0.1:${b.port}`
      yield* logged(disconnectTo(connection, 0x9c, reference), lines)
      const error = errorOf(yield* Effect.exit(client.awaitClose))
      assert(error instanceof MqttError.ConnectionLostError, String(error))
      expect(error.serverReference).toBe(reference)
      yield* sleepReal(100)
      expect(b.connections.length).toBe(0)
      expect(lines).toContain(
        `Warn MQTT not following the server reference "${reference}" of ${a.url}: reconnect is off`
      )
    }))

  const refusals: ReadonlyArray<
    readonly [string, (b: FakeBroker.FakeBroker) => string, MqttClient.Options["followServerReference"], string]
  > = [
    ["without followServerReference", (b) => `127.0.0.1:${b.port}`, undefined, "followServerReference is not set"],
    [
      "to a host the list does not name",
      (b) => `localhost:${b.port}`,
      ["127.0.0.1"],
      "followServerReference does not allow it"
    ],
    [
      "to another port than the list pins",
      (b) => `127.0.0.1:${b.port}`,
      ["127.0.0.1:1"],
      "followServerReference does not allow it"
    ],
    [
      "with credentials in the reference",
      (b) => `mqtt://user:pass@127.0.0.1:${b.port}`,
      ["127.0.0.1"],
      "it carries credentials, which are only taken from the client's options"
    ],
    [
      "to a Unix socket",
      () => "unix:///tmp/broker.sock",
      () => true,
      "a Server Reference cannot lead to a Unix socket"
    ],
    ["that is not an address", () => "not/an-address", () => true, "not a host, host:port or URL"],
    ["when the predicate throws", (b) => `127.0.0.1:${b.port}`, () => {
      throw new Error("boom")
    }, "the followServerReference predicate threw: boom"],
    // values that String() cannot turn into text: the reason still says the predicate threw (no defect, no client
    // left connected with nobody watching)
    ["when the predicate throws Object.create(null)", (b) => `127.0.0.1:${b.port}`, () => {
      throw Object.create(null)
    }, "the followServerReference predicate threw: a value that cannot be shown as text"],
    ["when the predicate throws a value whose toString throws", (b) => `127.0.0.1:${b.port}`, () => {
      throw {
        toString() {
          throw new Error("again")
        }
      }
    }, "the followServerReference predicate threw: a value that cannot be shown as text"]
  ]
  for (const [name, reference, follow, reason] of refusals) {
    it.live(`DISCONNECT 0x9D ${name}: not followed, the client stops with the reference, and a warning says why`, () =>
      Effect.gen(function*() {
        const [a, b] = yield* fakes(2, 5)
        const lines: Array<string> = []
        const { client, connection, statuses } = yield* logged(
          connectedV5(a, follow === undefined ? {} : { followServerReference: follow }),
          lines
        )
        const ref = reference(b)
        yield* logged(disconnectTo(connection, 0x9d, ref), lines)
        const error = errorOf(yield* Effect.exit(client.awaitClose))
        assert(error instanceof MqttError.ConnectionLostError, String(error))
        expect([error.reasonCode, error.serverReference, error.broker]).toEqual([0x9d, ref, a.url])
        yield* sleepReal(100)
        expect(b.connections.length).toBe(0)
        expect(a.connections.length).toBe(1)
        expect(statuses.at(-1)?._tag).toBe("Closed")
        expect(lines).toContain(`Warn MQTT not following the server reference "${ref}" of ${a.url}: ${reason}`)
      }))
  }

  for (
    const [name, reference] of [["without a reference", undefined], [
      "with a reference not allowed",
      "elsewhere:1"
    ]] as const
  ) {
    it.live(`DISCONNECT 0x9D ${name}, with a url list: the client goes on to the next node of its list`, () =>
      Effect.gen(function*() {
        const [a, b] = yield* fakes(2, 5)
        const { client, connection } = yield* connectedV5(a, { url: [a.url, b.url] })
        yield* connection.send({
          cmd: "disconnect",
          reasonCode: 0x9d,
          ...(reference === undefined ? {} : { properties: { serverReference: reference } })
        })
        yield* b.acceptAndConnack()
        yield* awaitConnectedTo(client, b.url)
        expect((yield* client.status)._tag).toBe("Connected")
        // the node that moved is tried again only in its turn (next round): not at once
        expect(a.connections.length).toBe(1)
      }))
  }

  it.live("a broker's Server Reference and reason string stay on one line of the log and of the error's message", () =>
    Effect.gen(function*() {
      const [a] = yield* fakes(1, 5)
      const lines: Array<string> = []
      const { connection } = yield* logged(connectedV5(a), lines)
      const forged = "x\nError MQTT client gave up: forged\u2028"
      yield* logged(
        connection.send({
          cmd: "disconnect",
          reasonCode: 0x9c,
          properties: { serverReference: forged, reasonString: "busy\r\nInfo forged" }
        }),
        lines
      )
      yield* logged(a.acceptAndConnack(), lines)
      const warnings = lines.filter((line) => line.startsWith("Warn"))
      expect(warnings.length).toBe(2)
      for (const line of warnings) assert.notMatch(line, /[\n\r\u2028\u2029]/, line)
      expect(warnings[0]).toContain(String.raw`"x\u000aError MQTT client gave up: forged\u2028"`)
      expect(warnings[1]).toContain(String.raw`(reason code 0x9c: busy\u000d\u000aInfo forged)`)
      // a CONNACK's reference is in the refusal's message: on one line too, and an empty one suggests nothing
      const refused = (serverReference: string) =>
        new MqttError.ConnectRefusedError({ protocolVersion: 5, reasonCode: 0x9c, serverReference }).message
      expect(refused(forged)).toContain(String.raw`The broker suggests x\u000aError MQTT client gave up: forged\u2028.`)
      expect(refused(" ")).not.toContain("suggests")
    }))

  it.live("DISCONNECT 0x9C not followed: the client reconnects to its list as before", () =>
    Effect.gen(function*() {
      const [a, b] = yield* fakes(2, 5)
      const { client, connection } = yield* connectedV5(a, { followServerReference: ["10.0.0.1"] })
      yield* disconnectTo(connection, 0x9c, `127.0.0.1:${b.port}`)
      yield* a.acceptAndConnack()
      yield* awaitConnectedTo(client, a.url)
      expect(b.connections.length).toBe(0)
    }))

  it.live("two brokers that refer the client to each other: at most 3 references are followed per round", () =>
    Effect.gen(function*() {
      const [a, b] = yield* fakes(2, 5)
      const refuseTo = (broker: FakeBroker.FakeBroker, other: FakeBroker.FakeBroker) =>
        Effect.gen(function*() {
          const connection = yield* broker.accept
          yield* connection.expect("connect")
          yield* connection.connack({ reasonCode: 0x9c, properties: { serverReference: `127.0.0.1:${other.port}` } })
        })
      const fiber = yield* Effect.forkChild(
        Effect.exit(MqttClient.make({ url: a.url, protocolVersion: 5, followServerReference: ["127.0.0.1"] }))
      )
      yield* refuseTo(a, b)
      yield* refuseTo(b, a)
      yield* refuseTo(a, b)
      yield* refuseTo(b, a)
      const error = errorOf(yield* Fiber.join(fiber))
      assert(error instanceof MqttError.ConnectRefusedError, String(error))
      expect([error.reasonCode, error.broker]).toEqual([0x9c, b.url])
      yield* sleepReal(100)
      expect([a.connections.length, b.connections.length]).toEqual([2, 2])
    }))

  for (const code of [0x9c, 0x9d]) {
    it.live(`two brokers that send the client to each other with DISCONNECT 0x${code.toString(16)}: at most 3 in a row are followed, then its own list`, () =>
      Effect.gen(function*() {
        const [a, b] = yield* fakes(2, 5)
        const lines: Array<string> = []
        const { client, connection } = yield* logged(connectedV5(a, { followServerReference: ["127.0.0.1"] }), lines)
        const to = (broker: FakeBroker.FakeBroker) => `127.0.0.1:${broker.port}`
        /** the client connected on `broker`, then sent on with a DISCONNECT to `next` */
        const connectedThenSent = (broker: FakeBroker.FakeBroker, next: FakeBroker.FakeBroker) =>
          Effect.gen(function*() {
            const { connection } = yield* broker.acceptAndConnack()
            yield* awaitConnectedTo(client, broker.url)
            yield* disconnectTo(connection, code, to(next))
          })
        // a → b → a → b: three in a row, followed
        yield* disconnectTo(connection, code, to(b))
        yield* connectedThenSent(b, a)
        yield* connectedThenSent(a, b)
        // the fourth in a row is not followed: the client goes back to its own list (a), and so on
        yield* connectedThenSent(b, a)
        yield* connectedThenSent(a, b)
        yield* a.acceptAndConnack()
        yield* awaitConnectedTo(client, a.url)
        expect([a.connections.length, b.connections.length]).toEqual([4, 2])
        expect(lines.filter((l) => l.includes("Server References were followed in a row")).length).toBe(2)
      }))
  }

  it.live("MQTT 3.1.1 has no Server Reference: a CONNACK refusal is reported as before", () =>
    Effect.gen(function*() {
      const [a] = yield* fakes(1)
      const fiber = yield* Effect.forkChild(
        Effect.exit(MqttClient.make({ url: a.url, followServerReference: () => true }))
      )
      const onA = yield* a.accept
      yield* onA.expect("connect")
      yield* onA.connack({ returnCode: 5 })
      const error = errorOf(yield* Fiber.join(fiber))
      assert(error instanceof MqttError.ConnectRefusedError)
      expect(error.reasonCode).toBe(5)
    }))
})

// ---------------------------------------------------------------------------------------------------------------
// Server Reference and TLS
// ---------------------------------------------------------------------------------------------------------------

/** A TLS listener for `localhost` in front of a fake broker: the client speaks TLS, the fake broker plaintext. */
const tlsFront = (broker: FakeBroker.FakeBroker, key: string, cert: string) =>
  Effect.acquireRelease(
    Effect.promise(() =>
      new Promise<Tls.Server>((resolve) => {
        const server = Tls.createServer({ key, cert }, (secure) => {
          const plain = Net.connect({ host: "127.0.0.1", port: broker.port })
          secure.pipe(plain).pipe(secure)
          const end = () => {
            secure.destroy()
            plain.destroy()
          }
          secure.on("error", end).on("close", end)
          plain.on("error", end).on("close", end)
        })
        server.listen(0, "127.0.0.1", () => resolve(server))
      })
    ),
    (server) => Effect.promise(() => new Promise<void>((resolve) => server.close(() => resolve())))
  ).pipe(Effect.map((server) => (server.address() as Net.AddressInfo).port))

describe("followServerReference never leaves TLS", () => {
  it.live(
    "from mqtts://, a reference to an mqtt:// URL is refused even when its host is allowed, and one to host:port stays on TLS",
    () =>
      Effect.gen(function*() {
        const certs = makeCerts()
        yield* Effect.addFinalizer(() => Effect.sync(() => certs.dispose()))
        const [a, plain, b] = yield* fakes(3, 5)
        const key = certs.read(certs.server.key)
        const cert = certs.read(certs.server.cert)
        const aPort = yield* tlsFront(a, key, cert)
        const bPort = yield* tlsFront(b, key, cert)
        const lines: Array<string> = []
        const fiber = yield* Effect.forkChild(logged(
          MqttClient.make({
            url: `mqtts://localhost:${aPort}`,
            tls: { ca: certs.read(certs.ca.cert) },
            protocolVersion: 5,
            reconnect: fast,
            followServerReference: ["localhost", "127.0.0.1"]
          }),
          lines
        ))
        const first = yield* a.acceptAndConnack()
        const client = yield* Fiber.join(fiber)
        // to plaintext: refused, so 0x9C is retried on the list (A, over TLS again)
        const downgrade = `mqtt://127.0.0.1:${plain.port}`
        yield* logged(disconnectTo(first.connection, 0x9c, downgrade), lines)
        const second = yield* a.acceptAndConnack()
        yield* sleepReal(100)
        expect(plain.connections.length).toBe(0)
        expect(lines).toContain(
          `Warn MQTT not following the server reference "${downgrade}" of mqtts://localhost:${aPort}: it leads from TLS to a plaintext connection`
        )
        // to host:port: the scheme is the node's own, mqtts; the certificate of localhost is verified
        yield* disconnectTo(second.connection, 0x9d, `localhost:${bPort}`)
        yield* b.acceptAndConnack()
        yield* awaitConnectedTo(client, `mqtts://localhost:${bPort}`)
      })
  )
})

describe("followServerReference never leaves TLS: the server's that sent the reference either (Nodes.redirect)", () => {
  /** A node as the redirect sees it: its endpoint and place (no socket: nothing connects here). */
  const node = (url: string, index: number) =>
    Effect.map(
      Url.parseUrl(url),
      (endpoint) =>
        ({
          broker: url,
          endpoint,
          index,
          origin: index,
          username: undefined,
          password: undefined
        }) as unknown as Failover.Node
    )
  const lostWith = (serverReference: string) =>
    new MqttError.ConnectionLostError({ reason: "moved", reasonCode: 0x9c, serverReference })
  const decide = (nodes: Failover.Nodes, reference: string, from: Failover.Node) =>
    Effect.map(nodes.redirect(lostWith(reference), from), (redirect) =>
      redirect === undefined
        ? "none"
        : redirect._tag === "Follow"
        ? `follow ${redirect.node.broker}`
        : `refuse: ${redirect.reason}`)

  it.effect(
    "a reference to a node of the list is that node, whatever the spelling (its query, IPv6 forms); elsewhere, one place per list node whose credentials it carries",
    () =>
      Effect.gen(function*() {
        const a = yield* node("ws://127.0.0.1:1001/mqtt?token=a", 0)
        const b = yield* node("ws://127.0.0.1:1002/mqtt?token=b", 1)
        const made: Array<string> = []
        const nodes = new Failover.Nodes(
          [a, b],
          ["127.0.0.1", "0:0:0:0:0:0:0:1"],
          (endpoint, broker, from) =>
            Effect.sync(() => {
              made.push(`${broker} for ${from.origin}`)
              const node = { broker, endpoint, index: -1, origin: from.origin } as unknown as Failover.Node
              return { node, release: Effect.void }
            })
        )
        const follow = (reference: string, from: Failover.Node) =>
          Effect.map(nodes.redirect(lostWith(reference), from), (r) => r?._tag === "Follow" ? r.node : r)
        // the list node itself (the reference keeps the sender's path, not its query)
        expect(yield* follow("127.0.0.1:1002", a)).toBe(b)
        expect(yield* follow("ws://127.0.0.1:1002/mqtt", a)).toBe(b)
        // elsewhere: made once per list node the client came from
        const x1 = yield* follow("127.0.0.1:1003", a)
        const x2 = yield* follow("127.0.0.1:1003", b)
        const x3 = yield* follow("127.0.0.1:1003", x2 as Failover.Node)
        expect(x1).not.toBe(x2)
        expect(x3).toBe(x2)
        expect(made).toEqual(["ws://127.0.0.1:1003/mqtt for 0", "ws://127.0.0.1:1003/mqtt for 1"])
        // an IPv6 entry written in full allows the compressed address
        expect(((yield* follow("[::1]:1004", a)) as Failover.Node).broker).toBe("ws://[::1]:1004/mqtt")
      })
  )

  it.effect(`places Server References led to: at most ${Failover.REFERENCED_KEPT} kept, the least recently followed let go (its socket writer released), never the one of the last connection`, () =>
    Effect.gen(function*() {
      const a = yield* node("mqtt://127.0.0.1:1001", 0)
      const released: Array<string> = []
      let made = 0
      const nodes = new Failover.Nodes([a], () => true, (endpoint, broker) =>
        Effect.sync(() => {
          made++
          const node = { broker, endpoint, index: -1, origin: 0 } as unknown as Failover.Node
          return { node, release: Effect.sync(() => released.push(broker)) }
        }))
      const follow = (port: number) =>
        Effect.map(nodes.redirect(lostWith(`127.0.0.1:${port}`), a), (r) => r?._tag === "Follow" ? r.node : undefined)
      // the client connects to the first place, then is sent to a new address at each attempt (pod addresses)
      const first = (yield* follow(2000))!
      nodes.connected(first)
      for (let port = 2001; port < 2100; port++) yield* follow(port)
      expect(made).toBe(100)
      // 99 made after the first; all but the last 15 of them let go, the first kept (the last connection's)
      expect(released.length).toBe(100 - Failover.REFERENCED_KEPT)
      expect(released).not.toContain("mqtt://127.0.0.1:2000")
      expect(released[0]).toBe("mqtt://127.0.0.1:2001")
      // a place followed again is the same node, made once, and counts as recently followed
      const kept = yield* follow(2099)
      expect(kept?.broker).toBe("mqtt://127.0.0.1:2099")
      expect(made).toBe(100)
      yield* follow(2100)
      expect(released).not.toContain("mqtt://127.0.0.1:2099")
      expect(released.at(-1)).toBe("mqtt://127.0.0.1:2085")
    }))

  it.effect("a plaintext list referred to mqtts:// is not referred on from there to mqtt://", () =>
    Effect.gen(function*() {
      const a = yield* node("mqtt://127.0.0.1:1001", 0)
      const nodes = new Failover.Nodes(
        [a],
        () => true,
        (endpoint, broker) =>
          node(broker, -1).pipe(Effect.map((n) => ({ node: { ...n, endpoint }, release: Effect.void })))
      )
      expect(yield* decide(nodes, "mqtts://localhost:1002", a)).toBe("follow mqtts://localhost:1002")
      const tls = yield* node("mqtts://localhost:1002", -1)
      expect(yield* decide(nodes, "mqtt://127.0.0.1:1003", tls)).toBe(
        "refuse: it leads from TLS to a plaintext connection"
      )
      expect(yield* decide(nodes, "ws://127.0.0.1:1003", tls)).toBe(
        "refuse: it leads from TLS to a plaintext connection"
      )
      // host:port keeps the sending server's scheme: TLS
      expect(yield* decide(nodes, "127.0.0.1:1003", tls)).toBe("follow mqtts://127.0.0.1:1003")
      // and from the plaintext node itself, plaintext is allowed
      expect(yield* decide(nodes, "mqtt://127.0.0.1:1003", a)).toBe("follow mqtt://127.0.0.1:1003")
    }))
})

// ---------------------------------------------------------------------------------------------------------------
// options
// ---------------------------------------------------------------------------------------------------------------

describe("failover options", () => {
  const invalid: ReadonlyArray<readonly [string, MqttClient.Options, string]> = [
    ["an empty list", { url: [] }, "url"],
    ["a list mixing TLS and plaintext", { url: ["mqtts://a:8883", "mqtt://b:1883"] }, "url"],
    ["a malformed URL in a list, named by its position", { url: ["mqtt://a:1883", "http://b"] }, "url[1]"],
    ["a list with a custom transport", {
      url: ["mqtt://a:1883", "mqtt://b:1883"],
      transport: Effect.die("unused")
    }, "url"],
    [
      "followServerReference that is neither a list nor a function",
      { followServerReference: "host" as unknown as ReadonlyArray<string> },
      "followServerReference"
    ],
    ["followServerReference with an empty host", { followServerReference: [""] }, "followServerReference"],
    [
      "followServerReference with a URL (it takes hosts)",
      { followServerReference: ["mqtt://b:1883"] },
      "followServerReference"
    ],
    ["a list naming one broker twice", { url: ["mqtt://a:1883", "mqtt://b:1883", "mqtt://a:1883"] }, "url[2]"],
    ["a list naming one broker twice, spelled differently", { url: ["mqtt://A", "tcp://a:1883/"] }, "url[1]"],
    ["a list naming one WebSocket broker twice", { url: ["ws://a/mqtt", "ws://a:80"] }, "url[1]"],
    [
      "a password without a user name in the user info of a node of a list",
      { url: ["mqtt://u:p@a:1883", "mqtt://:p@b:1883"] },
      "url[1]"
    ]
  ]
  it.live("a list may name one host on two ports, two WebSocket paths of one host, or one port by two transports", () =>
    Effect.gen(function*() {
      const p = yield* closedPort
      let q = yield* closedPort
      while (q === p) q = yield* closedPort
      const lists = [
        [`mqtt://127.0.0.1:${p}`, `mqtt://127.0.0.1:${q}`],
        [`ws://127.0.0.1:${p}/mqtt`, `ws://127.0.0.1:${p}/other`],
        [`mqtt://127.0.0.1:${p}`, `ws://127.0.0.1:${p}/mqtt`]
      ]
      for (const url of lists) {
        // nothing listens: the client tried both nodes and failed with the last one's error, not the options'
        const error = errorOf(yield* Effect.exit(MqttClient.make({ url })))
        expect(error._tag, `${url}: ${String(error)}`).toBe("ConnectionLostError")
        expect((error as MqttError.ConnectionLostError).broker).toBe(url[1])
      }
    }))

  for (const [name, options, option] of invalid) {
    it.effect(`${name} is an InvalidOptionError naming ${option}, before any connection`, () =>
      Effect.gen(function*() {
        const error = errorOf(yield* Effect.exit(MqttClient.make(options)))
        assert(error instanceof MqttError.InvalidOptionError, String(error))
        expect(error.option).toBe(option)
      }))
  }
})
