/**
 * The broker the guide's examples talk to: the same as examples/_broker.ts, with one addition for MQTT 5.
 *
 * - `MQTT_URL` set: that broker (`MQTT_URL=memory:` for effect-mqtt's in-memory test broker, in the example's
 *   process).
 * - `MQTT_URL` unset: an embedded aedes broker on a free port of 127.0.0.1, started and stopped by the example.
 *   aedes speaks MQTT 3.1.1 only, so an example that asks for `protocolVersion: 5` uses the in-memory test
 *   broker instead.
 *
 * Your application needs none of this: it provides `MqttClient.layer({ url, ...options })` or
 * `MqttClient.layerConfig()` where the examples write `withBroker(options)`.
 */
import { Effect, Layer } from "effect"
import { MqttClient, type MqttError, MqttTestBroker } from "effect-mqtt"
import { Broker, BrokerLive } from "../../examples/_broker.ts"

export { Broker, BrokerLive, publishSamples } from "../../examples/_broker.ts"

/** The options of the examples' clients: everything but where the broker is. */
export type ClientOptions = Omit<MqttClient.Options, "url" | "transport">

const inMemory = Layer.effect(
  Broker,
  Effect.map(MqttTestBroker.make(), (broker) => ({ options: { transport: broker.socket } }))
)

/** The examples' broker for a client of this protocol version. */
export const brokerFor = (protocolVersion: ClientOptions["protocolVersion"]): Layer.Layer<Broker> => {
  const url = process.env.MQTT_URL
  return protocolVersion === 5 && (url === undefined || url === "") ? inMemory : BrokerLive
}

/**
 * Runs an example's program with an `MqttClient` made with `options`, connected to the examples' broker (which
 * also stays available as the `Broker` service, for the examples that open more connections). The client is
 * released before the broker.
 */
export const withBroker = (options?: ClientOptions) =>
<A, E, R>(
  program: Effect.Effect<A, E, R>
): Effect.Effect<A, E | MqttError.MqttError, Exclude<R, MqttClient.MqttClient | Broker>> =>
  Effect.provide(
    program,
    Layer.effect(
      MqttClient.MqttClient,
      Effect.flatMap(Effect.service(Broker), (broker) => MqttClient.make({ ...options, ...broker.options }))
    ).pipe(Layer.provideMerge(brokerFor(options?.protocolVersion)))
  )
