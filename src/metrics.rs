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
    pub engine_step_cost: GaugeVec,
    pub deadline_exits_total: IntCounterVec,
    pub shadow_expected_agreement: GaugeVec,
    pub model_loads: IntCounterVec,
    pub model_unloads: IntCounterVec,
    pub model_serving_version: IntGaugeVec,
    pub model_swap_duration: HistogramVec,
}

/// The `model` label of a request rejected before its body named a model.
/// The labels of one loaded version.
#[derive(Debug, Clone, Copy)]
pub struct ModelSeries<'a> {
    pub version: &'a str,
    pub timesteps: usize,
    pub provider: &'a str,
}

pub const UNPARSED: &str = "_unparsed";
/// The `model` label of a request for a model that is not served.
pub const UNKNOWN_MODEL: &str = "_unknown";

fn latency_buckets() -> Vec<f64> {
    // 50 µs … ~26 s, ×1.5 per bucket.
    exponential_buckets(5e-5, 1.5, 33).unwrap_or_default()
}

/// One metric family: its name, help text and label names.
struct Spec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

const REQUESTS_TOTAL: Spec = Spec {
    name: "seenn_requests_total",
    help: "Classification requests by model, exit rule and status",
    labels: &["model", "rule", "status"],
};

const REQUEST_DURATION: Spec = Spec {
    name: "seenn_request_duration_seconds",
    help: "End-to-end request latency (decode, queue, inference)",
    labels: &["model", "rule"],
};

const QUEUE_DURATION: Spec = Spec {
    name: "seenn_queue_duration_seconds",
    help: "Time a request waited before its first timestep",
    labels: &["model"],
};

const INFERENCE_DURATION: Spec = Spec {
    name: "seenn_inference_duration_seconds",
    help: "Time from admission to answer (encoder, policy and all steps)",
    labels: &["model", "rule"],
};

const STEP_DURATION: Spec = Spec {
    name: "seenn_step_duration_seconds",
    help: "Duration of one batched step.onnx run",
    labels: &["model"],
};

const BATCH_SIZE: Spec = Spec {
    name: "seenn_batch_size",
    help: "Requests in one batched step.onnx run",
    labels: &["model"],
};

const TIMESTEPS_USED: Spec = Spec {
    name: "seenn_timesteps_used",
    help: "Timesteps each answered request ran (average = sum / count); policy=default: the request set no rule, alpha or max_timesteps",
    labels: &["model", "rule", "policy"],
};

const EXITS_TOTAL: Spec = Spec {
    name: "seenn_exits_total",
    help: "Answered requests by the timestep they exited at",
    labels: &["model", "rule", "policy", "timestep"],
};

const CANCELLED_TOTAL: Spec = Spec {
    name: "seenn_cancelled_total",
    help: "Requests that left the batch early (client gone or deadline passed)",
    labels: &["model", "reason"],
};

const STEPS_TOTAL: Spec = Spec {
    name: "seenn_request_steps_total",
    help: "Per-request timesteps computed (including cancelled requests)",
    labels: &["model"],
};

const ENGINE_FAILURES: Spec = Spec {
    name: "seenn_engine_failures_total",
    help: "Engine steps that failed (every request in the batch got 500)",
    labels: &["model"],
};

const QUEUE_DEPTH: Spec = Spec {
    name: "seenn_queue_depth",
    help: "Requests waiting in the queue",
    labels: &["model"],
};

const ACTIVE_REQUESTS: Spec = Spec {
    name: "seenn_active_requests",
    help: "Requests in the running batch",
    labels: &["model"],
};

const EXIT_ALPHA: Spec = Spec {
    name: "seenn_exit_alpha",
    help: "Current default confidence threshold α",
    labels: &["model"],
};

const EXIT_THRESHOLD: Spec = Spec {
    name: "seenn_exit_threshold",
    help: "Current default threshold of the learned exit rule (models with exit.onnx)",
    labels: &["model"],
};

const EXPECTED_AVG_TIMESTEPS: Spec = Spec {
    name: "seenn_expected_avg_timesteps",
    help: "Average timesteps calibration.json expects under the current default exit policy",
    labels: &["model"],
};

const QUEUE_CAPACITY: Spec = Spec {
    name: "seenn_queue_capacity",
    help: "Queue limit per model (--max-queue)",
    labels: &["model"],
};

const MODEL_INFO: Spec = Spec {
    name: "seenn_model_info",
    help: "Loaded models (value 1)",
    labels: &["model", "version", "timesteps", "provider"],
};

const MODEL_READY: Spec = Spec {
    name: "seenn_model_ready",
    help: "1 when the model serves",
    labels: &["model"],
};

const SHADOW_TOTAL: Spec = Spec {
    name: "seenn_shadow_total",
    help: "Shadow runs finished: early exits that kept running to T after their answer; agree: whether the answered class equals the full-T class",
    labels: &["model", "rule", "agree"],
};

const SHADOW_DROPPED: Spec = Spec {
    name: "seenn_shadow_dropped_total",
    help: "Sampled shadow runs not run to T: not started (shadow rows full, requests waiting) or evicted for live requests",
    labels: &["model"],
};

const SHADOW_STEPS: Spec = Spec {
    name: "seenn_shadow_steps_total",
    help: "Per-row timesteps computed for shadow runs (not in seenn_request_steps_total)",
    labels: &["model"],
};

const SHADOW_ROWS: Spec = Spec {
    name: "seenn_shadow_rows",
    help: "Shadow runs in the running batches (not in seenn_active_requests)",
    labels: &["model"],
};

const ENGINE_BUSY: Spec = Spec {
    name: "seenn_engine_busy_seconds_total",
    help: "Seconds the model's engine workers spent on work rather than waiting for a job, summed over workers",
    labels: &["model"],
};

const ENGINE_WORKERS: Spec = Spec {
    name: "seenn_engine_workers",
    help: "Engine worker threads per model",
    labels: &["model"],
};

const ENGINE_BATCH_LIMIT: Spec = Spec {
    name: "seenn_engine_batch_limit",
    help: "Most live requests per engine worker's batch now: the batch width chosen at load (at most --max-batch), lowered by adaptive alpha past its accuracy floor while the p99 objective is still missed",
    labels: &["model"],
};

const ENGINE_STEP_COST: Spec = Spec {
    name: "seenn_engine_step_cost_seconds",
    help: "The cost curve measured at load (--batch-width auto): seconds one request-step costs in a step over `rows` rows",
    labels: &["model", "rows"],
};

const DEADLINE_EXITS_TOTAL: Spec = Spec {
    name: "seenn_deadline_exits_total",
    help: "Requests answered early because the next timestep would have missed their deadline (flagged deadline_exit; also counted in seenn_exits_total)",
    labels: &["model", "rule"],
};

const SHADOW_EXPECTED_AGREEMENT: Spec = Spec {
    name: "seenn_shadow_expected_agreement",
    help: "Agreement of early exits with the full-T class that calibration.json (validation split) expects at the default policy's alpha",
    labels: &["model", "rule"],
};

const MODEL_LOADS: Spec = Spec {
    name: "seenn_model_loads_total",
    help: "Model loads through the repository API or poll mode (start-up not counted), by result: ok (serving) or failed (the previous version kept serving)",
    labels: &["model", "result"],
};

const MODEL_UNLOADS: Spec = Spec {
    name: "seenn_model_unloads_total",
    help:
        "Models unloaded through the repository API or because their folder went away (poll mode)",
    labels: &["model"],
};

const MODEL_SERVING_VERSION: Spec = Spec {
    name: "seenn_model_serving_version",
    help: "1 for the version of each model that takes new requests",
    labels: &["model", "version"],
};

const MODEL_SWAP_DURATION: Spec = Spec {
    name: "seenn_model_swap_duration_seconds",
    help: "From the start of a load to new requests going to the new version: package read, sessions built and warmed up, golden samples checked",
    labels: &["model"],
};

/// Makes metric families from their [`Spec`]s and registers each as it is made.
struct Families<'a>(&'a Registry);

impl Families<'_> {
    fn register<M: prometheus::core::Collector + Clone + 'static>(
        &self,
        m: M,
    ) -> prometheus::Result<M> {
        self.0.register(Box::new(m.clone()))?;
        Ok(m)
    }

    fn int_counter(&self, s: &Spec) -> prometheus::Result<IntCounterVec> {
        self.register(IntCounterVec::new(Opts::new(s.name, s.help), s.labels)?)
    }

    fn counter(&self, s: &Spec) -> prometheus::Result<CounterVec> {
        self.register(CounterVec::new(Opts::new(s.name, s.help), s.labels)?)
    }

    fn int_gauge(&self, s: &Spec) -> prometheus::Result<IntGaugeVec> {
        self.register(IntGaugeVec::new(Opts::new(s.name, s.help), s.labels)?)
    }

    fn gauge(&self, s: &Spec) -> prometheus::Result<GaugeVec> {
        self.register(GaugeVec::new(Opts::new(s.name, s.help), s.labels)?)
    }

    fn histogram(&self, s: &Spec, buckets: Vec<f64>) -> prometheus::Result<HistogramVec> {
        let opts = HistogramOpts::new(s.name, s.help).buckets(buckets);
        self.register(HistogramVec::new(opts, s.labels)?)
    }
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
        let f = Families(&registry);
        let m = Metrics {
            requests_total: f.int_counter(&REQUESTS_TOTAL)?,
            request_duration: f.histogram(&REQUEST_DURATION, latency_buckets())?,
            queue_duration: f.histogram(&QUEUE_DURATION, latency_buckets())?,
            inference_duration: f.histogram(&INFERENCE_DURATION, latency_buckets())?,
            step_duration: f.histogram(&STEP_DURATION, latency_buckets())?,
            batch_size: f.histogram(&BATCH_SIZE, batch_buckets)?,
            timesteps_used: f.histogram(&TIMESTEPS_USED, ts_buckets)?,
            exits_total: f.int_counter(&EXITS_TOTAL)?,
            cancelled_total: f.int_counter(&CANCELLED_TOTAL)?,
            steps_total: f.counter(&STEPS_TOTAL)?,
            engine_failures: f.int_counter(&ENGINE_FAILURES)?,
            queue_depth: f.int_gauge(&QUEUE_DEPTH)?,
            active_requests: f.int_gauge(&ACTIVE_REQUESTS)?,
            exit_alpha: f.gauge(&EXIT_ALPHA)?,
            exit_threshold: f.gauge(&EXIT_THRESHOLD)?,
            expected_avg_timesteps: f.gauge(&EXPECTED_AVG_TIMESTEPS)?,
            queue_capacity: f.int_gauge(&QUEUE_CAPACITY)?,
            model_info: f.int_gauge(&MODEL_INFO)?,
            model_ready: f.int_gauge(&MODEL_READY)?,
            shadow_total: f.int_counter(&SHADOW_TOTAL)?,
            shadow_dropped: f.int_counter(&SHADOW_DROPPED)?,
            shadow_steps: f.int_counter(&SHADOW_STEPS)?,
            shadow_rows: f.int_gauge(&SHADOW_ROWS)?,
            engine_busy: f.counter(&ENGINE_BUSY)?,
            engine_workers: f.int_gauge(&ENGINE_WORKERS)?,
            engine_batch_limit: f.int_gauge(&ENGINE_BATCH_LIMIT)?,
            engine_step_cost: f.gauge(&ENGINE_STEP_COST)?,
            deadline_exits_total: f.int_counter(&DEADLINE_EXITS_TOTAL)?,
            shadow_expected_agreement: f.gauge(&SHADOW_EXPECTED_AGREEMENT)?,
            model_loads: f.int_counter(&MODEL_LOADS)?,
            model_unloads: f.int_counter(&MODEL_UNLOADS)?,
            model_serving_version: f.int_gauge(&MODEL_SERVING_VERSION)?,
            model_swap_duration: f.histogram(
                &MODEL_SWAP_DURATION,
                vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
            )?,
            registry,
        };
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(m)
    }

    /// A version of `model` serves: its info and serving-version series replace the previous
    /// version's (`previous`: version, timesteps, provider).
    pub fn serving(
        &self,
        model: &str,
        version: ModelSeries<'_>,
        previous: Option<ModelSeries<'_>>,
    ) {
        if let Some(p) = previous {
            self.retire(model, p);
        }
        let t = version.timesteps.to_string();
        self.model_info
            .with_label_values(&[model, version.version, &t, version.provider])
            .set(1);
        self.model_serving_version
            .with_label_values(&[model, version.version])
            .set(1);
        self.model_ready.with_label_values(&[model]).set(1);
    }

    /// `model` no longer serves `version`: its series go (an unload also sets ready to 0).
    pub fn retire(&self, model: &str, version: ModelSeries<'_>) {
        let t = version.timesteps.to_string();
        let _ =
            self.model_info
                .remove_label_values(&[model, version.version, &t, version.provider]);
        let _ = self
            .model_serving_version
            .remove_label_values(&[model, version.version]);
    }

    /// Creates `model`'s load, unload and swap series at zero, so that a rate over them is
    /// defined before the first load.
    pub fn repository_series(&self, model: &str) {
        for result in ["ok", "failed"] {
            self.model_loads.with_label_values(&[model, result]);
        }
        self.model_unloads.with_label_values(&[model]);
        self.model_swap_duration.with_label_values(&[model]);
    }

    pub fn model_loaded(&self, model: &str, ok: bool) {
        self.model_loads
            .with_label_values(&[model, if ok { "ok" } else { "failed" }])
            .inc();
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
                        deadline_exits: self.deadline_exits_total.with_label_values(&[model, r]),
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
            step_cost: (self.engine_step_cost.clone(), model.to_string()),
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
    /// Answers given early because the next step would miss the deadline.
    pub deadline_exits: IntCounter,
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
    /// `seenn_engine_step_cost_seconds` and the model's label (its `rows` are known only once
    /// the curve is measured).
    step_cost: (GaugeVec, String),
}

impl ModelMetrics {
    /// The measured cost of one request-step in a step over `rows` rows.
    pub fn step_cost(&self, rows: usize) -> prometheus::Gauge {
        let (family, model) = &self.step_cost;
        family.with_label_values(&[model.as_str(), &rows.to_string()])
    }

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
