import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import * as fc from "fast-check"
import * as MqttError from "../src/MqttError.ts"
import * as Topic from "../src/Topic.ts"

interface ValidationCase {
  readonly label: string
  readonly input: string
  readonly valid: boolean
}

const c = (input: string, valid: boolean, label: string = JSON.stringify(input)): ValidationCase => ({
  label,
  input,
  valid
})

// "é" is 2 bytes in UTF-8, "€" 3 bytes, "😀" 4 bytes (a surrogate pair in UTF-16).
const lengthCases = (wildcardFree: boolean): Array<ValidationCase> => [
  c("a".repeat(65_535), true, "65,535 one-byte characters"),
  c("a".repeat(65_536), false, "65,536 one-byte characters"),
  c("é".repeat(32_767) + "a", true, "32,767 two-byte characters and one byte (65,535 bytes)"),
  c("é".repeat(32_768), false, "32,768 two-byte characters (65,536 bytes)"),
  c("€".repeat(21_845), true, "21,845 three-byte characters (65,535 bytes)"),
  c("€".repeat(21_845) + "a", false, "21,845 three-byte characters and one byte (65,536 bytes)"),
  c("😀".repeat(16_383) + "abc", true, "16,383 four-byte characters and 3 bytes (65,535 bytes)"),
  c("😀".repeat(16_383) + "abcd", false, "16,383 four-byte characters and 4 bytes (65,536 bytes)"),
  ...(wildcardFree ? [] : [c("a/".repeat(32_766) + "a/#", true, "65,535 bytes ending in a/#")])
]

const encodingCases: Array<ValidationCase> = [
  c("", false),
  c("a\u0000b", false, "a U+0000 inside a level"),
  c("\u0000", false, "U+0000 alone"),
  c("a/\ud83d", false, "a lone high surrogate at the end"),
  c("\ude00/a", false, "a lone low surrogate at the start"),
  c("a\ud83db", false, "a high surrogate followed by an ASCII character"),
  c("\ude00\ud83d", false, "a low surrogate before a high surrogate"),
  c("😀/€/é", true, "multi-byte characters and a surrogate pair")
]

// MQTT 5 section 4.7.1, 4.7.3 and 4.8.2.
const nameCases: Array<ValidationCase> = [
  c("sport/tennis/player1", true),
  c("sport/tennis/player1/ranking", true),
  c("/finance", true),
  c("sport/", true),
  c("/", true),
  c("//", true),
  c("sport//player1", true),
  c(" ", true),
  c("$SYS/monitor/Clients", true),
  c("$share", true),
  c("sport/tennis/#", false),
  c("#", false),
  c("+", false),
  c("sport/+/player1", false),
  c("sport+", false),
  c("sport#", false),
  ...encodingCases,
  ...lengthCases(true)
]

const filterCases: Array<ValidationCase> = [
  c("sport/tennis/player1/#", true),
  c("sport/#", true),
  c("#", true),
  c("a/#", true),
  c("/#", true),
  c("+", true),
  c("+/+", true),
  c("/+", true),
  c("+/", true),
  c("+/tennis/#", true),
  c("sport/+/player1", true),
  c("a/+/b", true),
  c("$SYS/#", true),
  c("sport/tennis/player1", true),
  c("/", true),
  c("sport/tennis#", false),
  c("a#", false),
  c("#a", false),
  c("sport/tennis/#/ranking", false),
  c("a/#/b", false),
  c("#/a", false),
  c("#/", false),
  c("##", false),
  c("sport+", false),
  c("a+", false),
  c("+a", false),
  c("a/b+", false),
  c("a/+b/c", false),
  c("++", false),
  c("$share/g/a/#", true),
  c("$share/g/#", true),
  c("$share/g/+", true),
  c("$share/consumer1/sport/tennis/+", true),
  c("$share/g//", true),
  c("$share/g/$SYS/#", true),
  c("$share", true),
  c("$share/", false),
  c("$share//a", false),
  c("$share/g", false),
  c("$share/g/", false),
  c("$share/+/a", false),
  c("$share/#/a", false),
  c("$share/g+/a", false),
  c("$share/g#", false),
  c("$share/g/a#", false),
  c("$share/g/#/a", false),
  c("$share/g/a+", false),
  c("$share/g\u0000/a", false, "$share/g<U+0000>/a"),
  c("$share/\ud83d/a", false, "$share/<lone surrogate>/a"),
  ...encodingCases,
  ...lengthCases(false)
]

describe("Topic validation", () => {
  for (const { input, label, valid } of nameCases) {
    it(`${valid ? "accepts" : "rejects"} the topic name ${label}`, () => {
      expect(Topic.isValidName(input)).toBe(valid)
    })
  }

  for (const { input, label, valid } of filterCases) {
    it(`${valid ? "accepts" : "rejects"} the topic filter ${label}`, () => {
      expect(Topic.isValidFilter(input)).toBe(valid)
    })
  }

  it.effect("validateName succeeds with the name itself when it is valid", () =>
    Effect.gen(function*() {
      expect(yield* Topic.validateName("sport/tennis")).toBe("sport/tennis")
    }))

  it.effect("validateFilter succeeds with the filter itself when it is valid", () =>
    Effect.gen(function*() {
      expect(yield* Topic.validateFilter("$share/g/sport/#")).toBe("$share/g/sport/#")
    }))

  it.effect("validateName fails with an InvalidTopicError of kind name that carries the topic and the reason", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Topic.validateName("sport/+"))
      expect(error).toBeInstanceOf(MqttError.InvalidTopicError)
      expect(error._tag).toBe("InvalidTopicError")
      expect(error.topic).toBe("sport/+")
      expect(error.kind).toBe("name")
      expect(error.reason).toMatch(/wildcard/)
      expect(error.message).toContain("sport/+")
      expect(MqttError.isInvalidInput(error)).toBe(true)
    }))

  it.effect("validateFilter fails with an InvalidTopicError of kind filter that carries the filter and the reason", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Topic.validateFilter("sport/#/ranking"))
      expect(error).toBeInstanceOf(MqttError.InvalidTopicError)
      expect(error.topic).toBe("sport/#/ranking")
      expect(error.kind).toBe("filter")
      expect(error.reason).toMatch(/last level/)
    }))

  it.effect("validateName reports the UTF-8 length of a name that is too long", () =>
    Effect.gen(function*() {
      const exit = yield* Effect.exit(Topic.validateName("é".repeat(32_768)))
      expect(Exit.isFailure(exit)).toBe(true)
      const error = yield* Effect.flip(Topic.validateName("é".repeat(32_768)))
      expect(error.reason).toContain("65536 bytes")
    }))

  it.effect("validateFilter explains a shared subscription without a filter", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Topic.validateFilter("$share/g/"))
      expect(error.kind).toBe("filter")
      expect(error.reason).toMatch(/needs a topic filter/)
    }))
})

interface MatchCase {
  readonly topic: string
  readonly filter: string
  readonly matches: boolean
}

const m = (topic: string, filter: string, matches: boolean): MatchCase => ({ topic, filter, matches })

// MQTT 5 sections 4.7.1.2, 4.7.1.3, 4.7.2 and 4.8.2.
const matchCases: Array<MatchCase> = [
  m("sport/tennis/player1", "sport/tennis/player1/#", true),
  m("sport/tennis/player1/ranking", "sport/tennis/player1/#", true),
  m("sport/tennis/player1/score/wimbledon", "sport/tennis/player1/#", true),
  m("sport/tennis/player2", "sport/tennis/player1/#", false),
  m("sport/tennis", "sport/tennis/player1/#", false),
  m("sport", "sport/#", true),
  m("sport/", "sport/#", true),
  m("sports", "sport/#", false),
  m("sport", "#", true),
  m("/", "#", true),
  m("sport/tennis/player1", "sport/tennis/+", true),
  m("sport/tennis/player1/ranking", "sport/tennis/+", false),
  m("sport/tennis", "sport/tennis/+", false),
  m("sport/tennis/", "sport/tennis/+", true),
  m("sport", "sport/+", false),
  m("sport/", "sport/+", true),
  m("/finance", "+/+", true),
  m("/finance", "/+", true),
  m("/finance", "+", false),
  m("finance", "+", true),
  m("finance/", "+", false),
  m("/", "+/+", true),
  m("/", "+", false),
  m("a//b", "a/+/b", true),
  m("a//b", "a//b", true),
  m("a/b", "a//b", false),
  m("a/x/b", "a/+/b", true),
  m("a/x/y/b", "a/+/b", false),
  m("a/b", "a/b", true),
  m("a/b", "a/b/", false),
  m("a/b/", "a/b", false),
  m("a/b", "a/c", false),
  m("a/b", "A/b", false),
  m("ab", "a", false),
  m("a", "ab", false),
  m("$SYS/monitor/Clients", "#", false),
  m("$SYS/monitor/Clients", "+/monitor/Clients", false),
  m("$SYS/monitor/Clients", "$SYS/#", true),
  m("$SYS/monitor/Clients", "$SYS/monitor/+", true),
  m("$SYS", "$SYS/#", true),
  m("$SYS/x", "$SYS/#", true),
  m("$SYS", "+", false),
  m("$", "#", false),
  m("a/$SYS", "a/+", true),
  m("a/$SYS", "#", true),
  m("a/b", "$share/g/a/+", true),
  m("a/b", "$share/g/#", true),
  m("a/b/c", "$share/g/a/+", false),
  m("$SYS/x", "$share/g/#", false),
  m("$SYS/x", "$share/g/$SYS/+", true),
  m("g/a/b", "$share/g/a/+", false),
  m("$share/g/a", "$share/g/a", false),
  m("$share/g/a", "$share/g/$share/g/a", true),
  m("😀/é", "😀/+", true),
  m("😀/é", "😁/+", false)
]

describe("Topic.matches", () => {
  for (const { filter, matches, topic } of matchCases) {
    it(`${JSON.stringify(filter)} ${matches ? "matches" : "does not match"} ${JSON.stringify(topic)} (data-first)`, () => {
      expect(Topic.matches(topic, filter)).toBe(matches)
    })
    it(`${JSON.stringify(filter)} ${matches ? "matches" : "does not match"} ${JSON.stringify(topic)} (data-last)`, () => {
      expect(Topic.matches(filter)(topic)).toBe(matches)
    })
  }

  it("the data-last form is a predicate over topics usable with Array.filter", () => {
    const topics = ["a/b", "a/c", "b/a", "a/b/c", "$SYS/a"]
    expect(topics.filter(Topic.matches("a/+"))).toEqual(["a/b", "a/c"])
    expect(topics.filter((topic) => Topic.matches(topic, "#"))).toEqual(["a/b", "a/c", "b/a", "a/b/c"])
  })
})

describe("Topic.parseShared and Topic.isShared", () => {
  it("parseShared splits $share/{ShareName}/{filter} into the group and the inner filter", () => {
    expect(Topic.parseShared("$share/g/a/#")).toEqual({ group: "g", filter: "a/#" })
    expect(Topic.parseShared("$share/consumer1/sport/tennis/+")).toEqual({
      group: "consumer1",
      filter: "sport/tennis/+"
    })
    expect(Topic.parseShared("$share/g//")).toEqual({ group: "g", filter: "/" })
  })

  it("parseShared returns undefined for ordinary filters and malformed shared subscriptions", () => {
    for (
      const filter of ["a/#", "#", "$share", "$SYS/#", "$sharex/g/a", "$share/", "$share//a", "$share/g", "$share/g/"]
    ) {
      expect(Topic.parseShared(filter)).toBeUndefined()
      expect(Topic.isShared(filter)).toBe(false)
    }
  })

  it("isShared is true for filters of the form $share/{ShareName}/{filter}", () => {
    expect(Topic.isShared("$share/g/a")).toBe(true)
    expect(Topic.isShared("$share/g/#")).toBe(true)
  })
})

// A deliberately plain reference implementation of MQTT 5 section 4.7 and 4.8.2, level by level.
const referenceMatches = (topic: string, filter: string): boolean => {
  const shared = /^\$share\/([^/]+)\/([\s\S]+)$/.exec(filter)
  const inner = shared === null ? filter : shared[2]
  if (topic.startsWith("$") && (inner.startsWith("+") || inner.startsWith("#"))) return false
  const go = (topicLevels: Array<string>, filterLevels: Array<string>): boolean => {
    if (filterLevels.length === 0) return topicLevels.length === 0
    if (filterLevels[0] === "#") return true
    if (topicLevels.length === 0) return false
    return (filterLevels[0] === "+" || filterLevels[0] === topicLevels[0]) &&
      go(topicLevels.slice(1), filterLevels.slice(1))
  }
  return go(topic.split("/"), inner.split("/"))
}

const topicLevel = fc.constantFrom("a", "b", "ab", "", "$SYS", "$")
// An empty string is not a topic name, so `[""]` is left out.
const topicLevels = fc
  .array(topicLevel, { minLength: 1, maxLength: 6 })
  .filter((levels) => levels.length > 1 || levels[0] !== "")

const filterFromLevels = (levels: Array<string>, hash: boolean, shared: boolean): string =>
  (shared ? "$share/g/" : "") + (hash ? [...levels, "#"] : levels).join("/")

// Filters unrelated to the topic: mostly non-matching, with wildcards at every position.
const independentFilter = fc
  .tuple(
    fc.array(fc.constantFrom("a", "b", "", "+", "$SYS", "$"), { minLength: 0, maxLength: 6 }),
    fc.boolean(),
    fc.boolean()
  )
  .filter(([levels, hash]) => hash || levels.join("/") !== "")
  .map(([levels, hash, shared]) => filterFromLevels(levels, hash, shared))

// Filters derived from the topic, so that about half of them match: each level kept, replaced by `+` or
// changed, the tail cut and replaced by `#` or not.
const derivedPair = topicLevels.chain((levels) =>
  fc
    .tuple(
      fc.array(fc.constantFrom("keep", "keep", "plus", "change"), {
        minLength: levels.length,
        maxLength: levels.length
      }),
      fc.integer({ min: 0, max: levels.length + 1 }),
      fc.boolean(),
      fc.boolean()
    )
    .map(([edits, cut, hash, shared]) => {
      const filterLevels = levels
        .map((level, i) => edits[i] === "plus" ? "+" : edits[i] === "change" ? level + "x" : level)
        .slice(0, Math.min(cut, levels.length))
      const topic = levels.join("/")
      // An empty string is not a filter: `#` completes it.
      const useHash = hash || filterLevels.join("/") === ""
      return [topic, filterFromLevels(filterLevels, useHash, shared)] as const
    })
)

const pair = fc.oneof(
  fc.tuple(topicLevels.map((levels) => levels.join("/")), independentFilter),
  derivedPair
)

describe("Topic properties", () => {
  it("matches agrees with a plain level-by-level reference implementation", () => {
    let matched = 0
    let unmatched = 0
    fc.assert(
      fc.property(pair, ([topic, filter]) => {
        const expected = referenceMatches(topic, filter)
        if (expected) matched++
        else unmatched++
        return Topic.matches(topic, filter) === expected && Topic.matches(filter)(topic) === expected
      }),
      { numRuns: 20_000 }
    )
    // Guards against a generator that only ever produces one outcome, which would prove nothing.
    expect(matched).toBeGreaterThan(2_000)
    expect(unmatched).toBeGreaterThan(2_000)
  })

  it("every generated filter used in the matching property is a valid filter", () => {
    fc.assert(
      fc.property(pair, ([topic, filter]) => Topic.isValidFilter(filter) && Topic.isValidName(topic)),
      { numRuns: 10_000 }
    )
  })

  const validName = fc
    .string({ unit: "binary", minLength: 1, maxLength: 40 })
    .filter((s) => !/[+#\u0000]/.test(s))

  it("accepts every non-empty well-formed name without wildcards or U+0000", () => {
    fc.assert(fc.property(validName, (name) => Topic.isValidName(name)), { numRuns: 10_000 })
  })

  it("rejects a valid name once a '+', '#' or U+0000 is inserted anywhere", () => {
    fc.assert(
      fc.property(
        validName,
        fc.constantFrom("+", "#", "\u0000"),
        fc.nat(),
        (name, inserted, at) => {
          const i = at % (name.length + 1)
          return !Topic.isValidName(name.slice(0, i) + inserted + name.slice(i))
        }
      ),
      { numRuns: 10_000 }
    )
  })

  it("rejects a valid name once a lone surrogate is inserted between two code points", () => {
    fc.assert(
      fc.property(
        fc.array(fc.string({ unit: "binary", minLength: 1, maxLength: 1 }).filter((s) => !/[+#\u0000]/.test(s)), {
          minLength: 0,
          maxLength: 10
        }),
        fc.integer({ min: 0xd800, max: 0xdfff }),
        fc.nat(),
        (codePoints, surrogate, at) => {
          const i = at % (codePoints.length + 1)
          const name = [...codePoints.slice(0, i), String.fromCharCode(surrogate), ...codePoints.slice(i)].join("")
          return !Topic.isValidName(name) && !Topic.isValidFilter(name)
        }
      ),
      { numRuns: 10_000 }
    )
  })

  it("a valid name is a valid filter that matches the name itself", () => {
    fc.assert(
      fc.property(
        validName.filter((name) => !name.startsWith("$share/")),
        (name) => Topic.isValidFilter(name) && Topic.matches(name, name)
      ),
      { numRuns: 10_000 }
    )
  })
})

describe("Topic.overlaps", () => {
  it("examples: # takes the parent level, + one level, wildcards no $ topic", () => {
    const cases: ReadonlyArray<readonly [string, string, boolean]> = [
      ["a/#", "a", true],
      ["a/#", "a/b/c", true],
      ["a/+", "a/b", true],
      ["a/+", "a", false],
      ["+/b", "a/+", true],
      ["a/+/c", "a/b/+", true],
      ["a/b/#", "a/c/#", false],
      ["#", "$SYS/x", false],
      ["$SYS/#", "$SYS/a", true],
      ["a/", "a/+", true],
      ["a/", "a", false]
    ]
    for (const [a, b, expected] of cases) {
      expect([a, b, Topic.overlaps(a, b), Topic.overlaps(b, a)]).toEqual([a, b, expected, expected])
    }
  })

  // every topic of up to 4 levels from a small alphabet: enough to hold a topic in common of any two filters of
  // up to 3 levels and a `#`, when there is one
  const levels = ["a", "b", "$x", ""]
  const topics: Array<string> = []
  const grow = (prefix: Array<string>) => {
    if (prefix.length > 0) topics.push(prefix.join("/"))
    if (prefix.length < 4) { for (const level of levels) grow([...prefix, level]) }
  }
  grow([])
  const filter = fc.tuple(
    fc.array(fc.constantFrom("a", "b", "$x", "", "+"), { minLength: 1, maxLength: 3 }),
    fc.boolean()
  )
    .map(([parts, hash]) => [...parts, ...(hash ? ["#"] : [])].join("/"))
    .filter(Topic.isValidFilter)

  it("two filters overlap exactly when some topic matches both", () => {
    fc.assert(
      fc.property(
        filter,
        filter,
        (a, b) => Topic.overlaps(a, b) === topics.some((topic) => Topic.matches(topic, a) && Topic.matches(topic, b))
      ),
      { numRuns: 3_000 }
    )
  })
})
