//! kwasm host: runs WebAssembly plugins over Kafka consumer groups.
//!
//! - [`runtime`]: the wasmtime engine, plugin validation, limits, instances.
//! - [`kafka`]: client settings, the output producer, offset tracking.
//! - [`pipeline`]: per-pipeline consumer thread and per-partition workers.
//! - [`admin`]: the HTTP API.
//! - [`config`]: the configuration file.
//! - [`topics`]: topic names, and which topics a pipeline may write (the
//!   data plane / control plane boundary).
//!
//! See DESIGN.md at the repository root for how a record flows from fetch to
//! commit and who owns which state.

pub mod admin;
pub mod config;
pub mod dev;
pub mod kafka;
pub mod logs;
pub mod metrics_names;
pub mod pipeline;
pub mod registry;
pub mod runtime;
pub mod serve;
pub mod topics;
