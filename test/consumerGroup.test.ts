/**
 * Consumer groups on a private Mosquitto (MQTT 5 shared subscriptions): three member processes share
 * `$share/work/work/#`; 30,000 QoS 1 and 10,000 QoS 2 messages are published while one member is killed
 * (SIGKILL) midway. Every message is handled at least once by the group; a QoS 2 message is handled twice only
 * if the killed member had handled it and its PUBREC had not left (at most its prefetch); what the killed member
 * held, and what Mosquitto went on dealing its session, is adopted and handled by the others.
 */
import { describe, expect, it } from "@effect/vitest"
import { Cause, Deferred, Effect, Exit, Fiber, Logger, Schedule, Stream } from "effect"
import { ConsumerGroup, MqttClient, MqttError, type MqttMessage } from "effect-mqtt"
import { type ChildProcess, spawn } from "node:child_process"
import * as Path from "node:path"
import * as FakeBroker from "./support/FakeBroker.ts"
import { mosquitto } from "./support/Mosquitto.ts"
import { SOURCE_CONDITION } from "./support/peers.ts"

const MEMBER = Path.join(import.meta.dirname, "fixtures", "group-member.ts")

const sleepReal = (ms: number) => Effect.promise(() => new Promise<void>((resolve) => setTimeout(resolve, ms)))

/** Polls a condition every 20 ms; dies with `what` after `seconds` (a guard against a hang, not a timing claim). */
const until = (what: string, condition: () => boolean, seconds = 120, diagnose: () => string = () => "") =>
  Effect.gen(function*() {
    const deadline = Date.now() + seconds * 1000
    while (!condition()) {
      if (Date.now() > deadline) return yield* Effect.die(new Error(`${what}: not within ${seconds} s${diagnose()}`))
      yield* sleepReal(20)
    }
  })

interface Member {
  readonly name: string
  readonly child: ChildProcess
  /** `topic payload` of each message handled, in order */
  readonly handled: Array<string>
  /** members it adopted, with how many messages each */
  readonly adopted: Array<readonly [string, number]>
  /** every line it printed that is not a message (the group's log lines) */
  readonly log: Array<string>
  readonly output: () => string
}

/** A member process; `millis` makes each message take that long. */
const member = (options: ConsumerGroup.Options, millis = 0) =>
  Effect.acquireRelease(
    Effect.sync((): Member => {
      const child = spawn(process.execPath, [SOURCE_CONDITION, MEMBER, JSON.stringify(options), String(millis)], {
        stdio: "pipe"
      })
      const handled: Array<string> = []
      const log: Array<string> = []
      const adopted: Array<readonly [string, number]> = []
      let partial = ""
      let stderr = ""
      child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
        const lines = (partial + chunk).split("\n")
        partial = lines.pop() ?? ""
        for (const line of lines) {
          if (line.startsWith("msg ")) handled.push(line.slice(4))
          else log.push(line)
          const adoption = /adopted (\S+) \((\d+)\)/.exec(line)
          if (adoption !== null) adopted.push([adoption[1], Number(adoption[2])])
        }
      })
      child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk))
      return { name: options.member, child, handled, adopted, log, output: () => stderr }
    }),
    (m) => Effect.sync(() => m.child.kill("SIGKILL"))
  )

/**
 * Waits until `members` together handled every message of `expected` (`topic payload`), then a little more for late
 * lines; returns how many times each was handled.
 */
const allHandled = (members: ReadonlyArray<Member>, expected: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const counts = new Map<string, number>()
    const count = () => {
      counts.clear()
      for (const m of members) for (const key of m.handled) counts.set(key, (counts.get(key) ?? 0) + 1)
      return expected.every((key) => counts.has(key))
    }
    yield* until("every message handled by the group", count, 120, () =>
      `\n${
        expected.filter((key) => !counts.has(key)).length
      } missing; ${
        JSON.stringify(members.map((m) => [m.handled.length, m.adopted, m.log.slice(-5), m.output().slice(-1000)]))
      }`)
    yield* sleepReal(500)
    count()
    return counts
  })

describe("a consumer group across three processes on Mosquitto", () => {
  it.live(
    "30,000 QoS 1 and 10,000 QoS 2 messages, one member killed midway: QoS 1 handled at least once, QoS 2 once (but what the dead member had handled), its messages adopted by the others",
    () =>
      Effect.gen(function*() {
        const broker = yield* mosquitto({ protocolConfig: "max_queued_messages 0\nlog_type subscribe" })
        const group = { client: { url: broker.url }, group: "work", filter: "work/#", qos: 2, prefetch: 10 } as const
        const members = [
          yield* member({ ...group, member: "member-1" }),
          yield* member({ ...group, member: "member-2" }),
          yield* member({ ...group, member: "member-3" })
        ]
        // each member subscribes to the work and to the group's notices
        yield* until(
          "three members subscribed",
          () =>
            ["member-1", "member-2", "member-3"].every((name) =>
              broker.logs().split("\n").some((line) =>
                line.includes(` ${name} `) && line.includes("$share/work/work/#")
              )
            ),
          60
        )
        const publisher = yield* MqttClient.make({ url: broker.url, protocolVersion: 5 })
        const qos1 = 30_000
        const qos2 = 10_000
        const plan = Array.from({ length: qos1 + qos2 }, (_, i) => i % 4 === 3 ? 2 : 1)
        let published = 0
        const victim = members[1]
        let handledBeforeKill = -1
        yield* Effect.forEach(
          plan,
          (qos, i) =>
            Effect.gen(function*() {
              yield* publisher.publish(`work/q${qos}`, String(i), { qos })
              published++
              // frozen first, so that its session surely holds messages when it dies: its window (prefetch)
              // fills, and what Mosquitto deals it meanwhile waits in its session; then killed
              if (published === Math.floor(plan.length * 0.4)) {
                victim.child.kill("SIGSTOP")
                handledBeforeKill = victim.handled.length
              }
              if (published === Math.floor(plan.length * 0.5)) victim.child.kill("SIGKILL")
            }),
          { concurrency: 100, discard: true }
        )
        const expected = plan.map((qos, i) => `work/q${qos} ${i}`)
        const counts = new Map<string, number>()
        let counted = 0
        const count = () => {
          counts.clear()
          counted = 0
          for (const m of members) {
            for (const key of m.handled) {
              counts.set(key, (counts.get(key) ?? 0) + 1)
              counted++
            }
          }
          return expected.every((key) => counts.has(key))
        }
        yield* until("every message handled by the group", count, 120, () => {
          const missing = expected.filter((key) => !counts.has(key))
          return `\n${missing.length} missing, first ${JSON.stringify(missing.slice(0, 10))}; per member ${
            JSON.stringify(members.map((m) => [m.handled.length, m.adopted, m.output().slice(-2000)]))
          }`
        })
        // the adoption is reported when it ends (the session emptied), which may be after the last message
        yield* until(
          "member-2's session adopted",
          () => members.some((m) => m.adopted.some(([name]) => name === "member-2")),
          60
        )
        const victimHandled = new Set(victim.handled)
        const duplicatesQos2 = [...counts].filter(([key, n]) => key.startsWith("work/q2 ") && n > 1).map(([key]) => key)
        const adoptions = members.flatMap((m) => m.adopted)
        console.log(
          `consumer group: ${expected.length} published, ${counted} handled; per member ${
            JSON.stringify(members.map((m) => m.handled.length))
          } (member-2 frozen after ${handledBeforeKill}, then killed); adoptions ${JSON.stringify(adoptions)}; ` +
            `${[...counts.values()].filter((n) => n > 1).length} handled twice, ${duplicatesQos2.length} of them QoS 2`
        )
        // QoS 2 twice only for what the killed member had handled, at most its prefetch
        expect(duplicatesQos2.filter((key) => !victimHandled.has(key))).toEqual([])
        expect(duplicatesQos2.length).toBeLessThanOrEqual(group.prefetch)
        // the killed member's session was adopted by another member, which handled what it held
        const adopted = adoptions.filter(([name]) => name === "member-2")
        expect(adopted.length).toBe(1)
        expect(adopted[0][1]).toBeGreaterThan(0)
        // nobody adopted a member that was alive
        expect(adoptions.length).toBe(1)
      }),
    300_000
  )
})

describe("a member that comes back while another adopts its session", () => {
  it.live(
    "takes its session back: the adopter goes on, nothing is lost, QoS 2 is handled twice at most for the dead member's window, and the group's own topics never reach a handler (filter #)",
    () =>
      Effect.gen(function*() {
        const broker = yield* mosquitto({ protocolConfig: "max_queued_messages 0\nlog_type subscribe" })
        const group = { client: { url: broker.url }, group: "back", filter: "#", qos: 2, prefetch: 10 } as const
        // slow members: the dead member's session holds a backlog, and its adoption takes about 20 s
        const adopter = yield* member({ ...group, member: "member-1" }, 40)
        const first = yield* member({ ...group, member: "member-2" }, 50)
        // each member's own SUBSCRIBE (a member subscribes again at each connection: counting lines is not enough)
        yield* until("both members subscribed", () => {
          const lines = broker.logs().split("\n").filter((line) => line.includes("$share/back/#"))
          return ["member-1", "member-2"].every((name) => lines.some((line) => line.includes(` ${name} `)))
        }, 60)
        const publisher = yield* MqttClient.make({ url: broker.url, protocolVersion: 5 })
        const expected = Array.from({ length: 1000 }, (_, i) => `work/x ${i}`)
        yield* Effect.forEach(expected, (_, i) => publisher.publish("work/x", String(i), { qos: 2 }), {
          concurrency: 20,
          discard: true
        })
        const subscribedAsMember2 = () =>
          broker.logs().split("\n").filter((line) => line.includes(" member-2 ") && line.includes("$share/back/#"))
            .length
        const before = subscribedAsMember2()
        first.child.kill("SIGKILL")
        // the notice comes 2 s after; member-1 connects as member-2 and subscribes as it (to take its
        // subscription out of the group), then handles its backlog, 40 ms a message: member-2 comes back then
        yield* until("the adoption under way", () => subscribedAsMember2() > before, 60)
        const back = yield* member({ ...group, member: "member-2" }, 0)
        const all = [adopter, first, back]
        const counts = yield* allHandled(all, expected)
        const twice = [...counts].filter(([, n]) => n > 1).map(([key]) => key)
        console.log(
          `takeback: handled ${JSON.stringify(all.map((m) => m.handled.length))}, ${twice.length} twice; ` +
            `member-1: ${JSON.stringify(adopter.log.filter((line) => line.includes("member-2")))}`
        )
        // the adoption was under way when member-2 came back, and ended without failing the adopter
        expect(adopter.log.some((line) => line.includes("adoption of member-2 ended"))).toBe(true)
        expect(adopter.child.exitCode).toBe(null)
        expect(adopter.output()).not.toContain("group-member failed")
        // twice: what member-2 had handled when killed (its window), and what the adopter was handling when cut
        expect(twice.length).toBeLessThanOrEqual(group.prefetch + 1)
        // the notices and markers on effect-mqtt/groups/... match "#" but are the group's own
        expect(all.flatMap((m) => m.handled).filter((key) => key.startsWith("effect-mqtt/"))).toEqual([])
      }),
    300_000
  )
})

describe("a whole group stopped and started again with fewer members", () => {
  it.live(
    "the member that did not come back is adopted by one that did (its notice is retained): every message it was dealt is handled",
    () =>
      Effect.gen(function*() {
        const broker = yield* mosquitto({ protocolConfig: "max_queued_messages 0\nlog_type subscribe" })
        const group = {
          client: { url: broker.url },
          group: "redeploy",
          filter: "work/#",
          qos: 1,
          prefetch: 10
        } as const
        const names = ["member-1", "member-2", "member-3"]
        const subscribedSince = (from: number) => (name: string) =>
          broker.logs().split("\n").slice(from).some((line) =>
            line.includes(` ${name} `) && line.includes("$share/redeploy/work/#")
          )
        const first = [] as Array<Member>
        for (const name of names) first.push(yield* member({ ...group, member: name }))
        yield* until("three members subscribed", () => names.every(subscribedSince(0)), 60)
        // the whole group stops at once (a redeploy): each will (2 s after) finds no live member to adopt it
        for (const m of first) m.child.kill("SIGKILL")
        yield* sleepReal(3500)
        // Mosquitto goes on dealing each of the three sessions its share of what comes now
        const publisher = yield* MqttClient.make({ url: broker.url, protocolVersion: 5 })
        const expected = Array.from({ length: 300 }, (_, i) => `work/x ${i}`)
        yield* Effect.forEach(expected, (_, i) => publisher.publish("work/x", String(i), { qos: 1 }), {
          concurrency: 20,
          discard: true
        })
        // two of them come back: member-3 does not (a smaller deployment, or a new name)
        const from = broker.logs().split("\n").length - 1
        const back = [yield* member({ ...group, member: "member-1" }), yield* member({ ...group, member: "member-2" })]
        yield* allHandled(back, expected)
        expect(["member-1", "member-2"].every(subscribedSince(from))).toBe(true)
        // the adoption is reported when it ends (the session emptied), which may be after the last message
        yield* until("member-3 adopted", () => back.some((m) => m.adopted.some(([name]) => name === "member-3")), 60)
        // a member that came back clears its own notice as it connects; one that took longer to start than the
        // others' 5 s wait may be adopted meanwhile, which is the case of a member back while adopted (nothing lost)
        console.log(`redeploy: adoptions ${JSON.stringify(back.flatMap((m) => m.adopted))}`)
      }),
    300_000
  )
})

describe("a member frozen past its keepalive while another adopts its session", () => {
  it.live(
    "lets go of what it had queued when it resumes: the adopter handled it, and QoS 2 is not handled twice but for the messages its handler had begun",
    () =>
      Effect.gen(function*() {
        const broker = yield* mosquitto({ protocolConfig: "max_queued_messages 0\nlog_type subscribe" })
        const group = { group: "frozen", filter: "work/#", qos: 2, prefetch: 10 } as const
        const adopter = yield* member({ ...group, client: { url: broker.url }, member: "member-1" }, 5)
        // a short keepalive: Mosquitto closes the frozen member's connection 3 s after its last packet
        const frozen = yield* member({ ...group, client: { url: broker.url, keepAlive: 2 }, member: "member-2" }, 50)
        yield* until("both members subscribed", () => {
          const lines = broker.logs().split("\n").filter((line) => line.includes("$share/frozen/work/#"))
          return ["member-1", "member-2"].every((name) => lines.some((line) => line.includes(` ${name} `)))
        }, 60)
        const publisher = yield* MqttClient.make({ url: broker.url, protocolVersion: 5 })
        const publishRange = (from: number, to: number) =>
          Effect.forEach(
            Array.from({ length: to - from }, (_, i) => from + i),
            (i) => publisher.publish("work/x", String(i), { qos: 2 }),
            { concurrency: 20, discard: true }
          )
        yield* publishRange(0, 300)
        // member-2 handles 50 ms a message: its window (prefetch) and its queue are full when it is frozen
        yield* until("member-2 handling", () => frozen.handled.length >= 5, 60)
        frozen.child.kill("SIGSTOP")
        yield* until(
          "member-2 adopted by member-1",
          () => adopter.adopted.some(([name]) => name === "member-2"),
          120,
          () => `; member-1: ${JSON.stringify(adopter.log.slice(-5))}`
        )
        // what member-2 printed before it was frozen has reached this process by now
        yield* sleepReal(500)
        const handledWhileUp = frozen.handled.length
        frozen.child.kill("SIGCONT")
        yield* publishRange(300, 400)
        const expected = Array.from({ length: 400 }, (_, i) => `work/x ${i}`)
        const all = [adopter, frozen]
        const counts = yield* allHandled(all, expected)
        const afterResume = frozen.handled.slice(handledWhileUp)
        const twiceAfterResume = afterResume.filter((key) => (counts.get(key) ?? 0) > 1)
        console.log(
          `frozen member: handled ${JSON.stringify(all.map((m) => m.handled.length))}, ${handledWhileUp} by ` +
            `member-2 before its freeze, ${afterResume.length} after; twice after: ${JSON.stringify(twiceAfterResume)}`
        )
        // member-2 came back, took its session back and went on as a member
        expect(frozen.child.exitCode).toBe(null)
        expect(frozen.output()).not.toContain("group-member failed")
        // the message its handler was in when frozen, and one it began in the instant it resumed, before it read
        // that its connection was gone: not the rest of what it had queued (its window and more)
        expect(twiceAfterResume.length).toBeLessThanOrEqual(2)
      }),
    300_000
  )
})

describe("a member restarted with other filters", () => {
  it.live(
    "leaves the shares it no longer takes: the group goes on receiving all of the old filter's messages",
    () =>
      Effect.gen(function*() {
        const broker = yield* mosquitto({ protocolConfig: "max_queued_messages 0\nlog_type subscribe" })
        const group = { client: { url: broker.url }, group: "change", qos: 1, prefetch: 10 } as const
        // member-2 takes a/# and dies alone (no member to adopt it): its session keeps $share/change/a/#
        const before = yield* member({ ...group, filter: "a/#", member: "member-2" })
        // the subscriptions logged since `from` (a line of the broker's log), by `name`
        const subscribed = (name: string, filter: string, from = 0) =>
          broker.logs().split("\n").slice(from).some((line) =>
            line.includes(` ${name} `) && line.includes(`$share/change/${filter}`)
          )
        yield* until("member-2 subscribed", () => subscribed("member-2", "a/#"), 60)
        before.child.kill("SIGKILL")
        yield* sleepReal(3000)
        // now member-1 takes a/#, and member-2 comes back taking b/# only
        const restartedAt = broker.logs().split("\n").length - 1
        const other = yield* member({ ...group, filter: "a/#", member: "member-1" })
        const after = yield* member({ ...group, filter: "b/#", member: "member-2" })
        yield* until(
          "both subscribed",
          () => subscribed("member-1", "a/#", restartedAt) && subscribed("member-2", "b/#", restartedAt),
          60
        )
        const publisher = yield* MqttClient.make({ url: broker.url, protocolVersion: 5 })
        const expected = Array.from({ length: 200 }, (_, i) => `a/x ${i}`)
        yield* Effect.forEach(expected, (_, i) => publisher.publish("a/x", String(i), { qos: 1 }), {
          concurrency: 10,
          discard: true
        })
        const handled = () => new Set([...other.handled, ...after.handled])
        yield* until(
          "every a/x message handled",
          () => expected.every((key) => handled().has(key)),
          60,
          () =>
            `\n${expected.filter((key) => !handled().has(key)).length} missing; member-1 ${other.handled.length}, ` +
            `member-2 ${after.handled.length}; member-2: ${JSON.stringify(after.log.slice(-5))}`
        )
        expect(after.log.some((line) => line.includes("member-2 no longer takes a/#"))).toBe(true)
        expect(after.handled.filter((key) => key.startsWith("a/"))).toEqual([])
        // a notice that names no member (a name no member may have) is ignored, not adopted
        yield* publisher.publish("effect-mqtt/groups/change/left", "a#b", { qos: 1 })
        yield* until(
          "the notice seen",
          () => [...other.log, ...after.log].some((l) => l.includes(`"a#b", ignored`)),
          30
        )
        yield* sleepReal(200)
        expect([other.child.exitCode, after.child.exitCode]).toEqual([null, null])
      }),
    120_000
  )
})

describe("members in one process", () => {
  it.live(
    "two members that start 1.2 s apart, with a retained notice of a member that left while none ran: one adopts it, every message is handled, QoS 2 twice at most within prefetch",
    () =>
      Effect.gen(function*() {
        const broker = yield* mosquitto({ protocolConfig: "log_type subscribe" })
        const group = { client: { url: broker.url }, group: "starting", filter: "work/#", qos: 2, prefetch: 5 } as const
        const m1 = yield* Effect.forkChild(ConsumerGroup.run({ ...group, member: "m1" }, () => Effect.void))
        yield* until(
          "m1 subscribed",
          () => broker.logs().split("\n").some((line) => line.includes(" m1 ") && line.includes("$share/starting")),
          60
        )
        yield* Fiber.interrupt(m1)
        // its will, the retained notice, is out 2 s after; what comes then waits in its session
        yield* sleepReal(3000)
        const publisher = yield* MqttClient.make({ url: broker.url, protocolVersion: 5 })
        for (let i = 0; i < 40; i++) yield* publisher.publish("work/x", String(i), { qos: 2 })
        const handled: Array<string> = []
        const adopted: Array<string> = []
        const logger = Logger.make((options) => {
          const line = Array.isArray(options.message) ? options.message.join(" ") : String(options.message)
          if (line.includes("adopted m1")) adopted.push(line)
        })
        const handler = (message: MqttMessage.MqttMessage) =>
          Effect.sync(() => handled.push(message.text)).pipe(Effect.delay("50 millis"))
        yield* Effect.forkChild(
          ConsumerGroup.run({ ...group, member: "m3" }, handler).pipe(Effect.provide(Logger.layer([logger])))
        )
        yield* sleepReal(1200)
        yield* Effect.forkChild(
          ConsumerGroup.run({ ...group, member: "m4" }, handler).pipe(Effect.provide(Logger.layer([logger])))
        )
        yield* until("all 40 handled", () => new Set(handled).size === 40, 60, () => ` (${handled.length})`)
        yield* until("m1 adopted", () => adopted.length > 0, 30)
        const counts = new Map<string, number>()
        for (const text of handled) counts.set(text, (counts.get(text) ?? 0) + 1)
        const twice = [...counts].filter(([, n]) => n > 1)
        console.log(`starting together: ${JSON.stringify(adopted)}; handled twice ${JSON.stringify(twice)}`)
        expect(twice.length).toBeLessThanOrEqual(group.prefetch)
      }),
    120_000
  )

  it.live(
    "a member whose broker restarts without its session (Session Present 0) while it handles a backlog: what it had queued is handled, none let go of",
    () =>
      Effect.gen(function*() {
        const broker = yield* mosquitto({ protocolConfig: "log_type subscribe" })
        const handled: Array<string> = []
        const gate = yield* Deferred.make<void>()
        yield* Effect.forkChild(ConsumerGroup.run(
          { client: { url: broker.url }, group: "restart", filter: "work/#", member: "m1", qos: 1, prefetch: 10 },
          (message) =>
            Effect.gen(function*() {
              // the first message holds the handler: the others wait in the member's queue
              if (handled.length === 0) yield* Deferred.await(gate)
              handled.push(message.text)
            })
        ))
        yield* until(
          "m1 subscribed",
          () => broker.logs().split("\n").some((line) => line.includes(" m1 ") && line.includes("$share/restart")),
          60
        )
        const publisher = yield* MqttClient.make({ url: broker.url, protocolVersion: 5, reconnect: false })
        for (let i = 0; i < 6; i++) yield* publisher.publish("work/x", String(i), { qos: 1 })
        yield* sleepReal(500)
        // Mosquitto without persistence: killed and started again, it has no session for m1
        broker.kill("SIGKILL")
        yield* sleepReal(200)
        // the handler goes on while the member is disconnected
        yield* Deferred.succeed(gate, void 0)
        yield* sleepReal(500)
        yield* Effect.promise(() => broker.restart())
        yield* until("all six handled", () => handled.length >= 6, 60, () => ` (${JSON.stringify(handled)})`)
        expect(handled).toEqual(["0", "1", "2", "3", "4", "5"])
      }),
    120_000
  )

  it.live(
    "a record that is not a list of filters is no list of filters: the member runs and records its own",
    () =>
      Effect.gen(function*() {
        const broker = yield* mosquitto({})
        const group = { client: { url: broker.url }, group: "garbage", filter: "jobs/#" } as const
        const publisher = yield* MqttClient.make({ url: broker.url, protocolVersion: 5 })
        const record = "effect-mqtt/groups/garbage/filters/m1"
        yield* publisher.publish(record, JSON.stringify(["a/#/b", "", "$share/x/y", 5, "jobs/#"]), {
          qos: 1,
          retain: true
        })
        let handled = 0
        yield* Effect.forkChild(ConsumerGroup.run({ ...group, member: "m1" }, () => Effect.sync(() => handled++)))
        // its record says what it takes now: the group's filter, not the garbage
        const reader = yield* MqttClient.make({ url: broker.url, protocolVersion: 5 })
        const recorded = () =>
          Effect.scoped(Effect.gen(function*() {
            const stream = yield* reader.subscription(record, { qos: 1 })
            const [message] = yield* Stream.runCollect(Stream.take(stream, 1))
            return message.text
          }))
        let text = ""
        for (let i = 0; i < 200 && text !== `["jobs/#"]`; i++) {
          text = yield* recorded()
          if (text !== `["jobs/#"]`) yield* sleepReal(50)
        }
        expect(text).toBe(`["jobs/#"]`)
        for (let i = 0; i < 10; i++) yield* publisher.publish("jobs/x", String(i), { qos: 1 })
        yield* until("the jobs handled", () => handled === 10, 30)
      }),
    60_000
  )

  it.live(
    "a member whose session another member took (a notice naming it while it lives) rejoins the group when it reconnects",
    () =>
      Effect.gen(function*() {
        const broker = yield* mosquitto({ protocolConfig: "max_queued_messages 0" })
        const group = { client: { url: broker.url }, group: "rejoin", filter: "jobs/#", prefetch: 10 } as const
        const handled = { m1: 0, m2: 0 }
        // m1 reconnects a second after losing its connection: by then the adoption is over
        const slowBack = { ...group, client: { ...group.client, reconnect: Schedule.spaced("1 second") } }
        const lines: Array<string> = []
        const logged = <A, E>(effect: Effect.Effect<A, E>) =>
          Effect.provide(effect, Logger.layer([Logger.make((options) => lines.push(String(options.message)))]))
        yield* Effect.forkChild(
          logged(ConsumerGroup.run({ ...slowBack, member: "m1" }, () => Effect.sync(() => handled.m1++)))
        )
        yield* Effect.forkChild(
          logged(ConsumerGroup.run({ ...group, member: "m2" }, () => Effect.sync(() => handled.m2++)))
        )
        const publisher = yield* MqttClient.make({ url: broker.url, protocolVersion: 5 })
        // both members in the group: each has handled a job
        let sent = 0
        const publishUntil = (what: string, done: () => boolean) =>
          Effect.gen(function*() {
            for (let i = 0; i < 400 && !done(); i++) {
              yield* publisher.publish("jobs/x", String(sent++), { qos: 1 })
              yield* sleepReal(50)
            }
            if (!done()) return yield* Effect.die(new Error(`${what}: not within 20 s (${JSON.stringify(handled)})`))
          })
        yield* publishUntil("both members working", () => handled.m1 > 0 && handled.m2 > 0)
        // a notice naming m1, which is alive: m2 adopts m1's session (taking m1's connection from it, taking its
        // shares out of the session), then m1's client reconnects to its session
        // (the notices go round the members' listeners: m1's ignores one naming itself, so two are sent)
        yield* publisher.publish("effect-mqtt/groups/rejoin/left", "m1", { qos: 1 })
        yield* publisher.publish("effect-mqtt/groups/rejoin/left", "m1", { qos: 1 })
        yield* until("m2 adopted m1", () => lines.some((line) => line.includes("adopted m1")), 30)
        yield* sleepReal(2000)
        const before = handled.m1
        yield* publishUntil("m1 working again", () => handled.m1 > before)
      }),
    60_000
  )
})

describe("a member stopped while it adopts", () => {
  it.live(
    "the adoption under way and a notice still queued are handed on: a member already running adopts both sessions, every message is handled",
    () =>
      Effect.gen(function*() {
        const broker = yield* mosquitto({ protocolConfig: "log_type subscribe" })
        const group = { client: { url: broker.url }, group: "handon", filter: "jobs/#", prefetch: 5 } as const
        // two members that never finish a job: their shares stay in their sessions
        const dead = [
          yield* Effect.forkChild(ConsumerGroup.run({ ...group, member: "m0" }, () => Effect.never)),
          yield* Effect.forkChild(ConsumerGroup.run({ ...group, member: "m1" }, () => Effect.never))
        ]
        yield* until(
          "m0 and m1 subscribed",
          () =>
            ["m0", "m1"].every((name) =>
              broker.logs().split("\n").some((line) => line.includes(` ${name} `) && line.includes("$share/handon"))
            ),
          60
        )
        const publisher = yield* MqttClient.make({ url: broker.url, protocolVersion: 5 })
        for (let i = 0; i < 20; i++) yield* publisher.publish("jobs/x", String(i), { qos: 1 })
        // m2 adopts one of them, handles two of its jobs and stalls on the third; the other notice waits its turn
        const byM2: Array<string> = []
        const m2 = yield* Effect.forkChild(ConsumerGroup.run(
          { ...group, member: "m2" },
          (message) => byM2.length >= 2 ? Effect.never : Effect.sync(() => byM2.push(message.text))
        ))
        yield* until(
          "m2 subscribed",
          () => broker.logs().split("\n").some((line) => line.includes(" m2 ") && line.includes("$share/handon")),
          60
        )
        // both leave at once: their notices, 2 s later, find only m2 listening
        yield* Fiber.interruptAll(dead)
        yield* until("m2 adopting", () => byM2.length === 2, 30)
        // m3 runs, past its start (it reads the retained notices 5 to 7 s after it started: none by then, m2 cleared
        // the one it adopts), when m2 is stopped
        const byM3: Array<string> = []
        yield* Effect.forkChild(
          ConsumerGroup.run({ ...group, member: "m3" }, (message) => Effect.sync(() => byM3.push(message.text)))
        )
        yield* sleepReal(8000)
        yield* Fiber.interrupt(m2)
        const all = () => new Set([...byM2, ...byM3]).size === 20
        yield* until("every job handled", all, 60, () => ` (m2 ${JSON.stringify(byM2)}, m3 ${JSON.stringify(byM3)})`)
      }),
    120_000
  )
})

describe("prefetch: Receive Maximum on MQTT 5", () => {
  it.live(
    "a member that does not acknowledge holds no more than its prefetch; Mosquitto keeps the rest of its round-robin share until it does, while the other member goes on",
    () =>
      Effect.gen(function*() {
        const broker = yield* mosquitto({ protocolConfig: "max_queued_messages 0\nlog_type subscribe" })
        const group = { client: { url: broker.url }, group: "prefetch", filter: "jobs/#", prefetch: 10 } as const
        let fast = 0
        const fastMember = yield* Effect.forkChild(
          ConsumerGroup.run({ ...group, member: "fast" }, () => Effect.sync(() => fast++))
        )
        // the slow member: the same client options, a consumer that takes messages and does not acknowledge them
        const slow = yield* MqttClient.make(ConsumerGroup.memberOptions({ ...group, member: "slow" }))
        yield* slow.subscribe("$share/prefetch/jobs/#", { qos: 1 })
        const held: Array<MqttMessage.MqttMessage> = []
        yield* Effect.forkChild(Stream.runForEach(slow.messages, (message) =>
          Effect.sync(() => {
            held.push(message)
          })))
        yield* until(
          "the fast member subscribed",
          () => broker.logs().split("\n").some((l) => l.includes(" fast ") && l.includes("$share/prefetch/jobs/#")),
          30
        )
        const publisher = yield* MqttClient.make({ url: broker.url, protocolVersion: 5 })
        for (let i = 0; i < 100; i++) yield* publisher.publish("jobs/x", String(i), { qos: 1 })
        yield* until("the fast member handled its share", () => fast === 50, 30)
        // the broker dealt the slow member 50, but sent it only 10: nothing more without an acknowledgement
        yield* sleepReal(500)
        expect(held.length).toBe(10)
        expect(fast).toBe(50)
        // each acknowledgement lets one more through, until the slow member had its whole share
        while (held.length < 50) {
          const before = held.length
          yield* Effect.forEach(held.slice(0), (message) => message.ack, { discard: true })
          yield* until("more came after the acknowledgements", () => held.length > before || held.length === 50, 30)
        }
        expect(held.length + fast).toBe(100)
        yield* Fiber.interrupt(fastMember)
      }),
    120_000
  )
})

const assertOption = <A>(exit: Exit.Exit<A, MqttError.MqttError>, option: string) => {
  const failure = Exit.isFailure(exit) ? exit.cause.reasons.find(Cause.isFailReason) : undefined
  expect(failure?.error).toBeInstanceOf(MqttError.InvalidOptionError)
  expect((failure?.error as MqttError.InvalidOptionError).option).toBe(option)
}

describe("ConsumerGroup options", () => {
  // where nothing listens: an option that passed fails connecting (ConnectionLostError), not as expected
  const nowhere = { client: { url: "mqtt://127.0.0.1:1", reconnect: false as const } }
  const invalid: ReadonlyArray<readonly [string, Partial<ConsumerGroup.Options>, string]> = [
    ["a group name with a slash", { group: "a/b" }, "group"],
    ["an empty member name", { member: "" }, "member"],
    ["a shared filter (the group adds $share itself)", { filter: "$share/x/jobs/#" }, "filter"],
    ["an invalid filter", { filter: "jobs/#/more" }, "filter"],
    ["a prefetch of 0", { prefetch: 0 }, "prefetch"],
    ["a concurrency of 0", { concurrency: 0 }, "concurrency"],
    ["a member name with +", { member: "worker+1" }, "member"],
    ["a member name with #", { member: "#" }, "member"],
    ["a member name with /", { member: "host/1" }, "member"],
    ["a member name with NUL", { member: "a\u0000b" }, "member"],
    ["no filter (plain JavaScript)", { filter: undefined as unknown as string }, "filter"],
    ["a filter that is a number (plain JavaScript)", { filter: 5 as unknown as string }, "filter"],
    ["a filter list with a number", { filter: ["jobs/#", 5 as unknown as string] }, "filter"],
    ["overlapping filters (a message on both would reach the group twice)", { filter: ["work/#", "work/+"] }, "filter"],
    ["overlapping filters with + on both sides", { filter: ["a/+/c", "a/b/+"] }, "filter"],
    ["QoS 0 (no acknowledgement to hand over with)", { qos: 0 as 1 }, "qos"],
    ["QoS 3", { qos: 3 as 1 }, "qos"],
    ["a session expiry shorter than an adoption needs", { sessionExpiryInterval: 1 }, "sessionExpiryInterval"],
    ["a session expiry of 0", { sessionExpiryInterval: 0 }, "sessionExpiryInterval"],
    ["a store (the broker keeps a member's session)", { client: { store: {} as never } }, "client.store"],
    // each topic name fits, but a filter of the group's own (the name twice) or a share of the filter would not
    ["a group name too long for the group's filters", { group: "g".repeat(33_000), ...nowhere }, "group"],
    ["a filter too long with $share/<group>/", { filter: `jobs/${"x".repeat(65_526)}`, ...nowhere }, "filter"],
    ["a member name too long for the markers", { member: "m".repeat(65_500), ...nowhere }, "member"]
  ]
  for (const [name, override, option] of invalid) {
    it.effect(`${name} is an InvalidOptionError naming ${option}, before connecting`, () =>
      Effect.gen(function*() {
        const options = { group: "g", filter: "jobs/#", member: "m", ...override }
        assertOption(yield* Effect.exit(ConsumerGroup.run(options, () => Effect.void)), option)
        assertOption(yield* Effect.exit(ConsumerGroup.adopt(options, "other", () => Effect.void)), option)
      }))
  }

  it.live("filters that share no topic are one group's, and so are names with other characters", () =>
    Effect.gen(function*() {
      const lists = [["a/+", "a/b/c"], ["a/b/#", "a/c/#"], ["#", "$SYS/x"], ["work/q1", "work/q2"]]
      for (const filter of lists) {
        // nothing listens on port 1: the options passed, and the connection failed
        const exit = yield* Effect.exit(ConsumerGroup.adopt(
          { client: { url: "mqtt://127.0.0.1:1", reconnect: false }, group: "g", filter, member: "m-1.x" },
          "other",
          () => Effect.void
        ))
        const failure = Exit.isFailure(exit) ? exit.cause.reasons.find(Cause.isFailReason) : undefined
        expect(failure?.error._tag, JSON.stringify(filter)).toBe("ConnectionLostError")
      }
    }))

  it("memberOptions: MQTT 5, the member as client identifier, a persistent session, prefetch as Receive Maximum, manual acknowledgement, the will that names it (retained), DISCONNECT 0x04", () => {
    const options = ConsumerGroup.memberOptions({
      client: { url: "mqtt://broker:1883", keepAlive: 30 },
      group: "orders",
      filter: "orders/#",
      member: "worker-7",
      prefetch: 5
    })
    expect(options).toMatchObject({
      url: "mqtt://broker:1883",
      keepAlive: 30,
      protocolVersion: 5,
      clientId: "worker-7",
      cleanStart: false,
      sessionExpiryInterval: 3600,
      receiveMaximum: 5,
      acknowledgement: "manual",
      // retained: a member that starts finds it, when no member was running as it left
      will: { topic: "effect-mqtt/groups/orders/left/worker-7", payload: "worker-7", qos: 1, retain: true },
      disconnect: { reasonCode: 4 }
    })
  })

  it.effect("memberOptions sets the session whatever cleanSession the client options had: no conflict with cleanStart", () =>
    Effect.gen(function*() {
      const options = ConsumerGroup.memberOptions({
        client: { url: "mqtt://127.0.0.1:1", cleanSession: true },
        group: "orders",
        filter: "orders/#",
        member: "worker-7"
      })
      expect([options.cleanStart, options.cleanSession]).toStrictEqual([false, undefined])
      // refused for the connection (nothing listens there), not for its options
      const error = yield* Effect.flip(Effect.scoped(MqttClient.make({ ...options, connectTimeout: "1 second" })))
      expect(error._tag).not.toBe("InvalidOptionError")
    }))
})

describe("a broker without MQTT 5", () => {
  for (
    const [name, connack] of [["0x84", { reasonCode: 0x84 }], ["the MQTT 3.1.1 return code 1", {
      returnCode: 1
    }]] as const
  ) {
    it.live(`refusing MQTT 5 (${name}): run fails with an InvalidOptionError that says a group needs MQTT 5`, () =>
      Effect.gen(function*() {
        const broker = yield* FakeBroker.make({ protocolVersion: 5 })
        const running = yield* Effect.forkChild(
          Effect.exit(
            ConsumerGroup.run(
              { client: { url: broker.url }, group: "g", member: "m1", filter: "t/#" },
              () => Effect.void
            )
          )
        )
        const connection = yield* broker.accept
        yield* connection.expect("connect")
        if ("reasonCode" in connack) yield* connection.connack(connack)
        else yield* connection.sendRaw(Uint8Array.of(0x20, 0x02, 0x00, connack.returnCode))
        const exit = yield* Fiber.join(running)
        const error = Exit.isFailure(exit) ? Cause.squash(exit.cause) : undefined
        expect(error).toBeInstanceOf(MqttError.InvalidOptionError)
        expect((error as MqttError.InvalidOptionError).option).toBe("client.url")
        expect((error as MqttError.InvalidOptionError).message).toContain("a consumer group needs MQTT 5")
      }).pipe(Effect.scoped))
  }
})
