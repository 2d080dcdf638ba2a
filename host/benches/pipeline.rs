//! Pipeline throughput benchmark (issue 5): the whole consume → plugin →
//! produce → commit path against a real broker, next to a native Rust
//! passthrough that is the ceiling.
//!
//! For each broker (librdkafka's in-process mock cluster, and nisshi when
//! `KWASM_BENCH_BROKERS` names it), on the same data and in one process:
//! - (a) native: a `BaseConsumer` poll loop feeding a `BaseProducer`, with the
//!   host's own client settings (`kafka::consumer_config`/`producer_config`),
//!   outputs keyed like kwasm's, and the host's commit discipline (async,
//!   every second, only the acknowledged prefix of each partition);
//! - (b) the kwasm pipeline (`Pipeline::start`, as `kwasm serve` runs it)
//!   with the `passthrough` plugin;
//! - (c) the kwasm pipeline with the `transform` plugin rewriting JSON values
//!   (every value is a JSON object of the stated size).
//!
//! - (d) and (e), on Apache Kafka only: a Kafka Streams application doing
//!   (b)'s and (c)'s work, at least once (`host/benches/peers/kstreams/`,
//!   driven by `peers/kstreams.rs`); its JVM's CPU is added to the bench
//!   process's and shown on its own;
//! - (a') and (b'): (a) and (b) on an input spread round-robin instead of
//!   partitioned by key, so that every fetched batch scatters over all output
//!   partitions.
//!
//! Throughput: the input is produced before a case starts, partitioned by
//! key with the host's partitioner (a keyed topic: so a keyed output lands
//! on the input's partition number) unless the case says otherwise; the clock runs
//! from the first message the case's consumer fetches (so the group join is
//! not counted) until the output topic's high watermarks add up to N. CPU is
//! `getrusage(RUSAGE_SELF)` over the same span: it includes everything in
//! this process (consumer, producer, plugin, the watermark probe, and for the
//! mock cluster the broker itself). Cases take turns `KWASM_BENCH_REPEAT`
//! times and keep their best run; the table gives the ratio of the bests and
//! each round's ratio (a case against the baseline run just before it) with
//! their median, the figure least moved by a noisy neighbour. Latency: records produced at a fixed,
//! sub-saturation rate carry their send time in a header; a separate reader
//! of the output topic takes `now - sent`; row (0) reads the input topic
//! instead, the harness's own floor.
//!
//! Run it with `scripts/bench-pipeline` (starts Apache Kafka, and nisshi when
//! asked for, builds the plugins).
//! Environment:
//! - `KWASM_PLUGIN_DIR` (required): where `passthrough.wasm` and `transform.wasm` are.
//! - `KWASM_TRANSFORM_DIR`: where `redpanda-identity.wasm` is (Redpanda's
//!   SDK identity transform, case `redpanda`; skipped without it).
//! - `KWASM_BENCH_KSTREAMS_CLASSPATH`: the Kafka Streams peer's class path
//!   (without it (d) and (e) are skipped); `KWASM_BENCH_KSTREAMS_JAVA_OPTS`
//!   its JVM options (default `-Xms512m -Xmx512m`).
//! - `KWASM_BENCH_KAFKA_BROKERS`: an Apache Kafka broker (target `kafka`);
//!   `KWASM_BENCH_KAFKA_BROKER_PID`: its process id, to report its CPU too.
//! - `KWASM_BENCH_BROKERS`: a nisshi broker (target `nisshi`);
//!   `KWASM_BENCH_BROKER_PID`: its process id.
//! - `KWASM_BENCH_QUICK=1`: 200k messages, 2 s latency runs, one round.
//! - `KWASM_BENCH_MESSAGES` (default 1 000 000; 100-byte run),
//!   `KWASM_BENCH_LARGE_MESSAGES` (default a fifth of that; 1 KiB run),
//!   `KWASM_BENCH_BATCH1_MESSAGES` (default a tenth; batch-1 sweep point),
//!   `KWASM_BENCH_REPEAT` (default 3), `KWASM_BENCH_RATE` (latency runs,
//!   msg/s, default 20 000), `KWASM_BENCH_LATENCY_SECS` (default 5),
//!   `KWASM_BENCH_LATENCY_LINGER_MS` (the load generator's `linger.ms`,
//!   default 5; 1 overloads nisshi with requests).
//! - `KWASM_BENCH_KAFKA_PROPERTIES` (`name=value,...`): librdkafka properties
//!   added to every case's clients (as `kafka.properties` does for the host).
//! - `KWASM_BENCH_TARGETS` (`mock,kafka`; also `nisshi`), `KWASM_BENCH_SECTIONS`
//!   (`throughput,large,sweep,latency`), `KWASM_BENCH_CASES`
//!   (`direct,native,passthrough,passthrough-eos,passthrough-eos-1s,transform,redpanda,kstreams,kstreams-eos,kstreams-transform,native-spread,passthrough-spread`): subsets, e.g. for
//!   profiling one case. `KWASM_BENCH_DEBUG=1` prints latency over time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kwasm_host::config::{
    BatchPolicy, Delivery, HostConfig, KafkaConfig, PipelineSpec, RetryPolicy, TransactionPolicy,
};
use kwasm_host::kafka::{OutputProducer, consumer_config, producer_config};
use kwasm_host::pipeline::{Deployment, Pipeline, PipelineDeps, PipelineStatus};
use kwasm_host::runtime::{CompiledPlugin, Limits, Runtime, RuntimeConfig};
use kwasm_host::topics::ControlPlane;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};

#[path = "peers/kstreams.rs"]
mod kstreams;

/// The header carrying a latency record's send time (µs since [`epoch`]).
const SENT_HEADER: &str = "bench.sent_us";
/// Longest a sweep point runs (batch 1 on nisshi manages a few hundred msg/s).
const SWEEP_TIME_CAP: Duration = Duration::from_secs(15);
/// Batch sizes of the sweep; 512 is the default and case (b).
const SWEEP: [usize; 4] = [1, 64, 512, 4096];
const DEFAULT_BATCH: usize = 512;
/// Partitions of the latency runs' topics, on both brokers: the mock
/// cluster's fetch walks a partition's message sets from the start, and 64
/// partitions of tiny sets at 20k msg/s made its latency grow without bound.
const LATENCY_PARTITIONS: i32 = 6;
/// The transform case's plugin configuration.
const TRANSFORM_CONFIG: [(&str, &str); 2] = [("rename", "a=b"), ("add", "meta.via=kwasm")];

type Res<T> = Result<T, String>;

/// The host's metrics, as `/metrics` would show them.
static METRICS: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();

/// Prints what pipeline `name`'s transactions cost, from the host's own
/// metrics: how many committed and aborted, and how long each commit held
/// the gate closed (no batch runs meanwhile), the figure that explains
/// exactly-once's throughput beside at-least-once's. Nothing for a
/// pipeline without transactions.
fn print_transactions(label: &str, name: &str) {
    let Some(handle) = METRICS.get() else { return };
    let text = handle.render();
    let series = format!("{{pipeline=\"{name}\"}}");
    let value = |metric: &str| -> Option<f64> {
        let prefix = format!("{metric}{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
    };
    let quantile = |q: &str| -> Option<f64> {
        let prefix = format!(
            "{}{{pipeline=\"{name}\",quantile=\"{q}\"}} ",
            kwasm_host::metrics_names::TRANSACTION_COMMIT_SECONDS
        );
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
    };
    let commit = kwasm_host::metrics_names::TRANSACTION_COMMIT_SECONDS;
    let (Some(count), Some(sum)) = (
        value(&format!("{commit}_count")),
        value(&format!("{commit}_sum")),
    ) else {
        return;
    };
    if count == 0.0 {
        return;
    }
    let aborted = value(kwasm_host::metrics_names::TRANSACTIONS_ABORTED).unwrap_or(0.0);
    eprintln!(
        "[bench] {label}: {count} transactions committed, {aborted} aborted; gate closed per commit: mean {:.1} ms, p50 {:.1} ms, p99 {:.1} ms",
        sum / count * 1e3,
        quantile("0.5").unwrap_or(f64::NAN) * 1e3,
        quantile("0.99").unwrap_or(f64::NAN) * 1e3,
    );
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // As `kwasm serve` does: the host's metrics go to a real recorder (read
    // back for the exactly-once cases' transaction figures).
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("metrics recorder");
    let _ = METRICS.set(metrics);
    epoch();
    let opts = Options::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(std::env::temp_dir().join("kwasm-bench-cache")),
        ..RuntimeConfig::default()
    })
    .expect("wasm runtime");
    let load = |name: &str| {
        let path = opts.plugin_dir.join(format!("{name}.wasm"));
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        runtime
            .load(name, &bytes)
            .unwrap_or_else(|e| panic!("cannot load {name}: {e}"))
    };
    let redpanda = std::env::var_os("KWASM_TRANSFORM_DIR").map(|dir| {
        let path = PathBuf::from(dir).join("redpanda-identity.wasm");
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        runtime
            .load("redpanda-identity", &bytes)
            .unwrap_or_else(|e| panic!("cannot load redpanda-identity: {e}"))
    });
    let plugins = Plugins {
        passthrough: load("passthrough"),
        transform: load("transform"),
        redpanda,
    };

    println!("# kwasm pipeline benchmark");
    println!();
    println!(
        "machine: {} cores, {}; load average at start: {}",
        cores(),
        cpu_model(),
        loadavg()
    );
    println!(
        "messages: {} x 100 B (1 KiB run: {}), {} rounds (best kept); latency at {} msg/s for {} s; default batch {DEFAULT_BATCH}, max_wait 20 ms",
        opts.messages, opts.large_messages, opts.repeat, opts.rate, opts.latency_secs
    );
    println!();
    let mut failures = 0;
    for target in &opts.targets {
        let broker = match target.as_str() {
            "mock" => Broker::mock(64, rt.handle().clone()),
            "kafka" | "nisshi" => {
                let (brokers_var, pid_var, storage) = if target == "kafka" {
                    (
                        "KWASM_BENCH_KAFKA_BROKERS",
                        "KWASM_BENCH_KAFKA_BROKER_PID",
                        "Apache Kafka, KRaft, one node",
                    )
                } else {
                    (
                        "KWASM_BENCH_BROKERS",
                        "KWASM_BENCH_BROKER_PID",
                        "memory storage",
                    )
                };
                match std::env::var(brokers_var) {
                    Ok(b) => Broker::external(
                        if target == "kafka" { "kafka" } else { "nisshi" },
                        storage,
                        &b,
                        std::env::var(pid_var).ok().and_then(|p| p.parse().ok()),
                        6,
                        rt.handle().clone(),
                    ),
                    Err(_) => {
                        println!(
                            "({target} skipped: {brokers_var} is unset; scripts/bench-pipeline starts it)"
                        );
                        continue;
                    }
                }
            }
            other => {
                panic!("unknown target `{other}` in KWASM_BENCH_TARGETS (mock, kafka, nisshi)")
            }
        };
        let bench = Bench {
            opts: &opts,
            broker: &broker,
            plugins: &plugins,
            rt: rt.handle().clone(),
        };
        failures += bench.run_suite();
    }
    if failures > 0 {
        eprintln!("{failures} case(s) failed");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------
// Options

struct Options {
    plugin_dir: PathBuf,
    messages: usize,
    large_messages: usize,
    batch1_messages: usize,
    rate: u64,
    latency_secs: u64,
    repeat: usize,
    targets: Vec<String>,
    sections: Vec<String>,
    cases: Vec<String>,
}

impl Options {
    fn from_env() -> Options {
        let quick = std::env::var("KWASM_BENCH_QUICK").is_ok_and(|v| v == "1");
        let messages = env_or(
            "KWASM_BENCH_MESSAGES",
            if quick { 200_000 } else { 1_000_000 },
        );
        let list = |name: &str, default: &str| -> Vec<String> {
            std::env::var(name)
                .unwrap_or_else(|_| default.to_owned())
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        Options {
            plugin_dir: std::env::var_os("KWASM_PLUGIN_DIR")
                .map(PathBuf::from)
                .expect("KWASM_PLUGIN_DIR is unset: run scripts/bench-pipeline, which builds the plugins"),
            messages,
            large_messages: env_or("KWASM_BENCH_LARGE_MESSAGES", messages / 5),
            batch1_messages: env_or("KWASM_BENCH_BATCH1_MESSAGES", messages / 10),
            rate: env_or("KWASM_BENCH_RATE", 20_000) as u64,
            latency_secs: env_or("KWASM_BENCH_LATENCY_SECS", if quick { 2 } else { 5 }) as u64,
            repeat: env_or("KWASM_BENCH_REPEAT", if quick { 1 } else { 3 }).max(1),
            targets: list("KWASM_BENCH_TARGETS", "mock,nisshi"),
            sections: list("KWASM_BENCH_SECTIONS", "throughput,large,sweep,latency"),
            cases: list(
                "KWASM_BENCH_CASES",
                "direct,native,passthrough,passthrough-eos,passthrough-eos-1s,transform,redpanda,kstreams,kstreams-eos,kstreams-transform,native-spread,passthrough-spread",
            ),
        }
    }

    fn section(&self, s: &str) -> bool {
        self.sections.iter().any(|x| x == s)
    }

    fn case(&self, c: &str) -> bool {
        self.cases.iter().any(|x| x == c)
    }
}

fn env_or(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

struct Plugins {
    passthrough: Arc<CompiledPlugin>,
    transform: Arc<CompiledPlugin>,
    /// Redpanda's SDK identity transform (the second plugin ABI), when
    /// `KWASM_TRANSFORM_DIR` is set.
    redpanda: Option<Arc<CompiledPlugin>>,
}

// ---------------------------------------------------------------------------
// Brokers

/// A broker under test, with the clients the harness itself needs.
struct Broker {
    name: &'static str,
    description: String,
    bootstrap: String,
    partitions: i32,
    /// Holds librdkafka's mock cluster alive (it belongs to this client).
    mock: Option<BaseProducer>,
    /// The external broker's process, to read its CPU time.
    pid: Option<u32>,
    admin: Option<AdminClient<DefaultClientContext>>,
    /// Reads high watermarks; never joins a group.
    probe: BaseConsumer,
    rt: tokio::runtime::Handle,
}

impl Broker {
    fn mock(partitions: i32, rt: tokio::runtime::Handle) -> Broker {
        let holder: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", "1")
            .create()
            .expect("mock cluster");
        let mock = holder
            .client()
            .mock_cluster()
            .expect("the client owns a mock cluster");
        let bootstrap = mock.bootstrap_servers();
        drop(mock);
        // Classic groups on the mock cluster wait 3 s before the first
        // assignment (Kafka's group.initial.rebalance.delay.ms); the clock
        // starts at the first fetch anyway, this only shortens the run.
        // SAFETY: the pointer comes from a live client that owns the cluster.
        unsafe {
            let cluster =
                rdkafka::bindings::rd_kafka_handle_mock_cluster(holder.client().native_ptr());
            assert!(!cluster.is_null(), "no mock cluster");
            rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 100);
        }
        Broker {
            name: "mock",
            description: format!(
                "librdkafka {} MockCluster, 1 broker, in this process; topics of {partitions} partitions",
                rdkafka::util::get_rdkafka_version().1
            ),
            probe: probe(&bootstrap),
            bootstrap,
            partitions,
            mock: Some(holder),
            pid: None,
            admin: None,
            rt,
        }
    }

    fn external(
        name: &'static str,
        storage: &str,
        bootstrap: &str,
        pid: Option<u32>,
        partitions: i32,
        rt: tokio::runtime::Handle,
    ) -> Broker {
        let admin = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .expect("admin client");
        Broker {
            name,
            description: format!(
                "{name} at {bootstrap} ({storage}, separate process); topics of {partitions} partitions"
            ),
            bootstrap: bootstrap.to_owned(),
            partitions,
            mock: None,
            pid,
            admin: Some(admin),
            probe: probe(bootstrap),
            rt,
        }
    }

    /// The client settings of every case: the host's defaults plus
    /// `KWASM_BENCH_KAFKA_PROPERTIES` (`name=value,...`), for experiments.
    fn kafka(&self) -> KafkaConfig {
        let properties = std::env::var("KWASM_BENCH_KAFKA_PROPERTIES")
            .unwrap_or_default()
            .split(',')
            .filter(|kv| !kv.trim().is_empty())
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.trim().to_owned(), v.trim().to_owned()),
                None => panic!("KWASM_BENCH_KAFKA_PROPERTIES: `{kv}` is not name=value"),
            })
            .collect::<BTreeMap<_, _>>();
        KafkaConfig {
            brokers: self.bootstrap.clone(),
            properties,
            ..KafkaConfig::default()
        }
    }

    fn create_topic(&self, name: &str, partitions: i32) -> Res<()> {
        if let Some(holder) = &self.mock {
            let mock = holder.client().mock_cluster().ok_or("mock cluster gone")?;
            mock.create_topic(name, partitions, 1)
                .map_err(|e| format!("create {name}: {e}"))?;
        } else if let Some(admin) = &self.admin {
            let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            let results = self
                .rt
                .block_on(admin.create_topics([&topic], &opts))
                .map_err(|e| format!("create {name}: {e}"))?;
            for r in results {
                r.map_err(|(t, code)| format!("create {t}: {code}"))?;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let md = self
                .probe
                .fetch_metadata(Some(name), Duration::from_secs(5));
            if let Ok(md) = md
                && md.topics().first().is_some_and(|t| {
                    t.error().is_none() && t.partitions().len() == partitions as usize
                })
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "topic {name} did not appear with {partitions} partitions"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Frees an external broker's memory; the mock cluster cannot delete.
    fn delete_topics(&self, names: &[&str]) {
        if let Some(admin) = &self.admin {
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            let _ = self.rt.block_on(admin.delete_topics(names, &opts));
        }
    }

    /// (sum of low watermarks, sum of high watermarks) of `topic`.
    fn watermarks(&self, topic: &str, partitions: i32) -> Res<(i64, i64)> {
        let (mut low, mut high) = (0, 0);
        for p in 0..partitions {
            let (l, h) = self
                .probe
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .map_err(|e| format!("watermarks of {topic}/{p}: {e}"))?;
            low += l;
            high += h;
        }
        Ok((low, high))
    }

    /// CPU seconds the external broker process has used so far.
    fn broker_cpu(&self) -> Option<f64> {
        kstreams::process_cpu_seconds(self.pid?)
    }
}

fn probe(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("probe consumer")
}

// ---------------------------------------------------------------------------
// The suite

struct Bench<'a> {
    opts: &'a Options,
    broker: &'a Broker,
    plugins: &'a Plugins,
    rt: tokio::runtime::Handle,
}

/// What processes the input in a case.
#[derive(Clone)]
enum Processor {
    /// Nothing: the latency reader reads the input topic (the harness's floor).
    Direct,
    /// (a): outputs keyed like kwasm's (the host's partitioner on the key).
    Native,
    Kwasm {
        plugin: Arc<CompiledPlugin>,
        config: Vec<(String, String)>,
        batch: usize,
        delivery: Delivery,
        /// Exactly-once: `transaction.commit_interval_ms` (`None`: the
        /// default, 100 ms).
        commit_interval_ms: Option<u64>,
    },
    /// (d), (e): the Kafka Streams peer, a separate JVM process.
    KStreams {
        classpath: String,
        mode: kstreams::Mode,
        /// `processing.guarantee=exactly_once_v2` (with Kafka Streams' own
        /// 100 ms commit interval for it) instead of at-least-once.
        exactly_once: bool,
    },
}

impl Processor {
    fn kwasm(plugin: &Arc<CompiledPlugin>, config: &[(&str, &str)], batch: usize) -> Processor {
        Processor::Kwasm {
            plugin: plugin.clone(),
            config: config
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            batch,
            delivery: Delivery::AtLeastOnce,
            commit_interval_ms: None,
        }
    }

    /// [`kwasm`](Self::kwasm) under `delivery = "exactly-once"`, with
    /// transactions of `commit_interval_ms` (`None`: the default).
    fn kwasm_exactly_once(
        plugin: &Arc<CompiledPlugin>,
        batch: usize,
        commit_interval_ms: Option<u64>,
    ) -> Processor {
        match Processor::kwasm(plugin, &[], batch) {
            Processor::Kwasm {
                plugin,
                config,
                batch,
                ..
            } => Processor::Kwasm {
                plugin,
                config,
                batch,
                delivery: Delivery::ExactlyOnce,
                commit_interval_ms,
            },
            other => other,
        }
    }
}

#[derive(Clone, Copy)]
struct Measured {
    messages: u64,
    secs: f64,
    cpu_secs: f64,
    broker_cpu_secs: Option<f64>,
    /// The Kafka Streams peer's JVM (not in `cpu_secs`).
    peer_cpu_secs: Option<f64>,
    /// Voluntary and involuntary context switches of this process.
    switches: (i64, i64),
}

impl Measured {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.secs
    }
    /// The bench process's CPU plus the peer's, if the case has one: all
    /// the CPU that did the work (and the harness's watermark probe).
    fn cpu_per_million(&self) -> f64 {
        (self.cpu_secs + self.peer_cpu_secs.unwrap_or(0.0)) * 1e6 / self.messages as f64
    }
}

struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    samples: usize,
}

/// How the input topic's records are spread over its partitions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Layout {
    /// Partitioned by key with the host's partitioner, as a keyed topic is
    /// when its producers use the same (Java-compatible) partitioner: a
    /// keyed output then lands on the input's partition number.
    Keyed,
    /// Round-robin regardless of the key: every fetched batch scatters over
    /// all output partitions (many small produce batches).
    Spread,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Keyed => "keyed",
            Layout::Spread => "spread",
        }
    }
}

/// One line of a broker's table.
struct Row {
    label: &'static str,
    value_bytes: usize,
    /// Rows compare with the baseline of the same value size and layout.
    layout: Layout,
    result: Res<Measured>,
    /// Against the baseline, round by round (each round runs the cases
    /// back to back, so a pair shares the machine's state of the moment).
    ratios: Vec<f64>,
    latency: Option<Res<Latency>>,
    baseline: bool,
}

impl Bench<'_> {
    /// Runs every section on this broker, prints its tables, returns the
    /// number of failed cases.
    fn run_suite(&self) -> usize {
        let b = self.broker;
        let o = self.opts;
        println!("## {}: {}", b.name, b.description);
        println!();
        let mut rows: Vec<Row> = Vec::new();
        let mut sweep: Vec<(usize, Res<Measured>)> = Vec::new();
        let mut cases = vec![
            (
                "(a) native passthrough",
                "native",
                Layout::Keyed,
                Processor::Native,
            ),
            (
                "(b) kwasm passthrough",
                "passthrough",
                Layout::Keyed,
                Processor::kwasm(&self.plugins.passthrough, &[], DEFAULT_BATCH),
            ),
            (
                "(b\") kwasm passthrough, exactly-once",
                "passthrough-eos",
                Layout::Keyed,
                Processor::kwasm_exactly_once(&self.plugins.passthrough, DEFAULT_BATCH, None),
            ),
            (
                "(b\"') kwasm passthrough, exactly-once, 1 s transactions",
                "passthrough-eos-1s",
                Layout::Keyed,
                Processor::kwasm_exactly_once(&self.plugins.passthrough, DEFAULT_BATCH, Some(1000)),
            ),
            (
                "(c) kwasm transform",
                "transform",
                Layout::Keyed,
                Processor::kwasm(&self.plugins.transform, &TRANSFORM_CONFIG, DEFAULT_BATCH),
            ),
        ];
        if let Some(redpanda) = &self.plugins.redpanda {
            cases.push((
                "(f) Redpanda identity transform",
                "redpanda",
                Layout::Keyed,
                Processor::kwasm(redpanda, &[], DEFAULT_BATCH),
            ));
        } else if o.case("redpanda") {
            println!("(case redpanda skipped: KWASM_TRANSFORM_DIR is unset)");
        }
        // The peer runs on Apache Kafka only: the mock cluster lives inside
        // this process, and nisshi is not what Kafka Streams users run.
        if b.name == "kafka"
            && (o.case("kstreams") || o.case("kstreams-eos") || o.case("kstreams-transform"))
        {
            match std::env::var(kstreams::CLASSPATH_VAR) {
                Ok(classpath) => {
                    cases.push((
                        "(d) Kafka Streams passthrough",
                        "kstreams",
                        Layout::Keyed,
                        Processor::KStreams {
                            classpath: classpath.clone(),
                            mode: kstreams::Mode::Passthrough,
                            exactly_once: false,
                        },
                    ));
                    cases.push((
                        "(d\") Kafka Streams passthrough, exactly_once_v2",
                        "kstreams-eos",
                        Layout::Keyed,
                        Processor::KStreams {
                            classpath: classpath.clone(),
                            mode: kstreams::Mode::Passthrough,
                            exactly_once: true,
                        },
                    ));
                    cases.push((
                        "(e) Kafka Streams transform",
                        "kstreams-transform",
                        Layout::Keyed,
                        Processor::KStreams {
                            classpath,
                            mode: kstreams::Mode::Transform,
                            exactly_once: false,
                        },
                    ));
                }
                Err(_) => println!(
                    "(Kafka Streams cases skipped: {} is unset; scripts/bench-pipeline builds the peer and sets it)",
                    kstreams::CLASSPATH_VAR
                ),
            }
        }
        cases.extend([
            (
                "(a') native, input spread round-robin",
                "native-spread",
                Layout::Spread,
                Processor::Native,
            ),
            (
                "(b') kwasm passthrough, input spread round-robin",
                "passthrough-spread",
                Layout::Spread,
                Processor::kwasm(&self.plugins.passthrough, &[], DEFAULT_BATCH),
            ),
        ]);
        // Exactly-once needs a broker with transactions: the mock cluster
        // accepts the calls and implements none of their semantics.
        if b.name != "kafka" {
            cases.retain(|c| !c.1.starts_with("passthrough-eos"));
        }
        let mut sizes = Vec::new();
        if o.section("throughput") || o.section("sweep") {
            sizes.push((100, o.messages));
        }
        if o.section("large") {
            sizes.push((1024, o.large_messages));
        }
        for (value_bytes, n) in sizes {
            let throughput = value_bytes != 100 || o.section("throughput");
            // The spread layout is a 100-byte comparison only.
            let selected: Vec<_> = cases
                .iter()
                .filter(|(_, case, layout, _)| {
                    throughput && o.case(case) && (*layout == Layout::Keyed || value_bytes == 100)
                })
                .collect();
            let sweeping = value_bytes == 100 && o.section("sweep") && o.case("passthrough");
            let mut inputs: Vec<(Layout, String)> = Vec::new();
            for layout in [Layout::Keyed, Layout::Spread] {
                let needed =
                    selected.iter().any(|c| c.2 == layout) || (layout == Layout::Keyed && sweeping);
                if !needed {
                    continue;
                }
                let input = unique(&format!("in-{value_bytes}-{}", layout.name()));
                if let Err(e) = self.prepare_input(&input, n, value_bytes, layout) {
                    eprintln!("[bench] {}: cannot prepare input: {e}", b.name);
                    return 1;
                }
                inputs.push((layout, input));
            }
            let input_of = |layout: Layout| -> &str {
                &inputs
                    .iter()
                    .find(|(l, _)| *l == layout)
                    .expect("input prepared")
                    .1
            };
            // The cases take turns, `repeat` rounds, and each keeps its best
            // round: other work on a shared machine only ever slows a run.
            // Every round's rate is kept too, for the per-round ratios.
            let mut best: Vec<Option<Res<Measured>>> = selected.iter().map(|_| None).collect();
            let mut rounds: Vec<Vec<Option<f64>>> = selected.iter().map(|_| Vec::new()).collect();
            for _ in 0..o.repeat {
                for (((label, _, layout, processor), slot), rates) in
                    selected.iter().zip(&mut best).zip(&mut rounds)
                {
                    let result = self.throughput(processor, input_of(*layout), n as u64, None);
                    report_progress(b.name, label, value_bytes, &result);
                    rates.push(result.as_ref().ok().map(Measured::rate));
                    *slot = match (slot.take(), result) {
                        (Some(Ok(old)), Ok(new)) => {
                            Some(Ok(if new.rate() > old.rate() { new } else { old }))
                        }
                        (Some(Ok(old)), Err(_)) => Some(Ok(old)),
                        (_, result) => Some(result),
                    };
                }
            }
            // Per round, each case against the baseline run just before it.
            let round_ratios = |i: usize| -> Vec<f64> {
                let layout = selected[i].2;
                let Some(base) = selected
                    .iter()
                    .position(|c| c.2 == layout && matches!(c.3, Processor::Native))
                else {
                    return Vec::new();
                };
                rounds[i]
                    .iter()
                    .zip(&rounds[base])
                    .filter_map(|(r, b)| Some((*r)? / (*b)?))
                    .collect()
            };
            let ratios: Vec<Vec<f64>> = (0..selected.len()).map(round_ratios).collect();
            for (((label, case, layout, processor), result), ratios) in
                selected.into_iter().zip(best).zip(ratios)
            {
                let result = result.unwrap_or_else(|| Err("not run".into()));
                if value_bytes == 100
                    && *case == "passthrough"
                    && let Ok(m) = &result
                {
                    sweep.push((DEFAULT_BATCH, Ok(*m)));
                }
                rows.push(Row {
                    label,
                    value_bytes,
                    layout: *layout,
                    result,
                    ratios,
                    latency: None,
                    baseline: matches!(processor, Processor::Native),
                });
            }
            if sweeping {
                for batch in SWEEP {
                    if sweep.iter().any(|(s, _)| *s == batch) {
                        continue;
                    }
                    let n = if batch == 1 { o.batch1_messages } else { n } as u64;
                    let processor = Processor::kwasm(&self.plugins.passthrough, &[], batch);
                    let result = self.throughput(
                        &processor,
                        input_of(Layout::Keyed),
                        n,
                        Some(SWEEP_TIME_CAP),
                    );
                    report_progress(
                        b.name,
                        &format!("sweep batch {batch}"),
                        value_bytes,
                        &result,
                    );
                    sweep.push((batch, result));
                }
                sweep.sort_by_key(|(s, _)| *s);
            }
            let names: Vec<&str> = inputs.iter().map(|(_, t)| t.as_str()).collect();
            b.delete_topics(&names);
        }
        if o.section("latency") {
            let direct = (
                "(0) no processing (reader on the input)",
                "direct",
                Layout::Keyed,
                Processor::Direct,
            );
            for (label, case, layout, processor) in std::iter::once(&direct).chain(&cases) {
                if !o.case(case) || *layout != Layout::Keyed {
                    continue;
                }
                let lat = self.latency(processor);
                match &lat {
                    Ok(l) => eprintln!(
                        "[bench] {}: latency {label}: p50 {:.1} ms, p99 {:.1} ms",
                        b.name, l.p50_ms, l.p99_ms
                    ),
                    Err(e) => eprintln!("[bench] {}: latency {label}: FAILED: {e}", b.name),
                }
                match rows
                    .iter_mut()
                    .find(|r| r.label == *label && r.value_bytes == 100)
                {
                    Some(r) => r.latency = Some(lat),
                    None => rows.push(Row {
                        label,
                        value_bytes: 100,
                        layout: Layout::Keyed,
                        result: Err("not run".into()),
                        ratios: Vec::new(),
                        latency: Some(lat),
                        baseline: *case == "native",
                    }),
                }
            }
        }
        print_table(b, &rows, &sweep, o);
        println!("load average at end: {}", loadavg());
        println!();
        rows.iter()
            .filter(|r| {
                r.result.as_ref().is_err_and(|e| e != "not run")
                    || r.latency.as_ref().is_some_and(|l| l.is_err())
            })
            .count()
            + sweep.iter().filter(|(_, r)| r.is_err()).count()
    }

    /// Creates `topic` and fills it with `n` JSON values of `value_bytes`
    /// laid out as `layout` says; checks the broker kept them all.
    fn prepare_input(&self, topic: &str, n: usize, value_bytes: usize, layout: Layout) -> Res<()> {
        let b = self.broker;
        b.create_topic(topic, b.partitions)?;
        let started = Instant::now();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &b.bootstrap)
            .set("partitioner", kwasm_host::kafka::PARTITIONER)
            .set("linger.ms", "20")
            .set("batch.num.messages", "10000")
            .set("batch.size", "1000000")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "2097151")
            .set("acks", "1")
            .set("enable.idempotence", "false")
            .create()
            .map_err(|e| e.to_string())?;
        let mut value = Vec::with_capacity(value_bytes);
        for i in 0..n {
            let key = format!("k{i:09}");
            json_value(&mut value, i, value_bytes);
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
                .key(key.as_bytes())
                .payload(value.as_slice());
            if layout == Layout::Spread {
                record = record.partition(i as i32 % b.partitions);
            }
            send_retrying(&producer, record, Duration::from_millis(5))
                .map_err(|e| format!("produce input: {e}"))?;
            if i % 1024 == 0 {
                producer.poll(Duration::ZERO);
            }
        }
        producer
            .flush(Duration::from_secs(120))
            .map_err(|e| format!("flush input: {e}"))?;
        let probe_started = Instant::now();
        let (low, high) = b.watermarks(topic, b.partitions)?;
        let probe_ms = probe_started.elapsed().as_secs_f64() * 1e3;
        if low != 0 || high != n as i64 {
            return Err(format!(
                "input {topic} holds offsets {low}..{high}, expected 0..{n}: the broker dropped data \
                 (the mock cluster keeps about 5 MiB per partition; use fewer messages)"
            ));
        }
        eprintln!(
            "[bench] {}: input {topic} ({layout:?}): {n} x {value_bytes} B in {:.1} s (a watermark probe of all partitions: {probe_ms:.1} ms)",
            b.name,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Runs `processor` over `input` until `n` outputs exist, or for
    /// `time_cap` if given (then the rate is what it reached).
    fn throughput(
        &self,
        processor: &Processor,
        input: &str,
        n: u64,
        time_cap: Option<Duration>,
    ) -> Res<Measured> {
        let b = self.broker;
        let output = unique("out");
        b.create_topic(&output, b.partitions)?;
        let running = self.start(processor, input, &output, b.partitions)?;
        let result = self.measure(&output, n, &running, time_cap);
        running.stop();
        b.delete_topics(&[&output]);
        result
    }

    fn start(
        &self,
        processor: &Processor,
        input: &str,
        output: &str,
        partitions: i32,
    ) -> Res<Running> {
        let b = self.broker;
        let group = unique("group");
        Ok(match processor {
            Processor::Direct => Running::Direct,
            Processor::Native => Running::Native(NativeRun::start(
                b.kafka(),
                group,
                input,
                output,
                partitions,
            )?),
            Processor::Kwasm {
                plugin,
                config,
                batch,
                delivery,
                commit_interval_ms,
            } => {
                let host = HostConfig {
                    id: unique("bench-host"),
                    ..HostConfig::default()
                };
                let kafka = b.kafka();
                let producer = OutputProducer::new(&producer_config(&kafka, &host.id))
                    .map_err(|e| e.to_string())?;
                let deps = PipelineDeps {
                    permits: Arc::new(tokio::sync::Semaphore::new(host.workers)),
                    host,
                    kafka,
                    producer: producer.clone(),
                    runtime: self.rt.clone(),
                    control: ControlPlane::default(),
                    cancel: Default::default(),
                };
                let name = unique("bench");
                let spec = PipelineSpec {
                    plugin: format!("{}.wasm", plugin.name()),
                    config: config.iter().cloned().collect(),
                    inputs: vec![input.to_owned()],
                    input_regex: None,
                    output: output.to_owned(),
                    group_id: Some(group),
                    dead_letter_topic: Some(format!("{name}.dlq")),
                    retry: RetryPolicy::default(),
                    batch: BatchPolicy {
                        max_messages: *batch,
                        ..BatchPolicy::default()
                    },
                    limits: None,
                    delivery: *delivery,
                    transaction: TransactionPolicy {
                        commit_interval_ms: commit_interval_ms
                            .unwrap_or(TransactionPolicy::default().commit_interval_ms),
                        ..TransactionPolicy::default()
                    },
                    name: name.clone(),
                    ..PipelineSpec::default()
                };
                let deployment = Deployment {
                    plugin: plugin.clone(),
                    version: None,
                    config: config.clone(),
                    limits: Limits::default(),
                    // A Redpanda transform's REDPANDA_OUTPUT_TOPIC_0.
                    outputs: vec![output.to_owned()],
                };
                let pipeline =
                    Pipeline::start(spec, deployment, &deps).map_err(|e| e.to_string())?;
                Running::Kwasm {
                    status: pipeline.status().clone(),
                    pipeline,
                    producer,
                    name,
                }
            }
            Processor::KStreams {
                classpath,
                mode,
                exactly_once,
            } => {
                let config: Vec<(String, String)> = TRANSFORM_CONFIG
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect();
                let args = kstreams::peer_args(
                    &b.bootstrap,
                    input,
                    output,
                    &group,
                    *mode,
                    *exactly_once,
                    &config,
                );
                Running::KStreams(kstreams::PeerRun::start(classpath, &group, args)?)
            }
        })
    }

    /// Waits for the first fetch, then for `n` records on `output`.
    fn measure(
        &self,
        output: &str,
        n: u64,
        running: &Running,
        time_cap: Option<Duration>,
    ) -> Res<Measured> {
        let b = self.broker;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !running.started() {
            if let Some(why) = running.failure() {
                return Err(why);
            }
            if Instant::now() > deadline {
                return Err("nothing fetched within 60 s (group join or fetch stalled)".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        perf_control("enable");
        let t0 = Instant::now();
        let cpu0 = cpu_seconds();
        let sw0 = context_switches();
        let bcpu0 = b.broker_cpu();
        let pcpu0 = running.peer_cpu();
        // Generous: 5k msg/s at the very least, plus a minute.
        let deadline = t0 + Duration::from_secs(60 + n / 5_000);
        loop {
            let (_, high) = b.watermarks(output, b.partitions)?;
            let capped = time_cap.is_some_and(|cap| t0.elapsed() >= cap) && high > 0;
            if high as u64 >= n || capped {
                let n = n.min(high as u64);
                let secs = t0.elapsed().as_secs_f64();
                let cpu_secs = cpu_seconds() - cpu0;
                let sw = context_switches();
                perf_control("disable");
                let broker_cpu_secs = b.broker_cpu().zip(bcpu0).map(|(a, b)| a - b);
                let peer_cpu_secs = running.peer_cpu().zip(pcpu0).map(|(a, b)| a - b);
                return Ok(Measured {
                    messages: n,
                    secs,
                    cpu_secs,
                    broker_cpu_secs,
                    peer_cpu_secs,
                    switches: (sw.0 - sw0.0, sw.1 - sw0.1),
                });
            }
            if Instant::now() > deadline {
                perf_control("disable");
                return Err(format!(
                    "only {high} of {n} outputs after {:.0} s",
                    t0.elapsed().as_secs_f64()
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// End-to-end latency at a fixed rate well below saturation.
    fn latency(&self, processor: &Processor) -> Res<Latency> {
        let b = self.broker;
        let o = self.opts;
        let (input, output) = (unique("lat-in"), unique("lat-out"));
        b.create_topic(&input, LATENCY_PARTITIONS)?;
        b.create_topic(&output, LATENCY_PARTITIONS)?;
        let running = self.start(processor, &input, &output, LATENCY_PARTITIONS)?;
        let result = (|| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while running.assigned() < LATENCY_PARTITIONS as usize {
                if Instant::now() > deadline {
                    return Err(format!(
                        "only {} of {} partitions assigned after 60 s",
                        running.assigned(),
                        LATENCY_PARTITIONS
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let read_from = if matches!(running, Running::Direct) {
                &input
            } else {
                &output
            };
            let reader = LatencyReader::start(&b.bootstrap, read_from, LATENCY_PARTITIONS)?;
            std::thread::sleep(Duration::from_millis(500));
            let sent = self.produce_paced(&input, o.rate, Duration::from_secs(o.latency_secs))?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while reader.received() < sent.count && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let samples = reader.stop();
            if (samples.len() as u64) < sent.count {
                return Err(format!(
                    "{} of {} records arrived within 30 s",
                    samples.len(),
                    sent.count
                ));
            }
            if std::env::var_os("KWASM_BENCH_DEBUG").is_some() {
                let mut by_time: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
                for (s, l) in &samples {
                    by_time
                        .entry((s - sent.start_us) / 250_000)
                        .or_default()
                        .push(*l);
                }
                for (slot, mut v) in by_time {
                    v.sort_unstable();
                    eprintln!(
                        "[debug] t={:.2}s n={} p50={}us max={}us",
                        slot as f64 / 4.0,
                        v.len(),
                        v[v.len() / 2],
                        v[v.len() - 1]
                    );
                }
            }
            // The first half second warms up connections and fetch sessions.
            let warm = sent.start_us + 500_000;
            let mut lat: Vec<u64> = samples
                .iter()
                .filter(|(s, _)| *s >= warm)
                .map(|(_, l)| *l)
                .collect();
            lat.sort_unstable();
            if lat.is_empty() {
                return Err("no samples".into());
            }
            let pct = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
            Ok(Latency {
                p50_ms: pct(0.50),
                p99_ms: pct(0.99),
                samples: lat.len(),
            })
        })();
        running.stop();
        b.delete_topics(&[&input, &output]);
        result
    }

    /// Produces 100-byte JSON values at `rate` for `duration`, each stamped
    /// with its send time.
    fn produce_paced(&self, topic: &str, rate: u64, duration: Duration) -> Res<Paced> {
        let b = self.broker;
        let linger = std::env::var("KWASM_BENCH_LATENCY_LINGER_MS").unwrap_or_else(|_| "5".into());
        let producer: BaseProducer<AckTimes> = ClientConfig::new()
            .set("bootstrap.servers", &b.bootstrap)
            .set("linger.ms", &linger)
            .set("acks", "1")
            .set("enable.idempotence", "false")
            .create_with_context(AckTimes::default())
            .map_err(|e| e.to_string())?;
        let start = Instant::now();
        let start_us = now_us();
        let mut value = Vec::new();
        let mut sent: u64 = 0;
        while start.elapsed() < duration {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                json_value(&mut value, sent as usize, 100);
                let key = format!("k{sent:09}");
                let stamp = now_us().to_le_bytes();
                let headers = OwnedHeaders::new().insert(Header {
                    key: SENT_HEADER,
                    value: Some(&stamp[..]),
                });
                let record: BaseRecord<'_, [u8], [u8], usize> =
                    BaseRecord::with_opaque_to(topic, now_us() as usize)
                        .partition((sent % LATENCY_PARTITIONS as u64) as i32)
                        .key(key.as_bytes())
                        .payload(value.as_slice())
                        .headers(headers);
                producer
                    .send(record)
                    .map_err(|(e, _)| format!("produce: {e}"))?;
                sent += 1;
            }
            producer.poll(Duration::ZERO);
            std::thread::sleep(Duration::from_micros(500));
        }
        producer
            .flush(Duration::from_secs(30))
            .map_err(|e| format!("flush: {e}"))?;
        if std::env::var_os("KWASM_BENCH_DEBUG").is_some() {
            let acks = producer
                .context()
                .samples
                .lock()
                .map(|v| v.clone())
                .unwrap_or_default();
            let mut by_time: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
            for (s, l) in &acks {
                by_time
                    .entry((s - start_us) / 250_000)
                    .or_default()
                    .push(*l);
            }
            for (slot, mut v) in by_time {
                v.sort_unstable();
                eprintln!(
                    "[debug] produce ack t={:.2}s n={} p50={}us max={}us",
                    slot as f64 / 4.0,
                    v.len(),
                    v[v.len() / 2],
                    v[v.len() - 1]
                );
            }
        }
        Ok(Paced {
            count: sent,
            start_us,
        })
    }
}

/// Send-to-acknowledgement times of the load generator's records.
#[derive(Default)]
struct AckTimes {
    samples: std::sync::Mutex<Vec<(u64, u64)>>,
}

impl ClientContext for AckTimes {}

impl ProducerContext for AckTimes {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_us: usize) {
        if result.is_ok()
            && let Ok(mut v) = self.samples.lock()
        {
            v.push((sent_us as u64, now_us().saturating_sub(sent_us as u64)));
        }
    }
}

struct Paced {
    count: u64,
    start_us: u64,
}

fn report_progress(broker: &str, label: &str, value_bytes: usize, r: &Res<Measured>) {
    match r {
        Ok(m) => eprintln!(
            "[bench] {broker}: {label} ({value_bytes} B): {} msgs in {:.2} s = {:.0} msg/s, {:.2} CPU s/1M, context switches {} voluntary, {} involuntary",
            m.messages,
            m.secs,
            m.rate(),
            m.cpu_per_million(),
            m.switches.0,
            m.switches.1
        ),
        Err(e) => eprintln!("[bench] {broker}: {label} ({value_bytes} B): FAILED: {e}"),
    }
}

fn print_table(b: &Broker, rows: &[Row], sweep: &[(usize, Res<Measured>)], o: &Options) {
    let broker_col = b.pid.is_some();
    let peer_col = rows
        .iter()
        .any(|r| r.result.as_ref().is_ok_and(|m| m.peer_cpu_secs.is_some()));
    let mut out = String::new();
    let _ = write!(
        out,
        "| case | value | messages | msg/s | MB/s (values) | CPU s / 1M msgs ({}) |",
        if peer_col {
            "bench process + peer JVM"
        } else {
            "bench process"
        }
    );
    if peer_col {
        let _ = write!(out, " of which peer JVM |");
    }
    if broker_col {
        let _ = write!(out, " broker CPU s / 1M |");
    }
    let _ = writeln!(
        out,
        " p50 ms | p99 ms | vs (a), best | vs (a), per round (median) |"
    );
    let _ = write!(out, "|---|---:|---:|---:|---:|---:|");
    if peer_col {
        let _ = write!(out, "---:|");
    }
    if broker_col {
        let _ = write!(out, "---:|");
    }
    let _ = writeln!(out, "---:|---:|---:|---|");
    for r in rows {
        let baseline = rows
            .iter()
            .find(|x| x.baseline && x.value_bytes == r.value_bytes && x.layout == r.layout)
            .and_then(|x| x.result.as_ref().ok())
            .map(Measured::rate);
        let _ = write!(out, "| {} | {} B |", r.label, r.value_bytes);
        match &r.result {
            Ok(m) => {
                let _ = write!(
                    out,
                    " {} | {:.0} | {:.1} | {:.2} |",
                    m.messages,
                    m.rate(),
                    m.rate() * r.value_bytes as f64 / 1e6,
                    m.cpu_per_million()
                );
                if peer_col {
                    match m.peer_cpu_secs {
                        Some(c) => {
                            let _ = write!(out, " {:.2} |", c * 1e6 / m.messages as f64);
                        }
                        None => {
                            let _ = write!(out, " - |");
                        }
                    }
                }
                if broker_col {
                    match m.broker_cpu_secs {
                        Some(c) => {
                            let _ = write!(out, " {:.2} |", c * 1e6 / m.messages as f64);
                        }
                        None => {
                            let _ = write!(out, " - |");
                        }
                    }
                }
            }
            Err(e) => {
                let _ = write!(
                    out,
                    " {} | | | |",
                    if e == "not run" { "-" } else { "FAILED" }
                );
                if peer_col {
                    let _ = write!(out, " |");
                }
                if broker_col {
                    let _ = write!(out, " |");
                }
            }
        }
        match &r.latency {
            Some(Ok(l)) => {
                let _ = write!(out, " {:.1} | {:.1} |", l.p50_ms, l.p99_ms);
            }
            Some(Err(_)) => {
                let _ = write!(out, " FAILED | FAILED |");
            }
            None => {
                let _ = write!(out, " - | - |");
            }
        }
        match (&r.result, baseline) {
            (Ok(m), Some(base)) if !r.baseline => {
                let _ = write!(out, " {:.2} |", m.rate() / base);
            }
            (Ok(_), Some(_)) => {
                let _ = write!(out, " 1.00 |");
            }
            _ => {
                let _ = write!(out, " - |");
            }
        }
        if r.baseline || r.ratios.is_empty() {
            let _ = writeln!(out, " - |");
        } else {
            let each: Vec<String> = r.ratios.iter().map(|x| format!("{x:.2}")).collect();
            let _ = writeln!(out, " {} ({:.2}) |", each.join(" "), median(&r.ratios));
        }
    }
    print!("{out}");
    if rows.iter().any(|r| r.latency.is_some()) {
        let n = rows
            .iter()
            .find_map(|r| r.latency.as_ref()?.as_ref().ok().map(|l| l.samples))
            .unwrap_or(0);
        println!();
        println!(
            "Latency: {} msg/s of 100 B for {} s into fresh topics, first 0.5 s dropped ({n} samples), send to output fetched.",
            o.rate, o.latency_secs
        );
    }
    for r in rows
        .iter()
        .filter(|r| matches!(&r.result, Err(e) if e != "not run"))
    {
        if let Err(e) = &r.result {
            println!("{} ({} B) failed: {e}", r.label, r.value_bytes);
        }
    }
    if !sweep.is_empty() {
        println!();
        println!(
            "Batch size sweep, kwasm passthrough, 100 B (batch.max_messages; max_wait_ms 20):"
        );
        println!();
        println!("| batch | messages | msg/s | CPU s / 1M msgs |");
        println!("|---:|---:|---:|---:|");
        for (batch, r) in sweep {
            match r {
                Ok(m) => println!(
                    "| {batch} | {} | {:.0} | {:.2} |",
                    m.messages,
                    m.rate(),
                    m.cpu_per_million()
                ),
                Err(e) => println!("| {batch} | FAILED: {e} | | |"),
            }
        }
    }
    println!();
}

// ---------------------------------------------------------------------------
// A running case

enum Running {
    Direct,
    Native(NativeRun),
    Kwasm {
        pipeline: Pipeline,
        producer: OutputProducer,
        status: Arc<PipelineStatus>,
        /// The pipeline's name: its metrics' `pipeline` label.
        name: String,
    },
    KStreams(kstreams::PeerRun),
}

impl Running {
    /// Whether the consumer has fetched anything yet.
    fn started(&self) -> bool {
        match self {
            Running::Direct => true,
            Running::Native(n) => n.shared.started.load(Ordering::Acquire),
            Running::Kwasm { status, .. } => {
                status.partitions().iter().any(|p| p.position.is_some())
            }
            Running::KStreams(peer) => peer.started(),
        }
    }

    /// Why a case that runs in another process can no longer make progress.
    fn failure(&self) -> Option<String> {
        match self {
            Running::KStreams(peer) => peer.failure(),
            _ => None,
        }
    }

    /// CPU seconds of the case's own process, when it is not this one.
    fn peer_cpu(&self) -> Option<f64> {
        match self {
            Running::KStreams(peer) => peer.cpu_seconds(),
            _ => None,
        }
    }

    fn assigned(&self) -> usize {
        match self {
            Running::Direct => usize::MAX,
            Running::Native(n) => n.shared.assigned.load(Ordering::Acquire),
            Running::Kwasm { status, .. } => status.partitions().len(),
            // Kafka Streams reports RUNNING once every partition is assigned.
            Running::KStreams(peer) => {
                if peer.running() {
                    usize::MAX
                } else {
                    0
                }
            }
        }
    }

    fn stop(self) {
        match self {
            Running::Direct => {}
            Running::Native(n) => n.stop(),
            Running::Kwasm {
                pipeline,
                producer,
                name,
                ..
            } => {
                pipeline.join();
                producer.flush(Duration::from_secs(30));
                print_transactions("exactly-once run ending now", &name);
            }
            Running::KStreams(peer) => peer.stop(),
        }
    }
}

// ---------------------------------------------------------------------------
// (a) The native passthrough

/// Shared between the native loop and the harness.
#[derive(Default)]
struct NativeShared {
    stop: AtomicBool,
    started: AtomicBool,
    assigned: AtomicUsize,
}

struct NativeRun {
    shared: Arc<NativeShared>,
    thread: JoinHandle<()>,
}

impl NativeRun {
    fn start(
        kafka: KafkaConfig,
        group: String,
        input: &str,
        output: &str,
        partitions: i32,
    ) -> Res<NativeRun> {
        let shared = Arc::new(NativeShared::default());
        let consumer: BaseConsumer<NativeConsumerContext> =
            consumer_config(&kafka, &group, "bench-native", None)
                .create_with_context(NativeConsumerContext {
                    shared: shared.clone(),
                })
                .map_err(|e| format!("native consumer: {e}"))?;
        consumer
            .subscribe(&[input])
            .map_err(|e| format!("subscribe: {e}"))?;
        let producer: BaseProducer<NativeDelivery> = producer_config(&kafka, "bench-native")
            .create_with_context(NativeDelivery::new(partitions))
            .map_err(|e| format!("native producer: {e}"))?;
        let (input, output) = (input.to_owned(), output.to_owned());
        let thread = std::thread::Builder::new()
            .name("bench-native".into())
            .spawn({
                let shared = shared.clone();
                move || native_loop(&consumer, &producer, &shared, &input, &output)
            })
            .map_err(|e| e.to_string())?;
        Ok(NativeRun { shared, thread })
    }

    fn stop(self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.thread.join();
    }
}

struct NativeConsumerContext {
    shared: Arc<NativeShared>,
}

impl ClientContext for NativeConsumerContext {}

impl ConsumerContext for NativeConsumerContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.shared
                .assigned
                .fetch_add(tpl.count(), Ordering::AcqRel);
        }
    }
}

/// The native passthrough's commit discipline: per input partition, the
/// offsets sent in order, and how far the acknowledged prefix reaches
/// ("highest contiguous acked"). With keyed output, a partition's records go
/// to many output partitions and their reports come back in any order.
struct NativeDelivery {
    windows: Vec<std::sync::Mutex<AckWindow>>,
}

#[derive(Default)]
struct AckWindow {
    /// (input offset, acknowledged), in offset order.
    pending: std::collections::VecDeque<(i64, bool)>,
    /// One past the acknowledged prefix.
    committable: Option<i64>,
}

impl NativeDelivery {
    fn new(partitions: i32) -> Self {
        NativeDelivery {
            windows: (0..partitions).map(|_| Default::default()).collect(),
        }
    }

    fn window(&self, partition: usize) -> std::sync::MutexGuard<'_, AckWindow> {
        self.windows[partition]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn sent(&self, partition: usize, offset: i64) {
        self.window(partition).pending.push_back((offset, false));
    }

    fn acked(&self, partition: usize, offset: i64) {
        let mut w = self.window(partition);
        if let Ok(i) = w.pending.binary_search_by_key(&offset, |&(o, _)| o) {
            w.pending[i].1 = true;
        }
        while let Some(&(o, true)) = w.pending.front() {
            w.pending.pop_front();
            w.committable = Some(o + 1);
        }
    }

    /// The offset to commit for `partition`. A failed delivery is never
    /// acknowledged, so the prefix stops before it.
    fn committable(&self, partition: usize) -> Option<i64> {
        self.window(partition).committable
    }
}

const OFFSET_BITS: u32 = 40;

fn pack(partition: i32, offset: i64) -> usize {
    ((partition as usize) << OFFSET_BITS) | offset as usize
}

fn unpack(opaque: usize) -> (usize, i64) {
    (
        opaque >> OFFSET_BITS,
        (opaque & ((1 << OFFSET_BITS) - 1)) as i64,
    )
}

impl ClientContext for NativeDelivery {}

impl ProducerContext for NativeDelivery {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (partition, offset) = unpack(opaque);
        match result {
            Ok(_) => self.acked(partition, offset),
            Err((e, _)) => {
                eprintln!("[bench] native: delivery failed for input {partition}/{offset}: {e}")
            }
        }
    }
}

fn native_loop(
    consumer: &BaseConsumer<NativeConsumerContext>,
    producer: &BaseProducer<NativeDelivery>,
    shared: &NativeShared,
    input: &str,
    output: &str,
) {
    let partitions = producer.context().windows.len();
    let mut committed = vec![None; partitions];
    let mut last_commit = Instant::now();
    let mut sent: u64 = 0;
    while !shared.stop.load(Ordering::Acquire) {
        match consumer.poll(Duration::from_millis(5)) {
            Some(Ok(msg)) => {
                shared.started.store(true, Ordering::Release);
                forward(producer, output, &msg);
                sent += 1;
                if sent.is_multiple_of(256) {
                    producer.poll(Duration::ZERO);
                }
            }
            Some(Err(e)) => eprintln!("[bench] native: consume error: {e}"),
            None => {
                producer.poll(Duration::ZERO);
            }
        }
        if last_commit.elapsed() >= Duration::from_secs(1) {
            commit_acked(
                consumer,
                producer.context(),
                input,
                &mut committed,
                CommitMode::Async,
            );
            last_commit = Instant::now();
        }
    }
    let _ = producer.flush(Duration::from_secs(30));
    commit_acked(
        consumer,
        producer.context(),
        input,
        &mut committed,
        CommitMode::Sync,
    );
}

fn forward(producer: &BaseProducer<NativeDelivery>, output: &str, msg: &BorrowedMessage<'_>) {
    let ctx = producer.context();
    let mut record: BaseRecord<'_, [u8], [u8], usize> =
        BaseRecord::with_opaque_to(output, pack(msg.partition(), msg.offset()));
    if let Some(k) = msg.key() {
        record = record.key(k);
    }
    if let Some(v) = msg.payload() {
        record = record.payload(v);
    }
    if let Some(h) = msg.headers() {
        record = record.headers(h.detach());
    }
    if let Some(ts) = msg.timestamp().to_millis() {
        record = record.timestamp(ts);
    }
    // Registered before sending: its report can only come from a later poll,
    // but keep the host's order of events anyway.
    ctx.sent(msg.partition() as usize, msg.offset());
    if let Err(e) = send_retrying(producer, record, Duration::from_millis(1)) {
        // Left unacknowledged in its window: nothing past it commits.
        eprintln!("[bench] native: produce rejected: {e}");
    }
}

/// Sends `record`, serving the producer for `wait` whenever its queue is
/// full; other errors are returned.
fn send_retrying<C: ProducerContext>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, [u8], [u8], C::DeliveryOpaque>,
    wait: Duration,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(wait);
            }
            Err((e, _)) => return Err(e),
        }
    }
}

fn commit_acked(
    consumer: &BaseConsumer<NativeConsumerContext>,
    delivery: &NativeDelivery,
    topic: &str,
    committed: &mut [Option<i64>],
    mode: CommitMode,
) {
    let mut tpl = TopicPartitionList::new();
    for (p, last) in committed.iter_mut().enumerate() {
        if let Some(next) = delivery.committable(p)
            && *last != Some(next)
            && tpl
                .add_partition_offset(topic, p as i32, Offset::Offset(next))
                .is_ok()
        {
            *last = Some(next);
        }
    }
    if tpl.count() > 0 {
        match consumer.commit(&tpl, mode) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => eprintln!("[bench] native: commit failed: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Latency reader

/// Reads every partition of the output topic (no group) and records
/// (sent_us, latency_us) per record.
struct LatencyReader {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    thread: JoinHandle<Vec<(u64, u64)>>,
}

impl LatencyReader {
    fn start(bootstrap: &str, topic: &str, partitions: i32) -> Res<LatencyReader> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("fetch.wait.max.ms", "10")
            .set("fetch.queue.backoff.ms", "10")
            // librdkafka wants a group for assign(); this one never joins.
            .set("group.id", unique("lat-reader"))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| format!("latency reader: {e}"))?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
        consumer.assign(&tpl).map_err(|e| format!("assign: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let thread = std::thread::Builder::new()
            .name("bench-latency".into())
            .spawn({
                let (stop, received) = (stop.clone(), received.clone());
                move || {
                    let mut samples = Vec::new();
                    while !stop.load(Ordering::Acquire) {
                        let Some(Ok(msg)) = consumer.poll(Duration::from_millis(5)) else {
                            continue;
                        };
                        let now = now_us();
                        let sent = msg.headers().and_then(|hs| {
                            hs.iter()
                                .find(|h| h.key == SENT_HEADER)
                                .and_then(|h| h.value?.try_into().ok())
                                .map(u64::from_le_bytes)
                        });
                        if let Some(sent) = sent {
                            samples.push((sent, now.saturating_sub(sent)));
                            received.fetch_add(1, Ordering::Release);
                        }
                    }
                    samples
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(LatencyReader {
            stop,
            received,
            thread,
        })
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    fn stop(self) -> Vec<(u64, u64)> {
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------
// Helpers

/// A JSON object of exactly `size` bytes with a field `a` to rename:
/// `{"id":7,"a":"xxxx…"}`.
fn json_value(buf: &mut Vec<u8>, id: usize, size: usize) {
    buf.clear();
    let _ = write!(VecWriter(buf), "{{\"id\":{id},\"a\":\"");
    let pad = size.saturating_sub(buf.len() + 2);
    buf.resize(buf.len() + pad, b'x');
    buf.extend_from_slice(b"\"}");
}

struct VecWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "bench-{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

/// User plus system CPU time of this process so far.
fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn rusage() -> libc::rusage {
    // SAFETY: getrusage writes into the struct we pass; zeroed is a valid rusage.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    }
}

fn cpu_seconds() -> f64 {
    let usage = rusage();
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn context_switches() -> (i64, i64) {
    let usage = rusage();
    (usage.ru_nvcsw, usage.ru_nivcsw)
}

/// Under `scripts/bench-pipeline --perf`, perf starts with its events
/// disabled and samples only the measured spans: this writes `enable` or
/// `disable` to its control FIFO (`KWASM_BENCH_PERF_CTL`).
fn perf_control(command: &str) {
    use std::io::Write as _;
    static FIFO: OnceLock<Option<std::sync::Mutex<std::fs::File>>> = OnceLock::new();
    let fifo = FIFO.get_or_init(|| {
        let path = std::env::var_os("KWASM_BENCH_PERF_CTL")?;
        let file = std::fs::OpenOptions::new().write(true).open(&path);
        Some(std::sync::Mutex::new(file.unwrap_or_else(|e| {
            panic!("cannot open perf control {path:?}: {e}")
        })))
    });
    if let Some(f) = fifo {
        let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(f, "{command}");
        let _ = f.flush();
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
