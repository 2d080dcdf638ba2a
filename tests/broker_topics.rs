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
use kwasm_tests::{committed_offsets, create_topic, produce_transactions, unique, wait_until};

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
    let out = e2e::read_output(&output, 20, Duration::from_secs(60));
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
