/**
 * MQTT 5 request/response (section 4.10) on top of publish and subscriptions: `request` publishes with a
 * response topic (this client's, subscribed once, on first use) and fresh correlation data, and waits for the
 * response; `respond` serves requests on a subscription stream and publishes each reply to its response topic.
 * Both check their arguments before their first packet. What goes wrong with one request (the handler's failure,
 * a reply that is refused, too large, or invalid) is a warning and that request's own: a requester cannot stop
 * a responder; only the client's end, a refused subscription or a defect ends it.
 */
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Hex from "effect/encoding/Hex"
import * as Exit from "effect/Exit"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type * as MqttClient from "../MqttClient.ts"
import * as MqttError from "../MqttError.ts"
import type { MqttMessage, QoS } from "../MqttMessage.ts"
import * as Bytes from "./bytes.ts"
import { describe, escapeControls } from "./describe.ts"
import { type Context, publish, publishAccepted, publishProblem, subscribeAs, subscription } from "./operations.ts"
import { decodeDuration, invalid, isQoS } from "./options.ts"
import * as Telemetry from "./telemetry.ts"
import { nameProblem } from "./topic.ts"

/**
 * A client identifier as one topic level of its response topic: `%`, `/`, `+`, `#` and NUL percent-encoded, so that
 * two identifiers never share a response topic (`a/b` is `a%2Fb`, `a_b` stays `a_b`).
 */
const responseLevel = (clientId: string): string =>
  clientId.replace(/[%/+#\u0000]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, "0")}`)

export const make = (ctx: Context) => {
  /** responses waiting for their request, by correlation data (hex) */
  const waiting = new Map<string, Deferred.Deferred<MqttMessage, MqttError.MqttError>>()
  let responseTopic: Deferred.Deferred<string, MqttError.MqttError> | undefined
  const send = publish(ctx)
  const accept = publishAccepted(ctx)
  ctx.supervisor.onClose.push((error) => {
    for (const deferred of waiting.values()) Deferred.doneUnsafe(deferred, Effect.fail(error))
    waiting.clear()
  })

  /**
   * A message on the response topic that no request waits for: a response that came after its request gave up (a
   * timeout, an interruption, the connection's end), or one without (or with unknown) correlation data. It is
   * acknowledged and dropped, counted in `droppedMessages`; the first of each kind is logged as a warning.
   */
  const unclaimed = (message: MqttMessage, correlation: Uint8Array | undefined) =>
    correlation === undefined
      ? ctx.deliveries.discarded(
        "response without correlation",
        `a message on the response topic ${message.topic} without Correlation Data is dropped and counted in ` +
          "droppedMessages (later ones are counted too, without this warning)"
      )
      : ctx.deliveries.discarded(
        "late response",
        `a response on ${message.topic} came after its request gave up (a timeout, an interruption, the end of ` +
          "the connection), or answers a request this client did not send: dropped and counted in droppedMessages " +
          "(later ones are counted too, without this warning)"
      )

  const onResponse = (message: MqttMessage) => {
    const correlation = message.properties.correlationData
    const key = correlation === undefined ? undefined : Hex.encode(correlation)
    const deferred = key === undefined ? undefined : waiting.get(key)
    if (deferred === undefined) return unclaimed(message, correlation)
    waiting.delete(key!)
    Deferred.doneUnsafe(deferred, Effect.succeed(message))
  }

  /**
   * Subscribes once to this client's response topic; its messages complete the waiting requests. The SUBSCRIBE is
   * the client's, not the first requester's: it runs in a fiber of its own, so that a requester that gives up
   * (its timeout, an interruption) leaves it to complete for the next ones. A refused one is tried again by the
   * next request.
   */
  const ensureResponseTopic: Effect.Effect<string, MqttError.MqttError> = Effect.suspend(() => {
    if (responseTopic !== undefined) return Deferred.await(responseTopic)
    const ready = Deferred.makeUnsafe<string, MqttError.MqttError>()
    responseTopic = ready
    const topic = `${ctx.options.responseTopicPrefix}/${responseLevel(ctx.session.clientId)}`
    const owner = ctx.deliveries.addHandler(onResponse)
    const subscribing = subscribeAs(ctx, owner, topic, { qos: 1 }).pipe(
      Effect.exit,
      Effect.flatMap((exit) =>
        Effect.sync(() => {
          if (Exit.isFailure(exit)) {
            responseTopic = undefined
            ctx.deliveries.remove(owner)
          }
          Deferred.doneUnsafe(ready, Exit.map(exit, () => topic))
        })
      )
    )
    return Effect.andThen(Effect.forkDetach(subscribing), Deferred.await(ready))
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
      // the whole request is checked before the response topic's SUBSCRIBE, the first packet it may send: by the
      // checks of its publish, with a response topic and correlation data in place of those it will carry
      const problem = publishProblem(ctx, topic, payload, publishOptions(options, "r", Bytes.empty))
      if (problem !== undefined) return yield* Effect.fail(problem)
      const correlationData = Bytes.random(16)
      const key = Hex.encode(correlationData)
      const deferred = Deferred.makeUnsafe<MqttMessage, MqttError.MqttError>()
      waiting.set(key, deferred)
      // the timeout covers the response topic's SUBSCRIBE too (the first request's, or one it waits for)
      return yield* Effect.flatMap(
        ensureResponseTopic,
        (replyTo) =>
          Effect.andThen(
            send(topic, payload, publishOptions(options, replyTo, correlationData)),
            Deferred.await(deferred)
          )
      ).pipe(
        Effect.timeoutOrElse({
          duration: timeout,
          orElse: () =>
            Effect.fail(new MqttError.MqttTimeoutError({ operation: "request", millis: Duration.toMillis(timeout) }))
        }),
        Effect.ensuring(Effect.sync(() => waiting.delete(key)))
      )
    })

  /**
   * A request that could not be served: a warning, through the client's log lines; the responder goes on. The
   * topics are the sender's, and so may be the reason (a decode error, a handler's failure): they are escaped, so
   * that a sender cannot write a log line of its own.
   */
  const unanswered = (message: MqttMessage, replyTo: string, reason: string) =>
    ctx.supervisor.log(
      "Warn",
      `MQTT respond: no reply to the request on ${quote(message.topic)} (response topic ${quote(replyTo)}): ` +
        escapeControls(reason)
    )

  const respond = <E, R>(
    filter: string | ReadonlyArray<string>,
    handler: (request: MqttMessage) => Effect.Effect<MqttClient.Reply, E, R>,
    options?: MqttClient.RespondOptions
  ): Effect.Effect<void, MqttError.MqttError, R> =>
    Effect.suspend(() => {
      // every argument is checked before the SUBSCRIBE
      const problem = respondProblem(ctx.options.protocolVersion, filter, handler, options)
      if (problem !== undefined) return reportSubscribed(options?.subscribed)(Effect.fail(problem))
      const qos = options?.qos ?? 1
      return Effect.scoped(Effect.gen(function*() {
        // the waits for the replies' acknowledgements run in this scope: they end with the responder
        const serve = serveRequest(ctx, accept, yield* Effect.scope, handler, qos, unanswered)
        const requests = yield* subscription(ctx)(typeof filter === "string" ? filter : [...filter], { qos }).pipe(
          reportSubscribed(options?.subscribed)
        )
        // a served request is acknowledged (under the client's manual acknowledgement; done when taken otherwise):
        // one that ends the responder is not, and comes again to the next session
        const served = (message: MqttMessage) => Effect.andThen(serve(message), message.ack)
        yield* requests.pipe(Stream.mapEffect(served, { concurrency: options?.concurrency ?? 1 }), Stream.runDrain)
      }))
    })

  return { request, respond }
}

/**
 * Serves one request of `respond`: the handler's reply goes to the request's response topic with its correlation
 * data. What goes wrong is the request's own (`unanswered`: a warning), unless the client ended (the responder
 * then fails) or a typed topic's `onDecodeError: "fail"` ends the responder.
 *
 * A request is served once its reply is accepted into the session; the wait for the broker's acknowledgement is
 * a fiber of its own, in the responder's `scope`, which warns when the broker refuses the reply. The responder
 * never waits for an acknowledgement before it takes the next request: that acknowledgement may sit behind
 * requests that the socket reader cannot hand over until the responder takes one (a full queue), and waiting
 * for it would stop both for good.
 */
const serveRequest = <E, R>(
  ctx: Context,
  accept: ReturnType<typeof publishAccepted>,
  scope: Scope.Scope,
  handler: (request: MqttMessage) => Effect.Effect<MqttClient.Reply, E, R>,
  qos: QoS,
  unanswered: (message: MqttMessage, replyTo: string, reason: string) => Effect.Effect<void>
) =>
(message: MqttMessage): Effect.Effect<void, MqttError.MqttError, R> => {
  const replyTo = message.properties.responseTopic
  // a message without a response topic asks for no response
  if (replyTo === undefined) return Effect.void
  // a response topic that no reply can go to (empty, a wildcard, which Mosquitto forwards) spares the handler
  const topicProblem = nameProblem(replyTo)
  if (topicProblem !== undefined) {
    const error = new MqttError.InvalidTopicError({ topic: String(replyTo), kind: "name", reason: topicProblem })
    return unanswered(message, replyTo, error.message)
  }
  // the broker's refusal of an accepted reply (a PUBACK/PUBREC of 0x80 or more); the client's end is not the
  // request's own, and ends the responder through its subscription
  const acknowledgement = (acknowledged: Effect.Effect<void, MqttError.MqttError>) =>
    Effect.matchEffect(acknowledged, {
      onFailure: (error) =>
        ctx.session.closed !== undefined ? Effect.void : unanswered(message, replyTo, error.message),
      onSuccess: () => Effect.void
    })
  const served: Effect.Effect<NoReply | undefined, HandlerFailed | MqttError.MqttError, R> = Effect.flatMap(
    Effect.mapError(Effect.suspend(() => handler(message)), (error) => new HandlerFailed(error)),
    (reply): Effect.Effect<NoReply | undefined, MqttError.MqttError> => {
      if (reply instanceof NoReply) return Effect.succeed(reply)
      const parts = replyParts(reply)
      if (parts === undefined) {
        return Effect.fail(
          invalid("reply", "expected a payload (a string or a Uint8Array) or { payload, properties }")
        )
      }
      const correlationData = message.properties.correlationData
      return accept(replyTo, parts.payload as Uint8Array | string, {
        qos,
        properties: { ...parts.properties, ...(correlationData === undefined ? {} : { correlationData }) }
      }).pipe(
        // QoS 0 has no acknowledgement to wait for
        Effect.flatMap((acknowledged) => qos === 0 ? Effect.void : Effect.forkIn(acknowledgement(acknowledged), scope)),
        Effect.as(undefined)
      )
    }
  )
  // each request is a span of its own, its parent the requester's span when the request carries one
  const parent = Telemetry.remoteSpanOf(message.properties)
  return Effect.withSpan(served, `mqtt respond ${message.topic}`, {
    kind: "server",
    ...(parent === undefined ? {} : { parent }),
    attributes: {
      "messaging.system": "mqtt",
      "messaging.operation.name": "respond",
      "messaging.destination.name": message.topic,
      "messaging.client.id": ctx.session.clientId
    }
  }).pipe(
    Effect.matchEffect({
      onSuccess: (result) => result?.reason === undefined ? Effect.void : unanswered(message, replyTo, result.reason),
      onFailure: (failure) => {
        if (failure instanceof HandlerFailed) {
          // the typed topics' failures that end the responder (their `onDecodeError: "fail"`)
          if (failure.error instanceof EndResponder) {
            return Effect.fail(failure.error.error as MqttError.MqttError)
          }
          return unanswered(message, replyTo, `the handler failed: ${describeFailure(failure.error)}`)
        }
        // the reply was not accepted: the end of the client ends the responder, anything else is this request's
        // own (too large for the broker, an invalid property, offline and not kept, the store not written)
        if (ctx.session.closed !== undefined) return Effect.fail(failure)
        return unanswered(message, replyTo, failure.message)
      }
    })
  )
}

/**
 * A responder's subscription, reporting its outcome to `respond`'s `subscribed` option: done when the SUBACK
 * granted it, failed with the error, interrupted with the responder.
 */
export const reportSubscribed =
  <E>(subscribed: Deferred.Deferred<void, E> | undefined) =>
  <A, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    // a `subscribed` that is not a Deferred (untyped code) is refused by the checks; nothing is reported to it
    !Deferred.isDeferred(subscribed)
      ? self
      : Effect.onExit(self, (exit) => Deferred.done(subscribed, Exit.asVoid(exit)))

/**
 * The publish options of a request: the caller's QoS (default 1) and properties, with this client's response
 * topic and correlation data in place of the caller's. Options or properties of the wrong type (untyped code)
 * are passed on as they are, for the publish's checks to refuse.
 */
const publishOptions = (
  options: MqttClient.RequestOptions | undefined,
  responseTopic: string,
  correlationData: Uint8Array
): MqttClient.PublishOptions => {
  if (options === undefined) return { qos: 1, properties: { responseTopic, correlationData } }
  if (typeof options !== "object" || options === null) return options
  const properties = options.properties
  return {
    qos: options.qos ?? 1,
    properties: properties === undefined
      ? { responseTopic, correlationData }
      : typeof properties === "object" && properties !== null
      ? { ...properties, responseTopic, correlationData }
      : properties
  }
}

/** A string as a JSON string literal, its line and paragraph separators escaped too: one line, quoted. */
const quote = (text: string): string => escapeControls(JSON.stringify(text))

/**
 * What a `respond` handler answers for a request that gets no reply (a typed request that did not decode, under
 * the typed topics' `"skip"` policy); `reason`, when given, is logged as a warning.
 *
 * @internal
 */
export class NoReply {
  readonly reason: string | undefined
  constructor(reason: string | undefined) {
    this.reason = reason
  }
}

/**
 * A failure of a `respond` handler that ends the responder with `error` (the typed topics' `onDecodeError:
 * "fail"`, a dead letter handler's failure); every other failure of a handler is the request's own.
 *
 * @internal
 */
export class EndResponder<E> {
  readonly error: E
  constructor(error: E) {
    this.error = error
  }
}

/** A handler's failure, apart from the failures of the reply's publish. */
class HandlerFailed {
  readonly error: unknown
  constructor(error: unknown) {
    this.error = error
  }
}

/** A handler's failure in words: an error's message, a tagged value's tag, anything else as a string. */
const describeFailure = (error: unknown): string => {
  if (error instanceof Error) return describe(error)
  if (typeof error === "object" && error !== null && "_tag" in error) return describe(error._tag)
  return describe(error)
}

const replyParts = (
  reply: unknown
): { readonly payload: unknown; readonly properties?: MqttMessage["properties"] | undefined } | undefined =>
  typeof reply === "string" || reply instanceof Uint8Array
    ? { payload: reply }
    : typeof reply === "object" && reply !== null && "payload" in reply
    ? reply as { readonly payload: unknown }
    : undefined

/** What is wrong with the arguments of `respond`, found before its SUBSCRIBE. */
const respondProblem = (
  protocolVersion: number,
  filter: unknown,
  handler: unknown,
  options: MqttClient.RespondOptions | undefined
): MqttError.MqttError | undefined => {
  if (protocolVersion !== 5) {
    return invalid("respond", "request/response needs MQTT 5 (response topic and correlation data)")
  }
  if (typeof filter !== "string" && !(Array.isArray(filter) && filter.every((f) => typeof f === "string"))) {
    return invalid("filter", "expected a topic filter or a list of them")
  }
  if (typeof handler !== "function") return invalid("handler", "expected a function")
  if (options !== undefined && (typeof options !== "object" || options === null)) {
    return invalid("options", "expected an object")
  }
  const concurrency = options?.concurrency ?? 1
  if (concurrency !== "unbounded" && !(Number.isSafeInteger(concurrency) && concurrency >= 1)) {
    return invalid("concurrency", "expected a positive whole number or \"unbounded\"")
  }
  if (!isQoS(options?.qos ?? 1)) return invalid("qos", "expected 0, 1 or 2")
  if (options?.subscribed !== undefined && !Deferred.isDeferred(options.subscribed)) {
    return invalid("subscribed", "expected a Deferred")
  }
  return undefined
}
