//! `kwasm test`: a plugin author's local harness. Reads messages as JSON
//! lines, runs them through the plugin in the real runtime (same limits,
//! same sandbox), prints one JSON line per input message.
//!
//! Input line: `{"value": ..., "key": "k", "headers": {"h": "v"}, "offset": 7,
//! "partition": 0, "timestamp_ms": 1700000000000}`; every field is optional.
//! A string value is taken as is; any other JSON value as its JSON text.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use kwasm_host::runtime::{InputBatch, Limits, OutcomeView, Runtime, RuntimeConfig};

/// Arguments of `kwasm test`.
#[derive(clap::Args)]
pub struct TestArgs {
    /// The plugin component (.wasm).
    plugin: PathBuf,
    /// JSON-lines input file; `-` for standard input.
    #[arg(long)]
    input: PathBuf,
    /// Plugin configuration, repeatable: `--config field=email`.
    #[arg(long = "config", value_parser = parse_pair)]
    config: Vec<(String, String)>,
    /// Topic name shown to the plugin.
    #[arg(long, default_value = "test")]
    topic: String,
    /// Where compiled plugins are cached, keyed by digest and engine (a
    /// Python or JavaScript component takes tens of seconds to compile, a
    /// cached one milliseconds to load). Default: `~/.cache/kwasm/compiled`.
    #[arg(long, env = "KWASM_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct InputLine {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    value: Option<Value>,
    #[serde(default)]
    headers: serde_json::Map<String, Value>,
    #[serde(default)]
    offset: Option<i64>,
    #[serde(default)]
    partition: Option<i32>,
    #[serde(default)]
    timestamp_ms: Option<i64>,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

/// Runs the harness.
pub fn run(args: TestArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.plugin)
        .with_context(|| format!("cannot read {}", args.plugin.display()))?;
    let name = args
        .plugin
        .file_stem()
        .map_or("plugin".into(), |s| s.to_string_lossy().into_owned());
    let cache_dir = args.cache_dir.or_else(|| {
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/kwasm/compiled"))
    });
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir,
        ..RuntimeConfig::default()
    })?;
    let plugin = runtime.load(&name, &bytes)?;
    let mut handler = plugin.handler(args.config, Limits::default())?;
    let (reader, progress): (Box<dyn BufRead>, Progress) = if args.input.as_os_str() == "-" {
        (Box::new(std::io::stdin().lock()), Progress::new(None))
    } else {
        let file = std::fs::File::open(&args.input)
            .with_context(|| format!("cannot open {}", args.input.display()))?;
        let progress = Progress::new(file.metadata().ok().map(|m| m.len()));
        let file = progress.bar.wrap_read(file);
        (Box::new(std::io::BufReader::new(file)), progress)
    };
    let mut out = std::io::stdout().lock();
    for (n, line) in reader.lines().enumerate() {
        progress.message_done(n as u64);
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let input: InputLine =
            serde_json::from_str(&line).with_context(|| format!("input line {}", n + 1))?;
        let mut batch = InputBatch::new(args.topic.clone(), input.partition.unwrap_or(0));
        let value = input.value.map(|v| match v {
            Value::String(s) => s.into_bytes(),
            other => other.to_string().into_bytes(),
        });
        let headers: Vec<(String, Vec<u8>)> = input
            .headers
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    v.as_str()
                        .map_or_else(|| v.to_string(), str::to_owned)
                        .into_bytes(),
                )
            })
            .collect();
        batch.push(
            input.offset.unwrap_or(n as i64),
            input.timestamp_ms,
            input.key.as_deref().map(str::as_bytes),
            value.as_deref(),
            headers
                .iter()
                .map(|(k, v)| (k.as_str(), Some(v.as_slice()))),
        );
        let line = match handler.handle_batch(&batch) {
            Ok(output) => outcome_json(batch.message(0).offset(), output.outcome(0)),
            Err(e) => {
                json!({"offset": batch.message(0).offset(), "outcome": e.kind.code(), "error": e.to_string()})
            }
        };
        progress.bar.suspend(|| writeln!(out, "{line}"))?;
    }
    progress.bar.finish_and_clear();
    if out.flush().is_err() {
        bail!("cannot write to standard output");
    }
    Ok(())
}

/// The progress bar of a run: bytes of the input read, with messages and
/// messages/s. Drawn on stderr only when both stdout and stderr are
/// terminals: piped or redirected output gets no escape codes.
struct Progress {
    bar: indicatif::ProgressBar,
    started: std::time::Instant,
}

impl Progress {
    fn new(total_bytes: Option<u64>) -> Self {
        use std::io::IsTerminal;
        let on_terminal = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        let target = if on_terminal {
            indicatif::ProgressDrawTarget::stderr()
        } else {
            indicatif::ProgressDrawTarget::hidden()
        };
        let bar = indicatif::ProgressBar::with_draw_target(total_bytes, target);
        let template = if total_bytes.is_some() {
            "{bar:30} {bytes}/{total_bytes} {msg}"
        } else {
            "{spinner} {bytes} {msg}"
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        Progress {
            bar,
            started: std::time::Instant::now(),
        }
    }

    /// `done` messages handled so far.
    fn message_done(&self, done: u64) {
        if done.is_multiple_of(256) {
            let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
            self.bar.set_message(format!(
                "{done} messages, {:.0} msg/s",
                done as f64 / seconds
            ));
        }
    }
}

fn outcome_json(offset: i64, outcome: OutcomeView<'_>) -> Value {
    match outcome {
        OutcomeView::Ok(records) => {
            let records: Vec<Value> = records
                .iter()
                .map(|r| {
                    json!({
                        "topic": r.topic(),
                        "key": r.key().map(|k| String::from_utf8_lossy(k)),
                        "value": r.value().map(|v| String::from_utf8_lossy(v)),
                        "headers": r.headers().map(|(k, v)| json!([k, v.map(|v| String::from_utf8_lossy(v))])).collect::<Vec<_>>(),
                        "timestamp_ms": r.timestamp_ms(),
                    })
                })
                .collect();
            json!({"offset": offset, "outcome": "ok", "records": records})
        }
        OutcomeView::Retryable(m) => json!({"offset": offset, "outcome": "retryable", "error": m}),
        OutcomeView::Permanent(m) => json!({"offset": offset, "outcome": "permanent", "error": m}),
    }
}
