//! The second plugin ABI: Redpanda Data Transforms, run unmodified.
//!
//! A Redpanda transform is a core WebAssembly module (built for
//! `wasm32-wasip1` with Redpanda's SDK) that imports `redpanda_transform`
//! and WASI preview 1 and exports `memory` and `_start`. This module gives
//! it what the Redpanda broker gives it (`src/v/wasm/` in
//! redpanda-data/redpanda: `transform_module.cc`, `wasi.cc`,
//! `wasmtime.cc`), byte for byte where the guest can see it:
//!
//! - `abi`: record payloads, write options, the batch header, the
//!   environment (pure functions, unit-tested);
//! - `wasi`: the broker's 44 WASI functions, most of them `ENOSYS`;
//! - `instance`: the host functions and the driver that suspends the
//!   guest's endless `_start` between batches (wasmtime async, a fiber per
//!   instance).
//!
//! The handler (`runtime::handler`) runs a transform like a component:
//! one instance per partition, kwasm's limits (memory, batch deadline,
//! output caps, log budget) and error policy (a trap fails the batch, which
//! is then re-run message by message so only the guilty message is
//! dead-lettered). How the semantics differ from the broker's:
//! `docs/redpanda-transforms.md`.
//!
//! Invariant: a module is accepted only when every import is one of the
//! functions here, so what uploads also links.

mod abi;
mod instance;
mod wasi;

use wasmtime::{Engine, ExternType, Linker, Module};

pub use abi::EnvError;
pub(crate) use abi::check_env;
pub(crate) use instance::{OutputLimit, RpInstance, RpState, Start, Stopped};

use super::ValidationError;

/// Whether a core module is a Redpanda transform: it imports the
/// transform ABI.
pub(crate) fn is_transform(module: &Module) -> bool {
    module.imports().any(|i| i.module() == instance::MODULE)
}

/// The one linker for transforms: the transform ABI and the broker's WASI.
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<RpState>> {
    let mut linker = Linker::new(engine);
    instance::add_to_linker(&mut linker)?;
    wasi::add_to_linker(engine, &mut linker)?;
    Ok(linker)
}

/// Names every import of `module` the broker would not provide, and the
/// exports a transform needs; type mismatches are left to the linker,
/// whose message names the function and both types.
pub(crate) fn check_module(module: &Module) -> Result<(), ValidationError> {
    let unknown: Vec<String> = module
        .imports()
        .filter(|i| {
            let provided = match i.module() {
                instance::MODULE => instance::FUNCTIONS.contains(&i.name()),
                wasi::MODULE => wasi::provides(i.name()),
                _ => false,
            };
            !provided || !matches!(i.ty(), ExternType::Func(_))
        })
        .map(|i| format!("`{}.{}`", i.module(), i.name()))
        .collect();
    if !unknown.is_empty() {
        return Err(ValidationError::WrongWorld(format!(
            "the Redpanda transform imports {}, which neither Redpanda nor kwasm provides \
             (allowed: the `{}` functions and Redpanda's WASI preview 1 subset)",
            unknown.join(", "),
            instance::MODULE
        )));
    }
    for (name, want) in [("memory", "a memory"), ("_start", "a function")] {
        let ok = match module.get_export(name) {
            Some(ExternType::Memory(_)) => name == "memory",
            Some(ExternType::Func(_)) => name == "_start",
            _ => false,
        };
        if !ok {
            return Err(ValidationError::WrongWorld(format!(
                "the Redpanda transform does not export `{name}` as {want}: build it as a \
                 binary (`fn main`) for wasm32-wasip1 with redpanda-transform-sdk"
            )));
        }
    }
    Ok(())
}
