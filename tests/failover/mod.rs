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

use crate::e2e::{Host, PipelineDef};
use kwasm_tests::{
    KafkaCluster, OutRecord, committed_offsets, create_topic_replicated, produce, unique,
    wait_until,
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
        let host = Host::start_with_session_timeout("host-a", &self.pipeline(), 30_000);
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
