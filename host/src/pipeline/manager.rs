//! [`PipelineManager`]: makes the running pipelines match the desired ones,
//! the config file's plus the registry's, every time the registry changes.
//!
//! Decisions, per pipeline name:
//! - desired and not running: start it;
//! - running, and only plugin or config changed: hot deploy (no rebalance);
//! - running, anything else changed (topics, group, batch...): restart it;
//! - running and no longer desired (deleted or paused): stop it (drain,
//!   commit, leave the group).
//!
//! A config-file pipeline wins over a registry pipeline of the same name:
//! the file is what the operator deployed the host with (GitOps); the API
//! refuses to change such a pipeline.
//!
//! A pipeline whose plugin cannot be resolved, compiled or initialised keeps
//! running its previous deployment (or does not start) and reports the error
//! through [`ManagerView`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use crate::config::PipelineSpec;
use crate::registry::{Registry, parse_plugin_ref};
use crate::runtime::{CompiledPlugin, Limits, Runtime};

use super::{Deployment, Pipeline, PipelineDeps, PipelineStatus};

/// What the admin API reads: running pipelines and per-pipeline errors.
#[derive(Clone, Default)]
pub struct ManagerView {
    inner: Arc<RwLock<ViewState>>,
}

#[derive(Default)]
struct ViewState {
    running: Vec<Arc<PipelineStatus>>,
    errors: BTreeMap<String, String>,
    config_names: Vec<String>,
    reconciled: bool,
}

impl ManagerView {
    /// Statuses of the pipelines running on this host.
    pub fn running(&self) -> Vec<Arc<PipelineStatus>> {
        self.read().running.clone()
    }

    /// Pipelines that could not be (re)deployed, with why.
    pub fn errors(&self) -> BTreeMap<String, String> {
        self.read().errors.clone()
    }

    /// Names declared in the host's config file.
    pub fn config_names(&self) -> Vec<String> {
        self.read().config_names.clone()
    }

    /// Whether the manager has acted on the registry at least once.
    pub fn reconciled(&self) -> bool {
        self.read().reconciled
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ViewState> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ViewState> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }
}

struct Running {
    spec: PipelineSpec,
    pipeline: Pipeline,
}

/// Owns the running pipelines of this host.
pub struct PipelineManager {
    runtime: Runtime,
    registry: Option<Registry>,
    deps: PipelineDeps,
    config_pipelines: Vec<PipelineSpec>,
    default_limits: Limits,
    running: HashMap<String, Running>,
    view: ManagerView,
}

impl PipelineManager {
    /// A manager; nothing runs until [`PipelineManager::reconcile`].
    pub fn new(
        runtime: Runtime,
        registry: Option<Registry>,
        deps: PipelineDeps,
        config_pipelines: Vec<PipelineSpec>,
        default_limits: Limits,
    ) -> Self {
        let view = ManagerView::default();
        view.write().config_names = config_pipelines.iter().map(|p| p.name.clone()).collect();
        PipelineManager {
            runtime,
            registry,
            deps,
            config_pipelines,
            default_limits,
            running: HashMap::new(),
            view,
        }
    }

    /// The view for the admin API.
    pub fn view(&self) -> ManagerView {
        self.view.clone()
    }

    /// Reconciles now, then after every registry change, until `stop`
    /// resolves; then stops every pipeline gracefully.
    /// Follows the registry until `stop` is cancelled, then stops every
    /// pipeline (each drains and commits). `stop` is the parent of the
    /// pipelines' tokens (`PipelineDeps::cancel`), so their workers stop
    /// taking batches at once.
    pub async fn run(mut self, stop: tokio_util::sync::CancellationToken) {
        let mut changes = self.registry.as_ref().map(Registry::subscribe);
        let stop = stop.cancelled_owned();
        tokio::pin!(stop);
        loop {
            if self.registry.as_ref().is_none_or(Registry::caught_up) {
                self.reconcile().await;
            }
            tokio::select! {
                _ = &mut stop => break,
                changed = async { match &mut changes { Some(c) => c.changed().await.is_ok(), None => std::future::pending().await } } => {
                    if !changed { changes = None; }
                }
            }
        }
        let all: Vec<String> = self.running.keys().cloned().collect();
        self.stop_many(all).await;
    }

    /// One pass of the rules in the module docs.
    pub async fn reconcile(&mut self) {
        let desired = self.desired();
        let mut errors = BTreeMap::new();
        let mut to_stop = Vec::new();
        for name in self.running.keys() {
            if !desired.contains_key(name) {
                to_stop.push(name.clone());
            }
        }
        self.stop_many(to_stop).await;

        for (name, spec) in desired {
            let deployment = match self.resolve(&spec) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(pipeline = %name, error = %e, "cannot deploy pipeline");
                    errors.insert(name, e);
                    continue;
                }
            };
            let unchanged = match self.running.get(&name) {
                Some(r) if same_except_deployment(&r.spec, &spec) => Some(
                    r.pipeline
                        .status()
                        .deployment()
                        .current()
                        .0
                        .same_as(&deployment),
                ),
                _ => None,
            };
            // Only a deployment about to run is test-instantiated: a pass
            // that changes nothing costs no instance.
            if unchanged != Some(true)
                && let Err(e) = test_instantiate(&deployment).await
            {
                tracing::error!(pipeline = %name, error = %e, "cannot deploy pipeline");
                errors.insert(name, e);
                continue;
            }
            match (unchanged, self.running.get_mut(&name)) {
                (Some(same), Some(r)) => {
                    if !same {
                        r.pipeline.redeploy(deployment);
                    }
                    r.spec = spec;
                }
                (None, Some(_)) => {
                    tracing::info!(pipeline = %name, "pipeline definition changed: restarting it");
                    self.stop_many(vec![name.clone()]).await;
                    self.start(spec, deployment, &mut errors);
                }
                (_, None) => self.start(spec, deployment, &mut errors),
            }
        }
        let mut view = self.view.write();
        view.running = self
            .running
            .values()
            .map(|r| r.pipeline.status().clone())
            .collect();
        view.errors = errors;
        view.reconciled = true;
    }

    fn start(
        &mut self,
        spec: PipelineSpec,
        deployment: Deployment,
        errors: &mut BTreeMap<String, String>,
    ) {
        let name = spec.name.clone();
        match Pipeline::start(spec.clone(), deployment, &self.deps) {
            Ok(pipeline) => {
                self.running.insert(name, Running { spec, pipeline });
            }
            Err(e) => {
                tracing::error!(pipeline = %name, error = %e, "cannot start pipeline");
                errors.insert(name, e.to_string());
            }
        }
    }

    async fn stop_many(&mut self, names: Vec<String>) {
        let pipelines: Vec<Pipeline> = names
            .iter()
            .filter_map(|n| self.running.remove(n))
            .map(|r| r.pipeline)
            .collect();
        for p in &pipelines {
            p.begin_stop();
        }
        if !pipelines.is_empty() {
            let _ =
                tokio::task::spawn_blocking(move || pipelines.into_iter().for_each(Pipeline::join))
                    .await;
        }
    }

    /// Config-file pipelines, plus registry pipelines that are not paused
    /// and not shadowed by a config-file pipeline of the same name.
    fn desired(&self) -> BTreeMap<String, PipelineSpec> {
        let mut desired: BTreeMap<String, PipelineSpec> = self
            .config_pipelines
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect();
        if let Some(registry) = &self.registry {
            for stored in registry.read().pipelines() {
                if stored.paused || desired.contains_key(&stored.spec.name) {
                    continue;
                }
                desired.insert(stored.spec.name.clone(), stored.spec.clone());
            }
        }
        desired
    }

    /// Loads and compiles the pipeline's plugin (the caller test-
    /// instantiates it when it is about to run).
    fn resolve(&mut self, spec: &PipelineSpec) -> Result<Deployment, String> {
        let (name, version, bytes) = if spec.plugin.ends_with(".wasm") {
            let bytes = std::fs::read(&spec.plugin)
                .map_err(|e| format!("cannot read plugin {}: {e}", spec.plugin))?;
            let name = std::path::Path::new(&spec.plugin)
                .file_stem()
                .map_or("plugin".into(), |s| s.to_string_lossy().into_owned());
            (name, None, Arc::new(bytes))
        } else {
            let registry = self
                .registry
                .as_ref()
                .ok_or("registry plugins need the registry")?;
            let (name, version) = parse_plugin_ref(&spec.plugin)?;
            let state = registry.read();
            let v = state
                .plugin_version(name, version)
                .ok_or_else(|| format!("no plugin `{}` in the registry", spec.plugin))?;
            let bytes = state
                .blob(&v.digest)
                .ok_or_else(|| format!("plugin `{}` has no stored bytes", spec.plugin))?;
            (name.to_owned(), Some(v.version), bytes)
        };
        let plugin = self.compile(&name, &bytes)?;
        Ok(Deployment {
            plugin,
            version,
            config: spec
                .config
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            limits: spec
                .limits
                .clone()
                .unwrap_or_else(|| self.default_limits.clone()),
            outputs: std::iter::once(&spec.output)
                .chain(&spec.extra_outputs)
                .cloned()
                .collect(),
        })
    }

    /// The runtime shares compiled code in memory while a deployment holds
    /// it, and frees it with the last one (no cache of our own to evict).
    fn compile(&mut self, name: &str, bytes: &[u8]) -> Result<Arc<CompiledPlugin>, String> {
        self.runtime
            .load(name, bytes)
            .map_err(|e| format!("plugin `{name}`: {e}"))
    }
}

/// Whether two specs differ at most in what a hot deploy changes.
fn same_except_deployment(a: &PipelineSpec, b: &PipelineSpec) -> bool {
    let strip = |s: &PipelineSpec| PipelineSpec {
        plugin: String::new(),
        config: BTreeMap::new(),
        limits: None,
        ..s.clone()
    };
    strip(a) == strip(b)
}

/// Instantiates and initialises `deployment` once, off the async workers,
/// and drops the instance: a deployment whose plugin cannot start is
/// refused before it replaces a running one. Off the workers because init
/// runs guest code for as long as its deadline allows, and because a guest
/// writing to stdout or stderr there (a Rust panic message on its way to a
/// trap) flushes through wasmtime-wasi, which blocks on the tokio runtime
/// and panics when called on one of its workers: that panic took the
/// manager's task down with it, and no later deploy was ever applied.
async fn test_instantiate(deployment: &Deployment) -> Result<(), String> {
    let candidate = deployment.clone();
    match tokio::task::spawn_blocking(move || candidate.handler().map(drop)).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(format!("the test instantiation failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PipelineSpec {
        PipelineSpec {
            name: "p".into(),
            plugin: "tag@1".into(),
            config: BTreeMap::from([("tag".into(), "v1".into())]),
            inputs: vec!["in".into()],
            input_regex: None,
            output: "out".into(),
            group_id: None,
            dead_letter_topic: None,
            retry: Default::default(),
            batch: Default::default(),
            limits: None,
            ..PipelineSpec::default()
        }
    }

    #[test]
    fn plugin_and_config_changes_are_hot_deploys() {
        let a = spec();
        let b = PipelineSpec {
            plugin: "tag@2".into(),
            config: BTreeMap::new(),
            ..spec()
        };
        assert!(same_except_deployment(&a, &b));
    }

    #[test]
    fn topic_or_batch_changes_restart() {
        let a = spec();
        assert!(!same_except_deployment(
            &a,
            &PipelineSpec {
                inputs: vec!["other".into()],
                ..spec()
            }
        ));
        let mut batch = spec();
        batch.batch.max_messages = 7;
        assert!(!same_except_deployment(&a, &batch));
    }
}
