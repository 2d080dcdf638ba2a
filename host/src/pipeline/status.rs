//! What a host holds, for the admin API and logs. Written by the consumer
//! thread (assign, release, fetch, commit), read by HTTP handlers.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use std::sync::Arc;

use super::DeploymentCell;
use crate::config::PipelineSpec;

/// One held partition.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionStatus {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Next offset to fetch (last fetched + 1), if anything was fetched.
    pub position: Option<i64>,
    /// Last committed offset, if any was committed by this host.
    pub committed: Option<i64>,
    /// The partition's end offset, from librdkafka's statistics (every
    /// second).
    pub high_watermark: Option<i64>,
    /// `high_watermark - committed` (or `- position` before the first
    /// commit): messages not yet safely done.
    pub lag: Option<i64>,
    /// Where the partition is in its life: `running`, `paused` (its
    /// worker's queue is full), `draining` (being let go) or `stalled` (with
    /// the `reason`: it stopped committing and needs attention).
    #[serde(flatten)]
    pub state: PartitionState,
}

/// Where a held partition is in its life (DESIGN.md, "Partition
/// lifecycle"). Changed only through [`PartitionState::on`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum PartitionState {
    /// Fetching and processing.
    Running,
    /// Not fetched: the worker's queue is full (a batch is held).
    Paused,
    /// Being let go (revoked or shutting down): no new batch starts.
    Draining,
    /// Not advancing until someone acts or the cause clears: the plugin
    /// cannot be instantiated, or an output's delivery failed in a way no
    /// dead letter can stand in for.
    Stalled {
        /// What is wrong, for the operator.
        reason: String,
    },
}

/// What happens to a held partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionEvent {
    /// The worker's queue filled: fetching pauses.
    QueueFull,
    /// The worker caught up: fetching resumes.
    QueueDrained,
    /// The worker or a delivery cannot go on.
    Stalled(String),
    /// The cause of a stall cleared (the plugin instantiated).
    Recovered,
    /// The partition is being let go.
    Draining,
}

impl PartitionState {
    /// The one transition function. Draining is final; a stall outranks
    /// pausing (a stalled worker's queue fills, and "stalled" is what the
    /// operator must see) and ends only with [`PartitionEvent::Recovered`].
    pub fn on(self, event: PartitionEvent) -> PartitionState {
        use PartitionEvent as E;
        use PartitionState as S;
        match (self, event) {
            (S::Draining, _) | (_, E::Draining) => S::Draining,
            (_, E::Stalled(reason)) => S::Stalled { reason },
            (S::Stalled { .. }, E::Recovered) => S::Running,
            (stalled @ S::Stalled { .. }, _) => stalled,
            (_, E::QueueFull) => S::Paused,
            (_, E::QueueDrained) => S::Running,
            (state, E::Recovered) => state,
        }
    }

    /// The state's name, as the API shows it.
    pub fn name(&self) -> &'static str {
        match self {
            PartitionState::Running => "running",
            PartitionState::Paused => "paused",
            PartitionState::Draining => "draining",
            PartitionState::Stalled { .. } => "stalled",
        }
    }
}

/// One pipeline on this host.
#[derive(Debug)]
pub struct PipelineStatus {
    /// Pipeline name.
    pub pipeline: String,
    /// Consumer group.
    pub group_id: String,
    spec: PipelineSpec,
    deployment: Arc<DeploymentCell>,
    partitions: Mutex<BTreeMap<(String, i32), PartitionStatus>>,
    broker_ok: AtomicBool,
}

impl PipelineStatus {
    pub(crate) fn new(spec: &PipelineSpec, deployment: Arc<DeploymentCell>) -> Self {
        PipelineStatus {
            pipeline: spec.name.clone(),
            group_id: spec.group_id(),
            spec: spec.clone(),
            deployment,
            partitions: Mutex::new(BTreeMap::new()),
            broker_ok: AtomicBool::new(true),
        }
    }

    /// The pipeline's definition.
    pub fn spec(&self) -> &PipelineSpec {
        &self.spec
    }

    /// What the pipeline runs now.
    pub fn deployment(&self) -> &Arc<DeploymentCell> {
        &self.deployment
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, i32), PartitionStatus>> {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn assigned(&self, topic: &str, partition: i32) {
        self.table().insert(
            (topic.to_owned(), partition),
            PartitionStatus {
                topic: topic.to_owned(),
                partition,
                position: None,
                committed: None,
                high_watermark: None,
                lag: None,
                state: PartitionState::Running,
            },
        );
    }

    pub(crate) fn released(&self, topic: &str, partition: i32) {
        let mut table = self.table();
        let gone = table.remove(&(topic.to_owned(), partition));
        if gone.is_some_and(|p| matches!(p.state, PartitionState::Stalled { .. })) {
            let stalled = table
                .values()
                .filter(|p| matches!(p.state, PartitionState::Stalled { .. }))
                .count();
            metrics::gauge!(crate::metrics_names::PARTITIONS_STALLED, "pipeline" => self.pipeline.clone())
                .set(stalled as f64);
        }
    }

    pub(crate) fn fetched(&self, topic: &str, partition: i32, offset: i64) {
        if let Some(p) = self.table().get_mut(&(topic.to_owned(), partition)) {
            p.position = Some(offset + 1);
        }
    }

    pub(crate) fn committed(&self, topic: &str, partition: i32, offset: i64) {
        if let Some(p) = self.table().get_mut(&(topic.to_owned(), partition)) {
            p.committed = Some(offset);
        }
    }

    /// Applies `event` to a held partition's state.
    pub(crate) fn partition_event(&self, topic: &str, partition: i32, event: PartitionEvent) {
        let mut table = self.table();
        let Some(p) = table.get_mut(&(topic.to_owned(), partition)) else {
            return;
        };
        let was_stalled = matches!(p.state, PartitionState::Stalled { .. });
        p.state = std::mem::replace(&mut p.state, PartitionState::Running).on(event);
        if was_stalled != matches!(p.state, PartitionState::Stalled { .. }) {
            let stalled = table
                .values()
                .filter(|p| matches!(p.state, PartitionState::Stalled { .. }))
                .count();
            metrics::gauge!(crate::metrics_names::PARTITIONS_STALLED, "pipeline" => self.pipeline.clone())
                .set(stalled as f64);
        }
    }

    /// The stalled partitions and why, for `/readyz`.
    pub fn stalled(&self) -> Vec<(String, i32, String)> {
        self.table()
            .values()
            .filter_map(|p| match &p.state {
                PartitionState::Stalled { reason } => {
                    Some((p.topic.clone(), p.partition, reason.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// Records the end offset and derives the lag.
    pub(crate) fn set_high_watermark(&self, topic: &str, partition: i32, high: i64) {
        if let Some(p) = self.table().get_mut(&(topic.to_owned(), partition)) {
            p.high_watermark = Some(high);
            let done = p.committed.or(p.position).unwrap_or(0);
            let lag = (high - done).max(0);
            p.lag = Some(lag);
            metrics::gauge!(crate::metrics_names::LAG, "pipeline" => self.pipeline.clone(), "topic" => topic.to_owned(),
                "partition" => partition.to_string()).set(lag as f64);
        }
    }

    pub(crate) fn set_broker_ok(&self, ok: bool) {
        self.broker_ok.store(ok, Ordering::Relaxed);
    }

    /// Whether the last client event was a success (not an error).
    pub fn broker_ok(&self) -> bool {
        self.broker_ok.load(Ordering::Relaxed)
    }

    /// The partitions held now, sorted.
    pub fn partitions(&self) -> Vec<PartitionStatus> {
        self.table().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::PartitionEvent as E;
    use super::PartitionState as S;

    fn stalled(reason: &str) -> S {
        S::Stalled {
            reason: reason.into(),
        }
    }

    #[test]
    fn backpressure_pauses_and_resumes() {
        assert_eq!(S::Running.on(E::QueueFull), S::Paused);
        assert_eq!(S::Paused.on(E::QueueDrained), S::Running);
        assert_eq!(S::Running.on(E::Recovered), S::Running);
    }

    #[test]
    fn a_stall_outranks_backpressure_and_ends_only_on_recovery() {
        let s = S::Paused.on(E::Stalled("init trapped".into()));
        assert_eq!(s, stalled("init trapped"));
        assert_eq!(s.clone().on(E::QueueFull), stalled("init trapped"));
        assert_eq!(s.clone().on(E::QueueDrained), stalled("init trapped"));
        assert_eq!(s.clone().on(E::Stalled("other".into())), stalled("other"));
        assert_eq!(s.on(E::Recovered), S::Running);
    }

    #[test]
    fn draining_is_final() {
        for s in [S::Running, S::Paused, stalled("x")] {
            let d = s.on(E::Draining);
            assert_eq!(d, S::Draining);
            for e in [
                E::QueueFull,
                E::QueueDrained,
                E::Recovered,
                E::Stalled("y".into()),
            ] {
                assert_eq!(d.clone().on(e), S::Draining);
            }
        }
    }

    #[test]
    fn the_api_shows_the_state_and_a_stall_reason() {
        let json = serde_json::to_value(super::PartitionStatus {
            topic: "t".into(),
            partition: 3,
            position: None,
            committed: None,
            high_watermark: None,
            lag: None,
            state: stalled("cannot instantiate"),
        })
        .expect("a status serialises");
        assert_eq!(json["state"], "stalled");
        assert_eq!(json["reason"], "cannot instantiate");
        assert_eq!(stalled("x").name(), "stalled");
    }
}
