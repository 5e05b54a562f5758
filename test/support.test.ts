/**
 * Proves the test harness itself, without the effect-mqtt client: the private Mosquitto with mosquitto_pub /
 * mosquitto_sub, and the fake broker with MQTT.js as the client.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Effect, Exit, Option } from "effect"
import { connect, type IClientOptions, type MqttClient } from "mqtt"
import * as Net from "node:net"
import * as FakeBroker from "./support/FakeBroker.ts"
import {
  mosquitto,
  type MosquittoHandle,
  mosquittoPub,
  mosquittoSub,
  requireMosquittoClients,
  startMosquitto
} from "./support/Mosquitto.ts"

const roundTrip = async (broker: MosquittoHandle, topic: string, text: string) => {
  const sub = mosquittoSub(["-p", String(broker.port), "-t", topic, "-q", "1"], {
    expectedMessages: 1,
    timeoutMs: 10_000
  })
  await sub.ready
  const pub = await mosquittoPub(["-p", String(broker.port), "-t", topic, "-q", "1", "-m", text])
  assert.strictEqual(pub.code, 0, pub.stderr)
  return sub.done
}

describe("Mosquitto harness", () => {
  let broker: MosquittoHandle
  beforeAll(async () => {
    requireMosquittoClients()
    broker = await startMosquitto()
  })
  afterAll(() => broker?.dispose())

  it("starts a private broker on its own port, not the shared 1883", () => {
    assert.notStrictEqual(broker.port, 1883)
    assert.strictEqual(broker.url, `mqtt://127.0.0.1:${broker.port}`)
    assert.isTrue(broker.running)
    assert.include(broker.logs(), `port ${broker.port}`)
  })

  it("relays a message from mosquitto_pub to a subscribed mosquitto_sub", async () => {
    const result = await roundTrip(broker, "harness/hello", "hello world")
    assert.strictEqual(result.code, 0, result.stderr)
    assert.deepStrictEqual(result.messages.map((m) => [m.topic, m.text, m.qos]), [["harness/hello", "hello world", 1]])
  })

  it("mosquittoSub returns binary and multi-line payloads intact", async () => {
    const sub = mosquittoSub(["-p", String(broker.port), "-t", "harness/bin/#"], { expectedMessages: 2 })
    await sub.ready
    await mosquittoPub(["-p", String(broker.port), "-t", "harness/bin/a", "-m", "line 1\nClient line 2"])
    await mosquittoPub(["-p", String(broker.port), "-t", "harness/bin/b", "-n"])
    const result = await sub.done
    assert.deepStrictEqual(result.messages.map((m) => [m.topic, m.text]), [
      ["harness/bin/a", "line 1\nClient line 2"],
      ["harness/bin/b", ""]
    ])
  })

  it("restart brings the broker back on the same port with a new process", async () => {
    const before = broker.pid
    await broker.restart()
    assert.notStrictEqual(broker.pid, before)
    const result = await roundTrip(broker, "harness/restarted", "again")
    assert.deepStrictEqual(result.messages.map((m) => m.text), ["again"])
  })

  it("restart after SIGKILL brings the broker back", async () => {
    broker.kill("SIGKILL")
    await broker.restart()
    assert.isTrue(broker.running)
    const result = await roundTrip(broker, "harness/killed", "after kill")
    assert.deepStrictEqual(result.messages.map((m) => m.text), ["after kill"])
  })

  it("mosquittoSub's ready rejects when the broker is not there", async () => {
    const port = broker.port
    await broker.stop()
    try {
      const sub = mosquittoSub(["-p", String(port), "-t", "x"], { timeoutMs: 2_000 })
      let rejected = false
      await sub.ready.catch(() => {
        rejected = true
      })
      assert.isTrue(rejected)
    } finally {
      await broker.restart()
    }
  })
})

describe("Mosquitto harness with persistence", () => {
  it("keeps a persistent session's queued QoS 1 message across a SIGTERM restart", async () => {
    const broker = await startMosquitto({ persistence: true })
    try {
      const port = String(broker.port)
      // Create the persistent session, then disconnect (-E: exit once subscribed).
      const first = mosquittoSub(["-p", port, "-t", "harness/persist", "-q", "1", "-c", "-i", "persist-1", "-E"])
      await first.ready
      await first.done
      const pub = await mosquittoPub(["-p", port, "-t", "harness/persist", "-q", "1", "-m", "kept"])
      assert.strictEqual(pub.code, 0, pub.stderr)
      await broker.restart()
      const second = mosquittoSub(["-p", port, "-t", "harness/persist", "-q", "1", "-c", "-i", "persist-1"], {
        expectedMessages: 1
      })
      const result = await second.done
      assert.deepStrictEqual(result.messages.map((m) => m.text), ["kept"], broker.logs())
    } finally {
      await broker.dispose()
    }
  })

  it.live("the scoped variant stops the broker when the scope closes", () =>
    Effect.gen(function*() {
      const handle = yield* Effect.scoped(Effect.gen(function*() {
        const handle = yield* mosquitto()
        assert.isTrue(handle.running)
        return handle
      }))
      assert.isFalse(handle.running)
    }))
})

// ---------------------------------------------------------------------------------------------------------------

/** An MQTT.js client that is force-closed when the scope closes; `connected` resolves with its CONNACK. */
const mqttJs = (url: string, options: IClientOptions) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const client = connect(url, { reconnectPeriod: 0, connectTimeout: 10_000, ...options })
      client.on("error", () => {})
      const connected = new Promise<unknown>((resolve) => client.once("connect", resolve))
      return { client, connected }
    }),
    ({ client }) => Effect.promise(() => client.endAsync(true))
  )

const nextMessage = (client: MqttClient) =>
  Effect.callback<{ topic: string; payload: Buffer }>((resume) => {
    const listener = (topic: string, payload: Buffer) => resume(Effect.succeed({ topic, payload }))
    client.once("message", listener)
    return Effect.sync(() => client.off("message", listener))
  })

/** A bare TCP client, for bytes MQTT.js would never send. */
const rawClient = (port: number) =>
  Effect.acquireRelease(
    Effect.callback<Net.Socket>((resume) => {
      const socket = Net.connect({ port, host: "127.0.0.1" }, () => resume(Effect.succeed(socket)))
      socket.on("error", () => {})
    }),
    (socket) => Effect.sync(() => socket.destroy())
  )

describe("FakeBroker", () => {
  it.live("receives an MQTT 3.1.1 CONNECT, answers CONNACK, and scripts a SUBSCRIBE / SUBACK", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 4 })
      const { client, connected } = yield* mqttJs(broker.url, { protocolVersion: 4, clientId: "harness-v4" })
      const { connect: connectPacket, connection } = yield* broker.acceptAndConnack()
      assert.strictEqual(connectPacket.clientId, "harness-v4")
      assert.strictEqual(connectPacket.protocolVersion, 4)
      assert.strictEqual(connection.protocolVersion, 4)
      yield* Effect.promise(() => connected)

      const granted = client.subscribeAsync("harness/topic", { qos: 1 })
      const subscribe = yield* connection.expect("subscribe")
      assert.deepStrictEqual(subscribe.subscriptions, [{ topic: "harness/topic", qos: 1 }])
      yield* connection.send({ cmd: "suback", messageId: subscribe.messageId!, granted: [1] })
      const grants = yield* Effect.promise(() => granted)
      assert.deepStrictEqual(grants.map((g) => g.qos), [1])
      assert.deepStrictEqual(connection.received.map((p) => p.cmd), ["connect", "subscribe"])
      assert.strictEqual(connection.receivedRaw[0]![0], 0x10)
    }))

  it.live("receives an MQTT 5 CONNECT with its properties and sends a CONNACK with properties", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5 })
      const { client, connected } = yield* mqttJs(broker.url, {
        protocolVersion: 5,
        clientId: "harness-v5",
        properties: { sessionExpiryInterval: 30, receiveMaximum: 7 }
      })
      const { connect: connectPacket, connection } = yield* broker.acceptAndConnack({
        sessionPresent: false,
        reasonCode: 0,
        properties: { receiveMaximum: 3, topicAliasMaximum: 0 }
      })
      assert.strictEqual(connectPacket.protocolVersion, 5)
      assert.strictEqual(connectPacket.properties?.sessionExpiryInterval, 30)
      assert.strictEqual(connectPacket.properties?.receiveMaximum, 7)
      const connack = (yield* Effect.promise(() => connected)) as { properties?: { receiveMaximum?: number } }
      assert.strictEqual(connack.properties?.receiveMaximum, 3)

      const granted = client.subscribeAsync("harness/v5", { qos: 2 })
      const subscribe = yield* connection.expect("subscribe")
      yield* connection.send({ cmd: "suback", messageId: subscribe.messageId!, granted: [2] })
      const grants = yield* Effect.promise(() => granted)
      assert.deepStrictEqual(grants.map((g) => g.qos), [2])
    }))

  it.live("the parser follows the CONNECT's version even when the broker was made for another", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 4 })
      yield* mqttJs(broker.url, { protocolVersion: 5, properties: { sessionExpiryInterval: 9 } })
      const { connect: connectPacket, connection } = yield* broker.acceptAndConnack()
      assert.strictEqual(connectPacket.properties?.sessionExpiryInterval, 9)
      assert.strictEqual(connection.protocolVersion, 5)
    }))

  it.live("sendSplit delivers a PUBLISH one byte at a time and MQTT.js receives it intact", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make()
      const { client, connected } = yield* mqttJs(broker.url, { protocolVersion: 4 })
      const { connection } = yield* broker.acceptAndConnack()
      yield* Effect.promise(() => connected)
      const payload = Buffer.from("split into single bytes, reassembled by the client")
      const message = Effect.runPromise(nextMessage(client))
      yield* connection.sendSplit({
        cmd: "publish",
        topic: "harness/split",
        payload,
        qos: 0,
        dup: false,
        retain: false
      })
      const received = yield* Effect.promise(() => message)
      assert.strictEqual(received.topic, "harness/split")
      assert.deepStrictEqual(received.payload, payload)
    }))

  it.live("sendMany delivers several packets in one write", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make()
      const { client, connected } = yield* mqttJs(broker.url, { protocolVersion: 4 })
      const { connection } = yield* broker.acceptAndConnack()
      yield* Effect.promise(() => connected)
      const topics: Array<string> = []
      const all = new Promise<void>((resolve) =>
        client.on("message", (topic) => {
          topics.push(topic)
          if (topics.length === 3) resolve()
        })
      )
      yield* connection.sendMany(
        ["a", "b", "c"].map((t) => ({
          cmd: "publish" as const,
          topic: `harness/many/${t}`,
          payload: t,
          qos: 0 as const,
          dup: false,
          retain: false
        }))
      )
      yield* Effect.promise(() => all)
      assert.deepStrictEqual(topics, ["harness/many/a", "harness/many/b", "harness/many/c"])
    }))

  it.live("expect dies with a message naming both packet types when the client sends another", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make()
      yield* mqttJs(broker.url, { protocolVersion: 4 })
      const connection = yield* broker.accept
      const exit = yield* Effect.exit(connection.expect("subscribe"))
      assert.isTrue(Exit.isFailure(exit))
      assert.include(String(Exit.isFailure(exit) ? exit.cause : ""), "expected SUBSCRIBE but received CONNECT")
    }))

  it.live("a malformed packet from the client makes receive die and is recorded", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make()
      const socket = yield* rawClient(broker.port)
      const connection = yield* broker.accept
      // PUBREL must have header flags 0b0010: 0x60 is malformed.
      socket.write(Buffer.from([0x60, 0x02, 0x00, 0x01]))
      const exit = yield* Effect.exit(connection.receive)
      assert.isTrue(Exit.isFailure(exit))
      assert.strictEqual(connection.errors.length, 1)
      assert.include(connection.errors[0]!.message, "could not parse 60020001")
    }))

  it.live("autoPingresp answers PINGREQ and keeps it out of receive", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ autoPingresp: true })
      const socket = yield* rawClient(broker.port)
      const connection = yield* broker.accept
      const answer = new Promise<Buffer>((resolve) => socket.once("data", resolve))
      socket.write(Buffer.from([0xc0, 0x00]))
      assert.deepStrictEqual([...(yield* Effect.promise(() => answer))], [0xd0, 0x00])
      assert.deepStrictEqual(connection.received.map((p) => p.cmd), ["pingreq"])
      assert.isTrue(Option.isNone(yield* connection.receiveWithin(50)))
    }))

  it.live("closed succeeds and receive dies once the client closes the connection", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make()
      const socket = yield* rawClient(broker.port)
      const connection = yield* broker.accept
      socket.write(Buffer.from([0xe0, 0x00]))
      socket.end()
      assert.strictEqual((yield* connection.receive).cmd, "disconnect")
      yield* connection.closed
      assert.isTrue(connection.isClosed)
      const exit = yield* Effect.exit(connection.receive)
      assert.isTrue(Exit.isFailure(exit))
    }))
})
