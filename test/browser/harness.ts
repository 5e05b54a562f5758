/**
 * The page that test/browser.test.ts loads in Chromium: effect-mqtt from `effect-mqtt/browser`, driven by the
 * test through `globalThis.harness` (page.evaluate), with what the client saw kept for the test to read.
 * Bundled by esbuild for browsers; it touches no DOM API, so that it type-checks with the tests.
 */
import { Effect, Exit, Scope, Stream } from "effect"
import { MqttClient } from "effect-mqtt/browser"
import * as KeyValueStore from "effect/persistence/KeyValueStore"
import * as Socket from "effect/socket/Socket"

export interface Received {
  readonly topic: string
  readonly text: string
  readonly bytes: Array<number>
  readonly qos: number
  readonly retain: boolean
}

let scope: Scope.Closeable | undefined
let client: MqttClient.Client | undefined
const received: Array<Received> = []
const statuses: Array<string> = []
const errors: Array<string> = []
/** the URLs given to the WebSocket constructor provided as a service, when one is */
const constructed: Array<string> = []

const describe = (error: unknown): string =>
  typeof error === "object" && error !== null && "_tag" in error
    ? `${String(error._tag)}: ${(error as { message?: unknown }).message}`
    : String(error)

const run = <A>(effect: Effect.Effect<A, unknown>): Promise<A> =>
  Effect.runPromiseExit(effect).then((exit) => {
    if (Exit.isSuccess(exit)) return exit.value
    const error = Exit.findErrorOption(exit)
    throw new Error(error._tag === "Some" ? describe(error.value) : String(exit.cause))
  })

const the = (): MqttClient.Client => {
  if (client === undefined) throw new Error("not connected")
  return client
}

const harness = {
  /**
   * Connects; what arrives on `messages` and every status change are recorded from then on. With `durable`, the
   * session is kept in the page's `localStorage` through Effect's `KeyValueStore.layerStorage`; with
   * `webSocketService`, the WebSocket is made by a `Socket.WebSocketConstructor` service that records its URLs.
   */
  connect: (
    options: MqttClient.Options,
    { durable = false, webSocketService = false }: { readonly durable?: boolean; readonly webSocketService?: boolean } =
      {}
  ): Promise<void> =>
    run(Effect.gen(function*() {
      const s = yield* Scope.make()
      const store = durable
        ? yield* Effect.service(KeyValueStore.KeyValueStore).pipe(
          Effect.provide(KeyValueStore.layerStorage(() => (globalThis as { localStorage?: any }).localStorage)),
          Effect.map((kv) => ({ store: kv }))
        )
        : {}
      const make = MqttClient.make({ ...options, ...store }).pipe(Scope.provide(s))
      const c = yield* webSocketService
        ? Effect.provideService(make, Socket.WebSocketConstructor, (url, protocols) => {
          constructed.push(url)
          const WebSocket = (globalThis as { WebSocket?: any }).WebSocket
          return new WebSocket(url, protocols)
        })
        : make
      scope = s
      client = c
      yield* c.messages.pipe(
        Stream.runForEach((m) =>
          Effect.sync(() =>
            received.push({ topic: m.topic, text: m.text, bytes: [...m.payload], qos: m.qos, retain: m.retain })
          )
        ),
        Effect.forkIn(s)
      )
      yield* c.statusChanges.pipe(
        Stream.runForEach((status) =>
          Effect.sync(() => {
            statuses.push(status._tag)
            if (status._tag === "Disconnected") errors.push(describe(status.cause))
          })
        ),
        Effect.forkIn(s)
      )
    })),
  /** Tries to connect and returns how it failed: the error's tag, option and message. */
  connectError: (options: MqttClient.Options): Promise<{ tag: string; option?: string; message: string } | "ok"> =>
    run(Effect.scoped(Effect.matchEffect(MqttClient.make(options), {
      onFailure: (error) =>
        Effect.succeed({
          tag: error._tag,
          ...("option" in error ? { option: String(error.option) } : {}),
          message: error.message
        }),
      onSuccess: () => Effect.succeed("ok" as const)
    }))),
  subscribe: (filter: string, qos: 0 | 1 | 2): Promise<Array<number>> =>
    run(Effect.map(the().subscribe(filter, { qos }), (granted) => granted.map((g) => g.qos))),
  publish: (topic: string, payload: string | Array<number>, qos: 0 | 1 | 2): Promise<void> =>
    run(the().publish(topic, typeof payload === "string" ? payload : Uint8Array.from(payload), { qos })),
  received: (): Array<Received> => received,
  statuses: (): Array<string> => statuses,
  errors: (): Array<string> => errors,
  status: (): Promise<string> => run(Effect.map(the().status, (s) => s._tag)),
  close: (): Promise<void> => scope === undefined ? Promise.resolve() : run(Scope.close(scope, Exit.void)),
  constructed: (): Array<string> => constructed,
  /** The keys of the page's `localStorage`. */
  storageKeys: (): Array<string> => Object.keys((globalThis as { localStorage?: object }).localStorage ?? {}),
  /** What the page's global scope has of Node.js: nothing, in a browser. */
  nodeGlobals: (): Array<string> => ["Buffer", "process", "require"].filter((name) => name in globalThis)
}
;(globalThis as { harness?: typeof harness }).harness = harness
;(globalThis as { harnessReady?: boolean }).harnessReady = true
