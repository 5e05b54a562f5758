/**
 * MQTT 3.1 (protocol name `MQIsdp`, level 3) on the wire against a real Mosquitto, which negotiates the version
 * per client: the client's CONNECT encoder and decoder, packet by packet over a plain socket, with
 * `mosquitto_pub -V mqttv31` as an independent 3.1 peer. And an MQTT 5 CONNECT to aedes, a broker of MQTT 3.1.1
 * only, whose refusal the decoder must read as "no MQTT 5 here", not as a malformed packet.
 */
import { Aedes } from "aedes"
import { Buffer } from "node:buffer"
import { execFileSync } from "node:child_process"
import * as Net from "node:net"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Codec from "../src/internal/codec.ts"
import { decode } from "../src/internal/decode.ts"
import { Framer } from "../src/internal/framer.ts"
import type * as Packets from "../src/internal/packets.ts"
import { type MosquittoHandle, requireMosquittoClients, startMosquitto } from "./support/Mosquitto.ts"

let broker: MosquittoHandle
beforeAll(async () => {
  broker = await startMosquitto()
})
afterAll(() => broker?.dispose())

/** A raw connection that decodes what the broker sends, as MQTT `version`. */
const open = async (version: Packets.ProtocolVersion, port = broker.port) => {
  const socket = Net.connect(port, "127.0.0.1")
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve)
    socket.once("error", reject)
  })
  const framer = new Framer(1 << 20)
  const received: Array<Packets.Packet | Packets.Violation> = []
  let waiting: (() => void) | undefined
  let closed = false
  socket.on("data", (chunk: Buffer) => {
    const error = framer.push(chunk, (header, body) => received.push(decode(header, body, version)))
    if (error !== undefined) throw new Error(error.reason)
    waiting?.()
  })
  socket.on("close", () => {
    closed = true
    waiting?.()
  })
  const next = async (): Promise<Packets.Packet | Packets.Violation | "closed"> => {
    const deadline = Date.now() + 10_000
    while (received.length === 0 && !closed && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        waiting = resolve
        setTimeout(resolve, 200)
      })
    }
    return received.shift() ?? (closed ? "closed" : Promise.reject(new Error("nothing from the broker in 10 s")))
  }
  return { socket, next, close: () => socket.destroy() }
}

const connect = (clientId: string, clean: boolean, protocolVersion: 3 | 5 = 3): Uint8Array =>
  Codec.encodeConnect({
    protocolVersion,
    clientId,
    clean,
    keepAlive: 30,
    username: undefined,
    password: undefined,
    will: undefined,
    sessionExpiryInterval: undefined,
    receiveMaximum: undefined,
    maximumPacketSize: undefined,
    topicAliasMaximum: undefined,
    userProperties: undefined,
    authenticationMethod: undefined,
    authenticationData: undefined
  })

describe("MQTT 3.1 against Mosquitto", () => {
  it("connects with MQIsdp level 3, subscribes (SUBACK codes 0 to 2) and receives a 3.1 peer's messages", async () => {
    requireMosquittoClients()
    const c = await open(3)
    c.socket.write(connect("effect-mqtt-31-a", true))
    expect(await c.next()).toEqual({ _tag: "Connack", sessionPresent: false, reasonCode: 0, properties: {} })
    c.socket.write(
      Codec.encodeSubscribe(3, 7, [{ topic: "v31/+", qos: 2 }, { topic: "v31/zero", qos: 0 }], 0, undefined)
    )
    expect(await c.next()).toEqual({ _tag: "Suback", id: 7, codes: [2, 0] })
    execFileSync("mosquitto_pub", ["-V", "mqttv31", "-p", String(broker.port), "-t", "v31/a", "-q", "1", "-m", "hello"])
    const message = await c.next()
    expect(message).toMatchObject({ _tag: "Publish", topic: "v31/a", qos: 1, retain: false, dup: false })
    expect(message !== "closed" && message._tag === "Publish" && Buffer.from(message.payload).toString()).toBe("hello")
    c.socket.write(Uint8Array.of(0xc0, 0))
    expect(await c.next()).toEqual({ _tag: "Pingresp" })
    c.close()
  })

  it("a resumed 3.1 session is acknowledged without Session Present (3.1 has none), and its messages follow", async () => {
    requireMosquittoClients()
    const first = await open(3)
    first.socket.write(connect("effect-mqtt-31-b", false))
    expect(await first.next()).toMatchObject({ _tag: "Connack", reasonCode: 0 })
    first.socket.write(Codec.encodeSubscribe(3, 1, [{ topic: "v31/kept", qos: 1 }], 0, undefined))
    expect(await first.next()).toEqual({ _tag: "Suback", id: 1, codes: [1] })
    first.socket.write(Uint8Array.of(0xe0, 0))
    expect(await first.next()).toBe("closed")
    execFileSync("mosquitto_pub", [
      "-V",
      "mqttv31",
      "-p",
      String(broker.port),
      "-t",
      "v31/kept",
      "-q",
      "1",
      "-m",
      "queued"
    ])
    const second = await open(3)
    second.socket.write(connect("effect-mqtt-31-b", false))
    // the decoder refuses Session Present in MQTT 3.1, and Mosquitto does not send it to a 3.1 client, though it
    // kept the session: a 3.1 client that asked for one cannot tell, and must keep its own state
    expect(await second.next()).toEqual({ _tag: "Connack", sessionPresent: false, reasonCode: 0, properties: {} })
    const queued = await second.next()
    expect(queued).toMatchObject({ _tag: "Publish", topic: "v31/kept", qos: 1 })
    expect(queued !== "closed" && queued._tag === "Publish" && Buffer.from(queued.payload).toString()).toBe("queued")
    second.close()
  })

  it("a client identifier of 23 bytes, the most MQTT 3.1 allows, connects", async () => {
    expect(Codec.clientIdProblem(3, "x".repeat(23), true)).toBeUndefined()
    const ok = await open(3)
    ok.socket.write(connect("x".repeat(23), true))
    expect(await ok.next()).toEqual({ _tag: "Connack", sessionPresent: false, reasonCode: 0, properties: {} })
    ok.close()
  })
})

describe("MQTT 5 against a broker of MQTT 3.1.1 only", () => {
  it("aedes answers an MQTT 5 CONNECT with 20 02 00 01, decoded as refusal 0x84 (Unsupported Protocol Version)", async () => {
    const aedes = await Aedes.createBroker()
    const server = Net.createServer((socket) => aedes.handle(socket))
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    try {
      const c = await open(5, (server.address() as Net.AddressInfo).port)
      c.socket.write(connect("effect-mqtt-5", true, 5))
      expect(await c.next()).toEqual({
        _tag: "Connack",
        sessionPresent: false,
        reasonCode: 0x84,
        properties: {},
        legacyReturnCode: 1
      })
      expect(await c.next()).toBe("closed")
    } finally {
      server.close()
      await new Promise<void>((resolve) => aedes.close(() => resolve()))
    }
  })
})
