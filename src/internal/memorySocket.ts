/**
 * An in-memory `Socket` whose other end is code in the same process (the test broker).
 *
 * It behaves as `NodeSocket.makeNet` does: each acquisition of `reader` opens a new connection, owned by the
 * acquisition's scope; `pull` hands over everything that arrived since the last pull and fails with a
 * `SocketError` when the connection ends (a clean close after the bytes already sent, a reset at once,
 * dropping them); the writer outlives connections and waits while there is none. Writes reach the other end
 * synchronously, in the writing fiber: nothing is scheduled on a timer, so a `TestClock` sees every effect of a
 * write settle before it moves on.
 *
 * @internal
 */
import type * as Arr from "effect/Array"
import * as Effect from "effect/Effect"
import * as Latch from "effect/Latch"
import * as Scope from "effect/Scope"
import * as Socket from "effect/socket/Socket"

/** The other end of a connection, as seen from the socket: what the client's writes are handed to. */
export interface Peer {
  /** Bytes the client wrote, in order. */
  readonly receive: (bytes: Uint8Array) => void
  /** The client closed the connection (or it was reset from the client's side). Called once. */
  readonly closed: () => void
}

/** The client's end of a connection, as seen from the other end: how to send it bytes and close it. */
export interface Wire {
  /** Bytes for the client; ignored once the connection is closed. */
  readonly deliver: (bytes: Uint8Array) => void
  /** A clean close (TCP FIN): what was delivered is still read, then the reader fails with close code 1000. */
  readonly end: () => void
  /** A reset (a lost network): what was not read yet is lost and the reader fails with a read error. */
  readonly reset: () => void
  readonly isOpen: () => boolean
}

type Resume = (effect: Effect.Effect<Arr.NonEmptyReadonlyArray<Uint8Array>, Socket.SocketError>) => void

const closeError = (code: number) => new Socket.SocketError({ reason: new Socket.SocketCloseError({ code }) })
const resetError = () =>
  new Socket.SocketError({
    reason: new Socket.SocketReadError({ cause: Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET" }) })
  })
const writeClosedError = () =>
  new Socket.SocketError({ reason: new Socket.SocketWriteError({ cause: new Error("the connection is closed") }) })

/** One connection: the bytes waiting for the client's reader, and how it ended. */
class Connection implements Wire {
  private chunks: Array<Uint8Array> = []
  private error: Socket.SocketError | undefined = undefined
  private waiter: Resume | undefined = undefined
  private open = true
  peer: Peer | undefined = undefined

  deliver(bytes: Uint8Array): void {
    if (!this.open) return
    this.chunks.push(bytes)
    this.drain()
  }

  end(): void {
    if (!this.open) return
    this.open = false
    this.error = closeError(1000)
    this.drain()
  }

  reset(): void {
    if (!this.open) return
    this.open = false
    this.chunks = []
    this.error = resetError()
    this.drain()
  }

  isOpen(): boolean {
    return this.open
  }

  /** The client's side closes: the peer learns it, and a pending pull fails. */
  closeFromClient(): void {
    const wasOpen = this.open
    this.open = false
    this.chunks = []
    this.error ??= closeError(1006)
    if (wasOpen) this.peer?.closed()
    this.drain()
  }

  /** Hands the client's bytes to the peer; `false` when the connection is closed. */
  send(bytes: Uint8Array): boolean {
    if (!this.open) return false
    this.peer?.receive(bytes)
    return true
  }

  readonly pull: Effect.Effect<Arr.NonEmptyReadonlyArray<Uint8Array>, Socket.SocketError> = Effect.callback(
    (resume) => {
      this.waiter = resume
      this.drain()
      if (this.waiter !== resume) return
      return Effect.sync(() => {
        if (this.waiter === resume) this.waiter = undefined
      })
    }
  )

  private drain(): void {
    const resume = this.waiter
    if (resume === undefined) return
    if (this.chunks.length > 0) {
      const chunks = this.chunks as unknown as Arr.NonEmptyReadonlyArray<Uint8Array>
      this.chunks = []
      this.waiter = undefined
      resume(Effect.succeed(chunks))
    } else if (this.error !== undefined) {
      this.waiter = undefined
      resume(Effect.fail(this.error))
    }
  }
}

const encoder = new TextEncoder()

/**
 * A socket whose every connection is opened by `accept`: it is given the new connection's `Wire` and returns
 * the `Peer` that receives the client's bytes, or a `SocketError` to refuse the connection.
 */
export const make = (accept: (wire: Wire) => Peer | Socket.SocketError): Socket.Socket => {
  let current: Connection | undefined
  const connected = Latch.makeUnsafe(false)

  const reader: Socket.Socket["reader"] = Effect.gen(function*() {
    const scope = yield* Effect.scope
    const connection = new Connection()
    const peer = accept(connection)
    if (Socket.isSocketError(peer)) return yield* Effect.fail(peer)
    connection.peer = peer
    yield* Scope.addFinalizer(
      scope,
      Effect.sync(() => {
        connection.closeFromClient()
        if (current === connection) {
          current = undefined
          connected.closeUnsafe()
        }
      })
    )
    current = connection
    connected.openUnsafe()
    return { pull: connection.pull, upgrade: Socket.SocketUpgradeError.unsupported }
  })

  const write = (chunk: Uint8Array | string | Socket.CloseEvent): Effect.Effect<void, Socket.SocketError> =>
    Effect.suspend(() => {
      const connection = current
      if (connection === undefined) return connected.whenOpen(write(chunk))
      if (Socket.isCloseEvent(chunk)) {
        connection.closeFromClient()
        return Effect.void
      }
      return connection.send(typeof chunk === "string" ? encoder.encode(chunk) : chunk)
        ? Effect.void
        : Effect.fail(writeClosedError())
    })

  const writeAll = (chunks: Arr.NonEmptyReadonlyArray<Uint8Array | string>): Effect.Effect<void, Socket.SocketError> =>
    Effect.suspend(() => {
      const connection = current
      if (connection === undefined) return connected.whenOpen(writeAll(chunks))
      for (const chunk of chunks) {
        // the peer may close the connection while it handles a chunk: the rest is not written
        if (!connection.send(typeof chunk === "string" ? encoder.encode(chunk) : chunk)) {
          return Effect.fail(writeClosedError())
        }
      }
      return Effect.void
    })

  const writer: Socket.Socket["writer"] = Effect.acquireRelease(
    Effect.succeed({ write, writeAll }),
    // releasing the writer half-closes the current connection, as `end()` on a TCP socket: the peer sees it close
    () => Effect.sync(() => current?.closeFromClient())
  )

  return Socket.make({ reader, writer })
}
