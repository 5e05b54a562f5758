/**
 * effect-mqtt: an Effect-native MQTT 3.1, 3.1.1 and 5.0 client for Node.js (and for browsers, over WebSocket:
 * `effect-mqtt/browser`).
 *
 * @since 0.1.0
 */

/**
 * The client service, its layers and options.
 *
 * @since 0.1.0
 */
export * as MqttClient from "./MqttClient.ts"

/**
 * The typed errors.
 *
 * @since 0.1.0
 */
export * as MqttError from "./MqttError.ts"

/**
 * Received messages and publish properties.
 *
 * @since 0.1.0
 */
export * as MqttMessage from "./MqttMessage.ts"

/**
 * The incoming queue strategies.
 *
 * @since 0.1.0
 */
export * as IncomingQueue from "./IncomingQueue.ts"

/**
 * Topic name and filter validation and matching.
 *
 * @since 0.1.0
 */
export * as Topic from "./Topic.ts"

/**
 * Schema-typed topics: a pattern with named segments, a payload Schema and a codec.
 *
 * @since 0.2.0
 */
export * as MqttTopic from "./MqttTopic.ts"

/**
 * An in-memory MQTT broker for tests, connected to real clients through an in-memory socket.
 *
 * @since 0.2.0
 */
export * as MqttTestBroker from "./MqttTestBroker.ts"

/**
 * Stores for durable sessions: memory, file system, Redis, any `KeyValueStore`.
 *
 * @since 0.2.0
 */
export * as MqttSessionStore from "./MqttSessionStore.ts"

/**
 * Consumer groups: members in several processes sharing `$share/<group>/<filter>`, acknowledging each message
 * once handled, with Receive Maximum as prefetch, and adopting the sessions of members that leave.
 *
 * @since 0.2.0
 */
export * as ConsumerGroup from "./ConsumerGroup.ts"
