//! The bytes of Redpanda's transform ABI, as pure functions: the record
//! payload a guest reads and writes (Kafka's record body after the offset
//! delta: zigzag-varint key length and key, value length and value, header
//! count, then each header's key and value the same way; a length of -1 is
//! null), the options of `write_record_with_options`, and the batch header
//! the broker hands out. No wasmtime here, so all of it is unit-tested.

use integer_encoding::VarInt;

use crate::runtime::InputBatch;

/// The fields `read_batch_header` writes, in its parameter order.
///
/// The broker copies them from the Kafka record batch it read. kwasm's batch
/// is a run of consumed messages, possibly from several Kafka batches, and
/// librdkafka does not hand a consumer the batch's producer fields, so
/// those say "none" (-1) as a non-idempotent producer's batch does; the
/// offsets, count and timestamps describe exactly the records the guest will
/// read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Records the guest may read.
    pub record_count: i32,
    /// The partition leader's epoch; -1: librdkafka does not say.
    pub partition_leader_epoch: i32,
    /// Batch attributes: 0 (uncompressed, as the broker decompresses
    /// before transforming; create time; not transactional; not control).
    pub attributes: i16,
    /// Last record's offset minus `base_offset`.
    pub last_offset_delta: i32,
    /// The first record's timestamp (Kafka's `baseTimestamp`), ms.
    pub base_timestamp: i64,
    /// The largest record timestamp, ms.
    pub max_timestamp: i64,
    /// -1: not known to a consumer.
    pub producer_id: i64,
    /// -1: not known to a consumer.
    pub producer_epoch: i16,
    /// -1: not known to a consumer.
    pub base_sequence: i32,
}

impl BatchHeader {
    /// The header for `batch` (which is not empty; an empty one gets zeros
    /// and a count of 0).
    pub(crate) fn of(batch: &InputBatch) -> Self {
        let Some((first, last)) = batch.offsets() else {
            return BatchHeader {
                producer_id: -1,
                producer_epoch: -1,
                base_sequence: -1,
                partition_leader_epoch: -1,
                ..BatchHeader::default()
            };
        };
        let timestamps = batch.messages().map(|m| m.timestamp_ms().unwrap_or(-1));
        BatchHeader {
            base_offset: first,
            record_count: batch.len() as i32,
            partition_leader_epoch: -1,
            attributes: 0,
            last_offset_delta: (last - first) as i32,
            base_timestamp: batch.message(0).timestamp_ms().unwrap_or(-1),
            max_timestamp: timestamps.max().unwrap_or(-1),
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }
}

/// One record of a batch as the guest reads it with `read_next_record`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordMeta {
    /// Absolute offset.
    pub offset: i64,
    /// Timestamp, ms (-1 when the broker gave none).
    pub timestamp_ms: i64,
    /// Where its payload starts in [`EncodedBatch::payloads`].
    pub start: usize,
    /// Payload length.
    pub len: usize,
}

/// A batch in the guest's format, built once per batch into reused
/// buffers: the header, and each record's metadata and payload.
#[derive(Debug, Default)]
pub(crate) struct EncodedBatch {
    pub header: BatchHeader,
    pub records: Vec<RecordMeta>,
    pub payloads: Vec<u8>,
    /// The largest payload: what `read_batch_header` returns, so the guest
    /// sizes its buffer once per batch.
    pub max_payload: usize,
}

impl EncodedBatch {
    /// Re-encodes `batch` into this one's buffers.
    pub(crate) fn fill(&mut self, batch: &InputBatch) {
        self.header = BatchHeader::of(batch);
        self.records.clear();
        self.payloads.clear();
        self.max_payload = 0;
        for m in batch.messages() {
            let start = self.payloads.len();
            write_payload(&mut self.payloads, m.key(), m.value(), m.headers());
            let len = self.payloads.len() - start;
            self.max_payload = self.max_payload.max(len);
            self.records.push(RecordMeta {
                offset: m.offset(),
                timestamp_ms: m.timestamp_ms().unwrap_or(-1),
                start,
                len,
            });
        }
    }

    /// The payload of record `i`.
    pub(crate) fn payload(&self, i: usize) -> &[u8] {
        let r = &self.records[i];
        &self.payloads[r.start..r.start + r.len]
    }
}

/// Appends a zigzag varint.
fn write_varint(out: &mut Vec<u8>, v: i64) {
    let mut buf = [0u8; 10];
    let n = v.encode_var(&mut buf);
    out.extend_from_slice(&buf[..n]);
}

/// Appends a length-prefixed field (-1 for null).
fn write_sized(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            write_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
        None => write_varint(out, -1),
    }
}

/// Appends one record payload.
pub(crate) fn write_payload<'h>(
    out: &mut Vec<u8>,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: impl Iterator<Item = (&'h str, Option<&'h [u8]>)>,
) {
    write_sized(out, key);
    write_sized(out, value);
    let headers: Vec<_> = headers.collect();
    write_varint(out, headers.len() as i64);
    for (name, value) in headers {
        write_sized(out, Some(name.as_bytes()));
        write_sized(out, value);
    }
}

/// A record payload a guest wrote, borrowed from its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Payload<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// Header keys may be null in the format; the SDKs read a null key as
    /// empty, and so does this.
    pub headers: Vec<(&'a [u8], Option<&'a [u8]>)>,
}

/// Reads a payload, refusing what the broker refuses
/// (`model::transformed_data::create_validated`): a length below -1, a
/// field past the end, a negative header count, bytes left over.
pub(crate) fn read_payload(bytes: &[u8]) -> Option<Payload<'_>> {
    let mut r = Reader { bytes };
    let key = r.sized()?;
    let value = r.sized()?;
    let count = r.varint()?;
    if count < 0 {
        return None;
    }
    // Each header takes at least two bytes: a count beyond that is a lie,
    // and must not size an allocation.
    if count as usize > r.bytes.len() / 2 {
        return None;
    }
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name = r.sized()?.unwrap_or_default();
        let value = r.sized()?;
        headers.push((name, value));
    }
    r.bytes.is_empty().then_some(Payload {
        key,
        value,
        headers,
    })
}

/// The topic `write_record_with_options` names: `None` for the default
/// output. The options are empty, or `0x01` then the topic as a zigzag
/// varint length and its bytes; anything else (another key, bytes left
/// over, a topic that is not UTF-8) is refused, as the broker refuses it.
pub(crate) fn read_write_options(bytes: &[u8]) -> Result<Option<&str>, ()> {
    const OUTPUT_TOPIC_KEY: u8 = 0x01;
    let Some((&key, rest)) = bytes.split_first() else {
        return Ok(None);
    };
    if key != OUTPUT_TOPIC_KEY {
        return Err(());
    }
    let mut r = Reader { bytes: rest };
    let topic = r.sized().ok_or(())?.ok_or(())?;
    if !r.bytes.is_empty() {
        return Err(());
    }
    std::str::from_utf8(topic).map(Some).map_err(|_| ())
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<i64> {
        let (v, n) = i64::decode_var(self.bytes)?;
        self.bytes = &self.bytes[n..];
        Some(v)
    }

    /// A length-prefixed field: `Some(None)` for null (-1).
    fn sized(&mut self) -> Option<Option<&'a [u8]>> {
        let len = self.varint()?;
        if len == -1 {
            return Some(None);
        }
        let len = usize::try_from(len).ok()?;
        if len > self.bytes.len() {
            return None;
        }
        let (field, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Some(Some(field))
    }
}

/// Why an environment for a transform was refused, naming the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// More variables than Redpanda allows.
    #[error("{count} environment variables (config keys), over Redpanda's limit of {max}")]
    TooMany {
        /// Variables given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A key or value Redpanda refuses.
    #[error("environment variable `{key}` (a config key): {reason}")]
    Invalid {
        /// The key (shown escaped when it holds control characters).
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Redpanda's limits on a transform's environment (`plugin_frontend.cc`).
const MAX_ENV_VARS: usize = 128;
const MAX_ENV_KEY_BYTES: usize = 128;
const MAX_ENV_VALUE_BYTES: usize = 2048;

/// Checks a transform's user environment (the pipeline's plugin config) by
/// the rules Redpanda applies at deploy: at most 128 variables; keys of 1 to
/// 128 bytes without `=` or control characters and not starting with
/// `REDPANDA_` (the host's own); values of 1 byte to 2 KiB without control
/// characters.
pub(crate) fn check_env(env: &[(String, String)]) -> Result<(), EnvError> {
    if env.len() > MAX_ENV_VARS {
        return Err(EnvError::TooMany {
            count: env.len(),
            max: MAX_ENV_VARS,
        });
    }
    for (key, value) in env {
        let reason = if key.is_empty() {
            Some("the key is empty")
        } else if key.len() > MAX_ENV_KEY_BYTES {
            Some("the key is longer than 128 bytes")
        } else if key.contains('=') {
            Some("the key contains `=`")
        } else if key.chars().any(char::is_control) {
            Some("the key contains a control character")
        } else if key.starts_with("REDPANDA_") {
            Some("keys starting with REDPANDA_ are reserved for the host")
        } else if value.is_empty() {
            Some("the value is empty")
        } else if value.len() > MAX_ENV_VALUE_BYTES {
            Some("the value is longer than 2 KiB")
        } else if value.chars().any(char::is_control) {
            Some("the value contains a control character")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(EnvError::Invalid {
                key: key.escape_debug().to_string(),
                reason,
            });
        }
    }
    Ok(())
}

/// The environment the broker gives a transform: the user's variables,
/// then `REDPANDA_INPUT_TOPIC` and `REDPANDA_OUTPUT_TOPIC_<i>` for each
/// output in order, as `KEY=VALUE` strings.
pub(crate) fn environment(
    user: &[(String, String)],
    input: &str,
    outputs: &[String],
) -> Vec<String> {
    let mut env: Vec<String> = user.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.push(format!("REDPANDA_INPUT_TOPIC={input}"));
    for (i, topic) in outputs.iter().enumerate() {
        env.push(format!("REDPANDA_OUTPUT_TOPIC_{i}={topic}"));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(v: i64) -> Vec<u8> {
        let mut out = Vec::new();
        write_varint(&mut out, v);
        out
    }

    #[test]
    fn varints_are_zigzag_as_in_kafka_records() {
        // Kafka's record format (KIP-98): 0 -> 00, -1 -> 01, 1 -> 02,
        // 63 -> 7e, -64 -> 7f, 64 -> 80 01.
        assert_eq!(varint(0), [0x00]);
        assert_eq!(varint(-1), [0x01]);
        assert_eq!(varint(1), [0x02]);
        assert_eq!(varint(63), [0x7e]);
        assert_eq!(varint(-64), [0x7f]);
        assert_eq!(varint(64), [0x80, 0x01]);
    }

    #[test]
    fn a_payload_is_key_value_then_headers_with_null_as_minus_one() {
        let mut out = Vec::new();
        write_payload(
            &mut out,
            Some(b"k"),
            None,
            [("h", Some(&b"xy"[..])), ("n", None)].into_iter(),
        );
        assert_eq!(
            out,
            [
                0x02, b'k', // key: length 1
                0x01, // value: null
                0x04, // two headers
                0x02, b'h', 0x04, b'x', b'y', // h = "xy"
                0x02, b'n', 0x01, // n = null
            ]
        );
        let read = read_payload(&out).expect("valid");
        assert_eq!(
            read,
            Payload {
                key: Some(b"k"),
                value: None,
                headers: vec![(b"h", Some(&b"xy"[..])), (b"n", None)],
            }
        );
    }

    #[test]
    fn empty_and_null_stay_apart() {
        let mut out = Vec::new();
        write_payload(&mut out, Some(b""), Some(b""), std::iter::empty());
        assert_eq!(out, [0x00, 0x00, 0x00]);
        let p = read_payload(&out).expect("valid");
        assert_eq!((p.key, p.value), (Some(&b""[..]), Some(&b""[..])));
    }

    #[test]
    fn payloads_the_broker_refuses_are_refused() {
        // A length below -1.
        assert_eq!(read_payload(&[0x03, 0x00, 0x00]), None);
        // A key running past the end.
        assert_eq!(read_payload(&[0x08, b'a']), None);
        // A negative header count.
        assert_eq!(read_payload(&[0x01, 0x01, 0x01]), None);
        // Bytes left over.
        assert_eq!(read_payload(&[0x01, 0x01, 0x00, 0xff]), None);
        // A truncated varint.
        assert_eq!(read_payload(&[0x80]), None);
        // A header count no buffer could hold.
        assert_eq!(
            read_payload(&[0x01, 0x01, 0xfe, 0xff, 0xff, 0xff, 0x0f]),
            None
        );
    }

    #[test]
    fn write_options_name_a_topic_or_nothing() {
        assert_eq!(read_write_options(&[]), Ok(None));
        let mut opts = vec![0x01];
        write_sized(&mut opts, Some(b"audit"));
        assert_eq!(read_write_options(&opts), Ok(Some("audit")));
        // Another key, bytes after the topic, a null or non-UTF-8 topic.
        assert_eq!(read_write_options(&[0x02, 0x02, b'a']), Err(()));
        let mut trailing = opts.clone();
        trailing.push(0);
        assert_eq!(read_write_options(&trailing), Err(()));
        assert_eq!(read_write_options(&[0x01, 0x01]), Err(()));
        assert_eq!(read_write_options(&[0x01, 0x02, 0xff]), Err(()));
        assert_eq!(read_write_options(&[0x01]), Err(()));
    }

    fn batch() -> InputBatch {
        let mut b = InputBatch::new("in", 2);
        b.push(40, Some(1_000), Some(b"a"), Some(b"1"), []);
        b.push(41, Some(3_000), None, Some(b"22"), [("h", Some(&b"v"[..]))]);
        b.push(43, Some(2_000), Some(b"c"), None, []);
        b
    }

    #[test]
    fn the_header_fills_every_field_from_the_records_the_guest_will_read() {
        // Redpanda Connect's reimplementation fills record_count only; the
        // broker fills all ten, and a guest may read any of them.
        assert_eq!(
            BatchHeader::of(&batch()),
            BatchHeader {
                base_offset: 40,
                record_count: 3,
                partition_leader_epoch: -1,
                attributes: 0,
                last_offset_delta: 3,
                base_timestamp: 1_000,
                max_timestamp: 3_000,
                producer_id: -1,
                producer_epoch: -1,
                base_sequence: -1,
            }
        );
    }

    #[test]
    fn an_encoded_batch_keeps_offsets_timestamps_and_payloads_apart() {
        let mut e = EncodedBatch::default();
        e.fill(&batch());
        let metas: Vec<(i64, i64)> = e
            .records
            .iter()
            .map(|r| (r.offset, r.timestamp_ms))
            .collect();
        // The offset is the record's own, never written over its timestamp
        // (another mistake of Redpanda Connect's).
        assert_eq!(metas, [(40, 1_000), (41, 3_000), (43, 2_000)]);
        let p = read_payload(e.payload(1)).expect("valid");
        assert_eq!(
            (p.key, p.value, p.headers),
            (None, Some(&b"22"[..]), vec![(&b"h"[..], Some(&b"v"[..]))])
        );
        assert_eq!(e.max_payload, e.payload(1).len());
        // Reuse empties the old content.
        let mut one = InputBatch::new("in", 0);
        one.push(7, None, None, None, []);
        e.fill(&one);
        assert_eq!(e.records.len(), 1);
        assert_eq!(e.payload(0), [0x01, 0x01, 0x00]);
        assert_eq!(e.header.base_timestamp, -1);
    }

    #[test]
    fn the_environment_is_the_users_then_the_topics() {
        let user = vec![("GREETING".to_owned(), "hi".to_owned())];
        assert_eq!(
            environment(&user, "orders", &["a".into(), "b".into()]),
            [
                "GREETING=hi",
                "REDPANDA_INPUT_TOPIC=orders",
                "REDPANDA_OUTPUT_TOPIC_0=a",
                "REDPANDA_OUTPUT_TOPIC_1=b"
            ]
        );
    }

    #[test]
    fn the_environment_follows_redpandas_rules_and_names_the_key() {
        let env = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        assert_eq!(check_env(&env("GREETING", "hi")), Ok(()));
        let reason = |k: &str, v: &str| match check_env(&env(k, v)) {
            Err(EnvError::Invalid { key, reason }) => (key, reason),
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(
            reason("REDPANDA_X", "1").1,
            "keys starting with REDPANDA_ are reserved for the host"
        );
        assert_eq!(reason("A=B", "1").1, "the key contains `=`");
        assert_eq!(reason("K", "").1, "the value is empty");
        assert_eq!(
            reason("K\n", "1"),
            ("K\\n".to_owned(), "the key contains a control character")
        );
        assert_eq!(
            reason(&"K".repeat(129), "1").1,
            "the key is longer than 128 bytes"
        );
        assert_eq!(
            reason("K", &"v".repeat(2049)).1,
            "the value is longer than 2 KiB"
        );
        let many: Vec<_> = (0..129)
            .map(|i| (format!("K{i}"), "v".to_owned()))
            .collect();
        assert_eq!(
            check_env(&many),
            Err(EnvError::TooMany {
                count: 129,
                max: 128
            })
        );
    }
}
