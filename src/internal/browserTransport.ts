/**
 * The browser's transport: MQTT over WebSocket (binary frames, subprotocol `mqtt`) on Effect's WebSocket
 * `Socket`, with the platform's `WebSocket` constructor, or the one a `Socket.WebSocketConstructor` service in
 * the context gives. TLS (`wss://`) is the browser's own, with its certificate store. No Node.js module may be
 * imported from here: test/browser.test.ts bundles the browser's entry and fails on any.
 */
import type * as Arr from "effect/Array"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Socket from "effect/socket/Socket"
import type * as MqttClient from "../MqttClient.ts"
import * as MqttError from "../MqttError.ts"
import { customTransport, failsWhenClosed, invalid, type Platform, tlsGiven } from "./platform.ts"
import type { Endpoint, WebSocketEndpoint } from "./url.ts"

const webSocketOnly = "a browser reaches the broker over WebSocket only: use a ws:// or wss:// URL"

/**
 * Why the options cannot work in a browser, before anything else is checked: a URL whose scheme is not `ws:` or
 * `wss:` (the default URL, `mqtt://localhost:1883`, included). Names the scheme, never the URL.
 */
export const optionsProblem = (options: MqttClient.Options): MqttError.InvalidOptionError | undefined => {
  if (options.transport !== undefined) return undefined
  if (options.url === undefined) {
    return invalid("url", `${webSocketOnly} (the default, mqtt://localhost:1883, needs Node.js)`)
  }
  if (typeof options.url !== "string") return undefined
  const scheme = /^\s*([a-zA-Z][a-zA-Z0-9+.-]*):/.exec(options.url)?.[1]?.toLowerCase()
  if (scheme === undefined || scheme === "ws" || scheme === "wss") return undefined
  const node = ["mqtt", "tcp", "mqtts", "tls", "ssl", "unix"].includes(scheme)
  return invalid("url", `${webSocketOnly} (${scheme}: ${node ? "needs Node.js" : "is not an MQTT transport"})`)
}

/** The socket to the broker: the `transport` option's, or a WebSocket to the URL. */
export const makeSocket = (
  endpoint: Endpoint,
  options: MqttClient.Options
): Effect.Effect<Socket.Socket, MqttError.MqttError> =>
  Effect.gen(function*() {
    const custom = yield* customTransport(options)
    if (custom !== undefined) return custom
    if (endpoint._tag !== "WebSocket") {
      return yield* invalid("url", `${webSocketOnly} (${endpoint.scheme}: needs Node.js)`)
    }
    if (tlsGiven(options)) {
      return yield* invalid(
        "tls",
        "a browser does TLS itself (wss://, with its own certificate store): TLS settings cannot be given"
      )
    }
    const given = yield* Effect.serviceOption(Socket.WebSocketConstructor)
    const construct = Option.isSome(given) ? given.value : globalConstructor()
    if (construct === undefined) {
      return yield* invalid(
        "url",
        "this environment has no WebSocket: provide one with Socket.WebSocketConstructor (effect/socket/Socket)"
      )
    }
    // a second past the client's connect timeout, which bounds the whole attempt (see transport.ts)
    return yield* makeWebSocket(endpoint, construct, Duration.toMillis(options.connectTimeout ?? "30 seconds") + 1000)
  })

/** The browser's transport. */
export const platform: Platform = { makeSocket }

type Construct = Socket.WebSocketConstructor["Service"]

const globalConstructor = (): Construct | undefined => {
  const WebSocket = globalThis.WebSocket
  return typeof WebSocket === "function"
    ? (url, protocols) => new WebSocket(url, protocols as string | Array<string> | undefined) as Socket.WebSocketLike
    : undefined
}

const makeWebSocket = (
  endpoint: WebSocketEndpoint,
  construct: Construct,
  openTimeout: NonNullable<MqttClient.Options["connectTimeout"]>
): Effect.Effect<Socket.Socket> => {
  const host = endpoint.host.includes(":") ? `[${endpoint.host}]` : endpoint.host
  // no user info in the request: the credentials go in CONNECT
  const url = `${endpoint.scheme}://${host}:${endpoint.port}${endpoint.path}`
  let current: Socket.WebSocketLike | undefined
  const constructing: Construct = (url, protocols) => current = construct(url, protocols)
  return Socket.makeWebSocket(url, { protocols: ["mqtt"], openTimeout }).pipe(
    Effect.provideService(Socket.WebSocketConstructor, constructing),
    Effect.map((socket) => binaryOnly(failsWhenClosed(socket, () => current)))
  )
}

/**
 * Refuses text frames: MQTT over WebSocket is carried in binary frames only [MQTT-6.0.0-1]. The read fails with
 * a `ProtocolError`, and closing the connection's scope closes the WebSocket (a browser may only close with
 * 1000 or 3000-4999, so not with 1003 as on Node). A browser's error events say nothing of their cause: the
 * failure then says what it may be.
 */
const binaryOnly = (socket: Socket.Socket): Socket.Socket =>
  Socket.make({
    writer: socket.writer,
    reader: Effect.map(Effect.mapError(socket.reader, explained), (reader) => ({
      pull: Effect.flatMap(
        Effect.mapError(reader.pull, explained),
        (chunks): Effect.Effect<Arr.NonEmptyReadonlyArray<Uint8Array | string>, Socket.SocketError> => {
          for (let i = 0; i < chunks.length; i++) {
            if (typeof chunks[i] === "string") return Effect.fail(textFrame())
          }
          return Effect.succeed(chunks)
        }
      ),
      upgrade: reader.upgrade
    }))
  })

const textFrame = () =>
  new Socket.SocketError({
    reason: new Socket.SocketReadError({
      cause: new MqttError.ProtocolError({
        reason: "the broker sent a WebSocket text frame (MQTT over WebSocket uses binary frames only)"
      })
    })
  })

/** A socket error whose cause is a browser's error event, with a cause that says what it may be. */
const explained = (error: Socket.SocketError): Socket.SocketError => {
  const reason = error.reason
  if (!("cause" in reason) || reason.cause instanceof Error || MqttError.isMqttError(reason.cause)) return error
  switch (reason._tag) {
    case "SocketOpenError":
      return reason.kind === "Timeout" ? error : new Socket.SocketError({
        reason: new Socket.SocketOpenError({
          kind: "Unknown",
          cause: new Error(
            "the browser could not open the WebSocket and does not say why (no broker at this address, a server " +
              "that refuses the subprotocol mqtt, or a certificate the browser does not trust)"
          )
        })
      })
    case "SocketReadError":
      return new Socket.SocketError({
        reason: new Socket.SocketReadError({ cause: new Error("the WebSocket failed (the browser does not say why)") })
      })
    default:
      return error
  }
}
