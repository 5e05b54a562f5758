/**
 * The `effect-mqtt` command: `pub` and `sub`, with help, version and shell completions from Effect's CLI module.
 *
 * @since 0.1.0
 */
import * as CliConfig from "effect/cli/CliConfig"
import * as Command from "effect/cli/Command"
import * as Flag from "effect/cli/Flag"
import * as GlobalFlag from "effect/cli/GlobalFlag"
import type * as Layer from "effect/Layer"
import { programName } from "./errors.ts"
import { pub } from "./pub.ts"
import { sub } from "./sub.ts"

/**
 * The root command.
 *
 * @since 0.1.0
 * @category commands
 */
export const app = Command.make(programName).pipe(
  Command.withDescription(
    "Publish and subscribe to an MQTT broker (MQTT 3.1, 3.1.1 and 5.0) from the command line. The connection comes " +
      "from the flags, else from $MQTT_URL, $MQTT_CLIENT_ID, $MQTT_USERNAME, $MQTT_PASSWORD, " +
      "$MQTT_PROTOCOL_VERSION, $MQTT_KEEPALIVE and the $MQTT_*_FILE TLS variables. Exit codes: 0 done, 1 " +
      "connection failed, lost or refused, 2 usage error, 3 sub -C -W timed out."
  ),
  Command.withSubcommands([pub, sub]),
  Command.withExamples([
    { command: `${programName} sub -t 'sensors/#' -v`, description: "watch a topic tree" },
    { command: `${programName} pub -t sensors/1 -m 21.5 -q 1`, description: "publish a message" },
    { command: `${programName} pub --help`, description: "the flags of pub" },
    {
      command: `${programName} --completions bash > /etc/bash_completion.d/${programName}`,
      description: "shell completions (bash, zsh, fish)"
    }
  ])
)

/**
 * The built-in global flags: `--help` and `--version` without their short forms, which `mosquitto_pub` and
 * `mosquitto_sub` use for `-h host` and `-v` (verbose); `--completions <shell>` and `--log-level`. The
 * interactive `--wizard` is left out.
 *
 * @since 0.1.0
 * @category layers
 */
export const cliConfigLayer: Layer.Layer<never> = CliConfig.layer({
  builtIns: [
    GlobalFlag.Action({
      flag: Flag.Boolean("help").pipe(Flag.withDescription("Show help information"), Flag.withDefault(false)),
      run: GlobalFlag.Help.run
    }),
    GlobalFlag.Action({
      flag: Flag.Boolean("version").pipe(Flag.withDescription("Show version information"), Flag.withDefault(false)),
      run: GlobalFlag.Version.run
    }),
    GlobalFlag.Completions,
    GlobalFlag.LogLevel
  ]
})
