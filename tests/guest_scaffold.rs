//! `kwasm new --lang L x && cd x && <the build commands it printed> && kwasm
//! test <the file it named> --input messages.jsonl`, exactly as printed, for
//! Rust, Python, JavaScript and Go: the printed lines are run verbatim by
//! `sh` in the new folder (with the `kwasm` binary on the `PATH`, as a user
//! has it), and `kwasm test` must print the exact outcome of the two sample
//! messages `kwasm new` wrote.
//!
//! The README's plugin in each language goes the same way: its code block
//! replaces the new plugin's source, the same printed commands build it,
//! and `kwasm test` must show what the README says it does (upper-cased
//! values with the default suffix), so the README cannot drift from the
//! SDKs.
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
    new_build_and_test_with(lang, None)
}

/// [`new_build_and_test`], with `source` (a path inside the new plugin's
/// folder and its contents) written over what `kwasm new` wrote there
/// before the build.
fn new_build_and_test_with(lang: &str, source: Option<(&str, &str)>) -> String {
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
    if let Some((file, contents)) = source {
        let path = folder.join(file);
        assert!(path.is_file(), "kwasm new --lang {lang} wrote no {file}");
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

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

/// The first code block fenced as `lang` in the README.
fn readme_block(lang: &str) -> String {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(&readme)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", readme.display()));
    let fence = format!("```{lang}");
    let mut lines = text.lines().skip_while(|l| l.trim_end() != fence);
    assert!(lines.next().is_some(), "the README has no {fence} block");
    let block: Vec<&str> = lines.take_while(|l| l.trim_end() != "```").collect();
    block.join("\n") + "\n"
}

/// The README's plugin (upper-case the value, add the `suffix`, `!` by
/// default) in `lang`, in place of the source `kwasm new` wrote to `file`,
/// through `kwasm test` on the two sample messages.
fn readme_plugin_works(lang: &str, fence: &str, file: &str) {
    let block = readme_block(fence);
    let printed = new_build_and_test_with(lang, Some((file, &block)));
    let outcomes: Vec<(String, Vec<String>)> = printed
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{lang}: `kwasm test` printed {line:?}: {e}"));
            let values = v["records"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| r["value"].as_str().unwrap_or_default().to_owned())
                .collect();
            (v["outcome"].as_str().unwrap_or_default().to_owned(), values)
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("ok".to_owned(), vec!["HELLO, KWASM!".to_owned()]),
            ("ok".to_owned(), vec![r#"{"N":2}!"#.to_owned()]),
        ],
        "{lang}: the README's plugin, built as `kwasm new` prints:\n{printed}"
    );
}

#[test]
fn the_readme_plugin_in_rust_builds_and_does_what_it_says() {
    readme_plugin_works("rust", "rust", "src/lib.rs");
}

#[test]
fn the_readme_plugin_in_python_builds_and_does_what_it_says() {
    readme_plugin_works("python", "python", "app.py");
}

#[test]
fn the_readme_plugin_in_js_builds_and_does_what_it_says() {
    readme_plugin_works("js", "js", "app.js");
}

#[test]
fn the_readme_plugin_in_go_builds_and_does_what_it_says() {
    readme_plugin_works("go", "go", "main.go");
}
