/**
 * The life of a client's connections: the first connection, reconnecting on the `reconnect` schedule when one
 * is lost, which errors are final, the status and the counters, and the shutdown that fails what waits and
 * ends the streams.
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

/** How long a connection must last for the reconnect backoff to start again from its first delay. */
const STABLE_CONNECTION_MILLIS = 1_000

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

/** Whether the client gives up after this error instead of reconnecting. */
export const isFinal = (error: MqttError.MqttError): boolean =>
  error._tag === "ConnectRefusedError"
    ? isFinalRefusal(error)
    : error._tag === "ConnectionLostError"
    ? error.reasonCode !== undefined && finalDisconnects.has(error.reasonCode)
    : error._tag === "TlsError"
    ? error.kind !== "HandshakeFailed" // a certificate problem does not go away by itself
    : error._tag === "InvalidOptionError"

export class Supervisor {
  readonly env: Environment
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
  current: Connection | undefined = undefined
  /** called once with the error when the client stops (request/response fails its waiters) */
  readonly onClose: Array<(error: MqttError.MqttError) => void> = []

  constructor(env: Environment, status: SubscriptionRef.SubscriptionRef<MqttClient.ConnectionStatus>) {
    this.env = env
    this.status = status
  }

  /**
   * A log line of the client, when at or above its `logLevel` (the application's logger filters further). Lines
   * name the broker as `scheme://host:port` and carry error messages, which never contain a credential.
   */
  log(level: "Info" | "Warn" | "Error", message: string): Effect.Effect<void> {
    if (!LogLevel.isGreaterThanOrEqualTo(level, this.env.options.logLevel)) return Effect.void
    const annotated = { broker: this.env.broker ?? "custom transport" }
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

  /** Connects for the first time (retrying on the schedule when `retryFirstConnect` is set), then supervises. */
  start(scope: Scope.Scope): Effect.Effect<void, MqttError.MqttError> {
    const self = this
    return Effect.gen(function*() {
      const o = self.env.options
      const firstExit = yield* Effect.exit(open(self.env, self.env.driver.session.cleanStart))
      let first: Connection
      if (Exit.isSuccess(firstExit)) {
        first = firstExit.value
      } else {
        const failure = firstExit.cause.reasons.find(Cause.isFailReason)
        if (failure === undefined || !o.retryFirstConnect || o.reconnect === undefined || isFinal(failure.error)) {
          if (failure !== undefined && o.retryFirstConnect) {
            yield* self.log("Error", `MQTT client gave up: ${failure.error.message}`)
          }
          return yield* Effect.failCause(firstExit.cause)
        }
        self.metrics.failedAttempts++
        first = yield* Effect.tapError(
          self.reconnect(yield* Schedule.toStep(o.reconnect), failure.error),
          (error) => self.log("Error", `MQTT client gave up: ${error.message}`)
        )
      }
      yield* self.attach(first)
      yield* Effect.forkIn(self.supervise(first), scope)
    })
  }

  private attach(c: Connection): Effect.Effect<void> {
    return Effect.suspend(() => {
      this.current = c
      this.metrics.connects++
      this.env.driver.metrics.connection(true, this.metrics.connects > 1)
      Deferred.doneUnsafe(this.connected, Effect.void)
      const info = c.info!
      return Effect.andThen(
        this.log(
          "Info",
          `MQTT connected to ${this.env.broker ?? "the broker"} as "${info.clientId}" (MQTT ${
            info.protocolVersion === 5 ? "5" : info.protocolVersion === 4 ? "3.1.1" : "3.1"
          }, session present: ${info.sessionPresent})`
        ),
        SubscriptionRef.set(this.status, { _tag: "Connected", info })
      )
    })
  }

  /** The connection ended and the client goes on: the session waits for the next connection. */
  private detach(c: Connection, error: MqttError.MqttError): Effect.Effect<void> {
    return Effect.suspend(() => {
      if (this.current === c) this.current = undefined
      this.connected = Deferred.makeUnsafe()
      this.env.driver.metrics.connection(false, false)
      const driver = this.env.driver
      driver.session.lost(error, driver.out)
      driver.drain()
      return close(this.env, c, error, disconnectReasonOf(error))
    })
  }

  /**
   * Tries to connect again on the schedule until it succeeds (the connection) or gives up (the last error).
   * Even the first attempt waits its delay, so that many clients that lost the same broker spread out.
   */
  private reconnect(step: ScheduleStep, cause: MqttError.MqttError): Effect.Effect<Connection, MqttError.MqttError> {
    const self = this
    return Effect.gen(function*() {
      const clock = yield* Clock.Clock
      let error = cause
      for (let attempt = 1;; attempt++) {
        const next = yield* Effect.exit(step(clock.currentTimeMillisUnsafe(), error))
        if (Exit.isFailure(next)) return yield* Effect.fail(error)
        const delay = next.value[1]
        const millis = Duration.millis(Math.round(Duration.toMillis(delay)))
        yield* self.log("Warn", `${error.message}; next attempt in ${Duration.format(millis)} (attempt ${attempt})`)
        yield* SubscriptionRef.set(self.status, { _tag: "Disconnected", cause: error, retryIn: delay })
        yield* Effect.sleep(delay)
        yield* SubscriptionRef.set(self.status, { _tag: "Connecting", attempt })
        const exit = yield* Effect.exit(open(self.env, self.env.driver.session.cleanStart))
        if (Exit.isSuccess(exit)) return exit.value
        self.metrics.failedAttempts++
        const failure = exit.cause.reasons.find(Cause.isFailReason)
        if (failure === undefined) return yield* Effect.failCause(exit.cause)
        error = failure.error
        if (isFinal(error)) return yield* Effect.fail(error)
      }
    })
  }

  /** Watches the current connection; when it ends, reconnects or shuts the client down. */
  private supervise(first: Connection): Effect.Effect<void> {
    const self = this
    return Effect.gen(function*() {
      const clock = yield* Clock.Clock
      const schedule = self.env.options.reconnect
      let c = first
      let connectedAt = clock.currentTimeMillisUnsafe()
      let step: ScheduleStep | undefined
      while (true) {
        const error = Broker.annotate(yield* Effect.flip(Deferred.await(c.lost)), self.env.broker, "connected")
        if (self.env.driver.session.closed !== undefined) return
        if (schedule === undefined || isFinal(error)) return yield* self.shutdown(error, disconnectReasonOf(error))
        yield* self.detach(c, error)
        const since = clock.currentTimeMillisUnsafe()
        // the backoff starts afresh only after a connection that lasted a second: a broker that accepts and
        // drops each connection at once meets a growing delay, and of two clients that take one session from
        // each other at least one backs off; a broker that restarts now and then is reconnected to at once
        if (step === undefined || since - connectedAt >= STABLE_CONNECTION_MILLIS) {
          step = yield* Schedule.toStep(schedule)
        }
        const exit = yield* Effect.exit(self.reconnect(step, error))
        if (Exit.isFailure(exit)) {
          const failure = exit.cause.reasons.find(Cause.isFailReason)
          return yield* self.shutdown(failure?.error ?? error)
        }
        c = exit.value
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
      const c = this.current
      this.current = undefined
      const byClient = error === closedByClient
      const gaveUp = byClient ? Effect.void : this.log("Error", `MQTT client gave up: ${error.message}`)
      // a durable session stores what is pending before the connection goes (within the same bound)
      const flushed = driver.journal === undefined
        ? Effect.void
        : Effect.ignore(Effect.timeoutOption(driver.journal.flushed, "2 seconds"))
      return flushed.pipe(
        Effect.andThen(c === undefined ? Effect.void : close(this.env, c, error, disconnectReason, sessionExpiry)),
        Effect.andThen(gaveUp),
        Effect.andThen(Effect.sync(() => driver.deliveries.close(byClient ? undefined : error))),
        Effect.andThen(SubscriptionRef.set(this.status, { _tag: "Closed", cause: byClient ? undefined : error })),
        Effect.andThen(byClient ? Deferred.done(this.closedSignal, Exit.void) : Deferred.fail(this.closedSignal, error))
      )
    })
  }
}
