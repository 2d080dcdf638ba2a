//! The per-store state: an empty WASI context, the instance's memory
//! limiter, the plugin's output streams, and the context attached to the
//! plugin's log lines.

use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::Limits;
use super::bindings::{Level, Plugin, kwasm};
use super::guest_output::{GuestOutput, LogBudget, MAX_LINE_BYTES};
use super::limiter::InstanceLimiter;

/// Data owned by one `Store`: one instance of one plugin.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: InstanceLimiter,
    pub(crate) log: LogContext,
    /// The guest's stdout and stderr, kept to quote in trap errors; it also
    /// holds the log budget the `log` import shares.
    pub(crate) output: GuestOutput,
}

/// What the host attaches to a plugin's log lines.
pub(crate) struct LogContext {
    pub(crate) plugin: Arc<str>,
    pub(crate) topic: String,
    pub(crate) partition: i32,
}

impl HostState {
    pub(crate) fn new(plugin: Arc<str>, limits: &Limits) -> Self {
        // stdout and stderr share one buffer so their lines stay in order.
        let budget = LogBudget::new(limits.max_log_lines, limits.max_log_bytes);
        let output = GuestOutput::new(plugin.clone(), "output", budget);
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
            limiter: InstanceLimiter::new(limits.memory_bytes),
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
    fn log(&mut self, level: Level, offset: Option<i64>, mut message: String) {
        if message.len() > MAX_LINE_BYTES {
            let keep = floor_char_boundary(&message, MAX_LINE_BYTES);
            let cut = message.len() - keep;
            message.truncate(keep);
            message.push_str(&format!(" [{cut} bytes cut]"));
        }
        if !self.output.admit_log_line(message.len()) {
            return;
        }
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

/// The largest index `<= at` that starts a character of `s`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    (0..=at.min(s.len()))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}
