/**
 * Where a durable client keeps its half of a persistent MQTT session, so that it survives a process crash or a
 * redeploy: the QoS 1/2 publishes accepted and not yet finished (with their packet identifiers), the PUBRELs
 * owed, the incoming QoS 2 identifiers awaiting PUBREL, the identifiers of QoS 2 publishes the broker may still
 * hold (refused on a resend: kept out of use), and the subscriptions to restore. Any Effect
 * `KeyValueStore` will do; this module names the common ones.
 *
 * | store | survives SIGKILL | survives power loss |
 * | --- | --- | --- |
 * | {@link memory} | no (the process's memory) | no |
 * | {@link fileSystem} | yes: each write is a temporary file renamed into place (never torn) before the packets that depend on it go out | only with `sync: true` (the file, then the directory, fsynced before the packets go out) |
 * | {@link redis} | yes | as the Redis server's own persistence (AOF with `appendfsync always` for every write) |
 *
 * Give it to the client with the `store` option (and a fixed `clientId`, a persistent session: `cleanStart: false`
 * on MQTT 3.1.1, a `sessionExpiryInterval` on MQTT 5):
 *
 * @example
 * ```ts
 * import { NodeFileSystem, NodePath } from "@effect/platform-node"
 * import { Effect, Layer } from "effect"
 * import { MqttClient, MqttSessionStore } from "effect-mqtt"
 *
 * const MqttLive = Layer.effect(
 *   MqttClient.MqttClient,
 *   Effect.gen(function*() {
 *     const store = yield* MqttSessionStore.fileSystem("/var/lib/my-app/mqtt", { sync: true })
 *     return yield* MqttClient.make({
 *       url: "mqtt://broker:1883",
 *       clientId: "my-app-1",
 *       cleanStart: false,
 *       store
 *     })
 *   })
 * ).pipe(Layer.provide([NodeFileSystem.layer, NodePath.layer]))
 * ```
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import * as FileSystem from "effect/FileSystem"
import * as Path from "effect/Path"
import * as KeyValueStore from "effect/persistence/KeyValueStore"
import * as Redis from "effect/persistence/Redis"
import type { PlatformError } from "effect/PlatformError"
import type * as Store from "./internal/store.ts"

/**
 * A store for durable sessions: a `KeyValueStore` (`kv`) and the name that errors and log lines give it (`name`).
 *
 * @since 0.2.0
 * @category models
 */
export type SessionStore = Store.SessionStore

const service = Effect.gen(function*() {
  return yield* KeyValueStore.KeyValueStore
})

/**
 * A session store over any `KeyValueStore` (Effect's `layerSql`, `layerStorage`, one of your own...).
 *
 * @since 0.2.0
 * @category constructors
 */
export const fromKeyValueStore = (kv: KeyValueStore.KeyValueStore, name = "key-value store"): SessionStore => ({
  name,
  kv
})

/**
 * A session store in the process's memory: it survives reconnects (as the client does without a store) but not
 * the process. For tests.
 *
 * @since 0.2.0
 * @category constructors
 */
export const memory: Effect.Effect<SessionStore> = Effect.map(
  Effect.provide(service, KeyValueStore.layerMemory),
  (kv) => ({ name: "memory", kv })
)

/**
 * A session store in a directory, one file per key (the directory is created; do not share it with other data).
 *
 * Each write goes to a temporary file that is then renamed over the key's file, so a file is always whole: a
 * process killed at any moment (SIGKILL), even in the middle of a write, leaves the previous version or the new
 * one, never a torn one; and each write is complete before the packets that depend on it are sent, so nothing the
 * client accepted is lost. With `sync: true` the temporary file and then the directory are also fsynced, so
 * that a write survives a power loss (or a kernel crash) too, at the cost of two fsyncs per batch of writes;
 * without it, the last writes before a power loss may be lost (default `false`).
 *
 * Temporary files left by a killed process are removed when the store is made.
 *
 * Needs Effect's `FileSystem` and `Path` (on Node.js: `NodeFileSystem.layer` and `NodePath.layer`).
 *
 * @since 0.2.0
 * @category constructors
 */
export const fileSystem = (
  directory: string,
  options?: { readonly sync?: boolean | undefined }
): Effect.Effect<SessionStore, PlatformError, FileSystem.FileSystem | Path.Path> => {
  const sync = options?.sync === true
  return Effect.map(
    atomicFileSystem(directory, sync),
    (kv) => ({ name: sync ? `file:${directory} (fsync)` : `file:${directory}`, kv })
  )
}

const kvError = (method: string, key: string | undefined, cause: unknown) =>
  new KeyValueStore.KeyValueStoreError({
    method,
    ...(key === undefined ? {} : { key }),
    message: `Unable to ${method}${key === undefined ? "" : ` item with key ${key}`}`,
    cause
  })

const TEMPORARY = /\.(\d+)\.\d+\.tmp$/

/** Whether the process `pid` is still running (a temporary file of a running process is not removed). */
const isRunning = (pid: number): boolean => {
  if (pid === process.pid) return true
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as { code?: string }).code === "EPERM"
  }
}

/**
 * A file-per-key store whose writes are atomic (a temporary file renamed into place), fsynced with the directory
 * when `sync` is set.
 */
const atomicFileSystem = (directory: string, sync: boolean) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    yield* fs.makeDirectory(directory, { recursive: true })
    for (const name of yield* fs.readDirectory(directory)) {
      const match = TEMPORARY.exec(name)
      if (match !== null && !isRunning(Number(match[1]))) {
        yield* Effect.ignore(fs.remove(path.join(directory, name)))
      }
    }
    const file = (key: string) => path.join(directory, encodeURIComponent(key))
    let temporary = 0
    const read = (key: string) =>
      Effect.catch(fs.readFileString(file(key)), (cause) =>
        cause.reason._tag === "NotFound" ? Effect.undefined : Effect.fail(kvError("get", key, cause)))
    const stage = (staged: string, value: string) =>
      sync
        ? Effect.scoped(Effect.gen(function*() {
          const handle = yield* fs.open(staged, { flag: "w" })
          yield* handle.writeAll(new TextEncoder().encode(value))
          yield* handle.sync
        }))
        : fs.writeFileString(staged, value)
    // the rename itself is durable once the directory is
    const syncDirectory = Effect.scoped(Effect.flatMap(fs.open(directory, { flag: "r" }), (dir) =>
      dir.sync))
    const write = (key: string, value: string) =>
      Effect.suspend(() => {
        const target = file(key)
        const staged = `${target}.${process.pid}.${temporary++}.tmp`
        return stage(staged, value).pipe(
          Effect.andThen(fs.rename(staged, target)),
          Effect.andThen(sync ? Effect.ignore(syncDirectory) : Effect.void),
          Effect.tapError(() => Effect.ignore(fs.remove(staged))),
          Effect.mapError((cause) => kvError("set", key, cause))
        )
      })
    const keys = Effect.map(
      Effect.mapError(fs.readDirectory(directory), (cause) => kvError("keys", undefined, cause)),
      (names) => names.filter((name) => !name.endsWith(".tmp")).map(decodeURIComponent)
    )
    return KeyValueStore.makeStringOnly({
      get: read,
      set: write,
      remove: (key) =>
        Effect.catch(fs.remove(file(key)), (cause) =>
          cause.reason._tag === "NotFound" ? Effect.void : Effect.fail(kvError("remove", key, cause))),
      clear: Effect.mapError(
        Effect.andThen(fs.remove(directory, { recursive: true }), fs.makeDirectory(directory, { recursive: true })),
        (cause) =>
          kvError("clear", undefined, cause)
      ),
      size: Effect.map(keys, (all) =>
        all.length),
      keys
    })
  })

/**
 * A session store in Redis, under `namespace` (default `"effect-mqtt:"`): values are strings, listed with SCAN
 * over the namespace only. Needs Effect's `Redis` service (on Node.js: `NodeRedis.layer({ url })` from
 * `@effect/platform-node`). What survives a Redis restart or a power loss is what the Redis server persists
 * (AOF, RDB).
 *
 * @since 0.2.0
 * @category constructors
 */
export const redis = (options?: { readonly namespace?: string | undefined }): Effect.Effect<
  SessionStore,
  never,
  Redis.Redis
> =>
  Effect.gen(function*() {
    const client = yield* Redis.Redis
    const namespace = options?.namespace ?? "effect-mqtt:"
    const send = <A>(method: string, key: string | undefined, command: string, ...args: Array<string>) =>
      Effect.mapError(client.send<A>(command, ...args), (cause) => kvError(method, key, cause))
    const keys = Effect.gen(function*() {
      const found: Array<string> = []
      let cursor = "0"
      do {
        const [next, batch] = yield* send<[string, Array<string>]>(
          "keys",
          undefined,
          "SCAN",
          cursor,
          "MATCH",
          `${namespace}*`,
          "COUNT",
          "1000"
        )
        for (const key of batch) found.push(key.slice(namespace.length))
        cursor = next
      } while (cursor !== "0")
      return found
    })
    const kv = KeyValueStore.makeStringOnly({
      get: (key) => Effect.map(send<string | null>("get", key, "GET", namespace + key), (v) => v ?? undefined),
      set: (key, value) => Effect.asVoid(send("set", key, "SET", namespace + key, value)),
      remove: (key) => Effect.asVoid(send("remove", key, "DEL", namespace + key)),
      clear: Effect.flatMap(keys, (all) =>
        Effect.forEach(all, (key) => send("clear", key, "DEL", namespace + key), { discard: true })),
      size: Effect.map(keys, (all) =>
        all.length),
      keys
    })
    return { name: "redis", kv }
  })
