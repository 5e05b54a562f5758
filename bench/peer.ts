/**
 * The peer of bench/cpu.ts and of bench/scale.ts's routing section, run in a process of its own so that its CPU
 * is not the client's: a minimal MQTT server on a free port of 127.0.0.1 that is never the bottleneck, as a
 * broker would be.
 *
 * - Answers CONNECT (CONNACK, Session Present 0), SUBSCRIBE (SUBACK granting the QoS asked), UNSUBSCRIBE, PINGREQ.
 * - `send` mode: reads the client's PUBLISHes, acknowledges QoS 1 (PUBACK), and tells the parent (IPC) when
 *   `n` have arrived.
 * - `receive` mode: once subscribed, writes `n` PUBLISHes of 64 bytes on `bench/cpu` (QoS of the subscription,
 *   identifiers 1..65,535 in turn), encoded beforehand and written in 64 KB writes as fast as the socket takes
 *   them; QoS 1 identifiers are reused only after the client's PUBACK, at most 1,000 in flight. A routing job
 *   (`filters`) waits for that many filters and the parent's go, then writes to `route/<i>/x/v`, each filter in
 *   turn or all to the last one (`spread`).
 *
 * Parent → peer: `{ mode, n, version }` before each connection; peer → parent: `{ port }` once listening,
 * `{ ready }` once it has the job, `{ received }` in send mode; parent → peer `{ go }` starts a routing job's
 * messages.
 */
import * as Net from "node:net"
import type { Job } from "./peerControl.ts"

let job: Job = { mode: "send", n: 0, version: 4 }
/** What a `{ go }` message starts: the pump of a routing job's connection, once its filters are subscribed. */
let onGo: (() => void) | undefined
process.on("message", (message) => {
  if ("go" in (message as object)) {
    return onGo?.()
  }
  job = message as Job
  process.send!({ ready: 1 })
})

const TOPIC = Buffer.from("bench/cpu")
const PAYLOAD = Buffer.alloc(64, "x")
const WINDOW = 1000

/** The remaining length as MQTT's variable byte integer. */
const varint = (n: number): Array<number> => {
  const out: Array<number> = []
  do {
    let b = n % 128
    n = Math.floor(n / 128)
    if (n > 0) b |= 0x80
    out.push(b)
  } while (n > 0)
  return out
}

const publishPacket = (qos: number, id: number, version: 4 | 5, topic = TOPIC): Buffer => {
  const props = version === 5 ? 1 : 0
  const body = 2 + topic.length + (qos > 0 ? 2 : 0) + props + PAYLOAD.length
  const head = [0x30 | (qos << 1), ...varint(body), topic.length >> 8, topic.length & 0xff]
  const parts = [Buffer.from(head), topic]
  if (qos > 0) parts.push(Buffer.from([id >> 8, id & 0xff]))
  if (props) parts.push(Buffer.from([0]))
  parts.push(PAYLOAD)
  return Buffer.concat(parts)
}

const serve = (socket: Net.Socket) => {
  const current = job
  socket.setNoDelay(true)
  let buffered: Buffer = Buffer.alloc(0)
  let received = 0
  let qos = 0
  let sent = 0
  let acked = 0
  let writing = false
  let subscribed = 0
  let started = false
  const routes = current.filters === undefined
    ? undefined
    : current.spread === "last"
    ? [Buffer.from(`route/${current.filters - 1}/x/v`)]
    : Array.from({ length: current.filters }, (_, i) => Buffer.from(`route/${i}/x/v`))

  const pump = () => {
    if (writing) return
    writing = true
    const chunk: Array<Buffer> = []
    let size = 0
    while (sent < current.n && (qos === 0 || sent - acked < WINDOW) && size < 65536) {
      const topic = routes === undefined ? TOPIC : routes[sent % routes.length]
      const packet = publishPacket(qos, (sent % 65535) + 1, current.version, topic)
      chunk.push(packet)
      size += packet.length
      sent++
    }
    if (chunk.length === 0) {
      writing = false
      return
    }
    const more = socket.write(Buffer.concat(chunk))
    writing = false
    if (more) setImmediate(pump)
    else socket.once("drain", pump)
  }

  const onPacket = (type: number, body: Buffer) => {
    switch (type >> 4) {
      case 1: // CONNECT
        socket.write(current.version === 5 ? Buffer.from([0x20, 3, 0, 0, 0]) : Buffer.from([0x20, 2, 0, 0]))
        break
      case 8: { // SUBSCRIBE: identifier, (properties), then filters, each with its options
        let i = 2
        if (current.version === 5) i += 1 + body[2]
        const codes: Array<number> = []
        while (i + 2 < body.length) {
          const length = body.readUInt16BE(i)
          qos = body[i + 2 + length] & 3
          codes.push(qos)
          i += 3 + length
        }
        const rest = [body[0], body[1], ...(current.version === 5 ? [0] : []), ...codes]
        socket.write(Buffer.from([0x90, ...varint(rest.length), ...rest]))
        subscribed += codes.length
        if (current.mode === "receive" && !started && subscribed >= (current.filters ?? 1)) {
          started = true
          // a routing job waits for the parent's go (its CPU is measured from then, not while it subscribes)
          if (current.filters === undefined) setImmediate(pump)
          else onGo = pump
        }
        break
      }
      case 3: { // PUBLISH
        const pubQos = (type >> 1) & 3
        if (pubQos > 0) {
          const length = body.readUInt16BE(0)
          socket.write(Buffer.from([0x40, 2, body[2 + length], body[3 + length]]))
        }
        if (++received === current.n) process.send!({ received })
        break
      }
      case 4: // PUBACK
        acked++
        if (!writing) pump()
        break
      case 10: { // UNSUBSCRIBE: UNSUBACK (in MQTT 5 with a reason code per filter)
        if (current.version !== 5) {
          socket.write(Buffer.from([0xb0, 2, body[0], body[1]]))
          break
        }
        let i = 3 + body[2]
        const codes: Array<number> = []
        while (i + 2 <= body.length) {
          i += 2 + body.readUInt16BE(i)
          codes.push(0)
        }
        const rest = [body[0], body[1], 0, ...codes]
        socket.write(Buffer.from([0xb0, ...varint(rest.length), ...rest]))
        break
      }
      case 12: // PINGREQ
        socket.write(Buffer.from([0xd0, 0]))
        break
      case 14: // DISCONNECT
        socket.end()
        break
    }
  }

  socket.on("data", (data: Buffer) => {
    buffered = buffered.length === 0 ? data : Buffer.concat([buffered, data])
    let offset = 0
    while (offset + 2 <= buffered.length) {
      let length = 0
      let multiplier = 1
      let i = offset + 1
      let complete = false
      while (i < buffered.length) {
        const b = buffered[i++]
        length += (b & 0x7f) * multiplier
        multiplier *= 128
        if ((b & 0x80) === 0) {
          complete = true
          break
        }
      }
      if (!complete || i + length > buffered.length) break
      onPacket(buffered[offset], buffered.subarray(i, i + length))
      offset = i + length
    }
    buffered = buffered.subarray(offset)
  })
  socket.on("error", () => {})
}

const server = Net.createServer(serve)
server.listen(0, "127.0.0.1", () => {
  const address = server.address() as Net.AddressInfo
  process.send!({ port: address.port })
})
