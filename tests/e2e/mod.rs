//! Shared pieces of the end-to-end tests: host configs, the admin API,
//! and the exactly-once accounting of an output topic.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::time::Duration;

use kwasm_tests::{HostProcess, brokers, free_port, plugin_path};

/// For each named test body `fn name(protocol: Protocol)`, a module `name`
/// with the tests `classic` and `consumer` (KIP-848), so the test's name says
/// which protocol failed (`name::classic`, `name::consumer`).
// Not every test binary that includes this module runs both protocols.
#[allow(unused_macros)]
macro_rules! both_protocols {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn classic() {
                    super::$name($crate::e2e::Protocol::Classic)
                }
                #[test]
                fn consumer() {
                    super::$name($crate::e2e::Protocol::Consumer)
                }
            }
        )*
    };
}
#[allow(unused_imports)]
pub(crate) use both_protocols;

/// A host running one pipeline, with its admin port.
pub struct Host {
    pub process: HostProcess,
    pub admin_port: u16,
    _config: tempfile::NamedTempFile,
}

/// The consumer group protocol of a test host (`kafka.group_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// JoinGroup/SyncGroup with cooperative-sticky.
    Classic,
    /// KIP-848, broker-side assignment.
    Consumer,
}

impl Protocol {
    /// The config value, also used in test output.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Classic => "classic",
            Protocol::Consumer => "consumer",
        }
    }
}

/// What a test pipeline looks like.
pub struct PipelineDef<'a> {
    pub name: &'a str,
    pub plugin: &'a str,
    pub config: &'a [(&'a str, &'a str)],
    pub input: &'a str,
    pub output: &'a str,
    pub group: &'a str,
    pub dead_letter: Option<&'a str>,
}

/// One test's topics and group: `<test>-in-<unique>` and its `-out`,
/// `-group` and `-dlq`.
pub struct Topics {
    pub input: String,
    pub output: String,
    pub group: String,
    pub dlq: String,
}

/// Creates a test's input and output topics (`partitions` each) and its
/// one-partition dead-letter topic.
pub fn topics(test: &str, partitions: i32) -> Topics {
    let input = kwasm_tests::unique(&format!("{test}-in"));
    let t = Topics {
        output: format!("{input}-out"),
        group: format!("{input}-group"),
        dlq: format!("{input}-dlq"),
        input,
    };
    kwasm_tests::create_topic(&t.input, partitions);
    kwasm_tests::create_topic(&t.output, partitions);
    kwasm_tests::create_topic(&t.dlq, 1);
    t
}

/// Produces `total` records `"{p}:{seq}"` (keyed by themselves) round-robin
/// over `partitions`, in `chunks` chunks spread over `over`, on a thread;
/// joins with what was produced, in order.
pub fn produce_slowly(
    topic: String,
    partitions: i32,
    total: usize,
    over: Duration,
    chunks: usize,
) -> std::thread::JoinHandle<Vec<(i32, String)>> {
    std::thread::spawn(move || {
        let per_chunk = total / chunks;
        let mut produced = Vec::with_capacity(total);
        for c in 0..chunks {
            let chunk: Vec<(i32, String)> = (0..per_chunk)
                .map(|i| {
                    let n = c * per_chunk + i;
                    let p = (n % partitions as usize) as i32;
                    (p, format!("{p}:{}", n / partitions as usize))
                })
                .collect();
            kwasm_tests::produce(
                &topic,
                chunk
                    .iter()
                    .map(|(p, v)| kwasm_tests::OutRecord::to(*p, v.clone()).key(v.clone())),
            );
            produced.extend(chunk);
            std::thread::sleep(over / chunks as u32);
        }
        produced
    })
}

/// The partition rows `/v1/assignments` shows for `pipeline` on `host`
/// (`state`, `reason`, offsets); empty while the API does not answer.
pub fn assignment_rows(host: &Host, pipeline: &str) -> Vec<serde_json::Value> {
    let Some((200, body)) = http_get(host.admin_port, "/v1/assignments") else {
        return Vec::new();
    };
    let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    body["pipelines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["pipeline"] == pipeline)
        .flat_map(|p| p["partitions"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The value of metric `name` for `pipeline` on `host`'s `/metrics`.
pub fn metric(host: &Host, name: &str, pipeline: &str) -> Option<f64> {
    let (_, text) = http_get(host.admin_port, "/metrics")?;
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("pipeline=\"{pipeline}\"")))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The passthrough pipeline over `t`.
pub fn passthrough(t: &Topics) -> PipelineDef<'_> {
    PipelineDef {
        name: "passthrough",
        plugin: "passthrough",
        config: &[],
        input: &t.input,
        output: &t.output,
        group: &t.group,
        dead_letter: Some(&t.dlq),
    }
}

impl Host {
    /// Starts `kwasm serve` with `pipeline`, named `id`; its registry topics
    /// are named after the pipeline's group, so tests stay apart.
    pub fn start(id: &str, pipeline: &PipelineDef<'_>) -> Host {
        Self::start_with(id, pipeline.group, Some(pipeline))
    }

    /// Starts `host-a` with `pipeline` and a retry policy of its own.
    pub fn start_with_retry(
        pipeline: &PipelineDef<'_>,
        max_attempts: u32,
        backoff_ms: u64,
    ) -> Host {
        Self::start_with_text("host-a", pipeline.group, Some(&pipeline_toml(pipeline).replace(
            "[pipeline.retry]\nmax_attempts = 2\ninitial_backoff_ms = 10",
            &format!("[pipeline.retry]\nmax_attempts = {max_attempts}\ninitial_backoff_ms = {backoff_ms}\nmax_backoff_ms = {backoff_ms}"),
        )))
    }

    /// Starts `kwasm serve` with no config-file pipeline, on the registry
    /// topics `<registry>-plugins`, `-pipelines`, `-members`.
    pub fn start_bare(id: &str, registry: &str) -> Host {
        Self::start_with(id, registry, None)
    }

    /// [`start_bare`](Self::start_bare) with consumers that speak `protocol`.
    pub fn start_bare_as(id: &str, registry: &str, protocol: Protocol) -> Host {
        Self::start_with_text_as(id, registry, None, protocol)
    }

    /// Starts `kwasm serve` with `pipeline` whose consumers speak `protocol`.
    pub fn start_as(id: &str, pipeline: &PipelineDef<'_>, protocol: Protocol) -> Host {
        Self::start_with_text_as(id, pipeline.group, Some(&pipeline_toml(pipeline)), protocol)
    }

    /// Starts `kwasm serve` with `pipelines_toml` (`[[pipeline]]` tables
    /// written by the test, e.g. naming a registry plugin `tagger@2`) on the
    /// registry topics `<registry>-plugins`, `-pipelines`, `-members`.
    pub fn start_with_pipelines(id: &str, registry: &str, pipelines_toml: &str) -> Host {
        Self::start_with_text(id, registry, Some(pipelines_toml))
    }

    fn start_with(id: &str, registry: &str, pipeline: Option<&PipelineDef<'_>>) -> Host {
        Self::start_with_text(id, registry, pipeline.map(pipeline_toml).as_deref())
    }

    fn start_with_text(id: &str, registry: &str, pipeline_text: Option<&str>) -> Host {
        Self::start_with_text_as(id, registry, pipeline_text, Protocol::Classic)
    }

    fn start_with_text_as(
        id: &str,
        registry: &str,
        pipeline_text: Option<&str>,
        protocol: Protocol,
    ) -> Host {
        Self::start_full(id, registry, pipeline_text, protocol, 6_000)
    }

    /// [`start_as`](Self::start_as) with a consumer session timeout of
    /// `session_timeout_ms` (classic protocol; under KIP-848 the broker
    /// sets it).
    pub fn start_as_with_session_timeout(
        id: &str,
        pipeline: &PipelineDef<'_>,
        protocol: Protocol,
        session_timeout_ms: u32,
    ) -> Host {
        Self::start_full(
            id,
            pipeline.group,
            Some(&pipeline_toml(pipeline)),
            protocol,
            session_timeout_ms,
        )
    }

    /// Starts `kwasm serve` (classic protocol) with `host_extra` added to
    /// its `[host]` table (e.g. `workers = 1`) and `pipelines_text` (TOML
    /// `[[pipeline]]` tables, see [`pipeline_toml`]) as its config-file
    /// pipelines.
    pub fn start_custom(id: &str, registry: &str, host_extra: &str, pipelines_text: &str) -> Host {
        Self::start_text(
            id,
            registry,
            Some(pipelines_text),
            Protocol::Classic,
            6_000,
            (host_extra, ""),
        )
    }

    /// [`start_custom`](Self::start_custom) with config-file pipelines only,
    /// under `protocol`.
    pub fn start_pipelines_as(
        id: &str,
        registry: &str,
        pipelines_text: &str,
        protocol: Protocol,
    ) -> Host {
        Self::start_text(
            id,
            registry,
            Some(pipelines_text),
            protocol,
            6_000,
            ("", ""),
        )
    }

    /// Starts `kwasm serve` (classic protocol) with config-file pipelines
    /// only and a consumer session timeout of `session_timeout_ms`.
    pub fn start_pipelines_with_session_timeout(
        id: &str,
        registry: &str,
        pipelines_text: &str,
        session_timeout_ms: u32,
    ) -> Host {
        Self::start_full(
            id,
            registry,
            Some(pipelines_text),
            Protocol::Classic,
            session_timeout_ms,
        )
    }

    /// [`start_custom`](Self::start_custom) with `kafka_properties` lines
    /// added to `[kafka.properties]` (e.g.
    /// `"allow.auto.create.topics" = "false"`).
    pub fn start_with_kafka_properties(
        id: &str,
        registry: &str,
        kafka_properties: &str,
        pipelines_text: &str,
    ) -> Host {
        Self::start_text(
            id,
            registry,
            Some(pipelines_text),
            Protocol::Classic,
            6_000,
            ("", kafka_properties),
        )
    }

    fn start_full(
        id: &str,
        registry: &str,
        pipeline_text: Option<&str>,
        protocol: Protocol,
        session_timeout_ms: u32,
    ) -> Host {
        Self::start_text(
            id,
            registry,
            pipeline_text,
            protocol,
            session_timeout_ms,
            ("", ""),
        )
    }

    fn start_text(
        id: &str,
        registry: &str,
        pipeline_text: Option<&str>,
        protocol: Protocol,
        session_timeout_ms: u32,
        (host_extra, kafka_extra): (&str, &str),
    ) -> Host {
        let admin_port = free_port();
        let pipeline_text = pipeline_text.unwrap_or_default();
        let text = format!(
            r#"
[host]
id = {id:?}
admin_listen = "127.0.0.1:{admin_port}"
commit_interval_ms = 200
shutdown_grace_ms = 10000
cache_dir = {cache:?}
{host_extra}

[kafka]
brokers = {brokers:?}
group_protocol = "{protocol}"
[kafka.properties]
"topic.metadata.refresh.interval.ms" = "1000"
{kafka_extra}
{consumer_properties}

[registry]
plugins_topic = "{registry}-plugins"
pipelines_topic = "{registry}-pipelines"
members_topic = "{registry}-members"
{pipeline_text}"#,
            cache = std::env::temp_dir().join("kwasm-e2e-cache"),
            brokers = brokers(),
            protocol = protocol.name(),
            // Under KIP-848 these are the broker's (scripts/kafka-node sets
            // the same 6 s / 500 ms there) and librdkafka refuses them.
            consumer_properties = match protocol {
                Protocol::Classic => format!(
                    "[kafka.consumer_properties]\n\"session.timeout.ms\" = \"{session_timeout_ms}\"\n\"heartbeat.interval.ms\" = \"500\""
                ),
                Protocol::Consumer => String::new(),
            },
        );
        let mut config = tempfile::NamedTempFile::new().expect("temp config file");
        config.write_all(text.as_bytes()).expect("write config");
        let path = config.path().to_string_lossy().into_owned();
        // KWASM_TEST_HOST_LOG (e.g. `info,librdkafka=debug` with
        // KWASM_KAFKA_CONSUMER_PROPERTY_DEBUG=cgrp,fetch) to diagnose a run.
        let log = std::env::var("KWASM_TEST_HOST_LOG").unwrap_or_else(|_| "info".into());
        let process = HostProcess::spawn(&["serve", "--config", &path], &[("KWASM_LOG", &log)], id);
        Host {
            process,
            admin_port,
            _config: config,
        }
    }

    /// A JSON call to this host's admin API.
    pub fn call(&self, method: &str, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
        let (status, text) =
            http_request(self.admin_port, method, path, body).unwrap_or_else(|| {
                panic!(
                    "{method} {path}: host {} does not answer",
                    self.process.name()
                )
            });
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Like [`Host::call`], waiting up to 3 minutes for the answer: a plugin
    /// upload compiles the component first, which on a loaded machine with
    /// a debug build takes longer than `call`'s 30 s.
    pub fn call_patient(&self, method: &str, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
        let (status, text) = http_request_within(
            self.admin_port,
            method,
            path,
            body,
            Duration::from_secs(180),
        )
        .unwrap_or_else(|| {
            panic!(
                "{method} {path}: host {} does not answer",
                self.process.name()
            )
        });
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Waits until the admin API answers `/readyz` with 200.
    pub fn wait_ready(&self, timeout: Duration) {
        let ready = kwasm_tests::wait_until(timeout, Duration::from_millis(100), || {
            http_get(self.admin_port, "/readyz").is_some_and(|(s, _)| s == 200)
        });
        assert!(
            ready,
            "host {} not ready: {:?}",
            self.process.name(),
            http_get(self.admin_port, "/readyz")
        );
    }
}

pub fn pipeline_toml(pipeline: &PipelineDef<'_>) -> String {
    let plugin_config: Vec<String> = pipeline
        .config
        .iter()
        .map(|(k, v)| format!("{k} = {v:?}"))
        .collect();
    let dead_letter = pipeline
        .dead_letter
        .map(|d| format!("dead_letter_topic = {d:?}\n"))
        .unwrap_or_default();
    format!(
        r#"
[[pipeline]]
name = {name:?}
plugin = {plugin:?}
inputs = [{input:?}]
output = {output:?}
group_id = {group:?}
{dead_letter}[pipeline.retry]
max_attempts = 2
initial_backoff_ms = 10
[pipeline.config]
{plugin_config}
"#,
        name = pipeline.name,
        plugin = plugin_path(pipeline.plugin),
        input = pipeline.input,
        output = pipeline.output,
        group = pipeline.group,
        plugin_config = plugin_config.join("\n"),
    )
}

impl Host {
    /// Partitions of `topic` this host holds, per its admin API; `None`
    /// while the API is not up (or the process is gone).
    pub fn partitions(&self, topic: &str) -> Option<BTreeSet<i32>> {
        partitions_at(self.admin_port, topic)
    }
}

/// Partitions of `topic` held by the host (process or container) whose
/// admin API is on `port`; `None` while the API is not up.
pub fn partitions_at(port: u16, topic: &str) -> Option<BTreeSet<i32>> {
    let (status, body) = http_get(port, "/v1/assignments")?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let parts = v["pipelines"][0]["partitions"].as_array()?;
    Some(
        parts
            .iter()
            .filter(|p| p["topic"] == topic)
            .filter_map(|p| p["partition"].as_i64().map(|p| p as i32))
            .collect(),
    )
}

/// Waits until every host (by admin port) holds partitions of `topic` and
/// together they hold all `partitions`, each exactly once (a host still
/// joining holds nothing yet, so "covered" alone could be one early host
/// holding everything); returns what each holds, in `admin_ports` order.
pub fn wait_for_exclusive_cover(
    admin_ports: &[u16],
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Vec<BTreeSet<i32>> {
    let mut last = Vec::new();
    let covered = kwasm_tests::wait_until(timeout, Duration::from_millis(100), || {
        last = admin_ports
            .iter()
            .map(|&port| partitions_at(port, topic).unwrap_or_default())
            .collect();
        let total: usize = last.iter().map(BTreeSet::len).sum();
        let union: BTreeSet<i32> = last.iter().flatten().copied().collect();
        last.iter().all(|p| !p.is_empty())
            && total == partitions as usize
            && union.len() == partitions as usize
    });
    assert!(covered, "partitions never covered exactly once: {last:?}");
    last
}

/// A bare HTTP/1.0 GET on 127.0.0.1; `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_request(port, "GET", path, b"")
}

/// A bare HTTP/1.0 request on 127.0.0.1; `None` when nothing answers.
pub fn http_request(port: u16, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
    http_request_within(port, method, path, body, Duration::from_secs(30))
}

/// [`http_request`] waiting up to `timeout` for the answer.
pub fn http_request_within(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .ok()?;
    stream.write_all(body).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Some((status, body))
}

/// Lost and duplicated inputs of a passthrough run, and per-partition order.
#[derive(Debug)]
pub struct Accounting {
    pub lost: usize,
    pub duplicates: usize,
    pub out_of_order: usize,
}

impl Accounting {
    /// Prints `label: N produced, lost L, duplicates D, out of order O` and
    /// fails the test unless every input came out once, in order.
    pub fn assert_each_once(&self, label: &str, produced: usize) {
        println!(
            "{label}: {produced} produced, lost {}, duplicates {}, out of order {}",
            self.lost, self.duplicates, self.out_of_order
        );
        assert_eq!(
            (self.lost, self.duplicates, self.out_of_order),
            (0, 0, 0),
            "{label}: {self:?}"
        );
    }
}

/// Compares the output (values `"{p}:{seq}"`) with what was produced.
/// Order: within each output partition, the sequence of each input
/// partition's values must never go backwards except on a duplicate replay.
pub fn account(produced: &[(i32, String)], output: &[kwasm_tests::Record]) -> Accounting {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in output {
        *seen.entry(r.value_str()).or_default() += 1;
    }
    let lost = produced
        .iter()
        .filter(|(_, v)| !seen.contains_key(v))
        .count();
    let duplicates = seen.values().map(|&n| n.saturating_sub(1)).sum();
    let mut out_of_order = 0;
    let mut last: BTreeMap<(i32, i32), i64> = BTreeMap::new();
    for r in output {
        let v = r.value_str();
        let Some((p, seq)) = kwasm_tests::sequence_of(&v) else {
            continue;
        };
        let key = (r.partition, p);
        if let Some(&prev) = last.get(&key)
            && seq <= prev
            && seen.get(&v).copied().unwrap_or(0) < 2
        {
            out_of_order += 1;
        }
        last.insert(key, seq);
    }
    Accounting {
        lost,
        duplicates,
        out_of_order,
    }
}
