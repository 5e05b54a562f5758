// Run with the broker in the environment, for example:
//   MQTT_URL=mqtts://broker.example:8883 MQTT_CA_FILE=ca.pem npm run example docs/examples/tls-websocket.ts
//   MQTT_URL=wss://broker.example/mqtt npm run example docs/examples/tls-websocket.ts
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Stream } from "effect"
import { MqttClient } from "effect-mqtt"

const program = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  yield* client.subscribe("docs/transport/#", { qos: 1 })
  yield* client.publish("docs/transport/hello", "hello", { qos: 1 })
  const [message] = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
  yield* Console.log(`received ${message.topic}: ${message.text}`)

  // the same broker without the certificate authority of MQTT_CA_FILE: the handshake fails, nothing is sent
  const options = yield* MqttClient.config
  if (options.tls !== undefined) {
    const error = yield* MqttClient.make({ ...options, tls: undefined }).pipe(Effect.scoped, Effect.flip)
    yield* Console.log(error._tag === "TlsError" ? `without the CA: TlsError (${error.kind})` : error.message)
  }
})

// MQTT_URL (mqtt://, mqtts://, ws://, wss://...), MQTT_CA_FILE, MQTT_CERT_FILE, MQTT_KEY_FILE...
program.pipe(Effect.provide(MqttClient.layerConfig()), NodeRuntime.runMain)
