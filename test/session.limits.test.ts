/**
 * The session never writes a SUBSCRIBE or UNSUBSCRIBE that breaks the limits the broker announced in its CONNACK
 * (Maximum Packet Size, Wildcard Subscription Available, Shared Subscription Available), checked when the request
 * is written, on the connection it goes out on. No socket: the session core only.
 */
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Fiber, Stream } from "effect"
import * as IncomingQueue from "../src/IncomingQueue.ts"
import * as Codec from "../src/internal/codec.ts"
import { Deliveries } from "../src/internal/delivery.ts"
import { InboundRecord } from "../src/internal/output.ts"
import { MESSAGES, Request } from "../src/internal/subscriptions.ts"
import { ClientMetrics } from "../src/internal/telemetry.ts"
import * as MqttError from "../src/MqttError.ts"
import { MqttMessage } from "../src/MqttMessage.ts"
import { connack, Harness, spec } from "./support/sessionHarness.ts"

const lost = new MqttError.ConnectionLostError({ reason: "test" })

const long = (n: number) => `t/${"x".repeat(n)}`

/** The error an operation ended with, as [tag, filter, reason code]. */
const failure = (request: Request | undefined) => {
  expect(request?.done).toBe(true)
  const error = request?.error as MqttError.SubscribeError | MqttError.UnsubscribeError | undefined
  return [error?._tag, error?.filter, error?.reasonCode]
}

const topics = (packet: any): Array<string> =>
  packet.cmd === "subscribe" ? packet.subscriptions.map((s: any) => s.topic) : packet.unsubscriptions

describe("session: SUBSCRIBE and UNSUBSCRIBE within the broker's limits", () => {
  it("a SUBSCRIBE over the Maximum Packet Size ends with SubscribeError 0x95, unsent; the connection stays and a later one goes out", () => {
    const h = new Harness()
    h.connect(false, { maximumPacketSize: 100 })
    const big = h.subscribe(MESSAGES, [spec(long(120))])
    expect(failure(big)).toEqual(["SubscribeError", long(120), 0x95])
    expect((big.error as MqttError.SubscribeError).reasonString).toMatch(/not sent: .* bytes, the broker accepts 100/)
    expect(h.take()).toEqual([])
    expect(h.errors).toEqual([])
    expect(h.session.connected).toBe(true)
    // the caller was told it holds nothing: nothing is restored or routed for it
    expect(h.session.subscriptions.filtersOf(MESSAGES)).toEqual([])
    expect(h.session.subscriptions.pending).toBe(0)
    const small = h.subscribe(MESSAGES, [spec("t/ok")])
    expect(h.take().map(topics)).toEqual([["t/ok"]])
    h.receive({ _tag: "Suback", id: small.id, codes: [1] })
    expect(small.done && small.error === undefined).toBe(true)
  })

  it("the size counted is the whole packet's, user properties and Subscription Identifier included: one byte over is refused", () => {
    const h = new Harness()
    const filter = long(40)
    // the packet this SUBSCRIBE would be (with the first automatic identifier, 200000000: 4 bytes)
    const size = Codec.encodeSubscribe(5, 1, [{ topic: filter, qos: 1 }], 200_000_000, [["k", "v"]])
      .length
    h.connect(false, { maximumPacketSize: size - 1 })
    const refused = h.session.subscribe(MESSAGES, [spec(filter)], 0, [["k", "v"]], h.out) as Request
    h.drain()
    expect(failure(refused)[2]).toBe(0x95)
    expect(h.take()).toEqual([])
    h.lose(lost)
    h.connect(false, { maximumPacketSize: size })
    const fits = h.session.subscribe(MESSAGES, [spec(filter)], 0, [["k", "v"]], h.out) as Request
    h.drain()
    expect(fits.done).toBe(false)
    expect(h.take().map(topics)).toEqual([[filter]])
  })

  it("an UNSUBSCRIBE over the Maximum Packet Size ends with UnsubscribeError 0x95, unsent; the filters stay held", () => {
    const h = new Harness()
    h.connect(false, { maximumPacketSize: 100 })
    const filters = ["a", "b", "c", "d"].map((l) => `${l}/${"y".repeat(30)}`)
    for (const filter of filters) {
      const s = h.subscribe(MESSAGES, [spec(filter)])
      h.receive({ _tag: "Suback", id: s.id, codes: [1] })
    }
    h.take()
    const unsubscribe = h.unsubscribe(MESSAGES, filters)
    expect(failure(unsubscribe)).toEqual(["UnsubscribeError", filters[0], 0x95])
    expect(h.take()).toEqual([])
    expect([...h.session.subscriptions.filtersOf(MESSAGES)].sort()).toEqual(filters)
    // one at a time fits
    const one = h.unsubscribe(MESSAGES, [filters[0]])!
    expect(h.take().map(topics)).toEqual([[filters[0]]])
    h.receive({ _tag: "Unsuback", id: one.id, codes: [0] })
    expect(one.error).toBeUndefined()
  })

  it("a wildcard filter under Wildcard Subscription Available 0 ends with SubscribeError 0xA2, unsent, with every filter of its SUBSCRIBE", () => {
    const h = new Harness()
    h.connect(false, { wildcardSubscriptionAvailable: false })
    expect(h.session.info?.wildcardSubscriptionAvailable).toBe(false)
    for (const filter of ["a/#", "a/+/c", "#", "$share/g/a/+"]) {
      expect(failure(h.subscribe(MESSAGES, [spec(filter)]))).toEqual(["SubscribeError", filter, 0xa2])
    }
    expect(failure(h.subscribe(MESSAGES, [spec("a/b"), spec("c/+")]))).toEqual(["SubscribeError", "c/+", 0xa2])
    expect(h.take()).toEqual([])
    expect(h.session.subscriptions.filtersOf(MESSAGES)).toEqual([])
    h.subscribe(MESSAGES, [spec("a/b")])
    expect(h.take().map(topics)).toEqual([["a/b"]])
    expect(h.errors).toEqual([])
  })

  it("a shared subscription under Shared Subscription Available 0 ends with SubscribeError 0x9E, unsent", () => {
    const h = new Harness()
    h.connect(false, { sharedSubscriptionAvailable: false })
    expect(failure(h.subscribe(1, [spec("$share/workers/jobs")]))).toEqual([
      "SubscribeError",
      "$share/workers/jobs",
      0x9e
    ])
    expect(h.take()).toEqual([])
    expect(h.session.subscriptions.filtersOf(1)).toEqual([])
    // a filter that only starts like one is not shared
    h.subscribe(1, [spec("$shared/jobs")])
    expect(h.take().map(topics)).toEqual([["$shared/jobs"]])
  })

  it("MQTT 3.1.1 announces no limits: nothing is refused", () => {
    const h = new Harness({ protocolVersion: 4 })
    h.connect()
    h.subscribe(MESSAGES, [spec("a/#"), spec("$share/g/b"), spec(long(500))])
    expect(h.take().map(topics)).toEqual([["a/#", "$share/g/b", long(500)]])
  })

  it("requests queued while offline are checked against the connection they go out on; the others are written", () => {
    const h = new Harness()
    const wildcard = h.subscribe(MESSAGES, [spec("a/#")])
    const big = h.subscribe(MESSAGES, [spec(long(200))])
    const fine = h.subscribe(MESSAGES, [spec("a/b")])
    expect(h.take()).toEqual([])
    h.connect(false, { wildcardSubscriptionAvailable: false, maximumPacketSize: 128 })
    expect(failure(wildcard)).toEqual(["SubscribeError", "a/#", 0xa2])
    expect(failure(big)).toEqual(["SubscribeError", long(200), 0x95])
    expect(fine.done).toBe(false)
    expect(h.take().map(topics)).toEqual([["a/b"]])
    expect(h.session.subscriptions.filtersOf(MESSAGES)).toEqual(["a/b"])
  })

  it("a SUBSCRIBE resent after a reconnect that breaks the new connection's limits ends there, unsent; nothing loops, and the resumed session is set back at once", () => {
    const h = new Harness()
    h.connect()
    const s = h.subscribe(MESSAGES, [spec("a/#")])
    expect(h.take().map(topics)).toEqual([["a/#"]])
    h.lose(lost)
    // another node of the cluster, which resumes the session but takes no wildcards
    h.connect(true, { wildcardSubscriptionAvailable: false })
    expect(failure(s)).toEqual(["SubscribeError", "a/#", 0xa2])
    // the session may hold it (the SUBSCRIBE went out on the first connection) while callers were told it is not
    // held: it is dropped on this connection, once
    const [reconcile] = h.take() as Array<any>
    expect([reconcile.cmd, topics(reconcile)]).toEqual(["unsubscribe", ["a/#"]])
    h.receive({ _tag: "Unsuback", id: reconcile.messageId, codes: [0x11] })
    for (let i = 0; i < 3; i++) {
      h.lose(lost)
      h.connect(true, { wildcardSubscriptionAvailable: false })
    }
    expect(h.take()).toEqual([])
    expect(h.session.subscriptions.filtersOf(MESSAGES)).toEqual([])
  })

  it("a restore the new connection cannot take: the subscription ends (its stream fails), the rest is restored, and no reconnect sends it again", () => {
    const h = new Harness()
    h.connect()
    for (const [owner, filter] of [[1, "a/#"], [MESSAGES, "a/#"], [2, "b/c"], [3, "$share/g/d"]] as const) {
      const s = h.subscribe(owner, [spec(filter)])
      h.receive({ _tag: "Suback", id: s.id, codes: [1] })
    }
    h.take()
    h.lose(lost)
    // a node that lost the session and takes neither wildcards nor shared subscriptions
    h.connect(false, { wildcardSubscriptionAvailable: false, sharedSubscriptionAvailable: false })
    expect(h.take().map(topics)).toEqual([["b/c"]])
    expect(h.errors).toEqual([])
    expect(h.failed.map(({ error, owner }) => [owner, (error as MqttError.SubscribeError).reasonCode])).toEqual([
      [1, 0xa2],
      [MESSAGES, 0xa2],
      [3, 0x9e]
    ])
    // told once per restore packet (each subscription had its own identifier)
    expect(h.warnings.filter((w) => w.includes("cannot be restored")).length).toBe(2)
    expect(h.session.subscriptions.filtersOf(MESSAGES)).toEqual([])
    expect(h.session.subscriptions.filtersOf(1)).toEqual([])
    expect(h.session.subscriptions.filtersOf(2)).toEqual(["b/c"])
    for (const properties of [{ wildcardSubscriptionAvailable: false }, {}]) {
      h.lose(lost)
      h.connect(false, properties)
      expect(h.take().map(topics)).toEqual([["b/c"]])
    }
  })

  it("a restore larger than the Maximum Packet Size is split into SUBSCRIBE packets that fit; a filter too large alone ends", () => {
    const h = new Harness()
    h.connect(false, { subscriptionIdentifiersAvailable: false })
    const filters = Array.from({ length: 10 }, (_, i) => `f/0${i}`)
    const s = h.subscribe(MESSAGES, [...filters, long(60)].map((f) => spec(f)))
    h.receive({ _tag: "Suback", id: s.id, codes: filters.map(() => 1).concat(1) })
    h.take()
    h.lose(lost)
    // each filter takes 2 + 4 + 1 bytes; the body starts with 3 (identifier, no properties): 3 filters make 26
    const max = 2 + 3 + 3 * 7
    h.session.onConnack(
      connack(false, { subscriptionIdentifiersAvailable: false, maximumPacketSize: max }),
      false,
      h.out
    )
    const sizes = h.out.send.map((bytes) => bytes.length)
    h.drain()
    expect(sizes).toEqual([max, max, max, max - 2 * 7])
    const restored = h.take()
    expect(restored.flatMap(topics)).toEqual(filters)
    // `messages` lets go of it (its queue never fails)
    expect(h.failed.map(({ owner }) => owner)).toEqual([MESSAGES])
    expect(h.warnings.some((w) => w.includes(long(60)) && w.includes("0x95"))).toBe(true)
    for (const p of restored as Array<any>) {
      h.receive({
        _tag: "Suback",
        id: p.messageId,
        codes: topics(p).map(() => 1)
      })
    }
    expect([...h.session.subscriptions.brokerFilters().keys()]).toEqual(filters)
    expect(h.session.subscriptions.pending).toBe(0)
  })

  it("a restore split on one connection and lost before its SUBACKs is fitted again to the next connection's limits", () => {
    const h = new Harness()
    h.connect(false, { subscriptionIdentifiersAvailable: false })
    const filters = Array.from({ length: 6 }, (_, i) => `f/0${i}`)
    const s = h.subscribe(MESSAGES, filters.map((f) => spec(f)))
    h.receive({ _tag: "Suback", id: s.id, codes: filters.map(() => 1) })
    h.take()
    h.lose(lost)
    h.connect(false, { subscriptionIdentifiersAvailable: false, maximumPacketSize: 2 + 3 + 3 * 7 })
    expect(h.take().map(topics)).toEqual([filters.slice(0, 3), filters.slice(3)])
    h.lose(lost)
    h.connect(false, { subscriptionIdentifiersAvailable: false, maximumPacketSize: 2 + 3 + 2 * 7 })
    // each earlier part is fitted on its own, in order
    expect(h.take().map(topics)).toEqual([["f/00", "f/01"], ["f/02"], ["f/03", "f/04"], ["f/05"]])
    expect(h.failed).toEqual([])
    expect(h.session.subscriptions.filtersOf(MESSAGES)).toEqual(filters)
  })

  it("a restore split while packet identifiers run out waits in line, in order", () => {
    const h = new Harness()
    h.connect(false, { subscriptionIdentifiersAvailable: false })
    const filters = ["f/00", "f/01", "f/02", "f/03"]
    const s = h.subscribe(MESSAGES, filters.map((f) => spec(f)))
    h.receive({ _tag: "Suback", id: s.id, codes: [1, 1, 1, 1] })
    h.take()
    h.lose(lost)
    // all identifiers but one in use
    const held: Array<number> = []
    while (h.session.ids.size < 65534) held.push(h.session.ids.acquire())
    const late = h.subscribe(MESSAGES, [spec("z")])
    h.connect(false, { subscriptionIdentifiersAvailable: false, maximumPacketSize: 2 + 3 + 2 * 7 })
    expect(h.take().map(topics)).toEqual([["f/00", "f/01"]])
    for (const id of held) h.session.ids.release(id)
    h.session.pump(h.out)
    h.drain()
    expect(h.take().map(topics)).toEqual([["f/02", "f/03"], ["z"]])
    expect(late.done).toBe(false)
  })
})

describe("session: refusals keep the broker and the claims in step", () => {
  const hold = (h: Harness, owner: number, filters: ReadonlyArray<string>, qos: 0 | 1 | 2 = 1) => {
    const s = h.subscribe(owner, filters.map((f) => spec(f, qos)))
    h.receive({ _tag: "Suback", id: s.id, codes: filters.map(() => qos) })
    h.take()
    return s
  }
  const big: ReadonlyArray<readonly [string, string]> = [["k", "x".repeat(200)]]

  it("Session Present 0: a waiting SUBSCRIBE that the connection refuses does not leave its filter unrestored", () => {
    const h = new Harness()
    h.connect()
    hold(h, 1, ["a/b"])
    h.lose(lost)
    // waiting: the restore skips "a/b" for it, then the connection refuses it (too large with its properties)
    const upgrade = h.session.subscribe(1, [spec("a/b", 2)], 0, big, h.out) as Request
    h.drain()
    h.connect(false, { maximumPacketSize: 100 })
    expect(failure(upgrade)).toEqual(["SubscribeError", "a/b", 0x95])
    // the owner still holds "a/b" at QoS 1: the broker is asked for it, now
    const [restore] = h.take() as Array<any>
    expect([restore.cmd, restore.subscriptions.map((s: any) => [s.topic, s.qos])]).toEqual([
      "subscribe",
      [["a/b", 1]]
    ])
    h.receive({ _tag: "Suback", id: restore.messageId, codes: [1] })
    expect([...h.session.subscriptions.brokerFilters().keys()]).toEqual(["a/b"])
    expect(h.session.subscriptions.filtersOf(1)).toEqual(["a/b"])
  })

  it("Session Present 0: a waiting UNSUBSCRIBE refused (0x95) leaves the filters held, and the broker is asked for them again", () => {
    const h = new Harness({ protocolVersion: 5 })
    h.connect(false, { subscriptionIdentifiersAvailable: false })
    const filters = ["a", "b", "c", "d"].map((l) => `${l}/${"y".repeat(30)}`)
    hold(h, MESSAGES, filters)
    h.lose(lost)
    const unsubscribe = h.unsubscribe(MESSAGES, filters)
    h.connect(false, { subscriptionIdentifiersAvailable: false, maximumPacketSize: 100 })
    expect(failure(unsubscribe)).toEqual(["UnsubscribeError", filters[0], 0x95])
    const restored = h.take() as Array<any>
    expect(restored.map((p) => p.cmd)).toEqual(restored.map(() => "subscribe"))
    expect(restored.flatMap(topics)).toEqual(filters)
    for (const p of restored) h.receive({ _tag: "Suback", id: p.messageId, codes: topics(p).map(() => 1) })
    expect([...h.session.subscriptions.brokerFilters().keys()].sort()).toEqual(filters)
    expect(h.failed).toEqual([])
  })

  it("a request written before a reconnect and refused on a connection that did not resume the session is not reconciled later", () => {
    const h = new Harness()
    h.connect()
    hold(h, 1, ["a/b"])
    h.session.subscribe(1, [spec("a/b", 2)], 0, big, h.out)
    h.drain()
    expect(h.take().map(topics)).toEqual([["a/b"]])
    h.lose(lost)
    h.connect(false, { maximumPacketSize: 100 })
    const [restore] = h.take() as Array<any>
    h.receive({ _tag: "Suback", id: restore.messageId, codes: [1] })
    // the broker that lost the session holds what it was just given: nothing to set again on a resumed session
    h.lose(lost)
    h.connect(true, { maximumPacketSize: 100 })
    expect(h.take()).toEqual([])
  })

  it("a restore given up on a resumed session: the broker is asked to drop it on that connection", () => {
    const h = new Harness({ offlineRequests: "fail" })
    h.connect()
    hold(h, 1, ["a/#"])
    // an upgrade that fails with its connection: on a resumed session "a/#" is set back to QoS 1
    const upgrade = h.subscribe(1, [spec("a/#", 2)])
    h.take()
    h.lose(lost)
    expect(upgrade.error?._tag).toBe("ConnectionLostError")
    h.connect(true, { wildcardSubscriptionAvailable: false })
    expect(h.failed.map(({ owner, error }) => [owner, (error as MqttError.SubscribeError).reasonCode])).toEqual([
      [1, 0xa2]
    ])
    // the broker may still hold it, and would keep sending it: UNSUBSCRIBE now, not on a later connection
    const [drop] = h.take() as Array<any>
    expect([drop.cmd, topics(drop)]).toEqual(["unsubscribe", ["a/#"]])
    h.receive({ _tag: "Unsuback", id: drop.messageId, codes: [0] })
    expect(h.session.subscriptions.pending).toBe(0)
    h.lose(lost)
    h.connect(true, { wildcardSubscriptionAvailable: false })
    expect(h.take()).toEqual([])
  })

  it("a large restore given up is stored once and told in one warning", () => {
    const h = new Harness({ offlineRequests: "fail" })
    h.out.journal = []
    h.connect()
    const filters = Array.from({ length: 300 }, (_, i) => `w/${i}/#`)
    hold(h, MESSAGES, filters)
    h.subscribe(MESSAGES, filters.map((f) => spec(f, 2)))
    h.take()
    h.lose(lost)
    h.out.journal.length = 0
    h.connect(true, { wildcardSubscriptionAvailable: false })
    expect(h.out.journal.filter((e) => e.t === "S").length).toBe(1)
    const told = h.warnings.filter((w) => w.includes("cannot be restored"))
    expect(told.length).toBe(1)
    expect(told[0]).toContain("and 290 more")
    expect(h.session.subscriptions.filtersOf(MESSAGES)).toEqual([])
    expect(h.take().flatMap(topics)).toEqual(filters)
  })

  describe("an unsubscribe and a subscribe again of one filter, both refused: the owner holds it as before", () => {
    const filter = long(40)
    const told = (unsubscribe: Request | undefined, subscribe: Request) => {
      expect(unsubscribe?.done && unsubscribe.error !== undefined).toBe(true)
      expect(subscribe.done && subscribe.error !== undefined).toBe(true)
    }

    it("refused when written (Maximum Packet Size, Session Present 1): nothing to send, the claim stays", () => {
      const h = new Harness()
      h.connect()
      hold(h, 1, [filter])
      h.lose(lost)
      const unsubscribe = h.unsubscribe(1, [filter])
      const subscribe = h.subscribe(1, [spec(filter, 2)])
      h.connect(true, { maximumPacketSize: 30 })
      told(unsubscribe, subscribe)
      expect(h.session.subscriptions.filtersOf(1)).toEqual([filter])
      expect([...h.session.subscriptions.brokerFilters().keys()]).toEqual([filter])
      expect(h.take()).toEqual([])
    })

    it("refused when written after Session Present 0: the claim stays, and a restore the connection cannot take ends it", () => {
      const h = new Harness()
      h.connect()
      hold(h, 1, [filter])
      h.lose(lost)
      const unsubscribe = h.unsubscribe(1, [filter])
      const subscribe = h.subscribe(1, [spec(filter, 2)])
      h.connect(false, { maximumPacketSize: 30 })
      told(unsubscribe, subscribe)
      // the owner held it, and no packet of this connection can carry it: its stream is told it ends
      expect(h.failed.map(({ owner, error }) => [owner, (error as MqttError.SubscribeError).filter])).toEqual([
        [1, filter]
      ])
      expect(h.session.subscriptions.filtersOf(1)).toEqual([])
      expect(h.take()).toEqual([])
    })

    it("refused by the broker (UNSUBACK and SUBACK 0x80)", () => {
      const h = new Harness()
      h.connect()
      hold(h, 1, [filter])
      const unsubscribe = h.unsubscribe(1, [filter])
      const subscribe = h.subscribe(1, [spec(filter, 2)])
      expect(h.take().map(topics)).toEqual([[filter], [filter]])
      h.receive({ _tag: "Unsuback", id: unsubscribe!.id, codes: [0x80] })
      h.receive({ _tag: "Suback", id: subscribe.id, codes: [0x80] })
      expect(unsubscribe!.codes).toEqual([0x80])
      expect(subscribe.codes).toEqual([0x80])
      expect(h.session.subscriptions.filtersOf(1)).toEqual([filter])
    })

    it("the subscribe refused by the broker first, then the unsubscribe", () => {
      const h = new Harness()
      h.connect()
      hold(h, 1, [filter])
      const unsubscribe = h.unsubscribe(1, [filter])
      const subscribe = h.subscribe(1, [spec(filter, 2)])
      h.take()
      h.receive({ _tag: "Suback", id: subscribe.id, codes: [0x80] })
      h.receive({ _tag: "Unsuback", id: unsubscribe!.id, codes: [0x80] })
      expect(h.session.subscriptions.filtersOf(1)).toEqual([filter])
    })

    it("the unsubscribe refused, the subscribe acknowledged: held at the QoS of the subscribe", () => {
      const h = new Harness()
      h.connect()
      hold(h, 1, [filter])
      const unsubscribe = h.unsubscribe(1, [filter])
      const subscribe = h.subscribe(1, [spec(filter, 2)])
      h.take()
      h.receive({ _tag: "Unsuback", id: unsubscribe!.id, codes: [0x80] })
      h.receive({ _tag: "Suback", id: subscribe.id, codes: [2] })
      expect(h.session.subscriptions.filtersOf(1)).toEqual([filter])
      expect(h.session.subscriptions.brokerFilters().get(filter)?.spec.qos).toBe(2)
    })

    it("the subscribe acknowledged first: the unsubscribe refused later changes nothing", () => {
      const h = new Harness()
      h.connect()
      hold(h, 1, [filter])
      const unsubscribe = h.unsubscribe(1, [filter])
      const subscribe = h.subscribe(1, [spec(filter, 2)])
      const again = h.unsubscribe(1, [filter])
      h.take()
      h.receive({ _tag: "Suback", id: subscribe.id, codes: [2] })
      h.receive({ _tag: "Unsuback", id: unsubscribe!.id, codes: [0x80] })
      expect(h.session.subscriptions.filtersOf(1)).toEqual([])
      // the last unsubscribe refused: back to what the subscribe set
      h.receive({ _tag: "Unsuback", id: again!.id, codes: [0x80] })
      expect(h.session.subscriptions.filtersOf(1)).toEqual([filter])
    })

    it("both fail with their connection (offline.requests \"fail\"): a resumed session is set back to the filter", () => {
      const h = new Harness({ offlineRequests: "fail" })
      h.connect()
      hold(h, 1, [filter])
      const unsubscribe = h.unsubscribe(1, [filter])
      const subscribe = h.subscribe(1, [spec(filter, 2)])
      h.take()
      h.lose(lost)
      told(unsubscribe, subscribe)
      expect(h.session.subscriptions.filtersOf(1)).toEqual([filter])
      h.connect(true)
      const [again] = h.take() as Array<any>
      expect([again.cmd, topics(again), again.subscriptions[0].qos]).toEqual(["subscribe", [filter], 1])
    })
  })

  it("a filter let go of whose UNSUBSCRIBE no packet of the connection can carry is not restored after Session Present 0", () => {
    const h = new Harness()
    const filter = long(40)
    h.connect()
    hold(h, MESSAGES, [filter])
    // another owner's subscribe, written; `messages` lets go at once (the other owner holds it)
    h.subscribe(1, [spec(filter)])
    expect(h.unsubscribe(MESSAGES, [filter])).toBeUndefined()
    h.take()
    h.lose(lost)
    // the resent SUBSCRIBE is refused: no owner holds the filter, and its UNSUBSCRIBE waits for a resumed session
    h.connect(true, { maximumPacketSize: 30 })
    expect(h.take()).toEqual([])
    expect(h.warnings.some((w) => w.startsWith(`the UNSUBSCRIBE from "${filter}"`))).toBe(true)
    h.lose(lost)
    // the broker lost the session: it holds nothing, and nothing is restored
    h.connect(false)
    expect(h.take()).toEqual([])
    expect([...h.session.subscriptions.brokerFilters().keys()]).toEqual([])
  })

  for (const sessionPresent of [false, true]) {
    it(
      `offline.requests "fail": a restore waiting since a lost connection leaves out a filter callers let go of (Session Present ${
        sessionPresent ? 1 : 0
      })`,
      () => {
        const h = new Harness({ offlineRequests: "fail" })
        h.connect()
        hold(h, 2, ["c/#"])
        h.lose(lost)
        h.connect(false)
        expect(h.take().map(topics)).toEqual([["c/#"]])
        // the restore is not acknowledged; `messages` claims the filter, then owner 2 lets go of it at once
        const subscribe = h.subscribe(MESSAGES, [spec("c/#")])
        expect(h.unsubscribe(2, ["c/#"])).toBeUndefined()
        h.take()
        h.lose(lost)
        expect(subscribe.error?._tag).toBe("ConnectionLostError")
        expect(h.session.subscriptions.filtersOf(MESSAGES)).toEqual([])
        h.connect(sessionPresent)
        // nothing restored; a resumed session (which may hold it from the restore) is asked to drop it
        const written = h.take() as Array<any>
        expect(written.map((p) => [p.cmd, topics(p)])).toEqual(sessionPresent ? [["unsubscribe", ["c/#"]]] : [])
      }
    )
  }

  it("a caller's Subscription Identifier written on a connection without them ends with SubscribeError 0xA1, unsent", () => {
    const h = new Harness()
    const s = h.subscribe(1, [spec("a/b")], 7)
    h.connect(false, { subscriptionIdentifiersAvailable: false })
    expect(failure(s)).toEqual(["SubscribeError", "a/b", 0xa1])
    expect(h.take()).toEqual([])
    expect(h.session.subscriptions.filtersOf(1)).toEqual([])
    // without one, the same filter goes out
    h.subscribe(1, [spec("a/b")])
    expect(h.take().map(topics)).toEqual([["a/b"]])
  })
})

describe("delivery: a failed owner's copy", () => {
  /** Deliveries whose acknowledgements (record ids) and warnings are recorded. */
  const deliveries = (strategy: IncomingQueue.Strategy = IncomingQueue.unbounded) => {
    const context = Effect.runSync(Effect.context<never>())
    const acknowledged: Array<number> = []
    const warnings: Array<string> = []
    const d = new Deliveries(
      strategy,
      false,
      (record) => {
        acknowledged.push(record.id)
        return undefined
      },
      { isStale: () => false, awaitsConnection: () => false, abandon: () => {} },
      new ClientMetrics("c", context),
      (warning) => warnings.push(warning)
    )
    return { d, acknowledged, warnings }
  }
  const error = new MqttError.SubscribeError({ filter: "a/#", reasonCode: 0xa2, reasonString: "test" })
  /** A message on `topic` whose payload is `text`. */
  const textOn = (topic: string) => (text: string, qos: 0 | 1) =>
    new MqttMessage(topic, new TextEncoder().encode(text), qos, false, false, undefined)
  /** Takes every message waiting in `queue`: their payloads as text. */
  const pollTexts = (queue: { poll(): MqttMessage | undefined }) => {
    const texts: Array<string> = []
    for (let m = queue.poll(); m !== undefined; m = queue.poll()) texts.push(new TextDecoder().decode(m.payload))
    return texts
  }
  /** A delivery of a message on `topic` (its payload the topic) to `messages` only. */
  const unclaimedAt = (qos: 0 | 1) => (topic: string) => ({
    message: new MqttMessage(topic, new TextEncoder().encode(topic), qos, false, false, undefined),
    owners: [MESSAGES],
    record: undefined
  })

  it("goes to `messages` once, and not at all when `messages` takes the message already", () => {
    const { d } = deliveries()
    // the application reads `messages`
    d.subscribed()
    const one = d.addQueue(false)
    const two = d.addQueue(false)
    d.fail(one.owner, error)
    d.fail(two.owner, error)
    const message = (text: string) => new MqttMessage("a/b", new TextEncoder().encode(text), 0, false, false, undefined)
    d.deliver([
      { message: message("both"), owners: [one.owner, MESSAGES], record: undefined },
      { message: message("two failed"), owners: [one.owner, two.owner], record: undefined }
    ])
    expect(d.messages.size).toBe(2)
  })

  it("a released stream's leftovers: acknowledged when `messages` took the same PUBLISH, else handed to `messages` (a PUBLISH of the stream's own subscription is its own delivery)", () => {
    const { d } = deliveries()
    d.subscribed()
    const text = (m: MqttMessage) => new TextDecoder().decode(m.payload)
    const stream = d.addQueue(false)
    const to = (owners: ReadonlyArray<number>, topic: string, payload: string) => ({
      message: new MqttMessage(topic, new TextEncoder().encode(payload), 0, false, false, undefined),
      owners,
      record: undefined
    })
    d.deliver([
      // one PUBLISH for both (MQTT 3.1.1)
      to([stream.owner, MESSAGES], "t/1", "same publish"),
      // a PUBLISH per subscription (MQTT 5): two deliveries, one each
      to([MESSAGES], "t/2", "x"),
      to([stream.owner], "t/2", "x"),
      to([stream.owner], "t/3", "alone")
    ])
    const before: Array<string> = []
    for (let m = d.messages.poll(); m !== undefined; m = d.messages.poll()) before.push(`${m.topic} ${text(m)}`)
    d.remove(stream.owner)
    const handed: Array<string> = []
    for (let m = d.messages.poll(); m !== undefined; m = d.messages.poll()) handed.push(`${m.topic} ${text(m)}`)
    expect(before).toEqual(["t/1 same publish", "t/2 x"])
    expect(handed).toEqual(["t/2 x", "t/3 alone"])
  })

  it("a copy for a released stream that arrives after it went: acknowledged when `messages` takes the same PUBLISH, else handed there", () => {
    const { d } = deliveries()
    d.subscribed()
    const gone = d.addQueue(false)
    d.remove(gone.owner)
    const to = (owners: ReadonlyArray<number>, topic: string) => ({
      message: new MqttMessage(topic, new TextEncoder().encode(topic), 0, false, false, undefined),
      owners,
      record: undefined
    })
    d.deliver([to([gone.owner, MESSAGES], "t/both"), to([gone.owner], "t/other")])
    const taken: Array<string> = []
    for (let m = d.messages.poll(); m !== undefined; m = d.messages.poll()) taken.push(m.topic)
    expect(taken).toEqual(["t/both", "t/other"])
  })

  it("is given up, counted as dropped, with one warning, when the application does not read `messages`: acknowledged unread before the next acknowledgement", () => {
    const { acknowledged, d, warnings } = deliveries()
    const one = d.addQueue(false)
    d.fail(one.owner, error)
    const message = (text: string) => new MqttMessage("a/b", new TextEncoder().encode(text), 1, false, false, undefined)
    d.deliver([1, 2].map((id) => ({
      message: message(`m${id}`),
      owners: [one.owner],
      record: new InboundRecord(id, 1, 0)
    })))
    expect(d.messages.size).toBe(0)
    expect(d.dropped).toBe(2)
    expect(warnings.length).toBe(1)
    // not yet acknowledged: a client about to close leaves them to the session
    expect(acknowledged).toEqual([])
    // an arrival does not let them go (a program that stops may still receive while it waits for its UNSUBACK)
    d.deliver([{ message: message("m3"), owners: [MESSAGES], record: new InboundRecord(3, 1, 0) }])
    expect(acknowledged).toEqual([])
    // the next acknowledgement does: they would hold it back
    d.messages.poll()
    expect(acknowledged).toEqual([1, 2, 3])
  })

  it("a new subscription stream takes, first, what waits unclaimed on `messages` and matches its filters, when the application does not read `messages`", () => {
    const { d } = deliveries()
    const unclaimed = (topic: string) => ({
      message: new MqttMessage(topic, new TextEncoder().encode(topic), 1, false, true, undefined),
      owners: [MESSAGES],
      record: undefined
    })
    // a resumed session's backlog, before the application subscribed again
    d.deliver(["jobs/1", "other/1", "jobs/2"].map(unclaimed))
    const { owner, queue } = d.addQueue(false)
    d.claimBacklog(owner, ["jobs/+"])
    expect(queue.drainUnsafe().map((m) => m.topic)).toEqual(["jobs/1", "jobs/2"])
    expect(d.messages.drainUnsafe().map((m) => m.topic)).toEqual(["other/1"])
    // a subscription that is not made (its SUBACK refused it, it was interrupted) hands its claim back
    d.deliver(["jobs/4"].map(unclaimed))
    const failed = d.addQueue(false)
    d.claimBacklog(failed.owner, ["jobs/+"])
    expect(failed.queue.size).toBe(1)
    d.remove(failed.owner)
    expect(d.messages.drainUnsafe().map((m) => m.topic)).toEqual(["jobs/4"])
    expect(d.dropped).toBe(0)
    // once the application reads `messages`, what waits there is its
    d.deliver(["jobs/3"].map(unclaimed))
    d.subscribed()
    const later = d.addQueue(false)
    d.claimBacklog(later.owner, ["jobs/+"])
    expect(later.queue.size).toBe(0)
    expect(d.messages.size).toBe(1)
  })

  it("a subscription that fails hands its claim back to the front of `messages`: before what came there since, so each topic keeps its order; what came for it meanwhile goes last", () => {
    const { d } = deliveries()
    const to = (owners: ReadonlyArray<number>) => (topic: string) => ({
      message: new MqttMessage(topic, new TextEncoder().encode(topic), 1, false, false, undefined),
      owners,
      record: undefined
    })
    d.deliver(["jobs/1", "other/1", "jobs/2"].map(to([MESSAGES])))
    const failed = d.addQueue(false)
    d.claimBacklog(failed.owner, ["jobs/+"])
    // while its SUBSCRIBE waits: a later message of a claimed topic on `messages`, one routed to the new stream
    d.deliver(["jobs/1-later", "other/2"].map(to([MESSAGES])))
    d.deliver(["jobs/5"].map(to([failed.owner])))
    d.remove(failed.owner)
    expect(d.messages.drainUnsafe().map((m) => m.topic)).toEqual([
      "jobs/1",
      "jobs/2",
      "other/1",
      "jobs/1-later",
      "other/2",
      "jobs/5"
    ])
  })

  it("a failed subscription's claim goes back ahead of what the reader, waiting for room in `messages`, still holds", () =>
    Effect.gen(function*() {
      const { d } = deliveries(IncomingQueue.bounded(2))
      const unclaimed = unclaimedAt(1)
      const waiting = d.deliver(["jobs/1", "jobs/2", "jobs/3", "jobs/4", "jobs/5", "jobs/6"].map(unclaimed))
      const reader = yield* Effect.forkChild(waiting!, { startImmediately: true })
      const { owner } = d.addQueue(false)
      d.claimBacklog(owner, ["jobs/+"])
      yield* Effect.yieldNow
      // the SUBSCRIBE fails: its scope releases the stream
      d.remove(owner)
      const order: Array<string> = []
      while (order.length < 6) {
        const m = d.messages.poll()
        if (m === undefined) yield* Effect.yieldNow
        else order.push(m.topic)
      }
      yield* Fiber.join(reader)
      expect(order).toEqual(["jobs/1", "jobs/2", "jobs/3", "jobs/4", "jobs/5", "jobs/6"])
    }).pipe(Effect.runPromise))

  it("a backlog the reader still held (waiting for room in a full `messages`) when the subscription claimed is claimed too, once the subscription is made", () =>
    Effect.gen(function*() {
      const { d } = deliveries(IncomingQueue.bounded(2))
      const unclaimed = unclaimedAt(0)
      // a resumed session's backlog, more than `messages` holds: the reader waits for room with the rest
      const waiting = d.deliver(["jobs/1", "jobs/2", "jobs/3", "other/1"].map(unclaimed))
      expect(waiting).toBeDefined()
      const reader = yield* Effect.forkChild(waiting!, { startImmediately: true })
      const { owner, queue } = d.addQueue(false)
      d.claimBacklog(owner, ["jobs/+"])
      // the room made lets the reader go on: the rest enters `messages` after the claim
      yield* Fiber.join(reader)
      expect(d.messages.size).toBe(2)
      // the SUBACK: claimed again
      d.confirm(owner)
      const taken: Array<string> = []
      for (let m = queue.poll(); m !== undefined; m = queue.poll()) taken.push(m.topic)
      expect(taken).toEqual(["jobs/1", "jobs/2", "jobs/3"])
      expect(d.messages.drainUnsafe().map((m) => m.topic)).toEqual(["other/1"])
    }).pipe(Effect.runPromise))

  it("claimed again at the SUBACK, what the reader held comes after what the first claim took and before what the subscription brought since (FIFO and LIFO)", () =>
    Effect.gen(function*() {
      for (
        const [strategy, expected] of [
          [IncomingQueue.bounded(4), ["jobs/1", "jobs/2", "jobs/3", "jobs/4"]],
          [IncomingQueue.lifo(4), ["jobs/4", "jobs/3", "jobs/2", "jobs/1"]]
        ] as const
      ) {
        const { d } = deliveries(strategy)
        const message = (topic: string) =>
          new MqttMessage(topic, new TextEncoder().encode(topic), 0, false, false, undefined)
        const waiting = d.deliver(
          ["jobs/1", "other/1", "other/2", "jobs/2", "jobs/3", "other/3"].map((t) => ({
            message: message(t),
            owners: [MESSAGES],
            record: undefined
          }))
        )
        const reader = yield* Effect.forkChild(waiting!, { startImmediately: true })
        const { owner, queue } = d.addQueue(false)
        d.claimBacklog(owner, ["jobs/+"])
        yield* Fiber.join(reader)
        // routed to the new subscription before its SUBACK was handled
        d.deliver([{ message: message("jobs/4"), owners: [owner], record: undefined }])
        d.confirm(owner)
        const taken: Array<string> = []
        for (let m = queue.poll(); m !== undefined; m = queue.poll()) taken.push(m.topic)
        expect(taken).toEqual(expected)
      }
    }).pipe(Effect.runPromise))

  it("claimed again at the SUBACK into a sliding queue that let some of the first claim go: the held ones still come before what was routed since", () => {
    const { d } = deliveries(IncomingQueue.sliding(4))
    const message = (topic: string) =>
      new MqttMessage(topic, new TextEncoder().encode(topic), 0, false, false, undefined)
    d.deliver(["c/1", "c/2", "c/3", "c/4"].map((t) => ({ message: message(t), owners: [MESSAGES], record: undefined })))
    const { owner, queue } = d.addQueue(false)
    d.claimBacklog(owner, ["c/+"])
    // held by the reader, then on `messages` (an MQTT 5 backlog under the old subscription identifier goes there too)
    d.deliver([{ message: message("c/h"), owners: [MESSAGES], record: undefined }])
    d.deliver(["c/s1", "c/s2"].map((t) => ({ message: message(t), owners: [owner], record: undefined })))
    d.confirm(owner)
    const taken: Array<string> = []
    for (let m = queue.poll(); m !== undefined; m = queue.poll()) taken.push(m.topic)
    expect(taken).toEqual(["c/4", "c/h", "c/s1", "c/s2"])
  })

  it("a queue released by a consumer that the same delivery woke takes nothing: its copy goes to `messages`, not lost unanswered", () =>
    Effect.gen(function*() {
      const { acknowledged, d } = deliveries()
      d.subscribed()
      const a = d.addQueue(false)
      const b = d.addQueue(false)
      // A's consumer, woken by the delivery, releases B's stream at once (as a finished subscription scope does)
      const consumer = yield* Effect.forkChild(
        Effect.flatMap(a.queue.take, () => Effect.sync(() => d.remove(b.owner))),
        { startImmediately: true }
      )
      const record = Object.assign(new InboundRecord(1, 1, 0), { pending: 2, queued: 2 })
      const message = new MqttMessage("t", new TextEncoder().encode("m"), 1, false, false, undefined)
      d.deliver([{ message, owners: [a.owner, b.owner], record }])
      yield* Fiber.join(consumer)
      expect(d.messages.size).toBe(1)
      d.messages.poll()
      // both copies answered: the one A took, the one taken from `messages`
      expect(acknowledged).toEqual([1, 1])
    }).pipe(Effect.runPromise))

  it("a cut wait (a SUBSCRIBE awaits its SUBACK behind queues nothing consumed yet): QoS 1/2 leftovers go in beyond the capacity, QoS 0 ones are dropped and counted", () =>
    Effect.gen(function*() {
      const { d, warnings } = deliveries(IncomingQueue.bounded(2))
      const message = textOn("t")
      const waiting = d.deliver(
        [message("a", 1), message("b", 0), message("c", 1), message("d", 0), message("e", 1)].map((m) => ({
          message: m,
          owners: [MESSAGES],
          record: undefined
        }))
      )
      expect([waiting !== undefined, d.stalledUnread]).toEqual([true, true])
      const reader = yield* Effect.forkChild(waiting!, { startImmediately: true })
      d.cutStall("unread")
      yield* Fiber.interrupt(reader)
      const taken = pollTexts(d.messages)
      expect(taken).toEqual(["a", "b", "c", "e"])
      expect(d.dropped).toBe(1)
      expect(warnings.some((w) => w.includes("QoS 0 message(s) dropped"))).toBe(true)
    }).pipe(Effect.runPromise))

  it("a wait on queues nothing consumed when it began, whose consumer started since: not cut when a SUBSCRIBE awaits its SUBACK (nothing dropped; the consumer makes the room)", () =>
    Effect.gen(function*() {
      const { d, warnings } = deliveries(IncomingQueue.bounded(2))
      const waiting = d.deliver(
        ["a", "b", "c", "d"].map((text) => ({
          message: new MqttMessage("t", new TextEncoder().encode(text), 0, false, false, undefined),
          owners: [MESSAGES],
          record: undefined
        }))
      )
      expect([waiting !== undefined, d.stalledUnread]).toEqual([true, true])
      const reader = yield* Effect.forkChild(waiting!, { startImmediately: true })
      // a consumer starts reading `messages` while the reader waits, and is slow with its first message
      const taken: Array<string> = []
      const slow = yield* Deferred.make<void>()
      const consumer = yield* d.messages.stream.pipe(
        Stream.take(4),
        Stream.runForEach((m) =>
          Effect.flatMap(
            Effect.sync(() => taken.push(new TextDecoder().decode(m.payload))),
            (count) => count === 1 ? Deferred.await(slow) : Effect.void
          )
        ),
        Effect.forkChild({ startImmediately: true })
      )
      expect(taken).toEqual(["a"])
      // the SUBSCRIBE's cut comes while the reader still waits for room for "d"
      d.cutStall("unread")
      expect(d.dropped).toBe(0)
      yield* Deferred.succeed(slow, undefined)
      yield* Fiber.join(consumer)
      yield* Fiber.join(reader)
      expect(taken).toEqual(["a", "b", "c", "d"])
      expect(warnings).toEqual([])
    }).pipe(Effect.runPromise))

  it("a stuck wait (consumers took nothing while the client's own request awaits its acknowledgement) is cut on a consumed queue too: QoS 1/2 go in, QoS 0 are dropped and counted; until something is taken, the next wait is cut at once", () =>
    Effect.gen(function*() {
      const { d, warnings } = deliveries(IncomingQueue.bounded(2))
      const message = textOn("t")
      const deliver = (messages: ReadonlyArray<MqttMessage>) =>
        d.deliver(messages.map((m) => ({ message: m, owners: [MESSAGES], record: undefined })))
      // a consumer took one message, then waits (for its publish's PUBACK, behind the reader's wait)
      d.messages.consumed = true
      expect(deliver([message("a", 1)])).toBeUndefined()
      d.messages.poll()
      const waiting = deliver([message("b", 0), message("c", 1), message("d", 0), message("e", 1)])
      expect(waiting).toBeDefined()
      const reader = yield* Effect.forkChild(waiting!, { startImmediately: true })
      expect(d.stillStuck).toBe(false)
      // the cut for an unread queue does not apply: it was consumed
      expect(d.cutStall("unread")).toBe(false)
      expect(d.cutStall("stuck")).toBe(true)
      // the reader's race ends its wait
      yield* Fiber.interrupt(reader)
      expect(d.dropped).toBe(1)
      expect(warnings.filter((w) => w.includes("its consumer waited (or nothing took from it")).length).toBe(1)
      expect(d.stillStuck).toBe(true)
      const taken = pollTexts(d.messages)
      expect(taken).toEqual(["b", "c", "e"])
      // something was taken: the next wait gets its grace again
      expect(d.stillStuck).toBe(false)
    }).pipe(Effect.runPromise))

  it("LIFO and priority queues: what is moved (a released stream's leftovers, a claimed backlog, the rest put back) keeps its queue's order there", () => {
    const text = (m: MqttMessage) => new TextDecoder().decode(m.payload)
    const unclaimed = (topic: string, payload: string) => ({
      message: new MqttMessage(topic, new TextEncoder().encode(payload), 0, false, false, undefined),
      owners: [MESSAGES],
      record: undefined
    })
    const takeAll = (queue: { poll(): MqttMessage | undefined }) => {
      const out: Array<string> = []
      for (let m = queue.poll(); m !== undefined; m = queue.poll()) out.push(text(m))
      return out
    }
    // LIFO: a claimed backlog, and what stays on `messages`, still come out newest first
    const lifo = deliveries(IncomingQueue.lifo(100)).d
    lifo.deliver(["jobs/1", "other/1", "jobs/2", "other/2", "jobs/3"].map((t) => unclaimed(t, t)))
    const claimer = lifo.addQueue(false)
    lifo.claimBacklog(claimer.owner, ["jobs/+"])
    expect(takeAll(claimer.queue)).toEqual(["jobs/3", "jobs/2", "jobs/1"])
    expect(takeAll(lifo.messages)).toEqual(["other/2", "other/1"])
    // LIFO: a released stream's leftovers go to `messages` (read by the application) newest first
    lifo.subscribed()
    const released = lifo.addQueue(false)
    lifo.deliver(["a", "b", "c"].map((p) => ({ ...unclaimed("t", p), owners: [released.owner] })))
    lifo.remove(released.owner)
    expect(takeAll(lifo.messages)).toEqual(["c", "b", "a"])
    // priority (lower first): by priority, ties in arrival order, after the move too
    const byPriority =
      deliveries(IncomingQueue.priority({ capacity: 100, priority: (m) => Number(text(m).split(":")[0]) })).d
    byPriority.subscribed()
    const stream = byPriority.addQueue(false)
    byPriority.deliver(["1:a", "2:b", "1:c", "3:d"].map((p) => ({ ...unclaimed("t", p), owners: [stream.owner] })))
    byPriority.remove(stream.owner)
    expect(takeAll(byPriority.messages)).toEqual(["1:a", "1:c", "2:b", "3:d"])
  })

  it("messages waiting to enter a stream's full queue when the stream is released are given up with the rest, not lost unanswered", () =>
    Effect.gen(function*() {
      const { acknowledged, d } = deliveries(IncomingQueue.bounded(2))
      const { owner } = d.addQueue(false)
      const records = [1, 2, 3, 4].map((id) => Object.assign(new InboundRecord(id, 1, 0), { pending: 1, queued: 1 }))
      const waiting = d.deliver(records.map((record) => ({
        message: new MqttMessage("a/b", new TextEncoder().encode(String(record.id)), 1, false, false, undefined),
        owners: [owner],
        record
      })))
      expect(waiting).toBeDefined()
      const reader = Effect.runFork(waiting!)
      yield* Effect.yieldNow
      d.remove(owner)
      yield* Fiber.join(reader)
      expect(d.dropped).toBe(4)
      expect(records.map((r) => r.queued)).toEqual([0, 0, 0, 0])
      // given up: acknowledged after the grace period (a guard against a hang, not a timing claim); the session
      // puts the acknowledgements on the wire in arrival order, whatever order they are reported in
      for (let i = 0; i < 100 && acknowledged.length < 4; i++) yield* Effect.sleep("50 millis")
      expect([...acknowledged].sort()).toEqual([1, 2, 3, 4])
    }).pipe(Effect.runPromise))

  it("what was given up unread and not acknowledged yet stays unacknowledged when the client closes; otherwise it is acknowledged after a grace period", () =>
    Effect.gen(function*() {
      const leave = (d: Deliveries, id: number) => {
        const { owner } = d.addQueue(false)
        d.deliver([{
          message: new MqttMessage("a/b", new TextEncoder().encode("left"), 1, false, false, undefined),
          owners: [owner],
          record: new InboundRecord(id, 1, 0)
        }])
        d.remove(owner)
      }
      const closing = deliveries()
      leave(closing.d, 1)
      closing.d.close(undefined)
      const staying = deliveries()
      leave(staying.d, 2)
      // nothing else happens: the grace period lets it go (a guard against a hang, not a timing claim)
      for (let i = 0; i < 100 && staying.acknowledged.length === 0; i++) yield* Effect.sleep("50 millis")
      expect(staying.acknowledged).toEqual([2])
      expect(closing.acknowledged).toEqual([])
      expect([closing.d.dropped, staying.d.dropped]).toEqual([1, 1])
    }).pipe(Effect.runPromise))

  it("what a released stream leaves goes to `messages` once the application has run `messages`, and is given up before", () => {
    const { d, warnings } = deliveries(IncomingQueue.bounded(10))
    const leave = (texts: ReadonlyArray<string>) => {
      const { owner } = d.addQueue(false)
      d.deliver(texts.map((text) => ({
        message: new MqttMessage("a/b", new TextEncoder().encode(text), 0, false, false, undefined),
        owners: [owner],
        record: undefined
      })))
      d.remove(owner)
    }
    leave(["before"])
    expect([d.messages.size, d.dropped, warnings.length]).toEqual([0, 1, 1])
    // a consumer of `messages`: it waits for one message
    const taken: Array<string> = []
    Effect.runFork(Stream.runForEach(Stream.take(d.messages.stream, 1), (m) => Effect.sync(() => taken.push(m.text))))
    leave(["after 1", "after 2"])
    expect(d.dropped).toBe(1)
    expect([...taken, ...d.messages.drainUnsafe().map((m) => m.text)]).toEqual(["after 1", "after 2"])
  })
})
