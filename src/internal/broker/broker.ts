/**
 * The test broker's state: sessions, retained messages, routing (`+`, `#`, the `$` rule, `$share` groups, No
 * Local, Retain As Published), wills and session expiry on the broker's clock, and the record of what was
 * published. Synchronous: time comes from `now` and timers from `schedule`, both given by the caller (the
 * Effect `Clock`, so that a `TestClock` drives it).
 *
 * @internal
 */
import * as Socket from "effect/socket/Socket"
import type * as MqttPacket from "mqtt-packet"
import type { Peer, Wire } from "../memorySocket.ts"
import * as Topic from "../topic.ts"
import { Connection, type Hub, type Limits } from "./connection.ts"
import * as Outbound from "./outbound.ts"
import * as Packets from "./packets.ts"
import { type Delivery, type Message, type QoS, Session, type Subscription } from "./session.ts"

/** The broker's settings. */
export interface Settings extends Limits {
  /** How many published messages are kept for `published` (the oldest are forgotten). */
  readonly history: number
  /** Decides whether a CONNECT is accepted; a refusal is CONNACK 4 (3.1.1) or 0x86 (5): bad credentials. */
  readonly authenticate:
    | ((credentials: {
      readonly clientId: string
      readonly username: string | undefined
      readonly password: Uint8Array | undefined
    }) => boolean)
    | undefined
}

/** What the broker knows of a client's session, for tests. */
export interface SessionInfo {
  readonly clientId: string
  readonly connected: boolean
  readonly protocolVersion: 4 | 5
  readonly subscriptions: ReadonlyArray<string>
  /** QoS 1/2 messages sent and not yet acknowledged. */
  readonly inflight: number
  /** Messages waiting for room in the window or for the client to come back. */
  readonly queued: number
  /** Messages dropped because the queue was full. */
  readonly dropped: number
}

const refused = () =>
  new Socket.SocketError({
    reason: new Socket.SocketOpenError({
      kind: "Unknown",
      cause: Object.assign(new Error("connect ECONNREFUSED (the test broker is stopped)"), { code: "ECONNREFUSED" })
    })
  })

const willMessage = (connect: MqttPacket.IConnectPacket, clientId: string, now: number): Message | undefined => {
  const will = connect.will
  if (will === undefined) return undefined
  const properties = Packets.forwardable(will.properties)
  const expiry = properties.messageExpiryInterval
  return {
    topic: will.topic,
    payload: typeof will.payload === "string" ? new TextEncoder().encode(will.payload) : will.payload,
    qos: (will.qos ?? 0) as QoS,
    retain: will.retain ?? false,
    properties,
    expiresAt: expiry === undefined ? undefined : now + expiry * 1000,
    publisher: clientId
  }
}

export class Broker implements Hub {
  readonly sessions = new Map<string, Session>()
  readonly connections = new Set<Connection>()
  readonly retained = new Map<string, Message>()
  history: Array<Message> = []
  /** Called after every change tests may wait for: a publish, a connection, a subscription. */
  readonly listeners = new Set<() => void>()
  running = true
  private readonly shareCursors = new Map<string, number>()
  private assigned = 0
  readonly settings: Settings
  readonly now: () => number
  readonly schedule: (millis: number, f: () => void) => () => void

  constructor(settings: Settings, now: () => number, schedule: (millis: number, f: () => void) => () => void) {
    this.settings = settings
    this.now = now
    this.schedule = schedule
  }

  get limits(): Limits {
    return this.settings
  }

  newClientId(): string {
    return `test-broker-${++this.assigned}`
  }

  /** A new connection from a client: its peer, or a refusal while the broker is stopped. */
  accept(wire: Wire): Peer | Socket.SocketError {
    if (!this.running) return refused()
    const connection = new Connection(this, wire)
    this.connections.add(connection)
    return connection
  }

  // ---- sessions --------------------------------------------------------------------------------------------

  attach(connection: Connection, connect: MqttPacket.IConnectPacket, clientId: string) {
    const authenticate = this.settings.authenticate
    if (
      authenticate !== undefined &&
      !authenticate({ clientId, username: connect.username, password: connect.password })
    ) {
      // 3.1.1: bad user name or password; 5: 0x86
      return connection.protocolVersion === 5 ? 0x86 : 4
    }
    // a client already connected with this identifier is disconnected: 0x8E session taken over
    const previous = this.sessions.get(clientId)?.connection
    if (previous instanceof Connection) previous.close({ reasonCode: 0x8e, publishWill: true, how: "end" })
    const version = connection.protocolVersion
    let session = this.sessions.get(clientId)
    if (session !== undefined) {
      session.clearTimers()
      // a will waiting for its delay: the session continues (no will), or ends now (the will is published)
      const pending = session.will
      session.will = undefined
      if (connect.clean === true) {
        this.sessions.delete(clientId)
        if (pending !== undefined) this.publish(pending.message)
        session = undefined
      }
    }
    const present = session !== undefined
    if (session === undefined) {
      session = new Session(clientId, version)
      this.sessions.set(clientId, session)
    }
    session.protocolVersion = version
    const expiry = version === 5 ? connect.properties?.sessionExpiryInterval ?? 0 : connect.clean === false ? -1 : 0
    session.expiryInterval = expiry === -1 || expiry === 0xffffffff ? Infinity : expiry
    const will = willMessage(connect, clientId, this.now())
    session.will = will === undefined ? undefined : {
      message: will,
      delay: version === 5 ? connect.will?.properties?.willDelayInterval ?? 0 : 0
    }
    return { session, present }
  }

  detach(connection: Connection, publishWill: boolean): void {
    this.connections.delete(connection)
    const session = connection.session
    if (session === undefined || session.connection !== connection) return
    session.connection = undefined
    this.changed()
    const will = publishWill ? session.will : undefined
    if (will === undefined) session.will = undefined
    const endSession = () => {
      session.clearTimers()
      if (this.sessions.get(session.clientId) === session) this.sessions.delete(session.clientId)
      const pending = session.will
      session.will = undefined
      if (pending !== undefined) this.publish(pending.message)
    }
    if (session.expiryInterval === 0) return endSession()
    if (will !== undefined) {
      const delay = Math.min(will.delay, session.expiryInterval)
      const fire = () => {
        session.will = undefined
        this.publish(will.message)
      }
      if (delay === 0) fire()
      else session.cancelTimers.push(this.schedule(delay * 1000, fire))
    }
    if (Number.isFinite(session.expiryInterval)) {
      session.cancelTimers.push(this.schedule(session.expiryInterval * 1000, endSession))
    }
  }

  // ---- routing ---------------------------------------------------------------------------------------------

  private deliveryFor(message: Message, subscription: Subscription, retained: boolean): Delivery {
    return {
      message,
      qos: Math.min(message.qos, subscription.qos) as QoS,
      retain: retained || (subscription.retainAsPublished && message.retain),
      subscriptionIdentifiers: subscription.identifier === undefined ? [] : [subscription.identifier]
    }
  }

  private deliver(session: Session, delivery: Delivery): void {
    Outbound.deliver(session, delivery, this.settings.maxQueued, this.now())
  }

  publish(message: Message): number {
    this.record(message)
    if (message.retain && this.settings.retainAvailable) {
      if (message.payload.byteLength === 0) this.retained.delete(message.topic)
      else this.retained.set(message.topic, message)
    }
    let matched = 0
    const groups = new Map<string, Array<{ readonly session: Session; readonly subscription: Subscription }>>()
    for (const session of this.sessions.values()) {
      let best: Subscription | undefined
      for (const subscription of session.subscriptions.values()) {
        if (!Topic.matches(message.topic, subscription.topicFilter)) continue
        matched++
        if (subscription.group !== undefined) {
          const key = `${subscription.group}\u0000${subscription.topicFilter}`
          const members = groups.get(key)
          if (members === undefined) groups.set(key, [{ session, subscription }])
          else members.push({ session, subscription })
          continue
        }
        if (subscription.noLocal && message.publisher === session.clientId) continue
        // MQTT 5: one copy per matching subscription, each with its identifier; 3.1.1: one copy, at the highest
        // QoS of the matching subscriptions (as Mosquitto does)
        if (session.protocolVersion === 5) this.deliver(session, this.deliveryFor(message, subscription, false))
        else if (best === undefined || subscription.qos > best.qos) best = subscription
      }
      if (best !== undefined) this.deliver(session, this.deliveryFor(message, best, false))
    }
    for (const [key, members] of groups) {
      const member = this.pickMember(key, members)
      this.deliver(member.session, this.deliveryFor(message, member.subscription, false))
    }
    return matched
  }

  /** One member of a `$share` group, in turn; connected members first. */
  private pickMember<A extends { readonly session: Session }>(key: string, members: ReadonlyArray<A>): A {
    const connected = members.filter((member) => member.session.connection !== undefined)
    const candidates = connected.length > 0 ? connected : members
    const cursor = this.shareCursors.get(key) ?? 0
    this.shareCursors.set(key, cursor + 1)
    return candidates[cursor % candidates.length]
  }

  sendRetained(session: Session, subscription: Subscription): void {
    const now = this.now()
    for (const [topic, message] of this.retained) {
      if (message.expiresAt !== undefined && now >= message.expiresAt) {
        this.retained.delete(topic)
        continue
      }
      if (Topic.matches(topic, subscription.topicFilter)) {
        this.deliver(session, this.deliveryFor(message, subscription, true))
      }
    }
  }

  private record(message: Message): void {
    this.history.push(message)
    if (this.history.length > this.settings.history) this.history.splice(0, this.history.length - this.settings.history)
    this.changed()
  }

  changed(): void {
    for (const listener of [...this.listeners]) listener()
  }

  // ---- administration --------------------------------------------------------------------------------------

  /** Ends a client's connection as a lost network would (the will fires), or with an MQTT 5 DISCONNECT. */
  disconnect(clientId: string, reasonCode: number | undefined): boolean {
    const connection = this.sessions.get(clientId)?.connection
    if (!(connection instanceof Connection)) return false
    connection.close({
      reasonCode,
      publishWill: true,
      how: reasonCode === undefined ? "reset" : "end"
    })
    return true
  }

  /** Stops accepting connections and drops every connection (no will: the broker is what went away). */
  stop(keepState: boolean): void {
    this.running = false
    for (const connection of [...this.connections]) {
      connection.close({ reasonCode: undefined, publishWill: false, how: "reset" })
    }
    if (!keepState) {
      for (const session of this.sessions.values()) session.clearTimers()
      this.sessions.clear()
      this.retained.clear()
    }
  }

  start(): void {
    this.running = true
  }

  sessionInfo(): ReadonlyArray<SessionInfo> {
    return [...this.sessions.values()].map((session) => ({
      clientId: session.clientId,
      connected: session.connection !== undefined,
      protocolVersion: session.protocolVersion,
      subscriptions: [...session.subscriptions.keys()],
      inflight: session.inflight.size,
      queued: session.queue.length,
      dropped: session.dropped
    }))
  }
}
