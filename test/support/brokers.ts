/**
 * The brokers a conformance suite runs against, behind one interface: the in-memory test broker
 * (`MqttTestBroker`) and a private Mosquitto process. The same assertions run on both.
 *
 * Each client of a Mosquitto-backed broker connects through a TCP transport whose socket the test can reset
 * (`drop`), as a lost network would; the test broker does the same with `MqttTestBroker.disconnect`.
 */
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import { Effect } from "effect"
import type { Scope } from "effect"
import { MqttClient, type MqttError, MqttTestBroker } from "effect-mqtt"
import * as Socket from "effect/socket/Socket"
import * as Net from "node:net"
import { type MosquittoHandle, startMosquitto } from "./Mosquitto.ts"
import { guard } from "./peers.ts"

/** A running broker, as a test uses it. */
export interface BrokerUnderTest {
  /** A client connected to the broker, for the life of the scope. */
  readonly client: (options?: MqttClient.Options) => Effect.Effect<MqttClient.Client, MqttError.MqttError, Scope.Scope>
  /** Resets the client's network connection: no DISCONNECT, so the broker publishes its will. */
  readonly drop: (clientId: string) => Effect.Effect<void>
  /** Waits until the broker has seen the client's connection end. */
  readonly awaitGone: (clientId: string) => Effect.Effect<void>
  /** Restarts the broker; its sessions and retained messages survive only when it was made with persistence. */
  readonly restart: Effect.Effect<void>
}

/** A kind of broker: one shared by the tests of a file, or a dedicated one (with persistence when asked). */
export interface Backend {
  readonly name: string
  readonly shared: () => Effect.Effect<BrokerUnderTest, never, Scope.Scope>
  readonly dedicated: (
    options?: { readonly persistence?: boolean }
  ) => Effect.Effect<BrokerUnderTest, never, Scope.Scope>
}

// ---- the test broker -----------------------------------------------------------------------------------------

const testBroker = (persistence: boolean): Effect.Effect<BrokerUnderTest, never, Scope.Scope> =>
  Effect.map(MqttTestBroker.make(), (broker) => ({
    client: (options) => broker.makeClient(options),
    drop: (clientId) => Effect.asVoid(broker.disconnect(clientId)),
    awaitGone: (clientId) =>
      guard(
        Effect.asVoid(
          Effect.flatMap(broker.clients, (clients) =>
            clients.some((c) => c.clientId === clientId && c.connected)
              ? broker.awaitClient(clientId, (info) => !info.connected)
              : Effect.succeed(undefined))
        )
      ).pipe(Effect.orDie),
    restart: broker.restart({ persistence })
  }))

export const testBrokerBackend: Backend = {
  name: "the test broker",
  shared: () => testBroker(false),
  dedicated: (options) => testBroker(options?.persistence === true)
}

// ---- Mosquitto -----------------------------------------------------------------------------------------------

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")

/** A TCP transport that remembers the socket of each connection under `key`, so that the test can reset it. */
const droppableTcp = (port: number, sockets: Map<string, Net.Socket>, key: string) =>
  NodeSocket.fromDuplex(
    Effect.acquireRelease(
      Effect.callback<Net.Socket, Socket.SocketError>((resume) => {
        const socket = Net.createConnection({ host: "127.0.0.1", port, noDelay: true })
        socket.once("connect", () => {
          sockets.set(key, socket)
          resume(Effect.succeed(socket))
        })
        socket.once("error", (cause) =>
          resume(
            Effect.fail(new Socket.SocketError({ reason: new Socket.SocketOpenError({ kind: "Unknown", cause }) }))
          ))
      }),
      (socket) => Effect.sync(() => socket.destroy())
    )
  )

const onMosquitto = (handle: MosquittoHandle): BrokerUnderTest => {
  const sockets = new Map<string, Net.Socket>()
  return {
    client: (options) =>
      Effect.flatMap(
        Effect.sync(() => options?.clientId ?? `conformance-${Math.random().toString(36).slice(2)}`),
        (clientId) =>
          Effect.flatMap(
            droppableTcp(handle.port, sockets, clientId),
            (transport) => MqttClient.make({ ...options, clientId, transport })
          )
      ),
    drop: (clientId) => Effect.sync(() => sockets.get(clientId)?.resetAndDestroy()),
    awaitGone: (clientId) =>
      guard(Effect.gen(function*() {
        const pattern = new RegExp(
          `[Cc]lient ${escape(clientId)}\\b.*(disconnect|closed)|on client ${escape(clientId)}`
        )
        while (!handle.logs().split("\n").some((line) => pattern.test(line))) yield* Effect.sleep("20 millis")
      })).pipe(Effect.orDie),
    restart: Effect.promise(() => handle.restart())
  }
}

export const mosquittoBackend = (shared: () => MosquittoHandle): Backend => ({
  name: "Mosquitto",
  shared: () => Effect.succeed(onMosquitto(shared())),
  dedicated: (options) =>
    Effect.map(
      Effect.acquireRelease(
        Effect.promise(() => startMosquitto({ persistence: options?.persistence === true })),
        (handle) => Effect.promise(() => handle.dispose())
      ),
      onMosquitto
    )
})
