//! `kwasm new --lang L x && cd x && <the build commands it printed> && kwasm
//! test <the file it named> --input messages.jsonl`, exactly as printed, for
//! Rust, Python, JavaScript and Go: the printed lines are run verbatim by
//! `sh` in the new folder (with the `kwasm` binary on the `PATH`, as a user
//! has it), and `kwasm test` must print the exact outcome of the two sample
//! messages `kwasm new` wrote.
//!
//! Needs the `kwasm` binary (`KWASM_BIN`) and the guest toolchains that
//! `scripts/setup` installs; `scripts/test` provides both.

use std::path::Path;
use std::process::Command;

use kwasm_tests::kwasm_bin;

/// What `kwasm test` prints for `messages.jsonl` through every template:
/// both messages forwarded, each with a `greeting: hello` header.
const EXPECTED: &str = concat!(
    r#"{"offset":0,"outcome":"ok","records":[{"headers":[["greeting","hello"]],"key":"k1","timestamp_ms":null,"topic":null,"value":"hello, kwasm"}]}"#,
    "\n",
    r#"{"offset":1,"outcome":"ok","records":[{"headers":[["source","demo"],["greeting","hello"]],"key":"k2","timestamp_ms":null,"topic":null,"value":"{\"n\":2}"}]}"#,
    "\n",
);

/// Runs `kwasm new --lang lang demo-LANG` in a fresh folder, then every line it
/// printed after `cd`, and returns what the last one (`kwasm test`) printed.
fn new_build_and_test(lang: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let name = format!("demo-{lang}");
    let kwasm = kwasm_bin();
    let bin_dir = Path::new(&kwasm).parent().expect("the binary's folder");
    let path = std::env::join_paths(std::iter::once(bin_dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH");

    let created = Command::new(&kwasm)
        .args(["new", "--lang", lang, &name])
        .current_dir(dir.path())
        .output()
        .expect("run kwasm new");
    let printed = String::from_utf8_lossy(&created.stdout).into_owned();
    assert!(
        created.status.success(),
        "kwasm new --lang {lang} failed: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    // `created ... in DIR`, a blank line, `  cd DIR`, the build lines, and
    // `  kwasm test ...` last.
    let lines: Vec<&str> = printed
        .lines()
        .filter_map(|l| l.strip_prefix("  "))
        .collect();
    assert_eq!(
        lines.first(),
        Some(&format!("cd ./{name}").as_str()),
        "{printed}"
    );
    let test_line = lines.last().expect("a kwasm test line");
    assert!(
        test_line.starts_with("kwasm test ") && test_line.ends_with(" --input messages.jsonl"),
        "{printed}"
    );
    let folder = dir.path().join(&name);
    assert!(
        folder.join("messages.jsonl").is_file(),
        "kwasm new wrote messages.jsonl"
    );

    let mut last = String::new();
    for line in &lines[1..] {
        let out = Command::new("sh")
            .args(["-c", line])
            .current_dir(&folder)
            .env("PATH", &path)
            .output()
            .unwrap_or_else(|e| panic!("cannot run sh: {e}"));
        assert!(
            out.status.success(),
            "{lang}: `{line}` failed ({})\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        last = String::from_utf8_lossy(&out.stdout).into_owned();
    }
    last
}

#[test]
fn rust_new_build_test_sequence_works_as_printed() {
    assert_eq!(new_build_and_test("rust"), EXPECTED);
}

#[test]
fn python_new_build_test_sequence_works_as_printed() {
    assert_eq!(new_build_and_test("python"), EXPECTED);
}

#[test]
fn js_new_build_test_sequence_works_as_printed() {
    assert_eq!(new_build_and_test("js"), EXPECTED);
}

#[test]
fn go_new_build_test_sequence_works_as_printed() {
    assert_eq!(new_build_and_test("go"), EXPECTED);
}
