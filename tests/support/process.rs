//! [`HostProcess`]: a child process (normally the `kwasm` host) whose stdout and
//! stderr go to a log file, with signals and bounded waits for tests.
//!
//! Invariant: a `HostProcess` never outlives its test. Dropping it SIGKILLs and
//! reaps the child if it is still running, and if the test is panicking the
//! tail of the log is printed so the failure shows what the process said.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::{kwasm_bin, wait_until};

/// How many trailing log lines to print when a test fails with a live process.
const LOG_TAIL_LINES: usize = 60;

/// A running child process with its output captured in a log file.
pub struct HostProcess {
    name: String,
    child: Child,
    /// Set once the child has been reaped.
    exit: Option<ExitStatus>,
    log_path: PathBuf,
    /// Owns the directory holding the log; removed on drop.
    _dir: tempfile::TempDir,
}

impl HostProcess {
    /// Spawns the `kwasm` binary ([`kwasm_bin`]) with `args` and extra `env`
    /// variables; `name` labels it in messages and names its log file.
    ///
    /// # Panics
    /// If the binary is missing or cannot be started.
    pub fn spawn(args: &[&str], env: &[(&str, &str)], name: &str) -> HostProcess {
        Self::spawn_program(&kwasm_bin(), args, env, name)
    }

    /// Spawns any `program` the same way as [`HostProcess::spawn`].
    pub fn spawn_program(
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        name: &str,
    ) -> HostProcess {
        let dir = tempfile::Builder::new()
            .prefix(&format!("kwasm-{name}-"))
            // KWASM_TEST_KEEP_LOGS=1 keeps every process's log for a look
            // after the test (the failure message names the file).
            .disable_cleanup(std::env::var_os("KWASM_TEST_KEEP_LOGS").is_some())
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for `{name}`'s log: {e}"));
        let log_path = dir.path().join(format!("{name}.log"));
        let stdout = File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let stderr = stdout
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone the log file handle: {e}"));
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{name}` ({}): {e}", program.display()));
        HostProcess {
            name: name.to_string(),
            child,
            exit: None,
            log_path,
            _dir: dir,
        }
    }

    /// The label given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Process id of the child.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Path of the log file holding the child's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the child has written so far (lossy UTF-8).
    pub fn log_contents(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("<cannot read {}: {e}>", self.log_path.display()),
        }
    }

    /// Waits until the log contains `needle`; false if `timeout` passed first.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, Duration::from_millis(50), || {
            self.log_contents().contains(needle)
        })
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> bool {
        self.try_reap().is_none()
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn sigterm(&mut self) {
        self.signal(libc::SIGTERM, "SIGTERM");
    }

    /// Sends SIGKILL (a crash: no chance to commit or leave the group).
    pub fn sigkill(&mut self) {
        self.signal(libc::SIGKILL, "SIGKILL");
    }

    /// Sends SIGSTOP: the process freezes (a zombie-to-be: a long GC
    /// pause, a stalled VM) with its connections open.
    pub fn sigstop(&mut self) {
        self.signal(libc::SIGSTOP, "SIGSTOP");
    }

    /// Sends SIGCONT: a frozen process goes on where it stopped.
    pub fn sigcont(&mut self) {
        self.signal(libc::SIGCONT, "SIGCONT");
    }

    /// Waits up to `timeout` for the child to exit; `None` if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_until(timeout, Duration::from_millis(20), || {
            self.try_reap().is_some()
        });
        self.exit
    }

    fn try_reap(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            match self.child.try_wait() {
                Ok(status) => self.exit = status,
                Err(e) => panic!("cannot poll `{}` for exit: {e}", self.name),
            }
        }
        self.exit
    }

    fn signal(&mut self, signal: libc::c_int, signal_name: &str) {
        if self.try_reap().is_some() {
            panic!(
                "cannot send {signal_name} to `{}`: it already exited ({:?})",
                self.name, self.exit
            );
        }
        let pid = libc::pid_t::try_from(self.child.id())
            .unwrap_or_else(|_| panic!("pid of `{}` does not fit pid_t", self.name));
        // SAFETY: kill(2) has no memory-safety preconditions. The child is not
        // yet reaped (checked above), so the pid still names our child.
        let result = unsafe { libc::kill(pid, signal) };
        if result != 0 {
            panic!(
                "{signal_name} to `{}` (pid {pid}) failed: {}",
                self.name,
                std::io::Error::last_os_error()
            );
        }
    }

    fn log_tail(&self) -> String {
        let contents = self.log_contents();
        let lines: Vec<&str> = contents.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        lines[start..].join("\n")
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        if self.exit.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- last {LOG_TAIL_LINES} lines of `{}` ({}) ----\n{}\n---- end of `{}` ----",
                self.name,
                self.log_path.display(),
                self.log_tail(),
                self.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, name: &str) -> HostProcess {
        HostProcess::spawn_program(Path::new("/bin/sh"), &["-c", script], &[], name)
    }

    #[test]
    fn captures_output_and_exit_status() {
        let mut process = HostProcess::spawn_program(
            Path::new("/bin/sh"),
            &["-c", "echo out-$GREETING; echo err >&2; exit 3"],
            &[("GREETING", "hello")],
            "echo",
        );
        let status = process.wait_exit(Duration::from_secs(10)).expect("exits");
        assert_eq!(status.code(), Some(3));
        let log = process.log_contents();
        assert!(log.contains("out-hello"), "{log}");
        assert!(log.contains("err"), "{log}");
    }

    #[test]
    fn sigterm_runs_the_handler_and_sigkill_kills() {
        let mut graceful = sh(
            "trap 'echo bye; exit 0' TERM; echo ready; while :; do sleep 0.05; done",
            "graceful",
        );
        assert!(graceful.wait_for_log("ready", Duration::from_secs(10)));
        graceful.sigterm();
        let status = graceful
            .wait_exit(Duration::from_secs(10))
            .expect("exits on SIGTERM");
        assert!(status.success(), "{status:?}");
        assert!(graceful.log_contents().contains("bye"));

        let mut stubborn = sh("trap '' TERM; while :; do sleep 0.05; done", "stubborn");
        assert!(stubborn.wait_exit(Duration::from_millis(100)).is_none());
        stubborn.sigkill();
        let status = stubborn
            .wait_exit(Duration::from_secs(10))
            .expect("dies on SIGKILL");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }
}
