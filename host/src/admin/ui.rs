//! The dashboard: static HTML, CSS and JavaScript modules under `host/ui/`,
//! compiled into the binary (`include_str!`) and served at `/ui/`.
//!
//! The page is a client of the `/v1` API like `kwasm` itself (one source
//! of truth); it asks for the admin token once and keeps it in the
//! browser's sessionStorage. Every URL it uses is relative (`./app.js`,
//! `../v1/...`), so it works behind an ingress that serves the host under
//! a path prefix. The assets hold nothing secret, so they are served
//! without the token (see `is_open_path`); everything they read needs it.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::{AdminError, AdminState};

/// The files of the dashboard: (name under `/ui/`, content type, body).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/api.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/chart.js"),
    ),
    (
        "pages.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/pages.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/style.css"),
    ),
];

/// The dashboard's routes, merged into the API's router.
pub fn routes() -> Router<AdminState> {
    Router::new()
        // Relative, so `/prefix/ui` goes to `/prefix/ui/` behind an ingress.
        .route("/ui", get(|| async { Redirect::permanent("ui/") }))
        .route("/ui/", get(|| async { asset("index.html") }))
        .route(
            "/ui/{file}",
            get(|axum::extract::Path(file): axum::extract::Path<String>| async move {
                asset(&file)
            }),
        )
}

/// Whether `path` is one of the dashboard's (open) paths.
pub fn is_ui_path(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

fn asset(name: &str) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return AdminError::NotFound(format!("no dashboard file `{name}`")).into_response();
    };
    let mut response = (*body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // A new binary may ship new assets under the same names.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_paths_are_exactly_ui_and_below() {
        assert!(is_ui_path("/ui") && is_ui_path("/ui/") && is_ui_path("/ui/app.js"));
        assert!(!is_ui_path("/uix") && !is_ui_path("/v1/ui") && !is_ui_path("/"));
    }

    #[test]
    fn every_asset_uses_only_relative_urls() {
        // Behind a path prefix an absolute `/v1` or `/ui` would miss the host.
        for (name, _, body) in ASSETS {
            for absolute in [
                "\"/v1", "'/v1", "`/v1", "\"/ui", "'/ui", "href=\"/", "src=\"/",
            ] {
                assert!(!body.contains(absolute), "{name} contains {absolute}");
            }
        }
    }
}
