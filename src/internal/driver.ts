/**
 * Runs what the session produces: the one place where the session's Output meets I/O. Every call into the
 * session is followed by `drain`, which writes the packets to the current connection, hands the messages to
 * their owners, fails the streams of owners whose subscriptions ended and completes the operations that ended, in
 * that order.
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import type { MqttMessage } from "../MqttMessage.ts"
import type { Deliveries } from "./delivery.ts"
import type { Outbox } from "./outbox.ts"
import type { InboundRecord } from "./output.ts"
import { Output } from "./output.ts"
import { Line, type Queued } from "./packetIds.ts"
import type { Session } from "./session.ts"
import type { JournalWriter } from "./store.ts"
import type { ClientMetrics } from "./telemetry.ts"

/** A publish waiting for room in the session's line (see `Driver.awaitLineRoom`). */
interface LineWaiter extends Queued {
  readonly wake: () => void
}

export class Driver {
  readonly out = new Output()
  /** the outbox of the connection that carries the session; undefined between connections */
  outbox: Outbox | undefined = undefined
  /** the journal of a durable session (the `store` option) */
  journal: JournalWriter | undefined = undefined
  /** what a PINGRESP wakes */
  onPong: (() => void) | undefined = undefined
  /** the publishes waiting for room in the session's waiting line, first come first woken (see `awaitLineRoom`) */
  private readonly lineWaiters = new Line<LineWaiter>()
  /** the socket's reader waits for room in a full queue: nothing is read meanwhile */
  readerStalled = false
  private stallSignal: Deferred.Deferred<void> | undefined = undefined
  /** told when a SUBSCRIBE or UNSUBSCRIBE waits for its acknowledgement (see `requestAwaitsAck`) */
  private requestWritten: Deferred.Deferred<void> | undefined = undefined
  /**
   * The fibers waiting for the end of an operation of the client (a publish's acknowledgement, a SUBACK...), each
   * with how many it waits for: while the reader waits for room in a full queue, a consumer among them waits for
   * good (see `stallOn` in connection.ts).
   */
  readonly ackWaiters = new Map<Fiber.Fiber<unknown, unknown>, number>()
  /** told when a fiber starts waiting for an operation (see `waiterAdded`) */
  private waiterSignal: Deferred.Deferred<void> | undefined = undefined
  /** waiters woken whose publish has not been tried again yet: room already promised to them */
  private lineWoken = 0
  private wakingLine = false
  readonly session: Session
  readonly deliveries: Deliveries
  readonly metrics: ClientMetrics
  private readonly warn: (message: string) => void

  constructor(session: Session, deliveries: Deliveries, metrics: ClientMetrics, warn: (message: string) => void) {
    this.session = session
    this.deliveries = deliveries
    this.metrics = metrics
    this.warn = warn
  }

  /**
   * Writes, delivers and completes what the last call into the session produced. Returns an effect when some
   * messages must wait for room in a full queue (only the reader receives messages, and it waits on that).
   * `out.error` and `out.auth` are left for the reader.
   */
  drain(): Effect.Effect<void> | undefined {
    const out = this.out
    const outbox = this.outbox
    const journal = this.journal
    if (journal !== undefined && (out.journal!.length > 0 || journal.holding)) {
      // a durable session: the packets wait until the step's journal entries (and every earlier step's) are stored
      const packets = out.send.slice()
      out.send.length = 0
      if (!out.acks.isEmpty) packets.push(out.acks.take())
      const entries = out.journal!.splice(0)
      if (entries.length > 0 || packets.length > 0) journal.append(entries, packets, outbox)
    } else if (out.send.length > 0) {
      // everything is taken out of the Output before anything is handed on: waking the writer may run it at once,
      // and a transport that answers synchronously (an in-memory broker) may then run the reader, which drains again
      const send = out.send.length === 1 ? [out.send[0]] : out.send.slice()
      out.send.length = 0
      if (!out.acks.isEmpty) send.push(out.acks.take())
      outbox?.pushAll(send)
    } else if (!out.acks.isEmpty) {
      const acks = out.acks.take()
      outbox?.push(acks)
    }
    // counted before the step's messages are handed over, which may run their consumers at once
    if (out.dropped > 0) {
      this.deliveries.droppedUnread(out.dropped)
      out.dropped = 0
    }
    let wait: Effect.Effect<void> | undefined
    // taken out first: handing a message over may acknowledge it, which drains again (re-entrantly)
    if (out.deliver.length > 0) wait = this.deliveries.deliver(out.deliver.splice(0))
    if (out.failed.length > 0) {
      for (const { error, owner } of out.failed.splice(0)) this.deliveries.fail(owner, error)
    }
    if (out.settle.length > 0) {
      const ended = out.settle.splice(0)
      for (let i = 0; i < ended.length; i++) ended[i].listener?.()
    }
    if (out.pong) {
      out.pong = false
      this.onPong?.()
    }
    if (out.warnings.length > 0) {
      for (const warning of out.warnings.splice(0)) this.warn(warning)
    }
    if (this.lineWaiters.size > 0) this.wakeLineWaiters()
    if (this.requestWritten !== undefined && this.session.subscriptions.awaitingAck > 0) {
      Deferred.doneUnsafe(this.requestWritten, Exit.void)
      this.requestWritten = undefined
    }
    return wait
  }

  /**
   * Waits until the session's waiting line has room for this publish (or the session closed): for a publish the
   * session answered with `LINE_FULL`, which then tries again at once. Waiters are woken in order, as many as
   * there is room (each wake-up promises a place until its publish is tried again), so that n waiting publishes
   * cost O(n), not a retry of each at every acknowledgement.
   */
  get awaitLineRoom(): Effect.Effect<void> {
    let woken = false
    const waiting = Effect.callback<void>((resume) => {
      const waiter: LineWaiter = {
        queued: false,
        wake: () => {
          woken = true
          this.lineWoken++
          resume(Effect.void)
        }
      }
      this.lineWaiters.push(waiter)
      this.wakeLineWaiters()
      // an interrupted waiter leaves the line
      return Effect.sync(() => this.lineWaiters.remove(waiter))
    })
    // the promised place is given back as the publish is tried again (or when the waiter is interrupted)
    return Effect.ensuring(waiting, Effect.sync(() => woken && this.lineWoken--))
  }

  /**
   * The room in the line for waiting publishes: none is kept waiting while the socket's reader waits for room in a
   * full queue (`readerStalled`), since only the reader can read the acknowledgements that make room: a handler
   * that publishes from a full queue would wait for good.
   */
  private get lineRoom(): number {
    return this.readerStalled ? Infinity : this.session.lineRoom - this.lineWoken
  }

  /** The reader waits for room in a queue (true), or reads again (false): see `lineRoom`. */
  /**
   * Completes when a SUBSCRIBE or UNSUBSCRIBE waits for its acknowledgement (at once when one does): the reader's
   * wait for room in a full queue that nothing has consumed yet ends then (see `stallOn` in connection.ts). Only the
   * reader can read the SUBACK, and the application may take nothing before it has it (a `subscription()` stream
   * is handed out once it is made; a program subscribes before it consumes): waiting for room would wait for good.
   */
  get requestAwaitsAck(): Effect.Effect<void> {
    if (this.session.subscriptions.awaitingAck > 0) return Effect.void
    this.requestWritten ??= Deferred.makeUnsafe<void>()
    return Deferred.await(this.requestWritten)
  }

  /** A fiber waits for the end of an operation (see `ackWaiters`); `removeAckWaiter` when it stops waiting. */
  addAckWaiter(fiber: Fiber.Fiber<unknown, unknown>): void {
    this.ackWaiters.set(fiber, (this.ackWaiters.get(fiber) ?? 0) + 1)
    if (this.waiterSignal !== undefined) {
      Deferred.doneUnsafe(this.waiterSignal, Exit.void)
      this.waiterSignal = undefined
    }
  }

  removeAckWaiter(fiber: Fiber.Fiber<unknown, unknown>): void {
    const count = this.ackWaiters.get(fiber)
    if (count === undefined) return
    if (count <= 1) this.ackWaiters.delete(fiber)
    else this.ackWaiters.set(fiber, count - 1)
  }

  /** Completes when a fiber next starts waiting for the end of an operation. */
  get waiterAdded(): Effect.Effect<void> {
    this.waiterSignal ??= Deferred.makeUnsafe<void>()
    return Deferred.await(this.waiterSignal)
  }

  stalled(stalled: boolean): void {
    this.readerStalled = stalled
    if (stalled && this.stallSignal !== undefined) {
      Deferred.doneUnsafe(this.stallSignal, Exit.void)
      this.stallSignal = undefined
    }
    if (stalled && this.lineWaiters.size > 0) this.wakeLineWaiters()
  }

  /**
   * Completes once the reader waits for room in a full queue (at once when it does now): no acknowledgement the
   * broker sends can be read meanwhile.
   */
  get readerStalls(): Effect.Effect<void> {
    if (this.readerStalled) return Effect.void
    this.stallSignal ??= Deferred.makeUnsafe<void>()
    return Deferred.await(this.stallSignal)
  }

  private wakeLineWaiters(): void {
    // a woken publish is tried again at once, inside `wake` (a fiber resumes synchronously), and drains: the loop
    // that woke it goes on instead of a nested one (no recursion as deep as the room), reading the room again
    if (this.wakingLine) return
    this.wakingLine = true
    try {
      while (this.lineWaiters.size > 0 && this.lineRoom > 0) this.lineWaiters.shift()!.wake()
    } finally {
      this.wakingLine = false
    }
  }

  /**
   * A copy of a received message was taken (or acknowledged): its acknowledgement may go. With a durable
   * session, returns the wait until what this step released (the PUBREC and its stored identifier) is stored.
   */
  readonly settled = (record: InboundRecord): Effect.Effect<void> | undefined => {
    const journal = this.journal
    const before = journal?.appendedCount ?? 0
    this.session.settled(record, this.out)
    this.drain()
    if (journal === undefined || journal.appendedCount === before) return undefined
    // a QoS 2 identifier journaled as delivered (or its PUBREC): the next QoS 2 take waits for it (`beforeTake`)
    if (record.qos === 2) journal.markDelivered()
    return Effect.asVoid(journal.stored)
  }

  /**
   * With a durable session, what a consumer that acknowledges on hand-over waits for before it takes `message`
   * (see `Deliveries.storeBeforeTake`): a QoS 2 message waits until every QoS 2 identifier journaled as delivered
   * is stored, so that at most the message just taken is not, when the process is killed.
   */
  readonly beforeTake = (message: MqttMessage): Effect.Effect<void> | undefined =>
    message.qos === 2 ? this.journal?.deliveredUnstored : undefined

  /** Whether a received message's flow may be the broker's no more (see `Inbound.isStale`). */
  readonly isStale = (record: InboundRecord): boolean => this.session.isStale(record)

  /** Whether a received message waits for the next connection to tell whether it is stale. */
  readonly awaitsConnection = (record: InboundRecord): boolean => this.session.awaitsConnection(record)

  /** Lets go of a stale received message unacknowledged (see `Inbound.abandon`). */
  readonly abandon = (record: InboundRecord): void => {
    this.session.abandon(record, this.out)
    this.drain()
  }
}
