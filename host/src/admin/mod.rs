//! The admin HTTP API (axum), documented in docs/api.md and served as
//! OpenAPI at `/v1/openapi.json`. Build it with [`router`] so tests can
//! call it in-process with `tower::ServiceExt::oneshot`; [`listener`] binds
//! and serves it (plain http or TLS).
//!
//! Every error is `{"error": {"code", "message"}}` with its status
//! ([`AdminError`]); bodies are read by hand, under a limit per route, so a
//! malformed or oversized one gets the same shape. With a token set, every
//! `/v1` call needs it (reads too: pipelines carry plugin configs); the
//! probes `/healthz`, `/readyz` and `/metrics` stay open.

mod error;
mod groups;
mod handlers;
pub(crate) use handlers::running_member_records;
pub mod listener;
mod openapi;
mod progress;
mod ui;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use error::AdminError;
pub use groups::GroupDescriber;

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
    /// Bearer token every `/v1` call needs, when set.
    pub token: Option<String>,
    /// Renders Prometheus text, when metrics are installed.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The broker's view of consumer groups, for `.../members` (`None`:
    /// only what hosts published).
    pub groups: Option<GroupDescriber>,
    /// Plugin log lines read back from the logs topic (`None`:
    /// `registry.plugin_logs` is off; `.../logs` answers 404).
    pub logs: Option<crate::logs::LogTail>,
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
        .route(
            "/v1/pipelines/{name}/progress",
            get(progress::progress_handler),
        )
        .route(
            "/v1/pipelines/{name}/dead-letters",
            get(progress::dead_letters_handler),
        )
        .route("/v1/pipelines/{name}/logs", get(progress::logs_handler))
        .merge(ui::routes())
        .fallback(|| async { AdminError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async { AdminError::MethodNotAllowed })
        // Outermost, so it also guards the fallbacks: without the token an
        // unknown `/v1` path is 401 too, and does not reveal what exists.
        .layer(from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// Paths that stay open with a token set: probes and scrapers carry none,
/// and a browser loading the dashboard has no way to send one (the page
/// then sends it on every `/v1` call).
fn is_open_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics") || ui::is_ui_path(path)
}

/// With a token set, every call but the probes needs
/// `Authorization: Bearer <token>`.
async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token
        && !is_open_path(request.uri().path())
    {
        let given = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !authorized(given, token) {
            metrics::counter!(crate::metrics_names::ADMIN_REFUSED, "reason" => "unauthorized")
                .increment(1);
            return AdminError::Unauthorized.into_response();
        }
    }
    next.run(request).await
}

/// Whether an `Authorization` header value carries `token` as a bearer
/// token. The scheme is case-insensitive (RFC 7235). Both sides are hashed
/// and the digests compared in constant time (`subtle`), so neither the
/// position of the first wrong byte nor the token's length shows in the
/// answer time.
fn authorized(header: Option<&str>, token: &str) -> bool {
    let Some((scheme, given)) = header.and_then(|h| h.split_once(' ')) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    let given = Sha256::digest(given.as_bytes());
    let expected = Sha256::digest(token.as_bytes());
    given.as_slice().ct_eq(expected.as_slice()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_authorized() {
        let t = "s3cret-token";
        assert!(authorized(Some("Bearer s3cret-token"), t));
        assert!(authorized(Some("bearer s3cret-token"), t));
        for wrong in [
            "Bearer s3cret-toke",   // a prefix
            "Bearer s3cret-token!", // a trailing character
            "Bearer s3cret-token ", // a trailing space
            "Bearer S3cret-token",
            "Bearer ",
            "Bearer",
            "Basic s3cret-token",
            "s3cret-token",
            "",
        ] {
            assert!(!authorized(Some(wrong), t), "{wrong:?} must not pass");
        }
        assert!(!authorized(None, t));
    }

    #[test]
    fn probes_are_open_and_everything_else_is_not() {
        assert!(is_open_path("/healthz") && is_open_path("/readyz") && is_open_path("/metrics"));
        for path in [
            "/v1/openapi.json",
            "/uiv1/pipelines",
            "/v1/pipelines",
            "/healthz/",
            "/v1/healthz",
            "/",
        ] {
            assert!(!is_open_path(path), "{path}");
        }
    }
}
