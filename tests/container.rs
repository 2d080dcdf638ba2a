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
use std::time::{Duration, Instant};

use e2e::{account, http_get};
use k8s::{PodmanCleanup, build_image, container_log, podman_ok};
use kwasm_tests::{
    brokers, committed_offsets, create_topic, end_offsets, free_port, plugin_path,
    produce_sequence, unique, wait_until,
};

const PARTITIONS: i32 = 3;
/// `podman stop`'s grace period, as `terminationGracePeriodSeconds` is a
/// pod's; the host's `shutdown_grace_ms` is below it.
const STOP_GRACE_S: u64 = 30;

fn world_readable(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

#[test]
fn the_image_builds_offline_runs_as_a_pod_would_and_stops_cleanly_after_committing() {
    // Steps 1 and 2: build the runtime stage around the prebuilt binary,
    // offline.
    let tag = format!("localhost/kwasm-test:{}", unique("t").to_lowercase());
    let name = unique("kwasm-container");
    let _cleanup = PodmanCleanup {
        container: name.clone(),
        image: tag.clone(),
    };
    let took = build_image(&tag);
    println!(
        "container: runtime stage built in {:.1} s",
        took.as_secs_f64()
    );
    // What the image promises: a non-root numeric user, the port, the
    // healthcheck on /healthz, OCI labels, the binary as the entrypoint.
    let inspect = |format: &str| {
        podman_ok(
            "inspect image",
            &["image", "inspect", "--format", format, &tag],
        )
    };
    assert_eq!(inspect("{{.Config.User}}"), "65532:65532");
    assert!(inspect("{{json .Config.ExposedPorts}}").contains("8080/tcp"));
    assert!(inspect("{{json .Config.Healthcheck}}").contains(r#""/usr/local/bin/kwasm","health""#));
    assert_eq!(
        inspect("{{json .Config.Entrypoint}}"),
        r#"["/usr/local/bin/kwasm"]"#
    );
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
    let health_env = format!("KWASM_HEALTH_URL=http://127.0.0.1:{port}/healthz");
    let cache_mount = format!(
        "{}:/var/cache/kwasm",
        k8s::empty_dir(files.path(), "cache").display()
    );
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
            "-v",
            &cache_mount,
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
            "-e",
            &health_env,
            // As the StatefulSet sets it: one JSON object per line.
            "-e",
            "KWASM_LOG_JSON=true",
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
    let records = kwasm_tests::read_to_end(&output, produced.len(), Duration::from_secs(120));
    account(&produced, &records).assert_each_once("container", produced.len());

    // Step 4: podman stop = SIGTERM, then SIGKILL after the grace period.
    let stopping = Instant::now();
    podman_ok("stop", &["stop", "-t", &STOP_GRACE_S.to_string(), &name]);
    let took = stopping.elapsed();
    let exit = podman_ok(
        "exit code",
        &["inspect", "--format", "{{.State.ExitCode}}", &name],
    );
    println!(
        "container: stopped in {:.1} s, exit code {exit}",
        took.as_secs_f64()
    );
    assert_eq!(
        exit, "0",
        "step `stop`: exit code {exit} (137 would be SIGKILL after the grace period)"
    );
    assert!(
        took < Duration::from_secs(STOP_GRACE_S),
        "step `stop`: took {took:?}"
    );
    let logs = container_log(&name);
    assert!(
        logs.contains("kwasm host stopped"),
        "no clean stop in the log:\n{logs}"
    );
    // The host id defaulted to the hostname (the pod name in Kubernetes).
    assert!(
        logs.contains(r#""host":"kwasm-0""#),
        "host id is not the hostname:\n{logs}"
    );
    let ends = end_offsets(&input);
    let committed = committed_offsets(&group, &input, PARTITIONS);
    assert_eq!(
        committed,
        ends.iter().map(|e| Some(*e)).collect::<Vec<_>>(),
        "step `commit`: committed offsets are not the end offsets"
    );
    drop(files);
}
