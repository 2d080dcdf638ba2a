use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Message};

/// A record for the host to produce.
///
/// Built from scratch with [`Output::new`] or from the input with
/// [`Output::forward`], then adjusted with the `with_*` methods.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Output {
    pub(crate) topic: Option<String>,
    pub(crate) key: Option<Bytes>,
    pub(crate) value: Option<Bytes>,
    pub(crate) headers: Vec<(String, Option<Bytes>)>,
    pub(crate) timestamp_ms: Option<i64>,
}

impl Output {
    /// An empty record (null key, null value, no headers) for the pipeline's
    /// output topic.
    pub fn new() -> Self {
        Output::default()
    }

    /// The input message as it is: same key, value, headers and timestamp,
    /// for the pipeline's output topic. Copies nothing.
    pub fn forward(msg: &Message) -> Self {
        Output {
            topic: None,
            key: msg.key.clone(),
            value: msg.value.clone(),
            headers: msg
                .raw_headers()
                .iter()
                .map(|h| (h.name().to_owned(), h.value.clone()))
                .collect(),
            timestamp_ms: msg.timestamp_ms,
        }
    }

    /// Sends this record to `topic` instead of the pipeline's output topic.
    pub fn with_topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Makes the key null.
    pub fn without_key(mut self) -> Self {
        self.key = None;
        self
    }

    /// Sets the value.
    pub fn with_value(mut self, value: impl Into<Bytes>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// Sets the value to `value` serialized as JSON.
    pub fn with_json<T: Serialize + ?Sized>(self, value: &T) -> Result<Self, Error> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| Error::permanent(format!("cannot serialize output JSON: {e}")))?;
        Ok(self.with_value(bytes))
    }

    /// Makes the value null (a tombstone).
    pub fn without_value(mut self) -> Self {
        self.value = None;
        self
    }

    /// Replaces every header called `name` with one header `name: value`.
    pub fn with_header(mut self, name: &str, value: impl Into<Bytes>) -> Self {
        self.headers.retain(|(n, _)| n != name);
        self.headers.push((name.to_owned(), Some(value.into())));
        self
    }

    /// Appends a header, keeping any others of the same name.
    pub fn add_header(mut self, name: &str, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.to_owned(), Some(value.into())));
        self
    }

    /// Removes every header called `name`.
    pub fn without_header(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| n != name);
        self
    }

    /// Sets the timestamp (milliseconds since the Unix epoch).
    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// The topic override, if any.
    pub fn topic(&self) -> Option<&str> {
        self.topic.as_deref()
    }

    /// The key.
    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// The value.
    pub fn value(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }

    /// The value parsed as JSON (handy in tests).
    pub fn value_json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        Ok(serde_json::from_slice(self.value().unwrap_or_default())?)
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref().unwrap_or_default())
    }

    /// Every header in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_deref()))
    }

    /// The timestamp, if set.
    pub fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp_ms
    }
}

/// What a handler may return inside `Ok`: one record, an optional record, a
/// list of records, or `()` for none.
pub trait IntoOutputs {
    /// Hands every record to `sink`, in order.
    fn into_outputs(self, sink: &mut dyn FnMut(Output));
}

impl IntoOutputs for Output {
    fn into_outputs(self, sink: &mut dyn FnMut(Output)) {
        sink(self)
    }
}

impl IntoOutputs for Option<Output> {
    fn into_outputs(self, sink: &mut dyn FnMut(Output)) {
        if let Some(o) = self {
            sink(o)
        }
    }
}

impl IntoOutputs for Vec<Output> {
    fn into_outputs(self, sink: &mut dyn FnMut(Output)) {
        self.into_iter().for_each(sink)
    }
}

impl IntoOutputs for () {
    fn into_outputs(self, _sink: &mut dyn FnMut(Output)) {}
}
