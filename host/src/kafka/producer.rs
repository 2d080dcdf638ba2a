//! The output producer. Every record carries a [`DeliveryToken`] naming the
//! input message it came from; the delivery report acknowledges it in that
//! partition's [`OffsetTracker`]. That is the only path by which an offset
//! becomes committable.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use super::OffsetTracker;

// The token layout below needs a 64-bit word.
const _: () = assert!(usize::BITS == 64);

/// Set in a token that packs a route slot and an offset; clear in a token
/// that is a pointer to a [`BoxedToken`] (user-space pointers never have
/// the top bit set).
const PACKED: usize = 1 << 63;
/// Set in a packed token of a dead letter: its delivery failing must stall
/// the partition, never owe another dead letter.
const DEAD_LETTER: usize = 1 << 62;
const SLOT_SHIFT: u32 = 47;
/// Offsets below 2^47 fit beside the slot; larger ones take the boxed path.
const OFFSET_MASK: usize = (1 << SLOT_SHIFT) - 1;
/// Routes that can hold a slot at once; further ones take the boxed path.
const MAX_SLOTS: usize = 1 << (62 - SLOT_SHIFT);

/// Which input message a produced record belongs to, in the one word
/// librdkafka carries per record: usually a route slot and the input offset
/// packed together, so queuing a record allocates nothing. (A boxed token
/// per record, freed on the delivery thread, sent glibc's allocator down its
/// slow cross-thread paths: about 6 % of the host's CPU, measured.)
#[derive(Debug)]
pub struct DeliveryToken(usize);

/// The fallback token, for an offset too large to pack or a route without
/// a slot.
struct BoxedToken {
    tracker: Arc<OffsetTracker>,
    offset: i64,
    dead_letter: bool,
}

impl DeliveryToken {
    fn boxed(tracker: &Arc<OffsetTracker>, offset: i64, dead_letter: bool) -> Self {
        let ptr = Box::into_raw(Box::new(BoxedToken {
            tracker: tracker.clone(),
            offset,
            dead_letter,
        })) as usize;
        assert_eq!(ptr & PACKED, 0, "a heap pointer with the top bit set");
        DeliveryToken(ptr)
    }

    /// Takes the word back (from a delivery report or a refused send).
    fn resolve(word: usize) -> Resolved {
        if word & PACKED != 0 {
            Resolved::Slot {
                slot: (word & !(PACKED | DEAD_LETTER)) >> SLOT_SHIFT,
                offset: (word & OFFSET_MASK) as i64,
                dead_letter: word & DEAD_LETTER != 0,
            }
        } else {
            // SAFETY: a word without the PACKED bit was made by `boxed` from
            // `Box::into_raw`, and librdkafka hands each record's word back
            // exactly once (its delivery report, or the refused send).
            Resolved::Boxed(unsafe { Box::from_raw(word as *mut BoxedToken) })
        }
    }
}

enum Resolved {
    Slot {
        slot: usize,
        offset: i64,
        dead_letter: bool,
    },
    Boxed(Box<BoxedToken>),
}

/// The trackers that delivery reports reach by slot number.
#[derive(Default)]
struct RouteTable {
    slots: RwLock<Vec<RouteSlot>>,
}

struct RouteSlot {
    tracker: Arc<OffsetTracker>,
    /// Its route is gone; the slot is free once nothing is in flight.
    retired: bool,
}

impl RouteTable {
    /// A free slot for `tracker`: a new one, or a retired one whose tracker
    /// awaits no delivery (so no record in flight names it).
    fn claim(&self, tracker: &Arc<OffsetTracker>) -> Option<usize> {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        let free = slots
            .iter()
            .position(|s| s.retired && s.tracker.in_flight() == 0);
        let slot = RouteSlot {
            tracker: tracker.clone(),
            retired: false,
        };
        match free {
            Some(i) => {
                slots[i] = slot;
                Some(i)
            }
            None if slots.len() < MAX_SLOTS => {
                slots.push(slot);
                Some(slots.len() - 1)
            }
            None => None,
        }
    }

    fn retire(&self, slot: usize) {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get_mut(slot) {
            s.retired = true;
        }
    }

    /// Runs `f` on the tracker in `slot` (held under the read lock, so no
    /// clone per record).
    fn with<R>(&self, slot: usize, f: impl FnOnce(&OffsetTracker) -> R) -> Option<R> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots.get(slot).map(|s| f(&s.tracker))
    }
}

/// Where the records of one input partition report back: its tracker,
/// reachable from delivery reports by a slot number while this lives and
/// while records it tokened are in flight.
pub struct DeliveryRoute {
    table: Arc<RouteTable>,
    tracker: Arc<OffsetTracker>,
    slot: Option<usize>,
}

impl DeliveryRoute {
    /// The partition's tracker.
    pub fn tracker(&self) -> &OffsetTracker {
        &self.tracker
    }

    /// The token for a record produced for input `offset`.
    pub fn token(&self, offset: i64) -> DeliveryToken {
        self.make_token(offset, false)
    }

    /// The token for the dead letter of input `offset`.
    pub fn dead_letter_token(&self, offset: i64) -> DeliveryToken {
        self.make_token(offset, true)
    }

    fn make_token(&self, offset: i64, dead_letter: bool) -> DeliveryToken {
        match (self.slot, usize::try_from(offset)) {
            (Some(slot), Ok(o)) if o <= OFFSET_MASK => DeliveryToken(
                PACKED | if dead_letter { DEAD_LETTER } else { 0 } | (slot << SLOT_SHIFT) | o,
            ),
            _ => DeliveryToken::boxed(&self.tracker, offset, dead_letter),
        }
    }
}

#[cfg(test)]
impl DeliveryRoute {
    /// A route on a table of its own, for tests without a producer: its
    /// tokens are packed, and [`DeliveryToken::input`] reads them.
    pub(crate) fn standalone(tracker: Arc<OffsetTracker>) -> Self {
        let table = Arc::new(RouteTable::default());
        let slot = table.claim(&tracker);
        DeliveryRoute {
            table,
            tracker,
            slot,
        }
    }
}

#[cfg(test)]
impl DeliveryToken {
    /// The input offset a packed token names, and whether it is a dead
    /// letter's (a test sink delivers with it).
    pub(crate) fn input(&self) -> (i64, bool) {
        assert!(self.0 & PACKED != 0, "a test route's tokens are packed");
        ((self.0 & OFFSET_MASK) as i64, self.0 & DEAD_LETTER != 0)
    }
}

impl Drop for DeliveryRoute {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            self.table.retire(slot);
        }
    }
}

/// Routes delivery reports to the trackers.
pub struct DeliveryContext {
    routes: Arc<RouteTable>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    /// A permanent rejection of an output record (see
    /// `pipeline::policy`) makes its message
    /// owe a dead letter, which the partition's worker sends; any other
    /// failure, and any failure of a dead letter, stops the partition's
    /// commits at that message (it is reported stalled).
    fn delivery(&self, result: &DeliveryResult<'_>, word: usize) {
        let report = |tracker: &OffsetTracker, offset: i64, dead_letter: bool| match result {
            Ok(_) => tracker.acked(offset),
            Err((e, msg)) => {
                use rdkafka::Message;
                let code = e.rdkafka_error_code();
                let reason = format!("delivery to `{}` failed: {e}", msg.topic());
                if !dead_letter && code.is_some_and(crate::pipeline::delivery_owes_dead_letter) {
                    tracing::warn!(error = %e, output_topic = msg.topic(), input_offset = offset,
                        "output record rejected by the broker; its input message is dead-lettered");
                    tracker.rejected(offset, reason);
                } else {
                    tracing::error!(error = %e, output_topic = msg.topic(), input_offset = offset, dead_letter,
                        "delivery failed; the input partition stops committing at this offset (stalled)");
                    tracker.failed(offset, reason);
                }
            }
        };
        match DeliveryToken::resolve(word) {
            Resolved::Slot {
                slot,
                offset,
                dead_letter,
            } => {
                if self
                    .routes
                    .with(slot, |t| report(t, offset, dead_letter))
                    .is_none()
                {
                    tracing::error!(slot, offset, "delivery report for an unknown route");
                }
            }
            Resolved::Boxed(b) => report(&b.tracker, b.offset, b.dead_letter),
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
            inner: config.create_with_context(DeliveryContext {
                routes: Arc::default(),
            })?,
        })
    }

    /// Makes `tracker` hear of the deliveries of records sent with tokens
    /// from the returned route.
    pub fn route(&self, tracker: Arc<OffsetTracker>) -> DeliveryRoute {
        let table = self.inner.context().routes.clone();
        let slot = table.claim(&tracker);
        if slot.is_none() {
            tracing::warn!(
                "{MAX_SLOTS} partitions routed at once; records of this one carry boxed tokens"
            );
        }
        DeliveryRoute {
            table,
            tracker,
            slot,
        }
    }

    /// Queues `record`; the token's tracker hears of its delivery. When the
    /// local queue is full this waits (backpressure onto the partition).
    pub fn send(&self, record: OutRecord<'_>, token: DeliveryToken) -> Result<(), ProduceError> {
        let mut r: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(record.topic, token.0);
        if let Some(k) = record.key {
            r = r.key(k);
        }
        if let Some(v) = record.value {
            r = r.payload(v);
        }
        if let Some(h) = record.headers {
            r = r.headers(h);
        }
        if let Some(t) = record.timestamp_ms {
            r = r.timestamp(t);
        }
        loop {
            match self.inner.send(r) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The same record (token and headers included) comes back.
                    r = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((source, back)) => {
                    // Never queued: no report will come, so free a boxed word.
                    drop(DeliveryToken::resolve(back.delivery_opaque));
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

    // The transactional calls below need a producer created with a
    // `transactional.id`. Every one of them blocks: call them from a plain
    // thread (a pipeline's consumer thread), never a tokio worker.

    /// Registers the `transactional.id` with its coordinator, fencing any
    /// earlier producer with the same id and aborting its open transaction.
    pub fn init_transactions(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.init_transactions(timeout)
    }

    /// Opens a transaction: records sent from now on belong to it.
    pub fn begin_transaction(&self) -> Result<(), KafkaError> {
        self.inner.begin_transaction()
    }

    /// Adds the consumer's next offsets to the open transaction; `group`
    /// carries the consumer's generation, which fences a zombie (KIP-447).
    pub fn send_offsets_to_transaction(
        &self,
        offsets: &rdkafka::TopicPartitionList,
        group: &rdkafka::consumer::ConsumerGroupMetadata,
        timeout: Duration,
    ) -> Result<(), KafkaError> {
        self.inner
            .send_offsets_to_transaction(offsets, group, timeout)
    }

    /// Flushes and commits the open transaction.
    pub fn commit_transaction(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.commit_transaction(timeout)
    }

    /// Aborts the open transaction (its records stay invisible to
    /// `read_committed` readers).
    pub fn abort_transaction(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.abort_transaction(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(table: &Arc<RouteTable>, tracker: &Arc<OffsetTracker>) -> DeliveryRoute {
        DeliveryRoute {
            table: table.clone(),
            tracker: tracker.clone(),
            slot: table.claim(tracker),
        }
    }

    #[test]
    fn tokens_pack_slot_and_offset_and_box_what_does_not_fit() {
        let table = Arc::new(RouteTable::default());
        let tracker = Arc::new(OffsetTracker::new());
        let r = route(&table, &tracker);
        for dead in [false, true] {
            for offset in [0, 1, 123_456_789, OFFSET_MASK as i64] {
                let token = if dead {
                    r.dead_letter_token(offset)
                } else {
                    r.token(offset)
                };
                match DeliveryToken::resolve(token.0) {
                    Resolved::Slot {
                        slot,
                        offset: o,
                        dead_letter,
                    } => {
                        assert_eq!((Some(slot), o, dead_letter), (r.slot, offset, dead));
                    }
                    Resolved::Boxed(_) => panic!("offset {offset} should pack"),
                }
            }
            for offset in [OFFSET_MASK as i64 + 1, i64::MAX, -1] {
                let token = if dead {
                    r.dead_letter_token(offset)
                } else {
                    r.token(offset)
                };
                match DeliveryToken::resolve(token.0) {
                    Resolved::Boxed(b) => {
                        assert_eq!((b.offset, b.dead_letter), (offset, dead));
                        assert!(Arc::ptr_eq(&b.tracker, &tracker));
                    }
                    Resolved::Slot { .. } => panic!("offset {offset} must not pack"),
                }
            }
        }
        // The highest slot keeps its number beside the dead-letter bit.
        let last = DeliveryRoute {
            table: table.clone(),
            tracker: tracker.clone(),
            slot: Some(MAX_SLOTS - 1),
        };
        match DeliveryToken::resolve(last.dead_letter_token(5).0) {
            Resolved::Slot {
                slot, dead_letter, ..
            } => assert_eq!((slot, dead_letter), (MAX_SLOTS - 1, true)),
            Resolved::Boxed(_) => panic!("should pack"),
        }
        std::mem::forget(last); // its slot was never claimed
    }

    #[test]
    fn a_retired_slot_is_reused_only_once_nothing_is_in_flight() {
        let table = Arc::new(RouteTable::default());
        let old = Arc::new(OffsetTracker::new());
        let first = route(&table, &old);
        let slot = first.slot.expect("a slot");
        // A record for offset 7 is out when the partition is let go.
        old.processed(7, 1);
        drop(first);
        let newer = Arc::new(OffsetTracker::new());
        let second = route(&table, &newer);
        assert_ne!(
            second.slot,
            Some(slot),
            "reused while a record was in flight"
        );
        // Its late report still reaches the old tracker.
        table.with(slot, |t| t.acked(7)).expect("slot kept");
        assert_eq!(old.committable(), Some(8));
        let third = route(&table, &Arc::new(OffsetTracker::new()));
        assert_eq!(third.slot, Some(slot), "free once the report came");
        drop(second);
    }
}
