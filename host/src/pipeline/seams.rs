//! The partition worker's two seams: what runs a batch ([`Runner`], made
//! by the deployment in force, a [`Deploy`]) and where its results go
//! ([`Sink`]: output records and dead letters, and the partition's stalls).
//!
//! In the host they are a `PluginHandler` made by a [`Deployment`] and the
//! host's producer with the pipeline's status table ([`ProducerSink`]).
//! The worker's tests put scripted ones in their place, so its retry,
//! dead-letter, stall and hot-deploy rules are tested without wasmtime or a
//! broker. Each seam is as small as the worker's use of it: a call per
//! batch, not per record, goes through `Runner`; `Sink::send` is the one
//! per-record call, and it is static dispatch.

use std::sync::Arc;

use super::{Deployment, PartitionEvent, PipelineStatus};
use crate::kafka::{DeliveryToken, OutRecord, OutputProducer, ProduceError};
use crate::runtime::{BatchOutput, InputBatch, PluginError, PluginHandler};

/// Runs a partition's batches: one plugin instance, made when needed, with
/// its share of the host's plugin memory.
pub(crate) trait Runner: Send {
    /// Instantiates (and `init`s) if there is no instance. An error here is
    /// never the fault of the message in hand: the worker stalls.
    fn start(&mut self) -> Result<(), PluginError>;
    /// Runs one batch on the instance `start` made. An error fails the
    /// whole batch and leaves no instance.
    fn handle_batch(&mut self, batch: &InputBatch) -> Result<BatchOutput, PluginError>;
    /// Whether this runner holds its share of the plugin memory budget.
    fn holds_memory(&self) -> bool;
    /// Waits for that share; false if `cancelled` said stop first.
    fn wait_for_memory(&mut self, cancelled: &dyn Fn() -> bool) -> bool;
    /// Drops the instance and gives its memory back.
    fn release_memory(&mut self);
    /// Whether another partition waits for plugin memory.
    fn memory_contended(&self) -> bool;
    /// The plugin's name and digest, for dead-letter headers.
    fn plugin_name(&self) -> &str;
    fn plugin_digest(&self) -> &str;
}

/// What a pipeline runs: each worker makes its own [`Runner`] from it, at
/// assignment and when it switches to a newer one (hot deploy).
pub(crate) trait Deploy: Send + Sync + 'static {
    type Runner: Runner;
    /// A runner that instantiates only when it has a batch.
    fn idle_runner(&self) -> Self::Runner;
    /// Plugin name and registry version, for the log.
    fn describe(&self) -> (&str, Option<u32>);
}

/// Where a worker's results go.
pub(crate) trait Sink: Send {
    /// Queues one output record or dead letter; its delivery reaches the
    /// partition's tracker through `token`. An error means it was refused
    /// before queueing (nothing will be delivered).
    fn send(&self, record: OutRecord<'_>, token: DeliveryToken) -> Result<(), ProduceError>;
    /// Reports the partition stalled, recovered, ...
    fn report(&self, topic: &str, partition: i32, event: PartitionEvent);
}

impl Runner for PluginHandler {
    fn start(&mut self) -> Result<(), PluginError> {
        PluginHandler::start(self)
    }
    fn handle_batch(&mut self, batch: &InputBatch) -> Result<BatchOutput, PluginError> {
        PluginHandler::handle_batch(self, batch)
    }
    fn holds_memory(&self) -> bool {
        PluginHandler::holds_memory(self)
    }
    fn wait_for_memory(&mut self, cancelled: &dyn Fn() -> bool) -> bool {
        PluginHandler::wait_for_memory(self, cancelled)
    }
    fn release_memory(&mut self) {
        PluginHandler::release_memory(self)
    }
    fn memory_contended(&self) -> bool {
        PluginHandler::memory_contended(self)
    }
    fn plugin_name(&self) -> &str {
        self.plugin().name()
    }
    fn plugin_digest(&self) -> &str {
        self.plugin().digest()
    }
}

impl Deploy for Deployment {
    type Runner = PluginHandler;
    fn idle_runner(&self) -> PluginHandler {
        self.idle_handler()
    }
    fn describe(&self) -> (&str, Option<u32>) {
        (self.plugin.name(), self.version)
    }
}

/// The host's sink: records to the shared producer, partition events to the
/// pipeline's status (`/v1/assignments`, `/readyz`, metrics).
pub(crate) struct ProducerSink {
    pub producer: OutputProducer,
    pub status: Arc<PipelineStatus>,
}

impl Sink for ProducerSink {
    fn send(&self, record: OutRecord<'_>, token: DeliveryToken) -> Result<(), ProduceError> {
        self.producer.send(record, token)
    }
    fn report(&self, topic: &str, partition: i32, event: PartitionEvent) {
        self.status.partition_event(topic, partition, event)
    }
}
