//! The partition worker: the one owner of a partition's processing. It
//! receives batches in offset order, runs the plugin, produces the outputs
//! (or dead letters) in that order, and tells the partition's
//! [`OffsetTracker`](crate::kafka::OffsetTracker) what it handed to the producer.
//!
//! Failure policy, per message:
//! - `retryable`: run the message alone again, with backoff, up to the
//!   pipeline's attempts; then dead-letter it.
//! - `permanent`, a trap or a limit hit: dead-letter it at once. When a whole
//!   batch traps, its messages are re-run one by one so only the guilty one
//!   is dead-lettered.
//! - The plugin cannot even be instantiated: wait and try again, forever;
//!   the partition stalls visibly rather than dead-lettering everything.
//!
//! Plugin memory: before a batch the worker takes its instance's share of
//! the host's plugin memory budget (waiting, stop-aware, when it is full),
//! and while another partition waits it gives that share back, dropping the
//! instance, once its queue is empty or its turn (100 ms) is over, and when
//! idle (see `runtime::budget`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};

use super::DeploymentCell;
use crate::config::RetryPolicy;
use crate::kafka::{DeliveryRoute, OutRecord, OutputProducer};
use crate::metrics_names as m;
use crate::runtime::{
    InputBatch, InputMessage, OutcomeView, OutputRecords, PluginError, PluginErrorKind,
    PluginHandler,
};
use crate::topics::{OutputDenied, OutputPolicy};

/// What a worker needs besides its plugin instance.
pub(crate) struct WorkerContext {
    pub pipeline: String,
    pub output_topic: String,
    pub dead_letter_topic: String,
    /// Which topics the plugin's records may name (declared outputs, never
    /// the control plane).
    pub outputs: Arc<OutputPolicy>,
    pub retry: RetryPolicy,
    pub producer: OutputProducer,
    /// The partition's tracker, and how its records name it to the producer.
    pub route: DeliveryRoute,
    /// Set by the consumer thread on revocation or shutdown.
    pub stop: Arc<AtomicBool>,
    /// Bounds plugin calls running at once across the host.
    pub permits: Arc<tokio::sync::Semaphore>,
    pub runtime: tokio::runtime::Handle,
    /// What to run; checked at every batch boundary (hot deploy).
    pub deployment: Arc<DeploymentCell>,
    /// Hands processed batches back, emptied, for reuse.
    pub recycle: std::sync::mpsc::SyncSender<InputBatch>,
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
    /// Run it again alone, as this attempt, after the backoff.
    Retry { attempt: u32 },
}

/// Why a message is dead-lettered.
struct Failure<'a> {
    kind: &'a str,
    message: String,
    attempts: u32,
}

pub(crate) struct Worker {
    ctx: WorkerContext,
    handler: PluginHandler,
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

impl Worker {
    pub(crate) fn new(ctx: WorkerContext, handler: PluginHandler, generation: u64) -> Self {
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
        }
    }

    /// Switches to a newer deployment, between batches only. If the new
    /// one cannot be instantiated the old keeps running (and says so):
    /// the manager validated it, so this is a rare, loud failure.
    fn follow_deployment(&mut self, next_offset: Option<(i64, i64)>) {
        if self.ctx.deployment.generation() == self.generation {
            return;
        }
        let (deployment, generation) = self.ctx.deployment.current();
        self.generation = generation;
        // The old instance's memory goes back first: waiting for the new
        // one's while holding it could deadlock a full budget.
        self.handler.release_memory();
        let mut handler = deployment.idle_handler();
        let stop = self.ctx.stop.clone();
        if !handler.wait_for_memory(&|| stop.load(Ordering::Acquire)) {
            return; // stopping: `run` ends at its next check
        }
        match handler.start() {
            Ok(()) => {
                tracing::info!(pipeline = %self.ctx.pipeline, plugin = deployment.plugin.name(), version = ?deployment.version,
                    from_offset = ?next_offset.map(|o| o.0), "partition switched to the new deployment");
                self.handler = handler;
            }
            Err(e) => {
                tracing::error!(pipeline = %self.ctx.pipeline, error = %e, "cannot start the new deployment; keeping the old one")
            }
        }
    }

    /// Processes batches until the channel closes or `stop` is set. A batch
    /// already started is finished; queued ones are abandoned (their offsets
    /// were never committed, so the next owner reads them again).
    ///
    /// Memory before a call permit: a worker waiting for the host's plugin
    /// memory budget holds no permit, so the holders of memory always get
    /// one, finish their batch and, while anyone waits, give memory back.
    pub(crate) fn run(mut self, batches: Receiver<InputBatch>) {
        let mut next = self.next_batch(&batches);
        // When this worker's current hold on plugin memory began.
        let mut turn_started = Instant::now();
        while let Some(batch) = next {
            if self.stopped() {
                break;
            }
            self.follow_deployment(batch.offsets());
            if !self.handler.holds_memory() {
                let stop = self.ctx.stop.clone();
                if !self
                    .handler
                    .wait_for_memory(&|| stop.load(Ordering::Acquire))
                {
                    break;
                }
                turn_started = Instant::now();
            }
            let permits = self.ctx.permits.clone();
            let Ok(permit) = self.ctx.runtime.block_on(permits.acquire_owned()) else {
                break;
            };
            self.process(&batch);
            drop(permit);
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
                Err(RecvTimeoutError::Timeout) => self.give_back_memory_if_wanted(),
                Err(RecvTimeoutError::Disconnected) => return None,
            }
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
        self.ctx.stop.load(Ordering::Acquire)
    }

    fn process(&mut self, batch: &InputBatch) {
        let started = std::time::Instant::now();
        let result = self.handler.handle_batch(batch);
        self.metrics
            .batch_seconds
            .record(started.elapsed().as_secs_f64());
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
                    let next = self.run_once(msg, 1);
                    if !self.settle_fully(msg, next) {
                        return;
                    }
                }
            }
        }
    }

    /// Retries `msg` alone until it is settled (a loop, not recursion: a
    /// plugin that cannot be instantiated retries for as long as it takes).
    /// Returns false when `stop` interrupted a backoff: the message is then
    /// abandoned, and so must be every later message of the batch, or the
    /// tracker would commit past it.
    fn settle_fully(&mut self, msg: InputMessage<'_>, mut next: Next) -> bool {
        while let Next::Retry { attempt } = next {
            if !self.backoff(attempt) {
                tracing::info!(pipeline = %self.ctx.pipeline, offset = msg.offset(),
                    "stopping during a retry: the message is left for the partition's next owner");
                return false;
            }
            next = self.run_once(msg, attempt);
        }
        true
    }

    /// Runs one message alone, as attempt `attempt`.
    fn run_once(&mut self, msg: InputMessage<'_>, attempt: u32) -> Next {
        let mut single = InputBatch::new(msg.topic(), msg.partition());
        single.push_message(msg);
        match self.handler.handle_batch(&single) {
            Ok(output) => self.settle(msg, output.outcome(0), attempt),
            Err(e) => self.settle_error(msg, e, attempt),
        }
    }

    /// Acts on a message's outcome from attempt `attempt`.
    fn settle(&mut self, msg: InputMessage<'_>, outcome: OutcomeView<'_>, attempt: u32) -> Next {
        match outcome {
            OutcomeView::Ok(records) => match self.first_denied_topic(records) {
                None => self.produce(msg, records),
                Some(denied) => self.dead_letter(
                    msg,
                    Failure {
                        kind: "output-not-allowed",
                        message: denied.to_string(),
                        attempts: attempt,
                    },
                ),
            },
            OutcomeView::Permanent(reason) => self.dead_letter(
                msg,
                Failure {
                    kind: "permanent",
                    message: reason.to_owned(),
                    attempts: attempt,
                },
            ),
            OutcomeView::Retryable(_) if attempt < self.ctx.retry.max_attempts => {
                return Next::Retry {
                    attempt: attempt + 1,
                };
            }
            OutcomeView::Retryable(reason) => self.dead_letter(
                msg,
                Failure {
                    kind: "retries-exhausted",
                    message: reason.to_owned(),
                    attempts: attempt,
                },
            ),
        }
        Next::Done
    }

    fn settle_error(&mut self, msg: InputMessage<'_>, e: PluginError, attempt: u32) -> Next {
        metrics::counter!(m::ERRORS, "pipeline" => self.ctx.pipeline.clone(), "kind" => e.kind.code()).increment(1);
        match &e.kind {
            // The instance cannot be made: not this message's fault. The
            // partition stalls (and says so) until it can be.
            PluginErrorKind::InitRejected(_) | PluginErrorKind::Instantiate(_) => {
                tracing::error!(pipeline = %self.ctx.pipeline, error = %e, "cannot instantiate the plugin; partition stalled, retrying");
                return Next::Retry {
                    attempt: attempt + 1,
                };
            }
            kind => self.dead_letter(
                msg,
                Failure {
                    kind: kind.code(),
                    message: e.to_string(),
                    attempts: attempt,
                },
            ),
        }
        Next::Done
    }

    /// Sleeps before attempt `attempt`; false when stopped meanwhile (the
    /// message is then abandoned uncommitted, for the next owner).
    fn backoff(&self, attempt: u32) -> bool {
        let mut left = self.ctx.retry.backoff_ms(attempt);
        while left > 0 {
            if self.stopped() {
                return false;
            }
            let step = left.min(20);
            std::thread::sleep(Duration::from_millis(step));
            left -= step;
        }
        !self.stopped()
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
            if let Err(e) = self.ctx.producer.send(out, self.ctx.route.token(offset)) {
                self.produced += sent as u64;
                self.ctx
                    .route
                    .tracker()
                    .replace_unsent(offset, count - sent as u32);
                let failure = Failure {
                    kind: "output-rejected",
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
        let plugin = self.handler.plugin().clone();
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
            ("kwasm.plugin.name", plugin.name().as_bytes()),
            ("kwasm.plugin.digest", plugin.digest().as_bytes()),
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
        if let Err(e) = self.ctx.producer.send(record, self.ctx.route.token(offset)) {
            self.stall(offset, &e);
        }
    }

    /// The producer refused even the dead letter (not a delivery failure):
    /// the partition must not commit past this message. It stops advancing
    /// and says so; a restart re-reads from the last commit.
    fn stall(&self, offset: i64, e: &crate::kafka::ProduceError) {
        tracing::error!(pipeline = %self.ctx.pipeline, offset, error = %e,
            "dead letter rejected by the producer; the partition stops committing at this offset");
        self.ctx.route.tracker().failed(offset);
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
