//! `kwasm serve`: load plugins, start pipelines and the admin API, and on
//! SIGTERM/SIGINT drain, commit, leave the groups and exit 0.

use std::sync::Arc;

use crate::admin::listener::AdminSetup;
use crate::admin::{AdminState, GroupDescriber, router};
use crate::config::Config;
use crate::kafka::{OutputProducer, producer_config};
use crate::pipeline::PipelineDeps;
use crate::pipeline::manager::PipelineManager;
use crate::registry::Registry;
use crate::runtime::{Runtime, RuntimeConfig};
use crate::topics::ControlPlane;

/// Why the host could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Anything else, already phrased for the operator.
    #[error("{0}")]
    Start(String),
}

/// Runs the host until a termination signal, then shuts down gracefully.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let start = |e: &dyn std::fmt::Display| ServeError::Start(e.to_string());
    // First, so a wrong token, an open non-loopback address or a bad
    // certificate fails startup before anything connects or listens.
    let admin_setup = AdminSetup::new(&config.host).await.map_err(|e| start(&e))?;
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(config.host.cache_dir.clone()),
        max_plugin_memory_bytes: config.host.plugin_memory_budget_bytes(),
    })
    .map_err(|e| start(&e))?;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| start(&format!("cannot install the metrics recorder: {e}")))?;
    let producer = OutputProducer::new(&producer_config(&config.kafka, &config.host.id))
        .map_err(|e| start(&format!("cannot create the Kafka producer: {e}")))?;
    let deps = PipelineDeps {
        host: config.host.clone(),
        kafka: config.kafka.clone(),
        producer: producer.clone(),
        permits: Arc::new(tokio::sync::Semaphore::new(config.host.workers)),
        runtime: tokio::runtime::Handle::current(),
        control: ControlPlane::new(&config.registry),
    };
    let registry = Registry::start(&config.kafka, config.registry.clone(), &config.host.id)
        .await
        .map_err(|e| start(&e))?;
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
        return Err(ServeError::Start(format!("pipeline `{name}`: {error}")));
    }
    let (stop_manager, manager_stop) = tokio::sync::oneshot::channel();
    let manager_task = tokio::spawn(manager.run(manager_stop));

    let (stop_publisher, publisher_stop) = tokio::sync::oneshot::channel();
    let publisher = tokio::spawn(publish_members(
        registry.clone(),
        view.clone(),
        config.host.id.clone(),
        publisher_stop,
    ));

    let groups = GroupDescriber::for_control_plane(&config.kafka, &config.registry)
        .map_err(|e| start(&format!("cannot create the admin API's Kafka client: {e}")))?;
    let state = AdminState {
        host_id: config.host.id.clone(),
        view,
        registry: Some(registry),
        runtime,
        token: config.host.admin_token.clone(),
        metrics: Some(metrics),
        groups: Some(groups),
    };
    let listener = admin_setup.bind().map_err(|e| start(&e))?;
    let local = listener.local_addr().map_err(|e| start(&e))?;
    let scheme = if listener.is_tls() { "https" } else { "http" };
    tracing::info!(host = %config.host.id, admin = %local, scheme, "kwasm host running");
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(async move {
        let stopped = async {
            let _ = admin_stopped.await;
        };
        let served = listener.serve(router(state), stopped, std::time::Duration::from_secs(5));
        if let Err(e) = served.await {
            tracing::error!(error = %e, "admin server failed");
        }
    });

    wait_for_signal().await;
    tracing::info!(host = %config.host.id, "shutdown requested: draining and committing");
    let _ = stop_manager.send(());
    let _ = manager_task.await;
    let _ = stop_publisher.send(());
    let _ = publisher.await;
    producer.flush(std::time::Duration::from_millis(
        config.host.shutdown_grace_ms,
    ));
    let _ = stop_admin.send(());
    let _ = admin.await;
    tracing::info!(host = %config.host.id, "kwasm host stopped");
    Ok(())
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
    mut stop: tokio::sync::oneshot::Receiver<()>,
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
            _ = &mut stop => break,
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
