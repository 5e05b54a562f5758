/**
 * The check that code bundles for browsers with no Node.js module: an esbuild plugin that fails the build on any
 * import of a Node.js built-in, and a test for `Buffer` named in the output. Used by test/browser.test.ts on the
 * sources and by test/package.test.ts on the packed tarball.
 */
import type * as esbuild from "esbuild"
import { builtinModules } from "node:module"
import * as Path from "node:path"

const builtins = new Set(builtinModules)

/** Whether an import names a Node.js built-in module: `node:*`, `buffer`, `fs/promises`... */
export const isBuiltin = (path: string): boolean => path.startsWith("node:") || builtins.has(path.split("/")[0])

/** Fails the build on any import of a Node.js built-in, naming it and its importer (relative to `root`). */
export const noNodeBuiltins = (root: string): esbuild.Plugin => ({
  name: "no-node-builtins",
  setup(build) {
    build.onResolve({ filter: /.*/ }, (args) =>
      isBuiltin(args.path)
        ? { errors: [{ text: `Node.js built-in "${args.path}" imported by ${Path.relative(root, args.importer)}` }] }
        : undefined)
  }
})

/** `Buffer` as an identifier of its own (not `ArrayBuffer`, not `AckBuffer`). */
export const namesBuffer = /(?<![\w$])Buffer(?![\w$])/

/** The npm packages whose files an esbuild metafile lists. */
export const packagesOf = (metafile: esbuild.Metafile): Set<string> =>
  new Set(
    Object.keys(metafile.inputs).flatMap((input) => {
      const match = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(input)
      return match === null ? [] : [match[1]]
    })
  )
