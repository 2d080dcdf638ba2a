//! `kwasm-chaos`: the chaos suite's driver and verifier (`scripts/chaos`
//! builds and runs it; docs/reliability.md explains the figures).
//!
//! It starts its own single-node Apache Kafka (through `KafkaCluster`, the
//! same `scripts/kafka-node` launcher the test suite uses, because it must
//! stop and restart the broker mid-run with the same ports and data), 12
//! input and output partitions, and `--hosts` `kwasm serve` hosts running the
//! tagging plugin (each host instance tags its outputs with its own name).
//! While a keyed producer writes `--messages` records over `--duration-s`,
//! it SIGTERMs, SIGKILLs, adds and restarts hosts every few seconds (chosen
//! by `--seed`), keeping between `hosts - 1` and `hosts + 1` running, and
//! restarts the broker once. Then it waits until the group has committed the
//! whole input, reads input and output to the end of every partition and
//! prints: lost, duplicates split by cause (in a SIGKILL window or not),
//! out-of-order per key, and the time to recover after each event.
//!
//! Exit status: 0 when every target is met (0 lost, 0 duplicates outside
//! SIGKILL windows, per-key order kept, no foreign output), 1 when one is
//! missed, 101 (a panic) when the run itself failed.
//!
//! A binary rather than a `#[test]`: it takes options (duration, hosts,
//! messages, seed), prints a report as it goes, runs minutes, and is run on
//! its own, never in parallel with the suite's tests.

#[path = "../e2e/mod.rs"]
mod e2e;
mod verify;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use e2e::{Host, PipelineDef, Protocol};
use kwasm_tests::keyed::{KeyedProducer, account_keyed, index_of};
use kwasm_tests::{
    KafkaCluster, committed_offsets, create_topic, create_topic_with_config, end_offsets,
    read_to_end, unique, wait_until,
};
use verify::{InputRecord, Kill, OutputCopy, Recovery, median, split_duplicates};

const PARTITIONS: i32 = 12;
/// Log lines of a failed commit, from the host and from librdkafka.
const COMMIT_FAILURE_MARKERS: [&str; 3] =
    ["commit on revoke failed", "IllegalGeneration", "COMMITFAIL"];

/// Chaos run against kwasm: hosts SIGTERMed, SIGKILLed, added and
/// restarted under keyed load, and one broker restart.
#[derive(Parser, Debug)]
#[command(name = "kwasm-chaos")]
struct Options {
    /// How long the input is produced and events happen, in seconds.
    #[arg(long, default_value_t = 150)]
    duration_s: u64,
    /// Hosts at the start; events keep between hosts - 1 and hosts + 1
    /// running (at least 1).
    #[arg(long, default_value_t = 4)]
    hosts: usize,
    /// Keyed input records, produced evenly over the duration.
    #[arg(long, default_value_t = 1_000_000)]
    messages: usize,
    /// Distinct keys of the input.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Seed of the event schedule (which event, which host, when).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Mean time between two host events, in seconds (each gap is drawn
    /// between half and one and a half of it).
    #[arg(long, default_value_t = 4.0)]
    event_every_s: f64,
    /// The hosts' `kafka.group_protocol`: classic or consumer.
    #[arg(long, default_value = "classic", value_parser = ["classic", "consumer"])]
    protocol: String,
    /// Skip the broker restart (by default at half the duration).
    #[arg(long)]
    no_broker_restart: bool,
    /// The hosts' consumer session timeout (classic protocol), in ms: how
    /// long a SIGKILLed host holds its partitions. A broker restart longer
    /// than this (8 to 15 s here) fences every member as a crash would; the
    /// report then counts the redone work in failure windows (see
    /// docs/reliability.md). A long session avoids that but stalls every
    /// rebalance of the classic protocol behind a SIGKILLed member.
    #[arg(long, default_value_t = 6_000)]
    session_timeout_ms: u32,
    /// Directory for the hosts' logs and the broker's (kept after the run).
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

/// What happened to whom, and when (wall clock, to compare with record
/// timestamps).
#[derive(Debug)]
struct Event {
    at_ms: i64,
    what: String,
    host: String,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The running hosts and everything needed to start one more.
struct Fleet<'a> {
    input: &'a str,
    output: &'a str,
    group: &'a str,
    dlq: &'a str,
    protocol: Protocol,
    session_timeout_ms: u32,
    next_id: usize,
    running: Vec<Host>,
    /// SIGTERMed or SIGKILLed hosts, kept for their exit status and logs.
    gone: Vec<(Host, &'static str)>,
}

impl Fleet<'_> {
    fn start_host(&mut self) -> String {
        let name = format!("chaos-{}", self.next_id);
        self.next_id += 1;
        let config = [("mode", "tag"), ("tag", name.as_str())];
        let pipeline = PipelineDef {
            name: "chaos",
            plugin: "misbehave",
            config: &config,
            input: self.input,
            output: self.output,
            group: self.group,
            dead_letter: Some(self.dlq),
        };
        self.running.push(Host::start_as_with_session_timeout(
            &name,
            &pipeline,
            self.protocol,
            self.session_timeout_ms,
        ));
        name
    }

    fn remove(&mut self, index: usize, how: &'static str) -> String {
        let mut host = self.running.remove(index);
        match how {
            "SIGKILL" => host.process.sigkill(),
            _ => host.process.sigterm(),
        }
        let name = host.process.name().to_owned();
        self.gone.push((host, how));
        name
    }
}

fn main() {
    let options = Options::parse();
    let protocol = match options.protocol.as_str() {
        "consumer" => Protocol::Consumer,
        _ => Protocol::Classic,
    };
    let min_hosts = options.hosts.saturating_sub(1).max(1);
    let max_hosts = options.hosts + 1;
    let duration = Duration::from_secs(options.duration_s);
    let rate = (options.messages as f64 / duration.as_secs_f64()).ceil() as u32;
    println!(
        "kwasm chaos: seed {}, {} hosts ({min_hosts} to {max_hosts}), {} protocol (session {} ms), {} keyed \
         messages ({} keys) over {} s ({rate}/s), an event every ~{} s, broker restart: {}",
        options.seed,
        options.hosts,
        protocol.name(),
        options.session_timeout_ms,
        options.messages,
        options.keys,
        options.duration_s,
        options.event_every_s,
        if options.no_broker_restart {
            "no".to_owned()
        } else {
            format!("at {} s", options.duration_s / 2)
        }
    );

    let mut kafka = KafkaCluster::start(1, &[]);
    // SAFETY: still single-threaded (no host, producer or client yet); the
    // support library reads the broker address from this variable.
    unsafe { std::env::set_var("KWASM_TEST_BROKERS", kafka.bootstrap()) };

    let input = unique("chaos-in");
    let output = format!("{input}-out");
    let group = format!("{input}-group");
    let dlq = format!("{input}-dlq");
    create_topic(&input, PARTITIONS);
    // LogAppendTime: each output record carries the moment the broker took
    // it, which is what recovery times are measured on.
    create_topic_with_config(
        &output,
        PARTITIONS,
        1,
        &[("message.timestamp.type", "LogAppendTime")],
    );
    create_topic(&dlq, 1);

    let mut fleet = Fleet {
        input: &input,
        output: &output,
        group: &group,
        dlq: &dlq,
        protocol,
        session_timeout_ms: options.session_timeout_ms,
        next_id: 0,
        running: Vec::new(),
        gone: Vec::new(),
    };
    for _ in 0..options.hosts {
        fleet.start_host();
    }
    let covered = wait_until(Duration::from_secs(120), Duration::from_millis(200), || {
        fleet
            .running
            .iter()
            .map(|h| h.partitions(&input).unwrap_or_default().len())
            .sum::<usize>()
            == PARTITIONS as usize
    });
    assert!(covered, "the first hosts never held every partition");

    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut events: Vec<Event> = Vec::new();
    let mut kills: Vec<Kill> = Vec::new();
    let producer = KeyedProducer::start(&input, options.keys, rate, Some(options.messages));
    let started = Instant::now();
    let mut broker_restart_due = !options.no_broker_restart;
    let mut session_expiry = false;
    let start_ms = now_ms();
    let log = |events: &[Event]| {
        if let Some(e) = events.last() {
            println!(
                "  {:>6.1} s  {:<15} {}",
                (e.at_ms - start_ms) as f64 / 1_000.0,
                e.what,
                e.host
            );
        }
    };
    println!("events:");
    loop {
        let gap = options.event_every_s * rng.random_range(0.5..1.5);
        std::thread::sleep(Duration::from_secs_f64(gap));
        if started.elapsed() >= duration {
            break;
        }
        if broker_restart_due && started.elapsed() >= duration / 2 {
            broker_restart_due = false;
            let before = committed_offsets(&group, &input, PARTITIONS);
            let running: Vec<String> = fleet
                .running
                .iter()
                .map(|h| h.process.name().to_owned())
                .collect();
            let stopped_ms = now_ms();
            kafka.stop(1);
            kafka.restart(1);
            // Recovery counts from the moment the broker serves again: a
            // controlled shutdown keeps serving for a while after SIGTERM,
            // so the stop is no fixed point to measure from.
            let at_ms = now_ms();
            events.push(Event {
                at_ms,
                what: "broker restart".into(),
                host: format!("(down {:.1} s)", (at_ms - stopped_ms) as f64 / 1_000.0),
            });
            log(&events);
            // Down longer than the session: every member was fenced as if it
            // had crashed (librdkafka declares the assignment lost, the
            // commit on revoke answers UNKNOWN_MEMBER_ID), and at-least-once
            // allows the next owners to redo what was not committed when the
            // broker went away, up to where the group stands once it has
            // recovered (a session and a rebalance later).
            if at_ms - stopped_ms >= i64::from(fleet.session_timeout_ms) {
                std::thread::sleep(Duration::from_millis(
                    u64::from(fleet.session_timeout_ms) + 10_000,
                ));
                let after = committed_offsets(&group, &input, PARTITIONS);
                for host in running {
                    kills.push(Kill {
                        host,
                        committed: before.clone(),
                        until: Some(after.clone()),
                    });
                }
                session_expiry = true;
            }
            continue;
        }
        let n = fleet.running.len();
        let mut choices = vec!["restart"];
        if n > min_hosts {
            choices.extend(["SIGTERM", "SIGKILL"]);
        }
        if n < max_hosts {
            choices.push("add");
        }
        let choice = choices[rng.random_range(0..choices.len())];
        let at_ms = now_ms();
        let host = match choice {
            "add" => fleet.start_host(),
            "restart" => {
                let victim = rng.random_range(0..n);
                let old = fleet.remove(victim, "SIGTERM");
                let new = fleet.start_host();
                format!("{old} -> {new}")
            }
            "SIGKILL" => {
                let victim = rng.random_range(0..n);
                let name = fleet.remove(victim, "SIGKILL");
                // The dead host can commit nothing more; a commit it sent
                // just before dying may still be landing.
                std::thread::sleep(Duration::from_millis(300));
                kills.push(Kill {
                    host: name.clone(),
                    committed: committed_offsets(&group, &input, PARTITIONS),
                    until: None,
                });
                name
            }
            _ => {
                let victim = rng.random_range(0..n);
                fleet.remove(victim, "SIGTERM")
            }
        };
        events.push(Event {
            at_ms,
            what: choice.into(),
            host,
        });
        log(&events);
    }
    let produced = producer.wait();
    println!(
        "input done: {produced} records in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The work is done when the group has committed the whole input.
    let input_ends = end_offsets(&input);
    let drained = wait_until(Duration::from_secs(300), Duration::from_millis(500), || {
        committed_offsets(&group, &input, PARTITIONS)
            .iter()
            .zip(&input_ends)
            .all(|(c, e)| *c == Some(*e))
    });
    println!(
        "group committed the whole input: {drained} ({:.1} s after the start)",
        started.elapsed().as_secs_f64()
    );
    if !drained {
        let behind: Vec<String> = committed_offsets(&group, &input, PARTITIONS)
            .iter()
            .zip(&input_ends)
            .enumerate()
            .filter(|(_, (c, e))| **c != Some(**e))
            .map(|(p, (c, e))| format!("{p}: committed {c:?} of {e}"))
            .collect();
        println!("  partitions behind: {}", behind.join(", "));
    }
    let inputs_read = read_to_end(&input, produced, Duration::from_secs(30));
    let outputs = read_to_end(&output, produced, Duration::from_secs(30));
    let dead_letters = read_to_end(&dlq, 0, Duration::from_secs(2)).len();

    for host in &mut fleet.running {
        host.process.sigterm();
    }
    let mut exits = Vec::new();
    for host in fleet.running.iter_mut() {
        let status = host.process.wait_exit(Duration::from_secs(30));
        exits.push((host.process.name().to_owned(), "SIGTERM", status));
    }
    for (host, how) in fleet.gone.iter_mut() {
        let status = host.process.wait_exit(Duration::from_secs(30));
        exits.push((host.process.name().to_owned(), *how, status));
    }

    // --- accounting ---
    let mut inputs: Vec<Option<InputRecord>> = vec![None; produced];
    for r in &inputs_read {
        if let Some(i) = r.value.as_deref().and_then(index_of)
            && let Some(slot) = inputs.get_mut(i)
        {
            *slot = Some(InputRecord {
                partition: r.partition,
                offset: r.offset,
                created_ms: r.timestamp_ms.unwrap_or(0),
            });
        }
    }
    let copies: Vec<OutputCopy> = outputs
        .iter()
        .filter_map(|r| {
            Some(OutputCopy {
                input: r.value.as_deref().and_then(index_of)?,
                partition: r.partition,
                offset: r.offset,
                appended_ms: r.timestamp_ms.unwrap_or(0),
                host: String::from_utf8_lossy(r.header("kwasm-tag").unwrap_or_default())
                    .into_owned(),
            })
        })
        .collect();
    let acc = account_keyed(produced, &outputs);
    let split = split_duplicates(&inputs, &copies, &kills);
    let recovery = Recovery::new(
        PARTITIONS as usize,
        copies.iter().filter_map(|c| {
            let input = inputs.get(c.input).copied().flatten()?;
            Some((c.partition, input.created_ms, c.appended_ms))
        }),
    );
    let mut latencies: Vec<i64> = copies
        .iter()
        .filter_map(|c| {
            let input = inputs.get(c.input).copied().flatten()?;
            Some(c.appended_ms - input.created_ms)
        })
        .collect();

    println!("\nrecovery after each event (until every partition writes input produced after it):");
    let mut recoveries: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for e in &events {
        let r = recovery.after(e.at_ms);
        if let Some(ms) = r {
            recoveries.entry(e.what.clone()).or_default().push(ms);
        }
        println!(
            "  {:>6.1} s  {:<15} {:<22} {}",
            (e.at_ms - start_ms) as f64 / 1_000.0,
            e.what,
            e.host,
            r.map_or("not measured (input ended)".to_owned(), |ms| format!(
                "{:.1} s",
                ms as f64 / 1_000.0
            ))
        );
    }
    let failures: Vec<String> = fleet
        .running
        .iter()
        .chain(fleet.gone.iter().map(|(h, _)| h))
        .map(|h| {
            let text = h.process.log_contents();
            let n: usize = text
                .lines()
                .filter(|l| COMMIT_FAILURE_MARKERS.iter().any(|m| l.contains(m)))
                .count();
            let revoke = text.matches("commit on revoke failed").count();
            (h.process.name().to_owned(), n, revoke)
        })
        .filter(|(_, n, _)| *n > 0)
        .map(|(name, n, revoke)| format!("{name}: {n} ({revoke} on revoke)"))
        .collect();
    if let Some(dir) = &options.log_dir {
        save_logs(dir, &fleet, &kafka);
    }

    println!("\nresult:");
    println!("  produced                 {produced}");
    println!("  output records           {}", acc.output);
    println!("  dead letters             {dead_letters}");
    println!(
        "  lost                     {}{}",
        acc.lost,
        examples(&acc.lost_examples)
    );
    println!(
        "  duplicates               {} (in SIGKILL windows{} {}, outside {}){}",
        acc.duplicates,
        if session_expiry {
            " and the broker outage's session expiry"
        } else {
            ""
        },
        split.in_kill_windows,
        split.other,
        examples(&split.other_examples)
    );
    if !split.other_by_first_host.is_empty() {
        println!(
            "    outside SIGKILL windows, by the host that wrote them first: {}",
            split
                .other_by_first_host
                .iter()
                .map(|(host, n)| format!("{host} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("  out of order (per key)   {}", acc.out_of_order);
    println!("  foreign output records   {}", acc.unexpected);
    println!(
        "  latency, median          {:.3} s (input produced to output appended)",
        median(&mut latencies).unwrap_or(0) as f64 / 1_000.0
    );
    for (what, values) in &mut recoveries {
        let max = values.iter().copied().max().unwrap_or(0);
        println!(
            "  recovery after {what:<10} median {:.1} s, max {:.1} s ({} events)",
            median(values).unwrap_or(0) as f64 / 1_000.0,
            max as f64 / 1_000.0,
            values.len()
        );
    }
    println!(
        "  events                   {} ({})",
        events.len(),
        count_by_kind(&events)
    );
    println!(
        "  host exits (code)        {}",
        exits
            .iter()
            .map(|(name, how, status)| format!(
                "{name} {how} {}",
                status
                    .and_then(|s| s.code())
                    .map_or("killed".to_owned(), |c| c.to_string())
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  hosts logging failed commits: {}",
        if failures.is_empty() {
            "none".to_owned()
        } else {
            failures.join(", ")
        }
    );
    if !drained {
        println!("  the group never committed the whole input within 300 s");
    }

    let targets = [
        ("0 lost", acc.lost == 0),
        ("0 duplicates outside SIGKILL windows", split.other == 0),
        ("per-key order kept", acc.out_of_order == 0),
        ("no foreign output", acc.unexpected == 0),
        ("the whole input committed", drained),
    ];
    println!("\ntargets:");
    for (name, met) in &targets {
        println!("  {:<40} {}", name, if *met { "met" } else { "MISSED" });
    }
    drop(fleet);
    drop(kafka);
    if targets.iter().any(|(_, met)| !met) {
        std::process::exit(1);
    }
}

fn examples(list: &[usize]) -> String {
    if list.is_empty() {
        String::new()
    } else {
        format!(" (e.g. records {list:?})")
    }
}

fn count_by_kind(events: &[Event]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for e in events {
        *counts.entry(e.what.as_str()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Copies every host's log and the broker's into `dir`.
fn save_logs(dir: &std::path::Path, fleet: &Fleet<'_>, kafka: &KafkaCluster) {
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("cannot create {}: {e}", dir.display());
        return;
    }
    for host in fleet
        .running
        .iter()
        .chain(fleet.gone.iter().map(|(h, _)| h))
    {
        let path = dir.join(format!("{}.log", host.process.name()));
        if let Err(e) = std::fs::write(&path, host.process.log_contents()) {
            eprintln!("cannot write {}: {e}", path.display());
        }
    }
    let path = dir.join("kafka-server.log");
    if let Err(e) = std::fs::write(&path, kafka.log_tail(1, 100_000)) {
        eprintln!("cannot write {}: {e}", path.display());
    }
    println!("logs in {}", dir.display());
}
