#!/usr/bin/env node
/**
 * The `effect-mqtt` executable: runs {@link app} on Node.js with the exit codes of `errors.ts`. Errors are
 * reported on standard error, one line each; logs go to standard error too, so that standard output carries
 * only messages.
 *
 * @since 0.1.0
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as NodeServices from "@effect/platform-node/NodeServices"
import * as Cause from "effect/Cause"
import * as CliError from "effect/cli/CliError"
import * as Command from "effect/cli/Command"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import { createRequire } from "node:module"
import { app, cliConfigLayer } from "./app.ts"
import { exitCodeOf, presenterLayer, report, Reported } from "./errors.ts"

// package.json is two levels up both from src/cli/main.ts and from dist/cli/main.js
const { version } = createRequire(import.meta.url)("../../package.json") as { readonly version: string }

const program = Command.run(app, { version }).pipe(
  // parse errors are already written by the presenter, and subcommand failures by the subcommand
  Effect.tapCause((cause) => {
    if (Cause.hasInterruptsOnly(cause)) return Effect.void
    const error = Cause.findErrorOption(cause)
    if (error._tag === "None") return report(Cause.squash(cause), [app.name])
    const reported = error.value instanceof Reported ||
      (CliError.isCliError(error.value) && error.value._tag === "ShowHelp")
    return reported ? Effect.void : report(error.value, [app.name])
  }),
  Effect.provide(Layer.mergeAll(
    NodeServices.layer,
    cliConfigLayer,
    presenterLayer,
    Layer.succeed(Logger.LogToStderr, true)
  ))
)

NodeRuntime.runMain(program, {
  disableErrorReporting: true,
  teardown: (exit, onExit) => {
    if (Exit.isSuccess(exit) || Cause.hasInterruptsOnly(exit.cause)) return onExit(0)
    const error = Cause.findErrorOption(exit.cause)
    onExit(error._tag === "Some" ? exitCodeOf(error.value) : 1)
  }
})
