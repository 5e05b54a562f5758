/**
 * How the command line reports failures: the exit codes scripts can rely on, one line on standard error per
 * failure, and the presenter that keeps parse errors to one line instead of the whole help text.
 *
 * | code | meaning |
 * | --- | --- |
 * | 0 | done (for `sub` also: stopped by SIGINT or SIGTERM, as `mosquitto_sub`) |
 * | 1 | the connection failed or was lost, or the broker refused it, a subscription or a publish |
 * | 2 | usage: a bad flag or value, a missing topic or message, an option the client rejects |
 * | 3 | `sub -C n -W s`: the time ran out before `n` messages arrived |
 *
 * @since 0.1.0
 */
import * as Cause from "effect/Cause"
import * as CliError from "effect/cli/CliError"
import * as CliOutput from "effect/cli/CliOutput"
import * as Console from "effect/Console"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { tlsFailure } from "../internal/tlsText.ts"
import * as MqttError from "../MqttError.ts"

/**
 * The name the command line reports itself under.
 *
 * @since 0.1.0
 * @category constants
 */
export const programName = "effect-mqtt"

/**
 * The exit codes of the command line.
 *
 * @since 0.1.0
 * @category constants
 */
export const ExitCode = {
  ok: 0,
  connection: 1,
  usage: 2,
  timedOut: 3
} as const

/**
 * A usage error found by the command line itself (flags that exclude each other, a malformed `k=v`, an MQTT 5
 * feature asked for on MQTT 3.1.1): exit code 2.
 *
 * @since 0.1.0
 * @category errors
 */
export class UsageError extends Data.TaggedError("UsageError")<{ readonly message: string }> {}

/**
 * `sub -C n -W s` ran out of time before `n` messages arrived: exit code 3.
 *
 * @since 0.1.0
 * @category errors
 */
export class TimedOutError extends Data.TaggedError("TimedOutError")<{
  readonly seconds: number
  readonly received: number
  readonly expected: number
}> {
  override get message(): string {
    return `timed out after ${this.seconds} s with ${this.received} of ${this.expected} messages`
  }
}

/**
 * A failure already reported on standard error, carrying the exit code: what a subcommand fails with.
 *
 * @since 0.1.0
 * @category errors
 */
export class Reported extends Data.TaggedError("Reported")<{ readonly code: number }> {}

/**
 * The exit code for a failure of a subcommand.
 *
 * @since 0.1.0
 * @category exit codes
 */
export const exitCodeOf = (error: unknown): number => {
  if (error instanceof Reported) return error.code
  if (error instanceof TimedOutError) return ExitCode.timedOut
  if (error instanceof UsageError || CliError.isCliError(error) || isConfigError(error)) return ExitCode.usage
  if (MqttError.isInvalidInput(error)) return ExitCode.usage
  return ExitCode.connection
}

/** What to check after a TLS failure, in the command line's flags and the variables it reads. */
const tlsHints: Record<MqttError.TlsError["kind"], string> = {
  ServerCertificateUntrusted: "If the broker's certificate is signed by your own certificate authority, give " +
    "that authority's certificate with --cafile (or $MQTT_CA_FILE); also check the certificate's dates " +
    "(--insecure skips the check: for tests only)",
  HostnameMismatch: "Connect with a host name the certificate names (--host or --url), or set " +
    "$MQTT_TLS_SERVERNAME to one of them",
  ClientCertificateRequired: "Give a client certificate and its key: --cert and --key (or $MQTT_CERT_FILE and " +
    "$MQTT_KEY_FILE)",
  ClientCertificateRejected: "Check that the client certificate (--cert) is signed by an authority the broker " +
    "trusts, and that it has not expired",
  HandshakeFailed: "Check that the port is a TLS listener (a plaintext one needs mqtt:// and no --cafile, --cert " +
    "or --key) and that the broker accepts $MQTT_TLS_MIN_VERSION"
}

const isConfigError = (error: unknown): boolean =>
  typeof error === "object" && error !== null && "_tag" in error && error._tag === "ConfigError"

/** Folds a message to one line: newlines and runs of spaces become one space. */
const oneLine = (text: string): string => text.replace(/\s*\n\s*/g, " ").replace(/\s{2,}/g, " ").trim()

/**
 * The one-line text of a failure, without the program name.
 *
 * @since 0.1.0
 * @category formatting
 */
export const describe = (error: unknown): string => {
  if (CliError.isCliError(error)) return describeCliError(error)
  if (error instanceof MqttError.TlsError) return oneLine(`${tlsFailure(error)}. ${tlsHints[error.kind]}`)
  if (isConfigError(error)) {
    const { cause, message } = error as { readonly cause?: { readonly message?: unknown }; readonly message: unknown }
    return `invalid environment variable: ${oneLine(String(cause?.message ?? message))}`
  }
  if (error instanceof Error || (typeof error === "object" && error !== null && "message" in error)) {
    return oneLine(String((error as { message: unknown }).message))
  }
  return oneLine(String(error))
}

const describeCliError = (error: CliError.CliError): string => {
  switch (error._tag) {
    case "UnrecognizedOption":
      return `unknown flag ${error.option}` +
        (error.suggestions.length > 0 ? ` (did you mean ${error.suggestions.join(" or ")}?)` : "")
    case "UnknownSubcommand":
      return `unknown command "${error.subcommand}"` +
        (error.suggestions.length > 0 ? ` (did you mean ${error.suggestions.join(" or ")}?)` : "")
    default:
      return oneLine(error.message)
  }
}

/**
 * Writes one line on standard error: `effect-mqtt: <what went wrong>`, and for a usage error a pointer to the
 * help of `command`.
 *
 * @since 0.1.0
 * @category reporting
 */
export const report = (error: unknown, command: ReadonlyArray<string>): Effect.Effect<void> =>
  Console.error(
    `${programName}: ${describe(error)}` +
      (exitCodeOf(error) === ExitCode.usage ? ` (see "${command.join(" ")} --help")` : "")
  )

/**
 * Reports the failure of a subcommand on one line and turns it into {@link Reported} with its exit code. Defects
 * are reported too (as an internal error, exit code 1); interruption passes through.
 *
 * @since 0.1.0
 * @category reporting
 */
export const reportFailures =
  (command: ReadonlyArray<string>) => <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, Reported, R> =>
    Effect.catchCause(self, (cause) => {
      if (Cause.hasInterruptsOnly(cause)) return Effect.failCause(cause as Cause.Cause<never>)
      const failure = Cause.findErrorOption(cause)
      if (failure._tag === "Some") {
        return Effect.andThen(
          report(failure.value, command),
          Effect.fail(new Reported({ code: exitCodeOf(failure.value) }))
        )
      }
      return Effect.andThen(
        Console.error(`${programName}: internal error: ${describe(Cause.squash(cause))}`),
        Effect.fail(new Reported({ code: ExitCode.connection }))
      )
    })

/**
 * A presenter for the CLI module that writes a parse error as one line on standard error, instead of the help
 * text followed by the errors. Help and version go to standard output as usual.
 *
 * @since 0.1.0
 * @category layers
 */
export const presenterLayer: Layer.Layer<never> = CliOutput.layerPresenter({
  present: (event) =>
    event._tag === "InvalidInvocation"
      ? Console.error(
        `${programName}: ${event.errors.map(describeCliError).join("; ")} (see "${event.commandPath.join(" ")} --help")`
      )
      : CliOutput.defaultPresenter.present(event)
})
