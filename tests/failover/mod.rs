//! Shared scenario of the broker-failure tests (`tests/broker_*_failure.rs`,
//! `tests/broker_cluster_outage.rs`): a 3-node Kafka cluster of this test's
//! own (replication factor 3, `min.insync.replicas=2`), one kwasm host
//! running passthrough from a 6-partition input to a 6-partition output, and
//! input produced throughout by an idempotent `acks=all` producer.
//!
//! Each of those binaries holds one test, because it points the support
//! library (`KWASM_TEST_BROKERS`) at its own cluster.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::e2e::{Host, PipelineDef, account, pipeline_toml};
use kwasm_tests::{
    KafkaCluster, OutRecord, committed_offsets, create_topic_replicated, partition_leaders,
    produce, unique, wait_until,
};

/// Partitions of the input and output topics.
pub const PARTITIONS: i32 = 6;

/// Broker settings of the failure tests: a SIGKILLed node is fenced by the
/// controller after 4 s without a heartbeat (Kafka's default is 9 s), so its
/// partitions get new leaders sooner; nothing else changes.
pub const CLUSTER_SETTINGS: [&str; 2] = [
    "broker.session.timeout.ms=4000",
    "broker.heartbeat.interval.ms=500",
];

/// The cluster, the topics and the host of one scenario.
pub struct Scenario {
    pub cluster: KafkaCluster,
    pub input: String,
    pub output: String,
    pub group: String,
    pub dlq: String,
    /// The pipeline's `delivery` (`at-least-once` or `exactly-once`).
    pub delivery: &'static str,
}

impl Scenario {
    /// Starts the cluster, points the support library at it and creates the
    /// topics (replication factor 3).
    pub fn start(name: &str) -> Scenario {
        let cluster = KafkaCluster::start(3, &CLUSTER_SETTINGS);
        // SAFETY: the only test of its binary, set before any other thread
        // of the test reads the environment.
        unsafe { std::env::set_var("KWASM_TEST_BROKERS", cluster.bootstrap()) };
        let input = unique(&format!("{name}-in"));
        let scenario = Scenario {
            cluster,
            output: format!("{input}-out"),
            group: format!("{input}-group"),
            dlq: format!("{input}-dlq"),
            input,
            delivery: "at-least-once",
        };
        create_topic_replicated(&scenario.input, PARTITIONS, 3);
        create_topic_replicated(&scenario.output, PARTITIONS, 3);
        create_topic_replicated(&scenario.dlq, 1, 3);
        scenario
    }

    /// The passthrough pipeline of this scenario.
    pub fn pipeline(&self) -> PipelineDef<'_> {
        PipelineDef {
            name: "failover",
            plugin: "passthrough",
            config: &[],
            input: &self.input,
            output: &self.output,
            group: &self.group,
            dead_letter: Some(&self.dlq),
        }
    }

    /// Starts `host-a` and waits until it holds every input partition.
    pub fn start_host(&self) -> Host {
        // Not the tests' usual 6 s session: a coordinator failover (node
        // fenced after 4 s, election, group reload) can take longer on two
        // loaded cores, and librdkafka then declares its assignment lost
        // (its own session timer) and redoes uncommitted work: duplicates
        // caused by the test's setting, not by the failure under test.
        // Kafka's default is 45 s.
        let pipeline = pipeline_toml(&self.pipeline()).replace(
            "[pipeline.retry]",
            &format!("delivery = {:?}\n[pipeline.retry]", self.delivery),
        );
        let host =
            Host::start_pipelines_with_session_timeout("host-a", &self.group, &pipeline, 30_000);
        let all: BTreeSet<i32> = (0..PARTITIONS).collect();
        let holds_all = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
            host.partitions(&self.input).is_some_and(|p| p == all)
        });
        assert!(
            holds_all,
            "host never held all partitions: {:?}",
            host.partitions(&self.input)
        );
        host
    }

    /// Committed offsets of the group on the input (0 where none).
    pub fn committed(&self) -> Vec<i64> {
        committed_offsets(&self.group, &self.input, PARTITIONS)
            .into_iter()
            .map(|c| c.unwrap_or(0))
            .collect()
    }

    /// Waits until every input partition's committed offset is past
    /// `before` (input keeps arriving on every partition, so this is
    /// "consume, process, produce with acks=all, commit" working again on
    /// all of them) and returns how long that took from `since`.
    ///
    /// # Panics
    /// If that does not happen within `timeout`.
    pub fn wait_processing_again(
        &self,
        before: &[i64],
        since: Instant,
        timeout: Duration,
    ) -> Duration {
        let mut last = Vec::new();
        let resumed = wait_until(timeout, Duration::from_millis(100), || {
            // A committed-offsets request can fail while the coordinator
            // moves; treat a failure as "not yet".
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.committed())) {
                Ok(now) => {
                    let advanced = now.iter().zip(before).all(|(n, b)| n > b);
                    last = now;
                    advanced
                }
                Err(_) => false,
            }
        });
        assert!(
            resumed,
            "processing did not resume on every partition within {} s: committed before {before:?}, now {last:?}",
            timeout.as_secs()
        );
        since.elapsed()
    }
}

/// Records `"{p}:{seq}"` for `seq` in `from..from + per_partition` on every
/// partition, interleaved, in the order produced.
pub fn sequence(from: usize, per_partition: usize) -> Vec<(i32, String)> {
    (0..per_partition * PARTITIONS as usize)
        .map(|i| {
            let p = (i % PARTITIONS as usize) as i32;
            (p, format!("{p}:{}", from + i / PARTITIONS as usize))
        })
        .collect()
}

/// Produces `chunks` chunks of `per_chunk_per_partition` records per
/// partition, one chunk every `every`, from a thread; returns what it
/// produced (every record acknowledged by acks=all, or the thread panics).
pub fn produce_steadily(
    topic: String,
    chunks: usize,
    per_chunk_per_partition: usize,
    every: Duration,
) -> std::thread::JoinHandle<Vec<(i32, String)>> {
    std::thread::spawn(move || {
        let mut produced = Vec::new();
        for c in 0..chunks {
            let chunk = sequence(c * per_chunk_per_partition, per_chunk_per_partition);
            produce(
                &topic,
                chunk
                    .iter()
                    .map(|(p, v)| OutRecord::to(*p, v.clone()).key(v.clone())),
            );
            produced.extend(chunk);
            std::thread::sleep(every);
        }
        produced
    })
}

/// SIGKILLs the node leading the most input and output partitions (at least
/// one of each) while a host runs `delivery`, restarts it 10 s later, and
/// checks that processing resumed on every partition by itself and that the
/// output, read to the end, holds every input once, in order.
pub fn kill_leader_mid_stream(name: &str, delivery: &'static str) {
    let mut s = Scenario::start(name);
    s.delivery = delivery;
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
    account(&produced, &output)
        .assert_each_once(&format!("leader kill [{delivery}]"), produced.len());
    host.wait_ready(Duration::from_secs(30));
}
