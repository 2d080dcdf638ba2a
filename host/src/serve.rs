//! `kwasm serve`: load plugins, start pipelines and the admin API, and on
//! SIGTERM/SIGINT drain, commit, leave the groups and exit 0.
//!
//! A fatal client error ([`report_fatal`]: librdkafka gives up on a
//! consumer, e.g. a static member fenced by another host with the same
//! `group.instance.id`) also shuts the host down, but [`serve`] then returns
//! [`ServeError::Fatal`] and the process exits non-zero, so an orchestrator
//! restarts it visibly instead of it idling in a group it no longer belongs
//! to.

use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

use crate::admin::listener::AdminSetup;
use crate::admin::{AdminState, GroupDescriber, router};
use crate::config::Config;
use crate::kafka::{OutputProducer, producer_config};
use crate::pipeline::PipelineDeps;
use crate::pipeline::manager::PipelineManager;
use crate::registry::Registry;
use crate::runtime::{Runtime, RuntimeConfig};
use crate::topics::ControlPlane;

/// Why the host could not start. Each variant names the part that failed,
/// so an operator reading the one line the host exits with knows where to
/// look.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The admin listener's settings or socket (token, address, TLS).
    #[error(transparent)]
    Admin(#[from] crate::admin::listener::ListenError),
    /// The plugin runtime (engine, compile cache).
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// The metrics recorder could not be installed.
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    /// A Kafka client of the host (producer, the admin API's client).
    #[error("cannot create the {client}: {source}")]
    Kafka {
        /// Which client.
        client: &'static str,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
    /// The registry could not start (topics, replay).
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    /// A config-file pipeline cannot start: the deploy is wrong.
    #[error("pipeline `{pipeline}`: {reason}")]
    Pipeline {
        /// The pipeline.
        pipeline: String,
        /// Why, as the manager reported it.
        reason: String,
    },
    /// The plugin logs topic could not be set up.
    #[error(transparent)]
    Logs(#[from] crate::logs::topic::LogsError),
    /// The bound admin socket has no address (should not happen).
    #[error("cannot read the admin listener's address: {0}")]
    Io(#[from] std::io::Error),
    /// The host shut down after a fatal error (see [`report_fatal`]).
    #[error("stopped after a fatal error: {0}")]
    Fatal(String),
}

/// The first fatal error reported in this process, and who waits for one.
static FATAL: Mutex<Option<String>> = Mutex::new(None);
static FATAL_REPORTED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Reports an error after which this host must not go on (called by a
/// pipeline's consumer when librdkafka raises a fatal error). The first
/// report wins; [`serve`] then shuts down and fails with it.
pub fn report_fatal(reason: String) {
    let mut fatal = FATAL.lock().unwrap_or_else(|p| p.into_inner());
    if fatal.is_none() {
        *fatal = Some(reason);
        // notify_one keeps a permit if serve is not waiting yet.
        FATAL_REPORTED.notify_one();
    }
}

/// The fatal error reported so far, if any.
pub fn fatal_error() -> Option<String> {
    FATAL.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Runs the host until a termination signal, then shuts down gracefully.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    // First, so a wrong token, an open non-loopback address or a bad
    // certificate fails startup before anything connects or listens.
    let admin_setup = AdminSetup::new(&config.host).await?;
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(config.host.cache_dir.clone()),
        max_plugin_memory_bytes: config.host.plugin_memory_budget_bytes(),
    })?;
    let metrics = crate::metrics_names::prometheus_builder().install_recorder()?;
    let producer = OutputProducer::new(&producer_config(&config.kafka, &config.host.id)).map_err(
        |source| ServeError::Kafka {
            client: "Kafka producer",
            source,
        },
    )?;
    // The cancellation tree: host → pipeline → partition. Cancelling the
    // host's token (on SIGTERM) stops the manager and every worker; the
    // member publisher and the admin API have their own, cancelled once the
    // pipelines have drained and committed.
    let host_shutdown = CancellationToken::new();
    let after_drain = CancellationToken::new();
    let deps = PipelineDeps {
        host: config.host.clone(),
        kafka: config.kafka.clone(),
        producer: producer.clone(),
        permits: Arc::new(tokio::sync::Semaphore::new(config.host.workers)),
        runtime: tokio::runtime::Handle::current(),
        control: ControlPlane::new(&config.registry),
        cancel: host_shutdown.child_token(),
    };
    let registry = Registry::start(&config.kafka, config.registry.clone(), &config.host.id).await?;
    wait_caught_up(&registry).await;
    let mut manager = PipelineManager::new(
        runtime.clone(),
        Some(registry.clone()),
        deps,
        config.pipelines.clone(),
        config.limits.clone(),
    );
    manager.reconcile().await;
    let view = manager.view();
    // A config-file pipeline that cannot start is a startup error: the
    // operator's deploy is wrong, and saying so now beats a silent stall.
    if let Some((name, error)) = view
        .errors()
        .into_iter()
        .find(|(n, _)| view.config_names().contains(n))
    {
        return Err(ServeError::Pipeline {
            pipeline: name,
            reason: error,
        });
    }
    let manager_task = tokio::spawn(manager.run(host_shutdown.clone()));

    let publisher = tokio::spawn(publish_members(
        registry.clone(),
        view.clone(),
        config.host.id.clone(),
        after_drain.clone(),
    ));

    let groups =
        GroupDescriber::for_control_plane(&config.kafka, &config.registry).map_err(|source| {
            ServeError::Kafka {
                client: "admin API's Kafka client",
                source,
            }
        })?;
    // Plugin logs to the logs topic (off by default), and every host's
    // lines read back for the API.
    let logs = if config.registry.plugin_logs {
        Some(
            crate::logs::topic::start(
                &config.kafka,
                &config.registry,
                &config.host.id,
                view.clone(),
            )
            .await?,
        )
    } else {
        None
    };
    let state = AdminState {
        host_id: config.host.id.clone(),
        view,
        registry: Some(registry),
        runtime,
        token: config.host.admin_token.clone(),
        metrics: Some(metrics),
        groups: Some(groups),
        logs,
    };
    let listener = admin_setup.bind()?;
    let local = listener.local_addr()?;
    let scheme = if listener.is_tls() { "https" } else { "http" };
    tracing::info!(host = %config.host.id, admin = %local, scheme, "kwasm host running");
    let admin = tokio::spawn({
        let stopped = after_drain.clone().cancelled_owned();
        async move {
            let served = listener.serve(router(state), stopped, std::time::Duration::from_secs(5));
            if let Err(e) = served.await {
                tracing::error!(error = %e, "admin server failed");
            }
        }
    });

    let fatal = tokio::select! {
        _ = wait_for_signal() => None,
        _ = FATAL_REPORTED.notified() => fatal_error(),
    };
    match &fatal {
        None => {
            tracing::info!(host = %config.host.id, "shutdown requested: draining and committing")
        }
        Some(reason) => {
            tracing::error!(host = %config.host.id, %reason, "fatal error: shutting down, exiting non-zero")
        }
    }
    host_shutdown.cancel();
    let _ = manager_task.await;
    after_drain.cancel();
    let _ = publisher.await;
    producer.flush(std::time::Duration::from_millis(
        config.host.shutdown_grace_ms,
    ));
    let _ = admin.await;
    tracing::info!(host = %config.host.id, "kwasm host stopped");
    match fatal {
        None => Ok(()),
        Some(reason) => Err(ServeError::Fatal(reason)),
    }
}

/// Publishes what this host holds of each pipeline's group, and which
/// plugin version each pipeline runs, to the registry: for
/// `GET /v1/pipelines/{name}/members` on any host, and so that no host
/// deletes a version this host runs (config-file pipelines included). On
/// every change, and every 10 s. At shutdown the records are withdrawn.
async fn publish_members(
    registry: Registry,
    view: crate::pipeline::manager::ManagerView,
    host: String,
    stop: CancellationToken,
) {
    use crate::registry::MemberRecord;
    use std::collections::HashMap;
    let mut last: HashMap<String, (MemberRecord, std::time::Instant)> = HashMap::new();
    let mut published: HashMap<String, MemberRecord> = HashMap::new();
    loop {
        for record in crate::admin::running_member_records(&view, &host) {
            // Everything but the timestamp: partitions and what runs.
            let due = last.get(&record.pipeline).is_none_or(|(prev, at)| {
                MemberRecord {
                    updated_ms: record.updated_ms,
                    ..prev.clone()
                } != record
                    || at.elapsed() >= std::time::Duration::from_secs(10)
            });
            if !due {
                continue;
            }
            match registry.publish_member(&record, false).await {
                Ok(()) => {
                    last.insert(
                        record.pipeline.clone(),
                        (record.clone(), std::time::Instant::now()),
                    );
                    published.insert(record.pipeline.clone(), record);
                }
                Err(e) => tracing::warn!(error = %e, "cannot publish this host's assignment"),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
    }
    for record in published.values() {
        let _ = registry.publish_member(record, true).await;
    }
}

/// Gives the registry replay up to 60 s before starting pipelines, so a
/// restarted host runs the registry's pipelines from the start; after that
/// the manager starts them as the replay completes.
async fn wait_caught_up(registry: &Registry) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while !registry.caught_up() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    if !registry.caught_up() {
        tracing::warn!(
            "registry replay still running after 60 s; starting config-file pipelines now"
        );
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
