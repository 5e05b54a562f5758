/**
 * Faults found by test/session.adversarial.test.ts (helper h-core), as plain unit tests. Each fails on the code as
 * it stands and states the behaviour the spec / ARCHITECTURE.md asks for.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Journal from "../src/internal/journal.ts"
import * as MqttError from "../src/MqttError.ts"
import { Harness, publish, spec } from "./support/sessionHarness.ts"

const lost = new MqttError.ConnectionLostError({ reason: "test" })
const cmds = (h: Harness) => (h.take() as Array<any>).map((p) => `${p.cmd} ${p.messageId}`)

describe("session faults", () => {
  for (const version of [4, 5] as const) {
    // MQTT-4.6.0-3: PUBREC packets in the order the QoS 2 PUBLISH packets were received. On the resumed
    // connection the broker resends 1 then 2 [MQTT-4.4.0-1]; 1 was taken and its PUBREC sent on the last
    // connection (the broker never read it), so it is answered from awaitingRelease via `Inbound.answer`, which
    // queues the answer at the END of the line: behind record 2, which arrived on the earlier connection but was
    // resent AFTER 1 on this one. PUBREC 1 then waits for the consumer of 2 and leaves after PUBREC 2.
    it(`v${version}: the answer to a resend waits only behind what the broker sent before it on this connection`, () => {
      const h = new Harness({ protocolVersion: version, cleanStart: false })
      h.connect(false)
      h.receive(publish("t", "A", 2, 1))
      h.takeAll()
      h.receive(publish("t", "B", 2, 2))
      expect(cmds(h)).toEqual(["pubrec 1"])
      h.lose(lost)
      h.connect(true)
      h.receive(publish("t", "A", 2, 1, { dup: true }))
      h.receive(publish("t", "B", 2, 2, { dup: true }))
      // expected: PUBREC 1 at once (nothing the broker sent before it on this connection is unacknowledged)
      expect(cmds(h)).toEqual(["pubrec 1"])
      h.takeAll()
      expect(cmds(h)).toEqual(["pubrec 2"])
    })

    // The same root cause after a restart from a durable store: the taken message's identifier is restored in
    // awaitingRelease (journaled `a`), its PUBREC never sent; on the second resumed connection its answer goes
    // behind messages of the first one.
    it(`v${version}: after a restart from the store, answers keep the broker's resend order on every connection`, () => {
      const image = Journal.emptyImage()
      const h1 = new Harness({ protocolVersion: version, cleanStart: false })
      h1.out.journal = []
      h1.connect(false)
      h1.subscribe(0, [spec("t", 2)])
      h1.receive({ _tag: "Suback", id: 1, codes: [2] })
      h1.receive(publish("t", "A", 2, 1))
      h1.receive(publish("t", "B", 2, 2))
      h1.receive(publish("t", "C", 2, 3))
      const [, b] = h1.delivered.splice(0)
      h1.session.settled(b.record!, h1.out) // B taken first: journaled as delivered, PUBREC held behind A
      h1.drain()
      Journal.apply(image, h1.out.journal!.splice(0))
      expect(cmds(h1)).toEqual(["subscribe 1"])
      // the process stops; a new one restores the session
      const h = new Harness({ protocolVersion: version, cleanStart: false })
      h.session.restore(image)
      h.connect(true)
      h.receive(publish("t", "A", 2, 1, { dup: true }))
      h.receive(publish("t", "B", 2, 2, { dup: true }))
      h.receive(publish("t", "C", 2, 3, { dup: true }))
      expect(cmds(h)).toEqual([]) // the answer to B waits behind A: right on this connection
      h.lose(lost)
      h.connect(true)
      h.receive(publish("t", "A", 2, 1, { dup: true }))
      h.receive(publish("t", "B", 2, 2, { dup: true }))
      h.receive(publish("t", "C", 2, 3, { dup: true }))
      h.takeAll()
      // expected: A, B, C in the order of their PUBLISH packets on this connection
      expect(cmds(h)).toEqual(["pubrec 1", "pubrec 2", "pubrec 3"])
    })
  }

  // session.ts onPacket: "Once the client closed, none is acted on". onConnack has no such guard, and the
  // supervisor can hand it a CONNACK after close ("the client closed while this connection was made"): the closed
  // session connects again, writes a restore (Session Present 0) or acknowledgements (Session Present 1), and
  // journals an emptied subscription set.
  it("a CONNACK after close acts on nothing: nothing is written, the session stays closed", () => {
    const h = new Harness({ protocolVersion: 5, cleanStart: false })
    h.out.journal = []
    h.connect(false)
    h.subscribe(0, [spec("a/b", 1)])
    h.receive({ _tag: "Suback", id: 1, codes: [1] })
    h.receive(publish("a/b", "m", 2, 7))
    h.lose(lost)
    h.takeAll()
    h.take()
    h.session.close(new MqttError.ConnectionLostError({ reason: "closed" }), h.out)
    h.drain()
    h.out.journal!.length = 0
    h.connect(false)
    expect(h.session.connected).toBe(false)
    expect(cmds(h)).toEqual([])
    expect(h.out.journal).toEqual([])
  })

  // MQTT-4.3.3-10 (MQTT 5; 4.3.3 Method B in 3.1.1): until PUBREL, a resend of a QoS 2 PUBLISH is answered with
  // PUBREC and must not cause a duplicate delivery. Under manual acknowledgement ARCHITECTURE.md chooses otherwise on
  // purpose (at-least-once processing): a message handed to the application and not yet acknowledged (its handler
  // failed, or still runs) is delivered again on the broker's resend (`Inbound.admit`, DUP branch), or a failed
  // message would hold back every later acknowledgement for good. This states that choice.
  it("manual acknowledgement: a QoS 2 message handed and not yet acknowledged is delivered again on a resend (documented)", () => {
    const h = new Harness({ protocolVersion: 5, cleanStart: false })
    h.connect(false)
    h.receive(publish("t", "A", 2, 1))
    const [d] = h.delivered.splice(0)
    d.record!.queued-- // handed to the handler, which still runs (no acknowledgement yet)
    h.lose(lost)
    h.connect(true)
    h.receive(publish("t", "A", 2, 1, { dup: true }))
    expect(h.delivered.length).toBe(1)
  })
})
