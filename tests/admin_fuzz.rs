//! A property test of the admin API (proptest, in-process through
//! `tower::ServiceExt::oneshot`, over a real registry on the broker
//! `scripts/test` starts): every malformed request answers a 4xx with the
//! API's one JSON error shape, never a 5xx or another shape, and stores
//! nothing.
//!
//! "Malformed" is built to be malformed whatever the generator draws: a
//! wrong or missing token on any call; garbage path parameters (names and
//! versions that exist nowhere, odd bytes, over-long); bodies that are not
//! JSON, JSON of the wrong shape, or pipelines naming no existing plugin;
//! uploads that are not components; methods a path does not serve. The
//! registry holds one plugin (`p`) and one pipeline (`orders`) that the
//! malformed requests may name only with a wrong token, so the state after
//! the run must equal the state before it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use kwasm_host::admin::{AdminState, GroupDescriber, router};
use kwasm_host::config::KafkaConfig;
use kwasm_host::pipeline::manager::ManagerView;
use kwasm_host::registry::{Registry, RegistryConfig};
use kwasm_host::runtime::{Runtime, RuntimeConfig};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: &str = "fuzz-token";
/// Cases per run: each is one request in-process; the run stays well under
/// a minute.
const CASES: u32 = 2000;

/// One generated request.
#[derive(Debug, Clone)]
struct Malformed {
    method: Method,
    path: String,
    token: Option<String>,
    content_type: Option<&'static str>,
    /// A `Content-Length` header that may not match the body (in-process,
    /// nothing between the client and the router checks it).
    content_length: Option<String>,
    body: Vec<u8>,
}

/// Names that exist nowhere: odd characters, dots, reserved-looking names,
/// the empty string, very long ones. Percent-encoded into the path.
fn junk_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("-".to_owned()),
        Just("_kwasm_plugins".to_owned()),
        Just("x".repeat(5000)),
        proptest::collection::vec(any::<char>(), 1..24).prop_map(|c| c.into_iter().collect()),
        proptest::collection::vec(any::<u8>(), 1..16).prop_map(hex::encode),
    ]
    .prop_filter("must not name what exists", |n| n != "p" && n != "orders")
}

/// A path segment: the name escaped, or raw percent-escapes of arbitrary
/// bytes (often not UTF-8 once decoded).
fn junk_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => junk_name().prop_map(|n| escape(&n)),
        1 => proptest::collection::vec(any::<u8>(), 1..8)
            .prop_map(|b| b.iter().map(|b| format!("%{b:02X}")).collect()),
    ]
}

/// Path-segment escaping for any string (every byte outside
/// `[A-Za-z0-9._-]` as `%XX`).
fn escape(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn junk_version() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        Just("99999999999999999999".to_owned()),
        Just("1.5".to_owned()),
        Just("latest".to_owned()),
        Just(String::new()),
    ]
}

/// JSON bodies a PUT must refuse: not JSON, wrong types, unknown fields,
/// invalid values, or a plugin that does not exist.
fn bad_pipeline_body() -> impl Strategy<Value = Vec<u8>> {
    let wrong_type = prop_oneof![
        Just(json!({"plugin": 7, "inputs": ["in"], "output": "out"})),
        Just(json!({"plugin": "p@1", "inputs": "in", "output": "out"})),
        Just(json!({"plugin": "p@1", "inputs": ["in"], "output": ["out"]})),
        Just(json!({"plugin": "p@1", "inputs": ["in"], "output": "out", "batch": "big"})),
        Just(json!({"plugin": "p@1", "inputs": ["in"], "output": "out", "retry": {"max_attempts": -1}})),
        Just(json!({"plugin": "p@1", "inputs": ["in"], "output": "out", "config": {"a": 1}})),
        Just(json!({"plugin": "p@1", "inputs": ["in"], "output": "out", "unknown": true})),
        Just(json!({"plugin": "p@1", "inputs": [], "output": "out"})),
        Just(json!({"plugin": "p@1", "inputs": ["in"], "output": "bad topic"})),
        Just(json!({"plugin": "p@1", "inputs": ["in"], "output": "out", "retry": {"max_attempts": 0}})),
        Just(json!({"plugin": "p@1", "inputs": ["in"], "output": "out", "batch": {"max_messages": 0}})),
        Just(json!({"plugin": "nope@3", "inputs": ["in"], "output": "out"})),
        Just(json!({"plugin": "p@999", "inputs": ["in"], "output": "out"})),
        Just(json!({"plugin": "p@x", "inputs": ["in"], "output": "out"})),
        Just(json!([1, 2, 3])),
        Just(json!(null)),
        Just(json!("p@1")),
    ]
    .prop_map(|v| v.to_string().into_bytes());
    let not_json = proptest::collection::vec(any::<u8>(), 0..512)
        .prop_filter("must not parse", |b| {
            serde_json::from_slice::<Value>(b).is_err()
        });
    prop_oneof![wrong_type, not_json]
}

/// Requests that must be refused whatever the token: junk names and
/// bodies, unknown paths, unserved methods.
fn malformed_with_token() -> impl Strategy<Value = Malformed> {
    let token = Just(Some(TOKEN.to_owned()));
    let bytes = proptest::collection::vec(any::<u8>(), 0..2048);
    prop_oneof![
        // Uploads that are not kwasm components, to a fresh name.
        (junk_segment(), bytes.clone()).prop_map(|(n, b)| (
            Method::POST,
            format!("/v1/plugins/{}", n),
            b,
            "application/wasm"
        )),
        // Uploads of junk to the existing plugin.
        bytes.clone().prop_map(|b| (
            Method::POST,
            "/v1/plugins/p".to_owned(),
            b,
            "application/wasm"
        )),
        // Pipelines that cannot be stored, under a fresh or the existing name.
        (
            prop_oneof![junk_segment(), Just("orders".to_owned())],
            bad_pipeline_body()
        )
            .prop_map(|(n, b)| (
                Method::PUT,
                format!("/v1/pipelines/{}", n),
                b,
                "application/json"
            )),
        // Deletes, pauses and reads of what does not exist.
        (junk_segment(), junk_version()).prop_map(|(n, v)| (
            Method::DELETE,
            format!("/v1/plugins/{}/versions/{}", n, escape(&v)),
            vec![],
            ""
        )),
        junk_version()
            .prop_filter("not an existing version", |v| v != "1")
            .prop_map(|v| (
                Method::DELETE,
                format!("/v1/plugins/p/versions/{}", escape(&v)),
                vec![],
                ""
            )),
        (
            junk_segment(),
            prop_oneof![Just(""), Just("/pause"), Just("/resume"), Just("/members")],
            prop_oneof![Just(Method::DELETE), Just(Method::POST), Just(Method::GET)]
        )
            .prop_map(|(n, tail, m)| (m, format!("/v1/pipelines/{}{tail}", n), vec![], "")),
        junk_segment().prop_map(|n| (Method::GET, format!("/v1/plugins/{}", n), vec![], "")),
        // Methods a path does not serve, and paths that do not exist.
        (
            prop_oneof![Just(Method::PATCH), Just(Method::PUT), Just(Method::DELETE)],
            prop_oneof![
                Just("/v1/plugins"),
                Just("/v1/pipelines"),
                Just("/v1/assignments"),
                Just("/v1/openapi.json")
            ]
        )
            .prop_map(|(m, p)| (m, p.to_owned(), vec![], "")),
        (junk_segment(), bytes).prop_map(|(n, b)| (Method::POST, format!("/v1/{}", n), b, "")),
    ]
    .prop_flat_map(move |(method, path, body, content_type)| {
        let length = prop_oneof![
            4 => Just(None),
            1 => prop_oneof![
                Just("abc".to_owned()),
                Just("-1".to_owned()),
                Just("99999999999999999999999".to_owned()),
                Just(u64::MAX.to_string()),
                (0u64..4096).prop_map(|n| n.to_string()),
            ]
            .prop_map(Some),
        ];
        (token.clone(), length).prop_map(move |(token, content_length)| Malformed {
            method: method.clone(),
            path: path.clone(),
            token,
            content_type: (!content_type.is_empty()).then_some(content_type),
            content_length,
            body: body.clone(),
        })
    })
}

/// Valid-looking calls on what exists, with a wrong or missing token.
fn with_wrong_token() -> impl Strategy<Value = Malformed> {
    let call = prop_oneof![
        Just((Method::DELETE, "/v1/pipelines/orders", Vec::new())),
        Just((Method::POST, "/v1/pipelines/orders/pause", Vec::new())),
        Just((Method::DELETE, "/v1/plugins/p/versions/1", Vec::new())),
        Just((
            Method::PUT,
            "/v1/pipelines/new",
            json!({"plugin": "p@1", "inputs": ["in"], "output": "out"})
                .to_string()
                .into_bytes()
        )),
        Just((Method::GET, "/v1/pipelines", Vec::new())),
        Just((Method::GET, "/v1/openapi.json", Vec::new())),
    ];
    let wrong = prop_oneof![
        Just(None),
        Just(Some(String::new())),
        Just(Some(TOKEN[..TOKEN.len() - 1].to_owned())),
        Just(Some(format!("{TOKEN}x"))),
        proptest::collection::vec(any::<char>(), 0..40).prop_map(|c| Some(c.into_iter().collect())),
    ]
    .prop_filter("must be wrong", |t| t.as_deref() != Some(TOKEN));
    (call, wrong).prop_map(|((method, path, body), token)| Malformed {
        method,
        path: path.to_owned(),
        token,
        content_type: None,
        content_length: None,
        body,
    })
}

fn kafka() -> KafkaConfig {
    KafkaConfig {
        brokers: kwasm_tests::brokers(),
        ..KafkaConfig::default()
    }
}

async fn registry() -> Registry {
    let config = RegistryConfig {
        plugins_topic: kwasm_tests::unique("fuzz-plugins"),
        pipelines_topic: kwasm_tests::unique("fuzz-pipelines"),
        members_topic: kwasm_tests::unique("fuzz-members"),
        ..RegistryConfig::default()
    };
    let registry = Registry::start(&kafka(), config, "fuzz-host")
        .await
        .unwrap_or_else(|e| panic!("cannot start the registry: {e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !registry.caught_up() {
        assert!(Instant::now() < deadline, "the registry did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    registry
}

/// Sends `r`; status and body bytes. `None` when the http crate itself
/// refuses to build the request (a control character in a generated
/// token): such a request never reaches a server.
async fn try_send(app: &Router, r: &Malformed) -> Option<(StatusCode, Vec<u8>)> {
    let mut request = Request::builder().method(r.method.clone()).uri(&r.path);
    if let Some(token) = &r.token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if let Some(content_type) = r.content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    if let Some(length) = &r.content_length {
        request = request.header(header::CONTENT_LENGTH, length);
    }
    let request = request.body(Body::from(r.body.clone())).ok()?;
    let response = app
        .clone()
        .oneshot(request)
        .await
        .unwrap_or_else(|e| match e {});
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap_or_else(|e| panic!("cannot read the answer: {e}"));
    Some((status, body.to_vec()))
}

async fn send(app: &Router, r: &Malformed) -> (StatusCode, Vec<u8>) {
    try_send(app, r)
        .await
        .unwrap_or_else(|| panic!("cannot build {r:?}"))
}

/// Why `answer` is not a 4xx in the API's error shape, if it is not.
fn shape_problem(status: StatusCode, body: &[u8]) -> Option<String> {
    if !status.is_client_error() {
        return Some(format!("status {status}"));
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Some(format!(
            "{status} body is not JSON: {:?}",
            String::from_utf8_lossy(body)
        ));
    };
    let keys: Vec<&String> = v
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    let error_keys: Vec<&String> = v["error"]
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    let ok = keys == ["error"]
        && error_keys == ["code", "message"]
        && v["error"]["code"].is_string()
        && v["error"]["message"].is_string();
    (!ok).then(|| format!("{status} body is not the error shape: {v}"))
}

/// What the registry holds, as the API lists it.
async fn snapshot(app: &Router) -> (Vec<u8>, Vec<u8>) {
    let get = |path: &str| Malformed {
        method: Method::GET,
        path: path.to_owned(),
        token: Some(TOKEN.to_owned()),
        content_type: None,
        content_length: None,
        body: Vec::new(),
    };
    let (s1, plugins) = send(app, &get("/v1/plugins")).await;
    let (s2, pipelines) = send(app, &get("/v1/pipelines")).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    (plugins, pipelines)
}

#[test]
fn malformed_requests_answer_4xx_in_the_error_shape_and_store_nothing() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kwasm-fuzz-cache")),
        ..RuntimeConfig::default()
    })
    .unwrap_or_else(|e| panic!("cannot start the runtime: {e}"));
    let app = rt.block_on(async {
        let app = router(AdminState {
            host_id: "fuzz-host".into(),
            view: ManagerView::default(),
            registry: Some(registry().await),
            runtime,
            token: Some(TOKEN.into()),
            metrics: None,
            groups: Some(
                GroupDescriber::for_control_plane(&kafka(), &RegistryConfig::default())
                    .expect("admin client"),
            ),
            logs: None,
        });
        let wasm =
            std::fs::read(kwasm_tests::plugin_path("passthrough")).expect("passthrough.wasm");
        let setup = [
            (Method::POST, "/v1/plugins/p", wasm),
            (
                Method::PUT,
                "/v1/pipelines/orders",
                json!({"plugin": "p@1", "inputs": ["in"], "output": "out"})
                    .to_string()
                    .into_bytes(),
            ),
        ];
        for (method, path, body) in setup {
            let (status, answer) = send(
                &app,
                &Malformed {
                    method,
                    path: path.into(),
                    token: Some(TOKEN.into()),
                    content_type: None,
                    content_length: None,
                    body,
                },
            )
            .await;
            assert!(
                status.is_success(),
                "setup {path}: {status} {}",
                String::from_utf8_lossy(&answer)
            );
        }
        app
    });
    let before = rt.block_on(snapshot(&app));

    let started = Instant::now();
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = prop_oneof![3 => malformed_with_token(), 1 => with_wrong_token()];
    let result = runner.run(&strategy, |request| {
        let Some((status, body)) = rt.block_on(try_send(&app, &request)) else {
            return Err(TestCaseError::reject("not a valid HTTP request"));
        };
        if let Some(problem) = shape_problem(status, &body) {
            return Err(TestCaseError::fail(format!(
                "{} {}: {problem}",
                request.method, request.path
            )));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let after = rt.block_on(snapshot(&app));
    println!(
        "{CASES} malformed requests in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        (
            String::from_utf8_lossy(&after.0),
            String::from_utf8_lossy(&after.1)
        ),
        (
            String::from_utf8_lossy(&before.0),
            String::from_utf8_lossy(&before.1)
        ),
        "a malformed request changed the registry"
    );
}
