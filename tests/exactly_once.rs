//! End-to-end: `delivery = "exactly-once"` on the real Apache Kafka broker
//! started by scripts/test, with several `kwasm serve` processes. Every
//! count reads the output to the end of every partition as a
//! `read_committed` reader (`kwasm_tests::read_to_end`), so a duplicate
//! that became visible is counted, and an aborted transaction's records
//! are not.
//!
//! The broker-failover case needs a cluster of its own:
//! `tests/exactly_once_failover.rs`.

mod e2e;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use e2e::{Accounting, Host, PipelineDef, Topics, account, passthrough, pipeline_toml};
use kwasm_tests::{OutRecord, produce, produce_sequence, read_to_end, wait_until};

const PARTITIONS: i32 = 6;

fn topics(test: &str) -> Topics {
    e2e::topics(test, PARTITIONS)
}

/// The pipeline's TOML with `delivery` set.
fn with_delivery(pipeline: &PipelineDef<'_>, delivery: &str) -> String {
    pipeline_toml(pipeline).replace(
        "[pipeline.retry]",
        &format!("delivery = {delivery:?}\n[pipeline.retry]"),
    )
}

fn start(id: &str, t: &Topics, pipeline: &PipelineDef<'_>, delivery: &str) -> Host {
    Host::start_with_pipelines(id, &t.group, &with_delivery(pipeline, delivery))
}

/// Waits until the group's committed offsets on the input equal its end
/// offsets: everything was processed and its transaction committed.
fn wait_committed_to_end(t: &Topics, timeout: Duration) -> (Vec<i64>, Vec<Option<i64>>) {
    kwasm_tests::wait_committed_to_end(&t.group, &t.input, timeout)
}

fn print_accounting(what: &str, acc: &Accounting, output: usize) {
    println!(
        "{what}: {output} output records read to the end: lost {}, duplicates {}, out of order {}",
        acc.lost, acc.duplicates, acc.out_of_order
    );
}

#[test]
fn one_host_outputs_each_of_100k_inputs_exactly_once_and_commits_the_end() {
    let t = topics("eos-one");
    let produced = produce_sequence(&t.input, PARTITIONS, 100_000);
    let host = start("host-a", &t, &passthrough(&t), "exactly-once");

    let started = Instant::now();
    let output = read_to_end(&t.output, produced.len(), Duration::from_secs(120));
    let acc = account(&produced, &output);
    print_accounting("exactly-once, one host, 100k", &acc, output.len());
    println!(
        "  read to the end after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        (acc.lost, acc.duplicates, acc.out_of_order),
        (0, 0, 0),
        "{acc:?}"
    );
    assert_eq!(output.len(), produced.len());
    let (ends, committed) = wait_committed_to_end(&t, Duration::from_secs(30));
    assert_eq!(
        committed,
        ends.iter().map(|e| Some(*e)).collect::<Vec<_>>(),
        "committed offsets must reach the end offsets"
    );
    // The API says which mode the pipeline runs in.
    let (status, body) = host.call("GET", "/v1/assignments", b"");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pipelines"][0]["delivery"], "exactly-once", "{body}");
    // And the transactions are counted.
    let (_, metrics) = e2e::http_get(host.admin_port, "/metrics").expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("kwasm_transactions_committed_total") && !l.ends_with(" 0")),
        "no committed transactions in /metrics"
    );
}

/// `e2e::produce_slowly` over this file's partitions, in 40 chunks.
fn produce_slowly(
    topic: String,
    total: usize,
    over: Duration,
) -> std::thread::JoinHandle<Vec<(i32, String)>> {
    e2e::produce_slowly(topic, PARTITIONS, total, over, 40)
}

/// Three hosts; every 3 s one of them is SIGKILLed and started again (same
/// host id) while `total` records flow. Returns the accounting of the
/// output read to the end.
fn sigkill_chaos(delivery: &str, total: usize) -> (Accounting, usize) {
    let t = topics(&format!("eos-chaos-{}", &delivery[..5]));
    let pipeline = passthrough(&t);
    let ids = ["host-a", "host-b", "host-c"];
    let mut hosts: Vec<Host> = ids
        .iter()
        .map(|id| start(id, &t, &pipeline, delivery))
        .collect();
    for h in &hosts {
        h.wait_ready(Duration::from_secs(60));
    }
    let producer = produce_slowly(t.input.clone(), total, Duration::from_secs(20));
    let mut kills = 0;
    let chaos_until = Instant::now() + Duration::from_secs(21);
    let mut victim = 0;
    while Instant::now() < chaos_until {
        std::thread::sleep(Duration::from_secs(3));
        hosts[victim].process.sigkill();
        kills += 1;
        hosts[victim] = start(ids[victim], &t, &pipeline, delivery);
        victim = (victim + 1) % hosts.len();
    }
    let produced = producer.join().expect("producer thread");
    let output = read_to_end(&t.output, produced.len(), Duration::from_secs(180));
    let acc = account(&produced, &output);
    print_accounting(
        &format!("{delivery}, 3 hosts, {kills} SIGKILLs, {total} inputs"),
        &acc,
        output.len(),
    );
    let (ends, committed) = wait_committed_to_end(&t, Duration::from_secs(60));
    println!("  committed {committed:?}, end offsets {ends:?}");
    (acc, output.len())
}

#[test]
fn sigkill_chaos_duplicates_under_at_least_once_and_never_under_exactly_once() {
    let total = 200_000;
    let (alo, _) = sigkill_chaos("at-least-once", total);
    let (eos, eos_len) = sigkill_chaos("exactly-once", total);
    println!(
        "SIGKILL chaos, {total} inputs: at-least-once lost {} duplicates {}; exactly-once lost {} duplicates {}",
        alo.lost, alo.duplicates, eos.lost, eos.duplicates
    );
    assert_eq!(alo.lost, 0, "at-least-once lost inputs: {alo:?}");
    // The check can see duplicates: at-least-once redoes what a killed
    // host had not committed, and its outputs were already visible.
    assert!(
        alo.duplicates > 0,
        "at-least-once showed no duplicate under SIGKILL chaos: the test would not see one either"
    );
    assert_eq!(
        (eos.lost, eos.duplicates, eos.out_of_order),
        (0, 0, 0),
        "exactly-once: {eos:?}"
    );
    assert_eq!(eos_len, total);
}

#[test]
fn a_frozen_host_is_fenced_and_its_late_transaction_never_shows() {
    let t = topics("eos-zombie");
    let pipeline = passthrough(&t);
    let mut a = start("host-a", &t, &pipeline, "exactly-once");
    let b = start("host-b", &t, &pipeline, "exactly-once");
    let all: BTreeSet<i32> = (0..PARTITIONS).collect();
    let split = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        let pa = a.partitions(&t.input).unwrap_or_default();
        let pb = b.partitions(&t.input).unwrap_or_default();
        !pa.is_empty() && !pb.is_empty() && pa.union(&pb).count() == PARTITIONS as usize
    });
    assert!(split, "the two hosts never split the partitions");
    let held_by_a = a.partitions(&t.input).unwrap_or_default();

    let producer = produce_slowly(t.input.clone(), 60_000, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(3));
    // Frozen mid-stream, mid-transaction: past the session timeout (6 s)
    // its partitions move to host-b, which redoes their uncommitted tail.
    a.process.sigstop();
    let frozen = Instant::now();
    let moved = wait_until(Duration::from_secs(40), Duration::from_millis(100), || {
        b.partitions(&t.input).is_some_and(|p| p == all)
    });
    assert!(
        moved,
        "host-b never took over host-a's partitions {held_by_a:?}"
    );
    println!(
        "host-a frozen; host-b holds every partition {:.1} s later",
        frozen.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(2));
    a.process.sigcont();
    // The zombie wakes inside a transaction of the old generation: it must
    // be aborted (fenced), never committed.
    let fenced = a
        .process
        .wait_for_log("transaction aborted", Duration::from_secs(30));
    let log = a.process.log_contents();
    assert!(
        fenced,
        "host-a did not log its late transaction aborted after waking; its log ends:\n{}",
        tail(&log, 40)
    );
    let produced = producer.join().expect("producer thread");
    let output = read_to_end(&t.output, produced.len(), Duration::from_secs(120));
    let acc = account(&produced, &output);
    print_accounting("exactly-once, zombie host", &acc, output.len());
    if acc.duplicates > 0 {
        print_duplicates(&output);
    }
    assert_eq!(
        (acc.lost, acc.duplicates, acc.out_of_order),
        (0, 0, 0),
        "{acc:?}"
    );
    // The woken host recovered (it rejoined the group) or exited non-zero;
    // never a clean exit that would hide the fencing.
    if let Some(status) = a.process.wait_exit(Duration::from_secs(1)) {
        assert!(
            !status.success(),
            "a fenced host must not exit 0: {status:?}"
        );
    } else {
        let rejoined = wait_until(Duration::from_secs(40), Duration::from_millis(200), || {
            a.partitions(&t.input).is_some_and(|p| !p.is_empty())
        });
        assert!(rejoined, "host-a neither exited nor got partitions again");
    }
}

#[test]
fn a_poison_message_is_dead_lettered_exactly_once() {
    let t = topics("eos-poison");
    let config = [
        ("mode", "poison"),
        ("poison", "poison"),
        ("poison_action", "trap"),
    ];
    let pipeline = PipelineDef {
        name: "poison",
        plugin: "misbehave",
        config: &config,
        ..passthrough(&t)
    };
    let mut records: Vec<OutRecord> = (0..3000)
        .map(|i| OutRecord::to(i % 3, format!("ok-{i}")).key(format!("k{i}")))
        .collect();
    records[1000] = OutRecord::to(1, "poison").key("bad");
    let produced = produce(&t.input, records);
    let (poison_partition, poison_offset) = produced[1000];
    let _host = start("host-a", &t, &pipeline, "exactly-once");

    let output = read_to_end(&t.output, 2999, Duration::from_secs(60));
    let values: BTreeSet<String> = output.iter().map(|r| r.value_str()).collect();
    assert_eq!(output.len(), 2999, "each good input once");
    assert_eq!(values.len(), 2999);
    assert!(!values.contains("poison"));
    let dead = read_to_end(&t.dlq, 1, Duration::from_secs(30));
    assert_eq!(dead.len(), 1, "exactly one dead letter: {dead:?}");
    let d = &dead[0];
    assert_eq!(d.value_str(), "poison");
    let header = |n: &str| String::from_utf8_lossy(d.header(n).unwrap_or_default()).into_owned();
    assert_eq!(
        header("kwasm.source.partition"),
        poison_partition.to_string()
    );
    assert_eq!(header("kwasm.source.offset"), poison_offset.to_string());
    assert_eq!(header("kwasm.error.kind"), "trap");
    let (ends, committed) = wait_committed_to_end(&t, Duration::from_secs(30));
    assert_eq!(
        committed.iter().take(3).copied().collect::<Vec<_>>(),
        ends.iter().take(3).map(|e| Some(*e)).collect::<Vec<_>>()
    );
}

/// A dead letter the broker refuses for good under exactly-once (the
/// dead-letter topic's `max.message.bytes` is below the poison message it
/// must carry) fails every transaction holding it. Its partition stalls,
/// visibly, and redoes its work after a growing wait; every other
/// partition's work commits in between, exactly once. Before the fix each
/// redo aborted the next transaction at once, taking every partition's
/// work with it, again and again.
#[test]
fn a_refused_dead_letter_stalls_its_partition_while_the_others_commit() {
    let t = topics("eos-refused-dl");
    let small_dlq = format!("{}-small-dlq", t.input);
    kwasm_tests::create_topic_with_config(&small_dlq, 1, 1, &[("max.message.bytes", "4096")]);
    let poison = "P".repeat(8_000);
    let config = [
        ("mode", "poison"),
        ("poison", poison.as_str()),
        ("poison_action", "permanent"),
    ];
    let pipeline = PipelineDef {
        name: "refused",
        plugin: "misbehave",
        config: &config,
        dead_letter: Some(&small_dlq),
        ..passthrough(&t)
    };
    // The poison first on partition 1: nothing of it can commit.
    produce(&t.input, [OutRecord::to(1, poison.clone()).key("bad")]);
    let records: Vec<OutRecord> = (0..3000)
        .map(|i| OutRecord::to(i % PARTITIONS, format!("ok-{i}")).key(format!("k{i}")))
        .collect();
    produce(&t.input, records);
    let expected: BTreeSet<String> = (0..3000)
        .filter(|i| i % PARTITIONS != 1)
        .map(|i| format!("ok-{i}"))
        .collect();
    let host = start("host-a", &t, &pipeline, "exactly-once");
    let started = Instant::now();

    // Aborted transactions count in the end offsets; `read_to_end` reads
    // again until the redone work has committed.
    let output = read_to_end(&t.output, expected.len(), Duration::from_secs(90));
    let values: Vec<String> = output.iter().map(|r| r.value_str()).collect();
    let distinct: BTreeSet<String> = values.iter().cloned().collect();
    let missing: Vec<&String> = expected.difference(&distinct).take(5).collect();
    let unexpected: Vec<&String> = distinct.difference(&expected).take(5).collect();
    println!(
        "refused dead letter: {} outputs read to the end after {:.1} s ({} expected from the 5 other partitions)",
        values.len(),
        started.elapsed().as_secs_f64(),
        expected.len()
    );
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "every other partition's inputs, and none of partition 1: missing {} (e.g. {missing:?}), unexpected {} (e.g. {unexpected:?})",
        expected.difference(&distinct).count(),
        distinct.difference(&expected).count()
    );
    assert_eq!(values.len(), expected.len(), "no duplicates");

    let stalled = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        e2e::assignment_rows(&host, "refused")
            .iter()
            .any(|r| r["partition"] == 1 && r["state"] == "stalled")
    });
    let rows = e2e::assignment_rows(&host, "refused");
    assert!(stalled, "partition 1 shows as stalled: {rows:?}");
    let reason = rows
        .iter()
        .find(|r| r["partition"] == 1)
        .and_then(|r| r["reason"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.contains("aborted because of this partition"),
        "reason: {reason}"
    );

    // Aborts are paced by the partition's growing wait (1, 2, 4, 8 s ...),
    // not one per transaction (100 ms).
    std::thread::sleep(Duration::from_secs(25).saturating_sub(started.elapsed()));
    let aborted = e2e::metric(&host, "kwasm_transactions_aborted_total", "refused").unwrap_or(0.0);
    println!(
        "  {aborted} transactions aborted in {:.0} s; partition 1: {reason}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        aborted >= 2.0,
        "the refused dead letter aborted transactions: {aborted}"
    );
    assert!(aborted <= 12.0, "aborts not paced: {aborted} in 25 s");
    // Nothing past the poison committed, nothing refused got through.
    let committed = kwasm_tests::committed_offsets(&t.group, &t.input, PARTITIONS);
    assert!(
        committed[1].is_none_or(|o| o == 0),
        "partition 1 committed past its poison: {committed:?}"
    );
    // (Its end offset moved: each aborted transaction left a marker there.)
    let dead = read_to_end(&small_dlq, 0, Duration::from_secs(5));
    assert!(
        dead.is_empty(),
        "a refused dead letter got through: {dead:?}"
    );
}

/// For a failure message: which inputs came out twice, and where.
fn print_duplicates(output: &[kwasm_tests::Record]) {
    let mut at: std::collections::BTreeMap<String, Vec<(i32, i64)>> = Default::default();
    for r in output {
        at.entry(r.value_str())
            .or_default()
            .push((r.partition, r.offset));
    }
    let dups: Vec<_> = at.iter().filter(|(_, w)| w.len() > 1).collect();
    let mut per_input: std::collections::BTreeMap<i32, (i64, i64, usize)> = Default::default();
    for (v, _) in &dups {
        if let Some((p, seq)) = kwasm_tests::sequence_of(v) {
            let e = per_input.entry(p).or_insert((i64::MAX, i64::MIN, 0));
            e.0 = e.0.min(seq);
            e.1 = e.1.max(seq);
            e.2 += 1;
        }
    }
    println!("  duplicated inputs per input partition (first seq, last seq, count): {per_input:?}");
    for (v, w) in dups.iter().take(5) {
        println!("  {v} at (output partition, offset) {w:?}");
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The recovery taken when the coordinator refuses an abort for good (seen
/// after an outage longer than the transaction timeout: the coordinator
/// had aborted the transaction itself and answered INVALID_TXN_STATE,
/// which is fatal to that producer): the pipeline replaces its
/// transactional producer, rewinds, redoes the work and goes on, instead of
/// stopping the host. No broker refuses an abort on demand, so librdkafka's
/// mock cluster (in this process) injects the two refusals. It implements
/// no transaction semantics, so this checks the calls and the recovery, not
/// what `read_committed` readers see: every partition's offset reaches the
/// end of the input in a committed transaction, necessarily through a new
/// producer (the first one is failed for good once its abort was refused),
/// and no fatal error was reported.
#[test]
fn a_refused_abort_replaces_the_transactional_producer_and_the_pipeline_goes_on() {
    use std::sync::Arc;

    use kwasm_host::config::{Delivery, HostConfig, KafkaConfig, PipelineSpec};
    use kwasm_host::kafka::{OutputProducer, producer_config};
    use kwasm_host::pipeline::{Deployment, Pipeline, PipelineDeps};
    use kwasm_host::runtime::{Limits, Runtime, RuntimeConfig};
    use kwasm_host::topics::ControlPlane;
    use rdkafka::ClientConfig;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    const MESSAGES: usize = 300;
    let log = CapturedLog::install();
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    let input = kwasm_tests::unique("eos-replace-in");
    let output = format!("{input}-out");
    let group = format!("{input}-group");
    for topic in [&input, &output] {
        mock.create_topic(topic, 3, 1).expect("mock topic");
    }
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("input producer");
    for i in 0..MESSAGES {
        let value = format!("m{i}");
        producer
            .send(
                BaseRecord::<(), _>::to(&input)
                    .partition((i % 3) as i32)
                    .payload(&value),
            )
            .expect("enqueue an input");
    }
    producer
        .flush(Duration::from_secs(10))
        .expect("flush inputs");

    // The first transaction's offsets are refused (abortable: the pipeline
    // aborts), and then its abort (fatal to that producer).
    mock.request_errors(
        RDKafkaApiKey::AddOffsetsToTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED],
    );
    mock.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_TXN_STATE],
    );

    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(
            std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kwasm-eos-mock-cache"),
        ),
        ..RuntimeConfig::default()
    })
    .expect("wasm runtime");
    let bytes = std::fs::read(kwasm_tests::plugin_path("passthrough")).expect("passthrough.wasm");
    let plugin = runtime
        .load("passthrough", &bytes)
        .expect("load passthrough");
    let host = HostConfig {
        id: "host-mock".into(),
        ..HostConfig::default()
    };
    let kafka = KafkaConfig {
        brokers: brokers.clone(),
        ..KafkaConfig::default()
    };
    let host_producer =
        OutputProducer::new(&producer_config(&kafka, &host.id)).expect("host producer");
    let deps = PipelineDeps {
        permits: Arc::new(tokio::sync::Semaphore::new(2)),
        host,
        kafka,
        producer: host_producer,
        runtime: rt.handle().clone(),
        control: ControlPlane::default(),
        cancel: Default::default(),
    };
    let spec = PipelineSpec {
        name: "eos-replace".into(),
        plugin: "passthrough.wasm".into(),
        inputs: vec![input.clone()],
        output: output.clone(),
        group_id: Some(group.clone()),
        delivery: Delivery::ExactlyOnce,
        ..PipelineSpec::default()
    };
    let deployment = Deployment {
        plugin,
        version: None,
        config: Vec::new(),
        limits: Limits::default(),
        outputs: vec![output.clone()],
    };
    let pipeline = Pipeline::start(spec, deployment, &deps).expect("pipeline starts");

    // The mock answers TxnOffsetCommit without storing the offsets, so the
    // commits are read from the pipeline's own status: a partition's
    // `committed` moves only when a transaction holding its offset
    // committed.
    let per_partition = (MESSAGES / 3) as i64;
    let mut committed = Vec::new();
    let done = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        committed = pipeline
            .status()
            .partitions()
            .iter()
            .map(|p| p.committed.unwrap_or(-1))
            .collect();
        committed.len() == 3 && committed.iter().all(|&o| o == per_partition)
    });
    let fatal = kwasm_host::serve::fatal_error();
    pipeline.join();
    let text = log.contents();
    let replaced = text.contains("replacing the transactional producer");
    println!(
        "refused abort: offsets committed {committed:?} of {per_partition} per partition; producer replaced: {replaced}; fatal: {fatal:?}"
    );
    assert!(
        replaced,
        "the injected refusals did not reach the replacement path; log:\n{text}"
    );
    assert_eq!(fatal, None, "a refused abort stopped the host");
    assert!(
        done,
        "offsets {committed:?}, expected {per_partition} on each partition: the pipeline did not go on after replacing its producer; log:\n{text}"
    );
}

/// What this process logs, kept in memory: the in-process pipeline's log
/// lines, for the test above to look for the path it took. (The other
/// tests' hosts are processes of their own and log to their own files.)
struct CapturedLog;

static CAPTURED: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct CaptureWriter;

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLog {
    fn install() -> CapturedLog {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(|| CaptureWriter)
            .try_init();
        CapturedLog
    }

    fn contents(&self) -> String {
        String::from_utf8_lossy(&CAPTURED.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}
