//! The per-store state: an empty WASI context, the instance's memory
//! limiter, the plugin's output streams, and the context attached to the
//! plugin's log lines.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};
use wasmtime_wasi::clocks::WasiClocksCtxView;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock::Host as MonotonicClock;
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};
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
    /// The longest one clock wait may last (see [`bounded_wait`]).
    max_wait: Duration,
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
            max_wait: Duration::from_millis(limits.batch_timeout_ms),
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

/// The one linker of the host: kwasm's log import plus WASI (p2, sync),
/// its monotonic clock's subscriptions bounded by [`bounded_wait`].
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap(
        "subscribe-duration",
        |store, (nanos,): (u64,)| -> wasmtime::Result<(Resource<DynPollable>,)> {
            Ok((bounded_wait(store, Duration::from_nanos(nanos))?,))
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |mut store, (when,): (u64,)| -> wasmtime::Result<(Resource<DynPollable>,)> {
            let state: &mut HostState = store.data_mut();
            let now = MonotonicClock::now(&mut WasiClocksCtxView {
                ctx: state.wasi.clocks(),
                table: &mut state.table,
            })?;
            let wait = Duration::from_nanos(when.saturating_sub(now));
            Ok((bounded_wait(store, wait)?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(linker)
}

/// The monotonic clock interface as wasmtime-wasi defines it; guests that
/// import an older 0.2 version are linked to it by semver.
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// A clock subscription that fires after `wait`, if that fits in the
/// plugin's deadline. Epoch interruption stops a guest only while it runs
/// wasm: one blocked in the host (`std::thread::sleep`, `time.sleep`, a poll
/// on a clock) runs none, so an unbounded sleep held its partition and its
/// call permit for as long as it asked. A wait longer than the whole batch
/// deadline can never end in time: it fires at once and the call's epoch
/// deadline is moved to now, so the guest traps with `timeout` at its next
/// epoch check, as it resumes (`tests/sandbox.rs`). A shorter wait is
/// unchanged; should it outlast what is left of the deadline, the guest
/// traps as it resumes, so a call never overruns by more than one deadline.
/// The only other waits a guest can make are on its stdout and stderr, which
/// never block (`GuestOutput`).
fn bounded_wait(
    mut store: wasmtime::StoreContextMut<'_, HostState>,
    mut wait: Duration,
) -> wasmtime::Result<Resource<DynPollable>> {
    if wait > store.data().max_wait {
        store.set_epoch_deadline(0);
        wait = Duration::ZERO;
    }
    let state = store.data_mut();
    let sleep = state
        .table
        .push(Sleep(tokio::time::Instant::now() + wait))?;
    subscribe(&mut state.table, sleep)
}

/// A wait until an instant (a `wasi:io/poll` pollable).
struct Sleep(tokio::time::Instant);

#[async_trait::async_trait]
impl Pollable for Sleep {
    async fn ready(&mut self) {
        tokio::time::sleep_until(self.0).await;
    }
}

/// The largest index `<= at` that starts a character of `s`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    (0..=at.min(s.len()))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}
