//! kwasm host: runs WebAssembly plugins over Kafka consumer groups.
//!
//! - [`runtime`]: the wasmtime engine, plugin validation, limits, instances.
//!
//! See DESIGN.md at the repository root for how a record flows from fetch to
//! commit and who owns which state.

pub mod runtime;
