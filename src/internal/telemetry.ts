/**
 * Telemetry of a client: Effect `Metric`s (exportable through Effect's OTLP and Prometheus modules) updated
 * synchronously where the client counts anyway (no Effect per message), and the W3C trace context that MQTT 5
 * user properties carry across the broker, so that a trace runs from producer to consumer.
 *
 * Names and attributes follow OpenTelemetry's messaging semantic conventions (`messaging.system = mqtt`,
 * `messaging.client.id`, `messaging.destination.name`, `messaging.operation.*`); the QoS is `mqtt.qos`.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as Tracer from "effect/Tracer"
import type { MessageProperties, MqttMessage, QoS, UserProperty } from "../MqttMessage.ts"

const counter = (name: string, description: string) => () => Metric.counter(name, { description, incremental: true })
const gauge = (name: string, description: string) => () => Metric.gauge(name, { description })

/** How to make each metric: `metrics` holds one of each, and each series of a client gets its own (see below). */
const families = {
  messagesSent: counter("mqtt.client.messages.sent", "Messages published by the client, by QoS"),
  bytesSent: counter("mqtt.client.bytes.sent", "Payload bytes published by the client, by QoS"),
  messagesReceived: counter("mqtt.client.messages.received", "Messages received by the client, by QoS"),
  bytesReceived: counter("mqtt.client.bytes.received", "Payload bytes received by the client, by QoS"),
  inFlight: gauge("mqtt.client.publishes.inflight", "QoS 1/2 publishes of the client holding a packet identifier"),
  queued: gauge("mqtt.client.queue.depth", "Messages waiting in the `messages` queue"),
  dropped: counter("mqtt.client.messages.dropped", "Messages dropped by sliding or dropping queues"),
  reconnects: counter("mqtt.client.reconnects", "Connections made again after one was lost"),
  connected: gauge("mqtt.client.connected", "1 while connected, 0 otherwise")
} as const

/** The client's metrics: one family each, a series per client identifier (and QoS where it applies). */
export const metrics = {
  messagesSent: families.messagesSent(),
  bytesSent: families.bytesSent(),
  messagesReceived: families.messagesReceived(),
  bytesReceived: families.bytesReceived(),
  inFlight: families.inFlight(),
  queued: families.queued(),
  dropped: families.dropped(),
  reconnects: families.reconnects(),
  connected: families.connected()
} as const

type Counter = Metric.Metric<number, unknown>

/**
 * Synchronous updates of one client's metrics, bound to the context the client was made in.
 *
 * Each series (client, QoS) is a metric object of its own, of the same name, description and attributes as
 * `Metric.withAttributes(metrics.<family>, ...)`, so the same series in the registry: a metric object caches the
 * key of the last attribute set it was updated with, so one shared by several series (two clients in a process,
 * or QoS 0 and 1 publishes) would rebuild its key (`JSON.stringify`) on every update, several µs each.
 */
export class ClientMetrics {
  private readonly context: Context.Context<never>
  private readonly byQos: Record<
    "messagesSent" | "bytesSent" | "messagesReceived" | "bytesReceived",
    ReadonlyArray<Counter>
  >
  private readonly plain: Record<"inFlight" | "queued" | "dropped" | "reconnects" | "connected", Counter>

  constructor(clientId: string, context: Context.Context<never>) {
    this.context = context
    const client = { "messaging.system": "mqtt", "messaging.client.id": clientId }
    const qos = (family: () => Counter) =>
      [0, 1, 2].map((q) => Metric.withAttributes(family(), { ...client, "mqtt.qos": String(q) }) as Counter)
    this.byQos = {
      messagesSent: qos(families.messagesSent),
      bytesSent: qos(families.bytesSent),
      messagesReceived: qos(families.messagesReceived),
      bytesReceived: qos(families.bytesReceived)
    }
    const bind = (family: () => Counter) => Metric.withAttributes(family(), client) as Counter
    this.plain = {
      inFlight: bind(families.inFlight),
      queued: bind(families.queued),
      dropped: bind(families.dropped),
      reconnects: bind(families.reconnects),
      connected: bind(families.connected)
    }
  }

  sent(qos: QoS, bytes: number): void {
    this.byQos.messagesSent[qos].updateUnsafe(1, this.context)
    this.byQos.bytesSent[qos].updateUnsafe(bytes, this.context)
  }

  /** Counts received messages by QoS: `counts[qos]` messages and `bytes[qos]` payload bytes. */
  received(counts: ReadonlyArray<number>, bytes: ReadonlyArray<number>): void {
    for (let q = 0; q < 3; q++) {
      if (counts[q] === 0) continue
      this.byQos.messagesReceived[q].updateUnsafe(counts[q], this.context)
      this.byQos.bytesReceived[q].updateUnsafe(bytes[q], this.context)
    }
  }

  gauges(inFlight: number, queued: number): void {
    this.plain.inFlight.updateUnsafe(inFlight, this.context)
    this.plain.queued.updateUnsafe(queued, this.context)
  }

  dropped(): void {
    this.plain.dropped.updateUnsafe(1, this.context)
  }

  connection(connected: boolean, reconnected: boolean): void {
    this.plain.connected.updateUnsafe(connected ? 1 : 0, this.context)
    if (reconnected) this.plain.reconnects.updateUnsafe(1, this.context)
  }
}

// ---------------------------------------------------------------------------------------------------------
// W3C Trace Context in MQTT 5 user properties
// ---------------------------------------------------------------------------------------------------------

/** The span a fiber runs in, if any. */
export const currentSpan = (context: Context.Context<never>): Tracer.AnySpan | undefined =>
  Context.getOrUndefined(context, Tracer.ParentSpan)

/** The `traceparent` of a span: version 00, trace id, span id, sampled flag. */
export const traceparentOf = (span: Tracer.AnySpan): string =>
  `00-${span.traceId}-${span.spanId}-${span.sampled ? "01" : "00"}`

/** User properties with the span's `traceparent` added (an earlier one replaced). */
export const withTraceparent = (
  userProperties: ReadonlyArray<UserProperty> | undefined,
  span: Tracer.AnySpan
): ReadonlyArray<UserProperty> => [
  ...(userProperties ?? []).filter(([name]) => name !== "traceparent"),
  ["traceparent", traceparentOf(span)]
]

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/

/** The remote span a received message names in its `traceparent` user property, if it is well-formed. */
export const remoteSpanOf = (properties: MessageProperties): Tracer.ExternalSpan | undefined => {
  const userProperties = properties.userProperties
  if (userProperties === undefined) return undefined
  for (const [name, value] of userProperties) {
    if (name !== "traceparent") continue
    const match = TRACEPARENT.exec(value)
    if (match === null || match[1] === "ff" || /^0+$/.test(match[2]) || /^0+$/.test(match[3])) return undefined
    return Tracer.externalSpan({ traceId: match[2], spanId: match[3], sampled: (parseInt(match[4], 16) & 1) === 1 })
  }
  return undefined
}

/**
 * A span for the delivery of a message to a consumer (`mqtt receive <topic>`, kind consumer), its parent the
 * producer's span when the message carries a `traceparent`: `tracing.messages` makes one for each message a
 * stream hands out.
 */
export const receiveSpan = (message: MqttMessage): Effect.Effect<void> => {
  const parent = remoteSpanOf(message.properties)
  return Effect.withSpan(Effect.void, `mqtt receive ${message.topic}`, {
    kind: "consumer",
    ...(parent === undefined ? {} : { parent }),
    attributes: {
      "messaging.system": "mqtt",
      "messaging.operation.name": "receive",
      "messaging.operation.type": "receive",
      "messaging.destination.name": message.topic,
      "messaging.message.body.size": message.payload.byteLength,
      "mqtt.qos": message.qos
    }
  })
}
