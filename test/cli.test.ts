/**
 * The `effect-mqtt` command line, run as a user runs it (a child process, see test/support/cli.ts), against a
 * Mosquitto these tests start and against `mosquitto_pub` / `mosquitto_sub` in both directions.
 *
 * Every wait ends on an event (a SUBACK shown by `mosquitto_sub -d` or by `effect-mqtt sub -d`, a process exit, a
 * line in the broker's log); timeouts only guard against a hang. No assertion is about time.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { execFile, execFileSync, spawn } from "node:child_process"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { type Certs, makeCerts } from "./support/certs.ts"
import { CLI_COMMAND, type CliResult, runCli, spawnCli } from "./support/cli.ts"
import * as FakeBroker from "./support/FakeBroker.ts"
import {
  freePort,
  type MosquittoHandle,
  mosquittoPub,
  mosquittoSub,
  requireMosquittoClients,
  startMosquitto
} from "./support/Mosquitto.ts"

const runId = Crypto.randomBytes(3).toString("hex")
let topicCount = 0
/** A topic no other test (nor a previous run) publishes to. */
const uniqueTopic = (name: string) => `cli-${runId}/${name}/${++topicCount}`
const qosLevels = [0, 1, 2] as const

let broker: MosquittoHandle
let dir: string
beforeAll(async () => {
  requireMosquittoClients()
  broker = await startMosquitto()
  dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-mqtt-cli-"))
})
afterAll(async () => {
  await broker?.dispose()
  if (dir !== undefined) Fs.rmSync(dir, { recursive: true, force: true })
})

const port = () => String(broker.port)
const url = () => broker.url

/** The lines a process wrote, without the last empty one. */
const lines = (text: string) => text.split("\n").filter((line, i, all) => i < all.length - 1 || line !== "")

const assertDone = (result: CliResult, what: string) => {
  assert.strictEqual(result.code, 0, `${what}: exit code ${result.code}, stderr: ${result.stderr}`)
  assert.strictEqual(result.stderr, "", `${what}: stderr`)
}

/** The failure is reported on exactly one line of standard error, as `effect-mqtt: ...`. */
const assertOneErrorLine = (result: CliResult, pattern: RegExp) => {
  const errorLines = lines(result.stderr)
  assert.strictEqual(errorLines.length, 1, `one line on stderr, got:\n${result.stderr}`)
  assert.match(errorLines[0], /^effect-mqtt: /)
  assert.match(errorLines[0], pattern)
}

/** `mosquitto_sub -C 1` with its own `-F` format, for a retained message (no need to wait for the SUBACK). */
const mosquittoSubRetained = (args: ReadonlyArray<string>, format: string, on = port()): Promise<string> =>
  new Promise((resolve, reject) =>
    execFile(
      "mosquitto_sub",
      ["-h", "127.0.0.1", "-p", on, "-C", "1", "-W", "20", "-F", format, ...args],
      { encoding: "utf8" },
      (error, stdout, stderr) => error === null ? resolve(stdout) : reject(new Error(`${error.message}\n${stderr}`))
    )
  )

/** Starts `effect-mqtt sub` with `--debug` and resolves once it has its SUBACK. */
const subscribed = async (args: ReadonlyArray<string>, env?: Record<string, string>) => {
  const process = spawnCli(["sub", "--url", url(), "-d", ...args], env === undefined ? undefined : { env })
  await process.waitForStderr(/effect-mqtt: subscribed: /)
  return process
}

/** Standard error without the `--debug` lines. */
const errorsOf = (stderr: string) =>
  lines(stderr).filter((line) => !/^effect-mqtt: (connected as|subscribed:|closed$)/.test(line))

describe("pub -> mosquitto_sub", () => {
  for (const qos of qosLevels) {
    it(`QoS ${qos}: mosquitto_sub receives the message at QoS ${qos}`, async () => {
      const topic = uniqueTopic("pub-qos")
      const sub = mosquittoSub(["-p", port(), "-t", topic, "-q", "2"], { expectedMessages: 1 })
      await sub.ready
      assertDone(await runCli(["pub", "--url", url(), "-t", topic, "-m", `hello ${qos}`, "-q", String(qos)]), "pub")
      const { messages } = await sub.done
      assert.strictEqual(messages.length, 1)
      assert.strictEqual(messages[0].text, `hello ${qos}`)
      assert.strictEqual(messages[0].qos, qos)
      assert.isFalse(messages[0].retain)
    })
  }

  it("-r: a later mosquitto_sub receives the message as retained; -h and -p choose the broker as mosquitto's", async () => {
    const topic = uniqueTopic("retained")
    assertDone(
      await runCli(["pub", "-h", "127.0.0.1", "-p", port(), "-t", topic, "-m", "kept", "-r", "-q", "1"]),
      "pub"
    )
    assert.strictEqual(await mosquittoSubRetained(["-t", topic, "-q", "1"], "%r %q %p"), "1 1 kept\n")
  })

  it("-i, -k and -u reach the broker's CONNECT (its log names them); no prompt without a terminal", async () => {
    const topic = uniqueTopic("connect")
    const clientId = `cli-id-${runId}`
    assertDone(
      await runCli(["pub", "--url", url(), "-i", clientId, "-k", "17", "-u", "bob", "-t", topic, "-m", "x"]),
      "pub"
    )
    assert.match(broker.logs(), new RegExp(`as ${clientId} \\(p2, c1, k17, u'bob'\\)`))
  })

  it("-l: one message per line of standard input, in order", async () => {
    const topic = uniqueTopic("lines")
    const count = 50
    const sub = mosquittoSub(["-p", port(), "-t", topic, "-q", "1"], { expectedMessages: count })
    await sub.ready
    const input = Array.from({ length: count }, (_, i) => `line ${i}`).join("\n") + "\n"
    assertDone(await runCli(["pub", "--url", url(), "-t", topic, "-l", "-q", "1"], { stdin: input }), "pub")
    const { messages } = await sub.done
    assert.deepStrictEqual(messages.map((m) => m.text), Array.from({ length: count }, (_, i) => `line ${i}`))
  })

  it("-f sends the file's bytes unchanged; -s sends standard input; -n an empty message", async () => {
    const topic = uniqueTopic("bytes")
    const bytes = Crypto.randomBytes(2048)
    const file = Path.join(dir, "payload.bin")
    Fs.writeFileSync(file, bytes)
    const stdinBytes = Buffer.from([0, 1, 2, 0xff, 0x0a, 0x0d])
    const sub = mosquittoSub(["-p", port(), "-t", topic, "-q", "1"], { expectedMessages: 3 })
    await sub.ready
    assertDone(await runCli(["pub", "--url", url(), "-t", topic, "-f", file, "-q", "1"]), "pub -f")
    assertDone(await runCli(["pub", "--url", url(), "-t", topic, "-s", "-q", "1"], { stdin: stdinBytes }), "pub -s")
    assertDone(await runCli(["pub", "--url", url(), "-t", topic, "-n", "-q", "1"]), "pub -n")
    const { messages } = await sub.done
    assert.isTrue(messages[0].payload.equals(bytes), "-f")
    assert.isTrue(messages[1].payload.equals(stdinBytes), "-s")
    assert.strictEqual(messages[2].payload.byteLength, 0, "-n")
  })

  it("--count publishes the message n times; --interval spaces them", async () => {
    const topic = uniqueTopic("count")
    const sub = mosquittoSub(["-p", port(), "-t", topic, "-q", "2"], { expectedMessages: 103 })
    await sub.ready
    assertDone(await runCli(["pub", "--url", url(), "-t", topic, "-m", "load", "-q", "1", "--count", "100"]), "count")
    assertDone(
      await runCli(["pub", "--url", url(), "-t", topic, "-m", "slow", "-q", "2", "--count", "3", "--interval", "0.01"]),
      "interval"
    )
    const { messages } = await sub.done
    assert.strictEqual(messages.filter((m) => m.text === "load" && m.qos === 1).length, 100)
    assert.strictEqual(messages.filter((m) => m.text === "slow" && m.qos === 2).length, 3)
  })

  it("MQTT 5: the properties and repeated user properties reach mosquitto_sub -V mqttv5", async () => {
    const topic = uniqueTopic("properties")
    assertDone(
      await runCli([
        ...["pub", "--url", url(), "-V", "5", "-t", topic, "-m", "with properties", "-r"],
        ...["--content-type", "text/plain", "--response-topic", "answers", "--correlation-data", "abc"],
        ...["--message-expiry", "3600", "--payload-format", "utf8"],
        ...["--user-property", "a=1", "--user-property", "a=2", "--user-property", "b=x=y"]
      ]),
      "pub"
    )
    const shown = await mosquittoSubRetained(["-V", "mqttv5", "-t", topic], "%p|%C|%R|%D|%F|%P|%E")
    const [payload, contentType, responseTopic, correlation, format, userProperties, expiry] = shown.trim().split("|")
    assert.deepStrictEqual(
      [payload, contentType, responseTopic, correlation, format, userProperties],
      ["with properties", "text/plain", "answers", "abc", "1", "a:1 a:2 b:x=y"]
    )
    // the broker counts the expiry down while it holds the message
    assert.isTrue(Number(expiry) > 0 && Number(expiry) <= 3600, `message expiry ${expiry}`)
  })
})

describe("pub -l across a broker restart", () => {
  it("reconnects: the lines written while the broker was down go out once it is back; the command ends with its input", async () => {
    const broker = await startMosquitto({ persistence: true })
    try {
      const topic = uniqueTopic("lines-restart")
      // a persistent subscriber: the broker keeps its subscription and the QoS 1 messages across the restart
      const sub = mosquittoSub(
        ["-p", String(broker.port), "-t", topic, "-q", "1", "-c", "-i", `cli-sub-${runId}`],
        { expectedMessages: 3, timeoutMs: 40_000 }
      )
      await sub.ready
      const pub = spawnCli(["pub", "--url", broker.url, "-t", topic, "-l", "-q", "1", "-d"], {
        keepStdinOpen: true,
        timeoutMs: 40_000
      })
      await pub.waitForStderr(/connected as/)
      pub.child.stdin.write("before\n")
      // "before" reached the subscriber before the broker goes down
      for (let i = 0; i < 400 && !/Sending PUBLISH to cli-sub/.test(broker.logs()); i++) {
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
      await broker.stop()
      pub.child.stdin.write("during\n")
      await broker.restart()
      pub.child.stdin.end("after\n")
      const result = await pub.done
      assert.strictEqual(result.code, 0, result.stderr)
      const { messages } = await sub.done
      assert.deepStrictEqual(messages.map((m) => m.text), ["before", "during", "after"])
    } finally {
      await broker.dispose()
    }
  })
})

describe("-c and -x: a session kept between runs (as mosquitto_sub)", () => {
  /** Subscribes with `args` and exits at once (-W), then mosquitto_pub sends three QoS 1 messages meanwhile. */
  const subscribeThenPublish = async (topic: string, args: ReadonlyArray<string>) => {
    const first = await runCli(["sub", "--url", url(), "-t", topic, "-q", "1", "-W", "0.5", ...args])
    assert.strictEqual(first.code, 0, first.stderr)
    for (const text of ["m1", "m2", "m3"]) {
      const published = await mosquittoPub(["-p", port(), "-t", topic, "-m", text, "-q", "1"])
      assert.strictEqual(published.code, 0, published.stderr)
    }
  }
  /** The next run with `args`: what it prints within 3 s, and its `--debug` CONNACK line. */
  const nextRun = async (topic: string, args: ReadonlyArray<string>) => {
    const result = await runCli(["sub", "--url", url(), "-d", "-t", topic, "-q", "1", "-W", "3", ...args])
    assert.strictEqual(result.code, 0, result.stderr)
    return { messages: lines(result.stdout), connack: lines(result.stderr).find((l) => l.includes("connected as")) }
  }

  for (const version of ["4", "5"]) {
    it(`MQTT ${version === "5" ? "5" : "3.1.1"}: -c -i keeps the subscription, what arrives meanwhile and what a run did not print; without -c the next run starts anew`, async () => {
      const kept = uniqueTopic("kept")
      const id = `cli-kept-${runId}-${version}`
      await subscribeThenPublish(kept, ["-V", version, "-c", "-i", id])
      const resumed = await nextRun(kept, ["-V", version, "-c", "-i", id, "-C", "1"])
      assert.deepStrictEqual(resumed.messages, ["m1"])
      assert.match(resumed.connack ?? "", /session present: yes/)
      // what the run before did not print was not acknowledged: it comes again
      const rest = await nextRun(kept, ["-V", version, "-c", "-i", id, "-C", "2"])
      assert.deepStrictEqual(rest.messages, ["m2", "m3"])

      const clean = uniqueTopic("clean")
      await subscribeThenPublish(clean, ["-V", version, "-i", `${id}-clean`])
      const fresh = await nextRun(clean, ["-V", version, "-i", `${id}-clean`])
      assert.deepStrictEqual(fresh.messages, [])
      assert.match(fresh.connack ?? "", /session present: no/)
    })
  }

  it("MQTT 5: -c -x 0 asks the broker to end the session when the connection ends: nothing is kept", async () => {
    const topic = uniqueTopic("expired")
    const id = `cli-expiry-${runId}`
    await subscribeThenPublish(topic, ["-V", "5", "-c", "-x", "0", "-i", id])
    const next = await nextRun(topic, ["-V", "5", "-c", "-i", id])
    assert.deepStrictEqual(next.messages, [])
    assert.match(next.connack ?? "", /session present: no/)
  })

  it("MQTT 5: -x -1 (never) keeps the session without -c's Clean Start 0 on the first run", async () => {
    const topic = uniqueTopic("never")
    const id = `cli-never-${runId}`
    await subscribeThenPublish(topic, ["-V", "5", "-x", "-1", "-i", id])
    const next = await nextRun(topic, ["-V", "5", "-c", "-i", id])
    assert.deepStrictEqual(next.messages, ["m1", "m2", "m3"])
  })
})

describe("mosquitto_pub -> sub", () => {
  for (const qos of qosLevels) {
    it(`QoS ${qos}: sub --format json shows the message at QoS ${qos}`, async () => {
      const topic = uniqueTopic("sub-qos")
      const sub = await subscribed(["-t", topic, "-q", "2", "-C", "1", "--format", "json"])
      const published = await mosquittoPub(["-p", port(), "-t", topic, "-m", `hi ${qos}`, "-q", String(qos)])
      assert.strictEqual(published.code, 0, published.stderr)
      const result = await sub.done
      assert.strictEqual(result.code, 0, result.stderr)
      assert.deepStrictEqual(errorsOf(result.stderr), [])
      assert.deepStrictEqual(lines(result.stdout).map((line) => JSON.parse(line)), [
        { topic, payload: `hi ${qos}`, payloadEncoding: "utf8", qos, retain: false, properties: {} }
      ])
    })
  }

  it("several -t, and -v: the topic, a space and the payload, a line each", async () => {
    const [a, b] = [uniqueTopic("a"), uniqueTopic("b")]
    const sub = await subscribed(["-t", a, "-t", b, "-q", "1", "-C", "2", "-v"])
    await mosquittoPub(["-p", port(), "-t", a, "-m", "first", "-q", "1"])
    await mosquittoPub(["-p", port(), "-t", b, "-m", "second", "-q", "1"])
    const result = await sub.done
    assert.strictEqual(result.code, 0, result.stderr)
    assert.deepStrictEqual(lines(result.stdout).sort(), [`${a} first`, `${b} second`].sort())
  })

  it("text output is the payload's exact bytes and a newline", async () => {
    const topic = uniqueTopic("raw")
    const bytes = Crypto.randomBytes(300)
    const file = Path.join(dir, "raw.bin")
    Fs.writeFileSync(file, bytes)
    const sub = await subscribed(["-t", topic, "-C", "1"])
    await mosquittoPub(["-p", port(), "-t", topic, "-f", file])
    const result = await sub.done
    assert.strictEqual(result.code, 0, result.stderr)
    assert.isTrue(result.stdoutBytes.equals(Buffer.concat([bytes, Buffer.from("\n")])))
  })

  it("--format json: a binary payload as base64, a UTF-8 payload as text, the retain flag", async () => {
    const prefix = uniqueTopic("json")
    const bytes = Buffer.from([0xff, 0xfe, 0x00, 0xc3, 0x28, 0x80])
    const file = Path.join(dir, "binary.bin")
    Fs.writeFileSync(file, bytes)
    await mosquittoPub(["-p", port(), "-t", `${prefix}/binary`, "-f", file, "-r", "-q", "1"])
    await mosquittoPub(["-p", port(), "-t", `${prefix}/text`, "-m", "héllo ✓", "-r", "-q", "1"])
    const result = await runCli(["sub", "--url", url(), "-t", `${prefix}/#`, "-q", "1", "-C", "2", "--format", "json"])
    assertDone(result, "sub")
    const objects = lines(result.stdout).map((line) => JSON.parse(line))
    const binary = objects.find((o) => o.topic === `${prefix}/binary`)
    const text = objects.find((o) => o.topic === `${prefix}/text`)
    assert.deepStrictEqual(binary, {
      topic: `${prefix}/binary`,
      payload: bytes.toString("base64"),
      payloadEncoding: "base64",
      qos: 1,
      retain: true,
      properties: {}
    })
    assert.isTrue(Buffer.from(binary.payload, "base64").equals(bytes))
    assert.deepStrictEqual(text, {
      topic: `${prefix}/text`,
      payload: "héllo ✓",
      payloadEncoding: "utf8",
      qos: 1,
      retain: true,
      properties: {}
    })
  })

  it("MQTT 5: user properties and properties of mosquitto_pub -D appear in the JSON", async () => {
    const topic = uniqueTopic("v5")
    const sub = await subscribed(["-V", "5", "-t", topic, "-q", "1", "-C", "1", "--format", "json"])
    const published = await mosquittoPub([
      ...["-p", port(), "-V", "mqttv5", "-t", topic, "-m", "{}", "-q", "1"],
      ...["-D", "publish", "user-property", "k", "v", "-D", "publish", "user-property", "k", "w"],
      ...["-D", "publish", "user-property", "other", "x"],
      ...["-D", "publish", "content-type", "application/json", "-D", "publish", "response-topic", "back"],
      ...["-D", "publish", "correlation-data", "id-1", "-D", "publish", "payload-format-indicator", "1"]
    ])
    assert.strictEqual(published.code, 0, published.stderr)
    const result = await sub.done
    assert.strictEqual(result.code, 0, result.stderr)
    const [object] = lines(result.stdout).map((line) => JSON.parse(line))
    assert.deepStrictEqual(object.properties, {
      payloadFormatIndicator: true,
      contentType: "application/json",
      responseTopic: "back",
      correlationData: Buffer.from("id-1").toString("base64"),
      userProperties: [["k", "v"], ["k", "w"], ["other", "x"]]
    })
  })

  it("-W with -C: exit code 3 and one line when fewer messages arrive; -W alone: exit code 0", async () => {
    const topic = uniqueTopic("timeout")
    const counted = await runCli(["sub", "--url", url(), "-t", topic, "-C", "1", "-W", "0.5"])
    assert.strictEqual(counted.code, 3)
    assertOneErrorLine(counted, /timed out after 0\.5 s with 0 of 1 messages/)
    assert.strictEqual(counted.stdout, "")
    const timed = await runCli(["sub", "--url", url(), "-t", topic, "-W", "0.5"])
    assertDone(timed, "sub -W")
  })

  it("SIGTERM and SIGINT: exit code 0 after a clean DISCONNECT, as mosquitto_sub", async () => {
    for (const signal of ["SIGTERM", "SIGINT"] as const) {
      const clientId = `cli-stop-${signal}-${runId}`
      const sub = await subscribed(["-t", uniqueTopic("stop"), "-i", clientId])
      sub.child.kill(signal)
      const result = await sub.done
      assert.strictEqual(result.code, 0, `${signal}: ${result.stderr}`)
      assert.deepStrictEqual(errorsOf(result.stderr), [])
      // Mosquitto says "disconnected" after a DISCONNECT, "closed its connection" otherwise
      await Effect.runPromise(waitForLog(new RegExp(`Client ${clientId} disconnected\\.`)))
    }
  })
})

/** Waits (polling the log, 20 s at most) until the broker's log matches. */
const waitForLog = (pattern: RegExp) =>
  Effect.gen(function*() {
    while (!pattern.test(broker.logs())) yield* Effect.sleep("50 millis")
  }).pipe(Effect.timeout("20 seconds"))

describe("--no-local", () => {
  it.live("sends the No Local subscription option, as a scripted broker sees on the wire", () =>
    Effect.gen(function*() {
      const fake = yield* FakeBroker.make({ protocolVersion: 5 })
      const sub = spawnCli(["sub", "--url", fake.url, "-V", "5", "-t", "own/#", "--no-local", "-q", "1", "-C", "1"])
      const { connection } = yield* fake.acceptAndConnack()
      const subscribe = yield* connection.expect("subscribe")
      assert.deepStrictEqual(
        subscribe.subscriptions.map((s) => [s.topic, s.qos, s.nl]),
        [["own/#", 1, true]]
      )
      yield* connection.send({ cmd: "suback", messageId: subscribe.messageId!, granted: [1] })
      yield* connection.send({
        cmd: "publish",
        topic: "own/x",
        payload: Buffer.from("p"),
        qos: 0,
        dup: false,
        retain: false
      })
      const result = yield* Effect.promise(() => sub.done)
      assertDone(result, "sub")
      assert.strictEqual(result.stdout, "p\n")
    }))

  it("without --protocol 5: a usage error, before connecting", async () => {
    const result = await runCli(["sub", "--url", url(), "-t", "x", "--no-local"])
    assert.strictEqual(result.code, 2)
    assertOneErrorLine(result, /--no-local needs MQTT 5/)
  })
})

describe("TLS files", () => {
  let certs: Certs
  let tlsBroker: MosquittoHandle
  let tlsPort: number
  beforeAll(async () => {
    certs = makeCerts()
    tlsPort = await freePort()
    tlsBroker = await startMosquitto({
      protocolConfig: [
        `listener ${tlsPort} 127.0.0.1`,
        `cafile ${certs.ca.cert}`,
        `certfile ${certs.server.cert}`,
        `keyfile ${certs.server.key}`,
        "require_certificate true"
      ].join("\n")
    })
  })
  afterAll(async () => {
    await tlsBroker?.dispose()
    certs?.dispose()
  })

  it("--cafile, --cert and --key with -h/-p: TLS as mosquitto_pub (mqtts), delivered to a plain subscriber", async () => {
    const topic = uniqueTopic("tls")
    const result = await runCli([
      ...["pub", "-h", "localhost", "-p", String(tlsPort), "-t", topic, "-m", "over tls", "-r", "-q", "1"],
      ...["--cafile", certs.ca.cert, "--cert", certs.client.cert, "--key", certs.client.key]
    ])
    assertDone(result, "pub over TLS")
    assert.strictEqual(await mosquittoSubRetained(["-t", topic, "-q", "1"], "%p", String(tlsBroker.port)), "over tls\n")
  })

  it("the files from MQTT_CA_FILE, MQTT_CERT_FILE and MQTT_KEY_FILE, with --url mqtts://", async () => {
    const result = await runCli(["sub", "--url", `mqtts://localhost:${tlsPort}`, "-t", "t", "-W", "0.2"], {
      env: { MQTT_CA_FILE: certs.ca.cert, MQTT_CERT_FILE: certs.client.cert, MQTT_KEY_FILE: certs.client.key }
    })
    assertDone(result, "sub over TLS")
  })

  it("an untrusted broker or a missing client certificate: exit code 1 and one line", async () => {
    const target = ["pub", "--url", `mqtts://localhost:${tlsPort}`, "-t", "t", "-m", "x"]
    const untrusted = await runCli([...target, "--cafile", certs.otherCa.cert])
    assert.strictEqual(untrusted.code, 1, untrusted.stderr)
    assertOneErrorLine(untrusted, /TLS with the broker at \S+ failed \(the broker's certificate is not trusted\)/)
    // what to check, in the command line's flags, not the library's option names
    assert.match(untrusted.stderr, /with --cafile \(or \$MQTT_CA_FILE\)/)
    assert.notMatch(untrusted.stderr, /tls\./)
    const noClientCertificate = await runCli([...target, "--cafile", certs.ca.cert])
    assert.strictEqual(noClientCertificate.code, 1, noClientCertificate.stderr)
    assertOneErrorLine(noClientCertificate, /TLS with the broker at \S+ failed/)
    assert.match(noClientCertificate.stderr, /--cert and --key/)
    assert.notMatch(noClientCertificate.stderr, /tls\./)
  })

  it("--insecure connects to an untrusted broker and warns on standard error, not standard output", async () => {
    const result = await runCli([
      ...["pub", "--url", `mqtts://localhost:${tlsPort}`, "-t", "t", "-m", "x", "--insecure"],
      ...["--cert", certs.client.cert, "--key", certs.client.key]
    ])
    assert.strictEqual(result.code, 0, result.stderr)
    assert.strictEqual(result.stdout, "")
    assert.include(result.stderr, "NOT verified")
  })
})

describe("exit codes", () => {
  describe("a broker with a password file", () => {
    const password = `right-${Crypto.randomBytes(6).toString("hex")}`
    let secured: MosquittoHandle
    beforeAll(async () => {
      const passwordFile = Path.join(dir, "passwords")
      execFileSync("mosquitto_passwd", ["-c", "-b", passwordFile, "alice", password])
      secured = await startMosquitto({ protocolConfig: `allow_anonymous false\npassword_file ${passwordFile}` })
    })
    afterAll(() => secured?.dispose())

    it("the password from MQTT_PASSWORD: exit code 0, and the password in no output", async () => {
      const result = await runCli(["pub", "--url", secured.url, "-u", "alice", "-t", "t", "-m", "x", "-q", "1"], {
        env: { MQTT_PASSWORD: password }
      })
      assertDone(result, "pub")
      assert.notInclude(result.stdout + result.stderr, password)
    })

    it("a wrong password (variable or -P) or none: exit code 1, one line naming the refusal, no password shown", async () => {
      const wrong = `wrong-${Crypto.randomBytes(6).toString("hex")}`
      const attempts: ReadonlyArray<readonly [ReadonlyArray<string>, Record<string, string> | undefined]> = [
        [["pub", "--url", secured.url, "-u", "alice", "-t", "t", "-m", "x"], { MQTT_PASSWORD: wrong }],
        [["sub", "--url", secured.url, "-u", "alice", "-t", "t"], { MQTT_PASSWORD: wrong }],
        [["pub", "--url", secured.url, "-u", "alice", "-P", wrong, "-V", "5", "-t", "t", "-m", "x"], undefined],
        [["sub", "--url", secured.url, "-t", "t"], undefined]
      ]
      for (const [args, env] of attempts) {
        const result = await runCli(args, env === undefined ? undefined : { env })
        assert.strictEqual(result.code, 1, `${args.join(" ")}: ${result.stderr}`)
        assertOneErrorLine(result, /refused the connection: not authorized/)
        assert.strictEqual(result.stdout, "")
        assert.notInclude(result.stderr, wrong)
        assert.notInclude(result.stderr, password)
      }
    })

    it("on a terminal, the password is asked for, never echoed, and used", async () => {
      const script = findScript()
      const command = [...CLI_COMMAND, "pub", "--url", secured.url, "-u", "alice", "-t", "t", "-m", "x", "-q", "1"]
        .map(shellQuote).join(" ")
      const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME, TERM: "xterm", NO_COLOR: "1" }
      // script(1) runs the command on a pseudo-terminal and copies our standard input to it
      const child = spawn(script, ["-q", "-f", "-e", "-c", command, "/dev/null"], { env, stdio: "pipe" })
      let output = ""
      const guard = setTimeout(() => child.kill("SIGKILL"), 30_000)
      const prompted = new Promise<void>((resolve) =>
        child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
          output += chunk
          if (output.includes("Password for alice")) resolve()
        })
      )
      const exited = new Promise<number | null>((resolve) => child.once("close", (code) => resolve(code)))
      await Promise.race([prompted, exited])
      child.stdin.write(`${password}\r`)
      const code = await exited
      clearTimeout(guard)
      child.stdin.end()
      assert.strictEqual(code, 0, output)
      assert.include(output, "Password for alice")
      assert.notInclude(output, password)
    })
  })

  it("a closed port: exit code 1 and one line, for pub and sub", async () => {
    const closed = `mqtt://127.0.0.1:${await closedPort()}`
    for (const args of [["pub", "-t", "t", "-m", "x"], ["sub", "-t", "t"]]) {
      const result = await runCli([...args, "--url", closed])
      assert.strictEqual(result.code, 1, result.stderr)
      assertOneErrorLine(result, /could not connect/i)
      assert.strictEqual(result.stdout, "")
    }
  })

  it("usage errors: exit code 2, one line on stderr, nothing on stdout", async () => {
    const cases: ReadonlyArray<readonly [ReadonlyArray<string>, RegExp]> = [
      [["pub", "-t", "t"], /give exactly one of -m, -f, -s, -n or -l \(0 given\)/],
      [["pub", "-t", "t", "-m", "x", "-n"], /give exactly one of/],
      [["pub", "-m", "x"], /Missing required flag: --topic/],
      [["pub", "-t", "a/#", "-m", "x"], /Invalid topic name "a\/#"/],
      [["sub", "-t", "a/#/b"], /Invalid topic filter/],
      [["pub", "-t", "t", "-m", "x", "-q", "3"], /--qos: "3"/],
      [["pub", "-t", "t", "-m", "x", "--bogus"], /unknown flag --bogus/],
      [["pub", "-t", "t", "-l", "--count", "2"], /--count applies to -m, -f, -s and -n/],
      [["pub", "-t", "t", "-m", "x", "--user-property", "k=v"], /--user-property needs MQTT 5/],
      [["pub", "-V", "5", "-t", "t", "-m", "x", "--user-property", "novalue"], /expects name=value/],
      [["pub", "-t", "t", "-f", "/nonexistent/file"], /--file: "\/nonexistent\/file"\. Expected: Path does not exist/],
      [["sub", "-t", "t", "-C", "0"], /-C must be at least 1/],
      [["sub", "-t", "t", "--url", "foo://host"], /Invalid option "url"/],
      [["sbu", "-t", "t"], /unknown command "sbu" \(did you mean sub\?\)/],
      [["sub", "-t", "t", "-p", "99999"], /--port 99999: a TCP port is 1 to 65535/],
      [["pub", "-t", "t", "-m", "x", "-h", "localhost", "-p", "0"], /--port 0: a TCP port is 1 to 65535/],
      [["sub", "-t", "t", "-c"], /-c needs a client identifier \(-i or \$MQTT_CLIENT_ID\)/],
      [["sub", "-V", "5", "-t", "t", "-c", "-i", ""], /-c needs a client identifier \(-i or \$MQTT_CLIENT_ID\)/],
      [["sub", "-t", "t", "-i", "x", "-x", "10"], /-x needs MQTT 5: add --protocol 5/],
      [["sub", "-V", "5", "-t", "t", "-i", "x", "-x", "soon"], /-x soon: seconds from 0 to 4294967294, or never/],
      [["pub", "-V", "5", "-t", "t", "-m", "x", "-x", "4294967296"], /-x 4294967296: seconds from 0/]
    ]
    for (const [args, pattern] of cases) {
      const result = await runCli(args.includes("--url") || args.includes("-p") ? args : [...args, "--url", url()])
      assert.strictEqual(result.code, 2, `${args.join(" ")}: ${result.stderr}`)
      assertOneErrorLine(result, pattern)
      assert.strictEqual(result.stdout, "", args.join(" "))
    }
  })

  it("a malformed MQTT_* variable is a usage error", async () => {
    const result = await runCli(["pub", "-t", "t", "-m", "x"], { env: { MQTT_PROTOCOL_VERSION: "7" } })
    assert.strictEqual(result.code, 2)
    assertOneErrorLine(result, /invalid environment variable: .*MQTT_PROTOCOL_VERSION/)
  })

  it("TLS settings with a plaintext URL: a usage error naming the variable or flag, and where the URL came from", async () => {
    const plain = "mqtt://127.0.0.1:1883"
    const fromEnv = await runCli(["pub", "-t", "t", "-m", "x"], {
      env: { MQTT_URL: plain, MQTT_CA_FILE: "/etc/ssl/ca.pem" }
    })
    assert.strictEqual(fromEnv.code, 2, fromEnv.stderr)
    assertOneErrorLine(
      fromEnv,
      /MQTT_CA_FILE is set, but the URL \(mqtt:\/\/127\.0\.0\.1:1883, from MQTT_URL\) is not encrypted/
    )
    const fromFlag = await runCli(["sub", "-t", "t", "--url", plain, "--cafile", import.meta.filename], {
      env: { MQTT_TLS_SERVERNAME: "broker.example" }
    })
    assert.strictEqual(fromFlag.code, 2, fromFlag.stderr)
    assertOneErrorLine(fromFlag, /--cafile, MQTT_TLS_SERVERNAME are set, but the URL \(.*, from --url\)/)
    assert.strictEqual(fromFlag.stdout, "")
  })

  it("--protocol 3 goes to the client: refused as a usage error without MQTT 3.1 support, published with it", async () => {
    const topic = uniqueTopic("v31")
    const result = await runCli(["pub", "--url", url(), "--protocol", "3", "-t", topic, "-m", "old", "-r"])
    if (result.code === 2) {
      assertOneErrorLine(result, /Invalid option "protocolVersion"/)
    } else {
      assertDone(result, "pub --protocol 3")
      assert.strictEqual(await mosquittoSubRetained(["-t", topic], "%p"), "old\n")
    }
  })
})

describe("help and completions", () => {
  it("--help: exit code 0, the subcommands, the exit codes and examples", async () => {
    const result = await runCli(["--help"])
    assertDone(result, "--help")
    for (const text of ["pub", "sub", "Exit codes", "EXAMPLES", "effect-mqtt sub -t 'sensors/#' -v"]) {
      assert.include(result.stdout, text)
    }
  })

  it("pub --help and sub --help: the mosquitto-style flags, the password advice and examples", async () => {
    const pub = await runCli(["pub", "--help"])
    assertDone(pub, "pub --help")
    for (const flag of ["--topic, -t", "--message, -m", "--file, -f", "--stdin-line, -l", "--null-message, -n"]) {
      assert.include(pub.stdout, flag)
    }
    for (const flag of ["--qos, -q", "--retain, -r", "--user-property", "--count", "--interval", "--host, -h"]) {
      assert.include(pub.stdout, flag)
    }
    assert.match(pub.stdout, /--password, -P.*Prefer \$MQTT_PASSWORD or the prompt/)
    assert.include(pub.stdout, "EXAMPLES")
    const sub = await runCli(["sub", "--help"])
    assertDone(sub, "sub --help")
    for (const flag of ["--count, -C", "--timeout, -W", "--verbose, -v", "--format", "--no-local", "--cafile"]) {
      assert.include(sub.stdout, flag)
    }
    assert.include(sub.stdout, "EXAMPLES")
  })

  it("--completions: a script for bash, zsh and fish naming the subcommands and their flags", async () => {
    for (const shell of ["bash", "zsh", "fish"]) {
      const result = await runCli(["--completions", shell])
      assertDone(result, `--completions ${shell}`)
      for (const word of ["effect-mqtt", "pub", "sub", "user-property", "no-local"]) {
        assert.include(result.stdout, word, shell)
      }
    }
  })

  it("--version: the package's version", async () => {
    const { version } = JSON.parse(Fs.readFileSync(Path.join(import.meta.dirname, "..", "package.json"), "utf8"))
    const result = await runCli(["--version"])
    assertDone(result, "--version")
    assert.include(result.stdout, version)
  })
})

/** A port nothing listens on: taken from the OS, then closed. */
const closedPort = (): Promise<number> =>
  new Promise((resolve) => {
    const server = Net.createServer()
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      server.close(() => resolve(typeof address === "object" && address !== null ? address.port : 0))
    })
  })

const findScript = (): string => {
  for (const candidate of ["/usr/bin/script", "/bin/script"]) {
    if (Fs.existsSync(candidate)) return candidate
  }
  throw new Error("the password prompt test needs script(1): apt-get install -y bsdutils")
}

const shellQuote = (word: string) => `'${word.replace(/'/g, `'\\''`)}'`
