//! Glue between the WIT batch layout and the one-message-at-a-time API.
//! Called only from code the `#[handler]` macro generates.

use std::rc::Rc;

use bytes::Bytes;

use crate::bindings::kwasm::plugin::types::{
    Batch, BatchResult, Header, Message as WitMessage, Outcome, OutputRecord, Span,
};
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
    let Batch {
        topic,
        partition,
        messages,
        headers,
        data,
    } = batch;
    let data = Bytes::from(data);
    let topic: Rc<str> = Rc::from(topic);
    let header_table: Rc<[RawHeader]> = headers
        .iter()
        .map(|h| RawHeader {
            name: slice(&data, h.name),
            value: h.value.map(|v| slice(&data, v)),
        })
        .collect();

    let mut out = ResultEncoder::with_capacity(messages.len(), data.len());
    for m in &messages {
        let msg = decode_message(m, &topic, partition, &data, &header_table);
        crate::log::set_current_offset(Some(msg.offset));
        let outcome = match handle(&msg) {
            Ok(outputs) => Outcome::Ok(out.encode(outputs)),
            Err(Error::Retryable(reason)) => Outcome::Retryable(reason),
            Err(Error::Permanent(reason)) => Outcome::Permanent(reason),
        };
        out.result.outcomes.push(outcome);
    }
    crate::log::set_current_offset(None);
    out.result
}

fn decode_message(
    m: &WitMessage,
    topic: &Rc<str>,
    partition: i32,
    data: &Bytes,
    header_table: &Rc<[RawHeader]>,
) -> Message {
    let start = m.headers.start as usize;
    Message {
        topic: topic.clone(),
        partition,
        offset: m.offset,
        timestamp_ms: (m.timestamp_ms >= 0).then_some(m.timestamp_ms),
        key: m.key.map(|s| slice(data, s)),
        value: m.value.map(|s| slice(data, s)),
        headers: Headers {
            table: header_table.clone(),
            range: start..start + m.headers.len as usize,
        },
    }
}

/// A span the host produced is always inside the buffer; a bad one would be
/// a host bug, and panicking (a trap) fails the batch loudly.
fn slice(data: &Bytes, span: Span) -> Bytes {
    let start = span.start as usize;
    data.slice(start..start + span.len as usize)
}

/// Accumulates the batch result: records, headers and bytes in shared lists.
struct ResultEncoder {
    result: BatchResult,
}

impl ResultEncoder {
    fn with_capacity(messages: usize, data_bytes: usize) -> Self {
        ResultEncoder {
            result: BatchResult {
                outcomes: Vec::with_capacity(messages),
                records: Vec::with_capacity(messages),
                headers: Vec::new(),
                topics: Vec::new(),
                data: Vec::with_capacity(data_bytes),
            },
        }
    }

    /// Encodes one message's outputs; returns their range of `records`.
    fn encode(&mut self, outputs: impl IntoOutputs) -> Span {
        let first = self.result.records.len();
        outputs.into_outputs(&mut |o| {
            let record = self.encode_record(o);
            self.result.records.push(record);
        });
        Span {
            start: first as u32,
            len: (self.result.records.len() - first) as u32,
        }
    }

    fn encode_record(&mut self, o: Output) -> OutputRecord {
        let headers_start = self.result.headers.len();
        for (name, value) in &o.headers {
            let name = self.push_bytes(name.as_bytes());
            let value = value.as_deref().map(|v| self.push_bytes(v));
            self.result.headers.push(Header { name, value });
        }
        OutputRecord {
            topic: o.topic.map(|t| self.topic_index(t)),
            key: o.key.as_deref().map(|k| self.push_bytes(k)),
            value: o.value.as_deref().map(|v| self.push_bytes(v)),
            headers: Span {
                start: headers_start as u32,
                len: (self.result.headers.len() - headers_start) as u32,
            },
            timestamp_ms: o.timestamp_ms,
        }
    }

    fn push_bytes(&mut self, bytes: &[u8]) -> Span {
        let start = self.result.data.len();
        self.result.data.extend_from_slice(bytes);
        Span {
            start: start as u32,
            len: bytes.len() as u32,
        }
    }

    /// Output topics are few per batch; a linear scan beats hashing here.
    fn topic_index(&mut self, topic: String) -> u32 {
        match self.result.topics.iter().position(|t| *t == topic) {
            Some(i) => i as u32,
            None => {
                self.result.topics.push(topic);
                (self.result.topics.len() - 1) as u32
            }
        }
    }
}
