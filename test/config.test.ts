/**
 * MqttClient.layerConfig: the client configured from the environment through Effect Config.
 */
import { assert, describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Exit, Fiber, Layer } from "effect"
import { MqttClient } from "effect-mqtt"
import * as FakeBroker from "./support/FakeBroker.ts"

const withEnv = (env: Record<string, string>) => Layer.provide(ConfigProvider.layer(ConfigProvider.fromEnv({ env })))

describe("layerConfig", () => {
  it.live("reads MQTT_URL, MQTT_CLIENT_ID, MQTT_USERNAME, MQTT_PASSWORD, MQTT_PROTOCOL_VERSION and MQTT_KEEPALIVE", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5 })
      const layer = MqttClient.layerConfig().pipe(withEnv({
        MQTT_URL: broker.url,
        MQTT_CLIENT_ID: "from-env",
        MQTT_USERNAME: "env-user",
        MQTT_PASSWORD: "env-secret",
        MQTT_PROTOCOL_VERSION: "5",
        MQTT_KEEPALIVE: "33"
      }))
      const fiber = yield* Effect.forkChild(
        Effect.scoped(Effect.flatMap(Layer.build(layer), () => Effect.void))
      )
      const { connect } = yield* broker.acceptAndConnack()
      yield* Fiber.join(fiber)
      expect(connect.clientId).toBe("from-env")
      expect(connect.username).toBe("env-user")
      expect(Buffer.from(connect.password!).toString()).toBe("env-secret")
      expect(connect.protocolVersion).toBe(5)
      expect(connect.keepalive).toBe(33)
    }))

  it.live("overrides given in code win over the environment", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make()
      const layer = MqttClient.layerConfig(MqttClient.config, { clientId: "from-code", keepAlive: 7 }).pipe(
        withEnv({ MQTT_URL: broker.url, MQTT_CLIENT_ID: "from-env" })
      )
      const fiber = yield* Effect.forkChild(Effect.scoped(Effect.flatMap(Layer.build(layer), () => Effect.void)))
      const { connect } = yield* broker.acceptAndConnack()
      yield* Fiber.join(fiber)
      expect(connect.clientId).toBe("from-code")
      expect(connect.keepalive).toBe(7)
      expect(connect.protocolVersion).toBe(4)
    }))

  it.live("an invalid variable is a ConfigError naming it, and the password never shows in it", () =>
    Effect.gen(function*() {
      const layer = MqttClient.layerConfig().pipe(
        withEnv({ MQTT_PROTOCOL_VERSION: "7", MQTT_PASSWORD: "hunter2-secret" })
      )
      const exit = yield* Effect.exit(Effect.scoped(Layer.build(layer)))
      assert(Exit.isFailure(exit))
      const printed = String(exit.cause) + JSON.stringify(exit.cause)
      expect(printed).toContain("MQTT_PROTOCOL_VERSION")
      expect(printed).not.toContain("hunter2-secret")
    }))
})
