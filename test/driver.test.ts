/**
 * The driver's wait for room in the session's line of publishes (`awaitLineRoom`): waiters are woken in order,
 * as many as there is room, so that n waiting publishes cost O(n). An earlier version woke every waiter at each
 * acknowledgement, and all but one went back to waiting: 80,000 forked publishes took 24 s instead of 1.4 s.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import type { Deliveries } from "../src/internal/delivery.ts"
import { Driver } from "../src/internal/driver.ts"
import type { ClientMetrics } from "../src/internal/telemetry.ts"
import { ack, Harness, LINE_FULL, message } from "./support/sessionHarness.ts"

const setup = (waiters: number) => {
  // one in flight, one waiting: the line is full
  const h = new Harness({ protocolVersion: 5, maxInflight: 1, offlineCapacity: 1 })
  h.connect()
  h.publish(message("t", "0", 1))
  h.publish(message("t", "1", 1))
  expect(h.publish(message("t", "x", 1))).toBe(LINE_FULL)
  // deliveries and metrics are not reached: nothing is delivered in these steps
  const driver = new Driver(h.session, {} as Deliveries, {} as ClientMetrics, () => {})
  const woken: Array<number> = []
  const fibers = Array.from({ length: waiters }, (_, i) =>
    Effect.runFork(Effect.andThen(
      driver.awaitLineRoom,
      Effect.sync(() => {
        woken.push(i)
        // the woken publish is tried again at once, as the client's publish does
        expect(h.session.publish(message("t", String(i + 2), 1), h.out, driver.readerStalled)).not.toBe(LINE_FULL)
        h.drain()
      })
    )))
  return { h, driver, woken, fibers }
}

/** Acknowledges the publish in flight: the next one takes its identifier, and the line has room for one. */
const acknowledgeOne = (h: Harness) => {
  const inFlight = [...h.session.outgoing.entries()][0]
  h.receive(ack("Puback", inFlight.id))
  h.take()
}

describe("driver: waiting for room in the line of publishes", () => {
  it("each acknowledgement wakes one waiter, the first: the others stay waiting", () => {
    const { h, driver, woken, fibers } = setup(100)
    expect(woken).toEqual([])
    for (let n = 1; n <= 100; n++) {
      acknowledgeOne(h)
      driver.drain()
      expect(woken.length).toBe(n)
    }
    expect(woken).toEqual(Array.from({ length: 100 }, (_, i) => i))
    for (const fiber of fibers) expect(fiber.pollUnsafe()).toBeDefined()
  })

  it("an interrupted waiter gives its turn to the next", () =>
    Effect.gen(function*() {
      const { h, driver, woken, fibers } = setup(3)
      yield* Fiber.interrupt(fibers[0])
      acknowledgeOne(h)
      driver.drain()
      expect(woken).toEqual([1])
      acknowledgeOne(h)
      driver.drain()
      expect(woken).toEqual([1, 2])
    }).pipe(Effect.runPromise))

  it("while the socket's reader waits for room in a full queue, no publish waits: only the reader could read the acknowledgements that make room", () => {
    const { driver, woken } = setup(5)
    driver.stalled(true)
    expect(woken).toEqual([0, 1, 2, 3, 4])
  })

  it("a closed session wakes every waiter (their publishes then fail with the session's error)", () => {
    const { h, driver, woken } = setup(5)
    h.session.close(new (class extends Error {})() as never, driver.out)
    woken.length = 0
    // the woken publishes are tried again: against a closed session they fail at once (not LINE_FULL)
    driver.drain()
    expect(woken.length).toBe(5)
  })
})
