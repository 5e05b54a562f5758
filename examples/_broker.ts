/**
 * The broker the examples talk to.
 *
 * When `MQTT_URL` is set (for example `MQTT_URL=mqtt://localhost:1883`), the examples use that broker.
 * `MQTT_URL=memory:` uses effect-mqtt's in-memory test broker (`MqttTestBroker`) inside the example's process:
 * the clients reach it through an in-memory socket instead of TCP. Otherwise each example starts an embedded
 * broker, aedes, inside its own process on a free port of 127.0.0.1, and closes it when the example ends. So
 * `npm run example examples/01-subscribe.ts` works without a broker installed, after `npm ci` (which also
 * installs the Node.js 24 that runs the TypeScript files: the `npm run example` script runs it, with the export
 * condition that makes "effect-mqtt" the files in src/). aedes speaks MQTT 3.1.1 only, which is the client's
 * default protocol version.
 *
 * Your application needs none of this: it provides `MqttClient.layer({ url })` or `MqttClient.layerConfig()`.
 */
import { Aedes } from "aedes"
import { Context, Effect, Layer } from "effect"
import { MqttClient, type MqttError, MqttTestBroker } from "effect-mqtt"
import * as Net from "node:net"

/**
 * How to reach the broker (its URL, or the in-memory socket of the test broker), for the examples that open a
 * second connection: `MqttClient.make({ ...options, queue })`.
 */
export class Broker extends Context.Service<
  Broker,
  { readonly options: Pick<MqttClient.Options, "url" | "transport"> }
>()("examples/Broker") {}

/**
 * An aedes broker listening on a free port of 127.0.0.1, and `stop`, which disconnects its clients and closes the
 * listening socket (once; later calls do nothing). Releasing it stops it, so the example's process can exit.
 */
export const embeddedBroker = Effect.acquireRelease(
  Effect.promise(async () => {
    const aedes = await Aedes.createBroker()
    const server = Net.createServer(aedes.handle)
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    const { port } = server.address() as Net.AddressInfo
    let stopped: Promise<void> | undefined
    const stop = Effect.promise(() =>
      stopped ??= new Promise<void>((resolve) => aedes.close(() => server.close(() => resolve())))
    )
    return { url: `mqtt://127.0.0.1:${port}`, stop }
  }),
  ({ stop }) => stop
)

/**
 * The broker at `MQTT_URL`, the in-memory test broker (`MQTT_URL=memory:`), or an embedded aedes broker; the
 * last two live as long as the layer.
 */
export const BrokerLive: Layer.Layer<Broker> = Layer.effect(
  Broker,
  Effect.gen(function*() {
    const url = process.env.MQTT_URL
    if (url === "memory:") {
      const broker = yield* MqttTestBroker.make()
      return { options: { transport: broker.socket } }
    }
    if (url !== undefined && url !== "") return { options: { url } }
    const embedded = yield* embeddedBroker
    return { options: { url: embedded.url } }
  })
)

/**
 * An `MqttClient` connected to the examples' broker, built with `options` (the URL or transport comes from the
 * broker).
 * The client is released before the broker: it sends DISCONNECT while the broker is still there.
 */
export const brokerLayer = (
  options?: Omit<MqttClient.Options, "url" | "transport">
): Layer.Layer<MqttClient.MqttClient | Broker, MqttError.MqttError> =>
  Layer.effect(
    MqttClient.MqttClient,
    Effect.gen(function*() {
      const broker = yield* Broker
      return yield* MqttClient.make({ ...options, ...broker.options })
    })
  ).pipe(Layer.provideMerge(BrokerLive))

/**
 * Runs an example's program with {@link brokerLayer}.
 */
export const withBroker =
  (options?: Omit<MqttClient.Options, "url" | "transport">) =>
  <A, E>(program: Effect.Effect<A, E, MqttClient.MqttClient | Broker>) => Effect.provide(program, brokerLayer(options))

/**
 * Publishes sample messages from a second connection, as another device would, with QoS 1: each publish
 * completes when the broker has acknowledged it, that is once the broker is responsible for delivering it.
 * Subscribe before calling this: a broker delivers a message only to the subscriptions that exist when it
 * arrives.
 */
export const publishSamples = (
  samples: ReadonlyArray<readonly [topic: string, payload: string]>
): Effect.Effect<void, MqttError.MqttError, Broker> =>
  Effect.scoped(Effect.gen(function*() {
    const broker = yield* Broker
    const publisher = yield* MqttClient.make(broker.options)
    for (const [topic, payload] of samples) {
      yield* publisher.publish(topic, payload, { qos: 1 })
    }
  }))
