//! End-to-end: the dashboard (`/ui`) in a real browser (Debian's Chromium
//! driven by Playwright, `tests/dashboard/driver.py`) against two real
//! `kwasm serve` hosts and the suite's Apache Kafka broker.
//!
//! The browser only reads and clicks; every assertion is here, checked
//! against what the hosts' API and the topics say: the overview shows both
//! hosts with disjoint partitions covering the topic, a paused pipeline
//! shows paused and its lag is exactly what was produced meanwhile, the
//! lag falls as the messages drain, an upload and a deploy from the pages
//! hot-deploy (outputs after it carry the new tag, none before it, each
//! input exactly once), the pages work under a path prefix (through a
//! proxy, as behind an ingress), and a host with a token is asked for it
//! once per tab session. Screenshots of the three pages go to `docs/` (shown in the
//! README). Needs `KWASM_BROWSER_PYTHON` (the venv's python with
//! playwright) and `KWASM_CHROMIUM`, which `scripts/test` sets.

mod e2e;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::Host;
use kwasm_tests::{OutRecord, create_topic, plugin_path, produce, read_to_end, unique, wait_until};
use serde_json::{Value, json};

const PARTITIONS: i32 = 6;
/// Messages produced while the pipeline is paused: the lag the page must
/// show, then watch fall.
const BACKLOG: usize = 6_000;
/// Milliseconds the plugin spends per message before the deploy (misbehave's
/// `slow` mode): the backlog takes seconds to drain on any machine, so the
/// page, polling every second, shows the lag on its way down.
const DELAY_MS: &str = "3";

/// The browser, one command per line (see driver.py).
struct Browser {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Browser {
    fn start() -> Browser {
        let python = std::env::var("KWASM_BROWSER_PYTHON").unwrap_or_else(|_| {
            panic!(
                "KWASM_BROWSER_PYTHON is not set: run through scripts/test, which installs \
                 playwright in a venv (scripts/setup) and sets it"
            )
        });
        let chromium = std::env::var("KWASM_CHROMIUM")
            .ok()
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| {
                panic!(
                    "KWASM_CHROMIUM is not set or empty: scripts/test sets it to Debian's \
                     chromium, which scripts/setup installs (apt-get install chromium)"
                )
            });
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dashboard/driver.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .env("KWASM_CHROMIUM", &chromium)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {python} {}: {e}", script.display()));
        let stdin = child.stdin.take().expect("driver stdin");
        let stdout = BufReader::new(child.stdout.take().expect("driver stdout"));
        let mut browser = Browser {
            child,
            stdin,
            stdout,
        };
        let version = browser
            .answer()
            .unwrap_or_else(|e| panic!("the browser did not start: {e}"));
        println!("browser: Chromium {version}");
        browser
    }

    fn answer(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| format!("reading the driver: {e}"))?;
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| format!("the driver answered {line:?}: {e}"))?;
        if v["ok"] == true {
            Ok(v["value"].clone())
        } else {
            Err(v["error"].as_str().unwrap_or("driver failed").to_owned())
        }
    }

    fn send(&mut self, command: Value) -> Result<Value, String> {
        writeln!(self.stdin, "{command}").map_err(|e| format!("writing to the driver: {e}"))?;
        self.stdin.flush().map_err(|e| e.to_string())?;
        self.answer()
    }

    fn run(&mut self, command: Value) -> Value {
        let shown = command.to_string();
        self.send(command).unwrap_or_else(|e| {
            let console = self.send(json!({"op": "console"})).unwrap_or_default();
            panic!("browser: {shown}: {e}\npage console: {console}")
        })
    }

    fn goto(&mut self, url: &str) -> Value {
        self.run(json!({"op": "goto", "url": url}))
    }

    fn eval(&mut self, js: &str) -> Value {
        self.run(json!({"op": "eval", "js": js}))
    }

    fn click(&mut self, selector: &str) {
        self.run(json!({"op": "click", "selector": selector}));
    }

    /// Evaluates `js` every 200 ms until `done` accepts its value, for up to
    /// `timeout`; returns the last value and whether it was accepted.
    fn wait_for(
        &mut self,
        js: &str,
        timeout: Duration,
        mut done: impl FnMut(&Value) -> bool,
    ) -> (Value, bool) {
        let mut last = Value::Null;
        let ok = wait_until(timeout, Duration::from_millis(200), || {
            last = self.eval(js);
            done(&last)
        });
        (last, ok)
    }

    fn screenshot(&mut self, name: &str) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../docs")
            .join(name);
        self.run(json!({"op": "screenshot", "path": path}));
        println!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "quit"}));
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reverse proxy serving the host under a path prefix, as a Kubernetes
/// ingress does (`/kwasm/ui/` → the host's `/ui/`): one request per
/// connection (`Connection: close` upstream), for GETs only. Stops with
/// the test (its threads end when their sockets close; the listener when
/// the flag is set).
struct PrefixProxy {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl PrefixProxy {
    fn start(prefix: &'static str, upstream: u16) -> PrefixProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("proxy address").port();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        std::thread::spawn(move || Self::forward(client, prefix, upstream));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        PrefixProxy { port, stop }
    }

    fn forward(mut client: std::net::TcpStream, prefix: &str, upstream: u16) {
        use std::io::Read;
        let _ = client.set_nonblocking(false);
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match client.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let mut lines = head.split("\r\n");
        let first = lines.next().unwrap_or_default();
        let mut parts = first.splitn(3, ' ');
        let (method, path, version) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let Some(rest) = path.strip_prefix(prefix) else {
            let _ = client.write_all(
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
            return;
        };
        let mut request = format!("{method} {rest} {version}\r\n");
        for line in lines.filter(|l| !l.is_empty()) {
            if !line.to_ascii_lowercase().starts_with("connection:") {
                request.push_str(line);
                request.push_str("\r\n");
            }
        }
        request.push_str("connection: close\r\n\r\n");
        let Ok(mut host) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
            return;
        };
        if host.write_all(request.as_bytes()).is_err() {
            return;
        }
        let mut answer = Vec::new();
        let _ = host.read_to_end(&mut answer);
        let _ = client.write_all(&answer);
    }
}

impl Drop for PrefixProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The misbehave fixture's bytes with a custom section appended: a valid
/// component with a new digest, i.e. a new version.
fn new_version_of(bytes: &[u8], marker: &str) -> Vec<u8> {
    let name = b"kwasm-test-version";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(marker.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    out.push(payload.len() as u8);
    out.extend(payload);
    out
}

/// The overview row of `pipeline` as the page shows it: state, total lag,
/// hosts, and each grid cell's (partition, host).
fn overview_row_js(pipeline: &str) -> String {
    format!(
        r#"(() => {{
            const row = document.querySelector('tr[data-pipeline="{pipeline}"]');
            if (!row) return null;
            return {{
                state: row.dataset.state,
                lag: row.dataset.lag === "" ? null : Number(row.dataset.lag),
                hosts: [...row.querySelectorAll('.host')].map(h => h.dataset.host),
                delivery: row.querySelector('[data-delivery]').dataset.delivery,
                rate_in: row.querySelector('.rate-in').dataset.rate === "" ? null : Number(row.querySelector('.rate-in').dataset.rate),
                cells: [...row.querySelectorAll('.cell')].map(c => [Number(c.dataset.partition), c.dataset.host]),
            }};
        }})()"#
    )
}

/// Partitions per host from the grid cells.
fn cells_by_host(row: &Value) -> BTreeMap<String, BTreeSet<i32>> {
    let mut out: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for cell in row["cells"].as_array().into_iter().flatten() {
        let host = cell[1].as_str().unwrap_or_default().to_owned();
        out.entry(host)
            .or_default()
            .insert(cell[0].as_i64().unwrap_or(-1) as i32);
    }
    out
}

fn tagger_pipeline(input: &str, output: &str, group: &str) -> Vec<u8> {
    json!({
        "plugin": "tagger@1",
        "config": {"mode": "slow", "delay_ms": DELAY_MS},
        "inputs": [input],
        "output": output,
        "group_id": group,
        "batch": {"max_messages": 64, "max_wait_ms": 20},
    })
    .to_string()
    .into_bytes()
}

#[test]
fn the_dashboard_shows_the_group_pauses_drains_and_deploys_from_the_page() {
    let started = Instant::now();
    let input = unique("dash-in");
    let output = format!("{input}-out");
    let group = format!("{input}-group");
    create_topic(&input, PARTITIONS);
    create_topic(&output, PARTITIONS);
    let a = Host::start_bare("host-a", &group);
    let b = Host::start_bare("host-b", &group);
    a.wait_ready(Duration::from_secs(60));
    b.wait_ready(Duration::from_secs(60));
    let wasm = std::fs::read(plugin_path("misbehave")).expect("misbehave.wasm");
    let (status, body) = a.call_patient("POST", "/v1/plugins/tagger", &wasm);
    assert_eq!(status, 201, "{body}");
    let (status, body) = a.call(
        "PUT",
        "/v1/pipelines/tagging",
        &tagger_pipeline(&input, &output, &group),
    );
    assert_eq!(status, 200, "{body}");

    let mut browser = Browser::start();
    // `/ui` redirects to `ui/` (relative, so a path prefix is kept).
    let url = browser.goto(&format!("http://127.0.0.1:{}/ui", a.admin_port));
    assert_eq!(url, json!(format!("http://127.0.0.1:{}/ui/", a.admin_port)));

    // 1. Both hosts, disjoint partitions covering the topic, as the hosts
    //    themselves report them.
    let row_js = overview_row_js("tagging");
    let (row, ok) = browser.wait_for(&row_js, Duration::from_secs(60), |row| {
        let by_host = cells_by_host(row);
        let truth: BTreeMap<String, BTreeSet<i32>> = [("host-a", &a), ("host-b", &b)]
            .into_iter()
            .map(|(n, h)| (n.to_owned(), h.partitions(&input).unwrap_or_default()))
            .collect();
        row["state"] == "running" && by_host == truth && truth.values().all(|p| !p.is_empty())
    });
    assert!(
        ok,
        "the overview never showed both hosts covering the topic: {row}"
    );
    let by_host = cells_by_host(&row);
    let all: BTreeSet<i32> = by_host.values().flatten().copied().collect();
    assert_eq!(
        all,
        (0..PARTITIONS).collect(),
        "cells cover every partition"
    );
    assert_eq!(
        by_host.values().map(BTreeSet::len).sum::<usize>(),
        PARTITIONS as usize,
        "no partition shown twice: {row}"
    );
    assert_eq!(row["hosts"], json!(["host-a", "host-b"]), "{row}");
    assert_eq!(
        row["delivery"], "at-least-once",
        "the default delivery mode"
    );

    produce(
        &input,
        (0..600).map(|i| OutRecord::to(i % PARTITIONS, format!("a{i}"))),
    );
    // Done, and seen: the page's messages/s in counts them (committed
    // offsets over its last 10 s of samples).
    let (row, ok) = browser.wait_for(&row_js, Duration::from_secs(60), |row| {
        row["lag"] == 0 && row["rate_in"].as_f64().is_some_and(|r| r > 0.0)
    });
    assert!(
        ok,
        "lag never reached 0 with a rate shown after 600 messages: {row}"
    );
    browser.screenshot("dashboard-overview.png");

    // 2. Pause from the pipeline page: the overview shows it paused, and
    //    its lag is exactly the backlog produced meanwhile.
    browser.goto(&format!(
        "http://127.0.0.1:{}/ui/#/pipeline/tagging",
        a.admin_port
    ));
    browser.click("#pause");
    let (stored, ok) = browser.wait_for(
        "document.querySelector('#pipeline')?.dataset.state",
        Duration::from_secs(10),
        |s| s == "paused",
    );
    assert!(ok, "the pipeline page never showed paused: {stored}");
    let (_, body) = a.call("GET", "/v1/pipelines/tagging", b"");
    assert_eq!(body["paused"], true, "the click paused it in the registry");
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            a.partitions(&input).is_none_or(|p| p.is_empty())
                && b.partitions(&input).is_none_or(|p| p.is_empty())
        }),
        "the hosts did not let the paused pipeline go"
    );
    produce(
        &input,
        (0..BACKLOG).map(|i| OutRecord::to(i as i32 % PARTITIONS, format!("b{i}"))),
    );
    browser.goto(&format!("http://127.0.0.1:{}/ui/#/", a.admin_port));
    let (row, ok) = browser.wait_for(&row_js, Duration::from_secs(30), |row| {
        row["state"] == "paused" && row["lag"] == BACKLOG
    });
    assert!(
        ok,
        "the overview did not show paused with lag {BACKLOG}: {row}"
    );

    // 3. Resume: the lag falls as the backlog drains, to 0.
    browser.goto(&format!(
        "http://127.0.0.1:{}/ui/#/pipeline/tagging",
        a.admin_port
    ));
    browser.click("#resume");
    let mut lags: Vec<i64> = Vec::new();
    let lag_js = "(() => { const t = document.querySelector('#pipeline .total-lag')?.textContent; \
                  return t && t !== '-' ? Number(t.replace(/,/g, '')) : null; })()";
    let drain_started = Instant::now();
    let (last, ok) = browser.wait_for(lag_js, Duration::from_secs(120), |v| {
        if let Some(lag) = v.as_i64()
            && lags.last() != Some(&lag)
        {
            lags.push(lag);
        }
        v == 0
    });
    println!(
        "lag as the page showed it while draining ({:.1} s): {lags:?}",
        drain_started.elapsed().as_secs_f64()
    );
    assert!(ok, "lag never fell to 0: last {last}, seen {lags:?}");
    assert_eq!(
        lags.first(),
        Some(&(BACKLOG as i64)),
        "it starts at the backlog: {lags:?}"
    );
    assert!(
        lags.windows(2).all(|w| w[1] < w[0]),
        "lag only falls while nothing is produced: {lags:?}"
    );
    assert!(
        lags.iter().any(|&l| l > 0 && l < BACKLOG as i64),
        "the page showed the lag on its way down, not only its ends: {lags:?}"
    );
    let chart_points = browser.eval(
        "document.querySelector('#lag-chart path.chart-line')?.getAttribute('d').split(' ').length || 0",
    );
    assert!(
        chart_points.as_i64().unwrap_or(0) >= 3,
        "the lag chart has points: {chart_points}"
    );
    browser.screenshot("dashboard-pipeline.png");

    // 4. Upload v2 through the plugins page.
    let v2_path = std::env::temp_dir().join(format!("{input}-tagger-v2.wasm"));
    std::fs::write(&v2_path, new_version_of(&wasm, "v2")).expect("write v2");
    browser.goto(&format!("http://127.0.0.1:{}/ui/#/plugins", a.admin_port));
    browser.run(json!({"op": "fill", "selector": "#upload-name", "value": "tagger"}));
    browser.run(json!({"op": "files", "selector": "#upload-file", "path": v2_path}));
    browser.click("#upload-button");
    let (status_text, ok) = browser.wait_for(
        "document.querySelector('#upload-status')?.textContent",
        Duration::from_secs(180),
        |t| {
            t.as_str()
                .is_some_and(|t| t.starts_with("uploaded") || t.contains("failed"))
        },
    );
    assert!(ok, "the upload never finished: {status_text}");
    assert!(
        status_text
            .as_str()
            .is_some_and(|t| t.starts_with("uploaded tagger version 2")),
        "{status_text}"
    );
    let (versions, ok) = browser.wait_for(
        "[...document.querySelectorAll('tr[data-plugin=\"tagger\"]')].map(r => [Number(r.dataset.version), [...r.querySelectorAll('a.user')].map(a => a.textContent)])",
        Duration::from_secs(10),
        |v| v.as_array().is_some_and(|a| a.len() == 2),
    );
    assert!(ok, "the plugins page lists both versions: {versions}");
    assert_eq!(
        versions,
        json!([[2, []], [1, ["tagging"]]]),
        "v1 is used by the pipeline"
    );
    let _ = std::fs::remove_file(&v2_path);
    browser.screenshot("dashboard-plugins.png");

    // 5. Deploy v2 with tag v2 from the pipeline page: a hot deploy.
    browser.goto(&format!(
        "http://127.0.0.1:{}/ui/#/pipeline/tagging",
        a.admin_port
    ));
    browser.run(json!({"op": "fill", "selector": "#deploy-config",
        "value": r#"{"mode": "tag", "tag": "v2"}"#}));
    browser.click("button.deploy[data-version=\"2\"]");
    let (flash, ok) = browser.wait_for(
        "document.querySelector('#deploy-status')?.textContent",
        Duration::from_secs(30),
        |t| {
            t.as_str()
                .is_some_and(|t| t.starts_with("deployed") || t.contains("failed"))
        },
    );
    assert!(
        ok && flash
            .as_str()
            .is_some_and(|t| t.starts_with("deployed tagger@2")),
        "{flash}"
    );
    let (_, body) = b.call("GET", "/v1/pipelines/tagging", b"");
    assert_eq!(body["plugin"], "tagger@2", "{body}");
    assert_eq!(body["config"]["tag"], "v2", "{body}");
    // Every host runs v2 before the new messages go in.
    let on_v2 =
        |h: &Host| h.call("GET", "/v1/assignments", b"").1["pipelines"][0]["plugin_version"] == 2;
    assert!(
        wait_until(
            Duration::from_secs(30),
            Duration::from_millis(200),
            || on_v2(&a) && on_v2(&b)
        ),
        "the hosts did not switch to v2"
    );
    produce(
        &input,
        (0..600).map(|i| OutRecord::to(i % PARTITIONS, format!("c{i}"))),
    );
    let total = 600 + BACKLOG + 600;
    let out = read_to_end(&output, total, Duration::from_secs(120));
    let mut tags: BTreeMap<char, BTreeSet<String>> = BTreeMap::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in &out {
        let value = r.value_str();
        let tag = String::from_utf8_lossy(r.header("kwasm-tag").unwrap_or_default()).into_owned();
        tags.entry(value.chars().next().unwrap_or('?'))
            .or_default()
            .insert(tag);
        *seen.entry(value).or_default() += 1;
    }
    assert_eq!(seen.len(), total, "every input came out");
    assert!(seen.values().all(|&n| n == 1), "none twice");
    // v1 ran in `slow` mode, which adds no tag.
    assert_eq!(tags[&'a'], BTreeSet::from([String::new()]));
    assert_eq!(tags[&'b'], BTreeSet::from([String::new()]));
    assert_eq!(
        tags[&'c'],
        BTreeSet::from(["v2".to_owned()]),
        "messages after the deploy carry the new tag"
    );
    let (_, versions_here) = a.call("GET", "/v1/assignments", b"");
    assert_eq!(versions_here["pipelines"][0]["plugin_version"], 2);

    // 6. Behind a path prefix (an ingress serving the host at /kwasm/):
    //    the redirect, the modules and the API calls all stay under it.
    let proxy = PrefixProxy::start("/kwasm", b.admin_port);
    let url = browser.goto(&format!("http://127.0.0.1:{}/kwasm/ui", proxy.port));
    assert_eq!(
        url,
        json!(format!("http://127.0.0.1:{}/kwasm/ui/", proxy.port))
    );
    let (row, ok) = browser.wait_for(&row_js, Duration::from_secs(30), |row| {
        row["state"] == "running"
            && cells_by_host(row)
                .values()
                .map(BTreeSet::len)
                .sum::<usize>()
                == PARTITIONS as usize
    });
    assert!(ok, "the overview through the prefix: {row}");
    let host_shown = browser.eval("document.getElementById('status').textContent");
    assert!(
        host_shown
            .as_str()
            .is_some_and(|t| t.starts_with("host host-b")),
        "served by host B through the proxy: {host_shown}"
    );
    drop(proxy);

    // 7. A host with an admin token: the page asks for it once, keeps it
    //    for the tab's session (a reload does not ask again).
    let token = "dashboard-test-token";
    let c = Host::start_custom(
        "host-c",
        &format!("{group}-c"),
        &format!("admin_token = {token:?}"),
        "",
    );
    c.wait_ready(Duration::from_secs(60));
    let page = format!("http://127.0.0.1:{}/ui/", c.admin_port);
    browser.goto(&page);
    let (asked, ok) = browser.wait_for(
        "document.getElementById('token-dialog').open",
        Duration::from_secs(10),
        |open| open == true,
    );
    assert!(ok, "the page asks for the token: {asked}");
    browser.run(json!({"op": "fill", "selector": "#token-input", "value": token}));
    browser.click("#token-form button[type=submit]");
    let status_js = "document.getElementById('status').textContent";
    let (status, ok) = browser.wait_for(status_js, Duration::from_secs(10), |t| {
        t.as_str().is_some_and(|t| t.starts_with("host host-c"))
    });
    assert!(ok, "with the token the page reads host C: {status}");
    assert_eq!(
        browser.eval("sessionStorage.getItem('kwasm.token')"),
        json!(token)
    );
    browser.goto(&page);
    let (status, ok) = browser.wait_for(status_js, Duration::from_secs(10), |t| {
        t.as_str().is_some_and(|t| t.starts_with("host host-c"))
    });
    assert!(ok, "after a reload the kept token still works: {status}");
    assert_eq!(
        browser.eval("document.getElementById('token-dialog').open"),
        json!(false),
        "and the page did not ask again"
    );
    println!(
        "dashboard test done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
