/**
 * Run once by vitest before any test file (`globalSetup` in vitest.config.ts): bundles the command line
 * (src/cli/main.ts and everything it imports) into one JavaScript file with esbuild, for the tests that run
 * `effect-mqtt` as a child process (test/support/cli.ts). Each of those processes then loads one file instead of
 * stripping the types of the whole source tree and resolving hundreds of modules: about a quarter of the CPU
 * time per run, and there are about a hundred runs.
 *
 * The bundle is the same code as the source: the same export conditions resolve `effect-mqtt`'s imports, and it
 * reads the version from a copy of package.json two levels up, as src/cli/main.ts and dist/cli/main.js do.
 * The source itself is still run by Node.js directly by the examples' tests, and the built bin by the package's.
 */
import * as Esbuild from "esbuild"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import type { TestProject } from "vitest/node"

declare module "vitest" {
  export interface ProvidedContext {
    /** The bundled command line: test/support/cli.ts runs it. */
    readonly cliBundle: string
  }
}

const ROOT = Path.join(import.meta.dirname, "..", "..")

export default async function setup(project: TestProject): Promise<() => void> {
  const directory = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-mqtt-cli-bundle-"))
  const outfile = Path.join(directory, "src", "cli", "main.mjs")
  Fs.copyFileSync(Path.join(ROOT, "package.json"), Path.join(directory, "package.json"))
  await Esbuild.build({
    entryPoints: [Path.join(ROOT, "src", "cli", "main.ts")],
    outfile,
    bundle: true,
    platform: "node",
    format: "esm",
    conditions: ["effect-mqtt-source"],
    // the CommonJS packages bundled (ws, mqtt-packet's dependencies) call require for Node.js's built-ins
    banner: {
      js:
        "import { createRequire as __bundleRequire } from 'node:module'; const require = __bundleRequire(import.meta.url);"
    },
    logLevel: "warning"
  })
  project.provide("cliBundle", outfile)
  return () => Fs.rmSync(directory, { recursive: true, force: true })
}
