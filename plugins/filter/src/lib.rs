//! `filter`: drops (or keeps only) JSON messages whose field equals a
//! configured value.
//!
//! Config keys:
//! - `field` (required): dotted path of the field to test, e.g. `order.status`.
//! - `equals` (required): the text to compare with. The field's value is
//!   compared as [`kwasm_guest::json::as_text`] renders it: strings without
//!   quotes, other values as JSON (`42`, `true`, `null`).
//! - `mode` (optional): `drop` (default) drops matching messages and forwards
//!   the rest; `keep` forwards only matching messages.
//!
//! A message whose value is not JSON is dead-lettered (a permanent error):
//! retrying cannot make it parse, and silently passing or dropping it would
//! hide a producer bug. A missing field does not match. A tombstone (null
//! value) has no fields, so it does not match either: dropping every tombstone
//! by error would break deletes on compacted topics.

use kwasm_guest::json::{Path, as_text};
use kwasm_guest::{Config, Error, Message, Output, handler};
use serde_json::Value;

/// What to do with a message whose field matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Drop matching messages, forward the rest.
    Drop,
    /// Forward matching messages, drop the rest.
    Keep,
}

/// The parsed configuration.
#[derive(Debug)]
pub struct Settings {
    field: Path,
    equals: String,
    mode: Mode,
}

const KNOWN_KEYS: &[&str] = &["field", "equals", "mode"];

/// Validates the configuration once, so a typo fails the deploy instead of
/// every message.
pub fn setup(config: &Config) -> Result<Settings, String> {
    config.deny_unknown(KNOWN_KEYS)?;
    let field =
        Path::parse(config.require("field")?).map_err(|e| format!("config key `field`: {e}"))?;
    let equals = config.require("equals")?.to_owned();
    let mode = match config.get("mode").unwrap_or("drop") {
        "drop" => Mode::Drop,
        "keep" => Mode::Keep,
        other => {
            return Err(format!(
                "config key `mode`: expected `drop` or `keep`, got {other:?}"
            ));
        }
    };
    Ok(Settings {
        field,
        equals,
        mode,
    })
}

/// Forwards the message unchanged or drops it, as the mode says.
#[handler(init = setup)]
pub fn handle(msg: &Message, settings: &Settings) -> Result<Option<Output>, Error> {
    let matched = matches(msg, settings)?;
    let forward = match settings.mode {
        Mode::Drop => !matched,
        Mode::Keep => matched,
    };
    Ok(forward.then(|| Output::forward(msg)))
}

/// Whether the configured field is present and equal to `equals`.
fn matches(msg: &Message, settings: &Settings) -> Result<bool, Error> {
    if msg.value().is_none() {
        return Ok(false);
    }
    let doc: Value = msg.json()?;
    Ok(settings
        .field
        .get(&doc)
        .is_some_and(|v| as_text(v) == settings.equals))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        setup(&pairs.iter().copied().collect()).expect("valid config")
    }

    fn setup_error(pairs: &[(&str, &str)]) -> String {
        setup(&pairs.iter().copied().collect()).expect_err("config must be rejected")
    }

    fn json_msg(value: &str) -> Message {
        Message::builder()
            .key("k1")
            .value(value.to_owned())
            .header("trace", "abc")
            .timestamp_ms(1_700_000_000_000)
            .build()
    }

    #[test]
    fn drop_mode_drops_matching_and_forwards_the_rest_unchanged() {
        let s = settings(&[("field", "status"), ("equals", "test")]);
        assert_eq!(handle(&json_msg(r#"{"status":"test"}"#), &s), Ok(None));

        let out = handle(&json_msg(r#"{"status":"live"}"#), &s)
            .expect("handled")
            .expect("forwarded");
        assert_eq!(out.key(), Some(&b"k1"[..]));
        assert_eq!(out.value(), Some(&br#"{"status":"live"}"#[..]));
        assert_eq!(out.header("trace"), Some(&b"abc"[..]));
        assert_eq!(out.timestamp_ms(), Some(1_700_000_000_000));
        assert_eq!(out.topic(), None);
    }

    #[test]
    fn keep_mode_forwards_only_matching() {
        let s = settings(&[
            ("field", "order.status"),
            ("equals", "paid"),
            ("mode", "keep"),
        ]);
        let paid = json_msg(r#"{"order":{"status":"paid"}}"#);
        let out = handle(&paid, &s).expect("handled").expect("kept");
        assert_eq!(out.value(), Some(&br#"{"order":{"status":"paid"}}"#[..]));
        assert_eq!(
            handle(&json_msg(r#"{"order":{"status":"open"}}"#), &s),
            Ok(None)
        );
    }

    #[test]
    fn non_string_values_compare_as_json_text() {
        let s = settings(&[("field", "items.0.qty"), ("equals", "3"), ("mode", "keep")]);
        assert!(
            handle(&json_msg(r#"{"items":[{"qty":3}]}"#), &s)
                .expect("handled")
                .is_some()
        );
        // The string "3" renders the same text as the number 3.
        assert!(
            handle(&json_msg(r#"{"items":[{"qty":"3"}]}"#), &s)
                .expect("handled")
                .is_some()
        );
        assert_eq!(handle(&json_msg(r#"{"items":[{"qty":4}]}"#), &s), Ok(None));

        let s = settings(&[("field", "flag"), ("equals", "null"), ("mode", "keep")]);
        assert!(
            handle(&json_msg(r#"{"flag":null}"#), &s)
                .expect("handled")
                .is_some()
        );
    }

    #[test]
    fn missing_field_does_not_match() {
        let drop = settings(&[("field", "status"), ("equals", "test")]);
        assert!(
            handle(&json_msg(r#"{"other":1}"#), &drop)
                .expect("handled")
                .is_some()
        );
        let keep = settings(&[("field", "status"), ("equals", "test"), ("mode", "keep")]);
        assert_eq!(handle(&json_msg(r#"{"other":1}"#), &keep), Ok(None));
        // A path through a scalar is missing too.
        assert_eq!(
            handle(
                &json_msg(r#"{"status":5}"#),
                &settings(&[("field", "status.x"), ("equals", "5"), ("mode", "keep")])
            ),
            Ok(None)
        );
    }

    #[test]
    fn tombstone_does_not_match() {
        let drop = settings(&[("field", "status"), ("equals", "test")]);
        let tombstone = Message::builder().key("k1").build();
        let out = handle(&tombstone, &drop)
            .expect("handled")
            .expect("forwarded");
        assert_eq!(out.key(), Some(&b"k1"[..]));
        assert_eq!(out.value(), None);
    }

    #[test]
    fn non_json_value_is_a_permanent_error() {
        let s = settings(&[("field", "status"), ("equals", "test")]);
        let err = handle(&json_msg("not json"), &s).expect_err("must fail");
        assert!(!err.is_retryable());
        assert!(err.message().starts_with("invalid JSON: "), "{err}");
    }

    #[test]
    fn init_rejects_bad_config() {
        assert_eq!(
            setup_error(&[("equals", "x")]),
            "missing required config key `field`"
        );
        assert_eq!(
            setup_error(&[("field", "a")]),
            "missing required config key `equals`"
        );
        assert_eq!(
            setup_error(&[("field", "a"), ("equals", "x"), ("mod", "keep")]),
            "unknown config key `mod` (known keys: field, equals, mode)"
        );
        assert_eq!(
            setup_error(&[("field", "a"), ("equals", "x"), ("mode", "invert")]),
            "config key `mode`: expected `drop` or `keep`, got \"invert\""
        );
        assert_eq!(
            setup_error(&[("field", "a..b"), ("equals", "x")]),
            "config key `field`: invalid JSON field path \"a..b\": use dotted names like `user.email`"
        );
    }
}
