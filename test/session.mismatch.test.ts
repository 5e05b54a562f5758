/**
 * An acknowledgement a QoS 2 publish cannot take, once its PUBLISH was written, must keep the
 * publish's identifier out of use while the broker's session may hold the QoS 2 flow (as `Outgoing.refuse` does for
 * a written QoS 2 publish, and `mismatch` does for a PUBREC it answers with PUBREL).
 */
import { assert, describe, expect, it } from "@effect/vitest"
import { PublishEntry } from "../src/internal/outgoing.ts"
import * as MqttError from "../src/MqttError.ts"
import { ack, Harness, message } from "./support/sessionHarness.ts"

const lost = new MqttError.ConnectionLostError({ reason: "test" })
const entry = (value: unknown): PublishEntry => {
  assert(value instanceof PublishEntry, `expected a publish entry, got ${String(value)}`)
  return value
}

describe("a mismatched acknowledgement of a written QoS 2 publish", () => {
  const cases = [
    ["a PUBCOMP before the PUBREC (the broker may hold the PUBLISH awaiting PUBREL)", [], "Pubcomp"],
    ["a PUBACK after the PUBREL (the broker may not have read the PUBREL)", ["Pubrec"], "Puback"]
  ] as const
  for (const version of [4, 5] as const) {
    for (const [name, before, wrong] of cases) {
      it(`v${version}: ${name}: the identifier stays out of use on a resumed session, free once the session ends`, () => {
        const h = new Harness({ protocolVersion: version, cleanStart: false })
        h.connect()
        const q2 = entry(h.publish(message("t", "q2", 2, version)))
        h.take()
        for (const tag of before) h.receive(ack(tag, q2.id))
        h.take()
        h.receive(ack(wrong, q2.id))
        expect(q2.error?._tag).toBe("PublishError")
        h.lose(lost)
        h.connect(true)
        // a new QoS 2 PUBLISH under it would be taken by such a broker for a resend, and dropped
        expect(h.session.ids.has(q2.id)).toBe(true)
        h.lose(lost)
        h.connect(false)
        expect(h.session.ids.has(q2.id)).toBe(false)
      })
    }
  }
})
