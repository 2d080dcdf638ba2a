//! End-to-end: nothing that flows through the data plane reaches the
//! control plane. Anyone who can produce to a pipeline's input controls
//! what its plugin returns; the registry's topics, Kafka's `__` topics and
//! the pipeline's own inputs must stay out of reach whatever it returns,
//! and the registry must not start what the API would refuse, however the
//! record got into its topic.

mod e2e;

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::{Host, http_get};
use kwasm_tests::{OutRecord, create_topic, plugin_path, produce, unique, wait_until};
use serde_json::{Value, json};

fn deploy_router(host: &Host) {
    let wasm = std::fs::read(plugin_path("router")).expect("router.wasm");
    let (status, body) = host.call("POST", "/v1/plugins/router", &wasm);
    assert_eq!(status, 201, "{body}");
}

fn pipeline_names(host: &Host) -> Vec<String> {
    let (status, body) = host.call("GET", "/v1/pipelines", b"");
    assert_eq!(status, 200, "{body}");
    body["pipelines"]
        .as_array()
        .expect("pipelines array")
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn header(r: &kwasm_tests::Record, name: &str) -> String {
    String::from_utf8_lossy(r.header(name).unwrap_or_default()).into_owned()
}

/// The shipped `router` with `by=key` and no routes writes each message to
/// the topic its key names. Before outputs were declared, a message keyed
/// `_kwasm_pipelines` whose value was a pipeline definition deployed that
/// pipeline on every host.
#[test]
fn a_router_keyed_by_anyone_cannot_reach_the_control_plane() {
    let reg = unique("tb-reg");
    let input = unique("tb-in");
    let output = unique("tb-out");
    let extra = unique("tb-extra");
    let dlq = unique("tb-dlq");
    for t in [&input, &output, &extra, &dlq] {
        create_topic(t, 2);
    }
    let host = Host::start_bare("tb-host", &reg);
    host.wait_ready(Duration::from_secs(60));
    deploy_router(&host);
    let spec = json!({
        "plugin": "router@1",
        "config": {"by": "key"},
        "inputs": [input],
        "output": output,
        "extra_outputs": [extra],
        "dead_letter_topic": dlq,
        "batch": {"max_messages": 16, "max_wait_ms": 10},
    });
    let (status, body) = host.call("PUT", "/v1/pipelines/router", spec.to_string().as_bytes());
    assert_eq!(status, 200, "{body}");
    let pipelines_topic = format!("{reg}-pipelines");
    let pipelines_records_before = kwasm_tests::end_offsets(&pipelines_topic);

    // What an attacker writes: a pipeline definition, keyed at each
    // control-plane topic, at the input itself (an amplification loop),
    // and at a topic the pipeline never declared.
    let attack = json!({"plugin": "router@1", "inputs": [input], "output": "stolen"}).to_string();
    let hostile: Vec<String> = vec![
        format!("{reg}-plugins"),
        format!("{reg}-pipelines"),
        format!("{reg}-members"),
        "_kwasm_pipelines".into(),
        "__consumer_offsets".into(),
        "__transaction_state".into(),
        input.clone(),
        unique("tb-undeclared"),
    ];
    let mut records = Vec::new();
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for round in 0..5 {
        for key in &hostile {
            records.push(OutRecord::to(round % 2, attack.clone()).key(key.clone()));
        }
        for key in [&output, &extra] {
            records.push(OutRecord::to(round % 2, format!("fine-{round}")).key(key.clone()));
            *expected.entry(key.clone()).or_default() += 1;
        }
    }
    produce(&input, records);

    let dead = kwasm_tests::read_to_end(&dlq, hostile.len() * 5, Duration::from_secs(90));
    let out = kwasm_tests::read_to_end(&output, expected[&output], Duration::from_secs(60));
    let extra_out = kwasm_tests::read_to_end(&extra, expected[&extra], Duration::from_secs(60));
    assert_eq!(
        dead.len(),
        hostile.len() * 5,
        "every hostile message dead-lettered exactly once"
    );
    let mut by_key: BTreeMap<String, usize> = BTreeMap::new();
    for r in &dead {
        assert_eq!(header(r, "kwasm.error.kind"), "output-not-allowed");
        let key = r.key_str();
        assert!(
            header(r, "kwasm.error.message").contains(&format!("`{key}`")),
            "the reason names the topic: {}",
            header(r, "kwasm.error.message")
        );
        *by_key.entry(key).or_default() += 1;
    }
    assert_eq!(
        by_key,
        hostile
            .iter()
            .map(|k| (k.clone(), 5))
            .collect::<BTreeMap<_, _>>()
    );
    assert_eq!(out.len(), expected[&output], "declared output flows");
    assert_eq!(
        extra_out.len(),
        expected[&extra],
        "declared extra output flows"
    );
    assert_eq!(
        kwasm_tests::end_offsets(&pipelines_topic),
        pipelines_records_before,
        "nothing was written to the pipelines topic"
    );
    assert_eq!(
        kwasm_tests::end_offsets(&input).iter().sum::<i64>(),
        50,
        "no loop"
    );
    assert_eq!(pipeline_names(&host), vec!["router".to_owned()]);
}

/// A record written straight to the pipelines topic by an outside
/// producer (no API, no validation) used to be started by every host.
#[test]
fn a_pipeline_record_written_around_the_api_is_skipped_not_started() {
    let reg = unique("tb-replay");
    let input = unique("tb-replay-in");
    create_topic(&input, 1);
    let host = Host::start_bare("tb-replay-host", &reg);
    host.wait_ready(Duration::from_secs(60));
    deploy_router(&host);
    let pipelines_topic = format!("{reg}-pipelines");
    let evil = json!({"plugin": "router@1", "config": {"by": "key"}, "inputs": [input],
        "output": "__consumer_offsets"});
    let fine = json!({"plugin": "router@1", "config": {"by": "key"}, "inputs": [input],
        "output": unique("tb-replay-out")});
    produce(
        &pipelines_topic,
        [
            OutRecord::to(0, evil.to_string()).key("evil"),
            OutRecord::to(0, fine.to_string()).key("fine"),
        ],
    );
    // The follower applies records in order: once `fine` shows, `evil`
    // was seen and judged.
    let seen = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        pipeline_names(&host).contains(&"fine".to_owned())
    });
    assert!(seen, "the valid record never appeared");
    assert_eq!(pipeline_names(&host), vec!["fine".to_owned()]);
    assert!(
        host.process.wait_for_log(
            "skipping an invalid registry record",
            Duration::from_secs(5)
        ),
        "no log line for the skipped record:\n{}",
        host.process.log_contents()
    );
    let log = host.process.log_contents();
    assert!(log.contains("__consumer_offsets"), "the log names why");
    let (status, metrics) = http_get(host.admin_port, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    let skipped = metrics
        .lines()
        .find(|l| l.starts_with("kwasm_registry_records_skipped_total") && l.contains("pipelines"))
        .unwrap_or_else(|| panic!("no skipped-records metric in:\n{metrics}"));
    assert!(skipped.ends_with(" 1"), "{skipped}");
}

/// Every field that names a topic is checked against the same rule at the
/// API, and names follow one rule; a regex that validates also subscribes.
#[test]
fn the_api_refuses_pipelines_that_would_touch_the_control_plane() {
    let reg = unique("tb-api");
    let input = unique("tb-api-in");
    let host = Host::start_bare("tb-api-host", &reg);
    host.wait_ready(Duration::from_secs(60));
    deploy_router(&host);
    let base = json!({"plugin": "router@1", "config": {"by": "key"}, "inputs": [input],
        "output": unique("tb-api-out")});
    let with = |field: &str, value: Value| {
        let mut p = base.clone();
        p[field] = value;
        if field == "input_regex" {
            p.as_object_mut().expect("object").remove("inputs");
        }
        p
    };
    let cases = [
        ("output", with("output", json!("__consumer_offsets"))),
        ("output", with("output", json!(format!("{reg}-pipelines")))),
        ("output", with("output", json!(input))),
        (
            "dead_letter_topic",
            with("dead_letter_topic", json!(format!("{reg}-plugins"))),
        ),
        (
            "extra_outputs[0]",
            with("extra_outputs", json!(["__transaction_state"])),
        ),
        (
            "inputs[0]",
            with("inputs", json!([format!("{reg}-members")])),
        ),
        ("input_regex", with("input_regex", json!("(("))),
        ("outputs_regex", with("outputs_regex", json!("[a-"))),
        (
            "batch.max_messages",
            with("batch", json!({"max_messages": 1_000_000_000_000u64})),
        ),
    ];
    for (field, body) in cases {
        let (status, answer) = host.call("PUT", "/v1/pipelines/p", body.to_string().as_bytes());
        assert_eq!(status, 400, "{field}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{field}: {message}");
    }
    // A short body: the name is refused before the body is read, and a
    // client still sending a large one would see the connection close.
    let wasm = b"\0asm\x0d\0\x01\0";
    for name in ["-", "_kwasm_plugins", "-rf", ".hidden"] {
        let (status, answer) = host.call(
            "PUT",
            &format!("/v1/pipelines/{name}"),
            base.to_string().as_bytes(),
        );
        assert_eq!(status, 400, "pipeline `{name}`: {answer}");
        let (status, answer) = host.call("POST", &format!("/v1/plugins/{name}"), wasm);
        assert_eq!(status, 400, "plugin `{name}`: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("name"), "plugin `{name}`: {message}");
    }
    assert!(pipeline_names(&host).is_empty(), "nothing stored");

    // What validates subscribes: a POSIX ERE alternation and class, as
    // librdkafka compiles it, picks exactly the matching topics.
    let prefix = unique("tb-re");
    let (eu, us, asia) = (
        format!("{prefix}-eu1"),
        format!("{prefix}-us2"),
        format!("{prefix}-asia1"),
    );
    for t in [&eu, &us, &asia] {
        create_topic(t, 1);
    }
    let out = unique("tb-re-out");
    create_topic(&out, 1);
    let mut regex_pipeline = with("input_regex", json!(format!("{prefix}-(eu|us)[0-9]+$")));
    regex_pipeline["output"] = json!(out);
    regex_pipeline["config"] = json!({"by": "key", "default": out});
    let (status, answer) = host.call(
        "PUT",
        "/v1/pipelines/regional",
        regex_pipeline.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{answer}");
    for t in [&eu, &us, &asia] {
        produce(t, [OutRecord::to(0, t.clone())]);
    }
    let records = kwasm_tests::read_to_end(&out, 2, Duration::from_secs(60));
    let mut values: Vec<String> = records.iter().map(|r| r.value_str()).collect();
    values.sort();
    assert_eq!(
        values,
        vec![eu, us],
        "only the matching topics are consumed"
    );
}
