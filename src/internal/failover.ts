/**
 * The brokers a client connects to: the nodes of `url` (one broker, or the nodes of a cluster) tried in
 * round-robin order, and the places an MQTT 5 Server Reference may send the client to when
 * `followServerReference` allows it. Each place has its own socket and writer, made once.
 */
import type * as Arr from "effect/Array"
import * as Effect from "effect/Effect"
import type * as Redacted from "effect/Redacted"
import type * as Socket from "effect/socket/Socket"
import type * as MqttClient from "../MqttClient.ts"
import type * as MqttError from "../MqttError.ts"
import * as Broker from "./broker.ts"
import { describe } from "./describe.ts"
import type { ReadNow, WriteNow } from "./platform.ts"
import * as Url from "./url.ts"

/** One place the client can connect to. */
export interface Node {
  /** the broker as errors and log lines name it (`scheme://host:port`); undefined for a custom transport */
  readonly broker: string | undefined
  readonly socket: Socket.Socket
  readonly writer: (chunks: Arr.NonEmptyReadonlyArray<Uint8Array>) => Effect.Effect<void, Socket.SocketError>
  /** the socket's write without a fiber (platform.ts), when it has one */
  readonly writeNow: WriteNow | undefined
  /** the socket's read without a fiber (platform.ts), when it has one */
  readonly readNow: ReadNow | undefined
  /** the credentials CONNECT carries to this node */
  readonly username: string | undefined
  readonly password: Redacted.Redacted<string> | undefined
  /** where the transport goes; undefined for a custom transport */
  readonly endpoint: Url.Endpoint | undefined
  /** the position in the `url` list; -1 for a place a Server Reference led to */
  readonly index: number
  /** the position in the `url` list of the node whose credentials this one carries (its own, for a list node) */
  readonly origin: number
}

/** What becomes of the Server Reference an error carries. */
export type Redirect =
  | { readonly _tag: "Follow"; readonly node: Node }
  | { readonly _tag: "Refuse"; readonly reference: string; readonly reason: string }

/** The reason codes that ask the client to use another server [MQTT-4.11]. */
const REDIRECTS: ReadonlySet<number> = new Set([0x9c, 0x9d])

/** A Server Reference an error carries, with its reason code, when the broker asked the client to go there. */
export const referenceOf = (
  error: MqttError.MqttError
): { readonly reference: string; readonly reasonCode: number } | undefined => {
  if (error._tag !== "ConnectRefusedError" && error._tag !== "ConnectionLostError") return undefined
  const { reasonCode, serverReference } = error
  if (reasonCode === undefined || serverReference === undefined || !REDIRECTS.has(reasonCode)) return undefined
  if (error._tag === "ConnectRefusedError" && error.protocolVersion !== 5) return undefined
  return { reference: serverReference, reasonCode }
}

/**
 * One reference as a URL. A reference with a scheme is a URL of its own; `host`, `host:port` or `[v6]:port`
 * keeps the scheme (and for WebSocket the path, not the query) of the node that sent it, and its port when none
 * is given. The format of a Server Reference is not specified by MQTT 5 [MQTT-4.11]: these are the forms its
 * examples and the brokers use.
 */
const referenceUrl = (reference: string, from: Url.Endpoint): string | { readonly refused: string } => {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(reference)) return reference
  if (from._tag === "Unix") return { refused: "a host cannot be reached from a Unix socket connection" }
  const match = Url.HOST_PORT.exec(reference)
  if (match === null) return { refused: "not a host, host:port or URL" }
  const port = match[2] ?? String(from.port)
  const path = from._tag === "WebSocket" ? from.path.replace(/\?.*$/, "") : ""
  return `${from.scheme}://${match[1]}:${port}${path}`
}

/**
 * How many places Server References led to are kept, each with its socket writer (a cluster behind a balancer may
 * send the client to a new address each time); past it, the least recently followed one is let go, unless the
 * client's last connection was to it.
 */
export const REFERENCED_KEPT = 16

/** A place a Server Reference led to: its node, and what lets its socket writer go. */
export interface Place {
  readonly node: Node
  readonly release: Effect.Effect<void>
}

/**
 * The nodes of one client and its position among them. A round of attempts begins with the node after the one
 * of the last connection and ends with that one, so that a lost node is tried last; a place a Server Reference
 * led to is tried first, once.
 */
export class Nodes {
  readonly configured: Arr.NonEmptyReadonlyArray<Node>
  /** the position in `configured` of the last connection's node */
  private position = -1
  /** the node of the last connection */
  private current: Node | undefined
  /** the places Server References led to, the least recently followed first */
  private readonly referenced = new Map<string, Place>()
  private readonly policy: MqttClient.Options["followServerReference"]
  private readonly encrypted: boolean
  private readonly make: (
    endpoint: Url.Endpoint,
    broker: string,
    from: Node
  ) => Effect.Effect<Place, MqttError.MqttError>

  constructor(
    configured: Arr.NonEmptyReadonlyArray<Node>,
    policy: MqttClient.Options["followServerReference"],
    make: (endpoint: Url.Endpoint, broker: string, from: Node) => Effect.Effect<Place, MqttError.MqttError>
  ) {
    this.configured = configured
    this.policy = policy
    this.make = make
    this.encrypted = configured.some((node) => node.endpoint !== undefined && Url.isEncrypted(node.endpoint))
  }

  /** The node tried first when the client starts. */
  get first(): Node {
    return this.configured[0]
  }

  /** The attempts of one round: `first` (where a Server Reference led), then every node of the list. */
  round(first?: Node): Array<Node> {
    const n = this.configured.length
    const nodes: Array<Node> = first === undefined ? [] : [first]
    for (let k = 1; k <= n; k++) {
      const node = this.configured[(this.position + k + n) % n]
      if (node !== first) nodes.push(node)
    }
    return nodes
  }

  /** A connection to `node` was accepted. */
  connected(node: Node): void {
    this.current = node
    if (node.index >= 0) this.position = node.index
  }

  /**
   * Where the Server Reference of `error` leads: `Follow` a node (made on first use) when `followServerReference`
   * allows one of the references, `Refuse` with the reason otherwise, undefined when the error asks for no other
   * server. A reference list ("a b") is followed to its first allowed entry. A reference never leads from TLS (the
   * list's, or the sending node's) to plaintext, to a Unix socket, or with credentials of its own. A reference to a
   * node of the list leads to that node (its credentials, its place in the round).
   */
  redirect(error: MqttError.MqttError, from: Node): Effect.Effect<Redirect | undefined> {
    const found = referenceOf(error)
    if (found === undefined) return Effect.succeed(undefined)
    const self = this
    return Effect.gen(function*() {
      const { reference, reasonCode } = found
      if (self.policy === undefined) return refuse(reference, "followServerReference is not set")
      if (from.endpoint === undefined) return refuse(reference, "a custom transport cannot be redirected")
      const candidates = reference.split(" ").filter((r) => r !== "")
      let first: Redirect | undefined
      for (const candidate of candidates) {
        const checked = yield* self.check(candidate, reasonCode, from)
        if (checked._tag === "Follow") return checked
        first ??= checked
      }
      return first ?? refuse(reference, "empty")
    })
  }

  private check(reference: string, reasonCode: number, from: Node): Effect.Effect<Redirect> {
    const self = this
    return Effect.gen(function*() {
      const url = referenceUrl(reference, from.endpoint!)
      if (typeof url !== "string") return refuse(reference, url.refused)
      const parsed = yield* Effect.result(Url.parseUrl(url))
      if (parsed._tag === "Failure") return refuse(reference, parsed.failure.reason)
      const endpoint = parsed.success
      if (endpoint._tag === "Unix") return refuse(reference, "a Server Reference cannot lead to a Unix socket")
      if (endpoint.username !== undefined || endpoint.password !== undefined) {
        return refuse(reference, "it carries credentials, which are only taken from the client's options")
      }
      // from TLS: the list's (a failover never leaves TLS) or the node's that sent it (a reference led there)
      if ((self.encrypted || Url.isEncrypted(from.endpoint!)) && !Url.isEncrypted(endpoint)) {
        return refuse(reference, "it leads from TLS to a plaintext connection")
      }
      const broker = Broker.display(url)!
      const target: MqttClient.ServerReferenceTarget = {
        url: broker,
        host: endpoint.host,
        port: endpoint.port,
        reasonCode,
        from: from.broker
      }
      const refused = disallowed(self.policy!, target)
      if (refused !== undefined) return refuse(reference, refused)
      // a node of the list is that node: its own credentials; once connected, the next round goes on from it
      const key = Url.brokerKey(endpoint)
      const listed = self.configured.find((node) => node.endpoint !== undefined && Url.brokerKey(node.endpoint) === key)
      if (listed !== undefined) return { _tag: "Follow", node: listed } as const
      // elsewhere: the credentials of the list node the client came from, so one place per such node
      const place = `${from.origin} ${key}`
      const known = self.referenced.get(place)
      if (known !== undefined) {
        self.referenced.delete(place)
        self.referenced.set(place, known)
        return { _tag: "Follow", node: known.node } as const
      }
      const made = yield* Effect.result(self.make(endpoint, broker, from))
      if (made._tag === "Failure") return refuse(reference, made.failure.message)
      self.referenced.set(place, made.success)
      yield* self.letGo()
      return { _tag: "Follow", node: made.success.node } as const
    })
  }

  /** Lets the least recently followed places go while more than `REFERENCED_KEPT` are kept. */
  private letGo(): Effect.Effect<void> {
    const gone: Array<Place> = []
    for (const [key, place] of this.referenced) {
      if (this.referenced.size <= REFERENCED_KEPT) break
      if (place.node === this.current) continue
      this.referenced.delete(key)
      gone.push(place)
    }
    return Effect.forEach(gone, (place) => place.release, { discard: true })
  }
}

const refuse = (reference: string, reason: string): Redirect => ({ _tag: "Refuse", reference, reason })

/**
 * Why `followServerReference` does not allow a target, or undefined when it does: a host, or `host:port`, of the
 * list; or the predicate (one that throws allows nothing, and the reason says so).
 */
const disallowed = (
  policy: NonNullable<MqttClient.Options["followServerReference"]>,
  target: MqttClient.ServerReferenceTarget
): string | undefined => {
  if (typeof policy === "function") {
    try {
      return policy(target) === true ? undefined : "followServerReference does not allow it"
    } catch (error) {
      return `the followServerReference predicate threw: ${describe(error)}`
    }
  }
  const host = target.host.toLowerCase()
  const allowed = policy.some((entry) => {
    const e = Url.hostEntry(entry)
    return e !== undefined && e.host === host && (e.port === undefined || e.port === target.port)
  })
  return allowed ? undefined : "followServerReference does not allow it"
}
