//! Exactly-once delivery (`delivery = "exactly-once"`): the pieces the
//! consumer thread and the partition workers share, and the policies that
//! decide what a failed transactional call means.
//!
//! One transaction spans a commit interval across every partition the
//! pipeline's consumer holds on this host (KIP-447: the consumer's group
//! metadata goes with the offsets, so a zombie whose generation is gone
//! cannot commit). To commit, the consumer thread closes the [`TxnGate`]:
//! no worker starts a batch while it is closed, and the close waits for the
//! batches in progress to have handed all their records to the producer.
//! Then the producer is flushed (so every partition's tracker knows what
//! was acknowledged, rejected or failed), the offsets of what is done go in
//! the transaction, it commits, a new one begins and the gate opens.
//!
//! A worker in a retry backoff or a stall holds no place in the gate, so a
//! slow message never holds a transaction open past its interval; the
//! messages before it commit, it and those after wait for a later one.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::config::TransactionPolicy;
use crate::metrics_names as m;

/// What an exactly-once pipeline adds to the parts every pipeline shares.
pub(crate) struct ExactlyOnce {
    /// Where workers wait while a transaction is cut.
    pub gate: Arc<TxnGate>,
    /// The pipeline's `transaction` settings.
    pub policy: TransactionPolicy,
    pub metrics: TxnMetrics,
}

/// Metric handles, resolved once per pipeline.
pub(crate) struct TxnMetrics {
    pub committed: metrics::Counter,
    pub aborted: metrics::Counter,
    pub commit_seconds: metrics::Histogram,
}

impl ExactlyOnce {
    pub(crate) fn new(pipeline: &str, policy: TransactionPolicy, generation: u64) -> Self {
        let p = pipeline.to_owned();
        ExactlyOnce {
            gate: Arc::new(TxnGate::new(generation)),
            policy,
            metrics: TxnMetrics {
                committed: metrics::counter!(m::TRANSACTIONS_COMMITTED, "pipeline" => p.clone()),
                aborted: metrics::counter!(m::TRANSACTIONS_ABORTED, "pipeline" => p.clone()),
                commit_seconds: metrics::histogram!(m::TRANSACTION_COMMIT_SECONDS, "pipeline" => p),
            },
        }
    }

    /// `transaction.timeout.ms`.
    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.policy.timeout_ms)
    }

    /// How often a transaction is cut.
    pub(crate) fn interval(&self) -> Duration {
        Duration::from_millis(self.policy.commit_interval_ms)
    }
}

/// Where workers and the committer meet. Workers hold a [`GateGuard`] while
/// a batch of theirs is producing; the committer closes the gate to cut a
/// transaction.
#[derive(Debug)]
pub(crate) struct TxnGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug)]
struct GateState {
    closed: bool,
    /// Workers inside now.
    active: usize,
    /// Whether any worker entered since the gate last opened: a
    /// transaction with no batch and no new offset need not commit.
    entered: bool,
    /// The deployment generation workers may run in this transaction: set
    /// at each boundary, so a hot deploy switches every partition between
    /// two transactions, never inside one.
    generation: u64,
}

/// A worker's place inside the gate; dropping it leaves.
#[derive(Debug)]
pub(crate) struct GateGuard {
    gate: Arc<TxnGate>,
}

/// How often a worker waiting at a closed gate checks its cancellation.
const STOP_CHECK: Duration = Duration::from_millis(10);

impl TxnGate {
    /// An open gate allowing deployment `generation`.
    pub(crate) fn new(generation: u64) -> Self {
        TxnGate {
            state: Mutex::new(GateState {
                closed: false,
                active: 0,
                entered: false,
                generation,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        // Every change leaves the state whole; a panic elsewhere cannot
        // break it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits while the gate is closed, then enters; `None` once `stop` is
    /// cancelled (the partition was revoked or is being rewound).
    pub(crate) fn enter(self: &Arc<Self>, stop: &CancellationToken) -> Option<GateGuard> {
        let mut s = self.lock();
        loop {
            if stop.is_cancelled() {
                return None;
            }
            if !s.closed {
                s.active += 1;
                s.entered = true;
                return Some(GateGuard { gate: self.clone() });
            }
            s = self
                .changed
                .wait_timeout(s, STOP_CHECK)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Closes the gate and waits until no worker is inside. Returns whether
    /// any worker entered since the gate last opened.
    pub(crate) fn close(&self) -> bool {
        let started = Instant::now();
        let mut warned = false;
        let mut s = self.lock();
        s.closed = true;
        while s.active > 0 {
            s = self
                .changed
                .wait_timeout(s, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
            if !warned && started.elapsed() > Duration::from_secs(5) {
                warned = true;
                tracing::warn!(
                    active = s.active,
                    "transaction boundary waits for batches still producing"
                );
            }
        }
        std::mem::take(&mut s.entered)
    }

    /// Opens the gate for the next transaction, allowing deployment
    /// `generation` from now on.
    pub(crate) fn open(&self, generation: u64) {
        let mut s = self.lock();
        s.closed = false;
        s.generation = generation;
        drop(s);
        self.changed.notify_all();
    }

    /// The deployment generation allowed in the current transaction.
    pub(crate) fn generation(&self) -> u64 {
        self.lock().generation
    }
}

impl Drop for GateGuard {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        s.active -= 1;
        drop(s);
        self.gate.changed.notify_all();
    }
}

/// What to do after a transactional call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxnRecovery {
    /// Call it again (librdkafka says the call may be retried: a timeout,
    /// a coordinator moving).
    Retry,
    /// Abort the transaction and rewind every held partition to its last
    /// committed offset: nothing of the transaction becomes visible, and
    /// the work is redone.
    Abort,
    /// The producer is unusable: another producer with this
    /// `transactional.id` fenced it (a second host with the same id), or
    /// the broker refused it for good. The host must stop, loudly.
    Fatal,
}

/// The policy for a failed transactional call, from librdkafka's verdict
/// on the error: fatal beats requires-abort beats retriable; anything
/// without a verdict aborts (the safe default: redo, never commit doubt).
pub(crate) fn recovery(fatal: bool, requires_abort: bool, retriable: bool) -> TxnRecovery {
    if fatal {
        TxnRecovery::Fatal
    } else if requires_abort {
        TxnRecovery::Abort
    } else if retriable {
        TxnRecovery::Retry
    } else {
        TxnRecovery::Abort
    }
}

/// [`recovery`] for a librdkafka error.
pub(crate) fn recovery_for(e: &KafkaError) -> TxnRecovery {
    match e {
        KafkaError::Transaction(t) => {
            recovery(t.is_fatal(), t.txn_requires_abort(), t.is_retriable())
        }
        _ => TxnRecovery::Abort,
    }
}

/// Whether `e` says another producer took this one's `transactional.id`
/// (or its epoch) over: the log says "fenced", since that is what an
/// operator must look for (two hosts with one `host.id`, or a host frozen
/// past its transaction and replaced).
pub(crate) fn fenced(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::FencedInstanceId
        )
    )
}

/// What one partition says at a transaction boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PartitionVerdict {
    /// Its offset goes in the transaction (or stays, when `None`: nothing
    /// new is done).
    Commit(Option<i64>),
    /// A record of it failed in a way that fails the transaction: abort
    /// and redo, for this reason.
    Abort(String),
}

/// The policy at a boundary for one partition, from its tracker after the
/// flush: a delivery that failed (a record the broker rejected, one that
/// timed out, a dead letter that could not be written) makes the whole
/// transaction abortable in librdkafka, so it must be aborted and redone;
/// otherwise the partition's next offset commits if it moved.
pub(crate) fn verdict(
    failure: Option<&str>,
    rejected: usize,
    next: Option<i64>,
    committed: Option<i64>,
) -> PartitionVerdict {
    if let Some(reason) = failure {
        return PartitionVerdict::Abort(reason.to_owned());
    }
    if rejected > 0 {
        return PartitionVerdict::Abort(format!(
            "{rejected} output record(s) rejected by the broker; their inputs are dead-lettered on the redo"
        ));
    }
    match next {
        Some(n) if committed != Some(n) => PartitionVerdict::Commit(Some(n)),
        _ => PartitionVerdict::Commit(None),
    }
}

/// How long a partition waits before redoing its work after `streak`
/// transactions in a row aborted because of it (a record of its own
/// failed). The first redo is at once: a rejected output is dead-lettered
/// on it. From the second on the cause is not going away by itself (a dead
/// letter the broker refuses, an output topic gone): the partition stalls,
/// visibly, doubling from 1 s up to 30 s, so every other partition's work
/// commits in between instead of being aborted with it again and again.
pub(crate) fn redo_hold(streak: u32) -> Option<Duration> {
    match streak {
        0 | 1 => None,
        n => Some(Duration::from_secs(1 << (n - 2).min(5)).min(Duration::from_secs(30))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_partition_that_keeps_failing_its_transaction_waits_longer_each_time() {
        assert_eq!(redo_hold(0), None);
        assert_eq!(redo_hold(1), None, "the first redo is at once");
        assert_eq!(redo_hold(2), Some(Duration::from_secs(1)));
        assert_eq!(redo_hold(3), Some(Duration::from_secs(2)));
        assert_eq!(redo_hold(6), Some(Duration::from_secs(16)));
        assert_eq!(redo_hold(7), Some(Duration::from_secs(30)));
        assert_eq!(redo_hold(100), Some(Duration::from_secs(30)));
    }

    #[test]
    fn fatal_outranks_abort_outranks_retry_and_unknown_aborts() {
        assert_eq!(recovery(true, true, true), TxnRecovery::Fatal);
        assert_eq!(recovery(false, true, true), TxnRecovery::Abort);
        assert_eq!(recovery(false, false, true), TxnRecovery::Retry);
        assert_eq!(recovery(false, false, false), TxnRecovery::Abort);
        // An error that is not a transactional one carries no verdict.
        assert_eq!(recovery_for(&KafkaError::Canceled), TxnRecovery::Abort);
    }

    #[test]
    fn a_partition_with_a_failed_or_rejected_record_aborts_the_transaction() {
        assert_eq!(
            verdict(Some("timed out"), 0, Some(10), Some(5)),
            PartitionVerdict::Abort("timed out".into())
        );
        assert!(matches!(
            verdict(None, 2, Some(10), Some(5)),
            PartitionVerdict::Abort(r) if r.contains("2 output record(s)")
        ));
        assert_eq!(
            verdict(None, 0, Some(10), Some(5)),
            PartitionVerdict::Commit(Some(10))
        );
        assert_eq!(
            verdict(None, 0, Some(10), Some(10)),
            PartitionVerdict::Commit(None)
        );
        assert_eq!(verdict(None, 0, None, None), PartitionVerdict::Commit(None));
    }

    #[test]
    fn close_waits_for_workers_inside_and_blocks_new_ones() {
        let gate = Arc::new(TxnGate::new(1));
        let stop = CancellationToken::new();
        assert!(!gate.close(), "nobody entered yet");
        gate.open(1);
        let guard = gate.enter(&stop).expect("open gate");
        let closer = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.close())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!closer.is_finished(), "close returned with a worker inside");
        drop(guard);
        assert!(
            closer.join().expect("closer thread"),
            "a worker entered this transaction"
        );
        // Closed: a worker waits, and leaves when its partition stops.
        let waiter = {
            let gate = gate.clone();
            let stop = stop.clone();
            std::thread::spawn(move || gate.enter(&stop).is_some())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "entered a closed gate");
        stop.cancel();
        assert!(!waiter.join().expect("waiter thread"));
    }

    #[test]
    fn opening_publishes_the_generation_and_wakes_waiters() {
        let gate = Arc::new(TxnGate::new(1));
        gate.close();
        let waiter = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                let stop = CancellationToken::new();
                gate.enter(&stop).map(|_| gate.generation())
            })
        };
        std::thread::sleep(Duration::from_millis(30));
        gate.open(2);
        assert_eq!(waiter.join().expect("waiter thread"), Some(2));
    }
}
