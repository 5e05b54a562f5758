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
 * A key's file is named by the key, percent-encoded (`encodeURIComponent`), when that name fits in 255 bytes (the
 * longest file name Linux, macOS and Windows file systems take); a longer key (a long or non-ASCII client
 * identifier, a long broker host name) has a file named `@` and the SHA-256 of the key, which begins with the key
 * itself, so that any key fits. Temporary files are named `@tmp.<pid>.<store>.<n>`. Other files in the directory
 * are not the store's: they are ignored.
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

const kvError = (method: string, key: string | undefined, cause: unknown, reason?: string) =>
  new KeyValueStore.KeyValueStoreError({
    method,
    ...(key === undefined ? {} : { key }),
    message: `Unable to ${method}${key === undefined ? "" : ` item with key ${key}`}${
      reason === undefined ? "" : `: ${reason}`
    }`,
    ...(cause === undefined ? {} : { cause })
  })

/**
 * What the operating system said, for a file system error: its error code and call (`ENAMETOOLONG (open)`,
 * `ENOSPC (write)`), so that an error that lasts is named in the warning; else the error's own message.
 */
const systemReason = (cause: PlatformError): string => {
  const errno = cause.reason.cause as { readonly code?: unknown; readonly syscall?: unknown } | undefined
  return typeof errno?.code === "string"
    ? `${errno.code}${typeof errno.syscall === "string" ? ` (${errno.syscall})` : ""}`
    : cause.message
}

const fileError = (method: string, key: string | undefined, cause: PlatformError) =>
  kvError(method, key, cause, systemReason(cause))

/** The longest file name written as is: NAME_MAX (255 bytes) of the common file systems. */
const MAX_NAME = 255
/** The file of a key too long to be its name: `@` (which `encodeURIComponent` never writes) and the key's SHA-256. */
const HASHED = /^@[0-9a-f]{64}$/
/** A temporary file, with the pid of the process that writes it. */
const TEMPORARY = /^@tmp\.(\d+)\.[0-9a-z]+\.\d+$/
/** A temporary file of the versions that named it after its key. */
const LEGACY_TEMPORARY = /\.(\d+)\.\d+\.tmp$/

/**
 * The file name of a key that is its own name: percent-encoded, if that fits, is not `.` or `..`, and does not end
 * like a temporary file of earlier versions. The names earlier versions wrote are these.
 */
const plainName = (key: string): string | undefined => {
  let name: string
  try {
    name = encodeURIComponent(key)
  } catch {
    // a lone surrogate
    return undefined
  }
  return name.length === 0 || name.length > MAX_NAME || name === "." || name === ".." || name.endsWith(".tmp")
    ? undefined
    : name
}

const encoder = new TextEncoder()

/** `@` and the SHA-256 of the key (of its JSON text: a lone surrogate is kept apart from U+FFFD). */
const hashedName = (key: string): Effect.Effect<string> =>
  Effect.map(
    Effect.promise(() => crypto.subtle.digest("SHA-256", encoder.encode(JSON.stringify(key)))),
    (digest) => "@" + Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("")
  )

/** A hashed file's text: the key (as JSON, one line), then the value. */
const withKey = (key: string, value: string): string => `${JSON.stringify(key)}\n${value}`

/** The key of a hashed file's first line, or undefined when it is not one. */
const keyLine = (line: string): string | undefined => {
  try {
    const key: unknown = JSON.parse(line)
    return typeof key === "string" ? key : undefined
  } catch {
    return undefined
  }
}

/** Bytes read to find the key of a hashed file (read whole when its key is longer). */
const HEADER_BYTES = 4096

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
      const match = TEMPORARY.exec(name) ?? LEGACY_TEMPORARY.exec(name)
      if (match !== null && !isRunning(Number(match[1]))) {
        yield* Effect.ignore(fs.remove(path.join(directory, name)))
      }
    }
    /** the key's file, and whether it is a hashed one (its text begins with the key) */
    const fileOf = (key: string): Effect.Effect<{ readonly file: string; readonly hashed: boolean }> => {
      const plain = plainName(key)
      return plain !== undefined
        ? Effect.succeed({ file: path.join(directory, plain), hashed: false })
        : Effect.map(hashedName(key), (name) => ({ file: path.join(directory, name), hashed: true }))
    }
    // temporary files of this store: two stores of one process in one directory never share a name
    const instance = Math.random().toString(36).slice(2, 10) || "0"
    let temporary = 0
    const read = (key: string) =>
      Effect.flatMap(fileOf(key), ({ file, hashed }) =>
        Effect.flatMap(
          Effect.catch(fs.readFileString(file), (cause) =>
            cause.reason._tag === "NotFound" ? Effect.undefined : Effect.fail(fileError("get", key, cause))),
          (text) => {
            if (text === undefined || !hashed) {
              return Effect.succeed(text)
            }
            const end = text.indexOf("\n")
            return end >= 0 && keyLine(text.slice(0, end)) === key
              ? Effect.succeed(text.slice(end + 1))
              : Effect.fail(kvError("get", key, undefined, `${file} does not begin with this key`))
          }
        ))
    const stage = (staged: string, value: string) =>
      sync
        ? Effect.scoped(Effect.gen(function*() {
          const handle = yield* fs.open(staged, { flag: "w" })
          yield* handle.writeAll(encoder.encode(value))
          yield* handle.sync
        }))
        : fs.writeFileString(staged, value)
    // the rename itself is durable once the directory is
    const syncDirectory = Effect.scoped(Effect.flatMap(fs.open(directory, { flag: "r" }), (dir) =>
      dir.sync))
    const write = (key: string, value: string) =>
      Effect.flatMap(fileOf(key), ({ file, hashed }) =>
        Effect.suspend(() => {
          const staged = path.join(directory, `@tmp.${process.pid}.${instance}.${temporary++}`)
          return stage(staged, hashed ? withKey(key, value) : value).pipe(
            Effect.andThen(fs.rename(staged, file)),
            Effect.andThen(sync ? Effect.ignore(syncDirectory) : Effect.void),
            Effect.tapError(() => Effect.ignore(fs.remove(staged))),
            Effect.mapError((cause) => fileError("set", key, cause))
          )
        }))
    /** The key a hashed file begins with (undefined: the file is gone); a file that begins with none is an error. */
    const hashedKey = (name: string): Effect.Effect<string | undefined, KeyValueStore.KeyValueStoreError> => {
      const file = path.join(directory, name)
      const notItsKey = () => kvError("keys", undefined, undefined, `${file} does not begin with its key`)
      const firstLine = Effect.scoped(Effect.gen(function*() {
        const handle = yield* fs.open(file, { flag: "r" })
        const buffer = new Uint8Array(HEADER_BYTES)
        const length = yield* handle.read(buffer)
        const end = buffer.subarray(0, length).indexOf(10)
        if (end >= 0) return new TextDecoder().decode(buffer.subarray(0, end))
        // a key longer than that
        const text = yield* fs.readFileString(file)
        return text.slice(0, Math.max(0, text.indexOf("\n")))
      }))
      const found = Effect.catch(firstLine, (cause) =>
        cause.reason._tag === "NotFound" ? Effect.undefined : Effect.fail(fileError("keys", undefined, cause)))
      return Effect.flatMap(found, (line) => {
        if (line === undefined) {
          return Effect.undefined
        }
        const key = keyLine(line)
        if (key === undefined) {
          return Effect.fail(notItsKey())
        }
        return Effect.flatMap(hashedName(key), (own) =>
          own === name ? Effect.succeed(key) : Effect.fail(notItsKey()))
      })
    }
    /** The key of a file of the directory; undefined for a temporary file and for a name the store never writes. */
    const keyOf = (name: string): Effect.Effect<string | undefined, KeyValueStore.KeyValueStoreError> => {
      if (HASHED.test(name)) {
        return hashedKey(name)
      }
      let key: string
      try {
        key = decodeURIComponent(name)
      } catch {
        // not percent-encoding (`100%`): not the store's
        return Effect.undefined
      }
      return Effect.succeed(plainName(key) === name ? key : undefined)
    }
    const names = Effect.mapError(fs.readDirectory(directory), (cause) =>
      fileError("keys", undefined, cause))
    const keys = Effect.map(
      Effect.flatMap(names, (all) => Effect.forEach(all, keyOf, { concurrency: 16 })),
      (found) => found.filter((key) => key !== undefined)
    )
    return KeyValueStore.makeStringOnly({
      get: read,
      set: write,
      remove: (key) =>
        Effect.flatMap(fileOf(key), ({ file }) =>
          Effect.catch(fs.remove(file), (cause) =>
            cause.reason._tag === "NotFound" ? Effect.void : Effect.fail(fileError("remove", key, cause)))),
      clear: Effect.mapError(
        Effect.andThen(fs.remove(directory, { recursive: true }), fs.makeDirectory(directory, { recursive: true })),
        (cause) =>
          fileError("clear", undefined, cause)
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
