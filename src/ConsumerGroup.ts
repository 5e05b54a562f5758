/**
 * Consumer groups: N processes share the messages of a topic filter through an MQTT 5 shared subscription,
 * `$share/<group>/<filter>`, each message going to one member of the group.
 *
 * A member acknowledges a message (PUBACK, PUBREC) only once its handler has succeeded, and announces a small
 * Receive Maximum (`prefetch`, default 10): the broker never has more than that many unacknowledged messages out
 * to one member, so a member whose handler is slow stops receiving while the others go on. A message whose
 * handler never finished, because the member failed, stopped or was killed, is not lost: it stays in the member's
 * session, and another member adopts that session (below).
 *
 * **Adoption.** Brokers differ in what they do with the messages of a member that goes away: Mosquitto 2.0 keeps
 * them in the member's session and goes on dealing that session its share of new messages, even while nobody is
 * connected. So each member has a persistent session (`sessionExpiryInterval`, default one hour) and a will on
 * `effect-mqtt/groups/<group>/left` naming it, published 2 seconds after it dies or leaves (it disconnects with
 * reason 0x04, which asks the broker to publish the will), unless it is back by then. The members listen to that
 * topic through a shared subscription of a second connection whose session ends with it, so that exactly one live
 * member receives the notice; it connects as the member that left, takes its subscription out of the group, and
 * handles with its own handler what the session still held (sent again by the broker) until a marker it published
 * to itself comes back; the emptied session then expires. An adopter that dies meanwhile leaves a will naming the
 * member again, and one whose handler fails says so itself, for another member to take over. A member restarting
 * under the same name while it is adopted takes its session back (the adoption then stops; nothing is lost).
 *
 * Delivery: at least once for QoS 1; for QoS 2, exactly once except a message whose handler had finished when its
 * member died and whose PUBREC had not yet left (at most `prefetch` of them): it is handled again by the adopter.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ConsumerGroup } from "effect-mqtt"
 *
 * // run the same program in several processes, each with its own member name
 * const worker = ConsumerGroup.run(
 *   {
 *     client: { url: "mqtt://localhost:1883" },
 *     group: "orders",
 *     filter: "orders/#",
 *     member: `orders-${process.env.HOSTNAME}`,
 *     qos: 1,
 *     prefetch: 10
 *   },
 *   (message) => Effect.log("order", message.topic, message.text)
 * )
 * ```
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import * as Queue from "effect/Queue"
import * as Stream from "effect/Stream"
import * as MqttClient from "./MqttClient.ts"
import * as MqttError from "./MqttError.ts"
import type { MqttMessage } from "./MqttMessage.ts"
import * as Topic from "./Topic.ts"

/**
 * A member of a consumer group.
 *
 * @since 0.2.0
 * @category models
 */
export interface Options {
  /** How to reach the broker: `url`, credentials, `tls`... The group sets `protocolVersion` (5), `clientId`,
   * `cleanStart`, `sessionExpiryInterval`, `receiveMaximum`, `acknowledgement`, `will` and `disconnect`. */
  readonly client?: MqttClient.Options | undefined
  /** The group's name: the `<group>` of `$share/<group>/<filter>` (no `/`, `+` or `#`). */
  readonly group: string
  /** The topic filter(s) the group shares. */
  readonly filter: string | ReadonlyArray<string>
  /** This member's name, also its client identifier: the same after a restart, different from the other
   * members' (for example the host name, or a slot number). */
  readonly member: string
  /** The QoS of the subscription: 1 (at least once, the default) or 2. */
  readonly qos?: 1 | 2 | undefined
  /** How many messages the broker may send this member before it acknowledges them (MQTT 5 Receive Maximum).
   * Default 10. */
  readonly prefetch?: number | undefined
  /** How many messages the handler handles at once. Default 1. Acknowledgements leave in arrival order. */
  readonly concurrency?: number | undefined
  /** Seconds the broker keeps the session (and its unacknowledged messages) of a member that went away, for
   * it or another member to take up. Default 3,600. */
  readonly sessionExpiryInterval?: number | undefined
}

/** The topic of the group's notices that a member left (its will). */
const leftTopic = (group: string) => `effect-mqtt/groups/${group}/left`

/** How long a notice that a member left stays valid in the broker's queues, in seconds. */
const NOTICE_EXPIRY = 60

/** How long after a member went away its will is published, in seconds. */
const NOTICE_DELAY = 2

const invalid = (option: string, reason: string) => new MqttError.InvalidOptionError({ option, reason })

const filtersOf = (options: Options): ReadonlyArray<string> =>
  typeof options.filter === "string" ? [options.filter] : options.filter

const check = (options: Options): Effect.Effect<void, MqttError.MqttError> => {
  if (typeof options.group !== "string" || options.group === "" || /[/+#]/.test(options.group)) {
    return Effect.fail(invalid("group", "expected a non-empty name without /, + or #"))
  }
  if (typeof options.member !== "string" || options.member === "") {
    return Effect.fail(invalid("member", "expected a non-empty name"))
  }
  const filters = filtersOf(options)
  if (filters.length === 0) return Effect.fail(invalid("filter", "expected at least one topic filter"))
  for (const filter of filters) {
    if (!Topic.isValidFilter(filter) || Topic.isShared(filter)) {
      return Effect.fail(invalid("filter", `"${filter}" is not a topic filter (the group adds $share/<group>/)`))
    }
  }
  const prefetch = options.prefetch ?? 10
  if (!Number.isInteger(prefetch) || prefetch < 1 || prefetch > 65535) {
    return Effect.fail(invalid("prefetch", "expected a whole number from 1 to 65535"))
  }
  const concurrency = options.concurrency ?? 1
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    return Effect.fail(invalid("concurrency", "expected a positive whole number"))
  }
  return Effect.void
}

/**
 * The client options of a member: MQTT 5, the member's name as client identifier, a persistent session, Receive
 * Maximum `prefetch` (a broker that sends more is accepted, as by every client unless `strictReceiveMaximum`), manual
 * acknowledgement, and the will that tells the group when it leaves (also sent on
 * release: DISCONNECT 0x04).
 *
 * @since 0.2.0
 * @category constructors
 */
export const memberOptions = (options: Options): MqttClient.Options => ({
  ...options.client,
  protocolVersion: 5,
  clientId: options.member,
  cleanStart: false,
  sessionExpiryInterval: options.sessionExpiryInterval ?? 3600,
  receiveMaximum: options.prefetch ?? 10,
  acknowledgement: "manual",
  will: {
    topic: leftTopic(options.group),
    payload: options.member,
    qos: 1,
    // by then the dead member's connection for notices has left the notices' group; a member back within the
    // delay resumes its session itself, and the will is not sent [MQTT-3.1.3-9]
    properties: { messageExpiryInterval: NOTICE_EXPIRY, willDelayInterval: NOTICE_DELAY }
  },
  disconnect: { reasonCode: 4 }
})

/** Handles the messages of a stream `concurrency` at a time, acknowledging each once its handler succeeded. */
const handleAll = <E, R>(
  messages: Stream.Stream<MqttMessage, MqttError.MqttError>,
  concurrency: number,
  handler: (message: MqttMessage) => Effect.Effect<void, E, R>
): Effect.Effect<void, MqttError.MqttError | E, R> =>
  messages.pipe(
    Stream.mapEffect((message) => Effect.andThen(handler(message), message.ack), { concurrency }),
    Stream.runDrain
  )

/**
 * Takes up the session of a member that left: connects as it, takes its subscription out of the group, handles
 * what the session still holds with `handler`, and ends the session. Returns how many messages it handled. A
 * member that comes back meanwhile takes its session back: the adoption then ends early, with nothing lost.
 *
 * @since 0.2.0
 * @category combinators
 */
export const adopt = <E, R>(
  options: Options,
  member: string,
  handler: (message: MqttMessage) => Effect.Effect<void, E, R>
): Effect.Effect<number, MqttError.MqttError | E, R> =>
  Effect.scoped(Effect.gen(function*() {
    yield* check(options)
    const orphan = yield* MqttClient.make({
      ...memberOptions(options),
      clientId: member,
      // should this adopter die before the end, the session stays and another member takes it up (a member
      // that comes back to its session within the delay cancels this will [MQTT-3.1.3-9])
      will: {
        topic: leftTopic(options.group),
        payload: member,
        qos: 1,
        properties: { messageExpiryInterval: NOTICE_EXPIRY, willDelayInterval: NOTICE_DELAY }
      },
      // a graceful end discards the will; the session, emptied of its subscriptions, expires by itself
      disconnect: { reasonCode: 0 },
      reconnect: false
    })
    const shared = filtersOf(options).map((filter) => `$share/${options.group}/${filter}`)
    const qos = options.qos ?? 1
    let handled = 0
    const drain = Effect.gen(function*() {
      // replace the member's subscription by one of this client's, then remove it: the group deals it no more
      yield* orphan.subscribe(shared, { qos })
      yield* orphan.unsubscribe(shared)
      // the broker sends a client's messages in order: the marker comes after everything the session held
      const marker = `effect-mqtt/groups/${options.group}/drained/${member}/${Date.now().toString(36)}`
      yield* orphan.subscribe(marker, { qos: 1 })
      yield* orphan.publish(marker, "", { qos: 1 })
      const matches = (topic: string) => filtersOf(options).some((filter) => Topic.matches(topic, filter))
      yield* handleAll(
        orphan.messages.pipe(Stream.takeUntil((message) => message.topic === marker)),
        options.concurrency ?? 1,
        (message) =>
          message.topic !== marker && matches(message.topic)
            ? Effect.tap(handler(message), () => Effect.sync(() => handled++))
            : Effect.void
      )
      yield* orphan.unsubscribe(marker)
    })
    // an adoption that fails leaves the rest of the session to another member: it says so, as the will would
    yield* Effect.tapError(drain, () =>
      orphan.publish(leftTopic(options.group), member, {
        qos: 1,
        properties: { messageExpiryInterval: NOTICE_EXPIRY }
      }).pipe(Effect.ignore))
    return handled
  }))

/**
 * Runs a member of the group until interrupted: subscribes to `$share/<group>/<filter>`, handles each message
 * with `handler` (acknowledged once it succeeds, `concurrency` at a time), and adopts the sessions of members that
 * leave. Fails when `handler` fails (the message stays unacknowledged, in the session, for another member) or the
 * client stops for good. On release the client disconnects with reason 0x04, so that another member adopts what
 * this one still held.
 *
 * @since 0.2.0
 * @category combinators
 */
export const run = <E, R>(
  options: Options,
  handler: (message: MqttMessage) => Effect.Effect<void, E, R>
): Effect.Effect<never, MqttError.MqttError | E, R> =>
  Effect.scoped(Effect.gen(function*() {
    yield* check(options)
    const client = yield* MqttClient.make(memberOptions(options))
    const notices = leftTopic(options.group)
    const filters = filtersOf(options)
    const orphans = yield* Queue.unbounded<string>()
    // the notices come on a connection of their own, with a session that ends with it: a persistent session
    // would stay in the notices' group after its member died, and be dealt the notice of its own death
    const listener = yield* MqttClient.make({
      ...options.client,
      protocolVersion: 5,
      clientId: undefined,
      cleanStart: true,
      sessionExpiryInterval: 0,
      will: undefined
    })
    const noticeStream = yield* listener.subscription(`$share/${options.group}/${notices}`, { qos: 1 })
    const offerOrphan = (left: string) =>
      left === options.member || left === "" ? Effect.void : Effect.asVoid(Queue.offer(orphans, left))
    const listening = Stream.runForEach(noticeStream, (notice) => offerOrphan(notice.text))
    // one stream for all the work: after a restart the broker resends what the last process left unacknowledged,
    // under that process's subscription identifiers, which no subscription of this one claims
    yield* client.subscribe(filters.map((filter) => `$share/${options.group}/${filter}`), { qos: options.qos ?? 1 })
    const adoptions = Effect.forever(Effect.flatMap(Queue.take(orphans), (left) =>
      adopt(options, left, handler).pipe(
        Effect.tap((handled) => Effect.logInfo(`effect-mqtt group ${options.group}: adopted ${left} (${handled})`)),
        // taken back by the member itself: nothing was lost
        Effect.catchIf(
          (error): error is MqttError.MqttError => MqttError.isMqttError(error) && isLostSession(error),
          (error) =>
            Effect.logWarning(`effect-mqtt group ${options.group}: adoption of ${left} ended: ${error.message}`)
        )
      )))
    const inGroup = (topic: string) => filters.some((filter) => Topic.matches(topic, filter))
    const work = handleAll(client.messages, options.concurrency ?? 1, (message) => {
      // a message of a subscription this member no longer has (an earlier configuration) is let go
      return inGroup(message.topic) ? handler(message) : Effect.void
    })
    yield* Effect.all([work, adoptions, listening], { concurrency: 3, discard: true })
    return yield* new MqttError.ConnectionLostError({ reason: "the client was closed" })
  }))

/** The adoption met the member coming back (session taken over) or a session that is gone. */
const isLostSession = (error: MqttError.MqttError): boolean =>
  error._tag === "ConnectionLostError" && error.reasonCode === 0x8e
