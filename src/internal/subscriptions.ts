/**
 * The session's subscriptions: who owns each filter, what the broker holds, the SUBSCRIBE and UNSUBSCRIBE in
 * flight, the restore after the broker lost the session, and which owners a received message goes to. Pure
 * state: methods append packets and ended requests to an `Output`.
 *
 * Owners: `messages` (owner 0, the filters of `subscribe`) and each `subscription()` stream or response
 * handler. Several owners may hold one filter: the broker holds it once, at the highest QoS any owner asked for
 * (the latest owner's other options win); UNSUBSCRIBE is sent only when the last owner lets go.
 *
 * Invariants (test/session.model.test.ts):
 * - Once every request is acknowledged, the broker holds exactly the filters callers were last told they hold:
 *   a restore after Session Present 0 skips the filters that a request still waiting will set, and a request
 *   that failed with its connection is reconciled on a resumed session.
 * - Each owner whose filter a message matches receives it once: MQTT 5 routes by the Subscription Identifiers the
 *   broker names (every SUBSCRIBE gets one when the broker supports them), so a copy per subscription (as
 *   Mosquitto sends over MQTT 5) reaches only its subscription's owners. An identifier retired (its subscription
 *   replaced or removed) still routes by its filters: a message the broker queued or resends keeps it.
 * - A message no owner claims goes to `messages`: nothing that arrives is dropped by routing.
 */
import type { UserProperty } from "../MqttMessage.ts"
import * as Codec from "./codec.ts"
import { type Operation, type Output, violation } from "./output.ts"
import { Line, type PacketIds, type Queued } from "./packetIds.ts"
import type * as Packets from "./packets.ts"
import type { FilterSpec } from "./packets.ts"
import { matches } from "./topic.ts"
import { TopicTrie } from "./topicTrie.ts"

export type { FilterSpec } from "./packets.ts"

/** The owner of `messages`: the filters of `subscribe`, and whatever no other owner claims. */
export const MESSAGES = 0

/** Subscription identifiers the client gives by itself start here, away from the small ones users pick. */
export const AUTOMATIC_IDENTIFIERS_FROM = 200_000_000

/** How many retired Subscription Identifiers are still routed (see `Subscriptions.retired`). */
export const RETIRED_KEPT = 1024

const onlyMessages: ReadonlyArray<number> = [MESSAGES]

/** A change of one owner's claim on a filter, kept to undo it when its request fails. */
interface Change {
  readonly filter: string
  readonly owner: number
  readonly before: FilterSpec | undefined
  readonly after: FilterSpec | undefined
}

/** A SUBSCRIBE or UNSUBSCRIBE, from its call to its acknowledgement. */
export class Request implements Queued, Operation {
  queued = false
  id = 0
  error: Operation["error"] = undefined
  done = false
  listener: (() => void) | undefined = undefined
  /** the SUBACK or UNSUBACK reason codes, one per filter */
  codes: ReadonlyArray<number> = []
  reasonString: string | undefined = undefined
  readonly kind: "Subscribe" | "Unsubscribe"
  readonly filters: ReadonlyArray<FilterSpec>
  readonly identifier: number
  readonly userProperties: ReadonlyArray<UserProperty> | undefined
  /** the claims it changed; undefined for the client's own requests (restore, reconcile) */
  readonly changes: ReadonlyArray<Change> | undefined
  constructor(
    kind: "Subscribe" | "Unsubscribe",
    filters: ReadonlyArray<FilterSpec>,
    identifier: number,
    userProperties: ReadonlyArray<UserProperty> | undefined,
    changes: ReadonlyArray<Change> | undefined
  ) {
    this.kind = kind
    this.filters = filters
    this.identifier = identifier
    this.userProperties = userProperties
    this.changes = changes
  }
}

export class Subscriptions {
  /** filter → owner → what the owner asked for */
  private readonly claims = new TopicTrie<Map<number, FilterSpec>>()
  private readonly byOwner = new Map<number, Set<string>>()
  /** claims by owners other than `messages`: none means every message goes to `messages` */
  private routed = 0
  /** what the broker acknowledged holding: filter → options and subscription identifier */
  private readonly broker = new Map<string, { readonly spec: FilterSpec; readonly identifier: number }>()
  /** subscription identifier → the filters of the SUBSCRIBE that carried it */
  private readonly byIdentifier = new Map<number, ReadonlyArray<string>>()
  /**
   * Identifiers no subscription carries any more (replaced or unsubscribed), with their filters, oldest first,
   * while the broker keeps the session: a message keeps the identifiers of the subscriptions it matched when the
   * broker took it, so one queued then, or unacknowledged and resent on a resumed session [MQTT-4.4.0-1], still
   * names them. Routed by their filters, never taken for a broken protocol; past `RETIRED_KEPT` the oldest are
   * forgotten, and from then on an identifier the client does not know is routed by topic.
   */
  private readonly retired = new Map<number, ReadonlyArray<string>>()
  private forgotRetired = false
  /**
   * The identifiers the client chose itself: every SUBSCRIBE gets one (MQTT 5), so that each copy the broker
   * sends names the subscriptions it stands for; they are taken out of the messages the application sees.
   */
  private readonly automatic = new Set<number>()
  private readonly line = new Line<Request>()
  /** requests written on this connection, by packet identifier */
  private readonly sent = new Map<number, Request>()
  /** filters of requests that failed with their connection: on a resumed session, the broker's view is unknown */
  private readonly uncertain = new Set<string>()
  private connected = false
  private identifiersAvailable = true
  private nextIdentifier = AUTOMATIC_IDENTIFIERS_FROM
  /** every subscription the broker holds was made by this client (the session started clean) */
  private complete = false
  /** copies of one message received so far, per topic, when the broker sends a copy per subscription */
  private readonly runs = new Map<string, { readonly payload: Uint8Array; next: number }>()

  private readonly version: Packets.ProtocolVersion
  private readonly ids: PacketIds
  private readonly offlineRequests: "wait" | "fail"
  /** the broker sends a copy of a message for each matching subscription that names no identifier */
  private readonly copies: boolean
  constructor(version: Packets.ProtocolVersion, ids: PacketIds, offlineRequests: "wait" | "fail", copies: boolean) {
    this.version = version
    this.ids = ids
    this.offlineRequests = offlineRequests
    this.copies = copies
  }

  /** SUBSCRIBE and UNSUBSCRIBE not yet acknowledged. */
  get pending(): number {
    return this.line.size + this.sent.size
  }

  /** The filters the broker acknowledged holding. */
  brokerFilters(): ReadonlyMap<string, { readonly spec: FilterSpec; readonly identifier: number }> {
    return this.broker
  }

  /** The filters an owner holds. */
  filtersOf(owner: number): ReadonlyArray<string> {
    return [...(this.byOwner.get(owner) ?? [])]
  }

  /** Whether the client may give SUBSCRIBE packets a Subscription Identifier (MQTT 5, unless the broker said no). */
  get identifiers(): boolean {
    return this.version === 5 && this.identifiersAvailable
  }

  /** An owner claims filters; one SUBSCRIBE (with a fresh identifier unless `identifier` is given) asks the broker. */
  subscribe(
    owner: number,
    specs: ReadonlyArray<FilterSpec>,
    identifier: number,
    userProperties: ReadonlyArray<UserProperty> | undefined,
    out: Output
  ): Request {
    const changes: Array<Change> = []
    const filters = specs.map((spec) => {
      changes.push(this.claim(spec.filter, owner, spec))
      let qos = spec.qos
      for (const other of this.claims.get(spec.filter)!.values()) if (other.qos > qos) qos = other.qos
      return qos === spec.qos ? spec : { ...spec, qos }
    })
    let chosen = identifier
    if (chosen === 0 && this.identifiers) {
      while (this.byIdentifier.has(this.nextIdentifier) || this.retired.has(this.nextIdentifier)) this.nextIdentifier++
      chosen = this.nextIdentifier++
      this.automatic.add(chosen)
    }
    if (chosen !== 0) {
      // a caller's own identifier that the client once chose is the caller's now: visible to the application
      if (this.retired.delete(chosen) && chosen === identifier) this.automatic.delete(chosen)
      this.byIdentifier.set(chosen, filters.map((f) => f.filter))
    }
    const request = new Request("Subscribe", filters, chosen, userProperties, changes)
    this.enqueue(request, out)
    return request
  }

  /**
   * An owner lets go of filters. The broker is asked to drop those no other owner holds; returns undefined
   * when there are none (the unsubscribe is complete at once).
   */
  unsubscribe(
    owner: number,
    filters: ReadonlyArray<string>,
    userProperties: ReadonlyArray<UserProperty> | undefined,
    out: Output
  ): Request | undefined {
    const changes: Array<Change> = []
    const toBroker: Array<FilterSpec> = []
    for (const filter of filters) {
      if (this.claims.get(filter)?.has(owner) === true) changes.push(this.claim(filter, owner, undefined))
      if (this.claims.get(filter) === undefined && !toBroker.some((f) => f.filter === filter)) {
        toBroker.push({ filter, qos: 0, noLocal: false, retainAsPublished: false, retainHandling: 0 })
      }
    }
    if (toBroker.length === 0) return undefined
    const request = new Request("Unsubscribe", toBroker, 0, userProperties, changes)
    this.enqueue(request, out)
    return request
  }

  /** An owner goes away (its stream's scope closed): it lets go of every filter it holds. */
  removeOwner(owner: number, out: Output): Request | undefined {
    const filters = this.filtersOf(owner)
    return filters.length === 0 ? undefined : this.unsubscribe(owner, filters, undefined, out)
  }

  private claim(filter: string, owner: number, spec: FilterSpec | undefined): Change {
    let owners = this.claims.get(filter)
    const before = owners?.get(owner)
    if (spec !== undefined) {
      if (owners === undefined) this.claims.set(filter, owners = new Map())
      owners.set(owner, spec)
      let mine = this.byOwner.get(owner)
      if (mine === undefined) this.byOwner.set(owner, mine = new Set())
      mine.add(filter)
      if (before === undefined && owner !== MESSAGES) this.routed++
    } else if (owners !== undefined && before !== undefined) {
      owners.delete(owner)
      if (owners.size === 0) this.claims.delete(filter)
      this.byOwner.get(owner)?.delete(filter)
      if (owner !== MESSAGES) this.routed--
    }
    return { filter, owner, before, after: spec }
  }

  /** Undoes the claim changes of a request that did not take effect, where no later change replaced them. */
  private revert(changes: ReadonlyArray<Change>, filter?: string): void {
    for (let i = changes.length - 1; i >= 0; i--) {
      const change = changes[i]
      if (filter !== undefined && change.filter !== filter) continue
      if (this.claims.get(change.filter)?.get(change.owner) !== change.after) continue
      this.claim(change.filter, change.owner, change.before)
    }
  }

  private enqueue(request: Request, out: Output): void {
    if (this.connected && this.line.size === 0 && this.write(request, out)) return
    this.line.push(request)
  }

  /** Writes the requests that wait, while identifiers are free. */
  pump(out: Output): void {
    if (!this.connected) return
    for (let request = this.line.peek(); request !== undefined; request = this.line.peek()) {
      if (!this.write(request, out)) return
      this.line.shift()
    }
  }

  private write(request: Request, out: Output): boolean {
    const id = this.ids.acquire()
    if (id === 0) return false
    request.id = id
    this.sent.set(id, request)
    const filters = request.filters
    out.send.push(
      request.kind === "Subscribe"
        ? Codec.encodeSubscribe(
          this.version,
          id,
          filters.map((f) => ({
            topic: f.filter,
            qos: f.qos,
            nl: f.noLocal,
            rap: f.retainAsPublished,
            rh: f.retainHandling
          })),
          this.identifiers ? request.identifier : 0,
          request.userProperties
        )
        : Codec.encodeUnsubscribe(this.version, id, filters.map((f) => f.filter), request.userProperties)
    )
    return true
  }

  /** SUBACK or UNSUBACK: what the broker now holds. Returns "unknown" for an identifier no request holds. */
  onAck(ack: Packets.Suback | Packets.Unsuback, out: Output): "unknown" | undefined {
    const request = this.sent.get(ack.id)
    const kind = ack._tag === "Suback" ? "Subscribe" : "Unsubscribe"
    if (request === undefined || request.kind !== kind) return "unknown"
    const codes = ack.codes ?? request.filters.map(() => 0)
    if (codes.length !== request.filters.length) {
      out.fail(
        violation(
          this.version,
          `a ${ack._tag.toUpperCase()} with ${codes.length} codes for ${request.filters.length} filters`
        )
      )
      return undefined
    }
    this.sent.delete(ack.id)
    this.ids.release(ack.id)
    const retired = new Set<number>()
    request.filters.forEach((spec, i) => {
      const refused = codes[i] >= 0x80
      const held = this.broker.get(spec.filter)
      if (!refused) {
        if (held !== undefined && held.identifier !== request.identifier) retired.add(held.identifier)
        if (kind === "Subscribe") this.broker.set(spec.filter, { spec, identifier: request.identifier })
        else this.broker.delete(spec.filter)
      } else if (request.changes !== undefined) {
        this.revert(request.changes, spec.filter)
      } else if (kind === "Subscribe") {
        // a restore the broker refused (NATS does while it elects a leader): callers were told the client holds
        // it, so it stays held and is asked for again on the next connection
        this.broker.set(spec.filter, { spec, identifier: request.identifier })
        this.uncertain.add(spec.filter)
        out.warnings.push(
          `the broker refused to restore the subscription to "${spec.filter}" (${hex(codes[i])}); it is asked for ` +
            `again on the next connection`
        )
      }
    })
    this.store(out)
    if (kind === "Subscribe" && codes.every((code) => code >= 0x80)) retired.add(request.identifier)
    for (const identifier of retired) this.retire(identifier)
    request.codes = codes
    request.reasonString = ack.reasonString
    out.end(request, undefined)
    return undefined
  }

  /** A durable session stores what the broker holds, to restore it after a restart. */
  private store(out: Output): void {
    out.journal?.push({ t: "S", s: [...this.broker.values()] })
  }

  /** Puts back the subscriptions a stored session held: restored as they are if the broker lost them. */
  restore(subscriptions: ReadonlyArray<{ readonly spec: FilterSpec; readonly identifier: number }>): void {
    const byIdentifier = new Map<number, Array<string>>()
    for (const { identifier, spec } of subscriptions) {
      this.broker.set(spec.filter, { spec, identifier })
      if (identifier === 0) continue
      byIdentifier.set(identifier, [...(byIdentifier.get(identifier) ?? []), spec.filter])
      if (identifier >= AUTOMATIC_IDENTIFIERS_FROM) {
        this.automatic.add(identifier)
        this.nextIdentifier = Math.max(this.nextIdentifier, identifier + 1)
      }
    }
    for (const [identifier, filters] of byIdentifier) this.byIdentifier.set(identifier, filters)
  }

  /**
   * Retires an identifier no held subscription and no request uses: no new message will name it, but one the
   * broker already took may (see `retired`).
   */
  private retire(identifier: number): void {
    if (identifier === 0) return
    for (const held of this.broker.values()) if (held.identifier === identifier) return
    for (const request of this.sent.values()) if (request.identifier === identifier) return
    for (const request of this.line.items()) if (request.identifier === identifier) return
    const filters = this.byIdentifier.get(identifier)
    if (filters === undefined) return
    this.byIdentifier.delete(identifier)
    this.retired.set(identifier, filters)
    if (this.retired.size > RETIRED_KEPT) {
      const [oldest] = this.retired.keys()
      this.retired.delete(oldest)
      this.automatic.delete(oldest)
      this.forgotRetired = true
    }
  }

  /** The broker forgot the session: no message it holds names an identifier retired before. */
  private forgetRetired(): void {
    for (const identifier of this.retired.keys()) this.automatic.delete(identifier)
    this.retired.clear()
    this.forgotRetired = false
  }

  /** The identifiers of a message as the application sees them: without the client's own. */
  visibleIdentifiers(identifiers: ReadonlyArray<number>): ReadonlyArray<number> | undefined {
    if (this.automatic.size === 0) return identifiers
    const visible = identifiers.filter((identifier) => !this.automatic.has(identifier))
    return visible.length === identifiers.length ? identifiers : visible.length === 0 ? undefined : visible
  }

  /**
   * The owners a message goes to (never empty: `messages` takes what no one claims), or undefined after
   * recording a violation: a Subscription Identifier that no subscription of a session this client made carries.
   */
  route(
    topic: string,
    identifiers: ReadonlyArray<number> | undefined,
    payload: Uint8Array,
    out: Output
  ): ReadonlyArray<number> | undefined {
    if (this.routed === 0 && (identifiers === undefined || !this.complete)) return onlyMessages
    const owners: Array<number> = []
    const add = (claimed: Map<number, FilterSpec> | undefined) => {
      if (claimed !== undefined) { for (const owner of claimed.keys()) if (!owners.includes(owner)) owners.push(owner) }
    }
    let attributed = false
    if (identifiers !== undefined) {
      for (const identifier of identifiers) {
        const filters = this.byIdentifier.get(identifier) ?? this.retired.get(identifier)
        if (filters === undefined) {
          if (this.complete && !this.forgotRetired) {
            out.fail(
              violation(
                this.version,
                `a PUBLISH with Subscription Identifier ${identifier}, which no subscription of this client has`
              )
            )
            return undefined
          }
          continue
        }
        attributed = true
        for (const filter of filters) if (filters.length === 1 || matches(topic, filter)) add(this.claims.get(filter))
      }
    }
    if (!attributed) {
      if (this.copies) this.attributeCopy(topic, payload, add)
      else this.claims.forEachMatch(topic, add)
    }
    return owners.length === 0 ? onlyMessages : owners
  }

  /**
   * A broker that sends one copy per matching subscription (NATS over MQTT 3.1.1; the `overlapping` option says
   * so) sends the k copies of a message one after the other: the j-th copy of a run of identical copies stands for
   * the j-th matching filter, so that each owner receives it once per filter it holds, as MQTT 5 identifiers say.
   */
  private attributeCopy(
    topic: string,
    payload: Uint8Array,
    add: (claimed: Map<number, FilterSpec> | undefined) => void
  ) {
    const matching: Array<Map<number, FilterSpec>> = []
    this.claims.forEachMatch(topic, (claimed) => matching.push(claimed))
    if (matching.length <= 1) {
      this.runs.delete(topic)
      return matching.forEach(add)
    }
    const run = this.runs.get(topic)
    if (run !== undefined && run.next < matching.length && equalBytes(run.payload, payload)) {
      add(matching[run.next++])
      if (run.next === matching.length) this.runs.delete(topic)
      return
    }
    this.runs.set(topic, { payload, next: 1 })
    add(matching[0])
  }

  /**
   * A connection carries the session. Without Session Present the broker holds nothing: the client restores
   * what callers were told, except what a waiting request sets anyway, before the waiting requests. On a resumed
   * session, the filters of requests that failed with the last connection are set again to what callers were told.
   */
  resume(sessionPresent: boolean, identifiersAvailable: boolean, startedClean: boolean, out: Output): void {
    this.connected = true
    this.identifiersAvailable = identifiersAvailable
    const waiting = this.line.drain()
    const own: Array<Request> = []
    if (!sessionPresent) {
      this.complete = true
      this.forgetRetired()
      const touched = new Set<string>()
      for (const request of waiting) for (const f of request.filters) touched.add(f.filter)
      const groups = new Map<number, Array<FilterSpec>>()
      for (const [filter, held] of this.broker) {
        if (touched.has(filter)) continue
        const group = groups.get(held.identifier)
        if (group === undefined) groups.set(held.identifier, [held.spec])
        else group.push(held.spec)
      }
      this.broker.clear()
      this.store(out)
      this.uncertain.clear()
      for (const [identifier, specs] of groups) {
        own.push(new Request("Subscribe", specs, identifier, undefined, undefined))
      }
    } else {
      if (startedClean) this.complete = true
      for (const filter of this.uncertain) {
        const held = this.broker.get(filter)
        own.push(
          held !== undefined
            ? new Request("Subscribe", [held.spec], held.identifier, undefined, undefined)
            : new Request(
              "Unsubscribe",
              [{ filter, qos: 0, noLocal: false, retainAsPublished: false, retainHandling: 0 }],
              0,
              undefined,
              undefined
            )
        )
      }
      this.uncertain.clear()
    }
    for (const request of own) this.line.push(request)
    for (const request of waiting) this.line.push(request)
    this.pump(out)
  }

  /**
   * The connection ended. Requests written on it are sent again on the next one, in order, or, with
   * `offline.requests: "fail"`, fail with `error` (the client's own requests are always sent again).
   */
  lost(error: Operation["error"], out: Output): void {
    this.connected = false
    const again = [...this.sent.values(), ...this.line.drain()]
    for (const request of this.sent.values()) this.ids.release(request.id)
    this.sent.clear()
    for (const request of again) {
      request.id = 0
      if (this.offlineRequests === "fail" && request.changes !== undefined) {
        this.revert(request.changes)
        for (const f of request.filters) this.uncertain.add(f.filter)
        out.end(request, error)
      } else {
        this.line.push(request)
      }
    }
  }

  /** The client stops: every request fails with `error`. */
  close(error: Operation["error"], out: Output): void {
    for (const request of this.sent.values()) out.end(request, error)
    for (const request of this.line.drain()) out.end(request, error)
    this.sent.clear()
  }
}

const hex = (code: number) => `0x${code.toString(16).padStart(2, "0")}`

const equalBytes = (a: Uint8Array, b: Uint8Array): boolean => {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}
