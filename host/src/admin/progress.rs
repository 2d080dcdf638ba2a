//! A pipeline's progress across every host, as the broker sees it, for
//! `GET /v1/pipelines/{name}/progress` and `.../dead-letters` (the
//! dashboard's sources).
//!
//! `/v1/assignments` answers only for the contacted host's partitions; the
//! group's committed offsets and each partition's end offset are the
//! broker's, so any host can tell them for all partitions, like
//! `kafka-consumer-groups --describe`. Who holds each partition comes from
//! the group's members (`merge_members`). Rates are not kept here: the
//! dashboard derives messages/s from successive answers (committed, output
//! and dead-letter end offsets), so no host keeps per-client history.
//!
//! One consumer per group (never subscribed, so it never joins the group;
//! it only sends OffsetFetch) and one group-less reader for dead letters
//! are kept for the host's life, and answers are cached for
//! [`CACHE_TTL`]: a page polling every second costs the broker one round
//! per TTL however many tabs are open. All calls block, so they run on the
//! blocking pool.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;

/// How long one answer is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(1);
/// Upper bound of one broker round (metadata, watermarks, offsets).
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest value or key shown of a dead letter, in bytes.
const MAX_SHOWN_BYTES: usize = 512;

/// One input partition of a pipeline, group-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionProgress {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The group's committed offset (`None`: nothing committed yet).
    pub committed: Option<i64>,
    /// The partition's end offset.
    pub high_watermark: i64,
    /// Messages not yet committed: end offset minus committed, or minus
    /// the start offset before the first commit (pipelines start at the
    /// earliest offset).
    pub lag: i64,
    /// The host holding it now (`None`: unassigned, e.g. paused or
    /// rebalancing).
    pub host: Option<String>,
}

/// The progress answer.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// When the broker was asked (ms since the epoch): rates divide by
    /// differences of this.
    pub taken_ms: i64,
    /// Every input partition, sorted.
    pub partitions: Vec<PartitionProgress>,
    /// Sum of `lag`.
    pub total_lag: i64,
    /// Sum of committed offsets (the dashboard's messages-in counter).
    pub committed_total: i64,
    /// End offsets summed over each declared output topic (the
    /// messages-out counter; other writers of the topic count too).
    pub output_end_offsets: BTreeMap<String, i64>,
    /// End offsets summed over the dead-letter topic (`None`: it does not
    /// exist yet).
    pub dead_letter_end_offset: Option<i64>,
}

/// One record of a dead-letter topic, as the dashboard shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Partition of the dead-letter topic.
    pub partition: i32,
    /// Offset there.
    pub offset: i64,
    /// Record timestamp (ms), if any.
    pub timestamp_ms: Option<i64>,
    /// Key, lossily decoded and cut to 512 bytes.
    pub key: Option<String>,
    /// Value, likewise.
    pub value: Option<String>,
    /// Every header (the `kwasm.*` ones say why), lossily decoded.
    pub headers: BTreeMap<String, String>,
}

/// What a progress computation needs to know of the pipeline.
#[derive(Debug, Clone)]
pub struct ProgressQuery {
    /// The pipeline's consumer group.
    pub group_id: String,
    /// Input topics: the declared ones, plus those its members hold
    /// (covers `input_regex`).
    pub inputs: Vec<String>,
    /// Declared output topics.
    pub outputs: Vec<String>,
    /// Its dead-letter topic.
    pub dead_letter_topic: String,
    /// Holder of each partition, from the group's members.
    pub owners: BTreeMap<(String, i32), String>,
}

/// The broker reads behind the dashboard. Cheap to clone.
#[derive(Clone)]
pub struct BrokerReader {
    inner: Arc<ReaderInner>,
}

struct ReaderInner {
    config: ClientConfig,
    /// One offset-fetching consumer per group, created on first use.
    group_consumers: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    /// The group-less consumer that reads dead letters; one call at a time.
    reader: Mutex<Option<BaseConsumer>>,
    progress_cache: AnswerCache<Progress>,
    dead_letter_cache: AnswerCache<Vec<DeadLetter>>,
}

/// Answers (or why the broker could not give one) by key, with when each
/// was taken; held across a computation, so concurrent callers wait for one.
type AnswerCache<T> = tokio::sync::Mutex<HashMap<String, (Instant, Result<T, String>)>>;

impl BrokerReader {
    /// A reader with the control plane's client settings; clients are
    /// created on first use.
    pub fn new(config: ClientConfig) -> Self {
        BrokerReader {
            inner: Arc::new(ReaderInner {
                config,
                group_consumers: Mutex::new(HashMap::new()),
                reader: Mutex::new(None),
                progress_cache: tokio::sync::Mutex::new(HashMap::new()),
                dead_letter_cache: tokio::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The pipeline's progress, at most [`CACHE_TTL`] old.
    pub async fn progress(&self, query: ProgressQuery) -> Result<Progress, String> {
        let mut cache = self.inner.progress_cache.lock().await;
        let now = Instant::now();
        cache.retain(|_, (at, _)| now.saturating_duration_since(*at) < CACHE_TTL);
        if let Some((_, answer)) = cache.get(&query.group_id) {
            return answer.clone();
        }
        let inner = self.inner.clone();
        let group = query.group_id.clone();
        let answer = tokio::task::spawn_blocking(move || inner.progress_now(&query))
            .await
            .unwrap_or_else(|e| Err(format!("progress task failed: {e}")));
        cache.insert(group, (Instant::now(), answer.clone()));
        answer
    }

    /// The newest `limit` records of `topic` (all partitions), newest
    /// first, at most [`CACHE_TTL`] old.
    pub async fn dead_letters(&self, topic: &str, limit: usize) -> Result<Vec<DeadLetter>, String> {
        let key = format!("{topic}\u{0}{limit}");
        let mut cache = self.inner.dead_letter_cache.lock().await;
        let now = Instant::now();
        cache.retain(|_, (at, _)| now.saturating_duration_since(*at) < CACHE_TTL);
        if let Some((_, answer)) = cache.get(&key) {
            return answer.clone();
        }
        let inner = self.inner.clone();
        let t = topic.to_owned();
        let answer = tokio::task::spawn_blocking(move || inner.dead_letters_now(&t, limit))
            .await
            .unwrap_or_else(|e| Err(format!("dead-letter task failed: {e}")));
        cache.insert(key, (Instant::now(), answer.clone()));
        answer
    }
}

impl ReaderInner {
    fn group_consumer(&self, group: &str) -> Result<Arc<BaseConsumer>, String> {
        let mut consumers = self
            .group_consumers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(c) = consumers.get(group) {
            return Ok(c.clone());
        }
        let mut config = self.config.clone();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let consumer: BaseConsumer = config
            .create()
            .map_err(|e| format!("cannot create a client for group `{group}`: {e}"))?;
        let consumer = Arc::new(consumer);
        consumers.insert(group.to_owned(), consumer.clone());
        Ok(consumer)
    }

    fn progress_now(&self, query: &ProgressQuery) -> Result<Progress, String> {
        let consumer = self.group_consumer(&query.group_id)?;
        let taken_ms = now_ms();
        let mut watermarks = BTreeMap::new();
        let mut tpl = TopicPartitionList::new();
        for topic in &query.inputs {
            for (partition, low, high) in
                topic_watermarks(consumer.as_ref(), topic)?.unwrap_or_default()
            {
                watermarks.insert((topic.clone(), partition), (low, high));
                tpl.add_partition(topic, partition);
            }
        }
        let committed: BTreeMap<(String, i32), Option<i64>> = if tpl.count() == 0 {
            BTreeMap::new()
        } else {
            consumer
                .committed_offsets(tpl, BROKER_TIMEOUT)
                .map_err(|e| {
                    format!(
                        "cannot read the committed offsets of `{}`: {e}",
                        query.group_id
                    )
                })?
                .elements()
                .iter()
                .map(|e| {
                    let offset = match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    };
                    ((e.topic().to_owned(), e.partition()), offset)
                })
                .collect()
        };
        let partitions = partition_progress(&watermarks, &committed, &query.owners);
        let mut output_end_offsets = BTreeMap::new();
        for topic in &query.outputs {
            let end = topic_watermarks(consumer.as_ref(), topic)?
                .map_or(0, |w| w.iter().map(|(_, _, high)| high).sum::<i64>());
            output_end_offsets.insert(topic.clone(), end);
        }
        let dead_letter_end_offset = topic_watermarks(consumer.as_ref(), &query.dead_letter_topic)?
            .map(|w| w.iter().map(|(_, _, high)| high).sum());
        Ok(Progress {
            taken_ms,
            total_lag: partitions.iter().map(|p| p.lag).sum(),
            committed_total: partitions.iter().filter_map(|p| p.committed).sum(),
            partitions,
            output_end_offsets,
            dead_letter_end_offset,
        })
    }

    fn dead_letters_now(&self, topic: &str, limit: usize) -> Result<Vec<DeadLetter>, String> {
        let mut slot = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let mut config = self.config.clone();
            // A group id is required by rust-rdkafka's consumer config, but
            // this consumer only assigns: it never joins or commits.
            config
                .set("group.id", "kwasm-admin-dead-letter-reader")
                .set("enable.auto.commit", "false")
                .set("enable.partition.eof", "true");
            *slot = Some(
                config
                    .create()
                    .map_err(|e| format!("cannot create the dead-letter reader: {e}"))?,
            );
        }
        let Some(reader) = slot.as_ref() else {
            return Ok(Vec::new());
        };
        // No dead-letter topic yet: nothing was dead-lettered.
        let Some(watermarks) = topic_watermarks(reader, topic)? else {
            return Ok(Vec::new());
        };
        let mut tpl = TopicPartitionList::new();
        let mut open = 0usize;
        for &(partition, low, high) in &watermarks {
            if high > low {
                let start = (high - limit as i64).max(low);
                tpl.add_partition_offset(topic, partition, Offset::Offset(start))
                    .map_err(|e| e.to_string())?;
                open += 1;
            }
        }
        if open == 0 {
            return Ok(Vec::new());
        }
        reader.assign(&tpl).map_err(|e| e.to_string())?;
        let ends: HashMap<i32, i64> = watermarks.iter().map(|&(p, _, h)| (p, h)).collect();
        let mut done: HashMap<i32, bool> = HashMap::new();
        let mut out = Vec::new();
        let deadline = Instant::now() + BROKER_TIMEOUT;
        while done.len() < open && Instant::now() < deadline {
            match reader.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    if m.offset() + 1 >= ends.get(&m.partition()).copied().unwrap_or(0) {
                        done.insert(m.partition(), true);
                    }
                    out.push(dead_letter_view(&m));
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    done.insert(p, true);
                }
                Some(Err(e)) => return Err(format!("reading `{topic}`: {e}")),
                None => {}
            }
        }
        let _ = reader.unassign();
        Ok(newest_first(out, limit))
    }
}

/// (partition, low watermark, high watermark), sorted by partition.
type Watermarks = Vec<(i32, i64, i64)>;

/// The partitions of `topic` with their watermarks; `None` when the topic
/// does not exist (yet: a pipeline may name topics nobody has created).
fn topic_watermarks(client: &BaseConsumer, topic: &str) -> Result<Option<Watermarks>, String> {
    let metadata = client
        .fetch_metadata(Some(topic), BROKER_TIMEOUT)
        .map_err(|e| format!("cannot read the metadata of `{topic}`: {e}"))?;
    let Some(t) = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
    else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for p in t.partitions() {
        let (low, high) = client
            .fetch_watermarks(topic, p.id(), BROKER_TIMEOUT)
            .map_err(|e| format!("cannot read the end offset of {topic}/{}: {e}", p.id()))?;
        out.push((p.id(), low, high));
    }
    out.sort_unstable();
    Ok(Some(out))
}

/// Joins end offsets, committed offsets and holders into rows, sorted by
/// topic and partition. Lag is end minus committed, or minus the start
/// offset before the first commit; never negative (a commit can be read
/// after a newer end offset).
pub fn partition_progress(
    watermarks: &BTreeMap<(String, i32), (i64, i64)>,
    committed: &BTreeMap<(String, i32), Option<i64>>,
    owners: &BTreeMap<(String, i32), String>,
) -> Vec<PartitionProgress> {
    watermarks
        .iter()
        .map(|(key, &(low, high))| {
            let committed = committed.get(key).copied().flatten();
            PartitionProgress {
                topic: key.0.clone(),
                partition: key.1,
                committed,
                high_watermark: high,
                lag: (high - committed.unwrap_or(low)).max(0),
                host: owners.get(key).cloned(),
            }
        })
        .collect()
}

/// The newest `limit` dead letters, newest first (by timestamp, then
/// offset).
fn newest_first(mut letters: Vec<DeadLetter>, limit: usize) -> Vec<DeadLetter> {
    letters.sort_by_key(|d| std::cmp::Reverse((d.timestamp_ms, d.offset)));
    letters.truncate(limit);
    letters
}

fn dead_letter_view<M: Message>(m: &M) -> DeadLetter {
    let shown = |b: &[u8]| {
        let cut = &b[..b.len().min(MAX_SHOWN_BYTES)];
        String::from_utf8_lossy(cut).into_owned()
    };
    let mut headers = BTreeMap::new();
    if let Some(h) = m.headers() {
        for header in h.iter() {
            headers.insert(
                header.key.to_owned(),
                header.value.map(shown).unwrap_or_default(),
            );
        }
    }
    DeadLetter {
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key().map(shown),
        value: m.payload().map(shown),
        headers,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `GET /v1/pipelines/{name}/progress`: [`Progress`] plus the pipeline's
/// name and group.
pub async fn progress_handler(
    axum::extract::State(state): axum::extract::State<super::AdminState>,
    super::handlers::ApiPath(name): super::handlers::ApiPath<String>,
) -> Result<axum::Json<serde_json::Value>, super::AdminError> {
    let pipeline = find_pipeline(&state, &name)?;
    let spec = &pipeline.spec;
    let group_id = spec.group_id();
    let members = super::handlers::group_members(&state, &group_id)
        .await?
        .members;
    let owners = owners_of(&members);
    let mut inputs = spec.inputs.clone();
    for (topic, _) in owners.keys() {
        if !inputs.contains(topic) {
            inputs.push(topic.clone());
        }
    }
    let mut outputs = vec![spec.output.clone()];
    outputs.extend(spec.extra_outputs.iter().cloned());
    let query = ProgressQuery {
        group_id: group_id.clone(),
        inputs,
        outputs,
        dead_letter_topic: spec.dead_letter_topic(),
        owners,
    };
    let progress = reader(&state)?
        .progress(query)
        .await
        .map_err(super::AdminError::Unavailable)?;
    Ok(axum::Json(serde_json::json!({
        "pipeline": name,
        "group_id": group_id,
        "members": members.iter().map(|m| &m.host).collect::<Vec<_>>(),
        "progress": progress,
    })))
}

/// Query of `.../dead-letters`.
#[derive(Debug, serde::Deserialize)]
pub struct DeadLetterQuery {
    /// How many (1 to 100, default 20).
    pub limit: Option<usize>,
}

/// `GET /v1/pipelines/{name}/dead-letters?limit=N`: the newest dead
/// letters of the pipeline, newest first.
pub async fn dead_letters_handler(
    axum::extract::State(state): axum::extract::State<super::AdminState>,
    super::handlers::ApiPath(name): super::handlers::ApiPath<String>,
    query: Result<axum::extract::Query<DeadLetterQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<serde_json::Value>, super::AdminError> {
    let axum::extract::Query(query) =
        query.map_err(|e| super::AdminError::Invalid(e.body_text()))?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(super::AdminError::Invalid(format!(
            "limit must be between 1 and 100, not {limit}"
        )));
    }
    let pipeline = find_pipeline(&state, &name)?;
    let topic = pipeline.spec.dead_letter_topic();
    let letters = reader(&state)?
        .dead_letters(&topic, limit)
        .await
        .map_err(super::AdminError::Unavailable)?;
    Ok(axum::Json(serde_json::json!({
        "pipeline": name, "topic": topic, "dead_letters": letters,
    })))
}

/// Query of `.../logs`.
#[derive(Debug, serde::Deserialize)]
pub struct LogsQuery {
    /// Only lines after this cursor (from a previous answer); default 0.
    pub after: Option<u64>,
    /// At most this many, the newest (1 to 1000, default 100).
    pub limit: Option<usize>,
}

/// `GET /v1/pipelines/{name}/logs?after=C&limit=N`: the pipeline's newest
/// plugin log lines from every host (the logs topic, as this host's tail
/// read it), oldest first, and the `cursor` to follow with.
pub async fn logs_handler(
    axum::extract::State(state): axum::extract::State<super::AdminState>,
    super::handlers::ApiPath(name): super::handlers::ApiPath<String>,
    query: Result<axum::extract::Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<serde_json::Value>, super::AdminError> {
    let axum::extract::Query(query) =
        query.map_err(|e| super::AdminError::Invalid(e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(super::AdminError::Invalid(format!(
            "limit must be between 1 and 1000, not {limit}"
        )));
    }
    find_pipeline(&state, &name)?;
    let tail = state.logs.as_ref().ok_or_else(|| {
        super::AdminError::NotFound(
            "plugin logs are off on this host (set registry.plugin_logs = true)".into(),
        )
    })?;
    let (lines, cursor) = tail.lines(&name, query.after.unwrap_or(0), limit);
    Ok(axum::Json(serde_json::json!({
        "pipeline": name, "lines": lines, "cursor": cursor,
    })))
}

fn find_pipeline(
    state: &super::AdminState,
    name: &str,
) -> Result<crate::registry::StoredPipeline, super::AdminError> {
    super::handlers::all_pipelines(state)?
        .into_iter()
        .find(|p| p.spec.name == name)
        .ok_or_else(|| super::AdminError::NotFound(format!("no pipeline named `{name}`")))
}

fn reader(state: &super::AdminState) -> Result<&BrokerReader, super::AdminError> {
    state
        .groups
        .as_ref()
        .map(super::GroupDescriber::reader)
        .ok_or_else(|| super::AdminError::Unavailable("this host has no broker reader".into()))
}

/// Who holds each partition, from the group's members.
fn owners_of(members: &[super::groups::MemberView]) -> BTreeMap<(String, i32), String> {
    members
        .iter()
        .flat_map(|m| {
            m.partitions
                .iter()
                .map(|p| ((p.topic.clone(), p.partition), m.host.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: i32) -> (String, i32) {
        ("in".to_owned(), p)
    }

    #[test]
    fn lag_is_end_minus_committed_or_minus_start_before_a_commit() {
        let watermarks = BTreeMap::from([(key(0), (0, 100)), (key(1), (40, 50)), (key(2), (0, 7))]);
        let committed = BTreeMap::from([(key(0), Some(60)), (key(1), None), (key(2), Some(9))]);
        let owners = BTreeMap::from([(key(0), "host-a".to_owned())]);
        let rows = partition_progress(&watermarks, &committed, &owners);
        let lags: Vec<(i32, i64, Option<&str>)> = rows
            .iter()
            .map(|r| (r.partition, r.lag, r.host.as_deref()))
            .collect();
        // 100 - 60; 50 - 40 (start, nothing committed); a commit read after
        // an older end offset is 0, not -2.
        assert_eq!(
            lags,
            vec![(0, 40, Some("host-a")), (1, 10, None), (2, 0, None)]
        );
    }

    #[test]
    fn dead_letters_are_cut_to_the_newest_first() {
        let letter = |offset, ts| DeadLetter {
            partition: 0,
            offset,
            timestamp_ms: Some(ts),
            key: None,
            value: None,
            headers: BTreeMap::new(),
        };
        let out = newest_first(vec![letter(1, 10), letter(3, 30), letter(2, 30)], 2);
        let got: Vec<i64> = out.iter().map(|d| d.offset).collect();
        assert_eq!(got, vec![3, 2]);
    }
}
