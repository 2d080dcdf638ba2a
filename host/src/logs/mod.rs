//! Plugin logs as a stream: every plugin log line (the `log` import,
//! stdout, stderr, after the per-batch limits) also goes to a logs topic
//! (`registry.logs_topic`, default `_kwasm_logs`; off unless
//! `registry.plugin_logs`), keyed by pipeline, so `kwasm logs PIPELINE -f`
//! and the dashboard show lines from every host. Redpanda does the same
//! with `_redpanda.transform_logs` and `rpk transform logs`.
//!
//! How a line gets there, without the runtime knowing about Kafka: the
//! runtime emits each line as a `tracing` event with target
//! `kwasm::plugin` (fields `plugin`, `topic`, `partition`, `offset`);
//! [`PluginLogLayer`], installed with the process's subscriber, copies
//! those events into a bounded channel once [`install_sink`] has opened it
//! (never blocking a plugin call: a full channel drops the line and counts
//! it); the shipper thread ([`topic::start`]) names the pipeline and
//! plugin version from the host's own view (the pipeline running that
//! plugin on that partition) and produces one JSON record per line.
//!
//! The topic belongs to the control plane ([`crate::topics::ControlPlane`]
//! lists it): no pipeline may read or write it, so a plugin cannot forge
//! another's log lines or read them. It has time retention
//! (`registry.logs_retention_ms`), not compaction: logs are a stream.

pub mod layer;
pub mod repeats;
pub mod topic;

pub use layer::{PluginLogLayer, install_sink};
pub use topic::{LogTail, TailedLine};

use serde::{Deserialize, Serialize};

/// One plugin log line as the logs topic holds it (JSON; the record key
/// is `pipeline`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When the host saw it (ms since the epoch).
    pub time_ms: i64,
    /// The host that ran the plugin.
    pub host: String,
    /// The pipeline, when the host could tell (`None`: the line came from a
    /// plugin no running pipeline uses any more).
    pub pipeline: Option<String>,
    /// The plugin's name.
    pub plugin: String,
    /// Its version, for registry plugins (`None` for a `.wasm` path).
    pub version: Option<u32>,
    /// The input topic of the batch, when known (stdout/stderr lines carry
    /// none).
    pub topic: Option<String>,
    /// Its partition, likewise.
    pub partition: Option<i32>,
    /// The offset the plugin named (the `log` import's argument).
    pub offset: Option<i64>,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// `log`, `stdout`/`stderr` (`output`), or `host` for the host's own
    /// note about the plugin (lines dropped over a limit).
    pub stream: String,
    /// The line.
    pub message: String,
}

impl LogLine {
    /// The line as `kwasm logs` prints it.
    pub fn render(&self) -> String {
        let time = format_time_ms(self.time_ms);
        let version = self.version.map(|v| format!("@{v}")).unwrap_or_default();
        let at = match (&self.topic, self.partition, self.offset) {
            (Some(t), Some(p), Some(o)) => format!(" {t}/{p}@{o}"),
            (Some(t), Some(p), None) => format!(" {t}/{p}"),
            _ => String::new(),
        };
        format!(
            "{time} {host} {plugin}{version}{at} {level}: {message}",
            host = self.host,
            plugin = self.plugin,
            level = self.level.to_uppercase(),
            message = self.message
        )
    }
}

/// `HH:MM:SS.mmm` (UTC) of a time in ms since the epoch.
fn format_time_ms(ms: i64) -> String {
    let day_ms = ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_renders_with_its_place_and_version() {
        let line = LogLine {
            time_ms: 86_400_000 * 3 + 3_723_004,
            host: "host-b".into(),
            pipeline: Some("tagging".into()),
            plugin: "tagger".into(),
            version: Some(2),
            topic: Some("orders".into()),
            partition: Some(4),
            offset: Some(17),
            level: "info".into(),
            stream: "log".into(),
            message: "saw offset 17".into(),
        };
        assert_eq!(
            line.render(),
            "01:02:03.004 host-b tagger@2 orders/4@17 INFO: saw offset 17"
        );
        let stdout = LogLine {
            version: None,
            topic: None,
            partition: None,
            offset: None,
            ..line
        };
        assert_eq!(
            stdout.render(),
            "01:02:03.004 host-b tagger INFO: saw offset 17"
        );
    }
}
