//! The admin API's answers as the client reads them (docs/api.md).
//!
//! Decoding is lenient on purpose: unknown fields are ignored and fields the
//! commands only display default when missing, so a newer host still works
//! with an older `kwasm` binary. Only what a command cannot do without
//! (names, versions, topics, partitions) is required.

use serde::Deserialize;

/// `POST /v1/plugins/{name}`: the version the upload is stored as.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DeployedPlugin {
    /// Plugin name.
    pub name: String,
    /// Version number (1, 2, ...).
    pub version: u64,
    /// Digest of the component's bytes.
    pub digest: String,
    /// Size of the component.
    pub size_bytes: u64,
    /// When this version was first stored (Unix ms).
    #[serde(default)]
    pub created_ms: Option<i64>,
}

/// `GET /v1/plugins`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PluginList {
    /// Every plugin.
    pub plugins: Vec<Plugin>,
}

/// A plugin and its stored versions.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Plugin {
    /// Plugin name.
    pub name: String,
    /// Stored versions.
    #[serde(default)]
    pub versions: Vec<PluginVersion>,
}

/// One stored version of a plugin.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PluginVersion {
    /// Version number.
    pub version: u64,
    /// Digest of the component's bytes.
    #[serde(default)]
    pub digest: String,
    /// Size of the component.
    #[serde(default)]
    pub size_bytes: Option<u64>,
    /// When it was stored (Unix ms).
    #[serde(default)]
    pub created_ms: Option<i64>,
}

/// `GET /v1/pipelines`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PipelineList {
    /// Every pipeline.
    pub pipelines: Vec<Pipeline>,
}

/// A pipeline as the API shows it (the fields the commands display).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Pipeline {
    /// Pipeline name.
    pub name: String,
    /// `name@version`.
    #[serde(default)]
    pub plugin: String,
    /// Input topics.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Input topic regex, instead of `inputs`.
    #[serde(default)]
    pub input_regex: Option<String>,
    /// Output topic.
    #[serde(default)]
    pub output: Option<String>,
    /// Whether every host has stopped it.
    #[serde(default)]
    pub paused: bool,
    /// `api` or `config`.
    #[serde(default)]
    pub source: Option<String>,
}

/// `GET /v1/assignments`: what the contacted host holds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Assignments {
    /// The contacted host's id.
    pub host: String,
    /// Its pipelines.
    #[serde(default)]
    pub pipelines: Vec<PipelineAssignment>,
}

/// One pipeline's partitions on the contacted host.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PipelineAssignment {
    /// Pipeline name.
    pub pipeline: String,
    /// Partitions held.
    #[serde(default)]
    pub partitions: Vec<PartitionProgress>,
}

/// One held partition and how far the host is.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PartitionProgress {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Next offset to fetch.
    #[serde(default)]
    pub position: Option<i64>,
    /// Last committed offset.
    #[serde(default)]
    pub committed: Option<i64>,
    /// Messages behind the high watermark.
    #[serde(default)]
    pub lag: Option<i64>,
    /// `running`, `paused`, `draining`, ...
    #[serde(default)]
    pub state: Option<String>,
}

/// `GET /v1/pipelines/{name}/members`: every host of the pipeline's group.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Members {
    /// The hosts.
    #[serde(default)]
    pub members: Vec<Member>,
}

/// One host of a group and the partitions it published as held.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Member {
    /// Host id.
    pub host: String,
    /// Its partitions.
    #[serde(default)]
    pub partitions: Vec<TopicPartition>,
}

/// A topic and partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct TopicPartition {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
}

/// `GET /v1/pipelines/{name}/logs`.
#[derive(Debug, Deserialize)]
pub struct LogPage {
    /// Lines, oldest first.
    pub lines: Vec<LogPageLine>,
    /// Ask with `after=cursor` for the lines after these.
    pub cursor: u64,
}

/// One line of a [`LogPage`]; `text` is the host's rendering.
#[derive(Debug, Deserialize)]
pub struct LogPageLine {
    /// The line as `kwasm logs` prints it.
    pub text: String,
}
