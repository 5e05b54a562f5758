import { assert, describe, it } from "@effect/vitest"
import { Effect, Schedule, Stream } from "effect"
import { MqttClient, MqttTestBroker } from "effect-mqtt"
import { TestClock } from "effect/testing"

// ---- the application: a thermostat -------------------------------------------------------------------------

/** Turns the heating of a room on below 18 °C and off above 21 °C. */
const thermostat = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  const readings = yield* client.subscription("sensors/+/temperature", { qos: 1 })
  yield* readings.pipe(
    Stream.runForEach((message) => {
      const room = message.topic.split("/")[1]
      const celsius = Number(message.text)
      if (celsius < 18) return client.publish(`heating/${room}`, "on", { qos: 1 })
      if (celsius > 21) return client.publish(`heating/${room}`, "off", { qos: 1 })
      return Effect.void
    })
  )
})

/** Says it is alive every minute. */
const heartbeat = MqttClient.MqttClient.use((client) =>
  client.publish("thermostat/status", "alive").pipe(Effect.repeat(Schedule.spaced("1 minute")))
)

// ---- the tests ---------------------------------------------------------------------------------------------

const TestMqtt = MqttTestBroker.layerWithClient({
  clientId: "thermostat",
  will: { topic: "thermostat/status", payload: "offline", qos: 1 }
})

describe("thermostat", () => {
  it.effect("turns the heating on when a room is cold, and off when it is warm", () =>
    Effect.gen(function*() {
      const broker = yield* MqttTestBroker.MqttTestBroker
      yield* Effect.forkScoped(thermostat)
      yield* broker.awaitSubscription("sensors/+/temperature")

      yield* broker.publish("sensors/kitchen/temperature", "16.5", { qos: 1 })
      yield* broker.publish("sensors/office/temperature", "19", { qos: 1 })
      yield* broker.publish("sensors/kitchen/temperature", "22", { qos: 1 })
      const commands = yield* broker.awaitPublished("heating/#", 2)

      assert.deepStrictEqual(commands.map((m) => `${m.topic} ${m.text}`), ["heating/kitchen on", "heating/kitchen off"])
    }).pipe(Effect.provide(TestMqtt)))

  it.effect("says it is alive every minute, for hours, on the test clock", () =>
    Effect.gen(function*() {
      const broker = yield* MqttTestBroker.MqttTestBroker
      const client = yield* MqttClient.MqttClient
      yield* Effect.forkScoped(heartbeat)

      yield* TestClock.adjust("3 hours")

      // one at start, then one a minute
      assert.strictEqual((yield* broker.published("thermostat/status")).length, 181)
      // the keepalive pings were answered all along: no reconnection
      assert.strictEqual((yield* client.metrics).reconnects, 0)
    }).pipe(Effect.provide(TestMqtt)))

  it.effect("when the network drops, the broker publishes the will and the thermostat comes back", () =>
    Effect.gen(function*() {
      const broker = yield* MqttTestBroker.MqttTestBroker
      const client = yield* MqttClient.MqttClient
      yield* Effect.forkScoped(thermostat)
      yield* broker.awaitSubscription("sensors/+/temperature")

      yield* broker.disconnect("thermostat")
      const [will] = yield* broker.awaitPublished("thermostat/status")
      assert.strictEqual(will.text, "offline")

      // the client reconnects after its backoff delay, which runs on the test clock too
      yield* TestClock.adjust("1 second")
      yield* broker.awaitClient("thermostat")
      assert.strictEqual((yield* client.metrics).reconnects, 1)

      // and its subscription was restored
      yield* broker.awaitSubscription("sensors/+/temperature")
      yield* broker.publish("sensors/hall/temperature", "12", { qos: 1 })
      const [command] = yield* broker.awaitPublished("heating/#")
      assert.strictEqual(`${command.topic} ${command.text}`, "heating/hall on")
    }).pipe(Effect.provide(TestMqtt)))
})
