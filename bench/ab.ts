/**
 * A/B of the receive path: two checkouts of effect-mqtt in one process (this one and another, e.g. a
 * `git worktree` of the commit before a change, with `node_modules` linked), each a publisher and a subscriber on
 * a Mosquitto of its own run (`set_tcp_nodelay true`), publishing in turn at 500 messages/s each (QoS 0, 64 B), so
 * that both meet the same machine at the same moments. For each: the receive stage (the subscriber's socket read,
 * `Socket#push`, to the consumer) at p10/p50/p90/p99, and end to end at p50/p99, in µs, after a warm-up.
 *
 * Run: `node --conditions=effect-mqtt-source bench/ab.ts <other checkout>`, e.g.
 * `git worktree add /tmp/base HEAD~1 && ln -s $PWD/node_modules /tmp/base/node_modules` first. Environment:
 * BENCH_AB_WARMUP_MS (default 10000), BENCH_AB_MS (default 20000), BENCH_AB_RUNS (default 3, one process each,
 * alternating which checkout is set up first).
 */
import * as Effect from "effect/Effect"
import * as Stream from "effect/Stream"
import { Buffer } from "node:buffer"
import { execFileSync } from "node:child_process"
import * as Net from "node:net"
import * as Path from "node:path"
import { performance } from "node:perf_hooks"
import { fileURLToPath, pathToFileURL } from "node:url"
import { startBroker } from "./broker.ts"
import { stampedPublishes } from "./raw.ts"
import { envInt, sleep } from "./support.ts"

const WARMUP_MS = envInt("BENCH_AB_WARMUP_MS", 10_000)
const MEASURED_MS = envInt("BENCH_AB_MS", 20_000)
const RUNS = envInt("BENCH_AB_RUNS", 3)
const MARK = 0xab
const here = Path.resolve(Path.dirname(fileURLToPath(import.meta.url)), "..")

interface Samples {
  readonly receive: Array<number>
  readonly endToEnd: Array<number>
}

const child = async (url: string, first: string, second: string) => {
  const reads = new Map<number, number>()
  let measuring = false
  const proto = Net.Socket.prototype as unknown as Record<string, (...args: Array<unknown>) => unknown>
  const push = proto.push
  proto.push = function(this: unknown, chunk, ...rest) {
    if (measuring && chunk instanceof Uint8Array) {
      const now = performance.now()
      stampedPublishes(chunk, MARK, (made) => reads.set(made, now))
    }
    return push.call(this, chunk, ...rest)
  }
  const samples = new Map<string, Samples>()
  const setup = (dir: string) =>
    Effect.gen(function*() {
      const { MqttClient } = (yield* Effect.promise(() =>
        import(pathToFileURL(Path.join(dir, "src/index.ts")).href)
      )) as typeof import("effect-mqtt")
      const own: Samples = { receive: [], endToEnd: [] }
      samples.set(dir, own)
      const topic = `ab/${process.pid}/${samples.size}`
      const sub = yield* MqttClient.make({ url })
      yield* sub.subscribe(topic, { qos: 0 })
      yield* Effect.forkScoped(
        Stream.runForEachArray(sub.messages, (messages) =>
          Effect.sync(() => {
            if (!measuring) {
              return
            }
            const now = performance.now()
            for (const m of messages) {
              const made = Buffer.from(m.payload.buffer, m.payload.byteOffset, m.payload.byteLength).readDoubleLE(0)
              const read = reads.get(made)
              reads.delete(made)
              if (read === undefined) {
                continue
              }
              own.receive.push(now - read)
              own.endToEnd.push(now - made)
            }
          }))
      )
      const pub = yield* MqttClient.make({ url })
      return (payload: Buffer) =>
        Effect.runFork(pub.publishAccepted(topic, payload, { qos: 0 }))
    })
  await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const publishers = [yield* setup(first), yield* setup(second)]
    yield* Effect.promise(async () => {
      const start = performance.now()
      for (let n = 0; performance.now() - start < WARMUP_MS + MEASURED_MS; n++) {
        measuring = performance.now() - start > WARMUP_MS
        const payload = Buffer.alloc(64)
        payload[8] = MARK
        payload.writeDoubleLE(performance.now(), 0)
        publishers[n % 2](payload)
        await sleep(1)
      }
      await sleep(300)
      measuring = false
    })
  })))
  const at = (xs: Array<number>, p: number) => {
    const sorted = [...xs].sort((a, b) => a - b)
    return (sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] * 1000).toFixed(1)
  }
  for (const dir of [Path.resolve(here), Path.resolve(first === here ? second : first)]) {
    const s = samples.get(dir)!
    const name = dir === here ? "this checkout" : dir
    console.log(
      `| ${name} | ${s.receive.length} | ${[0.1, 0.5, 0.9, 0.99].map((p) => at(s.receive, p)).join(" / ")} | ` +
        `${at(s.endToEnd, 0.5)} / ${at(s.endToEnd, 0.99)} |`
    )
  }
  process.exit(0)
}

const main = async (other: string) => {
  const broker = await startBroker({ tcpNoDelay: true })
  try {
    console.log(
      `# Receive A/B: two checkouts in one process, 500 msg/s each, QoS 0, measured ${MEASURED_MS / 1000} s ` +
        `after ${WARMUP_MS / 1000} s\n`
    )
    console.log("| checkout | messages | receive p10 / p50 / p90 / p99 µs | end to end p50 / p99 µs |")
    console.log("| --- | --- | --- | --- |")
    for (let run = 0; run < RUNS; run++) {
      const [first, second] = run % 2 === 0 ? [here, other] : [other, here]
      const out = execFileSync(process.execPath, [
        ...process.execArgv,
        fileURLToPath(import.meta.url),
        "child",
        broker.url,
        first,
        second
      ], { stdio: ["ignore", "pipe", "inherit"] })
      process.stdout.write(out.toString())
    }
  } finally {
    await broker.stop()
  }
}

const [role, ...args] = process.argv.slice(2)
if (role === "child") await child(args[0], Path.resolve(args[1]), Path.resolve(args[2]))
else if (role !== undefined) await main(Path.resolve(role))
else {
  process.stderr.write("usage: node --conditions=effect-mqtt-source bench/ab.ts <other checkout>\n")
  process.exit(2)
}
