import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Order, Scheduler, Stream } from "effect"
import { IncomingQueue } from "effect-mqtt"
import { fromStrategy, type MessageQueue, strategyProblem } from "../src/internal/queue.ts"
import { pausedScheduler } from "./support/pausedScheduler.ts"

const drain = <A>(queue: IncomingQueue.IncomingQueue<A, string>) =>
  Effect.andThen(queue.end, Stream.runCollect(queue.stream))

describe("IncomingQueue", () => {
  it.effect("bounded keeps order and makes the producer wait while full, dropping nothing", () =>
    Effect.gen(function*() {
      const queue = yield* IncomingQueue.make<number, string>(IncomingQueue.bounded(3))
      const producer = yield* Effect.forkChild(queue.offerAll([1, 2, 3, 4, 5]))
      yield* Effect.yieldNow
      expect(producer.pollUnsafe()).toBeUndefined()
      expect(yield* queue.size).toBe(3)
      const consumer = yield* Effect.forkChild(Stream.runCollect(Stream.take(queue.stream, 5)))
      yield* Fiber.join(producer)
      expect(yield* Fiber.join(consumer)).toEqual([1, 2, 3, 4, 5])
      expect(yield* queue.dropped).toBe(0)
    }))

  it.effect("a waiting producer is woken once the queue is down to half its capacity, not for every free place", () =>
    Effect.gen(function*() {
      const queue = yield* IncomingQueue.make<number, string>(IncomingQueue.bounded(8))
      const items = Array.from({ length: 16 }, (_, i) => i)
      const progress = { accepted: 0 }
      const producer = yield* Effect.forkChild(queue.offerAll(items, progress))
      yield* Effect.yieldNow
      expect(progress.accepted).toBe(8)
      // one message at a time, as a stream's pulls take them
      const takeOne = Stream.runHead(queue.stream)
      for (let taken = 1; taken <= 3; taken++) {
        yield* takeOne
        yield* Effect.yieldNow
        // 7, 6, 5 left: the producer waits on
        expect(progress.accepted).toBe(8)
        expect(yield* queue.size).toBe(8 - taken)
      }
      yield* takeOne
      yield* Effect.yieldNow
      // 4 left (half of 8): the producer fills the queue again in one go
      expect(progress.accepted).toBe(12)
      expect(yield* queue.size).toBe(8)
      const consumer = yield* Effect.forkChild(Stream.runCollect(Stream.take(queue.stream, 12)))
      yield* Fiber.join(producer)
      expect(yield* Fiber.join(consumer)).toEqual(items.slice(4))
    }))

  it.effect("sliding drops the oldest messages and counts them", () =>
    Effect.gen(function*() {
      const queue = yield* IncomingQueue.make<number, string>(IncomingQueue.sliding(3))
      yield* queue.offerAll([1, 2])
      yield* queue.offerAll([3, 4, 5, 6])
      expect(yield* queue.dropped).toBe(3)
      expect(yield* drain(queue)).toEqual([4, 5, 6])
    }))

  it.effect("dropping drops the newest messages and counts them", () =>
    Effect.gen(function*() {
      const queue = yield* IncomingQueue.make<number, string>(IncomingQueue.dropping(3))
      yield* queue.offerAll([1, 2])
      yield* queue.offerAll([3, 4, 5, 6])
      expect(yield* queue.dropped).toBe(3)
      expect(yield* drain(queue)).toEqual([1, 2, 3])
    }))

  it.effect("unbounded never waits and never drops", () =>
    Effect.gen(function*() {
      const queue = yield* IncomingQueue.make<number, string>(IncomingQueue.unbounded)
      const items = Array.from({ length: 10_000 }, (_, i) => i)
      yield* queue.offerAll(items)
      expect(yield* queue.dropped).toBe(0)
      expect(yield* drain(queue)).toEqual(items)
    }))

  it.effect("priority hands out the lowest priority number first, ties in arrival order", () =>
    Effect.gen(function*() {
      const queue = yield* IncomingQueue.make<{ topic: string; n: number }, string>(
        IncomingQueue.priority({ capacity: 100, priority: (m) => m.topic.startsWith("humidity/") ? 0 : 1 })
      )
      yield* queue.offerAll([
        { topic: "temperature/a", n: 1 },
        { topic: "humidity/a", n: 2 },
        { topic: "temperature/b", n: 3 },
        { topic: "humidity/b", n: 4 },
        { topic: "humidity/c", n: 5 }
      ])
      expect((yield* drain(queue)).map((m) => m.n)).toEqual([2, 4, 5, 1, 3])
    }))

  it.effect("priority with an Order sorts like a heap sort and stays stable", () =>
    Effect.gen(function*() {
      const queue = yield* IncomingQueue.make<readonly [number, number], string>(
        IncomingQueue.priority({ capacity: 1000, order: Order.mapInput(Order.Number, (x) => x[0]) })
      )
      const items = Array.from({ length: 500 }, (_, i) => [(i * 7919) % 13, i] as const)
      yield* queue.offerAll(items)
      const expected = [...items].sort((a, b) => a[0] - b[0] || a[1] - b[1])
      expect(yield* drain(queue)).toEqual(expected)
    }))

  it.effect("priority is bounded: the producer waits while it is full", () =>
    Effect.gen(function*() {
      const queue = yield* IncomingQueue.make<number, string>(
        IncomingQueue.priority({ capacity: 2, priority: (n: number) => -n })
      )
      const producer = yield* Effect.forkChild(queue.offerAll([1, 2, 3, 4]))
      yield* Effect.yieldNow
      expect(producer.pollUnsafe()).toBeUndefined()
      expect(yield* queue.size).toBe(2)
      const consumer = yield* Effect.forkChild(Stream.runCollect(Stream.take(queue.stream, 4)))
      yield* Fiber.join(producer)
      const taken = yield* Fiber.join(consumer)
      expect([...taken].sort()).toEqual([1, 2, 3, 4])
      // the first two were queued together, so the larger came out first
      expect(taken[0]).toBe(2)
    }))

  it.effect("fail ends the stream with the error after the queued messages", () =>
    Effect.gen(function*() {
      const strategies: Array<IncomingQueue.Strategy<number>> = [
        IncomingQueue.bounded(10),
        IncomingQueue.priority({ capacity: 10, priority: () => 0 })
      ]
      for (const strategy of strategies) {
        const queue = yield* IncomingQueue.make<number, string>(strategy)
        yield* queue.offerAll([1, 2])
        yield* queue.fail("connection lost")
        const seen: Array<number> = []
        const error = yield* Effect.flip(Stream.runForEach(queue.stream, (n) => Effect.sync(() => seen.push(n))))
        expect(error).toBe("connection lost")
        expect(seen).toEqual([1, 2])
      }
    }))

  it.effect("several consumers share one queue: each message goes to exactly one of them", () =>
    Effect.gen(function*() {
      const queue = yield* IncomingQueue.make<number, string>(IncomingQueue.bounded(16))
      const seen: Array<Array<number>> = [[], []]
      const consumers = yield* Effect.forEach(
        [0, 1],
        (i) => Effect.forkChild(Stream.runForEach(queue.stream, (n) => Effect.sync(() => seen[i].push(n))))
      )
      const items = Array.from({ length: 1000 }, (_, i) => i)
      for (let i = 0; i < items.length; i += 10) {
        yield* queue.offerAll(items.slice(i, i + 10))
        yield* Effect.yieldNow
      }
      yield* queue.end
      yield* Fiber.joinAll(consumers)
      expect([...seen[0], ...seen[1]].sort((a, b) => a - b)).toEqual(items)
    }))

  it.effect("interrupted consumers leave the line; the rest get the messages, one each, in the order they came", () =>
    Effect.gen(function*() {
      const queue = yield* IncomingQueue.make<number, string>(IncomingQueue.bounded(16))
      const takeOne = Stream.runHead(queue.stream)
      const consumers = yield* Effect.forEach(Array.from({ length: 6 }), () => Effect.forkChild(takeOne))
      yield* Effect.yieldNow
      // the first, the last and one in the middle stop waiting
      yield* Fiber.interruptAll([consumers[0], consumers[3], consumers[5]])
      yield* queue.offerAll([10, 20, 30, 40])
      const got = yield* Effect.forEach([consumers[1], consumers[2], consumers[4]], (fiber) => Fiber.join(fiber))
      expect(got.map((head) => head._tag === "Some" ? head.value : undefined)).toEqual([10, 20, 30])
      expect(yield* queue.size).toBe(1)
    }))

  it.effect("an interrupted producer leaves the line; a producer waiting behind it still gets its turn", () =>
    Effect.gen(function*() {
      const queue = yield* IncomingQueue.make<number, string>(IncomingQueue.bounded(2))
      yield* queue.offerAll([1, 2])
      const first = yield* Effect.forkChild(queue.offerAll([3]))
      const second = yield* Effect.forkChild(queue.offerAll([4]))
      yield* Effect.yieldNow
      yield* Fiber.interrupt(first)
      const consumer = yield* Effect.forkChild(Stream.runCollect(Stream.take(queue.stream, 3)))
      yield* Fiber.join(second)
      expect(yield* Fiber.join(consumer)).toEqual([1, 2, 4])
    }))

  it.effect("a priority function that throws loses nothing and wakes the consumer: the messages it compared keep their arrival order", () =>
    Effect.gen(function*() {
      const queue = yield* IncomingQueue.make<number, string>(IncomingQueue.priority({
        capacity: 10,
        priority: (n: number) => {
          if (n === 3) throw new Error("bad priority")
          return -n
        }
      }))
      const consumer = yield* Effect.forkChild(Stream.runCollect(Stream.take(queue.stream, 6)))
      yield* Effect.yieldNow
      yield* queue.offerAll([1, 2, 3, 4, 5, 6])
      const got = yield* Fiber.join(consumer)
      expect([...got].sort((a, b) => a - b)).toEqual([1, 2, 3, 4, 5, 6])
    }))
})

describe("a priority strategy without its function", () => {
  it("is refused, naming both options it may take", () => {
    expect(strategyProblem(IncomingQueue.priority({ capacity: 3 } as never))).toBe(
      "a priority queue needs a `priority` function or an `order` (IncomingQueue.priority)"
    )
  })
})

describe("a wait never misses the change that ends it", () => {
  /**
   * A fiber can pause (yield to the scheduler) between any two steps, every `MaxOpsBeforeYield` operations. Each
   * wait of the queue is run with every budget from 3 to 60 (at 2 a fiber makes no progress: it pauses again
   * before each step) on a scheduler whose pauses this test ends by hand (`pausedScheduler`); the change (a message, the end, room, a key let go) is made at the wait's first pause. A wait that looked
   * before the pause and joined its line after it would miss the change and wait for good.
   */
  const sweep = <A>(
    wait: (queue: MessageQueue<number, never>) => Effect.Effect<A, unknown>,
    change: (queue: MessageQueue<number, never>) => void,
    prepare: (queue: MessageQueue<number, never>) => void = () => {}
  ) => {
    const stuck: Array<number> = []
    for (let budget = 3; budget <= 60; budget++) {
      const { scheduler, settle } = pausedScheduler()
      const queue: MessageQueue<number, never> = fromStrategy(IncomingQueue.bounded(4))
      prepare(queue)
      const fiber = Effect.runFork(Effect.provideService(wait(queue), Scheduler.MaxOpsBeforeYield, budget), {
        scheduler
      })
      change(queue)
      settle()
      if (fiber.pollUnsafe() === undefined) stuck.push(budget)
      else fiber.interruptUnsafe()
    }
    expect(stuck).toEqual([])
  }

  it("a take: a message comes, or the queue ends", () => {
    sweep((queue) => queue.take, (queue) => queue.offerUnsafe([1], { accepted: 0 }))
    sweep((queue) => Effect.exit(queue.take), (queue) => queue.end())
  })

  it("a keyed take (takeFirst): a message comes, the queue ends, or the predicate changes and `wake` is called", () => {
    sweep((queue) => queue.takeFirst(() => true), (queue) => queue.offerUnsafe([1], { accepted: 0 }))
    sweep((queue) => Effect.exit(queue.takeFirst(() => true)), (queue) => queue.end())
    let allowed = false
    sweep(
      (queue) => queue.takeFirst(() => allowed),
      (queue) => {
        allowed = true
        queue.wake()
      },
      (queue) => {
        allowed = false
        queue.offerUnsafe([1], { accepted: 0 })
      }
    )
  })

  it("a producer waiting for room: a consumer takes", () => {
    sweep(
      (queue) => queue.offerAll([5]),
      (queue) => {
        queue.poll()
        queue.poll()
        queue.poll()
      },
      (queue) => queue.offerUnsafe([1, 2, 3, 4], { accepted: 0 })
    )
  })
})

describe("a Stream consumer stopped at any pause", () => {
  /**
   * A fiber pauses every `MaxOpsBeforeYield` operations, and a stop (interruption, a timeout) lands in a pause. With
   * every budget from 12 to 60 and a stop at each of the consumer's first 12 pauses (on a scheduler whose pauses
   * this test ends by hand), every message taken from the queue (acknowledged, with acknowledgement on hand-over)
   * was handed to the handler: the pull pauses first when less than half the budget is left (below 12, the stream's
   * own steps between the take and the handler are more than half the budget).
   */
  const sweep = (
    name: string,
    consume: (stream: Stream.Stream<number>, seen: Array<number>) => Effect.Effect<unknown>
  ) =>
    it(`${name}: a message taken is a message handled`, () => {
      const problems: Array<string> = []
      for (let budget = 12; budget <= 60; budget++) {
        for (let stopAt = 0; stopAt < 12; stopAt++) {
          const { scheduler, settle, step } = pausedScheduler()
          const queue: MessageQueue<number, never> = fromStrategy(IncomingQueue.bounded(100))
          queue.offerUnsafe([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], { accepted: 0 })
          const seen: Array<number> = []
          const fiber = Effect.runFork(
            Effect.provideService(consume(queue.stream, seen), Scheduler.MaxOpsBeforeYield, budget),
            { scheduler }
          )
          for (let pause = 0; pause < stopAt && step(); pause++) {
            // the consumer goes on to its next pause
          }
          fiber.interruptUnsafe()
          settle()
          if (queue.taken !== seen.length) {
            problems.push(`budget ${budget}, stopped at pause ${stopAt}: ${queue.taken} taken, ${seen.length} handled`)
          }
        }
      }
      expect(problems).toEqual([])
    })
  sweep("Stream.runForEach", (stream, seen) => Stream.runForEach(stream, (n) => Effect.sync(() => seen.push(n))))
  sweep(
    "Stream.runForEach, a handler of two steps",
    (stream, seen) => Stream.runForEach(stream, (n) => Effect.andThen(Effect.void, Effect.sync(() => seen.push(n))))
  )
  sweep(
    "Stream.take, then Stream.runForEach",
    (stream, seen) => Stream.runForEach(Stream.take(stream, 20), (n) => Effect.sync(() => seen.push(n)))
  )
})
