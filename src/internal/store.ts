/**
 * A durable session in a `KeyValueStore`: loading the stored half of the session at start, and writing the
 * session's journal ahead of the packets that depend on it.
 *
 * Layout, under a prefix made of the broker and the client identifier (two clients never share state):
 * `j<number>` segments, one per batch of journal entries (a batch is everything produced while the previous
 * write was in flight: one socket read, or many concurrent publishes: group commit), and `snapshot`, the whole
 * state up to a segment number. Every 512 segments a snapshot is written and the segments it covers removed. A
 * crash between the two leaves segments the snapshot already covers: they are skipped when loading.
 */
import * as Effect from "effect/Effect"
import type * as KeyValueStore from "effect/persistence/KeyValueStore"
import * as Schedule from "effect/Schedule"
import * as MqttError from "../MqttError.ts"
import * as Journal from "./journal.ts"
import type { Outbox } from "./outbox.ts"

/** A store and the name errors give it. */
export interface SessionStore {
  readonly name: string
  readonly kv: KeyValueStore.KeyValueStore
}

/** Segments between snapshots. */
const SEGMENTS_PER_SNAPSHOT = 512

/** The keys of one client's session: by broker and client identifier. */
export const prefixOf = (broker: string, clientId: string): string =>
  `effect-mqtt/v1/${encodeURIComponent(broker)}/${encodeURIComponent(clientId)}/`

const segmentKey = (prefix: string, n: number) => `${prefix}j${n.toString().padStart(12, "0")}`
const snapshotKey = (prefix: string) => `${prefix}snapshot`

const storeError = (
  store: SessionStore,
  operation: "load" | "write" | "clear",
  reason: string,
  key?: string,
  cause?: unknown
) =>
  new MqttError.StoreError({
    store: store.name,
    operation,
    reason,
    ...(key === undefined ? {} : { key }),
    ...(cause === undefined ? {} : { cause })
  })

/** What a store held for a client, ready to restore. */
export interface Loaded {
  readonly image: Journal.Image
  /** the number of the next segment */
  readonly next: number
  /** the segments written since the snapshot */
  readonly segments: ReadonlyArray<number>
}

/**
 * Where a client's session is stored, among the prefixes of the nodes of its `url` list (in the list's order): the
 * first node's, unless it holds nothing and another node's does (the list given in another order than when the
 * session was stored: a shuffled list, a node added in front), so that what the last process accepted is not left
 * behind.
 */
export const locate = (
  store: SessionStore,
  prefixes: readonly [string, ...Array<string>]
): Effect.Effect<string, MqttError.StoreError> =>
  prefixes.length === 1
    ? Effect.succeed(prefixes[0])
    : Effect.map(
      Effect.mapError(store.kv.keys, (e) => storeError(store, "load", e.message, undefined, e)),
      (keys) => prefixes.find((prefix) => keys.some((key) => key.startsWith(prefix))) ?? prefixes[0]
    )

/** Reads the stored session; a corrupt or unreadable entry is a `StoreError` naming the key, never a reset. */
export const load = (store: SessionStore, prefix: string): Effect.Effect<Loaded, MqttError.StoreError> =>
  Effect.gen(function*() {
    const keys = yield* Effect.mapError(store.kv.keys, (e) => storeError(store, "load", e.message, undefined, e))
    const read = (key: string) =>
      Effect.mapError(store.kv.get(key), (e) => storeError(store, "load", e.message, key, e))
    let image = Journal.emptyImage()
    let upTo = 0
    const snapshotText = keys.includes(snapshotKey(prefix)) ? yield* read(snapshotKey(prefix)) : undefined
    if (snapshotText !== undefined) {
      const snapshot = Journal.decodeSnapshot(snapshotText)
      if (typeof snapshot === "string") return yield* storeError(store, "load", snapshot, snapshotKey(prefix))
      image = snapshot.image
      upTo = snapshot.upTo
    }
    const segments = keys
      .filter((key) => key.startsWith(prefix + "j"))
      .map((key) => Number(key.slice(prefix.length + 1)))
      .filter((n) => Number.isInteger(n) && n > upTo)
      .sort((a, b) => a - b)
    for (const n of segments) {
      const key = segmentKey(prefix, n)
      const text = yield* read(key)
      if (text === undefined) continue
      const entries = Journal.decodeSegment(text)
      if (typeof entries === "string") return yield* storeError(store, "load", entries, key)
      Journal.apply(image, entries)
    }
    return { image, next: Math.max(upTo, segments.at(-1) ?? 0) + 1, segments }
  })

/** Discards a stored session (`clearStore: true`). */
export const clear = (store: SessionStore, prefix: string): Effect.Effect<void, MqttError.StoreError> =>
  Effect.mapError(store.kv.clearPrefix(prefix), (e) => storeError(store, "clear", e.message, prefix, e))

interface Group {
  readonly entries: ReadonlyArray<Journal.Entry>
  readonly packets: ReadonlyArray<Uint8Array>
  readonly outbox: Outbox | undefined
}

/**
 * Writes the journal ahead of the packets: each step's packets are handed to the outbox only once the entries of
 * that step (and of every step before) are stored. While a write is in flight, later steps join the next write.
 * A failed write is retried until the store is back; meanwhile `failing` is set, so that new QoS 1/2 publishes
 * are refused with a `StoreError` rather than accepted unstored.
 */
export class JournalWriter {
  private groups: Array<Group> = []
  private writing = false
  private wake: (() => void) | undefined = undefined
  private idle: Array<() => void> = []
  /** groups appended so far, and groups stored and handed on: `stored` waits for the first to reach the second */
  private appended = 0
  private completed = 0
  /** callers of `stored`, in the order they came, so with targets that never decrease (a Set: an interrupted one leaves at once) */
  private waiters = new Set<{ readonly target: number; readonly resume: (stored: boolean) => void }>()
  /**
   * the step that journaled the last QoS 2 identifier as delivered (`markDelivered`), and the waits until it is
   * stored (see `deliveredUnstored`)
   */
  private delivered = 0
  private deliveredWaiters = new Set<() => void>()
  /** the writer fiber ended (the client closed): what was not stored by then never will be */
  private stopped = false
  /** the last write failed: the store cannot be written now */
  failing = false
  private readonly store: SessionStore
  private readonly prefix: string
  private readonly image: Journal.Image
  private next: number
  private segments: Array<number>
  private readonly current: () => Outbox | undefined
  private readonly warn: (message: string) => Effect.Effect<void>

  constructor(
    store: SessionStore,
    prefix: string,
    loaded: Loaded,
    current: () => Outbox | undefined,
    warn: (message: string) => Effect.Effect<void>
  ) {
    this.store = store
    this.prefix = prefix
    this.image = loaded.image
    this.next = loaded.next
    this.segments = [...loaded.segments]
    this.current = current
    this.warn = warn
  }

  /** Whether packets must wait behind a write: a step's packets never overtake an earlier step's. */
  get holding(): boolean {
    return this.writing || this.groups.length > 0
  }

  /** Queues a step's entries and the packets that wait for them. */
  append(entries: ReadonlyArray<Journal.Entry>, packets: ReadonlyArray<Uint8Array>, outbox: Outbox | undefined): void {
    this.groups.push({ entries, packets, outbox })
    this.appended++
    const wake = this.wake
    this.wake = undefined
    wake?.()
  }

  /** Waits until everything appended so far is stored and handed on. */
  readonly flushed: Effect.Effect<void> = Effect.callback<void>((resume) => {
    if (!this.holding) return resume(Effect.void)
    this.idle.push(() => resume(Effect.void))
  })

  /** How many steps were appended so far: a step that appended nothing leaves it as it was. */
  get appendedCount(): number {
    return this.appended
  }

  /**
   * Waits until everything appended so far is stored (and its packets handed on), however much is appended
   * meanwhile: what a caller that must know its change is durable waits on (unlike `flushed`, which waits for
   * the writer to be idle). Waits while the store cannot be written. `false`: the writer stopped first (the
   * client closed), so it may or may not have been stored.
   */
  readonly stored: Effect.Effect<boolean> = Effect.callback<boolean>((resume) => {
    const target = this.appended
    if (this.completed >= target) return resume(Effect.succeed(true))
    if (this.stopped) return resume(Effect.succeed(false))
    const waiter = { target, resume: (stored: boolean) => resume(Effect.succeed(stored)) }
    this.waiters.add(waiter)
    return Effect.sync(() => {
      this.waiters.delete(waiter)
    })
  })

  /** The last step appended journaled a QoS 2 identifier as delivered (see `deliveredUnstored`). */
  markDelivered(): void {
    this.delivered = this.appended
  }

  /**
   * Undefined once every QoS 2 identifier journaled as delivered (`markDelivered`) is stored, or the writer
   * stopped; else the wait until then (it waits while the store cannot be written). Unlike `stored`, it does not
   * wait for what was appended since without a delivery (publishes, acknowledgements).
   */
  get deliveredUnstored(): Effect.Effect<void> | undefined {
    return this.completed >= this.delivered || this.stopped ? undefined : this.awaitDelivered
  }

  private readonly awaitDelivered: Effect.Effect<void> = Effect.callback<void>((resume) => {
    if (this.completed >= this.delivered || this.stopped) return resume(Effect.void)
    const waiter = () => resume(Effect.void)
    this.deliveredWaiters.add(waiter)
    return Effect.sync(() => {
      this.deliveredWaiters.delete(waiter)
    })
  })

  private wakeDelivered(): void {
    const waiters = this.deliveredWaiters
    this.deliveredWaiters = new Set()
    for (const waiter of waiters) waiter()
  }

  /** The writer fiber: runs for the life of the client. */
  readonly run: Effect.Effect<never> = Effect.forever(
    Effect.flatMap(
      Effect.callback<void>((resume) => {
        if (this.groups.length > 0) return resume(Effect.void)
        this.wake = () => resume(Effect.void)
      }),
      () => this.writeBatch()
    )
  ).pipe(Effect.ensuring(Effect.sync(() => {
    this.stopped = true
    const waiters = this.waiters
    this.waiters = new Set()
    for (const waiter of waiters) waiter.resume(false)
    this.wakeDelivered()
  })))

  private writeBatch(): Effect.Effect<void> {
    return Effect.suspend(() => {
      this.writing = true
      const batch = this.groups
      this.groups = []
      const entries = batch.flatMap((group) => group.entries)
      const write = entries.length === 0 ? Effect.void : this.writeSegment(entries)
      return Effect.andThen(
        write,
        Effect.sync(() => {
          const outbox = this.current()
          for (const group of batch) if (group.outbox === outbox && outbox !== undefined) outbox.pushAll(group.packets)
          this.writing = false
          this.completed += batch.length
          const ready: Array<{ readonly resume: (stored: boolean) => void }> = []
          for (const waiter of this.waiters) {
            if (waiter.target > this.completed) break
            this.waiters.delete(waiter)
            ready.push(waiter)
          }
          for (const waiter of ready) waiter.resume(true)
          if (this.deliveredWaiters.size > 0 && this.completed >= this.delivered) this.wakeDelivered()
          if (!this.holding) { for (const done of this.idle.splice(0)) done() }
        })
      )
    })
  }

  private writeSegment(entries: ReadonlyArray<Journal.Entry>): Effect.Effect<void> {
    const n = this.next++
    const key = segmentKey(this.prefix, n)
    const text = Journal.encodeSegment(entries)
    return this.store.kv.set(key, text).pipe(
      Effect.tapError((error) =>
        Effect.suspend(() => {
          const first = !this.failing
          this.failing = true
          return first
            ? this.warn(`${storeError(this.store, "write", error.message, key).message} (retrying)`)
            : Effect.void
        })
      ),
      Effect.retry(
        Schedule.exponential("50 millis").pipe(
          Schedule.modifyDelay(({ duration }) => Effect.succeed(Math.min(2000, Number(duration))))
        )
      ),
      Effect.orDie,
      Effect.andThen(Effect.suspend(() => {
        this.failing = false
        Journal.apply(this.image, entries)
        this.segments.push(n)
        return this.segments.length >= SEGMENTS_PER_SNAPSHOT ? this.snapshot() : Effect.void
      }))
    )
  }

  /** Writes the whole state, then removes the segments it covers (a failure leaves them: they are still valid). */
  private snapshot(): Effect.Effect<void> {
    const upTo = this.next - 1
    const covered = this.segments
    this.segments = []
    return this.store.kv.set(snapshotKey(this.prefix), Journal.encodeSnapshot(this.image, upTo)).pipe(
      Effect.andThen(
        Effect.forEach(covered, (n) => this.store.kv.remove(segmentKey(this.prefix, n)), { discard: true })
      ),
      Effect.catch((error) => {
        this.segments = [...covered, ...this.segments]
        return this.warn(storeError(this.store, "write", error.message, snapshotKey(this.prefix)).message)
      })
    )
  }
}
