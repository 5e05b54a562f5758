/**
 * SUBSCRIBE and UNSUBSCRIBE within the limits of the broker's CONNACK, against the scripted fake broker: Wildcard
 * and Shared Subscription Available 0, Maximum Packet Size, on the first connection and on one that restores the
 * session's subscriptions. Nothing that breaks them is written, so no broker disconnects the client for it and no
 * reconnect sends it again. (Mosquitto's max_packet_size: test/mqtt5.test.ts, "refusals".)
 */
import { assert, describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Schedule, Stream } from "effect"
import { MqttClient, MqttError } from "effect-mqtt"
import * as FakeBroker from "./support/FakeBroker.ts"

const connect = (connack: FakeBroker.ConnackOptions, options: MqttClient.Options = {}) =>
  Effect.gen(function*() {
    const broker = yield* FakeBroker.make({ protocolVersion: 5, autoPingresp: true })
    const fiber = yield* Effect.forkChild(
      MqttClient.make({ url: broker.url, protocolVersion: 5, reconnect: false, ...options })
    )
    const { connection } = yield* broker.acceptAndConnack(connack)
    const client = yield* Fiber.join(fiber)
    return { broker, client, connection }
  })

/** The SubscribeError or UnsubscribeError an effect fails with, as [tag, filter, reason code]. */
const refusal = <A>(effect: Effect.Effect<A, MqttError.MqttError, any>) =>
  Effect.map(Effect.flip(effect), (error) => {
    assert(error instanceof MqttError.SubscribeError || error instanceof MqttError.UnsubscribeError, error.message)
    assert.match(error.message, /not sent/)
    return [error._tag, error.filter, error.reasonCode] as const
  })

/** Answers the next SUBSCRIBE, granting QoS 1 to each filter; returns its filters. */
const grant = (connection: FakeBroker.FakeConnection) =>
  Effect.gen(function*() {
    const subscribe = yield* connection.expect("subscribe")
    yield* connection.send({
      cmd: "suback",
      messageId: subscribe.messageId!,
      granted: subscribe.subscriptions.map(() => 1)
    })
    return subscribe.subscriptions.map((s) => s.topic)
  })

describe("SUBSCRIBE and UNSUBSCRIBE within the broker's limits", () => {
  it.live("Wildcard and Shared Subscription Available 0: a typed error before sending, the connection stays", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({
        properties: { wildcardSubscriptionAvailable: false, sharedSubscriptionAvailable: false }
      })
      expect(yield* refusal(client.subscribe("plant/#"))).toEqual(["SubscribeError", "plant/#", 0xa2])
      expect(yield* refusal(client.subscribe(["plant/a", "plant/+/status"]))).toEqual([
        "SubscribeError",
        "plant/+/status",
        0xa2
      ])
      expect(yield* refusal(client.subscribe("$share/workers/jobs"))).toEqual([
        "SubscribeError",
        "$share/workers/jobs",
        0x9e
      ])
      expect(yield* refusal(Effect.scoped(client.subscription("plant/+")))).toEqual(["SubscribeError", "plant/+", 0xa2])
      yield* connection.expectSilence(100)
      const fiber = yield* Effect.forkChild(client.subscribe("plant/a", { qos: 1 }))
      expect(yield* grant(connection)).toEqual(["plant/a"])
      expect((yield* Fiber.join(fiber)).map((g) => g.qos)).toEqual([1])
      expect((yield* client.status)._tag).toBe("Connected")
    }))

  it.live("Maximum Packet Size: a SUBSCRIBE, an UNSUBSCRIBE, a request's response subscription over it fail before sending", () =>
    Effect.gen(function*() {
      const { client, connection } = yield* connect({ properties: { maximumPacketSize: 64 } }, {
        responseTopicPrefix: `responses/${"r".repeat(80)}`
      })
      const long = `plant/${"x".repeat(80)}`
      expect(yield* refusal(client.subscribe(long))).toEqual(["SubscribeError", long, 0x95])
      expect(yield* refusal(client.unsubscribe(long))).toEqual(["UnsubscribeError", long, 0x95])
      const request = yield* Effect.flip(client.request("service", "ping", { timeout: "1 second" }))
      expect([request._tag, (request as MqttError.SubscribeError).reasonCode]).toEqual(["SubscribeError", 0x95])
      yield* connection.expectSilence(100)
      const fiber = yield* Effect.forkChild(client.subscribe("plant/a"))
      expect(yield* grant(connection)).toEqual(["plant/a"])
      yield* Fiber.join(fiber)
    }))

  it.live("a restore on a connection that takes no wildcards: that subscription's stream fails, the others are restored, nothing loops", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5, autoPingresp: true })
      const fiber = yield* Effect.forkChild(MqttClient.make({
        url: broker.url,
        protocolVersion: 5,
        reconnect: Schedule.spaced("10 millis")
      }))
      const first = yield* broker.acceptAndConnack()
      const client = yield* Fiber.join(fiber)
      const wildcard = yield* Effect.forkChild(Effect.scoped(Effect.gen(function*() {
        const stream = yield* client.subscription("plant/#")
        return yield* Stream.runCollect(stream)
      })))
      expect(yield* grant(first.connection)).toEqual(["plant/#"])
      const exact = yield* Effect.forkChild(client.subscribe("plant/a"))
      expect(yield* grant(first.connection)).toEqual(["plant/a"])
      yield* Fiber.join(exact)
      yield* first.connection.destroy
      // a node that lost the session and takes no wildcards
      const second = yield* broker.acceptAndConnack({ properties: { wildcardSubscriptionAvailable: false } })
      expect(yield* grant(second.connection)).toEqual(["plant/a"])
      const exit = yield* Fiber.await(wildcard)
      assert(Exit.isFailure(exit))
      const error = yield* Effect.flip(Fiber.join(wildcard))
      expect([error._tag, (error as MqttError.SubscribeError).filter, (error as MqttError.SubscribeError).reasonCode])
        .toEqual(["SubscribeError", "plant/#", 0xa2])
      yield* second.connection.expectSilence(100)
      expect((yield* client.status)._tag).toBe("Connected")
      // the next connection does not ask for it again
      yield* second.connection.destroy
      const third = yield* broker.acceptAndConnack()
      expect(yield* grant(third.connection)).toEqual(["plant/a"])
      yield* third.connection.expectSilence(100)
      expect(broker.connections.length).toBe(3)
    }))
})
