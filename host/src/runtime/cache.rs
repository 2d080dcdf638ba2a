//! On-disk cache of compiled plugins, so a restarted host does not recompile.
//!
//! Entries are keyed by the component's sha256 and the engine's
//! compatibility hash (which covers the wasmtime version and every setting
//! that changes generated code). A stale or corrupt entry fails to
//! deserialize and is simply recompiled and overwritten.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

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

    /// The component for `bytes`: from the cache when present, else freshly
    /// compiled, along with the compiled artifact to [`Self::store`] once the
    /// caller has validated it.
    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        digest: &str,
        bytes: &[u8],
    ) -> Result<(Component, Option<Vec<u8>>), ValidationError> {
        let Some(path) = self.path(digest) else {
            return Ok((compile(engine, bytes)?, None));
        };
        if path.exists() {
            // SAFETY: the file was written by `Engine::precompile_component`
            // of an engine with the same compatibility hash (it is in the
            // name), in a directory owned by this host. wasmtime still checks
            // the header and refuses an incompatible artifact.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, None)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable compile cache entry")
                }
            }
        }
        let compiled = engine
            .precompile_component(bytes)
            .map_err(|e| ValidationError::Compile(format!("{e:#}")))?;
        // SAFETY: `compiled` was just produced by this engine.
        let component = unsafe { Component::deserialize(engine, &compiled) }
            .map_err(|e| ValidationError::Compile(format!("{e:#}")))?;
        Ok((component, Some(compiled)))
    }

    /// Writes a validated plugin's compiled code; failures only cost a
    /// recompile later, so they are logged, not returned.
    pub(crate) fn store(&self, digest: &str, compiled: &[u8]) {
        let (Some(dir), Some(path)) = (&self.dir, self.path(digest)) else {
            return;
        };
        if let Err(e) = write_atomically(dir, &path, compiled) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write compile cache entry");
        }
    }

    fn path(&self, digest: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(format!("{digest}-{}.cwasm", self.engine_key)))
    }
}

fn compile(engine: &Engine, bytes: &[u8]) -> Result<Component, ValidationError> {
    Component::new(engine, bytes).map_err(|e| ValidationError::Compile(format!("{e:#}")))
}

/// Write then rename, so a concurrent reader never sees half a file.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
