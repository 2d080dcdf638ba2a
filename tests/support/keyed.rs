//! Keyed traffic for the rolling-restart test and the chaos suite: a producer
//! that writes numbered, keyed records at a steady rate while hosts come and
//! go, and the accounting of an output topic against what it wrote.
//!
//! Record `i` (0, 1, 2, ...) has the value `i` in decimal and the key
//! `k<i % keys>`, so record `i`'s key sequence number is `i / keys` and, for
//! one key, a larger `i` was produced later. The producer partitions keys
//! with murmur2 (as the host does), uses idempotence (retries never reorder
//! or duplicate a partition's records) and waits up to five minutes for a
//! delivery, so a broker restart delays the input but never drops or
//! duplicates it: whatever the output shows is the pipeline's doing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use crate::kafka::{Record, producer_config};

/// The value of record `i`.
pub fn value_of(i: usize) -> String {
    i.to_string()
}

/// The key of record `i` among `keys` keys.
pub fn key_of(i: usize, keys: usize) -> String {
    format!("k{}", i % keys)
}

/// The record number a value stands for; `None` for anything else.
pub fn index_of(value: &[u8]) -> Option<usize> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Counts delivery failures; a failed input record would make the output's
/// "lost" figure a lie, so [`KeyedProducer::finish`] refuses to go on.
struct DeliveryCounter {
    failed: AtomicUsize,
    first_error: std::sync::Mutex<Option<String>>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let mut first = self
                .first_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            first.get_or_insert_with(|| error.to_string());
        }
    }
}

/// A thread producing keyed records (see the module doc) at a steady rate
/// until stopped or until it has written `limit` records.
pub struct KeyedProducer {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    handle: JoinHandle<usize>,
}

impl KeyedProducer {
    /// Starts producing to `topic`: `rate_per_s` records a second over
    /// `keys` keys, at most `limit` records (`None`: until [`finish`]).
    ///
    /// [`finish`]: KeyedProducer::finish
    pub fn start(topic: &str, keys: usize, rate_per_s: u32, limit: Option<usize>) -> Self {
        assert!(
            keys > 0 && rate_per_s > 0,
            "keyed traffic needs keys and a rate"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let topic = topic.to_owned();
        let (thread_stop, thread_sent) = (Arc::clone(&stop), Arc::clone(&sent));
        let handle = std::thread::spawn(move || {
            produce_paced(&topic, keys, rate_per_s, limit, &thread_stop, &thread_sent)
        });
        KeyedProducer { stop, sent, handle }
    }

    /// Records handed to the producer so far (not necessarily delivered).
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// True once the producer wrote its `limit` (or was stopped) and every
    /// record is delivered.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits until the producer has written its `limit` and every record is
    /// delivered; returns how many were written. Without a limit this never
    /// returns: use [`finish`](KeyedProducer::finish).
    pub fn wait(self) -> usize {
        self.handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Stops producing, waits until every record is delivered and returns
    /// how many were written: records `0..n`.
    ///
    /// # Panics
    /// If any record could not be delivered.
    pub fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

fn produce_paced(
    topic: &str,
    keys: usize,
    rate_per_s: u32,
    limit: Option<usize>,
    stop: &AtomicBool,
    sent: &AtomicUsize,
) -> usize {
    let context = DeliveryCounter {
        failed: AtomicUsize::new(0),
        first_error: std::sync::Mutex::new(None),
    };
    let producer: BaseProducer<DeliveryCounter> = producer_config()
        // The host's partitioner, so an output keeps its input's partition.
        .set("partitioner", "murmur2_random")
        // A broker restart (the chaos suite) delays deliveries by tens of
        // seconds; the input must still arrive, once and in order.
        .set("message.timeout.ms", "300000")
        .create_with_context(context)
        .unwrap_or_else(|e| panic!("cannot create the keyed producer: {e}"));
    let started = Instant::now();
    let mut next = 0usize;
    while !stop.load(Ordering::Relaxed) && limit.is_none_or(|l| next < l) {
        let due = (started.elapsed().as_secs_f64() * f64::from(rate_per_s)) as usize;
        let due = limit.map_or(due, |l| due.min(l));
        while next < due {
            let (key, value) = (key_of(next, keys), value_of(next));
            let mut record = BaseRecord::to(topic).key(&key).payload(&value);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        producer.poll(Duration::from_millis(10));
                    }
                    Err((error, _)) => panic!("cannot enqueue keyed record {next}: {error}"),
                }
            }
            next += 1;
        }
        sent.store(next, Ordering::Relaxed);
        producer.poll(Duration::from_millis(5));
    }
    producer
        .flush(Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("flushing the keyed producer: {e}"));
    let failed = producer.context().failed.load(Ordering::Relaxed);
    assert_eq!(
        failed,
        0,
        "{failed} keyed input records were not delivered (first error: {:?}), so the output \
         cannot be accounted for",
        producer
            .context()
            .first_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
    );
    next
}

/// What an output topic shows for keyed records `0..produced`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyedAccounting {
    /// Records written to the input.
    pub produced: usize,
    /// Records read from the output.
    pub output: usize,
    /// Input records with no output record.
    pub lost: usize,
    /// Output records beyond the first for the same input record.
    pub duplicates: usize,
    /// Output records that came first for their input record but after a
    /// later record of the same key (in the same output partition): per-key
    /// order broken. A replay of records already out (a duplicate) is not an
    /// order violation.
    pub out_of_order: usize,
    /// Output records whose value is no input record's.
    pub unexpected: usize,
    /// Up to 10 lost record numbers, for the failure message.
    pub lost_examples: Vec<usize>,
    /// Up to 10 duplicated record numbers.
    pub duplicate_examples: Vec<usize>,
}

impl KeyedAccounting {
    /// `(lost, duplicates, out_of_order, unexpected)`, for one assertion.
    pub fn faults(&self) -> (usize, usize, usize, usize) {
        (
            self.lost,
            self.duplicates,
            self.out_of_order,
            self.unexpected,
        )
    }
}

/// Accounts the `output` records (as [`read_to_end`](crate::read_to_end)
/// returns them: offset order within each partition) for keyed records
/// `0..produced`.
pub fn account_keyed(produced: usize, output: &[Record]) -> KeyedAccounting {
    let mut copies = vec![0u32; produced];
    let mut acc = KeyedAccounting {
        produced,
        output: output.len(),
        ..KeyedAccounting::default()
    };
    // Per (output partition, key): the largest record number seen first.
    let mut newest: std::collections::HashMap<(i32, &[u8]), usize> =
        std::collections::HashMap::new();
    for record in output {
        let Some(i) = record
            .value
            .as_deref()
            .and_then(index_of)
            .filter(|&i| i < produced)
        else {
            acc.unexpected += 1;
            continue;
        };
        copies[i] += 1;
        if copies[i] > 1 {
            continue;
        }
        let key = (record.partition, record.key.as_deref().unwrap_or_default());
        match newest.get_mut(&key) {
            Some(latest) if *latest > i => acc.out_of_order += 1,
            Some(latest) => *latest = i,
            None => {
                newest.insert(key, i);
            }
        }
    }
    for (i, &n) in copies.iter().enumerate() {
        match n {
            0 => {
                acc.lost += 1;
                if acc.lost_examples.len() < 10 {
                    acc.lost_examples.push(i);
                }
            }
            1 => {}
            n => {
                acc.duplicates += n as usize - 1;
                if acc.duplicate_examples.len() < 10 {
                    acc.duplicate_examples.push(i);
                }
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(partition: i32, offset: i64, i: usize) -> Record {
        Record {
            partition,
            offset,
            key: Some(key_of(i, 2).into_bytes()),
            value: Some(value_of(i).into_bytes()),
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    #[test]
    fn a_clean_output_has_no_faults() {
        // Keys k0 (even) in partition 0, k1 (odd) in partition 1.
        let output: Vec<Record> = (0..6)
            .map(|i| out((i % 2) as i32, (i / 2) as i64, i))
            .collect();
        let acc = account_keyed(6, &output);
        assert_eq!(acc.faults(), (0, 0, 0, 0), "{acc:?}");
        assert_eq!(acc.output, 6);
    }

    #[test]
    fn lost_duplicated_and_foreign_records_are_counted() {
        let mut output = vec![out(0, 0, 0), out(0, 1, 2), out(0, 2, 2), out(0, 3, 2)];
        output.push(Record {
            value: Some(b"not-a-number".to_vec()),
            ..out(0, 4, 0)
        });
        output.push(out(1, 0, 99));
        let acc = account_keyed(4, &output);
        assert_eq!(acc.lost, 2, "1 and 3: {acc:?}");
        assert_eq!(acc.lost_examples, vec![1, 3]);
        assert_eq!(acc.duplicates, 2);
        assert_eq!(acc.duplicate_examples, vec![2]);
        assert_eq!(acc.unexpected, 2, "a foreign value and one past `produced`");
    }

    #[test]
    fn a_replay_is_a_duplicate_but_a_swap_is_out_of_order() {
        // k0: 0, 2, 4, then 2 and 4 again (a replay after a crash), then 6.
        let replay = [0, 2, 4, 2, 4, 6];
        let output: Vec<Record> = replay
            .iter()
            .enumerate()
            .map(|(o, &i)| out(0, o as i64, i))
            .collect();
        let acc = account_keyed(7, &output);
        assert_eq!((acc.duplicates, acc.out_of_order), (2, 0), "{acc:?}");

        // k0: 0, 4, 2: record 2 first shows after the later record 4.
        let swapped: Vec<Record> = [0, 4, 2]
            .iter()
            .enumerate()
            .map(|(o, &i)| out(0, o as i64, i))
            .collect();
        let acc = account_keyed(5, &swapped);
        assert_eq!((acc.duplicates, acc.out_of_order), (0, 1), "{acc:?}");
    }
}
