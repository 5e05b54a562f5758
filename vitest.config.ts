import * as Path from "node:path"
import { defineConfig } from "vitest/config"

// Node.js's compile cache for the test workers and every Node.js process the tests start (the examples, the
// fixtures, the command line): each file's stripped TypeScript and compiled code is kept on disk by the first
// process that loads it, and the many later ones that load the same files skip that work. It changes nothing
// that runs, only how much CPU the start of each process takes.
process.env.NODE_COMPILE_CACHE ??= Path.join(import.meta.dirname, "node_modules", ".cache", "node-compile-cache")

// "effect-mqtt", imported by the tests themselves, resolves to src/*.ts through this export condition instead of
// the built dist/ (see "exports" in package.json); the others are vitest's defaults for Node.
const conditions = ["effect-mqtt-source", "node", "development|production"]

export default defineConfig({
  resolve: { conditions },
  ssr: { resolve: { conditions } },
  test: {
    include: ["test/**/*.test.ts", "docs/examples/**/*.test.ts"],
    // bundles the command line once for the tests that run it (test/support/cli.ts)
    globalSetup: ["test/support/globalSetup.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    fileParallelism: true,
    maxWorkers: 2
  }
})
