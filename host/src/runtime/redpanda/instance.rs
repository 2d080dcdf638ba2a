//! One running Redpanda transform: its store, the `redpanda_transform`
//! host functions, and the driver that hands it one batch at a time.
//!
//! A transform's `_start` never returns: it loops over
//! `read_batch_header`, reading and writing records in between. The host
//! runs `_start` with `call_async` on a wasmtime fiber inside a future the
//! instance owns. `read_batch_header` is the one async host function: it
//! ends the previous batch, then waits for the next. A future polled while
//! the guest waits returns `Pending`, and that is how the driver knows a
//! batch is done: [`RpInstance::run`] offers a batch and polls once; the
//! guest takes it, works, and comes back to `read_batch_header`, where the
//! fiber suspends and the poll returns. No executor, no thread, no waker
//! (nothing but the driver ever makes the guest's wait end).
//!
//! The future owns the store, so what the driver and the host functions
//! share is an [`Exchange`] behind a mutex (never contended: the guest runs
//! only inside the driver's poll). When the future completes, the guest has
//! trapped or exited, and the store comes back for the error to be
//! classified.
//!
//! Outputs are attributed as the broker attributes them: a record written
//! after `read_next_record` returned record `i` (and before the next record
//! or batch) is record `i`'s output. kwasm's limits apply on top: the epoch
//! deadline is set per batch when the guest takes it, memory through the
//! store's limiter, and the output caps as records are written (the call
//! that crosses one traps, so a guest cannot fill the host's memory).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use wasmtime::{AsContextMut, Caller, InstancePre, Linker, Memory, Store};

use super::abi::{self, EncodedBatch};
use crate::runtime::InputBatch;
use crate::runtime::Limits;
use crate::runtime::bindings::BatchResult;
use crate::runtime::guest_output::{GuestOutput, LogBudget};
use crate::runtime::limiter::InstanceLimiter;

/// The import module of the transform ABI.
pub(crate) const MODULE: &str = "redpanda_transform";

/// The functions of [`MODULE`] the broker provides (ABI versions 1 and 2
/// share them: the version functions only mark which SDK built the module).
pub(crate) const FUNCTIONS: [&str; 6] = [
    "check_abi_version_1",
    "check_abi_version_2",
    "read_batch_header",
    "read_next_record",
    "write_record",
    "write_record_with_options",
];

const NO_ACTIVE_TRANSFORM: i32 = -1;
const INVALID_BUFFER: i32 = -2;
const INVALID_WRITE: i32 = -3;

/// Data of one transform's store.
pub(crate) struct RpState {
    pub(crate) limiter: InstanceLimiter,
    /// stdout and stderr, bounded by the instance's log budget.
    pub(crate) output: GuestOutput,
    /// `KEY=VALUE` strings for `environ_get`.
    pub(crate) env: Vec<String>,
    /// `args_get`: the plugin's name, as the broker passes the transform's.
    pub(crate) args: Vec<String>,
    /// What the realtime clock says: the current record's timestamp.
    pub(crate) walltime_ms: i64,
    /// The monotonic clocks: +1 ms per read.
    pub(crate) monotonic_ns: u64,
    exchange: Arc<Mutex<Exchange>>,
    deadline_ticks: u64,
}

/// A trap the host raised because a batch's output crossed a cap.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub(crate) enum OutputLimit {
    #[error("the batch's output passed max_output_bytes = {limit}")]
    Bytes { bytes: usize, limit: usize },
    #[error("the batch's output passed max_output_records = {limit}")]
    Records { records: u64, limit: usize },
}

/// The guest's memory export, or a trap saying it has none.
pub(crate) fn guest_memory(c: &mut Caller<'_, RpState>) -> wasmtime::Result<Memory> {
    c.get_export("memory")
        .and_then(|e| e.into_memory())
        .ok_or_else(|| wasmtime::Error::msg("the transform exports no `memory`"))
}

/// What the driver and the guest's host calls share.
struct Exchange {
    batch: EncodedBatch,
    /// A batch waits for the guest to take it.
    offered: bool,
    /// The guest is inside a batch (between taking it and asking again).
    active: bool,
    /// The guest sits in `read_batch_header`.
    waiting: bool,
    /// The next record `read_next_record` returns.
    next_record: usize,
    /// The declared outputs, first the default; empty: any topic (only
    /// `kwasm test`, which has no pipeline).
    outputs: Arc<[String]>,
    out: OutputBuilder,
}

impl Exchange {
    /// The record outputs belong to now: the last one read (the first
    /// before any, as there is no earlier record to give them to).
    fn current(&self) -> usize {
        self.next_record.saturating_sub(1)
    }
}

/// Builds the kwasm batch result as the guest writes records.
struct OutputBuilder {
    result: BatchResult,
    max_output_bytes: usize,
    max_output_records: usize,
    records: u64,
}

impl OutputBuilder {
    fn reset(&mut self, inputs: usize) {
        let r = &mut self.result;
        r.record_counts.clear();
        r.record_counts.resize(inputs, 0);
        r.errors.clear();
        r.record_topics.clear();
        r.timestamps.clear();
        r.key_lengths.clear();
        r.value_lengths.clear();
        r.header_counts.clear();
        r.header_lengths.clear();
        r.topics.clear();
        r.data.clear();
        self.records = 0;
    }

    /// Appends a record for input `message`, in the kwasm layout (headers,
    /// then key, then value; no timestamp: the producer stamps it, as the
    /// broker stamps transform output with its own clock).
    fn push(
        &mut self,
        message: usize,
        topic: Option<&str>,
        p: &abi::Payload<'_>,
    ) -> Result<(), OutputLimit> {
        self.records += 1;
        if self.records > self.max_output_records as u64 {
            return Err(OutputLimit::Records {
                records: self.records,
                limit: self.max_output_records,
            });
        }
        let r = &mut self.result;
        let topic_index = r.topic_index(topic);
        r.record_topics.push(topic_index);
        r.timestamps.push(-1);
        for (name, value) in &p.headers {
            r.header_lengths.push(push_field(&mut r.data, Some(name)));
            r.header_lengths.push(push_field(&mut r.data, *value));
        }
        r.header_counts.push(p.headers.len() as u32);
        r.key_lengths.push(push_field(&mut r.data, p.key));
        r.value_lengths.push(push_field(&mut r.data, p.value));
        r.record_counts[message] += 1;
        if r.data.len() > self.max_output_bytes {
            return Err(OutputLimit::Bytes {
                bytes: r.data.len(),
                limit: self.max_output_bytes,
            });
        }
        Ok(())
    }
}

fn push_field(data: &mut Vec<u8>, b: Option<&[u8]>) -> i32 {
    match b {
        Some(b) => {
            data.extend_from_slice(b);
            b.len() as i32
        }
        None => -1,
    }
}

fn lock(exchange: &Mutex<Exchange>) -> MutexGuard<'_, Exchange> {
    // Poisoned only if a host call panicked; the batch then fails anyway.
    exchange.lock().unwrap_or_else(|p| p.into_inner())
}

/// The guest's `_start`, running: completes only when the guest traps or
/// exits, handing the store back.
type Running = Pin<Box<dyn Future<Output = (Store<RpState>, wasmtime::Result<()>)> + Send>>;

/// How a step of the guest ended.
pub(crate) enum Stopped {
    /// Trapped (or the host failed a call): the error and the store, for
    /// classification.
    Failed(wasmtime::Error, Box<Store<RpState>>),
    /// `_start` returned: a transform must never do that.
    Returned,
    /// Suspended somewhere other than waiting for a batch (no host call
    /// but `read_batch_header` waits, so this is a host bug).
    Lost,
}

/// One instance: the running guest and the exchange it shares.
pub(crate) struct RpInstance {
    running: Running,
    exchange: Arc<Mutex<Exchange>>,
    /// The guest's output streams (shared with its store), for the log
    /// summary and trap messages while the store is inside `running`.
    pub(crate) output: GuestOutput,
    /// The input topic its environment names.
    pub(crate) input_topic: String,
}

/// What an instance needs to start.
pub(crate) struct Start<'a> {
    pub plugin: &'a str,
    pub user_env: &'a [(String, String)],
    pub input_topic: &'a str,
    pub outputs: Arc<[String]>,
    pub limits: &'a Limits,
}

impl RpInstance {
    /// Instantiates and runs `_start` until the guest first asks for a
    /// batch. On failure, also what the guest printed (a Rust panic in
    /// `main` says why there).
    pub(crate) fn start(
        engine: &wasmtime::Engine,
        pre: &InstancePre<RpState>,
        s: Start<'_>,
    ) -> Result<Self, (Stopped, GuestOutput)> {
        let exchange = Arc::new(Mutex::new(Exchange {
            batch: EncodedBatch::default(),
            offered: false,
            active: false,
            waiting: false,
            next_record: 0,
            outputs: s.outputs.clone(),
            out: OutputBuilder {
                result: BatchResult::empty(),
                max_output_bytes: s.limits.max_output_bytes,
                max_output_records: s.limits.max_output_records,
                records: 0,
            },
        }));
        let budget = LogBudget::new(s.limits.max_log_lines, s.limits.max_log_bytes);
        let output = GuestOutput::new(Arc::from(s.plugin), "output", budget);
        let state = RpState {
            limiter: InstanceLimiter::new(s.limits.memory_bytes),
            output: output.clone(),
            env: abi::environment(s.user_env, s.input_topic, &s.outputs),
            args: vec![s.plugin.to_owned()],
            walltime_ms: 0,
            monotonic_ns: 0,
            exchange: exchange.clone(),
            deadline_ticks: s.limits.deadline_ticks(),
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limiter);
        // Start-up (main() up to its first read_batch_header) runs under
        // the batch deadline, as `init` does for components.
        store.set_epoch_deadline(s.limits.deadline_ticks());
        let pre = pre.clone();
        let running: Running = Box::pin(async move {
            let result = async {
                let instance = pre.instantiate_async(&mut store).await?;
                let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                start.call_async(&mut store, ()).await
            }
            .await;
            (store, result)
        });
        let mut instance = RpInstance {
            running,
            exchange,
            output,
            input_topic: s.input_topic.to_owned(),
        };
        match instance.step() {
            Ok(()) => Ok(instance),
            Err(stopped) => Err((stopped, instance.output)),
        }
    }

    /// Runs `batch` through the guest: the records it wrote, per input
    /// message, as a kwasm batch result (to be checked by the caller).
    pub(crate) fn run(&mut self, batch: &InputBatch) -> Result<BatchResult, Stopped> {
        {
            let mut ex = lock(&self.exchange);
            ex.batch.fill(batch);
            ex.offered = true;
        }
        self.step()?;
        // The result leaves with the batch (the pipeline reads it while
        // the guest waits); the next batch starts a new one.
        Ok(std::mem::replace(
            &mut lock(&self.exchange).out.result,
            BatchResult::empty(),
        ))
    }

    /// Polls the guest until it waits for a batch again.
    fn step(&mut self) -> Result<(), Stopped> {
        let mut cx = Context::from_waker(Waker::noop());
        match self.running.as_mut().poll(&mut cx) {
            Poll::Pending => {
                let ex = lock(&self.exchange);
                if ex.waiting && !ex.offered {
                    Ok(())
                } else {
                    Err(Stopped::Lost)
                }
            }
            Poll::Ready((_, Ok(()))) => Err(Stopped::Returned),
            Poll::Ready((store, Err(e))) => Err(Stopped::Failed(e, Box::new(store))),
        }
    }
}

/// Registers the `redpanda_transform` functions.
pub(crate) fn add_to_linker(linker: &mut Linker<RpState>) -> wasmtime::Result<()> {
    linker.func_wrap(MODULE, "check_abi_version_1", || {})?;
    linker.func_wrap(MODULE, "check_abi_version_2", || {})?;
    type HeaderPtrs = (u32, u32, u32, u32, u32, u32, u32, u32, u32, u32);
    linker.func_wrap_async(
        MODULE,
        "read_batch_header",
        |mut c: Caller<'_, RpState>, ptrs: HeaderPtrs| {
            Box::new(async move {
                let exchange = c.data().exchange.clone();
                {
                    // Calling again ends the batch in hand.
                    let mut ex = lock(&exchange);
                    ex.active = false;
                    ex.waiting = true;
                }
                std::future::poll_fn(|_| {
                    let mut ex = lock(&exchange);
                    if !ex.offered {
                        return Poll::Pending;
                    }
                    let inputs = ex.batch.records.len();
                    ex.offered = false;
                    ex.waiting = false;
                    ex.active = true;
                    ex.next_record = 0;
                    ex.out.reset(inputs);
                    Poll::Ready(())
                })
                .await;
                let (h, max_payload) = {
                    let ex = lock(&exchange);
                    (ex.batch.header, ex.batch.max_payload)
                };
                let ticks = c.data().deadline_ticks;
                c.as_context_mut().set_epoch_deadline(ticks);
                let state = c.data_mut();
                state.walltime_ms = h.base_timestamp;
                state.limiter.clear_refusal();
                let (p0, p1, p2, p3, p4, p5, p6, p7, p8, p9) = ptrs;
                let memory = guest_memory(&mut c)?;
                let data = memory.data_mut(&mut c);
                put(data, p0, &h.base_offset.to_le_bytes())?;
                put(data, p1, &h.record_count.to_le_bytes())?;
                put(data, p2, &h.partition_leader_epoch.to_le_bytes())?;
                put(data, p3, &h.attributes.to_le_bytes())?;
                put(data, p4, &h.last_offset_delta.to_le_bytes())?;
                put(data, p5, &h.base_timestamp.to_le_bytes())?;
                put(data, p6, &h.max_timestamp.to_le_bytes())?;
                put(data, p7, &h.producer_id.to_le_bytes())?;
                put(data, p8, &h.producer_epoch.to_le_bytes())?;
                put(data, p9, &h.base_sequence.to_le_bytes())?;
                Ok(max_payload as i32)
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "read_next_record",
        |mut c: Caller<'_, RpState>, attrs: u32, ts: u32, offset: u32, buf: u32, len: u32| {
            let exchange = c.data().exchange.clone();
            let mut ex = lock(&exchange);
            if !ex.active || ex.next_record >= ex.batch.records.len() {
                return Ok(NO_ACTIVE_TRANSFORM);
            }
            let i = ex.next_record;
            let record = ex.batch.records[i];
            if (len as usize) < record.len {
                return Ok(INVALID_BUFFER);
            }
            ex.next_record += 1;
            c.data_mut().walltime_ms = record.timestamp_ms;
            let memory = guest_memory(&mut c)?;
            let data = memory.data_mut(&mut c);
            put(data, attrs, &[0u8])?;
            put(data, ts, &record.timestamp_ms.to_le_bytes())?;
            put(data, offset, &record.offset.to_le_bytes())?;
            put(data, buf, ex.batch.payload(i))?;
            Ok(record.len as i32)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "write_record",
        |mut c: Caller<'_, RpState>, buf: u32, len: u32| write_record(&mut c, buf, len, None),
    )?;
    linker.func_wrap(
        MODULE,
        "write_record_with_options",
        |mut c: Caller<'_, RpState>, buf: u32, len: u32, opts: u32, opts_len: u32| {
            write_record(&mut c, buf, len, Some((opts, opts_len)))
        },
    )?;
    Ok(())
}

/// `write_record` and `write_record_with_options`: -1 outside a batch, -2
/// for a payload or options the broker refuses, -3 for a topic that is not
/// one of the declared outputs, else the payload's length.
fn write_record(
    c: &mut Caller<'_, RpState>,
    buf: u32,
    len: u32,
    options: Option<(u32, u32)>,
) -> wasmtime::Result<i32> {
    let exchange = c.data().exchange.clone();
    let mut ex = lock(&exchange);
    if !ex.active {
        return Ok(NO_ACTIVE_TRANSFORM);
    }
    let memory = guest_memory(c)?;
    let data = memory.data(&*c);
    let bytes = super::wasi::slice(data, buf as usize, len as usize)?;
    let Some(payload) = abi::read_payload(bytes) else {
        return Ok(INVALID_BUFFER);
    };
    let topic = match options {
        None => None,
        Some((at, n)) => {
            let opts = super::wasi::slice(data, at as usize, n as usize)?;
            match abi::read_write_options(opts) {
                Ok(topic) => topic,
                Err(()) => return Ok(INVALID_BUFFER),
            }
        }
    };
    if let Some(t) = topic
        && !ex.outputs.is_empty()
        && !ex.outputs.iter().any(|o| o == t)
    {
        return Ok(INVALID_WRITE);
    }
    let message = ex.current();
    ex.out.push(message, topic, &payload)?;
    Ok(len as i32)
}

fn put(data: &mut [u8], at: u32, bytes: &[u8]) -> wasmtime::Result<()> {
    super::wasi::slice_mut(data, at as usize, bytes.len())?.copy_from_slice(bytes);
    Ok(())
}
