import * as Bytes from "./bytes.ts"

/**
 * Splits the bytes of a connection into MQTT packets.
 *
 * The fixed header is read here, before the packet's bytes are buffered: a packet larger than the client's
 * Maximum Packet Size is refused as soon as its header arrives, whatever length it declares. A packet is
 * copied out only when it spans several reads; the others are handed on as views of the read they came in.
 */
export class Framer {
  private parts: Array<Uint8Array> = []
  private buffered = 0
  /** the buffered packet's whole size once its fixed header has arrived (0 until then) */
  private total = 0
  private readonly maximumPacketSize: number

  constructor(maximumPacketSize: number) {
    this.maximumPacketSize = maximumPacketSize
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
    if (this.buffered > 0) {
      this.parts.push(chunk)
      this.buffered += chunk.length
      // wait for the rest of a large packet without copying what arrived so far
      const needed = this.needed()
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
      const total = this.check(header)
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
      if (typeof needed !== "number") return needed
    }
    return undefined
  }

  /**
   * The bytes the buffered packet needs in all, once its header is known: read once, from at most its first 5
   * bytes, so that a packet arriving in many reads costs time in proportion to its size (a header split from its
   * body used to copy everything buffered at each read).
   */
  private needed(): number | FrameError {
    if (this.total > 0) return this.total
    const header = readHeader(this.head(), 0)
    if (header === undefined) return Number.MAX_SAFE_INTEGER
    if (typeof header === "string") return { reason: header, reasonCode: 0x81 }
    const total = this.check(header)
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

  /** The whole size of a packet from its header, or why it is refused. */
  private check(header: { readonly headerLength: number; readonly remaining: number }): number | FrameError {
    const total = header.headerLength + header.remaining
    if (total > this.maximumPacketSize) {
      return {
        reason: `a packet of ${total} bytes, over the client's Maximum Packet Size of ${this.maximumPacketSize}`,
        reasonCode: 0x95
      }
    }
    return total
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
