/**
 * README.md's TypeScript snippets compile: each ```ts block is type-checked as a module of its own, placed at the
 * repository's root (so that "effect-mqtt" resolves to src/ as in the tests), with the repository's compiler
 * options. A snippet that no longer matches the API fails here, with the README line of the error.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { type Block, snippets, typeCheck as typeCheckAt } from "./support/snippets.ts"

const root = Path.resolve(import.meta.dirname, "..")
const readme = Path.join(root, "README.md")

const typeCheck = (found: ReadonlyArray<Block>) =>
  typeCheckAt(found.map(({ code, line }) => ({ source: "README.md", line, code })))

describe("README.md", () => {
  it("finds the ```ts blocks, and only those", () => {
    const found = snippets(
      "text\n```ts\nconst a = 1\n```\n```sh\nnpm test\n```\n```ts\nconst b = 2\nconst c = 3\n```\n"
    )
    assert.deepStrictEqual(found, [
      { lang: "ts", line: 3, code: "const a = 1\n" },
      { lang: "ts", line: 9, code: "const b = 2\nconst c = 3\n" }
    ])
  })

  it("reports a snippet that does not compile, at its README line", () => {
    const errors = typeCheck([
      {
        lang: "ts",
        line: 40,
        code: "import { Schedule } from \"effect\"\n\nexport const s = Schedule.upTo(\"5 minutes\")\n"
      }
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
