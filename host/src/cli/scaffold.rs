//! `kwasm new [--lang rust|python|js|go] NAME`: a plugin that builds and
//! tests as it is, with a `messages.jsonl` the printed `kwasm test` command
//! reads.
//!
//! The SDKs are not on a registry yet, so a plugin uses them from the
//! `guest-sdk/` of the kwasm checkout this binary was built from (its absolute
//! path is compiled in; `--sdk-path` overrides it): the Rust crate depends on
//! it by path, Python adds `guest-sdk/python` to componentize-py's path, Go
//! replaces the `kwasm/guest` module with `guest-sdk/go`, and JavaScript gets
//! a copy of `guest-sdk/js/kwasm.js` (componentize-js reads modules only from
//! the entry file's folder). The printed build commands name the toolchains
//! `scripts/setup` installs (`$KWASM_TOOLS/guest-langs`) by absolute path when
//! they are not on the `PATH`; a Go plugin is made a component with kwasm's
//! own WASI adapter, `guest-sdk/go/wasi_adapter.wat`.

use std::path::{Path, PathBuf};

use super::{CliError, emit};

/// The SDK of the checkout this binary was built from.
const BUILT_FROM_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk");

/// The language of a new plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A Rust crate on the `kwasm-guest` SDK (cargo, wasm32-wasip2).
    Rust,
    /// A Python module on `guest-sdk/python` (componentize-py).
    Python,
    /// A JavaScript module on `guest-sdk/js` (componentize-js).
    Js,
    /// A Go module on `guest-sdk/go` (Go's wasip1 target, then wasm-tools with
    /// kwasm's WASI adapter).
    Go,
}

/// Arguments of `kwasm new`.
#[derive(clap::Args)]
pub struct NewArgs {
    /// Name of the plugin, e.g. `my-filter` (letters, digits, `-`, `_`;
    /// starting with a letter): the folder's name, the crate or module name,
    /// and the `.wasm` file's.
    name: String,
    /// The language to write the plugin in.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    lang: Lang,
    /// The folder to create the plugin's folder in.
    #[arg(long, value_name = "DIR", default_value = ".")]
    path: PathBuf,
    /// The kwasm plugin SDK (`guest-sdk/` of a kwasm checkout) to depend on.
    /// Default: the one this `kwasm` was built from.
    #[arg(long, value_name = "DIR")]
    sdk_path: Option<PathBuf>,
}

/// Why a crate could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// NAME cannot be a crate name.
    #[error("`{name}` is not a valid crate name: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// The target folder is there already.
    #[error("{} already exists: choose another NAME or --path (nothing was overwritten)", path.display())]
    Exists {
        /// The folder.
        path: PathBuf,
    },
    /// The SDK folder lacks what the language needs.
    #[error(
        "no kwasm plugin SDK at {} (no {marker} or wit/0.1.0 there): pass --sdk-path with the guest-sdk folder of a kwasm checkout",
        path.display()
    )]
    NoSdk {
        /// Where it was looked for.
        path: PathBuf,
        /// The file the language needs, relative to it.
        marker: &'static str,
    },
    /// Creating a folder or writing a file failed.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs `kwasm new`.
pub fn run(args: NewArgs) -> Result<(), CliError> {
    check_name(&args.name, args.lang)?;
    let sdk = locate_sdk(
        args.sdk_path
            .as_deref()
            .unwrap_or(Path::new(BUILT_FROM_SDK)),
        args.lang,
    )?;
    let dir = args.path.join(&args.name);
    let tools = Toolchain::find();
    let plan = plan(args.lang, &args.name, &sdk, &tools);
    create_plugin(&dir, &plan.files)?;
    emit(&instructions(&args.name, &dir, &plan))
}

/// What `kwasm new` writes and prints for one language.
struct Plan {
    /// What the user is told was made ("plugin crate", "Python plugin").
    kind: &'static str,
    /// Every file, by path relative to the plugin's folder.
    files: Vec<(&'static str, String)>,
    /// The build commands, one shell command a line, run in the folder.
    build: Vec<String>,
    /// The component the build writes, as `kwasm test` is given it.
    wasm: String,
}

/// The lines `kwasm new` prints: the build commands and the `kwasm test`
/// command that reads the `messages.jsonl` it wrote. `tests/guest_scaffold.rs`
/// runs exactly these lines.
fn instructions(name: &str, dir: &Path, plan: &Plan) -> String {
    let mut text = format!(
        "created {kind} `{name}` in {dir}\n\n  cd {dir}\n",
        kind = plan.kind,
        dir = dir.display()
    );
    for line in &plan.build {
        text.push_str(&format!("  {line}\n"));
    }
    text.push_str(&format!(
        "  kwasm test {} --input messages.jsonl\n",
        plan.wasm
    ));
    text
}

/// The two messages the printed `kwasm test` command reads: every template
/// forwards them with a `greeting: hello` header.
const MESSAGES_JSONL: &str = r#"{"key": "k1", "value": "hello, kwasm"}
{"key": "k2", "value": {"n": 2}, "headers": {"source": "demo"}}
"#;

/// Where the toolchains for Python, JavaScript and Go plugins are: on the
/// `PATH`, else where `scripts/setup` installs them.
struct Toolchain {
    componentize_py: String,
    componentize_js: String,
    wasm_tools: String,
    go: String,
}

impl Toolchain {
    fn find() -> Toolchain {
        let tools = std::env::var_os("KWASM_TOOLS")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kwasm/tools"))
            })
            .unwrap_or_else(|| PathBuf::from(".cache/kwasm/tools"))
            .join("guest-langs");
        let tool = |name: &str, installed: &str| {
            let path = tools.join(installed);
            if !on_path(name) && path.is_file() {
                shell_word(&path.display().to_string())
            } else {
                name.to_owned()
            }
        };
        Toolchain {
            componentize_py: tool("componentize-py", "py/bin/componentize-py"),
            componentize_js: tool("componentize-js", "js/node_modules/.bin/componentize-js"),
            wasm_tools: tool("wasm-tools", "py/bin/wasm-tools"),
            go: tool("go", "py/bin/go"),
        }
    }
}

/// Whether an executable called `name` is in a folder of `PATH`.
fn on_path(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(name))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// `word` quoted for a POSIX shell when it holds anything but safe characters.
fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:+@%".contains(c))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The files and commands of a new plugin in `lang`.
fn plan(lang: Lang, name: &str, sdk: &Path, tools: &Toolchain) -> Plan {
    let wit = shell_word(&sdk.join("wit/0.1.0").display().to_string());
    let messages = ("messages.jsonl", MESSAGES_JSONL.to_owned());
    match lang {
        Lang::Rust => {
            let mut files = files(name, sdk);
            files.push(messages);
            // cargo writes to $CARGO_TARGET_DIR when it is set: name the file
            // where the printed `cargo build` puts it.
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| "target".to_owned(), |t| shell_word(&t.to_string_lossy()));
            Plan {
                kind: "plugin crate",
                files,
                build: vec!["cargo build --release".to_owned()],
                wasm: format!(
                    "{target}/wasm32-wasip2/release/{}.wasm",
                    artifact_name(name)
                ),
            }
        }
        Lang::Python => Plan {
            kind: "Python plugin",
            files: vec![
                ("app.py", PY_APP.replace("{name}", name)),
                ("README.md", readme(name, "app.py", "Python")),
                (".gitignore", "*.wasm\n__pycache__/\n".to_owned()),
                messages,
            ],
            build: vec![format!(
                "{} -d {wit} -w plugin componentize app -p . -p {} --stub-wasi -o {name}.wasm",
                tools.componentize_py,
                shell_word(&sdk.join("python").display().to_string()),
            )],
            wasm: format!("{name}.wasm"),
        },
        Lang::Js => Plan {
            kind: "JavaScript plugin",
            files: vec![
                ("app.js", JS_APP.replace("{name}", name)),
                ("kwasm.js", JS_SDK.to_owned()),
                ("README.md", readme(name, "app.js", "JavaScript")),
                (".gitignore", "*.wasm\n".to_owned()),
                messages,
            ],
            build: vec![format!(
                "{} app.js --wit {wit} -n plugin -d http -d fetch-event -o {name}.wasm",
                tools.componentize_js
            )],
            wasm: format!("{name}.wasm"),
        },
        Lang::Go => Plan {
            kind: "Go plugin",
            files: vec![
                (
                    "go.mod",
                    GO_MOD
                        .replace("{name}", name)
                        // go.mod takes a Go string literal for a path.
                        .replace(
                            "{sdk}",
                            &format!("{:?}", sdk.join("go").display().to_string()),
                        ),
                ),
                ("main.go", GO_MAIN.replace("{name}", name)),
                ("README.md", readme(name, "main.go", "Go")),
                (".gitignore", "*.wasm\n".to_owned()),
                messages,
            ],
            build: vec![
                format!(
                    "GOOS=wasip1 GOARCH=wasm {} build -buildmode=c-shared -o {name}.core.wasm .",
                    tools.go
                ),
                format!(
                    "{} component embed --world plugin {wit} {name}.core.wasm -o {name}.core.wasm",
                    tools.wasm_tools
                ),
                format!(
                    "{} component new {name}.core.wasm --adapt wasi_snapshot_preview1={} -o {name}.wasm",
                    tools.wasm_tools,
                    shell_word(&sdk.join("go/wasi_adapter.wat").display().to_string())
                ),
            ],
            wasm: format!("{name}.wasm"),
        },
    }
}

/// The JavaScript SDK, copied into every new JavaScript plugin.
const JS_SDK: &str = include_str!("../../../guest-sdk/js/kwasm.js");

const PY_APP: &str = r#""""`{name}`: a kwasm plugin. Forwards every message unchanged, adding a
`greeting` header whose value comes from the pipeline's config (`greeting`,
default `hello`)."""

from kwasm import Config, Message, Output, plugin


def setup(config: Config) -> str:
    """Runs once per instance: a bad config fails the deploy, not every message."""
    config.deny_unknown(["greeting"])
    return config.get("greeting", "hello")


def handle(msg: Message, greeting: str) -> Output:
    """Called for every message, in order per partition. Raise RetryableError
    to have it retried, PermanentError to dead-letter it; return None to drop
    it, or a list of outputs."""
    return Output.forward(msg).with_header("greeting", greeting)


Handler = plugin(handle, init=setup)  # the component's export
"#;

const JS_APP: &str = r#"// `{name}`: a kwasm plugin. Forwards every message unchanged, adding a
// `greeting` header whose value comes from the pipeline's config (`greeting`,
// default `hello`).
import { Output, plugin } from "./kwasm.js";

// Runs once per instance: a bad config fails the deploy, not every message.
function setup(config) {
  config.denyUnknown(["greeting"]);
  return config.get("greeting") ?? "hello";
}

// Called for every message, in order per partition. Throw RetryableError to
// have it retried, PermanentError to dead-letter it; return null to drop it,
// or an array of outputs.
function handle(msg, greeting) {
  return Output.forward(msg).withHeader("greeting", greeting);
}

export const handler = plugin(handle, { init: setup });
"#;

const GO_MOD: &str = r#"module {name}

go 1.24

require kwasm/guest v0.0.0

// The kwasm Go SDK of the checkout `kwasm new` was built from.
replace kwasm/guest => {sdk}
"#;

const GO_MAIN: &str = r#"// {name}: a kwasm plugin. Forwards every message unchanged, adding a
// `greeting` header whose value comes from the pipeline's config (`greeting`,
// default `hello`).
package main

import kwasm "kwasm/guest"

// setup runs once per instance: a bad config fails the deploy, not every message.
func setup(c *kwasm.Config) (string, error) {
	if err := c.DenyUnknown("greeting"); err != nil {
		return "", err
	}
	return c.GetOr("greeting", "hello"), nil
}

// handle is called for every message, in order per partition. Return
// kwasm.Retryable(...) to have it retried, any other error to dead-letter it;
// no outputs drops it.
func handle(m *kwasm.Message, greeting string) ([]*kwasm.Output, error) {
	return kwasm.One(kwasm.Forward(m).WithHeader("greeting", greeting)), nil
}

func init() { kwasm.Handle(setup, handle) }

func main() {}
"#;

/// The README of a Python, JavaScript or Go plugin.
fn readme(name: &str, source: &str, language: &str) -> String {
    format!(
        "# {name}\n\nA kwasm plugin in {language} (`{source}`): forwards every message unchanged,\n\
         adding a `greeting` header set from the pipeline's config (`greeting`,\n\
         default `hello`). `kwasm new` printed the commands that build it and run it\n\
         on `messages.jsonl`; add `--config greeting=hey` to `kwasm test` to change\n\
         the greeting.\n\n## Deploy\n\n```sh\nkwasm plugin deploy {name} {name}.wasm\n```\n"
    )
}

/// Rust keywords (2024 edition, strict and reserved): cargo refuses them as
/// crate names.
const KEYWORDS: &[&str] = &[
    "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "crate",
    "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl",
    "in", "let", "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "pub", "ref",
    "return", "self", "static", "struct", "super", "trait", "true", "try", "type", "typeof",
    "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
];

/// Names that would clash with a crate the plugin links (`std`, the SDK) or
/// with cargo's own folders in `target/`.
const RESERVED: &[&str] = &[
    "alloc",
    "core",
    "proc_macro",
    "std",
    "test",
    "kwasm_guest",
    "kwasm_guest_macros",
    "build",
    "deps",
    "examples",
    "incremental",
];

/// The name rules of `lang`: cargo's for Rust; for the others, whose name
/// is a folder, a module and a file name, the same characters.
fn check_name(name: &str, lang: Lang) -> Result<(), ScaffoldError> {
    match lang {
        Lang::Rust => check_crate_name(name),
        Lang::Python | Lang::Js | Lang::Go => check_chars(name),
    }
}

/// The characters and length every plugin name keeps to.
fn check_chars(name: &str) -> Result<(), ScaffoldError> {
    let invalid = |reason: &str| ScaffoldError::InvalidName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    let Some(first) = name.chars().next() else {
        return Err(invalid("it is empty"));
    };
    if !first.is_ascii_alphabetic() {
        return Err(invalid("it must start with an ASCII letter"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(invalid(&format!(
            "`{bad}` is not allowed (only ASCII letters, digits, `-` and `_`)"
        )));
    }
    if name.len() > 64 {
        return Err(invalid("it is longer than 64 characters"));
    }
    Ok(())
}

/// cargo's rules for a package name, plus the clashes above.
fn check_crate_name(name: &str) -> Result<(), ScaffoldError> {
    check_chars(name)?;
    let invalid = |reason: &str| ScaffoldError::InvalidName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    let as_ident = artifact_name(name);
    if KEYWORDS.contains(&as_ident.as_str()) {
        return Err(invalid("it is a Rust keyword"));
    }
    if RESERVED.contains(&as_ident.to_ascii_lowercase().as_str()) {
        return Err(invalid(
            "it is reserved (a standard or kwasm crate, or a cargo folder)",
        ));
    }
    Ok(())
}

/// The library's name, which names the `.wasm` file: cargo turns `-` into `_`.
fn artifact_name(name: &str) -> String {
    name.replace('-', "_")
}

/// The SDK folder as an absolute path (a relative one would be read from the
/// new crate's folder), checked to hold a crate.
fn locate_sdk(path: &Path, lang: Lang) -> Result<PathBuf, ScaffoldError> {
    let marker = match lang {
        Lang::Rust => "Cargo.toml",
        Lang::Python => "python/kwasm/__init__.py",
        Lang::Js => "js/kwasm.js",
        Lang::Go => "go/go.mod",
    };
    let no_sdk = || ScaffoldError::NoSdk {
        path: path.to_owned(),
        marker,
    };
    let sdk = path.canonicalize().map_err(|_| no_sdk())?;
    if sdk.join(marker).is_file() && sdk.join("wit/0.1.0").is_dir() {
        Ok(sdk)
    } else {
        Err(no_sdk())
    }
}

/// Creates `dir` (which must not exist) and the plugin's files in it.
fn create_plugin(dir: &Path, files: &[(&'static str, String)]) -> Result<(), ScaffoldError> {
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| ScaffoldError::Write { path, source }
    };
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(write_error(parent))?;
    }
    // `create_dir`, not `create_dir_all`: it fails when the folder exists, so
    // nothing of an existing folder is ever overwritten.
    std::fs::create_dir(dir).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => ScaffoldError::Exists {
            path: dir.to_owned(),
        },
        _ => ScaffoldError::Write {
            path: dir.to_owned(),
            source,
        },
    })?;
    for (relative, contents) in files {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(write_error(parent))?;
        }
        std::fs::write(&path, contents).map_err(write_error(&path))?;
    }
    Ok(())
}

/// Every file of a new Rust crate, by path relative to its folder.
fn files(name: &str, sdk: &Path) -> Vec<(&'static str, String)> {
    let artifact = artifact_name(name);
    // A TOML string literal, escaped as TOML wants (the path may hold `"` or `\`).
    let sdk_literal = toml::Value::String(sdk.display().to_string()).to_string();
    vec![
        (
            "Cargo.toml",
            CARGO_TOML
                .replace("{name}", name)
                .replace("{sdk}", &sdk_literal),
        ),
        (".cargo/config.toml", CARGO_CONFIG.to_owned()),
        ("src/lib.rs", LIB_RS.replace("{name}", name)),
        (
            "README.md",
            README
                .replace("{name}", name)
                .replace("{artifact}", &artifact),
        ),
        (".gitignore", "/target\n".to_owned()),
    ]
}

const CARGO_TOML: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# cdylib: the WebAssembly component kwasm runs; rlib: lets `cargo test` run
# the unit tests natively.
crate-type = ["cdylib", "rlib"]

[dependencies]
# The kwasm plugin SDK. It is not on crates.io yet: this is the checkout
# `kwasm new` was built from.
kwasm-guest = { path = {sdk} }

# A workspace of its own, so the crate builds wherever it is put.
[workspace]
"#;

const CARGO_CONFIG: &str = r#"# Plugins are WebAssembly components: build for WASI preview 2 by default
# (`rustup target add wasm32-wasip2` once).
[build]
target = "wasm32-wasip2"
"#;

const LIB_RS: &str = r#"//! `{name}`: a kwasm plugin. Forwards every message unchanged, adding a
//! `greeting` header whose value comes from the pipeline's config
//! (`greeting`, default `hello`).

use kwasm_guest::{handler, Config, Error, Message, Output};

/// What `setup` read from the pipeline's config.
pub struct Settings {
    greeting: String,
}

/// Runs once per plugin instance, before any message: a bad config fails the
/// deploy instead of every message.
pub fn setup(config: &Config) -> Result<Settings, String> {
    config.deny_unknown(&["greeting"])?;
    Ok(Settings {
        greeting: config.get("greeting").unwrap_or("hello").to_owned(),
    })
}

/// Called for every message, in order per partition. Return
/// `Error::retryable` to have it retried, `Error::permanent` to send it to the
/// dead-letter topic.
#[handler(init = setup)]
pub fn handle(msg: &Message, settings: &Settings) -> Result<Output, Error> {
    Ok(Output::forward(msg).with_header("greeting", settings.greeting.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_the_message_with_the_configured_greeting() {
        let settings = setup(&Config::from_iter([("greeting", "hey")])).expect("valid config");
        let msg = Message::builder().key("k").value("v").build();
        let out = handle(&msg, &settings).expect("never fails");
        assert_eq!(out.key(), Some(&b"k"[..]));
        assert_eq!(out.value(), Some(&b"v"[..]));
        assert_eq!(out.header("greeting"), Some(&b"hey"[..]));
    }

    #[test]
    fn unknown_config_keys_are_refused() {
        let err = setup(&Config::from_iter([("greting", "hey")])).err();
        assert_eq!(err.as_deref(), Some("unknown config key `greting` (known keys: greeting)"));
    }
}
"#;

const README: &str = r#"# {name}

A kwasm plugin: forwards every message unchanged, adding a `greeting` header
set from the pipeline's config (`greeting`, default `hello`).

## Build

```sh
cargo build --release
```

`.cargo/config.toml` selects the `wasm32-wasip2` target (`rustup target add
wasm32-wasip2` once). The component is
`target/wasm32-wasip2/release/{artifact}.wasm` (under `$CARGO_TARGET_DIR`
instead of `target/` when that is set).

## Try it

```sh
kwasm test target/wasm32-wasip2/release/{artifact}.wasm --input messages.jsonl --config greeting=hey
```

`messages.jsonl` holds two sample messages, one JSON object a line (`key`,
`value`, optional `headers`).

## Unit tests

They run natively, not as WebAssembly:

```sh
cargo test --target host-tuple
```

## Deploy

```sh
kwasm plugin deploy {name} target/wasm32-wasip2/release/{artifact}.wasm
cat > pipeline.toml <<'EOF'
name = "{name}"
plugin = "{name}"
inputs = ["input-topic"]
output = "output-topic"
config = { greeting = "hey" }
EOF
kwasm pipeline apply pipeline.toml
kwasm status
```
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_names_follow_cargos_rules() {
        for good in ["demo-plugin", "a", "my_filter2", "Shout"] {
            assert!(check_crate_name(good).is_ok(), "{good} was refused");
        }
        let cases = [
            ("", "it is empty"),
            ("2fast", "it must start with an ASCII letter"),
            ("-x", "it must start with an ASCII letter"),
            (
                "my plugin",
                "` ` is not allowed (only ASCII letters, digits, `-` and `_`)",
            ),
            (
                "café",
                "`é` is not allowed (only ASCII letters, digits, `-` and `_`)",
            ),
            ("fn", "it is a Rust keyword"),
            (
                "test",
                "it is reserved (a standard or kwasm crate, or a cargo folder)",
            ),
            (
                "kwasm-guest",
                "it is reserved (a standard or kwasm crate, or a cargo folder)",
            ),
        ];
        for (name, reason) in cases {
            let err = check_crate_name(name).expect_err(name);
            assert_eq!(
                err.to_string(),
                format!("`{name}` is not a valid crate name: {reason}")
            );
        }
        assert!(check_crate_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn the_sdk_path_is_escaped_as_a_toml_string() {
        let files = files("demo-plugin", Path::new(r#"/tmp/we"ird\sdk"#));
        let (_, cargo_toml) = files
            .iter()
            .find(|(p, _)| *p == "Cargo.toml")
            .expect("Cargo.toml");
        let parsed: toml::Table = toml::from_str(cargo_toml).expect("valid TOML");
        assert_eq!(
            parsed["dependencies"]["kwasm-guest"]["path"].as_str(),
            Some(r#"/tmp/we"ird\sdk"#)
        );
        assert_eq!(parsed["package"]["name"].as_str(), Some("demo-plugin"));
        assert!(
            parsed["workspace"]
                .as_table()
                .is_some_and(toml::Table::is_empty)
        );
    }

    fn tools() -> Toolchain {
        Toolchain {
            componentize_py: "componentize-py".into(),
            componentize_js: "/t/componentize-js".into(),
            wasm_tools: "wasm-tools".into(),
            go: "go".into(),
        }
    }

    #[test]
    fn every_language_writes_messages_jsonl_and_prints_its_build() {
        let sdk = Path::new("/sdk dir");
        for lang in [Lang::Rust, Lang::Python, Lang::Js, Lang::Go] {
            let plan = plan(lang, "demo", sdk, &tools());
            let messages = plan.files.iter().find(|(p, _)| *p == "messages.jsonl");
            assert_eq!(
                messages.map(|(_, m)| m.as_str()),
                Some(MESSAGES_JSONL),
                "{lang:?}"
            );
            for line in MESSAGES_JSONL.lines() {
                serde_json::from_str::<serde_json::Value>(line).expect("one JSON object a line");
            }
        }
        let python = plan(Lang::Python, "demo", sdk, &tools());
        assert_eq!(
            python.build,
            [
                "componentize-py -d '/sdk dir/wit/0.1.0' -w plugin componentize app -p . -p '/sdk dir/python' --stub-wasi -o demo.wasm"
            ]
        );
        assert_eq!(python.wasm, "demo.wasm");
        let js = plan(Lang::Js, "demo", sdk, &tools());
        assert_eq!(
            js.build,
            [
                "/t/componentize-js app.js --wit '/sdk dir/wit/0.1.0' -n plugin -d http -d fetch-event -o demo.wasm"
            ]
        );
        let sdk_copy = js
            .files
            .iter()
            .find(|(p, _)| *p == "kwasm.js")
            .map(|(_, f)| f.as_str());
        assert_eq!(sdk_copy, Some(JS_SDK), "the JS SDK is copied beside app.js");
        let go = plan(Lang::Go, "demo", sdk, &tools());
        assert_eq!(go.build.len(), 3);
        assert!(
            go.build[2].ends_with(
                "--adapt wasi_snapshot_preview1='/sdk dir/go/wasi_adapter.wat' -o demo.wasm"
            ),
            "{}",
            go.build[2]
        );
        let go_mod = go
            .files
            .iter()
            .find(|(p, _)| *p == "go.mod")
            .map(|(_, f)| f.as_str())
            .unwrap_or_default();
        assert!(
            go_mod.contains("replace kwasm/guest => \"/sdk dir/go\"\n"),
            "{go_mod}"
        );
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }

    #[test]
    fn names_of_other_languages_skip_rusts_keyword_rule_only() {
        assert!(check_name("fn", Lang::Python).is_ok());
        assert!(check_name("fn", Lang::Rust).is_err());
        assert!(check_name("my plugin", Lang::Go).is_err());
    }

    #[test]
    fn the_built_from_sdk_is_found() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js, Lang::Go] {
            let sdk = locate_sdk(Path::new(BUILT_FROM_SDK), lang)
                .unwrap_or_else(|e| panic!("{lang:?}: {e}"));
            assert!(sdk.ends_with("guest-sdk"), "{}", sdk.display());
        }
    }
}
