//! Metric names, in one place so dashboards and code agree.

/// Messages handed to plugins.
pub const MESSAGES_IN: &str = "kwasm_messages_in_total";
/// Records produced by plugins.
pub const MESSAGES_OUT: &str = "kwasm_messages_out_total";
/// Plugin failures, by kind.
pub const ERRORS: &str = "kwasm_plugin_errors_total";
/// Messages sent to a dead-letter topic, by kind.
pub const DEAD_LETTERED: &str = "kwasm_dead_lettered_total";
/// Seconds per plugin batch call.
pub const BATCH_SECONDS: &str = "kwasm_batch_seconds";
/// Messages of a partition not yet committed, per partition.
pub const LAG: &str = "kwasm_partition_lag";
/// Counter: registry records skipped as malformed or invalid, by `topic`
/// (`plugins`, `pipelines`, `members`). Anything above 0 means something
/// other than kwasm's API wrote the registry topics: check their ACLs.
pub const REGISTRY_RECORDS_SKIPPED: &str = "kwasm_registry_records_skipped_total";
