/**
 * Runs every example in `examples/` as its own Node.js process, as a user would, and checks what it prints:
 * against the embedded aedes broker (no `MQTT_URL`), against a private Mosquitto (`MQTT_URL` set), and against
 * the in-memory test broker inside the example's process (`MQTT_URL=memory:`).
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import * as Path from "node:path"
import { type MosquittoHandle, startMosquitto } from "./support/Mosquitto.ts"
import { SOURCE_CONDITION } from "./support/peers.ts"

const root = Path.resolve(import.meta.dirname, "..")
const EXAMPLE_TIMEOUT_MS = 60_000

interface Run {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
  readonly lines: ReadonlyArray<string>
}

const runExample = (file: string, mqttUrl: string | undefined): Promise<Run> =>
  new Promise((resolve, reject) => {
    const env = { ...process.env }
    delete env.MQTT_URL
    if (mqttUrl !== undefined) env.MQTT_URL = mqttUrl
    const child = spawn(process.execPath, [SOURCE_CONDITION, Path.join("examples", file)], {
      cwd: root,
      env,
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk))
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk))
    // An example that does not exit by itself is a failure: kill it so the test reports its output.
    const guard = setTimeout(() => child.kill("SIGKILL"), EXAMPLE_TIMEOUT_MS)
    child.once("error", (error) => {
      clearTimeout(guard)
      reject(error)
    })
    child.once("close", (code) => {
      clearTimeout(guard)
      resolve({ code, stdout, stderr, lines: stdout.split("\n").filter((line) => line !== "") })
    })
  })

/** Runs the example and checks that it exited by itself with code 0 and wrote nothing to stderr. */
const runOk = async (file: string, mqttUrl: string | undefined): Promise<Run> => {
  const run = await runExample(file, mqttUrl)
  const report = `exit code ${run.code}\nstdout:\n${run.stdout}\nstderr:\n${run.stderr}`
  assert.strictEqual(run.code, 0, report)
  assert.strictEqual(run.stderr, "", report)
  return run
}

const linesStartingWith = (run: Run, prefix: string) => run.lines.filter((line) => line.startsWith(prefix))

const brokers: ReadonlyArray<{ readonly name: string; readonly url: () => string | undefined }> = [
  { name: "embedded aedes broker", url: () => undefined },
  { name: "Mosquitto via MQTT_URL", url: () => mosquitto.url },
  { name: "in-memory test broker (MQTT_URL=memory:)", url: () => "memory:" }
]

let mosquitto: MosquittoHandle

beforeAll(async () => {
  mosquitto = await startMosquitto()
})

afterAll(async () => {
  await mosquitto?.dispose()
})

for (const broker of brokers) {
  describe(`examples against the ${broker.name}`, () => {
    it("01-subscribe prints the payload of every reading published to temperature/#", async () => {
      const run = await runOk("01-subscribe.ts", broker.url())
      assert.deepStrictEqual(run.lines, [
        "temperature/inside: 21.5",
        "temperature/outside: 8.0",
        "temperature/garage/floor: 12.25"
      ])
    }, EXAMPLE_TIMEOUT_MS)

    it("02-filtering runs every matching handler: temperature/outside is handled twice", async () => {
      const run = await runOk("02-filtering.ts", broker.url())
      assert.deepStrictEqual(run.lines, [
        "[humidity/inside] humidity/inside: 45",
        "[+/outside] humidity/outside: 80",
        "[temperature/#] temperature/inside: 21.5",
        "[+/outside] temperature/outside: 8.0",
        "[temperature/#] temperature/outside: 8.0"
      ])
    }, EXAMPLE_TIMEOUT_MS)

    it("03-queue: priority puts humidity first, sliding keeps the newest 3 of 8, bounded drops nothing", async () => {
      const run = await runOk("03-queue.ts", broker.url())
      assert.deepStrictEqual(run.lines, [
        "priority queue, humidity first:",
        "  humidity/inside: 45",
        "  humidity/outside: 80",
        "  temperature/inside: 21.5",
        "  temperature/outside: 8.0",
        "  temperature/garage: 12.0",
        "sliding queue of 3, after 8 readings:",
        "  temperature/inside: reading 6",
        "  temperature/inside: reading 7",
        "  temperature/inside: reading 8",
        "  dropped: 5",
        "bounded queue of 2, after 6 readings:",
        "  temperature/outside: reading 1",
        "  temperature/outside: reading 2",
        "  temperature/outside: reading 3",
        "  temperature/outside: reading 4",
        "  temperature/outside: reading 5",
        "  temperature/outside: reading 6",
        "  dropped: 0"
      ])
    }, EXAMPLE_TIMEOUT_MS)

    it("04-concurrent starts all three slow handlers before any finishes, and leaves none running", async () => {
      const run = await runOk("04-concurrent.ts", broker.url())
      const starts = linesStartingWith(run, "start ")
      assert.sameMembers(starts, [
        "start temperature/inside: 21.5",
        "start temperature/outside: 8.0",
        "start humidity/inside: 45"
      ])
      assert.sameMembers(linesStartingWith(run, "done  "), [
        "done  temperature/inside",
        "done  temperature/outside",
        "done  humidity/inside"
      ])
      // the overlap: every handler had started before the first one finished
      assert.deepStrictEqual(run.lines.slice(0, 3), starts)
      assert.strictEqual(run.lines.at(-1), "3 handlers ran at the same time; 0 still running")
    }, EXAMPLE_TIMEOUT_MS)

    it(
      "05-per-topic handles each topic serially and in order, topics concurrently, and distributes by kind to a FIFO and a LIFO queue",
      async () => {
        const run = await runOk("05-per-topic.ts", broker.url())
        const distributorAt = run.lines.indexOf("distributor:")
        assert.strictEqual(run.lines[0], "runForEachByKey:")
        assert.isAbove(distributorAt, 0, run.stdout)
        const grouped = run.lines.slice(1, distributorAt)
        const distributed = run.lines.slice(distributorAt + 1)

        for (const topic of ["temperature/inside", "humidity/inside"]) {
          // serial within a topic: each reading is done before the next one starts, in publication order
          assert.deepStrictEqual(linesStartingWith({ ...run, lines: grouped }, `${topic}: `), [
            `${topic}: start reading 1`,
            `${topic}: done  reading 1`,
            `${topic}: start reading 2`,
            `${topic}: done  reading 2`,
            `${topic}: start reading 3`,
            `${topic}: done  reading 3`
          ])
        }
        // concurrent across topics: the second topic started before the first topic's first reading was done
        assert.deepStrictEqual(grouped.slice(0, 2).map((line) => line.split(": ")[1]), [
          "start reading 1",
          "start reading 1"
        ])
        assert.strictEqual(grouped.at(-1), "2 topics were handled at the same time")

        assert.deepStrictEqual(linesStartingWith({ ...run, lines: distributed }, "temperature worker: "), [
          "temperature worker: temperature/inside reading 1",
          "temperature worker: temperature/inside reading 2",
          "temperature worker: temperature/inside reading 3"
        ])
        // the humidity readings went through a LIFO queue: newest first
        assert.deepStrictEqual(linesStartingWith({ ...run, lines: distributed }, "humidity worker: "), [
          "humidity worker: humidity/inside reading 3",
          "humidity worker: humidity/inside reading 2",
          "humidity worker: humidity/inside reading 1"
        ])
        assert.strictEqual(distributed.length, 6, run.stdout)
      },
      EXAMPLE_TIMEOUT_MS
    )

    it("06-background: the main fiber works while the forked listener receives every reading", async () => {
      const run = await runOk("06-background.ts", broker.url())
      assert.deepStrictEqual(linesStartingWith(run, "main: measuring"), [
        "main: measuring, step 1",
        "main: measuring, step 2",
        "main: measuring, step 3"
      ])
      assert.deepStrictEqual(linesStartingWith(run, "listener: "), [
        "listener: temperature/inside reading 1",
        "listener: temperature/inside reading 2",
        "listener: temperature/inside reading 3"
      ])
      // The readings come from the main fiber, published after the listener was forked: the example could not
      // have ended if forking had not let the main fiber go on.
      assert.strictEqual(run.lines.at(-1), "main: the listener received all the readings")
    }, EXAMPLE_TIMEOUT_MS)

    it("07-stop interrupts the listener, then the client disconnects cleanly when the layer is released", async () => {
      const run = await runOk("07-stop.ts", broker.url())
      assert.deepStrictEqual(run.lines, [
        "listener: temperature/inside reading 1",
        "listener: temperature/inside reading 2",
        "listener: temperature/inside reading 3",
        "listener: interrupted",
        "main: the listener has stopped; the client is still connected",
        "main: the client disconnected cleanly"
      ])
    }, EXAMPLE_TIMEOUT_MS)

    it("08-timeout stops the endless listener with a timeout and keeps what it received before", async () => {
      const run = await runOk("08-timeout.ts", broker.url())
      assert.deepStrictEqual(run.lines, [
        "received temperature/inside reading 1",
        "received temperature/inside reading 2",
        "received temperature/inside reading 3",
        "timed out after 2 seconds",
        "received 3 messages before the timeout"
      ])
    }, EXAMPLE_TIMEOUT_MS)

    it("09-subscription-stream routes the alerts to their own stream and the rest to messages", async () => {
      const run = await runOk("09-subscription-stream.ts", broker.url())
      assert.deepStrictEqual(run.lines, [
        "status: Connected, session present: false",
        "alert stream: alerts/smoke kitchen",
        "alert stream: alerts/door open",
        "messages: temperature/inside 21.5",
        "messages: temperature/outside 8.0",
        "alert subscription closed"
      ])
    }, EXAMPLE_TIMEOUT_MS)

    it(
      "10-typed-topics decodes typed readings, sends the bad one to the dead letter handler, refuses a bad id",
      async () => {
        const run = await runOk("10-typed-topics.ts", broker.url())
        assert.deepStrictEqual(run.lines, [
          `refused: Topic pattern "sensors/{deviceId}/temperature": the parameter "deviceId" must not contain "/"`,
          "kitchen: 21.5 °C at 2024-01-01T08:00:00.000Z",
          `dead letter: sensors/hall/temperature "not json"`,
          "cellar: 12 °C at 2024-01-01T08:01:00.000Z",
          "api [http > errors]: upstream timed out"
        ])
      },
      EXAMPLE_TIMEOUT_MS
    )

    it(
      "12-durable-session: the orders stored by the first client arrive once, the unfinished ones sent by the next",
      async () => {
        const run = await runOk("12-durable-session.ts", broker.url())
        assert.deepStrictEqual(run.lines, [
          "stored: order 1",
          "stored: order 2",
          "stored: order 3",
          "the first client stopped; what it did not finish is in the store",
          "received: orders/1 order 1",
          "received: orders/2 order 2",
          "received: orders/3 order 3"
        ])
      },
      EXAMPLE_TIMEOUT_MS
    )

    it(
      "13-consumer-group: every job handled, the stopped member's session adopted (MQTT 5: without MQTT_URL, on the in-memory test broker)",
      async () => {
        const run = await runOk("13-consumer-group.ts", broker.url())
        assert.deepStrictEqual(run.lines, [
          "3 members share jobs/#",
          "worker-2 stopped while it held unacknowledged jobs",
          "30 of 30 jobs handled",
          "worker-2's session was adopted by another member"
        ])
      },
      EXAMPLE_TIMEOUT_MS
    )
  })
}

describe("the failover example (two brokers of its own, whatever MQTT_URL says)", () => {
  it(
    "14-failover: the client moves from node 1 to node 2 when node 1 stops, and its subscription comes along",
    async () => {
      const run = await runOk("14-failover.ts", undefined)
      assert.deepStrictEqual(run.lines, [
        "connected to node 1",
        "node 1 stopped",
        "moved from node 1 to node 2",
        "received on node 2: alerts/smoke kitchen"
      ])
    },
    EXAMPLE_TIMEOUT_MS
  )
})

describe("the example of the test broker (its own broker, whatever MQTT_URL says)", () => {
  it(
    "11-test-broker: the door alert comes at 5 minutes of test clock, 12 hours pass connected, the will fires",
    async () => {
      const run = await runOk("11-test-broker.ts", undefined)
      // the client's own log line for the dropped connection (logLevel "Warn" by default); its retry delay is
      // drawn at random
      const warning = / WARN \(#\d+\): The connection to the broker was lost: .+; next attempt in .+ \(attempt 1\)/
      assert.deepStrictEqual(run.lines.map((line) => warning.test(line) ? "<warning: connection lost>" : line), [
        "after 4 minutes: 0 alerts",
        `after 6 minutes: alerts/front "open for 5 minutes"`,
        "after 12 hours: Connected, 0 reconnects",
        "<warning: connection lost>",
        `network lost: the broker published the will "offline"`,
        "reconnected: Connected, 1 reconnect"
      ])
    },
    EXAMPLE_TIMEOUT_MS
  )
})
