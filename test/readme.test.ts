/**
 * README.md's TypeScript snippets compile: each ```ts block is type-checked as a module of its own, placed at the
 * repository's root (so that "effect-mqtt" resolves to src/ as in the tests), with the repository's compiler
 * options. A snippet that no longer matches the API fails here, with the README line of the error.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"
import ts from "typescript"

const root = Path.resolve(import.meta.dirname, "..")
const readme = Path.join(root, "README.md")

interface Snippet {
  /** The README line of the snippet's first line of code (1-based). */
  readonly line: number
  readonly code: string
}

/** The ```ts blocks of a Markdown text. */
export const snippets = (markdown: string): ReadonlyArray<Snippet> => {
  const found: Array<Snippet> = []
  const lines = markdown.split("\n")
  for (let i = 0; i < lines.length; i++) {
    if (!/^```(ts|typescript)\s*$/.test(lines[i]!)) continue
    const start = i + 1
    let end = start
    while (end < lines.length && !/^```\s*$/.test(lines[end]!)) end++
    found.push({ line: start + 1, code: lines.slice(start, end).join("\n") + "\n" })
    i = end
  }
  return found
}

/** Type-checks the snippets as files at the repository's root; returns the errors with their README lines. */
const typeCheck = (blocks: ReadonlyArray<Snippet>): ReadonlyArray<string> => {
  const configFile = ts.readConfigFile(Path.join(root, "tsconfig.json"), (file) => ts.sys.readFile(file))
  const parsed = ts.parseJsonConfigFileContent(configFile.config, ts.sys, root)
  const options: ts.CompilerOptions = {
    ...parsed.options,
    noEmit: true,
    // a snippet may define something only to show it
    noUnusedLocals: false,
    noUnusedParameters: false
  }
  const files = new Map(blocks.map((block, i) => [Path.join(root, `README.snippet-${i}.ts`), block] as const))
  const host = ts.createCompilerHost(options)
  const getSourceFile = host.getSourceFile
  host.getSourceFile = (fileName, languageVersion, onError, shouldCreate) => {
    const snippet = files.get(fileName)
    return snippet !== undefined
      ? ts.createSourceFile(fileName, snippet.code, languageVersion, true)
      : getSourceFile.call(host, fileName, languageVersion, onError, shouldCreate)
  }
  const fileExists = host.fileExists
  host.fileExists = (fileName) => files.has(fileName) || fileExists.call(host, fileName)
  const program = ts.createProgram({ rootNames: [...files.keys()], options, host })
  return ts.getPreEmitDiagnostics(program).map((diagnostic) => {
    const text = ts.flattenDiagnosticMessageText(diagnostic.messageText, "\n")
    const file = diagnostic.file
    const snippet = file === undefined ? undefined : files.get(file.fileName)
    if (file === undefined || diagnostic.start === undefined) return text
    const { character, line } = file.getLineAndCharacterOfPosition(diagnostic.start)
    return snippet === undefined
      ? `${Path.relative(root, file.fileName)}:${line + 1}:${character + 1}: ${text}`
      : `README.md:${snippet.line + line}:${character + 1}: ${text}`
  })
}

describe("README.md", () => {
  it("finds the ```ts blocks, and only those", () => {
    const found = snippets(
      "text\n```ts\nconst a = 1\n```\n```sh\nnpm test\n```\n```ts\nconst b = 2\nconst c = 3\n```\n"
    )
    assert.deepStrictEqual(found, [
      { line: 3, code: "const a = 1\n" },
      { line: 9, code: "const b = 2\nconst c = 3\n" }
    ])
  })

  it("reports a snippet that does not compile, at its README line", () => {
    const errors = typeCheck([
      { line: 40, code: "import { Schedule } from \"effect\"\n\nexport const s = Schedule.upTo(\"5 minutes\")\n" }
    ])
    assert.strictEqual(errors.length, 1, errors.join("\n"))
    assert.match(errors[0]!, /^README\.md:42:/)
  })

  it("every TypeScript snippet type-checks against the current API", () => {
    const blocks = snippets(Fs.readFileSync(readme, "utf8"))
    assert.isAtLeast(blocks.length, 15)
    const errors = typeCheck(blocks)
    assert.deepStrictEqual(errors, [], errors.join("\n"))
  })
})
