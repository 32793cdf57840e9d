//! Exit-policy admin: who may change a model's default policy, how an update is validated and
//! resolved through calibration.json, where it is persisted, and the gauges that publish it.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::{Chain, Error, Result};
use crate::exit::{AdaptiveAlpha, ExitPolicy, RuleKind};
use crate::metrics::Metrics;
use crate::model::manifest::{self, Setting};
use crate::registry::LoadedModel;
use crate::state::{StateError, StateStore};

/// Why a saved or adaptive policy cannot be put in force.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{}: the saved policy for {model} does not fit the model", path.display())]
    SavedDoesNotFit {
        path: std::path::PathBuf,
        model: String,
    },
    #[error("cannot persist the exit policy")]
    Persist(#[from] StateError),
}

/// The admin request body.
#[derive(Debug, Default, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExitPolicyUpdate {
    pub rule: Option<String>,
    pub alpha: Option<f64>,
    /// The learned rule's threshold in [0, 1] (models with exit.onnx).
    pub threshold: Option<f64>,
    /// The SEENN-II policy's per-action bias scale (calibration.json `policy.bias_sweep`; 0 is
    /// the exported policy, positive runs more timesteps).
    pub bias_scale: Option<f64>,
    /// Resolved through calibration for the policy's rule: the learned threshold sweep under
    /// `learned`, the policy's bias sweep under `policy`, else the α sweep (which then selects
    /// `confidence`).
    pub target_avg_timesteps: Option<f64>,
    /// Resolved like `target_avg_timesteps`: the lowest setting whose accuracy drop from full T
    /// stays within this fraction with 95% confidence (the drop plus 1.645 standard errors).
    pub max_accuracy_drop: Option<f64>,
    pub timesteps: Option<u64>,
    /// Adaptive α under load: an objective to switch it on (or change it), `null` to switch it
    /// off; absent keeps what is configured.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<AdaptiveObjective>)]
    pub adaptive: Option<Option<AdaptiveObjective>>,
    /// Shadow runs: the fraction in [0, 1] of default-policy requests that exit before the
    /// model's T and keep running to T after their answer, to count whether the early class equals
    /// the full-T class (`seenn_shadow_total`); 0 switches them off; absent keeps what is set.
    pub shadow_fraction: Option<f64>,
}

/// What an operator asks of adaptive α.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveObjective {
    /// p99 latency objective of default-policy requests, in milliseconds.
    pub p99_ms: f64,
    /// The most accuracy (fraction, validation split) α may be lowered to give up, with 95%
    /// confidence: the floor is the lowest calibrated α whose drop plus 1.645 standard errors
    /// stays within it.
    pub max_accuracy_drop: f64,
}

/// A field that is present (`Some`), possibly `null` (`Some(None)`), as opposed to absent (`None`).
fn present<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExitPolicyView {
    pub model: String,
    pub rule: RuleKind,
    pub alpha: f64,
    /// The learned rule's threshold (models with exit.onnx).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// The SEENN-II policy's per-action bias scale (models with policy.onnx).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bias_scale: Option<f64>,
    pub timesteps: usize,
    /// What calibration.json (validation split) expects of the rule in force at its setting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_avg_timesteps: Option<f64>,
    /// Adaptive α, when on: the objective, the configured α and the floor; `alpha` above is the
    /// α in force now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveAlpha>,
    /// Shadow runs: the fraction of early exits on the default policy that run on to T (0: off).
    pub shadow_fraction: f64,
    /// The fraction of shadow runs whose early class should equal the full-T class, from
    /// calibration.json's α sweep (validation split) at `alpha`: what `seenn_shadow_total`'s
    /// agree="true" share is compared with (SEENN-I only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_shadow_agreement: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<ExitPolicy>,
}

pub(crate) fn check_shadow_fraction(f: f64) -> Result<f64> {
    if !(0.0..=1.0).contains(&f) {
        return Err(Error::invalid(format!(
            "shadow_fraction {f} is out of range; accepted: 0 <= shadow_fraction <= 1 \
             (the fraction of early exits that run on to T; 0 = off, 0.01 = 1%)"
        )));
    }
    Ok(f)
}

pub(crate) fn check_alpha(alpha: f64) -> Result<f64> {
    if alpha.is_nan() || alpha <= 0.0 || alpha > 1.0 {
        return Err(Error::invalid(format!(
            "alpha {alpha} is out of range; accepted: 0 < alpha <= 1"
        )));
    }
    Ok(alpha)
}

/// An admin target that calibration.json resolves to a setting of the policy's rule.
#[derive(Debug, Clone, Copy)]
enum Target {
    AvgTimesteps(f64),
    AccuracyDrop(f64),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::AvgTimesteps(t) => write!(f, "reaches an average of {t} timesteps or fewer"),
            Target::AccuracyDrop(d) => write!(f, "stays within {d} of full-T accuracy"),
        }
    }
}

/// The setting an admin target resolves to under a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dial {
    Alpha,
    Threshold,
    BiasScale,
}

impl Dial {
    pub(crate) fn field(&self) -> &'static str {
        match self {
            Dial::Alpha => "alpha",
            Dial::Threshold => "threshold",
            Dial::BiasScale => "bias_scale",
        }
    }
}

/// Which dial a target moves under `rule`: the learned threshold, the policy's bias (when
/// calibration has its sweep), else α (the target then selects the confidence rule).
pub(crate) fn target_dial(m: &LoadedModel, rule: RuleKind) -> Dial {
    let has_bias_sweep = m
        .calibration
        .as_ref()
        .is_some_and(|c| !c.bias_sweep().is_empty());
    match rule {
        RuleKind::Learned => Dial::Threshold,
        RuleKind::Policy if has_bias_sweep => Dial::BiasScale,
        _ => Dial::Alpha,
    }
}

/// The row of a calibrated sweep that meets `target` (`full`: accuracy at T, over `samples`).
fn pick<R: Setting>(rows: &[R], full: f64, samples: usize, target: Target) -> Option<&R> {
    match target {
        Target::AvgTimesteps(t) => manifest::for_avg_timesteps(rows, t),
        Target::AccuracyDrop(d) => manifest::for_accuracy_drop(rows, full, d, samples),
    }
}

pub(crate) fn check_threshold(threshold: f64) -> Result<f64> {
    if !(0.0..=1.0).contains(&threshold) {
        return Err(Error::invalid(format!(
            "threshold {threshold} is out of range; accepted: 0 <= threshold <= 1"
        )));
    }
    Ok(threshold)
}

pub struct PolicyAdmin {
    admin_token: Option<String>,
    store: StateStore,
    metrics: Arc<Metrics>,
    /// Serialises read-modify-write of policies (admin requests and the adaptive controller).
    writing: Mutex<()>,
    /// `--exit-policy-file`: when set, the file is the policy and admin writes get 409.
    managed_by: Option<std::path::PathBuf>,
}

impl PolicyAdmin {
    pub fn new(
        admin_token: Option<String>,
        store: StateStore,
        metrics: Arc<Metrics>,
        managed_by: Option<std::path::PathBuf>,
    ) -> Self {
        PolicyAdmin {
            admin_token,
            store,
            metrics,
            writing: Mutex::new(()),
            managed_by,
        }
    }

    pub fn enabled(&self) -> bool {
        self.admin_token.is_some()
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

    /// Exports a policy view as gauges: the one place that publishes an exit policy. A view
    /// without an expectation removes the series, so no stale number outlives the policy it
    /// described.
    pub fn publish(&self, v: &ExitPolicyView) {
        self.metrics
            .exit_alpha
            .with_label_values(&[&v.model])
            .set(v.alpha);
        match v.threshold {
            Some(t) => self
                .metrics
                .exit_threshold
                .with_label_values(&[&v.model])
                .set(t),
            None => {
                let _ = self.metrics.exit_threshold.remove_label_values(&[&v.model]);
            }
        }
        match v.expected_avg_timesteps {
            Some(avg) => self
                .metrics
                .expected_avg_timesteps
                .with_label_values(&[&v.model])
                .set(avg),
            None => {
                let _ = self
                    .metrics
                    .expected_avg_timesteps
                    .remove_label_values(&[&v.model]);
            }
        }
        // One series per model, labelled with the rule in force: the old rule's goes first.
        for k in RuleKind::ALL {
            if Some(k) != v.expected_shadow_agreement.map(|_| v.rule) {
                let _ = self
                    .metrics
                    .shadow_expected_agreement
                    .remove_label_values(&[&v.model, k.as_str()]);
            }
        }
        if let Some(a) = v.expected_shadow_agreement {
            self.metrics
                .shadow_expected_agreement
                .with_label_values(&[&v.model, v.rule.as_str()])
                .set(a);
        }
    }

    /// At start-up: the policy saved for `m`, when there is one and it fits the model, then the
    /// gauges of whatever policy `m` now has.
    pub fn restore(&self, m: &LoadedModel) -> std::result::Result<(), PolicyError> {
        let name = &m.manifest.name;
        if let Some(p) = self.store.get(name) {
            if p.timesteps > m.manifest.timesteps || !m.serves(p.rule) {
                return Err(PolicyError::SavedDoesNotFit {
                    path: self.store.path().to_path_buf(),
                    model: name.clone(),
                });
            }
            m.set_exit_policy(p);
            tracing::info!(model = %name, policy = ?p, "restored exit policy");
        }
        self.publish(&Self::view(m, None));
        Ok(())
    }

    /// A new version of a model takes over its exit policy: the serving version's (`old`) when
    /// the labels and T are the same and the new version serves its rule, else the new manifest's
    /// default, persisted in place of the old one. Returns what happened, for the load's answer
    /// and the log.
    pub fn adopt(&self, old: Option<&LoadedModel>, new: &LoadedModel) -> String {
        let name = &new.manifest.name;
        let outcome = match old {
            None => match self.restore(new) {
                Ok(()) => "the saved or default policy".to_string(),
                Err(e) => format!("the default policy ({})", Chain(&e)),
            },
            Some(old) => {
                let p = old.exit_policy();
                let why_not = if old.manifest.labels != new.manifest.labels {
                    Some("labels changed".to_string())
                } else if old.manifest.timesteps != new.manifest.timesteps {
                    Some(format!(
                        "T changed {} -> {}",
                        old.manifest.timesteps, new.manifest.timesteps
                    ))
                } else if !new.serves(p.rule) {
                    Some(format!("the new version has no {} rule", p.rule.as_str()))
                } else {
                    None
                };
                match why_not {
                    None => {
                        new.set_exit_policy(p);
                        "carried over".to_string()
                    }
                    Some(why) => {
                        let fresh = new.exit_policy();
                        if let Err(e) = self.store.set(name, fresh) {
                            tracing::error!(model = %name, error = %Chain(&e), "cannot persist the reset exit policy");
                        }
                        tracing::warn!(model = %name, reason = %why, "exit policy reset to the new version's default");
                        format!("reset to the new version's default: {why}")
                    }
                }
            }
        };
        self.publish(&Self::view(new, None));
        outcome
    }

    /// `m`'s current default policy and what calibration expects of it.
    pub fn view(m: &LoadedModel, previous: Option<ExitPolicy>) -> ExitPolicyView {
        let p = m.exit_policy();
        let expected = m.calibration.as_ref().and_then(|c| c.expected_at(p.alpha));
        let (acc, avg) = match (p.rule, expected) {
            (RuleKind::Confidence, Some(r)) => (Some(r.accuracy), Some(r.avg_timesteps)),
            (RuleKind::Policy, _) => match m.calibration.as_ref().and_then(|c| c.policy.as_ref()) {
                Some(s) => match manifest::nearest(&s.bias_sweep, p.bias_scale.unwrap_or(0.0)) {
                    Some(r) => (Some(r.accuracy), Some(r.avg_timesteps)),
                    None => (Some(s.accuracy), Some(s.avg_timesteps)),
                },
                None => (None, None),
            },
            (RuleKind::Fixed, _) => (
                m.calibration
                    .as_ref()
                    .and_then(|c| c.accuracy_per_t.get(p.timesteps.saturating_sub(1)).copied()),
                Some(p.timesteps as f64),
            ),
            (RuleKind::Learned, _) => match (m.calibration.as_ref(), m.learned_threshold_in(&p)) {
                (Some(c), Some(t)) => match c.expected_at_threshold(t) {
                    Some(r) => (Some(r.accuracy), Some(r.avg_timesteps)),
                    None => (None, None),
                },
                _ => (None, None),
            },
            _ => (None, None),
        };
        let expected_shadow_agreement = match (p.rule, m.calibration.as_ref()) {
            (RuleKind::Confidence, Some(c)) => c.expected_shadow_agreement(p.alpha),
            (RuleKind::Learned, Some(c)) => m
                .learned_threshold_in(&p)
                .and_then(|t| c.expected_shadow_agreement_learned(t)),
            _ => None,
        };
        ExitPolicyView {
            model: m.manifest.name.clone(),
            rule: p.rule,
            alpha: p.alpha,
            threshold: m.learned_threshold_in(&p),
            bias_scale: m.has_policy().then(|| p.bias_scale.unwrap_or(0.0)),
            timesteps: p.timesteps,
            expected_accuracy: acc,
            expected_avg_timesteps: avg,
            adaptive: p.adaptive,
            shadow_fraction: p.shadow_fraction,
            expected_shadow_agreement,
            previous,
        }
    }

    /// The admin change (HTTP PUT, gRPC SetExitPolicy): refused with 409 while
    /// `--exit-policy-file` manages the policies.
    pub fn set(&self, m: &LoadedModel, u: ExitPolicyUpdate) -> Result<ExitPolicyView> {
        if let Some(file) = &self.managed_by {
            return Err(Error::Conflict(managed_message(file)));
        }
        self.apply(m, u)
    }

    /// Applies an update to `m`'s default policy: validated, resolved through calibration,
    /// persisted, then published (every gauge of the policy view) and logged.
    pub fn apply(&self, m: &LoadedModel, u: ExitPolicyUpdate) -> Result<ExitPolicyView> {
        let name = m.manifest.name.as_str();
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let old = m.exit_policy();
        let mut new = old;
        // Under adaptive α the dial in force moves; an update starts from the configured value.
        if let Some(a) = old.adaptive {
            match old.rule {
                RuleKind::Learned => new.threshold = Some(a.configured_alpha),
                _ => new.alpha = a.configured_alpha,
            }
        }
        update_rule(m, &u, &mut new)?;
        update_dial(m, &u, &mut new)?;
        if let Some(t) = u.timesteps {
            if t == 0 || t as usize > m.manifest.timesteps {
                return Err(Error::invalid(format!(
                    "timesteps must be in 1..={}",
                    m.manifest.timesteps
                )));
            }
            new.timesteps = t as usize;
        }
        if let Some(f) = u.shadow_fraction {
            new.shadow_fraction = check_shadow_fraction(f)?;
        }
        let objective = match u.adaptive {
            Some(o) => o,
            None => old.adaptive.map(|a| AdaptiveObjective {
                p99_ms: a.p99_ms,
                max_accuracy_drop: a.max_accuracy_drop,
            }),
        };
        new.adaptive = match objective {
            None => None,
            Some(o) => Some(adaptive_alpha(m, &new, o)?),
        };
        self.store
            .set(name, new)
            .map_err(|e| Error::internal_from("cannot persist the exit policy", e))?;
        m.set_exit_policy(new);
        let view = Self::view(m, Some(old));
        self.publish(&view);
        tracing::info!(model = name, old = ?old, new = ?new, "exit policy changed");
        Ok(view)
    }

    /// The adaptive controller's move: the dial in force (α, or the threshold under the learned
    /// rule) becomes `alpha`, as long as the adaptive
    /// configuration is still `expected` (an admin change in between wins). Persisted, published
    /// and logged like every policy change.
    pub fn apply_adaptive(
        &self,
        m: &LoadedModel,
        expected: &AdaptiveAlpha,
        alpha: f64,
        p99_ms: Option<f64>,
    ) -> std::result::Result<(), PolicyError> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let old = m.exit_policy();
        let learned = old.rule == RuleKind::Learned;
        let in_force = if learned {
            m.learned_threshold_in(&old).unwrap_or(alpha)
        } else {
            old.alpha
        };
        if old.adaptive.as_ref() != Some(expected) || in_force == alpha {
            return Ok(());
        }
        let new = if learned {
            ExitPolicy {
                threshold: Some(alpha),
                ..old
            }
        } else {
            ExitPolicy { alpha, ..old }
        };
        self.store.set(&m.manifest.name, new)?;
        m.set_exit_policy(new);
        self.publish(&Self::view(m, None));
        tracing::info!(
            model = %m.manifest.name,
            rule = old.rule.as_str(),
            from = in_force,
            to = alpha,
            p99_ms = p99_ms.unwrap_or(0.0),
            objective_ms = expected.p99_ms,
            "adaptive alpha moved"
        );
        Ok(())
    }
}

/// The update's rule, threshold and bias scale, each checked against what `m` serves.
fn update_rule(m: &LoadedModel, u: &ExitPolicyUpdate, new: &mut ExitPolicy) -> Result<()> {
    let name = m.manifest.name.as_str();
    if let Some(r) = &u.rule {
        new.rule = RuleKind::parse(r).map_err(Error::invalid)?;
    }
    if !m.serves(new.rule) {
        return Err(Error::invalid(format!(
            "model {name} cannot run rule {}; accepted rules: {}",
            new.rule.as_str(),
            m.accepted_rules()
        )));
    }
    if let Some(t) = u.threshold {
        if !m.has_learned() {
            return Err(Error::invalid(format!(
                "model {name} has no learned exit rule (exit.onnx); threshold does not apply"
            )));
        }
        new.threshold = Some(check_threshold(t)?);
    }
    if let Some(b) = u.bias_scale {
        if !m.has_policy() {
            return Err(Error::invalid(format!(
                "model {name} has no policy network; bias_scale does not apply"
            )));
        }
        if !b.is_finite() {
            return Err(Error::invalid("bias_scale must be a finite number"));
        }
        new.bias_scale = Some(b);
    }
    Ok(())
}

/// The update's α, or its target (average timesteps, accuracy drop) resolved through calibration
/// to the dial of the new rule; at most one of the three may be given.
fn update_dial(m: &LoadedModel, u: &ExitPolicyUpdate, new: &mut ExitPolicy) -> Result<()> {
    let dial = target_dial(m, new.rule);
    let dial_given = match dial {
        Dial::Alpha => u.alpha.is_some(),
        Dial::Threshold => u.threshold.is_some(),
        Dial::BiasScale => u.bias_scale.is_some(),
    };
    let targets = [
        dial_given,
        u.target_avg_timesteps.is_some(),
        u.max_accuracy_drop.is_some(),
    ];
    if targets.iter().filter(|x| **x).count() > 1 {
        return Err(Error::invalid(format!(
            "give at most one of {}, target_avg_timesteps, max_accuracy_drop (rule {} resolves targets to its {})",
            dial.field(),
            new.rule.as_str(),
            dial.field()
        )));
    }
    if let Some(a) = u.alpha {
        new.alpha = check_alpha(a)?;
    }
    let target = match (u.target_avg_timesteps, u.max_accuracy_drop) {
        (Some(t), _) if !(t.is_finite() && t >= 1.0) => {
            return Err(Error::invalid("target_avg_timesteps must be a number >= 1"));
        }
        (Some(t), _) => Target::AvgTimesteps(t),
        (None, Some(d)) if !(d.is_finite() && (0.0..=1.0).contains(&d)) => {
            return Err(Error::invalid(
                "max_accuracy_drop must be a fraction in [0, 1] (0.001 = 0.1 pp)",
            ));
        }
        (None, Some(d)) => Target::AccuracyDrop(d),
        (None, None) => return Ok(()),
    };
    let c = calibration(m)?;
    let full = c.accuracy_per_t.last().copied().unwrap_or(1.0);
    let missing = |what: &str| Error::invalid(format!("no calibrated {what} {target}"));
    match dial {
        Dial::Threshold => {
            let row = pick(c.threshold_sweep(), full, c.samples, target)
                .ok_or_else(|| missing("learned threshold"))?;
            new.threshold = Some(row.threshold);
        }
        Dial::BiasScale => {
            let row = pick(c.bias_sweep(), full, c.samples, target)
                .ok_or_else(|| missing("policy bias"))?;
            new.bias_scale = Some(row.bias_scale);
        }
        Dial::Alpha => {
            let row =
                pick(&c.alpha_sweep, full, c.samples, target).ok_or_else(|| missing("alpha"))?;
            new.alpha = row.alpha;
            new.rule = RuleKind::Confidence;
        }
    }
    Ok(())
}

/// `m`'s calibration, which targets and adaptive α need.
fn calibration(m: &LoadedModel) -> Result<&manifest::Calibration> {
    m.calibration.as_ref().ok_or_else(|| {
        Error::invalid(format!(
            "model {} has no calibration.json; give alpha directly",
            m.manifest.name
        ))
    })
}

/// Adaptive α for objective `o` under the `new` policy: the dial in force (α, or the threshold
/// under the learned rule) as configured, and the calibrated floor it may drop to.
fn adaptive_alpha(
    m: &LoadedModel,
    new: &ExitPolicy,
    o: AdaptiveObjective,
) -> Result<AdaptiveAlpha> {
    if !matches!(new.rule, RuleKind::Confidence | RuleKind::Learned) {
        return Err(Error::invalid(
            "adaptive alpha needs the confidence rule (it moves alpha) or the learned rule (it moves the threshold)",
        ));
    }
    if !(o.p99_ms.is_finite() && o.p99_ms > 0.0) {
        return Err(Error::invalid("adaptive.p99_ms must be a positive number"));
    }
    if !(o.max_accuracy_drop.is_finite() && (0.0..=1.0).contains(&o.max_accuracy_drop)) {
        return Err(Error::invalid(
            "adaptive.max_accuracy_drop must be a fraction in [0, 1] (0.005 = 0.5 pp)",
        ));
    }
    let c = calibration(m)?;
    let (configured, floor) = if new.rule == RuleKind::Learned {
        let configured = new
            .threshold
            .or(m.manifest.exit.default_threshold)
            .ok_or_else(|| Error::internal("the learned rule has no threshold"))?;
        let floor = c
            .threshold_for_accuracy_drop(o.max_accuracy_drop)
            .map_or(configured, |r| r.threshold.min(configured));
        (configured, floor)
    } else {
        let floor = c
            .alpha_for_accuracy_drop(o.max_accuracy_drop)
            .map_or(new.alpha, |r| r.alpha.min(new.alpha));
        (new.alpha, floor)
    };
    Ok(AdaptiveAlpha {
        p99_ms: o.p99_ms,
        max_accuracy_drop: o.max_accuracy_drop,
        configured_alpha: configured,
        floor_alpha: floor,
    })
}

/// The 409 answer to an admin change while `file` manages the policies.
pub fn managed_message(file: &std::path::Path) -> String {
    format!(
        "the exit policy is managed by {} (--exit-policy-file), the same file on every replica; \
         edit it (in Kubernetes: the ConfigMap seenn-exit-policies) and each server applies it within seconds",
        file.display()
    )
}
