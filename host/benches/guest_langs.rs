//! The passthrough plugin in Rust, Python, JavaScript and Go, side by side in
//! one run: component size, compile time (no cache), cached start (loading the
//! compiled artifact from the on-disk cache), the first and a later
//! instantiation with `init`, memory per instance after the first batch, ns
//! per message at batch 512, how many instances the handler replaced for
//! passing the memory high-water mark on the way, and how many batches
//! failed (100-byte values, 10-byte keys, one thread).
//!
//! Run: `scripts/bench-guests` (builds the plugins, pins to one core).
//! `KWASM_BENCH_MESSAGES` sets the messages per plugin (default 200k).

use std::path::PathBuf;
use std::time::Instant;

use kwasm_host::runtime::{InputBatch, Limits, OutcomeView, Runtime, RuntimeConfig};

const PLUGINS: [(&str, &str); 4] = [
    ("Rust", "passthrough"),
    ("Python", "python_passthrough"),
    ("JavaScript", "js_passthrough"),
    ("Go", "go_passthrough"),
];

fn main() {
    let dir = std::env::var_os("KWASM_PLUGIN_DIR")
        .map(PathBuf::from)
        .expect("KWASM_PLUGIN_DIR is unset: run scripts/bench-guests, which builds the plugins");
    let messages: usize = std::env::var("KWASM_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let cache = tempfile_dir();
    println!(
        "kwasm guest languages: passthrough, batch 512, 100-byte values, one thread, {messages} messages each"
    );
    println!(
        "{:<11} {:>10} {:>11} {:>12} {:>13} {:>13} {:>11} {:>8} {:>9} {:>7}",
        "language",
        "size",
        "compile",
        "cached load",
        "1st instance",
        "next instance",
        "memory",
        "ns/msg",
        "replaced",
        "failed"
    );
    for (language, name) in PLUGINS {
        let wasm = std::fs::read(dir.join(format!("{name}.wasm")))
            .unwrap_or_else(|e| panic!("{name}.wasm: {e}"));
        let cache_dir = cache.join(name);
        let cold = Runtime::new(RuntimeConfig {
            cache_dir: Some(cache_dir.clone()),
            ..RuntimeConfig::default()
        })
        .expect("runtime");
        let started = Instant::now();
        cold.load(name, &wasm).expect("compile");
        let compile = started.elapsed();
        drop(cold);

        // A restarted host: a new engine, the artifact from the cache.
        let warm = Runtime::new(RuntimeConfig {
            cache_dir: Some(cache_dir),
            ..RuntimeConfig::default()
        })
        .expect("runtime");
        let started = Instant::now();
        let plugin = warm.load(name, &wasm).expect("cached load");
        let cached = started.elapsed();
        let started = Instant::now();
        let mut first = plugin
            .handler(vec![], Limits::default())
            .expect("instantiate");
        let first_instance = started.elapsed();
        let started = Instant::now();
        let second = plugin
            .handler(vec![], Limits::default())
            .expect("instantiate");
        let next_instance = started.elapsed();
        drop(second);

        let batch = batch_of(512);
        run(&mut first, &batch).expect("first batch");
        let memory = first.instance_memory_bytes().unwrap_or(0);
        // Python and JavaScript instances grow with every batch (docs/
        // benchmarks.md): the handler replaces one past its memory
        // high-water mark, timed with the rest. A failed batch (there should
        // be none) gets a new handler, as a worker would.
        let mut replaced = 0;
        let mut failed = 0;
        let started = Instant::now();
        let mut done = 0;
        while done < messages {
            if run(&mut first, &batch).is_err() {
                failed += 1;
                replaced += first.instances_replaced();
                first = plugin
                    .handler(vec![], Limits::default())
                    .expect("instantiate");
                continue;
            }
            done += 512;
        }
        replaced += first.instances_replaced();
        let ns = started.elapsed().as_secs_f64() * 1e9 / done as f64;
        println!(
            "{language:<11} {:>7.1} MB {:>8.0} ms {:>9.1} ms {:>10.1} ms {:>10.1} ms {:>7.1} MiB {ns:>8.0} {replaced:>9} {failed:>7}",
            wasm.len() as f64 / 1e6,
            compile.as_secs_f64() * 1e3,
            cached.as_secs_f64() * 1e3,
            first_instance.as_secs_f64() * 1e3,
            next_instance.as_secs_f64() * 1e3,
            memory as f64 / (1 << 20) as f64,
        );
    }
    let _ = std::fs::remove_dir_all(&cache);
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kwasm-bench-guests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn batch_of(n: i64) -> InputBatch {
    let mut batch = InputBatch::new("bench", 0);
    let value = vec![b'v'; 100];
    for i in 0..n {
        let key = format!("key-{i:06}");
        batch.push(
            i,
            Some(1_700_000_000_000 + i),
            Some(key.as_bytes()),
            Some(&value),
            [],
        );
    }
    batch
}

/// One batch through `handler`; the error when the call failed (a memory
/// limit, for a growing instance).
fn run(
    handler: &mut kwasm_host::runtime::PluginHandler,
    batch: &InputBatch,
) -> Result<(), kwasm_host::runtime::PluginError> {
    let out = handler.handle_batch(batch)?;
    let mut bytes = 0;
    for outcome in out.outcomes() {
        let OutcomeView::Ok(records) = outcome else {
            panic!("passthrough returned an error");
        };
        for r in records.iter() {
            bytes += r.value().map_or(0, <[u8]>::len) + r.key().map_or(0, <[u8]>::len);
        }
    }
    assert_eq!(bytes, 512 * 110, "every message forwarded");
    Ok(())
}
