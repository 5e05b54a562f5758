/**
 * The file store's file names: any key maps to a valid file name (NAME_MAX is 255 bytes), however long or
 * non-ASCII the client identifier or the broker's host name; files in the directory that are not the store's are
 * ignored; stores written with the names of earlier versions are still read. Against a private Mosquitto, frozen
 * and killed so that what the next client sends can only come from the store.
 */
import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { afterAll, assert, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Layer, Schedule, Scope, Stream } from "effect"
import { MqttClient, MqttError, MqttSessionStore } from "effect-mqtt"
import * as KeyValueStore from "effect/persistence/KeyValueStore"
import { connectAsync } from "mqtt"
import { Buffer } from "node:buffer"
import Dns from "node:dns"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Journal from "../src/internal/journal.ts"
import { load, prefixOf } from "../src/internal/store.ts"
import { type MosquittoHandle, startMosquitto } from "./support/Mosquitto.ts"

const platform = Layer.mergeAll(NodeFileSystem.layer, NodePath.layer)

/** NAME_MAX of Linux, macOS and Windows file systems, in bytes. */
const NAME_MAX = 255

/** A host name of AWS IoT's form (47 characters); this test process resolves it to 127.0.0.1. */
const AWS_HOST = "a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com"

const directories: Array<string> = []
const temporaryDirectory = () => {
  const directory = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-mqtt-names-"))
  directories.push(directory)
  return directory
}

/** The name earlier versions gave the temporary file of a client's first segment. */
const legacyName = (broker: string, clientId: string) =>
  `${encodeURIComponent(prefixOf(broker, clientId) + "j000000000001")}.${process.pid}.0.tmp`

/** Every file of the directory has a valid name. */
const assertNamesFit = (directory: string) => {
  for (const name of Fs.readdirSync(directory)) {
    assert.isAtMost(Buffer.byteLength(name), NAME_MAX, name)
  }
}

let broker: MosquittoHandle
const lookup = Dns.lookup

beforeAll(async () => {
  broker = await startMosquitto() // net.connect resolves through dns.lookup: the AWS-like host is this machine
  ;(Dns as { lookup: unknown }).lookup = (host: string, ...rest: Array<unknown>) =>
    (lookup as (...args: Array<unknown>) => void)(host === AWS_HOST ? "127.0.0.1" : host, ...rest)
}, 30_000)

afterAll(async () => {
  ;(Dns as { lookup: unknown }).lookup = lookup
  await broker?.dispose()
  for (const directory of directories) Fs.rmSync(directory, { recursive: true, force: true })
})

describe("file store names, against Mosquitto", () => {
  const arn = "eu-west-1:123456789012:thing:pump-station-"
  const cases = [
    {
      title: "a 220-character client id, MQTT 3.1.1",
      host: "127.0.0.1",
      clientId: "orders-service-" + "x".repeat(205),
      version: 4 as const
    },
    {
      title: "a non-ASCII client id, MQTT 5",
      host: "127.0.0.1",
      clientId: "设备-" + "传感器".repeat(10),
      version: 5 as const
    },
    {
      title: "an AWS IoT-like broker host and a 128-character client id (AWS's maximum), MQTT 5",
      host: AWS_HOST,
      clientId: arn + "0123456789".repeat(9).slice(0, 128 - arn.length),
      version: 5 as const
    }
  ]

  cases.forEach(({ clientId, host, title, version }, index) =>
    it.live(
      `${title}: QoS 1/2 publishes accepted, the process gone, the next client on the store sends them and restores the subscription`,
      () =>
        Effect.gen(function*() {
          const url = `mqtt://${host}:${broker.port}`
          // what made earlier versions retry the first write forever (ENAMETOOLONG)
          assert.isAbove(legacyName(url, clientId).length, NAME_MAX)
          const directory = temporaryDirectory()
          const topic = `names/${index}`
          const options = {
            url,
            clientId,
            protocolVersion: version,
            ...(version === 5 ? { sessionExpiryInterval: 3600 } : {}),
            cleanStart: false,
            logLevel: "None" as const
          }

          // the first process: subscribes, then its publishes are accepted (stored) and written to a broker that
          // never reads them (frozen, then killed)
          const first = yield* Scope.make()
          const store = yield* MqttSessionStore.fileSystem(directory)
          const client = yield* Scope.provide(MqttClient.make({ ...options, store }), first)
          yield* Effect.timeout(client.subscribe(`${topic}/back`, { qos: 1 }), "10 seconds")
          broker.kill("SIGSTOP")
          yield* Effect.timeout(client.publishAccepted(`${topic}/out`, "qos 1", { qos: 1 }), "10 seconds")
          yield* Effect.timeout(client.publishAccepted(`${topic}/out`, "qos 2", { qos: 2 }), "10 seconds")
          yield* Scope.close(first, Exit.void)
          broker.kill("SIGKILL")
          yield* Effect.promise(() => broker.restart())
          assertNamesFit(directory)
          // a file that is not the store's (not percent-encoding)
          Fs.writeFileSync(Path.join(directory, "100%"), "not a key")

          // the broker lost everything: what arrives now comes from the store
          const peer = yield* Effect.promise(() => connectAsync(broker.url, { clientId: `peer-${index}`, clean: true }))
          const received: Array<string> = []
          peer.on("message", (_topic, payload) => received.push(payload.toString()))
          yield* Effect.promise(() => peer.subscribeAsync(`${topic}/out`, { qos: 2 }))
          yield* Effect.promise(() => peer.publishAsync(`${topic}/back`, "retained", { qos: 1, retain: true }))

          // the next process, on the same directory
          const second = yield* Scope.make()
          const again = yield* MqttSessionStore.fileSystem(directory)
          const restarted = yield* Scope.provide(MqttClient.make({ ...options, store: again }), second)
          const [back] = yield* restarted.messages.pipe(Stream.take(1), Stream.runCollect, Effect.timeout("10 seconds"))
          expect([back.topic, back.text]).toEqual([`${topic}/back`, "retained"])
          yield* Effect.timeout(
            Effect.repeat(Effect.sync(() => received.includes("qos 1") && received.includes("qos 2")), {
              until: (both) => both,
              schedule: Schedule.spaced("20 millis")
            }),
            "10 seconds"
          )
          // and once acknowledged, nothing is left to send
          const prefix = prefixOf(url, clientId)
          yield* Effect.timeout(
            Effect.repeat(Effect.map(load(again, prefix), (loaded) => loaded.image.publishes.size), {
              until: (size) => size === 0,
              schedule: Schedule.spaced("20 millis")
            }).pipe(Effect.asVoid),
            "10 seconds"
          )
          yield* Scope.close(second, Exit.void)
          yield* Effect.promise(() => peer.publishAsync(`${topic}/back`, "", { qos: 1, retain: true }))
          yield* Effect.promise(() => peer.endAsync())
          expect(received.filter((m) => m === "qos 2")).toEqual(["qos 2"])
          assertNamesFit(directory)
        }).pipe(Effect.provide(platform)),
      60_000
    )
  )
})

describe("file store names", () => {
  it.live("any key is stored, listed, read and removed: empty, dots, long, non-ASCII, lone surrogates", () =>
    Effect.gen(function*() {
      const directory = temporaryDirectory()
      const { kv } = yield* MqttSessionStore.fileSystem(directory)
      const keys = [
        "",
        ".",
        "..",
        "x.123.4.tmp",
        "@tmp",
        "short",
        "k".repeat(NAME_MAX),
        "k".repeat(NAME_MAX + 1),
        "%".repeat(300),
        "传感器".repeat(200),
        "p/".repeat(3000) + "x",
        "\uD800",
        "\uFFFD"
      ]
      for (const [i, key] of keys.entries()) yield* kv.set(key, `value ${i}\nsecond line`)
      assertNamesFit(directory)
      for (const [i, key] of keys.entries()) expect(yield* kv.get(key)).toBe(`value ${i}\nsecond line`)
      expect([...(yield* kv.keys)].sort()).toEqual([...keys].sort())
      expect(yield* kv.size).toBe(keys.length)
      // written again (renamed over), then removed
      yield* kv.set("传感器".repeat(200), "new")
      expect(yield* kv.get("传感器".repeat(200))).toBe("new")
      yield* kv.clearPrefix("p/p/")
      expect(yield* kv.get("p/".repeat(3000) + "x")).toBeUndefined()
      for (const key of keys) yield* kv.remove(key)
      expect(yield* kv.keys).toEqual([])
      expect(Fs.readdirSync(directory)).toEqual([])
    }).pipe(Effect.provide(platform)))

  it.live("files that are not the store's are ignored (a name that is not percent-encoding is no defect)", () =>
    Effect.gen(function*() {
      const directory = temporaryDirectory()
      for (const name of ["100%", "%E8%AE", "notes%zz.txt", "a b", "@", "@tmp.x"]) {
        Fs.writeFileSync(Path.join(directory, name), "stray")
      }
      const store = yield* MqttSessionStore.fileSystem(directory)
      expect(yield* store.kv.keys).toEqual([])
      const prefix = prefixOf("mqtt://127.0.0.1:1883", "stray")
      const loaded = yield* load(store, prefix)
      expect([loaded.image.publishes.size, loaded.next]).toEqual([0, 1])
    }).pipe(Effect.provide(platform)))

  it.live("a hashed file that does not begin with its key is a StoreError at load, not a reset", () =>
    Effect.gen(function*() {
      const directory = temporaryDirectory()
      Fs.writeFileSync(Path.join(directory, "@" + "0".repeat(64)), "")
      const store = yield* MqttSessionStore.fileSystem(directory)
      const error = yield* Effect.flip(load(store, prefixOf("mqtt://127.0.0.1:1883", "x".repeat(300))))
      assert(error instanceof MqttError.StoreError, String(error))
      expect(error.operation).toBe("load")
      expect(error.reason).toContain("@" + "0".repeat(64))
    }).pipe(Effect.provide(platform)))

  it.live("a store written by earlier versions (names percent-encoded, temporary files named after them) is read", () =>
    Effect.gen(function*() {
      const directory = temporaryDirectory()
      const prefix = prefixOf("mqtt://broker.example:1883", "sensor-1")
      const segment = Journal.encodeSegment([{
        t: "p",
        p: {
          key: 1,
          topic: "t",
          payload: new TextEncoder().encode("accepted"),
          qos: 1,
          retain: false,
          properties: undefined,
          id: 7,
          state: 1
        }
      }])
      Fs.writeFileSync(Path.join(directory, encodeURIComponent(prefix + "j000000000001")), segment)
      // a temporary file a killed process (pid 2^22 + 1 is above Linux's pid_max) left behind
      const leftover = `${encodeURIComponent(prefix + "j000000000002")}.4194305.0.tmp`
      Fs.writeFileSync(Path.join(directory, leftover), "{")
      const store = yield* MqttSessionStore.fileSystem(directory)
      expect(Fs.existsSync(Path.join(directory, leftover))).toBe(false)
      expect(yield* store.kv.keys).toEqual([prefix + "j000000000001"])
      const loaded = yield* load(store, prefix)
      expect([...loaded.image.publishes.values()].map((p) => [p.id, p.state])).toEqual([[7, 1]])
      expect(loaded.next).toBe(2)
      // a short key keeps its name
      yield* store.kv.set(prefix + "snapshot", "{}")
      expect(Fs.existsSync(Path.join(directory, encodeURIComponent(prefix + "snapshot")))).toBe(true)
    }).pipe(Effect.provide(platform)))

  it.live("two stores of one process in one directory write at once without sharing a temporary file", () =>
    Effect.gen(function*() {
      const directory = temporaryDirectory()
      const a = yield* MqttSessionStore.fileSystem(directory)
      const b = yield* MqttSessionStore.fileSystem(directory)
      yield* Effect.forEach(
        Array.from({ length: 40 }, (_, i) => i),
        (i) => (i % 2 === 0 ? a : b).kv.set(`key ${i} ${"y".repeat(i * 10)}`, `value ${i}`),
        { concurrency: "unbounded", discard: true }
      )
      for (let i = 0; i < 40; i++) expect(yield* a.kv.get(`key ${i} ${"y".repeat(i * 10)}`)).toBe(`value ${i}`)
    }).pipe(Effect.provide(platform)))

  it.live("an error of the operating system is named in the store's error (its code)", () =>
    Effect.gen(function*() {
      const directory = temporaryDirectory()
      const { kv } = yield* MqttSessionStore.fileSystem(directory)
      Fs.rmSync(directory, { recursive: true })
      const error = yield* Effect.flip(kv.set("key", "value"))
      assert(error instanceof KeyValueStore.KeyValueStoreError)
      expect(error.message).toContain("ENOENT")
    }).pipe(Effect.provide(platform)))
})
