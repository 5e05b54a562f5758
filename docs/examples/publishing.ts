import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Stream } from "effect"
import { MqttClient } from "effect-mqtt"
import { Broker, withBroker } from "./_broker.ts"

const program = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  yield* client.subscribe("docs/publishing/#", { qos: 2 })

  // QoS 0: done once written to the socket
  yield* client.publish("docs/publishing/text", "28.4")
  // QoS 1: done when the broker acknowledged it (PUBACK); the payload may be bytes
  yield* client.publish("docs/publishing/bytes", new Uint8Array([0x1c, 0x04]), { qos: 1 })
  // QoS 2: done when the broker confirmed it holds the message once (PUBCOMP); JSON is text
  yield* client.publish("docs/publishing/json", JSON.stringify({ celsius: 28.4 }), { qos: 2 })

  yield* client.messages.pipe(
    Stream.take(3),
    Stream.runForEach((message) => {
      const shown = message.topic.endsWith("bytes") ? `bytes [${message.payload.join(", ")}]` : message.text
      return Console.log(`${message.topic} (qos ${message.qos}): ${shown}`)
    })
  )

  // a retained message is kept by the broker and sent to every new subscriber
  yield* client.publish("docs/publishing/status", "online", { qos: 1, retain: true })
  const broker = yield* Broker
  const late = yield* MqttClient.make(broker.options)
  yield* late.subscribe("docs/publishing/status", { qos: 1 })
  const [status] = yield* late.messages.pipe(Stream.take(1), Stream.runCollect)
  yield* Console.log(`a late subscriber got ${status.topic}: ${status.text} (retained: ${status.retain})`)
  // an empty retained message deletes it
  yield* client.publish("docs/publishing/status", "", { qos: 1, retain: true })

  // a topic name with a wildcard is refused before anything is sent
  const error = yield* Effect.flip(client.publish("docs/publishing/+", "x"))
  yield* Console.log(`${error._tag}: ${error.message}`)
})

program.pipe(Effect.scoped, withBroker(), NodeRuntime.runMain)
