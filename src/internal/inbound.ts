/**
 * The broker's publishes within the session: topic aliases, QoS 2 de-duplication, the client's Receive Maximum,
 * and the acknowledgements, sent when the consumer has the message and in the order the PUBLISH packets arrived
 * [MQTT-4.6.0-2, MQTT-4.6.0-3], also for a resend answered without being delivered again. Pure state: methods
 * append to an `Output`.
 *
 * A QoS 1/2 message gets an `InboundRecord` when it arrives. Each copy handed to an owner is counted; when every
 * copy was taken (or acknowledged by the application), the record is done. Acknowledgements leave from the front
 * of the arrival line only: a done record waits behind an earlier one that is not.
 *
 * Invariants: a QoS 2 message is delivered once, from its PUBLISH until the broker's PUBREL, across reconnects
 * of a resumed session; a message the consumer has not taken is not acknowledged; acknowledgements keep arrival
 * order; a record of a session the broker lost is never acknowledged.
 */
import * as Codec from "./codec.ts"
import { type Content, contentOf, InboundRecord, type Output, sameContent, violation } from "./output.ts"
import type * as Packets from "./packets.ts"

/** What `admit` says of a QoS 1/2 PUBLISH that brings nothing new to deliver. */
export const DUPLICATE = "duplicate"

export class Inbound {
  /** records in arrival order, not yet acknowledged */
  private line: Array<InboundRecord> = []
  private head = 0
  // maps and sets, not 65,536-entry tables: a client holds a few of them, and an idle client costs little (those
  // for crossings after a reconnect are made when one is first recorded)
  private readonly byId = new Map<number, InboundRecord>()
  /** QoS 2 identifiers whose PUBREC was sent: a resent PUBLISH is answered, not delivered, until PUBREL */
  private readonly awaitingRelease = new Set<number>()
  private releasing = 0
  /**
   * What the messages awaiting PUBREL were (topic and payload), those of this process (a restored identifier has
   * none): a resend (DUP) with other content under the identifier is another message (see `admit`)
   */
  private awaitedContent: Map<number, Content> | undefined = undefined
  /**
   * QoS 1 identifiers acknowledged on this connection for a PUBLISH that came on an earlier one: the broker's
   * resend may cross the PUBACK. Only for this connection: a later resend under the identifier is another message.
   */
  private ackedAcross: Map<number, Content | undefined> | undefined = undefined
  /**
   * The same for QoS 2: identifiers acknowledged (PUBREC) on this connection for a PUBLISH of an earlier one, or
   * awaiting PUBREL when it began. The broker's resend may cross the PUBREC, and the flow may even end first:
   * Mosquitto restarted from its persistence answers such a PUBREC with PUBREL, and then sends the PUBLISH again.
   * A resend (DUP) of one of them is answered again, never delivered again; where the client knows the message
   * (one of this process, not a restored identifier), only a resend with its topic and payload: another message
   * under the identifier is delivered.
   */
  private recAcross: Map<number, Content | undefined> | undefined = undefined
  /**
   * QoS 2 identifiers of `recAcross` whose flow the broker ended (PUBREL) on this connection, with their message:
   * Mosquitto restarted from its persistence may send the message again right after its PUBREL (its restored
   * queue keeps the identifier), and when the connection ends first (Mosquitto closes it for the PUBCOMP that
   * crossed that resend), the resend comes on the next connection. There, a resend (DUP) under the identifier with
   * the same topic and payload is answered, not delivered again; any other is a message of its own.
   */
  private releasedAcross: Map<number, Content> | undefined = undefined
  /** answers waiting in the line (see `answer`) by identifier, in arrival order: a new message under it cancels them */
  private answers: Map<number, Array<InboundRecord>> | undefined = undefined
  /** connections so far: a record keeps the one its PUBLISH came on */
  private connection = 0
  private epoch = 0
  private unacknowledged = 0
  /** topic aliases the broker set on this connection */
  private aliases: Array<string | undefined> = []
  private connected = false

  private readonly version: Packets.ProtocolVersion
  private readonly receiveMaximum: number
  private readonly topicAliasMaximum: number
  /** a broker over the Receive Maximum gets DISCONNECT 0x93 rather than a warning */
  private readonly strict: boolean
  /** the broker went over the Receive Maximum on this connection (warned once) */
  private exceeded = false
  /** the broker reused an identifier still held (warned once per connection) */
  private reused = false
  constructor(
    version: Packets.ProtocolVersion,
    receiveMaximum: number,
    topicAliasMaximum: number,
    strict: boolean
  ) {
    this.version = version
    this.receiveMaximum = receiveMaximum
    this.topicAliasMaximum = topicAliasMaximum
    this.strict = strict
  }

  /** Messages received and not yet acknowledged, with the QoS 2 ones awaiting PUBREL. */
  get inFlight(): number {
    return this.unacknowledged + this.releasing
  }

  /** The topic of a PUBLISH once its alias is resolved, or undefined after recording a violation. */
  topicOf(packet: Packets.Publish, out: Output): string | undefined {
    let topic = packet.topic
    const alias = packet.topicAlias
    if (alias !== undefined) {
      if (alias === 0 || alias > this.topicAliasMaximum) {
        out.fail(
          violation(this.version, `a PUBLISH with topic alias ${alias}, outside 1 to ${this.topicAliasMaximum}`, 0x94)
        )
        return undefined
      }
      if (topic === "") {
        const known = this.aliases[alias]
        if (known === undefined) {
          out.fail(violation(this.version, `a PUBLISH with topic alias ${alias}, which was never set`, 0x82))
          return undefined
        }
        topic = known
      } else {
        this.aliases[alias] = topic
      }
    }
    if (topic === "") {
      out.fail(violation(this.version, "a PUBLISH with an empty topic and no topic alias [MQTT-3.3.2-1]", 0x82))
      return undefined
    }
    return topic
  }

  /**
   * Admits a QoS 1/2 PUBLISH: a new record, or `DUPLICATE` for a resend of a message the client holds or has
   * delivered (answered here when its acknowledgement is due again), or undefined after a violation.
   */
  admit(packet: Packets.Publish, out: Output, topic: string): InboundRecord | typeof DUPLICATE | undefined {
    const id = packet.id
    // what tells the broker's resend of a message from another one under its identifier: taken now, before the
    // application has the payload (it may change it)
    const content = contentOf(topic, packet.payload)
    const held = this.byId.get(id)
    if (held !== undefined) {
      // the same identifier while the client still holds the message: a resend (DUP set [MQTT-3.3.1-1]) is not
      // delivered again while a copy still waits in a queue. One whose every copy the application was handed and
      // has not acknowledged (manual acknowledgement: its handler failed, or still runs) is delivered again, as
      // the broker asks: else a failed message would hold back every later acknowledgement for good. A PUBLISH
      // without DUP is not a resend: a new message from a broker that reused an identifier still unacknowledged
      // (Mosquitto does, past 65,535 messages in flight; a broker that lost the flow does, such as another node
      // after a failover): delivered, not lost, each acknowledged in turn. Nor is a DUP with another topic or
      // payload: a node that resumed an older session resends a message of its own under the identifier
      if (packet.dup && (held.content === undefined || sameContent(held.content, content))) {
        if (held.queued > 0 || held.pending === 0) {
          // the broker still holds its flow, on this connection: its copies are current again (see `isStale`)
          held.resentOn = this.connection
          return DUPLICATE
        }
        this.forget(held, out)
      } else {
        this.warnReused(id, "while its message was unacknowledged", out)
        // QoS 2: the held message's PUBREC would answer the new one before it is taken (the broker holds one flow
        // per identifier), so the held one is let go, unacknowledged; QoS 1 keeps both (Mosquitto, past 65,535
        // in flight, holds both flows, and each PUBACK ends one), unless the held one came on an earlier connection
        // and was not resent on this one (`isStale`): the broker (another node after a failover, one that lost the
        // flow) holds no flow for it, and its PUBACK would acknowledge the new message before it is taken
        if (packet.qos === 2 || held.qos === 2 || this.isStale(held)) this.forget(held, out)
      }
    }
    if (packet.qos === 2 && this.awaitingRelease.has(id)) {
      const known = this.awaitedContent?.get(id)
      if (packet.dup && (known === undefined || sameContent(known, content))) {
        return this.answer(id, 2, out)
      }
      // without DUP, not a resend of the message released by the PUBREC [MQTT-3.3.1-1]: the broker reuses an
      // identifier only once its flow ended [MQTT-2.2.1-3], so it holds that flow no more (another node after a
      // failover, one that lost its state): the flow ends here and the message is new, not lost as a duplicate.
      // So with a DUP of another message: a node that resumed an older session resends its own
      this.release(id, out)
      this.warnReused(id, "while its PUBREL was awaited", out)
    }
    const ackedAcross = this.ackedAcross
    if (ackedAcross?.has(id)) {
      const known = ackedAcross.get(id)
      ackedAcross.delete(id)
      // the resend of that message (not one of the broker's own under the identifier: see the DUP above)
      if (
        packet.dup && packet.qos === 1 &&
        (known === undefined || sameContent(known, content))
      ) {
        return this.answer(id, 1, out)
      }
    }
    const recAcross = this.recAcross
    if (recAcross?.has(id)) {
      const known = recAcross.get(id)
      if (
        packet.dup && packet.qos === 2 &&
        (known === undefined || sameContent(known, content))
      ) {
        // its flow ended here before the broker's resend arrived: the flow starts again, answered, not delivered
        if (!this.awaitingRelease.has(id)) {
          this.awaitingRelease.add(id)
          this.releasing++
          out.journal?.push({ t: "a", id })
          // what tells a later resend from another message under the identifier, as when it first awaited PUBREL
          if (known !== undefined) (this.awaitedContent ??= new Map()).set(id, known)
        }
        return this.answer(id, 2, out)
      }
      recAcross.delete(id)
    }
    if (this.version === 5 && this.inFlight >= this.receiveMaximum) {
      const reason = `more than ${this.receiveMaximum} unacknowledged QoS 1/2 publishes (Receive Maximum)`
      if (this.strict) {
        out.fail(violation(this.version, reason, 0x93))
        return undefined
      }
      // Mosquitto 2.0.11 sends past the client's Receive Maximum while it holds a backlog for the client:
      // disconnecting (0x93) would lose what a clean session held, and the queue's bound holds anyway (the
      // reader waits for room), so the message is taken and the excess reported once per connection
      if (!this.exceeded) {
        this.exceeded = true
        out.warnings.push(`the broker sent ${reason}; taken, not disconnected (strictReceiveMaximum: true would)`)
      }
    }
    this.newFlow(id)
    const record = new InboundRecord(id, packet.qos as 1 | 2, this.epoch, this.connection)
    // to know the broker's resend of it from another message under its identifier (QoS 2: also once acknowledged)
    record.content = content
    this.byId.set(id, record)
    this.line.push(record)
    this.unacknowledged++
    return record
  }

  /**
   * Answers a resend that is not delivered again (its PUBACK, or its PUBREC while the identifier awaits PUBREL) in
   * its turn: at once when nothing earlier waits, else behind the messages that came before it, whose
   * acknowledgements go first [MQTT-4.6.0-2, MQTT-4.6.0-3].
   */
  private answer(id: number, qos: 1 | 2, out: Output): typeof DUPLICATE {
    if (!this.waitsOnThisConnection()) {
      out.acks.push(qos === 1 ? Codec.PUBACK : Codec.PUBREC, id)
      return DUPLICATE
    }
    const record = new InboundRecord(id, qos, this.epoch, this.connection)
    record.answer = true
    const answers = this.answers ??= new Map()
    const waiting = answers.get(id)
    if (waiting === undefined) answers.set(id, [record])
    else waiting.push(record)
    this.line.splice(this.afterThisConnection(), 0, record)
    return DUPLICATE
  }

  /**
   * Whether a record the broker sent (or resent) on this connection waits in the line: an answer goes behind it.
   * A record of an earlier connection not resent on this one yet comes after the answer in the broker's order.
   */
  private waitsOnThisConnection(): boolean {
    return this.afterThisConnection() > this.head
  }

  /** The place in the line just after the last record the broker sent (or resent) on this connection. */
  private afterThisConnection(): number {
    for (let i = this.line.length - 1; i >= this.head; i--) {
      const r = this.line[i]
      if (r.forgotten) continue
      if (
        r.answer
          ? r.connection === this.connection
          : r.connection === this.connection || r.resentOn === this.connection
      ) {
        return i + 1
      }
    }
    return this.head
  }

  /**
   * A new message under `id`: the broker ended every earlier flow under it [MQTT-2.2.1-3], so what the client kept
   * of them goes. An answer still waiting would acknowledge the new message before the application has it; a
   * released message's content would take the new one's resend, on the next connection, for the old one's.
   */
  private newFlow(id: number): void {
    // on every QoS 1/2 arrival: both maps are empty but after a reconnect's crossings
    this.releasedAcross?.delete(id)
    const answers = this.answers
    if (answers === undefined || answers.size === 0) return
    const waiting = answers.get(id)
    if (waiting === undefined) return
    for (const answer of waiting) answer.forgotten = true
    answers.delete(id)
  }

  /**
   * Admits a QoS 1/2 message the client drops unread (a PUBLISH over its Maximum Packet Size on MQTT 3.1.1): it is
   * acknowledged in its turn, as if taken, so that the broker does not send it again. Returns whether it was new
   * (not a resend the client answered, nor a violation).
   */
  pass(packet: Packets.Publish, out: Output): boolean {
    const record = this.admit(packet, out, packet.topic)
    if (record === undefined || record === DUPLICATE) return false
    this.flush(out)
    return true
  }

  /**
   * Lets go of a held record: the broker sends it again (its copies' late acknowledgements then do nothing), or
   * reused its identifier for a new QoS 2 message. It is never acknowledged; the new record goes to the end of the
   * line.
   */
  private forget(record: InboundRecord, out: Output): void {
    // it stays in the line, skipped there without an acknowledgement (`flush`): no search, no splice
    record.forgotten = true
    record.pending = 0
    record.content = undefined
    // a stored session must not take a later message under the identifier for this one
    if (record.journaled) out.journal?.push({ t: "x", id: record.id })
    if (this.byId.get(record.id) === record) this.byId.delete(record.id)
    this.unacknowledged--
  }

  private warnReused(id: number, when: string, out: Output): void {
    if (this.reused) return
    this.reused = true
    out.warnings.push(`the broker reused packet identifier ${id} ${when}: taken as a new message`)
  }

  /** Ends the QoS 2 flow of an identifier awaiting PUBREL. */
  private release(id: number, out: Output): void {
    this.awaitingRelease.delete(id)
    this.awaitedContent?.delete(id)
    this.releasing--
    out.journal?.push({ t: "x", id })
  }

  /**
   * A copy of a record's message was taken or acknowledged. A durable session journals a QoS 2 identifier as
   * delivered now, even when its PUBREC waits behind an earlier message: after a restart the broker's resend of
   * it is answered, not delivered again (the caller waits for the journal: see `Driver.settled`).
   */
  settled(record: InboundRecord, out: Output): void {
    if (record.epoch !== this.epoch || record.pending === 0) return
    record.pending--
    if (record.pending > 0) return
    if (record.qos === 2 && out.journal !== undefined && !record.journaled) {
      record.journaled = true
      out.journal.push({ t: "a", id: record.id })
    }
    this.flush(out)
  }

  /** An answer left the line: it is the first of its identifier's (they leave in arrival order). */
  private answered(record: InboundRecord): void {
    const waiting = this.answers?.get(record.id)
    if (waiting?.[0] !== record) return
    waiting.shift()
    if (waiting.length === 0) this.answers!.delete(record.id)
  }

  /** Acknowledges the done records at the front of the line. */
  private flush(out: Output): void {
    if (!this.connected) return
    while (this.head < this.line.length) {
      const record = this.line[this.head]
      if (record.pending > 0) break
      this.head++
      if (record.forgotten) continue
      if (record.answer) {
        // an answer is for the connection it came on (the broker resends again on the next one); a QoS 2 flow the
        // broker ended meanwhile (PUBREL) is not answered again
        this.answered(record)
        if (record.connection !== this.connection) continue
        if (record.qos === 1) out.acks.push(Codec.PUBACK, record.id)
        else if (this.awaitingRelease.has(record.id)) out.acks.push(Codec.PUBREC, record.id)
        continue
      }
      // a later message under the same identifier (reused, see `admit`) keeps its entry
      if (this.byId.get(record.id) === record) this.byId.delete(record.id)
      this.unacknowledged--
      if (record.qos === 1) {
        out.acks.push(Codec.PUBACK, record.id)
        if (record.connection !== this.connection) (this.ackedAcross ??= new Map()).set(record.id, record.content)
        record.content = undefined
      } else {
        // a durable session records the identifier before the PUBREC is written: after a restart, a resent
        // PUBLISH is still answered, not delivered again
        if (!record.journaled) out.journal?.push({ t: "a", id: record.id })
        out.acks.push(Codec.PUBREC, record.id)
        if (record.connection !== this.connection) (this.recAcross ??= new Map()).set(record.id, record.content)
        if (!this.awaitingRelease.has(record.id)) {
          this.awaitingRelease.add(record.id)
          this.releasing++
          // until the PUBREL (the record itself may wait in the line behind an unread one)
          if (record.content !== undefined) (this.awaitedContent ??= new Map()).set(record.id, record.content)
        }
        record.content = undefined
      }
    }
    if (this.head === this.line.length) {
      this.line = []
      this.head = 0
    } else if (this.head > 1024 && this.head * 2 > this.line.length) {
      this.line = this.line.slice(this.head)
      this.head = 0
    }
  }

  /** PUBREL: the QoS 2 flow ends with PUBCOMP; an unknown identifier is answered too (our PUBCOMP may be lost). */
  onPubrel(ack: Packets.Ack, out: Output): void {
    const id = ack.id
    if (this.awaitingRelease.has(id)) {
      this.release(id, out)
      // a message of this process (its content known), not an identifier restored or answered blind
      const content = this.recAcross?.get(id)
      if (content !== undefined) (this.releasedAcross ??= new Map()).set(id, content)
      out.acks.push(Codec.PUBCOMP, id)
    } else if (this.byId.has(id)) {
      out.fail(violation(this.version, `a PUBREL for packet ${id} before its PUBREC was sent`, 0x82))
    } else if (this.version === 5) {
      out.acks.pushWithReason(Codec.PUBCOMP, id, 0x92)
    } else {
      out.acks.push(Codec.PUBCOMP, id)
    }
  }

  /** A connection carries the session. Without Session Present the broker forgot every flow: so does the client. */
  resume(sessionPresent: boolean, out: Output): void {
    this.connected = true
    this.exceeded = false
    this.reused = false
    this.aliases = []
    this.connection++
    this.ackedAcross = undefined
    this.recAcross = undefined
    // the line's answers are for the connection they came on: skipped there, and no longer in the way of a new one
    this.answers = undefined
    const released = this.releasedAcross
    this.releasedAcross = undefined
    if (!sessionPresent) {
      out.journal?.push({ t: "X" })
      this.epoch++
      this.line = []
      this.head = 0
      this.byId.clear()
      this.awaitingRelease.clear()
      this.awaitedContent = undefined
      this.releasing = 0
      this.unacknowledged = 0
      return
    }
    if (this.awaitingRelease.size > 0 || released !== undefined) {
      const recAcross = this.recAcross = new Map()
      for (const id of this.awaitingRelease) recAcross.set(id, this.awaitedContent?.get(id))
      // only for the connection after the one they were released on, and never over a flow awaiting PUBREL
      if (released !== undefined) {
        for (const [id, content] of released) if (!recAcross.has(id)) recAcross.set(id, content)
      }
    }
    this.flush(out)
  }

  /** Puts back the QoS 2 identifiers of a stored session that await PUBREL. */
  restore(awaitingRelease: Iterable<number>): void {
    for (const id of awaitingRelease) {
      if (!this.awaitingRelease.has(id)) this.releasing++
      this.awaitingRelease.add(id)
    }
  }

  /**
   * What the line holds back: messages done (taken, or acknowledged by the application) whose acknowledgement
   * waits behind an earlier one that is not [MQTT-4.6.0-2/3], with how many of them are QoS 2, and those not done.
   */
  heldBack(): { readonly done: number; readonly qos2: number; readonly waiting: number } {
    let done = 0
    let qos2 = 0
    let waiting = 0
    for (let i = this.head; i < this.line.length; i++) {
      const record = this.line[i]
      if (record.forgotten || record.answer || record.epoch !== this.epoch) continue
      if (record.pending > 0) waiting++
      else if (waiting > 0) {
        done++
        if (record.qos === 2) qos2++
      }
    }
    return { done, qos2, waiting }
  }

  /**
   * Whether a held message's flow may be the broker's no more: its connection ended, and the broker has not resent
   * it (DUP) on the current one. A broker resends what it still holds of a resumed session [MQTT-4.4.0-1]; one that
   * does not holds it no more: another client took the session over meanwhile and acknowledged it (a consumer
   * group's member adopted while it was frozen), and whoever handles it now handles it twice.
   */
  isStale(record: InboundRecord): boolean {
    return this.connected && this.held(record) && record.connection !== this.connection &&
      record.resentOn !== this.connection
  }

  /**
   * Whether a held message waits for the next connection to tell whether it is stale: while disconnected, it cannot
   * be told (Session Present 0 will make it a message of a lost session, to be handled; Session Present 1 without
   * a resend, a stale one).
   */
  awaitsConnection(record: InboundRecord): boolean {
    return !this.connected && this.held(record)
  }

  private held(record: InboundRecord): boolean {
    return record.epoch === this.epoch && !record.forgotten && record.pending > 0
  }

  /**
   * Lets go of a stale message (see `isStale`) unacknowledged, so that it holds back no later acknowledgement: a
   * broker that still holds it resends it on the next connection, or on this one if it has not yet (a new message
   * for the client then). Does nothing to a message that is not stale.
   */
  abandon(record: InboundRecord, out: Output): void {
    if (!this.isStale(record)) return
    this.forget(record, out)
    this.flush(out)
  }

  /** The connection ended: acknowledgements wait for the next one. */
  lost(): void {
    this.connected = false
    this.aliases = []
  }
}
