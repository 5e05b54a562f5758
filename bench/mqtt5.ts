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
import { MqttClient, type MqttMessage } from "effect-mqtt"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Stream from "effect/Stream"
import * as mqtt from "mqtt"
import { Buffer } from "node:buffer"
import { execFileSync } from "node:child_process"
import { createRequire } from "node:module"
import * as Net from "node:net"
import { performance } from "node:perf_hooks"
import { type Broker, startBroker } from "./broker.ts"

const envInt = (name: string, fallback: number): number => {
  const value = Number(process.env[name])
  return Number.isFinite(value) && value > 0 ? Math.floor(value) : fallback
}

const MESSAGES = envInt("BENCH_MESSAGES", 100_000)
const WINDOW = envInt("BENCH_WINDOW", 1000)
const RUNS = envInt("BENCH_RUNS", 3)
const WIRE_MESSAGES = envInt("BENCH_WIRE_MESSAGES", 2000)
const CAP_MS = envInt("BENCH_CAP_SECONDS", 300) * 1000
const QUIET_MS = 2000
const WARMUP = Math.min(5000, Math.max(100, Math.floor(MESSAGES / 10)))
const CLIENTS = (process.env.BENCH_CLIENTS ?? "effect,mqttjs").split(",").map((s) => s.trim())
const PAYLOAD = Buffer.alloc(64, "x")

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

interface Result {
  readonly sent: number
  readonly received: number
  /** received messages that failed the scenario's check */
  readonly bad: number
  /** from the first publish to the last message received */
  readonly ms: number
  readonly error?: string
}

const skipped: Result = { sent: 0, received: 0, bad: 0, ms: 0, error: "skipped" }
const rateOf = (r: Result) => r.ms > 0 ? (r.received / r.ms) * 1000 : 0

let topicSeq = 0
const freshBase = (tag: string) => `bench5/${process.pid}/${Date.now().toString(36)}/${tag}/${topicSeq++}`

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

interface Counter {
  count: number
  bad: number
  last: number
}

/** Until `n` were received, or nothing arrived for `QUIET_MS` once publishing is done, or the deadline. */
const awaitReceived = async (counter: Counter, n: number, isPublished: () => boolean, deadline: number) => {
  let quietSince = performance.now()
  let seen = counter.count
  for (;;) {
    if (counter.count >= n) return
    const now = performance.now()
    if (now > deadline) return
    if (counter.count !== seen) {
      seen = counter.count
      quietSince = now
    }
    if (isPublished() && now - quietSince > QUIET_MS) return
    await sleep(10)
  }
}

const effectRun = (scenario: Scenario, url: string, publishUrl: string, n: number): Promise<Result> =>
  Effect.scoped(Effect.gen(function*() {
    const base = freshBase("effect")
    const sub = yield* MqttClient.make({ url, protocolVersion: 5 })
    const pub = yield* MqttClient.make({ url: publishUrl, protocolVersion: 5, ...scenario.effectClient })
    yield* sub.subscribe(`${base}/#`, { qos: 1 })
    const counter: Counter = { count: 0, bad: 0, last: 0 }
    const check = scenario.effectCheck
    yield* Effect.forkScoped(
      Stream.runForEachArray(sub.messages, (messages) =>
        Effect.sync(() => {
          for (const message of messages) if (!check(message)) counter.bad++
          counter.count += messages.length
          counter.last = performance.now()
        }))
    )
    let sent = 0
    let publishedAt = 0
    const start = performance.now()
    const options = scenario.effectPublish
    const publisher = yield* Effect.forkScoped(
      Effect.forEach(
        Array.from({ length: n }, (_, i) => i),
        (i) =>
          Effect.map(pub.publish(scenario.topicOf(base, i), PAYLOAD, options), () => {
            sent++
          }),
        { concurrency: WINDOW, discard: true }
      ).pipe(
        Effect.timeoutOption(CAP_MS),
        Effect.ensuring(Effect.sync(() => {
          publishedAt = performance.now()
        })),
        Effect.exit
      )
    )
    yield* Effect.promise(() => awaitReceived(counter, n, () => publishedAt !== 0, start + CAP_MS))
    const exit = yield* Fiber.join(publisher)
    return {
      sent,
      received: counter.count,
      bad: counter.bad,
      ms: (counter.count > 0 ? counter.last : performance.now()) - start,
      ...(exit._tag === "Failure" ? { error: String(exit.cause) } : {})
    } satisfies Result
  })).pipe(
    Effect.catchCause((cause) => Effect.succeed({ ...skipped, error: String(cause) })),
    Effect.runPromise
  )

const mqttjsRun = async (scenario: Scenario, url: string, publishUrl: string, n: number): Promise<Result> => {
  const base = freshBase("mqttjs")
  const common = { protocolVersion: 5, reconnectPeriod: 0, clean: true, keepalive: 60 } as const
  const sub = await mqtt.connectAsync(url, common)
  const pub = await mqtt.connectAsync(publishUrl, { ...common, ...scenario.mqttjsClient })
  try {
    await sub.subscribeAsync(`${base}/#`, { qos: 1 })
    const counter: Counter = { count: 0, bad: 0, last: 0 }
    const check = scenario.mqttjsCheck
    sub.on("message", (topic, _payload, packet) => {
      if (!check(topic, packet)) counter.bad++
      counter.count++
      counter.last = performance.now()
    })
    let sent = 0
    let issued = 0
    let publishedAt = 0
    let error: string | undefined
    const start = performance.now()
    const options = scenario.mqttjsPublish
    const publishing = new Promise<void>((resolve) => {
      const onDone = (err?: Error) => {
        if (err !== undefined && err !== null) error ??= err.message
        sent++
        if (sent === n) resolve()
        else issue()
      }
      const issue = () => {
        while (issued < n && issued - sent < WINDOW) {
          pub.publish(scenario.topicOf(base, issued), PAYLOAD, options, onDone)
          issued++
        }
      }
      issue()
    }).then(() => {
      publishedAt = performance.now()
    })
    await awaitReceived(counter, n, () => publishedAt !== 0, start + CAP_MS)
    await Promise.race([publishing, sleep(Math.max(0, start + CAP_MS - performance.now()))])
    return {
      sent,
      received: counter.count,
      bad: counter.bad,
      ms: (counter.count > 0 ? counter.last : performance.now()) - start,
      ...(error === undefined ? {} : { error })
    }
  } finally {
    pub.end(true)
    sub.end(true)
  }
}

const run = (client: "effect" | "mqttjs", scenario: Scenario, url: string, publishUrl: string, n: number) =>
  !CLIENTS.includes(client)
    ? Promise.resolve(skipped)
    : client === "effect"
    ? effectRun(scenario, url, publishUrl, n)
    : mqttjsRun(scenario, url, publishUrl, n)

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
  if (!CLIENTS.includes(client)) return NaN
  const proxy = await countingProxy(broker.port)
  try {
    const result = await run(client, scenario, broker.url, proxy.url, WIRE_MESSAGES)
    // the client closes its socket when the run ends: let the last bytes pass the proxy
    await sleep(100)
    return result.received === WIRE_MESSAGES ? proxy.bytes() / WIRE_MESSAGES : NaN
  } finally {
    await proxy.close()
  }
}

// ---------------------------------------------------------------------------------------------------------
// report
// ---------------------------------------------------------------------------------------------------------

const fmt = (n: number) => Math.round(n).toLocaleString("en-US")

const describeResult = (r: Result, n: number, range: string): string => {
  if (r.error === "skipped") return "skipped"
  if (r.received === 0 && r.error !== undefined) return `error: ${r.error.split("\n")[0].slice(0, 120)}`
  const notes: Array<string> = []
  if (r.received < n) notes.push(`${fmt(n - r.received)} of ${fmt(n)} not received`)
  if (r.bad > 0) notes.push(`${fmt(r.bad)} failed the check`)
  if (r.error !== undefined) notes.push(`publisher: ${r.error.split("\n")[0].slice(0, 80)}`)
  return fmt(rateOf(r)) + (range === "" ? "" : ` (${range})`) + (notes.length > 0 ? ` [${notes.join("; ")}]` : "")
}

const median = (results: ReadonlyArray<Result>) => {
  const sorted = [...results].sort((a, b) => rateOf(a) - rateOf(b))
  const k = (r: Result) => (rateOf(r) / 1000).toFixed(1) + "k"
  return {
    result: sorted[Math.floor((sorted.length - 1) / 2)],
    range: sorted.length > 1 ? `${k(sorted[0])}–${k(sorted[sorted.length - 1])}` : ""
  }
}

const table = (header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>): string => {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)))
  const line = (cells: ReadonlyArray<string>) => "| " + cells.map((c, i) => c.padEnd(widths[i])).join(" | ") + " |"
  return [line(header), "| " + widths.map((w) => "-".repeat(w)).join(" | ") + " |", ...rows.map(line)].join("\n")
}

const gc = () => (globalThis as { gc?: () => void }).gc?.()

const versionOf = (pkg: string): string => {
  try {
    return (createRequire(import.meta.url)(`${pkg}/package.json`) as { version: string }).version
  } catch {
    return "?"
  }
}

const mosquittoVersion = (): string => {
  try {
    return execFileSync(process.env.MOSQUITTO ?? "/usr/sbin/mosquitto", ["-h"], { encoding: "utf8" }).split("\n")[0]
  } catch (e) {
    // `mosquitto -h` exits with 3 after printing its usage
    const out = (e as { stdout?: string }).stdout
    return typeof out === "string" && out.length > 0 ? out.split("\n")[0] : "mosquitto"
  }
}

const main = async () => {
  const watchdog = setTimeout(() => {
    console.log("\nmqtt5: watchdog fired (60 min): giving up")
    exit()
  }, 60 * 60 * 1000)
  watchdog.unref()

  const broker = await startBroker()
  console.log(
    `# MQTT 5 throughput: effect-mqtt vs MQTT.js ${versionOf("mqtt")} (both in 5.0 mode)\n\n` +
      `node ${process.version}, ${mosquittoVersion()} on 127.0.0.1:${broker.port} (max_topic_alias 10); one ` +
      `publisher and one subscriber in this process; ${fmt(MESSAGES)} QoS 1 messages of ${PAYLOAD.length} bytes; ` +
      `at most ${WINDOW} publishes outstanding; warm-up ${fmt(WARMUP)}; median of ${RUNS} runs (range in ` +
      `brackets). Every received message is checked (user properties present, topic intact).\n`
  )
  const rows: Array<Array<string>> = []
  const wireRows: Array<Array<string>> = []
  try {
    for (const scenario of scenarios) {
      process.stderr.write(`  measuring ${scenario.name}...\n`)
      await run("effect", scenario, broker.url, broker.url, WARMUP)
      await run("mqttjs", scenario, broker.url, broker.url, WARMUP)
      const effect: Array<Result> = []
      const mqttjs: Array<Result> = []
      for (let i = 0; i < RUNS; i++) {
        for (const client of i % 2 === 0 ? ["effect", "mqttjs"] as const : ["mqttjs", "effect"] as const) {
          gc()
          const result = await run(client, scenario, broker.url, broker.url, MESSAGES)
          ;(client === "effect" ? effect : mqttjs).push(result)
        }
      }
      const e = median(effect)
      const m = median(mqttjs)
      const ratio = rateOf(m.result) > 0 ? rateOf(e.result) / rateOf(m.result) : NaN
      rows.push([
        scenario.name,
        describeResult(e.result, MESSAGES, e.range),
        describeResult(m.result, MESSAGES, m.range),
        Number.isFinite(ratio) ? ratio.toFixed(2) + "x" : "n/a"
      ])
      const effectBytes = await wireBytes("effect", scenario, broker)
      const mqttjsBytes = await wireBytes("mqttjs", scenario, broker)
      const shown = (b: number) => Number.isFinite(b) ? b.toFixed(1) : "n/a"
      wireRows.push([scenario.name, shown(effectBytes), shown(mqttjsBytes)])
    }
  } finally {
    await broker.stop()
  }
  console.log(table(["scenario", "effect-mqtt msg/s", "MQTT.js msg/s", "ratio effect-mqtt / MQTT.js"], rows))
  console.log(`\n## Bytes the publisher sends per message (${fmt(WIRE_MESSAGES)} messages through a counting proxy)\n`)
  console.log(table(["scenario", "effect-mqtt", "MQTT.js"], wireRows))
  console.log("")
  exit()
}

/** Exits once stdout is flushed, whatever is still running (clients stopped by a cap). */
const exit = () => process.stdout.write("", () => process.exit(0))

main().catch((error) => {
  console.log(`mqtt5: failed: ${error instanceof Error ? error.stack : String(error)}`)
  process.exit(0)
})
