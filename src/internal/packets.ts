/**
 * The packets a broker sends, as the client's decoder hands them to the session: plain data, already checked
 * against the MQTT rules of the connection's protocol version. Nothing here does I/O.
 *
 * The decoder (`decode.ts`) turns bytes into these; the session (`session.ts`) consumes them. Properties are
 * MQTT 5 only: on MQTT 3.1 and 3.1.1 they are absent, and reason codes are 0 for success. `FilterSpec`, the one
 * shape the client sends that the session keeps (and the journal stores), is here too.
 */
import type { MessageProperties, QoS, UserProperty } from "../MqttMessage.ts"

/** One filter of a SUBSCRIBE with its options (MQTT 5 section 3.8.3.1). */
export interface FilterSpec {
  readonly filter: string
  readonly qos: QoS
  readonly noLocal: boolean
  readonly retainAsPublished: boolean
  readonly retainHandling: 0 | 1 | 2
}

/** 3: MQTT 3.1 (protocol name `MQIsdp`), 4: MQTT 3.1.1, 5: MQTT 5.0. */
export type ProtocolVersion = 3 | 4 | 5

/** The properties of a CONNACK (MQTT 5, section 3.2.2.3). Absent ones were not sent. */
export interface ConnackProperties {
  readonly sessionExpiryInterval?: number
  readonly receiveMaximum?: number
  readonly maximumQoS?: 0 | 1
  readonly retainAvailable?: boolean
  readonly maximumPacketSize?: number
  readonly assignedClientIdentifier?: string
  readonly topicAliasMaximum?: number
  readonly reasonString?: string
  /** in wire order, repeats and empty values kept */
  readonly userProperties?: ReadonlyArray<UserProperty>
  readonly wildcardSubscriptionAvailable?: boolean
  readonly subscriptionIdentifiersAvailable?: boolean
  readonly sharedSubscriptionAvailable?: boolean
  readonly serverKeepAlive?: number
  readonly responseInformation?: string
  readonly serverReference?: string
  readonly authenticationMethod?: string
  readonly authenticationData?: Uint8Array
}

/** CONNACK. `reasonCode` is the MQTT 3.1.1 return code or the MQTT 5 reason code. */
export interface Connack {
  readonly _tag: "Connack"
  readonly sessionPresent: boolean
  readonly reasonCode: number
  readonly properties: ConnackProperties
  /**
   * Set when an MQTT 5 client got an MQTT 3.1.1 CONNACK (Remaining Length 2) refusing the protocol level, return
   * code 1: the broker does not support MQTT 5. `reasonCode` is then 0x84 (Unsupported Protocol Version), the
   * MQTT 5 code for the same refusal, and `legacyReturnCode` the return code received.
   */
  readonly legacyReturnCode?: number
}

/** PUBLISH. `topic` is "" when an MQTT 5 Topic Alias stands for it (the session resolves aliases). */
export interface Publish {
  readonly _tag: "Publish"
  readonly topic: string
  readonly payload: Uint8Array
  readonly qos: QoS
  readonly retain: boolean
  readonly dup: boolean
  /** the packet identifier; 0 for QoS 0 */
  readonly id: number
  readonly properties: MessageProperties | undefined
  readonly topicAlias: number | undefined
}

/** The reason string and user properties an acknowledgement may carry (MQTT 5). */
export interface AckProperties {
  readonly reasonString?: string
  readonly userProperties?: ReadonlyArray<UserProperty>
}

/** PUBACK, PUBREC, PUBREL or PUBCOMP. `reasonCode` is 0 when the packet has none (MQTT 3.1.1, or omitted). */
export interface Ack extends AckProperties {
  readonly _tag: "Puback" | "Pubrec" | "Pubrel" | "Pubcomp"
  readonly id: number
  readonly reasonCode: number
}

/** SUBACK: one return or reason code per filter of the SUBSCRIBE, in order. */
export interface Suback extends AckProperties {
  readonly _tag: "Suback"
  readonly id: number
  readonly codes: ReadonlyArray<number>
}

/** UNSUBACK: MQTT 5 carries one reason code per filter; MQTT 3.1 and 3.1.1 none (`codes` undefined). */
export interface Unsuback extends AckProperties {
  readonly _tag: "Unsuback"
  readonly id: number
  readonly codes: ReadonlyArray<number> | undefined
}

/** PINGRESP. */
export interface Pingresp {
  readonly _tag: "Pingresp"
}

/** DISCONNECT from the broker (MQTT 5 only: an MQTT 3.1.1 server never sends it). */
export interface Disconnect extends AckProperties {
  readonly _tag: "Disconnect"
  readonly reasonCode: number
  readonly sessionExpiryInterval?: number
  readonly serverReference?: string
}

/** AUTH (MQTT 5 enhanced authentication). */
export interface Auth extends AckProperties {
  readonly _tag: "Auth"
  readonly reasonCode: number
  readonly authenticationMethod?: string
  readonly authenticationData?: Uint8Array
}

/** Any packet a server may send to a client. */
export type Packet = Connack | Publish | Ack | Suback | Unsuback | Pingresp | Disconnect | Auth

/**
 * Why bytes from the broker are not an acceptable packet. `reasonCode` is what an MQTT 5 client says in its
 * DISCONNECT: 0x81 (Malformed Packet), 0x82 (Protocol Error), or a more specific code the specification names
 * (0x93 Receive Maximum exceeded, 0x94 Topic Alias invalid, 0x95 Packet too large). `rule` is the statement
 * number of the specification when it has one (for example `MQTT-3.3.2-14`).
 */
export interface Violation {
  readonly _tag: "Violation"
  readonly packet: string
  readonly reason: string
  readonly reasonCode: number
  readonly rule?: string
}
