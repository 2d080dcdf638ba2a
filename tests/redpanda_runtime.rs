//! Redpanda Data Transforms in the runtime, without a broker: the SDK's
//! example transforms (tests/fixtures/redpanda, built unmodified from
//! crates.io's redpanda-transform-sdk for wasm32-wasip1) give exactly the
//! records the Redpanda broker would, a hand-written module checks the ABI
//! fields Redpanda Connect gets wrong, and uploads whose imports the host
//! cannot satisfy are refused naming the import.
//!
//! Needs `KWASM_PLUGIN_DIR` and `KWASM_TRANSFORM_DIR` (`scripts/test`, or
//! `. scripts/lib.sh; kwasm_build_plugins`).

mod runtime_harness;

use std::sync::Arc;

use kwasm_host::runtime::{
    CompiledPlugin, Limits, PluginAbi, PluginErrorKind, PluginHandler, ValidationError,
};
use runtime_harness::{Outcome, Record, batch, config, outcomes, runtime};

const TOPIC: &str = "rp-in";

fn transform(name: &str) -> Arc<CompiledPlugin> {
    let path = kwasm_tests::transform_path(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    runtime()
        .load(name, &bytes)
        .unwrap_or_else(|e| panic!("transform `{name}` refused: {e}"))
}

fn handler(name: &str, env: &[(&str, &str)], outputs: &[&str]) -> PluginHandler {
    let outputs = outputs.iter().map(|s| (*s).to_owned()).collect();
    let mut h = transform(name)
        .idle_handler(config(env), Limits::default())
        .with_output_topics(outputs);
    h.start()
        .unwrap_or_else(|e| panic!("transform `{name}` did not start: {e}"));
    h
}

fn to(topic: Option<&str>, r: Record) -> Record {
    Record {
        topic: topic.map(str::to_owned),
        ..r
    }
}

#[test]
fn an_sdk_module_is_detected_as_a_redpanda_transform() {
    assert_eq!(transform("identity").abi(), PluginAbi::RedpandaTransform);
    assert_eq!(
        runtime_harness::plugin("passthrough").abi(),
        PluginAbi::Component
    );
}

#[test]
fn identity_copies_key_value_and_headers_batch_after_batch() {
    let mut h = handler("identity", &[], &["out"]);
    let records = [
        Record::value("v1")
            .key("k1")
            .header("h", "x")
            .timestamp(1_700),
        Record::null().timestamp(1_701),
        Record::value("").key("").timestamp(1_702),
    ];
    // Three batches through one instance: the guest stays suspended in
    // read_batch_header between them.
    for first in [0, 10, 20] {
        let out = h
            .handle_batch(&batch(TOPIC, 0, first, &records))
            .unwrap_or_else(|e| panic!("batch at {first}: {e}"));
        let expected: Vec<Outcome> = records
            .iter()
            .map(|r| {
                Outcome::Ok(vec![Record {
                    // Output is stamped by the producer, as the broker
                    // stamps transform output with its own clock.
                    timestamp_ms: None,
                    ..r.clone()
                }])
            })
            .collect();
        assert_eq!(outcomes(&out), expected);
    }
}

#[test]
fn transcoder_turns_each_csv_row_into_a_json_record() {
    let mut h = handler("transcoder", &[], &["out"]);
    let out = h
        .handle_batch(&batch(
            TOPIC,
            0,
            0,
            &[Record::value("a,1\nb,2").key("k"), Record::value("")],
        ))
        .expect("transcodes");
    assert_eq!(
        outcomes(&out),
        [
            Outcome::Ok(vec![
                Record::value(r#"{"a":"a","b":1}"#).key("k"),
                Record::value(r#"{"a":"b","b":2}"#).key("k"),
            ]),
            Outcome::Ok(vec![]),
        ]
    );
}

#[test]
fn tee_writes_each_record_to_every_declared_output_in_order() {
    let mut h = handler("tee", &[], &["first", "second"]);
    let r = Record::value("v").key("k");
    let out = h
        .handle_batch(&batch(TOPIC, 1, 5, std::slice::from_ref(&r)))
        .expect("tees");
    assert_eq!(
        outcomes(&out),
        [Outcome::Ok(vec![
            to(Some("first"), r.clone()),
            to(Some("second"), r)
        ])]
    );
}

#[test]
fn a_panicking_transform_fails_its_batch_and_the_next_instance_runs_on() {
    let mut h = handler("panic", &[], &["out"]);
    let ok = Record::value("fine");
    let boom = Record::value("boom");
    let err = match h.handle_batch(&batch(TOPIC, 0, 0, &[ok.clone(), boom.clone()])) {
        Ok(out) => panic!("expected a trap, got {:?}", outcomes(&out)),
        Err(e) => e,
    };
    let PluginErrorKind::Trap(message) = &err.kind else {
        panic!("expected a trap, got {err}");
    };
    // The guest's panic message, from its stderr, is in the error.
    assert!(message.contains("the value was boom"), "{message}");
    assert_eq!(err.context.offsets, Some((0, 1)));
    assert_eq!(err.kind.code(), "trap");
    // Message by message, as the worker re-runs a failed batch: a fresh
    // instance handles the good one, the bad one traps alone.
    let out = h
        .handle_batch(&batch(TOPIC, 0, 0, std::slice::from_ref(&ok)))
        .expect("a new instance");
    assert_eq!(outcomes(&out), [Outcome::Ok(vec![ok.clone()])]);
    assert!(h.handle_batch(&batch(TOPIC, 0, 1, &[boom])).is_err());
    let out = h
        .handle_batch(&batch(TOPIC, 0, 2, std::slice::from_ref(&ok)))
        .expect("and another");
    assert_eq!(outcomes(&out), [Outcome::Ok(vec![ok])]);
}

#[test]
fn a_reserved_environment_key_is_refused_naming_it() {
    let err = match transform("identity")
        .idle_handler(config(&[("REDPANDA_SECRET", "x")]), Limits::default())
        .with_output_topics(vec!["out".into()])
        .start()
    {
        Ok(()) => panic!("REDPANDA_ keys are the host's"),
        Err(e) => e,
    };
    assert_eq!(
        err.kind,
        PluginErrorKind::InitRejected(
            "environment variable `REDPANDA_SECRET` (a config key): keys starting with \
             REDPANDA_ are reserved for the host"
                .into()
        )
    );
}

#[test]
fn a_transform_that_runs_past_its_deadline_times_out() {
    // The conformance module spins forever when its value is "spin".
    let plugin = runtime()
        .load("abi-spin", &abi_module())
        .expect("the ABI module loads");
    let limits = Limits {
        batch_timeout_ms: 200,
        ..Limits::default()
    };
    let mut h = plugin
        .idle_handler(vec![], limits)
        .with_output_topics(vec!["first".into(), "second".into()]);
    let err = match h.handle_batch(&batch(TOPIC, 0, 0, &[Record::value("spin")])) {
        Ok(_) => panic!("expected a timeout"),
        Err(e) => e,
    };
    assert_eq!(err.kind, PluginErrorKind::Timeout { limit_ms: 200 });
}

/// A transform in WAT that reports what the ABI gives it: per batch, one
/// record (default topic) whose value is the ten header fields as
/// `read_batch_header` wrote them plus its return value (56 bytes); per
/// input record, one record to topic `second` with the attributes,
/// timestamp and offset `read_next_record` wrote (17 bytes), and one
/// (default topic) with the return codes of three bad writes: to an
/// undeclared topic, with unknown options, with a malformed payload (12
/// bytes). A value of `spin` makes it loop forever.
fn abi_module() -> Vec<u8> {
    let text = r#"
(module
  (import "redpanda_transform" "check_abi_version_2" (func $check))
  (import "redpanda_transform" "read_batch_header"
    (func $header (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "redpanda_transform" "read_next_record"
    (func $next (param i32 i32 i32 i32 i32) (result i32)))
  (import "redpanda_transform" "write_record" (func $write (param i32 i32) (result i32)))
  (import "redpanda_transform" "write_record_with_options"
    (func $write_to (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; header record: key null, value of 56 bytes (zigzag 112 = 0x70), no headers
  (data (i32.const 1000) "\01\70")
  ;; record meta record: key null, value of 17 bytes (0x22); the trailing
  ;; header count at 2019 stays 0
  (data (i32.const 2000) "\01\22")
  ;; malformed payload: a key length of -3
  (data (i32.const 2100) "\05\00\00")
  ;; options: topic "second", topic "nope", an unknown key
  (data (i32.const 4000) "\01\0csecond")
  (data (i32.const 4100) "\01\08nope")
  (data (i32.const 4200) "\02")
  ;; codes record: key null, value of 12 bytes (0x18)
  (data (i32.const 5000) "\01\18")
  (func (export "_start")
    (local $n i32)
    (call $check)
    (loop $batches
      (i32.store (i32.const 1054)
        (call $header (i32.const 1002) (i32.const 1010) (i32.const 1014) (i32.const 1018)
          (i32.const 1020) (i32.const 1024) (i32.const 1032) (i32.const 1040)
          (i32.const 1048) (i32.const 1050)))
      (drop (call $write (i32.const 1000) (i32.const 59)))
      (block $done
        (loop $records
          (local.set $n (call $next (i32.const 2002) (i32.const 2003) (i32.const 2011)
            (i32.const 3000) (i32.const 4096)))
          (br_if $done (i32.lt_s (local.get $n) (i32.const 0)))
          ;; payload "spin": key null (01), value length 4 (08), "spin"
          (if (i32.and
                (i32.eq (local.get $n) (i32.const 7))
                (i32.eq (i32.load (i32.const 3002)) (i32.const 0x6e697073)))
            (then (loop $forever (br $forever))))
          (drop (call $write_to (i32.const 2000) (i32.const 20) (i32.const 4000) (i32.const 8)))
          (i32.store (i32.const 5002)
            (call $write_to (i32.const 2000) (i32.const 20) (i32.const 4100) (i32.const 6)))
          (i32.store (i32.const 5006)
            (call $write_to (i32.const 2000) (i32.const 20) (i32.const 4200) (i32.const 1)))
          (i32.store (i32.const 5010) (call $write (i32.const 2100) (i32.const 3)))
          (drop (call $write (i32.const 5000) (i32.const 15)))
          (br $records)))
      (br $batches)))
)
"#;
    wat::parse_str(text).unwrap_or_else(|e| panic!("the ABI module does not assemble: {e}"))
}

fn header_value(
    fields: (i64, i32, i32, i16, i32, i64, i64, i64, i16, i32),
    returned: i32,
) -> Vec<u8> {
    let (a, b, c, d, e, f, g, h, i, j) = fields;
    let mut v = Vec::new();
    v.extend(a.to_le_bytes());
    v.extend(b.to_le_bytes());
    v.extend(c.to_le_bytes());
    v.extend(d.to_le_bytes());
    v.extend(e.to_le_bytes());
    v.extend(f.to_le_bytes());
    v.extend(g.to_le_bytes());
    v.extend(h.to_le_bytes());
    v.extend(i.to_le_bytes());
    v.extend(j.to_le_bytes());
    v.extend(returned.to_le_bytes());
    v
}

fn meta_value(timestamp: i64, offset: i64) -> Vec<u8> {
    let mut v = vec![0u8];
    v.extend(timestamp.to_le_bytes());
    v.extend(offset.to_le_bytes());
    v
}

fn codes_value(codes: [i32; 3]) -> Vec<u8> {
    codes.iter().flat_map(|c| c.to_le_bytes()).collect()
}

/// Redpanda Connect fills only `record_count`, writes the offset over the
/// timestamp and reads the options from the data buffer; the broker does
/// none of that, and neither does kwasm: each field is checked here.
#[test]
fn the_abi_fields_are_the_brokers_not_redpanda_connects() {
    let plugin = runtime()
        .load("abi", &abi_module())
        .expect("the ABI module loads");
    assert_eq!(plugin.abi(), PluginAbi::RedpandaTransform);
    let mut h = plugin
        .idle_handler(vec![], Limits::default())
        .with_output_topics(vec!["first".into(), "second".into()]);
    let input = batch(
        TOPIC,
        2,
        40,
        &[
            Record::value("1").key("a").timestamp(1_000),
            Record::value("22").header("h", "v").timestamp(3_000),
            Record::null().key("c").timestamp(2_000),
        ],
    );
    let out = h.handle_batch(&input).expect("runs");
    // Offsets 40, 41, 42 (consecutive in this batch); the largest payload
    // is record 1's: 01 04 '2' '2' 02 02 'h' 02 'v' = 9 bytes.
    let header = Record::value(header_value((40, 3, -1, 0, 2, 1_000, 3_000, -1, -1, -1), 9));
    // -3: a topic that is not a declared output; -2: unknown options; -2:
    // a payload the broker refuses.
    let codes = Record::value(codes_value([-3, -2, -2]));
    let meta = |ts, off| to(Some("second"), Record::value(meta_value(ts, off)));
    assert_eq!(
        outcomes(&out),
        [
            // Written before the first record was read: the broker has no
            // record to give it to, kwasm gives it to the first.
            Outcome::Ok(vec![header, meta(1_000, 40), codes.clone()]),
            Outcome::Ok(vec![meta(3_000, 41), codes.clone()]),
            Outcome::Ok(vec![meta(2_000, 42), codes]),
        ]
    );
}

#[test]
fn a_module_with_an_import_the_broker_does_not_provide_is_refused_naming_it() {
    let text = r#"
(module
  (import "redpanda_transform" "check_abi_version_2" (func))
  (import "wasi_snapshot_preview1" "fd_fdstat_set_rights" (func (param i32 i64 i64) (result i32)))
  (import "env" "open_socket" (func (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")))
"#;
    let bytes = wat::parse_str(text).expect("assembles");
    let err = runtime()
        .load("bad-imports", &bytes)
        .expect_err("unknown imports");
    assert_eq!(
        err.to_string(),
        "not a kwasm plugin: the Redpanda transform imports \
         `wasi_snapshot_preview1.fd_fdstat_set_rights`, `env.open_socket`, which neither \
         Redpanda nor kwasm provides (allowed: the `redpanda_transform` functions and \
         Redpanda's WASI preview 1 subset)"
    );
    // A known name with the wrong signature: the linker names it.
    let text = r#"
(module
  (import "redpanda_transform" "write_record" (func (param i64) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")))
"#;
    let err = runtime()
        .load("bad-type", &wat::parse_str(text).expect("assembles"))
        .expect_err("wrong type");
    let ValidationError::Link(message) = &err else {
        panic!("expected a link error, got {err:?}");
    };
    assert!(message.contains("write_record"), "{message}");
    // A core module that is not a transform is still refused as before.
    let plain = wat::parse_str("(module (func (export \"_start\")))").expect("assembles");
    assert_eq!(
        runtime()
            .load("plain", &plain)
            .expect_err("plain core module"),
        ValidationError::CoreModule
    );
}

#[test]
fn a_component_importing_wasi_http_is_refused_at_load_naming_the_import() {
    let text = r#"
(component
  (import "wasi:http/outgoing-handler@0.2.0" (instance))
  (core module $m
    (memory (export "memory") 1)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 64))
    (func (export "init") (param i32 i32) (result i32) (i32.const 0)))
  (core instance $i (instantiate $m))
  (func $init (param "config" (list (tuple string string))) (result (result (error string)))
    (canon lift (core func $i "init") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (instance $handler (export "init" (func $init)))
  (export "kwasm:plugin/handler@0.1.0" (instance $handler))
)
"#;
    let bytes = wat::parse_str(text).expect("assembles");
    let err = runtime()
        .load("http", &bytes)
        .expect_err("wasi:http is not linked");
    let ValidationError::WrongWorld(message) = &err else {
        panic!("expected a world error, got {err:?}");
    };
    assert!(
        message.starts_with(
            "the component imports `wasi:http/outgoing-handler@0.2.0`, which kwasm does not provide"
        ),
        "{message}"
    );
}

#[test]
fn a_transform_whose_start_returns_cannot_be_instantiated() {
    let text = r#"
(module
  (import "redpanda_transform" "check_abi_version_1" (func $check))
  (memory (export "memory") 1)
  (func (export "_start") (call $check)))
"#;
    let plugin = runtime()
        .load("returns", &wat::parse_str(text).expect("assembles"))
        .expect("loads: its imports are fine");
    let err = match plugin.idle_handler(vec![], Limits::default()).start() {
        Ok(()) => panic!("a transform must not return from _start"),
        Err(e) => e,
    };
    let PluginErrorKind::Instantiate(message) = &err.kind else {
        panic!("expected an instantiation error, got {err}");
    };
    assert!(
        message.starts_with("the transform's _start returned"),
        "{message}"
    );
}

#[test]
fn output_caps_stop_a_transform_at_the_write_that_crosses_them() {
    let records = [
        Record::value("aaaa"),
        Record::value("bbbb"),
        Record::value("cccc"),
    ];
    let run = |limits: Limits| {
        let mut h = transform("identity")
            .idle_handler(vec![], limits)
            .with_output_topics(vec!["out".into()]);
        match h.handle_batch(&batch(TOPIC, 0, 0, &records)) {
            Ok(out) => panic!("expected a cap, got {:?}", outcomes(&out)),
            Err(e) => e.kind,
        }
    };
    assert_eq!(
        run(Limits {
            max_output_records: 2,
            ..Limits::default()
        }),
        PluginErrorKind::TooManyRecords {
            records: 3,
            limit: 2
        }
    );
    assert_eq!(
        run(Limits {
            max_output_bytes: 10,
            ..Limits::default()
        }),
        PluginErrorKind::OutputTooLarge {
            bytes: 12,
            limit_bytes: 10,
            what: "per batch"
        }
    );
}
