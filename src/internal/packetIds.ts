/**
 * Packet identifiers of one MQTT session (MQTT 5 section 2.2.1): 1 to 65,535, never handed out twice while the
 * flow that holds one is unfinished. Plain state: callers that find none free wait in the session's own lines.
 */
export class PacketIds {
  /**
   * One bit per identifier, in pages of 1,024 identifiers (128 bytes each) made when one of theirs is taken and
   * dropped when the last is freed: an idle client holds none, one with every identifier in use 8 KiB.
   */
  private pages: Array<Uint32Array | undefined> | undefined = undefined
  /** how many identifiers of each page are in use (both lists made with the first identifier taken) */
  private inPage: Array<number> = []
  private next = 1
  private count = 0

  /** The number of identifiers in use. */
  get size(): number {
    return this.count
  }

  /** Takes a free identifier, or returns 0 when all 65,535 are in use. */
  acquire(): number {
    if (this.count >= 65535) return 0
    let id = this.next
    while (this.has(id)) id = id === 65535 ? 1 : id + 1
    this.mark(id)
    this.next = id === 65535 ? 1 : id + 1
    return id
  }

  /** Marks an identifier in use (a stored session restored with its identifiers). */
  claim(id: number): void {
    if (!this.has(id)) this.mark(id)
  }

  /** Frees an identifier; freeing one not in use does nothing. */
  release(id: number): void {
    if (!this.has(id)) return
    const p = id >>> PAGE_SHIFT
    const pages = this.pages!
    pages[p]![(id >>> 5) & WORD_MASK] &= ~(1 << (id & 31))
    if (--this.inPage[p] === 0) pages[p] = undefined
    this.count--
  }

  /** Whether an identifier is in use. */
  has(id: number): boolean {
    const page = this.pages?.[id >>> PAGE_SHIFT]
    return page !== undefined && (page[(id >>> 5) & WORD_MASK] & (1 << (id & 31))) !== 0
  }

  private mark(id: number): void {
    const p = id >>> PAGE_SHIFT
    if (this.pages === undefined) {
      this.pages = new Array<Uint32Array | undefined>(PAGES).fill(undefined)
      this.inPage = new Array<number>(PAGES).fill(0)
    }
    const page = this.pages[p] ??= new Uint32Array(WORD_MASK + 1)
    page[(id >>> 5) & WORD_MASK] |= 1 << (id & 31)
    this.inPage[p]++
    this.count++
  }
}

/** log2 of the identifiers a page of {@link PacketIds} holds (1,024) */
const PAGE_SHIFT = 10
/** the pages of 1,024 identifiers that cover 0 to 65,535 */
const PAGES = 65536 >>> PAGE_SHIFT
/** a page's 32-bit words: 32, the last index 31 */
const WORD_MASK = (1 << (PAGE_SHIFT - 5)) - 1

/** Something that can leave a {@link Line} before its turn: `queued` is true exactly while it is in line. */
export interface Queued {
  queued: boolean
}

/** A FIFO line with O(1) push, peek and shift; an item that leaves early is skipped when reached. */
export class Line<A extends Queued> {
  private items_: Array<A> = []
  private head = 0
  private live = 0

  /** How many items wait. */
  get size(): number {
    return this.live
  }

  push(item: A): void {
    item.queued = true
    this.items_.push(item)
    this.live++
  }

  /** Puts an item at the front of the line: the next `peek` or `shift` returns it. */
  unshift(item: A): void {
    item.queued = true
    if (this.head > 0) this.items_[--this.head] = item
    else this.items_.unshift(item)
    this.live++
  }

  /**
   * Takes an item out of the line before its turn. Its place is skipped when reached; when such places outnumber
   * the items still in line, they are dropped at once (a line that does not move cannot fill with them).
   */
  remove(item: A): void {
    if (!item.queued) return
    item.queued = false
    this.live--
    const places = this.items_.length - this.head
    if (places > 64 && this.live * 2 < places) {
      this.items_ = this.items_.slice(this.head).filter((i) => i.queued)
      this.head = 0
    }
  }

  /** The first item still in line, left in place. */
  peek(): A | undefined {
    while (this.head < this.items_.length) {
      const item = this.items_[this.head]
      if (item.queued) return item
      this.advance()
    }
    return undefined
  }

  /** Takes the first item still in line. */
  shift(): A | undefined {
    const item = this.peek()
    if (item === undefined) return undefined
    this.advance()
    item.queued = false
    this.live--
    return item
  }

  /** The items still in line, in order (left in place). */
  items(): Array<A> {
    const out: Array<A> = []
    for (let i = this.head; i < this.items_.length; i++) if (this.items_[i].queued) out.push(this.items_[i])
    return out
  }

  /** Empties the line, handing back what was in it, in order. */
  drain(): Array<A> {
    const rest: Array<A> = []
    for (let i = this.head; i < this.items_.length; i++) {
      const item = this.items_[i]
      if (item.queued) {
        item.queued = false
        rest.push(item)
      }
    }
    this.items_ = []
    this.head = 0
    this.live = 0
    return rest
  }

  private advance(): void {
    this.head++
    if (this.head === this.items_.length) {
      this.items_ = []
      this.head = 0
    } else if (this.head > 1024 && this.head * 2 > this.items_.length) {
      this.items_ = this.items_.slice(this.head)
      this.head = 0
    }
  }
}
