/**
 * The client's half of a persistent MQTT session as data that can be stored: the QoS 1/2 publishes not yet
 * finished (with their identifiers and states), the incoming QoS 2 identifiers awaiting PUBREL, the
 * subscriptions to restore, the client identifier. The session writes changes as journal entries; a store keeps
 * them as segments (one per batch) and a snapshot. Pure: encoding, decoding (checked with Schema) and replay.
 */
import * as Base64 from "effect/encoding/Base64"
import * as Exit from "effect/Exit"
import * as Result from "effect/Result"
import * as Schema from "effect/Schema"
import type { PublishProperties, QoS } from "../MqttMessage.ts"
import type { FilterSpec } from "./packets.ts"

/** A QoS 1/2 publish of the session, as stored. */
export interface StoredPublish {
  readonly key: number
  readonly topic: string
  readonly payload: Uint8Array
  readonly qos: 1 | 2
  readonly retain: boolean
  readonly properties: PublishProperties | undefined
  /** its packet identifier once written (0: not yet) */
  id: number
  /** 0 not written, 1 PUBLISH written, 2 PUBREC received (PUBREL written) */
  state: 0 | 1 | 2
}

/** A subscription the session restores. */
export interface StoredSubscription {
  readonly spec: FilterSpec
  readonly identifier: number
}

/** What a store holds for one client: everything the session needs to carry on after a restart. */
export interface Image {
  clientId: string | undefined
  readonly publishes: Map<number, StoredPublish>
  readonly awaitingRelease: Set<number>
  /**
   * identifiers of QoS 2 publishes written and then refused on a resend (the new connection's limits): the broker
   * may still hold them until the session ends, so the client does not give them to another message
   */
  readonly retired: Set<number>
  subscriptions: ReadonlyArray<StoredSubscription>
}

export const emptyImage = (): Image => ({
  clientId: undefined,
  publishes: new Map(),
  awaitingRelease: new Set(),
  retired: new Set(),
  subscriptions: []
})

/**
 * One change of the stored session. `hold` marks the entries that must be durable before the packets of the same
 * step are written (write-ahead): a QoS 2 PUBLISH with its identifier, a PUBREL, a PUBREC, a PUBCOMP; the others
 * (a publish accepted, finished) only need to be stored eventually or are written ahead by the caller's wait.
 */
export type Entry =
  | { readonly t: "p"; readonly p: StoredPublish }
  | { readonly t: "s"; readonly k: number; readonly id: number }
  | { readonly t: "n"; readonly k: number }
  | { readonly t: "r"; readonly k: number }
  | { readonly t: "d"; readonly k: number }
  | { readonly t: "a"; readonly id: number }
  | { readonly t: "x"; readonly id: number }
  | { readonly t: "i"; readonly id: number }
  | { readonly t: "I" }
  | { readonly t: "X" }
  | { readonly t: "S"; readonly s: ReadonlyArray<StoredSubscription> }
  | { readonly t: "c"; readonly c: string }

/** Applies entries to an image, in order. */
export const apply = (image: Image, entries: ReadonlyArray<Entry>): void => {
  for (const e of entries) {
    switch (e.t) {
      case "p":
        image.publishes.set(e.p.key, { ...e.p })
        break
      case "s": {
        const p = image.publishes.get(e.k)
        if (p !== undefined) {
          p.id = e.id
          p.state = 1
        }
        break
      }
      case "n": {
        const p = image.publishes.get(e.k)
        if (p !== undefined) {
          p.id = 0
          p.state = 0
        }
        break
      }
      case "r": {
        const p = image.publishes.get(e.k)
        if (p !== undefined) p.state = 2
        break
      }
      case "d":
        image.publishes.delete(e.k)
        break
      case "a":
        image.awaitingRelease.add(e.id)
        break
      case "x":
        image.awaitingRelease.delete(e.id)
        break
      case "i":
        image.retired.add(e.id)
        break
      case "I":
        image.retired.clear()
        break
      case "X":
        image.awaitingRelease.clear()
        break
      case "S":
        image.subscriptions = e.s
        break
      case "c":
        image.clientId = e.c
        break
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// the stored form: JSON, binary as base64, checked with Schema when read
// ---------------------------------------------------------------------------------------------------------

/** Bytes stored as Base64 text. */
const Base64Text = Schema.String.check(Schema.isBase64())

const Properties = Schema.Struct({
  payloadFormatIndicator: Schema.optionalKey(Schema.Boolean),
  messageExpiryInterval: Schema.optionalKey(Schema.Number),
  contentType: Schema.optionalKey(Schema.String),
  responseTopic: Schema.optionalKey(Schema.String),
  correlationData: Schema.optionalKey(Base64Text),
  userProperties: Schema.optionalKey(Schema.Array(Schema.Tuple([Schema.String, Schema.String])))
})

const Publish = Schema.Struct({
  key: Schema.Int,
  topic: Schema.String,
  payload: Base64Text,
  qos: Schema.Literals([1, 2]),
  retain: Schema.Boolean,
  properties: Schema.optionalKey(Properties),
  id: Schema.Int,
  state: Schema.Literals([0, 1, 2])
})

const Subscription = Schema.Struct({
  filter: Schema.String,
  qos: Schema.Literals([0, 1, 2]),
  noLocal: Schema.Boolean,
  retainAsPublished: Schema.Boolean,
  retainHandling: Schema.Literals([0, 1, 2]),
  identifier: Schema.Int
})

const StoredEntry = Schema.Union([
  Schema.Struct({ t: Schema.Literal("p"), p: Publish }),
  Schema.Struct({ t: Schema.Literals(["s"]), k: Schema.Int, id: Schema.Int }),
  Schema.Struct({ t: Schema.Literals(["n", "r", "d"]), k: Schema.Int }),
  Schema.Struct({ t: Schema.Literals(["a", "x", "i"]), id: Schema.Int }),
  Schema.Struct({ t: Schema.Literals(["X", "I"]) }),
  Schema.Struct({ t: Schema.Literal("S"), s: Schema.Array(Subscription) }),
  Schema.Struct({ t: Schema.Literal("c"), c: Schema.String })
])

/** A journal segment: the entries of one batch. */
const Segment = Schema.Struct({ v: Schema.Literal(1), e: Schema.Array(StoredEntry) })

/** A snapshot: the whole image, and the last segment it includes. */
const Snapshot = Schema.Struct({
  v: Schema.Literal(1),
  upTo: Schema.Int,
  clientId: Schema.optionalKey(Schema.String),
  publishes: Schema.Array(Publish),
  awaitingRelease: Schema.Array(Schema.Int),
  /** absent in snapshots of versions before it was kept */
  retired: Schema.optionalKey(Schema.Array(Schema.Int)),
  subscriptions: Schema.Array(Subscription)
})

const toBase64 = (bytes: Uint8Array): string => Base64.encode(bytes)
// the text was checked as Base64 by the schema that read it
const fromBase64 = (text: string): Uint8Array => Result.getOrElse(Base64.decode(text), () => new Uint8Array(0))

const encodeProperties = (p: PublishProperties | undefined) => {
  if (p === undefined) return undefined
  const { correlationData, ...rest } = p
  return correlationData === undefined ? rest : { ...rest, correlationData: toBase64(correlationData) }
}

const decodeProperties = (p: typeof Properties.Type | undefined): PublishProperties | undefined => {
  if (p === undefined) return undefined
  const { correlationData, ...rest } = p
  return correlationData === undefined ? rest : { ...rest, correlationData: fromBase64(correlationData) }
}

const encodePublish = (p: StoredPublish) => ({
  key: p.key,
  topic: p.topic,
  payload: toBase64(p.payload),
  qos: p.qos,
  retain: p.retain,
  ...(p.properties === undefined ? {} : { properties: encodeProperties(p.properties) }),
  id: p.id,
  state: p.state
})

const decodePublish = (p: typeof Publish.Type): StoredPublish => ({
  key: p.key,
  topic: p.topic,
  payload: fromBase64(p.payload),
  qos: p.qos,
  retain: p.retain,
  properties: decodeProperties(p.properties),
  id: p.id,
  state: p.state
})

const encodeSubscription = ({ identifier, spec }: StoredSubscription) => ({ ...spec, identifier })
const decodeSubscription = ({ identifier, ...spec }: typeof Subscription.Type): StoredSubscription => ({
  spec: { ...spec, qos: spec.qos as QoS },
  identifier
})

const encodeEntry = (e: Entry): unknown =>
  e.t === "p" ? { t: "p", p: encodePublish(e.p) } : e.t === "S" ? { t: "S", s: e.s.map(encodeSubscription) } : e

const decodeEntry = (e: typeof StoredEntry.Type): Entry =>
  e.t === "p"
    ? { t: "p", p: decodePublish(e.p) }
    : e.t === "S"
    ? { t: "S", s: e.s.map(decodeSubscription) }
    : (e as Entry)

/** The stored text of a segment. */
export const encodeSegment = (entries: ReadonlyArray<Entry>): string =>
  JSON.stringify({ v: 1, e: entries.map(encodeEntry) })

/** The stored text of a snapshot of an image that includes the segments up to `upTo`. */
export const encodeSnapshot = (image: Image, upTo: number): string =>
  JSON.stringify({
    v: 1,
    upTo,
    ...(image.clientId === undefined ? {} : { clientId: image.clientId }),
    publishes: [...image.publishes.values()].map(encodePublish),
    awaitingRelease: [...image.awaitingRelease],
    ...(image.retired.size === 0 ? {} : { retired: [...image.retired] }),
    subscriptions: image.subscriptions.map(encodeSubscription)
  })

const parse = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

/** Reads a segment; a string says why it is not one. */
export const decodeSegment = (text: string): ReadonlyArray<Entry> | string => {
  const exit = Schema.decodeUnknownExit(Segment)(parse(text))
  return Exit.isSuccess(exit) ? exit.value.e.map(decodeEntry) : `not a journal segment: ${describeExit(exit)}`
}

/** Reads a snapshot; a string says why it is not one. */
export const decodeSnapshot = (text: string): { readonly image: Image; readonly upTo: number } | string => {
  const exit = Schema.decodeUnknownExit(Snapshot)(parse(text))
  if (!Exit.isSuccess(exit)) return `not a session snapshot: ${describeExit(exit)}`
  const s = exit.value
  const image = emptyImage()
  image.clientId = s.clientId
  for (const p of s.publishes) image.publishes.set(p.key, decodePublish(p))
  for (const id of s.awaitingRelease) image.awaitingRelease.add(id)
  for (const id of s.retired ?? []) image.retired.add(id)
  image.subscriptions = s.subscriptions.map(decodeSubscription)
  return { image, upTo: s.upTo }
}

const describeExit = (exit: Exit.Exit<unknown, unknown>): string =>
  Exit.isFailure(exit) ? String(exit.cause).split("\n")[0] : "ok"
