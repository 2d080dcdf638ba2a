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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::runtime::Limits;

/// Everything `kwasm serve` reads from its config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This host.
    #[serde(default)]
    pub host: HostConfig,
    /// How to reach Kafka.
    pub kafka: KafkaConfig,
    /// Default limits for every plugin (a pipeline may override them).
    #[serde(default)]
    pub limits: Limits,
    /// The plugin and pipeline registry (Kafka topics).
    #[serde(default)]
    pub registry: crate::registry::RegistryConfig,
    /// Pipelines declared here. They win over registry pipelines of the
    /// same name, and the API cannot change them.
    #[serde(default, rename = "pipeline")]
    pub pipelines: Vec<PipelineSpec>,
}

/// Settings of this host process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Names this host in the group (librdkafka `client.id`) and in logs.
    /// Default: `kwasm-<hostname or pid>`.
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
    /// Bearer token required by mutating admin calls; also read from
    /// `KWASM_ADMIN_TOKEN`. Default none (open: keep the listener on
    /// 127.0.0.1 then).
    pub admin_token: Option<String>,
    /// Bytes all plugin instances of this host may hold together: each
    /// instance reserves its `limits.memory_bytes` from it, and a partition
    /// whose instance does not fit waits (idle partitions' instances are
    /// dropped for it) instead of the host being OOM-killed. Default half
    /// of the smaller of the cgroup memory limit and the machine's memory.
    pub max_plugin_memory_bytes: Option<usize>,
}

impl HostConfig {
    /// `max_plugin_memory_bytes`, or its documented default.
    pub fn plugin_memory_budget_bytes(&self) -> usize {
        self.max_plugin_memory_bytes
            .unwrap_or_else(crate::runtime::default_plugin_memory_bytes)
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            id: format!("kwasm-{}", std::process::id()),
            static_membership: false,
            admin_listen: "127.0.0.1:8080".into(),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            shutdown_grace_ms: 10_000,
            commit_interval_ms: 1_000,
            cache_dir: PathBuf::from(".kwasm/cache"),
            admin_token: None,
            max_plugin_memory_bytes: None,
        }
    }
}

/// Kafka connection settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated.
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
}

/// One pipeline: a plugin applied to input topics, as one consumer group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Unique name; `[a-zA-Z0-9._-]`.
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
    /// A regex of input topics (librdkafka `^` subscription).
    #[serde(default)]
    pub input_regex: Option<String>,
    /// Default output topic.
    pub output: String,
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
            Some(re) if re.starts_with('^') => vec![re.clone()],
            Some(re) => vec![format!("^{re}")],
            None => self.inputs.clone(),
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
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Applies environment overrides documented on the fields.
    pub fn with_env(mut self) -> Self {
        if let Ok(token) = std::env::var("KWASM_ADMIN_TOKEN")
            && !token.is_empty()
        {
            self.host.admin_token = Some(token);
        }
        self
    }

    /// Checks values serde cannot: ranges, names, one input form per pipeline.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: String, message: &str| {
            Err(ConfigError::Invalid {
                field,
                message: message.to_owned(),
            })
        };
        if self.kafka.brokers.trim().is_empty() {
            return invalid("kafka.brokers".into(), "must name at least one broker");
        }
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
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.pipelines.iter().enumerate() {
            let at = |field: &str| format!("pipeline[{i}].{field}");
            if let Err(ConfigError::Invalid { field, message }) = p.validate() {
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

impl PipelineSpec {
    /// Checks one pipeline, naming the field relative to it (`inputs`,
    /// `retry.max_attempts`): the config file prefixes `pipeline[i].`, the
    /// admin API reports it as is.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: &str| {
            Err(ConfigError::Invalid {
                field: field.to_owned(),
                message: message.to_owned(),
            })
        };
        if !is_name(&self.name) {
            return invalid("name", "must be 1-200 characters of [a-zA-Z0-9._-]");
        }
        match (self.inputs.is_empty(), &self.input_regex) {
            (true, None) => return invalid("inputs", "give `inputs` or `input_regex`"),
            (false, Some(_)) => {
                return invalid("inputs", "give `inputs` or `input_regex`, not both");
            }
            _ => {}
        }
        if !is_name(&self.output) {
            return invalid("output", "must be a valid topic name");
        }
        if self.retry.max_attempts == 0 {
            return invalid("retry.max_attempts", "must be at least 1");
        }
        if self.batch.max_messages == 0 {
            return invalid("batch.max_messages", "must be at least 1");
        }
        Ok(())
    }
}

/// The rule for pipeline and plugin names (and output topics in configs):
/// 1 to 200 characters of `[a-zA-Z0-9._-]`, so a name is also safe in a
/// topic name, a URL path and a registry key.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
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
    fn unknown_field_is_named() {
        let err = parse(&format!("{MINIMAL}\nbatch_size = 3")).expect_err("unknown field");
        assert!(err.to_string().contains("batch_size"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let err = parse(&MINIMAL.replace("inputs = [\"in\"]", "")).expect_err("no inputs");
        assert!(err.to_string().contains("pipeline[0].inputs"), "{err}");
        let err = parse(&MINIMAL.replace("\"out\"", "\"bad topic\"")).expect_err("bad output");
        assert!(err.to_string().contains("pipeline[0].output"), "{err}");
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
