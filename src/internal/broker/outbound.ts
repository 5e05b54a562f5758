/**
 * Sending messages to a session: QoS 0 at once (dropped when offline), QoS 1/2 within the connection's window
 * (the client's Receive Maximum on MQTT 5, the broker's in-flight limit on MQTT 3.1.1), the rest queued in
 * order, up to a limit, and sent as acknowledgements free the window or when the client comes back.
 *
 * @internal
 */
import type { Delivery, Session } from "./session.ts"

const expired = (delivery: Delivery, now: number): boolean =>
  delivery.message.expiresAt !== undefined && now >= delivery.message.expiresAt

const sendNew = (session: Session, delivery: Delivery, now: number): void => {
  const connection = session.connection!
  if (expired(delivery, now)) return
  const id = session.allocateId()
  if (id === undefined) {
    session.queue.unshift(delivery)
    return
  }
  session.inflight.set(id, { delivery, state: "publish" })
  // a message larger than the client's Maximum Packet Size is dropped, as if delivered [MQTT-3.1.2-25]
  if (!connection.sendPublish(delivery, id, false)) session.inflight.delete(id)
}

/** Sends or queues one message for the session. `false` when it was dropped because the queue is full. */
export const deliver = (session: Session, delivery: Delivery, maxQueued: number, now: number): boolean => {
  const connection = session.connection
  if (delivery.qos === 0) {
    // QoS 0 messages are not queued for offline clients (Mosquitto's default)
    if (connection !== undefined && !expired(delivery, now)) connection.sendPublish(delivery, undefined, false)
    return true
  }
  if (connection !== undefined && session.queue.length === 0 && session.inflight.size < connection.sendWindow) {
    sendNew(session, delivery, now)
    return true
  }
  if (session.queue.length >= maxQueued) {
    session.dropped++
    return false
  }
  session.queue.push(delivery)
  return true
}

/** Sends queued messages while the window has room. */
export const pump = (session: Session, now: number): void => {
  const connection = session.connection
  if (connection === undefined) return
  while (session.queue.length > 0 && session.inflight.size < connection.sendWindow) {
    sendNew(session, session.queue.shift()!, now)
  }
}

/**
 * A session resumed on a new connection: every unacknowledged PUBLISH is sent again with DUP set and every
 * PUBREL again, in their original order [MQTT-4.4.0-1], then the queue.
 */
export const resume = (session: Session, now: number): void => {
  const connection = session.connection!
  for (const [id, entry] of session.inflight) {
    if (entry.state === "publish") connection.sendPublish(entry.delivery, id, true)
    else connection.sendPubrel(id)
  }
  pump(session, now)
}

/**
 * The client acknowledged packet `id` with PUBACK, PUBREC or PUBCOMP. Answers a PUBREC with PUBREL (unless its
 * MQTT 5 reason code is a failure, which ends the exchange). Returns `false` when `id` was not in flight for
 * that packet type.
 */
export const acknowledge = (
  session: Session,
  id: number,
  kind: "puback" | "pubrec" | "pubcomp",
  reasonCode: number,
  now: number
): boolean => {
  const entry = session.inflight.get(id)
  if (entry === undefined) return false
  if (kind === "puback") {
    if (entry.state !== "publish" || entry.delivery.qos !== 1) return false
    session.inflight.delete(id)
  } else if (kind === "pubrec") {
    if (entry.delivery.qos !== 2) return false
    if (reasonCode >= 0x80) {
      session.inflight.delete(id)
    } else {
      entry.state = "pubrel"
      session.connection?.sendPubrel(id)
      return true
    }
  } else {
    if (entry.state !== "pubrel") return false
    session.inflight.delete(id)
  }
  pump(session, now)
  return true
}
