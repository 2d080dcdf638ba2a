//! [`KafkaCluster`]: Apache Kafka nodes that a test starts, kills and restarts
//! itself (broker outages, leader and coordinator failures).
//!
//! Each node is one `scripts/kafka-node` process (KRaft, broker and controller
//! in one JVM), the same script `kwasm_start_kafka` in `scripts/lib.sh` runs
//! for the suite's shared broker, so a node is configured in one place. The
//! script `exec`s java, so a node's pid is the JVM's: [`KafkaCluster::kill`]
//! is a real crash, [`KafkaCluster::stop`] a controlled shutdown. A node keeps
//! its directory (and so its data) across a restart, and its ports.
//!
//! The jars come from `$KWASM_KAFKA_LIBS` (exported by `scripts/test`; the
//! script falls back to the tools cache). Dropping the cluster SIGKILLs every
//! node still running and removes the data.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::{HostProcess, free_port, wait_until};

/// How long a node may take from spawn to answering requests (a JVM start,
/// formatting on first start, and catching up with the metadata log).
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// One node of a [`KafkaCluster`].
struct Node {
    id: u32,
    port: u16,
    dir: PathBuf,
    /// `None` while the node is down.
    process: Option<HostProcess>,
}

/// A KRaft cluster of one or more combined broker+controller nodes on
/// 127.0.0.1, owned by one test.
pub struct KafkaCluster {
    nodes: Vec<Node>,
    voters: String,
    cluster_id: String,
    settings: Vec<String>,
    /// Holds every node's directory; removed on drop.
    _dir: tempfile::TempDir,
}

/// `scripts/` of this checkout.
fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
}

impl KafkaCluster {
    /// Starts `nodes` nodes with the launcher's defaults (with 3 or more
    /// nodes, internal topics are replicated 3 times) plus `settings`
    /// (`key=value` broker properties, e.g. `min.insync.replicas=2`), and
    /// waits until every node serves.
    ///
    /// # Panics
    /// If a node does not answer within 90 s; the panic shows its log tail.
    pub fn start(nodes: u32, settings: &[&str]) -> KafkaCluster {
        let dir = tempfile::Builder::new()
            .prefix("kwasm-kafka-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for a Kafka cluster: {e}"));
        let mut voters = Vec::new();
        let mut list = Vec::new();
        for id in 1..=nodes {
            let controller_port = free_port();
            voters.push(format!("{id}@127.0.0.1:{controller_port}"));
            list.push(Node {
                id,
                port: free_port(),
                dir: dir.path().join(format!("node-{id}")),
                process: None,
            });
        }
        let mut cluster = KafkaCluster {
            nodes: list,
            voters: voters.join(","),
            cluster_id: new_cluster_id(),
            settings: settings.iter().map(|s| s.to_string()).collect(),
            _dir: dir,
        };
        let started = Instant::now();
        for id in 1..=nodes {
            cluster.spawn(id);
        }
        for id in 1..=nodes {
            cluster.wait_serving(id);
        }
        println!(
            "Kafka cluster of {nodes} node(s) serving after {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            cluster.bootstrap()
        );
        cluster
    }

    /// Bootstrap servers: every node, comma-separated.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Client port of node `id`.
    pub fn port(&self, id: u32) -> u16 {
        self.node(id).port
    }

    /// Node ids in order.
    pub fn ids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// SIGKILLs node `id` (a crash: no controlled shutdown, no leadership
    /// handoff) and waits until it is gone.
    pub fn kill(&mut self, id: u32) {
        let process = self.take_process(id);
        let mut process = process;
        process.sigkill();
        process
            .wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("Kafka node {id} still running 30 s after SIGKILL"));
    }

    /// SIGTERMs node `id` (controlled shutdown) and waits up to 60 s for it
    /// to exit, then SIGKILLs it.
    pub fn stop(&mut self, id: u32) {
        let mut process = self.take_process(id);
        process.sigterm();
        if process.wait_exit(Duration::from_secs(60)).is_none() {
            process.sigkill();
            process.wait_exit(Duration::from_secs(30));
        }
    }

    /// Starts node `id` again (same ports, same data) and waits until it
    /// serves.
    pub fn restart(&mut self, id: u32) {
        self.spawn(id);
        self.wait_serving(id);
    }

    /// Starts every node in `ids` again, then waits until all serve: a KRaft
    /// quorum needs a majority of its controllers up before any broker
    /// serves, so after a full-cluster outage the nodes must start together.
    pub fn restart_all(&mut self, ids: &[u32]) {
        for &id in ids {
            self.spawn(id);
        }
        for &id in ids {
            self.wait_serving(id);
        }
    }

    /// True while node `id`'s process runs.
    pub fn is_running(&mut self, id: u32) -> bool {
        self.node_mut(id)
            .process
            .as_mut()
            .is_some_and(HostProcess::is_running)
    }

    /// The tail of node `id`'s `server.log`, for failure messages.
    pub fn log_tail(&self, id: u32, lines: usize) -> String {
        let path = self.node(id).dir.join("server.log");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn spawn(&mut self, id: u32) {
        let script = scripts_dir().join("kafka-node");
        let voters = self.voters.clone();
        let cluster_id = self.cluster_id.clone();
        let settings = self.settings.clone();
        let node = self.node_mut(id);
        assert!(node.process.is_none(), "Kafka node {id} is already running");
        let dir = node.dir.to_string_lossy().into_owned();
        let port = node.port.to_string();
        let id_text = id.to_string();
        let mut args = vec![
            script.to_str().expect("script path is UTF-8"),
            &dir,
            &id_text,
            &port,
            &voters,
            &cluster_id,
        ];
        args.extend(settings.iter().map(String::as_str));
        node.process = Some(HostProcess::spawn_program(
            Path::new("/bin/bash"),
            &args,
            &[],
            &format!("kafka-node-{id}"),
        ));
    }

    /// Waits until node `id` answers a Metadata request listing itself (a
    /// KRaft broker opens its client listener only once it has caught up with
    /// the metadata log and registered).
    fn wait_serving(&mut self, id: u32) {
        let port = self.port(id);
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", format!("127.0.0.1:{port}"))
            .set("log_level", "0")
            .create()
            .unwrap_or_else(|e| panic!("cannot create a client for Kafka node {id}: {e}"));
        let mut exited = false;
        let serving = wait_until(START_TIMEOUT, Duration::from_millis(200), || {
            if !self.is_running(id) {
                exited = true;
                return true;
            }
            client
                .fetch_metadata(None, Duration::from_secs(2))
                .is_ok_and(|m| m.brokers().iter().any(|b| b.id() == id as i32))
        });
        let log = self
            .node(id)
            .process
            .as_ref()
            .map(HostProcess::log_contents);
        assert!(
            serving && !exited,
            "Kafka node {id} (port {port}) {} within {} s:\n{}\n{}",
            if exited { "exited" } else { "did not serve" },
            START_TIMEOUT.as_secs(),
            log.unwrap_or_default(),
            self.log_tail(id, 40)
        );
    }

    fn take_process(&mut self, id: u32) -> HostProcess {
        self.node_mut(id)
            .process
            .take()
            .unwrap_or_else(|| panic!("Kafka node {id} is not running"))
    }

    fn node(&self, id: u32) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no Kafka node {id}"))
    }

    fn node_mut(&mut self, id: u32) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no Kafka node {id}"))
    }
}

/// A random KRaft cluster id, from the same function the shell launcher uses.
fn new_cluster_id() -> String {
    let lib = scripts_dir().join("lib.sh");
    let output = Command::new("/bin/bash")
        .arg("-c")
        .arg(format!(". '{}' && kwasm_kafka_cluster_id", lib.display()))
        .output()
        .unwrap_or_else(|e| panic!("cannot run kwasm_kafka_cluster_id: {e}"));
    let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(
        output.status.success() && id.len() == 22,
        "kwasm_kafka_cluster_id failed ({:?}): {id:?} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    id
}
