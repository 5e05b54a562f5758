/**
 * Hands received messages to their owners and reports back when each copy leaves its queue, so that the
 * session can acknowledge it (acknowledgement on hand-over, or by the application with manual acknowledgement).
 *
 * Owners: `messages` (owner 0), each `subscription()` stream (a queue of its own) and the response handler of
 * `request` (a function that takes a message at once). A message that goes to several owners is copied, so
 * that each copy carries its own acknowledgement.
 */
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import type * as IncomingQueue from "../IncomingQueue.ts"
import type * as MqttError from "../MqttError.ts"
import { MqttMessage, ReceiptKey } from "../MqttMessage.ts"
import { describe } from "./describe.ts"
import type { Delivery, InboundRecord } from "./output.ts"
import { fromStrategy, type MessageQueue, type Progress } from "./queue.ts"
import { MESSAGES } from "./subscriptions.ts"
import type { ClientMetrics } from "./telemetry.ts"
import * as Topic from "./topic.ts"

type Queue = MessageQueue<MqttMessage, MqttError.MqttError>

interface Owner {
  readonly queue: Queue | undefined
  readonly handle: ((message: MqttMessage) => void) | undefined
  /** acknowledged by the application (`message.ack`) rather than when taken */
  readonly manual: boolean
}

/** Where a copy's acknowledgement goes; returns what to wait for until it is stored (durable sessions). */
type Sink = (record: InboundRecord) => Effect.Effect<void> | undefined

/** The session's word on a received message's flow (see `Inbound.isStale`, `Inbound.abandon`). */
export interface Flows {
  readonly isStale: (record: InboundRecord) => boolean
  readonly awaitsConnection: (record: InboundRecord) => boolean
  readonly abandon: (record: InboundRecord) => void
}

/**
 * One copy's acknowledgement: reported once, when taken, acknowledged, or dropped. It also keeps its record's count
 * of copies still in a queue (`InboundRecord.queued`): a resent message whose every copy the application was
 * handed, under manual acknowledgement, is delivered again (see `Inbound.admit`).
 */
class Receipt {
  private done = false
  /** counted in its record's `queued` (the session counts every copy when it makes the record) */
  private inQueue = true
  private readonly record: InboundRecord
  private readonly sink: Sink
  private readonly flows: Flows
  constructor(record: InboundRecord, sink: Sink, flows: Flows) {
    this.record = record
    this.sink = sink
    this.flows = flows
  }
  /** The copy left its queue: handed to the application, or given up. */
  handed(): void {
    if (!this.inQueue) return
    this.inQueue = false
    this.record.queued--
  }
  acknowledge(): Effect.Effect<void> | undefined {
    if (this.done) return undefined
    this.done = true
    this.handed()
    return this.sink(this.record)
  }
  /**
   * Lets go of the copy's message unacknowledged when its flow may be the broker's no more (its connection ended,
   * and the broker has not resent it on the current one): a broker that still holds it sends it again. Returns
   * whether it did; a message that is not stale is left as it is.
   */
  /** Whether the copy's message waits for the next connection to tell whether it is stale (see `abandonIfStale`). */
  awaitsConnection(): boolean {
    return !this.done && this.flows.awaitsConnection(this.record)
  }
  abandonIfStale(): boolean {
    if (this.done || !this.flows.isStale(this.record)) return false
    this.done = true
    this.handed()
    this.flows.abandon(this.record)
    return true
  }
}

const receiptOf = (message: MqttMessage): Receipt | undefined => message[ReceiptKey] as Receipt | undefined

const acknowledge = (message: MqttMessage): void => {
  message[ReceiptKey]?.acknowledge()
}

/**
 * How long (ms) messages given up unread (a released subscription stream's, when nothing reads `messages`) wait
 * for their acknowledgement when nothing else happens: a client that closes meanwhile leaves them unacknowledged.
 */
export const GIVEN_UP_GRACE_MS = 1000

/**
 * How long (ms) after the first acknowledgement that unclaimed messages on `messages` hold back they are given up
 * at the latest (see `Deliveries.watchUnread`).
 */
export const UNREAD_GRACE_MS = 10_000

/** A copy handed to an application that acknowledges it itself (manual acknowledgement). */
const handed = (message: MqttMessage): void => {
  receiptOf(message)?.handed()
}

export class Deliveries {
  private readonly owners = new Map<number, Owner>()
  private nextOwner = 1
  /** the queue behind `messages` */
  readonly messages: Queue
  private readonly strategy: IncomingQueue.Strategy
  /** where a copy's acknowledgement goes: the session, through the driver */
  private readonly sink: Sink
  private readonly flows: Flows
  /** messages dropped by the queues of owners that are gone */
  private droppedByGone = 0
  /**
   * Messages given up unread, not acknowledged yet: at the next acknowledgement of another message (which they
   * would hold back), or after GIVEN_UP_GRACE_MS, whichever comes first; never when the client closes before (a
   * persistent session then has them sent again, to the next process). Not at an arrival: a program that stops
   * may still receive, while it waits for its UNSUBACK.
   */
  private givenUp: Array<MqttMessage> = []
  /**
   * owners that claimed a backlog from `messages` and whose subscription is not made yet, with their filters: a
   * failed subscription hands the claim back there; a made one claims once more (see `confirm`)
   */
  private readonly unconfirmed = new Map<
    number,
    { readonly filters: ReadonlyArray<string>; readonly claimed: ReadonlySet<MqttMessage> }
  >()
  private givenUpTimer: ReturnType<typeof setTimeout> | undefined = undefined

  /** the application subscribed through `subscribe` (the filters of `messages`) */
  private messagesSubscribed = false
  private warnedGoneCopies = false

  private readonly metrics: ClientMetrics
  private readonly warn: (warning: string) => void
  private readonly counts = [0, 0, 0]
  private readonly bytes = [0, 0, 0]

  constructor(
    strategy: IncomingQueue.Strategy,
    manual: boolean,
    sink: Sink,
    flows: Flows,
    metrics: ClientMetrics,
    warn: (warning: string) => void,
    /** acknowledgements held back by unclaimed messages on `messages` before they are given up (`watchUnread`) */
    unreadLimit = 10
  ) {
    this.unreadLimit = unreadLimit
    this.strategy = strategy
    // an acknowledgement lets those given up unread go first (they hold back every later one [MQTT-4.6.0-2])
    this.sink = (record) => {
      if (this.givenUp.length > 0) this.releaseGivenUp()
      if (this.messages.size > 0 && !this.takesLeftovers) this.watchUnread()
      return sink(record)
    }
    this.flows = flows
    this.metrics = metrics
    this.warn = warn
    this.messages = this.makeQueue(manual)
    this.owners.set(MESSAGES, { queue: this.messages, handle: undefined, manual })
  }

  /** what a consumer that acknowledges on hand-over waits for before a take (see `storeBeforeTake`) */
  private gate: ((next: MqttMessage) => Effect.Effect<void> | undefined) | undefined = undefined

  /**
   * A durable session: a consumer that acknowledges on hand-over (the `messages` stream, `subscription()` streams,
   * `runForEachByKey`) takes a QoS 2 message only once `gate` lets it, when every QoS 2 message taken before is
   * stored as delivered (see `Driver.beforeTake`). Taken first and stored after, a message is delivered again to
   * the next process if this one is killed in between: the wait bounds those to the message each consumer took
   * last, rather than every message taken while the store's writes lag behind. With manual acknowledgement, a
   * message is stored as delivered once `message.ack` completes, which the application waits for: no gate.
   */
  storeBeforeTake(gate: (next: MqttMessage) => Effect.Effect<void> | undefined): void {
    this.gate = gate
    for (const owner of this.owners.values()) if (owner.queue !== undefined && !owner.manual) owner.queue.gate = gate
  }

  private makeQueue(manual: boolean): Queue {
    const queue = fromStrategy<MqttMessage, MqttError.MqttError>(this.strategy)
    queue.onTaken = manual ? handed : acknowledge
    if (!manual) queue.gate = this.gate
    queue.onOrderError = (cause) =>
      this.warn(
        `the priority queue's order threw (${describe(cause)}): the messages it compared keep their arrival order`
      )
    // a dropped message is given up by the application's choice of queue: it is acknowledged, and counted
    queue.onDropped = this.onDropped
    return queue
  }

  private readonly onDropped = (message: MqttMessage): void => {
    acknowledge(message)
    this.metrics.dropped()
  }

  /** A new owner with a queue of the client's kind; returns its number and the queue. */
  addQueue(manual: boolean): { readonly owner: number; readonly queue: Queue } {
    const owner = this.nextOwner++
    const queue = this.makeQueue(manual)
    this.owners.set(owner, { queue, handle: undefined, manual })
    return { owner, queue }
  }

  /** A new owner that takes each message at once. */
  addHandler(handle: (message: MqttMessage) => void): number {
    const owner = this.nextOwner++
    this.owners.set(owner, { queue: undefined, handle, manual: false })
    return owner
  }

  /**
   * Copies for subscription streams of messages whose PUBLISH `messages` also took (MQTT 3.1.1 hands one PUBLISH to
   * every owner that matches): a released stream's leftover among them is acknowledged, not handed to `messages`
   * twice. Any other goes to `messages`. Where the broker sends a PUBLISH per matching subscription (MQTT 5), each
   * copy is the delivery of its own subscription, and the client cannot tell which of them went to which (a filter
   * of `messages` acknowledged before the stream's copy came may still have come after the broker took the
   * message): the stream's copy goes to `messages`, beside the one of `messages`' own subscription, rather than be
   * acknowledged unread and lost.
   */
  private readonly onMessagesToo = new WeakSet<MqttMessage>()

  /** Of a released stream's leftovers, those `messages` has no copy of (see `onMessagesToo`); the rest acknowledged. */
  private notOnMessages(leftovers: ReadonlyArray<MqttMessage>): ReadonlyArray<MqttMessage> {
    return leftovers.filter((message) => {
      if (!this.onMessagesToo.has(message)) return true
      acknowledge(message)
      return false
    })
  }

  /**
   * A new subscription stream (`owner`) of `filters` takes the messages waiting on `messages` that match them, in
   * their order, when the application does not read `messages`: all `messages` holds then came with no owner,
   * such as a resumed session's backlog, sent (and resent) before the application subscribed again. Left there,
   * nobody would take them, and they would hold back every later acknowledgement.
   */
  claimBacklog(owner: number, filters: ReadonlyArray<string>): void {
    if (this.takesLeftovers || this.messages.size === 0) return
    const queue = this.owners.get(owner)?.queue
    if (queue === undefined) return
    this.claim(filters, (claimed) => {
      this.unconfirmed.set(owner, { filters, claimed: new Set(claimed) })
      if (claimed.length > 0) queue.offerMovedUnsafe(claimed)
    })
  }

  /**
   * The subscription of an owner that claimed a backlog was made: from now on, what it leaves is its own. It claims
   * once more: what the reader still held when the claim was made (waiting for room in a full `messages`) went
   * there after. Those come after what the first claim took and before what the subscription brought since: the
   * stream is handed out only now, so its queue holds just those two, in that order.
   */
  confirm(owner: number): void {
    const unconfirmed = this.unconfirmed.get(owner)
    if (unconfirmed === undefined) return
    this.unconfirmed.delete(owner)
    const queue = this.owners.get(owner)?.queue
    if (queue === undefined || this.takesLeftovers || this.messages.size === 0) return
    this.claim(unconfirmed.filters, (held) => {
      if (held.length === 0) return
      // what the first claim took (a sliding or dropping queue may have let some of it go since), then the held,
      // before a reader waiting for room in the stream's queue is woken
      const claimed = unconfirmed.claimed
      queue.sortUnsafe((waiting) =>
        queue.offerMovedUnsafe([
          ...waiting.filter((message) => claimed.has(message)),
          ...held,
          ...waiting.filter((message) => !claimed.has(message))
        ])
      )
    })
  }

  /**
   * Takes what waits on `messages` and matches `filters` and hands it to `take`, in arrival order, before a reader
   * waiting for room there is woken; the rest stays, in its order.
   */
  private claim(filters: ReadonlyArray<string>, take: (mine: Array<MqttMessage>) => void): void {
    this.messages.sortUnsafe((waiting) => {
      const mine: Array<MqttMessage> = []
      const rest: Array<MqttMessage> = []
      for (const message of waiting) {
        ;(filters.some((filter) => Topic.matches(message.topic, filter)) ? mine : rest).push(message)
      }
      if (rest.length > 0) this.messages.offerMovedUnsafe(rest)
      take(mine)
    })
  }

  /**
   * A subscription that failed before it was confirmed hands what it claimed back to `messages`, where it waited:
   * before what `messages` took since (the claimed messages came earlier, and per topic the order stays), then
   * what came for the subscription meanwhile.
   */
  private handBack(claimed: ReadonlySet<MqttMessage>, rest: ReadonlyArray<MqttMessage>): void {
    // before a reader waiting for room there is woken, which would put what it holds ahead of the claimed
    this.messages.sortUnsafe((waiting) =>
      this.messages.offerMovedUnsafe([
        ...rest.filter((message) => claimed.has(message)),
        ...waiting,
        ...rest.filter((message) => !claimed.has(message))
      ])
    )
  }

  /** The application subscribes through `subscribe`: `messages` is read (see `takesLeftovers`). */
  subscribed(): void {
    this.messagesSubscribed = true
  }

  /**
   * Whether `messages` takes what released subscription streams leave: only when the application reads it (it
   * subscribed through `subscribe`, or ran the stream). Left in a queue nobody reads, a QoS 1/2 message would
   * hold back every later acknowledgement [MQTT-4.6.0-2], and with them every later QoS 1/2 delivery.
   */
  private get takesLeftovers(): boolean {
    return this.messagesSubscribed || this.messages.consumed
  }

  /** Messages the session dropped before any queue (a PUBLISH over the client's Maximum Packet Size): counted. */
  droppedUnread(count: number): void {
    this.droppedByGone += count
    for (let i = 0; i < count; i++) this.metrics.dropped()
  }

  /**
   * A message a handler had no use for (`request`'s: a response that no request waits for any more): counted as
   * dropped; the first of each `kind` logged as a warning (later ones show in the count: `droppedMessages`).
   */
  discarded(kind: string, warning: string): void {
    this.droppedUnread(1)
    if (this.warnedDiscards.has(kind)) return
    this.warnedDiscards.add(kind)
    this.warn(warning)
  }
  private readonly warnedDiscards = new Set<string>()

  /**
   * A message nobody will take (the application let its subscription go): counted as dropped, and acknowledged
   * unread once something else happens (see `givenUp`), so that a client about to close leaves it to the session.
   */
  private giveUp(message: MqttMessage): void {
    this.droppedByGone++
    this.metrics.dropped()
    receiptOf(message)?.handed()
    this.givenUp.push(message)
    this.givenUpTimer ??= setTimeout(this.releaseGivenUp, GIVEN_UP_GRACE_MS)
    // a timer of its own must not keep the process alive
    this.givenUpTimer.unref?.()
  }

  /**
   * Messages waiting on `messages` while the application does not read it came with no owner: a resumed session's
   * backlog on a filter no subscription of this process takes (yet), late responses to an earlier process's
   * requests, what the broker still sent for a released stream. A later `subscription()` may claim them
   * (`claimBacklog`); until then they hold back every later acknowledgement [MQTT-4.6.0-2], and with them all QoS
   * 1/2 delivery once the broker's window is full. So the acknowledgements they hold back are counted: at
   * `unreadLimit` of them (half the broker's window: `receiveMaximum` / 2 on MQTT 5; 10 on MQTT 3.1.1, half of
   * Mosquitto's default `max_inflight_messages`), or `UNREAD_GRACE_MS` after the first (a broker with a smaller
   * window), those that waited since, still unclaimed, are given up: counted as dropped, logged, acknowledged unread.
   */
  private watchUnread(): void {
    if (this.givingUpUnread) return
    let watch = this.unreadWatch
    if (watch === undefined) {
      const waiting = new Set<MqttMessage>()
      this.messages.sortUnsafe((all) => {
        // QoS 1/2 ones: a QoS 0 message holds back nothing
        for (const message of all) if (receiptOf(message) !== undefined) waiting.add(message)
        this.messages.offerMovedUnsafe(all)
      })
      if (waiting.size === 0) return
      const timer = setTimeout(() => this.giveUpUnread(), UNREAD_GRACE_MS)
      // a timer of its own must not keep the process alive
      timer.unref?.()
      watch = this.unreadWatch = { waiting, acknowledged: 0, timer }
    }
    if (++watch.acknowledged >= this.unreadLimit) this.giveUpUnread()
  }

  /** Gives up what `watchUnread` saw waiting on `messages` and is still there. */
  private giveUpUnread(): void {
    const watch = this.unreadWatch
    if (watch === undefined) return
    this.unreadWatch = undefined
    clearTimeout(watch.timer)
    if (this.takesLeftovers || this.messages.isClosed) return
    const unread: Array<MqttMessage> = []
    this.messages.sortUnsafe((all) => {
      const kept: Array<MqttMessage> = []
      for (const message of all) (watch.waiting.has(message) ? unread : kept).push(message)
      if (kept.length > 0) this.messages.offerMovedUnsafe(kept)
    })
    if (unread.length === 0) return
    this.givingUpUnread = true
    try {
      for (const message of unread) {
        this.droppedByGone++
        this.metrics.dropped()
        acknowledge(message)
      }
    } finally {
      this.givingUpUnread = false
    }
    const topics = [...new Set(unread.map((message) => message.topic))]
    this.warn(
      `${unread.length} QoS 1/2 message(s) that no subscription of this process takes (on ${
        topics.slice(0, 3).join(", ")
      }${topics.length > 3 ? ", ..." : ""}) waited unread on \`messages\`, which nothing reads: given up and ` +
        "acknowledged, since they held back every later acknowledgement (a resumed session's backlog, or late " +
        "responses of an earlier process; subscribe through `subscribe`, or run `messages`, to take them)"
    )
  }
  private unreadWatch:
    | {
      readonly waiting: ReadonlySet<MqttMessage>
      acknowledged: number
      readonly timer: ReturnType<typeof setTimeout>
    }
    | undefined = undefined
  private givingUpUnread = false
  private readonly unreadLimit: number

  /** Acknowledges what was given up unread. */
  private readonly releaseGivenUp = (): void => {
    if (this.givenUpTimer !== undefined) clearTimeout(this.givenUpTimer)
    this.givenUpTimer = undefined
    if (this.givenUp.length === 0) return
    const givenUp = this.givenUp
    this.givenUp = []
    for (const message of givenUp) acknowledge(message)
  }

  /**
   * An owner goes away. What its queue still holds was never handed to anyone: it goes to `messages`, the next
   * consumer, rather than being lost; or, when the application does not read `messages`, it is given up
   * (counted as dropped, logged, and acknowledged unread unless the client closes first: see `givenUp`).
   */
  remove(owner: number): void {
    const removed = this.owners.get(owner)
    if (removed === undefined || owner === MESSAGES) return
    this.owners.delete(owner)
    const queue = removed.queue
    if (queue === undefined) return
    this.droppedByGone += queue.dropped
    this.takenByGone += queue.taken
    // ended first: a producer waiting for room that the drain wakes finds it closed (see `leftOver`), rather than
    // fill it again behind the drain
    queue.end()
    const rest = queue.drainUnsafe()
    const unconfirmed = this.unconfirmed.get(owner)
    this.unconfirmed.delete(owner)
    if (rest.length === 0) return
    if (unconfirmed !== undefined) return this.handBack(unconfirmed.claimed, rest)
    if (this.takesLeftovers) return this.messages.offerMovedUnsafe(this.notOnMessages(rest))
    for (const message of rest) this.giveUp(message)
    this.warn(
      `${rest.length} message(s) left in a released subscription() stream are given up, acknowledged unread ` +
        "unless the client closes first: nothing reads `messages` (subscribe through `subscribe`, or run " +
        "`messages`, to take them there)"
    )
  }

  /**
   * An owner's subscription ended (the session gave it up): its stream fails with `error` once the messages it
   * holds are taken. Later messages of the owner's other filters go to `messages` until its scope lets go of them
   * (`remove`, which also moves what the stream still holds). A handler (`request`'s) has no stream to fail.
   */
  fail(owner: number, error: MqttError.MqttError): void {
    if (owner !== MESSAGES) this.owners.get(owner)?.queue?.fail(error)
  }

  /** Messages dropped so far by every queue: `messages`, the subscription streams, and those that are gone. */
  get dropped(): number {
    let dropped = this.droppedByGone
    for (const owner of this.owners.values()) dropped += owner.queue?.dropped ?? 0
    return dropped
  }

  /**
   * Hands messages to their owners, in order per owner. Returns an effect that waits for room when a suspending
   * queue is full (the reader then stops reading the socket), or undefined when all were taken in.
   */
  deliver(deliveries: ReadonlyArray<Delivery>): Effect.Effect<void> | undefined {
    const batches = new Map<Queue, Array<MqttMessage>>()
    const counts = this.counts
    const bytes = this.bytes
    counts[0] =
      counts[1] =
      counts[2] =
      bytes[0] =
      bytes[1] =
      bytes[2] =
        0
    for (let i = 0; i < deliveries.length; i++) {
      const { message, owners, record } = deliveries[i]
      counts[message.qos]++
      bytes[message.qos] += message.payload.byteLength
      // whether `messages` takes this message already: one copy is enough there
      let toMessages = owners.includes(MESSAGES)
      // `messages` takes this PUBLISH too: a stream's copy is not handed there again (see `onMessagesToo`)
      const ownCopy = toMessages && owners.length > 1
      for (let j = 0; j < owners.length; j++) {
        const copy = j === 0 ? message : copyOf(message)
        if (record !== undefined) copy[ReceiptKey] = new Receipt(record, this.sink, this.flows)
        if (ownCopy && owners[j] !== MESSAGES) this.onMessagesToo.add(copy)
        let owner = this.owners.get(owners[j])
        // an owner that is gone, or whose stream failed, takes nothing more: its copy goes to `messages`, unless
        // `messages` has one (it is then acknowledged, as every copy must be for the message to be)
        if (owner === undefined || owner.queue?.isClosed === true) {
          if (toMessages) {
            acknowledge(copy)
            continue
          }
          if (!this.takesLeftovers) {
            this.giveUpCopy(copy)
            continue
          }
          toMessages = true
          owner = this.owners.get(MESSAGES)!
        }
        if (owner.handle !== undefined) {
          owner.handle(copy)
          acknowledge(copy)
          continue
        }
        const queue = owner.queue!
        const batch = batches.get(queue)
        if (batch === undefined) batches.set(queue, [copy])
        else batch.push(copy)
      }
    }
    this.metrics.received(counts, bytes)
    let waiting: Array<readonly [Queue, Array<MqttMessage>, Progress]> | undefined
    for (const [queue, batch] of batches) {
      const progress: Progress = { accepted: 0 }
      queue.offerUnsafe(batch, progress)
      if (progress.accepted >= batch.length) continue
      // offering to a queue wakes its consumer, which may run at once and release its stream: a queue closed by
      // then takes nothing, and its messages go where a released stream's go, rather than be lost unanswered
      if (queue.isClosed) this.leftOver(batch.slice(progress.accepted))
      else (waiting ??= []).push([queue, batch, progress])
    }
    if (waiting === undefined) return undefined
    this.stalledUnread = waiting.every(([queue]) => !queue.consumed)
    this.waiting = waiting
    return Effect.ensuring(
      waitForRoom(waiting, this.leftOver),
      Effect.sync(() => {
        if (this.waiting === waiting) this.waiting = undefined
      })
    )
  }

  /** What the reader's current wait for room still has to put in (see `cutStall`). */
  private waiting: ReadonlyArray<readonly [Queue, Array<MqttMessage>, Progress]> | undefined = undefined

  /**
   * Ends the reader's wait for room because the client's own request awaits its acknowledgement behind it: what
   * did not fit goes in beyond the capacity, but for QoS 0 messages, which are dropped (counted): the QoS 1/2 ones
   * are as many as the broker sends unacknowledged (its window, at most 65,535), the QoS 0 ones unbounded. Returns
   * whether it cut.
   *
   * - `"unread"`: a SUBSCRIBE or UNSUBSCRIBE awaits its acknowledgement, and nothing consumed the full queues yet
   *   (decided now, not when the wait began: a consumer that started meanwhile makes the room the wait needs);
   * - `"stuck"`: a consumer of the full queues waits for the end of an operation of the client, whose
   *   acknowledgement is behind the unread messages (see `stallOn` in connection.ts): it would wait for good.
   *   Until the consumers take again, the next wait is cut at once (`stillStuck`).
   */
  cutStall(why: "unread" | "stuck"): boolean {
    const waiting = this.waiting
    if (waiting === undefined || (why === "unread" && waiting.some(([queue]) => queue.consumed))) return false
    this.waiting = undefined
    if (why === "stuck") this.stuckAt = this.takenTotal
    for (const [queue, batch, progress] of waiting) {
      if (progress.accepted >= batch.length) continue
      const left = batch.slice(progress.accepted)
      progress.accepted = batch.length
      if (queue.isClosed) this.leftOver(left)
      else this.cutForRequest(queue, left, why)
    }
    return true
  }

  /**
   * Ends the reader's wait for room because the connection ended while it waited, with bytes read ahead behind it
   * (`ReadAhead` in connection.ts): what the wait still had to put in goes in beyond the capacity, QoS 0 too, as an
   * interrupted wait's does (bounded by what the reader read ahead, once per connection), so that what was read
   * ahead goes in behind it, in order.
   */
  cutForEnd(): void {
    const waiting = this.waiting
    if (waiting === undefined) return
    this.waiting = undefined
    for (const [queue, batch, progress] of waiting) {
      if (progress.accepted >= batch.length) continue
      const left = batch.slice(progress.accepted)
      progress.accepted = batch.length
      if (queue.isClosed) this.leftOver(left)
      else queue.offerMovedUnsafe(left)
    }
  }

  /** The messages consumers took so far, from `messages` and every stream there was (it only grows). */
  get takenTotal(): number {
    let taken = this.takenByGone
    for (const owner of this.owners.values()) taken += owner.queue?.taken ?? 0
    return taken
  }
  /** what the queues of released streams had taken */
  private takenByGone = 0

  /** Whether the consumer of a queue the reader waits for room in (the fiber that last pulled) is among `waiters`. */
  consumerAwaits(waiters: ReadonlyMap<Fiber.Fiber<unknown, unknown>, number>): boolean {
    const waiting = this.waiting
    if (waiting === undefined || waiters.size === 0) return false
    return waiting.some(([queue]) => queue.puller !== undefined && waiters.has(queue.puller))
  }

  /** What `takenTotal` was at the last cut of a stuck wait (see `cutStall`). */
  private stuckAt: number | undefined = undefined

  /** Whether nothing was taken since the last cut of a stuck wait: the consumers still wait. */
  get stillStuck(): boolean {
    return this.stuckAt === this.takenTotal
  }

  /**
   * Whether the reader's wait for room is on queues no consumer has pulled from yet (`messages` before the
   * application reads it, a `subscription()` stream before it is handed out): the application may be waiting for a
   * SUBACK before it consumes, and only the reader can read it (see `Driver.requestAwaitsAck`).
   */
  stalledUnread = false

  /** Puts what a cut wait left into `queue` beyond its capacity, but for QoS 0 messages: dropped (see `cutStall`). */
  private cutForRequest(queue: Queue, left: ReadonlyArray<MqttMessage>, why: "unread" | "stuck"): void {
    const kept = left.filter((message) => message.qos > 0)
    const dropped = left.length - kept.length
    if (dropped > 0) {
      this.droppedUnread(dropped)
      if (!this.warnedCut[why]) {
        this.warnedCut[why] = true
        this.warn(
          why === "unread"
            ? `${dropped} QoS 0 message(s) dropped: the queue was full while a SUBSCRIBE or UNSUBSCRIBE waited for ` +
              "its acknowledgement, before anything consumed the queue (consume before subscribing, or give the " +
              "queue room)"
            : `${dropped} QoS 0 message(s) dropped, and more will be while this lasts: the queue was full while ` +
              "its consumer waited (or nothing took from it for a second while a fiber waited) for the " +
              "acknowledgement of the client's own publish, SUBSCRIBE or UNSUBSCRIBE, behind the unread messages " +
              "(a handler that waits for its publish's acknowledgement: publish with publishAccepted, or give the " +
              "queue room)"
        )
      }
    }
    if (kept.length > 0) queue.offerMovedUnsafe(kept)
  }
  private readonly warnedCut = { unread: false, stuck: false }

  /** A copy for a released (or failed) subscription stream that nobody else takes: given up, warned once. */
  private giveUpCopy(copy: MqttMessage): void {
    this.giveUp(copy)
    if (this.warnedGoneCopies) return
    this.warnedGoneCopies = true
    this.warn(
      "a message for a released subscription() stream was given up (acknowledged unread unless the client " +
        "closes first), and so will be any later one: " +
        "nothing reads `messages` (subscribe through `subscribe`, or run `messages`, to take them there)"
    )
  }

  /**
   * Messages that were on their way into a queue that closed meanwhile (its stream released, or failed): they go
   * where a released stream's queue goes (`remove`), to `messages` or given up, rather than be lost unanswered.
   */
  private readonly leftOver = (messages: ReadonlyArray<MqttMessage>): void => {
    if (this.takesLeftovers) return this.messages.offerMovedUnsafe(this.notOnMessages(messages))
    for (const message of messages) this.giveUp(message)
  }

  /**
   * The client stopped: every stream ends (`error` undefined) or fails with the error once drained. What was
   * given up unread and not acknowledged yet stays unacknowledged.
   */
  close(error: MqttError.MqttError | undefined): void {
    if (this.givenUpTimer !== undefined) clearTimeout(this.givenUpTimer)
    this.givenUpTimer = undefined
    if (this.unreadWatch !== undefined) clearTimeout(this.unreadWatch.timer)
    this.unreadWatch = undefined
    this.givenUp = []
    for (const owner of this.owners.values()) {
      if (owner.queue === undefined) continue
      if (error === undefined) owner.queue.end()
      else owner.queue.fail(error)
    }
  }
}

/**
 * Offers what did not fit, queue by queue, waiting for room. The messages of a read were taken in by the session
 * (it holds their records, and takes the broker's resend of one for a duplicate): when the wait is cut (the
 * connection is lost), what is left goes into the queues beyond their capacity rather than be lost (by at most
 * one read, once per connection); what a queue that closed meanwhile did not take goes to `leftOver`.
 */
const waitForRoom = (
  waiting: ReadonlyArray<readonly [Queue, Array<MqttMessage>, Progress]>,
  leftOver: (messages: ReadonlyArray<MqttMessage>) => void
): Effect.Effect<void> => {
  const rest = (queue: Queue, batch: Array<MqttMessage>, progress: Progress, cut: boolean) => {
    if (progress.accepted >= batch.length) return
    const left = batch.slice(progress.accepted)
    progress.accepted = batch.length
    if (queue.isClosed) leftOver(left)
    else if (cut) queue.offerMovedUnsafe(left)
  }
  return Effect.forEach(
    waiting,
    ([queue, batch, progress]) =>
      Effect.andThen(queue.offerAll(batch, progress), Effect.sync(() => rest(queue, batch, progress, false))),
    { discard: true }
  ).pipe(
    Effect.onInterrupt(() =>
      Effect.sync(() => {
        for (const [queue, batch, progress] of waiting) rest(queue, batch, progress, true)
      })
    )
  )
}

const copyOf = (m: MqttMessage) => new MqttMessage(m.topic, m.payload, m.qos, m.retain, m.dup, m.properties)
