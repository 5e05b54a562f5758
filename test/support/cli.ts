/**
 * Runs the `effect-mqtt` command line as a user would: a child process on this Node.js, with pipes for its standard
 * streams and an environment free of the caller's `MQTT_*` variables.
 *
 * `CLI_COMMAND` is the one place that says what is run: src/cli/main.ts bundled into one file by
 * test/support/globalSetup.ts (the same code; one file to load instead of the whole source tree per run), the
 * built `dist/cli/main.js` once the package is built.
 */
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process"
import { inject } from "vitest"

/** The executable and the arguments before the user's: switch to `dist/cli/main.js` here to test the built bin. */
export const CLI_COMMAND: readonly [string, ...Array<string>] = [process.execPath, inject("cliBundle")]

export interface CliResult {
  /** The exit code; `null` when killed by a signal. */
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  /** The exact bytes written on standard output. */
  readonly stdoutBytes: Buffer
  readonly stderr: string
}

export interface CliOptions {
  /** Variables added to the environment (the caller's `MQTT_*` variables are removed first). */
  readonly env?: Record<string, string>
  /** Written to standard input, which is then closed. Default: closed at once. */
  readonly stdin?: string | Uint8Array
  /** Leave standard input open (`child.stdin`), for the test to write to and close. */
  readonly keepStdinOpen?: boolean
  /** Killed with SIGKILL after this long (a hang guard, not an assertion). Default 30 s. */
  readonly timeoutMs?: number
}

export interface CliProcess {
  readonly child: ChildProcessWithoutNullStreams
  /** Standard error so far. */
  readonly stderr: () => string
  /** Standard output so far. */
  readonly stdout: () => string
  /** Resolves once standard error matches `pattern` (for example `--debug`'s "subscribed:" line); rejects if the
   * process exits first. */
  readonly waitForStderr: (pattern: RegExp) => Promise<void>
  /** Resolves when the process exits. */
  readonly done: Promise<CliResult>
}

const environment = (extra: Record<string, string> | undefined): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = {}
  for (const [name, value] of Object.entries(process.env)) {
    if (!name.startsWith("MQTT_")) env[name] = value
  }
  return { ...env, NO_COLOR: "1", ...extra }
}

/** Starts the command line with `args` and returns at once. */
export const spawnCli = (args: ReadonlyArray<string>, options?: CliOptions): CliProcess => {
  const [command, ...prefix] = CLI_COMMAND
  const child = spawn(command, [...prefix, ...args], { env: environment(options?.env), stdio: "pipe" })
  const out: Array<Buffer> = []
  let stderr = ""
  const stderrListeners = new Set<() => void>()
  child.stdout.on("data", (chunk: Buffer) => out.push(chunk))
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
    stderr += chunk
    for (const listener of stderrListeners) listener()
  })
  if (options?.stdin !== undefined) child.stdin.end(options.stdin)
  else if (options?.keepStdinOpen !== true) child.stdin.end()
  const guard = setTimeout(() => child.kill("SIGKILL"), options?.timeoutMs ?? 30_000)
  const done = new Promise<CliResult>((resolve, reject) => {
    child.once("error", (error) => {
      clearTimeout(guard)
      reject(error)
    })
    child.once("close", (code, signal) => {
      clearTimeout(guard)
      for (const listener of stderrListeners) listener()
      const stdoutBytes = Buffer.concat(out)
      resolve({ code, signal, stdout: stdoutBytes.toString("utf8"), stdoutBytes, stderr })
    })
  })
  const waitForStderr = (pattern: RegExp) =>
    new Promise<void>((resolve, reject) => {
      const check = () => {
        if (pattern.test(stderr)) {
          stderrListeners.delete(check)
          resolve()
        } else if (child.exitCode !== null || child.signalCode !== null) {
          stderrListeners.delete(check)
          reject(new Error(`effect-mqtt exited (${child.signalCode ?? child.exitCode}) before ${pattern}:\n${stderr}`))
        }
      }
      stderrListeners.add(check)
      check()
    })
  return { child, stderr: () => stderr, stdout: () => Buffer.concat(out).toString("utf8"), waitForStderr, done }
}

/** Runs the command line with `args` to its end. Never rejects for a non-zero exit: check `code`. */
export const runCli = (args: ReadonlyArray<string>, options?: CliOptions): Promise<CliResult> =>
  spawnCli(args, options).done
