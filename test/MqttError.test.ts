/**
 * The errors' messages: they name the broker (never its password), tell a connection that never existed from one
 * that was lost, name the MQTT 3.1.1 CONNACK return codes, and say what to check. And the client's timeout has a
 * tag of its own, so that `catchTag("TimeoutError")` after `Effect.timeout` does not catch it.
 */
import { assert, describe, expect, it } from "@effect/vitest"
import { Aedes } from "aedes"
import { Cause, Effect, Exit, Fiber } from "effect"
import { MqttClient, MqttError } from "effect-mqtt"
import { TestClock } from "effect/testing"
import * as Net from "node:net"
import * as Broker from "../src/internal/broker.ts"

/** A real Node.js socket error: a connection to a port of 127.0.0.1 that nothing listens on. */
const refusedConnection = Effect.callback<NodeJS.ErrnoException>((resume) => {
  const server = Net.createServer()
  server.listen(0, "127.0.0.1", () => {
    const { port } = server.address() as Net.AddressInfo
    server.close(() => {
      const socket = Net.connect({ host: "127.0.0.1", port })
      socket.once("error", (error) => resume(Effect.succeed(error)))
    })
  })
})

describe("MqttTimeoutError", () => {
  const timeout = new MqttError.MqttTimeoutError({ operation: "ping", millis: 500 })

  it.effect("catchTag(\"TimeoutError\") after Effect.timeout catches Effect's timeout, not the client's", () =>
    Effect.gen(function*() {
      const caught = yield* Effect.fail(timeout).pipe(
        Effect.timeout("1 minute"),
        Effect.catchTag("TimeoutError", () => Effect.succeed("caught as Effect's TimeoutError")),
        Effect.exit
      )
      assert.deepStrictEqual(caught, Exit.fail(timeout))

      // and Effect's own timeout is still caught by it
      const fiber = yield* Effect.never.pipe(
        Effect.timeout("1 second"),
        Effect.catchTag("TimeoutError", (error) => Effect.succeed(Cause.isTimeoutError(error))),
        Effect.forkChild
      )
      yield* TestClock.adjust("1 second")
      assert.isTrue(yield* Fiber.join(fiber))
    }))

  it.effect("catchTag(\"MqttTimeoutError\") catches the client's timeout", () =>
    Effect.gen(function*() {
      const millis = yield* Effect.fail(timeout).pipe(
        Effect.catchTag("MqttTimeoutError", (error) => Effect.succeed(error.millis))
      )
      assert.strictEqual(millis, 500)
    }))

  it("the deprecated TimeoutError is the same class, with the new tag, and a connection error", () => {
    const old = new MqttError.TimeoutError({ operation: "connect", millis: 10 })
    assert.instanceOf(old, MqttError.MqttTimeoutError)
    assert.strictEqual(old._tag, "MqttTimeoutError")
    assert.isTrue(MqttError.isConnectionError(old))
    assert.isTrue(MqttError.isMqttError(old))
  })

  it("names the broker and the limit, and says what to check", () => {
    const connect = new MqttError.MqttTimeoutError({ operation: "connect", millis: 3000, broker: "mqtt://h:1883" })
    expect(connect.message).toContain("The broker at mqtt://h:1883 did not accept the connection within 3000 ms")
    expect(connect.message).toContain("mqtts://")
    expect(connect.message).toContain("connectTimeout")
    const ping = new MqttError.MqttTimeoutError({ operation: "ping", millis: 500, broker: "mqtt://h:1883" })
    expect(ping.message).toContain("No PINGRESP from the broker at mqtt://h:1883 within 500 ms")
    const request = new MqttError.MqttTimeoutError({ operation: "request", millis: 5000 })
    expect(request.message).toContain("No response to the request within 5000 ms")
  })
})

describe("ConnectRefusedError", () => {
  it("names every MQTT 3.1.1 CONNACK return code", () => {
    const names = [1, 2, 3, 4, 5].map((reasonCode) =>
      new MqttError.ConnectRefusedError({ reasonCode, protocolVersion: 4 }).message
    )
    expect(names[0]).toContain("unacceptable protocol version (return code 1)")
    expect(names[1]).toContain("identifier rejected (return code 2)")
    expect(names[2]).toContain("server unavailable (return code 3)")
    expect(names[3]).toContain("bad user name or password (return code 4)")
    expect(names[4]).toContain("not authorized (return code 5)")
    for (const name of names) expect(name).not.toContain("unknown reason")
  })

  it("an MQTT 5 CONNECT refused by an MQTT 3.1.1 broker (code 1 in a v5 CONNACK) says to use protocolVersion: 4", () => {
    const error = new MqttError.ConnectRefusedError({ reasonCode: 1, protocolVersion: 5, broker: "mqtt://h:1883" })
    assert.strictEqual(
      error.message,
      "The broker at mqtt://h:1883 does not support MQTT 5: it answered with the MQTT 3.1.1 return code 1 " +
        "(unacceptable protocol version). Use protocolVersion: 4"
    )
    const v5 = new MqttError.ConnectRefusedError({ reasonCode: 0x84, protocolVersion: 5 })
    expect(v5.message).toContain("unsupported protocol version (reason code 0x84)")
    expect(v5.message).toContain("Use protocolVersion: 4")
  })

  it.live("an MQTT 5 client refused by a real MQTT 3.1.1 broker (aedes) is told to use protocolVersion: 4", () =>
    Effect.gen(function*() {
      const url = yield* Effect.acquireRelease(
        Effect.promise(async () => {
          const aedes = await Aedes.createBroker()
          const server = Net.createServer(aedes.handle)
          await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
          return { aedes, server, port: (server.address() as Net.AddressInfo).port }
        }),
        ({ aedes, server }) =>
          Effect.promise(() => new Promise<void>((resolve) => aedes.close(() => server.close(() => resolve()))))
      ).pipe(Effect.map(({ port }) => `mqtt://127.0.0.1:${port}`))
      const error = yield* Effect.flip(Effect.scoped(MqttClient.make({ url, protocolVersion: 5 })))
      assert(error instanceof MqttError.ConnectRefusedError, String(error))
      // the 3.1.1 CONNACK's return code 1 is read as MQTT 5's 0x84 (Unsupported Protocol Version)
      assert.deepStrictEqual([error.reasonCode, error.protocolVersion], [0x84, 5])
      expect(error.message).toContain("does not support MQTT 5")
      expect(error.message).toMatch(/use protocolVersion:? 4/i)
    }))

  it("names the broker, keeps the MQTT 5 reason string and says what to check", () => {
    const error = new MqttError.ConnectRefusedError({
      reasonCode: 0x86,
      reasonString: "no such user",
      protocolVersion: 5,
      broker: "mqtts://broker.example:8883"
    })
    assert.strictEqual(
      error.message,
      "The broker at mqtts://broker.example:8883 refused the connection: bad user name or password " +
        "(reason code 0x86: no such user). Check username and password (MQTT_USERNAME, MQTT_PASSWORD, the user " +
        "info of the URL, or what `credentials` returned)"
    )
    const v4 = new MqttError.ConnectRefusedError({ reasonCode: 5, protocolVersion: 4 })
    expect(v4.message).toContain("the broker's access rules for this user")
    const moved = new MqttError.ConnectRefusedError({ reasonCode: 0x9d, protocolVersion: 5, serverReference: "b2" })
    expect(moved.message).toContain("server moved")
    expect(moved.message).toContain("The broker suggests b2.")
  })
})

describe("PublishError, SubscribeError, UnsubscribeError", () => {
  it("name the reason code (MQTT 5 sections 3.4.2.1, 3.9.3, 3.11.3), with the broker's reason string when it sent one", () => {
    expect(new MqttError.PublishError({ topic: "secret/a", reasonCode: 0x87 }).message).toBe(
      "The broker refused the publish to \"secret/a\" (reason code 0x87, not authorized)"
    )
    expect(new MqttError.SubscribeError({ filter: "a/#", reasonCode: 0xa2, reasonString: "no" }).message).toBe(
      "The broker refused the subscription to \"a/#\" (reason code 0xa2, wildcard subscriptions not supported: no)"
    )
    expect(new MqttError.UnsubscribeError({ filter: "a", reasonCode: 0x8f }).message).toContain(
      "(reason code 0x8f, topic filter invalid)"
    )
    // a code with no name is given as it is
    expect(new MqttError.PublishError({ topic: "t", reasonCode: 0xff }).message).toContain("(reason code 0xff)")
  })
})

describe("ConnectionLostError", () => {
  it.live("a connection that was never established says it could not connect, names the broker and a hint", () =>
    Effect.gen(function*() {
      const cause = yield* refusedConnection
      assert.strictEqual(cause.code, "ECONNREFUSED")
      const error = new MqttError.ConnectionLostError({
        reason: `could not connect: ${cause.message}`,
        cause,
        phase: "connecting",
        broker: "mqtt://127.0.0.1:1"
      })
      expect(error.message).toMatch(/^Could not connect to the broker at mqtt:\/\/127\.0\.0\.1:1: connect ECONNREFUSED/)
      expect(error.message).toContain("check the host and port of the URL, and that the broker is running")
      expect(error.message).not.toContain("lost")
    }))

  it("the hint follows the network error's code, read from the cause or from the reason", () => {
    const byReason = new MqttError.ConnectionLostError({
      reason: "getaddrinfo ENOTFOUND no-such-host.invalid",
      phase: "connecting",
      broker: "mqtt://no-such-host.invalid:1883"
    })
    expect(byReason.message).toContain("The host name does not resolve: check the host of the URL")
    const unknown = new MqttError.ConnectionLostError({ reason: "something odd", phase: "connecting" })
    assert.strictEqual(unknown.message, "Could not connect to the broker: something odd")
  })

  it("a connection that was up says it was lost, with the broker and the MQTT 5 DISCONNECT reason", () => {
    const error = new MqttError.ConnectionLostError({
      reason: "the broker sent DISCONNECT",
      reasonCode: 0x8b,
      reasonString: "shutting down",
      phase: "connected",
      broker: "ws://h:80/mqtt"
    })
    assert.strictEqual(
      error.message,
      "The connection to the broker at ws://h:80/mqtt was lost: the broker sent DISCONNECT (reason code 0x8b: " +
        "shutting down)"
    )
  })
})

describe("TlsError", () => {
  it("an untrusted certificate suggests tls.ca or tls.caFile, and names the broker", () => {
    const error = new MqttError.TlsError({
      kind: "ServerCertificateUntrusted",
      reason: "self-signed certificate in certificate chain",
      code: "SELF_SIGNED_CERT_IN_CHAIN",
      broker: "mqtts://h:8883"
    })
    expect(error.message).toContain("TLS with the broker at mqtts://h:8883 failed (the broker's certificate is not")
    expect(error.message).toContain("[SELF_SIGNED_CERT_IN_CHAIN]")
    expect(error.message).toContain("tls.ca or tls.caFile (MQTT_CA_FILE)")
  })

  it("every kind says what to check", () => {
    const hints = {
      ServerCertificateUntrusted: "tls.caFile",
      HostnameMismatch: "tls.servername",
      ClientCertificateRequired: "tls.certFile",
      ClientCertificateRejected: "signed by an authority the broker trusts",
      HandshakeFailed: "TLS listener"
    } as const
    for (const [kind, hint] of Object.entries(hints)) {
      expect(new MqttError.TlsError({ kind: kind as keyof typeof hints, reason: "r" }).message).toContain(hint)
    }
  })
})

describe("the broker in messages", () => {
  it("is scheme://host:port, with the default port, the WebSocket path, and a Unix socket's path", () => {
    assert.strictEqual(Broker.display("mqtt://broker.example"), "mqtt://broker.example:1883")
    assert.strictEqual(Broker.display("tcp://broker.example:1884"), "tcp://broker.example:1884")
    assert.strictEqual(Broker.display("mqtts://broker.example"), "mqtts://broker.example:8883")
    assert.strictEqual(Broker.display("ws://broker.example"), "ws://broker.example:80/mqtt")
    assert.strictEqual(Broker.display("wss://broker.example/"), "wss://broker.example:443/")
    assert.strictEqual(Broker.display("wss://broker.example:8084/ws"), "wss://broker.example:8084/ws")
    assert.strictEqual(Broker.display("mqtt://[::1]:1883"), "mqtt://[::1]:1883")
    assert.strictEqual(Broker.display("unix:///run/mosquitto.sock"), "unix:///run/mosquitto.sock")
  })

  it("never holds user info, a query string or a fragment", () => {
    const secret = "s3cr3t-p4ss"
    for (
      const url of [
        `mqtt://alice:${secret}@broker.example:1883`,
        `mqtts://${secret}@broker.example`,
        `wss://alice:${secret}@broker.example/mqtt?X-Amz-Signature=${secret}#${secret}`,
        `ws://broker.example/mqtt?token=${secret}`
      ]
    ) {
      const broker = Broker.display(url)
      assert.isDefined(broker, url)
      assert.notInclude(broker, secret)
      assert.notInclude(broker, "alice")
      const error = new MqttError.ConnectRefusedError({ reasonCode: 4, protocolVersion: 4, ...{ broker } })
      assert.notInclude(error.message, secret)
    }
  })

  it("is undefined for what cannot be shown safely: not a URL, an unknown scheme, no host", () => {
    assert.isUndefined(Broker.display("not a url"))
    assert.isUndefined(Broker.display("http://broker.example"))
    assert.isUndefined(Broker.display("mqtt://"))
    assert.isUndefined(Broker.display("unix://host/path"))
  })
})

describe("annotate: the broker and the phase added to an error by the client", () => {
  it.live("a failed connection as the client raises it becomes could-not-connect, at the broker, with a hint", () =>
    Effect.gen(function*() {
      const cause = yield* refusedConnection
      const raised = new MqttError.ConnectionLostError({ reason: `could not connect: ${cause.message}`, cause })
      const annotated = Broker.annotate(raised, Broker.display("mqtt://alice:secret@127.0.0.1:1"), "connecting")
      assert(annotated instanceof MqttError.ConnectionLostError)
      assert.strictEqual(annotated.phase, "connecting")
      assert.strictEqual(annotated.broker, "mqtt://127.0.0.1:1")
      assert.strictEqual(annotated.cause, cause)
      expect(annotated.message).toMatch(/^Could not connect to the broker at mqtt:\/\/127\.0\.0\.1:1: connect ECONN/)
      expect(annotated.message).toContain("check the host and port")
      expect(annotated.message).not.toContain("secret")
    }))

  it("keeps every field, keeps what is already set, and returns the same error when there is nothing to add", () => {
    const lost = new MqttError.ConnectionLostError({
      reason: "the broker sent DISCONNECT",
      reasonCode: 0x9c,
      reasonString: "elsewhere",
      serverReference: "other:1883"
    })
    const annotated = Broker.annotate(lost, "mqtt://h:1883", "connected") as MqttError.ConnectionLostError
    assert.deepStrictEqual(
      [annotated.reasonCode, annotated.reasonString, annotated.serverReference, annotated.broker, annotated.phase],
      [0x9c, "elsewhere", "other:1883", "mqtt://h:1883", "connected"]
    )
    assert.strictEqual(Broker.annotate(annotated, "mqtt://other:1", "connecting"), annotated)

    const timeout = new MqttError.MqttTimeoutError({ operation: "connect", millis: 100 })
    const timedOut = Broker.annotate(timeout, "mqtts://h:8883", "connecting")
    assert(timedOut instanceof MqttError.MqttTimeoutError)
    assert.strictEqual(timedOut._tag, "MqttTimeoutError")
    expect(timedOut.message).toContain("The broker at mqtts://h:8883 did not accept the connection within 100 ms")
    assert.strictEqual(Broker.annotate(timeout, undefined, "connecting"), timeout)

    const refused = new MqttError.ConnectRefusedError({ reasonCode: 4, protocolVersion: 4 })
    expect(Broker.annotate(refused, "mqtt://h:1883", "connecting").message).toContain("The broker at mqtt://h:1883")
    const tls = new MqttError.TlsError({ kind: "HostnameMismatch", reason: "r", code: "ERR_TLS_CERT_ALTNAME_INVALID" })
    const tlsAt = Broker.annotate(tls, "mqtts://h:8883", "connecting") as MqttError.TlsError
    assert.deepStrictEqual([tlsAt.kind, tlsAt.code, tlsAt.broker], [tls.kind, tls.code, "mqtts://h:8883"])
    const protocol = new MqttError.ProtocolError({ reason: "a second CONNACK", reasonCode: 0x82 })
    expect(Broker.annotate(protocol, "mqtt://h:1883", "connected").message).toContain("The broker at mqtt://h:1883")

    const invalid = new MqttError.InvalidOptionError({ option: "keepAlive", reason: "r" })
    assert.strictEqual(Broker.annotate(invalid, "mqtt://h:1883", "connecting"), invalid)
  })
})
