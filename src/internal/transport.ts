import * as NodeSocket from "@effect/platform-node/NodeSocket"
import * as Effect from "effect/Effect"
import type * as Socket from "effect/socket/Socket"
import type * as MqttClient from "../MqttClient.ts"
import * as MqttError from "../MqttError.ts"

/**
 * Where and how to reach the broker, from the `url` option. The transport decides how bytes travel; the
 * client above it only sees an Effect `Socket`.
 */
export interface Endpoint {
  readonly scheme: "mqtt" | "tcp"
  readonly host: string
  readonly port: number
  /** user info from the URL, decoded; the client uses it when `username`/`password` are not given */
  readonly username: string | undefined
  readonly password: string | undefined
}

const invalid = (reason: string) => new MqttError.InvalidOptionError({ option: "url", reason })

const defaultPorts = { mqtt: 1883, tcp: 1883 } as const

/** Parses the broker URL. A malformed or unsupported URL is an `InvalidOptionError` naming the problem. */
export const parseUrl = (url: string): Effect.Effect<Endpoint, MqttError.InvalidOptionError> =>
  Effect.suspend(() => {
    let parsed: URL
    try {
      parsed = new URL(url)
    } catch {
      // the URL may carry a password: do not echo it
      return Effect.fail(invalid("not a valid URL"))
    }
    const scheme = parsed.protocol.slice(0, -1)
    if (scheme !== "mqtt" && scheme !== "tcp") {
      return Effect.fail(invalid(`unsupported scheme "${scheme}:" (expected mqtt: or tcp:)`))
    }
    if (parsed.hostname === "") return Effect.fail(invalid("the URL has no host"))
    if (parsed.pathname !== "" && parsed.pathname !== "/") {
      return Effect.fail(invalid(`unexpected path "${parsed.pathname}"`))
    }
    const host = parsed.hostname.startsWith("[") ? parsed.hostname.slice(1, -1) : parsed.hostname
    const port = parsed.port === "" ? defaultPorts[scheme] : Number(parsed.port)
    return Effect.succeed({
      scheme,
      host,
      port,
      username: parsed.username === "" ? undefined : decodeURIComponent(parsed.username),
      password: parsed.password === "" ? undefined : decodeURIComponent(parsed.password)
    })
  })

/** The socket to the broker. Acquiring its reader opens a connection; each acquisition opens a new one. */
export const makeSocket = (
  endpoint: Endpoint,
  _options: MqttClient.Options
): Effect.Effect<Socket.Socket, MqttError.InvalidOptionError> =>
  NodeSocket.makeNet({ host: endpoint.host, port: endpoint.port, noDelay: true })
