//! Runtime benchmark: messages per second through the `passthrough` plugin at
//! batch sizes 1, 64, 512 and 4096, 100-byte values, on one thread.
//!
//! Each measured message is counted from the host's own input record (an
//! owned message as a Kafka client hands it over) to the producer-ready view
//! of its output: encoding into the batch, the call, the guest's decode and
//! encode, the host's contract check, and reading every output field.
//!
//! Run: `scripts/bench runtime` (builds the plugin, pins to one core).
//! Options (env): `KWASM_BENCH_MESSAGES` messages per batch size (default 1M,
//! batch 1 uses a quarter), `KWASM_BENCH_VALUE_BYTES` (default 100).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use kwasm_host::runtime::{InputBatch, Limits, OutcomeView, Runtime, RuntimeConfig};

/// What a Kafka client hands the host: an owned message.
struct SourceRecord {
    offset: i64,
    timestamp_ms: i64,
    key: Vec<u8>,
    value: Vec<u8>,
}

fn main() {
    let dir = std::env::var_os("KWASM_PLUGIN_DIR")
        .map(PathBuf::from)
        .expect("KWASM_PLUGIN_DIR is unset: run `scripts/bench runtime`, which builds the plugins");
    let wasm = std::fs::read(dir.join("passthrough.wasm")).expect("passthrough.wasm not built");
    let total: usize = env_or("KWASM_BENCH_MESSAGES", 1_000_000);
    let value_bytes: usize = env_or("KWASM_BENCH_VALUE_BYTES", 100);

    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let compile = Instant::now();
    let plugin = runtime
        .load("passthrough", &wasm)
        .expect("load passthrough");
    let compile_ms = compile.elapsed().as_secs_f64() * 1e3;
    let mut handler = plugin
        .handler(vec![], Limits::default())
        .expect("instantiate");

    let records: Vec<SourceRecord> = (0..4096)
        .map(|i| SourceRecord {
            offset: i,
            timestamp_ms: 1_700_000_000_000 + i,
            key: format!("key-{i:06}").into_bytes(),
            value: vec![b'v'; value_bytes],
        })
        .collect();

    println!(
        "kwasm runtime benchmark: passthrough plugin, {value_bytes}-byte values, 10-byte keys, one thread"
    );
    println!("compile (no cache): {compile_ms:.1} ms");
    println!(
        "{:>6} {:>12} {:>14} {:>12}",
        "batch", "messages", "msg/s", "ns/msg"
    );
    for batch_size in [1usize, 64, 512, 4096] {
        let n = if batch_size == 1 { total / 4 } else { total };
        // Warm up: the instance grows its memory to the batch size once.
        run(&mut handler, &records, batch_size, batch_size * 8);
        let start = Instant::now();
        let done = run(&mut handler, &records, batch_size, n);
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{batch_size:>6} {done:>12} {:>14.0} {:>12.1}",
            done as f64 / secs,
            secs * 1e9 / done as f64
        );
    }
}

/// Pushes `n` messages through in batches; returns how many were handled.
fn run(
    handler: &mut kwasm_host::runtime::PluginHandler,
    records: &[SourceRecord],
    batch_size: usize,
    n: usize,
) -> usize {
    let mut batch = InputBatch::new("bench", 0);
    let mut done = 0;
    let mut checksum = 0usize;
    while done < n {
        batch.clear();
        let take = batch_size.min(n - done);
        for r in records.iter().cycle().skip(done % records.len()).take(take) {
            batch.push(
                r.offset,
                Some(r.timestamp_ms),
                Some(&r.key),
                Some(&r.value),
                [],
            );
        }
        let out = handler.handle_batch(&batch).expect("passthrough failed");
        for outcome in out.outcomes() {
            let OutcomeView::Ok(recs) = outcome else {
                panic!("passthrough returned an error")
            };
            for rec in recs.iter() {
                checksum += rec.topic().map_or(0, str::len)
                    + rec.key().map_or(0, <[u8]>::len)
                    + rec.value().map_or(0, <[u8]>::len)
                    + rec.headers().count();
                black_box(rec.timestamp_ms());
            }
        }
        done += take;
    }
    black_box(checksum);
    done
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
