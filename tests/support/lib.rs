//! Support library for kwasm's end-to-end tests (the `tests/*.rs` files of
//! this package).
//!
//! End-to-end tests run against real things: WASM plugins built for
//! `wasm32-wasip2`, the `kwasm` host binary, and one Apache Kafka node
//! (KRaft). `scripts/test` builds and starts all three and passes them in
//! through the environment:
//!
//! | variable | set by `scripts/test` to | read by |
//! |---|---|---|
//! | `KWASM_PLUGIN_DIR` | `$CARGO_TARGET_DIR/wasm32-wasip2/release` | [`plugin_path`] |
//! | `KWASM_BIN` | the freshly built `kwasm` binary | [`kwasm_bin`] |
//! | `KWASM_TEST_BROKERS` | `127.0.0.1:PORT` of the broker it started | [`brokers`] |
//! | `KWASM_KAFKA_LIBS` | the Apache Kafka jars | `scripts/kafka-node`, run by [`KafkaCluster`] |
//!
//! A missing variable is a panic with a message saying what to run, never a
//! silent skip: a test that did not run must not look like a test that passed.
//!
//! All tests of a run share the one broker, so every test names its topics and
//! groups with [`unique`]. Every helper here is blocking and safe to call from a
//! plain `#[test]` function (and from inside a tokio runtime: the few async
//! rdkafka calls run on a thread of their own).
//!
//! Modules:
//! - [`kafka`]: topics, producing, consuming, watermarks, committed offsets and
//!   group membership, as a user of the broker would observe them.
//! - [`assignment`]: decoding of the Kafka ConsumerProtocol member assignment.
//! - [`keyed`]: keyed traffic at a steady rate, and its exactly-once accounting.
//! - [`process`]: [`HostProcess`], a child process with its output in a log file.
//! - [`broker`]: [`KafkaCluster`], Kafka nodes a test starts, kills and restarts.

pub mod assignment;
pub mod broker;
pub mod kafka;
pub mod keyed;
pub mod process;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use assignment::{Assignment, decode_assignment};
pub use broker::KafkaCluster;
pub use kafka::{
    Group, GroupDescription, Member, OutRecord, Record, by_partition, committed_offsets,
    committed_to_end, consume_all, create_topic, create_topic_replicated, create_topic_with_config,
    describe_consumer_group, describe_group, end_offsets, group_coordinator, group_members,
    partition_leaders, produce, produce_sequence, produce_transactions, read_to_end, sequence_of,
    wait_committed_to_end,
};
pub use process::HostProcess;

/// Path of the built plugin `name`: `$KWASM_PLUGIN_DIR/<name, with `-` as `_`>.wasm`
/// (cargo names a crate's artifact after the crate with dashes turned into
/// underscores, so `other-world` is `other_world.wasm`).
///
/// # Panics
/// If `KWASM_PLUGIN_DIR` is unset or the file does not exist: the plugins are
/// built by `scripts/test`.
pub fn plugin_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("KWASM_PLUGIN_DIR").unwrap_or_else(|| {
        panic!(
            "KWASM_PLUGIN_DIR is not set, so plugin `{name}` cannot be found: \
             run scripts/test, which builds the plugins and sets it"
        )
    });
    let path = PathBuf::from(dir).join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        path.is_file(),
        "plugin `{name}` not found at {}: run scripts/test, which builds the plugins \
         (cargo build --release --target wasm32-wasip2 -p {name})",
        path.display()
    );
    path
}

/// Path of the `kwasm` host binary: `$KWASM_BIN`, else
/// `$CARGO_TARGET_DIR/debug/kwasm`.
///
/// # Panics
/// If neither variable is set, or the file does not exist.
pub fn kwasm_bin() -> PathBuf {
    let path = if let Some(bin) = std::env::var_os("KWASM_BIN") {
        PathBuf::from(bin)
    } else if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        PathBuf::from(target).join("debug").join("kwasm")
    } else {
        panic!(
            "neither KWASM_BIN nor CARGO_TARGET_DIR is set, so the kwasm binary cannot be \
             found: run scripts/test, which builds it (cargo build -p kwasm-host --bin kwasm)"
        )
    };
    assert!(
        path.is_file(),
        "kwasm binary not found at {}: run scripts/test, which builds it \
         (cargo build -p kwasm-host --bin kwasm)",
        path.display()
    );
    path
}

/// Bootstrap servers of the test broker: `$KWASM_TEST_BROKERS`.
///
/// # Panics
/// If the variable is unset or empty.
pub fn brokers() -> String {
    match std::env::var("KWASM_TEST_BROKERS") {
        Ok(brokers) if !brokers.trim().is_empty() => brokers,
        _ => panic!(
            "KWASM_TEST_BROKERS is not set: Kafka end-to-end tests need the broker started \
             by scripts/test (run scripts/test, or start one with `. scripts/lib.sh; \
             kwasm_start_kafka DIR`, which exports KWASM_TEST_BROKERS)"
        ),
    }
}

/// A name no other test of this or a concurrent run uses, for topics and
/// consumer groups on the shared broker: `<prefix>-<pid>-<counter>-<micros>`.
///
/// `prefix` should itself be a valid Kafka topic name (ASCII letters, digits,
/// `.`, `_`, `-`).
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{micros}", std::process::id())
}

/// Calls `condition` every `poll_interval` until it returns true (then returns
/// true) or `timeout` has passed (then returns false). `condition` is always
/// called at least once, and once more at the deadline.
pub fn wait_until(
    timeout: Duration,
    poll_interval: Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(poll_interval.min(deadline - now));
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it for a
/// listener that is closed again before returning). Another process may take it
/// in between; that is rare enough for tests.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("cannot read the address of a bound listener: {e}"))
        .port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_keep_the_prefix() {
        let a = unique("orders");
        let b = unique("orders");
        assert_ne!(a, b);
        assert!(a.starts_with("orders-"), "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'),
            "{a} is not a valid topic name"
        );
    }

    #[test]
    fn wait_until_reports_success_and_timeout() {
        let mut calls = 0;
        assert!(wait_until(
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                calls += 1;
                calls == 3
            }
        ));
        assert_eq!(calls, 3);

        let started = Instant::now();
        assert!(!wait_until(
            Duration::from_millis(50),
            Duration::from_millis(10),
            || false
        ));
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).expect("port from free_port is bindable");
    }
}
