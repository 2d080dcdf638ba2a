//! `redact`: masks configured fields of JSON values, and optionally email
//! addresses and card numbers anywhere in the document.
//!
//! Config keys:
//! - `fields` (required): comma-separated dotted paths, e.g.
//!   `user.ssn,payment.iban`. The value at each path, whatever its type, is
//!   replaced by the mask string; a missing path is skipped.
//! - `mask` (optional, default `***`): the replacement text.
//! - `emails` (optional, `true`/`false`, default `false`): also mask email
//!   addresses in every string value, keeping the first character and the
//!   domain so mail routing stays debuggable: `john@example.com` becomes
//!   `j***@example.com` (the mask stands in for the rest of the local part).
//! - `cards` (optional, `true`/`false`, default `false`): also mask card
//!   numbers in every string value: runs of 13 to 19 digits, optionally
//!   separated by single spaces or dashes, that pass the Luhn check. All but
//!   the last four digits become `*` and the separators go:
//!   `4111 1111 1111 1111` becomes `************1111`. A digit run glued to
//!   letters or longer than 19 digits is left alone, so ids are not
//!   half-masked.
//!
//! Every output carries the header `kwasm-redacted: <count>`, the number of
//! values masked (each configured field present, each email, each card), so
//! downstream consumers and audits can tell redacted records apart.
//!
//! Only string values are scanned, not object keys. A value that is not JSON
//! is dead-lettered (a permanent error): passing it on unredacted could leak
//! the very data this plugin exists to hide. A tombstone (null value) holds
//! nothing to redact and is forwarded with a count of 0.

use kwasm_guest::json::Path;
use kwasm_guest::{Config, Error, Message, Output, handler};
use regex_lite::{Captures, Regex};
use serde_json::Value;

/// The header that tells how many values were masked.
pub const COUNT_HEADER: &str = "kwasm-redacted";

/// An email address: a plain local part, and a domain with a final label of
/// two or more letters (so `a@b` in free text is left alone).
const EMAIL_PATTERN: &str =
    r"([A-Za-z0-9._%+-]+)@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})";

/// 13 to 19 digits with optional single space or dash separators; the word
/// boundaries keep it from matching inside longer digit runs or identifiers.
const CARD_PATTERN: &str = r"\b[0-9](?:[ -]?[0-9]){12,18}\b";

/// The parsed configuration and the compiled scanners.
#[derive(Debug)]
pub struct Settings {
    fields: Vec<Path>,
    mask: String,
    emails: Option<Regex>,
    cards: Option<Regex>,
}

const KNOWN_KEYS: &[&str] = &["fields", "mask", "emails", "cards"];

/// Validates the configuration and compiles only the scanners it enables.
pub fn setup(config: &Config) -> Result<Settings, String> {
    config.deny_unknown(KNOWN_KEYS)?;
    config.require("fields")?;
    let fields = config
        .list("fields")
        .into_iter()
        .map(|p| Path::parse(p).map_err(|e| format!("config key `fields`: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if fields.is_empty() {
        return Err("config key `fields`: no paths given".to_owned());
    }
    let mask = config.get("mask").unwrap_or("***").to_owned();
    let emails = scanner(config, "emails", EMAIL_PATTERN)?;
    let cards = scanner(config, "cards", CARD_PATTERN)?;
    Ok(Settings {
        fields,
        mask,
        emails,
        cards,
    })
}

/// Masks the configured fields (and emails and cards, when enabled).
#[handler(init = setup)]
pub fn handle(msg: &Message, settings: &Settings) -> Result<Output, Error> {
    if msg.value().is_none() {
        return Ok(Output::forward(msg).with_header(COUNT_HEADER, "0"));
    }
    let mut doc: Value = msg.json()?;
    let mut count = 0;
    for path in &settings.fields {
        if let Some(value) = path.get_mut(&mut doc) {
            *value = Value::String(settings.mask.clone());
            count += 1;
        }
    }
    if settings.emails.is_some() || settings.cards.is_some() {
        scan(&mut doc, settings, &mut count);
    }
    Ok(Output::forward(msg)
        .with_json(&doc)?
        .with_header(COUNT_HEADER, count.to_string()))
}

/// `Some(regex)` when boolean config `key` is `true`.
fn scanner(config: &Config, key: &str, pattern: &str) -> Result<Option<Regex>, String> {
    if !config.parse::<bool>(key)?.unwrap_or(false) {
        return Ok(None);
    }
    Regex::new(pattern)
        .map(Some)
        .map_err(|e| format!("internal error compiling the `{key}` scanner: {e}"))
}

/// Masks emails and cards in every string value of `value`. Recursion depth
/// is bounded by serde_json's nesting limit on parse.
fn scan(value: &mut Value, settings: &Settings, count: &mut usize) {
    match value {
        Value::String(text) => {
            if let Some(masked) = mask_text(text, settings, count) {
                *text = masked;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| scan(v, settings, count)),
        Value::Object(map) => map.values_mut().for_each(|v| scan(v, settings, count)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The text with emails and cards masked, or `None` when nothing matched
/// (so unchanged strings are not copied).
fn mask_text(text: &str, settings: &Settings, count: &mut usize) -> Option<String> {
    let mut current: Option<String> = None;
    if let Some(emails) = &settings.emails {
        let replaced = emails.replace_all(text, |caps: &Captures<'_>| {
            *count += 1;
            let local = &caps[1];
            // The pattern's local part is ASCII, so byte 1 is a char boundary.
            format!("{}{}@{}", &local[..1], settings.mask, &caps[2])
        });
        if let std::borrow::Cow::Owned(s) = replaced {
            current = Some(s);
        }
    }
    if let Some(cards) = &settings.cards {
        let input = current.as_deref().unwrap_or(text);
        let replaced = cards.replace_all(input, |caps: &Captures<'_>| {
            let digits: Vec<u8> = caps[0].bytes().filter(u8::is_ascii_digit).collect();
            if !luhn_valid(&digits) {
                return caps[0].to_owned();
            }
            *count += 1;
            let keep = digits.len() - 4;
            let last4 = std::str::from_utf8(&digits[keep..]).unwrap_or_default();
            format!("{}{last4}", "*".repeat(keep))
        });
        if let std::borrow::Cow::Owned(s) = replaced {
            current = Some(s);
        }
    }
    current
}

/// The Luhn checksum over ASCII digits: doubling every second digit from the
/// right, the sum must be a multiple of 10.
fn luhn_valid(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
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

    /// The redacted document and the count header, after checking that key,
    /// headers and timestamp were forwarded.
    fn redact(s: &Settings, value: Value) -> (Value, String) {
        let msg = Message::builder()
            .key("k1")
            .value(value.to_string())
            .header("trace", "abc")
            .timestamp_ms(5)
            .build();
        let out = handle(&msg, s).expect("handled");
        assert_eq!(out.key(), Some(&b"k1"[..]));
        assert_eq!(out.header("trace"), Some(&b"abc"[..]));
        assert_eq!(out.timestamp_ms(), Some(5));
        assert_eq!(out.topic(), None);
        let count = out.header(COUNT_HEADER).expect("count header");
        let count = String::from_utf8(count.to_vec()).expect("UTF-8 count");
        (out.value_json().expect("JSON output"), count)
    }

    #[test]
    fn masks_configured_fields_of_any_type() {
        let s = settings(&[("fields", "user.ssn, payment, missing.path, items.1")]);
        let (doc, count) = redact(
            &s,
            json!({"user": {"ssn": "123-45-6789", "name": "Jo"}, "payment": {"iban": "X"}, "items": [1, 2]}),
        );
        assert_eq!(
            doc,
            json!({"user": {"ssn": "***", "name": "Jo"}, "payment": "***", "items": [1, "***"]})
        );
        assert_eq!(count, "3");
    }

    #[test]
    fn custom_mask() {
        let s = settings(&[("fields", "pin"), ("mask", "[hidden]")]);
        assert_eq!(
            redact(&s, json!({"pin": 1234})),
            (json!({"pin": "[hidden]"}), "1".to_owned())
        );
    }

    #[test]
    fn masks_emails_everywhere_keeping_the_domain() {
        let s = settings(&[("fields", "secret"), ("emails", "true")]);
        let (doc, count) = redact(
            &s,
            json!({
                "to": "john@example.com",
                "note": "cc ann.lee+x@mail.example.co.uk and bob@corp.io, not a@b",
                "list": [{"e": "Z@x.org"}],
                "john@example.com": 1
            }),
        );
        assert_eq!(
            doc,
            json!({
                "to": "j***@example.com",
                "note": "cc a***@mail.example.co.uk and b***@corp.io, not a@b",
                "list": [{"e": "Z***@x.org"}],
                "john@example.com": 1
            })
        );
        assert_eq!(count, "4");
    }

    #[test]
    fn emails_are_left_alone_unless_enabled() {
        let s = settings(&[("fields", "secret"), ("emails", "false")]);
        assert_eq!(
            redact(&s, json!({"to": "john@example.com"})),
            (json!({"to": "john@example.com"}), "0".to_owned())
        );
    }

    #[test]
    fn masks_luhn_valid_card_numbers_keeping_the_last_four() {
        let s = settings(&[("fields", "secret"), ("cards", "true")]);
        let (doc, count) = redact(
            &s,
            json!({
                "plain": "4111111111111111",
                "spaced": "card 4111 1111 1111 1111 ok",
                "dashed": "5555-5555-5555-4444",
                "amex": "378282246310005",
                "not_luhn": "4111111111111112",
                "too_short": "411111111111",
                "too_long": "41111111111111111111",
                "glued": "id4111111111111111",
                "number": 4111111111111111u64
            }),
        );
        assert_eq!(
            doc,
            json!({
                "plain": "************1111",
                "spaced": "card ************1111 ok",
                "dashed": "************4444",
                "amex": "***********0005",
                "not_luhn": "4111111111111112",
                "too_short": "411111111111",
                "too_long": "41111111111111111111",
                "glued": "id4111111111111111",
                "number": 4111111111111111u64
            })
        );
        assert_eq!(count, "4");
    }

    #[test]
    fn fields_emails_and_cards_add_up_in_the_count() {
        let s = settings(&[("fields", "ssn"), ("emails", "true"), ("cards", "true")]);
        let (doc, count) = redact(
            &s,
            json!({"ssn": "1", "note": "pay 4111-1111-1111-1111 to jo@ex.com"}),
        );
        assert_eq!(
            doc,
            json!({"ssn": "***", "note": "pay ************1111 to j***@ex.com"})
        );
        assert_eq!(count, "3");
    }

    #[test]
    fn replaces_an_existing_count_header() {
        let s = settings(&[("fields", "a")]);
        let msg = Message::builder()
            .value(r#"{"a":1}"#)
            .header(COUNT_HEADER, "9")
            .build();
        let out = handle(&msg, &s).expect("handled");
        let counts: Vec<_> = out.headers().filter(|(n, _)| *n == COUNT_HEADER).collect();
        assert_eq!(counts, vec![(COUNT_HEADER, Some(&b"1"[..]))]);
    }

    #[test]
    fn tombstone_is_forwarded_with_a_zero_count() {
        let s = settings(&[("fields", "a")]);
        let out = handle(&Message::builder().key("k").build(), &s).expect("handled");
        assert_eq!(out.key(), Some(&b"k"[..]));
        assert_eq!(out.value(), None);
        assert_eq!(out.header(COUNT_HEADER), Some(&b"0"[..]));
    }

    #[test]
    fn non_json_value_is_a_permanent_error() {
        let s = settings(&[("fields", "a")]);
        let err = handle(&Message::builder().value("ssn=123").build(), &s).expect_err("not JSON");
        assert!(!err.is_retryable());
        assert!(err.message().starts_with("invalid JSON: "), "{err}");
    }

    #[test]
    fn luhn_check() {
        assert!(luhn_valid(b"79927398713"));
        assert!(!luhn_valid(b"79927398710"));
        assert!(luhn_valid(b"4111111111111111"));
    }

    #[test]
    fn init_rejects_bad_config() {
        assert_eq!(
            setup_error(&[("mask", "x")]),
            "missing required config key `fields`"
        );
        assert_eq!(
            setup_error(&[("fields", " , ")]),
            "config key `fields`: no paths given"
        );
        assert_eq!(
            setup_error(&[("fields", "a"), ("email", "true")]),
            "unknown config key `email` (known keys: fields, mask, emails, cards)"
        );
        assert_eq!(
            setup_error(&[("fields", "a..b")]),
            "config key `fields`: invalid JSON field path \"a..b\": use dotted names like `user.email`"
        );
        assert_eq!(
            setup_error(&[("fields", "a"), ("cards", "yes")]),
            "config key `cards`: cannot parse \"yes\": provided string was not `true` or `false`"
        );
    }
}
