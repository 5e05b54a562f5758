/**
 * The queues behind the message streams: FIFO, LIFO or priority order; bounded with back-pressure, sliding
 * (drop the oldest), dropping (drop the newest) or unbounded.
 *
 * A consumer takes one message per pull, in its own fiber, straight from the store: a consumer that stops
 * (`Stream.take`, a timeout, an interruption) leaves every message it did not take in the queue for the next
 * one. Producers never hand a message to a waiting consumer directly; they store it and wake the consumer, so
 * an interrupted consumer cannot lose a message handed to it. `onTaken` and `onDropped` tell the client when a
 * message leaves, so that its acknowledgement can go.
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import type * as Order from "effect/Order"
import * as Stream from "effect/Stream"

/** What a full queue does with one more message. */
export type Overflow = "suspend" | "sliding" | "dropping"

/** How many messages of an offer the queue has dealt with (queued or dropped) so far. */
export interface Progress {
  accepted: number
}

/** The order a queue hands messages out in. */
interface Store<A> {
  readonly size: number
  push(a: A): void
  /** the next message out, removed; undefined when empty */
  take(): A | undefined
  /** the next message out (`take`'s), not removed; undefined when empty */
  peek(): A | undefined
  /** the next message out among those `eligible` holds for (`takeFirst`'s), not removed; undefined when none */
  first(eligible: (a: A) => boolean): A | undefined
  /** the next message out among those `eligible` holds for, removed; undefined when there is none */
  takeFirst(eligible: (a: A) => boolean): A | undefined
  /** whether `eligible` holds for a message (none removed) */
  some(eligible: (a: A) => boolean): boolean
  /** the message the queue would give up first to make room (the oldest), removed */
  evict(): A | undefined
  /**
   * everything, removed, in the order it arrived: what is moved to another queue (a released stream's leftovers,
   * a claimed backlog, what is put back) comes out there in that queue's own order
   */
  drain(): Array<A>
}

/** A ring buffer: FIFO takes from the front, LIFO from the back; both evict the oldest. */
class Deque<A> implements Store<A> {
  private items: Array<A | undefined> = new Array(16)
  private head = 0
  size = 0
  private readonly lifo: boolean
  constructor(lifo: boolean) {
    this.lifo = lifo
  }
  push(a: A): void {
    if (this.size === this.items.length) this.grow()
    this.items[(this.head + this.size) % this.items.length] = a
    this.size++
  }
  take(): A | undefined {
    return this.lifo ? this.pop() : this.evict()
  }
  peek(): A | undefined {
    return this.size === 0 ? undefined : this.items[(this.head + (this.lifo ? this.size - 1 : 0)) % this.items.length]
  }
  first(eligible: (a: A) => boolean): A | undefined {
    const n = this.size
    for (let k = 0; k < n; k++) {
      const a = this.items[(this.head + (this.lifo ? n - 1 - k : k)) % this.items.length]!
      if (eligible(a)) return a
    }
    return undefined
  }
  evict(): A | undefined {
    if (this.size === 0) return undefined
    const a = this.items[this.head]
    this.items[this.head] = undefined
    this.head = (this.head + 1) % this.items.length
    this.size--
    return a
  }
  takeFirst(eligible: (a: A) => boolean): A | undefined {
    const n = this.size
    for (let k = 0; k < n; k++) {
      const i = this.lifo ? n - 1 - k : k
      const a = this.items[(this.head + i) % this.items.length]!
      if (!eligible(a)) continue
      // close the gap: the messages after it move up one place
      for (let j = i; j < n - 1; j++) {
        this.items[(this.head + j) % this.items.length] = this.items[(this.head + j + 1) % this.items.length]
      }
      this.items[(this.head + n - 1) % this.items.length] = undefined
      this.size--
      return a
    }
    return undefined
  }
  some(eligible: (a: A) => boolean): boolean {
    for (let i = 0; i < this.size; i++) {
      if (eligible(this.items[(this.head + i) % this.items.length]!)) return true
    }
    return false
  }
  private pop(): A | undefined {
    if (this.size === 0) return undefined
    const i = (this.head + this.size - 1) % this.items.length
    const a = this.items[i]
    this.items[i] = undefined
    this.size--
    return a
  }
  drain(): Array<A> {
    const out: Array<A> = []
    for (let a = this.evict(); a !== undefined; a = this.evict()) out.push(a)
    return out
  }
  private grow(): void {
    const grown = new Array<A | undefined>(this.items.length * 2)
    for (let i = 0; i < this.size; i++) grown[i] = this.items[(this.head + i) % this.items.length]
    this.items = grown
    this.head = 0
  }
}

/** A binary heap: the first by `order` comes out first, ties in arrival order. */
class Heap<A> implements Store<A> {
  private readonly heap: Array<{ readonly value: A; readonly seq: number }> = []
  private seq = 0
  private readonly order: Order.Order<A>
  private orderFailed = false
  /** told the first time the order throws */
  onOrderError: ((cause: unknown) => void) | undefined = undefined
  constructor(order: Order.Order<A>) {
    this.order = order
  }
  get size(): number {
    return this.heap.length
  }
  push(value: A): void {
    const heap = this.heap
    heap.push({ value, seq: this.seq++ })
    let i = heap.length - 1
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (!this.before(i, parent)) break
      ;[heap[i], heap[parent]] = [heap[parent], heap[i]]
      i = parent
    }
  }
  take(): A | undefined {
    return this.heap.length === 0 ? undefined : this.removeAt(0)
  }
  peek(): A | undefined {
    return this.heap[0]?.value
  }
  takeFirst(eligible: (a: A) => boolean): A | undefined {
    const best = this.firstIndex(eligible)
    return best < 0 ? undefined : this.removeAt(best)
  }
  first(eligible: (a: A) => boolean): A | undefined {
    const best = this.firstIndex(eligible)
    return best < 0 ? undefined : this.heap[best].value
  }
  /** Where the first by the order among the eligible is: a scan (the heap keeps no sorted line); -1 when none. */
  private firstIndex(eligible: (a: A) => boolean): number {
    const heap = this.heap
    let best = -1
    for (let i = 0; i < heap.length; i++) {
      if (eligible(heap[i].value) && (best < 0 || this.before(i, best))) best = i
    }
    return best
  }
  some(eligible: (a: A) => boolean): boolean {
    return this.heap.some((entry) => eligible(entry.value))
  }
  /** Removes the entry at `index`: the last takes its place and moves down, or up, to where it belongs. */
  private removeAt(index: number): A {
    const heap = this.heap
    const removed = heap[index]
    const last = heap.pop()!
    if (index < heap.length) {
      heap[index] = last
      let i = index
      for (;;) {
        const l = 2 * i + 1
        const r = l + 1
        let best = i
        if (l < heap.length && this.before(l, best)) best = l
        if (r < heap.length && this.before(r, best)) best = r
        if (best === i) break
        ;[heap[i], heap[best]] = [heap[best], heap[i]]
        i = best
      }
      while (i > 0) {
        const parent = (i - 1) >> 1
        if (!this.before(i, parent)) break
        ;[heap[i], heap[parent]] = [heap[parent], heap[i]]
        i = parent
      }
    }
    return removed.value
  }
  evict(): A | undefined {
    // the oldest message: the lowest sequence number
    const heap = this.heap
    if (heap.length === 0) return undefined
    let oldest = 0
    for (let i = 1; i < heap.length; i++) if (heap[i].seq < heap[oldest].seq) oldest = i
    const { value } = heap[oldest]
    const rest = heap.filter((_, i) => i !== oldest)
    heap.length = 0
    for (const entry of rest.sort((a, b) => a.seq - b.seq)) this.pushEntry(entry)
    return value
  }
  private pushEntry(entry: { readonly value: A; readonly seq: number }): void {
    this.heap.push(entry)
    let i = this.heap.length - 1
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (!this.before(i, parent)) break
      ;[this.heap[i], this.heap[parent]] = [this.heap[parent], this.heap[i]]
      i = parent
    }
  }
  drain(): Array<A> {
    const entries = this.heap.splice(0)
    entries.sort((a, b) => a.seq - b.seq)
    return entries.map((entry) => entry.value)
  }
  private before(i: number, j: number): boolean {
    const a = this.heap[i]
    const b = this.heap[j]
    let c: number
    try {
      c = this.order(a.value, b.value)
    } catch (cause) {
      // the application's order (or priority function) threw: those two keep their arrival order, the heap stays
      // whole, and the application is told (once per queue)
      c = 0
      if (!this.orderFailed) {
        this.orderFailed = true
        this.onOrderError?.(cause)
      }
    }
    return c < 0 || (c === 0 && a.seq < b.seq)
  }
}

type Wake = () => void

/** The kinds of store a queue can have. */
export type Kind<A> =
  | { readonly _tag: "Fifo" }
  | { readonly _tag: "Lifo" }
  | { readonly _tag: "Priority"; readonly order: Order.Order<A> }

/** Operations of a fiber's budget that a pull leaves for the stream's steps up to the handler (see `pull`). */
const HAND_OVER_OPS = 256

export class MessageQueue<A, E> {
  private readonly store: Store<A>
  private readonly capacity: number
  /**
   * A waiting producer is woken once the queue is down to this many messages (half its capacity), not after
   * every take: woken for one free place, a reader would take in one message per wake-up, at the cost of two
   * fiber switches each, and a consumer slower than the broker would keep both there for good.
   */
  private readonly lowWater: number
  private readonly overflow: Overflow
  /** waiting consumers and producers, in the order they came (a Set: an interrupted one leaves at once) */
  private takers = new Set<Wake>()
  private putters = new Set<Wake>()
  private closed: { readonly error: E } | { readonly error?: undefined } | undefined = undefined
  dropped = 0
  /** messages consumers took (a wait for room sees from it whether they still take) */
  taken = 0
  /** a consumer has run the stream (whether it took anything) */
  consumed = false
  /** called when a consumer takes a message */
  onTaken: ((a: A) => void) | undefined = undefined
  /** called when the queue drops a message (sliding, dropping) */
  onDropped: ((a: A) => void) | undefined = undefined
  /**
   * What a consumer waits for before it takes `next`, or undefined to take it at once: with a durable session and
   * acknowledgement on hand-over, a QoS 2 message is taken only once every QoS 2 message taken before it is
   * stored as delivered (see `Deliveries.storeBeforeTake`). Looked at again after the wait, in the same step as
   * the take. Undefined (no look at all) without a store.
   */
  gate: ((next: A) => Effect.Effect<void> | undefined) | undefined = undefined

  constructor(kind: Kind<A>, capacity: number, overflow: Overflow) {
    this.store = kind._tag === "Priority" ? new Heap(kind.order) : new Deque(kind._tag === "Lifo")
    this.capacity = capacity
    this.lowWater = Math.floor(capacity / 2)
    this.overflow = overflow
  }

  get size(): number {
    return this.store.size
  }

  /** Told the first time a priority queue's order throws (the messages it compared keep their arrival order). */
  set onOrderError(f: (cause: unknown) => void) {
    if (this.store instanceof Heap) this.store.onOrderError = f
  }

  get isClosed(): boolean {
    return this.closed !== undefined
  }

  /** Adds, in order, what can be dealt with now without waiting; `progress.accepted` counts it. */
  offerUnsafe(items: ReadonlyArray<A>, progress: Progress): void {
    if (this.closed !== undefined) return
    const store = this.store
    let i = progress.accepted
    for (; i < items.length; i++) {
      const item = items[i]
      if (store.size < this.capacity) {
        store.push(item)
      } else if (this.overflow === "sliding") {
        this.drop(store.evict()!)
        store.push(item)
      } else if (this.overflow === "dropping") {
        this.drop(item)
      } else {
        break
      }
    }
    progress.accepted = i
    if (this.takers.size > 0 && store.size > 0) this.wakeTakers()
  }

  /**
   * Adds messages moved here from a queue that went away, without waiting: a suspending queue holds them beyond its
   * capacity rather than lose them (they were taken in once already, so memory stays bounded by that queue's
   * capacity); a sliding or dropping queue drops as usual, counted.
   */
  offerMovedUnsafe(items: ReadonlyArray<A>): void {
    const progress: Progress = { accepted: 0 }
    this.offerUnsafe(items, progress)
    if (this.closed !== undefined || progress.accepted >= items.length) return
    for (let i = progress.accepted; i < items.length; i++) this.store.push(items[i])
    if (this.takers.size > 0) this.wakeTakers()
  }

  /** Adds messages in order, waiting for room while a suspending queue is full. */
  offerAll(items: ReadonlyArray<A>, progress: Progress = { accepted: 0 }): Effect.Effect<void> {
    return Effect.suspend(() => {
      // waking a consumer may run it at once and empty the queue again: offer until full or done
      do {
        this.offerUnsafe(items, progress)
        if (progress.accepted >= items.length || this.closed !== undefined) return Effect.void
      } while (this.store.size < this.capacity)
      return Effect.flatMap(this.waitFor("putters", this.hasRoom), () => this.offerAll(items, progress))
    })
  }

  private drop(item: A): void {
    this.dropped++
    this.onDropped?.(item)
  }

  /** Takes the next message now, or undefined. */
  poll(): A | undefined {
    return this.tookOut(this.store.take())
  }

  /** A message taken out of the store: counted, room made for a waiting producer, its acknowledgement told. */
  private tookOut(item: A | undefined): A | undefined {
    if (item === undefined) return undefined
    this.taken++
    if (this.putters.size > 0 && this.store.size <= this.lowWater) this.wakePutters()
    this.onTaken?.(item)
    return item
  }

  /**
   * The next message in the queue's order among those `eligible` holds for, waiting for one: messages passed over
   * stay where they are, untaken (and so unacknowledged). What `eligible` says may change without a new message:
   * `wake` has the wait look again. Fails with `Cause.Done` once ended and nothing eligible is left, or the error.
   */
  takeFirst(eligible: (a: A) => boolean): Effect.Effect<A, E | Cause.Done> {
    return Effect.suspend(() => {
      const item = this.pollFirst(eligible)
      if (item !== undefined) return Effect.succeed(item)
      if (this.isOver) return this.over
      return Effect.flatMap(this.awaitFirst(() => true, eligible), () => this.takeFirst(eligible))
    })
  }

  /**
   * What a consumer must wait for before `pollFirst(eligible)` (see `gate`), or undefined: nothing, or nothing
   * eligible to take. Looked at in the same step as the `pollFirst` that follows it.
   */
  gatedFirst(eligible: (a: A) => boolean): Effect.Effect<void> | undefined {
    const gate = this.gate
    if (gate === undefined || this.closed !== undefined) return undefined
    const next = this.store.first(eligible)
    const wait = next === undefined ? undefined : gate(next)
    return wait === undefined
      ? undefined
      : Effect.raceFirst(wait, this.waitFor("takers", () => this.closed !== undefined))
  }

  /**
   * Takes the next message in the queue's order among those `eligible` holds for, now (see `takeFirst`), or
   * undefined. Its caller is the consumer (see `puller`).
   */
  pollFirst(eligible: (a: A) => boolean): A | undefined {
    this.puller = Fiber.getCurrent()
    this.consumed = true
    return this.tookOut(this.store.takeFirst(eligible))
  }

  /** Ended, with nothing left to take. */
  get isOver(): boolean {
    return this.closed !== undefined && this.store.size === 0
  }

  /** How the queue ended, once `isOver`: `Cause.Done`, or the error it was failed with. */
  get over(): Effect.Effect<never, E | Cause.Done> {
    return this.closed?.error !== undefined ? Effect.fail(this.closed.error as E) : Effect.fail(Cause.Done())
  }

  /**
   * Waits until `ready` holds and a message is `eligible`, or until the queue is over (`isOver`); takes nothing.
   * Both are looked at when the wait starts and again at each message added, end, or `wake`: no change between a
   * look and the wait is missed.
   */
  awaitFirst(ready: () => boolean, eligible: (a: A) => boolean): Effect.Effect<void> {
    return Effect.suspend(() => {
      // the caller consumes the queue from now on, waiting or not: what is moved here for a consumer (a released
      // stream's leftovers) comes to it, and a wait of its for an operation is a consumer's (see `puller`)
      this.puller = Fiber.getCurrent()
      this.consumed = true
      return this.waitFor("takers", () => this.firstReady(ready, eligible))
    })
  }

  /** `awaitFirst`'s condition: `ready` first (while it is false nothing is taken, not even the end). */
  private firstReady(ready: () => boolean, eligible: (a: A) => boolean): boolean {
    if (!ready()) return false
    if (this.isOver) return true
    try {
      return this.store.some(eligible)
    } catch {
      // the caller's `eligible` threw: it is the caller's to meet it again (in its own fiber), not the producer's
      // that woke this wait
      return true
    }
  }

  /** Has the consumers that wait look again (see `awaitFirst`). */
  wake(): void {
    if (this.takers.size > 0) this.wakeTakers()
  }

  /** The next message, waiting for one; fails with `Cause.Done` once ended and empty, or with the error. */
  readonly take: Effect.Effect<A, E | Cause.Done> = Effect.suspend(() => {
    const item = this.poll()
    if (item !== undefined) return Effect.succeed(item)
    if (this.closed !== undefined) return this.over
    return Effect.flatMap(this.waitFor("takers", this.hasMessage), () => this.take)
  })

  /** the fiber that last pulled from the stream: the consumer (see `Driver.ackWaiters`) */
  puller: Fiber.Fiber<unknown, unknown> | undefined = undefined

  /**
   * A pull. A fiber pauses every `MaxOpsBeforeYield` operations (2,048 by default), and a stop (interruption, a
   * timeout) lands in a pause: one between the take and the consumer's handler would lose the message taken (with
   * acknowledgement on hand-over, acknowledged and never handled). So a pull that finds less than `HAND_OVER_OPS`
   * operations of the budget left (half of a budget of 512 or less) pauses first, while nothing is taken: the take,
   * the stream's steps and the start of the handler then run within one budget (`Stream.runForEach` takes a few
   * operations between them; a longer pipeline between the pull and the handler can still be stopped in between).
   */
  private readonly pull: Effect.Effect<readonly [A], E | Cause.Done> = Effect.suspend(() => {
    const fiber = Fiber.getCurrent()
    this.puller = fiber
    if (fiber !== undefined) {
      const budget = fiber.cache.maxOpsBeforeYield
      if (fiber.currentOpCount > budget - (budget > 512 ? HAND_OVER_OPS : budget >> 1)) {
        return Effect.andThen(Effect.yieldNow, this.pullNow)
      }
    }
    return this.pullNowUnsafe()
  })

  private pullNowUnsafe(): Effect.Effect<readonly [A], E | Cause.Done> {
    if (this.gate !== undefined) return this.pullGated(this.gate)
    const item = this.poll()
    return item !== undefined ? Effect.succeed([item] as const) : Effect.map(this.take, (a) => [a] as const)
  }

  /**
   * A pull through the `gate`: a wait it asks for comes before the take (a stop there takes nothing), and the pull
   * then starts again, so that the take follows a look at the gate in the same step; so does a wait for a message.
   */
  private pullGated(
    gate: (next: A) => Effect.Effect<void> | undefined
  ): Effect.Effect<readonly [A], E | Cause.Done> {
    const next = this.store.peek()
    if (next === undefined) {
      if (this.closed !== undefined) return this.over
      return Effect.flatMap(this.waitFor("takers", this.hasMessage), () => this.pull)
    }
    // once the queue is closed (the client stopped, the stream released) the gate holds nothing back: the store
    // may never come back, and the stream must end or fail after what it holds
    const wait = this.closed === undefined ? gate(next) : undefined
    if (wait !== undefined) {
      return Effect.flatMap(
        Effect.raceFirst(wait, this.waitFor("takers", () => this.closed !== undefined)),
        () => this.pull
      )
    }
    return Effect.succeed([this.poll()!] as const)
  }

  private readonly pullNow: Effect.Effect<readonly [A], E | Cause.Done> = Effect.suspend(() => this.pullNowUnsafe())

  /** The messages as a stream shared by its consumers: one message per pull, so none is lost when one stops. */
  readonly stream: Stream.Stream<A, E> = Stream.fromPull(Effect.sync(() => {
    this.consumed = true
    return this.pull
  }))

  /** Removes and returns every message waiting, in the order they arrived (not counted as taken). */
  drainUnsafe(): Array<A> {
    const rest = this.store.drain()
    if (this.putters.size > 0) this.wakePutters()
    return rest
  }

  /**
   * Removes every message waiting and hands them to `sort`, before a waiting producer is woken: what `sort` puts
   * back (`offerMovedUnsafe`) stays ahead of what the producer then adds.
   */
  sortUnsafe(sort: (messages: Array<A>) => void): void {
    sort(this.store.drain())
    if (this.putters.size > 0 && this.store.size <= this.lowWater) this.wakePutters()
  }

  /** Ends the stream once the waiting messages are taken. */
  end(): void {
    this.close({})
  }

  /** Fails the stream with `error` once the waiting messages are taken. */
  fail(error: E): void {
    this.close({ error })
  }

  private close(closed: { readonly error?: E }): void {
    if (this.closed !== undefined) return
    this.closed = closed as { readonly error: E }
    this.wakeTakers()
    this.wakePutters()
  }

  private readonly hasMessage = (): boolean => this.store.size > 0 || this.closed !== undefined
  private readonly hasRoom = (): boolean => this.store.size < this.capacity || this.closed !== undefined

  /**
   * Waits until `ready` holds, looked at when the wait starts and at each wake-up of the line (a wake-up that finds
   * it false waits on). The look at the start is in the same step as joining the line: a fiber can pause (yield to
   * the scheduler) between any two steps, and a change made during that pause would wake nobody.
   */
  private waitFor(line: "takers" | "putters", ready: () => boolean): Effect.Effect<void> {
    return Effect.callback<void>((resume) => {
      if (ready()) return resume(Effect.void)
      let gone = false
      const wake = () => {
        // a waiter interrupted by another one woken before it in the same pass is not put back
        if (gone) return
        if (ready()) resume(Effect.void)
        else this[line].add(wake)
      }
      this[line].add(wake)
      return Effect.sync(() => {
        gone = true
        this[line].delete(wake)
      })
    })
  }

  private wakeTakers(): void {
    const takers = this.takers
    this.takers = new Set()
    for (const wake of takers) wake()
  }

  private wakePutters(): void {
    const putters = this.putters
    this.putters = new Set()
    for (const wake of putters) wake()
  }
}

/** The queue of a strategy. */
/**
 * A queue strategy as `IncomingQueue` describes it (structurally: this module does not import the public one, so
 * the modules form no circle).
 */
export type StrategyShape<A> =
  | { readonly _tag: "Bounded" | "Sliding" | "Dropping"; readonly capacity: number }
  | { readonly _tag: "Unbounded" }
  | { readonly _tag: "Lifo"; readonly capacity: number; readonly overflow: Overflow }
  | { readonly _tag: "Priority"; readonly capacity: number; readonly order: Order.Order<A> }

/**
 * Why `strategy` is not a strategy a queue can be made of (from untyped code, or a capacity that is not a positive
 * whole number), or `undefined`. `MqttClient.make` (option `queue`) and `IncomingQueue.make` refuse the same.
 */
export const strategyProblem = (strategy: unknown): string | undefined => {
  const shape = strategy as Partial<Record<"_tag" | "capacity" | "overflow" | "order", unknown>> | null
  if (
    typeof strategy !== "object" || shape === null ||
    !["Bounded", "Sliding", "Dropping", "Unbounded", "Lifo", "Priority"].includes(shape._tag as string)
  ) {
    return "expected a strategy of IncomingQueue (bounded, sliding, dropping, lifo, priority...)"
  }
  if (shape._tag === "Lifo" && !["suspend", "sliding", "dropping"].includes(shape.overflow as string)) {
    return `the overflow of a LIFO queue is "suspend", "sliding" or "dropping"`
  }
  if (shape._tag === "Priority" && typeof shape.order !== "function") {
    return "a priority queue needs a `priority` function or an `order` (IncomingQueue.priority)"
  }
  if (shape._tag !== "Unbounded" && !(Number.isInteger(shape.capacity) && (shape.capacity as number) > 0)) {
    return "the capacity must be a positive integer"
  }
  return undefined
}

export const fromStrategy = <A, E>(strategy: StrategyShape<A>): MessageQueue<A, E> => {
  switch (strategy._tag) {
    case "Bounded":
      return new MessageQueue({ _tag: "Fifo" }, strategy.capacity, "suspend")
    case "Sliding":
      return new MessageQueue({ _tag: "Fifo" }, strategy.capacity, "sliding")
    case "Dropping":
      return new MessageQueue({ _tag: "Fifo" }, strategy.capacity, "dropping")
    case "Unbounded":
      return new MessageQueue({ _tag: "Fifo" }, Infinity, "suspend")
    case "Lifo":
      return new MessageQueue({ _tag: "Lifo" }, strategy.capacity, strategy.overflow)
    case "Priority":
      return new MessageQueue({ _tag: "Priority", order: strategy.order }, strategy.capacity, "suspend")
  }
}

/** The capacity of a strategy (Infinity for unbounded). */
export const capacityOf = (strategy: StrategyShape<any>): number =>
  strategy._tag === "Unbounded" ? Infinity : strategy.capacity
