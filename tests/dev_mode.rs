//! End-to-end: `kwasm dev`, the embedded default, comes up on its own (mock
//! Kafka cluster, demo pipeline, sample traffic) and shows work flowing.

mod e2e;

use std::time::Duration;

use e2e::http_get;
use kwasm_tests::{HostProcess, free_port, kwasm_bin, plugin_path, wait_until};

fn committed_total(port: u16) -> i64 {
    let Some((200, body)) = http_get(port, "/v1/assignments") else {
        return -1;
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["pipelines"][0]["partitions"].as_array().map_or(-1, |ps| {
        ps.iter().filter_map(|p| p["committed"].as_i64()).sum()
    })
}

#[test]
fn kwasm_dev_becomes_ready_and_shows_messages_flowing_in_status() {
    let port = free_port();
    let plugin_dir = plugin_path("redact")
        .parent()
        .expect("plugin dir")
        .display()
        .to_string();
    let listen = format!("127.0.0.1:{port}");
    let mut dev = HostProcess::spawn(
        &[
            "dev",
            "--plugin-dir",
            &plugin_dir,
            "--admin-listen",
            &listen,
            "--rate",
            "200",
        ],
        &[],
        "kwasm-dev",
    );

    let ready = wait_until(Duration::from_secs(90), Duration::from_millis(200), || {
        http_get(port, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    assert!(ready, "/readyz never 200: {:?}", http_get(port, "/readyz"));
    assert!(dev.log_contents().contains("kwasm dev is running"));

    let all_partitions = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        http_get(port, "/v1/assignments")
            .is_some_and(|(_, b)| b.matches("\"demo.orders\"").count() == 6)
    });
    assert!(all_partitions, "{:?}", http_get(port, "/v1/assignments"));
    let first = committed_total(port);
    let flowing = wait_until(Duration::from_secs(30), Duration::from_millis(500), || {
        committed_total(port) > first.max(0) + 100
    });
    assert!(
        flowing,
        "committed offsets did not advance: {first} -> {}",
        committed_total(port)
    );

    let status = std::process::Command::new(kwasm_bin())
        .args(["status", "--url", &format!("http://{listen}")])
        .output()
        .expect("kwasm status runs");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "kwasm status failed: {}{}",
        text,
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(text.contains("PIPELINE") && text.contains("LAG"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains("demo.orders")).count(),
        6,
        "one row per partition:\n{text}"
    );

    dev.sigterm();
    let exit = dev
        .wait_exit(Duration::from_secs(30))
        .expect("kwasm dev stops on SIGTERM");
    assert!(exit.success(), "{exit:?}");
}
