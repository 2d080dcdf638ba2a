//! The `tracing` layer that copies plugin log events into the logs
//! shipper's channel.

use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

/// Lines waiting for the shipper; beyond this they are dropped (and
/// counted), so a plugin flooding its log never blocks or grows the host.
pub const CHANNEL_LINES: usize = 16_384;

/// The target the runtime logs plugin lines under.
pub const PLUGIN_TARGET: &str = "kwasm::plugin";

/// A plugin log event as the runtime emitted it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawLine {
    /// When it was seen (ms since the epoch).
    pub time_ms: i64,
    /// Lower-case level.
    pub level: String,
    /// `plugin` field.
    pub plugin: String,
    /// `topic` field (empty: none).
    pub topic: String,
    /// `partition` field.
    pub partition: Option<i32>,
    /// `offset` field.
    pub offset: Option<i64>,
    /// `stream` field: `output` for stdout/stderr; `log` when absent and
    /// the event has an offset or topic from the `log` import.
    pub stream: Option<String>,
    /// The message.
    pub message: String,
}

static SINK: OnceLock<SyncSender<RawLine>> = OnceLock::new();

/// Opens the channel (once per process; `None` if already opened) and
/// returns its receiving end, for the shipper.
pub fn install_sink() -> Option<Receiver<RawLine>> {
    let (tx, rx) = sync_channel(CHANNEL_LINES);
    SINK.set(tx).ok().map(|()| rx)
}

/// Copies `kwasm::plugin` events into the sink once it is open; does
/// nothing (one atomic load) before.
#[derive(Debug, Default, Clone, Copy)]
pub struct PluginLogLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PluginLogLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let Some(sink) = SINK.get() else { return };
        let meta = event.metadata();
        if meta.target() != PLUGIN_TARGET {
            return;
        }
        let mut line = RawLine {
            time_ms: now_ms(),
            level: meta.level().as_str().to_ascii_lowercase(),
            ..RawLine::default()
        };
        event.record(&mut FieldsOf(&mut line));
        if let Err(TrySendError::Full(_)) = sink.try_send(line) {
            metrics::counter!(crate::metrics_names::PLUGIN_LOG_LINES_UNSHIPPED).increment(1);
        }
    }
}

struct FieldsOf<'a>(&'a mut RawLine);

impl Visit for FieldsOf<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "plugin" => value.clone_into(&mut self.0.plugin),
            "topic" => value.clone_into(&mut self.0.topic),
            "stream" => self.0.stream = Some(value.to_owned()),
            "message" => value.clone_into(&mut self.0.message),
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        match field.name() {
            "partition" => self.0.partition = i32::try_from(value).ok(),
            "offset" => self.0.offset = Some(value),
            _ => {}
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record_i64(field, i64::try_from(value).unwrap_or(i64::MAX));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `message` arrives as fmt::Arguments, `topic = %t` as a Display
        // wrapper: both print as the plain text.
        let text = format!("{value:?}");
        self.record_str(field, &text);
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    /// The layer reads the fields the runtime emits (host_state.rs's `log`
    /// import and guest_output.rs's stdout lines) into a RawLine.
    #[test]
    fn plugin_events_become_raw_lines_and_others_are_ignored() {
        let rx = install_sink().expect("the first sink in this test binary");
        let subscriber = tracing_subscriber::registry().with(PluginLogLayer);
        tracing::subscriber::with_default(subscriber, || {
            let topic = String::from("orders");
            let offset = Some(17i64);
            tracing::event!(target: "kwasm::plugin", tracing::Level::WARN,
                plugin = "tagger", topic, partition = 4, offset, "saw {}", "it");
            tracing::info!(target: "kwasm::plugin", plugin = "tagger", stream = "output", "printed");
            tracing::info!(target: "kwasm::other", plugin = "x", "not a plugin line");
        });
        let lines: Vec<RawLine> = rx.try_iter().collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            (
                lines[0].level.as_str(),
                lines[0].plugin.as_str(),
                lines[0].topic.as_str(),
                lines[0].partition,
                lines[0].offset,
                lines[0].message.as_str()
            ),
            ("warn", "tagger", "orders", Some(4), Some(17), "saw it")
        );
        assert_eq!(lines[1].stream.as_deref(), Some("output"));
        assert_eq!(lines[1].message, "printed");
        assert_eq!(lines[1].partition, None);
    }
}
