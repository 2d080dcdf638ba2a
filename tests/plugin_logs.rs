//! End-to-end: plugin logs as a stream (issue 15). Two hosts with
//! `registry.plugin_logs` run one pipeline whose plugin logs a line per
//! message; `kwasm logs PIPELINE -f` against host A prints a line from
//! the plugin on host B within 2 s; the logs topic holds it keyed by the
//! pipeline; no pipeline may read or write that topic.

mod e2e;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use e2e::{Host, PipelineDef, pipeline_toml};
use kwasm_tests::{OutRecord, create_topic, kwasm_bin, produce, read_to_end, unique, wait_until};
use serde_json::{Value, json};

const PARTITIONS: i32 = 4;

/// How long a line may take from a plugin on one host to `kwasm logs -f`
/// on another (the bound).
const WITHIN: Duration = Duration::from_secs(2);

#[test]
fn kwasm_logs_follows_a_line_from_a_plugin_on_another_host_within_2_s() {
    let input = unique("logs-in");
    let output = format!("{input}-out");
    let group = format!("{input}-group");
    let logs_topic = format!("{input}-plugin-logs");
    create_topic(&input, PARTITIONS);
    create_topic(&output, PARTITIONS);
    let pipeline = PipelineDef {
        name: "logging",
        plugin: "misbehave",
        config: &[("mode", "log")],
        input: &input,
        output: &output,
        group: &group,
        dead_letter: None,
    };
    // These lines land in the generated [registry] table.
    let text = format!(
        "plugin_logs = true\nlogs_topic = {logs_topic:?}\nlogs_partitions = 2\n{}",
        pipeline_toml(&pipeline)
    );
    let a = Host::start_custom("host-a", &group, "", &text);
    let b = Host::start_custom("host-b", &group, "", &text);
    a.wait_ready(Duration::from_secs(90));
    b.wait_ready(Duration::from_secs(90));
    let mut held = (BTreeSet::new(), BTreeSet::new());
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
            held = (
                a.partitions(&input).unwrap_or_default(),
                b.partitions(&input).unwrap_or_default(),
            );
            !held.0.is_empty()
                && !held.1.is_empty()
                && held.0.len() + held.1.len() == PARTITIONS as usize
        }),
        "the partitions never spread over both hosts: {held:?}"
    );
    // Warm every partition's plugin instance, so the timed line measures
    // the log path, not a first instantiation.
    produce(
        &input,
        (0..PARTITIONS).map(|p| OutRecord::to(p, format!("warm{p}"))),
    );
    assert_eq!(
        read_to_end(&output, PARTITIONS as usize, Duration::from_secs(60)).len(),
        PARTITIONS as usize
    );

    let url = format!("http://127.0.0.1:{}", a.admin_port);
    let mut follower = Command::new(kwasm_bin())
        .args(["logs", "logging", "-f", "--url", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kwasm logs -f");
    let stdout = follower.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    // The warm-up lines of both hosts arrive first.
    let mut seen = Vec::new();
    let warmed = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        seen.extend(rx.try_iter().map(|(_, l)| l));
        seen.iter().filter(|l| l.contains("saw offset 0")).count() == PARTITIONS as usize
    });
    assert!(
        warmed,
        "the follower printed the warm-up lines of every partition: {seen:?}"
    );

    // One message to a partition host B holds; its line must reach the
    // follower of host A within 2 s.
    let b_partition = *held.1.iter().next().expect("a partition of host B");
    let sent = Instant::now();
    let written = produce(&input, [OutRecord::to(b_partition, "timed")]);
    let offset = written[0].1;
    let wanted =
        format!("host-b misbehave {input}/{b_partition}@{offset} INFO: saw offset {offset}");
    let mut got = None;
    while sent.elapsed() < WITHIN + Duration::from_secs(8) {
        if let Ok((at, line)) = rx.recv_timeout(Duration::from_millis(50))
            && line.ends_with(&wanted)
        {
            got = Some((at.duration_since(sent), line));
            break;
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    let (latency, line) = got.unwrap_or_else(|| panic!("`kwasm logs -f` never printed {wanted:?}"));
    println!(
        "plugin on host-b -> kwasm logs -f on host-a: {:.0} ms: {line}",
        latency.as_secs_f64() * 1000.0
    );
    assert!(
        latency <= WITHIN,
        "the line took {latency:?}, over {WITHIN:?}"
    );

    // The topic holds it as JSON keyed by the pipeline.
    let records = read_to_end(
        &logs_topic,
        PARTITIONS as usize + 1,
        Duration::from_secs(30),
    );
    let timed: Vec<Value> = records
        .iter()
        .filter(|r| r.key_str() == "logging")
        .filter_map(|r| serde_json::from_str::<Value>(&r.value_str()).ok())
        .filter(|v| v["offset"] == offset && v["partition"] == b_partition)
        .collect();
    assert_eq!(timed.len(), 1, "{records:?}");
    let v = &timed[0];
    assert_eq!(
        (
            &v["host"],
            &v["pipeline"],
            &v["plugin"],
            &v["topic"],
            &v["level"],
            &v["stream"],
            &v["message"]
        ),
        (
            &json!("host-b"),
            &json!("logging"),
            &json!("misbehave"),
            &json!(input),
            &json!("info"),
            &json!("log"),
            &json!(format!("saw offset {offset}"))
        ),
        "{v}"
    );
    assert!(
        records.iter().all(|r| r.key_str() == "logging"),
        "every line keyed by its pipeline"
    );

    // The logs topic is control plane: no pipeline may write or read it.
    let wasm = std::fs::read(kwasm_tests::plugin_path("misbehave")).expect("misbehave.wasm");
    let (status, answer) = a.call_patient("POST", "/v1/plugins/p", &wasm);
    assert_eq!(status, 201, "{answer}");
    for (field, body) in [
        (
            "output",
            json!({"plugin": "p@1", "inputs": [input], "output": logs_topic}),
        ),
        (
            "inputs",
            json!({"plugin": "p@1", "inputs": [logs_topic], "output": output}),
        ),
    ] {
        let (status, answer) = a.call("PUT", "/v1/pipelines/snoop", body.to_string().as_bytes());
        let message = answer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(status, 400, "{field}: {answer}");
        assert!(
            message.contains(field) && message.contains(&logs_topic),
            "the refusal names the field and the topic: {message}"
        );
    }
}
