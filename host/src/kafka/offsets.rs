//! [`OffsetTracker`]: what is safe to commit for one assigned partition.
//!
//! The rule (at-least-once): offset `o + 1` may be committed only when
//! message `o` and every earlier message of the partition have had all their
//! outputs (or their dead-letter record) acknowledged by the broker.
//!
//! Writers: the partition's worker calls [`OffsetTracker::processed`] in
//! offset order as it hands a message's records to the producer; the
//! producer's delivery callback calls [`OffsetTracker::acked`],
//! [`OffsetTracker::rejected`] or [`OffsetTracker::failed`], in any order.
//! Readers: the consumer thread asks [`OffsetTracker::committable`] when it
//! commits; the worker takes [`OffsetTracker::take_rejections`] to send the
//! dead letters they owe. A mutex is enough: each call is a few operations
//! on a short queue.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Offsets in flight for one partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    state: Mutex<TrackerState>,
}

#[derive(Debug, Default)]
struct TrackerState {
    /// One past the newest message handed to the producer (records or a
    /// dead letter), acknowledged or not: what an exactly-once transaction
    /// commits, since its commit succeeds only if every record it holds was
    /// delivered.
    processed_through: Option<i64>,
    /// Processed messages whose records are not all acknowledged, in
    /// offset order, with how many acknowledgements each still awaits.
    waiting: VecDeque<(i64, u32)>,
    /// The offset to commit: one past the newest message that is done with
    /// everything before it done too. `None` until something is done.
    committable: Option<i64>,
    /// A delivery failed at this offset, and why: nothing at or past it may
    /// ever be committed by this owner.
    failed: Option<(i64, String)>,
    /// Messages one of whose records the broker rejected for good, with the
    /// reason, in the order reported: each owes one dead letter, whose
    /// acknowledgement stands in for the rejected records'.
    rejections: Vec<(i64, String)>,
    /// Offsets already in `rejections` (or taken from it), so that a second
    /// rejected record of one message does not owe a second dead letter.
    owing: std::collections::BTreeSet<i64>,
}

impl OffsetTracker {
    /// A tracker with nothing in flight.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TrackerState> {
        // The state is a queue and two numbers, each left consistent by every
        // call; a panic elsewhere while holding the lock cannot break it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Message `offset` was handled and `records` records for it were handed
    /// to the producer. Calls come in increasing offset order.
    pub fn processed(&self, offset: i64, records: u32) {
        let mut s = self.lock();
        s.processed_through = Some(offset + 1);
        if records == 0 && s.waiting.is_empty() {
            s.advance_to(offset + 1);
        } else {
            s.waiting.push_back((offset, records));
            s.pop_done();
        }
    }

    /// The broker acknowledged one record produced for `offset`.
    pub fn acked(&self, offset: i64) {
        let mut s = self.lock();
        if let Some(i) = s.position_of(offset)
            && let Some(entry) = s.waiting.get_mut(i)
        {
            entry.1 = entry.1.saturating_sub(1);
        }
        s.pop_done();
    }

    /// Of the records [`processed`](Self::processed) announced for `offset`,
    /// `unsent` never reached the producer, and one record (its dead letter)
    /// goes instead: the message now awaits the acknowledgements still due
    /// plus that one.
    pub fn replace_unsent(&self, offset: i64, unsent: u32) {
        let mut s = self.lock();
        if let Some(i) = s.position_of(offset)
            && let Some(entry) = s.waiting.get_mut(i)
        {
            entry.1 = entry.1.saturating_sub(unsent) + 1;
        }
    }

    /// The broker rejected a record produced for `offset` for good (see
    /// `pipeline::policy`). The message owes one dead letter, and that
    /// letter's acknowledgement replaces this record's; a further rejected
    /// record of the same message only stops being awaited. True when this
    /// rejection made the message owe its dead letter.
    pub fn rejected(&self, offset: i64, reason: String) -> bool {
        let mut s = self.lock();
        if s.owing.contains(&offset) {
            if let Some(i) = s.position_of(offset)
                && let Some(entry) = s.waiting.get_mut(i)
            {
                entry.1 = entry.1.saturating_sub(1);
            }
            s.pop_done();
            false
        } else {
            s.owing.insert(offset);
            s.rejections.push((offset, reason));
            true
        }
    }

    /// The dead letters owed since the last call, oldest first.
    pub fn take_rejections(&self) -> Vec<(i64, String)> {
        std::mem::take(&mut self.lock().rejections)
    }

    /// Puts back a dead letter taken but not sent (its input could not be
    /// read yet): it is owed still, and taken again next time.
    pub fn requeue_rejection(&self, offset: i64, reason: String) {
        self.lock().rejections.push((offset, reason));
    }

    /// Whether dead letters are owed and not yet taken (cheap: checked by
    /// the worker between batches).
    pub fn has_rejections(&self) -> bool {
        !self.lock().rejections.is_empty()
    }

    /// A record produced for `offset` could not be delivered, and no dead
    /// letter can stand in for it: the partition must not commit past it.
    pub fn failed(&self, offset: i64, reason: String) {
        let mut s = self.lock();
        if s.failed.as_ref().is_none_or(|(f, _)| offset < *f) {
            s.failed = Some((offset, reason));
        }
        s.pop_done();
    }

    /// The offset this partition stopped committing at, and why.
    pub fn failure(&self) -> Option<(i64, String)> {
        self.lock().failed.clone()
    }

    /// The offset safe to commit now, if any.
    pub fn committable(&self) -> Option<i64> {
        self.lock().committable
    }

    /// Whether a delivery failed (the partition has stopped advancing).
    pub fn has_failed(&self) -> bool {
        self.lock().failed.is_some()
    }

    /// One past the newest message handed to the producer, delivered or
    /// not (exactly-once: see `processed_through`).
    pub fn processed_through(&self) -> Option<i64> {
        self.lock().processed_through
    }

    /// The oldest message still awaiting acknowledgements, and how many
    /// (for diagnostics).
    pub fn oldest_waiting(&self) -> Option<(i64, u32)> {
        self.lock().waiting.iter().find(|(_, n)| *n > 0).copied()
    }

    /// Messages processed but not yet fully acknowledged.
    pub fn in_flight(&self) -> usize {
        self.lock().waiting.iter().filter(|(_, n)| *n > 0).count()
    }
}

impl TrackerState {
    /// Where `offset` waits. Offsets are usually contiguous, so its index is
    /// usually `offset - first`; gaps (compaction, transaction markers) fall
    /// back to a binary search. Measured: the search alone was 6 % of the
    /// host's CPU with deep queues.
    fn position_of(&self, offset: i64) -> Option<usize> {
        let first = self.waiting.front()?.0;
        let guess = usize::try_from(offset - first).ok()?;
        if self.waiting.get(guess).is_some_and(|e| e.0 == offset) {
            return Some(guess);
        }
        self.waiting.binary_search_by_key(&offset, |&(o, _)| o).ok()
    }

    fn pop_done(&mut self) {
        while let Some(&(offset, 0)) = self.waiting.front() {
            self.waiting.pop_front();
            if !self.owing.is_empty() {
                self.owing.remove(&offset);
            }
            self.advance_to(offset + 1);
        }
    }

    fn advance_to(&mut self, next: i64) {
        let capped = match &self.failed {
            Some((f, _)) => next.min(*f),
            None => next,
        };
        if self.committable.is_none_or(|c| capped > c) {
            self.committable = Some(capped);
        }
    }
}

/// What to commit for a partition, given its tracker's
/// [`committable`](OffsetTracker::committable) offset, the offset of the last
/// message routed to its worker since it was assigned, and the consumer's
/// position (the next offset librdkafka would hand the application).
///
/// Usually the tracker's offset. The position is further when the records
/// after the last message are ones librdkafka consumes without handing them
/// over: transaction markers (control records) and, under `read_committed`,
/// aborted transactional records. Committing only `last + 1` would leave the
/// group one record short of the end forever after a transaction's final
/// marker (a lag the admin API shows, and what Java consumers, which commit
/// their position, do not do). Taking the position is safe only when every
/// routed message is done (`committable == last + 1`): the consumer thread
/// routes each message it consumes before it commits, so nothing between
/// `last + 1` and the position is data this host still owes. With nothing
/// routed since assignment the position is not trusted (librdkafka may still
/// report the previous assignment's), so nothing changes.
pub fn commit_offset(
    committable: Option<i64>,
    last_routed: Option<i64>,
    position: Option<i64>,
) -> Option<i64> {
    match (committable, last_routed, position) {
        (Some(done), Some(last), Some(next)) if done == last + 1 && next > done => Some(next),
        _ => committable,
    }
}

#[cfg(test)]
mod tests {
    use super::commit_offset;

    #[test]
    fn commit_offset_takes_the_position_past_a_trailing_transaction_marker() {
        // Data 0..=9 done, marker at 10: the position is 11.
        assert_eq!(commit_offset(Some(10), Some(9), Some(11)), Some(11));
        // Aborted records and markers after the last message: same.
        assert_eq!(commit_offset(Some(10), Some(9), Some(23)), Some(23));
    }

    #[test]
    fn commit_offset_keeps_the_tracker_while_routed_work_is_not_done() {
        // Message 9 routed but not done: never past it.
        assert_eq!(commit_offset(Some(9), Some(9), Some(11)), Some(9));
        assert_eq!(commit_offset(None, Some(9), Some(11)), None);
        // Nothing routed since assignment: the position may be stale.
        assert_eq!(commit_offset(None, None, Some(50)), None);
        // No position known, or it is not further.
        assert_eq!(commit_offset(Some(10), Some(9), None), Some(10));
        assert_eq!(commit_offset(Some(10), Some(9), Some(10)), Some(10));
    }

    use super::*;

    #[test]
    fn a_rejected_record_is_replaced_by_one_dead_letter() {
        let t = OffsetTracker::new();
        // Three records announced for offset 4; the first is queued and
        // acknowledged, the second is refused, so two never go out.
        t.processed(4, 3);
        t.acked(4);
        t.replace_unsent(4, 2);
        assert_eq!(t.committable(), None, "the dead letter is still due");
        t.acked(4);
        assert_eq!(t.committable(), Some(5));
    }

    #[test]
    fn nothing_is_committable_before_the_first_ack() {
        let t = OffsetTracker::new();
        t.processed(10, 2);
        assert_eq!(t.committable(), None);
        t.acked(10);
        assert_eq!(t.committable(), None);
        t.acked(10);
        assert_eq!(t.committable(), Some(11));
    }

    #[test]
    fn out_of_order_acks_commit_only_the_contiguous_prefix() {
        let t = OffsetTracker::new();
        for o in 0..3 {
            t.processed(o, 1);
        }
        t.acked(2);
        t.acked(1);
        assert_eq!(t.committable(), None, "offset 0 is still waiting");
        t.acked(0);
        assert_eq!(t.committable(), Some(3));
    }

    #[test]
    fn dropped_messages_advance_only_behind_earlier_ones() {
        let t = OffsetTracker::new();
        t.processed(0, 0);
        assert_eq!(t.committable(), Some(1));
        t.processed(1, 1);
        t.processed(2, 0);
        assert_eq!(t.committable(), Some(1), "2 is done but 1 is not");
        t.acked(1);
        assert_eq!(t.committable(), Some(3));
    }

    #[test]
    fn acks_find_their_offset_across_gaps() {
        let t = OffsetTracker::new();
        for o in [5, 6, 9, 10] {
            t.processed(o, 1);
        }
        t.acked(10);
        t.acked(9);
        t.acked(6);
        assert_eq!(t.committable(), None, "5 is still waiting");
        t.acked(5);
        assert_eq!(t.committable(), Some(11));
        t.acked(42);
        assert_eq!(
            t.committable(),
            Some(11),
            "an unknown offset changes nothing"
        );
    }

    #[test]
    fn a_failed_delivery_caps_the_commit_forever() {
        let t = OffsetTracker::new();
        t.processed(0, 1);
        t.processed(1, 1);
        t.processed(2, 1);
        t.acked(0);
        t.failed(1, "broker said no".into());
        t.acked(2);
        assert_eq!(t.committable(), Some(1));
        t.processed(3, 0);
        assert_eq!(t.committable(), Some(1));
        assert!(t.has_failed());
        assert_eq!(t.failure(), Some((1, "broker said no".into())));
    }

    #[test]
    fn a_rejected_delivery_owes_one_dead_letter_whose_ack_completes_the_message() {
        let t = OffsetTracker::new();
        t.processed(0, 2); // two records
        t.processed(1, 1);
        t.acked(1);
        assert!(
            t.rejected(0, "too large".into()),
            "first rejection owes a letter"
        );
        assert!(!t.rejected(0, "too large".into()), "second one does not");
        assert_eq!(t.committable(), None, "the letter is not acknowledged yet");
        assert_eq!(t.take_rejections(), vec![(0, "too large".into())]);
        assert!(t.take_rejections().is_empty(), "taken once");
        t.acked(0); // the dead letter
        assert_eq!(t.committable(), Some(2));
        assert!(!t.has_failed());
    }

    #[test]
    fn a_rejection_then_an_ack_of_the_same_message_waits_for_its_letter() {
        let t = OffsetTracker::new();
        t.processed(5, 2);
        assert!(t.rejected(5, "null key".into()));
        t.acked(5); // the other record
        assert_eq!(t.committable(), None);
        t.acked(5); // the dead letter
        assert_eq!(t.committable(), Some(6));
        // A later message at the same offset (a new owner) owes afresh.
        t.processed(6, 1);
        assert!(t.rejected(6, "again".into()));
    }
}
