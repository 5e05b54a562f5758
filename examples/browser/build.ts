/**
 * Bundles the example page's main.ts with esbuild, for browsers, and serves it.
 *
 * `npm run example:browser` writes dist/main.js and dist/index.html, then starts an MQTT broker over WebSocket
 * (aedes, on a free port of 127.0.0.1) and an HTTP server for the page, and prints the address to open; Ctrl-C
 * stops both. `npm run example:browser -- --build` only writes dist/. test/browser.test.ts bundles the page with
 * `bundle` below and runs it in Chromium.
 */
import { Aedes } from "aedes"
import * as esbuild from "esbuild"
import * as Fs from "node:fs"
import * as Http from "node:http"
import type * as Net from "node:net"
import * as Path from "node:path"
import { createWebSocketStream, WebSocketServer } from "ws"

const here = import.meta.dirname

/** esbuild's options for the page: one ES module for browsers, `effect-mqtt` resolved to its sources. */
export const options: esbuild.BuildOptions = {
  entryPoints: [Path.join(here, "main.ts")],
  bundle: true,
  platform: "browser",
  format: "esm",
  target: "es2022",
  // a user's bundler resolves "effect-mqtt/browser" to dist/; in this repository, to src/
  conditions: ["effect-mqtt-source"],
  logLevel: "warning"
}

/** The page's files: index.html and the bundled main.js (`plugins` are added to esbuild's). */
export const bundle = async (
  plugins: ReadonlyArray<esbuild.Plugin> = []
): Promise<{ readonly "index.html": string; readonly "main.js": string }> => {
  const result = await esbuild.build({ ...options, plugins: [...plugins], write: false })
  return {
    "index.html": Fs.readFileSync(Path.join(here, "index.html"), "utf8"),
    "main.js": result.outputFiles[0].text
  }
}

const serve = async (files: Record<string, string>) => {
  const aedes = await Aedes.createBroker()
  const broker = Http.createServer()
  new WebSocketServer({ server: broker, handleProtocols: (protocols) => protocols.has("mqtt") ? "mqtt" : false })
    .on("connection", (ws, request) => {
      const stream = createWebSocketStream(ws)
      stream.on("error", () => {})
      aedes.handle(stream as unknown as Parameters<Aedes["handle"]>[0], request)
    })
  const page = Http.createServer((request, response) => {
    const name = new URL(request.url ?? "/", "http://localhost").pathname.slice(1) || "index.html"
    const body = files[name]
    if (body === undefined) return void response.writeHead(404).end()
    response.writeHead(200, { "content-type": name.endsWith(".js") ? "text/javascript" : "text/html" }).end(body)
  })
  const listen = (server: Http.Server) =>
    new Promise<number>((resolve) =>
      server.listen(0, "127.0.0.1", () => resolve((server.address() as Net.AddressInfo).port))
    )
  const brokerPort = await listen(broker)
  const pagePort = await listen(page)
  console.log(`open http://127.0.0.1:${pagePort}/?url=ws://127.0.0.1:${brokerPort}/mqtt (Ctrl-C stops)`)
}

if (import.meta.main) {
  const files = await bundle()
  const dist = Path.join(here, "dist")
  Fs.mkdirSync(dist, { recursive: true })
  for (const [name, text] of Object.entries(files)) Fs.writeFileSync(Path.join(dist, name), text)
  console.log(`wrote ${Path.relative(process.cwd(), dist)}/index.html and main.js`)
  if (!process.argv.includes("--build")) await serve(files)
}
