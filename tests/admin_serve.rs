//! The admin API of a real `kwasm serve` process: settings that must stop
//! the host at startup (before it connects or binds anything), and bodies
//! too large to buffer, sent over a real socket while the host's peak
//! memory (`VmHWM` in /proc/PID/status) is watched.
//!
//! The startup tests point the host at a broker address nothing listens on
//! (`127.0.0.1:1`): a host that got past the checks would hang connecting
//! to it, so "exits within seconds" shows the check ran first. The body
//! tests need the broker `scripts/test` starts.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kwasm_tests::{HostProcess, brokers, free_port, kwasm_bin, unique, wait_until};

const TOKEN: &str = "s3cret-admin-token";

/// A host config; `host_extra` lines go under `[host]`.
fn config_text(listen: &str, host_extra: &str, brokers: &str, registry: &str) -> String {
    format!(
        r#"
[host]
id = "admin-serve"
admin_listen = "{listen}"
cache_dir = {cache:?}
{host_extra}

[kafka]
brokers = "{brokers}"

[registry]
plugins_topic = "{registry}-plugins"
pipelines_topic = "{registry}-pipelines"
members_topic = "{registry}-members"
"#,
        cache = std::env::temp_dir().join("kwasm-e2e-cache"),
    )
}

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp config file");
    file.write_all(text.as_bytes()).expect("write config");
    file
}

/// Runs `kwasm serve` to its exit (killed after 20 s): exit code and stderr.
fn serve_to_exit(config: &tempfile::NamedTempFile, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(kwasm_bin())
        .args(["serve", "--config", &config.path().to_string_lossy()])
        .env_remove("KWASM_ADMIN_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start kwasm serve: {e}"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for kwasm serve") {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let code = status.map(|s| s.code().unwrap_or(-1));
    assert!(
        code.is_some(),
        "kwasm serve was still running after 20 s (it should have refused to start): {stderr}"
    );
    (code, stderr)
}

#[test]
fn an_empty_or_blank_admin_token_stops_the_host_at_startup() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    for token in ["", "   "] {
        let config = write_config(&config_text(
            &listen,
            &format!("admin_token = {token:?}"),
            "127.0.0.1:1",
            "unused",
        ));
        let (code, stderr) = serve_to_exit(&config, &[]);
        assert_ne!(code, Some(0), "{stderr}");
        assert!(stderr.contains("`host.admin_token`"), "{token:?}: {stderr}");
        assert!(stderr.contains("empty or whitespace"), "{stderr}");
    }
    // The same through the environment, which names the variable.
    let config = write_config(&config_text(&listen, "", "127.0.0.1:1", "unused"));
    for token in ["", " \t"] {
        let (code, stderr) = serve_to_exit(&config, &[("KWASM_ADMIN_TOKEN", token)]);
        assert_ne!(code, Some(0), "{stderr}");
        assert!(
            stderr.contains("`KWASM_ADMIN_TOKEN`"),
            "{token:?}: {stderr}"
        );
    }
}

#[test]
fn an_open_api_on_a_non_loopback_address_stops_the_host_before_it_binds() {
    let port = free_port();
    let config = write_config(&config_text(
        &format!("0.0.0.0:{port}"),
        "",
        "127.0.0.1:1",
        "unused",
    ));
    let (code, stderr) = serve_to_exit(&config, &[]);
    assert_ne!(code, Some(0), "{stderr}");
    for phrase in [
        "`host.admin_listen`",
        "not a loopback address",
        "host.admin_token",
        "host.admin_insecure",
    ] {
        assert!(stderr.contains(phrase), "lacks {phrase:?}: {stderr}");
    }
    assert!(!stderr.contains("kwasm host running"), "{stderr}");
    // Nothing was bound: the port is still free.
    std::net::TcpListener::bind(("0.0.0.0", port))
        .unwrap_or_else(|e| panic!("port {port} is taken after a refused start: {e}"));
}

#[test]
fn admin_insecure_serves_an_open_api_beyond_loopback_with_a_warning() {
    let port = free_port();
    let config = write_config(&config_text(
        &format!("0.0.0.0:{port}"),
        "admin_insecure = true",
        "127.0.0.1:1",
        "unused",
    ));
    let path = config.path().to_string_lossy().into_owned();
    let mut host = HostProcess::spawn(&["serve", "--config", &path], &[], "insecure");
    // Past the check: it warns, then goes on to connect to Kafka (which is
    // not there, so it never gets further; it is killed on drop).
    assert!(
        host.wait_for_log(
            "served without a token on a non-loopback address",
            Duration::from_secs(20)
        ),
        "{}",
        host.log_contents()
    );
    assert!(host.is_running(), "{}", host.log_contents());
}

/// A running host with a token, on fresh registry topics.
struct TokenHost {
    process: HostProcess,
    port: u16,
    _config: tempfile::NamedTempFile,
}

impl TokenHost {
    fn start(name: &str, host_extra: &str) -> TokenHost {
        let port = free_port();
        let config = write_config(&config_text(
            &format!("127.0.0.1:{port}"),
            &format!("admin_token = {TOKEN:?}\n{host_extra}"),
            &brokers(),
            &unique(name),
        ));
        let path = config.path().to_string_lossy().into_owned();
        let process = HostProcess::spawn(&["serve", "--config", &path], &[], name);
        let host = TokenHost {
            process,
            port,
            _config: config,
        };
        let up = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "host never listened: {}", host.process.log_contents());
        host
    }

    /// Peak resident memory so far, in KiB.
    fn vm_hwm_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.pid()))
            .unwrap_or_else(|e| panic!("cannot read the host's /proc status: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM in {status}"))
    }
}

/// Sends `head` then up to `body_bytes` of body in 64 KiB writes, stopping
/// once the host has answered (or stopped taking bytes); returns how many
/// body bytes were written and the HTTP response. The response is read on
/// a thread of its own while the body is sent: a host that answers early
/// and closes resets the connection, which could drop an answer read only
/// after the writes.
fn send_until_refused(port: u16, head: &str, body_bytes: u64, chunked: bool) -> (u64, String) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the admin API");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("write timeout");
    let answered = Arc::new(AtomicBool::new(false));
    let mut reading = stream.try_clone().expect("clone the socket");
    let flag = answered.clone();
    let reader = std::thread::spawn(move || {
        let mut response = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = reading.read(&mut buf) {
            if n == 0 {
                break;
            }
            response.extend_from_slice(&buf[..n]);
            flag.store(true, Ordering::Release);
        }
        response
    });
    stream.write_all(head.as_bytes()).expect("send the head");
    let chunk = vec![b'x'; 64 << 10];
    let mut sent = 0u64;
    while sent < body_bytes && !answered.load(Ordering::Acquire) {
        let written = if chunked {
            let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
            framed.extend_from_slice(&chunk);
            framed.extend_from_slice(b"\r\n");
            stream.write_all(&framed)
        } else {
            stream.write_all(&chunk)
        };
        if written.is_err() {
            break;
        }
        sent += chunk.len() as u64;
    }
    if body_bytes > 0 && sent >= body_bytes {
        // Everything was sent: half-close so a host still waiting for more
        // sees the end.
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let response = reader.join().expect("the reader thread panicked");
    (sent, String::from_utf8_lossy(&response).into_owned())
}

fn status_and_body(response: &str) -> (u16, serde_json::Value) {
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn a_100_mib_json_body_answers_413_without_the_host_buffering_it() {
    let host = TokenHost::start("admin-big-json", "");
    let before = host.vm_hwm_kib();
    let total: u64 = 100 << 20;
    // Streamed without a length (chunked), so only the cap while reading
    // can stop it; then announced with its length.
    let chunked = format!(
        "PUT /v1/pipelines/big HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let (sent, response) = send_until_refused(host.port, &chunked, total, true);
    let (status, body) = status_and_body(&response);
    assert_eq!(status, 413, "{response}");
    assert_eq!(body["error"]["code"], "too_large", "{response}");
    assert!(
        sent < total,
        "the host read all {sent} bytes before answering"
    );
    let announced = format!(
        "PUT /v1/pipelines/big HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {total}\r\n\r\n"
    );
    let (_, response) = send_until_refused(host.port, &announced, total, false);
    assert_eq!(status_and_body(&response).0, 413, "{response}");
    let after = host.vm_hwm_kib();
    println!("host VmHWM {before} KiB before, {after} KiB after two 100 MiB bodies");
    assert!(
        after.saturating_sub(before) < 32 << 10,
        "peak RSS grew by {} KiB (from {before} to {after})",
        after - before
    );
}

#[test]
fn an_upload_announced_as_200_mib_answers_413_before_it_is_sent() {
    let host = TokenHost::start("admin-big-upload", "");
    let total: u64 = 200 << 20;
    let head = format!(
        "POST /v1/plugins/big HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/wasm\r\nContent-Length: {total}\r\n\r\n"
    );
    // Send the head and no body at all: the answer must come anyway.
    let (_, response) = send_until_refused(host.port, &head, 0, false);
    let (status, body) = status_and_body(&response);
    assert_eq!(status, 413, "{response}");
    assert_eq!(body["error"]["code"], "too_large", "{response}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("registry.max_plugin_bytes")),
        "{response}"
    );
    // And with the client sending as fast as it can: it is stopped early.
    let (sent, response) = send_until_refused(host.port, &head, total, false);
    assert_eq!(status_and_body(&response).0, 413, "{response}");
    assert!(sent < total, "all {sent} bytes were taken before the 413");
}

#[test]
fn a_host_with_admin_tls_serves_https_only() {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()])
        .unwrap_or_else(|e| panic!("cannot make a certificate: {e}"));
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).expect("write cert.pem");
    std::fs::write(&key, made.signing_key.serialize_pem()).expect("write key.pem");
    let host = TokenHost::start(
        "admin-tls",
        &format!("admin_tls = {{ cert_path = {cert:?}, key_path = {key:?} }}"),
    );
    let running = host
        .process
        .log_contents()
        .lines()
        .find(|l| l.contains("kwasm host running"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        running.contains("\"https\""),
        "{}",
        host.process.log_contents()
    );
    let trusted = ureq::tls::Certificate::from_pem(made.cert.pem().as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&[trusted]))
                    .build(),
            )
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build(),
    );
    let url = format!("https://localhost:{}/v1/pipelines", host.port);
    let call = |token: Option<&str>| {
        let mut request = agent.get(&url);
        if let Some(token) = token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        let mut response = request.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        (status, body)
    };
    let (status, body) = call(Some(TOKEN));
    assert_eq!((status, body.as_str()), (200, r#"{"pipelines":[]}"#));
    assert_eq!(call(None).0, 401);
    let (_, plain) = send_until_refused(
        host.port,
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        0,
        false,
    );
    assert!(
        !plain.starts_with("HTTP/"),
        "plain http got an answer: {plain:?}"
    );
}

/// One HTTP/1.0 call (the host closes the connection after answering).
fn call(port: u16, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the admin API");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("send the head");
    stream.write_all(body).expect("send the body");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// The value of the Prometheus sample `name{labels}` in `text` (0 when
/// the counter was never incremented).
fn sample(text: &str, name_and_labels: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn refusals_are_counted_and_members_polling_describes_the_group_once() {
    let host = TokenHost::start("admin-metrics", "");
    let wasm = std::fs::read(kwasm_tests::plugin_path("passthrough")).expect("passthrough.wasm");
    assert_eq!(
        call(host.port, "POST", "/v1/plugins/p", Some(TOKEN), &wasm).0,
        201
    );
    let pipeline = serde_json::json!({
        "plugin": "p@1", "inputs": [unique("metrics-in")], "output": unique("metrics-out"),
    });
    let (status, body) = call(
        host.port,
        "PUT",
        "/v1/pipelines/orders",
        Some(TOKEN),
        pipeline.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{body}");

    // Polling members: one DescribeGroups serves every call within 2 s.
    let started = Instant::now();
    for _ in 0..20 {
        let (status, body) = call(
            host.port,
            "GET",
            "/v1/pipelines/orders/members",
            Some(TOKEN),
            b"",
        );
        assert_eq!(status, 200, "{body}");
    }
    let polled_for = started.elapsed();
    for token in [None, Some("wrong"), Some(&TOKEN[1..])] {
        assert_eq!(call(host.port, "GET", "/v1/pipelines", token, b"").0, 401);
    }
    let big = vec![b' '; 600 << 10];
    assert_eq!(
        call(host.port, "PUT", "/v1/pipelines/orders", Some(TOKEN), &big).0,
        413
    );

    let (status, metrics) = call(host.port, "GET", "/metrics", None, b"");
    assert_eq!(status, 200, "{metrics}");
    let describes = sample(&metrics, "kwasm_admin_group_describes_total{result=\"ok\"}")
        + sample(
            &metrics,
            "kwasm_admin_group_describes_total{result=\"error\"}",
        );
    println!("20 members calls in {polled_for:?}: {describes} DescribeGroups");
    let windows = polled_for.as_secs() / 2 + 1;
    assert!(
        (1..=windows + 1).contains(&describes),
        "{describes} describes for 20 calls in {polled_for:?}:\n{metrics}"
    );
    assert_eq!(
        (
            sample(
                &metrics,
                "kwasm_admin_refused_total{reason=\"unauthorized\"}"
            ),
            sample(&metrics, "kwasm_admin_refused_total{reason=\"too_large\"}"),
        ),
        (3, 1),
        "{metrics}"
    );
}
