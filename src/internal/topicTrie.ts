/**
 * A set of topic filters, each with a value, that finds the filters a topic matches by walking the topic's
 * levels once: the cost of a match grows with the topic's depth and the number of matching filters, not with
 * the number of filters in the set (10,000 subscriptions cost what 10 do).
 *
 * Matching follows MQTT 5 section 4.7: `+` matches one level, `#` the parent level and every level below it,
 * a filter whose first level is a wildcard does not match a topic starting with `$` [MQTT-4.7.2-1], and a
 * shared subscription `$share/group/filter` matches as its `filter`.
 */
import { parseShared } from "./topic.ts"

interface Node<V> {
  readonly children: Map<string, Node<V>>
  /** the filters that end at this node, with their values */
  readonly values: Map<string, V>
  /** the filters ending in `#` below this node's parent: they match this level and below */
  readonly multi: Map<string, V>
}

const makeNode = <V>(): Node<V> => ({ children: new Map(), values: new Map(), multi: new Map() })

export class TopicTrie<V> {
  private readonly root: Node<V> = makeNode()
  private count = 0

  /** The number of filters in the set. */
  get size(): number {
    return this.count
  }

  /** Adds a filter with its value, or replaces the value of a filter already in the set. */
  set(filter: string, value: V): void {
    const levels = levelsOf(filter)
    let node = this.root
    for (let i = 0; i < levels.length; i++) {
      const level = levels[i]
      if (level === "#") {
        if (!node.multi.has(filter)) this.count++
        node.multi.set(filter, value)
        return
      }
      let child = node.children.get(level)
      if (child === undefined) node.children.set(level, child = makeNode())
      node = child
    }
    if (!node.values.has(filter)) this.count++
    node.values.set(filter, value)
  }

  /** The value of a filter, if it is in the set. */
  get(filter: string): V | undefined {
    const levels = levelsOf(filter)
    let node: Node<V> | undefined = this.root
    for (let i = 0; i < levels.length && node !== undefined; i++) {
      if (levels[i] === "#") return node.multi.get(filter)
      node = node.children.get(levels[i])
    }
    return node?.values.get(filter)
  }

  /** Removes a filter; returns whether it was in the set. Empty branches are pruned. */
  delete(filter: string): boolean {
    const levels = levelsOf(filter)
    const path: Array<[Node<V>, string]> = []
    let node: Node<V> | undefined = this.root
    let removed = false
    for (let i = 0; i <= levels.length; i++) {
      if (i === levels.length) {
        removed = node.values.delete(filter)
        break
      }
      if (levels[i] === "#") {
        removed = node.multi.delete(filter)
        break
      }
      const next: Node<V> | undefined = node.children.get(levels[i])
      if (next === undefined) return false
      path.push([node, levels[i]])
      node = next
    }
    if (!removed) return false
    this.count--
    for (let i = path.length - 1; i >= 0; i--) {
      const [parent, level] = path[i]
      const child = parent.children.get(level)!
      if (child.children.size > 0 || child.values.size > 0 || child.multi.size > 0) break
      parent.children.delete(level)
    }
    return true
  }

  /** Calls `f` with each filter the topic matches, and its value. */
  forEachMatch(topic: string, f: (value: V, filter: string) => void): void {
    const levels = topic.split("/")
    this.walk(this.root, levels, 0, topic.charCodeAt(0) === 36, /* $ */ f)
  }

  /** Every filter in the set with its value. */
  entries(): Array<[string, V]> {
    const out: Array<[string, V]> = []
    const visit = (node: Node<V>) => {
      for (const entry of node.values) out.push(entry)
      for (const entry of node.multi) out.push(entry)
      for (const child of node.children.values()) visit(child)
    }
    visit(this.root)
    return out
  }

  private walk(node: Node<V>, levels: Array<string>, i: number, dollar: boolean, f: (v: V, filter: string) => void) {
    // a wildcard at the first level does not match a topic starting with `$`
    const wildcards = !(dollar && i === 0)
    if (wildcards) { for (const [filter, value] of node.multi) f(value, filter) }
    if (i === levels.length) {
      for (const [filter, value] of node.values) f(value, filter)
      return
    }
    const exact = node.children.get(levels[i])
    if (exact !== undefined) this.walk(exact, levels, i + 1, dollar, f)
    if (wildcards) {
      const plus = node.children.get("+")
      if (plus !== undefined && levels[i] !== "+") this.walk(plus, levels, i + 1, dollar, f)
    }
  }
}

/** The levels a filter matches with: a shared subscription matches as its inner filter. */
const levelsOf = (filter: string): Array<string> => (parseShared(filter)?.filter ?? filter).split("/")
