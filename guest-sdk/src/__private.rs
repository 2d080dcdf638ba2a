//! Glue between the WIT batch layout and the one-message-at-a-time API.
//! Called only from code the `#[handler]` macro generates.

use std::rc::Rc;

use bytes::Bytes;

use std::ops::Range;

use crate::bindings::kwasm::plugin::types::{Batch, BatchResult, ErrorKind, MessageError};
use crate::message::{Headers, RawHeader};
use crate::{Config, Error, IntoOutputs, Message, Output};

pub use wit_bindgen;

/// Runs the user's init function on the host's configuration and stores its
/// result in `slot` for every later call.
pub fn run_init<S>(
    config: Vec<(String, String)>,
    slot: &std::cell::OnceCell<S>,
    init: impl FnOnce(&Config) -> Result<S, String>,
) -> Result<(), String> {
    let config: Config = config.into_iter().collect();
    let state = init(&config)?;
    // A second init on the same instance is a host bug; keep the first state.
    let _ = slot.set(state);
    Ok(())
}

/// The state of a handler that has no init function, or the error to give
/// when the host calls `handle-batch` before `init` succeeded.
pub fn state<S>(slot: &std::cell::OnceCell<S>) -> &S {
    match slot.get() {
        Some(s) => s,
        // The host always calls init first; if it did not, trapping is the
        // only honest answer (every message of the batch would be wrong).
        None => panic!("kwasm: handle-batch called before a successful init"),
    }
}

/// Decodes a batch, calls `handle` on each message in order, and encodes
/// the outcomes.
pub fn run_batch<T: IntoOutputs>(
    batch: Batch,
    mut handle: impl FnMut(&Message) -> Result<T, Error>,
) -> BatchResult {
    let messages = decode(batch);
    let mut out = ResultEncoder::with_capacity(messages.len(), messages.data_len);
    for (index, msg) in messages.into_messages().enumerate() {
        crate::log::set_current_offset(Some(msg.offset));
        match handle(&msg) {
            Ok(outputs) => out.encode(outputs),
            Err(e) => out.fail(index, e),
        }
    }
    crate::log::set_current_offset(None);
    out.result
}

/// A batch split back into messages that share its buffers.
struct Decoded {
    topic: Rc<str>,
    partition: i32,
    offsets: Vec<i64>,
    timestamps: Vec<i64>,
    /// Key, value and header range of each message.
    parts: Vec<(Option<Bytes>, Option<Bytes>, Range<usize>)>,
    headers: Rc<[RawHeader]>,
    data_len: usize,
}

impl Decoded {
    fn len(&self) -> usize {
        self.parts.len()
    }

    /// The messages, each taking its own key and value slices (moved, not
    /// cloned: reference-count traffic showed in the guest's profile).
    fn into_messages(self) -> impl Iterator<Item = Message> {
        let Decoded {
            topic,
            partition,
            offsets,
            timestamps,
            parts,
            headers,
            ..
        } = self;
        parts
            .into_iter()
            .enumerate()
            .map(move |(i, (key, value, range))| Message {
                topic: topic.clone(),
                partition,
                offset: offsets[i],
                timestamp_ms: (timestamps[i] >= 0).then_some(timestamps[i]),
                key,
                value,
                headers: Headers {
                    table: headers.clone(),
                    range,
                },
            })
    }
}

/// Walks the columns once. The host produced them, so lengths are
/// consistent; were they not, slicing panics and the batch fails loudly.
fn decode(batch: Batch) -> Decoded {
    let data = Bytes::from(batch.data);
    let mut reader = Reader {
        data: &data,
        pos: 0,
    };
    let mut header_lengths = batch.header_lengths.chunks_exact(2);
    let mut headers = Vec::new();
    let parts = (0..batch.offsets.len())
        .map(|i| {
            let first = headers.len();
            for _ in 0..batch.header_counts[i] {
                let [name, value] = header_lengths.next().map_or([0, -1], |p| [p[0], p[1]]);
                headers.push(RawHeader {
                    name: reader.take(name).unwrap_or_default(),
                    value: reader.take(value),
                });
            }
            let key = reader.take(batch.key_lengths[i]);
            let value = reader.take(batch.value_lengths[i]);
            (key, value, first..headers.len())
        })
        .collect();
    Decoded {
        topic: Rc::from(batch.topic),
        partition: batch.partition,
        offsets: batch.offsets,
        timestamps: batch.timestamps,
        parts,
        headers: Rc::from(headers),
        data_len: data.len(),
    }
}

struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    /// The next `len` bytes; a negative length is a null.
    fn take(&mut self, len: i32) -> Option<Bytes> {
        let len = usize::try_from(len).ok()?;
        let bytes = self.data.slice(self.pos..self.pos + len);
        self.pos += len;
        Some(bytes)
    }
}

/// Accumulates the batch result column by column.
struct ResultEncoder {
    result: BatchResult,
}

impl ResultEncoder {
    fn with_capacity(messages: usize, data_bytes: usize) -> Self {
        ResultEncoder {
            result: BatchResult {
                record_counts: Vec::with_capacity(messages),
                errors: Vec::new(),
                record_topics: Vec::with_capacity(messages),
                timestamps: Vec::with_capacity(messages),
                key_lengths: Vec::with_capacity(messages),
                value_lengths: Vec::with_capacity(messages),
                header_counts: Vec::with_capacity(messages),
                header_lengths: Vec::new(),
                topics: Vec::new(),
                data: Vec::with_capacity(data_bytes),
            },
        }
    }

    /// Encodes one message's outputs.
    fn encode(&mut self, outputs: impl IntoOutputs) {
        let mut count = 0u32;
        outputs.into_outputs(&mut |o| {
            self.encode_record(o);
            count += 1;
        });
        self.result.record_counts.push(count);
    }

    /// Records that message `index` failed.
    fn fail(&mut self, index: usize, error: Error) {
        let (kind, message) = match error {
            Error::Retryable(m) => (ErrorKind::Retryable, m),
            Error::Permanent(m) => (ErrorKind::Permanent, m),
        };
        self.result.record_counts.push(0);
        self.result.errors.push(MessageError {
            index: index as u32,
            kind,
            message,
        });
    }

    fn encode_record(&mut self, o: Output) {
        let r = &mut self.result;
        r.header_counts.push(o.headers.len() as u32);
        for (name, value) in &o.headers {
            r.header_lengths
                .push(push(&mut r.data, Some(name.as_bytes())));
            r.header_lengths.push(push(&mut r.data, value.as_deref()));
        }
        r.key_lengths.push(push(&mut r.data, o.key.as_deref()));
        r.value_lengths.push(push(&mut r.data, o.value.as_deref()));
        r.timestamps.push(o.timestamp_ms.unwrap_or(-1));
        let topic = o.topic.map_or(-1, |t| self.topic_index(t));
        self.result.record_topics.push(topic);
    }

    /// Output topics are few per batch; a linear scan beats hashing here.
    fn topic_index(&mut self, topic: String) -> i32 {
        let topics = &mut self.result.topics;
        match topics.iter().position(|t| *t == topic) {
            Some(i) => i as i32,
            None => {
                topics.push(topic);
                (topics.len() - 1) as i32
            }
        }
    }
}

/// Appends `bytes` to `data`; returns the length to record (-1 for null).
fn push(data: &mut Vec<u8>, bytes: Option<&[u8]>) -> i32 {
    match bytes {
        Some(b) => {
            data.extend_from_slice(b);
            b.len() as i32
        }
        None => -1,
    }
}
