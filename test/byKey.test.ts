/**
 * `runForEachByKey`: one message at a time per key, several keys at once, and a message taken only when its
 * handler starts, so that a stop leaves every other message in the queue (where `Stream.groupByKey` takes ahead).
 * The queue's keyed take against a model; the runner on a bare queue; the client against Mosquitto.
 */
import { afterAll, assert, beforeAll, describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, Order, Scheduler, Stream } from "effect"
import { IncomingQueue, MqttClient, MqttError, type MqttMessage } from "effect-mqtt"
import * as Crypto from "node:crypto"
import { runByKey } from "../src/internal/byKey.ts"
import { fromStrategy, type MessageQueue } from "../src/internal/queue.ts"
import { type MosquittoHandle, startMosquitto } from "./support/Mosquitto.ts"
import { pausedScheduler } from "./support/pausedScheduler.ts"

/** A small deterministic generator (xorshift), so that a failing sequence can be run again from its seed. */
const random = (seed: number) => {
  let x = seed || 1
  return (n: number) => {
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    return Math.abs(x) % n
  }
}

describe("the queue's keyed take (takeFirst) against a model", () => {
  const kinds = [
    ["FIFO", IncomingQueue.bounded(1000), (line: Array<number>) => line],
    ["LIFO", IncomingQueue.lifo(1000), (line: Array<number>) => [...line].reverse()],
    [
      "priority",
      IncomingQueue.priority<number>({ capacity: 1000, order: Order.mapInput(Order.Number, (n: number) => n % 7) }),
      // by priority (n % 7), ties in arrival order
      (line: Array<number>) =>
        line.map((n, i) => [n, i] as const).sort((a, b) => a[0] % 7 - b[0] % 7 || a[1] - b[1])
          .map(([n]) => n)
    ]
  ] as const

  for (const [name, strategy, order] of kinds) {
    it(`${name}: the first eligible in the queue's order, the others left in place`, () => {
      for (let seed = 1; seed <= 40; seed++) {
        const next = random(seed)
        const queue: MessageQueue<number, never> = fromStrategy(strategy as any)
        const model: Array<number> = []
        let value = 0
        for (let step = 0; step < 300; step++) {
          if (next(3) > 0) {
            queue.offerUnsafe([value], { accepted: 0 })
            model.push(value++)
          } else {
            const k = next(4)
            const eligible = (n: number) => n % 4 !== k
            const expected = order(model).find(eligible)
            // with nothing eligible the take waits (checked below): here only takes that find one
            if (expected === undefined) continue
            const got = Effect.runSync(queue.takeFirst(eligible))
            expect([seed, step, got]).toEqual([seed, step, expected])
            model.splice(model.indexOf(expected), 1)
          }
        }
        // what is left comes out in the queue's order
        const rest: Array<number> = []
        for (let n = queue.poll(); n !== undefined; n = queue.poll()) rest.push(n)
        expect(rest).toEqual(order(model))
      }
    })
  }
})

describe("the keyed take waits", () => {
  it.effect("while nothing is eligible: a new message, or `wake` after the predicate changed, ends the wait", () =>
    Effect.gen(function*() {
      const queue: MessageQueue<number, never> = fromStrategy(IncomingQueue.bounded(10))
      queue.offerUnsafe([2, 4], { accepted: 0 })
      let allowEven = false
      const fiber = yield* Effect.forkChild(queue.takeFirst((n) => allowEven || n % 2 === 1))
      yield* Effect.yieldNow
      expect(fiber.pollUnsafe()).toBeUndefined()
      queue.offerUnsafe([3], { accepted: 0 })
      expect(yield* Fiber.join(fiber)).toBe(3)
      const second = yield* Effect.forkChild(queue.takeFirst((n) => allowEven || n % 2 === 1))
      yield* Effect.yieldNow
      expect(second.pollUnsafe()).toBeUndefined()
      allowEven = true
      queue.wake()
      expect(yield* Fiber.join(second)).toBe(2)
      expect(queue.size).toBe(1)
    }))
})

describe("runByKey on a bare queue", () => {
  it.effect("one at a time per key, in order; at most `concurrency` keys at once; a stop takes nothing more", () =>
    Effect.gen(function*() {
      const queue: MessageQueue<number, never> = fromStrategy(IncomingQueue.bounded(1000))
      queue.offerUnsafe(Array.from({ length: 60 }, (_, i) => i), { accepted: 0 })
      const started: Array<number> = []
      const running = new Map<number, number>()
      let atOnce = 0
      let most = 0
      const gates = new Map<number, Deferred.Deferred<void>>()
      const gate = (n: number) => {
        if (!gates.has(n)) gates.set(n, Deferred.makeUnsafe<void>())
        return gates.get(n)!
      }
      const fiber = yield* Effect.forkChild(runByKey(queue, (n) => n % 5, (n) =>
        Effect.gen(function*() {
          started.push(n)
          running.set(n % 5, (running.get(n % 5) ?? 0) + 1)
          atOnce++
          most = Math.max(most, atOnce)
          assert.strictEqual(running.get(n % 5), 1, `two handlers of key ${n % 5} at once`)
          yield* Deferred.await(gate(n))
          running.set(n % 5, running.get(n % 5)! - 1)
          atOnce--
        }), 3))
      yield* Effect.yieldNow
      // three keys started, their first messages; nothing else taken
      expect(started).toEqual([0, 1, 2])
      expect(queue.size).toBe(57)
      // finishing 0 lets the next eligible go: 3 (key 3), not 5 (key 0 is free again, but 3 comes first)
      yield* Deferred.succeed(gate(0), undefined)
      yield* Effect.yieldNow
      expect(started).toEqual([0, 1, 2, 3])
      yield* Deferred.succeed(gate(1), undefined)
      yield* Effect.yieldNow
      expect(started).toEqual([0, 1, 2, 3, 4])
      // stop: the three running are interrupted; the 55 never started stay, in their order
      yield* Fiber.interrupt(fiber)
      expect(queue.size).toBe(55)
      expect(most).toBe(3)
      const rest: Array<number> = []
      for (let n = queue.poll(); n !== undefined; n = queue.poll()) rest.push(n)
      expect(rest).toEqual(Array.from({ length: 55 }, (_, i) => i + 5))
    }))

  it.effect("ends when the queue ends, after the handlers that run; the first failure ends it", () =>
    Effect.gen(function*() {
      const queue: MessageQueue<number, never> = fromStrategy(IncomingQueue.bounded(100))
      queue.offerUnsafe([1, 2, 3, 4], { accepted: 0 })
      queue.end()
      const handled: Array<number> = []
      yield* runByKey(queue, (n) => n % 2, (n) => Effect.sync(() => handled.push(n)), Infinity)
      expect([...handled].sort()).toEqual([1, 2, 3, 4])

      const failing: MessageQueue<number, never> = fromStrategy(IncomingQueue.bounded(100))
      failing.offerUnsafe([1, 2, 3], { accepted: 0 })
      const exit = yield* Effect.exit(
        runByKey(failing, (n) => n, (n) => n === 2 ? Effect.fail("two") : Effect.never, Infinity)
      )
      assert(Exit.isFailure(exit))
      const error = Exit.findErrorOption(exit)
      expect(error._tag === "Some" ? error.value : undefined).toBe("two")
    }))
})

const runId = Crypto.randomBytes(3).toString("hex")

describe("runByKey stopped at any pause", () => {
  /**
   * A fiber pauses (yields to the scheduler) every `MaxOpsBeforeYield` operations, and a stop can come in any pause.
   * With every budget from 3 to 40 and a stop at each of the runner's first 12 pauses (on a scheduler whose pauses
   * this test ends by hand), every message taken from the queue was handed to a handler that started, and a
   * runner that is not stopped handles every message and ends when the queue ends.
   */
  it("a message taken is a message handled; a runner let run ends", () => {
    const problems: Array<string> = []
    for (let budget = 3; budget <= 40; budget++) {
      for (let stopAt = 0; stopAt <= 12; stopAt++) {
        const { scheduler, settle, step } = pausedScheduler()
        const queue: MessageQueue<number, never> = fromStrategy(IncomingQueue.bounded(100))
        queue.offerUnsafe([1, 2, 3, 4, 5, 6], { accepted: 0 })
        const started: Array<number> = []
        const runner = Effect.runFork(
          Effect.provideService(
            runByKey(queue, (n) => n % 2, (n) => Effect.sync(() => started.push(n)), 2),
            Scheduler.MaxOpsBeforeYield,
            budget
          ),
          { scheduler }
        )
        const stops = stopAt < 12
        for (let pause = 0; pause < stopAt && step(); pause++) {
          // the runner goes on to its next pause
        }
        if (stops) runner.interruptUnsafe()
        else queue.end()
        settle()
        const label = `budget ${budget}, ${stops ? `stopped at pause ${stopAt}` : "not stopped"}`
        if (runner.pollUnsafe() === undefined) problems.push(`${label}: the runner did not end`)
        if (queue.taken !== started.length) problems.push(`${label}: ${queue.taken} taken, ${started.length} handled`)
        if (!stops && started.length !== 6) problems.push(`${label}: ${started.length} of 6 handled`)
      }
    }
    expect(problems).toEqual([])
  })
})

describe("runByKey: what it waits for", () => {
  const manual = pausedScheduler

  it("with every slot busy and the queue ended, it waits for a handler without spinning, then ends", () => {
    const { scheduler, settle } = manual()
    const queue: MessageQueue<number, never> = fromStrategy(IncomingQueue.bounded(10))
    queue.offerUnsafe([1], { accepted: 0 })
    const gate = Deferred.makeUnsafe<void>()
    const runner = Effect.runFork(runByKey(queue, (n) => n, () => Deferred.await(gate), 1), { scheduler })
    expect(settle()).toBe(true)
    queue.end()
    expect(settle()).toBe(true)
    expect(runner.pollUnsafe()).toBeUndefined()
    Deferred.doneUnsafe(gate, Exit.void)
    expect(settle()).toBe(true)
    expect(runner.pollUnsafe()).toEqual(Exit.void)
  })

  it("a runner that waits on an empty queue is its consumer already (what is moved there comes to it)", () => {
    const { scheduler, settle } = manual()
    const queue: MessageQueue<number, never> = fromStrategy(IncomingQueue.bounded(10))
    const runner = Effect.runFork(runByKey(queue, (n) => n, () => Effect.void, 1), { scheduler })
    expect(settle()).toBe(true)
    expect(queue.consumed).toBe(true)
    runner.interruptUnsafe()
    settle()
  })

  it("after a handler fails, nothing more is taken: the rest stays queued, the runner fails", () => {
    for (const concurrency of [1, 2, 3]) {
      for (const failing of [1, 2]) {
        const queue: MessageQueue<number, never> = fromStrategy(IncomingQueue.bounded(10))
        queue.offerUnsafe([1, 2, 3, 4, 5], { accepted: 0 })
        let takenAtFailure = -1
        const handler = (n: number) =>
          n === failing
            ? Effect.andThen(Effect.sync(() => takenAtFailure = queue.taken), Effect.fail("boom"))
            : n < failing
            ? Effect.void
            : Effect.never
        const exit = Effect.runSyncExit(runByKey(queue, (n) => n, handler, concurrency))
        expect(exit).toEqual(Exit.fail("boom"))
        // the handlers that ran were interrupted (their messages taken); none was started after the failure
        expect([concurrency, failing, queue.taken]).toEqual([concurrency, failing, takenAtFailure])
      }
    }
  })
})

describe("a waiter interrupted while the queue wakes its line", () => {
  it("is not put back in the line", () => {
    const queue: MessageQueue<number, never> = fromStrategy(IncomingQueue.bounded(10))
    let second: Fiber.Fiber<unknown, unknown> | undefined = undefined
    const first = Effect.runFork(
      Effect.flatMap(queue.takeFirst(() => true), () => Effect.sync(() => second!.interruptUnsafe()))
    )
    second = Effect.runFork(queue.takeFirst(() => false))
    queue.offerUnsafe([1], { accepted: 0 })
    expect(first.pollUnsafe()).toEqual(Exit.void)
    expect(second!.pollUnsafe()?._tag).toBe("Failure")
    expect((queue as unknown as { takers: Set<unknown> }).takers.size).toBe(0)
  })
})

describe("MqttClient.runForEachByKey against Mosquitto", () => {
  let broker: MosquittoHandle
  beforeAll(async () => {
    broker = await startMosquitto({ protocolConfig: "max_queued_messages 10000" })
  })
  afterAll(() => broker?.dispose())

  for (const version of [4, 5] as const) {
    it.live(`MQTT ${version === 4 ? "3.1.1" : "5"}: serial per topic, 2 topics at once; stopped by a timeout, every message it did not start goes to the next consumer`, () =>
      Effect.gen(function*() {
        const topic = `bykey-${runId}-${version}`
        const publisher = yield* MqttClient.make({ url: broker.url, protocolVersion: version })
        const client = yield* MqttClient.make({
          url: broker.url,
          protocolVersion: version,
          queue: IncomingQueue.bounded(1000)
        })
        yield* client.subscribe(`${topic}/#`, { qos: 1 })
        const all = Array.from({ length: 300 }, (_, i) => String(i))
        yield* Effect.forEach(all, (text, i) => publisher.publish(`${topic}/${i % 3}`, text, { qos: 1 }), {
          discard: true
        })
        const started: Array<string> = []
        const running = new Map<string, number>()
        let atOnce = 0
        let most = 0
        let overlaps = 0
        const last = new Map<string, number>()
        let disorder = 0
        const handle = (message: MqttMessage.MqttMessage) =>
          Effect.gen(function*() {
            started.push(message.text)
            const n = (running.get(message.topic) ?? 0) + 1
            running.set(message.topic, n)
            if (n > 1) overlaps++
            if ((last.get(message.topic) ?? -1) > Number(message.text)) disorder++
            last.set(message.topic, Number(message.text))
            most = Math.max(most, ++atOnce)
            yield* Effect.sleep("10 millis").pipe(
              Effect.ensuring(Effect.sync(() => {
                running.set(message.topic, running.get(message.topic)! - 1)
                atOnce--
              }))
            )
          })
        const first = yield* Effect.forkChild(client.runForEachByKey(handle, { concurrency: 2 }))
        // stop once it is well under way
        while (started.length < 40) yield* Effect.sleep("5 millis")
        yield* Fiber.interrupt(first)
        expect([overlaps, disorder, most]).toEqual([0, 0, 2])
        // the next consumer gets exactly what the first did not start: nothing taken ahead and lost
        const rest = yield* client.messages.pipe(Stream.take(all.length - started.length), Stream.runCollect).pipe(
          Effect.timeout("20 seconds")
        )
        const seen = [...started, ...rest.map((m) => m.text)]
        expect(seen.length).toBe(all.length)
        expect(new Set(seen).size).toBe(all.length)
      }).pipe(Effect.scoped))
  }

  it.live("options that are not options are an InvalidOptionError before anything is taken", () =>
    Effect.gen(function*() {
      const client = yield* MqttClient.make({ url: broker.url })
      for (
        const options of [{ concurrency: 0 }, { concurrency: 1.5 }, { concurrency: "all" }, { key: "topic" }] as const
      ) {
        const error = yield* Effect.flip(client.runForEachByKey(() => Effect.void, options as any))
        assert(error instanceof MqttError.InvalidOptionError, JSON.stringify(options))
      }
    }).pipe(Effect.scoped))
})
