//! The timestep engine: one scheduler thread per model that owns the model's ONNX Runtime sessions
//! and batches continuously over timesteps.
//!
//! Loop: admit waiting requests up to `max_batch` → run the encoder (and the SEENN-II policy) once
//! for the newcomers → run `step.onnx` once for every active request, whatever its timestep → add
//! each request's logits to its running sum and apply its exit rule → answer finished requests at
//! once → repeat. Membranes stay in the ONNX Runtime output tensors and are fed straight back while
//! the batch does not change; they are gathered into new tensors only when requests join or leave.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ort::value::{DynValue, Tensor};
use tokio::sync::{mpsc as tmpsc, oneshot, watch};

use crate::error::Error;
use crate::exit::{self, ExitRule};
use crate::graphs::{self, Sessions};
use crate::metrics::{CancelReason, ModelMetrics};
use crate::model::manifest::{Aggregation, Manifest};

/// How a request asked to exit; resolved against the model when it is admitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RequestRule {
    Confidence { alpha: f64, max_timesteps: usize },
    Policy { max_timesteps: usize },
    Fixed { timesteps: usize },
}

/// One timestep of a request's run: the exit score and prediction after aggregating steps 1..=t.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct StepTrace {
    pub t: usize,
    pub score: f64,
    pub class_id: usize,
    pub probabilities: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub class_id: usize,
    pub confidence: f64,
    pub probabilities: Vec<f64>,
    pub timesteps_used: usize,
    pub rule: ExitRule,
    pub trajectory: Vec<StepTrace>,
    pub queue: Duration,
    pub inference: Duration,
}

pub struct Job {
    pub input: Vec<f32>,
    pub rule: RequestRule,
    pub explain: bool,
    pub deadline: Instant,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<Result<Outcome, Error>>,
    /// Receives every step's trace as it is computed (gRPC ClassifyStream).
    pub progress: Option<tmpsc::UnboundedSender<StepTrace>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Batching {
    /// Requests join the running batch at every timestep and leave when they exit.
    Continuous,
    /// A batch is admitted only when the previous one has fully finished (for comparison).
    Static,
}

/// Switches that turn one optimisation off, to measure what it buys (`--ablate`). Not for serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ablation {
    /// Run the encoder (first conv + BN) at every timestep instead of once per request, as a
    /// network that repeats its whole forward pass each step does.
    EncoderEveryStep,
    /// Copy the membranes out of ONNX Runtime's outputs into new input tensors after every step
    /// instead of feeding the output values back.
    CopyMembranes,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub max_batch: usize,
    pub max_queue: usize,
    pub batching: Batching,
    pub ablations: Vec<Ablation>,
}

impl EngineConfig {
    fn ablates(&self, a: Ablation) -> bool {
        self.ablations.contains(&a)
    }
}

/// The handle the API holds: a bounded queue into the engine thread.
pub struct EngineHandle {
    tx: SyncSender<Job>,
    depth: Arc<AtomicUsize>,
    ready: watch::Receiver<bool>,
    max_queue: usize,
    model: String,
    metrics: Arc<ModelMetrics>,
    /// Test-only fault switch: the next step fails inside the engine thread.
    pub inject_fault: Arc<AtomicBool>,
}

impl EngineHandle {
    pub fn submit(&self, job: Job) -> Result<(), Error> {
        // Counted before the send so the engine's decrement can never run first.
        let d = self.depth.fetch_add(1, Ordering::SeqCst) + 1;
        let result = self.tx.try_send(job);
        if result.is_err() {
            self.depth.fetch_sub(1, Ordering::SeqCst);
        }
        match result {
            Ok(()) => {
                self.metrics.queue_depth.set(d as i64);
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(Error::Overloaded {
                model: self.model.clone(),
                depth: self.max_queue,
                retry_after_s: 1,
            }),
            Err(TrySendError::Disconnected(_)) => Err(Error::Unavailable(format!(
                "model {} is not running",
                self.model
            ))),
        }
    }

    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    /// Whether the engine serves (false while it recovers from a failed step).
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Readiness as it changes, for whoever mirrors it (gRPC health).
    pub fn watch_ready(&self) -> watch::Receiver<bool> {
        self.ready.clone()
    }
}

struct Active {
    job: Job,
    features: Vec<f32>,
    rule: ExitRule,
    sum: Vec<f64>,
    t: usize,
    /// This job's row in the carried tensors, `None` until it has run a step in them.
    row: Option<usize>,
    trajectory: Vec<StepTrace>,
    admitted: Instant,
}

struct Carried {
    features: DynValue,
    states: Vec<DynValue>,
}

struct Engine {
    manifest: Arc<Manifest>,
    sessions: Sessions,
    cfg: EngineConfig,
    metrics: Arc<ModelMetrics>,
    depth: Arc<AtomicUsize>,
    ready: watch::Sender<bool>,
    inject_fault: Arc<AtomicBool>,
    active: Vec<Active>,
    carried: Option<Carried>,
    /// Whether `carried` rows are exactly `active` in order.
    rows_match: bool,
    feature_len: usize,
}

pub fn spawn(
    manifest: Arc<Manifest>,
    sessions: Sessions,
    cfg: EngineConfig,
    metrics: Arc<ModelMetrics>,
) -> Result<EngineHandle, Error> {
    let (tx, rx) = mpsc::sync_channel(cfg.max_queue.max(1));
    let depth = Arc::new(AtomicUsize::new(0));
    let (ready_tx, ready) = watch::channel(true);
    let inject_fault = Arc::new(AtomicBool::new(false));
    let feature_len = match &manifest.graphs.encoder {
        Some(e) => e.output_shape.iter().product(),
        None => manifest.input.len(),
    };
    let model = manifest.name.clone();
    let mut engine = Engine {
        manifest,
        sessions,
        cfg: cfg.clone(),
        metrics: metrics.clone(),
        depth: depth.clone(),
        ready: ready_tx,
        inject_fault: inject_fault.clone(),
        active: Vec::new(),
        carried: None,
        rows_match: false,
        feature_len,
    };
    std::thread::Builder::new()
        .name(format!("engine-{model}"))
        .spawn(move || engine.run(rx))
        .map_err(|e| Error::internal(format!("cannot start the engine thread: {e}")))?;
    Ok(EngineHandle {
        tx,
        depth,
        ready,
        max_queue: cfg.max_queue,
        model,
        metrics,
        inject_fault,
    })
}

fn ort_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{what}: {e}"))
}

/// A fresh tensor holding a copy of `v`'s data (the `copy-membranes` ablation).
fn copy_value(v: DynValue) -> Result<DynValue, Error> {
    let (shape, data) = v
        .try_extract_tensor::<f32>()
        .map_err(|e| ort_err("membrane", e))?;
    let dims: Vec<usize> = shape.iter().map(|d| *d as usize).collect();
    Ok(Tensor::from_array((dims, data.to_vec()))
        .map_err(|e| ort_err("membrane tensor", e))?
        .into_dyn())
}

impl Engine {
    fn model(&self) -> &str {
        &self.manifest.name
    }

    fn run(&mut self, rx: Receiver<Job>) {
        tracing::info!(model = %self.model(), max_batch = self.cfg.max_batch, batching = ?self.cfg.batching, "engine started");
        loop {
            let mut newcomers = Vec::new();
            if self.active.is_empty() {
                // Idle: sleep on the queue until work arrives or every handle is gone.
                match rx.recv() {
                    Ok(job) => newcomers.push(job),
                    Err(_) => break,
                }
            }
            let may_admit = self.cfg.batching == Batching::Continuous || self.active.is_empty();
            while may_admit && self.active.len() + newcomers.len() < self.cfg.max_batch {
                match rx.try_recv() {
                    Ok(job) => newcomers.push(job),
                    Err(_) => break,
                }
            }
            if !newcomers.is_empty() {
                let d = self.depth.fetch_sub(newcomers.len(), Ordering::SeqCst) - newcomers.len();
                self.metrics.queue_depth.set(d as i64);
                self.admit(newcomers);
            }
            self.drop_abandoned();
            if self.active.is_empty() {
                continue;
            }
            if let Err(e) = self.step() {
                self.fail_all(e);
            }
        }
        tracing::info!(model = %self.model(), "engine stopped");
    }

    /// Answers every active request with `e`, forgets the batch, reports unready, and re-checks
    /// the sessions with a self-test run until they work again.
    fn fail_all(&mut self, e: Error) {
        let model = self.manifest.name.clone();
        tracing::error!(model = %model, error = %e, requests = self.active.len(), "engine step failed");
        self.ready.send_replace(false);
        self.metrics.model_ready.set(0);
        self.metrics.engine_failures.inc();
        for a in self.active.drain(..) {
            let _ = a.job.reply.send(Err(e.clone()));
        }
        self.carried = None;
        self.rows_match = false;
        self.metrics.active_requests.set(0);
        let mut backoff = Duration::from_millis(100);
        loop {
            match graphs::warm_up(&mut self.sessions, &self.manifest) {
                Ok(()) => break,
                Err(err) => {
                    tracing::error!(model = %model, error = %err, "engine self-test failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        self.ready.send_replace(true);
        self.metrics.model_ready.set(1);
        tracing::info!(model = %model, "engine recovered");
    }

    fn cancel(&self, a: Active, reason: CancelReason) {
        self.metrics.cancelled(reason).inc();
        if reason == CancelReason::Deadline {
            let _ = a.job.reply.send(Err(Error::DeadlineExceeded(format!(
                "deadline passed after {} of the request's timesteps",
                a.t
            ))));
        }
    }

    fn is_abandoned(job: &Job) -> bool {
        job.reply.is_closed() || job.progress.as_ref().is_some_and(|p| p.is_closed())
    }

    /// Requests whose client went away or whose deadline passed leave the batch before the next step.
    fn drop_abandoned(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.active.len() {
            let reason = if Self::is_abandoned(&self.active[i].job) {
                Some(CancelReason::ClientGone)
            } else if now >= self.active[i].job.deadline {
                Some(CancelReason::Deadline)
            } else {
                None
            };
            match reason {
                Some(r) => {
                    let a = self.active.remove(i);
                    self.rows_match = false;
                    self.cancel(a, r);
                }
                None => i += 1,
            }
        }
        // Cancellation can empty the batch with no step left to publish the new size.
        self.metrics.active_requests.set(self.active.len() as i64);
    }

    fn admit(&mut self, jobs: Vec<Job>) {
        let now = Instant::now();
        let mut fresh = Vec::with_capacity(jobs.len());
        for job in jobs {
            let queued = now.saturating_duration_since(job.enqueued);
            self.metrics.queue_duration.observe(queued.as_secs_f64());
            if Self::is_abandoned(&job) {
                self.metrics.cancelled(CancelReason::ClientGone).inc();
            } else if now >= job.deadline {
                self.metrics.cancelled(CancelReason::Deadline).inc();
                let _ = job.reply.send(Err(Error::DeadlineExceeded(
                    "deadline passed while the request waited in the queue".into(),
                )));
            } else {
                fresh.push(job);
            }
        }
        if fresh.is_empty() {
            return;
        }
        match self.prepare(&fresh) {
            Ok((features, actions)) => {
                let k = self.manifest.num_classes();
                for (i, job) in fresh.into_iter().enumerate() {
                    let rule = match job.rule {
                        RequestRule::Confidence {
                            alpha,
                            max_timesteps,
                        } => ExitRule::Confidence {
                            alpha,
                            max_timesteps,
                        },
                        RequestRule::Fixed { timesteps } => ExitRule::Fixed { timesteps },
                        RequestRule::Policy { max_timesteps } => ExitRule::Policy {
                            timesteps: actions
                                .get(i)
                                .copied()
                                .unwrap_or(max_timesteps)
                                .clamp(1, max_timesteps),
                        },
                    };
                    self.active.push(Active {
                        features: features[i * self.feature_len..(i + 1) * self.feature_len]
                            .to_vec(),
                        rule,
                        sum: vec![0.0; k],
                        t: 0,
                        row: None,
                        trajectory: Vec::new(),
                        admitted: now,
                        job,
                    });
                }
                self.rows_match = false;
            }
            Err(e) => {
                tracing::error!(model = %self.model(), error = %e, "encoder/policy failed");
                for job in fresh {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Runs the encoder (and the policy, when a newcomer asked for it) once for the newcomers.
    fn prepare(&mut self, jobs: &[Job]) -> Result<(Vec<f32>, Vec<usize>), Error> {
        let m = jobs.len();
        let spec = &self.manifest.input;
        let mut batch = Vec::with_capacity(m * spec.len());
        for j in jobs {
            batch.extend_from_slice(&j.input);
        }
        let shape = vec![m, spec.channels, spec.height, spec.width];
        let wants_policy = jobs
            .iter()
            .any(|j| matches!(j.rule, RequestRule::Policy { .. }));
        let actions = match (
            &mut self.sessions.policy,
            &self.manifest.graphs.policy,
            wants_policy,
        ) {
            (Some(session), Some(g), true) => {
                let logits = graphs::run_single_input(
                    session,
                    &g.input,
                    &g.output,
                    shape.clone(),
                    batch.clone(),
                )?;
                let a = g.actions.len();
                logits
                    .chunks(a)
                    .map(|row| {
                        let mut best = 0;
                        for (i, v) in row.iter().enumerate() {
                            if *v > row[best] {
                                best = i;
                            }
                        }
                        g.actions[best]
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        let features = match (&mut self.sessions.encoder, &self.manifest.graphs.encoder) {
            // The encoder runs in every step instead (measurement only).
            (Some(_), Some(_)) if self.cfg.ablates(Ablation::EncoderEveryStep) => {
                vec![0.0; m * self.feature_len]
            }
            (Some(session), Some(g)) => {
                graphs::run_single_input(session, &g.input, &g.output, shape, batch)?
            }
            _ => batch,
        };
        if features.len() != m * self.feature_len {
            return Err(Error::internal(format!(
                "encoder returned {} values for {m} inputs, expected {} each",
                features.len(),
                self.feature_len
            )));
        }
        Ok((features, actions))
    }

    /// The encoder over every active request's input (the `encoder-every-step` ablation).
    fn encode_active(&mut self) -> Result<DynValue, Error> {
        let spec = &self.manifest.input;
        let n = self.active.len();
        let mut batch = Vec::with_capacity(n * spec.len());
        for a in &self.active {
            batch.extend_from_slice(&a.job.input);
        }
        let (Some(session), Some(g)) = (&mut self.sessions.encoder, &self.manifest.graphs.encoder)
        else {
            return Err(Error::internal("the model has no encoder graph"));
        };
        let shape = vec![n, spec.channels, spec.height, spec.width];
        let features = graphs::run_single_input(session, &g.input, &g.output, shape, batch)?;
        let mut fshape = vec![n];
        fshape.extend_from_slice(&g.output_shape);
        Ok(Tensor::from_array((fshape, features))
            .map_err(|e| ort_err("features tensor", e))?
            .into_dyn())
    }

    /// Builds the batch tensors for the current `active` list, keeping each request's membranes.
    fn gather(&mut self) -> Result<Carried, Error> {
        let n = self.active.len();
        let g = &self.manifest.graphs.step;
        let mut features = Vec::with_capacity(n * self.feature_len);
        for a in &self.active {
            features.extend_from_slice(&a.features);
        }
        let mut fshape = vec![n];
        match &self.manifest.graphs.encoder {
            Some(e) => fshape.extend_from_slice(&e.output_shape),
            None => fshape.extend_from_slice(&self.manifest.input.shape()),
        }
        let features = Tensor::from_array((fshape, features))
            .map_err(|e| ort_err("features tensor", e))?
            .into_dyn();
        let mut states = Vec::with_capacity(g.states.len());
        for (k, spec) in g.states.iter().enumerate() {
            let len = spec.len();
            let mut buf = Vec::with_capacity(n * len);
            let old = match &self.carried {
                Some(c) => Some(
                    c.states[k]
                        .try_extract_tensor::<f32>()
                        .map_err(|e| ort_err("membrane", e))?
                        .1,
                ),
                None => None,
            };
            for a in &self.active {
                match (a.row, old) {
                    (Some(r), Some(old)) => buf.extend_from_slice(&old[r * len..(r + 1) * len]),
                    _ => buf.extend(std::iter::repeat_n(spec.initial_value, len)),
                }
            }
            let mut shape = vec![n];
            shape.extend_from_slice(&spec.shape);
            states.push(
                Tensor::from_array((shape, buf))
                    .map_err(|e| ort_err("membrane tensor", e))?
                    .into_dyn(),
            );
        }
        for (i, a) in self.active.iter_mut().enumerate() {
            a.row = Some(i);
        }
        Ok(Carried { features, states })
    }

    fn step(&mut self) -> Result<(), Error> {
        if self.inject_fault.swap(false, Ordering::SeqCst) {
            return Err(Error::internal("injected engine fault (test switch)"));
        }
        let mut carried = match (self.rows_match, self.carried.take()) {
            (true, Some(c)) => c,
            (_, old) => {
                self.carried = old;
                let c = self.gather()?;
                self.carried = None;
                c
            }
        };
        let n = self.active.len();
        let started = Instant::now();
        if self.cfg.ablates(Ablation::EncoderEveryStep) {
            carried.features = self.encode_active()?;
        }
        let g = &self.manifest.graphs.step;
        let mut inputs: Vec<(String, ort::session::SessionInputValue<'_>)> =
            Vec::with_capacity(1 + g.states.len());
        inputs.push((g.input.clone(), (&carried.features).into()));
        for (spec, value) in g.states.iter().zip(carried.states) {
            inputs.push((spec.input.clone(), value.into()));
        }
        let mut outputs = self
            .sessions
            .step
            .run(inputs)
            .map_err(|e| ort_err("step.onnx", e))?;
        let mut states = Vec::with_capacity(g.states.len());
        for spec in &g.states {
            states.push(outputs.remove(&spec.output).ok_or_else(|| {
                Error::internal(format!("step.onnx output {} missing", spec.output))
            })?);
        }
        let logits_value = outputs
            .remove(&g.logits)
            .ok_or_else(|| Error::internal(format!("step.onnx output {} missing", g.logits)))?;
        drop(outputs);
        if self.cfg.ablates(Ablation::CopyMembranes) {
            states = states
                .into_iter()
                .map(copy_value)
                .collect::<Result<Vec<_>, Error>>()?;
        }
        let elapsed = started.elapsed();
        self.metrics.step_duration.observe(elapsed.as_secs_f64());
        self.metrics.batch_size.observe(n as f64);
        self.metrics.steps_total.inc_by(n as f64);
        self.metrics.active_requests.set(n as i64);
        let (_, logits) = logits_value
            .try_extract_tensor::<f32>()
            .map_err(|e| ort_err("logits", e))?;
        let k = self.manifest.num_classes();
        if logits.len() != n * k {
            return Err(Error::internal(format!(
                "step.onnx returned {} logits for {n} requests of {k} classes",
                logits.len()
            )));
        }
        let temperature = self.manifest.exit.temperature;
        let mean = self.manifest.exit.aggregation == Aggregation::Mean;
        let mut finished = Vec::new();
        for (i, a) in self.active.iter_mut().enumerate() {
            for (s, z) in a.sum.iter_mut().zip(&logits[i * k..(i + 1) * k]) {
                *s += f64::from(*z);
            }
            a.t += 1;
            let agg: Vec<f64> = if mean {
                a.sum.iter().map(|s| s / a.t as f64).collect()
            } else {
                a.sum.clone()
            };
            let (score, class_id, probs) = exit::score(&agg, temperature);
            let traced = a.job.explain || a.job.progress.is_some();
            if traced {
                let trace = StepTrace {
                    t: a.t,
                    score,
                    class_id,
                    probabilities: probs.iter().map(|p| *p as f32).collect(),
                };
                if let Some(p) = &a.job.progress {
                    let _ = p.send(trace.clone());
                }
                if a.job.explain {
                    a.trajectory.push(trace);
                }
            }
            if a.rule.should_exit(a.t, score) {
                finished.push((i, score, class_id, probs));
            }
        }
        self.carried = Some(Carried {
            features: carried.features,
            states,
        });
        self.rows_match = finished.is_empty();
        for (i, score, class_id, probs) in finished.into_iter().rev() {
            let a = self.active.remove(i);
            let rm = self.metrics.rule(a.rule.kind());
            rm.timesteps_used.observe(a.t as f64);
            if let Some(c) = rm.exits.get(a.t - 1) {
                c.inc();
            }
            let inference = a.admitted.elapsed();
            rm.inference_duration.observe(inference.as_secs_f64());
            let outcome = Outcome {
                class_id,
                confidence: score,
                probabilities: probs,
                timesteps_used: a.t,
                rule: a.rule,
                trajectory: a.trajectory,
                queue: a.admitted.saturating_duration_since(a.job.enqueued),
                inference,
            };
            let _ = a.job.reply.send(Ok(outcome));
        }
        self.metrics.active_requests.set(self.active.len() as i64);
        Ok(())
    }
}
