/**
 * The queue that holds received messages until `MqttClient.messages` is read: its kind decides what happens
 * when messages arrive faster than they are consumed.
 *
 * | strategy | when full |
 * | --- | --- |
 * | {@link bounded} (default, capacity 1,024) | the client stops reading the socket: TCP pushes back on the broker, nothing is dropped |
 * | {@link sliding} | the oldest message is dropped |
 * | {@link dropping} | the newest message is dropped |
 * | {@link unbounded} | never full: memory grows while the consumer stalls |
 * | {@link priority} | like bounded, and the message that comes out next is the first by a user-given order |
 *
 * Dropped messages are counted: `MqttClient.droppedMessages`.
 *
 * @since 0.1.0
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Order from "effect/Order"
import * as Queue from "effect/Queue"
import * as Stream from "effect/Stream"
import type { MqttMessage } from "./MqttMessage.ts"

/**
 * How the incoming queue behaves. Build one with {@link bounded}, {@link sliding}, {@link dropping},
 * {@link unbounded} or {@link priority}.
 *
 * @since 0.1.0
 * @category models
 */
export type Strategy<A = MqttMessage> = FifoStrategy | PriorityStrategy<A>

/**
 * A first-in first-out strategy: {@link bounded}, {@link sliding}, {@link dropping} or {@link unbounded}.
 *
 * @since 0.1.0
 * @category models
 */
export type FifoStrategy =
  | {
    readonly _tag: "Bounded"
    /** The most messages the queue holds; when full, the client stops reading the socket. */
    readonly capacity: number
  }
  | {
    readonly _tag: "Sliding"
    /** The most messages the queue holds; when full, the oldest is dropped. */
    readonly capacity: number
  }
  | {
    readonly _tag: "Dropping"
    /** The most messages the queue holds; when full, the newest is dropped. */
    readonly capacity: number
  }
  | { readonly _tag: "Unbounded" }

/**
 * The strategy made by {@link priority}.
 *
 * @since 0.1.0
 * @category models
 */
export interface PriorityStrategy<A> {
  readonly _tag: "Priority"
  /** The most messages the queue holds; when full, the client stops reading the socket. */
  readonly capacity: number
  /** Which message comes out first: the smallest by this order, ties in arrival order. */
  readonly order: Order.Order<A>
}

/**
 * A FIFO queue of at most `capacity` messages. When it is full the client stops reading from the socket, so
 * the broker is slowed down by TCP flow control and no message is dropped. The default, with capacity 1,024.
 *
 * @since 0.1.0
 * @category constructors
 */
export const bounded = (capacity: number): FifoStrategy => ({ _tag: "Bounded", capacity })

/**
 * A FIFO queue of at most `capacity` messages that drops the oldest message to make room for a new one.
 *
 * @since 0.1.0
 * @category constructors
 */
export const sliding = (capacity: number): FifoStrategy => ({ _tag: "Sliding", capacity })

/**
 * A FIFO queue of at most `capacity` messages that drops new messages while it is full.
 *
 * @since 0.1.0
 * @category constructors
 */
export const dropping = (capacity: number): FifoStrategy => ({ _tag: "Dropping", capacity })

/**
 * A FIFO queue without a limit, as aiomqtt's default. Memory grows without bound while the consumer stalls:
 * prefer {@link bounded}.
 *
 * @since 0.1.0
 * @category constructors
 */
export const unbounded: FifoStrategy = { _tag: "Unbounded" }

/**
 * A bounded queue (back-pressure when full, as {@link bounded}) whose next message is the first by an order,
 * ties in arrival order. Give either `order` (an `Order` on messages: smaller comes out first) or `priority`
 * (a number per message: lower comes out first, as in Python's `heapq`).
 *
 * @example
 * ```ts
 * import { IncomingQueue, Topic } from "effect-mqtt"
 *
 * // humidity first, everything else after
 * const queue = IncomingQueue.priority({
 *   capacity: 1000,
 *   priority: (message) => Topic.matches(message.topic, "humidity/#") ? 0 : 1
 * })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const priority = <A = MqttMessage>(
  options:
    | { readonly capacity: number; readonly order: Order.Order<A> }
    | { readonly capacity: number; readonly priority: (message: A) => number }
): Strategy<A> => ({
  _tag: "Priority",
  capacity: options.capacity,
  order: "order" in options ? options.order : Order.mapInput(Order.Number, options.priority)
})

/**
 * The default strategy: {@link bounded} with a capacity of 1,024 messages.
 *
 * @since 0.1.0
 * @category constructors
 */
export const defaultStrategy: FifoStrategy = bounded(1024)

/**
 * The running queue behind `MqttClient.messages`. Used by the client; exported for tests and custom
 * consumers.
 *
 * @since 0.1.0
 * @category models
 */
export interface IncomingQueue<A, E> {
  /**
   * Adds messages in order. Waits while a bounded or priority queue is full; never waits for the other
   * kinds. `progress.accepted` counts the messages taken so far (a dropped message counts as taken), so a
   * caller interrupted while waiting knows which messages the queue holds.
   */
  readonly offerAll: (messages: ReadonlyArray<A>, progress?: Progress) => Effect.Effect<void>
  /** Adds, in order, the messages that fit now without waiting; `progress.accepted` counts them. */
  readonly offerAllUnsafe: (messages: ReadonlyArray<A>, progress: Progress) => void
  /** The messages as a stream shared by all its consumers: each message goes to one of them. */
  readonly stream: Stream.Stream<A, E>
  /** Ends the stream once the queued messages are taken. */
  readonly end: Effect.Effect<void>
  /** Fails the stream with `error` once the queued messages are taken. */
  readonly fail: (error: E) => Effect.Effect<void>
  /** The number of messages dropped so far by a sliding or dropping queue. */
  readonly dropped: Effect.Effect<number>
  /** The number of messages waiting. */
  readonly size: Effect.Effect<number>
}

/**
 * How many messages of an `offerAll` the queue has taken so far.
 *
 * @since 0.1.0
 * @category models
 */
export interface Progress {
  /** The number of messages taken so far, counted up by the queue. */
  accepted: number
}

/**
 * Makes a queue with the given strategy.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = <A, E>(strategy: Strategy<A>): Effect.Effect<IncomingQueue<A, E>> =>
  strategy._tag === "Priority" ?
    Effect.sync(() => fromPriority(new PriorityQueue<A, E>(strategy.capacity, strategy.order))) :
    Effect.map(
      strategy._tag === "Unbounded" ?
        Queue.unbounded<A, E | Cause.Done>() :
        Queue.make<A, E | Cause.Done>({
          capacity: strategy.capacity,
          strategy: strategy._tag === "Bounded" ? "suspend" : strategy._tag === "Sliding" ? "sliding" : "dropping"
        }),
      (queue) => fromQueue(queue, strategy)
    )

const fromQueue = <A, E>(queue: Queue.Queue<A, E | Cause.Done>, strategy: Strategy<A>): IncomingQueue<A, E> => {
  let dropped = 0
  const offerAll = strategy._tag === "Bounded" || strategy._tag === "Unbounded" ?
    (messages: ReadonlyArray<A>, progress: Progress = { accepted: 0 }) =>
      Effect.suspend(() => {
        const rest = Queue.offerAllUnsafe(queue, messages)
        progress.accepted += messages.length - rest.length
        return rest.length === 0 ? Effect.void : offerEach(queue, rest, 0, progress)
      }) :
    strategy._tag === "Sliding" ?
    (messages: ReadonlyArray<A>, progress?: Progress) =>
      Effect.sync(() => {
        const before = Queue.sizeUnsafe(queue)
        Queue.offerAllUnsafe(queue, messages)
        dropped += Math.max(0, before + messages.length - strategy.capacity)
        if (progress !== undefined) progress.accepted += messages.length
      }) :
    (messages: ReadonlyArray<A>, progress?: Progress) =>
      Effect.sync(() => {
        dropped += Queue.offerAllUnsafe(queue, messages).length
        if (progress !== undefined) progress.accepted += messages.length
      })
  const offerAllUnsafe = strategy._tag === "Bounded" || strategy._tag === "Unbounded" ?
    (messages: ReadonlyArray<A>, progress: Progress) => {
      progress.accepted += messages.length - Queue.offerAllUnsafe(queue, messages).length
    } :
    (messages: ReadonlyArray<A>, progress: Progress) => Effect.runSync(offerAll(messages, progress))
  return {
    offerAll,
    offerAllUnsafe,
    stream: Stream.fromQueue(queue),
    end: Effect.asVoid(Queue.end(queue)),
    fail: (error) => Effect.asVoid(Queue.fail(queue, error)),
    dropped: Effect.sync(() => dropped),
    size: Queue.size(queue)
  }
}

/** Offers one message at a time, waiting for room: each offer either happens or not, even on interruption. */
const offerEach = <A, E>(
  queue: Queue.Queue<A, E | Cause.Done>,
  messages: ReadonlyArray<A>,
  from: number,
  progress: Progress
): Effect.Effect<void> =>
  Effect.suspend(() => {
    let i = from
    while (i < messages.length && Queue.offerUnsafe(queue, messages[i])) {
      i++
      progress.accepted++
    }
    if (i >= messages.length || queue.state._tag !== "Open") return Effect.void
    const next = i
    return Effect.flatMap(Queue.offer(queue, messages[next]), (offered) => {
      if (!offered) return Effect.void
      progress.accepted++
      return offerEach(queue, messages, next + 1, progress)
    })
  })

const fromPriority = <A, E>(queue: PriorityQueue<A, E>): IncomingQueue<A, E> => ({
  offerAll: (messages, progress = { accepted: 0 }) => queue.offerAll(messages, 0, progress),
  offerAllUnsafe: (messages, progress) => {
    queue.offerNow(messages, 0, progress)
  },
  // one message per pull, so that a message of higher priority arriving while the consumer works on a
  // batch is not stuck behind that batch
  stream: Stream.fromPull(Effect.succeed(Effect.map(queue.take, (a) => [a] as const))),
  end: Effect.sync(() => queue.close(undefined)),
  fail: (error) => Effect.sync(() => queue.close({ error })),
  dropped: Effect.succeed(0),
  size: Effect.sync(() => queue.heap.length)
})

interface Entry<A> {
  readonly value: A
  readonly seq: number
}

type Resume<A, E> = (effect: Effect.Effect<A, E>) => void

/**
 * A bounded binary heap with suspending offers and takes. Ties are broken by arrival order.
 */
class PriorityQueue<A, E> {
  readonly heap: Array<Entry<A>> = []
  private seq = 0
  private readonly takers: Array<Resume<A, E | Cause.Done>> = []
  private readonly putters: Array<() => void> = []
  private closed: { readonly error?: E } | undefined = undefined

  readonly capacity: number
  readonly order: Order.Order<A>

  constructor(capacity: number, order: Order.Order<A>) {
    this.capacity = capacity
    this.order = order
  }

  /** Adds what fits without waiting, from `from`; returns the index of the first message left. */
  offerNow(messages: ReadonlyArray<A>, from: number, progress: Progress): number {
    let i = from
    if (this.closed !== undefined) return messages.length
    while (i < messages.length) {
      const taker = this.takers.shift()
      if (taker !== undefined) {
        taker(Effect.succeed(messages[i++]))
        progress.accepted++
        continue
      }
      if (this.heap.length >= this.capacity) break
      this.push({ value: messages[i++], seq: this.seq++ })
      progress.accepted++
    }
    return i
  }

  offerAll(messages: ReadonlyArray<A>, from: number, progress: Progress): Effect.Effect<void> {
    return Effect.suspend(() => {
      const i = this.offerNow(messages, from, progress)
      if (i >= messages.length) return Effect.void
      const rest = i
      return Effect.flatMap(
        Effect.callback<void>((resume) => {
          const putter = () => resume(Effect.void)
          this.putters.push(putter)
          return Effect.sync(() => {
            const index = this.putters.indexOf(putter)
            if (index >= 0) this.putters.splice(index, 1)
          })
        }),
        () => this.offerAll(messages, rest, progress)
      )
    })
  }

  readonly take: Effect.Effect<A, E | Cause.Done> = Effect.callback<A, E | Cause.Done>((resume) => {
    if (this.heap.length > 0) {
      const value = this.pop()
      this.putters.shift()?.()
      return resume(Effect.succeed(value))
    }
    if (this.closed !== undefined) {
      return resume("error" in this.closed ? Effect.fail(this.closed.error as E) : Effect.fail(Cause.Done()))
    }
    this.takers.push(resume)
    return Effect.sync(() => {
      const index = this.takers.indexOf(resume)
      if (index >= 0) this.takers.splice(index, 1)
    })
  })

  close(closed: { readonly error: E } | undefined): void {
    if (this.closed !== undefined) return
    this.closed = closed ?? {}
    const error: Effect.Effect<never, E | Cause.Done> = closed === undefined ?
      Effect.fail(Cause.Done()) :
      Effect.fail(closed.error)
    for (const taker of this.takers.splice(0)) taker(error)
    for (const putter of this.putters.splice(0)) putter()
  }

  private before(a: Entry<A>, b: Entry<A>): boolean {
    const c = this.order(a.value, b.value)
    return c < 0 || (c === 0 && a.seq < b.seq)
  }

  private push(entry: Entry<A>): void {
    const heap = this.heap
    heap.push(entry)
    let i = heap.length - 1
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (!this.before(heap[i], heap[parent])) break
      ;[heap[i], heap[parent]] = [heap[parent], heap[i]]
      i = parent
    }
  }

  private pop(): A {
    const heap = this.heap
    const top = heap[0]
    const last = heap.pop()!
    if (heap.length > 0) {
      heap[0] = last
      let i = 0
      for (;;) {
        const l = 2 * i + 1
        const r = l + 1
        let best = i
        if (l < heap.length && this.before(heap[l], heap[best])) best = l
        if (r < heap.length && this.before(heap[r], heap[best])) best = r
        if (best === i) break
        ;[heap[i], heap[best]] = [heap[best], heap[i]]
        i = best
      }
    }
    return top.value
  }
}
