//! The `kwasm` binary as a user runs it, besides `serve`:
//!
//! - `kwasm new` scaffolds a plugin crate that builds for wasm32-wasip2 as it
//!   is and runs in `kwasm test`;
//! - the client commands (`plugin`, `pipeline`, `status`) send the requests
//!   docs/api.md describes, render the answers, and report API errors as
//!   `error: <message> (<code>, HTTP <status>)` with exit code 1 — against a
//!   fake admin API ([`fake_api`]) with canned answers;
//! - `kwasm --help` lists every command.
//!
//! Needs the `kwasm` binary (`KWASM_BIN`, set by `scripts/test`).

mod fake_api;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fake_api::FakeApi;
use kwasm_tests::{free_port, kwasm_bin};
use serde_json::json;

/// Runs `kwasm args...` without the user's client settings in the
/// environment, and returns what it printed and its exit code.
fn kwasm(args: &[&str]) -> Output {
    Command::new(kwasm_bin())
        .args(args)
        .env_remove("KWASM_URL")
        .env_remove("KWASM_TOKEN")
        .output()
        .unwrap_or_else(|e| panic!("cannot run kwasm {args:?}: {e}"))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts success and returns standard output.
fn ok(output: &Output) -> String {
    assert_eq!(
        output.status.code(),
        Some(0),
        "kwasm failed\nstdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
    stdout(output)
}

/// Asserts exit code 1 with nothing on standard output, and returns
/// standard error.
fn failed(output: &Output) -> String {
    assert_eq!(
        output.status.code(),
        Some(1),
        "kwasm should have failed with 1\nstdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
    assert_eq!(stdout(output), "", "nothing on stdout when failing");
    stderr(output)
}

// ---- kwasm new -------------------------------------------------------------

/// The scaffolded plugin builds with cargo (for wasm32-wasip2, in the shared
/// target directory so the SDK's dependencies are reused) and `kwasm test`
/// runs it: one input line becomes the exact output line, with the header the
/// template's handler adds from its config.
#[test]
fn a_new_plugin_builds_and_runs_in_kwasm_test() {
    let dir = tempfile::tempdir().expect("temp dir");
    let parent = dir.path().to_str().expect("UTF-8 temp path");
    let created = ok(&kwasm(&["new", "demo-plugin", "--path", parent]));
    let crate_dir = dir.path().join("demo-plugin");
    assert!(
        created.starts_with(&format!(
            "created plugin crate `demo-plugin` in {}\n",
            crate_dir.display()
        )),
        "{created}"
    );
    for file in [
        "Cargo.toml",
        ".cargo/config.toml",
        "src/lib.rs",
        "README.md",
        ".gitignore",
    ] {
        assert!(crate_dir.join(file).is_file(), "{file} was not created");
    }

    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| dir.path().join("target"), PathBuf::from);
    cargo_build_release(&crate_dir, &target_dir);
    let wasm = target_dir.join("wasm32-wasip2/release/demo_plugin.wasm");
    assert!(wasm.is_file(), "no component at {}", wasm.display());

    let input = dir.path().join("messages.jsonl");
    std::fs::write(
        &input,
        "{\"key\": \"k\", \"value\": \"hi\", \"offset\": 7}\n",
    )
    .expect("write input");
    let wasm_arg = wasm.to_str().expect("UTF-8 path");
    let input_arg = input.to_str().expect("UTF-8 path");
    assert_eq!(
        ok(&kwasm(&[
            "test",
            wasm_arg,
            "--input",
            input_arg,
            "--config",
            "greeting=hey"
        ])),
        "{\"offset\":7,\"outcome\":\"ok\",\"records\":[{\"headers\":[[\"greeting\",\"hey\"]],\
         \"key\":\"k\",\"timestamp_ms\":null,\"topic\":null,\"value\":\"hi\"}]}\n"
    );
    assert_eq!(
        ok(&kwasm(&["test", wasm_arg, "--input", input_arg])),
        "{\"offset\":7,\"outcome\":\"ok\",\"records\":[{\"headers\":[[\"greeting\",\"hello\"]],\
         \"key\":\"k\",\"timestamp_ms\":null,\"topic\":null,\"value\":\"hi\"}]}\n",
        "without config the greeting defaults to `hello`"
    );
}

/// `cargo build --release --target wasm32-wasip2` in `crate_dir`, offline
/// first (everything is usually in cargo's cache already), then online.
fn cargo_build_release(crate_dir: &Path, target_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let build = |offline: bool| {
        let mut command = Command::new(&cargo);
        command
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .current_dir(crate_dir)
            .env("CARGO_TARGET_DIR", target_dir);
        if offline {
            command.arg("--offline");
        }
        command
            .output()
            .unwrap_or_else(|e| panic!("cannot run cargo: {e}"))
    };
    let offline = build(true);
    if offline.status.success() {
        return;
    }
    let online = build(false);
    assert!(
        online.status.success(),
        "the scaffolded plugin does not build\noffline:\n{}\nonline:\n{}",
        stderr(&offline),
        stderr(&online)
    );
}

#[test]
fn new_refuses_an_existing_folder_and_an_invalid_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let parent = dir.path().to_str().expect("UTF-8 temp path");
    std::fs::create_dir(dir.path().join("taken")).expect("create folder");
    std::fs::write(dir.path().join("taken/keep.txt"), "mine").expect("write file");
    assert_eq!(
        failed(&kwasm(&["new", "taken", "--path", parent])),
        format!(
            "error: {} already exists: choose another NAME or --path (nothing was overwritten)\n",
            dir.path().join("taken").display()
        )
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("taken"))
            .expect("read folder")
            .count(),
        1,
        "the existing folder was left alone"
    );

    assert_eq!(
        failed(&kwasm(&["new", "my plugin", "--path", parent])),
        "error: `my plugin` is not a valid crate name: ` ` is not allowed (only ASCII letters, digits, `-` and `_`)\n"
    );
    assert_eq!(
        failed(&kwasm(&["new", "1st", "--path", parent])),
        "error: `1st` is not a valid crate name: it must start with an ASCII letter\n"
    );
    assert!(!dir.path().join("1st").exists());
}

// ---- client commands against a fake admin API -------------------------------

#[test]
fn plugin_list_renders_names_versions_sizes_and_digests() {
    let api = FakeApi::start(
        None,
        vec![(
            "GET /v1/plugins",
            (
                200,
                Some(json!({"plugins": [
                    {"name": "redact", "versions": [
                        {"version": 1, "digest": "0123456789abcdef0123", "size_bytes": 812, "created_ms": 1_700_000_000_000_i64},
                        {"version": 2, "digest": "fedcba98765432100000", "size_bytes": 86_118, "created_ms": 1_700_000_060_000_i64}
                    ]},
                    {"name": "filter", "versions": [
                        {"version": 1, "digest": "aaaaaaaaaaaaaaaa", "size_bytes": 2_097_152, "created_ms": 0}
                    ]}
                ]})),
            ),
        )],
    );
    assert_eq!(
        ok(&kwasm(&["plugin", "list", "--url", api.url()])),
        "NAME    VERSION      SIZE  DIGEST        CREATED\n\
         filter        1   2.0 MiB  aaaaaaaaaaaa  1970-01-01 00:00 UTC\n\
         redact        2  84.1 KiB  fedcba987654  2023-11-14 22:14 UTC\n\
         redact        1     812 B  0123456789ab  2023-11-14 22:13 UTC\n"
    );
    let requests = api.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        (requests[0].method.as_str(), requests[0].path.as_str()),
        ("GET", "/v1/plugins")
    );
    assert_eq!(
        requests[0].authorization, None,
        "no token, no Authorization header"
    );
}

#[test]
fn plugin_deploy_posts_the_raw_bytes_with_the_token() {
    let api = FakeApi::start(
        Some("s3cret"),
        vec![(
            "POST /v1/plugins/demo",
            (
                201,
                Some(
                    json!({"name": "demo", "version": 4, "digest": "sha256:00ff", "size_bytes": 12, "created_ms": 5}),
                ),
            ),
        )],
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("demo.wasm");
    let bytes = b"\0asm\x0d\0\x01\0kwasm".to_vec();
    std::fs::write(&file, &bytes).expect("write wasm");
    let file_arg = file.to_str().expect("UTF-8 path");

    let output = Command::new(kwasm_bin())
        .args(["plugin", "deploy", "demo", file_arg])
        .env("KWASM_URL", api.url())
        .env("KWASM_TOKEN", "s3cret")
        .output()
        .expect("run kwasm");
    assert_eq!(
        ok(&output),
        "deployed demo version 4\n  name:    demo\n  version: 4\n  digest:  sha256:00ff\n  size:    12 bytes\n"
    );
    let requests = api.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/v1/plugins/demo")
    );
    assert_eq!(request.body, bytes);
    assert_eq!(request.content_type.as_deref(), Some("application/wasm"));
    assert_eq!(request.authorization.as_deref(), Some("Bearer s3cret"));
}

#[test]
fn pipeline_apply_puts_the_files_fields_without_the_name() {
    let stored = json!({
        "name": "orders-clean", "plugin": "redact@2", "config": {"fields": "card"},
        "inputs": ["orders"], "input_regex": null, "output": "orders-clean",
        "group_id": "kwasm-orders-clean", "dead_letter_topic": "orders-clean.dlq",
        "retry": {"max_attempts": 5, "initial_backoff_ms": 100, "max_backoff_ms": 5000},
        "batch": {"max_messages": 512, "max_wait_ms": 20}, "paused": false, "source": "api"
    });
    let api = FakeApi::start(
        Some("t"),
        vec![("PUT /v1/pipelines/orders-clean", (200, Some(stored)))],
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("orders-clean.toml");
    std::fs::write(
        &file,
        r#"
name = "orders-clean"
plugin = "redact"
inputs = ["orders"]
output = "orders-clean"
config = { fields = "card" }
retry = { max_attempts = 5 }
"#,
    )
    .expect("write pipeline file");
    let file_arg = file.to_str().expect("UTF-8 path");

    assert_eq!(
        ok(&kwasm(&[
            "pipeline",
            "apply",
            file_arg,
            "--url",
            api.url(),
            "--token",
            "t"
        ])),
        "applied pipeline orders-clean: plugin redact@2, orders -> orders-clean\n"
    );
    let requests = api.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("PUT", "/v1/pipelines/orders-clean")
    );
    assert_eq!(request.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        request.json(),
        json!({"plugin": "redact", "inputs": ["orders"], "output": "orders-clean",
               "config": {"fields": "card"}, "retry": {"max_attempts": 5}})
    );

    // The same pipeline as JSON sends the same body.
    let json_file = dir.path().join("orders-clean.json");
    std::fs::write(
        &json_file,
        r#"{"name": "orders-clean", "plugin": "redact", "inputs": ["orders"], "output": "orders-clean",
            "config": {"fields": "card"}, "retry": {"max_attempts": 5}}"#,
    )
    .expect("write pipeline file");
    ok(&kwasm(&[
        "pipeline",
        "apply",
        json_file.to_str().expect("UTF-8 path"),
        "--url",
        api.url(),
        "--token",
        "t",
    ]));
    let requests = api.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].json(), requests[0].json());
}

#[test]
fn an_api_error_is_printed_with_its_code_and_status_and_exits_1() {
    let api = FakeApi::start(
        None,
        vec![(
            "PUT /v1/pipelines/orders-clean",
            (
                409,
                Some(
                    json!({"error": {"code": "conflict", "message": "pipeline `orders-clean` is declared in host-a's config file"}}),
                ),
            ),
        )],
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("p.json");
    std::fs::write(
        &file,
        r#"{"name": "orders-clean", "plugin": "redact", "inputs": ["orders"], "output": "o"}"#,
    )
    .expect("write pipeline file");
    assert_eq!(
        failed(&kwasm(&[
            "pipeline",
            "apply",
            file.to_str().expect("UTF-8 path"),
            "--url",
            api.url()
        ])),
        "error: pipeline `orders-clean` is declared in host-a's config file (conflict, HTTP 409)\n"
    );
}

#[test]
fn a_missing_token_shows_the_servers_401_message() {
    let paused = json!({"name": "orders-clean", "plugin": "redact@2", "inputs": ["orders"],
                        "output": "orders-clean", "paused": true, "source": "api"});
    let api = FakeApi::start(
        Some("s3cret"),
        vec![("POST /v1/pipelines/orders-clean/pause", (200, Some(paused)))],
    );
    assert_eq!(
        failed(&kwasm(&[
            "pipeline",
            "pause",
            "orders-clean",
            "--url",
            api.url()
        ])),
        "error: this call needs `Authorization: Bearer <token>` with the host's admin token (unauthorized, HTTP 401)\n"
    );
    assert_eq!(
        failed(&kwasm(&[
            "pipeline",
            "pause",
            "orders-clean",
            "--url",
            api.url(),
            "--token",
            "wrong"
        ])),
        "error: this call needs `Authorization: Bearer <token>` with the host's admin token (unauthorized, HTTP 401)\n"
    );
    assert_eq!(
        ok(&kwasm(&[
            "pipeline",
            "pause",
            "orders-clean",
            "--url",
            api.url(),
            "--token",
            "s3cret"
        ])),
        "paused pipeline orders-clean: every host stops it\n"
    );
}

#[test]
fn pipeline_list_resume_and_delete_call_the_documented_endpoints() {
    let pipeline = json!({"name": "orders-clean", "plugin": "redact@2", "inputs": ["orders"], "input_regex": null,
                          "output": "orders-clean", "paused": false, "source": "api"});
    let api = FakeApi::start(
        None,
        vec![
            (
                "GET /v1/pipelines",
                (
                    200,
                    Some(json!({"pipelines": [
                        pipeline.clone(),
                        {"name": "audit", "plugin": "filter@1", "inputs": [], "input_regex": "audit-.*",
                         "output": "audit-out", "paused": true, "source": "config"}
                    ]})),
                ),
            ),
            (
                "POST /v1/pipelines/orders-clean/resume",
                (200, Some(pipeline)),
            ),
            ("DELETE /v1/pipelines/orders-clean", (204, None)),
        ],
    );
    assert_eq!(
        ok(&kwasm(&["pipeline", "list", "--url", api.url()])),
        "NAME          PLUGIN    INPUTS      OUTPUT        STATE   SOURCE\n\
         audit         filter@1  /audit-.*/  audit-out     paused  config\n\
         orders-clean  redact@2  orders      orders-clean  active  api\n"
    );
    assert_eq!(
        ok(&kwasm(&[
            "pipeline",
            "resume",
            "orders-clean",
            "--url",
            api.url()
        ])),
        "resumed pipeline orders-clean: plugin redact@2, orders -> orders-clean\n"
    );
    assert_eq!(
        ok(&kwasm(&[
            "pipeline",
            "delete",
            "orders-clean",
            "--url",
            api.url()
        ])),
        "deleted pipeline orders-clean\n"
    );
    assert_eq!(
        failed(&kwasm(&["pipeline", "delete", "nope", "--url", api.url()])),
        "error: no route DELETE /v1/pipelines/nope (not_found, HTTP 404)\n"
    );
    let calls: Vec<(String, String)> = api
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect();
    let expected = [
        ("GET", "/v1/pipelines"),
        ("POST", "/v1/pipelines/orders-clean/resume"),
        ("DELETE", "/v1/pipelines/orders-clean"),
        ("DELETE", "/v1/pipelines/nope"),
    ];
    assert_eq!(calls, expected.map(|(m, p)| (m.to_owned(), p.to_owned())));
}

#[test]
fn status_joins_members_and_the_contacted_hosts_progress() {
    // A host with a token: `status` only reads, and every read needs it.
    let api = FakeApi::start(
        Some("t"),
        vec![
            (
                "GET /v1/pipelines",
                (
                    200,
                    Some(json!({"pipelines": [
                        {"name": "orders-clean", "plugin": "redact@2", "inputs": ["orders"], "output": "oc",
                         "paused": false, "source": "api"}
                    ]})),
                ),
            ),
            (
                "GET /v1/pipelines/orders-clean/members",
                (
                    200,
                    Some(
                        json!({"pipeline": "orders-clean", "group_id": "kwasm-orders-clean", "members": [
                            {"host": "host-a", "client_id": "host-a", "partitions": [
                                {"topic": "orders", "partition": 0}, {"topic": "orders", "partition": 2}]},
                            {"host": "host-b", "client_id": "host-b", "partitions": [{"topic": "orders", "partition": 1}]}
                        ]}),
                    ),
                ),
            ),
            (
                "GET /v1/assignments",
                (
                    200,
                    Some(json!({"host": "host-a", "pipelines": [
                        {"pipeline": "orders-clean", "group_id": "kwasm-orders-clean", "plugin": "redact",
                         "plugin_version": 2, "plugin_digest": "d", "partitions": [
                            {"topic": "orders", "partition": 0, "position": 1200, "committed": 1180,
                             "high_watermark": 1250, "lag": 50, "state": "running"},
                            {"topic": "orders", "partition": 2, "position": 7, "committed": 7,
                             "high_watermark": 7, "lag": 0, "state": "running"}
                        ]}
                    ]})),
                ),
            ),
        ],
    );
    assert_eq!(
        ok(&kwasm(&["status", "--url", api.url(), "--token", "t"])),
        "PIPELINE      HOST    TOPIC   PARTITION  POSITION  COMMITTED  LAG  STATE\n\
         orders-clean  host-a  orders          0      1200       1180   50  running\n\
         orders-clean  host-a  orders          2         7          7    0  running\n\
         orders-clean  host-b  orders          1         -          -    -  -\n\
         \n\
         POSITION, COMMITTED, LAG and STATE are known by the host holding the partition; \
         this is host-a. Ask another host with --url.\n"
    );
    let reads = api.requests();
    assert!(
        reads.len() >= 3
            && reads
                .iter()
                .all(|r| r.authorization.as_deref() == Some("Bearer t")),
        "{reads:?}"
    );
    // Without the token the host refuses even these reads.
    let error = failed(&kwasm(&["status", "--url", api.url()]));
    assert!(error.contains("(unauthorized, HTTP 401)"), "{error}");
}

#[test]
fn an_unreachable_host_is_named_in_the_error() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let error = failed(&kwasm(&["plugin", "list", "--url", &url]));
    assert!(
        error.starts_with(&format!(
            "error: cannot reach the kwasm admin API at {url}/v1/plugins: "
        )),
        "{error}"
    );
}

// ---- help --------------------------------------------------------------------

/// The commands listed by `kwasm [COMMAND] --help`.
fn listed_commands(args: &[&str]) -> Vec<String> {
    let help = ok(&kwasm(args));
    let (_, commands) = help
        .split_once("Commands:\n")
        .unwrap_or_else(|| panic!("no Commands section in:\n{help}"));
    commands
        .lines()
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn help_lists_every_command() {
    assert_eq!(
        listed_commands(&["--help"]),
        [
            "serve",
            "dev",
            "test",
            "new",
            "plugin",
            "pipeline",
            "status",
            "logs",
            "completions",
            "man",
            "health",
            "help"
        ]
    );
    assert_eq!(
        listed_commands(&["plugin", "--help"]),
        ["deploy", "list", "delete", "help"]
    );
    assert_eq!(
        listed_commands(&["pipeline", "--help"]),
        ["apply", "list", "pause", "resume", "delete", "help"]
    );
    let status_help = ok(&kwasm(&["status", "--help"]));
    for option in [
        "--url <URL>",
        "--token <TOKEN>",
        "[env: KWASM_URL=]",
        "[default: http://127.0.0.1:8080]",
    ] {
        assert!(
            status_help.contains(option),
            "`kwasm status --help` lacks {option}:\n{status_help}"
        );
    }
}

// ---- completions and man page ------------------------------------------------

/// Issue 15: completions and the man page come from the same clap
/// definitions: every command is in each, under the binary's name.
#[test]
fn completions_and_the_man_page_name_every_command() {
    let commands = [
        "serve", "dev", "test", "new", "plugin", "pipeline", "status", "logs", "health",
    ];
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(&kwasm(&["completions", shell]));
        for command in commands {
            assert!(
                script.contains(command),
                "{shell} completions lack `{command}`"
            );
        }
        assert!(script.contains("kwasm"), "{shell}: {script}");
    }
    let bash = ok(&kwasm(&["completions", "bash"]));
    assert!(
        bash.contains("complete -F _kwasm"),
        "a bash completion function: {bash}"
    );
    let fish = ok(&kwasm(&["completions", "fish"]));
    assert!(fish.contains("complete -c kwasm"), "{fish}");
    // A usage error: clap's exit status 2, naming the value.
    let refused = kwasm(&["completions", "powershell-7"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("invalid value 'powershell-7'"),
        "{}",
        stderr(&refused)
    );

    let man = ok(&kwasm(&["man"]));
    assert!(man.starts_with(".ie"), "roff: {man}");
    assert!(man.contains(".TH kwasm 1"), "titled kwasm: {man}");
    for command in commands {
        assert!(man.contains(command), "the man page lacks `{command}`");
    }
}

/// `kwasm status --watch` prints the table again on every refresh (here
/// off a terminal: appended, no escape codes), until stopped.
#[test]
fn status_watch_refreshes_the_table() {
    let api = FakeApi::start(
        None,
        vec![
            (
                "GET /v1/pipelines",
                (
                    200,
                    Some(
                        json!({"pipelines": [{"name": "p", "plugin": "x@1", "inputs": ["in"],
                        "output": "o", "paused": false, "source": "api"}]}),
                    ),
                ),
            ),
            (
                "GET /v1/pipelines/p/members",
                (
                    200,
                    Some(json!({"pipeline": "p", "group_id": "kwasm-p", "members": []})),
                ),
            ),
            (
                "GET /v1/assignments",
                (200, Some(json!({"host": "h", "pipelines": []}))),
            ),
        ],
    );
    let mut child = Command::new(kwasm_bin())
        .args([
            "status",
            "--watch",
            "--interval-s",
            "0.2",
            "--url",
            api.url(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn kwasm status --watch");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let _ = child.kill();
    let output = child.wait_with_output().expect("status output");
    let text = String::from_utf8_lossy(&output.stdout);
    let tables = text.matches("PIPELINE").count();
    assert!(
        tables >= 3,
        "at least three refreshes in 1.5 s at 0.2 s: {text}"
    );
    assert!(
        !text.contains('\x1b'),
        "no escape codes off a terminal: {text:?}"
    );
}
