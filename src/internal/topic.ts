/**
 * Topic name and topic filter rules of MQTT 5 section 4.7 and 4.8.2, written as plain synchronous code with
 * no allocation on the success path: these run once per publish and once per incoming message.
 *
 * @internal
 */

const MAX_BYTES = 65_535

const NUL = 0x00
const HASH = 0x23
const DOLLAR = 0x24
const PLUS = 0x2b
const SLASH = 0x2f

const SHARE_PREFIX = "$share/"
const SHARE_PREFIX_LENGTH = SHARE_PREFIX.length

const EMPTY = "must not be empty"
const NOT_A_STRING = "must be a string"
const NUL_CHARACTER = "must not contain the null character U+0000"
const LONE_SURROGATE = "must not contain a lone UTF-16 surrogate, which cannot be encoded as UTF-8"
const WILDCARD_IN_NAME = "must not contain the wildcard characters '+' or '#'"
const PLUS_NOT_ALONE = "the wildcard '+' must occupy a whole level"
const HASH_NOT_ALONE = "the wildcard '#' must occupy a whole level"
const HASH_NOT_LAST = "the wildcard '#' must be the last level"
const SHARE_NAME_EMPTY = "a shared subscription ($share/{ShareName}/{filter}) needs a non-empty share name"
const SHARE_NAME_WILDCARD = "the share name of a shared subscription must not contain '+' or '#'"
const SHARE_FILTER_MISSING =
  "a shared subscription ($share/{ShareName}/{filter}) needs a topic filter after the share name"

const tooLong = (bytes: number): string => `is ${bytes} bytes long in UTF-8, more than the maximum of ${MAX_BYTES}`

const isHighSurrogate = (c: number): boolean => c >= 0xd800 && c <= 0xdbff
const isLowSurrogate = (c: number): boolean => c >= 0xdc00 && c <= 0xdfff

/**
 * Where the inner filter of a `$share/{ShareName}/{filter}` starts, or -1 when `filter` does not have that
 * shape (no prefix, an empty share name, or nothing after the share name).
 */
const sharedFilterStart = (filter: string): number => {
  if (typeof filter !== "string" || filter.charCodeAt(0) !== DOLLAR || !filter.startsWith(SHARE_PREFIX)) return -1
  const slash = filter.indexOf("/", SHARE_PREFIX_LENGTH)
  if (slash <= SHARE_PREFIX_LENGTH || slash + 1 >= filter.length) return -1
  return slash + 1
}

/** @internal */
export const nameProblem = (topic: string): string | undefined => {
  if (typeof topic !== "string") return NOT_A_STRING
  const length = topic.length
  if (length === 0) return EMPTY
  // Every UTF-16 code unit takes at least one UTF-8 byte.
  if (length > MAX_BYTES) return tooLong(utf8Length(topic))
  let bytes = 0
  for (let i = 0; i < length; i++) {
    const c = topic.charCodeAt(i)
    if (c < 0x80) {
      if (c === NUL) return NUL_CHARACTER
      if (c === PLUS || c === HASH) return WILDCARD_IN_NAME
      bytes += 1
    } else if (c < 0x800) {
      bytes += 2
    } else if (c < 0xd800 || c > 0xdfff) {
      bytes += 3
    } else if (isHighSurrogate(c) && i + 1 < length && isLowSurrogate(topic.charCodeAt(i + 1))) {
      bytes += 4
      i++
    } else {
      return LONE_SURROGATE
    }
  }
  return bytes > MAX_BYTES ? tooLong(bytes) : undefined
}

/** @internal */
export const filterProblem = (filter: string): string | undefined => {
  if (typeof filter !== "string") return NOT_A_STRING
  const length = filter.length
  if (length === 0) return EMPTY
  if (length > MAX_BYTES) return tooLong(utf8Length(filter))
  let start = 0
  if (filter.startsWith(SHARE_PREFIX)) {
    const slash = filter.indexOf("/", SHARE_PREFIX_LENGTH)
    const shareNameEnd = slash === -1 ? length : slash
    if (shareNameEnd === SHARE_PREFIX_LENGTH) return SHARE_NAME_EMPTY
    for (let i = SHARE_PREFIX_LENGTH; i < shareNameEnd; i++) {
      const c = filter.charCodeAt(i)
      if (c === PLUS || c === HASH) return SHARE_NAME_WILDCARD
    }
    if (slash === -1 || slash + 1 === length) return SHARE_FILTER_MISSING
    start = slash + 1
  }
  // The share name was checked for wildcards above, so a wildcard seen here is in the filter proper.
  let levelStart = start
  let bytes = 0
  for (let i = 0; i < length; i++) {
    const c = filter.charCodeAt(i)
    if (c < 0x80) {
      bytes += 1
      if (c === SLASH) {
        levelStart = i + 1
      } else if (c === PLUS) {
        if (i !== levelStart || (i + 1 < length && filter.charCodeAt(i + 1) !== SLASH)) return PLUS_NOT_ALONE
      } else if (c === HASH) {
        if (i !== levelStart || (i + 1 < length && filter.charCodeAt(i + 1) !== SLASH)) return HASH_NOT_ALONE
        if (i + 1 !== length) return HASH_NOT_LAST
      } else if (c === NUL) {
        return NUL_CHARACTER
      }
    } else if (c < 0x800) {
      bytes += 2
    } else if (c < 0xd800 || c > 0xdfff) {
      bytes += 3
    } else if (isHighSurrogate(c) && i + 1 < length && isLowSurrogate(filter.charCodeAt(i + 1))) {
      bytes += 4
      i++
    } else {
      return LONE_SURROGATE
    }
  }
  return bytes > MAX_BYTES ? tooLong(bytes) : undefined
}

/**
 * The UTF-8 length of a string, counting a lone surrogate as the 3 bytes of its U+FFFD replacement. Only
 * used to word the error for strings that are too long anyway.
 */
const utf8Length = (s: string): number => {
  let bytes = 0
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c < 0x80) bytes += 1
    else if (c < 0x800) bytes += 2
    else if (isHighSurrogate(c) && i + 1 < s.length && isLowSurrogate(s.charCodeAt(i + 1))) {
      bytes += 4
      i++
    } else bytes += 3
  }
  return bytes
}

/**
 * Whether `topic` matches `filter`, level by level, by scanning both strings in place.
 *
 * `t` and `f` are the indices where the current level starts in the topic and the filter. An index equal to
 * the length means that an empty last level starts there (`a/` has the levels `a` and ``); an index one past
 * the length means that every level has been consumed.
 *
 * @internal
 */
export const matches = (topic: string, filter: string): boolean => {
  // a value of another type (from untyped code) matches nothing, rather than throw
  if (typeof topic !== "string" || typeof filter !== "string") return false
  const topicLength = topic.length
  const filterLength = filter.length
  let f = 0
  if (filter.charCodeAt(0) === DOLLAR) {
    const inner = sharedFilterStart(filter)
    if (inner !== -1) f = inner
  }
  if (topic.charCodeAt(0) === DOLLAR) {
    // [MQTT-4.7.2-1] a filter starting with a wildcard does not match a topic starting with `$`.
    const first = filter.charCodeAt(f)
    if (first === PLUS || first === HASH) return false
  }
  let t = 0
  while (true) {
    if (f > filterLength) return t > topicLength
    const fc = filter.charCodeAt(f)
    const wholeLevel = f + 1 >= filterLength || filter.charCodeAt(f + 1) === SLASH
    // `#` matches the parent level and every level below it, whatever remains of the topic.
    if (fc === HASH && wholeLevel) return true
    if (t > topicLength) return false
    if (fc === PLUS && wholeLevel) {
      const slash = topic.indexOf("/", t)
      t = slash === -1 ? topicLength + 1 : slash + 1
      f += 2
      continue
    }
    while (true) {
      const filterLevelEnded = f === filterLength || filter.charCodeAt(f) === SLASH
      const topicLevelEnded = t === topicLength || topic.charCodeAt(t) === SLASH
      if (filterLevelEnded || topicLevelEnded) {
        if (filterLevelEnded !== topicLevelEnded) return false
        break
      }
      if (filter.charCodeAt(f) !== topic.charCodeAt(t)) return false
      f++
      t++
    }
    f++
    t++
  }
}

/**
 * Whether two valid, non-shared filters match a topic in common: then a client subscribed to both receives such a
 * message twice, once per subscription. Level by level: `#` matches what remains (also nothing, [MQTT-4.7.1-2]),
 * `+` any one level, other levels only themselves; a filter starting with a wildcard matches no `$` topic
 * [MQTT-4.7.2-1].
 *
 * @internal
 */
export const filtersOverlap = (a: string, b: string): boolean => {
  if (typeof a !== "string" || typeof b !== "string") return false
  const x = a.split("/")
  const y = b.split("/")
  const wild = (level: string) => level === "+" || level === "#"
  if ((wild(x[0]) && y[0].startsWith("$")) || (wild(y[0]) && x[0].startsWith("$"))) return false
  for (let i = 0;; i++) {
    if (x[i] === "#" || y[i] === "#") return true
    if (i === x.length || i === y.length) return x.length === y.length
    if (x[i] !== "+" && y[i] !== "+" && x[i] !== y[i]) return false
  }
}

/** @internal */
export const parseShared = (filter: string): { readonly group: string; readonly filter: string } | undefined => {
  const inner = sharedFilterStart(filter)
  return inner === -1 ? undefined : {
    group: filter.slice(SHARE_PREFIX_LENGTH, inner - 1),
    filter: filter.slice(inner)
  }
}

/** @internal */
export const isShared = (filter: string): boolean => sharedFilterStart(filter) !== -1

/**
 * What is wrong with a share name given apart from its filter (the `share` option of the typed topics), or
 * undefined: it is one topic level, non-empty, without `/`, `+` or `#` [MQTT 5 4.8.2]. A `/` would not be
 * refused by the broker: `$share/g/x/{filter}` is the group `g` with the filter `x/{filter}`.
 *
 * @internal
 */
export const shareNameProblem = (share: unknown): string | undefined => {
  if (typeof share !== "string") return "expected a string"
  if (share.length === 0) return "a share name must not be empty"
  if (share.includes("/")) return "a share name is one topic level: it must not contain '/'"
  const problem = nameProblem(share)
  return problem === undefined ? undefined : `a share name ${problem}`
}
