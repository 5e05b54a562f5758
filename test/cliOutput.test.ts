/**
 * The pure parts of the command line: how `sub` renders a message, how `pub` reads `--user-property`, and which
 * exit code each failure gets. The command line itself is tested as a process in cli.test.ts.
 */
import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Exit } from "effect"
import { type MqttClient, MqttError, MqttMessage } from "effect-mqtt"
import * as CliError from "effect/cli/CliError"
import { describeStatus } from "../src/cli/connection.ts"
import { ExitCode, exitCodeOf, TimedOutError, UsageError } from "../src/cli/errors.ts"
import { render, toJson } from "../src/cli/output.ts"
import { parseUserProperty } from "../src/cli/pub.ts"

const message = (payload: Uint8Array, properties?: MqttMessage.MessageProperties) =>
  new MqttMessage.MqttMessage("a/b", payload, 1, false, false, properties)

const bytes = (...values: Array<number>) => Uint8Array.from(values)
const utf8 = (text: string) => new TextEncoder().encode(text)

describe("render", () => {
  it("text: the payload's bytes and a newline; -v puts the topic and a space first", () => {
    const payload = bytes(0xff, 0x00, 0x0a)
    assert.deepStrictEqual(render(message(payload), { format: "text", verbose: false }), bytes(0xff, 0x00, 0x0a, 0x0a))
    assert.deepStrictEqual(
      render(message(payload), { format: "text", verbose: true }),
      Uint8Array.from([...utf8("a/b "), 0xff, 0x00, 0x0a, 0x0a])
    )
  })

  it("json: one line, ignoring -v", () => {
    const line = new TextDecoder().decode(render(message(utf8("x")), { format: "json", verbose: true }))
    assert.isTrue(line.endsWith("}\n"))
    assert.strictEqual(line.indexOf("\n"), line.length - 1)
    assert.deepStrictEqual(JSON.parse(line), toJson(message(utf8("x"))))
  })
})

describe("toJson", () => {
  it("valid UTF-8 (multi-byte, a byte-order mark, empty) stays text, exactly", () => {
    for (const text of ["héllo ✓ 😀", "\uFEFFbom", ""]) {
      const json = toJson(message(utf8(text)))
      assert.strictEqual(json.payloadEncoding, "utf8")
      assert.strictEqual(json.payload, text)
    }
  })

  it("invalid UTF-8 (a lone continuation byte, a truncated sequence, an overlong form) becomes base64", () => {
    for (const payload of [bytes(0x80), bytes(0x61, 0xe2, 0x82), bytes(0xc0, 0xaf)]) {
      const json = toJson(message(payload))
      assert.strictEqual(json.payloadEncoding, "base64")
      assert.deepStrictEqual(Uint8Array.from(Buffer.from(json.payload, "base64")), payload)
    }
  })

  it("properties: those present, correlation data in base64, user properties as ordered pairs", () => {
    const json = toJson(message(utf8("x"), {
      payloadFormatIndicator: false,
      messageExpiryInterval: 0,
      contentType: "text/plain",
      responseTopic: "r",
      correlationData: bytes(0xde, 0xad),
      userProperties: [["k", "1"], ["k", "2"], ["a", ""]],
      subscriptionIdentifiers: [3, 7]
    }))
    assert.deepStrictEqual(json.properties, {
      payloadFormatIndicator: false,
      messageExpiryInterval: 0,
      contentType: "text/plain",
      responseTopic: "r",
      correlationData: "3q0=",
      userProperties: [["k", "1"], ["k", "2"], ["a", ""]],
      subscriptionIdentifiers: [3, 7]
    })
    assert.deepStrictEqual(
      toJson(message(utf8("x"), { userProperties: [], subscriptionIdentifiers: [] })).properties,
      {}
    )
  })
})

describe("parseUserProperty", () => {
  it("splits at the first '='; the value may be empty or hold '='", () => {
    assert.deepStrictEqual(Effect.runSync(parseUserProperty("k=v=w")), ["k", "v=w"])
    assert.deepStrictEqual(Effect.runSync(parseUserProperty("k=")), ["k", ""])
  })

  it("no name, or no '=': a UsageError", () => {
    for (const text of ["=v", "k", ""]) {
      const exit = Effect.runSyncExit(parseUserProperty(text))
      assert.isTrue(Exit.isFailure(exit), text)
    }
  })
})

describe("exitCodeOf", () => {
  it("usage: the command line's own errors, the CLI module's, the client's invalid input, a bad variable", () => {
    const usage = [
      new UsageError({ message: "x" }),
      new CliError.MissingOption({ option: "topic" }),
      new MqttError.InvalidOptionError({ option: "protocolVersion", reason: "x" }),
      new MqttError.InvalidTopicError({ topic: "a/#", kind: "name", reason: "x" }),
      { _tag: "ConfigError", message: "x" }
    ]
    for (const error of usage) assert.strictEqual(exitCodeOf(error), ExitCode.usage, String(error))
  })

  it("connection: refusals, lost connections, timeouts, TLS failures", () => {
    const connection = [
      new MqttError.ConnectRefusedError({ reasonCode: 5, protocolVersion: 4 }),
      new MqttError.ConnectionLostError({ reason: "x" }),
      new MqttError.TimeoutError({ operation: "connect", millis: 1 }),
      new MqttError.TlsError({ kind: "HandshakeFailed", reason: "x" }),
      new MqttError.SubscribeError({ filter: "a", reasonCode: 0x87 }),
      new MqttError.PublishError({ topic: "a", reasonCode: 0x87 })
    ]
    for (const error of connection) assert.strictEqual(exitCodeOf(error), ExitCode.connection, error._tag)
  })

  it("sub -C -W out of time: 3", () => {
    assert.strictEqual(exitCodeOf(new TimedOutError({ seconds: 1, received: 0, expected: 1 })), ExitCode.timedOut)
  })
})

describe("--debug's connection lines", () => {
  it("name the protocol version in use: MQTT 3.1 (-V 3), 3.1.1 or 5.0", () => {
    const info = (protocolVersion: 3 | 4 | 5): MqttClient.ConnectionInfo => ({
      protocolVersion,
      clientId: "c",
      sessionPresent: false,
      keepAlive: 60,
      receiveMaximum: 65535,
      maximumQoS: 2,
      retainAvailable: true,
      maximumPacketSize: undefined,
      topicAliasMaximum: 0,
      sessionExpiryInterval: undefined,
      reasonString: undefined,
      userProperties: [],
      wildcardSubscriptionAvailable: true,
      subscriptionIdentifiersAvailable: true,
      sharedSubscriptionAvailable: true,
      responseInformation: undefined,
      serverReference: undefined
    })
    const line = (version: 3 | 4 | 5) => describeStatus({ _tag: "Connected", info: info(version) })
    assert.include(line(3), "(MQTT 3.1, keepalive 60 s")
    assert.include(line(4), "(MQTT 3.1.1, keepalive 60 s")
    assert.include(line(5), "(MQTT 5.0, keepalive 60 s")
  })

  it("give the delay before the next attempt to the millisecond", () => {
    const cause = new MqttError.ConnectionLostError({ reason: "the connection was reset" })
    const line = describeStatus({ _tag: "Disconnected", cause, retryIn: Duration.nanos(1_268_037_152n) })
    assert.match(line, /; retrying in 1s 268ms$/)
    assert.strictEqual(
      describeStatus({ _tag: "Disconnected", cause, retryIn: Duration.nanos(80_219_129n) }).endsWith(
        "retrying in 80ms"
      ),
      true
    )
  })
})
