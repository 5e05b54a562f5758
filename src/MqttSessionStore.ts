/**
 * Where a durable client keeps its half of a persistent MQTT session, so that it survives a process crash or a
 * redeploy: the QoS 1/2 publishes accepted and not yet finished (with their packet identifiers), the PUBRELs
 * owed, the incoming QoS 2 identifiers awaiting PUBREL, and the subscriptions to restore. Any Effect
 * `KeyValueStore` will do; this module names the common ones.
 *
 * | store | survives SIGKILL | survives power loss |
 * | --- | --- | --- |
 * | {@link memory} | no (the process's memory) | no |
 * | {@link fileSystem} | yes: each write is in the file system before the packets that depend on it go out | only with `sync: true` (each write is fsynced, then renamed into place) |
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
 * Each write is complete in the file system before the packets that depend on it are sent, so a process killed
 * at any moment (SIGKILL) loses nothing it accepted. With `sync: true` every write goes to a temporary file that
 * is fsynced and then renamed into place, so that it also survives a power loss, at the cost of an fsync per
 * batch of writes (default `false`).
 *
 * Needs Effect's `FileSystem` and `Path` (on Node.js: `NodeFileSystem.layer` and `NodePath.layer`).
 *
 * @since 0.2.0
 * @category constructors
 */
export const fileSystem = (
  directory: string,
  options?: { readonly sync?: boolean | undefined }
): Effect.Effect<SessionStore, PlatformError, FileSystem.FileSystem | Path.Path> =>
  options?.sync === true
    ? Effect.map(syncedFileSystem(directory), (kv) => ({ name: `file:${directory} (fsync)`, kv }))
    : Effect.map(
      Effect.provide(service, KeyValueStore.layerFileSystem(directory)),
      (kv) => ({ name: `file:${directory}`, kv })
    )

const kvError = (method: string, key: string | undefined, cause: unknown) =>
  new KeyValueStore.KeyValueStoreError({
    method,
    ...(key === undefined ? {} : { key }),
    message: `Unable to ${method}${key === undefined ? "" : ` item with key ${key}`}`,
    cause
  })

/** A file-per-key store whose writes are fsynced and renamed into place. */
const syncedFileSystem = (directory: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    yield* fs.makeDirectory(directory, { recursive: true })
    const file = (key: string) => path.join(directory, encodeURIComponent(key))
    let temporary = 0
    const read = (key: string) =>
      Effect.catch(fs.readFileString(file(key)), (cause) =>
        cause.reason._tag === "NotFound" ? Effect.undefined : Effect.fail(kvError("get", key, cause)))
    const write = (key: string, value: string) =>
      Effect.scoped(Effect.gen(function*() {
        const target = file(key)
        const staged = `${target}.${process.pid}.${temporary++}.tmp`
        const handle = yield* fs.open(staged, { flag: "w" })
        yield* handle.writeAll(new TextEncoder().encode(value))
        yield* handle.sync
        yield* fs.rename(staged, target)
        // the rename itself is durable once the directory is
        const dir = yield* fs.open(directory, { flag: "r" })
        yield* Effect.ignore(dir.sync)
      })).pipe(Effect.mapError((cause) =>
        kvError("set", key, cause)
      ))
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
      size: Effect.map(keys, (all) => all.length),
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
