//! What HTTP and gRPC share: model lookup, option validation, exit-rule resolution, classification
//! and the admin exit-policy change.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::config::ServeConfig;
use crate::engine::{Job, RequestRule, StepTrace};
use crate::error::{Error, Result};
use crate::exit::RuleKind;
use crate::metrics::Metrics;
use crate::model::{ExitPolicy, LoadedModel};
use crate::preprocess;
use crate::state::StateStore;

pub struct AppState {
    pub cfg: ServeConfig,
    pub models: BTreeMap<String, Arc<LoadedModel>>,
    pub default_model: String,
    pub metrics: Arc<Metrics>,
    pub admin_token: Option<String>,
    pub store: StateStore,
    pub ready: AtomicBool,
    pub draining: AtomicBool,
    pub in_flight: AtomicUsize,
    /// Admission of HTTP requests (`--max-http-in-flight`).
    pub http_permits: Arc<tokio::sync::Semaphore>,
    pub ort_library: PathBuf,
    pub started: Instant,
}

/// Per-request options, from the query string, JSON fields, multipart fields or gRPC.
#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClassifyOptions {
    /// Model name (default: the server's default model; on a named route, the same name).
    pub model: Option<String>,
    /// confidence | policy | fixed (default: the model's exit policy).
    pub rule: Option<String>,
    /// Confidence threshold in (0, 1].
    pub alpha: Option<f64>,
    /// Cap on timesteps (the count for `fixed`).
    pub max_timesteps: Option<u64>,
    /// Number of classes to return (default 5).
    pub top_k: Option<u64>,
    /// Return the score and prediction at every timestep.
    pub explain: Option<bool>,
    /// Per-request deadline in milliseconds (default `--request-timeout`).
    pub timeout_ms: Option<u64>,
}

pub const OPTION_NAMES: &str = "model, rule, alpha, max_timesteps, top_k, explain, timeout_ms";

impl ClassifyOptions {
    /// Sets one option from its text form (query string or multipart field).
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        fn num<T: std::str::FromStr>(key: &str, v: &str, what: &str) -> Result<T> {
            v.trim()
                .parse()
                .map_err(|_| Error::invalid(format!("option {key}={v:?} is not {what}")))
        }
        match key {
            "model" => self.model = Some(value.to_string()),
            "rule" => self.rule = Some(value.to_string()),
            "alpha" => self.alpha = Some(num(key, value, "a number in (0, 1]")?),
            "max_timesteps" => self.max_timesteps = Some(num(key, value, "a positive integer")?),
            "top_k" => self.top_k = Some(num(key, value, "a positive integer")?),
            "timeout_ms" => {
                self.timeout_ms = Some(num(key, value, "a positive integer (milliseconds)")?)
            }
            "explain" => {
                self.explain = Some(match value {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    _ => {
                        return Err(Error::invalid(format!(
                            "option explain={value:?}: accepted true or false"
                        )))
                    }
                })
            }
            other => {
                return Err(Error::invalid(format!(
                    "unknown option {other:?}; accepted: {OPTION_NAMES}"
                )));
            }
        }
        Ok(())
    }
}

pub enum Input {
    Image {
        bytes: Vec<u8>,
        hint: Option<image::ImageFormat>,
    },
    Tensor(Vec<f32>),
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClassScore {
    pub class_id: usize,
    pub label: String,
    pub probability: f64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Timings {
    pub queue_ms: f64,
    pub inference_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClassifyResult {
    pub model: String,
    pub version: String,
    pub class_id: usize,
    pub label: String,
    pub confidence: f64,
    pub top_k: Vec<ClassScore>,
    pub timesteps_used: usize,
    pub max_timesteps: usize,
    pub exit_rule: RuleKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    pub timings: Timings,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trajectory: Option<Vec<StepTrace>>,
    pub request_id: String,
}

/// The admin request body.
#[derive(Debug, Default, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExitPolicyUpdate {
    pub rule: Option<String>,
    pub alpha: Option<f64>,
    pub target_avg_timesteps: Option<f64>,
    pub max_accuracy_drop: Option<f64>,
    pub timesteps: Option<u64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExitPolicyView {
    pub model: String,
    pub rule: RuleKind,
    pub alpha: f64,
    pub timesteps: usize,
    /// What calibration.json (validation split) expects at this α.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_avg_timesteps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<ExitPolicy>,
}

fn check_alpha(alpha: f64) -> Result<f64> {
    if alpha.is_nan() || alpha <= 0.0 || alpha > 1.0 {
        return Err(Error::invalid(format!(
            "alpha {alpha} is out of range; accepted: 0 < alpha <= 1"
        )));
    }
    Ok(alpha)
}

impl AppState {
    pub fn model(&self, name: Option<&str>) -> Result<Arc<LoadedModel>> {
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

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
            && !self.draining.load(Ordering::SeqCst)
            && self
                .models
                .values()
                .all(|m| m.engine.ready.load(Ordering::SeqCst))
    }

    /// The rule this request runs under: its overrides on top of the model's current default.
    pub fn resolve_rule(&self, m: &LoadedModel, o: &ClassifyOptions) -> Result<RequestRule> {
        let t_max = m.manifest.timesteps;
        let policy = m.exit_policy();
        let kind = match &o.rule {
            Some(r) if !r.is_empty() => RuleKind::parse(r).map_err(Error::InvalidRequest)?,
            _ => policy.rule,
        };
        let max_t = match o.max_timesteps {
            Some(t) if t == 0 || t as usize > t_max => {
                return Err(Error::invalid(format!(
                    "max_timesteps {t} is out of range; model {} accepts 1..={t_max}",
                    m.manifest.name
                )))
            }
            Some(t) => Some(t as usize),
            None => None,
        };
        if let Some(a) = o.alpha {
            check_alpha(a)?;
        }
        Ok(match kind {
            RuleKind::Confidence => RequestRule::Confidence {
                alpha: o.alpha.unwrap_or(policy.alpha),
                max_timesteps: max_t.unwrap_or(t_max),
            },
            RuleKind::Policy => {
                if !m.has_policy() {
                    return Err(Error::invalid(format!(
                        "model {} has no policy network (policy.onnx); accepted rules: confidence, fixed",
                        m.manifest.name
                    )));
                }
                RequestRule::Policy {
                    max_timesteps: max_t.unwrap_or(t_max),
                }
            }
            RuleKind::Fixed => RequestRule::Fixed {
                timesteps: max_t.unwrap_or(policy.timesteps.min(t_max)),
            },
        })
    }

    fn rule_label(&self, o: &ClassifyOptions, m: Option<&LoadedModel>) -> &'static str {
        match o.rule.as_deref().map(RuleKind::parse) {
            Some(Ok(k)) => k.as_str(),
            Some(Err(_)) => "invalid",
            None => m.map(|m| m.exit_policy().rule.as_str()).unwrap_or("none"),
        }
    }

    /// Classifies one input and records the request metrics, whatever the outcome.
    pub async fn classify(
        &self,
        input: Input,
        opts: ClassifyOptions,
        request_id: String,
        progress: Option<mpsc::UnboundedSender<StepTrace>>,
    ) -> Result<ClassifyResult> {
        let started = Instant::now();
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let model = self.model(opts.model.as_deref()).ok();
        let result = self
            .classify_inner(input, &opts, request_id, progress, started)
            .await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let model_label = model
            .as_ref()
            .map(|m| m.manifest.name.as_str())
            .unwrap_or("_unknown");
        let rule_label = match &result {
            Ok(r) => r.exit_rule.as_str(),
            Err(_) => self.rule_label(&opts, model.as_deref()),
        };
        let status = match &result {
            Ok(_) => "200".to_string(),
            Err(e) => e.http_status().as_u16().to_string(),
        };
        self.metrics
            .requests_total
            .with_label_values(&[model_label, rule_label, &status])
            .inc();
        if result.is_ok() {
            self.metrics
                .request_duration
                .with_label_values(&[model_label, rule_label])
                .observe(started.elapsed().as_secs_f64());
        }
        result
    }

    async fn classify_inner(
        &self,
        input: Input,
        opts: &ClassifyOptions,
        request_id: String,
        progress: Option<mpsc::UnboundedSender<StepTrace>>,
        started: Instant,
    ) -> Result<ClassifyResult> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(Error::Unavailable(
                "server is shutting down; retry on another replica".into(),
            ));
        }
        let m = self.model(opts.model.as_deref())?;
        if !m.engine.ready.load(Ordering::SeqCst) {
            return Err(Error::Unavailable(format!(
                "model {} is recovering from an engine failure",
                m.manifest.name
            )));
        }
        let rule = self.resolve_rule(&m, opts)?;
        let k = m.manifest.num_classes();
        let top_k = match opts.top_k {
            Some(0) => return Err(Error::invalid(format!("top_k must be in 1..={k}"))),
            Some(n) => (n as usize).min(k),
            None => 5.min(k),
        };
        let timeout = match opts.timeout_ms {
            Some(0) => return Err(Error::invalid("timeout_ms must be positive")),
            Some(ms) => Duration::from_millis(ms),
            None => Duration::from_secs_f64(self.cfg.request_timeout.max(0.001)),
        };
        let tensor = match input {
            Input::Tensor(t) => {
                preprocess::check_tensor(&t, &m.manifest.input)?;
                t
            }
            Input::Image { bytes, hint } => {
                let spec = m.manifest.input.clone();
                let max_pixels = self.cfg.max_image_pixels;
                if bytes.len() > 256 * 1024 {
                    tokio::task::spawn_blocking(move || {
                        preprocess::image_to_tensor(&bytes, hint, &spec, max_pixels)
                    })
                    .await
                    .map_err(|e| Error::internal(format!("preprocessing task: {e}")))??
                } else {
                    preprocess::image_to_tensor(&bytes, hint, &spec, max_pixels)?
                }
            }
        };
        let (tx, rx) = oneshot::channel();
        let now = Instant::now();
        m.engine.submit(Job {
            input: tensor,
            rule,
            explain: opts.explain.unwrap_or(false),
            deadline: now + timeout,
            enqueued: now,
            reply: tx,
            progress,
        })?;
        let outcome = rx
            .await
            .map_err(|_| Error::internal("the engine dropped the request"))??;
        let mut ranked: Vec<(usize, f64)> =
            outcome.probabilities.iter().copied().enumerate().collect();
        ranked.sort_by(|a, b| {
            b.1.partial_cmp(&a.1)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.0.cmp(&b.0))
        });
        let labels = &m.manifest.labels;
        let label = |i: usize| labels.get(i).cloned().unwrap_or_default();
        let max_timesteps = match outcome.rule {
            crate::exit::ExitRule::Confidence { max_timesteps, .. } => max_timesteps,
            crate::exit::ExitRule::Policy { timesteps }
            | crate::exit::ExitRule::Fixed { timesteps } => timesteps,
        };
        let alpha = match outcome.rule {
            crate::exit::ExitRule::Confidence { alpha, .. } => Some(alpha),
            _ => None,
        };
        Ok(ClassifyResult {
            model: m.manifest.name.clone(),
            version: m.manifest.version.clone(),
            class_id: outcome.class_id,
            label: label(outcome.class_id),
            confidence: outcome.confidence,
            top_k: ranked
                .iter()
                .take(top_k)
                .map(|(i, p)| ClassScore {
                    class_id: *i,
                    label: label(*i),
                    probability: *p,
                })
                .collect(),
            timesteps_used: outcome.timesteps_used,
            max_timesteps,
            exit_rule: outcome.rule.kind(),
            alpha,
            timings: Timings {
                queue_ms: outcome.queue.as_secs_f64() * 1e3,
                inference_ms: outcome.inference.as_secs_f64() * 1e3,
                total_ms: started.elapsed().as_secs_f64() * 1e3,
            },
            trajectory: if opts.explain.unwrap_or(false) {
                Some(outcome.trajectory)
            } else {
                None
            },
            request_id,
        })
    }

    /// Checks `Authorization: Bearer <token>` in constant time.
    pub fn authorize(&self, header: Option<&str>) -> Result<()> {
        use subtle::ConstantTimeEq;
        let Some(token) = &self.admin_token else {
            return Err(Error::Forbidden(
                "admin disabled: no admin token configured (set SEENN_ADMIN_TOKEN or --admin-token-file)".into(),
            ));
        };
        let given = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Error::Unauthenticated("missing `Authorization: Bearer <token>`".into())
            })?;
        let a = token.as_bytes();
        let b = given.trim().as_bytes();
        // Equal lengths are compared in constant time; a length mismatch fails without looking at
        // the bytes (it only reveals the length).
        let equal = a.len() == b.len() && bool::from(a.ct_eq(b));
        if equal {
            Ok(())
        } else {
            Err(Error::Unauthenticated("wrong admin token".into()))
        }
    }

    /// Exports the current default policy (α and what calibration expects of it) as gauges.
    pub fn publish_policy(&self, v: &ExitPolicyView) {
        self.metrics
            .exit_alpha
            .with_label_values(&[&v.model])
            .set(v.alpha);
        if let Some(avg) = v.expected_avg_timesteps {
            self.metrics
                .expected_avg_timesteps
                .with_label_values(&[&v.model])
                .set(avg);
        }
    }

    pub fn policy_view(&self, m: &LoadedModel, previous: Option<ExitPolicy>) -> ExitPolicyView {
        let p = m.exit_policy();
        let expected = m.calibration.as_ref().and_then(|c| c.expected_at(p.alpha));
        let (acc, avg) = match (p.rule, expected) {
            (RuleKind::Confidence, Some(r)) => (Some(r.accuracy), Some(r.avg_timesteps)),
            (RuleKind::Policy, _) => match m.calibration.as_ref().and_then(|c| c.policy.as_ref()) {
                Some(s) => (Some(s.accuracy), Some(s.avg_timesteps)),
                None => (None, None),
            },
            (RuleKind::Fixed, _) => (
                m.calibration
                    .as_ref()
                    .and_then(|c| c.accuracy_per_t.get(p.timesteps.saturating_sub(1)).copied()),
                Some(p.timesteps as f64),
            ),
            _ => (None, None),
        };
        ExitPolicyView {
            model: m.manifest.name.clone(),
            rule: p.rule,
            alpha: p.alpha,
            timesteps: p.timesteps,
            expected_accuracy: acc,
            expected_avg_timesteps: avg,
            previous,
        }
    }

    /// The admin change (HTTP PUT, gRPC SetExitPolicy): refused with 409 while
    /// `--exit-policy-file` manages the policies.
    pub fn set_exit_policy(&self, name: &str, u: ExitPolicyUpdate) -> Result<ExitPolicyView> {
        if let Some(file) = &self.cfg.exit_policy_file {
            return Err(Error::Conflict(crate::policy_file::managed_message(file)));
        }
        self.apply_exit_policy(name, u)
    }

    /// Validates, persists and applies a policy change (the admin change, and `policy_file`).
    pub fn apply_exit_policy(&self, name: &str, u: ExitPolicyUpdate) -> Result<ExitPolicyView> {
        let m = self.model(Some(name))?;
        let old = m.exit_policy();
        let mut new = old;
        if let Some(r) = &u.rule {
            new.rule = RuleKind::parse(r).map_err(Error::InvalidRequest)?;
        }
        if new.rule == RuleKind::Policy && !m.has_policy() {
            return Err(Error::invalid(format!(
                "model {name} has no policy network; accepted rules: confidence, fixed"
            )));
        }
        let targets = [
            u.alpha.is_some(),
            u.target_avg_timesteps.is_some(),
            u.max_accuracy_drop.is_some(),
        ];
        if targets.iter().filter(|x| **x).count() > 1 {
            return Err(Error::invalid(
                "give at most one of alpha, target_avg_timesteps, max_accuracy_drop",
            ));
        }
        if let Some(a) = u.alpha {
            new.alpha = check_alpha(a)?;
        }
        let calibration = || {
            m.calibration.as_ref().ok_or_else(|| {
                Error::invalid(format!(
                    "model {name} has no calibration.json; give alpha directly"
                ))
            })
        };
        if let Some(target) = u.target_avg_timesteps {
            if !(target.is_finite() && target >= 1.0) {
                return Err(Error::invalid("target_avg_timesteps must be a number >= 1"));
            }
            let row = calibration()?
                .alpha_for_avg_timesteps(target)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "no calibrated alpha reaches an average of {target} timesteps or fewer"
                    ))
                })?;
            new.alpha = row.alpha;
            new.rule = RuleKind::Confidence;
        }
        if let Some(drop) = u.max_accuracy_drop {
            if !(drop.is_finite() && (0.0..=1.0).contains(&drop)) {
                return Err(Error::invalid(
                    "max_accuracy_drop must be a fraction in [0, 1] (0.001 = 0.1 pp)",
                ));
            }
            let row = calibration()?
                .alpha_for_accuracy_drop(drop)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "no calibrated alpha stays within {drop} of full-T accuracy"
                    ))
                })?;
            new.alpha = row.alpha;
            new.rule = RuleKind::Confidence;
        }
        if let Some(t) = u.timesteps {
            if t == 0 || t as usize > m.manifest.timesteps {
                return Err(Error::invalid(format!(
                    "timesteps must be in 1..={}",
                    m.manifest.timesteps
                )));
            }
            new.timesteps = t as usize;
        }
        self.store
            .set(name, new)
            .map_err(|e| Error::internal(format!("cannot persist the exit policy: {e}")))?;
        m.set_exit_policy(new);
        let view = self.policy_view(&m, Some(old));
        // Both gauges: the drift alert compares traffic with the expectation at the new α.
        self.publish_policy(&view);
        tracing::info!(model = name, old = ?old, new = ?new, "exit policy changed");
        Ok(view)
    }
}
