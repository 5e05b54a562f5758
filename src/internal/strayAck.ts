/**
 * What the session does with an acknowledgement for a packet identifier that no flow of the session holds: a "stray"
 * acknowledgement. The decoder cannot tell (it has no state); the session applies this.
 *
 * Packet identifiers are one space for PUBLISH (QoS 1/2), SUBSCRIBE and UNSUBSCRIBE [MQTT-2.2.1-3]. An identifier
 * that a flow holds must be answered as that flow expects: a PUBACK for a QoS 1 PUBLISH, PUBREC for a QoS 2 one (again
 * after the PUBREL went out: answered with the PUBREL again), PUBCOMP for a PUBREL, SUBACK for a SUBSCRIBE, UNSUBACK
 * for an UNSUBSCRIBE. Any other acknowledgement under it (a PUBACK for QoS 2, which brokers that downgrade QoS 2 to 1
 * send; a PUBREC for QoS 1; a PUBCOMP before the PUBREL; a SUBACK for an UNSUBSCRIBE or a PUBLISH) is not stray: the
 * broker and the client disagree about that very flow, a protocol error that closes the connection (MQTT 5:
 * DISCONNECT 0x82); see `Outgoing.mismatch`, `Subscriptions.onAck`, `Session.notInFlight`. Only an identifier no flow
 * holds is stray. For the client receiving QoS 2, a PUBREL is stray when no message it received holds its
 * identifier (one whose PUBREC the client has not sent yet is a protocol error: `Inbound.onPubrel`).
 *
 * What the specification says. The acknowledgements must carry the identifier of the packet they answer: "A
 * PUBACK, PUBREC, PUBREL, or PUBCOMP packet MUST contain the same Packet Identifier as the PUBLISH packet that
 * was originally sent" [MQTT-2.2.1-5], "A SUBACK and UNSUBACK MUST contain the Packet Identifier that was used in
 * the corresponding SUBSCRIBE and UNSUBSCRIBE packet respectively" [MQTT-2.2.1-6] (MQTT 3.1.1: [MQTT-2.3.1-6],
 * [MQTT-2.3.1-7]). But an identifier the receiver does not know is not listed among the Protocol Errors: MQTT 5
 * names it with a reason code of its own, for the two packets that can answer it, 0x92 "Packet Identifier not
 * found: The Packet Identifier is not known. This is not an error during recovery, but at other times indicates
 * a mismatch between the Session State on the Client and Server" (PUBREL, PUBCOMP; section 2.4). So the
 * specification's answer to an unknown identifier is to say so, where a packet can, and carry on: a mismatch of
 * session state, not a broken connection. Closing the connection would not repair it either: the packet would
 * come back after the reconnect, and a broker that does this every time would make a reconnect loop.
 *
 * Hence:
 * - PUBREC: answer PUBREL, with 0x92 in MQTT 5 [MQTT-4.3.3-4 asks for a PUBREL in answer to every PUBREC below
 *   0x80]. Without it the broker keeps that QoS 2 flow open, holding one of its Receive Maximum slots for this
 *   client. (A PUBREC with a reason code of 0x80 or more ends the flow on the broker's side [MQTT-4.4.0-2]: no
 *   answer.) The broker then sends a PUBCOMP for it, which is stray in turn and ignored.
 * - PUBREL: answer PUBCOMP, with 0x92 in MQTT 5: "the receiver MUST respond to a PUBREL packet by sending a
 *   PUBCOMP packet containing the same Packet Identifier as the PUBREL" [MQTT-4.3.3-11]; our earlier PUBCOMP may
 *   have been lost with a connection.
 * - PUBACK, PUBCOMP, SUBACK, UNSUBACK: ignore. Nothing answers them, and nothing the session holds changes:
 *   an identifier is only released by an acknowledgement that matches it, so a stray one cannot complete or
 *   free anything. (An ack meant for a flow in flight that carries a wrong identifier leaves that flow waiting:
 *   its caller's own timeout, or the next reconnect with its resend, settles it.)
 *
 * For comparison: Mosquitto logs a stray PUBACK or PUBCOMP and carries on; the HiveMQ client closes the
 * connection with 0x82, for a stray acknowledgement as for one its flow cannot take.
 */
import type * as Packets from "./packets.ts"

/** How the session treats a stray acknowledgement. */
export type StrayAction = "ignore" | "answer"

/** The treatment of each acknowledgement type when its packet identifier is not in flight (see the module). */
export const STRAY_ACTIONS: Readonly<
  Record<"Puback" | "Pubrec" | "Pubrel" | "Pubcomp" | "Suback" | "Unsuback", StrayAction>
> = {
  Puback: "ignore",
  Pubrec: "answer",
  Pubrel: "answer",
  Pubcomp: "ignore",
  Suback: "ignore",
  Unsuback: "ignore"
}

/**
 * The bytes to send in answer to an acknowledgement whose packet identifier is not in flight, or `undefined`
 * when it is ignored: PUBREL for a PUBREC below 0x80, PUBCOMP for a PUBREL, each with reason code 0x92 (Packet
 * Identifier not found) in MQTT 5 and plain in MQTT 3.1 and 3.1.1. Never a reason to close the connection.
 */
export const strayAnswer = (
  packet: Packets.Ack | Packets.Suback | Packets.Unsuback,
  version: Packets.ProtocolVersion
): Uint8Array | undefined => {
  switch (packet._tag) {
    case "Pubrec":
      if (packet.reasonCode >= 0x80) return undefined
      return answer(0x62, packet.id, version)
    case "Pubrel":
      return answer(0x70, packet.id, version)
    default:
      return undefined
  }
}

const answer = (header: number, id: number, version: Packets.ProtocolVersion): Uint8Array =>
  version === 5
    ? Uint8Array.of(header, 3, id >> 8, id & 0xff, 0x92)
    : Uint8Array.of(header, 2, id >> 8, id & 0xff)
