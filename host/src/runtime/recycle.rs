//! When a healthy instance is replaced by a fresh one (pure, unit-tested).
//!
//! Linear memory never shrinks, and some guests' memory grows with every
//! batch although nothing is wrong with any message: componentize-py
//! (0.25.1) never frees the copy it makes of each returned `bytes`, so a
//! Python instance leaks its batches' output bytes; SpiderMonkey
//! (componentize-js) collects garbage when its own heap heuristics say so,
//! which can be after the instance has reached `limits.memory_bytes`. Left
//! alone, such an instance would reach its limit in the middle of some
//! innocent batch, trap, and that message would be dead-lettered.
//!
//! So the handler looks at the instance's memory between batches: past the
//! high-water mark (`limits.memory_high_water_percent` of
//! `limits.memory_bytes`) the instance is dropped and the next batch runs
//! on a fresh one, `init` called again with the same config. And a batch
//! that runs out of memory on an instance that had handled earlier batches
//! is run once more on a fresh instance before the error counts: only a
//! batch that exhausts a fresh instance's memory by itself fails.

/// Why an instance was replaced, as the `reason` label of
/// `kwasm_plugin_instances_replaced_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replaced {
    /// Its memory crossed the high-water mark after a batch.
    HighWater,
    /// A batch ran out of memory on it after earlier batches; the batch
    /// runs again on a fresh instance.
    MemoryLimit,
}

impl Replaced {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Replaced::HighWater => "memory-high-water",
            Replaced::MemoryLimit => "memory-limit",
        }
    }
}

/// The high-water mark in bytes: `percent` of `limit_bytes`, rounded down.
pub(crate) fn high_water_bytes(limit_bytes: usize, percent: u32) -> usize {
    // u128: `limit_bytes * percent` cannot overflow whatever the inputs.
    (limit_bytes as u128 * u128::from(percent.min(100)) / 100) as usize
}

/// Whether an instance using `used_bytes` of its memory (all memories and
/// tables) should be replaced before its next batch.
pub(crate) fn over_high_water(used_bytes: usize, limit_bytes: usize, percent: u32) -> bool {
    used_bytes > high_water_bytes(limit_bytes, percent)
}

/// Whether a batch that failed with the memory limit should run again on a
/// fresh instance: when the instance it failed on had handled `batches`
/// earlier batches (what those left behind may be what ran out). A fresh
/// instance's failure is the batch's own.
pub(crate) fn retry_on_fresh_instance(batches_before: u64) -> bool {
    batches_before > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn the_mark_is_a_fraction_of_the_limit() {
        assert_eq!(high_water_bytes(64 * MIB, 75), 48 * MIB);
        assert_eq!(high_water_bytes(64 * MIB, 95), 63_753_420);
        assert_eq!(high_water_bytes(100, 75), 75);
        // Rounded down, never over the limit.
        assert_eq!(high_water_bytes(101, 75), 75);
        assert_eq!(high_water_bytes(usize::MAX, 100), usize::MAX);
        assert_eq!(high_water_bytes(64 * MIB, 200), 64 * MIB);
    }

    #[test]
    fn an_instance_is_replaced_only_past_the_mark() {
        let limit = 64 * MIB;
        assert!(!over_high_water(0, limit, 75));
        assert!(!over_high_water(15 * MIB, limit, 75));
        assert!(
            !over_high_water(48 * MIB, limit, 75),
            "at the mark is not past it"
        );
        assert!(over_high_water(48 * MIB + 1, limit, 75));
        assert!(over_high_water(limit, limit, 75));
        assert!(over_high_water(limit, limit, 10));
        assert!(!over_high_water(6 * MIB, limit, 10));
    }

    #[test]
    fn only_a_fresh_instance_running_out_of_memory_is_the_batch_s_fault() {
        assert!(!retry_on_fresh_instance(0));
        assert!(retry_on_fresh_instance(1));
        assert!(retry_on_fresh_instance(10_000));
    }

    #[test]
    fn reasons_are_stable_metric_labels() {
        assert_eq!(Replaced::HighWater.as_str(), "memory-high-water");
        assert_eq!(Replaced::MemoryLimit.as_str(), "memory-limit");
    }
}
