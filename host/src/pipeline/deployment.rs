//! What a pipeline runs right now: plugin, its config and limits. Replaced
//! as a whole by a hot deploy; each partition worker compares the cell's
//! generation with its own at every batch boundary and switches there, so a
//! partition's messages before the switch all ran on the old version and
//! every later one on the new, with no rebalance and nothing lost or redone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::runtime::{CompiledPlugin, Limits, PluginError, PluginHandler};

/// One deployable unit.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// The compiled plugin.
    pub plugin: Arc<CompiledPlugin>,
    /// Registry version, when it came from the registry.
    pub version: Option<u32>,
    /// Configuration for `init`.
    pub config: Vec<(String, String)>,
    /// Limits.
    pub limits: Limits,
    /// The pipeline's declared outputs, `output` first then
    /// `extra_outputs`: a Redpanda transform's `REDPANDA_OUTPUT_TOPIC_<i>`
    /// (components ignore it).
    pub outputs: Vec<String>,
}

impl Deployment {
    /// A new instance of this deployment, initialised now (waiting for the
    /// host's plugin memory budget if need be).
    pub fn handler(&self) -> Result<PluginHandler, PluginError> {
        let mut handler = self.idle_handler();
        handler.start()?;
        Ok(handler)
    }

    /// A handler of this deployment that takes memory and instantiates only
    /// when its worker has a batch for it.
    pub fn idle_handler(&self) -> PluginHandler {
        self.plugin
            .idle_handler(self.config.clone(), self.limits.clone())
            .with_output_topics(self.outputs.clone())
    }

    /// Whether `other` runs the same code with the same settings.
    pub fn same_as(&self, other: &Deployment) -> bool {
        self.plugin.digest() == other.plugin.digest()
            && self.config == other.config
            && self.limits == other.limits
    }
}

/// The current deployment of a pipeline and its generation, held as one
/// value: a worker that read them separately could pair the old code with
/// the new generation across a concurrent replace, and would then never
/// switch (the bug this shape removes).
///
/// Generic only so the pairing can be tested without a compiled plugin.
#[derive(Debug)]
pub struct DeploymentCell<D = Deployment> {
    current: RwLock<(Arc<D>, u64)>,
    /// A copy of the generation for the per-batch check, which must not
    /// take the lock; `current` is the truth.
    generation: AtomicU64,
}

impl<D> DeploymentCell<D> {
    /// A cell at generation 0.
    pub fn new(deployment: D) -> Self {
        DeploymentCell {
            current: RwLock::new((Arc::new(deployment), 0)),
            generation: AtomicU64::new(0),
        }
    }

    /// The deployment in force and its generation, read together.
    pub fn current(&self) -> (Arc<D>, u64) {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        (guard.0.clone(), guard.1)
    }

    /// The generation in force (cheap: checked at every batch). It may lag
    /// a replace by an instant; [`current`](Self::current) never does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replaces the deployment; workers switch at their next batch.
    pub fn replace(&self, deployment: D) {
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        let generation = guard.1 + 1;
        *guard = (Arc::new(deployment), generation);
        self.generation.store(generation, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each value is the generation it is replaced at: a reader must never
    /// see one paired with another's generation.
    #[test]
    fn a_reader_never_pairs_one_deployment_with_another_generation() {
        let cell = Arc::new(DeploymentCell::new(0u64));
        let writer = {
            let cell = cell.clone();
            std::thread::spawn(move || {
                for g in 1..=20_000u64 {
                    cell.replace(g);
                }
            })
        };
        let mut seen = 0;
        while !writer.is_finished() || seen == 0 {
            let (d, g) = cell.current();
            assert_eq!(*d, g, "deployment {d} paired with generation {g}");
            assert!(
                cell.generation() >= g,
                "the cheap generation lags what was read"
            );
            seen += 1;
        }
        writer.join().expect("no panic");
        assert_eq!(cell.current(), (Arc::new(20_000), 20_000));
        assert_eq!(cell.generation(), 20_000);
    }
}
