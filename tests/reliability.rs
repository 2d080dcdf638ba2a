//! End-to-end: partitions never stop for good, and one partition's or
//! pipeline's trouble does not hold up the others (issue 10, items 5–9).
//! Each test failed on the code before its fix; the doc comment says how.

mod e2e;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use e2e::{Host, PipelineDef, Protocol, assignment_rows, http_get, metric, pipeline_toml};
use kwasm_tests::{
    OutRecord, committed_to_end, create_topic, end_offsets, plugin_path, produce, read_to_end,
    unique, wait_committed_to_end, wait_until,
};
use serde_json::{Value, json};

fn header(r: &kwasm_tests::Record, name: &str) -> String {
    String::from_utf8_lossy(r.header(name).unwrap_or_default()).into_owned()
}

/// Values `"{p}:{i}"` spread over partitions `0..partitions`.
fn produce_numbered(topic: &str, partitions: i32, per_partition: usize) -> Vec<String> {
    let mut values = Vec::new();
    let mut records = Vec::new();
    for p in 0..partitions {
        for i in 0..per_partition {
            let v = format!("{p}:{i}");
            records.push(OutRecord::to(p, v.clone()).key(format!("k{i}")));
            values.push(v);
        }
    }
    produce(topic, records);
    values
}

/// Item 5. librdkafka keeps an application's pause across unassign and
/// assign. Each partition starts with a message the plugin spends 8 s on,
/// so its worker's queue fills behind it and the partition stays paused; a
/// second host joins then and takes one partition (revoked while paused),
/// and leaves again; when the partition comes back to the first host it
/// must be fetched. Before the fix it was never resumed: its messages after
/// the handoff were never processed and its lag stayed.
mod a_partition_paused_when_revoked_is_fetched_again_when_it_returns {
    #[test]
    fn classic() {
        super::paused_partition_returns(super::Protocol::Classic);
    }

    #[test]
    fn consumer() {
        super::paused_partition_returns(super::Protocol::Consumer);
    }
}

fn paused_partition_returns(protocol: Protocol) {
    let input = unique("rel-pause-in");
    let output = unique("rel-pause-out");
    let group = unique("rel-pause-g");
    create_topic(&input, 2);
    create_topic(&output, 2);
    let pipeline = PipelineDef {
        name: "slow",
        plugin: "misbehave",
        config: &[
            ("mode", "slow"),
            ("delay_ms", "0"),
            ("poison", "stall"),
            ("stall_ms", "8000"),
        ],
        input: &input,
        output: &output,
        group: &group,
        dead_letter: None,
    };
    // One message per batch (a 256-message queue) and a deadline above the
    // stall.
    let text = pipeline_toml(&pipeline).replace(
        "[pipeline.retry]",
        "[pipeline.batch]\nmax_messages = 1\nmax_wait_ms = 1\n[pipeline.limits]\nbatch_timeout_ms = 20000\n[pipeline.retry]",
    );
    let mut values = Vec::new();
    let mut records = Vec::new();
    for p in 0..2 {
        records.push(OutRecord::to(p, "stall"));
        values.push("stall".to_owned());
        for i in 0..2_000 {
            let v = format!("{p}:{i}");
            records.push(OutRecord::to(p, v.clone()).key(format!("k{i}")));
            values.push(v);
        }
    }
    produce(&input, records);
    let a = Host::start_pipelines_as("pause-a", &group, &text, protocol);
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
            let rows = assignment_rows(&a, "slow");
            rows.len() == 2 && rows.iter().all(|r| r["state"] == "paused")
        }),
        "both partitions paused on host a: {:?}",
        assignment_rows(&a, "slow")
    );
    let mut b = Host::start_pipelines_as("pause-b", &group, &text, protocol);
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
            b.partitions(&input).is_some_and(|p| p.len() == 1)
        }),
        "host b took one partition"
    );
    std::thread::sleep(Duration::from_secs(1));
    b.process.sigterm();
    let status = b.process.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "host b exits 0: {status:?}"
    );
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
            a.partitions(&input).is_some_and(|p| p.len() == 2)
        }),
        "the partition came back to host a"
    );
    let out = read_to_end(&output, values.len(), Duration::from_secs(90));
    let seen: BTreeMap<String, usize> = out.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.value_str()).or_default() += 1;
        m
    });
    let missing: Vec<&String> = values.iter().filter(|v| !seen.contains_key(*v)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} messages never processed (first: {:?}); host a: {:?}",
        missing.len(),
        values.len(),
        missing.first(),
        assignment_rows(&a, "slow")
    );
    let (ends, committed) = wait_committed_to_end(&group, &input, Duration::from_secs(30));
    assert!(
        committed_to_end(&ends, &committed),
        "every partition committed to its end (lag 0): {committed:?} vs {ends:?}"
    );
}

/// The `released` log line's drain time of `pipeline`'s partitions, in ms.
fn drain_times_ms(log: &str, pipeline: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("partition released") && l.contains(&format!("pipeline={pipeline}")))
        .filter_map(|l| {
            let (_, rest) = l.split_once("drain_ms=")?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// Item 6. Two pipelines on one host; the neighbour's records cannot be
/// delivered for now (its output topic does not exist and the host may not
/// create it, so librdkafka holds them for `topic.metadata.propagation.max.ms`,
/// 30 s, as it would for a topic being created). A rebalance of the
/// other pipeline must not wait for them: before the fix the revoke flushed
/// the whole shared producer and took the full grace period (10 s).
#[test]
fn a_rebalance_of_one_pipeline_does_not_wait_for_a_neighbours_records() {
    let stuck_in = unique("rel-stuck-in");
    let stuck_out = unique("rel-stuck-out");
    let quiet_in = unique("rel-quiet-in");
    let quiet_out = unique("rel-quiet-out");
    let stuck_group = unique("rel-stuck-g");
    let quiet_group = unique("rel-quiet-g");
    for t in [&stuck_in, &quiet_in, &quiet_out] {
        create_topic(t, 4);
    }
    let stuck = PipelineDef {
        name: "stuck",
        plugin: "passthrough",
        config: &[],
        input: &stuck_in,
        output: &stuck_out,
        group: &stuck_group,
        dead_letter: None,
    };
    let quiet = PipelineDef {
        name: "quiet",
        plugin: "passthrough",
        config: &[],
        input: &quiet_in,
        output: &quiet_out,
        group: &quiet_group,
        dead_letter: None,
    };
    produce_numbered(&quiet_in, 4, 50);
    let a = Host::start_with_kafka_properties(
        "stuck-a",
        &stuck_group,
        r#""allow.auto.create.topics" = "false""#,
        &format!("{}{}", pipeline_toml(&stuck), pipeline_toml(&quiet)),
    );
    a.wait_ready(Duration::from_secs(60));
    read_to_end(&quiet_out, 200, Duration::from_secs(60));
    produce_numbered(&stuck_in, 4, 50);
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            assignment_rows(&a, "stuck")
                .iter()
                .filter(|r| r["position"].as_i64() == Some(50))
                .count()
                == 4
        }),
        "the stuck pipeline has handed its records to the producer: {:?}",
        assignment_rows(&a, "stuck")
    );
    // A second host for the quiet pipeline only: host a gives up two of
    // its partitions.
    let b = Host::start_custom("stuck-b", &quiet_group, "", &pipeline_toml(&quiet));
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
            b.partitions(&quiet_in).is_some_and(|p| p.len() == 2)
        }),
        "host b took two quiet partitions"
    );
    let log = a.process.log_contents();
    let times = drain_times_ms(&log, "quiet");
    println!("quiet pipeline's revoke on host a, drain times (ms): {times:?}");
    let released: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("partition released"))
        .collect();
    assert_eq!(
        times.len(),
        2,
        "two quiet partitions released by host a: {released:#?}"
    );
    assert!(
        times.iter().all(|&t| t < 1_000),
        "a rebalance of the quiet pipeline waited for its neighbour's records: {times:?} ms"
    );
    let log = a.process.log_contents();
    assert!(
        !log.contains("output record rejected by the broker") && !log.contains("delivery failed"),
        "the neighbour's records were still in flight during the rebalance"
    );
}

/// Item 7. `workers = 1`: one call permit for the whole host. A message on
/// p0 retried with a long backoff must not stop p1. Before the fix the
/// permit was held through the backoff: p1 waited for every retry of p0
/// (3 × 8 s here) and this test saw p0 dead-lettered before p1 was done.
#[test]
fn a_retry_backoff_holds_no_permit() {
    let input = unique("rel-permit-in");
    let output = unique("rel-permit-out");
    let dlq = unique("rel-permit-dlq");
    let group = unique("rel-permit-g");
    for t in [&input, &output, &dlq] {
        create_topic(t, 2);
    }
    let pipeline = PipelineDef {
        name: "permit",
        plugin: "misbehave",
        config: &[("mode", "poison"), ("poison_action", "retryable")],
        input: &input,
        output: &output,
        group: &group,
        dead_letter: Some(&dlq),
    };
    let text = pipeline_toml(&pipeline).replace(
        "[pipeline.retry]\nmax_attempts = 2\ninitial_backoff_ms = 10",
        "[pipeline.retry]\nmax_attempts = 4\ninitial_backoff_ms = 8000\nmax_backoff_ms = 8000",
    );
    let host = Host::start_custom("permit-a", &group, "workers = 1", &text);
    host.wait_ready(Duration::from_secs(60));
    produce(&input, [OutRecord::to(0, "poison")]);
    // The poison's first attempt has run once p0 shows it as fetched.
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    produce(
        &input,
        (0..100).map(|i| OutRecord::to(1, format!("fine-{i}"))),
    );
    let out = read_to_end(&output, 100, Duration::from_secs(60));
    let p1_done = started.elapsed();
    let dead_so_far = end_offsets(&dlq).iter().sum::<i64>();
    println!("p1 drained in {p1_done:?} while p0 backed off (dead letters so far: {dead_so_far})");
    assert_eq!(out.len(), 100, "p1 flowed");
    assert_eq!(
        dead_so_far, 0,
        "p1 finished only after p0's retries were exhausted: the backoff held the permit"
    );
    let dead = read_to_end(&dlq, 1, Duration::from_secs(60));
    assert_eq!(dead.len(), 1);
    assert_eq!(header(&dead[0], "kwasm.error.kind"), "retries-exhausted");
    assert_eq!(header(&dead[0], "kwasm.attempts"), "4");
}

/// Item 8. A plugin whose `init` traps can never be instantiated: the
/// partition stalls, visibly (`/v1/assignments`, `/readyz`, the metric),
/// nothing is dead-lettered or committed, and a hot deploy of a working
/// config resumes it with nothing lost. Before the fix an init trap was
/// taken for the message's fault: every message was dead-lettered
/// (`trap`) and committed.
#[test]
fn a_plugin_that_cannot_start_stalls_the_partition_visibly_and_loses_nothing() {
    let reg = unique("rel-stall-reg");
    let input = unique("rel-stall-in");
    let output = unique("rel-stall-out");
    let dlq = unique("rel-stall-dlq");
    for t in [&input, &output, &dlq] {
        create_topic(t, 1);
    }
    let host = Host::start_bare("stall-a", &reg);
    host.wait_ready(Duration::from_secs(60));
    let wasm = std::fs::read(plugin_path("misbehave")).expect("misbehave.wasm");
    let (status, body) = host.call("POST", "/v1/plugins/misbehave", &wasm);
    assert_eq!(status, 201, "{body}");
    // A first pipeline compiles the plugin (seconds in a debug build), so
    // the next deploy's test instance is made at once.
    let warm_in = unique("rel-stall-warm");
    create_topic(&warm_in, 1);
    let warm = json!({"plugin": "misbehave@1", "config": {"mode": "ok"},
        "inputs": [warm_in], "output": output});
    let (status, body) = host.call("PUT", "/v1/pipelines/warm", warm.to_string().as_bytes());
    assert_eq!(status, 200, "{body}");
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
            assignment_rows(&host, "warm").len() == 1
        }),
        "the warm-up pipeline runs"
    );
    // The deploy's test instance starts; the partition's, made at its first
    // batch after `after`, traps in `init`.
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        + 2_000;
    let spec = |mode: &str| {
        json!({
            "plugin": "misbehave@1",
            "config": {"mode": mode, "tag": "fixed", "after_unix_ms": after.to_string()},
            "inputs": [input],
            "output": output,
            "dead_letter_topic": dlq,
            "retry": {"max_attempts": 2, "initial_backoff_ms": 10, "max_backoff_ms": 10},
        })
        .to_string()
    };
    let (status, body) = host.call(
        "PUT",
        "/v1/pipelines/stall",
        spec("init-trap-after").as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
            assignment_rows(&host, "stall").len() == 1
        }),
        "the partition is assigned"
    );
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        <= after + 100
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    produce(&input, (0..20).map(|i| OutRecord::to(0, format!("m{i}"))));
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
            assignment_rows(&host, "stall")
                .iter()
                .any(|r| r["state"] == "stalled")
        }),
        "the partition shows as stalled: {:?}",
        assignment_rows(&host, "stall")
    );
    let rows = assignment_rows(&host, "stall");
    let reason = rows[0]["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("cannot instantiate"), "reason: {reason}");
    assert!(reason.contains("trap"), "reason names the trap: {reason}");
    let (ready, why) = http_get(host.admin_port, "/readyz").expect("readyz");
    assert_eq!(ready, 503, "{why}");
    assert!(why.contains("stalled"), "{why}");
    assert_eq!(
        metric(&host, "kwasm_partitions_stalled", "stall"),
        Some(1.0)
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        end_offsets(&dlq),
        vec![0],
        "nothing dead-lettered for an init fault"
    );
    assert_eq!(end_offsets(&output), vec![0]);

    // A working config, hot-deployed: the partition recovers.
    let (status, body) = host.call("PUT", "/v1/pipelines/stall", spec("tag").as_bytes());
    assert_eq!(status, 200, "{body}");
    let out = read_to_end(&output, 20, Duration::from_secs(60));
    let values: Vec<String> = out.iter().map(|r| r.value_str()).collect();
    let expected: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(
        values, expected,
        "every message once, in order, after the fix"
    );
    assert!(out.iter().all(|r| header(r, "kwasm-tag") == "fixed"));
    assert_eq!(end_offsets(&dlq), vec![0]);
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            assignment_rows(&host, "stall")
                .iter()
                .all(|r| r["state"] == "running")
                && metric(&host, "kwasm_partitions_stalled", "stall") == Some(0.0)
        }),
        "no longer stalled: {:?}",
        assignment_rows(&host, "stall")
    );
}

/// Item 9. Records the broker rejects after delivery, for good: a null key
/// on a compacted output topic, and values over the output topic's
/// `max.message.bytes`. Each such message is dead-lettered
/// (`output-rejected`, the reason in `kwasm.error.message`, the original
/// input re-read from the log); every message ends in the output or the
/// dead-letter topic exactly once, and the partition commits to its end.
/// Before the fix the tracker was marked failed silently: no dead letter,
/// commits stopped for good.
#[test]
fn outputs_the_broker_rejects_are_dead_lettered_and_commits_go_on() {
    let input = unique("rel-reject-in");
    let compacted = unique("rel-reject-compacted");
    let small = unique("rel-reject-small");
    let dlq = unique("rel-reject-dlq");
    let fine_out = unique("rel-reject-out");
    let group = unique("rel-reject-g");
    create_topic(&input, 2);
    create_topic(&dlq, 1);
    create_topic(&fine_out, 2);
    kwasm_tests::create_topic_with_config(&compacted, 2, 1, &[("cleanup.policy", "compact")]);
    kwasm_tests::create_topic_with_config(&small, 2, 1, &[("max.message.bytes", "4096")]);
    // The router sends each message to the topic its value's `to` names.
    let reg = unique("rel-reject-reg");
    let host = Host::start_bare("reject-a", &reg);
    host.wait_ready(Duration::from_secs(60));
    let wasm = std::fs::read(plugin_path("router")).expect("router.wasm");
    let (status, body) = host.call("POST", "/v1/plugins/router", &wasm);
    assert_eq!(status, 201, "{body}");
    let spec = json!({
        "plugin": "router@1",
        "config": {"by": "field:to"},
        "inputs": [input],
        "output": fine_out,
        "extra_outputs": [compacted, small],
        "dead_letter_topic": dlq,
        "group_id": group,
    });
    let (status, body) = host.call("PUT", "/v1/pipelines/reject", spec.to_string().as_bytes());
    assert_eq!(status, 200, "{body}");
    let mut records = Vec::new();
    let mut rejected = BTreeSet::new();
    let mut fine = BTreeSet::new();
    for i in 0..200 {
        let p = i % 2;
        let id = format!("v{i}");
        let r = match i % 10 {
            // A null key on the compacted topic: INVALID_RECORD.
            3 => {
                rejected.insert(id.clone());
                OutRecord::to(p, json!({"to": compacted, "id": id}).to_string())
            }
            // Over the small topic's max.message.bytes: MSG_SIZE_TOO_LARGE.
            7 => {
                rejected.insert(id.clone());
                let pad = "x".repeat(8_000);
                OutRecord::to(p, json!({"to": small, "id": id, "pad": pad}).to_string())
                    .key(format!("k{i}"))
            }
            // Rejected records are alone in their topics: the broker refuses
            // a whole batch, and the test must know which messages fail.
            _ => {
                fine.insert(id.clone());
                OutRecord::to(p, json!({"to": fine_out, "id": id}).to_string()).key(format!("k{i}"))
            }
        };
        records.push(r);
    }
    produce(&input, records);
    let id_of = |r: &kwasm_tests::Record| -> String {
        serde_json::from_str::<Value>(&r.value_str()).unwrap_or(Value::Null)["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let dead = read_to_end(&dlq, rejected.len(), Duration::from_secs(90));
    let out = read_to_end(&fine_out, fine.len(), Duration::from_secs(60));
    assert_eq!(
        end_offsets(&small).iter().sum::<i64>(),
        0,
        "nothing oversized got through"
    );
    assert_eq!(
        end_offsets(&compacted).iter().sum::<i64>(),
        0,
        "no null key got through"
    );
    let dead_values: BTreeMap<String, usize> = dead.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(id_of(r)).or_default() += 1;
        m
    });
    for r in &dead {
        assert_eq!(header(r, "kwasm.error.kind"), "output-rejected", "{r:?}");
        let why = header(r, "kwasm.error.message");
        assert!(
            why.contains("delivery to `"),
            "the reason says what failed: {why}"
        );
    }
    assert_eq!(
        dead_values.keys().cloned().collect::<BTreeSet<_>>(),
        rejected,
        "each rejected message dead-lettered, with its original value"
    );
    assert!(
        dead_values.values().all(|&n| n == 1),
        "once each: {dead_values:?}"
    );
    let out_values: Vec<String> = out.iter().map(id_of).collect();
    assert_eq!(out_values.len(), fine.len(), "no duplicates in the output");
    assert_eq!(out_values.into_iter().collect::<BTreeSet<_>>(), fine);
    let (ends, committed) = wait_committed_to_end(&group, &input, Duration::from_secs(30));
    assert!(
        committed_to_end(&ends, &committed),
        "commits went on to the end: {committed:?} vs {ends:?}"
    );
    assert!(
        assignment_rows(&host, "reject")
            .iter()
            .all(|r| r["state"] == "running"),
        "nothing stalled: {:?}",
        assignment_rows(&host, "reject")
    );
}
