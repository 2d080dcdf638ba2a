//! Host bindings generated from the one WIT package in `guest-sdk/wit/`.
//!
//! `Borrowing` ownership lets the host pass a batch's buffers to the guest
//! straight from its own vectors, without building owned copies first.

wasmtime::component::bindgen!({
    world: "kwasm:plugin/plugin",
    path: "../guest-sdk/wit/0.1.0",
    ownership: Borrowing { duplicate_if_necessary: true },
});

pub use kwasm::plugin::log::Level;
#[cfg(test)]
pub use kwasm::plugin::types::MessageError;
pub use kwasm::plugin::types::{BatchResult, ErrorKind};
