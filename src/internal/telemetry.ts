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
 * One series of one client identifier: a metric object bound to its attributes, and its value, kept in a plain
 * number. The registry reads it when it is read (`Metric.registerUnsafe`): counting costs an addition, not a
 * registry lookup per update (about a tenth of the client's CPU per QoS 0 message).
 */
class Series {
  value = 0
  private readonly registration: Metric.Registration

  constructor(metric: Counter, counter: boolean, context: Context.Context<never>) {
    this.registration = Metric.registerUnsafe(metric, context, {
      get: counter ? () => ({ count: this.value, incremental: true }) : () => ({ value: this.value }),
      update: () => {},
      modify: () => {}
    })
  }

  /** The series leaves the registry. */
  release(): void {
    this.registration.remove()
  }
}

/** The series of one client identifier in one registry: shared by the clients of that identifier in a process. */
class Cell {
  users = 0
  readonly byQos: Record<
    "messagesSent" | "bytesSent" | "messagesReceived" | "bytesReceived",
    ReadonlyArray<Series>
  >
  readonly plain: Record<"inFlight" | "queued" | "dropped" | "reconnects" | "connected", Series>

  constructor(clientId: string, context: Context.Context<never>) {
    const client = { "messaging.system": "mqtt", "messaging.client.id": clientId }
    const qos = (family: () => Counter) =>
      [0, 1, 2].map((q) =>
        new Series(Metric.withAttributes(family(), { ...client, "mqtt.qos": String(q) }) as Counter, true, context)
      )
    this.byQos = {
      messagesSent: qos(families.messagesSent),
      bytesSent: qos(families.bytesSent),
      messagesReceived: qos(families.messagesReceived),
      bytesReceived: qos(families.bytesReceived)
    }
    const bind = (family: () => Counter, counter: boolean) =>
      new Series(Metric.withAttributes(family(), client) as Counter, counter, context)
    this.plain = {
      inFlight: bind(families.inFlight, false),
      queued: bind(families.queued, false),
      dropped: bind(families.dropped, true),
      reconnects: bind(families.reconnects, true),
      connected: bind(families.connected, false)
    }
  }

  release(): void {
    for (const series of Object.values(this.byQos)) for (const one of series) one.release()
    for (const one of Object.values(this.plain)) one.release()
  }
}

/** The cells of each registry, by client identifier. */
const cells = new WeakMap<object, Map<string, Cell>>()

/**
 * One client's metrics, in the registry of the context the client was made in (Effect's `MetricRegistry`).
 *
 * Each series (client identifier, and QoS where it applies) has the name, description and attributes of
 * `Metric.withAttributes(metrics.<family>, ...)`, so it is the same series in the registry: read with
 * `Metric.value` or `Metric.snapshot`, exported by Effect's OTLP and Prometheus modules. While a client runs, its
 * series are registered with hooks that read its counts (`Metric.registerUnsafe`). Clients of the same identifier
 * running at once in one registry count into the same series; when the last of them goes (its scope closes), the
 * series leave the registry, so that clients made and released one after another (each with a generated
 * identifier, say) do not grow it without bound. A later client of that identifier counts from 0 again: a counter
 * reset, as after a restart of the process.
 */
export class ClientMetrics {
  private readonly cell: Cell
  private readonly clientId: string
  private readonly registry: Map<string, Cell>
  private released = false

  constructor(clientId: string, context: Context.Context<never>) {
    this.clientId = clientId
    const registry = Context.get(context, Metric.MetricRegistry)
    let byId = cells.get(registry)
    if (byId === undefined) cells.set(registry, byId = new Map())
    this.registry = byId
    let cell = byId.get(clientId)
    if (cell === undefined) byId.set(clientId, cell = new Cell(clientId, context))
    cell.users++
    this.cell = cell
  }

  sent(qos: QoS, bytes: number): void {
    const byQos = this.cell.byQos
    byQos.messagesSent[qos].value++
    byQos.bytesSent[qos].value += bytes
  }

  /** Counts received messages by QoS: `counts[qos]` messages and `bytes[qos]` payload bytes. */
  received(counts: ReadonlyArray<number>, bytes: ReadonlyArray<number>): void {
    const byQos = this.cell.byQos
    for (let q = 0; q < 3; q++) {
      byQos.messagesReceived[q].value += counts[q]
      byQos.bytesReceived[q].value += bytes[q]
    }
  }

  gauges(inFlight: number, queued: number): void {
    this.cell.plain.inFlight.value = inFlight
    this.cell.plain.queued.value = queued
  }

  dropped(): void {
    this.cell.plain.dropped.value++
  }

  connection(connected: boolean, reconnected: boolean): void {
    this.cell.plain.connected.value = connected ? 1 : 0
    if (reconnected) this.cell.plain.reconnects.value++
  }

  /**
   * The client is gone: once no client of its identifier is left, its series leave the registry. Later counts
   * are not recorded.
   */
  release(): void {
    if (this.released) return
    this.released = true
    const cell = this.cell
    if (--cell.users > 0) return
    if (this.registry.get(this.clientId) === cell) this.registry.delete(this.clientId)
    cell.release()
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

/**
 * User properties with the span's `traceparent` added (an earlier one replaced). What is not a list is returned
 * as it is, for the encoder to refuse.
 */
export const withTraceparent = (
  userProperties: ReadonlyArray<UserProperty> | undefined,
  span: Tracer.AnySpan
): ReadonlyArray<UserProperty> =>
  userProperties !== undefined && !Array.isArray(userProperties) ? userProperties : [
    ...(userProperties ?? []).filter((pair) => !(Array.isArray(pair) && pair[0] === "traceparent")),
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
