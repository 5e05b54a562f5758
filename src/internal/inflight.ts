import * as Effect from "effect/Effect"
import type * as MqttError from "../MqttError.ts"

/**
 * Packet identifiers and the send quota, owned by one client.
 *
 * An identifier is never handed out twice while it is in flight. QoS 1 and 2 publishes also take one unit of
 * the quota (the broker's Receive Maximum); SUBSCRIBE and UNSUBSCRIBE only take an identifier. Callers that
 * cannot proceed wait in arrival order; a waiter that is interrupted leaves the line.
 */
export class Inflight {
  private readonly used = new Uint8Array(65536)
  private next = 1
  private count = 0
  private publishing = 0
  private quota: number
  private readonly waiters: Array<Waiter> = []

  constructor(quota = 65535) {
    this.quota = quota
  }

  /** The number of identifiers in use. */
  get size(): number {
    return this.count
  }

  /** The number of QoS 1/2 publishes holding a unit of the quota. */
  get publishes(): number {
    return this.publishing
  }

  /** The number of callers waiting for an identifier or quota. */
  get waiting(): number {
    return this.waiters.length
  }

  /** Sets the quota (the Receive Maximum of a new connection) and wakes whoever now fits. */
  setQuota(quota: number): void {
    this.quota = quota
    this.wake()
  }

  /** Takes an identifier at once, or returns 0. Honors callers already waiting. */
  tryAcquire(publish: boolean): number {
    if (this.waiters.length > 0) return 0
    return this.take(publish)
  }

  /** Takes an identifier, waiting for one (and, for a publish, for quota) when none is free. */
  acquire(publish: boolean): Effect.Effect<number, MqttError.MqttError> {
    return Effect.suspend(() => {
      const id = this.tryAcquire(publish)
      if (id !== 0) return Effect.succeed(id)
      const waiter: Waiter = { publish, id: 0, resume: undefined }
      return Effect.onInterrupt(
        Effect.callback<number, MqttError.MqttError>((resume) => {
          waiter.resume = resume
          this.waiters.push(waiter)
        }),
        () =>
          Effect.sync(() => {
            const index = this.waiters.indexOf(waiter)
            if (index >= 0) this.waiters.splice(index, 1)
            // handed an identifier, then interrupted before using it
            else if (waiter.id !== 0) this.release(waiter.id, publish)
          })
      )
    })
  }

  /** Marks an identifier taken (used when a session is restored). */
  claim(id: number, publish: boolean): void {
    if (this.used[id] === 1) return
    this.used[id] = 1
    this.count++
    if (publish) this.publishing++
  }

  /** Frees an identifier and hands it, or the quota, to the first waiters that can use it. */
  release(id: number, publish: boolean): void {
    if (this.used[id] === 0) return
    this.used[id] = 0
    this.count--
    if (publish) this.publishing--
    this.wake()
  }

  /** Whether an identifier is in use. */
  has(id: number): boolean {
    return this.used[id] === 1
  }

  /** Fails every waiting caller: the connection is gone. */
  failWaiters(error: MqttError.MqttError): void {
    const failure = Effect.fail(error)
    for (const waiter of this.waiters.splice(0)) waiter.resume?.(failure)
  }

  private wake(): void {
    for (let i = 0; i < this.waiters.length;) {
      const waiter = this.waiters[i]
      const id = this.take(waiter.publish)
      if (id === 0) {
        // no identifier at all: nobody behind can proceed either
        if (this.count >= 65535) return
        i++
        continue
      }
      this.waiters.splice(i, 1)
      waiter.id = id
      waiter.resume?.(Effect.succeed(id))
    }
  }

  private take(publish: boolean): number {
    if (this.count >= 65535) return 0
    if (publish && this.publishing >= this.quota) return 0
    let id = this.next
    while (this.used[id] === 1) id = id === 65535 ? 1 : id + 1
    this.used[id] = 1
    this.count++
    if (publish) this.publishing++
    this.next = id === 65535 ? 1 : id + 1
    return id
  }
}

interface Waiter {
  readonly publish: boolean
  id: number
  resume: ((result: Effect.Effect<number, MqttError.MqttError>) => void) | undefined
}
