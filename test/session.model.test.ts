/**
 * Model-based tests of the session: random interleavings of calls, acknowledgements, connection losses, Session
 * Present 0/1, CONNACKs with new limits and consumers taking messages, against a small model of what the broker
 * holds. After every step the invariants of issue 8 are checked; at quiescence, that the broker holds what callers
 * were told and every owner received each matching message once.
 */
import { assert, describe, it } from "@effect/vitest"
import * as fc from "fast-check"
import type * as MqttPacket from "mqtt-packet"
import { Buffer } from "node:buffer"
import { PublishEntry } from "../src/internal/outgoing.ts"
import type { Operation } from "../src/internal/output.ts"
import type * as Packets from "../src/internal/packets.ts"
import { MESSAGES, type Request } from "../src/internal/subscriptions.ts"
import { isShared, matches } from "../src/internal/topic.ts"
import * as MqttError from "../src/MqttError.ts"
import type { QoS } from "../src/MqttMessage.ts"
import { connack, Harness, message, publish, spec } from "./support/sessionHarness.ts"

/** a long filter: too large for a SUBSCRIBE (and its UNSUBSCRIBE) under the smallest Maximum Packet Size */
const LONG = `e/${"x".repeat(20)}`
const FILTERS = ["a/+", "a/b", "#", "c/#", "$share/g/a/b", LONG] as const
const TOPICS = ["a/b", "a/c", "c/d", "e", LONG] as const
const OWNERS = [MESSAGES, 1, 2] as const

type Action =
  | { readonly _tag: "Publish"; readonly qos: QoS; readonly retain: boolean; readonly big: boolean }
  | { readonly _tag: "Subscribe"; readonly owner: number; readonly filter: string; readonly qos: QoS }
  | { readonly _tag: "Unsubscribe"; readonly owner: number; readonly filter: string }
  | { readonly _tag: "BrokerProcess"; readonly n: number }
  | { readonly _tag: "BrokerSend"; readonly topic: string; readonly qos: QoS }
  | { readonly _tag: "Take"; readonly index: number }
  | { readonly _tag: "Lose"; readonly brokerKeepsSession: boolean }
  | {
    readonly _tag: "Connect"
    readonly rm: number
    readonly maxQoS: 1 | 2
    readonly maxSize: number
    readonly retain: boolean
    /** Wildcard and Shared Subscription Available (MQTT 5) */
    readonly wildcard?: boolean
    readonly shared?: boolean
  }

const action: fc.Arbitrary<Action> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      _tag: fc.constant("Publish" as const),
      qos: fc.constantFrom<QoS>(0, 1, 2),
      retain: fc.boolean(),
      big: fc.boolean()
    })
  },
  {
    weight: 2,
    arbitrary: fc.record({
      _tag: fc.constant("Subscribe" as const),
      owner: fc.constantFrom(...OWNERS),
      filter: fc.constantFrom(...FILTERS),
      qos: fc.constantFrom<QoS>(0, 1, 2)
    })
  },
  {
    weight: 1,
    arbitrary: fc.record({
      _tag: fc.constant("Unsubscribe" as const),
      owner: fc.constantFrom(...OWNERS),
      filter: fc.constantFrom(...FILTERS)
    })
  },
  {
    weight: 5,
    arbitrary: fc.record({ _tag: fc.constant("BrokerProcess" as const), n: fc.integer({ min: 1, max: 4 }) })
  },
  {
    weight: 3,
    arbitrary: fc.record({
      _tag: fc.constant("BrokerSend" as const),
      topic: fc.constantFrom(...TOPICS),
      qos: fc.constantFrom<QoS>(0, 1, 2)
    })
  },
  { weight: 3, arbitrary: fc.record({ _tag: fc.constant("Take" as const), index: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ _tag: fc.constant("Lose" as const), brokerKeepsSession: fc.boolean() }) },
  {
    weight: 2,
    arbitrary: fc.record({
      _tag: fc.constant("Connect" as const),
      rm: fc.integer({ min: 1, max: 4 }),
      maxQoS: fc.constantFrom<1 | 2>(1, 2),
      maxSize: fc.constantFrom(24, 60, 10_000),
      retain: fc.boolean(),
      wildcard: fc.boolean(),
      shared: fc.boolean()
    })
  }
)

/** A broker's view of one client session, with the rules a conforming broker follows. */
class Model {
  readonly h: Harness
  readonly version: 4 | 5
  connected = false
  /** what the broker holds: filter → identifier (MQTT 5) */
  subs = new Map<string, number>()
  /** packets from the client waiting for the broker's answer, in order */
  pending: Array<MqttPacket.Packet> = []
  /** client → broker flows holding an identifier: id → "publish1" | "publish2" | "pubrel" | "request" */
  flows = new Map<number, string>()
  /** QoS 1/2 publishes on the wire of this connection without PUBACK/PUBCOMP */
  inFlight = new Set<number>()
  limits = { rm: 65535, maxQoS: 2 as QoS, maxSize: Infinity, retain: true, wildcard: true, shared: true }
  /** call order of publishes, by payload seq; seqs written on this connection */
  seq = 0
  lastSeqOnConnection = -1
  /**
   * broker → client: flows holding an identifier (id → message), for resending on a resumed session: a QoS 1
   * message until its PUBACK; a QoS 2 one until its PUBCOMP is read, in order [MQTT-2.2.1-3] (`released` once the
   * PUBREL is sent: then the PUBREL is what a resumed session resends [MQTT-4.4.0-1])
   */
  toClient = new Map<
    number,
    { payload: string; topic: string; qos: QoS; identifiers: Array<number> | undefined; released: boolean }
  >()
  /**
   * broker → client: PUBLISH packets with this identifier that the client may still answer (PUBACK, PUBREC) on
   * this connection: each sent on it, and one for each message still unacknowledged from the last connection of a
   * resumed session. A message acknowledged on the resume is resent by the broker all the same (the PUBACK and the
   * resend cross), and after its PUBACK the client must take the resend as a new message and answer it too
   * [MQTT-4.3.2-2 (3.1.1), MQTT-4.3.2-5 (5)]: that second answer is owed, not stray.
   */
  owed = new Map<number, number>()
  nextToClientId = 1
  /** QoS 2 flows the broker started and the client took (payload and packet identifier → times delivered) */
  deliveries = new Map<string, number>()
  /**
   * per owner, what callers were last told they hold, and the call that told it (owner and filter → call number):
   * a call supersedes the ones before it, whenever it ends. An unsubscribe that needs no UNSUBSCRIBE (another
   * owner still holds the filter) ends at once, before the SUBACK of the same owner's earlier subscribe; that
   * SUBACK does not tell the caller it holds the filter again.
   */
  told = new Map<number, Set<string>>()
  toldBy = new Map<string, number>()
  calls = 0
  operations: Array<{ op: Operation; kind: string; call: number; owner?: number; filter?: string }> = []
  /** messages sent by the broker: payload → the owners that should get it, and how many times each did */
  expected = new Map<string, { owners: Map<number, number>; qos: QoS }>()
  sentTotal = 0

  constructor(version: 4 | 5, offlineRequests: "wait" | "fail") {
    this.version = version
    this.h = new Harness({
      protocolVersion: version,
      cleanStart: false,
      sessionExpiryInterval: 3600,
      maxInflight: 65535,
      offlineRequests
    })
  }

  /** Reads what the client wrote and checks it against the rules. */
  absorb(): void {
    for (const packet of this.h.take()) {
      const p = packet as any
      switch (packet.cmd) {
        case "publish": {
          assert.isTrue(this.connected, "nothing is written while disconnected")
          const bytes = Buffer.byteLength(p.topic) + p.payload.length + 20
          assert.isTrue(bytes <= this.limits.maxSize + 20, "fits the Maximum Packet Size")
          if (this.version === 5) {
            assert.isTrue(p.qos <= this.limits.maxQoS, "respects Maximum QoS")
            assert.isTrue(!p.retain || this.limits.retain, "respects Retain Available")
          }
          const seq = Number(Buffer.from(p.payload).toString().split(":")[0])
          if (!p.dup) {
            assert.isTrue(
              seq > this.lastSeqOnConnection,
              `publishes leave in call order (${seq} after ${this.lastSeqOnConnection})`
            )
            this.lastSeqOnConnection = seq
          }
          if (p.qos > 0) {
            const flow = this.flows.get(p.messageId)
            if (p.dup) assert.strictEqual(flow, `publish${p.qos}`, "a resend keeps its identifier")
            else assert.isUndefined(flow, `identifier ${p.messageId} is not reused while in flight`)
            this.flows.set(p.messageId, `publish${p.qos}`)
            this.inFlight.add(p.messageId)
            assert.isTrue(this.inFlight.size <= this.limits.rm, "never more in flight than Receive Maximum")
          }
          this.pending.push(packet)
          break
        }
        case "pubrel":
          this.inFlight.add(p.messageId)
          assert.isTrue(this.inFlight.size <= this.limits.rm, "PUBREL counts in Receive Maximum")
          this.pending.push(packet)
          break
        case "subscribe":
        case "unsubscribe": {
          assert.isTrue(this.connected, "nothing is written while disconnected")
          const size = 1 + (p.length < 128 ? 1 : p.length < 16_384 ? 2 : 3) + p.length
          assert.isTrue(size <= this.limits.maxSize, `a ${packet.cmd} fits the Maximum Packet Size (${size})`)
          if (packet.cmd === "subscribe" && this.version === 5) {
            for (const { topic } of p.subscriptions) {
              assert.isTrue(this.limits.wildcard || !/[+#]/.test(topic), `no wildcard SUBSCRIBE (${topic})`)
              assert.isTrue(this.limits.shared || !isShared(topic), `no shared SUBSCRIBE (${topic})`)
            }
          }
          const flow = this.flows.get(p.messageId)
          assert.isUndefined(flow, `identifier ${p.messageId} is not reused while in flight`)
          this.flows.set(p.messageId, "request")
          this.pending.push(packet)
          break
        }
        case "puback":
        case "pubrec": {
          assert.isTrue(this.connected, "nothing is written while disconnected")
          const owed = this.owed.get(p.messageId) ?? 0
          assert.isTrue(owed > 0, `acknowledges only what the broker sent (${packet.cmd} ${p.messageId})`)
          this.owed.set(p.messageId, owed - 1)
          const sent = this.toClient.get(p.messageId)
          if (sent !== undefined) {
            assert.strictEqual(sent.qos, packet.cmd === "puback" ? 1 : 2, "the acknowledgement of its QoS")
            assert.isFalse(
              this.h.delivered.some((d) => d.record?.id === p.messageId && d.message.text === sent.payload),
              `${sent.payload} is acknowledged only once taken`
            )
          }
          if (packet.cmd === "puback") this.toClient.delete(p.messageId)
          else this.pending.push(packet)
          break
        }
        case "pubcomp":
          assert.isTrue(this.connected, "nothing is written while disconnected")
          this.pending.push(packet)
          break
        default:
          assert.fail(`unexpected ${packet.cmd}`)
      }
    }
    for (const op of this.h.ended.splice(0)) this.settled(op)
    // a subscription the session gave up (a restore the connection cannot take): the owner no longer holds it
    for (const { error, owner } of this.h.failed.splice(0)) {
      this.tell(this.calls++, owner, (error as MqttError.SubscribeError).filter, false)
    }
  }

  private settled(op: Operation): void {
    const record = this.operations.find((o) => o.op === op)
    if (record === undefined || record.kind === "publish") return
    if (op.error !== undefined) return
    const request = op as Request
    if (request.codes.some((c) => c >= 0x80)) return
    this.tell(record.call, record.owner!, record.filter!, record.kind === "subscribe")
  }

  private tell(call: number, owner: number, filter: string, holds: boolean): void {
    const key = `${owner} ${filter}`
    if ((this.toldBy.get(key) ?? -1) > call) return
    this.toldBy.set(key, call)
    const told = this.told.get(owner) ?? new Set()
    this.told.set(owner, told)
    if (holds) told.add(filter)
    else told.delete(filter)
  }

  step(a: Action): void {
    const h = this.h
    switch (a._tag) {
      case "Publish": {
        const seq = this.seq++
        const payload = `${seq}:` + (a.big ? "x".repeat(100) : "")
        const result = h.publish(message("out/t", payload, a.qos, this.version, a.retain))
        if (result instanceof PublishEntry) this.operations.push({ op: result, kind: "publish", call: this.calls++ })
        break
      }
      case "Subscribe": {
        let request: Request
        try {
          request = h.subscribe(a.owner, [spec(a.filter, a.qos)])
        } catch (e) {
          if ((e as any)?._tag === "OfflineError") break
          throw e
        }
        this.operations.push({ op: request, kind: "subscribe", call: this.calls++, owner: a.owner, filter: a.filter })
        break
      }
      case "Unsubscribe": {
        let request: Request | undefined
        try {
          request = h.unsubscribe(a.owner, [a.filter])
        } catch (e) {
          if ((e as any)?._tag === "OfflineError") break
          throw e
        }
        const call = this.calls++
        if (request === undefined) this.tell(call, a.owner, a.filter, false)
        else this.operations.push({ op: request, kind: "unsubscribe", call, owner: a.owner, filter: a.filter })
        break
      }
      case "BrokerProcess":
        if (this.connected) this.process(a.n)
        break
      case "BrokerSend":
        if (this.connected) this.send(a.topic, a.qos)
        break
      case "Take": {
        if (h.delivered.length === 0) break
        const [d] = h.delivered.splice(a.index % h.delivered.length, 1)
        if (d.message.qos === 2) {
          // on MQTT 5 the broker sends a copy per matching subscription, each a QoS 2 flow of its own (its own
          // packet identifier [MQTT-3.3.4-5]): exactly once is per flow [MQTT-4.3.3]
          const flow = `${d.message.text}#${d.record!.id}`
          this.deliveries.set(flow, (this.deliveries.get(flow) ?? 0) + 1)
        }
        const expected = this.expected.get(d.message.text)
        if (expected !== undefined) {
          for (const owner of d.owners) expected.owners.set(owner, (expected.owners.get(owner) ?? 0) + 1)
        }
        if (d.record !== undefined) { for (let i = 0; i < d.owners.length; i++) h.session.settled(d.record, h.out) }
        h.drain()
        break
      }
      case "Lose":
        if (!this.connected) break
        this.connected = false
        h.lose(new MqttError.ConnectionLostError({ reason: "model" }))
        this.pending = []
        this.inFlight.clear()
        this.owed.clear()
        if (!a.brokerKeepsSession) {
          this.subs.clear()
          this.flows.clear()
          this.toClient.clear()
          this.sessionLost = true
        }
        break
      case "Connect": {
        if (this.connected) break
        this.connected = true
        const v5 = this.version === 5
        this.limits = {
          rm: a.rm,
          maxQoS: a.maxQoS,
          maxSize: a.maxSize,
          retain: a.retain,
          wildcard: !v5 || a.wildcard !== false,
          shared: !v5 || a.shared !== false
        }
        this.lastSeqOnConnection = -1
        const present = this.everConnected && !this.sessionLost
        if (!present) {
          this.flows.clear()
          this.subs.clear()
          this.toClient.clear()
        }
        this.sessionLost = false
        this.everConnected = true
        // what the client may still answer: the messages of the session it resumes, and their resends below
        this.owed = new Map([...this.toClient].map(([id, m]) => [id, m.released ? 0 : 2]))
        h.session.onConnack(
          connack(present, {
            receiveMaximum: a.rm,
            ...(v5
              ? {
                maximumQoS: a.maxQoS === 2 ? undefined : 1,
                retainAvailable: a.retain,
                wildcardSubscriptionAvailable: this.limits.wildcard,
                sharedSubscriptionAvailable: this.limits.shared
              }
              : {}),
            maximumPacketSize: a.maxSize
          } as Packets.ConnackProperties),
          h.session.cleanStart,
          h.out
        )
        h.drain()
        if (present) {
          // the broker resends what it sent and the client did not acknowledge, in order: PUBLISH with DUP, or the
          // PUBREL of a QoS 2 flow whose PUBREC it read [MQTT-4.4.0-1]
          for (const [id, m] of this.toClient) {
            if (m.released) {
              h.receive({ _tag: "Pubrel", id, reasonCode: 0 })
              continue
            }
            h.receive(
              publish(m.topic, m.payload, m.qos, id, {
                dup: true,
                properties: m.identifiers === undefined ? undefined : { subscriptionIdentifiers: m.identifiers }
              })
            )
          }
        }
        break
      }
    }
    this.absorb()
    assert.deepStrictEqual(
      this.h.errors.map((e) => e.message),
      [],
      "the session never sees the model broker break the protocol"
    )
  }

  everConnected = false
  sessionLost = false

  /** The broker answers the oldest packets, in order, as a conforming broker. */
  private process(n: number): void {
    const h = this.h
    for (let i = 0; i < n && this.pending.length > 0; i++) {
      const p = this.pending.shift()! as any
      switch (p.cmd) {
        case "publish":
          if (p.qos === 1) this.ack("Puback", p.messageId)
          if (p.qos === 2) h.receive({ _tag: "Pubrec", id: p.messageId, reasonCode: 0 })
          break
        case "pubrel":
          this.ack("Pubcomp", p.messageId)
          break
        case "pubrec": {
          // a PUBREC is answered with PUBREL [MQTT-4.3.3-4]; also a second one (the answer to a resend that crossed
          // the first); one for no QoS 2 flow with 0x92, Packet Identifier not found (MQTT 5)
          const sent = this.toClient.get(p.messageId)
          if (sent?.qos === 2) sent.released = true
          const known = sent?.qos === 2 || this.version === 4
          h.receive({ _tag: "Pubrel", id: p.messageId, reasonCode: known ? 0 : 0x92 })
          break
        }
        case "pubcomp":
          // the identifier is free once the PUBCOMP is read, after every packet the client wrote before it
          if (this.toClient.get(p.messageId)?.released === true) this.toClient.delete(p.messageId)
          break
        case "subscribe": {
          const identifier = p.properties?.subscriptionIdentifier ?? 0
          for (const s of p.subscriptions) this.subs.set(s.topic, identifier)
          this.flows.delete(p.messageId)
          h.receive({ _tag: "Suback", id: p.messageId, codes: p.subscriptions.map((s: any) => s.qos) })
          break
        }
        case "unsubscribe":
          for (const f of p.unsubscriptions) this.subs.delete(f)
          this.flows.delete(p.messageId)
          h.receive({
            _tag: "Unsuback",
            id: p.messageId,
            codes: this.version === 5 ? p.unsubscriptions.map(() => 0) : undefined
          })
          break
      }
    }
  }

  private ack(tag: "Puback" | "Pubcomp", id: number): void {
    this.flows.delete(id)
    this.inFlight.delete(id)
    this.h.receive({ _tag: tag, id, reasonCode: 0 })
  }

  /** The broker publishes to the client: MQTT 5 a copy per matching subscription with its identifier. */
  private send(topic: string, qos: QoS): void {
    const matching = [...this.subs].filter(([filter]) => matches(topic, filter))
    if (matching.length === 0) return
    const payload = `in-${this.sentTotal++}`
    const owners = new Map<number, number>()
    const copies = this.version === 5 ? matching.map((m) => [m]) : [matching]
    this.expected.set(payload, { owners, qos })
    for (const copy of copies) {
      const identifiers = this.version === 5 && copy[0][1] !== 0 ? [copy[0][1]] : undefined
      let id = 0
      if (qos > 0) {
        if (this.toClient.size >= 60000) return
        // a prudent broker does not reuse an identifier that an answer may still come for
        while (this.toClient.has(this.nextToClientId) || (this.owed.get(this.nextToClientId) ?? 0) > 0) {
          this.nextToClientId = (this.nextToClientId % 65535) + 1
        }
        id = this.nextToClientId
        this.toClient.set(id, { payload, topic, qos, identifiers, released: false })
        this.owed.set(id, 1)
      }
      this.h.receive(
        publish(topic, payload, qos, id, {
          properties: identifiers === undefined ? undefined : { subscriptionIdentifiers: identifiers }
        })
      )
    }
  }

  /** Connected, every request answered, every message taken: the broker holds what callers were told. */
  quiesce(): void {
    // an UNSUBSCRIBE no packet of a connection can carry waits for a resumed one that can: quiesce on one
    const { maxSize, shared, wildcard } = this.limits
    if (this.connected && (maxSize < 1_000 || !wildcard || !shared)) {
      this.step({ _tag: "Lose", brokerKeepsSession: true })
    }
    if (!this.connected) this.step({ _tag: "Connect", rm: 65535, maxQoS: 2, maxSize: 1_000_000, retain: true })
    for (let round = 0; round < 50 && (this.pending.length > 0 || this.h.delivered.length > 0); round++) {
      this.step({ _tag: "BrokerProcess", n: 100 })
      while (this.h.delivered.length > 0) this.step({ _tag: "Take", index: 0 })
    }
    const told = new Set<string>()
    for (const filters of this.told.values()) for (const f of filters) told.add(f)
    assert.deepStrictEqual([...this.subs.keys()].sort(), [...told].sort(), "the broker holds what callers were told")
    for (const [flow, times] of this.deliveries) assert.strictEqual(times, 1, `QoS 2 ${flow} delivered once`)
    for (const [payload, { owners }] of this.expected) {
      for (const [owner, times] of owners) {
        assert.isTrue(times <= FILTERS.length, `owner ${owner} got ${payload} at most once per filter (${times})`)
      }
    }
  }

  close(): void {
    const error = new MqttError.ConnectionLostError({ reason: "closed" })
    this.h.session.close(error, this.h.out)
    this.h.drain()
    this.absorb()
    for (const { op } of this.operations) assert.isTrue(op.done, "every accepted operation ends")
    const ends = this.h.ended
    assert.strictEqual(new Set(ends).size, ends.length, "no operation ends twice")
  }
}

/** `offline.requests` of the random runs: MODEL_OFFLINE=fail searches with requests failing with their connection */
const OFFLINE: "wait" | "fail" = process.env.MODEL_OFFLINE === "fail" ? "fail" : "wait"

const run = (version: 4 | 5, actions: ReadonlyArray<Action>, offlineRequests = OFFLINE): void => {
  const model = new Model(version, offlineRequests)
  for (const a of actions) model.step(a)
  model.quiesce()
  model.close()
}

const connect: Action = { _tag: "Connect", rm: 1, maxQoS: 1, maxSize: 60, retain: false }

/** Counterexamples the property found once, replayed every time (each names what it caught). */
const counterexamples: ReadonlyArray<{
  name: string
  version: 4 | 5
  offlineRequests?: "wait" | "fail"
  actions: ReadonlyArray<Action>
}> = [
  {
    // model: a PUBACK sent on the resume and the broker's resend cross; the resend is answered too
    name: "a QoS 1 message taken offline: PUBACK on the resumed session, and again for the resend that crossed it",
    version: 4,
    actions: [
      connect,
      { _tag: "Subscribe", owner: 0, filter: "a/+", qos: 0 },
      { _tag: "BrokerProcess", n: 1 },
      { _tag: "BrokerSend", topic: "a/b", qos: 1 },
      { _tag: "Lose", brokerKeepsSession: true },
      { _tag: "Take", index: 0 }
    ]
  },
  {
    // model: each copy per subscription is a QoS 2 flow of its own, delivered once
    name: "QoS 2 to one owner through two subscriptions, a copy each",
    version: 5,
    actions: [
      connect,
      { _tag: "Subscribe", owner: 0, filter: "a/+", qos: 0 },
      { _tag: "Subscribe", owner: 0, filter: "#", qos: 0 },
      { _tag: "BrokerProcess", n: 2 },
      { _tag: "BrokerSend", topic: "a/b", qos: 2 }
    ]
  },
  {
    // model: an unsubscribe that ends at once is not undone by the SUBACK of the same owner's earlier subscribe
    name: "two owners subscribe and unsubscribe one filter while offline: the broker ends without it",
    version: 4,
    actions: [
      { _tag: "Subscribe", owner: 0, filter: "a/b", qos: 0 },
      { _tag: "Subscribe", owner: 2, filter: "a/b", qos: 0 },
      { _tag: "Unsubscribe", owner: 2, filter: "a/b" },
      { _tag: "Unsubscribe", owner: 0, filter: "a/b" }
    ]
  },
  {
    // session: the resend named the identifier of the replaced subscription, taken for a broken protocol
    name: "a QoS 2 message resent on a resumed session names the identifier of a subscription since replaced",
    version: 5,
    actions: [
      connect,
      { _tag: "Subscribe", owner: 0, filter: "a/+", qos: 0 },
      { _tag: "BrokerProcess", n: 1 },
      { _tag: "Subscribe", owner: 0, filter: "a/+", qos: 0 },
      { _tag: "BrokerSend", topic: "a/b", qos: 2 },
      { _tag: "BrokerProcess", n: 1 },
      { _tag: "Lose", brokerKeepsSession: true },
      { _tag: "Unsubscribe", owner: 0, filter: "a/+" }
    ]
  },
  {
    // model: the broker reused an identifier before reading the second PUBREC the client wrote before PUBCOMP
    name: "QoS 2 messages taken offline: PUBREC twice on the resumed session, the identifiers free only at PUBCOMP",
    version: 4,
    actions: [
      { _tag: "Subscribe", owner: 0, filter: "a/+", qos: 0 },
      connect,
      { _tag: "BrokerProcess", n: 1 },
      { _tag: "BrokerSend", topic: "a/b", qos: 2 },
      { _tag: "BrokerSend", topic: "a/b", qos: 2 },
      { _tag: "Lose", brokerKeepsSession: true },
      { _tag: "Take", index: 0 },
      { _tag: "Take", index: 0 },
      connect,
      { _tag: "BrokerProcess", n: 2 },
      { _tag: "BrokerSend", topic: "a/b", qos: 1 }
    ]
  },
  {
    // session: undoing the refused unsubscribe did nothing (the subscribe after it had replaced its change), and
    // undoing the refused subscribe went back to the unsubscribe's state: the filter callers hold was let go of
    name: "an acknowledged filter unsubscribed and subscribed again, both refused when written: the owner holds it",
    version: 4,
    actions: [
      { _tag: "Subscribe", owner: 0, filter: "a/+", qos: 0 },
      { _tag: "Subscribe", owner: 2, filter: LONG, qos: 0 },
      { _tag: "Unsubscribe", owner: 2, filter: LONG },
      { _tag: "Connect", rm: 1, maxQoS: 1, maxSize: 10_000, retain: false, wildcard: false, shared: false },
      { _tag: "Subscribe", owner: 2, filter: LONG, qos: 0 },
      { _tag: "BrokerProcess", n: 2 },
      { _tag: "Lose", brokerKeepsSession: false },
      { _tag: "Connect", rm: 1, maxQoS: 1, maxSize: 24, retain: false, wildcard: false, shared: false },
      { _tag: "BrokerProcess", n: 1 }
    ]
  },
  {
    // session: the UNSUBSCRIBE no packet of a connection could carry was forgotten when the broker lost the
    // session, and the restore that followed subscribed to the filter again, which no owner held any more
    name: "a filter let go of whose UNSUBSCRIBE cannot be sent, then Session Present 0: it is not restored",
    version: 5,
    actions: [
      { _tag: "Connect", rm: 1, maxQoS: 1, maxSize: 60, retain: false, wildcard: false, shared: false },
      { _tag: "Subscribe", owner: 0, filter: LONG, qos: 0 },
      { _tag: "BrokerProcess", n: 1 },
      { _tag: "Subscribe", owner: 1, filter: LONG, qos: 0 },
      { _tag: "Unsubscribe", owner: 0, filter: LONG },
      { _tag: "Lose", brokerKeepsSession: true },
      { _tag: "Connect", rm: 1, maxQoS: 1, maxSize: 24, retain: false, wildcard: false, shared: false },
      { _tag: "Lose", brokerKeepsSession: false }
    ]
  },
  {
    // session: the restore waiting from the lost connection still held a filter that no owner claimed any more
    // (one let go of it while another's subscribe kept it claimed, and that subscribe failed with the connection)
    name: "offline.requests \"fail\": a restore waiting since a lost connection leaves out a filter callers let go of",
    version: 4,
    offlineRequests: "fail",
    actions: [
      connect,
      { _tag: "Subscribe", owner: 2, filter: "c/#", qos: 0 },
      { _tag: "BrokerProcess", n: 1 },
      { _tag: "Lose", brokerKeepsSession: false },
      connect,
      { _tag: "Subscribe", owner: 0, filter: "c/#", qos: 0 },
      { _tag: "Unsubscribe", owner: 2, filter: "c/#" },
      { _tag: "Lose", brokerKeepsSession: false }
    ]
  },
  {
    // session: undoing the first unsubscribe (failed with its connection) gave the owner the filter back, though
    // its second unsubscribe (ended at once: another owner held the filter) had told it it holds nothing
    name: "offline.requests \"fail\": an unsubscribe that failed is not undone over a later one that ended at once",
    version: 4,
    offlineRequests: "fail",
    actions: [
      connect,
      { _tag: "Subscribe", owner: 1, filter: "c/#", qos: 0 },
      { _tag: "BrokerProcess", n: 1 },
      { _tag: "Unsubscribe", owner: 1, filter: "c/#" },
      { _tag: "Subscribe", owner: 0, filter: "c/#", qos: 0 },
      { _tag: "Unsubscribe", owner: 1, filter: "c/#" },
      { _tag: "Lose", brokerKeepsSession: false }
    ]
  }
]

describe("session model", () => {
  for (const { actions, name, offlineRequests, version } of counterexamples) {
    it(`MQTT ${version === 5 ? "5" : "3.1.1"}: ${name}`, () => run(version, actions, offlineRequests ?? "wait"))
  }

  for (const version of [4, 5] as const) {
    it(`MQTT ${version === 5 ? "5" : "3.1.1"}: random interleavings keep every invariant`, () => {
      // sequences of up to 120 actions ("medium"): the default size makes a handful, too few for a resend to
      // cross an acknowledgement. MODEL_RUNS=2000 searches longer; MODEL_SEED and MODEL_PATH replay a report;
      // MODEL_OFFLINE=fail runs with offline.requests "fail" (calls while offline are refused, and not made)
      const seed = process.env.MODEL_SEED
      fc.assert(
        fc.property(
          fc.array(action, { minLength: 1, maxLength: 120, size: "medium" }),
          (actions) => run(version, actions)
        ),
        {
          numRuns: Number(process.env.MODEL_RUNS ?? 400),
          ...(seed === undefined ? {} : { seed: Number(seed), path: process.env.MODEL_PATH ?? "", endOnFailure: true })
        }
      )
    })
  }
})
