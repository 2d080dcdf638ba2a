//! The per-store state: an empty WASI context, the memory limiter, and the
//! context attached to the plugin's log lines.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{Level, Plugin, kwasm};
use super::guest_output::GuestOutput;

/// Data owned by one `Store`: one instance of one plugin.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryCap,
    pub(crate) log: LogContext,
    /// The guest's stdout and stderr, kept to quote in trap errors.
    pub(crate) output: GuestOutput,
}

/// What the host attaches to a plugin's log lines.
pub(crate) struct LogContext {
    pub(crate) plugin: Arc<str>,
    pub(crate) topic: String,
    pub(crate) partition: i32,
}

impl HostState {
    pub(crate) fn new(plugin: Arc<str>, memory_bytes: usize) -> Self {
        // stdout and stderr share one buffer so their lines stay in order.
        let output = GuestOutput::new(plugin.clone(), "output");
        HostState {
            // Grants nothing: no preopened directories, no environment, no
            // arguments, no network (the default socket check denies every
            // address), no stdin. Output goes to the host's log.
            wasi: WasiCtx::builder()
                .stdout(output.clone())
                .stderr(output.clone())
                .build(),
            output,
            table: ResourceTable::new(),
            limiter: MemoryCap::new(memory_bytes),
            log: LogContext {
                plugin,
                topic: String::new(),
                partition: -1,
            },
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The `types` interface has no functions; its host trait is empty.
impl kwasm::plugin::types::Host for HostState {}

impl kwasm::plugin::log::Host for HostState {
    fn log(&mut self, level: Level, offset: Option<i64>, message: String) {
        let LogContext {
            plugin,
            topic,
            partition,
        } = &self.log;
        let plugin = &**plugin;
        macro_rules! emit {
            ($lvl:expr) => {
                tracing::event!(target: "kwasm::plugin", $lvl, plugin, topic, partition, offset, "{message}")
            };
        }
        match level {
            Level::Trace => emit!(tracing::Level::TRACE),
            Level::Debug => emit!(tracing::Level::DEBUG),
            Level::Info => emit!(tracing::Level::INFO),
            Level::Warn => emit!(tracing::Level::WARN),
            Level::Error => emit!(tracing::Level::ERROR),
        }
    }
}

/// The one linker of the host: kwasm's log import plus WASI (p2, sync).
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// wasmtime's `StoreLimits`, plus a note of whether a growth was refused: a
/// Rust guest whose allocation fails aborts with a plain `unreachable` trap,
/// and this flag is how the host tells that apart from any other trap.
pub(crate) struct MemoryCap {
    limits: StoreLimits,
    pub(crate) refused: bool,
}

impl MemoryCap {
    fn new(memory_bytes: usize) -> Self {
        MemoryCap {
            limits: StoreLimitsBuilder::new()
                .memory_size(memory_bytes)
                .instances(64)
                .tables(64)
                .memories(16)
                .table_elements(1 << 20)
                .build(),
            refused: false,
        }
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        self.refused |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}
