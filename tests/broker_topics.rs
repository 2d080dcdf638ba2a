//! End-to-end: input topics as Apache Kafka writes them, on the broker
//! started by scripts/test.
//!
//! - Transactions: an input written transactionally, with an aborted
//!   transaction between two committed ones, has offset gaps (the aborted
//!   records, which `read_committed` never hands over) and control records
//!   (one marker per transaction), the last one at the very end of the
//!   partition. The host must pass on exactly the committed records and
//!   commit to the end of the partition, past the final marker.

mod e2e;

use std::time::Duration;

use e2e::{Host, PipelineDef};
use kwasm_tests::{
    OutRecord, committed_offsets, consume_all, create_topic, create_topic_with_config, end_offsets,
    produce, produce_transactions, read_to_end, unique, wait_until,
};

#[test]
fn a_transactional_input_passes_only_committed_records_and_commits_past_the_markers() {
    let input = unique("txn-in");
    let output = format!("{input}-out");
    let group = format!("{input}-group");
    create_topic(&input, 1);
    create_topic(&output, 1);
    let values = |prefix: &str, from: usize| -> Vec<String> {
        (from..from + 10).map(|i| format!("{prefix}{i}")).collect()
    };
    // Offsets: c0..c9 at 0..=9, commit marker 10; a0..a9 at 11..=20, abort
    // marker 21; c10..c19 at 22..=31, commit marker 32. End offset 33.
    let end = produce_transactions(
        &input,
        0,
        &[
            (true, values("c", 0)),
            (false, values("a", 0)),
            (true, values("c", 10)),
        ],
    );
    assert_eq!(end, 33, "10 + 10 + 10 records and 3 markers");

    let pipeline = PipelineDef {
        name: "txn",
        plugin: "passthrough",
        config: &[],
        input: &input,
        output: &output,
        group: &group,
        dead_letter: None,
    };
    let _host = Host::start("host-a", &pipeline);
    let out = read_to_end(&output, 20, Duration::from_secs(60));
    let got: Vec<String> = out.iter().map(|r| r.value_str()).collect();
    let want: Vec<String> = values("c", 0).into_iter().chain(values("c", 10)).collect();
    assert_eq!(got, want, "exactly the committed records, in order");

    let mut committed = None;
    let at_end = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        committed = committed_offsets(&group, &input, 1)[0];
        committed == Some(end)
    });
    assert!(
        at_end,
        "committed {committed:?}, end offset {end}: the group must commit past the final transaction marker"
    );
}

#[test]
fn a_compacted_input_with_gaps_is_passed_on_exactly_and_committed_to_the_end() {
    let input = unique("compacted-in");
    let output = format!("{input}-out");
    let group = format!("{input}-group");
    // Segments roll after 100 ms and are cleanable at once; the broker's
    // cleaner looks every second (log.cleaner.backoff.ms in kafka-node).
    create_topic_with_config(
        &input,
        1,
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.ms", "100"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("min.compaction.lag.ms", "0"),
            ("delete.retention.ms", "100"),
        ],
    );
    create_topic(&output, 1);
    // 10 keys written 10 times each: offsets 0..=99, key k{i % 10}.
    let record = |n: usize| {
        let value = format!("k{}:{}", n % 10, n / 10);
        OutRecord::to(0, value).key(format!("k{}", n % 10))
    };
    produce(&input, (0..100).map(record));
    // Each later record rolls the segment (older than segment.ms) before it
    // is appended, so the earlier ones become cleanable.
    let mut next = 100;
    let compacted = wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
        std::thread::sleep(Duration::from_millis(150));
        produce(&input, [record(next)]);
        next += 1;
        consume_all(&input, next, Duration::from_secs(2)).len() < next / 2
    });
    assert!(compacted, "the input was not compacted within 60 s");
    let left = read_to_end(&input, 0, Duration::from_secs(5));
    let end = end_offsets(&input)[0];
    assert!(
        (left.len() as i64) < end,
        "gaps expected: {} records up to offset {end}",
        left.len()
    );
    // The last record is in the active segment, never compacted: the input
    // ends with a record, and committing to the end is "last + 1".
    assert_eq!(left.last().map(|r| r.offset), Some(end - 1));

    let pipeline = PipelineDef {
        name: "compacted",
        plugin: "passthrough",
        config: &[],
        input: &input,
        output: &output,
        group: &group,
        dead_letter: None,
    };
    let _host = Host::start("host-a", &pipeline);
    let out = read_to_end(&output, left.len(), Duration::from_secs(60));
    let got: Vec<String> = out.iter().map(|r| r.value_str()).collect();
    let want: Vec<String> = left.iter().map(|r| r.value_str()).collect();
    assert_eq!(got, want, "exactly the records compaction left, in order");
    println!(
        "compacted input: {} records left of {next}, end offset {end}",
        left.len()
    );

    let mut committed = None;
    let at_end = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        committed = committed_offsets(&group, &input, 1)[0];
        committed == Some(end)
    });
    assert!(at_end, "committed {committed:?}, end offset {end}");
}
