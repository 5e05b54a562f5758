/**
 * The client's outgoing publishes within the session: call order, packet identifiers, the broker's Receive
 * Maximum, its limits, and topic aliases. Pure state: methods append what to write and what ended to an
 * `Output`, and never do I/O.
 *
 * Invariants (checked by test/session.model.test.ts):
 * - Publishes leave in call order, whatever their QoS: a QoS 0 publish waits behind an earlier QoS 1/2 one that
 *   waits for quota or an identifier. Resends after a reconnect keep the order of the first sending [MQTT-4.6.0-1].
 * - A packet identifier is held from the first PUBLISH until PUBACK, PUBCOMP or a refusal, never by two flows.
 * - At most `quota` QoS 1/2 publishes (PUBLISH or PUBREL sent, no PUBACK/PUBCOMP yet) per connection [MQTT-4.9.0-2].
 * - What is written fits the current connection's CONNACK (Maximum QoS, Retain Available, Maximum Packet Size
 *   counted with the topic alias); what does not is refused with its reason code, unsent, when it would be written.
 * - Every accepted publish ends exactly once (`Output.end`), unless its caller withdrew it before it was sent.
 */
import * as MqttError from "../MqttError.ts"
import type { PublishProperties, QoS } from "../MqttMessage.ts"
import * as Bytes from "./bytes.ts"
import * as Codec from "./codec.ts"
import { type Operation, type Output, violation } from "./output.ts"
import { Line, type PacketIds, type Queued } from "./packetIds.ts"
import type * as Packets from "./packets.ts"

/** A publish as validated and encoded once at the call: the identifier and alias are set when it is written. */
export interface OutgoingMessage {
  readonly topic: string
  readonly payload: Uint8Array
  readonly qos: QoS
  readonly retain: boolean
  readonly properties: PublishProperties | undefined
  /** the PUBLISH without a topic alias, identifier 0 */
  readonly encoded: Codec.EncodedPublish
}

/** Not written on this session yet (or written on a session the broker lost). */
export const NEW = 0
/** PUBLISH written, no PUBACK or PUBREC yet. */
export const SENT = 1
/** PUBREC received, PUBREL written, no PUBCOMP yet. */
export const RELEASED = 2

export class PublishEntry implements Queued, Operation {
  queued = false
  /** the entry's number in the session's journal (durable sessions) */
  key = 0
  id = 0
  state: 0 | 1 | 2 = NEW
  /** written before: a resend carries DUP [MQTT-3.3.1-1] */
  dup = false
  /** ever written, on any connection: a caller that gives up can no longer withdraw it */
  written = false
  /** holds a unit of the send quota on the current connection */
  counted = false
  /** acknowledgements the connection had received when this PUBLISH was written on it; -1: not written on it */
  ackMark = -1
  /**
   * connections in a row that ended when this was the oldest PUBLISH written on them and nothing was acknowledged
   * after it: the broker may be closing each connection on it (see `CLOSED_ON_LIMIT`)
   */
  closedOn = 0
  /** the broker those connections were to (`closedOn` counts closes by one broker in a row) */
  closedOnBroker: string | undefined = undefined
  /** the broker whose PUBREC opened the flow the PUBREL ends (undefined: not known, as after a restore) */
  receivedBy: string | undefined = undefined
  error: MqttError.MqttError | undefined = undefined
  done = false
  listener: (() => void) | undefined = undefined
  readonly message: OutgoingMessage
  /** accepted while disconnected: holds a place in the offline buffer until written */
  offline: boolean
  constructor(message: OutgoingMessage, offline: boolean) {
    this.message = message
    this.offline = offline
  }
}

/** What the current connection's CONNACK allows, resolved with the client's own caps. */
export interface Limits {
  readonly maximumQoS: QoS
  readonly retainAvailable: boolean
  readonly maximumPacketSize: number | undefined
  /** whose limit `maximumPacketSize` is, for the error: "the broker accepts" or "sendMaximumPacketSize allows" */
  readonly maximumPacketSizeBy: string
  /** topic aliases the client may use on this connection (0: none) */
  readonly topicAliasMaximum: number
  /** QoS 1/2 publishes in flight at most: the broker's Receive Maximum, capped by `maxInflight` */
  readonly quota: number
}

export class Outgoing {
  private readonly line = new Line<PublishEntry>()
  /** every QoS 1/2 publish holding an identifier, in the order of its first sending */
  private readonly inflight = new Map<number, PublishEntry>()
  /**
   * identifiers of QoS 2 publishes refused on resend, and of publishes the broker answered with a PUBREC they could
   * not take (see `mismatch`): the broker may still hold them until the session ends
   */
  private retired: Array<number> = []
  private used = 0
  private limits: Limits | undefined = undefined
  /** the broker of the current (or last) connection, as `url` names it: see `closedOnBroker` */
  private broker: string | undefined = undefined
  /** topic → alias, least recently used first; per connection */
  private aliases: Map<string, number> | undefined = undefined
  /** publishes accepted while disconnected and not written yet */
  offline = 0
  /** PUBACK, PUBREC and PUBCOMP packets of known publishes received on the current connection */
  private acks = 0
  /** the next journal key of a publish */
  private nextKey = 1
  /** the publish being accepted by `publish`: a refusal within that call is its caller's error, not a warning */
  private accepting: PublishEntry | undefined = undefined

  private readonly version: Packets.ProtocolVersion
  private readonly ids: PacketIds
  constructor(version: Packets.ProtocolVersion, ids: PacketIds) {
    this.version = version
    this.ids = ids
  }

  /** How many publishes wait to be written. */
  get waiting(): number {
    return this.line.size
  }

  /** How many QoS 1/2 publishes hold an identifier. */
  get inFlight(): number {
    return this.inflight.size
  }

  /** The unfinished QoS 1/2 publishes, in the order of their first sending. */
  entries(): IterableIterator<PublishEntry> {
    return this.inflight.values()
  }

  /**
   * Accepts a publish. While connected with nothing waiting, it is written at once (QoS 0: done, returns
   * undefined); otherwise it waits in line. The returned entry ends through `Output.end`.
   */
  publish(message: OutgoingMessage, out: Output): PublishEntry | undefined {
    const limits = this.limits
    if (limits !== undefined && this.line.size === 0) {
      if (message.qos === 0) {
        const packet = this.encode(message, 0, false, limits)
        if (!(packet instanceof MqttError.PublishError)) {
          Codec.pushPublish(out.send, packet)
          return undefined
        }
        const entry = new PublishEntry(message, false)
        out.end(entry, packet)
        return entry
      }
      if (this.used < limits.quota) {
        const id = this.ids.acquire()
        if (id !== 0) {
          const entry = this.accepted(new PublishEntry(message, false), out)
          entry.id = id
          this.inflight.set(id, entry)
          this.accepting = entry
          this.transmit(entry, limits, out)
          this.accepting = undefined
          return entry
        }
      }
    }
    const entry = new PublishEntry(message, limits === undefined)
    if (message.qos > 0) this.accepted(entry, out)
    if (limits === undefined) {
      this.offline++
      // QoS 0 is at most once: buffered while offline, it is done for the caller (the offline capacity bounds it)
      if (message.qos === 0) out.end(entry, undefined)
    }
    this.line.push(entry)
    this.accepting = entry
    this.pump(out)
    this.accepting = undefined
    return entry
  }

  /** A QoS 1/2 publish joins the session: a durable session stores it before anything of it is written. */
  private accepted(entry: PublishEntry, out: Output): PublishEntry {
    entry.key = this.nextKey++
    const m = entry.message
    out.journal?.push({
      t: "p",
      p: {
        key: entry.key,
        topic: m.topic,
        payload: m.payload,
        qos: m.qos as 1 | 2,
        retain: m.retain,
        properties: m.properties,
        id: 0,
        state: NEW
      }
    })
    return entry
  }

  /**
   * Puts back the publishes of a stored session, in their order, with their identifiers and states, and the
   * identifiers it retired.
   */
  restore(entries: ReadonlyArray<PublishEntry>, retired: Iterable<number>): void {
    for (const id of retired) {
      this.ids.claim(id)
      this.retired.push(id)
    }
    for (const entry of entries) {
      this.nextKey = Math.max(this.nextKey, entry.key + 1)
      if (entry.id !== 0) {
        this.ids.claim(entry.id)
        this.inflight.set(entry.id, entry)
      } else {
        this.line.push(entry)
      }
    }
  }

  /**
   * The caller gave up waiting. A publish never written is withdrawn (it frees its place and is not sent);
   * one written keeps its flow: its acknowledgement is still received and answered. Returns whether withdrawn.
   */
  withdraw(entry: PublishEntry, out: Output): boolean {
    entry.listener = undefined
    if (entry.written || entry.done || !entry.queued && entry.id === 0) return false
    if (entry.key !== 0) out.journal?.push({ t: "d", k: entry.key })
    this.line.remove(entry)
    if (entry.offline) {
      entry.offline = false
      this.offline--
    }
    if (entry.id !== 0) {
      this.inflight.delete(entry.id)
      this.ids.release(entry.id)
    }
    entry.done = true
    return true
  }

  /** Writes what waits in line while the quota and the identifiers allow. */
  pump(out: Output): void {
    const limits = this.limits
    if (limits === undefined) return
    for (;;) {
      const entry = this.line.peek()
      if (entry === undefined) return
      if (entry.message.qos > 0) {
        if (this.used >= limits.quota) return
        if (entry.id === 0) {
          const id = this.ids.acquire()
          if (id === 0) return
          entry.id = id
          this.inflight.set(id, entry)
        }
      }
      this.line.shift()
      this.transmit(entry, limits, out)
    }
  }

  private transmit(entry: PublishEntry, limits: Limits, out: Output): void {
    if (entry.offline) {
      entry.offline = false
      this.offline--
    }
    if (entry.state === RELEASED) {
      // a resend: in `send`, so that it keeps its place among the resent PUBLISH packets [MQTT-4.6.0-1]
      out.send.push(Codec.pubrel(entry.id))
      this.count(entry)
      return
    }
    const packet = this.encode(entry.message, entry.id, entry.dup, limits)
    if (packet instanceof MqttError.PublishError) return this.refuse(entry, packet, out)
    Codec.pushPublish(out.send, packet)
    entry.written = true
    entry.ackMark = this.acks
    if (entry.message.qos === 0) return out.end(entry, undefined)
    // a durable session knows the identifier before the PUBLISH is written: a resend after a restart keeps it
    if (entry.state === NEW) out.journal?.push({ t: "s", k: entry.key, id: entry.id })
    entry.state = SENT
    this.count(entry)
  }

  private count(entry: PublishEntry): void {
    entry.counted = true
    this.used++
  }

  /** A publish the current connection cannot take ends with the broker's reason code, unsent. */
  private refuse(entry: PublishEntry, error: MqttError.PublishError, out: Output): void {
    if (entry.done) out.warnings.push(`a QoS 0 publish accepted while offline was not sent: ${error.message}`)
    // nobody waits for it (`publishAccepted`, a durable session's publish restored after a restart): said here;
    // refused within the call that accepts it, it is that call's error
    else if (entry.listener === undefined && entry !== this.accepting) {
      const what = entry.written ? "was not sent again" : "was not sent"
      out.warnings.push(`a QoS ${entry.message.qos} publish accepted earlier ${what}: ${error.message}`)
    }
    if (entry.key !== 0) out.journal?.push({ t: "d", k: entry.key })
    if (entry.id !== 0) {
      this.inflight.delete(entry.id)
      // a QoS 2 PUBLISH written on an earlier connection of this session may be held by the broker under its
      // identifier: reusing it for another message could be taken for a duplicate
      if (entry.message.qos === 2 && entry.written) {
        this.retired.push(entry.id)
        // and after a restart: a durable session keeps it out of use too, until the broker forgets the session
        out.journal?.push({ t: "i", id: entry.id })
      } else {
        this.ids.release(entry.id)
      }
    }
    out.end(entry, error)
  }

  /**
   * The PUBLISH for the current connection (its identifier set), or why the connection cannot take it. In MQTT 5,
   * topics get aliases within the broker's Topic Alias Maximum (least recently used replaced); the alias is
   * committed only when the packet fits, so the broker's view of the aliases never differs from the client's.
   * The size checked is the whole packet's, with a separate payload too.
   */
  private encode(
    m: OutgoingMessage,
    id: number,
    dup: boolean,
    limits: Limits
  ): Codec.EncodedPublish | MqttError.PublishError {
    if (this.version === 5) {
      if (m.qos > limits.maximumQoS) {
        return refused(m.topic, dup, 0x9b, `the broker accepts QoS ${limits.maximumQoS} at most`)
      }
      if (m.retain && !limits.retainAvailable) {
        return refused(m.topic, dup, 0x9a, "the broker does not keep retained messages")
      }
    }
    const max = limits.maximumPacketSize
    const aliases = this.aliases
    if (aliases !== undefined && m.topic.length >= 3) {
      const known = aliases.get(m.topic)
      const alias = known ??
        (aliases.size < limits.topicAliasMaximum ? aliases.size + 1 : aliases.values().next().value!)
      const aliased = Codec.encodePublish(this.version, m.topic, m.payload, m.qos, m.retain, m.properties, {
        alias,
        omitTopic: known !== undefined
      })
      if (max === undefined || aliased.size <= max) {
        if (known !== undefined) aliases.delete(m.topic)
        else if (aliases.size >= limits.topicAliasMaximum) aliases.delete(aliases.keys().next().value!)
        aliases.set(m.topic, alias)
        if (m.qos > 0) Codec.setPublishId(aliased, id, dup)
        return aliased
      }
    }
    if (max !== undefined && m.encoded.size > max) {
      return refused(
        m.topic,
        dup,
        0x95,
        `the packet is ${m.encoded.size} bytes, ${limits.maximumPacketSizeBy} ${max} at most`
      )
    }
    if (m.qos === 0) return m.encoded
    // a resend is a copy (of the header only, when the payload is separate): the bytes of the first sending may
    // still sit in the socket's buffer
    const encoded = dup ? { ...m.encoded, bytes: Bytes.copy(m.encoded.bytes) } : m.encoded
    Codec.setPublishId(encoded, id, dup)
    return encoded
  }

  /** PUBACK: a QoS 1 publish ends. */
  onPuback(ack: Packets.Ack, out: Output): "unknown" | undefined {
    const entry = this.inflight.get(ack.id)
    if (entry === undefined || entry.state === NEW) return "unknown"
    if (entry.message.qos !== 1) {
      if (entry.state === RELEASED) return this.mismatch(entry, ack, out)
      // the documented downgrade: a broker that takes QoS 2 as 1 (RabbitMQ 3 over MQTT 3.1.1) answers its PUBLISH
      // with PUBACK, every time. The publish ends with an error, never sent again; the connection stays, since
      // closing it would send the other publishes in flight again, and that broker would deliver them twice
      this.acks++
      return this.settle(entry, wrongAck(entry, "PUBACK", "PUBREC", false), out)
    }
    this.acks++
    return this.settle(entry, ack.reasonCode >= 0x80 ? brokerRefusal(entry, ack) : undefined, out)
  }

  /** PUBREC: a QoS 2 publish was received; PUBREL answers it (again, when it is repeated [MQTT-4.3.3]). */
  onPubrec(ack: Packets.Ack, out: Output): "unknown" | undefined {
    const entry = this.inflight.get(ack.id)
    if (entry === undefined || entry.state === NEW) return "unknown"
    if (entry.message.qos !== 2) return this.mismatch(entry, ack, out)
    this.acks++
    if (ack.reasonCode >= 0x80) return this.settle(entry, brokerRefusal(entry, ack), out)
    if (entry.state !== RELEASED) out.journal?.push({ t: "r", k: entry.key })
    entry.state = RELEASED
    entry.receivedBy = this.broker
    // a resend still in line (a resumed session with a smaller quota) sends its PUBREL in its turn, counted
    if (!entry.queued) out.acks.push(Codec.PUBREL, entry.id)
    return undefined
  }

  /** PUBCOMP: a QoS 2 publish ends. */
  onPubcomp(ack: Packets.Ack, out: Output): "unknown" | undefined {
    const entry = this.inflight.get(ack.id)
    if (entry === undefined || entry.state === NEW) return "unknown"
    if (entry.state !== RELEASED) return this.mismatch(entry, ack, out)
    this.acks++
    // 0x92 (Packet Identifier not found) from the broker that received the publish: its PUBCOMP was lost, the flow
    // ended. From another one (the session resumed on another node of `url`, which may hold an older session), the
    // node never had the flow: the node that had it may not have sent the message on [MQTT-4.3.3]
    const elsewhere = ack.reasonCode === 0x92 && entry.receivedBy !== undefined && entry.receivedBy !== this.broker
    return this.settle(entry, elsewhere ? releasedElsewhere(entry, this.broker) : undefined, out)
  }

  /**
   * An acknowledgement that the publish holding its identifier cannot take where it is: a PUBACK for QoS 2 after
   * its PUBREC (before it, the documented downgrade: see `onPuback`), a PUBREC for QoS 1, a PUBCOMP before the
   * PUBREL. The broker and the client disagree about this flow: a protocol
   * error, which closes the connection (MQTT 5: DISCONNECT 0x82). The broker answered this publish, in its way, so
   * it ends with a PublishError (0x82) and is not sent again: a resend could deliver it twice, and a broker that
   * downgrades QoS 2 to 1 (RabbitMQ 3 over MQTT 3.1.1) would answer it so on every connection, for good. A PUBREC
   * opened a QoS 2 flow on the broker's side: PUBREL ends it [MQTT-4.3.3-4]. The identifier is kept out of use
   * until the broker's session ends wherever the broker may hold a QoS 2 flow under it (a PUBREC answered so, and any
   * QoS 2 PUBLISH written: its PUBREL unread or never sent), as `refuse` does: it would take a new QoS 2 PUBLISH
   * under it for a resend, and drop it.
   */
  private mismatch(entry: PublishEntry, ack: Packets.Ack, out: Output): undefined {
    const packet = ack._tag.toUpperCase()
    const awaiting = entry.state === RELEASED ? "PUBCOMP" : entry.message.qos === 1 ? "PUBACK" : "PUBREC"
    out.fail(
      violation(
        this.version,
        `a ${packet} for packet ${entry.id}, a QoS ${entry.message.qos} publish awaiting ${awaiting}`,
        0x82,
        { packet }
      )
    )
    const opened = ack._tag === "Pubrec" && ack.reasonCode < 0x80
    if (opened) out.acks.push(Codec.PUBREL, entry.id)
    return this.settle(entry, wrongAck(entry, packet, awaiting, true), out, opened || entry.message.qos === 2)
  }

  /** A publish ends; `retire`: its identifier is kept out of use until the broker's session ends (see `retired`). */
  private settle(entry: PublishEntry, error: MqttError.MqttError | undefined, out: Output, retire = false): undefined {
    out.journal?.push({ t: "d", k: entry.key })
    // acknowledged while its resend waits in line (a resumed session with a smaller quota; the PUBACK of the last
    // connection came late): it leaves the line, else it would be sent again under an identifier it no longer holds
    this.line.remove(entry)
    this.inflight.delete(entry.id)
    if (retire) {
      this.retired.push(entry.id)
      out.journal?.push({ t: "i", id: entry.id })
    } else {
      this.ids.release(entry.id)
    }
    if (entry.counted) {
      entry.counted = false
      this.used--
    }
    out.end(entry, error)
    return undefined
  }

  /** Whether a publish holds the identifier (a PUBLISH or PUBREL of it may be answered). */
  holds(id: number): boolean {
    return this.inflight.has(id)
  }

  /** A connection carries the session: resend or restart what is unfinished, in order, then what waits. */
  connected(limits: Limits, sessionPresent: boolean, aliases: boolean, out: Output, broker?: string): void {
    this.broker = broker
    this.limits = limits
    this.used = 0
    this.aliases = aliases && limits.topicAliasMaximum > 0 ? new Map() : undefined
    this.acks = 0
    const fresh = this.line.drain().filter((entry) => entry.id === 0)
    for (const entry of this.inflight.values()) {
      if (entry.state === SENT && entry.closedOn >= CLOSED_ON_LIMIT && entry.closedOnBroker === broker) {
        this.refuse(entry, closedOnIt(entry), out)
      }
    }
    const unfinished = [...this.inflight.values()]
    if (!sessionPresent) {
      // the broker has no session: identifiers start afresh; the publishes it had not acknowledged are sent again as
      // new messages. A QoS 2 publish past PUBREC ends with an error: the broker may have sent it on at its PUBLISH
      // (sending it again would deliver it twice) or kept it for the PUBREL (Mosquitto does: it is gone), so
      // whether it was delivered is not known [MQTT-4.3.3]
      for (const id of this.retired) this.ids.release(id)
      if (this.retired.length > 0) out.journal?.push({ t: "I" })
      this.retired = []
      this.inflight.clear()
      for (const entry of unfinished) {
        this.ids.release(entry.id)
        if (entry.state === RELEASED) {
          out.journal?.push({ t: "d", k: entry.key })
          const error = releaseLost(entry)
          // nobody waits for it (`publishAccepted`, a durable session's publish restored after a restart): said here
          if (entry.listener === undefined) out.warnings.push(`a QoS 2 publish accepted earlier: ${error.message}`)
          out.end(entry, error)
          continue
        }
        out.journal?.push({ t: "n", k: entry.key })
        entry.id = 0
        entry.state = NEW
        entry.dup = false
        this.line.push(entry)
      }
    } else {
      for (const entry of unfinished) this.line.push(entry)
    }
    for (const entry of fresh) this.line.push(entry)
    this.pump(out)
  }

  /**
   * The connection ended: what was written is resent with DUP on the next one (when the session is resumed).
   * `byBroker`: the broker closed it, as it does on a PUBLISH it cannot take (see `closedByBroker`).
   */
  lost(byBroker: boolean): void {
    this.limits = undefined
    this.aliases = undefined
    this.used = 0
    // the oldest PUBLISH written on this connection, when nothing was acknowledged after it was written: the broker
    // may have closed the connection on it (MQTT 3.1.1 says no reason; an MQTT 5 broker may not either)
    let oldest = true
    for (const entry of this.inflight.values()) {
      if (oldest && entry.state === SENT && entry.ackMark >= 0) {
        oldest = false
        // a connection the client ended (a keepalive timeout, a violation of the broker's), or one the broker
        // closed for a reason of its own, says nothing of the publish: its count stays
        if (entry.ackMark !== this.acks) entry.closedOn = 0
        else if (byBroker) {
          // closes by other nodes of a cluster in turn are the cluster's recovery (a node lost, its sessions moving)
          // as much as a refusal: only one broker's count
          if (entry.closedOnBroker !== this.broker) entry.closedOn = 0
          entry.closedOnBroker = this.broker
          entry.closedOn++
        }
      }
      if (entry.state === SENT) entry.dup = true
      entry.counted = false
      entry.ackMark = -1
    }
  }

  /** The client stops: every unfinished publish fails with `error`. */
  close(error: MqttError.MqttError, out: Output): void {
    for (const entry of this.inflight.values()) out.end(entry, error)
    for (const entry of this.line.drain()) out.end(entry, error)
    this.inflight.clear()
    this.offline = 0
  }
}

/**
 * Connections in a row that the broker may close on the same publish before it is no longer sent: a broker closes
 * the connection on a PUBLISH it cannot take (MQTT 3.1.1 has no other answer: a QoS above its maximum, a packet
 * over its size limit), and without a limit the client would send it again on every connection, for good, holding
 * back every publish behind it. A healthy broker answers a PUBLISH within milliseconds: three connections in a row
 * to one broker that each end between a resend and any acknowledgement after it are the broker's refusal. Closes by
 * different nodes of `url` do not add up: the nodes of a cluster that lost one close connections in turn while
 * they move its sessions (NATS did, in test/failover.nats.test.ts).
 */
export const CLOSED_ON_LIMIT = 3

/** MQTT 5 DISCONNECT reason codes a broker may close the connection with over a PUBLISH (section 3.14.2.1). */
const PUBLISH_DISCONNECTS = new Set([0x80, 0x81, 0x82, 0x83, 0x87, 0x90, 0x93, 0x94, 0x95, 0x97, 0x99, 0x9a, 0x9b])

/**
 * Whether the broker closed the connection in a way a PUBLISH it cannot take may explain: the socket closed or
 * reset with no reason (MQTT 3.1.1 has none), or an MQTT 5 DISCONNECT with a reason code about a publish. Not a
 * keepalive timeout, a violation the client found, or a DISCONNECT such as 0x8B (server shutting down), 0x89
 * (server busy), 0x8E (session taken over) or 0x9C (use another server).
 */
export const closedByBroker = (error: MqttError.MqttError): boolean =>
  error._tag === "ConnectionLostError" &&
  (error.reasonCode === undefined || PUBLISH_DISCONNECTS.has(error.reasonCode))

const closedOnIt = (entry: PublishEntry) =>
  new MqttError.PublishError({
    topic: entry.message.topic,
    reasonCode: 0x80,
    reasonString: `not sent again: the broker closed the connection each of the last ${CLOSED_ON_LIMIT} times it ` +
      "was sent, before acknowledging anything sent after it (a broker that cannot take a PUBLISH closes the " +
      "connection: a QoS above its maximum, a packet over its size limit, a topic it refuses)"
  })

const releaseLost = (entry: PublishEntry) =>
  new MqttError.ConnectionLostError({
    reason: `the broker's session ended (Session Present 0) after it had received the QoS 2 publish to ` +
      `"${entry.message.topic}" (PUBREC) and before it released it (PUBCOMP): whether it was delivered is not ` +
      "known, and it is not sent again (that could deliver it twice)",
    phase: "connected"
  })

const releasedElsewhere = (entry: PublishEntry, broker: string | undefined) =>
  new MqttError.PublishError({
    topic: entry.message.topic,
    reasonCode: 0x92,
    reasonString: `${entry.receivedBy} received the QoS 2 publish (PUBREC) and ${broker}, where the session resumed, ` +
      "does not know it (PUBCOMP 0x92, Packet Identifier not found): whether it was delivered is not known, and it " +
      "is not sent again (that could deliver it twice)"
  })

/** A publish the current connection's limits refuse; `resend`: it went out on an earlier connection already. */
const refused = (topic: string, resend: boolean, reasonCode: number, reason: string) =>
  new MqttError.PublishError({
    topic,
    reasonCode,
    reasonString: resend
      ? `not sent again: ${reason} (it was sent on an earlier connection: the broker may have received it)`
      : `not sent: ${reason}`
  })

const brokerRefusal = (entry: PublishEntry, ack: Packets.Ack) =>
  new MqttError.PublishError({
    topic: entry.message.topic,
    reasonCode: ack.reasonCode,
    ...(ack.reasonString === undefined ? {} : { reasonString: ack.reasonString })
  })

const wrongAck = (entry: PublishEntry, packet: string, awaiting: string, closed: boolean) =>
  new MqttError.PublishError({
    topic: entry.message.topic,
    reasonCode: 0x82,
    reasonString: `the broker answered a QoS ${entry.message.qos} publish awaiting ${awaiting} with ${packet}` +
      (entry.message.qos === 2 && packet === "PUBACK" && awaiting === "PUBREC"
        ? " (a broker that downgrades QoS 2 to 1 does this: publish at QoS 1 to it)"
        : "") +
      "; the message may have been delivered, and it is not sent again" +
      (closed ? "; the client closed the connection (a protocol error)" : "")
  })
