/**
 * Throughput: effect-mqtt against MQTT.js, side by side, on a private Mosquitto.
 *
 * For each client and QoS: one publisher and one subscriber in this process, `BENCH_MESSAGES` (default
 * 100,000) messages of 64 bytes on a fresh topic; the rate is messages received per second from the first
 * publish until the subscriber has received the last one. Publishing keeps at most `BENCH_WINDOW` (default
 * 1,000) QoS 1/2 publishes outstanding; QoS 0 publishes in batches of 1,000 and yields to the event loop
 * between batches. Then a burst: all QoS 2 publishes issued at once.
 *
 * Environment: BENCH_MESSAGES, BENCH_WINDOW, BENCH_PROTOCOLS (default "4"; "4,5" adds MQTT 5),
 * BENCH_CAP_SECONDS (default 300: the most one measurement may take), BENCH_BURST_CAP_SECONDS (default 120:
 * the most the burst may take, for each client), BENCH_SKIP_BURST=1, and for profiling BENCH_QOS (default "0,1,2") and
 * BENCH_CLIENTS (default "effect,mqttjs"), BENCH_RUNS (default 3: the median is shown), BENCH_BROKER_MAX_INFLIGHT
 * (mosquitto's max_inflight_messages, default 0: no limit; it is also the Receive Maximum the broker announces to
 * MQTT 5 clients, so `BENCH_PROTOCOLS=5 BENCH_BROKER_MAX_INFLIGHT=1000` shows a burst under a broker-set quota),
 * BENCH_BROKER_NODELAY=1 (mosquitto's set_tcp_nodelay; Debian's default, false, is used otherwise).
 *
 * The CPU column (this process: the publisher and the subscriber) swings between runs of the same code: a client
 * that keeps up with Mosquitto reads one message per socket read (Mosquitto writes each packet with a system call
 * of its own), one that falls a little behind reads hundreds per read, at a fifth of the cost per message; MQTT.js
 * stays in the first mode. bench/cpu.ts measures the client's own cost per message against a peer that is never
 * the bottleneck.
 *
 * Always exits with 0: it is a report.
 */
import { performance } from "node:perf_hooks"
import { type Broker, mosquittoVersion, startBroker } from "./broker.ts"
import * as Bench from "./support.ts"

const BURST_CAP_MS = Bench.envInt("BENCH_BURST_CAP_SECONDS", 120) * 1000
/** mosquitto's max_inflight_messages: 0 (no limit) unless given; also the MQTT 5 Receive Maximum it announces */
const BROKER_MAX_INFLIGHT = Bench.envInt("BENCH_BROKER_MAX_INFLIGHT", 0)
const PROTOCOLS = Bench.envList("BENCH_PROTOCOLS", "4").map(Number).filter((v): v is 4 | 5 => v === 4 || v === 5)
const QOS_LEVELS = Bench.envList("BENCH_QOS", "0,1,2").map(Number)
  .filter((v): v is Bench.QoS => v === 0 || v === 1 || v === 2)

interface Result extends Bench.RunResult {
  /** CPU seconds used during the run by this process and by the broker */
  readonly cpu?: { readonly node: number; readonly broker: number; readonly wall: number }
}

// ---------------------------------------------------------------------------------------------------------
// the runs
// ---------------------------------------------------------------------------------------------------------

let brokerPid = 0

const withCpu = async (run: () => Promise<Result>): Promise<Result> => {
  const node = process.cpuUsage()
  const broker = Bench.procCpu(brokerPid)
  const start = performance.now()
  const result = await run()
  const used = process.cpuUsage(node)
  return {
    ...result,
    cpu: {
      node: (used.user + used.system) / 1e6,
      broker: Bench.procCpu(brokerPid) - broker,
      wall: (performance.now() - start) / 1000
    }
  }
}

type Mode = "window" | "burst"
type Run = (
  url: string,
  protocolVersion: 4 | 5,
  qos: Bench.QoS,
  n: number,
  mode: Mode,
  capMs: number
) => Promise<Result>

/** One run of one client: its own publisher and subscriber on a fresh topic. */
const spec = (client: string, ...[url, protocolVersion, qos, n, mode, capMs]: Parameters<Run>): Bench.RunSpec => {
  const topic = Bench.freshTopic("bench", `${client}-q${qos}`)
  return { url, protocolVersion, filter: topic, topicOf: () => topic, qos, n, mode, capMs }
}

const effectRun: Run = (...args) =>
  Bench.CLIENTS.includes("effect")
    // the benchmark's broker has no in-flight limit (max_inflight_messages 0), so the publisher may keep as many
    // in flight as MQTT.js does; the client's 3.1.1 default of 20 is for brokers with Mosquitto's default limit
    ? withCpu(() => Bench.runEffect({ ...spec("effect", ...args), publisher: { maxInflight: 1000 } }))
    : Promise.resolve(Bench.skipped)

const mqttjsRun: Run = (...args) =>
  Bench.CLIENTS.includes("mqttjs")
    ? withCpu(() => Bench.runMqttjs(spec("mqttjs", ...args)))
    : Promise.resolve(Bench.skipped)

// ---------------------------------------------------------------------------------------------------------
// report
// ---------------------------------------------------------------------------------------------------------

const fmtSeconds = (ms: number) => (ms / 1000).toFixed(2) + " s"

const firstLine = (text: string) => {
  const line = text.split("\n")[0]
  return line.length > 160 ? line.slice(0, 157) + "..." : line
}

const describe = (r: Result, n: number): string => {
  const rate = Bench.fmt(Bench.rateOf(r))
  if (r.error !== undefined && r.received === 0) return `error: ${r.error.split("\n")[0]}`
  if (r.received < n) {
    const lost = n - r.received
    return `${rate} (${Bench.fmt(lost)} of ${Bench.fmt(n)} not received${
      r.finished ? "" : r.sent < n ? `, ${Bench.fmt(r.sent)} sent` : ""
    }${r.error === undefined ? "" : `; publisher: ${firstLine(r.error)}`})`
  }
  return rate
}

/** The broker's CPU time over the run's wall time: near 100% means the broker is the bottleneck. */
const brokerBusy = (r: Result) =>
  r.cpu === undefined || r.cpu.wall === 0 ? "-" : `${Math.round((100 * r.cpu.broker) / r.cpu.wall)}%`

/** The client's CPU seconds (and µs per message received) / the broker's CPU seconds. */
const cpuOf = (r: Result) =>
  r.cpu === undefined ?
    "-" :
    `${r.cpu.node.toFixed(2)} (${r.received === 0 ? "-" : (1e6 * r.cpu.node / r.received).toFixed(1)} µs/msg) / ${
      r.cpu.broker.toFixed(1)
    }`

const measure = (broker: Broker, protocolVersion: 4 | 5, qos: Bench.QoS) =>
  Bench.sideBySide(
    (client, n) =>
      (client === "effect" ? effectRun : mqttjsRun)(broker.url, protocolVersion, qos, n, "window", Bench.CAP_MS)
  )

const protocolName = (v: 4 | 5) => v === 4 ? "3.1.1" : "5.0"

interface Floor {
  readonly name: string
  readonly pass: boolean
  readonly detail: string
}

/** The table of one protocol version, a row per QoS; the floors of the first version. */
const protocolTable = async (broker: Broker, protocolVersion: 4 | 5, floors: Array<Floor>) => {
  const rows: Array<Array<string>> = []
  for (const qos of QOS_LEVELS) {
    process.stderr.write(`  measuring MQTT ${protocolName(protocolVersion)} QoS ${qos}...\n`)
    const runs = await measure(broker, protocolVersion, qos)
    const effect = Bench.medianRun(runs.effect)
    const mqttjs = Bench.medianRun(runs.mqttjs)
    const ratio = Bench.ratioOf(effect.result, mqttjs.result)
    const withRange = (m: { result: Result; range: string }) =>
      describe(m.result, Bench.MESSAGES) + (m.range === "" ? "" : ` (${m.range})`)
    rows.push([
      String(qos),
      withRange(effect),
      withRange(mqttjs),
      Bench.showRatio(ratio),
      cpuOf(effect.result),
      cpuOf(mqttjs.result)
    ])
    if (protocolVersion === PROTOCOLS[0]) {
      const floor = qos === 2 ? 2 : 0.8
      const complete = runs.effect.every((r) => r.received === Bench.MESSAGES)
      floors.push({
        name: `QoS ${qos} (MQTT ${
          protocolName(protocolVersion)
        }, same ${Bench.WINDOW}-publish window): effect-mqtt >= ${floor}x MQTT.js`,
        pass: Number.isFinite(ratio) && ratio >= floor && complete,
        detail: `${Bench.showRatio(ratio)}${complete ? "" : ", effect-mqtt lost messages"}`
      })
    }
  }
  console.log(`## MQTT ${protocolName(protocolVersion)}\n`)
  console.log(
    Bench.table([
      "QoS",
      "effect-mqtt msg/s",
      "MQTT.js msg/s",
      "ratio effect-mqtt / MQTT.js",
      "CPU s effect-mqtt",
      "CPU s MQTT.js"
    ], rows)
  )
  console.log("")
}

/** Every QoS 2 publish issued at once, each client on a fresh broker; its floors. */
const burst = async (broker: Broker, floors: Array<Floor>) => {
  const protocolVersion = PROTOCOLS[0] ?? 4
  process.stderr.write(`  measuring the QoS 2 burst...\n`)
  // each on a fresh broker: what a capped run leaves behind must not slow the next one down
  const onFreshBroker = async (run: Run): Promise<Result> => {
    const fresh = await startBroker({ maxInflightMessages: BROKER_MAX_INFLIGHT })
    brokerPid = fresh.pid
    try {
      Bench.gc()
      return await run(fresh.url, protocolVersion, 2, Bench.MESSAGES, "burst", BURST_CAP_MS)
    } finally {
      brokerPid = broker.pid
      await fresh.stop()
    }
  }
  const effect = await onFreshBroker(effectRun)
  const mqttjs = await onFreshBroker(mqttjsRun)
  const line = (r: Result, cap: number) =>
    r.error === "skipped" ?
      ["skipped", "", "", "", "", ""] :
      r.finished && r.received === Bench.MESSAGES ?
      ["completed", fmtSeconds(r.publishMs), fmtSeconds(r.ms), Bench.fmt(Bench.rateOf(r)), cpuOf(r), brokerBusy(r)] :
      [
        r.error !== undefined && r.sent === 0 ?
          `error: ${r.error.split("\n")[0]}` :
          `did not finish in ${fmtSeconds(Math.min(cap, Math.max(r.ms, r.publishMs)))}`,
        `${Bench.fmt(r.sent)} completed`,
        `${Bench.fmt(r.received)} received`,
        Bench.fmt(Bench.rateOf(r)),
        cpuOf(r),
        brokerBusy(r)
      ]
  console.log(
    `## ${Bench.fmt(Bench.MESSAGES)} QoS 2 publishes issued at once (MQTT ${protocolName(protocolVersion)})\n`
  )
  console.log(
    Bench.table(["client", "outcome", "publishes completed", "messages received", "msg/s", "CPU s", "broker busy"], [
      [`effect-mqtt (cap ${BURST_CAP_MS / 1000} s)`, ...line(effect, BURST_CAP_MS)],
      [`MQTT.js (cap ${BURST_CAP_MS / 1000} s)`, ...line(mqttjs, BURST_CAP_MS)]
    ])
  )
  console.log("")
  const completed = effect.finished && effect.received === Bench.MESSAGES
  floors.push({
    name: `QoS 2 burst of ${Bench.fmt(Bench.MESSAGES)}: effect-mqtt completes`,
    pass: completed,
    detail: completed ? fmtSeconds(effect.ms) : "did not complete"
  })
  // the same 100,000 QoS 2 messages, each client given them all at once and left to its own flow control
  // (MQTT.js's reference figure in ENGINEERING.md was measured this way); MQTT.js's rate counts what it
  // delivered before the cap
  const burstRatio = Bench.ratioOf(effect, mqttjs)
  floors.push({
    name: `QoS 2, all ${Bench.fmt(Bench.MESSAGES)} publishes at once: effect-mqtt >= 2x MQTT.js`,
    pass: Number.isFinite(burstRatio) && burstRatio >= 2 && completed,
    detail: Bench.showRatio(burstRatio)
  })
}

const main = async () => {
  Bench.watchdog("throughput", 60)
  const broker = await startBroker({ maxInflightMessages: BROKER_MAX_INFLIGHT })
  brokerPid = broker.pid
  console.log(
    `# Throughput: effect-mqtt vs MQTT.js ${Bench.packageVersion("mqtt")}\n\n` +
      `node ${process.version}, ${mosquittoVersion()} on 127.0.0.1:${broker.port}; one publisher and one ` +
      `subscriber in this process; ${Bench.fmt(Bench.MESSAGES)} messages of ${Bench.PAYLOAD.length} bytes; ` +
      `at most ${Bench.WINDOW} QoS 1/2 publishes outstanding (QoS 0: batches of ${Bench.BATCH}, yielding between); ` +
      `warm-up ${Bench.WARMUP}; median of ${Bench.RUNS} runs (range in brackets). CPU: seconds used by this process / by ` +
      `the broker during the run.\n`
  )
  const floors: Array<Floor> = []
  try {
    for (const protocolVersion of PROTOCOLS) await protocolTable(broker, protocolVersion, floors)
    if (process.env.BENCH_SKIP_BURST !== "1") await burst(broker, floors)
  } finally {
    await broker.stop()
  }
  console.log("## Floors\n")
  console.log(
    Bench.table(["floor", "measured", "result"], floors.map((f) => [f.name, f.detail, f.pass ? "PASS" : "FAIL"]))
  )
  console.log("")
  Bench.exit()
}

main().catch((error) => {
  console.log(`throughput: failed: ${error instanceof Error ? error.stack : String(error)}`)
  process.exit(0)
})
