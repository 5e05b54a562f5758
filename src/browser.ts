/**
 * effect-mqtt in browsers (`effect-mqtt/browser`): the same client, session and API as on Node.js, over
 * WebSocket only (`ws://`, `wss://`), with no Node.js module in its import graph. `MqttTestBroker` is not
 * here: it is for tests, which run on Node.js.
 *
 * @since 0.2.0
 */

/**
 * The client service and its layers, over WebSocket.
 *
 * @since 0.2.0
 */
export * as MqttClient from "./browser/MqttClient.ts"

/**
 * The typed errors.
 *
 * @since 0.2.0
 */
export * as MqttError from "./MqttError.ts"

/**
 * Received messages.
 *
 * @since 0.2.0
 */
export * as MqttMessage from "./MqttMessage.ts"

/**
 * Queue strategies for received messages.
 *
 * @since 0.2.0
 */
export * as IncomingQueue from "./IncomingQueue.ts"

/**
 * Topic names and filters: validation and matching.
 *
 * @since 0.2.0
 */
export * as Topic from "./Topic.ts"

/**
 * Typed topics: a pattern, a Schema, a codec.
 *
 * @since 0.2.0
 */
export * as MqttTopic from "./MqttTopic.ts"

/**
 * Stores for durable sessions (any `KeyValueStore`, such as Effect's `layerStorage` over `localStorage`).
 *
 * @since 0.2.0
 */
export * as MqttSessionStore from "./MqttSessionStore.ts"
