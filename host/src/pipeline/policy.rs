//! What to do with a message after an attempt went wrong: the worker's
//! failure policy as one pure function ([`decide`]), so every rule of
//! DESIGN.md's "Failure policy" table is a unit test here and the worker only
//! carries decisions out.
//!
//! The rules, and why:
//! - A `retryable` error is the plugin saying "not now": the message alone
//!   runs again after a backoff, up to `retry.max_attempts` attempts in all;
//!   then it is dead-lettered (`retries-exhausted`).
//! - A `permanent` error, a trap, a limit hit, a refused output: that message
//!   will fail the same way again, so it is dead-lettered at once.
//! - The plugin cannot be *instantiated* (its `init` rejects the config,
//!   traps or runs out of time, or memory can never fit): not the fault of
//!   the message in hand. The partition stalls, visibly, and tries again
//!   later; nothing is dead-lettered and nothing is committed past it.
//! - An output record the broker rejected for good (too large for the
//!   topic, a null key on a compacted topic, no permission): dead-letter the
//!   message (`output-rejected`). A delivery failure that is not known to be
//!   permanent stalls the partition (it stops committing there and says so).

use std::time::Duration;

use rdkafka::types::RDKafkaErrorCode;

use crate::config::RetryPolicy;
use crate::runtime::PluginErrorKind;

/// What went wrong with one attempt at one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault<'a> {
    /// The plugin answered `retryable` for the message.
    Retryable,
    /// The plugin answered `permanent` for the message.
    Permanent,
    /// The call failed (trap, timeout, memory, stack, output limits, a bad
    /// answer), as classified by the runtime.
    Plugin(&'a PluginErrorKind),
    /// A record named a topic the pipeline may not write.
    OutputNotAllowed,
    /// The producer refused a record before queueing it (e.g. over
    /// `message.max.bytes`).
    ProducerRefused,
    /// The plugin could not be instantiated (`init` rejected its config,
    /// trapped or timed out, the instance could not be created).
    Instantiate,
    /// The broker rejected a delivered record.
    Delivery(RDKafkaErrorCode),
}

/// What the worker does next with the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Run the message alone again, as attempt `attempt`, after `after`.
    Retry {
        /// The attempt number of the next run (2 is the first retry).
        attempt: u32,
        /// How long to wait first.
        after: Duration,
    },
    /// Dead-letter the message, with this `kwasm.error.kind`.
    DeadLetter {
        /// The stable name of the failure.
        kind: &'static str,
    },
    /// Do not dead-letter, do not commit past it: the partition stalls and
    /// tries again after `after` (the instance, or the delivery, is at fault,
    /// not the message).
    Stall {
        /// How long to wait before trying again.
        after: Duration,
    },
}

/// The `kwasm.error.kind` of a message whose output the producer or the
/// broker refused for good: [`decide`]'s verdict for
/// [`Fault::ProducerRefused`] and permanent delivery faults, named once for
/// the callers that know the fault without asking (a rejected delivery's
/// dead letter, an exactly-once redo).
pub(crate) const OUTPUT_REJECTED: &str = "output-rejected";

/// How long a partition stalls after its `attempt`-th failed instantiation:
/// [`decide`]'s verdict for [`Fault::Instantiate`], which always stalls.
pub(crate) fn instantiation_stall(attempt: u32, retry: &RetryPolicy) -> Duration {
    match decide(Fault::Instantiate, attempt, retry) {
        Action::Stall { after } => after,
        other => unreachable!("an instantiation fault stalls, not {other:?}"),
    }
}

/// The dead-letter kind of a message one of whose records the producer
/// refused outright: [`decide`]'s verdict for [`Fault::ProducerRefused`],
/// which always dead-letters.
pub(crate) fn producer_refused_kind() -> &'static str {
    match decide(Fault::ProducerRefused, 1, &RetryPolicy::default()) {
        Action::DeadLetter { kind } => kind,
        other => unreachable!("a refused record dead-letters its message, not {other:?}"),
    }
}

/// The policy: what to do after attempt `attempt` (1 is the first) failed
/// with `fault`.
pub(crate) fn decide(fault: Fault<'_>, attempt: u32, retry: &RetryPolicy) -> Action {
    match fault {
        Fault::Retryable if attempt < retry.max_attempts => Action::Retry {
            attempt: attempt + 1,
            after: Duration::from_millis(retry.backoff_ms(attempt + 1)),
        },
        Fault::Retryable => Action::DeadLetter {
            kind: "retries-exhausted",
        },
        Fault::Permanent => Action::DeadLetter { kind: "permanent" },
        Fault::OutputNotAllowed => Action::DeadLetter {
            kind: "output-not-allowed",
        },
        Fault::ProducerRefused => Action::DeadLetter {
            kind: OUTPUT_REJECTED,
        },
        Fault::Plugin(PluginErrorKind::InitRejected(_) | PluginErrorKind::Instantiate(_))
        | Fault::Instantiate => Action::Stall {
            after: stall_backoff(attempt, retry),
        },
        Fault::Plugin(kind) => Action::DeadLetter { kind: kind.code() },
        Fault::Delivery(code) if delivery_failure_is_permanent(code) => Action::DeadLetter {
            kind: OUTPUT_REJECTED,
        },
        Fault::Delivery(_) => Action::Stall {
            after: stall_backoff(attempt, retry),
        },
    }
}

/// Whether a broker-side delivery failure of an output record makes its
/// message owe a dead letter (else its partition stalls). Asked by the
/// producer's delivery callback.
pub(crate) fn delivery_owes_dead_letter(code: RDKafkaErrorCode) -> bool {
    matches!(
        decide(Fault::Delivery(code), 1, &RetryPolicy::default()),
        Action::DeadLetter { .. }
    )
}

/// Waits between tries of a stalled partition: the pipeline's backoff,
/// doubling, but at least a second and at most a minute, so a broken
/// plugin neither spins nor leaves the partition idle for long once fixed.
fn stall_backoff(attempt: u32, retry: &RetryPolicy) -> Duration {
    let ms = retry
        .backoff_ms(attempt.saturating_add(1))
        .clamp(1_000, 60_000);
    Duration::from_millis(ms)
}

/// Whether the broker (or librdkafka on its behalf) refused a record in a
/// way that retrying the same record can never fix. Anything else is treated
/// as transient: the partition stalls instead of dead-lettering.
fn delivery_failure_is_permanent(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        // `max.message.bytes` of the topic below the record.
        C::MessageSizeTooLarge
            | C::MessageBatchTooLarge
            // A null key on a compacted topic, a bad timestamp, ...
            | C::InvalidRecord
            | C::InvalidMessage
            | C::InvalidMessageSize
            | C::InvalidTimestamp
            | C::PolicyViolation
            | C::TopicAuthorizationFailed
            | C::InvalidTopic
            | C::UnknownTopic
            | C::UnknownTopicOrPartition
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff_ms: 100,
            max_backoff_ms: 5_000,
        }
    }

    #[test]
    fn retryable_runs_again_with_doubling_backoff_then_dead_letters() {
        let p = policy();
        assert_eq!(
            decide(Fault::Retryable, 1, &p),
            Action::Retry {
                attempt: 2,
                after: Duration::from_millis(100)
            }
        );
        assert_eq!(
            decide(Fault::Retryable, 2, &p),
            Action::Retry {
                attempt: 3,
                after: Duration::from_millis(200)
            }
        );
        assert_eq!(
            decide(Fault::Retryable, 3, &p),
            Action::DeadLetter {
                kind: "retries-exhausted"
            }
        );
    }

    #[test]
    fn one_attempt_means_no_retry() {
        let p = RetryPolicy {
            max_attempts: 1,
            ..policy()
        };
        assert_eq!(
            decide(Fault::Retryable, 1, &p),
            Action::DeadLetter {
                kind: "retries-exhausted"
            }
        );
    }

    #[test]
    fn faults_of_the_message_dead_letter_at_once_with_their_kind() {
        let p = policy();
        let trap = PluginErrorKind::Trap("unreachable".into());
        let timeout = PluginErrorKind::Timeout { limit_ms: 5 };
        let bad = PluginErrorKind::BadOutput("x".into());
        for (fault, kind) in [
            (Fault::Permanent, "permanent"),
            (Fault::Plugin(&trap), "trap"),
            (Fault::Plugin(&timeout), "timeout"),
            (Fault::Plugin(&bad), "bad-output"),
            (Fault::OutputNotAllowed, "output-not-allowed"),
            (Fault::ProducerRefused, "output-rejected"),
            (
                Fault::Delivery(RDKafkaErrorCode::MessageSizeTooLarge),
                "output-rejected",
            ),
            (
                Fault::Delivery(RDKafkaErrorCode::InvalidRecord),
                "output-rejected",
            ),
        ] {
            assert_eq!(
                decide(fault, 1, &p),
                Action::DeadLetter { kind },
                "{fault:?}"
            );
        }
    }

    #[test]
    fn instantiation_faults_stall_and_never_dead_letter() {
        let p = policy();
        let init = PluginErrorKind::InitRejected("bad config".into());
        let inst = PluginErrorKind::Instantiate("no".into());
        for fault in [
            Fault::Instantiate,
            Fault::Plugin(&init),
            Fault::Plugin(&inst),
        ] {
            for attempt in [1, 2, 50, u32::MAX] {
                match decide(fault, attempt, &p) {
                    Action::Stall { after } => {
                        assert!(after >= Duration::from_secs(1) && after <= Duration::from_secs(60))
                    }
                    other => panic!("{fault:?} at attempt {attempt}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn transient_delivery_failures_stall() {
        let p = policy();
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::OutOfOrderSequenceNumber,
            RDKafkaErrorCode::Fatal,
        ] {
            assert!(
                matches!(decide(Fault::Delivery(code), 1, &p), Action::Stall { .. }),
                "{code:?}"
            );
        }
    }
}
