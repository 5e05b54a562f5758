/**
 * The documented surface: every export of the public modules (src/*.ts, not src/internal) has a doc comment with
 * `@since`, and so has every member a user can reach through them: interface and type literal properties, class
 * fields, getters and methods, and the fields of the errors (the struct given to `Schema.TaggedError`). The API
 * reference (`npm run docs`, @effect/docgen) is generated from these comments; docgen itself checks `@since` on
 * exports but not members.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"
import ts from "typescript"

const src = Path.resolve(import.meta.dirname, "..", "src")
const modules = Fs.readdirSync(src).filter((name) => name.endsWith(".ts")).sort()

const docsOf = (node: ts.Node): ReadonlyArray<ts.JSDoc> =>
  ts.getJSDocCommentsAndTags(node).filter((doc): doc is ts.JSDoc => ts.isJSDoc(doc))

const hasDoc = (node: ts.Node): boolean => docsOf(node).some((doc) => doc.comment !== undefined || doc.tags)

const hasSince = (node: ts.Node): boolean =>
  docsOf(node).some((doc) => doc.tags?.some((tag) => tag.tagName.text === "since") === true)

const isExported = (node: ts.Node): boolean =>
  ts.canHaveModifiers(node) && ts.getModifiers(node)?.some((m) => m.kind === ts.SyntaxKind.ExportKeyword) === true

const isHidden = (node: ts.Node): boolean =>
  ts.canHaveModifiers(node) &&
  ts.getModifiers(node)?.some((m) =>
      m.kind === ts.SyntaxKind.PrivateKeyword || m.kind === ts.SyntaxKind.ProtectedKeyword
    ) === true

const memberName = (member: ts.Node & { readonly name?: ts.PropertyName }, source: ts.SourceFile): string =>
  member.name === undefined ? "constructor" : member.name.getText(source)

/** The undocumented members of a type, recursing into inline object types (`{ ... }`) and unions of them. */
const typeGaps = (type: ts.TypeNode | undefined, path: string, source: ts.SourceFile): Array<string> => {
  if (type === undefined) return []
  if (ts.isUnionTypeNode(type) || ts.isIntersectionTypeNode(type)) {
    return type.types.flatMap((t) => typeGaps(t, path, source))
  }
  if (ts.isParenthesizedTypeNode(type)) return typeGaps(type.type, path, source)
  if (ts.isTypeLiteralNode(type)) return membersGaps(type.members, path, source)
  return []
}

const membersGaps = (
  members: ReadonlyArray<ts.TypeElement>,
  path: string,
  source: ts.SourceFile
): Array<string> =>
  members.flatMap((member) => {
    const name = memberName(member, source)
    // a discriminant names itself
    if (name === "_tag") return []
    const own = hasDoc(member) ? [] : [`${path}.${name}`]
    const nested = ts.isPropertySignature(member) ? typeGaps(member.type, `${path}.${name}`, source) : []
    return [...own, ...nested]
  })

/** The fields object given to `Schema.TaggedError<...>()("Tag", { ... })`, when the class is built so. */
const schemaFields = (node: ts.ClassDeclaration): ts.ObjectLiteralExpression | undefined => {
  const base = node.heritageClauses?.[0]?.types[0]?.expression
  if (base === undefined || !ts.isCallExpression(base)) return undefined
  const fields = base.arguments[0]
  return fields !== undefined && ts.isObjectLiteralExpression(fields) ? fields : undefined
}

const classGaps = (node: ts.ClassDeclaration, path: string, source: ts.SourceFile): Array<string> => {
  const gaps: Array<string> = []
  for (const member of node.members) {
    if (isHidden(member) || ts.isSemicolonClassElement(member)) continue
    if (member.name !== undefined && ts.isPrivateIdentifier(member.name)) continue
    const name = memberName(member, source)
    if (!hasDoc(member) || !hasSince(member)) gaps.push(`${path}.${name} (doc comment with @since)`)
  }
  for (const field of schemaFields(node)?.properties ?? []) {
    if (!hasDoc(field)) gaps.push(`${path}.${field.name?.getText(source) ?? "?"}`)
  }
  return gaps
}

const moduleGaps = (file: string): Array<string> => {
  const source = ts.createSourceFile(file, Fs.readFileSync(Path.join(src, file), "utf8"), ts.ScriptTarget.ES2022, true)
  const gaps: Array<string> = []
  const first = source.statements[0]
  if (first === undefined || !hasSince(first)) gaps.push(`${file}: module doc comment with @since`)
  for (const statement of source.statements) {
    if (ts.isExportDeclaration(statement)) {
      if (!hasSince(statement)) gaps.push(`${file}: ${statement.getText(source)} (doc comment with @since)`)
      continue
    }
    if (!isExported(statement)) continue
    const names = ts.isVariableStatement(statement)
      ? statement.declarationList.declarations.map((d) => d.name.getText(source))
      : [(statement as ts.DeclarationStatement).name?.getText(source) ?? "default"]
    const path = `${file}: ${names.join(", ")}`
    if (!hasDoc(statement) || !hasSince(statement)) gaps.push(`${path} (doc comment with @since)`)
    if (ts.isInterfaceDeclaration(statement)) gaps.push(...membersGaps(statement.members, path, source))
    if (ts.isTypeAliasDeclaration(statement)) gaps.push(...typeGaps(statement.type, path, source))
    if (ts.isClassDeclaration(statement)) gaps.push(...classGaps(statement, path, source))
  }
  return gaps
}

describe("documentation", () => {
  it("the public modules are the ones package.json exports", () => {
    const pkg = JSON.parse(Fs.readFileSync(Path.join(src, "..", "package.json"), "utf8")) as {
      readonly exports: Record<string, unknown>
    }
    const exported = Object.keys(pkg.exports).filter((key) => key !== "./package.json")
      .map((key) => key === "." ? "index.ts" : `${key.slice(2)}.ts`).sort()
    assert.deepStrictEqual(exported, modules)
  })

  it("every export of a public module, and every member reachable through it, has a doc comment", () => {
    const gaps = modules.flatMap(moduleGaps)
    assert.deepStrictEqual(gaps, [], `undocumented:\n${gaps.join("\n")}`)
  })
})
