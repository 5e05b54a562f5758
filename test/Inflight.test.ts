import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { Inflight } from "../src/internal/inflight.ts"
import { ConnectionLostError } from "../src/MqttError.ts"

describe("Inflight (packet identifiers and send quota)", () => {
  it.effect("hands out all 65,535 identifiers once each, never 0, then makes the next caller wait", () =>
    Effect.gen(function*() {
      const inflight = new Inflight()
      const seen = new Set<number>()
      for (let i = 0; i < 65535; i++) seen.add(yield* inflight.acquire(true))
      expect(seen.size).toBe(65535)
      expect(seen.has(0)).toBe(false)
      expect(Math.max(...seen)).toBe(65535)
      const waiting = yield* Effect.forkChild(inflight.acquire(true))
      yield* Effect.yieldNow
      expect(waiting.pollUnsafe()).toBeUndefined()
      inflight.release(4242, true)
      expect(yield* Fiber.join(waiting)).toBe(4242)
    }))

  it.effect("does not reuse an identifier still in flight after wrapping around", () =>
    Effect.gen(function*() {
      const inflight = new Inflight()
      const kept = yield* inflight.acquire(true) // 1 stays in flight
      for (let i = 0; i < 70_000; i++) {
        const id = yield* inflight.acquire(true)
        expect(id).not.toBe(kept)
        inflight.release(id, true)
      }
    }))

  it.effect("a quota (Receive Maximum) limits publishes but not subscribes", () =>
    Effect.gen(function*() {
      const inflight = new Inflight(2)
      const a = yield* inflight.acquire(true)
      yield* inflight.acquire(true)
      const third = yield* Effect.forkChild(inflight.acquire(true))
      yield* Effect.yieldNow
      expect(third.pollUnsafe()).toBeUndefined()
      // a SUBSCRIBE only needs an identifier
      const sub = yield* inflight.acquire(false)
      expect(inflight.publishes).toBe(2)
      inflight.release(sub, false)
      yield* Effect.yieldNow
      expect(third.pollUnsafe()).toBeUndefined()
      inflight.release(a, true)
      yield* Fiber.join(third)
      expect(inflight.publishes).toBe(2)
    }))

  it.effect("waiters are served in arrival order", () =>
    Effect.gen(function*() {
      const inflight = new Inflight(1)
      const first = yield* inflight.acquire(true)
      const order: Array<string> = []
      const fibers = yield* Effect.forEach(["a", "b", "c"], (name) =>
        Effect.forkChild(Effect.tap(inflight.acquire(true), (id) =>
          Effect.sync(() => {
            order.push(name)
            inflight.release(id, true)
          }))))
      yield* Effect.yieldNow
      inflight.release(first, true)
      yield* Fiber.joinAll(fibers)
      expect(order).toEqual(["a", "b", "c"])
    }))

  it.effect("an interrupted waiter leaves the line and leaks nothing", () =>
    Effect.gen(function*() {
      const inflight = new Inflight(1)
      const first = yield* inflight.acquire(true)
      const waiter = yield* Effect.forkChild(inflight.acquire(true))
      yield* Effect.yieldNow
      yield* Fiber.interrupt(waiter)
      expect(inflight.waiting).toBe(0)
      inflight.release(first, true)
      expect(inflight.publishes).toBe(0)
      expect(inflight.size).toBe(0)
    }))

  it.effect("failWaiters fails every waiting caller with the error", () =>
    Effect.gen(function*() {
      const inflight = new Inflight(1)
      yield* inflight.acquire(true)
      const waiter = yield* Effect.forkChild(inflight.acquire(true))
      yield* Effect.yieldNow
      inflight.failWaiters(new ConnectionLostError({ reason: "test" }))
      const error = yield* Effect.flip(Fiber.join(waiter))
      expect(error._tag).toBe("ConnectionLostError")
    }))
})
