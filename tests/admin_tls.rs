//! TLS on the admin listener (`host.admin_tls`): the listener `kwasm serve`
//! uses, with a self-signed certificate the test makes (rcgen), called over
//! https by a rustls client (ureq) that trusts only that certificate; a
//! plain-http client on the same port gets no HTTP answer.
//!
//! No broker: the API runs without a registry, which is all the health,
//! token and assignment calls need.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use kwasm_host::admin::listener::{AdminSetup, ListenError};
use kwasm_host::admin::{AdminState, router};
use kwasm_host::config::{AdminTlsConfig, HostConfig};
use kwasm_host::pipeline::manager::ManagerView;
use kwasm_host::runtime::{Runtime, RuntimeConfig};

const TOKEN: &str = "tls-token";

/// A certificate for `localhost` and 127.0.0.1 and its key, as PEM files.
struct SelfSigned {
    dir: tempfile::TempDir,
    cert_pem: String,
}

impl SelfSigned {
    fn new() -> SelfSigned {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap_or_else(|e| panic!("cannot make a certificate: {e}"));
        let dir = tempfile::tempdir().expect("temp dir");
        let cert_pem = made.cert.pem();
        std::fs::write(dir.path().join("cert.pem"), &cert_pem).expect("write cert.pem");
        std::fs::write(dir.path().join("key.pem"), made.signing_key.serialize_pem())
            .expect("write key.pem");
        SelfSigned { dir, cert_pem }
    }

    fn config(&self) -> AdminTlsConfig {
        AdminTlsConfig {
            cert_path: self.dir.path().join("cert.pem"),
            key_path: self.dir.path().join("key.pem"),
        }
    }
}

fn host_config(tls: AdminTlsConfig) -> HostConfig {
    HostConfig {
        id: "tls-host".into(),
        admin_listen: "127.0.0.1:0".into(),
        admin_token: Some(TOKEN.into()),
        admin_tls: Some(tls),
        ..HostConfig::default()
    }
}

fn state() -> AdminState {
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kwasm-tls-cache")),
        ..RuntimeConfig::default()
    })
    .unwrap_or_else(|e| panic!("cannot start the runtime: {e}"));
    AdminState {
        host_id: "tls-host".into(),
        view: ManagerView::default(),
        registry: None,
        runtime,
        token: Some(TOKEN.into()),
        metrics: None,
        groups: None,
        logs: None,
    }
}

/// An https client trusting only `cert_pem`; statuses are answers, not errors.
fn client(cert_pem: &str) -> ureq::Agent {
    let cert = ureq::tls::Certificate::from_pem(cert_pem.as_bytes())
        .unwrap_or_else(|e| panic!("cannot read the test certificate: {e}"));
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&[cert]))
        .build();
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build(),
    )
}

fn get(agent: &ureq::Agent, url: &str, token: Option<&str>) -> Result<(u16, String), ureq::Error> {
    let mut request = agent.get(url);
    if let Some(token) = token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = request.call()?;
    let status = response.status().as_u16();
    Ok((status, response.body_mut().read_to_string()?))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_answers_over_https_and_plain_http_gets_no_answer() {
    let cert = SelfSigned::new();
    let setup = AdminSetup::new(&host_config(cert.config()))
        .await
        .unwrap_or_else(|e| panic!("cannot set up TLS: {e}"));
    let listener = setup.bind().unwrap_or_else(|e| panic!("cannot bind: {e}"));
    assert!(listener.is_tls());
    let port = listener.local_addr().expect("local address").port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(listener.serve(
        router(state()),
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(1),
    ));

    let cert_pem = cert.cert_pem.clone();
    let https = tokio::task::spawn_blocking(move || {
        let agent = client(&cert_pem);
        let base = format!("https://localhost:{port}");
        [
            get(&agent, &format!("{base}/healthz"), None),
            get(&agent, &format!("{base}/v1/assignments"), Some(TOKEN)),
            get(&agent, &format!("{base}/v1/assignments"), None),
            get(&agent, &format!("https://127.0.0.1:{port}/healthz"), None),
        ]
        .map(|r| r.unwrap_or_else(|e| panic!("https call failed: {e}")))
    })
    .await
    .expect("client thread");
    let statuses: Vec<u16> = https.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [200, 200, 401, 200], "{https:?}");
    let health: serde_json::Value = serde_json::from_str(&https[0].1).expect("JSON");
    assert_eq!(health, serde_json::json!({"status": "ok"}));
    let assignments: serde_json::Value = serde_json::from_str(&https[1].1).expect("JSON");
    assert_eq!(
        assignments,
        serde_json::json!({"host": "tls-host", "pipelines": []})
    );

    let plain = tokio::task::spawn_blocking(move || {
        // A client that does not trust the certificate is refused...
        let untrusting = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(10)))
                .build(),
        );
        let untrusted = get(
            &untrusting,
            &format!("https://localhost:{port}/healthz"),
            None,
        );
        // ...and plain http on the TLS port gets no HTTP answer at all.
        let via_ureq = get(
            &untrusting,
            &format!("http://127.0.0.1:{port}/healthz"),
            None,
        );
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        (untrusted.map(|r| r.0), via_ureq.map(|r| r.0), raw)
    })
    .await
    .expect("client thread");
    assert!(
        plain.0.is_err(),
        "an untrusted certificate was accepted: {:?}",
        plain.0
    );
    assert!(plain.1.is_err(), "plain http got an answer: {:?}", plain.1);
    assert!(
        !plain.2.starts_with(b"HTTP/"),
        "plain http got an HTTP answer: {:?}",
        String::from_utf8_lossy(&plain.2)
    );

    let _ = stop.send(());
    server
        .await
        .expect("server task")
        .unwrap_or_else(|e| panic!("server failed: {e}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_wrong_certificate_fails_before_anything_is_bound() {
    let cert = SelfSigned::new();
    let mut missing = cert.config();
    missing.cert_path = cert.dir.path().join("nope.pem");
    let mut swapped = cert.config();
    swapped.key_path = swapped.cert_path.clone();
    for tls in [missing, swapped] {
        let Err(error) = AdminSetup::new(&host_config(tls.clone())).await else {
            panic!("{tls:?} was accepted");
        };
        assert!(matches!(error, ListenError::Tls { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains("host.admin_tls"), "{message}");
        assert!(
            message.contains(&tls.cert_path.display().to_string()),
            "{message}"
        );
    }
}
