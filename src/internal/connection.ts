/**
 * One network connection to the broker: the socket, CONNECT and CONNACK, the read loop that feeds the session,
 * the writer fiber, and the keepalive. A connection only carries the session; when it ends, the supervisor
 * opens the next one.
 *
 * Data path in: socket read (in the socket's own `readable` event for a socket that can be read without a fiber:
 * Node's TCP, TLS, Unix; else a step of the read loop's fiber) → framer (whole packets) → decoder → session →
 * driver.drain (outbox, queues, completions). Out: session → outbox → one write per batch: in the outbox's
 * microtask for a socket that can be written without a fiber, else by the writer fiber (one `writeAll`) → socket.
 */
import type * as Arr from "effect/Array"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Result from "effect/Result"
import * as Scope from "effect/Scope"
import * as Semaphore from "effect/Semaphore"
import type * as Socket from "effect/socket/Socket"
import type * as MqttClient from "../MqttClient.ts"
import * as MqttError from "../MqttError.ts"
import { answerAuth } from "./auth.ts"
import * as Broker from "./broker.ts"
import * as Bytes from "./bytes.ts"
import * as Codec from "./codec.ts"
import { credentialsFor } from "./credentials.ts"
import { checkFirstByte, decode } from "./decode.ts"
import { describe } from "./describe.ts"
import type { Driver } from "./driver.ts"
import type { Node } from "./failover.ts"
import { Framer, type OversizedHandler } from "./framer.ts"
import { encodeConnect, type Resolved } from "./options.ts"
import { Outbox } from "./outbox.ts"
import { violation } from "./output.ts"
import type * as Packets from "./packets.ts"
import { keepalive } from "./pinger.ts"
import type { ReadNow } from "./platform.ts"

/** Bytes waiting to be written beyond which publishers wait for the socket. */
const OUTBOX_HIGH_WATER_MARK = 256 * 1024
/** How long closing waits for the last bytes to be written (and, when the client closes, for the broker to close). */
const SHUTDOWN_WRITE_TIMEOUT = Duration.seconds(2)
/**
 * How many bytes the reader reads ahead while it waits for room in a full queue (`readAhead`), beyond which it reads
 * no more (the socket's and the kernel's buffers fill, and TCP holds the broker back): enough to see the broker's
 * DISCONNECT and close behind what a Receive Maximum lets it send.
 */
const READ_AHEAD_BYTES = 64 * 1024

export interface Connection {
  /** the broker this connection is to */
  readonly node: Node
  readonly scope: Scope.Closeable
  readonly outbox: Outbox
  /** completed by the first error: the connection is over */
  readonly lost: Deferred.Deferred<never, MqttError.MqttError>
  /** completed when the reader stops: the broker closed the connection, or it failed */
  readonly readerEnded: Deferred.Deferred<void>
  /** whether CONNECT asked for a new session */
  readonly cleanStart: boolean
  info: MqttClient.ConnectionInfo | undefined
  lastSent: number
  lastReceived: number
  /** the reader waits for room in a queue, so the socket is not read (a PINGRESP cannot be seen) */
  stalled: boolean
  /**
   * completed when the client closes (DISCONNECT queued): the reader stops waiting for room, if it was, and reads
   * on to the broker's close, throwing away what it reads (see `close`)
   */
  readonly discarding: Deferred.Deferred<void>
  /** how many times the reader has stalled */
  stalls: number
  /** an MQTT 5 re-authentication in progress */
  reauthentication:
    | { readonly done: Deferred.Deferred<void, MqttError.MqttError>; readonly accepted: () => void }
    | undefined
  /** the broker's AUTH packets after the CONNACK are answered one at a time, in order, beside the reader */
  readonly answering: Semaphore.Semaphore
  /**
   * How the broker ended the connection (its DISCONNECT's error) in what the reader has not handed on while it waits
   * for room: in the read whose messages it waits to put in, or in the bytes it read ahead meanwhile. See `endWith`
   * and `ReadAhead`.
   */
  unreadDisconnect: () => MqttError.MqttError | undefined
  /**
   * While the reader waits for room: whether the broker sent anything since `since` (epoch milliseconds), as the
   * read-ahead saw it. `false` only when the read-ahead has read everything the broker sent (it has room left), so
   * that a PINGRESP would have been seen; `undefined` when it cannot tell (no read-ahead on this socket, or it is
   * full). See `pinger.ts`.
   */
  heardSince: (since: number) => boolean | undefined
}

/** What every connection of one client shares. Where each connection goes is its `Node` (failover.ts). */
export interface Environment {
  readonly options: Resolved
  /** the parent of every connection's scope */
  readonly parent: Scope.Scope
  readonly driver: Driver
  /**
   * The MQTT 5 Authentication Data each CONNECT carries: `auth.data`, then the data of the last re-authentication
   * the broker accepted (a token renewed by `reauthenticate` is the one a reconnection presents).
   */
  readonly authData: { current: Uint8Array | undefined }
}

/**
 * Ends the connection with `error`, unless the broker had ended it with a DISCONNECT that the reader read while it
 * waited for room, or in the read it waits to finish (a write that failed on the closed socket, a keepalive that ran
 * out, the socket's close): that DISCONNECT's reason code and properties say why, as when it is handled in its turn
 * (0x8E session taken over, 0x9D server moved with its Server Reference).
 */
export const endWith = (c: Connection, error: MqttError.MqttError): void => {
  if (Deferred.isDoneUnsafe(c.lost)) return
  Deferred.doneUnsafe(c.lost, Effect.fail(c.unreadDisconnect() ?? error))
}

export const lost = (reason: string, cause?: unknown) =>
  new MqttError.ConnectionLostError(cause === undefined ? { reason } : { reason, cause })

/** The read loop's error once its connection is over: never seen (see `loopLost` in `makeReader`). */
const alreadyLost = lost("the connection was over")

/**
 * How the read loop's pull failed: once the connection is over (the client closed it, and the broker then closed
 * its end), nothing reads the read loop's error (`guard` keeps the first), so none is made, with its stack.
 */
const loopLostOf = (c: Connection) => (error: Socket.SocketError): MqttError.MqttError =>
  Deferred.isDoneUnsafe(c.lost) ? alreadyLost : socketLost(error)

/** A socket failure as the client's error: the transport's own typed explanation when it gave one. */
export const socketLost = (error: Socket.SocketError): MqttError.MqttError => {
  const reason = error.reason
  if ("cause" in reason && MqttError.isMqttError(reason.cause)) return reason.cause
  switch (reason._tag) {
    case "SocketCloseError":
      return lost(reason.code === 1000 ? "the broker closed the connection" : "the connection was reset")
    case "SocketOpenError":
      return lost(
        reason.kind === "Timeout" ? "the TCP connection timed out" : `could not connect: ${describe(reason.cause)}`,
        reason.cause
      )
    default:
      return lost(`socket error: ${describe(reason.cause)}`, reason.cause)
  }
}

/**
 * Opens a connection to `node`, sends CONNECT and reads until the CONNACK is handled (the session then resumes
 * on it: restore, resends and waiting publishes are queued behind CONNECT), within `connectTimeout`. Then the
 * reader, the writer and the keepalive run in the connection's scope until it ends. Errors name the node.
 */
export const open = (
  env: Environment,
  node: Node,
  cleanStart: boolean
): Effect.Effect<Connection, MqttError.MqttError> =>
  Effect.mapError(attempt(env, node, cleanStart), (error) => Broker.annotate(error, node.broker, "connecting"))

const attempt = (env: Environment, node: Node, cleanStart: boolean): Effect.Effect<Connection, MqttError.MqttError> =>
  Effect.gen(function*() {
    const o = env.options
    const clock = yield* Clock.Clock
    const { username, password } = yield* credentialsFor(o, node)
    const scope = yield* Scope.fork(env.parent)
    // a reader of an earlier connection may have ended while it waited for room
    env.driver.stalled(false)
    const credentials = {
      ...o,
      username,
      password,
      auth: o.auth === undefined ? undefined : { ...o.auth, data: env.authData.current }
    }
    const connectBytes = encodeConnect(credentials, env.driver.session.clientId, cleanStart)
    if (!(connectBytes instanceof Uint8Array)) {
      yield* Scope.close(scope, Exit.void)
      return yield* new MqttError.InvalidOptionError({ option: "connect", reason: connectBytes.error })
    }
    const now = clock.currentTimeMillisUnsafe()
    const c: Connection = {
      node,
      scope,
      outbox: new Outbox(OUTBOX_HIGH_WATER_MARK),
      lost: Deferred.makeUnsafe(),
      readerEnded: Deferred.makeUnsafe(),
      cleanStart,
      info: undefined,
      lastSent: now,
      lastReceived: now,
      stalled: false,
      discarding: Deferred.makeUnsafe(),
      stalls: 0,
      reauthentication: undefined,
      answering: Semaphore.makeUnsafe(1),
      unreadDisconnect: () => undefined,
      heardSince: () => undefined
    }
    const reader = makeReader(env, c, clock)
    const handshake = Effect.gen(function*() {
      const { pull } = yield* Effect.mapError(Scope.provide(node.socket.reader, scope), socketLost)
      yield* Effect.mapError(node.writer([connectBytes]), socketLost)
      c.lastSent = clock.currentTimeMillisUnsafe()
      // the writer starts now: what the CONNACK's handling queues (resends) goes out after CONNECT
      const writeNow = node.writeNow
      if (writeNow !== undefined) {
        // no writer fiber: the outbox writes each batch in the microtask that would have woken it
        yield* Scope.addFinalizer(scope, Effect.sync(() => c.outbox.detach()))
        c.outbox.attach()
        c.outbox.writeDirectly(
          (batch, drained, failed) => {
            c.lastSent = clock.currentTimeMillisUnsafe()
            return writeNow(batch, drained, failed)
          },
          // as a failed write of the writer fiber: the connection ends, even while the reader waits for a consumer
          (cause) => endWith(c, lost(`socket error: ${describe(cause)}`, cause))
        )
      } else {
        c.outbox.attach()
        yield* Effect.forkIn(
          guard(c, writeLoop(c, clock)).pipe(Effect.ensuring(Effect.sync(() => c.outbox.detach()))),
          scope
        )
      }
      while (!reader.connected()) yield* reader.step(pull)
      return pull
    })
    const pull = yield* handshake.pipe(
      Effect.timeoutOrElse({
        duration: o.connectTimeout,
        orElse: () =>
          Effect.fail(
            new MqttError.MqttTimeoutError({ operation: "connect", millis: Duration.toMillis(o.connectTimeout) })
          )
      }),
      // a defect (a bug) fails the attempt as it would the read loop (`guard`): the socket is closed, and a
      // reconnecting client tries again
      Effect.catchDefect((defect) => Effect.fail(lost(`internal error: ${describe(defect)}`, defect))),
      Effect.tapError((error) =>
        Effect.suspend(() => {
          // the CONNACK was accepted in the read that failed: the session took this connection (restore, resends,
          // waiting publishes written into its outbox), so it must lose it as any connection it was carried by
          if (reader.connected() && !env.driver.session.closed) {
            env.driver.session.lost(error, env.driver.out)
            env.driver.drain()
          }
          return close(env, c, error, disconnectReasonOf(error))
        })
      )
    )
    // the read loop first waits for room for what came with the CONNACK: the handshake never waits on a consumer
    yield* Effect.forkIn(
      guard(c, Effect.andThen(reader.carried, reader.loop(pull, node.readNow))).pipe(
        Effect.ensuring(Deferred.done(c.readerEnded, Exit.void))
      ),
      scope
    )
    const keepAlive = c.info!.keepAlive
    if (keepAlive > 0) yield* Effect.forkIn(guard(c, keepalive(c, env.driver, keepAlive, o.pingTimeout)), scope)
    return c
  })

/** The MQTT 5 reason code of the DISCONNECT that goes with an error: the broker broke the protocol. */
export const disconnectReasonOf = (error: MqttError.MqttError): number | undefined =>
  error._tag === "ProtocolError" ? error.reasonCode : undefined

/**
 * Writes the outbox's batches; the keepalive counts from the last one written (once per batch, not per packet).
 * No yield between batches: the writer suspends in `take` when the outbox is empty (and its operation budget still
 * yields under a flood); a yield per batch was a scheduler turn per write, up to a third of the CPU of a QoS 1
 * publish (bench/cpu.ts).
 */
const writeLoop = (c: Connection, clock: Clock.Clock): Effect.Effect<never, MqttError.MqttError> =>
  Effect.forever(
    Effect.flatMap(c.outbox.take, (batch) => {
      // empty only when the connection closed between the wake-up and the take
      if (batch.length === 0) return Effect.void
      c.lastSent = clock.currentTimeMillisUnsafe()
      return Effect.map(
        Effect.mapError(c.node.writer(batch as Arr.NonEmptyReadonlyArray<Uint8Array>), socketLost),
        () => c.outbox.written()
      )
    }),
    { disableYield: true }
  )

/** Runs a loop of the connection: its first failure, or a defect (a bug of this client), ends the connection. */
const guard = (c: Connection, loop: Effect.Effect<unknown, MqttError.MqttError>): Effect.Effect<void> =>
  Effect.catchCause(loop, (cause) => {
    if (Cause.hasInterruptsOnly(cause)) return Effect.void
    const failure = cause.reasons.find(Cause.isFailReason)
    const error = failure !== undefined
      ? failure.error
      : lost(`internal error: ${Cause.pretty(cause)}`, Cause.squash(cause))
    return Effect.sync(() => endWith(c, error))
  })

/**
 * The reader's wait for room in a full queue (nothing is handed on meanwhile; see `ReadAhead`). A close cuts it: what did not fit then
 * goes into the queues beyond their capacity (delivery.ts), and the reader reads on to the broker's close. So does a
 * SUBSCRIBE or UNSUBSCRIBE waiting for its acknowledgement (`Driver.requestAwaitsAck`), when the full queues are ones
 * nothing has consumed yet (the application may wait for the SUBACK before it consumes), and a consumer that waits
 * for the end of an operation of the client (`Driver.ackWaiters`: a handler that publishes with `publish`), whose
 * acknowledgement is behind the unread messages (`stuck`): their QoS 1/2 leftovers go in, their QoS 0 ones are
 * dropped (`Deliveries.cutStall`), and the reader reads on to the acknowledgement. Meanwhile `readAhead` reads a
 * bounded amount on without handing anything on, to see the broker end the connection: it fails the wait with how
 * (with the broker's DISCONNECT when it sent one).
 */
const stallOn = (
  c: Connection,
  driver: Driver,
  wait: Effect.Effect<void>,
  readAhead: Effect.Effect<never, MqttError.MqttError> | undefined
): Effect.Effect<void, MqttError.MqttError> => {
  c.stalled = true
  c.stalls++
  driver.stalled(true)
  const deliveries = driver.deliveries
  // a cut that does not happen (a consumer started meanwhile) leaves the wait to go on
  const cut = (why: "unread" | "stuck") => deliveries.cutStall(why) ? Effect.void : Effect.never
  const cuts: Array<Effect.Effect<void, MqttError.MqttError>> = [
    wait,
    Deferred.await(c.discarding),
    awaitingConsumer(driver, () => cut("stuck")),
    quietConsumers(driver, () => cut("stuck"))
  ]
  if (deliveries.stalledUnread) cuts.push(Effect.flatMap(driver.requestAwaitsAck, () => cut("unread")))
  if (readAhead !== undefined) cuts.push(readAhead)
  return Effect.ensuring(
    Effect.raceAllFirst(cuts),
    Effect.sync(() => {
      c.stalled = false
      driver.stalled(false)
    })
  )
}

/**
 * Runs `cut` as soon as the consumer of a full queue (the fiber that last pulled from it) waits for the end of an
 * operation of the client: the acknowledgement is behind this wait, and the consumer would make room for good never.
 */
const awaitingConsumer = (driver: Driver, cut: () => Effect.Effect<void>): Effect.Effect<void> =>
  Effect.suspend(() =>
    driver.deliveries.consumerAwaits(driver.ackWaiters)
      ? cut()
      : Effect.flatMap(driver.waiterAdded, () => awaitingConsumer(driver, cut))
  )

/** How long the consumers may take nothing while a fiber waits for an operation of the client (see `stallOn`). */
const STUCK_MILLIS = 1000

/**
 * Runs `cut` once the consumers took nothing for `STUCK_MILLIS` (of real time: a test's clock does not move while a
 * consumer waits) while a fiber waits for the end of an operation of the client, or at once when they took nothing
 * since the last such cut: a handler in a fiber other than the one that pulls (`Stream.mapEffect` with
 * concurrency, `Stream.groupByKey`) that waits so, the one `awaitingConsumer` cannot tell.
 */
const quietConsumers = (driver: Driver, cut: () => Effect.Effect<void>): Effect.Effect<void> =>
  Effect.suspend(() => {
    const deliveries = driver.deliveries
    if (driver.ackWaiters.size > 0 && deliveries.stillStuck) return cut()
    const before = deliveries.takenTotal
    return Effect.flatMap(realSleep(STUCK_MILLIS), () =>
      driver.ackWaiters.size > 0 && deliveries.takenTotal === before ? cut() : quietConsumers(driver, cut))
  })

/** Sleeps on a timer of its own, not Effect's clock (which a test holds still); the timer keeps no process alive. */
const realSleep = (millis: number): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    const timer = setTimeout(() => resume(Effect.void), millis)
    timer.unref?.()
    return Effect.sync(() => clearTimeout(timer))
  })

/** The error of bytes from the broker that `decode` refused. */
const brokerViolation = (version: Packets.ProtocolVersion, v: Packets.Violation) =>
  violation(version, v.reason, v.reasonCode, { packet: v.packet, rule: v.rule })

/**
 * What the reader does with a PUBLISH over the client's Maximum Packet Size on MQTT 3.1/3.1.1, once the framer has
 * passed it over: its headers decoded (a violation there ends the connection, as for any packet), then dropped by
 * the session (`Session.onOversizedPublish`).
 */
const passOver = (env: Environment, connected: () => boolean): OversizedHandler => {
  const { driver, options } = env
  const out = driver.out
  const version = options.protocolVersion
  return (head, headerLength, total) => {
    if (out.error !== undefined) return
    const packet = decode(head[0], head.subarray(headerLength), version)
    if (packet._tag === "Violation") return out.fail(brokerViolation(version, packet))
    if (!connected() || packet._tag !== "Publish") return out.fail(violation(version, "a PUBLISH before CONNACK"))
    driver.session.onOversizedPublish(packet, total, options.maximumPacketSize, out)
  }
}

/**
 * Reads one connection: each socket read is framed, decoded and handed to the session in one synchronous step,
 * then drained once (one write, one offer per queue).
 */
const makeReader = (env: Environment, c: Connection, clock: Clock.Clock) => {
  const o = env.options
  const version = o.protocolVersion
  const driver = env.driver
  const session = driver.session
  const out = driver.out
  let connected = false
  let firstByteSeen = false
  // MQTT 3.1/3.1.1 cannot tell the broker the limit: a PUBLISH over it is passed over, not a broken connection
  const framer = new Framer(o.maximumPacketSize, version === 5 ? undefined : passOver(env, () => connected))
  const ahead = new ReadAhead(
    (chunks) => handleEnded(c, driver, version, chunks, (chunk) => framer.frame(chunk, onFrame)),
    () => clock.currentTimeMillisUnsafe(),
    c.scope
  )
  /** the error of a read (its DISCONNECT) that ends the connection once the reader has room for its messages */
  let heldBack: MqttError.MqttError | undefined
  c.unreadDisconnect = () => {
    const read = ahead.finish()
    return heldBack ?? read
  }
  c.heardSince = (since) => ahead.heardSince(since)
  /**
   * The wait for queue room of the read that carried the CONNACK: a resumed session's backlog may come in the same
   * read, more than the queue holds. It is the read loop's, not the handshake's: the application can take
   * messages only once `make` has returned (or, on a reconnect, at its own pace, which `connectTimeout` must not
   * bound).
   */
  let stallAfterConnack: Effect.Effect<void, MqttError.MqttError> | undefined

  const onFrame = (bytes: Uint8Array, start: number, bodyStart: number, end: number): void => {
    if (out.error !== undefined) return
    const packet = decode(bytes[start], bytes.subarray(bodyStart, end), version)
    if (packet._tag === "Violation") return out.fail(brokerViolation(version, packet))
    if (connected) return session.onPacket(packet, out)
    if (packet._tag === "Auth") return void out.auth.push(packet)
    if (packet._tag !== "Connack") return out.fail(violation(version, `a ${packet._tag.toUpperCase()} before CONNACK`))
    // the session resumes on this connection now: what it writes goes to this connection's outbox
    driver.outbox = c.outbox
    const info = session.onConnack(packet, c.cleanStart, out, c.node.broker)
    if (info === undefined) {
      driver.outbox = undefined
      return
    }
    c.info = { ...info, broker: c.node.broker }
    connected = true
  }

  /**
   * One socket read, synchronously: framed, decoded, handed to the session, drained once. Returns what must be
   * done before the next read (wait for queue room, answer an AUTH, fail), or undefined when nothing must.
   */
  const handle = (
    chunks: Arr.NonEmptyReadonlyArray<Uint8Array | string>
  ): Effect.Effect<void, MqttError.MqttError> | undefined => {
    c.lastReceived = clock.currentTimeMillisUnsafe()
    // after the DISCONNECT of a close: read only to see the broker's close
    if (connected && Deferred.isDoneUnsafe(c.discarding)) return undefined
    const handshake = !connected
    if (!firstByteSeen) {
      firstByteSeen = true
      const first = firstByteOf(chunks)
      const wrong = first === undefined ? undefined : checkFirstByte(first, version)
      // something that is not MQTT (an HTTP server's answer) is refused at its first byte, not at the timeout
      if (wrong !== undefined) return Effect.fail(brokerViolation(version, wrong))
    }
    // whatever the broker sends becomes a typed protocol error, never a defect
    try {
      for (let i = 0; i < chunks.length && out.error === undefined; i++) {
        const error = framer.frame(toBytes(chunks[i]), onFrame)
        if (error !== undefined) out.fail(violation(version, error.reason, error.reasonCode))
      }
    } catch (e) {
      out.fail(violation(version, `malformed packet: ${describe(e)}`, 0x81))
    }
    const wait = driver.drain()
    driver.metrics.gauges(session.outgoing.inFlight, driver.deliveries.messages.size)
    const challenges = out.auth.length > 0 ? out.auth.splice(0) : undefined
    const error = out.error
    out.error = undefined
    // nothing allocated on the common path (no wait, no AUTH, no error)
    let effect: Effect.Effect<void, MqttError.MqttError> | undefined
    if (wait !== undefined) {
      // a DISCONNECT in this read says why the connection ends, also when it ends during the wait (see `endWith`)
      if (error !== undefined) heldBack = error
      const stall = stallOn(c, driver, wait, ahead.read(c.node.readNow))
      if (handshake) stallAfterConnack = Effect.andThen(stall, afterStall)
      else effect = stall
    }
    if (challenges !== undefined && error === undefined) {
      const auth = answerAuth(o, version, c, challenges, connected ? beside : undefined)
      effect = effect === undefined ? auth : Effect.andThen(effect, auth)
    }
    if (error !== undefined) {
      effect = effect === undefined
        ? Effect.fail(error)
        : Effect.andThen(effect, Effect.fail(error))
    }
    if (wait !== undefined && !handshake) effect = Effect.andThen(effect!, afterStall)
    return effect
  }

  /**
   * Runs the answer to a challenge of a re-authentication beside the reader, which reads on meanwhile: messages,
   * acknowledgements and PINGRESP keep flowing while `onChallenge` works [MQTT-4.12.1]. Answers go one at a time,
   * in order; a failure ends the connection, as the reader's would.
   */
  const beside = (answer: Effect.Effect<void, MqttError.MqttError>): Effect.Effect<void> =>
    Effect.asVoid(Effect.forkIn(guard(c, c.answering.withPermits(1)(answer)), c.scope))

  /** Handles what was read during a wait for room, before the socket is read again (see `ReadAhead.handOver`). */
  const afterStall = Effect.suspend(() => ahead.handOver(handle))

  /** Pulls one read from the socket and handles it; a failed pull is the connection's end, as `lostAs` tells. */
  const step = (
    pull: Pull,
    lostAs: (error: Socket.SocketError) => MqttError.MqttError = socketLost
  ): Effect.Effect<void, MqttError.MqttError> => {
    ahead.pull = pull
    return Effect.flatMap(Effect.mapError(pull, lostAs), (chunks) => handle(chunks) ?? Effect.void)
  }

  const loopLost = loopLostOf(c)

  /**
   * The read loop after the handshake: direct reads where the socket has them, each socket read a step of the
   * fiber otherwise (which yields to the scheduler after each read: other connections' readers and the consumers
   * run between reads; an in-memory socket hands a read over inside the sender's call).
   */
  const loop = (pull: Pull, readNow: ReadNow | undefined): Effect.Effect<never, MqttError.MqttError> => {
    ahead.pull = pull
    return readNow === undefined
      ? Effect.forever(step(pull, loopLost))
      : Effect.forever(
        Effect.flatMap(readDirectly(readNow, handle), (ended) => ended ? step(pull, loopLost) : Effect.void)
      )
  }

  /** What the read loop does first: wait for room for what came with the CONNACK, if it did not fit. */
  const carried = Effect.suspend(() => {
    const stall = stallAfterConnack
    stallAfterConnack = undefined
    return stall ?? Effect.void
  })

  return { step, loop, carried, connected: () => connected }
}

/**
 * Reads in the socket's own `readable` events (platform.ts `ReadNow`) for as long as each read leaves nothing
 * to do (`handle` returns undefined): no fiber is resumed per read. The read loop's fiber waits meanwhile; it takes
 * over what a read leaves (a wait for queue room, during which nothing is handed on; an AUTH to answer; a failure),
 * then reads directly again. Succeeds with true once the connection has ended: the socket's `pull` then tells how.
 */
const readDirectly = (
  readNow: ReadNow,
  handle: (
    chunks: Arr.NonEmptyReadonlyArray<Uint8Array | string>
  ) => Effect.Effect<void, MqttError.MqttError> | undefined
): Effect.Effect<boolean, MqttError.MqttError> =>
  Effect.callback((resume) => {
    const reading = readNow((chunks) => {
      let next: Effect.Effect<void, MqttError.MqttError> | undefined
      try {
        next = handle(chunks)
      } catch (e) {
        // a bug of this client: a defect of the read loop (the connection ends), never a throw from the socket's
        // event, which would end the process
        next = Effect.die(e)
      }
      if (next === undefined) return true
      // stopped before the fiber runs on: it may read directly again at once
      reading!.stop()
      resume(Effect.as(next, false))
      return false
    }, () => resume(Effect.succeed(true)))
    if (reading === undefined) return resume(Effect.succeed(true))
    reading.start()
    return Effect.sync(reading.stop)
  })

/**
 * The connection ended while the reader waited for room (see `ReadAhead.finish`): what the wait still had to put in
 * goes into the queues beyond their capacity, and so do the messages read ahead behind it, in order (bounded by
 * READ_AHEAD_BYTES, once per connection); nothing is lost, and nothing can be acknowledged any more (the broker sends
 * the QoS 1/2 ones again on a resumed session, where they are not delivered twice while queued). The broker's
 * acknowledgements among them complete their operations. Returns the error the bytes end the connection with: the
 * broker's DISCONNECT (its reason code and properties), or a protocol violation. `frame` frames a chunk on from
 * where the reader stopped, handing each packet to the session.
 */
const handleEnded = (
  c: Connection,
  driver: Driver,
  version: Packets.ProtocolVersion,
  chunks: ReadonlyArray<Uint8Array>,
  frame: (chunk: Uint8Array) => { readonly reason: string; readonly reasonCode?: number } | undefined
): MqttError.MqttError | undefined => {
  if (!c.stalled) return undefined
  const out = driver.out
  driver.deliveries.cutForEnd()
  if (chunks.length === 0 || Deferred.isDoneUnsafe(c.discarding)) return undefined
  try {
    for (let i = 0; i < chunks.length && out.error === undefined; i++) {
      const error = frame(chunks[i])
      if (error !== undefined) out.fail(violation(version, error.reason, error.reasonCode))
    }
  } catch (e) {
    out.fail(violation(version, `malformed packet: ${describe(e)}`, 0x81))
  }
  if (driver.drain() !== undefined) driver.deliveries.cutForEnd()
  out.auth.length = 0
  const error = out.error
  out.error = undefined
  return error
}

/** The socket's read: the next chunks, or how the connection ended. */
type Pull = Effect.Effect<Arr.NonEmptyReadonlyArray<Uint8Array | string>, Socket.SocketError>

/** The reader's handling of one read: what must be done before the next read, if anything (see `makeReader`). */
type Handle = (
  chunks: Arr.NonEmptyReadonlyArray<Uint8Array | string>
) => Effect.Effect<void, MqttError.MqttError> | undefined

/**
 * What the reader reads while it waits for room in a full queue (`stallOn`): at most READ_AHEAD_BYTES (then nothing
 * more: the socket's and the kernel's buffers fill, and TCP holds the broker back), kept as it came for when room
 * comes. A broker that ends the connection (a session taken over, a server moved, its keepalive ran out, it shuts
 * down) sends DISCONNECT and closes; unread, those bytes would go with the socket when a write to the closed
 * connection fails (beyond READ_AHEAD_BYTES, that failed write is all that ends the connection until room comes: a
 * WebSocket's writes are made to fail once it has closed, `failsWhenClosed` in platform.ts). When the connection ends first, nothing of it is handed on (the session
 * never saw these packets: the publishes among them are neither delivered nor acknowledged, and the broker sends the
 * QoS 1/2 ones again on a resumed session) but for a DISCONNECT among it, which says why.
 *
 * A socket that can be read without a fiber (`ReadNow`) is read in its own events. Any other (WebSocket, a custom
 * transport, the in-memory broker's) is read by pulls, each in a fiber of its own that hands its result over in a
 * `Deferred`: the read-ahead that room interrupts leaves its pull under way, and the reader's next read is that pull
 * (`handOver`), so the reader never pulls beside it. An interrupted pull could lose a read, and two pulls under way
 * at once would take turns at the reads (a WebSocket's second pull replaces the first). Nothing of this is on the
 * reader's path when it does not wait for room.
 */
class ReadAhead {
  /** the socket's `pull`, once the reader has one: after `readNow` ended, it tells how the connection ended */
  pull: Pull | undefined = undefined
  private chunks: Array<Uint8Array> = []
  private bytes = 0
  /** how the broker ended the connection, as `finish` found it, once it ran (null: nothing said why) */
  private found: MqttError.MqttError | null | undefined = undefined
  /** when the read-ahead last read something (epoch milliseconds) */
  private lastRead = 0
  /** whether the read-ahead reads the socket now */
  private reading = false
  /** a pull the read-ahead started (on a socket read by a fiber) whose result nothing took yet */
  private pending: Deferred.Deferred<Arr.NonEmptyReadonlyArray<Uint8Array | string>, Socket.SocketError> | undefined =
    undefined
  /** handles what was read ahead once the connection ended (see `finish`) */
  private readonly handleEnded: (chunks: ReadonlyArray<Uint8Array>) => MqttError.MqttError | undefined
  private readonly now: () => number
  /** the connection's: a pull the read-ahead started runs in it */
  private readonly scope: Scope.Scope

  constructor(
    handleEnded: (chunks: ReadonlyArray<Uint8Array>) => MqttError.MqttError | undefined,
    now: () => number,
    scope: Scope.Scope
  ) {
    this.handleEnded = handleEnded
    this.now = now
    this.scope = scope
  }

  /**
   * Whether the broker sent anything since `since`: true when the read-ahead read something since; false when it
   * read nothing and reads on with room left (whatever the broker sent has been read: a PINGRESP would be here);
   * undefined when it cannot tell (it does not read now, or it is full and TCP holds the broker back).
   */
  heardSince(since: number): boolean | undefined {
    if (this.lastRead >= since) return true
    return this.reading && this.bytes < READ_AHEAD_BYTES ? false : undefined
  }

  /**
   * Reads on until READ_AHEAD_BYTES are kept (then waits for good): in the socket's own events where it has them
   * (`readNow`), else by pulls. Fails once the connection has ended, with the error of the broker's DISCONNECT in
   * what was read, or else how it ended. Undefined before the reader has the socket's `pull`.
   */
  read(readNow: ReadNow | undefined): Effect.Effect<never, MqttError.MqttError> | undefined {
    const pull = this.pull
    if (pull === undefined) return undefined
    if (readNow === undefined) {
      return Effect.suspend(() => {
        this.reading = true
        return Effect.ensuring(this.pulling(pull), Effect.sync(() => this.reading = false))
      })
    }
    return Effect.callback<never, MqttError.MqttError>((resume) => {
      const reading = readNow((chunks) => {
        this.keep(chunks)
        this.lastRead = this.now()
        return this.bytes < READ_AHEAD_BYTES
      }, () => {
        this.reading = false
        resume(this.ended(pull))
      })
      if (reading === undefined) return resume(this.ended(pull))
      this.reading = true
      reading.start()
      return Effect.sync(() => {
        this.reading = false
        reading.stop()
      })
    })
  }

  /**
   * Room came: `handle`s what was read ahead (not once the connection ended), then the read of the pull the read-ahead
   * left under way, if it did, when it comes: the reader pulls again only then. `handle` may wait for room again
   * (whose read-ahead goes on with that pull).
   */
  handOver(handle: Handle): Effect.Effect<void, MqttError.MqttError> {
    const chunks = this.take()
    const handled = chunks && handle(chunks)
    return handled === undefined
      ? this.pendingRead(handle)
      : Effect.andThen(handled, Effect.suspend(() => this.pendingRead(handle)))
  }

  /** What was read ahead, for the reader now that room came; undefined when nothing was, or the connection ended. */
  private take(): Arr.NonEmptyReadonlyArray<Uint8Array> | undefined {
    if (this.chunks.length === 0 || this.found !== undefined) return undefined
    const chunks = this.chunks as unknown as Arr.NonEmptyReadonlyArray<Uint8Array>
    this.chunks = []
    this.bytes = 0
    return chunks
  }

  /** `handle`s the read of the pull the read-ahead left under way (or done, not taken yet), if it did. */
  private pendingRead(handle: Handle): Effect.Effect<void, MqttError.MqttError> {
    const pending = this.pending
    if (pending === undefined) return Effect.void
    return this.taken(pending, (chunks) => handle(chunks) ?? Effect.void, socketLost)
  }

  /**
   * Waits for the pull of `pending` and takes its read: it is no longer pending in the very step that `onRead` runs
   * on it, so that no interruption falls between. A failed pull is the connection's end (`lostAs`); an interrupted
   * one (the connection's scope closes) or a defect is passed on.
   */
  private taken<A>(
    pending: Deferred.Deferred<Arr.NonEmptyReadonlyArray<Uint8Array | string>, Socket.SocketError>,
    onRead: (chunks: Arr.NonEmptyReadonlyArray<Uint8Array | string>) => Effect.Effect<A, MqttError.MqttError>,
    lostAs: (error: Socket.SocketError) => MqttError.MqttError
  ): Effect.Effect<A, MqttError.MqttError> {
    return Effect.flatMap(Effect.exit(Deferred.await(pending)), (exit) => {
      if (this.pending === pending) this.pending = undefined
      if (Exit.isSuccess(exit)) return onRead(exit.value)
      const error = Cause.findError(exit.cause)
      return Result.isSuccess(error) ? Effect.fail(lostAs(error.success)) : Effect.failCause(error.failure)
    })
  }

  /**
   * The connection has ended (the socket's close, a failed write, the keepalive): what was read ahead is handled
   * now, as the reader would have handled it (see `handleEnded` in `makeReader`), and how the broker ended the
   * connection, when the bytes say (its DISCONNECT, a protocol violation), is returned. Once: later calls give the
   * same answer.
   */
  finish(): MqttError.MqttError | undefined {
    if (this.found !== undefined) return this.found ?? undefined
    this.found = null
    const chunks = this.chunks
    this.chunks = []
    this.bytes = 0
    this.found = this.handleEnded(chunks) ?? null
    return this.found ?? undefined
  }

  private keep(chunks: Arr.NonEmptyReadonlyArray<Uint8Array | string>): void {
    for (const chunk of chunks) {
      const bytes = toBytes(chunk)
      this.chunks.push(bytes)
      this.bytes += bytes.length
    }
  }

  /** The connection ended: the socket's `pull` tells how (it hands on what was still buffered first). */
  private ended(pull: Pull): Effect.Effect<never, MqttError.MqttError> {
    return Effect.matchEffect(Effect.mapError(pull, socketLost), {
      onFailure: (error) => Effect.fail(this.finish() ?? error),
      onSuccess: (chunks) => {
        this.keep(chunks)
        return this.ended(pull)
      }
    })
  }

  /**
   * Reads on by pulls, each in a fiber of its own (the one left under way, or a new one), until READ_AHEAD_BYTES are
   * kept. A pull is started in the step that sets `pending`, and what it read is kept in the step that clears it: an
   * interruption never falls between.
   */
  private pulling(pull: Pull): Effect.Effect<never, MqttError.MqttError> {
    return Effect.suspend(() => {
      if (this.bytes >= READ_AHEAD_BYTES) return Effect.never
      return Effect.flatMap(this.started(pull), (pending) =>
        this.taken(
          pending,
          (chunks) => {
            this.keep(chunks)
            this.lastRead = this.now()
            return this.pulling(pull)
          },
          (error) => this.finish() ?? socketLost(error)
        ))
    })
  }

  /** The pull under way (or done, its result not taken), else a new one in a fiber of the connection's. */
  private started(
    pull: Pull
  ): Effect.Effect<Deferred.Deferred<Arr.NonEmptyReadonlyArray<Uint8Array | string>, Socket.SocketError>> {
    return Effect.uninterruptible(Effect.suspend(() => {
      if (this.pending !== undefined) return Effect.succeed(this.pending)
      const pending = Deferred.makeUnsafe<Arr.NonEmptyReadonlyArray<Uint8Array | string>, Socket.SocketError>()
      this.pending = pending
      return Effect.as(Effect.forkIn(Deferred.into(pull, pending), this.scope), pending)
    }))
  }
}

/**
 * Ends a connection. The writer writes what is still queued and, when `disconnectReason` is given, a DISCONNECT
 * behind it; with `graceful` (the client closes), the connection then waits for the broker to close its end, which
 * it does once it has read everything before the DISCONNECT [MQTT-3.14.4-1]: a client that connects again with the
 * same identifier at once cannot overtake the last acknowledgements (a broker that takes the session over drops
 * what the old connection still had unread). All of it within 2 seconds; then the socket and the connection's
 * fibers are closed. Meanwhile the reader throws away what it reads: nothing can be acknowledged after the
 * DISCONNECT, so a message handed on then would come again. And it reads on even when it was waiting for room in a
 * full queue: closing the socket with bytes left unread makes the kernel reset the connection (RST), which throws
 * away what the broker had not read yet (the last acknowledgements, the DISCONNECT: the will would be published).
 */
export const close = (
  env: Environment,
  c: Connection,
  error: MqttError.MqttError,
  disconnectReason?: number,
  sessionExpiry?: number,
  graceful = false
): Effect.Effect<void> =>
  Effect.suspend(() => {
    if (env.driver.outbox === c.outbox) env.driver.outbox = undefined
    const version = env.options.protocolVersion
    const last = disconnectReason === undefined ? undefined : Codec.disconnect(version, disconnectReason, sessionExpiry)
    c.outbox.close(error, last)
    Deferred.doneUnsafe(c.lost, Effect.fail(error))
    const awaitBroker = graceful && last !== undefined
    if (awaitBroker) Deferred.doneUnsafe(c.discarding, Exit.void)
    const brokerClosed = awaitBroker
      ? Effect.andThen(c.outbox.flushed, Deferred.await(c.readerEnded))
      : c.outbox.flushed
    const goodbye = brokerClosed.pipe(Effect.timeoutOption(SHUTDOWN_WRITE_TIMEOUT), Effect.ignore)
    return Effect.andThen(goodbye, Scope.close(c.scope, Exit.void))
  })

const firstByteOf = (chunks: Arr.NonEmptyReadonlyArray<Uint8Array | string>): number | undefined => {
  for (const chunk of chunks) {
    if (chunk.length > 0) return typeof chunk === "string" ? chunk.charCodeAt(0) : chunk[0]
  }
  return undefined
}

const toBytes = (chunk: Uint8Array | string): Uint8Array => typeof chunk === "string" ? Bytes.utf8(chunk) : chunk
