/**
 * The outbox between the session and the writer fiber: what one synchronous run pushes goes out as one batch.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { Outbox } from "../src/internal/outbox.ts"
import * as MqttError from "../src/MqttError.ts"

/** A writer fiber that records its batches, as connection.ts's write loop does (without a socket). */
const recordingWriter = (outbox: Outbox, batches: Array<ReadonlyArray<number>>) =>
  Effect.forever(Effect.map(outbox.take, (batch) => {
    batches.push(batch.map((bytes) => bytes[0]))
    outbox.written()
  }))

describe("Outbox", () => {
  it.effect("packets pushed in one synchronous run wake an idle writer once: one batch, in order", () =>
    Effect.gen(function*() {
      const outbox = new Outbox(1 << 20, () => {})
      const batches: Array<ReadonlyArray<number>> = []
      outbox.attach()
      const writer = yield* Effect.forkChild(recordingWriter(outbox, batches))
      yield* Effect.yieldNow
      outbox.push(Uint8Array.of(1))
      outbox.pushAll([Uint8Array.of(2), Uint8Array.of(3)])
      outbox.push(Uint8Array.of(4))
      // nothing is written within the run that pushed
      expect(batches).toEqual([])
      yield* outbox.flushed
      expect(batches).toEqual([[1, 2, 3, 4]])
      outbox.push(Uint8Array.of(5))
      yield* outbox.flushed
      expect(batches).toEqual([[1, 2, 3, 4], [5]])
      yield* Fiber.interrupt(writer)
    }))

  it.effect("closing queues the DISCONNECT behind what waits, drops later pushes, and the writer still writes them", () =>
    Effect.gen(function*() {
      const outbox = new Outbox(1 << 20, () => {})
      const batches: Array<ReadonlyArray<number>> = []
      outbox.attach()
      const writer = yield* Effect.forkChild(recordingWriter(outbox, batches))
      yield* Effect.yieldNow
      outbox.push(Uint8Array.of(1))
      outbox.close(new MqttError.ConnectionLostError({ reason: "test" }), Uint8Array.of(0xe0))
      outbox.push(Uint8Array.of(2))
      yield* outbox.flushed
      expect(batches.flat()).toEqual([1, 0xe0])
      yield* Fiber.interrupt(writer)
    }))
})
