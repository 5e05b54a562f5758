/**
 * Node's transports: how bytes reach the broker. The URL chooses one (TCP, TLS, WebSocket, Unix socket), or
 * the caller supplies an Effect `Socket` of their own; either way the client above only sees a socket whose
 * reader acquisition opens a connection. (The browser's are in browserTransport.ts.)
 *
 * Failures the transport recognises are explained with a typed error carried as the `cause` of the
 * `SocketError` (the reason's `cause`): a `TlsError` when TLS fails (while the reader is acquired, or on the
 * first read for a client certificate refused under TLS 1.3), a `ProtocolError` for a WebSocket text frame, a
 * `ConnectionLostError` hinting at a TLS port when a plaintext connection is closed before any answer. The
 * client fails with that error instead of a generic `ConnectionLostError`.
 */
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import type * as NodeWS from "@effect/platform-node/NodeWS"
import type * as Arr from "effect/Array"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import * as Socket from "effect/socket/Socket"
import { Buffer } from "node:buffer"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs/promises"
import * as Net from "node:net"
import type { Duplex } from "node:stream"
import * as Tls from "node:tls"
import type * as MqttClient from "../MqttClient.ts"
import * as MqttError from "../MqttError.ts"
import { SEPARATE_PAYLOAD } from "./codec.ts"
import {
  customTransport,
  failsWhenClosed,
  invalid,
  type Platform,
  type PlatformSocket,
  type ReadNow,
  tlsGiven,
  type WriteNow
} from "./platform.ts"
import { type Endpoint, isEncrypted, type TlsEndpoint, type WebSocketEndpoint } from "./url.ts"

// ---------------------------------------------------------------------------------------------------------
// the socket
// ---------------------------------------------------------------------------------------------------------

/** The socket to the broker. Acquiring its reader opens a connection; each acquisition opens a new one. */
export const makeSocket = (
  endpoint: Endpoint,
  options: MqttClient.Options
): Effect.Effect<PlatformSocket, MqttError.MqttError> =>
  Effect.gen(function*() {
    const custom = yield* customTransport(options)
    if (custom !== undefined) return explained(custom, "custom")
    const tls = options.tls
    const encrypted = isEncrypted(endpoint)
    if (tlsGiven(options) && !encrypted) {
      return yield* invalid(
        "tls",
        `TLS settings were given but a ${endpoint.scheme}: URL is not encrypted (use mqtts: or wss:)`
      )
    }
    switch (endpoint._tag) {
      case "Tcp":
        return yield* direct(makeNet({ host: endpoint.host, port: endpoint.port, noDelay: true }), "plaintext")
      case "Unix":
        return yield* direct(makeNet({ path: endpoint.path }), "unix")
      case "Tls":
        return yield* direct(makeTls(endpoint, yield* tlsSettings(tls)), "tls")
      case "WebSocket":
        return yield* makeWebSocket(
          endpoint,
          encrypted ? yield* tlsSettings(tls) : undefined,
          // a second past the client's connect timeout, which bounds the whole attempt (the WebSocket's opening
          // too): a broker that accepts the TCP connection and never answers is an MqttTimeoutError, as over TCP
          Duration.toMillis(options.connectTimeout ?? "30 seconds") + 1000
        )
    }
  })

/** Node.js: TCP, TLS, WebSocket (the `ws` package, with TLS settings) and Unix sockets. */
export const platform: Platform = { makeSocket }

/**
 * How a Node.js stream socket makes a connection (once per acquisition of the reader, for
 * `NodeSocket.fromDuplex`), telling `track` when it is open and when it closes.
 */
interface Opened {
  readonly open: (track: Track) => Effect.Effect<Duplex, Socket.SocketError, Scope.Scope>
}

interface Track {
  readonly opened: (conn: Duplex) => void
  readonly closed: (conn: Duplex | undefined) => void
}

/** The socket of `opened`, explained, with `writeNow` and `readNow` on its open connection. */
const direct = (opened: Opened, kind: Kind): Effect.Effect<PlatformSocket> => {
  let current: Duplex | undefined
  const track: Track = {
    opened: (conn) => current = conn,
    closed: (conn) => {
      if (current === conn) current = undefined
    }
  }
  return Effect.map(
    NodeSocket.fromDuplex(opened.open(track)),
    (socket) =>
      Object.assign(explained(socket, kind), { writeNow: writeNow(() => current), readNow: readNow(() => current) })
  )
}

const chunkBytes = (chunk: Uint8Array | string): Uint8Array => typeof chunk === "string" ? Buffer.from(chunk) : chunk

/**
 * Reads the open connection in its `readable` events, beside the Effect socket's reader (whose own listener reads
 * only while a `pull` waits, which none does meanwhile; its `end`, `close` and `error` listeners come first, so
 * that a `pull` after `ended` fails as it would have).
 */
const readNow = (current: () => Duplex | undefined): ReadNow => (onChunks, ended) => {
  const conn = current()
  if (conn === undefined || conn.destroyed || conn.readableEnded) return undefined
  let active = false
  const read = () => {
    while (active) {
      const first = conn.read() as Uint8Array | string | null
      if (first === null) return
      // all that is buffered (on Node 26+ `read()` gives the buffered chunks one by one): one batch
      const chunks: [Uint8Array, ...Array<Uint8Array>] = [chunkBytes(first)]
      let next: Uint8Array | string | null
      while ((next = conn.read() as Uint8Array | string | null) !== null) chunks.push(chunkBytes(next))
      if (!onChunks(chunks)) return stop()
    }
  }
  const stop = () => {
    if (!active) return
    active = false
    conn.off("readable", read)
    conn.off("end", finish)
    conn.off("close", finish)
    conn.off("error", finish)
  }
  const finish = () => {
    if (!active) return
    stop()
    ended()
  }
  return {
    start: () => {
      if (active) return
      active = true
      conn.on("readable", read)
      conn.on("end", finish)
      conn.on("close", finish)
      conn.on("error", finish)
      // what is buffered already; with nothing, `read()` asks for the next `readable` (or, at the end, `end`)
      read()
    },
    stop
  }
}

/**
 * A batch written at once to the open connection, as the Effect socket's `writeAll` does (small packets as one
 * `Buffer`, corked around the batch), without a fiber.
 */
const writeNow = (current: () => Duplex | undefined): WriteNow => (batch, drained, failed) => {
  const conn = current()
  if (conn === undefined || conn.destroyed || !conn.writable) {
    failed(new Error("the connection is closed"))
    return undefined
  }
  if (batch.length === 0) return undefined
  let more = true
  try {
    const chunks = coalesce(batch as Arr.NonEmptyReadonlyArray<Uint8Array>)
    if (chunks.length === 1) {
      more = conn.write(chunks[0])
    } else {
      conn.cork()
      try {
        for (let i = 0; i < chunks.length; i++) more = conn.write(chunks[i]) && more
      } finally {
        conn.uncork()
      }
    }
  } catch (cause) {
    failed(cause)
    conn.destroy()
    return undefined
  }
  return more ? undefined : awaitDrain(conn, drained, failed)
}

/** Calls `drained` on the connection's `drain` or `close` (after `failed`, for a close or an error). */
const awaitDrain = (conn: Duplex, drained: () => void, failed: (cause: unknown) => void): () => void => {
  const cancel = () => {
    conn.off("drain", onDrain)
    conn.off("close", onClose)
    conn.off("error", onError)
  }
  const onDrain = () => {
    cancel()
    drained()
  }
  const onClose = () => {
    cancel()
    failed(new Error("the connection closed while writing"))
    drained()
  }
  const onError = (cause: Error) => {
    cancel()
    failed(cause)
    drained()
  }
  conn.on("drain", onDrain)
  conn.on("close", onClose)
  conn.on("error", onError)
  return cancel
}

/** A TCP or Unix socket connection, as `NodeSocket.makeNet` makes it. */
/**
 * Closes a socket at once, what Node still holds to write thrown away: a TCP socket with a reset (RST), so that the
 * peer never reads stale packets; a Unix socket (a pipe, which has no reset: Node throws) destroyed.
 */
const reset = (socket: Net.Socket): void => {
  try {
    socket.resetAndDestroy()
  } catch {
    socket.destroy()
  }
}

const makeNet = (options: Net.NetConnectOpts): Opened => ({
  open: (track) =>
    Effect.contextWith((context: Context.Context<Scope.Scope>) => {
      let conn: Net.Socket | undefined
      let isOpen = false
      return Effect.flatMap(
        Scope.addFinalizer(
          Context.get(context, Scope.Scope),
          Effect.sync(() => {
            track.closed(conn)
            if (conn === undefined || conn.closed) return
            // bytes Node still holds after the connection's bounded wait will not be taken (a frozen broker, a
            // closed window): end() would wait for them for good, the socket keeping the process alive
            if (isOpen && conn.writableLength === 0) conn.destroySoon()
            else if (isOpen) reset(conn)
            else conn.destroy()
          })
        ),
        () =>
          Effect.callback<Duplex, Socket.SocketError>((resume) => {
            const socket = Net.createConnection(options)
            conn = socket
            socket.once("connect", () => {
              isOpen = true
              track.opened(socket)
              resume(Effect.succeed(socket))
            })
            // kept for the life of the socket: an error event without a listener would crash the process
            socket.on("error", (cause) => resume(Effect.fail(openError(cause))))
          })
      )
    })
})

// ---------------------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------------------

interface TlsSettings {
  readonly secureContext: Tls.SecureContext
  readonly servername: string | undefined
  readonly ALPNProtocols: Array<string> | undefined
  readonly rejectUnauthorized: boolean
}

const readPem = (option: string, path: unknown) =>
  Effect.gen(function*() {
    if (typeof path !== "string" || path === "") return yield* invalid(option, "expected a file path")
    const bytes = yield* Effect.tryPromise({
      try: () => Fs.readFile(path),
      catch: (error) => invalid(option, `cannot read "${path}"${hasCode(error) ? ` (${error.code})` : ""}`)
    })
    if (bytes.toString("latin1").trim() === "") return yield* invalid(option, `"${path}" is empty`)
    return bytes
  })

const hasCode = (u: unknown): u is { readonly code: string } =>
  typeof u === "object" && u !== null && "code" in u && typeof u.code === "string"

const pemText = (value: string | Buffer): string => typeof value === "string" ? value : value.toString("latin1")

const toBuffer = (value: string | Uint8Array): string | Buffer =>
  typeof value === "string" ? value : Buffer.from(value.buffer, value.byteOffset, value.byteLength)

const isPem = (value: unknown): value is string | Uint8Array => typeof value === "string" || value instanceof Uint8Array

const certificateBlock = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g

/** Checks that PEM text holds certificates that parse: Node would silently ignore anything else. */
const checkCertificates = (option: string, values: ReadonlyArray<string | Buffer>) =>
  Effect.suspend(() => {
    let count = 0
    for (const value of values) {
      for (const block of pemText(value).match(certificateBlock) ?? []) {
        try {
          new Crypto.X509Certificate(block)
        } catch {
          return Effect.fail(invalid(option, "holds a certificate that does not parse"))
        }
        count++
      }
    }
    return count === 0 ? Effect.fail(invalid(option, "holds no PEM certificate")) : Effect.void
  })

const tlsSettings = Effect.fnUntraced(function*(options: MqttClient.TlsOptions | undefined) {
  if (options !== undefined && (typeof options !== "object" || options === null)) {
    return yield* invalid("tls", "expected an object")
  }
  const t = options ?? {}
  if (t.ca !== undefined && !isPem(t.ca) && !(Array.isArray(t.ca) && t.ca.every(isPem))) {
    return yield* invalid("tls.ca", "expected PEM text or bytes, or a list of them")
  }
  if (t.cert !== undefined && !isPem(t.cert)) return yield* invalid("tls.cert", "expected PEM text or bytes")
  for (const file of ["caFile", "certFile", "keyFile"] as const) {
    if (t[file] !== undefined && (typeof t[file] !== "string" || t[file] === "")) {
      return yield* invalid(`tls.${file}`, "expected a file path")
    }
  }
  if (t.insecureSkipVerify !== undefined && typeof t.insecureSkipVerify !== "boolean") {
    return yield* invalid("tls.insecureSkipVerify", "expected a boolean")
  }
  for (const [content, file] of [["ca", "caFile"], ["cert", "certFile"], ["key", "keyFile"]] as const) {
    if (t[content] !== undefined && t[file] !== undefined) {
      return yield* invalid(`tls.${file}`, `give tls.${content} or tls.${file}, not both`)
    }
  }
  const caOption = t.caFile !== undefined ? "tls.caFile" : "tls.ca"
  const ca = t.caFile !== undefined
    ? [yield* readPem("tls.caFile", t.caFile)]
    : t.ca === undefined
    ? undefined
    : typeof t.ca === "string" || t.ca instanceof Uint8Array
    ? [toBuffer(t.ca)]
    : t.ca.map(toBuffer)
  if (ca !== undefined) yield* checkCertificates(caOption, ca)
  const cert = t.certFile !== undefined
    ? yield* readPem("tls.certFile", t.certFile)
    : t.cert === undefined
    ? undefined
    : toBuffer(t.cert)
  if (cert !== undefined) yield* checkCertificates(t.certFile !== undefined ? "tls.certFile" : "tls.cert", [cert])
  const key = t.keyFile !== undefined
    ? yield* readPem("tls.keyFile", t.keyFile)
    : t.key === undefined
    ? undefined
    : Redacted.isRedacted(t.key) && isPem(Redacted.value(t.key))
    ? toBuffer(Redacted.value(t.key))
    : yield* invalid("tls.key", "expected a Redacted private key (Redacted.make(pem))")
  if (cert !== undefined && key === undefined) {
    return yield* invalid("tls.key", "a client certificate needs its private key (tls.key or tls.keyFile)")
  }
  if (key !== undefined && cert === undefined) {
    return yield* invalid("tls.cert", "a private key needs its client certificate (tls.cert or tls.certFile)")
  }
  if (
    t.passphrase !== undefined &&
    !(Redacted.isRedacted(t.passphrase) && typeof Redacted.value(t.passphrase) === "string")
  ) {
    return yield* invalid("tls.passphrase", "expected a Redacted passphrase (Redacted.make(passphrase))")
  }
  const minVersion = t.minVersion ?? "TLSv1.2"
  if (minVersion !== "TLSv1.2" && minVersion !== "TLSv1.3") {
    return yield* invalid("tls.minVersion", `expected "TLSv1.2" or "TLSv1.3"`)
  }
  if (t.servername !== undefined && (typeof t.servername !== "string" || t.servername === "")) {
    return yield* invalid("tls.servername", "expected a host name")
  }
  if (t.servername !== undefined && Net.isIP(t.servername) !== 0) {
    return yield* invalid("tls.servername", "SNI carries a host name, not an IP address")
  }
  if (
    t.alpnProtocols !== undefined &&
    !(Array.isArray(t.alpnProtocols) && t.alpnProtocols.every((p) => typeof p === "string" && p !== ""))
  ) {
    return yield* invalid("tls.alpnProtocols", "expected non-empty strings")
  }
  let secureContext: Tls.SecureContext
  try {
    secureContext = Tls.createSecureContext({
      ...(ca === undefined ? {} : { ca }),
      ...(cert === undefined ? {} : { cert }),
      ...(key === undefined ? {} : { key }),
      ...(t.passphrase === undefined ? {} : { passphrase: Redacted.value(t.passphrase) }),
      minVersion
    })
  } catch (error) {
    return yield* invalid("tls", `the certificate or key could not be loaded: ${tlsReason(error)}`)
  }
  const insecure = t.insecureSkipVerify === true
  if (insecure) {
    yield* Effect.logWarning(
      "effect-mqtt: tls.insecureSkipVerify is set: the broker's certificate and host name are NOT verified"
    )
  }
  return {
    secureContext,
    servername: t.servername,
    ALPNProtocols: t.alpnProtocols === undefined ? undefined : [...t.alpnProtocols],
    rejectUnauthorized: !insecure
  } satisfies TlsSettings
})

/** OpenSSL's short reason (`"bad decrypt"`) rather than its long message with file names and line numbers. */
const tlsReason = (error: unknown): string => {
  if (typeof error === "object" && error !== null) {
    const reason = (error as { reason?: unknown }).reason
    // Node's reasons may end in a dangling ": " (an empty list of names): not worth showing
    if (typeof reason === "string" && reason.trim() !== "") return reason.trim().replace(/:$/, "")
    const message = (error as { message?: unknown }).message
    if (typeof message === "string") return message.trim()
  }
  return String(error)
}

/**
 * A TLS connection: TCP first (with Nagle off), then the handshake over it, so a failure after the TCP
 * connection was made is known to be a TLS failure.
 */
const makeTls = (endpoint: TlsEndpoint, settings: TlsSettings): Opened => ({
  open: (track) =>
    Effect.contextWith((context: Context.Context<Scope.Scope>) => {
      let raw: Net.Socket | undefined
      let secure: Tls.TLSSocket | undefined
      let isOpen = false
      return Effect.flatMap(
        Scope.addFinalizer(
          Context.get(context, Scope.Scope),
          Effect.sync(() => {
            track.closed(secure)
            if (secure !== undefined && isOpen && !secure.destroyed && secure.writableLength === 0) {
              secure.destroySoon()
            } else if (secure !== undefined && isOpen && !secure.destroyed) {
              secure.destroy()
              if (raw !== undefined) reset(raw)
            } else {
              secure?.destroy()
              raw?.destroy()
            }
          })
        ),
        () =>
          Effect.callback<Duplex, Socket.SocketError>((resume) => {
            const tcp = Net.connect({ host: endpoint.host, port: endpoint.port, noDelay: true })
            raw = tcp
            // kept for the life of the socket: an error event without a listener would crash the process
            tcp.on(
              "error",
              (cause) =>
                resume(Effect.fail(openError(secure === undefined ? cause : tlsError(cause, "handshake") ?? cause)))
            )
            tcp.once("connect", () => {
              const tls = Tls.connect({
                socket: tcp,
                host: endpoint.host,
                // SNI is a host name: none for an IP address (the certificate is then checked against the IP)
                servername: settings.servername ?? (Net.isIP(endpoint.host) === 0 ? endpoint.host : undefined),
                secureContext: settings.secureContext,
                rejectUnauthorized: settings.rejectUnauthorized,
                ...(settings.ALPNProtocols === undefined ? {} : { ALPNProtocols: settings.ALPNProtocols })
              } as Tls.ConnectionOptions)
              secure = tls
              tls.once("secureConnect", () => {
                isOpen = true
                track.opened(tls)
                resume(Effect.succeed(tls))
              })
              tls.on("error", (cause) => resume(Effect.fail(openError(tlsError(cause, "handshake") ?? cause))))
            })
          })
      )
    })
})

const openError = (cause: unknown) =>
  new Socket.SocketError({ reason: new Socket.SocketOpenError({ kind: "Unknown", cause }) })

const readError = (cause: unknown) => new Socket.SocketError({ reason: new Socket.SocketReadError({ cause }) })

// ---------------------------------------------------------------------------------------------------------
// recognising TLS failures
// ---------------------------------------------------------------------------------------------------------

/** OpenSSL's certificate verification results, as Node.js names them. */
const verificationCodes = new Set([
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_CRL",
  "UNABLE_TO_DECRYPT_CERT_SIGNATURE",
  "UNABLE_TO_DECRYPT_CRL_SIGNATURE",
  "UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY",
  "CERT_SIGNATURE_FAILURE",
  "CRL_SIGNATURE_FAILURE",
  "CERT_NOT_YET_VALID",
  "CERT_HAS_EXPIRED",
  "CRL_NOT_YET_VALID",
  "CRL_HAS_EXPIRED",
  "ERROR_IN_CERT_NOT_BEFORE_FIELD",
  "ERROR_IN_CERT_NOT_AFTER_FIELD",
  "ERROR_IN_CRL_LAST_UPDATE_FIELD",
  "ERROR_IN_CRL_NEXT_UPDATE_FIELD",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "CERT_CHAIN_TOO_LONG",
  "CERT_REVOKED",
  "INVALID_CA",
  "PATH_LENGTH_EXCEEDED",
  "INVALID_PURPOSE",
  "CERT_UNTRUSTED",
  "CERT_REJECTED"
])

/** The alerts a broker sends when it does not accept the client certificate it was given. */
const clientCertificateAlerts = new Set([
  "ERR_SSL_TLSV1_ALERT_UNKNOWN_CA",
  "ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE",
  "ERR_SSL_SSLV3_ALERT_CERTIFICATE_UNKNOWN",
  "ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED",
  "ERR_SSL_SSLV3_ALERT_CERTIFICATE_REVOKED",
  "ERR_SSL_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE"
])

/** The handshake_failure alert, as OpenSSL versions name it. */
const handshakeFailureAlerts = new Set([
  "ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE",
  "ERR_SSL_SSL/TLS_ALERT_HANDSHAKE_FAILURE"
])

/** The Node.js error behind a socket failure: the cause itself, or the `error` of a WebSocket error event. */
const nodeError = (cause: unknown): Error | undefined => {
  if (cause instanceof Error) return cause
  if (typeof cause === "object" && cause !== null && "error" in cause && cause.error instanceof Error) {
    return cause.error
  }
  return undefined
}

/**
 * The `TlsError` a Node.js error stands for, or `undefined`. In the `"handshake"` phase (the TCP connection
 * is up and the handshake runs) every failure is a TLS failure; in `"open"` (a connection whose phases are not
 * known) only TLS error codes are; in `"read"` only the alerts a broker sends about the client certificate,
 * which TLS 1.3 delivers after the handshake has completed on the client's side.
 */
const tlsError = (cause: unknown, phase: "handshake" | "open" | "read"): MqttError.TlsError | undefined => {
  const error = nodeError(cause)
  if (error === undefined) return undefined
  const code = hasCode(error) ? error.code : undefined
  const make = (kind: MqttError.TlsError["kind"], reason = tlsReason(error)) =>
    new MqttError.TlsError(code === undefined ? { kind, reason } : { kind, reason, code })
  if (code === "ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED") return make("ClientCertificateRequired")
  if (code !== undefined && clientCertificateAlerts.has(code)) return make("ClientCertificateRejected")
  // TLS 1.2 has no alert of its own for a missing client certificate: a broker that requires one sends this
  if (code !== undefined && handshakeFailureAlerts.has(code)) {
    return make(
      "HandshakeFailed",
      `${tlsReason(error)}: the broker ended the handshake (no TLS version or cipher in common; or, on TLS 1.2, ` +
        "it requires a client certificate: tls.certFile and tls.keyFile)"
    )
  }
  if (phase === "read") return undefined
  if (code === "ERR_TLS_CERT_ALTNAME_INVALID") return make("HostnameMismatch")
  if (code !== undefined && verificationCodes.has(code)) return make("ServerCertificateUntrusted")
  if (code !== undefined && code.startsWith("ERR_SSL_")) return make("HandshakeFailed")
  // an OpenSSL failure that a write met (the `ws` package's TLS socket reports it so): EPROTO with OpenSSL's text
  const openssl = code === "EPROTO" ? opensslReason(error.message) : undefined
  if (openssl !== undefined) return make("HandshakeFailed", openssl)
  if (phase === "handshake") {
    return make(
      "HandshakeFailed",
      `the connection closed during the TLS handshake (${tlsReason(error)}); is the port a TLS listener?`
    )
  }
  return undefined
}

/**
 * The reason in an OpenSSL error text (`...:SSL routines:<function>:<reason>:<file>:<line>:...`), with what to check
 * for the common ones; undefined when the text is not OpenSSL's.
 */
const opensslReason = (message: string): string | undefined => {
  const parts = message.split(":")
  const at = parts.indexOf("SSL routines")
  if (at < 0 || at + 2 >= parts.length) return undefined
  const reason = parts[at + 2].trim()
  if (reason.includes("wrong version number")) return `${reason}: is the port a TLS listener?`
  if (reason.includes("no application protocol")) {
    return `${reason}: the server takes none of the protocols of tls.alpnProtocols`
  }
  return reason
}

// ---------------------------------------------------------------------------------------------------------
// explaining failures
// ---------------------------------------------------------------------------------------------------------

type Kind = "plaintext" | "unix" | "tls" | "websocket" | "custom"

/**
 * A batch as a Node.js socket takes it cheapest: each run of small packets as one `Buffer`. Handed one by one,
 * each `Uint8Array` (the codec's packets are not `Buffer`s) is wrapped in a `Buffer` by the stream and written as
 * an iovec of its own; a chunk of `SEPARATE_PAYLOAD` bytes or more (the codec leaves such payloads uncopied) stays
 * uncopied.
 */
const coalesce = (
  chunks: Arr.NonEmptyReadonlyArray<Uint8Array | string>
): Arr.NonEmptyReadonlyArray<Uint8Array | string> => {
  if (chunks.length === 1) return chunks
  const out: Array<Uint8Array | string> = []
  let run: Array<Uint8Array> = []
  let runBytes = 0
  const flush = () => {
    if (run.length === 1) out.push(run[0])
    else if (run.length > 1) out.push(Buffer.concat(run, runBytes))
    run = []
    runBytes = 0
  }
  for (let i = 0; i < chunks.length; i++) {
    const chunk = chunks[i]
    if (typeof chunk === "string" || chunk.byteLength >= SEPARATE_PAYLOAD) {
      flush()
      out.push(chunk)
    } else {
      run.push(chunk)
      runBytes += chunk.byteLength
    }
  }
  flush()
  return out as unknown as Arr.NonEmptyReadonlyArray<Uint8Array | string>
}

const causeOf = (error: Socket.SocketError): unknown => "cause" in error.reason ? error.reason.cause : undefined

/**
 * Wraps a socket so that its failures say what happened, as an `MqttError` in the `SocketError`'s cause: TLS
 * failures become `TlsError`s, and a plaintext connection that the broker closes before sending anything
 * hints at a TLS port. `inspect` may refuse what was read.
 */
const explained = (
  socket: Socket.Socket,
  kind: Kind,
  inspect?: (chunks: Arr.NonEmptyReadonlyArray<Uint8Array | string>) => MqttError.MqttError | undefined
): Socket.Socket =>
  Socket.make({
    writer: kind === "custom" || kind === "websocket"
      ? socket.writer
      : Effect.map(socket.writer, (writer) => ({
        ...writer,
        writeAll: (chunks: Arr.NonEmptyReadonlyArray<Uint8Array | string>) => writer.writeAll(coalesce(chunks))
      })),
    reader: Effect.gen(function*() {
      const reader = yield* Effect.mapError(socket.reader, (error) => {
        const cause = causeOf(error)
        if (MqttError.isMqttError(cause)) return error
        const tls = kind === "plaintext" || kind === "unix" ? undefined : tlsError(cause, "open")
        if (tls !== undefined) return openError(tls)
        // a WebSocket error event is not an Error: pass on the Error inside it, so that messages read well
        const inner = nodeError(cause)
        const refused = kind === "websocket" && inner !== undefined ? webSocketRefusal(inner) : undefined
        if (refused !== undefined) return openError(refused)
        return inner !== undefined && inner !== cause ? openError(inner) : error
      })
      let received = false
      const onError = (error: Socket.SocketError): Socket.SocketError => {
        const cause = causeOf(error)
        if (MqttError.isMqttError(cause)) return error
        if (kind !== "plaintext" && kind !== "unix") {
          const tls = tlsError(cause, "read")
          if (tls !== undefined) return readError(tls)
        }
        if (kind === "plaintext" && !received) {
          return readError(
            new MqttError.ConnectionLostError({
              reason:
                "the broker closed the connection without answering CONNECT (if the port expects TLS, use mqtts://)"
            })
          )
        }
        const inner = nodeError(cause)
        return inner !== undefined && inner !== cause ? readError(inner) : error
      }
      const pull = Effect.flatMap(
        Effect.mapError(reader.pull, onError),
        (chunks): Effect.Effect<Arr.NonEmptyReadonlyArray<Uint8Array | string>, Socket.SocketError> => {
          received = true
          const problem = inspect?.(chunks)
          return problem === undefined ? Effect.succeed(chunks) : Effect.fail(readError(problem))
        }
      )
      return { pull, upgrade: reader.upgrade }
    })
  })

// ---------------------------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------------------------

/**
 * An HTTP server's refusal of the WebSocket upgrade (as the `ws` package reports it), with what to check; undefined
 * for other failures.
 */
const webSocketRefusal = (error: Error): Error | undefined => {
  const status = /^Unexpected server response: (\d+)/.exec(error.message)?.[1]
  if (status !== undefined) {
    const hint = status === "401" || status === "403"
      ? "the server, or a proxy before it, wants HTTP authentication or forbids the path (MQTT's username and " +
        "password go in CONNECT, not in the upgrade)"
      : status === "404"
      ? "no WebSocket endpoint at this path: check the URL's path (often /mqtt)"
      : status.startsWith("2")
      ? "an HTTP server answered without upgrading: is this port the broker's WebSocket listener?"
      : "the server did not upgrade the connection to a WebSocket: is this port the broker's WebSocket listener?"
    return new Error(`the WebSocket upgrade was refused with HTTP ${status}: ${hint}`, { cause: error })
  }
  if (error.message === "Server sent no subprotocol" || error.message === "Server sent an invalid subprotocol") {
    return new Error(
      `the server took the WebSocket without the subprotocol mqtt (${error.message}): it is not an MQTT over ` +
        "WebSocket endpoint, or a proxy before it drops the Sec-WebSocket-Protocol header",
      { cause: error }
    )
  }
  return undefined
}

const loadWs = Effect.promise(() => import("@effect/platform-node/NodeWS"))

const makeWebSocket = (
  endpoint: WebSocketEndpoint,
  settings: TlsSettings | undefined,
  openTimeout: Duration.Input
): Effect.Effect<Socket.Socket> =>
  Effect.gen(function*() {
    const { WebSocket } = yield* loadWs
    const host = endpoint.host.includes(":") ? `[${endpoint.host}]` : endpoint.host
    // no user info in the request: the credentials go in CONNECT, never in an Authorization header
    const url = `${endpoint.scheme}://${host}:${endpoint.port}${endpoint.path}`
    const options: NodeWS.ClientOptions = {
      perMessageDeflate: false,
      ...(settings === undefined ? {} : {
        secureContext: settings.secureContext,
        rejectUnauthorized: settings.rejectUnauthorized,
        ...(settings.servername === undefined ? {} : { servername: settings.servername }),
        ...(settings.ALPNProtocols === undefined ? {} : { ALPNProtocols: settings.ALPNProtocols })
      })
    }
    let current: NodeWS.WebSocket | undefined
    const socket = yield* Socket.fromWebSocket(
      Effect.acquireRelease(
        Effect.try({
          try: () => {
            current = new WebSocket(url, ["mqtt"], options)
            return current
          },
          catch: openError
        }),
        (ws) => Effect.sync(() => ws.close(1000))
      ),
      // the client's connect timeout bounds the whole connection attempt; this only replaces the default 10 s
      { openTimeout }
    )
    return explained(asBuffers(failsWhenClosed(socket, () => current)), "websocket", (chunks) => {
      for (let i = 0; i < chunks.length; i++) {
        if (typeof chunks[i] === "string") {
          // MQTT-6.0.0-1: data in anything but a binary frame closes the connection (1003: unsupported data)
          current?.close(1003, "MQTT needs binary frames")
          return new MqttError.ProtocolError({
            reason: "the broker sent a WebSocket text frame (MQTT over WebSocket uses binary frames only)"
          })
        }
      }
      return undefined
    })
  })

/**
 * Frames as Node `Buffer`s (views, not copies): Effect's WebSocket reads give plain `Uint8Array`s, and on Node the
 * client hands on payloads as `Buffer`s, as over TCP, and reads their text through `Buffer`'s own fast paths.
 */
const asBuffers = (socket: Socket.Socket): Socket.Socket =>
  Socket.make({
    writer: socket.writer,
    reader: Effect.map(socket.reader, (reader) => ({
      pull: Effect.map(reader.pull, (chunks) => {
        for (let i = 0; i < chunks.length; i++) {
          const chunk = chunks[i]
          if (typeof chunk !== "string" && !Buffer.isBuffer(chunk)) {
            return chunks.map((c) =>
              typeof c === "string" || Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.byteLength)
            ) as unknown as Arr.NonEmptyReadonlyArray<Uint8Array | string>
          }
        }
        return chunks
      }),
      upgrade: reader.upgrade
    }))
  })
