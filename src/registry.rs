//! The model registry: every package under `--models`, each loaded, checked, warmed up and given
//! its engine, and the lookup by name that the service uses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::engine::{self, EngineConfig, EngineHandle};
use crate::error::Error;
use crate::exit::ExitPolicy;
use crate::graphs;
use crate::metrics::Metrics;
use crate::model::manifest::{Calibration, Manifest};
use crate::model::{err, invalid, read_calibration, read_manifest, LoadError, PackageError};
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

pub fn load_one(dir: &Path, opts: &LoadOptions<'_>) -> Result<LoadedModel, LoadError> {
    let manifest = read_manifest(dir)?;
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

/// Loads every package. Broken packages are returned as errors next to the models that loaded.
pub type Loaded = (BTreeMap<String, Arc<LoadedModel>>, Vec<LoadError>);

/// With `workers` 0 in the engine options, each model gets [`engine::default_workers`] for the
/// number of packages found.
pub fn load_all(root: &Path, opts: &LoadOptions<'_>) -> Result<Loaded, LoadError> {
    let mut models = BTreeMap::new();
    let mut errors = Vec::new();
    let dirs = package_dirs(root)?;
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
    for dir in dirs {
        match load_one(&dir, opts) {
            Ok(m) => {
                let name = m.manifest.name.clone();
                match models.entry(name) {
                    std::collections::btree_map::Entry::Occupied(o) => errors.push(invalid(
                        &dir.join("manifest.json"),
                        format!("a second model named {:?}", o.key()),
                    )),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(Arc::new(m));
                    }
                }
            }
            Err(e) => errors.push(e),
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
    models: BTreeMap<String, Arc<LoadedModel>>,
    default_model: String,
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
            models,
            default_model,
        })
    }

    /// The model `name` names, or the default one when `name` is absent or empty.
    pub fn get(&self, name: Option<&str>) -> Result<Arc<LoadedModel>, Error> {
        let name = name
            .filter(|n| !n.is_empty())
            .unwrap_or(&self.default_model);
        self.models.get(name).cloned().ok_or_else(|| {
            Error::ModelNotFound(format!(
                "model {name:?} not found; served models: {}",
                self.models.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    pub fn models(&self) -> impl Iterator<Item = &Arc<LoadedModel>> {
        self.models.values()
    }

    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    /// Whether every model's engine serves.
    pub fn all_ready(&self) -> bool {
        self.models.values().all(|m| m.engine.is_ready())
    }
}
