import * as Arr from "effect/Array"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import type * as Socket from "effect/socket/Socket"
import * as MqttPacket from "mqtt-packet"
import { Buffer } from "node:buffer"
import * as Crypto from "node:crypto"
import * as IncomingQueue from "../IncomingQueue.ts"
import type * as MqttClient from "../MqttClient.ts"
import * as MqttError from "../MqttError.ts"
import { MqttMessage, type QoS } from "../MqttMessage.ts"
import * as Codec from "./codec.ts"
import { Inflight } from "./inflight.ts"
import { Outbox } from "./outbox.ts"
import * as Transport from "./transport.ts"
import { filterProblem, nameProblem } from "./topic.ts"

// ---------------------------------------------------------------------------------------------------------
// options
// ---------------------------------------------------------------------------------------------------------

interface Resolved {
  readonly endpoint: Transport.Endpoint
  readonly clientId: string
  readonly protocolVersion: 4 | 5
  readonly keepAlive: number
  readonly pingTimeout: Duration.Duration | undefined
  readonly cleanStart: boolean
  readonly sessionExpiryInterval: number | undefined
  readonly username: string | undefined
  readonly password: Redacted.Redacted<string> | undefined
  readonly will: MqttClient.Will | undefined
  readonly connectTimeout: Duration.Duration
  readonly queue: IncomingQueue.Strategy
  readonly userProperties: ReadonlyArray<readonly [string, string]> | undefined
}

const invalid = (option: string, reason: string) => new MqttError.InvalidOptionError({ option, reason })

const isUint = (n: unknown, max: number): n is number =>
  typeof n === "number" && Number.isInteger(n) && n >= 0 && n <= max

const isQoS = (n: unknown): n is QoS => n === 0 || n === 1 || n === 2

const randomClientId = (): string => "effect-mqtt-" + Crypto.randomBytes(8).toString("base64url").slice(0, 10)

const decodeDuration = (option: string, input: Duration.Input | undefined, fallback: Duration.Duration) => {
  if (input === undefined) return Effect.succeed(fallback)
  const decoded = Duration.fromInput(input)
  return decoded._tag === "Some" && Duration.isFinite(decoded.value) && Duration.toMillis(decoded.value) > 0
    ? Effect.succeed(decoded.value)
    : Effect.fail(invalid(option, "expected a positive, finite duration"))
}

const resolveOptions = Effect.fnUntraced(function*(options: MqttClient.Options) {
  const endpoint = yield* Transport.parseUrl(options.url ?? "mqtt://localhost:1883")
  const protocolVersion = options.protocolVersion ?? 4
  if (protocolVersion !== 4 && protocolVersion !== 5) {
    return yield* invalid("protocolVersion", "expected 4 (MQTT 3.1.1) or 5 (MQTT 5.0)")
  }
  const keepAlive = options.keepAlive ?? 60
  if (!isUint(keepAlive, 65535)) return yield* invalid("keepAlive", "expected whole seconds from 0 to 65535")
  const clientId = options.clientId ?? randomClientId()
  if (typeof clientId !== "string" || Buffer.byteLength(clientId) > 65535 || clientId.includes("\u0000")) {
    return yield* invalid("clientId", "expected a string of at most 65,535 UTF-8 bytes without U+0000")
  }
  const cleanStart = options.cleanStart ?? options.cleanSession ?? true
  if (clientId === "" && !cleanStart && protocolVersion === 4) {
    return yield* invalid("clientId", "an empty client identifier needs cleanSession: true in MQTT 3.1.1")
  }
  const sessionExpiryInterval = options.sessionExpiryInterval
  if (sessionExpiryInterval !== undefined && !isUint(sessionExpiryInterval, 0xffffffff)) {
    return yield* invalid("sessionExpiryInterval", "expected whole seconds from 0 to 4294967295")
  }
  const username = options.username ?? endpoint.username
  const password = options.password ??
    (endpoint.password === undefined ? undefined : Redacted.make(endpoint.password))
  const will = options.will
  if (will !== undefined) {
    const problem = nameProblem(will.topic)
    if (problem !== undefined) return yield* invalid("will.topic", problem)
    if (will.qos !== undefined && !isQoS(will.qos)) return yield* invalid("will.qos", "expected 0, 1 or 2")
  }
  const connectTimeout = yield* decodeDuration("connectTimeout", options.connectTimeout, Duration.seconds(30))
  const pingTimeout = options.pingTimeout === undefined
    ? undefined
    : yield* decodeDuration("pingTimeout", options.pingTimeout, Duration.seconds(30))
  const queue = options.queue ?? IncomingQueue.defaultStrategy
  if (queue._tag !== "Unbounded" && !(Number.isInteger(queue.capacity) && queue.capacity > 0)) {
    return yield* invalid("queue", "the capacity must be a positive integer")
  }
  return {
    endpoint,
    clientId,
    protocolVersion,
    keepAlive,
    pingTimeout,
    cleanStart,
    sessionExpiryInterval,
    username,
    password,
    will,
    connectTimeout,
    queue,
    userProperties: options.userProperties
  } satisfies Resolved
})

const connectPacket = (o: Resolved): MqttPacket.IConnectPacket => {
  const packet: MqttPacket.IConnectPacket = {
    cmd: "connect",
    protocolId: "MQTT",
    protocolVersion: o.protocolVersion,
    clientId: o.clientId,
    clean: o.cleanStart,
    keepalive: o.keepAlive
  }
  if (o.username !== undefined) packet.username = o.username
  if (o.password !== undefined) packet.password = Buffer.from(Redacted.value(o.password))
  if (o.will !== undefined) {
    const w = o.will
    packet.will = {
      topic: w.topic,
      payload: typeof w.payload === "string" ? Buffer.from(w.payload) : Buffer.from(w.payload),
      qos: w.qos ?? 0,
      retain: w.retain ?? false
    }
    if (o.protocolVersion === 5 && w.properties !== undefined) {
      const { willDelayInterval, ...rest } = w.properties
      packet.will.properties = {
        ...Codec.toPacketProperties(rest),
        ...(willDelayInterval === undefined ? {} : { willDelayInterval })
      }
    }
  }
  if (o.protocolVersion === 5) {
    const properties: NonNullable<MqttPacket.IConnectPacket["properties"]> = {}
    if (o.sessionExpiryInterval !== undefined) properties.sessionExpiryInterval = o.sessionExpiryInterval
    if (o.userProperties !== undefined && o.userProperties.length > 0) {
      properties.userProperties = Codec.toPacketUserProperties(o.userProperties)
    }
    packet.properties = properties
  }
  return packet
}

// ---------------------------------------------------------------------------------------------------------
// the client
// ---------------------------------------------------------------------------------------------------------

/** What waits for an acknowledgement, indexed by packet identifier. */
type Pending =
  | {
    readonly _tag: "Publish"
    readonly qos: 1 | 2
    readonly topic: string
    /** for QoS 2: PUBREC received, PUBREL sent, waiting for PUBCOMP */
    released: boolean
    readonly deferred: Deferred.Deferred<void, MqttError.MqttError>
  }
  | {
    readonly _tag: "Subscribe"
    readonly count: number
    readonly deferred: Deferred.Deferred<Acknowledged, MqttError.MqttError>
  }
  | {
    readonly _tag: "Unsubscribe"
    readonly count: number
    readonly deferred: Deferred.Deferred<Acknowledged, MqttError.MqttError>
  }

/** The reason codes of a SUBACK or UNSUBACK, one per filter. */
interface Acknowledged {
  readonly codes: ReadonlyArray<number>
  readonly reasonString: string | undefined
}

/** Bytes waiting to be written beyond which publishers wait for the socket. */
const OUTBOX_HIGH_WATER_MARK = 256 * 1024
/** How long closing waits for the last bytes to be taken by the socket. */
const SHUTDOWN_WRITE_TIMEOUT = Duration.seconds(2)

const lost = (reason: string, cause?: unknown) =>
  new MqttError.ConnectionLostError(cause === undefined ? { reason } : { reason, cause })

const closedByClient = lost("the client was closed")

const socketLost = (error: Socket.SocketError): MqttError.ConnectionLostError => {
  const reason = error.reason
  switch (reason._tag) {
    case "SocketCloseError":
      return lost(reason.code === 1000 ? "the broker closed the connection" : "the connection was reset")
    case "SocketOpenError":
      return lost(
        reason.kind === "Timeout" ? "the TCP connection timed out" : `could not connect: ${describe(reason.cause)}`,
        reason.cause
      )
    default:
      return lost(`socket error: ${describe(reason.cause)}`, reason.cause)
  }
}

const describe = (cause: unknown): string => cause instanceof Error ? cause.message : String(cause)

/**
 * Connects and returns the client. Protocol state (packet identifiers, acknowledgements pending, incoming
 * QoS 2 identifiers awaiting PUBREL) is plain mutable state; the socket reader fiber is its only writer
 * apart from the publish/subscribe calls that register what they wait for.
 */
export const make = (
  options: MqttClient.Options = {}
): Effect.Effect<MqttClient.Client, MqttError.MqttError, Scope.Scope> =>
  Effect.gen(function*() {
    const o = yield* resolveOptions(options)
    const version = o.protocolVersion
    const scope = yield* Effect.scope
    const clock = yield* Clock.Clock
    const incoming = yield* IncomingQueue.make<MqttMessage, MqttError.MqttError>(o.queue)

    // ---- session state: outlives one connection --------------------------------------------------------
    const inflight = new Inflight()
    const pending: Array<Pending | undefined> = new Array(65536)
    /** incoming QoS 2 identifiers delivered and awaiting PUBREL */
    const awaitingRelease = new Uint8Array(65536)

    // ---- connection state -------------------------------------------------------------------------------
    const socket = yield* Transport.makeSocket(o.endpoint, options)
    const connectionScope = yield* Scope.fork(scope)
    const writer = yield* Scope.provide(socket.writer, connectionScope)
    let closed: MqttError.MqttError | undefined
    const closedSignal = yield* Deferred.make<void, MqttError.MqttError>()
    let lastSent = clock.currentTimeMillisUnsafe()
    let pong: Deferred.Deferred<void> | undefined
    /** whether the reader is waiting for room in the incoming queue (the socket is not being read) */
    let stalled = false
    let stalledDuringPing = false
    let connack: MqttPacket.IConnackPacket | undefined
    let info: MqttClient.ConnectionInfo | undefined

    const outbox = new Outbox(OUTBOX_HIGH_WATER_MARK, () => {
      lastSent = clock.currentTimeMillisUnsafe()
    })
    const write = (bytes: Uint8Array): Effect.Effect<void, MqttError.MqttError> =>
      closed !== undefined ? Effect.fail(closed) : outbox.write(bytes)
    const writeLoop = Effect.forever(
      Effect.flatMap(outbox.take, (batch) =>
        Effect.map(writer.writeAll(batch as Arr.NonEmptyReadonlyArray<Uint8Array>), () => outbox.written()))
    )

    /**
     * Ends the connection: every waiting operation fails with `error`, the messages stream fails with it
     * (or ends, when the client itself closes), and the socket is closed.
     */
    const shutdown = (
      error: MqttError.MqttError,
      disconnectReason?: number
    ): Effect.Effect<never, MqttError.MqttError> =>
      Effect.suspend(() => {
        if (closed !== undefined) return Effect.fail(closed)
        closed = error
        const failure = Effect.fail(error)
        for (let id = 1; id < 65536; id++) {
          const entry = pending[id]
          if (entry !== undefined) {
            pending[id] = undefined
            Deferred.doneUnsafe(entry.deferred as Deferred.Deferred<unknown, MqttError.MqttError>, failure)
          }
        }
        inflight.failWaiters(error)
        if (pong !== undefined) Deferred.doneUnsafe(pong, Effect.void)
        // what is still queued goes out before the DISCONNECT; a broker that stopped reading does not hold
        // the shutdown up for long
        const rest: Array<Uint8Array> = [...outbox.close(error)]
        if (disconnectReason !== undefined) rest.push(Codec.disconnect(version, disconnectReason))
        const goodbye = Arr.isArrayNonEmpty(rest)
          ? writer.writeAll(rest).pipe(Effect.timeoutOption(SHUTDOWN_WRITE_TIMEOUT), Effect.ignore)
          : Effect.void
        return goodbye.pipe(
          Effect.andThen(error === closedByClient ? incoming.end : incoming.fail(error)),
          Effect.andThen(Scope.close(connectionScope, Exit.void)),
          Effect.andThen(
            error === closedByClient ? Deferred.done(closedSignal, Exit.void) : Deferred.fail(closedSignal, error)
          ),
          Effect.andThen(Effect.fail(error))
        )
      })

    /**
     * Runs a background loop of the connection: its failures have closed the connection already; a defect
     * (a bug of this client) closes it too, so that nothing waits forever on a dead loop.
     */
    const guard = (loop: Effect.Effect<unknown, MqttError.MqttError>): Effect.Effect<void> =>
      Effect.catchCause(loop, (cause) =>
        Cause.hasInterruptsOnly(cause) || Cause.hasFails(cause)
          ? Effect.void
          : Effect.ignore(shutdown(lost(`internal error: ${Cause.pretty(cause)}`, Cause.squash(cause)))))

    const protocolError = (reason: string, reasonCode = 0x82) =>
      new MqttError.ProtocolError(version === 5 ? { reason, reasonCode } : { reason })

    // ---- reading ----------------------------------------------------------------------------------------
    const parser = MqttPacket.parser({ protocolVersion: version })
    const packets: Array<MqttPacket.Packet> = []
    let parseError: Error | undefined
    parser.on("packet", (packet: MqttPacket.Packet) => packets.push(packet))
    parser.on("error", (error: Error) => {
      parseError ??= error
    })

    /** acknowledgements that do not depend on delivery (PUBREL, PUBCOMP): written at once */
    const acksNow = new Codec.AckBuffer()
    /** acknowledgements of delivered messages (PUBACK, PUBREC): written once the queue took them */
    const acksAfter = new Codec.AckBuffer()
    let delivered: Array<MqttMessage> = []
    let fatal: MqttError.MqttError | undefined

    const fail = (error: MqttError.MqttError) => {
      fatal ??= error
    }

    /** The entry waiting for an acknowledgement of packet `id`: a protocol error when there is none. */
    const settle = (id: number, tag: Pending["_tag"], packet: string): Pending | undefined => {
      const entry = id > 0 ? pending[id] : undefined
      if (entry === undefined || entry._tag !== tag) {
        fail(protocolError(`a ${packet} for packet ${id}, which is not in flight`))
        return undefined
      }
      return entry
    }

    const reasonOf = (packet: { readonly properties?: { readonly reasonString?: string } }) =>
      packet.properties?.reasonString

    const onPublish = (packet: MqttPacket.IPublishPacket) => {
      let topic = packet.topic
      if (version === 5 && packet.properties?.topicAlias !== undefined) {
        // this client announces no Topic Alias Maximum, so any alias is invalid [MQTT-3.3.2-9]
        return fail(protocolError(`the broker used topic alias ${packet.properties.topicAlias}`, 0x94))
      }
      if (topic === "" || topic.includes("+") || topic.includes("#")) {
        return fail(protocolError(`a PUBLISH with an invalid topic name "${topic}"`))
      }
      const qos = packet.qos
      const id = packet.messageId ?? 0
      if (qos === 2) {
        acksAfter.push(Codec.PUBREC, id)
        if (awaitingRelease[id] === 1) return // a resend of a message already delivered
        awaitingRelease[id] = 1
      } else if (qos === 1) {
        acksAfter.push(Codec.PUBACK, id)
      }
      const payload = typeof packet.payload === "string" ? Buffer.from(packet.payload) : packet.payload
      delivered.push(
        new MqttMessage(
          topic,
          payload,
          qos,
          packet.retain,
          packet.dup,
          version === 5 && packet.properties !== undefined ? Codec.fromPacketProperties(packet.properties) : undefined
        )
      )
      topic = ""
    }

    const onPacket = (packet: MqttPacket.Packet): void => {
      switch (packet.cmd) {
        case "publish":
          return onPublish(packet)
        case "puback": {
          const id = packet.messageId ?? -1
          const entry = settle(id, "Publish", "PUBACK")
          if (entry === undefined || entry._tag !== "Publish") return
          if (entry.qos !== 1) return fail(protocolError(`a PUBACK for the QoS 2 publish ${id}`))
          pending[id] = undefined
          inflight.release(id, true)
          const code = packet.reasonCode ?? 0
          Deferred.doneUnsafe(
            entry.deferred,
            code >= 0x80 ?
              Effect.fail(
                new MqttError.PublishError({
                  topic: entry.topic,
                  reasonCode: code,
                  ...optionalReason(reasonOf(packet))
                })
              ) :
              Effect.void
          )
          return
        }
        case "pubrec": {
          const id = packet.messageId ?? -1
          const entry = settle(id, "Publish", "PUBREC")
          if (entry === undefined || entry._tag !== "Publish") return
          if (entry.qos !== 2) return fail(protocolError(`a PUBREC for the QoS 1 publish ${id}`))
          const code = packet.reasonCode ?? 0
          if (code >= 0x80) {
            pending[id] = undefined
            inflight.release(id, true)
            Deferred.doneUnsafe(
              entry.deferred,
              Effect.fail(
                new MqttError.PublishError({
                  topic: entry.topic,
                  reasonCode: code,
                  ...optionalReason(reasonOf(packet))
                })
              )
            )
            return
          }
          // a repeated PUBREC (after PUBREL was sent) is answered again [MQTT-4.3.3]
          entry.released = true
          acksNow.push(Codec.PUBREL, id)
          return
        }
        case "pubcomp": {
          const id = packet.messageId ?? -1
          const entry = settle(id, "Publish", "PUBCOMP")
          if (entry === undefined || entry._tag !== "Publish") return
          if (entry.qos !== 2 || !entry.released) {
            return fail(protocolError(`a PUBCOMP for packet ${id} before its PUBREC`))
          }
          pending[id] = undefined
          inflight.release(id, true)
          Deferred.doneUnsafe(entry.deferred, Effect.void)
          return
        }
        case "pubrel": {
          const id = packet.messageId ?? 0
          // an unknown identifier is answered too: our PUBCOMP may have been lost [MQTT-4.3.3]
          if (version === 5 && awaitingRelease[id] === 0) acksNow.pushWithReason(Codec.PUBCOMP, id, 0x92)
          else acksNow.push(Codec.PUBCOMP, id)
          awaitingRelease[id] = 0
          return
        }
        case "suback":
        case "unsuback": {
          const id = packet.messageId ?? -1
          const tag = packet.cmd === "suback" ? "Subscribe" : "Unsubscribe"
          const entry = settle(id, tag, packet.cmd.toUpperCase())
          if (entry === undefined || entry._tag === "Publish") return
          const codes = packet.cmd === "suback" ?
            (packet.granted as Array<number>) :
            version === 5 ?
            ((packet as { granted?: Array<number> }).granted ?? []) :
            new Array<number>(entry.count).fill(0)
          if (codes.length !== entry.count) {
            return fail(
              protocolError(`a ${packet.cmd.toUpperCase()} with ${codes.length} codes for ${entry.count} filters`)
            )
          }
          pending[id] = undefined
          inflight.release(id, false)
          const reasonString = reasonOf(packet)
          Deferred.doneUnsafe(entry.deferred, Effect.succeed({ codes, reasonString }))
          return
        }
        case "pingresp":
          if (pong !== undefined) Deferred.doneUnsafe(pong, Effect.void)
          return
        case "connack":
          if (connack !== undefined) return fail(protocolError("a second CONNACK"))
          connack = packet
          return
        case "disconnect": {
          const code = packet.reasonCode ?? 0
          fail(
            new MqttError.ConnectionLostError({
              reason: "the broker sent DISCONNECT",
              reasonCode: code,
              ...optionalReason(packet.properties?.reasonString)
            })
          )
          return
        }
        default:
          return fail(protocolError(`a ${packet.cmd.toUpperCase()} packet, which a server never sends`))
      }
    }

    const reader = yield* Scope.provide(socket.reader, connectionScope).pipe(
      Effect.timeoutOrElse({
        duration: o.connectTimeout,
        orElse: () =>
          Effect.fail(new MqttError.TimeoutError({ operation: "connect", millis: Duration.toMillis(o.connectTimeout) }))
      }),
      Effect.catchTag("SocketError", (error) => Effect.fail(socketLost(error))),
      Effect.tapError(() => Scope.close(connectionScope, Exit.void))
    )

    /** Reads one batch from the socket and handles every packet in it. */
    const step: Effect.Effect<void, MqttError.MqttError> = Effect.flatMap(
      Effect.catch(reader.pull, (error) => Effect.fail(closed ?? socketLost(error))),
      (chunks) => {
        // mqtt-packet parses synchronously and may throw on input it does not expect: whatever the broker
        // sends, it becomes a typed protocol error, never a defect
        try {
          for (let i = 0; i < chunks.length && parseError === undefined; i++) {
            parser.parse(toBuffer(chunks[i]))
          }
          for (let i = 0; i < packets.length && fatal === undefined; i++) onPacket(packets[i])
        } catch (e) {
          fail(protocolError(`malformed packet: ${describe(e)}`, 0x81))
        }
        packets.length = 0
        if (fatal === undefined && parseError !== undefined) {
          fail(protocolError(`malformed packet: ${parseError.message}`, 0x81))
        }
        const now = acksNow.isEmpty ? undefined : acksNow.take()
        const messages = delivered
        delivered = []
        const after = acksAfter.isEmpty ? undefined : acksAfter.take()
        let effect: Effect.Effect<void, MqttError.MqttError> = now === undefined ? Effect.void : write(now)
        if (messages.length > 0) {
          effect = Effect.andThen(effect, deliver(messages))
        }
        if (after !== undefined) effect = Effect.andThen(effect, Effect.suspend(() => write(after)))
        if (fatal !== undefined) {
          const error = fatal
          effect = Effect.andThen(
            effect,
            Effect.suspend(() =>
              shutdown(
                error,
                error._tag === "ProtocolError" ? error.reasonCode : undefined
              )
            )
          )
        }
        return effect
      }
    )

    const deliver = (messages: ReadonlyArray<MqttMessage>) =>
      Effect.suspend(() => {
        stalled = true
        stalledDuringPing = true
        return Effect.ensuring(
          incoming.offerAll(messages),
          Effect.sync(() => {
            stalled = false
          })
        )
      })

    yield* Effect.forkIn(guard(Effect.catch(writeLoop, (error) => shutdown(socketLost(error)))), scope)

    // ---- connecting -------------------------------------------------------------------------------------
    const connectBytes = Codec.generate(connectPacket(o), version)
    if (!(connectBytes instanceof Uint8Array)) {
      yield* Scope.close(connectionScope, Exit.void)
      return yield* invalid("connect", connectBytes.error)
    }
    yield* write(connectBytes)
    yield* Effect.whileLoop({
      while: () => connack === undefined,
      body: () => step,
      step: () => {}
    }).pipe(
      Effect.timeoutOrElse({
        duration: o.connectTimeout,
        orElse: () =>
          Effect.fail(new MqttError.TimeoutError({ operation: "connect", millis: Duration.toMillis(o.connectTimeout) }))
      }),
      Effect.tapError((error) => Effect.ignore(shutdown(error)))
    )
    const ack = connack!
    const code = (version === 5 ? ack.reasonCode : ack.returnCode) ?? 0
    if (code !== 0) {
      const error = new MqttError.ConnectRefusedError({
        reasonCode: code,
        protocolVersion: version,
        ...optionalReason(ack.properties?.reasonString)
      })
      yield* Effect.ignore(shutdown(error))
      return yield* error
    }
    const props = ack.properties ?? {}
    const keepAlive = props.serverKeepAlive ?? o.keepAlive
    info = {
      protocolVersion: version,
      clientId: props.assignedClientIdentifier ?? o.clientId,
      sessionPresent: ack.sessionPresent,
      keepAlive,
      receiveMaximum: props.receiveMaximum ?? 65535,
      maximumQoS: (props.maximumQoS ?? 2) as QoS,
      retainAvailable: props.retainAvailable ?? true,
      maximumPacketSize: props.maximumPacketSize,
      topicAliasMaximum: props.topicAliasMaximum ?? 0,
      sessionExpiryInterval: props.sessionExpiryInterval ?? o.sessionExpiryInterval,
      reasonString: props.reasonString,
      userProperties: Codec.fromPacketUserProperties(props.userProperties) ?? []
    }
    inflight.setQuota(info.receiveMaximum)

    // ---- running ----------------------------------------------------------------------------------------
    yield* Effect.forkIn(guard(Effect.catch(Effect.forever(step), (error) => shutdown(error))), scope)

    if (keepAlive > 0) {
      const keepAliveMillis = keepAlive * 1000
      const pingTimeoutMillis = o.pingTimeout === undefined
        ? Math.min(keepAliveMillis, 30_000)
        : Duration.toMillis(o.pingTimeout)
      const ping: Effect.Effect<void, MqttError.MqttError> = Effect.suspend(() => {
        const wait = lastSent + keepAliveMillis - clock.currentTimeMillisUnsafe()
        if (wait > 0) return Effect.sleep(wait)
        const answer = Deferred.makeUnsafe<void>()
        pong = answer
        stalledDuringPing = stalled
        const awaitPong: Effect.Effect<void, MqttError.MqttError> = Effect.flatMap(
          Effect.timeoutOption(Deferred.await(answer), pingTimeoutMillis),
          (result) => {
            if (result._tag === "Some" || closed !== undefined) return Effect.void
            // a reader held back by a full queue cannot see the PINGRESP: keep waiting
            if (stalledDuringPing || stalled) {
              stalledDuringPing = stalled
              return awaitPong
            }
            return shutdown(new MqttError.TimeoutError({ operation: "ping", millis: pingTimeoutMillis }))
          }
        )
        return Effect.andThen(write(Codec.pingreq), awaitPong)
      })
      yield* Effect.forkIn(guard(Effect.forever(ping)), scope)
    }

    yield* Scope.addFinalizer(
      scope,
      Effect.suspend(() =>
        closed !== undefined ? Scope.close(connectionScope, Exit.void) : Effect.ignore(shutdown(closedByClient, 0))
      )
    )

    // ---- operations -------------------------------------------------------------------------------------
    const publish = (
      topic: string,
      payload: Uint8Array | string,
      options?: MqttClient.PublishOptions
    ): Effect.Effect<void, MqttError.MqttError> => {
      const qos = options?.qos ?? 0
      const retain = options?.retain ?? false
      const problem = nameProblem(topic)
      if (problem !== undefined) {
        return Effect.fail(new MqttError.InvalidTopicError({ topic, kind: "name", reason: problem }))
      }
      if (!isQoS(qos)) return Effect.fail(invalid("qos", "expected 0, 1 or 2"))
      if (typeof retain !== "boolean") return Effect.fail(invalid("retain", "expected a boolean"))
      const bytes = typeof payload === "string" ? Buffer.from(payload) : payload
      if (!(bytes instanceof Uint8Array)) return Effect.fail(invalid("payload", "expected a Uint8Array or a string"))
      let encoded: Codec.EncodedPublish
      try {
        encoded = Codec.encodePublish(version, topic, bytes, qos, retain, options?.properties)
      } catch (e) {
        return Effect.fail(invalid("properties", describe(e)))
      }
      if (closed !== undefined) return Effect.fail(closed)
      if (qos === 0) return write(encoded.bytes)
      return Effect.uninterruptibleMask((restore) =>
        Effect.flatMap(restore(inflight.acquire(true)), (id) => {
          const deferred = Deferred.makeUnsafe<void, MqttError.MqttError>()
          pending[id] = { _tag: "Publish", qos, topic, released: false, deferred }
          return Effect.andThen(write(Codec.setPublishId(encoded, id)), restore(Deferred.await(deferred)))
        })
      )
    }

    const subscribe = (
      input: string | MqttClient.Subscription | ReadonlyArray<string | MqttClient.Subscription>,
      options?: MqttClient.SubscribeOptions
    ): Effect.Effect<ReadonlyArray<MqttClient.Granted>, MqttError.MqttError> =>
      Effect.suspend(() => {
        const list = Array.isArray(input) ? input : [input as string | MqttClient.Subscription]
        if (list.length === 0) return Effect.fail(invalid("filters", "at least one filter is needed"))
        const subscriptions: Array<MqttPacket.ISubscription> = []
        for (const item of list) {
          const sub: MqttClient.Subscription = typeof item === "string" ? { ...options, filter: item } : item
          const problem = typeof sub.filter === "string" ? filterProblem(sub.filter) : "expected a string"
          if (problem !== undefined) {
            return Effect.fail(
              new MqttError.InvalidTopicError({ topic: String(sub.filter), kind: "filter", reason: problem })
            )
          }
          const qos = sub.qos ?? 0
          if (!isQoS(qos)) return Effect.fail(invalid("qos", "expected 0, 1 or 2"))
          const v5Only = sub.noLocal !== undefined || sub.retainAsPublished !== undefined ||
            sub.retainHandling !== undefined
          if (v5Only && version !== 5) {
            return Effect.fail(invalid("subscribe", "noLocal, retainAsPublished and retainHandling need MQTT 5"))
          }
          if (sub.retainHandling !== undefined && !isQoS(sub.retainHandling)) {
            return Effect.fail(invalid("retainHandling", "expected 0, 1 or 2"))
          }
          if (sub.noLocal === true && sub.filter.startsWith("$share/")) {
            return Effect.fail(invalid("noLocal", "a shared subscription cannot be no local [MQTT-3.8.3-4]"))
          }
          subscriptions.push({
            topic: sub.filter,
            qos,
            ...(version === 5 ?
              {
                nl: sub.noLocal ?? false,
                rap: sub.retainAsPublished ?? false,
                rh: sub.retainHandling ?? 0
              } :
              {})
          })
        }
        return Effect.flatMap(
          request("Subscribe", (messageId) => ({ cmd: "subscribe", messageId, subscriptions }), subscriptions.length),
          ({ codes, reasonString }) => {
            const refused = codes.findIndex((code) => code >= 0x80)
            if (refused >= 0) {
              return Effect.fail(
                new MqttError.SubscribeError({
                  filter: subscriptions[refused].topic,
                  reasonCode: codes[refused],
                  ...optionalReason(reasonString)
                })
              )
            }
            return Effect.succeed(
              codes.map((reasonCode, i) => ({ filter: subscriptions[i].topic, reasonCode, qos: (reasonCode & 3) as QoS }))
            )
          }
        )
      })

    const unsubscribe = (input: string | ReadonlyArray<string>): Effect.Effect<void, MqttError.MqttError> =>
      Effect.suspend(() => {
        const filters: ReadonlyArray<string> = typeof input === "string" ? [input] : input
        if (filters.length === 0) return Effect.fail(invalid("filters", "at least one filter is needed"))
        for (const filter of filters) {
          const problem = typeof filter === "string" ? filterProblem(filter) : "expected a string"
          if (problem !== undefined) {
            return Effect.fail(
              new MqttError.InvalidTopicError({ topic: String(filter), kind: "filter", reason: problem })
            )
          }
        }
        return Effect.flatMap(
          request(
            "Unsubscribe",
            (messageId) => ({ cmd: "unsubscribe", messageId, unsubscriptions: [...filters] }),
            filters.length
          ),
          ({ codes, reasonString }) => {
            const index = codes.findIndex((code) => code >= 0x80)
            if (index < 0) return Effect.void
            return Effect.fail(
              new MqttError.UnsubscribeError({
                filter: filters[index],
                reasonCode: codes[index],
                ...optionalReason(reasonString)
              })
            )
          }
        )
      })

    /** Sends a SUBSCRIBE or UNSUBSCRIBE and waits for its acknowledgement's reason codes. */
    const request = (
      tag: "Subscribe" | "Unsubscribe",
      packet: (messageId: number) => MqttPacket.ISubscribePacket | MqttPacket.IUnsubscribePacket,
      count: number
    ): Effect.Effect<Acknowledged, MqttError.MqttError> => {
      const probe = Codec.generate(packet(1), version)
      if (!(probe instanceof Uint8Array)) return Effect.fail(invalid(tag.toLowerCase(), probe.error))
      if (closed !== undefined) return Effect.fail(closed)
      return Effect.uninterruptibleMask((restore) =>
        Effect.flatMap(restore(inflight.acquire(false)), (id) => {
          const deferred = Deferred.makeUnsafe<Acknowledged, MqttError.MqttError>()
          pending[id] = { _tag: tag, count, deferred }
          const bytes = Buffer.from(probe)
          const offset = idOffsetOf(bytes)
          bytes[offset] = id >> 8
          bytes[offset + 1] = id & 0xff
          return Effect.andThen(write(bytes), restore(Deferred.await(deferred)))
        })
      )
    }

    const client: MqttClient.Client = {
      // publish is the hot path: a span per message would cost more than the rest of the publish
      publish,
      subscribe: Effect.fn("MqttClient.subscribe")(function*(filters, options) {
        return yield* subscribe(filters, options)
      }),
      unsubscribe: Effect.fn("MqttClient.unsubscribe")(function*(filters) {
        return yield* unsubscribe(filters)
      }),
      messages: incoming.stream,
      droppedMessages: incoming.dropped,
      connection: info,
      awaitClose: Deferred.await(closedSignal)
    }
    return client
  })

const toBuffer = (chunk: Uint8Array | string): Buffer =>
  typeof chunk === "string"
    ? Buffer.from(chunk)
    : Buffer.isBuffer(chunk)
    ? chunk
    : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength)

/** The packet identifier of SUBSCRIBE and UNSUBSCRIBE comes right after the fixed header. */
const idOffsetOf = (bytes: Uint8Array): number => {
  let i = 1
  while (bytes[i] & 0x80) i++
  return i + 1
}

const optionalReason = (reasonString: string | undefined): { reasonString?: string } =>
  reasonString === undefined ? {} : { reasonString }
