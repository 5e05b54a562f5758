/**
 * The User Name and Password a CONNECT carries to a node: fixed (the options, the user info of `url`), or asked
 * for by the `credentials` option just before each CONNECT (MQTT 3.1.1 §3.1.3.4–5, MQTT 5 §3.1.3.5–6).
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import type * as MqttClient from "../MqttClient.ts"
import * as MqttError from "../MqttError.ts"
import * as Codec from "./codec.ts"
import { describe } from "./describe.ts"
import type { Node } from "./failover.ts"
import { invalid, type Resolved } from "./options.ts"

export interface Given {
  readonly username: string | undefined
  readonly password: Redacted.Redacted<string> | undefined
}

/**
 * What the CONNECT to `node` carries. The `credentials` option is asked within `connectTimeout`; its failure is
 * the attempt's, its defect a `ConnectionLostError`, and what it returns is checked as the options are.
 */
export const credentialsFor = (o: Resolved, node: Node): Effect.Effect<Given, MqttError.MqttError> => {
  const ask = o.credentials
  if (ask === undefined) return Effect.succeed({ username: node.username, password: node.password })
  const millis = o.connectTimeout
  return Effect.suspend(() => {
    const asked: unknown = ask({ broker: node.broker })
    return Effect.isEffect(asked)
      ? asked as Effect.Effect<MqttClient.Credentials, MqttError.MqttError>
      : Effect.fail(invalid("credentials", "expected a function returning an Effect of { username, password }"))
  }).pipe(
    Effect.catchDefect((defect) =>
      Effect.fail(new MqttError.ConnectionLostError({ reason: `credentials died: ${describe(defect)}`, cause: defect }))
    ),
    // untyped code may fail with anything: the attempt fails with an MqttError still
    Effect.mapError((error: unknown) =>
      MqttError.isMqttError(error)
        ? error
        : new MqttError.ConnectionLostError({ reason: `credentials failed: ${describe(error)}`, cause: error })
    ),
    Effect.flatMap((given) => checked(o.protocolVersion, given)),
    Effect.timeoutOrElse({
      duration: millis,
      orElse: () =>
        Effect.fail(new MqttError.MqttTimeoutError({ operation: "connect", millis: Duration.toMillis(millis) }))
    })
  )
}

const checked = (
  protocolVersion: 3 | 4 | 5,
  given: MqttClient.Credentials
): Effect.Effect<Given, MqttError.InvalidOptionError> => {
  if (typeof given !== "object" || given === null) {
    return Effect.fail(invalid("credentials", "expected an Effect of { username, password }"))
  }
  const { username, password } = given
  if (username !== undefined && typeof username !== "string") {
    return Effect.fail(invalid("credentials", "the username given is not a string"))
  }
  if (password !== undefined && !(Redacted.isRedacted(password) && typeof Redacted.value(password) === "string")) {
    return Effect.fail(invalid("credentials", "the password given is not a Redacted string (Redacted.make(password))"))
  }
  const problem = Codec.credentialsProblem(protocolVersion, username, password)
  return problem === undefined ? Effect.succeed({ username, password }) : Effect.fail(invalid("credentials", problem))
}
