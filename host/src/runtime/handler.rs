//! [`PluginHandler`]: one plugin instance, owned by one partition worker,
//! reused across batches and replaced after any failure, or dropped to give
//! its memory back to the host's budget (the next batch rebuilds it).
//!
//! A healthy instance is also replaced at a batch boundary when its memory
//! has crossed the high-water mark, and a batch that runs out of memory on
//! an instance that had handled earlier batches runs once more on a fresh
//! one before it fails (`recycle`: why guests grow, and the rule).
//!
//! A Redpanda transform runs behind the same handler: its instance is a
//! suspended guest (`redpanda::RpInstance`) instead of a component, its
//! environment is built from the plugin config and the pipeline's outputs,
//! and its result is the same [`BatchOutput`], checked the same way.

use std::sync::Arc;

use wasmtime::{Store, Trap};

use super::batch::{BatchOutput, CheckError, InputBatch};
use super::bindings::Plugin;
use super::budget::{BudgetError, Reservation};
use super::error::{BatchContext, PluginError, PluginErrorKind};
use super::guest_output::GuestOutput;
use super::host_state::HostState;
use super::limiter::{InstanceLimiter, Storage};
use super::recycle::{self, Replaced};
use super::redpanda::{self, RpInstance, Stopped};
use super::{CompiledPlugin, Limits, PluginKind};
use crate::metrics_names as m;

/// Runs batches through one instance of a plugin.
///
/// Not `Sync`: exactly one worker owns it, which is what keeps a
/// partition's messages in order and a store's memory private.
pub struct PluginHandler {
    plugin: Arc<CompiledPlugin>,
    config: Vec<(String, String)>,
    limits: Limits,
    /// `limits.memory_bytes` of the host's plugin memory budget. Held
    /// whenever `instance` is `Some`; kept when a failed instance is
    /// dropped (its replacement needs it at once), given back by
    /// [`Self::release_memory`].
    reservation: Option<Reservation>,
    /// `None` after a failure or a release; the next batch instantiates
    /// afresh.
    instance: Option<Instance>,
    /// The same for a Redpanda transform.
    transform: Option<RpInstance>,
    /// The pipeline's declared output topics, default first: a Redpanda
    /// transform's `REDPANDA_OUTPUT_TOPIC_<i>` and the topics it may name.
    outputs: Arc<[String]>,
    /// Healthy instances replaced so far (high-water mark, or a memory
    /// limit hit after earlier batches): what tests and benches read.
    replaced: u64,
}

struct Instance {
    store: Store<HostState>,
    bindings: Plugin,
    /// Batches this instance has answered.
    batches: u64,
}

impl PluginHandler {
    /// A handler holding neither memory nor an instance yet.
    pub(crate) fn idle(
        plugin: Arc<CompiledPlugin>,
        config: Vec<(String, String)>,
        limits: Limits,
    ) -> Self {
        PluginHandler {
            plugin,
            config,
            limits,
            reservation: None,
            instance: None,
            transform: None,
            outputs: Arc::from([]),
            replaced: 0,
        }
    }

    /// Sets the pipeline's declared outputs, default first (what a Redpanda
    /// transform is told in `REDPANDA_OUTPUT_TOPIC_<i>` and may write to;
    /// a component ignores them). Without them a transform may name any
    /// topic, which only `kwasm test` relies on.
    pub fn with_output_topics(mut self, outputs: Vec<String>) -> Self {
        self.outputs = Arc::from(outputs);
        self
    }

    /// Instantiates now (and calls `init`), if there is no instance yet,
    /// waiting for memory if need be.
    pub fn start(&mut self) -> Result<(), PluginError> {
        if let PluginKind::RedpandaTransform(_) = &self.plugin.kind {
            // The input topic is known at the first batch (a regex
            // pipeline has several); this instance is rebuilt then if its
            // topic differs.
            if self.transform.is_none() {
                self.transform = Some(self.start_transform("")?);
            }
            return Ok(());
        }
        if self.instance.is_none() {
            self.instance = Some(self.instantiate()?);
        }
        Ok(())
    }

    /// Waits until this handler holds its share of the host's plugin memory
    /// budget. False when `cancelled` said stop first. A handler whose
    /// `memory_bytes` can never fit returns true at once: its next batch
    /// fails with an error saying so.
    pub fn wait_for_memory(&mut self, cancelled: &dyn Fn() -> bool) -> bool {
        if self.reservation.is_some() {
            return true;
        }
        match self
            .plugin
            .budget
            .reserve(self.limits.memory_bytes, cancelled)
        {
            Ok(r) => {
                self.reservation = Some(r);
                true
            }
            Err(BudgetError::NeverFits { .. }) => true,
            Err(BudgetError::Cancelled) => false,
        }
    }

    /// Drops the instance and gives its memory back to the host's budget.
    /// The next batch builds a new instance (and calls `init` again): plugin
    /// globals are a cache, not state.
    pub fn release_memory(&mut self) {
        self.instance = None;
        self.transform = None;
        self.reservation = None;
    }

    /// Whether the handler holds memory of the host's budget.
    pub fn holds_memory(&self) -> bool {
        self.reservation.is_some()
    }

    /// Bytes of memories and tables the current instance holds, if any (a
    /// Redpanda transform's store is inside its suspended call: `None`).
    pub fn instance_memory_bytes(&self) -> Option<usize> {
        self.instance
            .as_ref()
            .map(|i| i.store.data().limiter.used_bytes())
    }

    /// Healthy instances this handler replaced by fresh ones: past the
    /// memory high-water mark after a batch, or to run again a batch that
    /// ran out of memory after earlier batches.
    pub fn instances_replaced(&self) -> u64 {
        self.replaced
    }

    /// Whether another handler is waiting for memory of the host's budget.
    pub fn memory_contended(&self) -> bool {
        self.plugin.budget.contended()
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
    /// and the next call starts a fresh one. A batch that runs out of
    /// memory on an instance that had answered earlier batches runs once
    /// more on a fresh instance (its log lines are then logged twice); an
    /// instance past the memory high-water mark afterwards is dropped.
    pub fn handle_batch(&mut self, batch: &InputBatch) -> Result<BatchOutput, PluginError> {
        if let PluginKind::RedpandaTransform(_) = &self.plugin.kind {
            return self.handle_transform_batch(batch);
        }
        let mut instance = match self.instance.take() {
            Some(i) => i,
            None => self.instantiate_for(batch)?,
        };
        let result = match self.call(&mut instance, batch) {
            Err(PluginErrorKind::MemoryLimit { .. })
                if recycle::retry_on_fresh_instance(instance.batches) =>
            {
                self.note_replaced(&instance, batch, Replaced::MemoryLimit);
                drop(instance);
                instance = self.instantiate_for(batch)?;
                self.call(&mut instance, batch)
            }
            other => other,
        };
        match result {
            Ok(result) => {
                instance.batches += 1;
                // A bad answer does not corrupt the instance: keep it.
                self.keep_unless_over_high_water(instance, batch);
                self.check(result, batch)
            }
            Err(kind) => Err(PluginError {
                context: Box::new(self.context(batch)),
                kind,
            }),
        }
    }

    /// One call of `handle-batch` on `instance`, its failure classified.
    fn call(
        &self,
        instance: &mut Instance,
        batch: &InputBatch,
    ) -> Result<super::bindings::BatchResult, PluginErrorKind> {
        let state = instance.store.data_mut();
        if state.log.topic != batch.topic() {
            state.log.topic = batch.topic().to_owned();
        }
        state.log.partition = batch.partition();
        state.limiter.clear_refusal();
        instance
            .store
            .set_epoch_deadline(self.limits.deadline_ticks());
        let result = instance
            .bindings
            .kwasm_plugin_handler()
            .call_handle_batch(&mut instance.store, batch.as_wit());
        report_dropped_logs(instance.store.data(), &self.limits);
        result.map_err(|e| classify(&e, instance.store.data(), &self.limits))
    }

    /// A fresh instance, its failure given `batch`'s context.
    fn instantiate_for(&mut self, batch: &InputBatch) -> Result<Instance, PluginError> {
        self.instantiate().map_err(|e| PluginError {
            context: Box::new(self.context(batch)),
            kind: e.kind,
        })
    }

    /// Keeps `instance` for the next batch, unless its memory is past the
    /// high-water mark: then it is dropped here, at the batch boundary, and
    /// the next batch starts a fresh one (in the same reservation).
    fn keep_unless_over_high_water(&mut self, instance: Instance, batch: &InputBatch) {
        let used_bytes = instance.store.data().limiter.used_bytes();
        if recycle::over_high_water(
            used_bytes,
            self.limits.memory_bytes,
            self.limits.memory_high_water_percent,
        ) {
            self.note_replaced(&instance, batch, Replaced::HighWater);
        } else {
            self.instance = Some(instance);
        }
    }

    /// Counts and logs the replacement of a healthy instance.
    fn note_replaced(&mut self, instance: &Instance, batch: &InputBatch, why: Replaced) {
        self.replaced += 1;
        let plugin = self.plugin.name.as_str();
        metrics::counter!(m::PLUGIN_INSTANCES_REPLACED, "plugin" => plugin.to_owned(), "reason" => why.as_str())
            .increment(1);
        let used_bytes = instance.store.data().limiter.used_bytes();
        let high_water_bytes = recycle::high_water_bytes(
            self.limits.memory_bytes,
            self.limits.memory_high_water_percent,
        );
        let (topic, partition, batches) = (batch.topic(), batch.partition(), instance.batches);
        let memory_bytes = self.limits.memory_bytes;
        match why {
            Replaced::HighWater => tracing::info!(
                plugin,
                topic,
                partition,
                used_bytes,
                high_water_bytes,
                memory_bytes,
                batches,
                "plugin instance replaced: its memory is past the high-water mark \
                 (memory_high_water_percent of memory_bytes); the next batch starts a fresh one"
            ),
            Replaced::MemoryLimit => tracing::warn!(
                plugin,
                topic,
                partition,
                used_bytes,
                memory_bytes,
                batches,
                "plugin instance ran out of memory after earlier batches; \
                 running the batch again on a fresh instance"
            ),
        }
    }

    /// Checks a guest's answer to `batch` against the contract and limits.
    fn check(
        &self,
        result: super::bindings::BatchResult,
        batch: &InputBatch,
    ) -> Result<BatchOutput, PluginError> {
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
                CheckError::TooManyRecords { records, limit } => {
                    PluginErrorKind::TooManyRecords { records, limit }
                }
            },
        })
    }

    /// A batch through a Redpanda transform: the instance for the batch's
    /// topic (its environment names it), the guest run until it asks for
    /// the next batch, its records checked like a component's.
    fn handle_transform_batch(&mut self, batch: &InputBatch) -> Result<BatchOutput, PluginError> {
        let mut transform = match self.transform.take() {
            Some(t) if t.input_topic == batch.topic() => t,
            _ => self
                .start_transform(batch.topic())
                .map_err(|e| PluginError {
                    context: Box::new(self.context(batch)),
                    kind: e.kind,
                })?,
        };
        let result = transform.run(batch);
        report_dropped_output(
            &transform.output,
            &self.plugin.name,
            batch.topic(),
            batch.partition(),
            &self.limits,
        );
        match result {
            Ok(result) => {
                self.transform = Some(transform);
                self.check(result, batch)
            }
            Err(stopped) => Err(PluginError {
                context: Box::new(self.context(batch)),
                kind: self.stopped_kind(stopped, &transform.output, PluginErrorKind::Trap),
            }),
        }
    }

    /// A transform instance for `input_topic`, run up to its first wait for
    /// a batch, in this handler's memory reservation.
    fn start_transform(&mut self, input_topic: &str) -> Result<RpInstance, PluginError> {
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
        let PluginKind::RedpandaTransform(pre) = &self.plugin.kind else {
            return Err(fail(PluginErrorKind::Instantiate(
                "not a Redpanda transform".into(),
            )));
        };
        redpanda::check_env(&self.config)
            .map_err(|e| fail(PluginErrorKind::InitRejected(e.to_string())))?;
        if self.reservation.is_none() {
            let reservation = self
                .plugin
                .budget
                .reserve(self.limits.memory_bytes, &|| false)
                .map_err(|e| fail(PluginErrorKind::Instantiate(e.to_string())))?;
            self.reservation = Some(reservation);
        }
        let start = redpanda::Start {
            plugin: &self.plugin.name,
            user_env: &self.config,
            input_topic,
            outputs: self.outputs.clone(),
            limits: &self.limits,
        };
        match RpInstance::start(&self.plugin.engine, pre, start) {
            Ok(t) => {
                // What main() printed before its first batch.
                report_dropped_output(&t.output, &self.plugin.name, input_topic, -1, &self.limits);
                Ok(t)
            }
            Err((stopped, output)) => {
                report_dropped_output(&output, &self.plugin.name, input_topic, -1, &self.limits);
                Err(fail(self.stopped_kind(
                    stopped,
                    &output,
                    PluginErrorKind::Instantiate,
                )))
            }
        }
    }

    /// The error for a transform that stopped running.
    fn stopped_kind(
        &self,
        stopped: Stopped,
        output: &GuestOutput,
        other: fn(String) -> PluginErrorKind,
    ) -> PluginErrorKind {
        match stopped {
            Stopped::Failed(e, store) => {
                classify_parts(&e, &store.data().limiter, output, &self.limits, other)
            }
            Stopped::Returned => other(with_printed(
                "the transform's _start returned: a Redpanda transform loops over \
                 read_batch_header forever (call on_record_written at the end of main)"
                    .into(),
                output,
            )),
            Stopped::Lost => {
                other("the transform was suspended outside read_batch_header (a host bug)".into())
            }
        }
    }

    /// A fresh instance with `init` already called, in this handler's
    /// reservation (taken now, waiting if need be, when not held).
    fn instantiate(&mut self) -> Result<Instance, PluginError> {
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
        if self.reservation.is_none() {
            let reservation = self
                .plugin
                .budget
                .reserve(self.limits.memory_bytes, &|| false)
                .map_err(|e| fail(PluginErrorKind::Instantiate(e.to_string())))?;
            self.reservation = Some(reservation);
        }
        let state = HostState::new(Arc::from(self.plugin.name.as_str()), &self.limits);
        let mut store = Store::new(&self.plugin.engine, state);
        store.limiter(|s| &mut s.limiter);
        // A new store's deadline is "now": set it before instantiating, or
        // the start function itself is interrupted.
        store.set_epoch_deadline(self.limits.deadline_ticks());
        let PluginKind::Component(pre) = &self.plugin.kind else {
            return Err(fail(PluginErrorKind::Instantiate(
                "a Redpanda transform has no component instance".into(),
            )));
        };
        let bindings = pre.instantiate(&mut store).map_err(|e| {
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
        let result = bindings
            .kwasm_plugin_handler()
            .call_init(&mut store, &config);
        report_dropped_logs(store.data(), &self.limits);
        match result {
            Ok(Ok(())) => Ok(Instance {
                store,
                bindings,
                batches: 0,
            }),
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
    classify_parts(e, &state.limiter, &state.output, limits, other)
}

/// [`classify_or`] from the parts of a store's state both ABIs have.
fn classify_parts(
    e: &wasmtime::Error,
    limiter: &InstanceLimiter,
    output: &GuestOutput,
    limits: &Limits,
    other: fn(String) -> PluginErrorKind,
) -> PluginErrorKind {
    // A Redpanda transform's output crossing a cap traps in the host call.
    match e.downcast_ref::<redpanda::OutputLimit>() {
        Some(redpanda::OutputLimit::Bytes { bytes, limit }) => {
            return PluginErrorKind::OutputTooLarge {
                bytes: *bytes,
                limit_bytes: *limit,
                what: "per batch",
            };
        }
        Some(redpanda::OutputLimit::Records { records, limit }) => {
            return PluginErrorKind::TooManyRecords {
                records: *records,
                limit: *limit,
            };
        }
        None => {}
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginErrorKind::Timeout {
            limit_ms: limits.batch_timeout_ms,
        },
        Some(Trap::StackOverflow) => PluginErrorKind::StackOverflow,
        Some(Trap::MemoryOutOfBounds) if is_shadow_stack_overflow(e) => {
            PluginErrorKind::StackOverflow
        }
        // A Rust guest whose allocation is refused aborts (`unreachable`),
        // a hand-written one may trap otherwise: the limiter's note of a
        // refusal during this call says memory came first.
        _ if let Some(refusal) = limiter.refusal() => PluginErrorKind::MemoryLimit {
            limit_bytes: limits.memory_bytes,
            wanted_bytes: refusal.wanted_bytes,
            growing: match refusal.storage {
                Storage::Memory => "a memory",
                Storage::Table => "a table",
            },
        },
        _ => other(with_printed(format!("{e:#}"), output)),
    }
}

/// `reason`, followed by the last of what the guest printed, if anything.
fn with_printed(reason: String, output: &GuestOutput) -> String {
    let printed = output.recent();
    if printed.is_empty() {
        return reason;
    }
    format!(
        "{reason}; the plugin printed: {}",
        last_chars(&printed, 1000)
    )
}

/// Logs one summary line for the call if it logged beyond its limits, and
/// counts what was dropped.
fn report_dropped_logs(state: &HostState, limits: &Limits) {
    report_dropped_output(
        &state.output,
        &state.log.plugin,
        &state.log.topic,
        state.log.partition,
        limits,
    );
}

/// [`report_dropped_logs`] for one guest's output streams.
fn report_dropped_output(
    output: &GuestOutput,
    plugin: &str,
    topic: &str,
    partition: i32,
    limits: &Limits,
) {
    let dropped = output.finish_call();
    if dropped.lines == 0 {
        return;
    }
    metrics::counter!(m::PLUGIN_LOG_LINES_DROPPED, "plugin" => plugin.to_owned())
        .increment(dropped.lines);
    metrics::counter!(m::PLUGIN_LOG_BYTES_DROPPED, "plugin" => plugin.to_owned())
        .increment(dropped.bytes);
    tracing::warn!(
        target: "kwasm::plugin", plugin, topic, partition,
        dropped_lines = dropped.lines, dropped_bytes = dropped.bytes,
        max_log_lines = limits.max_log_lines, max_log_bytes = limits.max_log_bytes,
        "plugin log lines dropped: the call logged more than max_log_lines = {} or max_log_bytes = {}",
        limits.max_log_lines, limits.max_log_bytes
    );
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
