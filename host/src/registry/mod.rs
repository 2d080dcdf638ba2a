//! The plugin and pipeline registry, shared by every host through two
//! compacted Kafka topics: no infrastructure beyond Kafka.
//!
//! Each host replays both topics from the beginning at startup and follows
//! them (one follower thread, [`state::RegistryState`] as the fold), so all
//! hosts converge on the same plugins and pipelines. Writes go to Kafka
//! first; a host answers a write only once its own follower has applied it
//! (read-your-writes), so "upload, then PUT a pipeline naming it" works on
//! one host, and other hosts see it within their poll interval.

pub mod state;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sha2::{Digest, Sha256};

use crate::config::KafkaConfig;
pub use crate::config::RegistryConfig;
use crate::topics::ControlPlane;
pub use state::{
    MemberRecord, PipelineSource, PluginVersion, RegistryState, StoredPipeline, TopicKind,
    TopicPartition, parse_plugin_ref,
};

/// Chunk size of stored components: under the broker's default 1 MiB
/// message limit with room for headers and batching overhead.
const CHUNK_BYTES: usize = 512 * 1024;
/// How long a write waits to be replayed by this host's follower.
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(15);

/// Registry failures, phrased for an API caller.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Kafka refused or did not answer.
    #[error("registry storage (Kafka) failed: {0}")]
    Kafka(String),
    /// The write was stored but this host did not see it back in time.
    #[error("the change was stored but not yet visible on this host; retry the read shortly")]
    NotVisibleYet,
}

/// A handle to the registry. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    config: RegistryConfig,
    state: RwLock<RegistryState>,
    /// Bumped by the follower after each applied plugin or pipeline record.
    changes: tokio::sync::watch::Sender<u64>,
    /// Next offset the follower will apply, per topic.
    plugins_next: AtomicI64,
    pipelines_next: AtomicI64,
    members_next: AtomicI64,
    caught_up: AtomicBool,
    producer: FutureProducer,
}

impl Registry {
    /// Creates the topics if missing, replays them, and keeps following.
    pub async fn start(
        kafka: &KafkaConfig,
        config: RegistryConfig,
        host_id: &str,
    ) -> Result<Registry, RegistryError> {
        let k = |e: rdkafka::error::KafkaError| RegistryError::Kafka(e.to_string());
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &kafka.brokers);
        // The control plane's own client settings win over every client's:
        // an operator gives the registry its own principal (see the README).
        for (key, value) in kafka.properties.iter().chain(&config.properties) {
            client.set(key, value);
        }
        if config.create_topics {
            create_topics(&client, &config).await?;
        }
        let producer: FutureProducer = client
            .clone()
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .create()
            .map_err(k)?;
        let (changes, _) = tokio::sync::watch::channel(0);
        let control = ControlPlane::new(&config);
        let inner = Arc::new(Inner {
            config,
            state: RwLock::new(RegistryState::new(control)),
            changes,
            plugins_next: AtomicI64::new(0),
            pipelines_next: AtomicI64::new(0),
            members_next: AtomicI64::new(0),
            caught_up: AtomicBool::new(false),
            producer,
        });
        // A group id is required for assign() but never joined or committed:
        // every host replays from the beginning.
        let consumer: BaseConsumer = client
            .clone()
            .set("group.id", format!("kwasm-registry-{host_id}"))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "50")
            .create()
            .map_err(k)?;
        let mut tpl = TopicPartitionList::new();
        for topic in inner.config.topics() {
            tpl.add_partition_offset(topic, 0, Offset::Beginning)
                .map_err(k)?;
        }
        consumer.assign(&tpl).map_err(k)?;
        let mut ends = Vec::new();
        for topic in inner.config.topics() {
            let high = end_offset(&consumer, topic)?;
            ends.push((inner.config.kind_of(topic), high));
        }
        let follower = inner.clone();
        std::thread::Builder::new()
            .name("kwasm-registry".into())
            .spawn(move || follow(consumer, follower, ends))
            .map_err(|e| {
                RegistryError::Kafka(format!("cannot start the registry follower: {e}"))
            })?;
        Ok(Registry { inner })
    }

    /// Settings in force.
    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    /// The current state, for reading.
    pub fn read(&self) -> RwLockReadGuard<'_, RegistryState> {
        self.inner.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the startup replay is complete.
    pub fn caught_up(&self) -> bool {
        self.inner.caught_up.load(Ordering::Acquire)
    }

    /// Notified after every applied plugin or pipeline record.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Stores `bytes` (already validated by the caller) as the next version
    /// of `name`. Bytes already stored under `name` return that version and
    /// `false`.
    pub async fn put_plugin(
        &self,
        name: &str,
        bytes: &[u8],
    ) -> Result<(PluginVersion, bool), RegistryError> {
        let digest = hex::encode(Sha256::digest(bytes));
        let next_version = {
            let state = self.read();
            let versions = state.plugin(name).unwrap_or_default();
            if let Some(existing) = versions.iter().find(|v| v.digest == digest) {
                return Ok(((*existing).clone(), false));
            }
            state.next_version(name)
        };
        let topic = &self.inner.config.plugins_topic;
        let chunks: Vec<&[u8]> = bytes.chunks(CHUNK_BYTES).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            self.send(topic, &format!("chunk/{digest}/{i}"), Some(chunk))
                .await?;
        }
        let manifest = PluginVersion {
            name: name.to_owned(),
            version: next_version,
            digest,
            size_bytes: bytes.len(),
            chunks: chunks.len() as u32,
            created_ms: now_ms(),
        };
        let json =
            serde_json::to_vec(&manifest).map_err(|e| RegistryError::Kafka(e.to_string()))?;
        let offset = self
            .send(
                topic,
                &format!("manifest/{name}/{next_version}"),
                Some(&json),
            )
            .await?;
        self.wait_applied(TopicKind::Plugins, offset).await?;
        Ok((manifest, true))
    }

    /// Deletes one version (the caller checked no pipeline uses it). The
    /// plugin's highest version number is recorded first, in a record that
    /// compaction keeps, so the number is never handed out again.
    pub async fn delete_plugin_version(
        &self,
        name: &str,
        version: u32,
    ) -> Result<(), RegistryError> {
        let highest = self
            .read()
            .next_version(name)
            .saturating_sub(1)
            .max(version);
        self.send(
            &self.inner.config.plugins_topic,
            &format!("highest/{name}"),
            Some(highest.to_string().as_bytes()),
        )
        .await?;
        let offset = self
            .send(
                &self.inner.config.plugins_topic,
                &format!("manifest/{name}/{version}"),
                None,
            )
            .await?;
        self.wait_applied(TopicKind::Plugins, offset).await
    }

    /// Stores a pipeline (replacing one of the same name).
    pub async fn put_pipeline(&self, pipeline: &StoredPipeline) -> Result<(), RegistryError> {
        let json = serde_json::to_vec(pipeline).map_err(|e| RegistryError::Kafka(e.to_string()))?;
        let offset = self
            .send(
                &self.inner.config.pipelines_topic,
                &pipeline.spec.name,
                Some(&json),
            )
            .await?;
        self.wait_applied(TopicKind::Pipelines, offset).await
    }

    /// Publishes what this host holds of `record.group_id`; `None`
    /// partitions withdraws the record (clean shutdown).
    pub async fn publish_member(
        &self,
        record: &MemberRecord,
        withdraw: bool,
    ) -> Result<(), RegistryError> {
        let key = format!("{}/{}", record.group_id, record.host);
        let json = serde_json::to_vec(record).map_err(|e| RegistryError::Kafka(e.to_string()))?;
        let value = (!withdraw).then_some(json.as_slice());
        self.send(&self.inner.config.members_topic, &key, value)
            .await
            .map(|_| ())
    }

    /// What each host last published of `group` (stale records of
    /// killed hosts included: the admin API checks them against the
    /// broker's view of the group).
    pub fn members(&self, group: &str) -> Vec<MemberRecord> {
        self.read().members(group)
    }

    /// Deletes a pipeline.
    pub async fn delete_pipeline(&self, name: &str) -> Result<(), RegistryError> {
        let offset = self
            .send(&self.inner.config.pipelines_topic, name, None)
            .await?;
        self.wait_applied(TopicKind::Pipelines, offset).await
    }

    async fn send(
        &self,
        topic: &str,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<i64, RegistryError> {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        match self
            .inner
            .producer
            .send(record, Duration::from_secs(30))
            .await
        {
            Ok(delivery) => Ok(delivery.offset),
            Err((e, _)) => Err(RegistryError::Kafka(format!(
                "writing `{key}` to `{topic}`: {e}"
            ))),
        }
    }

    async fn wait_applied(&self, kind: TopicKind, offset: i64) -> Result<(), RegistryError> {
        let next = self.inner.next_offset(kind);
        let deadline = Instant::now() + READ_YOUR_WRITES_TIMEOUT;
        while next.load(Ordering::Acquire) <= offset {
            if Instant::now() >= deadline {
                return Err(RegistryError::NotVisibleYet);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

impl RegistryConfig {
    fn topics(&self) -> [&String; 3] {
        [
            &self.plugins_topic,
            &self.pipelines_topic,
            &self.members_topic,
        ]
    }

    fn kind_of(&self, topic: &str) -> TopicKind {
        if topic == self.plugins_topic {
            TopicKind::Plugins
        } else if topic == self.pipelines_topic {
            TopicKind::Pipelines
        } else {
            TopicKind::Members
        }
    }
}

impl Inner {
    fn next_offset(&self, kind: TopicKind) -> &AtomicI64 {
        match kind {
            TopicKind::Plugins => &self.plugins_next,
            TopicKind::Pipelines => &self.pipelines_next,
            TopicKind::Members => &self.members_next,
        }
    }
}

/// The follower thread: applies every record of both topics, forever.
fn follow(consumer: BaseConsumer, inner: Arc<Inner>, ends: Vec<(TopicKind, i64)>) {
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => {
                let kind = inner.config.kind_of(msg.topic());
                let key = msg.key().map(String::from_utf8_lossy).unwrap_or_default();
                inner
                    .state
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .apply(kind, &key, msg.payload());
                inner
                    .next_offset(kind)
                    .store(msg.offset() + 1, Ordering::Release);
                // Member records change every few seconds per host and
                // deploy nothing: only plugins and pipelines wake the manager.
                if kind != TopicKind::Members {
                    inner.changes.send_modify(|g| *g += 1);
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "registry follower error"),
            None => {}
        }
        if !inner.caught_up.load(Ordering::Relaxed)
            && ends
                .iter()
                .all(|(kind, end)| inner.next_offset(*kind).load(Ordering::Acquire) >= *end)
        {
            inner.caught_up.store(true, Ordering::Release);
            inner.changes.send_modify(|g| *g += 1);
            tracing::info!("registry caught up");
        }
    }
}

/// Creates the registry topics (one partition: a total order per topic;
/// compacted: the newest record per key is kept forever).
async fn create_topics(
    client: &ClientConfig,
    config: &RegistryConfig,
) -> Result<(), RegistryError> {
    let topics: Vec<NewTopic<'_>> = config
        .topics()
        .into_iter()
        .map(|t| {
            NewTopic::new(t, 1, TopicReplication::Fixed(config.replication_factor))
                .set("cleanup.policy", "compact")
                .set("max.message.bytes", "2097152")
        })
        .collect();
    crate::kafka::create_topics(client, &topics)
        .await
        .map_err(|e| RegistryError::Kafka(format!("registry: {e}")))
}

/// The end offset of partition 0 of `topic`. A topic created a moment ago
/// may not have a leader in the broker's metadata yet (Kafka answers
/// CreateTopics before every broker has the new partition's state):
/// `UnknownPartition`, `NotLeaderForPartition` and `LeaderNotAvailable`
/// are retried for up to 15 s, as a fresh cluster's first host hits them.
fn end_offset(consumer: &BaseConsumer, topic: &str) -> Result<i64, RegistryError> {
    use rdkafka::types::RDKafkaErrorCode as Code;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)) {
            Ok((_, high)) => return Ok(high),
            Err(e)
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        Code::UnknownPartition
                            | Code::NotLeaderForPartition
                            | Code::LeaderNotAvailable
                            | Code::UnknownTopicOrPartition
                    )
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                return Err(RegistryError::Kafka(format!(
                    "cannot read the end offset of `{topic}`: {e}"
                )));
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
