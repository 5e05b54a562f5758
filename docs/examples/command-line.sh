#!/bin/sh
# The broker is MQTT_URL (default mqtt://localhost:1883), as for every effect-mqtt command.
set -eu
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

# a retained status: the broker keeps it for whoever subscribes later
effect-mqtt pub -t docs/cli/status -m online -q 1 -r

# one message (-C 1), its topic and payload on a line (-v)
effect-mqtt sub -t 'docs/cli/#' -C 1 -v

# the same as a JSON object
effect-mqtt sub -t docs/cli/status -C 1 --format json

# a subscriber in the background: 3 messages, or exit code 3 after 10 seconds; -d tells when it is subscribed
effect-mqtt sub -t docs/cli/readings -q 1 -C 3 -W 10 -d > "$dir/readings" 2> "$dir/events" &
subscriber=$!
until grep -qs "subscribed" "$dir/events"; do
  kill -0 "$subscriber" 2> /dev/null || { cat "$dir/events" >&2; exit 1; }
  sleep 0.1
done

# one message per line of standard input
printf '21.5\n21.7\n22.0\n' | effect-mqtt pub -t docs/cli/readings -q 1 -l
wait "$subscriber"
echo "the subscriber received: $(paste -s -d " " "$dir/readings")"

# an empty retained message deletes the status
effect-mqtt pub -t docs/cli/status -n -r
