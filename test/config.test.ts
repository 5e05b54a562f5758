/**
 * MqttClient.layerConfig: the client configured from the environment through Effect Config.
 */
import { assert, describe, expect, it } from "@effect/vitest"
import { Cause, Config, ConfigProvider, Duration, Effect, Exit, Fiber, Layer, Redacted, Schedule } from "effect"
import { MqttClient, MqttError } from "effect-mqtt"
import * as FakeBroker from "./support/FakeBroker.ts"
import { freePort } from "./support/Mosquitto.ts"

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

  it.live("MQTT_URL with URLs separated by commas is a url list: the client fails over from the first to the second", () =>
    Effect.gen(function*() {
      const down = yield* Effect.promise(() => freePort())
      const broker = yield* FakeBroker.make()
      const layer = MqttClient.layerConfig(MqttClient.config, { reconnect: Schedule.spaced("20 millis") }).pipe(
        withEnv({ MQTT_URL: `mqtt://127.0.0.1:${down}, ${broker.url}` })
      )
      const fiber = yield* Effect.forkChild(Effect.scoped(Effect.flatMap(Layer.build(layer), () => Effect.void)))
      yield* broker.acceptAndConnack()
      yield* Fiber.join(fiber)
      // a comma in a WebSocket URL's query is not a separator
      const parsed = yield* Effect.provide(
        MqttClient.config,
        ConfigProvider.layer(ConfigProvider.fromEnv({ env: { MQTT_URL: "ws://a:80/mqtt?x=1,2, mqtt://b:1883" } }))
      )
      expect(parsed.url).toEqual(["ws://a:80/mqtt?x=1,2", "mqtt://b:1883"])
    }))

  it.effect("MQTT_CONNECT_TIMEOUT takes a duration or, as MQTT_KEEPALIVE, a number of seconds", () =>
    Effect.gen(function*() {
      const read = (value: string) =>
        Effect.provide(
          MqttClient.config,
          ConfigProvider.layer(ConfigProvider.fromEnv({ env: { MQTT_CONNECT_TIMEOUT: value } }))
        ).pipe(Effect.map((options) => Duration.toMillis(Duration.fromInputUnsafe(options.connectTimeout!))))
      expect(yield* read("10 seconds")).toBe(10_000)
      expect(yield* read("10")).toBe(10_000)
      expect(yield* read("2.5")).toBe(2500)
      const bad = yield* Effect.exit(read("ten"))
      expect(bad._tag).toBe("Failure")
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

  it.effect("MQTT_PROTOCOL_VERSION takes the protocol level, the version, or mosquitto_pub's -V names", () =>
    Effect.gen(function*() {
      const cases = [
        ["3", 3],
        ["3.1", 3],
        ["mqttv31", 3],
        ["4", 4],
        ["3.1.1", 4],
        ["mqttv311", 4],
        ["5", 5],
        ["5.0", 5],
        ["mqttv5", 5]
      ] as const
      for (const [value, version] of cases) {
        const options = yield* Effect.provide(
          Effect.gen(function*() {
            return yield* MqttClient.config
          }),
          ConfigProvider.layer(ConfigProvider.fromEnv({ env: { MQTT_PROTOCOL_VERSION: value } }))
        )
        expect([value, options.protocolVersion]).toEqual([value, version])
      }
      const unknown = yield* Effect.exit(Effect.provide(
        Effect.gen(function*() {
          return yield* MqttClient.config
        }),
        ConfigProvider.layer(ConfigProvider.fromEnv({ env: { MQTT_PROTOCOL_VERSION: "3.11" } }))
      ))
      assert(Exit.isFailure(unknown))
    }))

  it.effect("an empty variable counts as unset (docker compose's `${VAR}` of an unset variable): the defaults hold, no TLS", () =>
    Effect.gen(function*() {
      const empty = Object.fromEntries(
        [
          "MQTT_URL",
          "MQTT_CLIENT_ID",
          "MQTT_USERNAME",
          "MQTT_PASSWORD",
          "MQTT_PROTOCOL_VERSION",
          "MQTT_KEEPALIVE",
          "MQTT_CONNECT_TIMEOUT",
          "MQTT_CA_FILE",
          "MQTT_CERT_FILE",
          "MQTT_KEY_FILE",
          "MQTT_KEY_PASSPHRASE",
          "MQTT_TLS_SERVERNAME",
          "MQTT_TLS_MIN_VERSION",
          "MQTT_TLS_ALPN",
          "MQTT_TLS_INSECURE_SKIP_VERIFY"
        ].map((name) => [name, ""])
      )
      const options = yield* Effect.provide(
        Effect.gen(function*() {
          return yield* MqttClient.config
        }),
        ConfigProvider.layer(ConfigProvider.fromEnv({ env: empty }))
      )
      expect(options).toEqual({
        url: "mqtt://localhost:1883",
        clientId: undefined,
        username: undefined,
        password: undefined,
        protocolVersion: undefined,
        keepAlive: undefined,
        connectTimeout: undefined,
        tls: undefined
      })
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

  describe("TLS variables with a plaintext URL", () => {
    const failure = (layer: Layer.Layer<MqttClient.MqttClient, unknown>) =>
      Effect.gen(function*() {
        const exit = yield* Effect.exit(Effect.scoped(Layer.build(layer)))
        assert(Exit.isFailure(exit))
        const error = Cause.squash(exit.cause)
        assert(error instanceof MqttError.InvalidOptionError, String(error))
        return error
      })

    it.live("MQTT_CA_FILE with an mqtt:// MQTT_URL names the variable, and the password stays out", () =>
      Effect.gen(function*() {
        const error = yield* failure(
          MqttClient.layerConfig().pipe(withEnv({
            MQTT_URL: "mqtt://alice:hunter2-secret@127.0.0.1:1",
            MQTT_CA_FILE: "/etc/ssl/ca.pem"
          }))
        )
        assert.strictEqual(error.option, "MQTT_CA_FILE")
        assert.strictEqual(
          error.message,
          "Invalid option \"MQTT_CA_FILE\": MQTT_CA_FILE is set, but the URL (mqtt://127.0.0.1:1) is not encrypted: " +
            "TLS settings need an mqtts:// or wss:// URL (MQTT_URL)"
        )
        expect(error.message).not.toContain("hunter2-secret")
      }))

    it.live("every TLS variable set is named, with the default URL and with ws://", () =>
      Effect.gen(function*() {
        const error = yield* failure(
          MqttClient.layerConfig().pipe(withEnv({
            MQTT_CERT_FILE: "client.pem",
            MQTT_KEY_FILE: "client-key.pem",
            MQTT_TLS_SERVERNAME: "broker"
          }))
        )
        assert.strictEqual(error.option, "MQTT_CERT_FILE")
        expect(error.reason).toContain("MQTT_CERT_FILE, MQTT_KEY_FILE, MQTT_TLS_SERVERNAME are set")
        expect(error.reason).toContain("mqtt://localhost:1883")
        const ws = yield* failure(
          MqttClient.layerConfig().pipe(withEnv({
            MQTT_URL: "ws://127.0.0.1:1/mqtt",
            MQTT_TLS_INSECURE_SKIP_VERIFY: "true"
          }))
        )
        assert.strictEqual(ws.option, "MQTT_TLS_INSECURE_SKIP_VERIFY")
      }))

    it.live("with a Config of the application's own, the error names the option", () =>
      Effect.gen(function*() {
        const custom = Config.succeed<MqttClient.Options>({ url: "mqtt://127.0.0.1:1", tls: { caFile: "ca.pem" } })
        const error = yield* failure(MqttClient.layerConfig(custom))
        assert.strictEqual(error.option, "tls.caFile")
      }))
  })
})

describe("layerConfig overrides of the credentials", () => {
  it.live("a credentials override replaces MQTT_USERNAME and MQTT_PASSWORD (one setting): each CONNECT carries what it returns", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make()
      const layer = MqttClient.layerConfig(MqttClient.config, {
        credentials: () => Effect.succeed({ username: "device-7", password: Redacted.make("token-1") })
      }).pipe(withEnv({ MQTT_URL: broker.url, MQTT_USERNAME: "env-user", MQTT_PASSWORD: "env-secret" }))
      const fiber = yield* Effect.forkChild(Layer.build(layer))
      const { connect } = yield* broker.acceptAndConnack()
      yield* Fiber.join(fiber)
      expect([connect.username, Buffer.from(connect.password!).toString()]).toEqual(["device-7", "token-1"])
    }).pipe(Effect.scoped))
})

describe("layerConfig overrides of the clean-session setting", () => {
  for (
    const [config, override] of [
      [{ cleanSession: false }, { cleanStart: true }],
      [{ cleanStart: false }, { cleanSession: true }]
    ] as const
  ) {
    it.live(`an override ${JSON.stringify(override)} replaces the config's ${JSON.stringify(config)} (one setting, two names)`, () =>
      Effect.gen(function*() {
        const broker = yield* FakeBroker.make()
        const fiber = yield* Effect.forkChild(
          Layer.build(
            MqttClient.layerConfig(
              Config.succeed<MqttClient.Options>({ url: broker.url, clientId: "override", ...config }),
              override
            )
          )
        )
        const { connect } = yield* broker.acceptAndConnack()
        yield* Fiber.join(fiber)
        expect(connect.clean).toBe(true)
      }).pipe(Effect.scoped))
  }
})
