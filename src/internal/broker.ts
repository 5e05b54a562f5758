/**
 * How errors and log lines name the broker: the URL reduced to what locates the broker, so that it can be shown
 * anywhere. User info (the password), the query string (a signed WebSocket URL carries a token there) and the
 * fragment are never part of it.
 */
import * as MqttError from "../MqttError.ts"

const defaultPorts: Record<string, string> = {
  "mqtt:": "1883",
  "tcp:": "1883",
  "mqtts:": "8883",
  "tls:": "8883",
  "ssl:": "8883",
  "ws:": "80",
  "wss:": "443"
}

/**
 * The broker of a URL as `scheme://host:port` (with the path for `ws://` and `wss://`, and `unix:///path` for a
 * Unix socket), without user info, query or fragment. `undefined` when the URL cannot be parsed or its scheme is
 * not one of the client's: then there is nothing safe to show.
 */
export const display = (url: string): string | undefined => {
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    return undefined
  }
  const scheme = parsed.protocol.toLowerCase()
  if (scheme === "unix:") {
    return parsed.hostname !== "" || parsed.pathname === "" ? undefined : `unix://${parsed.pathname}`
  }
  const port = parsed.port === "" ? defaultPorts[scheme] : parsed.port
  if (port === undefined || parsed.hostname === "") return undefined
  // as the WebSocket transport: no path at all means /mqtt; the URL parser cannot tell "ws://h" from "ws://h/"
  const path = scheme === "ws:" || scheme === "wss:"
    ? (/^[a-z]+:\/\/[^/?#]*\//i.test(url.trim()) ? parsed.pathname : "/mqtt")
    : ""
  return `${scheme}//${parsed.hostname}:${port}${path}`
}

/** Whether a URL's scheme is a plaintext one (`mqtt:`, `tcp:`, `ws:`, `unix:`): TLS settings do not apply. */
export const isPlaintext = (url: string): boolean => /^(mqtt|tcp|ws|unix):/i.test(url.trim())

/**
 * Where a connection error happened: `"connecting"` before CONNACK accepted the connection (the connection never
 * existed), `"connected"` after.
 */
export type Phase = "connecting" | "connected"

/**
 * The error with the broker (and, for a `ConnectionLostError`, the phase) filled in where it has none; the same
 * error when there is nothing to add. For the client to apply to every error that ends a connection attempt
 * (`"connecting"`) or a connection (`"connected"`), so that messages say "could not connect to the broker at
 * mqtt://host:port" or "the connection to the broker at mqtt://host:port was lost". Errors that are not about
 * the connection are returned as they are.
 */
export const annotate = (error: MqttError.MqttError, broker: string | undefined, phase: Phase): MqttError.MqttError => {
  const at = broker === undefined ? {} : { broker }
  switch (error._tag) {
    case "ConnectionLostError":
      return error.phase !== undefined && (error.broker !== undefined || broker === undefined) ?
        error :
        new MqttError.ConnectionLostError({
          reason: error.reason,
          ...optional("reasonCode", error.reasonCode),
          ...optional("reasonString", error.reasonString),
          ...optional("serverReference", error.serverReference),
          ...optional("cause", error.cause),
          ...(error.broker === undefined ? at : { broker: error.broker }),
          phase: error.phase ?? phase
        })
    case "MqttTimeoutError":
      return error.broker !== undefined || broker === undefined ? error : new MqttError.MqttTimeoutError({
        operation: error.operation,
        millis: error.millis,
        broker
      })
    case "TlsError":
      return error.broker !== undefined || broker === undefined ? error : new MqttError.TlsError({
        kind: error.kind,
        reason: error.reason,
        ...optional("code", error.code),
        broker
      })
    case "ProtocolError":
      return error.broker !== undefined || broker === undefined ? error : new MqttError.ProtocolError({
        reason: error.reason,
        ...optional("reasonCode", error.reasonCode),
        ...optional("packet", error.packet),
        ...optional("rule", error.rule),
        broker
      })
    case "ConnectRefusedError":
      return error.broker !== undefined || broker === undefined ? error : new MqttError.ConnectRefusedError({
        reasonCode: error.reasonCode,
        protocolVersion: error.protocolVersion,
        ...optional("reasonString", error.reasonString),
        ...optional("serverReference", error.serverReference),
        broker
      })
    default:
      return error
  }
}

const optional = <K extends string, A>(key: K, value: A | undefined): { [P in K]?: A } =>
  (value === undefined ? {} : { [key]: value }) as { [P in K]?: A }
