/**
 * The sans-I/O session, driven event by event with no socket: packets in, packets and completions out. Each test
 * is one fault or rule of issue 8 and FAULTS.md, as a sequence of events and the exact packets that must follow.
 */
import { assert, describe, expect, it } from "@effect/vitest"
import * as fc from "fast-check"
import { Buffer } from "node:buffer"
import { SEPARATE_PAYLOAD } from "../src/internal/codec.ts"
import * as Journal from "../src/internal/journal.ts"
import { CLOSED_ON_LIMIT, PublishEntry } from "../src/internal/outgoing.ts"
import type * as Packets from "../src/internal/packets.ts"
import { AUTOMATIC_IDENTIFIERS_FROM, MESSAGES, RETIRED_KEPT } from "../src/internal/subscriptions.ts"
import * as MqttError from "../src/MqttError.ts"
import { ack, connack, Harness, LINE_FULL, message, OFFLINE_FULL, publish, spec } from "./support/sessionHarness.ts"

const lost = new MqttError.ConnectionLostError({ reason: "test" })

const entry = (value: unknown): PublishEntry => {
  assert(value instanceof PublishEntry, `expected a publish entry, got ${String(value)}`)
  return value
}
const texts = (packets: ReadonlyArray<any>) =>
  packets.map((p) => p.cmd === "publish" ? Buffer.from(p.payload).toString() : p.cmd)

describe("session: outgoing publishes", () => {
  it("a QoS 2 identifier retired (its resend refused by the new limits) stays out of use after a restart from the store, until the broker forgets the session", () => {
    const ids = (h: Harness) => h.take().map((p: any) => [p.cmd, p.messageId])
    /** What a store keeps: the journal's segments in their stored form, then a snapshot, read back. */
    const stored = (h: Harness, image = Journal.emptyImage()) => {
      const segment = Journal.decodeSegment(Journal.encodeSegment(h.out.journal!.splice(0)))
      if (typeof segment === "string") throw new Error(segment)
      Journal.apply(image, segment)
      const snapshot = Journal.decodeSnapshot(Journal.encodeSnapshot(image, 1))
      if (typeof snapshot === "string") throw new Error(snapshot)
      return snapshot.image
    }
    const h = new Harness({ cleanStart: false })
    h.out.journal = []
    h.connect(false)
    const big = entry(h.publish(message("t", "x".repeat(200), 2)))
    expect(ids(h)).toEqual([["publish", big.id]])
    // the broker took it; its PUBREC is lost with the connection: the broker holds the identifier until PUBREL
    h.lose(lost)
    h.connect(true, { maximumPacketSize: 100 })
    expect((big.error as any)?.reasonCode).toBe(0x95)
    const image = stored(h)
    expect([image.publishes.size, [...image.retired]]).toEqual([0, [big.id]])
    // the process restarts from the store: a new QoS 2 publish takes another identifier
    const again = new Harness({ cleanStart: false })
    again.session.restore(image)
    again.out.journal = []
    again.connect(true, { maximumPacketSize: 100 })
    const next = entry(again.publish(message("t", "new", 2)))
    expect(next.id).not.toBe(big.id)
    expect(ids(again)).toEqual([["publish", next.id]])
    // the broker forgets the session (Session Present 0): the identifier is free again, in the store too
    again.lose(lost)
    again.connect(false)
    again.take()
    const forgotten = stored(again, image)
    expect([...forgotten.retired]).toEqual([])
  })

  it("an acknowledgement for a resend still waiting in line (resumed session, smaller Receive Maximum) ends it there: not sent again, its turn and identifier given back", () => {
    const ids = (h: Harness) => h.take().map((p: any) => [p.cmd, p.messageId])
    for (const qos of [1, 2] as const) {
      const h = new Harness({ cleanStart: false })
      h.connect(false, { receiveMaximum: 2 })
      const a = entry(h.publish(message("t", "a", qos)))
      const b = entry(h.publish(message("t", "b", qos)))
      expect(ids(h)).toEqual([["publish", a.id], ["publish", b.id]])
      h.lose(lost)
      // Receive Maximum 1 now: b's resend waits in line behind a's
      h.connect(true, { receiveMaximum: 1 })
      expect(ids(h)).toEqual([["publish", a.id]])
      if (qos === 1) {
        // b's PUBACK of the last connection comes late
        h.receive(ack("Puback", b.id))
      } else {
        // b's PUBREC: its PUBREL waits for b's turn, then its PUBCOMP ends it
        h.receive(ack("Pubrec", b.id))
        expect(ids(h)).toEqual([])
        h.receive(ack("Pubrec", a.id))
        expect(ids(h)).toEqual([["pubrel", a.id]])
        h.receive(ack("Pubcomp", a.id))
        expect(ids(h)).toEqual([["pubrel", b.id]])
        h.receive(ack("Pubcomp", b.id))
      }
      expect([b.done, b.error]).toEqual([true, undefined])
      if (qos === 1) h.receive(ack("Puback", a.id))
      expect(a.done).toBe(true)
      expect(ids(h)).toEqual([])
      // nothing holds the one turn: a new publish goes at once
      const c = entry(h.publish(message("t", "c", qos)))
      expect(ids(h)).toEqual([["publish", c.id]])
      expect(h.session.outgoing.inFlight).toBe(1)
      expect(h.errors).toEqual([])
    }
  })

  it("publishes made offline leave in call order across QoS levels: s1 e1 s2 e2 s3 e3", () => {
    const h = new Harness({ protocolVersion: 4 })
    for (const n of [1, 2, 3]) {
      h.publish(message("s", `s${n}`, 0, 4))
      h.publish(message("e", `e${n}`, 1, 4))
    }
    expect(h.written).toEqual([])
    h.connect()
    expect(texts(h.take())).toEqual(["s1", "e1", "s2", "e2", "s3", "e3"])
  })

  it("QoS 0 waits behind an earlier QoS 1 that waits for quota; other packets are not held back", () => {
    const h = new Harness({ protocolVersion: 5 })
    h.connect(false, { receiveMaximum: 1 })
    const first = entry(h.publish(message("t", "q1-a", 1)))
    h.publish(message("t", "q1-b", 1))
    h.publish(message("t", "q0", 0))
    h.subscribe(MESSAGES, [spec("x/#")])
    expect(texts(h.take())).toEqual(["q1-a", "subscribe"])
    h.receive(ack("Puback", first.id))
    expect(texts(h.take())).toEqual(["q1-b", "q0"])
  })

  it("never more QoS 1/2 in flight than the broker's Receive Maximum; the quota starts afresh per connection", () => {
    const h = new Harness({ protocolVersion: 5 })
    h.connect(false, { receiveMaximum: 2 })
    const entries = [1, 2, 3, 4].map((n) => entry(h.publish(message("t", `m${n}`, 2))))
    expect(texts(h.take())).toEqual(["m1", "m2"])
    h.receive(ack("Pubrec", entries[0].id))
    // PUBREL still holds the quota until PUBCOMP
    expect(texts(h.take())).toEqual(["pubrel"])
    h.receive(ack("Pubcomp", entries[0].id))
    expect(texts(h.take())).toEqual(["m3"])
    h.lose(lost)
    h.connect(true, { receiveMaximum: 1 })
    // resend in original order within the new quota: m2 then (after it) m3, then m4
    const resent = h.take()
    expect(texts(resent)).toEqual(["m2"])
    expect((resent[0] as any).dup).toBe(true)
  })

  it("resends unacknowledged PUBLISH with DUP and PUBREL with the same identifiers, in original order [MQTT-4.4.0-1]", () => {
    const h = new Harness({ protocolVersion: 4, cleanStart: false })
    h.connect()
    const a = entry(h.publish(message("t", "a", 1, 4)))
    const b = entry(h.publish(message("t", "b", 2, 4)))
    const c = entry(h.publish(message("t", "c", 2, 4)))
    h.receive(ack("Pubrec", b.id))
    h.take()
    h.lose(lost)
    h.connect(true)
    const resent = h.take()
    expect(resent.map((p: any) => [p.cmd, p.messageId, p.cmd === "publish" ? p.dup : undefined])).toEqual([
      ["publish", a.id, true],
      ["pubrel", b.id, undefined],
      ["publish", c.id, true]
    ])
  })

  it("Session Present 0: unacknowledged publishes go again as new messages; a QoS 2 past PUBREC fails (delivery unknown), unsent", () => {
    const h = new Harness({ protocolVersion: 5 })
    h.connect()
    const a = entry(h.publish(message("t", "a", 1)))
    const b = entry(h.publish(message("t", "b", 2)))
    h.receive(ack("Pubrec", b.id))
    h.take()
    h.lose(lost)
    h.connect(false)
    expect([b.done, b.error?._tag]).toEqual([true, "ConnectionLostError"])
    expect(b.error?.message).toContain("whether it was delivered is not known")
    // nobody waited for it (a durable session's publish restored after a restart, `publishAccepted`): a warning says so
    expect(h.warnings.filter((w) => w.includes("QoS 2 publish accepted earlier"))).toHaveLength(1)
    const again = h.take()
    expect(again.map((p: any) => [p.cmd, Buffer.from(p.payload ?? "").toString(), p.dup])).toEqual([[
      "publish",
      "a",
      false
    ]])
    expect(a.done).toBe(false)
  })

  it("broker limits are checked when the packet is written: a new CONNACK refuses what breaks it, the connection stays", () => {
    const h = new Harness({ protocolVersion: 5 })
    const big = entry(h.publish(message("t", "x".repeat(4000), 1)))
    const qos2 = entry(h.publish(message("t", "q2", 2)))
    const retained = entry(h.publish(message("t", "r", 1, 5, true)))
    entry(h.publish(message("t", "fine", 1)))
    h.connect(false, { maximumPacketSize: 1024, maximumQoS: 1, retainAvailable: false })
    expect(texts(h.take())).toEqual(["fine"])
    expect([big.error?._tag, (big.error as any)?.reasonCode]).toEqual(["PublishError", 0x95])
    expect((qos2.error as any)?.reasonCode).toBe(0x9b)
    expect((retained.error as any)?.reasonCode).toBe(0x9a)
    expect(h.errors).toEqual([])
    // nobody waits for these (as for `publishAccepted`, or a durable session's publish restored after a restart):
    // each refusal is a warning
    expect(h.warnings.filter((w) => w.includes("accepted earlier was not sent")).length).toBe(3)
  })

  it("a resend that a new CONNACK's limits refuse says it went out before: the broker may have it", () => {
    const h = new Harness({ protocolVersion: 5, cleanStart: false })
    h.connect(false)
    const sent = entry(h.publish(message("t", "q2", 2)))
    sent.listener = () => {}
    expect(texts(h.take())).toEqual(["q2"])
    h.lose(new MqttError.ConnectionLostError({ reason: "test" }))
    h.connect(true, { maximumQoS: 1 })
    expect(h.take()).toEqual([])
    expect((sent.error as MqttError.PublishError).reasonCode).toBe(0x9b)
    expect((sent.error as MqttError.PublishError).reasonString).toMatch(
      /^not sent again: .*sent on an earlier connection/
    )
    const fresh = entry(h.publish(message("t", "new", 2)))
    expect((fresh.error as MqttError.PublishError).reasonString).toMatch(/^not sent: /)
  })

  it("a refused publish whose caller waits for it is its caller's error, not a warning", () => {
    const h = new Harness({ protocolVersion: 5 })
    const waited = entry(h.publish(message("t", "q2", 2)))
    waited.listener = () => {}
    h.connect(false, { maximumQoS: 1 })
    expect((waited.error as any)?.reasonCode).toBe(0x9b)
    expect(h.warnings.filter((w) => w.includes("was not sent"))).toEqual([])
  })

  it("a publish refused within the call that accepts it is that call's error, not a warning; refused later, unawaited, a warning", () => {
    const h = new Harness({ protocolVersion: 5 })
    h.connect(false, { maximumQoS: 1, receiveMaximum: 1, maximumPacketSize: 1024, retainAvailable: false })
    const refusedAtOnce = [
      h.publish(message("t", "q2", 2)),
      h.publish(message("t", "x".repeat(2000), 1)),
      h.publish(message("t", "r", 1, 5, true)),
      h.publish(message("t", "x".repeat(2000), 0))
    ]
    expect(refusedAtOnce.map((e) => (e as any)?.error?.reasonCode)).toEqual([0x9b, 0x95, 0x9a, 0x95])
    expect(h.warnings.filter((w) => w.includes("not sent"))).toEqual([])
    // behind a publish that holds the one turn (Receive Maximum 1): refused when its turn comes, nobody waiting
    const first = entry(h.publish(message("t", "first", 1)))
    const later = entry(h.publish(message("t", "x".repeat(2000), 1)))
    expect(later.done).toBe(false)
    h.receive(ack("Puback", first.id))
    expect((later.error as any)?.reasonCode).toBe(0x95)
    expect(h.warnings.filter((w) => w.includes("accepted earlier was not sent")).length).toBe(1)
  })

  it("an in-flight resend on a resumed session that breaks the new limits is refused, unsent, and frees its turn", () => {
    const h = new Harness({ protocolVersion: 5 })
    h.connect()
    const big = entry(h.publish(message("t", "x".repeat(2000), 1)))
    const after = entry(h.publish(message("t", "after", 1)))
    h.take()
    h.lose(lost)
    h.connect(true, { maximumPacketSize: 1024 })
    expect(texts(h.take())).toEqual(["after"])
    expect((big.error as any)?.reasonCode).toBe(0x95)
    expect(after.done).toBe(false)
  })

  it("the size check counts the topic alias: a publish that fits only without one goes without one", () => {
    const h = new Harness({ protocolVersion: 5 })
    const topic = "a/rather/long/topic"
    const plain = message(topic, "x".repeat(50), 0).encoded.bytes.length
    h.connect(false, { topicAliasMaximum: 4, maximumPacketSize: plain })
    h.publish(message(topic, "x".repeat(50), 0))
    const [packet] = h.take() as Array<any>
    expect(packet.topic).toBe(topic)
    expect(packet.properties?.topicAlias).toBeUndefined()
    // a short payload fits with the alias: the alias is set, then used alone
    h.publish(message(topic, "y", 0))
    h.publish(message(topic, "z", 0))
    const [set, used] = h.take() as Array<any>
    expect([set.topic, set.properties?.topicAlias]).toEqual([topic, 1])
    expect([used.topic, used.properties?.topicAlias]).toEqual(["", 1])
  })

  it("a large payload goes uncopied behind its header; a resend with DUP copies the header only; the size check counts the whole packet", () => {
    const h = new Harness({ protocolVersion: 5, cleanStart: false })
    const payload = new Uint8Array(SEPARATE_PAYLOAD).fill(7)
    const m = message("big/topic", payload, 1)
    const size = m.encoded.size
    const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex")
    h.connect(false, { maximumPacketSize: size })
    const e = entry(h.session.publish(m, h.out))
    const first = h.out.send.slice()
    expect(first.length).toBe(2)
    expect(first[1]).toBe(payload)
    expect(first[0].length + payload.length).toBe(size)
    const firstHeader = hex(first[0])
    h.drain()
    const [sent] = h.take() as Array<any>
    expect([sent.messageId, sent.dup, hex(sent.payload)]).toEqual([e.id, false, hex(payload)])
    h.lose(lost)
    h.session.onConnack(connack(true, { maximumPacketSize: size }), false, h.out)
    const again = h.out.send.slice()
    expect(again[1]).toBe(payload)
    // the first sending's header may still wait in the socket's buffer: it is left as it was
    expect(hex(first[0])).toBe(firstHeader)
    h.drain()
    const [resent] = h.take() as Array<any>
    expect([resent.messageId, resent.dup, hex(resent.payload)]).toEqual([e.id, true, hex(payload)])
    // one byte more than the broker accepts: refused with 0x95, unsent
    h.lose(lost)
    h.connect(true, { maximumPacketSize: size - 1 })
    expect(h.take()).toEqual([])
    expect([e.error?._tag, (e.error as any)?.reasonCode]).toEqual(["PublishError", 0x95])
  })

  it("a large payload with topic aliases: the alias is set, then used alone, the payload uncopied each time", () => {
    const h = new Harness({ protocolVersion: 5 })
    h.connect(false, { topicAliasMaximum: 4 })
    const payloads = [1, 2].map((n) => new Uint8Array(SEPARATE_PAYLOAD * 2).fill(n))
    const chunks: Array<Uint8Array> = []
    for (const payload of payloads) {
      h.session.publish(message("long/topic/name", payload, 0), h.out)
      chunks.push(...h.out.send)
      h.drain()
    }
    expect([chunks[1], chunks[3]]).toEqual(payloads)
    expect(chunks[1]).toBe(payloads[0])
    const packets = h.take() as Array<any>
    expect(packets.map((p) => [p.topic, p.properties?.topicAlias, p.payload[0], p.payload.length])).toEqual([
      ["long/topic/name", 1, 1, SEPARATE_PAYLOAD * 2],
      ["", 1, 2, SEPARATE_PAYLOAD * 2]
    ])
  })

  it("topic aliases belong to one connection: the first resend after a reconnect names its topic again", () => {
    const h = new Harness({ protocolVersion: 5 })
    h.connect(false, { topicAliasMaximum: 4 })
    h.publish(message("long/topic/name", "1", 1))
    h.publish(message("long/topic/name", "2", 1))
    expect((h.take() as Array<any>).map((p) => p.topic)).toEqual(["long/topic/name", ""])
    h.lose(lost)
    h.connect(true, { topicAliasMaximum: 4 })
    // the alias of the old connection means nothing now: the first resend sets it up again, the next may use it
    expect((h.take() as Array<any>).map((p) => [p.topic, p.properties?.topicAlias, p.dup])).toEqual([
      ["long/topic/name", 1, true],
      ["", 1, true]
    ])
  })

  describe("an acknowledgement the publish holding its identifier cannot take", () => {
    // the broker answered the publish, in its way: it ends with an error and is never sent again (a resend could
    // deliver it twice; a broker that downgrades QoS 2 to 1 would answer every resend so); the connection closes
    const cases: ReadonlyArray<readonly [string, 1 | 2, ReadonlyArray<Packets.Ack["_tag"]>, Packets.Ack["_tag"]]> = [
      ["a PUBACK for QoS 2 after its PUBREL", 2, ["Pubrec"], "Puback"],
      ["a PUBCOMP before the PUBREC", 2, [], "Pubcomp"],
      ["a PUBREC for QoS 1", 1, [], "Pubrec"],
      ["a PUBCOMP for QoS 1", 1, [], "Pubcomp"]
    ]
    for (const version of [4, 5] as const) {
      for (const [name, qos, before, wrong] of cases) {
        it(`v${version}: ${name} is a protocol error (0x82); the publish ends with PublishError 0x82 and is never sent again`, () => {
          const h = new Harness({ protocolVersion: version, cleanStart: false })
          h.connect()
          const other = entry(h.publish(message("t", "other", 1, version)))
          const wronged = entry(h.publish(message("t", "once", qos, version)))
          h.take()
          for (const tag of before) h.receive(ack(tag, wronged.id))
          h.take()
          h.receive(ack(wrong, wronged.id))
          expect(h.errors.map((e) => [e._tag, (e as any).reasonCode, (e as any).packet])).toEqual([
            ["ProtocolError", version === 5 ? 0x82 : undefined, wrong.toUpperCase()]
          ])
          expect([wronged.error?._tag, (wronged.error as any)?.reasonCode]).toEqual(["PublishError", 0x82])
          // a PUBREC opened a QoS 2 flow on the broker's side: PUBREL ends it
          expect(h.take().map((p: any) => [p.cmd, p.messageId])).toEqual(
            wrong === "Pubrec" ? [["pubrel", wronged.id]] : []
          )
          expect(other.done).toBe(false)
          for (const present of [true, false]) {
            h.lose(lost)
            h.connect(present)
            // only the other publish is sent again
            expect(texts(h.take())).toEqual(["other"])
          }
          // its identifier is free again (a PUBREC's once the broker's session ended)
          h.receive(ack("Puback", other.id))
          expect(h.session.ids.size).toBe(0)
        })
      }
    }

    it("a PUBACK for a QoS 2 publish awaiting PUBREC (a broker that downgrades QoS 2 to 1, RabbitMQ 3): that publish ends with PublishError 0x82, once, never sent again; the connection stays, and the other publishes in flight are not sent again [FAULTS row 33]", () => {
      for (const version of [4, 5] as const) {
        const h = new Harness({ protocolVersion: version, cleanStart: false })
        h.connect()
        const other = entry(h.publish(message("t", "other", 2, version)))
        const q2 = entry(h.publish(message("t", "once", 2, version)))
        h.take()
        h.receive(ack("Puback", q2.id))
        expect([q2.error?._tag, (q2.error as any)?.reasonCode]).toEqual(["PublishError", 0x82])
        expect((q2.error as any)?.reasonString).toMatch(/downgrades QoS 2 to 1/)
        expect((q2.error as any)?.reasonString).not.toMatch(/closed the connection/)
        expect(h.errors).toEqual([])
        expect(h.take()).toEqual([])
        expect(other.done).toBe(false)
        h.receive(ack("Pubrec", other.id))
        expect(h.take().map((p: any) => [p.cmd, p.messageId])).toEqual([["pubrel", other.id]])
        h.receive(ack("Pubcomp", other.id))
        expect([other.done, other.error]).toEqual([true, undefined])
        for (const present of [true, false]) {
          h.lose(lost)
          h.connect(present)
          expect(texts(h.take())).toEqual([])
        }
        // its identifier is free again
        expect(h.session.ids.size).toBe(0)
      }
    })

    it("a PUBREC for QoS 1: the identifier stays out of use while the broker's session may hold it", () => {
      const h = new Harness({ cleanStart: false })
      h.connect()
      const q1 = entry(h.publish(message("t", "q1", 1)))
      h.take()
      h.receive(ack("Pubrec", q1.id))
      h.lose(lost)
      h.connect(true)
      expect(h.session.ids.has(q1.id)).toBe(true)
      h.lose(lost)
      h.connect(false)
      expect(h.session.ids.has(q1.id)).toBe(false)
    })
  })

  it("packet identifiers are never reused while in flight: the 65,536th QoS 1 publish waits for one", () => {
    const h = new Harness({ protocolVersion: 5 })
    h.connect()
    const entries = Array.from({ length: 65536 }, (_, i) => entry(h.publish(message("t", String(i), 1))))
    const sent = h.take() as Array<any>
    expect(sent.length).toBe(65535)
    expect(new Set(sent.map((p) => p.messageId)).size).toBe(65535)
    expect(entries[65535].id).toBe(0)
    h.receive(ack("Puback", entries[7].id))
    const [next] = h.take() as Array<any>
    expect([Buffer.from(next.payload).toString(), next.messageId]).toEqual(["65535", entries[7].id])
  })

  it("a publish withdrawn before it was written is never sent; one written keeps its flow", () => {
    const h = new Harness({ protocolVersion: 5 })
    const offline = entry(h.publish(message("t", "never", 1)))
    expect(h.session.outgoing.withdraw(offline, h.out)).toBe(true)
    h.connect()
    expect(h.take()).toEqual([])
    const written = entry(h.publish(message("t", "sent", 1)))
    expect(h.session.outgoing.withdraw(written, h.out)).toBe(false)
    expect(texts(h.take())).toEqual(["sent"])
  })

  it("connected, the waiting line behind maxInflight holds at most offlineCapacity publishes: one more is LINE_FULL until an acknowledgement makes room", () => {
    const h = new Harness({ protocolVersion: 5, maxInflight: 1, offlineCapacity: 2 })
    h.connect()
    const first = entry(h.publish(message("t", "1", 1)))
    entry(h.publish(message("t", "2", 1)))
    entry(h.publish(message("t", "3", 0)))
    expect(h.session.lineHasRoom).toBe(false)
    expect(h.publish(message("t", "4", 1))).toBe(LINE_FULL)
    expect(h.publish(message("t", "5", 0))).toBe(LINE_FULL)
    expect(texts(h.take())).toEqual(["1"])
    h.receive(ack("Puback", first.id))
    // "2" took the free identifier and "3" (QoS 0) went behind it: the line is empty
    expect(texts(h.take())).toEqual(["2", "3"])
    expect(h.session.lineHasRoom).toBe(true)
    entry(h.publish(message("t", "4", 1)))
  })

  it("offlineCapacity 0: while connected one publish still fits in the line (no deadlock)", () => {
    const h = new Harness({ protocolVersion: 5, maxInflight: 1, offlineCapacity: 0 })
    h.connect()
    entry(h.publish(message("t", "1", 1)))
    entry(h.publish(message("t", "2", 1)))
    expect(h.publish(message("t", "3", 1))).toBe(LINE_FULL)
  })

  it("offline capacity: publishes beyond it are refused as full; QoS 0 can be refused while offline", () => {
    const h = new Harness({ protocolVersion: 5, offlineCapacity: 1, offlineQos0: "fail" })
    entry(h.publish(message("t", "1", 1)))
    expect(h.publish(message("t", "2", 1))).toBe(OFFLINE_FULL)
    expect((h.publish(message("t", "0", 0)) as MqttError.MqttError)._tag).toBe("OfflineError")
  })
})

describe("session: inbound messages", () => {
  describe("a held message whose connection ended (a consumer group's member frozen, its session adopted)", () => {
    /** The ids and packet names written since the last take. */
    const acks = (h: Harness) => (h.take() as Array<any>).map((p) => [p.cmd, p.messageId])

    it("not resent on the resumed session: stale; let go of unacknowledged, it holds back no later acknowledgement", () => {
      const h = new Harness({ protocolVersion: 5 })
      h.connect()
      h.receive(publish("t", "a", 2, 10))
      const [a] = h.delivered.splice(0)
      // a message of the current connection is not stale: abandon leaves it as it is
      expect(h.session.isStale(a.record!)).toBe(false)
      h.session.abandon(a.record!, h.out)
      h.lose(lost)
      // while disconnected it cannot be told: the next CONNACK says whether the broker kept the session
      expect(h.session.isStale(a.record!)).toBe(false)
      expect(h.session.awaitsConnection(a.record!)).toBe(true)
      h.session.abandon(a.record!, h.out)
      h.connect(true)
      expect(h.session.awaitsConnection(a.record!)).toBe(false)
      h.take()
      h.receive(publish("t", "b", 1, 11))
      const [b] = h.delivered.splice(0)
      expect(h.session.isStale(a.record!)).toBe(true)
      expect(h.session.isStale(b.record!)).toBe(false)
      h.session.abandon(a.record!, h.out)
      h.drain()
      expect(acks(h)).toEqual([])
      h.session.settled(b.record!, h.out)
      h.drain()
      // b's PUBACK is not held back behind a, which is never acknowledged (another client did, or will be resent)
      expect(acks(h)).toEqual([["puback", 11]])
      expect(h.session.isStale(a.record!)).toBe(false)
      h.session.settled(a.record!, h.out)
      h.drain()
      expect(acks(h)).toEqual([])
    })

    it("resent (DUP) on the resumed session while held: current again, taken and acknowledged there", () => {
      const h = new Harness({ protocolVersion: 5 })
      h.connect()
      h.receive(publish("t", "a", 1, 10))
      const [a] = h.delivered.splice(0)
      h.lose(lost)
      h.connect(true)
      h.receive(publish("t", "a", 1, 10, { dup: true }))
      expect(h.delivered).toEqual([])
      expect(h.session.isStale(a.record!)).toBe(false)
      h.session.abandon(a.record!, h.out)
      h.session.settled(a.record!, h.out)
      h.drain()
      expect(acks(h)).toEqual([["puback", 10]])
    })

    it("let go of before the broker's resend came: the resend is a delivery of its own", () => {
      const h = new Harness({ protocolVersion: 5 })
      h.connect()
      h.receive(publish("t", "a", 2, 10))
      const [a] = h.delivered.splice(0)
      h.lose(lost)
      h.connect(true)
      h.session.abandon(a.record!, h.out)
      h.drain()
      expect(acks(h)).toEqual([])
      h.receive(publish("t", "a", 2, 10, { dup: true }))
      const [again] = h.delivered.splice(0)
      expect(again.message.text).toBe("a")
      h.session.settled(again.record!, h.out)
      h.drain()
      expect(acks(h)).toEqual([["pubrec", 10]])
    })

    it("of a session the broker lost (Session Present 0): not stale, delivered as before (never acknowledged)", () => {
      const h = new Harness({ protocolVersion: 5 })
      h.connect()
      h.receive(publish("t", "a", 1, 10))
      const [a] = h.delivered.splice(0)
      h.lose(lost)
      expect(h.session.awaitsConnection(a.record!)).toBe(true)
      h.connect(false)
      expect(h.session.isStale(a.record!)).toBe(false)
      expect(h.session.awaitsConnection(a.record!)).toBe(false)
    })
  })

  it("QoS 1/2 are acknowledged when taken, in the order they arrived, whatever order they are taken in", () => {
    const h = new Harness({ protocolVersion: 5 })
    h.connect()
    h.receive(publish("t", "a", 1, 10))
    h.receive(publish("t", "b", 2, 11))
    h.receive(publish("t", "c", 1, 12))
    expect(h.take()).toEqual([])
    const [a, b, c] = h.delivered.splice(0)
    // taken out of order (a priority queue): c, then a, then b
    h.session.settled(c.record!, h.out)
    h.drain()
    expect(h.take()).toEqual([])
    h.session.settled(a.record!, h.out)
    h.drain()
    expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["puback", 10]])
    h.session.settled(b.record!, h.out)
    h.drain()
    expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["pubrec", 11], ["puback", 12]])
  })

  it("a payload the application changed in place (scrubbed, decoded) does not make the broker's resend another message", () => {
    const cmds = (h: Harness) => (h.take() as Array<any>).map((p) => [p.cmd, p.messageId])
    // QoS 2, its PUBREC lost with the connection: the broker resends the PUBLISH on the next one
    const h = new Harness({ protocolVersion: 5, cleanStart: false, sessionExpiryInterval: 300 })
    h.connect()
    h.receive(publish("t", "secret", 2, 7))
    h.takeAll()[0].message.payload.fill(0)
    expect(cmds(h)).toEqual([["pubrec", 7]])
    h.receive(publish("t", "secret", 2, 7, { dup: true }))
    expect([h.delivered.length, cmds(h)]).toEqual([0, [["pubrec", 7]]])
    h.lose(lost)
    h.connect(true)
    h.receive(publish("t", "secret", 2, 7, { dup: true }))
    expect([h.delivered.length, cmds(h)]).toEqual([0, [["pubrec", 7]]])
    // QoS 1 of an earlier connection, taken on this one: the broker's resend crosses the PUBACK
    h.receive(publish("t", "secret", 1, 8))
    h.lose(lost)
    h.connect(true)
    h.takeAll()[0].message.payload.fill(0)
    expect(cmds(h)).toEqual([["puback", 8]])
    h.receive(publish("t", "secret", 1, 8, { dup: true }))
    expect([h.delivered.length, cmds(h)]).toEqual([0, [["puback", 8]]])
    expect(h.errors).toEqual([])
  })

  it("QoS 2 is delivered once: a resend before or after PUBREC is not delivered again; after PUBREL the id is new", () => {
    const h = new Harness({ protocolVersion: 4 })
    h.connect()
    h.receive(publish("t", "first", 2, 7))
    h.receive(publish("t", "first", 2, 7, { dup: true }))
    expect(h.delivered.length).toBe(1)
    h.takeAll()
    expect((h.take() as Array<any>).map((p) => p.cmd)).toEqual(["pubrec"])
    h.receive(publish("t", "first", 2, 7, { dup: true }))
    expect(h.delivered.length).toBe(0)
    expect((h.take() as Array<any>).map((p) => p.cmd)).toEqual(["pubrec"])
    h.receive(ack("Pubrel", 7))
    expect((h.take() as Array<any>).map((p) => p.cmd)).toEqual(["pubcomp"])
    h.receive(publish("t", "second", 2, 7))
    expect(h.delivered.map((d) => d.message.text)).toEqual(["second"])
  })

  for (const version of [4, 5] as const) {
    it(`v${version}: a QoS 2 PUBLISH without DUP under an identifier awaiting PUBREL is a new message: delivered, not lost as a resend`, () => {
      const h = new Harness({ protocolVersion: version })
      h.connect()
      h.receive(publish("t", "first", 2, 7))
      h.takeAll()
      expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["pubrec", 7]])
      expect(h.session.inbound.inFlight).toBe(1)
      // a resend (DUP) is still answered, not delivered
      h.receive(publish("t", "first", 2, 7, { dup: true }))
      expect(h.delivered).toEqual([])
      expect((h.take() as Array<any>).map((p) => p.cmd)).toEqual(["pubrec"])
      // without DUP: the broker ended the old flow (another node after a failover, one that lost its state)
      h.receive(publish("t", "second", 2, 7))
      expect(h.delivered.map((d) => d.message.text)).toEqual(["second"])
      expect(h.warnings.some((w) => w.includes("reused packet identifier 7 while its PUBREL was awaited"))).toBe(true)
      h.takeAll()
      expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["pubrec", 7]])
      h.receive(ack("Pubrel", 7))
      expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["pubcomp", 7]])
      // nothing left over: the old flow does not count against the Receive Maximum
      expect(h.session.inbound.inFlight).toBe(0)
      expect(h.errors).toEqual([])
    })

    it(`v${version}: a QoS 2 PUBLISH without DUP under an identifier the client still holds is a new message; the held one is let go unanswered`, () => {
      const h = new Harness({ protocolVersion: version })
      h.connect()
      h.receive(publish("t", "first", 2, 9))
      h.receive(publish("t", "first", 2, 9, { dup: true }))
      h.receive(publish("t", "second", 2, 9))
      expect(h.delivered.map((d) => d.message.text)).toEqual(["first", "second"])
      const [first, second] = h.delivered.splice(0)
      // the second's resend is still a resend
      h.receive(publish("t", "second", 2, 9, { dup: true }))
      expect(h.delivered).toEqual([])
      // the broker holds one flow per identifier: the first's PUBREC would answer the second before it is taken
      h.session.settled(first.record!, h.out)
      h.drain()
      expect(h.take()).toEqual([])
      h.session.settled(second.record!, h.out)
      h.drain()
      expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["pubrec", 9]])
      h.receive(ack("Pubrel", 9))
      expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["pubcomp", 9]])
      expect(h.session.inbound.inFlight).toBe(0)
      expect(h.errors).toEqual([])
    })
  }

  it("a failover to a node that resumes an older session: its new QoS 2 messages under identifiers awaiting PUBREL are delivered", () => {
    const h = new Harness({ protocolVersion: 5, cleanStart: false, sessionExpiryInterval: 300 })
    h.connect()
    for (const id of [1, 2, 3]) h.receive(publish("b", `on the node that went away ${id}`, 2, id))
    h.takeAll()
    h.take()
    h.lose(lost)
    // another node, Session Present 1 (the older session it holds): it numbers its messages from 2
    h.connect(true)
    for (const id of [2, 3, 4]) h.receive(publish("a", `new ${id}`, 2, id))
    expect(h.delivered.map((d) => d.message.text)).toEqual(["new 2", "new 3", "new 4"])
    h.takeAll()
    expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["pubrec", 2], ["pubrec", 3], [
      "pubrec",
      4
    ]])
    // the PUBREL of identifier 1 never comes (that node is gone): it is held, as the MQTT flow says
    expect(h.session.inbound.inFlight).toBe(4)
  })

  it("manual acknowledgement: a resend of a message the application was handed and never acknowledged is delivered again; one still queued is not", () => {
    const h = new Harness({ protocolVersion: 5, cleanStart: false, sessionExpiryInterval: 300 })
    h.connect()
    h.receive(publish("t", "failed", 1, 1))
    h.receive(publish("t", "queued", 1, 2))
    const [failed, queued] = h.delivered.splice(0)
    // the application took "failed" (out of its queue, as Deliveries reports it) and its handler failed: no ack
    failed.record!.queued--
    h.lose(lost)
    h.connect(true)
    h.receive(publish("t", "failed", 1, 1, { dup: true }))
    h.receive(publish("t", "queued", 1, 2, { dup: true }))
    expect(h.delivered.map((d) => d.message.text)).toEqual(["failed"])
    // the old copy's late acknowledgement does nothing; the resend arrived after "queued", so is answered after it
    h.session.settled(failed.record!, h.out)
    h.drain()
    expect(h.take()).toEqual([])
    h.session.settled(queued.record!, h.out)
    h.drain()
    expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["puback", 2]])
    h.takeAll()
    expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["puback", 1]])
    expect(h.session.inbound.inFlight).toBe(0)
  })

  it("a resumed session keeps what the consumer has not taken: the broker's resend is not delivered twice", () => {
    const h = new Harness({ protocolVersion: 5 })
    h.connect()
    h.receive(publish("t", "held", 1, 3))
    h.receive(publish("t", "taken", 1, 4))
    const [held, taken] = h.delivered.splice(0)
    h.lose(lost)
    // taken while disconnected: its PUBACK waits for the next connection
    h.session.settled(taken.record!, h.out)
    h.drain()
    h.connect(true)
    expect(h.take()).toEqual([])
    h.receive(publish("t", "held", 1, 3, { dup: true }))
    h.receive(publish("t", "taken", 1, 4, { dup: true }))
    expect(h.delivered).toEqual([])
    h.session.settled(held.record!, h.out)
    h.drain()
    expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["puback", 3], ["puback", 4]])
  })

  it(`a publish the broker closes ${CLOSED_ON_LIMIT} connections in a row on (nothing acknowledged after it) fails at the next CONNACK, unsent; the ones behind it go out`, () => {
    const h = new Harness({ protocolVersion: 4, cleanStart: false })
    h.connect()
    const poison = h.publish(message("p", "poison", 2, 4)) as PublishEntry
    const behind = h.publish(message("b", "behind", 1, 4)) as PublishEntry
    h.take()
    // written on the first connection, then resent on the next ones: each closed before any acknowledgement
    for (let i = 1; i < CLOSED_ON_LIMIT; i++) {
      h.lose(lost)
      expect(poison.done).toBe(false)
      h.connect(true)
      // resent, in order, each time
      expect((h.take() as Array<any>).map((p) => [p.cmd, p.topic, p.dup])).toEqual([
        ["publish", "p", true],
        ["publish", "b", true]
      ])
    }
    h.lose(lost)
    h.connect(true)
    expect((h.take() as Array<any>).map((p) => [p.cmd, p.topic])).toEqual([["publish", "b"]])
    const error = poison.error as MqttError.PublishError
    expect([poison.done, error?._tag, error?.reasonCode]).toEqual([true, "PublishError", 0x80])
    expect(h.warnings.some((w) => w.includes(`each of the last ${CLOSED_ON_LIMIT} times`))).toBe(true)
    h.receive(ack("Puback", behind.id))
    expect([behind.done, behind.error]).toEqual([true, undefined])
  })

  it(`closes by the nodes of a cluster in turn (a node lost, its sessions moving) do not count as one broker's: the publish is not given up after ${CLOSED_ON_LIMIT}; one node's closes in a row are`, () => {
    const h = new Harness({ protocolVersion: 4, cleanStart: false })
    const nodes = ["mqtt://a:1883", "mqtt://b:1883"]
    h.connect(false, {}, nodes[0])
    const publish = h.publish(message("p", "during the move", 1, 4)) as PublishEntry
    h.take()
    for (let i = 1; i <= CLOSED_ON_LIMIT * 2; i++) {
      h.lose(lost)
      h.connect(true, {}, nodes[i % 2])
      expect((h.take() as Array<any>).map((p) => [p.cmd, p.topic, p.dup])).toEqual([["publish", "p", true]])
    }
    expect(publish.done).toBe(false)
    // then one node closes on it, connection after connection: given up
    for (let i = 1; i < CLOSED_ON_LIMIT; i++) {
      h.lose(lost)
      h.connect(true, {}, nodes[0])
      expect(publish.done).toBe(false)
    }
    h.lose(lost)
    h.connect(true, {}, nodes[0])
    expect([publish.done, (publish.error as MqttError.PublishError)?.reasonCode]).toEqual([true, 0x80])
  })

  it("a connection lost after something sent later was acknowledged, or before anything was resent, does not count against a publish", () => {
    const h = new Harness({ protocolVersion: 4, cleanStart: false })
    h.connect()
    const first = h.publish(message("a", "first", 1, 4)) as PublishEntry
    const second = h.publish(message("b", "second", 1, 4)) as PublishEntry
    for (let i = 0; i < CLOSED_ON_LIMIT * 3; i++) {
      // a broker that goes down now and then: the second is acknowledged before each loss, the first never
      h.receive(ack("Puback", second.id))
      const again = h.publish(message("b", `second ${i}`, 1, 4)) as PublishEntry
      Object.assign(second, { id: again.id })
      h.lose(lost)
      h.connect(true)
    }
    expect(first.done).toBe(false)
    // lost before its CONNACK every time: nothing was written, nothing counts
    for (let i = 0; i < CLOSED_ON_LIMIT * 3; i++) h.lose(lost)
    h.connect(true)
    expect(first.done).toBe(false)
    h.take()
    h.receive(ack("Puback", first.id))
    expect([first.done, first.error]).toEqual([true, undefined])
  })

  it("connections the client ended (keepalive, a violation) or the broker closed for its own reason (DISCONNECT 0x8B, 0x8E) do not count against a publish", () => {
    for (
      const error of [
        new MqttError.MqttTimeoutError({ operation: "ping", millis: 30_000 }),
        new MqttError.ProtocolError({ reason: "a violation" }),
        new MqttError.ConnectionLostError({ reason: "the broker sent DISCONNECT", reasonCode: 0x8b }),
        new MqttError.ConnectionLostError({ reason: "the broker sent DISCONNECT", reasonCode: 0x8e })
      ]
    ) {
      const h = new Harness({ protocolVersion: 5, cleanStart: false })
      h.connect()
      const healthy = h.publish(message("t", "healthy", 1)) as PublishEntry
      for (let i = 0; i < CLOSED_ON_LIMIT * 2; i++) {
        h.lose(error)
        h.connect(true)
      }
      expect([error._tag, healthy.done]).toEqual([error._tag, false])
    }
    // a DISCONNECT about a publish (0x95 packet too large) counts
    const h = new Harness({ protocolVersion: 5, cleanStart: false })
    h.connect()
    const big = h.publish(message("t", "big", 1)) as PublishEntry
    for (let i = 0; i < CLOSED_ON_LIMIT; i++) {
      h.lose(new MqttError.ConnectionLostError({ reason: "the broker sent DISCONNECT", reasonCode: 0x95 }))
      h.connect(true)
    }
    expect(big.done).toBe(true)
  })

  it("sendMaximumPacketSize holds on every connection: a publish and a SUBSCRIBE queued offline over it fail with 0x95 at CONNACK, unsent", () => {
    const h = new Harness({ protocolVersion: 4, sendMaximumPacketSize: 100 })
    const big = h.publish(message("t", "x".repeat(200), 1, 4))
    const small = h.publish(message("t", "ok", 1, 4))
    const request = h.subscribe(1, [spec("a/" + "b".repeat(200))])
    expect([big instanceof PublishEntry, small instanceof PublishEntry]).toEqual([true, true])
    h.connect()
    const written = h.take() as Array<any>
    expect(written.map((p) => [p.cmd, p.payload?.toString()])).toEqual([["publish", "ok"]])
    const failed = [(big as PublishEntry).error, request.error]
    expect(failed.map((e: any) => [e?._tag, e?.reasonCode])).toEqual([["PublishError", 0x95], ["SubscribeError", 0x95]])
    expect(String((big as PublishEntry).error?.message)).toContain("sendMaximumPacketSize allows 100 at most")
  })

  it("MQTT 3.1.1: a PUBLISH over the client's Maximum Packet Size is dropped, counted once, and acknowledged in its turn; a resend is answered", () => {
    const h = new Harness({ protocolVersion: 4, cleanStart: false })
    h.connect()
    const oversized = (packet: Packets.Publish) => {
      h.session.onOversizedPublish(packet, 5000, 1024, h.out)
      h.drain()
    }
    h.receive(publish("t", "held", 1, 1))
    oversized(publish("big/1", "", 1, 2))
    oversized(publish("big/2", "", 2, 3))
    oversized(publish("big/0", "", 0))
    // behind the message the consumer has not taken [MQTT-4.6.0-2]
    expect(h.take()).toEqual([])
    expect([h.dropped, h.delivered.length, h.warnings.length]).toEqual([3, 1, 3])
    expect(h.warnings[0]).toContain(`5000 bytes on "big/1", over the client's Maximum Packet Size of 1024`)
    h.takeAll()
    expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["puback", 1], ["puback", 2], [
      "pubrec",
      3
    ]])
    // the QoS 2 one's resend before PUBREL is answered, not dropped (nor counted) again; PUBREL ends it
    oversized(publish("big/2", "", 2, 3, { dup: true }))
    h.receive(ack("Pubrel", 3))
    expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["pubrec", 3], ["pubcomp", 3]])
    expect([h.dropped, h.delivered.length, h.errors]).toEqual([3, 0, []])
  })

  it("taken while offline: acknowledged on the resumed session, and again for the broker's resend that crossed it, not delivered twice", () => {
    // the model test's counterexample (MQTT 3.1.1): the broker resends whatever it holds unacknowledged as soon as
    // the session resumes [MQTT-4.4.0-1], so the resend and the client's PUBACK/PUBREC cross; the resend is a
    // PUBLISH the client must answer [MQTT-4.3.2-2, MQTT-4.3.3]
    const h = new Harness({ protocolVersion: 4, cleanStart: false })
    h.connect()
    h.receive(publish("a/b", "one", 1, 1))
    h.receive(publish("a/b", "two", 2, 2))
    h.lose(lost)
    h.takeAll()
    expect(h.take()).toEqual([])
    h.connect(true)
    expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["puback", 1], ["pubrec", 2]])
    h.receive(publish("a/b", "one", 1, 1, { dup: true }))
    h.receive(publish("a/b", "two", 2, 2, { dup: true }))
    expect(h.delivered).toEqual([])
    expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["puback", 1], ["pubrec", 2]])
    // the broker answers both PUBRECs: the second PUBREL finds the flow complete, and is answered all the same
    h.receive(ack("Pubrel", 2))
    h.receive(ack("Pubrel", 2))
    expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["pubcomp", 2], ["pubcomp", 2]])
    expect(h.errors).toEqual([])
  })

  it("a QoS 2 resend that comes after its flow ended on the resumed connection (Mosquitto restarted: PUBREL first) is answered, not delivered again", () => {
    for (const version of [4, 5] as const) {
      const h = new Harness({ protocolVersion: version, cleanStart: false })
      h.connect()
      h.receive(publish("a/b", "one", 2, 7))
      h.lose(lost)
      h.takeAll()
      h.connect(true)
      expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["pubrec", 7]])
      // the broker answers the PUBREC before it sends the message again
      h.receive(ack("Pubrel", 7))
      expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["pubcomp", 7]])
      h.receive(publish("a/b", "one", 2, 7, { dup: true }))
      expect(h.delivered).toEqual([])
      expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["pubrec", 7]])
      h.receive(ack("Pubrel", 7))
      expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["pubcomp", 7]])
      // the same identifier without DUP is a new message
      h.receive(publish("a/b", "two", 2, 7))
      expect(h.delivered.map((d) => d.message.text)).toEqual(["two"])
      expect(h.errors).toEqual([])
    }
  })

  it("a message of an earlier connection acknowledged later on the resumed one (behind another) is still not delivered twice by a crossing resend", () => {
    const h = new Harness({ protocolVersion: 4, cleanStart: false })
    h.connect()
    h.receive(publish("a/b", "one", 1, 1))
    h.receive(publish("a/b", "two", 2, 2))
    h.lose(lost)
    h.connect(true)
    // nothing taken yet: nothing acknowledged; then both are taken on the new connection, before the resends come
    expect(h.take()).toEqual([])
    h.takeAll()
    expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["puback", 1], ["pubrec", 2]])
    h.receive(ack("Pubrel", 2))
    h.receive(publish("a/b", "one", 1, 1, { dup: true }))
    h.receive(publish("a/b", "two", 2, 2, { dup: true }))
    expect(h.delivered).toEqual([])
    expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["pubcomp", 2], ["puback", 1], [
      "pubrec",
      2
    ]])
  })

  it("a QoS 2 flow started again by a crossing resend keeps the message's content: a DUP of another message under its identifier is delivered", () => {
    const acks = (h: Harness) => (h.take() as Array<any>).map((p) => [p.cmd, p.messageId])
    const h = new Harness({ protocolVersion: 5, cleanStart: false, sessionExpiryInterval: 300 })
    h.connect()
    h.receive(publish("a/b", "one", 2, 7))
    h.lose(lost)
    h.takeAll()
    h.connect(true)
    expect(acks(h)).toEqual([["pubrec", 7]])
    h.receive(ack("Pubrel", 7))
    expect(acks(h)).toEqual([["pubcomp", 7]])
    h.lose(lost)
    h.connect(true)
    // the broker's resend that crossed the PUBCOMP: answered, its flow awaits PUBREL again
    h.receive(publish("a/b", "one", 2, 7, { dup: true }))
    expect([h.delivered.length, acks(h)]).toEqual([0, [["pubrec", 7]]])
    // a node's own message under the identifier (DUP, other content): delivered, not answered as that resend
    h.receive(publish("a/b", "another", 2, 7, { dup: true }))
    expect(h.delivered.map((d) => d.message.text)).toEqual(["another"])
    expect(h.errors).toEqual([])
  })

  it("Mosquitto restarted: a QoS 2 message whose flow ended by PUBREL just before the connection closed, sent again on the next connection (DUP, same content), is answered, not delivered again", () => {
    // seen with Mosquitto 2.0.11 restarted from its persistence: it answered the PUBREC of a message taken while
    // it was down with PUBREL, sent the message again (its restored queue kept the identifier), and closed the
    // connection for the PUBCOMP that crossed that resend; the resend came again on the next connection
    const acks = (h: Harness) => (h.take() as Array<any>).map((p) => [p.cmd, p.messageId])
    for (const version of [4, 5] as const) {
      const h = new Harness({ protocolVersion: version, cleanStart: false })
      h.connect()
      h.receive(publish("a/b", "one", 2, 7))
      h.receive(publish("a/b", "two", 2, 8))
      h.lose(lost)
      h.takeAll()
      h.connect(true)
      expect(acks(h)).toEqual([["pubrec", 7], ["pubrec", 8]])
      h.receive(ack("Pubrel", 7))
      h.receive(ack("Pubrel", 8))
      expect(acks(h)).toEqual([["pubcomp", 7], ["pubcomp", 8]])
      h.lose(lost)
      h.connect(true)
      // the same message again: answered; another message under the identifier (other payload): delivered
      h.receive(publish("a/b", "one", 2, 7, { dup: true }))
      h.receive(publish("a/b", "other", 2, 8, { dup: true }))
      expect(h.delivered.map((d) => d.message.text)).toEqual(["other"])
      expect(acks(h)).toEqual([["pubrec", 7]])
      h.receive(ack("Pubrel", 7))
      expect(acks(h)).toEqual([["pubcomp", 7]])
      // one connection only: on the next, a resend under that identifier is a message of its own
      h.takeAll()
      h.take()
      h.lose(lost)
      h.connect(true)
      h.lose(lost)
      h.connect(true)
      h.receive(publish("a/b", "one", 2, 7, { dup: true }))
      expect(h.delivered.map((d) => d.message.text)).toEqual(["one"])
      expect(h.errors).toEqual([])
    }
  })

  it("a resend answered without delivery is answered in its turn, behind the messages that came before it [MQTT-4.6.0-2, MQTT-4.6.0-3]", () => {
    const acks = (h: Harness) => (h.take() as Array<any>).map((p) => [p.cmd, p.messageId])
    // a QoS 2 identifier restored as awaiting PUBREL (a durable session: its message was done, its PUBREC waited
    // behind an earlier message when the process stopped); the broker resends the earlier message, then it
    for (const version of [4, 5] as const) {
      const h = new Harness({ protocolVersion: version, cleanStart: false })
      h.session.restore({
        clientId: "c",
        publishes: new Map(),
        awaitingRelease: new Set([2]),
        retired: new Set(),
        subscriptions: []
      })
      h.connect(true)
      h.receive(publish("a/b", "one", 2, 1, { dup: true }))
      h.receive(publish("a/b", "two", 2, 2, { dup: true }))
      expect(h.delivered.map((d) => d.message.text)).toEqual(["one"])
      expect(acks(h)).toEqual([])
      h.takeAll()
      expect(acks(h)).toEqual([["pubrec", 1], ["pubrec", 2]])
      expect(h.errors).toEqual([])
    }
    // QoS 1: a message of an earlier connection acknowledged on this one, whose resend crosses the PUBACK behind a
    // new message
    {
      const h = new Harness({ protocolVersion: 4, cleanStart: false })
      h.connect()
      h.receive(publish("a/b", "one", 1, 1))
      h.lose(lost)
      h.takeAll()
      h.connect(true)
      expect(acks(h)).toEqual([["puback", 1]])
      h.receive(publish("a/b", "three", 1, 3))
      h.receive(publish("a/b", "one", 1, 1, { dup: true }))
      expect(acks(h)).toEqual([])
      expect(h.takeAll().map((d) => d.message.text)).toEqual(["three"])
      expect(acks(h)).toEqual([["puback", 3], ["puback", 1]])
    }
    // QoS 2 on one connection: the PUBREC was lost, the resend comes behind a new message
    {
      const h = new Harness({ protocolVersion: 5 })
      h.connect()
      h.receive(publish("a/b", "one", 2, 1))
      h.takeAll()
      expect(acks(h)).toEqual([["pubrec", 1]])
      h.receive(publish("a/b", "four", 1, 4))
      h.receive(publish("a/b", "one", 2, 1, { dup: true }))
      // a second resend of the one awaiting PUBREL is answered too; the broker's PUBREL then ends the flow
      h.receive(publish("a/b", "one", 2, 1, { dup: true }))
      expect(acks(h)).toEqual([])
      h.takeAll()
      expect(acks(h)).toEqual([["puback", 4], ["pubrec", 1], ["pubrec", 1]])
      h.receive(ack("Pubrel", 1))
      expect(acks(h)).toEqual([["pubcomp", 1]])
      expect(h.session.inbound.inFlight).toBe(0)
    }
    // an answer waiting when its flow ends (PUBREL) or when its connection ends is not sent
    for (const ending of ["pubrel", "connection"] as const) {
      const h = new Harness({ protocolVersion: 4, cleanStart: false })
      h.connect()
      h.receive(publish("a/b", "one", 2, 1))
      h.takeAll()
      h.take()
      h.receive(publish("a/b", "five", 1, 5))
      h.receive(publish("a/b", "one", 2, 1, { dup: true }))
      if (ending === "pubrel") {
        h.receive(ack("Pubrel", 1))
        expect(acks(h)).toEqual([["pubcomp", 1]])
      } else {
        h.lose(lost)
        h.connect(true)
      }
      h.takeAll()
      expect(acks(h)).toEqual([["puback", 5]])
      expect(h.errors).toEqual([])
    }
  })

  it("closing with messages taken out of arrival order: the acknowledgements held back behind unread ones are a warning (the broker sends those messages again)", () => {
    for (const qos of [1, 2] as const) {
      const h = new Harness({ protocolVersion: 5, cleanStart: false })
      h.connect()
      for (const [i, text] of ["normal 1", "urgent 2", "normal 3", "urgent 4"].entries()) {
        h.receive(publish("a/b", text, qos, i + 1))
      }
      // the urgent ones are taken first (a priority queue): their acknowledgements wait behind "normal 1"
      const [, urgent2, , urgent4] = h.delivered
      for (const taken of [urgent2, urgent4]) h.session.settled(taken.record!, h.out)
      h.drain()
      expect(h.take()).toEqual([])
      h.session.close(new MqttError.ConnectionLostError({ reason: "closed by the client" }), h.out)
      h.drain()
      const warnings = h.warnings.filter((w) => w.startsWith("closing with"))
      expect(warnings.length).toBe(1)
      expect(warnings[0]).toContain("2 message(s) taken but not acknowledged")
      expect(warnings[0]).toContain("behind 2 earlier message(s) not taken")
      expect(warnings[0].includes("QoS 2 one(s)")).toBe(qos === 2)
    }
    // in arrival order, or nothing taken: nothing held back, no warning
    const h = new Harness({ protocolVersion: 5, cleanStart: false })
    h.connect()
    h.receive(publish("a/b", "one", 1, 1))
    h.receive(publish("a/b", "two", 1, 2))
    h.session.settled(h.delivered[0].record!, h.out)
    h.drain()
    h.session.close(new MqttError.ConnectionLostError({ reason: "closed by the client" }), h.out)
    h.drain()
    expect(h.warnings.filter((w) => w.startsWith("closing with"))).toEqual([])
  })

  it("a new message under an identifier ends what the client kept of its earlier flows: a waiting answer is not sent, a released message's content is dropped [MQTT-2.2.1-3]", () => {
    const acks = (h: Harness) => (h.take() as Array<any>).map((p) => [p.cmd, p.messageId])
    // an answer to a resend that crossed the PUBACK waits behind an unread message; the broker, which has the
    // PUBACK, reuses the identifier for a new message (QoS 1 or 2): the answer would acknowledge that one unread
    for (const [version, qos] of [[4, 1], [5, 1], [4, 2], [5, 2]] as const) {
      const h = new Harness({ protocolVersion: version, cleanStart: false })
      h.connect()
      h.receive(publish("a/b", "one", 1, 1))
      h.lose(lost)
      h.takeAll()
      h.connect(true)
      expect(acks(h)).toEqual([["puback", 1]])
      h.receive(publish("a/b", "three", 1, 3))
      h.receive(publish("a/b", "one", 1, 1, { dup: true }))
      h.receive(publish("a/b", "fresh", qos, 1))
      expect(h.delivered.map((d) => d.message.text)).toEqual(["three", "fresh"])
      const [three, fresh] = h.delivered.splice(0)
      h.session.settled(three.record!, h.out)
      h.drain()
      expect(acks(h)).toEqual([["puback", 3]])
      h.session.settled(fresh.record!, h.out)
      h.drain()
      expect(acks(h)).toEqual([[qos === 1 ? "puback" : "pubrec", 1]])
      expect(h.errors).toEqual([])
    }
    // QoS 2: a resend answered behind an unread message while the flow awaits PUBREL; PUBREL, then a new message
    // under the identifier
    {
      const h = new Harness({ protocolVersion: 5 })
      h.connect()
      h.receive(publish("a/b", "one", 2, 1))
      h.takeAll()
      expect(acks(h)).toEqual([["pubrec", 1]])
      h.receive(publish("a/b", "four", 1, 4))
      h.receive(publish("a/b", "one", 2, 1, { dup: true }))
      h.receive(ack("Pubrel", 1))
      expect(acks(h)).toEqual([["pubcomp", 1]])
      h.receive(publish("a/b", "fresh", 2, 1))
      const [four, fresh] = h.delivered.splice(0)
      expect([four.message.text, fresh.message.text]).toEqual(["four", "fresh"])
      h.session.settled(four.record!, h.out)
      h.drain()
      expect(acks(h)).toEqual([["puback", 4]])
      h.session.settled(fresh.record!, h.out)
      h.drain()
      expect(acks(h)).toEqual([["pubrec", 1]])
    }
    // a QoS 2 message released (PUBREL) on the connection after it came; the broker reuses the identifier for a
    // second message, then a third with the first one's content, whose resend comes on the next connection: it
    // is a message of its own, delivered
    for (const version of [4, 5] as const) {
      const h = new Harness({ protocolVersion: version, cleanStart: false })
      h.connect()
      h.receive(publish("a/b", "on", 2, 7))
      h.lose(lost)
      h.takeAll()
      h.connect(true)
      expect(acks(h)).toEqual([["pubrec", 7]])
      h.receive(ack("Pubrel", 7))
      expect(acks(h)).toEqual([["pubcomp", 7]])
      h.receive(publish("a/b", "off", 2, 7))
      expect(h.takeAll().map((d) => d.message.text)).toEqual(["off"])
      h.receive(ack("Pubrel", 7))
      expect(acks(h)).toEqual([["pubrec", 7], ["pubcomp", 7]])
      h.lose(lost)
      h.connect(true)
      h.receive(publish("a/b", "on", 2, 7, { dup: true }))
      expect(h.delivered.map((d) => d.message.text)).toEqual(["on"])
      expect(h.errors).toEqual([])
    }
  })

  it("an acknowledged QoS 2 record waiting in the line behind an unread one keeps no payload", () => {
    // a steady QoS 2 flow whose consumer stays a few messages behind: the line never empties, and the records
    // acknowledged at its front stay there until it is compacted
    const h = new Harness({ protocolVersion: 5 })
    h.connect()
    const payload = "x".repeat(10_000)
    for (let i = 1; i <= 500; i++) {
      h.receive(publish("a/b", payload, 2, i))
      if (i > 5) {
        h.session.settled(h.delivered.shift()!.record!, h.out)
        h.drain()
      }
      h.take()
    }
    // the line is private: read here, for what no behaviour shows but the process's memory
    const inbound = h.session.inbound as unknown as { line: Array<{ content?: unknown }>; head: number }
    expect(inbound.head).toBeGreaterThan(400)
    expect(inbound.line.slice(0, inbound.head).filter((record) => record.content !== undefined)).toEqual([])
    // the unread ones keep theirs: a resend on the next connection is matched by it
    expect(inbound.line.slice(inbound.head).every((record) => record.content !== undefined)).toBe(true)
  })

  it("what crossed on one connection is forgotten at the next: a resend there under the same identifier is delivered", () => {
    const h = new Harness({ protocolVersion: 4, cleanStart: false })
    h.connect()
    h.receive(publish("a/b", "one", 1, 1))
    h.receive(publish("a/b", "two", 2, 2))
    h.lose(lost)
    h.takeAll()
    h.connect(true)
    h.receive(ack("Pubrel", 2))
    h.take()
    // no resend came on that connection; on the next one the broker resends messages that the client never got
    // (their first sending was lost with the connection): new, delivered
    h.lose(lost)
    h.connect(true)
    h.receive(publish("a/b", "three", 1, 1, { dup: true }))
    h.receive(publish("a/b", "four", 2, 2, { dup: true }))
    expect(h.delivered.map((d) => d.message.text)).toEqual(["three", "four"])
  })

  it("a durable session journals a QoS 2 identifier as delivered when its message is done, before its PUBREC can go; a new message under it unmarks it", () => {
    const h = new Harness({ protocolVersion: 4 })
    h.out.journal = []
    h.connect()
    h.out.journal.length = 0
    h.receive(publish("a/b", "one", 1, 1))
    h.receive(publish("a/b", "two", 2, 2))
    const [first, second] = h.delivered
    h.session.settled(second.record!, h.out)
    h.drain()
    // its PUBREC waits behind the first message; its identifier is stored already
    expect(h.take()).toEqual([])
    expect(h.out.journal).toEqual([{ t: "a", id: 2 }])
    // a broker that reuses the identifier (no DUP): another message, which the store must not take for that one
    h.out.journal.length = 0
    h.receive(publish("a/b", "three", 2, 2))
    expect(h.out.journal).toEqual([{ t: "x", id: 2 }])
    h.session.settled(first.record!, h.out)
    h.drain()
    expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["puback", 1]])
    // the new one is journaled once, when it is done, and acknowledged
    h.out.journal.length = 0
    h.session.settled(h.delivered[2].record!, h.out)
    h.drain()
    expect(h.out.journal).toEqual([{ t: "a", id: 2 }])
    expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["pubrec", 2]])
  })

  it("taken while offline and the broker lost the session: nothing is acknowledged on the new connection", () => {
    const h = new Harness({ protocolVersion: 4, cleanStart: false })
    h.connect()
    h.receive(publish("a/b", "one", 1, 1))
    h.receive(publish("a/b", "two", 2, 2))
    h.lose(lost)
    h.takeAll()
    h.connect(false)
    expect(h.take()).toEqual([])
    // the same identifiers on the new session are new messages
    h.receive(publish("a/b", "three", 2, 2))
    expect(h.delivered.map((d) => d.message.text)).toEqual(["three"])
  })

  it("a QoS 1 PUBLISH reusing an identifier the client still holds, without DUP, is a new message: delivered, both acknowledged", () => {
    const h = new Harness({ protocolVersion: 4 })
    h.connect()
    h.receive(publish("t", "first", 1, 9))
    // a resend (DUP) is not delivered again
    h.receive(publish("t", "first", 1, 9, { dup: true }))
    // a broker past 65,535 messages in flight reuses the identifier for the next message
    h.receive(publish("t", "second", 1, 9))
    expect(h.delivered.map((d) => d.message.text)).toEqual(["first", "second"])
    expect(h.warnings.some((w) => w.includes("reused packet identifier 9"))).toBe(true)
    h.takeAll()
    expect((h.take() as Array<any>).map((p) => [p.cmd, p.messageId])).toEqual([["puback", 9], ["puback", 9]])
  })

  it("after Session Present 0 the old session's messages are still delivered but never acknowledged", () => {
    const h = new Harness({ protocolVersion: 5 })
    h.connect()
    h.receive(publish("t", "old", 1, 3))
    const [old] = h.delivered.splice(0)
    h.lose(lost)
    h.connect(false)
    h.session.settled(old.record!, h.out)
    h.drain()
    expect(h.take()).toEqual([])
  })

  it("the client's Receive Maximum: one more unacknowledged QoS 1/2 message is DISCONNECT 0x93; QoS 2 counts until PUBREL", () => {
    const h = new Harness({ protocolVersion: 5, receiveMaximum: 2 })
    h.connect()
    h.receive(publish("t", "1", 2, 1))
    h.takeAll()
    // PUBREC sent, no PUBREL yet: it still counts
    h.receive(publish("t", "2", 1, 2))
    h.receive(ack("Pubrel", 1))
    h.receive(publish("t", "3", 1, 3))
    expect(h.errors).toEqual([])
    h.receive(publish("t", "4", 1, 4))
    expect(h.errors.map((e) => [e._tag, (e as MqttError.ProtocolError).reasonCode])).toEqual([["ProtocolError", 0x93]])
  })

  it("topic aliases from the broker: set, then used alone; 0, over the maximum (0x94) and never set (0x82) are violations", () => {
    const h = new Harness({ protocolVersion: 5, topicAliasMaximum: 2 })
    h.connect()
    h.receive(publish("a/b", "1", 0, 0, { topicAlias: 1 }))
    h.receive(publish("", "2", 0, 0, { topicAlias: 1 }))
    expect(h.delivered.map((d) => d.message.topic)).toEqual(["a/b", "a/b"])
    for (const [alias, topic, code] of [[0, "x", 0x94], [3, "x", 0x94], [2, "", 0x82]] as const) {
      const fresh = new Harness({ protocolVersion: 5, topicAliasMaximum: 2 })
      fresh.connect()
      fresh.receive(publish(topic, "x", 0, 0, { topicAlias: alias }))
      expect(fresh.errors.map((e) => (e as MqttError.ProtocolError).reasonCode)).toEqual([code])
      expect(fresh.delivered).toEqual([])
    }
  })
})

describe("session: subscriptions", () => {
  describe("an acknowledgement whose identifier a flow of another kind holds", () => {
    // the broker and the client disagree about that flow: a protocol error (0x82) that closes the connection; the
    // flow does not end, and is sent again on the next connection. An identifier no flow holds is stray: ignored
    const cases: ReadonlyArray<
      readonly [string, "subscribe" | "unsubscribe" | "publish", (id: number) => Packets.Packet, string]
    > = [
      ["a SUBACK for an UNSUBSCRIBE", "unsubscribe", (id) => ({ _tag: "Suback", id, codes: [0] }), "SUBACK"],
      ["an UNSUBACK for a SUBSCRIBE", "subscribe", (id) => ({ _tag: "Unsuback", id, codes: undefined }), "UNSUBACK"],
      ["a PUBACK for a SUBSCRIBE", "subscribe", (id) => ack("Puback", id), "PUBACK"],
      ["a PUBREC for an UNSUBSCRIBE", "unsubscribe", (id) => ack("Pubrec", id), "PUBREC"],
      ["a PUBCOMP for a SUBSCRIBE", "subscribe", (id) => ack("Pubcomp", id), "PUBCOMP"],
      ["a SUBACK for a PUBLISH", "publish", (id) => ({ _tag: "Suback", id, codes: [0] }), "SUBACK"],
      ["an UNSUBACK for a PUBLISH", "publish", (id) => ({ _tag: "Unsuback", id, codes: undefined }), "UNSUBACK"]
    ]
    for (const version of [4, 5] as const) {
      for (const [name, kind, wrong, packet] of cases) {
        it(`v${version}: ${name} is a protocol error (0x82); the flow goes on and is sent again on the next connection`, () => {
          const h = new Harness({ protocolVersion: version, cleanStart: false })
          h.connect()
          const held = h.subscribe(MESSAGES, [spec("held/#")])
          h.receive({ _tag: "Suback", id: held.id, codes: [1] })
          h.take()
          const op = kind === "subscribe"
            ? h.subscribe(MESSAGES, [spec("new/#")])
            : kind === "unsubscribe"
            ? h.unsubscribe(MESSAGES, ["held/#"])!
            : entry(h.publish(message("t", "q1", 1, version)))
          expect(h.take().map((p: any) => p.cmd)).toEqual([kind])
          h.receive(wrong(op.id))
          expect(h.errors.map((e) => [e._tag, (e as any).reasonCode, (e as any).packet])).toEqual([
            ["ProtocolError", version === 5 ? 0x82 : undefined, packet]
          ])
          h.errors = []
          expect(h.take()).toEqual([])
          expect(op.done).toBe(false)
          h.lose(lost)
          h.connect(true)
          const again = h.take() as Array<any>
          expect(again.map((p) => [p.cmd, p.dup === true])).toEqual([[kind, kind === "publish"]])
          const id = again[0].messageId
          h.receive(
            kind === "subscribe"
              ? { _tag: "Suback", id, codes: [1] }
              : kind === "unsubscribe"
              ? { _tag: "Unsuback", id, codes: version === 5 ? [0] : undefined }
              : ack("Puback", id)
          )
          expect([op.done, op.error]).toEqual([true, undefined])
          expect(h.errors).toEqual([])
        })
      }
    }
  })

  it("MQTT 5: one Subscription Identifier given to two subscriptions names both: a message goes to the owner whose filter its topic matches", () => {
    const h = new Harness({ protocolVersion: 5 })
    h.connect()
    const a = h.subscribe(1, [spec("a/#")], 5)
    h.receive({ _tag: "Suback", id: a.id, codes: [1] })
    const b = h.subscribe(2, [spec("b/#")], 5)
    h.receive({ _tag: "Suback", id: b.id, codes: [1] })
    h.receive(publish("a/x", "for 1", 1, 1, { properties: { subscriptionIdentifiers: [5] } }))
    h.receive(publish("b/x", "for 2", 1, 2, { properties: { subscriptionIdentifiers: [5] } }))
    expect(h.errors).toEqual([])
    expect(h.delivered.map((d) => [d.message.topic, d.owners])).toEqual([["a/x", [1]], ["b/x", [2]]])
  })

  it("Session Present from another broker of the list: the subscriptions are made again (that node may hold an older session); from the same one they are not", () => {
    const h = new Harness({ protocolVersion: 5, cleanStart: false, sessionExpiryInterval: 300 })
    const topics = (packets: ReadonlyArray<any>) =>
      packets.map((p) => [p.cmd, p.subscriptions.map((s: any) => s.topic)])
    h.connect(false, {}, "mqtt://n1:1883")
    const a = h.subscribe(MESSAGES, [spec("a/#", 2)])
    h.receive({ _tag: "Suback", id: a.id, codes: [2] })
    h.take()
    h.lose(lost)
    // n2 holds no session: restored
    h.connect(false, {}, "mqtt://n2:1883")
    const restore = h.take() as Array<any>
    expect(topics(restore)).toEqual([["subscribe", ["a/#"]]])
    h.receive({ _tag: "Suback", id: restore[0].messageId, codes: [2] })
    const b = h.subscribe(MESSAGES, [spec("b/#", 2)])
    h.receive({ _tag: "Suback", id: b.id, codes: [2] })
    h.take()
    h.lose(lost)
    // back on n1, which resumes the session it holds: made before b/# was
    h.connect(true, {}, "mqtt://n1:1883")
    const again = h.take() as Array<any>
    expect(again.every((p) => p.cmd === "subscribe")).toBe(true)
    expect(again.flatMap((p) => p.subscriptions.map((s: any) => s.topic)).sort()).toEqual(["a/#", "b/#"])
    // Retain Handling 1: the retained messages come only where the node did not hold the subscription
    expect(again.flatMap((p) => p.subscriptions.map((s: any) => s.rh))).toEqual([1, 1])
    for (const p of again) {
      h.receive({ _tag: "Suback", id: p.messageId, codes: p.subscriptions.map(() => 2) })
    }
    expect([...h.session.subscriptions.brokerFilters().keys()].sort()).toEqual(["a/#", "b/#"])
    // the same node again: Session Present is trusted
    h.lose(lost)
    h.connect(true, {}, "mqtt://n1:1883")
    expect(h.take()).toEqual([])
    expect(h.errors).toEqual([])
  })

  it("an UNSUBSCRIBE in flight when the session is lost: the restore skips its filter, so the broker ends as callers were told", () => {
    const h = new Harness({ protocolVersion: 4, cleanStart: false })
    h.connect()
    const subscribe = h.subscribe(MESSAGES, [spec("plant/a/status"), spec("plant/b/status")])
    h.receive({ _tag: "Suback", id: subscribe.id, codes: [1, 1] })
    const unsubscribe = h.unsubscribe(MESSAGES, ["plant/a/status"])!
    h.take()
    h.lose(lost)
    h.connect(false)
    const sent = h.take() as Array<any>
    expect(
      sent.map((p) => [p.cmd, p.cmd === "subscribe" ? p.subscriptions.map((s: any) => s.topic) : p.unsubscriptions])
    )
      .toEqual([["subscribe", ["plant/b/status"]], ["unsubscribe", ["plant/a/status"]]])
    h.receive({ _tag: "Suback", id: sent[0].messageId, codes: [1] })
    h.receive({ _tag: "Unsuback", id: sent[1].messageId, codes: undefined })
    expect(unsubscribe.done && unsubscribe.error === undefined).toBe(true)
    expect([...h.session.subscriptions.brokerFilters().keys()]).toEqual(["plant/b/status"])
    // and every later restore keeps it so
    h.lose(lost)
    h.connect(false)
    expect((h.take() as Array<any>).map((p) => p.subscriptions.map((s: any) => s.topic))).toEqual([["plant/b/status"]])
  })

  it("a restore the broker refuses is asked for again on the next connection: callers were told the client holds it", () => {
    const h = new Harness({ protocolVersion: 4, cleanStart: false })
    h.connect()
    const s = h.subscribe(MESSAGES, [spec("a/#")])
    h.receive({ _tag: "Suback", id: s.id, codes: [1] })
    h.take()
    h.lose(lost)
    h.connect(false)
    const [restore] = h.take() as Array<any>
    h.receive({ _tag: "Suback", id: restore.messageId, codes: [0x80] })
    expect(h.warnings.some((w) => w.includes("refused to restore"))).toBe(true)
    for (const present of [true, false]) {
      h.lose(lost)
      h.connect(present)
      const [again] = h.take() as Array<any>
      expect([again.cmd, again.subscriptions[0].topic]).toEqual(["subscribe", "a/#"])
      h.receive({ _tag: "Suback", id: again.messageId, codes: [1] })
    }
    expect([...h.session.subscriptions.brokerFilters().keys()]).toEqual(["a/#"])
  })

  it("a SUBSCRIBE at a new QoS in flight when the session is lost is sent again, not restored at the old QoS", () => {
    const h = new Harness({ protocolVersion: 4, cleanStart: false })
    h.connect()
    const first = h.subscribe(MESSAGES, [spec("a", 0)])
    h.receive({ _tag: "Suback", id: first.id, codes: [0] })
    h.subscribe(MESSAGES, [spec("a", 2)])
    h.take()
    h.lose(lost)
    h.connect(false)
    expect((h.take() as Array<any>).map((p) => p.subscriptions.map((s: any) => [s.topic, s.qos]))).toEqual([[["a", 2]]])
  })

  it("offline.requests fail: a request lost with its connection fails, and a resumed session is set back to what callers were told", () => {
    const h = new Harness({ protocolVersion: 4, cleanStart: false, offlineRequests: "fail" })
    h.connect()
    const subscribed = h.subscribe(MESSAGES, [spec("kept")])
    h.receive({ _tag: "Suback", id: subscribed.id, codes: [1] })
    const unsubscribe = h.unsubscribe(MESSAGES, ["kept"])!
    const subscribe = h.subscribe(MESSAGES, [spec("never")])
    h.take()
    h.lose(lost)
    expect([unsubscribe.error?._tag, subscribe.error?._tag]).toEqual(["ConnectionLostError", "ConnectionLostError"])
    h.connect(true)
    // the broker may have applied either: the client asks again for what callers were told
    const sent = h.take() as Array<any>
    expect(sent.map((p) => [p.cmd, p.cmd === "subscribe" ? p.subscriptions[0].topic : p.unsubscriptions[0]])).toEqual([
      ["subscribe", "kept"],
      ["unsubscribe", "never"]
    ])
  })

  it("offline.requests fail: a released stream's UNSUBSCRIBE lost with its connection goes out again on the resumed session; the gone owner never holds its filter again", () => {
    const h = new Harness({ protocolVersion: 4, cleanStart: false, offlineRequests: "fail" })
    h.connect()
    const subscribed = h.subscribe(1, [spec("gone/#")])
    h.receive({ _tag: "Suback", id: subscribed.id, codes: [1] })
    h.take()
    const release = h.session.subscriptions.removeOwner(1, h.out)!
    h.drain()
    expect((h.take() as Array<any>).map((p) => p.cmd)).toEqual(["unsubscribe"])
    h.lose(lost)
    // nobody waits for it: it is the client's own, not failed
    expect(release.error).toBeUndefined()
    expect(h.session.subscriptions.filtersOf(1)).toEqual([])
    h.connect(true)
    const sent = h.take() as Array<any>
    expect(sent.map((p) => [p.cmd, p.unsubscriptions?.[0]])).toEqual([["unsubscribe", "gone/#"]])
    h.receive({ _tag: "Unsuback", id: sent[0].messageId, codes: undefined })
    expect(release.done).toBe(true)
    // a message the broker still sent for it goes to `messages`
    h.receive(publish("gone/x", "x", 0))
    expect(h.delivered.splice(0).map((d) => [...d.owners])).toEqual([[MESSAGES]])
  })

  it("several owners of one filter: each receives its messages; UNSUBSCRIBE only when the last lets go", () => {
    const h = new Harness({ protocolVersion: 5 })
    h.connect()
    const one = h.subscribe(1, [spec("alarms/+")])
    const two = h.subscribe(2, [spec("alarms/+")])
    const [s1, s2] = h.take() as Array<any>
    h.receive({ _tag: "Suback", id: one.id, codes: [1] })
    h.receive({ _tag: "Suback", id: two.id, codes: [1] })
    const id2 = s2.properties.subscriptionIdentifier
    expect(id2).not.toBe(s1.properties.subscriptionIdentifier)
    h.receive(publish("alarms/x", "x", 1, 1, { properties: { subscriptionIdentifiers: [id2] } }))
    const [delivery] = h.delivered.splice(0)
    expect([...delivery.owners].sort()).toEqual([1, 2])
    // the client's own identifiers are not shown to the application
    expect(delivery.message.properties.subscriptionIdentifiers).toBeUndefined()
    expect(h.session.subscriptions.removeOwner(1, h.out)).toBeUndefined()
    h.drain()
    expect(h.take()).toEqual([])
    h.session.subscriptions.removeOwner(2, h.out)
    h.drain()
    expect((h.take() as Array<any>).map((p) => [p.cmd, p.unsubscriptions])).toEqual([["unsubscribe", ["alarms/+"]]])
  })

  it("MQTT 5, a session resumed by a new process (Session Present 1, nothing restored): a message of the earlier process naming an identifier this process gave again goes by its topic, not to the new owner", () => {
    const h = new Harness({ protocolVersion: 5, cleanStart: false })
    // the earlier process subscribed responses/# under the first automatic identifier, and the broker holds a
    // message for it; this process resumes the session without knowing that
    h.connect(true)
    const data = h.subscribe(1, [spec("data/#")])
    const [sent] = h.take() as Array<any>
    h.receive({ _tag: "Suback", id: data.id, codes: [1] })
    const identifier = sent.properties.subscriptionIdentifier
    h.receive(publish("responses/x", "late", 1, 1, { properties: { subscriptionIdentifiers: [identifier] } }))
    h.receive(publish("data/x", "mine", 1, 2, { properties: { subscriptionIdentifiers: [identifier] } }))
    expect(h.delivered.splice(0).map((d) => [d.message.text, [...d.owners]])).toEqual([
      ["late", [MESSAGES]],
      ["mine", [1]]
    ])
  })

  it("the broker's subscription serves every owner: the highest QoS any owner asked for", () => {
    const h = new Harness({ protocolVersion: 4 })
    h.connect()
    h.subscribe(1, [spec("a", 2)])
    h.subscribe(2, [spec("a", 0)])
    expect((h.take() as Array<any>).map((p) => p.subscriptions[0].qos)).toEqual([2, 2])
  })

  it("MQTT 5: a copy per subscription reaches only the owners of the subscription it names", () => {
    const h = new Harness({ protocolVersion: 5 })
    h.connect()
    const a = h.subscribe(1, [spec("s/+/x")])
    const b = h.subscribe(2, [spec("s/b/#")])
    const [sa, sb] = h.take() as Array<any>
    h.receive({ _tag: "Suback", id: a.id, codes: [1] })
    h.receive({ _tag: "Suback", id: b.id, codes: [1] })
    for (const s of [sa, sb]) {
      h.receive(
        publish("s/b/x", "m", 0, 0, { properties: { subscriptionIdentifiers: [s.properties.subscriptionIdentifier] } })
      )
    }
    expect(h.delivered.map((d) => d.owners)).toEqual([[1], [2]])
  })

  it("MQTT 3.1.1, a broker that sends a copy per subscription (NATS): each stream sees each message once", () => {
    for (const copies of [2, 1]) {
      const h = new Harness({
        protocolVersion: 4,
        overlapping: copies === 2 ? "copy-per-subscription" : "single-copy"
      })
      h.connect()
      const a = h.subscribe(1, [spec("s/+/x")])
      const b = h.subscribe(2, [spec("s/b/#")])
      // the broker holds both: until it says so, the client cannot tell how many copies come (see the tests below)
      h.receive({ _tag: "Suback", id: a.id, codes: [1] })
      h.receive({ _tag: "Suback", id: b.id, codes: [1] })
      for (const payload of ["one", "two", "two"]) {
        for (let i = 0; i < copies; i++) h.receive(publish("s/b/x", payload, 0))
      }
      const perOwner = new Map<number, Array<string>>()
      for (const d of h.delivered) {
        for (const o of d.owners) perOwner.set(o, [...(perOwner.get(o) ?? []), d.message.text])
      }
      expect(Object.fromEntries(perOwner)).toEqual({ 1: ["one", "two", "two"], 2: ["one", "two", "two"] })
    }
  })

  describe("MQTT 3.1.1, a broker that sends a copy per subscription and does not say which (NATS)", () => {
    const copies = () => {
      const h = new Harness({ protocolVersion: 4, overlapping: "copy-per-subscription" })
      h.connect()
      return h
    }
    const acked = (h: Harness, owner: number, filter: string) => {
      const request = h.subscribe(owner, [spec(filter)])
      h.receive({ _tag: "Suback", id: request.id, codes: [1] })
    }
    /** What each owner received, in order. */
    const perOwner = (h: Harness) => {
      const got: Record<number, Array<string>> = {}
      for (const d of h.delivered) for (const owner of d.owners) (got[owner] ??= []).push(d.message.text)
      return got
    }
    /** How many of each payload `texts` holds. */
    const counts = (texts: ReadonlyArray<string> = []) => {
      const n: Record<string, number> = {}
      for (const text of texts) n[text] = (n[text] ?? 0) + 1
      return n
    }
    /** Each copy on its own QoS 1 flow, as NATS sends them. */
    let nextId = 1
    const copy = (h: Harness, payload: string, extra: Partial<Packets.Publish> = {}) =>
      h.receive(publish("s/b/x", payload, 1, nextId = nextId % 65535 + 1, extra))

    it("the copies of a burst come a subscription at a time (NATS sends QoS 1 so): each owner receives each message once", () => {
      const h = copies()
      acked(h, MESSAGES, "s/#")
      acked(h, 1, "s/b/x")
      const burst = ["m0", "m1", "m2", "m2", "m3"]
      for (const _subscription of [0, 1]) for (const payload of burst) copy(h, payload)
      // identical copies: which of the two m2 each got first does not matter
      const got = perOwner(h)
      expect([got[MESSAGES], got[1]].map((texts) => [...texts].sort())).toEqual([burst, burst])
    })

    it("whatever order the copies of several messages come in, identical ones included, each owner receives each message once", () => {
      fc.assert(
        fc.property(
          fc.array(fc.constantFrom("a", "b", "c"), { minLength: 1, maxLength: 8 }),
          fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 24, maxLength: 24 }),
          (messages, keys) => {
            const h = copies()
            acked(h, MESSAGES, "s/#")
            acked(h, 1, "s/+/x")
            acked(h, 2, "s/b/x")
            // a stream of copies per subscription, each in order, interleaved at random
            const arrivals = [0, 1, 2].flatMap((stream) => {
              const at = keys.slice(stream * 8, stream * 8 + messages.length).sort((x, y) => x - y)
              return messages.map((payload, i) => ({ payload, at: at[i] }))
            }).sort((x, y) => x.at - y.at)
            for (const { payload } of arrivals) copy(h, payload)
            const got = perOwner(h)
            expect([MESSAGES, 1, 2].map((owner) => counts(got[owner]))).toEqual(Array(3).fill(counts(messages)))
          }
        ),
        { numRuns: 300 }
      )
    })

    it("a retained message sent for a new subscription (RETAIN 1 [MQTT-3.3.1-8]), one copy, reaches the new subscription's owner", () => {
      for (const beforeSuback of [false, true]) {
        const h = copies()
        acked(h, MESSAGES, "sensors/#")
        const b = h.subscribe(1, [spec("sensors/temp")])
        if (!beforeSuback) h.receive({ _tag: "Suback", id: b.id, codes: [1] })
        h.receive(publish("sensors/temp", "21.5", 1, 1, { retain: true }))
        if (beforeSuback) h.receive({ _tag: "Suback", id: b.id, codes: [1] })
        // which subscription it is for, the client cannot tell: every owner whose filter matches
        expect(h.delivered.map((d) => [d.message.text, d.owners])).toEqual([["21.5", [MESSAGES, 1]]])
        // a live message after it: a copy each, as counted before
        h.receive(publish("sensors/temp", "22", 1, 2))
        h.receive(publish("sensors/temp", "22", 1, 3))
        expect(perOwner(h)).toEqual({ [MESSAGES]: ["21.5", "22"], 1: ["21.5", "22"] })
      }
    })

    it("a SUBSCRIBE in flight: no owner loses a message, whether or not the broker sends the new subscription's copy yet", () => {
      const h = copies()
      acked(h, 1, "s/+/x")
      acked(h, 2, "s/b/#")
      const c = h.subscribe(3, [spec("s/b/x")])
      // the broker has not made the new subscription yet: a copy for each of the two it holds
      copy(h, "before")
      copy(h, "before")
      // it has: three copies; the one the client cannot attribute goes to every owner
      copy(h, "made")
      copy(h, "made")
      copy(h, "made")
      h.receive({ _tag: "Suback", id: c.id, codes: [1] })
      copy(h, "after")
      copy(h, "after")
      copy(h, "after")
      expect(perOwner(h)).toEqual({
        1: ["before", "made", "made", "after"],
        2: ["before", "made", "made", "after"],
        3: ["made", "after"]
      })
    })

    it("an UNSUBSCRIBE in flight: the remaining owner receives every message, twice while the broker may still hold the other subscription, never none", () => {
      // the remaining owner's subscription is the newer one: a copy counted for the older one would be lost to it
      const h = copies()
      acked(h, 2, "s/b/x")
      acked(h, 1, "s/+/x")
      const u = h.unsubscribe(2, ["s/b/x"])!
      // the broker still holds both: two copies
      copy(h, "held")
      copy(h, "held")
      // it ended the other one: one copy
      copy(h, "ended")
      h.receive({ _tag: "Unsuback", id: u.id, codes: undefined })
      copy(h, "after")
      expect(perOwner(h)).toEqual({ 1: ["held", "held", "ended", "after"] })
    })

    it("a copy sent again (DUP) is not counted as another subscription's copy", () => {
      const h = copies()
      acked(h, 1, "s/+/x")
      acked(h, 2, "s/b/x")
      h.receive(publish("s/b/x", "m", 1, 1))
      // the first copy sent again before the second came: it is a duplicate of a message still queued
      h.receive(publish("s/b/x", "m", 1, 1, { dup: true }))
      h.receive(publish("s/b/x", "m", 1, 2))
      expect(perOwner(h)).toEqual({ 1: ["m"], 2: ["m"] })
    })

    it("a SUBSCRIBE or UNSUBSCRIBE in flight that the broker carries out at any point: no owner loses a message its subscription was sent", () => {
      fc.assert(
        fc.property(
          fc.constantFrom("Subscribe", "Unsubscribe"),
          fc.array(fc.constantFrom("a", "b", "c", "d"), { minLength: 1, maxLength: 6 }),
          fc.nat(),
          fc.nat(),
          fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 24, maxLength: 24 }),
          (kind, messages, appliedAt, ackAt, keys) => {
            const h = copies()
            acked(h, 1, "s/+/x")
            acked(h, 2, "s/b/#")
            acked(h, 4, "s/#")
            const request = kind === "Subscribe" ? h.subscribe(3, [spec("s/b/x")]) : h.unsubscribe(2, ["s/b/#"])!
            // the broker makes or ends the subscription between two messages: those from `applied` on have the new
            // set of subscriptions; a stream of copies per subscription, each in order, interleaved at random
            const applied = appliedAt % (messages.length + 1)
            const streams = kind === "Subscribe"
              ? [messages, messages, messages, messages.slice(applied)]
              : [messages, messages, messages.slice(0, applied)]
            const arrivals: Array<{ readonly payload: string | undefined; readonly before: boolean }> = streams
              .flatMap((stream, s) => {
                const at = keys.slice(s * 6, s * 6 + stream.length).sort((x, y) => x - y)
                const from = kind === "Subscribe" && s === 3 ? applied : 0
                return stream.map((payload, i) => ({ payload, at: at[i], before: from + i < applied }))
              })
              .sort((x, y) => x.at - y.at)
            // the acknowledgement: after the broker made the subscription, at any point among the copies; only
            // where no two payloads are the same may the copies of a message it took before come after it
            // (those it sends from a stream that lags behind: then the client cannot tell them from the copies
            // of a later message, see the `overlapping` option)
            const earliest = kind === "Subscribe" && new Set(messages).size < messages.length
              ? arrivals.reduce((last, a, i) => a.before ? i + 1 : last, 0)
              : 0
            const at = earliest + ackAt % (arrivals.length + 1 - earliest)
            arrivals.splice(at, 0, { payload: undefined, before: false })
            for (const { payload } of arrivals) {
              if (payload !== undefined) copy(h, payload)
              else if (kind === "Subscribe") h.receive({ _tag: "Suback", id: request.id, codes: [1] })
              else h.receive({ _tag: "Unsuback", id: request.id, codes: undefined })
            }
            const got = perOwner(h)
            const missing = (owner: number, sent: ReadonlyArray<string>) => {
              const received = counts(got[owner])
              return Object.entries(counts(sent)).filter(([payload, n]) => (received[payload] ?? 0) < n)
            }
            expect([1, 4].map((owner) => missing(owner, messages))).toEqual([[], []])
            if (kind === "Subscribe") {
              expect([missing(2, messages), missing(3, messages.slice(applied))]).toEqual([[], []])
            }
          }
        ),
        { numRuns: 2000 }
      )
    })
  })

  it("a Subscription Identifier no subscription of a session this client made has is a violation (0x82)", () => {
    const h = new Harness({ protocolVersion: 5 })
    h.connect()
    const s = h.subscribe(MESSAGES, [spec("a")], 7)
    h.receive({ _tag: "Suback", id: s.id, codes: [1] })
    h.receive(publish("a", "x", 0, 0, { properties: { subscriptionIdentifiers: [7] } }))
    expect(h.delivered.map((d) => d.message.properties.subscriptionIdentifiers)).toEqual([[7]])
    h.receive(publish("a", "x", 0, 0, { properties: { subscriptionIdentifiers: [8] } }))
    expect(h.errors.map((e) => (e as MqttError.ProtocolError).reasonCode)).toEqual([0x82])
  })

  it("MQTT 5: a message naming the identifier of a subscription since replaced or removed is routed by its filter", () => {
    // the model test's counterexample: the broker keeps the identifiers a message matched when it took it, in its
    // queue and in a resend on a resumed session [MQTT-4.4.0-1], after the client replaced the subscription
    const h = new Harness({ protocolVersion: 5, cleanStart: false })
    h.connect()
    const first = h.subscribe(1, [spec("a/+", 2)])
    h.receive({ _tag: "Suback", id: first.id, codes: [2] })
    const old = (h.take() as Array<any>)[0].properties.subscriptionIdentifier
    h.receive(publish("a/b", "in flight", 2, 5, { properties: { subscriptionIdentifiers: [old] } }))
    const again = h.subscribe(1, [spec("a/+", 1)])
    h.receive({ _tag: "Suback", id: again.id, codes: [1] })
    h.lose(lost)
    h.connect(true)
    h.receive(publish("a/b", "in flight", 2, 5, { dup: true, properties: { subscriptionIdentifiers: [old] } }))
    h.receive(publish("a/b", "queued", 1, 6, { properties: { subscriptionIdentifiers: [old] } }))
    expect(h.errors).toEqual([])
    // the resend is not delivered twice; both reach the owner, without the client's own identifier
    expect(h.delivered.map((d) => [d.message.text, d.owners, d.message.properties.subscriptionIdentifiers])).toEqual([
      ["in flight", [1], undefined],
      ["queued", [1], undefined]
    ])
    // removed: what it names goes to `messages`
    expect(h.unsubscribe(1, ["a/+"])).toBeDefined()
    h.receive({ _tag: "Unsuback", id: 1, codes: [0] })
    h.receive(publish("a/b", "late", 1, 7, { properties: { subscriptionIdentifiers: [old] } }))
    expect(h.errors).toEqual([])
    expect(h.delivered.slice(2).map((d) => [d.message.text, d.owners])).toEqual([["late", [MESSAGES]]])
  })

  it("MQTT 5: an identifier the caller gives again after its subscription ended still routes a message queued for the old one by the old filter", () => {
    const h = new Harness({ protocolVersion: 5, cleanStart: false })
    h.connect()
    const first = h.subscribe(1, [spec("old/topic")], 7)
    h.receive({ _tag: "Suback", id: first.id, codes: [1] })
    const u = h.unsubscribe(1, ["old/topic"])!
    h.receive({ _tag: "Unsuback", id: u.id, codes: [0] })
    // 7 is retired; the caller gives it to another owner's subscription of another filter
    const second = h.subscribe(2, [spec("new/topic")], 7)
    h.receive({ _tag: "Suback", id: second.id, codes: [1] })
    // the broker had queued a message for the old subscription: it names 7 [MQTT-3.3.4-3]
    h.receive(publish("old/topic", "queued", 1, 3, { properties: { subscriptionIdentifiers: [7] } }))
    h.receive(publish("new/topic", "new", 1, 4, { properties: { subscriptionIdentifiers: [7] } }))
    // another owner holds the old filter now (under another identifier): what the broker queued for it is theirs
    const third = h.subscribe(3, [spec("old/topic")], 9)
    h.receive({ _tag: "Suback", id: third.id, codes: [1] })
    h.receive(publish("old/topic", "queued too", 1, 5, { properties: { subscriptionIdentifiers: [7] } }))
    expect(h.errors).toEqual([])
    expect(h.delivered.map((d) => [d.message.text, d.owners])).toEqual([
      ["queued", [MESSAGES]],
      ["new", [2]],
      ["queued too", [3]]
    ])

    // restarted from a store, which keeps no retired identifiers: one filter of an identifier is no proof
    const again = new Harness({ protocolVersion: 5, cleanStart: false })
    again.session.restore({
      clientId: "c",
      publishes: new Map(),
      awaitingRelease: new Set(),
      retired: new Set(),
      subscriptions: [{ spec: spec("new/topic"), identifier: 7 }]
    })
    again.connect(true)
    const resubscribed = again.subscribe(2, [spec("new/topic")], 7)
    again.receive({ _tag: "Suback", id: resubscribed.id, codes: [1] })
    again.receive(publish("old/topic", "queued", 1, 3, { properties: { subscriptionIdentifiers: [7] } }))
    again.receive(publish("new/topic", "new", 1, 4, { properties: { subscriptionIdentifiers: [7] } }))
    expect(again.errors).toEqual([])
    expect(again.delivered.map((d) => [d.message.text, d.owners])).toEqual([["queued", [MESSAGES]], ["new", [2]]])
  })

  it("MQTT 5: an identifier given again to a filter that matches the topic too: a new message goes by the new filter only, not also to another owner of the old filter (no duplicate)", () => {
    const h = new Harness({ protocolVersion: 5 })
    h.connect()
    const first = h.subscribe(1, [spec("a/#")], 5)
    h.receive({ _tag: "Suback", id: first.id, codes: [1] })
    const u = h.unsubscribe(1, ["a/#"])!
    h.receive({ _tag: "Unsuback", id: u.id, codes: [0] })
    // another owner takes a/# under its own identifier; 5 goes to a third owner's "#"
    const other = h.subscribe(2, [spec("a/#")])
    h.receive({ _tag: "Suback", id: other.id, codes: [1] })
    const otherId = (h.take() as Array<any>).at(-1).properties.subscriptionIdentifier
    const again = h.subscribe(3, [spec("#")], 5)
    h.receive({ _tag: "Suback", id: again.id, codes: [1] })
    // the broker sends one PUBLISH per matching subscription, each naming its identifier
    h.receive(publish("a/x", "one", 2, 1, { properties: { subscriptionIdentifiers: [otherId] } }))
    h.receive(publish("a/x", "one", 2, 2, { properties: { subscriptionIdentifiers: [5] } }))
    expect(h.errors).toEqual([])
    expect(h.delivered.map((d) => [d.message.text, [...d.owners]])).toEqual([["one", [2]], ["one", [3]]])
  })

  it(`MQTT 5: past ${RETIRED_KEPT} retired identifiers the oldest are forgotten: one the client does not know is routed by topic`, () => {
    const h = new Harness({ protocolVersion: 5 })
    h.connect()
    const identifiers: Array<number> = []
    for (let i = 0; i <= RETIRED_KEPT; i++) {
      const s = h.subscribe(1, [spec("a/+")])
      identifiers.push((h.take() as Array<any>)[0].properties.subscriptionIdentifier)
      h.receive({ _tag: "Suback", id: s.id, codes: [1] })
      const u = h.unsubscribe(1, ["a/+"])!
      h.receive({ _tag: "Unsuback", id: u.id, codes: [0] })
      h.take()
    }
    h.subscribe(2, [spec("a/b")])
    h.receive({ _tag: "Suback", id: 1, codes: [1] })
    h.receive(publish("a/b", "oldest", 0, 0, { properties: { subscriptionIdentifiers: [identifiers[0]] } }))
    h.receive(publish("a/b", "newest", 0, 0, { properties: { subscriptionIdentifiers: [identifiers.at(-1)!] } }))
    expect(h.errors).toEqual([])
    // the oldest: by topic (owner 2 holds a/b); the newest: by its filter a/+, which no one holds any more
    expect(h.delivered.map((d) => [d.message.text, d.owners])).toEqual([["oldest", [2]], ["newest", [MESSAGES]]])
  })

  it("MQTT 5: the client's own Subscription Identifiers wrap around after 268,435,455 [MQTT-3.8.2.1.2], past those in use and retired", () => {
    // a durable session restored with identifiers near the end of the range: the next is the last one there is
    const MAX_IDENTIFIER = 268_435_455
    const h = new Harness({ protocolVersion: 5, cleanStart: false })
    h.session.restore({
      clientId: "c",
      publishes: new Map(),
      awaitingRelease: new Set(),
      retired: new Set(),
      subscriptions: [
        { spec: spec("first"), identifier: AUTOMATIC_IDENTIFIERS_FROM },
        { spec: spec("replaced"), identifier: AUTOMATIC_IDENTIFIERS_FROM + 1 },
        { spec: spec("near/end"), identifier: MAX_IDENTIFIER - 1 }
      ]
    })
    h.connect(true)
    const identifiers: Array<number> = []
    const subscribeAcked = (owner: number, filter: string) => {
      const request = h.subscribe(owner, [spec(filter)])
      const [packet] = h.take() as Array<any>
      identifiers.push(packet.properties.subscriptionIdentifier)
      h.receive({ _tag: "Suback", id: request.id, codes: [1] })
    }
    // "replaced" gets a new identifier: AUTOMATIC_IDENTIFIERS_FROM + 1 is retired (a queued message may name it)
    subscribeAcked(1, "replaced")
    subscribeAcked(2, "b")
    subscribeAcked(3, "c")
    expect(h.errors).toEqual([])
    expect(identifiers).toEqual([MAX_IDENTIFIER, AUTOMATIC_IDENTIFIERS_FROM + 2, AUTOMATIC_IDENTIFIERS_FROM + 3])
    // each routes to its own subscription, the retired one by its filter
    h.receive(publish("b", "to 2", 0, 0, { properties: { subscriptionIdentifiers: [identifiers[1]] } }))
    h.receive(publish("c", "to 3", 0, 0, { properties: { subscriptionIdentifiers: [identifiers[2]] } }))
    h.receive(
      publish("replaced", "to 1", 0, 0, { properties: { subscriptionIdentifiers: [AUTOMATIC_IDENTIFIERS_FROM + 1] } })
    )
    expect(h.errors).toEqual([])
    expect(h.delivered.map((d) => [d.message.text, d.owners])).toEqual([["to 2", [2]], ["to 3", [3]], ["to 1", [1]]])
  })

  it("Session Present 1 in answer to Clean Start is a violation and nothing of the CONNACK takes effect", () => {
    const h = new Harness({ protocolVersion: 5 })
    h.publish(message("t", "waiting", 1))
    const info = h.session.onConnack(
      { _tag: "Connack", sessionPresent: true, reasonCode: 0, properties: {} },
      true,
      h.out
    )
    h.drain()
    expect(info).toBeUndefined()
    expect(h.errors.map((e) => e._tag)).toEqual(["ProtocolError"])
    expect(h.session.connected).toBe(false)
    expect(h.take()).toEqual([])
  })
})
