/**
 * The connection flags that `pub` and `sub` share, and how they become the client's options: flags first, then
 * the `MQTT_URL` family of environment variables (`MqttClient.config`), then the client's defaults. The password
 * comes from `MQTT_PASSWORD` or a prompt on the terminal (never echoed); `--password` exists for parity with
 * `mosquitto_pub -P` but puts the password in the process list.
 *
 * @since 0.1.0
 */
import type * as Command from "effect/cli/Command"
import * as Flag from "effect/cli/Flag"
import * as Prompt from "effect/cli/Prompt"
import * as TerminalCapabilities from "effect/cli/TerminalCapabilities"
import * as Config from "effect/Config"
import * as Console from "effect/Console"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type * as Redacted from "effect/Redacted"
import * as Stream from "effect/Stream"
import * as Broker from "../internal/broker.ts"
import { tlsVariables } from "../internal/tlsText.ts"
import * as MqttClient from "../MqttClient.ts"
import { programName, UsageError } from "./errors.ts"

/**
 * The flags of the connection, shared by `pub` and `sub`. Names follow `mosquitto_pub` / `mosquitto_sub`
 * where they have one (`-h`, `-p`, `-i`, `-V`, `-u`, `-P`, `-k`, `--cafile`, `--cert`, `--key`, `--insecure`).
 *
 * @since 0.1.0
 * @category flags
 */
export const connectionFlags = {
  url: Flag.String("url").pipe(
    Flag.withDescription(
      "The broker: mqtt://host:port, mqtts://host:port, ws://host:port/path, wss://..., unix:///path. " +
        "Default: $MQTT_URL, else mqtt://localhost:1883 (mqtts://localhost:8883 with TLS flags)"
    ),
    Flag.optional
  ),
  host: Flag.String("host").pipe(
    Flag.withAlias("h"),
    Flag.withDescription("The broker's host, instead of --url (as mosquitto_pub -h). Default localhost"),
    Flag.optional
  ),
  port: Flag.Int("port").pipe(
    Flag.withAlias("p"),
    Flag.withDescription("The broker's port, with --host. Default 1883, or 8883 with TLS flags"),
    Flag.optional
  ),
  clientId: Flag.String("client-id").pipe(
    Flag.withAlias("i"),
    Flag.withDescription("The client identifier. Default: $MQTT_CLIENT_ID, else generated"),
    Flag.optional
  ),
  protocol: Flag.ChoiceWithValue(
    "protocol",
    [
      ["3", 3],
      ["4", 4],
      ["5", 5],
      ["mqttv31", 3],
      ["mqttv311", 4],
      ["mqttv5", 5]
    ] as const
  ).pipe(
    Flag.withAlias("V"),
    Flag.withDescription(
      "MQTT version: 3 (3.1), 4 (3.1.1, the default) or 5 (5.0). Default: $MQTT_PROTOCOL_VERSION, else 4"
    ),
    Flag.optional
  ),
  username: Flag.String("username").pipe(
    Flag.withAlias("u"),
    Flag.withDescription(
      "The user name. Default: $MQTT_USERNAME. Without a password, one is asked for on the terminal"
    ),
    Flag.optional
  ),
  password: Flag.Redacted("password").pipe(
    Flag.withAlias("P"),
    Flag.withDescription(
      "The password. Prefer $MQTT_PASSWORD or the prompt: a flag is visible to other users in the process list"
    ),
    Flag.optional
  ),
  keepalive: Flag.Int("keepalive").pipe(
    Flag.withAlias("k"),
    Flag.withDescription("Seconds between control packets; 0 turns keepalive off. Default: $MQTT_KEEPALIVE, else 60"),
    Flag.optional
  ),
  cafile: Flag.File("cafile", { mustExist: true }).pipe(
    Flag.withDescription("PEM certificate authorities to trust instead of the system's. Default: $MQTT_CA_FILE"),
    Flag.optional
  ),
  cert: Flag.File("cert", { mustExist: true }).pipe(
    Flag.withDescription("PEM client certificate, for brokers that require one. Default: $MQTT_CERT_FILE"),
    Flag.optional
  ),
  key: Flag.File("key", { mustExist: true }).pipe(
    Flag.withDescription("PEM private key of --cert. Default: $MQTT_KEY_FILE"),
    Flag.optional
  ),
  insecure: Flag.Boolean("insecure").pipe(
    Flag.withDescription("Do not verify the broker's certificate and host name. INSECURE: for tests only"),
    Flag.withDefault(false)
  ),
  disableCleanSession: Flag.Boolean("disable-clean-session").pipe(
    Flag.withAlias("c"),
    Flag.withoutNegation,
    Flag.withDescription(
      "Keep the session after the connection ends (as mosquitto_sub -c): the subscriptions, and the QoS 1/2 " +
        "messages that arrive meanwhile, come back at the next run with the same -i. MQTT 3.1.1: Clean Session 0; " +
        "MQTT 5: Clean Start 0 and a session that never expires unless -x. Needs -i (or $MQTT_CLIENT_ID)"
    ),
    Flag.withDefault(false)
  ),
  sessionExpiryInterval: Flag.String("session-expiry-interval").pipe(
    Flag.withAlias("x"),
    Flag.withDescription(
      "MQTT 5: seconds the broker keeps the session after the connection ends: 0 to 4294967294, or never " +
        "(also -1, 4294967295, inf). Default: never with -c, else 0"
    ),
    Flag.optional
  ),
  debug: Flag.Boolean("debug").pipe(
    Flag.withAlias("d"),
    Flag.withDescription("Print connection events (connected, subscribed, lost, reconnecting) on standard error"),
    Flag.withDefault(false)
  )
} as const

/**
 * The QoS flag, shared with `sub`.
 *
 * @since 0.1.0
 * @category flags
 */
export const qosFlag = (description: string) =>
  Flag.ChoiceWithValue("qos", [["0", 0], ["1", 1], ["2", 2]] as const).pipe(
    Flag.withAlias("q"),
    Flag.withDescription(description),
    Flag.withDefault(0 as const)
  )

/**
 * The parsed connection flags.
 *
 * @since 0.1.0
 * @category models
 */
export type ConnectionFlags = Command.Command.Config.Infer<typeof connectionFlags>

/**
 * Builds the client's options from the flags and the environment. `mqtt5Flags` names the flags of the command
 * that only exist in MQTT 5: giving one without `--protocol 5` is a usage error rather than being silently
 * dropped. Asks for the password on the terminal when a user name is given without one and the terminal can
 * prompt. Fails with `UsageError` or a `ConfigError` (a malformed variable).
 *
 * @since 0.1.0
 * @category constructors
 */
export const clientOptions = Effect.fnUntraced(function*(
  flags: ConnectionFlags,
  mqtt5Flags: ReadonlyArray<string>
) {
  const env = yield* MqttClient.config
  const envUrl = yield* Config.option(Config.String("MQTT_URL"))
  const flagTls = {
    caFile: Option.getOrUndefined(flags.cafile),
    certFile: Option.getOrUndefined(flags.cert),
    keyFile: Option.getOrUndefined(flags.key),
    insecureSkipVerify: flags.insecure ? true : undefined
  }
  const tls = mergeDefined(env.tls, flagTls)
  const url = yield* brokerUrl(flags, Option.getOrUndefined(envUrl), tls !== undefined)
  const plaintext = tlsWithPlaintext(url, Option.isSome(flags.url) ? "--url" : "MQTT_URL", env.tls, flagTls)
  if (plaintext !== undefined) return yield* new UsageError({ message: plaintext })
  // 3 (MQTT 3.1) is passed through to the client, which checks what MQTT 3.1 does not allow (a client identifier
  // over 23 bytes...) with its own InvalidOptionError, which the command line reports as a usage error.
  const protocolVersion = Option.getOrUndefined(flags.protocol) ?? env.protocolVersion
  const v5Only = Option.isSome(flags.sessionExpiryInterval) ? [...mqtt5Flags, "-x"] : mqtt5Flags
  if (v5Only.length > 0 && protocolVersion !== 5) {
    return yield* new UsageError({
      message: `${v5Only.join(", ")} need${v5Only.length === 1 ? "s" : ""} MQTT 5: add --protocol 5`
    })
  }
  const clientId = Option.getOrUndefined(flags.clientId) ?? env.clientId
  const session = yield* sessionOptions(flags, clientId, protocolVersion === 5)
  const username = Option.getOrUndefined(flags.username) ?? env.username
  const fromUrl = userInfo(url)
  let password = Option.getOrUndefined(flags.password) ?? env.password
  const user = username ?? fromUrl.username
  if (password === undefined && user !== undefined && !fromUrl.hasPassword) {
    password = yield* askPassword(user)
  }
  return {
    ...env,
    url,
    clientId,
    ...session,
    username,
    password,
    protocolVersion: protocolVersion as MqttClient.Options["protocolVersion"],
    keepAlive: Option.getOrUndefined(flags.keepalive) ?? env.keepAlive,
    tls
  } satisfies MqttClient.Options
})

/** The largest Session Expiry Interval, which MQTT 5 reads as "never expires" (§3.1.2.11.2). */
const NEVER_EXPIRES = 4294967295

/**
 * `-c` and `-x` as mosquitto_sub reads them: `-c` keeps the session (and needs a client identifier a later run can
 * give again); on MQTT 5 its Session Expiry Interval is `-x`, else one that never ends.
 */
const sessionOptions = (
  flags: ConnectionFlags,
  clientId: string | undefined,
  v5: boolean
): Effect.Effect<{ readonly cleanStart?: false; readonly sessionExpiryInterval?: number }, UsageError> => {
  const keep = flags.disableCleanSession
  if (keep && (clientId === undefined || clientId === "")) {
    // an empty one (-i ""): the broker assigns an identifier, which no later run gives again
    return Effect.fail(
      new UsageError({
        message: "-c needs a client identifier (-i or $MQTT_CLIENT_ID): a generated one cannot resume the session"
      })
    )
  }
  const text = Option.getOrUndefined(flags.sessionExpiryInterval)
  const seconds = text === undefined ? (keep && v5 ? NEVER_EXPIRES : undefined) : expirySeconds(text)
  if (Number.isNaN(seconds)) {
    return Effect.fail(
      new UsageError({ message: `-x ${text}: seconds from 0 to 4294967294, or never (also -1, 4294967295, inf)` })
    )
  }
  return Effect.succeed({
    ...(keep ? { cleanStart: false as const } : {}),
    ...(seconds === undefined ? {} : { sessionExpiryInterval: seconds })
  })
}

/** The seconds of `-x`: never (-1, 4294967295, inf, ∞) is the largest interval; NaN when malformed. */
const expirySeconds = (text: string): number => {
  const value = text.trim().toLowerCase()
  if (["never", "-1", "inf", "infinity", "∞"].includes(value)) return NEVER_EXPIRES
  return /^\d+$/.test(value) && Number(value) <= NEVER_EXPIRES ? Number(value) : NaN
}

/** `base` with the defined settings of `override` on top; `undefined` when nothing at all is set. */
const mergeDefined = <A extends object>(base: A | undefined, override: A): A | undefined => {
  const merged: Record<string, unknown> = { ...base }
  for (const [key, value] of Object.entries(override)) {
    if (value !== undefined) merged[key] = value
  }
  return Object.values(merged).some((value) => value !== undefined) ? merged as A : undefined
}

/** The flag of each TLS setting that has one. */
const tlsFlags: { readonly [K in keyof MqttClient.TlsOptions]?: string } = {
  caFile: "--cafile",
  certFile: "--cert",
  keyFile: "--key",
  insecureSkipVerify: "--insecure"
}

/**
 * TLS settings with a plaintext URL, which the client would refuse naming its `tls` option: said in the flags'
 * and the environment variables' names, as they were given (`MQTT_CA_FILE`, `--cafile`). `undefined` when the URL
 * is encrypted (one built from --host/--port with TLS settings is) or no TLS setting is given.
 */
const tlsWithPlaintext = (
  url: string,
  urlFrom: string,
  fromEnv: MqttClient.TlsOptions | undefined,
  fromFlags: MqttClient.TlsOptions
): string | undefined => {
  if (!Broker.isPlaintext(url)) return undefined
  const keys = Object.keys(tlsVariables) as Array<keyof MqttClient.TlsOptions>
  const names = [
    ...keys.filter((key) => fromFlags[key] !== undefined).map((key) => tlsFlags[key] ?? `tls.${key}`),
    ...keys.filter((key) => fromFlags[key] === undefined && fromEnv?.[key] !== undefined).map((key) =>
      tlsVariables[key]
    )
  ]
  if (names.length === 0) return undefined
  return `${names.join(", ")} ${names.length === 1 ? "is" : "are"} set, but the URL ` +
    `(${Broker.display(url) ?? "not shown"}, from ${urlFrom}) is not encrypted: TLS needs an mqtts:// or wss:// URL`
}

/** --url, else --host/--port (as mosquitto: TLS flags mean mqtts and port 8883), else $MQTT_URL, else localhost. */
const brokerUrl = (
  flags: ConnectionFlags,
  envUrl: string | undefined,
  withTls: boolean
): Effect.Effect<string, UsageError> => {
  const host = Option.getOrUndefined(flags.host)
  const port = Option.getOrUndefined(flags.port)
  if (Option.isSome(flags.url)) {
    return host === undefined && port === undefined
      ? Effect.succeed(flags.url.value)
      : Effect.fail(new UsageError({ message: "--url and --host/--port exclude each other" }))
  }
  if (host === undefined && port === undefined && envUrl !== undefined) return Effect.succeed(envUrl)
  if (port !== undefined && !(port >= 1 && port <= 65535)) {
    return Effect.fail(new UsageError({ message: `--port ${port}: a TCP port is 1 to 65535` }))
  }
  const name = host ?? "localhost"
  return Effect.succeed(
    `${withTls ? "mqtts" : "mqtt"}://${name.includes(":") ? `[${name}]` : name}:${port ?? (withTls ? 8883 : 1883)}`
  )
}

/** The user name and whether a password is in the URL (`mqtt://user:password@host`). */
const userInfo = (url: string): { readonly username: string | undefined; readonly hasPassword: boolean } => {
  try {
    const parsed = new URL(url)
    return {
      username: parsed.username === "" ? undefined : decodeURIComponent(parsed.username),
      hasPassword: parsed.password !== ""
    }
  } catch {
    // the client reports a malformed URL itself, without repeating it
    return { username: undefined, hasPassword: false }
  }
}

/** Asks for the password without echoing it, when standard input and output are a terminal. */
const askPassword = Effect.fnUntraced(function*(user: string) {
  const { canPrompt } = yield* TerminalCapabilities.TerminalCapabilities
  if (!canPrompt) return undefined
  const password = yield* Prompt.run(Prompt.Hidden({ message: `Password for ${user}` })).pipe(
    Effect.catchTag("QuitError", () => Effect.fail(new UsageError({ message: "no password given" })))
  )
  return password as Redacted.Redacted<string>
})

/**
 * Writes `effect-mqtt: <text>` on standard error when `--debug` is given.
 *
 * @since 0.1.0
 * @category debugging
 */
export const debug = (flags: ConnectionFlags, text: string): Effect.Effect<void> =>
  flags.debug ? Console.error(`${programName}: ${text}`) : Effect.void

/**
 * Connects with `options` for the life of the scope. With `--debug`, every change of the connection's state is
 * written on standard error (the URL is never written: it may hold a password).
 *
 * @since 0.1.0
 * @category constructors
 */
export const connect = Effect.fnUntraced(function*(flags: ConnectionFlags, options: MqttClient.Options) {
  const client = yield* MqttClient.make(options)
  if (flags.debug) {
    yield* Effect.forkScoped(Stream.runForEach(client.statusChanges, (status) => debug(flags, describeStatus(status))))
  }
  return client
})

/** The name of each protocol level, as the line of a connection says it. */
const versionNames = { 3: "3.1", 4: "3.1.1", 5: "5.0" } as const

/**
 * The line `--debug` writes for a change of the connection's state (a delay to the millisecond).
 *
 * @since 0.2.0
 * @category debugging
 */
export const describeStatus = (status: MqttClient.ConnectionStatus): string => {
  switch (status._tag) {
    case "Connecting":
      return `connecting (attempt ${status.attempt})`
    case "Connected":
      return `connected as ${status.info.clientId} (MQTT ${versionNames[status.info.protocolVersion]}, ` +
        `keepalive ${status.info.keepAlive} s, session present: ${status.info.sessionPresent ? "yes" : "no"})`
    case "Disconnected":
      return `connection lost: ${status.cause.message}` +
        (status.retryIn === undefined
          ? ""
          : `; retrying in ${Duration.format(Duration.millis(Math.round(Duration.toMillis(status.retryIn))))}`)
    case "Closed":
      return status.cause === undefined ? "closed" : `closed: ${status.cause.message}`
  }
}
