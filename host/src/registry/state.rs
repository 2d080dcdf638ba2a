//! The registry's in-memory state, rebuilt by replaying its Kafka topics.
//! Pure: [`RegistryState::apply`] takes one record at a time, so replay,
//! compaction and chunk assembly are unit-tested without a broker.
//!
//! Records of the plugins topic (one partition, so order is kept):
//! - `chunk/<digest>/<index>`: a piece of a component's bytes;
//! - `manifest/<name>/<version>`: a version of a plugin, JSON
//!   [`PluginVersion`], written after its chunks; a tombstone deletes it.
//!   Its chunks are assembled and checked against the digest when the
//!   manifest arrives; a mismatch drops the version (and is logged).
//! - `highest/<name>`: the highest version `name` ever had, written when a
//!   version is deleted and never tombstoned: once compaction drops a
//!   deleted manifest and its tombstone, this keeps its number from being
//!   given to other bytes (a pipeline pinned to `name@N` must never run
//!   something else).
//!
//! Records of the pipelines topic: `<name>` → JSON [`StoredPipeline`];
//! a tombstone deletes the pipeline.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{BatchPolicy, RetryPolicy};

/// One stored version of a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginVersion {
    /// Plugin name.
    pub name: String,
    /// Version, from 1, per name.
    pub version: u32,
    /// sha256 of the component, hex.
    pub digest: String,
    /// Size of the component.
    pub size_bytes: usize,
    /// Chunks it was stored in.
    pub chunks: u32,
    /// When it was uploaded (ms since the epoch).
    pub created_ms: i64,
}

/// A pipeline as the registry stores it and the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredPipeline {
    /// Pipeline name.
    #[serde(default)]
    pub name: String,
    /// `name@version` of a registry plugin.
    pub plugin: String,
    /// Plugin configuration.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Input topics.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Input topic regex.
    #[serde(default)]
    pub input_regex: Option<String>,
    /// Default output topic.
    pub output: String,
    /// Consumer group; default `kwasm-<name>`.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Dead-letter topic; default `<name>.dlq`.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Retry policy.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Batch policy.
    #[serde(default)]
    pub batch: BatchPolicy,
    /// Stopped on every host while true.
    #[serde(default)]
    pub paused: bool,
    /// `api` or `config`.
    #[serde(default = "api_source")]
    pub source: String,
}

fn api_source() -> String {
    "api".into()
}

/// Which registry topic a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    /// Plugin chunks and manifests.
    Plugins,
    /// Pipeline definitions.
    Pipelines,
    /// What each host holds (`<group>/<host>` → [`MemberRecord`]).
    Members,
}

/// Everything the registry knows.
#[derive(Debug, Default)]
pub struct RegistryState {
    plugins: BTreeMap<String, BTreeMap<u32, PluginVersion>>,
    blobs: HashMap<String, Arc<Vec<u8>>>,
    chunks: HashMap<String, BTreeMap<u32, Vec<u8>>>,
    pipelines: BTreeMap<String, StoredPipeline>,
    members: BTreeMap<String, MemberRecord>,
    /// Highest version ever seen per plugin, deleted ones included (from
    /// manifests, their tombstones and `highest/<name>`), so a number is
    /// never reused for other bytes.
    highest_version: BTreeMap<String, u32>,
}

impl RegistryState {
    /// Applies one record; malformed ones are logged and skipped (a registry
    /// must keep replaying past a bad record written by a buggy client).
    pub fn apply(&mut self, kind: TopicKind, key: &str, value: Option<&[u8]>) {
        let result = match kind {
            TopicKind::Plugins => self.apply_plugin_record(key, value),
            TopicKind::Pipelines => self.apply_pipeline_record(key, value),
            TopicKind::Members => self.apply_member_record(key, value),
        };
        if let Err(reason) = result {
            tracing::error!(key, reason, "skipping a malformed registry record");
        }
    }

    fn apply_plugin_record(&mut self, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        let parts: Vec<&str> = key.split('/').collect();
        match (parts.as_slice(), value) {
            (["chunk", digest, index], Some(bytes)) => {
                let index: u32 = index.parse().map_err(|_| "bad chunk index".to_owned())?;
                if !self.blobs.contains_key(*digest) {
                    self.chunks
                        .entry((*digest).to_owned())
                        .or_default()
                        .insert(index, bytes.to_vec());
                }
                Ok(())
            }
            (["chunk", ..], None) => Ok(()),
            (["highest", name], Some(text)) => {
                let version: u32 = std::str::from_utf8(text)
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| "bad highest version".to_owned())?;
                let highest = self.highest_version.entry((*name).to_owned()).or_default();
                *highest = (*highest).max(version);
                Ok(())
            }
            (["manifest", name, version], None) => {
                let version: u32 = version.parse().map_err(|_| "bad version".to_owned())?;
                let highest = self.highest_version.entry((*name).to_owned()).or_default();
                *highest = (*highest).max(version);
                if let Some(versions) = self.plugins.get_mut(*name) {
                    versions.remove(&version);
                    if versions.is_empty() {
                        self.plugins.remove(*name);
                    }
                }
                Ok(())
            }
            (["manifest", _, _], Some(json)) => {
                let manifest: PluginVersion =
                    serde_json::from_slice(json).map_err(|e| format!("bad manifest: {e}"))?;
                let highest = self
                    .highest_version
                    .entry(manifest.name.clone())
                    .or_default();
                *highest = (*highest).max(manifest.version);
                self.assemble(&manifest)?;
                self.plugins
                    .entry(manifest.name.clone())
                    .or_default()
                    .insert(manifest.version, manifest);
                Ok(())
            }
            _ => Err("unknown key".into()),
        }
    }

    /// Joins a manifest's chunks and checks them against its digest.
    fn assemble(&mut self, m: &PluginVersion) -> Result<(), String> {
        if self.blobs.contains_key(&m.digest) {
            return Ok(());
        }
        let chunks = self.chunks.remove(&m.digest).unwrap_or_default();
        if chunks.len() != m.chunks as usize || chunks.keys().copied().ne(0..m.chunks) {
            return Err(format!(
                "plugin {}@{}: {} of {} chunks present",
                m.name,
                m.version,
                chunks.len(),
                m.chunks
            ));
        }
        let bytes: Vec<u8> = chunks.into_values().flatten().collect();
        let digest = hex::encode(Sha256::digest(&bytes));
        if digest != m.digest || bytes.len() != m.size_bytes {
            return Err(format!(
                "plugin {}@{}: stored bytes do not match digest {}",
                m.name, m.version, m.digest
            ));
        }
        self.blobs.insert(digest, Arc::new(bytes));
        Ok(())
    }

    fn apply_pipeline_record(&mut self, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        match value {
            None => {
                self.pipelines.remove(key);
            }
            Some(json) => {
                let mut p: StoredPipeline =
                    serde_json::from_slice(json).map_err(|e| format!("bad pipeline: {e}"))?;
                p.name = key.to_owned();
                self.pipelines.insert(key.to_owned(), p);
            }
        }
        Ok(())
    }

    fn apply_member_record(&mut self, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        match value {
            None => {
                self.members.remove(key);
            }
            Some(json) => {
                let m: MemberRecord =
                    serde_json::from_slice(json).map_err(|e| format!("bad member record: {e}"))?;
                self.members.insert(key.to_owned(), m);
            }
        }
        Ok(())
    }

    /// What every host last published for `group`.
    pub fn members(&self, group: &str) -> Vec<MemberRecord> {
        self.members
            .values()
            .filter(|m| m.group_id == group)
            .cloned()
            .collect()
    }

    /// Every plugin with its versions, oldest first.
    pub fn plugins(&self) -> impl Iterator<Item = (&str, Vec<&PluginVersion>)> {
        self.plugins
            .iter()
            .map(|(n, v)| (n.as_str(), v.values().collect()))
    }

    /// Versions of `name`, oldest first.
    pub fn plugin(&self, name: &str) -> Option<Vec<&PluginVersion>> {
        self.plugins.get(name).map(|v| v.values().collect())
    }

    /// One version; the newest when `version` is `None`.
    pub fn plugin_version(&self, name: &str, version: Option<u32>) -> Option<&PluginVersion> {
        let versions = self.plugins.get(name)?;
        match version {
            Some(v) => versions.get(&v),
            None => versions.values().next_back(),
        }
    }

    /// The version number the next upload of `name` gets.
    pub fn next_version(&self, name: &str) -> u32 {
        self.highest_version.get(name).copied().unwrap_or(0) + 1
    }

    /// A verified component by digest.
    pub fn blob(&self, digest: &str) -> Option<Arc<Vec<u8>>> {
        self.blobs.get(digest).cloned()
    }

    /// Every pipeline.
    pub fn pipelines(&self) -> impl Iterator<Item = &StoredPipeline> {
        self.pipelines.values()
    }

    /// One pipeline.
    pub fn pipeline(&self, name: &str) -> Option<&StoredPipeline> {
        self.pipelines.get(name)
    }
}

/// The API view of a config-file pipeline.
pub fn stored_from_spec(p: &crate::config::PipelineSpec) -> StoredPipeline {
    StoredPipeline {
        name: p.name.clone(),
        plugin: p.plugin.clone(),
        config: p.config.clone(),
        inputs: p.inputs.clone(),
        input_regex: p.input_regex.clone(),
        output: p.output.clone(),
        group_id: Some(p.group_id()),
        dead_letter_topic: Some(p.dead_letter_topic()),
        retry: p.retry.clone(),
        batch: p.batch.clone(),
        paused: false,
        source: "config".into(),
    }
}

/// One host's share of a consumer group, as it publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Host id (= its `client.id`).
    pub host: String,
    /// Pipeline.
    pub pipeline: String,
    /// Consumer group.
    pub group_id: String,
    /// Partitions held, sorted.
    pub partitions: Vec<TopicPartition>,
    /// When it was published (ms since the epoch).
    pub updated_ms: i64,
}

/// A topic-partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TopicPartition {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
}

/// A plugin reference: `name@version`, or `name` for the newest.
pub fn parse_plugin_ref(s: &str) -> Result<(&str, Option<u32>), String> {
    match s.split_once('@') {
        Some((name, v)) => v
            .parse()
            .map(|v| (name, Some(v)))
            .map_err(|_| format!("plugin reference {s:?}: the version after `@` must be a number")),
        None => Ok((s, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str, version: u32, bytes: &[u8], chunks: u32) -> Vec<u8> {
        serde_json::to_vec(&PluginVersion {
            name: name.into(),
            version,
            digest: hex::encode(Sha256::digest(bytes)),
            size_bytes: bytes.len(),
            chunks,
            created_ms: 1,
        })
        .expect("json")
    }

    #[test]
    fn chunks_then_manifest_make_a_verified_version() {
        let mut s = RegistryState::default();
        let bytes = b"0123456789";
        let digest = hex::encode(Sha256::digest(bytes));
        s.apply(
            TopicKind::Plugins,
            &format!("chunk/{digest}/1"),
            Some(b"56789"),
        );
        s.apply(
            TopicKind::Plugins,
            &format!("chunk/{digest}/0"),
            Some(b"01234"),
        );
        s.apply(
            TopicKind::Plugins,
            "manifest/redact/1",
            Some(&manifest("redact", 1, bytes, 2)),
        );
        assert_eq!(s.plugin_version("redact", None).map(|v| v.version), Some(1));
        assert_eq!(
            s.blob(&digest).as_deref().map(Vec::as_slice),
            Some(&bytes[..])
        );
    }

    #[test]
    fn a_manifest_whose_bytes_do_not_match_is_dropped() {
        let mut s = RegistryState::default();
        let digest = hex::encode(Sha256::digest(b"good"));
        s.apply(
            TopicKind::Plugins,
            &format!("chunk/{digest}/0"),
            Some(b"evil"),
        );
        s.apply(
            TopicKind::Plugins,
            "manifest/p/1",
            Some(&manifest("p", 1, b"good", 1)),
        );
        assert!(s.plugin("p").is_none());
    }

    #[test]
    fn a_deleted_version_number_is_not_reused_after_compaction() {
        let digest = hex::encode(Sha256::digest(b"x"));
        let chunk = (format!("chunk/{digest}/0"), b"x".to_vec());
        // What the log holds after v2 was deleted and compaction dropped its
        // manifest and the tombstone: v1, and the `highest` record.
        let mut s = RegistryState::default();
        s.apply(TopicKind::Plugins, &chunk.0, Some(&chunk.1));
        s.apply(
            TopicKind::Plugins,
            "manifest/p/1",
            Some(&manifest("p", 1, b"x", 1)),
        );
        s.apply(TopicKind::Plugins, "highest/p", Some(b"2"));
        assert_eq!(s.next_version("p"), 3);
        // A lower `highest` (an older deletion) never lowers it.
        s.apply(TopicKind::Plugins, "highest/p", Some(b"1"));
        assert_eq!(s.next_version("p"), 3);
    }

    #[test]
    fn tombstones_delete_versions_and_pipelines() {
        let mut s = RegistryState::default();
        let digest = hex::encode(Sha256::digest(b"x"));
        s.apply(TopicKind::Plugins, &format!("chunk/{digest}/0"), Some(b"x"));
        s.apply(
            TopicKind::Plugins,
            "manifest/p/1",
            Some(&manifest("p", 1, b"x", 1)),
        );
        s.apply(
            TopicKind::Plugins,
            "manifest/p/2",
            Some(&manifest("p", 2, b"x", 1)),
        );
        s.apply(TopicKind::Plugins, "manifest/p/1", None);
        assert_eq!(
            s.plugin("p")
                .map(|v| v.iter().map(|v| v.version).collect::<Vec<_>>()),
            Some(vec![2])
        );
        let p = br#"{"plugin":"p@2","inputs":["in"],"output":"out"}"#;
        s.apply(TopicKind::Pipelines, "orders", Some(p));
        assert_eq!(
            s.pipeline("orders")
                .map(|p| (p.name.as_str(), p.source.as_str())),
            Some(("orders", "api"))
        );
        s.apply(TopicKind::Pipelines, "orders", None);
        assert!(s.pipeline("orders").is_none());
    }

    #[test]
    fn plugin_refs_parse() {
        assert_eq!(parse_plugin_ref("redact@3"), Ok(("redact", Some(3))));
        assert_eq!(parse_plugin_ref("redact"), Ok(("redact", None)));
        assert!(parse_plugin_ref("redact@x").is_err());
    }
}
