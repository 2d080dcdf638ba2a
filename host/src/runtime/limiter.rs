//! [`InstanceLimiter`]: the per-instance memory budget. `Limits::memory_bytes`
//! bounds the SUM of every linear memory and every table of one instance
//! (one `Store`), whatever the number of core modules inside the component.
//!
//! wasmtime asks the store's limiter before creating or growing any memory
//! or table of the store, so one counter of approved bytes sees everything a
//! plugin can allocate inside wasm. A table element is counted at
//! [`TABLE_ELEMENT_BYTES`], the pointer wasmtime stores per element. The
//! numbers of core instances, memories and tables per store are capped too
//! ([`MAX_INSTANCES`], [`MAX_MEMORIES`], [`MAX_TABLES`]): each costs host
//! memory beyond what the byte count sees (metadata, guard regions).
//!
//! Invariant: `used_bytes` is the size of all memories and tables of the
//! store, as approved; a growth wasmtime then fails (over a declared maximum,
//! or the OS refused) is given back through `*_grow_failed`.

use wasmtime::ResourceLimiter;

/// Bytes one table element is counted at: wasmtime keeps a pointer per
/// element (see `ResourceLimiter::table_growing`).
pub const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();
/// Core module instances per store. A Rust component built for
/// wasm32-wasip2 has about five (its code, the WASI adapter, shims); Go and
/// JavaScript components about as many; a Python one (componentize-py) 38,
/// since libpython, libc and its other libraries are separate modules.
pub const MAX_INSTANCES: usize = 64;
/// Linear memories per store (a Rust component has one or two).
pub const MAX_MEMORIES: usize = 8;
/// Tables per store (a Rust component has a few: its own, the shims').
pub const MAX_TABLES: usize = 32;

/// What kind of storage a refused growth was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Storage {
    Memory,
    Table,
}

/// A growth the limiter refused: what, and the total it would have made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) storage: Storage,
    /// Bytes of all memories and tables had the growth been allowed.
    pub(crate) wanted_bytes: usize,
}

/// Counts the bytes of every memory and table of one store against one cap.
#[derive(Debug)]
pub(crate) struct InstanceLimiter {
    limit_bytes: usize,
    used_bytes: usize,
    /// The last approved growth, given back if wasmtime reports it failed.
    pending_bytes: usize,
    /// The first refusal since [`Self::clear_refusal`]: a Rust guest whose
    /// allocation is refused aborts with a plain `unreachable` trap, and this
    /// is how the host tells that apart from any other trap.
    refused: Option<Refusal>,
}

impl InstanceLimiter {
    pub(crate) fn new(limit_bytes: usize) -> Self {
        InstanceLimiter {
            limit_bytes,
            used_bytes: 0,
            pending_bytes: 0,
            refused: None,
        }
    }

    /// Bytes of memories and tables the instance holds now.
    pub(crate) fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    /// The refusal that happened during the current call, if any.
    pub(crate) fn refusal(&self) -> Option<Refusal> {
        self.refused
    }

    /// Forgets an earlier refusal, at the start of each call: a guest that
    /// survived a refused growth (it got -1 and coped) must not have a later,
    /// unrelated trap blamed on memory.
    pub(crate) fn clear_refusal(&mut self) {
        self.refused = None;
    }

    /// Approves growing by `delta_bytes` if the total stays within the cap.
    fn grow(&mut self, storage: Storage, delta_bytes: usize) -> bool {
        let wanted_bytes = self.used_bytes.saturating_add(delta_bytes);
        if wanted_bytes > self.limit_bytes {
            self.refused.get_or_insert(Refusal {
                storage,
                wanted_bytes,
            });
            self.pending_bytes = 0;
            return false;
        }
        self.used_bytes = wanted_bytes;
        self.pending_bytes = delta_bytes;
        true
    }

    /// The approved growth did not happen: give its bytes back.
    fn grow_failed(&mut self) {
        self.used_bytes -= std::mem::take(&mut self.pending_bytes);
    }
}

impl ResourceLimiter for InstanceLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // wasmtime itself refuses growth past a declared maximum (and then
        // calls `memory_grow_failed`), so only the budget is checked here.
        Ok(self.grow(Storage::Memory, desired.saturating_sub(current)))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed();
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let elements = desired.saturating_sub(current);
        Ok(self.grow(Storage::Table, elements.saturating_mul(TABLE_ELEMENT_BYTES)))
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed();
        Ok(())
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 64 << 10;

    fn grown(l: &mut InstanceLimiter, current: usize, desired: usize) -> bool {
        l.memory_growing(current, desired, None)
            .expect("never errs")
    }

    #[test]
    fn memories_share_one_budget() {
        let mut l = InstanceLimiter::new(10 * PAGE);
        // Two memories at 60 % each: the second does not fit.
        assert!(grown(&mut l, 0, 6 * PAGE));
        assert!(!grown(&mut l, 0, 6 * PAGE));
        assert_eq!(
            l.refusal(),
            Some(Refusal {
                storage: Storage::Memory,
                wanted_bytes: 12 * PAGE
            })
        );
        assert_eq!(l.used_bytes(), 6 * PAGE);
        // The rest of the budget is still usable.
        assert!(grown(&mut l, 0, 4 * PAGE));
        assert_eq!(l.used_bytes(), 10 * PAGE);
    }

    #[test]
    fn tables_count_at_a_pointer_per_element() {
        let mut l = InstanceLimiter::new(8 * PAGE);
        assert!(grown(&mut l, 0, 4 * PAGE));
        let elements = 4 * PAGE / TABLE_ELEMENT_BYTES;
        assert!(l.table_growing(0, elements, None).expect("never errs"));
        assert_eq!(l.used_bytes(), 8 * PAGE);
        assert!(
            !l.table_growing(elements, elements + 1, None)
                .expect("never errs")
        );
        assert_eq!(
            l.refusal(),
            Some(Refusal {
                storage: Storage::Table,
                wanted_bytes: 8 * PAGE + TABLE_ELEMENT_BYTES
            })
        );
    }

    #[test]
    fn a_growth_that_fails_afterwards_is_given_back() {
        let mut l = InstanceLimiter::new(8 * PAGE);
        assert!(grown(&mut l, PAGE, 3 * PAGE));
        l.memory_grow_failed(wasmtime::Error::msg("over the declared maximum"))
            .expect("never errs");
        assert_eq!(l.used_bytes(), 0);
        // A failure report without an approved growth changes nothing.
        l.table_grow_failed(wasmtime::Error::msg("overflow"))
            .expect("never errs");
        assert_eq!(l.used_bytes(), 0);
    }

    #[test]
    fn the_first_refusal_is_kept_until_cleared() {
        let mut l = InstanceLimiter::new(PAGE);
        assert!(!grown(&mut l, 0, 2 * PAGE));
        assert!(!grown(&mut l, 0, 3 * PAGE));
        assert_eq!(l.refusal().map(|r| r.wanted_bytes), Some(2 * PAGE));
        l.clear_refusal();
        assert_eq!(l.refusal(), None);
        assert!(grown(&mut l, 0, PAGE));
    }
}
