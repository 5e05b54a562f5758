/**
 * The MQTT session as a plain, synchronous state machine: events in (a caller's operation, a decoded packet, a
 * connection established or lost, a consumer that took a message), and out, as data in an `Output`: packets to
 * write (already checked against the current connection's limits), messages to deliver and to whom, operations
 * that ended, a violation that ends the connection. No socket, fiber, clock or Effect inside.
 *
 * It is composed of three parts that share the packet identifiers: `Outgoing` (publishes), `Inbound` (the
 * broker's publishes and their acknowledgements) and `Subscriptions` (owners, requests, restore, routing). The
 * client's effectful layers (connection, keepalive, supervisor, delivery) drive it: every call is followed by
 * draining the Output (see output.ts). Calls come from several fibers, but each is synchronous, so each sees
 * and leaves the session whole.
 */
import type * as MqttClient from "../MqttClient.ts"
import * as MqttError from "../MqttError.ts"
import { MqttMessage, type QoS, type UserProperty } from "../MqttMessage.ts"
import * as Codec from "./codec.ts"
import { DUPLICATE, Inbound } from "./inbound.ts"
import type * as Journal from "./journal.ts"
import { closedByBroker, Outgoing, type OutgoingMessage, PublishEntry } from "./outgoing.ts"
import { article, type InboundRecord, type Output, violation } from "./output.ts"
import { PacketIds } from "./packetIds.ts"
import type * as Packets from "./packets.ts"
import { strayAnswer } from "./strayAck.ts"
import { type FilterSpec, type Request, Subscriptions } from "./subscriptions.ts"

export interface SessionConfig {
  readonly protocolVersion: Packets.ProtocolVersion
  readonly clientId: string
  /** Clean Start (MQTT 5) / Clean Session (3.1.1) of the first connection */
  readonly cleanStart: boolean
  /** MQTT 5 Session Expiry Interval asked for in CONNECT, seconds */
  readonly sessionExpiryInterval: number | undefined
  /** the keepalive asked for in CONNECT, seconds */
  readonly keepAlive: number
  /** the client's own cap on QoS 1/2 publishes in flight */
  readonly maxInflight: number
  /** the client's own cap on the packets it sends, below the broker's Maximum Packet Size (undefined: none) */
  readonly sendMaximumPacketSize?: number | undefined
  /** the client's Receive Maximum, announced in CONNECT (MQTT 5) */
  readonly receiveMaximum: number
  /** the client's Topic Alias Maximum, announced in CONNECT (MQTT 5) */
  readonly topicAliasMaximum: number
  /** give outgoing topics aliases (MQTT 5) */
  readonly topicAliases: boolean
  readonly offlineCapacity: number
  readonly offlineQos0: "buffer" | "fail"
  readonly offlineRequests: "wait" | "fail"
  /** a broker over the client's Receive Maximum gets DISCONNECT 0x93 (otherwise a warning) */
  readonly strictReceiveMaximum: boolean
  /** how the broker delivers a message matching several subscriptions that name no identifier */
  readonly overlapping: "single-copy" | "copy-per-subscription"
  /** MQTT 5: the Authentication Method of CONNECT (enhanced authentication), which a successful CONNACK repeats */
  readonly authenticationMethod?: string | undefined
}

/**
 * Why a successful CONNACK's Authentication Method is wrong, or `undefined`: it must repeat the CONNECT's
 * [MQTT-4.12.0-5], and a CONNACK must carry none when the CONNECT had none [MQTT-4.12.0-6].
 */
const authMethodProblem = (
  sent: string | undefined,
  received: string | undefined
): { readonly reason: string; readonly rule: string } | undefined => {
  if (sent === received) return undefined
  if (sent === undefined) {
    return {
      reason: `a CONNACK with Authentication Method "${received}", but the CONNECT asked for no authentication`,
      rule: "MQTT-4.12.0-6"
    }
  }
  return {
    reason: received === undefined
      ? `a successful CONNACK without the CONNECT's Authentication Method "${sent}"`
      : `a successful CONNACK with Authentication Method "${received}", not the CONNECT's "${sent}"`,
    rule: "MQTT-4.12.0-5"
  }
}

/** What `publish` returns besides an entry to wait for: the client is full while offline. */
export const OFFLINE_FULL = "full"

/**
 * What `publish` returns while connected when the waiting line (the publishes behind `maxInflight`) holds
 * `offlineCapacity` of them: the caller waits until it is shorter (acknowledgements make room) and tries again.
 */
export const LINE_FULL = "line full"

/**
 * How the connection ended when the broker sent DISCONNECT: its reason code, reason string and Server Reference,
 * whether the reader came to it in turn or found it among the bytes it had read ahead while it waited for room
 * (connection.ts `readAhead`).
 */
export const disconnectError = (packet: Packets.Disconnect): MqttError.ConnectionLostError =>
  new MqttError.ConnectionLostError({
    reason: "the broker sent DISCONNECT",
    reasonCode: packet.reasonCode,
    ...(packet.reasonString === undefined ? {} : { reasonString: packet.reasonString }),
    ...(packet.serverReference === undefined ? {} : { serverReference: packet.serverReference })
  })

export class Session {
  readonly ids = new PacketIds()
  readonly outgoing: Outgoing
  readonly inbound: Inbound
  readonly subscriptions: Subscriptions
  /** the client identifier: the broker's assigned one once it sent one */
  clientId: string
  /** what the CONNACK of the current (or last) connection said */
  info: MqttClient.ConnectionInfo | undefined = undefined
  /** the broker keeps the session between connections, so a reconnect resumes it */
  persistent: boolean
  connected = false
  closed: MqttError.MqttError | undefined = undefined
  private hasConnected = false
  private startedClean = false
  /**
   * the broker (`scheme://host:port`) the session was last carried by; undefined before, or after a restore from
   * the one broker of `url`; "" after a restore when `url` lists several (any of them may have carried it last)
   */
  private sessionBroker: string | undefined = undefined
  /** an Assigned Client Identifier was ignored (warned once per client) */
  private assignedIgnored = false

  readonly config: SessionConfig
  constructor(config: SessionConfig) {
    this.config = config
    const version = config.protocolVersion
    this.outgoing = new Outgoing(version, this.ids)
    this.inbound = new Inbound(version, config.receiveMaximum, config.topicAliasMaximum, config.strictReceiveMaximum)
    this.subscriptions = new Subscriptions(
      version,
      this.ids,
      config.offlineRequests,
      config.overlapping === "copy-per-subscription"
    )
    this.clientId = config.clientId
    this.persistent = version === 5 ? (config.sessionExpiryInterval ?? 0) > 0 : !config.cleanStart
  }

  get version(): Packets.ProtocolVersion {
    return this.config.protocolVersion
  }

  /** What the next CONNECT asks: a new session the first time when told so, then to resume a persistent one. */
  get cleanStart(): boolean {
    return this.hasConnected ? !this.persistent && this.config.cleanStart : this.config.cleanStart
  }

  /**
   * A CONNACK arrived for a CONNECT with `cleanStart`, from `broker` (`scheme://host:port`; undefined for a custom
   * transport). Accepted: the session resumes on the connection (the restore, the resends and the waiting
   * publishes are in `out`) and its information is returned. Refused or unacceptable: `out.error` says why and
   * nothing of it takes effect.
   *
   * Session Present from another broker than the one that carried the session last (failover across `url`): that
   * node may hold an older session of this client (brokers that do not share sessions, a node that missed the
   * last changes), so the client makes its subscriptions again, as callers were told them.
   */
  onConnack(
    connack: Packets.Connack,
    cleanStart: boolean,
    out: Output,
    broker?: string
  ): MqttClient.ConnectionInfo | undefined {
    const version = this.version
    if (connack.reasonCode !== 0) {
      const reasonString = connack.legacyReturnCode !== undefined
        ? `the broker answered with an MQTT 3.1.1 CONNACK, return code ${connack.legacyReturnCode}: it does not ` +
          `support MQTT 5; use protocolVersion 4`
        : connack.properties.reasonString
      out.fail(
        new MqttError.ConnectRefusedError({
          reasonCode: connack.reasonCode,
          protocolVersion: version,
          ...(reasonString === undefined ? {} : { reasonString }),
          ...(connack.properties.serverReference === undefined
            ? {}
            : { serverReference: connack.properties.serverReference })
        })
      )
      return undefined
    }
    if (connack.sessionPresent && cleanStart) {
      out.fail(violation(version, "Session Present in answer to a CONNECT with Clean Start [MQTT-3.2.2-4]"))
      return undefined
    }
    const p = connack.properties
    const method = authMethodProblem(this.config.authenticationMethod, p.authenticationMethod)
    if (method !== undefined) {
      out.fail(violation(version, method.reason, 0x82, { packet: "CONNACK", rule: method.rule }))
      return undefined
    }
    if (p.assignedClientIdentifier !== undefined && p.assignedClientIdentifier !== this.clientId) {
      // a server assigns one only for a CONNECT with an empty Client Identifier [MQTT 5 3.2.2.3.7]: the CONNECT
      // carried `this.clientId`, so a client that sent its own keeps it
      if (this.clientId === "") {
        this.clientId = p.assignedClientIdentifier
        out.journal?.push({ t: "c", c: this.clientId })
      } else if (!this.assignedIgnored) {
        this.assignedIgnored = true
        out.warnings.push(
          `the broker assigned the client identifier "${p.assignedClientIdentifier}" to a client that sent its ` +
            `own, "${this.clientId}", which it keeps: a server assigns one only when the CONNECT's is empty ` +
            `[MQTT 5 3.2.2.3.7]`
        )
      }
    }
    const sessionExpiryInterval = p.sessionExpiryInterval ?? this.config.sessionExpiryInterval
    if (version === 5) this.persistent = (sessionExpiryInterval ?? 0) > 0
    const info: MqttClient.ConnectionInfo = {
      protocolVersion: version,
      clientId: this.clientId,
      sessionPresent: connack.sessionPresent,
      keepAlive: p.serverKeepAlive ?? this.config.keepAlive,
      receiveMaximum: p.receiveMaximum ?? 65535,
      maximumQoS: (p.maximumQoS ?? 2) as QoS,
      retainAvailable: p.retainAvailable ?? true,
      maximumPacketSize: p.maximumPacketSize,
      topicAliasMaximum: p.topicAliasMaximum ?? 0,
      sessionExpiryInterval,
      reasonString: p.reasonString,
      userProperties: p.userProperties ?? [],
      wildcardSubscriptionAvailable: p.wildcardSubscriptionAvailable ?? true,
      subscriptionIdentifiersAvailable: p.subscriptionIdentifiersAvailable ?? true,
      sharedSubscriptionAvailable: p.sharedSubscriptionAvailable ?? true,
      responseInformation: p.responseInformation,
      serverReference: p.serverReference
    }
    // closed while the connection was made (supervisor.ts closes it with DISCONNECT): nothing of the session is
    // resumed on it, as no packet is acted on once closed (`onPacket`)
    if (this.closed !== undefined) return info
    if (!this.hasConnected) this.startedClean = cleanStart
    this.hasConnected = true
    this.connected = true
    this.info = info
    const present = connack.sessionPresent
    const elsewhere = present && broker !== undefined && this.sessionBroker !== undefined &&
      broker !== this.sessionBroker
    this.sessionBroker = broker
    // the client's own cap, where it is below the broker's (the only one on MQTT 3.1.1)
    const own = this.config.sendMaximumPacketSize
    const ownLower = own !== undefined && (info.maximumPacketSize === undefined || own < info.maximumPacketSize)
    const maximumPacketSize = ownLower ? own : info.maximumPacketSize
    const maximumPacketSizeBy = ownLower ? "sendMaximumPacketSize allows" : "the broker accepts"
    this.subscriptions.resume(
      present,
      {
        maximumPacketSize,
        maximumPacketSizeBy,
        subscriptionIdentifiersAvailable: info.subscriptionIdentifiersAvailable,
        wildcardSubscriptionAvailable: info.wildcardSubscriptionAvailable,
        sharedSubscriptionAvailable: info.sharedSubscriptionAvailable
      },
      this.startedClean,
      out,
      elsewhere
    )
    this.outgoing.connected(
      {
        maximumQoS: info.maximumQoS,
        retainAvailable: info.retainAvailable,
        maximumPacketSize,
        maximumPacketSizeBy,
        topicAliasMaximum: info.topicAliasMaximum,
        // the client's own cap: a broker with thousands of messages in flight for one client slows down for all
        // of them (Mosquitto scans its in-flight list for each packet)
        quota: Math.min(info.receiveMaximum, this.config.maxInflight)
      },
      present,
      this.config.topicAliases,
      out,
      broker
    )
    this.inbound.resume(present, out)
    return info
  }

  /**
   * Puts back a stored session (a durable store, after a restart): its publishes in their order with their
   * identifiers and states (written ones are resent with DUP on a resumed session, as new otherwise), the QoS 2
   * identifiers awaiting PUBREL, the identifiers of QoS 2 publishes refused on a resend (kept out of use), and the subscriptions to restore if the broker lost the session. Their callers
   * are gone: the publishes end silently.
   */
  restore(image: Journal.Image, nodes = 1): void {
    // which node of a list carried the stored session last is not stored: a resumed session is taken as another's
    if (nodes > 1) this.sessionBroker = ""
    if (image.clientId !== undefined) this.clientId = image.clientId
    const entries = [...image.publishes.values()].sort((a, b) => a.key - b.key).map((stored) => {
      const message: OutgoingMessage = {
        topic: stored.topic,
        payload: stored.payload,
        qos: stored.qos,
        retain: stored.retain,
        properties: stored.properties,
        encoded: Codec.encodePublish(
          this.version,
          stored.topic,
          stored.payload,
          stored.qos,
          stored.retain,
          stored.properties
        )
      }
      const entry = new PublishEntry(message, false)
      entry.key = stored.key
      entry.id = stored.id
      entry.state = stored.state
      entry.written = stored.state !== 0
      entry.dup = stored.state === 1
      return entry
    })
    this.outgoing.restore(entries, image.retired)
    this.inbound.restore(image.awaitingRelease)
    this.subscriptions.restore(image.subscriptions)
  }

  /**
   * A packet from the broker, after its CONNACK. Once the client closed, none is acted on: the session's flows
   * are over for this client (a durable session's continue in the next client, from the store, which an answer
   * now, a PUBREL to a PUBREC the store does not know of, would contradict).
   */
  onPacket(packet: Packets.Packet, out: Output): void {
    if (this.closed !== undefined) return
    switch (packet._tag) {
      case "Publish":
        return this.onPublish(packet, out)
      case "Puback":
        if (this.outgoing.onPuback(packet, out) === "unknown") return this.notInFlight(packet, out)
        return this.pump(out)
      case "Pubrec":
        if (this.outgoing.onPubrec(packet, out) === "unknown") return this.notInFlight(packet, out)
        return this.pump(out)
      case "Pubcomp":
        if (this.outgoing.onPubcomp(packet, out) === "unknown") return this.notInFlight(packet, out)
        return this.pump(out)
      case "Pubrel":
        return this.inbound.onPubrel(packet, out)
      case "Suback":
      case "Unsuback":
        if (this.subscriptions.onAck(packet, out) === "unknown") return this.notInFlight(packet, out)
        return this.pump(out)
      case "Pingresp":
        out.pong = true
        return
      case "Auth":
        out.auth.push(packet)
        return
      case "Disconnect":
        return out.fail(disconnectError(packet))
      case "Connack":
        return out.fail(violation(this.version, "a second CONNACK"))
    }
  }

  /**
   * An acknowledgement for a packet identifier no flow of that kind holds. Held by a flow of the other kind (a
   * PUBACK for a SUBSCRIBE, a SUBACK for a PUBLISH): the broker and the client disagree about that flow, a protocol
   * error that closes the connection (MQTT 5: DISCONNECT 0x82); the flow is sent again on the next one. Held by
   * none ("stray"): a mismatch of session state, not a broken connection (see strayAck.ts for the specification's
   * text). PUBREC is answered with PUBREL and PUBREL with PUBCOMP (0x92, Packet Identifier not found, in MQTT 5);
   * the others are ignored: nothing the session holds can be completed or freed by an identifier that does not
   * match.
   */
  private notInFlight(packet: Packets.Ack | Packets.Suback | Packets.Unsuback, out: Output): void {
    const holder = this.outgoing.holds(packet.id) ? "a PUBLISH" : this.subscriptions.holder(packet.id)
    if (holder !== undefined) {
      const name = packet._tag.toUpperCase()
      return out.fail(
        violation(this.version, `${article(name)} for packet ${packet.id}, ${holder}`, 0x82, { packet: name })
      )
    }
    const answer = strayAnswer(packet, this.version)
    if (answer !== undefined) out.send.push(answer)
    out.warnings.push(
      `the broker sent a ${packet._tag.toUpperCase()} for packet ${packet.id}, which is not in flight: ` +
        (answer === undefined ? "ignored" : "answered")
    )
  }

  private onPublish(packet: Packets.Publish, out: Output): void {
    const topic = this.inbound.topicOf(packet, out)
    if (topic === undefined) return
    const owners = this.subscriptions.route(topic, packet, out)
    if (owners === undefined) return
    let record: InboundRecord | undefined
    if (packet.qos > 0) {
      const admitted = this.inbound.admit(packet, out, topic)
      if (admitted === undefined || admitted === DUPLICATE) return
      record = admitted
      record.pending = owners.length
      // every copy starts out waiting for the application (Deliveries counts each one down as it is handed out)
      record.queued = owners.length
    }
    let properties = packet.properties
    const identifiers = properties?.subscriptionIdentifiers
    if (identifiers !== undefined) {
      const visible = this.subscriptions.visibleIdentifiers(identifiers)
      if (visible !== identifiers) {
        const { subscriptionIdentifiers: _, ...rest } = properties!
        properties = visible === undefined ? rest : { ...rest, subscriptionIdentifiers: visible }
      }
    }
    const message = new MqttMessage(topic, packet.payload, packet.qos, packet.retain, packet.dup, properties)
    out.deliver.push({ message, owners, record })
  }

  /**
   * A PUBLISH over the client's Maximum Packet Size on MQTT 3.1/3.1.1, which cannot tell the broker the limit:
   * `packet` is its headers (no payload), `size` its size in bytes. It is dropped unread, as an MQTT 5 broker
   * discards what is over the client's limit [MQTT-3.1.2-25], counted and reported, and a QoS 1/2 one is
   * acknowledged in its turn: a persistent session would otherwise send it again after every reconnect, for good.
   */
  onOversizedPublish(packet: Packets.Publish, size: number, maximum: number, out: Output): void {
    if (this.closed !== undefined) return
    // a resend of one dropped before is answered again (in `pass`), not counted again
    if (packet.qos > 0 && !this.inbound.pass(packet, out)) return
    out.dropped++
    out.warnings.push(
      `dropped a PUBLISH of ${size} bytes on "${packet.topic}", over the client's Maximum Packet Size of ${maximum}` +
        (packet.qos === 0 ? "" : `, and acknowledged it (QoS ${packet.qos})`) +
        ": MQTT 3.1.1 cannot tell the broker the limit"
    )
  }

  /** Writes what waits for identifiers: requests first (never held back by publishes), then publishes. */
  pump(out: Output): void {
    this.subscriptions.pump(out)
    this.outgoing.pump(out)
  }

  /** A copy of a received message was taken by its consumer (or acknowledged by the application). */
  settled(record: InboundRecord, out: Output): void {
    this.inbound.settled(record, out)
  }

  /** Whether a received message's flow may be the broker's no more (see `Inbound.isStale`). */
  isStale(record: InboundRecord): boolean {
    return this.inbound.isStale(record)
  }

  /** Whether a received message waits for the next connection to tell whether it is stale. */
  awaitsConnection(record: InboundRecord): boolean {
    return this.inbound.awaitsConnection(record)
  }

  /** Lets go of a stale received message unacknowledged (see `Inbound.abandon`). */
  abandon(record: InboundRecord, out: Output): void {
    this.inbound.abandon(record, out)
  }

  /**
   * Accepts a publish: undefined when it was written and is done (QoS 0), an entry that ends through the
   * Output, `OFFLINE_FULL` when disconnected with the offline buffer full, `LINE_FULL` when connected with the
   * waiting line full (`lineHasRoom` tells when to try again; not with `lineUnbounded`), or an error at once.
   */
  publish(
    message: OutgoingMessage,
    out: Output,
    lineUnbounded = false
  ): PublishEntry | undefined | MqttError.MqttError | typeof OFFLINE_FULL | typeof LINE_FULL {
    if (this.closed !== undefined) return this.closed
    if (this.connected) {
      if (!lineUnbounded && !this.lineHasRoom) return LINE_FULL
    } else {
      if (message.qos === 0 && this.config.offlineQos0 === "fail") {
        return new MqttError.OfflineError({ operation: "publish", reason: "QoS 0 is not buffered while offline" })
      }
      if (this.outgoing.offline >= this.config.offlineCapacity) return OFFLINE_FULL
    }
    return this.outgoing.publish(message, out)
  }

  /**
   * Whether the waiting line takes one more publish while connected: it holds fewer than `offlineCapacity` (at
   * least one always fits), or the session is closed (the publish then fails at once).
   */
  get lineHasRoom(): boolean {
    return this.lineRoom > 0
  }

  /** How many more publishes the waiting line takes while connected (`Infinity` once closed). */
  get lineRoom(): number {
    return this.closed !== undefined ? Infinity : Math.max(1, this.config.offlineCapacity) - this.outgoing.waiting
  }

  /** An owner claims filters with one SUBSCRIBE. */
  subscribe(
    owner: number,
    specs: ReadonlyArray<FilterSpec>,
    identifier: number,
    userProperties: ReadonlyArray<UserProperty> | undefined,
    out: Output
  ): Request | MqttError.MqttError {
    const refused = this.refusesRequest("subscribe")
    return refused ?? this.subscriptions.subscribe(owner, specs, identifier, userProperties, out)
  }

  /** An owner lets go of filters: undefined when no UNSUBSCRIBE is needed (the call is done). */
  unsubscribe(
    owner: number,
    filters: ReadonlyArray<string>,
    userProperties: ReadonlyArray<UserProperty> | undefined,
    out: Output
  ): Request | undefined | MqttError.MqttError {
    const refused = this.refusesRequest("unsubscribe")
    return refused ?? this.subscriptions.unsubscribe(owner, filters, userProperties, out)
  }

  private refusesRequest(operation: "subscribe" | "unsubscribe"): MqttError.MqttError | undefined {
    if (this.closed !== undefined) return this.closed
    if (!this.connected && this.config.offlineRequests === "fail") {
      return new MqttError.OfflineError({ operation, reason: "the client is reconnecting" })
    }
    return undefined
  }

  /** The connection ended; the session waits for the next one. */
  lost(error: MqttError.MqttError, out: Output): void {
    this.connected = false
    this.outgoing.lost(closedByBroker(error))
    this.inbound.lost()
    this.subscriptions.lost(error, out)
  }

  /** The client stops for good: every operation fails with `error`. */
  close(error: MqttError.MqttError, out: Output): void {
    if (this.closed !== undefined) return
    this.closed = error
    this.connected = false
    this.outgoing.close(error, out)
    this.subscriptions.close(error, out)
    this.inbound.lost()
    const held = this.inbound.heldBack()
    if (held.done > 0) {
      out.warnings.push(
        `closing with ${held.done} message(s) taken but not acknowledged to the broker: acknowledgements go in ` +
          `arrival order [MQTT-4.6.0-2/3], and theirs wait behind ${held.waiting} earlier message(s) not taken ` +
          "(a priority or LIFO queue, or subscription streams read unevenly, take messages out of arrival order). " +
          "The broker sends them again to the next session" +
          (held.qos2 > 0 ? `, the ${held.qos2} QoS 2 one(s) among them too unless the client has a \`store\`` : "")
      )
    }
  }
}
