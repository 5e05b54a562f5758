/**
 * Topic names and topic filters (MQTT 5 section 4.7).
 *
 * A topic NAME is what a message is published to: `sensors/kitchen/temperature`. A topic FILTER is what a
 * subscription asks for, and may use wildcards: `+` stands for exactly one level (`sensors/+/temperature`),
 * `#` for the parent level and every level below it (`sensors/#`). A filter of the form
 * `$share/{ShareName}/{filter}` is an MQTT 5 shared subscription: the broker hands each matching message to
 * one member of the group `ShareName` only.
 *
 * The client validates every name and filter before sending it, so an invalid one fails with
 * {@link MqttError.InvalidTopicError} and never reaches the broker. Use {@link validateName} and
 * {@link validateFilter} to check input earlier, and {@link matches} to route incoming messages.
 *
 * @example
 * ```ts
 * // Keeping the messages of one subscription
 * import { Stream } from "effect"
 * import { type MqttMessage, Topic } from "effect-mqtt"
 *
 * const temperatures = (messages: Stream.Stream<MqttMessage.MqttMessage>) =>
 *   messages.pipe(Stream.filter((message) => Topic.matches(message.topic, "sensors/+/temperature")))
 * ```
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import { dual } from "effect/Function"
import * as internal from "./internal/topic.ts"
import * as MqttError from "./MqttError.ts"

/**
 * Whether a string is a valid topic name: not empty, no wildcard (`+`, `#`), no U+0000, well-formed
 * UTF-16 (no lone surrogate) and at most 65,535 bytes in UTF-8.
 *
 * @example
 * ```ts
 * // Checking topic names
 * import { Topic } from "effect-mqtt"
 *
 * assert.deepStrictEqual(Topic.isValidName("sport/tennis/player1"), true)
 * assert.deepStrictEqual(Topic.isValidName("sport/+/player1"), false)
 * ```
 *
 * @since 0.1.0
 * @category guards
 */
export const isValidName = (topic: string): boolean => internal.nameProblem(topic) === undefined

/**
 * Whether a string is a valid topic filter: not empty, no U+0000, well-formed UTF-16, at most 65,535 bytes in
 * UTF-8, `+` only as a whole level, `#` only as the whole last level. A shared subscription
 * `$share/{ShareName}/{filter}` needs a share name without `+` or `#` and a valid filter after it.
 *
 * @example
 * ```ts
 * // Checking topic filters
 * import { Topic } from "effect-mqtt"
 *
 * assert.deepStrictEqual(Topic.isValidFilter("sport/+/player1/#"), true)
 * assert.deepStrictEqual(Topic.isValidFilter("sport/tennis#"), false)
 * assert.deepStrictEqual(Topic.isValidFilter("$share/workers/jobs/+"), true)
 * ```
 *
 * @since 0.1.0
 * @category guards
 */
export const isValidFilter = (filter: string): boolean => internal.filterProblem(filter) === undefined

/**
 * Succeeds with the topic name when it is valid (see {@link isValidName}), and fails with an
 * {@link MqttError.InvalidTopicError} of kind `"name"` that says what is wrong otherwise.
 *
 * @example
 * ```ts
 * // Validating a topic name from user input
 * import { Effect } from "effect"
 * import { Topic } from "effect-mqtt"
 *
 * const program = Topic.validateName("sensors/#").pipe(
 *   Effect.catchTag("InvalidTopicError", (error) => Effect.succeed(error.message))
 * )
 * assert.deepStrictEqual(
 *   Effect.runSync(program),
 *   `Invalid topic name "sensors/#": must not contain the wildcard characters '+' or '#'`
 * )
 * ```
 *
 * @since 0.1.0
 * @category validation
 */
export const validateName = (topic: string): Effect.Effect<string, MqttError.InvalidTopicError> => {
  const reason = internal.nameProblem(topic)
  return reason === undefined
    ? Effect.succeed(topic)
    : Effect.fail(new MqttError.InvalidTopicError({ topic: String(topic), kind: "name", reason }))
}

/**
 * Succeeds with the topic filter when it is valid (see {@link isValidFilter}), and fails with an
 * {@link MqttError.InvalidTopicError} of kind `"filter"` that says what is wrong otherwise.
 *
 * @since 0.1.0
 * @category validation
 */
export const validateFilter = (filter: string): Effect.Effect<string, MqttError.InvalidTopicError> => {
  const reason = internal.filterProblem(filter)
  return reason === undefined
    ? Effect.succeed(filter)
    : Effect.fail(new MqttError.InvalidTopicError({ topic: String(filter), kind: "filter", reason }))
}

/**
 * Whether a topic name matches a topic filter, by the rules of MQTT 5 section 4.7:
 *
 * - `+` matches exactly one level, including an empty one: `+/+` matches `/finance`.
 * - `#` matches the parent level and any number of levels below it: `sport/#` matches `sport`,
 *   `sport/tennis` and `sport/tennis/player1`.
 * - a filter that starts with a wildcard does not match a topic that starts with `$`: `#` does not match
 *   `$SYS/uptime`, but `$SYS/#` does.
 * - a shared subscription `$share/{ShareName}/{filter}` matches what its inner `filter` matches.
 *
 * Both arguments are expected to be valid (see {@link isValidName} and {@link isValidFilter}); the result for
 * invalid ones is unspecified. Matching allocates nothing, so it is cheap enough to run on every message.
 *
 * The data-last form takes the filter and returns a predicate over topic names.
 *
 * @example
 * ```ts
 * // Matching topics against filters
 * import { pipe } from "effect"
 * import { Topic } from "effect-mqtt"
 *
 * assert.deepStrictEqual(Topic.matches("sport/tennis/player1", "sport/+/player1"), true)
 * assert.deepStrictEqual(Topic.matches("sport", "sport/#"), true)
 * assert.deepStrictEqual(Topic.matches("$SYS/uptime", "#"), false)
 *
 * const isTemperature = Topic.matches("sensors/+/temperature")
 * assert.deepStrictEqual(isTemperature("sensors/kitchen/temperature"), true)
 * assert.deepStrictEqual(pipe("sensors/kitchen/humidity", isTemperature), false)
 * ```
 *
 * @since 0.1.0
 * @category predicates
 */
export const matches: {
  /**
   * A predicate that tells whether a topic name matches `filter`.
   *
   * @since 0.1.0
   * @category predicates
   */
  (filter: string): (topic: string) => boolean
  /**
   * Whether `topic` matches `filter`.
   *
   * @since 0.1.0
   * @category predicates
   */
  (topic: string, filter: string): boolean
} = dual(2, internal.matches)

/**
 * Splits a shared subscription `$share/{ShareName}/{filter}` into its share name (`group`) and its inner
 * filter. Returns `undefined` when the filter does not have that shape: no `$share/` prefix, an empty share
 * name, or nothing after the share name. It does not check the parts: use {@link isValidFilter} for that.
 *
 * @example
 * ```ts
 * // Reading the group of a shared subscription
 * import { Topic } from "effect-mqtt"
 *
 * assert.deepStrictEqual(Topic.parseShared("$share/workers/jobs/+"), { group: "workers", filter: "jobs/+" })
 * assert.deepStrictEqual(Topic.parseShared("jobs/+"), undefined)
 * ```
 *
 * @since 0.1.0
 * @category parsing
 */
export const parseShared: (filter: string) => { readonly group: string; readonly filter: string } | undefined =
  internal.parseShared

/**
 * Whether a filter has the shape of a shared subscription `$share/{ShareName}/{filter}` (see
 * {@link parseShared}).
 *
 * @since 0.1.0
 * @category guards
 */
export const isShared: (filter: string) => boolean = internal.isShared

/**
 * Whether two valid, non-shared topic filters match some topic in common: a client subscribed to both receives
 * such a message twice on MQTT 5 (once per subscription), and a consumer group on both would get it twice. Level by
 * level: `#` matches what remains, the parent level included [MQTT-4.7.1-2]; `+` matches any one level; a filter
 * starting with a wildcard matches no topic starting with `$` [MQTT-4.7.2-1]. Give valid filters
 * ({@link isValidFilter}): the answer for others is not specified.
 *
 * @example
 * ```ts
 * import { Topic } from "effect-mqtt"
 *
 * assert.strictEqual(Topic.overlaps("sensors/#", "sensors/+/temperature"), true)
 * assert.strictEqual(Topic.overlaps("sensors/+", "sensors/a/b"), false)
 * assert.strictEqual(Topic.overlaps("#", "$SYS/broker/uptime"), false)
 * ```
 *
 * @since 0.2.0
 * @category guards
 */
export const overlaps: (a: string, b: string) => boolean = internal.filtersOverlap
