//! A stand-in for a host's admin API (docs/api.md) for testing the `kwasm`
//! client commands: an axum server on 127.0.0.1 with canned answers that
//! records every request it gets.
//!
//! Like a real host with `host.admin_token` set, it answers every `/v1`
//! call, reads included, without the right bearer token with the API's 401
//! error; a call it has no answer for gets the API's 404 error.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// What the server answers for `"METHOD /path"`: a status and a JSON body
/// (`None`: an empty body, as for 204).
pub type Answer = (u16, Option<Value>);

/// One request as the server got it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The body's bytes.
    pub body: Vec<u8>,
}

impl Recorded {
    /// The body parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} {} sent a body that is not JSON: {e}",
                self.method, self.path
            )
        })
    }
}

#[derive(Clone)]
struct FakeState {
    token: Option<String>,
    answers: Arc<HashMap<String, Answer>>,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

/// A running fake API; stopped when dropped.
pub struct FakeApi {
    url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeApi {
    /// Starts a server answering `answers` (`("PUT /v1/pipelines/a", (200,
    /// Some(json)))`), requiring `token` on every `/v1` call when given.
    pub fn start(token: Option<&str>, answers: Vec<(&str, Answer)>) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for the fake API");
        let url = format!(
            "http://{}",
            listener.local_addr().expect("address of the fake API")
        );
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener for tokio");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let state = FakeState {
            token: token.map(str::to_owned),
            answers: Arc::new(
                answers
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
            ),
            requests: Arc::clone(&requests),
        };
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || serve(listener, state, stopped));
        FakeApi {
            url,
            requests,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.requests).clone()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock(requests: &Mutex<Vec<Recorded>>) -> MutexGuard<'_, Vec<Recorded>> {
    requests
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn serve(listener: TcpListener, state: FakeState, stopped: tokio::sync::oneshot::Receiver<()>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the fake API");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let router = Router::new()
            .fallback(answer)
            .layer(DefaultBodyLimit::disable())
            .with_state(state);
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .expect("the fake API serves");
    });
}

async fn answer(
    State(state): State<FakeState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text_header = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let recorded = Recorded {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |p| p.to_string()),
        authorization: text_header(header::AUTHORIZATION),
        content_type: text_header(header::CONTENT_TYPE),
        body: body.to_vec(),
    };
    lock(&state.requests).push(recorded.clone());

    if let Some(token) = &state.token
        && recorded.path.starts_with("/v1/")
        && recorded.authorization.as_deref() != Some(&format!("Bearer {token}"))
    {
        return error(
            401,
            "unauthorized",
            "this call needs `Authorization: Bearer <token>` with the host's admin token",
        );
    }
    match state
        .answers
        .get(&format!("{} {}", recorded.method, recorded.path))
    {
        Some((status, Some(body))) => {
            (status_code(*status), axum::Json(body.clone())).into_response()
        }
        Some((status, None)) => status_code(*status).into_response(),
        None => error(
            404,
            "not_found",
            &format!("no route {} {}", recorded.method, recorded.path),
        ),
    }
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or_else(|e| panic!("canned status {status}: {e}"))
}

/// The API's error shape.
pub fn error(status: u16, code: &str, message: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message}});
    (status_code(status), axum::Json(body)).into_response()
}
