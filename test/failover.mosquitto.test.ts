/**
 * Failover across two and three private Mosquitto processes, killed (SIGKILL) or frozen (SIGSTOP) under a flowing
 * QoS 1 stream: a publisher and a subscriber, each with the list of nodes, move to the next node together.
 *
 * Mosquitto nodes share nothing: on the next node the subscriber gets Session Present 0 and subscribes again, and
 * the publisher sends its unacknowledged publishes again. What the broker itself can lose is kept apart from what
 * the client answers for, so that the claim is exact:
 *
 * - the publisher reaches each node through a proxy that is shut until the subscriber is subscribed there (a
 *   round trip of the subscriber's own probe proves it), so no message is published to a node where nobody
 *   listens;
 * - the proxy reads the broker's PUBACKs on the wire, so the test knows which node acknowledged each message. A
 *   node that acknowledged a message and then died (or froze) before passing it on loses it: Mosquitto without
 *   persistence keeps nothing. Only those messages may be missing; every other message must arrive.
 *
 * Mosquitto keeps the order of one publisher's messages to one subscriber, so the messages, taken at their first
 * arrival, come in the order they were published, across the moves.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Schedule, Stream } from "effect"
import { MqttClient } from "effect-mqtt"
import { mosquitto, type MosquittoHandle } from "./support/Mosquitto.ts"
import { mqttProxy } from "./support/MqttProxy.ts"

type Fault = "SIGKILL" | "SIGSTOP"

const sleepReal = (ms: number) => Effect.promise(() => new Promise<void>((resolve) => setTimeout(resolve, ms)))

/** Polls a condition every 10 ms; dies with `what` after `seconds` (a guard against a hang, not a timing claim). */
const until = (what: string, condition: () => boolean, seconds = 60) =>
  Effect.gen(function*() {
    const deadline = Date.now() + seconds * 1000
    while (!condition()) {
      if (Date.now() > deadline) return yield* Effect.die(new Error(`${what}: not within ${seconds} s`))
      yield* sleepReal(10)
    }
  })

/** Every status a client reports from now on. */
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

const connectedTo = (statuses: ReadonlyArray<MqttClient.ConnectionStatus>) =>
  statuses.flatMap((s) => s._tag === "Connected" ? [[s.info.broker, s.movedFrom, s.info.sessionPresent]] : [])

/**
 * Runs a QoS 1 stream of `messages` through the nodes: the publisher and the subscriber start on the first node;
 * at each fault (evenly spread over the stream) the node they are on is killed or frozen and both move to the
 * next one.
 */
const failoverRun = (protocolVersion: 4 | 5, faults: ReadonlyArray<Fault>, messages: number) =>
  Effect.gen(function*() {
    const brokers: Array<MosquittoHandle> = []
    for (let i = 0; i <= faults.length; i++) {
      brokers.push(yield* mosquitto({ protocolConfig: "max_queued_messages 100000" }))
    }
    const ackedBy = new Map<number, number>()
    const sentTo = new Map<number, Set<number>>()
    const proxies = yield* Effect.forEach(brokers, (broker, i) =>
      mqttProxy({
        upstreamPort: broker.port,
        protocolVersion,
        open: i === 0,
        onPublished: (payload) => {
          const seq = Number(payload)
          sentTo.set(seq, (sentTo.get(seq) ?? new Set()).add(i))
        },
        onAcknowledged: (payload) => ackedBy.set(Number(payload), i)
      }))
    const common = { protocolVersion, keepAlive: 3, connectTimeout: "2 seconds" } as const
    const subscriber = yield* MqttClient.make({
      ...common,
      url: brokers.map((b) => b.url),
      clientId: `fo-sub-${protocolVersion}`,
      reconnect: Schedule.spaced("20 millis")
    })
    const subscriberStatuses = yield* record(subscriber)
    yield* subscriber.subscribe("fo/#", { qos: 1 })
    const firstArrivals: Array<number> = []
    const arrivals = new Map<number, number>()
    const probes = new Set<string>()
    yield* Effect.forkChild(Stream.runForEach(subscriber.messages, (message) =>
      Effect.sync(() => {
        if (message.topic === "fo/probe") return void probes.add(message.text)
        const seq = Number(message.text)
        const seen = arrivals.get(seq) ?? 0
        if (seen === 0) firstArrivals.push(seq)
        arrivals.set(seq, seen + 1)
      })))
    const publisher = yield* MqttClient.make({
      ...common,
      url: proxies.map((p) => p.url),
      clientId: `fo-pub-${protocolVersion}`,
      reconnect: Schedule.spaced("50 millis")
    })
    const publisherStatuses = yield* record(publisher)
    let completed = 0
    const publishing = yield* Effect.forkChild(
      Effect.forEach(
        Array.from({ length: messages }, (_, i) => i),
        (seq) =>
          Effect.tap(publisher.publish("fo/data", String(seq), { qos: 1 }), () => Effect.sync(() => completed++)),
        { concurrency: 50, discard: true }
      )
    )
    for (let j = 0; j < faults.length; j++) {
      yield* until("the stream flows", () => completed >= ((j + 1) * messages) / (faults.length + 1))
      brokers[j].kill(faults[j])
      const next = brokers[j + 1].url
      yield* until(`the subscriber moved to ${next}`, () => subscriber.connection.broker === next)
      // the subscriber's own message comes back: its subscription on the next node is in place
      yield* subscriber.publish("fo/probe", String(j), { qos: 1 })
      yield* until("the probe came back", () => probes.has(String(j)))
      proxies[j + 1].open()
    }
    yield* Fiber.join(publishing)
    const last = faults.length
    yield* until(
      "every message the last node acknowledged arrived",
      () => [...ackedBy].every(([seq, node]) => node !== last || arrivals.has(seq))
    )
    // the faulted nodes stay down (thawed only when the test ends), so nothing more can come from them
    const missing = Array.from({ length: messages }, (_, i) => i).filter((seq) => !arrivals.has(seq))
    const lostByBroker = missing.filter((seq) => (ackedBy.get(seq) ?? -1) < last)
    const duplicates = [...arrivals.values()].filter((n) => n > 1).length
    // sent to a node that failed before acknowledging, and sent again to the next one
    const resent = [...sentTo].filter(([seq, nodes]) => nodes.size > 1 && nodes.has(ackedBy.get(seq)!)).length
    console.log(
      `MQTT ${protocolVersion === 5 ? "5" : "3.1.1"}, ${faults.join(" then ")}: ${messages} published, ` +
        `acknowledged per node ${
          JSON.stringify(brokers.map((_, i) => [...ackedBy.values()].filter((n) => n === i).length))
        }, ` +
        `${resent} sent again to the next node, ${missing.length} missing (each acknowledged by a node that then ` +
        `died or froze), ${duplicates} duplicates`
    )
    return {
      brokers,
      proxies,
      ackedBy,
      missing,
      lostByBroker,
      firstArrivals,
      subscriberStatuses,
      publisherStatuses,
      completed
    }
  })

const scenarios: ReadonlyArray<readonly [4 | 5, ReadonlyArray<Fault>, number]> = [
  [4, ["SIGKILL"], 6000],
  [5, ["SIGKILL"], 6000],
  [5, ["SIGKILL", "SIGSTOP"], 9000],
  [4, ["SIGSTOP", "SIGKILL"], 9000]
]

describe("failover across Mosquitto processes", () => {
  for (const [protocolVersion, faults, messages] of scenarios) {
    it.live(
      `MQTT ${protocolVersion === 5 ? "5" : "3.1.1"}, ${faults.length + 1} nodes, ${
        faults.join(" then ")
      }: no QoS 1 message lost but what a dead node had acknowledged, in order, both clients on the last node`,
      () =>
        Effect.gen(function*() {
          const run = yield* failoverRun(protocolVersion, faults, messages)
          const urls = run.brokers.map((b) => b.url)
          // every publish succeeded, and each was acknowledged by exactly the node the proxy saw
          expect(run.completed).toBe(messages)
          expect(run.ackedBy.size).toBe(messages)
          // the client's claim: a message is missing only if a node that then failed had acknowledged it
          expect(run.lostByBroker).toEqual(run.missing)
          // the order of the publisher, as Mosquitto keeps it, across the moves
          const sorted = [...run.firstArrivals].sort((a, b) => a - b)
          expect(run.firstArrivals).toEqual(sorted)
          // both clients went node by node, on a new session each time (Mosquitto nodes share none)
          expect(connectedTo(run.subscriberStatuses)).toEqual(
            urls.map((url, i) => [url, i === 0 ? undefined : urls[i - 1], false])
          )
          const proxyUrls = run.proxies.map((p) => p.url)
          expect(connectedTo(run.publisherStatuses)).toEqual(
            proxyUrls.map((url, i) => [url, i === 0 ? undefined : proxyUrls[i - 1], false])
          )
        }),
      180_000
    )
  }
})

describe("failover to a node that holds an older session (Mosquitto nodes share none)", () => {
  it.live(
    "MQTT 5: back on a node that answers Session Present 1 with the session it kept, the subscriptions made elsewhere meanwhile are made there too",
    () =>
      Effect.gen(function*() {
        const n1 = yield* mosquitto()
        const n2 = yield* mosquitto()
        const sub = yield* MqttClient.make({
          url: [n1.url, n2.url],
          protocolVersion: 5,
          clientId: `older-session-${process.pid}`,
          cleanStart: false,
          sessionExpiryInterval: 300,
          keepAlive: 2,
          connectTimeout: "2 seconds",
          reconnect: Schedule.spaced("100 millis")
        })
        const statuses = yield* record(sub)
        const topics: Array<string> = []
        yield* Effect.forkChild(Stream.runForEach(sub.messages, (m) => Effect.sync(() => topics.push(m.topic))))
        yield* sub.subscribe("a/#", { qos: 1 })
        // n1 freezes: the client moves to n2, which holds no session (restored there), and subscribes b/# there only
        n1.kill("SIGSTOP")
        yield* until("on n2", () => connectedTo(statuses).some(([broker]) => broker === n2.url))
        yield* sub.subscribe("b/#", { qos: 1 })
        // n1 comes back and n2 dies: n1 resumes the session it kept (Session Present 1), made before b/# was
        n1.kill("SIGCONT")
        n2.kill("SIGKILL")
        yield* until("back on n1", () =>
          connectedTo(statuses).some(([broker, , present]) => broker === n1.url && present))
        const pub = yield* MqttClient.make({ url: n1.url, protocolVersion: 5 })
        // a probe on each filter until both arrive (the SUBSCRIBE on n1 is on its way when Connected is told)
        let probes = 0
        yield* until("a/x and b/x arrive through n1", () =>
          topics.includes("a/x") && topics.includes("b/x"), 20).pipe(
            Effect.raceFirst(Effect.forever(Effect.gen(function*() {
              probes++
              yield* pub.publish("a/x", "probe", { qos: 1 })
              yield* pub.publish("b/x", "probe", { qos: 1 })
              yield* sleepReal(200)
            })))
          )
        expect(probes).toBeGreaterThan(0)
        expect(connectedTo(statuses)).toEqual([[n1.url, undefined, false], [n2.url, n1.url, false], [
          n1.url,
          n2.url,
          true
        ]])
      }).pipe(Effect.scoped),
    120_000
  )
})
