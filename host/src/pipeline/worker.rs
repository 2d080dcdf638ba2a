//! The partition worker: the one owner of a partition's processing. It
//! receives batches in offset order, runs the plugin, produces the outputs
//! (or dead letters) in that order, and tells the partition's
//! [`OffsetTracker`](crate::kafka::OffsetTracker) what it handed to the producer.
//!
//! What to do after a failure is decided by `policy::decide` (a pure
//! function, unit-tested there); the worker carries it out. When a whole
//! batch fails, its messages are re-run one by one so only the guilty one is
//! dead-lettered. A plugin that cannot be instantiated stalls the partition
//! (reported in `/v1/assignments`, `/readyz` and
//! `kwasm_partitions_stalled`) and is retried with backoff; the message in
//! hand is never dead-lettered for it.
//!
//! Host-wide call permits are held for one plugin call at a time, never
//! through a backoff or a stall, so retrying or broken partitions cannot
//! stop the host's other pipelines; after waiting for one the worker checks
//! again whether its partition was revoked meanwhile.
//!
//! A dead letter is also owed when the broker rejects an output record for
//! good after delivery (the producer's report reaches the tracker): the
//! worker then reads the input message again from the log (`InputReader`)
//! and dead-letters it (`output-rejected`).
//!
//! Plugin memory: before a batch the worker takes its instance's share of
//! the host's plugin memory budget (waiting, stop-aware, when it is full),
//! and while another partition waits it gives that share back, dropping the
//! instance, once its queue is empty or its turn (100 ms) is over, and when
//! idle (see `runtime::budget`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use tokio_util::sync::CancellationToken;

use super::policy::{
    Action, Fault, OUTPUT_REJECTED, decide, instantiation_stall, producer_refused_kind,
};
use super::seams::{Deploy, ProducerSink, Runner, Sink};
use super::transaction::{GateGuard, TxnGate};
use super::{Deployment, DeploymentCell, PartitionEvent};
use crate::config::RetryPolicy;
use crate::kafka::reread::{InputReader, RereadError};
use crate::kafka::{DeliveryRoute, OutRecord};
use crate::metrics_names as m;
use crate::runtime::{
    BatchOutput, InputBatch, InputMessage, OutcomeView, OutputRecords, PluginError,
};
use crate::topics::{OutputDenied, OutputPolicy};

/// What a worker needs besides its plugin instance. `D` is what it runs
/// and `S` where results go (the seams: `super::seams`).
pub(crate) struct WorkerContext<D = Deployment, S = ProducerSink> {
    pub pipeline: String,
    pub output_topic: String,
    pub dead_letter_topic: String,
    /// Which topics the plugin's records may name (declared outputs, never
    /// the control plane).
    pub outputs: Arc<OutputPolicy>,
    pub retry: RetryPolicy,
    /// Where records, dead letters and the partition's stalls go.
    pub sink: S,
    /// The partition's tracker, and how its records name it to the producer.
    pub route: DeliveryRoute,
    /// The partition worked on.
    pub topic: String,
    pub partition: i32,
    /// Cancelled by the consumer thread on revocation, or with the whole
    /// pipeline (its parent) at shutdown.
    pub stop: CancellationToken,
    /// Reads an input message again when the broker rejected one of its
    /// outputs after delivery.
    pub reader: Arc<InputReader>,
    /// Bounds plugin calls running at once across the host.
    pub permits: Arc<tokio::sync::Semaphore>,
    pub runtime: tokio::runtime::Handle,
    /// What to run; checked at every batch boundary (hot deploy).
    pub deployment: Arc<DeploymentCell<D>>,
    /// Hands processed batches back, emptied, for reuse.
    pub recycle: std::sync::mpsc::SyncSender<InputBatch>,
    /// Exactly-once: the pipeline's transaction gate. A batch produces only
    /// from inside it, so a transaction is cut between batches.
    pub gate: Option<Arc<TxnGate>>,
    /// Exactly-once: inputs whose outputs the broker rejected for good in
    /// an aborted transaction; this redo dead-letters them instead.
    pub redo_rejected: BTreeMap<i64, String>,
    /// Exactly-once: how long to wait, stalled for the given reason, before
    /// the first batch (transactions kept aborting because of this
    /// partition: [`redo_hold`](super::transaction::redo_hold)).
    pub hold: Option<(Duration, String)>,
}

/// How often an idle worker checks whether another partition waits for
/// plugin memory.
const IDLE_MEMORY_CHECK: Duration = Duration::from_millis(50);

/// How long a worker keeps plugin memory for queued batches while another
/// partition waits for it: long enough that a turn is worth its
/// instantiation, short enough that every partition gets one.
const MEMORY_TURN: Duration = Duration::from_millis(100);

/// What is left to do for a message after an attempt.
enum Next {
    /// Produced or dead-lettered.
    Done,
    /// Run it again alone, as attempt `attempt`, after `after`.
    Retry { attempt: u32, after: Duration },
    /// The instance could not be made: wait `after`, then run it again as
    /// the same attempt (a stall is not the message's fault).
    Stall {
        attempt: u32,
        after: Duration,
        reason: String,
    },
}

/// Why a message is dead-lettered.
struct Failure<'a> {
    kind: &'a str,
    message: String,
    attempts: u32,
}

/// How long a worker waits before trying again to switch to a deployment
/// it could not start.
const SWITCH_RETRY: Duration = Duration::from_secs(1);

pub(crate) struct Worker<D: Deploy = Deployment, S = ProducerSink> {
    ctx: WorkerContext<D, S>,
    handler: D::Runner,
    /// The deployment generation `handler` belongs to.
    generation: u64,
    metrics: WorkerMetrics,
    /// Records produced in the current batch, added to `messages_out` once
    /// per batch: the counter is shared by every worker of the pipeline,
    /// and an atomic add per record bounced its cache line (measured).
    produced: u64,
    /// Verdicts of `ctx.outputs` per topic a plugin named, so a plugin
    /// routing every record by regex costs one lookup per record.
    topic_verdicts: rustc_hash::FxHashMap<Box<str>, Result<(), OutputDenied>>,
    /// Whether the partition is reported stalled now.
    stalled: bool,
    /// A newer deployment failed to start: when to try it again.
    switch_retry_at: Option<Instant>,
    /// How long after a failed switch it is tried again.
    switch_retry: Duration,
    /// Exactly-once: this worker's place in the open transaction, held
    /// while a batch produces and given up for any wait.
    inside: Option<GateGuard>,
}

/// Topics whose verdicts a worker remembers. Names come from untrusted
/// input (a router plugin routes by key), so the cache is bounded; past
/// it, verdicts are computed each time.
const MAX_TOPIC_VERDICTS: usize = 4096;

/// Metric handles resolved once: looking them up by name and labels per
/// message showed in profiles.
struct WorkerMetrics {
    messages_in: metrics::Counter,
    messages_out: metrics::Counter,
    batch_seconds: metrics::Histogram,
    instances_released: metrics::Counter,
}

impl<D: Deploy, S: Sink> Worker<D, S> {
    pub(crate) fn new(ctx: WorkerContext<D, S>, handler: D::Runner, generation: u64) -> Self {
        let pipeline = ctx.pipeline.clone();
        let metrics = WorkerMetrics {
            messages_in: metrics::counter!(m::MESSAGES_IN, "pipeline" => pipeline.clone()),
            messages_out: metrics::counter!(m::MESSAGES_OUT, "pipeline" => pipeline.clone()),
            batch_seconds: metrics::histogram!(m::BATCH_SECONDS, "pipeline" => pipeline.clone()),
            instances_released: metrics::counter!(m::PLUGIN_INSTANCES_RELEASED, "pipeline" => pipeline),
        };
        Worker {
            ctx,
            handler,
            generation,
            metrics,
            produced: 0,
            topic_verdicts: Default::default(),
            stalled: false,
            switch_retry_at: None,
            switch_retry: SWITCH_RETRY,
            inside: None,
        }
    }

    /// Switches to a newer deployment, between batches only. If the new
    /// one cannot be instantiated the old keeps running (and says so), and
    /// the switch is tried again a second later: the generation moves only
    /// once the new handler runs, so no partition stays on old code.
    fn follow_deployment(&mut self, next_offset: Option<(i64, i64)>) {
        if !self.switch_due() || self.switch_retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        // Read as one value: a replace between two reads must not pair the
        // old code with the new generation.
        let (deployment, generation) = self.ctx.deployment.current();
        if self
            .ctx
            .gate
            .as_ref()
            .is_some_and(|g| g.generation() != generation)
        {
            return; // deployed again since the boundary: the next one switches
        }
        // The old instance's memory goes back first: waiting for the new
        // one's while holding it could deadlock a full budget.
        self.handler.release_memory();
        let mut handler = deployment.idle_runner();
        let stop = self.ctx.stop.clone();
        if !handler.wait_for_memory(&|| stop.is_cancelled()) {
            return; // stopping: `run` ends at its next check
        }
        match handler.start() {
            Ok(()) => {
                let (plugin, version) = deployment.describe();
                tracing::info!(pipeline = %self.ctx.pipeline, plugin, version = ?version,
                    from_offset = ?next_offset.map(|o| o.0), "partition switched to the new deployment");
                self.handler = handler;
                self.generation = generation;
                self.switch_retry_at = None;
            }
            Err(e) => {
                tracing::error!(pipeline = %self.ctx.pipeline, error = %e,
                    "cannot start the new deployment; keeping the old one, trying again in a second");
                self.switch_retry_at = Some(Instant::now() + self.switch_retry);
            }
        }
    }

    /// Whether this worker should switch deployments now: at once when
    /// there is a newer one, or, under exactly-once, once a transaction
    /// boundary allowed it (each transaction runs one deployment).
    fn switch_due(&self) -> bool {
        match &self.ctx.gate {
            None => self.ctx.deployment.generation() != self.generation,
            Some(gate) => {
                let allowed = gate.generation();
                allowed != self.generation && self.ctx.deployment.generation() == allowed
            }
        }
    }

    /// Exactly-once: takes this batch's place in the open transaction, on
    /// the deployment that transaction allows (a boundary may have passed
    /// while this worker waited at the gate: it then switches first, outside
    /// the gate, since instantiating may wait for plugin memory). False when
    /// stopped meanwhile. A no-op under at-least-once.
    fn enter_transaction(&mut self) -> bool {
        let Some(gate) = self.ctx.gate.clone() else {
            return true;
        };
        for _ in 0..2 {
            let Some(guard) = gate.enter(&self.ctx.stop) else {
                return false;
            };
            if !self.switch_due() {
                self.inside = Some(guard);
                return true;
            }
            drop(guard);
            self.follow_deployment(None);
            if !self.handler.holds_memory() {
                let stop = self.ctx.stop.clone();
                if !self.handler.wait_for_memory(&|| stop.is_cancelled()) {
                    return false;
                }
            }
            if !self.ensure_started() {
                return false;
            }
        }
        // The switch failed (it is retried later): go on with the old one.
        match gate.enter(&self.ctx.stop) {
            Some(guard) => {
                self.inside = Some(guard);
                true
            }
            None => false,
        }
    }

    /// Instantiates the handler if it has no instance, stalling (and
    /// retrying with backoff) for as long as it cannot: the batch in hand is
    /// not at fault. False when stopped meanwhile.
    fn ensure_started(&mut self) -> bool {
        let mut attempt = 1;
        loop {
            if self.stopped() {
                return false;
            }
            match self.handler.start() {
                Ok(()) => {
                    self.set_stalled(None);
                    return true;
                }
                Err(e) => {
                    metrics::counter!(m::ERRORS, "pipeline" => self.ctx.pipeline.clone(), "kind" => e.kind.code()).increment(1);
                    let after = instantiation_stall(attempt, &self.ctx.retry);
                    let reason = format!("cannot instantiate the plugin: {e}");
                    tracing::error!(pipeline = %self.ctx.pipeline, topic = %self.ctx.topic, partition = self.ctx.partition,
                        error = %e, retry_in = ?after, "partition stalled: cannot instantiate the plugin");
                    self.set_stalled(Some(reason));
                    if !self.sleep(after) {
                        return false;
                    }
                    attempt = attempt.saturating_add(1);
                    // A hot deploy may have fixed it.
                    self.follow_deployment(None);
                }
            }
        }
    }

    /// Reports the partition stalled (with the reason) or no longer so.
    fn set_stalled(&mut self, reason: Option<String>) {
        match reason {
            Some(reason) => {
                self.stalled = true;
                self.ctx.sink.report(
                    &self.ctx.topic,
                    self.ctx.partition,
                    PartitionEvent::Stalled(reason),
                );
            }
            None if self.stalled => {
                self.stalled = false;
                tracing::info!(pipeline = %self.ctx.pipeline, topic = %self.ctx.topic, partition = self.ctx.partition,
                    "partition no longer stalled");
                self.ctx.sink.report(
                    &self.ctx.topic,
                    self.ctx.partition,
                    PartitionEvent::Recovered,
                );
            }
            None => {}
        }
    }

    /// One plugin call under a host-wide permit, held for this call only.
    /// `None` when the partition was stopped before the call could start
    /// (also checked after the wait: it may have been revoked meanwhile).
    fn call(&mut self, batch: &InputBatch) -> Option<Result<BatchOutput, PluginError>> {
        let permits = self.ctx.permits.clone();
        let stop = self.ctx.stop.clone();
        let permit = self.ctx.runtime.block_on(async move {
            tokio::select! {
                biased;
                _ = stop.cancelled() => None,
                p = permits.acquire_owned() => p.ok(),
            }
        })?;
        if self.stopped() {
            return None;
        }
        let started = Instant::now();
        let result = self.handler.handle_batch(batch);
        drop(permit);
        self.metrics
            .batch_seconds
            .record(started.elapsed().as_secs_f64());
        Some(result)
    }

    /// Processes batches until the channel closes or `stop` is set. A batch
    /// already started is finished; queued ones are abandoned (their offsets
    /// were never committed, so the next owner reads them again).
    ///
    /// Memory before a call permit: a worker waiting for the host's plugin
    /// memory budget holds no permit, so the holders of memory always get
    /// one, finish their batch and, while anyone waits, give memory back.
    pub(crate) fn run(mut self, batches: Receiver<InputBatch>) {
        if let Some((after, reason)) = self.ctx.hold.take() {
            tracing::warn!(pipeline = %self.ctx.pipeline, topic = %self.ctx.topic, partition = self.ctx.partition,
                wait = ?after, %reason, "partition stalled: its transactions keep aborting; redoing it after a wait");
            self.set_stalled(Some(reason));
            if !self.sleep(after) {
                return;
            }
            self.set_stalled(None);
        }
        let mut next = self.next_batch(&batches);
        // When this worker's current hold on plugin memory began.
        let mut turn_started = Instant::now();
        while let Some(batch) = next {
            if self.stopped() {
                break;
            }
            // Exactly-once redoes an aborted transaction instead (the
            // redo dead-letters the rejected inputs: `redo_rejected`).
            if self.ctx.gate.is_none() {
                self.send_owed_dead_letters();
            }
            self.follow_deployment(batch.offsets());
            if !self.handler.holds_memory() {
                let stop = self.ctx.stop.clone();
                if !self.handler.wait_for_memory(&|| stop.is_cancelled()) {
                    break;
                }
                turn_started = Instant::now();
            }
            if !self.ensure_started() || !self.enter_transaction() {
                break;
            }
            self.process(&batch);
            self.inside = None;
            self.metrics
                .messages_out
                .increment(std::mem::take(&mut self.produced));
            let mut batch = batch;
            batch.clear();
            // Full or closed: the consumer thread allocates a new one.
            let _ = self.ctx.recycle.try_send(batch);
            next = match batches.try_recv() {
                // More work queued: keep the instance for it, unless this
                // turn on a contended budget is over.
                Ok(queued) => {
                    if turn_started.elapsed() >= MEMORY_TURN {
                        self.give_back_memory_if_wanted();
                    }
                    Some(queued)
                }
                Err(TryRecvError::Empty) => {
                    self.give_back_memory_if_wanted();
                    self.next_batch(&batches)
                }
                Err(TryRecvError::Disconnected) => None,
            };
        }
    }

    /// The next batch, or `None` once the channel is closed. While none
    /// comes, an idle instance's memory goes back to a partition that
    /// waits for it.
    fn next_batch(&mut self, batches: &Receiver<InputBatch>) -> Option<InputBatch> {
        loop {
            match batches.recv_timeout(IDLE_MEMORY_CHECK) {
                Ok(batch) => return Some(batch),
                Err(RecvTimeoutError::Timeout) => {
                    self.give_back_memory_if_wanted();
                    self.send_owed_dead_letters();
                }
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Dead-letters the messages whose outputs the broker rejected for good
    /// after delivery. Each is read again from the log; the tracker already
    /// awaits its letter. Should the read fail it is tried again later (the
    /// partition does not commit past the message meanwhile); should the log
    /// no longer hold the message the letter goes without its key and value.
    fn send_owed_dead_letters(&mut self) {
        let tracker = self.ctx.route.tracker();
        if !tracker.has_rejections() {
            return;
        }
        let owed = tracker.take_rejections();
        for (i, (offset, reason)) in owed.iter().enumerate() {
            let mut single = InputBatch::new(self.ctx.topic.clone(), self.ctx.partition);
            let note = match self
                .ctx
                .reader
                .read(&self.ctx.topic, self.ctx.partition, *offset)
            {
                Ok(m) => {
                    let headers = m.headers();
                    let header_iter = headers
                        .into_iter()
                        .flat_map(|h| h.iter())
                        .map(|h| (h.key, h.value));
                    single.push(
                        *offset,
                        m.timestamp().to_millis(),
                        m.key(),
                        m.payload(),
                        header_iter,
                    );
                    String::new()
                }
                Err(e @ RereadError::Gone { .. }) => {
                    single.push(*offset, None, None, None, std::iter::empty());
                    format!(" (the input is no longer in the log: {e})")
                }
                Err(e) => {
                    tracing::warn!(pipeline = %self.ctx.pipeline, error = %e,
                        "cannot read a rejected message again; trying again shortly");
                    // Put back what is still owed, this one first.
                    for (offset, reason) in &owed[i..] {
                        self.ctx
                            .route
                            .tracker()
                            .requeue_rejection(*offset, reason.clone());
                    }
                    return;
                }
            };
            metrics::counter!(m::DELIVERY_REJECTED, "pipeline" => self.ctx.pipeline.clone())
                .increment(1);
            self.send_dead_letter(
                single.message(0),
                Failure {
                    kind: OUTPUT_REJECTED,
                    message: format!("{reason}{note}"),
                    attempts: 1,
                },
            );
        }
    }

    /// Drops the instance, giving its memory back, when another partition
    /// waits for plugin memory: when its queue is empty, when idle, and at
    /// the end of a [`MEMORY_TURN`]. Partitions then take turns; each turn
    /// costs an instantiation and `init`.
    fn give_back_memory_if_wanted(&mut self) {
        if self.handler.holds_memory() && self.handler.memory_contended() {
            self.handler.release_memory();
            self.metrics.instances_released.increment(1);
        }
    }

    fn stopped(&self) -> bool {
        self.ctx.stop.is_cancelled()
    }

    fn process(&mut self, batch: &InputBatch) {
        // Stopped before the call started: nothing of the batch was
        // produced, the next owner reads it all.
        let Some(result) = self.call(batch) else {
            return;
        };
        self.metrics.messages_in.increment(batch.len() as u64);
        match result {
            // A started batch is finished even when `stop` is set, so what
            // reaches the producer stays a contiguous prefix; only a retry
            // interrupted by `stop` ends it early (see `settle_fully`).
            Ok(output) => {
                for (i, outcome) in output.outcomes().enumerate() {
                    let next = self.settle(batch.message(i), outcome, 1);
                    if !self.settle_fully(batch.message(i), next) {
                        return;
                    }
                }
            }
            Err(e) if batch.len() == 1 => {
                let next = self.settle_error(batch.message(0), e, 1);
                self.settle_fully(batch.message(0), next);
            }
            Err(e) => {
                tracing::warn!(pipeline = %self.ctx.pipeline, error = %e, "batch failed; re-running its messages one by one");
                for msg in batch.messages() {
                    // The failure dropped the instance: a new one must start
                    // first, or an `init` that traps would dead-letter `msg`.
                    if !self.ensure_started() {
                        return;
                    }
                    let Some(next) = self.run_once(msg, 1) else {
                        return;
                    };
                    if !self.settle_fully(msg, next) {
                        return;
                    }
                }
            }
        }
    }

    /// Retries `msg` alone until it is settled (a loop, not recursion: a
    /// plugin that cannot be instantiated retries for as long as it takes).
    /// Returns false when `stop` interrupted a backoff or the wait for a
    /// permit: the message is then abandoned, and so must be every later
    /// message of the batch, or the tracker would commit past it.
    fn settle_fully(&mut self, msg: InputMessage<'_>, mut next: Next) -> bool {
        loop {
            let attempt = match next {
                Next::Done => return true,
                Next::Retry { attempt, after } => {
                    if !self.sleep(after) {
                        break;
                    }
                    attempt
                }
                Next::Stall {
                    attempt,
                    after,
                    reason,
                } => {
                    tracing::error!(pipeline = %self.ctx.pipeline, offset = msg.offset(), retry_in = ?after,
                        "partition stalled: {reason}");
                    self.set_stalled(Some(reason));
                    if !self.sleep(after) {
                        break;
                    }
                    attempt
                }
            };
            if !self.ensure_started() {
                break;
            }
            match self.run_once(msg, attempt) {
                Some(n) => next = n,
                None => break,
            }
        }
        tracing::info!(pipeline = %self.ctx.pipeline, offset = msg.offset(),
            "stopping during a retry: the message is left for the partition's next owner");
        false
    }

    /// Runs one message alone, as attempt `attempt`; `None` if stopped
    /// before the call.
    fn run_once(&mut self, msg: InputMessage<'_>, attempt: u32) -> Option<Next> {
        let mut single = InputBatch::new(msg.topic(), msg.partition());
        single.push_message(msg);
        Some(match self.call(&single)? {
            Ok(output) => self.settle(msg, output.outcome(0), attempt),
            Err(e) => self.settle_error(msg, e, attempt),
        })
    }

    /// Carries out the policy's decision for a failed attempt at `msg`.
    fn act(
        &mut self,
        msg: InputMessage<'_>,
        fault: Fault<'_>,
        attempt: u32,
        message: String,
    ) -> Next {
        match decide(fault, attempt, &self.ctx.retry) {
            Action::Retry { attempt, after } => Next::Retry { attempt, after },
            Action::Stall { after } => Next::Stall {
                attempt,
                after,
                reason: message,
            },
            Action::DeadLetter { kind } => {
                self.dead_letter(
                    msg,
                    Failure {
                        kind,
                        message,
                        attempts: attempt,
                    },
                );
                Next::Done
            }
        }
    }

    /// Acts on a message's outcome from attempt `attempt`.
    fn settle(&mut self, msg: InputMessage<'_>, outcome: OutcomeView<'_>, attempt: u32) -> Next {
        match outcome {
            // Exactly-once redo: the broker rejected this input's outputs
            // for good in the aborted transaction; its dead letter goes in
            // this one instead.
            OutcomeView::Ok(_) if self.ctx.redo_rejected.contains_key(&msg.offset()) => {
                let reason = self
                    .ctx
                    .redo_rejected
                    .remove(&msg.offset())
                    .unwrap_or_default();
                metrics::counter!(m::DELIVERY_REJECTED, "pipeline" => self.ctx.pipeline.clone())
                    .increment(1);
                self.dead_letter(
                    msg,
                    Failure {
                        kind: OUTPUT_REJECTED,
                        message: reason,
                        attempts: attempt,
                    },
                );
                Next::Done
            }
            OutcomeView::Ok(records) => match self.first_denied_topic(records) {
                None => {
                    self.produce(msg, records);
                    Next::Done
                }
                Some(denied) => self.act(msg, Fault::OutputNotAllowed, attempt, denied.to_string()),
            },
            OutcomeView::Permanent(reason) => {
                self.act(msg, Fault::Permanent, attempt, reason.to_owned())
            }
            OutcomeView::Retryable(reason) => {
                self.act(msg, Fault::Retryable, attempt, reason.to_owned())
            }
        }
    }

    fn settle_error(&mut self, msg: InputMessage<'_>, e: PluginError, attempt: u32) -> Next {
        metrics::counter!(m::ERRORS, "pipeline" => self.ctx.pipeline.clone(), "kind" => e.kind.code()).increment(1);
        let message = e.to_string();
        self.act(msg, Fault::Plugin(&e.kind), attempt, message)
    }

    /// Waits `after` (a backoff or a stall), holding no permit; false when
    /// stopped meanwhile (the message is then abandoned uncommitted, for the
    /// next owner).
    ///
    /// Under exactly-once the worker leaves the transaction for the wait
    /// (the messages before this one commit meanwhile) and enters the open
    /// one again after it.
    fn sleep(&mut self, after: Duration) -> bool {
        let inside = self.inside.take().is_some();
        let stop = self.ctx.stop.clone();
        let slept = self.ctx.runtime.block_on(async move {
            tokio::select! {
                _ = stop.cancelled() => false,
                _ = tokio::time::sleep(after) => true,
            }
        }) && !self.stopped();
        if slept
            && inside
            && let Some(gate) = &self.ctx.gate
        {
            self.inside = gate.enter(&self.ctx.stop);
            return self.inside.is_some();
        }
        slept
    }

    /// Hands a message's records to the producer. The tracker hears of them
    /// first: a delivery report can arrive before `send` returns. A record
    /// the producer refuses outright (too large for `message.max.bytes`, a
    /// topic name it cannot use) dead-letters the message instead of its
    /// remaining records; the ones already queued still go out.
    fn produce(&mut self, msg: InputMessage<'_>, records: OutputRecords<'_>) {
        let offset = msg.offset();
        let count = records.len() as u32;
        self.ctx.route.tracker().processed(offset, count);
        for (sent, rec) in records.iter().enumerate() {
            let out = OutRecord {
                topic: rec.topic().unwrap_or(&self.ctx.output_topic),
                key: rec.key(),
                value: rec.value(),
                headers: owned_headers(rec.headers()),
                timestamp_ms: rec.timestamp_ms(),
            };
            if let Err(e) = self.ctx.sink.send(out, self.ctx.route.token(offset)) {
                self.produced += sent as u64;
                self.ctx
                    .route
                    .tracker()
                    .replace_unsent(offset, count - sent as u32);
                let failure = Failure {
                    kind: producer_refused_kind(),
                    message: format!("output record {} of {count}: {e}", sent + 1),
                    attempts: 1,
                };
                return self.send_dead_letter(msg, failure);
            }
        }
        self.produced += u64::from(count);
    }

    /// The first record of a message naming a topic the pipeline may not
    /// write, checked before any record is sent: a message's outputs go out
    /// whole or not at all (then it is dead-lettered, `output-not-allowed`).
    fn first_denied_topic(&mut self, records: OutputRecords<'_>) -> Option<OutputDenied> {
        for rec in records.iter() {
            // `None` is the pipeline's `output`, checked at validation.
            let Some(topic) = rec.topic() else { continue };
            let verdict = match self.topic_verdicts.get(topic) {
                Some(verdict) => verdict.clone(),
                None => {
                    let verdict = self.ctx.outputs.check(topic);
                    if self.topic_verdicts.len() < MAX_TOPIC_VERDICTS {
                        self.topic_verdicts.insert(topic.into(), verdict.clone());
                    }
                    verdict
                }
            };
            if let Err(denied) = verdict {
                return Some(denied);
            }
        }
        None
    }

    /// Produces the original message to the dead-letter topic with headers
    /// saying where it came from and why.
    fn dead_letter(&mut self, msg: InputMessage<'_>, failure: Failure<'_>) {
        self.ctx.route.tracker().processed(msg.offset(), 1);
        self.send_dead_letter(msg, failure);
    }

    /// Sends the dead letter the tracker already expects for `msg`.
    fn send_dead_letter(&mut self, msg: InputMessage<'_>, failure: Failure<'_>) {
        let offset = msg.offset();
        let (plugin_name, plugin_digest) =
            (self.handler.plugin_name(), self.handler.plugin_digest());
        tracing::warn!(
            pipeline = %self.ctx.pipeline, topic = msg.topic(), partition = msg.partition(), offset,
            kind = failure.kind, attempts = failure.attempts, error = %failure.message, "dead-lettering message"
        );
        metrics::counter!(m::DEAD_LETTERED, "pipeline" => self.ctx.pipeline.clone(), "kind" => failure.kind.to_owned()).increment(1);
        let partition = msg.partition().to_string();
        let offset_text = offset.to_string();
        let attempts = failure.attempts.to_string();
        let error_text = truncate(&failure.message, MAX_ERROR_HEADER_BYTES);
        let kwasm_headers = [
            ("kwasm.source.topic", msg.topic().as_bytes()),
            ("kwasm.source.partition", partition.as_bytes()),
            ("kwasm.source.offset", offset_text.as_bytes()),
            ("kwasm.error.kind", failure.kind.as_bytes()),
            ("kwasm.error.message", error_text.as_bytes()),
            ("kwasm.plugin.name", plugin_name.as_bytes()),
            ("kwasm.plugin.digest", plugin_digest.as_bytes()),
            ("kwasm.attempts", attempts.as_bytes()),
        ];
        let headers = msg
            .headers()
            .chain(kwasm_headers.iter().map(|(k, v)| (*k, Some(*v))));
        let record = OutRecord {
            topic: &self.ctx.dead_letter_topic,
            key: msg.key(),
            value: msg.value(),
            headers: owned_headers(headers),
            timestamp_ms: msg.timestamp_ms(),
        };
        if let Err(e) = self
            .ctx
            .sink
            .send(record, self.ctx.route.dead_letter_token(offset))
        {
            self.stall_at(offset, &e);
        }
    }

    /// The producer refused even the dead letter (not a delivery failure):
    /// the partition must not commit past this message. It stops advancing
    /// and says so (stalled); a restart re-reads from the last commit.
    fn stall_at(&mut self, offset: i64, e: &crate::kafka::ProduceError) {
        tracing::error!(pipeline = %self.ctx.pipeline, offset, error = %e,
            "dead letter rejected by the producer; the partition stops committing at this offset");
        let reason = format!("the dead letter for offset {offset} was refused: {e}");
        self.ctx.route.tracker().failed(offset, reason.clone());
        self.set_stalled(Some(reason));
    }
}

/// Trap messages carry a backtrace and the guest's output; a header that
/// size is useless and risks the broker's record limit.
const MAX_ERROR_HEADER_BYTES: usize = 4096;

fn truncate(s: &str, max: usize) -> &str {
    let end = (0..=max.min(s.len()))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    &s[..end]
}

fn owned_headers<'h>(
    headers: impl Iterator<Item = (&'h str, Option<&'h [u8]>)>,
) -> Option<OwnedHeaders> {
    let mut owned: Option<OwnedHeaders> = None;
    for (key, value) in headers {
        owned = Some(owned.unwrap_or_default().insert(Header { key, value }));
    }
    owned
}

#[cfg(test)]
mod tests;
