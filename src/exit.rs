//! SEENN exit rules as pure functions over the running sum of per-timestep logits.
//!
//! Score (SEENN-I, as the official code): `max_k softmax(Z_t / temperature)_k` where `Z_t` is the
//! cumulative sum of the logits of steps 1..t, accumulated in f64 like the trainer. A request exits
//! when `score > alpha` (strict) and always at its last allowed timestep.
//!
//! The learned rule (`exit.onnx`, package format 2) scores the same running sum with a small
//! network; the request exits when that stop probability is above its threshold (strict), and
//! likewise always at its last allowed timestep.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    Confidence,
    Policy,
    Fixed,
    Learned,
}

impl RuleKind {
    pub const ALL: [RuleKind; 4] = [
        RuleKind::Confidence,
        RuleKind::Policy,
        RuleKind::Fixed,
        RuleKind::Learned,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            RuleKind::Confidence => "confidence",
            RuleKind::Policy => "policy",
            RuleKind::Fixed => "fixed",
            RuleKind::Learned => "learned",
        }
    }

    pub fn parse(s: &str) -> Result<Self, UnknownRule> {
        match s {
            "confidence" => Ok(RuleKind::Confidence),
            "policy" => Ok(RuleKind::Policy),
            "fixed" => Ok(RuleKind::Fixed),
            "learned" => Ok(RuleKind::Learned),
            other => Err(UnknownRule(other.to_string())),
        }
    }
}

/// A rule name that is not one of [`RuleKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown exit rule {0:?}; accepted: confidence, policy, fixed, learned")]
pub struct UnknownRule(pub String);

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
    /// The learned rule's stop-probability threshold (packages with `exit.onnx`; absent: the
    /// manifest's `exit.default_threshold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// The SEENN-II policy's per-action bias scale (calibration.json `policy.bias_sweep`; absent:
    /// 0, the exported policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias_scale: Option<f64>,
    /// Shadow runs: the fraction (0..=1) of default-policy requests that exit before the model's T
    /// and keep running to T after their answer was sent, to count whether the early class equals
    /// the full-T class (`seenn_shadow_total`). 0: off.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shadow_fraction: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// The adaptive part of a model's exit policy, as configured and persisted. It moves the dial of
/// the policy's rule: α under `confidence`, the threshold under `learned` (then `configured_alpha`
/// and `floor_alpha` are thresholds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AdaptiveAlpha {
    /// The latency objective: p99 of default-policy requests, in milliseconds.
    pub p99_ms: f64,
    /// The most accuracy (fraction, validation split) the controller may give up.
    pub max_accuracy_drop: f64,
    /// The α (threshold) the operator configured: where it stays while the objective is met.
    pub configured_alpha: f64,
    /// The lowest α (threshold) the controller may set (calibration's lowest setting whose drop
    /// stays within `max_accuracy_drop` with 95% confidence).
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
    /// The learned exit rule: exit when `exit.onnx`'s stop probability exceeds `threshold`, at
    /// the latest after `max_timesteps`.
    Learned {
        threshold: f64,
        max_timesteps: usize,
    },
}

impl ExitRule {
    pub fn kind(&self) -> RuleKind {
        match self {
            ExitRule::Confidence { .. } => RuleKind::Confidence,
            ExitRule::Policy { .. } => RuleKind::Policy,
            ExitRule::Fixed { .. } => RuleKind::Fixed,
            ExitRule::Learned { .. } => RuleKind::Learned,
        }
    }

    /// The most timesteps this rule may run.
    pub fn max_timesteps(&self) -> usize {
        match *self {
            ExitRule::Confidence { max_timesteps, .. }
            | ExitRule::Learned { max_timesteps, .. } => max_timesteps,
            ExitRule::Policy { timesteps } | ExitRule::Fixed { timesteps } => timesteps,
        }
    }

    /// The rule with at most `n` timesteps (a per_step request with `n` frames runs at most `n`
    /// steps); `n` is at least 1.
    pub fn capped(self, n: usize) -> ExitRule {
        let n = n.max(1);
        match self {
            ExitRule::Confidence {
                alpha,
                max_timesteps,
            } => ExitRule::Confidence {
                alpha,
                max_timesteps: max_timesteps.min(n),
            },
            ExitRule::Learned {
                threshold,
                max_timesteps,
            } => ExitRule::Learned {
                threshold,
                max_timesteps: max_timesteps.min(n),
            },
            ExitRule::Policy { timesteps } => ExitRule::Policy {
                timesteps: timesteps.min(n),
            },
            ExitRule::Fixed { timesteps } => ExitRule::Fixed {
                timesteps: timesteps.min(n),
            },
        }
    }

    /// Whether a request that has now run `t` steps (1-based) with this `score` stops here; the
    /// score is the max softmax for `Confidence` and the stop probability for `Learned`.
    pub fn should_exit(&self, t: usize, score: f64) -> bool {
        match *self {
            ExitRule::Confidence {
                alpha: limit,
                max_timesteps,
            }
            | ExitRule::Learned {
                threshold: limit,
                max_timesteps,
            } => score > limit || t >= max_timesteps,
            ExitRule::Policy { timesteps } | ExitRule::Fixed { timesteps } => t >= timesteps,
        }
    }
}

/// The per-action logit bias `scale·(a − 1)/(T − 1)` that moves a SEENN-II policy along its
/// accuracy/steps curve (positive: later actions, more steps), in f64 as the trainer computes it.
pub fn action_bias(scale: f64, action: usize, t_max: usize) -> f64 {
    scale * action.saturating_sub(1) as f64 / t_max.saturating_sub(1).max(1) as f64
}

/// The action the policy picks: argmax over `logits + action_bias` (f64; first on ties, as numpy).
pub fn biased_action(logits: &[f32], actions: &[usize], scale: f64, t_max: usize) -> usize {
    let mut best = 0;
    let mut best_v = f64::NEG_INFINITY;
    for (i, (l, a)) in logits.iter().zip(actions).enumerate() {
        let v = f64::from(*l) + action_bias(scale, *a, t_max);
        if i == 0 || v > best_v {
            best = i;
            best_v = v;
        }
    }
    actions.get(best).copied().unwrap_or(t_max)
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
    fn action_bias_moves_the_policy_along_its_curve() {
        // The trainer's bias_vector(-14, 4): [0, -4.666667, -9.333333, -14].
        let b: Vec<f64> = (1..=4).map(|a| action_bias(-14.0, a, 4)).collect();
        assert_eq!(b[0], 0.0);
        assert!((b[1] + 14.0 / 3.0).abs() < 1e-12 && b[3] == -14.0);
        let logits = [1.0f32, 1.5, 0.2, 1.4];
        assert_eq!(biased_action(&logits, &[1, 2, 3, 4], 0.0, 4), 2);
        assert_eq!(biased_action(&logits, &[1, 2, 3, 4], -3.0, 4), 1);
        assert_eq!(biased_action(&logits, &[1, 2, 3, 4], 3.0, 4), 4);
        // Ties pick the first action, as numpy's argmax.
        assert_eq!(biased_action(&[0.5, 0.5], &[1, 2], 0.0, 2), 1);
    }

    #[test]
    fn learned_exits_strictly_above_its_threshold() {
        let rule = ExitRule::Learned {
            threshold: 0.7,
            max_timesteps: 4,
        };
        assert_eq!(rule.kind(), RuleKind::Learned);
        assert_eq!(rule.max_timesteps(), 4);
        assert!(!rule.should_exit(1, 0.7));
        assert!(rule.should_exit(2, 0.71));
        assert!(rule.should_exit(4, 0.0), "always exits at max_timesteps");
    }

    #[test]
    fn capping_lowers_every_rule_to_the_frames_it_has() {
        let c = ExitRule::Confidence {
            alpha: 0.9,
            max_timesteps: 8,
        };
        assert_eq!(c.capped(3).max_timesteps(), 3);
        assert_eq!(c.capped(10).max_timesteps(), 8);
        assert_eq!(
            ExitRule::Fixed { timesteps: 5 }.capped(2).max_timesteps(),
            2
        );
        let l = ExitRule::Learned {
            threshold: 0.5,
            max_timesteps: 4,
        };
        assert_eq!(l.capped(0).max_timesteps(), 1);
    }

    #[test]
    fn parse_rules() {
        assert_eq!(RuleKind::parse("learned"), Ok(RuleKind::Learned));
        assert_eq!(RuleKind::parse("policy"), Ok(RuleKind::Policy));
        assert!(RuleKind::parse("greedy")
            .unwrap_err()
            .to_string()
            .contains("accepted"));
    }
}
