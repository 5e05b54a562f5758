/**
 * A child process that a test drives line by line: it writes commands to the child's standard input and is
 * called for each line the child prints. For the crash tests of durable sessions (test/fixtures/durable-*.ts).
 */
import { type ChildProcess, spawn } from "node:child_process"
import * as Path from "node:path"
import { SOURCE_CONDITION } from "./peers.ts"

const running = new Set<ChildProcess>()
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL")
})

export interface LineChild {
  readonly process: ChildProcess
  /** Writes a line to the child's standard input. */
  send(line: string): void
  /** SIGKILL, at once: the child gets no chance to do anything more. */
  kill(): void
  /** Resolves when the child has exited and every line it printed was handled, with its exit code or signal. */
  readonly exited: Promise<{ readonly code: number | null; readonly signal: NodeJS.Signals | null }>
  /** What the child wrote to standard error so far, and the last lines it printed: for error messages. */
  stderr(): string
}

/** Runs test/fixtures/`fixture` on this Node.js with `config` as JSON in its first argument. */
export const startFixture = (
  fixture: string,
  config: unknown,
  onLine: (line: string, child: LineChild) => void
): LineChild => {
  const file = Path.join(import.meta.dirname, "..", "fixtures", fixture)
  const child = spawn(process.execPath, [SOURCE_CONDITION, file, JSON.stringify(config)], {
    stdio: ["pipe", "pipe", "pipe"]
  })
  let stderr = ""
  let partial = ""
  const recent: Array<string> = []
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    // "close": after the exit and after its output was read to the end
    child.once("close", (code, signal) => resolve({ code, signal }))
  )
  // a write after the child died must not become an unhandled error
  child.stdin!.on("error", () => {})
  const handle: LineChild = {
    process: child,
    send: (line) => {
      if (child.exitCode === null && child.signalCode === null) child.stdin!.write(line + "\n")
    },
    kill: () => {
      child.kill("SIGKILL")
    },
    exited,
    stderr: () => `${stderr}\nlast lines printed:\n${recent.join("\n")}`
  }
  child.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
    const lines = (partial + chunk).split("\n")
    partial = lines.pop() ?? ""
    for (const line of lines) {
      if (line === "") continue
      recent.push(line)
      if (recent.length > 20) recent.shift()
      onLine(line, handle)
    }
  })
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk))
  running.add(child)
  void exited.then(() => running.delete(child))
  return handle
}

/** Resolves once `condition()` holds, checking every 20 ms; rejects with `describe()` after `timeoutMs`. */
export const until = async (condition: () => boolean, timeoutMs: number, describe: () => string): Promise<void> => {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${describe()}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}
