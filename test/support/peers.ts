/**
 * Helpers shared by the tests that talk to independent peers: MQTT.js clients and effect-mqtt clients in child
 * processes.
 */
import { Effect } from "effect"
import type { MqttClient } from "effect-mqtt"
import type { IPublishPacket, MqttClient as MqttJs } from "mqtt"
import { spawn } from "node:child_process"
import * as Path from "node:path"

/** A hang guard for a test step: fails after 20 s instead of waiting for the test's own timeout. */
export const guard = <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.timeout(self, "20 seconds")

/** A promise as an effect, under {@link guard}. */
export const fromPromise = <A>(evaluate: () => Promise<A>) => guard(Effect.promise(evaluate))

/** A message as MQTT.js received it. */
export interface MqttJsMessage {
  readonly topic: string
  readonly payload: Buffer
  readonly packet: IPublishPacket
}

/** The next `n` messages an MQTT.js client receives. Call it before the messages are published. */
export const mqttJsMessages = (client: MqttJs, n: number): Promise<Array<MqttJsMessage>> =>
  new Promise((resolve) => {
    const received: Array<MqttJsMessage> = []
    const listener = (topic: string, payload: Buffer, packet: IPublishPacket) => {
      received.push({ topic, payload, packet })
      if (received.length === n) {
        client.off("message", listener)
        resolve(received)
      }
    }
    client.on("message", listener)
  })

/** Makes "effect-mqtt" resolve to src/*.ts in a Node.js process, as in the tests (see "exports" in package.json). */
export const SOURCE_CONDITION = "--conditions=effect-mqtt-source"

const WILL_CLIENT = Path.join(import.meta.dirname, "..", "fixtures", "will-client.ts")

/**
 * Runs test/fixtures/will-client.ts with `options` on this Node.js (it runs TypeScript directly) and waits until
 * it prints that it is connected. It is killed (SIGKILL: no DISCONNECT) when the scope closes, if the test has not
 * killed it yet.
 */
export const willClient = (options: MqttClient.Options) =>
  Effect.acquireRelease(
    Effect.sync(() =>
      spawn(process.execPath, [SOURCE_CONDITION, WILL_CLIENT, JSON.stringify(options)], { stdio: "pipe" })
    ),
    (child) => Effect.sync(() => child.kill("SIGKILL"))
  ).pipe(
    Effect.tap((child) =>
      fromPromise(() =>
        new Promise<string>((resolve, reject) => {
          let stdout = ""
          let stderr = ""
          child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
            stdout += chunk
            const match = /^connected (\S+)$/m.exec(stdout)
            if (match !== null) resolve(match[1])
          })
          child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk))
          child.once("exit", (code, signal) =>
            reject(new Error(`will-client exited (${signal ?? code}) before connecting:\n${stdout}\n${stderr}`)))
        })
      )
    )
  )
