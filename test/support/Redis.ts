/**
 * A private Redis server per test: `redis-server` on a free port of 127.0.0.1, with no persistence (`--save ""`,
 * `--appendonly no`), so that a test can stop it (the store goes away) and start it again on the same port.
 * Never the shared Redis on 6379.
 *
 * ```ts
 * const redis = await startRedis()
 * await redis.stop()   // SIGKILL: gone at once, as a crashed server
 * await redis.start()  // the same port, empty
 * await redis.dispose()
 * ```
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"

const INSTALL_HINT = "install it with `apt-get install -y redis-server` (Debian)"
const READY_TIMEOUT_MS = 10_000

const findRedisServer = (): string => {
  for (const candidate of ["/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"]) {
    if (Fs.existsSync(candidate)) return candidate
  }
  try {
    const found = execFileSync("sh", ["-c", "command -v redis-server"], { encoding: "utf8", stdio: "pipe" }).trim()
    if (found !== "") return found
  } catch {
    // not on PATH
  }
  throw new Error(`redis-server is required for the Redis store tests: ${INSTALL_HINT}`)
}

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = Net.createServer()
    server.unref()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      server.close(() => port > 0 ? resolve(port) : reject(new Error("could not read the free port")))
    })
  })

/** Sends PING and resolves with whether the answer is PONG. */
const ping = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const socket = Net.connect({ port, host: "127.0.0.1" })
    const done = (ok: boolean) => {
      clearTimeout(timer)
      socket.removeAllListeners()
      socket.on("error", () => {})
      socket.destroy()
      resolve(ok)
    }
    const timer = setTimeout(() => done(false), 250)
    socket.once("connect", () => socket.write("PING\r\n"))
    socket.once("data", (data) => done(data.toString().startsWith("+PONG")))
    socket.once("error", () => done(false))
  })

const children = new Set<ChildProcess>()
process.once("exit", () => {
  for (const child of children) child.kill("SIGKILL")
})

export interface RedisHandle {
  readonly port: number
  /** `redis://127.0.0.1:<port>` */
  readonly url: string
  /** Whether the server process runs. */
  readonly running: boolean
  /** Kills the server (SIGKILL: its clients see the connection drop) and waits until it has exited. */
  stop(): Promise<void>
  /** Starts it again on the same port (empty: it persists nothing) and waits until it answers PING. */
  start(): Promise<void>
  /** The server's output, for error messages. */
  logs(): string
  /** Stops it and removes its directory. */
  dispose(): Promise<void>
}

/** Starts a private `redis-server` and resolves once it answers PING. */
export const startRedis = async (): Promise<RedisHandle> => {
  const bin = findRedisServer()
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-mqtt-redis-"))
  let port = await freePort()
  let log = ""
  let child: ChildProcess | undefined
  let exited: Promise<void> = Promise.resolve()

  const start = async () => {
    const process_ = spawn(
      bin,
      ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir],
      { stdio: ["ignore", "pipe", "pipe"] }
    )
    children.add(process_)
    child = process_
    exited = new Promise((resolve) =>
      process_.once("exit", () => {
        children.delete(process_)
        resolve()
      })
    )
    process_.stdout!.setEncoding("utf8").on("data", (chunk: string) => (log = (log + chunk).slice(-20_000)))
    process_.stderr!.setEncoding("utf8").on("data", (chunk: string) => (log = (log + chunk).slice(-20_000)))
    const deadline = Date.now() + READY_TIMEOUT_MS
    while (!(await ping(port))) {
      if (process_.exitCode !== null || Date.now() > deadline) {
        throw new Error(`redis-server did not start on 127.0.0.1:${port}. Output:\n${log}`)
      }
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }

  const stop = async () => {
    if (child !== undefined && child.exitCode === null && child.signalCode === null) child.kill("SIGKILL")
    await exited
  }

  // A port picked by us can be taken by someone else between `freePort` and redis-server's bind: pick another
  // (only for the first start: a restart keeps the port its clients know)
  for (let attempt = 1;; attempt++) {
    try {
      await start()
      break
    } catch (error) {
      if (!log.includes("Address already in use") || attempt >= 3) throw error
      log += `[port ${port} was taken, retrying on another port]\n`
      port = await freePort()
    }
  }
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    get running() {
      return child !== undefined && child.exitCode === null && child.signalCode === null
    },
    stop,
    start,
    logs: () => log,
    dispose: async () => {
      await stop()
      Fs.rmSync(dir, { recursive: true, force: true })
    }
  }
}
