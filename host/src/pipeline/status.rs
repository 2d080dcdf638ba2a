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
    /// `running`, or `paused` while its worker's queue is full.
    pub state: &'static str,
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
                state: "running",
            },
        );
    }

    pub(crate) fn released(&self, topic: &str, partition: i32) {
        self.table().remove(&(topic.to_owned(), partition));
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

    pub(crate) fn set_paused(&self, topic: &str, partition: i32, paused: bool) {
        if let Some(p) = self.table().get_mut(&(topic.to_owned(), partition)) {
            p.state = if paused { "paused" } else { "running" };
        }
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
