//! Pipelines: one consumer group each. [`Pipeline::start`] spawns the
//! consumer thread (see `consumer`), which spawns one worker per assigned
//! partition (see `worker`).
//!
//! How a record flows: `poll` → appended to its partition's open batch →
//! batch sent to the partition's worker → plugin → outputs handed to the
//! producer, each carrying a token for the input offset → delivery report
//! acknowledges it in the partition's `OffsetTracker` → the consumer thread
//! commits the tracker's committable offset (periodically, on revoke, at
//! shutdown).

mod admission;
mod consumer;
pub mod deployment;
pub mod manager;
mod policy;
mod seams;
mod status;
mod transaction;
mod worker;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_util::sync::CancellationToken;

pub use deployment::{Deployment, DeploymentCell};
pub(crate) use policy::delivery_owes_dead_letter;
pub use status::{PartitionEvent, PartitionState, PartitionStatus, PipelineStatus};

use crate::config::{Delivery, HostConfig, KafkaConfig, PipelineSpec};
use crate::kafka::fetch_queue::FetchQueue;
use crate::kafka::reread::InputReader;
use crate::kafka::{OutputProducer, consumer_config, transactional_producer_config};
use crate::topics::{ControlPlane, OutputPolicy, RegexError};
use consumer::PipelineContext;
use transaction::ExactlyOnce;

/// What every part of one pipeline shares. Immutable but for `status`.
pub(crate) struct PipelineShared {
    spec: PipelineSpec,
    /// Which topics the pipeline's plugin may write.
    outputs: Arc<OutputPolicy>,
    deployment: Arc<DeploymentCell>,
    /// The output producer (the host's, or under exactly-once the
    /// pipeline's own, which the consumer thread replaces when its
    /// transaction state cannot be repaired: workers take a clone when
    /// they start, so a record's send never takes this lock).
    producer: std::sync::RwLock<OutputProducer>,
    /// Exactly-once: how to make that producer again.
    transactional_config: Option<rdkafka::ClientConfig>,
    permits: Arc<tokio::sync::Semaphore>,
    runtime: tokio::runtime::Handle,
    grace: Duration,
    host_id: String,
    status: Arc<PipelineStatus>,
    /// The pipeline's cancellation; every partition worker's is a child.
    cancel: CancellationToken,
    /// Reads rejected messages again for their dead letters.
    reader: Arc<InputReader>,
    /// Under `delivery = "exactly-once"`: the transaction gate and
    /// settings (`producer` is then the pipeline's own transactional one).
    exactly_once: Option<ExactlyOnce>,
}

/// Everything a pipeline needs from the host.
pub struct PipelineDeps {
    /// The host's settings.
    pub host: HostConfig,
    /// Kafka settings.
    pub kafka: KafkaConfig,
    /// The host's one producer.
    pub producer: OutputProducer,
    /// Shared cap on plugin calls running at once.
    pub permits: Arc<tokio::sync::Semaphore>,
    /// Handle to the host's tokio runtime.
    pub runtime: tokio::runtime::Handle,
    /// Topics no pipeline reads or writes (the registry's, Kafka's own).
    pub control: ControlPlane,
    /// The host's cancellation: each pipeline's is a child, each
    /// partition's a grandchild, so one `cancel` stops them all.
    pub cancel: CancellationToken,
}

/// A running pipeline.
pub struct Pipeline {
    name: String,
    stop: CancellationToken,
    thread: Option<JoinHandle<()>>,
    status: Arc<PipelineStatus>,
}

/// A pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The Kafka consumer could not be created or subscribed.
    #[error("pipeline `{pipeline}`: cannot {action}: {source}")]
    Kafka {
        /// Pipeline name.
        pipeline: String,
        /// What was being done (`create the consumer`, `subscribe to ...`).
        action: String,
        /// librdkafka's error (boxed: it is large, and this is a cold path).
        source: Box<rdkafka::error::KafkaError>,
    },
    /// The consumer thread could not be spawned.
    #[error("pipeline `{pipeline}`: cannot start its consumer thread: {source}")]
    Thread {
        /// Pipeline name.
        pipeline: String,
        /// The OS's error.
        source: std::io::Error,
    },
    /// The spec does not hold (validation should have caught it first).
    #[error("pipeline `{pipeline}`: {source}")]
    Invalid {
        /// Pipeline name.
        pipeline: String,
        /// What is wrong.
        source: RegexError,
    },
}

impl Pipeline {
    /// Joins the pipeline's consumer group and starts processing.
    pub fn start(
        spec: PipelineSpec,
        deployment: Deployment,
        deps: &PipelineDeps,
    ) -> Result<Pipeline, PipelineError> {
        let pipeline = spec.name.clone();
        let kafka_err = |action: String| {
            let pipeline = pipeline.clone();
            move |source| PipelineError::Kafka {
                pipeline,
                action,
                source: Box::new(source),
            }
        };
        let outputs =
            OutputPolicy::new(&spec, &deps.control).map_err(|source| PipelineError::Invalid {
                pipeline: pipeline.clone(),
                source,
            })?;
        let deployment = Arc::new(DeploymentCell::new(deployment));
        let status = Arc::new(PipelineStatus::new(&spec, deployment.clone()));
        let instance_id = deps
            .host
            .static_membership
            .then(|| format!("{}-{}", deps.host.id, spec.name));
        let mut config = consumer_config(
            &deps.kafka,
            &spec.group_id(),
            &deps.host.id,
            instance_id.as_deref(),
        );
        let reader = Arc::new(InputReader::new(config.clone()));
        let stop = deps.cancel.child_token();
        // Exactly-once: a producer of the pipeline's own, whose
        // `transactional.id` names the group and the host, so the host's
        // next incarnation fences this one (DESIGN.md, "Exactly-once
        // delivery"); inputs are read `read_committed` unless overridden.
        let (producer, exactly_once, transactional_config) = match spec.delivery {
            Delivery::AtLeastOnce => (deps.producer.clone(), None, None),
            Delivery::ExactlyOnce => {
                let transactional_id = format!("kwasm-{}-{}", spec.group_id(), deps.host.id);
                let txn_config = transactional_producer_config(
                    &deps.kafka,
                    &deps.host.id,
                    &transactional_id,
                    spec.transaction.timeout_ms,
                );
                let producer = OutputProducer::new(&txn_config)
                    .map_err(kafka_err("create the transactional producer".to_owned()))?;
                if !deps.kafka.properties.contains_key("isolation.level")
                    && !deps
                        .kafka
                        .consumer_properties
                        .contains_key("isolation.level")
                {
                    config.set("isolation.level", "read_committed");
                }
                let (_, generation) = deployment.current();
                (
                    producer,
                    Some(ExactlyOnce::new(
                        &spec.name,
                        spec.transaction.clone(),
                        generation,
                    )),
                    Some(txn_config),
                )
            }
        };
        let shared = Arc::new(PipelineShared {
            cancel: stop.clone(),
            reader,
            outputs: Arc::new(outputs),
            deployment,
            producer: std::sync::RwLock::new(producer),
            transactional_config,
            exactly_once,
            permits: deps.permits.clone(),
            runtime: deps.runtime.clone(),
            grace: Duration::from_millis(deps.host.shutdown_grace_ms),
            host_id: deps.host.id.clone(),
            status: status.clone(),
            spec,
        });
        // A regex subscription must never match the control plane, whatever
        // the pattern: librdkafka then treats those topics as absent.
        config.set("topic.blacklist", deps.control.consumer_blacklist());
        let consumer: BaseConsumer<PipelineContext> = config
            .create_with_context(PipelineContext::new(shared.clone()))
            .map_err(kafka_err("create the consumer".to_owned()))?;
        let topics = shared.spec.subscription();
        let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topic_refs)
            .map_err(kafka_err(format!("subscribe to {topics:?}")))?;
        let name = shared.spec.name.clone();
        let leave_group = instance_id.is_none();
        let thread = std::thread::Builder::new()
            .name(format!("kwasm-consumer-{name}"))
            .spawn({
                let stop = stop.clone();
                let interval = match &shared.exactly_once {
                    Some(eos) => eos.interval(),
                    None => Duration::from_millis(deps.host.commit_interval_ms),
                };
                move || run_consumer(consumer, stop, interval, leave_group)
            })
            .map_err(|source| PipelineError::Thread {
                pipeline: pipeline.clone(),
                source,
            })?;
        tracing::info!(pipeline = %name, group = %shared.spec.group_id(), ?topics, "pipeline started");
        Ok(Pipeline {
            name,
            stop,
            thread: Some(thread),
            status,
        })
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What this host holds for the pipeline.
    pub fn status(&self) -> &Arc<PipelineStatus> {
        &self.status
    }

    /// Switches every partition to `deployment` at its next batch boundary.
    pub fn redeploy(&self, deployment: Deployment) {
        tracing::info!(pipeline = %self.name, plugin = deployment.plugin.name(), version = ?deployment.version,
            digest = deployment.plugin.digest(), "hot deploy: partitions switch at their next batch");
        self.status.deployment().replace(deployment);
    }

    /// Asks the consumer thread to drain, commit and leave the group.
    pub fn begin_stop(&self) {
        self.stop.cancel();
    }

    /// Waits for the consumer thread to finish.
    pub fn join(mut self) {
        self.begin_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl PipelineShared {
    /// The output producer now (a clone: one `Arc`).
    pub(crate) fn producer(&self) -> OutputProducer {
        self.producer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Why librdkafka gave up on `consumer`, with what to do when the cause is
/// a shared `group.instance.id` (FENCED_INSTANCE_ID under the classic
/// protocol: the older member; UNRELEASED_INSTANCE_ID under KIP-848: the
/// newcomer).
fn fatal_reason(
    consumer: &BaseConsumer<PipelineContext>,
    error: &rdkafka::error::KafkaError,
) -> String {
    use rdkafka::types::RDKafkaErrorCode::{FencedInstanceId, UnreleasedInstanceId};
    let shared = consumer.context().shared();
    match consumer.client().fatal_error() {
        Some((FencedInstanceId | UnreleasedInstanceId, why)) => format!(
            "{why}: another host uses this host's group.instance.id `{}-{}` (static membership); \
             give every host its own host.id (KWASM_HOST_ID)",
            shared.host_id, shared.spec.name
        ),
        Some((_, why)) => why,
        None => error.to_string(),
    }
}

/// Messages taken from the fetch queue per call.
const FETCH_BATCH: usize = 1024;

/// The consumer thread's loop: poll, route, dispatch, commit; on stop,
/// release every partition (drain, flush, commit) and leave the group.
///
/// Messages come in batches from the [`FetchQueue`] (assigned partitions are
/// forwarded there); `poll` serves rebalances, errors and commit results,
/// and routes any message that still came through the consumer queue.
fn run_consumer(
    consumer: BaseConsumer<PipelineContext>,
    stop: CancellationToken,
    commit_interval: Duration,
    leave_group: bool,
) {
    let ctx = consumer.context();
    if !ctx.init_transactions(&stop) {
        return;
    }
    let mut fetched = FetchQueue::new(&consumer, FETCH_BATCH);
    ctx.set_fetch_queue(Some(fetched.handle()));
    let mut last_commit = Instant::now();
    let mut last_scan = Instant::now();
    let mut since_scan = 0usize;
    let mut idle = true;
    while !stop.is_cancelled() {
        // Block on the fetch queue only when the last round found nothing.
        let wait = if idle {
            Duration::from_millis(5)
        } else {
            Duration::ZERO
        };
        let mut routed = fetched.consume(wait, |msg| match msg.error() {
            None => ctx.route_fetched(&consumer, &msg),
            Some(e) => {
                tracing::warn!(pipeline = %ctx.shared().spec.name, topic = msg.topic(),
                    partition = msg.partition(), error = %e, "consume error")
            }
        });
        match consumer.poll(Duration::ZERO) {
            Some(Ok(msg)) => {
                ctx.route(&consumer, &msg);
                routed += 1;
            }
            // librdkafka gave up on this consumer (for a static member:
            // another host joined with its group.instance.id, KIP-345):
            // the host must exit, visibly (crate::serve::report_fatal).
            Some(Err(e @ rdkafka::error::KafkaError::MessageConsumptionFatal(_))) => {
                let reason = fatal_reason(&consumer, &e);
                tracing::error!(pipeline = %ctx.shared().spec.name, %reason, "fatal consumer error");
                crate::serve::report_fatal(format!(
                    "pipeline `{}`: {reason}",
                    ctx.shared().spec.name
                ));
            }
            Some(Err(e)) => {
                tracing::warn!(pipeline = %ctx.shared().spec.name, error = %e, "consume error");
            }
            None => {}
        }
        idle = routed == 0;
        // Timers are checked when idle or every 64 messages, at most once
        // per millisecond: reading the clock per message per partition
        // was a tenth of the host's CPU (measured).
        since_scan += routed;
        if idle || since_scan >= 64 {
            since_scan = 0;
            let now = Instant::now();
            if now.duration_since(last_scan) >= Duration::from_millis(1) {
                last_scan = now;
                if !idle {
                    // Messages arrived: the broker answers.
                    ctx.shared().status.set_broker_ok(true);
                }
                ctx.dispatch_due(&consumer, now);
            }
            if now.duration_since(last_commit) >= commit_interval {
                ctx.commit_done(&consumer);
                // From when the commit returned: an exactly-once commit
                // holds the gate closed (often longer than the interval on a
                // busy broker), and timing from before it cut the next
                // transaction the moment the gate opened, so each carried
                // almost nothing and waited out the coordinator again.
                last_commit = Instant::now();
            }
        }
    }
    let name = ctx.shared().spec.name.clone();
    tracing::info!(pipeline = %name, "stopping: draining in-flight work, committing, leaving the group");
    ctx.shutdown(&consumer);
    // A static member (KIP-345) must not leave: its partitions then wait
    // for it for the session timeout instead of moving away and back on a
    // pod restart. librdkafka sends LeaveGroup on unsubscribe even for a
    // static member and skips it only on close, so only dynamic members
    // unsubscribe (tests/static_membership.rs).
    if leave_group {
        consumer.unsubscribe();
        // Serve the resulting revoke callback (nothing left to commit) so
        // the group hears of the leave promptly; `close` on drop sends
        // LeaveGroup.
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            let _ = consumer.poll(Duration::from_millis(50));
        }
    }
    // The queue goes before the consumer it belongs to.
    ctx.set_fetch_queue(None);
    drop(fetched);
    drop(consumer);
    tracing::info!(pipeline = %name, "stopped");
}
