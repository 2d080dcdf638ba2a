//! The admin HTTP API (axum), documented in docs/api.md and served as
//! OpenAPI at `/v1/openapi.json`. Build it with [`router`] so tests can
//! call it in-process with `tower::ServiceExt::oneshot`.
//!
//! Every error is `{"error": {"code", "message"}}` with its status
//! ([`AdminError`]); bodies are parsed by hand so a malformed one gets the
//! same shape. Mutating calls need the bearer token when one is set.

mod error;
mod handlers;
mod openapi;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::Method;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};

pub use error::AdminError;

use crate::pipeline::manager::ManagerView;
use crate::registry::Registry;
use crate::runtime::Runtime;

/// What the handlers read and write.
#[derive(Clone)]
pub struct AdminState {
    /// This host's id.
    pub host_id: String,
    /// Running pipelines and deploy errors.
    pub view: ManagerView,
    /// The shared registry (`None`: plugin and pipeline calls answer 503).
    pub registry: Option<Registry>,
    /// Validates uploads.
    pub runtime: Runtime,
    /// Bearer token for mutating calls.
    pub token: Option<String>,
    /// Renders Prometheus text, when metrics are installed.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// The API's routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/v1/assignments", get(handlers::assignments))
        .route("/v1/plugins", get(handlers::list_plugins))
        .route(
            "/v1/plugins/{name}",
            get(handlers::get_plugin).post(handlers::upload_plugin),
        )
        .route(
            "/v1/plugins/{name}/versions/{version}",
            delete(handlers::delete_plugin_version),
        )
        .route("/v1/pipelines", get(handlers::list_pipelines))
        .route(
            "/v1/pipelines/{name}",
            get(handlers::get_pipeline)
                .put(handlers::put_pipeline)
                .delete(handlers::delete_pipeline),
        )
        .route("/v1/pipelines/{name}/pause", post(handlers::pause_pipeline))
        .route(
            "/v1/pipelines/{name}/resume",
            post(handlers::resume_pipeline),
        )
        .route("/v1/pipelines/{name}/members", get(handlers::members))
        // Upload size is checked by the handler, against the registry's
        // limit, so the answer is our JSON 413 rather than axum's text.
        .layer(DefaultBodyLimit::disable())
        .layer(from_fn_with_state(state.clone(), require_token))
        .fallback(|| async { AdminError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async { AdminError::MethodNotAllowed })
        .with_state(state)
}

/// Mutating calls need `Authorization: Bearer <token>` when a token is set.
async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let mutating = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::DELETE | Method::PATCH
    );
    if let (true, Some(token)) = (mutating, &state.token) {
        let given = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_str()) {
            return AdminError::Unauthorized.into_response();
        }
    }
    next.run(request).await
}
