/**
 * effect-mqtt in a browser page: connects over WebSocket, subscribes, shows every message received, and
 * publishes what is typed when the button is pressed. The broker's URL comes from the page's address
 * (`?url=ws://host:port/mqtt`), `ws://localhost:8080/mqtt` otherwise.
 *
 * Bundled by esbuild (`npm run example:browser`, see build.ts): `effect-mqtt/browser` has no Node.js module in
 * its imports, so no polyfill is needed.
 */
import { Effect, Stream } from "effect"
import { MqttClient } from "effect-mqtt/browser"

const url = new URLSearchParams(location.search).get("url") ?? "ws://localhost:8080/mqtt"
const topic = "effect-mqtt/example/chat"

const element = <E extends HTMLElement>(id: string) => document.getElementById(id) as E
const show = (id: string, text: string) => element(id).textContent = text
const log = (line: string) => {
  const item = document.createElement("li")
  item.textContent = line
  element("log").append(item)
}

const program = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  // the connection's state, as it changes: Connected, Disconnected (and why), Connecting...
  yield* client.statusChanges.pipe(
    Stream.runForEach((status) => Effect.sync(() => show("status", status._tag.toLowerCase()))),
    Effect.forkScoped
  )
  yield* client.subscribe(topic, { qos: 1 })
  // each press of the button publishes the text field
  yield* Stream.fromEventListener(element("send"), "click").pipe(
    Stream.runForEach(() => client.publish(topic, element<HTMLInputElement>("text").value, { qos: 1 })),
    Effect.forkScoped
  )
  yield* client.messages.pipe(
    Stream.runForEach((message) => Effect.sync(() => log(`${message.topic}: ${message.text}`)))
  )
})

show("url", url)
Effect.runFork(
  program.pipe(
    Effect.scoped,
    Effect.provide(MqttClient.layer({ url })),
    Effect.catch((error) => Effect.sync(() => show("status", `failed: ${error.message}`)))
  )
)
