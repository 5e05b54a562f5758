/**
 * A private three-node NATS cluster with JetStream and MQTT listeners on loopback, for failover tests: each node
 * is a `nats-server -c nK.conf` process with its own `server_name`, JetStream store, MQTT port and cluster port,
 * routed to the other two. NATS keeps MQTT sessions, retained messages and QoS 1 messages in replicated
 * JetStream streams, so a client can move from one node to another.
 *
 * NATS speaks MQTT 3.1.1 only, QoS 0 and 1 (a QoS 2 subscription is granted QoS 1), and sends one copy of a
 * message per matching subscription (use the client's `overlapping: "copy-per-subscription"`): at QoS 1 from a
 * stream per subscription, so that the copies of a burst come for one subscription, then for the next. With
 * `nodes: 1`, a single server, for what one broker does.
 *
 * ```ts
 * const cluster = yield* natsCluster()
 * // cluster.urls: the three MQTT URLs; cluster.nodes[i].kill("SIGKILL"), .restart(), ...
 * ```
 */
import { Effect } from "effect"
import type { Scope } from "effect"
import * as MqttPacket from "mqtt-packet"
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { freePort } from "./Mosquitto.ts"

const INSTALL_HINT = "install it with `apt-get install -y nats-server` (Debian)"
const READY_TIMEOUT_MS = 30_000
const STOP_TIMEOUT_MS = 5_000

/** The `nats-server` binary, or the install hint. */
export const requireNatsServer = (): string => {
  for (const candidate of ["/usr/sbin/nats-server", "/usr/bin/nats-server"]) {
    if (Fs.existsSync(candidate)) return candidate
  }
  try {
    const found = execFileSync("sh", ["-c", "command -v nats-server"], { encoding: "utf8", stdio: "pipe" }).trim()
    if (found !== "") return found
  } catch {
    // not on PATH
  }
  throw new Error(`nats-server is required for the cluster tests: ${INSTALL_HINT}`)
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

const liveChildren = new Set<ChildProcess>()
let exitHookInstalled = false
const track = (child: ChildProcess): void => {
  if (!exitHookInstalled) {
    exitHookInstalled = true
    process.once("exit", () => {
      for (const c of liveChildren) c.kill("SIGKILL")
    })
  }
  liveChildren.add(child)
  child.once("exit", () => liveChildren.delete(child))
}

export interface NatsClusterOptions {
  /** `mqtt { ack_wait }`: how long NATS waits for a PUBACK before it sends a QoS 1 message again. NATS's
   * default is 30 seconds. */
  readonly ackWait?: string
  /** How many nodes: 3 (the default), or 1, a single server with no cluster, for what one broker does. */
  readonly nodes?: 1 | 3
}

export interface NatsNode {
  /** `n1`, `n2`, `n3` */
  readonly name: string
  readonly mqttPort: number
  /** `mqtt://127.0.0.1:<mqttPort>` */
  readonly url: string
  /** Whether the process runs (true while frozen with `SIGSTOP`). */
  readonly running: boolean
  /** Sends a signal and returns at once: `SIGKILL` to crash it, `SIGSTOP` / `SIGCONT` to freeze and thaw it. */
  kill(signal: NodeJS.Signals): void
  /** Waits until the process has exited (after `kill("SIGKILL")`). */
  readonly exited: Promise<void>
  /** Starts the node again (same config and JetStream store) and waits until it accepts MQTT connections. */
  restart(): Promise<void>
  /** `SIGTERM` (and `SIGCONT`), `SIGKILL` after 5 s; no-op when stopped. */
  stop(): Promise<void>
  /** The last lines the node logged. */
  logs(): string
}

export interface NatsCluster {
  readonly nodes: ReadonlyArray<NatsNode>
  /** The MQTT URLs of the nodes, in order. */
  readonly urls: ReadonlyArray<string>
  /** Stops every node and removes the temporary directory. */
  dispose(): Promise<void>
}

/** Answers whether an MQTT 3.1.1 CONNECT on this port gets an accepting CONNACK within a second. */
const mqttAccepts = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const socket = Net.connect({ host: "127.0.0.1", port })
    const parser = MqttPacket.parser({ protocolVersion: 4 })
    const done = (ok: boolean) => {
      clearTimeout(timer)
      socket.removeAllListeners()
      socket.on("error", () => {})
      socket.destroy()
      resolve(ok)
    }
    const timer = setTimeout(() => done(false), 1_000)
    parser.on("packet", (packet: MqttPacket.Packet) => done(packet.cmd === "connack" && packet.returnCode === 0))
    socket.on("data", (chunk) => parser.parse(chunk))
    socket.once("error", () => done(false))
    socket.once("close", () => done(false))
    socket.once("connect", () => {
      socket.write(
        MqttPacket.generate({
          cmd: "connect",
          protocolId: "MQTT",
          protocolVersion: 4,
          clean: true,
          clientId: `probe-${Math.random().toString(36).slice(2)}`,
          keepalive: 0
        })
      )
    })
  })

/**
 * Starts three nodes (or one, `nodes: 1`) and resolves once each accepts MQTT connections (the cluster has formed
 * and the MQTT streams exist). Rejects with the logs when it does not come up within 30 s.
 */
export const startNatsCluster = async (options?: NatsClusterOptions): Promise<NatsCluster> => {
  // Ports picked by us can be taken by someone else between `freePort` and a node's bind: start again on others
  for (let attempt = 1;; attempt++) {
    try {
      return await startOnce(options)
    } catch (error) {
      if (!String(error).includes("address already in use") || attempt >= 3) throw error
    }
  }
}

const startOnce = async (options?: NatsClusterOptions): Promise<NatsCluster> => {
  const bin = requireNatsServer()
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-mqtt-nats-"))
  const count = options?.nodes ?? 3
  const mqttPorts: Array<number> = []
  const clusterPorts: Array<number> = []
  for (let i = 0; i < count; i++) {
    mqttPorts.push(await freePort())
    if (count > 1) clusterPorts.push(await freePort())
  }
  const routes = clusterPorts.map((port) => `nats://127.0.0.1:${port}`).join(", ")
  const nodes = mqttPorts.map((mqttPort, i) => {
    const name = `n${i + 1}`
    const configFile = Path.join(dir, `${name}.conf`)
    Fs.writeFileSync(
      configFile,
      [
        `server_name: ${name}`,
        "listen: 127.0.0.1:-1",
        `jetstream { store_dir: "${Path.join(dir, `${name}-store`)}" }`,
        `mqtt { listen: 127.0.0.1:${mqttPort}${
          options?.ackWait === undefined ? "" : `, ack_wait: "${options.ackWait}"`
        } }`,
        ...(count > 1
          ? [`cluster { name: effect-mqtt, listen: 127.0.0.1:${clusterPorts[i]}, routes: [${routes}] }`]
          : []),
        ""
      ].join("\n")
    )
    return makeNode(bin, name, configFile, mqttPort)
  })
  const cluster: NatsCluster = {
    nodes,
    urls: nodes.map((node) => node.url),
    dispose: async () => {
      await Promise.all(nodes.map((node) => node.stop()))
      Fs.rmSync(dir, { recursive: true, force: true })
    }
  }
  try {
    await Promise.all(nodes.map((node) => waitMqtt(node)))
  } catch (error) {
    await cluster.dispose()
    throw error
  }
  return cluster
}

const waitMqtt = async (node: NatsNode): Promise<void> => {
  const deadline = Date.now() + READY_TIMEOUT_MS
  while (Date.now() < deadline) {
    if (!node.running) throw new Error(`nats-server ${node.name} exited. Log:\n${node.logs()}`)
    if (await mqttAccepts(node.mqttPort)) return
    await sleep(200)
  }
  throw new Error(`nats-server ${node.name} accepted no MQTT connection within ${READY_TIMEOUT_MS} ms:\n${node.logs()}`)
}

const makeNode = (bin: string, name: string, configFile: string, mqttPort: number): NatsNode => {
  const lines: Array<string> = []
  let child: ChildProcess
  let exited: Promise<void>
  let ended = false
  const spawnIt = () => {
    ended = false
    child = spawn(bin, ["-c", configFile], { stdio: ["ignore", "pipe", "pipe"] })
    track(child)
    const onData = (chunk: string) => {
      lines.push(...chunk.split("\n").filter((l) => l !== ""))
      if (lines.length > 300) lines.splice(0, lines.length - 300)
    }
    child.stdout!.setEncoding("utf8").on("data", onData)
    child.stderr!.setEncoding("utf8").on("data", onData)
    exited = new Promise((resolve) => {
      child.once("close", (code, signal) => {
        ended = true
        lines.push(`[${name} exited: ${signal ?? `code ${code}`}]`)
        resolve()
      })
    })
  }
  spawnIt()
  const node: NatsNode = {
    name,
    mqttPort,
    url: `mqtt://127.0.0.1:${mqttPort}`,
    get running() {
      return !ended
    },
    kill: (signal) => {
      if (!ended) child.kill(signal)
    },
    get exited() {
      return exited
    },
    restart: async () => {
      await node.stop()
      lines.push(`[restarting ${name}]`)
      spawnIt()
      await waitMqtt(node)
    },
    stop: async () => {
      if (ended) return
      child.kill("SIGTERM")
      child.kill("SIGCONT")
      const timer = setTimeout(() => child.kill("SIGKILL"), STOP_TIMEOUT_MS)
      await exited
      clearTimeout(timer)
    },
    logs: () => lines.join("\n")
  }
  return node
}

/** {@link startNatsCluster} as a scoped resource: stopped and removed when the scope closes. */
export const natsCluster = (options?: NatsClusterOptions): Effect.Effect<NatsCluster, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.promise(() => startNatsCluster(options)),
    (cluster) => Effect.promise(() => cluster.dispose())
  )
