/**
 * A private Mosquitto for the benchmarks: its own generated config on a free port of 127.0.0.1, killed when
 * the process exits.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { sleep } from "./support.ts"

export interface Broker {
  readonly port: number
  readonly url: string
  readonly pid: number
  readonly stop: () => Promise<void>
}

const MOSQUITTO = process.env.MOSQUITTO ?? "/usr/sbin/mosquitto"

/** The first line of `mosquitto -h`, e.g. "mosquitto version 2.0.11". */
export const mosquittoVersion = (): string => {
  try {
    return execFileSync(MOSQUITTO, ["-h"], { encoding: "utf8" }).split("\n")[0]
  } catch (e) {
    // `mosquitto -h` exits with 3 after printing its usage
    const out = (e as { stdout?: string }).stdout
    return typeof out === "string" && out.length > 0 ? out.split("\n")[0] : "mosquitto"
  }
}

export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = Net.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      server.close(() => resolve(port))
    })
  })

const canConnect = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const socket = Net.connect({ host: "127.0.0.1", port })
    socket.once("connect", () => {
      socket.destroy()
      resolve(true)
    })
    socket.once("error", () => resolve(false))
  })

/**
 * Starts Mosquitto with limits that never drop a message during a run (with the default
 * `maxInflightMessages` of 0):
 * - `max_inflight_messages 0`: no limit on outgoing QoS 1/2 in flight (so QoS 0 is always "ready for flight"
 *   for MQTT 3.1.1 subscribers, and QoS 1/2 are not held back 20 at a time);
 * - `max_queued_messages 1000000` (or `maxQueuedMessages`; 0 is no limit) and `max_queued_bytes 0`: QoS 0 to a
 *   slow MQTT 5 subscriber and QoS 1/2 beyond the in-flight window are queued, not dropped.
 */
export const startBroker = async (
  options: {
    readonly maxInflightMessages?: number
    readonly maxQueuedMessages?: number
    readonly tcpNoDelay?: boolean
    /** more lines for the listener, e.g. `cafile`/`certfile`/`keyfile` for TLS */
    readonly listenerLines?: ReadonlyArray<string>
  } = {}
): Promise<Broker> => {
  const port = await freePort()
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-mqtt-bench-"))
  const conf = Path.join(dir, "mosquitto.conf")
  const lines = [
    `listener ${port} 127.0.0.1`,
    ...(options.listenerLines ?? []),
    "allow_anonymous true",
    "persistence false",
    `max_inflight_messages ${options.maxInflightMessages ?? 0}`,
    `max_queued_messages ${options.maxQueuedMessages ?? 1_000_000}`,
    "max_queued_bytes 0",
    `set_tcp_nodelay ${options.tcpNoDelay ?? process.env.BENCH_BROKER_NODELAY === "1"}`,
    "log_type error",
    "log_dest stderr"
  ]
  if (process.getuid?.() === 0) lines.push("user root")
  Fs.writeFileSync(conf, lines.join("\n") + "\n")
  const child: ChildProcess = spawn(MOSQUITTO, ["-c", conf], { stdio: ["ignore", "ignore", "pipe"] })
  let stderr = ""
  child.stderr?.on("data", (data: Buffer) => {
    stderr += data.toString()
  })
  let exited = false
  child.once("exit", () => {
    exited = true
  })
  const killOnExit = () => {
    if (!exited) child.kill("SIGKILL")
    Fs.rmSync(dir, { recursive: true, force: true })
  }
  process.once("exit", killOnExit)
  for (let i = 0; i < 100; i++) {
    if (exited) throw new Error(`mosquitto exited at start: ${stderr}`)
    if (await canConnect(port)) break
    if (i === 99) {
      child.kill("SIGKILL")
      throw new Error(`mosquitto did not listen on ${port}: ${stderr}`)
    }
    await sleep(50)
  }
  const stop = async () => {
    process.off("exit", killOnExit)
    if (!exited) {
      const done = new Promise<void>((resolve) => child.once("exit", () => resolve()))
      child.kill("SIGTERM")
      const timer = setTimeout(() => child.kill("SIGKILL"), 2000)
      await done
      clearTimeout(timer)
    }
    Fs.rmSync(dir, { recursive: true, force: true })
  }
  return { port, url: `mqtt://127.0.0.1:${port}`, pid: child.pid ?? 0, stop }
}
