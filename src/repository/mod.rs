//! The model repository: what `--models` holds on disk, the state of every model and version
//! (READY, LOADING, UNAVAILABLE and why), and preparing a version to serve: its package loaded,
//! its engine started and warmed up, and its golden samples checked through that engine. Swapping
//! the prepared version in, with its exit policy, is the service's (`service::models`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::engine::{EngineConfig, Job, RequestRule};
use crate::error::Chain;
use crate::metrics::Metrics;
use crate::model::layout::{self, Fingerprint, LayoutError, ModelDir, VersionDir};
use crate::model::LoadError;
use crate::registry::{self, LoadOptions, LoadedModel};
use crate::runtime::SessionOptions;

/// Who may change what is loaded (`--model-control`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelControl {
    /// Everything loads at start; load and unload calls are refused.
    None,
    /// Load and unload calls decide (at start: every model, or `--load-model`).
    Explicit,
    /// The folder decides: rescanned every `--repository-poll-secs`.
    Poll,
}

impl ModelControl {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelControl::None => "none",
            ModelControl::Explicit => "explicit",
            ModelControl::Poll => "poll",
        }
    }
}

/// A version's state in the index (the Open Inference Protocol's repository extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum VersionState {
    Ready,
    Loading,
    Unavailable,
}

impl VersionState {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Ready => "READY",
            VersionState::Loading => "LOADING",
            VersionState::Unavailable => "UNAVAILABLE",
        }
    }
}

/// One row of the repository index.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    #[schema(value_type = String, example = "READY")]
    pub state: VersionState,
    pub reason: String,
}

/// Why a version could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("no model named {name:?} in {}; models there: {available}", root.display())]
    NoSuchModel {
        name: String,
        root: PathBuf,
        available: String,
    },
    #[error("model {name:?} has no version {version:?} on disk; versions there: {available}")]
    NoSuchVersion {
        name: String,
        version: String,
        available: String,
    },
    #[error("the package failed to load")]
    Load(#[source] LoadError),
    #[error(
        "golden check failed: {file} should exit at step {expected_step} with class {expected_class}, \
         the new engine exits at step {step} with class {class}"
    )]
    GoldenMismatch {
        file: String,
        expected_step: usize,
        expected_class: usize,
        step: usize,
        class: usize,
    },
    #[error("golden check failed on {file}")]
    GoldenRun {
        file: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the load was interrupted: {0}")]
    Interrupted(String),
}

/// What the repository knows about one model besides the version serving.
#[derive(Debug, Default, Clone)]
struct Status {
    /// The version being prepared, if any.
    loading: Option<String>,
    /// Versions that failed to load, with the reason and the files as they were then (poll mode
    /// retries a version only once its files change).
    failed: BTreeMap<String, (String, Fingerprint)>,
    /// Unloaded by a call (or its folder went away in poll mode): the reason shown.
    unloaded: Option<String>,
    /// The version a load pinned; none: the latest.
    pinned: Option<String>,
}

/// Everything needed to load a package after start-up.
pub struct Loader {
    pub env: ort::environment::Environment,
    pub session: SessionOptions,
    pub engine: EngineConfig,
    pub metrics: Arc<Metrics>,
}

pub struct Repository {
    root: PathBuf,
    pub control: ModelControl,
    loader: Loader,
    status: Mutex<BTreeMap<String, Status>>,
    /// One load or unload at a time: two swaps of one model must not interleave.
    pub changes: tokio::sync::Mutex<()>,
}

impl Repository {
    pub fn new(root: &Path, control: ModelControl, loader: Loader) -> Self {
        Repository {
            root: root.to_path_buf(),
            control,
            loader,
            status: Mutex::new(BTreeMap::new()),
            changes: tokio::sync::Mutex::new(()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn status(&self) -> MutexGuard<'_, BTreeMap<String, Status>> {
        match self.status.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The models on disk by name, and the folders that cannot be read.
    pub fn scan(&self) -> Result<(BTreeMap<String, ModelDir>, Vec<LayoutError>), LayoutError> {
        layout::scan(&self.root)
    }

    /// The model folder for `name`.
    pub fn model_dir(&self, name: &str) -> Result<ModelDir, PrepareError> {
        let (models, errors) = self.scan()?;
        if let Some(m) = models.get(name) {
            return Ok(m.clone());
        }
        // A folder named like the model that could not be read: its error says why.
        let folder = self.root.join(name);
        if let Some(e) = errors
            .into_iter()
            .find(|e| e.folder().is_some_and(|f| f.starts_with(&folder)))
        {
            return Err(e.into());
        }
        Err(PrepareError::NoSuchModel {
            name: name.to_string(),
            root: self.root.clone(),
            available: list(models.keys()),
        })
    }

    /// The version a load of `model` serves: `requested` (which also pins it; "latest" unpins),
    /// else the pinned one, else the highest.
    pub fn choose<'a>(
        &self,
        model: &'a ModelDir,
        requested: Option<&str>,
    ) -> Result<&'a VersionDir, PrepareError> {
        let mut status = self.status();
        let st = status.entry(model.name.clone()).or_default();
        let (found, pin) = match requested {
            Some("latest") => (model.latest(), None),
            Some(v) => (model.version(v), Some(v.to_string())),
            None => (
                match &st.pinned {
                    Some(v) => model.version(v),
                    None => model.latest(),
                },
                st.pinned.clone(),
            ),
        };
        let found = found.ok_or_else(|| PrepareError::NoSuchVersion {
            name: model.name.clone(),
            version: requested
                .map(str::to_string)
                .or_else(|| st.pinned.clone())
                .unwrap_or_else(|| "latest".into()),
            available: list(model.versions.iter().map(|v| &v.version)),
        })?;
        // A pin is kept only once the version it names exists.
        st.pinned = pin;
        Ok(found)
    }

    pub fn pinned(&self, name: &str) -> Option<String> {
        self.status().get(name).and_then(|s| s.pinned.clone())
    }

    /// Loads `version` of `name`, starts its engine (warmed up) and checks its golden samples
    /// through it. Blocking work runs on tokio's blocking pool. Marks the version LOADING while
    /// it runs, and UNAVAILABLE with the reason when it fails.
    pub async fn prepare(
        &self,
        name: &str,
        version: &VersionDir,
    ) -> Result<(Arc<LoadedModel>, usize), PrepareError> {
        self.status().entry(name.to_string()).or_default().loading = Some(version.version.clone());
        let result = self.prepare_inner(version).await;
        let mut status = self.status();
        let st = status.entry(name.to_string()).or_default();
        st.loading = None;
        match &result {
            Ok(_) => {
                st.failed.remove(&version.version);
                st.unloaded = None;
            }
            Err(e) => {
                st.failed.insert(
                    version.version.clone(),
                    (Chain(e).to_string(), layout::fingerprint(&version.dir)),
                );
            }
        }
        result
    }

    /// The model, and how many golden samples it passed.
    async fn prepare_inner(
        &self,
        version: &VersionDir,
    ) -> Result<(Arc<LoadedModel>, usize), PrepareError> {
        let (env, session, engine, metrics) = (
            self.loader.env.clone(),
            self.loader.session.clone(),
            self.loader.engine.clone(),
            self.loader.metrics.clone(),
        );
        let (dir, v) = (version.dir.clone(), version.version.clone());
        // Session creation and warm-up are seconds of CPU: off the async threads.
        let model = tokio::task::spawn_blocking(move || {
            let opts = LoadOptions {
                env: &env,
                session,
                engine,
                metrics,
            };
            registry::load_version(&dir, &v, &opts)
        })
        .await
        .map_err(|e| PrepareError::Interrupted(e.to_string()))?
        .map_err(PrepareError::Load)?;
        let model = Arc::new(model);
        let checked = golden_check(&model).await?;
        Ok((model, checked))
    }

    /// Whether poll mode should try `version` of `name`: not when it failed before with the same
    /// files.
    pub fn failed_unchanged(&self, name: &str, version: &VersionDir) -> bool {
        self.status()
            .get(name)
            .and_then(|s| s.failed.get(&version.version))
            .is_some_and(|(_, fp)| *fp == layout::fingerprint(&version.dir))
    }

    pub fn mark_unloaded(&self, name: &str, reason: &str) {
        self.status().entry(name.to_string()).or_default().unloaded = Some(reason.to_string());
    }

    /// Every model and version on disk with its state, given the versions serving now.
    pub fn index(&self, serving: &BTreeMap<String, String>) -> Vec<IndexEntry> {
        let (models, errors) = match self.scan() {
            Ok(x) => x,
            Err(e) => {
                return vec![IndexEntry {
                    name: String::new(),
                    version: String::new(),
                    state: VersionState::Unavailable,
                    reason: Chain(&e).to_string(),
                }]
            }
        };
        let status = self.status();
        let mut out = Vec::new();
        for (name, m) in &models {
            let st = status.get(name).cloned().unwrap_or_default();
            for v in &m.versions {
                let (state, reason) = if serving.get(name) == Some(&v.version) {
                    (VersionState::Ready, String::new())
                } else if st.loading.as_ref() == Some(&v.version) {
                    (VersionState::Loading, String::new())
                } else if let Some((why, _)) = st.failed.get(&v.version) {
                    (VersionState::Unavailable, why.clone())
                } else if let (Some(why), false) = (&st.unloaded, serving.contains_key(name)) {
                    (VersionState::Unavailable, why.clone())
                } else if serving.contains_key(name) {
                    (
                        VersionState::Unavailable,
                        format!("not serving: version {} is", serving[name]),
                    )
                } else {
                    (VersionState::Unavailable, "not loaded".to_string())
                };
                out.push(IndexEntry {
                    name: name.clone(),
                    version: v.version.clone(),
                    state,
                    reason,
                });
            }
        }
        // A model still serving whose folder is gone is listed too.
        for (name, version) in serving {
            if !models.contains_key(name) {
                out.push(IndexEntry {
                    name: name.clone(),
                    version: version.clone(),
                    state: VersionState::Ready,
                    reason: "its folder is gone from the repository".into(),
                });
            }
        }
        for e in errors {
            let name = e
                .folder()
                .and_then(|f| f.file_name())
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            out.push(IndexEntry {
                name,
                version: String::new(),
                state: VersionState::Unavailable,
                reason: Chain(&e).to_string(),
            });
        }
        out
    }
}

fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = names.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Runs the package's golden samples through `m`'s engine one at a time (so each runs alone, as
/// golden.json was computed) under the confidence rule at golden.json's α, and requires the
/// recorded exit step and class for each. A package without golden.json passes (and says so).
pub async fn golden_check(m: &LoadedModel) -> Result<usize, PrepareError> {
    let golden = match crate::model::read_golden(&m.dir) {
        Ok(Some(g)) => g,
        Ok(None) => {
            tracing::warn!(model = %m.manifest.name, dir = %m.dir.display(), "no golden.json: the load is not checked against reference outputs");
            return Ok(0);
        }
        Err(e) => return Err(PrepareError::Load(e)),
    };
    let t = m.manifest.timesteps;
    for s in &golden.samples {
        let run_err = |e: Box<dyn std::error::Error + Send + Sync>| PrepareError::GoldenRun {
            file: s.file.clone(),
            source: e,
        };
        let input = s
            .read_input(&m.dir, &m.manifest)
            .map_err(|e| run_err(Box::new(e)))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let rule = RequestRule::Confidence {
            alpha: golden.alpha,
            max_timesteps: t,
        };
        m.engine
            .submit(Job::new(
                input,
                rule,
                Instant::now() + Duration::from_secs(60),
                tx,
            ))
            .map_err(|e| run_err(Box::new(e)))?;
        let outcome = rx
            .await
            .map_err(|_| PrepareError::Interrupted("the engine stopped".into()))?
            .map_err(|e| run_err(Box::new(e)))?;
        if outcome.timesteps_used != s.exit_timestep || outcome.class_id != s.class_id {
            return Err(PrepareError::GoldenMismatch {
                file: s.file.clone(),
                expected_step: s.exit_timestep,
                expected_class: s.class_id,
                step: outcome.timesteps_used,
                class: outcome.class_id,
            });
        }
    }
    Ok(golden.samples.len())
}
