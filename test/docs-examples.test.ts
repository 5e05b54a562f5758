/**
 * Runs the guide's examples (docs/examples/) as a user would, each in its own process, and checks what it prints
 * against what its page says it prints (the ```text block after the example on the page):
 *
 * - the TypeScript programs on this Node.js with the source condition, against their embedded aedes broker (no
 *   `MQTT_URL`), a private Mosquitto, and the in-memory test broker (`MQTT_URL=memory:`); the MQTT 5 ones against
 *   Mosquitto and the in-memory broker (aedes speaks MQTT 3.1.1 only); the TLS and WebSocket one against
 *   Mosquitto's TLS listener and aedes over `ws://` and `wss://`;
 * - the command line script with `effect-mqtt` on the PATH, and the MQTT.js program, against an aedes broker in
 *   this process and against Mosquitto;
 * - the test file with vitest.
 *
 * Every wait ends on the example's own exit; the timeouts only guard against a hang.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Aedes } from "aedes"
import { spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { type Certs, makeCerts } from "./support/certs.ts"
import { CLI_COMMAND } from "./support/cli.ts"
import { freePort, type MosquittoHandle, startMosquitto } from "./support/Mosquitto.ts"
import { SOURCE_CONDITION } from "./support/peers.ts"
import { blocks } from "./support/snippets.ts"
import { type AedesWsHandle, startAedesWs } from "./support/wsBroker.ts"

const root = Path.resolve(import.meta.dirname, "..")
const EXAMPLE_TIMEOUT_MS = 60_000
const TEST_TIMEOUT_MS = 90_000

interface Run {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
  /** The lines of standard output, without the log lines. */
  readonly lines: ReadonlyArray<string>
  /** The log lines of Effect's logger on standard output (`[12:00:00.000] WARN (#9): ...`). */
  readonly logs: ReadonlyArray<string>
}

const LOG_LINE = /^\[\d\d:\d\d:\d\d\.\d{3}\] [A-Z]+ \(#\d+\):/

/** The environment of a run: this process's, without its `MQTT_*` and vitest variables, plus `extra`. */
const environment = (extra: Record<string, string>): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = {}
  for (const [name, value] of Object.entries(process.env)) {
    if (!name.startsWith("MQTT_") && !name.startsWith("VITEST")) env[name] = value
  }
  return { ...env, NO_COLOR: "1", ...extra }
}

const spawnRun = (command: ReadonlyArray<string>, extra: Record<string, string>): Promise<Run> =>
  new Promise((resolve, reject) => {
    const child = spawn(command[0]!, command.slice(1), {
      cwd: root,
      env: environment(extra),
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk))
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk))
    // an example that does not exit by itself is a failure: kill it so the test reports its output
    const guard = setTimeout(() => child.kill("SIGKILL"), EXAMPLE_TIMEOUT_MS)
    child.once("error", (error) => {
      clearTimeout(guard)
      reject(error)
    })
    child.once("close", (code) => {
      clearTimeout(guard)
      const all = stdout.split("\n").filter((line) => line !== "")
      resolve({
        code,
        stdout,
        stderr,
        lines: all.filter((line) => !LOG_LINE.test(line)),
        logs: all.filter((line) => LOG_LINE.test(line))
      })
    })
  })

/** Runs the command and checks that it exited by itself with code 0, and wrote no log line and nothing on stderr. */
const runOk = async (
  command: ReadonlyArray<string>,
  env: Record<string, string>,
  options?: { readonly logs?: ReadonlyArray<RegExp> }
): Promise<Run> => {
  const run = await spawnRun(command, env)
  const report = `exit code ${run.code}\nstdout:\n${run.stdout}\nstderr:\n${run.stderr}`
  assert.strictEqual(run.code, 0, report)
  assert.strictEqual(run.stderr, "", report)
  const expectedLogs = options?.logs ?? []
  assert.strictEqual(run.logs.length, expectedLogs.length, report)
  expectedLogs.forEach((pattern, i) => assert.match(run.logs[i]!, pattern, report))
  return run
}

// ---- what the pages say --------------------------------------------------------------------------------------

const pages = Fs.readdirSync(Path.join(root, "docs")).filter((name) => name.endsWith(".md"))

/** The lines of the first ```text block after the block that shows `example` on its page. */
const printed = (example: string): ReadonlyArray<string> => {
  for (const page of pages) {
    const found = blocks(Fs.readFileSync(Path.join(root, "docs", page), "utf8"))
    const at = found.findIndex((block) => block.example === example)
    if (at === -1) continue
    const text = found.slice(at + 1).find((block) => block.lang === "text")
    if (text === undefined) throw new Error(`docs/${page} shows ${example} but not what it prints`)
    return text.code.split("\n").filter((line) => line !== "")
  }
  throw new Error(`no page shows ${example}`)
}

// ---- the brokers -------------------------------------------------------------------------------------------

type Target = "embedded" | "mosquitto" | "memory"

const EVERYWHERE: ReadonlyArray<Target> = ["embedded", "mosquitto", "memory"]
const MQTT5: ReadonlyArray<Target> = ["mosquitto", "memory"]

let certs: Certs
let mosquitto: MosquittoHandle
let tlsPort: number
let aedesWs: AedesWsHandle
let aedesWss: AedesWsHandle
let aedes: { readonly url: string; readonly close: () => Promise<void> }
let bin: string

/** An aedes broker on a free port of 127.0.0.1, in this process. */
const startAedes = async () => {
  const broker = await Aedes.createBroker()
  const server = Net.createServer(broker.handle)
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const { port } = server.address() as Net.AddressInfo
  return {
    url: `mqtt://127.0.0.1:${port}`,
    close: () => new Promise<void>((resolve) => broker.close(() => server.close(() => resolve())))
  }
}

beforeAll(async () => {
  certs = makeCerts()
  tlsPort = await freePort()
  mosquitto = await startMosquitto({
    protocolConfig: [
      `listener ${tlsPort} 127.0.0.1`,
      `cafile ${certs.ca.cert}`,
      `certfile ${certs.server.cert}`,
      `keyfile ${certs.server.key}`
    ].join("\n")
  })
  aedes = await startAedes()
  aedesWs = await startAedesWs()
  aedesWss = await startAedesWs({ tls: { cert: certs.read(certs.server.cert), key: certs.read(certs.server.key) } })
  // `effect-mqtt` as a user has it on the PATH: the command line of this repository, on this Node.js
  bin = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-mqtt-docs-bin-"))
  const quote = (word: string) => `'${word.replaceAll("'", "'\\''")}'`
  Fs.writeFileSync(Path.join(bin, "effect-mqtt"), `#!/bin/sh\nexec ${CLI_COMMAND.map(quote).join(" ")} "$@"\n`, {
    mode: 0o755
  })
})

afterAll(async () => {
  await mosquitto?.dispose()
  await aedes?.close()
  await aedesWs?.close()
  await aedesWss?.close()
  certs?.dispose()
  if (bin !== undefined) Fs.rmSync(bin, { recursive: true, force: true })
})

/** `MQTT_URL` for a TypeScript example: none for its own embedded broker. */
const urlFor = (target: Target): Record<string, string> =>
  target === "embedded" ? {} : { MQTT_URL: target === "mosquitto" ? mosquitto.url : "memory:" }

/** `MQTT_URL` for a program that has no embedded broker of its own: aedes in this process stands in for it. */
const externalUrlFor = (target: "embedded" | "mosquitto"): Record<string, string> => ({
  MQTT_URL: target === "embedded" ? aedes.url : mosquitto.url
})

const node = (file: string) => [process.execPath, SOURCE_CONDITION, file]

// ---- the programs ------------------------------------------------------------------------------------------

interface Program {
  readonly file: string
  readonly what: string
  readonly targets: ReadonlyArray<Target>
  /** The log lines the program writes, in order (default: none). */
  readonly logs?: ReadonlyArray<RegExp>
}

const programs: ReadonlyArray<Program> = [
  {
    file: "connecting.ts",
    what: "connects, shares the connection, reports an unreachable broker",
    targets: EVERYWHERE
  },
  {
    file: "publishing.ts",
    what: "publishes at each QoS, keeps a retained message, refuses a wildcard",
    targets: EVERYWHERE
  },
  { file: "subscribing.ts", what: "subscribes, filters by topic, has a stream per subscription", targets: EVERYWHERE },
  { file: "queue.ts", what: "orders by priority, and a sliding queue keeps the newest", targets: EVERYWHERE },
  {
    file: "concurrency.ts",
    what: "caps the handlers at once, keeps each topic in order, forks a listener",
    targets: EVERYWHERE
  },
  { file: "stopping.ts", what: "interrupts, times out, leaves the rest queued, disconnects", targets: EVERYWHERE },
  {
    file: "reconnection.ts",
    what: "reconnects after a drop and restores the subscription; a durable session gets what was queued",
    targets: EVERYWHERE,
    logs: [/ WARN \(#\d+\): The connection to the broker.* was lost: .+; next attempt in .+ \(attempt 1\)/]
  },
  { file: "mqtt5.ts", what: "properties, subscription identifiers, aliases, request/response, shared", targets: MQTT5 },
  {
    file: "manual-ack.ts",
    what: "acknowledges after saving; the broker sends the unsaved order again",
    targets: EVERYWHERE
  },
  {
    file: "typed-topics.ts",
    what: "decodes typed readings, skips a bad one, refuses a bad parameter",
    targets: EVERYWHERE
  },
  {
    file: "tracing-metrics.ts",
    what: "traces from producer to consumer across the broker, counts messages",
    targets: MQTT5
  },
  { file: "migrating.ts", what: "does what the MQTT.js program does", targets: EVERYWHERE }
]

for (const program of programs) {
  describe(`docs/examples/${program.file}`, () => {
    for (const target of program.targets) {
      it(`${program.what} (${target})`, async () => {
        const file = `docs/examples/${program.file}`
        const run = await runOk(
          node(file),
          urlFor(target),
          program.logs === undefined ? undefined : { logs: program.logs }
        )
        assert.deepStrictEqual(run.lines, printed(file))
      }, TEST_TIMEOUT_MS)
    }
  })
}

describe("docs/examples/tls-websocket.ts", () => {
  const file = "docs/examples/tls-websocket.ts"

  it("over mqtts:// with the CA of MQTT_CA_FILE, and fails without it (Mosquitto)", async () => {
    const run = await runOk(node(file), { MQTT_URL: `mqtts://localhost:${tlsPort}`, MQTT_CA_FILE: certs.ca.cert })
    assert.deepStrictEqual(run.lines, printed(file))
  }, TEST_TIMEOUT_MS)

  it("over wss:// with the CA of MQTT_CA_FILE, and fails without it (aedes over WebSocket)", async () => {
    const env = { MQTT_URL: `wss://localhost:${aedesWss.port}/mqtt`, MQTT_CA_FILE: certs.ca.cert }
    const run = await runOk(node(file), env)
    assert.deepStrictEqual(run.lines, printed(file))
    assert.strictEqual(aedesWss.requests.at(-1)?.url, "/mqtt")
  }, TEST_TIMEOUT_MS)

  it("over ws://: only the message, no TLS to fail (aedes over WebSocket)", async () => {
    const run = await runOk(node(file), { MQTT_URL: `ws://127.0.0.1:${aedesWs.port}/mqtt` })
    assert.deepStrictEqual(run.lines, printed(file).slice(0, 1))
    assert.deepStrictEqual(aedesWs.requests.at(-1)?.protocols, ["mqtt"])
  }, TEST_TIMEOUT_MS)
})

describe("docs/examples/command-line.sh", () => {
  for (const target of ["embedded", "mosquitto"] as const) {
    it(`publishes, subscribes, prints JSON, and reads standard input line by line (${target})`, async () => {
      const file = "docs/examples/command-line.sh"
      const run = await runOk(["sh", file], { ...externalUrlFor(target), PATH: `${bin}:${process.env.PATH}` })
      assert.deepStrictEqual(run.lines, printed(file))
    }, TEST_TIMEOUT_MS)
  }
})

describe("docs/examples/migrating-mqttjs.ts", () => {
  for (const target of ["embedded", "mosquitto"] as const) {
    it(`prints what the effect-mqtt program prints (${target})`, async () => {
      const run = await runOk(node("docs/examples/migrating-mqttjs.ts"), externalUrlFor(target))
      assert.deepStrictEqual(run.lines, printed("docs/examples/migrating.ts"))
    }, TEST_TIMEOUT_MS)
  }
})

describe("docs/examples/testing.test.ts", () => {
  it("passes under vitest, every test of it", async () => {
    const vitest = Path.join(root, "node_modules", "vitest", "vitest.mjs")
    const run = await spawnRun(
      [process.execPath, vitest, "run", "docs/examples/testing.test.ts", "--reporter=verbose"],
      {}
    )
    const report = `exit code ${run.code}\nstdout:\n${run.stdout}\nstderr:\n${run.stderr}`
    assert.strictEqual(run.code, 0, report)
    const source = Fs.readFileSync(Path.join(root, "docs/examples/testing.test.ts"), "utf8")
    const names = [...source.matchAll(/it\.effect\("([^"]+)"/g)].map((match) => match[1]!)
    assert.strictEqual(names.length, 3)
    for (const name of names) assert.match(run.stdout, new RegExp(`✓ .*${name}`), report)
    assert.match(run.stdout, /Tests\s+3 passed \(3\)/, report)
  }, TEST_TIMEOUT_MS)
})

describe("the guide's examples", () => {
  it("are all run here", () => {
    const run = new Set([
      ...programs.map((program) => program.file),
      "tls-websocket.ts",
      "command-line.sh",
      "migrating-mqttjs.ts",
      "testing.test.ts"
    ])
    const files = Fs.readdirSync(Path.join(root, "docs", "examples")).filter((name) => !name.startsWith("_"))
    assert.deepStrictEqual(files.filter((file) => !run.has(file)), [])
  })
})
