//! End-to-end: a broker outage pauses work and loses nothing.
//!
//! This binary runs its own nisshi broker with SQLite storage (so data
//! survives a restart) and points the support library at it; it holds one
//! test so nothing else in the process sees the changed broker address.

mod e2e;

use std::time::{Duration, Instant};

use e2e::{Host, PipelineDef, account, http_get};
use kwasm_tests::{
    HostProcess, OutRecord, consume_all, create_topic, free_port, produce, unique, wait_until,
};

fn start_broker(port: u16, db: &std::path::Path) -> HostProcess {
    let nisshi =
        std::env::var("KWASM_NISSHI_BIN").expect("KWASM_NISSHI_BIN is unset: run scripts/test");
    let url = format!("tcp://127.0.0.1:{port}");
    // nisshi reads `sqlite://FILE` relative to its working directory (an
    // absolute path is joined to it too), so start it in the file's folder.
    let dir = db.parent().expect("db has a folder").display().to_string();
    let file = db
        .file_name()
        .expect("db file")
        .to_string_lossy()
        .into_owned();
    let script = format!(
        "cd '{dir}' && exec '{nisshi}' broker --listener-url {url} --advertised-listener-url {url} \
         --storage-engine sqlite://{file} --group-initial-rebalance-delay 100ms"
    );
    let broker = HostProcess::spawn_program(
        std::path::Path::new("/bin/sh"),
        &["-c", &script],
        &[],
        "nisshi-outage",
    );
    let up = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "own broker did not start:\n{}", broker.log_contents());
    std::thread::sleep(Duration::from_millis(500));
    broker
}

fn sequence(from: usize, count: usize) -> Vec<(i32, String)> {
    (from..from + count)
        .map(|n| ((n % 3) as i32, format!("{}:{}", n % 3, n / 3)))
        .collect()
}

#[test]
fn a_broker_outage_pauses_processing_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("broker.db");
    let port = free_port();
    let mut broker = start_broker(port, &db);
    // SAFETY: the only test of this binary, set before any thread reads it.
    unsafe { std::env::set_var("KWASM_TEST_BROKERS", format!("127.0.0.1:{port}")) };

    let input = unique("outage-in");
    let output = format!("{input}-out");
    let group = format!("{input}-group");
    create_topic(&input, 3);
    create_topic(&output, 3);
    let pipeline = PipelineDef {
        name: "outage",
        plugin: "passthrough",
        config: &[],
        input: &input,
        output: &output,
        group: &group,
        dead_letter: None,
    };
    let host = Host::start("host-a", &pipeline);
    let first = sequence(0, 3_000);
    produce(
        &input,
        first
            .iter()
            .map(|(p, v)| OutRecord::to(*p, v.clone()).key(v.clone())),
    );
    assert_eq!(
        consume_all(&output, first.len(), Duration::from_secs(60)).len(),
        first.len()
    );
    host.wait_ready(Duration::from_secs(30));

    broker.sigterm();
    broker
        .wait_exit(Duration::from_secs(30))
        .expect("broker stops");
    let went_down = Instant::now();
    let not_ready = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        http_get(host.admin_port, "/readyz").is_some_and(|(s, _)| s == 503)
    });
    assert!(
        not_ready,
        "host never reported not-ready while the broker was down"
    );
    println!(
        "not ready {:.1} s after the broker stopped: {:?}",
        went_down.elapsed().as_secs_f64(),
        http_get(host.admin_port, "/readyz")
    );
    assert!(
        http_get(host.admin_port, "/healthz").is_some_and(|(s, _)| s == 200),
        "the host stays up"
    );
    std::thread::sleep(Duration::from_secs(3));

    let _broker = start_broker(port, &db);
    let second = sequence(3_000, 3_000);
    produce(
        &input,
        second
            .iter()
            .map(|(p, v)| OutRecord::to(*p, v.clone()).key(v.clone())),
    );
    let all: Vec<(i32, String)> = first.iter().chain(&second).cloned().collect();
    let out = consume_all(&output, all.len(), Duration::from_secs(120));
    let acc = account(&all, &out);
    println!(
        "broker outage: lost {}, duplicates {}",
        acc.lost, acc.duplicates
    );
    assert_eq!(acc.lost, 0, "{acc:?}");
    host.wait_ready(Duration::from_secs(60));
}
