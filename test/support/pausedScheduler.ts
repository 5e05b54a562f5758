/**
 * A scheduler whose pauses a test ends by hand: a fiber that yields (every `MaxOpsBeforeYield` operations, or to
 * wait for the scheduler) is resumed only by `step` or `settle`, so a test can act at any pause of a fiber.
 */
import { Scheduler } from "effect"

export interface PausedScheduler {
  readonly scheduler: Scheduler.Scheduler
  /** Ends the next pause; false when none waits. */
  readonly step: () => boolean
  /** Ends pauses until none is left; false when some are still left after 10,000 (a fiber that spins). */
  readonly settle: () => boolean
}

export const pausedScheduler = (): PausedScheduler => {
  const paused: Array<() => void> = []
  const scheduler = new Scheduler.MixedScheduler("async", (f) => {
    paused.push(f)
    return () => {}
  })
  const step = () => {
    const next = paused.shift()
    next?.()
    return next !== undefined
  }
  const settle = () => {
    for (let i = 0; i < 10_000 && step(); i++) {
      // ends one pause per turn
    }
    return paused.length === 0
  }
  return { scheduler, step, settle }
}
