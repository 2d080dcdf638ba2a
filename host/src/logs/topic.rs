//! The logs topic's two ends on a host: the shipper (plugin lines out, one
//! JSON record each, keyed by pipeline) and the tail (every host's lines
//! back in, the newest per pipeline kept for `GET
//! /v1/pipelines/{name}/logs`).
//!
//! Both use the control plane's client settings (`kafka.properties`, then
//! `registry.properties`), like the registry: the data plane's principal
//! needs no right on the topic. Each runs on a thread of its own for the
//! life of the process.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;

use super::LogLine;
use super::layer::RawLine;
use crate::config::{KafkaConfig, RegistryConfig};
use crate::pipeline::manager::ManagerView;

/// Lines kept per pipeline by the tail.
pub const TAIL_LINES_PER_PIPELINE: usize = 1_000;
/// How far back the tail starts, per partition of the logs topic.
const TAIL_START_BACK: i64 = 1_000;
/// How long a pipeline lookup is reused by the shipper.
const RESOLVE_TTL: Duration = Duration::from_secs(1);

/// Why the logs topic could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// Creating the topic failed.
    #[error("cannot create the plugin logs topic `{topic}`: {reason}")]
    Topic {
        /// The topic (`registry.logs_topic`).
        topic: String,
        /// Why.
        reason: String,
    },
    /// A client could not be created.
    #[error("cannot create the plugin logs {client}: {source}")]
    Client {
        /// Which one.
        client: &'static str,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
    /// The channel from the tracing layer was opened before (a second host
    /// in one process).
    #[error("plugin logs are already shipped by another host in this process")]
    SinkTaken,
}

fn control_plane_config(kafka: &KafkaConfig, registry: &RegistryConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    for (key, value) in kafka.properties.iter().chain(&registry.properties) {
        config.set(key, value);
    }
    config
}

/// Creates the topic if asked to, then starts the shipper and the tail.
pub async fn start(
    kafka: &KafkaConfig,
    registry: &RegistryConfig,
    host: &str,
    view: ManagerView,
) -> Result<LogTail, LogsError> {
    let config = control_plane_config(kafka, registry);
    let topic = registry.logs_topic.clone();
    if registry.create_topics {
        let retention = registry.logs_retention_ms.to_string();
        let new = NewTopic::new(
            &topic,
            registry.logs_partitions,
            TopicReplication::Fixed(registry.replication_factor),
        )
        .set("cleanup.policy", "delete")
        .set("retention.ms", &retention);
        crate::kafka::create_topics(&config, &[new])
            .await
            .map_err(|reason| LogsError::Topic {
                topic: topic.clone(),
                reason,
            })?;
    }
    let rx = super::install_sink().ok_or(LogsError::SinkTaken)?;
    let mut producer_config = config.clone();
    producer_config
        .set("linger.ms", "20")
        .set("client.id", format!("{host}-logs"));
    let producer: BaseProducer = producer_config
        .create()
        .map_err(|source| LogsError::Client {
            client: "producer",
            source,
        })?;
    let shipper = Shipper {
        producer,
        topic: topic.clone(),
        host: host.to_owned(),
        view,
        resolved: None,
    };
    std::thread::Builder::new()
        .name("kwasm-logs-ship".into())
        .spawn(move || shipper.run(rx))
        .map_err(|e| LogsError::Topic {
            topic: topic.clone(),
            reason: format!("cannot start the shipper thread: {e}"),
        })?;
    let mut tail_config = config;
    tail_config
        .set("group.id", format!("{host}-logs-tail"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .set("client.id", format!("{host}-logs-tail"));
    let consumer: BaseConsumer = tail_config.create().map_err(|source| LogsError::Client {
        client: "tail consumer",
        source,
    })?;
    let tail = LogTail::default();
    let state = tail.clone();
    let t = topic.clone();
    std::thread::Builder::new()
        .name("kwasm-logs-tail".into())
        .spawn(move || follow(consumer, &t, state))
        .map_err(|e| LogsError::Topic {
            topic,
            reason: format!("cannot start the tail thread: {e}"),
        })?;
    Ok(tail)
}

/// One running pipeline as the shipper matches lines to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// Pipeline name.
    pub pipeline: String,
    /// The plugin it runs now.
    pub plugin: String,
    /// Its registry version.
    pub version: Option<u32>,
    /// Partitions it holds here.
    pub partitions: Vec<(String, i32)>,
}

/// The pipeline a plugin line belongs to: the one running `plugin` on
/// `topic`/`partition` here; for a line without a partition (stdout,
/// stderr), the first pipeline running `plugin`. The version is the one
/// the pipeline runs now (during a hot deploy's switch a partition's last
/// old-version batch may be labelled with the new one).
pub fn resolve<'a>(
    running: &'a [Running],
    plugin: &str,
    topic: &str,
    partition: Option<i32>,
) -> Option<&'a Running> {
    let with_plugin = || running.iter().filter(|r| r.plugin == plugin);
    match partition {
        Some(p) if !topic.is_empty() => with_plugin()
            .find(|r| r.partitions.iter().any(|(t, q)| t == topic && *q == p))
            .or_else(|| with_plugin().next()),
        _ => with_plugin().next(),
    }
}

struct Shipper {
    producer: BaseProducer,
    topic: String,
    host: String,
    view: ManagerView,
    /// The running pipelines as last read, and when.
    resolved: Option<(Instant, Vec<Running>)>,
}

impl Shipper {
    fn running(&mut self) -> Vec<Running> {
        if let Some((at, r)) = &self.resolved
            && at.elapsed() < RESOLVE_TTL
        {
            return r.clone();
        }
        let running: Vec<Running> = self
            .view
            .running()
            .iter()
            .map(|s| {
                let (d, _) = s.deployment().current();
                Running {
                    pipeline: s.pipeline.clone(),
                    plugin: d.plugin.name().to_owned(),
                    version: d.version,
                    partitions: s
                        .partitions()
                        .into_iter()
                        .map(|p| (p.topic, p.partition))
                        .collect(),
                }
            })
            .collect();
        self.resolved = Some((Instant::now(), running.clone()));
        running
    }

    fn run(mut self, rx: Receiver<RawLine>) {
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(raw) => self.ship(raw),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.producer.poll(Duration::ZERO);
        }
        let _ = self.producer.flush(Duration::from_secs(2));
    }

    fn ship(&mut self, raw: RawLine) {
        let running = self.running();
        let found = resolve(&running, &raw.plugin, &raw.topic, raw.partition);
        let line = LogLine {
            time_ms: raw.time_ms,
            host: self.host.clone(),
            pipeline: found.map(|r| r.pipeline.clone()),
            plugin: raw.plugin,
            version: found.and_then(|r| r.version),
            topic: (!raw.topic.is_empty()).then_some(raw.topic),
            partition: raw.partition.filter(|p| *p >= 0),
            offset: raw.offset,
            level: raw.level,
            stream: raw.stream.unwrap_or_else(|| "log".to_owned()),
            message: raw.message,
        };
        let key = line.pipeline.clone().unwrap_or_default();
        let Ok(value) = serde_json::to_vec(&line) else {
            return;
        };
        if self
            .producer
            .send(BaseRecord::to(&self.topic).key(&key).payload(&value))
            .is_err()
        {
            metrics::counter!(crate::metrics_names::PLUGIN_LOG_LINES_UNSHIPPED).increment(1);
        }
    }
}

/// A line as the tail keeps it: with a cursor the API hands out, so a
/// follower asks only for what came after.
#[derive(Debug, Clone, Serialize)]
pub struct TailedLine {
    /// Increases by one per line this host's tail read.
    pub seq: u64,
    /// The line.
    #[serde(flatten)]
    pub line: LogLine,
    /// As `kwasm logs` prints it.
    pub text: String,
}

/// The newest lines of every pipeline, as read back from the logs topic.
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct LogTail {
    state: Arc<Mutex<TailState>>,
}

#[derive(Default)]
struct TailState {
    next_seq: u64,
    by_pipeline: BTreeMap<String, VecDeque<TailedLine>>,
}

impl LogTail {
    /// Adds a line (the tail thread; tests).
    pub fn push(&self, line: LogLine) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.next_seq += 1;
        let seq = state.next_seq;
        let key = line.pipeline.clone().unwrap_or_default();
        let lines = state.by_pipeline.entry(key).or_default();
        if lines.len() == TAIL_LINES_PER_PIPELINE {
            lines.pop_front();
        }
        let text = line.render();
        lines.push_back(TailedLine { seq, line, text });
    }

    /// Up to `limit` lines of `pipeline` after cursor `after` (the newest
    /// ones when more wait), oldest first, and the cursor to ask with next.
    pub fn lines(&self, pipeline: &str, after: u64, limit: usize) -> (Vec<TailedLine>, u64) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let cursor = state.next_seq;
        let Some(lines) = state.by_pipeline.get(pipeline) else {
            return (Vec::new(), cursor);
        };
        let newer: Vec<&TailedLine> = lines.iter().filter(|l| l.seq > after).collect();
        let skip = newer.len().saturating_sub(limit);
        (newer[skip..].iter().map(|l| (*l).clone()).collect(), cursor)
    }
}

/// Reads the logs topic from near its end, forever.
fn follow(consumer: BaseConsumer, topic: &str, tail: LogTail) {
    let mut warned = false;
    let start = loop {
        match start_positions(&consumer, topic) {
            Ok(tpl) => break tpl,
            Err(e) => {
                // Once at WARN (a missing topic with create_topics off),
                // then quietly: the retry goes on every second.
                if warned {
                    tracing::debug!(topic, error = %e, "plugin logs tail: cannot read the topic yet; retrying");
                } else {
                    tracing::warn!(topic, error = %e, "plugin logs tail: cannot read the topic yet; retrying every second");
                    warned = true;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    if let Err(e) = consumer.assign(&start) {
        tracing::warn!(topic, error = %e, "plugin logs tail: cannot assign; no lines will show");
        return;
    }
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => match m.payload().map(serde_json::from_slice::<LogLine>) {
                Some(Ok(line)) => tail.push(line),
                _ => metrics::counter!(crate::metrics_names::REGISTRY_RECORDS_SKIPPED, "topic" => "logs")
                    .increment(1),
            },
            Some(Err(e)) => tracing::debug!(topic, error = %e, "plugin logs tail"),
            None => {}
        }
    }
}

fn start_positions(consumer: &BaseConsumer, topic: &str) -> Result<TopicPartitionList, String> {
    let timeout = Duration::from_secs(5);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| e.to_string())?;
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .ok_or_else(|| format!("no topic `{topic}`"))?;
    let mut tpl = TopicPartitionList::new();
    for p in t.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), timeout)
            .map_err(|e| e.to_string())?;
        tpl.add_partition_offset(
            topic,
            p.id(),
            Offset::Offset((high - TAIL_START_BACK).max(low)),
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(tpl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(pipeline: &str, plugin: &str, parts: &[(&str, i32)]) -> Running {
        Running {
            pipeline: pipeline.into(),
            plugin: plugin.into(),
            version: Some(1),
            partitions: parts.iter().map(|(t, p)| ((*t).to_owned(), *p)).collect(),
        }
    }

    #[test]
    fn a_line_goes_to_the_pipeline_running_its_plugin_on_its_partition() {
        let r = vec![
            running("a", "tagger", &[("in", 0)]),
            running("b", "tagger", &[("in", 1), ("other", 0)]),
            running("c", "redact", &[("in", 2)]),
        ];
        let name = |plugin, topic, partition| {
            resolve(&r, plugin, topic, partition).map(|r| r.pipeline.as_str())
        };
        assert_eq!(name("tagger", "in", Some(1)), Some("b"));
        assert_eq!(name("tagger", "other", Some(0)), Some("b"));
        assert_eq!(name("tagger", "in", Some(0)), Some("a"));
        // Partition just released: still the plugin's pipeline.
        assert_eq!(name("tagger", "in", Some(9)), Some("a"));
        // stdout lines have no partition.
        assert_eq!(name("redact", "", None), Some("c"));
        assert_eq!(name("unknown", "in", Some(0)), None);
    }

    fn line(pipeline: &str, message: &str) -> LogLine {
        LogLine {
            time_ms: 0,
            host: "h".into(),
            pipeline: Some(pipeline.into()),
            plugin: "p".into(),
            version: None,
            topic: None,
            partition: None,
            offset: None,
            level: "info".into(),
            stream: "log".into(),
            message: message.into(),
        }
    }

    #[test]
    fn the_tail_hands_out_lines_after_a_cursor_newest_kept() {
        let tail = LogTail::default();
        tail.push(line("a", "1"));
        tail.push(line("b", "x"));
        tail.push(line("a", "2"));
        tail.push(line("a", "3"));
        let (lines, cursor) = tail.lines("a", 0, 2);
        let got: Vec<&str> = lines.iter().map(|l| l.line.message.as_str()).collect();
        assert_eq!((got, cursor), (vec!["2", "3"], 4));
        assert!(tail.lines("a", cursor, 10).0.is_empty());
        tail.push(line("a", "4"));
        let (lines, cursor) = tail.lines("a", cursor, 10);
        assert_eq!(
            (lines.len(), lines[0].line.message.as_str(), cursor),
            (1, "4", 5)
        );
        for i in 0..TAIL_LINES_PER_PIPELINE + 5 {
            tail.push(line("c", &i.to_string()));
        }
        let (lines, _) = tail.lines("c", 0, usize::MAX);
        assert_eq!(lines.len(), TAIL_LINES_PER_PIPELINE, "bounded per pipeline");
        assert_eq!(lines[0].line.message, "5");
    }
}
