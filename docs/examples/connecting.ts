import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Redacted } from "effect"
import { MqttClient } from "effect-mqtt"
import { Broker, withBroker } from "./_broker.ts"

// Code that needs the connection asks for the MqttClient service; it does not know where it connects.
const publishTemperature = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  yield* client.publish("temperature/outside", "28.4", { qos: 1 })
})

const publishHumidity = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  yield* client.publish("humidity/inside", "0.38", { qos: 1 })
})

const program = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  // what the broker answered in CONNACK
  const { clientId, keepAlive, protocolVersion, sessionPresent } = client.connection
  yield* Console.log(`connected as ${clientId}: MQTT version ${protocolVersion}, keepalive ${keepAlive} s`)
  yield* Console.log(`session present: ${sessionPresent}`)

  // one connection, shared by everything the program runs
  yield* publishTemperature
  yield* publishHumidity
  yield* Console.log("published 2 readings")

  // credentials asked for before each CONNECT (a token that expires): every reconnection presents a fresh one
  const { options } = yield* Broker
  let issued = 0
  yield* MqttClient.make({
    ...options,
    // `broker` is the URL about to be connected to (a list's nodes may take different tokens)
    credentials: ({ broker: _ }) =>
      Effect.sync(() => ({ username: "sensor-7", password: Redacted.make(`token-${++issued}`) }))
  }).pipe(Effect.scoped)
  yield* Console.log(`connected with token ${issued}`)

  // a broker that cannot be reached is a typed error, not an exception
  const error = yield* MqttClient.make({ url: "mqtt://127.0.0.1:1" }).pipe(Effect.scoped, Effect.flip)
  yield* Console.log(`${error._tag}: ${error.message}`)
})

// connects before the program runs, sends DISCONNECT after it ends (however it ends)
program.pipe(withBroker({ clientId: "docs-connecting", keepAlive: 30 }), NodeRuntime.runMain)
