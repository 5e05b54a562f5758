import * as Bytes from "./bytes.ts"

/**
 * Splits the bytes of a connection into MQTT packets.
 *
 * The fixed header is read here, before the packet's bytes are buffered: a packet larger than the client's
 * Maximum Packet Size is refused as soon as its header arrives, whatever length it declares. A packet is
 * copied out only when it spans several reads; the others are handed on as views of the read they came in.
 *
 * Given `onOversized` (MQTT 3.1/3.1.1, where the broker cannot be told the limit), a PUBLISH over the limit is
 * passed over instead of refused: only its fixed header and the start of its variable header (the topic and the
 * packet identifier, at most 65,541 bytes) are kept, the rest is counted off as it arrives, and `onOversized` gets
 * what was kept once the packet's last byte has gone by. Memory stays flat whatever length the packet declares.
 */
export class Framer {
  private parts: Array<Uint8Array> = []
  private buffered = 0
  /** the buffered packet's whole size once its fixed header has arrived (0 until then) */
  private total = 0
  private readonly maximumPacketSize: number
  private readonly onOversized: OversizedHandler | undefined
  /** the oversized PUBLISH being passed over */
  private skip: Skip | undefined = undefined

  constructor(maximumPacketSize: number, onOversized?: OversizedHandler) {
    this.maximumPacketSize = maximumPacketSize
    this.onOversized = onOversized
  }

  /**
   * Adds bytes and calls `onPacket` with each complete packet (its first byte and its body). Returns an
   * error instead when the bytes cannot be a packet or a packet is too large.
   */
  push(chunk: Uint8Array, onPacket: (header: number, body: Uint8Array) => void): FrameError | undefined {
    return this.frame(chunk, (bytes, start, bodyStart, end) => onPacket(bytes[start], bytes.subarray(bodyStart, end)))
  }

  /**
   * Adds bytes and calls `onPacket` with each complete packet, as where it lies: `bytes[start]` is its first byte,
   * `bodyStart` where its body starts, `end` where it ends (no view is made: the caller makes the one it needs).
   * Returns an error instead when the bytes cannot be a packet or a packet is too large.
   */
  frame(
    chunk: Uint8Array,
    onPacket: (bytes: Uint8Array, start: number, bodyStart: number, end: number) => void
  ): FrameError | undefined {
    let offset = 0
    if (this.skip !== undefined) {
      offset = this.passOver(chunk, 0)
      if (this.skip !== undefined) return undefined
    } else if (this.buffered > 0) {
      this.parts.push(chunk)
      this.buffered += chunk.length
      // wait for the rest of a large packet without copying what arrived so far
      const needed = this.needed()
      if (needed === PASS_OVER) {
        // the header spanned reads: what came before this read (under 5 bytes) is the packet's, then this read
        const parts = this.parts
        this.parts = []
        this.buffered = 0
        this.total = 0
        for (let i = 0; i < parts.length - 1; i++) this.passOver(parts[i], 0)
        offset = this.passOver(chunk, 0)
        if (this.skip !== undefined) return undefined
        return this.frame(chunk.subarray(offset), onPacket)
      }
      if (typeof needed !== "number") return needed
      if (this.buffered < needed) return undefined
      // only the packet that spans reads is copied; the rest of this read is framed where it lies
      offset = needed - (this.buffered - chunk.length)
      this.parts[this.parts.length - 1] = chunk.subarray(0, offset)
      const packet = Bytes.concatLike(chunk, this.parts, needed)
      this.parts = []
      this.buffered = 0
      this.total = 0
      onPacket(packet, 0, headerLengthOf(packet), needed)
    }
    const data = chunk
    while (offset < data.length) {
      const header = readHeader(data, offset)
      if (header === undefined) break
      if (typeof header === "string") return { reason: header, reasonCode: 0x81 }
      const total = this.check(data[offset], header)
      if (total === PASS_OVER) {
        offset = this.passOver(data, offset)
        continue
      }
      if (typeof total !== "number") return total
      if (offset + total > data.length) break
      onPacket(data, offset, offset + header.headerLength, offset + total)
      offset += total
    }
    if (offset < data.length) {
      this.parts = [data.subarray(offset)]
      this.total = 0
      this.buffered = data.length - offset
      const needed = this.needed()
      if (needed === PASS_OVER) {
        // not reached (a header that did not end in the loop does not end here), kept whole all the same
        this.parts = []
        this.buffered = 0
        this.passOver(data, offset)
      } else if (typeof needed !== "number") return needed
    }
    return undefined
  }

  /**
   * The bytes the buffered packet needs in all, once its header is known: read once, from at most its first 5
   * bytes, so that a packet arriving in many reads costs time in proportion to its size (a header split from its
   * body used to copy everything buffered at each read).
   */
  private needed(): number | FrameError | typeof PASS_OVER {
    if (this.total > 0) return this.total
    const head = this.head()
    const header = readHeader(head, 0)
    if (header === undefined) return Number.MAX_SAFE_INTEGER
    if (typeof header === "string") return { reason: header, reasonCode: 0x81 }
    const total = this.check(head[0], header)
    if (typeof total === "number") this.total = total
    return total
  }

  /** The first bytes buffered, up to the longest fixed header (5 bytes), in one array. */
  private head(): Uint8Array {
    const first = this.parts[0]
    if (first.length >= 5 || this.parts.length === 1) return first
    const head = new Uint8Array(Math.min(5, this.buffered))
    let filled = 0
    for (let i = 0; filled < head.length; i++) {
      const part = this.parts[i].subarray(0, head.length - filled)
      head.set(part, filled)
      filled += part.length
    }
    return head
  }

  /**
   * The whole size of a packet from its header, or why it is refused, or `PASS_OVER` for an oversized PUBLISH to be
   * passed over (its pass begins).
   */
  private check(
    first: number,
    header: { readonly headerLength: number; readonly remaining: number }
  ): number | FrameError | typeof PASS_OVER {
    const total = header.headerLength + header.remaining
    if (total > this.maximumPacketSize) {
      if (this.onOversized !== undefined && first >> 4 === 3) {
        this.skip = new Skip(total, header.headerLength)
        return PASS_OVER
      }
      return {
        reason: `a packet of ${total} bytes, over the client's Maximum Packet Size of ${this.maximumPacketSize}`,
        reasonCode: 0x95
      }
    }
    return total
  }

  /**
   * Passes over the bytes of the oversized PUBLISH from `offset`, keeping those up to its packet identifier; returns
   * where its bytes end in `chunk` (the chunk's length while more are due).
   */
  private passOver(chunk: Uint8Array, offset: number): number {
    const skip = this.skip!
    const end = offset + Math.min(chunk.length - offset, skip.total - skip.seen)
    skip.keep(chunk, offset, end)
    skip.seen += end - offset
    if (skip.seen === skip.total) {
      this.skip = undefined
      this.onOversized!(skip.kept(), skip.headerLength, skip.total)
    }
    return end
  }
}

/** What the framer tells of a PUBLISH it passed over: its first bytes (up to its packet identifier) and its size. */
export type OversizedHandler = (head: Uint8Array, headerLength: number, total: number) => void

const PASS_OVER = "pass over"

/** An oversized PUBLISH on its way past: the bytes of its headers are kept, up to the packet identifier. */
class Skip {
  readonly total: number
  readonly headerLength: number
  seen = 0
  private readonly head: Uint8Array
  private filled = 0
  /** the bytes to keep: the fixed header and the topic's length until that is known, then up to the identifier */
  private need: number
  private sized = false

  constructor(total: number, headerLength: number) {
    this.total = total
    this.headerLength = headerLength
    // the fixed header, the topic (2 + up to 65,535 bytes) and the packet identifier
    this.head = new Uint8Array(Math.min(total, headerLength + 2 + 65_535 + 2))
    this.need = Math.min(total, headerLength + 2)
  }

  /** Keeps what is still needed of `chunk[start..end)`. */
  keep(chunk: Uint8Array, start: number, end: number): void {
    let at = start
    while (at < end && this.filled < this.need) {
      const n = Math.min(end - at, this.need - this.filled)
      this.head.set(chunk.subarray(at, at + n), this.filled)
      this.filled += n
      at += n
      if (this.filled === this.need && !this.sized) {
        this.sized = true
        const h = this.headerLength
        const topicLength = (this.head[h] << 8) | this.head[h + 1]
        const qos = (this.head[0] >> 1) & 3
        this.need = Math.min(this.total, this.head.length, h + 2 + topicLength + (qos > 0 ? 2 : 0))
      }
    }
  }

  /** The bytes kept. */
  kept(): Uint8Array {
    return this.head.subarray(0, this.filled)
  }
}

/** Why the bytes from the broker cannot be read: the MQTT 5 reason code for the DISCONNECT. */
export interface FrameError {
  readonly reason: string
  readonly reasonCode: number
}

/** Reads a fixed header: undefined when incomplete, a string when malformed. */
const readHeader = (
  data: Uint8Array,
  offset: number
): { readonly headerLength: number; readonly remaining: number } | string | undefined => {
  let remaining = 0
  let multiplier = 1
  for (let i = 1; i <= 4; i++) {
    if (offset + i >= data.length) return undefined
    const byte = data[offset + i]
    remaining += (byte & 0x7f) * multiplier
    if ((byte & 0x80) === 0) {
      // a last byte of 0 after a continuation byte adds nothing: MQTT 5 [MQTT-1.5.5-1] wants the shortest form,
      // which is also the only one MQTT 3.1.1's encoding algorithm produces
      if (byte === 0 && i > 1) return "a Remaining Length not in its shortest form"
      return { headerLength: i + 1, remaining }
    }
    multiplier *= 128
  }
  return "a Remaining Length longer than four bytes"
}

/** The length of the fixed header of a packet known to be complete and well-formed. */
const headerLengthOf = (packet: Uint8Array): number => {
  let i = 1
  while (i < 4 && (packet[i] & 0x80) !== 0) i++
  return i + 1
}
