//! Errors of the runtime, each with enough context for an operator to act.

use std::fmt;

/// Where a failing call was: plugin, digest, topic-partition, offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchContext {
    /// Plugin name.
    pub plugin: String,
    /// Plugin digest (sha256 hex).
    pub digest: String,
    /// Input topic of the batch (empty for `init`).
    pub topic: String,
    /// Input partition of the batch.
    pub partition: i32,
    /// First and last offset of the batch; `None` for `init`.
    pub offsets: Option<(i64, i64)>,
}

impl fmt::Display for BatchContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = &self.digest[..self.digest.len().min(12)];
        write!(f, "plugin `{}` (sha256:{short})", self.plugin)?;
        match self.offsets {
            Some((first, last)) if first == last => {
                write!(f, " at offset {first} of {}/{}", self.topic, self.partition)
            }
            Some((first, last)) => write!(
                f,
                " at offsets {first}..={last} of {}/{}",
                self.topic, self.partition
            ),
            None => write!(f, " during init"),
        }
    }
}

/// A plugin call that did not produce a usable result.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{context}: {kind}")]
pub struct PluginError {
    /// Where it happened (boxed: it is mostly strings, and errors travel in
    /// `Result`s on the hot path).
    pub context: Box<BatchContext>,
    /// What happened.
    pub kind: PluginErrorKind,
}

/// What went wrong in a plugin call. Every kind but `InitRejected` leaves the
/// instance unusable; the handler replaces it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginErrorKind {
    /// The guest trapped (a panic, `unreachable`, a bad memory access...).
    #[error("trapped: {0}")]
    Trap(String),
    /// The call ran past its wall-clock deadline.
    #[error("exceeded its {limit_ms} ms deadline")]
    Timeout {
        /// The configured deadline.
        limit_ms: u64,
    },
    /// The guest tried to grow a memory or table past the instance's cap
    /// and died of it.
    #[error(
        "exceeded its memory limit (memory_bytes = {limit_bytes}, for all memories and tables \
         of the instance): growing {growing} would have made them {wanted_bytes} bytes"
    )]
    MemoryLimit {
        /// The configured cap.
        limit_bytes: usize,
        /// What the refused growth would have brought the total to.
        wanted_bytes: usize,
        /// `a memory` or `a table`.
        growing: &'static str,
    },
    /// Unbounded recursion ran out of wasm stack.
    #[error("overflowed its stack")]
    StackOverflow,
    /// The batch returned more output than allowed.
    #[error("returned {bytes} bytes of output, over the {limit_bytes}-byte limit ({what})")]
    OutputTooLarge {
        /// Bytes found.
        bytes: usize,
        /// The limit crossed.
        limit_bytes: usize,
        /// Which limit: per batch or per record.
        what: &'static str,
    },
    /// The batch returned more output records than allowed (records with
    /// no key and no value cost no bytes, so they are counted too).
    #[error(
        "returned {records} output records, over the max_output_records limit of {limit} per batch"
    )]
    TooManyRecords {
        /// Records found.
        records: u64,
        /// The configured cap.
        limit: usize,
    },
    /// The guest's answer broke the contract (wrong outcome count, a span
    /// outside its buffer...): a bug in the plugin or its SDK.
    #[error("returned an invalid result: {0}")]
    BadOutput(String),
    /// `init` rejected the configuration, with the plugin's message.
    #[error("rejected its configuration: {0}")]
    InitRejected(String),
    /// The instance could not be created.
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
}

impl PluginErrorKind {
    /// A short stable name for headers, metrics and logs.
    pub fn code(&self) -> &'static str {
        match self {
            PluginErrorKind::Trap(_) => "trap",
            PluginErrorKind::Timeout { .. } => "timeout",
            PluginErrorKind::MemoryLimit { .. } => "memory-limit",
            PluginErrorKind::StackOverflow => "stack-overflow",
            PluginErrorKind::OutputTooLarge { .. } | PluginErrorKind::TooManyRecords { .. } => {
                "output-too-large"
            }
            PluginErrorKind::BadOutput(_) => "bad-output",
            PluginErrorKind::InitRejected(_) => "init-rejected",
            PluginErrorKind::Instantiate(_) => "instantiate",
        }
    }
}

/// Why bytes offered as a plugin were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// Not WebAssembly at all.
    #[error("not a WebAssembly file: it does not start with the `\\0asm` magic")]
    NotWasm,
    /// A core module that is not a Redpanda transform either.
    #[error(
        "this is a core WebAssembly module, not a component: build the plugin with \
         `cargo build --target wasm32-wasip2` and the kwasm-guest SDK (a core module is \
         accepted only as a Redpanda Data Transform, which imports `redpanda_transform`)"
    )]
    CoreModule,
    /// The compiler refused a core module (a would-be Redpanda transform).
    #[error("invalid WebAssembly module: {0}")]
    CompileModule(String),
    /// The compiler refused it.
    #[error("invalid WebAssembly component: {0}")]
    Compile(String),
    /// A component, but not of the kwasm world.
    #[error("not a kwasm plugin: {0}")]
    WrongWorld(String),
    /// Its imports could not be satisfied.
    #[error("cannot link the plugin: {0}")]
    Link(String),
}

/// The runtime itself could not start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    /// Engine or linker setup failed.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
}

impl RuntimeError {
    pub(crate) fn engine(e: wasmtime::Error) -> Self {
        RuntimeError::Engine(format!("{e:#}"))
    }
}
