//! The worker's rules, run through its seams with a scripted plugin and a
//! recording sink: no wasmtime, no broker. Each test drives the real
//! `Worker::run` loop over a channel of batches, as the consumer thread
//! does, and reads what reached the sink, in order.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use super::{Worker, WorkerContext};
use crate::config::{PipelineSpec, RetryPolicy};
use crate::kafka::reread::InputReader;
use crate::kafka::{DeliveryRoute, DeliveryToken, OffsetTracker, OutRecord, ProduceError};
use crate::pipeline::seams::{Deploy, Runner, Sink};
use crate::pipeline::{DeploymentCell, PartitionEvent};
use crate::runtime::{
    BatchContext, BatchOutput, InputBatch, PluginError, PluginErrorKind, TestAnswer,
};
use crate::topics::{ControlPlane, OutputPolicy};

/// What the scripted plugin does with one message.
#[derive(Debug, Clone)]
enum Answer {
    /// One record to the pipeline's output, valued `<deployment>:<offset>`.
    Out,
    /// One record to this topic.
    To(&'static str),
    Retryable,
    Permanent,
    /// The whole batch traps (and the instance is gone).
    Trap,
}

type AnswerFn = dyn Fn(i64, u32) -> Answer + Send + Sync;

/// A deployment: its name goes into every output value, `answer(offset,
/// n)` says what the `n`-th presentation of `offset` gets, and
/// `start_fails(n)` whether its `n`-th instantiation fails.
struct Script {
    name: &'static str,
    answer: Box<AnswerFn>,
    start_fails: Box<dyn Fn(u32) -> bool + Send + Sync>,
    starts: AtomicU32,
    presented: Mutex<HashMap<i64, u32>>,
    /// `start <name>`, `start <name> failed`, `<name> [offsets]`, in order.
    log: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone)]
struct Scripted(Arc<Script>);

fn script(
    name: &'static str,
    log: &Arc<Mutex<Vec<String>>>,
    answer: impl Fn(i64, u32) -> Answer + Send + Sync + 'static,
) -> Script {
    Script {
        name,
        answer: Box::new(answer),
        start_fails: Box::new(|_| false),
        starts: AtomicU32::new(0),
        presented: Mutex::new(HashMap::new()),
        log: log.clone(),
    }
}

impl Script {
    fn failing_starts(mut self, fails: impl Fn(u32) -> bool + Send + Sync + 'static) -> Self {
        self.start_fails = Box::new(fails);
        self
    }
}

struct ScriptedRunner {
    script: Arc<Script>,
    started: bool,
    memory: bool,
}

impl Deploy for Scripted {
    type Runner = ScriptedRunner;
    fn idle_runner(&self) -> ScriptedRunner {
        ScriptedRunner {
            script: self.0.clone(),
            started: false,
            memory: false,
        }
    }
    fn describe(&self) -> (&str, Option<u32>) {
        (self.0.name, None)
    }
}

fn plugin_error(name: &str, kind: PluginErrorKind) -> PluginError {
    PluginError {
        context: Box::new(BatchContext {
            plugin: name.into(),
            digest: "0".repeat(64),
            topic: "in".into(),
            partition: 0,
            offsets: None,
        }),
        kind,
    }
}

impl Runner for ScriptedRunner {
    fn start(&mut self) -> Result<(), PluginError> {
        if self.started {
            return Ok(());
        }
        let s = &self.script;
        let n = s.starts.fetch_add(1, Ordering::SeqCst) + 1;
        if (s.start_fails)(n) {
            s.log
                .lock()
                .expect("not poisoned")
                .push(format!("start {} failed", s.name));
            return Err(plugin_error(
                s.name,
                PluginErrorKind::InitRejected("scripted".into()),
            ));
        }
        s.log
            .lock()
            .expect("not poisoned")
            .push(format!("start {}", s.name));
        self.started = true;
        Ok(())
    }

    fn handle_batch(&mut self, batch: &InputBatch) -> Result<BatchOutput, PluginError> {
        let s = self.script.clone();
        assert!(self.started, "{}: a batch ran on no instance", s.name);
        assert!(self.memory, "{}: a batch ran without plugin memory", s.name);
        let offsets: Vec<i64> = batch.messages().map(|m| m.offset()).collect();
        s.log
            .lock()
            .expect("not poisoned")
            .push(format!("{} {offsets:?}", s.name));
        let answers: Vec<Answer> = offsets
            .iter()
            .map(|&o| {
                let mut presented = s.presented.lock().expect("not poisoned");
                let n = presented.entry(o).or_default();
                *n += 1;
                (s.answer)(o, *n)
            })
            .collect();
        if answers.iter().any(|a| matches!(a, Answer::Trap)) {
            self.started = false;
            return Err(plugin_error(s.name, PluginErrorKind::Trap("boom".into())));
        }
        let answers: Vec<TestAnswer> = offsets
            .iter()
            .zip(answers)
            .map(|(o, a)| {
                let value = format!("{}:{o}", s.name).into_bytes();
                match a {
                    Answer::Out => TestAnswer::Records(vec![(None, value)]),
                    Answer::To(topic) => TestAnswer::Records(vec![(Some(topic.into()), value)]),
                    Answer::Retryable => TestAnswer::Retryable("not now".into()),
                    Answer::Permanent => TestAnswer::Permanent("never".into()),
                    Answer::Trap => unreachable!(),
                }
            })
            .collect();
        Ok(BatchOutput::from_answers(&answers))
    }

    fn holds_memory(&self) -> bool {
        self.memory
    }
    fn wait_for_memory(&mut self, _cancelled: &dyn Fn() -> bool) -> bool {
        self.memory = true;
        true
    }
    fn release_memory(&mut self) {
        self.memory = false;
        self.started = false;
    }
    fn memory_contended(&self) -> bool {
        false
    }
    fn plugin_name(&self) -> &str {
        self.script.name
    }
    fn plugin_digest(&self) -> &str {
        "0000"
    }
}

/// What reached the sink: a record or a dead letter.
#[derive(Debug, Clone, PartialEq)]
struct Sent {
    topic: String,
    value: String,
    dead_letter: bool,
    headers: BTreeMap<String, String>,
}

type RefuseFn = dyn Fn(&OutRecord<'_>) -> bool + Send + Sync;

/// Records what the worker sends, delivers it at once (acknowledging it in
/// the tracker, as a delivery report would) unless `refuse` says the
/// producer refuses it.
struct Recorder {
    sent: Mutex<Vec<Sent>>,
    events: Mutex<Vec<PartitionEvent>>,
    refuse: Box<RefuseFn>,
    tracker: Arc<OffsetTracker>,
}

struct RecordingSink(Arc<Recorder>);

impl Sink for RecordingSink {
    fn send(&self, record: OutRecord<'_>, token: DeliveryToken) -> Result<(), ProduceError> {
        if (self.0.refuse)(&record) {
            return Err(ProduceError::Rejected {
                topic: record.topic.to_owned(),
                source: KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
            });
        }
        let (offset, dead_letter) = token.input();
        let headers = record
            .headers
            .as_ref()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                        (h.key.to_owned(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.0.sent.lock().expect("not poisoned").push(Sent {
            topic: record.topic.to_owned(),
            value: String::from_utf8_lossy(record.value.unwrap_or_default()).into_owned(),
            dead_letter,
            headers,
        });
        self.0.tracker.acked(offset);
        Ok(())
    }

    fn report(&self, _topic: &str, _partition: i32, event: PartitionEvent) {
        self.0.events.lock().expect("not poisoned").push(event);
    }
}

/// A running worker and what it can be watched by.
struct Harness {
    batches: Option<SyncSender<InputBatch>>,
    thread: Option<JoinHandle<()>>,
    recorder: Arc<Recorder>,
    tracker: Arc<OffsetTracker>,
    cell: Arc<DeploymentCell<Scripted>>,
    log: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
    _runtime: tokio::runtime::Runtime,
}

struct Setup {
    retry: RetryPolicy,
    refuse: Box<RefuseFn>,
    permits: Arc<tokio::sync::Semaphore>,
    switch_retry: Duration,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            retry: RetryPolicy {
                max_attempts: 3,
                initial_backoff_ms: 5,
                max_backoff_ms: 20,
            },
            refuse: Box::new(|_| false),
            permits: Arc::new(tokio::sync::Semaphore::new(1)),
            switch_retry: Duration::from_millis(50),
        }
    }
}

const DEAD_LETTERS: &str = "p.dlq";

impl Harness {
    /// A worker on deployment `v1`, answering as `answer` says.
    fn start(setup: Setup, answer: impl Fn(i64, u32) -> Answer + Send + Sync + 'static) -> Harness {
        let log = Arc::new(Mutex::new(Vec::new()));
        let first = script("v1", &log, answer);
        Harness::start_with(setup, first, log)
    }

    /// Runs one batch of `offsets` to the end on a fresh worker.
    fn run(
        setup: Setup,
        offsets: Range<i64>,
        answer: impl Fn(i64, u32) -> Answer + Send + Sync + 'static,
    ) -> Harness {
        let mut h = Harness::start(setup, answer);
        h.send(offsets);
        h.finish();
        h
    }

    fn start_with(setup: Setup, first: Script, log: Arc<Mutex<Vec<String>>>) -> Harness {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let spec = PipelineSpec {
            name: "p".into(),
            plugin: "x".into(),
            inputs: vec!["in".into()],
            output: "out".into(),
            ..PipelineSpec::default()
        };
        assert_eq!(spec.dead_letter_topic(), DEAD_LETTERS);
        let tracker = Arc::new(OffsetTracker::new());
        let recorder = Arc::new(Recorder {
            sent: Mutex::default(),
            events: Mutex::default(),
            refuse: setup.refuse,
            tracker: tracker.clone(),
        });
        let cell = Arc::new(DeploymentCell::new(Scripted(Arc::new(first))));
        let stop = CancellationToken::new();
        let (recycle, _) = sync_channel(1);
        let ctx = WorkerContext {
            pipeline: "p".into(),
            output_topic: "out".into(),
            dead_letter_topic: spec.dead_letter_topic(),
            outputs: Arc::new(
                OutputPolicy::new(&spec, &ControlPlane::default()).expect("valid outputs"),
            ),
            retry: setup.retry,
            sink: RecordingSink(recorder.clone()),
            route: DeliveryRoute::standalone(tracker.clone()),
            topic: "in".into(),
            partition: 0,
            stop: stop.clone(),
            reader: Arc::new(InputReader::new(ClientConfig::new())),
            permits: setup.permits,
            runtime: runtime.handle().clone(),
            deployment: cell.clone(),
            recycle,
            gate: None,
            redo_rejected: BTreeMap::new(),
            hold: None,
        };
        let (deployment, generation) = cell.current();
        let mut worker = Worker::new(ctx, deployment.idle_runner(), generation);
        worker.switch_retry = setup.switch_retry;
        let (tx, rx) = sync_channel(16);
        let thread = std::thread::spawn(move || worker.run(rx));
        Harness {
            batches: Some(tx),
            thread: Some(thread),
            recorder,
            tracker,
            cell,
            log,
            stop,
            _runtime: runtime,
        }
    }

    fn send(&self, offsets: Range<i64>) {
        let mut batch = InputBatch::new("in", 0);
        for o in offsets {
            let value = format!("input {o}");
            batch.push(
                o,
                Some(1_000 + o),
                Some(b"k"),
                Some(value.as_bytes()),
                [("trace", Some(&b"t1"[..]))],
            );
        }
        self.batches
            .as_ref()
            .expect("open")
            .send(batch)
            .expect("the worker is running");
    }

    /// Closes the channel and waits for the worker to finish its batches.
    fn finish(&mut self) {
        self.batches = None;
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("the worker did not panic");
    }

    fn sent(&self) -> Vec<Sent> {
        self.recorder.sent.lock().expect("not poisoned").clone()
    }

    /// `topic value` of each record sent, in order.
    fn summary(&self) -> Vec<String> {
        self.sent()
            .iter()
            .map(|s| format!("{} {}", s.topic, s.value))
            .collect()
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().expect("not poisoned").clone()
    }

    fn events(&self) -> Vec<PartitionEvent> {
        self.recorder.events.lock().expect("not poisoned").clone()
    }

    fn wait_for_sent(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.sent().len() < n {
            assert!(
                Instant::now() < deadline,
                "{n} records expected, got {:?}",
                self.summary()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn dead_letters(&self) -> Vec<Sent> {
        self.sent()
            .into_iter()
            .filter(|s| s.topic == DEAD_LETTERS)
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
        self.batches = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_retryable_message_runs_again_alone_after_its_backoff_and_order_is_kept() {
    let h = Harness::run(Setup::default(), 0..3, |o, n| match (o, n) {
        (1, 1 | 2) => Answer::Retryable,
        _ => Answer::Out,
    });
    assert_eq!(h.summary(), strings(&["out v1:0", "out v1:1", "out v1:2"]));
    // Message 2's output from the first call waits for message 1 to settle.
    assert_eq!(
        h.log(),
        strings(&["start v1", "v1 [0, 1, 2]", "v1 [1]", "v1 [1]"])
    );
    assert_eq!(h.tracker.committable(), Some(3));
}

#[test]
fn a_message_still_retryable_at_its_last_attempt_is_dead_lettered_with_its_context() {
    let h = Harness::run(Setup::default(), 0..3, |o, _| match o {
        1 => Answer::Retryable,
        _ => Answer::Out,
    });
    assert_eq!(
        h.summary(),
        strings(&["out v1:0", "p.dlq input 1", "out v1:2"])
    );
    assert_eq!(
        h.log(),
        strings(&["start v1", "v1 [0, 1, 2]", "v1 [1]", "v1 [1]"])
    );
    let dead = &h.dead_letters()[0];
    assert!(dead.dead_letter);
    for (header, value) in [
        ("kwasm.error.kind", "retries-exhausted"),
        ("kwasm.attempts", "3"),
        ("kwasm.source.topic", "in"),
        ("kwasm.source.partition", "0"),
        ("kwasm.source.offset", "1"),
        ("kwasm.plugin.name", "v1"),
        ("kwasm.error.message", "not now"),
        // The input's own headers travel with it.
        ("trace", "t1"),
    ] {
        assert_eq!(
            dead.headers.get(header).map(String::as_str),
            Some(value),
            "{header}"
        );
    }
    assert_eq!(h.tracker.committable(), Some(3));
}

#[test]
fn a_permanent_failure_is_dead_lettered_at_once() {
    let h = Harness::run(Setup::default(), 0..3, |o, _| match o {
        1 => Answer::Permanent,
        _ => Answer::Out,
    });
    assert_eq!(
        h.summary(),
        strings(&["out v1:0", "p.dlq input 1", "out v1:2"])
    );
    assert_eq!(h.log(), strings(&["start v1", "v1 [0, 1, 2]"]));
    let dead = &h.dead_letters()[0];
    assert_eq!(dead.headers["kwasm.error.kind"], "permanent");
    assert_eq!(dead.headers["kwasm.attempts"], "1");
}

#[test]
fn a_trapping_batch_is_rerun_one_by_one_on_fresh_instances_and_only_the_culprit_is_dead_lettered() {
    let h = Harness::run(Setup::default(), 0..4, |o, _| match o {
        2 => Answer::Trap,
        _ => Answer::Out,
    });
    assert_eq!(
        h.summary(),
        strings(&["out v1:0", "out v1:1", "p.dlq input 2", "out v1:3"])
    );
    assert_eq!(
        h.log(),
        strings(&[
            "start v1",
            "v1 [0, 1, 2, 3]",
            "start v1",
            "v1 [0]",
            "v1 [1]",
            "v1 [2]",
            "start v1",
            "v1 [3]"
        ])
    );
    let dead = &h.dead_letters()[0];
    assert_eq!(dead.headers["kwasm.error.kind"], "trap");
    assert!(dead.headers["kwasm.error.message"].contains("boom"));
    assert_eq!(h.tracker.committable(), Some(4));
}

/// A trap, then an instance that cannot start: the partition stalls (and
/// says so) instead of dead-lettering the message in hand, and goes on
/// once an instance starts.
#[test]
fn an_instance_that_cannot_start_stalls_the_partition_and_dead_letters_nothing() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let first = script("v1", &log, |o, n| match (o, n) {
        (1, 1) => Answer::Trap,
        _ => Answer::Out,
    })
    .failing_starts(|n| n == 2);
    let mut h = Harness::start_with(Setup::default(), first, log);
    h.send(0..3);
    h.finish();
    assert_eq!(h.summary(), strings(&["out v1:0", "out v1:1", "out v1:2"]));
    assert!(h.dead_letters().is_empty());
    let events = h.events();
    assert!(
        matches!(&events[..], [PartitionEvent::Stalled(reason), PartitionEvent::Recovered]
            if reason.contains("cannot instantiate the plugin")),
        "{events:?}"
    );
    assert_eq!(
        h.log(),
        strings(&[
            "start v1",
            "v1 [0, 1, 2]",
            "start v1 failed",
            "start v1",
            "v1 [0]",
            "v1 [1]",
            "v1 [2]"
        ])
    );
    assert_eq!(h.tracker.committable(), Some(3));
}

#[test]
fn a_record_for_a_topic_the_pipeline_may_not_write_dead_letters_its_message() {
    let h = Harness::run(Setup::default(), 0..4, |o, _| match o {
        1 => Answer::To("__consumer_offsets"),
        2 => Answer::To("undeclared"),
        _ => Answer::Out,
    });
    assert_eq!(
        h.summary(),
        strings(&["out v1:0", "p.dlq input 1", "p.dlq input 2", "out v1:3"])
    );
    for dead in h.dead_letters() {
        assert_eq!(dead.headers["kwasm.error.kind"], "output-not-allowed");
    }
    assert_eq!(h.tracker.committable(), Some(4));
}

#[test]
fn a_record_the_producer_refuses_dead_letters_its_message() {
    let setup = Setup {
        refuse: Box::new(|r| r.value == Some(&b"v1:1"[..])),
        ..Setup::default()
    };
    let h = Harness::run(setup, 0..3, |_, _| Answer::Out);
    assert_eq!(
        h.summary(),
        strings(&["out v1:0", "p.dlq input 1", "out v1:2"])
    );
    let dead = &h.dead_letters()[0];
    assert_eq!(dead.headers["kwasm.error.kind"], "output-rejected");
    assert!(dead.headers["kwasm.error.message"].contains("output record 1 of 1"));
    assert_eq!(h.tracker.committable(), Some(3));
}

/// With nowhere to put the message, the partition must not commit past
/// it: it stops there, stalled, while later messages still go out.
#[test]
fn a_refused_dead_letter_stops_commits_at_its_message_and_stalls_the_partition() {
    let setup = Setup {
        refuse: Box::new(|r| r.value == Some(&b"v1:1"[..]) || r.topic == DEAD_LETTERS),
        ..Setup::default()
    };
    let h = Harness::run(setup, 0..3, |_, _| Answer::Out);
    assert_eq!(h.summary(), strings(&["out v1:0", "out v1:2"]));
    assert_eq!(h.tracker.committable(), Some(1));
    assert_eq!(h.tracker.failure().map(|f| f.0), Some(1));
    assert!(matches!(&h.events()[..], [PartitionEvent::Stalled(_)]));
}

/// A revocation during a backoff abandons the message and every later one
/// of its batch: nothing past it may reach the producer, or the tracker
/// would commit past it.
#[test]
fn a_stop_during_a_backoff_abandons_the_message_and_the_rest_of_its_batch() {
    let setup = Setup {
        retry: RetryPolicy {
            max_attempts: 5,
            initial_backoff_ms: 60_000,
            max_backoff_ms: 60_000,
        },
        ..Setup::default()
    };
    let mut h = Harness::start(setup, |o, _| match o {
        1 => Answer::Retryable,
        _ => Answer::Out,
    });
    h.send(0..3);
    h.wait_for_sent(1);
    std::thread::sleep(Duration::from_millis(50));
    let stopping = Instant::now();
    h.stop.cancel();
    h.finish();
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "the backoff held the stop"
    );
    assert_eq!(h.summary(), strings(&["out v1:0"]));
    assert_eq!(h.tracker.processed_through(), Some(1));
    assert_eq!(h.tracker.committable(), Some(1));
}

/// A hot deploy whose new code fails to start keeps the partition on the
/// old code, and the switch is tried again: the worker must not take the
/// new generation as done (issue 10, item 10).
#[test]
fn a_deployment_that_cannot_start_keeps_the_old_code_and_the_switch_is_retried() {
    let mut h = Harness::start(Setup::default(), |_, _| Answer::Out);
    h.send(0..1);
    h.wait_for_sent(1);
    let v2 = script("v2", &h.log, |_, _| Answer::Out).failing_starts(|n| n == 1);
    h.cell.replace(Scripted(Arc::new(v2)));
    h.send(1..2);
    h.wait_for_sent(2);
    std::thread::sleep(Duration::from_millis(200));
    h.send(2..3);
    h.finish();
    assert_eq!(h.summary(), strings(&["out v1:0", "out v1:1", "out v2:2"]));
    let log = h.log();
    assert_eq!(
        log,
        strings(&[
            "start v1",
            "v1 [0]",
            "start v2 failed",
            "start v1",
            "v1 [1]",
            "start v2",
            "v2 [2]"
        ])
    );
}

/// Two partitions share one call permit: a backoff on one holds none, so
/// the other flows meanwhile (issue 10, item 7).
#[test]
fn a_backoff_holds_no_call_permit() {
    let permits = Arc::new(tokio::sync::Semaphore::new(1));
    let slow = Setup {
        retry: RetryPolicy {
            max_attempts: 2,
            initial_backoff_ms: 2_000,
            max_backoff_ms: 2_000,
        },
        permits: permits.clone(),
        ..Setup::default()
    };
    let mut retrying = Harness::start(slow, |o, n| match (o, n) {
        (0, 1) => Answer::Retryable,
        _ => Answer::Out,
    });
    let fast = Setup {
        permits,
        ..Setup::default()
    };
    let mut flowing = Harness::start(fast, |_, _| Answer::Out);
    retrying.send(0..1);
    while retrying.log().len() < 2 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    for i in 0..5 {
        flowing.send(i..i + 1);
    }
    flowing.wait_for_sent(5);
    let flowed_in = started.elapsed();
    assert!(
        retrying.sent().is_empty(),
        "the other partition flowed only after the backoff ({flowed_in:?})"
    );
    flowing.finish();
    retrying.finish();
    assert_eq!(retrying.summary(), strings(&["out v1:0"]));
}
