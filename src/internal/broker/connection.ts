/**
 * One client connection to the test broker: parses what the client writes, answers each packet as an MQTT
 * 3.1.1 or 5 broker does, and closes the connection on a protocol violation (MQTT 5: DISCONNECT with the reason
 * code first). Everything runs synchronously in the caller: the client's write, or a broker timer.
 *
 * @internal
 */
import type * as MqttPacket from "mqtt-packet"
import { Buffer } from "node:buffer"
import type { Peer, Wire } from "../memorySocket.ts"
import * as Topic from "../topic.ts"
import * as Outbound from "./outbound.ts"
import * as Packets from "./packets.ts"
import type { Delivery, Message, QoS, Sender, Session, Subscription } from "./session.ts"

/** The broker's limits and features, as announced in CONNACK and enforced. */
export interface Limits {
  /** QoS 1/2 messages sent to an MQTT 3.1.1 client and not yet acknowledged, at most. */
  readonly maxInflight: number
  /** Messages queued per session beyond the window, at most; more are dropped. */
  readonly maxQueued: number
  /** MQTT 5: announced in CONNACK. */
  readonly receiveMaximum: number
  readonly maximumQoS: QoS
  readonly retainAvailable: boolean
  /** MQTT 5: topic aliases a client may use towards the broker. */
  readonly topicAliasMaximum: number
}

/** What a connection needs from the broker. */
export interface Hub {
  readonly limits: Limits
  readonly now: () => number
  readonly schedule: (millis: number, f: () => void) => () => void
  /** Takes the session for a CONNECT: `{ session, present }`, or the reason code that refuses it. */
  readonly attach: (
    connection: Connection,
    connect: MqttPacket.IConnectPacket,
    clientId: string
  ) => { readonly session: Session; readonly present: boolean } | number
  /** Routes a published message; returns how many subscriptions matched. */
  readonly publish: (message: Message) => number
  /** Sends the retained messages that match a new subscription. */
  readonly sendRetained: (session: Session, subscription: Subscription) => void
  /** The connection is gone; `publishWill` when it ended without a normal DISCONNECT. */
  readonly detach: (connection: Connection, publishWill: boolean) => void
  readonly newClientId: () => string
  /** Something tests may wait for changed: a connection, a subscription. */
  readonly changed: () => void
}

const MALFORMED = 0x81
const PROTOCOL_ERROR = 0x82
const KEEP_ALIVE_TIMEOUT = 0x8d
const TOPIC_NAME_INVALID = 0x90
const TOPIC_ALIAS_INVALID = 0x94
const RETAIN_NOT_SUPPORTED = 0x9a
const QOS_NOT_SUPPORTED = 0x9b

export class Connection implements Peer, Sender {
  protocolVersion: 4 | 5 = 4
  session: Session | undefined = undefined
  clientId: string | undefined = undefined
  private state: "connecting" | "connected" | "closed" = "connecting"
  private keepAlive = 0
  private lastReceived: number
  private cancelKeepAlive: (() => void) | undefined = undefined
  private readonly aliases = new Map<number, string>()
  private clientReceiveMaximum = 65_535
  maximumPacketSize: number | undefined = undefined
  private readonly parser = Packets.parser(
    (packet) => this.handle(packet),
    () => this.fail(MALFORMED)
  )

  private readonly hub: Hub
  private readonly wire: Wire

  constructor(hub: Hub, wire: Wire) {
    this.hub = hub
    this.wire = wire
    this.lastReceived = hub.now()
  }

  get isConnected(): boolean {
    return this.state === "connected"
  }

  get sendWindow(): number {
    return this.protocolVersion === 5 ? this.clientReceiveMaximum : this.hub.limits.maxInflight
  }

  // ---- Peer: what the client writes, and its closing -----------------------------------------------------

  receive(bytes: Uint8Array): void {
    if (this.state === "closed") return
    this.lastReceived = this.hub.now()
    try {
      this.parser.parse(bytes)
    } catch {
      // a bug of the broker, not of the client: end the connection rather than the client's fiber
      this.close({ reasonCode: undefined, publishWill: true, how: "reset" })
    }
  }

  closed(): void {
    this.close({ reasonCode: undefined, publishWill: true, how: undefined })
  }

  // ---- closing ---------------------------------------------------------------------------------------------

  /**
   * Closes the connection once: MQTT 5 DISCONNECT with `reasonCode` first (when connected), then the session is
   * detached (publishing the will when asked) and the wire ended (`"end"`), reset (`"reset"`), or left alone
   * when the client closed it.
   */
  close(options: {
    readonly reasonCode: number | undefined
    readonly publishWill: boolean
    readonly how: "end" | "reset" | undefined
  }): void {
    if (this.state === "closed") return
    const wasConnected = this.state === "connected"
    this.state = "closed"
    if (wasConnected && this.protocolVersion === 5 && options.reasonCode !== undefined && options.how === "end") {
      this.send({ cmd: "disconnect", reasonCode: options.reasonCode })
    }
    this.cancelKeepAlive?.()
    this.hub.detach(this, options.publishWill)
    if (options.how === "end") this.wire.end()
    else if (options.how === "reset") this.wire.reset()
  }

  /** A protocol violation of the client: MQTT 5 DISCONNECT with the reason code, then close; the will fires. */
  private fail(reasonCode: number): void {
    this.close({ reasonCode, publishWill: true, how: "end" })
  }

  // ---- sending ---------------------------------------------------------------------------------------------

  private send(packet: Packets.Packet): void {
    const bytes = Packets.generate(packet, this.protocolVersion)
    if (bytes !== undefined) this.wire.deliver(bytes)
  }

  sendPublish(delivery: Delivery, id: number | undefined, dup: boolean): boolean {
    if (this.state !== "connected") return true
    const message = delivery.message
    let properties: Packets.PublishPacketProperties | undefined
    if (this.protocolVersion === 5) {
      properties = { ...message.properties }
      if (message.expiresAt !== undefined) {
        properties.messageExpiryInterval = Math.max(0, Math.ceil((message.expiresAt - this.hub.now()) / 1000))
      }
      const ids = delivery.subscriptionIdentifiers
      if (ids.length > 0) properties.subscriptionIdentifier = ids.length === 1 ? ids[0] : [...ids]
    }
    const bytes = Packets.generate({
      cmd: "publish",
      topic: message.topic,
      payload: Buffer.from(message.payload),
      qos: delivery.qos,
      retain: delivery.retain,
      dup,
      ...(id === undefined ? {} : { messageId: id }),
      ...(properties === undefined ? {} : { properties })
    }, this.protocolVersion)
    if (bytes === undefined) return false
    if (this.maximumPacketSize !== undefined && bytes.byteLength > this.maximumPacketSize) return false
    this.wire.deliver(bytes)
    return true
  }

  sendPubrel(id: number): void {
    if (this.state === "connected") this.send({ cmd: "pubrel", messageId: id })
  }

  // ---- receiving -------------------------------------------------------------------------------------------

  private handle(packet: Packets.Packet): void {
    if (this.state === "closed") return
    if (this.state === "connecting") {
      if (packet.cmd === "connect") return this.onConnect(packet)
      // the first packet must be CONNECT [MQTT-3.1.0-1]: close without a word
      return this.close({ reasonCode: undefined, publishWill: false, how: "end" })
    }
    switch (packet.cmd) {
      case "publish":
        return this.onPublish(packet)
      case "puback":
      case "pubrec":
      case "pubcomp":
        return this.onAck(packet.cmd, packet.messageId ?? -1, packet.reasonCode ?? 0)
      case "pubrel":
        return this.onPubrel(packet.messageId ?? -1)
      case "subscribe":
        return this.onSubscribe(packet)
      case "unsubscribe":
        return this.onUnsubscribe(packet)
      case "pingreq":
        return this.send({ cmd: "pingresp" })
      case "disconnect":
        return this.onDisconnect(packet)
      default:
        // a second CONNECT, AUTH (no enhanced authentication here), or a packet only a server sends
        return this.fail(PROTOCOL_ERROR)
    }
  }

  private onConnect(packet: MqttPacket.IConnectPacket): void {
    this.protocolVersion = packet.protocolVersion === 5 ? 5 : 4
    const refuse = (code: number) => {
      this.send({
        cmd: "connack",
        sessionPresent: false,
        ...(this.protocolVersion === 5 ? { reasonCode: code } : { returnCode: code })
      })
      this.close({ reasonCode: undefined, publishWill: false, how: "end" })
    }
    // MQTT 5 enhanced authentication is not supported: 0x8C bad authentication method
    if (packet.properties?.authenticationMethod !== undefined) return refuse(0x8c)
    let clientId = packet.clientId
    const assigned = clientId === ""
    if (assigned) {
      // MQTT 3.1.1: an empty identifier needs a clean session [MQTT-3.1.3-8]
      if (this.protocolVersion === 4 && packet.clean === false) return refuse(2)
      clientId = this.hub.newClientId()
    }
    const attached = this.hub.attach(this, packet, clientId)
    if (typeof attached === "number") return refuse(attached)
    const { present, session } = attached
    this.clientId = clientId
    this.session = session
    this.keepAlive = packet.keepalive ?? 0
    this.clientReceiveMaximum = packet.properties?.receiveMaximum ?? 65_535
    this.maximumPacketSize = packet.properties?.maximumPacketSize
    this.state = "connected"
    this.send({
      cmd: "connack",
      sessionPresent: present,
      ...(this.protocolVersion === 5 ? { reasonCode: 0, properties: this.connackProperties(assigned, clientId) } : {
        returnCode: 0
      })
    })
    session.connection = this
    Outbound.resume(session, this.hub.now())
    this.watchKeepAlive()
    this.hub.changed()
  }

  private connackProperties(assigned: boolean, clientId: string): NonNullable<MqttPacket.IConnackPacket["properties"]> {
    const limits = this.hub.limits
    return {
      receiveMaximum: limits.receiveMaximum,
      topicAliasMaximum: limits.topicAliasMaximum,
      ...(limits.maximumQoS < 2 ? { maximumQoS: limits.maximumQoS } : {}),
      ...(limits.retainAvailable ? {} : { retainAvailable: false }),
      ...(assigned ? { assignedClientIdentifier: clientId } : {})
    }
  }

  /** Closes the connection when nothing arrived for one and a half times the keepalive [MQTT-3.1.2-22]. */
  private watchKeepAlive(): void {
    if (this.keepAlive === 0) return
    const limit = this.keepAlive * 1500
    const check = () => {
      const idle = this.hub.now() - this.lastReceived
      if (idle >= limit) this.close({ reasonCode: KEEP_ALIVE_TIMEOUT, publishWill: true, how: "end" })
      else this.cancelKeepAlive = this.hub.schedule(limit - idle, check)
    }
    this.cancelKeepAlive = this.hub.schedule(limit, check)
  }

  private onPublish(packet: MqttPacket.IPublishPacket): void {
    const limits = this.hub.limits
    let topic = packet.topic
    const alias = packet.properties?.topicAlias
    if (this.protocolVersion === 5 && alias !== undefined) {
      if (alias === 0 || alias > limits.topicAliasMaximum) return this.fail(TOPIC_ALIAS_INVALID)
      if (topic === "") {
        const known = this.aliases.get(alias)
        if (known === undefined) return this.fail(PROTOCOL_ERROR)
        topic = known
      } else {
        this.aliases.set(alias, topic)
      }
    }
    if (Topic.nameProblem(topic) !== undefined) return this.fail(TOPIC_NAME_INVALID)
    if (packet.qos > limits.maximumQoS) return this.fail(QOS_NOT_SUPPORTED)
    if (packet.retain && !limits.retainAvailable) return this.fail(RETAIN_NOT_SUPPORTED)
    const properties = Packets.forwardable(packet.properties)
    const expiry = properties.messageExpiryInterval
    const message: Message = {
      topic,
      payload: typeof packet.payload === "string" ? Buffer.from(packet.payload) : packet.payload,
      qos: packet.qos,
      retain: packet.retain,
      properties,
      expiresAt: expiry === undefined ? undefined : this.hub.now() + expiry * 1000,
      publisher: this.clientId
    }
    const id = packet.messageId ?? 0
    if (packet.qos === 0) {
      this.hub.publish(message)
    } else if (packet.qos === 1) {
      const matched = this.hub.publish(message)
      this.send({ cmd: "puback", messageId: id, ...this.noMatch(matched) })
    } else {
      // method A of MQTT 5 figure 4.3: delivered once, on the first PUBLISH; a resend before PUBREL is not
      const session = this.session!
      let matched = 1
      if (!session.incomingQos2.has(id)) {
        session.incomingQos2.add(id)
        matched = this.hub.publish(message)
      }
      this.send({ cmd: "pubrec", messageId: id, ...this.noMatch(matched) })
    }
  }

  /** MQTT 5: reason code 0x10 "no matching subscribers", as Mosquitto answers. */
  private noMatch(matched: number): { reasonCode?: number } {
    return this.protocolVersion === 5 && matched === 0 ? { reasonCode: 0x10 } : {}
  }

  private onPubrel(id: number): void {
    const known = this.session!.incomingQos2.delete(id)
    this.send({
      cmd: "pubcomp",
      messageId: id,
      ...(this.protocolVersion === 5 && !known ? { reasonCode: 0x92 } : {})
    })
  }

  private onAck(kind: "puback" | "pubrec" | "pubcomp", id: number, reasonCode: number): void {
    const session = this.session!
    if (Outbound.acknowledge(session, id, kind, reasonCode, this.hub.now())) return
    // an acknowledgement for nothing in flight: MQTT 5 answers a stray PUBREC with PUBREL 0x92
    if (kind === "pubrec" && this.protocolVersion === 5) this.send({ cmd: "pubrel", messageId: id, reasonCode: 0x92 })
  }

  private onSubscribe(packet: MqttPacket.ISubscribePacket): void {
    const session = this.session!
    const limits = this.hub.limits
    const identifier = packet.properties?.subscriptionIdentifier
    const granted: Array<number> = []
    const added: Array<{ readonly subscription: Subscription; readonly existed: boolean }> = []
    for (const request of packet.subscriptions) {
      const shared = Topic.parseShared(request.topic)
      if (Topic.filterProblem(request.topic) !== undefined) {
        granted.push(this.protocolVersion === 5 ? 0x8f : 0x80)
        continue
      }
      // No Local on a shared subscription is a protocol error [MQTT-3.8.3-4]
      if (shared !== undefined && request.nl === true && this.protocolVersion === 5) return this.fail(PROTOCOL_ERROR)
      const qos = Math.min(request.qos, limits.maximumQoS) as QoS
      const subscription: Subscription = {
        filter: request.topic,
        topicFilter: shared?.filter ?? request.topic,
        group: shared?.group,
        qos,
        noLocal: this.protocolVersion === 5 && request.nl === true,
        retainAsPublished: this.protocolVersion === 5 && request.rap === true,
        retainHandling: this.protocolVersion === 5 ? ((request.rh ?? 0) as 0 | 1 | 2) : 0,
        identifier
      }
      added.push({ subscription, existed: session.subscriptions.has(request.topic) })
      session.subscriptions.set(request.topic, subscription)
      granted.push(qos)
    }
    this.send({ cmd: "suback", messageId: packet.messageId ?? 0, granted })
    this.hub.changed()
    for (const { existed, subscription } of added) {
      // shared subscriptions get no retained messages; Retain Handling 1: only for a new subscription; 2: never
      if (subscription.group !== undefined || subscription.retainHandling === 2) continue
      if (subscription.retainHandling === 1 && existed) continue
      this.hub.sendRetained(session, subscription)
    }
  }

  private onUnsubscribe(packet: MqttPacket.IUnsubscribePacket): void {
    const session = this.session!
    const codes = packet.unsubscriptions.map((filter) => session.subscriptions.delete(filter) ? 0x00 : 0x11)
    this.send({
      cmd: "unsuback",
      messageId: packet.messageId ?? 0,
      ...(this.protocolVersion === 5 ? { granted: codes } : {})
    } as MqttPacket.IUnsubackPacket)
    this.hub.changed()
  }

  private onDisconnect(packet: MqttPacket.IDisconnectPacket): void {
    const session = this.session!
    const expiry = packet.properties?.sessionExpiryInterval
    if (this.protocolVersion === 5 && expiry !== undefined) {
      // a session that was to end with the connection cannot be given an expiry now [MQTT-3.14.2-2]
      if (session.expiryInterval === 0 && expiry > 0) return this.fail(PROTOCOL_ERROR)
      session.expiryInterval = expiry === 0xffffffff ? Infinity : expiry
    }
    // MQTT 5 reason code 0x04: disconnect with will message
    const publishWill = this.protocolVersion === 5 && packet.reasonCode === 0x04
    this.close({ reasonCode: undefined, publishWill, how: "end" })
  }
}
