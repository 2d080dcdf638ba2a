//! The registry's in-memory state, rebuilt by replaying its Kafka topics.
//! Pure: [`RegistryState::apply`] takes one record at a time, so replay,
//! compaction and chunk assembly are unit-tested without a broker.
//!
//! Records of the plugins topic (one partition, so every host applies them
//! in the same order; keys in [`keys`]):
//! - `manifest/<name>/<version>/<digest>/<nonce>`: a **claim** of version
//!   number `version` of `name` for the component with sha256 `digest`,
//!   JSON [`PluginVersion`]. The first claim of a number in log order owns
//!   it; a later claim of the same number for other bytes loses (its writer
//!   withdraws it with a tombstone and claims the next number), one for the
//!   same bytes shares the win. A claim of a number at or below the highest
//!   deleted one, with no owner, loses too: that number belonged to a
//!   deleted version. Tombstoning the owner's claim deletes the version.
//!   Each claim write has its own key (the nonce), so no claim record is
//!   ever rewritten: compaction, which keeps the last record per key at
//!   that record's place, then keeps every claim where it was, and "first
//!   in log order" means the same before and after it.
//! - `chunk/<name>/<version>/<index>`: a piece of that version's bytes,
//!   written by the claim's owner after it saw itself win. A version is
//!   live once it has an owner and chunks `0..chunks` whose concatenation
//!   has the owner's size and digest, **whatever order those records come
//!   in** (compaction moves a rewritten key to its newest copy). Chunks
//!   are the version's own records, never shared with another name or
//!   version, so deleting a version tombstones exactly its chunks and no
//!   upload can rewrite records another version depends on.
//! - `highest/<name>`: the highest version of `name` ever deleted, written
//!   when a version is deleted and never tombstoned: once compaction drops
//!   a deleted claim and its tombstone, this keeps its number from being
//!   given to other bytes (a pipeline pinned to `name@N` must never run
//!   something else). It says "deleted", not "claimed": a live claim moved
//!   behind it by nothing (claims are never rewritten) is never refused.
//!
//! Memory is a function of the live plugins: bytes are held once per
//! digest (versions of equal bytes share them) and freed when the last
//! live version using them goes; chunks waiting for the rest of their
//! version are bounded in bytes and versions ([`PendingLimits`]), the
//! oldest dropped first with a warning and
//! `kwasm_registry_chunks_dropped_total`. [`RegistryState::bytes`] is what
//! the follower exports as `kwasm_registry_bytes`.
//!
//! Records of the pipelines topic: `<name>` → JSON [`StoredPipeline`];
//! a tombstone deletes the pipeline.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::PipelineSpec;
use crate::topics::ControlPlane;

/// One stored version of a plugin (the value of its claim record).
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
    /// The ABI the bytes were validated as at upload. Absent in records
    /// written before Redpanda transforms were accepted, which were all
    /// components.
    #[serde(default)]
    pub abi: crate::runtime::PluginAbi,
}

/// Keys of the plugins topic, in one place for the writer
/// ([`super::Registry`]) and the fold.
pub mod keys {
    /// One claim of `name@version` for the bytes with `digest`; `nonce`
    /// makes each claim write a key of its own ([`new_nonce`]).
    pub fn claim(name: &str, version: u32, digest: &str, nonce: &str) -> String {
        format!("manifest/{name}/{version}/{digest}/{nonce}")
    }

    /// A fresh nonce for a claim: 16 hex digits from a randomly seeded
    /// hasher, the time and a counter.
    pub fn new_nonce() -> String {
        use std::hash::{BuildHasher, Hasher};
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        format!("{:016x}", h.finish())
    }

    /// Chunk `index` of `name@version`.
    pub fn chunk(name: &str, version: u32, index: u32) -> String {
        format!("chunk/{name}/{version}/{index}")
    }

    /// The highest deleted version of `name`.
    pub fn highest(name: &str) -> String {
        format!("highest/{name}")
    }
}

/// How much may wait in chunks that are not (yet) a whole version: chunks
/// whose claim has not arrived, or whose siblings have not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingLimits {
    /// Bytes of such chunks, all versions together.
    pub max_bytes: usize,
    /// Versions with such chunks.
    pub max_versions: usize,
}

impl PendingLimits {
    /// Room for `versions` uploads in flight at once (across the cluster),
    /// four of them as large as `max_plugin_bytes`; never below 64 MiB.
    pub fn for_uploads(max_plugin_bytes: usize, versions: usize) -> PendingLimits {
        PendingLimits {
            max_bytes: max_plugin_bytes.saturating_mul(4).max(64 << 20),
            max_versions: versions,
        }
    }
}

impl Default for PendingLimits {
    /// Sixteen uploads, 256 MiB (four of the default 64 MiB
    /// `registry.max_plugin_bytes`).
    fn default() -> Self {
        PendingLimits::for_uploads(64 << 20, 16)
    }
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
    limits: PendingLimits,
    plugins: BTreeMap<String, PluginEntry>,
    /// Bytes of live versions, once per digest.
    blobs: HashMap<String, Blob>,
    /// Chunks of versions that are not live (yet), by `(name, version)`.
    pending: BTreeMap<(String, u32), Pending>,
    /// Sum of the pending chunks' lengths.
    pending_bytes: usize,
    /// Counts chunk arrivals: the age of a pending version, for dropping
    /// the oldest first.
    arrivals: u64,
    pipelines: BTreeMap<String, StoredPipeline>,
    members: BTreeMap<String, MemberRecord>,
}

#[derive(Debug, Default)]
struct PluginEntry {
    /// Highest version ever seen (claims won, claim tombstones,
    /// `highest/<name>`): the next upload claims the one after.
    highest: u32,
    /// Highest version deleted (owners' claim tombstones, `highest/<name>`):
    /// an ownerless claim at or below it loses.
    deleted: u32,
    versions: BTreeMap<u32, VersionSlot>,
}

/// A claimed version number.
#[derive(Debug)]
struct VersionSlot {
    /// The first claim in log order: the bytes this number belongs to.
    owner: PluginVersion,
    /// The owner's nonce.
    owner_nonce: String,
    /// Every claim of this number still in the log, nonce → digest (the
    /// owner's, same-bytes co-claims, and losers that have not withdrawn
    /// yet); a delete tombstones them all.
    claims: BTreeMap<String, String>,
    /// Whether its bytes are assembled, verified and in `blobs`.
    live: bool,
}

#[derive(Debug)]
struct Blob {
    bytes: Arc<Vec<u8>>,
    /// Live versions with these bytes.
    users: usize,
}

#[derive(Debug, Default)]
struct Pending {
    chunks: BTreeMap<u32, Vec<u8>>,
    first_arrival: u64,
}

impl Pending {
    fn bytes(&self) -> usize {
        self.chunks.values().map(Vec::len).sum()
    }
}

/// A plugin record key, parsed.
enum PluginKey<'a> {
    Claim(&'a str, u32, &'a str, &'a str),
    Chunk(&'a str, u32, u32),
    Highest(&'a str),
}

fn parse_plugin_key(key: &str) -> Result<PluginKey<'_>, String> {
    let number = |s: &str, what: &str| -> Result<u32, String> {
        s.parse().map_err(|_| format!("bad {what} `{s}`"))
    };
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts.as_slice() {
        ["manifest" | "chunk" | "highest", name, ..] => *name,
        _ => return Err("unknown key".into()),
    };
    if !crate::config::is_name(name) {
        return Err(format!("plugin name `{name}` {}", crate::config::NAME_RULE));
    }
    match parts.as_slice() {
        ["manifest", _, version, digest, nonce] => {
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("bad digest `{digest}`"));
            }
            if nonce.is_empty()
                || nonce.len() > 64
                || !nonce.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(format!("bad claim nonce `{nonce}`"));
            }
            Ok(PluginKey::Claim(
                name,
                number(version, "version")?,
                digest,
                nonce,
            ))
        }
        ["chunk", _, version, index] => Ok(PluginKey::Chunk(
            name,
            number(version, "version")?,
            number(index, "chunk index")?,
        )),
        ["highest", _] => Ok(PluginKey::Highest(name)),
        _ => Err("unknown key (a registry written by an older kwasm?)".into()),
    }
}

impl RegistryState {
    /// An empty state for a host whose control plane is `control`, holding
    /// at most `limits` in chunks that are not a whole version yet.
    pub fn new(control: ControlPlane, limits: PendingLimits) -> RegistryState {
        RegistryState {
            control,
            limits,
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
        match (parse_plugin_key(key)?, value) {
            (PluginKey::Claim(name, version, digest, nonce), Some(json)) => {
                let claim: PluginVersion =
                    serde_json::from_slice(json).map_err(|e| format!("bad manifest: {e}"))?;
                // The key is what tombstones and lookups use: a claim whose
                // body names another plugin, version or digest is refused.
                if claim.name != name || claim.version != version || claim.digest != digest {
                    return Err(format!(
                        "manifest `{}@{}` ({}) stored under key `{key}`",
                        claim.name, claim.version, claim.digest
                    ));
                }
                if claim.chunks == 0 || claim.size_bytes < claim.chunks as usize {
                    return Err(format!(
                        "manifest of {} bytes in {} chunks",
                        claim.size_bytes, claim.chunks
                    ));
                }
                self.apply_claim(claim, nonce);
                Ok(())
            }
            (PluginKey::Claim(name, version, _, nonce), None) => {
                self.withdraw_claim(name, version, nonce);
                Ok(())
            }
            (PluginKey::Chunk(name, version, index), Some(bytes)) => {
                self.add_chunk(name, version, index, bytes)
            }
            (PluginKey::Chunk(name, version, index), None) => {
                self.remove_chunk(name, version, index);
                Ok(())
            }
            (PluginKey::Highest(name), Some(text)) => {
                let version: u32 = std::str::from_utf8(text)
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| "bad highest version".to_owned())?;
                self.mark_deleted(name, version);
                Ok(())
            }
            (PluginKey::Highest(_), None) => Ok(()),
        }
    }

    /// First claim in log order owns the number; see the module docs.
    fn apply_claim(&mut self, claim: PluginVersion, nonce: &str) {
        let entry = self.plugins.entry(claim.name.clone()).or_default();
        if let Some(slot) = entry.versions.get_mut(&claim.version) {
            if slot.owner.digest != claim.digest {
                tracing::debug!(plugin = %claim.name, version = claim.version, digest = %claim.digest,
                    "a later claim of a taken version number loses");
            }
            slot.claims.insert(nonce.to_owned(), claim.digest);
            return;
        }
        if claim.version <= entry.deleted {
            tracing::debug!(plugin = %claim.name, version = claim.version,
                "a claim of a deleted version number loses");
            return;
        }
        entry.highest = entry.highest.max(claim.version);
        let (name, version) = (claim.name.clone(), claim.version);
        entry.versions.insert(
            version,
            VersionSlot {
                claims: BTreeMap::from([(nonce.to_owned(), claim.digest.clone())]),
                owner_nonce: nonce.to_owned(),
                owner: claim,
                live: false,
            },
        );
        if let Err(reason) = self.try_assemble(&name, version) {
            tracing::error!(plugin = %name, version, reason, "plugin version not assembled");
        }
    }

    fn withdraw_claim(&mut self, name: &str, version: u32, nonce: &str) {
        let entry = self.plugins.entry(name.to_owned()).or_default();
        entry.highest = entry.highest.max(version);
        let Some(slot) = entry.versions.get_mut(&version) else {
            return;
        };
        if slot.owner_nonce != nonce {
            slot.claims.remove(nonce);
            return;
        }
        // The owner's claim is gone: the version is deleted, and its
        // number stays taken, so no other claim takes it over.
        if let Some(slot) = entry.versions.remove(&version)
            && slot.live
        {
            self.release_blob(&slot.owner.digest);
        }
        self.mark_deleted(name, version);
    }

    /// Versions up to `version` of `name` were given out and are deleted
    /// unless a claim owns them.
    fn mark_deleted(&mut self, name: &str, version: u32) {
        let entry = self.plugins.entry(name.to_owned()).or_default();
        entry.highest = entry.highest.max(version);
        entry.deleted = entry.deleted.max(version);
        // Chunks of a deleted number with no owner can never become live.
        let orphans: Vec<u32> = self
            .pending
            .range((name.to_owned(), 0)..=(name.to_owned(), entry.deleted))
            .map(|((_, v), _)| *v)
            .filter(|v| !entry.versions.contains_key(v))
            .collect();
        for v in orphans {
            self.drop_pending(name, v);
        }
    }

    fn add_chunk(
        &mut self,
        name: &str,
        version: u32,
        index: u32,
        bytes: &[u8],
    ) -> Result<(), String> {
        let entry = self.plugins.get(name);
        let slot = entry.and_then(|e| e.versions.get(&version));
        let claimed = slot.is_some();
        match slot {
            // A rewrite of a chunk of a whole version (a second uploader of
            // the same bytes): nothing to keep.
            Some(slot) if slot.live => return Ok(()),
            Some(slot) if index >= slot.owner.chunks => {
                return Err(format!(
                    "chunk {index} of {name}@{version}, which has {} chunks",
                    slot.owner.chunks
                ));
            }
            Some(_) => {}
            None if entry.is_some_and(|e| version <= e.deleted) => return Ok(()),
            None => {}
        }
        self.arrivals += 1;
        let arrival = self.arrivals;
        let pending = self
            .pending
            .entry((name.to_owned(), version))
            .or_insert_with(|| Pending {
                chunks: BTreeMap::new(),
                first_arrival: arrival,
            });
        if let Some(old) = pending.chunks.insert(index, bytes.to_vec()) {
            self.pending_bytes -= old.len();
        }
        self.pending_bytes += bytes.len();
        self.enforce_pending_limits();
        if claimed {
            self.try_assemble(name, version)?;
        }
        Ok(())
    }

    fn remove_chunk(&mut self, name: &str, version: u32, index: u32) {
        if let Some(slot) = self
            .plugins
            .get_mut(name)
            .and_then(|e| e.versions.get_mut(&version))
            && slot.live
        {
            // Only a delete tombstones chunks, after the claim; should one
            // come first anyway, the bytes are leaving the log, so the
            // version is no longer whole (as a fresh replay would find).
            tracing::warn!(
                plugin = name,
                version,
                index,
                "a chunk of a live version was tombstoned"
            );
            slot.live = false;
            let digest = slot.owner.digest.clone();
            self.release_blob(&digest);
            return;
        }
        let key = (name.to_owned(), version);
        if let Some(pending) = self.pending.get_mut(&key) {
            if let Some(old) = pending.chunks.remove(&index) {
                self.pending_bytes -= old.len();
            }
            if pending.chunks.is_empty() {
                self.pending.remove(&key);
            }
        }
    }

    /// Makes `name@version` live if its owner's chunks are all there and
    /// match its size and digest.
    fn try_assemble(&mut self, name: &str, version: u32) -> Result<(), String> {
        let Some(slot) = self
            .plugins
            .get_mut(name)
            .and_then(|e| e.versions.get_mut(&version))
        else {
            return Ok(());
        };
        let key = (name.to_owned(), version);
        let Some(pending) = self.pending.get(&key) else {
            return Ok(());
        };
        let m = &slot.owner;
        if slot.live || pending.chunks.len() != m.chunks as usize {
            return Ok(());
        }
        // Chunk indexes are below `m.chunks` (checked on arrival, or by the
        // claim arriving after them), so `m.chunks` of them are 0..chunks.
        if pending.chunks.keys().copied().ne(0..m.chunks) {
            return Ok(());
        }
        let size: usize = pending.bytes();
        let mut bytes = Vec::with_capacity(size);
        for chunk in pending.chunks.values() {
            bytes.extend_from_slice(chunk);
        }
        let digest = hex::encode(Sha256::digest(&bytes));
        if digest != m.digest || bytes.len() != m.size_bytes {
            // Kept pending: a rewrite of the bad chunk can still fix it.
            return Err(format!(
                "plugin {name}@{version}: stored bytes ({} of them) do not match digest {} ({} bytes)",
                bytes.len(),
                m.digest,
                m.size_bytes
            ));
        }
        slot.live = true;
        self.pending.remove(&key);
        self.pending_bytes -= size;
        self.blobs
            .entry(digest)
            .and_modify(|b| b.users += 1)
            .or_insert_with(|| Blob {
                bytes: Arc::new(bytes),
                users: 1,
            });
        Ok(())
    }

    fn release_blob(&mut self, digest: &str) {
        if let Some(blob) = self.blobs.get_mut(digest) {
            blob.users -= 1;
            if blob.users == 0 {
                self.blobs.remove(digest);
            }
        }
    }

    fn drop_pending(&mut self, name: &str, version: u32) {
        if let Some(p) = self.pending.remove(&(name.to_owned(), version)) {
            self.pending_bytes -= p.bytes();
        }
    }

    /// Drops the oldest incomplete versions' chunks while over the limits.
    fn enforce_pending_limits(&mut self) {
        while self.pending_bytes > self.limits.max_bytes
            || self.pending.len() > self.limits.max_versions
        {
            let Some(oldest) = self
                .pending
                .iter()
                .min_by_key(|(_, p)| p.first_arrival)
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            let dropped = self.pending.remove(&oldest).map_or(0, |p| p.bytes());
            self.pending_bytes -= dropped;
            tracing::warn!(
                plugin = %oldest.0,
                version = oldest.1,
                dropped_bytes = dropped,
                max_bytes = self.limits.max_bytes,
                max_versions = self.limits.max_versions,
                "dropping the chunks of an incomplete plugin version: too many bytes or versions wait \
                 for their missing chunks or manifest"
            );
            metrics::counter!(crate::metrics_names::REGISTRY_CHUNKS_DROPPED).increment(1);
        }
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

    /// Every plugin with a live version, with its live versions, oldest first.
    pub fn plugins(&self) -> impl Iterator<Item = (&str, Vec<&PluginVersion>)> {
        self.plugins.iter().filter_map(|(n, e)| {
            let live = live_versions(e);
            (!live.is_empty()).then_some((n.as_str(), live))
        })
    }

    /// Live versions of `name`, oldest first; `None` if it has none.
    pub fn plugin(&self, name: &str) -> Option<Vec<&PluginVersion>> {
        let live = live_versions(self.plugins.get(name)?);
        (!live.is_empty()).then_some(live)
    }

    /// One live version; the newest when `version` is `None`.
    pub fn plugin_version(&self, name: &str, version: Option<u32>) -> Option<&PluginVersion> {
        let versions = &self.plugins.get(name)?.versions;
        match version {
            Some(v) => versions.get(&v).filter(|s| s.live).map(|s| &s.owner),
            None => versions.values().rev().find(|s| s.live).map(|s| &s.owner),
        }
    }

    /// The digest owning `name@version` (live or still waiting for its
    /// chunks): what a claimant checks to learn whether it won.
    pub fn claim_owner(&self, name: &str, version: u32) -> Option<&str> {
        let slot = self.plugins.get(name)?.versions.get(&version)?;
        Some(&slot.owner.digest)
    }

    /// Keys of every claim of `name@version` still in the log, the
    /// owner's first: what a delete tombstones.
    pub fn claim_keys(&self, name: &str, version: u32) -> Vec<String> {
        let Some(slot) = self
            .plugins
            .get(name)
            .and_then(|e| e.versions.get(&version))
        else {
            return Vec::new();
        };
        let owner = keys::claim(name, version, &slot.owner.digest, &slot.owner_nonce);
        std::iter::once(owner)
            .chain(
                slot.claims
                    .iter()
                    .filter(|(n, _)| **n != slot.owner_nonce)
                    .map(|(n, d)| keys::claim(name, version, d, n)),
            )
            .collect()
    }

    /// The version number the next upload of `name` claims.
    pub fn next_version(&self, name: &str) -> u32 {
        self.highest_version(name) + 1
    }

    /// The highest version `name` ever had (0 for none).
    pub fn highest_version(&self, name: &str) -> u32 {
        self.plugins.get(name).map_or(0, |e| e.highest)
    }

    /// The highest deleted version of `name` (0 for none): what a delete
    /// writes to `highest/<name>`, raised to the version it deletes.
    pub fn highest_deleted(&self, name: &str) -> u32 {
        self.plugins.get(name).map_or(0, |e| e.deleted)
    }

    /// A verified component by digest.
    pub fn blob(&self, digest: &str) -> Option<Arc<Vec<u8>>> {
        self.blobs.get(digest).map(|b| b.bytes.clone())
    }

    /// Bytes of plugin code held: live versions' bytes (once per digest)
    /// plus chunks waiting for the rest of their version. A function of
    /// the live plugins and the uploads in flight, not of history.
    pub fn bytes(&self) -> usize {
        self.blobs.values().map(|b| b.bytes.len()).sum::<usize>() + self.pending_bytes
    }

    /// Every pipeline.
    pub fn pipelines(&self) -> impl Iterator<Item = &StoredPipeline> {
        self.pipelines.values()
    }

    /// One pipeline.
    pub fn pipeline(&self, name: &str) -> Option<&StoredPipeline> {
        self.pipelines.get(name)
    }

    /// Who uses `name@version`, as the delete refuses it: registry
    /// pipelines pinned to it, or naming `name` bare while it is the newest
    /// live version (paused ones included: resuming them would need it),
    /// and every pipeline a host published running it (config-file ones
    /// included) within `MEMBER_RECORD_FRESH_MS` of `now_ms`. `local` is
    /// this host's own view, fresher than what it published.
    pub fn users_of(
        &self,
        name: &str,
        version: u32,
        local: &[MemberRecord],
        now_ms: i64,
    ) -> Vec<VersionUser> {
        let newest = self.plugin_version(name, None).map(|v| v.version);
        let local_hosts: BTreeSet<&str> = local.iter().map(|m| m.host.as_str()).collect();
        let published = self
            .members
            .values()
            .filter(|m| !local_hosts.contains(m.host.as_str()))
            .filter(|m| now_ms - m.updated_ms <= MEMBER_RECORD_FRESH_MS);
        let mut users: BTreeMap<String, VersionUser> = BTreeMap::new();
        for p in &self.pipelines {
            let uses = match parse_plugin_ref(&p.1.spec.plugin) {
                Ok((n, Some(v))) => n == name && v == version,
                Ok((n, None)) => n == name && newest == Some(version),
                Err(_) => false,
            };
            if uses {
                users.insert(
                    p.0.clone(),
                    VersionUser {
                        pipeline: p.0.clone(),
                        declared: p.1.spec.plugin.clone(),
                        source: PipelineSource::Api,
                        hosts: BTreeSet::new(),
                    },
                );
            }
        }
        for m in local.iter().chain(published) {
            if m.plugin_name != name || m.plugin_version != Some(version) {
                continue;
            }
            users
                .entry(m.pipeline.clone())
                .or_insert_with(|| VersionUser {
                    pipeline: m.pipeline.clone(),
                    declared: m.plugin.clone(),
                    source: m.source,
                    hosts: BTreeSet::new(),
                })
                .hosts
                .insert(m.host.clone());
        }
        users.into_values().collect()
    }
}

fn live_versions(e: &PluginEntry) -> Vec<&PluginVersion> {
    e.versions
        .values()
        .filter(|s| s.live)
        .map(|s| &s.owner)
        .collect()
}

/// A member record older than this no longer counts as a host running a
/// version (hosts republish every 10 s; a killed host stops blocking
/// deletes a minute later).
pub const MEMBER_RECORD_FRESH_MS: i64 = 60_000;

/// A pipeline that uses a plugin version, for the delete's 409.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionUser {
    /// Pipeline name.
    pub pipeline: String,
    /// Its plugin as declared (`redact@2`, `redact`).
    pub declared: String,
    /// Registry pipeline, or a host's config file.
    pub source: PipelineSource,
    /// Hosts running it on that version.
    pub hosts: BTreeSet<String>,
}

impl std::fmt::Display for VersionUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts: Vec<&str> = self.hosts.iter().map(String::as_str).collect();
        match self.source {
            PipelineSource::Api if hosts.is_empty() => write!(
                f,
                "pipeline `{}` (registry, `{}`)",
                self.pipeline, self.declared
            ),
            PipelineSource::Api => write!(
                f,
                "pipeline `{}` (registry, `{}`, running on {})",
                self.pipeline,
                self.declared,
                hosts.join(", ")
            ),
            PipelineSource::Config => write!(
                f,
                "pipeline `{}` (config file of {}, `{}`)",
                self.pipeline,
                hosts.join(", "),
                self.declared
            ),
        }
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The pipeline's plugin as declared: `redact@2`, `redact` (newest) or
    /// a `.wasm` path. Empty in records of hosts older than this field.
    #[serde(default)]
    pub plugin: String,
    /// The plugin running now, as loaded (a registry name, or a file stem).
    #[serde(default)]
    pub plugin_name: String,
    /// Its registry version; `None` for a `.wasm` file.
    #[serde(default)]
    pub plugin_version: Option<u32>,
    /// Where the pipeline is declared: the registry, or this host's config
    /// file (which only this record tells other hosts about).
    #[serde(default)]
    pub source: PipelineSource,
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
    use proptest::prelude::*;

    /// A plugins-topic record: key, and value (`None`: a tombstone).
    type Record = (String, Option<Vec<u8>>);

    fn digest(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// A nonce of its own for every claim a test writes.
    fn nonce() -> String {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        format!("n{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }

    fn claim(name: &str, version: u32, bytes: &[u8], chunk: usize) -> Record {
        claim_as(name, version, bytes, chunk, &nonce())
    }

    fn claim_as(name: &str, version: u32, bytes: &[u8], chunk: usize, nonce: &str) -> Record {
        let m = PluginVersion {
            name: name.into(),
            version,
            digest: digest(bytes),
            size_bytes: bytes.len(),
            chunks: bytes.chunks(chunk).count() as u32,
            created_ms: 1,
            abi: crate::runtime::PluginAbi::Component,
        };
        (
            keys::claim(name, version, &m.digest, nonce),
            Some(serde_json::to_vec(&m).expect("json")),
        )
    }

    fn chunks(name: &str, version: u32, bytes: &[u8], chunk: usize) -> Vec<Record> {
        bytes
            .chunks(chunk)
            .enumerate()
            .map(|(i, c)| (keys::chunk(name, version, i as u32), Some(c.to_vec())))
            .collect()
    }

    /// What `Registry::put_plugin` writes once it has won `version`.
    fn upload(name: &str, version: u32, bytes: &[u8], chunk: usize) -> Vec<Record> {
        let mut records = vec![claim(name, version, bytes, chunk)];
        records.extend(chunks(name, version, bytes, chunk));
        records
    }

    /// What `Registry::delete_plugin_version` writes.
    fn delete(s: &RegistryState, name: &str, version: u32) -> Vec<Record> {
        let owner = s.plugin_version(name, Some(version)).expect("live").clone();
        let mut records = vec![(
            keys::highest(name),
            Some(
                s.highest_deleted(name)
                    .max(version)
                    .to_string()
                    .into_bytes(),
            ),
        )];
        for key in s.claim_keys(name, version) {
            records.push((key, None));
        }
        for i in 0..owner.chunks {
            records.push((keys::chunk(name, version, i), None));
        }
        records
    }

    fn replay<'a>(records: impl IntoIterator<Item = &'a Record>) -> RegistryState {
        let mut s = RegistryState::default();
        apply_all(&mut s, records);
        s
    }

    fn apply_all<'a>(s: &mut RegistryState, records: impl IntoIterator<Item = &'a Record>) {
        for (k, v) in records {
            s.apply(TopicKind::Plugins, k, v.as_deref());
        }
    }

    /// Kafka's cleaner on `log[..cut]`: a record is dropped when a later
    /// record before `cut` has its key; surviving tombstones are dropped
    /// too when `drop_tombstones` (past `delete.retention.ms`). Order is
    /// kept; records from `cut` on (the active segment) are untouched.
    fn compact(log: &[Record], cut: usize, drop_tombstones: bool) -> Vec<Record> {
        let cut = cut.min(log.len());
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (i, (k, _)) in log[..cut].iter().enumerate() {
            last.insert(k, i);
        }
        log.iter()
            .enumerate()
            .filter(|(i, (k, v))| {
                *i >= cut || (last[k.as_str()] == *i && (v.is_some() || !drop_tombstones))
            })
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// `name@version → digest` of every live version.
    fn live(s: &RegistryState) -> BTreeMap<(String, u32), String> {
        s.plugins()
            .flat_map(|(n, vs)| {
                vs.into_iter()
                    .map(move |v| ((n.to_owned(), v.version), v.digest.clone()))
            })
            .collect()
    }

    fn live_blob_bytes(s: &RegistryState) -> usize {
        let digests: BTreeSet<String> = live(s).into_values().collect();
        digests
            .iter()
            .map(|d| s.blob(d).expect("a live version has its bytes").len())
            .sum()
    }

    #[test]
    fn chunks_and_claim_in_any_order_make_a_verified_version() {
        let bytes = b"0123456789";
        let mut records = upload("redact", 1, bytes, 4);
        records.reverse();
        let s = replay(&records);
        assert_eq!(s.plugin_version("redact", None).map(|v| v.version), Some(1));
        assert_eq!(
            s.blob(&digest(bytes)).as_deref().map(Vec::as_slice),
            Some(&bytes[..])
        );
        assert_eq!(s.bytes(), bytes.len());
    }

    #[test]
    fn a_version_whose_bytes_do_not_match_is_not_live() {
        let mut records = vec![claim("p", 1, b"good", 4)];
        records.push((keys::chunk("p", 1, 0), Some(b"evil".to_vec())));
        let mut s = replay(&records);
        assert!(s.plugin("p").is_none());
        // A rewrite of the bad chunk (the owner's retry) makes it whole.
        apply_all(&mut s, &chunks("p", 1, b"good", 4));
        assert_eq!(
            s.plugin_version("p", Some(1)).map(|v| v.digest.clone()),
            Some(digest(b"good"))
        );
    }

    /// Issue 10 item 1: the first claim of a number in log order owns it,
    /// on every host, whatever comes later.
    #[test]
    fn the_first_claim_of_a_version_number_wins() {
        let mut log = vec![claim("x", 1, b"first", 8), claim("x", 1, b"second", 8)];
        log.extend(chunks("x", 1, b"second", 8)); // a loser writing anyway
        log.extend(chunks("x", 1, b"first", 8));
        let s = replay(&log);
        assert_eq!(s.claim_owner("x", 1), Some(digest(b"first").as_str()));
        assert_eq!(
            s.plugin_version("x", Some(1)).map(|v| v.digest.clone()),
            Some(digest(b"first"))
        );
        assert_eq!(
            s.claim_keys("x", 1).len(),
            2,
            "the loser's claim is still there to tombstone"
        );
        assert_eq!(s.next_version("x"), 2);
    }

    #[test]
    fn a_deleted_version_number_is_never_given_to_other_bytes() {
        let mut log = upload("p", 1, b"one", 8);
        log.extend(upload("p", 2, b"two", 8));
        let s = replay(&log);
        log.extend(delete(&s, "p", 2));
        // A host with a stale view claims 2 again for other bytes.
        log.extend(upload("p", 2, b"late", 8));
        let s = replay(&log);
        assert_eq!(s.plugin("p").map(|v| v.len()), Some(1));
        assert!(s.claim_owner("p", 2).is_none());
        assert_eq!(s.next_version("p"), 3);
        // After compaction, too (the claim of 2 and its tombstone gone).
        let compacted = compact(&log, log.len(), true);
        let s = replay(&compacted);
        assert_eq!(s.plugin("p").map(|v| v.len()), Some(1));
        assert_eq!(s.next_version("p"), 3);
        // A lower `highest` (an older deletion) never lowers it.
        let mut s = s;
        s.apply(TopicKind::Plugins, "highest/p", Some(b"1"));
        assert_eq!(s.next_version("p"), 3);
    }

    /// Issue 10 item 2, as reported: the same bytes under a second name
    /// used to rewrite the first name's chunks after its manifest, and
    /// compaction then left `a@1` before its chunks.
    #[test]
    fn shared_bytes_under_two_names_survive_compaction() {
        let mut log = upload("a", 1, b"shared", 4);
        log.extend(upload("b", 1, b"shared", 4));
        let before = live(&replay(&log));
        let after = replay(&compact(&log, log.len(), true));
        assert_eq!(live(&after), before);
        assert_eq!(before.len(), 2);
        assert_eq!(after.bytes(), b"shared".len(), "equal bytes are held once");
    }

    /// Issue 10 item 3: upload and delete 50 versions; what is held is
    /// what the live versions need, live and after a fresh replay of the
    /// compacted topic, and so is what the replay reads.
    #[test]
    fn deleted_versions_leave_nothing_behind() {
        let mut s = RegistryState::default();
        let mut log: Vec<Record> = Vec::new();
        let keep = b"kept for good".to_vec();
        let records = upload("keep", 1, &keep, 4);
        apply_all(&mut s, &records);
        log.extend(records);
        for i in 0..50u32 {
            let bytes =
                format!("version {i} of p, some bytes {}", "x".repeat(i as usize)).into_bytes();
            let v = s.next_version("p");
            let records = upload("p", v, &bytes, 8);
            apply_all(&mut s, &records);
            log.extend(records);
            assert_eq!(s.bytes(), keep.len() + bytes.len());
            let records = delete(&s, "p", v);
            apply_all(&mut s, &records);
            log.extend(records);
            assert_eq!(s.bytes(), keep.len(), "after deleting p@{v}");
        }
        assert!(s.plugin("p").is_none());
        assert_eq!(s.next_version("p"), 51);
        let compacted = compact(&log, log.len(), true);
        let fresh = replay(&compacted);
        assert_eq!(fresh.bytes(), keep.len());
        assert_eq!(fresh.next_version("p"), 51);
        assert_eq!(live(&fresh), live(&s));
        // keep's claim and 4 chunks, and p's `highest`.
        assert_eq!(compacted.len(), 6, "{compacted:?}");
    }

    #[test]
    fn chunks_waiting_for_their_version_are_bounded() {
        let mut s = RegistryState::new(
            ControlPlane::default(),
            PendingLimits {
                max_bytes: 10,
                max_versions: 2,
            },
        );
        // Chunks of three versions whose claims never come.
        for v in 1..=3 {
            s.apply(TopicKind::Plugins, &keys::chunk("p", v, 0), Some(b"abcd"));
        }
        assert_eq!(s.bytes(), 8, "the oldest version's chunks were dropped");
        s.apply(
            TopicKind::Plugins,
            &keys::chunk("p", 4, 0),
            Some(b"0123456789"),
        );
        assert!(s.bytes() <= 10);
        // A whole upload still goes through.
        apply_all(&mut s, &upload("q", 1, b"tiny", 4));
        assert!(s.plugin("q").is_some());
    }

    /// One step of a history of the plugins topic.
    #[derive(Debug, Clone)]
    enum Op {
        /// Upload content `c` to name `n`: the claim and chunks, in any order.
        Upload {
            n: usize,
            c: usize,
            order: Vec<usize>,
        },
        /// A second uploader of a live version's bytes that claimed the
        /// same number at the same time: its own claim, then the chunks
        /// again (same keys), or it stops before them.
        Rewrite { pick: usize, chunks_too: bool },
        /// A claim of a live version's number for other bytes; its writer
        /// withdraws it unless it crashed first.
        Lose {
            pick: usize,
            c: usize,
            withdrawn: bool,
        },
        /// Delete a live version.
        Delete { pick: usize },
    }

    const NAMES: [&str; 2] = ["a", "b"];

    fn contents() -> Vec<Vec<u8>> {
        (0..4u8)
            .map(|i| {
                (0..(3 + 5 * i as usize))
                    .map(|j| b'a' + ((i as usize * 7 + j) % 26) as u8)
                    .collect()
            })
            .collect()
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..2usize, 0..4usize, proptest::collection::vec(0..100usize, 8))
                .prop_map(|(n, c, order)| Op::Upload { n, c, order }),
            2 => (0..100usize, any::<bool>()).prop_map(|(pick, chunks_too)| Op::Rewrite { pick, chunks_too }),
            1 => (0..100usize, 0..4usize, any::<bool>())
                .prop_map(|(pick, c, withdrawn)| Op::Lose { pick, c, withdrawn }),
            2 => (0..100usize).prop_map(|pick| Op::Delete { pick }),
        ]
    }

    /// The log a history writes, following the writers' protocol against
    /// the state their follower has applied so far.
    fn history(ops: &[Op]) -> Vec<Record> {
        const CHUNK: usize = 4;
        let contents = contents();
        let mut s = RegistryState::default();
        let mut log = Vec::new();
        for op in ops {
            let versions: Vec<(String, u32, String)> =
                live(&s).into_iter().map(|((n, v), d)| (n, v, d)).collect();
            let picked = |pick: usize| versions.get(pick % versions.len().max(1)).cloned();
            let records: Vec<Record> = match op {
                Op::Upload { n, c, order } => {
                    let name = NAMES[*n];
                    // Bytes live under the name already keep their version.
                    if s.plugin(name)
                        .unwrap_or_default()
                        .iter()
                        .any(|v| v.digest == digest(&contents[*c]))
                    {
                        continue;
                    }
                    let v = s.next_version(name);
                    let mut records = upload(name, v, &contents[*c], CHUNK);
                    // Chunks may come before the claim (after compaction).
                    let mut keyed: Vec<(usize, Record)> = records
                        .drain(..)
                        .enumerate()
                        .map(|(i, r)| (order[i % order.len()] * 16 + i, r))
                        .collect();
                    keyed.sort_by_key(|(k, _)| *k);
                    keyed.into_iter().map(|(_, r)| r).collect()
                }
                Op::Rewrite { pick, chunks_too } => match picked(*pick) {
                    Some((n, v, d)) => {
                        let bytes = s.blob(&d).expect("live").to_vec();
                        let mut records = upload(&n, v, &bytes, CHUNK);
                        if !chunks_too {
                            records.truncate(1);
                        }
                        records
                    }
                    None => Vec::new(),
                },
                Op::Lose { pick, c, withdrawn } => match picked(*pick) {
                    Some((n, v, d)) if digest(&contents[*c]) != d => {
                        let nonce = nonce();
                        let mut records = vec![claim_as(&n, v, &contents[*c], CHUNK, &nonce)];
                        if *withdrawn {
                            records
                                .push((keys::claim(&n, v, &digest(&contents[*c]), &nonce), None));
                        }
                        records
                    }
                    _ => Vec::new(),
                },
                Op::Delete { pick } => match picked(*pick) {
                    Some((n, v, _)) => delete(&s, &n, v),
                    None => Vec::new(),
                },
            };
            apply_all(&mut s, &records);
            log.extend(records);
        }
        log
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Issue 10 item 2: replay does not depend on the order of chunks
        /// and claims or on which copies compaction kept. Every version live
        /// before a (partial or full) compaction is live after it with the
        /// same digest and bytes, nothing else becomes live, numbers stay
        /// taken, and the bytes held are exactly the live versions'.
        #[test]
        fn compaction_keeps_every_live_version(
            ops in proptest::collection::vec(op(), 1..24),
            cut_per_mille in 0..=1000usize,
            drop_tombstones in any::<bool>(),
        ) {
            let log = history(&ops);
            let before = replay(&log);
            let cut = log.len() * cut_per_mille / 1000;
            let compacted = compact(&log, cut, drop_tombstones);
            let after = replay(&compacted);
            prop_assert_eq!(live(&after), live(&before));
            for d in live(&before).values() {
                prop_assert_eq!(after.blob(d), before.blob(d));
                prop_assert_eq!(after.blob(d).map(|b| digest(&b)), Some(d.clone()));
            }
            for name in NAMES {
                prop_assert_eq!(after.next_version(name), before.next_version(name));
            }
            prop_assert_eq!(before.bytes(), live_blob_bytes(&before));
            prop_assert_eq!(after.bytes(), live_blob_bytes(&after));
        }
    }

    fn member(
        host: &str,
        pipeline: &str,
        plugin: &str,
        version: u32,
        source: PipelineSource,
        at: i64,
    ) -> MemberRecord {
        MemberRecord {
            host: host.into(),
            pipeline: pipeline.into(),
            group_id: format!("kwasm-{pipeline}"),
            partitions: Vec::new(),
            updated_ms: at,
            plugin: plugin.into(),
            plugin_name: "x".into(),
            plugin_version: Some(version),
            source,
        }
    }

    /// Issue 10 item 4: who uses a version, as the delete's 409 says it.
    #[test]
    fn users_of_a_version_include_bare_names_and_config_pipelines_of_any_host() {
        let mut s = RegistryState::default();
        for v in 1..=3 {
            apply_all(&mut s, &upload("x", v, format!("bytes {v}").as_bytes(), 4));
        }
        let pipeline = |plugin: &str| {
            format!(r#"{{"plugin":"{plugin}","inputs":["in"],"output":"out"}}"#).into_bytes()
        };
        s.apply(TopicKind::Pipelines, "pinned", Some(&pipeline("x@1")));
        s.apply(TopicKind::Pipelines, "bare", Some(&pipeline("x")));
        let now = 1_000_000;
        let published = member(
            "host-b",
            "local",
            "x@2",
            2,
            PipelineSource::Config,
            now - 5_000,
        );
        s.apply(
            TopicKind::Members,
            "kwasm-local/host-b",
            Some(&serde_json::to_vec(&published).expect("json")),
        );
        let stale = member(
            "host-c",
            "gone",
            "x@2",
            2,
            PipelineSource::Config,
            now - MEMBER_RECORD_FRESH_MS - 1,
        );
        s.apply(
            TopicKind::Members,
            "kwasm-gone/host-c",
            Some(&serde_json::to_vec(&stale).expect("json")),
        );
        let local = [member(
            "host-a",
            "pinned",
            "x@1",
            1,
            PipelineSource::Api,
            now,
        )];

        let names = |v| {
            s.users_of("x", v, &local, now)
                .into_iter()
                .map(|u| u.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(1),
            vec!["pipeline `pinned` (registry, `x@1`, running on host-a)"]
        );
        assert_eq!(
            names(2),
            vec!["pipeline `local` (config file of host-b, `x@2`)"]
        );
        assert_eq!(
            names(3),
            vec!["pipeline `bare` (registry, `x`)"],
            "the newest version, for a bare name"
        );
        // Once a newer version exists, the bare name no longer holds 3.
        apply_all(&mut s, &upload("x", 4, b"bytes 4", 4));
        assert!(s.users_of("x", 3, &local, now).is_empty());
    }

    #[test]
    fn tombstones_delete_pipelines() {
        let mut s = RegistryState::default();
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
        let mut s = RegistryState::new(
            ControlPlane::new(&crate::config::RegistryConfig {
                pipelines_topic: "ops-pipelines".into(),
                ..Default::default()
            }),
            PendingLimits::default(),
        );
        let to_registry = br#"{"plugin":"p@1","inputs":["in"],"output":"ops-pipelines"}"#;
        s.apply(TopicKind::Pipelines, "orders", Some(to_registry));
        assert!(s.pipeline("orders").is_none());
    }

    #[test]
    fn claims_must_match_their_key_and_the_name_rule() {
        let d = digest(b"x");
        let (_, value) = claim("b", 1, b"x", 4);
        let mut s = replay(&[
            (keys::claim("a", 1, &d, "n1"), value.clone()),
            (keys::claim("a", 2, &d, "n2"), claim("a", 1, b"x", 4).1),
            (
                keys::claim("a", 1, &digest(b"y"), "n3"),
                claim("a", 1, b"x", 4).1,
            ),
            (format!("manifest/a/1/{d}/no/pe"), claim("a", 1, b"x", 4).1),
            (keys::chunk("a", 1, 0), Some(b"x".to_vec())),
        ]);
        s.apply(
            TopicKind::Plugins,
            &format!("manifest/-x/1/{d}/n4"),
            claim("-x", 1, b"x", 4).1.as_deref(),
        );
        s.apply(
            TopicKind::Plugins,
            "manifest/a/1",
            claim("a", 1, b"x", 4).1.as_deref(),
        );
        s.apply(
            TopicKind::Plugins,
            &format!("manifest/a/1/{d}"),
            claim("a", 1, b"x", 4).1.as_deref(),
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
