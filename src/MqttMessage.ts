/**
 * The messages that flow through an `MqttClient`: what arrives on `messages` and the MQTT 5 properties a
 * publish can carry.
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import type * as Tracer from "effect/Tracer"
import * as Telemetry from "./internal/telemetry.ts"

/**
 * A Quality of Service level: 0 at most once, 1 at least once, 2 exactly once.
 *
 * @since 0.1.0
 * @category models
 */
export type QoS = 0 | 1 | 2

/**
 * An MQTT 5 user property: a name and a value. A list of them keeps its order and may repeat a name.
 *
 * @since 0.1.0
 * @category models
 */
export type UserProperty = readonly [name: string, value: string]

/**
 * The MQTT 5 properties of a PUBLISH. Ignored (not sent) on an MQTT 3.1.1 connection.
 *
 * @since 0.1.0
 * @category models
 */
export interface PublishProperties {
  /** `true` when the payload is UTF-8 text (Payload Format Indicator 1, MQTT 5 section 3.3.2.3.2). A payload
   * marked so that is not valid UTF-8 is refused before sending (`InvalidOptionError`, option `properties`). */
  readonly payloadFormatIndicator?: boolean | undefined
  /** The lifetime of the message in seconds, 0 to 4,294,967,295 (Message Expiry Interval, MQTT 5 section
   * 3.3.2.3.3); the broker drops it when it expires. Default: none (it does not expire). */
  readonly messageExpiryInterval?: number | undefined
  /** A MIME type or other description of the payload (Content Type, MQTT 5 section 3.3.2.3.9). */
  readonly contentType?: string | undefined
  /** The topic a responder should publish its response to (Response Topic, MQTT 5 section 3.3.2.3.5): a topic
   * name, without `+` or `#` (`InvalidOptionError` otherwise). */
  readonly responseTopic?: string | undefined
  /** Opaque data a responder copies into its response, to tie the response to the request (Correlation Data,
   * MQTT 5 section 3.3.2.3.6). */
  readonly correlationData?: Uint8Array | undefined
  /** Application-defined name/value pairs, in order, repeats kept (User Property, MQTT 5 section 3.3.2.3.7). */
  readonly userProperties?: ReadonlyArray<UserProperty> | undefined
}

/**
 * The MQTT 5 properties of a received message: those of {@link PublishProperties} and the identifiers of the
 * subscriptions that it matched.
 *
 * @since 0.1.0
 * @category models
 */
export interface MessageProperties extends PublishProperties {
  /** The identifiers of the subscriptions the message matched (MQTT 5 `subscriptionIdentifier` of
   * `subscribe`), one per matching subscription that has one. */
  readonly subscriptionIdentifiers?: ReadonlyArray<number> | undefined
}

/**
 * Where the client keeps a received message's acknowledgement (QoS 1/2). Internal to the client: use
 * {@link MqttMessage.ack}.
 *
 * @since 0.2.0
 * @category symbols
 * @internal
 */
export const ReceiptKey: unique symbol = Symbol.for("effect-mqtt/MqttMessage/receipt") as any

const decoder = new TextDecoder()
const noProperties: MessageProperties = Object.freeze({})

/**
 * A message received from the broker.
 *
 * `payload` is the raw bytes; `text` decodes them as UTF-8. `dup` is set when the broker resent the message;
 * `retain` when it was a retained message sent on subscription. `properties` is empty on MQTT 3.1.1.
 *
 * @since 0.1.0
 * @category models
 */
export class MqttMessage {
  /**
   * The topic name the message was published to (never a filter; with an MQTT 5 topic alias resolved).
   *
   * @since 0.1.0
   */
  readonly topic: string
  /**
   * The payload, as received: raw bytes, possibly empty.
   *
   * @since 0.1.0
   */
  readonly payload: Uint8Array
  /**
   * The QoS the message was delivered with: the lower of the publisher's QoS and the subscription's.
   *
   * @since 0.1.0
   */
  readonly qos: QoS
  /**
   * `true` when the broker sent a retained message because of a new subscription (or, with MQTT 5
   * `retainAsPublished`, when the publisher set retain).
   *
   * @since 0.1.0
   */
  readonly retain: boolean
  /**
   * `true` when the broker marked the message as a resend of an earlier delivery attempt (QoS 1 and 2).
   *
   * @since 0.1.0
   */
  readonly dup: boolean
  /**
   * The MQTT 5 properties of the message; an empty object on MQTT 3.1.1.
   *
   * @since 0.1.0
   */
  readonly properties: MessageProperties;
  /**
   * The client's record of this copy's acknowledgement (QoS 1/2); use {@link ack}, not this.
   *
   * @since 0.2.0
   * @internal
   */
  [ReceiptKey]:
    | {
      readonly acknowledge: () => Effect.Effect<void> | undefined
      /** lets go of the message unacknowledged when its flow may be the broker's no more (a consumer group's) */
      readonly abandonIfStale?: () => boolean
      /** whether that cannot be told before the next connection (the client is disconnected) */
      readonly awaitsConnection?: () => boolean
    }
    | undefined = undefined

  /**
   * Makes a message. The client makes them; applications only need this in tests.
   *
   * @since 0.1.0
   */
  constructor(
    topic: string,
    payload: Uint8Array,
    qos: QoS,
    retain: boolean,
    dup: boolean,
    properties: MessageProperties = noProperties
  ) {
    this.topic = topic
    this.payload = payload
    this.qos = qos
    this.retain = retain
    this.dup = dup
    this.properties = properties
  }

  /**
   * The payload decoded as UTF-8 text (invalid sequences become U+FFFD).
   *
   * @since 0.1.0
   */
  get text(): string {
    return decoder.decode(this.payload)
  }

  /**
   * Acknowledges the message to the broker: PUBACK for QoS 1, PUBREC for QoS 2. Only needed with manual
   * acknowledgement (`acknowledgement: "manual"` on the client or on a `subscription`); otherwise the client
   * acknowledges a message when a consumer takes it from the stream, and this does nothing. Acknowledgements
   * leave in the order the messages arrived [MQTT-4.6.0-2, MQTT-4.6.0-3], so this one may wait for earlier
   * messages still unacknowledged. A message never acknowledged is sent again by the broker on the next
   * connection of a persistent session (at-least-once processing). Idempotent; does nothing for QoS 0.
   *
   * With a durable session (the client's `store` option), it completes once the message's QoS 2 identifier is
   * stored: a QoS 2 message whose `ack` completed is never delivered again, not even to the next process started
   * with the same store after a crash (its identifier is stored before the PUBREC is written, also when the
   * PUBREC still waits behind an earlier unacknowledged message).
   *
   * @since 0.2.0
   */
  get ack(): Effect.Effect<void> {
    return Effect.suspend(() => this[ReceiptKey]?.acknowledge() ?? Effect.void)
  }

  /**
   * The payload parsed as JSON: `undefined` when it is not valid JSON.
   *
   * @since 0.1.0
   */
  get json(): unknown {
    try {
      return JSON.parse(this.text)
    } catch {
      return undefined
    }
  }

  /**
   * `MqttMessage(<topic>, qos <n>, <size> bytes)`: the payload is not shown.
   *
   * @since 0.1.0
   */
  toString(): string {
    return `MqttMessage(${this.topic}, qos ${this.qos}, ${this.payload.byteLength} bytes)`
  }

  /**
   * A plain object for logs and `JSON.stringify`: the topic, the payload decoded as UTF-8 text, the flags and
   * the properties.
   *
   * @since 0.1.0
   */
  toJSON(): unknown {
    return {
      _tag: "MqttMessage",
      topic: this.topic,
      payload: this.text,
      qos: this.qos,
      retain: this.retain,
      dup: this.dup,
      properties: this.properties
    }
  }
}

/**
 * Manual acknowledgement after a handler: returns a handler that runs `handler` on the message and then
 * acknowledges the message (`message.ack`: PUBACK for QoS 1, PUBREC for QoS 2) once it succeeded. When the handler
 * fails or is interrupted, or the process dies first, the message is not acknowledged, and the broker sends it
 * again on the next connection of a persistent session (at-least-once processing; use a persistent session:
 * `cleanStart: false`, and on MQTT 5 a `sessionExpiryInterval`). The handler's result and error are passed on.
 *
 * For a client (or a `subscription`) made with `acknowledgement: "manual"`; with automatic acknowledgement the
 * message was acknowledged when it was taken from the stream, and this only runs the handler. Acknowledgements
 * leave in the order the messages arrived [MQTT-4.6.0-2, MQTT-4.6.0-3]: a message acknowledged here waits for the
 * earlier ones that are not, so a message that is never acknowledged holds back the acknowledgements of every
 * later one (on MQTT 5, the broker stops sending QoS 1/2 messages once its Receive Maximum of them wait).
 *
 * @example
 * ```ts
 * import { Effect, Stream } from "effect"
 * import { MqttClient, MqttMessage } from "effect-mqtt"
 *
 * const save = (message: MqttMessage.MqttMessage) => Effect.log("saved", message.text)
 *
 * const program = Effect.gen(function*() {
 *   const client = yield* MqttClient.MqttClient
 *   yield* client.subscribe("orders/#", { qos: 1 })
 *   // each order is acknowledged once saved; a failed save stops the stream and leaves its order unacknowledged
 *   yield* client.messages.pipe(Stream.runForEach(MqttMessage.ackAfter(save)))
 * })
 *
 * export const main = program.pipe(
 *   Effect.provide(MqttClient.layer({ clientId: "orders", cleanStart: false, acknowledgement: "manual" }))
 * )
 * ```
 *
 * @since 0.2.0
 * @category combinators
 */
export const ackAfter =
  <A, E, R>(handler: (message: MqttMessage) => Effect.Effect<A, E, R>) =>
  (message: MqttMessage): Effect.Effect<A, E, R> =>
    Effect.tap(Effect.suspend(() => handler(message)), () => message.ack)

/**
 * The span of the producer, when the message carries a W3C `traceparent` user property (MQTT 5: a publish made
 * inside a span carries one, see the client's `tracing` option); `undefined` otherwise.
 *
 * @since 0.2.0
 * @category tracing
 */
export const remoteSpan = (message: MqttMessage): Tracer.ExternalSpan | undefined =>
  Telemetry.remoteSpanOf(message.properties)

/**
 * Runs an effect that handles a message in a span of its own (`mqtt process <topic>`, kind consumer) whose parent
 * is the producer's span when the message carries a `traceparent`, so that the trace runs from the producer
 * through the broker to this handler. Attributes follow OpenTelemetry's messaging conventions.
 *
 * @example
 * ```ts
 * import { Effect, Stream } from "effect"
 * import { MqttClient, MqttMessage } from "effect-mqtt"
 *
 * const handle = (message: MqttMessage.MqttMessage) => Effect.log(message.text)
 *
 * export const program = Effect.gen(function*() {
 *   const client = yield* MqttClient.MqttClient
 *   yield* client.messages.pipe(
 *     Stream.runForEach((message) => handle(message).pipe(MqttMessage.withSpan(message)))
 *   )
 * })
 * ```
 *
 * @since 0.2.0
 * @category tracing
 */
export const withSpan = (message: MqttMessage) => <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> => {
  const parent = remoteSpan(message)
  return Effect.withSpan(self, `mqtt process ${message.topic}`, {
    kind: "consumer",
    ...(parent === undefined ? {} : { parent }),
    attributes: {
      "messaging.system": "mqtt",
      "messaging.operation.name": "process",
      "messaging.operation.type": "process",
      "messaging.destination.name": message.topic,
      "messaging.message.body.size": message.payload.byteLength,
      "mqtt.qos": message.qos
    }
  })
}
