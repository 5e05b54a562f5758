/**
 * MQTT 5 request/response (section 4.10) on top of publish and subscriptions: `request` publishes with a
 * response topic (this client's, subscribed once, on first use) and fresh correlation data, and waits for the
 * response; `respond` serves requests on a subscription stream and publishes each reply to its response topic.
 */
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Hex from "effect/encoding/Hex"
import * as Exit from "effect/Exit"
import * as Stream from "effect/Stream"
import type * as MqttClient from "../MqttClient.ts"
import * as MqttError from "../MqttError.ts"
import type { MqttMessage } from "../MqttMessage.ts"
import * as Bytes from "./bytes.ts"
import { type Context, publish, subscribeAs, subscription } from "./operations.ts"
import { decodeDuration, invalid } from "./options.ts"
import * as Telemetry from "./telemetry.ts"

export const make = (ctx: Context) => {
  /** responses waiting for their request, by correlation data (hex) */
  const waiting = new Map<string, Deferred.Deferred<MqttMessage, MqttError.MqttError>>()
  let responseTopic: Deferred.Deferred<string, MqttError.MqttError> | undefined
  const send = publish(ctx)
  ctx.supervisor.onClose.push((error) => {
    for (const deferred of waiting.values()) Deferred.doneUnsafe(deferred, Effect.fail(error))
    waiting.clear()
  })

  const onResponse = (message: MqttMessage) => {
    const correlation = message.properties.correlationData
    if (correlation === undefined) return
    const key = Hex.encode(correlation)
    const deferred = waiting.get(key)
    if (deferred === undefined) return
    waiting.delete(key)
    Deferred.doneUnsafe(deferred, Effect.succeed(message))
  }

  /** Subscribes once to this client's response topic; its messages complete the waiting requests. */
  const ensureResponseTopic: Effect.Effect<string, MqttError.MqttError> = Effect.suspend(() => {
    if (responseTopic !== undefined) return Deferred.await(responseTopic)
    const ready = Deferred.makeUnsafe<string, MqttError.MqttError>()
    responseTopic = ready
    const topic = `${ctx.options.responseTopicPrefix}/${ctx.session.clientId.replace(/[+#/\u0000]/g, "_")}`
    const owner = ctx.deliveries.addHandler(onResponse)
    return subscribeAs(ctx, owner, topic, { qos: 1 }).pipe(
      Effect.matchEffect({
        onFailure: (error) => {
          responseTopic = undefined
          ctx.deliveries.remove(owner)
          return Effect.andThen(Deferred.fail(ready, error), Effect.fail(error))
        },
        onSuccess: () => Effect.andThen(Deferred.succeed(ready, topic), Effect.succeed(topic))
      })
    )
  })

  const request = (
    topic: string,
    payload: Uint8Array | string,
    options?: MqttClient.RequestOptions
  ): Effect.Effect<MqttMessage, MqttError.MqttError> =>
    Effect.gen(function*() {
      if (ctx.options.protocolVersion !== 5) {
        return yield* invalid("request", "request/response needs MQTT 5 (response topic and correlation data)")
      }
      const timeout = yield* decodeDuration("timeout", options?.timeout, Duration.seconds(30))
      const replyTo = yield* ensureResponseTopic
      const correlationData = Bytes.random(16)
      const key = Hex.encode(correlationData)
      const deferred = Deferred.makeUnsafe<MqttMessage, MqttError.MqttError>()
      waiting.set(key, deferred)
      return yield* Effect.andThen(
        send(topic, payload, {
          qos: options?.qos ?? 1,
          properties: { ...options?.properties, responseTopic: replyTo, correlationData }
        }),
        Deferred.await(deferred)
      ).pipe(
        Effect.timeoutOrElse({
          duration: timeout,
          orElse: () =>
            Effect.fail(new MqttError.MqttTimeoutError({ operation: "request", millis: Duration.toMillis(timeout) }))
        }),
        Effect.ensuring(Effect.sync(() => waiting.delete(key)))
      )
    })

  const respond = <E, R>(
    filter: string | ReadonlyArray<string>,
    handler: (request: MqttMessage) => Effect.Effect<MqttClient.Reply, E, R>,
    options?: MqttClient.RespondOptions
  ): Effect.Effect<void, MqttError.MqttError | E, R> =>
    Effect.scoped(Effect.gen(function*() {
      const requests = yield* subscription(ctx)(typeof filter === "string" ? filter : [...filter], {
        qos: options?.qos ?? 1
      }).pipe(reportSubscribed(options?.subscribed))
      yield* requests.pipe(
        Stream.mapEffect((message) => {
          const replyTo = message.properties.responseTopic
          // a message without a response topic asks for no response
          if (replyTo === undefined) return Effect.void
          // each request is a span of its own, its parent the requester's span when the request carries one
          const parent = Telemetry.remoteSpanOf(message.properties)
          return Effect.withSpan(
            Effect.flatMap(handler(message), (reply) => {
              const { payload, properties } = typeof reply === "string" || reply instanceof Uint8Array
                ? { payload: reply, properties: undefined }
                : reply
              const correlationData = message.properties.correlationData
              return send(replyTo, payload, {
                qos: options?.qos ?? 1,
                properties: { ...properties, ...(correlationData === undefined ? {} : { correlationData }) }
              })
            }),
            `mqtt respond ${message.topic}`,
            {
              kind: "server",
              ...(parent === undefined ? {} : { parent }),
              attributes: {
                "messaging.system": "mqtt",
                "messaging.operation.name": "respond",
                "messaging.destination.name": message.topic,
                "messaging.client.id": ctx.session.clientId
              }
            }
          )
        }, { concurrency: options?.concurrency ?? 1 }),
        Stream.runDrain
      )
    }))

  return { request, respond }
}

/**
 * A responder's subscription, reporting its outcome to `respond`'s `subscribed` option: done when the SUBACK
 * granted it, failed with the error, interrupted with the responder.
 */
export const reportSubscribed =
  <E>(subscribed: Deferred.Deferred<void, E> | undefined) =>
  <A, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    subscribed === undefined ? self : Effect.onExit(self, (exit) => Deferred.done(subscribed, Exit.asVoid(exit)))
