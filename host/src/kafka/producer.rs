//! The output producer. Every record carries a [`DeliveryToken`] naming the
//! input message it came from; the delivery report acknowledges it in that
//! partition's [`OffsetTracker`]. That is the only path by which an offset
//! becomes committable.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use super::OffsetTracker;

/// Which input message a produced record belongs to.
pub struct DeliveryToken {
    /// The input partition's tracker.
    pub tracker: Arc<OffsetTracker>,
    /// The input message's offset.
    pub offset: i64,
}

/// Routes delivery reports to the trackers.
pub struct DeliveryContext;

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<DeliveryToken>;

    fn delivery(&self, result: &DeliveryResult<'_>, token: Self::DeliveryOpaque) {
        match result {
            Ok(_) => token.tracker.acked(token.offset),
            Err((e, msg)) => {
                use rdkafka::Message;
                tracing::error!(
                    error = %e,
                    output_topic = msg.topic(),
                    input_offset = token.offset,
                    "delivery failed; the input partition stops committing at this offset"
                );
                token.tracker.failed(token.offset);
            }
        }
    }
}

/// Why a record could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The producer refused the record (too large, unknown topic...).
    #[error("cannot produce to `{topic}`: {source}")]
    Rejected {
        /// The output topic.
        topic: String,
        /// librdkafka's reason.
        source: KafkaError,
    },
}

/// The host's one producer, shared by all partition workers.
#[derive(Clone)]
pub struct OutputProducer {
    inner: ThreadedProducer<DeliveryContext>,
}

/// A record to produce, borrowed from a batch output or an input message.
pub struct OutRecord<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Key.
    pub key: Option<&'a [u8]>,
    /// Value.
    pub value: Option<&'a [u8]>,
    /// Headers.
    pub headers: Option<OwnedHeaders>,
    /// Timestamp.
    pub timestamp_ms: Option<i64>,
}

impl OutputProducer {
    /// Creates the producer (its own thread polls for delivery reports).
    pub fn new(config: &rdkafka::ClientConfig) -> Result<Self, KafkaError> {
        Ok(OutputProducer {
            inner: config.create_with_context(DeliveryContext)?,
        })
    }

    /// Queues `record`; the token's tracker hears of its delivery. When the
    /// local queue is full this waits (backpressure onto the partition).
    pub fn send(&self, record: OutRecord<'_>, token: DeliveryToken) -> Result<(), ProduceError> {
        let mut token = Box::new(token);
        loop {
            let mut r: BaseRecord<'_, [u8], [u8], Box<DeliveryToken>> =
                BaseRecord::with_opaque_to(record.topic, token);
            if let Some(k) = record.key {
                r = r.key(k);
            }
            if let Some(v) = record.value {
                r = r.payload(v);
            }
            if let Some(h) = &record.headers {
                r = r.headers(h.clone());
            }
            if let Some(t) = record.timestamp_ms {
                r = r.timestamp(t);
            }
            match self.inner.send(r) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    token = back.delivery_opaque;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((source, _)) => {
                    return Err(ProduceError::Rejected {
                        topic: record.topic.to_owned(),
                        source,
                    });
                }
            }
        }
    }

    /// Waits up to `timeout` for every queued record's delivery report.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.inner.flush(timeout).is_ok()
    }

    /// Records not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        self.inner.in_flight_count()
    }
}
