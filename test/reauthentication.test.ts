/**
 * The answer to a re-authentication challenge is computed beside the reader; an AUTH 0x00 read
 * meanwhile ends that re-authentication. The answer, once computed, belongs to no exchange any more: it must not be
 * written, least of all into the next re-authentication, where the broker would take it as the answer to its new
 * challenge.
 */
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Fiber, Schedule } from "effect"
import { MqttClient } from "effect-mqtt"
import * as FakeBroker from "./support/FakeBroker.ts"

describe("re-authentication: an answer computed after its exchange ended", () => {
  it.live("is not written into the next re-authentication", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5, autoPingresp: true })
      const release = yield* Deferred.make<void>()
      const challenged = yield* Deferred.make<void>()
      const fiber = yield* Effect.forkChild(MqttClient.make({
        url: broker.url,
        protocolVersion: 5,
        reconnect: false,
        auth: {
          method: "TEST-SCRAM",
          onChallenge: ({ data }) => {
            const round = Buffer.from(data ?? []).toString()
            return round === "one"
              ? Deferred.succeed(challenged, undefined).pipe(
                Effect.andThen(Deferred.await(release)),
                Effect.as(Buffer.from("stale:one"))
              )
              : Effect.succeed(Buffer.from(`answer:${round}`))
          }
        }
      }))
      const { connection } = yield* broker.acceptAndConnack({ properties: { authenticationMethod: "TEST-SCRAM" } })
      const client = yield* Fiber.join(fiber)
      const challenge = (round: string) =>
        connection.send({
          cmd: "auth",
          reasonCode: 0x18,
          properties: { authenticationMethod: "TEST-SCRAM", authenticationData: Buffer.from(round) }
        })
      const accept = connection.send({
        cmd: "auth",
        reasonCode: 0x00,
        properties: { authenticationMethod: "TEST-SCRAM" }
      })

      const first = yield* Effect.forkChild(client.reauthenticate())
      expect((yield* connection.expect("auth")).reasonCode).toBe(0x19)
      yield* challenge("one")
      yield* Deferred.await(challenged)
      // the broker ends the exchange while the answer is being computed
      yield* accept
      yield* Fiber.join(first)

      const second = yield* Effect.forkChild(client.reauthenticate())
      expect((yield* connection.expect("auth")).reasonCode).toBe(0x19)
      yield* challenge("two")
      yield* Deferred.succeed(release, undefined)
      // the answer the broker gets to its challenge "two" is the one computed for it
      const reply = yield* connection.expect("auth")
      expect([reply.reasonCode, Buffer.from(reply.properties!.authenticationData!).toString()]).toEqual([
        0x18,
        "answer:two"
      ])
      yield* accept
      yield* Fiber.join(second)
    }))
})

describe("re-authentication: a call that joins one under way", () => {
  const auth: MqttClient.Authentication = {
    method: "TEST-SCRAM",
    onChallenge: () => Effect.succeed(undefined)
  }

  it.live("fails with the connection's error when the broker refuses (DISCONNECT 0x87), as the first call does", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5, autoPingresp: true })
      const fiber = yield* Effect.forkChild(
        MqttClient.make({ url: broker.url, protocolVersion: 5, reconnect: false, auth })
      )
      const { connection } = yield* broker.acceptAndConnack({ properties: { authenticationMethod: "TEST-SCRAM" } })
      const client = yield* Fiber.join(fiber)
      const first = yield* Effect.forkChild(Effect.exit(client.reauthenticate(Buffer.from("a"))))
      expect((yield* connection.expect("auth")).reasonCode).toBe(0x19)
      const joined = yield* Effect.forkChild(Effect.exit(client.reauthenticate()))
      yield* Effect.yieldNow
      yield* connection.send({ cmd: "disconnect", reasonCode: 0x87 })
      expect((yield* Fiber.join(first))._tag).toBe("Failure")
      // a generous wait: it never ends otherwise
      const exit = yield* Fiber.join(joined).pipe(Effect.timeout("10 seconds"), Effect.exit)
      expect(exit._tag === "Success" ? exit.value._tag : `hung: ${String(exit)}`).toBe("Failure")
    }))

  it.live("with data of its own: that data is presented after the one under way, and it is what a reconnection's CONNECT carries", () =>
    Effect.gen(function*() {
      const broker = yield* FakeBroker.make({ protocolVersion: 5, autoPingresp: true })
      const fiber = yield* Effect.forkChild(
        MqttClient.make({ url: broker.url, protocolVersion: 5, reconnect: Schedule.spaced("10 millis"), auth })
      )
      const { connection } = yield* broker.acceptAndConnack({ properties: { authenticationMethod: "TEST-SCRAM" } })
      const client = yield* Fiber.join(fiber)
      const accept = connection.send({
        cmd: "auth",
        reasonCode: 0x00,
        properties: { authenticationMethod: "TEST-SCRAM" }
      })
      const first = yield* Effect.forkChild(client.reauthenticate(Buffer.from("token-a")))
      const a = yield* connection.expect("auth")
      expect(Buffer.from(a.properties!.authenticationData!).toString()).toBe("token-a")
      const joined = yield* Effect.forkChild(client.reauthenticate(Buffer.from("token-b")))
      yield* Effect.yieldNow
      yield* accept
      yield* Fiber.join(first)
      const b = yield* connection.expect("auth")
      expect([b.reasonCode, Buffer.from(b.properties!.authenticationData!).toString()]).toEqual([0x19, "token-b"])
      yield* accept
      yield* Fiber.join(joined)
      yield* connection.destroy
      const second = yield* broker.acceptAndConnack({ properties: { authenticationMethod: "TEST-SCRAM" } })
      expect(Buffer.from(second.connect.properties!.authenticationData!).toString()).toBe("token-b")
    }))
})
