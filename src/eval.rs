//! `seenn eval`: runs the engine in-process (no network) over a labelled dataset, for each exit rule,
//! and compares accuracy and average timesteps with the trainer's test numbers (`report.json`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::calibrate::data::DataError;
use crate::dataset::DatasetError;
use crate::engine::{Batching, EngineConfig, Job, Outcome, RequestRule};
use crate::metrics::Metrics;
use crate::model::{self, LoadError};
use crate::registry::{self, LoadOptions, LoadedModel};
use crate::runtime::{self, Device, RuntimeError, SessionOptions};

/// Why the evaluation cannot run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Package(#[from] LoadError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("cannot create the metrics")]
    Metrics(#[source] prometheus::Error),
    /// A flag or file that does not fit; the message says what is accepted.
    #[error("{0}")]
    Invalid(String),
    #[error("{}: not a trainer report", path.display())]
    Report {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The engine refused or failed a request.
    #[error(transparent)]
    Engine(#[from] crate::error::Error),
    #[error("the engine dropped a request")]
    Dropped(#[source] tokio::sync::oneshot::error::RecvError),
    #[error("an eval worker failed")]
    Worker(#[source] tokio::task::JoinError),
}

#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// The model package folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset: fashion-mnist (IDX files), samples (the package's golden samples), or a path: an
    /// .npz with `x` and `y`, or a folder of images with one subfolder per class (as `calibrate`).
    #[arg(long, default_value = "fashion-mnist")]
    pub data: String,
    #[arg(long, default_value = crate::dataset::DEFAULT_FASHION_DIR)]
    pub data_dir: PathBuf,
    /// test or train (the validation split is the trainer's; use the trainer for it).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Only the first N images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Run the images N times over (for timing small sets such as `--data samples`).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Requests in flight at once (1 measures per-request latency without queueing).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// continuous or static batching (for comparison).
    #[arg(long, value_enum, default_value = "continuous")]
    pub batching: Batching,
    /// Turn an optimisation off to measure it (encoder-every-step, copy-membranes); repeatable.
    #[arg(long, value_enum)]
    pub ablate: Vec<crate::engine::Ablation>,
    #[arg(long, default_value_t = 1)]
    pub intra_threads: usize,
    /// Execution device: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Engine worker threads (default: one per available core).
    #[arg(long, env = "SEENN_ENGINE_WORKERS")]
    pub engine_workers: Option<usize>,
    /// Microseconds an idle engine worker polls its queue before it blocks (as `serve`).
    #[arg(long, env = "SEENN_ENGINE_SPIN_US", default_value_t = 500)]
    pub engine_spin_us: u64,
    /// Where the engine keeps membranes between timesteps (as `serve`).
    #[arg(long, env = "SEENN_SLOT_MEMORY", value_enum, default_value = "auto")]
    pub slot_memory: crate::engine::SlotMemoryChoice,
    #[arg(long, env = "SEENN_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Fail (exit 1) when accuracy or average timesteps differ from report.json by more than 0.05 pp.
    #[arg(long)]
    pub check: bool,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Run the SEENN-II policy with this per-action bias scale (calibration.json's
    /// `policy.bias_sweep`) and compare it with the trainer's test row at the same scale.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub bias_scale: f64,
}

/// The exit rules `seenn eval` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    Fixed,
    Confidence,
    Policy,
    Learned,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Rule::Fixed => "fixed",
            Rule::Confidence => "confidence",
            Rule::Policy => "policy",
            Rule::Learned => "learned",
        })
    }
}

/// One exit rule over the whole dataset.
#[derive(Debug, Clone, Serialize)]
pub struct RuleResult {
    pub rule: Rule,
    pub setting: String,
    pub accuracy: f64,
    pub avg_timesteps: f64,
    pub exits_per_t: Vec<u64>,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub throughput_rps: f64,
    /// CPU time of the whole process (engine workers, async runtime) over this rule's run, in
    /// seconds; `None` where the OS does not report it. On a shared machine, throughput falls with
    /// what other work takes while CPU time per request does not.
    pub cpu_seconds: Option<f64>,
    /// Medians per request: waiting in the queue until a worker admitted it, from admission to the
    /// answer, and the rest of the latency (submitting, the reply's way back to the caller).
    pub queue_p50_ms: f64,
    pub inference_p50_ms: f64,
    pub other_p50_ms: f64,
}

/// The confidence rule at one α, computed from the full-T trajectories.
#[derive(Debug, Clone, Serialize)]
pub struct SweepPoint {
    pub alpha: f64,
    pub accuracy: f64,
    pub avg_timesteps: f64,
}

/// One number compared with the trainer's.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub what: String,
    pub eval: f64,
    pub trainer: f64,
    pub ok: bool,
}

/// What `seenn eval` measured (`--json` prints it as is).
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub version: String,
    pub samples: usize,
    pub split: String,
    pub concurrency: usize,
    pub timesteps: usize,
    pub rules: Vec<RuleResult>,
    pub accuracy_per_t: Vec<f64>,
    pub alpha_sweep: Vec<SweepPoint>,
    pub trainer_comparison: Vec<Check>,
    pub matches_trainer: bool,
}

impl EvalReport {
    /// `--check`: compared with the trainer, and every comparison within tolerance.
    pub fn passes_check(&self) -> bool {
        self.matches_trainer && !self.trainer_comparison.is_empty()
    }

    /// The human-readable table (what `seenn eval` prints without `--json`).
    pub fn render_text(&self) -> String {
        self.to_string()
    }
}

impl std::fmt::Display for EvalReport {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            out,
            "{} v{} on {} {} images (concurrency {})",
            self.model, self.version, self.samples, self.split, self.concurrency
        )?;
        writeln!(
            out,
            "{:<11} {:<14} {:>9} {:>8} {:>9} {:>9} {:>10}  exits per t",
            "rule", "setting", "accuracy", "avg t", "p50 ms", "p99 ms", "req/s"
        )?;
        for r in &self.rules {
            writeln!(
                out,
                "{:<11} {:<14} {:>8.2}% {:>8.3} {:>9.3} {:>9.3} {:>10.1}  {:?}",
                r.rule,
                r.setting,
                r.accuracy * 100.0,
                r.avg_timesteps,
                r.latency_p50_ms,
                r.latency_p99_ms,
                r.throughput_rps,
                r.exits_per_t
            )?;
        }
        writeln!(
            out,
            "accuracy per t: {}",
            self.accuracy_per_t
                .iter()
                .map(|a| format!("{:.2}%", a * 100.0))
                .collect::<Vec<_>>()
                .join(" ")
        )?;
        writeln!(out, "alpha sweep (alpha: accuracy, avg t):")?;
        for s in &self.alpha_sweep {
            writeln!(
                out,
                "  {:<9} {:>7.2}% {:.3}",
                s.alpha,
                s.accuracy * 100.0,
                s.avg_timesteps
            )?;
        }
        for c in &self.trainer_comparison {
            writeln!(
                out,
                "check {:<24} eval {:.5} trainer {:.5} {}",
                c.what,
                c.eval,
                c.trainer,
                if c.ok { "ok" } else { "MISMATCH" }
            )?;
        }
        Ok(())
    }
}

/// The numbers `seenn eval` compares with in the trainer's `report.json`; everything else in
/// the file is ignored, and a number the trainer did not write is not compared.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TrainerReport {
    /// How many of the first test images the trainer evaluated.
    #[serde(default)]
    pub samples: Option<u64>,
    #[serde(default)]
    pub accuracy_per_t: Vec<f64>,
    #[serde(default)]
    pub seenn_i: TrainerRule,
    #[serde(default)]
    pub seenn_ii: TrainerRule,
    /// SEENN-II along its bias curve on the test set.
    #[serde(default)]
    pub seenn_ii_bias_sweep: Vec<TrainerBiasRow>,
    /// The learned exit rule at its chosen threshold.
    #[serde(default)]
    pub learned: TrainerRule,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TrainerBiasRow {
    pub bias_scale: f64,
    pub accuracy: f64,
    pub avg_timesteps: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TrainerRule {
    #[serde(default)]
    pub accuracy: Option<f64>,
    #[serde(default)]
    pub avg_timesteps: Option<f64>,
}

/// Reads the package's `report.json`; `None` when there is none.
pub fn read_trainer_report(dir: &std::path::Path) -> Result<Option<TrainerReport>, EvalError> {
    let path = dir.join("report.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| EvalError::Report { path, source })
}

/// CPU time this process has used (user + system, all threads), from `/proc/self/stat`.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'; utime and stime
    // are fields 14 and 15, in clock ticks (USER_HZ, 100 on Linux).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn sort(v: &mut [f64]) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
}

/// The median of `f` over the requests (each with its latency in milliseconds).
fn median_of(outcomes: &[Outcome], by_request: &[f64], f: impl Fn(&Outcome, f64) -> f64) -> f64 {
    let mut v: Vec<f64> = outcomes
        .iter()
        .zip(by_request)
        .map(|(o, l)| f(o, *l))
        .collect();
    sort(&mut v);
    percentile(&v, 0.5)
}

pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// One rule's run over the dataset.
struct RuleRun {
    /// In dataset order.
    outcomes: Vec<Outcome>,
    /// Latencies in milliseconds, sorted.
    lat: Vec<f64>,
    /// Latencies in milliseconds, in dataset order.
    by_request: Vec<f64>,
    elapsed: Duration,
    /// Process CPU seconds over the run.
    cpu: Option<f64>,
}

async fn run_rule(
    m: &Arc<LoadedModel>,
    inputs: &Arc<Vec<Vec<f32>>>,
    rule: RequestRule,
    explain: bool,
    concurrency: usize,
    label: &str,
    quiet: bool,
) -> Result<RuleRun, EvalError> {
    let n = inputs.len();
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(n as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>24} [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(label.to_string());
    let next = Arc::new(AtomicUsize::new(0));
    let cpu0 = process_cpu_seconds();
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (m, inputs, next, bar) = (m.clone(), inputs.clone(), next.clone(), bar.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= inputs.len() {
                    break;
                }
                let (tx, rx) = tokio::sync::oneshot::channel();
                let t0 = Instant::now();
                m.engine.submit(Job {
                    explain,
                    enqueued: t0,
                    ..Job::new(inputs[i].clone(), rule, t0 + Duration::from_secs(3600), tx)
                })?;
                let outcome = rx.await.map_err(EvalError::Dropped)??;
                out.push((i, outcome, t0.elapsed().as_secs_f64() * 1e3));
                bar.inc(1);
            }
            Ok::<_, EvalError>(out)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for w in workers {
        all.extend(w.await.map_err(EvalError::Worker)??);
    }
    let elapsed = started.elapsed();
    let cpu = process_cpu_seconds().zip(cpu0).map(|(b, a)| b - a);
    bar.finish_and_clear();
    all.sort_by_key(|(i, _, _)| *i);
    let by_request: Vec<f64> = all.iter().map(|(_, _, l)| *l).collect();
    let mut lat = by_request.clone();
    sort(&mut lat);
    Ok(RuleRun {
        outcomes: all.into_iter().map(|(_, o, _)| o).collect(),
        lat,
        by_request,
        elapsed,
        cpu,
    })
}

fn summarize(
    rule: Rule,
    setting: String,
    run: &RuleRun,
    labels: &[usize],
    t_max: usize,
) -> RuleResult {
    let RuleRun {
        outcomes,
        lat,
        by_request,
        elapsed,
        cpu,
    } = run;
    let elapsed = *elapsed;
    let n = outcomes.len().max(1) as f64;
    let correct = outcomes
        .iter()
        .zip(labels)
        .filter(|(o, l)| o.class_id == **l)
        .count();
    let mut exits = vec![0u64; t_max];
    for o in outcomes {
        exits[o.timesteps_used - 1] += 1;
    }
    RuleResult {
        rule,
        setting,
        accuracy: correct as f64 / n,
        avg_timesteps: outcomes
            .iter()
            .map(|o| o.timesteps_used as f64)
            .sum::<f64>()
            / n,
        exits_per_t: exits,
        latency_p50_ms: percentile(lat, 0.5),
        latency_p99_ms: percentile(lat, 0.99),
        throughput_rps: outcomes.len() as f64 / elapsed.as_secs_f64(),
        cpu_seconds: *cpu,
        queue_p50_ms: median_of(outcomes, by_request, |o, _| o.queue.as_secs_f64() * 1e3),
        inference_p50_ms: median_of(outcomes, by_request, |o, _| o.inference.as_secs_f64() * 1e3),
        other_p50_ms: median_of(outcomes, by_request, |o, l| {
            l - (o.queue + o.inference).as_secs_f64() * 1e3
        }),
    }
}

/// Runs the evaluation and prints the report (JSON with `--json`, a table otherwise). `Ok(false)`
/// when `--check` is given and the numbers do not match the trainer's.
pub async fn run(args: EvalArgs) -> anyhow::Result<bool> {
    let report = evaluate(&args).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot serialize the report")?
        );
    } else {
        print!("{}", report.render_text());
    }
    Ok(!args.check || report.passes_check())
}

/// Runs the engine over the dataset for every exit rule and compares with `report.json`.
pub async fn evaluate(args: &EvalArgs) -> Result<EvalReport, EvalError> {
    let (env, _) = runtime::init(args.ort_lib.as_deref())?;
    let m = Arc::new(load_model(args, &env)?);
    let (inputs, labels) = load_dataset(args, &m)?;
    let reps = args.repeat.max(1);
    let n0 = inputs.len();
    let inputs = Arc::new(
        inputs
            .into_iter()
            .cycle()
            .take(n0 * reps)
            .collect::<Vec<_>>(),
    );
    let labels: Vec<usize> = labels.iter().copied().cycle().take(n0 * reps).collect();
    let t_max = m.manifest.timesteps;
    let (full, results) = run_rules(args, &m, &inputs, &labels).await?;
    let accuracy_per_t = accuracy_per_t(&full, &labels, t_max);
    let alpha_sweep = alpha_sweep(&m, &full, &labels, t_max);
    let checks = compare_with_trainer(args, &results, &accuracy_per_t, labels.len(), t_max)?;
    let matches_trainer = checks.iter().all(|c| c.ok);
    Ok(EvalReport {
        model: m.manifest.name.clone(),
        version: m.manifest.version.clone(),
        samples: labels.len(),
        split: args.split.clone(),
        concurrency: args.concurrency,
        timesteps: t_max,
        rules: results,
        accuracy_per_t,
        alpha_sweep,
        trainer_comparison: checks,
        matches_trainer,
    })
}

/// The package loaded with its engine, configured as `serve` would be from the eval flags.
fn load_model(
    args: &EvalArgs,
    env: &ort::environment::Environment,
) -> Result<LoadedModel, EvalError> {
    let manifest = model::read_manifest(&args.model)?;
    let metrics =
        Arc::new(Metrics::new(manifest.timesteps, args.max_batch).map_err(EvalError::Metrics)?);
    let device = Device::parse(&args.device)?;
    let opts = LoadOptions {
        env,
        session: SessionOptions {
            device: device.clone(),
            intra_threads: args.intra_threads,
        },
        engine: EngineConfig {
            max_batch: args.max_batch,
            max_queue: 1 << 16,
            batching: args.batching,
            ablations: args.ablate.clone(),
            workers: args.engine_workers.map_or(0, |n| n.max(1)),
            shadow_rows: 0,
            spin: std::time::Duration::from_micros(args.engine_spin_us),
            slot_memory: args.slot_memory.resolve(&device),
            // Offline evaluation wants throughput: the whole batch.
            width: crate::engine::BatchWidth::Fixed(args.max_batch),
        },
        metrics,
    };
    Ok(registry::load_one(&args.model, &opts)?)
}

/// The inputs (as the engine takes them) and labels of `--data`, at most `--limit` of them.
fn load_dataset(
    args: &EvalArgs,
    m: &LoadedModel,
) -> Result<(Vec<Vec<f32>>, Vec<usize>), EvalError> {
    let spec = &m.manifest.input;
    match args.data.as_str() {
        "fashion-mnist" | "mnist" if !spec.is_image() => Err(EvalError::Invalid(format!(
            "--data {} holds images; model {} takes tensors ({}): give --data samples or a path to {}",
            args.data,
            m.manifest.name,
            spec.expected(m.manifest.timesteps),
            crate::calibrate::data::ACCEPTED
        ))),
        "fashion-mnist" | "mnist" => {
            let d = crate::dataset::load_idx(&args.data_dir, &args.split)?;
            let n = args.limit.unwrap_or(d.labels.len()).min(d.labels.len());
            let mut xs = Vec::with_capacity(n);
            for px in d.images.iter().take(n) {
                let img = image::GrayImage::from_raw(d.width as u32, d.height as u32, px.clone())
                    .ok_or_else(|| EvalError::Invalid("bad image".into()))?;
                xs.push(crate::preprocess::to_tensor(
                    &image::DynamicImage::ImageLuma8(img),
                    spec,
                ));
            }
            Ok((xs, d.labels[..n].to_vec()))
        }
        "samples" => {
            let golden = model::read_golden(&args.model)?.ok_or_else(|| {
                EvalError::Invalid(format!("{}: no golden.json", args.model.display()))
            })?;
            let mut xs = Vec::with_capacity(golden.samples.len());
            let mut labels = Vec::with_capacity(golden.samples.len());
            for s in &golden.samples {
                // Images preprocessed, .npy tensors as they are.
                xs.push(s.read_input(&args.model, &m.manifest)?);
                labels.push(s.label);
            }
            Ok((xs, labels))
        }
        other => {
            let path = std::path::Path::new(other);
            if !(path.is_dir() || path.is_file()) {
                return Err(EvalError::Invalid(format!(
                    "unknown --data {other:?}; accepted: fashion-mnist, mnist, samples, or a path to {}",
                    crate::calibrate::data::ACCEPTED
                )));
            }
            let d = crate::calibrate::data::load(path, &m.manifest)?;
            let n = args.limit.unwrap_or(d.labels.len()).min(d.labels.len());
            let mut inputs = d.inputs;
            inputs.truncate(n);
            Ok((inputs, d.labels[..n].to_vec()))
        }
    }
}

/// Every exit rule the model serves over the inputs: the full-T run (with the trajectory, for the
/// accuracy at every t and the α sweep) and one summary per rule.
async fn run_rules(
    args: &EvalArgs,
    m: &Arc<LoadedModel>,
    inputs: &Arc<Vec<Vec<f32>>>,
    labels: &[usize],
) -> Result<(RuleRun, Vec<RuleResult>), EvalError> {
    let t_max = m.manifest.timesteps;
    let alpha = m.manifest.exit.default_alpha;
    let run = |rule: RequestRule, explain: bool, label: &'static str| {
        run_rule(
            m,
            inputs,
            rule,
            explain,
            args.concurrency,
            label,
            args.quiet,
        )
    };
    let mut results = Vec::new();
    // Full T with the trajectory: accuracy at every t and the exact α sweep (the score at each t
    // does not depend on α).
    let full = run(RequestRule::Fixed { timesteps: t_max }, true, "fixed T").await?;
    results.push(summarize(
        Rule::Fixed,
        format!("t={t_max}"),
        &full,
        labels,
        t_max,
    ));
    let conf = run(
        RequestRule::Confidence {
            alpha,
            max_timesteps: t_max,
        },
        false,
        "confidence (SEENN-I)",
    )
    .await?;
    results.push(summarize(
        Rule::Confidence,
        format!("alpha={alpha}"),
        &conf,
        labels,
        t_max,
    ));
    if m.has_policy() {
        let pol = run(
            RequestRule::Policy {
                max_timesteps: t_max,
                bias_scale: args.bias_scale,
            },
            false,
            "policy (SEENN-II)",
        )
        .await?;
        let setting = if args.bias_scale == 0.0 {
            "argmax".into()
        } else {
            format!("bias_scale={}", args.bias_scale)
        };
        results.push(summarize(Rule::Policy, setting, &pol, labels, t_max));
    }
    if let (true, Some(threshold)) = (m.has_learned(), m.manifest.exit.default_threshold) {
        let learned = run(
            RequestRule::Learned {
                threshold,
                max_timesteps: t_max,
            },
            false,
            "learned exit rule",
        )
        .await?;
        results.push(summarize(
            Rule::Learned,
            format!("threshold={threshold}"),
            &learned,
            labels,
            t_max,
        ));
    }
    Ok((full, results))
}

/// The accuracy of the full-T run's class at every t.
fn accuracy_per_t(full: &RuleRun, labels: &[usize], t_max: usize) -> Vec<f64> {
    let n = labels.len() as f64;
    (0..t_max)
        .map(|t| {
            full.outcomes
                .iter()
                .zip(labels)
                // A per_step sample with fewer frames than T keeps its last step's class.
                .filter(|(o, l)| {
                    o.trajectory
                        .get(t)
                        .or(o.trajectory.last())
                        .is_some_and(|s| s.class_id == **l)
                })
                .count() as f64
                / n
        })
        .collect()
}

/// The confidence rule at every α of calibration.json's sweep, from the full-T trajectories.
fn alpha_sweep(m: &LoadedModel, full: &RuleRun, labels: &[usize], t_max: usize) -> Vec<SweepPoint> {
    let n = labels.len() as f64;
    let grid: Vec<f64> = m
        .calibration
        .as_ref()
        .map(|c| c.alpha_sweep.iter().map(|r| r.alpha).collect())
        .unwrap_or_default();
    grid.iter()
        .map(|&a| {
            let mut correct = 0usize;
            let mut steps = 0usize;
            for (o, l) in full.outcomes.iter().zip(labels) {
                let last = o.trajectory.len().min(t_max).saturating_sub(1);
                let t = o
                    .trajectory
                    .iter()
                    .position(|s| s.score > a)
                    .unwrap_or(last);
                steps += t + 1;
                correct += usize::from(o.trajectory.get(t).is_some_and(|s| s.class_id == *l));
            }
            SweepPoint {
                alpha: a,
                accuracy: correct as f64 / n,
                avg_timesteps: steps as f64 / n,
            }
        })
        .collect()
}

/// The rules' numbers held against the trainer's test numbers (`report.json`), when the run is
/// comparable: the Fashion-MNIST test split, as many images as the trainer evaluated.
fn compare_with_trainer(
    args: &EvalArgs,
    results: &[RuleResult],
    accuracy_per_t: &[f64],
    samples: usize,
    t_max: usize,
) -> Result<Vec<Check>, EvalError> {
    let mut checks = Vec::new();
    let report = read_trainer_report(&args.model)?;
    // The trainer reports on the first `samples` test images.
    let comparable = args.data == "fashion-mnist"
        && args.split == "test"
        && report.as_ref().and_then(|r| r.samples) == Some(samples as u64);
    let (true, Some(report)) = (comparable, report) else {
        return Ok(checks);
    };
    let mut cmp = |what: &str, ours: f64, theirs: Option<f64>| {
        if let Some(t) = theirs {
            checks.push(Check {
                what: what.to_string(),
                eval: ours,
                trainer: t,
                ok: (ours - t).abs() <= 0.0005,
            });
        }
    };
    cmp(
        "SEENN-I accuracy",
        results[1].accuracy,
        report.seenn_i.accuracy,
    );
    cmp(
        "SEENN-I avg timesteps",
        results[1].avg_timesteps,
        report.seenn_i.avg_timesteps,
    );
    if let Some(p) = results.iter().find(|r| r.rule == Rule::Policy) {
        // At scale 0 the exported policy; elsewhere the trainer's bias-sweep row.
        let (acc, avg) = if args.bias_scale == 0.0 {
            (report.seenn_ii.accuracy, report.seenn_ii.avg_timesteps)
        } else {
            let row = report
                .seenn_ii_bias_sweep
                .iter()
                .find(|r| (r.bias_scale - args.bias_scale).abs() < 1e-9)
                .ok_or_else(|| {
                    EvalError::Invalid(format!(
                        "report.json has no seenn_ii_bias_sweep row at bias_scale {}",
                        args.bias_scale
                    ))
                })?;
            (Some(row.accuracy), Some(row.avg_timesteps))
        };
        cmp("SEENN-II accuracy", p.accuracy, acc);
        cmp("SEENN-II avg timesteps", p.avg_timesteps, avg);
    }
    if let Some(p) = results.iter().find(|r| r.rule == Rule::Learned) {
        cmp("learned accuracy", p.accuracy, report.learned.accuracy);
        cmp(
            "learned avg timesteps",
            p.avg_timesteps,
            report.learned.avg_timesteps,
        );
    }
    cmp(
        &format!("accuracy at T={t_max}"),
        accuracy_per_t[t_max - 1],
        report.accuracy_per_t.get(t_max - 1).copied(),
    );
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> EvalReport {
        EvalReport {
            model: "m".into(),
            version: "1".into(),
            samples: 2,
            split: "test".into(),
            concurrency: 1,
            timesteps: 2,
            rules: vec![RuleResult {
                rule: Rule::Confidence,
                setting: "alpha=0.9".into(),
                accuracy: 0.5,
                avg_timesteps: 1.5,
                exits_per_t: vec![1, 1],
                latency_p50_ms: 1.0,
                latency_p99_ms: 2.0,
                throughput_rps: 10.0,
                cpu_seconds: Some(1.0),
                queue_p50_ms: 0.1,
                inference_p50_ms: 0.5,
                other_p50_ms: 0.05,
            }],
            accuracy_per_t: vec![0.5, 0.5],
            alpha_sweep: vec![SweepPoint {
                alpha: 0.9,
                accuracy: 0.5,
                avg_timesteps: 1.5,
            }],
            trainer_comparison: vec![Check {
                what: "SEENN-I accuracy".into(),
                eval: 0.5,
                trainer: 0.5,
                ok: true,
            }],
            matches_trainer: true,
        }
    }

    #[test]
    fn report_json_keeps_the_field_names_scripts_read() {
        let v = serde_json::to_value(report()).unwrap();
        assert_eq!(v["rules"][0]["rule"], "confidence");
        assert_eq!(v["rules"][0]["latency_p50_ms"], 1.0);
        assert_eq!(v["alpha_sweep"][0]["avg_timesteps"], 1.5);
        assert_eq!(v["trainer_comparison"][0]["ok"], true);
        assert_eq!(v["matches_trainer"], true);
        assert_eq!(v["samples"], 2);
        let text = report().render_text();
        assert!(text.contains("confidence  alpha=0.9"), "{text}");
        assert!(text.contains("check SEENN-I accuracy"), "{text}");
        assert!(report().passes_check());
    }

    #[test]
    fn process_cpu_time_grows() {
        let a = process_cpu_seconds().expect("/proc/self/stat");
        let t0 = Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let b = process_cpu_seconds().expect("/proc/self/stat");
        assert!(b >= a && b - a < 5.0, "{a} -> {b}");
    }

    #[test]
    fn trainer_report_reads_what_it_compares() {
        let r: TrainerReport = serde_json::from_str(
            r#"{"samples": 10, "accuracy_per_t": [0.5, 0.6], "seenn_i": {"alpha": 0.9, "accuracy": 0.55},
                "training": {"history": []}}"#,
        )
        .unwrap();
        assert_eq!(r.samples, Some(10));
        assert_eq!(r.seenn_i.accuracy, Some(0.55));
        assert_eq!(r.seenn_i.avg_timesteps, None);
        assert_eq!(r.seenn_ii.accuracy, None);
    }
}
