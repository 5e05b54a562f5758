/**
 * The MQTT client in browsers: the same service, client, session and options as `effect-mqtt`'s `MqttClient`,
 * over WebSocket only. The URL is `ws://host:port/path` or `wss://host:port/path` (without a path, `/mqtt`); MQTT
 * travels in binary frames with the subprotocol `mqtt`, on Effect's WebSocket `Socket`. TLS is the browser's:
 * `wss://` is verified against the browser's certificate store, and the `tls` option cannot be given.
 *
 * The socket is made with the global `WebSocket`, or with the constructor a `Socket.WebSocketConstructor`
 * service in the context gives (from `effect/socket/Socket`). A `transport` option (any Effect `Socket`) is used
 * as on Node.
 *
 * @example
 * ```ts
 * import { Effect, Stream } from "effect"
 * import { MqttClient } from "effect-mqtt/browser"
 *
 * const program = Effect.gen(function*() {
 *   const client = yield* MqttClient.MqttClient
 *   yield* client.subscribe("sensors/#", { qos: 1 })
 *   yield* client.messages.pipe(
 *     Stream.runForEach((message) => Effect.log(message.topic, message.text))
 *   )
 * })
 *
 * export const main = program.pipe(
 *   Effect.provide(MqttClient.layer({ url: "wss://broker.example.com:8884/mqtt", protocolVersion: 5 }))
 * )
 * ```
 *
 * @since 0.2.0
 */
import * as Config from "effect/Config"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as BrowserTransport from "../internal/browserTransport.ts"
import * as internal from "../internal/client.ts"
import * as Service from "../internal/service.ts"
import * as Url from "../internal/url.ts"
import type { Client, Options } from "../MqttClient.ts"
import type * as MqttError from "../MqttError.ts"

/**
 * Every type of `effect-mqtt`'s `MqttClient` module, unchanged: `Options`, `Client`, `PublishOptions`,
 * `SubscribeOptions`, `ConnectionStatus`, `Metrics`...
 *
 * @since 0.2.0
 */
export type * from "../MqttClient.ts"

/**
 * The client service tag: the same service as `effect-mqtt`'s, so code written against `MqttClient.MqttClient`
 * runs with either layer.
 *
 * @since 0.2.0
 * @category services
 */
export const MqttClient: typeof Service.MqttClient = Service.MqttClient

/**
 * The client service, as a type: the same as `effect-mqtt`'s.
 *
 * @since 0.2.0
 * @category services
 */
export type MqttClient = Service.MqttClient

/**
 * The default `reconnect` schedule, as on Node: 100 ms, doubling each attempt, capped at 30 s, each delay drawn
 * between half and all of it. Never gives up.
 *
 * @since 0.2.0
 * @category constructors
 */
export const defaultReconnect: Schedule.Schedule<Duration.Duration> = internal.defaultReconnect

/**
 * Connects over WebSocket and returns a client that lives as long as the enclosing scope. Fails as
 * `effect-mqtt`'s `make` does, and with an `InvalidOptionError` for a URL that is not `ws://` or `wss://`
 * (`url`; the error names the scheme and why, never the URL) or for TLS settings (`tls`).
 *
 * @since 0.2.0
 * @category constructors
 */
export const make = (options: Options = {}): Effect.Effect<Client, MqttError.MqttError, Scope.Scope> =>
  Effect.suspend(() => {
    const problem = BrowserTransport.optionsProblem(options)
    return problem === undefined ? internal.make(options, BrowserTransport.platform) : Effect.fail(problem)
  })

/**
 * A layer that connects when built (waiting for CONNACK) and disconnects when released, as `effect-mqtt`'s
 * `layer`, over WebSocket.
 *
 * @since 0.2.0
 * @category layers
 */
export const layer = (options?: Options): Layer.Layer<MqttClient, MqttError.MqttError> =>
  Layer.effect(MqttClient, make(options))

/**
 * The options read through Effect `Config`, as on Node without the TLS settings: `MQTT_URL` (required: a browser
 * has no default broker; several, separated by commas, are a list), `MQTT_CLIENT_ID`, `MQTT_USERNAME`, `MQTT_PASSWORD` (redacted), `MQTT_PROTOCOL_VERSION`
 * (3, 4 or 5), `MQTT_KEEPALIVE` (seconds), `MQTT_CONNECT_TIMEOUT` (a duration). A browser has no environment
 * variables: give them with a `ConfigProvider` (for example `ConfigProvider.fromUnknown` over the page's
 * configuration).
 *
 * @since 0.2.0
 * @category config
 */
export const config: Config.Config<Options> = Config.all({
  url: Config.String("MQTT_URL").pipe(Config.map(Url.urlsOfText)),
  clientId: Config.String("MQTT_CLIENT_ID").pipe(Config.withDefault(undefined)),
  username: Config.String("MQTT_USERNAME").pipe(Config.withDefault(undefined)),
  password: Config.Redacted("MQTT_PASSWORD").pipe(Config.withDefault(undefined)),
  protocolVersion: Config.Literals([3, 4, 5], "MQTT_PROTOCOL_VERSION").pipe(Config.withDefault(undefined)),
  keepAlive: Config.Int("MQTT_KEEPALIVE").pipe(Config.withDefault(undefined)),
  connectTimeout: Config.Duration("MQTT_CONNECT_TIMEOUT").pipe(Config.withDefault(undefined))
})

/**
 * A layer whose options come from Effect `Config`: by default {@link config}, or any `Config` of options.
 * Options given in `overrides` are used as they are.
 *
 * @since 0.2.0
 * @category layers
 */
export const layerConfig = (
  options: Config.Config<Options> = config,
  overrides?: Options
): Layer.Layer<MqttClient, MqttError.MqttError | Config.ConfigError> =>
  Layer.effect(MqttClient, Effect.flatMap(options, (fromConfig) => make({ ...fromConfig, ...overrides })))
