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
 *   replaced or removed) still routes by its filters: a message the broker queued or resends keeps it. On MQTT
 *   3.1.1 from a broker that sends a copy per subscription without saying which, the copies are counted (see
 *   `attributeCopy`); where the client cannot tell which subscription a copy is for, an owner receives a message
 *   twice rather than never.
 * - A message no owner claims goes to `messages`: nothing that arrives is dropped by routing.
 * - Nothing is written that breaks the current CONNACK (Maximum Packet Size, Wildcard and Shared Subscription
 *   Available), checked when a request is written, on the connection it goes out on: a caller's request ends with
 *   the reason code the broker would give, unsent; a restore too large for one packet is split, and a filter the
 *   connection cannot take at all is given up (its owners' streams fail), so that no reconnect sends it again.
 */
import * as MqttError from "../MqttError.ts"
import type { UserProperty } from "../MqttMessage.ts"
import * as Bytes from "./bytes.ts"
import * as Codec from "./codec.ts"
import { article, type Operation, type Output, violation } from "./output.ts"
import { Line, type PacketIds, type Queued } from "./packetIds.ts"
import type * as Packets from "./packets.ts"
import type { FilterSpec } from "./packets.ts"
import { isShared, matches } from "./topic.ts"
import { TopicTrie } from "./topicTrie.ts"

export type { FilterSpec } from "./packets.ts"

/** The owner of `messages`: the filters of `subscribe`, and whatever no other owner claims. */
export const MESSAGES = 0

/** Subscription identifiers the client gives by itself start here, away from the small ones users pick. */
export const AUTOMATIC_IDENTIFIERS_FROM = 200_000_000

/** The largest Subscription Identifier: a Variable Byte Integer [MQTT-3.8.2.1.2], four bytes at most. */
export const MAX_IDENTIFIER = Codec.MAX_VARINT

/** How many retired Subscription Identifiers are still routed (see `Subscriptions.retired`). */
export const RETIRED_KEPT = 1024

/** How many messages per topic the client counts the copies of, at most (see `Subscriptions.attributeCopy`). */
export const COPIES_KEPT = 1024

const onlyMessages: ReadonlyArray<number> = [MESSAGES]

/** What the current connection's CONNACK allows a SUBSCRIBE or UNSUBSCRIBE to be (MQTT 5; no limit on 3.1.1). */
export interface RequestLimits {
  /** the broker's Maximum Packet Size, or the client's `sendMaximumPacketSize` when lower; undefined: no limit */
  readonly maximumPacketSize: number | undefined
  /** whose limit `maximumPacketSize` is, for the error: "the broker accepts" or "sendMaximumPacketSize allows" */
  readonly maximumPacketSizeBy: string
  readonly subscriptionIdentifiersAvailable: boolean
  readonly wildcardSubscriptionAvailable: boolean
  readonly sharedSubscriptionAvailable: boolean
}

const NO_LIMITS: RequestLimits = {
  maximumPacketSize: undefined,
  maximumPacketSizeBy: "the broker accepts",
  subscriptionIdentifiersAvailable: true,
  wildcardSubscriptionAvailable: true,
  sharedSubscriptionAvailable: true
}

/** Why the current connection cannot take a request: the reason code the broker would answer with. */
interface Refusal {
  readonly filter: string
  readonly reasonCode: number
  readonly reason: string
}

/** A change of one owner's claim on a filter by a caller's request, kept to undo it when the request fails. */
interface Change {
  readonly filter: string
  readonly owner: number
  readonly after: FilterSpec | undefined
}

/**
 * The changes of one owner's claim on one filter by requests not yet ended, in call order, and the claim beneath
 * them: what it was before the first, or what the last request that took effect set. The claim is the last
 * change's, or the base. A request that fails takes its change out: the claim is then what the changes left say,
 * so that a later change that replaced it undoes to the state before the failed one, not to the failed one's.
 * A request that takes effect makes its change the base, and the earlier changes no longer undo anything.
 */
interface Unsettled {
  base: FilterSpec | undefined
  readonly changes: Array<Change>
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
  /** written on some connection: a session the broker kept may hold its effect */
  written = false
  /** the client's own, already fitted to the current connection's limits (see `Subscriptions.fit`) */
  fitted = false
  /** a Subscription Identifier the caller gave: refused (0xA1) on a connection without them, never dropped */
  explicit = false
  readonly kind: "Subscribe" | "Unsubscribe"
  readonly filters: ReadonlyArray<FilterSpec>
  readonly identifier: number
  readonly userProperties: ReadonlyArray<UserProperty> | undefined
  /** the claims it changed (see `Unsettled`); undefined for the client's own requests (restore, reconcile) */
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

/** A subscription the broker acknowledged holding: its options and Subscription Identifier. */
export interface HeldSubscription {
  readonly spec: FilterSpec
  readonly identifier: number
}

/**
 * The subscriptions the broker acknowledged holding, by filter. `trie` finds those a topic matches, each with a
 * number that gives the order the broker came to hold them in (see `Subscriptions.copySlots`).
 */
class Held extends Map<string, HeldSubscription> {
  trie = new TopicTrie<number>()
  private made = 0
  override set(filter: string, held: HeldSubscription): this {
    // the same filter subscribed again: the broker replaces its subscription [MQTT-3.8.4-3], in its place
    if (!this.has(filter)) this.trie.set(filter, this.made++)
    return super.set(filter, held)
  }
  override delete(filter: string): boolean {
    this.trie.delete(filter)
    return super.delete(filter)
  }
  override clear(): void {
    this.trie = new TopicTrie()
    super.clear()
  }
}

/** A message some copies of which came, from a broker that sends a copy per subscription (see `attributeCopy`). */
interface CopiesSeen {
  readonly payload: Uint8Array
  /** `payloadHash(payload)` */
  readonly hash: number
  /** the subscriptions the broker surely held when the first copy came, that the topic matches, oldest first */
  readonly sure: ReadonlyArray<string>
  /** how many copies may come: `sure` and those a request in flight then made or ended */
  readonly slots: number
  /** how many came */
  count: number
}

/** The messages on one topic some copies of which came (see `attributeCopy`). */
interface TopicCopies {
  /** by the hash of their payload, oldest first */
  readonly byHash: Map<number, Array<CopiesSeen>>
  /** all of them, oldest first */
  readonly order: Set<CopiesSeen>
}

/** A hash of a payload to find its copies by: its length and up to 32 bytes at each end. */
const payloadHash = (payload: Uint8Array): number => {
  const n = payload.length
  let h = Math.imul(0x811c9dc5 ^ n, 0x01000193)
  const head = n < 32 ? n : 32
  for (let i = 0; i < head; i++) h = Math.imul(h ^ payload[i], 0x01000193)
  for (let i = n - 32 > head ? n - 32 : head; i < n; i++) h = Math.imul(h ^ payload[i], 0x01000193)
  return h
}

export class Subscriptions {
  /** filter → owner → what the owner asked for */
  private readonly claims = new TopicTrie<Map<number, FilterSpec>>()
  private readonly byOwner = new Map<number, Set<string>>()
  /** owner and filter (`${owner} ${filter}`) → the changes of the requests not yet ended */
  private readonly unsettled = new Map<string, Unsettled>()
  /** claims by owners other than `messages`: none means every message goes to `messages` */
  private routed = 0
  /** what the broker acknowledged holding: filter → options and subscription identifier */
  private readonly broker = new Held()
  /** subscription identifier → the filters of the SUBSCRIBE that carried it */
  private readonly byIdentifier = new Map<number, ReadonlyArray<string>>()
  /**
   * Identifiers no subscription carries any more (replaced or unsubscribed), with their filters, oldest first,
   * while the broker keeps the session: a message keeps the identifiers of the subscriptions it matched when the
   * broker took it, so one queued then, or unacknowledged and resent on a resumed session [MQTT-4.4.0-1], still
   * names them. Routed by their filters, never taken for a broken protocol, also once given to a new subscription
   * (its filters join the new ones'); past `RETIRED_KEPT` the oldest are forgotten (also all of them on a restore
   * from a store), and from then on an identifier the client does not know is routed by topic, and one it knows by
   * the filters its topic matches.
   */
  private retired: Map<number, ReadonlyArray<string>> | undefined = undefined
  /**
   * The filters of retired identifiers given again to a new subscription: a message the broker queued for the old
   * one names it too, and goes by these filters when none of the new ones matches its topic (a message of the old
   * subscription whose topic the new one matches too goes by the new one: the client cannot tell them apart).
   */
  private reissued: Map<number, ReadonlyArray<string>> | undefined = undefined
  private forgotRetired = false
  /**
   * The filters put back from a store (`restore`): the session's own, held without an owner until the application
   * subscribes again. Made again as they are when the session resumes elsewhere, not dropped as unclaimed.
   */
  private readonly restored = new Set<string>()
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
  /** the current connection resumed the broker's session (Session Present) */
  private resumed = false
  private limits: RequestLimits = NO_LIMITS
  private nextIdentifier = AUTOMATIC_IDENTIFIERS_FROM
  /** every subscription the broker holds was made by this client (the session started clean) */
  private complete = false
  /**
   * When the broker sends a copy per subscription: per topic, the messages some copies of which came and others
   * may still come, oldest first (see `attributeCopy`)
   */
  private copiesSeen: Map<string, TopicCopies> | undefined = undefined

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

  /** SUBSCRIBE and UNSUBSCRIBE written and waiting for their acknowledgement. */
  get awaitingAck(): number {
    return this.sent.size
  }

  /** The filters the broker acknowledged holding. */
  brokerFilters(): ReadonlyMap<string, HeldSubscription> {
    return this.broker
  }

  /** The filters an owner holds. */
  filtersOf(owner: number): ReadonlyArray<string> {
    return [...(this.byOwner.get(owner) ?? [])]
  }

  /** Whether the client may give SUBSCRIBE packets a Subscription Identifier (MQTT 5, unless the broker said no). */
  get identifiers(): boolean {
    return this.version === 5 && this.limits.subscriptionIdentifiersAvailable
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
      changes.push(this.change(spec.filter, owner, spec))
      let qos = spec.qos
      for (const other of this.claims.get(spec.filter)!.values()) if (other.qos > qos) qos = other.qos
      return qos === spec.qos ? spec : { ...spec, qos }
    })
    const chosen = identifier === 0 ? this.automaticIdentifier() : identifier
    if (chosen !== 0) {
      // a retired identifier given again still names the filters it had: a message the broker queued for its old
      // subscription keeps it (see `retired`), and goes by those filters, not to the new filters' owners
      const old = this.retired?.get(chosen)
      if (old !== undefined) {
        this.retired!.delete(chosen) // only where none of the new filters matches (a new message names it for them: see `route`)
        const reissued = this.reissued ??= new Map()
        reissued.set(chosen, old)
        // a caller's own identifier that the client once chose is the caller's now: visible to the application
        if (chosen === identifier) this.automatic.delete(chosen)
      }
      // an identifier the caller gives several subscriptions [MQTT-3.8.2.1.2] names each of their filters: a
      // message that names it goes to the owners of those its topic matches
      const named = this.byIdentifier.get(chosen)
      const added = filters.map((f) => f.filter)
      this.byIdentifier.set(chosen, named === undefined ? added : [...new Set([...named, ...added])])
    }
    const request = new Request("Subscribe", filters, chosen, userProperties, changes)
    request.explicit = identifier !== 0
    this.enqueue(request, out)
    return request
  }

  /**
   * A fresh identifier of the client's own (MQTT 5, when the broker takes them), or 0: the next from
   * `AUTOMATIC_IDENTIFIERS_FROM` to `MAX_IDENTIFIER`, then around again, past those in use or retired (never all
   * of the 68 million: each is a subscription, or one of `RETIRED_KEPT`).
   */
  private automaticIdentifier(): number {
    if (!this.identifiers) return 0
    let chosen = this.nextIdentifier
    while (chosen > MAX_IDENTIFIER || this.byIdentifier.has(chosen) || this.retired?.has(chosen) === true) {
      chosen = chosen >= MAX_IDENTIFIER ? AUTOMATIC_IDENTIFIERS_FROM : chosen + 1
    }
    this.nextIdentifier = chosen + 1
    this.automatic.add(chosen)
    return chosen
  }

  /** What the broker should hold for `filter` by the owners' claims: the highest QoS, the latest owner's options. */
  private wanted(filter: string): FilterSpec | undefined {
    const owners = this.claims.get(filter)
    if (owners === undefined) return undefined
    let qos = 0
    let last: FilterSpec | undefined
    for (const spec of owners.values()) {
      if (spec.qos > qos) qos = spec.qos
      last = spec
    }
    return last === undefined ? undefined : { ...last, filter, qos: qos as FilterSpec["qos"] }
  }

  /**
   * An owner lets go of filters. The broker is asked to drop those no other owner holds; returns undefined
   * when there are none (the unsubscribe is complete at once).
   */
  unsubscribe(
    owner: number,
    filters: ReadonlyArray<string>,
    userProperties: ReadonlyArray<UserProperty> | undefined,
    out: Output,
    forGood = false
  ): Request | undefined {
    const changes: Array<Change> = []
    const toBroker: Array<FilterSpec> = []
    for (const filter of filters) {
      // also where a request still waiting let go of it: should that one fail, this call's letting go stands
      if (this.claims.get(filter)?.has(owner) === true || this.unsettled.has(`${owner} ${filter}`)) {
        changes.push(this.change(filter, owner, undefined))
      }
      if (this.claims.get(filter) === undefined && !toBroker.some((f) => f.filter === filter)) {
        toBroker.push({ filter, qos: 0, noLocal: false, retainAsPublished: false, retainHandling: 0 })
      }
    }
    if (toBroker.length === 0 || forGood) this.settle(changes, undefined)
    if (toBroker.length === 0) return undefined
    const request = new Request("Unsubscribe", toBroker, 0, userProperties, forGood ? undefined : changes)
    this.enqueue(request, out)
    return request
  }

  /**
   * An owner goes away (its stream's scope closed): it lets go of every filter it holds, for good, whatever becomes
   * of the UNSUBSCRIBE: no caller is told of it, so it is the client's own, sent again after a lost connection (also
   * with `offline.requests: "fail"`, which would give the filters back to the gone owner and leave them subscribed).
   */
  removeOwner(owner: number, out: Output): Request | undefined {
    const filters = this.filtersOf(owner)
    return filters.length === 0 ? undefined : this.unsubscribe(owner, filters, undefined, out, true)
  }

  /** Sets an owner's claim on a filter (undefined: lets go of it); returns what it was. */
  private claim(filter: string, owner: number, spec: FilterSpec | undefined): FilterSpec | undefined {
    // an owner's word decides from now on
    this.restored.delete(filter)
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
      const mine = this.byOwner.get(owner)
      // an owner holding nothing is forgotten: owners come and go with each subscription() stream
      if (mine !== undefined && mine.delete(filter) && mine.size === 0) this.byOwner.delete(owner)
      if (owner !== MESSAGES) this.routed--
    }
    return before
  }

  /** A caller's request changes an owner's claim on a filter: kept until the request ends (see `Unsettled`). */
  private change(filter: string, owner: number, spec: FilterSpec | undefined): Change {
    const before = this.claim(filter, owner, spec)
    const change: Change = { filter, owner, after: spec }
    const key = `${owner} ${filter}`
    const unsettled = this.unsettled.get(key)
    if (unsettled === undefined) this.unsettled.set(key, { base: before, changes: [change] })
    else unsettled.changes.push(change)
    return change
  }

  /**
   * A caller's request ended: its changes of the filters `failed` names are undone, the others took effect (see
   * `Unsettled`; `failed` undefined: all took effect). A change already superseded (a later request took effect,
   * or the filter was given up) does nothing either way.
   */
  private settle(changes: ReadonlyArray<Change>, failed: ((filter: string) => boolean) | undefined): void {
    for (const change of changes) {
      const key = `${change.owner} ${change.filter}`
      const unsettled = this.unsettled.get(key)
      const i = unsettled === undefined ? -1 : unsettled.changes.indexOf(change)
      if (i < 0) continue
      const line = unsettled!.changes
      if (failed?.(change.filter) === true) {
        line.splice(i, 1)
        // the last change undone: the claim is what the one before it set, or the base
        if (i === line.length) this.claim(change.filter, change.owner, i > 0 ? line[i - 1].after : unsettled!.base)
      } else {
        unsettled!.base = change.after
        line.splice(0, i + 1)
      }
      if (line.length === 0) this.unsettled.delete(key)
    }
  }

  /** Undoes the claim changes of a request that did not take effect (see `Unsettled`). */
  private revert(changes: ReadonlyArray<Change>): void {
    this.settle(changes, () => true)
  }

  private enqueue(request: Request, out: Output): void {
    if (this.connected && this.line.size === 0 && this.send(request, out)) {
      // refused, it may have put a restore or a reconcile in line
      if (this.line.size > 0) this.pump(out)
      return
    }
    this.line.push(request)
  }

  /** Writes the requests that wait, while identifiers are free. */
  pump(out: Output): void {
    if (!this.connected) return
    for (let request = this.line.shift(); request !== undefined; request = this.line.shift()) {
      if (!this.send(request, out)) {
        this.line.unshift(request)
        return
      }
    }
  }

  /**
   * Writes a request on the current connection, or ends it unsent when the connection cannot take it (see
   * `refuse`). Returns false, leaving it to wait, when no packet identifier is free.
   */
  private send(request: Request, out: Output): boolean {
    if (request.kind === "Subscribe") {
      if (request.explicit && this.version === 5 && !this.limits.subscriptionIdentifiersAvailable) {
        this.refuse(request, {
          filter: request.filters[0].filter,
          reasonCode: 0xa1,
          reason: `the broker does not support subscription identifiers (${request.identifier} was given)`
        }, out)
        return true
      }
      for (const spec of request.filters) {
        const refusal = this.filterRefusal(spec.filter)
        if (refusal !== undefined) {
          this.refuse(request, refusal, out)
          return true
        }
      }
    }
    const id = this.ids.acquire()
    if (id === 0) return false
    const packet = this.encode(request, id)
    const max = this.limits.maximumPacketSize
    if (max !== undefined && packet.length > max) {
      this.ids.release(id)
      this.refuse(request, {
        filter: request.filters[0].filter,
        reasonCode: 0x95,
        reason:
          `the ${request.kind.toUpperCase()} packet is ${packet.length} bytes, ${this.limits.maximumPacketSizeBy} ${max} at most`
      }, out)
      return true
    }
    request.id = id
    request.written = true
    this.sent.set(id, request)
    out.send.push(packet)
    return true
  }

  private encode(request: Request, id: number): Uint8Array {
    const filters = request.filters
    return request.kind === "Subscribe"
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
  }

  /** Why the current connection cannot take a subscription to `filter` whatever the packet, or undefined. */
  private filterRefusal(filter: string): Refusal | undefined {
    const limits = this.limits
    if (!limits.wildcardSubscriptionAvailable && (filter.includes("+") || filter.includes("#"))) {
      return { filter, reasonCode: 0xa2, reason: "the broker does not support wildcard subscriptions" }
    }
    if (!limits.sharedSubscriptionAvailable && isShared(filter)) {
      return { filter, reasonCode: 0x9e, reason: "the broker does not support shared subscriptions" }
    }
    return undefined
  }

  /**
   * A request the current connection cannot take, unsent. A caller's ends with the reason code the broker would
   * give, as if the broker had refused it (its claims undone). The client's own (restore, reconcile) are fitted
   * to the connection: split into packets that fit, the filters that fit in none given up (`giveUp`).
   */
  private refuse(request: Request, refusal: Refusal, out: Output): void {
    if (request.changes === undefined) return this.fit(request, refusal, out)
    this.revert(request.changes)
    const reasonString = `not sent: ${refusal.reason}`
    const error = request.kind === "Subscribe"
      ? new MqttError.SubscribeError({ filter: refusal.filter, reasonCode: refusal.reasonCode, reasonString })
      : new MqttError.UnsubscribeError({ filter: refusal.filter, reasonCode: refusal.reasonCode, reasonString })
    out.end(request, error)
    if (request.kind === "Subscribe") this.retire(request.identifier)
    this.setBack(request)
  }

  /**
   * After a caller's request was refused unsent and its claims put back: the broker is set, next in line, to
   * what the claims say. Written on an earlier connection of the session this one resumed, the request may have
   * taken effect there: its filters are reconciled now. Otherwise a filter still claimed that the broker does not
   * hold on this connection (a restore after Session Present 0 skipped it for this request) is restored, unless a
   * SUBSCRIBE in flight or in line sets it anyway.
   */
  private setBack(request: Request): void {
    const again: Array<Request> = []
    if (this.resumed && request.written) {
      again.push(...this.reconcile(request.filters.map((f) => f.filter)))
    } else {
      let setting: Set<string> | undefined
      const restore: Array<FilterSpec> = []
      const drop: Array<FilterSpec> = []
      for (const spec of request.filters) {
        const filter = spec.filter
        const wanted = this.wanted(filter)
        if ((wanted !== undefined) === this.broker.has(filter)) continue
        setting ??= this.pendingFilters()
        if (setting.has(filter)) continue
        setting.add(filter)
        // claimed and not held: restored; held and claimed by no one (an owner let go of it while this request
        // kept it claimed, so no UNSUBSCRIBE went out): dropped
        if (wanted !== undefined) restore.push(wanted)
        else drop.push({ ...spec, qos: 0 })
      }
      if (restore.length > 0) {
        const identifier = this.automaticIdentifier()
        if (identifier !== 0) this.byIdentifier.set(identifier, restore.map((f) => f.filter))
        again.push(new Request("Subscribe", restore, identifier, undefined, undefined))
      }
      if (drop.length > 0) again.push(new Request("Unsubscribe", drop, 0, undefined, undefined))
    }
    for (let i = again.length - 1; i >= 0; i--) this.line.unshift(again[i])
  }

  /** The filters of the requests in flight and in line: those set the broker anyway. */
  private pendingFilters(): Set<string> {
    const filters = new Set<string>()
    for (const requests of [this.sent.values(), this.line.items()]) {
      for (const request of requests) for (const f of request.filters) filters.add(f.filter)
    }
    return filters
  }

  /**
   * The client's own requests that set `filters` on a resumed session to what callers were told (the owners'
   * claims): a SUBSCRIBE per identifier of those claimed (the one the broker acknowledged last, or a fresh one), one
   * UNSUBSCRIBE of the others (fitted to the connection in turn).
   */
  private reconcile(filters: Iterable<string>, elsewhere = false): Array<Request> {
    const groups = new Map<number, Array<FilterSpec>>()
    const drop: Array<FilterSpec> = []
    let fresh: number | undefined
    for (const filter of filters) {
      let wanted = this.wanted(filter) ?? (this.restored.has(filter) ? this.broker.get(filter)?.spec : undefined)
      if (wanted === undefined) {
        drop.push({ filter, qos: 0, noLocal: false, retainAsPublished: false, retainHandling: 0 })
        continue
      }
      // made again on another broker, which may hold it already (a cluster that shares the session): MQTT 5 sends
      // the retained messages only where it did not (Retain Handling 1), as for a first SUBSCRIBE
      if (elsewhere && this.version === 5 && wanted.retainHandling === 0) wanted = { ...wanted, retainHandling: 1 }
      const identifier = this.broker.get(filter)?.identifier ?? (fresh ??= this.automaticIdentifier())
      const group = groups.get(identifier)
      if (group === undefined) groups.set(identifier, [wanted])
      else group.push(wanted)
    }
    const requests: Array<Request> = []
    for (const [identifier, specs] of groups) {
      if (identifier === fresh && identifier !== 0) this.byIdentifier.set(identifier, specs.map((f) => f.filter))
      requests.push(new Request("Subscribe", specs, identifier, undefined, undefined))
    }
    if (drop.length > 0) requests.push(new Request("Unsubscribe", drop, 0, undefined, undefined))
    return requests
  }

  /**
   * The client's own request, fitted to the current connection: the filters it can take, in packets under the
   * Maximum Packet Size, go next in line; the others are given up. Nothing is left that the next connection would
   * send again only to be refused again.
   */
  private fit(request: Request, refusal: Refusal, out: Output): void {
    const givenUp: Array<Refusal> = []
    if (request.fitted) {
      // fitted on this connection already: it is not fitted again (that could go on for ever)
      for (const spec of request.filters) givenUp.push({ ...refusal, filter: spec.filter })
      return this.giveUp(request, givenUp, out)
    }
    const max = this.limits.maximumPacketSize
    const base = this.encode(new Request(request.kind, [], request.identifier, undefined, undefined), 1).length - 2
    const chunks: Array<Array<FilterSpec>> = []
    let chunk: Array<FilterSpec> = []
    let body = base
    for (const spec of request.filters) {
      const bytes = 2 + Bytes.utf8Length(spec.filter) + (request.kind === "Subscribe" ? 1 : 0)
      if (max !== undefined && packetSize(base + bytes) > max) {
        givenUp.push({
          filter: spec.filter,
          reasonCode: 0x95,
          reason: `the ${request.kind.toUpperCase()} packet for it alone is ${
            packetSize(base + bytes)
          } bytes, ${this.limits.maximumPacketSizeBy} ${max} at most`
        })
        continue
      }
      const refusal = request.kind === "Subscribe" ? this.filterRefusal(spec.filter) : undefined
      if (refusal !== undefined) {
        givenUp.push(refusal)
        continue
      }
      if (chunk.length > 0 && max !== undefined && packetSize(body + bytes) > max) {
        chunks.push(chunk)
        chunk = []
        body = base
      }
      chunk.push(spec)
      body += bytes
    }
    if (chunk.length > 0) chunks.push(chunk)
    for (let i = chunks.length - 1; i >= 0; i--) {
      const part = new Request(request.kind, chunks[i], request.identifier, undefined, undefined)
      part.fitted = true
      this.line.unshift(part)
    }
    this.giveUp(request, givenUp, out)
  }

  /**
   * The filters of the client's own request that the current connection cannot take, all at once (stored and
   * told once). A restore or a reconcile of a subscription: the subscription ends; every owner lets go of the
   * filter and each `subscription()` stream holding it fails with the SubscribeError (`messages` only lets go).
   * On a resumed session the broker may hold it: an UNSUBSCRIBE goes next in line (never refused for a wildcard
   * or a shared filter; fitted to the packet size in turn). An UNSUBSCRIBE to reconcile that no packet of this
   * connection can carry stays for the next resumed connection.
   */
  private giveUp(request: Request, givenUp: ReadonlyArray<Refusal>, out: Output): void {
    if (request.kind === "Subscribe") this.retire(request.identifier)
    if (givenUp.length === 0) return
    const listed = givenUp.slice(0, 10).map((r) => `"${r.filter}" (${hex(r.reasonCode)}: ${r.reason})`).join(", ") +
      (givenUp.length > 10 ? ` and ${givenUp.length - 10} more` : "")
    if (request.kind === "Unsubscribe") {
      for (const { filter } of givenUp) this.uncertain.add(filter)
      out.warnings.push(
        `the UNSUBSCRIBE from ${listed} cannot be sent on this connection; it is sent on the next connection ` +
          `that resumes the session`
      )
      return
    }
    let stored = false
    const drop: Array<FilterSpec> = []
    for (const refusal of givenUp) {
      const filter = refusal.filter
      const error = new MqttError.SubscribeError({
        filter,
        reasonCode: refusal.reasonCode,
        reasonString: `not sent: ${refusal.reason}`
      })
      const owners = this.claims.get(filter)
      if (owners !== undefined) {
        for (const owner of [...owners.keys()]) {
          this.claim(filter, owner, undefined)
          // no request still waiting puts it back when it fails
          this.unsettled.delete(`${owner} ${filter}`)
          out.failOwner(owner, error)
        }
      }
      if (this.broker.delete(filter)) stored = true
      if (this.resumed) drop.push({ filter, qos: 0, noLocal: false, retainAsPublished: false, retainHandling: 0 })
    }
    if (stored) this.store(out)
    if (drop.length > 0) this.line.unshift(new Request("Unsubscribe", drop, 0, undefined, undefined))
    out.warnings.push(
      `the ${givenUp.length === 1 ? "subscription" : "subscriptions"} to ${listed} cannot be restored on this ` +
        `connection; ${givenUp.length === 1 ? "it ends" : "they end"}`
    )
  }

  /** SUBACK or UNSUBACK: what the broker now holds. Returns "unknown" for an identifier no request holds. */
  onAck(ack: Packets.Suback | Packets.Unsuback, out: Output): "unknown" | undefined {
    const request = this.sent.get(ack.id)
    const kind = ack._tag === "Suback" ? "Subscribe" : "Unsubscribe"
    if (request === undefined) return "unknown"
    if (request.kind !== kind) {
      // the request stays: it is sent again on the next connection
      const packet = ack._tag.toUpperCase()
      out.fail(
        violation(this.version, `${article(packet)} for packet ${ack.id}, ${this.holder(ack.id)}`, 0x82, { packet })
      )
      return undefined
    }
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
    const refusedFilters = new Set<string>()
    request.filters.forEach((spec, i) => {
      const refused = codes[i] >= 0x80
      const held = this.broker.get(spec.filter)
      if (!refused) {
        if (held !== undefined && held.identifier !== request.identifier) retired.add(held.identifier)
        if (kind === "Subscribe") this.broker.set(spec.filter, { spec, identifier: request.identifier })
        else this.broker.delete(spec.filter)
      } else if (request.changes !== undefined) {
        refusedFilters.add(spec.filter)
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
    if (request.changes !== undefined) this.settle(request.changes, (filter) => refusedFilters.has(filter))
    this.store(out)
    if (kind === "Subscribe" && codes.every((code) => code >= 0x80)) retired.add(request.identifier)
    for (const identifier of retired) this.retire(identifier)
    request.codes = codes
    request.reasonString = ack.reasonString
    out.end(request, undefined)
    return undefined
  }

  /** The packet written on this connection that holds the identifier: "a SUBSCRIBE", "an UNSUBSCRIBE", or none. */
  holder(id: number): string | undefined {
    const request = this.sent.get(id)
    return request === undefined ? undefined : request.kind === "Subscribe" ? "a SUBSCRIBE" : "an UNSUBSCRIBE"
  }

  /** A durable session stores what the broker holds, to restore it after a restart. */
  private store(out: Output): void {
    out.journal?.push({ t: "S", s: [...this.broker.values()] })
  }

  /**
   * Puts back the subscriptions a stored session held: restored as they are if the broker lost them. The retired
   * identifiers are not stored: forgotten (see `retired`).
   */
  restore(subscriptions: ReadonlyArray<{ readonly spec: FilterSpec; readonly identifier: number }>): void {
    this.forgotRetired = true
    const byIdentifier = new Map<number, Array<string>>()
    for (const { identifier, spec } of subscriptions) {
      this.broker.set(spec.filter, { spec, identifier })
      this.restored.add(spec.filter)
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
    const reissued = this.reissued?.get(identifier)
    this.reissued?.delete(identifier)
    const retired = this.retired ??= new Map()
    retired.set(identifier, reissued === undefined ? filters : [...new Set([...filters, ...reissued])])
    if (retired.size > RETIRED_KEPT) {
      const [oldest] = retired.keys()
      retired.delete(oldest)
      this.automatic.delete(oldest)
      this.forgotRetired = true
    }
  }

  /** The broker forgot the session: no message it holds names an identifier retired before. */
  private forgetRetired(): void {
    if (this.retired !== undefined) { for (const identifier of this.retired.keys()) this.automatic.delete(identifier) }
    this.retired = undefined
    this.reissued = undefined
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
  route(topic: string, packet: Packets.Publish, out: Output): ReadonlyArray<number> | undefined {
    const identifiers = packet.properties?.subscriptionIdentifiers
    if (this.routed === 0 && (identifiers === undefined || !this.complete)) return onlyMessages
    const owners: Array<number> = []
    const add = (claimed: Map<number, FilterSpec> | undefined) => {
      if (claimed !== undefined) { for (const owner of claimed.keys()) if (!owners.includes(owner)) owners.push(owner) }
    }
    let attributed = false
    if (identifiers !== undefined) {
      for (const identifier of identifiers) {
        const filters = this.byIdentifier.get(identifier) ?? this.retired?.get(identifier)
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
        // one filter is the one the broker matched, unless the identifier named others the client forgot, or the
        // session is one this process resumed without knowing it (`complete`): an earlier process's message may name
        // an identifier it used for another subscription, which this process gave again
        const reissued = this.reissued === undefined || this.reissued.size === 0
          ? undefined
          : this.reissued.get(identifier)
        const one = filters.length === 1 && !this.forgotRetired && this.complete && reissued === undefined
        let matched = false
        for (const filter of filters) {
          if (one || matches(topic, filter)) {
            matched = true
            add(this.claims.get(filter))
          }
        }
        if (!matched && reissued !== undefined) {
          for (const filter of reissued) if (matches(topic, filter)) add(this.claims.get(filter))
        }
      }
    }
    if (!attributed) {
      // a broker that sends a copy per subscription: the copies are counted (see `attributeCopy`), but for one
      // sent again (DUP) or sent for a new subscription (RETAIN on MQTT 3.1.1 [MQTT-3.3.1-8], [MQTT-3.3.1-9]),
      // which the client cannot tell the subscription of: it goes to every owner whose filter matches, as a single
      // copy does
      if (this.copies && !packet.dup && !(packet.retain && this.version !== 5)) {
        this.attributeCopy(topic, packet.payload, add)
      } else this.claims.forEachMatch(topic, add)
    }
    return owners.length === 0 ? onlyMessages : owners
  }

  /**
   * A broker that sends one copy of a message per matching subscription (NATS over MQTT 3.1.1; the `overlapping`
   * option says so), without saying which subscription a copy is for: each owner is to receive a message once per
   * filter it holds, as MQTT 5 identifiers say. The copies of one message are identical, but those of several
   * messages may come in any order (NATS sends QoS 1 from a stream per subscription: the copies of a burst for one
   * subscription, then those for the next). So the copies are counted per topic and payload: the n-th copy of a
   * message goes to the n-th of the subscriptions the broker held that the topic matches when its first copy came
   * (in the order the broker came to hold them), and k copies of k identical messages reach each of the k
   * subscriptions' owners k times, in whatever order they come.
   *
   * While a SUBSCRIBE or UNSUBSCRIBE of a matching filter waits for its acknowledgement, the client cannot tell
   * whether the broker holds that subscription yet (or still), so how many copies come: those subscriptions are
   * counted last, and a copy counted as one of theirs goes to every owner whose filter matches. Then an owner may
   * receive a message twice, never none: a copy the broker did not send would take a message from an owner.
   */
  private attributeCopy(
    topic: string,
    payload: Uint8Array,
    add: (claimed: Map<number, FilterSpec> | undefined) => void
  ) {
    let copies = this.copiesSeen?.get(topic)
    const hash = payloadHash(payload)
    let seen = copies?.byHash.get(hash)?.find((c) => Bytes.equal(c.payload, payload))
    let slot = 0
    if (seen !== undefined) {
      slot = seen.count++
      if (seen.count === seen.slots) this.forgetCopies(topic, copies!, seen)
    } else {
      const { maybe, sure } = this.copySlots(topic)
      if (sure.length + maybe <= 1) return this.claims.forEachMatch(topic, add)
      seen = { payload, hash, sure, slots: sure.length + maybe, count: 1 }
      if (copies === undefined) {
        copies = { byHash: new Map(), order: new Set() }
        const copiesSeen = this.copiesSeen ??= new Map()
        copiesSeen.set(topic, copies)
      }
      const same = copies.byHash.get(hash)
      if (same === undefined) copies.byHash.set(hash, [seen])
      else same.push(seen)
      copies.order.add(seen)
      // beyond the bound, the oldest is forgotten: its copies still to come (if any) are counted anew
      if (copies.order.size > COPIES_KEPT) this.forgetCopies(topic, copies, copies.order.values().next().value!)
    }
    if (slot < seen.sure.length) add(this.claims.get(seen.sure[slot]))
    else this.claims.forEachMatch(topic, add)
  }

  /** A message whose every copy came, or the oldest of too many (see `attributeCopy`). */
  private forgetCopies(topic: string, copies: TopicCopies, seen: CopiesSeen): void {
    copies.order.delete(seen)
    const same = copies.byHash.get(seen.hash)!
    if (same.length === 1) copies.byHash.delete(seen.hash)
    else same.splice(same.indexOf(seen), 1)
    if (copies.order.size === 0) this.copiesSeen?.delete(topic)
  }

  /**
   * The subscriptions the broker sends a copy of a message on `topic` for (see `attributeCopy`): `sure`, the
   * filters it acknowledged and holds whatever becomes of the requests in flight, in the order it came to hold
   * them; `maybe`, how many filters a SUBSCRIBE or UNSUBSCRIBE written and not acknowledged yet makes or ends.
   */
  private copySlots(topic: string): { readonly sure: ReadonlyArray<string>; readonly maybe: number } {
    let changing: Set<string> | undefined
    const requests = this.line.size === 0 ? this.sent.values() : [...this.sent.values(), ...this.line.items()]
    for (const request of requests) {
      if (!request.written) continue
      for (const { filter } of request.filters) {
        // a filter held and subscribed again stays held; one not held and unsubscribed stays not held
        if ((request.kind === "Subscribe") === this.broker.has(filter) || !matches(topic, filter)) continue
        if (changing === undefined) changing = new Set()
        changing.add(filter)
      }
    }
    const held: Array<readonly [number, string]> = []
    this.broker.trie.forEachMatch(topic, (order, filter) => {
      if (changing?.has(filter) !== true) held.push([order, filter])
    })
    if (held.length > 1) held.sort((a, b) => a[0] - b[0])
    return { sure: held.map(([, filter]) => filter), maybe: changing?.size ?? 0 }
  }

  /**
   * A connection carries the session. Without Session Present the broker holds nothing: the client restores
   * what callers were told, except what a waiting request sets anyway, before the waiting requests. On a resumed
   * session, the filters of requests that failed with the last connection are set again to what callers were told;
   * all of them are, `elsewhere` (a session resumed on another broker, which may hold an older form of it).
   */
  resume(
    sessionPresent: boolean,
    limits: RequestLimits,
    startedClean: boolean,
    out: Output,
    elsewhere = false
  ): void {
    this.connected = true
    this.resumed = sessionPresent
    this.limits = limits
    const dropped: Array<number> = []
    const waiting = this.withoutReleased(this.line.drain(), dropped)
    const own: Array<Request> = []
    if (!sessionPresent) {
      this.complete = true
      this.forgetRetired()
      // the broker sends no copy of a message of the lost session
      this.copiesSeen = undefined
      const touched = new Set<string>()
      for (const request of waiting) for (const f of request.filters) touched.add(f.filter)
      const groups = new Map<number, Array<FilterSpec>>()
      for (const [filter, held] of this.broker) {
        if (touched.has(filter)) continue
        // uncertain and claimed by no owner (an UNSUBSCRIBE no packet of the last connection could carry, see
        // `giveUp`): callers were told it is gone, as a resumed session's reconcile would drop it
        if (this.uncertain.has(filter) && this.wanted(filter) === undefined) continue
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
      own.push(
        ...(elsewhere
          ? this.reconcile(new Set([...this.broker.keys(), ...this.uncertain]), true)
          : this.reconcile(this.uncertain))
      )
      this.uncertain.clear()
    }
    for (const request of own) this.line.push(request)
    for (const request of waiting) this.line.push(request)
    for (const identifier of dropped) this.retire(identifier)
    this.pump(out)
  }

  /**
   * Requests waiting from an earlier connection, without the filters of the client's own SUBSCRIBE (a restore)
   * that no owner claims any more since a caller's request failed with that connection (`uncertain`): callers
   * were told they are gone. The identifiers of the SUBSCRIBE requests dropped whole go to `dropped`.
   */
  private withoutReleased(requests: ReadonlyArray<Request>, dropped: Array<number>): ReadonlyArray<Request> {
    if (this.uncertain.size === 0) return requests
    const kept: Array<Request> = []
    for (const request of requests) {
      if (request.changes !== undefined || request.kind !== "Subscribe") {
        kept.push(request)
        continue
      }
      const filters = request.filters.filter((f) =>
        !this.uncertain.has(f.filter) || this.wanted(f.filter) !== undefined
      )
      if (filters.length === request.filters.length) kept.push(request)
      else if (filters.length > 0) {
        kept.push(new Request("Subscribe", filters, request.identifier, undefined, undefined))
      } else dropped.push(request.identifier)
    }
    return kept
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
      request.fitted = false
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
    this.unsettled.clear()
    for (const request of this.sent.values()) out.end(request, error)
    for (const request of this.line.drain()) out.end(request, error)
    this.sent.clear()
  }
}

const hex = (code: number) => `0x${code.toString(16).padStart(2, "0")}`

/** The size of a packet whose Remaining Length is `body`: the fixed header's byte, the length's, the body. */
const packetSize = (body: number): number => 1 + (body < 128 ? 1 : body < 16_384 ? 2 : body < 2_097_152 ? 3 : 4) + body
