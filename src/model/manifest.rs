//! `manifest.json` and `calibration.json`: the model package contract (see `models/README.md`).

use serde::{Deserialize, Serialize};

use crate::exit::RuleKind;

/// The newest package format this server reads. Format 2 adds the optional learned exit rule
/// (`graphs.exit`, `exit.default_threshold`), served as `rule=learned`; a format 1 package is a
/// format 2 package without it.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest package format this server reads.
pub const MIN_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub architecture: String,
    pub labels: Vec<String>,
    pub input: InputSpec,
    pub timesteps: usize,
    #[serde(default)]
    pub neuron: serde_json::Value,
    pub exit: ExitSpec,
    pub graphs: Graphs,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InputSpec {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub color: Color,
    pub scale: f32,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    #[serde(default)]
    pub invert: bool,
    /// Resize filter when the image size differs: "bilinear" (triangle) or "nearest".
    #[serde(default)]
    pub resize: Resize,
    #[serde(default)]
    pub layout: Layout,
}

/// The colour mode the network was trained on (grayscale: 1 channel, rgb: 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Grayscale,
    Rgb,
}

/// Resize filter when the image size differs from the input's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    /// Triangle filter (PIL's bilinear on downscale by whole factors).
    #[default]
    Bilinear,
    Nearest,
}

/// Tensor layout of the input (only NCHW).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Layout {
    #[default]
    #[serde(rename = "NCHW")]
    Nchw,
}

/// How per-step logits are aggregated into the exit score's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// The running sum (the official code).
    Sum,
    /// The running mean.
    Mean,
}

impl InputSpec {
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExitSpec {
    pub aggregation: Aggregation,
    pub temperature: f64,
    pub default_rule: RuleKind,
    pub default_alpha: f64,
    /// The learned rule's threshold (format 2; present exactly when `graphs.exit` is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_threshold: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Graphs {
    #[serde(default)]
    pub encoder: Option<EncoderGraph>,
    pub step: StepGraph,
    #[serde(default)]
    pub policy: Option<PolicyGraph>,
    /// The learned exit rule (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitGraph>,
}

/// `exit.onnx`: the running sum of logits `[N, K]` and t `[N, 1]` in, a stop probability `[N, 1]` out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExitGraph {
    pub file: String,
    pub aggregate_input: String,
    pub timestep_input: String,
    pub output: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncoderGraph {
    pub file: String,
    pub input: String,
    pub output: String,
    pub output_shape: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepGraph {
    pub file: String,
    pub input: String,
    pub logits: String,
    pub states: Vec<StateSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateSpec {
    pub input: String,
    pub output: String,
    pub shape: Vec<usize>,
    pub initial_value: f32,
}

impl StateSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyGraph {
    pub file: String,
    pub input: String,
    pub output: String,
    /// The timestep count each policy output chooses.
    pub actions: Vec<usize>,
}

/// `calibration.json`: measured on the validation split.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibration {
    pub split: String,
    pub samples: usize,
    pub accuracy_per_t: Vec<f64>,
    pub aet: f64,
    #[serde(default)]
    pub empirical_earliest: Option<f64>,
    pub chosen_alpha: f64,
    pub alpha_sweep: Vec<SweepRow>,
    #[serde(default)]
    pub policy: Option<Summary>,
    /// The learned exit rule's threshold sweep (packages with `exit.onnx`).
    #[serde(default)]
    pub learned: Option<LearnedCalibration>,
}

/// `calibration.json`'s `learned`: the learned rule on the validation split.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LearnedCalibration {
    pub chosen_threshold: f64,
    #[serde(default)]
    pub chosen_by: String,
    #[serde(default)]
    pub trained_on: String,
    pub threshold_sweep: Vec<ThresholdRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThresholdRow {
    pub threshold: f64,
    pub accuracy: f64,
    pub avg_timesteps: f64,
    #[serde(default)]
    pub exits_per_t: Vec<u64>,
    #[serde(default)]
    pub agreement_with_full_t: Option<f64>,
}

/// A calibrated setting of a rule's dial (α or a learned threshold): a higher setting exits later.
pub trait Setting {
    fn setting(&self) -> f64;
    fn accuracy(&self) -> f64;
    fn avg_timesteps(&self) -> f64;
    /// Fraction of all samples whose exit-time class equals the full-T class.
    fn agreement_with_full_t(&self) -> Option<f64> {
        None
    }
    /// Samples exiting at each timestep.
    fn exits_per_t(&self) -> &[u64] {
        &[]
    }

    /// Agreement with the full-T class among the samples that exited *before* the last timestep
    /// (what shadow runs measure): a sample that exits at T agrees with itself, so
    /// `1 - (1 - agreement) * N / early`. `None` without the agreement, the exit counts, or any
    /// early exit.
    fn early_exit_agreement(&self) -> Option<f64> {
        let agreement = self.agreement_with_full_t()?;
        let exits = self.exits_per_t();
        let n: u64 = exits.iter().sum();
        let early = n.checked_sub(*exits.last()?)?;
        if early == 0 || !(0.0..=1.0).contains(&agreement) {
            return None;
        }
        Some((1.0 - (1.0 - agreement) * n as f64 / early as f64).clamp(0.0, 1.0))
    }
}

/// `Setting` for a sweep row whose dial is `$dial`, with agreement figures.
macro_rules! setting_with_agreement {
    ($row:ty, $dial:ident) => {
        impl Setting for $row {
            fn setting(&self) -> f64 {
                self.$dial
            }
            fn accuracy(&self) -> f64 {
                self.accuracy
            }
            fn avg_timesteps(&self) -> f64 {
                self.avg_timesteps
            }
            fn agreement_with_full_t(&self) -> Option<f64> {
                self.agreement_with_full_t
            }
            fn exits_per_t(&self) -> &[u64] {
                &self.exits_per_t
            }
        }
    };
}

setting_with_agreement!(SweepRow, alpha);
setting_with_agreement!(ThresholdRow, threshold);

/// What shadow runs should measure at setting `x`: the agreement of early exits with the full-T
/// class on the validation split, linearly interpolated between the two sweep rows around `x`
/// (the nearest row outside the sweep's range). `None` when the sweep has no agreement figures.
pub fn expected_shadow_agreement<R: Setting>(rows: &[R], x: f64) -> Option<f64> {
    let mut pts: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r.setting(), r.early_exit_agreement()?)))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (first, last) = (pts.first()?, pts.last()?);
    if x <= first.0 {
        return Some(first.1);
    }
    if x >= last.0 {
        return Some(last.1);
    }
    pts.windows(2).find_map(|w| {
        let ((a0, y0), (a1, y1)) = (w[0], w[1]);
        (x >= a0 && x <= a1).then(|| {
            if a1 > a0 {
                y0 + (y1 - y0) * (x - a0) / (a1 - a0)
            } else {
                y0
            }
        })
    })
}

/// The row whose setting is nearest `x`.
pub fn nearest<R: Setting>(rows: &[R], x: f64) -> Option<&R> {
    rows.iter()
        .min_by(|a, b| (a.setting() - x).abs().total_cmp(&(b.setting() - x).abs()))
}

/// The most accurate row whose expected average timesteps stay within `target` (ties: the
/// higher setting).
pub fn for_avg_timesteps<R: Setting>(rows: &[R], target: f64) -> Option<&R> {
    rows.iter()
        .filter(|r| r.avg_timesteps() <= target + 1e-12)
        .max_by(|a, b| {
            a.accuracy()
                .total_cmp(&b.accuracy())
                .then(a.setting().total_cmp(&b.setting()))
        })
}

/// The one-sided 95% quantile of the normal distribution: [`for_accuracy_drop`] keeps a setting
/// only when its calibrated drop plus this many standard errors stays within the bound.
pub const DROP_CONFIDENCE_Z: f64 = 1.645;

/// The lowest setting (fewest timesteps) whose accuracy drop from `full` stays within `drop` with
/// 95% confidence, on a calibration of `samples` images: the measured drop plus
/// [`DROP_CONFIDENCE_Z`] standard errors of it. Per image the drop is +1, −1 or 0, non-zero only
/// where the exit-time class differs from the full-T class, so its variance is at most the
/// disagreement `1 − agreement_with_full_t` and the standard error at most
/// `sqrt(disagreement / samples)`. Without the agreement (older packages, the SEENN-II bias
/// sweep) the measured drop alone decides. The margin is what keeps the bound on unseen
/// traffic: a floor chosen on the point estimate cost 2.04 pp on the test images under a 2 pp
/// bound (BENCHMARKS.md, "Adaptive α under overload").
pub fn for_accuracy_drop<R: Setting>(
    rows: &[R],
    full: f64,
    drop: f64,
    samples: usize,
) -> Option<&R> {
    rows.iter()
        .filter(|r| full - r.accuracy() + drop_margin(*r, samples) <= drop + 1e-12)
        .min_by(|a, b| a.setting().total_cmp(&b.setting()))
}

/// [`DROP_CONFIDENCE_Z`] standard errors of a row's measured accuracy drop (0 when unknown).
fn drop_margin<R: Setting>(row: &R, samples: usize) -> f64 {
    match row.agreement_with_full_t() {
        Some(a) if samples > 0 => {
            DROP_CONFIDENCE_Z * ((1.0 - a).clamp(0.0, 1.0) / samples as f64).sqrt()
        }
        _ => 0.0,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepRow {
    pub alpha: f64,
    pub accuracy: f64,
    pub avg_timesteps: f64,
    #[serde(default)]
    pub exits_per_t: Vec<u64>,
    /// Fraction of all samples whose exit-time class equals the full-T class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement_with_full_t: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub accuracy: f64,
    pub avg_timesteps: f64,
    #[serde(default)]
    pub exits_per_t: Vec<u64>,
    /// SEENN-II along its curve: one row per per-action bias scale (not shown in model views).
    #[serde(default, skip_serializing)]
    pub bias_sweep: Vec<BiasRow>,
}

/// `calibration.json` `policy.bias_sweep` row: the policy with a per-action bias.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BiasRow {
    pub bias_scale: f64,
    #[serde(default)]
    pub action_bias: Vec<f64>,
    pub accuracy: f64,
    pub avg_timesteps: f64,
    #[serde(default)]
    pub exits_per_t: Vec<u64>,
}

impl Setting for BiasRow {
    fn setting(&self) -> f64 {
        self.bias_scale
    }
    fn accuracy(&self) -> f64 {
        self.accuracy
    }
    fn avg_timesteps(&self) -> f64 {
        self.avg_timesteps
    }
}

impl Manifest {
    /// Checks that do not need the graphs; graph I/O is checked against the sessions at load.
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&self.format_version) {
            return Err(format!(
                "format_version {} is not supported (this server reads {MIN_FORMAT_VERSION}..={FORMAT_VERSION})",
                self.format_version
            ));
        }
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "name {:?} must be non-empty and use only letters, digits, '-', '_' and '.'",
                self.name
            ));
        }
        if self.labels.is_empty() {
            return Err("labels is empty".into());
        }
        if self.timesteps == 0 || self.timesteps > 1024 {
            return Err(format!("timesteps {} must be in 1..=1024", self.timesteps));
        }
        let i = &self.input;
        if !(i.color == Color::Grayscale && i.channels == 1
            || i.color == Color::Rgb && i.channels == 3)
        {
            return Err(format!(
                "input.color {:?} with {} channels: accepted are grayscale/1 and rgb/3",
                i.color, i.channels
            ));
        }
        if i.height == 0 || i.width == 0 || i.height > 4096 || i.width > 4096 {
            return Err(format!(
                "input size {}x{} must be within 1..=4096",
                i.height, i.width
            ));
        }
        if i.mean.len() != i.channels || i.std.len() != i.channels {
            return Err("input.mean and input.std need one value per channel".into());
        }
        if i.std
            .iter()
            .any(|s| !s.is_finite() || s.abs() < f32::MIN_POSITIVE)
            || !i.scale.is_finite()
            || i.mean.iter().any(|m| !m.is_finite())
        {
            return Err(
                "input.std must be finite and not zero or subnormal, input.scale and input.mean finite"
                    .into(),
            );
        }
        // (pixel × scale − mean) / std (with `invert`, 1 − pixel × scale) is monotonic in the pixel, so black and white bound every
        // value the preprocessing can produce: both must stay finite in float32.
        for (c, (m, sd)) in i.mean.iter().zip(&i.std).enumerate() {
            for px in [0.0f32, 255.0] {
                let x = if i.invert {
                    1.0 - px * i.scale
                } else {
                    px * i.scale
                };
                let v = (x - m) / sd;
                if !v.is_finite() {
                    return Err(format!(
                        "input channel {c}: pixel {px} normalises to {v} with scale {}, mean {m}, std {sd}; it must stay finite in float32",
                        i.scale
                    ));
                }
            }
        }
        let e = &self.exit;
        if !(e.temperature.is_finite() && e.temperature > 0.0) {
            return Err("exit.temperature must be positive".into());
        }
        if !(e.default_alpha > 0.0 && e.default_alpha <= 1.0) {
            return Err(format!(
                "exit.default_alpha {} must be in (0, 1]",
                e.default_alpha
            ));
        }
        if e.default_rule == RuleKind::Policy && self.graphs.policy.is_none() {
            return Err("exit.default_rule is policy but graphs.policy is missing".into());
        }
        match (&self.graphs.exit, e.default_threshold) {
            (Some(_), Some(t)) if !(0.0..=1.0).contains(&t) => {
                return Err(format!("exit.default_threshold {t} must be in [0, 1]"));
            }
            (Some(_), None) => {
                return Err(
                    "graphs.exit needs exit.default_threshold (the learned rule's threshold)"
                        .into(),
                );
            }
            (None, Some(_)) => {
                return Err("exit.default_threshold is set but graphs.exit is missing".into());
            }
            _ => {}
        }
        if self.graphs.exit.is_some() && self.format_version < 2 {
            return Err("graphs.exit needs format_version 2".into());
        }
        if e.default_rule == RuleKind::Learned && self.graphs.exit.is_none() {
            return Err("exit.default_rule is learned but graphs.exit is missing".into());
        }
        if let Some(p) = &self.graphs.policy {
            if p.actions.is_empty() || p.actions.iter().any(|a| *a == 0 || *a > self.timesteps) {
                return Err(format!(
                    "graphs.policy.actions must be within 1..={}",
                    self.timesteps
                ));
            }
        }
        // Element counts the engine allocates per request: real, non-zero and bounded.
        const MAX_ELEMENTS: usize = 1 << 28;
        let elements = |shape: &[usize]| {
            shape
                .iter()
                .try_fold(1usize, |acc, d| acc.checked_mul(*d))
                .filter(|n| *n > 0 && *n <= MAX_ELEMENTS && !shape.is_empty())
        };
        for s in &self.graphs.step.states {
            if elements(&s.shape).is_none() {
                return Err(format!(
                    "state {} has shape {:?}: it needs 1..={MAX_ELEMENTS} elements",
                    s.input, s.shape
                ));
            }
            if !s.initial_value.is_finite() {
                return Err(format!(
                    "state {} initial_value must be a finite float32",
                    s.input
                ));
            }
        }
        if let Some(e) = &self.graphs.encoder {
            if elements(&e.output_shape).is_none() {
                return Err(format!(
                    "graphs.encoder.output_shape {:?} needs 1..={MAX_ELEMENTS} elements",
                    e.output_shape
                ));
            }
        }
        Ok(())
    }

    pub fn num_classes(&self) -> usize {
        self.labels.len()
    }
}

impl Calibration {
    pub fn validate(&self, timesteps: usize) -> Result<(), String> {
        if self.accuracy_per_t.len() != timesteps {
            return Err(format!(
                "accuracy_per_t has {} entries, the manifest says T = {timesteps}",
                self.accuracy_per_t.len()
            ));
        }
        if self.alpha_sweep.is_empty() {
            return Err("alpha_sweep is empty".into());
        }
        for r in &self.alpha_sweep {
            if !(r.alpha > 0.0
                && r.alpha <= 1.0
                && r.accuracy.is_finite()
                && r.avg_timesteps.is_finite())
            {
                return Err(format!("alpha_sweep row {r:?} is out of range"));
            }
        }
        for r in self.bias_sweep() {
            if !(r.bias_scale.is_finite() && r.accuracy.is_finite() && r.avg_timesteps.is_finite())
            {
                return Err(format!("policy.bias_sweep row {r:?} is out of range"));
            }
        }
        for r in self.threshold_sweep() {
            if !((0.0..=1.0).contains(&r.threshold)
                && r.accuracy.is_finite()
                && r.avg_timesteps.is_finite())
            {
                return Err(format!("learned.threshold_sweep row {r:?} is out of range"));
            }
        }
        Ok(())
    }

    /// The row for α (the nearest α in the table).
    pub fn expected_at(&self, alpha: f64) -> Option<&SweepRow> {
        nearest(&self.alpha_sweep, alpha)
    }

    /// What shadow runs should measure at α (see [`expected_shadow_agreement`]).
    pub fn expected_shadow_agreement(&self, alpha: f64) -> Option<f64> {
        expected_shadow_agreement(&self.alpha_sweep, alpha)
    }

    /// What shadow runs should measure under the learned rule at `threshold`.
    pub fn expected_shadow_agreement_learned(&self, threshold: f64) -> Option<f64> {
        expected_shadow_agreement(self.threshold_sweep(), threshold)
    }

    /// The most accurate α whose expected average timesteps stay within `target`.
    pub fn alpha_for_avg_timesteps(&self, target: f64) -> Option<&SweepRow> {
        for_avg_timesteps(&self.alpha_sweep, target)
    }

    /// The smallest α (fewest timesteps) whose accuracy is within `drop` of full T with 95%
    /// confidence ([`for_accuracy_drop`]).
    pub fn alpha_for_accuracy_drop(&self, drop: f64) -> Option<&SweepRow> {
        for_accuracy_drop(
            &self.alpha_sweep,
            *self.accuracy_per_t.last()?,
            drop,
            self.samples,
        )
    }

    /// The SEENN-II policy's bias sweep (empty without one).
    pub fn bias_sweep(&self) -> &[BiasRow] {
        self.policy
            .as_ref()
            .map_or(&[][..], |p| p.bias_sweep.as_slice())
    }

    /// The learned rule's threshold sweep (empty without one).
    pub fn threshold_sweep(&self) -> &[ThresholdRow] {
        self.learned
            .as_ref()
            .map_or(&[][..], |l| l.threshold_sweep.as_slice())
    }

    /// The row for a learned threshold (the nearest threshold in the sweep).
    pub fn expected_at_threshold(&self, threshold: f64) -> Option<&ThresholdRow> {
        nearest(self.threshold_sweep(), threshold)
    }

    /// The most accurate learned threshold whose expected average timesteps stay within `target`.
    pub fn threshold_for_avg_timesteps(&self, target: f64) -> Option<&ThresholdRow> {
        for_avg_timesteps(self.threshold_sweep(), target)
    }

    /// The lowest learned threshold whose accuracy is within `drop` of full T with 95% confidence
    /// ([`for_accuracy_drop`]).
    pub fn threshold_for_accuracy_drop(&self, drop: f64) -> Option<&ThresholdRow> {
        for_accuracy_drop(
            self.threshold_sweep(),
            *self.accuracy_per_t.last()?,
            drop,
            self.samples,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(alpha: f64, agreement: f64, exits: Vec<u64>) -> SweepRow {
        SweepRow {
            alpha,
            accuracy: 0.9,
            avg_timesteps: 1.5,
            exits_per_t: exits,
            agreement_with_full_t: Some(agreement),
        }
    }

    fn calibration(rows: Vec<SweepRow>) -> Calibration {
        Calibration {
            split: "validation".into(),
            samples: 100,
            accuracy_per_t: vec![0.9, 0.92],
            aet: 1.2,
            empirical_earliest: None,
            chosen_alpha: 0.9,
            alpha_sweep: rows,
            policy: None,
            learned: None,
        }
    }

    #[test]
    fn an_accuracy_drop_bound_keeps_a_margin_of_its_sampling_error() {
        // 100 validation samples, full-T accuracy 0.92. α 0.5 costs 2 pp on them and disagrees
        // with full T on 10% (margin 1.645 × sqrt(0.1 / 100) = 5.2 pp); α 0.8 costs nothing and
        // disagrees on 1% (margin 1.6 pp).
        let rows = |agreement: [Option<f64>; 2]| -> Vec<SweepRow> {
            [(0.5, 0.90), (0.8, 0.92)]
                .iter()
                .zip(agreement)
                .map(|(&(alpha, accuracy), a)| SweepRow {
                    accuracy,
                    agreement_with_full_t: a,
                    ..row(alpha, 1.0, vec![])
                })
                .collect()
        };
        let mut c = calibration(rows([Some(0.9), Some(0.99)]));
        let pick = |c: &Calibration, drop: f64| c.alpha_for_accuracy_drop(drop).map(|r| r.alpha);
        // A 3 pp bound: the point estimate alone would allow α 0.5; its margin does not.
        assert_eq!(pick(&c, 0.03), Some(0.8));
        assert_eq!(pick(&c, 0.08), Some(0.5));
        assert_eq!(
            pick(&c, 0.01),
            None,
            "no α is within 1 pp with 95% confidence"
        );
        // More samples, a smaller margin: 1.645 × sqrt(0.1 / 10 000) = 0.52 pp.
        c.samples = 10_000;
        assert_eq!(pick(&c, 0.03), Some(0.5));
        // Without the agreement (older packages) the measured drop alone decides.
        let c = calibration(rows([None, None]));
        assert_eq!(pick(&c, 0.03), Some(0.5));
        assert_eq!(pick(&c, 0.0), Some(0.8));
    }

    #[test]
    fn early_exit_agreement_leaves_out_the_samples_that_ran_to_t() {
        // 100 samples, 20 ran to T (they agree with themselves), 2 of the 80 early ones disagree.
        let r = row(0.9, 0.98, vec![80, 20]);
        assert!((r.early_exit_agreement().expect("some") - 78.0 / 80.0).abs() < 1e-12);
        // Nobody exits early: nothing to expect; no agreement figure: nothing either.
        assert_eq!(row(0.9, 1.0, vec![0, 100]).early_exit_agreement(), None);
        let mut bare = row(0.9, 0.98, vec![80, 20]);
        bare.agreement_with_full_t = None;
        assert_eq!(bare.early_exit_agreement(), None);
    }

    #[test]
    fn expected_shadow_agreement_interpolates_between_sweep_rows() {
        let c = calibration(vec![
            row(0.9, 0.99, vec![100, 0]),
            row(0.5, 0.95, vec![100, 0]),
        ]);
        let at = |a: f64| c.expected_shadow_agreement(a).expect("some");
        assert!((at(0.7) - 0.97).abs() < 1e-12, "{}", at(0.7));
        assert!((at(0.5) - 0.95).abs() < 1e-12);
        assert!(
            (at(0.3) - 0.95).abs() < 1e-12,
            "below the sweep: nearest row"
        );
        assert!(
            (at(0.99) - 0.99).abs() < 1e-12,
            "above the sweep: nearest row"
        );
        let mut none = calibration(vec![row(0.9, 0.99, vec![100, 0])]);
        none.alpha_sweep[0].agreement_with_full_t = None;
        assert_eq!(none.expected_shadow_agreement(0.9), None);
    }

    #[test]
    fn the_committed_calibration_has_an_expectation_at_its_default_alpha() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fashion-mnist");
        let c = crate::model::read_calibration(&dir, 4)
            .expect("reads")
            .expect("present");
        let e = c
            .expected_shadow_agreement(0.9)
            .expect("agreement in the sweep");
        let all = c
            .expected_at(0.9)
            .and_then(|r| r.agreement_with_full_t)
            .expect("row");
        assert!(e < all && e > 0.9, "{e} vs {all}");
    }
}
