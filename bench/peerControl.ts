/**
 * The parent's side of `peer.ts` (bench/cpu.ts and the routing section of bench/scale.ts): starts the peer in a
 * process of its own, hands it the job of each connection, and measures this process's CPU from the first
 * message to the last.
 */
import { type ChildProcess, fork } from "node:child_process"
import { performance } from "node:perf_hooks"

export type Mode = "send" | "receive"

/** The job of the peer's next connection (see peer.ts). */
export interface Job {
  readonly mode: Mode
  readonly n: number
  readonly version: 4 | 5
  /** routing: the number of filters `route/<i>/+/v` subscribed */
  readonly filters?: number
  /** routing: the messages go to each filter in turn ("even", the default) or all to the last one ("last") */
  readonly spread?: "even" | "last"
}

export const startPeer = async () => {
  const child: ChildProcess = fork(new URL("./peer.ts", import.meta.url), [], {
    execArgv: process.execArgv.filter((arg) => !arg.startsWith("--cpu-prof")),
    stdio: ["ignore", "inherit", "inherit", "ipc"]
  })
  const listeners = new Set<(message: Record<string, number>) => void>()
  child.on("message", (message) => {
    for (const listener of listeners) listener(message as Record<string, number>)
  })
  const next = (key: string) =>
    new Promise<number>((resolve) => {
      const listener = (message: Record<string, number>) => {
        if (!(key in message)) return
        listeners.delete(listener)
        resolve(message[key])
      }
      listeners.add(listener)
    })
  const port = await next("port")
  return {
    url: `mqtt://127.0.0.1:${port}`,
    /** the job of the next connection */
    prepare: async (job: Job) => {
      const ready = next("ready")
      child.send(job)
      await ready
    },
    /** resolves once the peer has received `n` publishes (send mode) */
    received: () => next("received"),
    /** starts a routing job's messages */
    go: () => child.send({ go: 1 }),
    stop: () => child.kill()
  }
}

export type Peer = Awaited<ReturnType<typeof startPeer>>

/** What a measured run used: CPU seconds of this process (user and system) and wall milliseconds. */
export interface Usage {
  readonly cpuSeconds: number
  readonly ms: number
}

/**
 * This process's CPU and the wall time from `start()` to `end()`: from the first message to the last, not
 * counting the client's closing (a routing client's 10,000 unsubscriptions would otherwise weigh on every
 * message). Without `end()`, until `run` completes.
 */
export const usageOf = async (run: (start: () => void, end: () => void) => Promise<void>): Promise<Usage> => {
  let from: NodeJS.CpuUsage | undefined
  let t0 = 0
  let result: Usage | undefined
  const end = () => {
    if (result !== undefined) return
    const used = process.cpuUsage(from)
    result = { cpuSeconds: (used.user + used.system) / 1e6, ms: performance.now() - t0 }
  }
  await run(() => {
    from = process.cpuUsage()
    t0 = performance.now()
  }, end)
  end()
  return result!
}
