/**
 * Telemetry (issue 14, part 3): spans with OpenTelemetry messaging attributes, the W3C trace context carried
 * through a real Mosquitto from producer to consumer, and metric values after a known workload.
 */
import { afterAll, assert, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Metric, Stream, Tracer } from "effect"
import { IncomingQueue, MqttClient, MqttMessage, MqttTestBroker } from "effect-mqtt"
import { TestClock } from "effect/testing"
import { heapUsed } from "./support/heap.ts"
import { type MosquittoHandle, startMosquitto } from "./support/Mosquitto.ts"

let broker: MosquittoHandle
beforeAll(async () => {
  broker = await startMosquitto()
})
afterAll(() => broker?.dispose())

let topicSeq = 0
const uniqueTopic = (name: string) => `telemetry/${process.pid}/${name}/${topicSeq++}`

/** A tracer that keeps every span it makes. */
const recording = () => {
  const spans: Array<Tracer.NativeSpan> = []
  const tracer = Tracer.make({
    span(options) {
      const span = new Tracer.NativeSpan(options)
      spans.push(span)
      return span
    }
  })
  return { spans, tracer }
}

const parentOf = (span: Tracer.NativeSpan): Tracer.AnySpan | undefined =>
  span.parent._tag === "Some" ? span.parent.value : undefined

describe("trace context across the broker", () => {
  it.live("a publish made inside a span is the parent of the consumer's spans: one trace from producer to consumer", () => {
    const { spans, tracer } = recording()
    return Effect.gen(function*() {
      const topic = uniqueTopic("trace")
      const consumer = yield* MqttClient.make({ url: broker.url, protocolVersion: 5, tracing: { messages: true } })
      yield* consumer.subscribe(topic, { qos: 1 })
      const producer = yield* MqttClient.make({ url: broker.url, protocolVersion: 5, tracing: { messages: true } })
      yield* producer.publish(topic, "traced", { qos: 1 }).pipe(Effect.withSpan("produce"))
      const [message] = yield* consumer.messages.pipe(Stream.take(1), Stream.runCollect)
      yield* Effect.void.pipe(MqttMessage.withSpan(message))
      const publish = spans.find((s) => s.name === "mqtt publish")!
      const receive = spans.find((s) => s.name === `mqtt receive ${topic}`)!
      const process = spans.find((s) => s.name === `mqtt process ${topic}`)!
      assert.isDefined(publish)
      expect(parentOf(publish)?.spanId).toBe(spans.find((s) => s.name === "produce")!.spanId)
      for (const span of [receive, process]) {
        assert.isDefined(span)
        expect([parentOf(span)?.traceId, parentOf(span)?.spanId]).toEqual([publish.traceId, publish.spanId])
        expect(span.traceId).toBe(publish.traceId)
        expect(span.kind).toBe("consumer")
      }
      expect(publish.kind).toBe("producer")
      expect(Object.fromEntries(publish.attributes)).toMatchObject({
        "messaging.system": "mqtt",
        "messaging.operation.name": "publish",
        "messaging.destination.name": topic,
        "messaging.message.body.size": 6,
        "mqtt.qos": 1
      })
      // the trace context is a user property on the wire: MqttMessage.remoteSpan reads it back
      expect(message.properties.userProperties?.map(([name]) => name)).toEqual(["traceparent"])
      expect(MqttMessage.remoteSpan(message)?.spanId).toBe(publish.spanId)
    }).pipe(Effect.scoped, Effect.withTracer(tracer))
  })

  it.live("tracing.propagate: false, or a publish outside any span, adds no traceparent", () =>
    Effect.gen(function*() {
      const topic = uniqueTopic("no-trace")
      const consumer = yield* MqttClient.make({ url: broker.url, protocolVersion: 5 })
      yield* consumer.subscribe(topic, { qos: 1 })
      const quiet = yield* MqttClient.make({ url: broker.url, protocolVersion: 5, tracing: { propagate: false } })
      yield* quiet.publish(topic, "no propagation", { qos: 1 }).pipe(Effect.withSpan("produce"))
      const plain = yield* MqttClient.make({ url: broker.url, protocolVersion: 5 })
      yield* plain.publish(topic, "no span", { qos: 1, properties: { userProperties: [["k", "v"]] } })
      const received = yield* consumer.messages.pipe(Stream.take(2), Stream.runCollect)
      expect(received.map((m) => m.properties.userProperties)).toEqual([undefined, [["k", "v"]]])
      expect(received.map(MqttMessage.remoteSpan)).toEqual([undefined, undefined])
    }).pipe(Effect.scoped))

  it.live("request/respond: the responder's span for a request is a child of the requester's request span", () => {
    const { spans, tracer } = recording()
    return Effect.gen(function*() {
      const topic = uniqueTopic("rpc")
      const responder = yield* MqttClient.make({ url: broker.url, protocolVersion: 5 })
      const ready = yield* Effect.forkScoped(
        responder.respond(topic, (request) => Effect.succeed(`echo ${request.text}`))
      )
      const requester = yield* MqttClient.make({ url: broker.url, protocolVersion: 5 })
      // until the responder has subscribed, a request goes unanswered: ask again
      const reply = yield* requester.request(topic, "hi", { timeout: "1 second" }).pipe(Effect.retry({ times: 20 }))
      expect(reply.text).toBe("echo hi")
      const requests = spans.filter((s) => s.name === "MqttClient.request")
      const respond = spans.find((s) => s.name === `mqtt respond ${topic}`)!
      assert.isDefined(respond)
      // (the request that was answered: an earlier one may have gone out before the responder subscribed)
      const request = requests.find((r) => r.spanId === parentOf(respond)?.spanId)
      assert.isDefined(request, "the responder's span has a request span as its parent")
      expect(parentOf(respond)?.traceId).toBe(request!.traceId)
      expect(respond.kind).toBe("server")
      void ready
    }).pipe(Effect.scoped, Effect.withTracer(tracer))
  })

  it.live("subscribe, unsubscribe and request are spans with messaging attributes", () =>
    Effect.gen(function*() {
      const { spans, tracer } = recording()
      yield* Effect.gen(function*() {
        const client = yield* MqttClient.make({ url: broker.url, protocolVersion: 5 })
        const topic = uniqueTopic("ops")
        yield* client.subscribe(topic)
        yield* client.unsubscribe(topic)
      }).pipe(Effect.scoped, Effect.withTracer(tracer))
      const names = spans.map((s) => s.name)
      expect(names).toContain("MqttClient.subscribe")
      expect(names).toContain("MqttClient.unsubscribe")
      const subscribe = spans.find((s) => s.name === "MqttClient.subscribe")!
      expect(subscribe.attributes.get("messaging.system")).toBe("mqtt")
      expect(subscribe.attributes.get("messaging.operation.name")).toBe("subscribe")
    }))
})

/** The value of one of the client's metrics, for one client (and QoS). */
const metricValue = (name: string, clientId: string, qos?: number) =>
  Effect.map(Metric.snapshot, (snapshots) => {
    const found = snapshots.filter((s) =>
      s.id === name && s.attributes?.["messaging.client.id"] === clientId &&
      (qos === undefined || s.attributes?.["mqtt.qos"] === String(qos))
    )
    return found.map((s) =>
      (s.state as { count?: number; value?: number }).count ?? (s.state as { value: number }).value
    )
      .reduce((a, b) => a + b, 0)
  })

describe("metrics", () => {
  it.effect("after a known workload: messages and bytes by QoS, drops, connection state and reconnects", () =>
    Effect.gen(function*() {
      const testBroker = yield* MqttTestBroker.make()
      const id = `metrics-${process.pid}`
      const client = yield* testBroker.makeClient({
        clientId: id,
        protocolVersion: 5,
        queue: IncomingQueue.sliding(4),
        logLevel: "None"
      })
      yield* client.subscribe("m/#", { qos: 2 })
      for (const qos of [0, 0, 0, 1, 1, 2] as const) yield* client.publish("m/t", "12345", { qos })
      // six messages came back to the sliding(4) queue: two were dropped
      yield* testBroker.awaitPublished("m/t", 6)
      yield* Effect.yieldNow
      expect(yield* metricValue("mqtt.client.messages.sent", id, 0)).toBe(3)
      expect(yield* metricValue("mqtt.client.messages.sent", id, 1)).toBe(2)
      expect(yield* metricValue("mqtt.client.messages.sent", id, 2)).toBe(1)
      expect(yield* metricValue("mqtt.client.bytes.sent", id)).toBe(30)
      expect(yield* metricValue("mqtt.client.messages.received", id)).toBe(6)
      expect(yield* metricValue("mqtt.client.bytes.received", id)).toBe(30)
      expect(yield* metricValue("mqtt.client.messages.dropped", id)).toBe(2)
      expect(yield* metricValue("mqtt.client.queue.depth", id)).toBe(4)
      expect(yield* metricValue("mqtt.client.connected", id)).toBe(1)
      expect(yield* metricValue("mqtt.client.reconnects", id)).toBe(0)
      yield* testBroker.restart({ persistence: true })
      yield* client.statusChanges.pipe(Stream.filter((s) => s._tag === "Disconnected"), Stream.runHead)
      expect(yield* metricValue("mqtt.client.connected", id)).toBe(0)
      yield* TestClock.adjust("1 minute")
      yield* client.statusChanges.pipe(Stream.filter((s) => s._tag === "Connected"), Stream.runHead)
      expect(yield* metricValue("mqtt.client.reconnects", id)).toBe(1)
      expect(yield* metricValue("mqtt.client.connected", id)).toBe(1)
    }))

  it.effect("two clients in one process, publishing at two QoS levels: each series counts its own, the same series as MqttClient.telemetry names", () =>
    Effect.gen(function*() {
      const testBroker = yield* MqttTestBroker.make()
      const ids = [`metrics-a-${process.pid}`, `metrics-b-${process.pid}`]
      const clients = yield* Effect.forEach(ids, (clientId) => testBroker.makeClient({ clientId, logLevel: "None" }))
      // interleaved, so that one client's updates follow the other's and QoS 0 follows QoS 1
      for (let i = 0; i < 5; i++) {
        yield* clients[0].publish("m/a", "123", { qos: 1 })
        yield* clients[1].publish("m/b", "1234567", { qos: 0 })
        if (i % 2 === 0) yield* clients[0].publish("m/a", "1", { qos: 0 })
      }
      expect(yield* metricValue("mqtt.client.messages.sent", ids[0], 1)).toBe(5)
      expect(yield* metricValue("mqtt.client.messages.sent", ids[0], 0)).toBe(3)
      expect(yield* metricValue("mqtt.client.messages.sent", ids[1], 0)).toBe(5)
      expect(yield* metricValue("mqtt.client.bytes.sent", ids[0])).toBe(18)
      expect(yield* metricValue("mqtt.client.bytes.sent", ids[1])).toBe(35)
      const family = MqttClient.telemetry.messagesSent.pipe(
        Metric.withAttributes({ "messaging.system": "mqtt", "messaging.client.id": ids[0], "mqtt.qos": "1" })
      )
      expect((yield* Metric.value(family)).count).toBe(5)
    }))

  it.effect("the attributes of the context's CurrentMetricAttributes are on each series, the client's own over them, as Metric.withAttributes merges them", () =>
    Effect.gen(function*() {
      const testBroker = yield* MqttTestBroker.make()
      const id = `metrics-attributes-${process.pid}`
      const context = { "service.name": "orders", "messaging.client.id": "not-this-one" }
      yield* Effect.scoped(
        Effect.gen(function*() {
          const client = yield* testBroker.makeClient({ clientId: id, logLevel: "None" })
          yield* client.publish("m/attributes", "123", { qos: 1 })
          const series = (yield* Metric.snapshot).filter((s) => s.attributes?.["service.name"] === "orders")
          expect(series.length).toBe(17)
          for (const s of series) expect(s.attributes?.["messaging.client.id"]).toBe(id)
          const sent = MqttClient.telemetry.messagesSent.pipe(
            Metric.withAttributes({ "messaging.system": "mqtt", "messaging.client.id": id, "mqtt.qos": "1" })
          )
          expect((yield* Metric.value(sent)).count).toBe(1)
          expect(
            series.find((s) => s.id === "mqtt.client.messages.sent" && s.attributes?.["mqtt.qos"] === "1")?.attributes
          )
            .toEqual({ ...context, "messaging.system": "mqtt", "messaging.client.id": id, "mqtt.qos": "1" })
        }).pipe(Effect.provideService(Metric.CurrentMetricAttributes, context))
      )
    }))

  it.effect("a client's series live while a client of its identifier runs: two at once count into one series; when the last goes each series is read once more with its last values, then leaves; a later client counts from 0", () =>
    Effect.gen(function*() {
      const testBroker = yield* MqttTestBroker.make()
      const id = `metrics-life-${process.pid}`
      const sent = () => metricValue("mqtt.client.messages.sent", id, 0)
      const seriesOf = () =>
        Effect.map(Metric.snapshot, (all) => all.filter((s) => s.attributes?.["messaging.client.id"] === id).length)
      yield* Effect.scoped(Effect.gen(function*() {
        const client = yield* testBroker.makeClient({ clientId: id, logLevel: "None" })
        for (let i = 0; i < 3; i++) yield* client.publish("m/life", "x")
        expect(yield* sent()).toBe(3)
        // 4 counters by QoS (3 each), 5 more
        expect(yield* seriesOf()).toBe(17)
      }))
      // the client is gone: its series are read once more, with their last values, then they are gone
      expect(yield* sent()).toBe(3)
      expect(yield* seriesOf()).toBe(0)
      yield* Effect.scoped(Effect.gen(function*() {
        const a = yield* testBroker.makeClient({ clientId: id, logLevel: "None", cleanStart: true })
        yield* a.publish("m/life", "x")
        expect(yield* sent()).toBe(1)
        yield* Effect.scoped(Effect.gen(function*() {
          const b = yield* testBroker.makeClient({ clientId: id, logLevel: "None" })
          yield* b.publish("m/life", "x")
          yield* a.publish("m/life", "x")
          expect(yield* sent()).toBe(3)
        }))
        // b is gone, a still counts into the same series
        yield* a.publish("m/life", "x")
        expect(yield* sent()).toBe(4)
        // one series per identifier and QoS in the registry, never two
        const series = (yield* Metric.snapshot).filter((s) =>
          s.id === "mqtt.client.messages.sent" && s.attributes?.["messaging.client.id"] === id &&
          s.attributes?.["mqtt.qos"] === "0"
        )
        expect(series.length).toBe(1)
      }))
      // a client of the identifier made before the last read of the gone one's series replaces them
      yield* Effect.scoped(Effect.gen(function*() {
        const c = yield* testBroker.makeClient({ clientId: id, logLevel: "None", cleanStart: true })
        yield* c.publish("m/life", "x")
        expect(yield* sent()).toBe(1)
      }))
      expect(yield* sent()).toBe(1)
      expect(yield* seriesOf()).toBe(0)
    }))

  it.effect("an exporter's last export, in a finalizer that runs after the client is released (the telemetry layer beneath the client's), sees the client's last counts", () =>
    Effect.gen(function*() {
      const testBroker = yield* MqttTestBroker.make()
      const id = `metrics-flush-${process.pid}`
      let lastExport: number | undefined
      yield* Effect.scoped(Effect.gen(function*() {
        // added first, so run last: as OtlpMetrics' final export when the client's layer is provided by it
        yield* Effect.addFinalizer(() =>
          Effect.map(metricValue("mqtt.client.messages.sent", id, 1), (sent) => {
            lastExport = sent
          })
        )
        const client = yield* testBroker.makeClient({ clientId: id, logLevel: "None" })
        for (let i = 0; i < 3; i++) yield* client.publish("m/flush", "x", { qos: 1 })
      }))
      expect(lastExport).toBe(3)
      expect(yield* metricValue("mqtt.client.messages.sent", id, 1)).toBe(0)
    }))

  it.effect("two clients of one identifier (on two brokers): their gauges are the sum, and connected while either is", () =>
    Effect.gen(function*() {
      const first = yield* MqttTestBroker.make()
      const second = yield* MqttTestBroker.make()
      const id = `metrics-gauges-${process.pid}`
      const b = yield* second.makeClient({ clientId: id, logLevel: "None", queue: IncomingQueue.bounded(16) })
      yield* b.subscribe("g/#")
      yield* Effect.scoped(Effect.gen(function*() {
        const a = yield* first.makeClient({ clientId: id, logLevel: "None", queue: IncomingQueue.bounded(16) })
        yield* a.subscribe("g/#")
        for (let i = 0; i < 2; i++) yield* first.publish("g/a", "x")
        for (let i = 0; i < 3; i++) yield* second.publish("g/b", "x")
        // each client counts its queue after each read from its broker
        for (let i = 0; i < 100 && (yield* metricValue("mqtt.client.queue.depth", id)) < 5; i++) yield* Effect.yieldNow
        expect(yield* metricValue("mqtt.client.queue.depth", id)).toBe(5)
        expect(yield* metricValue("mqtt.client.connected", id)).toBe(1)
      }))
      // a is gone (its shutdown wrote connected 0 into the shared series before): b is still connected
      expect(yield* metricValue("mqtt.client.connected", id)).toBe(1)
      expect(yield* metricValue("mqtt.client.queue.depth", id)).toBe(3)
    }))

  it.effect(
    "clients made and released one after another leave nothing behind once the registry is read, and at most 256 identifiers wait for that read",
    () =>
      Effect.gen(function*() {
        const testBroker = yield* MqttTestBroker.make()
        const churn = (n: number, named: boolean) =>
          Effect.forEach(
            Array.from({ length: n }, (_, i) => i),
            (i) =>
              Effect.scoped(Effect.gen(function*() {
                // a generated identifier, or one of the application's that is never used again
                const client = yield* testBroker.makeClient({
                  logLevel: "None",
                  ...(named ? { clientId: `churn-${process.pid}-${i}-${Math.random()}` } : {})
                })
                yield* client.publish("m/churn", "x", { qos: 1 })
              })),
            { discard: true }
          )
        const read = Effect.map(Metric.snapshot, (all) => all.length)
        // warm up: code compiled, pools and caches filled
        yield* churn(200, false)
        // the last read of the series of the clients gone so far (these 200, and earlier tests')
        const lastRead = yield* read
        const series = yield* read
        expect(lastRead).toBeGreaterThanOrEqual(series + 200 * 17)
        expect(yield* read).toBe(series)
        const before = heapUsed()
        yield* churn(300, false)
        yield* churn(300, true)
        // with no read in between, the last 256 identifiers' series wait for it
        expect(yield* read).toBe(series + 256 * 17)
        expect(yield* read).toBe(series)
        // each client held about 17 KB in the registry for good before (10 MB for these 600)
        const perClient = (heapUsed() - before) / 600
        expect(perClient).toBeLessThan(3 * 1024)
      }),
    60_000
  )
})
