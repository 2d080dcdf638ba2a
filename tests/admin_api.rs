//! The admin HTTP API, called in-process (`tower::ServiceExt::oneshot`) over
//! a real registry on the broker `scripts/test` starts: every endpoint of
//! docs/api.md, with exact statuses and JSON bodies, including the one error
//! shape `{"error": {"code", "message"}}`.
//!
//! Each test starts its own registry on topics no other test uses, so tests
//! see only their own plugins and pipelines. No pipeline manager runs, so the
//! host holds no partitions and is never ready.
//!
//! The API under test has a token, so every `/v1` call here carries it
//! unless the test is about calls without it ([`Api::anonymous`]).

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use kwasm_host::admin::{AdminState, GroupDescriber, router};
use kwasm_host::config::{HostConfig, KafkaConfig, PipelineSpec};
use kwasm_host::kafka::{OutputProducer, producer_config};
use kwasm_host::pipeline::PipelineDeps;
use kwasm_host::pipeline::manager::{ManagerView, PipelineManager};
use kwasm_host::registry::{Registry, RegistryConfig};
use kwasm_host::runtime::{Limits, Runtime, RuntimeConfig};
use kwasm_host::topics::ControlPlane;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

const HOST: &str = "test-host";
const TOKEN: &str = "secret";

/// One runtime for the binary: validation compiles each plugin once, and
/// the compiled code is cached in cargo's scratch directory for tests.
static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    let cache_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kwasm-admin-api-cache");
    Runtime::new(RuntimeConfig {
        cache_dir: Some(cache_dir),
        ..RuntimeConfig::default()
    })
    .unwrap_or_else(|e| panic!("cannot start the runtime: {e}"))
});

fn kafka() -> KafkaConfig {
    KafkaConfig {
        brokers: kwasm_tests::brokers(),
        ..KafkaConfig::default()
    }
}

/// A registry on fresh topics, caught up.
async fn registry(max_plugin_bytes: Option<usize>) -> Registry {
    let defaults = RegistryConfig::default();
    let config = RegistryConfig {
        plugins_topic: kwasm_tests::unique("admin-plugins"),
        pipelines_topic: kwasm_tests::unique("admin-pipelines"),
        members_topic: kwasm_tests::unique("admin-members"),
        max_plugin_bytes: max_plugin_bytes.unwrap_or(defaults.max_plugin_bytes),
        ..defaults
    };
    let registry = Registry::start(&kafka(), config, HOST)
        .await
        .unwrap_or_else(|e| panic!("cannot start the registry: {e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !registry.caught_up() {
        assert!(
            Instant::now() < deadline,
            "the registry did not catch up within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    registry
}

/// The API under test.
struct Api {
    router: Router,
}

/// A response: status, and the body as JSON (`Null` when empty).
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    body: Value,
}

impl Api {
    async fn new() -> Api {
        Api::with(registry(None).await, ManagerView::default())
    }

    fn with(registry: Registry, view: ManagerView) -> Api {
        let state = AdminState {
            host_id: HOST.into(),
            view,
            registry: Some(registry),
            runtime: RUNTIME.clone(),
            token: Some(TOKEN.into()),
            metrics: None,
            groups: Some(
                GroupDescriber::for_control_plane(&kafka(), &RegistryConfig::default())
                    .unwrap_or_else(|e| panic!("cannot create the admin client: {e}")),
            ),
            // An empty tail: `.../logs` answers as with plugin logs on.
            logs: Some(kwasm_host::logs::LogTail::default()),
        };
        Api {
            router: router(state),
        }
    }

    /// Sends a request; `token` becomes `Authorization: Bearer <token>`.
    async fn send(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: impl Into<Body>,
    ) -> Reply {
        let mut request = Request::builder().method(method.clone()).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(body.into())
            .unwrap_or_else(|e| panic!("bad request {uri}: {e}"));
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|e| match e {});
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap_or_else(|e| panic!("{method} {uri}: cannot read the body: {e}"));
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{method} {uri}: body is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Reply { status, body }
    }

    /// A read with the right token.
    async fn get(&self, uri: &str) -> Reply {
        self.send(Method::GET, uri, Some(TOKEN), Body::empty())
            .await
    }

    /// A read without a token.
    async fn anonymous(&self, uri: &str) -> Reply {
        self.send(Method::GET, uri, None, Body::empty()).await
    }

    /// A call with the right token.
    async fn call(&self, method: Method, uri: &str, body: impl Into<Body>) -> Reply {
        self.send(method, uri, Some(TOKEN), body).await
    }

    async fn upload(&self, name: &str, bytes: &[u8]) -> Reply {
        self.call(Method::POST, &format!("/v1/plugins/{name}"), bytes.to_vec())
            .await
    }

    async fn put_pipeline(&self, name: &str, body: Value) -> Reply {
        self.call(
            Method::PUT,
            &format!("/v1/pipelines/{name}"),
            body.to_string(),
        )
        .await
    }
}

/// Asserts `reply` is the error `code` with `status`, its message holding
/// every one of `phrases`.
#[track_caller]
fn assert_error(reply: &Reply, status: StatusCode, code: &str, phrases: &[&str]) {
    assert_eq!(reply.status, status, "{reply:?}");
    let error = reply
        .body
        .as_object()
        .and_then(|o| o.get("error"))
        .unwrap_or_else(|| panic!("no `error` in {reply:?}"));
    let keys: Vec<&String> = error
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    assert_eq!(keys, ["code", "message"], "{reply:?}");
    assert_eq!(error["code"], code, "{reply:?}");
    let message = error["message"]
        .as_str()
        .unwrap_or_else(|| panic!("message is not a string: {reply:?}"));
    for phrase in phrases {
        assert!(
            message.contains(phrase),
            "message {message:?} lacks {phrase:?}"
        );
    }
}

fn plugin_bytes(name: &str) -> Vec<u8> {
    let path = kwasm_tests::plugin_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The versions listed in a plugin body.
fn versions(plugin: &Value) -> Vec<u64> {
    plugin["versions"]
        .as_array()
        .map(|v| v.iter().filter_map(|v| v["version"].as_u64()).collect())
        .unwrap_or_default()
}

/// A stored pipeline with every default filled, as the API answers it.
/// A stored pipeline: the API stores the defaults resolved, so every host
/// and reader sees the same group and dead-letter topic.
fn stored(name: &str, plugin: &str, paused: bool) -> Value {
    json!({
        "name": name, "plugin": plugin, "config": {}, "inputs": ["in"], "input_regex": null,
        "output": "out", "group_id": format!("kwasm-{name}"), "dead_letter_topic": format!("{name}.dlq"),
        "retry": {"max_attempts": 3, "initial_backoff_ms": 100, "max_backoff_ms": 5000},
        "batch": {"max_messages": 512, "max_wait_ms": 20},
        "extra_outputs": [], "outputs_regex": null, "allow_loop": false, "limits": null,
        "delivery": "at-least-once",
        "transaction": {"commit_interval_ms": 100, "timeout_ms": 60000},
        "paused": paused, "source": "api",
    })
}

/// Every `METHOD /path` named in docs/api.md's tables.
fn documented_calls() -> Vec<(String, String)> {
    let doc = include_str!("../docs/api.md");
    let calls: Vec<(String, String)> = doc
        .split('`')
        .filter_map(|span| {
            let (method, path) = span.split_once(' ')?;
            let known = ["GET", "POST", "PUT", "DELETE"].contains(&method) && path.starts_with('/');
            known.then(|| (method.to_lowercase(), path.to_owned()))
        })
        .collect();
    assert!(
        calls.len() >= 15,
        "expected every call of docs/api.md, found {calls:?}"
    );
    calls
}

#[tokio::test(flavor = "multi_thread")]
async fn health_metrics_openapi_and_unknown_paths() {
    let api = Api::new().await;

    let health = api.get("/healthz").await;
    assert_eq!(
        (health.status, health.body),
        (StatusCode::OK, json!({"status": "ok"}))
    );

    // No manager has reconciled: the registry is caught up, pipelines are not.
    let ready = api.get("/readyz").await;
    assert_error(&ready, StatusCode::SERVICE_UNAVAILABLE, "unavailable", &[]);
    assert_eq!(
        ready.body["error"]["message"],
        "not ready: pipelines not started yet"
    );

    let metrics = api.get("/metrics").await;
    assert_error(
        &metrics,
        StatusCode::NOT_FOUND,
        "not_found",
        &["metrics are not enabled"],
    );

    let openapi = api.get("/v1/openapi.json").await;
    assert_eq!(openapi.status, StatusCode::OK);
    assert_eq!(openapi.body["openapi"], "3.0.3");
    for (method, path) in documented_calls() {
        assert!(
            openapi.body["paths"][&path][&method].is_object(),
            "openapi.json lacks `{method} {path}` of docs/api.md"
        );
    }

    for (method, uri) in [
        (Method::GET, "/nope"),
        (Method::GET, "/v2/plugins"),
        (Method::POST, "/v1/nope"),
    ] {
        let reply = api
            .send(method.clone(), uri, Some(TOKEN), Body::empty())
            .await;
        assert_error(
            &reply,
            StatusCode::NOT_FOUND,
            "not_found",
            &["no such endpoint"],
        );
        // Without the token the API does not even say what exists.
        let reply = api.send(method, uri, None, Body::empty()).await;
        assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthorized", &[]);
    }
}

/// Tokens that must all be refused: none, a wrong one, a prefix of the
/// token, the token with a trailing character, and an empty bearer.
const WRONG_TOKENS: [Option<&str>; 6] = [
    None,
    Some("wrong"),
    Some("secre"),
    Some("secret2"),
    Some("secret "),
    Some(""),
];

#[track_caller]
fn assert_unauthorized(reply: &Reply) {
    assert_error(
        reply,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        &["Authorization: Bearer <token>"],
    );
}

/// Every documented call with its path parameters filled in (`{name}` as
/// `orders` for pipelines and `p` for plugins, `{version}` as 1).
fn concrete_calls() -> Vec<(Method, String)> {
    documented_calls()
        .into_iter()
        .map(|(method, path)| {
            let method = Method::from_bytes(method.to_uppercase().as_bytes())
                .unwrap_or_else(|e| panic!("{method}: {e}"));
            let path = if path.starts_with("/v1/plugins") {
                path.replace("{name}", "p")
            } else {
                path.replace("{name}", "orders")
            };
            (method, path.replace("{version}", "1"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_v1_call_needs_the_exact_token_and_probes_do_not() {
    let api = Api::new().await;
    let passthrough = plugin_bytes("passthrough");
    let pipeline = json!({"plugin": "p@1", "inputs": ["in"], "output": "out"}).to_string();
    let calls = concrete_calls();
    assert!(
        calls.iter().filter(|(m, _)| m == Method::GET).count() >= 8,
        "{calls:?}"
    );
    for (method, uri) in &calls {
        let body = match (method.as_str(), uri.as_str()) {
            ("POST", "/v1/plugins/p") => passthrough.clone(),
            ("PUT", _) => pipeline.clone().into_bytes(),
            _ => Vec::new(),
        };
        for token in WRONG_TOKENS {
            let reply = api.send(method.clone(), uri, token, body.clone()).await;
            if uri.starts_with("/v1/") {
                assert_unauthorized(&reply);
            } else {
                assert_ne!(reply.status, StatusCode::UNAUTHORIZED, "{method} {uri}");
            }
        }
    }
    // A token that is not a bearer token is refused too.
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/plugins/p")
        .header(header::AUTHORIZATION, TOKEN)
        .body(Body::from(passthrough.clone()))
        .unwrap_or_else(|e| panic!("{e}"));
    let response = api
        .router
        .clone()
        .oneshot(request)
        .await
        .unwrap_or_else(|e| match e {});
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Nothing was stored by the refused calls.
    assert_eq!(api.get("/v1/plugins").await.body, json!({"plugins": []}));
    assert_eq!(
        api.get("/v1/pipelines").await.body,
        json!({"pipelines": []})
    );

    // The right token proceeds.
    assert_eq!(
        api.upload("p", &passthrough).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        api.call(Method::PUT, "/v1/pipelines/orders", pipeline)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        api.call(Method::POST, "/v1/pipelines/orders/pause", Body::empty())
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        api.call(Method::POST, "/v1/pipelines/orders/resume", Body::empty())
            .await
            .status,
        StatusCode::OK
    );

    // Every read answers with the token, and none without it, now that
    // there is something to read.
    let reads: Vec<&String> = calls
        .iter()
        .filter(|(m, u)| m == Method::GET && u.starts_with("/v1/"))
        .map(|(_, u)| u)
        .collect();
    for uri in &reads {
        assert_eq!(api.get(uri).await.status, StatusCode::OK, "GET {uri}");
        for token in WRONG_TOKENS {
            let reply = api.send(Method::GET, uri, token, Body::empty()).await;
            assert_unauthorized(&reply);
        }
    }
    // The probes stay open: /healthz 200, /readyz its 503 (not ready), no
    // 401 from /metrics either.
    assert_eq!(api.anonymous("/healthz").await.status, StatusCode::OK);
    assert_eq!(
        api.anonymous("/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        api.anonymous("/metrics").await.status,
        StatusCode::NOT_FOUND
    );

    assert_eq!(
        api.call(Method::DELETE, "/v1/pipelines/orders", Body::empty())
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.call(Method::DELETE, "/v1/plugins/p/versions/1", Body::empty())
            .await
            .status,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_make_versions_and_the_same_bytes_keep_theirs() {
    let api = Api::new().await;
    let passthrough = plugin_bytes("passthrough");
    let misbehave = plugin_bytes("misbehave");
    let before = now_ms();

    let first = api.upload("p", &passthrough).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let created_ms = first.body["created_ms"]
        .as_i64()
        .unwrap_or_else(|| panic!("no created_ms: {first:?}"));
    assert!(
        (before..=now_ms()).contains(&created_ms),
        "created_ms {created_ms} is not the upload time"
    );
    let v1 = json!({"version": 1, "digest": sha256_hex(&passthrough), "size_bytes": passthrough.len(), "created_ms": created_ms, "abi": "component"});
    assert_eq!(
        first.body,
        json!({"name": "p", "version": 1, "digest": v1["digest"], "size_bytes": v1["size_bytes"], "created_ms": created_ms, "abi": "component"})
    );

    let again = api.upload("p", &passthrough).await;
    assert_eq!(
        (again.status, &again.body),
        (StatusCode::OK, &first.body),
        "the same bytes keep their version"
    );

    let second = api.upload("p", &misbehave).await;
    assert_eq!(second.status, StatusCode::CREATED, "{second:?}");
    assert_eq!(second.body["version"], 2);
    assert_eq!(second.body["digest"], sha256_hex(&misbehave));
    assert_eq!(second.body["size_bytes"], misbehave.len());
    let v2 = json!({"version": 2, "digest": second.body["digest"], "size_bytes": second.body["size_bytes"], "created_ms": second.body["created_ms"], "abi": "component"});

    let one = api.get("/v1/plugins/p").await;
    assert_eq!(
        (one.status, &one.body),
        (StatusCode::OK, &json!({"name": "p", "versions": [v1, v2]}))
    );
    assert_eq!(versions(&one.body), [1, 2]);
    let all = api.get("/v1/plugins").await;
    assert_eq!(
        (all.status, all.body),
        (StatusCode::OK, json!({"plugins": [one.body]}))
    );

    assert_error(
        &api.get("/v1/plugins/nope").await,
        StatusCode::NOT_FOUND,
        "not_found",
        &["no plugin named `nope`"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_uploads_are_refused_and_store_nothing() {
    let api = Api::new().await;
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let cases: [(&str, Vec<u8>, &[&str]); 4] = [
        ("random bytes", random, &["not a WebAssembly file"]),
        (
            "a core module",
            b"\0asm\x01\0\0\0".to_vec(),
            &["core WebAssembly module", "wasm32-wasip2"],
        ),
        (
            "another world",
            plugin_bytes("other-world"),
            &[
                "not a kwasm plugin",
                "does not export `kwasm:plugin/handler@0.1.0`",
            ],
        ),
        ("an empty body", Vec::new(), &["the body is empty"]),
    ];
    for (what, bytes, phrases) in cases {
        let reply = api.upload("p", &bytes).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{what}: {reply:?}");
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid", phrases);
    }

    let bad_name = api.upload("bad%20name", &plugin_bytes("passthrough")).await;
    assert_error(
        &bad_name,
        StatusCode::BAD_REQUEST,
        "invalid",
        &["plugin name `bad name`", "[a-zA-Z0-9._-]"],
    );

    assert_eq!(api.get("/v1/plugins").await.body, json!({"plugins": []}));
    assert_error(
        &api.get("/v1/plugins/p").await,
        StatusCode::NOT_FOUND,
        "not_found",
        &[],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_over_the_size_limit_answer_413() {
    let api = Api::with(registry(Some(1000)).await, ManagerView::default());
    let passthrough = plugin_bytes("passthrough");
    assert!(passthrough.len() > 1000);
    let reply = api.upload("p", &passthrough).await;
    assert_error(
        &reply,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        &["limit of 1000 bytes", "max_plugin_bytes"],
    );
    assert_eq!(api.get("/v1/plugins").await.body, json!({"plugins": []}));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_announced_over_the_limit_is_refused_before_its_body_is_read() {
    let api = Api::with(registry(Some(1000)).await, ManagerView::default());
    // The announced length alone decides: the (small) body is never read.
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/plugins/p")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_LENGTH, 200u64 << 20)
        .body(Body::from(vec![0u8; 10]))
        .unwrap_or_else(|e| panic!("{e}"));
    let response = api
        .router
        .clone()
        .oneshot(request)
        .await
        .unwrap_or_else(|e| match e {});
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let body: Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body["error"]["code"], "too_large", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("registry.max_plugin_bytes")),
        "{body}"
    );
    assert_eq!(api.get("/v1/plugins").await.body, json!({"plugins": []}));
}

/// A body streamed in chunks with no `Content-Length`, as `curl -T -` or a
/// proxy sends it: `chunks` chunks of `chunk` bytes.
fn streamed_body(chunks: usize, chunk: Vec<u8>) -> Body {
    let chunk = bytes::Bytes::from(chunk);
    Body::from_stream(futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn json_bodies_over_the_limit_answer_413_and_store_nothing() {
    let api = Api::new().await;
    assert_eq!(
        api.upload("p", &plugin_bytes("passthrough")).await.status,
        StatusCode::CREATED
    );
    // Just over 512 KiB, and 20 MB (the size that used to reach the broker
    // and come back as a 503): a big plugin config.
    for size in [(512 << 10) + 1, 20_000_000] {
        let body = json!({
            "plugin": "p@1", "inputs": ["in"], "output": "out",
            "config": {"blob": "x".repeat(size)},
        });
        let reply = api.put_pipeline("orders", body).await;
        assert_error(
            &reply,
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &["limit of 524288 bytes"],
        );
    }
    // The same without a Content-Length: cut off while streaming.
    let mut start =
        br#"{"plugin": "p@1", "inputs": ["in"], "output": "out", "config": {"blob": ""#.to_vec();
    start.resize(64 << 10, b'x');
    let request = Request::builder()
        .method(Method::PUT)
        .uri("/v1/pipelines/orders")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(streamed_body(1600, start))
        .unwrap_or_else(|e| panic!("{e}"));
    let response = api
        .router
        .clone()
        .oneshot(request)
        .await
        .unwrap_or_else(|e| match e {});
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // A body just under the limit is read and stored: the limit is on the
    // bytes sent (here mostly JSON whitespace), the pipeline's own fields
    // have their own bounds.
    let body = format!(
        "{}{}",
        json!({"plugin": "p@1", "inputs": ["in"], "output": "out"}),
        " ".repeat(500 << 10)
    );
    let reply = api.call(Method::PUT, "/v1/pipelines/big", body).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let names: Vec<Value> = api.get("/v1/pipelines").await.body["pipelines"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["name"].clone())
        .collect();
    assert_eq!(names, [json!("big")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelines_are_stored_listed_paused_resumed_and_deleted() {
    let api = Api::new().await;
    assert_eq!(
        api.upload("p", &plugin_bytes("passthrough")).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        api.upload("p", &plugin_bytes("misbehave")).await.status,
        StatusCode::CREATED
    );

    let put = api
        .put_pipeline(
            "orders",
            json!({"plugin": "p@1", "inputs": ["in"], "output": "out"}),
        )
        .await;
    assert_eq!(
        (put.status, &put.body),
        (StatusCode::OK, &stored("orders", "p@1", false))
    );

    // Without a version the newest is stored, by number.
    let newest = api
        .put_pipeline(
            "newest",
            json!({"plugin": "p", "inputs": ["in"], "output": "out"}),
        )
        .await;
    assert_eq!(
        (newest.status, &newest.body),
        (StatusCode::OK, &stored("newest", "p@2", false))
    );

    assert_error(
        &api.put_pipeline(
            "x",
            json!({"plugin": "nope@1", "inputs": ["in"], "output": "out"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        &["no plugin `nope@1`"],
    );
    assert_error(
        &api.put_pipeline(
            "x",
            json!({"plugin": "p@9", "inputs": ["in"], "output": "out"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        &["no plugin `p@9`"],
    );
    let not_json = api
        .call(Method::PUT, "/v1/pipelines/x", "{\"plugin\": ")
        .await;
    assert_error(
        &not_json,
        StatusCode::BAD_REQUEST,
        "invalid",
        &["invalid pipeline JSON"],
    );
    assert_error(
        &api.put_pipeline(
            "x",
            json!({"plugin": "p@1", "inputs": ["in"], "output": "out", "bogus": 1}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid",
        &["unknown field `bogus`"],
    );
    assert_error(
        &api.put_pipeline("x", json!({"plugin": "p@1", "output": "out"}))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid",
        &["`inputs`", "input_regex"],
    );
    assert_error(
        &api.put_pipeline("x", json!({"plugin": "p@1", "inputs": ["in"], "output": "out", "retry": {"max_attempts": 0}})).await,
        StatusCode::BAD_REQUEST, "invalid", &["`retry.max_attempts`", "between 1 and 100"],
    );
    assert_error(
        &api.put_pipeline(
            "x",
            json!({"name": "y", "plugin": "p@1", "inputs": ["in"], "output": "out"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid",
        &["pipeline `y`", "path `x`"],
    );
    assert_error(
        &api.put_pipeline(
            "x",
            json!({"plugin": "p@one", "inputs": ["in"], "output": "out"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid",
        &["must be a number"],
    );
    assert_error(
        &api.put_pipeline(
            "bad%20name",
            json!({"plugin": "p@1", "inputs": ["in"], "output": "out"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid",
        &["pipeline name `bad name`"],
    );

    let list = api.get("/v1/pipelines").await;
    assert_eq!(
        (list.status, list.body),
        (
            StatusCode::OK,
            json!({"pipelines": [stored("newest", "p@2", false), stored("orders", "p@1", false)]})
        )
    );
    let one = api.get("/v1/pipelines/orders").await;
    assert_eq!(
        (one.status, one.body),
        (StatusCode::OK, stored("orders", "p@1", false))
    );
    assert_error(
        &api.get("/v1/pipelines/x").await,
        StatusCode::NOT_FOUND,
        "not_found",
        &["no pipeline named `x`"],
    );

    let paused = api
        .call(Method::POST, "/v1/pipelines/orders/pause", Body::empty())
        .await;
    assert_eq!(
        (paused.status, paused.body),
        (StatusCode::OK, stored("orders", "p@1", true))
    );
    assert_eq!(
        api.get("/v1/pipelines/orders").await.body,
        stored("orders", "p@1", true)
    );
    // An update keeps the pause.
    let updated = api
        .put_pipeline(
            "orders",
            json!({"plugin": "p@2", "inputs": ["in"], "output": "out"}),
        )
        .await;
    assert_eq!(
        (updated.status, updated.body),
        (StatusCode::OK, stored("orders", "p@2", true))
    );
    let resumed = api
        .call(Method::POST, "/v1/pipelines/orders/resume", Body::empty())
        .await;
    assert_eq!(
        (resumed.status, resumed.body),
        (StatusCode::OK, stored("orders", "p@2", false))
    );
    assert_eq!(
        api.get("/v1/pipelines/orders").await.body,
        stored("orders", "p@2", false)
    );
    for action in ["pause", "resume"] {
        let reply = api
            .call(
                Method::POST,
                &format!("/v1/pipelines/x/{action}"),
                Body::empty(),
            )
            .await;
        assert_error(
            &reply,
            StatusCode::NOT_FOUND,
            "not_found",
            &["no pipeline named `x`"],
        );
    }

    let deleted = api
        .call(Method::DELETE, "/v1/pipelines/orders", Body::empty())
        .await;
    assert_eq!(
        (deleted.status, deleted.body),
        (StatusCode::NO_CONTENT, Value::Null)
    );
    assert_error(
        &api.get("/v1/pipelines/orders").await,
        StatusCode::NOT_FOUND,
        "not_found",
        &["no pipeline named `orders`"],
    );
    assert_error(
        &api.call(Method::DELETE, "/v1/pipelines/orders", Body::empty())
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        &["no pipeline named `orders`"],
    );
    assert_eq!(
        api.get("/v1/pipelines").await.body,
        json!({"pipelines": [stored("newest", "p@2", false)]})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_version_in_use_cannot_be_deleted() {
    let api = Api::new().await;
    assert_eq!(
        api.upload("p", &plugin_bytes("passthrough")).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        api.upload("p", &plugin_bytes("misbehave")).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        api.put_pipeline(
            "orders",
            json!({"plugin": "p@1", "inputs": ["in"], "output": "out"})
        )
        .await
        .status,
        StatusCode::OK
    );

    let in_use = api
        .call(Method::DELETE, "/v1/plugins/p/versions/1", Body::empty())
        .await;
    assert_error(
        &in_use,
        StatusCode::CONFLICT,
        "conflict",
        &["plugin `p` version 1", "pipeline `orders`"],
    );
    assert_eq!(versions(&api.get("/v1/plugins/p").await.body), [1, 2]);

    for uri in ["/v1/plugins/p/versions/3", "/v1/plugins/nope/versions/1"] {
        let reply = api.call(Method::DELETE, uri, Body::empty()).await;
        assert_error(&reply, StatusCode::NOT_FOUND, "not_found", &["no version"]);
    }

    assert_eq!(
        api.call(Method::DELETE, "/v1/pipelines/orders", Body::empty())
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let deleted = api
        .call(Method::DELETE, "/v1/plugins/p/versions/1", Body::empty())
        .await;
    assert_eq!(
        (deleted.status, deleted.body),
        (StatusCode::NO_CONTENT, Value::Null)
    );
    assert_eq!(versions(&api.get("/v1/plugins/p").await.body), [2]);
    assert_error(
        &api.call(Method::DELETE, "/v1/plugins/p/versions/1", Body::empty())
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        &["no version 1 of plugin `p`"],
    );
    // The pipeline that named it is gone, and the version cannot be named again.
    assert_error(
        &api.put_pipeline(
            "orders",
            json!({"plugin": "p@1", "inputs": ["in"], "output": "out"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        &["no plugin `p@1`"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn assignments_and_members_of_a_host_running_nothing() {
    let api = Api::new().await;
    let assignments = api.get("/v1/assignments").await;
    assert_eq!(
        (assignments.status, assignments.body),
        (StatusCode::OK, json!({"host": HOST, "pipelines": []}))
    );

    assert_eq!(
        api.upload("p", &plugin_bytes("passthrough")).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        api.put_pipeline(
            "orders",
            json!({"plugin": "p@1", "inputs": ["in"], "output": "out"})
        )
        .await
        .status,
        StatusCode::OK
    );
    let members = api.get("/v1/pipelines/orders/members").await;
    assert_eq!(
        (members.status, members.body),
        (
            StatusCode::OK,
            // No such group: the broker says `dead`, and no protocol.
            json!({
                "pipeline": "orders",
                "group_id": "kwasm-orders",
                "group_state": "dead",
                "group_protocol": null,
                "members": []
            })
        )
    );
    assert_error(
        &api.get("/v1/pipelines/nope/members").await,
        StatusCode::NOT_FOUND,
        "not_found",
        &["no pipeline named `nope`"],
    );

    // A pipeline stored, not run: still nothing assigned here.
    assert_eq!(
        api.get("/v1/assignments").await.body,
        json!({"host": HOST, "pipelines": []})
    );
}

/// A manager that is built but never run still knows its config-file
/// pipelines' names, which is all the API needs to refuse changing them.
#[tokio::test(flavor = "multi_thread")]
async fn config_file_pipelines_are_read_only_through_the_api() {
    let registry = registry(None).await;
    let kafka = kafka();
    let producer = OutputProducer::new(&producer_config(&kafka, HOST))
        .unwrap_or_else(|e| panic!("producer: {e}"));
    let deps = PipelineDeps {
        host: HostConfig::default(),
        kafka,
        producer,
        permits: Arc::new(tokio::sync::Semaphore::new(1)),
        runtime: tokio::runtime::Handle::current(),
        control: ControlPlane::new(registry.config()),
        cancel: Default::default(),
    };
    let spec = PipelineSpec {
        name: "from-file".into(),
        plugin: "p@1".into(),
        config: Default::default(),
        inputs: vec!["in".into()],
        input_regex: None,
        output: "out".into(),
        group_id: None,
        dead_letter_topic: None,
        retry: Default::default(),
        batch: Default::default(),
        limits: None,
        ..PipelineSpec::default()
    };
    let manager = PipelineManager::new(
        RUNTIME.clone(),
        Some(registry.clone()),
        deps,
        vec![spec],
        Limits::default(),
    );
    let api = Api::with(registry, manager.view());
    assert_eq!(
        api.upload("p", &plugin_bytes("passthrough")).await.status,
        StatusCode::CREATED
    );

    let phrases = ["pipeline `from-file` is declared in the host's config file"];
    let put = api
        .put_pipeline(
            "from-file",
            json!({"plugin": "p@1", "inputs": ["in"], "output": "out"}),
        )
        .await;
    assert_error(&put, StatusCode::CONFLICT, "conflict", &phrases);
    for (method, uri) in [
        (Method::DELETE, "/v1/pipelines/from-file"),
        (Method::POST, "/v1/pipelines/from-file/pause"),
        (Method::POST, "/v1/pipelines/from-file/resume"),
    ] {
        assert_error(
            &api.call(method, uri, Body::empty()).await,
            StatusCode::CONFLICT,
            "conflict",
            &phrases,
        );
    }
    // Nothing reached the registry.
    assert_eq!(
        api.get("/v1/pipelines").await.body,
        json!({"pipelines": []})
    );
}

/// The broker, not the published records, says who is in a group: a
/// consumer that never published anything shows up with its member id,
/// client id and the partitions of its assignment.
#[tokio::test(flavor = "multi_thread")]
async fn members_are_read_from_the_broker_with_their_assignments() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let api = Api::new().await;
    let input = kwasm_tests::unique("members-in");
    let group = kwasm_tests::unique("members-group");
    let topic = input.clone();
    tokio::task::spawn_blocking(move || kwasm_tests::create_topic(&topic, 2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        api.upload("p", &plugin_bytes("passthrough")).await.status,
        StatusCode::CREATED
    );
    let put = api
        .put_pipeline(
            "orders",
            json!({"plugin": "p@1", "inputs": [input], "output": "out", "group_id": group}),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{put:?}");

    // An outside member of the pipeline's group, holding both partitions.
    let (group_id, topic) = (group.clone(), input.clone());
    let consumer = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = kwasm_tests::kafka::consumer_config(Some(&group_id))
            .set("client.id", "outside-host")
            .create()
            .unwrap_or_else(|e| panic!("consumer: {e}"));
        consumer
            .subscribe(&[&topic])
            .unwrap_or_else(|e| panic!("subscribe: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while consumer.assignment().map_or(0, |a| a.count()) < 2 {
            assert!(Instant::now() < deadline, "no assignment within 30 s");
            let _ = consumer.poll(Duration::from_millis(100));
        }
        consumer
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    let members = api.get("/v1/pipelines/orders/members").await;
    assert_eq!(members.status, StatusCode::OK, "{members:?}");
    let list = members.body["members"]
        .as_array()
        .unwrap_or_else(|| panic!("{members:?}"));
    assert_eq!(list.len(), 1, "{members:?}");
    let m = &list[0];
    assert_eq!(
        (&m["host"], &m["client_id"], &m["source"]),
        (
            &json!("outside-host"),
            &json!("outside-host"),
            &json!("broker")
        ),
        "{members:?}"
    );
    assert!(
        m["member_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("outside-host-")),
        "{members:?}"
    );
    assert!(
        m["client_host"].as_str().is_some_and(|h| !h.is_empty()),
        "{members:?}"
    );
    assert_eq!(
        m["partitions"],
        json!([{"topic": input, "partition": 0}, {"topic": input, "partition": 1}]),
        "{members:?}"
    );
    assert_eq!(
        (
            &members.body["group_id"],
            &members.body["group_state"],
            &members.body["group_protocol"],
            &m["target_partitions"]
        ),
        (
            &json!(group),
            &json!("stable"),
            &json!("classic"),
            &json!(null)
        ),
        "{members:?}"
    );
    drop(consumer);
}

/// Issue 15: the dashboard's files load without the token (a browser has
/// no way to send it), under relative URLs; what they read still needs it.
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_loads_without_the_token_and_its_reads_need_it() {
    let api = Api::new().await;
    let raw = |uri: &str| {
        let request = Request::builder()
            .uri(uri)
            .body(Body::empty())
            .unwrap_or_else(|e| panic!("{uri}: {e}"));
        api.router.clone().oneshot(request)
    };
    let redirect = raw("/ui").await.unwrap_or_else(|e| match e {});
    assert_eq!(redirect.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        redirect.headers()[header::LOCATION],
        "ui/",
        "relative, so a path prefix in front of the host is kept"
    );
    for (uri, content_type, starts) in [
        ("/ui/", "text/html; charset=utf-8", "<!doctype html>"),
        ("/ui/app.js", "text/javascript; charset=utf-8", "//"),
        ("/ui/style.css", "text/css; charset=utf-8", ":root"),
    ] {
        let response = raw(uri).await.unwrap_or_else(|e| match e {});
        assert_eq!(response.status(), StatusCode::OK, "{uri}");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            content_type,
            "{uri}"
        );
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap_or_else(|e| panic!("{uri}: {e}"));
        assert!(
            String::from_utf8_lossy(&body).starts_with(starts),
            "{uri}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let missing = api
        .send(Method::GET, "/ui/secrets.txt", None, Vec::new())
        .await;
    assert_error(
        &missing,
        StatusCode::NOT_FOUND,
        "not_found",
        &["secrets.txt"],
    );
    for uri in [
        "/v1/pipelines/p/progress",
        "/v1/pipelines/p/dead-letters",
        "/v1/pipelines/p/logs",
    ] {
        let reply = api.send(Method::GET, uri, None, Vec::new()).await;
        assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthorized", &[]);
        let reply = api.send(Method::GET, uri, Some(TOKEN), Vec::new()).await;
        assert_error(&reply, StatusCode::NOT_FOUND, "not_found", &["`p`"]);
    }
    let reply = api
        .send(
            Method::GET,
            "/v1/pipelines/p/dead-letters?limit=0",
            Some(TOKEN),
            Vec::new(),
        )
        .await;
    assert_error(
        &reply,
        StatusCode::BAD_REQUEST,
        "invalid",
        &["limit must be between 1 and 100, not 0"],
    );
}
