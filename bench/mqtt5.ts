/**
 * MQTT 5 throughput: effect-mqtt against MQTT.js in 5.0 mode, side by side, on a private Mosquitto.
 *
 * Rows, all QoS 1 (effect-mqtt gives every topic an alias by default; it is turned off where MQTT.js sends none, so
 * both write the same bytes), `BENCH_MESSAGES` (default 100,000) messages of 64 bytes, one publisher and one subscriber in
 * this process, at most `BENCH_WINDOW` (default 1,000) publishes outstanding:
 * - no properties (the baseline the other rows pay for their properties against);
 * - two user properties on every message;
 * - four distinct topics of 200 bytes in rotation, without topic aliases;
 * - the same with topic aliases: effect-mqtt by default (`topicAliases`), MQTT.js with `autoUseTopicAlias` and
 *   `autoAssignTopicAlias` (and `topicAliasMaximum` offered to the broker). Mosquitto's `max_topic_alias` is 10.
 *
 * The rate is messages received per second from the first publish until the subscriber has the last one. The
 * subscriber checks every message (its user properties, or that its topic is one of the four), so a client
 * that dropped properties or mangled a topic is shown, not rewarded. Each row is measured `BENCH_RUNS` (default
 * 3) times per client, alternating which goes first; the median is shown with the range.
 *
 * Then the bytes each publisher writes per message, counted by a TCP proxy in front of the broker over a short
 * run (`BENCH_WIRE_MESSAGES`, default 2,000): what the properties cost and what the aliases save on the wire.
 *
 * Environment: BENCH_MESSAGES, BENCH_WINDOW, BENCH_RUNS, BENCH_WIRE_MESSAGES, BENCH_CAP_SECONDS (default 300: the
 * most one measurement may take), BENCH_CLIENTS (default "effect,mqttjs"). Always exits with 0: it is a report.
 */
import type { MqttClient, MqttMessage } from "effect-mqtt"
import type * as mqtt from "mqtt"
import { Buffer } from "node:buffer"
import * as Net from "node:net"
import { type Broker, mosquittoVersion, startBroker } from "./broker.ts"
import * as Bench from "./support.ts"

const WIRE_MESSAGES = Bench.envInt("BENCH_WIRE_MESSAGES", 2000)

// ---------------------------------------------------------------------------------------------------------
// the scenarios
// ---------------------------------------------------------------------------------------------------------

interface Scenario {
  readonly name: string
  /** the topic of the i-th message under `base` */
  readonly topicOf: (base: string, i: number) => string
  readonly effectClient: MqttClient.Options
  readonly effectPublish: MqttClient.PublishOptions
  readonly mqttjsClient: mqtt.IClientOptions
  readonly mqttjsPublish: mqtt.IClientPublishOptions
  /** whether a received message is what was sent: its properties, its topic */
  readonly effectCheck: (message: MqttMessage.MqttMessage) => boolean
  readonly mqttjsCheck: (topic: string, packet: mqtt.IPublishPacket) => boolean
}

const shortTopic = (base: string) => `${base}/t`

/** Four topics of about 200 bytes under `base`, the i-th message on the (i mod 4)-th. */
const LONG_LEVELS = "a-rather-long-topic-level/".repeat(7)
const longTopic = (base: string, i: number) => `${base}/${LONG_LEVELS}${i % 4}`
const isLongTopic = (topic: string) => topic.includes(LONG_LEVELS)

const USER_PROPERTIES = [["tenant", "acme"], ["trace", "7f3a9c2e"]] as const

const scenarios: ReadonlyArray<Scenario> = [
  {
    name: "QoS 1, no properties (baseline)",
    topicOf: shortTopic,
    // the same bytes on the wire as MQTT.js: effect-mqtt would otherwise give even a short topic an alias
    effectClient: { topicAliases: false },
    effectPublish: { qos: 1 },
    mqttjsClient: {},
    mqttjsPublish: { qos: 1 },
    effectCheck: () => true,
    mqttjsCheck: () => true
  },
  {
    name: "QoS 1, two user properties",
    topicOf: shortTopic,
    // the same bytes on the wire as MQTT.js: effect-mqtt would otherwise give even a short topic an alias
    effectClient: { topicAliases: false },
    effectPublish: { qos: 1, properties: { userProperties: USER_PROPERTIES } },
    mqttjsClient: {},
    mqttjsPublish: { qos: 1, properties: { userProperties: Object.fromEntries(USER_PROPERTIES) } },
    effectCheck: (m) => m.properties.userProperties?.length === 2 && m.properties.userProperties[1][1] === "7f3a9c2e",
    mqttjsCheck: (_, packet) => packet.properties?.userProperties?.trace === "7f3a9c2e"
  },
  {
    name: "QoS 1, 4 topics of 200 bytes, no aliases",
    topicOf: longTopic,
    effectClient: { topicAliases: false },
    effectPublish: { qos: 1 },
    mqttjsClient: {},
    mqttjsPublish: { qos: 1 },
    effectCheck: (m) => isLongTopic(m.topic),
    mqttjsCheck: (topic) => isLongTopic(topic)
  },
  {
    name: "QoS 1, 4 topics of 200 bytes, topic aliases",
    topicOf: longTopic,
    effectClient: {},
    effectPublish: { qos: 1 },
    mqttjsClient: { autoUseTopicAlias: true, autoAssignTopicAlias: true, properties: { topicAliasMaximum: 10 } },
    mqttjsPublish: { qos: 1 },
    effectCheck: (m) => isLongTopic(m.topic),
    mqttjsCheck: (topic) => isLongTopic(topic)
  }
]

// ---------------------------------------------------------------------------------------------------------
// one measurement
// ---------------------------------------------------------------------------------------------------------

/** One run of one client: its own publisher (on `publishUrl`) and subscriber, QoS 1, under a fresh base topic. */
const run = (
  client: "effect" | "mqttjs",
  scenario: Scenario,
  url: string,
  publishUrl: string,
  n: number
): Promise<Bench.RunResult> => {
  if (!Bench.CLIENTS.includes(client)) return Promise.resolve(Bench.skipped)
  const base = Bench.freshTopic("bench5", client)
  const spec: Bench.RunSpec = {
    url,
    publishUrl,
    protocolVersion: 5,
    filter: `${base}/#`,
    topicOf: (i) => scenario.topicOf(base, i),
    qos: 1,
    n
  }
  return client === "effect"
    ? Bench.runEffect({
      ...spec,
      publisher: scenario.effectClient,
      publish: scenario.effectPublish,
      check: scenario.effectCheck
    })
    : Bench.runMqttjs({
      ...spec,
      publisher: scenario.mqttjsClient,
      publish: scenario.mqttjsPublish,
      check: scenario.mqttjsCheck
    })
}

// ---------------------------------------------------------------------------------------------------------
// bytes on the wire
// ---------------------------------------------------------------------------------------------------------

/** A TCP proxy in front of the broker that counts the bytes clients send through it. */
const countingProxy = (brokerPort: number) =>
  new Promise<{ readonly url: string; readonly bytes: () => number; readonly close: () => Promise<void> }>(
    (resolve) => {
      let bytes = 0
      const sockets = new Set<Net.Socket>()
      const server = Net.createServer((client) => {
        const upstream = Net.connect({ host: "127.0.0.1", port: brokerPort })
        sockets.add(client).add(upstream)
        client.setNoDelay(true)
        upstream.setNoDelay(true)
        client.on("data", (chunk: Buffer) => {
          bytes += chunk.length
          if (!upstream.write(chunk)) client.pause()
        })
        upstream.on("drain", () => client.resume())
        upstream.on("data", (chunk: Buffer) => {
          if (!client.write(chunk)) upstream.pause()
        })
        client.on("drain", () => upstream.resume())
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
        const { port } = server.address() as Net.AddressInfo
        resolve({
          url: `mqtt://127.0.0.1:${port}`,
          bytes: () => bytes,
          close: () =>
            new Promise<void>((done) => {
              for (const socket of sockets) socket.destroy()
              server.close(() => done())
            })
        })
      })
    }
  )

/** Bytes the publisher wrote per message (CONNECT and DISCONNECT included, spread over the messages). */
const wireBytes = async (client: "effect" | "mqttjs", scenario: Scenario, broker: Broker): Promise<number> => {
  if (!Bench.CLIENTS.includes(client)) return NaN
  const proxy = await countingProxy(broker.port)
  try {
    const result = await run(client, scenario, broker.url, proxy.url, WIRE_MESSAGES)
    // the client closes its socket when the run ends: let the last bytes pass the proxy
    await Bench.sleep(100)
    return result.received === WIRE_MESSAGES ? proxy.bytes() / WIRE_MESSAGES : NaN
  } finally {
    await proxy.close()
  }
}

// ---------------------------------------------------------------------------------------------------------
// report
// ---------------------------------------------------------------------------------------------------------

const describeResult = (r: Bench.RunResult, n: number, range: string): string => {
  if (r.error === "skipped") return "skipped"
  if (r.received === 0 && r.error !== undefined) return `error: ${r.error.split("\n")[0].slice(0, 120)}`
  const notes: Array<string> = []
  if (r.received < n) notes.push(`${Bench.fmt(n - r.received)} of ${Bench.fmt(n)} not received`)
  if (r.bad > 0) notes.push(`${Bench.fmt(r.bad)} failed the check`)
  if (r.error !== undefined) notes.push(`publisher: ${r.error.split("\n")[0].slice(0, 80)}`)
  return Bench.fmt(Bench.rateOf(r)) + (range === "" ? "" : ` (${range})`) +
    (notes.length > 0 ? ` [${notes.join("; ")}]` : "")
}

const main = async () => {
  Bench.watchdog("mqtt5", 60)
  const broker = await startBroker()
  console.log(
    `# MQTT 5 throughput: effect-mqtt vs MQTT.js ${Bench.packageVersion("mqtt")} (both in 5.0 mode)\n\n` +
      `node ${process.version}, ${mosquittoVersion()} on 127.0.0.1:${broker.port} (max_topic_alias 10); one ` +
      `publisher and one subscriber in this process; ${
        Bench.fmt(Bench.MESSAGES)
      } QoS 1 messages of ${Bench.PAYLOAD.length} bytes; ` +
      `at most ${Bench.WINDOW} publishes outstanding; warm-up ${
        Bench.fmt(Bench.WARMUP)
      }; median of ${Bench.RUNS} runs (range in ` +
      `brackets). Every received message is checked (user properties present, topic intact).\n`
  )
  const rows: Array<Array<string>> = []
  const wireRows: Array<Array<string>> = []
  try {
    for (const scenario of scenarios) {
      process.stderr.write(`  measuring ${scenario.name}...\n`)
      const runs = await Bench.sideBySide((client, n) => run(client, scenario, broker.url, broker.url, n))
      const e = Bench.medianRun(runs.effect)
      const m = Bench.medianRun(runs.mqttjs)
      rows.push([
        scenario.name,
        describeResult(e.result, Bench.MESSAGES, e.range),
        describeResult(m.result, Bench.MESSAGES, m.range),
        Bench.showRatio(Bench.ratioOf(e.result, m.result))
      ])
      const effectBytes = await wireBytes("effect", scenario, broker)
      const mqttjsBytes = await wireBytes("mqttjs", scenario, broker)
      const shown = (b: number) => Number.isFinite(b) ? b.toFixed(1) : "n/a"
      wireRows.push([scenario.name, shown(effectBytes), shown(mqttjsBytes)])
    }
  } finally {
    await broker.stop()
  }
  console.log(Bench.table(["scenario", "effect-mqtt msg/s", "MQTT.js msg/s", "ratio effect-mqtt / MQTT.js"], rows))
  console.log(
    `\n## Bytes the publisher sends per message (${Bench.fmt(WIRE_MESSAGES)} messages through a counting proxy)\n`
  )
  console.log(Bench.table(["scenario", "effect-mqtt", "MQTT.js"], wireRows))
  console.log("")
  Bench.exit()
}

main().catch((error) => {
  console.log(`mqtt5: failed: ${error instanceof Error ? error.stack : String(error)}`)
  process.exit(0)
})
