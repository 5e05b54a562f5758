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

interface Family {
  readonly name: string
  readonly description: string
  readonly counter: boolean
}

const counter = (name: string, description: string): Family => ({ name, description, counter: true })
const gauge = (name: string, description: string): Family => ({ name, description, counter: false })

/** Each metric: `metrics` holds one of each, and each series of a client is made from it (see below). */
const families = {
  messagesSent: counter("mqtt.client.messages.sent", "Messages published by the client, by QoS"),
  bytesSent: counter("mqtt.client.bytes.sent", "Payload bytes published by the client, by QoS"),
  messagesReceived: counter("mqtt.client.messages.received", "Messages received by the client, by QoS"),
  bytesReceived: counter("mqtt.client.bytes.received", "Payload bytes received by the client, by QoS"),
  inFlight: gauge("mqtt.client.publishes.inflight", "QoS 1/2 publishes of the client holding a packet identifier"),
  queued: gauge("mqtt.client.queue.depth", "Messages waiting in the `messages` queue"),
  dropped: counter(
    "mqtt.client.messages.dropped",
    "Messages dropped by sliding or dropping queues, given up unread after a released subscription stream, or " +
      "over the client's Maximum Packet Size (MQTT 3.1.1), or responses that no request waits for"
  ),
  reconnects: counter("mqtt.client.reconnects", "Connections made again after one was lost"),
  connected: gauge("mqtt.client.connected", "1 while connected, 0 otherwise")
} as const

type Counter = Metric.Metric<number, unknown>

/** A family's metric, with attributes (the series they name) or without (the family). */
const familyCounter = (family: Family, attributes?: Metric.Metric.AttributeSet) =>
  Metric.counter(family.name, { description: family.description, incremental: true, attributes })
const familyGauge = (family: Family, attributes?: Metric.Metric.AttributeSet) =>
  Metric.gauge(family.name, { description: family.description, attributes })

const metricOf = (family: Family, attributes: Metric.Metric.AttributeSet): Counter =>
  family.counter ? familyCounter(family, attributes) : familyGauge(family, attributes) as Counter

/** The client's metrics: one family each, a series per client identifier (and QoS where it applies). */
export const metrics = {
  messagesSent: familyCounter(families.messagesSent),
  bytesSent: familyCounter(families.bytesSent),
  messagesReceived: familyCounter(families.messagesReceived),
  bytesReceived: familyCounter(families.bytesReceived),
  inFlight: familyGauge(families.inFlight),
  queued: familyGauge(families.queued),
  dropped: familyCounter(families.dropped),
  reconnects: familyCounter(families.reconnects),
  connected: familyGauge(families.connected)
} as const

/**
 * How many identifiers whose clients have all gone keep their series until the registry is next read (an
 * exporter's last export, at shutdown, runs after the clients are released); past it, the oldest leave at once.
 */
export const RELEASED_KEPT = 256

const ignore = () => {}

const COUNTERS = ["messagesSent", "bytesSent", "messagesReceived", "bytesReceived"] as const
type ByQos = (typeof COUNTERS)[number]

/** The series of a cell, in order: the counters by QoS (`COUNTERS` times QoS 0, 1, 2), then these. */
const IN_FLIGHT = 12
const QUEUED = 13
const DROPPED = 14
const RECONNECTS = 15
const CONNECTED = 16
const SERIES = 17

/**
 * The series of one client identifier in one registry, shared by the clients of that identifier in a process.
 * Each series is a metric bound to its attributes, whose state the registry reads from the cell's plain numbers
 * when it is read (`Metric.registerUnsafe`): counting costs an addition, not a registry lookup per update (about a
 * tenth of the client's CPU per QoS 0 message).
 */
class Cell {
  /** the clients of the identifier running in this registry (most often one) */
  readonly users: Array<ClientMetrics> = []
  /** counts by QoS, and the counters that are not */
  readonly byQos: Record<ByQos, [number, number, number]> = {
    messagesSent: [0, 0, 0],
    bytesSent: [0, 0, 0],
    messagesReceived: [0, 0, 0],
    bytesReceived: [0, 0, 0]
  }
  dropped = 0
  reconnects = 0
  /** each series' registration, until it leaves the registry */
  private readonly registrations: Array<Metric.Registration | undefined> = []
  /** no client of the identifier is left: the next read of each series is its last */
  private last = false
  private left = SERIES
  private readonly onGone: (cell: Cell) => void

  /**
   * `attributes` are those of the context's `CurrentMetricAttributes`, and the client's over them (as
   * `Metric.withAttributes` merges them); the series are registered in `registry` with no further attributes.
   */
  constructor(
    clientId: string,
    registry: Metric.MetricRegistry,
    extra: Metric.Metric.AttributeSet,
    onGone: (cell: Cell) => void
  ) {
    this.onGone = onGone
    // a context with the registry alone: the attributes are the series' own, shared by the series that have them
    const context = Context.make(Metric.MetricRegistry, registry)
    const client = { ...extra, "messaging.system": "mqtt", "messaging.client.id": clientId }
    const byQos = [0, 1, 2].map((q) => ({ ...client, "mqtt.qos": String(q) }))
    for (const name of COUNTERS) {
      for (const q of [0, 1, 2] as const) this.register(metricOf(families[name], byQos[q]), context)
    }
    this.register(metricOf(families.inFlight, client), context)
    this.register(metricOf(families.queued, client), context)
    this.register(metricOf(families.dropped, client), context)
    this.register(metricOf(families.reconnects, client), context)
    this.register(metricOf(families.connected, client), context)
  }

  private register(metric: Counter, context: Context.Context<never>): void {
    const i = this.registrations.length
    this.registrations.push(Metric.registerUnsafe(metric, context, {
      get: () => this.read(i),
      update: ignore,
      modify: ignore
    }))
  }

  /** The state of series `i`; the last read of it once no client is left. */
  private read(i: number): Metric.CounterState<number> | Metric.GaugeState<number> {
    const state = this.state(i)
    if (this.last) this.removeOne(i)
    return state
  }

  private state(i: number): Metric.CounterState<number> | Metric.GaugeState<number> {
    if (i < IN_FLIGHT) return { count: this.byQos[COUNTERS[(i / 3) | 0]][i % 3], incremental: true }
    switch (i) {
      case DROPPED:
        return { count: this.dropped, incremental: true }
      case RECONNECTS:
        return { count: this.reconnects, incremental: true }
      default: {
        // a gauge of several clients of one identifier: their sum (in flight, queued), or whether any is (connected)
        let value = 0
        for (const user of this.users) {
          if (i === CONNECTED) value = Math.max(value, user.connected)
          else if (i === IN_FLIGHT) value += user.inFlight
          else if (i === QUEUED) value += user.queued
        }
        return { value }
      }
    }
  }

  private removeOne(i: number): void {
    const registration = this.registrations[i]
    if (registration === undefined) return
    this.registrations[i] = undefined
    registration.remove()
    if (--this.left === 0) this.onGone(this)
  }

  /** No client of the identifier is left: each series is read once more (its last values), then leaves. */
  release(): void {
    this.last = true
  }

  /** The series leave the registry now. */
  remove(): void {
    for (let i = 0; i < SERIES; i++) this.removeOne(i)
  }
}

/** The cells of each registry: of running clients, and of identifiers whose clients are gone (oldest first). */
const cells = new WeakMap<object, { readonly running: Map<string, Cell>; readonly released: Map<string, Cell> }>()

/**
 * One client's metrics, in the registry of the context the client was made in (Effect's `MetricRegistry`).
 *
 * Each series (client identifier, and QoS where it applies) has the name, description and attributes of
 * `Metric.withAttributes(metrics.<family>, ...)`, so it is the same series in the registry: read with
 * `Metric.value` or `Metric.snapshot`, exported by Effect's OTLP and Prometheus modules. While a client runs, its
 * series are registered with hooks that read its counts (`Metric.registerUnsafe`). Clients of the same identifier
 * running at once in one registry count into the same series (the gauges: their sum, and whether any is
 * connected).
 *
 * When the last of them goes (its scope closes), each series is read once more, with its last values (an
 * exporter's final export runs after the clients are released), and then leaves the registry; at most
 * `RELEASED_KEPT` identifiers wait for that read, the oldest leaving first. So clients made and released one after
 * another (each with a generated identifier, say) do not grow the registry without bound. A later client of the
 * identifier counts from 0: a counter reset, as after a restart of the process.
 */
export class ClientMetrics {
  private readonly cell: Cell
  private readonly clientId: string
  private readonly registry: { readonly running: Map<string, Cell>; readonly released: Map<string, Cell> }
  private released = false
  inFlight = 0
  queued = 0
  connected = 0

  constructor(clientId: string, context: Context.Context<never>) {
    this.clientId = clientId
    const registry = Context.get(context, Metric.MetricRegistry)
    let byId = cells.get(registry)
    if (byId === undefined) cells.set(registry, byId = { running: new Map(), released: new Map() })
    this.registry = byId
    let cell = byId.running.get(clientId)
    if (cell === undefined) {
      // the series of a client of this identifier that is gone are replaced (and its last counts, if unread)
      byId.released.get(clientId)?.remove()
      const released = byId.released
      byId.running.set(
        clientId,
        cell = new Cell(clientId, registry, Context.get(context, Metric.CurrentMetricAttributes), (gone) => {
          if (released.get(clientId) === gone) released.delete(clientId)
        })
      )
    }
    cell.users.push(this)
    this.cell = cell
  }

  sent(qos: QoS, bytes: number): void {
    const byQos = this.cell.byQos
    byQos.messagesSent[qos]++
    byQos.bytesSent[qos] += bytes
  }

  /** Counts received messages by QoS: `counts[qos]` messages and `bytes[qos]` payload bytes. */
  received(counts: ReadonlyArray<number>, bytes: ReadonlyArray<number>): void {
    const byQos = this.cell.byQos
    for (let q = 0; q < 3; q++) {
      byQos.messagesReceived[q] += counts[q]
      byQos.bytesReceived[q] += bytes[q]
    }
  }

  gauges(inFlight: number, queued: number): void {
    this.inFlight = inFlight
    this.queued = queued
  }

  dropped(): void {
    this.cell.dropped++
  }

  connection(connected: boolean, reconnected: boolean): void {
    this.connected = connected ? 1 : 0
    if (reconnected) this.cell.reconnects++
  }

  /**
   * The client is gone: once no client of its identifier is left, its series are read once more, then leave the
   * registry. Later counts are not recorded.
   */
  release(): void {
    if (this.released) return
    this.released = true
    const cell = this.cell
    cell.users.splice(cell.users.indexOf(this), 1)
    if (cell.users.length > 0) return
    const { released, running } = this.registry
    if (running.get(this.clientId) === cell) running.delete(this.clientId)
    cell.release()
    released.set(this.clientId, cell)
    if (released.size > RELEASED_KEPT) released.values().next().value!.remove()
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
