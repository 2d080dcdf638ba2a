//! `kwasm serve`: load plugins, start pipelines and the admin API, and on
//! SIGTERM/SIGINT drain, commit, leave the groups and exit 0.

use std::sync::Arc;

use crate::admin::{AdminState, router};
use crate::config::Config;
use crate::kafka::{OutputProducer, producer_config};
use crate::pipeline::{Pipeline, PipelineDeps};
use crate::runtime::{Runtime, RuntimeConfig};

/// Why the host could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A plugin file could not be read.
    #[error("pipeline `{pipeline}`: cannot read plugin {path}: {source}")]
    PluginFile {
        /// Pipeline.
        pipeline: String,
        /// File.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Anything else, already phrased for the operator.
    #[error("{0}")]
    Start(String),
}

/// Runs the host until a termination signal, then shuts down gracefully.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let start = |e: &dyn std::fmt::Display| ServeError::Start(e.to_string());
    let runtime = Runtime::new(RuntimeConfig { cache_dir: Some(config.host.cache_dir.clone()) }).map_err(|e| start(&e))?;
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
    };
    let mut pipelines = Vec::new();
    for spec in &config.pipelines {
        let bytes = std::fs::read(&spec.plugin).map_err(|source| ServeError::PluginFile {
            pipeline: spec.name.clone(),
            path: spec.plugin.display().to_string(),
            source,
        })?;
        let plugin_name = spec.plugin.file_stem().map_or("plugin".into(), |s| s.to_string_lossy().into_owned());
        let plugin = runtime
            .load(&plugin_name, &bytes)
            .map_err(|e| start(&format!("pipeline `{}`: plugin {}: {e}", spec.name, spec.plugin.display())))?;
        let limits = spec.limits.clone().unwrap_or_else(|| config.limits.clone());
        // Instantiate once now so a rejected config fails at startup.
        let config_pairs = spec.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        plugin
            .handler(config_pairs, limits.clone())
            .map_err(|e| start(&format!("pipeline `{}`: {e}", spec.name)))?;
        pipelines.push(Pipeline::start(spec.clone(), plugin, limits, &deps).map_err(|e| start(&e))?);
    }

    let state = AdminState {
        host_id: config.host.id.clone(),
        pipelines: Arc::new(pipelines.iter().map(|p| p.status().clone()).collect()),
        metrics: Some(metrics),
    };
    let listener = tokio::net::TcpListener::bind(&config.host.admin_listen)
        .await
        .map_err(|e| start(&format!("cannot listen on host.admin_listen {}: {e}", config.host.admin_listen)))?;
    let local = listener.local_addr().map_err(|e| start(&e))?;
    tracing::info!(host = %config.host.id, admin = %local, "kwasm host running");
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(async move {
        let server = axum::serve(listener, router(state)).with_graceful_shutdown(async {
            let _ = admin_stopped.await;
        });
        if let Err(e) = server.await {
            tracing::error!(error = %e, "admin server failed");
        }
    });

    wait_for_signal().await;
    tracing::info!(host = %config.host.id, "shutdown requested: draining and committing");
    for p in &pipelines {
        p.begin_stop();
    }
    let _ = tokio::task::spawn_blocking(move || pipelines.into_iter().for_each(Pipeline::join)).await;
    producer.flush(std::time::Duration::from_millis(config.host.shutdown_grace_ms));
    let _ = stop_admin.send(());
    let _ = admin.await;
    tracing::info!(host = %config.host.id, "kwasm host stopped");
    Ok(())
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
