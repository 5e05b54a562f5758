/**
 * The text of a TLS failure (`TlsError`'s message): what failed, in words, and what to check, in the library's
 * option names; the command line says the same in its flags' (src/cli/errors.ts). And the environment variables of
 * the TLS settings, for `MqttClient.layerConfig` and the command line to name.
 */

import type { TlsOptions } from "../MqttClient.ts"

/** The environment variable of each TLS setting that `MqttClient.config` reads; the others' option names. */
export const tlsVariables: { readonly [K in keyof TlsOptions]-?: string } = {
  ca: "tls.ca",
  caFile: "MQTT_CA_FILE",
  cert: "tls.cert",
  certFile: "MQTT_CERT_FILE",
  key: "tls.key",
  keyFile: "MQTT_KEY_FILE",
  passphrase: "MQTT_KEY_PASSPHRASE",
  servername: "MQTT_TLS_SERVERNAME",
  alpnProtocols: "MQTT_TLS_ALPN",
  minVersion: "MQTT_TLS_MIN_VERSION",
  insecureSkipVerify: "MQTT_TLS_INSECURE_SKIP_VERIFY"
}

/** The kinds of `TlsError`. */
export type TlsKind =
  | "ServerCertificateUntrusted"
  | "HostnameMismatch"
  | "ClientCertificateRequired"
  | "ClientCertificateRejected"
  | "HandshakeFailed"

const kinds: Record<TlsKind, string> = {
  ServerCertificateUntrusted: "the broker's certificate is not trusted",
  HostnameMismatch: "the broker's certificate is not valid for this host name",
  ClientCertificateRequired: "the broker requires a client certificate",
  ClientCertificateRejected: "the broker rejected the client certificate",
  HandshakeFailed: "handshake failed"
}

/** What to check, in the options of `MqttClient.Options["tls"]` and their environment variables. */
export const tlsHints: Record<TlsKind, string> = {
  ServerCertificateUntrusted: "If the broker's certificate is signed by your own certificate authority, give " +
    "that authority's certificate in tls.ca or tls.caFile (MQTT_CA_FILE); also check the certificate's dates",
  HostnameMismatch: "Connect with a host name the certificate names, or set tls.servername (MQTT_TLS_SERVERNAME) " +
    "to one of them",
  ClientCertificateRequired: "Give a client certificate and its key: tls.cert or tls.certFile (MQTT_CERT_FILE) " +
    "and tls.key or tls.keyFile (MQTT_KEY_FILE)",
  ClientCertificateRejected: "Check that the client certificate is signed by an authority the broker trusts, " +
    "and that it has not expired",
  HandshakeFailed: "Check that the port is a TLS listener (a plaintext one needs mqtt://) and that the broker " +
    "accepts tls.minVersion"
}

/** `TLS with the broker at mqtts://host:port failed (<kind>): <reason> [<code>]`, without what to check. */
export const tlsFailure = (failure: {
  readonly kind: TlsKind
  readonly reason: string
  readonly code?: string | undefined
  readonly broker?: string | undefined
}): string =>
  `TLS with the broker${failure.broker === undefined ? "" : ` at ${failure.broker}`} failed ` +
  `(${kinds[failure.kind]}): ${failure.reason}` + (failure.code === undefined ? "" : ` [${failure.code}]`)
