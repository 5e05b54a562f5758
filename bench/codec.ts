/**
 * Codec micro-benchmark: the hot paths of the byte layer, this tree against another (a checkout of an earlier
 * commit), in one run.
 *
 * Rows:
 * - `encodePublish` (codec.ts): MQTT 3.1.1 QoS 1 with a 64-byte payload and a 30-character topic; MQTT 5 with
 *   two user properties;
 * - `decode` (decode.ts): acknowledgements with a 2-byte body; PUBLISH QoS 1 (64-byte payload) in MQTT 3.1.1,
 *   MQTT 5, MQTT 5 with two user properties;
 * - `Framer.push` (framer.ts): 64 KiB reads of 94-byte PUBLISH packets whose boundaries do not fall on the reads'
 *   (one packet spans each pair of reads), counted per packet.
 * The inputs are Node `Buffer`s, as Node's sockets give. The rows marked "Uint8Array" give the same bytes as
 * plain `Uint8Array`s, as a browser's WebSocket does (this tree only: the other may not accept them).
 *
 * `BENCH_ONLY=text` keeps the rows whose name contains the text.
 * `BENCH_BASE=/path/to/checkout` names the other tree (its `src/internal/*.ts` are imported); without it only
 * this tree is measured. Each row runs `BENCH_ROUNDS` (default 7) rounds of `BENCH_ITERATIONS` (default
 * 1,000,000) operations per tree, alternating which goes first, after a warm-up, and prints the median
 * nanoseconds per operation, the range, and this/base (below 1 is faster) of the medians and of the minimums (on a
 * busy machine the minimum, the round least disturbed, is the steadier figure).
 *
 * Run with `npm exec -- node bench/codec.ts`. Always exits with 0: it is a report.
 */
import { Buffer } from "node:buffer"
import * as Path from "node:path"
import { performance } from "node:perf_hooks"
import { pathToFileURL } from "node:url"
import * as Codec from "../src/internal/codec.ts"
import * as Decode from "../src/internal/decode.ts"
import * as Framer from "../src/internal/framer.ts"

const envInt = (name: string, fallback: number): number => {
  const value = Number(process.env[name])
  return Number.isFinite(value) && value > 0 ? Math.floor(value) : fallback
}

const ROUNDS = envInt("BENCH_ROUNDS", 7)
const ITERATIONS = envInt("BENCH_ITERATIONS", 1_000_000)
const BASE = process.env.BENCH_BASE
const ONLY = process.env.BENCH_ONLY

interface Tree {
  readonly codec: typeof Codec
  readonly decode: typeof Decode
  readonly framer: typeof Framer
}

const load = async (root: string): Promise<Tree> => {
  const at = (file: string) => pathToFileURL(Path.resolve(root, "src/internal", file)).href
  return {
    codec: await import(at("codec.ts")),
    decode: await import(at("decode.ts")),
    framer: await import(at("framer.ts"))
  }
}

const current: Tree = { codec: Codec, decode: Decode, framer: Framer }
const base: Tree | undefined = BASE === undefined ? undefined : await load(BASE)

// inputs: many distinct buffers, as socket reads give, so that nothing is constant
const SAMPLES = 4096
const payload = Buffer.alloc(64, "x")
const topics = Array.from({ length: 16 }, (_, i) => `bench/1234/lk3j4h5g/q1/topic/${i.toString().padStart(2, "0")}`)
const userProperties = [["app-id", "0001"], ["trace-id", "abc123"]] as const

const inRead = (bytes: Uint8Array): Buffer => {
  const read = Buffer.concat([Buffer.alloc(7), bytes, Buffer.alloc(9)])
  return read.subarray(7, 7 + bytes.length)
}
const plain = (b: Buffer): Uint8Array => new Uint8Array(b)

const ackInputs = Array.from({ length: SAMPLES }, (_, i) => {
  const id = (i % 65535) + 1
  return { header: [0x40, 0x50, 0x70][i % 3], body: inRead(Uint8Array.of(id >> 8, id & 0xff)) }
})

/** Bodies of PUBLISH packets as the encoder writes them (identifier set), inside larger reads. */
const publishInputs = (version: 4 | 5, withProperties: boolean) =>
  Array.from({ length: SAMPLES }, (_, i) => {
    const encoded = Codec.encodePublish(
      version,
      topics[i % 16],
      payload,
      1,
      false,
      withProperties ? { userProperties: [userProperties[0], [userProperties[1][0], `abc${i % 100}`]] } : undefined
    )
    const bytes = Codec.setPublishId(encoded, (i % 65535) + 1)
    const headerLength = bytes[1] < 128 ? 2 : 3
    return { header: bytes[0], body: inRead(bytes.subarray(headerLength)) }
  })

/** 64 KiB reads of whole PUBLISH packets, cut where the 64 KiB fall. */
const framerReads = (() => {
  const packet = Buffer.from(Codec.setPublishId(Codec.encodePublish(4, topics[0], payload, 1, false, undefined), 1))
  const all = Buffer.concat(Array.from({ length: 8 * 1024 * 1024 / packet.length }, () => packet))
  const reads: Array<Buffer> = []
  for (let i = 0; i + 65536 <= all.length; i += 65536) reads.push(all.subarray(i, i + 65536))
  return { reads, packetsPerRead: 65536 / packet.length }
})()

let sink = 0

interface Row {
  readonly name: string
  /** runs ITERATIONS operations with the given tree */
  readonly run: (tree: Tree) => void
  readonly currentOnly?: boolean
}

const encodeRow = (name: string, version: 4 | 5, withProperties: boolean): Row => ({
  name,
  run: ({ codec }) => {
    const properties = withProperties ? { userProperties } : undefined
    for (let n = 0; n < ITERATIONS; n++) {
      const encoded = codec.encodePublish(version, topics[n & 15], payload, 1, false, properties)
      sink += codec.setPublishId(encoded, (n & 0xffff) + 1)[3]
    }
  }
})

const decodeRow = (
  name: string,
  inputs: ReadonlyArray<{ readonly header: number; readonly body: Uint8Array }>,
  version: 4 | 5,
  currentOnly = false
): Row => ({
  name,
  currentOnly,
  run: ({ decode }) => {
    for (let n = 0; n < ITERATIONS; n++) {
      const input = inputs[n & (SAMPLES - 1)]
      const packet = decode.decode(input.header, input.body, version)
      if (packet._tag === "Publish") sink += packet.id + packet.topic.length + packet.payload.length
      else if (packet._tag !== "Violation" && "id" in packet) sink += packet.id
    }
  }
})

const framerRow = (name: string, reads: ReadonlyArray<Uint8Array>, currentOnly = false): Row => ({
  name,
  currentOnly,
  run: ({ framer }) => {
    const f = new framer.Framer(1 << 20)
    const onPacket = (header: number, body: Uint8Array) => {
      sink += header + body.length
    }
    // ITERATIONS packets
    const readsNeeded = Math.ceil(ITERATIONS / framerReads.packetsPerRead)
    for (let n = 0; n < readsNeeded; n++) f.push(reads[n % reads.length] as Buffer, onPacket)
  }
})

const toPlain = <A extends { readonly body: Buffer }>(inputs: ReadonlyArray<A>) =>
  inputs.map((input) => ({ ...input, body: plain(input.body) }))

const v4 = publishInputs(4, false)
const v5 = publishInputs(5, false)
const v5p = publishInputs(5, true)

const rows: Array<Row> = [
  encodeRow("encodePublish, MQTT 3.1.1 QoS 1", 4, false),
  encodeRow("encodePublish, MQTT 5, 2 user properties", 5, true),
  decodeRow("decode PUBACK/PUBREC/PUBCOMP", ackInputs, 5),
  decodeRow("decode PUBLISH QoS 1, MQTT 3.1.1", v4, 4),
  decodeRow("decode PUBLISH QoS 1, MQTT 5", v5, 5),
  decodeRow("decode PUBLISH QoS 1, MQTT 5, 2 user props", v5p, 5),
  framerRow("Framer.push, 64 KiB reads, per packet", framerReads.reads),
  decodeRow("decode PUBLISH MQTT 3.1.1 (Uint8Array)", toPlain(v4), 4, true),
  decodeRow("decode PUBLISH MQTT 5 2 props (Uint8Array)", toPlain(v5p), 5, true),
  framerRow("Framer.push (Uint8Array), per packet", framerReads.reads.map(plain), true)
]

const time = (run: () => void): number => {
  const start = performance.now()
  run()
  return ((performance.now() - start) * 1e6) / ITERATIONS
}
const median = (values: Array<number>) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]
const fmt = (n: number) => n.toFixed(1).padStart(7)
const range = (v: Array<number>) => `${fmt(Math.min(...v)).trim()}-${fmt(Math.max(...v)).trim()}`.padStart(13)

console.log(
  `node ${process.version}, ${ROUNDS} rounds of ${ITERATIONS.toLocaleString("en")} operations per tree` +
    (BASE === undefined ? "" : `; base: ${BASE}`)
)
console.log(
  `${"row".padEnd(44)} ${"this ns".padStart(7)} ${"range".padStart(13)} ${"base ns".padStart(7)} ${
    "range".padStart(13)
  }  this/base (median, min)`
)
for (const row of rows) {
  if (ONLY !== undefined && !row.name.includes(ONLY)) continue
  const other = row.currentOnly === true ? undefined : base
  row.run(current)
  if (other !== undefined) row.run(other)
  const mine: Array<number> = []
  const theirs: Array<number> = []
  for (let r = 0; r < ROUNDS; r++) {
    if (r % 2 === 0 || other === undefined) {
      mine.push(time(() => row.run(current)))
      if (other !== undefined) theirs.push(time(() => row.run(other)))
    } else {
      theirs.push(time(() => row.run(other)))
      mine.push(time(() => row.run(current)))
    }
  }
  const m = median(mine)
  const line = `${row.name.padEnd(44)} ${fmt(m)} ${range(mine)}`
  if (theirs.length === 0) console.log(line)
  else {
    const t = median(theirs)
    const ratio = `${(m / t).toFixed(2)}, ${(Math.min(...mine) / Math.min(...theirs)).toFixed(2)}`
    console.log(`${line} ${fmt(t)} ${range(theirs)}  ${ratio}`)
  }
}
if (sink === 0.5) console.log(sink)
