//! The container image, really built and run: `docker/Dockerfile`'s
//! `runtime-prebuilt` stage built by podman (runc, no network, no pull) on
//! the Debian base scripts/setup makes with debootstrap, around the host
//! binary built as the image's build stage builds it (release, `--locked`:
//! `KWASM_RELEASE_BIN`, set by scripts/test). The container then runs as a
//! pod would (non-root, read-only root filesystem with a tmpfs for the
//! compile cache, all capabilities dropped, no privilege escalation, the
//! config mounted at /etc/kwasm/host.toml, brokers from the environment)
//! on the host's network against the test broker: it must answer `/readyz`
//! 200, process messages through its pipeline, and on `podman stop`
//! (SIGTERM) exit 0 within the grace period having committed everything.
//!
//! A step that cannot run here fails the test naming the step and why; it
//! never passes silently.

mod e2e;
mod k8s;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use e2e::{account, http_get};
use kwasm_tests::{
    brokers, committed_offsets, create_topic, end_offsets, free_port, plugin_path,
    produce_sequence, unique, wait_until,
};

/// The base image docker/Dockerfile names (`BASE_IMAGE`).
const BASE_IMAGE: &str = "docker.io/library/debian:bookworm-slim";
const PARTITIONS: i32 = 3;
/// `podman stop`'s grace period, as `terminationGracePeriodSeconds` is a
/// pod's; the host's `shutdown_grace_ms` is below it.
const STOP_GRACE_S: u64 = 30;

/// podman with the flags that work on this machine (docs/kubernetes.md).
fn podman(step: &str, args: &[&str]) -> Output {
    let output = Command::new("podman")
        .arg("--runtime")
        .arg("runc")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("step `{step}`: cannot run podman ({e}); scripts/setup installs it (Debian podman, runc)")
        });
    output
}

fn podman_ok(step: &str, args: &[&str]) -> String {
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

/// Removes the container and the image it was started from when dropped.
struct Cleanup {
    container: String,
    image: String,
}

impl Drop for Cleanup {
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

fn world_readable(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

#[test]
fn the_image_builds_offline_runs_as_a_pod_would_and_stops_cleanly_after_committing() {
    // Step 1: what the build needs.
    let binary = std::env::var_os("KWASM_RELEASE_BIN").unwrap_or_else(|| {
        panic!(
            "step `binary`: KWASM_RELEASE_BIN is not set: scripts/test builds the host as the \
             image's build stage does (cargo build --release --locked -p kwasm-host) and sets it"
        )
    });
    let binary = Path::new(&binary);
    assert!(binary.is_file(), "step `binary`: {} does not exist", binary.display());
    let base = podman("base image", &["image", "exists", BASE_IMAGE]);
    assert!(
        base.status.success(),
        "step `base image`: podman has no {BASE_IMAGE}: no registry is reachable here, so \
         scripts/test imports the debootstrap root filesystem scripts/setup makes \
         (kwasm_container_base in scripts/lib.sh)"
    );

    // Step 2: build the runtime stage around the prebuilt binary, offline.
    let context = tempfile::tempdir().expect("build context");
    std::fs::copy(binary, context.path().join("kwasm")).expect("copy the binary");
    let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/Dockerfile");
    let tag = format!("localhost/kwasm-test:{}", unique("t").to_lowercase());
    let name = unique("kwasm-container");
    let _cleanup = Cleanup {
        container: name.clone(),
        image: tag.clone(),
    };
    let started = Instant::now();
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
            &tag,
            &context.path().to_string_lossy(),
        ],
    );
    println!(
        "container: runtime stage built in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // What the image promises: a non-root numeric user, the port, the
    // healthcheck on /healthz, OCI labels, the binary as the entrypoint.
    let inspect = |format: &str| podman_ok("inspect image", &["image", "inspect", "--format", format, &tag]);
    assert_eq!(inspect("{{.Config.User}}"), "65532:65532");
    assert!(inspect("{{json .Config.ExposedPorts}}").contains("8080/tcp"));
    assert!(inspect("{{json .Config.Healthcheck}}").contains("/healthz"));
    assert_eq!(inspect("{{json .Config.Entrypoint}}"), r#"["/usr/local/bin/kwasm"]"#);
    assert_eq!(
        inspect(r#"{{index .Config.Labels "org.opencontainers.image.title"}}"#),
        "kwasm"
    );
    assert_eq!(
        inspect(r#"{{index .Config.Labels "org.opencontainers.image.revision"}}"#),
        "test"
    );

    // Step 3: run it as the StatefulSet's pod runs.
    let input = unique("container-in");
    let output = format!("{input}-out");
    let group = format!("{input}-group");
    create_topic(&input, PARTITIONS);
    create_topic(&output, PARTITIONS);
    create_topic(&format!("{input}-dlq"), 1);
    let port = free_port();
    let files = tempfile::tempdir().expect("config dir");
    let config = files.path().join("host.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[host]
admin_listen = "127.0.0.1:{port}"
commit_interval_ms = 200
shutdown_grace_ms = 10000

[kafka.consumer_properties]
"session.timeout.ms" = "10000"

[registry]
plugins_topic = "{group}-plugins"
pipelines_topic = "{group}-pipelines"
members_topic = "{group}-members"

[[pipeline]]
name = "container"
plugin = "/plugins/passthrough.wasm"
inputs = [{input:?}]
output = {output:?}
group_id = {group:?}
dead_letter_topic = "{input}-dlq"
"#
        ),
    )
    .expect("write host.toml");
    world_readable(&config);
    let wasm = files.path().join("passthrough.wasm");
    std::fs::copy(plugin_path("passthrough"), &wasm).expect("copy the plugin");
    world_readable(&wasm);
    let produced = produce_sequence(&input, PARTITIONS, 3_000);
    let brokers_env = format!("KWASM_BROKERS={}", brokers());
    let config_mount = format!("{}:/etc/kwasm/host.toml:ro", config.display());
    let wasm_mount = format!("{}:/plugins/passthrough.wasm:ro", wasm.display());
    podman_ok(
        "run",
        &[
            "run",
            "--detach",
            "--name",
            &name,
            "--hostname",
            "kwasm-0",
            "--network=host",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--read-only",
            "--tmpfs",
            "/var/cache/kwasm:rw,mode=0750,uid=65532,gid=65532",
            "--cap-drop=ALL",
            "--security-opt",
            "no-new-privileges",
            "--stop-timeout",
            &STOP_GRACE_S.to_string(),
            "-v",
            &config_mount,
            "-v",
            &wasm_mount,
            "-e",
            &brokers_env,
            &tag,
        ],
    );
    let ready = wait_until(Duration::from_secs(120), Duration::from_millis(200), || {
        http_get(port, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    assert!(
        ready,
        "step `readyz`: the container never answered /readyz 200 on 127.0.0.1:{port}: {:?}",
        http_get(port, "/readyz")
    );
    assert_eq!(http_get(port, "/healthz").map(|(s, _)| s), Some(200));
    // The image's own healthcheck command, run in the container.
    podman_ok("healthcheck", &["healthcheck", "run", &name]);
    let records = e2e::read_output(&output, produced.len(), Duration::from_secs(120));
    let acc = account(&produced, &records);
    println!(
        "container: {} produced, lost {}, duplicates {}, out of order {}",
        produced.len(),
        acc.lost,
        acc.duplicates,
        acc.out_of_order
    );
    assert_eq!((acc.lost, acc.duplicates, acc.out_of_order), (0, 0, 0), "{acc:?}");

    // Step 4: podman stop = SIGTERM, then SIGKILL after the grace period.
    let stopping = Instant::now();
    podman_ok("stop", &["stop", "-t", &STOP_GRACE_S.to_string(), &name]);
    let took = stopping.elapsed();
    let exit = podman_ok("exit code", &["inspect", "--format", "{{.State.ExitCode}}", &name]);
    println!("container: stopped in {:.1} s, exit code {exit}", took.as_secs_f64());
    assert_eq!(exit, "0", "step `stop`: exit code {exit} (137 would be SIGKILL after the grace period)");
    assert!(took < Duration::from_secs(STOP_GRACE_S), "step `stop`: took {took:?}");
    let logs = podman_ok("logs", &["logs", &name]);
    let logs = logs + &String::from_utf8_lossy(&podman("logs", &["logs", &name]).stderr);
    assert!(logs.contains("kwasm host stopped"), "no clean stop in the log:\n{logs}");
    // The host id defaulted to the hostname (the pod name in Kubernetes).
    assert!(logs.contains("host=kwasm-0"), "host id is not the hostname:\n{logs}");
    let ends = end_offsets(&input);
    let committed = committed_offsets(&group, &input, PARTITIONS);
    assert_eq!(
        committed,
        ends.iter().map(|e| Some(*e)).collect::<Vec<_>>(),
        "step `commit`: committed offsets are not the end offsets"
    );
    drop(files);
    let _ = k8s::assignment_changes("");
}
