/**
 * MQTT 5 enhanced authentication (section 4.12): the broker's AUTH challenges during CONNECT and during a
 * re-authentication, answered with what `auth.onChallenge` computes.
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as MqttError from "../MqttError.ts"
import * as Codec from "./codec.ts"
import type { Connection } from "./connection.ts"
import { describe } from "./describe.ts"
import type { Resolved } from "./options.ts"
import { violation } from "./output.ts"
import type * as Packets from "./packets.ts"

/**
 * An AUTH packet, or why it cannot be sent: data that does not encode, or a packet larger than the broker's
 * Maximum Packet Size (known once connected) [MQTT-3.1.2-24]: refused before it is written.
 */
const authPacket = (
  c: Connection,
  reasonCode: number,
  method: string,
  data: Uint8Array | undefined
): Uint8Array | MqttError.InvalidOptionError => {
  const bytes = Codec.tryEncode(() => Codec.encodeAuth(reasonCode, method, data))
  if (!(bytes instanceof Uint8Array)) return new MqttError.InvalidOptionError({ option: "auth", reason: bytes.error })
  const maximum = c.info?.maximumPacketSize
  if (maximum !== undefined && bytes.byteLength > maximum) {
    return new MqttError.InvalidOptionError({
      option: "auth.data",
      reason: `the AUTH packet is ${bytes.byteLength} bytes, more than the broker's Maximum Packet Size (${maximum})`
    })
  }
  return bytes
}

/**
 * Handles the AUTH packets of one socket read, in order. Before the CONNACK, `beside` is undefined: each challenge
 * is answered before the next read. Once connected (a re-authentication), `beside` runs the application's answer
 * while the reader reads on.
 */
export const answerAuth = (
  o: Resolved,
  version: Packets.ProtocolVersion,
  c: Connection,
  packets: ReadonlyArray<Packets.Auth>,
  beside: ((answer: Effect.Effect<void, MqttError.MqttError>) => Effect.Effect<void>) | undefined
): Effect.Effect<void, MqttError.MqttError> =>
  Effect.forEach(packets, (packet) => answerOne(o, version, c, packet, beside), { discard: true })

const answerOne = (
  o: Resolved,
  version: Packets.ProtocolVersion,
  c: Connection,
  packet: Packets.Auth,
  beside: ((answer: Effect.Effect<void, MqttError.MqttError>) => Effect.Effect<void>) | undefined
): Effect.Effect<void, MqttError.MqttError> => {
  const auth = o.auth
  if (auth === undefined) {
    return Effect.fail(violation(version, "an AUTH packet, but the client asked for no authentication"))
  }
  if (packet.authenticationMethod !== auth.method) {
    return Effect.fail(violation(
      version,
      packet.authenticationMethod === undefined
        ? `an AUTH without the CONNECT's Authentication Method "${auth.method}" [MQTT-4.12.0-5]`
        : `an AUTH for method "${packet.authenticationMethod}", not the CONNECT's "${auth.method}" [MQTT-4.12.0-5]`
    ))
  }
  // only the client starts a re-authentication [MQTT-4.12.1]: a challenge once connected answers one under way
  if (packet.reasonCode === 0x18 && (beside === undefined || c.reauthentication !== undefined)) {
    // the exchange the challenge belongs to: one the broker ended (AUTH 0x00) while the answer was computed beside
    // the reader takes no answer, and a later one must not get this one for its own challenge
    const exchange = c.reauthentication
    const answer = Effect.flatMap(
      challenge(auth, packet),
      (data) => {
        if (c.reauthentication !== exchange) return Effect.void
        const bytes = authPacket(c, 0x18, auth.method, data)
        if (!(bytes instanceof Uint8Array)) return Effect.fail(bytes)
        c.outbox.push(bytes)
        return Effect.void
      }
    )
    return beside === undefined ? answer : beside(answer)
  }
  if (packet.reasonCode === 0x00 && beside !== undefined && c.reauthentication !== undefined) {
    const { accepted, done } = c.reauthentication
    c.reauthentication = undefined
    accepted()
    return Deferred.succeed(done, undefined)
  }
  return Effect.fail(violation(version, `an AUTH with reason code 0x${packet.reasonCode.toString(16)}`))
}

/**
 * The application's answer to a challenge. A defect of `onChallenge` (an `Effect.die`, a throw) ends the connection
 * as its failure would, with a typed error: otherwise it would escape the handshake (the socket left open, and a
 * reconnecting client stopped for good).
 */
const challenge = (
  auth: NonNullable<Resolved["auth"]>,
  packet: Packets.Auth
): Effect.Effect<Uint8Array | undefined, MqttError.MqttError> =>
  Effect.catchDefect(
    Effect.suspend(() => auth.onChallenge({ data: packet.authenticationData, reasonString: packet.reasonString })),
    (defect) =>
      Effect.fail(
        new MqttError.ConnectionLostError({ reason: `auth.onChallenge died: ${describe(defect)}`, cause: defect })
      )
  )

/**
 * Starts a re-authentication (AUTH 0x19) on a connection and waits until the broker accepts it; `accepted` runs
 * when it does (also when the caller gave up waiting meanwhile). A call while one is under way waits for it, and one
 * with data then starts its own.
 */
export const reauthenticate = (
  o: Resolved,
  c: Connection,
  data: Uint8Array | undefined,
  accepted: () => void
): Effect.Effect<void, MqttError.MqttError> =>
  Effect.suspend(() => {
    const auth = o.auth!
    // a call that joins one under way too: its exchange is never settled when the connection ends. One with data of
    // its own then presents it: joined, it would succeed with its data never sent, and reconnections carry the other
    if (c.reauthentication !== undefined) {
      const joined = untilLost(c, c.reauthentication.done)
      return data === undefined ? joined : Effect.andThen(joined, reauthenticate(o, c, data, accepted))
    }
    const bytes = authPacket(c, 0x19, auth.method, data)
    if (!(bytes instanceof Uint8Array)) return Effect.fail(bytes)
    const done = Deferred.makeUnsafe<void, MqttError.MqttError>()
    c.reauthentication = { done, accepted }
    c.outbox.push(bytes)
    return untilLost(c, done)
  })

/** Waits for a re-authentication; if the connection ends first, so does the re-authentication. */
const untilLost = (c: Connection, done: Deferred.Deferred<void, MqttError.MqttError>) =>
  Effect.raceFirst(Deferred.await(done), Effect.flatMap(Effect.flip(Deferred.await(c.lost)), Effect.fail))
