//! The Kafka Streams peer of the pipeline benchmark, seen from the harness:
//! starts the Java application of `host/benches/peers/kstreams/` (built by
//! `scripts/bench-pipeline`, which names its class path in
//! `KWASM_BENCH_KSTREAMS_CLASSPATH`) as a child process, learns from its
//! stdout when it is assigned (`running`) and when the first input record
//! reached its topology (`first-record`: the clock starts there, as it does at
//! kwasm's first fetched message), reads its CPU time from `/proc`, and stops
//! it with SIGTERM (Kafka Streams closes: commits, leaves the group).
//!
//! The JVM is a child that is not reaped until it stops, so its CPU is not in
//! the bench process's `getrusage(RUSAGE_SELF)`: the two are added for the
//! table, and the peer's share is shown on its own.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The environment variable naming the peer's class path.
pub const CLASSPATH_VAR: &str = "KWASM_BENCH_KSTREAMS_CLASSPATH";
/// JVM options of the peer (`KWASM_BENCH_KSTREAMS_JAVA_OPTS` overrides):
/// a heap as large as the broker's, far more than a stateless topology needs.
const DEFAULT_JAVA_OPTS: &str = "-Xms512m -Xmx512m";

/// Which of the peer's topologies runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The `passthrough` plugin's work: every record to the output as it is.
    Passthrough,
    /// The `transform` plugin's work on JSON object values.
    Transform,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Passthrough => "passthrough",
            Mode::Transform => "transform",
        }
    }
}

/// What the peer reported on stdout (written by the reader thread).
#[derive(Default)]
struct Signals {
    running: AtomicBool,
    first_record: AtomicBool,
    exited: AtomicBool,
}

/// A running peer process; [`PeerRun::stop`] ends it.
pub struct PeerRun {
    child: Child,
    signals: Arc<Signals>,
    reader: Option<std::thread::JoinHandle<()>>,
    log: PathBuf,
    state_dir: PathBuf,
}

/// Every argument the peer gets for one case: the harness's topics and
/// group, its processing guarantee, and for [`Mode::Transform`] the
/// plugin's own configuration keys.
pub fn peer_args(
    brokers: &str,
    input: &str,
    output: &str,
    application_id: &str,
    mode: Mode,
    exactly_once: bool,
    transform_config: &[(String, String)],
) -> Vec<String> {
    let mut args = vec![
        format!("brokers={brokers}"),
        format!("input={input}"),
        format!("output={output}"),
        format!("application-id={application_id}"),
        format!("mode={}", mode.arg()),
    ];
    if exactly_once {
        args.push("guarantee=exactly_once_v2".to_owned());
    }
    if mode == Mode::Transform {
        args.extend(transform_config.iter().map(|(k, v)| format!("{k}={v}")));
    }
    args
}

impl PeerRun {
    /// Starts the peer with `args` (see [`peer_args`]) on `classpath`.
    pub fn start(classpath: &str, name: &str, mut args: Vec<String>) -> Result<PeerRun, String> {
        let state_dir = std::env::temp_dir().join(format!("{name}-state"));
        let log = std::env::temp_dir().join(format!("{name}.log"));
        args.push(format!("state-dir={}", state_dir.display()));
        let java_opts = std::env::var("KWASM_BENCH_KSTREAMS_JAVA_OPTS")
            .unwrap_or_else(|_| DEFAULT_JAVA_OPTS.to_owned());
        let stderr = std::fs::File::create(&log)
            .map_err(|e| format!("kstreams peer: cannot create {}: {e}", log.display()))?;
        let mut child = Command::new("java")
            .args(java_opts.split_whitespace())
            .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
            .arg("-cp")
            .arg(classpath)
            .arg("dev.kwasm.bench.Peer")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("kstreams peer: cannot start java: {e}"))?;
        let stdout = child.stdout.take().ok_or("kstreams peer: no stdout pipe")?;
        let signals = Arc::new(Signals::default());
        let reader = std::thread::Builder::new()
            .name("bench-kstreams-out".into())
            .spawn({
                let signals = signals.clone();
                move || {
                    for line in BufReader::new(stdout).lines() {
                        match line.as_deref() {
                            Ok("running") => signals.running.store(true, Ordering::Release),
                            Ok("first-record") => {
                                signals.first_record.store(true, Ordering::Release)
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                    signals.exited.store(true, Ordering::Release);
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(PeerRun {
            child,
            signals,
            reader: Some(reader),
            log,
            state_dir,
        })
    }

    /// Whether the first input record has reached the topology.
    pub fn started(&self) -> bool {
        self.signals.first_record.load(Ordering::Acquire)
    }

    /// Whether Kafka Streams is RUNNING (its partitions are assigned).
    pub fn running(&self) -> bool {
        self.signals.running.load(Ordering::Acquire)
    }

    /// Why the peer is of no more use, if it stopped on its own: the end of
    /// its log.
    pub fn failure(&self) -> Option<String> {
        if !self.signals.exited.load(Ordering::Acquire) {
            return None;
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        Some(format!(
            "the Kafka Streams peer exited early ({}): {}",
            self.log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ))
    }

    /// CPU seconds (user + system, every JVM thread) the peer used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        process_cpu_seconds(self.child.id())
    }

    /// SIGTERM, then up to 40 s for Kafka Streams to close (its own close
    /// timeout is 30 s), else SIGKILL. The log is kept only if it failed.
    pub fn stop(mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill has no memory preconditions; the pid is our own
        // child, not yet reaped, so it cannot name another process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(40);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    break self.child.wait().ok();
                }
            }
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
        // The JVM exits with 143 when SIGTERM ends it through its shutdown hook.
        if status.is_some_and(|s| s.success() || s.code() == Some(143)) {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!(
                "[bench] kstreams peer ended with {status:?}; its log: {}",
                self.log.display()
            );
        }
    }
}

/// CPU seconds (utime + stime) process `pid` has used so far, from
/// `/proc/PID/stat`.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`: state is field 3; utime, stime are 14, 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}
