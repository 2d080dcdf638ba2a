use std::ops::Range;
use std::rc::Rc;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::Error;

/// One Kafka message handed to the handler.
///
/// Key, value and headers are views into the batch the host sent: reading
/// them copies nothing, and [`crate::Output::forward`] re-uses them without a
/// copy either.
#[derive(Debug, Clone)]
pub struct Message {
    pub(crate) topic: Rc<str>,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) timestamp_ms: Option<i64>,
    pub(crate) key: Option<Bytes>,
    pub(crate) value: Option<Bytes>,
    pub(crate) headers: Headers,
}

/// The headers of one message: a range of the batch's shared header table.
#[derive(Debug, Clone)]
pub(crate) struct Headers {
    pub(crate) table: Rc<[RawHeader]>,
    pub(crate) range: Range<usize>,
}

/// A header as the batch carries it. The name is UTF-8 (the host guarantees
/// it: Kafka header keys are strings).
#[derive(Debug, Clone)]
pub(crate) struct RawHeader {
    pub(crate) name: Bytes,
    pub(crate) value: Option<Bytes>,
}

impl RawHeader {
    pub(crate) fn name(&self) -> &str {
        std::str::from_utf8(&self.name).unwrap_or("")
    }
}

impl Message {
    /// Build a message by hand, for unit tests of a handler.
    pub fn builder() -> MessageBuilder {
        MessageBuilder::default()
    }

    /// The topic the message was read from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition the message was read from.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The message's offset in its partition.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// Milliseconds since the Unix epoch, when the broker gave a timestamp.
    pub fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp_ms
    }

    /// The key, or `None` for a null key.
    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// The value, or `None` for a null value (a tombstone).
    pub fn value(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }

    /// The key as UTF-8 text; `Ok(None)` for a null key, a permanent error
    /// when it is not UTF-8.
    pub fn key_str(&self) -> Result<Option<&str>, Error> {
        Ok(self.key().map(std::str::from_utf8).transpose()?)
    }

    /// The value as UTF-8 text; a null value reads as `""`, bytes that are not
    /// UTF-8 are a permanent error.
    pub fn value_str(&self) -> Result<&str, Error> {
        Ok(std::str::from_utf8(self.value().unwrap_or_default())?)
    }

    /// The value parsed as JSON into `T` (a `serde_json::Value` or your own
    /// `Deserialize` type); a permanent error when it does not parse.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        let value = self
            .value()
            .ok_or_else(|| Error::permanent("expected a JSON value, got a null value"))?;
        Ok(serde_json::from_slice(value)?)
    }

    /// The value of the first header called `name`; a null header value
    /// reads as an empty slice.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.raw_headers()
            .iter()
            .find(|h| h.name() == name)
            .map(|h| h.value.as_deref().unwrap_or_default())
    }

    /// Every header in order, as `(name, value)`; names may repeat.
    pub fn headers(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.raw_headers()
            .iter()
            .map(|h| (h.name(), h.value.as_deref()))
    }

    pub(crate) fn raw_headers(&self) -> &[RawHeader] {
        &self.headers.table[self.headers.range.clone()]
    }
}

/// Builds a [`Message`] for tests: `Message::builder().value("x").build()`.
#[derive(Debug, Clone, Default)]
pub struct MessageBuilder {
    topic: Option<String>,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: Vec<RawHeader>,
}

impl MessageBuilder {
    /// The topic (default `"test"`).
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// The partition (default 0).
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = partition;
        self
    }

    /// The offset (default 0).
    pub fn offset(mut self, offset: i64) -> Self {
        self.offset = offset;
        self
    }

    /// The timestamp in milliseconds since the Unix epoch (default none).
    pub fn timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// The key (default null).
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The value (default null).
    pub fn value(mut self, value: impl Into<Bytes>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// Appends a header; names may repeat.
    pub fn header(mut self, name: &str, value: impl Into<Bytes>) -> Self {
        self.headers.push(RawHeader {
            name: Bytes::copy_from_slice(name.as_bytes()),
            value: Some(value.into()),
        });
        self
    }

    /// The message.
    pub fn build(self) -> Message {
        let count = self.headers.len();
        Message {
            topic: Rc::from(self.topic.as_deref().unwrap_or("test")),
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key,
            value: self.value,
            headers: Headers {
                table: Rc::from(self.headers),
                range: 0..count,
            },
        }
    }
}
