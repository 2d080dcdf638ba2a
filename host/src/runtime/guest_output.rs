//! A plugin's stdout and stderr: each complete line goes to the host's log
//! tagged with the plugin, and the last few KiB are kept so a trap error can
//! quote what the guest printed before dying (a Rust panic message, an
//! allocation failure). Writes never fail: a chatty plugin must not be able
//! to turn its own logging into a trap.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Bytes of recent output kept for error messages.
const TAIL_BYTES: usize = 4096;
/// A line longer than this is logged in pieces.
const MAX_LINE_BYTES: usize = 4096;

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
}

impl GuestOutput {
    pub(crate) fn new(plugin: Arc<str>, stream: &'static str) -> Self {
        GuestOutput {
            inner: Arc::new(Mutex::new(OutputState {
                plugin,
                stream,
                partial_line: Vec::new(),
                tail: Vec::new(),
            })),
        }
    }

    /// The last lines the guest wrote, trimmed, for an error message.
    pub(crate) fn recent(&self) -> String {
        String::from_utf8_lossy(&self.lock().tail).trim().to_owned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutputState> {
        // A poisoned lock only means a logging call panicked; the bytes are fine.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
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
        let line = String::from_utf8_lossy(&self.partial_line);
        tracing::info!(target: "kwasm::plugin", plugin = &*self.plugin, stream = self.stream, "{line}");
        self.partial_line.clear();
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
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

    #[test]
    fn keeps_the_tail_and_partial_line() {
        let out = GuestOutput::new("p".into(), "stderr");
        out.write(b"first line\nthread panicked at lib.rs:3:\n");
        out.write(b"boom");
        assert_eq!(
            out.recent(),
            "first line\nthread panicked at lib.rs:3:\nboom"
        );
    }

    #[test]
    fn tail_is_bounded() {
        let out = GuestOutput::new("p".into(), "stdout");
        for _ in 0..10_000 {
            out.write(b"0123456789\n");
        }
        assert!(out.recent().len() <= TAIL_BYTES);
        assert!(out.recent().ends_with("0123456789"));
    }
}
