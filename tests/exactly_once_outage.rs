//! End-to-end: an exactly-once pipeline through a broker outage longer than
//! its transaction timeout. The broker aborts the transaction that was open
//! when it went down (the coordinator expires it once it is back); the host
//! must notice, abort on its side, rewind every partition to its last
//! committed offset and redo the work: nothing lost, nothing visible twice.
//!
//! This binary runs its own single-node Apache Kafka ([`KafkaCluster`], data
//! kept across the restart) and holds one test, since it points the support
//! library at that broker.

mod e2e;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use e2e::{Host, PipelineDef, account, pipeline_toml};
use kwasm_tests::{
    KafkaCluster, OutRecord, create_topic, end_offsets, produce, read_to_end, unique, wait_until,
};

const PARTITIONS: i32 = 3;

#[test]
fn an_outage_longer_than_the_transaction_timeout_aborts_rewinds_and_loses_nothing() {
    // The coordinator looks for expired transactions every second here
    // (Kafka's default is every 10 s).
    let mut kafka = KafkaCluster::start(
        1,
        &["transaction.abort.timed.out.transaction.cleanup.interval.ms=1000"],
    );
    // SAFETY: the only test of this binary, set before any thread reads it.
    unsafe { std::env::set_var("KWASM_TEST_BROKERS", kafka.bootstrap()) };
    let input = unique("eos-outage-in");
    let output = format!("{input}-out");
    let group = format!("{input}-group");
    create_topic(&input, PARTITIONS);
    create_topic(&output, PARTITIONS);
    let pipeline = PipelineDef {
        name: "eos-outage",
        // 2 ms per message: the 3 000 inputs below keep each partition busy
        // for about 2 s, so the broker dies under an open transaction.
        plugin: "misbehave",
        config: &[("mode", "slow"), ("delay_ms", "2")],
        input: &input,
        output: &output,
        group: &group,
        dead_letter: None,
    };
    let toml = pipeline_toml(&pipeline).replace(
        "[pipeline.retry]",
        "delivery = \"exactly-once\"\n[pipeline.transaction]\ntimeout_ms = 4000\ncommit_interval_ms = 100\n[pipeline.retry]",
    );
    let host = Host::start_with_pipelines("host-a", &group, &toml);
    let all: BTreeSet<i32> = (0..PARTITIONS).collect();
    let holds_all = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        host.partitions(&input).is_some_and(|p| p == all)
    });
    assert!(holds_all, "the host never held every partition");

    let mut produced = sequence(0, 3000);
    produce(
        &input,
        produced
            .iter()
            .map(|(p, v)| OutRecord::to(*p, v.clone()).key(v.clone())),
    );
    // Once outputs reach the broker (the high watermark counts records of
    // open transactions too), a transaction is open: kill the broker under
    // it. The slow plugin keeps the partitions busy for about 2 s more.
    let writing = wait_until(Duration::from_secs(60), Duration::from_millis(20), || {
        end_offsets(&output).iter().sum::<i64>() > 0
    });
    assert!(writing, "the host never wrote an output");
    kafka.kill(1);
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(12));
    kafka.restart(1);
    let outage = down.elapsed();
    println!(
        "broker down {:.1} s (the transaction timeout is 4 s)",
        outage.as_secs_f64()
    );
    let more = sequence(3000, 3000);
    produce(
        &input,
        more.iter()
            .map(|(p, v)| OutRecord::to(*p, v.clone()).key(v.clone())),
    );
    produced.extend(more);

    let out = read_to_end(&output, produced.len(), Duration::from_secs(120));
    let acc = account(&produced, &out);
    let log = host.process.log_contents();
    let aborted = log.matches("transaction aborted").count();
    println!(
        "exactly-once through a {:.0} s outage: {} outputs read to the end, lost {}, duplicates {}, out of order {}; {aborted} transaction(s) aborted",
        outage.as_secs_f64(),
        out.len(),
        acc.lost,
        acc.duplicates,
        acc.out_of_order
    );
    assert_eq!(
        (acc.lost, acc.duplicates, acc.out_of_order),
        (0, 0, 0),
        "{acc:?}"
    );
    assert_eq!(out.len(), produced.len());
    assert!(
        aborted >= 1,
        "no transaction was aborted: the outage did not hit an open transaction, so this test showed nothing"
    );
    host.wait_ready(Duration::from_secs(60));
}

/// Records `"{p}:{seq}"` for inputs `from..from + count`, round-robin over
/// the partitions.
fn sequence(from: usize, count: usize) -> Vec<(i32, String)> {
    (from..from + count)
        .map(|n| {
            let p = (n % PARTITIONS as usize) as i32;
            (p, format!("{p}:{}", n / PARTITIONS as usize))
        })
        .collect()
}
