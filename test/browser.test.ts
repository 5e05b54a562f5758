/**
 * effect-mqtt in browsers (`effect-mqtt/browser`):
 *
 * - the entry bundles for browsers with no Node.js module: an esbuild build with `platform: "browser"` and a
 *   plugin that fails on any import of a Node.js built-in (`node:*`, `buffer`, `crypto`, `net`, `tls`, `fs`...),
 *   whose output never names `Buffer`; the same build of the Node.js entry fails, so the check can fail;
 * - in a real browser: Debian's Chromium, headless, driven by playwright-core (no browser download), loads a page
 *   bundled with esbuild (test/browser/harness.ts) from a local HTTP server, and the client in it talks to aedes
 *   over WebSocket on loopback: subscribe, QoS 0/1/2 round trips, messages from an independent peer (MQTT.js in
 *   this process), a reconnect after the broker restarts on the same port, a refused `mqtt://` URL; and the
 *   example page of examples/browser, bundled as `npm run example:browser` bundles it.
 *
 * Chromium must be installed (`.ci/run` installs Debian's `chromium` when it is missing): without it the tests
 * fail, they are not skipped.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import * as esbuild from "esbuild"
import * as mqtt from "mqtt"
import * as Fs from "node:fs"
import * as Http from "node:http"
import type * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { type BrowserContext, chromium, type Page } from "playwright-core"
import { bundle as bundleExample } from "../examples/browser/build.ts"
import type { Received } from "./browser/harness.ts"
import { namesBuffer, noNodeBuiltins, packagesOf } from "./support/browserBundle.ts"
import { type AedesWsHandle, startAedesWs } from "./support/wsBroker.ts"

const root = Path.resolve(import.meta.dirname, "..")
const CHROMIUM = "/usr/bin/chromium"
const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run"
]

// ---------------------------------------------------------------------------------------------------------------
// the bundle
// ---------------------------------------------------------------------------------------------------------------

const noNode = noNodeBuiltins(root)

const forBrowsers: esbuild.BuildOptions = {
  bundle: true,
  platform: "browser",
  format: "esm",
  target: "es2022",
  write: false,
  metafile: true,
  conditions: ["effect-mqtt-source"],
  plugins: [noNode],
  logLevel: "silent"
}

/** Bundles a module that imports `specifier`; the build's errors, or its output and the packages it holds. */
const bundleImport = async (specifier: string) => {
  try {
    const result = await esbuild.build({
      ...forBrowsers,
      stdin: { contents: `export * from "${specifier}"`, resolveDir: root, loader: "ts" }
    })
    const packages = packagesOf(result.metafile!)
    return { _tag: "Built" as const, text: result.outputFiles![0].text, packages, inputs: result.metafile!.inputs }
  } catch (error) {
    return { _tag: "Failed" as const, errors: (error as esbuild.BuildFailure).errors.map((e) => e.text) }
  }
}

describe("the browser bundle", () => {
  it("effect-mqtt/browser bundles for browsers with no Node.js built-in, no Buffer, and no package but effect", async () => {
    const built = await bundleImport("effect-mqtt/browser")
    if (built._tag === "Failed") return assert.fail(built.errors.join("\n"))
    assert.isFalse(namesBuffer.test(built.text), "the bundle names Buffer")
    assert.deepStrictEqual([...built.packages], ["effect"])
    // the client's core is in it, and the Node.js transport is not
    assert.isDefined(built.inputs["src/internal/session.ts"])
    assert.isDefined(built.inputs["src/internal/browserTransport.ts"])
    assert.isUndefined(built.inputs["src/internal/transport.ts"])
  })

  it("the same check fails on the Node.js entry (effect-mqtt), naming the Node.js built-ins it imports", async () => {
    const built = await bundleImport("effect-mqtt")
    assert.strictEqual(built._tag, "Failed")
    if (built._tag !== "Failed") return
    assert.isTrue(built.errors.some((e) => /Node\.js built-in "node:(net|tls|crypto|fs\/promises)"/.test(e)))
  })
})

// ---------------------------------------------------------------------------------------------------------------
// Chromium
// ---------------------------------------------------------------------------------------------------------------

let broker: AedesWsHandle
let server: Http.Server
let pagePort = 0
let context: BrowserContext
let userDataDir: string
/** what the pages printed, for failure messages */
const pageLog: Array<string> = []

const listen = (s: Http.Server) =>
  new Promise<number>((resolve) => s.listen(0, "127.0.0.1", () => resolve((s.address() as Net.AddressInfo).port)))

const openPage = async (path: string): Promise<Page> => {
  const page = await context.newPage()
  page.on("console", (message) => pageLog.push(`${path} console.${message.type()}: ${message.text()}`))
  page.on("pageerror", (error) => pageLog.push(`${path} error: ${error.message}`))
  await page.goto(`http://127.0.0.1:${pagePort}${path}`)
  return page
}

/** Waits, in the page, until `predicate` holds; fails with what the page printed when it does not in time. */
const waitUntil = async (page: Page, predicate: () => boolean, what: string) => {
  try {
    await page.waitForFunction(predicate, undefined, { timeout: 30_000, polling: 50 })
  } catch (error) {
    throw new Error(`${what}: ${String(error)}\n${pageLog.join("\n")}`)
  }
}

/** An independent peer: MQTT.js over WebSocket, in this process. */
const peer = async () => {
  const client = await mqtt.connectAsync(`ws://127.0.0.1:${broker.port}/mqtt`, { reconnectPeriod: 0 })
  return client
}

interface Harness {
  connect(options: object, how?: { readonly durable?: boolean; readonly webSocketService?: boolean }): Promise<void>
  connectError(options: object): Promise<{ tag: string; option?: string; message: string } | "ok">
  subscribe(filter: string, qos: 0 | 1 | 2): Promise<Array<number>>
  publish(topic: string, payload: string | Array<number>, qos: 0 | 1 | 2): Promise<void>
  received(): Array<Received>
  statuses(): Array<string>
  errors(): Array<string>
  status(): Promise<string>
  close(): Promise<void>
  nodeGlobals(): Array<string>
  storageKeys(): Array<string>
  constructed(): Array<string>
}
declare const harness: Harness
/** The little of the DOM that the example page's checks read (the tests are type-checked without the DOM). */
declare const document: { getElementById(id: string): { readonly textContent: string | null } | null }

describe("in Chromium", () => {
  beforeAll(async () => {
    if (!Fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium (.ci/run does)`)
    broker = await startAedesWs()
    const harness = await esbuild.build({ ...forBrowsers, entryPoints: [Path.join(root, "test/browser/harness.ts")] })
    const example = await bundleExample([noNode])
    const files: Record<string, { readonly type: string; readonly body: string }> = {
      "/": { type: "text/html", body: `<!doctype html><script type="module" src="/harness.js"></script>` },
      "/harness.js": { type: "text/javascript", body: harness.outputFiles![0].text },
      "/example/": { type: "text/html", body: example["index.html"] },
      "/example/main.js": { type: "text/javascript", body: example["main.js"] }
    }
    server = Http.createServer((request, response) => {
      const file = files[new URL(request.url ?? "/", "http://localhost").pathname]
      if (file === undefined) return void response.writeHead(404).end()
      response.writeHead(200, { "content-type": file.type }).end(file.body)
    })
    pagePort = await listen(server)
    userDataDir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-mqtt-chromium-"))
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: FLAGS
    })
  }, 120_000)

  afterAll(async () => {
    await context?.close()
    await new Promise<void>((resolve) => server === undefined ? resolve() : server.close(() => resolve()))
    await broker?.close()
    if (userDataDir !== undefined) Fs.rmSync(userDataDir, { recursive: true, force: true })
  })

  it(
    "the client connects over WebSocket, subscribes, round-trips QoS 0, 1 and 2, receives from MQTT.js, and reconnects after the broker restarts on the same port",
    async () => {
      const page = await openPage("/")
      await waitUntil(page, () => "harness" in globalThis, "the page loaded")
      assert.deepStrictEqual(await page.evaluate(() => harness.nodeGlobals()), [])
      const url = `ws://127.0.0.1:${broker.port}/mqtt`
      await page.evaluate((url) => harness.connect({ url, clientId: "browser-1", keepAlive: 10 }), url)
      assert.strictEqual(await page.evaluate(() => harness.status()), "Connected")
      assert.deepStrictEqual(await page.evaluate(() => harness.subscribe("browser/+/echo", 2)), [2])
      // aedes saw a WebSocket offering the subprotocol mqtt
      assert.deepStrictEqual(broker.requests.at(-1)?.protocols, ["mqtt"])
      assert.strictEqual(broker.requests.at(-1)?.url, "/mqtt")

      // the client's own publishes come back through the broker, at each QoS
      const binary = [0, 1, 127, 128, 255, 0xc3, 0x28]
      await page.evaluate(() => harness.publish("browser/q0/echo", "zero", 0))
      await page.evaluate(() => harness.publish("browser/q1/echo", "one: é", 1))
      await page.evaluate((bytes) => harness.publish("browser/q2/echo", bytes, 2), binary)
      await waitUntil(page, () => harness.received().length >= 3, "three messages back")
      const echoes = await page.evaluate(() => harness.received())
      assert.deepStrictEqual(
        echoes.map((m) => [m.topic, m.qos, m.retain]).sort(),
        [["browser/q0/echo", 0, false], ["browser/q1/echo", 1, false], ["browser/q2/echo", 2, false]]
      )
      assert.strictEqual(echoes.find((m) => m.topic === "browser/q1/echo")?.text, "one: é")
      assert.deepStrictEqual(echoes.find((m) => m.topic === "browser/q2/echo")?.bytes, binary)

      // what an independent client publishes reaches the page, and what the page publishes reaches it
      const other = await peer()
      try {
        await other.subscribeAsync("browser/from-page", { qos: 1 })
        const fromPage = new Promise<string>((resolve) =>
          other.on("message", (_, payload) => resolve(payload.toString()))
        )
        await other.publishAsync("browser/peer/echo", "from MQTT.js", { qos: 1 })
        await waitUntil(page, () => harness.received().some((m) => m.text === "from MQTT.js"), "the peer's")
        await page.evaluate(() => harness.publish("browser/from-page", "from Chromium", 1))
        assert.strictEqual(await fromPage, "from Chromium")
      } finally {
        await other.endAsync(true)
      }

      // the broker restarts (a new aedes, without the session) on the same port: the client reconnects,
      // subscribes again, and receives what is published after
      const port = broker.port
      await broker.close()
      await waitUntil(page, () => harness.statuses().includes("Disconnected"), "the connection lost")
      broker = await startAedesWs({ port })
      await waitUntil(
        page,
        () => {
          const statuses = harness.statuses()
          return statuses.lastIndexOf("Connected") > statuses.indexOf("Disconnected")
        },
        "connected again"
      )
      const after = await peer()
      try {
        // the restore of the subscription may still be on its way: publish until one arrives
        let delivered = false
        for (let attempt = 0; attempt < 100 && !delivered; attempt++) {
          await after.publishAsync("browser/restart/echo", "after the restart", { qos: 1 })
          delivered = await page.evaluate(() => harness.received().some((m) => m.text === "after the restart"))
          if (!delivered) await new Promise((resolve) => setTimeout(resolve, 100))
        }
        assert.isTrue(delivered, `nothing after the restart\n${pageLog.join("\n")}`)
      } finally {
        await after.endAsync(true)
      }
      await page.evaluate(() => harness.publish("browser/q2/echo", "again, QoS 2", 2))
      await waitUntil(page, () => harness.received().some((m) => m.text === "again, QoS 2"), "QoS 2 again")
      assert.match((await page.evaluate(() => harness.errors()))[0] ?? "", /^ConnectionLostError/)
      await page.evaluate(() => harness.close())
      await page.close()
    },
    120_000
  )

  it("an mqtt:// URL or TLS settings are refused with an InvalidOptionError that says why; a failed WebSocket says what it may be", async () => {
    const page = await openPage("/")
    await waitUntil(page, () => "harness" in globalThis, "the page loaded")
    const refused = await page.evaluate(() => harness.connectError({ url: "mqtt://user:secret@127.0.0.1:1883" }))
    assert.notStrictEqual(refused, "ok")
    if (refused === "ok") return
    assert.strictEqual(refused.tag, "InvalidOptionError")
    assert.strictEqual(refused.option, "url")
    assert.include(refused.message, "WebSocket only")
    assert.include(refused.message, "mqtt: needs Node.js")
    assert.notInclude(refused.message, "secret")
    // a browser says nothing of why a WebSocket failed: the error says what it may be
    const nobody = await page.evaluate(() => harness.connectError({ url: "ws://127.0.0.1:1/mqtt" }))
    assert.strictEqual(nobody !== "ok" && nobody.tag, "ConnectionLostError")
    assert.include(nobody !== "ok" ? nobody.message : "", "the browser could not open the WebSocket")
    const tls = await page.evaluate(
      (url) => harness.connectError({ url, tls: { servername: "x" } }),
      `ws://127.0.0.1:1/`
    )
    assert.strictEqual(tls !== "ok" && tls.option, "tls")
    await page.close()
  })

  it("a durable session keeps its journal in the page's localStorage (KeyValueStore.layerStorage)", async () => {
    const page = await openPage("/")
    await waitUntil(page, () => "harness" in globalThis, "the page loaded")
    const url = `ws://127.0.0.1:${broker.port}/mqtt`
    const options = { url, clientId: "browser-durable", cleanStart: false }
    await page.evaluate((options) => harness.connect(options, { durable: true }), options)
    assert.deepStrictEqual(await page.evaluate(() => harness.subscribe("durable/#", 1)), [1])
    await page.evaluate(() => harness.publish("durable/a", "kept", 1))
    await waitUntil(page, () => harness.received().some((m) => m.text === "kept"), "the QoS 1 message back")
    await page.evaluate(() => harness.close())
    const keys = await page.evaluate(() => harness.storageKeys())
    assert.isTrue(
      keys.some((key) => key.startsWith("effect-mqtt/v1/") && key.includes("browser-durable")),
      String(keys)
    )
    await page.close()
  })

  it("the example page (examples/browser) connects, shows what MQTT.js publishes, and publishes what is typed", async () => {
    const page = await openPage(`/example/?url=ws://127.0.0.1:${broker.port}/mqtt`)
    await waitUntil(page, () => document.getElementById("status")?.textContent === "connected", "connected")
    const other = await peer()
    try {
      await other.subscribeAsync("effect-mqtt/example/chat", { qos: 1 })
      const typed = new Promise<string>((resolve) =>
        other.on("message", (_, payload) => {
          if (payload.toString() === "typed in the page") resolve("typed in the page")
        })
      )
      await other.publishAsync("effect-mqtt/example/chat", "hello page", { qos: 1 })
      await waitUntil(
        page,
        () => document.getElementById("log")?.textContent?.includes("effect-mqtt/example/chat: hello page") === true,
        "the peer's message in the page"
      )
      await page.fill("#text", "typed in the page")
      await page.click("#send")
      assert.strictEqual(await typed, "typed in the page")
    } finally {
      await other.endAsync(true)
    }
    await page.close()
  })
})

describe("the documentation", () => {
  it("docs/browsers.md shows the example page's main.ts as it is, the code these tests run", () => {
    const doc = Fs.readFileSync(Path.join(root, "docs/browsers.md"), "utf8")
    const main = Fs.readFileSync(Path.join(root, "examples/browser/main.ts"), "utf8")
    assert.include(doc, "```ts\n" + main + "```")
  })
})
