//! End-to-end: Redpanda Data Transforms, built unmodified with Redpanda's
//! SDK, deployed through the admin API and run as pipelines on the real
//! broker. Each output is read to the end of every partition and must hold
//! every input exactly once; a panicking transform dead-letters exactly the
//! records that made it panic; an upload the host cannot satisfy is
//! refused and nothing is stored.
//!
//! Needs the broker `scripts/test` starts, `KWASM_PLUGIN_DIR` and
//! `KWASM_TRANSFORM_DIR`.

mod e2e;

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::Host;
use kwasm_tests::{OutRecord, Record, create_topic, produce, read_to_end, unique};
use serde_json::json;

fn transform_bytes(name: &str) -> Vec<u8> {
    let path = kwasm_tests::transform_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Uploads transform fixture `name` as plugin `as_name`; checks the API
/// reports it as a Redpanda transform.
fn deploy(host: &Host, name: &str, as_name: &str) {
    let (status, body) = host.call_patient(
        "POST",
        &format!("/v1/plugins/{as_name}"),
        &transform_bytes(name),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["abi"], "redpanda-transform", "{body}");
    let (status, body) = host.call("GET", &format!("/v1/plugins/{as_name}"), b"");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["versions"][0]["abi"], "redpanda-transform", "{body}");
}

fn apply(host: &Host, name: &str, spec: serde_json::Value) {
    let (status, body) = host.call(
        "PUT",
        &format!("/v1/pipelines/{name}"),
        spec.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
}

/// `count` keyed messages `m<i>` over 3 partitions.
fn inputs(count: usize) -> Vec<OutRecord> {
    (0..count)
        .map(|i| OutRecord::to((i % 3) as i32, format!("m{i}")).key(format!("k{i}")))
        .collect()
}

/// How many times each value occurs.
fn counts(records: &[Record]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in records {
        *counts.entry(r.value_str()).or_default() += 1;
    }
    counts
}

fn header(r: &Record, name: &str) -> String {
    String::from_utf8_lossy(r.header(name).unwrap_or_default()).into_owned()
}

/// Redpanda's `tee` example writes each record to every
/// `REDPANDA_OUTPUT_TOPIC_<i>`: the pipeline's `output` and
/// `extra_outputs`, in order. Both topics must hold every input exactly
/// once, with its key.
#[test]
fn tee_writes_every_input_exactly_once_to_each_declared_output() {
    let reg = unique("rp-reg");
    let input = unique("rp-in");
    let first = unique("rp-first");
    let second = unique("rp-second");
    let dlq = unique("rp-dlq");
    for t in [&input, &first, &second, &dlq] {
        create_topic(t, 3);
    }
    let host = Host::start_bare("rp-host", &reg);
    host.wait_ready(Duration::from_secs(60));
    deploy(&host, "tee", "tee");
    apply(
        &host,
        "tee",
        json!({
            "plugin": "tee@1",
            "inputs": [input],
            "output": first,
            "extra_outputs": [second],
            "dead_letter_topic": dlq,
            "batch": {"max_messages": 64, "max_wait_ms": 10},
        }),
    );
    const N: usize = 300;
    produce(&input, inputs(N));
    let expected: BTreeMap<String, usize> = (0..N).map(|i| (format!("m{i}"), 1)).collect();
    for topic in [&first, &second] {
        let out = read_to_end(topic, N, Duration::from_secs(120));
        assert_eq!(counts(&out), expected, "{topic}: every input exactly once");
        for r in &out {
            let i = &r.value_str()[1..];
            assert_eq!(r.key_str(), format!("k{i}"), "{topic}: the key is kept");
        }
    }
    let dead = read_to_end(&dlq, 0, Duration::from_secs(2));
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:?}");
}

/// A transform that panics on `boom`: the broker would stop the whole
/// transform; kwasm re-runs the failed batch message by message and
/// dead-letters exactly the guilty records (kind `trap`, the panic message
/// and source offset in the headers), and every other record goes out
/// exactly once.
#[test]
fn a_panicking_transform_dead_letters_exactly_the_records_it_panics_on() {
    let reg = unique("rp-reg");
    let input = unique("rp-in");
    let output = unique("rp-out");
    let dlq = unique("rp-dlq");
    for t in [&input, &output, &dlq] {
        create_topic(t, 3);
    }
    let host = Host::start_bare("rp-host", &reg);
    host.wait_ready(Duration::from_secs(60));
    deploy(&host, "panic", "panicky");
    apply(
        &host,
        "panicky",
        json!({
            "plugin": "panicky@1",
            "inputs": [input],
            "output": output,
            "dead_letter_topic": dlq,
            "retry": {"max_attempts": 1, "initial_backoff_ms": 10},
            "batch": {"max_messages": 32, "max_wait_ms": 10},
        }),
    );
    const N: usize = 120;
    let is_boom = |i: usize| i % 10 == 7;
    let records: Vec<OutRecord> = (0..N)
        .map(|i| {
            let value = if is_boom(i) {
                "boom".to_owned()
            } else {
                format!("m{i}")
            };
            OutRecord::to((i % 3) as i32, value).key(format!("k{i}"))
        })
        .collect();
    produce(&input, records);
    let booms = (0..N).filter(|&i| is_boom(i)).count();
    let out = read_to_end(&output, N - booms, Duration::from_secs(180));
    let expected: BTreeMap<String, usize> = (0..N)
        .filter(|&i| !is_boom(i))
        .map(|i| (format!("m{i}"), 1))
        .collect();
    assert_eq!(counts(&out), expected);
    let dead = read_to_end(&dlq, booms, Duration::from_secs(60));
    let mut dead_keys: Vec<String> = dead.iter().map(Record::key_str).collect();
    dead_keys.sort();
    let mut boom_keys: Vec<String> = (0..N)
        .filter(|&i| is_boom(i))
        .map(|i| format!("k{i}"))
        .collect();
    boom_keys.sort();
    assert_eq!(dead_keys, boom_keys, "exactly the boom records, once each");
    for r in &dead {
        assert_eq!(r.value_str(), "boom");
        assert_eq!(header(r, "kwasm.error.kind"), "trap");
        assert!(
            header(r, "kwasm.error.message").contains("the value was boom"),
            "{}",
            header(r, "kwasm.error.message")
        );
        assert_eq!(header(r, "kwasm.source.topic"), input);
    }
}

/// The SDK's logging example prints `key:value` on stderr for every record
/// and, at start, what it read from its environment: the host's log shows
/// both, the environment holding the pipeline's config (`GREETING`) and
/// the input topic; the output holds every input exactly once.
#[test]
fn a_logging_transform_logs_to_the_host_and_sees_its_environment() {
    let reg = unique("rp-reg");
    let input = unique("rp-in");
    let output = unique("rp-out");
    for t in [&input, &output] {
        create_topic(t, 1);
    }
    let host = Host::start_bare("rp-host", &reg);
    host.wait_ready(Duration::from_secs(60));
    deploy(&host, "logging", "logger");
    apply(
        &host,
        "logger",
        json!({
            "plugin": "logger@1",
            "config": {"GREETING": "hello"},
            "inputs": [input],
            "output": output,
        }),
    );
    const N: usize = 20;
    produce(
        &input,
        inputs(N).into_iter().map(|r| OutRecord {
            partition: Some(0),
            ..r
        }),
    );
    let out = read_to_end(&output, N, Duration::from_secs(120));
    let expected: BTreeMap<String, usize> = (0..N).map(|i| (format!("m{i}"), 1)).collect();
    assert_eq!(counts(&out), expected);
    assert!(
        host.process.wait_for_log(
            &format!("started: input={input} greeting=hello"),
            Duration::from_secs(10)
        ),
        "the start line with the environment: {}",
        host.process.log_contents()
    );
    let log = host.process.log_contents();
    for i in 0..N {
        assert!(log.contains(&format!("k{i}:m{i}")), "line for m{i} missing");
    }
}

/// An upload the host cannot run is a 400 naming the import, and nothing
/// is stored under the name.
#[test]
fn an_upload_with_an_import_the_host_cannot_satisfy_is_refused_and_not_stored() {
    let reg = unique("rp-reg");
    let host = Host::start_bare("rp-host", &reg);
    host.wait_ready(Duration::from_secs(60));
    let module = wat_module(
        r#"(module
  (import "redpanda_transform" "check_abi_version_2" (func))
  (import "redpanda_schema_registry" "get_schema_definition" (func (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")))"#,
    );
    let (status, body) = host.call_patient("POST", "/v1/plugins/needs-sr", &module);
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`redpanda_schema_registry.get_schema_definition`"),
        "{body}"
    );
    let (status, _) = host.call("GET", "/v1/plugins/needs-sr", b"");
    assert_eq!(status, 404, "nothing stored");
}

fn wat_module(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap_or_else(|e| panic!("does not assemble: {e}"))
}
