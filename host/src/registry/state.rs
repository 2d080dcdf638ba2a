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

use crate::config::PipelineSpec;
use crate::topics::ControlPlane;

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

/// A pipeline as the registry stores it and the API shows it: the one
/// pipeline definition ([`PipelineSpec`], as in a config file) plus what
/// only the registry knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct StoredPipeline {
    /// The pipeline, its fields at the top level of the JSON.
    #[serde(flatten)]
    pub spec: PipelineSpec,
    /// Stopped on every host while true.
    pub paused: bool,
    /// Where it was declared.
    pub source: PipelineSource,
}

/// Where a pipeline was declared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PipelineSource {
    /// Through the admin API (stored in the registry).
    #[default]
    Api,
    /// In a host's config file (read-only through the API).
    Config,
}

impl TryFrom<serde_json::Value> for StoredPipeline {
    type Error = String;

    /// serde's `flatten` cannot refuse unknown fields, so the registry's
    /// own fields are taken out first and the rest must be exactly a
    /// [`PipelineSpec`] (`deny_unknown_fields`): a typo is an error, not a
    /// silently ignored setting.
    fn try_from(value: serde_json::Value) -> Result<Self, String> {
        let serde_json::Value::Object(mut fields) = value else {
            return Err("a pipeline is a JSON object".into());
        };
        let paused = match fields.remove("paused") {
            None => false,
            Some(v) => serde_json::from_value(v).map_err(|e| format!("`paused`: {e}"))?,
        };
        let source = match fields.remove("source") {
            None => PipelineSource::default(),
            Some(v) => serde_json::from_value(v).map_err(|e| format!("`source`: {e}"))?,
        };
        let spec =
            serde_json::from_value(serde_json::Value::Object(fields)).map_err(|e| e.to_string())?;
        Ok(StoredPipeline {
            spec,
            paused,
            source,
        })
    }
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

impl TopicKind {
    /// For logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Plugins => "plugins",
            TopicKind::Pipelines => "pipelines",
            TopicKind::Members => "members",
        }
    }
}

/// Everything the registry knows.
#[derive(Debug, Default)]
pub struct RegistryState {
    /// Topics no pipeline may read or write: every replayed pipeline is
    /// validated against them, as an API call is.
    control: ControlPlane,
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
    /// An empty state for a host whose control plane is `control`.
    pub fn new(control: ControlPlane) -> RegistryState {
        RegistryState {
            control,
            ..RegistryState::default()
        }
    }

    /// Applies one record; malformed or invalid ones are logged, counted
    /// (`kwasm_registry_records_skipped_total`) and skipped: a registry must
    /// keep replaying past a bad record written by a buggy or hostile
    /// client, and never start what the API would have refused.
    pub fn apply(&mut self, kind: TopicKind, key: &str, value: Option<&[u8]>) {
        let result = match kind {
            TopicKind::Plugins => self.apply_plugin_record(key, value),
            TopicKind::Pipelines => self.apply_pipeline_record(key, value),
            TopicKind::Members => self.apply_member_record(key, value),
        };
        if let Err(reason) = result {
            tracing::error!(
                topic = kind.as_str(),
                key,
                reason,
                "skipping an invalid registry record"
            );
            metrics::counter!(crate::metrics_names::REGISTRY_RECORDS_SKIPPED, "topic" => kind.as_str())
                .increment(1);
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
            (["manifest", name, version], Some(json)) => {
                let manifest: PluginVersion =
                    serde_json::from_slice(json).map_err(|e| format!("bad manifest: {e}"))?;
                // The key is what tombstones and lookups use: a manifest
                // that names another plugin or version than its key, or a
                // name the API would refuse, is not applied.
                if manifest.name != *name || manifest.version.to_string() != *version {
                    return Err(format!(
                        "manifest `{}@{}` stored under key `{key}`",
                        manifest.name, manifest.version
                    ));
                }
                if !crate::config::is_name(name) {
                    return Err(format!("plugin name `{name}` {}", crate::config::NAME_RULE));
                }
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
                // An invalid record replaces what the key held before, as
                // a tombstone would: after compaction it is all a new host
                // sees, so every host must end up without the pipeline.
                let parsed = serde_json::from_slice::<StoredPipeline>(json)
                    .map_err(|e| format!("bad pipeline: {e}"))
                    .and_then(|mut p| {
                        p.spec.name = key.to_owned();
                        p.spec
                            .validate(&self.control)
                            .map_err(|e| format!("invalid pipeline: {e}"))?;
                        Ok(p)
                    });
                match parsed {
                    Ok(p) => {
                        self.pipelines.insert(key.to_owned(), p);
                    }
                    Err(reason) => {
                        self.pipelines.remove(key);
                        return Err(reason);
                    }
                }
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

/// The API view of a config-file pipeline, defaults resolved.
pub fn stored_from_spec(p: &PipelineSpec) -> StoredPipeline {
    let mut spec = p.clone();
    spec.group_id = Some(p.group_id());
    spec.dead_letter_topic = Some(p.dead_letter_topic());
    StoredPipeline {
        spec,
        paused: false,
        source: PipelineSource::Config,
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
                .map(|p| (p.spec.name.as_str(), p.source)),
            Some(("orders", PipelineSource::Api))
        );
        s.apply(TopicKind::Pipelines, "orders", None);
        assert!(s.pipeline("orders").is_none());
    }

    /// A record written straight to the pipelines topic (an outside
    /// producer, no API) must pass the API's validation or never start.
    #[test]
    fn replayed_pipelines_are_validated_as_the_api_validates_them() {
        let mut s = RegistryState::default();
        let good = br#"{"plugin":"p@1","inputs":["in"],"output":"out"}"#;
        s.apply(TopicKind::Pipelines, "orders", Some(good));
        assert!(s.pipeline("orders").is_some());
        for bad in [
            &br#"{"plugin":"p@1","inputs":["in"],"output":"__consumer_offsets"}"#[..],
            br#"{"plugin":"p@1","inputs":["in"],"output":"_kwasm_pipelines"}"#,
            br#"{"plugin":"p@1","input_regex":"((","output":"out"}"#,
            br#"{"plugin":"p@1","inputs":["in"],"output":"out","surprise":1}"#,
        ] {
            s.apply(TopicKind::Pipelines, "orders", Some(good));
            s.apply(TopicKind::Pipelines, "orders", Some(bad));
            assert!(
                s.pipeline("orders").is_none(),
                "{}: an invalid record replaces the pipeline as a tombstone would",
                String::from_utf8_lossy(bad)
            );
        }
        // Names are checked on replay too.
        s.apply(TopicKind::Pipelines, "_kwasm_x", Some(good));
        assert!(s.pipeline("_kwasm_x").is_none());
        // The configured registry topics count, not only the defaults.
        let mut s = RegistryState::new(ControlPlane::new(&crate::config::RegistryConfig {
            pipelines_topic: "ops-pipelines".into(),
            ..Default::default()
        }));
        let to_registry = br#"{"plugin":"p@1","inputs":["in"],"output":"ops-pipelines"}"#;
        s.apply(TopicKind::Pipelines, "orders", Some(to_registry));
        assert!(s.pipeline("orders").is_none());
    }

    #[test]
    fn manifests_must_match_their_key_and_the_name_rule() {
        let mut s = RegistryState::default();
        let digest = hex::encode(Sha256::digest(b"x"));
        s.apply(TopicKind::Plugins, &format!("chunk/{digest}/0"), Some(b"x"));
        s.apply(
            TopicKind::Plugins,
            "manifest/a/1",
            Some(&manifest("b", 1, b"x", 1)),
        );
        s.apply(
            TopicKind::Plugins,
            "manifest/a/2",
            Some(&manifest("a", 1, b"x", 1)),
        );
        s.apply(
            TopicKind::Plugins,
            "manifest/-x/1",
            Some(&manifest("-x", 1, b"x", 1)),
        );
        assert_eq!(s.plugins().count(), 0);
    }

    #[test]
    fn plugin_refs_parse() {
        assert_eq!(parse_plugin_ref("redact@3"), Ok(("redact", Some(3))));
        assert_eq!(parse_plugin_ref("redact"), Ok(("redact", None)));
        assert!(parse_plugin_ref("redact@x").is_err());
    }
}
