//! `router`: sends each message to an output topic chosen from its key or a
//! JSON field of its value.
//!
//! Config keys:
//! - `by` (required): `key` routes on the message key (as UTF-8 text);
//!   `field:<dotted.path>` routes on a JSON field of the value, compared as
//!   [`kwasm_guest::json::as_text`] renders it (strings without quotes, other
//!   values as JSON).
//! - `routes` (optional): comma-separated `match=topic` pairs, e.g.
//!   `eu=orders-eu,us=orders-us`. The last `=` splits a pair, so a match may
//!   contain `=`.
//! - `prefix` (optional, only without `routes`): the topic is
//!   `<prefix><value>`. With neither `routes` nor `prefix` the topic is the
//!   value itself.
//! - `default` (optional): the topic for messages that match no route, or
//!   have no value to route on (a null key, a missing field, a tombstone).
//!   Without it those messages go to the pipeline's output topic.
//!
//! A topic name must be 1 to 249 characters of `[A-Za-z0-9._-]` and not `.`
//! or `..`, as Kafka requires. Configured topics are checked at init; a topic
//! built from a message (with `prefix`) that breaks the rule is a permanent
//! error naming it, so the message is dead-lettered instead of failing the
//! producer. So is a value that is not JSON when routing on a field, and a
//! key that is not UTF-8 when routing on the key.

use std::collections::BTreeMap;

use kwasm_guest::json::{Path, as_text};
use kwasm_guest::{Config, Error, Message, Output, handler};
use serde_json::Value;

/// What the topic is chosen from.
#[derive(Debug)]
enum Source {
    Key,
    Field(Path),
}

/// How a routing value becomes a topic.
#[derive(Debug)]
enum Target {
    /// A fixed table; values outside it are unmatched.
    Routes(BTreeMap<String, String>),
    /// `<prefix><value>`; every value matches.
    Prefix(String),
}

/// The parsed configuration.
#[derive(Debug)]
pub struct Settings {
    by: Source,
    target: Target,
    default: Option<String>,
}

const KNOWN_KEYS: &[&str] = &["by", "routes", "prefix", "default"];

/// Kafka's limit on topic name length.
const MAX_TOPIC_LEN: usize = 249;

/// Validates the configuration once, so a typo fails the deploy instead of
/// every message.
pub fn setup(config: &Config) -> Result<Settings, String> {
    config.deny_unknown(KNOWN_KEYS)?;
    let by = parse_source(config.require("by")?)?;
    let target = match (config.get("routes"), config.get("prefix")) {
        (Some(_), Some(_)) => {
            return Err("config keys `routes` and `prefix` exclude each other: `prefix` builds the topic when there is no `routes` table".to_owned());
        }
        (Some(_), None) => Target::Routes(parse_routes(config)?),
        (None, prefix) => {
            let prefix = prefix.unwrap_or_default();
            if let Some(bad) = prefix.chars().find(|c| !is_topic_char(*c)) {
                return Err(format!(
                    "config key `prefix`: {prefix:?} contains {bad:?}; topic names use only A-Z, a-z, 0-9, `.`, `_` and `-`"
                ));
            }
            Target::Prefix(prefix.to_owned())
        }
    };
    let default = config
        .get("default")
        .map(|t| check_topic(t).map(|()| t.to_owned()))
        .transpose()
        .map_err(|e| format!("config key `default`: {e}"))?;
    Ok(Settings {
        by,
        target,
        default,
    })
}

/// Forwards the message, to the chosen topic when there is one.
#[handler(init = setup)]
pub fn handle(msg: &Message, settings: &Settings) -> Result<Output, Error> {
    let topic = routing_value(msg, &settings.by)?
        .and_then(|value| match &settings.target {
            Target::Routes(routes) => routes.get(&value).cloned(),
            Target::Prefix(prefix) => Some(format!("{prefix}{value}")),
        })
        .or_else(|| settings.default.clone());
    match topic {
        Some(topic) => {
            check_topic(&topic).map_err(|e| Error::permanent(format!("cannot route: {e}")))?;
            Ok(Output::forward(msg).with_topic(topic))
        }
        None => Ok(Output::forward(msg)),
    }
}

/// The text to route on; `None` when the message has none.
fn routing_value(msg: &Message, by: &Source) -> Result<Option<String>, Error> {
    match by {
        Source::Key => Ok(msg.key_str()?.map(str::to_owned)),
        Source::Field(path) => {
            if msg.value().is_none() {
                return Ok(None);
            }
            let doc: Value = msg.json()?;
            Ok(path.get(&doc).map(|v| as_text(v).into_owned()))
        }
    }
}

fn parse_source(by: &str) -> Result<Source, String> {
    if by == "key" {
        return Ok(Source::Key);
    }
    match by.strip_prefix("field:") {
        Some(path) => Path::parse(path)
            .map(Source::Field)
            .map_err(|e| format!("config key `by`: {e}")),
        None => Err(format!(
            "config key `by`: expected `key` or `field:<dotted.path>`, got {by:?}"
        )),
    }
}

fn parse_routes(config: &Config) -> Result<BTreeMap<String, String>, String> {
    let mut routes = BTreeMap::new();
    for item in config.list("routes") {
        let (matched, topic) = match item.rsplit_once('=') {
            Some((m, t)) if !m.trim().is_empty() && !t.trim().is_empty() => (m.trim(), t.trim()),
            _ => {
                return Err(format!(
                    "config key `routes`: expected `match=topic`, got {item:?}"
                ));
            }
        };
        check_topic(topic).map_err(|e| format!("config key `routes`: {e}"))?;
        if routes
            .insert(matched.to_owned(), topic.to_owned())
            .is_some()
        {
            return Err(format!("config key `routes`: {matched:?} is routed twice"));
        }
    }
    if routes.is_empty() {
        return Err("config key `routes`: no `match=topic` pairs given".to_owned());
    }
    Ok(routes)
}

/// Kafka's rule for topic names (see `org.apache.kafka.common.internals.Topic`).
fn check_topic(topic: &str) -> Result<(), String> {
    let len_ok = (1..=MAX_TOPIC_LEN).contains(&topic.len());
    if len_ok && topic != "." && topic != ".." && topic.chars().all(is_topic_char) {
        Ok(())
    } else {
        Err(format!(
            "{topic:?} is not a valid topic name (1 to {MAX_TOPIC_LEN} characters of A-Z, a-z, 0-9, `.`, `_`, `-`, not `.` or `..`)"
        ))
    }
}

fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
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

    fn msg(key: &str, value: &str) -> Message {
        Message::builder()
            .key(key.to_owned())
            .value(value.to_owned())
            .header("trace", "abc")
            .timestamp_ms(11)
            .build()
    }

    /// The topic override of the routed message, after checking that the
    /// rest of the message was forwarded as it was.
    fn route(s: &Settings, m: &Message) -> Option<String> {
        let out = handle(m, s).expect("routed");
        assert_eq!(out.key(), m.key());
        assert_eq!(out.value(), m.value());
        assert_eq!(out.header("trace"), Some(&b"abc"[..]));
        assert_eq!(out.timestamp_ms(), Some(11));
        out.topic().map(str::to_owned)
    }

    #[test]
    fn routes_on_a_field_through_the_table() {
        let s = settings(&[
            ("by", "field:order.region"),
            ("routes", "eu=orders-eu, us=orders-us"),
            ("default", "orders-other"),
        ]);
        let eu = msg("k", r#"{"order":{"region":"eu"}}"#);
        assert_eq!(route(&s, &eu).as_deref(), Some("orders-eu"));
        let us = msg("k", r#"{"order":{"region":"us"}}"#);
        assert_eq!(route(&s, &us).as_deref(), Some("orders-us"));
        let apac = msg("k", r#"{"order":{"region":"apac"}}"#);
        assert_eq!(route(&s, &apac).as_deref(), Some("orders-other"));
        let missing = msg("k", r#"{"order":{}}"#);
        assert_eq!(route(&s, &missing).as_deref(), Some("orders-other"));
    }

    #[test]
    fn unmatched_without_default_keeps_the_pipeline_topic() {
        let s = settings(&[("by", "key"), ("routes", "vip=orders-vip")]);
        assert_eq!(route(&s, &msg("vip", "x")).as_deref(), Some("orders-vip"));
        assert_eq!(route(&s, &msg("basic", "x")), None);
        let null_key = Message::builder()
            .value("x")
            .header("trace", "abc")
            .timestamp_ms(11)
            .build();
        assert_eq!(route(&s, &null_key), None);
    }

    #[test]
    fn non_string_fields_match_as_json_text() {
        let s = settings(&[
            ("by", "field:tier"),
            ("routes", "1=gold,true=flagged,a=b=odd"),
        ]);
        assert_eq!(
            route(&s, &msg("k", r#"{"tier":1}"#)).as_deref(),
            Some("gold")
        );
        assert_eq!(
            route(&s, &msg("k", r#"{"tier":true}"#)).as_deref(),
            Some("flagged")
        );
        assert_eq!(
            route(&s, &msg("k", r#"{"tier":"a=b"}"#)).as_deref(),
            Some("odd")
        );
    }

    #[test]
    fn prefix_builds_the_topic_from_the_value() {
        let s = settings(&[("by", "key"), ("prefix", "tenant-")]);
        assert_eq!(route(&s, &msg("acme", "x")).as_deref(), Some("tenant-acme"));
        let s = settings(&[("by", "field:type")]);
        assert_eq!(
            route(&s, &msg("k", r#"{"type":"clicks"}"#)).as_deref(),
            Some("clicks")
        );
    }

    #[test]
    fn an_invalid_computed_topic_is_a_permanent_error_naming_it() {
        let s = settings(&[("by", "key"), ("prefix", "tenant-")]);
        let err = handle(&msg("a/b", "x"), &s).expect_err("slash is not allowed");
        assert_eq!(
            err,
            Error::permanent(
                "cannot route: \"tenant-a/b\" is not a valid topic name (1 to 249 characters of A-Z, a-z, 0-9, `.`, `_`, `-`, not `.` or `..`)"
            )
        );
        let long = "x".repeat(MAX_TOPIC_LEN - "tenant-".len() + 1);
        assert!(handle(&msg(&long, "x"), &s).is_err());
        let longest = "x".repeat(MAX_TOPIC_LEN - "tenant-".len());
        assert_eq!(
            route(&s, &msg(&longest, "x")),
            Some(format!("tenant-{longest}"))
        );

        let bare = settings(&[("by", "key")]);
        assert!(handle(&msg("..", "x"), &bare).is_err());
        assert!(handle(&msg("", "x"), &bare).is_err());
    }

    #[test]
    fn bad_input_is_a_permanent_error() {
        let s = settings(&[("by", "field:type")]);
        let err = handle(&msg("k", "not json"), &s).expect_err("not JSON");
        assert!(!err.is_retryable());
        assert!(err.message().starts_with("invalid JSON: "), "{err}");

        let s = settings(&[("by", "key")]);
        let bad_key = Message::builder().key(&b"\xff"[..]).build();
        let err = handle(&bad_key, &s).expect_err("key is not UTF-8");
        assert!(err.message().starts_with("invalid UTF-8: "), "{err}");
    }

    #[test]
    fn tombstone_routes_to_the_default() {
        let s = settings(&[("by", "field:type"), ("default", "deletes")]);
        let tombstone = Message::builder().key("k").build();
        let out = handle(&tombstone, &s).expect("routed");
        assert_eq!(out.topic(), Some("deletes"));
        assert_eq!(out.value(), None);
    }

    #[test]
    fn init_rejects_bad_config() {
        assert_eq!(setup_error(&[]), "missing required config key `by`");
        assert_eq!(
            setup_error(&[("by", "key"), ("route", "a=b")]),
            "unknown config key `route` (known keys: by, routes, prefix, default)"
        );
        assert_eq!(
            setup_error(&[("by", "value")]),
            "config key `by`: expected `key` or `field:<dotted.path>`, got \"value\""
        );
        assert_eq!(
            setup_error(&[("by", "field:")]),
            "config key `by`: invalid JSON field path \"\": use dotted names like `user.email`"
        );
        assert_eq!(
            setup_error(&[("by", "key"), ("routes", "a")]),
            "config key `routes`: expected `match=topic`, got \"a\""
        );
        assert_eq!(
            setup_error(&[("by", "key"), ("routes", "a=x,a=y")]),
            "config key `routes`: \"a\" is routed twice"
        );
        assert_eq!(
            setup_error(&[("by", "key"), ("routes", " , ")]),
            "config key `routes`: no `match=topic` pairs given"
        );
        assert!(
            setup_error(&[("by", "key"), ("routes", "a=bad topic")])
                .starts_with("config key `routes`: \"bad topic\" is not a valid topic name")
        );
        assert!(
            setup_error(&[("by", "key"), ("default", "..")])
                .starts_with("config key `default`: \"..\" is not a valid topic name")
        );
        assert_eq!(
            setup_error(&[("by", "key"), ("prefix", "t/")]),
            "config key `prefix`: \"t/\" contains '/'; topic names use only A-Z, a-z, 0-9, `.`, `_` and `-`"
        );
        assert!(
            setup_error(&[("by", "key"), ("prefix", "t-"), ("routes", "a=b")])
                .starts_with("config keys `routes` and `prefix` exclude each other")
        );
    }
}
