/**
 * The byte layer without Node's Buffer (src/internal/bytes.ts), checked against Node's own `Buffer`, `isUtf8` and
 * `String.prototype.isWellFormed` as oracles; and the decoder and the framer given plain `Uint8Array`s (as a
 * browser's WebSocket gives) against the same bytes as `Buffer`s (as Node's sockets give), since the two take
 * different paths for text.
 */
import * as fc from "fast-check"
import { Buffer, isUtf8 } from "node:buffer"
import { describe, expect, it } from "vitest"
import * as Bytes from "../src/internal/bytes.ts"
import * as Codec from "../src/internal/codec.ts"
import { decode } from "../src/internal/decode.ts"
import { Framer } from "../src/internal/framer.ts"
import { contentOf, sameContent } from "../src/internal/output.ts"
import type { PublishProperties } from "../src/MqttMessage.ts"

/** Any string of UTF-16 code units: lone surrogates included. */
const anyString = fc.array(fc.integer({ min: 0, max: 0xffff }), { maxLength: 40 })
  .map((units) => String.fromCharCode(...units))
/** Mostly ASCII, sometimes not, always well-formed. */
const text = fc.oneof(
  fc.string({ unit: "grapheme-ascii", maxLength: 40 }),
  fc.string({ unit: "grapheme", maxLength: 20 }),
  fc.constantFrom("\ufeffbom", "é/€/😀", "a".repeat(300))
)

const plain = (bytes: Uint8Array): Uint8Array => new Uint8Array(bytes)

describe("bytes.ts against Node's Buffer", () => {
  it("utf8Length, utf8 and writeUtf8 give what Buffer gives, for any string (lone surrogates as U+FFFD)", () => {
    fc.assert(
      fc.property(anyString, fc.nat(8), (s, offset) => {
        expect(Bytes.utf8Length(s)).toBe(Buffer.byteLength(s))
        expect([...Bytes.utf8(s)]).toEqual([...Buffer.from(s)])
        const target = new Uint8Array(offset + Bytes.utf8Length(s) + 3).fill(7)
        expect(Bytes.writeUtf8(target, offset, s)).toBe(offset + Buffer.byteLength(s))
        expect([...target.subarray(offset, offset + Buffer.byteLength(s))]).toEqual([...Buffer.from(s)])
        expect([...target.subarray(0, offset)]).toEqual(new Array(offset).fill(7))
        expect(Bytes.isWellFormed(s)).toBe((s as unknown as { isWellFormed(): boolean }).isWellFormed())
      }),
      { numRuns: 2000 }
    )
  })

  it("isUtf8 and decodeUtf8 agree with Node's isUtf8 and Buffer#toString, a leading U+FEFF kept", () => {
    const bytes = fc.oneof(fc.uint8Array({ maxLength: 24 }), text.map((s) => Uint8Array.from(Buffer.from(s))))
    fc.assert(
      fc.property(bytes, (b) => {
        expect(Bytes.isUtf8(b)).toBe(isUtf8(b))
        expect(Bytes.decodeUtf8(b, 0, b.length)).toBe(isUtf8(b) ? Buffer.from(b).toString("utf8") : undefined)
      }),
      { numRuns: 2000 }
    )
    expect(Bytes.decodeUtf8(Uint8Array.of(0xef, 0xbb, 0xbf, 0x61), 0, 4)).toBe("\ufeffa")
    // an encoded surrogate and an overlong form are not UTF-8
    expect(Bytes.isUtf8(Uint8Array.of(0xed, 0xa0, 0x80))).toBe(false)
    expect(Bytes.isUtf8(Uint8Array.of(0xc0, 0xaf))).toBe(false)
  })

  it("readAscii reads the same text from a Buffer (its own latin1Slice) and from a plain Uint8Array", () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary-ascii", maxLength: 2000 }), fc.nat(5), (s, at) => {
        const buffer = Buffer.concat([Buffer.alloc(at), Buffer.from(s), Buffer.alloc(3)])
        expect(Bytes.readAscii(buffer, at, at + s.length)).toBe(s)
        expect(Bytes.readAscii(plain(buffer), at, at + s.length)).toBe(s)
      }),
      { numRuns: 500 }
    )
  })

  it("allocate hands out blocks that do not overlap; concatLike makes a Buffer of Buffers and never warns", () => {
    const blocks = Array.from({ length: 2000 }, (_, i) => Bytes.allocate(1 + (i % 300)))
    blocks.forEach((block, i) => block.fill(i & 0xff))
    blocks.forEach((block, i) => expect(block.every((b) => b === (i & 0xff))).toBe(true))
    expect(Bytes.allocate(5000).byteOffset).toBe(0)
    const warnings: Array<string> = []
    const onWarning = (warning: Error) => warnings.push(warning.name)
    process.on("warning", onWarning)
    try {
      const joined = Bytes.concatLike(Buffer.from("ab"), [Buffer.from("ab"), Uint8Array.of(0x63)], 3)
      expect(Buffer.isBuffer(joined)).toBe(true)
      expect(Buffer.from(joined).toString()).toBe("abc")
      const plainJoined = Bytes.concatLike(Uint8Array.of(1), [Uint8Array.of(1), Uint8Array.of(2)], 2)
      expect(plainJoined.constructor).toBe(Uint8Array)
      expect([...plainJoined]).toEqual([1, 2])
    } finally {
      process.off("warning", onWarning)
    }
    expect(warnings).toEqual([])
  })

  it("readUint32 and writeUint32 round-trip every 32-bit value as Buffer writes it", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffffffff }), (n) => {
        const ours = new Uint8Array(4)
        Bytes.writeUint32(ours, 0, n)
        const theirs = Buffer.alloc(4)
        theirs.writeUInt32BE(n)
        expect([...ours]).toEqual([...theirs])
        expect(Bytes.readUint32(ours, 0)).toBe(n)
      })
    )
  })
})

/** A topic name the encoder accepts: non-empty, no wildcard, no U+0000, well-formed. */
const topic = text.filter((s) => s !== "" && !/[+#\u0000]/.test(s))
const userProperties = fc.array(
  fc.tuple(text.filter((s) => !s.includes("\u0000")), text.filter((s) => !s.includes("\u0000"))),
  { maxLength: 3 }
)

describe("the decoder and the framer on plain Uint8Arrays, as in a browser", () => {
  it("a PUBLISH decodes the same from a plain Uint8Array as from a Buffer, and gives what was encoded", () => {
    fc.assert(
      fc.property(
        fc.constantFrom(4 as const, 5 as const),
        topic,
        fc.uint8Array({ maxLength: 64 }),
        fc.constantFrom(0, 1, 2),
        userProperties,
        (version, name, payload, qos, pairs) => {
          const properties: PublishProperties | undefined = version === 5 && pairs.length > 0
            ? { userProperties: pairs }
            : undefined
          const publish = Codec.encodePublish(version, name, payload, qos, false, properties)
          const encoded = qos === 0 ? publish.bytes : Codec.setPublishId(publish, 7)
          const packets: Array<{ readonly header: number; readonly body: Uint8Array }> = []
          new Framer(1 << 20).push(Buffer.from(encoded), (header, body) => packets.push({ header, body }))
          expect(packets.length).toBe(1)
          const fromBuffer = decode(packets[0].header, packets[0].body, version)
          const fromPlain = decode(packets[0].header, plain(packets[0].body), version)
          expect(fromBuffer._tag).toBe("Publish")
          expect(fromPlain).toEqual({ ...fromBuffer, payload: fromPlain._tag === "Publish" ? fromPlain.payload : 0 })
          if (fromPlain._tag !== "Publish") return
          expect([fromPlain.topic, [...fromPlain.payload], fromPlain.qos]).toEqual([name, [...payload], qos])
          expect(fromPlain.properties?.userProperties ?? []).toEqual(pairs.length > 0 && version === 5 ? pairs : [])
        }
      ),
      { numRuns: 1000 }
    )
  })

  it("a PUBLISH with a payload left separate (from SEPARATE_PAYLOAD bytes) decodes as one written in one piece", () => {
    fc.assert(
      fc.property(
        fc.constantFrom(4 as const, 5 as const),
        fc.integer({ min: Codec.SEPARATE_PAYLOAD - 2, max: Codec.SEPARATE_PAYLOAD * 40 }),
        fc.constantFrom(0, 1, 2),
        (version, length, qos) => {
          const payload = new Uint8Array(length).map((_, i) => i * 7)
          const publish = Codec.encodePublish(version, "a/b", payload, qos, false, undefined)
          if (qos > 0) Codec.setPublishId(publish, 300)
          const chunks: Array<Uint8Array> = []
          Codec.pushPublish(chunks, publish)
          expect(chunks.length).toBe(length >= Codec.SEPARATE_PAYLOAD ? 2 : 1)
          expect(chunks.at(-1) === payload).toBe(length >= Codec.SEPARATE_PAYLOAD)
          const whole = Codec.publishPacket(publish)
          expect(whole.length).toBe(publish.size)
          expect(Buffer.concat(chunks).equals(Buffer.from(whole))).toBe(true)
          const packets: Array<{ readonly header: number; readonly body: Uint8Array }> = []
          new Framer(1 << 24).push(Buffer.from(whole), (header, body) => packets.push({ header, body }))
          expect(packets.length).toBe(1)
          const decoded = decode(packets[0].header, packets[0].body, version)
          if (decoded._tag !== "Publish") return expect(decoded._tag).toBe("Publish")
          expect([decoded.topic, decoded.qos, decoded.id, Buffer.from(decoded.payload).equals(payload)])
            .toEqual(["a/b", qos, qos > 0 ? 300 : 0, true])
        }
      ),
      { numRuns: 100 }
    )
  })

  it("the framer gives the same packets however the bytes are split, and of the kind of the reads", () => {
    const packets = Array.from(
      { length: 30 },
      (_, i) =>
        Codec.setPublishId(Codec.encodePublish(4, `t/${i}`, new Uint8Array(i * 37).fill(i), 1, false, undefined), i + 1)
    )
    const all = Buffer.concat(packets)
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.integer({ min: 1, max: all.length - 1 }), { maxLength: 12 }),
        fc.boolean(),
        (cuts, asBuffers) => {
          const points = [0, ...[...cuts].sort((a, b) => a - b), all.length]
          const seen: Array<{ readonly header: number; readonly body: Uint8Array }> = []
          const framer = new Framer(1 << 20)
          for (let i = 0; i + 1 < points.length; i++) {
            const read = all.subarray(points[i], points[i + 1])
            expect(framer.push(asBuffers ? read : plain(read), (header, body) => seen.push({ header, body })))
              .toBeUndefined()
          }
          // the fixed header is its first byte and the Remaining Length (one byte while the packet is under 128)
          const fixedHeaderLength = (p: Uint8Array) => p[1] < 0x80 ? 2 : p[2] < 0x80 ? 3 : 4
          expect(seen.map(({ body, header }) => `${header}:${Buffer.from(body).toString("hex")}`)).toEqual(
            packets.map((p) => `${p[0]}:${Buffer.from(p.subarray(fixedHeaderLength(p))).toString("hex")}`)
          )
          expect(seen.every(({ body }) => Buffer.isBuffer(body) === asBuffers)).toBe(true)
        }
      ),
      { numRuns: 500 }
    )
  })

  it("a packet arriving in many reads is copied once, whatever its first read holds (1 to 5 bytes of its header, or more)", () => {
    // 1 MB in reads of 1,460 bytes (a TCP segment): a header read apart from the body used to copy everything
    // buffered at every read, 360 MB for this packet
    const packet = Codec.publishPacket(
      Codec.encodePublish(4, "big/one", new Uint8Array(1 << 20).fill(7), 0, false, undefined)
    )
    const set = Uint8Array.prototype.set
    for (const first of [1, 2, 3, 4, 5, 6, 1460]) {
      let copied = 0
      Uint8Array.prototype.set = function(this: Uint8Array, array: ArrayLike<number>, offset?: number) {
        copied += array.length
        return set.call(this, array, offset)
      }
      const seen: Array<Uint8Array> = []
      try {
        const framer = new Framer(1 << 24)
        const cuts = [0, first]
        while (cuts[cuts.length - 1] < packet.length) cuts.push(Math.min(packet.length, cuts[cuts.length - 1] + 1460))
        for (let i = 0; i + 1 < cuts.length; i++) {
          expect(framer.push(packet.subarray(cuts[i], cuts[i + 1]), (_header, body) => seen.push(body))).toBeUndefined()
        }
      } finally {
        // the spy was an own property of Uint8Array.prototype: the inherited `set` again
        delete (Uint8Array.prototype as { set?: unknown }).set
      }
      expect(seen.length).toBe(1)
      // the fixed header: the first byte and a Remaining Length of 3 bytes
      expect(seen[0].length).toBe(packet.length - 4)
      // after the topic, the payload
      expect(seen[0].subarray(2 + "big/one".length).every((b) => b === 7)).toBe(true)
      // the packet once, and at most the 5 bytes of its header
      expect(copied).toBeLessThanOrEqual(packet.length + 5)
    }
  })
})

describe("the encoder's strings", () => {
  it("a lone surrogate in a property or a CONNECT string is refused, not sent as U+FFFD", () => {
    expect(() => Codec.encodePublish(5, "t", new Uint8Array(0), 0, false, { userProperties: [["k", "\ud800"]] }))
      .toThrow("not well-formed UTF-16")
    expect(() => Codec.encodeSubscribe(5, 1, [{ topic: "a", qos: 0 }], 0, [["\udc00", "v"]]))
      .toThrow("not well-formed UTF-16")
    expect(() => Codec.encodeAuth(0x19, "\ud83d", undefined)).toThrow("not well-formed UTF-16")
    // a surrogate pair is well-formed
    expect(Codec.encodePublish(5, "t", new Uint8Array(0), 0, false, { userProperties: [["k", "😀"]] }).bytes.length)
      .toBeGreaterThan(0)
  })
})

describe("the encoder's variable byte integers", () => {
  it("a Subscription Identifier over 268,435,455 is refused, not written with a byte left out [MQTT-1.5.5-1]", () => {
    const subscribe = (identifier: number) =>
      Codec.encodeSubscribe(5, 1, [{ topic: "a", qos: 0 }], identifier, undefined)
    // the largest: four bytes, ff ff ff 7f
    expect(Buffer.from(subscribe(268_435_455)).toString("hex")).toContain("0bffffff7f")
    for (const identifier of [268_435_456, 2 ** 32, 1.5]) {
      expect(() => subscribe(identifier)).toThrow("a variable byte integer must be a whole number from 0 to 268435455")
    }
  })
})

describe("random", () => {
  it("hands out each byte of its pool once, across refills, in fresh arrays of the size asked", () => {
    const seen = new Set<string>()
    const sizes = [1, 8, 16, 4096, 3, 16]
    let total = 0
    let sixteens = 0
    for (let i = 0; i < 2000; i++) {
      const size = sizes[i % sizes.length]
      const bytes = Bytes.random(size)
      expect(bytes.byteLength).toBe(size)
      // a copy, not a view of the pool: the next refill does not change what was handed out
      expect(bytes.buffer.byteLength).toBe(size)
      total += size
      if (size === 16) {
        sixteens++
        seen.add(Buffer.from(bytes).toString("hex"))
      }
    }
    // 16 random bytes repeat with probability 2^-128: a repeat means the pool handed out the same bytes twice
    expect(seen.size).toBe(sixteens)
    expect(total).toBeGreaterThan(4096 * 100)
  })
})

describe("contentOf (what tells a resend from another message under its identifier)", () => {
  it("tells payloads apart by topic, size and bytes, within a bounded read of a large payload", () => {
    for (const size of [0, 1, 7, 64, 1024, 1025, 4096, 1_000_000]) {
      const a = new Uint8Array(size).fill(7)
      const same = contentOf("t", a.slice())
      expect(sameContent(contentOf("t", a), same), `size ${size}`).toBe(true)
      expect(sameContent(contentOf("u", a), same), `size ${size}`).toBe(false)
      if (size === 0) continue
      // a byte changed at the start, in the middle, at the end: another message
      // (over 1 KB, a third in: the middle is outside the fingerprint's windows)
      for (const at of [0, size > 1024 ? Math.floor(size / 3) : Math.floor(size / 2), size - 1]) {
        const b = a.slice()
        b[at] ^= 1
        expect(sameContent(contentOf("t", b), same), `size ${size}, byte ${at}`).toBe(false)
      }
      expect(sameContent(contentOf("t", new Uint8Array(size + 1).fill(7)), same)).toBe(false)
    }
  })
})
