//! A blocking client of one host's admin HTTP API (docs/api.md).
//!
//! Requests are built as plain values ([`ApiRequest`]) so their method, path,
//! headers and body are testable without a server; [`ApiClient::send`] runs
//! them and turns every answer that is not 2xx into a [`ClientError`]. Nothing
//! here prints: the command modules render what comes back. Error messages
//! leave out their source error, which `main` prints after them.

use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use ureq::http;

use super::model::{Assignments, DeployedPlugin, Members, Pipeline, PipelineList, PluginList};

/// Bodies larger than this are not read (the largest answer, a status of many
/// partitions, is far smaller).
const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;
/// An error body is quoted in a message up to this many characters.
const MAX_QUOTED_BODY_CHARS: usize = 200;

/// What can go wrong talking to the admin API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with its error shape (`{"error": {"code", "message"}}`).
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The API's error code (`conflict`, `unauthorized`, ...).
        code: String,
        /// The API's message.
        message: String,
    },
    /// A non-2xx answer without the API's error shape: probably not a kwasm
    /// host (a proxy, another service on that port).
    #[error("HTTP {status} from {url} (not a kwasm error answer: {body:?})")]
    UnexpectedStatus {
        /// The URL called.
        url: String,
        /// HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The host could not be reached, or the connection broke.
    #[error("cannot reach the kwasm admin API at {url}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// What the HTTP client saw.
        source: ureq::Error,
    },
    /// `--url` is not a usable `http://` URL.
    #[error("invalid admin API URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A 2xx answer whose body is not what the API documents.
    #[error("unexpected answer from {url}")]
    InvalidBody {
        /// The URL called.
        url: String,
        /// Why it did not decode.
        source: serde_json::Error,
    },
}

/// One call of the API, before it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    /// HTTP method.
    pub method: http::Method,
    /// Path and query, starting with `/`, segments already escaped.
    pub path: String,
    /// Content type and bytes, for calls that send a body.
    pub body: Option<(&'static str, Vec<u8>)>,
}

impl ApiRequest {
    fn new(method: http::Method, path: String) -> Self {
        ApiRequest {
            method,
            path,
            body: None,
        }
    }

    fn with_body(mut self, content_type: &'static str, bytes: Vec<u8>) -> Self {
        self.body = Some((content_type, bytes));
        self
    }

    /// `POST /v1/plugins/{name}` with the component's bytes.
    pub fn deploy_plugin(name: &str, wasm: Vec<u8>) -> Self {
        Self::new(http::Method::POST, format!("/v1/plugins/{}", segment(name)))
            .with_body("application/wasm", wasm)
    }

    /// `DELETE /v1/plugins/{name}/versions/{version}`.
    pub fn delete_plugin_version(name: &str, version: u32) -> Self {
        Self::new(
            http::Method::DELETE,
            format!("/v1/plugins/{}/versions/{version}", segment(name)),
        )
    }

    /// `GET /v1/plugins`.
    pub fn list_plugins() -> Self {
        Self::new(http::Method::GET, "/v1/plugins".to_owned())
    }

    /// `PUT /v1/pipelines/{name}` with the pipeline's fields (all but `name`).
    pub fn put_pipeline(name: &str, body: &serde_json::Value) -> Self {
        Self::new(http::Method::PUT, pipeline_path(name, ""))
            .with_body("application/json", body.to_string().into_bytes())
    }

    /// `GET /v1/pipelines`.
    pub fn list_pipelines() -> Self {
        Self::new(http::Method::GET, "/v1/pipelines".to_owned())
    }

    /// `POST /v1/pipelines/{name}/pause`.
    pub fn pause_pipeline(name: &str) -> Self {
        Self::new(http::Method::POST, pipeline_path(name, "/pause"))
    }

    /// `POST /v1/pipelines/{name}/resume`.
    pub fn resume_pipeline(name: &str) -> Self {
        Self::new(http::Method::POST, pipeline_path(name, "/resume"))
    }

    /// `DELETE /v1/pipelines/{name}`.
    pub fn delete_pipeline(name: &str) -> Self {
        Self::new(http::Method::DELETE, pipeline_path(name, ""))
    }

    /// `GET /v1/pipelines/{name}/members`.
    pub fn pipeline_members(name: &str) -> Self {
        Self::new(http::Method::GET, pipeline_path(name, "/members"))
    }

    /// `GET /v1/assignments`.
    pub fn assignments() -> Self {
        Self::new(http::Method::GET, "/v1/assignments".to_owned())
    }

    /// `GET /v1/pipelines/{name}/logs?after=C&limit=N`.
    pub fn pipeline_logs(name: &str, after: u64, limit: usize) -> Self {
        Self::new(
            http::Method::GET,
            pipeline_path(name, &format!("/logs?after={after}&limit={limit}")),
        )
    }
}

fn pipeline_path(name: &str, suffix: &str) -> String {
    format!("/v1/pipelines/{}{suffix}", segment(name))
}

/// Percent-escapes everything but RFC 3986 unreserved characters, so a name
/// is always one path segment (`a/b` cannot address another resource).
fn segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A 2xx answer: its status and body text.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status (200, 201, 204).
    pub status: u16,
    /// The URL called, for error messages.
    pub url: String,
    /// The body.
    pub body: String,
}

impl Answer {
    /// The body decoded as `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_str(&self.body).map_err(|source| ClientError::InvalidBody {
            url: self.url.clone(),
            source,
        })
    }
}

/// Talks to one host's admin API.
pub struct ApiClient {
    base_url: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl ApiClient {
    /// A client of the API at `base_url` (`http://host:port`, with or without
    /// a trailing `/` or a path prefix), sending `token` as a bearer token.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let base_url = check_base_url(base_url)?;
        let config = ureq::Agent::config_builder()
            // Error answers carry the API's JSON body: read it, do not fail early.
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(120)))
            .build();
        Ok(ApiClient {
            base_url,
            token: token.filter(|t| !t.is_empty()),
            agent: ureq::Agent::new_with_config(config),
        })
    }

    /// The full URL of `request`.
    pub fn url(&self, request: &ApiRequest) -> String {
        format!("{}{}", self.base_url, request.path)
    }

    /// Sends `request`; a non-2xx answer is an error.
    pub fn send(&self, request: &ApiRequest) -> Result<Answer, ClientError> {
        self.send_with_progress(request, None)
    }

    /// [`send`](Self::send), advancing `progress` by the body bytes as
    /// they are written (uploads of large components).
    pub fn send_with_progress(
        &self,
        request: &ApiRequest,
        progress: Option<&indicatif::ProgressBar>,
    ) -> Result<Answer, ClientError> {
        let url = self.url(request);
        let mut builder = http::Request::builder()
            .method(request.method.clone())
            .uri(&url);
        if let Some(token) = &self.token {
            builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let invalid = |e: http::Error| ClientError::InvalidUrl {
            url: url.clone(),
            reason: e.to_string(),
        };
        let sent = match &request.body {
            Some((content_type, bytes)) => match progress {
                None => {
                    let http_request = builder
                        .header(http::header::CONTENT_TYPE, *content_type)
                        .body(bytes.as_slice())
                        .map_err(invalid)?;
                    self.agent.run(http_request)
                }
                Some(bar) => {
                    // The length is known: sent as Content-Length, so the
                    // host can refuse an oversized upload before reading it.
                    let mut reader = bar.wrap_read(bytes.as_slice());
                    let http_request = builder
                        .header(http::header::CONTENT_TYPE, *content_type)
                        .header(http::header::CONTENT_LENGTH, bytes.len())
                        .body(ureq::SendBody::from_reader(&mut reader))
                        .map_err(invalid)?;
                    self.agent.run(http_request)
                }
            },
            None => self.agent.run(builder.body(()).map_err(invalid)?),
        };
        let mut response = sent.map_err(|source| ClientError::Unreachable {
            url: url.clone(),
            source,
        })?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_string()
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        check_status(url, status, body)
    }

    /// `POST /v1/plugins/{name}`: the stored version, and whether it is new
    /// (201) or the same bytes were already there (200).
    pub fn deploy_plugin(
        &self,
        name: &str,
        wasm: Vec<u8>,
    ) -> Result<(DeployedPlugin, bool), ClientError> {
        let progress = upload_progress(wasm.len() as u64);
        let sent = self.send_with_progress(&ApiRequest::deploy_plugin(name, wasm), Some(&progress));
        progress.finish_and_clear();
        let answer = sent?;
        Ok((answer.json()?, answer.status == 201))
    }

    /// `GET /v1/plugins`.
    pub fn list_plugins(&self) -> Result<PluginList, ClientError> {
        self.send(&ApiRequest::list_plugins())?.json()
    }

    /// `PUT /v1/pipelines/{name}`: the pipeline as stored.
    pub fn put_pipeline(
        &self,
        name: &str,
        body: &serde_json::Value,
    ) -> Result<Pipeline, ClientError> {
        self.send(&ApiRequest::put_pipeline(name, body))?.json()
    }

    /// `GET /v1/pipelines`.
    pub fn list_pipelines(&self) -> Result<PipelineList, ClientError> {
        self.send(&ApiRequest::list_pipelines())?.json()
    }

    /// `POST /v1/pipelines/{name}/pause`.
    pub fn pause_pipeline(&self, name: &str) -> Result<Pipeline, ClientError> {
        self.send(&ApiRequest::pause_pipeline(name))?.json()
    }

    /// `POST /v1/pipelines/{name}/resume`.
    pub fn resume_pipeline(&self, name: &str) -> Result<Pipeline, ClientError> {
        self.send(&ApiRequest::resume_pipeline(name))?.json()
    }

    /// `DELETE /v1/pipelines/{name}`.
    pub fn delete_pipeline(&self, name: &str) -> Result<(), ClientError> {
        self.send(&ApiRequest::delete_pipeline(name)).map(drop)
    }

    /// `DELETE /v1/plugins/{name}/versions/{version}`: a 409 names the
    /// pipelines (and hosts) that still use it.
    pub fn delete_plugin_version(&self, name: &str, version: u32) -> Result<(), ClientError> {
        self.send(&ApiRequest::delete_plugin_version(name, version))
            .map(drop)
    }

    /// `GET /v1/pipelines/{name}/members`.
    pub fn pipeline_members(&self, name: &str) -> Result<Members, ClientError> {
        self.send(&ApiRequest::pipeline_members(name))?.json()
    }

    /// `GET /v1/assignments`.
    pub fn assignments(&self) -> Result<Assignments, ClientError> {
        self.send(&ApiRequest::assignments())?.json()
    }

    /// `GET /v1/pipelines/{name}/logs`: lines after `after`, and the next
    /// cursor.
    pub fn pipeline_logs(
        &self,
        name: &str,
        after: u64,
        limit: usize,
    ) -> Result<super::model::LogPage, ClientError> {
        self.send(&ApiRequest::pipeline_logs(name, after, limit))?
            .json()
    }
}

/// Uploads at least this large show a progress bar.
const UPLOAD_PROGRESS_MIN_BYTES: u64 = 1 << 20;

/// A bar of upload bytes on stderr, for a large upload from a terminal;
/// hidden otherwise (small uploads, output piped or redirected).
fn upload_progress(total_bytes: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    let shown = total_bytes >= UPLOAD_PROGRESS_MIN_BYTES && std::io::stderr().is_terminal();
    let target = if shown {
        indicatif::ProgressDrawTarget::stderr()
    } else {
        indicatif::ProgressDrawTarget::hidden()
    };
    let bar = indicatif::ProgressBar::with_draw_target(Some(total_bytes), target);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "uploading {bar:30} {bytes}/{total_bytes} {bytes_per_sec} (then the host validates it)",
    ) {
        bar.set_style(style);
    }
    bar
}

/// The base URL without its trailing `/`; only `http://` is supported (the
/// admin API listens on plain HTTP).
fn check_base_url(url: &str) -> Result<String, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(invalid(
            "expected http://HOST:PORT (the admin API speaks plain HTTP)",
        ));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(invalid("no host after http://"));
    }
    if url.contains(['?', '#']) {
        return Err(invalid("a query or fragment is not allowed"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// The API's error shape.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// A 2xx status is an answer; anything else an error, in the API's own words
/// when the body has its error shape.
fn check_status(url: String, status: u16, body: String) -> Result<Answer, ClientError> {
    if (200..300).contains(&status) {
        return Ok(Answer { status, url, body });
    }
    match serde_json::from_str::<ErrorBody>(&body) {
        Ok(ErrorBody { error }) => Err(ClientError::Api {
            status,
            code: error.code,
            message: error.message,
        }),
        Err(_) => Err(ClientError::UnexpectedStatus {
            url,
            status,
            body: body.chars().take(MAX_QUOTED_BODY_CHARS).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_documented_method_path_and_body() {
        let deploy = ApiRequest::deploy_plugin("redact", vec![0, 97, 115, 109]);
        assert_eq!(deploy.method, http::Method::POST);
        assert_eq!(deploy.path, "/v1/plugins/redact");
        assert_eq!(
            deploy.body,
            Some(("application/wasm", vec![0, 97, 115, 109]))
        );

        let put =
            ApiRequest::put_pipeline("orders-clean", &serde_json::json!({"plugin": "redact@2"}));
        assert_eq!(put.method, http::Method::PUT);
        assert_eq!(put.path, "/v1/pipelines/orders-clean");
        assert_eq!(
            put.body,
            Some(("application/json", br#"{"plugin":"redact@2"}"#.to_vec()))
        );

        let cases = [
            (ApiRequest::list_plugins(), http::Method::GET, "/v1/plugins"),
            (
                ApiRequest::list_pipelines(),
                http::Method::GET,
                "/v1/pipelines",
            ),
            (
                ApiRequest::pause_pipeline("p"),
                http::Method::POST,
                "/v1/pipelines/p/pause",
            ),
            (
                ApiRequest::resume_pipeline("p"),
                http::Method::POST,
                "/v1/pipelines/p/resume",
            ),
            (
                ApiRequest::delete_pipeline("p"),
                http::Method::DELETE,
                "/v1/pipelines/p",
            ),
            (
                ApiRequest::pipeline_members("p"),
                http::Method::GET,
                "/v1/pipelines/p/members",
            ),
            (
                ApiRequest::assignments(),
                http::Method::GET,
                "/v1/assignments",
            ),
        ];
        for (request, method, path) in cases {
            assert_eq!(
                (request.method, request.path.as_str(), request.body),
                (method, path, None)
            );
        }
    }

    #[test]
    fn names_are_escaped_into_one_path_segment() {
        assert_eq!(
            ApiRequest::delete_pipeline("a/b c").path,
            "/v1/pipelines/a%2Fb%20c"
        );
        assert_eq!(segment("orders.v2_x-y~"), "orders.v2_x-y~");
    }

    #[test]
    fn base_url_must_be_plain_http_and_loses_its_trailing_slash() {
        assert_eq!(
            check_base_url("http://127.0.0.1:8080/").ok(),
            Some("http://127.0.0.1:8080".to_owned())
        );
        assert_eq!(
            check_base_url("http://h/prefix").ok(),
            Some("http://h/prefix".to_owned())
        );
        for bad in [
            "https://h",
            "127.0.0.1:8080",
            "http://",
            "http:///x",
            "http://h?x=1",
        ] {
            assert!(
                matches!(check_base_url(bad), Err(ClientError::InvalidUrl { .. })),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn error_answers_use_the_apis_code_and_message() {
        let body = r#"{"error": {"code": "conflict", "message": "pipeline `a` is declared in a config file"}}"#;
        let err = check_status("http://h/v1/pipelines/a".into(), 409, body.into())
            .expect_err("an error answer");
        assert_eq!(
            err.to_string(),
            "pipeline `a` is declared in a config file (conflict, HTTP 409)"
        );
    }

    #[test]
    fn error_answers_without_the_error_shape_quote_the_body() {
        let err = check_status("http://h/v1/plugins".into(), 502, "Bad Gateway".into())
            .expect_err("an error answer");
        assert_eq!(
            err.to_string(),
            "HTTP 502 from http://h/v1/plugins (not a kwasm error answer: \"Bad Gateway\")"
        );
    }

    #[test]
    fn success_answers_keep_status_and_body() {
        let answer = check_status("u".into(), 201, "{}".into()).expect("2xx is an answer");
        assert_eq!((answer.status, answer.body.as_str()), (201, "{}"));
    }

    #[test]
    fn an_undecodable_answer_names_the_url() {
        let answer = check_status("http://h/v1/plugins".into(), 200, "[]".into()).expect("2xx");
        let err = answer.json::<PluginList>().expect_err("an error answer");
        assert_eq!(
            err.to_string(),
            "unexpected answer from http://h/v1/plugins"
        );
        assert!(
            std::error::Error::source(&err).is_some(),
            "the decode error is kept as the source"
        );
    }
}
