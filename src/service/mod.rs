//! What every transport shares: model lookup, option validation, exit-rule resolution and
//! classification (`Service`), the exit-policy admin (`policy`), and start-up/drain (`lifecycle`).
//! Transports (HTTP, gRPC, Open Inference Protocol) hold an `Arc<Service>` and nothing else.

pub mod adaptive;
pub mod lifecycle;
pub mod models;
pub mod policy;
pub mod policy_file;
mod view;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::engine::{Job, Outcome, RequestRule, StepTrace};
use crate::error::{Error, Result};
use crate::exit::{ExitRule, RuleKind};
use crate::metrics::Metrics;
use crate::preprocess;
use crate::registry::{LoadedModel, Registry};
pub use lifecycle::Lifecycle;
pub use policy::{ExitPolicyUpdate, ExitPolicyView, PolicyAdmin};
pub use view::{CalibrationSummary, ExitScoreView, ModelView};

/// Classes returned when a request does not set `top_k`.
pub const DEFAULT_TOP_K: usize = 5;
/// Images larger than this are decoded on the blocking pool, so a big decode cannot stall the
/// async workers; smaller ones decode inline (cheaper than the hand-off).
pub const INLINE_DECODE_MAX_BYTES: usize = 256 * 1024;

/// Request limits every transport applies the same way.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Deadline of a request that sets none.
    pub request_timeout: Duration,
    pub max_image_pixels: u64,
    /// Largest body (HTTP) or message (gRPC) in bytes.
    pub max_body_bytes: usize,
    /// Most rows in one Open Inference Protocol request (the queue could not take more).
    pub max_rows: usize,
}

pub struct Service {
    pub registry: Registry,
    /// The `--models` folder, the state of every version, and loading after start-up.
    pub repository: crate::repository::Repository,
    pub policies: PolicyAdmin,
    pub lifecycle: Lifecycle,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Latencies of default-policy answers, read by the adaptive-α controller, and the shed
    /// levels it sets, read by the queue budget.
    pub latency: adaptive::LatencyWindows,
}

/// Per-request options, from the query string, JSON fields, multipart fields or gRPC.
#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClassifyOptions {
    /// Model name (default: the server's default model; on a named route, the same name).
    pub model: Option<String>,
    /// confidence | policy | fixed | learned (default: the model's exit policy).
    pub rule: Option<String>,
    /// Confidence threshold in (0, 1] (rule `confidence`).
    pub alpha: Option<f64>,
    /// Stop-probability threshold in [0, 1] (rule `learned`).
    pub threshold: Option<f64>,
    /// Cap on timesteps (the count for `fixed`).
    pub max_timesteps: Option<u64>,
    /// Number of classes to return (default 5).
    pub top_k: Option<u64>,
    /// Return the score and prediction at every timestep.
    pub explain: Option<bool>,
    /// Per-request deadline in milliseconds (default `--request-timeout`). When the next
    /// timestep would miss it, the answer is the prediction so far, flagged `deadline_exit`; a
    /// deadline that passes before the first timestep is 504.
    pub timeout_ms: Option<f64>,
}

/// The longest deadline a request may set (one day), in milliseconds.
pub const MAX_TIMEOUT_MS: f64 = crate::engine::MAX_DEADLINE.as_millis() as f64;

pub const OPTION_NAMES: &str =
    "model, rule, alpha, threshold, max_timesteps, top_k, explain, timeout_ms";

impl ClassifyOptions {
    /// Takes the deadline of a gRPC call (its `grpc-timeout` header: up to 8 digits and a unit,
    /// H M S m u n); where the request also set one of its own, the earlier of the two holds. The
    /// gRPC server cancels the call at that deadline, counted from when the call arrived, so the
    /// request aims a tenth of it earlier (at most 1 ms) for its answer to make it out. A header
    /// that does not parse is ignored, as the gRPC server itself ignores it; a request's own
    /// deadline that is not a deadline stays, to be refused. `metadata`: the call's (none over
    /// REST).
    pub fn take_grpc_deadline(&mut self, metadata: Option<&tonic::metadata::MetadataMap>) {
        let header = metadata
            .and_then(|m| m.get("grpc-timeout"))
            .and_then(|v| v.to_str().ok());
        let Some(h) = header.map(str::trim).filter(|h| h.len() >= 2) else {
            return;
        };
        let (digits, unit) = h.split_at(h.len() - 1);
        let Ok(n) = digits.parse::<u64>() else {
            return;
        };
        let ms_per_unit = match unit {
            "H" => 3_600_000.0,
            "M" => 60_000.0,
            "S" => 1_000.0,
            "m" => 1.0,
            "u" => 1e-3,
            "n" => 1e-6,
            _ => return,
        };
        let ms = n as f64 * ms_per_unit;
        if ms <= 0.0 {
            return;
        }
        let call = (ms - (ms / 10.0).min(1.0)).min(MAX_TIMEOUT_MS);
        self.timeout_ms = match self.timeout_ms {
            Some(own) if own.is_finite() && own > 0.0 => Some(own.min(call)),
            Some(not_a_deadline) => Some(not_a_deadline),
            None => Some(call),
        };
    }

    /// Whether the request runs under the model's default policy: no rule, α, threshold or cap of
    /// its own.
    pub fn uses_default_policy(&self) -> bool {
        self.alpha.is_none()
            && self.threshold.is_none()
            && self.rule.as_deref().is_none_or(str::is_empty)
            && self.max_timesteps.is_none()
    }

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
            "threshold" => self.threshold = Some(num(key, value, "a number in [0, 1]")?),
            "max_timesteps" => self.max_timesteps = Some(num(key, value, "a positive integer")?),
            "top_k" => self.top_k = Some(num(key, value, "a positive integer")?),
            "timeout_ms" => {
                self.timeout_ms = Some(num(key, value, "a positive number (milliseconds)")?)
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
    /// Encoded image bytes (image models).
    Image {
        bytes: Vec<u8>,
        hint: Option<image::ImageFormat>,
    },
    /// Values without a shape: an image model's preprocessed C×H×W floats, or a tensor model's
    /// frame (static) or frames back to back (per_step: t = values / frame size).
    Tensor(Vec<f32>),
    /// Values with their shape, already cast to float32: `[*dims]`, or `[t, *dims]` with
    /// 1 ≤ t ≤ T for a per_step model (`.npy` bodies, JSON `tensor` with `shape`, the Open
    /// Inference Protocol, gRPC tensors with a shape).
    Shaped { shape: Vec<usize>, data: Vec<f32> },
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
    /// The learned rule's threshold (rule `learned` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    pub timings: Timings,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trajectory: Option<Vec<StepTrace>>,
    pub request_id: String,
    /// Present (true) when the answer came before the exit rule fired, because the next
    /// timestep would have missed the request's deadline: the prediction and confidence after
    /// `timesteps_used` steps.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deadline_exit: bool,
}

impl Service {
    /// The model `name` names (the default one when absent or empty).
    pub fn model(&self, name: Option<&str>) -> Result<Arc<LoadedModel>> {
        self.registry.get(name)
    }

    /// Ready to serve: not draining and every engine up.
    pub fn is_ready(&self) -> bool {
        !self.lifecycle.is_draining() && self.registry.all_ready()
    }

    /// Checks `Authorization: Bearer <token>` for the admin endpoints.
    pub fn authorize(&self, header: Option<&str>) -> Result<()> {
        self.policies.authorize(header)
    }

    pub fn policy_view(&self, m: &LoadedModel) -> ExitPolicyView {
        PolicyAdmin::view(m, None)
    }

    /// Changes model `name`'s default exit policy (admin).
    pub fn set_exit_policy(&self, name: &str, u: ExitPolicyUpdate) -> Result<ExitPolicyView> {
        let m = self.model(Some(name))?;
        self.policies.set(&m, u)
    }

    /// The rule this request runs under: its overrides on top of the model's current default.
    pub fn resolve_rule(&self, m: &LoadedModel, o: &ClassifyOptions) -> Result<RequestRule> {
        let t_max = m.manifest.timesteps;
        let policy = m.exit_policy();
        let kind = match &o.rule {
            Some(r) if !r.is_empty() => RuleKind::parse(r).map_err(Error::invalid)?,
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
            policy::check_alpha(a)?;
        }
        if let Some(t) = o.threshold {
            policy::check_threshold(t)?;
        }
        if kind == RuleKind::Policy && m.manifest.input.per_step() {
            return Err(Error::invalid(format!(
                "model {} takes per_step frames: rule policy (SEENN-II) is not served, because the policy must see the whole input before the SNN runs and the frames arrive one per step; accepted rules: {}",
                m.manifest.name,
                m.accepted_rules()
            )));
        }
        if !m.serves(kind) {
            return Err(Error::invalid(format!(
                "model {} has no {} (rule {}); accepted rules: {}",
                m.manifest.name,
                if kind == RuleKind::Policy {
                    "policy network (policy.onnx)"
                } else {
                    "learned exit rule (exit.onnx)"
                },
                kind.as_str(),
                m.accepted_rules()
            )));
        }
        if o.threshold.is_some() && kind != RuleKind::Learned {
            return Err(Error::invalid(format!(
                "threshold applies to rule learned, this request runs rule {}; give alpha for rule confidence",
                kind.as_str()
            )));
        }
        if o.alpha.is_some() && kind == RuleKind::Learned {
            return Err(Error::invalid(
                "alpha applies to rule confidence; rule learned takes threshold",
            ));
        }
        Ok(match kind {
            RuleKind::Confidence => RequestRule::Confidence {
                alpha: o.alpha.unwrap_or(policy.alpha),
                max_timesteps: max_t.unwrap_or(t_max),
            },
            RuleKind::Policy => RequestRule::Policy {
                max_timesteps: max_t.unwrap_or(t_max),
                bias_scale: policy.bias_scale.unwrap_or(0.0),
            },
            RuleKind::Fixed => RequestRule::Fixed {
                timesteps: max_t.unwrap_or(policy.timesteps.min(t_max)),
            },
            RuleKind::Learned => RequestRule::Learned {
                threshold: o
                    .threshold
                    .or(m.learned_threshold_in(&policy))
                    .ok_or_else(|| Error::internal("the learned rule has no threshold"))?,
                max_timesteps: max_t.unwrap_or(t_max),
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
        // Held until this future ends or is dropped (client gone): drain waits for exactly the
        // requests that still exist.
        let in_flight = self.lifecycle.admit();
        let model = self.model(opts.model.as_deref()).ok();
        let result = match in_flight {
            Ok(_token) => {
                self.classify_inner(input, &opts, request_id, progress, started)
                    .await
            }
            Err(e) => Err(e),
        };
        let model_label = model
            .as_ref()
            .map(|m| m.manifest.name.as_str())
            .unwrap_or(crate::metrics::UNKNOWN_MODEL);
        // Adaptive α is about the requests it can change: those on the default policy. A shed
        // request missed the objective: it counts as a miss, so α stays at its floor while the
        // server sheds and the engine stays busy.
        if opts.uses_default_policy() {
            match &result {
                Ok(_) => self.latency.record(model_label, started.elapsed()),
                Err(Error::Shed(_)) => self.latency.record(model_label, adaptive::SHED_LATENCY),
                Err(_) => {}
            }
        }
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
        // Answers and server-side failures (deadline, engine) count toward latency, so a 504
        // reaches the p99; client errors and rejections answered at once would only dilute it.
        if matches!(
            &result,
            Ok(_) | Err(Error::DeadlineExceeded(_) | Error::Internal { .. })
        ) {
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
        let m = self.model(opts.model.as_deref())?;
        if !m.engine.is_ready() {
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
            None => DEFAULT_TOP_K.min(k),
        };
        let timeout = match opts.timeout_ms {
            Some(ms) if ms.is_finite() && ms > 0.0 && ms <= MAX_TIMEOUT_MS => {
                Duration::from_secs_f64(ms / 1e3)
            }
            Some(ms) => {
                return Err(Error::invalid(format!(
                    "timeout_ms {ms} is not a deadline; accepted: a number of milliseconds in (0, {MAX_TIMEOUT_MS}]"
                )))
            }
            None => self.limits.request_timeout,
        };
        let default_policy = opts.uses_default_policy();
        let (shadow_fraction, max_queue_wait) = if default_policy {
            self.default_policy_budget(&m)
        } else {
            (0.0, None)
        };
        // What the queue would refuse anyway is refused before the image is decoded, and so is a
        // deadline that has passed already.
        m.engine.check_admission(max_queue_wait)?;
        let deadline = started + timeout;
        m.engine.check_deadline(deadline)?;
        let tensor = self.input_tensor(&m, input).await?;
        m.engine.check_deadline(deadline)?;
        let (tx, rx) = oneshot::channel();
        let now = Instant::now();
        m.engine.submit(Job {
            input: tensor,
            rule,
            explain: opts.explain.unwrap_or(false),
            deadline,
            enqueued: now,
            reply: tx,
            progress,
            default_policy,
            shadow_fraction,
            max_queue_wait,
        })?;
        // While the traffic is one request at a time, poll for the answer instead of parking:
        // a parked tokio worker costs it a cross-core wake-up (Lifecycle::reply_spin).
        // The answer comes by the deadline, or at most one step after it (a step started before
        // the deadline may end after it), or not at all: a request still queued when that has
        // passed is answered 504 then, not when a worker reaches it; the engine drops the
        // abandoned row and counts it as a deadline cancellation.
        let reply = await_reply(rx, self.lifecycle.reply_spin(), || self.lifecycle.alone());
        let outcome = tokio::time::timeout_at((deadline + m.engine.answer_grace()).into(), reply)
            .await
            .map_err(|_| {
                Error::DeadlineExceeded("deadline passed before the request was answered".into())
            })?
            .ok_or_else(|| Error::internal("the engine dropped the request"))??;
        let mut result = answer(
            &m,
            outcome,
            top_k,
            opts.explain.unwrap_or(false),
            request_id,
        );
        result.timings.total_ms = started.elapsed().as_secs_f64() * 1e3;
        Ok(result)
    }

    /// A default-policy request's shadow fraction and queue budget, from one read of the policy.
    /// Only default-policy requests are shadowed and shed: shadow runs sample the default
    /// policy's early exits, to estimate what that policy (the α the calibration gauge describes)
    /// costs, not what clients chose themselves; under adaptive α with the dial at its accuracy
    /// floor the queue is bounded in time by the objective, and a default-policy request that
    /// could only be answered late is shed (429).
    fn default_policy_budget(&self, m: &LoadedModel) -> (f64, Option<Duration>) {
        let p = m.exit_policy();
        (
            p.shadow_fraction,
            adaptive::queue_budget(
                &p,
                m.learned_threshold_in(&p),
                self.latency.shed(&m.manifest.name),
            ),
        )
    }

    /// The engine input of a request: an image decoded and preprocessed (large ones off the
    /// async runtime), or a tensor checked against the model's input.
    async fn input_tensor(&self, m: &LoadedModel, input: Input) -> Result<Vec<f32>> {
        let spec = &m.manifest.input;
        let t_max = m.manifest.timesteps;
        match input {
            Input::Tensor(t) if spec.is_image() => {
                preprocess::check_tensor(&t, spec)?;
                Ok(t)
            }
            Input::Tensor(t) => {
                // A tensor model's flat values: one frame, or per_step whole frames.
                let frame = spec.len();
                let frames = t.len() / frame.max(1);
                let ok = if spec.per_step() {
                    t.len().is_multiple_of(frame) && (1..=t_max).contains(&frames)
                } else {
                    t.len() == frame
                };
                if !ok {
                    return Err(Error::invalid(format!(
                        "tensor has {} values without a shape; model {} takes {} ({frame} values a frame); give `shape` to say which",
                        t.len(),
                        m.manifest.name,
                        spec.expected(t_max)
                    )));
                }
                crate::npy::check_finite(&t).map_err(|e| Error::invalid(format!("tensor {e}")))?;
                Ok(t)
            }
            Input::Shaped { shape, data } => {
                crate::model::check_frames(spec, t_max, &shape)
                    .map_err(|e| Error::invalid(format!("model {}: {e}", m.manifest.name)))?;
                if data.len() != shape.iter().product::<usize>() {
                    return Err(Error::invalid(format!(
                        "tensor has {} values; shape {shape:?} needs {}",
                        data.len(),
                        shape.iter().product::<usize>()
                    )));
                }
                crate::npy::check_finite(&data)
                    .map_err(|e| Error::invalid(format!("tensor {e}")))?;
                Ok(data)
            }
            Input::Image { .. } if !spec.is_image() => {
                Err(Error::UnsupportedMediaType(format!(
                    "model {} takes a tensor, not an image: expected {}; send it as a .npy file (Content-Type application/x-npy), JSON {{\"tensor\": [values], \"shape\": [...]}}, the Open Inference Protocol's \"input\" tensor or gRPC Classify's `tensor`",
                    m.manifest.name,
                    spec.expected(t_max),
                )))
            }
            Input::Image { bytes, hint } => {
                let spec = spec.clone();
                let max_pixels = self.limits.max_image_pixels;
                if bytes.len() > INLINE_DECODE_MAX_BYTES {
                    tokio::task::spawn_blocking(move || {
                        preprocess::image_to_tensor(&bytes, hint, &spec, max_pixels)
                    })
                    .await
                    .map_err(|e| Error::internal_from("preprocessing task", e))?
                } else {
                    preprocess::image_to_tensor(&bytes, hint, &spec, max_pixels)
                }
            }
        }
    }
}

/// The answer to a request from the engine's outcome: the class, the `top_k` most probable
/// classes, the rule and its setting, the timings (the total is the caller's to fill in), and
/// with `explain` the trajectory.
fn answer(
    m: &LoadedModel,
    outcome: Outcome,
    top_k: usize,
    explain: bool,
    request_id: String,
) -> ClassifyResult {
    let mut ranked: Vec<(usize, f64)> = outcome.probabilities.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| {
        b.1.partial_cmp(&a.1)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.0.cmp(&b.0))
    });
    let labels = &m.manifest.labels;
    let label = |i: usize| labels.get(i).cloned().unwrap_or_default();
    let max_timesteps = outcome.rule.max_timesteps();
    let (alpha, threshold) = match outcome.rule {
        ExitRule::Confidence { alpha, .. } => (Some(alpha), None),
        ExitRule::Learned { threshold, .. } => (None, Some(threshold)),
        _ => (None, None),
    };
    ClassifyResult {
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
        threshold,
        timings: Timings {
            queue_ms: outcome.queue.as_secs_f64() * 1e3,
            inference_ms: outcome.inference.as_secs_f64() * 1e3,
            total_ms: 0.0,
        },
        trajectory: explain.then_some(outcome.trajectory),
        request_id,
        deadline_exit: outcome.deadline_exit,
    }
}

/// Waits for the engine's answer (None: the engine dropped the request), polling it for up to
/// `spin`, while `alone` holds, before the task parks. Between polls the task yields to the
/// runtime (other tasks and the I/O driver run), so the thread stays awake and the answer is
/// picked up without the wake-up of a parked worker thread, which on the 2-core reference machine
/// cost about 0.1 ms of the c=1 latency (BENCHMARKS.md, "Reply spin").
async fn await_reply<T>(
    mut rx: oneshot::Receiver<T>,
    spin: Duration,
    alone: impl Fn() -> bool,
) -> Option<T> {
    if !spin.is_zero() {
        let until = Instant::now() + spin;
        loop {
            match rx.try_recv() {
                Ok(v) => return Some(v),
                // The receiver is spent: awaiting it now would panic.
                Err(oneshot::error::TryRecvError::Closed) => return None,
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            if Instant::now() >= until || !alone() {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    rx.await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[test]
    fn a_grpc_deadline_is_taken_a_tenth_early_at_most_1_ms_and_the_earlier_holds() {
        let take = |h: Option<&str>, own: Option<f64>| {
            let mut o = ClassifyOptions {
                timeout_ms: own,
                ..Default::default()
            };
            let mut m = tonic::metadata::MetadataMap::new();
            if let Some(h) = h {
                m.insert("grpc-timeout", h.parse().expect("ASCII"));
            }
            o.take_grpc_deadline(Some(&m));
            o.timeout_ms
        };
        assert_eq!(take(Some("100m"), None), Some(99.0));
        assert_eq!(take(Some("5m"), None), Some(4.5));
        assert_eq!(take(Some("2S"), None), Some(1999.0));
        assert_eq!(take(Some("1H"), None), Some(3_599_999.0));
        assert!((take(Some("2000u"), None).expect("µs") - 1.8).abs() < 1e-9);
        // The earlier of the request's own deadline and the call's holds; a header that does not
        // parse is ignored, and an own deadline that is not one stays to be refused.
        assert_eq!(take(Some("100m"), Some(7.0)), Some(7.0));
        assert_eq!(take(Some("5m"), Some(7.0)), Some(4.5));
        assert_eq!(take(None, Some(7.0)), Some(7.0));
        assert_eq!(take(Some("5m"), Some(-1.0)), Some(-1.0));
        for bad in ["", "m", "12x", "-5m", "0m"] {
            assert_eq!(take(Some(bad), None), None, "{bad:?}");
        }
        assert_eq!(take(None, None), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn await_reply_gets_the_answer_whether_it_polls_or_parks() {
        // Sent during the spin, after the spin, and with no spin because of company.
        for (spin_us, alone, delay_ms) in [(50_000, true, 2), (100, true, 20), (50_000, false, 2)] {
            let (tx, rx) = oneshot::channel();
            let sender = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(delay_ms));
                tx.send(7).is_ok()
            });
            let got = await_reply(rx, Duration::from_micros(spin_us), || alone).await;
            assert_eq!(got, Some(7), "spin {spin_us} µs, alone {alone}");
            assert!(sender.join().expect("sender"));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn await_reply_reports_a_dropped_sender_at_once() {
        let (tx, rx) = oneshot::channel::<u32>();
        drop(tx);
        let started = Instant::now();
        let got = await_reply(rx, Duration::from_secs(5), || true).await;
        assert!(got.is_none());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "it span for {:?} on a closed channel",
            started.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn await_reply_stops_polling_when_company_arrives() {
        let company = Arc::new(AtomicBool::new(false));
        let (tx, rx) = oneshot::channel();
        let c = company.clone();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            c.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
            tx.send(1).is_ok()
        });
        let (before, after) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (b, a) = (before.clone(), after.clone());
        let alone = move || {
            let with_company = company.load(Ordering::SeqCst);
            if with_company { &a } else { &b }.fetch_add(1, Ordering::SeqCst);
            !with_company
        };
        assert_eq!(
            await_reply(rx, Duration::from_secs(5), alone).await,
            Some(1)
        );
        assert!(sender.join().expect("sender"));
        // It polled while alone, saw the company once and parked for the remaining 50 ms.
        assert!(before.load(Ordering::SeqCst) >= 2);
        assert_eq!(after.load(Ordering::SeqCst), 1);
    }
}
