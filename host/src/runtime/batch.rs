//! The host's side of the batch layout (see the WIT): an [`InputBatch`] is
//! built straight from Kafka messages into one byte buffer, and a
//! [`BatchOutput`] is the guest's answer, checked once against the contract
//! and then read through borrowed views, so nothing is copied per field.

use std::ops::Range;

use super::Limits;
use super::bindings::{BatchResult, ErrorKind, kwasm};

/// Messages of one topic-partition, in offset order, in the WIT layout.
/// It is also the host's copy of the input: retries and dead letters read
/// the original messages from it.
#[derive(Debug, Clone, Default)]
pub struct InputBatch {
    topic: String,
    partition: i32,
    offsets: Vec<i64>,
    timestamps: Vec<i64>,
    key_lengths: Vec<i32>,
    value_lengths: Vec<i32>,
    header_counts: Vec<u32>,
    header_lengths: Vec<i32>,
    data: Vec<u8>,
    /// Host-side index, not sent: where each message's bytes and header
    /// lengths begin.
    positions: Vec<Position>,
}

/// Where one message (or output record) starts in `data` and in
/// `header-lengths`, and where its key starts (after its headers).
#[derive(Debug, Clone, Copy, Default)]
struct Position {
    data: u32,
    key: u32,
    header_lengths: u32,
}

/// A view of one message of an [`InputBatch`].
#[derive(Debug, Clone, Copy)]
pub struct InputMessage<'a> {
    batch: &'a InputBatch,
    index: usize,
}

impl InputBatch {
    /// An empty batch for `topic`/`partition`.
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        InputBatch {
            topic: topic.into(),
            partition,
            ..Default::default()
        }
    }

    /// Appends a message. Offsets must increase; the caller (one owner per
    /// partition) guarantees it.
    pub fn push<'h>(
        &mut self,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
    ) {
        let data_start = self.data.len() as u32;
        let header_lengths_start = self.header_lengths.len() as u32;
        let mut count = 0;
        for (name, value) in headers {
            self.header_lengths
                .push(push_bytes(&mut self.data, Some(name.as_bytes())));
            self.header_lengths.push(push_bytes(&mut self.data, value));
            count += 1;
        }
        self.positions.push(Position {
            data: data_start,
            key: self.data.len() as u32,
            header_lengths: header_lengths_start,
        });
        self.header_counts.push(count);
        self.key_lengths.push(push_bytes(&mut self.data, key));
        self.value_lengths.push(push_bytes(&mut self.data, value));
        self.offsets.push(offset);
        self.timestamps.push(timestamp_ms.unwrap_or(-1));
    }

    /// Appends a copy of `msg` (from another batch).
    pub fn push_message(&mut self, msg: InputMessage<'_>) {
        self.push(
            msg.offset(),
            msg.timestamp_ms(),
            msg.key(),
            msg.value(),
            msg.headers(),
        );
    }

    /// A new batch holding copies of the messages in `range`.
    pub fn slice(&self, range: Range<usize>) -> InputBatch {
        let mut out = InputBatch::new(self.topic.clone(), self.partition);
        for i in range {
            out.push_message(self.message(i));
        }
        out
    }

    /// Empties the batch, keeping its allocations for the next one.
    pub fn clear(&mut self) {
        self.offsets.clear();
        self.timestamps.clear();
        self.key_lengths.clear();
        self.value_lengths.clear();
        self.header_counts.clear();
        self.header_lengths.clear();
        self.data.clear();
        self.positions.clear();
    }

    /// The input topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The input partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Whether the batch has no messages.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Bytes of keys, values and headers held.
    pub fn data_bytes(&self) -> usize {
        self.data.len()
    }

    /// First and last offset, if any.
    pub fn offsets(&self) -> Option<(i64, i64)> {
        Some((*self.offsets.first()?, *self.offsets.last()?))
    }

    /// The `i`-th message. Panics when out of range, like slice indexing.
    pub fn message(&self, i: usize) -> InputMessage<'_> {
        assert!(i < self.len(), "message {i} of a batch of {}", self.len());
        InputMessage {
            batch: self,
            index: i,
        }
    }

    /// Every message in order.
    pub fn messages(&self) -> impl ExactSizeIterator<Item = InputMessage<'_>> {
        (0..self.len()).map(|index| InputMessage { batch: self, index })
    }

    /// The borrowed WIT view handed to the guest.
    pub(crate) fn as_wit(&self) -> kwasm::plugin::types::Batch<'_> {
        kwasm::plugin::types::Batch {
            topic: &self.topic,
            partition: self.partition,
            offsets: &self.offsets,
            timestamps: &self.timestamps,
            key_lengths: &self.key_lengths,
            value_lengths: &self.value_lengths,
            header_counts: &self.header_counts,
            header_lengths: &self.header_lengths,
            data: &self.data,
        }
    }
}

impl<'a> InputMessage<'a> {
    /// The topic it was read from.
    pub fn topic(&self) -> &'a str {
        &self.batch.topic
    }

    /// The partition it was read from.
    pub fn partition(&self) -> i32 {
        self.batch.partition
    }

    /// The message's offset.
    pub fn offset(&self) -> i64 {
        self.batch.offsets[self.index]
    }

    /// Its timestamp, when the broker gave one.
    pub fn timestamp_ms(&self) -> Option<i64> {
        let t = self.batch.timestamps[self.index];
        (t >= 0).then_some(t)
    }

    /// Its key.
    pub fn key(&self) -> Option<&'a [u8]> {
        let b = self.batch;
        field(
            &b.data,
            b.positions[self.index].key as usize,
            b.key_lengths[self.index],
        )
    }

    /// Its value.
    pub fn value(&self) -> Option<&'a [u8]> {
        let b = self.batch;
        let start = b.positions[self.index].key as usize + len_or_zero(b.key_lengths[self.index]);
        field(&b.data, start, b.value_lengths[self.index])
    }

    /// Its headers in order.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + use<'a> {
        let b = self.batch;
        let p = b.positions[self.index];
        let n = b.header_counts[self.index] as usize;
        let lengths = &b.header_lengths[p.header_lengths as usize..][..2 * n];
        HeaderIter {
            data: &b.data,
            pos: p.data as usize,
            lengths,
        }
    }
}

/// Walks (name, value) pairs laid out as the WIT describes.
struct HeaderIter<'a> {
    data: &'a [u8],
    pos: usize,
    lengths: &'a [i32],
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let (&[name_len, value_len], rest) = self.lengths.split_first_chunk::<2>()?;
        self.lengths = rest;
        let name = field(self.data, self.pos, name_len).unwrap_or_default();
        self.pos += len_or_zero(name_len);
        let value = field(self.data, self.pos, value_len);
        self.pos += len_or_zero(value_len);
        // Names were checked to be UTF-8 (input: Kafka gives `&str`; output:
        // `BatchOutput::check`), so the fallback never shows in practice.
        Some((std::str::from_utf8(name).unwrap_or(""), value))
    }
}

/// The guest's answer to a batch, checked against the contract: one count
/// per input message, columns of equal length, lengths that add up to the
/// data buffer exactly, valid topic names, sizes within the plugin's limits.
#[derive(Debug)]
pub struct BatchOutput {
    result: BatchResult,
    /// Index of each message's first output record (prefix sums of counts).
    first_record: Vec<u32>,
    /// Where each output record's bytes and header lengths start.
    positions: Vec<Position>,
}

impl BatchResult {
    /// A result with no outcomes yet, filled by a host-side guest (a
    /// Redpanda transform's records) or a test.
    pub(crate) fn empty() -> BatchResult {
        BatchResult {
            record_counts: vec![],
            errors: vec![],
            record_topics: vec![],
            timestamps: vec![],
            key_lengths: vec![],
            value_lengths: vec![],
            header_counts: vec![],
            header_lengths: vec![],
            topics: vec![],
            data: vec![],
        }
    }

    /// The `record_topics` entry for a record to `topic` (`None`: the
    /// pipeline's output, -1), adding the name to `topics` once.
    pub(crate) fn topic_index(&mut self, topic: Option<&str>) -> i32 {
        match topic {
            None => -1,
            Some(t) => match self.topics.iter().position(|x| x == t) {
                Some(i) => i as i32,
                None => {
                    self.topics.push(t.to_owned());
                    self.topics.len() as i32 - 1
                }
            },
        }
    }
}

/// What became of one input message.
#[derive(Debug, Clone, Copy)]
pub enum OutcomeView<'a> {
    /// Handled; these records are to be produced (possibly none).
    Ok(OutputRecords<'a>),
    /// A transient failure, to retry.
    Retryable(&'a str),
    /// A failure to dead-letter.
    Permanent(&'a str),
}

/// The records produced for one input message.
#[derive(Debug, Clone, Copy)]
pub struct OutputRecords<'a> {
    output: &'a BatchOutput,
    range: (usize, usize),
}

/// One output record.
#[derive(Debug, Clone, Copy)]
pub struct OutputView<'a> {
    output: &'a BatchOutput,
    index: usize,
}

impl BatchOutput {
    /// Checks `result` against the contract for a batch of `inputs` messages.
    pub(crate) fn check(
        result: BatchResult,
        inputs: usize,
        limits: &Limits,
    ) -> Result<Self, CheckError> {
        let r = &result;
        if r.record_counts.len() != inputs {
            return bad(format!(
                "{} record counts for {inputs} messages",
                r.record_counts.len()
            ));
        }
        if r.data.len() > limits.max_output_bytes {
            return Err(CheckError::TooLarge {
                bytes: r.data.len(),
                limit_bytes: limits.max_output_bytes,
                what: "per batch",
            });
        }
        let records: u64 = r.record_counts.iter().map(|&c| u64::from(c)).sum();
        if records > limits.max_output_records as u64 {
            return Err(CheckError::TooManyRecords {
                records,
                limit: limits.max_output_records,
            });
        }
        let mut first_record = Vec::with_capacity(inputs);
        let mut next = 0u32;
        for &c in &r.record_counts {
            first_record.push(next);
            // Saturating only matters past 4 billion records, which the
            // column-length check below then refuses.
            next = next.saturating_add(c);
        }
        let records = records as usize;
        let columns = [
            r.record_topics.len(),
            r.timestamps.len(),
            r.key_lengths.len(),
            r.value_lengths.len(),
            r.header_counts.len(),
        ];
        if columns.iter().any(|&len| len != records) {
            return bad(format!(
                "record columns of lengths {columns:?} for {records} records"
            ));
        }
        check_errors(r)?;
        for t in &r.topics {
            check_topic_name(t)?;
        }
        let positions = check_records(r, limits)?;
        Ok(BatchOutput {
            result,
            first_record,
            positions,
        })
    }

    /// Number of outcomes (= input messages).
    pub fn len(&self) -> usize {
        self.result.record_counts.len()
    }

    /// Whether the batch was empty.
    pub fn is_empty(&self) -> bool {
        self.result.record_counts.is_empty()
    }

    /// The outcome of input message `i`.
    pub fn outcome(&self, i: usize) -> OutcomeView<'_> {
        let errors = &self.result.errors;
        if let Ok(e) = errors.binary_search_by_key(&(i as u32), |e| e.index) {
            let e = &errors[e];
            return match e.kind {
                ErrorKind::Retryable => OutcomeView::Retryable(&e.message),
                ErrorKind::Permanent => OutcomeView::Permanent(&e.message),
            };
        }
        let start = self.first_record[i] as usize;
        OutcomeView::Ok(OutputRecords {
            output: self,
            range: (start, start + self.result.record_counts[i] as usize),
        })
    }

    /// Every outcome in input order.
    pub fn outcomes(&self) -> impl ExactSizeIterator<Item = OutcomeView<'_>> {
        (0..self.len()).map(|i| self.outcome(i))
    }

    /// Total output records.
    pub fn record_count(&self) -> usize {
        self.positions.len()
    }
}

impl<'a> OutputRecords<'a> {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.range.1 - self.range.0
    }

    /// Whether the message was dropped.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The records in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = OutputView<'a>> + use<'a> {
        let output = self.output;
        (self.range.0..self.range.1).map(move |index| OutputView { output, index })
    }
}

impl<'a> OutputView<'a> {
    /// The topic override; `None` means the pipeline's output topic.
    pub fn topic(&self) -> Option<&'a str> {
        let r = &self.output.result;
        usize::try_from(r.record_topics[self.index])
            .ok()
            .map(|t| r.topics[t].as_str())
    }

    /// The key.
    pub fn key(&self) -> Option<&'a [u8]> {
        let r = &self.output.result;
        field(
            &r.data,
            self.output.positions[self.index].key as usize,
            r.key_lengths[self.index],
        )
    }

    /// The value.
    pub fn value(&self) -> Option<&'a [u8]> {
        let r = &self.output.result;
        let start =
            self.output.positions[self.index].key as usize + len_or_zero(r.key_lengths[self.index]);
        field(&r.data, start, r.value_lengths[self.index])
    }

    /// The timestamp, if the plugin set one.
    pub fn timestamp_ms(&self) -> Option<i64> {
        let t = self.output.result.timestamps[self.index];
        (t >= 0).then_some(t)
    }

    /// Headers in order.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + use<'a> {
        let r = &self.output.result;
        let p = self.output.positions[self.index];
        let n = r.header_counts[self.index] as usize;
        let lengths = &r.header_lengths[p.header_lengths as usize..][..2 * n];
        HeaderIter {
            data: &r.data,
            pos: p.data as usize,
            lengths,
        }
    }
}

/// Why a guest's answer was refused; the handler adds the plugin context.
#[derive(Debug)]
pub(crate) enum CheckError {
    Bad(String),
    TooLarge {
        bytes: usize,
        limit_bytes: usize,
        what: &'static str,
    },
    TooManyRecords {
        records: u64,
        limit: usize,
    },
}

/// One message's answer, for tests that consume a [`BatchOutput`] (the
/// partition worker's) without running a guest.
#[cfg(test)]
#[derive(Debug, Clone)]
pub(crate) enum TestAnswer {
    /// These records: a topic (`None`: the pipeline's output) and a value.
    Records(Vec<(Option<String>, Vec<u8>)>),
    /// A `retryable` error.
    Retryable(String),
    /// A `permanent` error.
    Permanent(String),
}

#[cfg(test)]
impl BatchResult {
    /// Appends one record with only a value (no key, headers or timestamp).
    pub(crate) fn push_value_record(&mut self, topic_index: i32, value: &[u8]) {
        self.record_topics.push(topic_index);
        self.timestamps.push(-1);
        self.key_lengths.push(-1);
        self.value_lengths.push(value.len() as i32);
        self.header_counts.push(0);
        self.data.extend_from_slice(value);
    }
}

#[cfg(test)]
impl BatchOutput {
    /// The checked output of a guest that gave these answers, in order.
    pub(crate) fn from_answers(answers: &[TestAnswer]) -> BatchOutput {
        use super::bindings::MessageError;
        let mut r = BatchResult::empty();
        for (index, answer) in answers.iter().enumerate() {
            let error = |kind, message: &String| MessageError {
                index: index as u32,
                kind,
                message: message.clone(),
            };
            match answer {
                TestAnswer::Records(records) => {
                    r.record_counts.push(records.len() as u32);
                    for (topic, value) in records {
                        let topic = r.topic_index(topic.as_deref());
                        r.push_value_record(topic, value);
                    }
                }
                TestAnswer::Retryable(m) => {
                    r.record_counts.push(0);
                    r.errors.push(error(ErrorKind::Retryable, m));
                }
                TestAnswer::Permanent(m) => {
                    r.record_counts.push(0);
                    r.errors.push(error(ErrorKind::Permanent, m));
                }
            }
        }
        BatchOutput::check(r, answers.len(), &Limits::default()).expect("a valid test output")
    }
}

fn bad<T>(message: String) -> Result<T, CheckError> {
    Err(CheckError::Bad(message))
}

/// Errors name messages in increasing order, each with no records.
fn check_errors(r: &BatchResult) -> Result<(), CheckError> {
    let mut previous: Option<u32> = None;
    for e in &r.errors {
        let i = e.index as usize;
        if i >= r.record_counts.len() || previous.is_some_and(|p| p >= e.index) {
            return bad(format!(
                "error entry for message {i} is out of range or out of order"
            ));
        }
        if r.record_counts[i] != 0 {
            return bad(format!("message {i} has both an error and output records"));
        }
        previous = Some(e.index);
    }
    Ok(())
}

/// Walks every record's headers, key and value through `data`, checking
/// each length, and returns where each record starts.
fn check_records(r: &BatchResult, limits: &Limits) -> Result<Vec<Position>, CheckError> {
    let header_total: u64 = r.header_counts.iter().map(|&c| c as u64).sum();
    if r.header_lengths.len() as u64 != 2 * header_total {
        return bad(format!(
            "{} header lengths for {header_total} headers",
            r.header_lengths.len()
        ));
    }
    let mut positions = Vec::with_capacity(r.key_lengths.len());
    let mut pos = 0usize;
    let mut hl = 0usize;
    let take = |len: i32, pos: &mut usize, what: &str| -> Result<usize, CheckError> {
        let n = len_or_zero(len);
        if *pos + n > r.data.len() {
            return bad(format!(
                "{what} of {n} bytes runs past the end of the output data"
            ));
        }
        *pos += n;
        Ok(n)
    };
    for j in 0..r.key_lengths.len() {
        let start = Position {
            data: pos as u32,
            key: 0,
            header_lengths: hl as u32,
        };
        for _ in 0..r.header_counts[j] {
            let (name_len, value_len) = (r.header_lengths[hl], r.header_lengths[hl + 1]);
            hl += 2;
            if name_len < 0 {
                return bad("a header name is null".into());
            }
            let name_start = pos;
            take(name_len, &mut pos, "a header name")?;
            if std::str::from_utf8(&r.data[name_start..pos]).is_err() {
                return bad("a header name is not UTF-8".into());
            }
            take(value_len, &mut pos, "a header value")?;
        }
        let key = pos;
        let size = take(r.key_lengths[j], &mut pos, "a key")?
            + take(r.value_lengths[j], &mut pos, "a value")?;
        if size > limits.max_record_bytes {
            return Err(CheckError::TooLarge {
                bytes: size,
                limit_bytes: limits.max_record_bytes,
                what: "per record",
            });
        }
        let topic = r.record_topics[j];
        if topic < -1 || topic >= r.topics.len() as i32 {
            return bad(format!("output topic index {topic} out of range"));
        }
        positions.push(Position {
            key: key as u32,
            ..start
        });
    }
    if pos != r.data.len() {
        return bad(format!(
            "lengths cover {pos} bytes of {} bytes of output data",
            r.data.len()
        ));
    }
    Ok(positions)
}

/// Kafka's topic-name rule ([`crate::topics::is_topic_name`]); whether the
/// pipeline may write the topic is the worker's question, per record.
fn check_topic_name(t: &str) -> Result<(), CheckError> {
    if !crate::topics::is_topic_name(t) {
        return bad(format!(
            "output topic {t:?} is not a valid Kafka topic name"
        ));
    }
    Ok(())
}

/// Appends `b` to `data`; returns the length to record (-1 for null).
fn push_bytes(data: &mut Vec<u8>, b: Option<&[u8]>) -> i32 {
    match b {
        Some(b) => {
            data.extend_from_slice(b);
            b.len() as i32
        }
        None => -1,
    }
}

fn len_or_zero(len: i32) -> usize {
    usize::try_from(len).unwrap_or(0)
}

/// The field of length `len` at `start`; a negative length is a null.
fn field(data: &[u8], start: usize, len: i32) -> Option<&[u8]> {
    let len = usize::try_from(len).ok()?;
    Some(&data[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::bindings::MessageError;

    fn sample() -> InputBatch {
        let mut b = InputBatch::new("orders", 3);
        b.push(
            10,
            Some(1_700),
            Some(b"k1"),
            Some(b"v1"),
            [("h", Some(&b"x"[..])), ("h", None)],
        );
        b.push(11, None, None, None, []);
        b
    }

    #[test]
    fn input_batch_round_trips_every_field() {
        let b = sample();
        assert_eq!(b.offsets(), Some((10, 11)));
        let m = b.message(0);
        assert_eq!(
            (m.offset(), m.timestamp_ms(), m.key(), m.value()),
            (10, Some(1_700), Some(&b"k1"[..]), Some(&b"v1"[..]))
        );
        assert_eq!(
            m.headers().collect::<Vec<_>>(),
            vec![("h", Some(&b"x"[..])), ("h", None)]
        );
        let m = b.message(1);
        assert_eq!(
            (m.timestamp_ms(), m.key(), m.value(), m.headers().count()),
            (None, None, None, 0)
        );
    }

    #[test]
    fn slice_copies_messages() {
        let s = sample().slice(1..2);
        assert_eq!(s.len(), 1);
        assert_eq!(s.offsets(), Some((11, 11)));
        assert_eq!((s.topic(), s.partition()), ("orders", 3));
    }

    fn result(counts: Vec<u32>, records: Vec<(i32, &[u8])>) -> BatchResult {
        let mut r = BatchResult {
            record_counts: counts,
            topics: vec!["t".into()],
            ..BatchResult::empty()
        };
        for (topic, value) in records {
            r.push_value_record(topic, value);
        }
        r
    }

    #[test]
    fn check_accepts_a_valid_result_and_reads_it() {
        let mut r = result(vec![1, 0], vec![(0, b"abc")]);
        r.errors.push(MessageError {
            index: 1,
            kind: ErrorKind::Permanent,
            message: "bad".into(),
        });
        let out = BatchOutput::check(r, 2, &Limits::default()).expect("valid");
        let OutcomeView::Ok(recs) = out.outcome(0) else {
            panic!("expected ok")
        };
        let rec = recs.iter().next().expect("one record");
        assert_eq!(
            (rec.topic(), rec.key(), rec.value(), rec.timestamp_ms()),
            (Some("t"), None, Some(&b"abc"[..]), None)
        );
        assert!(matches!(out.outcome(1), OutcomeView::Permanent("bad")));
    }

    #[test]
    fn check_rejects_contract_violations() {
        let limits = Limits::default();
        let check = |r, n| match BatchOutput::check(r, n, &limits) {
            Err(CheckError::Bad(m)) => m,
            other => panic!("expected a contract error, got {other:?}"),
        };
        assert!(check(result(vec![], vec![]), 1).contains("0 record counts for 1"));
        let mut past_end = result(vec![1], vec![(-1, b"abc")]);
        past_end.value_lengths[0] = 9;
        assert!(check(past_end, 1).contains("past the end"));
        let mut slack = result(vec![1], vec![(-1, b"abc")]);
        slack.data.push(0);
        assert!(check(slack, 1).contains("cover 3 bytes of 4"));
        assert!(check(result(vec![1], vec![(7, b"a")]), 1).contains("index 7"));
        let mut illegal = result(vec![0], vec![]);
        illegal.topics = vec!["no spaces".into()];
        assert!(check(illegal, 1).contains("not a valid Kafka topic"));
        let mut both = result(vec![1], vec![(-1, b"a")]);
        both.errors.push(MessageError {
            index: 0,
            kind: ErrorKind::Retryable,
            message: "x".into(),
        });
        assert!(check(both, 1).contains("both an error and output"));
    }

    #[test]
    fn check_enforces_record_and_batch_size() {
        let limits = Limits {
            max_record_bytes: 2,
            ..Limits::default()
        };
        assert!(matches!(
            BatchOutput::check(result(vec![1], vec![(-1, b"abc")]), 1, &limits),
            Err(CheckError::TooLarge {
                bytes: 3,
                limit_bytes: 2,
                what: "per record"
            })
        ));
        let limits = Limits {
            max_output_bytes: 2,
            ..Limits::default()
        };
        assert!(matches!(
            BatchOutput::check(result(vec![1], vec![(-1, b"abc")]), 1, &limits),
            Err(CheckError::TooLarge {
                what: "per batch",
                ..
            })
        ));
    }

    #[test]
    fn check_counts_records_without_bytes_against_the_record_cap() {
        let limits = Limits {
            max_output_records: 3,
            ..Limits::default()
        };
        let nulls = |n: usize| result(vec![n as u32], vec![(-1, b""); n]);
        assert!(BatchOutput::check(nulls(3), 1, &limits).is_ok());
        assert!(matches!(
            BatchOutput::check(nulls(4), 1, &limits),
            Err(CheckError::TooManyRecords {
                records: 4,
                limit: 3
            })
        ));
        // Counts are summed in 64 bits: u32::MAX twice does not wrap.
        let huge = result(vec![u32::MAX, u32::MAX], vec![]);
        assert!(matches!(
            BatchOutput::check(huge, 2, &limits),
            Err(CheckError::TooManyRecords {
                records: 8_589_934_590,
                ..
            })
        ));
    }
}
