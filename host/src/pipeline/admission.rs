//! Which fetched messages a partition's current assignment may process: one
//! pure function ([`admit`]).
//!
//! Why it exists: librdkafka has been seen (tests/exactly_once.rs, the
//! frozen-host case, about one run in six on 2 loaded cores) to hand a
//! partition's messages over twice after the partition went away and came
//! back: once from a fetch begun in the earlier, short-lived assignment
//! (revoked about 100 ms after it was given, while its offset lookup for
//! `auto.offset.reset` was still out), starting at the log start, and once
//! from the new assignment's own fetch at the committed offset. Processing
//! both committed duplicates under exactly-once (the prefix below the
//! committed offset, and the range both streams carried).
//!
//! The rules, and why they lose nothing:
//! - Below the committed offset read when the partition was assigned (the
//!   *floor*): another owner already processed and committed it.
//! - At or below the last offset admitted in this assignment: one stream of
//!   a partition is in offset order, so only a second stream repeats or goes
//!   back. Every stream starts at or below the floor and carries every
//!   offset after its start, so the first copy of each offset to arrive is
//!   always above the last admitted one (whatever stream delivered that one
//!   delivered this offset before it): admitting first copies only skips no
//!   offset.

/// What to do with one fetched message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Process it.
    Admit,
    /// Below the floor: committed by an earlier owner.
    BelowFloor,
    /// Not after the last admitted offset: a second copy.
    Repeated,
}

/// Whether the message at `offset` is processed, given the assignment's
/// `floor` (the committed offset when it was assigned, if known) and the
/// `last` offset it admitted.
pub(crate) fn admit(offset: i64, floor: Option<i64>, last: Option<i64>) -> Admission {
    if floor.is_some_and(|f| offset < f) {
        Admission::BelowFloor
    } else if last.is_some_and(|l| offset <= l) {
        Admission::Repeated
    } else {
        Admission::Admit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_assignment_admits_from_its_floor() {
        assert_eq!(admit(750, Some(750), None), Admission::Admit);
        assert_eq!(admit(749, Some(750), None), Admission::BelowFloor);
        assert_eq!(admit(0, Some(750), None), Admission::BelowFloor);
        // No committed offset: anything, the log start included.
        assert_eq!(admit(0, None, None), Admission::Admit);
    }

    #[test]
    fn offsets_must_rise_within_an_assignment() {
        assert_eq!(admit(11, Some(0), Some(10)), Admission::Admit);
        // Gaps are normal (transaction markers, compaction).
        assert_eq!(admit(20, Some(0), Some(10)), Admission::Admit);
        assert_eq!(admit(10, Some(0), Some(10)), Admission::Repeated);
        assert_eq!(admit(3, Some(0), Some(10)), Admission::Repeated);
    }

    /// The failure seen: a stale stream from the log start and the
    /// assignment's own stream from the committed offset, interleaved.
    /// Every offset from the floor on is admitted once, none below it.
    #[test]
    fn two_interleaved_streams_are_admitted_once_each_with_no_gap() {
        let floor = 750;
        let stale = 0..2000i64;
        let live = floor..2500i64;
        // Interleave: a burst of the stale stream, then alternating runs.
        let mut arrivals: Vec<i64> = stale.clone().take(800).collect();
        let mut s = stale.skip(800).peekable();
        let mut l = live.peekable();
        loop {
            let a: Vec<i64> = s.by_ref().take(37).collect();
            let b: Vec<i64> = l.by_ref().take(53).collect();
            if a.is_empty() && b.is_empty() {
                break;
            }
            arrivals.extend(a);
            arrivals.extend(b);
        }
        let mut last = None;
        let mut admitted = Vec::new();
        for o in arrivals {
            if admit(o, Some(floor), last) == Admission::Admit {
                admitted.push(o);
                last = Some(o);
            }
        }
        assert_eq!(admitted, (floor..2500).collect::<Vec<_>>());
    }
}
