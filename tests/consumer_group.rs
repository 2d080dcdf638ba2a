//! End-to-end: `kwasm serve` processes against the real broker started by
//! scripts/test. Each test uses its own topics and group.
//!
//! The consumer-group tests run under both group protocols: each body takes
//! a [`Protocol`], and [`e2e::both_protocols!`] makes a `classic` and a `consumer`
//! test of it (`one_host_..::classic`, `one_host_..::consumer`).

mod e2e;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use e2e::{Host, PipelineDef, Protocol, Topics, account, passthrough};
use kwasm_tests::{
    OutRecord, by_partition, committed_offsets, committed_to_end, consume_all, end_offsets,
    produce, produce_sequence, read_to_end, wait_committed_to_end, wait_until,
};

const PARTITIONS: i32 = 6;

e2e::both_protocols!(
    one_host_processes_every_message_once_in_order_and_commits_the_end,
    three_hosts_own_disjoint_partitions_and_sigterm_hands_off_without_duplicates,
    sigkill_of_one_of_three_hosts_loses_nothing,
    a_fourth_host_takes_partitions_without_loss_or_duplicates,
    restarted_hosts_resume_at_the_committed_offsets,
    consumption_never_stalls_across_many_rebalances,
);

fn topics(test: &str) -> Topics {
    e2e::topics(test, PARTITIONS)
}

/// Waits until the hosts hold every partition between them, each exactly
/// once, and each holds some (`e2e::wait_for_exclusive_cover`).
fn wait_for_exclusive_cover(hosts: &[&Host], topic: &str, timeout: Duration) -> Vec<BTreeSet<i32>> {
    let ports: Vec<u16> = hosts.iter().map(|h| h.admin_port).collect();
    e2e::wait_for_exclusive_cover(&ports, topic, PARTITIONS, timeout)
}

fn one_host_processes_every_message_once_in_order_and_commits_the_end(protocol: Protocol) {
    let t = topics("one-host");
    let produced = produce_sequence(&t.input, PARTITIONS, 100_000);
    let host = Host::start_as("host-a", &passthrough(&t), protocol);

    let output = read_to_end(&t.output, produced.len(), Duration::from_secs(90));
    let acc = account(&produced, &output);
    assert_eq!(
        (acc.lost, acc.duplicates, acc.out_of_order),
        (0, 0, 0),
        "{acc:?}"
    );
    // Passthrough keeps the key, so the producer's partitioner spreads
    // outputs by key; within each output partition, every input
    // partition's sequence must be strictly increasing (checked above).
    assert_eq!(end_offsets(&t.output).iter().sum::<i64>(), 100_000);
    // ...and by the Java client's murmur2, not librdkafka's default CRC32:
    // a key lands where any other Kafka tool would put it.
    let misplaced: Vec<_> = output
        .iter()
        .filter_map(|r| {
            let key = r.key.as_deref()?;
            let java = kwasm_tests::kafka::java_partition(key, PARTITIONS);
            (r.partition != java)
                .then(|| (String::from_utf8_lossy(key).into_owned(), r.partition, java))
        })
        .take(5)
        .collect();
    assert!(
        misplaced.is_empty(),
        "(key, partition, Java's partition): {misplaced:?}"
    );
    // Passthrough keeps each input's timestamp (and its headers: see the
    // dead-letter tests).
    let input = consume_all(&t.input, produced.len(), Duration::from_secs(60));
    let sent: std::collections::HashMap<String, Option<i64>> = input
        .iter()
        .map(|r| (r.value_str(), r.timestamp_ms))
        .collect();
    let restamped = output
        .iter()
        .filter(|r| r.timestamp_ms.is_none() || sent.get(&r.value_str()) != Some(&r.timestamp_ms))
        .count();
    assert_eq!(restamped, 0, "outputs whose timestamp is not their input's");

    let (ends, committed) = wait_committed_to_end(&t.group, &t.input, Duration::from_secs(15));
    assert!(
        committed_to_end(&ends, &committed),
        "committed {committed:?}, end offsets {ends:?}"
    );
    assert!(host.process.log_contents().contains("partition assigned"));
}

/// `e2e::produce_slowly` over this file's partitions, in 20 chunks.
fn produce_slowly(
    topic: String,
    total: usize,
    over: Duration,
) -> std::thread::JoinHandle<Vec<(i32, String)>> {
    e2e::produce_slowly(topic, PARTITIONS, total, over, 20)
}

fn print_accounting(label: &str, acc: &e2e::Accounting) {
    println!(
        "{label}: lost {}, duplicates {}, out of order {}",
        acc.lost, acc.duplicates, acc.out_of_order
    );
}

fn three_hosts_own_disjoint_partitions_and_sigterm_hands_off_without_duplicates(
    protocol: Protocol,
) {
    let t = topics("sigterm");
    let pipeline = passthrough(&t);
    let mut a = Host::start_as("host-a", &pipeline, protocol);
    let b = Host::start_as("host-b", &pipeline, protocol);
    let c = Host::start_as("host-c", &pipeline, protocol);
    let owned = wait_for_exclusive_cover(&[&a, &b, &c], &t.input, Duration::from_secs(60));
    assert!(
        owned.iter().all(|p| !p.is_empty()),
        "every host owns something: {owned:?}"
    );
    println!("assignment of 3 hosts [{}]: {owned:?}", protocol.name());
    // The broker's view agrees: three members, of the protocol asked for,
    // holding what the hosts say they hold. (DescribeGroups lists no members
    // for a KIP-848 group; DescribeConsumerGroups describes both kinds.)
    let described = kwasm_tests::describe_consumer_group(&t.group);
    assert_eq!(
        described.group_type.to_lowercase(),
        protocol.name(),
        "{described:?}"
    );
    let mut broker_view: Vec<BTreeSet<i32>> = described
        .members
        .iter()
        .map(|(_, parts)| {
            parts
                .iter()
                .filter(|(topic, _)| *topic == t.input)
                .map(|(_, p)| *p)
                .collect()
        })
        .collect();
    let mut hosts_view = owned.clone();
    broker_view.sort();
    hosts_view.sort();
    assert_eq!(
        broker_view, hosts_view,
        "broker's view of the group: {described:?}"
    );

    let producer = produce_slowly(t.input.clone(), 30_000, Duration::from_secs(6));
    std::thread::sleep(Duration::from_secs(3));
    let signalled = Instant::now();
    a.process.sigterm();
    let exit = a
        .process
        .wait_exit(Duration::from_secs(30))
        .expect("host-a exits after SIGTERM");
    assert!(exit.success(), "graceful exit code 0, got {exit:?}");
    let survivors = wait_for_exclusive_cover(&[&b, &c], &t.input, Duration::from_secs(60));
    println!(
        "SIGTERM handoff [{}]: partitions held again elsewhere {:.2} s after the signal: {survivors:?}",
        protocol.name(),
        signalled.elapsed().as_secs_f64()
    );

    let produced = producer.join().expect("producer thread");
    let output = read_to_end(&t.output, produced.len(), Duration::from_secs(90));
    let acc = account(&produced, &output);
    print_accounting(&format!("SIGTERM [{}]", protocol.name()), &acc);
    assert_eq!(
        (acc.lost, acc.duplicates, acc.out_of_order),
        (0, 0, 0),
        "{acc:?}"
    );
    assert!(a.process.log_contents().contains("host shutting down"));
}

fn sigkill_of_one_of_three_hosts_loses_nothing(protocol: Protocol) {
    let t = topics("sigkill");
    let pipeline = passthrough(&t);
    let mut a = Host::start_as("host-a", &pipeline, protocol);
    let b = Host::start_as("host-b", &pipeline, protocol);
    let c = Host::start_as("host-c", &pipeline, protocol);
    wait_for_exclusive_cover(&[&a, &b, &c], &t.input, Duration::from_secs(60));

    let producer = produce_slowly(t.input.clone(), 30_000, Duration::from_secs(6));
    std::thread::sleep(Duration::from_secs(3));
    let killed = Instant::now();
    a.process.sigkill();
    let survivors = wait_for_exclusive_cover(&[&b, &c], &t.input, Duration::from_secs(60));
    println!(
        "SIGKILL failover [{}]: partitions held again elsewhere {:.2} s after the kill: {survivors:?}",
        protocol.name(),
        killed.elapsed().as_secs_f64()
    );

    let produced = producer.join().expect("producer thread");
    let output = read_to_end(&t.output, produced.len(), Duration::from_secs(90));
    let acc = account(&produced, &output);
    print_accounting(&format!("SIGKILL [{}]", protocol.name()), &acc);
    assert_eq!(acc.lost, 0, "{acc:?}");
}

fn a_fourth_host_takes_partitions_without_loss_or_duplicates(protocol: Protocol) {
    let t = topics("scale-out");
    let pipeline = passthrough(&t);
    let a = Host::start_as("host-a", &pipeline, protocol);
    let b = Host::start_as("host-b", &pipeline, protocol);
    let c = Host::start_as("host-c", &pipeline, protocol);
    wait_for_exclusive_cover(&[&a, &b, &c], &t.input, Duration::from_secs(60));

    let producer = produce_slowly(t.input.clone(), 30_000, Duration::from_secs(6));
    std::thread::sleep(Duration::from_secs(2));
    let d = Host::start_as("host-d", &pipeline, protocol);
    let owned = wait_for_exclusive_cover(&[&a, &b, &c, &d], &t.input, Duration::from_secs(60));
    let d_owned = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        d.partitions(&t.input).is_some_and(|p| !p.is_empty())
    });
    assert!(d_owned, "the new host got no partition: {owned:?}");
    println!(
        "assignment after scale-out: {:?}",
        [&a, &b, &c, &d].map(|h| h.partitions(&t.input))
    );

    let produced = producer.join().expect("producer thread");
    let output = read_to_end(&t.output, produced.len(), Duration::from_secs(90));
    let acc = account(&produced, &output);
    print_accounting(&format!("scale-out [{}]", protocol.name()), &acc);
    assert_eq!(
        (acc.lost, acc.duplicates, acc.out_of_order),
        (0, 0, 0),
        "{acc:?}"
    );
}

fn restarted_hosts_resume_at_the_committed_offsets(protocol: Protocol) {
    let t = topics("restart");
    let pipeline = passthrough(&t);
    let first = produce_sequence(&t.input, PARTITIONS, 6_000);
    let mut a = Host::start_as("host-a", &pipeline, protocol);
    let out = read_to_end(&t.output, first.len(), Duration::from_secs(60));
    assert_eq!(out.len(), first.len(), "every first record once");
    a.process.sigterm();
    assert!(
        a.process
            .wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
    let committed = committed_offsets(&t.group, &t.input, PARTITIONS);
    assert_eq!(
        committed,
        vec![Some(1_000); PARTITIONS as usize],
        "commits at shutdown"
    );

    // More input while no host runs, then a new host resumes.
    let second: Vec<(i32, String)> = (0..6_000)
        .map(|i| {
            let p = i % PARTITIONS;
            (p, format!("{p}:{}", 1_000 + i / PARTITIONS))
        })
        .collect();
    produce(
        &t.input,
        second
            .iter()
            .map(|(p, v)| OutRecord::to(*p, v.clone()).key(v.clone())),
    );
    let _b = Host::start_as("host-b", &pipeline, protocol);
    let all: Vec<(i32, String)> = first.iter().chain(&second).cloned().collect();
    let output = read_to_end(&t.output, all.len(), Duration::from_secs(60));
    let acc = account(&all, &output);
    assert_eq!(
        (acc.lost, acc.duplicates),
        (0, 0),
        "nothing committed is processed again: {acc:?}"
    );
    assert_eq!(output.len(), 12_000);
}

fn dead_letter_test(action: &str) {
    let t = topics(&format!("poison-{action}"));
    let config = [
        ("mode", "poison"),
        ("poison", "poison"),
        ("poison_action", action),
    ];
    let pipeline = PipelineDef {
        name: "poison",
        plugin: "misbehave",
        config: &config,
        ..passthrough(&t)
    };
    let mut records: Vec<OutRecord> = (0..300)
        .map(|i| OutRecord::to(i % 3, format!("ok-{i}")).key(format!("k{i}")))
        .collect();
    records[100] = OutRecord::to(1, "poison").key("bad").header("trace", "t-1");
    let produced = produce(&t.input, records);
    let (poison_partition, poison_offset) = produced[100];
    let host = Host::start("host-a", &pipeline);

    let dead = read_to_end(&t.dlq, 1, Duration::from_secs(60));
    assert_eq!(dead.len(), 1, "one dead letter");
    let d = &dead[0];
    assert_eq!(
        (d.key_str().as_str(), d.value_str().as_str()),
        ("bad", "poison")
    );
    let header = |n: &str| {
        String::from_utf8_lossy(d.header(n).unwrap_or_else(|| panic!("header {n} missing")))
            .into_owned()
    };
    assert_eq!(header("trace"), "t-1", "original headers kept");
    assert_eq!(header("kwasm.source.topic"), t.input);
    assert_eq!(
        header("kwasm.source.partition"),
        poison_partition.to_string()
    );
    assert_eq!(header("kwasm.source.offset"), poison_offset.to_string());
    assert_eq!(header("kwasm.plugin.name"), "misbehave");
    assert_eq!(header("kwasm.plugin.digest").len(), 64);
    let expected_kind = if action == "trap" {
        "trap"
    } else {
        "permanent"
    };
    assert_eq!(header("kwasm.error.kind"), expected_kind);
    assert_eq!(header("kwasm.attempts"), "1");
    assert!(!header("kwasm.error.message").is_empty());

    let output = read_to_end(&t.output, 299, Duration::from_secs(60));
    let values: BTreeSet<String> = output.iter().map(|r| r.value_str()).collect();
    let expected: BTreeSet<String> = (0..300)
        .filter(|&i| i != 100)
        .map(|i| format!("ok-{i}"))
        .collect();
    assert_eq!(values, expected, "every other message flows");
    assert_eq!(output.len(), 299, "no duplicates");
    let per_partition = by_partition(&output);
    assert!(per_partition.values().all(|rs| !rs.is_empty()));
    let committed_all = wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
        committed_offsets(&t.group, &t.input, PARTITIONS)
            .iter()
            .take(3)
            .all(|c| *c == Some(100))
    });
    assert!(
        committed_all,
        "committed past the poison message: {:?}",
        committed_offsets(&t.group, &t.input, PARTITIONS)
    );
    assert!(
        e2e::http_get(host.admin_port, "/healthz").is_some_and(|(s, _)| s == 200),
        "host stays up"
    );
}

#[test]
fn a_permanent_error_is_dead_lettered_with_context() {
    dead_letter_test("permanent");
}

#[test]
fn a_trapping_message_is_dead_lettered_and_others_flow() {
    dead_letter_test("trap");
}

#[test]
fn an_output_the_producer_refuses_is_dead_lettered_and_the_partition_moves_on() {
    // 1 020 000-byte values: within the host's record limit (1 MiB, the
    // broker's default), over librdkafka's `message.max.bytes` (1 000 000),
    // so `send` refuses them. Before, the partition stopped committing at
    // the first one.
    let t = topics("refused");
    let config = [("mode", "giant-output"), ("size", "1020000")];
    let pipeline = PipelineDef {
        name: "refused",
        plugin: "misbehave",
        config: &config,
        ..passthrough(&t)
    };
    let produced = produce(
        &t.input,
        (0..30).map(|i| OutRecord::to(i % 3, format!("v{i}")).key(format!("k{i}"))),
    );
    let host = Host::start("host-a", &pipeline);

    let dead = read_to_end(&t.dlq, produced.len(), Duration::from_secs(60));
    let values: BTreeSet<String> = dead.iter().map(|r| r.value_str()).collect();
    let expected: BTreeSet<String> = (0..30).map(|i| format!("v{i}")).collect();
    assert_eq!(
        values, expected,
        "every message dead-lettered, as it came in"
    );
    assert_eq!(dead.len(), 30, "each message dead-lettered once");
    for d in &dead {
        assert_eq!(d.header("kwasm.error.kind"), Some(&b"output-rejected"[..]));
        let message = String::from_utf8_lossy(d.header("kwasm.error.message").unwrap_or_default())
            .to_lowercase();
        assert!(message.contains("size"), "the producer's reason: {message}");
    }
    let (ends, committed) = wait_committed_to_end(&t.group, &t.input, Duration::from_secs(15));
    assert!(
        committed_to_end(&ends, &committed),
        "committed {committed:?}, end offsets {ends:?}"
    );
    assert_eq!(
        end_offsets(&t.output).iter().sum::<i64>(),
        0,
        "nothing half-sent"
    );
    assert!(
        e2e::http_get(host.admin_port, "/healthz").is_some_and(|(s, _)| s == 200),
        "host stays up"
    );
}

#[test]
fn retryable_errors_are_retried_then_dead_lettered() {
    let t = topics("retry");
    let config = [
        ("mode", "poison"),
        ("poison", "flaky"),
        ("poison_action", "retryable"),
    ];
    let pipeline = PipelineDef {
        name: "retry",
        plugin: "misbehave",
        config: &config,
        ..passthrough(&t)
    };
    // One key, so the outputs share an output partition and keep their order.
    produce(
        &t.input,
        ["a", "flaky", "b"].map(|v| OutRecord::to(0, v).key("k")),
    );
    let _host = Host::start("host-a", &pipeline);
    let dead = read_to_end(&t.dlq, 1, Duration::from_secs(60));
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].header("kwasm.error.kind"),
        Some(&b"retries-exhausted"[..])
    );
    assert_eq!(
        dead[0].header("kwasm.attempts"),
        Some(&b"2"[..]),
        "max_attempts = 2 in the test config"
    );
    let output = read_to_end(&t.output, 2, Duration::from_secs(30));
    assert_eq!(
        output.iter().map(|r| r.value_str()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
}

fn consumption_never_stalls_across_many_rebalances(protocol: Protocol) {
    // Regression guard for the StreamConsumer-style stalls users of rdkafka
    // hit after rebalances (rust-rdkafka 638, 665): a third host joins and
    // leaves four times under load; every message must still come out once.
    let t = topics("churn");
    let pipeline = passthrough(&t);
    let a = Host::start_as("host-a", &pipeline, protocol);
    let b = Host::start_as("host-b", &pipeline, protocol);
    wait_for_exclusive_cover(&[&a, &b], &t.input, Duration::from_secs(60));
    let producer = produce_slowly(t.input.clone(), 40_000, Duration::from_secs(16));
    for round in 0..4 {
        let mut c = Host::start_as(&format!("host-c{round}"), &pipeline, protocol);
        let joined = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            c.partitions(&t.input).is_some_and(|p| !p.is_empty())
        });
        assert!(joined, "round {round}: the joining host got nothing");
        c.process.sigterm();
        assert!(
            c.process
                .wait_exit(Duration::from_secs(30))
                .is_some_and(|s| s.success()),
            "round {round}: clean exit"
        );
        wait_for_exclusive_cover(&[&a, &b], &t.input, Duration::from_secs(60));
    }
    let produced = producer.join().expect("producer thread");
    let output = read_to_end(&t.output, produced.len(), Duration::from_secs(90));
    let acc = account(&produced, &output);
    print_accounting(&format!("churn [{}]", protocol.name()), &acc);
    assert_eq!(
        (acc.lost, acc.duplicates, acc.out_of_order),
        (0, 0, 0),
        "{acc:?}"
    );
}

#[test]
fn stopping_during_a_retry_never_commits_past_the_retried_message() {
    // Regression: a retry interrupted by SIGTERM abandoned its message, but
    // the rest of the batch went on, so the commit moved past the message
    // nobody had handled: it was lost for the next owner.
    let t = topics("retry-stop");
    let config = [
        ("mode", "poison"),
        ("poison", "flaky"),
        ("poison_action", "retryable"),
    ];
    let pipeline = PipelineDef {
        name: "retry-stop",
        plugin: "misbehave",
        config: &config,
        ..passthrough(&t)
    };
    produce(
        &t.input,
        ["a", "flaky", "b", "c"].map(|v| OutRecord::to(0, v).key("k")),
    );
    // max_attempts 2 with a 10 ms backoff in the shared config would settle
    // at once: give this host a long backoff to stop it in.
    let host = Host::start_with_retry(&pipeline, 5, 60_000);
    let first = consume_all(&t.output, 1, Duration::from_secs(60));
    assert_eq!(
        first.iter().map(|r| r.value_str()).collect::<Vec<_>>(),
        vec!["a"]
    );
    std::thread::sleep(Duration::from_secs(1));
    let mut host = host;
    host.process.sigterm();
    assert!(
        host.process
            .wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success()),
        "clean exit"
    );
    assert_eq!(
        committed_offsets(&t.group, &t.input, 1),
        vec![Some(1)],
        "committed up to `a` only: `flaky` and what follows are left for the next owner"
    );
    assert_eq!(
        end_offsets(&t.output).iter().sum::<i64>(),
        1,
        "nothing after `flaky` was produced"
    );
}
