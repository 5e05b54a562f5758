import mqtt from "mqtt"

const client = mqtt.connect(process.env.MQTT_URL ?? "mqtt://localhost:1883", {
  clientId: "docs-thermometer",
  will: { topic: "status/docs-thermometer", payload: Buffer.from("offline"), qos: 1, retain: false }
})

client.on("connect", () => {
  client.subscribe("readings/#", { qos: 1 }, (error) => {
    if (error) return console.error(error.message)
    client.publish("readings/kitchen", "21.5", { qos: 1 })
    client.publish("readings/hall", "19.0", { qos: 1 })
  })
})

let received = 0
client.on("message", (topic, payload) => {
  console.log(`${topic}: ${payload.toString()}`)
  if (++received === 2) client.end()
})

client.on("error", (error) => console.error(error.message))
