/**
 * The client service's tag, apart from `MqttClient.ts` so that modules used on every platform (`MqttTopic`,
 * the browser's entry) can name the service without importing Node's transports.
 */
import * as Context from "effect/Context"
import type { Client } from "../MqttClient.ts"

export class MqttClient extends Context.Service<MqttClient, Client>()("effect-mqtt/MqttClient") {}
