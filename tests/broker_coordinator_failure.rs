//! End-to-end on a 3-node Kafka cluster: SIGKILL the node that is the host's
//! group coordinator while it processes a steady stream, restart it later.
//! Commits fail until the group finds its new coordinator; nothing may be
//! lost or duplicated, and processing must resume on every partition by
//! itself.

mod e2e;
mod failover;

use std::time::{Duration, Instant};

use e2e::account;
use failover::{Scenario, produce_steadily};
use kwasm_tests::{group_coordinator, wait_until};

#[test]
fn killing_the_group_coordinator_loses_and_duplicates_nothing() {
    let mut s = Scenario::start("coordinator-kill");
    let host = s.start_host();
    let producer = produce_steadily(s.input.clone(), 30, 100, Duration::from_millis(500));
    std::thread::sleep(Duration::from_secs(4));

    let mut coordinator = None;
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            coordinator = group_coordinator(&s.group);
            coordinator.is_some()
        }),
        "no coordinator found for group `{}`",
        s.group
    );
    let victim = coordinator.expect("checked above") as u32;
    let before = s.committed();
    let killed = Instant::now();
    s.cluster.kill(victim);
    println!(
        "SIGKILLed node {victim}, coordinator of group `{}`",
        s.group
    );

    let resumed = s.wait_processing_again(&before, killed, Duration::from_secs(60));
    println!(
        "coordinator kill: processing and committing again on every partition {:.2} s after the kill; new coordinator {:?}",
        resumed.as_secs_f64(),
        group_coordinator(&s.group)
    );
    std::thread::sleep(Duration::from_secs(10).saturating_sub(killed.elapsed()));
    s.cluster.restart(victim);

    let produced = producer.join().expect("producer thread");
    let output = kwasm_tests::read_to_end(&s.output, produced.len(), Duration::from_secs(120));
    account(&produced, &output).assert_each_once("coordinator kill", produced.len());
    host.wait_ready(Duration::from_secs(30));
}
