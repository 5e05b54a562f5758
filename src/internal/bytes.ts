/**
 * Bytes without Node's `Buffer`: what the codec, the framer and the decoder need, on `Uint8Array`,
 * `TextEncoder` and `TextDecoder`, so that the core runs in browsers as on Node.
 *
 * Speed matters here (every PUBLISH goes through `allocate`, `utf8Length`, `writeUtf8` and `readAscii`):
 * - `allocate` hands out small blocks of a shared 8 KiB `ArrayBuffer`, as `Buffer.allocUnsafe` does: a
 *   `new Uint8Array(n)` of more than 64 bytes gets memory of its own outside V8's heap, an order of magnitude
 *   slower. As with `Buffer`, a block that is kept (a QoS 1 publish awaiting its PUBACK) keeps its 8 KiB alive.
 * - Topics and property names are nearly always ASCII: `utf8Length` and `writeUtf8` copy characters in a loop,
 *   faster than a call into `TextEncoder` for short strings, and hand anything else to `TextEncoder`.
 * - `readAscii` uses the bytes' own `latin1Slice` when they have one: Node's sockets give `Buffer`s, whose
 *   native slice is about twice as fast as anything portable on short strings. No `Buffer` is imported or
 *   created for it: in a browser the bytes are plain `Uint8Array`s and `String.fromCharCode` serves.
 */

const encoder = new TextEncoder()
// ignoreBOM: a U+FEFF at the start is text, kept as it appears [MQTT-1.5.4-3], not a byte order mark to drop
const fatal = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true })

/** No bytes. */
export const empty: Uint8Array = new Uint8Array(0)

const POOL_SIZE = 8 * 1024
let pool = new ArrayBuffer(POOL_SIZE)
let poolOffset = 0

/**
 * `size` bytes for a packet about to be written in full: small sizes share a pool (see the module comment),
 * larger ones get their own memory.
 */
export const allocate = (size: number): Uint8Array => {
  // a size that is not a whole number (NaN from a caller's value of the wrong type) would hand out the pool's
  // end and move its offset back to 0, over blocks still in use: refuse it (the encoders turn it into an error)
  if (!(size >= 0 && size === Math.floor(size))) throw new RangeError(`cannot allocate ${size} bytes`)
  if (size >= POOL_SIZE >>> 1) return new Uint8Array(size)
  if (poolOffset + size > POOL_SIZE) {
    pool = new ArrayBuffer(POOL_SIZE)
    poolOffset = 0
  }
  const out = new Uint8Array(pool, poolOffset, size)
  // 8-byte alignment, as Buffer's pool, so that typed views stay fast
  poolOffset = (poolOffset + size + 7) & ~7
  return out
}

/** A copy of `bytes` in memory of its own (never the pool: a copy is usually kept). */
export const copy = (bytes: Uint8Array): Uint8Array => Uint8Array.prototype.slice.call(bytes)

/** Whether two byte arrays hold the same bytes. */
export const equal = (a: Uint8Array, b: Uint8Array): boolean => {
  if (a === b) return true
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

/** `total` bytes made of `parts`, one after the other. */
export const concat = (parts: ReadonlyArray<Uint8Array>, total: number): Uint8Array => {
  const out = new Uint8Array(total)
  let offset = 0
  for (const part of parts) {
    out.set(part, offset)
    offset += part.length
  }
  return out
}

/**
 * `total` bytes made of `parts`, in an array of the same kind as `like`, created as `TypedArray.prototype.slice`
 * creates its copies (through `Symbol.species`): a packet that spans several socket reads is then of the same
 * kind as the others (on Node, a `Buffer`, as the payloads handed to the application always were).
 */
export const concatLike = (like: Uint8Array, parts: ReadonlyArray<Uint8Array>, total: number): Uint8Array => {
  const constructor = like.constructor as
    | { readonly [Symbol.species]?: unknown; readonly allocUnsafe?: unknown }
    | undefined
  const Species = constructor?.[Symbol.species]
  if (Species === Uint8Array || typeof Species !== "function") return concat(parts, total)
  let out: unknown
  try {
    // Node's Buffer: memory that is not zeroed first (every byte is written below), as Buffer.concat takes;
    // zeroing a 1 MB packet cost about as much as copying it
    out = typeof constructor!.allocUnsafe === "function"
      ? (constructor!.allocUnsafe as (length: number) => unknown)(total)
      : new (Species as new(length: number) => unknown)(total)
  } catch {
    return concat(parts, total)
  }
  if (!(out instanceof Uint8Array) || out.length !== total) return concat(parts, total)
  let offset = 0
  for (const part of parts) {
    out.set(part, offset)
    offset += part.length
  }
  return out
}

/** The number of UTF-8 bytes of a string (a lone surrogate counts as U+FFFD, 3 bytes, as `TextEncoder` writes). */
export const utf8Length = (s: string): number => {
  const length = s.length
  for (let i = 0; i < length; i++) {
    if (s.charCodeAt(i) >= 0x80) return i + nonAsciiLength(s, i)
  }
  return length
}

const nonAsciiLength = (s: string, from: number): number => {
  let n = 0
  for (let i = from; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c < 0x80) n += 1
    else if (c < 0x800) n += 2
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      n += 4
      i++
    } else n += 3
  }
  return n
}

/**
 * Writes a string as UTF-8 at `offset` and returns the offset after it. `target` must have room for
 * `utf8Length(s)` bytes from `offset`.
 */
export const writeUtf8 = (target: Uint8Array, offset: number, s: string): number => {
  const length = s.length
  for (let i = 0; i < length; i++) {
    const c = s.charCodeAt(i)
    if (c >= 0x80) return offset + i + encoder.encodeInto(s.slice(i), target.subarray(offset + i)).written
    target[offset + i] = c
  }
  return offset + length
}

/** A string as UTF-8 bytes. Throws a `TypeError` for a value that is not a string. */
export const utf8 = (s: string): Uint8Array => {
  if (typeof s !== "string") throw new TypeError(`expected a string, got ${typeof s}`)
  const out = allocate(utf8Length(s))
  writeUtf8(out, 0, s)
  return out
}

/** `String.prototype.isWellFormed` (ES2024: Node 20, current browsers), where there is one. */
const nativeIsWellFormed: ((this: string) => boolean) | undefined = (String.prototype as {
  readonly isWellFormed?: (this: string) => boolean
}).isWellFormed

/**
 * Whether a string is well-formed UTF-16 (no lone surrogate), so that its UTF-8 form says what it says. MQTT
 * strings must be well-formed UTF-8 [MQTT-1.5.4-1]; `TextEncoder` would silently write U+FFFD instead.
 */
export const isWellFormed = (s: string): boolean => {
  if (nativeIsWellFormed !== undefined) return nativeIsWellFormed.call(s)
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c < 0xd800 || c > 0xdfff) continue
    if (c > 0xdbff || i + 1 >= s.length || (s.charCodeAt(i + 1) & 0xfc00) !== 0xdc00) return false
    i++
  }
  return true
}

/** Whether the bytes are well-formed UTF-8 (no overlong forms, no surrogates, nothing past U+10FFFF). */
export const isUtf8 = (bytes: Uint8Array): boolean => {
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] >= 0x80) return decodeUtf8(bytes, i, bytes.length) !== undefined
  }
  return true
}

/** The UTF-8 text of `data[start..end)`, or `undefined` when it is not well-formed UTF-8. */
export const decodeUtf8 = (data: Uint8Array, start: number, end: number): string | undefined => {
  try {
    return fatal.decode(data.subarray(start, end))
  } catch {
    return undefined
  }
}

interface NativeSlice {
  latin1Slice?(start: number, end: number): string
}

const fromCharCode = String.fromCharCode

/** The text of `data[start..end)`, bytes that the caller knows are all ASCII. */
export const readAscii = (data: Uint8Array, start: number, end: number): string => {
  if ((data as NativeSlice).latin1Slice !== undefined) return (data as NativeSlice).latin1Slice!(start, end)
  if (end - start <= 1024) return fromCharCode.apply(null, data.subarray(start, end) as unknown as Array<number>)
  return fatal.decode(data.subarray(start, end))
}

/** Reads a big-endian 32-bit unsigned integer. */
export const readUint32 = (data: Uint8Array, i: number): number =>
  data[i] * 0x1000000 + ((data[i + 1] << 16) | (data[i + 2] << 8) | data[i + 3])

/** Writes a big-endian 32-bit unsigned integer. */
export const writeUint32 = (target: Uint8Array, i: number, value: number): void => {
  target[i] = value >>> 24
  target[i + 1] = (value >>> 16) & 0xff
  target[i + 2] = (value >>> 8) & 0xff
  target[i + 3] = value & 0xff
}

/** Random bytes drawn ahead, a pool refilled by one call when spent (4 KB: 256 correlation data, 512 client ids). */
const RANDOM_POOL = 4096
let randomPool: Uint8Array | undefined = undefined
let randomTaken = RANDOM_POOL

/**
 * `size` random bytes from the platform's cryptographic generator (Web Crypto, global in browsers
 * and Node), taken from a pool: one `getRandomValues` call costs about 6 µs whatever its size (Node 24), a
 * slice of the pool a tenth of a microsecond (a client identifier per client, correlation data per request).
 * Each byte is handed out once. More than the pool holds is drawn in a call of its own.
 */
export const random = (size: number): Uint8Array => {
  if (size > RANDOM_POOL) return globalThis.crypto.getRandomValues(new Uint8Array(size))
  if (randomTaken + size > RANDOM_POOL) {
    randomPool ??= new Uint8Array(RANDOM_POOL)
    globalThis.crypto.getRandomValues(randomPool)
    randomTaken = 0
  }
  const out = randomPool!.slice(randomTaken, randomTaken + size)
  randomTaken += size
  return out
}

/**
 * A 32-bit hash of `data` (FNV-1a over 32-bit words, then the bytes left): not cryptographic, to tell two payloads
 * apart cheaply (about 2 GB/s on Node 24).
 */
export const hash32 = (data: Uint8Array): number => {
  let h = 0x811c9dc5 ^ data.byteLength
  const words = data.byteLength & ~3
  let i = 0
  if (words > 0) {
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength)
    for (; i < words; i += 4) h = Math.imul(h ^ view.getUint32(i, true), 0x01000193) ^ (h >>> 15)
  }
  for (; i < data.byteLength; i++) h = Math.imul(h ^ data[i], 0x01000193)
  return h >>> 0
}
