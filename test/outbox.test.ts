/**
 * The outbox (src/internal/outbox.ts) when its connection closes: what was queued before the close is written,
 * the DISCONNECT goes behind it, nothing queued later goes out, and `flushed` waits for the writer (or for its
 * end). The end-to-end form of the same rules is in test/delivery.test.ts ("released at once after ..."). And
 * what one synchronous run pushes goes out as one batch.
 */
import { assert, describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import { Outbox } from "../src/internal/outbox.ts"
import * as MqttError from "../src/MqttError.ts"

const lost = new MqttError.ConnectionLostError({ reason: "closed by the test" })
const packet = (n: number) => Uint8Array.of(n)
const DISCONNECT = Uint8Array.of(0xe0, 0)

/** The bytes of the writer's batches, first bytes only. */
const firstBytes = (batches: ReadonlyArray<ReadonlyArray<Uint8Array>>) => batches.flat().map((bytes) => bytes[0])

describe("Outbox", () => {
  it.effect("close queues the DISCONNECT behind what was queued, and drops what is pushed afterwards", () =>
    Effect.gen(function*() {
      const outbox = new Outbox(1024)
      outbox.attach()
      outbox.push(packet(1))
      outbox.pushAll([packet(2), packet(3)])
      outbox.close(lost, DISCONNECT)
      outbox.push(packet(4))
      outbox.pushAll([packet(5)])
      outbox.close(lost, DISCONNECT)
      const batch = yield* outbox.take
      assert.deepStrictEqual(firstBytes([batch]), [1, 2, 3, 0xe0])
      assert.isTrue(outbox.isClosed)
    }))

  it.effect("flushed waits until the writer has written the last batch", () =>
    Effect.gen(function*() {
      const outbox = new Outbox(1024)
      outbox.attach()
      outbox.push(packet(1))
      const batch = yield* outbox.take
      outbox.close(lost, DISCONNECT)
      const flushed = yield* Effect.forkChild(outbox.flushed)
      yield* Effect.yieldNow
      assert.isUndefined(flushed.pollUnsafe(), "flushed before the first batch was written")
      outbox.written()
      yield* Effect.yieldNow
      assert.isUndefined(flushed.pollUnsafe(), "flushed with the DISCONNECT still queued")
      const last = yield* outbox.take
      assert.deepStrictEqual(firstBytes([batch, last]), [1, 0xe0])
      outbox.written()
      yield* Fiber.join(flushed)
    }))

  it.effect("flushed does not wait for a writer that is gone, or was never there", () =>
    Effect.gen(function*() {
      const unattached = new Outbox(1024)
      unattached.push(packet(1))
      unattached.close(lost, DISCONNECT)
      yield* unattached.flushed

      const outbox = new Outbox(1024)
      outbox.attach()
      outbox.push(packet(1))
      outbox.close(lost, DISCONNECT)
      const flushed = yield* Effect.forkChild(outbox.flushed)
      yield* Effect.yieldNow
      assert.isUndefined(flushed.pollUnsafe())
      outbox.detach()
      yield* Fiber.join(flushed)
    }))

  it.effect("callers waiting for room fail with the close's error; a write after the close fails at once", () =>
    Effect.gen(function*() {
      const outbox = new Outbox(4)
      outbox.attach()
      const waiting = yield* Effect.forkChild(Effect.flip(outbox.write(new Uint8Array(8))))
      yield* Effect.yieldNow
      outbox.close(lost)
      assert.strictEqual(yield* Fiber.join(waiting), lost)
      assert.strictEqual(yield* Effect.flip(outbox.write(packet(1))), lost)
      assert.isUndefined(outbox.backPressure)
    }))
})

/** A writer fiber that records its batches, as connection.ts's write loop does (without a socket). */
const recordingWriter = (outbox: Outbox, batches: Array<ReadonlyArray<number>>) =>
  Effect.forever(Effect.map(outbox.take, (batch) => {
    batches.push(batch.map((bytes) => bytes[0]))
    outbox.written()
  }))

/** An attached outbox whose recording writer is running and waiting for packets. */
const withRecordingWriter = Effect.gen(function*() {
  const outbox = new Outbox(1 << 20)
  const batches: Array<ReadonlyArray<number>> = []
  outbox.attach()
  const writer = yield* Effect.forkChild(recordingWriter(outbox, batches))
  yield* Effect.yieldNow
  return { batches, outbox, writer }
})

describe("Outbox: batching", () => {
  it.effect("packets pushed in one synchronous run wake an idle writer once: one batch, in order", () =>
    Effect.gen(function*() {
      const { batches, outbox, writer } = yield* withRecordingWriter
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
      const { batches, outbox, writer } = yield* withRecordingWriter
      outbox.push(Uint8Array.of(1))
      outbox.close(lost, Uint8Array.of(0xe0))
      outbox.push(Uint8Array.of(2))
      yield* outbox.flushed
      expect(batches.flat()).toEqual([1, 0xe0])
      yield* Fiber.interrupt(writer)
    }))
})

/**
 * A socket written without a fiber (platform.ts's WriteNow), recording its batches; `full` makes it report a
 * full buffer, and `drain()` then calls what the outbox gave it, as Node's `drain` event would; `cancelled` counts
 * the waits for `drain` that the outbox cancelled.
 */
const directSocket = () => {
  const batches: Array<ReadonlyArray<number>> = []
  let pending: (() => void) | undefined
  const socket = {
    batches,
    full: false,
    cancelled: 0,
    write: (batch: ReadonlyArray<Uint8Array>, drained: () => void): (() => void) | undefined => {
      batches.push(batch.map((bytes) => bytes[0]))
      if (!socket.full) return undefined
      pending = drained
      return () => {
        pending = undefined
        socket.cancelled++
      }
    },
    waiting: () => pending !== undefined,
    drain: () => {
      const drained = pending
      pending = undefined
      drained?.()
    }
  }
  return socket
}

const noFailure = (cause: unknown) => {
  throw new Error(`unexpected failure: ${String(cause)}`)
}

/** An attached outbox that writes a `directSocket` without a fiber. */
const directOutbox = (highWaterMark: number) => {
  const socket = directSocket()
  const outbox = new Outbox(highWaterMark)
  outbox.attach()
  outbox.writeDirectly(socket.write, noFailure)
  return { outbox, socket }
}

/** Lets the outbox's microtask run. */
const microtask = Effect.promise(() => Promise.resolve())

describe("Outbox: written without a fiber (writeDirectly)", () => {
  it.effect("what one synchronous run pushes is one batch, written in a microtask, in order", () =>
    Effect.gen(function*() {
      const { outbox, socket } = directOutbox(1 << 20)
      outbox.push(packet(1))
      outbox.pushAll([packet(2), packet(3)])
      expect(socket.batches).toEqual([])
      yield* microtask
      expect(socket.batches).toEqual([[1, 2, 3]])
      outbox.push(packet(4))
      yield* outbox.flushed
      expect(socket.batches).toEqual([[1, 2, 3], [4]])
    }))

  it.effect("nothing is written before writeDirectly; then what was queued goes out first, in order", () =>
    Effect.gen(function*() {
      const socket = directSocket()
      const outbox = new Outbox(1 << 20)
      outbox.attach()
      outbox.push(packet(1))
      yield* microtask
      outbox.writeDirectly(socket.write, noFailure)
      outbox.push(packet(2))
      yield* microtask
      outbox.push(packet(3))
      yield* outbox.flushed
      expect(socket.batches).toEqual([[1, 2], [3]])
    }))

  it.effect("a full socket holds the next batch back until it drains; flushed and callers waiting for room wait too", () =>
    Effect.gen(function*() {
      const { outbox, socket } = directOutbox(4)
      socket.full = true
      outbox.push(new Uint8Array(8).fill(1))
      yield* microtask
      expect(socket.batches).toEqual([[1]])
      assert.isTrue(socket.waiting())
      // the socket has not taken the batch yet: over the high-water mark, a writer waits for room
      const waiting = yield* Effect.forkChild(outbox.write(packet(2)))
      const flushed = yield* Effect.forkChild(outbox.flushed)
      yield* microtask
      yield* Effect.yieldNow
      expect(socket.batches).toEqual([[1]])
      assert.isUndefined(waiting.pollUnsafe(), "room before the socket drained")
      assert.isUndefined(flushed.pollUnsafe(), "flushed before the socket drained")
      socket.full = false
      socket.drain()
      yield* Fiber.join(waiting)
      yield* Fiber.join(flushed)
      expect(socket.batches).toEqual([[1], [2]])
    }))

  it.effect("closing queues the DISCONNECT behind what waits, and it is written; nothing after detach is", () =>
    Effect.gen(function*() {
      const { outbox, socket } = directOutbox(1 << 20)
      outbox.push(packet(1))
      outbox.close(lost, DISCONNECT)
      outbox.push(packet(2))
      yield* outbox.flushed
      expect(socket.batches.flat()).toEqual([1, 0xe0])

      const detached = directSocket()
      const other = new Outbox(1 << 20)
      other.attach()
      other.writeDirectly(detached.write, noFailure)
      other.push(packet(1))
      other.detach()
      yield* microtask
      yield* other.flushed
      expect(detached.batches).toEqual([])
    }))

  it.effect("detaching while the socket is full cancels the wait for its drain; nothing more is written", () =>
    Effect.gen(function*() {
      const { outbox, socket } = directOutbox(1 << 20)
      socket.full = true
      outbox.push(packet(1))
      yield* microtask
      outbox.push(packet(2))
      assert.isTrue(socket.waiting())
      outbox.detach()
      yield* outbox.flushed
      assert.strictEqual(socket.cancelled, 1)
      assert.isFalse(socket.waiting())
      yield* microtask
      expect(socket.batches).toEqual([[1]])
    }))
})
