/**
 * Consumer groups: N processes share the messages of a topic filter through an MQTT 5 shared subscription,
 * `$share/<group>/<filter>`, each message going to one member of the group.
 *
 * A member acknowledges a message (PUBACK, PUBREC) only once its handler has succeeded, and announces a small
 * Receive Maximum (`prefetch`, default 10): a broker that keeps to it never has more than that many
 * unacknowledged messages out to one member. Whether a slow member's share then goes to the others is the broker's
 * dealing policy: a broker that deals to members with room lets the others go on; Mosquitto 2.0 and
 * `MqttTestBroker` deal round-robin regardless, so a slow member's share waits in its session until it catches up
 * (and Mosquitto, under load, sends more than a small Receive Maximum). A message whose handler never finished,
 * because the member failed, stopped or was killed, is not lost: it stays in the member's session, and another
 * member adopts that session (below).
 *
 * **The group's topics.** Notices, records and markers live under `effect-mqtt/groups/<group>/`; a message on a
 * topic under `effect-mqtt/groups/` is never handed to a handler, even when the filter (`#`) matches it. Each
 * member keeps a retained record of its filters (`effect-mqtt/groups/<group>/filters/<member>`): a member
 * restarted with other filters takes the shares of the filters it dropped out of its session (else the group would
 * go on dealing it their messages), and hands its handler the last ones the broker had already sent it; an
 * adopter takes every share the record names out of the adopted session, and deletes the record.
 *
 * **Adoption.** Brokers differ in what they do with the messages of a member that goes away: Mosquitto 2.0 keeps
 * them in the member's session and goes on dealing that session its share of new messages, even while nobody is
 * connected. So each member has a persistent session (`sessionExpiryInterval`, default one hour) and a will on
 * `effect-mqtt/groups/<group>/left/<member>` naming it, published 2 seconds after it dies or leaves (it disconnects
 * with reason 0x04, which asks the broker to publish the will), unless it is back by then. The members listen to
 * those topics through a shared subscription of a second connection whose session ends with it, so that exactly
 * one live member receives the notice. The notice is retained, until the member comes back or an adopter connects
 * as it: a member that starts adopts, 5 to 7 seconds after it started, the members whose notices are still there
 * (members that left while no member ran: a whole group stopped, and started again with fewer members or other
 * names), reading each again just before it adopts (two that read it at once may both adopt it). The adopter
 * connects as the member that left, takes its subscription out of the group, and
 * handles with its own handler what the session still held (sent again by the broker) until a marker it published
 * to itself comes back; the emptied session then expires. An adopter that dies meanwhile leaves a will naming the
 * member again, and one whose handler fails or that is stopped (interrupted) says so itself, for another member to
 * take over; so does a member that stops with notices it had not adopted yet, once it left the notices' group. A member restarting
 * under the same name while it is adopted takes its session back: the adoption stops (the broker closes the
 * adopter's connection, or sends DISCONNECT 0x8E) without handling what it had queued, and the adopter goes on as a
 * member. A member frozen past its keepalive (a stopped process, a paused VM) and adopted meanwhile does the same
 * when it resumes: what came on its lost connection and is not sent again on the new one is let go of unhandled
 * (the adopter handled it; a broker that still holds it sends it again [MQTT-4.4.0-1]). Nothing is lost (by the
 * client: a broker keeps a bounded number of messages for a session, Mosquitto's `max_queued_messages`, 1,000 by
 * default, and drops the rest while a member is slow or gone; raise it for the backlog a group may build). An
 * adoption whose connection fails before it starts is announced again 2 seconds later.
 * At every connection a member subscribes its shares again and rewrites its record: one that comes back after an
 * adopter emptied its session rejoins the group.
 *
 * Delivery: at least once for QoS 1; for QoS 2, exactly once except a message whose handler had finished when its
 * member died and whose PUBREC the broker had not read (what was still in flight when the connection ended: a
 * process killed with unread bytes in its socket makes the kernel reset the connection; the README gives
 * measured counts): it is handled again by the adopter
 * (and, when the member takes its session back, what the adopter had received and handled before it saw its
 * connection close: about `prefetch` more, as many as the broker sent past Receive Maximum; and, for a member
 * frozen and adopted, what its handler had begun: up to `concurrency` messages, and as many begun in the instant it
 * resumed, before it read that its connection was gone). Filters that overlap are refused: each is a shared
 * subscription of its own, so a message matching two would reach the group twice. A handler that fails on every
 * try of a message fails each member that is dealt it in turn: catch what should not stop a member in the handler.
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
 *     member: `orders-${process.env.WORKER_SLOT}`, // the same after a restart
 *     qos: 1,
 *     prefetch: 10
 *   },
 *   (message) => Effect.log("order", message.topic, message.text)
 * )
 * ```
 *
 * @since 0.2.0
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Queue from "effect/Queue"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as MqttClient from "./MqttClient.ts"
import * as MqttError from "./MqttError.ts"
import { type MqttMessage, ReceiptKey } from "./MqttMessage.ts"
import * as Topic from "./Topic.ts"

/**
 * A member of a consumer group.
 *
 * @since 0.2.0
 * @category models
 */
export interface Options {
  /** How to reach the broker: `url`, credentials, `tls`... The group sets `protocolVersion` (5, whatever is
   * given: shared subscriptions with acknowledgement on hand-over need MQTT 5), `clientId`, `cleanStart` (and `cleanSession`),
   * `sessionExpiryInterval`, `receiveMaximum`, `acknowledgement`, `will` and `disconnect`. A `store` is refused
   * (`InvalidOptionError`): a member's session is kept by the broker, for the other members to adopt. */
  readonly client?: MqttClient.Options | undefined
  /** The group's name: the `<group>` of `$share/<group>/<filter>` (no `/`, `+` or `#`). */
  readonly group: string
  /** The topic filter(s) the group shares, none of them `$share/...`, no two matching a topic in common
   * (`InvalidOptionError`). */
  readonly filter: string | ReadonlyArray<string>
  /** This member's name, also its client identifier: the same after a restart, different from the other
   * members' (for example the host name, or a slot number), and not used by a member of another group on the same
   * broker within `sessionExpiryInterval`: its session keeps that group's share subscription, so the messages of a
   * filter both groups share would reach it twice (once per group). A topic level of the group's topics: no `/`,
   * `+`, `#` or NUL (`InvalidOptionError`). */
  readonly member: string
  /** The QoS of the subscription: 1 (at least once, the default) or 2; anything else is an `InvalidOptionError`. */
  readonly qos?: 1 | 2 | undefined
  /** How many messages the broker may send this member before it acknowledges them (MQTT 5 Receive Maximum).
   * Default 10. */
  readonly prefetch?: number | undefined
  /** How many messages the handler handles at once. Default 1. Acknowledgements leave in arrival order. */
  readonly concurrency?: number | undefined
  /** Seconds the broker keeps the session (and its unacknowledged messages) of a member that went away, for
   * it or another member to take up. Default 3,600; at least 10 (`InvalidOptionError`): the notice comes 2
   * seconds after a member went away, and another member must connect as it before its session expires. */
  readonly sessionExpiryInterval?: number | undefined
}

/** The group's own topics (notices that a member left, records, markers): never handed to a handler. */
const GROUP_TOPICS = "effect-mqtt/groups/"

/** The topic of the group's notices that a member left, as versions before 0.3 published them (not retained). */
const leftTopic = (group: string) => `${GROUP_TOPICS}${group}/left`

/**
 * The topic of the notice that `member` left (its will): retained, so that a member that starts finds the notices
 * of members that left while no member was running (a whole group stopped, and started again with fewer members or
 * other names), and adopts them. The member clears it when it comes back, the adopter once it adopted.
 */
const noticeTopic = (group: string, member: string) => `${GROUP_TOPICS}${group}/left/${member}`

/** How long a notice stays valid (in the broker's queues, and retained), in seconds: as long as the session. */
const noticeExpiry = (options: Options) => options.sessionExpiryInterval ?? 3600

/** The will of a connection as `member`: the notice that it left, retained, 2 seconds after it went away. */
const noticeWill = (options: Options, member: string): MqttClient.Will => ({
  topic: noticeTopic(options.group, member),
  payload: member,
  qos: 1,
  retain: true,
  // by then the dead member's connection for notices has left the notices' group; a member back within the
  // delay resumes its session itself, and the will is not sent [MQTT-3.1.3-9]
  properties: { messageExpiryInterval: noticeExpiry(options), willDelayInterval: NOTICE_DELAY }
})

const noticeOptions = (options: Options, text: string): MqttClient.PublishOptions => ({
  qos: 1,
  retain: true,
  properties: text === "" ? undefined : { messageExpiryInterval: noticeExpiry(options) }
})

/** Publishes the notice that `member` left (retained), or with `""` clears it. */
const notice = (client: MqttClient.Client, options: Options, member: string, text: string = member) =>
  client.publish(noticeTopic(options.group, member), text, noticeOptions(options, text))

/** How long a member that stops waits for the broker's acknowledgement of a notice it hands on (`handOn`). */
const HAND_ON_WAIT = Duration.seconds(2)

/**
 * Publishes the notice that `member` left again, for a live member to adopt it: when an adoption is stopped (its
 * member interrupted: a redeploy, `Effect.timeout`) or fails. Done once the broker acknowledged it, or after
 * `HAND_ON_WAIT` (accepted, it still leaves before the DISCONNECT of the client's release), or when it cannot be
 * sent (the connection is gone: the will, or the member's return, does it): a release is never held up for long.
 */
const handOn = (client: MqttClient.Client, options: Options, member: string): Effect.Effect<void> =>
  client.publishAccepted(noticeTopic(options.group, member), member, noticeOptions(options, member)).pipe(
    Effect.flatMap((acknowledged) => Effect.timeoutOption(acknowledged, HAND_ON_WAIT)),
    Effect.ignore
  )

/**
 * How long a member that starts waits before it adopts the members named by retained notices: members starting at
 * the same time (a redeploy) clear their own notices meanwhile, and are not adopted.
 */
const STARTING_GRACE = Duration.seconds(5)

/** How long after a member went away its will is published, in seconds. */
const NOTICE_DELAY = 2

const invalid = (option: string, reason: string) => new MqttError.InvalidOptionError({ option, reason })

/**
 * A broker that does not speak MQTT 5 cannot hold a group (shared subscriptions, Receive Maximum): said so as an
 * `InvalidOptionError`, rather than the client's advice to use MQTT 3.1.1, which a group cannot take.
 */
const needsMqtt5 = (error: MqttError.MqttError): MqttError.MqttError =>
  error._tag === "ConnectRefusedError" && error.protocolVersion === 5 &&
    (error.reasonCode === 0x84 || error.reasonCode === 1)
    ? invalid(
      "client.url",
      `a consumer group needs MQTT 5 (shared subscriptions, Receive Maximum as prefetch), and the broker${
        error.broker === undefined ? "" : ` at ${error.broker}`
      } does not support it (it refused MQTT 5 with ${
        error.reasonCode === 1 ? "the MQTT 3.1.1 return code 1" : "0x84, unsupported protocol version"
      })`
    )
    : error

const filtersOf = (options: Options): ReadonlyArray<string> =>
  typeof options.filter === "string" ? [options.filter] : options.filter

const isGroupTopic = (topic: string): boolean => topic.startsWith(GROUP_TOPICS)

/** How long a member waits for its record (in fact for the marker after it) before it goes on without. */
const RECORD_WAIT = "10 seconds"

/** The topic of a member's record: its filters, retained, for its next run and for the member adopting it. */
const recordTopic = (group: string, member: string) => `${GROUP_TOPICS}${group}/filters/${member}`

/**
 * The filters a member recorded in its last run (none when it has no record). Read on `client`, a connection of
 * its own with a clean session (a member's session may hold a full window of messages, which would keep the
 * marker back), by subscribing to the record and to a marker that this client then publishes: the broker sends a
 * retained message on the subscription, before the marker comes back.
 */
const recordedFilters = (
  client: MqttClient.Client,
  group: string,
  member: string
): Effect.Effect<ReadonlyArray<string>, MqttError.MqttError> =>
  Effect.scoped(Effect.gen(function*() {
    const record = recordTopic(group, member)
    const marker = `${GROUP_TOPICS}${group}/marker/${member}/${Date.now().toString(36)}`
    const stream = yield* client.subscription([record, marker], { qos: 1 })
    yield* client.publish(marker, "", { qos: 1 })
    // a broker that never sends the marker back: no record rather than no member (bounded, not a hang)
    const got = yield* Stream.runCollect(stream.pipe(
      Stream.takeUntil((message) => message.topic === marker),
      Stream.interruptWhen(Effect.sleep(RECORD_WAIT))
    ))
    const text = got.find((message) => message.topic === record)?.text
    if (text === undefined || text === "") return []
    try {
      const filters: unknown = JSON.parse(text)
      // a record is data from the broker: only what is a filter of a group counts
      return Array.isArray(filters)
        ? filters.filter((f): f is string => typeof f === "string" && Topic.isValidFilter(f) && !Topic.isShared(f))
        : []
    } catch {
      return []
    }
  }))

/**
 * The members named by the retained notices of the group (`left/<member>`): members that left and that nobody
 * adopted yet. Read as `recordedFilters` reads a record, on `client`, a connection with a clean session.
 */
const retainedNotices = (
  client: MqttClient.Client,
  group: string
): Effect.Effect<ReadonlyArray<string>, MqttError.MqttError> =>
  Effect.scoped(Effect.gen(function*() {
    const marker = `${GROUP_TOPICS}${group}/marker/notices/${Date.now().toString(36)}`
    const stream = yield* client.subscription([`${leftTopic(group)}/+`, marker], { qos: 1 })
    yield* client.publish(marker, "", { qos: 1 })
    const got = yield* Stream.runCollect(stream.pipe(
      Stream.takeUntil((message) => message.topic === marker),
      Stream.interruptWhen(Effect.sleep(RECORD_WAIT))
    ))
    return got.filter((message) => message.retain && message.topic !== marker && message.text !== "")
      .map((message) => message.text)
  }))

/** The options of a member's connection for the group's notices and records: a session that ends with it. */
const plainOptions = (options: Options): MqttClient.Options => ({
  ...options.client,
  protocolVersion: 5,
  clientId: undefined,
  cleanStart: true,
  cleanSession: undefined,
  sessionExpiryInterval: 0,
  acknowledgement: "auto",
  will: undefined,
  disconnect: undefined,
  store: undefined
})

/** `$share/<group>/<filter>` of each filter. */
const shares = (group: string, filters: ReadonlyArray<string>) => filters.map((filter) => `$share/${group}/${filter}`)

/** The shortest `sessionExpiryInterval`: the notice comes 2 s after a member went away, then another connects. */
const MIN_SESSION_EXPIRY = 10

const checkFilters = (filter: unknown): MqttError.InvalidOptionError | undefined => {
  const filters = typeof filter === "string" ? [filter] : filter
  if (!Array.isArray(filters) || filters.some((f) => typeof f !== "string")) {
    return invalid("filter", "expected a topic filter or a list of them")
  }
  if (filters.length === 0) return invalid("filter", "expected at least one topic filter")
  for (const f of filters) {
    if (!Topic.isValidFilter(f) || Topic.isShared(f)) {
      return invalid("filter", `"${f}" is not a topic filter (the group adds $share/<group>/)`)
    }
  }
  for (let i = 0; i < filters.length; i++) {
    for (let j = i + 1; j < filters.length; j++) {
      if (Topic.overlaps(filters[i], filters[j])) {
        return invalid(
          "filter",
          `"${filters[i]}" and "${filters[j]}" overlap: each is a shared subscription of its own, so a message ` +
            "matching both would reach the group twice"
        )
      }
    }
  }
  return undefined
}

/** A member's name is also a level of the group's topics: non-empty, no `/`, `+`, `#` or NUL, valid UTF-16. */
const memberProblem = (group: string, member: unknown): MqttError.InvalidOptionError | undefined =>
  typeof member !== "string" || member === "" || /[/+#]/.test(member) ||
    // with the marker's time stamp (`Date.now().toString(36)`: 8 characters, 12 left for it)
    !Topic.isValidName(`${GROUP_TOPICS}${group}/drained/${member}/${"0".repeat(12)}`)
    ? invalid("member", "expected a non-empty name without /, + or # (a valid topic level)")
    : undefined

const isObject = (value: unknown): value is object => typeof value === "object" && value !== null

/** Why `options` cannot make a member (from untyped code too), or `undefined`. */
const optionsProblem = (options: Options): MqttError.InvalidOptionError | undefined => {
  if (!isObject(options) || Array.isArray(options)) return invalid("options", "expected an object")
  // a client that is no object would be spread as nothing: the default URL, another broker than meant
  if (options.client !== undefined && (!isObject(options.client) || Array.isArray(options.client))) {
    return invalid("client", "expected the options of MqttClient.make (an object)")
  }
  const { group } = options
  if (typeof group !== "string" || group === "" || /[/+#]/.test(group) || !Topic.isValidName(leftTopic(group))) {
    return invalid("group", "expected a non-empty name without /, + or # (a valid topic level)")
  }
  // the longest filter of the group's own, with the name twice: too long, it would fail after connecting
  if (!Topic.isValidFilter(`$share/${group}/${leftTopic(group)}/+`)) {
    return invalid("group", "too long: the group's topic filters would be over 65,535 bytes")
  }
  const problem = memberProblem(options.group, options.member)
  if (problem !== undefined) return problem
  const filterProblem = checkFilters(options.filter)
  if (filterProblem !== undefined) return filterProblem
  const tooLong = filtersOf(options).find((f) => !Topic.isValidFilter(`$share/${group}/${f}`))
  if (tooLong !== undefined) {
    return invalid("filter", `"${tooLong.slice(0, 40)}…" with $share/${group}/ is over 65,535 bytes`)
  }
  if (options.qos !== undefined && options.qos !== 1 && options.qos !== 2) {
    return invalid("qos", "expected 1 or 2 (a member hands a message over with its acknowledgement)")
  }
  const prefetch = options.prefetch ?? 10
  if (!Number.isInteger(prefetch) || prefetch < 1 || prefetch > 65535) {
    return invalid("prefetch", "expected a whole number from 1 to 65535")
  }
  const concurrency = options.concurrency ?? 1
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    return invalid("concurrency", "expected a positive whole number")
  }
  const expiry = options.sessionExpiryInterval
  if (expiry !== undefined && !(Number.isInteger(expiry) && expiry >= MIN_SESSION_EXPIRY && expiry <= 0xffffffff)) {
    return invalid(
      "sessionExpiryInterval",
      `expected whole seconds from ${MIN_SESSION_EXPIRY} to 4294967295: a shorter session can expire before ` +
        "another member adopts it, and its messages with it"
    )
  }
  if (options.client?.store !== undefined) {
    return invalid("client.store", "a member's session is kept by the broker, for the others to adopt: no store")
  }
  return undefined
}

const check = (options: Options): Effect.Effect<void, MqttError.MqttError> => {
  const problem = optionsProblem(options)
  return problem === undefined ? Effect.void : Effect.fail(problem)
}

/**
 * The client options of a member: MQTT 5, the member's name as client identifier, a persistent session, Receive
 * Maximum `prefetch` (a broker that sends more is accepted, as by every client unless `strictReceiveMaximum`), manual
 * acknowledgement, and the will that tells the group when it leaves (also sent on
 * release: DISCONNECT 0x04). Options that `run` refuses give `{ clientId: false }`, which `MqttClient.make`
 * refuses with `InvalidOptionError` (also spread into other options): `run` says what is wrong with them.
 *
 * @since 0.2.0
 * @category constructors
 */
export const memberOptions = (options: Options): MqttClient.Options =>
  // options that `run` refuses (also of the wrong type, from untyped code) give options that MqttClient.make
  // refuses, also when spread into others (a client identifier that is no string: InvalidOptionError "clientId"):
  // never a throw, nor a plain client, nor the options of a member of another group
  optionsProblem(options) !== undefined
    ? { clientId: false as unknown as string }
    : memberOptionsOf(options)

const memberOptionsOf = (options: Options): MqttClient.Options => ({
  ...options.client,
  protocolVersion: 5,
  clientId: options.member,
  cleanStart: false,
  cleanSession: undefined,
  sessionExpiryInterval: options.sessionExpiryInterval ?? 3600,
  receiveMaximum: options.prefetch ?? 10,
  acknowledgement: "manual",
  will: noticeWill(options, options.member),
  disconnect: { reasonCode: 4 }
})

/**
 * Whether a message is let go of unhandled: it came on a connection that ended since, and the broker has not sent
 * it again on the current one, so the broker may hold it no more. Another member may have adopted the session
 * meanwhile and handled it (a member frozen past its keepalive, then resumed); a broker that still holds it sends
 * it again [MQTT-4.4.0-1], to be handled then. Unacknowledged, it holds back no later acknowledgement. While the
 * client is disconnected that cannot be told: the message waits for the next connection (Session Present 0 makes
 * it one of a lost session, handled as ever) or the client's close (then it is not handled: nothing could
 * acknowledge it, and the session's next holder gets it).
 */
const letGo = (client: MqttClient.Client, message: MqttMessage): Effect.Effect<boolean> =>
  Effect.suspend(() => {
    const receipt = message[ReceiptKey]
    if (receipt?.awaitsConnection?.() !== true) return Effect.succeed(receipt?.abandonIfStale?.() === true)
    return Effect.map(
      Stream.runHead(
        Stream.filter(client.statusChanges, (status) => status._tag !== "Connecting" && status._tag !== "Disconnected")
      ),
      (status) => status._tag !== "Some" || status.value._tag === "Closed" || receipt.abandonIfStale?.() === true
    )
  })

/**
 * Handles the messages of a stream `concurrency` at a time, acknowledging each once its handler succeeded; a
 * message whose connection ended before its turn came is let go of (see `letGo`).
 */
const handleAll = <E, R>(
  client: MqttClient.Client,
  messages: Stream.Stream<MqttMessage, MqttError.MqttError>,
  concurrency: number,
  handler: (message: MqttMessage) => Effect.Effect<void, E, R>
): Effect.Effect<void, MqttError.MqttError | E, R> =>
  messages.pipe(
    Stream.mapEffect(
      (message) =>
        Effect.flatMap(letGo(client, message), (gone) =>
          gone
            ? Effect.logDebug(`effect-mqtt group: let go of a message on ${message.topic} from a connection that ended`)
            : Effect.andThen(handler(message), message.ack)),
      { concurrency }
    ),
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
  typeof handler !== "function"
    ? Effect.fail(invalid("handler", "expected a function from a message to an Effect"))
    : Effect.mapError(adoption(options, member, handler, true), (error) =>
      error instanceof NotStarted ? error.error : error)

/** An adoption that failed before it connected as the member: nothing of the session was touched. */
class NotStarted {
  readonly error: MqttError.MqttError
  constructor(error: MqttError.MqttError) {
    this.error = error
  }
}

const adoption = <E, R>(
  options: Options,
  member: string,
  handler: (message: MqttMessage) => Effect.Effect<void, E, R>,
  /** Whether an adoption that fails or is stopped names the member again itself (else its caller does) */
  handsOn: boolean
): Effect.Effect<number, MqttError.MqttError | NotStarted | E, R> =>
  Effect.scoped(Effect.gen(function*() {
    yield* check(options)
    const problem = memberProblem(options.group, member)
    if (problem !== undefined) return yield* Effect.fail(problem)
    // the member's filters, as it recorded them (another configuration's, in a rolling change), and ours
    const recorded = yield* Effect.scoped(
      Effect.flatMap(MqttClient.make(plainOptions(options)), (reader) => recordedFilters(reader, options.group, member))
    ).pipe(Effect.mapError((error) => new NotStarted(error)))
    const orphan = yield* MqttClient.make({
      ...memberOptionsOf(options),
      clientId: member,
      // should this adopter die before the end, the session stays and another member takes it up (a member
      // that comes back to its session within the delay cancels this will [MQTT-3.1.3-9])
      will: noticeWill(options, member),
      // a graceful end discards the will; the session, emptied of its subscriptions, expires by itself
      disconnect: { reasonCode: 0 },
      reconnect: false
    }).pipe(Effect.mapError((error) => new NotStarted(error)))
    const qos = options.qos ?? 1
    let handled = 0
    const drain = Effect.gen(function*() {
      // the session is this adopter's now: its notice goes at once, so that a member starting meanwhile does not
      // adopt it too (should this adopter die, its will, the same notice, names the member again)
      yield* notice(orphan, options, member, "")
      const shared = shares(options.group, [...new Set([...filtersOf(options), ...recorded])])
      // replace the member's subscriptions by this client's, then remove them: the group deals it no more
      yield* orphan.subscribe(shared, { qos })
      yield* orphan.unsubscribe(shared)
      // the broker sends a client's messages in order: the marker comes after everything the session held
      const marker = `${GROUP_TOPICS}${options.group}/drained/${member}/${Date.now().toString(36)}`
      yield* orphan.subscribe(marker, { qos: 1 })
      yield* orphan.publish(marker, "", { qos: 1 })
      yield* handleAll(
        orphan,
        // once the connection ends, what is still queued is not handled: its acknowledgement could not leave,
        // and the session (taken back by its member, or adopted by another) has it sent again
        orphan.messages.pipe(
          Stream.takeUntil((message) => message.topic === marker),
          Stream.interruptWhen(orphan.awaitClose)
        ),
        options.concurrency ?? 1,
        // what the group dealt the member, whatever its filters were: the group's own topics excepted
        (message) =>
          isGroupTopic(message.topic) ? Effect.void : Effect.tap(handler(message), () => Effect.sync(() => handled++))
      )
      yield* orphan.unsubscribe(marker)
      // the session is empty and goes: so does its record (an empty retained message deletes it)
      yield* orphan.publish(recordTopic(options.group, member), "", { qos: 1, retain: true })
    })
    // an adoption that fails or is stopped leaves the rest of the session to another member: it says so, as its
    // will would (a release disconnects with 0x00, which discards the will, and the notice was cleared above; when
    // the connection is gone, this publish fails and the will, or the member's return, does it). Under `run`, the
    // member does it once its listener left the notices' group (`handOnAll`)
    yield* handsOn ? Effect.onError(drain, () => handOn(orphan, options, member)) : drain
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
    if (typeof handler !== "function") {
      return yield* invalid("handler", "expected a function from a message to an Effect")
    }
    const client = yield* Effect.mapError(MqttClient.make(memberOptionsOf(options)), needsMqtt5)
    // this member is back: its notice from a last run goes, first of all (members that start meanwhile read the
    // notices to adopt; see `leftWhileStopped`)
    yield* notice(client, options, options.member, "")
    const notices = leftTopic(options.group)
    const filters = filtersOf(options)
    const orphans = yield* Queue.unbounded<string>()
    // the notices come on a connection of their own, with a session that ends with it: a persistent session
    // would stay in the notices' group after its member died, and be dealt the notice of its own death
    const listener = yield* MqttClient.make(plainOptions(options))
    // the notices of this version (`left/<member>`), and those of members of versions before 0.3 (`left`)
    // in a scope of its own: a member that stops leaves the notices' group before it hands notices on (`handOnAll`)
    const noticeScope = yield* Scope.fork(yield* Effect.scope, "sequential")
    const noticeStream = yield* Scope.provide(
      listener.subscription(
        [`$share/${options.group}/${notices}`, `$share/${options.group}/${notices}/+`],
        { qos: 1 }
      ),
      noticeScope
    )
    const offerOrphan = (left: string) =>
      // "": a notice cleared (a member back, or adopted)
      left === options.member || left === ""
        ? Effect.void
        : memberProblem(options.group, left) !== undefined
        ? Effect.logWarning(`effect-mqtt group ${options.group}: a notice names no member: "${left}", ignored`)
        : Effect.asVoid(Queue.offer(orphans, left))
    // a retained notice sent because this listener subscribed (a broker may send them on a shared subscription,
    // as Mosquitto 2.0 does) is one of a member that left earlier: adopted after the wait of `leftWhileStopped`
    const listening = Stream.runForEach(
      noticeStream,
      (notice) => notice.retain ? Effect.void : offerOrphan(notice.text)
    )
    // the shares of a filter this member took in its last run and takes no more leave its session (else the
    // group would go on dealing it that filter's messages); then the record says what it takes now
    const stale = (yield* recordedFilters(listener, options.group, options.member)).filter((f) => !filters.includes(f))
    if (stale.length > 0) {
      yield* client.unsubscribe(shares(options.group, stale))
      yield* Effect.logInfo(`effect-mqtt group ${options.group}: ${options.member} no longer takes ${stale.join(" ")}`)
    }
    const record = recordTopic(options.group, options.member)
    yield* client.publish(record, JSON.stringify(filters), { qos: 1, retain: true })
    // the notices of members that left while no member ran (a whole group stopped, started again with fewer
    // members or other names) are adopted, those still there after members starting with this one cleared theirs.
    // Members starting together read at different moments (up to 2 s apart), and each reads a notice again just
    // before it adopts: the first to adopt a member clears its notice as it connects, and the others let it be
    const found = new Set<string>()
    const leftWhileStopped = Effect.sleep(Duration.sum(STARTING_GRACE, Duration.millis(Math.random() * 2000))).pipe(
      Effect.andThen(retainedNotices(listener, options.group)),
      Effect.flatMap((left) =>
        Effect.forEach(left, (name) => {
          found.add(name)
          return offerOrphan(name)
        }, { discard: true })
      ),
      Effect.catch((error) =>
        Effect.logWarning(`effect-mqtt group ${options.group}: reading the notices failed: ${error.message}`)
      )
    )
    // one stream for all the work: after a restart the broker resends what the last process left unacknowledged,
    // under that process's subscription identifiers, which no subscription of this one claims
    yield* client.subscribe(shares(options.group, filters), { qos: options.qos ?? 1 })
    // a notice found retained is adopted only if it is still there (another member may have taken it meanwhile)
    const stillLeft = (left: string) =>
      found.delete(left)
        ? retainedNotices(listener, options.group).pipe(
          Effect.map((notices) => notices.includes(left)),
          // not read again: adopted, as found
          Effect.catch(() => Effect.succeed(true))
        )
        : Effect.succeed(true)
    // the member being adopted, until its adoption ended (not when it is stopped: then it is handed on)
    let adopting: string | undefined
    // this member stops (interrupted, or a handler failed): the notices it took and did not adopt to the end are
    // handed on to the live members (they stay retained, but only a member that starts reads those), once its
    // listener left the notices' group (a notice dealt to it now would be lost with it)
    const handOnAll = Effect.gen(function*() {
      // first out of the group, then what the listener took: a notice it takes while the UNSUBSCRIBE waits for its
      // UNSUBACK is among them (one it had not taken stays retained, for the next member that starts)
      yield* Scope.close(noticeScope, Exit.void)
      const queued = yield* Queue.clear(orphans)
      const left = new Set(adopting === undefined ? queued : [adopting, ...queued])
      yield* Effect.forEach(left, (name) => handOn(client, options, name), { concurrency: "unbounded", discard: true })
    })
    const adoptions = Effect.forever(Effect.flatMap(Queue.take(orphans), (left) =>
      Effect.flatMap(
        Effect.sync(() => (adopting = left)).pipe(Effect.andThen(stillLeft(left))),
        (adopt) => adopt ? adoption(options, left, handler, false) : Effect.succeed(-1)
      ).pipe(
        Effect.tap((handled) =>
          handled < 0
            ? Effect.void
            : Effect.logInfo(`effect-mqtt group ${options.group}: adopted ${left} (${handled})`)
        ),
        Effect.catchIf(
          (error): error is MqttError.MqttError | NotStarted =>
            error instanceof NotStarted || (MqttError.isMqttError(error) && isConnectionError(error)),
          (error) => adoptionCut(options, client, left, error)
        ),
        Effect.andThen(Effect.sync(() => (adopting = undefined)))
      ))).pipe(Effect.onError(() => handOnAll))
    // every message the group dealt this member goes to the handler, also the last ones of a filter it took in
    // its last run (dealt before the unsubscribe): the group's own topics excepted
    const work = handleAll(
      client,
      client.messages,
      options.concurrency ?? 1,
      (message) => isGroupTopic(message.topic) ? Effect.void : handler(message)
    )
    // at every connection, the shares and the record again: a session the broker kept may have lost them (an
    // adopter that took it while this member was briefly away empties it of its shares and deletes its record)
    const rejoin = Stream.runForEach(
      Stream.filter(client.statusChanges, (status) => status._tag === "Connected"),
      () =>
        client.subscribe(shares(options.group, filters), { qos: options.qos ?? 1 }).pipe(
          Effect.andThen(client.publish(record, JSON.stringify(filters), { qos: 1, retain: true })),
          // back after its will went out: the notice goes (an adopter may have emptied the session already)
          Effect.andThen(notice(client, options, options.member, "")),
          // lost again meanwhile: the next connection does it
          Effect.catch((error) =>
            Effect.logWarning(`effect-mqtt group ${options.group}: rejoining failed: ${error.message}`)
          )
        )
    )
    yield* Effect.all([work, adoptions, listening, rejoin, leftWhileStopped], { concurrency: 5, discard: true })
    return yield* new MqttError.ConnectionLostError({ reason: "the client was closed" })
  }))

/** An error of the adoption's connection, not of the handler's or the options'. */
const isConnectionError = (error: MqttError.MqttError): boolean =>
  error._tag === "ConnectionLostError" || error._tag === "ConnectRefusedError" || error._tag === "TlsError" ||
  error._tag === "MqttTimeoutError" || error._tag === "ProtocolError"

/**
 * The adoption's connection ended, or never came. Once connected as the member, nothing is left undone: the member
 * took its session back (Mosquitto closes the adopter's connection, another broker sends DISCONNECT 0x8E), or the
 * connection died and the adopter's will names the member again for another adoption. Never connected, the notice
 * is given again after its delay, unless the broker refused for good (then the session waits for its member, or
 * expires: said in an error line).
 */
const adoptionCut = (
  options: Options,
  client: MqttClient.Client,
  left: string,
  cut: MqttError.MqttError | NotStarted
): Effect.Effect<void> => {
  const group = options.group
  if (!(cut instanceof NotStarted)) {
    return Effect.logWarning(`effect-mqtt group ${group}: adoption of ${left} ended: ${cut.message}`)
  }
  const error = cut.error
  if (error._tag === "ConnectRefusedError" || error._tag === "TlsError") {
    return Effect.logError(`effect-mqtt group ${group}: cannot adopt ${left}: ${error.message}`)
  }
  return Effect.logWarning(`effect-mqtt group ${group}: adoption of ${left} did not start: ${error.message}`).pipe(
    Effect.andThen(Effect.sleep(`${NOTICE_DELAY} seconds`)),
    Effect.andThen(notice(client, options, left)),
    Effect.ignore
  )
}
