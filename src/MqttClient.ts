/**
 * The MQTT client: a scoped service that connects to a broker, publishes, subscribes and exposes the
 * received messages as a `Stream`.
 *
 * (The module is long because it documents every public member where it is declared: about half of it is doc
 * comments. The implementation lives in `internal/`.)
 *
 * Building the layer connects and waits for CONNACK; releasing it sends DISCONNECT and closes the socket.
 * Nothing keeps running after release.
 *
 * @example
 * ```ts
 * import { Effect, Stream } from "effect"
 * import { MqttClient } from "effect-mqtt"
 *
 * const program = Effect.gen(function*() {
 *   const client = yield* MqttClient.MqttClient
 *   yield* client.subscribe("temperature/#")
 *   yield* client.messages.pipe(
 *     Stream.runForEach((message) => Effect.log(message.topic, message.text))
 *   )
 * })
 *
 * // the program with its client: run it with `NodeRuntime.runMain(main)` (from "@effect/platform-node")
 * export const main = program.pipe(Effect.provide(MqttClient.layer({ url: "mqtt://localhost:1883" })))
 * ```
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import type * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as LogLevel from "effect/LogLevel"
import type * as KeyValueStore from "effect/persistence/KeyValueStore"
import type * as Redacted from "effect/Redacted"
import type * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import type * as Socket from "effect/socket/Socket"
import type * as Stream from "effect/Stream"
import type * as IncomingQueue from "./IncomingQueue.ts"
import * as Broker from "./internal/broker.ts"
import * as internal from "./internal/client.ts"
import * as Service from "./internal/service.ts"
import * as Telemetry from "./internal/telemetry.ts"
import { tlsVariables } from "./internal/tlsText.ts"
import * as Transport from "./internal/transport.ts"
import * as Url from "./internal/url.ts"
import * as MqttError from "./MqttError.ts"
import type * as MqttMessage from "./MqttMessage.ts"
import type * as MqttSessionStore from "./MqttSessionStore.ts"

/**
 * A Quality of Service level: 0 at most once, 1 at least once, 2 exactly once.
 *
 * @since 0.1.0
 * @category models
 */
export type QoS = MqttMessage.QoS

/**
 * The message the broker publishes for this client when the client goes away without a DISCONNECT (a
 * crash, a lost network). MQTT 5 properties and a will delay are ignored on MQTT 3.1.1.
 *
 * @since 0.1.0
 * @category models
 */
export interface Will {
  /** The topic the broker publishes the will to (a topic name: no wildcards). */
  readonly topic: string
  /** The will's payload: bytes, or a string sent as UTF-8. */
  readonly payload: Uint8Array | string
  /** The QoS the broker publishes the will with. Default 0. */
  readonly qos?: QoS | undefined
  /** Whether the broker keeps the will as the topic's retained message. Default `false`. */
  readonly retain?: boolean | undefined
  /** MQTT 5: the will's publish properties, and the will delay. */
  readonly properties?:
    | (MqttMessage.PublishProperties & {
      /** MQTT 5: seconds the broker waits before it publishes the will. MQTT 5 has the will go when the session
       * ends, if that comes first (3.1.3.2.2): with the default `sessionExpiryInterval` of 0 such a broker sends it
       * at once (Mosquitto 2.0 waits the delay all the same), so give the session at least as long as the delay. A
       * reconnection to the session within the delay cancels the will. */
      readonly willDelayInterval?: number | undefined
    })
    | undefined
}

/**
 * TLS settings for `mqtts://` and `wss://` URLs. The broker's certificate and host name are verified by
 * default against the system's certificate authorities (or `ca` / `caFile` when given), and SNI is the URL's
 * host (none for an IP address). Nothing is ever sent in plaintext: a TLS failure is a `TlsError`, and TLS
 * settings given with a plaintext URL (`mqtt://`, `ws://`, `unix://`) are refused.
 *
 * Certificates and keys are PEM, given either as contents (`ca`, `cert`, `key`) or as file paths (`caFile`,
 * `certFile`, `keyFile`), not both. Files are read once, when the client is made; an empty or unreadable file,
 * or a key that does not load (wrong passphrase, not matching the certificate), is an `InvalidOptionError`
 * before anything is sent.
 *
 * @since 0.1.0
 * @category models
 */
export interface TlsOptions {
  /** Certificate authorities to trust instead of the system's (PEM; several may be concatenated). */
  readonly ca?: string | Uint8Array | ReadonlyArray<string | Uint8Array> | undefined
  /** A PEM file of certificate authorities to trust instead of the system's. */
  readonly caFile?: string | undefined
  /** The client certificate (PEM, optionally followed by its intermediates), for brokers that require one. */
  readonly cert?: string | Uint8Array | undefined
  /** A PEM file with the client certificate. */
  readonly certFile?: string | undefined
  /** The private key of `cert` (PEM). */
  readonly key?: Redacted.Redacted<string | Uint8Array> | undefined
  /** A PEM file with the private key of the client certificate. */
  readonly keyFile?: string | undefined
  /** The passphrase of an encrypted private key. */
  readonly passphrase?: Redacted.Redacted<string> | undefined
  /** The name sent in SNI and checked against the certificate. Default: the URL's host, unless it is an IP
   * address (the certificate is then checked against the IP address and no SNI is sent). */
  readonly servername?: string | undefined
  /** ALPN protocols to offer, for example `["mqtt"]` or `["x-amzn-mqtt-ca"]`. Default: none. */
  readonly alpnProtocols?: ReadonlyArray<string> | undefined
  /** The lowest TLS version accepted. Default `"TLSv1.2"`. */
  readonly minVersion?: "TLSv1.2" | "TLSv1.3" | undefined
  /** Turns off the verification of the broker's certificate and host name. INSECURE: anyone between the
   * client and the broker can read and change the traffic. For tests only; a warning is logged when set. */
  readonly insecureSkipVerify?: boolean | undefined
}

/**
 * The options of a client. Only `url` is usually needed.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** The broker. The scheme chooses the transport:
   *
   * | URL | transport | default port |
   * | --- | --- | --- |
   * | `mqtt://host:port`, `tcp://host:port` | TCP | 1883 |
   * | `mqtts://host:port`, `tls://host:port`, `ssl://host:port` | TLS (see `tls`) | 8883 |
   * | `ws://host:port/path` | WebSocket, subprotocol `mqtt`, binary frames | 80 |
   * | `wss://host:port/path` | WebSocket over TLS (see `tls`) | 443 |
   * | `unix:///path/to/socket` | Unix domain socket | |
   *
   * A WebSocket URL without a path uses `/mqtt` (write `ws://host/` for the root path); its query string is
   * kept. User info in the URL (`mqtt://user:password@host`) is used as `username` and `password` when those
   * are not given, and is never sent elsewhere (not as an HTTP `Authorization` header). A malformed or
   * unsupported URL is an `InvalidOptionError` that never repeats the URL. Default `mqtt://localhost:1883`.
   *
   * A list of URLs names the nodes of one cluster (as MQTT.js `servers` and paho `serverURIs`): the first
   * connection tries them in order; when a connection is lost, the client tries the next node, then the ones
   * after it, the lost node last, and waits the `reconnect` schedule's delay before each full round (not
   * between the nodes of a round). The session state goes along: where the cluster shares the session (CONNACK
   * Session Present 1) it resumes; elsewhere the client subscribes again and resends its unacknowledged
   * publishes, as after any reconnect. Session Present 1 from another node than the one that carried the session
   * last may be an older form of it (independent brokers), as may Session Present 1 from any node after a restart
   * from a `store`: the client then makes its subscriptions again.
   * `connection.broker` names the node in use. The URLs of a list are all
   * encrypted (`mqtts://`, `wss://`) or all plaintext: a failover never leaves TLS. Each node's user info
   * applies to that node when `username` and `password` are not given. A list cannot go with `transport`, nor
   * name one broker twice (`mqtt://` and `tcp://`, `mqtts://`, `tls://` and `ssl://` are the same transport; a
   * port left out is the scheme's default): an `InvalidOptionError` naming `url[i]`. A node that refuses the
   * client for good (CONNACK: bad credentials, not authorized, banned; a certificate TLS rejects) does not end a
   * round: the next node is tried. The client gives up only when every node of a round refused it for good
   * (sending it for good, CONNACK 0x9D, to a place that refuses it for good counts as refusing). */
  readonly url?: string | ReadonlyArray<string> | undefined
  /**
   * MQTT 5: follow a broker's Server Reference (CONNACK or DISCONNECT with reason code 0x9C, use another server,
   * or 0x9D, server moved) to the hosts this allows: a list of hosts (`"node2.example.com"`, or
   * `"node2.example.com:8883"` to pin the port), or a predicate on the target. The referenced server is the next
   * attempt (after a DISCONNECT, the first of the next round, after the schedule's delay); when that connection
   * ends, the client goes back to its `url` list. A reference is `host`, `host:port` (the scheme, and for
   * WebSocket the path, of the node that sent it; its port when none is given), a URL, or several of these
   * separated by spaces (the first allowed one is followed). A reference to a node of `url` leads to that node,
   * with its own user info; a referenced server outside the list gets the credentials the client would have given
   * the node that sent it there (`username`, `password`, that node's user info), so allow only hosts you trust with
   * them. A referenced server that refuses the client, even for good, sends it back to its
   * list. Never followed: from TLS (the list's, or the server's that sent the reference) to plaintext, to a Unix
   * socket, a reference with credentials, more than 3 references in one round of attempts, more than 3
   * DISCONNECTs' references in a row (until a connection lasts a minute, or ends without one), a
   * DISCONNECT's reference when `reconnect` is `false` (a CONNACK's is: it is part of connecting). The list takes
   * host names or IP addresses, each with or without `:port`, and no scheme: anything else is an
   * `InvalidOptionError`. A predicate that throws allows nothing (the log line says it threw).
   *
   * Not set (the default), or a reference it does not allow: the reference is reported as before in the error's
   * `serverReference`, and a log line (at `"Warn"`) says why it was not followed; a DISCONNECT 0x9D then stops
   * the client (the server moved for good), 0x9C is retried on the `url` list.
   */
  readonly followServerReference?:
    | ReadonlyArray<string>
    | ((target: ServerReferenceTarget) => boolean)
    | undefined
  /** TLS settings for `mqtts://` and `wss://`. */
  readonly tls?: TlsOptions | undefined
  /** A socket to use instead of the built-in transports: a proxy, a tunnel, an in-memory test double. Each
   * connection acquires its `reader` (which opens the connection) and its `writer`. `url` still supplies the
   * user info; its host and port are not used, and `tls` must not be given (the socket does its own TLS).
   * A socket failing with a Node.js TLS error still fails with a `TlsError`. */
  readonly transport?: Socket.Socket | Effect.Effect<Socket.Socket, MqttError.MqttError> | undefined
  /** The client identifier. Generated (`effect-mqtt-` and random characters) when absent. */
  readonly clientId?: string | undefined
  /** 4 for MQTT 3.1.1 (the default, as MQTT.js and aiomqtt), 5 for MQTT 5.0, 3 for MQTT 3.1 (protocol name
   * `MQIsdp`, for older brokers and devices: a client identifier of 1 to 23 bytes, no Session Present, so a
   * resumed session is assumed kept). */
  readonly protocolVersion?: 3 | 4 | 5 | undefined
  /** Seconds between control packets: a PINGREQ is sent after this long without sending anything.
   * 0 turns keepalive off. Default 60. In MQTT 5 the broker's Server Keep Alive replaces it. */
  readonly keepAlive?: number | undefined
  /** How long to wait for the PINGRESP before the connection is considered dead. Default: the keepalive,
   * at most 30 seconds. */
  readonly pingTimeout?: Duration.Input | undefined
  /** Start a new session (MQTT 5 Clean Start; MQTT 3.1.1 Clean Session). Default `true`. */
  readonly cleanStart?: boolean | undefined
  /** The MQTT 3.1.1 name of `cleanStart`. Both may be given only with the same value (else `InvalidOptionError`). */
  readonly cleanSession?: boolean | undefined
  /** MQTT 5: seconds the broker keeps the session after the connection closes (0: none, the default). Over 0 on
   * MQTT 3.1.1 it is an `InvalidOptionError` (3.1.1 has no Session Expiry: `cleanSession: false` keeps the session). */
  readonly sessionExpiryInterval?: number | undefined
  /** The user name sent in CONNECT. Default: the user info of `url`, when it has one. */
  readonly username?: string | undefined
  /** The password sent in CONNECT, kept `Redacted` so that it shows in no log or error. Default: the password
   * in the user info of `url`, when it has one. */
  readonly password?: Redacted.Redacted<string> | undefined
  /**
   * Asks for the user name and password of each CONNECT just before it is sent: the first connection, every
   * reconnection, every node of `url` and every place a Server Reference leads to. For credentials that expire, a
   * token as the password (cloud brokers' JWTs and SAS tokens): a reconnection an hour later presents a fresh one,
   * not the one the client started with.
   *
   * - `target.broker` is the broker about to be connected to, `scheme://host:port` (undefined for a custom
   *   `transport`).
   * - It runs before the socket is opened, bounded by `connectTimeout` of its own (past it, `MqttTimeoutError`,
   *   operation `"connect"`); the connection then has its `connectTimeout`.
   * - When it fails, the attempt fails with its error, and a reconnecting client tries again on its schedule (as
   *   after a lost connection; an `InvalidOptionError` is final). When it dies or throws, the attempt fails with
   *   `ConnectionLostError` ("credentials died: …"); with a value that is no `MqttError` (untyped code),
   *   `ConnectionLostError` ("credentials failed: …").
   * - What it returns is checked as `username` and `password` are: a user name that is not a string, a password
   *   that is not a `Redacted` string, or on MQTT 3.1.1 a password without a user name is an `InvalidOptionError`.
   * - A broker's refusal of the credentials (MQTT 5 0x86/0x87, 3.1.1 codes 4/5) is final, as with fixed ones.
   *
   * Not with `username`, `password` or user info in `url` (`InvalidOptionError`: which one counts is not for the
   * client to guess). Default: none (`username` and `password` are sent). MQTT 3.1.1 §3.1.3.4–5, MQTT 5 §3.1.3.5–6.
   */
  readonly credentials?:
    | ((target: CredentialsTarget) => Effect.Effect<Credentials, MqttError.MqttError>)
    | undefined
  /** The message the broker publishes when this client goes away without a DISCONNECT. Default: none. */
  readonly will?: Will | undefined
  /** How long to wait for the TCP connection and the CONNACK. Default 30 seconds. */
  readonly connectTimeout?: Duration.Input | undefined
  /** The queue that holds received messages until they are consumed. Default `IncomingQueue.bounded(1024)`. */
  readonly queue?: IncomingQueue.Strategy | undefined
  /** MQTT 5: user properties sent in CONNECT. */
  readonly userProperties?: ReadonlyArray<MqttMessage.UserProperty> | undefined
  /**
   * What to do when the connection is lost: a `Schedule` of delays between attempts (its input is the error
   * that ended the last attempt; when it ends, the client gives up), or `false` to fail the `messages`
   * stream and every operation with the error instead (aiomqtt's behaviour: retry the whole scope).
   * Default: {@link defaultReconnect}, exponential from 100 ms, capped at 30 s, jittered, forever.
   */
  readonly reconnect?: Schedule.Schedule<unknown, MqttError.MqttError> | false | undefined
  /** Retry the first connection with the `reconnect` schedule instead of failing the layer at once.
   * Default `false`: a wrong URL or a refused connection is reported, not hidden. */
  readonly retryFirstConnect?: boolean | undefined
  /**
   * When a received QoS 1/2 message is acknowledged (PUBACK, PUBREC): `"auto"` (the default) when a consumer
   * takes it from its stream; `"manual"` when the application calls `message.ack`, for at-least-once
   * processing: a message whose handler failed, or that a crashed process never acknowledged, is sent again by
   * the broker on the next connection of a persistent session. Either way acknowledgements leave in the order
   * the messages arrived [MQTT-4.6.0-2]. A `subscription` may choose its own.
   */
  readonly acknowledgement?: "auto" | "manual" | undefined
  /**
   * The least severe of the client's own log lines that are written, through Effect's logger (which filters
   * further by its own minimum level): `"Info"` (also each successful connection), `"Warn"` (the default:
   * a connection lost or an attempt failed, with the cause and the delay before the next attempt), `"Error"`
   * (only when the client gives up), or `"None"`. Lines name the broker as `scheme://host:port` and never
   * contain a password.
   */
  readonly logLevel?: LogLevel.LogLevel | undefined
  /**
   * How the broker delivers a message that matches several of the client's subscriptions, when it cannot say
   * which (MQTT 3.1.1, or MQTT 5 with a broker without Subscription Identifiers). MQTT allows one copy or a copy
   * per subscription [MQTT-3.3.5-1]. `"single-copy"` (the default; Mosquitto, EMQX, HiveMQ, RabbitMQ over 3.1.1):
   * the copy goes to every owner whose filter matches. `"copy-per-subscription"` (NATS): the copies of a message
   * go one to each matching subscription's owners, so that each `subscription()` stream sees the message once. The
   * client tells them apart by counting identical copies per topic, in whatever order they come (NATS sends a QoS
   * 1 burst for one subscription, then for the next). Where it cannot tell which subscription a copy is for, it
   * prefers a duplicate to a loss: a retained message sent for a new subscription, a copy sent again (DUP), and,
   * while a SUBSCRIBE or UNSUBSCRIBE of an overlapping filter waits for its acknowledgement, a copy the broker may
   * or may not send go to every owner whose filter matches, so an owner may then receive a message twice. One
   * case is left: identical messages (the same payload on the same topic) that the broker took before a new
   * overlapping subscription existed but sends after its SUBACK (from a QoS 1 stream that lags behind) may be
   * counted as that subscription's copies, and the owner of another may miss one of them. On MQTT 5 the client
   * gives every subscription an identifier and routes by what the broker says each copy matched, whatever this
   * option says.
   */
  readonly overlapping?: "single-copy" | "copy-per-subscription" | undefined
  /**
   * A durable session: the client's half of a persistent session is kept in this store and survives a process
   * crash or a redeploy (see `MqttSessionStore`: memory, file system, Redis, or any Effect `KeyValueStore`).
   * Needs a fixed `clientId`; the state is kept per broker and client identifier. Write-ahead: a QoS 1/2 publish,
   * its packet identifier, and the incoming QoS 2 identifiers are stored before the packets that depend on them
   * are written (one store write per batch). On start, a stored session is restored: its publishes are resent
   * in order with their identifiers and DUP (Session Present 1) or as new messages (Session Present 0). A
   * stored session that cannot be read fails the client with `StoreError`; a store that cannot be written makes
   * QoS 1/2 publishes fail with `StoreError` until it can. Default: none (the session lives in memory).
   */
  readonly store?: MqttSessionStore.SessionStore | KeyValueStore.KeyValueStore | undefined
  /** Discard what `store` holds for this client before starting, instead of restoring it. Default `false`. */
  readonly clearStore?: boolean | undefined
  /**
   * Tracing. `subscribe`, `unsubscribe`, `request` and `respond` are always spans. `messages: true` also makes
   * a span of each publish (`mqtt publish`, kind producer) and of each delivery to a consumer (`mqtt receive`,
   * kind consumer); off by default, since a span per message costs more than the rest of a publish. With
   * `propagate` (default `true`), an MQTT 5 publish made inside a span carries its W3C `traceparent` as a user
   * property, and a received message that carries one gives its spans (and `MqttMessage.withSpan`) that parent,
   * so that a trace runs from producer to consumer through the broker. Attributes follow OpenTelemetry's
   * messaging conventions (`messaging.system: "mqtt"`, `messaging.destination.name`, `mqtt.qos`...).
   */
  readonly tracing?: {
    /** A span for each publish and each delivery to a consumer. Default `false`. */
    readonly messages?: boolean | undefined
    /** MQTT 5: carry the W3C `traceparent` of the current span in each publish. Default `true`. */
    readonly propagate?: boolean | undefined
  } | undefined
  /** MQTT 5: a broker that sends more unacknowledged QoS 1/2 messages than `receiveMaximum` gets DISCONNECT
   * 0x93 (Receive Maximum exceeded), as MQTT 5 section 4.9 describes, instead of a warning. Default `false`. */
  readonly strictReceiveMaximum?: boolean | undefined
  /** What publish, subscribe and unsubscribe do while the client is reconnecting. */
  readonly offline?: OfflineOptions | undefined
  /** The largest packet the client accepts, in bytes, from 16 to 268,435,460. Default 32 MiB.
   * - MQTT 5: announced to the broker in CONNECT, so that it does not send a larger packet (it discards such a
   *   message for this client [MQTT-3.1.2-25]); one that does gets DISCONNECT 0x95 as soon as the packet's
   *   header arrives, before it is buffered.
   * - MQTT 3.1/3.1.1 cannot tell the broker. A larger PUBLISH is dropped unread, as an MQTT 5 broker would drop
   *   it: only its headers (the topic and packet identifier) are kept while its bytes go by; it is counted in
   *   `droppedMessages`, logged at Warn, and a QoS 1/2 one is acknowledged in its turn, so that a persistent
   *   session does not send it again after every reconnect. A larger packet of another kind closes the
   *   connection (`ProtocolError`). */
  readonly maximumPacketSize?: number | undefined
  /** The largest packet the client sends, in bytes, from 16 to 268,435,460; by default the broker's Maximum Packet
   * Size (MQTT 5), or no limit (MQTT 3.1.1, whose broker cannot say its limit). A publish, SUBSCRIBE or
   * UNSUBSCRIBE over it (or over the broker's, when that is lower) fails with `PublishError` / `SubscribeError`
   * reason code 0x95 before it is sent, checked when it is written, on every connection. On MQTT 3.1.1 set it to
   * the broker's limit (Mosquitto's `max_packet_size`): a broker closes the connection on a larger packet, and a
   * QoS 1/2 publish it never acknowledged is sent again on every connection, holding back the ones behind it. */
  readonly sendMaximumPacketSize?: number | undefined
  /** MQTT 5: how many QoS 1/2 messages the broker may send before they are acknowledged; announced in CONNECT.
   * A broker that sends more is reported (a warning) and its messages taken: Mosquitto 2.0.11 goes over it
   * while it holds a backlog for the client, and a DISCONNECT would lose what a clean session held; with
   * `strictReceiveMaximum: true` it gets DISCONNECT 0x93 instead. Default: the capacity of `queue` (1,024 by default; 65,535
   * for an unbounded queue): since a message is acknowledged when a consumer takes it, a queue that large never
   * fills with QoS 1/2 messages, and the client keeps reading the socket while a consumer stalls. For a queue that
   * drops when full (sliding, dropping, LIFO with `overflow` "sliding" or "dropping"), 65,535: the broker sends
   * what comes and the queue drops as it says (bounded by its capacity, the broker would hold the newest back). */
  readonly receiveMaximum?: number | undefined
  /** MQTT 5: how many topic aliases the broker may set on this client's connection. Default 16 (0 on 3.1.1). */
  readonly topicAliasMaximum?: number | undefined
  /** MQTT 5: give topics aliases on the way out, within the broker's Topic Alias Maximum (least recently used
   * replaced), so that a long topic is sent once per connection. Default `true`. */
  readonly topicAliases?: boolean | undefined
  /** MQTT 5 enhanced authentication: an authentication method and the answers to the broker's challenges. */
  readonly auth?: Authentication | undefined
  /** How many QoS 1/2 publishes may wait for their acknowledgement at once (at most the broker's Receive
   * Maximum); the others wait their turn in order. Default 1,000 on MQTT 5; 20 on MQTT 3.1.1, which has no
   * Receive Maximum (Mosquitto acknowledges and drops what a 3.1.1 client sends beyond its `max_inflight_messages`,
   * 20 by default: against a broker set lower, set `maxInflight` to its value). */
  readonly maxInflight?: number | undefined
  /** MQTT 5: where `request` asks for responses: `<prefix>/<client identifier>` (in the identifier `%`, `/`, `+`, `#`
   * and NUL percent-encoded: `a/b` is `a%2Fb`). Default `effect-mqtt/responses`. */
  readonly responseTopicPrefix?: string | undefined
  /** What the DISCONNECT sent on release says. MQTT 5 only. */
  readonly disconnect?: {
    /** 0 (normal: the will is discarded, the default) or 4 (disconnect with will message). */
    readonly reasonCode?: 0 | 4 | undefined
    /** A new Session Expiry Interval for the session; not allowed when CONNECT set none or 0 [MQTT-3.14.2-2]. */
    readonly sessionExpiryInterval?: number | undefined
  } | undefined
}

/**
 * What the `credentials` option returns for one CONNECT: its User Name and Password fields, each left out of the
 * CONNECT when undefined.
 *
 * @since 0.2.0
 * @category models
 */
export interface Credentials {
  /** The user name (UTF-8, at most 65,535 bytes). */
  readonly username?: string | undefined
  /** The password, `Redacted` so that it shows in no log or error. */
  readonly password?: Redacted.Redacted<string> | undefined
}

/**
 * The connection attempt the `credentials` option is asked for.
 *
 * @since 0.2.0
 * @category models
 */
export interface CredentialsTarget {
  /** The broker about to be connected to, `scheme://host:port`; undefined for a custom `transport`. */
  readonly broker: string | undefined
}

/**
 * Where an MQTT 5 Server Reference would send the client, as `followServerReference` sees it.
 *
 * @since 0.2.0
 * @category models
 */
export interface ServerReferenceTarget {
  /** The server as `scheme://host:port` (WebSocket: with the path). */
  readonly url: string
  /** The host name or IP address (IPv6 without brackets). */
  readonly host: string
  /** The TCP port. */
  readonly port: number
  /** 0x9C (use another server, for now) or 0x9D (server moved, for good). */
  readonly reasonCode: number
  /** The broker that sent the reference, as `scheme://host:port`. */
  readonly from: string | undefined
}

/**
 * What operations do while the client is reconnecting.
 *
 * @since 0.1.0
 * @category models
 */
export interface OfflineOptions {
  /**
   * How many publishes are kept while disconnected, sent in order once connected. Default 10,000. While
   * connected, the same number bounds the publishes waiting behind `maxInflight` (for a packet identifier and the
   * broker's Receive Maximum): a publish, or `publishAccepted`, that finds that line full waits until
   * acknowledgements make room (whatever `overflow` says: room comes without a reconnection). Not while the client
   * waits for room in a full incoming queue: it then reads no acknowledgement, so nothing could make room.
   */
  readonly capacity?: number | undefined
  /** When the buffer is full: `"fail"` with `OfflineError` (the default) or `"wait"` for the connection. */
  readonly overflow?: "fail" | "wait" | undefined
  /** QoS 0 publishes while disconnected: `"buffer"` them like the others (the default) or `"fail"`. */
  readonly qos0?: "buffer" | "fail" | undefined
  /** Subscribe and unsubscribe while disconnected: `"wait"` for the connection (the default) or `"fail"`.
   * A SUBSCRIBE or UNSUBSCRIBE in flight when the connection drops is sent again, or fails, likewise. */
  readonly requests?: "wait" | "fail" | undefined
}

/**
 * MQTT 5 enhanced authentication (SASL-style challenge/response, e.g. SCRAM): CONNECT carries `method` and
 * `data`; each AUTH challenge of the broker (reason 0x18) is answered with what `onChallenge` returns, during
 * the connection and during `reauthenticate`.
 *
 * @since 0.1.0
 * @category models
 */
export interface Authentication {
  /** The authentication method, as the broker names it (for example `"SCRAM-SHA-256"`), sent in CONNECT. */
  readonly method: string
  /**
   * The authentication data sent in CONNECT. After a re-authentication with data that the broker accepted
   * (`reauthenticate(data)`), later CONNECTs (reconnections) carry that data instead: a renewed token is the one
   * presented. Default: none.
   */
  readonly data?: Uint8Array | undefined
  /** Answers one challenge of the broker (an AUTH packet with reason 0x18, continue authentication): returns
   * the data of the AUTH the client sends back. When it fails, the connection is closed with its error; when it
   * dies or throws, with `ConnectionLostError` ("auth.onChallenge died"), and a reconnecting client tries again. */
  readonly onChallenge: (challenge: {
    /** The authentication data of the broker's AUTH packet. */
    readonly data: Uint8Array | undefined
    /** The reason string of the broker's AUTH packet. */
    readonly reasonString: string | undefined
  }) => Effect.Effect<Uint8Array | undefined, MqttError.MqttError>
}

/**
 * The options of `request`.
 *
 * @since 0.1.0
 * @category models
 */
export interface RequestOptions {
  /** The QoS of the request. Default 1. */
  readonly qos?: QoS | undefined
  /** How long to wait for the response, from the call: the first request's wait for its response topic's SUBACK
   * (while the client reconnects, too) counts in it. Past it, `MqttTimeoutError` (operation `"request"`). A
   * request that times out or is interrupted leaves that SUBSCRIBE to complete for the next requests. Default 30
   * seconds. */
  readonly timeout?: Duration.Input | undefined
  /** More properties of the request (the response topic and correlation data are set by the client). */
  readonly properties?: MqttMessage.PublishProperties | undefined
}

/**
 * What a `respond` handler returns: a payload, or a payload with properties.
 *
 * @since 0.1.0
 * @category models
 */
export type Reply =
  | Uint8Array
  | string
  | {
    /** The reply's payload: bytes, or a string sent as UTF-8. */
    readonly payload: Uint8Array | string
    /** More properties of the reply (the correlation data is copied from the request by the client). */
    readonly properties?: MqttMessage.PublishProperties | undefined
  }

/**
 * The options of `runForEachByKey`.
 *
 * @since 0.2.0
 * @category models
 */
export interface ByKeyOptions {
  /** What messages are handled one at a time by: messages with the same key (`===`) never run at once, and run in
   * the queue's order. Default: the topic. */
  readonly key?: ((message: MqttMessage.MqttMessage) => unknown) | undefined
  /** How many keys are handled at once: a positive integer, or `"unbounded"` (the default). */
  readonly concurrency?: number | "unbounded" | undefined
}

/**
 * The options of `respond`.
 *
 * @since 0.1.0
 * @category models
 */
export interface RespondOptions {
  /** The QoS of the subscription and of the replies. Default 1. */
  readonly qos?: QoS | undefined
  /** How many requests are handled at once. Default 1. */
  readonly concurrency?: number | "unbounded" | undefined
  /**
   * Completed once the responder's subscription is in place (the broker's SUBACK granted it): a request
   * published after that reaches the responder. Failed with the error when the subscription fails, interrupted
   * when the responder is interrupted first. A request published before the SUBACK may find no subscriber (a
   * broker drops a message no subscription matches). Default: none.
   */
  readonly subscribed?: Deferred.Deferred<void, MqttError.MqttError> | undefined
}

/**
 * The state of the connection, as `statusChanges` reports it.
 *
 * @since 0.1.0
 * @category models
 */
export type ConnectionStatus =
  | {
    readonly _tag: "Connecting"
    /** Which attempt this is: 1 for the first connection and for the first attempt after a lost one, counting
     * up while attempts fail (each node of a `url` list is one attempt). */
    readonly attempt: number
    /** The broker this attempt connects to, as `scheme://host:port`; absent with a custom transport. */
    readonly broker?: string | undefined
  }
  | {
    readonly _tag: "Connected"
    /** What the broker said in CONNACK; `info.broker` is the node connected to. */
    readonly info: ConnectionInfo
    /** The broker of the previous connection, when this connection is to another one: the client moved to
     * another node of its `url` list, or followed a Server Reference. Absent on the first connection and when
     * the client came back to the same broker. */
    readonly movedFrom?: string | undefined
  }
  | {
    readonly _tag: "Disconnected"
    /** Why the connection was lost, or why the attempt failed. */
    readonly cause: MqttError.MqttError
    /** When the next attempt starts; `undefined` when the client does not reconnect. */
    readonly retryIn: Duration.Duration | undefined
  }
  | {
    readonly _tag: "Closed"
    /** Why the client stopped for good: `undefined` when its scope closed it, the error when it gave up. */
    readonly cause: MqttError.MqttError | undefined
  }

/**
 * Counters of the client's connections.
 *
 * @since 0.1.0
 * @category models
 */
export interface Metrics {
  /** Successful connections, the first included. */
  readonly connects: number
  /** Successful connections after a lost one. */
  readonly reconnects: number
  /** Connection attempts that failed. */
  readonly failedAttempts: number
  /** Total time spent disconnected between a lost connection and the next successful one. */
  readonly disconnectedMillis: number
  /** The longest such time. */
  readonly longestDisconnectMillis: number
  /**
   * Messages dropped by a sliding or dropping incoming queue, those a released `subscription()` stream left
   * while nothing reads `messages`, on MQTT 3.1.1 those over `maximumPacketSize`, QoS 0 ones behind a pending
   * SUBSCRIBE, and responses no `request` waits for (as `MqttClient.droppedMessages`).
   */
  readonly droppedMessages: number
}

/**
 * The options of a publish.
 *
 * @since 0.1.0
 * @category models
 */
export interface PublishOptions {
  /** Default 0. */
  readonly qos?: QoS | undefined
  /** Ask the broker to keep the message for future subscribers. Default `false`. */
  readonly retain?: boolean | undefined
  /** MQTT 5 properties; ignored on MQTT 3.1.1. */
  readonly properties?: MqttMessage.PublishProperties | undefined
}

/**
 * The options of one filter of a SUBSCRIBE (its Subscription Options byte, MQTT 5 section 3.8.3.1). The MQTT 5
 * options are refused on an MQTT 3.1.1 connection.
 *
 * @since 0.3.0
 * @category models
 */
export interface FilterOptions {
  /** The maximum QoS of the messages the broker sends for this subscription. Default 0. */
  readonly qos?: QoS | undefined
  /** MQTT 5: do not receive the messages this client publishes itself. */
  readonly noLocal?: boolean | undefined
  /** MQTT 5: keep the retain flag the messages were published with. */
  readonly retainAsPublished?: boolean | undefined
  /** MQTT 5: 0 send retained messages on subscribe (default), 1 only for a new subscription, 2 never. */
  readonly retainHandling?: 0 | 1 | 2 | undefined
}

/**
 * The options of a subscription: those of each filter, and those of the whole SUBSCRIBE. The MQTT 5 options are
 * refused on an MQTT 3.1.1 connection.
 *
 * @since 0.1.0
 * @category models
 */
export interface SubscribeOptions extends FilterOptions {
  /** MQTT 5: an identifier (1 to 268,435,455) for the subscriptions of this SUBSCRIBE: each message that
   * matches them lists it in `properties.subscriptionIdentifiers`. Applies to the whole call. */
  readonly subscriptionIdentifier?: number | undefined
  /** MQTT 5: user properties of the SUBSCRIBE. Applies to the whole call. */
  readonly userProperties?: ReadonlyArray<MqttMessage.UserProperty> | undefined
}

/**
 * The options of `subscription`: those of a subscribe, and when the stream's messages are acknowledged.
 *
 * @since 0.2.0
 * @category models
 */
export interface SubscriptionOptions extends SubscribeOptions {
  /** When the stream's QoS 1/2 messages are acknowledged: `"auto"` when a consumer takes them from the stream,
   * `"manual"` when the application calls `message.ack` (see `MqttMessage.ackAfter`). Default: the client's
   * `acknowledgement`. */
  readonly acknowledgement?: "auto" | "manual" | undefined
}

/**
 * The options of an unsubscribe.
 *
 * @since 0.1.0
 * @category models
 */
export interface UnsubscribeOptions {
  /** MQTT 5: user properties of the UNSUBSCRIBE. */
  readonly userProperties?: ReadonlyArray<MqttMessage.UserProperty> | undefined
}

/**
 * One filter of a subscribe, with its own options. A Subscription Identifier and user properties belong to the
 * whole SUBSCRIBE: give them in the call's options (`InvalidOptionError` on a filter).
 *
 * @since 0.1.0
 * @category models
 */
export interface Subscription extends FilterOptions {
  /** The topic filter (wildcards `+` and `#` allowed; `$share/{group}/{filter}` for a shared subscription). */
  readonly filter: string
}

/**
 * What the broker granted for one filter of a subscribe.
 *
 * @since 0.1.0
 * @category models
 */
export interface Granted {
  /** The filter, as it was asked for. */
  readonly filter: string
  /** The QoS the broker granted (it may be lower than asked). */
  readonly qos: QoS
  /** The SUBACK reason code: the granted QoS, or for MQTT 5 a success code such as 0x00 to 0x02. */
  readonly reasonCode: number
}

/**
 * What the broker said in CONNACK.
 *
 * @since 0.1.0
 * @category models
 */
export interface ConnectionInfo {
  /** The broker this connection is to, as `scheme://host:port` (with the path for WebSocket): one node of the
   * `url` list, or where a Server Reference led. Absent with a custom transport. */
  readonly broker?: string | undefined
  /** The protocol version of the connection: 3 (MQTT 3.1), 4 (MQTT 3.1.1) or 5 (MQTT 5.0). */
  readonly protocolVersion: 3 | 4 | 5
  /** The client identifier in use: the broker's assigned identifier when it sent one. */
  readonly clientId: string
  /** Whether the broker resumed a session it held for this client identifier (CONNACK Session Present):
   * `false` after a clean start, or when the broker had no session to resume. */
  readonly sessionPresent: boolean
  /** The keepalive in use, in seconds (the broker's Server Keep Alive when it sent one). */
  readonly keepAlive: number
  /** MQTT 5: how many QoS 1/2 publishes may be unacknowledged at once (65,535 when the broker sets none). */
  readonly receiveMaximum: number
  /** MQTT 5: the highest QoS the broker accepts (2 when it says nothing). */
  readonly maximumQoS: QoS
  /** MQTT 5: whether the broker accepts retained messages (`true` when it says nothing, and on MQTT 3.1.1). */
  readonly retainAvailable: boolean
  /** MQTT 5: the largest packet the broker accepts, in bytes; `undefined` when it sets no limit. */
  readonly maximumPacketSize: number | undefined
  /** MQTT 5: how many topic aliases the client may use on this connection (0: none, and on MQTT 3.1.1). */
  readonly topicAliasMaximum: number
  /** MQTT 5: the session expiry interval in force, in seconds: the broker's when its CONNACK set one, else the
   * client's `sessionExpiryInterval`. */
  readonly sessionExpiryInterval: number | undefined
  /** MQTT 5: the broker's human-readable words on the connection, when it sent any. */
  readonly reasonString: string | undefined
  /** MQTT 5: the user properties of the CONNACK, in order (empty on MQTT 3.1.1). */
  readonly userProperties: ReadonlyArray<MqttMessage.UserProperty>
  /** MQTT 5: whether the broker accepts filters with `+` and `#` (`true` when it says nothing). */
  readonly wildcardSubscriptionAvailable: boolean
  /** MQTT 5: whether the broker accepts subscription identifiers (`true` when it says nothing). */
  readonly subscriptionIdentifiersAvailable: boolean
  /** MQTT 5: whether the broker accepts shared subscriptions, `$share/...` (`true` when it says nothing). */
  readonly sharedSubscriptionAvailable: boolean
  /** MQTT 5: the CONNACK's Response Information, a basis for response topics. The client does not send Request
   * Response Information, so this is `undefined` unless the broker sends it unasked; `request` uses
   * `responseTopicPrefix` instead. */
  readonly responseInformation: string | undefined
  /** MQTT 5: another server the broker suggests. */
  readonly serverReference: string | undefined
}

/**
 * The client service.
 *
 * @since 0.1.0
 * @category models
 */
export interface Client {
  /**
   * Publishes a message. QoS 0 completes when the packet is written (while the client reconnects: when the
   * offline buffer takes it, `offline.qos0: "buffer"`; should the next connection's limits rule it out then, a
   * Warn line says so), QoS 1 on PUBACK, QoS 2 on PUBCOMP.
   *
   * Fails with `InvalidTopicError` or `InvalidOptionError` before sending anything when the topic or an
   * option is invalid, with `PublishError` when the broker refuses the message (MQTT 5 reason code at or
   * above 0x80) or a connection's limits rule it out, and with a connection error when the connection ends
   * before the acknowledgement and the client stops, or when the broker's session ends after the PUBREC of a QoS 2
   * publish and before its PUBCOMP (delivery unknown).
   *
   * Interrupting a QoS 1/2 publish after it was sent does not abandon it: its acknowledgement is still
   * received and answered.
   *
   * The payload's bytes are not copied when they are many (4 KB or more: they are written to the socket as they
   * are, as Node's `socket.write` does), and a QoS 1/2 payload is kept for resends: do not change the bytes of a
   * payload handed to `publish` (for QoS 0 they may be written after `publish` completed).
   */
  readonly publish: (
    topic: string,
    payload: Uint8Array | string,
    options?: PublishOptions
  ) => Effect.Effect<void, MqttError.MqttError>

  /**
   * Publishes a message in two steps: the outer effect completes once the client has accepted the message, and
   * returns the effect that waits for its acknowledgement (what `publish` waits for: PUBACK for QoS 1, PUBCOMP
   * for QoS 2; QoS 0 has none, it is done once accepted).
   *
   * Accepted means that the client is responsible for the message: with a `store`, a QoS 1/2 publish is accepted
   * once it is stored, so that it is sent, by this client or by the next one started with the same store and
   * client identifier, even if this process is killed right after; without a store, once it is in the session
   * (it survives reconnects, not the process). Use it to tell a producer that it may let go of a message before
   * the broker acknowledged it, or to keep many publishes in flight from one fiber.
   *
   * The outer effect fails as `publish` does before anything is sent (invalid input, `OfflineError`,
   * `StoreError` while the store cannot be written); it waits while the store is being written (also while a
   * failed write is retried), and while the line of publishes waiting behind `maxInflight` is full
   * (`offline.capacity`, default 10,000), until acknowledgements make room. Interrupting it before it completes withdraws the publish when it was not written
   * yet. Interrupting the returned wait does not: the accepted publish is still sent and acknowledged.
   *
   * @example
   * ```ts
   * import { Effect } from "effect"
   * import { MqttClient } from "effect-mqtt"
   *
   * const program = Effect.gen(function*() {
   *   const client = yield* MqttClient.MqttClient
   *   const acknowledged = yield* client.publishAccepted("orders/created", "{\"id\":42}", { qos: 1 })
   *   // stored: safe to tell the producer; the broker's PUBACK comes later
   *   yield* acknowledged
   * })
   * ```
   *
   * @since 0.2.0
   */
  readonly publishAccepted: (
    topic: string,
    payload: Uint8Array | string,
    options?: PublishOptions
  ) => Effect.Effect<Effect.Effect<void, MqttError.MqttError>, MqttError.MqttError>

  /**
   * Subscribes to one or more topic filters with one SUBSCRIBE. A string filter uses `options`; a
   * `Subscription` carries its own. Returns what the broker granted for each filter, in order. Fails with
   * `SubscribeError` naming the first filter the broker refused. A SUBSCRIBE that the connection it would go out
   * on cannot take, by its MQTT 5 CONNACK, is not sent and fails with `SubscribeError` (reason string "not sent:
   * ..."): 0xA2 for a wildcard filter under Wildcard Subscription Available 0, 0x9E for a `$share/` filter under
   * Shared Subscription Available 0, 0x95 for a packet over the broker's Maximum Packet Size.
   */
  readonly subscribe: (
    filters: string | Subscription | ReadonlyArray<string | Subscription>,
    options?: SubscribeOptions
  ) => Effect.Effect<ReadonlyArray<Granted>, MqttError.MqttError>

  /**
   * Removes one or more subscriptions with one UNSUBSCRIBE, waiting for UNSUBACK. In MQTT 5, fails with
   * `UnsubscribeError` when the broker refuses (a subscription that did not exist is not an error). An
   * UNSUBSCRIBE over the broker's Maximum Packet Size is not sent: `UnsubscribeError` 0x95, the filters stay.
   */
  readonly unsubscribe: (
    filters: string | ReadonlyArray<string>,
    options?: UnsubscribeOptions
  ) => Effect.Effect<void, MqttError.MqttError>

  /**
   * Every received message. All consumers of this stream share one queue, so each message goes to one of
   * them (as in aiomqtt). The stream ends when the client is closed. A lost connection does not end it while
   * the client reconnects (the default): it fails with the error only when the client stops for good (the
   * `reconnect` schedule ends, or a refusal that another attempt cannot change), or, with
   * `reconnect: false`, as soon as the connection is lost.
   */
  readonly messages: Stream.Stream<MqttMessage.MqttMessage, MqttError.MqttError>

  /**
   * Handles the messages of `messages` one at a time per key and up to `concurrency` keys at once: serially per
   * topic (the default key), concurrently across topics. As `Stream.groupByKey` with a handler per group, but a
   * message is taken from the queue only when its handler starts: one whose key is busy, or that comes while
   * `concurrency` handlers run, stays in its place while later messages of other keys are handled. So a stop
   * (interruption, `Effect.timeout`) leaves every message not yet handed to a handler in the queue, unacknowledged,
   * for the next consumer; the handlers it interrupts had their messages taken, as with any consumer of
   * `messages`. (`Stream.groupByKey` takes messages ahead into a buffer per key, which are acknowledged and lost
   * when the consumer stops; see docs/concurrency.md.) The queue's order holds per key (FIFO by default; newest
   * first for `IncomingQueue.lifo`, by priority for `IncomingQueue.priority`). It shares the queue with the other
   * consumers of `messages`, and its takes count for the delivery contract as theirs do. One key at a time holds
   * within one runner: two runners on one client (or a runner beside another consumer of `messages`) may run
   * messages of the same key at once; run one runner with the `concurrency` wanted. The messages of a busy key
   * wait in the bounded queue: when they fill it (a slow handler of a busy topic), the client reads on only as the
   * delivery contract says for a full queue, and the other keys wait with them; give such a topic a
   * `subscription()` stream of its own.
   *
   * Runs until the client is closed, then waits for the handlers still running; fails with the error of
   * `messages`, or with the first handler failure (nothing more is taken then; the other handlers are
   * interrupted). `concurrency` is a
   * positive integer or `"unbounded"` (the default); anything else is an `InvalidOptionError` before anything is
   * taken. `key` defaults to the topic; it is called once per message (when the message is an object), and keys
   * are compared as `Set` members (`===`, strings by value: a key that makes a new object for each message
   * serializes nothing). A `key` that throws is a defect of the runner, before the message is taken.
   *
   * @example
   * ```ts
   * import { Effect } from "effect"
   * import { MqttClient, type MqttMessage } from "effect-mqtt"
   *
   * declare const handle: (message: MqttMessage.MqttMessage) => Effect.Effect<void>
   *
   * const program = Effect.gen(function*() {
   *   const client = yield* MqttClient.MqttClient
   *   // one message at a time per topic, all topics at once; stops with the scope, losing nothing
   *   yield* client.runForEachByKey(handle).pipe(Effect.forkScoped)
   * })
   * ```
   */
  readonly runForEachByKey: <E, R>(
    handler: (message: MqttMessage.MqttMessage) => Effect.Effect<unknown, E, R>,
    options?: ByKeyOptions
  ) => Effect.Effect<void, MqttError.MqttError | E, R>

  /**
   * The number of messages dropped so far: by a sliding or dropping queue, those a released `subscription()`
   * stream left while nothing reads `messages` (given up: acknowledged unread unless the client closes first),
   * QoS 1/2 ones that waited unclaimed on `messages` while nothing reads it (see `subscription`),
   * on MQTT 3.1.1 those over `maximumPacketSize` (dropped unread, acknowledged in their turn), QoS 0 ones that
   * came while a SUBSCRIBE or UNSUBSCRIBE awaited its acknowledgement behind a full queue nothing had consumed yet,
   * and responses on `request`'s response topic that no request waits for (late, or without Correlation Data).
   */
  readonly droppedMessages: Effect.Effect<number>

  /** The number of received messages waiting in the queue for a consumer of `messages`. */
  readonly queuedMessages: Effect.Effect<number>

  /** What the broker answered in the CONNACK of the current (or last) connection. */
  readonly connection: ConnectionInfo

  /** The state of the connection now. */
  readonly status: Effect.Effect<ConnectionStatus>

  /** The current state, then every change: connecting, connected (with the CONNACK), disconnected (with
   * the cause), closed. The stream ends after `Closed`, the last state (at once, for a client already closed). */
  readonly statusChanges: Stream.Stream<ConnectionStatus>

  /** Connection counters: connects, reconnects, time spent disconnected. */
  readonly metrics: Effect.Effect<Metrics>

  /**
   * Subscribes, and returns a stream of the messages this subscription matches, for the life of the
   * enclosing scope (then it unsubscribes). Its messages go to this stream instead of `messages`; it has
   * a queue of its own, of the client's `queue` kind. In MQTT 5 the client gives the subscription an
   * identifier (unless `subscriptionIdentifier` is given), so that messages are routed by what the broker
   * says they matched; otherwise by topic filter. Fails as `subscribe` does. When a later connection cannot
   * take the subscription (it restores it on a broker, or another node of `url`, whose CONNACK rules it out),
   * the stream fails with that `SubscribeError` once its waiting messages are taken.
   *
   * Closing the scope sends UNSUBSCRIBE (for the filters no other owner holds) and waits at most 5 seconds for the
   * UNSUBACK, and not at all while the client is offline, or once the connection drops: the UNSUBSCRIBE then goes
   * out at the next connection (or, when the broker kept no session, the filters are not restored).
   *
   * When the scope closes, the messages its queue still holds (and those that arrive for it before the broker's
   * UNSUBACK) go to `messages` if the application reads `messages` (it subscribed through `subscribe`, or ran
   * the stream); otherwise they are given up, counted in `droppedMessages`, and logged at Warn: left in a queue
   * nobody reads, a QoS 1/2 message would hold back every later acknowledgement [MQTT-4.6.0-2], and so every
   * later QoS 1/2 delivery. They are acknowledged unread at the client's next acknowledgement of another message (or
   * after a second without one), never when the client closes first: a program that stops leaves them to its
   * persistent session. When the application does not read `messages`, a new stream first takes the messages
   * waiting there that match its filters (a resumed session's backlog, sent before it subscribed again); QoS 1/2
   * ones that no stream claims are given up (counted, logged, acknowledged unread) once they held back the
   * acknowledgements of half the broker's window (MQTT 5: half of `receiveMaximum`; MQTT 3.1.1: 10), or 10 seconds
   * after the first.
   */
  readonly subscription: (
    filters: string | Subscription | ReadonlyArray<string | Subscription>,
    options?: SubscriptionOptions
  ) => Effect.Effect<Stream.Stream<MqttMessage.MqttMessage, MqttError.MqttError>, MqttError.MqttError, Scope.Scope>

  /**
   * MQTT 5 request/response: publishes with a response topic (this client's, subscribed once, on first use)
   * and fresh correlation data, and waits for the matching response. Many requests can be in flight at once
   * over the one response subscription. Fails with `MqttTimeoutError` (operation `"request"`) after `timeout`
   * (default 30 s). A response that comes after its request gave up (the timeout, an interruption), or a message
   * on the response topic without Correlation Data, is acknowledged and dropped: counted in `droppedMessages`,
   * the first of each kind logged at Warn.
   */
  readonly request: (
    topic: string,
    payload: Uint8Array | string,
    options?: RequestOptions
  ) => Effect.Effect<MqttMessage.MqttMessage, MqttError.MqttError>

  /**
   * MQTT 5, the responder's side: handles the requests on `filter` and publishes each reply to the request's
   * response topic with its correlation data. Runs until interrupted (fork it), `concurrency` requests at a
   * time (default 1). A message without a response topic is skipped. To know when requests reach it (its
   * subscription is in place), pass a `Deferred` as `subscribed` and await it. A request is done once its reply
   * is accepted, as by `publishAccepted`: the responder takes the next one without waiting for the broker's
   * acknowledgement of the reply (which it waits for in a fiber of its own), so requests queued beyond the
   * client's `queue` cannot stall it. Accepting a reply may wait for room in the line of publishes behind
   * `maxInflight` (`offline.capacity`).
   *
   * What goes wrong with one request is that request's own: it gets no reply, a warning among the client's log
   * lines (at `logLevel` `"Warn"`) names its topic, its response topic and why, and the responder goes on with
   * the next. So it is when the requester's response topic is not a valid topic name (empty, a wildcard:
   * checked before the handler, which does not run), when the handler fails (its typed failure), when its reply
   * is not a payload, and when the reply cannot be published: the broker refuses it (a response topic this
   * client may not publish to: 0x87, warned when the refusal comes), it is larger than the broker's Maximum
   * Packet Size, a property of the reply is invalid, the client is offline and cannot keep it (`offline`
   * options), the session store cannot be written. A requester cannot stop the responder.
   *
   * On a client with `acknowledgement: "manual"`, each request is acknowledged once it is served (answered, or its
   * failure warned), so a request whose responder ended first comes again to the next session; otherwise it was
   * acknowledged when taken.
   *
   * The responder ends, failing with the error, only for what ends every request: its arguments are invalid
   * (checked before anything is sent, as is the client's protocol: MQTT 5 only), its subscription is refused
   * (also through `subscribed`), or the client stops for good (closed, or its connection lost and not
   * reconnected). A defect of the handler (a thrown exception, `Effect.die`) ends it too; a handler that wants
   * a failure to end the responder can turn it into one (`Effect.orDie`).
   *
   * @example
   * ```ts
   * import { Deferred, Effect } from "effect"
   * import { MqttClient, type MqttError } from "effect-mqtt"
   *
   * const program = Effect.gen(function*() {
   *   const client = yield* MqttClient.MqttClient
   *   const subscribed = yield* Deferred.make<void, MqttError.MqttError>()
   *   yield* client.respond("services/add", (request) => Effect.succeed(String(Number(request.text) + 1)), {
   *     subscribed
   *   }).pipe(Effect.forkScoped)
   *   // from here on, a request reaches the responder
   *   yield* Deferred.await(subscribed)
   * })
   * ```
   */
  readonly respond: <E, R>(
    filter: string | ReadonlyArray<string>,
    handler: (request: MqttMessage.MqttMessage) => Effect.Effect<Reply, E, R>,
    options?: RespondOptions
  ) => Effect.Effect<void, MqttError.MqttError, R>

  /**
   * MQTT 5 re-authentication [MQTT-4.12.1]: sends AUTH (reason 0x19, Re-authenticate) with the CONNECT's
   * Authentication Method and `data`, and waits until the broker accepts it (AUTH 0x00); the broker's challenges
   * (AUTH 0x18) are answered by `auth.onChallenge`, as at connect, while messages, acknowledgements and pings go
   * on flowing [MQTT-4.12.1]. Once the broker accepts it, `data` (when given) replaces `auth.data` in the
   * CONNECT of later reconnections. A call while one is under way waits for that
   * one; with `data`, it then starts its own, so that its data is presented. The broker's AUTH 0x18 while none is under way is a protocol error (DISCONNECT 0x82): only the client
   * starts a re-authentication. Fails with `InvalidOptionError` when the client was connected without `auth`, `OfflineError` without a
   * connection, and with the connection's error when it ends first: a refusal is the broker's DISCONNECT
   * (`ConnectionLostError` with its `reasonCode`, such as 0x87 Not authorized). It sets no time limit of its own: the keepalive ends a connection whose broker
   * went silent; to bound the wait, `Effect.timeout` (a broker's later acceptance is then taken quietly).
   */
  readonly reauthenticate: (data?: Uint8Array) => Effect.Effect<void, MqttError.MqttError>

  /** Waits until the client stops for good and fails with the reason (the connection was lost and the client
   * does not reconnect, or gave up); succeeds when the client is closed by its scope. */
  readonly awaitClose: Effect.Effect<void, MqttError.MqttError>
}

/**
 * The default `reconnect` schedule: 100 ms, doubling each attempt, capped at 30 s; each delay is drawn at
 * random between half and all of it, so that many clients that lost the same broker do not come back in step.
 * Never gives up.
 *
 * @since 0.1.0
 * @category constructors
 */
export const defaultReconnect: Schedule.Schedule<Duration.Duration> = internal.defaultReconnect

/**
 * The client's metrics, as Effect `Metric`s: read them with `Metric.value` (each client is a series, with the
 * attribute `messaging.client.id`; the message and byte counters also by `mqtt.qos`), or export them with
 * Effect's OTLP or Prometheus modules. `messagesSent`, `bytesSent` (payload bytes), `messagesReceived`,
 * `bytesReceived`, `inFlight` (QoS 1/2 publishes holding a packet identifier), `queued` (messages waiting in
 * the `messages` queue), `dropped`, `reconnects`, `connected` (1 or 0).
 *
 * A client's series live while a client of its identifier runs (two at once count into the same series). When the
 * last one's scope closes, each series is read once more with its last values, then leaves the registry (at most
 * 256 identifiers wait for that read), so that clients made one after another do not grow it without bound; a
 * later client of the identifier counts from 0.
 *
 * @since 0.2.0
 * @category metrics
 */
export const telemetry = Telemetry.metrics

/**
 * The client service tag. It is the same service on every platform: the layers of `effect-mqtt` (Node.js)
 * and of `effect-mqtt/browser` both provide it.
 *
 * @since 0.1.0
 * @category services
 */
export const MqttClient: typeof Service.MqttClient = Service.MqttClient

/**
 * The client service, as a type: the same on every platform.
 *
 * @since 0.1.0
 * @category services
 */
export type MqttClient = Service.MqttClient

/**
 * Connects and returns a client that lives as long as the enclosing scope. Most applications use
 * {@link layer} instead.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}): Effect.Effect<Client, MqttError.MqttError, Scope.Scope> =>
  internal.make(options, Transport.platform)

/**
 * A layer that connects when built (waiting for CONNACK) and disconnects when released: DISCONNECT is sent,
 * the messages stream ends, and the socket is closed. Building it fails with `InvalidOptionError` or
 * `InvalidTopicError` (invalid options, before anything is sent), `ConnectRefusedError` (the broker's CONNACK
 * refused), `ConnectionLostError` (could not connect, or the connection closed before CONNACK),
 * `MqttTimeoutError` (no CONNACK within `connectTimeout`), `TlsError` (the TLS handshake failed) or
 * `ProtocolError` (the broker's answer broke the protocol). With `retryFirstConnect`, these are retried on the
 * `reconnect` schedule, and the layer fails with the last one when it ends.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options?: Options): Layer.Layer<MqttClient, MqttError.MqttError> =>
  Layer.effect(MqttClient, make(options))

/** The names `MQTT_PROTOCOL_VERSION` takes: the protocol level, the version, or mosquitto_pub's `-V` names. */
const protocolVersions: Record<string, 3 | 4 | 5> = {
  "3": 3,
  "4": 4,
  "5": 5,
  "3.1": 3,
  "3.1.1": 4,
  "5.0": 5,
  mqttv31: 3,
  mqttv311: 4,
  mqttv5: 5
}

/**
 * The options read from the environment through Effect `Config`:
 *
 * | variable | option |
 * | --- | --- |
 * | `MQTT_URL` | `url` (default `mqtt://localhost:1883`); several, separated by commas, are a list (failover) |
 * | `MQTT_CLIENT_ID` | `clientId` |
 * | `MQTT_USERNAME` | `username` |
 * | `MQTT_PASSWORD` | `password` (redacted) |
 * | `MQTT_PROTOCOL_VERSION` | `protocolVersion`: 3 (also `3.1`, `mqttv31`), 4 (`3.1.1`, `mqttv311`) or 5 (`5.0`, `mqttv5`) |
 * | `MQTT_KEEPALIVE` | `keepAlive` (seconds) |
 * | `MQTT_CONNECT_TIMEOUT` | `connectTimeout` (a duration: `10 seconds`, `500 millis`; or a number of seconds: `10`) |
 * | `MQTT_CA_FILE` | `tls.caFile` |
 * | `MQTT_CERT_FILE` | `tls.certFile` |
 * | `MQTT_KEY_FILE` | `tls.keyFile` |
 * | `MQTT_KEY_PASSPHRASE` | `tls.passphrase` (redacted) |
 * | `MQTT_TLS_SERVERNAME` | `tls.servername` |
 * | `MQTT_TLS_MIN_VERSION` | `tls.minVersion` (`TLSv1.2` or `TLSv1.3`) |
 * | `MQTT_TLS_ALPN` | `tls.alpnProtocols` (comma-separated) |
 * | `MQTT_TLS_INSECURE_SKIP_VERIFY` | `tls.insecureSkipVerify` (`true` or `false`; insecure) |
 *
 * An empty variable counts as unset (Effect's `ConfigProvider.fromEnv`), as `${VAR}` of an unset variable leaves
 * it in a docker compose file.
 *
 * A TLS variable with an `mqtt://` or `ws://` URL is refused rather than ignored: {@link layerConfig} fails with an
 * `InvalidOptionError` whose `option` is the variable (`MQTT_CA_FILE`).
 *
 * @since 0.1.0
 * @category config
 */
export const config: Config.Config<Options> = Config.all({
  url: Config.String("MQTT_URL").pipe(Config.map(Url.urlsOfText), Config.withDefault("mqtt://localhost:1883")),
  clientId: Config.String("MQTT_CLIENT_ID").pipe(Config.withDefault(undefined)),
  username: Config.String("MQTT_USERNAME").pipe(Config.withDefault(undefined)),
  password: Config.Redacted("MQTT_PASSWORD").pipe(Config.withDefault(undefined)),
  protocolVersion: Config.Literals(Object.keys(protocolVersions), "MQTT_PROTOCOL_VERSION").pipe(
    Config.map((name) => protocolVersions[name]),
    Config.withDefault(undefined)
  ),
  keepAlive: Config.Int("MQTT_KEEPALIVE").pipe(Config.withDefault(undefined)),
  // a duration (`10 seconds`), or a bare number of seconds as MQTT_KEEPALIVE takes
  connectTimeout: Config.Duration("MQTT_CONNECT_TIMEOUT").pipe(
    Config.orElse(() => Config.Number("MQTT_CONNECT_TIMEOUT").pipe(Config.map(Duration.seconds))),
    Config.withDefault(undefined)
  ),
  tls: Config.all({
    caFile: Config.String("MQTT_CA_FILE").pipe(Config.withDefault(undefined)),
    certFile: Config.String("MQTT_CERT_FILE").pipe(Config.withDefault(undefined)),
    keyFile: Config.String("MQTT_KEY_FILE").pipe(Config.withDefault(undefined)),
    passphrase: Config.Redacted("MQTT_KEY_PASSPHRASE").pipe(Config.withDefault(undefined)),
    servername: Config.String("MQTT_TLS_SERVERNAME").pipe(Config.withDefault(undefined)),
    minVersion: Config.Literals(["TLSv1.2", "TLSv1.3"], "MQTT_TLS_MIN_VERSION").pipe(Config.withDefault(undefined)),
    alpnProtocols: Config.String("MQTT_TLS_ALPN").pipe(
      Config.map((list) => list.split(",").map((protocol) => protocol.trim()).filter((protocol) => protocol !== "")),
      Config.withDefault(undefined)
    ),
    insecureSkipVerify: Config.Boolean("MQTT_TLS_INSECURE_SKIP_VERIFY").pipe(Config.withDefault(undefined))
  }).pipe(
    Config.map((tls): TlsOptions | undefined =>
      Object.values(tls).some((value) => value !== undefined) ? tls : undefined
    )
  )
})

/**
 * A layer whose options come from Effect `Config`: by default {@link config} (`MQTT_URL` and friends), or
 * any `Config` of options. Options given in `overrides` are used as they are; `tls` settings are merged with
 * those from the config, one setting at a time. `credentials` in `overrides` replaces the config's `username` and
 * `password` (`MQTT_USERNAME`, `MQTT_PASSWORD`), as `cleanStart` replaces its `cleanSession`.
 *
 * @example
 * ```ts
 * import { MqttClient } from "effect-mqtt"
 *
 * // MQTT_URL=mqtt://broker:1883 MQTT_USERNAME=app MQTT_PASSWORD=secret
 * const MqttLive = MqttClient.layerConfig()
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  options: Config.Config<Options> = config,
  overrides?: Options
): Layer.Layer<MqttClient, MqttError.MqttError | Config.ConfigError> =>
  Layer.effect(
    MqttClient,
    Effect.flatMap(options, (read) => {
      // cleanStart and cleanSession are one setting: an override of either replaces the config's; so are
      // `credentials` and `username` with `password` (MQTT_USERNAME, MQTT_PASSWORD)
      const fromConfig = {
        ...read,
        ...(overrides?.cleanStart !== undefined || overrides?.cleanSession !== undefined
          ? { cleanStart: undefined, cleanSession: undefined }
          : {}),
        ...(overrides?.credentials !== undefined ? { username: undefined, password: undefined } : {})
      }
      const merged: Options = overrides?.tls === undefined || fromConfig.tls === undefined
        ? { ...fromConfig, ...overrides }
        : { ...fromConfig, ...overrides, tls: { ...fromConfig.tls, ...overrides.tls } }
      const refused = tlsWithPlaintext(fromConfig, merged, options === config)
      return refused === undefined ? make(merged) : Effect.fail(refused)
    })
  )

/**
 * TLS settings read from the config, with a plaintext URL: the error names where they came from (the environment
 * variable, for {@link config}), which the client itself cannot know.
 */
const tlsWithPlaintext = (
  fromConfig: Options,
  merged: Options,
  variables: boolean
): MqttError.InvalidOptionError | undefined => {
  const urls = merged.url ?? "mqtt://localhost:1883"
  // a list: the first plaintext URL (the client itself refuses a list mixing TLS and plaintext)
  const url = typeof urls === "string" ? urls : urls.find((u) => typeof u === "string" && Broker.isPlaintext(u))
  const tls = fromConfig.tls
  if (merged.transport !== undefined || tls === undefined || url === undefined || !Broker.isPlaintext(url)) {
    return undefined
  }
  const names = (Object.keys(tlsVariables) as Array<keyof TlsOptions>)
    .filter((key) => tls[key] !== undefined)
    .map((key) => variables ? tlsVariables[key] : `tls.${key}`)
  const first = names[0]
  if (first === undefined) return undefined
  return new MqttError.InvalidOptionError({
    option: first,
    reason: `${names.join(", ")} ${names.length === 1 ? "is" : "are"} set, but the URL ` +
      `(${Broker.display(url) ?? "not shown"}) is not encrypted: TLS settings need an mqtts:// or wss:// URL` +
      (variables ? " (MQTT_URL)" : "")
  })
}
