/**
 * `effect-mqtt sub`: connects, subscribes to one or more topic filters and writes each message on standard
 * output (see `output.ts` for the formats) until `-C` messages have arrived, `-W` seconds have passed, or it is
 * stopped with SIGINT / SIGTERM. A lost connection is retried (as `mosquitto_sub`); the subscriptions are
 * restored by the client. Flag names follow `mosquitto_sub`.
 *
 * @since 0.1.0
 */
import * as Command from "effect/cli/Command"
import * as Flag from "effect/cli/Flag"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type * as PlatformError from "effect/PlatformError"
import * as Stdio from "effect/Stdio"
import * as Stream from "effect/Stream"
import * as Topic from "../Topic.ts"
import { clientOptions, connect, connectionFlags, debug, qosFlag } from "./connection.ts"
import { programName, reportFailures, TimedOutError, UsageError } from "./errors.ts"
import { render } from "./output.ts"

const subFlags = {
  topic: Flag.String("topic").pipe(
    Flag.withAlias("t"),
    Flag.withDescription("A topic filter to subscribe to (+ and # wildcards); repeat the flag for more"),
    Flag.atLeast(1)
  ),
  qos: qosFlag("The maximum QoS of the messages: 0, 1 or 2. Default 0"),
  count: Flag.Int("count").pipe(
    Flag.withAlias("C"),
    Flag.withDescription("Exit after this many messages"),
    Flag.optional
  ),
  timeout: Flag.Finite("timeout").pipe(
    Flag.withAlias("W"),
    Flag.withDescription(
      "Exit after this many seconds once subscribed; with -C, exit code 3 when fewer messages arrived"
    ),
    Flag.optional
  ),
  verbose: Flag.Boolean("verbose").pipe(
    Flag.withAlias("v"),
    Flag.withDescription("Print the topic, a space, then the payload"),
    Flag.withDefault(false)
  ),
  format: Flag.Literals("format", ["text", "json"] as const).pipe(
    Flag.withDescription(
      "text: the payload as it is; json: a JSON object a line with topic, payload (text, or base64 when not " +
        "UTF-8, see payloadEncoding), qos, retain and properties"
    ),
    Flag.withDefault("text" as const)
  ),
  noLocal: Flag.Boolean("no-local").pipe(
    Flag.withoutNegation,
    Flag.withDescription("MQTT 5: do not receive the messages this client publishes"),
    Flag.withDefault(false)
  ),
  connection: connectionFlags
} as const

/**
 * The parsed flags of `sub`.
 *
 * @since 0.1.0
 * @category models
 */
export type SubFlags = Command.Command.Config.Infer<typeof subFlags>

const validate = Effect.fnUntraced(function*(flags: SubFlags) {
  const count = Option.getOrUndefined(flags.count)
  const seconds = Option.getOrUndefined(flags.timeout)
  if (count !== undefined && count < 1) return yield* new UsageError({ message: "-C must be at least 1" })
  if (seconds !== undefined && !(seconds > 0)) return yield* new UsageError({ message: "-W must be above 0" })
  const filters = yield* Effect.forEach(flags.topic, Topic.validateFilter)
  return { count, seconds, filters }
})

const run = Effect.fnUntraced(function*(flags: SubFlags) {
  const { count, filters, seconds } = yield* validate(flags)
  const options = yield* clientOptions(flags.connection, flags.noLocal ? ["--no-local"] : [])
  const stdio = yield* Stdio.Stdio
  yield* Effect.scoped(Effect.gen(function*() {
    const client = yield* connect(flags.connection, options)
    const granted = yield* client.subscribe(filters, { qos: flags.qos, noLocal: flags.noLocal ? true : undefined })
    yield* debug(flags.connection, `subscribed: ${granted.map((g) => `${g.filter} (QoS ${g.qos})`).join(", ")}`)
    let received = 0
    const messages = count === undefined ? client.messages : Stream.take(client.messages, count)
    const written = messages.pipe(
      Stream.map((message) => {
        received++
        return render(message, flags)
      }),
      Stream.run(stdio.stdout()),
      Effect.catchTag("PlatformError", (error) =>
        // the reader went away (`| head -1`): stop quietly, as a tool killed by SIGPIPE would
        isBrokenPipe(error)
          ? Effect.void
          : Effect.fail(new OutputError({ message: `cannot write to standard output: ${error.message}` })))
    )
    if (seconds === undefined) return yield* written
    const done = yield* Effect.timeoutOption(written, Duration.seconds(seconds))
    if (Option.isNone(done) && count !== undefined) {
      return yield* new TimedOutError({ seconds, received, expected: count })
    }
  }))
})

/** Writing on standard output failed (other than a closed pipe): exit code 1. */
class OutputError extends Data.TaggedError("OutputError")<{ readonly message: string }> {}

const isBrokenPipe = (error: PlatformError.PlatformError): boolean => {
  const cause: unknown = error.reason.cause
  return typeof cause === "object" && cause !== null && "code" in cause && cause.code === "EPIPE"
}

/**
 * The `sub` command.
 *
 * @since 0.1.0
 * @category commands
 */
export const sub = Command.make(
  "sub",
  subFlags,
  (flags) => run(flags).pipe(reportFailures([programName, "sub"]))
).pipe(
  Command.withDescription(
    "Subscribe to topic filters and print each message on standard output, until -C messages arrived, -W " +
      "seconds passed, or SIGINT / SIGTERM (exit code 0). A lost connection is retried."
  ),
  Command.withShortDescription("Subscribe and print messages"),
  Command.withExamples([
    { command: `${programName} sub -t 'sensors/#' -v`, description: "print topic and payload of each message" },
    {
      command: `${programName} sub -t a -t b -q 1 -C 10 -W 30`,
      description: "10 messages of two topics at QoS 1, exit code 3 if they do not arrive within 30 s"
    },
    {
      command: `${programName} sub -t 'events/#' --format json | jq .payload`,
      description: "one JSON object a line"
    },
    {
      command: `MQTT_URL=mqtts://broker:8883 MQTT_USERNAME=app MQTT_PASSWORD=... ${programName} sub -t x`,
      description: "the connection from the environment"
    }
  ])
)
