//! Shared pieces of the Kubernetes-shaped tests (`tests/static_membership.rs`,
//! `tests/manifests.rs`, `tests/container.rs`): a `kwasm serve` host started
//! from a config text and environment the test writes, as a pod would get
//! them, and what its admin API says.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use kwasm_tests::{HostProcess, wait_until};

use crate::e2e::{http_get, partitions_at};

/// A host process with its admin port and config file.
pub struct ServeHost {
    pub process: HostProcess,
    pub admin_port: u16,
    pub config: tempfile::NamedTempFile,
}

impl ServeHost {
    /// `kwasm serve --config <config_text>` with `env`, labelled `name`.
    pub fn start(
        config_text: &str,
        env: &[(&str, &str)],
        admin_port: u16,
        name: &str,
    ) -> ServeHost {
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

/// Lines of `log` that say a partition was assigned or released.
pub fn assignment_changes(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("partition assigned") || l.contains("partition released"))
        .map(str::to_owned)
        .collect()
}

/// The base image docker/Dockerfile names (`BASE_IMAGE`).
pub const BASE_IMAGE: &str = "docker.io/library/debian:bookworm-slim";

/// podman with the flags that work on this machine (docs/kubernetes.md):
/// Debian's runc, not crun.
pub fn podman(step: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("podman")
        .arg("--runtime")
        .arg("runc")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("step `{step}`: cannot run podman ({e}); scripts/setup installs it (Debian podman, runc)")
        })
}

/// [`podman`], failing the test (naming the step) unless it succeeds;
/// returns its trimmed stdout.
pub fn podman_ok(step: &str, args: &[&str]) -> String {
    let output = podman(step, args);
    assert!(
        output.status.success(),
        "step `{step}`: podman {} failed ({}):\n{}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Builds docker/Dockerfile's `runtime-prebuilt` stage around
/// `KWASM_RELEASE_BIN` (built as the build stage builds it), offline, as
/// `tag`. Fails the test, naming the step, when something it needs is
/// missing.
pub fn build_image(tag: &str) -> Duration {
    let binary = std::env::var_os("KWASM_RELEASE_BIN").unwrap_or_else(|| {
        panic!(
            "step `binary`: KWASM_RELEASE_BIN is not set: scripts/test builds the host as the \
             image's build stage does (cargo build --release --locked -p kwasm-host) and sets it"
        )
    });
    let binary = std::path::Path::new(&binary);
    assert!(
        binary.is_file(),
        "step `binary`: {} does not exist",
        binary.display()
    );
    let base = podman("base image", &["image", "exists", BASE_IMAGE]);
    assert!(
        base.status.success(),
        "step `base image`: podman has no {BASE_IMAGE}: no registry is reachable here, so \
         scripts/test imports the debootstrap root filesystem scripts/setup makes \
         (kwasm_container_base in scripts/lib.sh)"
    );
    let context = tempfile::tempdir().expect("build context");
    std::fs::copy(binary, context.path().join("kwasm")).expect("copy the binary");
    let dockerfile = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/Dockerfile");
    let started = std::time::Instant::now();
    podman_ok(
        "build",
        &[
            "build",
            "--pull=never",
            "--network=none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--format",
            "docker",
            "--target",
            "runtime-prebuilt",
            "--build-arg",
            "REVISION=test",
            "-f",
            &dockerfile.to_string_lossy(),
            "-t",
            tag,
            &context.path().to_string_lossy(),
        ],
    );
    started.elapsed()
}

/// Removes a container and an image when dropped; prints the container's
/// log first if the test is failing.
pub struct PodmanCleanup {
    pub container: String,
    pub image: String,
}

impl Drop for PodmanCleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = podman("logs", &["logs", &self.container]);
            eprintln!(
                "---- container log ----\n{}{}\n---- end ----",
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        let _ = podman("cleanup", &["rm", "-f", "-t", "0", &self.container]);
        let _ = podman("cleanup", &["rmi", "-f", &self.image]);
    }
}

/// Everything a container printed (stdout and stderr).
pub fn container_log(name: &str) -> String {
    let logs = podman("logs", &["logs", name]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&logs.stdout),
        String::from_utf8_lossy(&logs.stderr)
    )
}

/// A directory owned by the image's user (65532), as an `emptyDir` is for
/// a pod with `fsGroup: 65532`. (A podman tmpfs keeps the mount point's
/// root ownership here, whatever its `mode=`.)
pub fn empty_dir(parent: &std::path::Path, name: &str) -> std::path::PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).expect("create the emptyDir stand-in");
    std::os::unix::fs::chown(&dir, Some(65532), Some(65532)).unwrap_or_else(|e| {
        panic!(
            "step `emptyDir`: cannot chown {} to 65532 ({e}); the test runs podman as root",
            dir.display()
        )
    });
    dir
}
