//! Models in and out of the running server: load (and hot swap), unload, the repository index, and
//! poll mode's rescans. A version is prepared beside the one serving (repository::prepare: loaded,
//! warmed up, golden-checked), takes over the model's exit policy, and is swapped in under the
//! registry's lock; requests in flight keep their `Arc` of the old version, whose engine drains and
//! frees its sessions when the last of them has answered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use super::Service;
use crate::error::{Chain, Error, Result};
use crate::metrics::ModelSeries;
use crate::registry::LoadedModel;
use crate::repository::{IndexEntry, ModelControl, PrepareError, VersionState};

/// The answer to a load.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LoadReport {
    pub model: String,
    /// The version serving now.
    pub version: String,
    /// The version it replaced, if one was serving.
    pub previous_version: Option<String>,
    /// Whether the model's exit policy carried over, or why it was reset.
    pub exit_policy: String,
    /// Golden samples checked through the new engine (0: the package has no golden.json).
    pub golden_checked: usize,
    /// From the start of the load to new requests going to the new version.
    pub duration_ms: f64,
}

impl From<PrepareError> for Error {
    fn from(e: PrepareError) -> Self {
        let message = Chain(&e).to_string();
        match e {
            PrepareError::NoSuchModel { .. } | PrepareError::NoSuchVersion { .. } => {
                Error::ModelNotFound(message)
            }
            PrepareError::Interrupted(_) => Error::Unavailable(message),
            _ => Error::InvalidRequest(message),
        }
    }
}

/// An optional JSON body (load, unload, index): empty is the default, anything else must parse.
pub fn optional_json<T: Default + serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid(format!("{what}: the body is not the expected JSON: {e}")))
}

impl Service {
    /// Refuses load and unload calls the control mode does not allow.
    pub fn check_model_control(&self, what: &str) -> Result<()> {
        match self.repository.control {
            ModelControl::Explicit => Ok(()),
            mode => Err(Error::Conflict(format!(
                "{what} is not allowed with --model-control {}: {}",
                mode.as_str(),
                match mode {
                    ModelControl::Poll => "the models folder decides what is loaded",
                    _ =>
                        "the models loaded at start are fixed; start with --model-control explicit",
                }
            ))),
        }
    }

    /// Loads `name` (the pinned or latest version, or `version`, which pins it) and swaps it in.
    pub async fn load_model(&self, name: &str, version: Option<&str>) -> Result<LoadReport> {
        let _one_at_a_time = self.repository.changes.lock().await;
        let started = Instant::now();
        let dir = self.repository.model_dir(name).inspect_err(|e| {
            self.metrics.model_loaded(name, false);
            tracing::error!(model = %name, error = %Chain(e), "model load failed");
        })?;
        let chosen = self.repository.choose(&dir, version)?.clone();
        tracing::info!(model = %name, version = %chosen.version, dir = %chosen.dir.display(), "loading model version");
        let (new, golden_checked) = match self.repository.prepare(name, &chosen).await {
            Ok(m) => m,
            Err(e) => {
                self.metrics.model_loaded(name, false);
                tracing::error!(model = %name, version = %chosen.version, error = %Chain(&e), "model load failed; the serving version (if any) keeps serving");
                return Err(e.into());
            }
        };
        let old = self
            .registry
            .get(Some(name))
            .ok()
            .filter(|m| m.manifest.name == name);
        let exit_policy = self.policies.adopt(old.as_deref(), &new);
        self.latency.ensure(name);
        let previous = self.registry.insert(new.clone());
        let elapsed = started.elapsed();
        self.metrics.model_loaded(name, true);
        self.metrics
            .serving(name, series(&new), previous.as_deref().map(series));
        self.metrics
            .model_swap_duration
            .with_label_values(&[name])
            .observe(elapsed.as_secs_f64());
        tracing::info!(
            model = %name,
            version = %new.manifest.version,
            previous = previous.as_ref().map(|m| m.manifest.version.as_str()).unwrap_or("none"),
            exit_policy = %exit_policy,
            swap_ms = elapsed.as_secs_f64() * 1e3,
            "model version serving"
        );
        if let Some(old) = previous {
            retire(old);
        }
        Ok(LoadReport {
            model: name.to_string(),
            version: new.manifest.version.clone(),
            previous_version: old.map(|m| m.manifest.version.clone()),
            exit_policy,
            golden_checked,
            duration_ms: elapsed.as_secs_f64() * 1e3,
        })
    }

    /// Stops serving `name`: new requests get 404, requests in flight finish.
    pub async fn unload_model(&self, name: &str, reason: &str) -> Result<()> {
        let _one_at_a_time = self.repository.changes.lock().await;
        let Some(old) = self.registry.remove(name) else {
            return Err(Error::ModelNotFound(format!(
                "model {name:?} is not loaded; loaded models: {}",
                self.registry.names().join(", ")
            )));
        };
        self.repository.mark_unloaded(name, reason);
        self.metrics.model_unloads.with_label_values(&[name]).inc();
        self.metrics.retire(name, series(&old));
        self.metrics.model_ready.with_label_values(&[name]).set(0);
        tracing::info!(model = %name, version = %old.manifest.version, reason, "model unloaded");
        retire(old);
        Ok(())
    }

    /// The repository index: every model and version on disk with its state.
    pub fn repository_index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let mut rows = self.repository.index(&self.registry.serving());
        if ready_only {
            rows.retain(|r| r.state == VersionState::Ready);
        }
        rows
    }
}

fn series(m: &LoadedModel) -> ModelSeries<'_> {
    ModelSeries {
        version: &m.manifest.version,
        timesteps: m.manifest.timesteps,
        provider: &m.provider,
    }
}

/// Lets the old version go: its engine stops when the last request holding it has answered.
/// Logged from a watcher so the operator sees when its memory is freed.
fn retire(old: Arc<LoadedModel>) {
    let (name, version) = (old.manifest.name.clone(), old.manifest.version.clone());
    let weak = Arc::downgrade(&old);
    drop(old);
    tokio::spawn(async move {
        let started = Instant::now();
        while weak.strong_count() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(model = %name, version = %version, drained_ms = started.elapsed().as_secs_f64() * 1e3, "old model version drained and freed");
    });
}

/// Poll mode: rescans the models folder every `interval`. A new or changed version that has been
/// complete and unchanged for one interval is loaded (swapped in); a model whose folder is gone is
/// unloaded. A version that failed is not retried until its files change.
pub async fn poll_repository(
    service: Arc<Service>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut seen: std::collections::BTreeMap<String, crate::model::layout::Fingerprint> =
        Default::default();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        let (models, errors) = match service.repository.scan() {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %Chain(&e), "cannot scan the models folder");
                continue;
            }
        };
        for e in &errors {
            tracing::debug!(error = %Chain(e), "repository folder not loadable");
        }
        let serving = service.registry.serving();
        for (name, dir) in &models {
            let Ok(chosen) = service.repository.choose(dir, None).cloned() else {
                continue;
            };
            let fp = crate::model::layout::fingerprint(&chosen.dir);
            let key = format!("{name}/{}", chosen.version);
            let quiet = seen.insert(key, fp.clone()).as_ref() == Some(&fp);
            let current = serving.get(name) == Some(&chosen.version)
                && service
                    .registry
                    .get(Some(name))
                    .is_ok_and(|m| m.fingerprint == fp);
            if current || !quiet || service.repository.failed_unchanged(name, &chosen) {
                continue;
            }
            // Errors are logged and shown in the index by load_model.
            let _ = service.load_model(name, None).await;
        }
        for name in serving.keys().filter(|n| !models.contains_key(*n)) {
            let _ = service
                .unload_model(name, "its folder is gone from the models folder")
                .await;
        }
    }
}
