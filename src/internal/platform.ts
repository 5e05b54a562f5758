/**
 * What a platform gives the client: the socket to the broker. `make` (client.ts) is the same everywhere; Node's
 * entry passes transport.ts (TCP, TLS, WebSocket, Unix sockets), the browser's entry browserTransport.ts
 * (WebSocket only). Nothing here may import a Node.js module: the browser's entry reaches it.
 */
import type { NonEmptyReadonlyArray } from "effect/Array"
import * as Effect from "effect/Effect"
import * as Socket from "effect/socket/Socket"
import type * as MqttClient from "../MqttClient.ts"
import * as MqttError from "../MqttError.ts"
import type { Endpoint } from "./url.ts"

/** A platform's transports. */
export interface Platform {
  /**
   * The socket to the broker: the `transport` option's, or one for the URL's endpoint. Acquiring its reader
   * opens a connection; each acquisition opens a new one. Options the platform cannot honour (a scheme, TLS
   * settings) fail with an `InvalidOptionError` that says why.
   */
  readonly makeSocket: (
    endpoint: Endpoint,
    options: MqttClient.Options
  ) => Effect.Effect<PlatformSocket, MqttError.MqttError>
}

/**
 * A socket, and for those that can be written and read without a fiber (Node's TCP, TLS and Unix sockets),
 * `writeNow` and `readNow`: the outbox then writes each batch in the microtask that would have woken the writer
 * fiber, and the connection reads in the socket's own `readable` events.
 */
export type PlatformSocket = Socket.Socket & {
  readonly writeNow?: WriteNow | undefined
  readonly readNow?: ReadNow | undefined
}

/**
 * Prepares to read the open connection in its own events, without a fiber: once started, what each `readable`
 * event finds buffered goes to `onChunks` at once (all of it, as one batch of chunks), in order, until `onChunks`
 * returns false or `stop` is called (what is not read stays buffered: with the socket's buffer full the kernel's
 * window closes, and the broker waits). `ended` is called once, after the reading stopped, when the connection
 * ends, closes or fails: the socket's reader then tells how (its `pull` fails). Undefined when no connection is
 * open or it has ended.
 */
export type ReadNow = (
  onChunks: (chunks: NonEmptyReadonlyArray<Uint8Array>) => boolean,
  ended: () => void
) => { readonly start: () => void; readonly stop: () => void } | undefined

/**
 * Hands `batch` to the open connection of the socket at once, in order. Returns undefined when the socket takes
 * more now. When its buffer is full, returns a function that cancels the wait, and calls `drained` once, when the
 * socket takes more again (or is closed). Never throws: `failed` is told when the connection cannot be written (a
 * write that throws, a connection closed or failing, also while its buffer is full), so that the connection ends
 * even when its reader is not reading.
 */
export type WriteNow = (
  batch: ReadonlyArray<Uint8Array>,
  drained: () => void,
  failed: (cause: unknown) => void
) => (() => void) | undefined

export const invalid = (option: string, reason: string) => new MqttError.InvalidOptionError({ option, reason })

/** Whether any TLS setting was given. */
export const tlsGiven = (options: MqttClient.Options): boolean =>
  options.tls !== undefined && Object.values(options.tls).some((value) => value !== undefined)

/**
 * The `transport` option's socket, checked, or `undefined` when there is none and the URL chooses the
 * transport.
 */
export const customTransport = (
  options: MqttClient.Options
): Effect.Effect<Socket.Socket | undefined, MqttError.MqttError> =>
  Effect.gen(function*() {
    const transport = options.transport
    if (transport === undefined) return undefined
    if (tlsGiven(options)) {
      return yield* invalid("tls", "a custom transport does its own TLS: give the TLS settings to its socket")
    }
    const socket = Socket.isSocket(transport)
      ? transport
      : Effect.isEffect(transport)
      ? yield* transport
      : undefined
    if (!Socket.isSocket(socket)) return yield* invalid("transport", "expected an effect/socket/Socket")
    return socket
  })

/**
 * A write to a WebSocket that has closed fails, as a TCP socket's write to a closed connection does (a WebSocket's
 * `send` then drops it silently). While the reader waits for room with its read-ahead full, nothing reads the socket:
 * a failed write (the keepalive's PINGREQ) is then what tells that the broker has gone (see `ReadAhead` in
 * connection.ts). Only once closed (readyState 3, after the connection's own close), not while closing: the broker's
 * last packets (its DISCONNECT) are read before that.
 */
export const failsWhenClosed = (
  socket: Socket.Socket,
  webSocket: () => { readonly readyState: number } | undefined
): Socket.Socket => {
  const closed = () => webSocket()?.readyState === 3
  const writeError = () =>
    new Socket.SocketError({ reason: new Socket.SocketWriteError({ cause: new Error("the WebSocket is closed") }) })
  return Socket.make({
    reader: socket.reader,
    writer: Effect.map(socket.writer, (writer) => ({
      write: (chunk) => closed() ? Effect.fail(writeError()) : writer.write(chunk),
      writeAll: (chunks) => closed() ? Effect.fail(writeError()) : writer.writeAll(chunks)
    }))
  })
}
