//! SEENN exit rules as pure functions over the running sum of per-timestep logits.
//!
//! Score (SEENN-I, as the official code): `max_k softmax(Z_t / temperature)_k` where `Z_t` is the
//! cumulative sum of the logits of steps 1..t, accumulated in f64 like the trainer. A request exits
//! when `score > alpha` (strict) and always at its last allowed timestep.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    Confidence,
    Policy,
    Fixed,
}

impl RuleKind {
    pub const ALL: [RuleKind; 3] = [RuleKind::Confidence, RuleKind::Policy, RuleKind::Fixed];

    pub fn as_str(&self) -> &'static str {
        match self {
            RuleKind::Confidence => "confidence",
            RuleKind::Policy => "policy",
            RuleKind::Fixed => "fixed",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "confidence" => Ok(RuleKind::Confidence),
            "policy" => Ok(RuleKind::Policy),
            "fixed" => Ok(RuleKind::Fixed),
            other => Err(format!(
                "unknown exit rule {other:?}; accepted: confidence, policy, fixed"
            )),
        }
    }
}

/// A model's default exit policy: what a request without overrides runs under.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExitPolicy {
    pub rule: RuleKind,
    pub alpha: f64,
    /// Timesteps for the `fixed` rule (and the cap for the others).
    pub timesteps: usize,
    /// When set, α follows load between `configured_alpha` and `floor_alpha`
    /// (see `service::adaptive`); `alpha` is then the α in force now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveAlpha>,
    /// Shadow runs: the fraction (0..=1) of default-policy requests that exit before the model's T
    /// and keep running to T after their answer was sent, to count whether the early class equals
    /// the full-T class (`seenn_shadow_total`). 0: off.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shadow_fraction: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// The adaptive part of a model's exit policy, as configured and persisted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AdaptiveAlpha {
    /// The latency objective: p99 of default-policy requests, in milliseconds.
    pub p99_ms: f64,
    /// The most accuracy (fraction, validation split) the controller may give up.
    pub max_accuracy_drop: f64,
    /// The α the operator configured: where α stays while the objective is met.
    pub configured_alpha: f64,
    /// The lowest α the controller may set (calibration's α for `max_accuracy_drop`).
    pub floor_alpha: f64,
}

/// The rule one request runs under, fully resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ExitRule {
    /// SEENN-I: exit when the score exceeds `alpha`, at the latest after `max_timesteps`.
    Confidence { alpha: f64, max_timesteps: usize },
    /// SEENN-II: the policy network chose `timesteps` (set at admission).
    Policy { timesteps: usize },
    /// Exactly `timesteps` steps.
    Fixed { timesteps: usize },
}

impl ExitRule {
    pub fn kind(&self) -> RuleKind {
        match self {
            ExitRule::Confidence { .. } => RuleKind::Confidence,
            ExitRule::Policy { .. } => RuleKind::Policy,
            ExitRule::Fixed { .. } => RuleKind::Fixed,
        }
    }

    /// Whether a request that has now run `t` steps (1-based) with this `score` stops here.
    pub fn should_exit(&self, t: usize, score: f64) -> bool {
        match *self {
            ExitRule::Confidence {
                alpha,
                max_timesteps,
            } => score > alpha || t >= max_timesteps,
            ExitRule::Policy { timesteps } | ExitRule::Fixed { timesteps } => t >= timesteps,
        }
    }
}

/// Softmax of `sum / temperature` in f64 (max-subtracted, as numpy).
pub fn softmax(sum: &[f64], temperature: f64) -> Vec<f64> {
    let max = sum.iter().cloned().fold(f64::NEG_INFINITY, f64::max) / temperature;
    let exps: Vec<f64> = sum.iter().map(|z| (z / temperature - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / total).collect()
}

/// The exit score and the predicted class (argmax, first on ties, as numpy).
pub fn score(sum: &[f64], temperature: f64) -> (f64, usize, Vec<f64>) {
    let probs = softmax(sum, temperature);
    let mut best = 0;
    for (i, p) in probs.iter().enumerate() {
        if *p > probs[best] {
            best = i;
        }
    }
    (probs[best], best, probs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidence_exits_strictly_above_alpha() {
        let rule = ExitRule::Confidence {
            alpha: 0.9,
            max_timesteps: 4,
        };
        assert!(!rule.should_exit(1, 0.9), "score == alpha must not exit");
        assert!(rule.should_exit(1, 0.900_000_1));
        assert!(!rule.should_exit(3, 0.5));
        assert!(rule.should_exit(4, 0.1), "always exits at max_timesteps");
    }

    #[test]
    fn alpha_one_runs_to_the_end() {
        let rule = ExitRule::Confidence {
            alpha: 1.0,
            max_timesteps: 3,
        };
        assert!(!rule.should_exit(2, 1.0));
        assert!(rule.should_exit(3, 1.0));
    }

    #[test]
    fn fixed_and_policy_run_exactly() {
        for rule in [
            ExitRule::Fixed { timesteps: 2 },
            ExitRule::Policy { timesteps: 2 },
        ] {
            assert!(!rule.should_exit(1, 1.0));
            assert!(rule.should_exit(2, 0.0));
        }
    }

    #[test]
    fn score_matches_hand_computed_softmax() {
        let (s, class, probs) = score(&[1.0, 3.0, 2.0], 1.0);
        let e = [1f64.exp(), 3f64.exp(), 2f64.exp()];
        let total: f64 = e.iter().sum();
        assert_eq!(class, 1);
        assert!((s - e[1] / total).abs() < 1e-15);
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let (s8, _, _) = score(&[1.0, 3.0, 2.0], 8.0);
        assert!(s8 < s, "a higher temperature flattens the score");
    }

    #[test]
    fn ties_pick_the_first_class() {
        let (_, class, _) = score(&[2.0, 2.0, 1.0], 1.0);
        assert_eq!(class, 0);
    }

    #[test]
    fn parse_rules() {
        assert_eq!(RuleKind::parse("policy"), Ok(RuleKind::Policy));
        assert!(RuleKind::parse("greedy").unwrap_err().contains("accepted"));
    }
}
