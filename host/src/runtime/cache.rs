//! On-disk cache of compiled plugins, so a restarted host does not recompile.
//!
//! Entries are keyed by the component's sha256 and the engine's
//! compatibility hash (which covers the wasmtime version and every setting
//! that changes generated code). A stale or corrupt entry fails to
//! deserialize and is simply recompiled and overwritten.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;

use wasmtime::Engine;
use wasmtime::component::Component;

use super::ValidationError;

pub(crate) struct CompileCache {
    dir: Option<PathBuf>,
    engine_key: String,
}

impl CompileCache {
    pub(crate) fn new(dir: Option<PathBuf>, engine: &Engine) -> Self {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        CompileCache {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
        }
    }

    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        digest: &str,
        bytes: &[u8],
    ) -> Result<Component, ValidationError> {
        let Some(dir) = &self.dir else {
            return compile(engine, bytes);
        };
        let path = dir.join(format!("{digest}-{}.cwasm", self.engine_key));
        if path.exists() {
            // SAFETY: the file was written by `Engine::precompile_component`
            // of an engine with the same compatibility hash (it is in the
            // name), in a directory owned by this host. wasmtime still checks
            // the header and refuses an incompatible artifact.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok(component),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable compile cache entry"),
            }
        }
        let compiled = engine
            .precompile_component(bytes)
            .map_err(|e| ValidationError::Compile(format!("{e:#}")))?;
        if let Err(e) = write_atomically(dir, &path, &compiled) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write compile cache entry");
        }
        // SAFETY: `compiled` was just produced by this engine.
        unsafe { Component::deserialize(engine, &compiled) }
            .map_err(|e| ValidationError::Compile(format!("{e:#}")))
    }
}

fn compile(engine: &Engine, bytes: &[u8]) -> Result<Component, ValidationError> {
    Component::new(engine, bytes).map_err(|e| ValidationError::Compile(format!("{e:#}")))
}

/// Write then rename, so a concurrent reader never sees half a file.
fn write_atomically(dir: &PathBuf, path: &PathBuf, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
