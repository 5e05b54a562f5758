import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Option, Stream, Tracer } from "effect"
import { MqttClient, MqttMessage } from "effect-mqtt"
import { PrometheusMetrics } from "effect/observability"
import { Broker, withBroker } from "./_broker.ts"

// a tracer that keeps its spans, to print them; an application exports them (see OtlpTracer)
const spans: Array<Tracer.NativeSpan> = []
const tracer = Tracer.make({
  span: (options) => {
    const span = new Tracer.NativeSpan(options)
    spans.push(span)
    return span
  }
})

const program = Effect.gen(function*() {
  const consumer = yield* MqttClient.MqttClient
  const broker = yield* Broker
  const producer = yield* MqttClient.make({
    ...broker.options,
    clientId: "docs-producer",
    protocolVersion: 5,
    tracing: { messages: true }
  })
  yield* consumer.subscribe("docs/orders/#", { qos: 1 })

  // the publish carries the trace context (a traceparent user property) through the broker
  yield* producer.publish("docs/orders/42", "placed", { qos: 1 }).pipe(Effect.withSpan("checkout"))
  yield* consumer.messages.pipe(
    Stream.take(1),
    Stream.runForEach((message) => Console.log(`order ${message.text}`).pipe(MqttMessage.withSpan(message)))
  )

  const traced = spans.filter((span) => span.name !== "MqttClient.subscribe")
  const parentOf = (span: Tracer.NativeSpan) =>
    traced.find((s) => s.spanId === Option.getOrUndefined(span.parent)?.spanId)?.name ?? "none"
  for (const span of traced) yield* Console.log(`${span.name} (${span.kind}), parent: ${parentOf(span)}`)
  yield* Console.log(`one trace: ${new Set(traced.map((span) => span.traceId)).size === 1}`)

  // the clients' metrics, as Prometheus reads them
  const metrics = yield* PrometheusMetrics.format()
  for (const line of metrics.split("\n")) {
    if (/^mqtt_client_messages_(sent|received)\{.*mqtt_qos="1"/.test(line)) yield* Console.log(line)
  }
})

program.pipe(
  Effect.scoped,
  withBroker({ clientId: "docs-consumer", protocolVersion: 5, tracing: { messages: true } }),
  Effect.withTracer(tracer),
  NodeRuntime.runMain
)
