//! Logging through the host's logger.
//!
//! The host tags every line with the plugin, topic and partition; the SDK
//! adds the offset of the message being handled. Use the macros:
//! `kwasm_guest::info!("dropped {} fields", n)`.
//!
//! Off wasm32 (native unit tests) lines go to stderr.

use std::cell::Cell;

/// How important a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation worth noting.
    Info,
    /// Something unexpected that the plugin handled.
    Warn,
    /// Something failed.
    Error,
}

thread_local! {
    static CURRENT_OFFSET: Cell<Option<i64>> = const { Cell::new(None) };
}

pub(crate) fn set_current_offset(offset: Option<i64>) {
    CURRENT_OFFSET.with(|c| c.set(offset));
}

/// Logs `message` at `level`.
pub fn log(level: Level, message: &str) {
    let offset = CURRENT_OFFSET.with(Cell::get);
    emit(level, offset, message);
}

#[cfg(target_arch = "wasm32")]
fn emit(level: Level, offset: Option<i64>, message: &str) {
    use crate::bindings::kwasm::plugin::log as wit;
    let level = match level {
        Level::Trace => wit::Level::Trace,
        Level::Debug => wit::Level::Debug,
        Level::Info => wit::Level::Info,
        Level::Warn => wit::Level::Warn,
        Level::Error => wit::Level::Error,
    };
    wit::log(level, offset, message);
}

#[cfg(not(target_arch = "wasm32"))]
fn emit(level: Level, offset: Option<i64>, message: &str) {
    match offset {
        Some(o) => eprintln!("[{level:?} offset={o}] {message}"),
        None => eprintln!("[{level:?}] {message}"),
    }
}

/// Logs at trace level, with `format!` arguments.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Trace, &::std::format!($($arg)*)) };
}

/// Logs at debug level, with `format!` arguments.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Debug, &::std::format!($($arg)*)) };
}

/// Logs at info level, with `format!` arguments.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Info, &::std::format!($($arg)*)) };
}

/// Logs at warn level, with `format!` arguments.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Warn, &::std::format!($($arg)*)) };
}

/// Logs at error level, with `format!` arguments.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Error, &::std::format!($($arg)*)) };
}
