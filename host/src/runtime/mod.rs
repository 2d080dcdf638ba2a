//! The WebAssembly runtime: one wasmtime [`Engine`] per host, plugins
//! compiled once (and cached on disk), instances that run a batch under hard
//! limits.
//!
//! Invariants:
//! - A plugin can only reach the host through the kwasm WIT imports (logging)
//!   and a WASI context that grants nothing: no files, sockets, environment
//!   or arguments.
//! - Every call runs under a memory cap for the whole instance (all its
//!   memories and tables, `limiter`), a wall-clock deadline (epoch
//!   interruption), output caps (bytes and records) and log caps; hitting
//!   one yields a [`PluginError`] naming the plugin, the limit and the
//!   batch's offsets (or, for logs, drops lines and says so), never a host
//!   crash.
//! - Every instance holds a reservation of its `memory_bytes` from the
//!   host-wide [`MemoryBudget`] (`budget`), so all instances together stay
//!   within `host.max_plugin_memory_bytes`.
//! - An instance that failed is never entered again: [`PluginHandler`]
//!   replaces it before the next batch.
//!
//! - A plugin is one of two ABIs ([`PluginAbi`]): a component of the kwasm
//!   world, or a Redpanda Data Transform (a core module, run as the Redpanda
//!   broker runs it: `redpanda`). Both run behind the same [`PluginHandler`]
//!   and [`BatchOutput`], so the pipeline does not tell them apart.
//! - A plugin is accepted only when the host can satisfy every import it
//!   has: what uploads also instantiates.
//!
//! `wasmtime::Error` does not leave this module: callers see [`PluginError`]
//! and [`ValidationError`].

mod batch;
mod bindings;
mod budget;
mod cache;
mod error;
mod guest_output;
mod handler;
mod host_state;
mod limiter;
mod recycle;
mod redpanda;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

#[cfg(test)]
pub(crate) use batch::TestAnswer;
pub use batch::{BatchOutput, InputBatch, InputMessage, OutcomeView, OutputRecords, OutputView};
pub use budget::{BudgetError, MemoryBudget, Reservation, default_plugin_memory_bytes};
pub use error::{BatchContext, PluginError, PluginErrorKind, RuntimeError, ValidationError};
pub use handler::PluginHandler;
pub use limiter::{MAX_INSTANCES, MAX_MEMORIES, MAX_TABLES, TABLE_ELEMENT_BYTES};
pub use redpanda::EnvError;

use bindings::PluginPre;
use host_state::HostState;

/// The WIT interface every plugin must export, with its version.
pub const HANDLER_EXPORT: &str = "kwasm:plugin/handler@0.1.0";
/// The non-WASI interfaces a plugin may import (types come along with the
/// handler export; logging is the one capability granted).
pub const KWASM_IMPORTS: [&str; 2] = ["kwasm:plugin/types@0.1.0", "kwasm:plugin/log@0.1.0"];
/// The WASI 0.2 packages the host links (wasmtime-wasi's p2 set, granting
/// nothing: see `host_state`). A component importing any other WASI
/// package (`wasi:http`, `wasi:keyvalue`, ...) is refused at load, naming
/// the import, instead of failing at its first instantiation.
pub const WASI_PACKAGES: [&str; 6] = [
    "wasi:cli",
    "wasi:clocks",
    "wasi:filesystem",
    "wasi:io",
    "wasi:random",
    "wasi:sockets",
];

/// Which contract a plugin was built against. Detected from the bytes at
/// load; stored with each registry version and shown by the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginAbi {
    /// A component exporting [`HANDLER_EXPORT`] (the kwasm WIT).
    #[default]
    Component,
    /// A core module importing `redpanda_transform`, built with Redpanda's
    /// transform SDK: the pipeline's plugin config is its environment, its
    /// outputs are the pipeline's declared outputs in order.
    RedpandaTransform,
}

impl PluginAbi {
    /// The name used in the API and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginAbi::Component => "component",
            PluginAbi::RedpandaTransform => "redpanda-transform",
        }
    }
}

/// How often the epoch ticker advances. Deadlines are rounded up to it.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Per-instance limits of a plugin (the host-wide one is
/// `host.max_plugin_memory_bytes`). Defaults suit a 100-byte-message
/// pipeline with batches of up to a few thousand messages.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Bytes of all linear memories and tables of one instance together
    /// (table elements count [`TABLE_ELEMENT_BYTES`] each), whatever the
    /// number of core modules in the component. It is also what each
    /// instance reserves from the host's plugin memory budget. Default 64 MiB.
    pub memory_bytes: usize,
    /// Wall-clock time one batch call (or `init`) may take. Default 5 s.
    pub batch_timeout_ms: u64,
    /// Bytes of output (keys, values, headers) one batch may return.
    /// Default 32 MiB.
    pub max_output_bytes: usize,
    /// Bytes of key plus value of one output record. Default 1 MiB, the
    /// broker's default `message.max.bytes`: larger records would fail at
    /// produce time anyway, so they are stopped here with a clearer error.
    pub max_record_bytes: usize,
    /// Output records one batch may return, null keys and values included
    /// (`max_output_bytes` cannot see records with no bytes). Default
    /// 250 000: 488 per message at the default batch of 512, where the
    /// example plugins return at most one.
    pub max_output_records: usize,
    /// Lines one call may log, from the `log` import and stdout/stderr
    /// together; further lines are dropped, counted in
    /// `kwasm_plugin_log_lines_dropped_total`, and summed up in one warning
    /// per call. Default 1 000.
    pub max_log_lines: usize,
    /// Bytes of those lines one call may log (each line is also cut at
    /// 4 KiB). Default 256 KiB.
    pub max_log_bytes: usize,
    /// The high-water mark of an instance's memory, in percent of
    /// `memory_bytes`: an instance using more after a batch is replaced by
    /// a fresh one (`init` called again) before the next, so a guest whose
    /// memory grows batch after batch (Python, JavaScript) never reaches
    /// its limit in the middle of an innocent message. Default 75.
    pub memory_high_water_percent: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            batch_timeout_ms: 5_000,
            max_output_bytes: 32 << 20,
            max_record_bytes: 1 << 20,
            max_output_records: 250_000,
            max_log_lines: 1_000,
            max_log_bytes: 256 << 10,
            memory_high_water_percent: 75,
        }
    }
}

/// A limit outside its sane range, naming the field (relative to `limits`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` must be between {min} and {max}, got {value}")]
pub struct LimitsError {
    /// The field, e.g. `memory_bytes`.
    pub field: &'static str,
    /// The value given.
    pub value: u64,
    /// Smallest allowed.
    pub min: u64,
    /// Largest allowed.
    pub max: u64,
}

impl Limits {
    /// Checks every field against a range wide enough for any real plugin
    /// and narrow enough that a typo cannot disable a limit (0 would make
    /// every call fail; a huge value would make the limit meaningless).
    pub fn check(&self) -> Result<(), LimitsError> {
        const MIB: u64 = 1 << 20;
        let ranges: [(&'static str, u64, u64, u64); 8] = [
            // A Rust component needs about 1 MiB before it handles anything.
            ("memory_bytes", self.memory_bytes as u64, MIB, 4096 * MIB),
            ("batch_timeout_ms", self.batch_timeout_ms, 1, 600_000),
            (
                "max_output_bytes",
                self.max_output_bytes as u64,
                1,
                1024 * MIB,
            ),
            (
                "max_record_bytes",
                self.max_record_bytes as u64,
                1,
                1024 * MIB,
            ),
            (
                "max_output_records",
                self.max_output_records as u64,
                1,
                10_000_000,
            ),
            ("max_log_lines", self.max_log_lines as u64, 0, 1_000_000),
            ("max_log_bytes", self.max_log_bytes as u64, 0, 64 * MIB),
            // Below 10 an instance would be replaced after nearly every
            // batch; above 95 too little room is left for the next batch.
            (
                "memory_high_water_percent",
                u64::from(self.memory_high_water_percent),
                10,
                95,
            ),
        ];
        for (field, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(LimitsError {
                    field,
                    value,
                    min,
                    max,
                });
            }
        }
        Ok(())
    }

    /// Epoch ticks for the deadline: at least one full tick past the limit.
    fn deadline_ticks(&self) -> u64 {
        self.batch_timeout_ms
            .div_ceil(EPOCH_TICK.as_millis() as u64)
            + 1
    }
}

/// Runtime settings fixed at host start.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled plugins are cached; `None` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
    /// The host-wide plugin memory budget (`host.max_plugin_memory_bytes`).
    /// Default [`default_plugin_memory_bytes`].
    pub max_plugin_memory_bytes: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            max_plugin_memory_bytes: default_plugin_memory_bytes(),
        }
    }
}

/// The host's wasmtime engine, linker and compile cache. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<HostState>,
    /// The linker of Redpanda transforms (same engine: wasmtime runs async
    /// calls on any engine).
    transform_linker: wasmtime::Linker<redpanda::RpState>,
    cache: cache::CompileCache,
    budget: Arc<MemoryBudget>,
    /// Plugins loaded and still held by someone (a deployment, a handler),
    /// by (digest, name): a second load of the same bytes shares the
    /// compiled code. Weak, so a plugin no pipeline uses any more is freed
    /// with its last holder, not kept for the life of the host.
    in_memory: std::sync::Mutex<
        std::collections::HashMap<(String, String), std::sync::Weak<CompiledPlugin>>,
    >,
}

/// A plugin compiled and linked, ready to instantiate. Cheap to share.
pub struct CompiledPlugin {
    name: String,
    digest: String,
    size_bytes: usize,
    kind: PluginKind,
    engine: Engine,
    budget: Arc<MemoryBudget>,
}

/// What instantiates a plugin, per ABI.
pub(crate) enum PluginKind {
    Component(PluginPre<HostState>),
    RedpandaTransform(wasmtime::InstancePre<redpanda::RpState>),
}

impl Runtime {
    /// Builds the engine and linker and starts the epoch ticker thread.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            // Traps carry wasm backtraces; names are kept by debug builds of
            // plugins and help authors find the failing line.
            .wasm_backtrace_max_frames(std::num::NonZeroUsize::new(16));
        let engine = Engine::new(&wasm).map_err(RuntimeError::engine)?;
        let linker = host_state::linker(&engine).map_err(RuntimeError::engine)?;
        let transform_linker = redpanda::linker(&engine).map_err(RuntimeError::engine)?;
        spawn_epoch_ticker(&engine)?;
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                cache: cache::CompileCache::new(config.cache_dir, &engine),
                engine,
                linker,
                transform_linker,
                budget: MemoryBudget::new(config.max_plugin_memory_bytes),
                in_memory: std::sync::Mutex::default(),
            }),
        })
    }

    /// The host-wide plugin memory budget every instance reserves from.
    pub fn memory_budget(&self) -> &Arc<MemoryBudget> {
        &self.inner.budget
    }

    /// Validates and compiles `bytes` as plugin `name`. Rejects anything that
    /// is neither a component of the kwasm world nor a Redpanda transform,
    /// or imports what the host does not provide, with an error saying what
    /// is missing or naming the import. Compiled code is cached on disk by digest, and shared in
    /// memory while anyone holds it (see [`Runtime::plugins_in_memory`]).
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<Arc<CompiledPlugin>, ValidationError> {
        let core_module = check_header(bytes)?;
        let digest = hex::encode(Sha256::digest(bytes));
        let key = (digest.clone(), name.to_owned());
        if let Some(plugin) = self
            .in_memory()
            .get(&key)
            .and_then(std::sync::Weak::upgrade)
        {
            return Ok(plugin);
        }
        let plugin = if core_module {
            self.compile_transform(name, digest, bytes)?
        } else {
            self.compile(name, digest, bytes)?
        };
        let mut in_memory = self.in_memory();
        // Entries of plugins nobody holds any more go now: the map never
        // outgrows what the host runs.
        in_memory.retain(|_, p| p.strong_count() > 0);
        in_memory.insert(key, Arc::downgrade(&plugin));
        Ok(plugin)
    }

    /// Compiled plugins in memory now: exactly those some deployment or
    /// handler still holds.
    pub fn plugins_in_memory(&self) -> usize {
        self.in_memory()
            .values()
            .filter(|p| p.strong_count() > 0)
            .count()
    }

    fn in_memory(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<(String, String), std::sync::Weak<CompiledPlugin>>,
    > {
        self.inner
            .in_memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn compile(
        &self,
        name: &str,
        digest: String,
        bytes: &[u8],
    ) -> Result<Arc<CompiledPlugin>, ValidationError> {
        let (component, compiled) =
            self.inner
                .cache
                .load_or_compile(&self.inner.engine, &digest, bytes)?;
        self.check_world(&component)?;
        let instance_pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| ValidationError::Link(format!("{e:#}")))?;
        let pre = PluginPre::new(instance_pre)
            .map_err(|e| ValidationError::WrongWorld(format!("{e:#}")))?;
        // Only a valid plugin earns a cache entry.
        if let Some(compiled) = compiled {
            self.inner.cache.store(&digest, &compiled);
        }
        Ok(Arc::new(CompiledPlugin {
            name: name.to_owned(),
            digest,
            size_bytes: bytes.len(),
            kind: PluginKind::Component(pre),
            engine: self.inner.engine.clone(),
            budget: self.inner.budget.clone(),
        }))
    }

    /// A core module: accepted only as a Redpanda transform whose every
    /// import the host provides. Compiled anew at each load (a transform is
    /// small; the disk cache holds components).
    fn compile_transform(
        &self,
        name: &str,
        digest: String,
        bytes: &[u8],
    ) -> Result<Arc<CompiledPlugin>, ValidationError> {
        let module = wasmtime::Module::new(&self.inner.engine, bytes)
            .map_err(|e| ValidationError::CompileModule(format!("{e:#}")))?;
        if !redpanda::is_transform(&module) {
            return Err(ValidationError::CoreModule);
        }
        redpanda::check_module(&module)?;
        let pre = self
            .inner
            .transform_linker
            .instantiate_pre(&module)
            .map_err(|e| ValidationError::Link(format!("{e:#}")))?;
        Ok(Arc::new(CompiledPlugin {
            name: name.to_owned(),
            digest,
            size_bytes: bytes.len(),
            kind: PluginKind::RedpandaTransform(pre),
            engine: self.inner.engine.clone(),
            budget: self.inner.budget.clone(),
        }))
    }

    /// Names the export or import that makes a component not a kwasm plugin.
    fn check_world(&self, component: &Component) -> Result<(), ValidationError> {
        let engine = &self.inner.engine;
        let ty = component.component_type();
        let exports: Vec<&str> = ty.exports(engine).map(|(n, _)| n).collect();
        if !exports.contains(&HANDLER_EXPORT) {
            return Err(ValidationError::WrongWorld(format!(
                "the component does not export `{HANDLER_EXPORT}` (it exports: {}); \
                 build it with the kwasm-guest SDK's #[handler]",
                list_or_none(&exports)
            )));
        }
        let foreign: Vec<&str> = ty
            .imports(engine)
            .map(|(n, _)| n)
            .filter(|n| !KWASM_IMPORTS.contains(n) && !is_linked_wasi(n))
            .collect();
        if !foreign.is_empty() {
            return Err(ValidationError::WrongWorld(format!(
                "the component imports {}, which kwasm does not provide (allowed: {} and the \
                 WASI packages {})",
                list_or_none(&foreign),
                list_or_none(&KWASM_IMPORTS),
                list_or_none(&WASI_PACKAGES)
            )));
        }
        Ok(())
    }
}

/// Whether `import` (e.g. `wasi:io/poll@0.2.6`) is an interface of a WASI
/// package the host links. The interface and version are then checked by
/// the linker, whose error names them.
fn is_linked_wasi(import: &str) -> bool {
    let package = import.split('/').next().unwrap_or(import);
    WASI_PACKAGES.contains(&package)
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "nothing".to_owned()
    } else {
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Cheap checks with precise messages before handing bytes to the compiler.
/// True for a core module (a Redpanda transform, if anything), false for a
/// component.
fn check_header(bytes: &[u8]) -> Result<bool, ValidationError> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE_VERSION: [u8; 4] = [1, 0, 0, 0];
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(ValidationError::NotWasm);
    }
    Ok(bytes[4..8] == CORE_VERSION)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] so deadlines fire. Holds
/// only a weak engine reference: the thread ends when the engine is dropped.
fn spawn_epoch_ticker(engine: &Engine) -> Result<(), RuntimeError> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("kwasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .map(|_| ())
        .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch ticker thread: {e}")))
}

impl CompiledPlugin {
    /// The name the plugin was loaded under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sha256 of the component's bytes, in hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The component's size in bytes.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    /// The ABI it was built against.
    pub fn abi(&self) -> PluginAbi {
        match self.kind {
            PluginKind::Component(_) => PluginAbi::Component,
            PluginKind::RedpandaTransform(_) => PluginAbi::RedpandaTransform,
        }
    }

    /// A handler with its own instance, initialised with `config` now, so a
    /// bad configuration fails here rather than on the first message. It
    /// waits for the host's memory budget if that is full (for at most a
    /// batch: busy partitions give memory back after each batch while
    /// someone waits).
    pub fn handler(
        self: &Arc<Self>,
        config: Vec<(String, String)>,
        limits: Limits,
    ) -> Result<PluginHandler, PluginError> {
        let mut handler = PluginHandler::idle(self.clone(), config, limits);
        handler.start()?;
        Ok(handler)
    }

    /// A handler that reserves memory and instantiates only when it gets
    /// work (see [`PluginHandler::wait_for_memory`]).
    pub fn idle_handler(
        self: &Arc<Self>,
        config: Vec<(String, String)>,
        limits: Limits,
    ) -> PluginHandler {
        PluginHandler::idle(self.clone(), config, limits)
    }
}

impl std::fmt::Debug for CompiledPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPlugin")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .field("size_bytes", &self.size_bytes)
            .field("abi", &self.abi())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_wasi_packages_the_host_links_pass() {
        assert!(is_linked_wasi("wasi:io/poll@0.2.6"));
        assert!(is_linked_wasi("wasi:cli/environment@0.2.0"));
        assert!(!is_linked_wasi("wasi:http/outgoing-handler@0.2.0"));
        assert!(!is_linked_wasi("wasi:keyvalue/store@0.2.0-draft"));
        // A package name must match whole, not as a prefix.
        assert!(!is_linked_wasi("wasi:iox/poll@0.2.0"));
    }

    #[test]
    fn core_modules_and_components_are_told_apart_by_their_layer() {
        assert_eq!(check_header(b"\0asm\x01\0\0\0"), Ok(true));
        assert_eq!(check_header(b"\0asm\x0d\0\x01\0"), Ok(false));
        assert_eq!(check_header(b"\0as"), Err(ValidationError::NotWasm));
    }
}
