/**
 * MQTT over WebSocket for tests: Debian's Mosquitto has no WebSocket listener, so
 *
 * - {@link startAedesWs} runs `aedes` (an MQTT 3.1.1 broker) behind a `ws` server, over HTTP or HTTPS;
 * - {@link startFakeWs} is a `ws` server whose connections the test scripts frame by frame: it parses what the
 *   client sends (however the client splits it into frames) and sends whatever frames the test wants.
 *
 * Both record the HTTP upgrade requests, so a test can check the path, the offered subprotocols and headers.
 */
import { Aedes } from "aedes"
import * as MqttPacket from "mqtt-packet"
import * as Http from "node:http"
import * as Https from "node:https"
import type * as Net from "node:net"
import { createWebSocketStream, type WebSocket, WebSocketServer } from "ws"

/** What the client asked for in its HTTP upgrade request. */
export interface UpgradeRequest {
  /** The path and query string. */
  readonly url: string
  /** The subprotocols offered in `Sec-WebSocket-Protocol`. */
  readonly protocols: ReadonlyArray<string>
  readonly authorization: string | undefined
}

export interface WsServerOptions {
  /** Serve HTTPS with this certificate and key (PEM file contents). */
  readonly tls?: { readonly cert: string; readonly key: string }
  /** Accept the `mqtt` subprotocol (the default). `false` answers without a subprotocol. */
  readonly acceptMqttSubprotocol?: boolean
  /** Listen on this port (a broker restarted where its clients will look for it); a free one otherwise. */
  readonly port?: number
}

interface Listening {
  readonly port: number
  readonly requests: Array<UpgradeRequest>
  readonly close: () => Promise<void>
}

const listen = async (
  options: WsServerOptions | undefined,
  onConnection: (ws: WebSocket, request: Http.IncomingMessage) => void
): Promise<Listening> => {
  const server = options?.tls === undefined ? Http.createServer() : Https.createServer(options.tls)
  const sockets = new Set<Net.Socket>()
  server.on("connection", (socket: Net.Socket) => {
    sockets.add(socket)
    socket.once("close", () => sockets.delete(socket))
  })
  const accept = options?.acceptMqttSubprotocol ?? true
  const wss = new WebSocketServer({
    server,
    handleProtocols: (protocols) => accept && protocols.has("mqtt") ? "mqtt" : false
  })
  const requests: Array<UpgradeRequest> = []
  wss.on("connection", (ws, request) => {
    requests.push({
      url: request.url ?? "",
      protocols: (request.headers["sec-websocket-protocol"] ?? "").split(",").map((p) => p.trim()).filter((p) =>
        p !== ""
      ),
      authorization: request.headers.authorization
    })
    onConnection(ws, request)
  })
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject)
    server.listen(options?.port ?? 0, "127.0.0.1", () => resolve())
  })
  const address = server.address()
  const port = typeof address === "object" && address !== null ? address.port : 0
  return {
    port,
    requests,
    close: async () => {
      for (const client of wss.clients) client.terminate()
      await new Promise<void>((resolve) => wss.close(() => resolve()))
      for (const socket of sockets) socket.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}

export interface AedesWsHandle {
  readonly port: number
  readonly requests: ReadonlyArray<UpgradeRequest>
  close(): Promise<void>
}

/** Starts aedes behind a `ws` server on 127.0.0.1 (any path). */
export const startAedesWs = async (options?: WsServerOptions): Promise<AedesWsHandle> => {
  const aedes = await Aedes.createBroker()
  const listening = await listen(options, (ws, request) => {
    const stream = createWebSocketStream(ws)
    stream.on("error", () => {})
    aedes.handle(stream as unknown as Parameters<Aedes["handle"]>[0], request)
  })
  return {
    port: listening.port,
    requests: listening.requests,
    close: async () => {
      await listening.close()
      await new Promise<void>((resolve) => aedes.close(() => resolve()))
    }
  }
}

/** One scripted WebSocket connection of {@link startFakeWs}. */
export interface FakeWsConnection {
  readonly ws: WebSocket
  /** The next MQTT packet from the client, however it was split into frames. Rejects after 10 s. */
  next(): Promise<MqttPacket.Packet>
  /** Encodes an MQTT 3.1.1 packet. */
  encode(packet: MqttPacket.Packet): Buffer
  /** Sends bytes as one binary frame each. */
  sendFrames(frames: ReadonlyArray<Uint8Array>): Promise<void>
  /** Resolves with the close code the client sent (or 1006 when the connection just ended). */
  readonly closed: Promise<number>
  /** Whether the client sent a frame that was not binary. */
  readonly sawText: () => boolean
}

export interface FakeWsHandle {
  readonly port: number
  readonly requests: ReadonlyArray<UpgradeRequest>
  /** The next connection. Rejects after 10 s. */
  accept(): Promise<FakeWsConnection>
  close(): Promise<void>
}

const within = <A>(promise: Promise<A>, what: string): Promise<A> =>
  new Promise<A>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), 10_000)
    promise.then((a) => {
      clearTimeout(timer)
      resolve(a)
    }, (e) => {
      clearTimeout(timer)
      reject(e)
    })
  })

/** Starts a scripted `ws` server on 127.0.0.1 (any path). */
export const startFakeWs = async (options?: WsServerOptions): Promise<FakeWsHandle> => {
  const waiting: Array<(c: FakeWsConnection) => void> = []
  const ready: Array<FakeWsConnection> = []
  const listening = await listen(options, (ws) => {
    const parser = MqttPacket.parser({ protocolVersion: 4 })
    const packets: Array<MqttPacket.Packet> = []
    const readers: Array<(p: MqttPacket.Packet) => void> = []
    let text = false
    parser.on("packet", (packet) => {
      const reader = readers.shift()
      if (reader !== undefined) reader(packet)
      else packets.push(packet)
    })
    ws.on("message", (data, isBinary) => {
      if (!isBinary) text = true
      parser.parse(Buffer.isBuffer(data) ? data : Buffer.from(data as ArrayBuffer))
    })
    const closed = new Promise<number>((resolve) => ws.once("close", (code) => resolve(code)))
    const connection: FakeWsConnection = {
      ws,
      next: () =>
        within(
          new Promise<MqttPacket.Packet>((resolve) => {
            const packet = packets.shift()
            if (packet !== undefined) resolve(packet)
            else readers.push(resolve)
          }),
          "a packet from the client"
        ),
      encode: (packet) => MqttPacket.generate(packet, { protocolVersion: 4 }),
      sendFrames: async (frames) => {
        for (const frame of frames) {
          await new Promise<void>((resolve, reject) =>
            ws.send(frame, { binary: true }, (error) => error ? reject(error) : resolve())
          )
        }
      },
      closed,
      sawText: () => text
    }
    const waiter = waiting.shift()
    if (waiter !== undefined) waiter(connection)
    else ready.push(connection)
  })
  return {
    port: listening.port,
    requests: listening.requests,
    accept: () =>
      within(
        new Promise<FakeWsConnection>((resolve) => {
          const connection = ready.shift()
          if (connection !== undefined) resolve(connection)
          else waiting.push(resolve)
        }),
        "a WebSocket connection"
      ),
    close: listening.close
  }
}
