/**
 * How errors and log lines name the broker: the URL reduced to what locates the broker, so that it can be shown
 * anywhere. User info (the password), the query string (a signed WebSocket URL carries a token there) and the
 * fragment are never part of it.
 */

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
