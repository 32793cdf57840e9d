//! The timestep engine: per model, `workers` threads, each with its own ONNX Runtime sessions and
//! its own running batch, all pulling from the model's one bounded queue (a crossbeam MPMC channel).
//!
//! A worker's loop: admit waiting requests, oldest first, up to the batch width (chosen per model
//! from the cost curve measured at load, [`width`]) → run the encoder (and the SEENN-II
//! policy) once for the newcomers, straight into free rows of its batch → run `step.onnx` once for
//! every active request, whatever its timestep → add each request's logits to its running sum and
//! apply its exit rule → answer finished requests at once → repeat. The batch lives in
//! [`slots::Slots`]: preallocated rows that are never rebuilt; a request that leaves is replaced by
//! the last row; under `--device cuda` the rows live in GPU memory (`--slot-memory`), so membranes
//! stay on the device between steps. An idle worker polls the queue for a short while (yielding its core,
//! `--engine-spin-us`, default 500 µs), then blocks on it. Before each step, a request whose
//! deadline the step would miss is answered with its prediction so far (`deadline_exit`).
//!
//! A sampled fraction of the early exits keeps its row after the answer and runs on to T at the
//! lowest priority (a shadow run, [`shadow`]): it compares the answered class with the full-T one.

pub mod shadow;
pub mod slots;
pub mod width;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use tokio::sync::{mpsc as tmpsc, oneshot, watch};

use crate::error::{Chain, Error};
use crate::exit::{self, ExitRule};
use crate::graphs::{self, Sessions};
use crate::metrics::{CancelReason, ModelMetrics};
use crate::model::manifest::{Aggregation, Manifest};
use shadow::{Sampler, Shadow};
use slots::{ExitRow, SlotSpec, Slots};
pub use slots::{SlotMemory, SlotMemoryChoice};
pub use width::{BatchWidth, CostPoint, WidthChoice};

/// How a request asked to exit; resolved against the model when it is admitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RequestRule {
    Confidence {
        alpha: f64,
        max_timesteps: usize,
    },
    Policy {
        max_timesteps: usize,
        /// The per-action bias scale along the policy's calibrated curve (0: the exported policy).
        bias_scale: f64,
    },
    Fixed {
        timesteps: usize,
    },
    Learned {
        threshold: f64,
        max_timesteps: usize,
    },
}

impl RequestRule {
    /// The rule the request runs under once admitted; `policy_action` is the SEENN-II policy's
    /// choice for it (capped at the request's `max_timesteps`; none: run them all).
    pub fn resolve(self, policy_action: Option<usize>) -> ExitRule {
        match self {
            RequestRule::Confidence {
                alpha,
                max_timesteps,
            } => ExitRule::Confidence {
                alpha,
                max_timesteps,
            },
            RequestRule::Fixed { timesteps } => ExitRule::Fixed { timesteps },
            RequestRule::Learned {
                threshold,
                max_timesteps,
            } => ExitRule::Learned {
                threshold,
                max_timesteps,
            },
            RequestRule::Policy { max_timesteps, .. } => ExitRule::Policy {
                timesteps: policy_action
                    .unwrap_or(max_timesteps)
                    .clamp(1, max_timesteps),
            },
        }
    }
}

/// One timestep of a request's run: the exit score (the max softmax, or under the learned rule the
/// stop probability) and the prediction after aggregating steps 1..=t.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct StepTrace {
    pub t: usize,
    /// The exit rule's score at t: the max softmax (confidence, policy, fixed) or the learned
    /// rule's stop probability.
    pub score: f64,
    pub class_id: usize,
    pub probabilities: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub class_id: usize,
    /// The max softmax at the exit (whatever the rule).
    pub confidence: f64,
    pub probabilities: Vec<f64>,
    pub timesteps_used: usize,
    pub rule: ExitRule,
    pub trajectory: Vec<StepTrace>,
    pub queue: Duration,
    pub inference: Duration,
    /// Answered before its exit rule fired, because the next step would have missed the
    /// request's deadline: the prediction after `timesteps_used` steps.
    pub deadline_exit: bool,
}

/// A request leaving the batch with its answer: the prediction at its last step.
struct Leaving {
    a: Active,
    confidence: f64,
    class_id: usize,
    probabilities: Vec<f64>,
    /// Answered because the next step would miss the deadline, not by its rule.
    deadline_exit: bool,
}

/// How far ahead of a deadline the engine answers: the next step's estimated time, a quarter of it
/// again, and this much for the answer's way out.
const ANSWER_MARGIN: Duration = Duration::from_micros(500);

/// The longest deadline a request may set, and the longest timeout a flag may: one day.
pub const MAX_DEADLINE: Duration = Duration::from_secs(86_400);

/// How long a step that starts now may take, answer included, for a step of `step` on average:
/// how far ahead of a deadline the engine answers, and how far past it an answer may still come.
fn answer_lead(step: Duration) -> Duration {
    step + step / 4 + ANSWER_MARGIN
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
    /// The request runs under the model's default policy (the `policy="default"` series, which
    /// the drift alert compares with calibration).
    pub default_policy: bool,
    /// The fraction of this request's early exits (before the model's T) to keep running to T
    /// after the answer, as a shadow run: the default policy's `shadow_fraction` for a request
    /// on the default policy, 0 for the others.
    pub shadow_fraction: f64,
    /// Under adaptive α: the longest the request may wait in the queue; a worker that finds it
    /// waited longer answers 429 (shed) instead of running it late.
    pub max_queue_wait: Option<Duration>,
}

impl Job {
    /// A job enqueued now that sets nothing else: no trace or progress stream, outside the
    /// default-policy series, no shadow run and no queue budget (set those with `..Job::new(..)`).
    pub fn new(
        input: Vec<f32>,
        rule: RequestRule,
        deadline: Instant,
        reply: oneshot::Sender<Result<Outcome, Error>>,
    ) -> Job {
        Job {
            input,
            rule,
            explain: false,
            deadline,
            enqueued: Instant::now(),
            reply,
            progress: None,
            default_policy: false,
            shadow_fraction: 0.0,
            max_queue_wait: None,
        }
    }
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
    /// Rebuild the batch after every step: every active membrane row is copied into a freshly
    /// allocated buffer and back, as an engine that gathers its batch into new tensors does
    /// (instead of ONNX Runtime writing the next membranes in place into the worker's slots).
    CopyMembranes,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub max_batch: usize,
    pub max_queue: usize,
    pub batching: Batching,
    pub ablations: Vec<Ablation>,
    /// Worker threads per model, each with its own sessions and batch; 0 = [`default_workers`].
    pub workers: usize,
    /// Most shadow rows per worker; 0 = [`shadow::default_rows`].
    pub shadow_rows: usize,
    /// How long an idle worker polls the queue before it blocks ([`DEFAULT_SPIN`]).
    pub spin: Duration,
    /// Where each worker's features and membranes live (`--slot-memory`, resolved).
    pub slot_memory: SlotMemory,
    /// How many rows a step runs (`--batch-width`): measured at load, or fixed.
    pub width: BatchWidth,
}

impl EngineConfig {
    fn ablates(&self, a: Ablation) -> bool {
        self.ablations.contains(&a)
    }
}

/// The default number of workers per model for `models` models on `device`: on a GPU one (one
/// set of CUDA sessions per model; a larger `--max-batch` is what uses the device), on the CPU
/// [`workers_for`] this machine's cores.
pub fn default_workers(models: usize, device: &crate::runtime::Device) -> usize {
    match device {
        crate::runtime::Device::Cuda(_) => 1,
        crate::runtime::Device::Cpu => workers_for(
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            models,
        ),
    }
}

/// Every core for each model, as long as all models' workers together stay within twice the
/// cores; otherwise twice the cores divided among the models; at least 1. Idle workers cost
/// nothing but their sessions' memory, so a model that has the traffic gets the whole machine
/// (measured with two packages on 2 cores, one model hot: 1.47× and 1.66× the throughput of
/// cores ÷ models), while with every model hot at once the threads time-slice at most 2× over
/// the cores (same total throughput as cores ÷ models there, a higher p99; BENCHMARKS.md,
/// "Default workers").
pub fn workers_for(cores: usize, models: usize) -> usize {
    let cores = cores.max(1);
    cores.min(2 * cores / models.max(1)).max(1)
}

/// How long an idle worker keeps polling the queue (yielding its core between polls) before it
/// blocks on it (`--engine-spin-us`, `SEENN_ENGINE_SPIN_US`; 0 blocks at once). A worker that is
/// still awake when a job arrives costs the sender no futex wake-up and the worker no cross-core
/// wake (an inter-processor interrupt, expensive on a virtual machine), and it starts on a warm
/// cache. The time to cover is the gap between a worker's answer and the next request at low
/// concurrency: at c=1 over HTTP that is the reply's way out, the client and the next request's
/// way in, ≈ 0.2–0.4 ms on the 2-core reference machine. Measured there (BENCHMARKS.md, "Engine
/// spin"): 500 µs cut the c=1 HTTP p50 by a fifth and gave c=4 a fifth more throughput, with no
/// loss at c=16..64; the 50 µs spin measured earlier was shorter than that gap and gained
/// nothing. The cost is at most 500 µs of polling per idle period (measured: +3.4 points of a core
/// at 100 sparse requests/s).
pub const DEFAULT_SPIN: Duration = Duration::from_micros(500);

/// Readiness shared by a model's workers: the model serves while every worker does.
struct Readiness {
    unready: AtomicUsize,
    tx: watch::Sender<bool>,
}

impl Readiness {
    fn worker_down(&self, metrics: &ModelMetrics) {
        if self.unready.fetch_add(1, Ordering::SeqCst) == 0 {
            self.tx.send_replace(false);
            metrics.model_ready.set(0);
        }
    }

    fn worker_up(&self, metrics: &ModelMetrics) {
        if self.unready.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.tx.send_replace(true);
            metrics.model_ready.set(1);
        }
    }
}

/// The handle the API holds: a bounded queue into the model's workers.
pub struct EngineHandle {
    tx: Sender<Job>,
    depth: Arc<AtomicUsize>,
    /// How long the oldest request of the workers' last admission had waited (µs).
    last_wait_us: Arc<AtomicU64>,
    /// The moving average of a step's time (µs), as the worker that stepped last has it.
    step_us: Arc<AtomicU64>,
    ready: watch::Receiver<bool>,
    max_queue: usize,
    /// The batch width chosen at load (at most `--max-batch`), and the most live requests per
    /// worker's batch now (at most the width; lowered by adaptive α past its accuracy floor,
    /// `set_batch_limit`). Shared with the workers.
    width: Arc<WidthChoice>,
    batch_limit: Arc<AtomicUsize>,
    model: String,
    metrics: Arc<ModelMetrics>,
    workers: usize,
    /// Test-only fault switch: the next step (of whichever worker runs it first) fails.
    pub inject_fault: Arc<AtomicBool>,
}

impl EngineHandle {
    pub fn submit(&self, job: Job) -> Result<(), Error> {
        // Counted before the send so a worker's decrement can never run first.
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
            Err(TrySendError::Full(_)) => Err(self.overloaded()),
            Err(TrySendError::Disconnected(_)) => Err(Error::Unavailable(format!(
                "model {} is not running",
                self.model
            ))),
        }
    }

    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    /// Caps each worker's batch at `limit` live requests (clamped to 1..=the batch width; shadow
    /// rows are not counted): a worker admits no newcomer while it has that many, and rows that
    /// are running finish as they are. A smaller batch makes each step shorter, so a request's
    /// time in the engine falls with it. On a CPU a step's cost per request is about the same at
    /// batch 1 and 8 (BENCHMARKS.md); what a narrow batch costs is the answers its shorter queue
    /// turns away.
    pub fn set_batch_limit(&self, limit: usize) {
        let limit = limit.clamp(1, self.width.width);
        self.batch_limit.store(limit, Ordering::SeqCst);
        self.metrics.engine_batch_limit.set(limit as i64);
    }

    /// The most live requests per worker's batch now.
    pub fn batch_limit(&self) -> usize {
        self.batch_limit.load(Ordering::SeqCst)
    }

    /// How late past its deadline a request's answer may still come: the engine answers before
    /// a step that would miss the deadline, but the step it last started, or the first step of a
    /// request admitted just before its deadline, may end after it ([`answer_lead`] of the
    /// moving-average step); the server answers 504 once that has passed too.
    pub fn answer_grace(&self) -> Duration {
        answer_lead(Duration::from_micros(self.step_us.load(Ordering::Relaxed)))
    }

    /// 504 for a request whose deadline has passed before it is queued, counted as a deadline
    /// cancellation (like the admission refusals of [`Self::check_admission`], before the queue).
    pub fn check_deadline(&self, deadline: Instant) -> Result<(), Error> {
        if Instant::now() < deadline {
            return Ok(());
        }
        self.metrics.cancelled(CancelReason::Deadline).inc();
        Err(Error::DeadlineExceeded(
            "deadline passed before the request was queued".into(),
        ))
    }

    /// The batch width chosen at load: the batch limit when nothing lowers it.
    pub fn batch_width(&self) -> usize {
        self.width.width
    }

    /// The batch width, how it was chosen, and the cost curve measured at load.
    pub fn width_choice(&self) -> &WidthChoice {
        &self.width
    }

    /// Refuses at the door, before the request is decoded or queued, what `submit` or the
    /// workers would refuse anyway: a full queue (429 `Overloaded`), and under a queue budget
    /// (adaptive α at its floor) a queue whose requests are waiting past it. The queue is FIFO,
    /// so while the last requests admitted had waited longer than `budget` and more are queued
    /// than the workers can take at once (workers × batch limit), a newcomer would wait longer
    /// too and be shed after its wait; shedding it now costs no decoding, no queue place and no
    /// wait (the queue-sojourn signal of CoDel). A shorter queue is never refused here, so the
    /// workers always find work (shedding everyone until the queue was empty left the engine idle
    /// 17% of the time at 2× overload, BENCHMARKS.md); the budget check at admission still sheds
    /// what waited too long.
    /// Counted as `queue_budget` cancellations, like sheds in the queue.
    pub fn check_admission(&self, budget: Option<Duration>) -> Result<(), Error> {
        let depth = self.queue_depth();
        if depth >= self.max_queue {
            return Err(self.overloaded());
        }
        let Some(budget) = budget else {
            return Ok(());
        };
        let waited = Duration::from_micros(self.last_wait_us.load(Ordering::SeqCst));
        if depth > self.workers * self.batch_limit() && waited > budget {
            self.metrics.cancelled(CancelReason::QueueBudget).inc();
            return Err(Error::Shed(format!(
                "model {} is overloaded: queued requests are waiting {:.1} ms, over the {:.1} ms \
                 the adaptive p99 objective leaves for queueing; retry after 1 s",
                self.model,
                waited.as_secs_f64() * 1e3,
                budget.as_secs_f64() * 1e3
            )));
        }
        Ok(())
    }

    fn overloaded(&self) -> Error {
        Error::Overloaded {
            model: self.model.clone(),
            depth: self.max_queue,
            retry_after_s: 1,
        }
    }

    /// Whether the engine serves (false while a worker recovers from a failed step).
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Readiness as it changes, for whoever mirrors it (gRPC health).
    pub fn watch_ready(&self) -> watch::Receiver<bool> {
        self.ready.clone()
    }

    /// Worker threads serving this model.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Seconds the workers have spent on work (anything but waiting for a job) since start,
    /// summed over workers (`seenn_engine_busy_seconds_total`): the adaptive-α controller's
    /// measure of how busy the engine is. Counted at every step and when a worker starts waiting,
    /// so it lags the truth by at most one step.
    pub fn busy_seconds(&self) -> f64 {
        self.metrics.engine_busy.get()
    }
}

struct Active {
    job: Job,
    rule: ExitRule,
    /// The running sum of the logits (the last step's logits under aggregation `last`).
    sum: Vec<f64>,
    t: usize,
    /// The most steps the row's input allows: its frames for a per_step input, else the model's T
    /// (where a shadow run ends).
    full_t: usize,
    trajectory: Vec<StepTrace>,
    admitted: Instant,
    /// Set on a shadow run: the answer was sent, the row runs on to T.
    shadow: Option<Shadow>,
}

impl Active {
    /// The shadow row that takes over `a`'s batch row once `a` has answered `class_id`: the same
    /// running sum and timestep, no client (its sender goes nowhere; `a` keeps the real one and
    /// answers through it), no trace, no deadline of its own.
    fn shadow_of(a: &mut Active, class_id: usize) -> Active {
        let (reply, _) = oneshot::channel();
        Active {
            job: Job {
                input: std::mem::take(&mut a.job.input),
                rule: a.job.rule,
                explain: false,
                deadline: a.job.deadline,
                enqueued: a.job.enqueued,
                reply,
                progress: None,
                default_policy: a.job.default_policy,
                shadow_fraction: 0.0,
                max_queue_wait: None,
            },
            rule: a.rule,
            sum: a.sum.clone(),
            t: a.t,
            full_t: a.full_t,
            trajectory: Vec::new(),
            admitted: a.admitted,
            shadow: Some(Shadow {
                rule: a.rule.kind(),
                class_id,
            }),
        }
    }
}

struct Worker {
    /// Row `i` of `slots` is `active[i]`. Declared (so dropped) before `sessions`: device slots
    /// are allocated by the step session's allocator.
    slots: Slots,
    /// `exit.onnx`'s one-row buffers, when the model has the learned rule.
    exit_row: Option<ExitRow>,
    manifest: Arc<Manifest>,
    sessions: Sessions,
    cfg: EngineConfig,
    metrics: Arc<ModelMetrics>,
    depth: Arc<AtomicUsize>,
    last_wait_us: Arc<AtomicU64>,
    /// Where this worker publishes `step_estimate` for the handle (`EngineHandle::answer_grace`).
    step_us: Arc<AtomicU64>,
    /// The handle's batch limit (`EngineHandle::set_batch_limit`).
    batch_limit: Arc<AtomicUsize>,
    ready: Arc<Readiness>,
    inject_fault: Arc<AtomicBool>,
    active: Vec<Active>,
    /// This worker's share of `seenn_active_requests` last published.
    published: i64,
    /// Shadow rows in `active`, their most, and this worker's share of `seenn_shadow_rows`.
    shadows: usize,
    shadow_cap: usize,
    published_shadows: i64,
    sampler: Sampler,
    /// Since when this worker's busy time has not been counted yet.
    busy_since: Instant,
    /// Reused per step: the aggregated logits of one request, and the rows that exit with their
    /// (max softmax, class, probabilities).
    agg: Vec<f64>,
    /// Reused per step: each row's (max softmax, class, probabilities).
    scored: Vec<(f64, usize, Vec<f64>)>,
    finished: Vec<(usize, f64, usize, Vec<f64>)>,
    /// Reused per step of a per_step model: every active row's next frame.
    frames: Vec<f32>,
    leaving: Vec<Leaving>,
    dropped: Vec<(Active, CancelReason)>,
    /// What the next step is expected to take: a moving average of the last steps' times.
    step_estimate: Duration,
}

/// Starts one worker thread per element of `sessions` (at least one is needed).
pub fn spawn(
    manifest: Arc<Manifest>,
    sessions: Vec<Sessions>,
    cfg: EngineConfig,
    metrics: Arc<ModelMetrics>,
) -> Result<EngineHandle, Error> {
    if sessions.is_empty() {
        return Err(Error::internal("an engine needs at least one worker"));
    }
    let (tx, rx) = crossbeam_channel::bounded(cfg.max_queue.max(1));
    let max_batch = cfg.max_batch.max(1);
    let (ready_tx, ready) = watch::channel(true);
    let shared = WorkerShared {
        manifest,
        cfg,
        metrics,
        depth: Arc::new(AtomicUsize::new(0)),
        last_wait_us: Arc::new(AtomicU64::new(0)),
        step_us: Arc::new(AtomicU64::new(0)),
        batch_limit: Arc::new(AtomicUsize::new(max_batch)),
        ready: Arc::new(Readiness {
            unready: AtomicUsize::new(0),
            tx: ready_tx,
        }),
        inject_fault: Arc::new(AtomicBool::new(false)),
        rx,
    };
    let model = shared.manifest.name.clone();
    let workers = sessions.len();
    // Each worker reports whether its slots could be built (device memory is allocated on the
    // worker's own thread); the engine starts only when every worker did.
    let (started_tx, started) = std::sync::mpsc::sync_channel::<Started>(workers);
    for (i, sessions) in sessions.into_iter().enumerate() {
        let name = if workers == 1 {
            format!("engine-{model}")
        } else {
            format!("engine-{model}-{i}")
        };
        // The first worker measures the cost curve while the others wait idle on the queue.
        let measures = i == 0 && shared.cfg.width == BatchWidth::Auto;
        let (shared, started_tx) = (shared.clone(), started_tx.clone());
        std::thread::Builder::new()
            .name(name)
            .spawn(move || Worker::start(shared, sessions, measures, started_tx))
            .map_err(|e| Error::internal_from("cannot start an engine thread", e))?;
    }
    drop(started_tx);
    let curve = wait_started(&started, workers, &shared.cfg.slot_memory)?;
    let width = match (shared.cfg.width, curve) {
        (BatchWidth::Fixed(n), _) => WidthChoice::fixed(n, max_batch),
        (BatchWidth::Auto, Some(curve)) => WidthChoice::measured(curve, max_batch),
        (BatchWidth::Auto, None) => WidthChoice::fixed(max_batch, max_batch),
    };
    shared.batch_limit.store(width.width, Ordering::SeqCst);
    tracing::info!(model = %model, max_batch, width = width.width, chosen_by = %width.chosen_by, curve = %width.summary(), "batch width");
    for p in &width.curve {
        shared.metrics.step_cost(p.rows).set(p.per_row_us / 1e6);
    }
    let WorkerShared {
        cfg,
        metrics,
        depth,
        last_wait_us,
        step_us,
        batch_limit,
        inject_fault,
        ..
    } = shared;
    metrics.engine_workers.set(workers as i64);
    metrics.engine_batch_limit.set(width.width as i64);
    Ok(EngineHandle {
        tx,
        depth,
        last_wait_us,
        step_us,
        ready,
        max_queue: cfg.max_queue.max(1),
        width: Arc::new(width),
        batch_limit,
        model,
        metrics,
        workers,
        inject_fault,
    })
}

/// What the handle and every worker of one engine share.
#[derive(Clone)]
struct WorkerShared {
    manifest: Arc<Manifest>,
    cfg: EngineConfig,
    metrics: Arc<ModelMetrics>,
    depth: Arc<AtomicUsize>,
    last_wait_us: Arc<AtomicU64>,
    step_us: Arc<AtomicU64>,
    batch_limit: Arc<AtomicUsize>,
    ready: Arc<Readiness>,
    inject_fault: Arc<AtomicBool>,
    rx: Receiver<Job>,
}

/// What a worker reports once it started: the cost curve when it measured one.
type Started = Result<Option<Vec<CostPoint>>, Error>;

/// Waits until each of `workers` reported whether it started; the first that could not is the
/// error (a worker that started is told to stop by the queue's sender going away with it). The
/// cost curve, when a worker measured one, is the answer.
fn wait_started(
    started: &std::sync::mpsc::Receiver<Started>,
    workers: usize,
    memory: &SlotMemory,
) -> Result<Option<Vec<CostPoint>>, Error> {
    let mut curve = None;
    for _ in 0..workers {
        match started.recv() {
            Ok(Ok(c)) => curve = curve.or(c),
            Ok(Err(e)) => {
                let hint = match memory {
                    SlotMemory::Device(_) => {
                        " (start with --slot-memory host to keep the batch in host memory)"
                    }
                    SlotMemory::Host => "",
                };
                return Err(Error::internal_from(
                    format!("engine worker cannot start{hint}"),
                    e,
                ));
            }
            Err(_) => return Err(Error::internal("an engine worker ended before it started")),
        }
    }
    Ok(curve)
}

/// `exit.onnx`'s one-row buffers for a model with the learned rule.
fn new_exit_row(manifest: &Manifest) -> Result<Option<ExitRow>, Error> {
    manifest
        .graphs
        .exit
        .as_ref()
        .map(|g| {
            ExitRow::new(
                manifest.num_classes(),
                [&g.aggregate_input, &g.timestep_input, &g.output],
            )
        })
        .transpose()
}

/// The aggregated logits of a running sum after `t` steps, into `agg`: the mean under
/// aggregation `mean`, else the sum as it is (which is the last step's logits under `last`).
fn aggregate_into(agg: &mut Vec<f64>, sum: &[f64], t: usize, mean: bool) {
    agg.clear();
    if mean {
        let t = t.max(1) as f64;
        agg.extend(sum.iter().map(|s| s / t));
    } else {
        agg.extend_from_slice(sum);
    }
}

/// The slot buffers for `max_batch` rows of `manifest`'s graphs, in `device` memory when given
/// (see [`slots::DeviceSlots::new`]), else on the host.
pub fn new_slots(
    manifest: &Manifest,
    max_batch: usize,
    device: Option<slots::DeviceSlots>,
) -> Result<Slots, Error> {
    let input_dims = manifest.input.dims();
    let g = &manifest.graphs.step;
    let feature_dims: &[usize] = match &manifest.graphs.encoder {
        Some(e) => &e.output_shape,
        None => input_dims,
    };
    let mut step_inputs = vec![g.input.as_str()];
    let mut step_outputs = vec![g.logits.as_str()];
    for s in &g.states {
        step_inputs.push(&s.input);
        step_outputs.push(&s.output);
    }
    Slots::new(SlotSpec {
        max_batch,
        input_dims,
        feature_dims,
        classes: manifest.num_classes(),
        states: g
            .states
            .iter()
            .map(|s| (s.shape.as_slice(), s.initial_value))
            .collect(),
        step_inputs,
        step_outputs,
        encoder: manifest
            .graphs
            .encoder
            .as_ref()
            .map(|e| (e.input.as_str(), e.output.as_str())),
        device,
    })
}

impl Worker {
    fn model(&self) -> &str {
        &self.manifest.name
    }

    /// Adds the time since the last count to `seenn_engine_busy_seconds_total`.
    fn count_busy(&mut self) {
        let now = Instant::now();
        let busy = now.saturating_duration_since(self.busy_since);
        self.metrics.engine_busy.inc_by(busy.as_secs_f64());
        self.busy_since = now;
    }

    /// Waits for a job while idle: spins on the queue for `cfg.spin`, then blocks on it. The time
    /// waited is not busy time.
    fn wait(&mut self, rx: &Receiver<Job>) -> Option<Job> {
        self.count_busy();
        let job = self.wait_for_job(rx);
        self.busy_since = Instant::now();
        job
    }

    fn wait_for_job(&self, rx: &Receiver<Job>) -> Option<Job> {
        let spin = self.cfg.spin;
        if !spin.is_zero() {
            let until = Instant::now() + spin;
            loop {
                match rx.try_recv() {
                    Ok(job) => return Some(job),
                    Err(TryRecvError::Disconnected) => return None,
                    Err(TryRecvError::Empty) => {}
                }
                if Instant::now() >= until {
                    break;
                }
                // Yield rather than pause: a thread that shares this core (an HTTP task, the
                // client at c=1) runs first, and the worker is still awake when the job lands.
                std::thread::yield_now();
            }
        }
        rx.recv().ok()
    }

    /// The worker thread: builds its slots (on the thread that will use them), measures the
    /// cost curve when `measures`, reports on `started` whether it could, then serves the queue
    /// until every handle is gone.
    fn start(
        shared: WorkerShared,
        mut sessions: Sessions,
        measures: bool,
        started: std::sync::mpsc::SyncSender<Started>,
    ) {
        let WorkerShared {
            manifest,
            cfg,
            metrics,
            depth,
            last_wait_us,
            step_us,
            batch_limit,
            ready,
            inject_fault,
            rx,
        } = shared;
        let built = slots::DeviceSlots::new(&sessions.step, &cfg.slot_memory)
            .and_then(|device| new_slots(&manifest, cfg.max_batch, device))
            .and_then(|s| Ok((s, new_exit_row(&manifest)?)));
        let (mut slots, exit_row) = match built {
            Ok(x) => x,
            Err(e) => {
                let _ = started.send(Err(e));
                return;
            }
        };
        let curve = match measures {
            true => {
                let blank = vec![0.0; manifest.input.len()];
                match width::measure(
                    &mut slots,
                    sessions.encoder.as_mut(),
                    &mut sessions.step,
                    &blank,
                ) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                }
            }
            false => None,
        };
        let _ = started.send(Ok(curve));
        let k = manifest.num_classes();
        let shadow_cap = match cfg.shadow_rows {
            0 => shadow::default_rows(cfg.max_batch),
            n => n,
        };
        if slots.on_device() {
            tracing::debug!(model = %manifest.name, memory = ?cfg.slot_memory, "slots on the device");
        }
        let mut w = Worker {
            manifest,
            sessions,
            cfg,
            metrics,
            depth,
            last_wait_us,
            step_us,
            batch_limit,
            ready,
            inject_fault,
            active: Vec::new(),
            slots,
            exit_row,
            published: 0,
            shadows: 0,
            shadow_cap,
            published_shadows: 0,
            sampler: Sampler::seeded(),
            busy_since: Instant::now(),
            agg: Vec::with_capacity(k),
            scored: Vec::new(),
            finished: Vec::new(),
            frames: Vec::new(),
            leaving: Vec::new(),
            dropped: Vec::new(),
            step_estimate: Duration::ZERO,
        };
        w.run(rx);
    }

    fn run(&mut self, rx: Receiver<Job>) {
        tracing::info!(model = %self.model(), max_batch = self.cfg.max_batch, batching = ?self.cfg.batching, "engine worker started");
        let cap = self.slots.capacity();
        let mut newcomers = Vec::with_capacity(cap);
        loop {
            if self.active.is_empty() {
                // Idle: wait on the queue until work arrives or every handle is gone.
                match self.wait(&rx) {
                    Some(job) => newcomers.push(job),
                    None => break,
                }
            }
            // Shadow rows do not count: a live request may always have them.
            let live = self.live();
            let limit = self.batch_limit.load(Ordering::Relaxed).clamp(1, cap);
            let may_admit = self.cfg.batching == Batching::Continuous || live == 0;
            while may_admit && live + newcomers.len() < limit {
                match rx.try_recv() {
                    Ok(job) => newcomers.push(job),
                    Err(_) => break,
                }
            }
            if !newcomers.is_empty() {
                // The wait is published before the depth falls, so a door that sees the new
                // depth also sees the wait (`check_admission`).
                if let Some(oldest) = newcomers.iter().map(|j| j.enqueued).min() {
                    let waited = oldest.elapsed().as_micros();
                    self.last_wait_us
                        .store(u64::try_from(waited).unwrap_or(u64::MAX), Ordering::SeqCst);
                }
                let d = self.depth.fetch_sub(newcomers.len(), Ordering::SeqCst) - newcomers.len();
                self.metrics.queue_depth.set(d as i64);
                // Newcomers take their rows from shadow runs first: a step stays within the
                // batch width whenever live requests need the rows.
                self.drop_shadows((self.active.len() + newcomers.len()).saturating_sub(limit));
                self.admit(&mut newcomers);
                if d == 0 {
                    // An empty queue makes newcomers wait nothing (see `check_admission`).
                    self.last_wait_us.store(0, Ordering::SeqCst);
                }
            }
            self.leave_before_step();
            if self.active.is_empty() {
                continue;
            }
            // A step over shadow rows alone is spare capacity (a newcomer evicts them at once).
            let live = self.live() > 0;
            if let Err(e) = self.step() {
                self.fail_all(e);
            }
            if live {
                self.count_busy();
            } else {
                self.busy_since = Instant::now();
            }
        }
        self.publish_active();
        tracing::info!(model = %self.model(), "engine worker stopped");
    }

    /// Rows of live requests (the batch less its shadow runs).
    fn live(&self) -> usize {
        self.active.len() - self.shadows
    }

    /// Adds this worker's change of live requests to `seenn_active_requests` (the sum over
    /// workers), and of shadow rows to `seenn_shadow_rows`.
    fn publish_active(&mut self) {
        let n = self.live() as i64;
        if n != self.published {
            self.metrics.active_requests.add(n - self.published);
            self.published = n;
        }
        let s = self.shadows as i64;
        if s != self.published_shadows {
            self.metrics.shadow_rows.add(s - self.published_shadows);
            self.published_shadows = s;
        }
    }

    /// Ends `n` shadow runs (the ones with the most steps left), counted as dropped.
    fn drop_shadows(&mut self, n: usize) {
        if n == 0 || self.shadows == 0 {
            return;
        }
        let mut rows: Vec<(usize, usize)> = self
            .active
            .iter()
            .enumerate()
            .filter(|(_, a)| a.shadow.is_some())
            .map(|(i, a)| (i, a.t))
            .collect();
        for i in shadow::eviction(&mut rows, n) {
            self.active.swap_remove(i);
            self.slots.swap_remove(i);
            self.shadows -= 1;
            self.metrics.shadow_dropped.inc();
        }
        self.publish_active();
    }

    /// Whether the live row `i`, which exits now, keeps running as a shadow: it exits before the
    /// model's T, the sampler picks it, a shadow row is free and nobody waits in the queue. A
    /// picked exit that cannot run is counted as dropped.
    fn takes_shadow(&mut self, i: usize) -> bool {
        let a = &self.active[i];
        let fraction = a.job.shadow_fraction;
        if a.t >= a.full_t || !self.sampler.sample(fraction) {
            return false;
        }
        if self.shadows >= self.shadow_cap || self.depth.load(Ordering::SeqCst) > 0 {
            self.metrics.shadow_dropped.inc();
            return false;
        }
        true
    }

    /// Answers every active request with `e`, forgets the batch, reports unready, and re-checks
    /// the sessions with a self-test run until they work again.
    fn fail_all(&mut self, e: Error) {
        let model = self.manifest.name.clone();
        tracing::error!(model = %model, error = %Chain(&e), requests = self.live(), "engine step failed");
        self.ready.worker_down(&self.metrics);
        self.metrics.engine_failures.inc();
        for a in self.active.drain(..) {
            if a.shadow.is_some() {
                self.metrics.shadow_dropped.inc();
            } else {
                let _ = a.job.reply.send(Err(e.clone()));
            }
        }
        self.shadows = 0;
        self.slots.clear();
        self.publish_active();
        let mut backoff = Duration::from_millis(100);
        loop {
            match graphs::warm_up(&mut self.sessions, &self.manifest) {
                Ok(()) => break,
                Err(err) => {
                    tracing::error!(model = %model, error = %Chain(&err), "engine self-test failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        self.ready.worker_up(&self.metrics);
        tracing::info!(model = %model, "engine recovered");
    }

    fn cancel(&self, a: Active, reason: CancelReason) {
        self.metrics.cancelled(reason).inc();
        if reason == CancelReason::Deadline {
            let _ = a.job.reply.send(Err(Error::DeadlineExceeded(
                "deadline passed before the request's first timestep".into(),
            )));
        }
    }

    fn is_abandoned(job: &Job) -> bool {
        job.reply.is_closed() || job.progress.as_ref().is_some_and(|p| p.is_closed())
    }

    /// Why an abandoned job is dropped: the server answers a request 504 at its deadline and
    /// lets go of it, so a job abandoned past its deadline counts as a deadline cancellation.
    fn abandoned_because(job: &Job, now: Instant) -> CancelReason {
        match now >= job.deadline {
            true => CancelReason::Deadline,
            false => CancelReason::ClientGone,
        }
    }

    /// Before the next step, the requests that cannot take it leave the batch: those whose client
    /// went away, those whose deadline passed before their first step (504), and those with a
    /// prediction whose deadline the next step would miss, which are answered with it, flagged
    /// as a deadline exit. The gauge of active requests follows at once.
    fn leave_before_step(&mut self) {
        let now = Instant::now();
        let next_step_ends = now + answer_lead(self.step_estimate);
        let mut i = self.active.len();
        while i > 0 {
            i -= 1;
            let a = &self.active[i];
            // A shadow has no client and no deadline of its own.
            if a.shadow.is_some() {
                continue;
            }
            let reason = if Self::is_abandoned(&a.job) {
                Some(Self::abandoned_because(&a.job, now))
            } else if a.t == 0 && now >= a.job.deadline {
                Some(CancelReason::Deadline)
            } else if a.t > 0 && next_step_ends >= a.job.deadline {
                None
            } else {
                continue;
            };
            let a = self.active.swap_remove(i);
            self.slots.swap_remove(i);
            match reason {
                Some(r) => self.dropped.push((a, r)),
                None => {
                    let (confidence, class_id, probabilities) = self.prediction(&a);
                    self.leaving.push(Leaving {
                        a,
                        confidence,
                        class_id,
                        probabilities,
                        deadline_exit: true,
                    });
                }
            }
        }
        if self.dropped.is_empty() && self.leaving.is_empty() {
            return;
        }
        self.publish_active();
        while let Some((a, r)) = self.dropped.pop() {
            self.cancel(a, r);
        }
        self.answer_leaving();
    }

    /// A row's prediction after its steps so far: the max softmax, the class and the
    /// probabilities of its aggregated logits, as its exit rule scores them.
    fn prediction(&mut self, a: &Active) -> (f64, usize, Vec<f64>) {
        let mean = self.manifest.exit.aggregation == Aggregation::Mean;
        aggregate_into(&mut self.agg, &a.sum, a.t, mean);
        exit::score(&self.agg, self.manifest.exit.temperature)
    }

    fn admit(&mut self, jobs: &mut Vec<Job>) {
        let now = Instant::now();
        self.answer_waited_out(jobs, now);
        let frame = self.manifest.input.len();
        let per_step = self.manifest.input.per_step();
        if per_step {
            self.refuse_bad_frames(jobs);
        }
        if jobs.is_empty() {
            return;
        }
        let actions = match self.policy_actions(jobs) {
            Ok(a) => a,
            Err(e) => {
                self.reject(jobs, e);
                return;
            }
        };
        let encode = !self.cfg.ablates(Ablation::EncoderEveryStep);
        // A per_step row starts on its first frame; the others step on their one input.
        let images: Vec<&[f32]> = jobs
            .iter()
            .map(|j| match per_step {
                true => &j.input[..frame],
                false => j.input.as_slice(),
            })
            .collect();
        if let Err(e) = self
            .slots
            .admit(&images, self.sessions.encoder.as_mut(), encode)
        {
            self.reject(jobs, e);
            return;
        }
        let k = self.manifest.num_classes();
        let t_max = self.manifest.timesteps;
        for (i, job) in jobs.drain(..).enumerate() {
            let mut rule = job.rule.resolve(actions.get(i).copied());
            // A request with t frames runs at most t steps.
            let full_t = if per_step {
                let frames = job.input.len() / frame;
                rule = rule.capped(frames);
                frames
            } else {
                t_max
            };
            self.active.push(Active {
                rule,
                sum: vec![0.0; k],
                t: 0,
                full_t,
                trajectory: Vec::new(),
                admitted: now,
                job,
                shadow: None,
            });
        }
    }

    /// Takes out of `jobs` the requests whose client is gone, whose deadline passed in the
    /// queue, or that waited past the adaptive objective's queue budget (answered 504 and 429).
    fn answer_waited_out(&self, jobs: &mut Vec<Job>, now: Instant) {
        jobs.retain(|job| {
            let queued = now.saturating_duration_since(job.enqueued);
            self.metrics.queue_duration.observe(queued.as_secs_f64());
            let gone = Self::is_abandoned(job);
            if gone {
                self.metrics
                    .cancelled(Self::abandoned_because(job, now))
                    .inc();
            }
            !gone
        });
        // Deadlines passed in the queue, and waits over the adaptive objective's queue budget,
        // are answered here (`retain` cannot move the job out).
        let mut i = 0;
        while i < jobs.len() {
            let waited = now.saturating_duration_since(jobs[i].enqueued);
            if now >= jobs[i].deadline {
                let job = jobs.swap_remove(i);
                self.metrics.cancelled(CancelReason::Deadline).inc();
                let _ = job.reply.send(Err(Error::DeadlineExceeded(
                    "deadline passed while the request waited in the queue".into(),
                )));
            } else if let Some(budget) = jobs[i].max_queue_wait.filter(|b| waited > *b) {
                let job = jobs.swap_remove(i);
                self.metrics.cancelled(CancelReason::QueueBudget).inc();
                let _ = job.reply.send(Err(Error::Shed(format!(
                    "model {} is overloaded: the request waited {:.1} ms in the queue, over the \
                     {:.1} ms the adaptive p99 objective leaves for queueing; retry after 1 s",
                    self.manifest.name,
                    waited.as_secs_f64() * 1e3,
                    budget.as_secs_f64() * 1e3
                ))));
            } else {
                i += 1;
            }
        }
    }

    /// Refuses the per_step jobs whose input is not 1..=T whole frames.
    fn refuse_bad_frames(&self, jobs: &mut Vec<Job>) {
        let frame = self.manifest.input.len();
        // Every transport checks the frames; a job that slipped through is refused here, so
        // that no step reads past its input.
        let t_max = self.manifest.timesteps;
        let mut i = 0;
        while i < jobs.len() {
            let n = jobs[i].input.len();
            if n == 0 || !n.is_multiple_of(frame) || n / frame > t_max {
                let job = jobs.swap_remove(i);
                let _ = job.reply.send(Err(Error::invalid(format!(
                    "{n} input values are not 1..={t_max} frames of {frame}; model {} takes {}",
                    self.manifest.name,
                    self.manifest.input.expected(t_max)
                ))));
            } else {
                i += 1;
            }
        }
    }

    fn reject(&self, jobs: &mut Vec<Job>, e: Error) {
        tracing::error!(model = %self.model(), error = %Chain(&e), "encoder/policy failed");
        for job in jobs.drain(..) {
            let _ = job.reply.send(Err(e.clone()));
        }
    }

    /// The SEENN-II policy once for the newcomers, when one of them asked for it.
    fn policy_actions(&mut self, jobs: &[Job]) -> Result<Vec<usize>, Error> {
        let wants_policy = jobs
            .iter()
            .any(|j| matches!(j.rule, RequestRule::Policy { .. }));
        let (Some(session), Some(g), true) = (
            &mut self.sessions.policy,
            &self.manifest.graphs.policy,
            wants_policy,
        ) else {
            return Ok(Vec::new());
        };
        let spec = &self.manifest.input;
        let mut batch = Vec::with_capacity(jobs.len() * spec.len());
        for j in jobs {
            batch.extend_from_slice(&j.input);
        }
        let mut shape = vec![jobs.len()];
        shape.extend_from_slice(spec.dims());
        let logits = graphs::run_single_input(session, &g.input, &g.output, shape, batch)?;
        let a = g.actions.len();
        let t_max = self.manifest.timesteps;
        Ok(logits
            .chunks(a)
            .zip(jobs)
            .map(|(row, job)| {
                let scale = match job.rule {
                    RequestRule::Policy { bias_scale, .. } => bias_scale,
                    _ => 0.0,
                };
                exit::biased_action(row, &g.actions, scale, t_max)
            })
            .collect())
    }

    /// `exit.onnx` over the rows on the learned rule (in row order), one run per row, fed the
    /// row's running sum cast to float32 and its t: one stop probability per such row. One row per
    /// run, because ONNX Runtime's CPU GEMM gives a row slightly different bits depending on how
    /// many rows share the run (on `exit.onnx`, about 2% of rows differ in the last bits between
    /// runs of 1, 3 and 5 rows): batched, a request's exit would depend on which requests share
    /// its batch. The runs go through preallocated one-row buffers (`ExitRow`).
    fn learned_scores(&mut self) -> Result<Vec<f32>, Error> {
        let mut scores = Vec::new();
        for a in &self.active {
            if !matches!(a.rule, ExitRule::Learned { .. }) {
                continue;
            }
            let (Some(session), Some(row)) = (self.sessions.exit.as_mut(), self.exit_row.as_mut())
            else {
                return Err(Error::internal(format!(
                    "model {} has no exit.onnx for the learned rule",
                    self.manifest.name
                )));
            };
            scores.push(row.score(session, &a.sum, a.t)?);
        }
        Ok(scores)
    }

    /// A per_step model's features before a step: each active row's next frame (frame index = the
    /// row's steps so far), all rows written in one go.
    fn write_frames(&mut self) -> Result<(), Error> {
        let frame = self.manifest.input.len();
        self.frames.clear();
        for a in &self.active {
            let x = a
                .job
                .input
                .get(a.t * frame..(a.t + 1) * frame)
                .ok_or_else(|| {
                    Error::internal(format!(
                        "a row at step {} has only {} frames",
                        a.t + 1,
                        a.job.input.len() / frame.max(1)
                    ))
                })?;
            self.frames.extend_from_slice(x);
        }
        self.slots.write_features(0, &self.frames)
    }

    /// One step of the batch: the graphs run, every row scored, the rows whose rule says so
    /// leave (answered, or kept on as shadow runs), and their answers are sent.
    fn step(&mut self) -> Result<(), Error> {
        self.run_graphs()?;
        self.score_rows();
        let stops = self.learned_scores()?;
        self.find_exits(&stops)?;
        self.retire_finished();
        // The gauge is right before anyone gets an answer.
        self.publish_active();
        self.answer_leaving();
        Ok(())
    }

    /// Runs the batch's graphs for one timestep (with the ablations asked for) and counts it.
    fn run_graphs(&mut self) -> Result<(), Error> {
        if self.inject_fault.swap(false, Ordering::SeqCst) {
            return Err(Error::internal("injected engine fault (test switch)"));
        }
        let n = self.active.len();
        if self.slots.len() != n {
            return Err(Error::internal(format!(
                "batch rows out of step: {} rows for {n} requests",
                self.slots.len()
            )));
        }
        let started = Instant::now();
        if self.cfg.ablates(Ablation::EncoderEveryStep) && self.sessions.encoder.is_some() {
            let images: Vec<&[f32]> = self.active.iter().map(|a| a.job.input.as_slice()).collect();
            let Some(session) = self.sessions.encoder.as_mut() else {
                return Err(Error::internal("the model has no encoder graph"));
            };
            self.slots.encode_all(&images, session)?;
        }
        if self.manifest.input.per_step() {
            self.write_frames()?;
        }
        self.slots.step(&mut self.sessions.step)?;
        if self.cfg.ablates(Ablation::CopyMembranes) {
            self.slots.copy_membranes()?;
        }
        let elapsed = started.elapsed();
        self.metrics.step_duration.observe(elapsed.as_secs_f64());
        // A moving average over about the last 8 steps; the first step sets it.
        self.step_estimate = match self.step_estimate.is_zero() {
            true => elapsed,
            false => (self.step_estimate * 7 + elapsed) / 8,
        };
        self.step_us.store(
            u64::try_from(self.step_estimate.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let live = self.live();
        if live > 0 {
            self.metrics.batch_size.observe(live as f64);
        }
        self.metrics.steps_total.inc_by(live as f64);
        self.metrics.shadow_steps.inc_by(self.shadows as u64);
        Ok(())
    }

    /// Adds every row's logits to its aggregate and scores it (max softmax, class,
    /// probabilities) into `scored`.
    fn score_rows(&mut self) {
        let temperature = self.manifest.exit.temperature;
        let aggregation = self.manifest.exit.aggregation;
        let mean = aggregation == Aggregation::Mean;
        self.scored.clear();
        for a in self.active.iter_mut() {
            let i = self.scored.len();
            let logits = self.slots.logits(i);
            if aggregation == Aggregation::Last {
                for (s, z) in a.sum.iter_mut().zip(logits) {
                    *s = f64::from(*z);
                }
            } else {
                for (s, z) in a.sum.iter_mut().zip(logits) {
                    *s += f64::from(*z);
                }
            }
            a.t += 1;
            aggregate_into(&mut self.agg, &a.sum, a.t, mean);
            self.scored.push(exit::score(&self.agg, temperature));
        }
    }

    /// Each row's exit score (the max softmax, or the learned rule's stop probability from
    /// `stops`, one per learned row in order) traced, and the rows that exit now in `finished`.
    fn find_exits(&mut self, stops: &[f32]) -> Result<(), Error> {
        self.finished.clear();
        let mut learned_row = 0;
        for (i, (a, (confidence, class_id, probs))) in self
            .active
            .iter_mut()
            .zip(self.scored.drain(..))
            .enumerate()
        {
            // The exit score: the max softmax, or the learned rule's stop probability.
            let score = match a.rule {
                ExitRule::Learned { .. } => {
                    let s = stops.get(learned_row).copied().ok_or_else(|| {
                        Error::internal("exit.onnx gave fewer scores than learned rows")
                    })?;
                    learned_row += 1;
                    f64::from(s)
                }
                _ => confidence,
            };
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
            let done = match a.shadow {
                Some(_) => a.t >= a.full_t,
                None => a.rule.should_exit(a.t, score),
            };
            if done {
                self.finished.push((i, confidence, class_id, probs));
            }
        }
        Ok(())
    }

    /// Takes the finished rows out of the batch: a shadow run that reached T is counted, an
    /// answer leaves (its row kept on as a shadow run when one is sampled).
    fn retire_finished(&mut self) {
        // Highest row first: the row that `swap_remove` moves down never exits in this step.
        while let Some((i, confidence, class_id, probs)) = self.finished.pop() {
            if let Some(sh) = self.active[i].shadow {
                // A shadow run reached T: the class it answered against the full-T class.
                self.active.swap_remove(i);
                self.slots.swap_remove(i);
                self.shadows -= 1;
                self.metrics.shadow(sh.rule, class_id == sh.class_id).inc();
                continue;
            }
            let a = if self.takes_shadow(i) {
                // The answer leaves with the request; its row stays, as a shadow run.
                let shadow = Active::shadow_of(&mut self.active[i], class_id);
                self.shadows += 1;
                std::mem::replace(&mut self.active[i], shadow)
            } else {
                self.slots.swap_remove(i);
                self.active.swap_remove(i)
            };
            self.leaving.push(Leaving {
                a,
                confidence,
                class_id,
                probabilities: probs,
                deadline_exit: false,
            });
        }
    }

    /// Records and sends the answers of the rows that left.
    fn answer_leaving(&mut self) {
        for l in self.leaving.drain(..) {
            let a = l.a;
            let rm = self.metrics.rule(a.rule.kind(), a.job.default_policy);
            rm.timesteps_used.observe(a.t as f64);
            if let Some(c) = rm.exits.get(a.t.saturating_sub(1)) {
                c.inc();
            }
            if l.deadline_exit {
                rm.deadline_exits.inc();
            }
            let inference = a.admitted.elapsed();
            rm.inference_duration.observe(inference.as_secs_f64());
            let outcome = Outcome {
                class_id: l.class_id,
                confidence: l.confidence,
                probabilities: l.probabilities,
                timesteps_used: a.t,
                rule: a.rule,
                trajectory: a.trajectory,
                queue: a.admitted.saturating_duration_since(a.job.enqueued),
                inference,
                deadline_exit: l.deadline_exit,
            };
            let _ = a.job.reply.send(Ok(outcome));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_workers_fill_the_machine_per_model_within_twice_the_cores() {
        use super::workers_for;
        assert_eq!(workers_for(2, 1), 2);
        assert_eq!(workers_for(2, 2), 2);
        assert_eq!(workers_for(2, 3), 1);
        assert_eq!(workers_for(16, 2), 16);
        assert_eq!(workers_for(16, 3), 10);
        assert_eq!(workers_for(16, 40), 1);
        assert_eq!(workers_for(0, 0), 1);
    }
}
