/**
 * The guide (docs/*.md) stays true to the code: every ```ts block type-checks against the current API, a block
 * that shows an example (`<!-- example: docs/examples/x.ts -->` before it) is that file, whole, every example is
 * shown on a page, and the links between the pages and the README lead somewhere. The examples themselves are run
 * by test/docs-examples.test.ts.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { type Block, blocks, type Located, typeCheck } from "./support/snippets.ts"

const root = Path.resolve(import.meta.dirname, "..")
const docs = Path.join(root, "docs")
const pages = Fs.readdirSync(docs).filter((name) => name.endsWith(".md")).sort()
const examples = Fs.readdirSync(Path.join(docs, "examples")).filter((name) => !name.startsWith("_")).sort()
const read = (file: string) => Fs.readFileSync(Path.join(root, file), "utf8")

/** Examples that run in a browser: type-checked with the DOM's types by examples/browser/tsconfig.json (npm test),
 * not with Node's here; the page must still show them whole. */
const isBrowserExample = (block: Block) => block.example?.startsWith("examples/browser/") === true

const blocksOf = (page: string): ReadonlyArray<Block> => blocks(read(`docs/${page}`))

const isTypeScript = (block: Block) => block.lang === "ts" || block.lang === "typescript"

/** The ts blocks of a page, each compiled where its example lives (so that `./_broker.ts` resolves). */
const located = (page: string, found: ReadonlyArray<Block>): ReadonlyArray<Located> =>
  found.filter((block) => isTypeScript(block) && !isBrowserExample(block)).map(({ code, example, line }) => ({
    source: `docs/${page}`,
    line,
    code,
    ...(example === undefined ? {} : { directory: Path.dirname(example) })
  }))

/** What is wrong with the blocks that show an example file: a different text, a wrong language, no file. */
const exampleMismatches = (page: string, found: ReadonlyArray<Block>): ReadonlyArray<string> =>
  found.flatMap(({ code, example, lang, line }) => {
    if (example === undefined) return []
    const where = `docs/${page}:${line}`
    if (!Fs.existsSync(Path.join(root, example))) return [`${where}: ${example} does not exist`]
    const expectedLang = example.endsWith(".sh") ? "sh" : "ts"
    if (lang !== expectedLang) return [`${where}: ${example} is shown as \`${lang}\`, not \`${expectedLang}\``]
    return code === read(example)
      ? []
      : [`${where}: the block is not ${example} as it is: copy the file into the block`]
  })

/** The relative links of a Markdown text (to files, without their #fragment), outside code blocks. */
const relativeLinks = (markdown: string): ReadonlyArray<string> =>
  [...markdown.replace(/^```[^]*?^```$/gm, "").matchAll(/\]\(([^)#\s]+)(#[^)]*)?\)/g)]
    .map((match) => match[1]!)
    .filter((target) => !/^[a-z]+:/.test(target))

describe("the guide, docs/*.md", () => {
  it("finds the example a block shows, blank lines between them aside", () => {
    const found = blocks("<!-- example: docs/examples/a.ts -->\n\n```ts\nconst a = 1\n```\n```ts\nconst b = 2\n```\n")
    assert.deepStrictEqual(found.map((block) => block.example), ["docs/examples/a.ts", undefined])
  })

  it("reports a block that differs from the example it names, or names a missing file", () => {
    const example = "docs/examples/connecting.ts"
    const errors = exampleMismatches("x.md", [
      { lang: "ts", line: 3, code: read(example) },
      { lang: "ts", line: 10, code: read(example).replace("MQTT version", "version"), example },
      { lang: "sh", line: 20, code: read(example), example },
      { lang: "ts", line: 30, code: "", example: "docs/examples/missing.ts" },
      { lang: "ts", line: 40, code: read(example), example }
    ])
    assert.deepStrictEqual(errors, [
      `docs/x.md:10: the block is not ${example} as it is: copy the file into the block`,
      `docs/x.md:20: ${example} is shown as \`sh\`, not \`ts\``,
      "docs/x.md:30: docs/examples/missing.ts does not exist"
    ])
  })

  it("every ```ts block type-checks against the current API", () => {
    const snippets = pages.flatMap((page) => located(page, blocksOf(page)))
    assert.isAtLeast(snippets.length, 25)
    const errors = typeCheck(snippets)
    assert.deepStrictEqual(errors, [], errors.join("\n"))
  })

  it("a block that shows an example is the example file, whole", () => {
    const errors = pages.flatMap((page) => exampleMismatches(page, blocksOf(page)))
    assert.deepStrictEqual(errors, [], errors.join("\n"))
  })

  it("every example in docs/examples is shown on a page", () => {
    const shown = new Set(pages.flatMap((page) => blocksOf(page).flatMap((block) => block.example ?? [])))
    const missing = examples.map((name) => `docs/examples/${name}`).filter((file) => !shown.has(file))
    assert.deepStrictEqual(missing, [])
  })

  it("the index and the README link every page, and every relative link leads to a file", () => {
    const index = new Set(relativeLinks(read("docs/index.md")))
    const readme = new Set(relativeLinks(read("README.md")))
    for (const page of pages.filter((page) => page !== "index.md")) {
      assert.isTrue(index.has(page), `docs/index.md does not link ${page}`)
      assert.isTrue(readme.has(`docs/${page}`), `README.md does not link docs/${page}`)
    }
    assert.isTrue(readme.has("docs/index.md"), "README.md does not link docs/index.md")
    const broken = ["README.md", ...pages.map((page) => `docs/${page}`)].flatMap((file) =>
      relativeLinks(read(file))
        .map((target) => Path.relative(root, Path.resolve(root, Path.dirname(file), target)))
        .filter((target) => !Fs.existsSync(Path.join(root, target)))
        .map((target) => `${file} -> ${target}`)
    )
    assert.deepStrictEqual(broken, [])
  })

  it("every relative link also leads to a file of the published package (package.json \"files\")", () => {
    const shipped = shippedBy(JSON.parse(read("package.json")).files)
    const missing = ["README.md", ...pages.map((page) => `docs/${page}`)].flatMap((file) =>
      relativeLinks(read(file))
        .map((target) => Path.relative(root, Path.resolve(root, Path.dirname(file), target)))
        .filter((target) => !filesUnder(target).some(shipped))
        .map((target) => `${file} -> ${target}`)
    )
    assert.deepStrictEqual(missing, [])
  })
})

/** Whether npm packs a file (a path from the root) for the patterns of package.json "files". */
const shippedBy = (patterns: ReadonlyArray<string>) => {
  const regexps = patterns.map((pattern) =>
    new RegExp(`^${pattern.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replace(/\*/g, "[^/]*")}(/.*)?$`)
  )
  const always = new Set(["README.md", "LICENSE", "package.json"])
  return (file: string) => always.has(file) || regexps.some((regexp) => regexp.test(file))
}

/** The files at a path of the repository: the file itself, or every file under a directory. */
const filesUnder = (target: string): ReadonlyArray<string> => {
  const path = Path.join(root, target)
  if (!Fs.existsSync(path)) return []
  if (!Fs.statSync(path).isDirectory()) return [target]
  return Fs.readdirSync(path, { recursive: true, encoding: "utf8" })
    .filter((name) => Fs.statSync(Path.join(path, name)).isFile())
    .map((name) => Path.join(target, name))
}
