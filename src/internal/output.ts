/**
 * What one step of the session produces, as data: packets to write, messages to hand to their owners,
 * operations that ended, and a violation that ends the connection. The driver drains it after every call into
 * the session, in this order: write `send` then `acks`, hand `deliver` to the queues, run `settle`. An
 * operation therefore completes only after the packets and messages of the same step are on their way.
 *
 * One Output is reused for the life of a client: draining empties it, so the hot path allocates no new one.
 */
import * as MqttError from "../MqttError.ts"
import type { MqttMessage } from "../MqttMessage.ts"
import * as Bytes from "./bytes.ts"
import { AckBuffer } from "./codec.ts"
import type * as Journal from "./journal.ts"
import type * as Packets from "./packets.ts"

/** A received message and who receives it. */
export interface Delivery {
  readonly message: MqttMessage
  /** the owners (`messages` is owner 0, each `subscription()` another) that receive it, each once */
  readonly owners: ReadonlyArray<number>
  /** the acknowledgement flow it belongs to: QoS 1/2 only */
  readonly record: InboundRecord | undefined
}

/**
 * A received QoS 1 or 2 message whose acknowledgement (PUBACK or PUBREC) waits until every copy handed to an
 * owner was taken by a consumer (or acknowledged by the application, with manual acknowledgement).
 */
export class InboundRecord {
  /** copies not yet taken or acknowledged */
  pending = 0
  /** copies not yet handed to the application (still in a queue, or on their way to one) */
  queued = 0
  /** let go of (see `Inbound.forget`): done, and never acknowledged */
  forgotten = false
  /** QoS 2, durable session: its identifier is journaled as delivered (`a`), perhaps before its PUBREC can go */
  journaled = false
  /**
   * the answer to a resend the client does not deliver again (see `Inbound.answer`): its PUBACK or PUBREC only,
   * in its turn, on the connection it came on
   */
  answer = false
  readonly id: number
  readonly qos: 1 | 2
  /** the broker session it belongs to: a record of a session the broker lost is never acknowledged */
  readonly epoch: number
  /** the connection its PUBLISH came on (see `Inbound.connection`) */
  readonly connection: number
  /** the last connection the broker resent it on (DUP) while the client held it; -1: none */
  resentOn = -1
  /** what the message was (see `Content`), to know the broker's resend of it (see `Inbound`); until acknowledged */
  content: Content | undefined = undefined
  constructor(id: number, qos: 1 | 2, epoch: number, connection = 0) {
    this.id = id
    this.qos = qos
    this.epoch = epoch
    this.connection = connection
  }
}

/**
 * What tells a received message from another one under its identifier: its topic, and its payload's size and hash.
 * Not the payload: the application may change the bytes it was handed (scrub them, decode them in place), and a
 * record kept until its acknowledgement (behind an unread message) or its PUBREL would keep them alive.
 */
export interface Content {
  readonly topic: string
  readonly size: number
  readonly hash: number
}

export const contentOf = (topic: string, payload: Uint8Array): Content => ({
  topic,
  size: payload.byteLength,
  hash: fingerprint(payload)
})

/**
 * The bytes of a payload its fingerprint reads: all of a payload up to this size; of a larger one, four windows of
 * a quarter of it each (the start, a third in, two thirds in, the end), so that the cost per message is bounded
 * (about half a microsecond) whatever the payload's size.
 */
const FINGERPRINT_BYTES = 1024
const WINDOW = FINGERPRINT_BYTES / 4

const fingerprint = (payload: Uint8Array): number => {
  const n = payload.byteLength
  if (n <= FINGERPRINT_BYTES) return Bytes.hash32(payload)
  let h = 0
  for (const at of [0, Math.floor(n / 3), Math.floor((2 * n) / 3), n - WINDOW]) {
    h = Math.imul(h ^ Bytes.hash32(payload.subarray(at, at + WINDOW)), 0x01000193)
  }
  return h >>> 0
}

/**
 * Whether two messages have the same topic and payload (two payloads of one size with one fingerprint are taken for
 * the same: a resend, as any DUP was taken before content was compared; over 1 KB, a payload that differs only
 * outside the fingerprint's four windows is taken for the same too).
 */
export const sameContent = (a: Content, b: Content): boolean =>
  a.topic === b.topic && a.size === b.size && a.hash === b.hash

/** An operation of a caller that the session completes or fails exactly once. */
export interface Operation {
  /** set when the operation ends: undefined on success */
  error: MqttError.MqttError | undefined
  done: boolean
  /** called by the driver (never by the session) when the operation ends */
  listener: (() => void) | undefined
}

export class Output {
  readonly send: Array<Uint8Array> = []
  /** acknowledgements, written after `send` in one buffer */
  readonly acks = new AckBuffer()
  readonly deliver: Array<Delivery> = []
  readonly settle: Array<Operation> = []
  /**
   * Owners whose subscriptions the session gave up (a restore the connection cannot take), one entry per owner and
   * filter (the error names the filter): their streams fail with the error, after the messages of the same step;
   * `messages` (owner 0) only lets go of the filter, its queue never fails
   */
  readonly failed: Array<{ readonly owner: number; readonly error: MqttError.MqttError }> = []
  /** AUTH packets for the enhanced-authentication handler */
  readonly auth: Array<Packets.Auth> = []
  /** a PINGRESP arrived */
  pong = false
  /** a violation: the connection must close with this error (MQTT 5: DISCONNECT with its reason code) */
  error: MqttError.MqttError | undefined = undefined
  /** things worth a log line that do not end anything */
  readonly warnings: Array<string> = []
  /** messages the session dropped unread (counted in `droppedMessages`) */
  dropped = 0
  /**
   * Changes of the session to store (durable sessions only; undefined otherwise): the packets of the same step
   * are written only once these are durable (write-ahead).
   */
  journal: Array<Journal.Entry> | undefined = undefined

  /** Ends an operation: it is completed (its listener called) when the output is drained. */
  end(operation: Operation, error: MqttError.MqttError | undefined): void {
    if (operation.done) return
    operation.done = true
    operation.error = error
    this.settle.push(operation)
  }

  /** An owner's stream fails with `error` (see `failed`). */
  failOwner(owner: number, error: MqttError.MqttError): void {
    this.failed.push({ owner, error })
  }

  /** Records the first violation of a step. */
  fail(error: MqttError.MqttError): void {
    this.error ??= error
  }

  get isEmpty(): boolean {
    return this.send.length === 0 && this.acks.isEmpty && this.deliver.length === 0 && this.settle.length === 0 &&
      this.failed.length === 0 && this.auth.length === 0 && !this.pong && this.error === undefined &&
      this.warnings.length === 0 && this.dropped === 0
  }
}

/**
 * A violation of the protocol by the broker. `reasonCode` is what an MQTT 5 client sends in its DISCONNECT; an
 * MQTT 3.1/3.1.1 client sends no DISCONNECT reason, so the error carries none.
 */
export const violation = (
  version: Packets.ProtocolVersion,
  reason: string,
  reasonCode = 0x82,
  detail?: { readonly packet?: string | undefined; readonly rule?: string | undefined }
): MqttError.ProtocolError =>
  new MqttError.ProtocolError({
    reason,
    ...(version === 5 ? { reasonCode } : {}),
    ...(detail?.packet === undefined ? {} : { packet: detail.packet }),
    ...(detail?.rule === undefined ? {} : { rule: detail.rule })
  })

/** A packet's name with its article: "a PUBACK", "an UNSUBACK". */
export const article = (packet: string): string => `${packet.startsWith("U") ? "an" : "a"} ${packet}`
