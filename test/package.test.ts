/**
 * The package as users get it: `npm pack` (which builds dist/), the tarball installed into a fresh project
 * offline from the local npm cache (a lockfile made from this repository's, so that npm needs no registry), and
 * then what a user does with it:
 *
 * - an ESM script that connects to a Mosquitto started here and round-trips a message, on Node.js 24 (the `node`
 *   devDependency) and Node.js 22 (test/node22, a package of its own so that its `node` binary does not replace
 *   the Node.js 24 one in node_modules/.bin);
 * - `tsc` type-checking a consumer with `moduleResolution` `nodenext` and `bundler`, `strict`,
 *   `exactOptionalPropertyTypes`, `noUncheckedIndexedAccess` and no `skipLibCheck`;
 * - esbuild bundling an ESM entry for Node.js, the bundle run from a directory with no node_modules, and
 *   `sideEffects: false` letting a bundle of `Topic` alone leave the client out; esbuild bundling
 *   `effect-mqtt/browser` for browsers with no Node.js built-in;
 * - `npm publish --dry-run` with no warning but the one about not being logged in.
 */
import { afterAll, assert, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Esbuild from "esbuild"
import { execFile } from "node:child_process"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { namesBuffer, noNodeBuiltins, packagesOf } from "./support/browserBundle.ts"
import { type MosquittoHandle, startMosquitto } from "./support/Mosquitto.ts"

const root = Path.resolve(import.meta.dirname, "..")
const NODE_24 = Path.join(root, "node_modules", "node", "bin", "node")
const NODE_22 = Path.join(root, "test", "node22", "node_modules", "node", "bin", "node")
const TSC = Path.join(root, "node_modules", "typescript", "bin", "tsc")
const SETUP_TIMEOUT_MS = 240_000
const STEP_TIMEOUT_MS = 120_000

interface Output {
  readonly stdout: string
  readonly stderr: string
}

/**
 * The environment of the npm and node processes started here, without what the `npm test` around this test set:
 * an inherited `npm_config_local_prefix` or `npm_package_*` would point a child npm at this repository.
 */
const childEnv = (): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = {}
  for (const [name, value] of Object.entries(process.env)) {
    if (!name.toLowerCase().startsWith("npm_") || name === "npm_config_cache") env[name] = value
  }
  return env
}

const run = (command: string, args: ReadonlyArray<string>, cwd: string, timeout = STEP_TIMEOUT_MS) =>
  new Promise<Output>((resolve, reject) =>
    execFile(
      command,
      args,
      { cwd, env: childEnv(), timeout, maxBuffer: 64 * 1024 * 1024, encoding: "utf8" },
      (error, stdout, stderr) =>
        error === null
          ? resolve({ stdout, stderr })
          : reject(new Error(`${command} ${args.join(" ")} failed: ${error.message}\n${stdout}\n${stderr}`))
    )
  )

interface PackageJson {
  readonly name: string
  readonly version: string
  readonly license: string
  readonly engines: Record<string, string>
  readonly exports: Record<string, string | Record<string, string>>
  readonly dependencies: Record<string, string>
  readonly peerDependencies: Record<string, string>
  readonly devDependencies: Record<string, string>
  readonly bin: Record<string, string>
}

interface LockEntry {
  readonly dependencies?: Record<string, string>
  readonly optionalDependencies?: Record<string, string>
  readonly peerDependencies?: Record<string, string>
  readonly peerDependenciesMeta?: Record<string, { readonly optional?: boolean }>
  readonly [key: string]: unknown
}

const readJson = <A>(file: string): A => JSON.parse(Fs.readFileSync(file, "utf8")) as A

/**
 * A lockfile for the consumer: the tarball, and the consumer's dependencies with everything they need, copied
 * from this repository's lockfile (same versions and integrity), so that `npm ci --offline` takes each package
 * from the cache that installing this repository filled.
 */
const consumerLock = (self: PackageJson, tarball: string, roots: Record<string, string>) => {
  const repo = readJson<{ readonly packages: Record<string, LockEntry> }>(Path.join(root, "package-lock.json"))
    .packages
  const resolve = (from: string, name: string): string | undefined => {
    for (let base = from;;) {
      const candidate = `${base === "" ? "" : `${base}/`}node_modules/${name}`
      if (repo[candidate] !== undefined) return candidate
      if (base === "") return undefined
      const parent = base.lastIndexOf("/node_modules/")
      base = parent < 0 ? "" : base.slice(0, parent)
    }
  }
  const packages: Record<string, LockEntry> = {}
  const queue: Array<string> = []
  const add = (from: string, name: string, optional: boolean) => {
    const path = resolve(from, name)
    if (path === undefined) {
      if (optional) return
      throw new Error(`${name} (needed by ${from === "" ? "the consumer" : from}) is not in package-lock.json`)
    }
    if (packages[path] !== undefined) return
    const { dev: _dev, devOptional: _devOptional, peer: _peer, ...entry } = repo[path]!
    packages[path] = entry
    queue.push(path)
  }
  for (const name of [...Object.keys(roots), ...Object.keys(self.dependencies)]) add("", name, false)
  for (let path = queue.shift(); path !== undefined; path = queue.shift()) {
    const entry = repo[path]!
    for (const name of Object.keys(entry.dependencies ?? {})) add(path, name, false)
    for (const name of Object.keys(entry.optionalDependencies ?? {})) add(path, name, true)
    for (const name of Object.keys(entry.peerDependencies ?? {})) {
      add(path, name, entry.peerDependenciesMeta?.[name]?.optional === true)
    }
  }
  const file = `file:${Path.basename(tarball)}`
  const dependencies = { ...roots, [self.name]: file }
  return {
    packageJson: { name: "consumer", version: "0.0.0", private: true, type: "module", dependencies },
    lock: {
      name: "consumer",
      version: "0.0.0",
      lockfileVersion: 3,
      requires: true,
      packages: {
        "": { name: "consumer", version: "0.0.0", dependencies },
        [`node_modules/${self.name}`]: {
          version: self.version,
          resolved: file,
          integrity: `sha512-${Crypto.createHash("sha512").update(Fs.readFileSync(tarball)).digest("base64")}`,
          license: self.license,
          dependencies: self.dependencies,
          engines: self.engines,
          peerDependencies: self.peerDependencies,
          // npm links the package's commands into node_modules/.bin from what the lockfile says
          bin: self.bin
        },
        ...packages
      }
    }
  }
}

/** Subscribes, publishes one message to itself at QoS 1, prints what came back and where effect-mqtt was found. */
const ROUND_TRIP = `import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Stream } from "effect"
import { MqttClient } from "effect-mqtt"

const url = process.argv[2]
const topic = "packaging/" + process.version
const program = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  yield* client.subscribe(topic, { qos: 1 })
  yield* client.publish(topic, "hello from " + process.version, { qos: 1 })
  const messages = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
  for (const message of messages) yield* Console.log(message.topic + " " + message.text)
})
program.pipe(Effect.provide(MqttClient.layer({ url })), Effect.timeout("30 seconds"), NodeRuntime.runMain)
`

/** Uses the public surface with the consumer's strictest settings; the @ts-expect-error lines prove types are real. */
const CONSUMER = `import { Duration, Effect, Layer, Redacted, Schedule, Stream } from "effect"
import { IncomingQueue, MqttClient, MqttError, MqttMessage, Topic } from "effect-mqtt"
import * as Client from "effect-mqtt/MqttClient"
import * as Errors from "effect-mqtt/MqttError"
import * as Messages from "effect-mqtt/MqttMessage"
import * as Queues from "effect-mqtt/IncomingQueue"
import * as Topics from "effect-mqtt/Topic"

const options: MqttClient.Options = {
  url: "mqtts://broker.example:8883",
  protocolVersion: 5,
  username: "app",
  password: Redacted.make("secret"),
  keepAlive: 30,
  connectTimeout: Duration.seconds(10),
  tls: { caFile: "/etc/ssl/ca.pem", minVersion: "TLSv1.2" },
  will: { topic: "status/app", payload: "offline", qos: 1, retain: true },
  queue: IncomingQueue.priority({ capacity: 10, priority: (message) => (message.topic.startsWith("a") ? 0 : 1) }),
  reconnect: Schedule.exponential("200 millis").pipe(Schedule.upTo({ duration: "5 minutes" }))
}

export const program: Effect.Effect<string | undefined, MqttError.MqttError> = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  const granted = yield* client.subscribe([{ filter: "a/+", qos: 2 }, "b/#"], { qos: 1 })
  const first = granted[0]
  yield* client.publish("a/b", new Uint8Array([1]), { qos: 1, properties: { contentType: "application/json" } })
  const messages = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
  const message: MqttMessage.MqttMessage | undefined = messages[0]
  // @ts-expect-error a payload is bytes or a string
  yield* client.publish("a/b", 42)
  return first === undefined ? message?.text : first.filter
}).pipe(
  Effect.catchTag("MqttTimeoutError", (error) => Effect.succeed(String(error.millis))),
  Effect.provide(Client.layer(options))
)

export const layer: Layer.Layer<Client.MqttClient, Errors.MqttError | import("effect").Config.ConfigError> =
  Client.layerConfig(Client.config, { keepAlive: 10 })

export const checks: ReadonlyArray<boolean> = [
  Topic.matches("a/b", "a/+"),
  Topics.isValidFilter("a/#"),
  Errors.isConnectionError(new MqttError.MqttTimeoutError({ operation: "ping", millis: 1 })),
  new Messages.MqttMessage("t", new Uint8Array(), 0, false, false).retain,
  Queues.bounded(1)._tag === "Bounded"
]

// @ts-expect-error QoS is 0, 1 or 2
export const qos: MqttClient.QoS = 3
`

const tsconfig = (moduleResolution: "nodenext" | "bundler") => ({
  compilerOptions: {
    target: "ES2022",
    module: moduleResolution === "nodenext" ? "nodenext" : "esnext",
    moduleResolution,
    // effect's own declarations use the Web Crypto types (CryptoKey, JsonWebKey) of the DOM library
    lib: ["ES2022", "DOM"],
    types: ["node"],
    strict: true,
    exactOptionalPropertyTypes: true,
    noUncheckedIndexedAccess: true,
    skipLibCheck: false,
    noEmit: true
  },
  files: ["consumer.ts"]
})

let work: string
let consumer: string
let self: PackageJson
let packed: { readonly filename: string; readonly files: ReadonlyArray<{ readonly path: string }> }
let mosquitto: MosquittoHandle

beforeAll(async () => {
  work = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-mqtt-package-"))
  self = readJson<PackageJson>(Path.join(root, "package.json"))
  // prepack builds dist/ first, as for a publish
  const pack = await run("npm", ["pack", "--json", "--pack-destination", work], root, SETUP_TIMEOUT_MS)
  packed = (JSON.parse(pack.stdout) as ReadonlyArray<typeof packed>)[0]!
  const tarball = Path.join(work, packed.filename)

  consumer = Path.join(work, "consumer")
  Fs.mkdirSync(consumer)
  Fs.copyFileSync(tarball, Path.join(consumer, packed.filename))
  const { lock, packageJson } = consumerLock(self, tarball, {
    effect: self.devDependencies.effect!,
    "@effect/platform-node": self.devDependencies["@effect/platform-node"]!,
    "@types/node": self.devDependencies["@types/node"]!
  })
  Fs.writeFileSync(Path.join(consumer, "package.json"), JSON.stringify(packageJson, null, 2))
  Fs.writeFileSync(Path.join(consumer, "package-lock.json"), JSON.stringify(lock, null, 2))
  await run("npm", ["ci", "--offline", "--no-audit", "--no-fund"], consumer, SETUP_TIMEOUT_MS)

  Fs.writeFileSync(Path.join(consumer, "round-trip.mjs"), ROUND_TRIP)
  Fs.writeFileSync(Path.join(consumer, "consumer.ts"), CONSUMER)
  for (const resolution of ["nodenext", "bundler"] as const) {
    Fs.writeFileSync(Path.join(consumer, `tsconfig.${resolution}.json`), JSON.stringify(tsconfig(resolution)))
  }
  mosquitto = await startMosquitto()
}, SETUP_TIMEOUT_MS)

afterAll(async () => {
  await mosquitto?.dispose()
  if (work !== undefined) Fs.rmSync(work, { recursive: true, force: true })
})

describe("the packed tarball", () => {
  it("holds dist (JavaScript, declarations and their maps), src, the guide (docs) and the examples the README links to, LICENSE, README and CHANGELOG, and no tests", () => {
    const files = new Set(packed.files.map((file) => file.path))
    for (const module of ["index", "MqttClient", "MqttError", "MqttMessage", "IncomingQueue", "Topic"]) {
      for (const suffix of [".js", ".js.map", ".d.ts", ".d.ts.map"]) {
        assert.isTrue(files.has(`dist/${module}${suffix}`), `dist/${module}${suffix}`)
      }
      assert.isTrue(files.has(`src/${module}.ts`), `src/${module}.ts`)
    }
    const outside = [...files].filter((file) => !/^(dist|src|docs|examples)\//.test(file)).sort()
    assert.deepStrictEqual(outside, ["CHANGELOG.md", "LICENSE", "README.md", "package.json"])
    // the README's guide links and example references resolve in the installed package
    const readme = Fs.readFileSync(Path.join(root, "README.md"), "utf8")
    const linked = [...readme.matchAll(/\]\((docs\/[\w-]+\.md)(#[\w-]*)?\)/g)].map((match) => match[1])
    assert.isAbove(linked.length, 5)
    for (const file of linked) assert.isTrue(files.has(file), file)
    for (const match of readme.matchAll(/`(examples\/[\w-]+\.ts)`/g)) assert.isTrue(files.has(match[1]), match[1])
  })

  it("every export has types and default conditions whose files are in the tarball", () => {
    const files = new Set(packed.files.map((file) => file.path))
    for (const [entry, target] of Object.entries(self.exports)) {
      if (entry === "./package.json") continue
      assert(typeof target === "object", entry)
      for (const condition of ["types", "default"]) {
        const file: string | undefined = target[condition]
        assert.isDefined(file, `${entry} ${condition}`)
        assert.isTrue(files.has(file!.replace(/^\.\//, "")), `${entry} ${condition}: ${file}`)
      }
    }
  })

  it("declares effect and @effect/platform-node as peer dependencies, mqtt-packet as a dependency", () => {
    assert.deepStrictEqual(self.peerDependencies, { "@effect/platform-node": "^4.1.0", effect: "^4.1.0" })
    assert.deepStrictEqual(Object.keys(self.dependencies), ["mqtt-packet"])
    const installed = readJson<PackageJson>(Path.join(consumer, "node_modules", "effect-mqtt", "package.json"))
    assert.strictEqual(readJson<{ sideEffects: unknown }>(Path.join(root, "package.json")).sideEffects, false)
    assert.deepStrictEqual(installed.peerDependencies, self.peerDependencies)
  })
})

describe("the installed package", () => {
  it(
    "the installed effect-mqtt command publishes to, and subscribes through, Mosquitto as a user runs it",
    async () => {
      const bin = Path.join(consumer, "node_modules", ".bin", "effect-mqtt")
      const env = { ...childEnv(), PATH: `${Path.dirname(NODE_24)}:${process.env.PATH ?? ""}` }
      const sub = new Promise<Output>((resolve, reject) =>
        execFile(
          bin,
          ["sub", "--url", mosquitto.url, "-t", "packaging/bin", "-C", "1", "-W", "30", "-v", "-q", "1", "-d"],
          { cwd: consumer, env, timeout: STEP_TIMEOUT_MS, encoding: "utf8" },
          (error, stdout, stderr) =>
            error === null ? resolve({ stdout, stderr }) : reject(new Error(`${error.message}\n${stderr}`))
        )
      )
      // publish (retained, so that the order of the two processes does not matter) with the installed command too
      await new Promise<void>((resolve, reject) =>
        execFile(
          bin,
          ["pub", "--url", mosquitto.url, "-t", "packaging/bin", "-m", "from the bin", "-q", "1", "-r"],
          { cwd: consumer, env, timeout: STEP_TIMEOUT_MS, encoding: "utf8" },
          (error, _stdout, stderr) => error === null ? resolve() : reject(new Error(`${error.message}\n${stderr}`))
        )
      )
      const { stdout } = await sub
      assert.strictEqual(stdout.trim(), "packaging/bin from the bin")
    },
    STEP_TIMEOUT_MS
  )

  for (const [name, node, major] of [["24", NODE_24, "v24."], ["22", NODE_22, "v22."]] as const) {
    it(`an ESM script round-trips a message through Mosquitto on Node.js ${name}`, async () => {
      const { stdout } = await run(node, ["round-trip.mjs", mosquitto.url], consumer)
      const [line, ...rest] = stdout.trim().split("\n")
      assert.match(line ?? "", new RegExp(`^packaging/${major.replace(".", "\\.")}\\S+ hello from ${major}`))
      assert.deepStrictEqual(rest, [])
      const resolved = await run(node, [
        "--input-type=module",
        "-e",
        "console.log(import.meta.resolve(\"effect-mqtt\"))"
      ], consumer)
      assert.strictEqual(
        resolved.stdout.trim(),
        `file://${Fs.realpathSync(consumer)}/node_modules/effect-mqtt/dist/index.js`
      )
    }, STEP_TIMEOUT_MS)
  }

  for (const resolution of ["nodenext", "bundler"] as const) {
    it.concurrent(
      `tsc type-checks a strict consumer with moduleResolution ${resolution}, without skipLibCheck`,
      async () => {
        // any error fails the run; --listFiles then tells which files of effect-mqtt were checked
        const { stdout } = await run(
          process.execPath,
          [TSC, "-p", `tsconfig.${resolution}.json`, "--listFiles"],
          consumer
        )
        const files = stdout.split("\n").map((file) => Path.relative(consumer, file))
        expect(files).toContain("node_modules/effect-mqtt/dist/index.d.ts")
        expect(files).toContain("node_modules/effect-mqtt/dist/MqttClient.d.ts")
        assert.deepStrictEqual(files.filter((file) => file.startsWith("node_modules/effect-mqtt/src/")), [])
      },
      STEP_TIMEOUT_MS
    )
  }

  it(
    "esbuild bundles an ESM entry for Node.js, and the bundle runs from a directory without node_modules",
    async () => {
      const outdir = Path.join(work, "bundle")
      await Esbuild.build({
        entryPoints: [Path.join(consumer, "round-trip.mjs")],
        bundle: true,
        platform: "node",
        format: "esm",
        target: "node22",
        outfile: Path.join(outdir, "round-trip.mjs"),
        logLevel: "silent",
        // CommonJS dependencies (mqtt-packet, ws) require Node.js built-ins: give them a require in the ESM bundle
        banner: { js: "import { createRequire } from \"node:module\"; const require = createRequire(import.meta.url);" }
      })
      assert.isFalse(Fs.existsSync(Path.join(outdir, "node_modules")))
      const { stdout } = await run(NODE_24, [Path.join(outdir, "round-trip.mjs"), mosquitto.url], outdir)
      assert.match(stdout.trim(), /^packaging\/v24\.\S+ hello from v24\./)
    },
    STEP_TIMEOUT_MS
  )

  it("sideEffects: false lets a bundle of Topic alone leave the client and mqtt-packet out", async () => {
    const result = await Esbuild.build({
      stdin: {
        contents: "import { Topic } from \"effect-mqtt\"\nconsole.log(Topic.matches(\"a/b\", \"a/+\"))\n",
        resolveDir: consumer
      },
      bundle: true,
      platform: "node",
      format: "esm",
      write: false,
      metafile: true,
      absWorkingDir: consumer,
      logLevel: "silent"
    })
    // the files that put code in the bundle (esbuild parses more than it keeps)
    const inputs = Object.values(result.metafile.outputs).flatMap((output) =>
      Object.entries(output.inputs).filter(([, input]) => input.bytesInOutput > 0).map(([file]) => file)
    )
    expect(inputs).toContain("node_modules/effect-mqtt/dist/Topic.js")
    assert.deepStrictEqual(
      inputs.filter((input) => /mqtt-packet|effect-mqtt\/dist\/(MqttClient|internal\/(client|transport))/.test(input)),
      []
    )
  })

  it("esbuild bundles effect-mqtt/browser from the tarball for browsers: no Node.js built-in, no Buffer", async () => {
    const result = await Esbuild.build({
      stdin: { contents: "export * from \"effect-mqtt/browser\"\n", resolveDir: consumer },
      bundle: true,
      platform: "browser",
      format: "esm",
      write: false,
      metafile: true,
      absWorkingDir: consumer,
      plugins: [noNodeBuiltins(consumer)],
      logLevel: "silent"
    })
    assert.isFalse(namesBuffer.test(result.outputFiles[0].text))
    assert.deepStrictEqual([...packagesOf(result.metafile)].sort(), ["effect", "effect-mqtt"])
    expect(Object.keys(result.metafile.inputs)).toContain("node_modules/effect-mqtt/dist/browser.js")
  })

  it("npm publish --dry-run warns of nothing but not being logged in", async () => {
    // dist/ was built by npm pack above; --offline: no registry is asked
    const { stderr, stdout } = await run("npm", ["publish", "--dry-run", "--offline", "--ignore-scripts"], root)
    const warnings = stderr.split("\n").filter((line) => /\b(warn|WARN|error|ERR)\b/.test(line))
    assert.deepStrictEqual(warnings.filter((line) => !line.includes("requires you to be logged in")), [])
    expect(stdout).toContain(`+ ${self.name}@${self.version}`)
  })
})
