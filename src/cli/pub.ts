/**
 * `effect-mqtt pub`: connects, publishes one message (or one per line of standard input, or the same message
 * `--count` times), waits for the acknowledgements of QoS 1 and 2, disconnects. Flag names follow
 * `mosquitto_pub`.
 *
 * @since 0.1.0
 */
import * as Command from "effect/cli/Command"
import * as Flag from "effect/cli/Flag"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as FileSystem from "effect/FileSystem"
import * as Option from "effect/Option"
import * as Stdio from "effect/Stdio"
import * as Stream from "effect/Stream"
import type * as MqttMessage from "../MqttMessage.ts"
import * as Topic from "../Topic.ts"
import { clientOptions, connect, connectionFlags, debug, qosFlag } from "./connection.ts"
import { programName, reportFailures, UsageError } from "./errors.ts"

/** How many publishes may wait for their acknowledgement at once when there is no `--interval`. */
const WINDOW = 256

const pubFlags = {
  topic: Flag.String("topic").pipe(Flag.withAlias("t"), Flag.withDescription("The topic to publish to")),
  message: Flag.String("message").pipe(
    Flag.withAlias("m"),
    Flag.withDescription("The message (UTF-8 text)"),
    Flag.optional
  ),
  file: Flag.File("file", { mustExist: true }).pipe(
    Flag.withAlias("f"),
    Flag.withDescription("Send the bytes of this file as the message"),
    Flag.optional
  ),
  stdinLine: Flag.Boolean("stdin-line").pipe(
    Flag.withAlias("l"),
    Flag.withDescription("Send one message per line of standard input, as the lines arrive"),
    Flag.withDefault(false)
  ),
  stdinFile: Flag.Boolean("stdin-file").pipe(
    Flag.withAlias("s"),
    Flag.withDescription("Send the whole of standard input as one message"),
    Flag.withDefault(false)
  ),
  nullMessage: Flag.Boolean("null-message").pipe(
    Flag.withAlias("n"),
    Flag.withDescription("Send an empty message (with -r: clears the topic's retained message)"),
    Flag.withDefault(false)
  ),
  qos: qosFlag("Quality of service: 0, 1 or 2. Default 0"),
  retain: Flag.Boolean("retain").pipe(
    Flag.withAlias("r"),
    Flag.withDescription("Ask the broker to retain the message"),
    Flag.withDefault(false)
  ),
  contentType: Flag.String("content-type").pipe(
    Flag.withDescription("MQTT 5: the content type, e.g. application/json"),
    Flag.optional
  ),
  responseTopic: Flag.String("response-topic").pipe(
    Flag.withDescription("MQTT 5: the topic a responder should answer on"),
    Flag.optional
  ),
  correlationData: Flag.String("correlation-data").pipe(
    Flag.withDescription("MQTT 5: correlation data (UTF-8 text) a responder copies into its answer"),
    Flag.optional
  ),
  messageExpiry: Flag.Int("message-expiry").pipe(
    Flag.withDescription("MQTT 5: seconds after which the broker drops the message"),
    Flag.optional
  ),
  payloadFormat: Flag.ChoiceWithValue("payload-format", [["bytes", false], ["utf8", true]] as const).pipe(
    Flag.withDescription("MQTT 5: the payload format indicator: utf8 (text) or bytes"),
    Flag.optional
  ),
  userProperty: Flag.String("user-property").pipe(
    Flag.withMetavar("name=value"),
    Flag.withDescription("MQTT 5: a user property; repeat the flag for more (names may repeat)"),
    Flag.atLeast(0)
  ),
  count: Flag.Int("count").pipe(
    Flag.withAlias("repeat"),
    Flag.withDescription("Publish the message this many times (not with -l). Default 1"),
    Flag.withDefault(1)
  ),
  interval: Flag.Finite("interval").pipe(
    Flag.withAlias("repeat-delay"),
    Flag.withDescription(
      "Seconds to wait between publishes. Default 0: up to 256 publishes await their acknowledgement at once"
    ),
    Flag.withDefault(0)
  ),
  connection: connectionFlags
} as const

/**
 * The parsed flags of `pub`.
 *
 * @since 0.1.0
 * @category models
 */
export type PubFlags = Command.Command.Config.Infer<typeof pubFlags>

/** Where the message comes from: exactly one of -m, -f, -s, -n, -l. */
type Source =
  | { readonly _tag: "Message"; readonly payload: Effect.Effect<Uint8Array | string, UsageError, Environment> }
  | { readonly _tag: "Lines" }

type Environment = FileSystem.FileSystem | Stdio.Stdio

const messageSource = (flags: PubFlags): Effect.Effect<Source, UsageError> => {
  const given: Array<Source> = []
  if (Option.isSome(flags.message)) given.push(message(Effect.succeed(flags.message.value)))
  if (Option.isSome(flags.file)) given.push(message(readFile(flags.file.value)))
  if (flags.stdinFile) given.push(message(readStdin))
  if (flags.nullMessage) given.push(message(Effect.succeed(new Uint8Array(0))))
  if (flags.stdinLine) given.push({ _tag: "Lines" })
  if (given.length !== 1) {
    return Effect.fail(
      new UsageError({ message: `give exactly one of -m, -f, -s, -n or -l (${given.length} given)` })
    )
  }
  if (given[0]._tag === "Lines" && flags.count !== 1) {
    return Effect.fail(new UsageError({ message: "--count applies to -m, -f, -s and -n, not to -l" }))
  }
  if (flags.count < 1) return Effect.fail(new UsageError({ message: "--count must be at least 1" }))
  if (!(flags.interval >= 0)) return Effect.fail(new UsageError({ message: "--interval must not be negative" }))
  return Effect.succeed(given[0])
}

const message = (payload: Effect.Effect<Uint8Array | string, UsageError, Environment>): Source => ({
  _tag: "Message",
  payload
})

const readFile = (path: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    return yield* fs.readFile(path)
  }).pipe(Effect.mapError((error) => new UsageError({ message: `cannot read --file: ${error.message}` })))

const stdin = Stream.unwrap(Effect.map(Stdio.Stdio, (stdio) => stdio.stdin)).pipe(
  Stream.mapError((error) => new UsageError({ message: `cannot read standard input: ${error.message}` }))
)

const readStdin = Stream.mkUint8Array(stdin)

/** The MQTT 5 properties given on the command line, and the names of the flags that set them. */
const publishProperties = (
  flags: PubFlags
): Effect.Effect<{ readonly properties: MqttMessage.PublishProperties; readonly flags: Array<string> }, UsageError> =>
  Effect.map(Effect.forEach(flags.userProperty, parseUserProperty), (userProperties) => {
    const used: Array<string> = []
    const note = <A>(name: string, value: Option.Option<A>): A | undefined => {
      if (Option.isNone(value)) return undefined
      used.push(name)
      return value.value
    }
    const correlation = note("--correlation-data", flags.correlationData)
    const properties: MqttMessage.PublishProperties = {
      contentType: note("--content-type", flags.contentType),
      responseTopic: note("--response-topic", flags.responseTopic),
      correlationData: correlation === undefined ? undefined : new TextEncoder().encode(correlation),
      messageExpiryInterval: note("--message-expiry", flags.messageExpiry),
      payloadFormatIndicator: note("--payload-format", flags.payloadFormat),
      userProperties: userProperties.length === 0 ? undefined : userProperties
    }
    if (userProperties.length > 0) used.push("--user-property")
    return { properties, flags: used }
  })

/**
 * Parses `name=value` (split at the first `=`; the value may be empty or contain `=`).
 *
 * @since 0.1.0
 * @category parsing
 */
export const parseUserProperty = (text: string): Effect.Effect<MqttMessage.UserProperty, UsageError> => {
  const at = text.indexOf("=")
  return at <= 0
    ? Effect.fail(new UsageError({ message: `--user-property expects name=value, got "${text}"` }))
    : Effect.succeed([text.slice(0, at), text.slice(at + 1)] as const)
}

const run = Effect.fnUntraced(function*(flags: PubFlags) {
  const source = yield* messageSource(flags)
  const { flags: mqtt5Flags, properties } = yield* publishProperties(flags)
  const topic = yield* Topic.validateName(flags.topic)
  const options = yield* clientOptions(flags.connection, mqtt5Flags)
  // the message is read before connecting: an unreadable file is reported without touching the network
  const payloads: Stream.Stream<Uint8Array | string, UsageError, Environment> = source._tag === "Lines"
    ? Stream.splitLines(Stream.decodeText(stdin))
    : yield* Effect.map(source.payload, (payload) => Stream.map(Stream.range(1, flags.count), () => payload))
  yield* Effect.scoped(Effect.gen(function*() {
    // a publish tool must end: a lost connection fails it (exit code 1) instead of waiting for the broker; but
    // -l publishes what comes on standard input for as long as it comes (`tail -f`): it reconnects, and the lines
    // that come meanwhile wait for the connection (the client's offline buffer)
    const lines = source._tag === "Lines"
    const client = yield* connect(flags.connection, lines ? options : { ...options, reconnect: false })
    let published = 0
    const publish = (payload: Uint8Array | string) =>
      client.publish(topic, payload, { qos: flags.qos, retain: flags.retain, properties }).pipe(
        Effect.tap(Effect.sync(() => {
          published++
        }))
      )
    const delay = Duration.seconds(flags.interval)
    const publishing = flags.interval > 0
      ? Stream.runDrain(Stream.mapEffect(
        payloads,
        (payload, i) => i === 0 ? publish(payload) : Effect.andThen(Effect.sleep(delay), publish(payload))
      ))
      : Stream.runDrain(Stream.mapEffect(payloads, publish, { concurrency: WINDOW }))
    // a client that stops for good ends the command at once, not at the next line of standard input
    yield* Effect.raceFirst(publishing, Effect.andThen(client.awaitClose, Effect.never))
    yield* debug(flags.connection, `published ${published} message${published === 1 ? "" : "s"} to ${topic}`)
  }))
})

/**
 * The `pub` command.
 *
 * @since 0.1.0
 * @category commands
 */
export const pub = Command.make(
  "pub",
  pubFlags,
  (flags) => run(flags).pipe(reportFailures([programName, "pub"]))
).pipe(
  Command.withDescription(
    "Publish a message and exit once it is acknowledged: -m text, -f file, -s (all of standard input), " +
      "-n (empty) or -l (a message per line of standard input). With --count and --interval, publish it " +
      "repeatedly, for load."
  ),
  Command.withShortDescription("Publish messages"),
  Command.withExamples([
    { command: `${programName} pub -t sensors/1 -m 21.5`, description: "publish one message (QoS 0)" },
    {
      command: `${programName} pub --url mqtts://broker:8883 -u app -t a/b -m hi -q 1 -r`,
      description: "QoS 1, retained, over TLS; the password is read from $MQTT_PASSWORD or asked for"
    },
    { command: `tail -f app.log | ${programName} pub -t logs -l`, description: "a message per line" },
    {
      command: `${programName} pub -V 5 -t req -m '{}' --content-type application/json --user-property k=v`,
      description: "MQTT 5 properties"
    },
    { command: `${programName} pub -t load -m x -q 1 --count 10000`, description: "10,000 messages, for load" }
  ])
)
