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
 * "4"), BENCH_CLIENTS (default "effect,mqttjs"), BENCH_DIRECTIONS (default "send,receive"), BENCH_ROUTING (the
 * numbers of filters of the routing table, default "1,100,10000"; "" for none).
 *
 * Always exits with 0: it is a report.
 */
import { MqttClient } from "effect-mqtt"
import * as Effect from "effect/Effect"
import * as Stream from "effect/Stream"
import * as mqtt from "mqtt"
import { type ChildProcess, fork } from "node:child_process"
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

type Mode = "send" | "receive"
interface Job {
  readonly mode: Mode
  readonly n: number
  readonly version: 4 | 5
  /** routing: the number of filters `route/<i>/+/v` subscribed; the messages spread over them */
  readonly filters?: number
}

// ---------------------------------------------------------------------------------------------------------
// the peer
// ---------------------------------------------------------------------------------------------------------

const startPeer = async () => {
  const child: ChildProcess = fork(new URL("./peer.ts", import.meta.url), [], {
    execArgv: process.execArgv,
    stdio: ["ignore", "inherit", "inherit", "ipc"]
  })
  const listeners = new Set<(message: Record<string, number>) => void>()
  child.on("message", (message) => {
    for (const listener of listeners) listener(message as Record<string, number>)
  })
  const next = (key: string) =>
    new Promise<number>((resolve) => {
      const listener = (message: Record<string, number>) => {
        if (!(key in message)) return
        listeners.delete(listener)
        resolve(message[key])
      }
      listeners.add(listener)
    })
  const port = await next("port")
  return {
    url: `mqtt://127.0.0.1:${port}`,
    /** the job of the next connection */
    prepare: async (job: Job) => {
      const ready = next("ready")
      child.send(job)
      await ready
    },
    /** resolves once the peer has received `n` publishes (send mode) */
    received: () => next("received"),
    /** starts a routing job's messages */
    go: () => child.send({ go: 1 }),
    stop: () => child.kill()
  }
}

type Peer = Awaited<ReturnType<typeof startPeer>>

/**
 * CPU seconds of this process from `start()` to `end()`: from the first message to the last, not counting the
 * client's closing (a routing client's 10,000 unsubscriptions would otherwise weigh on every message).
 */
const cpuOf = async (run: (start: () => void, end: () => void) => Promise<void>): Promise<number> => {
  let from: NodeJS.CpuUsage | undefined
  let used: NodeJS.CpuUsage | undefined
  await run(() => {
    from = process.cpuUsage()
  }, () => {
    used ??= process.cpuUsage(from)
  })
  used ??= process.cpuUsage(from)
  return (used.user + used.system) / 1e6
}

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
// routing: the cost of the number of filters
// ---------------------------------------------------------------------------------------------------------

type Subscriber = "effect-streams" | "effect-messages" | "mqttjs"

const filtersOf = (n: number) => Array.from({ length: n }, (_, i) => `route/${i}/+/v`)

/** effect-mqtt: a `subscription()` stream per filter (each message routed to its stream), or all on `messages`. */
const effectRouting = (peer: Peer, job: Job, streams: boolean): Promise<number> =>
  cpuOf((start, end) =>
    Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const client = yield* MqttClient.make({ url: peer.url, protocolVersion: job.version })
      let resolve = () => {}
      const done = new Promise<void>((r) => (resolve = r))
      let count = 0
      const counter = (messages: ReadonlyArray<unknown>) =>
        Effect.sync(() => {
          count += messages.length
          if (count >= job.n) {
            end()
            resolve()
          }
        })
      const filters = filtersOf(job.filters!)
      if (streams) {
        yield* Effect.forEach(
          filters,
          (filter) =>
            Effect.flatMap(client.subscription(filter), (stream) =>
              Effect.forkScoped(Stream.runForEachArray(stream, counter))),
          { concurrency: 200, discard: true }
        )
      } else {
        for (let i = 0; i < filters.length; i += 500) {
          yield* client.subscribe(filters.slice(i, i + 500))
        }
        yield* Effect.forkScoped(Stream.runForEachArray(client.messages, counter))
      }
      start()
      peer.go()
      yield* Effect.promise(() =>
        done
      )
    })))
  )

/** MQTT.js: one `message` handler for all filters (no routing: the application would find the filter itself). */
const mqttjsRouting = (peer: Peer, job: Job): Promise<number> =>
  cpuOf(async (start, end) => {
    const client = mqtt.connect(peer.url, { protocolVersion: job.version, reconnectPeriod: 0 })
    await new Promise<void>((resolve, reject) => {
      client.once("connect", () => resolve())
      client.once("error", reject)
    })
    const filters = filtersOf(job.filters!)
    for (let i = 0; i < filters.length; i += 500) await client.subscribeAsync(filters.slice(i, i + 500), { qos: 0 })
    await new Promise<void>((resolve) => {
      let count = 0
      client.on("message", () => {
        if (++count === job.n) {
          end()
          resolve()
        }
      })
      start()
      peer.go()
    })
    await client.endAsync()
  })

const measureRouting = async (peer: Peer, subscriber: Subscriber, job: Job): Promise<Array<number>> => {
  const perMessage: Array<number> = []
  for (let i = 0; i <= RUNS; i++) {
    await peer.prepare(job)
    const seconds = subscriber === "mqttjs"
      ? await mqttjsRouting(peer, job)
      : await effectRouting(peer, job, subscriber === "effect-streams")
    if (i > 0) perMessage.push((1e6 * seconds) / job.n)
  }
  return perMessage
}

const ROUTING = envList("BENCH_ROUTING", "1,100,10000").map(Number).filter((n) => Number.isSafeInteger(n) && n > 0)

const routing = async (peer: Peer, show: (values: Array<number>) => string) => {
  const rows: Array<string> = []
  for (const filters of ROUTING) {
    const job: Job = { mode: "receive", n: N, version: 4, filters }
    const cells: Array<string> = []
    for (const subscriber of ["effect-streams", "effect-messages", "mqttjs"] as const) {
      process.stderr.write(`  routing: ${subscriber}, ${filters} filters...\n`)
      cells.push(show(await measureRouting(peer, subscriber, job)))
    }
    rows.push(`| ${filters.toLocaleString("en-US")} | ${cells.join(" | ")} |`)
  }
  return [
    "\n## Routing: receive, QoS 0, the messages spread over N filters `route/<i>/+/v` (MQTT 3.1.1)\n",
    "| filters | effect-mqtt, a subscription() stream per filter | effect-mqtt, the filters on `messages` | MQTT.js, one handler (no routing) |",
    "| ------- | ----------------------------------------------- | -------------------------------------- | --------------------------------- |",
    ...rows,
    "\nµs of CPU per message as above. A stream per filter routes each message to its stream through the topic " +
    "trie, whose lookup grows with the topic's levels, not with the number of filters."
  ].join("\n")
}

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
  if (ROUTING.length > 0) console.log(await routing(peer, show))
  peer.stop()
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error("cpu: failed:", e)
    process.exit(0)
  }
)
