//! `kwasm new NAME`: a plugin crate that builds and tests as it is.
//!
//! The SDK (`kwasm-guest`) is not on crates.io yet, so the crate depends on
//! it by path: by default the `guest-sdk/` of the kwasm checkout this binary
//! was built from, whose absolute path is compiled in.

use std::path::{Path, PathBuf};

use super::{CliError, emit};

/// The SDK of the checkout this binary was built from.
const BUILT_FROM_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk");

/// Arguments of `kwasm new`.
#[derive(clap::Args)]
pub struct NewArgs {
    /// Crate name of the plugin, e.g. `my-filter` (letters, digits, `-`,
    /// `_`; starting with a letter). Also the folder's name.
    name: String,
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
    /// The SDK folder has no `Cargo.toml`.
    #[error(
        "no kwasm plugin SDK at {}: pass --sdk-path with the guest-sdk folder of a kwasm checkout",
        path.display()
    )]
    NoSdk {
        /// Where it was looked for.
        path: PathBuf,
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
    check_crate_name(&args.name)?;
    let sdk = locate_sdk(
        args.sdk_path
            .as_deref()
            .unwrap_or(Path::new(BUILT_FROM_SDK)),
    )?;
    let dir = args.path.join(&args.name);
    create_crate(&dir, &args.name, &sdk)?;
    emit(&format!(
        "created plugin crate `{name}` in {dir}\n\n  cd {dir}\n  cargo build --release\n  kwasm test target/wasm32-wasip2/release/{artifact}.wasm --input messages.jsonl\n",
        name = args.name,
        dir = dir.display(),
        artifact = artifact_name(&args.name),
    ))
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

/// cargo's rules for a package name, plus the clashes above.
fn check_crate_name(name: &str) -> Result<(), ScaffoldError> {
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
fn locate_sdk(path: &Path) -> Result<PathBuf, ScaffoldError> {
    let no_sdk = || ScaffoldError::NoSdk {
        path: path.to_owned(),
    };
    let sdk = path.canonicalize().map_err(|_| no_sdk())?;
    if sdk.join("Cargo.toml").is_file() {
        Ok(sdk)
    } else {
        Err(no_sdk())
    }
}

/// Creates `dir` (which must not exist) and the crate's files in it.
fn create_crate(dir: &Path, name: &str, sdk: &Path) -> Result<(), ScaffoldError> {
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
    for (relative, contents) in files(name, sdk) {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(write_error(parent))?;
        }
        std::fs::write(&path, contents).map_err(write_error(&path))?;
    }
    Ok(())
}

/// Every file of the new crate, by path relative to its folder.
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
echo '{"key": "k", "value": "hi"}' > messages.jsonl
kwasm test target/wasm32-wasip2/release/{artifact}.wasm --input messages.jsonl --config greeting=hey
```

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

    #[test]
    fn the_built_from_sdk_is_found() {
        let sdk = locate_sdk(Path::new(BUILT_FROM_SDK)).expect("this checkout has guest-sdk/");
        assert!(sdk.ends_with("guest-sdk"), "{}", sdk.display());
    }
}
