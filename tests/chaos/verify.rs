//! The chaos verifier's accounting, as pure functions over what was read
//! back: which duplicates a SIGKILL explains, and how long the pipeline took
//! to recover after each event. Unit-tested below without Kafka.

use std::collections::HashMap;

/// Where input record `i` landed, and when it was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputRecord {
    pub partition: i32,
    pub offset: i64,
    /// CreateTime: when the producer was handed the record (ms since epoch).
    pub created_ms: i64,
}

/// One output record: which input record it stands for, where it is, when
/// the broker appended it (the output topic uses LogAppendTime) and which
/// host instance wrote it (the tagging plugin's `kwasm-tag` header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputCopy {
    pub input: usize,
    pub partition: i32,
    pub offset: i64,
    pub appended_ms: i64,
    pub host: String,
}

/// A SIGKILLed host instance and the group's committed input offsets just
/// after it died: everything it wrote at or past them was processed but not
/// committed, so the next owner does it again by design (at least once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kill {
    pub host: String,
    /// Indexed by input partition; `None` where nothing was committed.
    pub committed: Vec<Option<i64>>,
    /// Where the window ends, per input partition (exclusive), when it is
    /// not a crash: a broker outage longer than the session timeout fences
    /// every member as a crash would (librdkafka declares the assignment
    /// lost; the commit on revoke answers UNKNOWN_MEMBER_ID), but the host
    /// goes on afterwards, so only input up to the group's committed offset
    /// once it recovered is explained. `None`: no end (a SIGKILL).
    pub until: Option<Vec<Option<i64>>>,
}

/// Duplicates split by cause.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DuplicateSplit {
    /// Extra copies explained by a SIGKILL window (or a session expiry window).
    pub in_kill_windows: usize,
    /// Extra copies nothing explains: a target miss.
    pub other: usize,
    /// Up to 10 input records with unexplained copies, for the report.
    pub other_examples: Vec<usize>,
    /// Unexplained duplicates by the host that wrote the record first: the
    /// host whose work was done again (whose handoff commit did not land).
    pub other_by_first_host: std::collections::BTreeMap<String, usize>,
}

/// Splits the duplicates among `copies` (each output record once) by cause.
///
/// An input record with `n > 1` copies has `n - 1` duplicates. Of those, as
/// many as it has copies written by a SIGKILLed host at or past that host's
/// kill-time committed offset of the record's input partition are in a
/// SIGKILL window (the killed host's copy is the one the next owner
/// repeats); the rest are unexplained.
pub fn split_duplicates(
    inputs: &[Option<InputRecord>],
    copies: &[OutputCopy],
    kills: &[Kill],
) -> DuplicateSplit {
    let mut by_host: HashMap<&str, Vec<&Kill>> = HashMap::new();
    for k in kills {
        by_host.entry(k.host.as_str()).or_default().push(k);
    }
    let kills = by_host;
    let mut by_input: HashMap<usize, Vec<&OutputCopy>> = HashMap::new();
    for copy in copies {
        by_input.entry(copy.input).or_default().push(copy);
    }
    let mut split = DuplicateSplit::default();
    let mut repeated: Vec<(usize, Vec<&OutputCopy>)> =
        by_input.into_iter().filter(|(_, c)| c.len() > 1).collect();
    repeated.sort_by_key(|(i, _)| *i);
    for (i, group) in repeated {
        let extra = group.len() - 1;
        let explained = inputs
            .get(i)
            .copied()
            .flatten()
            .map_or(0, |input| {
                group
                    .iter()
                    .filter(|c| in_kill_window(&kills, c, input))
                    .count()
            })
            .min(extra);
        split.in_kill_windows += explained;
        split.other += extra - explained;
        if extra > explained {
            if split.other_examples.len() < 10 {
                split.other_examples.push(i);
            }
            if let Some(first) = group.iter().min_by_key(|c| c.appended_ms) {
                *split
                    .other_by_first_host
                    .entry(first.host.clone())
                    .or_default() += extra - explained;
            }
        }
    }
    split
}

fn in_kill_window(
    kills: &HashMap<&str, Vec<&Kill>>,
    copy: &OutputCopy,
    input: InputRecord,
) -> bool {
    kills.get(copy.host.as_str()).is_some_and(|windows| {
        windows.iter().any(|kill| {
            let committed = kill
                .committed
                .get(input.partition as usize)
                .copied()
                .flatten()
                .unwrap_or(0);
            let before_end = kill.until.as_ref().is_none_or(|until| {
                until
                    .get(input.partition as usize)
                    .copied()
                    .flatten()
                    .is_none_or(|end| input.offset < end)
            });
            input.offset >= committed && before_end
        })
    })
}

/// Per output partition, the output's (input CreateTime, append time) pairs,
/// ready to answer "when did each partition first write a record produced
/// after time t".
pub struct Recovery {
    /// Per partition: CreateTimes sorted, and for each position the earliest
    /// append time of that record or any created later.
    partitions: Vec<(Vec<i64>, Vec<i64>)>,
}

impl Recovery {
    /// `samples`: (output partition, input CreateTime, append time) of every
    /// output record; `partitions`: the output's partition count.
    pub fn new(partitions: usize, samples: impl IntoIterator<Item = (i32, i64, i64)>) -> Self {
        let mut per: Vec<Vec<(i64, i64)>> = vec![Vec::new(); partitions];
        for (p, created, appended) in samples {
            if let Some(v) = per.get_mut(p as usize) {
                v.push((created, appended));
            }
        }
        let partitions = per
            .into_iter()
            .map(|mut v| {
                v.sort_unstable();
                let created: Vec<i64> = v.iter().map(|(c, _)| *c).collect();
                let mut earliest: Vec<i64> = v.iter().map(|(_, a)| *a).collect();
                for k in (0..earliest.len().saturating_sub(1)).rev() {
                    earliest[k] = earliest[k].min(earliest[k + 1]);
                }
                (created, earliest)
            })
            .collect();
        Recovery { partitions }
    }

    /// Time to recover from an event at `event_ms`: until every partition
    /// has written a record whose input was produced after the event, so
    /// processing runs everywhere again and the backlog of the event is
    /// gone. `None` if some partition has no such record (the input ended
    /// before it recovered).
    pub fn after(&self, event_ms: i64) -> Option<i64> {
        let mut worst = 0;
        for (created, earliest) in &self.partitions {
            let k = created.partition_point(|&c| c < event_ms);
            let first = *earliest.get(k)?;
            worst = worst.max(first - event_ms);
        }
        Some(worst)
    }
}

/// The median of `values` (the lower middle for an even count); `None` when
/// empty.
pub fn median(values: &mut [i64]) -> Option<i64> {
    if values.is_empty() {
        return None;
    }
    let mid = (values.len() - 1) / 2;
    Some(*values.select_nth_unstable(mid).1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(partition: i32, offset: i64) -> Option<InputRecord> {
        Some(InputRecord {
            partition,
            offset,
            created_ms: 0,
        })
    }

    /// A copy appended at a time that grows with the host's number, so
    /// "h1" writes first.
    fn copy(input: usize, host: &str) -> OutputCopy {
        OutputCopy {
            input,
            partition: 0,
            offset: 0,
            appended_ms: host[1..].parse().unwrap_or(0),
            host: host.to_owned(),
        }
    }

    #[test]
    fn a_killed_hosts_uncommitted_work_redone_is_explained() {
        // Records 0..4 on input partition 1 at offsets 10..14; h1 was killed
        // with partition 1 committed at 12.
        let inputs: Vec<_> = (0..4).map(|i| input(1, 10 + i)).collect();
        let kills = [Kill {
            host: "h1".into(),
            committed: vec![Some(0), Some(12)],
            until: None,
        }];
        let copies = vec![
            copy(1, "h1"), // offset 11: below the commit, h2's copy unexplained
            copy(1, "h2"),
            copy(2, "h1"), // offset 12: in the window
            copy(2, "h2"),
            copy(3, "h1"), // offset 13: in the window, but three copies
            copy(3, "h2"),
            copy(3, "h3"),
            copy(0, "h2"), // once: no duplicate
        ];
        let split = split_duplicates(&inputs, &copies, &kills);
        assert_eq!(
            split,
            DuplicateSplit {
                in_kill_windows: 2,
                other: 2,
                other_examples: vec![1, 3],
                other_by_first_host: [("h1".to_owned(), 2)].into(),
            }
        );
    }

    #[test]
    fn duplicates_of_a_sigtermed_or_never_killed_host_are_unexplained() {
        let inputs = vec![input(0, 5)];
        let copies = vec![copy(0, "h1"), copy(0, "h2")];
        let split = split_duplicates(&inputs, &copies, &[]);
        assert_eq!((split.in_kill_windows, split.other), (0, 1));
        // Nothing committed on the partition when h1 died: all its work is
        // in the window.
        let kills = [Kill {
            host: "h1".into(),
            committed: vec![None],
            until: None,
        }];
        let split = split_duplicates(&inputs, &copies, &kills);
        assert_eq!((split.in_kill_windows, split.other), (1, 0));
    }

    #[test]
    fn recovery_waits_for_the_slowest_partition_to_write_fresh_input() {
        // Partition 0 keeps flowing (latency 5 ms); partition 1 stalls after
        // t = 100 until 900.
        let mut samples = Vec::new();
        for t in (0..1_000).step_by(50) {
            samples.push((0, t, t + 5));
            samples.push((1, t, if t < 100 { t + 5 } else { t.max(900) + 5 }));
        }
        let recovery = Recovery::new(2, samples);
        // An event at 120: partition 1's first record created at 150 or
        // later appears at 905.
        assert_eq!(recovery.after(120), Some(905 - 120));
        // An event at 0 sees partition 1's record 0 at 5.
        assert_eq!(recovery.after(0), Some(5));
        // Past the end of the input: no answer.
        assert_eq!(recovery.after(5_000), None);
    }

    #[test]
    fn a_replayed_old_record_does_not_count_as_recovery() {
        // After the event at 100 the partition only replays old records
        // (created at 10) until fresh ones appear at 400.
        let samples = [(0, 10, 20), (0, 10, 150), (0, 120, 400)];
        assert_eq!(Recovery::new(1, samples).after(100), Some(300));
    }

    #[test]
    fn median_takes_the_lower_middle() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [5, 1, 3]), Some(3));
        assert_eq!(median(&mut [4, 1, 3, 2]), Some(2));
    }

    #[test]
    fn a_session_expiry_window_explains_copies_only_up_to_its_end() {
        let inputs: Vec<Option<InputRecord>> = (0..3)
            .map(|o| {
                Some(InputRecord {
                    partition: 0,
                    offset: 10 + o,
                    created_ms: 0,
                })
            })
            .collect();
        let copy = |input: usize, host: &str, appended_ms: i64| OutputCopy {
            input,
            partition: 0,
            offset: appended_ms,
            appended_ms,
            host: host.into(),
        };
        // Inputs 0 (offset 10) and 2 (offset 12) were each written twice,
        // first by h1; h1's session expired with offset 10 committed and
        // the group was at 12 once it recovered.
        let copies = vec![
            copy(0, "h1", 1),
            copy(0, "h2", 2),
            copy(1, "h2", 3),
            copy(2, "h1", 4),
            copy(2, "h2", 5),
        ];
        let kills = [Kill {
            host: "h1".into(),
            committed: vec![Some(10)],
            until: Some(vec![Some(12)]),
        }];
        let split = split_duplicates(&inputs, &copies, &kills);
        assert_eq!((split.in_kill_windows, split.other), (1, 1), "{split:?}");
        assert_eq!(split.other_examples, vec![2]);
    }
}
