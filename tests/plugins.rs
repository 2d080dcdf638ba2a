//! The example plugins run in the host runtime: for given input batches, the
//! exact records (topic override, key, value, headers, timestamp) or errors
//! each message becomes, and the exact message `init` gives for a bad
//! configuration.
//!
//! Needs the plugins built for wasm32-wasip2 and `KWASM_PLUGIN_DIR` set
//! (`scripts/test` does both).

mod runtime_harness;

use kwasm_host::runtime::{Limits, PluginErrorKind, PluginHandler};
use runtime_harness::{Outcome, Record, batch, config, outcomes, plugin};
use serde_json::{Value, json};

/// A handler of plugin `name` with `pairs` as config and default limits.
fn handler(name: &str, pairs: &[(&str, &str)]) -> PluginHandler {
    plugin(name)
        .handler(config(pairs), Limits::default())
        .unwrap_or_else(|e| panic!("plugin `{name}` rejected {pairs:?}: {e}"))
}

/// The outcomes of running `records` (from `orders`/2, offsets from 100)
/// through `handler`.
fn run(handler: &mut PluginHandler, records: &[Record]) -> Vec<Outcome> {
    let input = batch("orders", 2, 100, records);
    let output = handler
        .handle_batch(&input)
        .unwrap_or_else(|e| panic!("batch failed: {e}"));
    assert_eq!(output.len(), records.len(), "one outcome per message");
    outcomes(&output)
}

/// The single record a message became, with its value parsed as JSON (so key
/// order does not matter) and the value field cleared from the record.
fn single_json(outcome: &Outcome) -> (Record, Value) {
    let Outcome::Ok(records) = outcome else {
        panic!("expected one output record, got {outcome:?}");
    };
    let [record] = records.as_slice() else {
        panic!("expected one output record, got {records:?}");
    };
    let value = record.value.as_deref().expect("a JSON value");
    let json = serde_json::from_slice(value).unwrap_or_else(|e| {
        panic!(
            "output is not JSON ({e}): {}",
            String::from_utf8_lossy(value)
        )
    });
    (
        Record {
            value: None,
            ..record.clone()
        },
        json,
    )
}

/// The `InitRejected` message a plugin gives for `pairs`.
fn init_rejection(name: &str, pairs: &[(&str, &str)]) -> String {
    match plugin(name).handler(config(pairs), Limits::default()) {
        Ok(_) => panic!("plugin `{name}` accepted {pairs:?}"),
        Err(e) => match &e.kind {
            PluginErrorKind::InitRejected(message) => {
                assert_eq!(e.context.offsets, None, "init has no offsets");
                assert!(
                    e.to_string()
                        .starts_with(&format!("plugin `{name}` (sha256:")),
                    "{e}"
                );
                assert!(
                    e.to_string().ends_with(&format!(
                        " during init: rejected its configuration: {message}"
                    )),
                    "{e}"
                );
                message.clone()
            }
            other => panic!("plugin `{name}`: expected InitRejected, got {other:?} ({e})"),
        },
    }
}

// ---------------------------------------------------------------- passthrough

#[test]
fn passthrough_forwards_every_field_of_several_messages_in_order() {
    let inputs = [
        Record::value("v1")
            .key("k1")
            .header("trace", "abc")
            .header("trace", "def")
            .timestamp(1_700_000_000_000),
        // No key, no value, no headers, no timestamp: all stay absent.
        Record::null(),
        // Binary key and value, a header with a null value, timestamp 0.
        Record {
            headers: vec![
                ("empty".to_owned(), None),
                ("blank".to_owned(), Some(vec![])),
            ],
            ..Record::value([0u8, 0xff, 0x10]).key([0xfe_u8]).timestamp(0)
        },
        Record::value("").key(""),
    ];
    let mut passthrough = handler("passthrough", &[]);
    let expected: Vec<Outcome> = inputs
        .iter()
        .map(|r| Outcome::Ok(vec![r.clone()]))
        .collect();
    assert_eq!(run(&mut passthrough, &inputs), expected);
    // The same instance handles the next batch just as well.
    assert_eq!(run(&mut passthrough, &inputs[..1]), expected[..1]);
}

#[test]
fn passthrough_answers_a_batch_of_1000_in_order() {
    let inputs: Vec<Record> = (0..1000)
        .map(|i| {
            Record::value(format!("value-{i}"))
                .key(format!("key-{i}"))
                .timestamp(i)
        })
        .collect();
    let input = batch("orders", 7, 5_000, &inputs);
    assert_eq!(input.offsets(), Some((5_000, 5_999)));
    let output = handler("passthrough", &[])
        .handle_batch(&input)
        .unwrap_or_else(|e| panic!("batch failed: {e}"));
    assert_eq!(output.len(), 1000);
    assert_eq!(output.record_count(), 1000);
    let got = outcomes(&output);
    // Outcome i belongs to input message i, i.e. offset 5000 + i.
    for (i, (outcome, message)) in got.iter().zip(input.messages()).enumerate() {
        assert_eq!(message.offset(), 5_000 + i as i64);
        assert_eq!(
            outcome,
            &Outcome::Ok(vec![inputs[i].clone()]),
            "message {i}"
        );
    }
}

#[test]
fn passthrough_rejects_any_config_key() {
    // It takes no configuration: a key set by mistake fails the deploy.
    let err = plugin("passthrough").handler(config(&[("anything", "goes")]), Limits::default());
    let Err(e) = err else {
        panic!("passthrough accepted an unknown key")
    };
    assert_eq!(
        e.kind,
        PluginErrorKind::InitRejected("unknown config key `anything` (known keys: )".into())
    );
}

// --------------------------------------------------------------------- filter

fn order(status: &str, id: i64) -> Record {
    Record::value(json!({"order": {"status": status, "id": id}}).to_string())
        .key(format!("order-{id}"))
        .header("trace", "t1")
        .timestamp(1_000 + id)
}

#[test]
fn filter_drop_mode_drops_matches_and_forwards_the_rest_unchanged() {
    let mut filter = handler("filter", &[("field", "order.status"), ("equals", "test")]);
    let inputs = [
        order("test", 1),
        order("paid", 2),
        Record::value(r#"{"other":1}"#),
        Record::null().key("deleted"),
        Record::value("plain text").key("k"),
    ];
    assert_eq!(
        run(&mut filter, &inputs),
        vec![
            Outcome::Ok(vec![]),
            Outcome::Ok(vec![order("paid", 2)]),
            // A missing field does not match.
            Outcome::Ok(vec![Record::value(r#"{"other":1}"#)]),
            // A tombstone does not match, and is forwarded.
            Outcome::Ok(vec![Record::null().key("deleted")]),
            Outcome::Permanent("invalid JSON: expected value at line 1 column 1".to_owned()),
        ]
    );
}

#[test]
fn filter_keep_mode_forwards_only_matches() {
    let mut filter = handler(
        "filter",
        &[
            ("field", "order.status"),
            ("equals", "paid"),
            ("mode", "keep"),
        ],
    );
    let inputs = [
        order("test", 1),
        order("paid", 2),
        order("paid", 3),
        Record::value("{"),
    ];
    assert_eq!(
        run(&mut filter, &inputs),
        vec![
            Outcome::Ok(vec![]),
            Outcome::Ok(vec![order("paid", 2)]),
            Outcome::Ok(vec![order("paid", 3)]),
            Outcome::Permanent(
                "invalid JSON: EOF while parsing an object at line 1 column 1".to_owned()
            ),
        ]
    );
}

#[test]
fn filter_init_rejects_bad_config() {
    assert_eq!(
        init_rejection("filter", &[("equals", "x")]),
        "missing required config key `field`"
    );
    assert_eq!(
        init_rejection(
            "filter",
            &[("field", "a"), ("equals", "x"), ("mod", "keep")]
        ),
        "unknown config key `mod` (known keys: field, equals, mode)"
    );
    assert_eq!(
        init_rejection(
            "filter",
            &[("field", "a"), ("equals", "x"), ("mode", "invert")]
        ),
        "config key `mode`: expected `drop` or `keep`, got \"invert\""
    );
}

// ------------------------------------------------------------------ transform

#[test]
fn transform_renames_drops_and_adds_fields() {
    let mut transform = handler(
        "transform",
        &[
            ("rename", "user.mail=user.email"),
            ("drop", "debug"),
            ("add", "meta.source=kwasm,meta.version=2"),
        ],
    );
    let input = Record::value(r#"{"user":{"mail":"a@b.c"},"debug":true,"id":7}"#)
        .key("u1")
        .header("trace", "t")
        .timestamp(42);
    let got = run(&mut transform, &[input, Record::null().key("gone")]);
    let (record, value) = single_json(&got[0]);
    assert_eq!(
        record,
        Record::null().key("u1").header("trace", "t").timestamp(42)
    );
    assert_eq!(
        value,
        json!({"user": {"email": "a@b.c"}, "id": 7, "meta": {"source": "kwasm", "version": 2}})
    );
    // A tombstone is forwarded as it is.
    assert_eq!(got[1], Outcome::Ok(vec![Record::null().key("gone")]));
}

#[test]
fn transform_dead_letters_values_that_are_not_json_objects() {
    let mut transform = handler("transform", &[("drop", "a")]);
    assert_eq!(
        run(
            &mut transform,
            &[
                Record::value("[1,2]"),
                Record::value("{oops"),
                Record::value(r#"{"a":1,"b":2}"#)
            ]
        ),
        vec![
            Outcome::Permanent("expected a JSON object, got an array".to_owned()),
            Outcome::Permanent("invalid JSON: key must be a string at line 1 column 2".to_owned()),
            Outcome::Ok(vec![Record::value(r#"{"b":2}"#)]),
        ]
    );
}

#[test]
fn transform_init_rejects_bad_config() {
    assert_eq!(
        init_rejection("transform", &[]),
        "nothing to do: set at least one of `rename`, `drop`, `add`"
    );
    assert_eq!(
        init_rejection("transform", &[("drop", "a"), ("rnme", "a=b")]),
        "unknown config key `rnme` (known keys: rename, drop, add)"
    );
    assert_eq!(
        init_rejection("transform", &[("rename", "a")]),
        "config key `rename`: expected `left=right`, got \"a\""
    );
}

// --------------------------------------------------------------------- router

/// `record` sent to `topic` instead of the pipeline's output topic.
fn routed(record: Record, topic: &str) -> Record {
    Record {
        topic: Some(topic.to_owned()),
        ..record
    }
}

#[test]
fn router_routes_by_key_through_the_table_with_a_default() {
    let mut router = handler(
        "router",
        &[
            ("by", "key"),
            ("routes", "acme=tenant-acme,globex=tenant-globex"),
            ("default", "tenant-other"),
        ],
    );
    let msg = |key: &str| Record::value("v").key(key).header("h", "1").timestamp(9);
    let keyless = Record::value("v").timestamp(9);
    assert_eq!(
        run(
            &mut router,
            &[msg("acme"), msg("globex"), msg("initech"), keyless.clone()]
        ),
        vec![
            Outcome::Ok(vec![routed(msg("acme"), "tenant-acme")]),
            Outcome::Ok(vec![routed(msg("globex"), "tenant-globex")]),
            Outcome::Ok(vec![routed(msg("initech"), "tenant-other")]),
            // No key to route on: the default.
            Outcome::Ok(vec![routed(keyless, "tenant-other")]),
        ]
    );
}

#[test]
fn router_routes_by_field_with_a_prefix() {
    let mut router = handler(
        "router",
        &[("by", "field:order.region"), ("prefix", "orders-")],
    );
    let msg = |value: &str| Record::value(value).key("k");
    let eu = msg(r#"{"order":{"region":"eu"}}"#);
    let numeric = msg(r#"{"order":{"region":7}}"#);
    let missing = msg(r#"{"order":{}}"#);
    let spaced = msg(r#"{"order":{"region":"a b"}}"#);
    assert_eq!(
        run(
            &mut router,
            &[
                eu.clone(),
                numeric.clone(),
                missing.clone(),
                spaced,
                msg("nope")
            ]
        ),
        vec![
            Outcome::Ok(vec![routed(eu, "orders-eu")]),
            Outcome::Ok(vec![routed(numeric, "orders-7")]),
            // Nothing to route on and no default: the pipeline's topic.
            Outcome::Ok(vec![missing]),
            Outcome::Permanent(
                "cannot route: \"orders-a b\" is not a valid topic name (1 to 249 characters of \
                 A-Z, a-z, 0-9, `.`, `_`, `-`, not `.` or `..`)"
                    .to_owned()
            ),
            Outcome::Permanent("invalid JSON: expected ident at line 1 column 2".to_owned()),
        ]
    );
}

#[test]
fn router_init_rejects_bad_config() {
    assert_eq!(
        init_rejection("router", &[]),
        "missing required config key `by`"
    );
    assert_eq!(
        init_rejection("router", &[("by", "key"), ("route", "a=b")]),
        "unknown config key `route` (known keys: by, routes, prefix, default)"
    );
    assert_eq!(
        init_rejection("router", &[("by", "value")]),
        "config key `by`: expected `key` or `field:<dotted.path>`, got \"value\""
    );
}

// --------------------------------------------------------------------- redact

#[test]
fn redact_masks_fields_emails_and_cards_and_counts_them() {
    let mut redact = handler(
        "redact",
        &[
            ("fields", "user.ssn"),
            ("emails", "true"),
            ("cards", "true"),
        ],
    );
    let input = Record::value(
        r#"{"user":{"ssn":"123-45-6789","email":"john@example.com"},"note":"card 4111 1111 1111 1111"}"#,
    )
    .key("u1")
    .header("trace", "t")
    // A count header from upstream is replaced, not duplicated.
    .header("kwasm-redacted", "99")
    .timestamp(5);
    let clean = Record::value(r#"{"note":"order 1234567890123 shipped"}"#);
    let got = run(
        &mut redact,
        &[
            input,
            clean,
            Record::null().key("gone"),
            Record::value("ssn=1"),
        ],
    );

    let (record, value) = single_json(&got[0]);
    assert_eq!(
        record,
        Record::null()
            .key("u1")
            .header("trace", "t")
            .header("kwasm-redacted", "3")
            .timestamp(5)
    );
    assert_eq!(
        value,
        json!({"user": {"ssn": "***", "email": "j***@example.com"}, "note": "card ************1111"})
    );

    // No field present, and 13 digits failing the Luhn check: nothing masked.
    let (record, value) = single_json(&got[1]);
    assert_eq!(record, Record::null().header("kwasm-redacted", "0"));
    assert_eq!(value, json!({"note": "order 1234567890123 shipped"}));

    // A tombstone holds nothing to redact.
    assert_eq!(
        got[2],
        Outcome::Ok(vec![
            Record::null().key("gone").header("kwasm-redacted", "0")
        ])
    );
    // Never passed on unredacted.
    assert_eq!(
        got[3],
        Outcome::Permanent("invalid JSON: expected value at line 1 column 1".to_owned())
    );
}

#[test]
fn redact_uses_the_configured_mask_and_leaves_scanners_off_by_default() {
    let mut redact = handler("redact", &[("fields", "a,b.c"), ("mask", "[gone]")]);
    let got = run(
        &mut redact,
        &[Record::value(
            r#"{"a":{"x":1},"b":{"c":5},"mail":"john@example.com"}"#,
        )],
    );
    let (record, value) = single_json(&got[0]);
    assert_eq!(record, Record::null().header("kwasm-redacted", "2"));
    assert_eq!(
        value,
        json!({"a": "[gone]", "b": {"c": "[gone]"}, "mail": "john@example.com"})
    );
}

#[test]
fn redact_init_rejects_bad_config() {
    assert_eq!(
        init_rejection("redact", &[("mask", "#")]),
        "missing required config key `fields`"
    );
    assert_eq!(
        init_rejection("redact", &[("fields", "a"), ("email", "true")]),
        "unknown config key `email` (known keys: fields, mask, emails, cards)"
    );
    assert_eq!(
        init_rejection("redact", &[("fields", "a"), ("cards", "yes")]),
        "config key `cards`: cannot parse \"yes\": provided string was not `true` or `false`"
    );
}
