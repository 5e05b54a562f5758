/**
 * The client's log lines (issue 10): connected at Info, a lost connection or failed attempt with its cause and
 * the delay before the next attempt at Warn, giving up at Error; `logLevel` chooses which are written; no line
 * ever contains a password, whether it came from the options or from the URL.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Effect, Fiber, Logger, Redacted, References, Schedule } from "effect"
import { MqttClient } from "effect-mqtt"
import { execFileSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import * as FakeBroker from "./support/FakeBroker.ts"
import { type MosquittoHandle, startMosquitto } from "./support/Mosquitto.ts"

const password = "s3cr3t-Passw0rd-Never-Logged"
let secured: MosquittoHandle
let dir: string

beforeAll(async () => {
  dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-mqtt-logging-"))
  const passwordFile = Path.join(dir, "passwords")
  execFileSync("mosquitto_passwd", ["-c", "-b", passwordFile, "alice", password])
  secured = await startMosquitto({ protocolConfig: `allow_anonymous false\npassword_file ${passwordFile}` })
})

afterAll(async () => {
  await secured?.dispose()
  Fs.rmSync(dir, { recursive: true, force: true })
})

/** Runs an effect with a logger that keeps every line (level and message, annotations included). */
const captured = <A, E>(effect: Effect.Effect<A, E>) =>
  Effect.gen(function*() {
    const lines: Array<string> = []
    const collector = Logger.make((options) => {
      lines.push(
        `${options.logLevel} ${String(options.message)} ${
          JSON.stringify(options.fiber.getRef(References.CurrentLogAnnotations))
        }`
      )
    })
    const exit = yield* Effect.exit(Effect.provide(effect, Logger.layer([collector])))
    return { lines, exit }
  })

const closedPort = () =>
  new Promise<number>((resolve) => {
    const server = Net.createServer()
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as Net.AddressInfo
      server.close(() => resolve(port))
    })
  })

describe("log lines", () => {
  it.live(
    "what the session warns of (a stray UNSUBACK) goes through the application's logger at Warn, naming the broker, and logLevel filters it",
    () =>
      Effect.gen(function*() {
        const strayUnsuback = (logLevel: MqttClient.Options["logLevel"]) =>
          captured(Effect.scoped(Effect.gen(function*() {
            const broker = yield* FakeBroker.make()
            const fiber = yield* Effect.forkChild(MqttClient.make({ url: broker.url, logLevel }))
            const { connection } = yield* broker.acceptAndConnack()
            const client = yield* Fiber.join(fiber)
            yield* connection.send({ cmd: "unsuback", messageId: 5 } as never)
            // a publish answered: the UNSUBACK before it has been read
            const pending = yield* Effect.forkChild(client.publish("p", "x", { qos: 1 }))
            const publish = yield* connection.expect("publish")
            yield* connection.send({ cmd: "puback", messageId: publish.messageId! })
            yield* Fiber.join(pending)
            yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 20)))
            return broker.url
          })))
        const warned = yield* strayUnsuback("Warn")
        const lines = warned.lines.filter((line) => line.includes("not in flight"))
        assert.strictEqual(lines.length, 1, warned.lines.join("\n"))
        assert.match(lines[0], /^Warn /)
        assert.include(lines[0], `"broker":"${(warned.exit as { value: string }).value}"`)
        const quiet = yield* strayUnsuback("Error")
        assert.deepStrictEqual(quiet.lines.filter((line) => line.includes("not in flight")), [])
      })
  )

  it.live("connected is logged at Info when logLevel is Info, naming the broker, and not at the default Warn", () =>
    Effect.gen(function*() {
      const url = secured.url.replace("mqtt://", "mqtt://alice:" + password + "@")
      const info = yield* captured(Effect.scoped(MqttClient.make({ url, logLevel: "Info" })))
      assert.strictEqual(info.exit._tag, "Success", String(info.exit))
      const connected = info.lines.filter((line) => line.startsWith("Info") && line.includes("MQTT connected"))
      assert.strictEqual(connected.length, 1, info.lines.join("\n"))
      assert.include(connected[0], `127.0.0.1:${secured.port}`)
      const quiet = yield* captured(Effect.scoped(MqttClient.make({ url })))
      assert.deepStrictEqual(quiet.lines, [])
      for (const line of [...info.lines, ...quiet.lines]) assert.notInclude(line, password)
    }))

  it.live("a refused login (wrong password, in the URL and in the options) gives up with an Error line, never the password", () =>
    Effect.gen(function*() {
      const wrong = password + "-wrong"
      for (
        const options of [
          { url: secured.url.replace("mqtt://", `mqtt://alice:${encodeURIComponent(wrong)}@`) },
          { url: secured.url, username: "alice", password: Redacted.make(wrong) }
        ]
      ) {
        const { lines, exit } = yield* captured(Effect.scoped(Effect.gen(function*() {
          const client = yield* MqttClient.make({
            ...options,
            logLevel: "Info",
            retryFirstConnect: true,
            reconnect: Schedule.spaced("10 millis")
          })
          return yield* client.awaitClose
        })))
        assert.strictEqual(exit._tag, "Failure")
        assert.isTrue(lines.some((line) => line.startsWith("Error") && /refused/.test(line)), lines.join("\n"))
        for (const line of lines) {
          assert.notInclude(line, wrong)
          assert.notInclude(line, encodeURIComponent(wrong))
        }
      }
    }))

  it.live("a broker that is not there: each failed attempt is a Warn line with the cause and the next delay; giving up is an Error line", () =>
    Effect.gen(function*() {
      const port = yield* Effect.promise(closedPort)
      const { lines, exit } = yield* captured(
        Effect.scoped(MqttClient.make({
          url: `mqtt://bob:${password}@127.0.0.1:${port}`,
          retryFirstConnect: true,
          reconnect: Schedule.spaced("10 millis").pipe(Schedule.upTo({ times: 3 }))
        }))
      )
      assert.strictEqual(exit._tag, "Failure")
      const warnings = lines.filter((line) => line.startsWith("Warn"))
      assert.isAtLeast(warnings.length, 3, lines.join("\n"))
      assert.isTrue(lines.some((line) => line.startsWith("Error") && line.includes("gave up")), lines.join("\n"))
      for (const warning of warnings) {
        assert.match(warning, /could not connect/i)
        assert.match(warning, /next attempt in \d+ms/)
        assert.include(warning, `127.0.0.1:${port}`)
      }
      for (const line of lines) assert.notInclude(line, password)
    }))

  it.live("with reconnect off, a lost connection stops the client with a Warn line, not the Error line of a client that gave up", () =>
    Effect.gen(function*() {
      const { lines } = yield* captured(Effect.scoped(Effect.gen(function*() {
        const broker = yield* FakeBroker.make()
        const fiber = yield* Effect.forkChild(MqttClient.make({ url: broker.url, reconnect: false }))
        const { connection } = yield* broker.acceptAndConnack()
        const client = yield* Fiber.join(fiber)
        yield* connection.close
        return yield* Effect.exit(client.awaitClose)
      })))
      const stopped = lines.filter((line) => line.includes("reconnect is off"))
      assert.strictEqual(stopped.length, 1, lines.join("\n"))
      assert.match(stopped[0], /^Warn /)
      assert.isFalse(lines.some((line) => line.startsWith("Error")), lines.join("\n"))
    }))

  it.live("logLevel None writes nothing, even when the client gives up", () =>
    Effect.gen(function*() {
      const port = yield* Effect.promise(closedPort)
      const { lines, exit } = yield* captured(
        Effect.scoped(MqttClient.make({
          url: `mqtt://127.0.0.1:${port}`,
          logLevel: "None",
          retryFirstConnect: true,
          reconnect: Schedule.recurs(2)
        }))
      )
      assert.strictEqual(exit._tag, "Failure")
      assert.deepStrictEqual(lines, [])
    }))
})
