/**
 * A real cluster: three private `nats-server` processes forming a JetStream cluster with MQTT listeners (MQTT
 * 3.1.1, QoS 0 and 1). NATS keeps MQTT sessions, QoS 1 messages and retained messages in replicated JetStream
 * streams, so a client that loses its node resumes its session on another one (Session Present 1).
 *
 * What these tests find about NATS 2.9 (see the README, "Clusters and failover"):
 * - kept across nodes: the session and its subscriptions, QoS 1 messages for an offline persistent session,
 *   retained messages (even one published just before its node died), QoS 1 publishes it acknowledged;
 * - an unacknowledged QoS 1 message is sent again only when its ack wait runs out (`mqtt { ack_wait }`, 30 s by
 *   default), not when the session resumes as MQTT asks [MQTT-4.4.0-1]: MQTT.js sees the same;
 * - not kept: the will of a client whose node dies is never published, for MQTT.js as for effect-mqtt.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Schedule, Scope, Stream } from "effect"
import { MqttClient } from "effect-mqtt"
import mqtt from "mqtt"
import { natsCluster } from "./support/NatsCluster.ts"

const sleepReal = (ms: number) => Effect.promise(() => new Promise<void>((resolve) => setTimeout(resolve, ms)))

/**
 * Polls a condition every 20 ms; dies with `what` after `seconds` (a guard against a hang, not a timing claim).
 * `what` may be a function, read at the deadline, to say what had happened by then.
 */
const until = (what: string | (() => string), condition: () => boolean, seconds = 90) =>
  Effect.gen(function*() {
    const deadline = Date.now() + seconds * 1000
    while (!condition()) {
      if (Date.now() > deadline) {
        return yield* Effect.die(new Error(`${typeof what === "string" ? what : what()}: not within ${seconds} s`))
      }
      yield* sleepReal(20)
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

/** An MQTT.js client, ended with the scope. */
/**
 * An MQTT.js client, connected. `onMessage` is attached before the CONNACK: a message of a resumed session that
 * comes with it (NATS sends what is due at once) is not missed.
 */
const mqttJs = (
  url: string,
  options: mqtt.IClientOptions,
  onMessage?: (topic: string, payload: Buffer, packet: mqtt.IPublishPacket) => void
) =>
  Effect.acquireRelease(
    Effect.callback<mqtt.MqttClient, Error>((resume) => {
      const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 10_000, ...options })
      if (onMessage !== undefined) client.on("message", onMessage)
      client.once("connect", () => resume(Effect.succeed(client)))
      client.once("error", (error) => resume(Effect.fail(error)))
    }).pipe(Effect.orDie),
    (client) => Effect.promise(() => client.endAsync(true))
  )

/** NATS sends a copy per matching subscription: the client routes them one to each subscription. */
const natsOptions = { overlapping: "copy-per-subscription", keepAlive: 5, connectTimeout: "10 seconds" } as const

describe("a NATS JetStream cluster", () => {
  it.live(
    "the node the clients are on is killed while QoS 1 streams flow: they move to other nodes, the subscriber resumes its session, and every message published arrives",
    () =>
      Effect.gen(function*() {
        const cluster = yield* natsCluster({ ackWait: "2s" })
        const [n1, n2, n3] = cluster.urls
        const reconnect = Schedule.spaced("100 millis")
        const subscriber = yield* MqttClient.make({
          ...natsOptions,
          url: [n1, n2, n3],
          clientId: "nats-sub",
          cleanSession: false,
          reconnect
        })
        const statuses = yield* record(subscriber)
        yield* subscriber.subscribe("stream/#", { qos: 1 })
        const arrivals = new Map<string, number>()
        yield* Effect.forkChild(
          Stream.runForEach(subscriber.messages, (message) =>
            Effect.sync(() => {
              const key = `${message.topic} ${message.text}`
              arrivals.set(key, (arrivals.get(key) ?? 0) + 1)
            }))
        )
        // one publisher on the node that dies, one on a node that stays: its messages come while the subscriber moves
        const onVictim = yield* MqttClient.make({
          ...natsOptions,
          url: [n1, n2, n3],
          clientId: "nats-pub-1",
          reconnect
        })
        const elsewhere = yield* MqttClient.make({
          ...natsOptions,
          url: [n3, n2, n1],
          clientId: "nats-pub-3",
          reconnect
        })
        const victimStatuses = yield* record(onVictim)
        const messages = 1500
        let completed = 0
        const stream = (client: MqttClient.Client, topic: string) =>
          Effect.forkChild(Effect.forEach(
            Array.from({ length: messages }, (_, i) => i),
            (seq) => Effect.tap(client.publish(topic, String(seq), { qos: 1 }), () => Effect.sync(() => completed++)),
            { concurrency: 20, discard: true }
          ))
        const first = yield* stream(onVictim, "stream/1")
        const second = yield* stream(elsewhere, "stream/3")
        yield* until("the streams flow", () => completed >= messages)
        cluster.nodes[0].kill("SIGKILL")
        yield* Fiber.join(first)
        yield* Fiber.join(second)
        const expected = ["stream/1", "stream/3"].flatMap((topic) =>
          Array.from({ length: messages }, (_, seq) => `${topic} ${seq}`)
        )
        yield* until("every message arrived", () => expected.every((key) => arrivals.has(key)))
        const duplicates = [...arrivals.values()].filter((n) => n > 1).length
        console.log(`NATS: ${expected.length} published, all arrived, ${duplicates} more than once`)
        // the subscriber left n1 for another node, where its session was waiting
        const connected = statuses.flatMap((s) => s._tag === "Connected" ? [s] : [])
        expect(connected[0].info.broker).toBe(n1)
        expect(connected[0].info.sessionPresent).toBe(false)
        const moved = connected.find((s) => s.movedFrom === n1)
        expect(moved?.info.sessionPresent).toBe(true)
        expect([n2, n3]).toContain(moved?.info.broker)
        expect(victimStatuses.some((s) => s._tag === "Connected" && s.movedFrom === n1)).toBe(true)
      }),
    240_000
  )

  it.live(
    "a session, its subscription, the QoS 1 messages published while it was away, and retained messages go from node to node",
    () =>
      Effect.gen(function*() {
        const cluster = yield* natsCluster()
        const [n1, n2, n3] = cluster.urls
        const away = yield* Scope.make()
        const first = yield* Scope.provide(
          MqttClient.make({ ...natsOptions, url: n1, clientId: "nats-keep", cleanSession: false }),
          away
        )
        yield* first.subscribe("keep/#", { qos: 1 })
        yield* Scope.close(away, Exit.void)
        const publisher = yield* MqttClient.make({ ...natsOptions, url: n2 })
        for (let i = 0; i < 3; i++) yield* publisher.publish("keep/queued", `queued ${i}`, { qos: 1 })
        yield* publisher.publish("retained/r", "kept", { qos: 1, retain: true })
        const back = yield* MqttClient.make({ ...natsOptions, url: n3, clientId: "nats-keep", cleanSession: false })
        expect(back.connection.sessionPresent).toBe(true)
        const queued = yield* back.messages.pipe(Stream.take(3), Stream.runCollect)
        expect(queued.map((m) => m.text)).toEqual(["queued 0", "queued 1", "queued 2"])
        const fresh = yield* MqttClient.make({ ...natsOptions, url: n1 })
        const retained = yield* fresh.subscription("retained/#", { qos: 1 })
        const [message] = yield* retained.pipe(Stream.take(1), Stream.runCollect)
        expect([message.topic, message.text, message.retain]).toEqual(["retained/r", "kept", true])
      }),
    120_000
  )

  it.live(
    "an unacknowledged QoS 1 message is sent again only when NATS's ack wait runs out, after newer messages, not when the session resumes [MQTT-4.4.0-1]: MQTT.js sees the same",
    () =>
      Effect.gen(function*() {
        // an ack wait long enough that the session surely resumes, and the newer message goes, before it runs out
        const cluster = yield* natsCluster({ ackWait: "15s" })
        const [n1, n2, n3] = cluster.urls
        const publisher = yield* MqttClient.make({ ...natsOptions, url: n3 })
        const resumeWith = (resume: "effect-mqtt" | "MQTT.js", clientId: string) =>
          Effect.gen(function*() {
            // the first holder takes the message but never acknowledges it, then leaves (a crashed consumer)
            const holder = yield* Scope.make()
            const first = yield* Scope.provide(
              MqttClient.make({
                ...natsOptions,
                url: n1,
                clientId,
                cleanSession: false,
                acknowledgement: "manual"
              }),
              holder
            )
            yield* first.subscribe("held/#", { qos: 1 })
            yield* publisher.publish("held/x", "unacknowledged", { qos: 1 })
            const [held] = yield* first.messages.pipe(Stream.take(1), Stream.runCollect)
            expect(held.text).toBe("unacknowledged")
            yield* Scope.close(holder, Exit.void)
            // the session resumes on another node; a newer message is published after it resumed
            const got: Array<string> = []
            if (resume === "MQTT.js") {
              yield* mqttJs(
                n2,
                { clientId, clean: false },
                (_topic, payload, packet) => got.push(`${payload} dup=${packet.dup}`)
              )
            } else {
              const client = yield* MqttClient.make({ ...natsOptions, url: n2, clientId, cleanSession: false })
              expect(client.connection.sessionPresent).toBe(true)
              yield* Effect.forkChild(
                Stream.runForEach(client.messages, (m) => Effect.sync(() => got.push(`${m.text} dup=${m.dup}`)))
              )
            }
            yield* publisher.publish("held/x", "newer", { qos: 1 })
            yield* until(() => `both arrived at ${resume} (got ${JSON.stringify(got)})`, () => got.length >= 2)
            return got
          })
        expect(yield* resumeWith("effect-mqtt", "nats-held-1")).toEqual(["newer dup=false", "unacknowledged dup=true"])
        expect(yield* resumeWith("MQTT.js", "nats-held-2")).toEqual(["newer dup=false", "unacknowledged dup=true"])
      }),
    120_000
  )

  it.live(
    "the will of a client whose node dies is never published (effect-mqtt and MQTT.js alike), while a client dropped from a live node gets its will",
    () =>
      Effect.gen(function*() {
        const cluster = yield* natsCluster()
        const [n1, n2, n3] = cluster.urls
        const watcher = yield* MqttClient.make({ ...natsOptions, url: n2 })
        const wills = yield* watcher.subscription("will/#", { qos: 0 })
        const seen: Array<string> = []
        yield* Effect.forkChild(Stream.runForEach(wills, (m) => Effect.sync(() => seen.push(m.topic))))
        const will = (topic: string) => ({ topic, payload: Buffer.from("gone"), qos: 0 as const, retain: false })
        // control: a client that vanishes from a live node
        const dropped = yield* mqttJs(n3, { clientId: "will-control", will: will("will/control") })
        dropped.stream.destroy()
        yield* until("the control will arrived", () => seen.includes("will/control"))
        // the node of these two dies with them gone: neither reconnects
        yield* MqttClient.make({
          ...natsOptions,
          url: n1,
          clientId: "will-effect",
          reconnect: false,
          will: { topic: "will/effect-mqtt", payload: "gone" }
        })
        yield* mqttJs(n1, { clientId: "will-mqttjs", will: will("will/mqttjs") })
        cluster.nodes[0].kill("SIGKILL")
        yield* Effect.promise(() => cluster.nodes[0].exited)
        // a marker published after the node died arrives; the wills, which only n1 knew, never come
        // (NATS closes new MQTT connections while its JetStream leaders move after a node's death: retried)
        const marker = yield* MqttClient.make({
          ...natsOptions,
          url: n3,
          retryFirstConnect: true,
          reconnect: Schedule.spaced("200 millis")
        })
        yield* marker.publish("will/marker", "after the kill")
        yield* until("the marker arrived", () => seen.includes("will/marker"))
        yield* sleepReal(3000)
        expect(seen).toEqual(["will/control", "will/marker"])
      }),
    120_000
  )
})
