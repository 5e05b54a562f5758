/**
 * A scripted fake MQTT broker on 127.0.0.1 for protocol tests that assert exact packets and inject faults.
 *
 * It answers nothing by itself (except PINGREQ when `autoPingresp` is on): the test receives every packet the
 * client sends and scripts every answer, including malformed bytes and badly split writes.
 *
 * ```ts
 * it.live("subscribes", () =>
 *   Effect.gen(function*() {
 *     const broker = yield* FakeBroker.make({ protocolVersion: 5 })
 *     // ... start the client on broker.url
 *     const { connection, connect } = yield* broker.acceptAndConnack()
 *     const subscribe = yield* connection.expect("subscribe")
 *     yield* connection.send({ cmd: "suback", messageId: subscribe.messageId!, granted: [0] })
 *   }))
 * ```
 *
 * Waiting (`accept`, `receive`, `expect`, `receiveWithin`, `expectSilence`) uses real timers, not the Effect
 * `Clock`, so it behaves the same under `it.effect` (TestClock) and `it.live`. A wait that times out is a defect
 * whose message says what was expected and what arrived so far.
 */
import { Deferred, Effect, Option } from "effect"
import type { Scope } from "effect"
import * as MqttPacket from "mqtt-packet"
import type { IConnackPacket, IConnectPacket, Packet, PacketCmd } from "mqtt-packet"
import * as Http from "node:http"
import * as Net from "node:net"
import { type WebSocket, WebSocketServer } from "ws"

export type { Packet, PacketCmd } from "mqtt-packet"

/** The packet of a given `cmd`. */
export type PacketOf<C extends PacketCmd> = Extract<Packet, { cmd: C }>

export type ProtocolVersion = 3 | 4 | 5

export interface FakeBrokerOptions {
  /** The version used to parse and generate until the client's CONNECT says otherwise. Default 4. */
  readonly protocolVersion?: ProtocolVersion
  /** Answer PINGREQ with PINGRESP by itself (the PINGREQ is then logged in `received` but not returned by `receive`). */
  readonly autoPingresp?: boolean
  /** How long `accept` waits for a client, in real milliseconds. Default 10 s; `Infinity` waits forever. */
  readonly acceptTimeoutMs?: number
  /** How long `receive` / `expect` wait for a packet, in real milliseconds. Default 10 s; `Infinity` waits forever. */
  readonly receiveTimeoutMs?: number
  /**
   * Serve MQTT over WebSocket (binary frames, subprotocol `mqtt`, any path) instead of TCP: `url` is then
   * `ws://127.0.0.1:<port>/mqtt`. Each `send` is one frame; `close` is a WebSocket close (1000), `destroy` drops the
   * TCP connection, `pause` stops reading it.
   */
  readonly websocket?: boolean
}

export interface ConnackOptions {
  readonly sessionPresent?: boolean
  /** MQTT 3.1.1 return code; used as the reason code in 5.0 when `reasonCode` is absent. Default 0. */
  readonly returnCode?: number
  /** MQTT 5.0 reason code; used as the return code in 3.1.1 when `returnCode` is absent. Default 0. */
  readonly reasonCode?: number
  /** MQTT 5.0 CONNACK properties (ignored in 3.1.1). */
  readonly properties?: NonNullable<IConnackPacket["properties"]>
}

export interface FakeConnection {
  /** 1 for the first connection accepted by this broker, 2 for the next, ... */
  readonly id: number
  /** The version of the client's CONNECT once received, before that the broker's `protocolVersion`. */
  readonly protocolVersion: ProtocolVersion
  /** Answer PINGREQ by itself; can be switched during a test (for example to withhold PINGRESP). */
  autoPingresp: boolean

  /** The next packet from the client. Dies on a parse error, when the connection closed, or after the timeout. */
  readonly receive: Effect.Effect<Packet>
  /** `receive`, and die unless the packet is a `cmd`. */
  expect<C extends PacketCmd>(cmd: C): Effect.Effect<PacketOf<C>>
  /** The next packet if one arrives within `ms` real milliseconds. Dies on a parse error or a closed connection. */
  receiveWithin(ms: number): Effect.Effect<Option.Option<Packet>>
  /** Dies if a packet arrives within `ms` real milliseconds; succeeds if none does or the connection closes. */
  expectSilence(ms: number): Effect.Effect<void>

  /** Encodes with mqtt-packet for this connection's version (or the one given); dies if mqtt-packet refuses. */
  encode(packet: Packet, options?: { readonly protocolVersion?: ProtocolVersion }): Uint8Array
  /** Encodes and writes one packet. */
  send(packet: Packet, options?: { readonly protocolVersion?: ProtocolVersion }): Effect.Effect<void>
  /** Writes bytes as they are (malformed packets, packets from another version). */
  sendRaw(bytes: Uint8Array): Effect.Effect<void>
  /**
   * Writes a packet (or bytes) in pieces of `chunkSize` bytes, yielding to the event loop between writes so the
   * client reads them separately. TCP keeps no boundaries, so this makes separate reads very likely, not certain.
   */
  sendSplit(packet: Packet | Uint8Array, chunkSize?: number): Effect.Effect<void>
  /** Encodes all packets and writes them in one write, so the client reads them in one chunk. */
  sendMany(packets: ReadonlyArray<Packet | Uint8Array>): Effect.Effect<void>
  /** Answers a CONNECT with a CONNACK in the right shape for the connection's version. */
  connack(options?: ConnackOptions): Effect.Effect<void>

  /** Stops reading from the socket (a half-open peer: the client's bytes stay in the kernel's buffers). */
  readonly pause: Effect.Effect<void>
  readonly resume: Effect.Effect<void>
  /** Closes gracefully (FIN). Does not wait: use `closed`. */
  readonly close: Effect.Effect<void>
  /** Resets the connection (RST). */
  readonly destroy: Effect.Effect<void>
  /** Succeeds when the socket is closed, by either side. */
  readonly closed: Effect.Effect<void>
  readonly isClosed: boolean

  /** Every packet parsed from the client, in order, including the ones answered automatically. */
  readonly received: ReadonlyArray<Packet>
  /** The exact bytes of each packet in `received`, same index. */
  readonly receivedRaw: ReadonlyArray<Uint8Array>
  /** Parse errors (at most one: parsing stops after the first). */
  readonly errors: ReadonlyArray<Error>
}

export interface FakeBroker {
  readonly port: number
  /** `mqtt://127.0.0.1:<port>` (`ws://127.0.0.1:<port>/mqtt` with `websocket`) */
  readonly url: string
  /** The next client connection (connections are queued from the moment they arrive). */
  readonly accept: Effect.Effect<FakeConnection>
  /** Accepts, expects CONNECT, answers CONNACK. */
  acceptAndConnack(
    options?: ConnackOptions
  ): Effect.Effect<{ readonly connection: FakeConnection; readonly connect: IConnectPacket }>
  /** Every connection so far, accepted or still queued. */
  readonly connections: ReadonlyArray<FakeConnection>
}

// ---------------------------------------------------------------------------------------------------------------
// A mailbox with real-time timeouts
// ---------------------------------------------------------------------------------------------------------------

type Waiter<A> = (
  result: { readonly _tag: "Item"; readonly item: A } | { readonly _tag: "End"; readonly error: Error }
) => void

/**
 * Items in arrival order, ended once with an error; items that arrived before the end are still taken first.
 * Timeouts use `setTimeout` on purpose: a test harness must not hang on a TestClock that nobody advances.
 */
class Mailbox<A> {
  private readonly items: Array<A> = []
  private readonly waiters = new Set<Waiter<A>>()
  private ended: Error | undefined

  offer(item: A): void {
    const waiter = this.waiters.values().next()
    if (waiter.done === true) {
      this.items.push(item)
      return
    }
    this.waiters.delete(waiter.value)
    waiter.value({ _tag: "Item", item })
  }

  end(error: Error): void {
    if (this.ended !== undefined) return
    this.ended = error
    const waiters = [...this.waiters]
    this.waiters.clear()
    for (const waiter of waiters) waiter({ _tag: "End", error })
  }

  /** Resolves with `Some(item)`, `None` after `timeoutMs`, or dies with the end error. */
  take(timeoutMs: number): Effect.Effect<Option.Option<A>> {
    return Effect.callback<Option.Option<A>>((resume) => {
      if (this.items.length > 0) return resume(Effect.succeed(Option.some(this.items.shift()!)))
      if (this.ended !== undefined) return resume(Effect.die(this.ended))
      const waiter: Waiter<A> = (result) => {
        clearTimeout(timer)
        resume(result._tag === "Item" ? Effect.succeed(Option.some(result.item)) : Effect.die(result.error))
      }
      // setTimeout fires at once for delays beyond 2^31 - 1 ms: treat those (and Infinity) as no timeout.
      const timer = timeoutMs < 2 ** 31
        ? setTimeout(() => {
          this.waiters.delete(waiter)
          resume(Effect.succeed(Option.none()))
        }, timeoutMs)
        : undefined
      this.waiters.add(waiter)
      return Effect.sync(() => {
        clearTimeout(timer)
        this.waiters.delete(waiter)
      })
    })
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------------------------

/**
 * The length of the first packet in `buffer`: `undefined` when incomplete, `-1` when its Remaining Length is
 * malformed. Framing ourselves gives each packet's exact bytes, and feeds mqtt-packet whole packets only, so its
 * chunk-dependent length checks do not make results depend on how the client's writes were split.
 */
const frameLength = (buffer: Buffer): number | undefined => {
  let remaining = 0
  let multiplier = 1
  for (let i = 1; i <= 4; i++) {
    if (i >= buffer.length) return undefined
    const byte = buffer[i]!
    remaining += (byte & 0x7f) * multiplier
    multiplier *= 128
    if ((byte & 0x80) === 0) {
      const total = 1 + i + remaining
      return buffer.length >= total ? total : undefined
    }
  }
  return -1
}

const showPacket = (packet: Packet): string =>
  JSON.stringify(packet, (_key, value: unknown) => {
    if (value !== null && typeof value === "object" && (value as { type?: unknown }).type === "Buffer") {
      return `<Buffer ${Buffer.from((value as { data: Array<number> }).data).toString("hex")}>`
    }
    return value
  })

const cmds = (packets: ReadonlyArray<Packet>): string => `[${packets.map((p) => p.cmd).join(", ")}]`

const setImmediateEffect = Effect.callback<void>((resume) => {
  const handle = setImmediate(() => resume(Effect.void))
  return Effect.sync(() => clearImmediate(handle))
})

// ---------------------------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------------------------

/** What a connection is carried by: a TCP socket, or a WebSocket (one binary frame per write). */
interface Link {
  readonly onData: (f: (chunk: Buffer) => void) => void
  readonly onClose: (f: () => void) => void
  /** Whether it can still be written. */
  readonly writable: () => boolean
  readonly write: (bytes: Uint8Array, done: (error?: Error | null) => void) => void
  /** A graceful close: TCP FIN, a WebSocket close frame (1000). */
  readonly end: () => void
  /** A reset: TCP RST, the WebSocket's TCP connection dropped. */
  readonly reset: () => void
  readonly pause: () => void
  readonly resume: () => void
}

const tcpLink = (socket: Net.Socket): Link => {
  socket.on("error", () => {
    // ECONNRESET and friends: `close` follows and ends the connection.
  })
  return {
    onData: (f) => socket.on("data", f),
    onClose: (f) => socket.on("close", f),
    writable: () => !socket.destroyed && socket.writable,
    write: (bytes, done) => socket.write(bytes, done),
    end: () => socket.end(),
    reset: () => {
      if (!socket.destroyed) socket.resetAndDestroy()
    },
    pause: () => socket.pause(),
    resume: () => socket.resume()
  }
}

const wsLink = (ws: WebSocket): Link => {
  ws.on("error", () => {
    // `close` follows and ends the connection.
  })
  return {
    onData: (f) =>
      ws.on("message", (data) =>
        f(
          Buffer.isBuffer(data)
            ? data
            : Array.isArray(data)
            ? Buffer.concat(data)
            : Buffer.from(data)
        )),
    onClose: (f) => ws.on("close", f),
    writable: () => ws.readyState === ws.OPEN,
    write: (bytes, done) => ws.send(bytes, { binary: true }, done),
    end: () => ws.close(1000),
    reset: () => ws.terminate(),
    pause: () => ws.pause(),
    resume: () => ws.resume()
  }
}

const makeConnection = (
  id: number,
  socket: Link,
  options: FakeBrokerOptions
): FakeConnection => {
  const receiveTimeoutMs = options.receiveTimeoutMs ?? 10_000
  let protocolVersion: ProtocolVersion = options.protocolVersion ?? 4
  // mqtt-packet's parser reads only `protocolVersion` from its options, and switches to the version of a CONNECT
  // it parses (it keeps the CONNECT as its settings).
  const parser = MqttPacket.parser({ protocolVersion })
  const received: Array<Packet> = []
  const receivedRaw: Array<Uint8Array> = []
  const errors: Array<Error> = []
  const mailbox = new Mailbox<Packet>()
  const closedDeferred = Deferred.makeUnsafe<void>()
  let isClosed = false
  let buffer: Buffer = Buffer.alloc(0)
  let broken = false

  // mqtt-packet emits synchronously from `parse`.
  const parsedPackets: Array<Packet> = []
  const parseErrors: Array<Error> = []
  parser.on("packet", (packet) => {
    parsedPackets.push(packet)
  })
  parser.on("error", (error: unknown) => {
    parseErrors.push(error instanceof Error ? error : new Error(String(error)))
  })

  const fail = (message: string): void => {
    broken = true
    const error = new Error(`FakeBroker connection ${id}: ${message}; received before: ${cmds(received)}`)
    errors.push(error)
    mailbox.end(error)
  }

  const onFrame = (frame: Buffer): void => {
    parsedPackets.length = 0
    parseErrors.length = 0
    parser.parse(frame)
    const packet = parsedPackets[0]
    if (parseErrors.length > 0 || packet === undefined || parsedPackets.length > 1) {
      return fail(
        `mqtt-packet could not parse ${frame.toString("hex")}: ${
          parseErrors[0]?.message ?? `${parsedPackets.length} packets produced`
        }`
      )
    }
    if (packet.cmd === "connect" && packet.protocolVersion !== undefined) protocolVersion = packet.protocolVersion
    received.push(packet)
    receivedRaw.push(Uint8Array.from(frame))
    if (packet.cmd === "pingreq" && connection.autoPingresp) {
      if (socket.writable()) socket.write(MqttPacket.generate({ cmd: "pingresp" }), () => {})
      return
    }
    mailbox.offer(packet)
    // as a server must [MQTT-3.14.4-1]: it closes the connection on DISCONNECT (the client waits for that close)
    if (packet.cmd === "disconnect") socket.end()
  }

  socket.onData((chunk: Buffer) => {
    if (broken) return
    buffer = buffer.length === 0 ? chunk : Buffer.concat([buffer, chunk])
    while (!broken && buffer.length > 0) {
      const length = frameLength(buffer)
      if (length === undefined) return
      if (length === -1) return fail(`malformed Remaining Length in ${buffer.subarray(0, 5).toString("hex")}`)
      const frame = buffer.subarray(0, length)
      buffer = buffer.subarray(length)
      onFrame(frame)
    }
  })
  socket.onClose(() => {
    isClosed = true
    if (buffer.length > 0 && !broken) {
      errors.push(new Error(`FakeBroker connection ${id}: closed with an incomplete packet ${buffer.toString("hex")}`))
    }
    mailbox.end(new Error(`FakeBroker connection ${id}: the connection is closed; received: ${cmds(received)}`))
    Deferred.doneUnsafe(closedDeferred, Effect.void)
  })

  const write = (bytes: Uint8Array): Effect.Effect<void> =>
    Effect.callback<void>((resume) => {
      if (!socket.writable()) {
        return resume(Effect.die(new Error(`FakeBroker connection ${id}: cannot write, the socket is closed`)))
      }
      socket.write(bytes, (error) => {
        resume(
          error === undefined || error === null
            ? Effect.void
            : Effect.die(new Error(`FakeBroker connection ${id}: write failed: ${error.message}`))
        )
      })
    })

  const encode = (packet: Packet, encodeOptions?: { readonly protocolVersion?: ProtocolVersion }): Uint8Array => {
    const version = encodeOptions?.protocolVersion ?? protocolVersion
    try {
      return MqttPacket.generate(packet, { protocolVersion: version })
    } catch (error) {
      throw new Error(
        `FakeBroker: mqtt-packet cannot encode ${showPacket(packet)} for version ${version}: ${String(error)}`
      )
    }
  }
  const encodeEffect = (packet: Packet | Uint8Array, encodeOptions?: { readonly protocolVersion?: ProtocolVersion }) =>
    Effect.sync(() => packet instanceof Uint8Array ? packet : encode(packet, encodeOptions))

  const receiveWithin = (ms: number): Effect.Effect<Option.Option<Packet>> => mailbox.take(ms)

  const receive: Effect.Effect<Packet> = Effect.flatMap(
    mailbox.take(receiveTimeoutMs),
    (packet) =>
      Option.isSome(packet)
        ? Effect.succeed(packet.value)
        : Effect.die(
          new Error(
            `FakeBroker connection ${id}: no packet within ${receiveTimeoutMs} ms; received before: ${cmds(received)}`
          )
        )
  )

  const connection: FakeConnection = {
    id,
    get protocolVersion() {
      return protocolVersion
    },
    autoPingresp: options.autoPingresp ?? false,
    receive,
    expect: <C extends PacketCmd>(cmd: C) =>
      Effect.flatMap(receive, (packet) =>
        packet.cmd === cmd
          ? Effect.succeed(packet as PacketOf<C>)
          : Effect.die(
            new Error(
              `FakeBroker connection ${id}: expected ${cmd.toUpperCase()} but received ${packet.cmd.toUpperCase()}: ${
                showPacket(packet)
              }`
            )
          )),
    receiveWithin,
    expectSilence: (ms) =>
      Effect.flatMap(
        Effect.catchDefect(receiveWithin(ms), () => Effect.succeed(Option.none<Packet>())),
        (packet) =>
          Option.isSome(packet)
            ? Effect.die(
              new Error(
                `FakeBroker connection ${id}: expected nothing within ${ms} ms but received ${showPacket(packet.value)}`
              )
            )
            : Effect.void
      ),
    encode,
    send: (packet, sendOptions) => Effect.flatMap(encodeEffect(packet, sendOptions), write),
    sendRaw: write,
    sendSplit: (packet, chunkSize = 1) =>
      Effect.flatMap(encodeEffect(packet), (bytes) =>
        Effect.gen(function*() {
          const size = Math.max(1, Math.floor(chunkSize))
          for (let offset = 0; offset < bytes.length; offset += size) {
            if (offset > 0) yield* setImmediateEffect
            yield* write(bytes.subarray(offset, offset + size))
          }
        })),
    sendMany: (packets) =>
      Effect.flatMap(
        Effect.sync(() => Buffer.concat(packets.map((p) => p instanceof Uint8Array ? p : encode(p)))),
        write
      ),
    connack: (connackOptions) =>
      Effect.suspend(() => {
        const sessionPresent = connackOptions?.sessionPresent ?? false
        const packet: IConnackPacket = protocolVersion === 5
          ? {
            cmd: "connack",
            sessionPresent,
            reasonCode: connackOptions?.reasonCode ?? connackOptions?.returnCode ?? 0,
            ...(connackOptions?.properties === undefined ? {} : { properties: connackOptions.properties })
          }
          : {
            cmd: "connack",
            sessionPresent,
            returnCode: connackOptions?.returnCode ?? connackOptions?.reasonCode ?? 0
          }
        return connection.send(packet)
      }),
    pause: Effect.sync(() => socket.pause()),
    resume: Effect.sync(() => socket.resume()),
    close: Effect.sync(() => socket.end()),
    destroy: Effect.sync(() => socket.reset()),
    closed: Deferred.await(closedDeferred),
    get isClosed() {
      return isClosed
    },
    received,
    receivedRaw,
    errors
  }
  return connection
}

// ---------------------------------------------------------------------------------------------------------------
// The broker
// ---------------------------------------------------------------------------------------------------------------

/**
 * Listens on a free port of 127.0.0.1. Closing the scope resets every connection and closes the server.
 */
export const make = (options: FakeBrokerOptions = {}): Effect.Effect<FakeBroker, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.callback<{ readonly broker: FakeBroker; readonly server: Net.Server; readonly sockets: Set<Net.Socket> }>(
      (resume) => {
        const acceptTimeoutMs = options.acceptTimeoutMs ?? 10_000
        const sockets = new Set<Net.Socket>()
        const connections: Array<FakeConnection> = []
        const pending = new Mailbox<FakeConnection>()
        const accepted = (link: Link) => {
          const connection = makeConnection(connections.length + 1, link, options)
          connections.push(connection)
          pending.offer(connection)
        }
        const track = (socket: Net.Socket) => {
          socket.setNoDelay(true)
          sockets.add(socket)
          socket.once("close", () => sockets.delete(socket))
        }
        const server: Net.Server = options.websocket === true
          ? Http.createServer().on("connection", track)
          : Net.createServer((socket) => {
            track(socket)
            accepted(tcpLink(socket))
          })
        if (options.websocket === true) {
          const wss = new WebSocketServer({
            server: server as Http.Server,
            handleProtocols: (protocols) => protocols.has("mqtt") ? "mqtt" : false
          })
          wss.on("connection", (ws) => accepted(wsLink(ws)))
        }
        server.once("error", (error) => resume(Effect.die(error)))
        server.listen(0, "127.0.0.1", () => {
          const address = server.address() as Net.AddressInfo
          const accept: Effect.Effect<FakeConnection> = Effect.flatMap(
            pending.take(acceptTimeoutMs),
            (connection) =>
              Option.isSome(connection)
                ? Effect.succeed(connection.value)
                : Effect.die(
                  new Error(
                    `FakeBroker: no client connected within ${acceptTimeoutMs} ms (${connections.length} so far)`
                  )
                )
          )
          const broker: FakeBroker = {
            port: address.port,
            url: options.websocket === true
              ? `ws://127.0.0.1:${address.port}/mqtt`
              : `mqtt://127.0.0.1:${address.port}`,
            accept,
            acceptAndConnack: (connackOptions) =>
              Effect.gen(function*() {
                const connection = yield* accept
                const connect = yield* connection.expect("connect")
                yield* connection.connack(connackOptions)
                return { connection, connect }
              }),
            connections
          }
          resume(Effect.succeed({ broker, server, sockets }))
        })
      }
    ),
    ({ server, sockets }) =>
      Effect.callback<void>((resume) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resume(Effect.void))
      })
  ).pipe(Effect.map(({ broker }) => broker))
