/**
 * The checks `npm test` makes before its tests: formatting (dprint), types (tsc, twice) and the API reference
 * with its examples (docgen). They read the sources and write nothing the others read (docgen writes
 * `api-docs/`), so they run at the same time: on two cores that takes about half as long as one after the other.
 * Each check's output is printed whole once it ends; the exit code is 1 if any check failed.
 */
import { spawn } from "node:child_process"

const checks: ReadonlyArray<readonly [string, ...Array<string>]> = [
  ["docgen"],
  ["tsc", "--noEmit", "-p", "tsconfig.json"],
  ["tsc", "--noEmit", "-p", "examples/browser/tsconfig.json"],
  ["dprint", "check"]
]

const run = ([command, ...args]: readonly [string, ...Array<string>]): Promise<boolean> =>
  new Promise((resolve) => {
    const name = [command, ...args].join(" ")
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] })
    const output: Array<Buffer> = []
    child.stdout.on("data", (chunk: Buffer) => output.push(chunk))
    child.stderr.on("data", (chunk: Buffer) => output.push(chunk))
    const end = (ok: boolean, why: string) => {
      process.stdout.write(`> ${name}: ${why}\n${Buffer.concat(output).toString("utf8")}`)
      resolve(ok)
    }
    child.once("error", (error) => end(false, `failed to start: ${error.message}`))
    child.once("close", (code, signal) => end(code === 0, code === 0 ? "ok" : `failed (${signal ?? code})`))
  })

const results = await Promise.all(checks.map(run))
if (results.includes(false)) process.exitCode = 1
