//! [`MemoryBudget`]: the host-wide budget for plugin memory
//! (`host.max_plugin_memory_bytes`), so that partitions × instances can never
//! add up to more than the host can hold.
//!
//! Policy (see DESIGN.md, "Limits"):
//! - An instance can only exist while its handler holds a [`Reservation`] of
//!   the instance's whole `memory_bytes` (the per-instance limiter keeps the
//!   instance within it), taken before instantiating.
//! - A handler that cannot reserve waits, in arrival order (a ticket queue:
//!   a large request is not overtaken forever by small ones), instead of
//!   allocating and letting the kernel OOM-kill the host.
//! - While anyone waits ([`MemoryBudget::contended`]), partition workers
//!   give their reservation back after each batch and when idle, dropping
//!   the instance; the next batch instantiates a new one from the
//!   `InstancePre` (about 20 µs plus the plugin's `init`). This is why plugin
//!   globals are a cache, not state.
//!
//! Invariant: `reserved_bytes <= limit_bytes`, always; a request larger than
//! the whole budget is refused at once ([`BudgetError::NeverFits`]).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::metrics_names as m;

/// How often a waiter re-checks its cancel condition.
const CANCEL_POLL: Duration = Duration::from_millis(20);

/// The host-wide plugin memory budget. Shared by every handler of a
/// [`Runtime`](super::Runtime).
#[derive(Debug)]
pub struct MemoryBudget {
    limit_bytes: usize,
    state: Mutex<BudgetState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct BudgetState {
    reserved_bytes: usize,
    /// Tickets of the waiters, in arrival order; only the front may take.
    queue: VecDeque<u64>,
    next_ticket: u64,
}

/// Bytes taken from a [`MemoryBudget`]; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

/// Why a reservation was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// The request is larger than the whole budget: waiting cannot help.
    #[error(
        "its memory_bytes limit of {bytes} bytes is more than the host's whole plugin memory \
         budget (host.max_plugin_memory_bytes = {limit_bytes})"
    )]
    NeverFits {
        /// Bytes asked for.
        bytes: usize,
        /// The budget.
        limit_bytes: usize,
    },
    /// The caller gave up while waiting.
    #[error("gave up waiting for plugin memory")]
    Cancelled,
}

impl BudgetState {
    /// Whether the waiter holding `ticket` (or a newcomer, `None`, who may
    /// only go first when nobody waits) may take `bytes` now.
    fn may_take(&self, ticket: Option<u64>, bytes: usize, limit_bytes: usize) -> bool {
        let turn = match ticket {
            Some(t) => self.queue.front() == Some(&t),
            None => self.queue.is_empty(),
        };
        turn && self.reserved_bytes + bytes <= limit_bytes
    }
}

impl MemoryBudget {
    /// A budget of `limit_bytes`.
    pub fn new(limit_bytes: usize) -> Arc<Self> {
        metrics::gauge!(m::PLUGIN_MEMORY_BUDGET_BYTES).set(limit_bytes as f64);
        Arc::new(MemoryBudget {
            limit_bytes,
            state: Mutex::new(BudgetState::default()),
            changed: Condvar::new(),
        })
    }

    /// The budget's size.
    pub fn limit_bytes(&self) -> usize {
        self.limit_bytes
    }

    /// Bytes reserved right now.
    pub fn reserved_bytes(&self) -> usize {
        self.lock().reserved_bytes
    }

    /// Whether someone is waiting for memory: holders of idle reservations
    /// should give them back.
    pub fn contended(&self) -> bool {
        !self.lock().queue.is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, BudgetState> {
        // The state is two numbers and a queue, consistent between
        // statements; a panic elsewhere cannot leave it half-updated.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `bytes`, waiting in arrival order for others to give memory
    /// back. `cancelled` is polled while waiting; when it says true the
    /// wait ends with [`BudgetError::Cancelled`].
    pub fn reserve(
        self: &Arc<Self>,
        bytes: usize,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Reservation, BudgetError> {
        if bytes > self.limit_bytes {
            return Err(BudgetError::NeverFits {
                bytes,
                limit_bytes: self.limit_bytes,
            });
        }
        let mut state = self.lock();
        if state.may_take(None, bytes, self.limit_bytes) {
            return Ok(self.take(state, bytes));
        }
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queue.push_back(ticket);
        metrics::counter!(m::PLUGIN_MEMORY_WAITS).increment(1);
        let started = Instant::now();
        loop {
            state = self
                .changed
                .wait_timeout(state, CANCEL_POLL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            if state.may_take(Some(ticket), bytes, self.limit_bytes) {
                state.queue.pop_front();
                metrics::histogram!(m::PLUGIN_MEMORY_WAIT_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                // The next in line may fit in what is left.
                self.changed.notify_all();
                return Ok(self.take(state, bytes));
            }
            if cancelled() {
                state.queue.retain(|&t| t != ticket);
                self.changed.notify_all();
                return Err(BudgetError::Cancelled);
            }
        }
    }

    fn take(self: &Arc<Self>, mut state: MutexGuard<'_, BudgetState>, bytes: usize) -> Reservation {
        state.reserved_bytes += bytes;
        metrics::gauge!(m::PLUGIN_MEMORY_RESERVED_BYTES).set(state.reserved_bytes as f64);
        Reservation {
            budget: self.clone(),
            bytes,
        }
    }

    fn give_back(&self, bytes: usize) {
        let mut state = self.lock();
        state.reserved_bytes -= bytes;
        metrics::gauge!(m::PLUGIN_MEMORY_RESERVED_BYTES).set(state.reserved_bytes as f64);
        drop(state);
        self.changed.notify_all();
    }
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// The default `host.max_plugin_memory_bytes`: half of the memory this
/// process may use, the smaller of its cgroup's limit (v2 `memory.max`, v1
/// `memory.limit_in_bytes`) and the machine's `MemTotal`. The other half is
/// left to librdkafka's queues, batches in flight, and the host itself.
/// Falls back to 1 GiB when neither can be read.
pub fn default_plugin_memory_bytes() -> usize {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let cgroup = read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .and_then(|text| parse_cgroup_limit(&text));
    let machine = read("/proc/meminfo").and_then(|text| parse_mem_total(&text));
    half_of_smallest(cgroup, machine)
}

fn half_of_smallest(cgroup: Option<u64>, machine: Option<u64>) -> usize {
    const FALLBACK: u64 = 2 << 30;
    let usable = match (cgroup, machine) {
        (Some(c), Some(m)) => c.min(m),
        (Some(x), None) | (None, Some(x)) => x,
        (None, None) => FALLBACK,
    };
    usize::try_from(usable / 2).unwrap_or(usize::MAX)
}

/// A cgroup memory limit file: a byte count, or `max` (no limit). cgroup
/// v1 writes "no limit" as a huge number, which `MemTotal` then undercuts.
fn parse_cgroup_limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `MemTotal:  24683652 kB` from /proc/meminfo, in bytes.
fn parse_mem_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    const NEVER: &dyn Fn() -> bool = &|| false;

    #[test]
    fn reservations_add_up_to_the_limit_and_are_given_back() {
        let budget = MemoryBudget::new(100);
        let a = budget.reserve(60, NEVER).expect("fits");
        let b = budget.reserve(40, NEVER).expect("fits");
        assert_eq!(budget.reserved_bytes(), 100);
        drop(a);
        assert_eq!(budget.reserved_bytes(), 40);
        drop(b);
        assert_eq!(budget.reserved_bytes(), 0);
    }

    #[test]
    fn a_request_larger_than_the_budget_is_refused_at_once() {
        let budget = MemoryBudget::new(100);
        assert_eq!(
            budget.reserve(101, NEVER).map(|r| r.bytes()),
            Err(BudgetError::NeverFits {
                bytes: 101,
                limit_bytes: 100
            })
        );
    }

    #[test]
    fn a_waiter_gets_memory_when_it_is_given_back() {
        let budget = MemoryBudget::new(100);
        let held = budget.reserve(80, NEVER).expect("fits");
        let waiter = {
            let budget = budget.clone();
            std::thread::spawn(move || budget.reserve(50, NEVER).map(|r| r.bytes()))
        };
        while !budget.contended() {
            std::thread::yield_now();
        }
        assert_eq!(budget.reserved_bytes(), 80, "the waiter took nothing yet");
        drop(held);
        assert_eq!(waiter.join().expect("no panic"), Ok(50));
        assert!(!budget.contended());
    }

    #[test]
    fn waiters_are_served_in_arrival_order() {
        let budget = MemoryBudget::new(100);
        let held = budget.reserve(100, NEVER).expect("fits");
        let order = Arc::new(Mutex::new(Vec::new()));
        let spawn = |name: &'static str, bytes: usize| {
            let (budget, order) = (budget.clone(), order.clone());
            std::thread::spawn(move || {
                let r = budget.reserve(bytes, NEVER).expect("served");
                order.lock().expect("lock").push(name);
                // Hold it briefly so the next waiter must wait for it.
                std::thread::sleep(Duration::from_millis(30));
                drop(r);
            })
        };
        let big = spawn("big", 100);
        while !budget.contended() {
            std::thread::yield_now();
        }
        let small = spawn("small", 10);
        // The small one would fit beside nothing either way; it must not go
        // before the big one that came first.
        std::thread::sleep(Duration::from_millis(50));
        drop(held);
        big.join().expect("no panic");
        small.join().expect("no panic");
        assert_eq!(*order.lock().expect("lock"), vec!["big", "small"]);
    }

    #[test]
    fn a_cancelled_waiter_leaves_the_queue() {
        let budget = MemoryBudget::new(100);
        let _held = budget.reserve(100, NEVER).expect("fits");
        let stop = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (budget, stop) = (budget.clone(), stop.clone());
            std::thread::spawn(move || {
                budget
                    .reserve(10, &|| stop.load(Ordering::Acquire))
                    .map(|r| r.bytes())
            })
        };
        while !budget.contended() {
            std::thread::yield_now();
        }
        stop.store(true, Ordering::Release);
        assert_eq!(
            waiter.join().expect("no panic"),
            Err(BudgetError::Cancelled)
        );
        assert!(!budget.contended());
        assert_eq!(budget.reserved_bytes(), 100);
    }

    #[test]
    fn the_default_is_half_of_the_smaller_of_cgroup_and_machine() {
        let gib = 1u64 << 30;
        assert_eq!(half_of_smallest(Some(4 * gib), Some(16 * gib)), 2 << 30);
        assert_eq!(half_of_smallest(Some(u64::MAX / 2), Some(8 * gib)), 4 << 30);
        assert_eq!(half_of_smallest(None, Some(8 * gib)), 4 << 30);
        assert_eq!(half_of_smallest(None, None), 1 << 30);
        assert_eq!(parse_cgroup_limit("max\n"), None);
        assert_eq!(parse_cgroup_limit("536870912\n"), Some(512 << 20));
        assert_eq!(
            parse_mem_total("MemFree: 1 kB\nMemTotal:       24683652 kB\n"),
            Some(24_683_652 * 1024)
        );
        assert_eq!(parse_mem_total("garbage"), None);
    }
}
