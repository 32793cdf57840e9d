//! The model registry: the version of each model that serves, each loaded, checked, warmed up
//! and given its engine, and the lookup by name that the service uses. Versions are swapped in and
//! out while the server runs (`service::models`): a lookup clones the `Arc` of the version serving
//! at that moment, so a request keeps its version until it has answered.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::watch;

use crate::engine::{self, EngineConfig, EngineHandle};
use crate::error::Error;
use crate::exit::ExitPolicy;
use crate::graphs;
use crate::metrics::Metrics;
use crate::model::layout::{self, Fingerprint, LayoutError};
use crate::model::manifest::{Calibration, Manifest};
use crate::model::{err, read_calibration, read_manifest, LoadError, PackageError};
use crate::runtime::SessionOptions;

pub struct LoadedModel {
    pub manifest: Arc<Manifest>,
    pub calibration: Option<Calibration>,
    pub dir: PathBuf,
    pub engine: EngineHandle,
    pub provider: String,
    pub policy: RwLock<ExitPolicy>,
    /// The package's labelled sample images (`samples/<file>`, label), read once from golden.json.
    pub samples: Vec<(String, String)>,
    /// The package's files when it was loaded: poll mode reloads a version whose files changed.
    pub fingerprint: Fingerprint,
}

impl LoadedModel {
    pub fn exit_policy(&self) -> ExitPolicy {
        match self.policy.read() {
            Ok(p) => *p,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    pub fn set_exit_policy(&self, p: ExitPolicy) {
        match self.policy.write() {
            Ok(mut g) => *g = p,
            Err(poisoned) => *poisoned.into_inner() = p,
        }
    }

    pub fn has_policy(&self) -> bool {
        self.manifest.graphs.policy.is_some()
    }

    /// Whether the package has a learned exit rule (`exit.onnx`).
    pub fn has_learned(&self) -> bool {
        self.manifest.graphs.exit.is_some()
    }

    /// The rules this model serves, for error messages.
    pub fn accepted_rules(&self) -> String {
        crate::exit::RuleKind::ALL
            .iter()
            .filter(|k| self.serves(**k))
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether this model can run rule `k` (policy and learned need their graphs).
    pub fn serves(&self, k: crate::exit::RuleKind) -> bool {
        use crate::exit::RuleKind;
        match k {
            RuleKind::Policy => self.has_policy(),
            RuleKind::Learned => self.has_learned(),
            RuleKind::Confidence | RuleKind::Fixed => true,
        }
    }

    /// The learned rule's threshold under policy `p` (its own, else the manifest's default).
    pub fn learned_threshold_in(&self, p: &ExitPolicy) -> Option<f64> {
        p.threshold.or(self.manifest.exit.default_threshold)
    }
}

pub struct LoadOptions<'a> {
    pub env: &'a ort::environment::Environment,
    pub session: SessionOptions,
    pub engine: EngineConfig,
    pub metrics: Arc<Metrics>,
}

/// Folders under `root` that hold a `manifest.json`, sorted by name.
pub fn package_dirs(root: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let rd = std::fs::read_dir(root).map_err(|e| err(root, PackageError::ReadFolder(e)))?;
    let mut dirs: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("manifest.json").is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// Loads the package in `dir` as its manifest's version.
pub fn load_one(dir: &Path, opts: &LoadOptions<'_>) -> Result<LoadedModel, LoadError> {
    let version = read_manifest(dir)?.version;
    load_version(dir, &version, opts)
}

/// Loads the package in `dir` as version `version` (a numbered folder's name; the manifest's own
/// `version` for a one-package folder).
pub fn load_version(
    dir: &Path,
    version: &str,
    opts: &LoadOptions<'_>,
) -> Result<LoadedModel, LoadError> {
    let fingerprint = layout::fingerprint(dir);
    let mut manifest = read_manifest(dir)?;
    manifest.version = version.to_string();
    let calibration = read_calibration(dir, manifest.timesteps)?;
    // One set of sessions per worker: a session's `Run` is not shared between threads.
    let workers = match opts.engine.workers {
        0 => engine::default_workers(1, &opts.session.device),
        n => n,
    };
    let sessions = (0..workers)
        .map(|_| graphs::load_sessions(dir, &manifest, opts.env, &opts.session))
        .collect::<Result<Vec<_>, _>>()?;
    let policy = ExitPolicy {
        rule: manifest.exit.default_rule,
        alpha: manifest.exit.default_alpha,
        timesteps: manifest.timesteps,
        adaptive: None,
        threshold: manifest.exit.default_threshold,
        bias_scale: None,
        shadow_fraction: 0.0,
    };
    let samples = read_samples(dir, &manifest.labels);
    let manifest = Arc::new(manifest);
    let engine = engine::spawn(
        manifest.clone(),
        sessions,
        opts.engine.clone(),
        Arc::new(opts.metrics.for_model(&manifest.name, manifest.timesteps)),
    )
    .map_err(|e| err(dir, PackageError::Engine(e)))?;
    Ok(LoadedModel {
        provider: opts.session.device.provider_name(),
        manifest,
        calibration,
        dir: dir.to_path_buf(),
        engine,
        policy: RwLock::new(policy),
        samples,
        fingerprint,
    })
}

/// The samples golden.json lists (file name under `samples/`, label); none when it is absent or
/// unreadable (the samples are a convenience, not part of serving).
fn read_samples(dir: &Path, labels: &[String]) -> Vec<(String, String)> {
    let golden = match crate::model::read_golden(dir) {
        Ok(Some(g)) => g,
        Ok(None) => return Vec::new(),
        Err(e) => {
            tracing::warn!(
                "{}; the package's samples are not listed",
                crate::error::Chain(&e)
            );
            return Vec::new();
        }
    };
    golden
        .samples
        .into_iter()
        .filter_map(|s| {
            let file = s.file.strip_prefix("samples/")?.to_string();
            let label = labels.get(s.label)?.clone();
            Some((file, label))
        })
        .collect()
}

/// Loads every model's serving version (its latest). Broken models are returned as errors next
/// to the models that loaded.
pub type Loaded = (BTreeMap<String, Arc<LoadedModel>>, Vec<LayoutError>);

/// With `workers` 0 in the engine options, each model gets [`engine::default_workers`] for the
/// number of models loaded. `only`: the models to load (`--load-model`); none: every model.
pub fn load_all(
    root: &Path,
    opts: &LoadOptions<'_>,
    only: Option<&[String]>,
) -> Result<Loaded, LayoutError> {
    let (mut dirs, mut errors) = layout::scan(root)?;
    if let Some(only) = only {
        dirs.retain(|name, _| only.iter().any(|o| o == name));
        errors.retain(|e| {
            e.folder()
                .and_then(|f| f.file_name())
                .and_then(|n| n.to_str())
                .is_some_and(|n| only.iter().any(|o| o == n))
        });
    }
    let mut engine = opts.engine.clone();
    if engine.workers == 0 {
        engine.workers = engine::default_workers(dirs.len(), &opts.session.device);
    }
    let opts = &LoadOptions {
        env: opts.env,
        session: opts.session.clone(),
        engine,
        metrics: opts.metrics.clone(),
    };
    let mut models = BTreeMap::new();
    for (name, dir) in dirs {
        let Some(v) = dir.latest() else { continue };
        match load_version(&v.dir, &v.version, opts) {
            Ok(m) => {
                models.insert(name, Arc::new(m));
            }
            Err(e) => errors.push(e.into()),
        }
    }
    Ok((models, errors))
}

/// Why the served models cannot make a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("--default-model {0:?} is not among the loaded models")]
    UnknownDefault(String),
    #[error("no model to serve")]
    Empty,
}

/// The served models by name, and the one a request without a name goes to.
pub struct Registry {
    models: RwLock<BTreeMap<String, Arc<LoadedModel>>>,
    default_model: String,
    /// Bumped on every change of what serves (readiness watchers re-subscribe).
    changes: watch::Sender<u64>,
}

impl Registry {
    /// `default_model`: the name to use, else the first model by name.
    pub fn new(
        models: BTreeMap<String, Arc<LoadedModel>>,
        default_model: Option<&str>,
    ) -> Result<Self, RegistryError> {
        let default_model = match default_model {
            Some(d) if models.contains_key(d) => d.to_string(),
            Some(d) => return Err(RegistryError::UnknownDefault(d.to_string())),
            None => models.keys().next().cloned().ok_or(RegistryError::Empty)?,
        };
        Ok(Registry {
            models: RwLock::new(models),
            default_model,
            changes: watch::Sender::new(0),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<String, Arc<LoadedModel>>> {
        match self.models.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<String, Arc<LoadedModel>>> {
        match self.models.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The version of `name` serving now, or of the default model when `name` is absent or empty.
    pub fn get(&self, name: Option<&str>) -> Result<Arc<LoadedModel>, Error> {
        let name = name
            .filter(|n| !n.is_empty())
            .unwrap_or(&self.default_model);
        let models = self.read();
        models.get(name).cloned().ok_or_else(|| {
            Error::ModelNotFound(format!(
                "model {name:?} not found (not loaded); served models: {}",
                models.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// The versions serving now (a snapshot).
    pub fn models(&self) -> Vec<Arc<LoadedModel>> {
        self.read().values().cloned().collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// Model name → the version serving.
    pub fn serving(&self) -> BTreeMap<String, String> {
        self.read()
            .iter()
            .map(|(n, m)| (n.clone(), m.manifest.version.clone()))
            .collect()
    }

    /// Makes `m` the serving version of its model; returns the version it replaced.
    pub fn insert(&self, m: Arc<LoadedModel>) -> Option<Arc<LoadedModel>> {
        let old = self.write().insert(m.manifest.name.clone(), m);
        self.changes.send_modify(|g| *g += 1);
        old
    }

    /// Stops serving `name`; returns the version that served.
    pub fn remove(&self, name: &str) -> Option<Arc<LoadedModel>> {
        let old = self.write().remove(name);
        if old.is_some() {
            self.changes.send_modify(|g| *g += 1);
        }
        old
    }

    /// Changes whenever a version is swapped in or a model removed.
    pub fn watch_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    /// Whether every model's engine serves.
    pub fn all_ready(&self) -> bool {
        self.read().values().all(|m| m.engine.is_ready())
    }
}
