//! Every Prometheus metric the server exports, defined in one place.

use prometheus::{
    exponential_buckets, Counter, CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts,
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::exit::RuleKind;

pub struct Metrics {
    pub registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration: HistogramVec,
    pub queue_duration: HistogramVec,
    pub inference_duration: HistogramVec,
    pub step_duration: HistogramVec,
    pub batch_size: HistogramVec,
    pub timesteps_used: HistogramVec,
    pub exits_total: IntCounterVec,
    pub cancelled_total: IntCounterVec,
    pub steps_total: CounterVec,
    pub engine_failures: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub active_requests: IntGaugeVec,
    pub exit_alpha: GaugeVec,
    pub exit_threshold: GaugeVec,
    pub expected_avg_timesteps: GaugeVec,
    pub queue_capacity: IntGaugeVec,
    pub model_info: IntGaugeVec,
    pub model_ready: IntGaugeVec,
    pub shadow_total: IntCounterVec,
    pub shadow_dropped: IntCounterVec,
    pub shadow_steps: IntCounterVec,
    pub shadow_rows: IntGaugeVec,
    pub engine_busy: CounterVec,
    pub engine_workers: IntGaugeVec,
    pub engine_batch_limit: IntGaugeVec,
    pub shadow_expected_agreement: GaugeVec,
}

/// The `model` label of a request rejected before its body named a model.
pub const UNPARSED: &str = "_unparsed";
/// The `model` label of a request for a model that is not served.
pub const UNKNOWN_MODEL: &str = "_unknown";

fn latency_buckets() -> Vec<f64> {
    // 50 µs … ~26 s, ×1.5 per bucket.
    exponential_buckets(5e-5, 1.5, 33).unwrap_or_default()
}

impl Metrics {
    /// `max_timesteps` is the largest T among the models: `seenn_timesteps_used` gets buckets 1..T.
    pub fn new(max_timesteps: usize, max_batch: usize) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let ts_buckets: Vec<f64> = (1..=max_timesteps.max(1)).map(|t| t as f64).collect();
        let mut batch_buckets = vec![1.0];
        while *batch_buckets.last().unwrap_or(&1.0) < max_batch as f64 {
            let next = batch_buckets.last().unwrap_or(&1.0) * 2.0;
            batch_buckets.push(next);
        }
        let h = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        };
        let m = Metrics {
            requests_total: IntCounterVec::new(
                Opts::new(
                    "seenn_requests_total",
                    "Classification requests by model, exit rule and status",
                ),
                &["model", "rule", "status"],
            )?,
            request_duration: h(
                "seenn_request_duration_seconds",
                "End-to-end request latency (decode, queue, inference)",
                &["model", "rule"],
                latency_buckets(),
            )?,
            queue_duration: h(
                "seenn_queue_duration_seconds",
                "Time a request waited before its first timestep",
                &["model"],
                latency_buckets(),
            )?,
            inference_duration: h(
                "seenn_inference_duration_seconds",
                "Time from admission to answer (encoder, policy and all steps)",
                &["model", "rule"],
                latency_buckets(),
            )?,
            step_duration: h(
                "seenn_step_duration_seconds",
                "Duration of one batched step.onnx run",
                &["model"],
                latency_buckets(),
            )?,
            batch_size: h(
                "seenn_batch_size",
                "Requests in one batched step.onnx run",
                &["model"],
                batch_buckets,
            )?,
            timesteps_used: h(
                "seenn_timesteps_used",
                "Timesteps each answered request ran (average = sum / count); policy=default: the request set no rule, alpha or max_timesteps",
                &["model", "rule", "policy"],
                ts_buckets,
            )?,
            exits_total: IntCounterVec::new(
                Opts::new(
                    "seenn_exits_total",
                    "Answered requests by the timestep they exited at",
                ),
                &["model", "rule", "policy", "timestep"],
            )?,
            cancelled_total: IntCounterVec::new(
                Opts::new(
                    "seenn_cancelled_total",
                    "Requests that left the batch early (client gone or deadline passed)",
                ),
                &["model", "reason"],
            )?,
            steps_total: CounterVec::new(
                Opts::new(
                    "seenn_request_steps_total",
                    "Per-request timesteps computed (including cancelled requests)",
                ),
                &["model"],
            )?,
            engine_failures: IntCounterVec::new(
                Opts::new(
                    "seenn_engine_failures_total",
                    "Engine steps that failed (every request in the batch got 500)",
                ),
                &["model"],
            )?,
            queue_depth: IntGaugeVec::new(
                Opts::new("seenn_queue_depth", "Requests waiting in the queue"),
                &["model"],
            )?,
            active_requests: IntGaugeVec::new(
                Opts::new("seenn_active_requests", "Requests in the running batch"),
                &["model"],
            )?,
            exit_alpha: GaugeVec::new(
                Opts::new("seenn_exit_alpha", "Current default confidence threshold α"),
                &["model"],
            )?,
            exit_threshold: GaugeVec::new(
                Opts::new(
                    "seenn_exit_threshold",
                    "Current default threshold of the learned exit rule (models with exit.onnx)",
                ),
                &["model"],
            )?,
            expected_avg_timesteps: GaugeVec::new(
                Opts::new(
                    "seenn_expected_avg_timesteps",
                    "Average timesteps calibration.json expects under the current default exit policy",
                ),
                &["model"],
            )?,
            queue_capacity: IntGaugeVec::new(Opts::new("seenn_queue_capacity", "Queue limit per model (--max-queue)"), &["model"])?,
            model_info: IntGaugeVec::new(
                Opts::new("seenn_model_info", "Loaded models (value 1)"),
                &["model", "version", "timesteps", "provider"],
            )?,
            model_ready: IntGaugeVec::new(
                Opts::new("seenn_model_ready", "1 when the model serves"),
                &["model"],
            )?,
            shadow_total: IntCounterVec::new(
                Opts::new(
                    "seenn_shadow_total",
                    "Shadow runs finished: early exits that kept running to T after their answer; agree: whether the answered class equals the full-T class",
                ),
                &["model", "rule", "agree"],
            )?,
            shadow_dropped: IntCounterVec::new(
                Opts::new(
                    "seenn_shadow_dropped_total",
                    "Sampled shadow runs not run to T: not started (shadow rows full, requests waiting) or evicted for live requests",
                ),
                &["model"],
            )?,
            shadow_steps: IntCounterVec::new(
                Opts::new(
                    "seenn_shadow_steps_total",
                    "Per-row timesteps computed for shadow runs (not in seenn_request_steps_total)",
                ),
                &["model"],
            )?,
            shadow_rows: IntGaugeVec::new(
                Opts::new(
                    "seenn_shadow_rows",
                    "Shadow runs in the running batches (not in seenn_active_requests)",
                ),
                &["model"],
            )?,
            engine_busy: CounterVec::new(
                Opts::new(
                    "seenn_engine_busy_seconds_total",
                    "Seconds the model's engine workers spent on work rather than waiting for a job, summed over workers",
                ),
                &["model"],
            )?,
            engine_workers: IntGaugeVec::new(
                Opts::new("seenn_engine_workers", "Engine worker threads per model"),
                &["model"],
            )?,
            engine_batch_limit: IntGaugeVec::new(
                Opts::new(
                    "seenn_engine_batch_limit",
                    "Most live requests per engine worker's batch now: --max-batch, lowered by adaptive alpha past its accuracy floor while the p99 objective is still missed",
                ),
                &["model"],
            )?,
            shadow_expected_agreement: GaugeVec::new(
                Opts::new(
                    "seenn_shadow_expected_agreement",
                    "Agreement of early exits with the full-T class that calibration.json (validation split) expects at the default policy's alpha",
                ),
                &["model", "rule"],
            )?,
            registry,
        };
        macro_rules! reg {
            ($($f:ident),*) => { $( m.registry.register(Box::new(m.$f.clone()))?; )* };
        }
        reg!(
            requests_total,
            request_duration,
            queue_duration,
            inference_duration,
            step_duration,
            batch_size,
            timesteps_used,
            exits_total,
            cancelled_total,
            steps_total,
            engine_failures,
            queue_depth,
            active_requests,
            exit_alpha,
            exit_threshold,
            expected_avg_timesteps,
            queue_capacity,
            model_info,
            model_ready,
            shadow_total,
            shadow_dropped,
            shadow_steps,
            shadow_rows,
            shadow_expected_agreement,
            engine_busy,
            engine_workers,
            engine_batch_limit
        );
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(m)
    }

    /// Binds every per-model series of `model` (T = `timesteps`) once.
    pub fn for_model(&self, model: &str, timesteps: usize) -> ModelMetrics {
        let rules = RuleKind::ALL
            .iter()
            .flat_map(|k| [(*k, true), (*k, false)])
            .map(|(k, default_policy)| {
                let r = k.as_str();
                let p = if default_policy { "default" } else { "custom" };
                (
                    (k, default_policy),
                    RuleMetrics {
                        timesteps_used: self.timesteps_used.with_label_values(&[model, r, p]),
                        inference_duration: self.inference_duration.with_label_values(&[model, r]),
                        exits: (1..=timesteps.max(1))
                            .map(|t| {
                                self.exits_total
                                    .with_label_values(&[model, r, p, &t.to_string()])
                            })
                            .collect(),
                    },
                )
            })
            .collect();
        ModelMetrics {
            queue_depth: self.queue_depth.with_label_values(&[model]),
            queue_duration: self.queue_duration.with_label_values(&[model]),
            active_requests: self.active_requests.with_label_values(&[model]),
            step_duration: self.step_duration.with_label_values(&[model]),
            batch_size: self.batch_size.with_label_values(&[model]),
            steps_total: self.steps_total.with_label_values(&[model]),
            engine_failures: self.engine_failures.with_label_values(&[model]),
            model_ready: self.model_ready.with_label_values(&[model]),
            cancelled: CancelReason::ALL
                .map(|r| self.cancelled_total.with_label_values(&[model, r.as_str()])),
            rules,
            shadow: RuleKind::ALL
                .map(|k| {
                    (
                        k,
                        ["true", "false"].map(|agree| {
                            self.shadow_total
                                .with_label_values(&[model, k.as_str(), agree])
                        }),
                    )
                })
                .to_vec(),
            shadow_dropped: self.shadow_dropped.with_label_values(&[model]),
            shadow_steps: self.shadow_steps.with_label_values(&[model]),
            shadow_rows: self.shadow_rows.with_label_values(&[model]),
            engine_busy: self.engine_busy.with_label_values(&[model]),
            engine_workers: self.engine_workers.with_label_values(&[model]),
            engine_batch_limit: self.engine_batch_limit.with_label_values(&[model]),
        }
    }

    /// Counts a request rejected before it named a model (admission, unreadable body).
    pub fn count_rejected(&self, status: u16) {
        self.requests_total
            .with_label_values(&[UNPARSED, "none", &status.to_string()])
            .inc();
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!("metrics encoding failed: {e}");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Why a request left the batch before its exit rule fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The client closed the connection or dropped the stream.
    ClientGone,
    /// The request's deadline passed.
    Deadline,
    /// Shed under adaptive α: it waited in the queue longer than the objective's budget.
    QueueBudget,
}

impl CancelReason {
    pub const ALL: [CancelReason; 3] = [
        CancelReason::ClientGone,
        CancelReason::Deadline,
        CancelReason::QueueBudget,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::ClientGone => "client_gone",
            CancelReason::Deadline => "deadline",
            CancelReason::QueueBudget => "queue_budget",
        }
    }
}

/// The series of one rule of one model, bound once.
pub struct RuleMetrics {
    pub timesteps_used: Histogram,
    pub inference_duration: Histogram,
    /// `exits[t - 1]`: answered requests that exited at timestep t.
    pub exits: Vec<IntCounter>,
}

/// One model's series, bound to its label once at load so the engine's hot path does no label
/// lookups. Creating the handles also creates the series at zero, so rates and alerts have data
/// before the first event.
pub struct ModelMetrics {
    pub queue_depth: IntGauge,
    pub queue_duration: Histogram,
    pub active_requests: IntGauge,
    pub step_duration: Histogram,
    pub batch_size: Histogram,
    pub steps_total: Counter,
    pub engine_failures: IntCounter,
    pub model_ready: IntGauge,
    cancelled: [IntCounter; CancelReason::ALL.len()],
    rules: Vec<((RuleKind, bool), RuleMetrics)>,
    /// `seenn_shadow_total` per rule: `[agree="true", agree="false"]`.
    shadow: Vec<(RuleKind, [IntCounter; 2])>,
    pub shadow_dropped: IntCounter,
    pub shadow_steps: IntCounter,
    pub shadow_rows: IntGauge,
    /// Busy seconds summed over the model's workers (the adaptive-α controller's utilization).
    pub engine_busy: Counter,
    pub engine_workers: IntGauge,
    pub engine_batch_limit: IntGauge,
}

impl ModelMetrics {
    pub fn cancelled(&self, reason: CancelReason) -> &IntCounter {
        &self.cancelled[reason as usize]
    }

    /// The series of `kind`, for requests on the default policy or their own.
    pub fn rule(&self, kind: RuleKind, default_policy: bool) -> &RuleMetrics {
        // Every pair is bound in `Metrics::for_model`; the first entry is only a fallback.
        self.rules
            .iter()
            .find(|(k, _)| *k == (kind, default_policy))
            .map(|(_, r)| r)
            .unwrap_or(&self.rules[0].1)
    }

    /// `seenn_shadow_total` of a shadow run of an answer under `kind` that did (or did not) agree
    /// with the full-T class.
    pub fn shadow(&self, kind: RuleKind, agree: bool) -> &IntCounter {
        let pair = self
            .shadow
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, p)| p)
            .unwrap_or(&self.shadow[0].1);
        &pair[usize::from(!agree)]
    }
}
