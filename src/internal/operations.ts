/**
 * The client's operations: each validates what the caller gave (a mistake is a typed error before anything is
 * sent), hands the operation to the session, drains, and waits for the session to end it.
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type * as MqttClient from "../MqttClient.ts"
import * as MqttError from "../MqttError.ts"
import type { MqttMessage, QoS } from "../MqttMessage.ts"
import * as Bytes from "./bytes.ts"
import * as Codec from "./codec.ts"
import type { Deliveries } from "./delivery.ts"
import { describe } from "./describe.ts"
import type { Driver } from "./driver.ts"
import { invalid, isQoS, isUint, type Resolved, stringPayloadProblem } from "./options.ts"
import type { OutgoingMessage } from "./outgoing.ts"
import type { Operation } from "./output.ts"
import { LINE_FULL, OFFLINE_FULL, type Session } from "./session.ts"
import { type FilterSpec, MESSAGES, type Request } from "./subscriptions.ts"
import type { Supervisor } from "./supervisor.ts"
import * as Telemetry from "./telemetry.ts"
import { filterProblem, nameProblem } from "./topic.ts"

/** What the operations of one client share. */
export interface Context {
  readonly options: Resolved
  readonly session: Session
  readonly driver: Driver
  readonly deliveries: Deliveries
  readonly supervisor: Supervisor
}

/** How long releasing a `subscription` waits for the broker's UNSUBACK before it lets go anyway. */
const RELEASE_TIMEOUT = Duration.seconds(5)

/**
 * Waits until the session ends an operation; the caller that gives up runs `withdraw`. The waiting fiber is one of
 * the driver's `ackWaiters` meanwhile (a consumer that waits so while the reader waits for room would wait for
 * good), unless `driver` is undefined (a release, which no consumer waits for).
 */
const awaitOperation = <O extends Operation>(
  operation: O,
  withdraw: (operation: O) => void,
  driver: Driver | undefined
): Effect.Effect<O, MqttError.MqttError> =>
  Effect.callback<O, MqttError.MqttError>((resume) => {
    const result = () =>
      resume(operation.error === undefined ? Effect.succeed(operation) : Effect.fail(operation.error))
    if (operation.done) return result()
    const fiber = driver === undefined ? undefined : Fiber.getCurrent()
    if (fiber !== undefined) driver!.addAckWaiter(fiber)
    const listener = fiber === undefined ? result : () => {
      driver!.removeAckWaiter(fiber)
      result()
    }
    listen(operation, listener)
    return Effect.sync(() => {
      if (fiber !== undefined) driver!.removeAckWaiter(fiber)
      // the last to give up withdraws the operation (an acknowledgement effect may be awaited by several fibers)
      if (unlisten(operation, listener)) withdraw(operation)
    })
  })

/** The listeners of operations that more than one fiber waits for (see `listen`). */
const listeners = new WeakMap<Operation, Set<() => void>>()

/** Adds a listener to an operation: its only one (the usual case), or one of a set called in turn. */
const listen = (operation: Operation, listener: () => void): void => {
  const current = operation.listener
  if (current === undefined) {
    operation.listener = listener
    return
  }
  let set = listeners.get(operation)
  if (set === undefined) {
    const all = new Set([current])
    listeners.set(operation, set = all)
    operation.listener = () => {
      for (const f of [...all]) f()
    }
  }
  set.add(listener)
}

/** Removes a listener; returns whether none is left. */
const unlisten = (operation: Operation, listener: () => void): boolean => {
  if (operation.listener === listener) {
    operation.listener = undefined
    return true
  }
  const set = listeners.get(operation)
  if (set === undefined) return operation.listener === undefined
  set.delete(listener)
  if (set.size > 0) return false
  listeners.delete(operation)
  operation.listener = undefined
  return true
}

const noWithdraw = () => {}

export const publish = (ctx: Context) =>
(
  topic: string,
  payload: Uint8Array | string,
  options?: MqttClient.PublishOptions
): Effect.Effect<void, MqttError.MqttError> => traced(ctx, topic, payload, options, publishNow)

/**
 * A publish run with its span (`tracing.messages`) and its trace context: on MQTT 5, one made inside a span
 * carries its W3C `traceparent` (unless `tracing.propagate` is false). Each run encodes afresh: the same publish
 * effect may run several times, even at once.
 */
const traced = <A>(
  ctx: Context,
  topic: string,
  payload: Uint8Array | string,
  options: MqttClient.PublishOptions | undefined,
  run: (
    ctx: Context,
    topic: string,
    payload: Uint8Array | string,
    options: MqttClient.PublishOptions | undefined
  ) => Effect.Effect<A, MqttError.MqttError>
): Effect.Effect<A, MqttError.MqttError> => {
  const withContext = ctx.options.protocolVersion === 5 && ctx.options.tracing.propagate
    ? Effect.withFiber((fiber) => {
      const span = Telemetry.currentSpan(fiber.context)
      if (span === undefined) return run(ctx, topic, payload, options)
      const properties = {
        ...options?.properties,
        userProperties: Telemetry.withTraceparent(options?.properties?.userProperties, span)
      }
      return run(ctx, topic, payload, { ...options, properties })
    })
    : Effect.suspend(() => run(ctx, topic, payload, options))
  if (!ctx.options.tracing.messages) return withContext
  return Effect.withSpan(withContext, "mqtt publish", {
    kind: "producer",
    attributes: {
      "messaging.system": "mqtt",
      "messaging.operation.name": "publish",
      "messaging.operation.type": "send",
      "messaging.destination.name": topic,
      "messaging.client.id": ctx.session.clientId,
      "messaging.message.body.size": typeof payload === "string"
        ? Bytes.utf8Length(payload)
        : payload instanceof Uint8Array
        ? payload.byteLength
        : 0,
      "mqtt.qos": options?.qos ?? 0
    }
  })
}

/** A publish checked and encoded for the session, or why it is refused before anything is sent. */
const prepare = (
  ctx: Context,
  topic: string,
  payload: Uint8Array | string,
  options: MqttClient.PublishOptions | undefined
): OutgoingMessage | MqttError.MqttError => {
  const qos = options?.qos ?? 0
  const retain = options?.retain ?? false
  const problem = nameProblem(topic)
  if (problem !== undefined) {
    return new MqttError.InvalidTopicError({ topic: String(topic), kind: "name", reason: problem })
  }
  if (!isQoS(qos)) return invalid("qos", "expected 0, 1 or 2")
  if (typeof retain !== "boolean") return invalid("retain", "expected a boolean")
  if (typeof payload === "string") {
    const payloadProblem = stringPayloadProblem(payload)
    if (payloadProblem !== undefined) return invalid("payload", payloadProblem)
  } else if (!(payload instanceof Uint8Array)) return invalid("payload", "expected a Uint8Array or a string")
  if (options !== undefined && (typeof options !== "object" || options === null || Array.isArray(options))) {
    return invalid("options", "expected an object")
  }
  if (options?.properties !== undefined && (typeof options.properties !== "object" || options.properties === null)) {
    return invalid("properties", "expected an object")
  }
  const bytes = typeof payload === "string" ? Bytes.utf8(payload) : payload
  let encoded: Codec.EncodedPublish
  try {
    encoded = Codec.encodePublish(ctx.options.protocolVersion, topic, bytes, qos, retain, options?.properties)
  } catch (e) {
    const reason = describe(e)
    // too large for MQTT is the payload's doing (with the topic); everything else the encoder refuses, the properties'
    return invalid(reason.startsWith("the packet is larger") ? "payload" : "properties", reason)
  }
  return { topic, payload: bytes, qos, retain, properties: options?.properties, encoded }
}

/**
 * Nothing is accepted that cannot be stored: a QoS 1/2 publish while the store cannot be written fails at once
 * (checked again when a publish that waited is tried again).
 */
const storeRefusal = (ctx: Context, message: OutgoingMessage): MqttError.StoreError | undefined =>
  message.qos > 0 && ctx.driver.journal?.failing === true
    ? new MqttError.StoreError({
      store: ctx.options.store!.name,
      operation: "write",
      reason: "the store cannot be written at the moment"
    })
    : undefined

/**
 * Why a publish would be refused before anything is sent, or `undefined`: the checks of `publish`, run without
 * handing anything to the session (for an operation that must check a publish before its own first packet).
 */
export const publishProblem = (
  ctx: Context,
  topic: string,
  payload: Uint8Array | string,
  options: MqttClient.PublishOptions | undefined
): MqttError.MqttError | undefined => {
  const message = prepare(ctx, topic, payload, options)
  return MqttError.isMqttError(message) ? message : storeRefusal(ctx, message)
}

const offlineFull = (ctx: Context) =>
  new MqttError.OfflineError({
    operation: "publish",
    reason: `the offline buffer is full (${ctx.options.offlineCapacity} publishes)`
  })

const publishNow = (
  ctx: Context,
  topic: string,
  payload: Uint8Array | string,
  options: MqttClient.PublishOptions | undefined
): Effect.Effect<void, MqttError.MqttError> => {
  const message = prepare(ctx, topic, payload, options)
  if (MqttError.isMqttError(message)) return Effect.fail(message)
  return publishPrepared(ctx, message)
}

/** `publish` of a checked and encoded message (again after a wait for room in the line). */
const publishPrepared = (ctx: Context, message: OutgoingMessage): Effect.Effect<void, MqttError.MqttError> => {
  const { driver, session } = ctx
  const refused = storeRefusal(ctx, message)
  if (refused !== undefined) return Effect.fail(refused)
  const result = session.publish(message, driver.out, driver.readerStalled)
  if (result === LINE_FULL) {
    return Effect.andThen(driver.awaitLineRoom, Effect.suspend(() => publishPrepared(ctx, message)))
  }
  if (result !== OFFLINE_FULL && !MqttError.isMqttError(result)) {
    driver.metrics.sent(message.qos, message.payload.byteLength)
  }
  driver.drain()
  if (result === undefined) return driver.outbox?.backPressure ?? Effect.void
  if (result === OFFLINE_FULL) {
    return ctx.options.offlineOverflow === "wait"
      ? Effect.andThen(ctx.supervisor.awaitConnected, Effect.suspend(() => publishPrepared(ctx, message)))
      : Effect.fail(offlineFull(ctx))
  }
  if (MqttError.isMqttError(result)) return Effect.fail(result)
  if (result.done) return result.error === undefined ? Effect.void : Effect.fail(result.error)
  return Effect.asVoid(awaitOperation(result, (entry) => {
    session.outgoing.withdraw(entry, driver.out)
    driver.drain()
  }, driver))
}

export const publishAccepted = (ctx: Context) =>
(
  topic: string,
  payload: Uint8Array | string,
  options?: MqttClient.PublishOptions
): Effect.Effect<Effect.Effect<void, MqttError.MqttError>, MqttError.MqttError> =>
  traced(ctx, topic, payload, options, publishAcceptedNow)

/**
 * Accepts a publish into the session and, with a store, waits until it is stored; returns the wait for its
 * acknowledgement. Giving up before it is accepted withdraws it (when it was not written yet); giving up the
 * returned wait does not: an accepted publish belongs to the session.
 */
const publishAcceptedNow = (
  ctx: Context,
  topic: string,
  payload: Uint8Array | string,
  options: MqttClient.PublishOptions | undefined
): Effect.Effect<Effect.Effect<void, MqttError.MqttError>, MqttError.MqttError> => {
  const message = prepare(ctx, topic, payload, options)
  if (MqttError.isMqttError(message)) return Effect.fail(message)
  return acceptPrepared(ctx, message)
}

/** `publishAccepted` of a checked and encoded message (again after a wait for room in the line). */
const acceptPrepared = (
  ctx: Context,
  message: OutgoingMessage
): Effect.Effect<Effect.Effect<void, MqttError.MqttError>, MqttError.MqttError> => {
  const { driver, session } = ctx
  const refused = storeRefusal(ctx, message)
  if (refused !== undefined) return Effect.fail(refused)
  const result = session.publish(message, driver.out, driver.readerStalled)
  if (result === LINE_FULL) {
    return Effect.andThen(driver.awaitLineRoom, Effect.suspend(() => acceptPrepared(ctx, message)))
  }
  if (result !== OFFLINE_FULL && !MqttError.isMqttError(result)) {
    driver.metrics.sent(message.qos, message.payload.byteLength)
  }
  driver.drain()
  if (result === undefined) return Effect.as(driver.outbox?.backPressure ?? Effect.void, Effect.void)
  if (result === OFFLINE_FULL) {
    return ctx.options.offlineOverflow === "wait"
      ? Effect.andThen(
        ctx.supervisor.awaitConnected,
        Effect.suspend(() => acceptPrepared(ctx, message))
      )
      : Effect.fail(offlineFull(ctx))
  }
  if (MqttError.isMqttError(result)) return Effect.fail(result)
  if (result.done && result.error !== undefined) return Effect.fail(result.error)
  const acknowledged = result.done ? Effect.void : Effect.asVoid(awaitOperation(result, noWithdraw, driver))
  const journal = driver.journal
  if (journal === undefined) return Effect.succeed(acknowledged)
  return journal.stored.pipe(
    Effect.onInterrupt(() =>
      Effect.sync(() => {
        session.outgoing.withdraw(result, driver.out)
        driver.drain()
      })
    ),
    Effect.flatMap((stored) =>
      stored
        ? Effect.succeed(acknowledged)
        : Effect.fail(
          result.error ?? new MqttError.StoreError({
            store: ctx.options.store!.name,
            operation: "write",
            reason: "the client closed before the publish was stored"
          })
        )
    )
  )
}

/** The filters of a subscribe call with their options, checked. */
const specsOf = (
  ctx: Context,
  input: string | MqttClient.Subscription | ReadonlyArray<string | MqttClient.Subscription>,
  options: MqttClient.SubscribeOptions | undefined
): ReadonlyArray<FilterSpec> | MqttError.MqttError => {
  // options of the wrong type (a number, a string, a list) would be ignored: QoS 0 without a word
  if (options !== undefined && (typeof options !== "object" || options === null || Array.isArray(options))) {
    return invalid("options", "expected an object")
  }
  const version = ctx.options.protocolVersion
  const list = Array.isArray(input) ? input : [input as string | MqttClient.Subscription]
  if (list.length === 0) return invalid("filters", "at least one filter is needed")
  const specs: Array<FilterSpec> = []
  for (const item of list) {
    const sub: MqttClient.Subscription = typeof item === "string" ? { ...options, filter: item } : item
    if (typeof sub !== "object" || sub === null) {
      return new MqttError.InvalidTopicError({ topic: String(sub), kind: "filter", reason: "expected a string" })
    }
    if (sub.filter === undefined) {
      // MQTT.js's `{ [filter]: { qos } }`, say
      return invalid(
        "filters",
        "expected a filter, a { filter, qos, ... } object, or a list of them (MQTT.js's { [filter]: { qos } } is " +
          "[{ filter, qos }] here)"
      )
    }
    const problem = typeof sub.filter === "string" ? filterProblem(sub.filter) : "expected a string"
    if (problem !== undefined) {
      return new MqttError.InvalidTopicError({ topic: String(sub.filter), kind: "filter", reason: problem })
    }
    // options of the whole SUBSCRIBE, given on one filter: ignored there, so refused
    if (typeof item !== "string") {
      for (const option of ["subscriptionIdentifier", "userProperties"] as const) {
        if ((item as { readonly [key: string]: unknown })[option] !== undefined) {
          return invalid(option, "belongs to the whole SUBSCRIBE: give it in the call's options, not on a filter")
        }
      }
    }
    const qos = sub.qos ?? 0
    if (!isQoS(qos)) return invalid("qos", "expected 0, 1 or 2")
    const v5Only = sub.noLocal !== undefined || sub.retainAsPublished !== undefined || sub.retainHandling !== undefined
    if (v5Only && version !== 5) {
      return invalid("subscribe", "noLocal, retainAsPublished and retainHandling need MQTT 5")
    }
    if (sub.noLocal !== undefined && typeof sub.noLocal !== "boolean") return invalid("noLocal", "expected a boolean")
    if (sub.retainAsPublished !== undefined && typeof sub.retainAsPublished !== "boolean") {
      return invalid("retainAsPublished", "expected a boolean")
    }
    if (sub.retainHandling !== undefined && !isQoS(sub.retainHandling)) {
      return invalid("retainHandling", "expected 0, 1 or 2")
    }
    if (sub.noLocal === true && sub.filter.startsWith("$share/")) {
      return invalid("noLocal", "a shared subscription cannot be no local [MQTT-3.8.3-4]")
    }
    specs.push({
      filter: sub.filter,
      qos,
      noLocal: sub.noLocal ?? false,
      retainAsPublished: sub.retainAsPublished ?? false,
      retainHandling: sub.retainHandling ?? 0
    })
  }
  return specs
}

const identifierOf = (ctx: Context, options: MqttClient.SubscribeOptions | undefined): number | MqttError.MqttError => {
  const identifier = options?.subscriptionIdentifier
  if (identifier === undefined) return 0
  if (ctx.options.protocolVersion !== 5) return invalid("subscriptionIdentifier", "needs MQTT 5")
  if (!isUint(identifier, 268_435_455) || identifier === 0) {
    return invalid("subscriptionIdentifier", "expected a whole number from 1 to 268435455")
  }
  if (ctx.session.info !== undefined && !ctx.session.info.subscriptionIdentifiersAvailable) {
    return invalid("subscriptionIdentifier", "the broker does not support subscription identifiers")
  }
  return identifier
}

/** Subscribes on behalf of an owner and returns what the broker granted, or `SubscribeError`. */
export const subscribeAs = (
  ctx: Context,
  owner: number,
  input: string | MqttClient.Subscription | ReadonlyArray<string | MqttClient.Subscription>,
  options: MqttClient.SubscribeOptions | undefined,
  /** called with the checked filters just before the session takes them (in the same synchronous step) */
  beforeSubscribe?: (filters: ReadonlyArray<string>) => void
): Effect.Effect<ReadonlyArray<MqttClient.Granted>, MqttError.MqttError> =>
  Effect.suspend(() => {
    const specs = specsOf(ctx, input, options)
    if (MqttError.isMqttError(specs)) return Effect.fail(specs)
    const identifier = identifierOf(ctx, options)
    if (typeof identifier !== "number") return Effect.fail(identifier)
    const probe = Codec.tryEncode(() =>
      Codec.encodeSubscribe(
        ctx.options.protocolVersion,
        1,
        specs.map((s) => ({ topic: s.filter, qos: s.qos })),
        0,
        options?.userProperties
      )
    )
    if (!(probe instanceof Uint8Array)) return Effect.fail(invalid("subscribe", probe.error))
    beforeSubscribe?.(specs.map((spec) => spec.filter))
    const request = ctx.session.subscribe(owner, specs, identifier, options?.userProperties, ctx.driver.out)
    ctx.driver.drain()
    if (MqttError.isMqttError(request)) return Effect.fail(request)
    return Effect.flatMap(awaitOperation(request, noWithdraw, ctx.driver), (done) => granted(done, specs))
  })

const granted = (request: Request, specs: ReadonlyArray<FilterSpec>) => {
  const codes = request.codes
  const refused = codes.findIndex((code) => code >= 0x80)
  if (refused >= 0) {
    return Effect.fail(
      new MqttError.SubscribeError({
        filter: specs[refused].filter,
        reasonCode: codes[refused],
        ...(request.reasonString === undefined ? {} : { reasonString: request.reasonString }),
        codes: codes.map((reasonCode, i) => ({ filter: specs[i].filter, reasonCode }))
      })
    )
  }
  return Effect.succeed(
    codes.map((reasonCode, i) => ({ filter: specs[i].filter, reasonCode, qos: (reasonCode & 3) as QoS }))
  )
}

/** Unsubscribes on behalf of an owner: the broker is asked only for the filters no other owner holds. */
export const unsubscribeAs = (
  ctx: Context,
  owner: number,
  input: string | ReadonlyArray<string>,
  options: MqttClient.UnsubscribeOptions | undefined
): Effect.Effect<void, MqttError.MqttError> =>
  Effect.suspend(() => {
    if (options !== undefined && (typeof options !== "object" || options === null || Array.isArray(options))) {
      return Effect.fail(invalid("options", "expected an object"))
    }
    const list: ReadonlyArray<string> = Array.isArray(input) ? input : [input as string]
    if (list.length === 0) return Effect.fail(invalid("filters", "at least one filter is needed"))
    for (const filter of list) {
      const problem = typeof filter === "string" ? filterProblem(filter) : "expected a string"
      if (problem !== undefined) {
        return Effect.fail(new MqttError.InvalidTopicError({ topic: String(filter), kind: "filter", reason: problem }))
      }
    }
    const probe = Codec.tryEncode(() =>
      Codec.encodeUnsubscribe(ctx.options.protocolVersion, 1, list, options?.userProperties)
    )
    if (!(probe instanceof Uint8Array)) return Effect.fail(invalid("unsubscribe", probe.error))
    const request = ctx.session.unsubscribe(owner, list, options?.userProperties, ctx.driver.out)
    ctx.driver.drain()
    if (request === undefined) return Effect.void
    if (MqttError.isMqttError(request)) return Effect.fail(request)
    return Effect.flatMap(awaitOperation(request, noWithdraw, ctx.driver), (done) => {
      const index = done.codes.findIndex((code) => code >= 0x80)
      if (index < 0) return Effect.void
      return Effect.fail(
        new MqttError.UnsubscribeError({
          filter: done.filters[index].filter,
          reasonCode: done.codes[index],
          ...(done.reasonString === undefined ? {} : { reasonString: done.reasonString })
        })
      )
    })
  })

export const subscribe = (ctx: Context) =>
(
  input: string | MqttClient.Subscription | ReadonlyArray<string | MqttClient.Subscription>,
  options?: MqttClient.SubscribeOptions
) =>
  Effect.suspend(() => {
    ctx.deliveries.subscribed()
    return subscribeAs(ctx, MESSAGES, input, options)
  })

export const unsubscribe =
  (ctx: Context) => (input: string | ReadonlyArray<string>, options?: MqttClient.UnsubscribeOptions) =>
    unsubscribeAs(ctx, MESSAGES, input, options)

/**
 * A subscription with a stream of its own for the life of a scope. The owner and its queue exist before the
 * SUBSCRIBE, so that retained messages sent with the SUBACK are not missed. Closing the scope lets go of the
 * filters (UNSUBSCRIBE for those no other owner holds, waiting at most 5 seconds for UNSUBACK, and not while the
 * reader waits for room in a full queue); messages its
 * queue still holds go to `messages`, or are given up when the application does not read `messages`. When the
 * application does not read `messages`, the new stream first takes the messages waiting there that match its filters
 * (a resumed session's backlog, sent before the application subscribed again).
 */
export const subscription = (ctx: Context) =>
(
  input: string | MqttClient.Subscription | ReadonlyArray<string | MqttClient.Subscription>,
  options?: MqttClient.SubscriptionOptions
): Effect.Effect<Stream.Stream<MqttMessage, MqttError.MqttError>, MqttError.MqttError, Scope.Scope> =>
  Effect.gen(function*() {
    if (options !== undefined && (typeof options !== "object" || options === null || Array.isArray(options))) {
      return yield* invalid("options", "expected an object")
    }
    const acknowledgement = options?.acknowledgement ?? ctx.options.acknowledgement
    if (acknowledgement !== "auto" && acknowledgement !== "manual") {
      return yield* invalid("acknowledgement", "expected \"auto\" or \"manual\"")
    }
    const manual = acknowledgement === "manual"
    const { owner, queue } = ctx.deliveries.addQueue(manual)
    yield* Effect.addFinalizer(() => release(ctx, owner))
    // what waits unclaimed on `messages` and matches (a resumed session's backlog, when nothing reads `messages`)
    // comes first on this stream
    yield* subscribeAs(ctx, owner, input, options, (filters) => ctx.deliveries.claimBacklog(owner, filters))
    ctx.deliveries.confirm(owner)
    return ctx.options.tracing.messages ? Stream.tap(queue.stream, Telemetry.receiveSpan) : queue.stream
  })

/**
 * An owner goes away: its filters are let go, within a bounded wait. The wait for the UNSUBACK ends with the
 * connection: offline, the UNSUBSCRIBE waits in the session for the next connection (or, when the broker kept no
 * session, the filters are not restored), and nothing can come back before it. It ends too while the reader waits
 * for room in a full queue, which it cannot read the UNSUBACK behind: what comes for the filters meanwhile goes to
 * `messages`, or is given up when the application does not read it (as after the wait).
 */
export const release = (ctx: Context, owner: number): Effect.Effect<void> =>
  Effect.suspend(() => {
    ctx.deliveries.remove(owner)
    if (ctx.session.closed !== undefined) return Effect.void
    const request = ctx.session.subscriptions.removeOwner(owner, ctx.driver.out)
    ctx.driver.drain()
    if (request === undefined) return Effect.void
    return Effect.raceAllFirst([
      Effect.ignore(awaitOperation(request, noWithdraw, undefined)),
      ctx.supervisor.awaitOffline,
      // the UNSUBACK would wait behind what the reader has no room for (a release while consumers stall, as at
      // shutdown): the UNSUBSCRIBE is sent, and its acknowledgement read when the reader reads on
      ctx.driver.readerStalls
    ]).pipe(Effect.timeoutOption(RELEASE_TIMEOUT), Effect.asVoid)
  })
