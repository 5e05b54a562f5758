/**
 * Failover: `url` lists the nodes of a cluster; when the connection is lost, the client tries the next node (the
 * lost one last), with the `reconnect` schedule's delay before each round, and takes its session along: its
 * subscriptions are made again on the new node, and what it had not got acknowledged is sent again.
 * `client.connection.broker` names the node in use, and a `Connected` status says where the client moved from.
 *
 * A failover needs two brokers: this example always starts two embedded aedes brokers of its own (two
 * independent brokers, not one cluster), whatever `MQTT_URL` says. It stops the first while the client is on it.
 *
 * Run: `npm run example examples/14-failover.ts`.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Deferred, Effect, Stream } from "effect"
import { MqttClient } from "effect-mqtt"
import { embeddedBroker } from "./_broker.ts"

const program = Effect.gen(function*() {
  const first = yield* embeddedBroker
  const second = yield* embeddedBroker
  const name = (broker: string | undefined) => broker === first.url ? "node 1" : broker === second.url ? "node 2" : "?"

  // (the client's own Warn line about the lost connection is left out here: statusChanges tells the move below)
  const client = yield* MqttClient.make({ url: [first.url, second.url], logLevel: "Error" })
  yield* Console.log(`connected to ${name(client.connection.broker)}`)
  yield* client.subscribe("alerts/#", { qos: 1 })

  // the moves, as statusChanges tells them
  const moved = yield* Deferred.make<string>()
  yield* client.statusChanges.pipe(
    Stream.runForEach((status) =>
      status._tag === "Connected" && status.movedFrom !== undefined
        ? Deferred.succeed(moved, `moved from ${name(status.movedFrom)} to ${name(status.info.broker)}`)
        : Effect.void
    ),
    Effect.forkChild
  )

  // node 1 goes away while the client is on it
  yield* first.stop
  yield* Console.log("node 1 stopped")
  yield* Console.log(yield* Deferred.await(moved))

  // the subscription came along: a message published now, on node 2, arrives
  yield* client.publish("alerts/smoke", "kitchen", { qos: 1 })
  const [message] = yield* client.messages.pipe(Stream.take(1), Stream.runCollect)
  yield* Console.log(`received on ${name(client.connection.broker)}: ${message.topic} ${message.text}`)
}).pipe(Effect.scoped)

NodeRuntime.runMain(program)
