/**
 * Raw framing-only MQTT 3.1.1 peers for the benches: plain sockets (`noDelay`, as effect-mqtt's), pre-encoded or
 * hand-encoded packets, a parser that only frames. They measure what the broker and the machine give, with no
 * client library in the way: bench/scale.ts's payload limit and latency floor, bench/stages.ts's floor row.
 */
import * as MqttPacket from "mqtt-packet"
import { Buffer } from "node:buffer"
import * as Net from "node:net"

const connectPacket = (clientId: string) =>
  MqttPacket.generate({
    cmd: "connect",
    protocolId: "MQTT",
    protocolVersion: 4,
    clean: true,
    clientId,
    keepalive: 0
  })

/** A raw MQTT 3.1.1 connection: CONNECT sent and CONNACK read. */
export const rawConnect = (port: number, clientId: string): Promise<Net.Socket> =>
  new Promise((resolve, reject) => {
    const socket = Net.connect({ host: "127.0.0.1", port, noDelay: true })
    socket.once("error", reject)
    socket.once("connect", () => socket.write(connectPacket(clientId)))
    socket.once("data", () => resolve(socket))
  })

/** Writes the packets in chunks of `chunk`, waiting for the socket to drain. */
export const rawWrite = async (socket: Net.Socket, packets: ReadonlyArray<Buffer>, chunk = 256): Promise<void> => {
  for (let i = 0; i < packets.length; i += chunk) {
    const ok = socket.write(Buffer.concat(packets.slice(i, i + chunk)))
    if (!ok) await new Promise<void>((resolve) => socket.once("drain", () => resolve()))
  }
}

/** A QoS 0 PUBLISH, encoded by mqtt-packet. */
export const publishPacket = (topic: string, payload: Buffer) =>
  MqttPacket.generate({ cmd: "publish", topic, payload, qos: 0, retain: false, dup: false })

/** A publisher and a subscriber of one topic on raw sockets. */
export interface RawPair {
  /** writes one PUBLISH per payload, all in one socket write */
  readonly publish: (payloads: ReadonlyArray<Buffer>) => void
  readonly close: () => void
}

/**
 * Connects a subscriber (first) and a publisher (second) on raw sockets and subscribes to `topic` at `qos`.
 * The subscriber frames what it reads, acknowledges the QoS 1 PUBLISHes of each read at once, and hands each payload (a view
 * into the read) to `received`; the publisher numbers its QoS 1 packets and drops its PUBACKs. Payloads up to
 * 120 bytes less the topic (one byte of remaining length).
 */
export const rawPair = async (
  port: number,
  clientId: string,
  topic: string,
  qos: 0 | 1,
  received: (payload: Buffer) => void
): Promise<RawPair> => {
  const topicBytes = Buffer.from(topic)
  const sub = await rawConnect(port, `${clientId}s`)
  const pub = await rawConnect(port, `${clientId}p`)
  const subscribed = new Promise<void>((resolve) => sub.once("data", () => resolve()))
  sub.write(MqttPacket.generate({ cmd: "subscribe", messageId: 1, subscriptions: [{ topic, qos }] }))
  await subscribed
  let pending: Buffer = Buffer.alloc(0)
  sub.on("data", (chunk: Buffer) => {
    const data = pending.length === 0 ? chunk : Buffer.concat([pending, chunk])
    let offset = 0
    const acks: Array<number> = []
    while (offset + 2 <= data.length) {
      // the remaining length, a variable byte integer
      let length = 0
      let multiplier = 1
      let at = offset + 1
      while (at < data.length && (data[at] & 0x80) !== 0) {
        length += (data[at++] & 0x7f) * multiplier
        multiplier *= 128
      }
      if (at >= data.length) break
      length += data[at++] * multiplier
      if (at + length > data.length) break
      if (data[offset] >> 4 === 3) {
        const topicEnd = at + 2 + data.readUInt16BE(at)
        const packetQos = (data[offset] >> 1) & 3
        if (packetQos > 0) acks.push(0x40, 2, data[topicEnd], data[topicEnd + 1])
        received(data.subarray(packetQos > 0 ? topicEnd + 2 : topicEnd, at + length))
      }
      offset = at + length
    }
    pending = offset === data.length ? Buffer.alloc(0) : data.subarray(offset)
    // the PUBACKs of one read in one write, as a client's batched writes
    if (acks.length > 0) sub.write(Buffer.from(acks))
  })
  pub.on("data", () => {})
  let id = 0
  const encode = (payload: Buffer): Buffer => {
    const length = 2 + topicBytes.length + (qos > 0 ? 2 : 0) + payload.length
    if (length > 127) throw new Error(`a raw PUBLISH of ${length} bytes (at most 127)`)
    const header = Buffer.from([0x30 | (qos << 1), length, topicBytes.length >> 8, topicBytes.length & 0xff])
    if (qos === 0) return Buffer.concat([header, topicBytes, payload])
    id = (id % 65535) + 1
    return Buffer.concat([header, topicBytes, Buffer.from([id >> 8, id & 0xff]), payload])
  }
  return {
    publish: (payloads) => {
      pub.write(payloads.length === 1 ? encode(payloads[0]) : Buffer.concat(payloads.map(encode)))
    },
    close: () => {
      sub.destroy()
      pub.destroy()
    }
  }
}

/**
 * The made-at time of each PUBLISH in `chunk` (whole packets) whose 64-byte-or-longer payload ends with a bench
 * stamp: the time (a double) in its first 8 bytes and `mark` in its 9th, the payload being the packet's last 64
 * bytes. For the benches that stamp a message's stages by patching Node's socket methods.
 */
export const stampedPublishes = (chunk: Uint8Array, mark: number, each: (made: number) => void): void => {
  const bytes = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength)
  let offset = 0
  while (offset < bytes.length) {
    const type = bytes[offset] >> 4
    let length = 0
    let multiplier = 1
    let i = offset + 1
    while (i < bytes.length) {
      const digit = bytes[i++]
      length += (digit & 127) * multiplier
      multiplier *= 128
      if ((digit & 128) === 0) break
    }
    const end = i + length
    if (type === 3 && end <= bytes.length && length >= 64 && bytes[end - 56] === mark) {
      each(bytes.readDoubleLE(end - 64))
    }
    offset = end
  }
}
