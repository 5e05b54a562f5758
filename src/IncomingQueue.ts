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
 * | {@link lifo} | newest first (a stack), bounded, with the same choices when full (wait, drop oldest, drop newest) |
 *
 * Whatever the kind, a consumer takes one message at a time from the queue: a consumer that stops
 * (`Stream.take`, a timeout, an interruption, a failure) leaves every message it did not take for the next one.
 *
 * Dropped messages are counted: `MqttClient.droppedMessages`.
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import * as Order from "effect/Order"
import type * as Stream from "effect/Stream"
import { fromStrategy, strategyProblem } from "./internal/queue.ts"
import * as MqttError from "./MqttError.ts"
import type { MqttMessage } from "./MqttMessage.ts"

/**
 * How the incoming queue behaves. Build one with {@link bounded}, {@link sliding}, {@link dropping},
 * {@link unbounded}, {@link lifo} or {@link priority}.
 *
 * @since 0.1.0
 * @category models
 */
export type Strategy<A = MqttMessage> = FifoStrategy | LifoStrategy | PriorityStrategy<A>

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
 * The strategy made by {@link lifo}: newest first, at most `capacity` messages; `overflow` says what a full
 * queue does with one more: `"suspend"` (stop reading the socket, as {@link bounded}), `"sliding"` (drop the
 * oldest) or `"dropping"` (drop the newest).
 *
 * @since 0.2.0
 * @category models
 */
export interface LifoStrategy {
  readonly _tag: "Lifo"
  /** The most messages the queue holds. */
  readonly capacity: number
  /** What a full queue does with one more message: wait, drop the oldest, or drop the newest. */
  readonly overflow: "suspend" | "sliding" | "dropping"
}

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
 * (a number per message: lower comes out first, as in Python's `heapq`). An order or priority function that throws
 * loses nothing: the messages it compared keep their arrival order, and the client's queue logs a Warn line (once).
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
  // neither an order nor a priority function: `make` refuses the strategy (InvalidOptionError)
  order: "order" in options
    ? options.order
    : typeof options.priority === "function"
    ? Order.mapInput(Order.Number, options.priority)
    : (undefined as unknown as Order.Order<A>)
})

/**
 * A last-in first-out queue of at most `capacity` messages: the newest message comes out first, as in aiomqtt's
 * LIFO queue. When full it waits (`overflow: "suspend"`, the default: the client stops reading the socket),
 * drops the oldest message (`"sliding"`) or drops the newest (`"dropping"`); drops are counted.
 *
 * @example
 * ```ts
 * import { IncomingQueue } from "effect-mqtt"
 *
 * // the latest reading first; keep the 100 newest
 * const queue = IncomingQueue.lifo(100, { overflow: "sliding" })
 * ```
 *
 * @since 0.2.0
 * @category constructors
 */
export const lifo = (
  capacity: number,
  options?: { readonly overflow?: "suspend" | "sliding" | "dropping" | undefined }
): LifoStrategy => ({ _tag: "Lifo", capacity, overflow: options?.overflow ?? "suspend" })

/**
 * The default strategy: {@link bounded} with a capacity of 1,024 messages.
 *
 * @since 0.1.0
 * @category constructors
 */
export const defaultStrategy: FifoStrategy = bounded(1024)

/**
 * A running queue of a strategy: the queue behind `MqttClient.messages` and each `subscription()` stream.
 * Exported for tests and custom consumers.
 *
 * @since 0.1.0
 * @category models
 */
export interface IncomingQueue<A, E> {
  /**
   * Adds messages in order. Waits while a suspending queue (bounded, priority, `lifo` with `"suspend"`) is
   * full; never waits for the other kinds. `progress.accepted` counts the messages dealt with so far (a dropped
   * message counts), so a caller interrupted while waiting knows which messages the queue holds.
   */
  readonly offerAll: (messages: ReadonlyArray<A>, progress?: Progress) => Effect.Effect<void>
  /** Adds, in order, the messages that can be dealt with now without waiting; `progress.accepted` counts them. */
  readonly offerAllUnsafe: (messages: ReadonlyArray<A>, progress: Progress) => void
  /**
   * The messages as a stream shared by all its consumers: each message goes to one of them. Each pull takes one
   * message, so a consumer that stops leaves the others queued.
   */
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
 * How many messages of an `offerAll` the queue has dealt with so far.
 *
 * @since 0.1.0
 * @category models
 */
export interface Progress {
  /** The number of messages taken so far, counted up by the queue. */
  accepted: number
}

/**
 * Makes a queue with the given strategy. A strategy that `MqttClient.make` would refuse (from untyped code, or a
 * capacity that is not a positive whole number, as `bounded(-1)`) fails with `InvalidOptionError` (option
 * `"queue"`).
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = <A, E>(
  strategy: Strategy<A>
): Effect.Effect<IncomingQueue<A, E>, MqttError.InvalidOptionError> =>
  Effect.suspend(() => {
    const problem = strategyProblem(strategy)
    if (problem !== undefined) {
      return Effect.fail(new MqttError.InvalidOptionError({ option: "queue", reason: problem }))
    }
    const queue = fromStrategy<A, E>(strategy)
    return Effect.succeed(
      {
        offerAll: (messages, progress) => queue.offerAll(messages, progress),
        offerAllUnsafe: (messages, progress) => queue.offerUnsafe(messages, progress),
        stream: queue.stream,
        end: Effect.sync(() => queue.end()),
        fail: (error) => Effect.sync(() => queue.fail(error)),
        dropped: Effect.sync(() => queue.dropped),
        size: Effect.sync(() => queue.size)
      } satisfies IncomingQueue<A, E>
    )
  })
