//! End-to-end on a 3-node Kafka cluster: SIGKILL the node that leads input
//! and output partitions while a host processes a steady stream, restart it
//! later. Nothing may be lost or duplicated (idempotent producer with
//! acks=all; the host's consumer and group survive), and processing must
//! resume on every partition by itself.

mod e2e;
mod failover;

use std::time::{Duration, Instant};

use e2e::account;
use failover::{PARTITIONS, Scenario, produce_steadily};
use kwasm_tests::partition_leaders;

#[test]
fn killing_the_leader_of_input_and_output_partitions_loses_and_duplicates_nothing() {
    let mut s = Scenario::start("leader-kill");
    let host = s.start_host();
    // 30 chunks of 100 records per partition, one every 500 ms: 18 000
    // records over about 15 s.
    let producer = produce_steadily(s.input.clone(), 30, 100, Duration::from_millis(500));
    std::thread::sleep(Duration::from_secs(4));

    // The victim: the node leading the most input and output partitions
    // together, and at least one of each.
    let input_leaders = partition_leaders(&s.input);
    let output_leaders = partition_leaders(&s.output);
    let victim = s
        .cluster
        .ids()
        .into_iter()
        .filter(|id| {
            input_leaders.contains(&(*id as i32)) && output_leaders.contains(&(*id as i32))
        })
        .max_by_key(|id| {
            input_leaders
                .iter()
                .chain(&output_leaders)
                .filter(|l| **l == *id as i32)
                .count()
        })
        .unwrap_or_else(|| {
            panic!("no node leads both input and output partitions: input {input_leaders:?}, output {output_leaders:?}")
        });
    let led_in: Vec<usize> = (0..PARTITIONS as usize)
        .filter(|p| input_leaders[*p] == victim as i32)
        .collect();
    let led_out: Vec<usize> = (0..PARTITIONS as usize)
        .filter(|p| output_leaders[*p] == victim as i32)
        .collect();
    let before = s.committed();
    let killed = Instant::now();
    s.cluster.kill(victim);
    println!(
        "SIGKILLed node {victim}, leader of input partitions {led_in:?} and output partitions {led_out:?}"
    );

    let resumed = s.wait_processing_again(&before, killed, Duration::from_secs(60));
    println!(
        "leader kill: processing again on every partition {:.2} s after the kill; new input leaders {:?}, output leaders {:?}",
        resumed.as_secs_f64(),
        partition_leaders(&s.input),
        partition_leaders(&s.output)
    );
    let down_for = Duration::from_secs(10).saturating_sub(killed.elapsed());
    std::thread::sleep(down_for);
    s.cluster.restart(victim);
    println!(
        "node {victim} restarted {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );

    let produced = producer.join().expect("producer thread");
    let output = kwasm_tests::read_to_end(&s.output, produced.len(), Duration::from_secs(120));
    let acc = account(&produced, &output);
    println!(
        "leader kill: produced {}, lost {}, duplicates {}, out of order {}",
        produced.len(),
        acc.lost,
        acc.duplicates,
        acc.out_of_order
    );
    assert_eq!(
        (acc.lost, acc.duplicates, acc.out_of_order),
        (0, 0, 0),
        "{acc:?}"
    );
    host.wait_ready(Duration::from_secs(30));
}
