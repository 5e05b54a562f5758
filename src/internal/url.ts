/**
 * The broker URL: which transport, where, and the user info it carries. Parsing is the same on every
 * platform; each platform's transport (transport.ts for Node, browserTransport.ts) says which schemes it serves.
 */
import * as Effect from "effect/Effect"
import * as MqttError from "../MqttError.ts"

interface Credentials {
  /** user info from the URL, decoded; the client uses it when `username`/`password` are not given */
  readonly username: string | undefined
  readonly password: string | undefined
}

/** `mqtt://` or `tcp://`: plain TCP. */
export interface TcpEndpoint extends Credentials {
  readonly _tag: "Tcp"
  readonly scheme: "mqtt" | "tcp"
  readonly host: string
  readonly port: number
}

/** `mqtts://`, `tls://` or `ssl://`: TLS over TCP. */
export interface TlsEndpoint extends Credentials {
  readonly _tag: "Tls"
  readonly scheme: "mqtts" | "tls" | "ssl"
  readonly host: string
  readonly port: number
}

/** `ws://` or `wss://`: MQTT in binary WebSocket frames, subprotocol `mqtt`. */
export interface WebSocketEndpoint extends Credentials {
  readonly _tag: "WebSocket"
  readonly scheme: "ws" | "wss"
  readonly host: string
  readonly port: number
  /** the path and query string of the HTTP request */
  readonly path: string
}

/** `unix:///path/to/socket`: a Unix domain socket. */
export interface UnixEndpoint extends Credentials {
  readonly _tag: "Unix"
  readonly scheme: "unix"
  readonly path: string
}

/**
 * Where and how to reach the broker, from the `url` option. The transport decides how bytes travel; the
 * client above it only sees an Effect `Socket`.
 */
export type Endpoint = TcpEndpoint | TlsEndpoint | WebSocketEndpoint | UnixEndpoint

const invalid = (option: string, reason: string) => new MqttError.InvalidOptionError({ option, reason })
const invalidUrl = (reason: string) => invalid("url", reason)

const defaultPorts = { mqtt: 1883, tcp: 1883, mqtts: 8883, tls: 8883, ssl: 8883, ws: 80, wss: 443 } as const

type Scheme = keyof typeof defaultPorts | "unix"

/** The path a WebSocket URL without one uses: where EMQX, HiveMQ, VerneMQ and AWS IoT serve MQTT. */
export const defaultWebSocketPath = "/mqtt"

const isScheme = (s: string): s is Scheme => s === "unix" || Object.hasOwn(defaultPorts, s)

const decode = (s: string): string | undefined => {
  if (s === "") return undefined
  try {
    return decodeURIComponent(s)
  } catch {
    return undefined
  }
}

/**
 * A host, or `host:port`, given without a scheme (`localhost:1883`, which `URL` reads as the scheme `localhost:`):
 * the host and port, trimmed, to suggest a URL with; `undefined` for anything else. It holds no user info, path or
 * query, so it may be repeated.
 */
const withoutScheme = (url: string): string | undefined => {
  const trimmed = url.trim()
  return /^([a-z0-9-]+(\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])(:\d{1,5})?$/i.test(trimmed) ? trimmed : undefined
}

/**
 * Parses the broker URL. A malformed or unsupported URL is an `InvalidOptionError` naming the problem; it
 * never repeats the URL or a part of it that could hold a secret (user info, path, query).
 */
export const parseUrl = (url: string): Effect.Effect<Endpoint, MqttError.InvalidOptionError> =>
  Effect.suspend((): Effect.Effect<Endpoint, MqttError.InvalidOptionError> => {
    if (typeof url !== "string") return Effect.fail(invalidUrl("expected a string"))
    const bare = withoutScheme(url)
    if (bare !== undefined) {
      return Effect.fail(invalidUrl(`no scheme: write mqtt://${bare} (or mqtts://${bare} for TLS)`))
    }
    if (SEVERAL.test(url)) {
      return Effect.fail(
        invalidUrl("several URLs in one: give a list (url: [...]; in MQTT_URL, URLs separated by commas)")
      )
    }
    let parsed: URL
    try {
      parsed = new URL(url)
    } catch {
      return Effect.fail(invalidUrl("not a valid URL (expected for example mqtt://host:1883)"))
    }
    const scheme = parsed.protocol.slice(0, -1)
    if (!isScheme(scheme)) {
      return Effect.fail(
        invalidUrl(
          `unsupported scheme "${scheme}:" (expected mqtt:, tcp:, mqtts:, tls:, ssl:, ws:, wss: or unix:)`
        )
      )
    }
    if (parsed.hash !== "") return Effect.fail(invalidUrl("the URL has a fragment (#...), which is not used"))
    if (
      (parsed.username !== "" && decode(parsed.username) === undefined) ||
      (parsed.password !== "" && decode(parsed.password) === undefined)
    ) {
      return Effect.fail(invalidUrl("the user info is not valid percent-encoding"))
    }
    const credentials: Credentials = { username: decode(parsed.username), password: decode(parsed.password) }
    if (scheme === "unix") {
      if (parsed.hostname !== "" && parsed.hostname !== "localhost") {
        return Effect.fail(invalidUrl("a unix: URL has no host: write unix:///absolute/path/to/socket"))
      }
      if (parsed.port !== "") return Effect.fail(invalidUrl("a unix: URL has no port"))
      if (parsed.search !== "") return Effect.fail(invalidUrl("a unix: URL has no query (?...)"))
      const path = decode(parsed.pathname)
      if (path === undefined || path === "/") return Effect.fail(invalidUrl("the URL has no socket path"))
      return Effect.succeed({ _tag: "Unix", scheme, path, ...credentials })
    }
    if (parsed.hostname === "") return Effect.fail(invalidUrl("the URL has no host"))
    const host = parsed.hostname.startsWith("[") ? parsed.hostname.slice(1, -1) : parsed.hostname
    // a host name, an IPv4 or (in brackets) IPv6 address: `URL` takes any text as the host of an mqtt: URL
    if (!parsed.hostname.startsWith("[") && !HOST_NAME.test(host)) {
      return Effect.fail(invalidUrl(`"${host}" is not a host name`))
    }
    const port = parsed.port === "" ? defaultPorts[scheme] : Number(parsed.port)
    if (!(port > 0 && port <= 65535)) return Effect.fail(invalidUrl("the port must be from 1 to 65535"))
    if (scheme === "ws" || scheme === "wss") {
      const path = parsed.pathname === "/" && !hasExplicitPath(url) ? defaultWebSocketPath : parsed.pathname
      return Effect.succeed({ _tag: "WebSocket", scheme, host, port, path: path + parsed.search, ...credentials })
    }
    if (parsed.pathname !== "" && parsed.pathname !== "/") {
      return Effect.fail(invalidUrl(`a ${scheme}: URL has no path (only ws: and wss: URLs have one)`))
    }
    if (parsed.search !== "") return Effect.fail(invalidUrl(`a ${scheme}: URL has no query (?...)`))
    return scheme === "mqtt" || scheme === "tcp"
      ? Effect.succeed({ _tag: "Tcp", scheme, host, port, ...credentials })
      : Effect.succeed({ _tag: "Tls", scheme, host, port, ...credentials })
  })

/** Another URL after a comma: `mqtt://a:1883,mqtt://b:1883`. */
const SEVERAL = /,\s*[a-z][a-z0-9+.-]*:\/\//i

/** The letters of a host name (percent-encoded when `URL` encoded it), or of an IPv4 address. */
const HOST_NAME = /^[A-Za-z0-9._~%-]+$/

/**
 * The URLs of a text that may hold several, separated by commas (`MQTT_URL`): one string, or the list. A comma
 * counts only before a scheme (`, mqtt://`), so that one in a WebSocket URL's query stays there.
 */
export const urlsOfText = (text: string): string | ReadonlyArray<string> => {
  const urls = text.split(/,\s*(?=[a-z][a-z0-9+.-]*:\/\/)/i).map((url) => url.trim()).filter((url) => url !== "")
  return urls.length === 1 ? urls[0] : urls.length === 0 ? text : urls
}

/** Whether an endpoint is encrypted: TLS, or WebSocket over TLS. */
export const isEncrypted = (endpoint: Endpoint): boolean =>
  endpoint._tag === "Tls" || (endpoint._tag === "WebSocket" && endpoint.scheme === "wss")

/** `host`, `host:port`, `[v6]` or `[v6]:port` (a host name, an IPv4 address, or an IPv6 address in brackets). */
export const HOST_PORT = /^(\[[0-9a-fA-F:.]+\]|[^:[\]/\s@?#]+)(?::(\d{1,5}))?$/

/**
 * A host as `followServerReference` lists them (`host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address),
 * normalised as URLs normalise hosts (lower case; IPv6 compressed, without brackets); undefined when it is none.
 */
export const hostEntry = (entry: string): { readonly host: string; readonly port: number | undefined } | undefined => {
  const s = entry.trim()
  const match = HOST_PORT.exec(s)
  const [host, port] = match !== null ? [match[1], match[2]] : s.includes(":") ? [`[${s}]`, undefined] : []
  if (host === undefined) return undefined
  let parsed: URL
  try {
    parsed = new URL(`mqtt://${host}`)
  } catch {
    return undefined
  }
  const name = parsed.hostname.toLowerCase()
  const number = port === undefined ? undefined : Number(port)
  if (name === "" || (number !== undefined && !(number > 0 && number <= 65535))) return undefined
  return { host: name.startsWith("[") ? name.slice(1, -1) : name, port: number }
}

/**
 * What names one broker whatever the spelling of its URL: the transport (`mqtt:` and `tcp:` are one, so are
 * `mqtts:`, `tls:` and `ssl:`), the host without case, the port (the scheme's default when none is written) and,
 * for WebSocket, the path (not its query). Credentials are not part of it.
 */
export const brokerKey = (endpoint: Endpoint): string =>
  endpoint._tag === "Unix"
    ? `unix:${endpoint.path}`
    : `${
      endpoint._tag === "WebSocket" ? endpoint.scheme : endpoint._tag
    }://${endpoint.host.toLowerCase()}:${endpoint.port}${
      endpoint._tag === "WebSocket" ? endpoint.path.replace(/\?.*$/, "") : ""
    }`

// `new URL` turns both `ws://host` and `ws://host/` into the path "/": look at what was written
const hasExplicitPath = (url: string): boolean => /^[^:]+:[/\\]{2}[^/\\?#]*[/\\]/.test(url.trim())
