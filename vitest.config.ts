import { defineConfig } from "vitest/config"

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
