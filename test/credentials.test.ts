/**
 * The `credentials` option: the user name and password asked for before each CONNECT. Against a real Mosquitto
 * whose password changes while the client runs (a token that expires), and the fake broker for what the CONNECTs
 * carry, the provider's failures, defects, wrong answers and hangs, and the nodes of a list.
 */
import { afterAll, assert, beforeAll, describe, expect, it } from "@effect/vitest"
import { Cause, Effect, Exit, Fiber, Option, Redacted, Schedule, Stream } from "effect"
import { MqttClient, MqttError } from "effect-mqtt"
import { execFileSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as FakeBroker from "./support/FakeBroker.ts"
import { freePort, type MosquittoHandle, startMosquitto } from "./support/Mosquitto.ts"

const errorOf = <A, E>(exit: Exit.Exit<A, E>): E => {
  if (!Exit.isFailure(exit)) throw new Error("expected a failure")
  const error = Cause.findErrorOption(exit.cause)
  if (Option.isNone(error)) throw new Error(`expected a typed failure, got ${Cause.pretty(exit.cause)}`)
  return error.value
}

const reconnect = Schedule.spaced("50 millis")

describe("credentials against Mosquitto: the password changes while the client runs", () => {
  let broker: MosquittoHandle
  let dir: string
  let passwordFile: string
  const setPassword = (password: string) =>
    execFileSync("mosquitto_passwd", ["-b", passwordFile, "alice", password], { stdio: "ignore" })

  beforeAll(async () => {
    dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-mqtt-credentials-"))
    passwordFile = Path.join(dir, "passwords")
    execFileSync("mosquitto_passwd", ["-c", "-b", passwordFile, "alice", "token-1"], { stdio: "ignore" })
    broker = await startMosquitto({ protocolConfig: `allow_anonymous false\npassword_file ${passwordFile}` })
  })
  afterAll(async () => {
    await broker?.dispose()
    Fs.rmSync(dir, { recursive: true, force: true })
  })

  for (const protocolVersion of [4, 5] as const) {
    it.live(`MQTT ${protocolVersion === 5 ? "5" : "3.1.1"}: a reconnection presents the password current then; fixed credentials are refused for good`, () =>
      Effect.gen(function*() {
        setPassword("token-1")
        yield* Effect.promise(() => broker.restart())
        let current = "token-1"
        const asked: Array<string | undefined> = []
        const rotating = yield* MqttClient.make({
          url: broker.url,
          protocolVersion,
          reconnect,
          credentials: ({ broker }) =>
            Effect.sync(() => {
              asked.push(broker)
              return { username: "alice", password: Redacted.make(current) }
            })
        })
        // the same broker, the password given once: what a client without `credentials` does
        const fixed = yield* MqttClient.make({
          url: broker.url,
          protocolVersion,
          reconnect,
          username: "alice",
          password: Redacted.make("token-1")
        })
        expect(asked).toEqual([broker.url])
        // the token expires: the broker takes only the new one from now on, and drops its connections
        current = "token-2"
        setPassword("token-2")
        yield* Effect.promise(() => broker.restart())
        const closed = yield* fixed.awaitClose.pipe(Effect.flip)
        assert(closed._tag === "ConnectRefusedError", closed.message)
        yield* rotating.status.pipe(
          Effect.repeat({
            until: (status) => status._tag === "Connected" && asked.length >= 2,
            schedule: Schedule.spaced("50 millis")
          })
        )
        expect(asked.at(-1)).toBe(broker.url)
        // the connection works: a QoS 1 message there and back
        yield* rotating.subscribe("credentials/t", { qos: 1 })
        const received = yield* Effect.forkChild(rotating.messages.pipe(Stream.runHead))
        yield* rotating.publish("credentials/t", "after the new token", { qos: 1 })
        const message = Option.getOrThrow(yield* Fiber.join(received))
        expect(message.text).toBe("after the new token")
      }).pipe(Effect.scoped))
  }
})

describe("credentials: what each CONNECT carries, and the provider's faults (fake broker)", () => {
  const ok = (username: string, password?: string) =>
    Effect.succeed({ username, password: password === undefined ? undefined : Redacted.make(password) })

  it.live("asked before every CONNECT: each carries what the provider returned then", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5, autoPingresp: true })
      let n = 0
      const fiber = yield* Effect.forkChild(MqttClient.make({
        url: broker.url,
        protocolVersion: 5,
        reconnect,
        credentials: () => Effect.suspend(() => ok(`user-${++n}`, `secret-${n}`))
      }))
      const first = yield* broker.acceptAndConnack()
      expect([first.connect.username, String(first.connect.password)]).toEqual(["user-1", "secret-1"])
      const client = yield* Fiber.join(fiber)
      yield* first.connection.destroy
      const second = yield* broker.acceptAndConnack()
      expect([second.connect.username, String(second.connect.password)]).toEqual(["user-2", "secret-2"])
      yield* client.status.pipe(
        Effect.repeat({ until: (status) => status._tag === "Connected", schedule: Schedule.spaced("10 millis") })
      )
    }))

  it.live("a failure fails the first connection with its error; on a reconnection the client tries again", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5, autoPingresp: true })
      const unavailable = new MqttError.ConnectionLostError({ reason: "the token service is down" })
      const first = yield* Effect.exit(MqttClient.make({
        url: broker.url,
        protocolVersion: 5,
        reconnect,
        credentials: () => Effect.fail(unavailable)
      }))
      expect(errorOf(first).message).toContain("the token service is down")
      expect(broker.connections.length).toBe(0)
      // a reconnection: the provider fails twice, then answers
      let n = 0
      const fiber = yield* Effect.forkChild(MqttClient.make({
        url: broker.url,
        protocolVersion: 5,
        reconnect,
        credentials: () => Effect.suspend(() => n++ === 1 || n === 3 ? Effect.fail(unavailable) : ok(`user-${n}`))
      }))
      const one = yield* broker.acceptAndConnack()
      const client = yield* Fiber.join(fiber)
      yield* one.connection.destroy
      const two = yield* broker.acceptAndConnack()
      expect(two.connect.username).toBe("user-4")
      expect(n).toBe(4)
      yield* client.status.pipe(
        Effect.repeat({ until: (status) => status._tag === "Connected", schedule: Schedule.spaced("10 millis") })
      )
    }))

  it.live("a provider that dies or throws: ConnectionLostError (\"credentials died\"), no socket opened, no defect", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5 })
      for (
        const credentials of [
          () => Effect.die(new Error("vault sealed")),
          () => {
            throw new Error("vault sealed")
          }
        ]
      ) {
        const exit = yield* Effect.exit(
          MqttClient.make({ url: broker.url, protocolVersion: 5, reconnect: false, credentials })
        )
        const error = errorOf(exit)
        assert(error._tag === "ConnectionLostError", error.message)
        expect(error.message).toContain("credentials died: vault sealed")
      }
      // untyped code failing with something that is no MqttError: still an MqttError
      const untyped = errorOf(
        yield* Effect.exit(MqttClient.make({
          url: broker.url,
          protocolVersion: 5,
          reconnect: false,
          credentials: () => Effect.fail(new Error("vault sealed")) as never
        }))
      )
      assert(untyped._tag === "ConnectionLostError", String(untyped))
      expect(untyped.message).toContain("credentials failed: vault sealed")
      expect(broker.connections.length).toBe(0)
    }))

  it.live("a wrong answer is an InvalidOptionError, final: nothing is sent, a reconnecting client gives up", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 4 })
      const answers: ReadonlyArray<[unknown, string]> = [
        [Effect.succeed({ username: 42 }), "the username given is not a string"],
        [Effect.succeed({ username: "u", password: "plain" }), "not a Redacted string"],
        [Effect.succeed(null), "expected an Effect of { username, password }"],
        [Promise.resolve({ username: "u" }), "expected a function returning an Effect"],
        // MQTT 3.1.1: a password needs a user name [MQTT-3.1.2-22]
        [Effect.succeed({ password: Redacted.make("p") }), "user name"]
      ]
      for (const [answer, reason] of answers) {
        const exit = yield* Effect.exit(MqttClient.make({
          url: broker.url,
          protocolVersion: 4,
          reconnect,
          retryFirstConnect: true,
          credentials: (() => answer) as unknown as MqttClient.Options["credentials"]
        }))
        const error = errorOf(exit)
        assert(error._tag === "InvalidOptionError", error.message)
        expect(error.option).toBe("credentials")
        expect(error.message).toContain(reason)
      }
      expect(broker.connections.length).toBe(0)
    }))

  it.live("a provider that never answers: MqttTimeoutError within connectTimeout", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5 })
      const exit = yield* Effect.exit(MqttClient.make({
        url: broker.url,
        protocolVersion: 5,
        reconnect: false,
        connectTimeout: "200 millis",
        credentials: () => Effect.never
      }))
      const error = errorOf(exit)
      assert(error._tag === "MqttTimeoutError", error.message)
      expect(error.operation).toBe("connect")
    }))

  it.live("asked for each node of a list, with that node's URL", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5, autoPingresp: true })
      const down = `mqtt://127.0.0.1:${yield* Effect.promise(() => freePort())}`
      const asked: Array<string | undefined> = []
      const fiber = yield* Effect.forkChild(MqttClient.make({
        url: [down, broker.url],
        protocolVersion: 5,
        reconnect,
        credentials: ({ broker }) => Effect.sync(() => asked.push(broker)).pipe(Effect.as({ username: "u" }))
      }))
      yield* broker.acceptAndConnack()
      yield* Fiber.join(fiber)
      expect(asked).toEqual([down, broker.url])
    }))

  it.effect("not with username, password or user info in url: InvalidOptionError before anything is sent", () =>
    Effect.gen(function*() {
      const credentials = () => ok("u")
      for (
        const [options, given] of [
          [{ url: "mqtt://127.0.0.1:1", username: "u" }, "given with username"],
          [{ url: "mqtt://127.0.0.1:1", password: Redacted.make("p") }, "given with password"],
          [{ url: "mqtt://u:p@127.0.0.1:1" }, "given with the user info of url"],
          [{ url: ["mqtt://127.0.0.1:1", "mqtt://u@127.0.0.1:2"] }, "given with the user info of url[1]"]
        ] as const
      ) {
        const error = errorOf(yield* Effect.exit(MqttClient.make({ ...options, credentials })))
        assert(error._tag === "InvalidOptionError", error.message)
        expect(error.message).toContain(given)
      }
      const notAFunction = errorOf(
        yield* Effect.exit(MqttClient.make({ url: "mqtt://127.0.0.1:1", credentials: "token" as never }))
      )
      expect(notAFunction.message).toContain("expected a function")
    }))
})
