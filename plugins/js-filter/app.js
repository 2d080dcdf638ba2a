// `js-filter`: the `filter` plugin in JavaScript. Drops (or keeps only) JSON
// messages whose field equals a configured value.
//
// Same config keys, README table and outputs as plugins/filter (Rust): `field`
// (dotted path), `equals` (strings without quotes, other values as JSON),
// `mode` (`drop`, the default, or `keep`). A value that is not JSON is
// dead-lettered; a missing field or a tombstone does not match.

import { ConfigError, JsonPath, MISSING, Output, asText, plugin } from "./kwasm.js";

/** Validates the config once, so a typo fails the deploy, not every message. */
function setup(config) {
  config.denyUnknown(["field", "equals", "mode"]);
  const path = config.require("field");
  let field;
  try {
    field = new JsonPath(path);
  } catch (e) {
    throw new ConfigError(`config key \`field\`: ${e.message}`);
  }
  const equals = config.require("equals");
  const mode = config.get("mode") ?? "drop";
  if (mode !== "drop" && mode !== "keep") {
    throw new ConfigError(`config key \`mode\`: expected \`drop\` or \`keep\`, got "${mode}"`);
  }
  return { field, equals, keep: mode === "keep" };
}

function handle(msg, { field, equals, keep }) {
  let matched = false;
  if (msg.value !== null) {
    const found = field.get(msg.json());
    matched = found !== MISSING && asText(found) === equals;
  }
  return matched === keep ? Output.forward(msg) : null;
}

export const handler = plugin(handle, { init: setup });
