"""`python-filter`: the `filter` plugin in Python. Drops (or keeps only) JSON
messages whose field equals a configured value.

Same config keys, README table and outputs as `plugins/filter` (Rust):
`field` (dotted path), `equals` (strings without quotes, other values as
JSON), `mode` (`drop`, the default, or `keep`). A value that is not JSON is
dead-lettered; a missing field or a tombstone does not match.
"""

from kwasm import Config, JsonPath, Message, Output, as_text, plugin


def setup(config: Config):
    """Validates the config once, so a typo fails the deploy, not every message."""
    config.deny_unknown(["field", "equals", "mode"])
    path = config.require("field")
    try:
        field = JsonPath(path)
    except ValueError as e:
        raise ValueError(f"config key `field`: {e}") from None
    equals = config.require("equals")
    mode = config.get("mode", "drop")
    if mode not in ("drop", "keep"):
        raise ValueError(f'config key `mode`: expected `drop` or `keep`, got "{mode}"')
    return field, equals, mode == "keep"


def handle(msg: Message, settings):
    field, equals, keep = settings
    matched = False
    if msg.value is not None:
        found = field.get(msg.json(), JsonPath.MISSING)
        matched = found is not JsonPath.MISSING and as_text(found) == equals
    return Output.forward(msg) if matched == keep else None


Handler = plugin(handle, init=setup)
