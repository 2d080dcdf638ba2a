//! `transform`: renames, drops and adds fields of JSON object values.
//!
//! Config keys (at least one is required; each is a comma-separated list):
//! - `rename`: `from=to` pairs of dotted paths, e.g. `user.mail=user.email`.
//!   A missing `from` is skipped.
//! - `drop`: dotted paths to remove, e.g. `debug,user.password`. A missing
//!   path is skipped.
//! - `add`: `path=value` pairs, e.g. `meta.source=kwasm,meta.version=2`. The
//!   value is parsed as JSON when it parses (`2`, `true`, `null`, `"2"`) and
//!   taken as a string otherwise; an existing value is overwritten and
//!   missing parent objects are created. Because the list is split on commas,
//!   a value cannot contain a comma.
//!
//! The steps run in the order rename, drop, add, so a field can be renamed
//! and then replaced by an added default, and an added field is never dropped.
//!
//! A value that is not a JSON object is dead-lettered (a permanent error), as
//! is a document where a rename or add would go through a non-object (say
//! `add=a.b=1` on `{"a": 5}`). A tombstone (null value) is forwarded as it
//! is: it carries no document, and it must still reach compacted topics.

use kwasm_guest::json::Path;
use kwasm_guest::{Config, Error, Message, Output, handler};
use serde_json::Value;

/// The parsed configuration, in the order the steps run.
#[derive(Debug)]
pub struct Settings {
    renames: Vec<(Path, Path)>,
    drops: Vec<Path>,
    adds: Vec<(Path, Value)>,
}

const KNOWN_KEYS: &[&str] = &["rename", "drop", "add"];

/// Validates every path once, so a typo fails the deploy instead of every
/// message.
pub fn setup(config: &Config) -> Result<Settings, String> {
    config.deny_unknown(KNOWN_KEYS)?;
    if KNOWN_KEYS.iter().all(|k| config.get(k).is_none()) {
        return Err("nothing to do: set at least one of `rename`, `drop`, `add`".to_owned());
    }
    let renames = pairs(config, "rename")?
        .into_iter()
        .map(|(from, to)| Ok((path("rename", from)?, path("rename", to)?)))
        .collect::<Result<_, String>>()?;
    let drops = config
        .list("drop")
        .into_iter()
        .map(|p| path("drop", p))
        .collect::<Result<_, String>>()?;
    let adds = pairs(config, "add")?
        .into_iter()
        .map(|(p, raw)| Ok((path("add", p)?, parse_value(raw))))
        .collect::<Result<_, String>>()?;
    Ok(Settings {
        renames,
        drops,
        adds,
    })
}

/// Applies rename, drop and add to the value; everything else is forwarded.
#[handler(init = setup)]
pub fn handle(msg: &Message, settings: &Settings) -> Result<Output, Error> {
    if msg.value().is_none() {
        return Ok(Output::forward(msg));
    }
    let mut doc: Value = msg.json()?;
    if !doc.is_object() {
        return Err(Error::permanent(format!(
            "expected a JSON object, got {}",
            kind(&doc)
        )));
    }
    for (from, to) in &settings.renames {
        if let Some(value) = from.remove(&mut doc) {
            to.set(&mut doc, value).map_err(|_| {
                Error::permanent(format!("cannot rename `{from}` to `{to}`: {NOT_AN_OBJECT}"))
            })?;
        }
    }
    for path in &settings.drops {
        path.remove(&mut doc);
    }
    for (path, value) in &settings.adds {
        path.set(&mut doc, value.clone())
            .map_err(|_| Error::permanent(format!("cannot add `{path}`: {NOT_AN_OBJECT}")))?;
    }
    Output::forward(msg).with_json(&doc)
}

const NOT_AN_OBJECT: &str = "a parent of the target path is not an object";

/// `key`'s list of `left=right` items, split at the first `=` (so an added
/// JSON value may itself contain `=`).
fn pairs<'c>(config: &'c Config, key: &str) -> Result<Vec<(&'c str, &'c str)>, String> {
    config
        .list(key)
        .into_iter()
        .map(|item| match item.split_once('=') {
            Some((l, r)) if !l.trim().is_empty() && !r.trim().is_empty() => {
                Ok((l.trim(), r.trim()))
            }
            _ => Err(format!(
                "config key `{key}`: expected `left=right`, got {item:?}"
            )),
        })
        .collect()
}

fn path(key: &str, raw: &str) -> Result<Path, String> {
    Path::parse(raw).map_err(|e| format!("config key `{key}`: {e}"))
}

/// JSON when it parses (numbers, booleans, null, quoted strings), otherwise
/// the text itself: operators should not need to quote plain strings.
fn parse_value(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        setup(&pairs.iter().copied().collect()).expect("valid config")
    }

    fn setup_error(pairs: &[(&str, &str)]) -> String {
        setup(&pairs.iter().copied().collect()).expect_err("config must be rejected")
    }

    fn json_msg(value: Value) -> Message {
        Message::builder()
            .key("k1")
            .value(value.to_string())
            .header("trace", "abc")
            .timestamp_ms(7)
            .build()
    }

    fn transform(s: &Settings, value: Value) -> Value {
        let out = handle(&json_msg(value), s).expect("handled");
        assert_eq!(out.key(), Some(&b"k1"[..]));
        assert_eq!(out.header("trace"), Some(&b"abc"[..]));
        assert_eq!(out.timestamp_ms(), Some(7));
        assert_eq!(out.topic(), None);
        out.value_json().expect("JSON output")
    }

    #[test]
    fn renames_drops_and_adds_in_that_order() {
        let s = settings(&[
            ("rename", "user.mail=user.email, id=order_id"),
            ("drop", "debug,user.password"),
            ("add", "meta.source=kwasm,meta.version=2,id=none"),
        ]);
        let out = transform(
            &s,
            json!({"id": 9, "debug": true, "user": {"mail": "a@b.c", "password": "p"}}),
        );
        assert_eq!(
            out,
            json!({
                "order_id": 9,
                "id": "none",
                "user": {"email": "a@b.c"},
                "meta": {"source": "kwasm", "version": 2}
            })
        );
    }

    #[test]
    fn add_values_parse_as_json_when_they_can() {
        let s = settings(&[("add", r#"n=2.5,b=true,z=null,q="7",s=plain text,eq=a=b"#)]);
        assert_eq!(
            transform(&s, json!({})),
            json!({"n": 2.5, "b": true, "z": null, "q": "7", "s": "plain text", "eq": "a=b"})
        );
    }

    #[test]
    fn add_overwrites_and_rename_drop_skip_missing_paths() {
        let s = settings(&[
            ("rename", "nope=other"),
            ("drop", "absent.x"),
            ("add", "a=1"),
        ]);
        assert_eq!(
            transform(&s, json!({"a": 0, "b": [1]})),
            json!({"a": 1, "b": [1]})
        );
    }

    #[test]
    fn drop_removes_array_items_by_index() {
        let s = settings(&[("drop", "items.0")]);
        assert_eq!(
            transform(&s, json!({"items": ["x", "y"]})),
            json!({"items": ["y"]})
        );
    }

    #[test]
    fn non_object_values_are_permanent_errors() {
        let s = settings(&[("drop", "a")]);
        let err = handle(&json_msg(json!([1, 2])), &s).expect_err("array root");
        assert_eq!(
            err,
            Error::permanent("expected a JSON object, got an array")
        );
        let err = handle(&Message::builder().value("{oops").build(), &s).expect_err("not JSON");
        assert!(!err.is_retryable());
        assert!(err.message().starts_with("invalid JSON: "), "{err}");
    }

    #[test]
    fn writing_through_a_scalar_is_a_permanent_error() {
        let s = settings(&[("add", "a.b=1")]);
        let err = handle(&json_msg(json!({"a": 5})), &s).expect_err("a is a scalar");
        assert_eq!(
            err,
            Error::permanent("cannot add `a.b`: a parent of the target path is not an object")
        );
        let s = settings(&[("rename", "x=a.b")]);
        let err = handle(&json_msg(json!({"a": 5, "x": 1})), &s).expect_err("a is a scalar");
        assert_eq!(
            err,
            Error::permanent(
                "cannot rename `x` to `a.b`: a parent of the target path is not an object"
            )
        );
    }

    #[test]
    fn tombstone_is_forwarded_unchanged() {
        let s = settings(&[("drop", "a")]);
        let out = handle(&Message::builder().key("k").build(), &s).expect("handled");
        assert_eq!(out.key(), Some(&b"k"[..]));
        assert_eq!(out.value(), None);
    }

    #[test]
    fn init_rejects_bad_config() {
        assert_eq!(
            setup_error(&[]),
            "nothing to do: set at least one of `rename`, `drop`, `add`"
        );
        assert_eq!(
            setup_error(&[("drop", "a"), ("rnme", "a=b")]),
            "unknown config key `rnme` (known keys: rename, drop, add)"
        );
        assert_eq!(
            setup_error(&[("rename", "a")]),
            "config key `rename`: expected `left=right`, got \"a\""
        );
        assert_eq!(
            setup_error(&[("add", "a=")]),
            "config key `add`: expected `left=right`, got \"a=\""
        );
        assert_eq!(
            setup_error(&[("drop", "a..b")]),
            "config key `drop`: invalid JSON field path \"a..b\": use dotted names like `user.email`"
        );
        assert_eq!(
            setup_error(&[("rename", "a=.b")]),
            "config key `rename`: invalid JSON field path \".b\": use dotted names like `user.email`"
        );
    }
}
