//! The plugin and pipeline registry, shared by every host through two
//! compacted Kafka topics: no infrastructure beyond Kafka.
//!
//! Each host replays both topics from the beginning at startup and follows
//! them (one follower thread, [`state::RegistryState`] as the fold), so all
//! hosts converge on the same plugins and pipelines. Writes go to Kafka
//! first; a host answers a write only once its own follower has applied it
//! (read-your-writes), so "upload, then PUT a pipeline naming it" works on
//! one host, and other hosts see it within their poll interval.
//!
//! Version numbers are allocated through the log itself: an upload claims
//! the next number, waits for its own follower to apply the claim, and
//! learns from the fold whether its claim was the first of that number in
//! log order (every host agrees, having applied the same records in the
//! same order). A loser withdraws its claim and claims the next number; a
//! winner then writes the version's chunks. See [`state`] for the records.

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
use state::keys;
pub use state::{
    MemberRecord, PendingLimits, PipelineSource, PluginVersion, RegistryState, StoredPipeline,
    TopicKind, TopicPartition, VersionUser, parse_plugin_ref,
};

/// Chunk size of stored components: under the broker's default 1 MiB
/// message limit with room for headers and batching overhead.
const CHUNK_BYTES: usize = 512 * 1024;
/// How long a write waits to be replayed by this host's follower.
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(15);
/// Version numbers one upload claims before giving up. Each lost claim
/// means another upload of the same name took that number, so this only
/// ends a storm of concurrent uploads of one name.
const MAX_CLAIM_ATTEMPTS: u32 = 64;
/// Uploads whose chunks may be in flight at once across the cluster before
/// the oldest incomplete one is dropped ([`PendingLimits`]).
const MAX_UPLOADS_IN_FLIGHT: usize = 16;

/// Registry failures, phrased for an API caller.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Kafka refused or did not answer.
    #[error("registry storage (Kafka) failed: {action}: {source}")]
    Kafka {
        /// What was being done.
        action: String,
        /// librdkafka's error (boxed: large, and a cold path).
        source: Box<rdkafka::error::KafkaError>,
    },
    /// The registry's topics could not be created.
    #[error("registry storage (Kafka) failed: cannot create the registry topics: {0}")]
    CreateTopics(String),
    /// A record could not be encoded (a bug: every stored type serializes).
    #[error("cannot encode a registry record: {0}")]
    Encode(#[from] serde_json::Error),
    /// The follower thread could not be spawned.
    #[error("cannot start the registry follower: {0}")]
    Thread(#[source] std::io::Error),
    /// The write was stored but this host did not see it back in time.
    #[error("the change was stored but not yet visible on this host; retry the read shortly")]
    NotVisibleYet,
    /// Every claimed number was taken first by another upload.
    #[error(
        "{attempts} version numbers of plugin `{name}` were each claimed first by another upload; retry"
    )]
    Contended {
        /// Plugin.
        name: String,
        /// Numbers tried.
        attempts: u32,
    },
    /// The version was claimed and its chunks written, but the fold did
    /// not assemble it (its chunks were dropped as over the pending bound,
    /// or did not match the digest).
    #[error(
        "plugin `{name}` version {version} was stored but is not whole on this host          (see the host's log); upload it again"
    )]
    Incomplete {
        /// Plugin.
        name: String,
        /// The version claimed.
        version: u32,
    },
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
        let k = |e: rdkafka::error::KafkaError| RegistryError::Kafka {
            action: "starting".to_owned(),
            source: Box::new(e),
        };
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
        metrics::gauge!(crate::metrics_names::REGISTRY_BYTES).set(0.0);
        let control = ControlPlane::new(&config);
        let limits = PendingLimits::for_uploads(config.max_plugin_bytes, MAX_UPLOADS_IN_FLIGHT);
        let inner = Arc::new(Inner {
            config,
            state: RwLock::new(RegistryState::new(control, limits)),
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
            .map_err(RegistryError::Thread)?;
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
    /// of `name`. Bytes already live under `name` return that version and
    /// `false`.
    ///
    /// The number is claimed first (`manifest/<name>/<n>/<digest>`); once
    /// this host's follower has applied the claim, the fold says whether it
    /// was the first claim of `n` in log order, as it says on every host. A
    /// loser withdraws its claim and claims the next number, so the answer
    /// is the number this upload actually got. Only the winner writes the
    /// chunks, and the answer waits until the version is whole here.
    pub async fn put_plugin(
        &self,
        name: &str,
        bytes: &[u8],
        abi: crate::runtime::PluginAbi,
    ) -> Result<(PluginVersion, bool), RegistryError> {
        let digest = hex::encode(Sha256::digest(bytes));
        let topic = &self.inner.config.plugins_topic;
        let chunks: Vec<&[u8]> = bytes.chunks(CHUNK_BYTES).collect();
        for attempt in 1..=MAX_CLAIM_ATTEMPTS {
            let version = {
                let state = self.read();
                let versions = state.plugin(name).unwrap_or_default();
                if let Some(existing) = versions.iter().find(|v| v.digest == digest) {
                    return Ok(((*existing).clone(), false));
                }
                state.next_version(name)
            };
            let claim = PluginVersion {
                name: name.to_owned(),
                version,
                digest: digest.clone(),
                size_bytes: bytes.len(),
                chunks: chunks.len() as u32,
                created_ms: now_ms(),
                abi,
            };
            let json = serde_json::to_vec(&claim)?;
            let claim_key = keys::claim(name, version, &digest, &keys::new_nonce());
            let offset = self.send(topic, &claim_key, Some(&json)).await?;
            self.wait_applied(TopicKind::Plugins, offset).await?;
            if self.read().claim_owner(name, version) != Some(digest.as_str()) {
                metrics::counter!(crate::metrics_names::REGISTRY_CLAIMS_LOST).increment(1);
                tracing::info!(
                    plugin = name,
                    version,
                    attempt,
                    "another upload claimed this version first; claiming the next"
                );
                // Withdrawn at once: should the winner be deleted and
                // compacted away, a lingering losing claim would otherwise
                // be the first claim of that number a fresh replay sees.
                if let Err(e) = self.send(topic, &claim_key, None).await {
                    tracing::warn!(plugin = name, version, error = %e, "cannot withdraw a losing claim");
                }
                continue;
            }
            let mut last = offset;
            for (i, chunk) in chunks.iter().enumerate() {
                last = self
                    .send(topic, &keys::chunk(name, version, i as u32), Some(chunk))
                    .await?;
            }
            self.wait_applied(TopicKind::Plugins, last).await?;
            return match self.read().plugin_version(name, Some(version)) {
                Some(v) if v.digest == digest => Ok((v.clone(), true)),
                _ => Err(RegistryError::Incomplete {
                    name: name.to_owned(),
                    version,
                }),
            };
        }
        Err(RegistryError::Contended {
            name: name.to_owned(),
            attempts: MAX_CLAIM_ATTEMPTS,
        })
    }

    /// Deletes one version (the caller checked nothing uses it): its claims
    /// (the owner's and any loser's still in the log) and its chunks are
    /// tombstoned, so compaction frees them. The plugin's highest version
    /// number is recorded first, in a record that compaction keeps, so the
    /// number is never handed out again.
    pub async fn delete_plugin_version(
        &self,
        name: &str,
        version: u32,
    ) -> Result<(), RegistryError> {
        let (highest_deleted, claims, chunks) = {
            let state = self.read();
            let chunks = state
                .plugin_version(name, Some(version))
                .map_or(0, |v| v.chunks);
            (
                state.highest_deleted(name).max(version),
                state.claim_keys(name, version),
                chunks,
            )
        };
        let topic = &self.inner.config.plugins_topic;
        let mut last = self
            .send(
                topic,
                &keys::highest(name),
                Some(highest_deleted.to_string().as_bytes()),
            )
            .await?;
        for key in &claims {
            last = self.send(topic, key, None).await?;
        }
        for i in 0..chunks {
            last = self
                .send(topic, &keys::chunk(name, version, i), None)
                .await?;
        }
        self.wait_applied(TopicKind::Plugins, last).await
    }

    /// Stores a pipeline (replacing one of the same name).
    pub async fn put_pipeline(&self, pipeline: &StoredPipeline) -> Result<(), RegistryError> {
        let json = serde_json::to_vec(pipeline)?;
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
        let json = serde_json::to_vec(record)?;
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
            Err((e, _)) => Err(RegistryError::Kafka {
                action: format!("writing `{key}` to `{topic}`"),
                source: Box::new(e),
            }),
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
                {
                    let mut state = inner.state.write().unwrap_or_else(|p| p.into_inner());
                    state.apply(kind, &key, msg.payload());
                    if kind == TopicKind::Plugins {
                        metrics::gauge!(crate::metrics_names::REGISTRY_BYTES)
                            .set(state.bytes() as f64);
                    }
                }
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
        .map_err(RegistryError::CreateTopics)
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
                return Err(RegistryError::Kafka {
                    action: format!("reading the end offset of `{topic}`"),
                    source: Box::new(e),
                });
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
