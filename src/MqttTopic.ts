/**
 * Schema-typed topics: declare a topic once (a pattern with named segments, a payload `Schema`, a codec) and
 * publish, subscribe, request and respond with typed parameters and payloads.
 *
 * (The module is long because it documents every public member where it is declared: about half of it is doc
 * comments. The implementation lives in `internal/`.)
 *
 * A pattern is a topic with named levels: `sensors/{deviceId}/temperature` stands for the filter
 * `sensors/+/temperature`, and a trailing `{rest...}` stands for `#` (its value is the list of the remaining
 * levels). Parameters are checked before anything is sent; received messages are matched against the pattern
 * and their payload decoded with the Schema.
 *
 * | codec | payload on the wire | the Schema decodes from |
 * | --- | --- | --- |
 * | `"json"` (default) | UTF-8 JSON text | the parsed JSON value |
 * | `"text"` | UTF-8 text | a `string` |
 * | `"bytes"` | raw bytes | a `Uint8Array` (`Schema.Uint8Array`, or any transformation from it) |
 *
 * Malformed UTF-8 is a decode failure (never replaced by U+FFFD).
 *
 * @example
 * ```ts
 * import { Effect, Schema, Stream } from "effect"
 * import { MqttClient, MqttTopic } from "effect-mqtt"
 *
 * const Temperature = MqttTopic.make(
 *   "sensors/{deviceId}/temperature",
 *   Schema.Struct({ celsius: Schema.Number, at: Schema.String })
 * )
 *
 * const program = Effect.gen(function*() {
 *   const readings = yield* MqttTopic.subscribe(Temperature, { qos: 1 })
 *   yield* MqttTopic.publish(Temperature, { deviceId: "kitchen" }, { celsius: 21.5, at: "08:00" }, { qos: 1 })
 *   yield* readings.pipe(
 *     Stream.take(1),
 *     Stream.runForEach(({ params, payload }) => Effect.log(params.deviceId, payload.celsius))
 *   )
 * }).pipe(Effect.scoped, Effect.provide(MqttClient.layer({ url: "mqtt://localhost:1883" })))
 * ```
 *
 * @since 0.2.0
 */
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import { identity } from "effect/Function"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import { type Pipeable, pipeArguments } from "effect/Pipeable"
import * as Predicate from "effect/Predicate"
import * as Result from "effect/Result"
import * as Schema from "effect/Schema"
import * as SchemaGetter from "effect/SchemaGetter"
import * as SchemaIssue from "effect/SchemaIssue"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type * as Types from "effect/Types"
import { isWellFormed } from "./internal/bytes.ts"
import { EndResponder, NoReply } from "./internal/requestResponse.ts"
import { MqttClient as MqttClientService } from "./internal/service.ts"
import { shareNameProblem } from "./internal/topic.ts"
import * as Codecs from "./internal/topicCodec.ts"
import * as Pattern from "./internal/topicPattern.ts"
import type * as MqttClient from "./MqttClient.ts"
import * as MqttError from "./MqttError.ts"
import type * as MqttMessage from "./MqttMessage.ts"

const TypeId = "~effect-mqtt/MqttTopic"

/**
 * How a payload is written as bytes: `"json"` (UTF-8 JSON, the default), `"text"` (UTF-8 text, for a Schema
 * that decodes from `string`) or `"bytes"` (the raw bytes, for a Schema that decodes from `Uint8Array`, such
 * as `Schema.Uint8Array` or any transformation from it).
 *
 * @example
 * ```ts
 * import { Schema } from "effect"
 * import { MqttTopic } from "effect-mqtt"
 *
 * const Level = MqttTopic.make("tanks/{tank}/level", Schema.NumberFromString, { codec: "text" })
 * Level.codec // "text"
 * ```
 *
 * @since 0.2.0
 * @category models
 */
export type Codec = Codecs.Codec

type SegmentParams<S extends string> = S extends `{${infer Name}...}` ? { readonly [K in Name]: ReadonlyArray<string> }
  : S extends `{${infer Name}}` ? { readonly [K in Name]: string }
  : {}

type PatternParams<P extends string> = P extends `${infer Head}/${infer Tail}`
  ? SegmentParams<Head> & PatternParams<Tail>
  : SegmentParams<P>

/**
 * The parameters of a pattern: a `string` for each `{name}` level, a `ReadonlyArray<string>` of levels for a
 * trailing `{name...}`.
 *
 * @example
 * ```ts
 * import type { MqttTopic } from "effect-mqtt"
 *
 * type P = MqttTopic.ParamsOf<"sites/{site}/logs/{path...}">
 * // { readonly site: string; readonly path: ReadonlyArray<string> }
 * ```
 *
 * @since 0.2.0
 * @category models
 */
export type ParamsOf<P extends string> = string extends P ? Readonly<Record<string, string | ReadonlyArray<string>>>
  : Types.Simplify<PatternParams<P>>

/**
 * A declared topic: its pattern, the filter to subscribe with, the payload Schema and its codec, and for a
 * request topic the reply Schema. Make one with {@link make}.
 *
 * @example
 * ```ts
 * import { Schema } from "effect"
 * import { MqttTopic } from "effect-mqtt"
 *
 * const Temperature = MqttTopic.make("sensors/{deviceId}/temperature", Schema.Struct({ celsius: Schema.Number }))
 * Temperature.pattern // "sensors/{deviceId}/temperature"
 * Temperature.filter // "sensors/+/temperature"
 * Temperature.params // ["deviceId"]
 * ```
 *
 * @since 0.2.0
 * @category models
 */
export interface MqttTopic<
  out P extends string,
  out S extends Schema.Top,
  out R extends Schema.Top | undefined = undefined
> extends Pipeable {
  /** Marks a declared topic (see {@link isMqttTopic}). */
  readonly [TypeId]: typeof TypeId
  /** The pattern as declared, e.g. `sensors/{deviceId}/temperature`. */
  readonly pattern: P
  /** The subscription filter: `+` for each `{name}`, `#` for a trailing `{name...}`. */
  readonly filter: string
  /** The parameter names, in order. */
  readonly params: ReadonlyArray<string>
  /** The payload Schema, as given to {@link make}: it decodes from what the codec reads (see {@link Codec}). */
  readonly schema: S
  /** How the payload is written as bytes: `"json"` (the default), `"text"` or `"bytes"`. */
  readonly codec: Codec
  /** The Schema of replies, for request topics (see {@link request} and {@link respond}). */
  readonly reply: R
  /** How replies are written as bytes; default: the topic's {@link MqttTopic.codec}. */
  readonly replyCodec: Codec
  /**
   * Why the topic is invalid (then every operation fails with {@link TopicParamsError}), or `undefined`: its
   * pattern, or (from untyped code) a pattern, Schema, codec or options of the wrong type.
   */
  readonly problem: string | undefined
  /** The payload Schema composed with the codec: from the payload bytes to the value. */
  readonly payloadSchema: Schema.Codec<S["Type"], Uint8Array, S["DecodingServices"], S["EncodingServices"]>
}

/**
 * Any declared topic.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { MqttTopic } from "effect-mqtt"
 *
 * const describe = (topic: MqttTopic.Any) => Effect.log(`${topic.pattern} (${topic.codec})`)
 * ```
 *
 * @since 0.2.0
 * @category models
 */
export type Any = MqttTopic<string, Schema.Top, Schema.Top | undefined>

/**
 * A declared topic with a reply Schema.
 *
 * @example
 * ```ts
 * import { MqttTopic } from "effect-mqtt"
 *
 * const responseFilter = (topic: MqttTopic.AnyRequest) => topic.filter
 * ```
 *
 * @since 0.2.0
 * @category models
 */
export type AnyRequest = MqttTopic<string, Schema.Top, Schema.Top>

/**
 * The parameters of a declared topic.
 *
 * @example
 * ```ts
 * import { Schema } from "effect"
 * import { MqttTopic } from "effect-mqtt"
 *
 * const Logs = MqttTopic.make("logs/{app}/{path...}", Schema.String, { codec: "text" })
 * const params: MqttTopic.Params<typeof Logs> = { app: "api", path: ["http", "errors"] }
 * ```
 *
 * @since 0.2.0
 * @category models
 */
export type Params<T extends Any> = ParamsOf<T["pattern"]>

/**
 * The payload type of a declared topic.
 *
 * @example
 * ```ts
 * import { Schema } from "effect"
 * import { MqttTopic } from "effect-mqtt"
 *
 * const Temperature = MqttTopic.make("sensors/{deviceId}/temperature", Schema.Struct({ celsius: Schema.Number }))
 * const reading: MqttTopic.Type<typeof Temperature> = { celsius: 21.5 }
 * ```
 *
 * @since 0.2.0
 * @category models
 */
export type Type<T extends Any> = T["schema"]["Type"]

/**
 * The reply type of a request topic.
 *
 * @example
 * ```ts
 * import { Schema } from "effect"
 * import { MqttTopic } from "effect-mqtt"
 *
 * const Add = MqttTopic.make("calc/add", Schema.Tuple([Schema.Number, Schema.Number]), { reply: Schema.Number })
 * const sum: MqttTopic.ReplyType<typeof Add> = 3
 * ```
 *
 * @since 0.2.0
 * @category models
 */
export type ReplyType<T extends AnyRequest> = T["reply"]["Type"]

/**
 * A received message of a typed subscription: the pattern's parameters taken from its topic, the decoded
 * payload, and the message itself (QoS, retain flag, MQTT 5 properties).
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import type { MqttTopic } from "effect-mqtt"
 *
 * const show = (received: MqttTopic.Received<{ readonly deviceId: string }, number>) =>
 *   Effect.log(received.params.deviceId, received.payload, received.message.qos)
 * ```
 *
 * @since 0.2.0
 * @category models
 */
export interface Received<Params, A> {
  /** The pattern's parameters, taken from the message's topic name. */
  readonly params: Params
  /** The payload, decoded with the topic's Schema and codec. */
  readonly payload: A
  /** The message as received: topic, raw payload bytes, QoS, retain flag, MQTT 5 properties. */
  readonly message: MqttMessage.MqttMessage
}

/**
 * The `Received` type of a declared topic.
 *
 * @example
 * ```ts
 * import { Effect, Schema } from "effect"
 * import { MqttTopic } from "effect-mqtt"
 *
 * const Level = MqttTopic.make("tanks/{tank}/level", Schema.Number)
 * const handle = ({ params, payload }: MqttTopic.ReceivedOf<typeof Level>) => Effect.log(params.tank, payload)
 * ```
 *
 * @since 0.2.0
 * @category models
 */
export type ReceivedOf<T extends Any> = Received<Params<T>, Type<T>>

// ---------------------------------------------------------------------------------------------------------------
// errors
// ---------------------------------------------------------------------------------------------------------------

/**
 * A parameter cannot be part of a topic name: it is empty, not a string, or contains `/`, `+` or `#` (a tail's
 * levels likewise), or it makes the first level and starts with `$` (the topic's filter would not match the
 * name); or the pattern itself is invalid (`param` is then `""`). Raised before anything is sent.
 *
 * @example
 * ```ts
 * import { Effect, Schema } from "effect"
 * import { MqttTopic } from "effect-mqtt"
 *
 * const Level = MqttTopic.make("tanks/{tank}/level", Schema.Number)
 * const program = MqttTopic.publish(Level, { tank: "a/b" }, 0.5).pipe(
 *   Effect.catchTag("TopicParamsError", (error) => Effect.logWarning(error.param, error.reason))
 * )
 * ```
 *
 * @since 0.2.0
 * @category errors
 */
export class TopicParamsError extends Data.TaggedError("TopicParamsError")<{
  /** The topic's pattern, as declared. */
  readonly pattern: string
  /** The parameter refused, or `""` when the problem is not one parameter's: the pattern is invalid, or the
   * topic name made from the parameters is (e.g. longer than MQTT allows). */
  readonly param: string
  /** Why, in words (e.g. `must not contain "/"`). */
  readonly reason: string
}> {
  /**
   * `Topic pattern "<pattern>": the parameter "<param>" <reason>`, or `Topic pattern "<pattern>": <reason>` when
   * the pattern itself is invalid.
   *
   * @since 0.2.0
   */
  override get message(): string {
    return this.param === ""
      ? `Topic pattern "${this.pattern}": ${this.reason}`
      : `Topic pattern "${this.pattern}": the parameter "${this.param}" ${this.reason}`
  }
}

/**
 * A value to publish (or a reply) does not satisfy the topic's Schema; `issue` says why. Raised before
 * anything is sent.
 *
 * @example
 * ```ts
 * import { Effect, Schema } from "effect"
 * import { MqttTopic } from "effect-mqtt"
 *
 * const Level = MqttTopic.make("tanks/{tank}/level", Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 1 })))
 * const program = MqttTopic.publish(Level, { tank: "t1" }, 7).pipe(
 *   Effect.catchTag("TopicEncodeError", (error) => Effect.logWarning(error.message))
 * )
 * ```
 *
 * @since 0.2.0
 * @category errors
 */
export class TopicEncodeError extends Data.TaggedError("TopicEncodeError")<{
  /** The topic's pattern, as declared. */
  readonly pattern: string
  /** The Schema's account of why the value does not encode. */
  readonly issue: SchemaIssue.Issue
}> {
  /**
   * `Topic pattern "<pattern>": the value cannot be encoded: <the Schema issue>`.
   *
   * @since 0.2.0
   */
  override get message(): string {
    return `Topic pattern "${this.pattern}": the value cannot be encoded: ${String(new Schema.SchemaError(this.issue))}`
  }
}

/**
 * A received message could not be decoded: `reason` is `"topic"` when its topic does not match the pattern,
 * `"payload"` when the payload does not decode with the topic's Schema (`issue` says why), `"reply"` when a
 * reply to {@link request} does not decode with the reply Schema. `topic` is the message's topic name and
 * `mqttMessage` the raw message.
 *
 * @example
 * ```ts
 * import { Effect, Schema, Stream } from "effect"
 * import { MqttTopic } from "effect-mqtt"
 *
 * const Level = MqttTopic.make("tanks/{tank}/level", Schema.Number)
 * const program = Effect.gen(function*() {
 *   const levels = yield* MqttTopic.subscribe(Level)
 *   yield* Stream.runDrain(levels)
 * }).pipe(
 *   Effect.scoped,
 *   Effect.catchTag("TopicDecodeError", (error) => Effect.logError(error.topic, error.mqttMessage.text))
 * )
 * ```
 *
 * @since 0.2.0
 * @category errors
 */
export class TopicDecodeError extends Data.TaggedError("TopicDecodeError")<{
  /** The topic's pattern, as declared. */
  readonly pattern: string
  /** The topic name of the message that did not decode. */
  readonly topic: string
  /** What did not decode: the topic name, the payload, or the reply to a request. */
  readonly reason: "topic" | "payload" | "reply"
  /** The Schema's account of why (`undefined` for reason `"topic"`). */
  readonly issue: SchemaIssue.Issue | undefined
  /** The message as received. */
  readonly mqttMessage: MqttMessage.MqttMessage
}> {
  /**
   * `Topic pattern "<pattern>": the message on "<topic>" does not match the pattern`, or `... has a payload
   * (reply) that does not decode: <the Schema issue>`.
   *
   * @since 0.2.0
   */
  override get message(): string {
    const what = this.reason === "topic"
      ? "does not match the pattern"
      : `has a ${this.reason} that does not decode: ${String(new Schema.SchemaError(this.issue!))}`
    return `Topic pattern "${this.pattern}": the message on "${this.topic}" ${what}`
  }
}

// ---------------------------------------------------------------------------------------------------------------
// constructors
// ---------------------------------------------------------------------------------------------------------------

const Proto = {
  [TypeId]: TypeId,
  pipe() {
    return pipeArguments(this, arguments)
  }
}

/**
 * Whether a value is a declared topic.
 *
 * @example
 * ```ts
 * import { Schema } from "effect"
 * import { MqttTopic } from "effect-mqtt"
 *
 * MqttTopic.isMqttTopic(MqttTopic.make("a/{b}", Schema.String)) // true
 * MqttTopic.isMqttTopic("a/+") // false
 * ```
 *
 * @since 0.2.0
 * @category guards
 */
export const isMqttTopic = (u: unknown): u is Any => Predicate.hasProperty(u, TypeId)

/**
 * Declares a topic: a pattern, a payload Schema and a codec (`"json"` by default).
 *
 * A pattern level is a literal, a `{name}` (one level, `+` in the filter) or, as the last level only, a
 * `{name...}` (the remaining levels, `#` in the filter; it matches the parent level too, with no levels).
 * Literal levels may not contain `+`, `#`, `{` or `}`; names are letters, digits, `_` and `$`, each used once.
 * The pattern may not start with `$share/`: shared subscriptions are the `share` option of {@link subscribe}.
 *
 * `make` never throws: an invalid pattern makes a topic whose `problem` says why, and whose every operation
 * fails with {@link TopicParamsError} before anything is sent. So does, from untyped code, a pattern that is
 * not a string, a `schema` or `reply` that is not a Schema, an unknown codec, or options that are not an
 * object (then {@link encode} and {@link decode} fail too, with {@link TopicEncodeError} and
 * {@link TopicDecodeError}).
 *
 * With `reply`, the topic is a request topic for {@link request} and {@link respond} (MQTT 5); the reply is
 * encoded with `replyCodec` (default: the topic's codec).
 *
 * @example
 * ```ts
 * import { Schema } from "effect"
 * import { MqttTopic } from "effect-mqtt"
 *
 * // JSON payloads (the default codec)
 * const Temperature = MqttTopic.make("sensors/{deviceId}/temperature", Schema.Struct({ celsius: Schema.Number }))
 * Temperature.filter // "sensors/+/temperature"
 *
 * // raw bytes, and a tail: `logs/#`
 * const Logs = MqttTopic.make("logs/{path...}", Schema.Uint8Array, { codec: "bytes" })
 *
 * // UTF-8 text decoded to a number
 * const Level = MqttTopic.make("tanks/{tank}/level", Schema.NumberFromString, { codec: "text" })
 *
 * // a request topic
 * const Add = MqttTopic.make("calc/add", Schema.Tuple([Schema.Number, Schema.Number]), { reply: Schema.Number })
 * ```
 *
 * @since 0.2.0
 * @category constructors
 */
export const make: {
  <const P extends string, S extends Schema.Top, R extends Schema.Top | undefined = undefined>(
    pattern: P,
    schema: S,
    options?: { readonly codec?: "json" | undefined; readonly reply?: R; readonly replyCodec?: Codec | undefined }
  ): MqttTopic<P, S, R>
  <
    const P extends string,
    S extends Schema.Top & { readonly Encoded: string },
    R extends Schema.Top | undefined = undefined
  >(
    pattern: P,
    schema: S,
    options: { readonly codec: "text"; readonly reply?: R; readonly replyCodec?: Codec | undefined }
  ): MqttTopic<P, S, R>
  <
    const P extends string,
    S extends Schema.Top & { readonly Encoded: Uint8Array },
    R extends Schema.Top | undefined = undefined
  >(
    pattern: P,
    schema: S,
    options: { readonly codec: "bytes"; readonly reply?: R; readonly replyCodec?: Codec | undefined }
  ): MqttTopic<P, S, R>
} = (
  pattern: string,
  schema: Schema.Top,
  options?: { readonly codec?: Codec | undefined; readonly reply?: Schema.Top; readonly replyCodec?: Codec | undefined }
): any => {
  const declared = Pattern.parse(pattern)
  const isObject = typeof options === "object" && options !== null
  const codec = (isObject ? options.codec : undefined) ?? "json"
  const reply = isObject ? options.reply : undefined
  const replyCodec = (isObject ? options.replyCodec : undefined) ?? codec
  // what untyped code can get wrong besides the pattern: each makes a topic that is invalid, as a bad pattern does
  const payloadProblem = !Schema.isSchema(schema)
    ? "the payload schema is not a Schema"
    : !isCodec(codec)
    ? `the codec must be "json", "text" or "bytes", not ${show(codec)}`
    : undefined
  const replyProblem = reply !== undefined && !Schema.isSchema(reply)
    ? "the reply is not a Schema"
    : reply !== undefined && !isCodec(replyCodec)
    ? `the reply codec must be "json", "text" or "bytes", not ${show(replyCodec)}`
    : undefined
  const optionsProblem = options !== undefined && !isObject ? "the options of make must be an object" : undefined
  const problem = declared.problem ?? optionsProblem ?? payloadProblem ?? replyProblem
  const parsed = problem === declared.problem ? declared : { ...declared, problem }
  const payloadSchema = payloadProblem === undefined
    ? strictPayloadSchema(schema, codec)
    : Schema.Never as unknown as Schema.Codec<unknown, Uint8Array>
  const self = Object.create(Proto)
  Object.assign(self, {
    pattern: show(pattern),
    filter: parsed.filter,
    params: parsed.names,
    schema,
    codec,
    reply,
    replyCodec,
    problem,
    payloadSchema
  })
  const refuse = () => Effect.fail(new Schema.SchemaError(new SchemaIssue.InvalidValue({ message: payloadProblem })))
  internals.set(self, {
    parsed,
    decodePayload: payloadProblem === undefined ? Schema.decodeUnknownEffect(payloadSchema) : refuse,
    encodePayload: payloadProblem === undefined ? Schema.encodeUnknownEffect(payloadSchema) : refuse,
    replySchema: reply === undefined || replyProblem !== undefined
      ? undefined
      : strictPayloadSchema(reply as Schema.Top, replyCodec)
  })
  return self
}

/**
 * The payload Schema with its codec, refusing on encode what would not be sent as it is: text with a lone
 * surrogate (UTF-8 would write U+FFFD in its place, as `MqttClient.publish` refuses too) and, for JSON, a number
 * that is not finite (`JSON.stringify` writes `null`, which does not decode back). Decoding is unchanged.
 */
const strictPayloadSchema = <S extends Schema.Top>(schema: S, codec: Codec) => {
  const any = schema as unknown as Schema.Codec<unknown, unknown, unknown, unknown>
  switch (codec) {
    case "bytes":
      return Codecs.payloadSchema(schema, codec)
    case "text":
      return StrictUtf8.pipe(Schema.decodeTo(any as Schema.Codec<unknown, string, unknown, unknown>)) as never
    case "json":
      return StrictUtf8.pipe(Schema.decodeTo(Schema.fromJsonString(FiniteJson.pipe(Schema.decodeTo(any))))) as never
  }
}

/** Text to and from UTF-8, refusing a string with a lone surrogate on encode. */
const StrictUtf8 = Codecs.Utf8.pipe(Schema.decodeTo(Schema.String, {
  decode: SchemaGetter.passthrough(),
  encode: SchemaGetter.transformEffect((text: string, options) =>
    isWellFormed(text)
      ? Effect.succeed(text)
      : Effect.fail(
        new SchemaIssue.InvalidValue(
          {
            message: "the text has a lone surrogate, which UTF-8 cannot carry (it would be sent as U+FFFD)"
          },
          text,
          options
        )
      )
  )
}))

/** A JSON value, refusing on encode a number that is not finite (NaN, Infinity): JSON has no form for it. */
const FiniteJson = Schema.Unknown.pipe(Schema.decodeTo(Schema.Unknown, {
  decode: SchemaGetter.passthrough(),
  encode: SchemaGetter.transformEffect((value: unknown, options) =>
    hasNonFinite(value, new Set())
      ? Effect.fail(
        new SchemaIssue.InvalidValue(
          {
            message: "a number that is not finite (NaN, Infinity) has no JSON form: it would be sent as null"
          },
          value,
          options
        )
      )
      : Effect.succeed(value)
  )
}))

/** Whether a value that `JSON.stringify` is about to write holds a number that is not finite. */
const hasNonFinite = (value: unknown, seen: Set<object>): boolean => {
  if (typeof value === "number") return !Number.isFinite(value)
  if (typeof value !== "object" || value === null || seen.has(value)) return false
  seen.add(value)
  const json = typeof (value as { readonly toJSON?: unknown }).toJSON === "function"
    ? (value as { readonly toJSON: () => unknown }).toJSON()
    : value
  if (json !== value) return hasNonFinite(json, seen)
  return Object.values(value).some((item) => hasNonFinite(item, seen))
}

const isCodec = (codec: unknown): codec is Codec => codec === "json" || codec === "text" || codec === "bytes"

/** A value of any type as a string, for an error's message (`String` throws for an object without prototype). */
const show = (value: unknown): string => {
  if (typeof value === "string") return value
  try {
    return String(value)
  } catch {
    return Object.prototype.toString.call(value)
  }
}

interface Internals {
  readonly parsed: Pattern.Pattern
  readonly decodePayload: (input: unknown) => Effect.Effect<unknown, Schema.SchemaError, unknown>
  readonly encodePayload: (input: unknown) => Effect.Effect<unknown, Schema.SchemaError, unknown>
  readonly replySchema: Schema.Codec<unknown, Uint8Array, unknown, unknown> | undefined
}

const internals = new WeakMap<object, Internals>()
/** What `make` keeps of a topic; `undefined` for a value that `make` did not make (from untyped code). */
const internalsOf = (topic: unknown): Internals | undefined => internals.get(topic as object)

/** The pattern of a topic for an error, also of a value that is not a topic. */
const patternOf = (topic: unknown): string => internalsOf(topic) === undefined ? show(topic) : (topic as Any).pattern

const NOT_A_TOPIC = "is not a typed topic (made by MqttTopic.make)"

/** Why `topic` cannot be used (it is no typed topic, or an invalid one), or `undefined`. */
const topicProblem = (topic: unknown): TopicParamsError | undefined => {
  if (internalsOf(topic) === undefined) {
    return new TopicParamsError({ pattern: show(topic), param: "", reason: NOT_A_TOPIC })
  }
  const problem = (topic as Any).problem
  return problem === undefined
    ? undefined
    : new TopicParamsError({ pattern: patternOf(topic), param: "", reason: problem })
}

/** Why `client` is not a client with `operation` (from untyped code), or `undefined`. */
const clientProblem = (client: unknown, operation: "publish" | "subscription" | "request" | "respond") =>
  typeof (client as Record<string, unknown> | null | undefined)?.[operation] === "function"
    ? undefined
    : new MqttError.InvalidOptionError({ option: "client", reason: "expected an MqttClient" })

/** Why `options` are not an object, when given, or `undefined`. */
const optionsProblem = (options: unknown) =>
  options === undefined || (typeof options === "object" && options !== null && !Array.isArray(options))
    ? undefined
    : new MqttError.InvalidOptionError({ option: "options", reason: "expected an object" })

/** Why `policy` is no {@link DecodeErrorPolicy}, or `undefined`. */
const policyProblem = (policy: unknown) =>
  policy === undefined || policy === "fail" || policy === "skip" ||
    (typeof policy === "object" && policy !== null &&
      typeof (policy as { readonly deadLetter?: unknown }).deadLetter === "function")
    ? undefined
    : new MqttError.InvalidOptionError({
      option: "onDecodeError",
      reason: `expected "fail", "skip" or { deadLetter: (error) => Effect }`
    })

/** Why a request topic cannot be used for a request or a response, or `undefined`. */
const requestTopicProblem = (topic: unknown): TopicParamsError | undefined =>
  topicProblem(topic) ??
    (internalsOf(topic)!.replySchema === undefined
      ? new TopicParamsError({
        pattern: patternOf(topic),
        param: "",
        reason: "is not a request topic: it has no reply Schema (the reply option of MqttTopic.make)"
      })
      : undefined)

// ---------------------------------------------------------------------------------------------------------------
// topic names
// ---------------------------------------------------------------------------------------------------------------

/**
 * The topic name for `params`: fails with {@link TopicParamsError} when a parameter is empty, not a string, or
 * contains `/`, `+` or `#` (each level of a tail likewise; an empty tail stands for the parent level), or when
 * the first level comes from a parameter and starts with `$` (`{site}/status` with `site: "$SYS"`): the topic's
 * filter (`+/status`) would not match it [MQTT-4.7.2-1], so no subscriber of the topic would receive it.
 *
 * @example
 * ```ts
 * import { Effect, Schema } from "effect"
 * import { MqttTopic } from "effect-mqtt"
 *
 * const Temperature = MqttTopic.make("sensors/{deviceId}/temperature", Schema.Number)
 * const name = MqttTopic.format(Temperature, { deviceId: "kitchen" }) // succeeds with "sensors/kitchen/temperature"
 * const refused = MqttTopic.format(Temperature, { deviceId: "a/b" }) // fails with TopicParamsError
 * ```
 *
 * @since 0.2.0
 * @category topic names
 */
export const format = <T extends Any>(topic: T, params: Params<T>): Effect.Effect<string, TopicParamsError> => {
  const self = internalsOf(topic)
  if (self === undefined) {
    return Effect.fail(new TopicParamsError({ pattern: show(topic), param: "", reason: NOT_A_TOPIC }))
  }
  const result = Pattern.format(self.parsed, params as Pattern.Params)
  return typeof result === "string"
    ? Effect.succeed(result)
    : Effect.fail(new TopicParamsError({ pattern: topic.pattern, param: result.param, reason: result.reason }))
}

/**
 * The parameters of a topic name when it matches the topic's pattern. Matching follows the subscription
 * filter's rules: a pattern that starts with a parameter does not match a topic that starts with `$`
 * (`{site}/status` does not match `$SYS/status`), and a tail matches the parent level with no levels
 * (`logs/{path...}` gives `path: []` for `logs`).
 *
 * @example
 * ```ts
 * import { Schema } from "effect"
 * import { MqttTopic } from "effect-mqtt"
 *
 * const Logs = MqttTopic.make("logs/{app}/{path...}", Schema.String, { codec: "text" })
 * MqttTopic.match(Logs, "logs/api/http/errors") // Option.some({ app: "api", path: ["http", "errors"] })
 * MqttTopic.match(Logs, "metrics/api") // Option.none()
 * ```
 *
 * @since 0.2.0
 * @category topic names
 */
export const match = <T extends Any>(topic: T, name: string): Option.Option<Params<T>> => {
  const self = internalsOf(topic)
  return self === undefined
    ? Option.none()
    : Option.fromUndefinedOr(Pattern.match(self.parsed, name) as Params<T> | undefined)
}

// ---------------------------------------------------------------------------------------------------------------
// payloads
// ---------------------------------------------------------------------------------------------------------------

/**
 * Encodes a value to payload bytes with the topic's Schema and codec. Fails with {@link TopicEncodeError}.
 *
 * @example
 * ```ts
 * import { Schema } from "effect"
 * import { MqttTopic } from "effect-mqtt"
 *
 * const Level = MqttTopic.make("tanks/{tank}/level", Schema.Number)
 * const bytes = MqttTopic.encode(Level, 0.75) // the UTF-8 bytes of "0.75"
 * ```
 *
 * @since 0.2.0
 * @category payloads
 */
export const encode = <T extends Any>(
  topic: T,
  value: Type<T>
): Effect.Effect<Uint8Array, TopicEncodeError, T["schema"]["EncodingServices"]> => {
  const self = internalsOf(topic)
  if (self === undefined) {
    return Effect.fail(
      new TopicEncodeError({
        pattern: show(topic),
        issue: new SchemaIssue.InvalidValue({ message: NOT_A_TOPIC })
      })
    )
  }
  return Effect.mapError(
    self.encodePayload(value) as Effect.Effect<Uint8Array, Schema.SchemaError>,
    (error) => new TopicEncodeError({ pattern: topic.pattern, issue: error.issue })
  )
}

/**
 * Decodes a received message with the topic: its parameters from the topic name and its payload with the
 * Schema. Fails with {@link TopicDecodeError} (reason `"topic"` or `"payload"`).
 *
 * @example
 * ```ts
 * import { Effect, Schema } from "effect"
 * import { MqttMessage, MqttTopic } from "effect-mqtt"
 *
 * const Level = MqttTopic.make("tanks/{tank}/level", Schema.Number)
 * const message = new MqttMessage.MqttMessage("tanks/t1/level", new TextEncoder().encode("0.75"), 0, false, false)
 * const received = MqttTopic.decode(Level, message) // { params: { tank: "t1" }, payload: 0.75, message }
 * ```
 *
 * @since 0.2.0
 * @category payloads
 */
export const decode = <T extends Any>(
  topic: T,
  message: MqttMessage.MqttMessage
): Effect.Effect<ReceivedOf<T>, TopicDecodeError, T["schema"]["DecodingServices"]> => {
  const self = internalsOf(topic)
  const name: unknown = typeof message === "object" && message !== null ? message.topic : undefined
  // no typed topic, or no message (untyped code): a topic that does not match
  const params = self === undefined ? undefined : Pattern.match(self.parsed, name as string)
  if (self === undefined || params === undefined) {
    return Effect.fail(
      new TopicDecodeError({
        pattern: patternOf(topic),
        topic: show(name),
        reason: "topic",
        issue: undefined,
        mqttMessage: message
      })
    )
  }
  return Effect.mapBoth(self.decodePayload(message.payload), {
    onFailure: (error) =>
      new TopicDecodeError({
        pattern: topic.pattern,
        topic: message.topic,
        reason: "payload",
        issue: error.issue,
        mqttMessage: message
      }),
    onSuccess: (payload) => ({ params, payload, message }) as ReceivedOf<T>
  }) as Effect.Effect<ReceivedOf<T>, TopicDecodeError, T["schema"]["DecodingServices"]>
}

// ---------------------------------------------------------------------------------------------------------------
// publishing
// ---------------------------------------------------------------------------------------------------------------

const publishWith = <T extends Any>(
  client: MqttClient.Client,
  topic: T,
  params: Params<T>,
  value: Type<T>,
  options?: MqttClient.PublishOptions
): Effect.Effect<
  void,
  MqttError.MqttError | TopicParamsError | TopicEncodeError,
  T["schema"]["EncodingServices"]
> =>
  Effect.suspend(() => {
    const problem = clientProblem(client, "publish")
    if (problem !== undefined) return Effect.fail(problem)
    return Effect.flatMap(
      Effect.zip(format(topic, params), encode(topic, value)),
      ([name, payload]) => client.publish(name, payload, options)
    )
  })

/**
 * Publishes a value to the topic name made from `params`. The parameters are checked and the value encoded
 * before anything is sent: a bad parameter fails with {@link TopicParamsError}, a value the Schema refuses with
 * {@link TopicEncodeError}; then it fails as `MqttClient.publish` does.
 *
 * Give the client first, or leave it out to use the `MqttClient` service.
 *
 * @example
 * ```ts
 * import { Effect, Schema } from "effect"
 * import { MqttClient, MqttTopic } from "effect-mqtt"
 *
 * const Temperature = MqttTopic.make("sensors/{deviceId}/temperature", Schema.Struct({ celsius: Schema.Number }))
 *
 * // with the MqttClient service
 * const program = MqttTopic.publish(Temperature, { deviceId: "kitchen" }, { celsius: 21.5 }, { qos: 1 })
 *
 * // with a client at hand
 * const withClient = (client: MqttClient.Client) =>
 *   MqttTopic.publish(client, Temperature, { deviceId: "kitchen" }, { celsius: 21.5 })
 * ```
 *
 * @since 0.2.0
 * @category publishing
 */
export const publish: {
  <T extends Any>(
    topic: T,
    params: Params<T>,
    value: Type<T>,
    options?: MqttClient.PublishOptions
  ): Effect.Effect<
    void,
    MqttError.MqttError | TopicParamsError | TopicEncodeError,
    MqttClient.MqttClient | T["schema"]["EncodingServices"]
  >
  <T extends Any>(
    client: MqttClient.Client,
    topic: T,
    params: Params<T>,
    value: Type<T>,
    options?: MqttClient.PublishOptions
  ): Effect.Effect<void, MqttError.MqttError | TopicParamsError | TopicEncodeError, T["schema"]["EncodingServices"]>
} = function(this: unknown, ...args: Array<any>): any {
  return isMqttTopic(args[0])
    ? Effect.flatMap(
      Effect.service(MqttClientService),
      (client) => publishWith(client, args[0], args[1], args[2], args[3])
    )
    : publishWith(args[0], args[1], args[2], args[3], args[4])
}

// ---------------------------------------------------------------------------------------------------------------
// subscribing
// ---------------------------------------------------------------------------------------------------------------

/**
 * What a typed subscription does with a message that does not decode (its topic does not match the pattern, or
 * its payload does not decode with the Schema):
 *
 * - `"fail"` (the default): the stream fails with the {@link TopicDecodeError}.
 * - `"skip"`: the message is dropped and counted in {@link decodeFailures}; the stream goes on.
 * - `{ deadLetter }`: the error, which carries the raw message, is handed to `deadLetter`; the stream goes on
 *   (a failure of `deadLetter` fails the stream).
 *
 * With manual acknowledgement (`acknowledgement: "manual"`), a skipped message is acknowledged as it is skipped,
 * and a dead letter once `deadLetter` succeeded: the application never sees them to acknowledge them, and an
 * unacknowledged message would hold back every later acknowledgement.
 *
 * Every decode failure is counted in {@link decodeFailures}, whatever the policy.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import type { MqttTopic } from "effect-mqtt"
 *
 * const toDeadLetters: MqttTopic.DecodeErrorPolicy = {
 *   deadLetter: (error) => Effect.logWarning(`undecodable message on ${error.topic}`, error.mqttMessage.text)
 * }
 * ```
 *
 * @since 0.2.0
 * @category models
 */
export type DecodeErrorPolicy<E = never, R = never> =
  | "fail"
  | "skip"
  | {
    /** Receives each message that does not decode, inside its {@link TopicDecodeError}; its failure fails the
     * stream. */
    readonly deadLetter: (error: TopicDecodeError) => Effect.Effect<void, E, R>
  }

/**
 * The options of {@link subscribe}: those of `MqttClient.subscribe`, a share group, and the decode failure
 * policy.
 *
 * @example
 * ```ts
 * import type { MqttTopic } from "effect-mqtt"
 *
 * const options: MqttTopic.SubscribeOptions = { qos: 1, share: "workers", onDecodeError: "skip" }
 * ```
 *
 * @since 0.2.0
 * @category models
 */
export interface SubscribeOptions<E = never, R = never> extends MqttClient.SubscribeOptions {
  /** MQTT 5 shared subscription: subscribe with `$share/{share}/{filter}`, so that each message goes to one
   * member of the group. The share name is one topic level: non-empty, without `/`, `+` or `#` (else
   * `InvalidOptionError`, before anything is sent). */
  readonly share?: string | undefined
  /** What to do with a message that does not decode. Default `"fail"`. */
  readonly onDecodeError?: DecodeErrorPolicy<E, R> | undefined
}

/**
 * The number of received messages that did not decode, by topic pattern (attribute `mqtt.topic.pattern`) and
 * policy (attribute `policy`: `fail`, `skip` or `deadLetter`). An Effect `Metric` counter, exported by Effect's
 * metric exporters; read one series with {@link decodeFailureCount}.
 *
 * @example
 * ```ts
 * import { Effect, Metric } from "effect"
 * import { MqttTopic } from "effect-mqtt"
 *
 * const skipped = Metric.value(
 *   Metric.withAttributes(MqttTopic.decodeFailures, { "mqtt.topic.pattern": "tanks/{tank}/level", policy: "skip" })
 * ).pipe(Effect.map((state) => state.count))
 * ```
 *
 * @since 0.2.0
 * @category metrics
 */
export const decodeFailures: Metric.Counter<number> = Metric.counter("mqtt_topic_decode_failures", {
  description: "Received MQTT messages that did not decode with their topic's Schema",
  incremental: true
})

/**
 * How many messages of the topic did not decode, for one policy (default `"skip"`), as counted by
 * {@link decodeFailures} in the current `Metric.MetricRegistry`.
 *
 * @example
 * ```ts
 * import { Effect, Schema } from "effect"
 * import { MqttTopic } from "effect-mqtt"
 *
 * const Level = MqttTopic.make("tanks/{tank}/level", Schema.Number)
 * const skipped = MqttTopic.decodeFailureCount(Level) // Effect<number>
 * ```
 *
 * @since 0.2.0
 * @category metrics
 */
export const decodeFailureCount = (
  topic: Any,
  policy: "fail" | "skip" | "deadLetter" = "skip"
): Effect.Effect<number> =>
  // a value that is no typed topic (untyped code) counted nothing
  internalsOf(topic) === undefined
    ? Effect.succeed(0)
    : Effect.map(Metric.value(failureSeries(topic.pattern, show(policy))), (state) => state.count)

const failureSeries = (pattern: string, policy: string) =>
  Metric.withAttributes(decodeFailures, { "mqtt.topic.pattern": pattern, policy })

/** The decode step of a typed stream, with the policy applied: a `Result` that fails to skip. */
const decodeWithPolicy = <T extends Any, E, R>(topic: T, policy: DecodeErrorPolicy<E, R>) => {
  const name = policy === "fail" ? "fail" : policy === "skip" ? "skip" : "deadLetter"
  const counter = failureSeries(topic.pattern, name)
  return (
    message: MqttMessage.MqttMessage
  ): Effect.Effect<Result.Result<ReceivedOf<T>, void>, TopicDecodeError | E, R | T["schema"]["DecodingServices"]> =>
    Effect.matchEffect(decode(topic, message), {
      onSuccess: (received) => Effect.succeed(Result.succeed(received)),
      onFailure: (error) =>
        Effect.andThen(
          Metric.update(counter, 1),
          // a message the policy takes out of the stream is acknowledged (with manual acknowledgement the
          // application never sees it to do so: it would hold back every later acknowledgement for good);
          // `deadLetter`'s once the handler succeeded
          policy === "fail"
            ? Effect.fail<TopicDecodeError | E>(error)
            : policy === "skip"
            ? Effect.as(error.mqttMessage.ack, Result.failVoid)
            : Effect.as(Effect.andThen(policy.deadLetter(error), error.mqttMessage.ack), Result.failVoid)
        ) as Effect.Effect<Result.Result<ReceivedOf<T>, void>, TopicDecodeError | E, R>
    })
}

/**
 * The filter to subscribe to: the topic's, or `$share/{share}/{filter}`. A share name is one topic level: with a
 * `/` the broker would take its first level for the group and the rest for the filter, and subscribe silently to
 * another filter; so it is refused (`InvalidOptionError`), as `+`, `#` and an empty one are, before anything is sent.
 */
const filterOf = (
  topic: Any,
  share: string | undefined
): Effect.Effect<string, TopicParamsError | MqttError.InvalidOptionError> => {
  const problem = topicProblem(topic)
  if (problem !== undefined) return Effect.fail(problem)
  if (share === undefined) return Effect.succeed(topic.filter)
  const shareProblem = shareNameProblem(share)
  return shareProblem === undefined
    ? Effect.succeed(`$share/${share}/${topic.filter}`)
    : Effect.fail(new MqttError.InvalidOptionError({ option: "share", reason: shareProblem }))
}

const subscribeWith = <T extends Any, E = never, R = never>(
  client: MqttClient.Client,
  topic: T,
  options?: SubscribeOptions<E, R>
): Effect.Effect<
  Stream.Stream<ReceivedOf<T>, MqttError.MqttError | TopicDecodeError | E, R | T["schema"]["DecodingServices"]>,
  MqttError.MqttError | TopicParamsError,
  Scope.Scope
> =>
  Effect.gen(function*() {
    const problem = clientProblem(client, "subscription") ?? optionsProblem(options) ??
      policyProblem(options?.onDecodeError)
    if (problem !== undefined) return yield* problem
    const filter = yield* filterOf(topic, options?.share)
    const { onDecodeError: _, share: __, ...subscribeOptions } = options ?? {}
    const messages = yield* client.subscription(filter, subscribeOptions)
    // one message at a time (not a chunk at a time): the messages before a failing one are emitted first
    return messages.pipe(
      Stream.mapEffect(decodeWithPolicy(topic, options?.onDecodeError ?? "fail")),
      Stream.filterMap(identity)
    )
  })

/**
 * Subscribes to the topic's filter for the life of the enclosing scope and returns a stream of its messages,
 * each with the parameters taken from its topic name and the payload decoded with the Schema. The
 * subscription is made (SUBACK received) when this effect succeeds; it is removed when the scope closes.
 *
 * Messages come through `MqttClient.subscription`: they have a queue of their own, of the client's `queue`
 * kind, and do not appear on `client.messages`. A message that does not decode is handled by
 * `onDecodeError` (see {@link DecodeErrorPolicy}; default: the stream fails with {@link TopicDecodeError}).
 *
 * Give the client first, or leave it out to use the `MqttClient` service.
 *
 * @example
 * ```ts
 * import { Effect, Schema, Stream } from "effect"
 * import { MqttTopic } from "effect-mqtt"
 *
 * const Temperature = MqttTopic.make("sensors/{deviceId}/temperature", Schema.Struct({ celsius: Schema.Number }))
 *
 * const program = Effect.gen(function*() {
 *   const readings = yield* MqttTopic.subscribe(Temperature, { qos: 1, onDecodeError: "skip" })
 *   yield* Stream.runForEach(readings, ({ params, payload }) => Effect.log(`${params.deviceId}: ${payload.celsius}`))
 * }).pipe(Effect.scoped)
 * ```
 *
 * @since 0.2.0
 * @category subscribing
 */
export const subscribe: {
  <T extends Any, E = never, R = never>(
    topic: T,
    options?: SubscribeOptions<E, R>
  ): Effect.Effect<
    Stream.Stream<ReceivedOf<T>, MqttError.MqttError | TopicDecodeError | E, R | T["schema"]["DecodingServices"]>,
    MqttError.MqttError | TopicParamsError,
    Scope.Scope | MqttClient.MqttClient
  >
  <T extends Any, E = never, R = never>(
    client: MqttClient.Client,
    topic: T,
    options?: SubscribeOptions<E, R>
  ): Effect.Effect<
    Stream.Stream<ReceivedOf<T>, MqttError.MqttError | TopicDecodeError | E, R | T["schema"]["DecodingServices"]>,
    MqttError.MqttError | TopicParamsError,
    Scope.Scope
  >
} = function(this: unknown, ...args: Array<any>): any {
  return isMqttTopic(args[0])
    ? Effect.flatMap(Effect.service(MqttClientService), (client) => subscribeWith(client, args[0], args[1]))
    : subscribeWith(args[0], args[1], args[2])
}

// ---------------------------------------------------------------------------------------------------------------
// request / response
// ---------------------------------------------------------------------------------------------------------------

const decodeReply = <T extends AnyRequest>(
  topic: T,
  message: MqttMessage.MqttMessage
): Effect.Effect<ReplyType<T>, TopicDecodeError, T["reply"]["DecodingServices"]> =>
  Effect.mapError(
    Schema.decodeUnknownEffect(internalsOf(topic)!.replySchema!)(message.payload) as Effect.Effect<
      ReplyType<T>,
      Schema.SchemaError
    >,
    (error) =>
      new TopicDecodeError({
        pattern: topic.pattern,
        topic: message.topic,
        reason: "reply",
        issue: error.issue,
        mqttMessage: message
      })
  )

const encodeReply = <T extends AnyRequest>(
  topic: T,
  value: ReplyType<T>
): Effect.Effect<Uint8Array, TopicEncodeError, T["reply"]["EncodingServices"]> =>
  Effect.mapError(
    Schema.encodeUnknownEffect(internalsOf(topic)!.replySchema!)(value) as Effect.Effect<
      Uint8Array,
      Schema.SchemaError
    >,
    (error) => new TopicEncodeError({ pattern: topic.pattern, issue: error.issue })
  )

const requestWith = <T extends AnyRequest>(
  client: MqttClient.Client,
  topic: T,
  params: Params<T>,
  value: Type<T>,
  options?: MqttClient.RequestOptions
): Effect.Effect<
  ReplyType<T>,
  MqttError.MqttError | TopicParamsError | TopicEncodeError | TopicDecodeError,
  T["schema"]["EncodingServices"] | T["reply"]["DecodingServices"]
> =>
  Effect.gen(function*() {
    // a topic without a reply Schema (untyped code) is refused before the request is sent
    const problem = requestTopicProblem(topic) ?? clientProblem(client, "request")
    if (problem !== undefined) return yield* problem
    const name = yield* format(topic, params)
    const payload = yield* encode(topic, value)
    const response = yield* client.request(name, payload, options)
    return yield* decodeReply(topic, response)
  })

/**
 * MQTT 5 request/response with typed payloads: publishes the encoded request to the topic name made from
 * `params` (through `MqttClient.request`: a response topic and correlation data are added), waits for the
 * reply and decodes it with the topic's reply Schema. Fails with {@link TopicParamsError} or
 * {@link TopicEncodeError} before sending, with {@link TopicDecodeError} (reason `"reply"`) when the reply does
 * not decode, and as `MqttClient.request` does otherwise (`MqttTimeoutError` after `timeout`, default 30 s).
 *
 * Give the client first, or leave it out to use the `MqttClient` service.
 *
 * @example
 * ```ts
 * import { Effect, Schema } from "effect"
 * import { MqttTopic } from "effect-mqtt"
 *
 * const Add = MqttTopic.make("calc/{precision}/add", Schema.Tuple([Schema.Number, Schema.Number]), {
 *   reply: Schema.Number
 * })
 *
 * const sum = MqttTopic.request(Add, { precision: "exact" }, [1, 2], { timeout: "5 seconds" })
 * ```
 *
 * @since 0.2.0
 * @category request/response
 */
export const request: {
  <T extends AnyRequest>(
    topic: T,
    params: Params<T>,
    value: Type<T>,
    options?: MqttClient.RequestOptions
  ): Effect.Effect<
    ReplyType<T>,
    MqttError.MqttError | TopicParamsError | TopicEncodeError | TopicDecodeError,
    MqttClient.MqttClient | T["schema"]["EncodingServices"] | T["reply"]["DecodingServices"]
  >
  <T extends AnyRequest>(
    client: MqttClient.Client,
    topic: T,
    params: Params<T>,
    value: Type<T>,
    options?: MqttClient.RequestOptions
  ): Effect.Effect<
    ReplyType<T>,
    MqttError.MqttError | TopicParamsError | TopicEncodeError | TopicDecodeError,
    T["schema"]["EncodingServices"] | T["reply"]["DecodingServices"]
  >
} = function(this: unknown, ...args: Array<any>): any {
  return isMqttTopic(args[0])
    ? Effect.flatMap(
      Effect.service(MqttClientService),
      (client) => requestWith(client, args[0], args[1], args[2], args[3])
    )
    : requestWith(args[0], args[1], args[2], args[3], args[4])
}

/**
 * The options of {@link respond}.
 *
 * @example
 * ```ts
 * import type { MqttTopic } from "effect-mqtt"
 *
 * const options: MqttTopic.RespondOptions = { qos: 1, concurrency: 4, share: "calculators", onDecodeError: "skip" }
 * ```
 *
 * @since 0.2.0
 * @category models
 */
export interface RespondOptions<E = never, R = never> {
  /** The QoS of the subscription and of the replies. Default 1. */
  readonly qos?: MqttClient.QoS | undefined
  /** How many requests are handled at once. Default 1. */
  readonly concurrency?: number | "unbounded" | undefined
  /** Share the requests with the other responders of this group (`$share/{share}/{filter}`). The share name is
   * one topic level: non-empty, without `/`, `+` or `#` (else `InvalidOptionError`, before anything is sent). */
  readonly share?: string | undefined
  /**
   * What to do with a request that does not decode; it gets no reply. Default `"skip"` (counted, and a
   * warning among the client's log lines): a requester's bad payload is that request's own. `"fail"` ends the
   * responder with the {@link TopicDecodeError}, so that any client that can publish to the topic can stop it;
   * a dead letter handler's failure ends it too.
   */
  readonly onDecodeError?: DecodeErrorPolicy<E, R> | undefined
  /**
   * Completed once the responder's subscription is in place (the broker's SUBACK granted it): a request
   * published after that reaches the responder. Failed with the error when the subscription fails (or the
   * topic's parameters do not make a filter, or the share name is invalid), interrupted when the responder is
   * interrupted first. So its error type is `MqttError | TopicParamsError`, where `client.respond`'s is
   * `MqttError`: make the `Deferred` with both (`Deferred.make<void, MqttError.MqttError |
   * MqttTopic.TopicParamsError>()`). Default: none.
   */
  readonly subscribed?: Deferred.Deferred<void, MqttError.MqttError | TopicParamsError> | undefined
}

/**
 * The arguments of a typed responder that `client.respond` does not check itself (it checks the QoS, the
 * concurrency and `subscribed`): untyped code may give values of any type.
 */
const checkResponder = (
  client: unknown,
  topic: unknown,
  handler: unknown,
  options: RespondOptions<unknown, unknown> | undefined
): Effect.Effect<void, TopicParamsError | MqttError.InvalidOptionError> => {
  const problem = requestTopicProblem(topic) ?? clientProblem(client, "respond") ??
    (typeof handler === "function"
      ? undefined
      : new MqttError.InvalidOptionError({ option: "handler", reason: "expected a function" })) ??
    optionsProblem(options) ?? policyProblem(options?.onDecodeError)
  return problem === undefined ? Effect.void : Effect.fail(problem)
}

const respondWith = <T extends AnyRequest, E, R, E2 = never, R2 = never>(
  client: MqttClient.Client,
  topic: T,
  handler: (request: ReceivedOf<T>) => Effect.Effect<ReplyType<T>, E, R>,
  options?: RespondOptions<E2, R2>
): Effect.Effect<
  void,
  MqttError.MqttError | TopicParamsError | TopicDecodeError | E2,
  R | R2 | T["schema"]["DecodingServices"] | T["reply"]["EncodingServices"]
> =>
  Effect.gen(function*() {
    // the typed checks fail `subscribed` too; its success is the client's, once the SUBACK granted the filter
    const filter = yield* checkResponder(client, topic, handler, options as RespondOptions<unknown, unknown>).pipe(
      Effect.andThen(filterOf(topic, options?.share)),
      Effect.tapError((error) =>
        Deferred.isDeferred(options?.subscribed) ? Deferred.fail(options.subscribed, error) : Effect.void
      )
    )
    // a request that does not decode is the requester's mistake: by default it is skipped (a warning), and only
    // an explicit `"fail"` (or a failing dead letter handler) ends the responder
    const policy = options?.onDecodeError ?? "skip"
    const counter = failureSeries(topic.pattern, typeof policy === "string" ? policy : "deadLetter")
    const serve = (message: MqttMessage.MqttMessage) =>
      Effect.matchEffect(decode(topic, message), {
        onFailure: (error) => {
          const handled: Effect.Effect<NoReply, EndResponder<TopicDecodeError | E2>, R2> = policy === "fail"
            ? Effect.fail(new EndResponder(error))
            : policy === "skip"
            ? Effect.succeed(new NoReply(error.message))
            : Effect.as(Effect.mapError(policy.deadLetter(error), (e) => new EndResponder(e)), new NoReply(undefined))
          return Effect.andThen(Metric.update(counter, 1), handled)
        },
        // the handler's failure and a reply that does not encode are this request's own: no reply, a warning
        onSuccess: (received) => Effect.flatMap(handler(received), (reply) => encodeReply(topic, reply))
      })
    return yield* client.respond(
      filter,
      serve as (message: MqttMessage.MqttMessage) => Effect.Effect<Uint8Array, unknown, any>,
      {
        qos: options?.qos ?? 1,
        concurrency: options?.concurrency ?? 1,
        subscribed: options?.subscribed as Deferred.Deferred<void, MqttError.MqttError> | undefined
      }
    ) as Effect.Effect<
      void,
      MqttError.MqttError | TopicDecodeError | E2,
      R | R2 | T["schema"]["DecodingServices"] | T["reply"]["EncodingServices"]
    >
  })

/**
 * MQTT 5, the responder's side of {@link request}: handles the requests published to the topic's filter, each
 * decoded with the topic's Schema, and publishes each reply, encoded with the reply Schema, to the request's
 * response topic with its correlation data. Runs until interrupted (fork it). A request without a response
 * topic gets no reply (the handler does not see it). Built on `MqttClient.respond`, with its rules:
 *
 * - What goes wrong with one request is that request's own: it gets no reply, a warning among the client's log
 *   lines names its topic, its response topic and why, and the responder goes on. So it is for a request that
 *   does not decode (under the default `onDecodeError: "skip"`), a failure of the handler, a reply that does not
 *   encode ({@link TopicEncodeError}), and a reply that cannot be published (refused by the broker, larger than
 *   its Maximum Packet Size, an invalid response topic...).
 * - The responder ends with the error when its topic's parameters do not make a filter ({@link TopicParamsError})
 *   or an option is invalid (both before anything is sent), when its subscription is refused, when the client
 *   stops for good, under `onDecodeError: "fail"` ({@link TopicDecodeError}) or when a dead letter handler
 *   fails; also on a defect of the handler.
 *
 * Give the client first, or leave it out to use the `MqttClient` service.
 *
 * @example
 * ```ts
 * import { Effect, Schema } from "effect"
 * import { MqttTopic } from "effect-mqtt"
 *
 * const Add = MqttTopic.make("calc/{precision}/add", Schema.Tuple([Schema.Number, Schema.Number]), {
 *   reply: Schema.Number
 * })
 *
 * const responder = MqttTopic.respond(Add, ({ payload: [a, b] }) => Effect.succeed(a + b), { onDecodeError: "skip" })
 * ```
 *
 * @since 0.2.0
 * @category request/response
 */
export const respond: {
  <T extends AnyRequest, E, R, E2 = never, R2 = never>(
    topic: T,
    handler: (request: ReceivedOf<T>) => Effect.Effect<ReplyType<T>, E, R>,
    options?: RespondOptions<E2, R2>
  ): Effect.Effect<
    void,
    MqttError.MqttError | TopicParamsError | TopicDecodeError | E2,
    MqttClient.MqttClient | R | R2 | T["schema"]["DecodingServices"] | T["reply"]["EncodingServices"]
  >
  <T extends AnyRequest, E, R, E2 = never, R2 = never>(
    client: MqttClient.Client,
    topic: T,
    handler: (request: ReceivedOf<T>) => Effect.Effect<ReplyType<T>, E, R>,
    options?: RespondOptions<E2, R2>
  ): Effect.Effect<
    void,
    MqttError.MqttError | TopicParamsError | TopicDecodeError | E2,
    R | R2 | T["schema"]["DecodingServices"] | T["reply"]["EncodingServices"]
  >
} = function(this: unknown, ...args: Array<any>): any {
  return isMqttTopic(args[0])
    ? Effect.flatMap(Effect.service(MqttClientService), (client) => respondWith(client, args[0], args[1], args[2]))
    : respondWith(args[0], args[1], args[2], args[3])
}
