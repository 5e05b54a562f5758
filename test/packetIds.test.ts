/**
 * Packet identifiers (MQTT 5 section 2.2.1) against a model: a `Set` of the identifiers in use. The identifiers are
 * held in pages made on first use and dropped when emptied; random runs of acquire, claim and release cross the
 * pages' edges, empty pages and fill them again.
 */
import { assert, describe, it } from "@effect/vitest"
import * as fc from "fast-check"
import { PacketIds } from "../src/internal/packetIds.ts"

type Step =
  | { readonly _tag: "Acquire"; readonly n: number }
  | { readonly _tag: "Claim"; readonly id: number }
  | { readonly _tag: "Release"; readonly pick: number }
  | { readonly _tag: "ReleaseAny"; readonly id: number }

/** identifiers near the pages' edges (1,024 apart) and the range's ends */
const nearEdges = fc.oneof(
  fc.integer({ min: 1, max: 65535 }),
  fc.integer({ min: 0, max: 64 }).chain((page) => fc.integer({ min: page * 1024 - 2, max: page * 1024 + 2 }))
    .map((id) => Math.min(65535, Math.max(1, id)))
)

const step: fc.Arbitrary<Step> = fc.oneof(
  fc.record({ _tag: fc.constant("Acquire" as const), n: fc.integer({ min: 1, max: 3000 }) }),
  fc.record({ _tag: fc.constant("Claim" as const), id: nearEdges }),
  fc.record({ _tag: fc.constant("Release" as const), pick: fc.nat() }),
  fc.record({ _tag: fc.constant("ReleaseAny" as const), id: nearEdges })
)

describe("PacketIds", () => {
  it("hands out each identifier once while it is in use, from 1 to 65,535, as a set would", () => {
    fc.assert(
      fc.property(fc.array(step, { maxLength: 60 }), (steps) => {
        const ids = new PacketIds()
        const model = new Set<number>()
        for (const s of steps) {
          if (s._tag === "Acquire") {
            for (let i = 0; i < s.n; i++) {
              const id = ids.acquire()
              if (model.size === 65535) {
                assert.strictEqual(id, 0)
                break
              }
              assert.isTrue(id >= 1 && id <= 65535, `identifier ${id} out of range`)
              assert.isFalse(model.has(id), `identifier ${id} handed out twice`)
              model.add(id)
            }
          } else if (s._tag === "Claim") {
            ids.claim(s.id)
            model.add(s.id)
          } else {
            const inUse = [...model]
            const id = s._tag === "Release" ? (inUse.length === 0 ? 1 : inUse[s.pick % inUse.length]) : s.id
            ids.release(id)
            model.delete(id)
          }
          assert.strictEqual(ids.size, model.size)
        }
        const wrong: Array<number> = []
        for (let id = 1; id <= 65535; id++) if (ids.has(id) !== model.has(id)) wrong.push(id)
        assert.deepStrictEqual(wrong, [])
      }),
      { numRuns: 200 }
    )
  })

  it("gives 0 when all 65,535 are in use, and the one freed next", () => {
    const ids = new PacketIds()
    for (let i = 1; i <= 65535; i++) assert.strictEqual(ids.acquire(), i)
    assert.strictEqual(ids.acquire(), 0)
    ids.release(40_000)
    assert.strictEqual(ids.acquire(), 40_000)
    assert.strictEqual(ids.acquire(), 0)
    // emptied pages are dropped and made again
    for (let i = 1; i <= 65535; i++) ids.release(i)
    assert.strictEqual(ids.size, 0)
    assert.isFalse(ids.has(1))
    const again = ids.acquire()
    assert.isTrue(again >= 1 && ids.has(again) && ids.size === 1)
  })
})
