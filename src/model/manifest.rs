//! `manifest.json` and `calibration.json`: the model package contract (see `models/README.md`).

use serde::{Deserialize, Serialize};

use crate::exit::RuleKind;
pub use crate::npy::Dtype;

/// The newest package format this server reads. Format 2 adds the optional learned exit rule
/// (`graphs.exit`, `exit.default_threshold`), served as `rule=learned`; a format 1 package is a
/// format 2 package without it. Format 3 adds tensor inputs (`input.kind` "tensor", with
/// `shape`, `dtype` and `time` static or per_step) and `exit.aggregation` "last"; a format 1 or 2
/// package is a format 3 package with an image input.
pub const FORMAT_VERSION: u32 = 3;
/// The oldest package format this server reads.
pub const MIN_FORMAT_VERSION: u32 = 1;

/// A value in `manifest.json` or `calibration.json` (or a tensor checked against the input) that
/// breaks the package contract: the message names the field, what it holds and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<String> for Invalid {
    fn from(message: String) -> Self {
        Invalid(message)
    }
}

impl From<&str> for Invalid {
    fn from(message: &str) -> Self {
        Invalid(message.to_string())
    }
}

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

/// The model's input (`manifest.json` `input`): an image (`kind` "image", the default) that the
/// server decodes and preprocesses, or a tensor (`kind` "tensor", format 3) that clients send as
/// values, one frame for every step or one per step (`time`). Read and written through
/// [`InputJson`], which checks that each kind has its fields and no other kind's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "InputJson", into = "InputJson")]
pub struct InputSpec {
    pub kind: InputKind,
    /// One frame's shape without the batch (and time) dimension: `[C, H, W]` for images.
    pub shape: Vec<usize>,
    /// What tensor clients send natively (advertised in metadata; the server accepts every
    /// [`Dtype`] and casts to float32). `float32` for images.
    pub dtype: Dtype,
    /// Whether a request carries one frame for all steps or one per step. `static` for images.
    pub time: TimeMode,
    // Image inputs only (zero, empty or the default for tensor inputs):
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub color: Color,
    pub scale: f32,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub invert: bool,
    /// Resize filter when the image size differs: "bilinear" (triangle) or "nearest".
    pub resize: Resize,
    pub layout: Layout,
}

/// `input.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    /// An encoded image, decoded and preprocessed by the server (the default).
    #[default]
    Image,
    /// Values of `shape` (format 3), sent by the client.
    Tensor,
}

/// `input.time` of a tensor input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimeMode {
    /// The same input at every step (the default; images are static).
    #[default]
    Static,
    /// A request carries t frames `[t, *shape]`, 1 ≤ t ≤ T; step k reads frame k.
    PerStep,
}

impl InputKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InputKind::Image => "image",
            InputKind::Tensor => "tensor",
        }
    }
}

impl TimeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TimeMode::Static => "static",
            TimeMode::PerStep => "per_step",
        }
    }
}

/// The model's input as manifest.json writes it: an image (`kind` "image", the default: channels,
/// height, width, color, scale, mean, std, invert, resize, layout) or a tensor (`kind` "tensor":
/// shape, dtype, time). Every field is optional here so that reading a manifest can say which one
/// is missing or belongs to the other kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = InputSpec)]
pub struct InputJson {
    /// "image" (the default) or "tensor" (format 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Tensor: one frame's shape without batch and time dimensions (any rank ≥ 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<usize>>,
    /// Tensor: float32 | uint8 | bool (what clients send natively; all three are accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// Tensor: static (one frame for every step, the default) or per_step (t frames, 1 ≤ t ≤ T).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<Color>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invert: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<Resize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
}

const IMAGE_FIELDS: &str =
    "channels, height, width, color, scale, mean, std (invert, resize, layout optional)";
const TENSOR_FIELDS: &str = "shape, dtype (float32|uint8|bool), time (static|per_step, optional)";

impl TryFrom<InputJson> for InputSpec {
    type Error = Invalid;

    fn try_from(j: InputJson) -> Result<InputSpec, Invalid> {
        match j.kind.as_deref() {
            None | Some("image") => image_input(j),
            Some("tensor") => tensor_input(j),
            Some(other) => Err(Invalid(format!(
                "input.kind {other:?} is not supported; accepted: image, tensor"
            ))),
        }
    }
}

/// The names among `fields` (name, whether set) that are set.
fn set_fields<'a>(fields: &[(&'a str, bool)]) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(_, set)| *set)
        .map(|(n, _)| *n)
        .collect()
}

/// An image input: no tensor field, and every image field but the optional ones.
fn image_input(j: InputJson) -> Result<InputSpec, Invalid> {
    let kind = InputKind::Image;
    let stray = set_fields(&[
        ("shape", j.shape.is_some()),
        ("dtype", j.dtype.is_some()),
        ("time", j.time.is_some()),
    ]);
    if !stray.is_empty() {
        return Err(Invalid(format!(
            "input.{} belongs to kind \"tensor\"; an image input takes {IMAGE_FIELDS}",
            stray.join(", input.")
        )));
    }
    let missing = |f: &str| format!("input.{f} is missing; an image input needs {IMAGE_FIELDS}");
    let channels = j.channels.ok_or_else(|| missing("channels"))?;
    let height = j.height.ok_or_else(|| missing("height"))?;
    let width = j.width.ok_or_else(|| missing("width"))?;
    Ok(InputSpec {
        kind,
        shape: vec![channels, height, width],
        dtype: Dtype::Float32,
        time: TimeMode::Static,
        channels,
        height,
        width,
        color: j.color.ok_or_else(|| missing("color"))?,
        scale: j.scale.ok_or_else(|| missing("scale"))?,
        mean: j.mean.ok_or_else(|| missing("mean"))?,
        std: j.std.ok_or_else(|| missing("std"))?,
        invert: j.invert.unwrap_or(false),
        resize: j.resize.unwrap_or_default(),
        layout: j.layout.unwrap_or_default(),
    })
}

/// A tensor input: no image field, a shape and a dtype, and `time` static unless per_step.
fn tensor_input(j: InputJson) -> Result<InputSpec, Invalid> {
    let kind = InputKind::Tensor;
    let stray = set_fields(&[
        ("channels", j.channels.is_some()),
        ("height", j.height.is_some()),
        ("width", j.width.is_some()),
        ("color", j.color.is_some()),
        ("scale", j.scale.is_some()),
        ("mean", j.mean.is_some()),
        ("std", j.std.is_some()),
        ("invert", j.invert.is_some()),
        ("resize", j.resize.is_some()),
        ("layout", j.layout.is_some()),
    ]);
    if !stray.is_empty() {
        return Err(Invalid(format!(
            "input.{} belongs to kind \"image\"; a tensor input takes {TENSOR_FIELDS}",
            stray.join(", input.")
        )));
    }
    let shape = j
        .shape
        .ok_or_else(|| format!("input.shape is missing; a tensor input needs {TENSOR_FIELDS}"))?;
    let dtype = match j.dtype.as_deref() {
        Some(d) => match Dtype::ALL.iter().find(|x| x.as_str() == d) {
            Some(x) => *x,
            None => {
                return Err(Invalid(format!(
                    "input.dtype {d:?} is not supported; accepted: {}",
                    crate::npy::ACCEPTED_DTYPES
                )))
            }
        },
        None => {
            return Err(Invalid(format!(
                "input.dtype is missing; a tensor input needs {TENSOR_FIELDS}"
            )))
        }
    };
    let time = match j.time.as_deref() {
        None | Some("static") => TimeMode::Static,
        Some("per_step") => TimeMode::PerStep,
        Some(other) => {
            return Err(Invalid(format!(
                "input.time {other:?} is not supported; accepted: static, per_step"
            )))
        }
    };
    Ok(InputSpec {
        kind,
        shape,
        dtype,
        time,
        channels: 0,
        height: 0,
        width: 0,
        color: Color::Grayscale,
        scale: 1.0,
        mean: Vec::new(),
        std: Vec::new(),
        invert: false,
        resize: Resize::default(),
        layout: Layout::default(),
    })
}

impl From<InputSpec> for InputJson {
    fn from(s: InputSpec) -> InputJson {
        match s.kind {
            InputKind::Image => InputJson {
                kind: Some("image".into()),
                channels: Some(s.channels),
                height: Some(s.height),
                width: Some(s.width),
                color: Some(s.color),
                scale: Some(s.scale),
                mean: Some(s.mean),
                std: Some(s.std),
                invert: Some(s.invert),
                resize: Some(s.resize),
                layout: Some(s.layout),
                ..InputJson::default()
            },
            InputKind::Tensor => InputJson {
                kind: Some("tensor".into()),
                shape: Some(s.shape),
                dtype: Some(s.dtype.as_str().into()),
                time: Some(s.time.as_str().into()),
                ..InputJson::default()
            },
        }
    }
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
    /// The last step's output (format 3): an LI readout read at its last membrane.
    Last,
}

impl InputSpec {
    /// Values in one frame (the product of [`InputSpec::dims`]).
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One frame's dimensions without batch and time: `[C, H, W]` for an image, `shape` for a
    /// tensor. What the encoder (or, without one, `step.onnx`) takes after the batch dimension.
    pub fn dims(&self) -> &[usize] {
        &self.shape
    }

    pub fn is_image(&self) -> bool {
        self.kind == InputKind::Image
    }

    /// Whether a request carries one frame per step.
    pub fn per_step(&self) -> bool {
        self.time == TimeMode::PerStep
    }

    /// What a request's tensor must look like, for error messages: `[2, 16, 16]` or
    /// `[t, 2, 16, 16] with 1 ≤ t ≤ T`, and the dtypes accepted.
    pub fn expected(&self, timesteps: usize) -> String {
        let dims = self
            .shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        match (self.kind, self.time) {
            (InputKind::Image, _) => format!("[{dims}] float32 (C x H x W, preprocessed)"),
            (InputKind::Tensor, TimeMode::Static) => {
                format!("[{dims}] {}", crate::npy::ACCEPTED_DTYPES)
            }
            (InputKind::Tensor, TimeMode::PerStep) => format!(
                "[t, {dims}] with 1 ≤ t ≤ {timesteps}, {}",
                crate::npy::ACCEPTED_DTYPES
            ),
        }
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
    /// The first value out of contract is the error.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.validate_identity()?;
        if self.input.is_image() {
            validate_image_input(&self.input)?;
        } else {
            self.validate_tensor_input()?;
        }
        self.validate_exit()?;
        self.validate_graph_sizes()
    }

    /// The format version, name, labels and timesteps.
    fn validate_identity(&self) -> Result<(), Invalid> {
        if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&self.format_version) {
            return Err(Invalid(format!(
                "format_version {} is not supported (this server reads {MIN_FORMAT_VERSION}..={FORMAT_VERSION})",
                self.format_version
            )));
        }
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(Invalid(format!(
                "name {:?} must be non-empty and use only letters, digits, '-', '_' and '.'",
                self.name
            )));
        }
        if self.labels.is_empty() {
            return Err("labels is empty".into());
        }
        if self.timesteps == 0 || self.timesteps > 1024 {
            return Err(Invalid(format!(
                "timesteps {} must be in 1..=1024",
                self.timesteps
            )));
        }
        Ok(())
    }

    /// The exit rule's settings, and the graphs each default rule needs.
    fn validate_exit(&self) -> Result<(), Invalid> {
        let e = &self.exit;
        if !(e.temperature.is_finite() && e.temperature > 0.0) {
            return Err("exit.temperature must be positive".into());
        }
        if !(e.default_alpha > 0.0 && e.default_alpha <= 1.0) {
            return Err(Invalid(format!(
                "exit.default_alpha {} must be in (0, 1]",
                e.default_alpha
            )));
        }
        if e.aggregation == Aggregation::Last && self.format_version < 3 {
            return Err("exit.aggregation \"last\" needs format_version 3".into());
        }
        if e.default_rule == RuleKind::Policy && self.graphs.policy.is_none() {
            return Err("exit.default_rule is policy but graphs.policy is missing".into());
        }
        match (&self.graphs.exit, e.default_threshold) {
            (Some(_), Some(t)) if !(0.0..=1.0).contains(&t) => {
                return Err(Invalid(format!(
                    "exit.default_threshold {t} must be in [0, 1]"
                )));
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
        Ok(())
    }

    /// The policy's actions and the element counts the engine allocates per request: real,
    /// non-zero and bounded.
    fn validate_graph_sizes(&self) -> Result<(), Invalid> {
        if let Some(p) = &self.graphs.policy {
            if p.actions.is_empty() || p.actions.iter().any(|a| *a == 0 || *a > self.timesteps) {
                return Err(Invalid(format!(
                    "graphs.policy.actions must be within 1..={}",
                    self.timesteps
                )));
            }
        }
        const MAX_ELEMENTS: usize = 1 << 28;
        let elements = |shape: &[usize]| {
            shape
                .iter()
                .try_fold(1usize, |acc, d| acc.checked_mul(*d))
                .filter(|n| *n > 0 && *n <= MAX_ELEMENTS && !shape.is_empty())
        };
        for s in &self.graphs.step.states {
            if elements(&s.shape).is_none() {
                return Err(Invalid(format!(
                    "state {} has shape {:?}: it needs 1..={MAX_ELEMENTS} elements",
                    s.input, s.shape
                )));
            }
            if !s.initial_value.is_finite() {
                return Err(Invalid(format!(
                    "state {} initial_value must be a finite float32",
                    s.input
                )));
            }
        }
        if let Some(e) = &self.graphs.encoder {
            if elements(&e.output_shape).is_none() {
                return Err(Invalid(format!(
                    "graphs.encoder.output_shape {:?} needs 1..={MAX_ELEMENTS} elements",
                    e.output_shape
                )));
            }
        }
        Ok(())
    }

    pub fn num_classes(&self) -> usize {
        self.labels.len()
    }

    /// A tensor input's checks: format 3, a real shape, and for per_step inputs neither an
    /// encoder nor a SEENN-II policy (each would have to see every frame before the first step).
    fn validate_tensor_input(&self) -> Result<(), Invalid> {
        let i = &self.input;
        if self.format_version < 3 {
            return Err(Invalid(format!(
                "input.kind \"tensor\" needs format_version 3 (this manifest has {})",
                self.format_version
            )));
        }
        let elements = i
            .shape
            .iter()
            .try_fold(1usize, |acc, d| acc.checked_mul(*d))
            .filter(|n| *n > 0 && *n <= MAX_INPUT_ELEMENTS);
        if i.shape.is_empty() || elements.is_none() {
            return Err(Invalid(format!(
                "input.shape {:?} must have rank 1 or more and 1..={MAX_INPUT_ELEMENTS} elements (no zero dimension)",
                i.shape
            )));
        }
        if i.per_step() {
            if self.graphs.encoder.is_some() {
                return Err("input.time per_step cannot have graphs.encoder: the encoder runs once per request, before the first frame; fold it into step.onnx".into());
            }
            if self.graphs.policy.is_some() || self.exit.default_rule == RuleKind::Policy {
                return Err("input.time per_step cannot have a SEENN-II policy (graphs.policy, default_rule policy): the policy must see the whole input before the SNN runs, and a per_step request's frames arrive one per step".into());
            }
        }
        Ok(())
    }
}

/// Most values in one frame of a tensor input.
pub const MAX_INPUT_ELEMENTS: usize = 1 << 24;

/// An image input's checks: colour and channels agree, a bounded size, one mean and std per
/// channel, and a preprocessing that keeps every pixel finite.
fn validate_image_input(i: &InputSpec) -> Result<(), Invalid> {
    if !(i.color == Color::Grayscale && i.channels == 1 || i.color == Color::Rgb && i.channels == 3)
    {
        return Err(Invalid(format!(
            "input.color {:?} with {} channels: accepted are grayscale/1 and rgb/3",
            i.color, i.channels
        )));
    }
    if i.height == 0 || i.width == 0 || i.height > 4096 || i.width > 4096 {
        return Err(Invalid(format!(
            "input size {}x{} must be within 1..=4096",
            i.height, i.width
        )));
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
                return Err(Invalid(format!(
                        "input channel {c}: pixel {px} normalises to {v} with scale {}, mean {m}, std {sd}; it must stay finite in float32",
                        i.scale
                    )));
            }
        }
    }
    Ok(())
}

impl Calibration {
    pub fn validate(&self, timesteps: usize) -> Result<(), Invalid> {
        if self.accuracy_per_t.len() != timesteps {
            return Err(Invalid(format!(
                "accuracy_per_t has {} entries, the manifest says T = {timesteps}",
                self.accuracy_per_t.len()
            )));
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
                return Err(Invalid(format!("alpha_sweep row {r:?} is out of range")));
            }
        }
        for r in self.bias_sweep() {
            if !(r.bias_scale.is_finite() && r.accuracy.is_finite() && r.avg_timesteps.is_finite())
            {
                return Err(Invalid(format!(
                    "policy.bias_sweep row {r:?} is out of range"
                )));
            }
        }
        for r in self.threshold_sweep() {
            if !((0.0..=1.0).contains(&r.threshold)
                && r.accuracy.is_finite()
                && r.avg_timesteps.is_finite())
            {
                return Err(Invalid(format!(
                    "learned.threshold_sweep row {r:?} is out of range"
                )));
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

    /// A format-3 manifest with `input` and `exit` spliced in.
    fn manifest_with(input: &str, extra: &str) -> Result<Manifest, crate::model::PackageError> {
        let text = format!(
            r#"{{"format_version": 3, "name": "m", "version": "1", "labels": ["a", "b"],
                "input": {input}, "timesteps": 4,
                "exit": {{"aggregation": "last", "temperature": 1.0, "default_rule": "confidence",
                          "default_alpha": 0.9}},
                "graphs": {{"step": {{"file": "step.onnx", "input": "x", "logits": "logits",
                            "states": [{{"input": "v", "output": "vo", "shape": [3], "initial_value": 0.0}}]}}
                            {extra}}}}}"#
        );
        crate::model::parse_manifest(text.as_bytes())
    }

    #[test]
    fn tensor_inputs_read_with_their_shape_dtype_and_time() {
        let m = manifest_with(
            r#"{"kind": "tensor", "shape": [2, 16, 16], "dtype": "uint8", "time": "per_step"}"#,
            "",
        )
        .expect("parses");
        let i = &m.input;
        assert!(!i.is_image() && i.per_step());
        assert_eq!(
            (i.dims(), i.len(), i.dtype),
            (&[2, 16, 16][..], 512, Dtype::Uint8)
        );
        assert_eq!(
            i.expected(m.timesteps),
            "[t, 2, 16, 16] with 1 ≤ t ≤ 4, float32|uint8|bool"
        );
        assert_eq!(m.exit.aggregation, Aggregation::Last);
        // What the server writes back reads in again, unchanged.
        let again = crate::model::parse_manifest(&serde_json::to_vec(&m).expect("json"))
            .expect("round trip");
        assert_eq!(again.input, m.input);
        // `time` defaults to static.
        let s = manifest_with(
            r#"{"kind": "tensor", "shape": [7], "dtype": "float32"}"#,
            "",
        )
        .expect("static");
        assert!(!s.input.per_step());
        assert_eq!(s.input.expected(4), "[7] float32|uint8|bool");
    }

    #[test]
    fn bad_tensor_inputs_are_named_with_what_is_accepted() {
        let e = |input: &str, extra: &str| {
            crate::error::chain(&manifest_with(input, extra).unwrap_err())
        };
        let m = e(r#"{"kind": "audio", "shape": [2]}"#, "");
        assert!(
            m.contains("input.kind \"audio\"") && m.contains("accepted: image, tensor"),
            "{m}"
        );
        let m = e(r#"{"kind": "tensor", "shape": [2], "dtype": "int64"}"#, "");
        assert!(
            m.contains("\"int64\"") && m.contains("float32|uint8|bool"),
            "{m}"
        );
        let m = e(
            r#"{"kind": "tensor", "shape": [2], "dtype": "bool", "time": "streaming"}"#,
            "",
        );
        assert!(m.contains("accepted: static, per_step"), "{m}");
        let m = e(
            r#"{"kind": "tensor", "shape": [2, 0], "dtype": "bool"}"#,
            "",
        );
        assert!(m.contains("no zero dimension"), "{m}");
        let m = e(r#"{"kind": "tensor", "shape": [], "dtype": "bool"}"#, "");
        assert!(m.contains("rank 1 or more"), "{m}");
        let m = e(r#"{"kind": "tensor", "dtype": "bool"}"#, "");
        assert!(m.contains("input.shape is missing"), "{m}");
        let m = e(
            r#"{"kind": "tensor", "shape": [2], "dtype": "bool", "channels": 1}"#,
            "",
        );
        assert!(
            m.contains("input.channels belongs to kind \"image\""),
            "{m}"
        );
        let m = e(
            r#"{"channels": 1, "height": 2, "width": 2, "color": "grayscale", "scale": 1.0,
                "mean": [0], "std": [1], "time": "per_step"}"#,
            "",
        );
        assert!(m.contains("input.time belongs to kind \"tensor\""), "{m}");
        let m = e(
            r#"{"channels": 1, "height": 2, "width": 2, "color": "grayscale"}"#,
            "",
        );
        assert!(m.contains("input.scale is missing"), "{m}");
        let per_step = r#"{"kind": "tensor", "shape": [2], "dtype": "bool", "time": "per_step"}"#;
        let m = e(
            per_step,
            r#", "encoder": {"file": "e.onnx", "input": "x", "output": "f", "output_shape": [2]}"#,
        );
        assert!(m.contains("per_step cannot have graphs.encoder"), "{m}");
        let m = e(
            per_step,
            r#", "policy": {"file": "p.onnx", "input": "x", "output": "a", "actions": [1, 4]}"#,
        );
        assert!(m.contains("the policy must see the whole input"), "{m}");
        // A static tensor input may have both.
        manifest_with(
            r#"{"kind": "tensor", "shape": [2], "dtype": "bool"}"#,
            r#", "policy": {"file": "p.onnx", "input": "x", "output": "a", "actions": [1, 4]}"#,
        )
        .expect("static tensor with a policy");
    }

    #[test]
    fn tensor_inputs_and_last_need_format_3() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(dir.join("models/fashion-mnist/manifest.json"))
            .expect("committed manifest");
        let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
        v["exit"]["aggregation"] = "last".into();
        let e = crate::error::chain(
            &crate::model::parse_manifest(&serde_json::to_vec(&v).expect("json")).unwrap_err(),
        );
        assert!(e.contains("\"last\" needs format_version 3"), "{e}");
        v["format_version"] = 3.into();
        let m =
            crate::model::parse_manifest(&serde_json::to_vec(&v).expect("json")).expect("reads");
        assert!(m.input.is_image());
        assert_eq!(m.input.dims(), [1, 28, 28]);
        v["format_version"] = 2.into();
        v["exit"]["aggregation"] = "sum".into();
        v["input"] = serde_json::json!({"kind": "tensor", "shape": [4], "dtype": "float32"});
        v["graphs"]
            .as_object_mut()
            .expect("graphs")
            .remove("encoder");
        v["graphs"]
            .as_object_mut()
            .expect("graphs")
            .remove("policy");
        v["exit"]["default_rule"] = "confidence".into();
        let e = crate::error::chain(
            &crate::model::parse_manifest(&serde_json::to_vec(&v).expect("json")).unwrap_err(),
        );
        assert!(e.contains("needs format_version 3"), "{e}");
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
