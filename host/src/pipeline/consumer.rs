//! The consumer thread of one pipeline: it alone owns the `BaseConsumer`
//! and the table of assigned partitions.
//!
//! Why a thread polling a `BaseConsumer` and not a `StreamConsumer`: the
//! rebalance callbacks run inside `poll`, and commit-on-revoke must happen
//! synchronously there (rust-rdkafka 627, 738); a dedicated thread also
//! avoids the waker stalls seen with `StreamConsumer` (638, 665).
//!
//! Life of a partition: assigned (post_rebalance spawns its worker) →
//! running (messages are appended to its open batch, which is sent to the
//! worker when full or `max_wait_ms` old; a full worker queue pauses the
//! partition) → revoked (pre_rebalance: the worker finishes its current
//! batch, the producer is flushed, done offsets are committed synchronously,
//! and only then does librdkafka give the partition away).

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use rustc_hash::FxHashMap;
use tokio_util::sync::CancellationToken;

use super::admission::{Admission, admit};
use super::seams::ProducerSink;
use super::transaction::{PartitionVerdict, TxnRecovery, fenced, recovery_for, redo_hold, verdict};
use super::worker::{Worker, WorkerContext};
use super::{PartitionEvent, PipelineShared};
use crate::kafka::fetch_queue::{Fetched, QueueHandle, forward_partition};
use crate::kafka::offsets::commit_offset;
use crate::kafka::{OffsetTracker, OutputProducer};
use crate::runtime::InputBatch;

/// Messages queued to a worker beyond the batch it is running. Pausing a
/// partition makes librdkafka drop its prefetched messages and fetch them
/// again on resume, so the queue must absorb normal bursts: measured, a
/// 2-batch queue paused ~300 times per million messages and doubled the
/// broker's CPU; 8192 messages never paused at full speed.
const WORKER_QUEUE_MESSAGES: usize = 8192;

type PartitionKey = (String, i32);

/// How often the periodic commit sends unchanged offsets again.
const RECOMMIT_EVERY: Duration = Duration::from_secs(5);

/// How long a rebalance callback waits for the committed offsets of the
/// partitions it was given ([`PipelineContext::floors`]): one round trip
/// normally; longer only while a transaction holds them unstable or the
/// coordinator moves.
const FLOOR_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a partition is fetched (the consumer thread's side of
/// `PartitionState`).
enum Flow {
    /// Fetched; batches go to the worker as they fill.
    Running,
    /// Not fetched: the worker's queue was full, and this batch waits to be
    /// sent before anything newer.
    Paused { held: Box<InputBatch> },
}

/// A partition this host holds, as the consumer thread sees it.
struct Assigned {
    tx: Option<SyncSender<InputBatch>>,
    /// The worker's cancellation (a child of the pipeline's).
    stop: CancellationToken,
    tracker: Arc<OffsetTracker>,
    thread: Option<JoinHandle<()>>,
    /// The batch being filled, and when its first message arrived.
    open: InputBatch,
    opened_at: Option<Instant>,
    flow: Flow,
    /// Batches the worker is done with, emptied, to fill again: reusing
    /// their buffers spares an allocation (and page faults) per batch.
    spare: Receiver<InputBatch>,
    committed: Option<i64>,
    /// The delivery failure last reported as a stall, if any.
    reported_failure: Option<i64>,
    /// Offset of the last message routed to this partition's batches since
    /// it was assigned: with the consumer's position it tells whether the
    /// records after it are transaction markers to commit past
    /// ([`commit_offset`]).
    last_routed: Option<i64>,
    /// Exactly-once: where an aborted transaction rewinds this partition to
    /// (the offset its last transaction committed, or the first offset
    /// routed since it was assigned).
    resume_at: Option<i64>,
    /// The committed offset when this assignment began (or the offset a
    /// rewind sought to): nothing below it is processed
    /// ([`admit`](super::admission::admit)).
    floor: Option<i64>,
    /// Fetched messages [`admit`](super::admission::admit) turned away in
    /// this assignment (logged when the first one is, and on release).
    refused: u64,
}

/// The consumer's context: rebalance callbacks and the partition table.
pub(crate) struct PipelineContext {
    shared: Arc<PipelineShared>,
    partitions: Mutex<Table>,
    /// Set when the host shuts the pipeline down: partitions assigned by a
    /// rebalance served during the final commit get no worker.
    shutting_down: std::sync::atomic::AtomicBool,
    /// What [`shutdown`](Self::shutdown) drained and could not commit yet.
    pending_commit: Mutex<Option<TopicPartitionList>>,
    /// When `commit_done` last sent every partition's offset, changed or not.
    last_full_commit: Mutex<Instant>,
    /// Where assigned partitions' messages are forwarded (set by the
    /// consumer thread while its [`FetchQueue`] lives).
    ///
    /// [`FetchQueue`]: crate::kafka::fetch_queue::FetchQueue
    fetch_queue: Mutex<Option<QueueHandle>>,
    /// Exactly-once: inputs whose outputs the broker rejected for good in
    /// an aborted transaction, per partition; the redo dead-letters them.
    redo_rejected: Mutex<FxHashMap<PartitionKey, BTreeMap<i64, String>>>,
    /// Exactly-once: transactions aborted in a row because of a partition
    /// (one of its records failed), and the last reason; cleared when a
    /// commit moves the partition's offset, or when it is released. Sets
    /// how long its redo waits ([`redo_hold`]).
    abort_streak: Mutex<FxHashMap<PartitionKey, (u32, String)>>,
}

/// The partitions held, plus the key of the last routed message: fetches
/// come in runs per partition, and reusing the key avoids allocating one
/// per message.
///
/// Fx, not SipHash: it is looked up per message, and the keys are the
/// broker's topic names, not attacker-chosen.
#[derive(Default)]
struct Table {
    map: FxHashMap<PartitionKey, Assigned>,
    route_key: PartitionKey,
}

impl ClientContext for PipelineContext {
    /// librdkafka's statistics (`statistics.interval.ms`): the cheap source
    /// of each partition's high watermark, hence the lag the API shows.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.hi_offset >= 0 {
                    self.shared
                        .status
                        .set_high_watermark(topic, *partition, p.hi_offset);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(pipeline = %self.shared.spec.name, %error, reason, "kafka client error");
        self.shared.status.set_broker_ok(false);
    }
}

impl ConsumerContext for PipelineContext {
    /// A failed periodic commit is forgotten, so the next one sends it
    /// again instead of believing it landed.
    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        // librdkafka can report success for the request while refusing
        // some partitions (each element carries its own error, e.g.
        // ILLEGAL_GENERATION during a rebalance): those must be sent again
        // too, or the partition believes a commit landed that never did and
        // the group's offset stays behind for good.
        let failed: Vec<PartitionKey> = match &result {
            Err(_) => keys(offsets),
            Ok(()) => offsets
                .elements()
                .iter()
                .filter(|e| e.error().is_err())
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect(),
        };
        if failed.is_empty() {
            return;
        }
        let error = match &result {
            Err(e) => e.to_string(),
            Ok(()) => offsets
                .elements()
                .iter()
                .find_map(|e| e.error().err())
                .map(|e| e.to_string())
                .unwrap_or_default(),
        };
        tracing::warn!(pipeline = %self.shared.spec.name, %error, partitions = failed.len(), "commit failed; will commit again");
        let mut table = self.table();
        for key in failed {
            if let Some(a) = table.map.get_mut(&key) {
                a.committed = None;
            }
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                if self.shared.exactly_once.is_some() {
                    self.revoke_transactional(consumer, &keys(tpl), consumer.assignment_lost());
                } else {
                    self.revoke(consumer, &keys(tpl), "revoked by rebalance");
                    self.commit_pending(consumer);
                }
            }
            // Before librdkafka starts fetching them: their messages then
            // only ever reach the fetch queue.
            Rebalance::Assign(tpl) => {
                if let Some(queue) = *self.fetch_queue.lock().unwrap_or_else(|p| p.into_inner()) {
                    for (topic, partition) in keys(tpl) {
                        if !forward_partition(consumer, queue, &topic, partition) {
                            tracing::warn!(%topic, partition, "cannot forward the partition's fetch queue; its messages come through poll");
                        }
                    }
                }
            }
            Rebalance::Error(e) => {
                tracing::error!(pipeline = %self.shared.spec.name, error = %e, "rebalance error")
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // librdkafka keeps an application pause across unassign and
            // assign: a partition paused (full queue) when it was revoked
            // would otherwise never be fetched again if it came back.
            if let Err(e) = consumer.resume(tpl) {
                tracing::warn!(pipeline = %self.shared.spec.name, error = %e, "cannot resume newly assigned partitions");
            }
            let floors = self.floors(consumer, tpl);
            for key in keys(tpl) {
                let floor = floors.get(&key).copied();
                self.assign_at(key, None, floor, None);
            }
        }
    }
}

/// The parts of a fetched message that a batch keeps.
struct Incoming<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
}

fn keys(tpl: &TopicPartitionList) -> Vec<PartitionKey> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl PipelineContext {
    pub(crate) fn new(shared: Arc<PipelineShared>) -> Self {
        PipelineContext {
            shared,
            partitions: Mutex::new(Table::default()),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            pending_commit: Mutex::new(None),
            last_full_commit: Mutex::new(Instant::now()),
            fetch_queue: Mutex::new(None),
            redo_rejected: Mutex::new(FxHashMap::default()),
            abort_streak: Mutex::new(FxHashMap::default()),
        }
    }

    pub(crate) fn shared(&self) -> &PipelineShared {
        &self.shared
    }

    /// Sets (or, with `None`, clears) where newly assigned partitions'
    /// messages go.
    pub(crate) fn set_fetch_queue(&self, queue: Option<QueueHandle>) {
        *self.fetch_queue.lock().unwrap_or_else(|p| p.into_inner()) = queue;
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // Only the consumer thread locks it; poisoning would need a panic
        // here, after which the table is still structurally sound.
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The committed offsets of newly assigned partitions, read once per
    /// assignment (one round trip, inside the rebalance callback, before
    /// any of their messages is routed): the floor below which a fetched
    /// message belongs to an earlier owner. Unknown (no commit yet, or the
    /// read failed) leaves a partition without a floor; the order check
    /// still holds.
    fn floors(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &TopicPartitionList,
    ) -> FxHashMap<PartitionKey, i64> {
        let mut floors = FxHashMap::default();
        match consumer.committed_offsets(tpl.clone(), FLOOR_TIMEOUT) {
            Ok(committed) => {
                for e in committed.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        floors.insert((e.topic().to_owned(), e.partition()), o);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(pipeline = %self.shared.spec.name, error = %e,
                    "cannot read the committed offsets of newly assigned partitions; a stale fetch below them would not be recognised")
            }
        }
        floors
    }

    /// Starts a worker for a partition; `resume_at` is where an aborted
    /// transaction rewound it to (exactly-once), `floor` the offset below
    /// which its fetched messages are not processed.
    fn assign_at(
        &self,
        key: PartitionKey,
        resume_at: Option<i64>,
        floor: Option<i64>,
        hold: Option<(Duration, String)>,
    ) {
        let s = &self.shared;
        if self
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
        {
            tracing::info!(pipeline = %s.spec.name, topic = %key.0, partition = key.1,
                "assigned while shutting down; left for the next owner");
            return;
        }
        let (deployment, generation) = s.deployment.current();
        // The worker reserves memory and instantiates when its first batch
        // comes (on its own thread: the host's plugin memory budget may make
        // it wait, which must not hold up this rebalance callback). A plugin
        // that cannot start then stalls the partition, retrying.
        let handler = deployment.idle_handler();
        let queue_batches =
            (WORKER_QUEUE_MESSAGES / s.spec.batch.max_messages.max(1)).clamp(2, 256);
        let (tx, rx) = sync_channel(queue_batches);
        let (recycle, spare) = sync_channel(queue_batches + 2);
        let stop = s.cancel.child_token();
        let tracker = Arc::new(OffsetTracker::new());
        // Listed before the worker can report a stall against it.
        s.status.assigned(&key.0, key.1);
        if let Some(offset) = resume_at {
            s.status.committed(&key.0, key.1, offset);
        }
        let worker = Worker::new(
            WorkerContext {
                pipeline: s.spec.name.clone(),
                output_topic: s.spec.output.clone(),
                dead_letter_topic: s.spec.dead_letter_topic(),
                outputs: s.outputs.clone(),
                retry: s.spec.retry.clone(),
                route: s.producer().route(tracker.clone()),
                sink: ProducerSink {
                    producer: s.producer(),
                    status: s.status.clone(),
                },
                topic: key.0.clone(),
                partition: key.1,
                reader: s.reader.clone(),
                stop: stop.clone(),
                permits: s.permits.clone(),
                runtime: s.runtime.clone(),
                deployment: s.deployment.clone(),
                recycle,
                gate: s.exactly_once.as_ref().map(|e| e.gate.clone()),
                redo_rejected: self.redo().remove(&key).unwrap_or_default(),
                hold,
            },
            handler,
            generation,
        );
        let thread = spawn_worker(&s.spec.name, &key, worker, rx);
        tracing::info!(pipeline = %s.spec.name, topic = %key.0, partition = key.1, host = %s.host_id, "partition assigned");
        self.table().map.insert(
            key.clone(),
            Assigned {
                tx: Some(tx),
                stop,
                tracker,
                thread,
                open: InputBatch::new(key.0, key.1),
                opened_at: None,
                flow: Flow::Running,
                spare,
                committed: None,
                reported_failure: None,
                last_routed: None,
                resume_at,
                floor,
                refused: 0,
            },
        );
    }

    /// Stops the workers of `keys`, waits for their deliveries, commits what
    /// is done. Runs inside `poll` (a rebalance) or at shutdown.
    ///
    /// Waits only for the leaving partitions' records, not the whole shared
    /// producer: a busy neighbour (or a record stuck on a missing topic)
    /// must not make every rebalance last the grace period.
    pub(crate) fn revoke(
        &self,
        consumer: &BaseConsumer<Self>,
        keys: &[PartitionKey],
        reason: &str,
    ) {
        let started = Instant::now();
        let leaving = self.drain(keys, true);
        if leaving.is_empty() {
            return;
        }
        let drained = started.elapsed();
        let tpl = self.commit_list(consumer, &leaving);
        if tpl.count() > 0 {
            // Inside the callback the join cannot progress, so only a
            // coordinator that is moving or loading (a broker restart) is
            // worth waiting for; librdkafka finds the new one on its own
            // thread meanwhile.
            let deadline = Instant::now() + self.shared.grace;
            loop {
                match consumer.commit(&tpl, CommitMode::Sync) {
                    Ok(()) => break,
                    Err(e) if coordinator_moving(&e) && Instant::now() < deadline => {
                        tracing::info!(pipeline = %self.shared.spec.name, error = %e, "commit on revoke: coordinator not ready; trying again");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => {
                        tracing::error!(pipeline = %self.shared.spec.name, error = %e, "commit on revoke failed; the next owner may redo some work");
                        break;
                    }
                }
            }
        }
        self.released(&leaving, reason, drained);
    }

    /// Takes `keys` out of the table, stops their workers and waits (up to
    /// the grace period) for their batches to finish and their records to
    /// be acknowledged.
    ///
    /// Without `deliveries`, only the workers are waited for (a rewind after
    /// an aborted transaction: its records will never be acknowledged).
    fn drain(&self, keys: &[PartitionKey], deliveries: bool) -> Vec<(PartitionKey, Assigned)> {
        let s = &self.shared;
        let mut leaving: Vec<(PartitionKey, Assigned)> = {
            let mut table = self.table();
            keys.iter()
                .filter_map(|k| table.map.remove(k).map(|a| (k.clone(), a)))
                .collect()
        };
        let started = Instant::now();
        for (key, a) in &mut leaving {
            s.status
                .partition_event(&key.0, key.1, PartitionEvent::Draining);
            a.stop.cancel();
            a.tx = None; // closes the queue; queued batches are abandoned
        }
        let deadline = started + s.grace;
        for (key, a) in &mut leaving {
            if let Some(t) = a.thread.take()
                && !join_until(t, deadline)
            {
                tracing::warn!(pipeline = %s.spec.name, topic = %key.0, partition = key.1, "worker still busy at the grace deadline; committing what is done");
            }
        }
        // At least a moment for deliveries, even past a worker's deadline.
        let deadline = deadline.max(Instant::now() + Duration::from_millis(100));
        while deliveries && leaving.iter().any(|(_, a)| a.tracker.in_flight() > 0) {
            if Instant::now() >= deadline {
                tracing::warn!(pipeline = %s.spec.name, "records of leaving partitions not acknowledged within the grace period; committing only acknowledged work");
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        leaving
    }

    /// What to commit for drained partitions. Even what a periodic commit
    /// already sent: an async commit issued during a rebalance can fail
    /// (REBALANCE_IN_PROGRESS), and skipping it here would make the next
    /// owner redo that work.
    fn commit_list(
        &self,
        consumer: &BaseConsumer<Self>,
        leaving: &[(PartitionKey, Assigned)],
    ) -> TopicPartitionList {
        let positions = positions(consumer);
        let mut tpl = TopicPartitionList::new();
        for (key, a) in leaving {
            if let Some(next) = a.commit_offset(&positions, key)
                && let Err(e) = tpl.add_partition_offset(&key.0, key.1, Offset::Offset(next))
            {
                tracing::error!(error = %e, "cannot build commit list");
            }
        }
        tpl
    }

    /// Logs and unlists released partitions; `drained` is how long their
    /// drain took (the part of a rebalance this host is responsible for).
    fn released(&self, leaving: &[(PartitionKey, Assigned)], reason: &str, drained: Duration) {
        let s = &self.shared;
        let drain_ms = drained.as_millis() as u64;
        for (key, a) in leaving {
            tracing::info!(pipeline = %s.spec.name, topic = %key.0, partition = key.1, host = %s.host_id,
                committed = ?a.tracker.committable(), reason, drain_ms, stale_refused = a.refused, "partition released");
            s.status.released(&key.0, key.1);
        }
        let mut streak = self.streak();
        for (key, _) in leaving {
            streak.remove(key);
        }
    }

    /// Shutdown: drains every partition and commits, retrying the commit
    /// while the group is between generations (a SIGTERM that lands
    /// mid-rebalance). Between tries `poll` is served, so the member
    /// completes the join in progress and the next try carries the
    /// generation the coordinator accepts; should a rebalance revoke the
    /// drained partitions meanwhile, the revoke callback commits them before
    /// letting go (see [`revoke`](Self::revoke)), as a graceful handoff must.
    pub(crate) fn shutdown(&self, consumer: &BaseConsumer<Self>) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
        let started = Instant::now();
        let leaving = self.drain(&self.assigned_keys(), true);
        let drained = started.elapsed();
        if self.shared.exactly_once.is_some() {
            // A refused commit aborts: nothing of it is visible, and the
            // next owner redoes it from the last committed transaction.
            self.end_transaction(consumer, &leaving, None);
            self.released(&leaving, "host shutting down", drained);
            return;
        }
        let tpl = self.commit_list(consumer, &leaving);
        if tpl.count() > 0 {
            *self.pending_commit() = Some(tpl);
            let deadline = Instant::now() + self.shared.grace.max(Duration::from_secs(5));
            let mut tries = 0u32;
            loop {
                let Some(tpl) = self.pending_commit().clone() else {
                    break; // committed by a revoke callback
                };
                tries += 1;
                match consumer.commit(&tpl, CommitMode::Sync) {
                    Ok(()) => {
                        *self.pending_commit() = None;
                        if tries > 1 {
                            tracing::info!(pipeline = %self.shared.spec.name, tries, "commit at shutdown landed once the group settled");
                        }
                        break;
                    }
                    Err(e) if retry_commit(&e) && Instant::now() < deadline => {
                        tracing::info!(pipeline = %self.shared.spec.name, error = %e,
                            "commit at shutdown refused while the group rebalances; serving the rebalance and committing again");
                        let until = Instant::now() + Duration::from_millis(200);
                        while Instant::now() < until && self.pending_commit().is_some() {
                            let _ = consumer.poll(Duration::from_millis(20));
                        }
                    }
                    Err(e) => {
                        *self.pending_commit() = None;
                        tracing::error!(pipeline = %self.shared.spec.name, error = %e, tries,
                            "commit at shutdown failed; the next owner may redo some work");
                        break;
                    }
                }
            }
        }
        self.released(&leaving, "host shutting down", drained);
    }

    /// Exactly-once: registers the pipeline's `transactional.id` (fencing
    /// this host's previous incarnation and aborting what it left open) and
    /// opens the first transaction, before the consumer first polls, so no
    /// partition is assigned before outputs can be produced. A broker that
    /// is not there yet is waited for; false when the pipeline stops
    /// meanwhile or the producer is fenced (the host then exits).
    pub(crate) fn init_transactions(&self, stop: &CancellationToken) -> bool {
        let s = &self.shared;
        let Some(eos) = &s.exactly_once else {
            return true;
        };
        let mut delay = Duration::from_millis(100);
        loop {
            if stop.is_cancelled() {
                return false;
            }
            match s
                .producer()
                .init_transactions(eos.timeout().min(Duration::from_secs(30)))
            {
                Ok(()) => break,
                Err(e) if recovery_for(&e) == TxnRecovery::Fatal => {
                    self.fatal_transaction(&format!("cannot initialise transactions: {e}"));
                    return false;
                }
                Err(e) => {
                    tracing::warn!(pipeline = %s.spec.name, error = %e, retry_in = ?delay,
                        "cannot initialise transactions yet; trying again");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        if let Err(e) = s.producer().begin_transaction() {
            self.fatal_transaction(&format!("cannot begin a transaction: {e}"));
            return false;
        }
        tracing::info!(pipeline = %s.spec.name, "exactly-once: transactions initialised");
        true
    }

    /// Exactly-once revocation, inside the revoke callback: the leaving
    /// partitions' workers finish their batches, then the open transaction
    /// ends with the offsets of every partition held (leaving or staying),
    /// before librdkafka lets the leaving ones go. A lost assignment (the
    /// member was fenced: session timeout, a zombie waking up) aborts
    /// instead, since a commit with the old generation would be refused
    /// anyway, and its outputs must never become visible.
    fn revoke_transactional(
        &self,
        consumer: &BaseConsumer<Self>,
        keys: &[PartitionKey],
        lost: bool,
    ) {
        let started = Instant::now();
        let leaving = self.drain(keys, !lost);
        let drained = started.elapsed();
        let lost_reason = lost
            .then(|| "the assignment was lost (this member was fenced from the group)".to_owned());
        self.end_transaction(consumer, &leaving, lost_reason);
        self.released(
            &leaving,
            if lost {
                "assignment lost"
            } else {
                "revoked by rebalance"
            },
            drained,
        );
    }

    /// Exactly-once: ends the open transaction. Closes the gate (no batch
    /// starts, the ones producing finish), flushes the producer, and asks
    /// each partition's tracker what it may commit
    /// ([`verdict`](super::transaction::verdict)); then either commits the
    /// offsets of every partition held and of `leaving` in the transaction,
    /// or aborts it (a partition's record failed, the call failed, or
    /// `abort` says why) and rewinds every partition still held to its last
    /// committed offset, to be redone. A new transaction begins and the
    /// gate opens with the current deployment allowed. A fatal error
    /// (fenced by another producer with this `transactional.id`) stops the
    /// host: the gate stays closed.
    fn end_transaction(
        &self,
        consumer: &BaseConsumer<Self>,
        leaving: &[(PartitionKey, Assigned)],
        abort: Option<String>,
    ) {
        let s = &self.shared;
        let Some(eos) = &s.exactly_once else { return };
        let started = Instant::now();
        let entered = eos.gate.close();
        let mut abort = abort;
        // No flush first: `commit_transaction` flushes, and fails if any
        // record of the transaction was not delivered. (rust-rdkafka's
        // flush also polls in 100 ms steps, which the producer's own thread
        // leaves idle: measured, it held every transaction's gate closed
        // for 100 ms or more.) The offsets are what was handed to the
        // producer, not what its delivery reports acknowledged: reports
        // reach the trackers on the producer's thread, possibly after a
        // flush returned, and offsets lagging their outputs committed
        // duplicates in the frozen-host test. Reports known by now still
        // abort early, and say which inputs to dead-letter on the redo.
        let positions = positions(consumer);
        let mut tpl = TopicPartitionList::new();
        let mut commits: Vec<(PartitionKey, i64)> = Vec::new();
        let mut culprits: Vec<(PartitionKey, String)> = Vec::new();
        {
            let table = self.table();
            let mut redo = self.redo();
            let held = table.map.iter().chain(leaving.iter().map(|(k, a)| (k, a)));
            for (key, a) in held {
                let rejections = a.tracker.take_rejections();
                let rejected = rejections.len();
                if rejected > 0 {
                    redo.entry(key.clone()).or_default().extend(rejections);
                }
                let failure = a.tracker.failure().map(|(_, why)| why);
                match verdict(
                    failure.as_deref(),
                    rejected,
                    a.transaction_offset(&positions, key),
                    a.committed,
                ) {
                    PartitionVerdict::Abort(why) => {
                        abort.get_or_insert(format!("{}[{}]: {why}", key.0, key.1));
                        culprits.push((key.clone(), why));
                    }
                    PartitionVerdict::Commit(Some(next)) => {
                        if tpl
                            .add_partition_offset(&key.0, key.1, Offset::Offset(next))
                            .is_ok()
                        {
                            commits.push((key.clone(), next));
                        }
                    }
                    PartitionVerdict::Commit(None) => {}
                }
            }
        }
        let outcome = match abort {
            Some(why) => Err((TxnRecovery::Abort, why)),
            // Nothing produced and no offset moved: keep the transaction.
            None if tpl.count() == 0 && !entered => {
                eos.gate.open(s.deployment.generation());
                return;
            }
            None => self.commit_transaction(consumer, &tpl, eos.timeout()),
        };
        // Progress ends a streak; a partition that sat out its wait
        // committed nothing and keeps it. (An abort's streaks are counted by
        // the rewind, which also sees failures reported after the boundary.)
        if outcome.is_ok() {
            let mut streak = self.streak();
            for (key, _) in &commits {
                streak.remove(key);
            }
        }
        match outcome {
            Ok(()) => {
                let mut table = self.table();
                for (key, next) in commits {
                    if let Some(a) = table.map.get_mut(&key) {
                        a.committed = Some(next);
                        a.resume_at = Some(next);
                        s.status.committed(&key.0, key.1, next);
                    }
                }
                drop(table);
                eos.metrics.committed.increment(1);
                eos.metrics
                    .commit_seconds
                    .record(started.elapsed().as_secs_f64());
            }
            Err((TxnRecovery::Fatal, why)) => {
                self.fatal_transaction(&why);
                return;
            }
            Err((_, why)) => {
                // Failures reported by now are partitions' own (the commit's
                // flush delivered their reports); the abort purges the other
                // partitions' queued records next, failing them too, and
                // those are no partition's fault.
                for (key, a) in self.table().map.iter() {
                    if !culprits.iter().any(|(k, _)| k == key)
                        && let Some((_, why)) = a.tracker.failure()
                    {
                        culprits.push((key.clone(), why));
                    }
                }
                tracing::warn!(pipeline = %s.spec.name, reason = %why,
                    "transaction aborted; its outputs stay invisible to read_committed readers, and every partition held is rewound to its last committed offset");
                if let Err(e) = self.abort_transaction() {
                    if s.cancel.is_cancelled() {
                        tracing::warn!(pipeline = %s.spec.name, error = %e,
                            "stopping with the transaction not aborted; the broker aborts it at its timeout");
                        return;
                    }
                    // Seen after an outage longer than the transaction
                    // timeout: the coordinator aborted the transaction
                    // itself and refuses this abort (INVALID_TXN_STATE). A
                    // new producer with the same `transactional.id` fences
                    // the old one and completes whatever it left open; then
                    // the work is redone as after any abort.
                    tracing::warn!(pipeline = %s.spec.name, error = %e,
                        "cannot abort the transaction; replacing the transactional producer");
                    eos.metrics.aborted.increment(1);
                    self.rewind_with(consumer, true, &culprits);
                    return;
                }
                eos.metrics.aborted.increment(1);
                self.rewind(consumer, &culprits);
            }
        }
        if let Err(e) = s.producer().begin_transaction() {
            self.fatal_transaction(&format!("cannot begin a transaction: {e}"));
            return;
        }
        eos.gate.open(s.deployment.generation());
    }

    /// Sends `offsets` and commits, retrying what librdkafka says may be
    /// retried, within half the transaction timeout.
    fn commit_transaction(
        &self,
        consumer: &BaseConsumer<Self>,
        offsets: &TopicPartitionList,
        timeout: Duration,
    ) -> Result<(), (TxnRecovery, String)> {
        let producer = self.shared.producer();
        let deadline = Instant::now() + timeout / 2;
        let retry = |e: &KafkaError| {
            let r = recovery_for(e);
            if r == TxnRecovery::Retry && Instant::now() >= deadline {
                TxnRecovery::Abort
            } else {
                r
            }
        };
        let left = || {
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100))
        };
        if offsets.count() > 0 {
            let Some(group) = consumer.group_metadata() else {
                return Err((
                    TxnRecovery::Abort,
                    "the consumer has no group metadata".into(),
                ));
            };
            loop {
                match producer.send_offsets_to_transaction(offsets, &group, left()) {
                    Ok(()) => break,
                    Err(e) => match retry(&e) {
                        TxnRecovery::Retry => std::thread::sleep(Duration::from_millis(50)),
                        r => {
                            return Err((
                                r,
                                describe(&e, "cannot add the offsets to the transaction"),
                            ));
                        }
                    },
                }
            }
        }
        loop {
            match producer.commit_transaction(left()) {
                Ok(()) => return Ok(()),
                Err(e) => match retry(&e) {
                    TxnRecovery::Retry => std::thread::sleep(Duration::from_millis(50)),
                    r => return Err((r, describe(&e, "cannot commit the transaction"))),
                },
            }
        }
    }

    /// Aborts the open transaction, retrying while librdkafka says so.
    ///
    /// For as long as it takes: during a broker outage the abort cannot
    /// reach the coordinator, and giving up would stop the host for an
    /// outage that pauses work and loses nothing (the broker aborts the
    /// transaction itself once its timeout passes; the abort then completes
    /// with the bumped epoch). Only a pipeline being stopped gives up, and
    /// then the broker's timeout or this host's next incarnation aborts it.
    fn abort_transaction(&self) -> Result<(), KafkaError> {
        let s = &self.shared;
        let started = Instant::now();
        let mut next_log = Duration::from_secs(10);
        loop {
            match s.producer().abort_transaction(Duration::from_secs(5)) {
                Ok(()) => return Ok(()),
                Err(e) if recovery_for(&e) == TxnRecovery::Retry && !s.cancel.is_cancelled() => {
                    if started.elapsed() >= next_log {
                        next_log += Duration::from_secs(10);
                        tracing::warn!(pipeline = %s.spec.name, error = %e, waited = ?started.elapsed(),
                            "cannot abort the transaction yet (broker unreachable?); trying again");
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The producer cannot go on: stop the host, saying why (a fenced
    /// producer means another live producer has this `transactional.id`).
    fn fatal_transaction(&self, why: &str) {
        let s = &self.shared;
        tracing::error!(pipeline = %s.spec.name, reason = %why, "exactly-once producer fenced or failed for good; stopping the host");
        crate::serve::report_fatal(format!(
            "pipeline `{}`: transactional producer fenced or failed: {why}",
            s.spec.name
        ));
    }

    /// After an abort: every partition held is taken down (its worker
    /// stopped, its batches dropped) and set up again at its last committed
    /// offset; what the aborted transaction held is redone.
    fn rewind(&self, consumer: &BaseConsumer<Self>, culprits: &[(PartitionKey, String)]) {
        self.rewind_with(consumer, false, culprits);
    }

    /// [`rewind`](Self::rewind), replacing the transactional producer
    /// between taking the partitions down and setting them up again when
    /// `new_producer` (the new one is initialised and in a transaction
    /// when this returns, and the gate is open).
    ///
    /// `culprits` are the partitions whose own records failed the
    /// transaction (seen at the boundary or by the commit's flush); a
    /// partition with a record rejected for good reported after it is one
    /// too. Records the abort purged are nobody's fault. Each culprit's abort streak grows, and its
    /// redo may wait ([`redo_hold`]).
    fn rewind_with(
        &self,
        consumer: &BaseConsumer<Self>,
        new_producer: bool,
        culprits: &[(PartitionKey, String)],
    ) {
        let keys = self.assigned_keys();
        let drained = self.drain(&keys, false);
        if new_producer {
            let s = &self.shared;
            let Some(config) = &s.transactional_config else {
                return;
            };
            match OutputProducer::new(config) {
                Ok(p) => *s.producer.write().unwrap_or_else(|p| p.into_inner()) = p,
                Err(e) => {
                    self.fatal_transaction(&format!(
                        "cannot create a new transactional producer: {e}"
                    ));
                    return;
                }
            }
            if !self.init_transactions(&s.cancel) {
                return;
            }
            if let Some(eos) = &s.exactly_once {
                eos.gate.open(s.deployment.generation());
            }
        }
        for (key, a) in drained {
            // Rejections reported after the boundary (the abort flushed
            // them) are dead-lettered on the redo too.
            let late = a.tracker.take_rejections();
            let why = culprits
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, why)| why.clone())
                .or_else(|| {
                    (!late.is_empty())
                        .then(|| format!("{} output record(s) rejected by the broker", late.len()))
                });
            if let Some(why) = why {
                let mut streak = self.streak();
                let e = streak.entry(key.clone()).or_insert((0, String::new()));
                e.0 += 1;
                e.1 = why;
            }
            if !late.is_empty() {
                self.redo().entry(key.clone()).or_default().extend(late);
            }
            if let Some(offset) = a.resume_at
                && let Err(e) = consumer.seek(
                    &key.0,
                    key.1,
                    Offset::Offset(offset),
                    Duration::from_secs(10),
                )
            {
                // The partition cannot be rewound: keeping it would commit
                // past the aborted outputs. Stop the host instead.
                self.fatal_transaction(&format!(
                    "cannot rewind {}[{}] to offset {offset} after an abort: {e}",
                    key.0, key.1
                ));
                return;
            }
            tracing::info!(pipeline = %self.shared.spec.name, topic = %key.0, partition = key.1,
                resume_at = ?a.resume_at, "partition rewound after an aborted transaction");
            let hold = self.streak().get(&key).and_then(|(n, why)| {
                redo_hold(*n).map(|wait| {
                    (
                        wait,
                        format!(
                            "{n} transactions in a row aborted because of this partition: {why}"
                        ),
                    )
                })
            });
            self.assign_at(key, a.resume_at, a.resume_at, hold);
        }
    }

    /// Exactly-once: aborts in a row per partition ([`abort_streak`](Self::abort_streak)).
    fn streak(&self) -> MutexGuard<'_, FxHashMap<PartitionKey, (u32, String)>> {
        self.abort_streak.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Exactly-once: inputs to dead-letter on the redo, per partition.
    fn redo(&self) -> MutexGuard<'_, FxHashMap<PartitionKey, BTreeMap<i64, String>>> {
        self.redo_rejected.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Offsets drained at shutdown and not yet committed.
    fn pending_commit(&self) -> MutexGuard<'_, Option<TopicPartitionList>> {
        self.pending_commit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Inside a revoke callback during shutdown: the drained partitions'
    /// offsets, if still uncommitted, must land before librdkafka lets them
    /// go.
    fn commit_pending(&self, consumer: &BaseConsumer<Self>) {
        let mut pending = self.pending_commit();
        if let Some(tpl) = pending.as_ref() {
            match consumer.commit(tpl, CommitMode::Sync) {
                Ok(()) => {
                    tracing::info!(pipeline = %self.shared.spec.name, "commit at shutdown landed in the revoke callback");
                    *pending = None;
                }
                Err(e) => {
                    tracing::warn!(pipeline = %self.shared.spec.name, error = %e, "commit at shutdown refused in the revoke callback")
                }
            }
        }
    }

    /// Appends a fetched message to its partition's open batch.
    pub(crate) fn route(&self, consumer: &BaseConsumer<Self>, msg: &BorrowedMessage<'_>) {
        let headers = msg.headers();
        let header_iter = headers
            .into_iter()
            .flat_map(|h| h.iter())
            .map(|h| (h.key, h.value));
        self.route_parts(
            consumer,
            Incoming {
                topic: msg.topic(),
                partition: msg.partition(),
                offset: msg.offset(),
                timestamp_ms: msg.timestamp().to_millis(),
                key: msg.key(),
                value: msg.payload(),
            },
            header_iter,
        );
    }

    /// [`route`](Self::route) for a message from the fetch queue.
    pub(crate) fn route_fetched(&self, consumer: &BaseConsumer<Self>, msg: &Fetched<'_>) {
        self.route_parts(
            consumer,
            Incoming {
                topic: msg.topic(),
                partition: msg.partition(),
                offset: msg.offset(),
                timestamp_ms: msg.timestamp_ms(),
                key: msg.key(),
                value: msg.payload(),
            },
            msg.headers(),
        );
    }

    fn route_parts<'h>(
        &self,
        consumer: &BaseConsumer<Self>,
        msg: Incoming<'_>,
        headers: impl Iterator<Item = (&'h str, Option<&'h [u8]>)>,
    ) {
        let mut guard = self.table();
        let table = &mut *guard;
        if table.route_key.1 != msg.partition || table.route_key.0 != msg.topic {
            table.route_key = (msg.topic.to_owned(), msg.partition);
        }
        let key = &table.route_key;
        let Some(a) = table.map.get_mut(key) else {
            // Not ours (any more): never processed, never committed.
            return;
        };
        let mut admission = admit(msg.offset, a.floor, a.last_routed);
        if admission == Admission::BelowFloor
            && a.refused == 0
            && let Some(floor) = a.floor
            && floor_past_log_end(consumer, key, floor)
        {
            // Not a stale fetch: the committed offset is past the log end
            // (the topic was deleted and recreated under this group), and
            // librdkafka restarted at the log start. Process from there.
            tracing::warn!(pipeline = %self.shared.spec.name, topic = %key.0, partition = key.1, floor,
                "the committed offset is past the partition's end (topic recreated?); processing from where librdkafka restarted");
            a.floor = None;
            admission = admit(msg.offset, None, a.last_routed);
        }
        if admission != Admission::Admit {
            if a.refused == 0 {
                tracing::warn!(pipeline = %self.shared.spec.name, topic = %key.0, partition = key.1,
                    offset = msg.offset, floor = ?a.floor, last = ?a.last_routed, ?admission,
                    "fetched message not processed: below the committed offset or already seen in this assignment (a stale fetch)");
            }
            a.refused += 1;
            return;
        }
        a.open
            .push(msg.offset, msg.timestamp_ms, msg.key, msg.value, headers);
        a.last_routed = Some(msg.offset);
        a.resume_at.get_or_insert(msg.offset);
        a.opened_at.get_or_insert_with(Instant::now);
        if a.open.len() >= self.shared.spec.batch.max_messages {
            dispatch(consumer, key, a);
        }
    }

    /// Sends batches that waited long enough, retries held ones, resumes
    /// partitions whose worker caught up.
    pub(crate) fn dispatch_due(&self, consumer: &BaseConsumer<Self>, now: Instant) {
        let max_wait = Duration::from_millis(self.shared.spec.batch.max_wait_ms);
        let mut table = self.table();
        for (key, a) in table.map.iter_mut() {
            let due = a
                .opened_at
                .is_some_and(|t| now.saturating_duration_since(t) >= max_wait);
            if matches!(a.flow, Flow::Paused { .. }) || due {
                dispatch(consumer, key, a);
            }
        }
    }

    /// Commits every partition's done offset (asynchronously). An offset
    /// already sent is sent again every [`RECOMMIT_EVERY`]: a commit refused
    /// during a rebalance must not leave the group's offset behind for good
    /// should its failure report never reach `commit_callback`.
    pub(crate) fn commit_done(&self, consumer: &BaseConsumer<Self>) {
        if self.shared.exactly_once.is_some() {
            self.end_transaction(consumer, &[], None);
            return;
        }
        let positions = positions(consumer);
        let mut tpl = TopicPartitionList::new();
        let resend = {
            let mut last = self
                .last_full_commit
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let due = last.elapsed() >= RECOMMIT_EVERY;
            if due {
                *last = Instant::now();
            }
            due
        };
        let mut table = self.table();
        for (key, a) in table.map.iter_mut() {
            // A delivery that failed for good with no dead letter to stand
            // in stops this partition's commits: say so, once.
            if let Some((offset, reason)) = a.tracker.failure()
                && a.reported_failure != Some(offset)
            {
                a.reported_failure = Some(offset);
                self.shared.status.partition_event(
                    &key.0,
                    key.1,
                    PartitionEvent::Stalled(format!(
                        "not committing past offset {offset}: {reason} (a restart of the pipeline re-reads from there)"
                    )),
                );
            }
            if let Some(next) = a.commit_offset(&positions, key)
                && (resend || a.committed != Some(next))
                && tpl
                    .add_partition_offset(&key.0, key.1, Offset::Offset(next))
                    .is_ok()
            {
                a.committed = Some(next);
                self.shared.status.committed(&key.0, key.1, next);
            }
        }
        drop(table);
        if tpl.count() > 0
            && let Err(e) = consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::warn!(pipeline = %self.shared.spec.name, error = %e, "periodic commit failed; will retry");
        }
    }

    /// Every partition held now.
    pub(crate) fn assigned_keys(&self) -> Vec<PartitionKey> {
        self.table().map.keys().cloned().collect()
    }
}

impl Assigned {
    /// Exactly-once: the offset this partition's transaction commits, from
    /// what was handed to the producer (see [`commit_offset`] for the
    /// position).
    fn transaction_offset(
        &self,
        positions: &TopicPartitionList,
        key: &PartitionKey,
    ) -> Option<i64> {
        let position = positions
            .find_partition(&key.0, key.1)
            .and_then(|e| match e.offset() {
                Offset::Offset(next) => Some(next),
                _ => None,
            });
        commit_offset(self.tracker.processed_through(), self.last_routed, position)
    }

    /// The offset to commit for this partition: see [`commit_offset`].
    fn commit_offset(&self, positions: &TopicPartitionList, key: &PartitionKey) -> Option<i64> {
        let position = positions
            .find_partition(&key.0, key.1)
            .and_then(|e| match e.offset() {
                Offset::Offset(next) => Some(next),
                _ => None,
            });
        commit_offset(self.tracker.committable(), self.last_routed, position)
    }
}

/// The consumer's position of every assigned partition (empty if librdkafka
/// cannot say: then only the trackers' offsets are committed).
/// Whether `floor` lies past the end of the partition's log (one round
/// trip; asked at most once per assignment, when a message below the floor
/// first arrives). Unknown counts as no: the floor stays.
fn floor_past_log_end(
    consumer: &BaseConsumer<PipelineContext>,
    key: &PartitionKey,
    floor: i64,
) -> bool {
    consumer
        .fetch_watermarks(&key.0, key.1, Duration::from_secs(2))
        .is_ok_and(|(_, high)| high < floor)
}

fn positions(consumer: &BaseConsumer<PipelineContext>) -> TopicPartitionList {
    consumer.position().unwrap_or_default()
}

/// Hands the held batch, then the open one, to the worker; pauses the
/// partition when the worker's queue is full. Order is kept: nothing newer
/// is sent while a batch is held.
fn dispatch(consumer: &BaseConsumer<PipelineContext>, key: &PartitionKey, a: &mut Assigned) {
    let Some(tx) = &a.tx else { return };
    let was_paused = matches!(a.flow, Flow::Paused { .. });
    loop {
        let batch = match std::mem::replace(&mut a.flow, Flow::Running) {
            Flow::Paused { held } => *held,
            Flow::Running if !a.open.is_empty() => {
                a.opened_at = None;
                if let Some((_, last)) = a.open.offsets() {
                    consumer
                        .context()
                        .shared
                        .status
                        .fetched(&key.0, key.1, last);
                }
                let next = a
                    .spare
                    .try_recv()
                    .unwrap_or_else(|_| InputBatch::new(key.0.clone(), key.1));
                std::mem::replace(&mut a.open, next)
            }
            Flow::Running => break,
        };
        match tx.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(batch)) | Err(TrySendError::Disconnected(batch)) => {
                a.flow = Flow::Paused {
                    held: Box::new(batch),
                };
                if !was_paused {
                    set_paused(consumer, key, true);
                }
                return;
            }
        }
    }
    if was_paused {
        set_paused(consumer, key, false);
    }
}

fn set_paused(consumer: &BaseConsumer<PipelineContext>, key: &PartitionKey, pause: bool) {
    let event = if pause {
        PartitionEvent::QueueFull
    } else {
        PartitionEvent::QueueDrained
    };
    consumer
        .context()
        .shared
        .status
        .partition_event(&key.0, key.1, event);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&key.0, key.1);
    let result = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    match result {
        Ok(()) => {
            tracing::debug!(topic = %key.0, partition = key.1, paused = pause, reason = "worker queue", "backpressure")
        }
        Err(e) => {
            tracing::warn!(topic = %key.0, partition = key.1, error = %e, "cannot pause/resume partition")
        }
    }
}

fn spawn_worker(
    pipeline: &str,
    key: &PartitionKey,
    worker: Worker,
    rx: Receiver<InputBatch>,
) -> Option<JoinHandle<()>> {
    let name = format!("kwasm-{}-{}", key.0, key.1);
    match std::thread::Builder::new()
        .name(name)
        .spawn(move || worker.run(rx))
    {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(pipeline, topic = %key.0, partition = key.1, error = %e, "cannot start worker thread");
            None
        }
    }
}

/// `what` failed with `e`, saying "fenced" when that is what happened (the
/// word an operator searches the log for).
fn describe(e: &KafkaError, what: &str) -> String {
    if fenced(e) {
        format!("{what}: fenced: {e}")
    } else {
        format!("{what}: {e}")
    }
}

/// Whether a commit refused this way lands if tried again once the group's
/// join in progress completes (the member's generation is being replaced)
/// or the coordinator is back.
fn retry_commit(e: &KafkaError) -> bool {
    coordinator_moving(e)
        || matches!(
            e.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::RebalanceInProgress
                    | RDKafkaErrorCode::IllegalGeneration
                    | RDKafkaErrorCode::StaleMemberEpoch
            )
        )
}

/// Whether the group coordinator is moving or loading (a broker restart or
/// failover): a commit tried again shortly lands.
fn coordinator_moving(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorLoadInProgress
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::WaitingForCoordinator
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::BrokerTransportFailure
        )
    )
}

/// Joins `thread` unless `deadline` passes first (std has no timed join).
fn join_until(thread: JoinHandle<()>, deadline: Instant) -> bool {
    while !thread.is_finished() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = thread.join();
    true
}
