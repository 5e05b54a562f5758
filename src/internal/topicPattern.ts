/**
 * Topic patterns with named segments: `sensors/{deviceId}/temperature`, and a trailing `{rest...}` for `#`.
 * Parsing, the subscription filter, extracting the parameters from a topic name, and formatting a topic name
 * from parameters. Plain synchronous code: extraction runs once per received message.
 *
 * @internal
 */
import * as Topic from "./topic.ts"

/** One level of a pattern. */
export type Segment =
  | { readonly _tag: "Literal"; readonly value: string }
  | { readonly _tag: "Param"; readonly name: string }
  | { readonly _tag: "Rest"; readonly name: string }

/** A parsed pattern; `problem` says why it is invalid (then nothing is sent with it). */
export interface Pattern {
  readonly source: string
  readonly segments: ReadonlyArray<Segment>
  /** The subscription filter: `+` for each `{name}`, `#` for `{rest...}`. */
  readonly filter: string
  readonly names: ReadonlyArray<string>
  readonly problem: string | undefined
}

/** The parameters of a topic name: a string per `{name}`, the levels of the tail for `{rest...}`. */
export type Params = Readonly<Record<string, string | ReadonlyArray<string>>>

const NAME = /^[A-Za-z_$][A-Za-z0-9_$]*$/

const parseSegment = (level: string, last: boolean): Segment | string => {
  if (level.startsWith("{") && level.endsWith("}")) {
    const inner = level.slice(1, -1)
    const rest = inner.endsWith("...")
    const name = rest ? inner.slice(0, -3) : inner
    if (!NAME.test(name)) return `"${level}" is not a valid parameter: a name is letters, digits, "_" or "$"`
    if (rest && !last) return `the tail parameter "${level}" must be the last level`
    return rest ? { _tag: "Rest", name } : { _tag: "Param", name }
  }
  if (level.includes("{") || level.includes("}")) {
    return `"${level}": a parameter must occupy a whole level, as "{name}"`
  }
  if (level.includes("+") || level.includes("#")) {
    return `"${level}": use a named parameter ("{name}" or "{name...}") instead of a wildcard`
  }
  return { _tag: "Literal", value: level }
}

/** Parses a pattern; never throws: an invalid pattern carries its `problem`. */
export const parse = (source: string): Pattern => {
  if (typeof source !== "string") {
    // a value of another type (from untyped code) is an invalid pattern too, never a throw
    const kind = source === null ? "null" : Array.isArray(source) ? "an array" : `of type ${typeof source}`
    return { source: "", segments: [], filter: "", names: [], problem: `a pattern must be a string, not ${kind}` }
  }
  const invalid = (problem: string): Pattern => ({ source, segments: [], filter: source, names: [], problem })
  if (source.length === 0) return invalid("a pattern must not be empty")
  if (source.startsWith("$share/")) {
    return invalid("a pattern must not start with $share/: give the share group as a subscribe option")
  }
  const levels = source.split("/")
  const segments: Array<Segment> = []
  const names: Array<string> = []
  for (let i = 0; i < levels.length; i++) {
    const segment = parseSegment(levels[i], i === levels.length - 1)
    if (typeof segment === "string") return invalid(segment)
    if (segment._tag !== "Literal") {
      if (names.includes(segment.name)) return invalid(`the parameter "${segment.name}" appears twice`)
      names.push(segment.name)
    }
    segments.push(segment)
  }
  const filter = segments.map((s) => s._tag === "Literal" ? s.value : s._tag === "Param" ? "+" : "#").join("/")
  const problem = Topic.filterProblem(filter)
  if (problem !== undefined) return invalid(`its filter "${filter}" ${problem}`)
  return { source, segments, filter, names, problem: undefined }
}

/**
 * The parameters of `topic` when it matches the pattern, `undefined` otherwise. Follows the filter's matching
 * rules, `$` included: a pattern that starts with a parameter does not match a topic that starts with `$`
 * [MQTT-4.7.2-1]. A tail matches the parent level too: `logs/{rest...}` gives `rest: []` for `logs`.
 */
export const match = (pattern: Pattern, topic: string): Params | undefined => {
  if (pattern.problem !== undefined || !Topic.matches(topic, pattern.filter)) return undefined
  const levels = topic.split("/")
  const params: Record<string, string | ReadonlyArray<string>> = {}
  const segments = pattern.segments
  for (let i = 0; i < segments.length; i++) {
    const segment = segments[i]
    if (segment._tag === "Param") params[segment.name] = levels[i]
    else if (segment._tag === "Rest") params[segment.name] = levels.slice(i)
  }
  return params
}

/** Why a level given as a parameter cannot be sent, or `undefined`. */
const levelProblem = (level: unknown): string | undefined => {
  if (typeof level !== "string") return "must be a string"
  if (level.length === 0) return "must not be empty"
  if (level.includes("/")) return `must not contain "/"`
  if (level.includes("+") || level.includes("#")) return `must not contain the wildcards "+" or "#"`
  return undefined
}

/**
 * Why a parameter's level cannot be the first level of a topic name, or `undefined`: a topic starting with `$` is
 * not matched by the pattern's filter, whose first level is then a wildcard [MQTT-4.7.2-1].
 */
const dollarProblem = (pattern: Pattern, level: string): string | undefined =>
  level.startsWith("$")
    ? `must not start with "$" as the first level: the filter "${pattern.filter}" does not match a topic that ` +
      `starts with "$" [MQTT-4.7.2-1]`
    : undefined

/** A parameter that cannot be sent: which one and why. */
export interface ParamProblem {
  readonly param: string
  readonly reason: string
}

/**
 * The topic name for `params`, or the problem with one of them. Each `{name}` must be a non-empty string
 * without `/`, `+` or `#`; a tail is an array of such levels (empty: the parent level). A parameter that makes the
 * first level must not start with `$`: the pattern's filter, which starts with a wildcard there, never matches
 * such a topic [MQTT-4.7.2-1].
 */
export const format = (pattern: Pattern, params: Params): string | ParamProblem => {
  if (pattern.problem !== undefined) return { param: "", reason: `the pattern is invalid: ${pattern.problem}` }
  const levels: Array<string> = []
  for (const segment of pattern.segments) {
    if (segment._tag === "Literal") {
      levels.push(segment.value)
      continue
    }
    const value = (params as Record<string, unknown> | undefined)?.[segment.name]
    if (segment._tag === "Param") {
      const problem = levelProblem(value) ?? (levels.length === 0 ? dollarProblem(pattern, value as string) : undefined)
      if (problem !== undefined) return { param: segment.name, reason: problem }
      levels.push(value as string)
      continue
    }
    if (!Array.isArray(value)) return { param: segment.name, reason: "must be an array of levels" }
    for (let i = 0; i < value.length; i++) {
      const problem = levelProblem(value[i]) ??
        (levels.length === 0 ? dollarProblem(pattern, value[i] as string) : undefined)
      if (problem !== undefined) return { param: segment.name, reason: `level ${i} ${problem}` }
      levels.push(value[i])
    }
  }
  const topic = levels.join("/")
  const problem = Topic.nameProblem(topic)
  return problem === undefined ? topic : { param: "", reason: `the topic "${topic}" ${problem}` }
}
