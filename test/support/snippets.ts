/**
 * Code blocks of Markdown files (README.md, docs/*.md): finding them, and type-checking the TypeScript ones with
 * the repository's compiler options, each as a module of its own, so that a snippet that no longer matches the API
 * fails a test with the Markdown line of the error.
 */
import * as Path from "node:path"
import ts from "typescript"

const root = Path.resolve(import.meta.dirname, "..", "..")

/** A fenced code block of a Markdown text. */
export interface Block {
  /** The info string's first word: `ts`, `sh`... (empty when there is none). */
  readonly lang: string
  /** The line of the block's first line of code (1-based). */
  readonly line: number
  readonly code: string
  /** The file the block shows whole, when the line before it (blank lines aside) names one:
   * `<!-- example: docs/examples/x.ts -->`. */
  readonly example?: string
}

const EXAMPLE = /^<!-- example: (\S+) -->\s*$/

/** The fenced code blocks (```) of a Markdown text. */
export const blocks = (markdown: string): ReadonlyArray<Block> => {
  const found: Array<Block> = []
  const lines = markdown.split("\n")
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(\S*)/.exec(lines[i]!)
    if (open === null) continue
    const start = i + 1
    let end = start
    while (end < lines.length && !/^```\s*$/.test(lines[end]!)) end++
    let before = i - 1
    while (before >= 0 && lines[before]!.trim() === "") before--
    const example = before >= 0 ? EXAMPLE.exec(lines[before]!)?.[1] : undefined
    found.push({
      lang: open[1]!,
      line: start + 1,
      code: lines.slice(start, end).join("\n") + "\n",
      ...(example === undefined ? {} : { example })
    })
    i = end
  }
  return found
}

/** The ```ts (or ```typescript) blocks of a Markdown text. */
export const snippets = (markdown: string): ReadonlyArray<Block> =>
  blocks(markdown).filter((block) => block.lang === "ts" || block.lang === "typescript")

/** A snippet to type-check, and where it comes from. */
export interface Located {
  /** The Markdown file, as errors name it (`README.md`, `docs/publishing.md`). */
  readonly source: string
  /** The source's line of the snippet's first line of code (1-based). */
  readonly line: number
  readonly code: string
  /** The directory the snippet is compiled in, relative to the repository (its relative imports start there).
   * Default: the repository's root, where "effect-mqtt" resolves to src/ as in the tests. */
  readonly directory?: string
}

/**
 * Type-checks the snippets as files of their directories, with the repository's compiler options; returns the
 * errors, each with the Markdown file and line of the snippet (`docs/publishing.md:12:3: ...`).
 */
export const typeCheck = (located: ReadonlyArray<Located>): ReadonlyArray<string> => {
  const configFile = ts.readConfigFile(Path.join(root, "tsconfig.json"), (file) => ts.sys.readFile(file))
  const parsed = ts.parseJsonConfigFileContent(configFile.config, ts.sys, root)
  const options: ts.CompilerOptions = {
    ...parsed.options,
    noEmit: true,
    // a snippet may define something only to show it
    noUnusedLocals: false,
    noUnusedParameters: false
  }
  const files = new Map(
    located.map((snippet, i) =>
      [Path.join(root, snippet.directory ?? "", `.snippet-${i}-${Path.basename(snippet.source)}.ts`), snippet] as const
    )
  )
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
      : `${snippet.source}:${snippet.line + line}:${character + 1}: ${text}`
  })
}
