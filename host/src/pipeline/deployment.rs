//! What a pipeline runs right now: plugin, its config and limits. Replaced
//! as a whole by a hot deploy; each partition worker compares the cell's
//! generation with its own at every batch boundary and switches there, so a
//! partition's messages before the switch all ran on the old version and
//! every later one on the new, with no rebalance and nothing lost or redone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::runtime::{CompiledPlugin, Limits, PluginError, PluginHandler};

/// One deployable unit.
#[derive(Debug)]
pub struct Deployment {
    /// The compiled plugin.
    pub plugin: Arc<CompiledPlugin>,
    /// Registry version, when it came from the registry.
    pub version: Option<u32>,
    /// Configuration for `init`.
    pub config: Vec<(String, String)>,
    /// Limits.
    pub limits: Limits,
}

impl Deployment {
    /// A new instance of this deployment, initialised now (waiting for the
    /// host's plugin memory budget if need be).
    pub fn handler(&self) -> Result<PluginHandler, PluginError> {
        self.plugin
            .handler(self.config.clone(), self.limits.clone())
    }

    /// A handler of this deployment that takes memory and instantiates only
    /// when its worker has a batch for it.
    pub fn idle_handler(&self) -> PluginHandler {
        self.plugin
            .idle_handler(self.config.clone(), self.limits.clone())
    }

    /// Whether `other` runs the same code with the same settings.
    pub fn same_as(&self, other: &Deployment) -> bool {
        self.plugin.digest() == other.plugin.digest()
            && self.config == other.config
            && self.limits == other.limits
    }
}

/// The current deployment of a pipeline and its generation.
#[derive(Debug)]
pub struct DeploymentCell {
    current: RwLock<Arc<Deployment>>,
    generation: AtomicU64,
}

impl DeploymentCell {
    /// A cell at generation 0.
    pub fn new(deployment: Deployment) -> Self {
        DeploymentCell {
            current: RwLock::new(Arc::new(deployment)),
            generation: AtomicU64::new(0),
        }
    }

    /// The deployment in force and its generation.
    pub fn current(&self) -> (Arc<Deployment>, u64) {
        let d = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (d, self.generation.load(Ordering::Acquire))
    }

    /// The generation in force (cheap: checked at every batch).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replaces the deployment; workers switch at their next batch.
    pub fn replace(&self, deployment: Deployment) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(deployment);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}
