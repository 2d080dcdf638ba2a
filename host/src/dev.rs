//! `kwasm dev`: everything on one machine with no Kafka to install.
//!
//! Starts librdkafka's in-process mock cluster (unless `--brokers` names a
//! real one), creates a demo topic, runs the example `redact` pipeline on
//! it, produces sample orders, and serves the admin API, printing what to
//! try next. The mock cluster listens on 127.0.0.1 ports, so other
//! processes (the CLI, kcat) can use it while `kwasm dev` runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::config::{BatchPolicy, Config, HostConfig, KafkaConfig, PipelineSpec, RetryPolicy};

/// Options of `kwasm dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Where the admin API listens.
    pub admin_listen: String,
    /// Folder holding the example plugins' `.wasm` files.
    pub plugin_dir: PathBuf,
    /// Use these brokers instead of starting the mock cluster.
    pub brokers: Option<String>,
    /// Sample orders produced per second.
    pub rate_per_sec: u32,
}

/// Why dev mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// Setup failed, with the reason.
    #[error("{0}")]
    Setup(String),
    /// The host failed.
    #[error(transparent)]
    Serve(#[from] crate::serve::ServeError),
}

const INPUT: &str = "demo.orders";
const OUTPUT: &str = "demo.orders.clean";
const DEAD_LETTERS: &str = "demo.orders.dlq";

/// Runs dev mode until Ctrl-C or SIGTERM.
pub async fn run(opts: DevOptions) -> Result<(), DevError> {
    let setup = |e: &dyn std::fmt::Display| DevError::Setup(e.to_string());
    let plugin = opts.plugin_dir.join("redact.wasm");
    if !plugin.exists() {
        return Err(DevError::Setup(format!(
            "{} not found: build the example plugins first (scripts/run does it)",
            plugin.display()
        )));
    }
    // The mock cluster lives as long as this function: keep it in scope.
    let mock = match &opts.brokers {
        Some(_) => None,
        None => Some(
            MockCluster::new(1)
                .map_err(|e| setup(&format!("cannot start the mock cluster: {e}")))?,
        ),
    };
    let brokers = match (&opts.brokers, &mock) {
        (Some(b), _) => b.clone(),
        (None, Some(m)) => m.bootstrap_servers(),
        (None, None) => unreachable!("a mock cluster is started when no brokers are given"),
    };
    let mut config = dev_config(&opts, &brokers, plugin);
    match &mock {
        // The mock cluster does not answer CreateTopics: use its own API.
        Some(m) => {
            let registry = &config.registry;
            let topics = [(INPUT, 6), (OUTPUT, 6), (DEAD_LETTERS, 1)]
                .into_iter()
                .chain(
                    [
                        &registry.plugins_topic,
                        &registry.pipelines_topic,
                        &registry.members_topic,
                    ]
                    .map(|t| (t.as_str(), 1)),
                );
            for (topic, partitions) in topics {
                m.create_topic(topic, partitions, 1).map_err(|e| {
                    setup(&format!(
                        "cannot create topic `{topic}` on the mock cluster: {e}"
                    ))
                })?;
            }
            config.registry.create_topics = false;
        }
        None => create_topics(&brokers).await.map_err(|e| setup(&e))?,
    }
    spawn_sample_traffic(brokers.clone(), opts.rate_per_sec).map_err(|e| setup(&e))?;
    print_guide(&opts, &brokers);
    crate::serve::serve(config).await?;
    drop(mock);
    Ok(())
}

fn dev_config(opts: &DevOptions, brokers: &str, plugin: PathBuf) -> Config {
    Config {
        host: HostConfig {
            id: "kwasm-dev".into(),
            admin_listen: opts.admin_listen.clone(),
            commit_interval_ms: 500,
            ..HostConfig::default()
        },
        kafka: KafkaConfig {
            brokers: brokers.to_owned(),
            consumer_properties: BTreeMap::from([(
                "session.timeout.ms".to_owned(),
                "6000".to_owned(),
            )]),
            ..KafkaConfig::default()
        },
        limits: Default::default(),
        registry: Default::default(),
        pipelines: vec![PipelineSpec {
            name: "demo".into(),
            plugin: plugin.to_string_lossy().into_owned(),
            config: BTreeMap::from([
                ("fields".to_owned(), "card".to_owned()),
                ("emails".to_owned(), "true".to_owned()),
            ]),
            inputs: vec![INPUT.into()],
            input_regex: None,
            output: OUTPUT.into(),
            group_id: None,
            dead_letter_topic: Some(DEAD_LETTERS.into()),
            retry: RetryPolicy::default(),
            batch: BatchPolicy::default(),
            limits: None,
            ..PipelineSpec::default()
        }],
    }
}

async fn create_topics(brokers: &str) -> Result<(), String> {
    let topics = [(INPUT, 6), (OUTPUT, 6), (DEAD_LETTERS, 1)]
        .map(|(name, partitions)| NewTopic::new(name, partitions, TopicReplication::Fixed(1)));
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", brokers);
    crate::kafka::create_topics(&client, &topics).await
}

/// Produces JSON orders at `rate` per second; every 50th is not JSON, to
/// show the dead-letter topic at work.
fn spawn_sample_traffic(brokers: String, rate: u32) -> Result<(), String> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .create()
        .map_err(|e| format!("cannot create the sample producer: {e}"))?;
    let pause = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    std::thread::Builder::new()
        .name("kwasm-dev-traffic".into())
        .spawn(move || {
            for n in 0u64.. {
                let key = format!("customer-{}", n % 97);
                let value = if n % 50 == 49 {
                    format!("corrupted order {n}")
                } else {
                    serde_json::json!({
                        "order": n,
                        "email": format!("customer{}@example.com", n % 97),
                        "card": "4111 1111 1111 1111",
                        "total": (n % 200) as f64 + 0.99,
                    })
                    .to_string()
                };
                if let Err((e, _)) = producer.send(BaseRecord::to(INPUT).key(&key).payload(&value))
                {
                    tracing::warn!(error = %e, "sample traffic: produce failed");
                }
                producer.poll(Duration::ZERO);
                std::thread::sleep(pause);
            }
            let _ = producer.flush(Duration::from_secs(1));
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the sample traffic thread: {e}"))
}

fn print_guide(opts: &DevOptions, brokers: &str) {
    let url = format!("http://{}", opts.admin_listen);
    println!(
        "\nkwasm dev is running. Dashboard: {url}/ui/\n\
         \n  Kafka (librdkafka mock cluster): {brokers}\
         \n  Pipeline `demo`: {INPUT} -> redact -> {OUTPUT} (dead letters: {DEAD_LETTERS})\
         \n  Sample traffic: {rate} orders/s, every 50th corrupted\
         \n  Admin API: {url}\n\
         \nTry:\
         \n  curl {url}/readyz\
         \n  curl {url}/v1/assignments\
         \n  kwasm status --url {url} --watch\
         \n  kwasm plugin deploy passthrough {dir}/passthrough.wasm --url {url}\
         \n  kwasm pipeline list --url {url}\
         \n  curl {url}/metrics | grep kwasm_\n\
         \nCtrl-C stops it (drains, commits, leaves the group).\n",
        rate = opts.rate_per_sec,
        dir = opts.plugin_dir.display(),
    );
}
