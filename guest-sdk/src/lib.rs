//! Write kwasm plugins: Kafka message handlers that run as WebAssembly
//! components inside the kwasm host.
//!
//! A plugin is one plain function. The [`handler`] attribute turns it into the
//! component's exported batch function; the host calls it for every message of
//! the pipeline's input topics, in order per partition.
//!
//! ```no_run
//! use kwasm_guest::{handler, Error, Message, Output};
//!
//! /// Upper-cases every value.
//! #[handler]
//! fn handle(msg: &Message) -> Result<Output, Error> {
//!     let text = msg.value_str()?.to_uppercase();
//!     Ok(Output::forward(msg).with_value(text))
//! }
//! ```
//!
//! A handler returns `Result<T, Error>` where `T` is an [`Output`], an
//! `Option<Output>` (`None` drops the message), a `Vec<Output>`, or `()`
//! (drops it too). An [`Error`] is either [`Error::retryable`] (the host
//! retries the message with backoff) or [`Error::permanent`] (the host sends
//! it to the pipeline's dead-letter topic).
//!
//! A handler that needs configuration names an init function; its result is
//! handed to every call:
//!
//! ```no_run
//! use kwasm_guest::{handler, Config, Error, Message, Output};
//!
//! struct Settings { suffix: String }
//!
//! fn setup(config: &Config) -> Result<Settings, String> {
//!     Ok(Settings { suffix: config.require("suffix")?.to_owned() })
//! }
//!
//! #[handler(init = setup)]
//! fn handle(msg: &Message, settings: &Settings) -> Result<Output, Error> {
//!     let text = format!("{}{}", msg.value_str()?, settings.suffix);
//!     Ok(Output::forward(msg).with_value(text))
//! }
//! ```
//!
//! # Globals are a cache, not state
//!
//! The host may drop a plugin's instance between any two batches and build a
//! fresh one (calling `init` again): after any trap or limit hit, on a hot
//! deploy, when a partition moves to another host, and whenever the host's
//! plugin memory budget (`host.max_plugin_memory_bytes`) is short and another
//! partition waits for memory. So anything kept in a `static`, a
//! `thread_local!` or the init value must be something the plugin can
//! rebuild (a parsed config, a compiled regex, a lookup cache), never data a
//! later message depends on (counts, windows, "seen before" sets). State
//! that must survive belongs in Kafka: emit it as records.
//!
//! # Limits
//!
//! Each instance runs under the pipeline's limits: `memory_bytes` for all
//! its memories and tables together, a deadline per batch, caps on output
//! bytes and records per batch, and on log lines and bytes per batch (the
//! [`log`] macros and stdout/stderr together; lines beyond the cap are
//! dropped and counted by the host).
//!
//! Build with `cargo build --target wasm32-wasip2 --release`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component to deploy. On other
//! targets the export is compiled out, so `cargo test` runs a plugin's unit
//! tests natively (build messages with [`Message::builder`]).
#![deny(missing_docs)]

// Generated bindings name the SDK by its absolute path, from inside it too.
extern crate self as kwasm_guest;

mod config;
mod error;
pub mod json;
pub mod log;
mod message;
mod output;

#[doc(hidden)]
pub mod __private;

pub use config::Config;
pub use error::Error;
/// Turns a function into the plugin's message handler; see the crate docs.
pub use kwasm_guest_macros::handler;
pub use message::{Message, MessageBuilder};
pub use output::{IntoOutputs, Output};

/// Generated component-model bindings for the kwasm WIT contract. Not part of
/// the stable API: use [`handler`] instead.
#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "kwasm:plugin/plugin",
        path: "wit/0.1.0",
        pub_export_macro: true,
        export_macro_name: "export_plugin",
        default_bindings_module: "::kwasm_guest::bindings",
        runtime_path: "::kwasm_guest::__private::wit_bindgen::rt",
    });
}
