import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import type * as MqttError from "../MqttError.ts"
import type { WriteNow } from "./platform.ts"

/**
 * The packets waiting to be written, drained by one writer fiber in batches (one `writeAll`, so one socket
 * write and at most one wait for `drain`, per batch instead of per packet).
 *
 * Callers that push past the high-water mark wait for room, all on one shared signal: thousands of waiting
 * publishers cost one listener, not one each.
 *
 * Closing does not take the packets away from the writer: they stay queued, the last packet (a DISCONNECT) goes
 * behind them, and `flushed` says when the writer has written them all. The writer is the only one that writes,
 * so nothing it was handed is lost or overtaken when the connection closes.
 *
 * An idle writer is woken in a microtask, not at once: what the same synchronous run pushes (the publishes of
 * fibers run in one scheduler turn, the acknowledgements of one socket read) goes out in one write instead of a
 * write (a system call) each, the first of them waiting only for the run to end.
 *
 * A socket that can be written without a fiber (`writeDirectly`, Node's TCP, TLS and Unix sockets) is written in
 * that microtask itself: no writer fiber is resumed, and a full socket buffer holds the next batch back until the
 * socket drains.
 */
export class Outbox {
  private queue: Array<Uint8Array> = []
  private queued = 0
  private writing = 0
  private writer: ((effect: Effect.Effect<ReadonlyArray<Uint8Array>>) => void) | undefined = undefined
  /** a wake-up of the writer is scheduled (a microtask) */
  private waking = false
  private room: Deferred.Deferred<void, MqttError.MqttError> | undefined = undefined
  private closed: MqttError.MqttError | undefined = undefined
  /** whether a writer fiber takes from this outbox: `attach` before it is forked, `detach` when it ends */
  private attached = false
  private flush: Deferred.Deferred<void> | undefined = undefined
  /** the write without a fiber, when the socket has one */
  private direct: WriteNow | undefined = undefined
  /** a direct write filled the socket's buffer: nothing more is written until it drains (this cancels the wait) */
  private draining: (() => void) | undefined = undefined
  /** tells the connection that its socket cannot be written */
  private failed: (cause: unknown) => void = () => {}
  private readonly highWaterMark: number

  constructor(highWaterMark: number) {
    this.highWaterMark = highWaterMark
  }

  /** Whether the connection it belongs to is closed. */
  get isClosed(): boolean {
    return this.closed !== undefined
  }

  /** Queues bytes without waiting (acknowledgements, PINGREQ). Nothing is queued once closed. */
  push(bytes: Uint8Array): void {
    if (this.closed !== undefined) return
    this.queue.push(bytes)
    this.queued += bytes.byteLength
    this.wakeWriter()
  }

  /** Queues packets in order, then wakes the writer once. */
  pushAll(packets: ReadonlyArray<Uint8Array>): void {
    if (this.closed !== undefined) return
    for (let i = 0; i < packets.length; i++) {
      this.queue.push(packets[i])
      this.queued += packets[i].byteLength
    }
    this.wakeWriter()
  }

  /** Wakes a waiting writer, or writes directly, in a microtask (once for all the pushes until then). */
  private wakeWriter(): void {
    if ((this.writer === undefined && this.direct === undefined) || this.waking) return
    this.waking = true
    queueMicrotask(this.wake)
  }

  private readonly wake = (): void => {
    this.waking = false
    if (this.direct !== undefined) return this.writeNow(this.direct)
    const writer = this.writer
    // the writer may have been interrupted meanwhile; it takes what is queued when it asks again
    if (writer === undefined || this.queue.length === 0) return
    this.writer = undefined
    writer(Effect.succeed(this.takeAll()))
  }

  private writeNow(direct: WriteNow): void {
    if (this.draining !== undefined || !this.attached || this.queue.length === 0) return
    const draining = direct(this.takeAll(), this.drained, this.failed)
    if (draining === undefined) this.written()
    else this.draining = draining
  }

  private readonly drained = (): void => {
    this.draining = undefined
    try {
      this.written()
      if (this.queue.length > 0) this.wakeWriter()
    } catch (cause) {
      // called from the socket's event: a bug here ends the connection rather than the process
      this.failed(cause)
    }
  }

  /**
   * Writes with `direct` from now on, in the microtask that would wake a writer fiber, instead of a writer fiber
   * (none is forked); `failed` is told when the socket cannot be written. Call `attach` first and `detach` when the
   * connection closes.
   */
  writeDirectly(direct: WriteNow, failed: (cause: unknown) => void): void {
    this.direct = direct
    this.failed = failed
    this.wakeWriter()
  }

  /** Queues bytes, then waits while more than the high-water mark is waiting to be written. */
  write(bytes: Uint8Array): Effect.Effect<void, MqttError.MqttError> {
    if (this.closed !== undefined) return Effect.fail(this.closed)
    this.push(bytes)
    if (this.queued + this.writing <= this.highWaterMark) return Effect.void
    this.room ??= Deferred.makeUnsafe<void, MqttError.MqttError>()
    return Deferred.await(this.room)
  }

  /** Waits while more than the high-water mark waits to be written; undefined when there is room. */
  get backPressure(): Effect.Effect<void, MqttError.MqttError> | undefined {
    if (this.closed !== undefined || this.queued + this.writing <= this.highWaterMark) return undefined
    this.room ??= Deferred.makeUnsafe<void, MqttError.MqttError>()
    return Deferred.await(this.room)
  }

  /** The next batch: everything queued, waiting until something is. For the writer fiber only. */
  readonly take: Effect.Effect<ReadonlyArray<Uint8Array>> = Effect.callback((resume) => {
    if (this.queue.length > 0) return resume(Effect.succeed(this.takeAll()))
    this.writer = resume
    return Effect.sync(() => {
      if (this.writer === resume) this.writer = undefined
    })
  })

  /** The writer finished writing its batch. */
  written(): void {
    this.writing = 0
    if (this.room !== undefined && this.queued <= this.highWaterMark) {
      const room = this.room
      this.room = undefined
      Deferred.doneUnsafe(room, Effect.void)
    }
    if (this.queue.length === 0) this.flushDone()
  }

  /** A writer fiber is about to be forked for this outbox. */
  attach(): void {
    this.attached = true
  }

  /**
   * The writer fiber ended, or the connection of a direct writer closed (the socket failed, or the connection
   * closed): nothing more will be written.
   */
  detach(): void {
    this.attached = false
    const draining = this.draining
    this.draining = undefined
    draining?.()
    this.flushDone()
  }

  /**
   * Closes the outbox: callers waiting for room fail with `error`, later pushes are dropped, and `last` (when
   * given) is queued behind what is still waiting, for the writer to write.
   */
  close(error: MqttError.MqttError, last?: Uint8Array): void {
    if (last !== undefined) this.push(last)
    this.closed = error
    if (this.room !== undefined) Deferred.doneUnsafe(this.room, Effect.fail(error))
    this.room = undefined
  }

  /** Waits until the writer has written everything queued, or is gone. */
  get flushed(): Effect.Effect<void> {
    if (!this.attached || (this.queue.length === 0 && this.writing === 0)) return Effect.void
    this.flush ??= Deferred.makeUnsafe<void>()
    return Deferred.await(this.flush)
  }

  private flushDone(): void {
    const flush = this.flush
    if (flush === undefined) return
    this.flush = undefined
    Deferred.doneUnsafe(flush, Effect.void)
  }

  private takeAll(): ReadonlyArray<Uint8Array> {
    const batch = this.queue
    this.queue = []
    this.writing += this.queued
    this.queued = 0
    return batch
  }
}
