/**
 * The state of one client's session in the test broker: its subscriptions, the QoS 1/2 messages sent to it and
 * not yet acknowledged, the messages waiting for room (or for the client to come back), and the QoS 2 packet
 * identifiers it sent that await PUBREL. Plain mutable state, changed synchronously by the broker.
 *
 * @internal
 */
import type { PublishPacketProperties } from "./packets.ts"

/** A QoS level. */
export type QoS = 0 | 1 | 2

/** A message as the broker keeps it: what was published, with when it expires on the broker's clock. */
export interface Message {
  readonly topic: string
  readonly payload: Uint8Array
  readonly qos: QoS
  readonly retain: boolean
  /** The MQTT 5 properties that travel with the message (no topic alias, no subscription identifier). */
  readonly properties: PublishPacketProperties
  /** Clock time (ms) when the message expires (MQTT 5 Message Expiry Interval), or `undefined`. */
  readonly expiresAt: number | undefined
  /** The client that published it (for No Local), `undefined` for the broker's own publishes. */
  readonly publisher: string | undefined
}

/** A subscription of a session. */
export interface Subscription {
  /** The filter as subscribed, `$share/{group}/` included. */
  readonly filter: string
  /** The filter without its `$share/{group}/` prefix. */
  readonly topicFilter: string
  readonly group: string | undefined
  readonly qos: QoS
  readonly noLocal: boolean
  readonly retainAsPublished: boolean
  readonly retainHandling: 0 | 1 | 2
  readonly identifier: number | undefined
}

/** One message to send to a session. */
export interface Delivery {
  readonly message: Message
  readonly qos: QoS
  readonly retain: boolean
  readonly subscriptionIdentifiers: ReadonlyArray<number>
}

/** A QoS 1/2 delivery sent and not yet completed: waiting for PUBACK/PUBREC (`publish`) or PUBCOMP (`pubrel`). */
export interface Inflight {
  readonly delivery: Delivery
  state: "publish" | "pubrel"
}

/** The connection a session is attached to, as the delivery code sees it. */
export interface Sender {
  readonly protocolVersion: 4 | 5
  /** How many QoS 1/2 messages may be unacknowledged at once on this connection. */
  readonly sendWindow: number
  /** MQTT 5: the largest packet the client accepts. */
  readonly maximumPacketSize: number | undefined
  /** Encodes and sends a PUBLISH; `false` when it was too large for the client and dropped. */
  readonly sendPublish: (delivery: Delivery, id: number | undefined, dup: boolean) => boolean
  readonly sendPubrel: (id: number) => void
}

/** What the session's client asked for in CONNECT, about its will. */
export interface Will {
  readonly message: Message
  /** Seconds (MQTT 5 Will Delay Interval); 0 on MQTT 3.1.1. */
  readonly delay: number
}

export class Session {
  readonly subscriptions = new Map<string, Subscription>()
  readonly inflight = new Map<number, Inflight>()
  queue: Array<Delivery> = []
  readonly incomingQos2 = new Set<number>()
  /** Seconds the session outlives its connection: 0 ends it with the connection, `Infinity` never. */
  expiryInterval = 0
  /** The will of the current (or last) connection, until it is published or discarded. */
  will: Will | undefined = undefined
  /** Cancels the timer that publishes the will or ends the session after the connection is gone. */
  cancelTimers: Array<() => void> = []
  /** The connection the session is attached to, if its client is connected. */
  connection: Sender | undefined = undefined
  /** Messages dropped because the queue was full. */
  dropped = 0
  private nextId = 1

  readonly clientId: string
  protocolVersion: 4 | 5

  constructor(clientId: string, protocolVersion: 4 | 5) {
    this.clientId = clientId
    this.protocolVersion = protocolVersion
  }

  /** A packet identifier not in flight, or `undefined` when all 65,535 are. */
  allocateId(): number | undefined {
    if (this.inflight.size >= 65_535) return undefined
    while (this.inflight.has(this.nextId)) this.nextId = this.nextId === 65_535 ? 1 : this.nextId + 1
    const id = this.nextId
    this.nextId = id === 65_535 ? 1 : id + 1
    return id
  }

  clearTimers(): void {
    for (const cancel of this.cancelTimers) cancel()
    this.cancelTimers = []
  }
}
