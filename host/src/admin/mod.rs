//! The admin HTTP API (axum). This module holds the read-only endpoints a
//! host needs from day one: liveness, readiness, metrics, and the partitions
//! it holds. Build it with [`router`] so tests can call it in-process.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::pipeline::{PartitionStatus, PipelineStatus};

/// What the handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// This host's id.
    pub host_id: String,
    /// Every pipeline running here.
    pub pipelines: Arc<Vec<Arc<PipelineStatus>>>,
    /// Renders Prometheus text, when metrics are installed.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// The API's routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/assignments", get(assignments))
        .with_state(state)
}

/// Assignments of one pipeline on this host.
#[derive(Debug, Serialize)]
pub struct PipelineAssignments {
    /// Pipeline name.
    pub pipeline: String,
    /// Consumer group.
    pub group_id: String,
    /// Plugin name.
    pub plugin: String,
    /// Plugin digest.
    pub plugin_digest: String,
    /// Partitions held.
    pub partitions: Vec<PartitionStatus>,
}

async fn assignments(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let pipelines: Vec<PipelineAssignments> = state
        .pipelines
        .iter()
        .map(|p| PipelineAssignments {
            pipeline: p.pipeline.clone(),
            group_id: p.group_id.clone(),
            plugin: p.plugin.clone(),
            plugin_digest: p.plugin_digest.clone(),
            partitions: p.partitions(),
        })
        .collect();
    Json(serde_json::json!({ "host": state.host_id, "pipelines": pipelines }))
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let down: Vec<&str> = state.pipelines.iter().filter(|p| !p.broker_ok()).map(|p| p.pipeline.as_str()).collect();
    if down.is_empty() {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        let body = serde_json::json!({"error": {"code": "not_ready", "message": format!("broker unreachable for pipelines: {}", down.join(", "))}});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    match &state.metrics {
        Some(h) => ([("content-type", "text/plain; version=0.0.4")], h.render()).into_response(),
        None => (StatusCode::NOT_FOUND, Json(serde_json::json!({"error": {"code": "not_found", "message": "metrics are not enabled"}}))).into_response(),
    }
}
