/**
 * Drives the sans-I/O session directly, without sockets: build packets from the broker as data, read what the
 * session writes back as decoded packets (mqtt-packet), and watch operations end.
 */
import * as MqttPacket from "mqtt-packet"
import { Buffer } from "node:buffer"
import * as Codec from "../../src/internal/codec.ts"
import type { OutgoingMessage, PublishEntry } from "../../src/internal/outgoing.ts"
import { type Delivery, type Operation, Output } from "../../src/internal/output.ts"
import type * as Packets from "../../src/internal/packets.ts"
import { LINE_FULL, OFFLINE_FULL, Session, type SessionConfig } from "../../src/internal/session.ts"
import { type FilterSpec, Request } from "../../src/internal/subscriptions.ts"
import type * as MqttError from "../../src/MqttError.ts"
import type { QoS } from "../../src/MqttMessage.ts"

export const config = (overrides: Partial<SessionConfig> = {}): SessionConfig => ({
  protocolVersion: 5,
  clientId: "c",
  cleanStart: true,
  sessionExpiryInterval: 3600,
  keepAlive: 60,
  maxInflight: 65535,
  receiveMaximum: 65535,
  topicAliasMaximum: 16,
  topicAliases: true,
  offlineCapacity: 10_000,
  offlineQos0: "buffer",
  offlineRequests: "wait",
  overlapping: "single-copy",
  strictReceiveMaximum: true,
  ...overrides
})

export const message = (
  topic: string,
  payload: string | Uint8Array,
  qos: QoS,
  version: Packets.ProtocolVersion = 5,
  retain = false
): OutgoingMessage => {
  const bytes = typeof payload === "string" ? Buffer.from(payload) : payload
  return {
    topic,
    payload: bytes,
    qos,
    retain,
    properties: undefined,
    encoded: Codec.encodePublish(version, topic, bytes, qos, retain, undefined)
  }
}

export const spec = (filter: string, qos: QoS = 1): FilterSpec => ({
  filter,
  qos,
  noLocal: false,
  retainAsPublished: false,
  retainHandling: 0
})

export const connack = (
  sessionPresent = false,
  properties: Packets.ConnackProperties = {},
  reasonCode = 0
): Packets.Connack => ({ _tag: "Connack", sessionPresent, reasonCode, properties })

export const ack = (tag: Packets.Ack["_tag"], id: number, reasonCode = 0): Packets.Ack => ({
  _tag: tag,
  id,
  reasonCode
})

export const publish = (
  topic: string,
  payload: string,
  qos: QoS,
  id = 0,
  extra: Partial<Packets.Publish> = {}
): Packets.Publish => ({
  _tag: "Publish",
  topic,
  payload: Buffer.from(payload),
  qos,
  retain: false,
  dup: false,
  id,
  properties: undefined,
  topicAlias: undefined,
  ...extra
})

/** A session, its output, and what it wrote, decoded. */
export class Harness {
  readonly session: Session
  readonly out = new Output()
  /** every packet written, decoded, in order */
  readonly written: Array<MqttPacket.Packet> = []
  readonly delivered: Array<Delivery> = []
  readonly ended: Array<Operation> = []
  readonly warnings: Array<string> = []
  /** owners whose streams the session failed */
  readonly failed: Array<{ readonly owner: number; readonly error: MqttError.MqttError }> = []
  errors: Array<MqttError.MqttError> = []
  /** messages the session dropped unread */
  dropped = 0
  private readonly parser: MqttPacket.Parser

  constructor(overrides: Partial<SessionConfig> = {}) {
    this.session = new Session(config(overrides))
    const version = this.session.version
    this.parser = MqttPacket.parser({ protocolVersion: version === 3 ? 4 : version })
    this.parser.on("packet", (packet: MqttPacket.Packet) => this.written.push(packet))
    this.parser.on("error", (error: Error) => {
      throw error
    })
  }

  /** Takes what the last call produced (as the driver would). */
  drain(): void {
    const out = this.out
    for (const bytes of out.send.splice(0)) this.parser.parse(Buffer.from(bytes))
    if (!out.acks.isEmpty) this.parser.parse(Buffer.from(out.acks.take()))
    this.delivered.push(...out.deliver.splice(0))
    this.ended.push(...out.settle.splice(0))
    this.warnings.push(...out.warnings.splice(0))
    this.failed.push(...out.failed.splice(0))
    this.dropped += out.dropped
    out.dropped = 0
    out.auth.length = 0
    out.pong = false
    if (out.error !== undefined) {
      this.errors.push(out.error)
      out.error = undefined
    }
  }

  /** Packets written since the last call, as `cmd` names or whole packets. */
  take(): Array<MqttPacket.Packet> {
    return this.written.splice(0)
  }

  /** A CONNACK, from `broker` when given (the node of a failover list that answered). */
  connect(sessionPresent = false, properties: Packets.ConnackProperties = {}, broker?: string) {
    const info = this.session.onConnack(
      connack(sessionPresent, properties),
      this.session.cleanStart,
      this.out,
      broker
    )
    this.drain()
    return info
  }

  lose(error: MqttError.MqttError) {
    this.session.lost(error, this.out)
    this.drain()
  }

  receive(packet: Packets.Packet) {
    this.session.onPacket(packet, this.out)
    this.drain()
  }

  publish(m: OutgoingMessage): PublishEntry | undefined | MqttError.MqttError | typeof OFFLINE_FULL | typeof LINE_FULL {
    const result = this.session.publish(m, this.out)
    this.drain()
    return result
  }

  subscribe(owner: number, specs: ReadonlyArray<FilterSpec>, identifier = 0): Request {
    const result = this.session.subscribe(owner, specs, identifier, undefined, this.out)
    this.drain()
    if (!(result instanceof Request)) throw result
    return result
  }

  unsubscribe(owner: number, filters: ReadonlyArray<string>): Request | undefined {
    const result = this.session.unsubscribe(owner, filters, undefined, this.out)
    this.drain()
    if (result !== undefined && !(result instanceof Request)) throw result
    return result
  }

  /** Hands every delivery of the session's epoch to its consumers: each copy is taken. */
  takeAll(): Array<Delivery> {
    const taken = this.delivered.splice(0)
    for (const d of taken) {
      if (d.record === undefined) continue
      for (let i = 0; i < d.owners.length; i++) this.session.settled(d.record, this.out)
    }
    this.drain()
    return taken
  }
}

export { LINE_FULL, OFFLINE_FULL }
