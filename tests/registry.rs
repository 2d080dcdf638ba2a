//! End-to-end: the registry shared through Kafka, the admin API across
//! hosts, and hot deploys under load.

mod e2e;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use e2e::{Host, Protocol};
use kwasm_tests::{OutRecord, create_topic, plugin_path, produce, read_to_end, unique, wait_until};
use serde_json::{Value, json};

const PARTITIONS: i32 = 6;

/// The misbehave fixture's bytes with a custom section appended: a valid
/// component with a different digest, i.e. a new version of the plugin.
fn new_version_of(bytes: &[u8], marker: &str) -> Vec<u8> {
    let name = b"kwasm-test-version";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(marker.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    out.push(payload.len() as u8); // size (< 128: one LEB128 byte)
    out.extend(payload);
    out
}

/// The `tagger` pipeline's JSON: `tagger@{version}` tagging with `tag`,
/// under `delivery`.
fn tagger_with(
    input: &str,
    output: &str,
    group: &str,
    version: u32,
    tag: &str,
    delivery: &str,
) -> Vec<u8> {
    json!({
        "plugin": format!("tagger@{version}"),
        "config": {"mode": "tag", "tag": tag},
        "inputs": [input],
        "output": output,
        "group_id": group,
        "batch": {"max_messages": 64, "max_wait_ms": 20},
        "delivery": delivery,
    })
    .to_string()
    .into_bytes()
}

/// Partitions per host, waiting until every host holds some and together
/// they cover the topic exactly once.
fn wait_cover(hosts: &[&Host], topic: &str) -> Vec<BTreeSet<i32>> {
    let mut last = Vec::new();
    let ok = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        last = hosts
            .iter()
            .map(|h| h.partitions(topic).unwrap_or_default())
            .collect();
        let union: BTreeSet<i32> = last.iter().flatten().copied().collect();
        last.iter().all(|p| !p.is_empty())
            && last.iter().map(BTreeSet::len).sum::<usize>() == PARTITIONS as usize
            && union.len() == PARTITIONS as usize
    });
    assert!(
        ok,
        "partitions never spread over every host exactly once: {last:?}"
    );
    last
}

struct Setup {
    a: Host,
    b: Host,
    input: String,
    output: String,
    group: String,
}

/// Two bare hosts (classic protocol); `tagger` v1 uploaded to A and a
/// pipeline using it, under `delivery`, PUT on A.
fn two_hosts_running_tagger_with(test: &str, delivery: &str) -> Setup {
    two_hosts_running_tagger_as(test, delivery, Protocol::Classic)
}

/// [`two_hosts_running_tagger_with`] with consumers that speak `protocol`.
fn two_hosts_running_tagger_as(test: &str, delivery: &str, protocol: Protocol) -> Setup {
    let input = unique(&format!("{test}-in"));
    let output = format!("{input}-out");
    let group = format!("{input}-group");
    create_topic(&input, PARTITIONS);
    create_topic(&output, PARTITIONS);
    let a = Host::start_bare_as("host-a", &group, protocol);
    let b = Host::start_bare_as("host-b", &group, protocol);
    a.wait_ready(Duration::from_secs(60));
    b.wait_ready(Duration::from_secs(60));

    let wasm = std::fs::read(plugin_path("misbehave")).expect("misbehave.wasm");
    let (status, body) = a.call("POST", "/v1/plugins/tagger", &wasm);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["version"], 1);
    let (status, body) = a.call(
        "PUT",
        "/v1/pipelines/tagging",
        &tagger_with(&input, &output, &group, 1, "v1", delivery),
    );
    assert_eq!(status, 200, "{body}");
    Setup {
        a,
        b,
        input,
        output,
        group,
    }
}

e2e::both_protocols!(a_plugin_uploaded_to_one_host_runs_on_every_host_and_members_agree);

/// Both hosts run the registry's plugin, and `/members` on either host
/// shows the group as the broker describes it. The bug this guards
/// against: `/members` read the group with DescribeGroups only, which
/// Kafka 4 does not answer for a KIP-848 group, so under the consumer
/// protocol every row came from the hosts' published records (`source:
/// "published"`, no member id) although the broker could describe it
/// (ConsumerGroupDescribe).
fn a_plugin_uploaded_to_one_host_runs_on_every_host_and_members_agree(protocol: Protocol) {
    let started = Instant::now();
    let s = two_hosts_running_tagger_as("spread", "at-least-once", protocol);
    let owned = wait_cover(&[&s.a, &s.b], &s.input);
    println!(
        "[{}] pipeline running on both hosts {:.2} s after the upload: {owned:?}",
        protocol.name(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        owned.iter().all(|p| !p.is_empty()),
        "both hosts hold partitions: {owned:?}"
    );

    // Host B knows the plugin and the pipeline through the registry.
    let (status, body) = s.b.call("GET", "/v1/plugins/tagger", b"");
    assert_eq!(
        (status, body["versions"][0]["version"].clone()),
        (200, json!(1))
    );
    let (status, body) = s.b.call("GET", "/v1/pipelines/tagging", b"");
    assert_eq!((status, body["plugin"].clone()), (200, json!("tagger@1")));

    // The group as seen from either host: stable, in the protocol the
    // hosts speak; both hosts, each row from the broker with its member
    // id, partitions disjoint and covering.
    for host in [&s.a, &s.b] {
        let mut members = Value::Null;
        let complete = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            members = host.call("GET", "/v1/pipelines/tagging/members", b"").1;
            members["group_protocol"] == protocol.name()
                && members["group_state"] == "stable"
                && members_described_by_the_broker(&members)
        });
        assert!(
            complete,
            "[{}] members from {}: {members}",
            protocol.name(),
            host.process.name()
        );
        println!(
            "[{}] members from {}: {members}",
            protocol.name(),
            host.process.name()
        );
    }

    // The records flow through the registry's plugin, tagged.
    produce(
        &s.input,
        (0..60).map(|i| OutRecord::to(i % PARTITIONS, format!("m{i}"))),
    );
    let out = read_to_end(&s.output, 60, Duration::from_secs(30));
    assert_eq!(out.len(), 60);
    assert!(
        out.iter()
            .all(|r| r.header("kwasm-tag") == Some(&b"v1"[..]))
    );
    let _ = s.group;
}

/// Whether a `/members` body shows exactly `host-a` and `host-b`, each
/// row from the broker (`source: "broker"`, a member id of its own, the
/// host as its client id), holding every partition of the input once.
fn members_described_by_the_broker(body: &Value) -> bool {
    let rows = body["members"].as_array().cloned().unwrap_or_default();
    let from_broker = rows.iter().all(|m| {
        m["source"] == "broker"
            && m["member_id"].as_str().is_some_and(|id| !id.is_empty())
            && m["client_id"] == m["host"]
    });
    let member_ids: BTreeSet<&str> = rows
        .iter()
        .filter_map(|m| m["member_id"].as_str())
        .collect();
    let hosts: BTreeSet<&str> = rows.iter().filter_map(|m| m["host"].as_str()).collect();
    let partitions: Vec<i64> = rows
        .iter()
        .flat_map(|m| m["partitions"].as_array().cloned().unwrap_or_default())
        .map(|p| p["partition"].as_i64().unwrap_or(-1))
        .collect();
    let distinct: BTreeSet<i64> = partitions.iter().copied().collect();
    from_broker
        && member_ids.len() == rows.len()
        && hosts == BTreeSet::from(["host-a", "host-b"])
        && rows.len() == 2
        && partitions.len() == PARTITIONS as usize
        && distinct == (0..i64::from(PARTITIONS)).collect()
}

#[test]
fn hot_deploy_under_load_switches_each_partition_once_then_rolls_back() {
    hot_deploy_under_load("hot-deploy", "at-least-once");
}

/// Under exactly-once a deploy takes effect at a transaction boundary (the
/// deployment generation the gate publishes when it opens): the
/// `read_committed` output still holds each input once, and each partition
/// switches once.
#[test]
fn hot_deploy_under_exactly_once_switches_at_a_transaction_boundary_with_no_duplicate() {
    hot_deploy_under_load("hot-deploy-eos", "exactly-once");
}

/// 100k keyed inputs over ~10 s; tagger v2 deployed 3 s in, then rolled
/// back: every input once, each partition v1 then v2, no rebalance.
fn hot_deploy_under_load(test: &str, delivery: &str) {
    let s = two_hosts_running_tagger_with(test, delivery);
    let before = wait_cover(&[&s.a, &s.b], &s.input);

    // 100k messages over ~10 s, values "p:seq", keyed so order can be read back.
    let input = s.input.clone();
    let producer = std::thread::spawn(move || {
        let mut produced = Vec::new();
        for chunk in 0..20 {
            let batch: Vec<(i32, String)> = (0..5_000)
                .map(|i| {
                    let n = chunk * 5_000 + i;
                    let p = n % PARTITIONS;
                    (p, format!("{p}:{}", n / PARTITIONS))
                })
                .collect();
            produce(
                &input,
                batch
                    .iter()
                    .map(|(p, v)| OutRecord::to(*p, v.clone()).key(v.clone())),
            );
            produced.extend(batch);
            std::thread::sleep(Duration::from_millis(500));
        }
        produced
    });
    std::thread::sleep(Duration::from_secs(3));
    let v2 = new_version_of(
        &std::fs::read(plugin_path("misbehave")).expect("misbehave.wasm"),
        "v2",
    );
    let (status, body) = s.b.call("POST", "/v1/plugins/tagger", &v2);
    assert_eq!((status, body["version"].clone()), (201, json!(2)), "{body}");
    let deployed = Instant::now();
    let releases_before = (releases(&s.a), releases(&s.b));
    let (status, body) = s.b.call(
        "PUT",
        "/v1/pipelines/tagging",
        &tagger_with(&s.input, &s.output, &s.group, 2, "v2", delivery),
    );
    assert_eq!(status, 200, "{body}");
    let produced = producer.join().expect("producer");
    let total = produced.len();

    let output = read_to_end(&s.output, total, Duration::from_secs(120));
    println!(
        "hot deploy ({delivery}): {} outputs for {total} inputs; v2 seen {:.2} s after the PUT",
        output.len(),
        deployed.elapsed().as_secs_f64()
    );
    let per_partition = tags_by_input_partition(&output);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in &output {
        *counts.entry(r.value_str()).or_default() += 1;
    }
    assert_eq!(counts.len(), total, "every input appears");
    assert!(counts.values().all(|&n| n == 1), "no duplicates");
    for (p, tags) in &per_partition {
        let switches = tags.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(
            tags.first().map(String::as_str),
            Some("v1"),
            "partition {p} starts on v1"
        );
        assert_eq!(
            tags.last().map(String::as_str),
            Some("v2"),
            "partition {p} ends on v2"
        );
        assert_eq!(
            switches, 1,
            "partition {p} switches exactly once: v1 before, v2 after"
        );
    }
    // No rebalance happened: each host kept its partitions.
    assert_eq!(
        (releases(&s.a), releases(&s.b)),
        releases_before,
        "no partition moved during the deploy"
    );
    assert_eq!(
        vec![
            s.a.partitions(&s.input).unwrap_or_default(),
            s.b.partitions(&s.input).unwrap_or_default()
        ],
        before
    );

    // Rollback is the same call with the old version.
    let (status, _) = s.a.call(
        "PUT",
        "/v1/pipelines/tagging",
        &tagger_with(&s.input, &s.output, &s.group, 1, "v1", delivery),
    );
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_secs(3));
    produce(
        &s.input,
        (0..600).map(|i| OutRecord::to(i % PARTITIONS, format!("after-rollback-{i}")).key("r")),
    );
    let all = read_to_end(&s.output, total + 600, Duration::from_secs(60));
    let rolled: Vec<_> = all
        .iter()
        .filter(|r| r.value_str().starts_with("after-rollback-"))
        .collect();
    assert_eq!(rolled.len(), 600);
    assert!(
        rolled
            .iter()
            .all(|r| r.header("kwasm-tag") == Some(&b"v1"[..])),
        "rolled back to v1"
    );
}

/// A deploy whose plugin cannot start (its `init` traps, printing the
/// panic message to stderr on the way) is refused by every host before it
/// replaces anything: the old code keeps running, nothing is lost or
/// dead-lettered, nothing rebalances, and the next good deploy is applied.
/// (The hosts test-instantiated a deployment on an async worker, where the
/// guest's stderr flush panicked inside wasmtime-wasi and took the
/// pipeline manager's task down: no later deploy was ever applied.)
#[test]
fn a_deploy_that_cannot_start_is_refused_and_the_next_good_one_applies() {
    let s = two_hosts_running_tagger_with("refused-deploy", "at-least-once");
    wait_cover(&[&s.a, &s.b], &s.input);
    let producer = e2e::produce_slowly(
        s.input.clone(),
        PARTITIONS,
        16_000,
        Duration::from_secs(8),
        16,
    );
    std::thread::sleep(Duration::from_secs(2));
    let releases_before = (releases(&s.a), releases(&s.b));
    let deploy = |config: Value| {
        let spec = json!({
            "plugin": "tagger@1",
            "config": config,
            "inputs": [s.input],
            "output": s.output,
            "group_id": s.group,
            "batch": {"max_messages": 64, "max_wait_ms": 20},
            "delivery": "at-least-once",
        });
        let (status, body) =
            s.a.call("PUT", "/v1/pipelines/tagging", spec.to_string().as_bytes());
        assert_eq!(status, 200, "{body}");
    };
    // Same plugin, new config (a hot deploy, not a restart) whose init
    // traps for the next ten minutes.
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        + 600_000;
    deploy(json!({"mode": "tag", "tag": "v2", "until_unix_ms": until.to_string()}));
    let refused = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        [&s.a, &s.b]
            .iter()
            .all(|h| h.process.log_contents().contains("cannot deploy pipeline"))
    });
    std::thread::sleep(Duration::from_secs(2));
    deploy(json!({"mode": "tag", "tag": "v3"}));
    let produced = producer.join().expect("producer");
    let total = produced.len();

    let output = read_to_end(&s.output, total, Duration::from_secs(120));
    let dead: f64 = [&s.a, &s.b]
        .iter()
        .filter_map(|h| e2e::metric(h, "kwasm_dead_lettered_total", "tagging"))
        .fold(0.0, |sum, n| sum + n);
    println!(
        "refused deploy: {} outputs for {total} inputs; refused on both hosts: {refused}; {dead} dead letters",
        output.len(),
    );
    assert!(
        refused,
        "a host did not refuse the deployment that cannot start"
    );
    assert_eq!(dead, 0.0, "nothing is dead-lettered for a refused deploy");
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in &output {
        *counts.entry(r.value_str()).or_default() += 1;
    }
    assert_eq!(counts.len(), total, "every input appears");
    assert!(counts.values().all(|&n| n == 1), "no duplicates");
    for (p, tags) in &tags_by_input_partition(&output) {
        let switches = tags.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(
            (
                tags.first().map(String::as_str),
                tags.last().map(String::as_str),
                switches
            ),
            (Some("v1"), Some("v3"), 1),
            "partition {p} runs v1 until the good deploy, then v3; never the refused v2"
        );
    }
    assert_eq!(
        (releases(&s.a), releases(&s.b)),
        releases_before,
        "no partition moved"
    );
}

/// How many partitions `host` has released so far (a rebalance releases
/// some; a hot deploy none).
fn releases(host: &Host) -> usize {
    host.process
        .log_contents()
        .matches("partition released")
        .count()
}

/// For each input partition, the tags of its outputs in input offset order.
fn tags_by_input_partition(output: &[kwasm_tests::Record]) -> BTreeMap<i32, Vec<String>> {
    let mut by: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for r in output {
        let Some((p, seq)) = kwasm_tests::sequence_of(&r.value_str()) else {
            continue;
        };
        let tag = String::from_utf8_lossy(r.header("kwasm-tag").unwrap_or_default()).into_owned();
        by.entry(p).or_default().push((seq, tag));
    }
    by.into_iter()
        .map(|(p, mut v)| {
            v.sort();
            (p, v.into_iter().map(|(_, t)| t).collect())
        })
        .collect()
}

#[test]
fn bad_uploads_get_a_clear_4xx_and_store_nothing() {
    let registry = unique("bad-uploads");
    let host = Host::start_bare("host-a", &registry);
    host.wait_ready(Duration::from_secs(60));
    let cases: [(&str, Vec<u8>, u16, &str); 3] = [
        (
            "random",
            b"definitely not wasm".to_vec(),
            400,
            "not a WebAssembly file",
        ),
        (
            "core",
            b"\0asm\x01\0\0\0".to_vec(),
            400,
            "core WebAssembly module",
        ),
        (
            "other",
            std::fs::read(plugin_path("other-world")).expect("other-world.wasm"),
            400,
            "does not export `kwasm:plugin/handler@0.1.0`",
        ),
    ];
    for (name, bytes, status, phrase) in cases {
        let (got, body) = host.call("POST", &format!("/v1/plugins/{name}"), &bytes);
        assert_eq!(got, status, "{name}: {body}");
        assert_eq!(body["error"]["code"], "invalid");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(phrase), "{name}: {message}");
    }
    let (status, body) = host.call("GET", "/v1/plugins", b"");
    assert_eq!(
        (status, body),
        (200, json!({"plugins": []})),
        "nothing stored"
    );
}
