/**
 * A private Mosquitto broker per test file, and small wrappers around `mosquitto_pub` / `mosquitto_sub`.
 *
 * Never use the shared broker on 1883: each test file starts its own process on a free port, so it can stop,
 * kill, freeze and restart it without disturbing anyone else.
 *
 * ```ts
 * let broker: MosquittoHandle
 * beforeAll(async () => { broker = await startMosquitto() })
 * afterAll(() => broker.dispose())
 * ```
 *
 * or, inside a scoped effect: `const broker = yield* mosquitto()`.
 */
import { Effect } from "effect"
import type { Scope } from "effect"
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"

const INSTALL_HINT = "install it with `apt-get install -y mosquitto mosquitto-clients` (Debian)"
const READY_TIMEOUT_MS = 10_000
const STOP_TIMEOUT_MS = 5_000
const LOG_LINES_KEPT = 200

// ---------------------------------------------------------------------------------------------------------------
// Finding the binaries
// ---------------------------------------------------------------------------------------------------------------

const binaries = new Map<string, string | undefined>()

const findBinary = (name: string): string | undefined => {
  if (binaries.has(name)) return binaries.get(name)
  let found: string | undefined
  for (const dir of ["/usr/sbin", "/usr/bin"]) {
    const candidate = Path.join(dir, name)
    if (Fs.existsSync(candidate)) {
      found = candidate
      break
    }
  }
  if (found === undefined) {
    try {
      const out = execFileSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8", stdio: "pipe" }).trim()
      if (out !== "") found = out
    } catch {
      // not on PATH
    }
  }
  binaries.set(name, found)
  return found
}

/** Throws the install hint when the `mosquitto` broker is not installed. */
export const requireMosquitto = (): string => {
  const bin = findBinary("mosquitto")
  if (bin === undefined) throw new Error(`Mosquitto is required for the integration tests: ${INSTALL_HINT}`)
  return bin
}

/** Throws the install hint when `mosquitto_pub` or `mosquitto_sub` is not installed. */
export const requireMosquittoClients = (): void => {
  if (findBinary("mosquitto_pub") === undefined || findBinary("mosquitto_sub") === undefined) {
    throw new Error(
      `mosquitto_pub and mosquitto_sub (Mosquitto clients) are required for the integration tests: ${INSTALL_HINT}`
    )
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------------------------

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** A port that was free a moment ago on 127.0.0.1 (the OS picks it; there is a small race, retried on start). */
export const freePort = (): Promise<number> =>
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

const canConnect = (port: number, timeoutMs = 250): Promise<boolean> =>
  new Promise((resolve) => {
    const socket = Net.connect({ port, host: "127.0.0.1" })
    const done = (ok: boolean) => {
      clearTimeout(timer)
      socket.removeAllListeners()
      socket.on("error", () => {})
      socket.destroy()
      resolve(ok)
    }
    const timer = setTimeout(() => done(false), timeoutMs)
    socket.once("connect", () => done(true))
    socket.once("error", () => done(false))
  })

/** Calls `onLine` for each complete line of a text stream. */
const lineSplitter = (onLine: (line: string) => void) => {
  let partial = ""
  return {
    push: (chunk: string): void => {
      const lines = (partial + chunk).split("\n")
      partial = lines.pop() ?? ""
      for (const line of lines) onLine(line)
    },
    flush: (): void => {
      if (partial !== "") onLine(partial)
      partial = ""
    }
  }
}

/** Keeps the last lines of a process's output, for error messages and `logs()`. */
class LogTail {
  private lines: Array<string> = []
  add(line: string): void {
    this.lines.push(line)
    if (this.lines.length > LOG_LINES_KEPT) this.lines.splice(0, this.lines.length - LOG_LINES_KEPT)
  }
  text(): string {
    return this.lines.join("\n")
  }
}

// Children that are still running when the test process exits are killed, so a crashed test file does not leave
// brokers behind.
const liveChildren = new Set<ChildProcess>()
let exitHookInstalled = false
const track = (child: ChildProcess): void => {
  if (!exitHookInstalled) {
    exitHookInstalled = true
    process.once("exit", () => {
      for (const c of liveChildren) c.kill("SIGKILL")
    })
  }
  liveChildren.add(child)
  child.once("exit", () => liveChildren.delete(child))
}

// ---------------------------------------------------------------------------------------------------------------
// The broker
// ---------------------------------------------------------------------------------------------------------------

export interface MosquittoOptions {
  /** Extra lines appended to the generated `mosquitto.conf` (for example `max_inflight_messages 1`). */
  readonly protocolConfig?: string
  /** `persistence true` with `autosave_interval 1`, stored in `dataDir`. Default false (Mosquitto's default). */
  readonly persistence?: boolean
  /** Listen on this port instead of a free one (for example to take over from a previous handle). */
  readonly port?: number
  /** Where the persistence database goes. Default: the handle's own temporary directory. Never deleted by us. */
  readonly dataDir?: string
}

export interface MosquittoHandle {
  readonly port: number
  /** `mqtt://127.0.0.1:<port>` */
  readonly url: string
  /** The pid of the current process (changes on `restart`). */
  readonly pid: number
  /** The directory of `persistence_location`. */
  readonly dataDir: string
  /** The generated configuration file. */
  readonly configFile: string
  /** Whether the current process has not exited yet (true while frozen with `SIGSTOP`). */
  readonly running: boolean
  /** `SIGTERM` (and `SIGCONT`, in case it is frozen), wait for the exit; `SIGKILL` after 5 s. No-op when stopped. */
  stop(): Promise<void>
  /** Sends a signal and returns at once: `SIGKILL` to crash it, `SIGSTOP` / `SIGCONT` to freeze and thaw it. */
  kill(signal: NodeJS.Signals): void
  /** Stops the current process if it still runs, then starts again on the same port, config and data dir. */
  restart(): Promise<void>
  /** The last lines Mosquitto logged, across restarts. */
  logs(): string
  /** `stop()`, then remove the temporary directory (not a `dataDir` given in the options). */
  dispose(): Promise<void>
}

interface Running {
  readonly child: ChildProcess
  readonly exited: Promise<void>
  /** Whether this process logged "mosquitto version x running". */
  readonly isListening: () => boolean
  readonly hasEnded: () => boolean
}

const spawnMosquitto = (bin: string, configFile: string, log: LogTail): Running => {
  const child = spawn(bin, ["-c", configFile], { stdio: ["ignore", "pipe", "pipe"] })
  track(child)
  let listening = false
  let ended = false
  const onLine = (line: string) => {
    log.add(line)
    if (/mosquitto version \S+ running/.test(line)) listening = true
  }
  const stdout = lineSplitter(onLine)
  const stderr = lineSplitter(onLine)
  child.stdout!.setEncoding("utf8").on("data", stdout.push)
  child.stderr!.setEncoding("utf8").on("data", stderr.push)
  const exited = new Promise<void>((resolve) => {
    child.once("close", (code, signal) => {
      stdout.flush()
      stderr.flush()
      ended = true
      log.add(`[mosquitto pid ${child.pid} exited: ${signal ?? `code ${code}`}]`)
      resolve()
    })
    child.once("error", (error) => {
      ended = true
      log.add(`[mosquitto failed to start: ${error.message}]`)
      resolve()
    })
  })
  return { child, exited, isListening: () => listening, hasEnded: () => ended }
}

const isAlive = (running: Running): boolean =>
  !running.hasEnded() && running.child.exitCode === null && running.child.signalCode === null

/**
 * Ready means: the process is alive, logged that it is running, and the port accepts TCP connections. The log
 * check keeps us from mistaking another listener on the same port for ours.
 */
const waitReady = async (running: Running, port: number, log: LogTail): Promise<void> => {
  const deadline = Date.now() + READY_TIMEOUT_MS
  while (Date.now() < deadline) {
    if (!isAlive(running)) {
      await running.exited
      throw new Error(`mosquitto exited before listening on 127.0.0.1:${port}. Log:\n${log.text()}`)
    }
    if (running.isListening() && (await canConnect(port)) && isAlive(running)) return
    await sleep(50)
  }
  running.child.kill("SIGKILL")
  await running.exited
  throw new Error(
    `mosquitto did not accept connections on 127.0.0.1:${port} within ${READY_TIMEOUT_MS} ms. Log:\n${log.text()}`
  )
}

const stopRunning = async (running: Running): Promise<void> => {
  if (!isAlive(running)) return running.exited
  running.child.kill("SIGTERM")
  // A frozen (SIGSTOP) process only acts on SIGTERM once continued.
  running.child.kill("SIGCONT")
  const timer = setTimeout(() => running.child.kill("SIGKILL"), STOP_TIMEOUT_MS)
  await running.exited
  clearTimeout(timer)
}

const writeConfig = (
  configFile: string,
  port: number,
  dataDir: string,
  options: MosquittoOptions | undefined
): void => {
  const lines = [
    `listener ${port} 127.0.0.1`,
    // Once a listener is configured, anonymous clients are refused unless allowed.
    "allow_anonymous true",
    // As root, mosquitto would otherwise drop privileges to the `mosquitto` user and lose access to the temp dir.
    ...(process.getuid?.() === 0 ? ["user root"] : []),
    ...(options?.persistence === true
      ? [
        "persistence true",
        `persistence_location ${dataDir.endsWith("/") ? dataDir : `${dataDir}/`}`,
        "autosave_interval 1"
      ]
      : []),
    "log_dest stderr",
    "log_type error",
    "log_type warning",
    "log_type notice",
    "log_type information",
    ...(options?.protocolConfig === undefined ? [] : [options.protocolConfig])
  ]
  Fs.writeFileSync(configFile, lines.join("\n") + "\n")
}

/**
 * Starts a private Mosquitto on 127.0.0.1 and resolves once it accepts connections.
 * Rejects with the install hint when Mosquitto is missing, and with the log tail when it does not come up.
 */
export const startMosquitto = async (options?: MosquittoOptions): Promise<MosquittoHandle> => {
  const bin = requireMosquitto()
  const tempDir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-mqtt-mosquitto-"))
  const dataDir = options?.dataDir ?? tempDir
  Fs.mkdirSync(dataDir, { recursive: true })
  const configFile = Path.join(tempDir, "mosquitto.conf")
  const log = new LogTail()

  const startOn = async (port: number): Promise<Running> => {
    writeConfig(configFile, port, dataDir, options)
    const running = spawnMosquitto(bin, configFile, log)
    await waitReady(running, port, log)
    return running
  }

  let port = options?.port ?? await freePort()
  let running: Running
  // A port picked by us can be taken by someone else between `freePort` and mosquitto's bind: pick another.
  for (let attempt = 1;; attempt++) {
    try {
      running = await startOn(port)
      break
    } catch (error) {
      const inUse = log.text().includes("Address already in use")
      if (options?.port !== undefined || !inUse || attempt >= 3) {
        Fs.rmSync(tempDir, { recursive: true, force: true })
        throw error
      }
      log.add(`[port ${port} was taken, retrying on another port]`)
      port = await freePort()
    }
  }

  const handle: MosquittoHandle = {
    get port() {
      return port
    },
    get url() {
      return `mqtt://127.0.0.1:${port}`
    },
    get pid() {
      return running.child.pid ?? -1
    },
    dataDir,
    configFile,
    get running() {
      return isAlive(running)
    },
    stop: () => stopRunning(running),
    kill: (signal) => {
      if (isAlive(running)) running.child.kill(signal)
    },
    restart: async () => {
      await stopRunning(running)
      log.add("[restarting mosquitto]")
      running = await startOn(port)
    },
    logs: () => log.text(),
    dispose: async () => {
      await stopRunning(running)
      Fs.rmSync(tempDir, { recursive: true, force: true })
    }
  }
  return handle
}

/**
 * {@link startMosquitto} as a scoped resource: the process is stopped and its temporary directory removed when the
 * scope closes. Failing to start is a defect (the test cannot run without its broker).
 */
export const mosquitto = (options?: MosquittoOptions): Effect.Effect<MosquittoHandle, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.promise(() => startMosquitto(options)),
    (handle) => Effect.promise(() => handle.dispose())
  )

// ---------------------------------------------------------------------------------------------------------------
// mosquitto_pub / mosquitto_sub
// ---------------------------------------------------------------------------------------------------------------

// mosquitto_pub / _sub default to `localhost`, which may resolve to ::1 while our listener is on 127.0.0.1 only.
const withHost = (args: ReadonlyArray<string>): Array<string> =>
  args.some((a) => a === "-h" || a === "--host" || a === "-L" || a === "--url")
    ? [...args]
    : ["-h", "127.0.0.1", ...args]

export interface ProcessResult {
  /** The exit code; `null` when killed by a signal. */
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/**
 * Runs `mosquitto_pub` with `args` (add `-p <port>`; `-h 127.0.0.1` is added unless a host is given) and resolves
 * when it exits. It is killed after `timeoutMs` (default 10 s). Never rejects for a non-zero exit: check `code`.
 */
export const mosquittoPub = (
  args: ReadonlyArray<string>,
  options?: { readonly timeoutMs?: number }
): Promise<ProcessResult> => {
  requireMosquittoClients()
  return new Promise((resolve, reject) => {
    const child = spawn(findBinary("mosquitto_pub")!, withHost(args), { stdio: ["ignore", "pipe", "pipe"] })
    track(child)
    let stdout = ""
    let stderr = ""
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk))
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk))
    const timer = setTimeout(() => child.kill("SIGKILL"), options?.timeoutMs ?? 10_000)
    child.once("error", (error) => {
      clearTimeout(timer)
      reject(error)
    })
    child.once("close", (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })
}

export interface MosquittoSubMessage {
  readonly topic: string
  readonly payload: Buffer
  /** The payload as UTF-8. */
  readonly text: string
  readonly qos: number
  readonly retain: boolean
}

export interface MosquittoSubResult extends ProcessResult {
  readonly messages: ReadonlyArray<MosquittoSubMessage>
}

export interface MosquittoSubscriber {
  /**
   * Resolves once the broker has answered the SUBSCRIBE (mosquitto_sub's debug output shows the SUBACK), so
   * anything published afterwards is delivered. Rejects if mosquitto_sub exits first (connection refused, ...).
   */
  readonly ready: Promise<void>
  /** Resolves when mosquitto_sub exits: after `expectedMessages`, after the timeout, or when killed. */
  readonly done: Promise<MosquittoSubResult>
  /** The messages received so far. */
  readonly messages: ReadonlyArray<MosquittoSubMessage>
  kill(signal?: NodeJS.Signals): void
}

// A line prefix no debug line of mosquitto_sub starts with; the payload is hex so it never spans lines.
const MESSAGE_PREFIX = "MQTTMSG"
const MESSAGE_FORMAT = `${MESSAGE_PREFIX}\t%q\t%r\t%x\t%t`

const parseMessageLine = (line: string): MosquittoSubMessage | undefined => {
  if (!line.startsWith(`${MESSAGE_PREFIX}\t`)) return undefined
  const [, qos, retain, hex, ...topic] = line.split("\t")
  const payload = Buffer.from(hex ?? "", "hex")
  return {
    topic: topic.join("\t"),
    payload,
    text: payload.toString("utf8"),
    qos: Number(qos),
    retain: retain === "1"
  }
}

/**
 * Runs `mosquitto_sub` with `args` (give `-p <port>` and `-t <filter>`s, optionally `-q`, `-V mqttv5`, `-i`, `-c`;
 * do not give `-F`, `-v`, `-d`, `-C`, `-W`: the helper sets them). It exits after `expectedMessages` messages
 * (`-C`) or after `timeoutMs` (`-W`, default 30 s, exit code 27), whichever comes first. The default only bounds a
 * failing test: a test that publishes with several child processes (each a Node.js start, seconds on a loaded
 * machine) must not lose its subscriber before the last one has run.
 *
 * Await `ready` before publishing: it resolves on the SUBACK, not after a guessed delay.
 */
export const mosquittoSub = (
  args: ReadonlyArray<string>,
  options?: { readonly expectedMessages?: number; readonly timeoutMs?: number }
): MosquittoSubscriber => {
  requireMosquittoClients()
  const timeoutMs = options?.timeoutMs ?? 30_000
  const fullArgs = [
    ...withHost(args),
    "-d",
    "-F",
    MESSAGE_FORMAT,
    "-W",
    String(Math.max(1, Math.ceil(timeoutMs / 1000))),
    ...(options?.expectedMessages === undefined ? [] : ["-C", String(options.expectedMessages)])
  ]
  // mosquitto_sub flushes stdout after each message but not after its debug lines: on a pipe, the SUBACK line
  // would only show up with the first message. `stdbuf -oL` makes it line buffered.
  const stdbuf = findBinary("stdbuf")
  if (stdbuf === undefined) throw new Error("mosquittoSub needs stdbuf (Debian package coreutils)")
  const child = spawn(stdbuf, ["-oL", findBinary("mosquitto_sub")!, ...fullArgs], { stdio: ["ignore", "pipe", "pipe"] })
  track(child)
  const messages: Array<MosquittoSubMessage> = []
  let stdout = ""
  let stderr = ""
  let subscribed = false
  let resolveReady!: () => void
  let rejectReady!: (error: Error) => void
  const ready = new Promise<void>((resolve, reject) => {
    resolveReady = resolve
    rejectReady = reject
  })
  // A test that never awaits `ready` must not get an unhandled rejection.
  ready.catch(() => {})

  const lines = lineSplitter((line) => {
    const message = parseMessageLine(line)
    if (message !== undefined) messages.push(message)
    else if (!subscribed && line.startsWith("Client ") && line.includes("received SUBACK")) {
      subscribed = true
      resolveReady()
    }
  })
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
    stdout += chunk
    lines.push(chunk)
  })
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk))
  // -W is mosquitto_sub's own timeout; this one only guards against a hung process.
  const guard = setTimeout(() => child.kill("SIGKILL"), timeoutMs + 5_000)

  const done = new Promise<MosquittoSubResult>((resolve, reject) => {
    child.once("error", (error) => {
      clearTimeout(guard)
      rejectReady(error)
      reject(error)
    })
    child.once("close", (code) => {
      clearTimeout(guard)
      lines.flush()
      if (!subscribed) {
        rejectReady(
          new Error(`mosquitto_sub exited (code ${code}) before subscribing.\nstdout:\n${stdout}\nstderr:\n${stderr}`)
        )
      }
      resolve({ code, stdout, stderr, messages })
    })
  })
  return {
    ready,
    done,
    messages,
    kill: (signal = "SIGTERM") => {
      child.kill(signal)
    }
  }
}
