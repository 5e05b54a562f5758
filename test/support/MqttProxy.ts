/**
 * A TCP proxy in front of a broker, for failover tests: a gate that refuses connections until the test opens it
 * (so that a client reaches a node only when the test is ready), and a witness of who acknowledged what: it
 * reads the client's PUBLISH packets and the broker's PUBACK and PUBREC packets on the wire, and reports the
 * payload of each publish the broker acknowledged.
 */
import { Effect } from "effect"
import type { Scope } from "effect"
import * as MqttPacket from "mqtt-packet"
import * as Net from "node:net"

export interface MqttProxy {
  readonly port: number
  /** `mqtt://127.0.0.1:<port>` */
  readonly url: string
  /** Lets connections through from now on. */
  open(): void
  /** Refuses new connections from now on (each is reset at once); open ones stay. */
  shut(): void
  /** How many connections were refused by the gate. */
  readonly refused: number
}

export interface MqttProxyOptions {
  readonly upstreamPort: number
  readonly protocolVersion: 4 | 5
  /** Whether the gate is open from the start. Default true. */
  readonly open?: boolean
  /** Called with the payload (as text) of each QoS 1/2 publish the client sent through this proxy. */
  readonly onPublished?: (payload: string) => void
  /** Called with the payload (as text) of each QoS 1/2 publish the broker acknowledged on this proxy. */
  readonly onAcknowledged?: (payload: string) => void
}

const pipeParsed = (
  from: Net.Socket,
  to: Net.Socket,
  protocolVersion: 4 | 5,
  onPacket: (packet: MqttPacket.Packet) => void
) => {
  const parser = MqttPacket.parser({ protocolVersion })
  parser.on("packet", onPacket)
  from.on("data", (chunk) => {
    to.write(chunk)
    parser.parse(chunk)
  })
}

/** Listens on a free port of 127.0.0.1 for the life of the scope. */
export const mqttProxy = (options: MqttProxyOptions): Effect.Effect<MqttProxy, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.promise(() =>
      new Promise<{ proxy: MqttProxy; server: Net.Server; sockets: Set<Net.Socket> }>((resolve) => {
        let open = options.open ?? true
        let refused = 0
        const sockets = new Set<Net.Socket>()
        const server = Net.createServer((client) => {
          sockets.add(client)
          client.once("close", () => sockets.delete(client))
          client.on("error", () => {})
          if (!open) {
            refused++
            client.resetAndDestroy()
            return
          }
          const upstream = Net.connect({ host: "127.0.0.1", port: options.upstreamPort, noDelay: true })
          sockets.add(upstream)
          upstream.once("close", () => sockets.delete(upstream))
          client.setNoDelay(true)
          const end = () => {
            if (!client.destroyed) client.resetAndDestroy()
            if (!upstream.destroyed) upstream.resetAndDestroy()
          }
          upstream.on("error", end).on("close", end)
          client.on("close", end)
          // the identifiers of this connection's publishes, and their payloads, until acknowledged
          const inFlight = new Map<number, string>()
          pipeParsed(client, upstream, options.protocolVersion, (packet) => {
            if (packet.cmd === "publish" && packet.qos > 0) {
              const payload = Buffer.from(packet.payload).toString()
              inFlight.set(packet.messageId!, payload)
              options.onPublished?.(payload)
            }
          })
          pipeParsed(upstream, client, options.protocolVersion, (packet) => {
            if ((packet.cmd === "puback" || packet.cmd === "pubrec") && packet.messageId !== undefined) {
              const payload = inFlight.get(packet.messageId)
              inFlight.delete(packet.messageId)
              if (payload !== undefined && (packet.reasonCode === undefined || packet.reasonCode < 0x80)) {
                options.onAcknowledged?.(payload)
              }
            }
          })
        })
        server.listen(0, "127.0.0.1", () => {
          const port = (server.address() as Net.AddressInfo).port
          resolve({
            server,
            sockets,
            proxy: {
              port,
              url: `mqtt://127.0.0.1:${port}`,
              open: () => {
                open = true
              },
              shut: () => {
                open = false
              },
              get refused() {
                return refused
              }
            }
          })
        })
      })
    ),
    ({ server, sockets }) =>
      Effect.promise(() =>
        new Promise<void>((resolve) => {
          for (const socket of sockets) socket.destroy()
          server.close(() => resolve())
        })
      )
  ).pipe(Effect.map(({ proxy }) => proxy))
