/**
 * Handles the messages of a queue one at a time per key (the topic, say) and several keys at once, taking a
 * message only when its handler can start. A message whose key is busy, or that comes while `concurrency`
 * handlers run, stays in the queue: untaken, so unacknowledged. A runner that stops (interrupted, a timeout) takes
 * nothing it does not hand to a handler, which `Stream.groupByKey` does (it pulls ahead into a buffer per key,
 * and Effect 4.1's drains its source while it is interrupted under `Stream.mapEffect`).
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberSet from "effect/FiberSet"
import type * as MqttClient from "../MqttClient.ts"
import * as MqttError from "../MqttError.ts"
import type { MqttMessage } from "../MqttMessage.ts"
import type { MessageQueue } from "./queue.ts"

/**
 * Runs `handler` for each message of `queue` until the queue ends (then waits for the handlers that run), in the
 * queue's order per key. Fails with the queue's error, or the first handler's failure: the handlers that run then
 * are interrupted (their messages were taken, as with any consumer that stops).
 */
export const runByKey = <A, E, K, E2, R>(
  queue: MessageQueue<A, E>,
  key: (a: A) => K,
  handler: (a: A) => Effect.Effect<unknown, E2, R>,
  concurrency: number
): Effect.Effect<void, E | E2, R> =>
  Effect.scoped(Effect.gen(function*() {
    const busy = new Set<K>()
    const handlers = yield* FiberSet.make<unknown, E2>()
    // each message's key once: a message is looked at at every wake-up while it waits
    const keys = new WeakMap<object, K>()
    const keyOf = (a: A): K => {
      if (typeof a !== "object" || a === null) return key(a)
      if (keys.has(a)) return keys.get(a)!
      const k = key(a)
      keys.set(a, k)
      return k
    }
    const eligible = (a: A) => !busy.has(keyOf(a))
    // once a handler failed, nothing more is taken: the runner fails (`FiberSet.join`), and a message taken now
    // would go to a handler interrupted at once
    let failed = false
    const free = () => !failed && busy.size < concurrency
    const done = (k: K) => (exit: Exit.Exit<unknown, unknown>) =>
      Effect.sync(() => {
        if (Exit.isFailure(exit) && !Cause.hasInterruptsOnly(exit.cause)) failed = true
        busy.delete(k)
        // the key's next message, or any while the concurrency was reached, may be taken now
        queue.wake()
      })
    // the take and the hand-over to the handler's fiber are one uninterruptible step with no wait in it: a stop
    // interrupts the wait before it (which takes nothing), never a message between the two
    const step: Effect.Effect<boolean, E, R> = Effect.uninterruptible(Effect.suspend(() => {
      if (!free()) return Effect.succeed(true)
      // a durable session's wait before a take (see `MessageQueue.gate`): interruptible, and nothing is taken
      // before it; the loop then looks again
      const gated = queue.gatedFirst(eligible)
      if (gated !== undefined) return Effect.as(Effect.interruptible(gated), true)
      const message = queue.pollFirst(eligible)
      if (message === undefined) {
        if (!queue.isOver) return Effect.succeed(true)
        return Effect.catchIf(queue.over, Cause.isDone, () => Effect.succeed(false))
      }
      const k = keyOf(message)
      busy.add(k)
      const handled = Effect.onExit(Effect.suspend(() => handler(message)), done(k))
      return Effect.as(FiberSet.run(handlers, Effect.interruptible(handled)), true)
    }))
    const loop = Effect.gen(function*() {
      do {
        // at the concurrency, or with nothing eligible, nothing is taken until a handler ends or a message comes
        yield* queue.awaitFirst(free, eligible)
      } while (yield* step)
      yield* FiberSet.awaitEmpty(handlers)
    })
    yield* Effect.raceFirst(loop, FiberSet.join(handlers))
  }))

const byTopic = (message: MqttMessage): string => message.topic

/** Why `options` are not options of `runForEachByKey` (from untyped code too), or `undefined`. */
const optionsProblem = (options: MqttClient.ByKeyOptions | undefined): MqttError.InvalidOptionError | undefined => {
  const concurrency = options?.concurrency
  if (concurrency !== undefined && concurrency !== "unbounded" && !(Number.isInteger(concurrency) && concurrency > 0)) {
    return new MqttError.InvalidOptionError({
      option: "concurrency",
      reason: `expected a positive integer or "unbounded", got ${String(concurrency)}`
    })
  }
  if (options?.key !== undefined && typeof options.key !== "function") {
    return new MqttError.InvalidOptionError({ option: "key", reason: "expected a function of the message" })
  }
  return undefined
}

/** `MqttClient.runForEachByKey` on the queue of `messages`. */
export const runForEachByKey = <E, R>(
  queue: MessageQueue<MqttMessage, MqttError.MqttError>,
  handler: (message: MqttMessage) => Effect.Effect<unknown, E, R>,
  options: MqttClient.ByKeyOptions | undefined
): Effect.Effect<void, MqttError.MqttError | E, R> =>
  Effect.suspend(() => {
    const problem = optionsProblem(options)
    if (problem !== undefined) return Effect.fail(problem)
    const concurrency = options?.concurrency
    return runByKey(
      queue,
      options?.key ?? byTopic,
      handler,
      concurrency === undefined || concurrency === "unbounded" ? Infinity : concurrency
    )
  })
