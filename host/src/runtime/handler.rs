//! [`PluginHandler`]: one plugin instance, owned by one partition worker,
//! reused across batches and replaced after any failure.

use std::sync::Arc;

use wasmtime::{Store, Trap};

use super::batch::{BatchOutput, CheckError, InputBatch};
use super::bindings::Plugin;
use super::error::{BatchContext, PluginError, PluginErrorKind};
use super::host_state::HostState;
use super::{CompiledPlugin, Limits};

/// Runs batches through one instance of a plugin.
///
/// Not `Sync`: exactly one worker owns it, which is what keeps a
/// partition's messages in order and a store's memory private.
pub struct PluginHandler {
    plugin: Arc<CompiledPlugin>,
    config: Vec<(String, String)>,
    limits: Limits,
    /// `None` after a failure; the next batch instantiates afresh.
    instance: Option<Instance>,
}

struct Instance {
    store: Store<HostState>,
    bindings: Plugin,
}

impl PluginHandler {
    pub(crate) fn new(
        plugin: Arc<CompiledPlugin>,
        config: Vec<(String, String)>,
        limits: Limits,
    ) -> Result<Self, PluginError> {
        let mut handler = PluginHandler {
            plugin,
            config,
            limits,
            instance: None,
        };
        handler.instance = Some(handler.instantiate()?);
        Ok(handler)
    }

    /// The plugin this handler runs.
    pub fn plugin(&self) -> &Arc<CompiledPlugin> {
        &self.plugin
    }

    /// The limits it runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Runs `batch`. On any error but a bad answer the instance is dropped
    /// and the next call starts a fresh one.
    pub fn handle_batch(&mut self, batch: &InputBatch) -> Result<BatchOutput, PluginError> {
        let mut instance = match self.instance.take() {
            Some(i) => i,
            None => self.instantiate().map_err(|e| PluginError {
                context: Box::new(self.context(batch)),
                kind: e.kind,
            })?,
        };
        let state = instance.store.data_mut();
        if state.log.topic != batch.topic() {
            state.log.topic = batch.topic().to_owned();
        }
        state.log.partition = batch.partition();
        instance
            .store
            .set_epoch_deadline(self.limits.deadline_ticks());
        let result = instance
            .bindings
            .kwasm_plugin_handler()
            .call_handle_batch(&mut instance.store, batch.as_wit());
        match result {
            Ok(result) => {
                // A bad answer does not corrupt the instance: keep it.
                self.instance = Some(instance);
                BatchOutput::check(result, batch.len(), &self.limits).map_err(|e| PluginError {
                    context: Box::new(self.context(batch)),
                    kind: match e {
                        CheckError::Bad(m) => PluginErrorKind::BadOutput(m),
                        CheckError::TooLarge {
                            bytes,
                            limit_bytes,
                            what,
                        } => PluginErrorKind::OutputTooLarge {
                            bytes,
                            limit_bytes,
                            what,
                        },
                    },
                })
            }
            Err(e) => Err(PluginError {
                context: Box::new(self.context(batch)),
                kind: classify(&e, instance.store.data(), &self.limits),
            }),
        }
    }

    /// A fresh instance with `init` already called.
    fn instantiate(&self) -> Result<Instance, PluginError> {
        let fail = |kind| PluginError {
            context: Box::new(BatchContext {
                plugin: self.plugin.name.clone(),
                digest: self.plugin.digest.clone(),
                topic: String::new(),
                partition: -1,
                offsets: None,
            }),
            kind,
        };
        let state = HostState::new(
            Arc::from(self.plugin.name.as_str()),
            self.limits.memory_bytes,
        );
        let mut store = Store::new(&self.plugin.engine, state);
        store.limiter(|s| &mut s.limiter);
        // A new store's deadline is "now": set it before instantiating, or
        // the start function itself is interrupted.
        store.set_epoch_deadline(self.limits.deadline_ticks());
        let bindings = self.plugin.pre.instantiate(&mut store).map_err(|e| {
            fail(classify_or(
                &e,
                store.data(),
                &self.limits,
                PluginErrorKind::Instantiate,
            ))
        })?;
        store.set_epoch_deadline(self.limits.deadline_ticks());
        let config: Vec<(&str, &str)> = self
            .config
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match bindings
            .kwasm_plugin_handler()
            .call_init(&mut store, &config)
        {
            Ok(Ok(())) => Ok(Instance { store, bindings }),
            Ok(Err(message)) => Err(fail(PluginErrorKind::InitRejected(message))),
            Err(e) => Err(fail(classify(&e, store.data(), &self.limits))),
        }
    }

    fn context(&self, batch: &InputBatch) -> BatchContext {
        BatchContext {
            plugin: self.plugin.name.clone(),
            digest: self.plugin.digest.clone(),
            topic: batch.topic().to_owned(),
            partition: batch.partition(),
            offsets: batch.offsets(),
        }
    }
}

/// Maps a failed call to the limit or fault behind it.
fn classify(e: &wasmtime::Error, state: &HostState, limits: &Limits) -> PluginErrorKind {
    classify_or(e, state, limits, PluginErrorKind::Trap)
}

fn classify_or(
    e: &wasmtime::Error,
    state: &HostState,
    limits: &Limits,
    other: fn(String) -> PluginErrorKind,
) -> PluginErrorKind {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginErrorKind::Timeout {
            limit_ms: limits.batch_timeout_ms,
        },
        Some(Trap::StackOverflow) => PluginErrorKind::StackOverflow,
        Some(Trap::MemoryOutOfBounds) if is_shadow_stack_overflow(e) => {
            PluginErrorKind::StackOverflow
        }
        // A Rust guest whose allocation is refused aborts (`unreachable`);
        // the limiter's note says the refusal came first.
        _ if state.limiter.refused => PluginErrorKind::MemoryLimit {
            limit_bytes: limits.memory_bytes,
        },
        _ => {
            let printed = state.output.recent();
            let mut reason = format!("{e:#}");
            if !printed.is_empty() {
                reason = format!(
                    "{reason}; the plugin printed: {}",
                    last_chars(&printed, 1000)
                );
            }
            other(reason)
        }
    }
}

/// Rust (and C) guests keep their locals on a "shadow stack" in linear
/// memory that grows down from a fixed size (1 MiB by default). Overflowing
/// it wraps the 32-bit stack pointer below zero, so the next store faults at
/// an address of 4 GiB or more, which no 32-bit linear memory has: that
/// signature means stack overflow, not a wild pointer. wasmtime exposes the
/// fault address only in the trap's text ("memory fault at wasm address
/// 0x100000418 ..."), hence the parsing.
fn is_shadow_stack_overflow(e: &wasmtime::Error) -> bool {
    let text = format!("{e:#}");
    let Some(rest) = text.split("wasm address 0x").nth(1) else {
        return false;
    };
    let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    u64::from_str_radix(&hex, 16).is_ok_and(|addr| addr >= 1 << 32)
}

fn last_chars(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    &s[start..]
}
