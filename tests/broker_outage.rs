//! End-to-end: a broker outage pauses work and loses nothing.
//!
//! This binary runs its own single-node Apache Kafka ([`KafkaCluster`], data
//! kept across the restart) and points the support library at it; it holds
//! one test so nothing else in the process sees the changed broker address.

mod e2e;

use std::time::{Duration, Instant};

use e2e::{Host, PipelineDef, account, http_get};
use kwasm_tests::{
    KafkaCluster, OutRecord, create_topic, produce, read_to_end, unique, wait_until,
};

fn sequence(from: usize, count: usize) -> Vec<(i32, String)> {
    (from..from + count)
        .map(|n| ((n % 3) as i32, format!("{}:{}", n % 3, n / 3)))
        .collect()
}

#[test]
fn a_broker_outage_pauses_processing_and_loses_nothing() {
    let mut kafka = KafkaCluster::start(1, &[]);
    // SAFETY: the only test of this binary, set before any thread reads it.
    unsafe { std::env::set_var("KWASM_TEST_BROKERS", kafka.bootstrap()) };

    let input = unique("outage-in");
    let output = format!("{input}-out");
    let group = format!("{input}-group");
    create_topic(&input, 3);
    create_topic(&output, 3);
    let pipeline = PipelineDef {
        name: "outage",
        plugin: "passthrough",
        config: &[],
        input: &input,
        output: &output,
        group: &group,
        dead_letter: None,
    };
    let host = Host::start("host-a", &pipeline);
    let first = sequence(0, 3_000);
    produce(
        &input,
        first
            .iter()
            .map(|(p, v)| OutRecord::to(*p, v.clone()).key(v.clone())),
    );
    assert_eq!(
        read_to_end(&output, first.len(), Duration::from_secs(60)).len(),
        first.len()
    );
    host.wait_ready(Duration::from_secs(30));

    kafka.stop(1);
    let went_down = Instant::now();
    let not_ready = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        http_get(host.admin_port, "/readyz").is_some_and(|(s, _)| s == 503)
    });
    assert!(
        not_ready,
        "host never reported not-ready while the broker was down"
    );
    println!(
        "not ready {:.1} s after the broker stopped: {:?}",
        went_down.elapsed().as_secs_f64(),
        http_get(host.admin_port, "/readyz")
    );
    assert!(
        http_get(host.admin_port, "/healthz").is_some_and(|(s, _)| s == 200),
        "the host stays up"
    );
    std::thread::sleep(Duration::from_secs(3));

    kafka.restart(1);
    let second = sequence(3_000, 3_000);
    produce(
        &input,
        second
            .iter()
            .map(|(p, v)| OutRecord::to(*p, v.clone()).key(v.clone())),
    );
    let all: Vec<(i32, String)> = first.iter().chain(&second).cloned().collect();
    let out = read_to_end(&output, all.len(), Duration::from_secs(120));
    let acc = account(&all, &out);
    println!(
        "broker outage: lost {}, duplicates {}",
        acc.lost, acc.duplicates
    );
    assert_eq!(acc.lost, 0, "{acc:?}");
    host.wait_ready(Duration::from_secs(60));
}
