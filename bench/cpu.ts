/**
 * Client CPU per message: effect-mqtt against MQTT.js, side by side, each sending and receiving through a peer
 * that is never the bottleneck (bench/peer.ts, a minimal MQTT server in a process of its own).
 *
 * Why not through Mosquitto: with a broker between them, a client that keeps up with the broker reads one
 * message per socket read (Mosquitto writes each packet with a system call of its own), and one that falls a
 * little behind reads hundreds; the CPU per message then swings fourfold between runs of the same code (both
 * modes are seen in bench/throughput.ts, for both clients). Here the peer writes 64 KB at a time and takes
 * whatever comes, so the figure is the client's own cost per message.
 *
 * For each client, direction and QoS: `BENCH_MESSAGES` (default 200,000) messages of 64 bytes; `send`
 * publishes them (QoS 0 in batches of 1,000, yielding between; QoS 1 with at most 1,000 outstanding) until the
 * peer has them all; `receive` subscribes and takes them from the message stream. CPU is this process's (user
 * and system), from the first message to the last; the median of `BENCH_RUNS` (default 5) runs after one
 * warm-up run. Environment: BENCH_MESSAGES, BENCH_RUNS, BENCH_QOS (default "0,1"), BENCH_PROTOCOLS (default
 * "4"), BENCH_CLIENTS (default "effect,mqttjs"), BENCH_DIRECTIONS (default "send,receive"). The cost of routing
 * (1 to 10,000 filters) is measured against the same peer by bench/scale.ts.
 *
 * Always exits with 0: it is a report.
 */
import { MqttClient } from "effect-mqtt"
import * as Effect from "effect/Effect"
import * as Stream from "effect/Stream"
import * as mqtt from "mqtt"
import { type Job, type Mode, type Peer, startPeer, usageOf } from "./peerControl.ts"
import { envInt, envList, median, nextTurn } from "./support.ts"

const N = envInt("BENCH_MESSAGES", 200_000)
const RUNS = envInt("BENCH_RUNS", 5)
const QOS_LEVELS = envList("BENCH_QOS", "0,1").map(Number).filter((q): q is 0 | 1 => q === 0 || q === 1)
const PROTOCOLS = envList("BENCH_PROTOCOLS", "4").map(Number).filter((v): v is 4 | 5 => v === 4 || v === 5)
const CLIENTS = envList("BENCH_CLIENTS", "effect,mqttjs")
const DIRECTIONS = envList("BENCH_DIRECTIONS", "send,receive").filter((d): d is Mode => d === "send" || d === "receive")
const PAYLOAD = Buffer.alloc(64, "x")
const BATCH = 1000
const WINDOW = 1000

/** CPU seconds of this process from the first message to the last (see `usageOf`). */
const cpuOf = (run: (start: () => void, end: () => void) => Promise<void>): Promise<number> =>
  usageOf(run).then((usage) => usage.cpuSeconds)

// ---------------------------------------------------------------------------------------------------------
// the clients
// ---------------------------------------------------------------------------------------------------------

const effectRun = (peer: Peer, job: Job, qos: 0 | 1): Promise<number> =>
  cpuOf((start, end) =>
    Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const client = yield* MqttClient.make({ url: peer.url, protocolVersion: job.version })
      if (job.mode === "send") {
        const received = peer.received()
        start()
        if (qos === 0) {
          for (let i = 0; i < job.n; i += BATCH) {
            for (let j = i; j < Math.min(job.n, i + BATCH); j++) yield* client.publish("bench/cpu", PAYLOAD)
            yield* Effect.promise(nextTurn)
          }
        } else {
          yield* Effect.forEach(
            Array.from({ length: job.n }, (_, i) => i),
            () => client.publish("bench/cpu", PAYLOAD, { qos }),
            { concurrency: WINDOW, discard: true }
          )
        }
        yield* Effect.promise(() => received)
        end()
      } else {
        start()
        yield* client.subscribe("bench/cpu", { qos })
        let count = 0
        yield* client.messages.pipe(
          Stream.takeUntil(() => ++count >= job.n),
          Stream.runDrain
        )
        end()
      }
    })))
  )

const mqttjsRun = (peer: Peer, job: Job, qos: 0 | 1): Promise<number> =>
  cpuOf(async (start, end) => {
    const client = mqtt.connect(peer.url, { protocolVersion: job.version, reconnectPeriod: 0 })
    await new Promise<void>((resolve, reject) => {
      client.once("connect", () => resolve())
      client.once("error", reject)
    })
    if (job.mode === "send") {
      const received = peer.received()
      start()
      if (qos === 0) {
        for (let i = 0; i < job.n; i += BATCH) {
          for (let j = i; j < Math.min(job.n, i + BATCH); j++) client.publish("bench/cpu", PAYLOAD, { qos })
          await nextTurn()
        }
      } else {
        await new Promise<void>((resolve) => {
          let issued = 0
          let done = 0
          const issue = () => {
            issued++
            client.publish("bench/cpu", PAYLOAD, { qos }, () => {
              if (++done === job.n) resolve()
              else if (issued < job.n) issue()
            })
          }
          for (let i = 0; i < Math.min(WINDOW, job.n); i++) issue()
        })
      }
      await received
      end()
    } else {
      start()
      await new Promise<void>((resolve) => {
        let count = 0
        client.on("message", () => {
          if (++count === job.n) resolve()
        })
        client.subscribe("bench/cpu", { qos })
      })
      end()
    }
    await client.endAsync()
  })

// ---------------------------------------------------------------------------------------------------------
// the report
// ---------------------------------------------------------------------------------------------------------

const measure = async (peer: Peer, client: string, job: Job, qos: 0 | 1): Promise<Array<number>> => {
  const run = client === "effect" ? effectRun : mqttjsRun
  const perMessage: Array<number> = []
  for (let i = 0; i <= RUNS; i++) {
    await peer.prepare(job)
    const seconds = await run(peer, job, qos)
    if (i > 0) perMessage.push((1e6 * seconds) / job.n)
  }
  return perMessage
}

const show = (values: Array<number> | undefined) =>
  values === undefined ?
    "-" :
    `${median(values).toFixed(2)} (${Math.min(...values).toFixed(2)}–${Math.max(...values).toFixed(2)})`

const main = async () => {
  const peer = await startPeer()
  console.log("# Client CPU per message: effect-mqtt vs MQTT.js\n")
  console.log(
    `node ${process.version}; ${N.toLocaleString("en-US")} messages of 64 bytes per run, to and from a peer ` +
      `process that is never the bottleneck (bench/peer.ts); µs of this process's CPU (user + system) per ` +
      `message, median of ${RUNS} runs after a warm-up (range in brackets); lower is better.\n`
  )
  const rows: Array<string> = []
  for (const version of PROTOCOLS) {
    for (const mode of DIRECTIONS) {
      for (const qos of QOS_LEVELS) {
        const job: Job = { mode, n: N, version }
        const cells: Record<string, Array<number>> = {}
        for (const client of CLIENTS) {
          process.stderr.write(`  ${client} ${mode} QoS ${qos} (MQTT ${version === 5 ? "5" : "3.1.1"})...\n`)
          cells[client] = await measure(peer, client, job, qos)
        }
        const ratio = cells.effect !== undefined && cells.mqttjs !== undefined
          ? (median(cells.effect) / median(cells.mqttjs)).toFixed(2) + "x"
          : "-"
        rows.push(
          `| ${version === 5 ? "5" : "3.1.1"} | ${mode} | ${qos} | ${show(cells.effect)} | ${
            show(cells.mqttjs)
          } | ${ratio} |`
        )
      }
    }
  }
  console.log("| MQTT | direction | QoS | effect-mqtt µs/msg | MQTT.js µs/msg | effect-mqtt / MQTT.js |")
  console.log("| ---- | --------- | --- | ------------------ | -------------- | --------------------- |")
  for (const row of rows) console.log(row)
  peer.stop()
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error("cpu: failed:", e)
    process.exit(0)
  }
)
