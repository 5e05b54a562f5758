/**
 * The keepalive of one connection [MQTT-3.1.2-20]: a PINGREQ after `keepAlive` seconds without sending, or
 * without receiving (a client that keeps publishing into a dead connection would otherwise never find out);
 * no PINGRESP within the ping timeout ends the connection.
 *
 * While the reader is held back by a full queue it cannot see a PINGRESP, so a late one is not taken for a dead
 * broker; PINGREQ keeps going out every keepalive meanwhile, so that the broker does not take the client for
 * dead either (it allows 1.5 times the keepalive between packets [MQTT-3.1.2-22]). Where the reader reads ahead
 * meanwhile (Node's sockets: `ReadAhead` in connection.ts) and has read everything the broker sent, a PINGRESP
 * would have been seen: nothing at all from the broker within the ping timeout (no PINGRESP, no message) then
 * ends the connection as it does unstalled (a broker gone without closing: a half-open connection).
 */
import * as Clock from "effect/Clock"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as MqttError from "../MqttError.ts"
import * as Codec from "./codec.ts"
import type { Connection } from "./connection.ts"
import type { Driver } from "./driver.ts"

export const keepalive = (
  c: Connection,
  driver: Driver,
  keepAlive: number,
  pingTimeout: Duration.Duration | undefined
): Effect.Effect<never, MqttError.MqttError> =>
  Effect.gen(function*() {
    const clock = yield* Clock.Clock
    const keepAliveMillis = keepAlive * 1000
    const timeoutMillis = pingTimeout === undefined ? Math.min(keepAliveMillis, 30_000) : Duration.toMillis(pingTimeout)
    let pong = Deferred.makeUnsafe<void>()
    driver.onPong = () => Deferred.doneUnsafe(pong, Effect.void)
    while (true) {
      const last = c.stalled ? c.lastSent : Math.min(c.lastSent, c.lastReceived)
      const wait = last + keepAliveMillis - clock.currentTimeMillisUnsafe()
      if (wait > 0) {
        yield* Effect.sleep(wait)
        continue
      }
      pong = Deferred.makeUnsafe<void>()
      const stalls = c.stalls
      const stalledAtStart = c.stalled
      const sentAt = clock.currentTimeMillisUnsafe()
      c.outbox.push(Codec.pingreq)
      const answered = yield* Effect.timeoutOption(Deferred.await(pong), timeoutMillis)
      if (answered._tag === "Some") continue
      const excused = stalledAtStart || c.stalled || c.stalls !== stalls
      // stalled: a broker that sent nothing the reader read (before the wait or ahead during it) is not there
      const silent = c.stalled && c.lastReceived < sentAt && c.heardSince(sentAt) === false
      if (excused && !silent) continue
      return yield* new MqttError.MqttTimeoutError({ operation: "ping", millis: timeoutMillis })
    }
  })
