//! End-to-end: the registry keeps one digest per version number across
//! hosts, survives compaction, and refuses to delete what a host runs
//! (issue 10, "Registry integrity", items 1 to 4).

mod e2e;
#[path = "runtime_harness/hostile.rs"]
mod hostile;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use e2e::Host;
use kwasm_tests::{create_topic, create_topic_with_config, plugin_path, unique, wait_until};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The misbehave fixture with a custom section appended: a valid component
/// with its own digest.
fn variant(marker: &str) -> Vec<u8> {
    with_marker(
        std::fs::read(plugin_path("misbehave")).expect("misbehave.wasm"),
        marker,
    )
}

/// `bytes` with a custom section naming `marker` appended.
fn with_marker(bytes: Vec<u8>, marker: &str) -> Vec<u8> {
    let name = b"kwasm-test-version";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(marker.as_bytes());
    let mut out = bytes;
    out.push(0); // custom section id
    out.push(payload.len() as u8); // size (< 128: one LEB128 byte)
    out.extend(payload);
    out
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `version → digest` of plugin `name` as `host` lists it.
fn versions(host: &Host, name: &str) -> BTreeMap<u64, String> {
    let (status, body) = host.call("GET", &format!("/v1/plugins/{name}"), b"");
    if status != 200 {
        return BTreeMap::new();
    }
    body["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v["version"].as_u64()?, v["digest"].as_str()?.to_owned())))
        .collect()
}

/// Two uploads of one name used to compute the same "next version" from
/// local state, so concurrent uploads of different bytes all answered
/// `201 version 1` and `tagger@1` meant whichever manifest a host applied
/// last. Now each version is claimed in the plugins topic, the first claim
/// in log order wins, and a loser retries with the next number.
#[test]
fn concurrent_uploads_across_two_hosts_get_distinct_versions() {
    let registry = unique("claims");
    let a = Host::start_bare("host-a", &registry);
    let b = Host::start_bare("host-b", &registry);
    a.wait_ready(Duration::from_secs(60));
    b.wait_ready(Duration::from_secs(60));
    let hosts = Arc::new([a, b]);

    const UPLOADS: usize = 8;
    let start = Arc::new(Barrier::new(UPLOADS));
    let uploads: Vec<_> = (0..UPLOADS)
        .map(|i| {
            let (hosts, start) = (hosts.clone(), start.clone());
            std::thread::spawn(move || {
                // A tiny component: validation compiles it in
                // milliseconds, so the eight claims race closely even on
                // a loaded machine (misbehave takes 10 to 40 s here).
                let bytes = with_marker(hostile::inert(), &format!("upload-{i}"));
                start.wait();
                let (status, body) =
                    hosts[i % 2].call_patient("POST", "/v1/plugins/tagger", &bytes);
                (i, status, body, sha256(&bytes))
            })
        })
        .collect();
    let mut answered: BTreeMap<u64, String> = BTreeMap::new();
    for upload in uploads {
        let (i, status, body, digest) = upload.join().expect("upload thread");
        assert_eq!(status, 201, "upload {i}: {body}");
        assert_eq!(body["digest"], json!(digest), "upload {i}: {body}");
        let version = body["version"].as_u64().expect("a version number");
        if let Some(other) = answered.insert(version, digest.clone()) {
            panic!("version {version} was answered for two digests: {other} and {digest}");
        }
    }
    let lost: f64 = hosts
        .iter()
        .map(|h| metric(h, "kwasm_registry_claims_lost_total").unwrap_or(0.0))
        .sum();
    println!(
        "8 concurrent uploads over 2 hosts got versions {:?}; {lost} claims lost and retried",
        answered.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        answered.keys().copied().collect::<Vec<_>>(),
        (1..=UPLOADS as u64).collect::<Vec<_>>(),
        "losers retry with the next number, so the numbers are 1..=8"
    );
    for host in hosts.iter() {
        let mut seen = BTreeMap::new();
        let agree = wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
            seen = versions(host, "tagger");
            seen == answered
        });
        assert!(
            agree,
            "{} lists {seen:?}, the uploads were answered {answered:?}",
            host.process.name()
        );
    }
}

/// Deleting a version used to look only at registry pipelines pinned to it:
/// a host whose config file declares `tagger@2` then could not restart, and
/// deleting the newest version silently moved a bare `tagger` pipeline to an
/// older one. Hosts now publish what they run, and a delete of anything a
/// running pipeline uses is a 409 naming the pipelines and hosts.
#[test]
fn deleting_a_version_any_host_runs_is_refused_naming_the_users() {
    let registry = unique("in-use");
    let topics: Vec<String> = ["pinned", "local", "fresh"]
        .iter()
        .map(|p| format!("{registry}-{p}"))
        .collect();
    for t in &topics {
        create_topic(&format!("{t}-in"), 2);
        create_topic(&format!("{t}-out"), 2);
    }
    let a = Host::start_bare("host-a", &registry);
    a.wait_ready(Duration::from_secs(60));
    for (i, marker) in ["v1", "v2", "v3"].iter().enumerate() {
        let (status, body) = a.call_patient("POST", "/v1/plugins/tagger", &variant(marker));
        assert_eq!(
            (status, body["version"].clone()),
            (201, json!(i + 1)),
            "{body}"
        );
    }
    let pinned = json!({
        "plugin": "tagger@1", "config": {"mode": "tag", "tag": "v1"},
        "inputs": [format!("{}-in", topics[0])], "output": format!("{}-out", topics[0]),
    });
    let (status, body) = a.call("PUT", "/v1/pipelines/pinned", pinned.to_string().as_bytes());
    assert_eq!(status, 200, "{body}");

    // Host B declares two pipelines in its config file: one pinned to v2,
    // one on the newest version (v3).
    let config_pipeline = |name: &str, plugin: &str, topic: &str| {
        format!(
            "\n[[pipeline]]\nname = {name:?}\nplugin = {plugin:?}\ninputs = [\"{topic}-in\"]\n\
             output = \"{topic}-out\"\n[pipeline.config]\nmode = \"tag\"\ntag = {name:?}\n"
        )
    };
    let b = Host::start_with_pipelines(
        "host-b",
        &registry,
        &(config_pipeline("local", "tagger@2", &topics[1])
            + &config_pipeline("fresh", "tagger", &topics[2])),
    );
    b.wait_ready(Duration::from_secs(60));
    let runs = |host: &Host, pipeline: &str| -> Option<u64> {
        let (_, body) = host.call("GET", "/v1/assignments", b"");
        body["pipelines"]
            .as_array()?
            .iter()
            .find(|p| p["pipeline"] == pipeline)?["plugin_version"]
            .as_u64()
    };
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            runs(&b, "local") == Some(2)
                && runs(&b, "fresh") == Some(3)
                && runs(&b, "pinned") == Some(1)
        }),
        "host-b runs local on v2, fresh on v3 and pinned on v1: {}",
        b.call("GET", "/v1/assignments", b"").1
    );
    // Host B publishes what it runs; give host A's follower time to read it.
    std::thread::sleep(Duration::from_secs(3));

    let refused = |host: &Host, version: u32, phrases: &[&str]| {
        let (status, body) = host.call(
            "DELETE",
            &format!("/v1/plugins/tagger/versions/{version}"),
            b"",
        );
        assert_eq!(
            status,
            409,
            "deleting v{version} on {}: {body}",
            host.process.name()
        );
        assert_eq!(body["error"]["code"], "conflict", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        for phrase in phrases {
            assert!(
                message.contains(phrase),
                "v{version}: {message:?} should name {phrase:?}"
            );
        }
        println!("DELETE v{version}: 409 {message}");
    };
    refused(&b, 1, &["`pinned`"]);
    refused(&a, 2, &["`local`", "host-b", "config file"]);
    refused(&a, 3, &["`fresh`", "host-b", "config file"]);

    // The CLI shows the API's message and fails.
    let out = std::process::Command::new(kwasm_tests::kwasm_bin())
        .args(["plugin", "delete", "tagger", "2", "--url"])
        .arg(format!("http://127.0.0.1:{}", a.admin_port))
        .output()
        .expect("run kwasm plugin delete");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "kwasm plugin delete of a used version fails: {stderr}"
    );
    assert!(
        stderr.contains("`local`") && stderr.contains("host-b"),
        "the CLI names the user: {stderr}"
    );

    // Once `fresh` has moved to a newer version, v3 is free to go.
    let (status, body) = a.call_patient("POST", "/v1/plugins/tagger", &variant("v4"));
    assert_eq!((status, body["version"].clone()), (201, json!(4)), "{body}");
    assert!(
        wait_until(
            Duration::from_secs(30),
            Duration::from_millis(100),
            || runs(&b, "fresh") == Some(4)
        ),
        "the bare-name pipeline moves to the newest version"
    );
    let mut last = (0, Value::Null);
    let deleted = wait_until(Duration::from_secs(15), Duration::from_millis(250), || {
        last = a.call("DELETE", "/v1/plugins/tagger/versions/3", b"");
        last.0 == 204
    });
    assert!(deleted, "v3 is unused once fresh runs v4: {last:?}");
    assert_eq!(
        versions(&a, "tagger")
            .keys()
            .copied()
            .collect::<BTreeSet<_>>(),
        BTreeSet::from([1, 2, 4])
    );
}

/// Records of the plugins topic from the beginning to its end, as a fresh
/// reader gets them (after compaction: fewer than the end offset).
fn read_topic(topic: &str) -> Vec<kwasm_tests::Record> {
    let end = kwasm_tests::end_offsets(topic)[0] as usize;
    kwasm_tests::consume_all(topic, end, Duration::from_secs(3))
}

/// Chunks used to be keyed by digest but deduplicated only within a name:
/// uploading the same bytes as `b` rewrote `a`'s chunks after `a`'s
/// manifest, and once compaction dropped the older copies a fresh host
/// replayed `a@1` before its chunks and lost it. Deleted versions also
/// kept their chunks forever. Now a version's chunks are its own records
/// and replay does not depend on their order; deleting a version
/// tombstones them, and the state holds only what live versions need.
#[test]
fn a_fresh_host_after_compaction_has_every_live_version_and_only_their_bytes() {
    let registry = unique("compacted");
    let plugins_topic = format!("{registry}-plugins");
    // Compaction as soon as possible: a new segment every 100 ms, no dirty
    // ratio to wait for, tombstones removed at once.
    create_topic_with_config(
        &plugins_topic,
        1,
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.ms", "100"),
            ("min.cleanable.dirty.ratio", "0.0001"),
            ("min.compaction.lag.ms", "0"),
            ("delete.retention.ms", "0"),
            ("max.message.bytes", "2097152"),
        ],
    );
    let a = Host::start_bare("host-a", &registry);
    a.wait_ready(Duration::from_secs(60));
    let shared = variant("shared");
    for name in ["a", "b"] {
        let (status, body) = a.call_patient("POST", &format!("/v1/plugins/{name}"), &shared);
        assert_eq!(
            (status, body["version"].clone()),
            (201, json!(1)),
            "{name}: {body}"
        );
    }
    const DELETED: usize = 5;
    for i in 0..DELETED {
        let (status, body) = a.call_patient("POST", "/v1/plugins/c", &variant(&format!("c{i}")));
        assert_eq!(status, 201, "{body}");
        let version = body["version"].as_u64().expect("version");
        let (status, body) = a.call("DELETE", &format!("/v1/plugins/c/versions/{version}"), b"");
        assert_eq!(status, 204, "{body}");
    }
    let kept = variant("kept");
    let (status, body) = a.call_patient("POST", "/v1/plugins/c", &kept);
    assert_eq!(
        (status, body["version"].clone()),
        (201, json!(DELETED + 1)),
        "{body}"
    );
    let live_bytes = shared.len() + kept.len();

    // Roll the segment (a record after segment.ms) and wait for the cleaner.
    std::thread::sleep(Duration::from_millis(300));
    kwasm_tests::produce(
        &plugins_topic,
        [kwasm_tests::OutRecord::to(0, "1").key("highest/marker")],
    );
    let written = kwasm_tests::end_offsets(&plugins_topic)[0] as usize;
    let mut left = written;
    let compacted = wait_until(Duration::from_secs(60), Duration::from_secs(1), || {
        left = read_topic(&plugins_topic).len();
        left < written
    });
    assert!(
        compacted,
        "the broker never compacted {plugins_topic}: {left} of {written} records"
    );
    println!("plugins topic compacted: {left} of {written} records left");

    let fresh = Host::start_bare("host-fresh", &registry);
    fresh.wait_ready(Duration::from_secs(60));
    for (name, digest) in [("a", sha256(&shared)), ("b", sha256(&shared))] {
        assert_eq!(
            versions(&fresh, name),
            BTreeMap::from([(1, digest)]),
            "a fresh host replaying the compacted topic has {name}@1"
        );
    }
    assert_eq!(
        versions(&fresh, "c"),
        BTreeMap::from([((DELETED + 1) as u64, sha256(&kept))])
    );
    assert_eq!(
        registry_bytes(&a),
        Some(live_bytes as f64),
        "host-a holds the live versions' bytes (shared bytes once)"
    );
    assert_eq!(
        registry_bytes(&fresh),
        Some(live_bytes as f64),
        "a fresh replay holds only the live versions' bytes (shared bytes once)"
    );
    // Deleted numbers stay taken after compaction.
    let (status, body) = fresh.call_patient("POST", "/v1/plugins/c", &variant("after"));
    assert_eq!(
        (status, body["version"].clone()),
        (201, json!(DELETED + 2)),
        "{body}"
    );
}

/// `kwasm_registry_bytes` from the host's `/metrics`.
fn registry_bytes(host: &Host) -> Option<f64> {
    metric(host, "kwasm_registry_bytes")
}

/// An unlabelled metric from the host's `/metrics`.
fn metric(host: &Host, name: &str) -> Option<f64> {
    let (status, text) = e2e::http_get(host.admin_port, "/metrics")?;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
