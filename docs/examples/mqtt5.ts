import { NodeRuntime } from "@effect/platform-node"
import { Console, Deferred, Effect, Stream } from "effect"
import { MqttClient, type MqttError } from "effect-mqtt"
import { Broker, withBroker } from "./_broker.ts"

const program = Effect.gen(function*() {
  const client = yield* MqttClient.MqttClient
  const broker = yield* Broker
  const other = yield* MqttClient.make({ ...broker.options, protocolVersion: 5 })

  // properties, and a subscription identifier that each matching message names
  yield* client.subscribe("docs/mqtt5/readings/#", { qos: 1, subscriptionIdentifier: 7 })
  yield* other.publish("docs/mqtt5/readings/kitchen", JSON.stringify({ celsius: 21.5 }), {
    qos: 1,
    properties: {
      contentType: "application/json",
      messageExpiryInterval: 60,
      userProperties: [["unit", "celsius"], ["source", "sensor-7"]]
    }
  })
  const [reading] = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
  const { contentType, subscriptionIdentifiers, userProperties } = reading.properties
  yield* Console.log(`${reading.topic}: ${reading.text} (${contentType})`)
  yield* Console.log(`user properties: ${userProperties?.map(([name, value]) => `${name}=${value}`).join(", ")}`)
  yield* Console.log(`subscription identifiers: ${subscriptionIdentifiers?.join(", ")}`)

  // topic aliases: on by default, within what the broker allows
  yield* Console.log(`topic aliases allowed by the broker: ${client.connection.topicAliasMaximum > 0}`)

  // request/response: the other client answers requests on docs/mqtt5/add, once its subscription is in place
  const subscribed = yield* Deferred.make<void, MqttError.MqttError>()
  yield* other.respond("docs/mqtt5/add", (request) => {
    const [a, b] = request.json as [number, number]
    return Effect.succeed(String(a + b))
  }, { subscribed }).pipe(Effect.forkScoped)
  yield* Deferred.await(subscribed)
  const reply = yield* client.request("docs/mqtt5/add", "[1, 2]", { timeout: "5 seconds" })
  yield* Console.log(`1 + 2 = ${reply.text}`)

  // a shared subscription: each job goes to one member of the group
  const worker = yield* MqttClient.make({ ...broker.options, protocolVersion: 5 })
  yield* client.subscribe("$share/workers/docs/mqtt5/jobs/#", { qos: 1 })
  yield* worker.subscribe("$share/workers/docs/mqtt5/jobs/#", { qos: 1 })
  for (const n of [1, 2, 3, 4]) yield* other.publish(`docs/mqtt5/jobs/${n}`, "run", { qos: 1 })
  const handled = yield* Stream.merge(client.messages, worker.messages).pipe(Stream.take(4), Stream.runCollect)
  yield* Console.log(`jobs handled: ${handled.map((job) => job.topic.split("/").at(-1)).sort().join(", ")}`)
})

program.pipe(Effect.scoped, withBroker({ protocolVersion: 5 }), NodeRuntime.runMain)
