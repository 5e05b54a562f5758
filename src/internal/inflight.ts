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
  /** waiting publishes and waiting SUBSCRIBE/UNSUBSCRIBE, each in arrival order */
  private readonly publishWaiters = new Line<Waiter>()
  private readonly otherWaiters = new Line<Waiter>()

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
    return this.publishWaiters.size + this.otherWaiters.size
  }

  /** Sets the quota and wakes whoever now fits. */
  setQuota(quota: number): void {
    this.quota = quota
    this.wake()
  }

  /**
   * Takes an identifier at once, or returns 0. Callers of the same kind already waiting go first; a
   * SUBSCRIBE is never held back by publishes waiting for quota.
   */
  tryAcquire(publish: boolean): number {
    if ((publish ? this.publishWaiters : this.otherWaiters).size > 0) return 0
    return this.take(publish)
  }

  /** Takes an identifier, waiting for one (and, for a publish, for quota) when none is free. */
  acquire(publish: boolean): Effect.Effect<number, MqttError.MqttError> {
    return Effect.suspend(() => {
      const id = this.tryAcquire(publish)
      if (id !== 0) return Effect.succeed(id)
      const waiter: Waiter = { id: 0, cancelled: true, resume: undefined }
      const line = publish ? this.publishWaiters : this.otherWaiters
      return Effect.onInterrupt(
        Effect.callback<number, MqttError.MqttError>((resume) => {
          waiter.resume = resume
          line.push(waiter)
        }),
        () =>
          Effect.sync(() => {
            // handed an identifier, then interrupted before using it: give it back
            if (waiter.id !== 0) this.release(waiter.id, publish)
            else line.cancel(waiter)
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
    for (const line of [this.otherWaiters, this.publishWaiters]) {
      let waiter: Waiter | undefined
      while ((waiter = line.shift()) !== undefined) waiter.resume?.(failure)
    }
  }

  private wake(): void {
    this.serve(this.otherWaiters, false)
    this.serve(this.publishWaiters, true)
  }

  private serve(line: Line<Waiter>, publish: boolean): void {
    while (line.size > 0) {
      const id = this.take(publish)
      if (id === 0) return
      const waiter = line.shift()!
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
  id: number
  cancelled: boolean
  resume: ((result: Effect.Effect<number, MqttError.MqttError>) => void) | undefined
}

/** Something that can leave a {@link Line} before its turn: `cancelled` is true whenever it is not in line. */
export interface Cancellable {
  cancelled: boolean
}

/** A FIFO line with O(1) push and shift; a cancelled item is skipped when reached. */
export class Line<A extends Cancellable> {
  private items: Array<A> = []
  private head = 0
  private live = 0

  get size(): number {
    return this.live
  }

  push(waiter: A): void {
    waiter.cancelled = false
    this.items.push(waiter)
    this.live++
  }

  cancel(waiter: A): void {
    if (waiter.cancelled) return
    waiter.cancelled = true
    this.live--
  }

  shift(): A | undefined {
    while (this.head < this.items.length) {
      const waiter = this.items[this.head++]
      if (this.head > 1024 && this.head * 2 > this.items.length) {
        this.items = this.items.slice(this.head)
        this.head = 0
      }
      if (!waiter.cancelled) {
        this.live--
        waiter.cancelled = true
        return waiter
      }
    }
    return undefined
  }
}
