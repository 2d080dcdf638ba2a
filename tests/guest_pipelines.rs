//! End-to-end: the `filter` plugin written in Python, JavaScript and Go
//! (`plugins/{python,js,go}-filter`) runs as a real pipeline of `kwasm serve`
//! on the broker scripts/test starts, with the same outcome as the Rust
//! `filter`: every input message once, in the output (not `status=test`) or on
//! the dead-letter topic (not JSON), nowhere else, nothing twice, and the
//! whole input committed. Output and dead-letter topics are read to the end
//! of every partition before anything is counted.

mod e2e;

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::{Host, PipelineDef};
use kwasm_tests::{
    OutRecord, committed_offsets, create_topic, end_offsets, produce, read_to_end, unique,
    wait_until,
};

const PARTITIONS: i32 = 3;
const MESSAGES: usize = 300;

/// What message `i` is: a JSON order, every third one `status=test` (dropped),
/// every 50th not JSON at all (dead-lettered).
fn input(i: usize) -> String {
    if i % 50 == 7 {
        format!("not json {i}")
    } else {
        let status = if i.is_multiple_of(3) { "test" } else { "paid" };
        format!(r#"{{"order":{{"id":{i},"status":"{status}"}}}}"#)
    }
}

fn filter_pipeline_processes_every_input_exactly_once(plugin: &str) {
    let input_topic = unique(&format!("{plugin}-in"));
    let output = format!("{input_topic}-out");
    let dlq = format!("{input_topic}-dlq");
    let group = format!("{input_topic}-group");
    create_topic(&input_topic, PARTITIONS);
    create_topic(&output, PARTITIONS);
    create_topic(&dlq, 1);
    let produced = produce(
        &input_topic,
        (0..MESSAGES).map(|i| {
            OutRecord::to((i % 3) as i32, input(i))
                .key(format!("k{i}"))
                .header("trace", format!("t{i}"))
        }),
    );
    let config = [("field", "order.status"), ("equals", "test")];
    let pipeline = PipelineDef {
        name: plugin,
        plugin,
        config: &config,
        input: &input_topic,
        output: &output,
        group: &group,
        dead_letter: Some(&dlq),
    };
    let host = Host::start("host-a", &pipeline);
    // A fresh debug host compiles the 12 to 18 MB Python and JavaScript
    // components before the pipeline starts: minutes on 2 shared cores
    // (the compile cache then keeps them). Wait for that first, so the
    // read below measures processing, not compilation.
    assert!(
        host.process
            .wait_for_log("pipeline started", Duration::from_secs(900)),
        "{plugin}: the pipeline never started (the plugin did not compile within 15 min)"
    );

    let forwarded: Vec<usize> = (0..MESSAGES)
        .filter(|i| i % 50 != 7 && !i.is_multiple_of(3))
        .collect();
    let dead: Vec<usize> = (0..MESSAGES).filter(|i| i % 50 == 7).collect();
    // Start-up of a Python or JavaScript instance is slow on 2 cores (the
    // component is 12 to 18 MB): give the first batch time.
    let out = read_to_end(&output, forwarded.len(), Duration::from_secs(120));
    let dead_letters = read_to_end(&dlq, dead.len(), Duration::from_secs(60));

    // Every forwarded message exactly once, unchanged, with its key and header.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in &out {
        let i: usize = r.key_str()[1..].parse().expect("key k<i>");
        assert_eq!(r.value_str(), input(i), "value of k{i} unchanged");
        assert_eq!(
            r.header("trace"),
            Some(format!("t{i}").as_bytes()),
            "header of k{i} kept"
        );
        *seen.entry(r.key_str()).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> =
        forwarded.iter().map(|i| (format!("k{i}"), 1)).collect();
    assert_eq!(
        seen, expected,
        "{plugin}: each forwarded input exactly once, nothing dropped by mistake"
    );
    assert_eq!(out.len(), forwarded.len());

    let mut dead_keys: Vec<String> = dead_letters.iter().map(|r| r.key_str()).collect();
    dead_keys.sort();
    let mut expected_dead: Vec<String> = dead.iter().map(|i| format!("k{i}")).collect();
    expected_dead.sort();
    assert_eq!(
        dead_keys, expected_dead,
        "{plugin}: the non-JSON inputs dead-lettered once each"
    );
    for d in &dead_letters {
        assert_eq!(d.header("kwasm.error.kind"), Some(&b"permanent"[..]));
        // The plugin is named after its file, `plugin_path`'s `go_filter.wasm`.
        assert_eq!(
            d.header("kwasm.plugin.name"),
            Some(plugin.replace('-', "_").as_bytes())
        );
        let message = String::from_utf8_lossy(d.header("kwasm.error.message").unwrap_or_default())
            .into_owned();
        assert!(message.starts_with("invalid JSON: "), "{plugin}: {message}");
    }

    // The whole input is committed.
    let ends = end_offsets(&input_topic);
    assert_eq!(ends.iter().sum::<i64>(), produced.len() as i64);
    let committed_all = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        committed_offsets(&group, &input_topic, PARTITIONS)
            .iter()
            .zip(&ends)
            .all(|(c, e)| *c == Some(*e))
    });
    assert!(
        committed_all,
        "{plugin}: committed {:?}, end offsets {ends:?}",
        committed_offsets(&group, &input_topic, PARTITIONS)
    );
}

#[test]
fn python_filter_pipeline_processes_every_input_exactly_once() {
    filter_pipeline_processes_every_input_exactly_once("python-filter");
}

#[test]
fn js_filter_pipeline_processes_every_input_exactly_once() {
    filter_pipeline_processes_every_input_exactly_once("js-filter");
}

#[test]
fn go_filter_pipeline_processes_every_input_exactly_once() {
    filter_pipeline_processes_every_input_exactly_once("go-filter");
}
