/**
 * Consumer groups: members share the messages of a filter through an MQTT 5 shared subscription, each message
 * handled by one member, and acknowledged only once its handler succeeded.
 *
 * Three members (fibers here; in production, one per process) share `jobs/#`. The second is slow: it holds the
 * jobs the broker sent it (at most its `prefetch`) when it is stopped. Its session keeps them; two seconds later
 * its will tells the others, and one of them adopts the session and handles what it held. Every job is handled.
 *
 * A consumer group needs MQTT 5: with `MQTT_URL` (Mosquitto 2, EMQX, HiveMQ...) it runs there; without it, on
 * effect-mqtt's in-memory test broker (aedes, the other examples' embedded broker, speaks MQTT 3.1.1 only).
 *
 * Run: `npm run example examples/13-consumer-group.ts` (set `MQTT_URL` to use your own broker).
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Fiber, Logger } from "effect"
import { ConsumerGroup, MqttClient, MqttTestBroker } from "effect-mqtt"

/** The broker: `MQTT_URL`, else the in-memory test broker, which lives as long as the program. */
const brokerOptions = Effect.gen(function*() {
  const url = process.env.MQTT_URL
  if (url !== undefined && url !== "" && url !== "memory:") return { url } satisfies MqttClient.Options
  const broker = yield* MqttTestBroker.make()
  return { transport: broker.socket } satisfies MqttClient.Options
})

/** The group's log lines that say a member adopted worker-2's session. */
const adoptions: Array<string> = []

/** Polls until `done` (every 50 ms, at most 30 s). */
const until = (done: () => boolean) =>
  Effect.gen(function*() {
    for (let i = 0; i < 600 && !done(); i++) yield* Effect.sleep("50 millis")
  })

const program = Effect.gen(function*() {
  const client = yield* brokerOptions
  // names of their own, so that a second run on the same broker does not meet the sessions of the first
  const run = Math.random().toString(36).slice(2, 8)
  const group = `jobs-${run}`
  const handled = new Map<string, string>() // job -> member

  const member = (name: string, millis: number) =>
    ConsumerGroup.run(
      { client, group, filter: "jobs/#", member: `${name}-${run}`, qos: 1, prefetch: 5, sessionExpiryInterval: 60 },
      // acknowledged once this succeeds: a job whose handler never finished stays in the member's session
      (message) => Effect.sync(() => handled.set(message.text, name)).pipe(Effect.delay(millis))
    )
  const workers = [
    yield* Effect.forkChild(member("worker-1", 10)),
    yield* Effect.forkChild(member("worker-2", 500)),
    yield* Effect.forkChild(member("worker-3", 10))
  ]
  yield* Console.log("3 members share jobs/#")
  // time for the members to connect and subscribe
  yield* Effect.sleep("1500 millis")

  const publisher = yield* MqttClient.make({ ...client, protocolVersion: 5 })
  const jobs = Array.from({ length: 30 }, (_, i) => `job ${i + 1}`)
  yield* Effect.forEach(jobs, (job) => publisher.publish("jobs/new", job, { qos: 1 }), { discard: true })

  // worker-2 takes 500 ms a job: stopped after its first, it still holds others, unacknowledged
  yield* until(() => [...handled.values()].includes("worker-2"))
  yield* Fiber.interrupt(workers[1])
  yield* Console.log("worker-2 stopped while it held unacknowledged jobs")

  yield* until(() => jobs.every((job) => handled.has(job)) && adoptions.length > 0)
  yield* Console.log(`${jobs.filter((job) => handled.has(job)).length} of ${jobs.length} jobs handled`)
  yield* Console.log(
    adoptions.length > 0 ? "worker-2's session was adopted by another member" : "worker-2's session was not adopted"
  )
}).pipe(
  // the group says in a log line when a member adopted another's session: kept here instead of printed
  Effect.provide(Logger.layer([Logger.make((options) => {
    const line = String(options.message)
    if (line.includes("adopted worker-2")) adoptions.push(line)
  })])),
  Effect.scoped
)

NodeRuntime.runMain(program)
