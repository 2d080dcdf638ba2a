//! Helpers shared by the runtime test binaries (`plugins`, `sandbox`): one
//! [`Runtime`] per binary, each plugin compiled once per binary (and cached on
//! disk across runs), batches built from plain [`Record`]s, and a batch's
//! answer turned back into plain values for exact `assert_eq!`.

pub mod hostile;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use kwasm_host::runtime::{
    BatchOutput, CompiledPlugin, InputBatch, OutcomeView, Runtime, RuntimeConfig,
};

/// Where compiled plugins are cached between runs: cargo's scratch directory
/// for integration tests, inside the target directory.
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kwasm-compile-cache")
}

/// The one runtime of this test binary.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
        Runtime::new(RuntimeConfig {
            cache_dir: Some(cache_dir()),
            ..RuntimeConfig::default()
        })
        .unwrap_or_else(|e| panic!("cannot start the runtime: {e}"))
    });
    &RUNTIME
}

/// Plugin `name` (built by `cargo build --target wasm32-wasip2`), loaded into
/// [`runtime`] under that name. Each plugin is compiled once per binary;
/// different plugins may compile concurrently.
pub fn plugin(name: &str) -> Arc<CompiledPlugin> {
    type Slot = Arc<OnceLock<Arc<CompiledPlugin>>>;
    static LOADED: LazyLock<Mutex<HashMap<String, Slot>>> = LazyLock::new(Default::default);
    let slot: Slot = LOADED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(name.to_owned())
        .or_default()
        .clone();
    slot.get_or_init(|| {
        let bytes = plugin_bytes(name);
        runtime()
            .load(name, &bytes)
            .unwrap_or_else(|e| panic!("plugin `{name}` failed to load: {e}"))
    })
    .clone()
}

/// The component bytes of plugin `name`.
pub fn plugin_bytes(name: &str) -> Vec<u8> {
    let path = kwasm_tests::plugin_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A config list from string pairs.
pub fn config(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A Kafka record as a test sees it: an input message (the topic is then
/// ignored) or an output record (`topic: None` means the pipeline's output
/// topic).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub topic: Option<String>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// A record with this value and nothing else.
    pub fn value(value: impl AsRef<[u8]>) -> Self {
        Record {
            value: Some(value.as_ref().to_vec()),
            ..Record::default()
        }
    }

    /// A record with no key and no value (a keyless tombstone).
    pub fn null() -> Self {
        Record::default()
    }

    pub fn key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.key = Some(key.as_ref().to_vec());
        self
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), Some(value.as_ref().to_vec())));
        self
    }

    pub fn timestamp(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }
}

/// What became of one input message, as plain values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok(Vec<Record>),
    Retryable(String),
    Permanent(String),
}

/// A batch of `records` read from `topic`/`partition` at consecutive offsets
/// starting at `first_offset`.
pub fn batch(topic: &str, partition: i32, first_offset: i64, records: &[Record]) -> InputBatch {
    let mut batch = InputBatch::new(topic, partition);
    for (offset, r) in (first_offset..).zip(records) {
        batch.push(
            offset,
            r.timestamp_ms,
            r.key.as_deref(),
            r.value.as_deref(),
            r.headers.iter().map(|(n, v)| (n.as_str(), v.as_deref())),
        );
    }
    batch
}

/// Every outcome of `output`, in input order.
pub fn outcomes(output: &BatchOutput) -> Vec<Outcome> {
    output
        .outcomes()
        .map(|outcome| match outcome {
            OutcomeView::Ok(records) => Outcome::Ok(
                records
                    .iter()
                    .map(|r| Record {
                        topic: r.topic().map(str::to_owned),
                        key: r.key().map(<[u8]>::to_vec),
                        value: r.value().map(<[u8]>::to_vec),
                        headers: r
                            .headers()
                            .map(|(n, v)| (n.to_owned(), v.map(<[u8]>::to_vec)))
                            .collect(),
                        timestamp_ms: r.timestamp_ms(),
                    })
                    .collect(),
            ),
            OutcomeView::Retryable(m) => Outcome::Retryable(m.to_owned()),
            OutcomeView::Permanent(m) => Outcome::Permanent(m.to_owned()),
        })
        .collect()
}
