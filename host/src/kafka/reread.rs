//! [`InputReader`]: reads one input message again, by offset.
//!
//! Why: a delivery report saying the broker rejected an output record for
//! good (too large for the topic, a null key on a compacted topic) comes
//! long after the worker let go of the input batch, and the message owes a
//! dead letter carrying the original input. Keeping every in-flight input
//! in memory until its outputs are acknowledged would cost more than the
//! rare re-read from the log, which still holds the message (its offset is
//! not committed).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// Why a message could not be read again.
#[derive(Debug, thiserror::Error)]
pub enum RereadError {
    /// The client could not be created or assigned.
    #[error("cannot read {topic}/{partition} at offset {offset} again: {source}")]
    Kafka {
        /// Input topic.
        topic: String,
        /// Input partition.
        partition: i32,
        /// The offset wanted.
        offset: i64,
        /// librdkafka's reason.
        source: rdkafka::error::KafkaError,
    },
    /// Nothing came in time (broker unreachable, or the offset is gone).
    #[error(
        "cannot read {topic}/{partition} at offset {offset} again: no answer within {waited:?}"
    )]
    Timeout {
        /// Input topic.
        topic: String,
        /// Input partition.
        partition: i32,
        /// The offset wanted.
        offset: i64,
        /// How long it waited.
        waited: Duration,
    },
    /// The log no longer holds the offset (retention or compaction removed
    /// it): the dead letter goes without the original key and value.
    #[error("{topic}/{partition} no longer holds offset {offset} (the next is {next})")]
    Gone {
        /// Input topic.
        topic: String,
        /// Input partition.
        partition: i32,
        /// The offset wanted.
        offset: i64,
        /// The first offset the log still has after it.
        next: i64,
    },
}

/// A client that fetches single messages by offset, created on first use
/// (most pipelines never need it) and kept for the pipeline's life. It
/// assigns partitions by hand and never joins or commits for a group.
pub struct InputReader {
    config: ClientConfig,
    consumer: Mutex<Option<BaseConsumer>>,
}

/// How long one re-read may take before the worker tries again later.
const REREAD_TIMEOUT: Duration = Duration::from_secs(10);

impl InputReader {
    /// A reader with the pipeline consumer's settings (brokers, security).
    pub fn new(mut config: ClientConfig) -> Self {
        config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .remove("group.instance.id");
        InputReader {
            config,
            consumer: Mutex::new(None),
        }
    }

    /// The message at `offset` of `topic`/`partition`.
    pub fn read(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<OwnedMessage, RereadError> {
        let kafka = |source| RereadError::Kafka {
            topic: topic.to_owned(),
            partition,
            offset,
            source,
        };
        let mut guard = self.consumer.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(self.config.create().map_err(kafka)?);
        }
        let consumer = guard.as_ref().expect("just created");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
            .map_err(kafka)?;
        consumer.assign(&tpl).map_err(kafka)?;
        let started = Instant::now();
        let result = loop {
            let left = REREAD_TIMEOUT.saturating_sub(started.elapsed());
            if left.is_zero() {
                break Err(RereadError::Timeout {
                    topic: topic.to_owned(),
                    partition,
                    offset,
                    waited: REREAD_TIMEOUT,
                });
            }
            match consumer.poll(left.min(Duration::from_millis(200))) {
                Some(Ok(m)) if m.topic() == topic && m.partition() == partition => {
                    break if m.offset() == offset {
                        Ok(m.detach())
                    } else {
                        Err(RereadError::Gone {
                            topic: topic.to_owned(),
                            partition,
                            offset,
                            next: m.offset(),
                        })
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(topic, partition, offset, error = %e, "re-read: consumer error")
                }
                None => {}
            }
        };
        let _ = consumer.unassign();
        result
    }
}
