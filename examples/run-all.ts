/**
 * Runs every example in order, each in its own Node.js process, and prints its output under a header.
 * Exits with 1 when any example failed. `npm run demo` runs this file.
 *
 * Examples use the broker at `MQTT_URL` when it is set (`memory:` for the in-memory test broker), and otherwise
 * start their own embedded one.
 */
import { spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"

const directory = import.meta.dirname
const examples = Fs.readdirSync(directory).filter((name) => /^\d\d.*\.ts$/.test(name)).sort()

const run = (file: string): Promise<number> =>
  new Promise((resolve) => {
    // The same Node.js binary, the same environment (MQTT_URL included), the output passed straight through;
    // "effect-mqtt" resolves to src/*.ts, not to the built dist/ (see "exports" in package.json).
    const child = spawn(process.execPath, ["--conditions=effect-mqtt-source", Path.join(directory, file)], {
      stdio: "inherit"
    })
    child.once("error", (error) => {
      console.error(error)
      resolve(1)
    })
    child.once("exit", (code, signal) => resolve(code ?? (signal === null ? 1 : 128)))
  })

const failed: Array<string> = []
for (const file of examples) {
  console.log(`\n=== ${file} ===`)
  const code = await run(file)
  if (code !== 0) {
    console.log(`--- ${file} failed with exit code ${code}`)
    failed.push(file)
  }
}

console.log(
  failed.length === 0
    ? `\nAll ${examples.length} examples succeeded.`
    : `\n${failed.length} of ${examples.length} examples failed: ${failed.join(", ")}`
)
process.exitCode = failed.length === 0 ? 0 : 1
