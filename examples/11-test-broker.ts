/**
 * Testing an application with the in-memory test broker, on a test clock.
 *
 * `MqttTestBroker.layerWithClient()` gives the application a real `MqttClient` connected to an in-process
 * broker through an in-memory socket: the same client code as in production, no network, no broker process.
 * The test publishes as another device would (`broker.publish`), reads what the application published
 * (`broker.published`, `broker.awaitPublished`), drops the client's connection as a lost network would
 * (`broker.disconnect`: the will is published), and moves time with `TestClock`: hours pass in an instant, and
 * the client's keepalive pings are answered on the way, so nothing times out. After a drop, the client
 * reconnects after its backoff delay: move the clock for it to happen (releasing a subscription while the
 * client is offline waits for the reconnection, to unsubscribe).
 *
 * Inputs that must be handled at a given time are published from fibers that sleep on the test clock
 * (`at`, below): when the clock wakes one, everything its publish sets off settles before the clock moves on.
 *
 * This example uses its own broker (it ignores `MQTT_URL`). In a test file, write the same with
 * `it.effect` from `@effect/vitest`, which provides the test clock.
 *
 * Run: `npm run example examples/11-test-broker.ts`
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, type Duration, Effect, FiberMap, Schema, Stream } from "effect"
import { MqttClient, MqttTestBroker, MqttTopic } from "effect-mqtt"
import { TestClock } from "effect/testing"

// ---- the application under test: an alert when a door stays open for 5 minutes ---------------------------

const DoorState = MqttTopic.make("doors/{door}/state", Schema.Literals(["open", "closed"]), { codec: "text" })
const Alert = MqttTopic.make("alerts/{door}", Schema.String, { codec: "text" })

const doorMonitor = Effect.gen(function*() {
  const openDoors = yield* FiberMap.make<string>()
  const states = yield* MqttTopic.subscribe(DoorState, { qos: 1 })
  yield* Stream.runForEach(states, ({ params: { door }, payload }) =>
    payload === "open"
      ? FiberMap.run(
        openDoors,
        door,
        Effect.sleep("5 minutes").pipe(
          Effect.andThen(MqttTopic.publish(Alert, { door }, "open for 5 minutes", { qos: 1 }))
        )
      )
      : FiberMap.remove(openDoors, door))
})

// ---- the test ---------------------------------------------------------------------------------------------

/** Publishes as a device would, once the test clock reaches `time`. */
const at = (time: Duration.Input, topic: string, payload: string) =>
  MqttTestBroker.MqttTestBroker.use((broker) =>
    Effect.forkScoped(Effect.delay(broker.publish(topic, payload, { qos: 1 }), time))
  )

const alerts = MqttTestBroker.MqttTestBroker.use((broker) => broker.published("alerts/+")).pipe(
  Effect.map((messages) => messages.map((m) => `${m.topic} "${m.text}"`))
)

const test = Effect.gen(function*() {
  const broker = yield* MqttTestBroker.MqttTestBroker
  const client = yield* MqttClient.MqttClient
  yield* Effect.forkScoped(doorMonitor)
  yield* broker.awaitSubscription(DoorState.filter)

  yield* at("1 second", "doors/front/state", "open")
  yield* at("1 second", "doors/back/state", "open")
  yield* at("4 minutes", "doors/back/state", "closed")

  yield* TestClock.adjust("4 minutes")
  yield* Console.log(`after 4 minutes: ${(yield* alerts).length} alerts`)
  yield* TestClock.adjust("2 minutes")
  yield* Console.log(`after 6 minutes: ${(yield* alerts).join(", ")}`)

  yield* TestClock.adjust("12 hours")
  const metrics = yield* client.metrics
  yield* Console.log(`after 12 hours: ${(yield* client.status)._tag}, ${metrics.reconnects} reconnects`)

  // the client logs the lost connection as a warning (its default `logLevel`), with the delay before it retries
  yield* broker.disconnect("door-monitor")
  const [will] = yield* broker.awaitPublished("status/door-monitor")
  yield* Console.log(`network lost: the broker published the will "${will.text}"`)
  // the client reconnects after its backoff delay, on the test clock too
  yield* TestClock.adjust("1 second")
  yield* broker.awaitClient("door-monitor")
  yield* Console.log(`reconnected: ${(yield* client.status)._tag}, ${(yield* client.metrics).reconnects} reconnect`)
})

test.pipe(
  Effect.scoped,
  Effect.provide(MqttTestBroker.layerWithClient({
    clientId: "door-monitor",
    will: { topic: "status/door-monitor", payload: "offline", qos: 1 }
  })),
  Effect.provide(TestClock.layer()),
  NodeRuntime.runMain
)
