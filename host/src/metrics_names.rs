//! Metric names, in one place so dashboards and code agree.

/// Messages handed to plugins.
pub const MESSAGES_IN: &str = "kwasm_messages_in_total";
/// Records produced by plugins.
pub const MESSAGES_OUT: &str = "kwasm_messages_out_total";
/// Plugin failures, by kind.
pub const ERRORS: &str = "kwasm_plugin_errors_total";
/// Messages sent to a dead-letter topic, by kind.
pub const DEAD_LETTERED: &str = "kwasm_dead_lettered_total";
/// Histogram: seconds per plugin batch call (buckets: [`SECONDS_BUCKETS`]).
pub const BATCH_SECONDS: &str = "kwasm_batch_seconds";
/// Messages of a partition not yet committed, per partition.
pub const LAG: &str = "kwasm_partition_lag";
/// Gauge: partitions of a pipeline on this host that stopped advancing
/// (the plugin cannot be instantiated, or a delivery failed for good with
/// no dead letter to stand in). Anything above 0 needs an operator; the
/// reasons are in `/v1/assignments` and `/readyz`.
pub const PARTITIONS_STALLED: &str = "kwasm_partitions_stalled";
/// Counter: dead letters sent for output records the broker rejected
/// after delivery (`output-rejected`), by pipeline.
pub const DELIVERY_REJECTED: &str = "kwasm_delivery_rejected_total";
/// Counter: registry records skipped as malformed or invalid, by `topic`
/// (`plugins`, `pipelines`, `members`). Anything above 0 means something
/// other than kwasm's API wrote the registry topics: check their ACLs.
pub const REGISTRY_RECORDS_SKIPPED: &str = "kwasm_registry_records_skipped_total";
/// Gauge: bytes of plugin code the registry holds in memory: live
/// versions (once per digest) plus chunks waiting for the rest of their
/// version. Follows the live plugins, not what was ever uploaded.
pub const REGISTRY_BYTES: &str = "kwasm_registry_bytes";
/// Counter: incomplete plugin versions whose chunks were dropped because
/// too many bytes or versions waited for missing chunks or manifests
/// (more uploads in flight than the bound, or records written by
/// something other than kwasm).
pub const REGISTRY_CHUNKS_DROPPED: &str = "kwasm_registry_chunks_dropped_total";
/// Counter: version claims this host's uploads lost to another upload of
/// the same name (each is retried with the next number).
pub const REGISTRY_CLAIMS_LOST: &str = "kwasm_registry_claims_lost_total";
/// The host-wide plugin memory budget (`host.max_plugin_memory_bytes`).
pub const PLUGIN_MEMORY_BUDGET_BYTES: &str = "kwasm_plugin_memory_budget_bytes";
/// Bytes of the budget reserved by live plugin instances.
pub const PLUGIN_MEMORY_RESERVED_BYTES: &str = "kwasm_plugin_memory_reserved_bytes";
/// Times a plugin instance had to wait for the budget.
pub const PLUGIN_MEMORY_WAITS: &str = "kwasm_plugin_memory_waits_total";
/// Seconds an instance waited for the budget.
pub const PLUGIN_MEMORY_WAIT_SECONDS: &str = "kwasm_plugin_memory_wait_seconds";
/// Instances dropped to give their memory to a waiting partition, by pipeline.
pub const PLUGIN_INSTANCES_RELEASED: &str = "kwasm_plugin_instances_released_total";
/// Healthy plugin instances replaced by fresh ones, by plugin and `reason`
/// (`memory-high-water`: past `limits.memory_high_water_percent` after a
/// batch; `memory-limit`: a batch ran out of memory after earlier batches
/// and runs again on a fresh instance).
pub const PLUGIN_INSTANCES_REPLACED: &str = "kwasm_plugin_instances_replaced_total";
/// Plugin log lines (log import, stdout, stderr) dropped over the per-batch
/// limits, by plugin.
pub const PLUGIN_LOG_LINES_DROPPED: &str = "kwasm_plugin_log_lines_dropped_total";
/// Bytes of those dropped lines, by plugin.
pub const PLUGIN_LOG_BYTES_DROPPED: &str = "kwasm_plugin_log_bytes_dropped_total";
/// Counter: plugin log lines not written to the logs topic (the shipper's
/// channel or the producer's queue was full). Only with
/// `registry.plugin_logs`; the host's own log still has every line.
pub const PLUGIN_LOG_LINES_UNSHIPPED: &str = "kwasm_plugin_log_lines_unshipped_total";
/// Counter: admin API calls refused before any work, by `reason`
/// (`unauthorized`: no or a wrong token; `too_large`: a body over its
/// route's limit). A climbing `unauthorized` is someone guessing tokens.
pub const ADMIN_REFUSED: &str = "kwasm_admin_refused_total";
/// Counter: group describes made for `.../members` (librdkafka's
/// DescribeConsumerGroups: ConsumerGroupDescribe, or DescribeGroups for a
/// classic group), by `result` (`ok`, `error`: then the members shown are
/// the published ones); at most one per group per 2 s however often the
/// endpoint is polled.
pub const ADMIN_GROUP_DESCRIBES: &str = "kwasm_admin_group_describes_total";
/// Counter: transactions an exactly-once pipeline committed, by pipeline.
pub const TRANSACTIONS_COMMITTED: &str = "kwasm_transactions_committed_total";
/// Counter: transactions aborted (and their partitions rewound and redone),
/// by pipeline. A steady climb means the same work keeps failing: the
/// host's log says why.
pub const TRANSACTIONS_ABORTED: &str = "kwasm_transactions_aborted_total";
/// Seconds from closing a transaction (no batch starts) to the next one
/// opening: flush, offsets, commit.
pub const TRANSACTION_COMMIT_SECONDS: &str = "kwasm_transaction_commit_seconds";

/// Bucket bounds (seconds) of every `*_seconds` histogram: 100 µs to 30 s,
/// wide enough for a passthrough batch and for a batch near its timeout.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// The Prometheus exporter as the host installs it. Timings are histograms
/// (`_bucket`, `_sum`, `_count`), not the exporter's default summaries:
/// quantiles of a summary cannot be added up across hosts, buckets can
/// (`histogram_quantile(0.99, sum by (le) (rate(kwasm_batch_seconds_bucket[5m])))`).
pub fn prometheus_builder() -> metrics_exporter_prometheus::PrometheusBuilder {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            SECONDS_BUCKETS,
        )
        .expect("the bucket list is not empty")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_render_as_histograms_with_buckets() {
        let recorder = prometheus_builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!(BATCH_SECONDS, "pipeline" => "p").record(0.003);
            metrics::histogram!(BATCH_SECONDS, "pipeline" => "p").record(0.2);
        });
        let text = handle.render();
        assert!(
            text.contains("# TYPE kwasm_batch_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(r#"kwasm_batch_seconds_bucket{pipeline="p",le="0.005"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kwasm_batch_seconds_bucket{pipeline="p",le="0.25"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kwasm_batch_seconds_count{pipeline="p"} 2"#),
            "{text}"
        );
        assert!(!text.contains("quantile="), "no summary quantiles: {text}");
    }
}
