//! A plugin's stdout and stderr, as a WASI output stream of the host's own
//! (synchronous: a write is accounted before the guest's call returns, so
//! the per-call log budget below is exact): each complete line goes to the
//! host's log
//! tagged with the plugin, and the last few KiB are kept so a trap error can
//! quote what the guest printed before dying (a Rust panic message, an
//! allocation failure). Writes never fail: a chatty plugin must not be able
//! to turn its own logging into a trap.
//!
//! The same [`LogBudget`] bounds these lines and the `log` import's: per
//! call, at most `max_log_lines` lines and `max_log_bytes` bytes reach the
//! host's log; the rest are dropped and counted, and the handler logs one
//! summary line for the call. The tail kept for trap messages is recorded
//! whatever the budget says (it is 4 KiB).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes one `check-write` permits: a guest writes in pieces of at most
/// this (it only sets the granularity; every byte is accepted).
const WRITE_PERMIT_BYTES: usize = 64 << 10;

/// Bytes of recent output kept for error messages.
const TAIL_BYTES: usize = 4096;
/// A line longer than this is logged in pieces (stdout) or cut (the `log`
/// import).
pub(crate) const MAX_LINE_BYTES: usize = 4096;

/// One guest output stream (stdout or stderr). Clones share the buffer.
#[derive(Clone)]
pub(crate) struct GuestOutput {
    inner: Arc<Mutex<OutputState>>,
}

struct OutputState {
    plugin: Arc<str>,
    stream: &'static str,
    partial_line: Vec<u8>,
    tail: Vec<u8>,
    budget: LogBudget,
}

/// Lines and bytes one call may still log, and what it had to drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogBudget {
    max_lines: usize,
    max_bytes: usize,
    lines: usize,
    bytes: usize,
    dropped: Dropped,
}

/// What a call logged beyond its budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Dropped {
    pub(crate) lines: u64,
    pub(crate) bytes: u64,
}

impl LogBudget {
    pub(crate) fn new(max_lines: usize, max_bytes: usize) -> Self {
        LogBudget {
            max_lines,
            max_bytes,
            lines: 0,
            bytes: 0,
            dropped: Dropped::default(),
        }
    }

    /// Whether a line of `len` bytes may be logged; counts it either way.
    fn admit(&mut self, len: usize) -> bool {
        if self.lines < self.max_lines && self.bytes + len <= self.max_bytes {
            self.lines += 1;
            self.bytes += len;
            return true;
        }
        self.dropped.lines += 1;
        self.dropped.bytes += len as u64;
        false
    }

    /// Ends a call: what was dropped, and a full budget for the next one.
    fn finish(&mut self) -> Dropped {
        self.lines = 0;
        self.bytes = 0;
        std::mem::take(&mut self.dropped)
    }
}

impl GuestOutput {
    pub(crate) fn new(plugin: Arc<str>, stream: &'static str, budget: LogBudget) -> Self {
        GuestOutput {
            inner: Arc::new(Mutex::new(OutputState {
                plugin,
                stream,
                partial_line: Vec::new(),
                tail: Vec::new(),
                budget,
            })),
        }
    }

    /// Whether the `log` import may emit a line of `len` bytes this call.
    pub(crate) fn admit_log_line(&self, len: usize) -> bool {
        self.lock().budget.admit(len)
    }

    /// Ends a call: logs what is left of a partial line (a guest that
    /// printed without a newline before returning) and returns what the
    /// call dropped, resetting the budget.
    pub(crate) fn finish_call(&self) -> Dropped {
        let mut state = self.lock();
        if !state.partial_line.is_empty() {
            state.emit_line();
        }
        state.budget.finish()
    }

    /// The last lines the guest wrote, trimmed, for an error message.
    pub(crate) fn recent(&self) -> String {
        String::from_utf8_lossy(&self.lock().tail).trim().to_owned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutputState> {
        // A poisoned lock only means a logging call panicked; the bytes are fine.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes bytes the guest wrote to stdout or stderr (Redpanda
    /// transforms' `fd_write` comes here directly).
    pub(crate) fn write_bytes(&self, buf: &[u8]) {
        self.write(buf);
    }

    fn write(&self, buf: &[u8]) {
        let mut state = self.lock();
        state.tail.extend_from_slice(buf);
        if state.tail.len() > TAIL_BYTES {
            let cut = state.tail.len() - TAIL_BYTES;
            state.tail.drain(..cut);
        }
        for &b in buf {
            if b == b'\n' || state.partial_line.len() >= MAX_LINE_BYTES {
                state.emit_line();
            }
            if b != b'\n' {
                state.partial_line.push(b);
            }
        }
    }
}

impl OutputState {
    fn emit_line(&mut self) {
        if self.budget.admit(self.partial_line.len()) {
            let line = String::from_utf8_lossy(&self.partial_line);
            tracing::info!(target: "kwasm::plugin", plugin = &*self.plugin, stream = self.stream, "{line}");
        }
        self.partial_line.clear();
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// What WASI p2 guests (all kwasm plugins) write through: synchronous, so
/// nothing is left in flight when a call returns.
impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        GuestOutput::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT_BYTES)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    /// Always ready: writes never wait.
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unbounded() -> LogBudget {
        LogBudget::new(usize::MAX, usize::MAX)
    }

    #[test]
    fn keeps_the_tail_and_partial_line() {
        let out = GuestOutput::new("p".into(), "stderr", unbounded());
        out.write(b"first line\nthread panicked at lib.rs:3:\n");
        out.write(b"boom");
        assert_eq!(
            out.recent(),
            "first line\nthread panicked at lib.rs:3:\nboom"
        );
    }

    #[test]
    fn tail_is_bounded() {
        let out = GuestOutput::new("p".into(), "stdout", unbounded());
        for _ in 0..10_000 {
            out.write(b"0123456789\n");
        }
        assert!(out.recent().len() <= TAIL_BYTES);
        assert!(out.recent().ends_with("0123456789"));
    }

    #[test]
    fn the_budget_admits_lines_and_bytes_up_to_its_limits_per_call() {
        let mut lines = LogBudget::new(2, 1000);
        assert!(lines.admit(10) && lines.admit(10));
        assert!(!lines.admit(1));
        assert_eq!(lines.finish(), Dropped { lines: 1, bytes: 1 });
        // A new call starts with the whole budget.
        assert!(lines.admit(10));
        let mut bytes = LogBudget::new(100, 25);
        assert!(bytes.admit(20));
        assert!(!bytes.admit(6), "would make 26 bytes");
        assert!(bytes.admit(5), "a shorter line still fits");
        assert_eq!(bytes.finish(), Dropped { lines: 1, bytes: 6 });
        assert_eq!(bytes.finish(), Dropped::default());
    }

    #[test]
    fn stdout_lines_beyond_the_budget_are_dropped_but_the_tail_is_kept() {
        let out = GuestOutput::new("p".into(), "output", LogBudget::new(3, 1 << 20));
        for i in 0..10 {
            out.write(format!("line {i}\n").as_bytes());
        }
        out.write(b"unterminated");
        assert_eq!(
            out.finish_call(),
            Dropped {
                lines: 8,
                bytes: 6 * 7 + 12
            }
        );
        assert!(
            out.recent().ends_with("line 9\nunterminated"),
            "{}",
            out.recent()
        );
        assert!(out.admit_log_line(5), "the next call has a fresh budget");
    }
}
