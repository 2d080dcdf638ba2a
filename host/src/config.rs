//! The host's configuration file (`kwasm serve --config FILE`, TOML).
//!
//! Unknown fields are errors, and validation names the offending field, so a
//! typo fails at startup instead of silently running with a default.
//!
//! ```toml
//! [host]
//! id = "host-a"                  # client.id; also group.instance.id when static_membership
//! admin_listen = "127.0.0.1:8080"
//!
//! [kafka]
//! brokers = "127.0.0.1:9092"
//! group_protocol = "classic"     # or "consumer" (KIP-848); see GroupProtocol
//! [kafka.properties]             # any librdkafka property, for every client
//! "security.protocol" = "plaintext"
//! [kafka.consumer_properties]    # ... for the pipelines' consumers only
//! "session.timeout.ms" = "6000"
//! [kafka.producer_properties]    # ... for the output producer only
//! "linger.ms" = "10"
//!
//! [[pipeline]]
//! name = "orders-clean"
//! plugin = "plugins/redact.wasm"
//! inputs = ["orders"]
//! output = "orders-clean"
//! config = { fields = "card,email" }
//! ```
//!
//! Every field a pod sets per instance can also come from the environment
//! (`KWASM_HOST_ID`, `KWASM_BROKERS`, `KWASM_KAFKA_PROPERTY_<NAME>`, ...):
//! environment over file over defaults; see [`env`] for the list.

pub mod env;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::runtime::Limits;
use crate::topics::{ControlPlane, OutputPolicy, is_topic_name};

/// Everything `kwasm serve` reads from its config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This host.
    #[serde(default)]
    pub host: HostConfig,
    /// How to reach Kafka. May be left out when `KWASM_BROKERS` gives the
    /// brokers.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// Default limits for every plugin (a pipeline may override them).
    #[serde(default)]
    pub limits: Limits,
    /// The plugin and pipeline registry (Kafka topics).
    #[serde(default)]
    pub registry: RegistryConfig,
    /// Pipelines declared here. They win over registry pipelines of the
    /// same name, and the API cannot change them.
    #[serde(default, rename = "pipeline")]
    pub pipelines: Vec<PipelineSpec>,
}

/// Settings of this host process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Names this host in the group (librdkafka `client.id`), in logs and
    /// in the registry's member records; with `static_membership` it is
    /// also the `group.instance.id` (as `<id>-<pipeline>`), so it must be
    /// unique per host: 1 to 200 characters of `[a-zA-Z0-9._-]` (Kafka's
    /// rule for instance ids). `KWASM_HOST_ID` overrides it. Default: the
    /// machine's hostname (the pod name in Kubernetes), or `kwasm-<pid>`
    /// when there is none usable (see [`default_host_id`]). Several hosts
    /// on one machine need an id each.
    pub id: String,
    /// Use `id` as `group.instance.id` (KIP-345 static membership), so a
    /// restarted pod keeps its partitions without a rebalance. Default false.
    pub static_membership: bool,
    /// Where the admin HTTP API listens. Default `127.0.0.1:8080`.
    pub admin_listen: String,
    /// Plugin calls running at once across all partitions. Default: cores.
    pub workers: usize,
    /// How long SIGTERM (or a revocation) waits for in-flight batches and
    /// their deliveries before committing what is done. Default 10 000 ms.
    pub shutdown_grace_ms: u64,
    /// How often done offsets are committed. Default 1 000 ms.
    pub commit_interval_ms: u64,
    /// Compiled-plugin cache. Default `.kwasm/cache`.
    pub cache_dir: PathBuf,
    /// Bearer token required by every `/v1` admin call, reads included
    /// (`/healthz`, `/readyz`, `/metrics` stay open for probes and
    /// scrapers); `KWASM_ADMIN_TOKEN` overrides it. Empty or whitespace-only
    /// is a startup error. Default none: the API is open, so the host then
    /// refuses a non-loopback `admin_listen` unless `admin_insecure` is set.
    pub admin_token: Option<String>,
    /// Serve the API without a token on a non-loopback address (logged as
    /// a warning at startup). Default false.
    pub admin_insecure: bool,
    /// Serve the API over TLS (rustls) with this certificate and key;
    /// plain http is then refused. Default none (plain http).
    pub admin_tls: Option<AdminTlsConfig>,
    /// Where `admin_token` came from, for error messages: the config field
    /// or the environment variable that overrode it.
    #[serde(skip)]
    pub admin_token_origin: TokenOrigin,
    /// Fields set by the environment (dotted field → variable), so that an
    /// error about one names the variable the operator set.
    #[serde(skip)]
    pub overridden_by_env: BTreeMap<String, String>,
    /// Bytes all plugin instances of this host may hold together: each
    /// instance reserves its `limits.memory_bytes` from it, and a partition
    /// whose instance does not fit waits (idle partitions' instances are
    /// dropped for it) instead of the host being OOM-killed. Default half
    /// of the smaller of the cgroup memory limit and the machine's memory.
    pub max_plugin_memory_bytes: Option<usize>,
}

/// TLS on the admin listener (`[host.admin_tls]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTlsConfig {
    /// PEM file of the certificate chain, leaf first.
    pub cert_path: PathBuf,
    /// PEM file of the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
}

/// Which setting supplied the admin token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TokenOrigin {
    /// `host.admin_token` in the config file.
    #[default]
    ConfigFile,
    /// The `KWASM_ADMIN_TOKEN` environment variable.
    Environment,
}

impl TokenOrigin {
    /// The name an operator would look for.
    pub fn name(self) -> &'static str {
        match self {
            TokenOrigin::ConfigFile => "host.admin_token",
            TokenOrigin::Environment => "KWASM_ADMIN_TOKEN",
        }
    }
}

impl HostConfig {
    /// `max_plugin_memory_bytes`, or its documented default.
    pub fn plugin_memory_budget_bytes(&self) -> usize {
        self.max_plugin_memory_bytes
            .unwrap_or_else(crate::runtime::default_plugin_memory_bytes)
    }

    /// A token that is set must be usable: an empty one would match
    /// `Authorization: Bearer ` and a whitespace-only one is a typo.
    pub fn check_admin_token(&self) -> Result<(), ConfigError> {
        match &self.admin_token {
            Some(token) if token.trim().is_empty() => Err(ConfigError::Invalid {
                field: self.admin_token_origin.name().to_owned(),
                message: "is empty or whitespace; set a real token or remove it".to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Whether the admin API may be served as configured: the token is
    /// usable, and an API without a token listens on loopback only unless
    /// `admin_insecure` says otherwise. Run after [`Config::with_env`] (the
    /// token may come from the environment) and before binding.
    pub fn check_admin_access(&self) -> Result<(), ConfigError> {
        self.check_admin_token()?;
        let addr: std::net::SocketAddr =
            self.admin_listen
                .parse()
                .map_err(|_| ConfigError::Invalid {
                    field: "host.admin_listen".to_owned(),
                    message: "must be an address like 127.0.0.1:8080".to_owned(),
                })?;
        if self.admin_token.is_none() && !addr.ip().is_loopback() && !self.admin_insecure {
            return Err(ConfigError::Invalid {
                field: "host.admin_listen".to_owned(),
                message: format!(
                    "{addr} is not a loopback address and no admin token is set: anyone who \
                     reaches it could deploy plugins. Set host.admin_token (or \
                     KWASM_ADMIN_TOKEN), or host.admin_insecure = true to serve it open"
                ),
            });
        }
        Ok(())
    }

    /// Whether the API will be open to other machines (to warn about it).
    pub fn admin_open_to_network(&self) -> bool {
        self.admin_token.is_none()
            && self
                .admin_listen
                .parse::<std::net::SocketAddr>()
                .is_ok_and(|a| !a.ip().is_loopback())
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            id: default_host_id(hostname().as_deref(), std::process::id()),
            static_membership: false,
            admin_listen: "127.0.0.1:8080".into(),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            shutdown_grace_ms: 10_000,
            commit_interval_ms: 1_000,
            cache_dir: PathBuf::from(".kwasm/cache"),
            admin_token: None,
            admin_insecure: false,
            admin_tls: None,
            admin_token_origin: TokenOrigin::ConfigFile,
            overridden_by_env: BTreeMap::new(),
            max_plugin_memory_bytes: None,
        }
    }
}

/// The default `host.id`: the hostname when it can name this host (in a
/// Kubernetes StatefulSet it is the pod name, `kwasm-0`, stable across
/// restarts, which static membership needs), else `kwasm-<pid>`. The old
/// default, `kwasm-<pid>` alone, is `kwasm-1` in every container: member
/// records collided and, with static membership, every host would have
/// claimed one `group.instance.id`. `localhost` names no host in
/// particular, so it falls back to the pid too.
pub fn default_host_id(hostname: Option<&str>, pid: u32) -> String {
    match hostname.map(str::trim) {
        Some(name)
            if is_host_id(name)
                && !name.eq_ignore_ascii_case("localhost")
                && !name.eq_ignore_ascii_case("localhost.localdomain") =>
        {
            name.to_owned()
        }
        _ => format!("kwasm-{pid}"),
    }
}

/// Whether `id` can be a `host.id`: 1 to 200 characters of
/// `[a-zA-Z0-9._-]`, not `.` or `..`. Kafka refuses a `group.instance.id`
/// outside that alphabet or over 249 characters; 200 leaves room for the
/// `-<pipeline>` suffix of short pipeline names.
pub fn is_host_id(id: &str) -> bool {
    id.len() <= 200 && is_topic_name(id)
}

/// This machine's hostname (uname's nodename), if it is UTF-8.
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes; gethostname writes
    // at most that many and the result is read up to the first NUL only.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&buf[..end]).ok().map(str::to_owned)
}

/// Kafka connection settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated. Required, here or in
    /// `KWASM_BROKERS`.
    #[serde(default)]
    pub brokers: String,
    /// librdkafka properties for every client (consumers, the producer, the
    /// registry's clients), applied after kwasm's defaults (so they win).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the pipelines' consumers only, applied
    /// after `properties`. Consumer-only settings belong here: given to a
    /// producer, librdkafka ignores them with a CONFWARN log line.
    #[serde(default)]
    pub consumer_properties: BTreeMap<String, String>,
    /// librdkafka properties for the output producer only, applied after
    /// `properties`.
    #[serde(default)]
    pub producer_properties: BTreeMap<String, String>,
    /// The consumer group protocol of the pipelines' consumers (librdkafka
    /// `group.protocol`). Default `classic`: see [`GroupProtocol`].
    #[serde(default)]
    pub group_protocol: GroupProtocol,
}

/// Which consumer group protocol the pipelines' consumers speak.
///
/// The default is `classic` because every Kafka broker (and every
/// Kafka-compatible one) speaks it; a `consumer` client on a broker without
/// KIP-848 retries its heartbeat quietly and never gets a partition, which is
/// a worse failure than slower rebalances. Choose `consumer` on Kafka 4.0 or
/// newer for rebalances without a group-wide barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupProtocol {
    /// The classic protocol (JoinGroup/SyncGroup) with the client-side
    /// `cooperative-sticky` assignor (KIP-429): only moved partitions stop,
    /// but every member takes part in each rebalance, and the consumer's
    /// `session.timeout.ms` / `heartbeat.interval.ms` apply.
    #[default]
    Classic,
    /// KIP-848 (`ConsumerGroupHeartbeat`): the broker computes assignments
    /// and hands each member its own changes, with no group-wide barrier.
    /// Needs Kafka 4.0 or newer. Session timeout, heartbeat interval and the
    /// assignor are broker settings (`group.consumer.session.timeout.ms`,
    /// `group.consumer.heartbeat.interval.ms`; the client may pick one of the
    /// broker's assignors with `group.remote.assignor`), so librdkafka refuses
    /// the client-side properties: see [`KafkaConfig::validate`].
    Consumer,
}

impl GroupProtocol {
    /// The value of librdkafka's `group.protocol`.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            GroupProtocol::Classic => "classic",
            GroupProtocol::Consumer => "consumer",
        }
    }
}

/// Consumer properties librdkafka refuses under `group.protocol=consumer`
/// (they are the broker's under KIP-848), with what to do instead.
const NOT_UNDER_CONSUMER_PROTOCOL: [(&str, &str); 4] = [
    (
        "session.timeout.ms",
        "the broker sets it (group.consumer.session.timeout.ms)",
    ),
    (
        "heartbeat.interval.ms",
        "the broker sets it (group.consumer.heartbeat.interval.ms)",
    ),
    (
        "partition.assignment.strategy",
        "the broker assigns partitions; choose its assignor with group.remote.assignor",
    ),
    (
        "group.protocol.type",
        "it applies to the classic protocol only",
    ),
];

impl KafkaConfig {
    /// Checks the client properties against `group_protocol`, naming the
    /// offending field: `group.protocol` belongs in `kafka.group_protocol`
    /// (one place decides it, and kwasm sets the assignor to match), and under
    /// `consumer` the properties librdkafka would refuse at consumer creation
    /// fail here, at startup, with the field's full name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (section, properties) in [
            ("properties", &self.properties),
            ("consumer_properties", &self.consumer_properties),
            ("producer_properties", &self.producer_properties),
        ] {
            let field = |key: &str| format!("kafka.{section}.\"{key}\"");
            if properties.contains_key("group.protocol") {
                return Err(ConfigError::Invalid {
                    field: field("group.protocol"),
                    message: "set `kafka.group_protocol` (\"classic\" or \"consumer\") instead"
                        .into(),
                });
            }
            if self.group_protocol == GroupProtocol::Consumer && section != "producer_properties" {
                for (key, instead) in NOT_UNDER_CONSUMER_PROTOCOL {
                    if properties.contains_key(key) {
                        return Err(ConfigError::Invalid {
                            field: field(key),
                            message: format!(
                                "is not supported with kafka.group_protocol = \"consumer\" (KIP-848): {instead}"
                            ),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Registry settings (`[registry]` in the host config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Compacted topic of plugin chunks and manifests. Default `_kwasm_plugins`.
    pub plugins_topic: String,
    /// Compacted topic of pipelines. Default `_kwasm_pipelines`.
    pub pipelines_topic: String,
    /// Compacted topic where each host publishes the partitions it holds.
    /// Default `_kwasm_members`.
    pub members_topic: String,
    /// Largest plugin accepted. Default 64 MiB.
    pub max_plugin_bytes: usize,
    /// Create the topics when missing. Default true; off when something
    /// else creates them (dev mode's mock cluster does not answer
    /// CreateTopics).
    pub create_topics: bool,
    /// Replication factor of the registry topics when kwasm creates them.
    /// Default 1 (a single test broker); use 3 on a production cluster.
    pub replication_factor: i32,
    /// librdkafka properties for the registry's own clients, applied after
    /// `kafka.properties` (so they win): give the control plane other
    /// credentials than the data plane (`sasl.username`, ...), so Kafka
    /// ACLs, not only kwasm's checks, keep plugins away from the registry
    /// topics. See the README's "Kafka ACLs".
    pub properties: BTreeMap<String, String>,
    /// Also write every plugin log line (the `log` import, stdout, stderr,
    /// after the per-batch limits) to `logs_topic`, keyed by pipeline, for
    /// `kwasm logs` and the dashboard. Default false.
    pub plugin_logs: bool,
    /// The plugin logs topic, part of the control plane (no pipeline may
    /// read or write it). Default `_kwasm_logs`.
    pub logs_topic: String,
    /// `retention.ms` of the logs topic when kwasm creates it: time
    /// retention, not compaction. Default 1 day.
    pub logs_retention_ms: i64,
    /// Partitions of the logs topic when kwasm creates it. Default 3.
    pub logs_partitions: i32,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            plugins_topic: "_kwasm_plugins".into(),
            pipelines_topic: "_kwasm_pipelines".into(),
            members_topic: "_kwasm_members".into(),
            create_topics: true,
            max_plugin_bytes: 64 << 20,
            replication_factor: 1,
            properties: BTreeMap::new(),
            plugin_logs: false,
            logs_topic: "_kwasm_logs".into(),
            logs_retention_ms: 24 * 3600 * 1000,
            logs_partitions: 3,
        }
    }
}

/// One pipeline: a plugin applied to input topics, as one consumer group.
///
/// The one definition of a pipeline: the config file's `[[pipeline]]`, the
/// admin API's body and the registry's record all hold this (the registry
/// adds `paused` and `source` around it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Unique name: see [`is_name`]. Required in a config file; the API
    /// takes it from the path.
    #[serde(default)]
    pub name: String,
    /// The plugin: a path ending in `.wasm`, or a registry plugin as
    /// `name@version` (or `name` for the newest version).
    pub plugin: String,
    /// Configuration handed to the plugin's `init`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Input topics. Either this or `input_regex`.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// A regex of input topics in librdkafka's dialect (POSIX extended),
    /// anchored at the start only, as librdkafka subscribes `^` patterns.
    #[serde(default)]
    pub input_regex: Option<String>,
    /// Default output topic.
    pub output: String,
    /// Further topics the plugin may name on a record, besides `output`.
    /// At most 64. A record for an undeclared topic dead-letters its
    /// message (`output-not-allowed`).
    #[serde(default)]
    pub extra_outputs: Vec<String>,
    /// A regex of further topics the plugin may name, in the same dialect
    /// as `input_regex` but matching the whole topic name.
    #[serde(default)]
    pub outputs_regex: Option<String>,
    /// Let the plugin write to the pipeline's own input topics (a
    /// deliberate feedback loop). Default false: refused, since one
    /// message could otherwise multiply forever.
    #[serde(default)]
    pub allow_loop: bool,
    /// Consumer group id. Default `kwasm-<name>`.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Dead-letter topic. Default `<name>.dlq`.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Retries of failed messages.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Batch limits.
    #[serde(default)]
    pub batch: BatchPolicy,
    /// Overrides of the host's default plugin limits.
    #[serde(default)]
    pub limits: Option<Limits>,
    /// What a `read_committed` reader of the outputs may see: every input's
    /// outputs at least once (default), or exactly once (transactions;
    /// DESIGN.md, "Exactly-once delivery").
    #[serde(default)]
    pub delivery: Delivery,
    /// Transactions under `delivery = "exactly-once"`.
    #[serde(default)]
    pub transaction: TransactionPolicy,
}

/// A pipeline's delivery guarantee.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Offsets are committed once every output is acknowledged; a crash or
    /// a lost assignment redoes (and re-outputs) the uncommitted tail.
    #[default]
    AtLeastOnce,
    /// Outputs, dead letters and input offsets go in one Kafka
    /// transaction; `read_committed` readers see each input's outputs once.
    ExactlyOnce,
}

impl Delivery {
    /// The name the config, the API and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::AtLeastOnce => "at-least-once",
            Delivery::ExactlyOnce => "exactly-once",
        }
    }
}

/// How an exactly-once pipeline's transactions are cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransactionPolicy {
    /// How long a transaction collects outputs before it commits (with the
    /// input offsets of everything it holds). Default 100 ms: longer
    /// amortises the commit, shorter makes outputs visible sooner.
    pub commit_interval_ms: u64,
    /// `transaction.timeout.ms`: the broker aborts a transaction open this
    /// long (the pipeline then rewinds and redoes it). Default 60 000 ms.
    pub timeout_ms: u64,
}

impl Default for TransactionPolicy {
    fn default() -> Self {
        TransactionPolicy {
            commit_interval_ms: 100,
            timeout_ms: 60_000,
        }
    }
}

/// How retryable failures are retried before dead-lettering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. Default 3.
    pub max_attempts: u32,
    /// Wait before the first retry; doubles each time. Default 100 ms.
    pub initial_backoff_ms: u64,
    /// Cap on the wait. Default 5 000 ms.
    pub max_backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff_ms: 100,
            max_backoff_ms: 5_000,
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt` (2 is the first retry).
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        let doublings = attempt.saturating_sub(2).min(30);
        self.initial_backoff_ms
            .saturating_mul(1 << doublings)
            .min(self.max_backoff_ms)
    }
}

/// When a partition's batch is handed to the plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchPolicy {
    /// Messages per batch at most. Default 512.
    pub max_messages: usize,
    /// How long a partial batch may wait for more messages. Default 20 ms.
    pub max_wait_ms: u64,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            max_messages: 512,
            max_wait_ms: 20,
        }
    }
}

impl PipelineSpec {
    /// The consumer group this pipeline runs as.
    pub fn group_id(&self) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("kwasm-{}", self.name))
    }

    /// Where failed messages go.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.name))
    }

    /// The subscription as librdkafka takes it (a regex starts with `^`).
    pub fn subscription(&self) -> Vec<String> {
        match &self.input_regex {
            Some(_) => vec![self.subscription_regex()],
            None => self.inputs.clone(),
        }
    }

    /// `input_regex` as librdkafka compiles it: with a leading `^`, which
    /// is what marks a subscription as a regex. Empty without a regex.
    pub fn subscription_regex(&self) -> String {
        match self.input_regex.as_deref() {
            Some(re) if re.starts_with('^') => re.to_owned(),
            Some(re) => format!("^{re}"),
            None => String::new(),
        }
    }
}

/// A configuration problem, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown/mistyped fields.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the field and line.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid config: `{field}`: {message}")]
    Invalid {
        /// The dotted field path.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// An environment override is unusable (see [`env`]).
    #[error("invalid environment variable `{variable}`: {message}")]
    Env {
        /// The variable, e.g. `KWASM_HOST_ID`.
        variable: String,
        /// What is wrong (the value itself is never repeated: it may be a
        /// secret).
        message: String,
    },
}

impl Config {
    /// Reads, parses and validates `path`, without the environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::read(path)?;
        config.validate()?;
        Ok(config)
    }

    /// What `kwasm serve` runs with: `path`, then the environment's
    /// overrides ([`env`]), then validation (naming the variable when an
    /// overridden value is wrong).
    pub fn load_with_env(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::read(path)?.with_env()?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses `path` (unknown fields are errors), unvalidated.
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Checks values serde cannot: ranges, names, one input form per
    /// pipeline. An error about a field the environment set names the
    /// variable instead.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_values().map_err(|e| self.name_env_origin(e))
    }

    fn validate_values(&self) -> Result<(), ConfigError> {
        let invalid = |field: String, message: &str| {
            Err(ConfigError::Invalid {
                field,
                message: message.to_owned(),
            })
        };
        if self.kafka.brokers.trim().is_empty() {
            return invalid(
                "kafka.brokers".into(),
                "must name at least one broker (here or in KWASM_BROKERS)",
            );
        }
        if !is_host_id(&self.host.id) {
            return invalid(
                "host.id".into(),
                "must be 1 to 200 characters of [a-zA-Z0-9._-] (it is the client.id and, with \
                 static_membership, the group.instance.id)",
            );
        }
        self.kafka.validate()?;
        self.host.check_admin_token()?;
        if self.host.workers == 0 {
            return invalid("host.workers".into(), "must be at least 1");
        }
        if self
            .host
            .admin_listen
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return invalid(
                "host.admin_listen".into(),
                "must be an address like 127.0.0.1:8080",
            );
        }
        self.check_memory_limits()?;
        self.check_logs_topic()?;
        let control = ControlPlane::new(&self.registry);
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.pipelines.iter().enumerate() {
            let at = |field: &str| format!("pipeline[{i}].{field}");
            if let Err(ConfigError::Invalid { field, message }) = p.validate(&control) {
                return Err(ConfigError::Invalid {
                    field: at(&field),
                    message,
                });
            }
            if !names.insert(&p.name) {
                return invalid(at("name"), "is used by another pipeline");
            }
        }
        Ok(())
    }
}

impl Config {
    /// The plugin logs topic is a topic name of its own, and its settings
    /// are in range.
    fn check_logs_topic(&self) -> Result<(), ConfigError> {
        let invalid = |field: String, message: &str| {
            Err(ConfigError::Invalid {
                field,
                message: message.to_owned(),
            })
        };
        let r = &self.registry;
        if !crate::topics::is_topic_name(&r.logs_topic) {
            return invalid(
                "registry.logs_topic".into(),
                "must be a Kafka topic name (1 to 249 characters of [a-zA-Z0-9._-])",
            );
        }
        if [&r.plugins_topic, &r.pipelines_topic, &r.members_topic].contains(&&r.logs_topic) {
            return invalid(
                "registry.logs_topic".into(),
                "must differ from the registry's other topics",
            );
        }
        if r.logs_retention_ms < 60_000 {
            return invalid(
                "registry.logs_retention_ms".into(),
                "must be at least 60000 (one minute)",
            );
        }
        if !(1..=1000).contains(&r.logs_partitions) {
            return invalid("registry.logs_partitions".into(), "must be 1 to 1000");
        }
        Ok(())
    }

    /// Plugin limits are in range, and every instance fits in the host's
    /// plugin memory budget (one that does not could never start).
    fn check_memory_limits(&self) -> Result<(), ConfigError> {
        let budget = self.host.plugin_memory_budget_bytes();
        if self
            .host
            .max_plugin_memory_bytes
            .is_some_and(|b| b < 1 << 20)
        {
            return Err(ConfigError::Invalid {
                field: "host.max_plugin_memory_bytes".into(),
                message: "must be at least 1048576 (1 MiB)".into(),
            });
        }
        let all = std::iter::once(("limits".to_owned(), &self.limits)).chain(
            self.pipelines.iter().enumerate().filter_map(|(i, p)| {
                p.limits
                    .as_ref()
                    .map(|l| (format!("pipeline[{i}].limits"), l))
            }),
        );
        for (at, limits) in all {
            limits.check().map_err(|e| ConfigError::Invalid {
                field: format!("{at}.{}", e.field),
                message: format!("must be between {} and {}", e.min, e.max),
            })?;
            if limits.memory_bytes > budget {
                return Err(ConfigError::Invalid {
                    field: format!("{at}.memory_bytes"),
                    message: format!(
                        "{} is more than the host's whole plugin memory budget \
                         (host.max_plugin_memory_bytes = {budget}): no instance could start",
                        limits.memory_bytes
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Bounds on a pipeline's numbers: generous for any real pipeline, and
/// small enough that a typo (or a hostile API call) cannot make a host
/// buffer without limit or wait for days.
pub mod bounds {
    /// `retry.max_attempts`.
    pub const MAX_ATTEMPTS: u32 = 100;
    /// `retry.initial_backoff_ms` and `retry.max_backoff_ms`: one hour.
    pub const MAX_BACKOFF_MS: u64 = 3_600_000;
    /// `batch.max_messages`.
    pub const MAX_BATCH_MESSAGES: usize = 65_536;
    /// `batch.max_wait_ms`: one minute.
    pub const MAX_BATCH_WAIT_MS: u64 = 60_000;
    /// Entries of `config`.
    pub const MAX_CONFIG_ENTRIES: usize = 256;
    /// Bytes of `config`, keys and values together.
    pub const MAX_CONFIG_BYTES: usize = 64 * 1024;
    /// `inputs`.
    pub const MAX_INPUTS: usize = 1_000;
    /// `group_id` (Kafka has no limit of its own; this keeps logs sane).
    pub const MAX_GROUP_ID_BYTES: usize = 255;
    /// `input_regex` and `outputs_regex`.
    pub const MAX_REGEX_BYTES: usize = 1_024;
    /// `transaction.timeout_ms`: at least a second (the commit interval is
    /// at most a quarter of it); at most Kafka's default
    /// `transaction.max.timeout.ms`, 15 minutes, past which the broker
    /// refuses the producer.
    pub const MIN_TRANSACTION_TIMEOUT_MS: u64 = 1_000;
    /// See [`MIN_TRANSACTION_TIMEOUT_MS`].
    pub const MAX_TRANSACTION_TIMEOUT_MS: u64 = 900_000;
}

impl PipelineSpec {
    /// Checks one pipeline on a host whose control plane is `control`,
    /// naming the field relative to it (`inputs`, `retry.max_attempts`):
    /// the config file prefixes `pipeline[i].`, the admin API reports it as
    /// is, the registry follower logs it. One function for all three, so no
    /// entry point is looser than another.
    pub fn validate(&self, control: &ControlPlane) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: &str| {
            Err(ConfigError::Invalid {
                field: field.to_owned(),
                message: message.to_owned(),
            })
        };
        if !is_name(&self.name) {
            return invalid("name", NAME_RULE);
        }
        if self.plugin.trim().is_empty() {
            return invalid("plugin", "must name a `.wasm` file or a registry plugin");
        }
        match (self.inputs.is_empty(), &self.input_regex) {
            (true, None) => return invalid("inputs", "give `inputs` or `input_regex`"),
            (false, Some(_)) => {
                return invalid("inputs", "give `inputs` or `input_regex`, not both");
            }
            _ => {}
        }
        if self.inputs.len() > bounds::MAX_INPUTS {
            return invalid("inputs", &format!("at most {} topics", bounds::MAX_INPUTS));
        }
        for (i, topic) in self.inputs.iter().enumerate() {
            if !is_topic_name(topic) {
                return invalid(&format!("inputs[{i}]"), "must be a valid Kafka topic name");
            }
            if let Some(reason) = control.reason(topic) {
                return invalid(
                    &format!("inputs[{i}]"),
                    &format!("`{topic}` {reason}: pipelines never read the control plane"),
                );
            }
        }
        for (field, regex) in [
            ("input_regex", &self.input_regex),
            ("outputs_regex", &self.outputs_regex),
        ] {
            if regex
                .as_ref()
                .is_some_and(|r| r.len() > bounds::MAX_REGEX_BYTES)
            {
                return invalid(field, &format!("at most {} bytes", bounds::MAX_REGEX_BYTES));
            }
        }
        if !is_topic_name(&self.output) {
            return invalid("output", "must be a valid Kafka topic name");
        }
        if self
            .dead_letter_topic
            .as_deref()
            .is_some_and(|t| !is_topic_name(t))
        {
            return invalid("dead_letter_topic", "must be a valid Kafka topic name");
        }
        if self.extra_outputs.len() > crate::topics::MAX_EXTRA_OUTPUTS {
            return invalid(
                "extra_outputs",
                &format!("at most {} topics", crate::topics::MAX_EXTRA_OUTPUTS),
            );
        }
        let policy = OutputPolicy::new(self, control).map_err(|e| ConfigError::Invalid {
            field: e.field.to_owned(),
            message: e.message,
        })?;
        if let Err((field, denied)) = policy.check_declarations(self) {
            return invalid(&field, &denied.to_string());
        }
        if let Some(group) = &self.group_id
            && (group.trim().is_empty() || group.len() > bounds::MAX_GROUP_ID_BYTES)
        {
            return invalid(
                "group_id",
                &format!("must be 1 to {} bytes", bounds::MAX_GROUP_ID_BYTES),
            );
        }
        self.validate_numbers()?;
        self.validate_plugin_config()
    }

    fn validate_numbers(&self) -> Result<(), ConfigError> {
        let out_of_range = |field: &str, lo: u64, hi: u64| {
            Err(ConfigError::Invalid {
                field: field.to_owned(),
                message: format!("must be between {lo} and {hi}"),
            })
        };
        let r = &self.retry;
        if !(1..=bounds::MAX_ATTEMPTS).contains(&r.max_attempts) {
            return out_of_range("retry.max_attempts", 1, bounds::MAX_ATTEMPTS.into());
        }
        if r.initial_backoff_ms > bounds::MAX_BACKOFF_MS {
            return out_of_range("retry.initial_backoff_ms", 0, bounds::MAX_BACKOFF_MS);
        }
        if r.max_backoff_ms > bounds::MAX_BACKOFF_MS {
            return out_of_range("retry.max_backoff_ms", 0, bounds::MAX_BACKOFF_MS);
        }
        let b = &self.batch;
        if !(1..=bounds::MAX_BATCH_MESSAGES).contains(&b.max_messages) {
            return out_of_range("batch.max_messages", 1, bounds::MAX_BATCH_MESSAGES as u64);
        }
        if b.max_wait_ms > bounds::MAX_BATCH_WAIT_MS {
            return out_of_range("batch.max_wait_ms", 0, bounds::MAX_BATCH_WAIT_MS);
        }
        if let Some(Err(e)) = self.limits.as_ref().map(Limits::check) {
            return out_of_range(&format!("limits.{}", e.field), e.min, e.max);
        }
        let t = &self.transaction;
        if !(bounds::MIN_TRANSACTION_TIMEOUT_MS..=bounds::MAX_TRANSACTION_TIMEOUT_MS)
            .contains(&t.timeout_ms)
        {
            return out_of_range(
                "transaction.timeout_ms",
                bounds::MIN_TRANSACTION_TIMEOUT_MS,
                bounds::MAX_TRANSACTION_TIMEOUT_MS,
            );
        }
        // A transaction must commit well before the broker would abort it.
        if !(1..=t.timeout_ms / 4).contains(&t.commit_interval_ms) {
            return out_of_range("transaction.commit_interval_ms", 1, t.timeout_ms / 4);
        }
        Ok(())
    }

    fn validate_plugin_config(&self) -> Result<(), ConfigError> {
        let bytes: usize = self.config.iter().map(|(k, v)| k.len() + v.len()).sum();
        if self.config.len() > bounds::MAX_CONFIG_ENTRIES || bytes > bounds::MAX_CONFIG_BYTES {
            return Err(ConfigError::Invalid {
                field: "config".into(),
                message: format!(
                    "at most {} entries and {} bytes",
                    bounds::MAX_CONFIG_ENTRIES,
                    bounds::MAX_CONFIG_BYTES
                ),
            });
        }
        Ok(())
    }
}

/// What [`is_name`] accepts, for error messages.
pub const NAME_RULE: &str = "must be 1-200 characters of [a-zA-Z0-9._-] starting with a letter or digit (names starting with `_`, `-` or `.` are reserved)";

/// The one rule for pipeline and plugin names, in the config file, the API
/// and registry replay alike: 1 to 200 characters of `[a-zA-Z0-9._-]`,
/// starting with a letter or digit. So a name is also safe in a topic name
/// (`<name>.dlq`), a consumer group (`kwasm-<name>`), a URL path and a
/// registry key, is never `.` or `..`, and never looks like an internal
/// (`_`) name or a command-line flag (`-`).
pub fn is_name(s: &str) -> bool {
    s.len() <= 200
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "t.toml".into(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    const MINIMAL: &str = r#"
        [kafka]
        brokers = "127.0.0.1:9092"
        [[pipeline]]
        name = "p"
        plugin = "x.wasm"
        inputs = ["in"]
        output = "out"
    "#;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse(MINIMAL).expect("valid");
        let p = &c.pipelines[0];
        assert_eq!(p.group_id(), "kwasm-p");
        assert_eq!(p.dead_letter_topic(), "p.dlq");
        assert_eq!(
            p.batch,
            BatchPolicy {
                max_messages: 512,
                max_wait_ms: 20
            }
        );
        assert_eq!(p.retry.max_attempts, 3);
    }

    #[test]
    fn client_properties_go_to_the_clients_they_name() {
        let c = parse(&MINIMAL.replace(
            "[[pipeline]]",
            r#"[kafka.properties]
        "client.rack" = "r1"
        [kafka.consumer_properties]
        "session.timeout.ms" = "7000"
        [kafka.producer_properties]
        "linger.ms" = "11"
        [[pipeline]]"#,
        ))
        .expect("valid");
        let consumer = crate::kafka::consumer_config(&c.kafka, "g", "h", None);
        let producer = crate::kafka::producer_config(&c.kafka, "h");
        assert_eq!(consumer.get("client.rack"), Some("r1"));
        assert_eq!(producer.get("client.rack"), Some("r1"));
        assert_eq!(consumer.get("session.timeout.ms"), Some("7000"));
        assert_eq!(producer.get("session.timeout.ms"), None);
        assert_eq!(producer.get("linger.ms"), Some("11"), "overrides kwasm's 5");
        assert_eq!(consumer.get("linger.ms"), None);
    }

    #[test]
    fn group_protocol_defaults_to_classic_with_cooperative_sticky() {
        let c = parse(MINIMAL).expect("valid");
        assert_eq!(c.kafka.group_protocol, GroupProtocol::Classic);
        let consumer = crate::kafka::consumer_config(&c.kafka, "g", "h", None);
        assert_eq!(consumer.get("group.protocol"), Some("classic"));
        assert_eq!(
            consumer.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
    }

    #[test]
    fn consumer_group_protocol_sets_none_of_the_classic_only_properties() {
        let c = parse(&MINIMAL.replace(
            "brokers = \"127.0.0.1:9092\"",
            "brokers = \"127.0.0.1:9092\"\ngroup_protocol = \"consumer\"",
        ))
        .expect("valid");
        assert_eq!(c.kafka.group_protocol, GroupProtocol::Consumer);
        let consumer = crate::kafka::consumer_config(&c.kafka, "g", "h", None);
        assert_eq!(consumer.get("group.protocol"), Some("consumer"));
        for (key, _) in NOT_UNDER_CONSUMER_PROTOCOL {
            assert_eq!(consumer.get(key), None, "{key}");
        }
        // librdkafka accepts the result (it refuses the classic-only
        // properties at creation).
        let created: Result<rdkafka::consumer::BaseConsumer, _> = consumer.create();
        assert!(created.is_ok(), "{:?}", created.err());
    }

    #[test]
    fn classic_only_properties_under_the_consumer_protocol_are_named() {
        for (section, key) in [
            ("kafka.consumer_properties", "session.timeout.ms"),
            ("kafka.properties", "heartbeat.interval.ms"),
            ("kafka.consumer_properties", "partition.assignment.strategy"),
            ("kafka.properties", "group.protocol.type"),
        ] {
            let text = MINIMAL.replace(
                "[[pipeline]]",
                &format!(
                    "group_protocol = \"consumer\"\n[{section}]\n\"{key}\" = \"1\"\n[[pipeline]]"
                ),
            );
            let err = parse(&text).expect_err(key).to_string();
            assert!(
                err.contains(&format!("{section}.\"{key}\"")) && err.contains("consumer"),
                "{err}"
            );
            // The same property is fine under the classic protocol.
            let classic = text.replace(
                "group_protocol = \"consumer\"",
                "group_protocol = \"classic\"",
            );
            assert!(parse(&classic).is_ok(), "{key} under classic");
        }
    }

    #[test]
    fn group_protocol_in_client_properties_points_to_the_field() {
        let err = parse(&MINIMAL.replace(
            "[[pipeline]]",
            "[kafka.consumer_properties]\n\"group.protocol\" = \"consumer\"\n[[pipeline]]",
        ))
        .expect_err("group.protocol as a property");
        let err = err.to_string();
        assert!(
            err.contains("kafka.consumer_properties.\"group.protocol\"")
                && err.contains("kafka.group_protocol"),
            "{err}"
        );
        let err = parse(&MINIMAL.replace("[kafka]", "[kafka]\ngroup_protocol = \"cooperative\""))
            .expect_err("unknown protocol")
            .to_string();
        assert!(
            err.contains("cooperative") && err.contains("group_protocol"),
            "{err}"
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let err = parse(&format!("{MINIMAL}\nbatch_size = 3")).expect_err("unknown field");
        assert!(err.to_string().contains("batch_size"), "{err}");
    }

    #[test]
    fn plugin_limits_out_of_range_name_the_field() {
        let with = |extra: &str| parse(&format!("{extra}\n{MINIMAL}"));
        let err = with("[limits]\nmemory_bytes = 0").expect_err("zero memory");
        assert_eq!(
            err.to_string(),
            "invalid config: `limits.memory_bytes`: must be between 1048576 and 4294967296"
        );
        let err = with("[limits]\nmax_output_records = 0").expect_err("zero records");
        assert!(
            err.to_string().contains("`limits.max_output_records`"),
            "{err}"
        );
        let err = parse(&format!(
            "{MINIMAL}\nlimits = {{ max_log_bytes = 1000000000 }}"
        ))
        .expect_err("huge log budget");
        assert!(
            err.to_string()
                .contains("`pipeline[0].limits.max_log_bytes`: must be between 0 and 67108864"),
            "{err}"
        );
        let err =
            with("[host]\nmax_plugin_memory_bytes = 33554432\n[limits]\nmemory_bytes = 67108864")
                .expect_err("an instance larger than the budget");
        assert_eq!(
            err.to_string(),
            "invalid config: `limits.memory_bytes`: 67108864 is more than the host's whole \
             plugin memory budget (host.max_plugin_memory_bytes = 33554432): no instance could start"
        );
        let err = with("[host]\nmax_plugin_memory_bytes = 0").expect_err("zero budget");
        assert!(
            err.to_string().contains("`host.max_plugin_memory_bytes`"),
            "{err}"
        );
        let ok = with("[host]\nmax_plugin_memory_bytes = 134217728").expect("valid");
        assert_eq!(ok.host.plugin_memory_budget_bytes(), 128 << 20);
        assert_eq!(ok.limits, Limits::default());
    }

    #[test]
    fn invalid_values_name_the_field() {
        let err = parse(&MINIMAL.replace("inputs = [\"in\"]", "")).expect_err("no inputs");
        assert!(err.to_string().contains("pipeline[0].inputs"), "{err}");
        let err = parse(&MINIMAL.replace("\"out\"", "\"bad topic\"")).expect_err("bad output");
        assert!(err.to_string().contains("pipeline[0].output"), "{err}");
    }

    #[test]
    fn names_follow_one_rule_that_reserves_leading_punctuation() {
        for ok in ["a", "orders-clean", "v1.2_x", "9lives"] {
            assert!(is_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-",
            "_",
            "_kwasm_plugins",
            "-rf",
            ".hidden",
            "a b",
            "a/b",
        ] {
            assert!(!is_name(bad), "{bad}");
        }
        assert!(!is_name(&"x".repeat(201)));
        let err = parse(&MINIMAL.replace("name = \"p\"", "name = \"_kwasm_plugins\""))
            .expect_err("reserved name");
        assert!(err.to_string().contains("pipeline[0].name"), "{err}");
    }

    #[test]
    fn pipelines_never_touch_the_control_plane() {
        let cases = [
            (
                "output = \"out\"",
                "output = \"__consumer_offsets\"",
                "pipeline[0].output",
            ),
            (
                "output = \"out\"",
                "output = \"_kwasm_pipelines\"",
                "pipeline[0].output",
            ),
            ("output = \"out\"", "output = \"in\"", "pipeline[0].output"),
            (
                "output = \"out\"",
                "output = \"out\"\ndead_letter_topic = \"__transaction_state\"",
                "pipeline[0].dead_letter_topic",
            ),
            (
                "output = \"out\"",
                "output = \"out\"\nextra_outputs = [\"ok\", \"_kwasm_members\"]",
                "pipeline[0].extra_outputs[1]",
            ),
            (
                "inputs = [\"in\"]",
                "inputs = [\"_kwasm_plugins\"]",
                "pipeline[0].inputs[0]",
            ),
            (
                "inputs = [\"in\"]",
                "input_regex = \"((\"",
                "pipeline[0].input_regex",
            ),
            (
                "output = \"out\"",
                "output = \"out\"\noutputs_regex = \"[\"",
                "pipeline[0].outputs_regex",
            ),
        ];
        for (from, to, field) in cases {
            let err = parse(&MINIMAL.replace(from, to)).expect_err(to);
            assert!(err.to_string().contains(field), "{to}: {err}");
        }
        // Registry topics as configured, not only the defaults.
        let renamed = MINIMAL.replace(
            "[[pipeline]]",
            "[registry]\npipelines_topic = \"ops-pipelines\"\n[[pipeline]]",
        );
        let err = parse(&renamed.replace("\"out\"", "\"ops-pipelines\"")).expect_err("registry");
        assert!(err.to_string().contains("registry"), "{err}");
        // A loop is allowed when asked for.
        parse(&MINIMAL.replace("output = \"out\"", "output = \"in\"\nallow_loop = true"))
            .expect("explicit loop");
    }

    #[test]
    fn numbers_have_bounds() {
        for (from, to, field) in [
            (
                "output = \"out\"",
                "output = \"out\"\nbatch = { max_messages = 1000000000000 }",
                "batch.max_messages",
            ),
            (
                "output = \"out\"",
                "output = \"out\"\nbatch = { max_wait_ms = 86400000 }",
                "batch.max_wait_ms",
            ),
            (
                "output = \"out\"",
                "output = \"out\"\nretry = { max_attempts = 1000 }",
                "retry.max_attempts",
            ),
            (
                "output = \"out\"",
                "output = \"out\"\nretry = { max_backoff_ms = 86400000 }",
                "retry.max_backoff_ms",
            ),
        ] {
            let err = parse(&MINIMAL.replace(from, to)).expect_err(to);
            assert!(err.to_string().contains(field), "{to}: {err}");
        }
    }

    #[test]
    fn an_empty_or_blank_admin_token_is_refused_by_name() {
        for token in ["", " ", "\t \n"] {
            let text = MINIMAL.replace(
                "[kafka]",
                &format!("[host]\nadmin_token = {token:?}\n[kafka]"),
            );
            let err = parse(&text).expect_err("blank token");
            assert!(err.to_string().contains("`host.admin_token`"), "{err}");
        }
        let mut host = HostConfig {
            admin_token: Some("  ".into()),
            admin_token_origin: TokenOrigin::Environment,
            ..HostConfig::default()
        };
        let err = host.check_admin_access().expect_err("blank env token");
        assert!(err.to_string().contains("`KWASM_ADMIN_TOKEN`"), "{err}");
        host.admin_token = Some("s3cret".into());
        assert!(host.check_admin_access().is_ok());
    }

    #[test]
    fn an_open_api_listens_on_loopback_unless_insecure_is_set() {
        let host = |listen: &str, token: Option<&str>, insecure: bool| HostConfig {
            admin_listen: listen.into(),
            admin_token: token.map(Into::into),
            admin_insecure: insecure,
            ..HostConfig::default()
        };
        for listen in ["127.0.0.1:8080", "[::1]:8080", "127.0.0.2:1"] {
            assert!(
                host(listen, None, false).check_admin_access().is_ok(),
                "{listen}"
            );
        }
        for listen in ["0.0.0.0:8080", "[::]:8080", "10.1.2.3:8080"] {
            let err = host(listen, None, false)
                .check_admin_access()
                .expect_err("open on the network");
            assert!(err.to_string().contains("`host.admin_listen`"), "{err}");
            assert!(err.to_string().contains("host.admin_insecure"), "{err}");
            assert!(host(listen, Some("t"), false).check_admin_access().is_ok());
            assert!(host(listen, None, true).check_admin_access().is_ok());
            assert!(host(listen, None, true).admin_open_to_network());
        }
        assert!(!host("0.0.0.0:1", Some("t"), false).admin_open_to_network());
    }

    #[test]
    fn admin_tls_takes_a_cert_and_a_key_path() {
        let text = MINIMAL.replace(
            "[kafka]",
            "[host.admin_tls]\ncert_path = \"c.pem\"\nkey_path = \"k.pem\"\n[kafka]",
        );
        let c = parse(&text).expect("valid");
        assert_eq!(
            c.host.admin_tls,
            Some(AdminTlsConfig {
                cert_path: "c.pem".into(),
                key_path: "k.pem".into()
            })
        );
        let err = parse(&text.replace("key_path", "keypath")).expect_err("typo");
        assert!(err.to_string().contains("keypath"), "{err}");
    }

    #[test]
    fn the_default_host_id_is_the_hostname_else_the_pid() {
        assert_eq!(default_host_id(Some("kwasm-1"), 7), "kwasm-1");
        assert_eq!(
            default_host_id(Some("node-a.example.com\n"), 7),
            "node-a.example.com"
        );
        for unusable in [
            None,
            Some(""),
            Some("localhost"),
            Some("LOCALHOST.localdomain"),
            Some("bad name"),
            Some(".."),
        ] {
            assert_eq!(default_host_id(unusable, 7), "kwasm-7", "{unusable:?}");
        }
        let long = "h".repeat(201);
        assert_eq!(default_host_id(Some(&long), 7), "kwasm-7");
        // What HostConfig::default() picks is always a valid id.
        assert!(is_host_id(&HostConfig::default().id));
    }

    #[test]
    fn a_host_id_kafka_would_refuse_as_an_instance_id_is_named() {
        let err = parse(&MINIMAL.replace("[kafka]", "[host]\nid = \"a/b\"\n[kafka]"))
            .expect_err("bad id");
        assert!(err.to_string().contains("`host.id`"), "{err}");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r = RetryPolicy {
            max_attempts: 10,
            initial_backoff_ms: 100,
            max_backoff_ms: 350,
        };
        assert_eq!(
            [r.backoff_ms(2), r.backoff_ms(3), r.backoff_ms(4)],
            [100, 200, 350]
        );
    }
}
