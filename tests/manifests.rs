//! The manifests' contract: read the StatefulSet that `kubectl kustomize
//! docker/k8s` renders (with an overlay that sets only the brokers, as an
//! operator's overlay would) and the one the Helm chart renders, and run
//! the host *exactly as the pod spec says*, in the image: its command and
//! args, its env (downward-API values filled in as a kubelet would: pod
//! name `kwasm-0`, pod IP 127.0.0.1; the Secret's keys as env), the
//! ConfigMap mounted as a file, the emptyDir, the securityContext and the
//! memory limit; then probe the very paths and ports the startup,
//! liveness and readiness probes name, deploy a plugin through the API as
//! docs/kubernetes.md says, and check that `terminationGracePeriodSeconds`
//! covers a drain measured under load (exit 0 before the kubelet's
//! SIGKILL, everything committed processed exactly once), and that the
//! numbers agree: grace period above `shutdown_grace_ms`, session timeout
//! above the grace period, plugin memory budget within the memory limit.
//!
//! The static checks (schemas, lint) are scripts/k8s/static-checks.

mod e2e;
mod failover;
mod k8s;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use k8s::{PodmanCleanup, build_image, container_log, empty_dir, podman_ok};
use kwasm_host::config::Config;
use kwasm_tests::{
    brokers, committed_offsets, create_topic, end_offsets, free_port, plugin_path, unique,
    wait_until,
};

const PARTITIONS: i32 = failover::PARTITIONS;
const POD_IP: &str = "127.0.0.1";

/// The venv of the PyPI tools (scripts/setup; scripts/test exports it).
fn tool(name: &str) -> PathBuf {
    let venv = std::env::var_os("KWASM_K8S_VENV").unwrap_or_else(|| {
        panic!(
            "KWASM_K8S_VENV is not set: scripts/test points it at the venv of \
             scripts/k8s/requirements.txt that scripts/setup installs"
        )
    });
    let path = PathBuf::from(venv).join("bin").join(name);
    assert!(
        path.is_file(),
        "{} not found: run scripts/setup",
        path.display()
    );
    path
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(step: &str, command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("step `{step}`: cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "step `{step}`: {command:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A YAML stream as JSON documents (PyYAML from the venv: the test crate
/// keeps no YAML parser of its own).
fn yaml_docs(yaml: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("in.yaml");
    std::fs::write(&file, yaml).expect("write yaml");
    let json = run(
        "yaml",
        Command::new(tool("python")).args([
            "-c",
            "import sys, json, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)",
            &file.to_string_lossy(),
        ]),
    );
    serde_json::from_str(&json).expect("json from yaml")
}

/// `kubectl kustomize` of an overlay over docker/k8s that sets only
/// `KWASM_BROKERS`.
fn render_kustomize(brokers: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("overlay dir");
    run(
        "copy base",
        Command::new("cp").args([
            "-r",
            &root().join("docker/k8s").to_string_lossy(),
            &dir.path().join("base").to_string_lossy(),
        ]),
    );
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [base]\npatches:\n  - path: brokers.yaml\n",
    )
    .expect("write overlay");
    std::fs::write(
        dir.path().join("brokers.yaml"),
        format!(
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: kwasm\nspec:\n  template:\n    spec:\n      containers:\n        - name: kwasm\n          env:\n            - name: KWASM_BROKERS\n              value: {brokers:?}\n"
        ),
    )
    .expect("write patch");
    yaml_docs(&run(
        "kustomize",
        Command::new(tool("kubectl")).args(["kustomize", &dir.path().to_string_lossy()]),
    ))
}

/// The Helm chart rendered with the brokers and an admin port of the
/// test's.
fn render_helm(brokers: &str, port: u16) -> Vec<Value> {
    yaml_docs(&run(
        "helm template",
        Command::new(tool("python")).args([
            &root().join("scripts/k8s/helm.py").to_string_lossy() as &str,
            "template",
            &root().join("docker/helm/kwasm").to_string_lossy(),
            "--set",
            &format!("kafka.brokers={brokers}"),
            "--set",
            &format!("admin.port={port}"),
        ]),
    ))
}

fn find<'a>(docs: &'a [Value], kind: &str, name: Option<&str>) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && name.is_none_or(|n| d["metadata"]["name"] == n))
        .unwrap_or_else(|| panic!("no {kind} {name:?} in the render"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Expands `$(VAR)` from the variables defined before, as the kubelet does
/// (`$$` is a literal `$`; an unknown reference stays as written).
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$$") {
            out.push('$');
            rest = t;
        } else if let Some(end) = tail.strip_prefix("$(").and_then(|t| t.find(')')) {
            let name = &tail[2..2 + end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&tail[..3 + end]),
            }
            rest = &tail[3 + end..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// What the kubelet would run for pod `pod` of this render.
struct Pod {
    name: String,
    command: Vec<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// (host path, container path, read-only)
    mounts: Vec<(PathBuf, String, bool)>,
    admin_port: u16,
    /// (probe, path, port)
    probes: Vec<(&'static str, String, u16)>,
    startup_budget: Duration,
    grace: Duration,
    user: String,
    read_only_root: bool,
    drop_all: bool,
    no_new_privileges: bool,
    memory_limit: String,
    /// The host config as the host reads it: the mounted file plus the env.
    effective: Config,
}

fn kubelet(docs: &[Value], pod: &str, secret: &BTreeMap<&str, String>, files: &Path) -> Pod {
    let sts = find(docs, "StatefulSet", None);
    let spec = &sts["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    // Env, in order, as the kubelet builds it.
    let mut env: Vec<(String, String)> = Vec::new();
    for e in c["env"].as_array().expect("env") {
        let name = e["name"].as_str().expect("env name").to_owned();
        let value = if let Some(v) = e["value"].as_str() {
            Some(expand(v, &env))
        } else if let Some(field) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some(match field {
                "metadata.name" => pod.to_owned(),
                "status.podIP" => POD_IP.to_owned(),
                other => panic!("env {name}: fieldRef {other} is not filled by this test"),
            })
        } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
            let key = r["key"].as_str().expect("secret key");
            match secret.get(key) {
                Some(v) => Some(v.clone()),
                None if r.get("optional") == Some(&json!(true)) => None,
                None => panic!("env {name}: secret key {key} is required and missing"),
            }
        } else {
            panic!("env {name}: a source this test does not fill: {e}")
        };
        if let Some(value) = value {
            env.push((name, value));
        }
    }
    // Ports and probes.
    let ports = c["ports"].as_array().expect("ports");
    let port_of = |p: &Value| -> u16 {
        match p {
            Value::Number(n) => n.as_u64().expect("port") as u16,
            Value::String(name) => ports
                .iter()
                .find(|q| q["name"] == name.as_str())
                .and_then(|q| q["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("probe names port {name}, which the container lacks"))
                as u16,
            other => panic!("port {other}"),
        }
    };
    let admin_port = port_of(&json!("admin"));
    let mut probes = Vec::new();
    for (kind, key) in [
        ("startup", "startupProbe"),
        ("liveness", "livenessProbe"),
        ("readiness", "readinessProbe"),
    ] {
        let get = &c[key]["httpGet"];
        assert!(get.is_object(), "{key} is not an httpGet probe");
        probes.push((
            kind,
            get["path"].as_str().expect("path").to_owned(),
            port_of(&get["port"]),
        ));
    }
    let startup = &c["startupProbe"];
    let startup_budget = Duration::from_secs(
        startup["periodSeconds"].as_u64().unwrap_or(10)
            * startup["failureThreshold"].as_u64().unwrap_or(3),
    );
    // Volumes: the ConfigMap's items as files, emptyDirs as empty dirs.
    let mut mounts = Vec::new();
    let mut config_file = None;
    for m in c["volumeMounts"].as_array().expect("volumeMounts") {
        let volume = spec["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == m["name"]))
            .unwrap_or_else(|| panic!("mount {} names no volume", m["name"]));
        let target = m["mountPath"].as_str().expect("mountPath").to_owned();
        let host = if let Some(cm) = volume["configMap"].as_object() {
            let map = find(docs, "ConfigMap", cm["name"].as_str());
            let dir = files.join(volume["name"].as_str().expect("volume name"));
            std::fs::create_dir_all(&dir).expect("configmap dir");
            for item in cm["items"].as_array().expect("configMap items") {
                let path = dir.join(item["path"].as_str().expect("item path"));
                let key = item["key"].as_str().expect("item key");
                std::fs::write(&path, map["data"][key].as_str().expect("configmap key"))
                    .expect("write");
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                    .expect("chmod");
                if format!("{target}/{}", item["path"].as_str().unwrap_or_default())
                    == "/etc/kwasm/host.toml"
                {
                    config_file = Some(path);
                }
            }
            dir
        } else if volume["emptyDir"].is_object() {
            empty_dir(files, volume["name"].as_str().expect("volume name"))
        } else {
            panic!("volume {volume}: a kind this test does not provide")
        };
        mounts.push((host, target, m["readOnly"] == json!(true)));
    }
    // The config as the host will read it: the file the args name, plus env.
    let args = strings(&c["args"]);
    assert_eq!(
        args.iter()
            .skip_while(|a| *a != "--config")
            .nth(1)
            .map(String::as_str),
        Some("/etc/kwasm/host.toml"),
        "the args name another config file than the ConfigMap's: {args:?}"
    );
    let config_file =
        config_file.expect("host.toml mounted from the ConfigMap at /etc/kwasm/host.toml");
    let effective = Config::read(&config_file)
        .and_then(|c| c.with_env_from(env.iter().map(|(k, v)| (k.into(), v.into()))))
        .and_then(|c| c.validate().map(|()| c))
        .unwrap_or_else(|e| panic!("the host would refuse this pod's config: {e}"));
    let pod_sc = &spec["securityContext"];
    let sc = &c["securityContext"];
    Pod {
        name: pod.to_owned(),
        command: strings(&c["command"]),
        args,
        env,
        mounts,
        admin_port,
        probes,
        startup_budget,
        grace: Duration::from_secs(
            spec["terminationGracePeriodSeconds"]
                .as_u64()
                .expect("grace period"),
        ),
        user: format!("{}:{}", pod_sc["runAsUser"], pod_sc["runAsGroup"]),
        read_only_root: sc["readOnlyRootFilesystem"] == json!(true),
        drop_all: strings(&sc["capabilities"]["drop"]) == ["ALL"],
        no_new_privileges: sc["allowPrivilegeEscalation"] == json!(false),
        memory_limit: c["resources"]["limits"]["memory"]
            .as_str()
            .expect("memory limit")
            .to_owned(),
        effective,
    }
}

fn memory_bytes(quantity: &str) -> u64 {
    for (suffix, unit) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if let Some(n) = quantity.strip_suffix(suffix) {
            return n.parse::<u64>().expect("memory quantity") * unit;
        }
    }
    quantity.parse().expect("memory quantity in bytes")
}

/// The numbers of the pod spec and the host config agree.
fn check_consistency(label: &str, pod: &Pod) {
    let host = &pod.effective.host;
    assert!(
        pod.effective.host.static_membership,
        "{label}: static membership is off"
    );
    assert_eq!(host.id, pod.name, "{label}: host.id is not the pod name");
    assert_eq!(
        host.admin_listen,
        format!("{POD_IP}:{}", pod.admin_port),
        "{label}: the host does not listen where the probes and the Service look"
    );
    let grace_ms = pod.grace.as_millis() as u64;
    assert!(
        grace_ms > host.shutdown_grace_ms,
        "{label}: terminationGracePeriodSeconds {grace_ms} ms is not above shutdown_grace_ms {}",
        host.shutdown_grace_ms
    );
    let session: u64 = pod.effective.kafka.consumer_properties["session.timeout.ms"]
        .parse()
        .expect("session.timeout.ms");
    assert!(
        session > grace_ms,
        "{label}: session.timeout.ms {session} is not above the grace period {grace_ms}: a static member stopped for the whole grace period loses its partitions"
    );
    let limit = memory_bytes(&pod.memory_limit);
    let budget = host.plugin_memory_budget_bytes() as u64;
    assert!(
        budget * 2 <= limit,
        "{label}: plugin memory budget {budget} is more than half of the memory limit {limit}"
    );
    assert!(
        pod.startup_budget >= Duration::from_secs(120),
        "{label}: startup probe allows only {:?}",
        pod.startup_budget
    );
    assert!(
        pod.read_only_root && pod.drop_all && pod.no_new_privileges,
        "{label}: securityContext"
    );
    assert_eq!(pod.user, "65532:65532", "{label}: runAsUser/runAsGroup");
}

/// An admin API call with the Secret's token.
fn api(port: u16, token: &str, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let url = format!("http://{POD_IP}:{port}{path}");
    let auth = format!("Bearer {token}");
    let response = match method {
        "GET" => agent.get(&url).header("Authorization", &auth).call(),
        "DELETE" => agent.delete(&url).header("Authorization", &auth).call(),
        "POST" => agent
            .post(&url)
            .header("Authorization", &auth)
            .send(&body[..]),
        "PUT" => agent
            .put(&url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(&body[..]),
        _ => unreachable!(),
    };
    let mut response = response.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn podman_run(pod: &Pod, container: &str, image: &str) {
    let mut args: Vec<String> = [
        "run",
        "--detach",
        "--name",
        container,
        "--hostname",
        &pod.name,
        "--network=host",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--user",
        &pod.user,
        "--memory",
        &pod.memory_limit,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if pod.read_only_root {
        args.push("--read-only".into());
    }
    if pod.drop_all {
        args.push("--cap-drop=ALL".into());
    }
    if pod.no_new_privileges {
        args.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    for (host, target, ro) in &pod.mounts {
        args.extend([
            "-v".into(),
            format!(
                "{}:{target}{}",
                host.display(),
                if *ro { ":ro" } else { "" }
            ),
        ]);
    }
    for (k, v) in &pod.env {
        args.extend(["-e".into(), format!("{k}={v}")]);
    }
    args.extend([
        "--stop-timeout".into(),
        pod.grace.as_secs().to_string(),
        "--entrypoint".into(),
        serde_json::to_string(&pod.command).expect("command"),
        image.into(),
    ]);
    args.extend(pod.args.iter().cloned());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    podman_ok("run the pod's container", &refs);
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    e2e::http_get(port, path).map(|(s, _)| s)
}

/// Runs `pod` in the image, probes it, deploys passthrough through the API,
/// drains it under load, restarts it, and removes the pipeline.
fn run_pod(label: &str, pod: &Pod, secret_token: &str, image: &str) {
    let container = unique("kwasm-pod");
    let _cleanup = PodmanCleanup {
        container: container.clone(),
        image: String::new(),
    };
    let started = Instant::now();
    podman_run(pod, &container, image);
    // The probes, on the paths and ports they name, in the kubelet's order.
    for (kind, path, port) in &pod.probes {
        let budget = if *kind == "startup" {
            pod.startup_budget
        } else {
            Duration::from_secs(30)
        };
        let ok = wait_until(budget, Duration::from_millis(200), || {
            http_status(*port, path) == Some(200)
        });
        assert!(
            ok,
            "{label}: {kind} probe GET {path} on port {port} never answered 200: {:?}\n{}",
            http_status(*port, path),
            container_log(&container)
        );
        println!(
            "{label}: {kind} probe {path}:{port} 200 after {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    // Deploy a plugin and a pipeline through the API with the Secret's token.
    let name = unique("k8s").replace('-', "");
    let input = format!("{name}-in");
    let output = format!("{name}-out");
    create_topic(&input, PARTITIONS);
    create_topic(&output, PARTITIONS);
    create_topic(&format!("{name}.dlq"), 1);
    let port = pod.admin_port;
    let wasm = std::fs::read(plugin_path("passthrough")).expect("plugin");
    let (status, body) = api(
        port,
        secret_token,
        "POST",
        &format!("/v1/plugins/{name}"),
        wasm,
    );
    assert_eq!(status, 201, "{label}: plugin upload: {body}");
    let version = body["version"].as_u64().expect("version");
    let pipeline =
        json!({"plugin": format!("{name}@{version}"), "inputs": [input], "output": output});
    let (status, body) = api(
        port,
        secret_token,
        "PUT",
        &format!("/v1/pipelines/{name}"),
        pipeline.to_string().into_bytes(),
    );
    assert_eq!(status, 200, "{label}: pipeline: {body}");
    let group = format!("kwasm-{name}");
    let all: Vec<i64> = (0..PARTITIONS as i64).collect();
    let holds_all = |token: &str| {
        let (status, body) = api(port, token, "GET", "/v1/assignments", Vec::new());
        status == 200
            && body["pipelines"].as_array().is_some_and(|ps| {
                ps.iter().any(|p| {
                    p["pipeline"] == name.as_str()
                        && p["partitions"].as_array().is_some_and(|parts| {
                            let mut got: Vec<i64> = parts
                                .iter()
                                .filter_map(|x| x["partition"].as_i64())
                                .collect();
                            got.sort();
                            got == all
                        })
                })
            })
    };
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
            holds_all(secret_token)
        }),
        "{label}: the pod never held every partition of the deployed pipeline"
    );
    // Under load: records keep arriving while the pod drains.
    let producer = failover::produce_steadily(input.clone(), 40, 100, Duration::from_millis(100));
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            committed_offsets(&group, &input, PARTITIONS)
                .iter()
                .all(|c| c.is_some_and(|c| c > 0))
        }),
        "{label}: nothing committed under load"
    );
    // Two more seconds of load, so the drain has work in flight.
    std::thread::sleep(Duration::from_secs(2));
    let stopping = Instant::now();
    podman_ok(
        "stop (SIGTERM)",
        &["stop", "-t", &pod.grace.as_secs().to_string(), &container],
    );
    let drain = stopping.elapsed();
    let exit = podman_ok(
        "exit code",
        &["inspect", "--format", "{{.State.ExitCode}}", &container],
    );
    println!(
        "{label}: drain under load took {:.2} s (terminationGracePeriodSeconds {} s, shutdown_grace_ms {}), exit code {exit}",
        drain.as_secs_f64(),
        pod.grace.as_secs(),
        pod.effective.host.shutdown_grace_ms
    );
    assert_eq!(
        exit, "0",
        "{label}: the drain did not end with exit 0 (137 = SIGKILL at the grace deadline)"
    );
    assert!(
        drain < pod.grace,
        "{label}: drain {drain:?} is not within the grace period"
    );
    // What was committed at the drain is output, once.
    let committed: Vec<i64> = committed_offsets(&group, &input, PARTITIONS)
        .into_iter()
        .map(|c| c.unwrap_or(0))
        .collect();
    let records = kwasm_tests::read_to_end(
        &output,
        committed.iter().sum::<i64>() as usize,
        Duration::from_secs(60),
    );
    let mut seen = std::collections::HashMap::new();
    for r in &records {
        *seen.entry(r.value_str()).or_insert(0usize) += 1;
    }
    let produced = producer.join().expect("producer");
    // Values are "{p}:{seq}", produced in order per partition: those below
    // the committed offset are the first `committed[p]` of partition p.
    let mut lost = 0;
    for (p, c) in committed.iter().enumerate() {
        lost += produced
            .iter()
            .filter(|(q, _)| *q == p as i32)
            .take(*c as usize)
            .filter(|(_, v)| !seen.contains_key(v))
            .count();
    }
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    println!(
        "{label}: committed {committed:?}; committed but not output {lost}, duplicates {duplicates}"
    );
    assert_eq!((lost, duplicates), (0, 0), "{label}");
    // The same pod again (a container restart): it resumes and catches up
    // to the end, then the pipeline is removed (the registry topics are the
    // defaults, shared by the next render's pod).
    podman_ok("rm", &["rm", &container]);
    podman_run(pod, &container, image);
    assert!(
        wait_until(
            Duration::from_secs(90),
            Duration::from_millis(200),
            || http_status(port, "/readyz") == Some(200)
        ),
        "{label}: the restarted pod is not ready"
    );
    let ends = end_offsets(&input);
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
            committed_offsets(&group, &input, PARTITIONS)
                == ends.iter().map(|e| Some(*e)).collect::<Vec<_>>()
        }),
        "{label}: the restarted pod did not commit the end: {:?} vs {ends:?}",
        committed_offsets(&group, &input, PARTITIONS)
    );
    let (status, _) = api(
        port,
        secret_token,
        "DELETE",
        &format!("/v1/pipelines/{name}"),
        Vec::new(),
    );
    assert_eq!(status, 204, "{label}: delete the pipeline");
    podman_ok(
        "stop",
        &["stop", "-t", &pod.grace.as_secs().to_string(), &container],
    );
}

#[test]
fn the_kustomize_and_helm_statefulsets_run_as_written_and_drain_within_their_grace_period() {
    let image = format!("localhost/kwasm-manifests:{}", unique("t").to_lowercase());
    let _image = PodmanCleanup {
        container: String::new(),
        image: image.clone(),
    };
    let took = build_image(&image);
    println!("manifests: image built in {:.1} s", took.as_secs_f64());
    let token = format!("t-{}", unique("token"));
    let secret = BTreeMap::from([("admin-token", token.clone())]);
    let helm_port = free_port();
    for (label, docs) in [
        ("[kustomize]", render_kustomize(&brokers())),
        ("[helm]", render_helm(&brokers(), helm_port)),
    ] {
        let files = tempfile::tempdir().expect("pod files");
        let pod = kubelet(&docs, "kwasm-0", &secret, files.path());
        check_consistency(label, &pod);
        assert!(
            std::net::TcpListener::bind((POD_IP, pod.admin_port)).is_ok(),
            "{label}: {POD_IP}:{} (the manifests' admin port) is in use by something else on this machine",
            pod.admin_port
        );
        run_pod(label, &pod, &token, &image);
    }
}
