/**
 * The life of a client's connections: the first connection, reconnecting on the `reconnect` schedule when one
 * is lost (a round over the nodes of `url` after each delay, following a Server Reference where allowed), which
 * errors are final, the status and the counters, and the shutdown that fails what waits and ends the streams.
 */
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as LogLevel from "effect/LogLevel"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as SubscriptionRef from "effect/SubscriptionRef"
import type * as MqttClient from "../MqttClient.ts"
import type * as MqttError from "../MqttError.ts"
import * as Broker from "./broker.ts"
import { close, type Connection, disconnectReasonOf, type Environment, lost, open } from "./connection.ts"
import { escapeControls } from "./describe.ts"
import * as Failover from "./failover.ts"
import type { Node, Nodes } from "./failover.ts"

/** How long a connection must last for the reconnect backoff to start again from its first delay. */
const STABLE_CONNECTION_MILLIS = 1_000

/** After how many connections in a row that each ended within `STABLE_CONNECTION_MILLIS` the log says why. */
const BRIEF_HINT_AFTER = 3

/** What connections that keep ending at once most often mean. */
const briefHint = (count: number) =>
  `the last ${count} connections each ended within a second: is another client connected with the same client ` +
  "identifier? The broker closes one connection for the other, and the two take the session from each other"

/** The error the client's own release stops it with: the streams end rather than fail. */
export const closedByClient = lost("the client was closed")

/** The step function of the reconnect schedule: its state is the backoff so far. */
type ScheduleStep = (now: number, input: MqttError.MqttError) => Effect.Effect<[unknown, Duration.Duration], unknown>

/** MQTT 5 DISCONNECT reasons after which reconnecting would do harm or cannot help. */
const finalDisconnects = new Set([
  0x8e, // session taken over: reconnecting would take it back, and the two clients would ping-pong
  0x9d // server moved: the client does not follow a redirect silently
])

/** CONNACK refusals that another attempt will not change (credentials, identifier, protocol, ban). */
const isFinalRefusal = (error: MqttError.ConnectRefusedError): boolean =>
  error.protocolVersion === 5
    ? ![0x88, 0x89, 0x97, 0x9c, 0x9f].includes(error.reasonCode)
    : error.reasonCode !== 3

/**
 * Whether the client gives up after this error instead of reconnecting. A certificate that TLS rejects is final
 * before the first connection (the settings are wrong: it does not go away by itself); once these settings have
 * connected, it is the broker's certificate that changed (one that lapsed, a load balancer's wrong one), and the
 * client tries again on its schedule until it is put right.
 */
export const isFinal = (error: MqttError.MqttError, connectedBefore = false): boolean =>
  error._tag === "ConnectRefusedError"
    ? isFinalRefusal(error)
    : error._tag === "ConnectionLostError"
    ? error.reasonCode !== undefined && finalDisconnects.has(error.reasonCode)
    : error._tag === "TlsError"
    ? error.kind !== "HandshakeFailed" && !connectedBefore
    : error._tag === "InvalidOptionError"

/**
 * How many Server References one round of attempts follows, and how many DISCONNECTs with a reference in a row
 * (each connection shorter than REDIRECT_RESET_MILLIS), so that two brokers cannot bounce a client forever.
 */
const MAX_REDIRECTS_PER_ROUND = 3

/** A connection that lasted this long (ms) ends a run of DISCONNECT references: the next one is followed again. */
const REDIRECT_RESET_MILLIS = 60_000

/** How one round of attempts ended: connected, or failed with the last error (final: the client gives up). */
type RoundResult =
  | { readonly _tag: "Connected"; readonly connection: Connection }
  | {
    readonly _tag: "Failed"
    readonly error: MqttError.MqttError
    readonly final: boolean
    readonly attempt: number
    /** the node of the last attempt */
    readonly node: Node
  }

/** One failed attempt of a round, and the attempt whose Server Reference led to it. */
interface Attempt {
  readonly node: Node
  readonly error: MqttError.MqttError
  /** refused for good: directly, or by a reference (0x9D) to a place that refused for good */
  final: boolean
  readonly by: Attempt | undefined
}

const connecting = (attempt: number, node: Node): MqttClient.ConnectionStatus =>
  node.broker === undefined
    ? { _tag: "Connecting", attempt }
    : { _tag: "Connecting", attempt, broker: node.broker }

export class Supervisor {
  readonly env: Environment
  readonly nodes: Nodes
  readonly status: SubscriptionRef.SubscriptionRef<MqttClient.ConnectionStatus>
  readonly metrics = {
    connects: 0,
    reconnects: 0,
    failedAttempts: 0,
    disconnectedMillis: 0,
    longestDisconnectMillis: 0
  }
  /** completed when the client stops: with the error, or void when closed by its scope */
  readonly closedSignal = Deferred.makeUnsafe<void, MqttError.MqttError>()
  /** completed at each connection; callers waiting for one await it */
  private connected = Deferred.makeUnsafe<void, MqttError.MqttError>()
  /** completed when the current connection ends (made afresh as it ends; see `awaitOffline`) */
  private offline = Deferred.makeUnsafe<void>()
  current: Connection | undefined = undefined
  /** what the CONNACK of the current (or last) connection said, with the broker it came from */
  info: MqttClient.ConnectionInfo | undefined = undefined
  /** called once with the error when the client stops (request/response fails its waiters) */
  readonly onClose: Array<(error: MqttError.MqttError) => void> = []

  constructor(
    env: Environment,
    nodes: Nodes,
    status: SubscriptionRef.SubscriptionRef<MqttClient.ConnectionStatus>
  ) {
    this.env = env
    this.nodes = nodes
    this.status = status
  }

  /**
   * A log line of the client, when at or above its `logLevel` (the application's logger filters further). Lines
   * name the broker as `scheme://host:port` and carry error messages, which never contain a credential.
   */
  log(level: "Info" | "Warn" | "Error", message: string, node?: Node): Effect.Effect<void> {
    if (!LogLevel.isGreaterThanOrEqualTo(level, this.env.options.logLevel)) return Effect.void
    const broker = (node ?? this.current?.node)?.broker ?? this.info?.broker ?? this.nodes.first.broker
    const annotated = { broker: broker ?? "custom transport" }
    const line = level === "Info"
      ? Effect.logInfo(message)
      : level === "Warn"
      ? Effect.logWarning(message)
      : Effect.logError(message)
    return Effect.annotateLogs(line, annotated)
  }

  /** Waits for the next connection, unless the client has stopped. */
  readonly awaitConnected: Effect.Effect<void, MqttError.MqttError> = Effect.suspend(() => {
    const closed = this.env.driver.session.closed
    return closed !== undefined ? Effect.fail(closed) : Deferred.await(this.connected)
  })

  /**
   * Completes when the client is not connected: at once while it is offline (reconnecting, or stopped), else when
   * the current connection ends.
   */
  readonly awaitOffline: Effect.Effect<void> = Effect.suspend(() =>
    this.env.driver.session.connected ? Deferred.await(this.offline) : Effect.void
  )

  /**
   * Connects for the first time, trying the nodes of `url` in order (then retrying on the schedule when
   * `retryFirstConnect` is set), then supervises.
   */
  start(scope: Scope.Scope): Effect.Effect<void, MqttError.MqttError> {
    const self = this
    return Effect.gen(function*() {
      const o = self.env.options
      const first = yield* self.round(self.nodes.round(), 1, false)
      let connection: Connection
      if (first._tag === "Connected") {
        connection = first.connection
      } else if (!o.retryFirstConnect || o.reconnect === undefined || first.final) {
        if (o.retryFirstConnect) yield* self.log("Error", `MQTT client gave up: ${first.error.message}`)
        return yield* Effect.fail(first.error)
      } else {
        connection = yield* Effect.tapError(
          self.reconnect(yield* Schedule.toStep(o.reconnect), first.error, first.node, first.attempt, undefined),
          (error) => self.log("Error", `MQTT client gave up: ${error.message}`)
        )
      }
      yield* self.attach(connection)
      yield* Effect.forkIn(self.guarded(self.supervise(connection)), scope)
    })
  }

  /**
   * A defect of the supervision (a bug of this client) stops the client with a typed error (`ConnectionLostError`,
   * "internal error"), rather than leaving it connected with nobody watching its connection.
   */
  private guarded(supervise: Effect.Effect<void>): Effect.Effect<void> {
    return Effect.catchCause(supervise, (cause) =>
      Cause.hasInterruptsOnly(cause)
        ? Effect.failCause(cause)
        : this.shutdown(lost(`internal error: ${Cause.pretty(cause)}`, Cause.squash(cause))))
  }

  private attach(c: Connection): Effect.Effect<void> {
    return Effect.suspend(() => {
      const previous = this.info?.broker
      this.current = c
      this.nodes.connected(c.node)
      this.metrics.connects++
      this.env.driver.metrics.connection(true, this.metrics.connects > 1)
      const info = c.info!
      this.info = info
      Deferred.doneUnsafe(this.connected, Effect.void)
      const moved = previous !== undefined && info.broker !== undefined && previous !== info.broker
      return Effect.andThen(
        this.log(
          "Info",
          `MQTT connected to ${c.node.broker ?? "the broker"} as "${info.clientId}" (MQTT ${
            info.protocolVersion === 5 ? "5" : info.protocolVersion === 4 ? "3.1.1" : "3.1"
          }, session present: ${info.sessionPresent}${moved ? `, moved from ${previous}` : ""})`
        ),
        SubscriptionRef.set(
          this.status,
          moved ? { _tag: "Connected", info, movedFrom: previous } : { _tag: "Connected", info }
        )
      )
    })
  }

  /** The connection ended and the client goes on: the session waits for the next connection. */
  private detach(c: Connection, error: MqttError.MqttError): Effect.Effect<void> {
    return Effect.suspend(() => {
      if (this.current === c) this.current = undefined
      this.connected = Deferred.makeUnsafe()
      Deferred.doneUnsafe(this.offline, Effect.void)
      // the next connection's, ready before its CONNACK marks the session connected
      this.offline = Deferred.makeUnsafe()
      this.env.driver.metrics.connection(false, false)
      const driver = this.env.driver
      driver.session.lost(error, driver.out)
      driver.drain()
      return close(this.env, c, error, disconnectReasonOf(error))
    })
  }

  /**
   * Where the Server Reference of an error leads, when `followServerReference` allows it; a reference that is
   * not followed is said in a log line.
   */
  private redirect(
    error: MqttError.MqttError,
    from: Node,
    exhausted: string | undefined = undefined
  ): Effect.Effect<Node | undefined> {
    const decided = exhausted !== undefined
      ? Effect.succeed(
        Failover.referenceOf(error) === undefined ? undefined : {
          _tag: "Refuse" as const,
          reference: Failover.referenceOf(error)!.reference,
          reason: `${MAX_REDIRECTS_PER_ROUND} Server References were followed ${exhausted} already`
        }
      )
      : this.nodes.redirect(error, from)
    return Effect.flatMap(decided, (redirect) => {
      if (redirect === undefined) return Effect.undefined
      if (redirect._tag === "Follow") {
        return Effect.as(
          this.log("Info", `MQTT following the server reference of ${from.broker} to ${redirect.node.broker}`, from),
          redirect.node
        )
      }
      return Effect.as(
        this.log(
          "Warn",
          `MQTT not following the server reference "${escapeControls(redirect.reference)}" of ${from.broker}: ${
            escapeControls(redirect.reason)
          }`,
          from
        ),
        undefined
      )
    })
  }

  /**
   * One round of attempts: each node in turn, at once, until one accepts. A Server Reference that the options
   * allow is the next attempt. Ends with the connection, or with the last error, final when the client must give
   * up: every attempt on a node of the list was refused for good (the credentials, a certificate), directly or
   * by sending the client, for good (0x9D, server moved), to a place that refused it for good. A node that refuses
   * for good does not end the round (another node of a cluster may take the client: its own credentials, its own
   * certificate), nor does a place a Server Reference led to.
   */
  private round(nodes: Array<Node>, firstAttempt: number, announce: boolean): Effect.Effect<RoundResult> {
    const self = this
    return Effect.gen(function*() {
      let attempt = firstAttempt
      let redirects = 0
      let error: MqttError.MqttError | undefined
      const attempts: Array<Attempt> = []
      // the attempt whose Server Reference led to a node about to be tried
      const referredBy = new Map<Node, Attempt>()
      for (let i = 0; i < nodes.length; i++, attempt++) {
        const node = nodes[i]
        if (i > 0 || announce) yield* SubscriptionRef.set(self.status, connecting(attempt, node))
        const exit = yield* Effect.exit(open(self.env, node, self.env.driver.session.cleanStart))
        if (Exit.isSuccess(exit)) return { _tag: "Connected", connection: exit.value } as const
        const failure = exit.cause.reasons.find(Cause.isFailReason)
        if (failure === undefined) return yield* Effect.failCause(exit.cause as Cause.Cause<never>)
        self.metrics.failedAttempts++
        error = failure.error
        const tried: Attempt = { node, error, final: false, by: referredBy.get(node) }
        referredBy.delete(node)
        attempts.push(tried)
        const target = yield* self.redirect(
          error,
          node,
          redirects >= MAX_REDIRECTS_PER_ROUND ? "in this round" : undefined
        )
        if (target !== undefined) {
          redirects++
          // next; a node of the list that a reference names is not tried again later in the round
          const later = nodes.indexOf(target, i + 1)
          if (later >= 0) nodes.splice(later, 1)
          nodes.splice(i + 1, 0, target)
          referredBy.set(target, tried)
        } else if (isFinal(error, self.metrics.connects > 0)) {
          // refused for good, and so were the attempts that sent the client here for good
          const connectedBefore = self.metrics.connects > 0
          for (
            let a: Attempt | undefined = tried;
            a !== undefined && !a.final && isFinal(a.error, connectedBefore);
            a = a.by
          ) {
            a.final = true
          }
        }
        const next = nodes[i + 1]
        if (next !== undefined) {
          yield* self.log("Warn", `${error.message}; trying ${next.broker ?? "the next broker"} now`, node)
          yield* SubscriptionRef.set(self.status, { _tag: "Disconnected", cause: error, retryIn: Duration.zero })
        }
      }
      const final = attempts.every((a) => a.node.index < 0 || a.final)
      return { _tag: "Failed", error: error!, final, attempt, node: nodes.at(-1)! } as const
    })
  }

  /**
   * Tries to connect again on the schedule until it succeeds (the connection) or gives up (the last error): a
   * round of every node after each delay, beginning with `redirect`, where a Server Reference led. Even the
   * first round waits its delay, so that many clients that lost the same broker spread out.
   */
  private reconnect(
    step: ScheduleStep,
    cause: MqttError.MqttError,
    /** the node of the connection or attempt that ended with `cause` */
    causeNode: Node,
    firstAttempt: number,
    redirect: Node | undefined,
    /** said after the first line's cause: why connections keep ending (see `briefHint`) */
    note: string | undefined = undefined
  ): Effect.Effect<Connection, MqttError.MqttError> {
    const self = this
    return Effect.gen(function*() {
      const clock = yield* Clock.Clock
      let error = cause
      let errorNode = causeNode
      let attempt = firstAttempt
      let first = redirect
      while (true) {
        const next = yield* Effect.exit(step(clock.currentTimeMillisUnsafe(), error))
        if (Exit.isFailure(next)) return yield* Effect.fail(error)
        const delay = next.value[1]
        const millis = Duration.millis(Math.round(Duration.toMillis(delay)))
        yield* self.log(
          "Warn",
          `${error.message}${error === cause && note !== undefined ? ` (${note})` : ""}; next attempt in ${
            Duration.format(millis)
          } (attempt ${attempt})`,
          errorNode
        )
        yield* SubscriptionRef.set(self.status, { _tag: "Disconnected", cause: error, retryIn: delay })
        yield* Effect.sleep(delay)
        const result = yield* self.round(self.nodes.round(first), attempt, true)
        first = undefined
        if (result._tag === "Connected") return result.connection
        error = result.error
        errorNode = result.node
        attempt = result.attempt
        if (result.final) return yield* Effect.fail(error)
      }
    })
  }

  /** Watches the current connection; when it ends, reconnects (or follows a Server Reference) or shuts down. */
  private supervise(first: Connection): Effect.Effect<void> {
    const self = this
    return Effect.gen(function*() {
      const clock = yield* Clock.Clock
      const schedule = self.env.options.reconnect
      let c = first
      let connectedAt = clock.currentTimeMillisUnsafe()
      let step: ScheduleStep | undefined
      let briefInARow = 0
      // DISCONNECTs with a Server Reference followed in a row, each connection shorter than REDIRECT_RESET_MILLIS
      let redirects = 0
      while (true) {
        const lostWith = yield* Effect.flip(Deferred.await(c.lost))
        // the client stopped (its release, or a shutdown): nothing reads the error (not made, with its stack)
        if (self.env.driver.session.closed !== undefined) return
        const error = Broker.annotate(lostWith, c.node.broker, "connected")
        const reference = schedule === undefined ? Failover.referenceOf(error) : undefined
        if (reference !== undefined) {
          const from = c.node.broker
          yield* self.log(
            "Warn",
            `MQTT not following the server reference "${escapeControls(reference.reference)}" of ${from}: ` +
              "reconnect is off",
            c.node
          )
        }
        if (clock.currentTimeMillisUnsafe() - connectedAt >= REDIRECT_RESET_MILLIS) redirects = 0
        const exhausted = redirects >= MAX_REDIRECTS_PER_ROUND && Failover.referenceOf(error) !== undefined
        const redirect = schedule === undefined ? undefined : yield* self.redirect(
          error,
          c.node,
          exhausted ? "in a row (each connection shorter than a minute)" : undefined
        )
        const code = (error as { readonly reasonCode?: number }).reasonCode
        if (Failover.referenceOf(error) === undefined) redirects = 0
        else if (redirect !== undefined) redirects++
        // a reference not followed for that count only (0x9D, server moved, included) sends the client back to its
        // own list rather than stopping it; so does a 0x9D not followed at all when the list has other nodes (the
        // broker moved; the cluster's other nodes are where the application said to go)
        const movedWithinList = code === 0x9d && self.env.options.nodes.length > 1
        if (schedule === undefined || (redirect === undefined && isFinal(error) && !exhausted && !movedWithinList)) {
          return yield* self.shutdown(error, disconnectReasonOf(error))
        }
        // when the connection ended, not after the wait for its last writes (up to 2 s with a frozen broker)
        const since = clock.currentTimeMillisUnsafe()
        yield* self.detach(c, error)
        // the backoff starts afresh only after a connection that lasted a second: a broker that accepts and
        // drops each connection at once meets a growing delay, and of two clients that take one session from
        // each other at least one backs off; a broker that restarts now and then is reconnected to at once
        const brief = since - connectedAt < STABLE_CONNECTION_MILLIS
        briefInARow = brief ? briefInARow + 1 : 0
        if (step === undefined || !brief) {
          step = yield* Schedule.toStep(schedule)
        }
        // a broker that says why it ends each connection (a DISCONNECT with another reason: server busy, moved...)
        // is not the mark of two clients with one identifier (none, or 0x8E session taken over, is)
        const twoClients = code === undefined || code === 0x8e
        const note = briefInARow >= BRIEF_HINT_AFTER && twoClients ? briefHint(briefInARow) : undefined
        const exit = yield* Effect.exit(self.reconnect(step, error, c.node, 1, redirect, note))
        if (Exit.isFailure(exit)) {
          const failure = exit.cause.reasons.find(Cause.isFailReason)
          return yield* self.shutdown(failure?.error ?? error)
        }
        c = exit.value
        if (self.env.driver.session.closed !== undefined) {
          // the client closed while this connection was made (its shutdown waited for the store): it ends as the
          // close ends a connection, with DISCONNECT, so that the broker does not publish the will
          const o = self.env.options
          return yield* close(self.env, c, closedByClient, o.disconnectReasonCode, o.disconnectSessionExpiry, true)
        }
        connectedAt = clock.currentTimeMillisUnsafe()
        const outage = connectedAt - since
        self.metrics.reconnects++
        self.metrics.disconnectedMillis += outage
        self.metrics.longestDisconnectMillis = Math.max(self.metrics.longestDisconnectMillis, outage)
        yield* self.attach(c)
      }
    })
  }

  /**
   * Stops the client for good: every waiting operation fails with `error`, the streams fail with it (or end,
   * when the client itself closes), and the connection is closed, after a DISCONNECT when `disconnectReason` is
   * given. Bounded in every state: the last bytes get at most 2 seconds.
   */
  shutdown(error: MqttError.MqttError, disconnectReason?: number, sessionExpiry?: number): Effect.Effect<void> {
    return Effect.suspend(() => {
      const driver = this.env.driver
      if (driver.session.closed !== undefined) return Effect.void
      driver.session.close(error, driver.out)
      driver.drain()
      driver.metrics.connection(false, false)
      for (const f of this.onClose) f(error)
      Deferred.doneUnsafe(this.connected, Effect.fail(error))
      Deferred.doneUnsafe(this.offline, Effect.void)
      const c = this.current
      this.current = undefined
      const byClient = error === closedByClient
      // with reconnect off, stopping at a lost connection is what the application asked for (a Warn line; the error
      // reaches it, typed, through awaitClose and its streams); otherwise the client gave up (an Error line)
      const gaveUp = byClient
        ? Effect.void
        : this.env.options.reconnect === undefined
        ? this.log("Warn", `MQTT client stopped, reconnect is off: ${error.message}`)
        : this.log("Error", `MQTT client gave up: ${error.message}`)
      // a durable session stores what is pending before the connection goes (within the same bound)
      const flushed = driver.journal === undefined
        ? Effect.void
        : Effect.ignore(Effect.timeoutOption(driver.journal.flushed, "2 seconds"))
      return flushed.pipe(
        Effect.andThen(
          c === undefined ? Effect.void : close(this.env, c, error, disconnectReason, sessionExpiry, byClient)
        ),
        Effect.andThen(gaveUp),
        Effect.andThen(Effect.sync(() => driver.deliveries.close(byClient ? undefined : error))),
        Effect.andThen(SubscriptionRef.set(this.status, { _tag: "Closed", cause: byClient ? undefined : error })),
        Effect.andThen(byClient ? Deferred.done(this.closedSignal, Exit.void) : Deferred.fail(this.closedSignal, error))
      )
    })
  }
}
