/**
 * Transports and security: every transport the URL can choose (TCP, TLS, Unix socket, WebSocket with and without
 * TLS) and the custom transport hook run the same round trip; TLS failures are distinct typed errors; WebSocket
 * framing does not have to align with packets; credentials never show in errors, logs or spans.
 *
 * Brokers: one private Mosquitto with a plaintext listener, a TLS listener that requires a client certificate
 * (certificates made by openssl for this run), a Unix socket listener and a password file; aedes behind a `ws`
 * server (HTTP and HTTPS), since Debian's Mosquitto has no WebSocket listener; scripted `ws` and TLS servers
 * where the test needs to see exactly what the client does.
 *
 * Every wait ends on an event; the timeouts only guard against a hang. No assertion is about time.
 */
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import { afterAll, assert, beforeAll, describe, expect, it } from "@effect/vitest"
import {
  Cause,
  ConfigProvider,
  Effect,
  Exit,
  Fiber,
  Layer,
  Logger,
  Option,
  Queue,
  Redacted,
  Schedule,
  Scope,
  Stream,
  Tracer
} from "effect"
import { IncomingQueue, MqttClient, MqttError } from "effect-mqtt"
import * as Socket from "effect/socket/Socket"
import * as MqttPacket from "mqtt-packet"
import { execFileSync } from "node:child_process"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Net from "node:net"
import * as Path from "node:path"
import * as Tls from "node:tls"
import { platform } from "../src/internal/transport.ts"
import * as Url from "../src/internal/url.ts"
import { type Certs, makeCerts } from "./support/certs.ts"
import { freePort, mosquitto, type MosquittoHandle, startMosquitto } from "./support/Mosquitto.ts"
import { type AedesWsHandle, startAedesWs, startFakeWs } from "./support/wsBroker.ts"

// ---------------------------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------------------------

/** Only a guard against a hang: every wait in these tests ends on an event, not on a delay. */
const guard = <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.timeout(self, "20 seconds")

const runId = Crypto.randomBytes(3).toString("hex")
const wsSecret = `ws-s3cret-${runId}`
let topicCount = 0
const uniqueTopic = (name: string) => `transports-${runId}/${name}/${++topicCount}`

/** The typed failure of an exit; fails the test on a success or a defect. */
const errorOf = <A, E>(exit: Exit.Exit<A, E>): E => {
  if (Exit.isSuccess(exit)) return assert.fail("expected a failure, got a success")
  const error = Exit.findErrorOption(exit)
  if (Option.isNone(error)) return assert.fail(`expected a typed failure, got ${Cause.pretty(exit.cause)}`)
  return error.value
}

/**
 * The typed error the transport found. The transport carries it as the cause of the `SocketError`; a client that
 * does not lift it yet wraps it in a `ConnectionLostError` (its `cause`), one that does fails with it directly.
 */
/** The transport's typed error is the client's error itself, not a cause wrapped in ConnectionLostError. */
const transportError = (error: MqttError.MqttError): MqttError.MqttError => error

/** Connects with `options` (no reconnecting) and returns the exit of the connection attempt. */
const attempt = (options: MqttClient.Options) =>
  guard(Effect.exit(Effect.scoped(MqttClient.make({ reconnect: false, connectTimeout: "15 seconds", ...options }))))

const connectFailure = (options: MqttClient.Options) => Effect.map(attempt(options), errorOf)

const expectTlsError = (error: MqttError.MqttError, kind: MqttError.TlsError["kind"]) => {
  const found = transportError(error)
  assert.strictEqual(found._tag, "TlsError", `expected a TlsError, got ${String(error)}`)
  assert.strictEqual((found as MqttError.TlsError).kind, kind, String(found))
}

/** Subscribe, publish at QoS 0, 1 and 2, receive the three messages back. */
const roundTrip = (options: MqttClient.Options) =>
  Effect.scoped(Effect.gen(function*() {
    const client = yield* guard(MqttClient.make({ reconnect: false, ...options }))
    const topic = uniqueTopic("round-trip")
    const granted = yield* guard(client.subscribe(`${topic}/#`, { qos: 2 }))
    assert.deepStrictEqual(granted.map((g) => g.qos), [2])
    for (const qos of [0, 1, 2] as const) {
      yield* guard(client.publish(`${topic}/${qos}`, `payload at QoS ${qos}`, { qos }))
    }
    // a large payload goes out uncopied, as its own chunk behind the header (its own frame over WebSocket)
    const big = new Uint8Array(100_000).map((_, i) => i % 251)
    yield* guard(client.publish(`${topic}/big`, big, { qos: 1 }))
    const messages = yield* guard(Stream.runCollect(Stream.take(client.messages, 4)))
    const large = messages.filter((m) => m.topic === `${topic}/big`)
    assert.strictEqual(large.length, 1)
    assert.isTrue(Buffer.from(large[0].payload).equals(big))
    const received = messages.filter((m) => m !== large[0]).map((m) => [m.topic, m.text, m.qos] as const)
      .sort((a, b) => a[2] - b[2])
    assert.deepStrictEqual(received, [
      [`${topic}/0`, "payload at QoS 0", 0],
      [`${topic}/1`, "payload at QoS 1", 1],
      [`${topic}/2`, "payload at QoS 2", 2]
    ])
    // on Node.js payloads are Buffers over every built-in transport, WebSocket included, as they always were
    assert.isTrue(messages.every((m) => Buffer.isBuffer(m.payload)))
    return client.connection
  }))

interface Recorded {
  readonly logs: Array<string>
  readonly spans: Array<string>
}

/** Runs `self` with a logger and a tracer that record everything they are given, as text. */
const recording = <A, E>(self: Effect.Effect<A, E>) =>
  Effect.suspend(() => {
    const recorded: Recorded = { logs: [], spans: [] }
    const logger = Logger.make((options) => {
      recorded.logs.push(`${options.logLevel} ${JSON.stringify(options.message)} ${Cause.pretty(options.cause)}`)
    })
    const tracer = Tracer.make({
      span(options) {
        const span = new Tracer.NativeSpan(options)
        const end = span.end.bind(span)
        span.end = (endTime, exit) => {
          end(endTime, exit)
          recorded.spans.push(
            `${span.name} ${JSON.stringify([...span.attributes])} ${
              Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "success"
            }`
          )
        }
        return span
      }
    })
    return self.pipe(
      Effect.withSpan("test"),
      Effect.withTracer(tracer),
      Effect.provide(Logger.layer([logger])),
      Effect.map((a) => [a, recorded] as const)
    )
  })

/** Asserts that nothing the caller could print or export holds `secret`. */
const assertNoSecret = (secret: string, exit: Exit.Exit<unknown, MqttError.MqttError>, recorded: Recorded) => {
  const error = errorOf(exit)
  const outputs: Record<string, string> = {
    "String(error)": String(error),
    "error.message": error.message,
    "JSON.stringify(error)": JSON.stringify(error),
    "Cause.pretty": Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "",
    "String(exit)": String(exit),
    "logs": recorded.logs.join("\n"),
    "spans": recorded.spans.join("\n")
  }
  for (const [where, text] of Object.entries(outputs)) {
    assert.notInclude(text, secret, `${where} holds the password: ${text}`)
  }
  return error
}

// ---------------------------------------------------------------------------------------------------------------
// brokers
// ---------------------------------------------------------------------------------------------------------------

let certs: Certs
let broker: MosquittoHandle
let tlsPort: number
let socketPath: string
let aedesWs: AedesWsHandle
let aedesWss: AedesWsHandle

const user = { name: "alice", password: "correct-horse-battery" }
/** A password that needs percent-encoding in a URL. */
const awkward = { name: "bob", password: "p@ss:w/rd %é?#" }

beforeAll(async () => {
  certs = makeCerts()
  const passwordFile = Path.join(certs.dir, "passwords")
  execFileSync("mosquitto_passwd", ["-c", "-b", passwordFile, user.name, user.password])
  execFileSync("mosquitto_passwd", ["-b", passwordFile, awkward.name, awkward.password])
  tlsPort = await freePort()
  socketPath = Path.join(certs.dir, "mqtt.sock")
  broker = await startMosquitto({
    protocolConfig: [
      // with the default per_listener_settings false, the password file applies to every listener; clients
      // without a user name stay anonymous (allowed), a user name must come with its password
      `password_file ${passwordFile}`,
      `listener ${tlsPort} 127.0.0.1`,
      `cafile ${certs.ca.cert}`,
      `certfile ${certs.server.cert}`,
      `keyfile ${certs.server.key}`,
      "require_certificate true",
      `listener 0 ${socketPath}`
    ].join("\n")
  })
  aedesWs = await startAedesWs()
  aedesWss = await startAedesWs({ tls: { cert: certs.read(certs.server.cert), key: certs.read(certs.server.key) } })
})

afterAll(async () => {
  await broker?.dispose()
  await aedesWs?.close()
  await aedesWss?.close()
  certs?.dispose()
})

/** TLS settings that the broker accepts: our CA, our client certificate. */
const goodTls = (): MqttClient.TlsOptions => ({
  caFile: certs.ca.cert,
  certFile: certs.client.cert,
  keyFile: certs.client.key
})

const tlsUrl = (host = "localhost", port = tlsPort) => `mqtts://${host}:${port}`

/** A scripted TLS server (our server certificate) that records each accepted connection, then closes it. */
const tlsServer = (options?: Tls.TlsOptions) =>
  Effect.acquireRelease(
    Effect.promise(() =>
      new Promise<{
        readonly port: number
        readonly accepted: Array<{ servername: string | false; alpn: string | false | null }>
        readonly connections: () => number
        readonly close: () => Promise<void>
      }>((resolve) => {
        const accepted: Array<{ servername: string | false; alpn: string | false | null }> = []
        let connections = 0
        const server = Tls.createServer({
          cert: certs.read(certs.server.cert),
          key: certs.read(certs.server.key),
          ...options
        }, (socket) => {
          accepted.push({
            servername: (socket as { servername?: string | false }).servername ?? false,
            alpn: socket.alpnProtocol
          })
          socket.destroy()
        })
        server.on("connection", () => connections++)
        server.on("tlsClientError", () => {})
        server.listen(0, "127.0.0.1", () => {
          const address = server.address()
          resolve({
            port: typeof address === "object" && address !== null ? address.port : 0,
            accepted,
            connections: () => connections,
            close: () => new Promise<void>((done) => server.close(() => done()))
          })
        })
      })
    ),
    (server) => Effect.promise(() => server.close())
  )

// ---------------------------------------------------------------------------------------------------------------
// the URL
// ---------------------------------------------------------------------------------------------------------------

describe("the broker URL", () => {
  const parse = (url: string) => Effect.runSync(Effect.exit(Url.parseUrl(url)))
  const ok = (url: string) => {
    const exit = parse(url)
    if (Exit.isFailure(exit)) return assert.fail(`${url}: ${Cause.pretty(exit.cause)}`)
    return exit.value
  }
  const refused = (url: string) => {
    const error = errorOf(parse(url))
    assert.strictEqual(error._tag, "InvalidOptionError")
    assert.strictEqual(error.option, "url")
    return error.reason
  }

  it("chooses the transport by scheme, with each scheme's default port", () => {
    const cases = [
      ["mqtt://broker", "Tcp", 1883],
      ["tcp://broker", "Tcp", 1883],
      ["mqtts://broker", "Tls", 8883],
      ["tls://broker", "Tls", 8883],
      ["ssl://broker", "Tls", 8883],
      ["ws://broker", "WebSocket", 80],
      ["wss://broker", "WebSocket", 443]
    ] as const
    for (const [url, tag, port] of cases) {
      const endpoint = ok(url)
      assert.strictEqual(endpoint._tag, tag, url)
      assert.strictEqual("port" in endpoint ? endpoint.port : undefined, port, url)
      assert.strictEqual("host" in endpoint ? endpoint.host : undefined, "broker", url)
    }
    const explicit = ok("mqtts://broker:1234")
    assert.strictEqual(explicit._tag === "Tls" ? explicit.port : 0, 1234)
  })

  it("reads IPv6 literals without their brackets", () => {
    const endpoint = ok("mqtt://[::1]:1884")
    assert.deepStrictEqual(endpoint._tag === "Tcp" ? [endpoint.host, endpoint.port] : [], ["::1", 1884])
  })

  it("gives a WebSocket URL without a path the path /mqtt, and keeps an explicit path and query", () => {
    const path = (url: string) => {
      const endpoint = ok(url)
      return endpoint._tag === "WebSocket" ? endpoint.path : assert.fail(`${url} is not a WebSocket URL`)
    }
    assert.strictEqual(path("ws://broker"), "/mqtt")
    assert.strictEqual(path("ws://broker:8080"), "/mqtt")
    assert.strictEqual(path("ws://broker/"), "/")
    assert.strictEqual(path("wss://broker:8443/custom/path"), "/custom/path")
    assert.strictEqual(path("wss://broker/mqtt?token=abc&x=1"), "/mqtt?token=abc&x=1")
  })

  it("reads a Unix socket path from unix:///path and unix:/path", () => {
    for (const url of ["unix:///run/mosquitto/mqtt.sock", "unix:/run/mosquitto/mqtt.sock"]) {
      const endpoint = ok(url)
      assert.deepStrictEqual(endpoint._tag === "Unix" ? endpoint.path : undefined, "/run/mosquitto/mqtt.sock", url)
    }
    const spaced = ok("unix:///tmp/my%20broker.sock")
    assert.strictEqual(spaced._tag === "Unix" ? spaced.path : undefined, "/tmp/my broker.sock")
  })

  it("moves percent-encoded user info into username and password, decoded", () => {
    const endpoint = ok(`mqtt://${encodeURIComponent(awkward.name)}:${encodeURIComponent(awkward.password)}@broker`)
    assert.strictEqual(endpoint.username, awkward.name)
    assert.strictEqual(endpoint.password, awkward.password)
  })

  it("refuses malformed and unsupported URLs with an InvalidOptionError naming the problem", () => {
    expect(refused("not a url")).toContain("not a valid URL")
    expect(refused("http://broker")).toContain(`unsupported scheme "http:"`)
    // a host and port without a scheme: URL reads localhost: as the scheme
    expect(refused("localhost:1883")).toContain("no scheme: write mqtt://localhost:1883 (or mqtts://localhost:1883")
    expect(refused(" broker.example.com:8883")).toContain("write mqtt://broker.example.com:8883")
    expect(refused("127.0.0.1:1883")).toContain("write mqtt://127.0.0.1:1883")
    expect(refused("[::1]:1883")).toContain("write mqtt://[::1]:1883")
    expect(refused("localhost")).toContain("write mqtt://localhost")
    expect(refused("mqtt://")).toContain("no host")
    expect(refused("mqtt://broker:0")).toContain("port")
    expect(refused("mqtt://broker:99999")).toContain("not a valid URL")
    expect(refused("mqtt://broker/topic")).toContain("no path")
    expect(refused("mqtts://broker?x=1")).toContain("no query")
    expect(refused("mqtt://broker#x")).toContain("fragment")
    expect(refused("unix://tmp/mqtt.sock")).toContain("no host")
    expect(refused("unix:///")).toContain("no socket path")
    expect(refused("mqtt://user:%E0%A4%A@broker")).toContain("percent-encoding")
    // URL takes any text as the host of an mqtt: URL
    expect(refused("mqtt://a,b:1883")).toContain(`"a,b" is not a host name`)
    expect(refused("mqtt://a b:1883")).toContain("not a valid URL")
    expect(refused("mqtt://a:1883,mqtt://b:1883")).toContain("several URLs in one: give a list")
    expect(refused("mqtt://a:1883, ws://b:80/mqtt")).toContain("several URLs in one: give a list")
  })

  it.effect("MqttClient.make and MQTT_URL suggest the scheme of a URL given as host:port", () =>
    Effect.gen(function*() {
      const made = yield* Effect.flip(Effect.scoped(MqttClient.make({ url: "localhost:1883" })))
      assert.strictEqual(made._tag, "InvalidOptionError")
      assert.include(made.message, "no scheme: write mqtt://localhost:1883")
      const fromEnv = yield* Effect.flip(
        Layer.build(MqttClient.layerConfig()).pipe(
          Effect.scoped,
          Effect.provide(ConfigProvider.layer(ConfigProvider.fromEnv({ env: { MQTT_URL: "localhost:1883" } })))
        )
      )
      assert.include(String(fromEnv.message), "no scheme: write mqtt://localhost:1883")
    }))

  it("never repeats the password of a URL it refuses", () => {
    const secret = "Sup3rS3cret"
    for (
      const url of [
        `mqtt://user:${secret}@broker:99999`,
        `foo://user:${secret}@broker`,
        `user:${secret}@broker:1883`,
        `mqtt://user:${secret}@broker/${secret}`,
        `mqtt://user:${secret}@broker?${secret}`,
        `mqtt://user:${secret}@[::1`,
        `unix://user:${secret}@host/x`
      ]
    ) {
      const exit = parse(url)
      const error = errorOf(exit)
      for (
        const text of [
          String(error),
          error.message,
          JSON.stringify(error),
          Cause.pretty((exit as Exit.Failure<unknown, unknown>).cause)
        ]
      ) {
        assert.notInclude(text, secret, url)
      }
    }
  })
})

// ---------------------------------------------------------------------------------------------------------------
// the round trip, over every transport
// ---------------------------------------------------------------------------------------------------------------

describe("the same round trip over every transport (subscribe, publish at QoS 0, 1 and 2, receive)", () => {
  const both = [4, 5] as const
  const transports: ReadonlyArray<{
    readonly name: string
    readonly versions: ReadonlyArray<4 | 5>
    readonly options: () => MqttClient.Options
  }> = [
    { name: "TCP (mqtt://)", versions: both, options: () => ({ url: `mqtt://127.0.0.1:${broker.port}` }) },
    { name: "TCP (tcp://)", versions: [4], options: () => ({ url: `tcp://127.0.0.1:${broker.port}` }) },
    {
      name: "TLS with a client certificate (mqtts://)",
      versions: both,
      options: () => ({ url: tlsUrl(), tls: goodTls() })
    },
    {
      name: "TLS (tls://), certificates given as contents",
      versions: [4],
      options: () => ({
        url: `tls://localhost:${tlsPort}`,
        tls: {
          ca: certs.read(certs.ca.cert),
          cert: Buffer.from(certs.read(certs.client.cert)),
          key: Redacted.make(certs.read(certs.client.key))
        }
      })
    },
    {
      name: "TLS (ssl://), an encrypted client key with its passphrase",
      versions: [5],
      options: () => ({
        url: `ssl://localhost:${tlsPort}`,
        tls: {
          caFile: certs.ca.cert,
          certFile: certs.client.cert,
          keyFile: certs.clientEncryptedKey,
          passphrase: Redacted.make(certs.clientKeyPassphrase)
        }
      })
    },
    { name: "a Unix domain socket (unix://)", versions: both, options: () => ({ url: `unix://${socketPath}` }) },
    { name: "WebSocket (ws://) to aedes", versions: [4], options: () => ({ url: `ws://127.0.0.1:${aedesWs.port}` }) },
    {
      name: "WebSocket over TLS (wss://) to aedes",
      versions: [4],
      options: () => ({ url: `wss://localhost:${aedesWss.port}/mqtt`, tls: { caFile: certs.ca.cert } })
    },
    {
      name: "a custom transport given as an Effect of a Socket",
      versions: both,
      options: () => ({ transport: NodeSocket.makeNet({ host: "127.0.0.1", port: broker.port }) })
    },
    {
      name: "a custom transport given as a Socket",
      versions: [4],
      options: () => ({ transport: Effect.runSync(NodeSocket.makeNet({ host: "127.0.0.1", port: broker.port })) })
    }
  ]

  for (const transport of transports) {
    for (const version of transport.versions) {
      it.live(`${transport.name}, MQTT ${version === 4 ? "3.1.1" : "5"}`, () =>
        Effect.gen(function*() {
          const info = yield* roundTrip({ ...transport.options(), protocolVersion: version })
          assert.strictEqual(info.protocolVersion, version)
        }))
    }
  }

  it.live("a custom transport can be an in-memory test double: the client speaks MQTT through it", () =>
    Effect.gen(function*() {
      const inbox = yield* Queue.unbounded<Uint8Array>()
      const parser = MqttPacket.parser({ protocolVersion: 4 })
      const received: Array<MqttPacket.Packet> = []
      parser.on("packet", (packet) => {
        received.push(packet)
        if (packet.cmd === "connect") {
          Queue.offerUnsafe(inbox, MqttPacket.generate({ cmd: "connack", returnCode: 0, sessionPresent: false }))
        }
      })
      const onWrite = (chunk: Uint8Array | string | Socket.CloseEvent) => {
        if (chunk instanceof Uint8Array) parser.parse(Buffer.from(chunk))
      }
      const double = Socket.make({
        reader: Effect.succeed({
          pull: Effect.map(Queue.take(inbox), (bytes) => [bytes] as const),
          upgrade: Socket.SocketUpgradeError.unsupported
        }),
        writer: Effect.succeed({
          write: (chunk) => Effect.sync(() => onWrite(chunk)),
          writeAll: (chunks) => Effect.sync(() => chunks.forEach(onWrite))
        })
      })
      const info = yield* Effect.scoped(Effect.map(
        guard(MqttClient.make({ transport: double, clientId: "double", reconnect: false })),
        (client) => client.connection
      ))
      assert.deepStrictEqual([info.clientId, info.sessionPresent], ["double", false])
      const connect = received[0] as MqttPacket.IConnectPacket
      assert.deepStrictEqual([connect.cmd, connect.clientId], ["connect", "double"])
    }))

  it.live("a custom transport is used instead of the URL's host and port", () =>
    Effect.gen(function*() {
      // the URL points nowhere: only the custom socket can reach the broker
      yield* roundTrip({
        url: "mqtt://host.invalid:1",
        transport: NodeSocket.makeNet({ host: "127.0.0.1", port: broker.port })
      })
    }))
})

/**
 * How many messages of `size` bytes are more than the kernel's socket buffers hold (the sender's and a frozen
 * broker's, at their largest), and 8 MB more: the client's outbox and socket buffer then fill, whatever the
 * machine's settings.
 */
const filling = (size: number): number => {
  const largest = (name: string) => {
    try {
      return Number(Fs.readFileSync(`/proc/sys/net/ipv4/${name}`, "utf8").trim().split(/\s+/)[2]) || 32 << 20
    } catch {
      return 32 << 20
    }
  }
  return Math.ceil((largest("tcp_wmem") + largest("tcp_rmem") + (8 << 20)) / size)
}

/** Waits until `count` stops changing (for 300 ms): a publisher that the client has stopped accepting. */
const untilSteady = (count: () => number) =>
  Effect.gen(function*() {
    let seen = -1
    while (seen !== count()) {
      seen = count()
      yield* Effect.sleep("300 millis")
    }
  })

describe("a socket whose buffer fills (the broker frozen while more is published than the kernel buffers)", () => {
  const SIZE = 256 * 1024
  const MESSAGES = filling(SIZE)
  const payload = (i: number) => {
    const bytes = new Uint8Array(SIZE).fill(i % 251)
    new DataView(bytes.buffer).setUint32(0, i)
    return bytes
  }
  // TCP, TLS and Unix sockets are written without a fiber (the outbox holds the next batch until the socket
  // drains); a custom transport through its writer fiber (which waits for `drain` in Effect's socket). QoS 0: a QoS 0
  // publish waits for room in the outbox (QoS 1 ones wait in the session for their turn in flight)
  const cases: ReadonlyArray<{ readonly name: string; readonly options: () => MqttClient.Options }> = [
    { name: "TCP", options: () => ({ url: `mqtt://127.0.0.1:${broker.port}` }) },
    { name: "TLS", options: () => ({ url: tlsUrl(), tls: goodTls() }) },
    { name: "a Unix socket", options: () => ({ url: `unix://${socketPath}` }) },
    {
      name: "a custom transport",
      options: () => ({ transport: NodeSocket.makeNet({ host: "127.0.0.1", port: broker.port }) })
    }
  ]
  for (const c of cases) {
    it.live(`${c.name}: publishers wait for room while it is full; after the thaw every message arrives, in order`, () =>
      Effect.scoped(Effect.gen(function*() {
        const topic = uniqueTopic("full-socket")
        const sub = yield* guard(MqttClient.make({ reconnect: false, ...c.options() }))
        yield* guard(sub.subscribe(topic, { qos: 1 }))
        const pub = yield* guard(MqttClient.make({ reconnect: false, ...c.options() }))
        const received = yield* Effect.forkScoped(Stream.runCollect(Stream.take(sub.messages, MESSAGES)))
        // thawed in any case when the test ends
        yield* Effect.acquireRelease(
          Effect.sync(() => broker.kill("SIGSTOP")),
          () => Effect.sync(() => broker.kill("SIGCONT"))
        )
        let accepted = 0
        const publisher = yield* Effect.forkScoped(Effect.forEach(
          Array.from({ length: MESSAGES }, (_, i) => i),
          (i) => Effect.map(pub.publish(topic, payload(i), { qos: 0 }), () => accepted++),
          { discard: true }
        ))
        // the socket's and the kernel's buffers fill, then the outbox: the publisher stops being accepted
        yield* untilSteady(() => accepted)
        assert.isBelow(accepted, MESSAGES, "every publish was accepted while the broker was frozen")
        assert.isUndefined(publisher.pollUnsafe())
        broker.kill("SIGCONT")
        const messages = yield* Fiber.join(received).pipe(Effect.timeout("50 seconds"))
        // the last publishes may still wait for room in the outbox when their messages have arrived (their bytes were
        // queued before the wait): each must be accepted in the end
        yield* Fiber.join(publisher).pipe(Effect.timeout("10 seconds"))
        assert.strictEqual(accepted, MESSAGES)
        expect(messages.map((m) => new DataView(m.payload.buffer, m.payload.byteOffset).getUint32(0))).toEqual(
          Array.from({ length: MESSAGES }, (_, i) => i)
        )
        for (const m of messages) {
          const i = new DataView(m.payload.buffer, m.payload.byteOffset).getUint32(0)
          assert.isTrue(Buffer.from(m.payload).subarray(4).equals(Buffer.from(payload(i)).subarray(4)))
        }
      })))
  }
})

describe("reading without a fiber (readNow)", () => {
  /** A plain TCP server's first connection, and the client's socket to it with its reader acquired. */
  const tcpPair = Effect.gen(function*() {
    const server = Net.createServer()
    const accepted = new Promise<Net.Socket>((resolve) => server.once("connection", resolve))
    yield* Effect.promise(() => new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve())))
    yield* Effect.addFinalizer(() => Effect.sync(() => server.close()))
    const url = `mqtt://127.0.0.1:${(server.address() as Net.AddressInfo).port}`
    const socket = yield* Effect.flatMap(Url.parseUrl(url), (endpoint) => platform.makeSocket(endpoint, { url }))
    const reader = yield* socket.reader
    const peer = yield* Effect.promise(() => accepted)
    yield* Effect.addFinalizer(() => Effect.sync(() => peer.destroy()))
    const readNow = socket.readNow!
    /** what the readings read, in order, and how many ends they reported */
    const log = { got: [] as Array<number>, ended: 0 }
    /** Starts a reading into `log`; with `more` false it stops after its first read. */
    const read = (more: boolean) => {
      const reading = readNow((chunks) => {
        for (const chunk of chunks) log.got.push(...chunk)
        return more
      }, () => log.ended++)!
      reading.start()
      return reading
    }
    return { readNow, pull: reader.pull, peer, log, read }
  })
  const bytes = (from: number, to: number) => Buffer.from(Array.from({ length: to - from }, (_, i) => from + i))
  const until = (done: () => boolean) =>
    Effect.repeat(Effect.sleep("5 millis"), { until: done }).pipe(Effect.timeout("10 seconds"))

  it.live("reads in order, stops when told (the rest stays buffered) and reports the end once, after the data", () =>
    Effect.scoped(Effect.gen(function*() {
      const { log, peer, pull, read, readNow } = yield* tcpPair
      // stops after its first read
      read(false)
      peer.write(bytes(0, 100))
      yield* until(() => log.got.length > 0)
      const seen = log.got.length
      peer.write(bytes(100, 200))
      yield* Effect.sleep("200 millis")
      // nothing was read while stopped (with a read, more would have come by now)
      assert.strictEqual(log.got.length, seen)
      read(true)
      yield* until(() => log.got.length === 200)
      expect(log.got).toEqual([...bytes(0, 200)])
      peer.end()
      yield* until(() => log.ended === 1)
      yield* Effect.sleep("50 millis")
      assert.strictEqual(log.ended, 1)
      assert.isUndefined(readNow(() => true, () => log.ended++))
      // the socket's reader tells how it ended
      const exit = yield* Effect.exit(pull)
      assert.isTrue(Exit.isFailure(exit) && Socket.isSocketError(Cause.squash(exit.cause)))
    })))

  it.live("a connection reset while read directly is reported once; stop() ends the reading first", () =>
    Effect.scoped(Effect.gen(function*() {
      const { log, peer, pull, read } = yield* tcpPair
      const reading = read(true)
      peer.write(bytes(0, 10))
      yield* until(() => log.got.length === 10)
      reading.stop()
      peer.write(bytes(10, 20))
      yield* Effect.sleep("200 millis")
      assert.strictEqual(log.got.length, 10)
      read(true)
      yield* until(() => log.got.length === 20)
      peer.resetAndDestroy()
      yield* until(() => log.ended === 1)
      yield* Effect.sleep("50 millis")
      assert.strictEqual(log.ended, 1)
      expect(log.got).toEqual([...bytes(0, 20)])
      const exit = yield* Effect.exit(pull)
      assert.isTrue(Exit.isFailure(exit) && Socket.isSocketError(Cause.squash(exit.cause)))
    })))
})

describe("the writer and the reader", () => {
  it.live(
    "Node's TCP, TLS and Unix sockets are written and read without a fiber; WebSocket and custom transports by fibers",
    () =>
      Effect.scoped(Effect.gen(function*() {
        const direct = (url: string, options: Partial<MqttClient.Options> = {}) =>
          Effect.map(
            Effect.flatMap(Url.parseUrl(url), (endpoint) => platform.makeSocket(endpoint, { url, ...options })),
            (socket) => [socket.writeNow !== undefined, socket.readNow !== undefined]
          )
        assert.deepStrictEqual(yield* direct(`mqtt://127.0.0.1:${broker.port}`), [true, true])
        assert.deepStrictEqual(yield* direct(tlsUrl(), { tls: goodTls() }), [true, true])
        assert.deepStrictEqual(yield* direct(`unix://${socketPath}`), [true, true])
        assert.deepStrictEqual(yield* direct(`ws://127.0.0.1:${aedesWs.port}`), [false, false])
        assert.deepStrictEqual(
          yield* direct(`mqtt://127.0.0.1:${broker.port}`, {
            transport: NodeSocket.makeNet({ host: "127.0.0.1", port: broker.port })
          }),
          [false, false]
        )
      }))
  )

  it.live(
    "a connection that fails while its socket is full is lost, even while its reader waits for a consumer",
    () =>
      Effect.scoped(Effect.gen(function*() {
        const own = yield* mosquitto()
        const topic = uniqueTopic("stalled-reader")
        // a queue of one that nobody takes from: the reader stops reading the socket (it waits for room)
        const client = yield* guard(
          MqttClient.make({ url: own.url, reconnect: false, queue: IncomingQueue.bounded(1) })
        )
        yield* guard(client.subscribe(topic, { qos: 0 }))
        const feeder = yield* guard(MqttClient.make({ url: own.url, reconnect: false }))
        for (let i = 0; i < 10; i++) yield* guard(feeder.publish(topic, `message ${i}`))
        while ((yield* client.queuedMessages) < 1) yield* Effect.sleep("20 millis")
        yield* Effect.sleep("200 millis")
        own.kill("SIGSTOP")
        let accepted = 0
        const count = filling(256 * 1024)
        const publisher = yield* Effect.forkScoped(Effect.forEach(
          Array.from({ length: count }, (_, i) => i),
          () => Effect.map(client.publish(`${topic}/out`, new Uint8Array(256 * 1024)), () => accepted++),
          { discard: true }
        ))
        yield* untilSteady(() => accepted)
        assert.isBelow(accepted, count, "every publish was accepted while the broker was frozen")
        // the broker dies: its connections are reset; only the writer can see it, since the reader does not read
        own.kill("SIGKILL")
        const exit = yield* Fiber.await(publisher).pipe(Effect.timeout("20 seconds"))
        assert.isTrue(Exit.isFailure(exit), "the publish waiting for room did not fail")
        const error = Exit.isFailure(exit) ? Cause.squash(exit.cause) : undefined
        assert.isTrue(MqttError.isMqttError(error) && error._tag === "ConnectionLostError", String(error))
      }))
  )
})

// ---------------------------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------------------------

describe("TLS", () => {
  it.live("a CA that did not sign the broker's certificate fails with TlsError ServerCertificateUntrusted", () =>
    Effect.gen(function*() {
      const error = yield* connectFailure({ url: tlsUrl(), tls: { ...goodTls(), caFile: certs.otherCa.cert } })
      expectTlsError(error, "ServerCertificateUntrusted")
    }))

  it.live("without a CA, the system's authorities do not trust a private CA: TlsError ServerCertificateUntrusted", () =>
    Effect.gen(function*() {
      const error = yield* connectFailure({
        url: tlsUrl(),
        tls: { certFile: certs.client.cert, keyFile: certs.client.key }
      })
      expectTlsError(error, "ServerCertificateUntrusted")
    }))

  it.live("a host the certificate is not for fails with TlsError HostnameMismatch", () =>
    Effect.gen(function*() {
      // the certificate names DNS:localhost only
      const error = yield* connectFailure({ url: tlsUrl("127.0.0.1"), tls: goodTls() })
      expectTlsError(error, "HostnameMismatch")
    }))

  it.live("tls.servername replaces the URL's host for SNI and the certificate check", () =>
    Effect.gen(function*() {
      yield* roundTrip({ url: tlsUrl("127.0.0.1"), tls: { ...goodTls(), servername: "localhost" } })
    }))

  it.live("a broker that requires a client certificate refuses a client without one: TlsError ClientCertificateRequired", () =>
    Effect.gen(function*() {
      const error = yield* connectFailure({ url: tlsUrl(), tls: { caFile: certs.ca.cert } })
      expectTlsError(error, "ClientCertificateRequired")
    }))

  it.live("a client certificate from an authority the broker does not trust fails with TlsError ClientCertificateRejected", () =>
    Effect.gen(function*() {
      const error = yield* connectFailure({
        url: tlsUrl(),
        tls: { caFile: certs.ca.cert, certFile: certs.otherClient.cert, keyFile: certs.otherClient.key }
      })
      expectTlsError(error, "ClientCertificateRejected")
    }))

  it.live("plaintext MQTT to the TLS port fails with a ConnectionLostError that points at mqtts://, not a TlsError", () =>
    Effect.gen(function*() {
      const error = transportError(yield* connectFailure({ url: `mqtt://127.0.0.1:${tlsPort}` }))
      assert.strictEqual(error._tag, "ConnectionLostError", String(error))
      expect(error.message).toContain("mqtts://")
    }))

  it.live("TLS to a plaintext port fails with TlsError HandshakeFailed: no fallback to plaintext", () =>
    Effect.gen(function*() {
      const error = yield* connectFailure({ url: tlsUrl("localhost", broker.port), tls: goodTls() })
      expectTlsError(error, "HandshakeFailed")
    }))

  it.live("the four misconfigurations fail with four distinct errors", () =>
    Effect.gen(function*() {
      const errors = yield* Effect.all([
        connectFailure({ url: tlsUrl(), tls: { ...goodTls(), caFile: certs.otherCa.cert } }),
        connectFailure({ url: tlsUrl("127.0.0.1"), tls: goodTls() }),
        connectFailure({ url: tlsUrl(), tls: { caFile: certs.ca.cert } }),
        connectFailure({ url: `mqtt://127.0.0.1:${tlsPort}` })
      ])
      const shapes = errors.map(transportError).map((e) => e._tag === "TlsError" ? `TlsError ${e.kind}` : e._tag)
      assert.strictEqual(new Set(shapes).size, 4, shapes.join(", "))
    }))

  it.live("SNI is the URL's host name, and no SNI is sent for an IP address", () =>
    Effect.gen(function*() {
      const server = yield* tlsServer()
      yield* attempt({ url: tlsUrl("localhost", server.port), tls: { caFile: certs.ca.cert } })
      // the certificate does not name 127.0.0.1: skip verification so that the server sees the handshake end
      yield* attempt({ url: tlsUrl("127.0.0.1", server.port), tls: { insecureSkipVerify: true } })
      assert.deepStrictEqual(server.accepted.map((a) => a.servername), ["localhost", false])
    }))

  it.live("tls.alpnProtocols are offered in the handshake", () =>
    Effect.gen(function*() {
      const server = yield* tlsServer({ ALPNProtocols: ["mqtt"] })
      yield* attempt({ url: tlsUrl("localhost", server.port), tls: { caFile: certs.ca.cert, alpnProtocols: ["mqtt"] } })
      assert.deepStrictEqual(server.accepted.map((a) => a.alpn), ["mqtt"])
    }))

  it.live("tls.minVersion TLSv1.3 refuses a TLS 1.2 server with TlsError HandshakeFailed; the default accepts it", () =>
    Effect.gen(function*() {
      const server = yield* tlsServer({ maxVersion: "TLSv1.2" })
      const error = yield* connectFailure({
        url: tlsUrl("localhost", server.port),
        tls: { caFile: certs.ca.cert, minVersion: "TLSv1.3" }
      })
      expectTlsError(error, "HandshakeFailed")
      assert.strictEqual(server.accepted.length, 0)
      yield* attempt({ url: tlsUrl("localhost", server.port), tls: { caFile: certs.ca.cert } })
      assert.strictEqual(server.accepted.length, 1)
    }))

  it.live("a TLS 1.2 broker that requires a client certificate, given none: HandshakeFailed says a certificate may be required", () =>
    Effect.gen(function*() {
      const server = yield* tlsServer({
        maxVersion: "TLSv1.2",
        requestCert: true,
        rejectUnauthorized: true,
        ca: certs.read(certs.ca.cert)
      })
      const error = yield* connectFailure({ url: tlsUrl("localhost", server.port), tls: { caFile: certs.ca.cert } })
      expectTlsError(error, "HandshakeFailed")
      expect(transportError(error).message).toContain("requires a client certificate")
    }))

  it.live("tls.insecureSkipVerify connects to an untrusted broker and logs a warning that says so", () =>
    Effect.gen(function*() {
      const [, recorded] = yield* recording(roundTrip({
        url: tlsUrl("127.0.0.1"),
        tls: { certFile: certs.client.cert, keyFile: certs.client.key, insecureSkipVerify: true }
      }))
      const warnings = recorded.logs.filter((line) => line.startsWith("Warn") && line.includes("insecureSkipVerify"))
      assert.strictEqual(warnings.length, 1, recorded.logs.join("\n"))
    }))

  it.live(
    "a certificate failure on a reconnect is retried on the schedule: the broker's certificate was put right",
    () =>
      Effect.gen(function*() {
        // a TLS proxy in front of the plaintext listener, whose certificate the test changes
        const sockets = new Set<Net.Socket>()
        const proxy = Tls.createServer(
          { cert: certs.read(certs.server.cert), key: certs.read(certs.server.key) },
          (tls) => {
            const plain = Net.connect(broker.port, "127.0.0.1")
            sockets.add(tls)
            tls.pipe(plain).pipe(tls)
            const end = () => {
              sockets.delete(tls)
              tls.destroy()
              plain.destroy()
            }
            tls.on("error", end).on("close", end)
            plain.on("error", end).on("close", end)
          }
        )
        proxy.on("tlsClientError", () => {})
        yield* Effect.acquireRelease(
          Effect.promise(() => new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", () => resolve()))),
          () =>
            Effect.promise(() =>
              new Promise<void>((resolve) => {
                for (const socket of sockets) socket.destroy()
                proxy.close(() => resolve())
              })
            )
        )
        const port = (proxy.address() as Net.AddressInfo).port
        const client = yield* MqttClient.make({
          url: tlsUrl("localhost", port),
          tls: { caFile: certs.ca.cert },
          reconnect: Schedule.spaced("100 millis")
        })
        const statuses: Array<MqttClient.ConnectionStatus> = []
        yield* Effect.forkScoped(Stream.runForEach(client.statusChanges, (s) => Effect.sync(() => statuses.push(s))))
        // the broker's certificate changes to one our CA did not sign, and the connection drops
        proxy.setSecureContext({ cert: certs.read(certs.otherClient.cert), key: certs.read(certs.otherClient.key) })
        for (const socket of sockets) socket.destroy()
        const untrusted = (s: MqttClient.ConnectionStatus) =>
          s._tag === "Disconnected" && s.cause._tag === "TlsError" && s.cause.kind === "ServerCertificateUntrusted"
        yield* Effect.promise(async () => {
          while (statuses.filter(untrusted).length < 2 && !statuses.some((s) => s._tag === "Closed")) {
            await new Promise((resolve) => setTimeout(resolve, 20))
          }
        }).pipe(Effect.timeout("20 seconds"))
        assert(!statuses.some((s) => s._tag === "Closed"), JSON.stringify(statuses.map((s) => s._tag)))
        // put right: the client connects again, and works
        proxy.setSecureContext({ cert: certs.read(certs.server.cert), key: certs.read(certs.server.key) })
        yield* client.statusChanges.pipe(
          Stream.filter((s) => s._tag === "Connected"),
          Stream.runHead,
          Effect.timeout("20 seconds")
        )
        yield* client.subscribe("tls/renewed", { qos: 1 })
        yield* client.publish("tls/renewed", "back", { qos: 1 })
        const [message] = yield* client.messages.pipe(Stream.take(1), Stream.runCollect, Effect.timeout("10 seconds"))
        expect(message.text).toBe("back")
      }).pipe(Effect.scoped),
    60_000
  )

  describe("fails closed before connecting", () => {
    const refusedOption = (options: MqttClient.Options) =>
      Effect.gen(function*() {
        const server = yield* tlsServer()
        const error = yield* connectFailure({ url: tlsUrl("localhost", server.port), ...options })
        assert.strictEqual(error._tag, "InvalidOptionError", String(error))
        assert.strictEqual(server.connections(), 0, "a connection was attempted")
        return error as MqttError.InvalidOptionError
      })

    it.live("a CA file that does not exist is an InvalidOptionError for tls.caFile", () =>
      Effect.gen(function*() {
        const error = yield* refusedOption({ tls: { caFile: Path.join(certs.dir, "missing.pem") } })
        assert.strictEqual(error.option, "tls.caFile")
        expect(error.reason).toContain("ENOENT")
      }))

    it.live("an empty CA file is an InvalidOptionError for tls.caFile", () =>
      Effect.gen(function*() {
        const empty = Path.join(certs.dir, "empty.pem")
        Fs.writeFileSync(empty, "\n")
        const error = yield* refusedOption({ tls: { caFile: empty } })
        assert.strictEqual(error.option, "tls.caFile")
        expect(error.reason).toContain("empty")
      }))

    it.live("a CA file without a certificate is an InvalidOptionError for tls.caFile", () =>
      Effect.gen(function*() {
        const garbage = Path.join(certs.dir, "garbage.pem")
        Fs.writeFileSync(garbage, "this is not a certificate\n")
        const error = yield* refusedOption({ tls: { caFile: garbage } })
        assert.strictEqual(error.option, "tls.caFile")
        const broken = Path.join(certs.dir, "broken.pem")
        Fs.writeFileSync(broken, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        assert.strictEqual((yield* refusedOption({ tls: { caFile: broken } })).option, "tls.caFile")
      }))

    it.live("a wrong key passphrase is an InvalidOptionError that does not show the passphrase", () =>
      Effect.gen(function*() {
        const passphrase = "wrong-passphrase-0451"
        const error = yield* refusedOption({
          tls: {
            caFile: certs.ca.cert,
            certFile: certs.client.cert,
            keyFile: certs.clientEncryptedKey,
            passphrase: Redacted.make(passphrase)
          }
        })
        assert.strictEqual(error.option, "tls")
        for (const text of [String(error), JSON.stringify(error)]) assert.notInclude(text, passphrase)
      }))

    it.live("a certificate without its key is an InvalidOptionError for tls.key", () =>
      Effect.gen(function*() {
        const error = yield* refusedOption({ tls: { caFile: certs.ca.cert, certFile: certs.client.cert } })
        assert.strictEqual(error.option, "tls.key")
      }))

    it.live("TLS settings with a plaintext URL are refused, not ignored", () =>
      Effect.gen(function*() {
        for (
          const url of [`mqtt://127.0.0.1:${broker.port}`, `ws://127.0.0.1:${aedesWs.port}`, `unix://${socketPath}`]
        ) {
          const error = yield* connectFailure({ url, tls: { caFile: certs.ca.cert } })
          assert.strictEqual(error._tag, "InvalidOptionError", url)
          assert.strictEqual((error as MqttError.InvalidOptionError).option, "tls", url)
        }
      }))

    it.live("TLS settings with a custom transport are refused", () =>
      Effect.gen(function*() {
        const error = yield* connectFailure({
          transport: NodeSocket.makeNet({ host: "127.0.0.1", port: broker.port }),
          tls: { caFile: certs.ca.cert }
        })
        assert.strictEqual(error._tag, "InvalidOptionError")
        assert.strictEqual((error as MqttError.InvalidOptionError).option, "tls")
      }))
  })

  it.live("a custom TLS transport's certificate failure is a TlsError too", () =>
    Effect.gen(function*() {
      const error = yield* connectFailure({
        transport: NodeSocket.makeTls({ host: "localhost", port: tlsPort, ca: certs.read(certs.otherCa.cert) })
      })
      expectTlsError(error, "ServerCertificateUntrusted")
    }))

  it.live("WebSocket over TLS with a wrong CA fails with TlsError ServerCertificateUntrusted", () =>
    Effect.gen(function*() {
      const error = yield* connectFailure({
        url: `wss://localhost:${aedesWss.port}`,
        tls: { caFile: certs.otherCa.cert }
      })
      expectTlsError(error, "ServerCertificateUntrusted")
    }))
})

// ---------------------------------------------------------------------------------------------------------------
// credentials
// ---------------------------------------------------------------------------------------------------------------

describe("credentials", () => {
  for (const version of [4, 5] as const) {
    it.live(`the right user name and password connect (MQTT ${version === 4 ? "3.1.1" : "5"})`, () =>
      roundTrip({
        url: `mqtt://127.0.0.1:${broker.port}`,
        protocolVersion: version,
        username: user.name,
        password: Redacted.make(user.password)
      }))

    it.live(
      `a wrong password is refused with a ConnectRefusedError carrying the broker's code (MQTT ${
        version === 4 ? "3.1.1" : "5"
      })`,
      () =>
        Effect.gen(function*() {
          const error = yield* connectFailure({
            url: `mqtt://127.0.0.1:${broker.port}`,
            protocolVersion: version,
            username: user.name,
            password: Redacted.make("not-the-password")
          })
          assert.strictEqual(error._tag, "ConnectRefusedError", String(error))
          // Mosquitto 2.0 answers "not authorized" (5 / 0x87) where other brokers say "bad user name or password"
          // (4 / 0x86)
          assert.include(version === 4 ? [4, 5] : [0x86, 0x87], (error as MqttError.ConnectRefusedError).reasonCode)
        })
    )
  }

  it.live("user info in the URL, percent-encoded, is used as the user name and password", () =>
    roundTrip({
      url: `mqtt://${encodeURIComponent(awkward.name)}:${encodeURIComponent(awkward.password)}@127.0.0.1:${broker.port}`
    }))

  it.live("the password option wins over the URL's", () =>
    roundTrip({
      url: `mqtt://${user.name}:wrong@127.0.0.1:${broker.port}`,
      password: Redacted.make(user.password)
    }))

  describe("no error, log line or span holds the password", () => {
    const secret = `s3cret-${runId}-pw`

    const check = (options: MqttClient.Options, expectedTag: MqttError.MqttError["_tag"]) =>
      Effect.gen(function*() {
        const [exit, recorded] = yield* recording(attempt(options))
        const error = assertNoSecret(secret, exit, recorded)
        assert.strictEqual(transportError(error)._tag, expectedTag, String(error))
      })

    it.live("a wrong password against Mosquitto's password_file, given as an option and in the URL", () =>
      Effect.gen(function*() {
        for (const version of [4, 5] as const) {
          yield* check({
            url: `mqtt://127.0.0.1:${broker.port}`,
            protocolVersion: version,
            username: user.name,
            password: Redacted.make(secret)
          }, "ConnectRefusedError")
          yield* check(
            { url: `mqtt://${user.name}:${secret}@127.0.0.1:${broker.port}`, protocolVersion: version },
            "ConnectRefusedError"
          )
        }
      }))

    it.live("a TLS failure", () =>
      check({ url: `mqtts://${user.name}:${secret}@127.0.0.1:${tlsPort}`, tls: goodTls() }, "TlsError"))

    it.live("a refused connection (nothing listening)", () =>
      Effect.gen(function*() {
        const port = yield* Effect.promise(() => freePort())
        yield* check({ url: `mqtt://${user.name}:${secret}@127.0.0.1:${port}` }, "ConnectionLostError")
      }))

    it.live("a WebSocket refused by the server", () =>
      Effect.gen(function*() {
        const server = yield* Effect.acquireRelease(
          Effect.promise(() => startFakeWs({ acceptMqttSubprotocol: false })),
          (s) => Effect.promise(() => s.close())
        )
        yield* check({ url: `ws://${user.name}:${secret}@127.0.0.1:${server.port}` }, "ConnectionLostError")
      }))

    it.live("an invalid URL", () =>
      Effect.gen(function*() {
        for (
          const url of [
            `mqtt://${user.name}:${secret}@127.0.0.1:99999`,
            `bogus://${user.name}:${secret}@127.0.0.1`,
            `mqtt://${user.name}:${secret}@127.0.0.1/${secret}`
          ]
        ) yield* check({ url }, "InvalidOptionError")
      }))
  })
})

// ---------------------------------------------------------------------------------------------------------------
// WebSocket framing
// ---------------------------------------------------------------------------------------------------------------

describe("WebSocket", () => {
  const fakeWs = (options?: Parameters<typeof startFakeWs>[0]) =>
    Effect.acquireRelease(Effect.promise(() => startFakeWs(options)), (s) => Effect.promise(() => s.close()))

  const promise = <A>(evaluate: () => Promise<A>) => guard(Effect.promise(evaluate))

  it.live("wss:// to a plain WebSocket port is a TlsError HandshakeFailed that asks whether the port is a TLS listener, as mqtts:// gives", () =>
    Effect.gen(function*() {
      const server = yield* fakeWs()
      const error = yield* connectFailure({ url: `wss://127.0.0.1:${server.port}/mqtt` })
      expectTlsError(error, "HandshakeFailed")
      assert.include(error.message, "is the port a TLS listener?")
      assert.notInclude(error.message, "../deps/openssl")
    }).pipe(Effect.scoped))

  it.live("an HTTP server that refuses the upgrade (404, 401, 200) or takes it without the subprotocol mqtt: the error says which and what to check", () =>
    Effect.gen(function*() {
      const listen = (server: Http.Server) =>
        Effect.acquireRelease(
          Effect.promise(() =>
            new Promise<number>((resolve) =>
              server.listen(0, "127.0.0.1", () => resolve((server.address() as Net.AddressInfo).port))
            )
          ),
          () => Effect.sync(() => server.close())
        )
      const answering = (status: number) =>
        listen(Http.createServer((_, response) => {
          response.writeHead(status)
          response.end()
        }))
      const cases: ReadonlyArray<readonly [number, RegExp]> = [
        [yield* answering(404), /refused with HTTP 404: no WebSocket endpoint at this path: check the URL's path/],
        [yield* answering(401), /refused with HTTP 401: .*HTTP authentication/],
        [yield* answering(200), /refused with HTTP 200: an HTTP server answered without upgrading/],
        [yield* answering(502), /refused with HTTP 502: .*is this port the broker's WebSocket listener/]
      ]
      // a WebSocket server that selects no subprotocol (not an MQTT endpoint)
      const { WebSocketServer } = yield* Effect.promise(() => import("ws"))
      const plain = Http.createServer()
      const wss = new WebSocketServer({ server: plain, handleProtocols: () => false })
      yield* Effect.addFinalizer(() => Effect.sync(() => wss.close()))
      const noSubprotocol = yield* listen(plain)
      for (const [port, pattern] of [...cases, [noSubprotocol, /without the subprotocol mqtt/] as const]) {
        const error = yield* connectFailure({ url: `ws://127.0.0.1:${port}/mqtt` })
        assert.strictEqual(error._tag, "ConnectionLostError", String(error))
        assert.match(error.message, pattern)
      }
    }).pipe(Effect.scoped))

  it.live("a server that takes the TCP connection and never answers the upgrade: MqttTimeoutError after connectTimeout, as over TCP", () =>
    Effect.gen(function*() {
      const taken = new Set<Net.Socket>()
      const silent = Net.createServer((socket) => void taken.add(socket))
      yield* Effect.acquireRelease(
        Effect.promise(() => new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve))),
        () =>
          Effect.sync(() => {
            for (const socket of taken) socket.destroy()
            silent.close()
          })
      )
      const port = (silent.address() as Net.AddressInfo).port
      for (const url of [`ws://127.0.0.1:${port}/mqtt`, `mqtt://127.0.0.1:${port}`]) {
        const error = yield* connectFailure({ url, connectTimeout: "500 millis" })
        assert.strictEqual(error._tag, "MqttTimeoutError", `${url}: ${String(error)}`)
        assert.strictEqual((error as MqttError.MqttTimeoutError).operation, "connect")
      }
    }).pipe(Effect.scoped))

  it.live("offers the subprotocol mqtt, asks for /mqtt, and sends the URL's credentials in CONNECT only", () =>
    Effect.gen(function*() {
      const server = yield* fakeWs()
      const scope = yield* Scope.make()
      yield* Effect.forkChild(
        Effect.ignore(
          Scope.provide(
            MqttClient.make({ url: `ws://${user.name}:${wsSecret}@127.0.0.1:${server.port}`, reconnect: false }),
            scope
          )
        )
      )
      const connection = yield* promise(() => server.accept())
      const connect = yield* promise(() => connection.next())
      assert.strictEqual(connect.cmd, "connect")
      assert.strictEqual((connect as MqttPacket.IConnectPacket).username, user.name)
      assert.strictEqual(String((connect as MqttPacket.IConnectPacket).password), wsSecret)
      assert.deepStrictEqual(server.requests, [{ url: "/mqtt", protocols: ["mqtt"], authorization: undefined }])
      assert.strictEqual(connection.ws.protocol, "mqtt")
      yield* Scope.close(scope, Exit.void)
    }))

  it.live("reassembles packets split over frames and several packets in one frame, and sends only binary frames", () =>
    Effect.gen(function*() {
      const server = yield* fakeWs()
      const scope = yield* Scope.make()
      const clientFiber = yield* Effect.forkChild(
        Scope.provide(MqttClient.make({ url: `ws://127.0.0.1:${server.port}/custom?x=1`, reconnect: false }), scope)
      )
      const connection = yield* promise(() => server.accept())
      assert.strictEqual((yield* promise(() => connection.next())).cmd, "connect")
      // CONNACK in two frames
      yield* promise(() => connection.sendFrames([Buffer.from([0x20]), Buffer.from([0x02, 0x00, 0x00])]))
      const client = yield* guard(Fiber.join(clientFiber))
      const topic = uniqueTopic("ws-framing")
      const subscribed = yield* Effect.forkChild(client.subscribe(`${topic}/#`, { qos: 1 }))
      const subscribe = (yield* promise(() => connection.next())) as MqttPacket.ISubscribePacket
      assert.strictEqual(subscribe.cmd, "subscribe")
      const big = Crypto.randomBytes(3000)
      // SUBACK and two PUBLISHes in one frame
      yield* promise(() =>
        connection.sendFrames([Buffer.concat([
          connection.encode({ cmd: "suback", messageId: subscribe.messageId!, granted: [1] }),
          connection.encode({
            cmd: "publish",
            topic: `${topic}/a`,
            payload: Buffer.from("one"),
            qos: 0,
            dup: false,
            retain: false
          }),
          connection.encode({
            cmd: "publish",
            topic: `${topic}/b`,
            payload: Buffer.from("two"),
            qos: 1,
            messageId: 7,
            dup: false,
            retain: false
          })
        ])])
      )
      yield* guard(Fiber.join(subscribed))
      // a PUBLISH split in one-byte frames, then one split in three uneven frames
      const small = connection.encode({
        cmd: "publish",
        topic: `${topic}/c`,
        payload: Buffer.from("three"),
        qos: 0,
        dup: false,
        retain: false
      })
      yield* promise(() => connection.sendFrames([...small].map((byte) => Buffer.from([byte]))))
      const large = connection.encode({
        cmd: "publish",
        topic: `${topic}/d`,
        payload: big,
        qos: 0,
        dup: false,
        retain: false
      })
      yield* promise(() => connection.sendFrames([large.subarray(0, 3), large.subarray(3, 1500), large.subarray(1500)]))
      const messages = yield* guard(Stream.runCollect(Stream.take(client.messages, 4)))
      assert.deepStrictEqual(messages.map((m) => m.topic), [`${topic}/a`, `${topic}/b`, `${topic}/c`, `${topic}/d`])
      assert.deepStrictEqual(messages.slice(0, 3).map((m) => m.text), ["one", "two", "three"])
      assert.isTrue(Buffer.from(messages[3].payload).equals(big), "the large payload differs")
      const puback = yield* promise(() => connection.next())
      assert.deepStrictEqual([puback.cmd, (puback as MqttPacket.IPubackPacket).messageId], ["puback", 7])
      assert.isFalse(connection.sawText(), "the client sent a text frame")
      assert.deepStrictEqual(server.requests.map((r) => r.url), ["/custom?x=1"])
      yield* Scope.close(scope, Exit.void)
    }))

  it.live("a text frame from the broker closes the connection (code 1003) with a ProtocolError", () =>
    Effect.gen(function*() {
      const server = yield* fakeWs()
      const scope = yield* Scope.make()
      const clientFiber = yield* Effect.forkChild(
        Scope.provide(MqttClient.make({ url: `ws://127.0.0.1:${server.port}`, reconnect: false }), scope)
      )
      const connection = yield* promise(() => server.accept())
      assert.strictEqual((yield* promise(() => connection.next())).cmd, "connect")
      yield* promise(() =>
        connection.sendFrames([connection.encode({ cmd: "connack", returnCode: 0, sessionPresent: false })])
      )
      const client = yield* guard(Fiber.join(clientFiber))
      connection.ws.send("a text frame")
      const error = errorOf(yield* guard(Effect.exit(client.awaitClose)))
      const found = transportError(error)
      assert.strictEqual(found._tag, "ProtocolError", String(error))
      expect(found.message).toContain("text frame")
      assert.strictEqual(yield* promise(() => connection.closed), 1003)
      yield* Scope.close(scope, Exit.void)
    }))

  it.live("a text frame before CONNACK fails the connection attempt with a ProtocolError", () =>
    Effect.gen(function*() {
      const server = yield* fakeWs()
      const fiber = yield* Effect.forkChild(connectFailure({ url: `ws://127.0.0.1:${server.port}` }))
      const connection = yield* promise(() => server.accept())
      assert.strictEqual((yield* promise(() => connection.next())).cmd, "connect")
      connection.ws.send(" \u0002\u0000\u0000")
      const error = yield* guard(Fiber.join(fiber))
      assert.strictEqual(transportError(error)._tag, "ProtocolError", String(error))
    }))

  it.live("a server that does not select the subprotocol mqtt is refused", () =>
    Effect.gen(function*() {
      const server = yield* fakeWs({ acceptMqttSubprotocol: false })
      const error = yield* connectFailure({ url: `ws://127.0.0.1:${server.port}` })
      assert.strictEqual(error._tag, "ConnectionLostError", String(error))
      expect(error.message).toContain("subprotocol")
    }))
})

// ---------------------------------------------------------------------------------------------------------------
// configuration from the environment
// ---------------------------------------------------------------------------------------------------------------

describe("layerConfig with TLS variables", () => {
  const withEnv = (env: Record<string, string>) => Layer.provide(ConfigProvider.layer(ConfigProvider.fromEnv({ env })))
  const build = (env: Record<string, string>, overrides?: MqttClient.Options) =>
    guard(Effect.exit(Effect.scoped(Effect.asVoid(
      Layer.build(MqttClient.layerConfig(MqttClient.config, { reconnect: false, ...overrides }).pipe(withEnv(env)))
    ))))

  it.live("MQTT_CA_FILE, MQTT_CERT_FILE, MQTT_KEY_FILE and MQTT_KEY_PASSPHRASE connect over TLS", () =>
    Effect.gen(function*() {
      const exit = yield* build({
        MQTT_URL: tlsUrl(),
        MQTT_CA_FILE: certs.ca.cert,
        MQTT_CERT_FILE: certs.client.cert,
        MQTT_KEY_FILE: certs.clientEncryptedKey,
        MQTT_KEY_PASSPHRASE: certs.clientKeyPassphrase
      })
      assert.isTrue(Exit.isSuccess(exit), Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "")
    }))

  it.live("MQTT_TLS_SERVERNAME is the name checked against the certificate", () =>
    Effect.gen(function*() {
      const env = {
        MQTT_URL: tlsUrl("127.0.0.1"),
        MQTT_CA_FILE: certs.ca.cert,
        MQTT_CERT_FILE: certs.client.cert,
        MQTT_KEY_FILE: certs.client.key
      }
      expectTlsError(errorOf(yield* build(env)) as MqttError.MqttError, "HostnameMismatch")
      assert.isTrue(Exit.isSuccess(yield* build({ ...env, MQTT_TLS_SERVERNAME: "localhost" })))
    }))

  it.live("TLS settings given in code are merged with those from the environment", () =>
    Effect.gen(function*() {
      const exit = yield* build({ MQTT_URL: tlsUrl(), MQTT_CA_FILE: certs.ca.cert }, {
        tls: { certFile: certs.client.cert, keyFile: certs.client.key }
      })
      assert.isTrue(Exit.isSuccess(exit), Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "")
    }))

  it.live("MQTT_CA_FILE with an mqtt:// URL is refused", () =>
    Effect.gen(function*() {
      const error = errorOf(yield* build({ MQTT_URL: `mqtt://127.0.0.1:${broker.port}`, MQTT_CA_FILE: certs.ca.cert }))
      assert.strictEqual((error as MqttError.InvalidOptionError).option, "MQTT_CA_FILE")
    }))

  it.live("an invalid MQTT_TLS_MIN_VERSION is a ConfigError naming it", () =>
    Effect.gen(function*() {
      const exit = yield* build({ MQTT_URL: tlsUrl(), MQTT_TLS_MIN_VERSION: "TLSv1.0" })
      assert.isTrue(Exit.isFailure(exit))
      expect(Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "").toContain("MQTT_TLS_MIN_VERSION")
    }))
})
