/**
 * Throughput over TLS: effect-mqtt against MQTT.js, side by side, on a private Mosquitto with a TLS listener
 * (certificates made by openssl for this run; the broker's certificate is verified, no client certificate).
 *
 * For each client and QoS (0 and 1): one publisher and one subscriber in this process, `BENCH_MESSAGES`
 * (default 100,000) messages of 64 bytes on a fresh topic; the rate is messages received per second from the
 * first publish until the subscriber has received the last one. QoS 0 publishes in batches of 1,000 and yields
 * to the event loop between batches; QoS 1 keeps at most `BENCH_WINDOW` (default 1,000) publishes outstanding.
 * A warm-up run of each client comes first, then `BENCH_RUNS` (default 3) runs of each, alternating; the
 * median is shown with the range.
 *
 * Environment: BENCH_MESSAGES, BENCH_WINDOW, BENCH_RUNS, BENCH_CAP_SECONDS (default 300: the most one
 * measurement may take), MOSQUITTO (default /usr/sbin/mosquitto).
 *
 * Always exits with 0: it is a report.
 */
import { Buffer } from "node:buffer"
import * as Fs from "node:fs"
import * as Tls from "node:tls"
import { type Certs, makeCerts } from "../test/support/certs.ts"
import { mosquittoVersion, startBroker } from "./broker.ts"
import * as Bench from "./support.ts"

/** Mosquitto with only a TLS listener, and limits that never drop a message during a run. */
const startTlsBroker = (certs: Certs) =>
  startBroker({
    listenerLines: [`cafile ${certs.ca.cert}`, `certfile ${certs.server.cert}`, `keyfile ${certs.server.key}`]
  })

/** One run of one client over TLS, MQTT 3.1.1: its own publisher and subscriber on a fresh topic. */
const run = (
  client: "effect" | "mqttjs",
  url: string,
  certs: Certs,
  qos: 0 | 1,
  n: number
): Promise<Bench.RunResult> => {
  const topic = Bench.freshTopic("bench-tls", `${client}-q${qos}`)
  const spec: Bench.RunSpec = {
    url,
    protocolVersion: 4,
    filter: topic,
    topicOf: () => topic,
    qos,
    n
  }
  if (client === "effect") {
    const tls = { tls: { caFile: certs.ca.cert } }
    // the broker has no in-flight limit
    return Bench.runEffect({ ...spec, subscriber: tls, publisher: { ...tls, maxInflight: 1000 } })
  }
  const ca = Fs.readFileSync(certs.ca.cert)
  return Bench.runMqttjs({ ...spec, subscriber: { ca }, publisher: { ca } })
}

const show = (m: { result: Bench.RunResult; range: string }): string => {
  const r = m.result
  if (r.error !== undefined && r.received === 0) return `error: ${r.error.split("\n")[0]}`
  const missing = Bench.MESSAGES - r.received
  return Bench.fmt(Bench.rateOf(r)) + (m.range === "" ? "" : ` (${m.range})`) +
    (missing > 0 ? ` (${Bench.fmt(missing)} of ${Bench.fmt(Bench.MESSAGES)} not received)` : "")
}

/** The negotiated TLS version and cipher. */
const tlsVersion = (port: number, ca: Buffer) =>
  new Promise<string>((resolve) => {
    const socket = Tls.connect({ host: "localhost", port, ca }, () => {
      resolve(`${socket.getProtocol()} ${socket.getCipher().name}`)
      socket.destroy()
    })
    socket.once("error", (e) => resolve(`unknown (${e.message})`))
  })

const main = async () => {
  const certs = makeCerts()
  const broker = await startTlsBroker(certs)
  const url = `mqtts://localhost:${broker.port}`
  const negotiated = await tlsVersion(broker.port, Fs.readFileSync(certs.ca.cert))
  console.log(
    `# Throughput over TLS: effect-mqtt vs MQTT.js ${Bench.packageVersion("mqtt")}\n\n` +
      `node ${process.version}, ${mosquittoVersion()}, TLS listener on localhost:${broker.port} (${negotiated}, ` +
      `the broker's certificate verified against a test CA, no client certificate); MQTT 3.1.1; one publisher ` +
      `and one subscriber in this process; ${Bench.fmt(Bench.MESSAGES)} messages of ${Bench.PAYLOAD.length} ` +
      `bytes; at most ${Bench.WINDOW} QoS 1 publishes outstanding (QoS 0: batches of ${Bench.BATCH}, yielding ` +
      `between); warm-up ${Bench.WARMUP}; median of ${Bench.RUNS} runs (range in brackets).\n`
  )
  const rows: Array<Array<string>> = []
  try {
    for (const qos of [0, 1] as const) {
      process.stderr.write(`  measuring QoS ${qos} over TLS...\n`)
      const runs = await Bench.sideBySide((client, n) => run(client, url, certs, qos, n))
      const e = Bench.medianRun(runs.effect)
      const m = Bench.medianRun(runs.mqttjs)
      rows.push([`${qos} over TLS`, show(e), show(m), Bench.showRatio(Bench.ratioOf(e.result, m.result))])
    }
  } finally {
    await broker.stop()
    certs.dispose()
  }
  console.log(Bench.table(["QoS", "effect-mqtt msg/s", "MQTT.js msg/s", "effect-mqtt / MQTT.js"], rows))
}

main().catch((error) => {
  console.log(`tls benchmark failed: ${error instanceof Error ? error.stack : String(error)}`)
}).finally(() => process.exit(0))
