//! Shared pieces of the Kubernetes-shaped tests (`tests/static_membership.rs`,
//! `tests/manifests.rs`, `tests/container.rs`): a `kwasm serve` host started
//! from a config text and environment the test writes, as a pod would get
//! them, and what its admin API says.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use kwasm_tests::{HostProcess, wait_until};

use crate::e2e::http_get;

/// A host process with its admin port and config file.
pub struct ServeHost {
    pub process: HostProcess,
    pub admin_port: u16,
    pub config: tempfile::NamedTempFile,
}

impl ServeHost {
    /// `kwasm serve --config <config_text>` with `env`, labelled `name`.
    pub fn start(config_text: &str, env: &[(&str, &str)], admin_port: u16, name: &str) -> ServeHost {
        let mut config = tempfile::NamedTempFile::new().expect("temp config file");
        config
            .write_all(config_text.as_bytes())
            .expect("write config");
        let path = config.path().to_string_lossy().into_owned();
        let mut env = env.to_vec();
        env.push(("KWASM_LOG", "info"));
        let process = HostProcess::spawn(&["serve", "--config", &path], &env, name);
        ServeHost {
            process,
            admin_port,
            config,
        }
    }

    /// Partitions of `topic` this host holds (first pipeline), per its
    /// admin API; `None` while the API does not answer.
    pub fn partitions(&self, topic: &str) -> Option<BTreeSet<i32>> {
        partitions_at(self.admin_port, topic)
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        wait_until(timeout, Duration::from_millis(100), || {
            http_get(self.admin_port, "/readyz").is_some_and(|(s, _)| s == 200)
        })
    }
}

/// Partitions of `topic` held by the host whose admin API is on `port`.
pub fn partitions_at(port: u16, topic: &str) -> Option<BTreeSet<i32>> {
    let (status, body) = http_get(port, "/v1/assignments")?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let parts = v["pipelines"][0]["partitions"].as_array()?;
    Some(
        parts
            .iter()
            .filter(|p| p["topic"] == topic)
            .filter_map(|p| p["partition"].as_i64().map(|p| p as i32))
            .collect(),
    )
}

/// Lines of `log` that say a partition was assigned or released.
pub fn assignment_changes(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("partition assigned") || l.contains("partition released"))
        .map(str::to_owned)
        .collect()
}
