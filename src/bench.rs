//! `seenn bench`: a load generator against a running server over HTTP or gRPC. Closed loop at a
//! fixed concurrency, or open loop at a fixed rate with latency measured from each request's
//! intended send time (no coordinated omission).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::api::grpc::pb;
use crate::dataset::DatasetError;
use crate::model::LoadError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Grpc,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Server address: http://host:port (HTTP) or http://host:grpc_port (gRPC).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[arg(long, value_enum, default_value = "http")]
    pub protocol: Protocol,
    /// Model name (default: the server's default model).
    #[arg(long)]
    pub model: Option<String>,
    /// fashion-mnist (IDX test images, PNG-encoded) or a model package folder (its golden samples).
    #[arg(long, default_value = "fashion-mnist")]
    pub data: String,
    #[arg(long, default_value = crate::dataset::DEFAULT_FASHION_DIR)]
    pub data_dir: PathBuf,
    /// Closed loop: requests in flight at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Open loop: requests per second (overrides --concurrency).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Stop after this many requests (default 1000 when no --duration).
    #[arg(long)]
    pub requests: Option<usize>,
    #[arg(long)]
    pub rule: Option<String>,
    #[arg(long)]
    pub alpha: Option<f64>,
    #[arg(long)]
    pub max_timesteps: Option<usize>,
    /// Replay a distribution of exit timesteps through rule=fixed, e.g. "1:0.8,2:0.15,4:0.05".
    #[arg(long)]
    pub replay_exits: Option<String>,
    /// Open loop: most requests outstanding at once; a request due beyond it is not sent and is
    /// counted as `client_overrun` (keeps the load generator within its sockets).
    #[arg(long, default_value_t = 2000)]
    pub max_outstanding: usize,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 30.0, value_parser = crate::config::seconds)]
    pub timeout: f64,
    /// The deadline each request carries, in milliseconds (HTTP `timeout_ms`, gRPC
    /// `grpc-timeout`): the server answers what it has by then, flagged `deadline_exit`.
    #[arg(long, value_parser = crate::config::milliseconds)]
    pub deadline_ms: Option<f64>,
    /// GET this path (e.g. /healthz) instead of classifying: the floor of the client, HTTP and
    /// the server's router. Answers count as successes with 0 timesteps and no accuracy.
    #[arg(long)]
    pub get: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub quiet: bool,
}

/// How the load was offered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Open loop: requests per second, sent on schedule.
    OpenLoopRate(f64),
    /// Closed loop: requests in flight at once.
    ClosedLoopConcurrency(usize),
}

/// Latency percentiles of the successful answers, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Latency percentiles of the answers that were not a success, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorLatency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// What `seenn bench` measured (`--json` prints it as is). Non-finite numbers (no answers to
/// measure) are written as `null`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub url: String,
    pub protocol: Protocol,
    pub mode: Mode,
    pub rule: Option<String>,
    pub alpha: Option<f64>,
    pub replay_exits: Option<String>,
    pub requests: u64,
    pub successes: u64,
    pub errors: u64,
    /// Answers by HTTP status, gRPC code or client-side outcome.
    pub by_status: BTreeMap<String, u64>,
    pub duration_s: f64,
    pub throughput_rps: f64,
    pub latency_ms: Latency,
    pub avg_timesteps: f64,
    pub accuracy: f64,
    /// Answers flagged `deadline_exit` (given before the exit rule fired, at the deadline).
    pub deadline_exits: u64,
    /// The accuracy of those answers alone.
    pub deadline_exit_accuracy: f64,
    pub server_rss_mb: Option<f64>,
    pub server_rss_peak_mb: Option<f64>,
    pub offered_rps: f64,
    pub error_latency_ms: ErrorLatency,
    pub rejections_with_retry_after: u64,
    /// The server's own timings of each answer (HTTP `x-*-time-ms` headers, gRPC `timings`):
    /// medians, and the p99 of the total; `None` when the answers carried none.
    pub server_timings_ms: Option<ServerTimings>,
}

/// Where the time of a successful answer went, as the server reports it (milliseconds; medians
/// but for `total_p99`).
#[derive(Debug, Clone, Serialize)]
pub struct ServerTimings {
    /// Waiting in the model's queue until a worker admitted the request.
    pub queue_p50: f64,
    /// From admission to the answer (encoder and every step the request ran).
    pub inference_p50: f64,
    /// The classify call in the server: preprocessing, queue, inference and the way back.
    pub total_p50: f64,
    /// The 99th percentile of the same over the answered requests: the latency the server itself
    /// is accountable for, without the client's and the connection's share (the adaptive-α
    /// controller measures the same time, over default-policy requests, counting sheds as misses).
    pub total_p99: f64,
    /// Per answer, total minus queue and inference (decoding, submitting, the reply's wake-up).
    pub other_p50: f64,
    /// Per answer, the client's latency minus the server's total: the client, the connection and
    /// HTTP/2 or HTTP/1.1 framing, routing, reading the body and writing the response.
    pub outside_p50: f64,
}

impl BenchReport {
    /// The human-readable summary (what `seenn bench` prints without `--json`).
    pub fn render_text(&self) -> String {
        self.to_string()
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.latency_ms;
        writeln!(
            f,
            "{} requests in {:.1} s: {:.1} req/s ok, {} errors {:?}",
            self.requests, self.duration_s, self.throughput_rps, self.errors, self.by_status
        )?;
        writeln!(
            f,
            "latency ms p50 {:.3} p90 {:.3} p99 {:.3} max {:.3}",
            l.p50, l.p90, l.p99, l.max
        )?;
        writeln!(
            f,
            "avg timesteps {:.3}, accuracy {:.2}%{}",
            self.avg_timesteps,
            self.accuracy * 100.0,
            self.server_rss_mb
                .map(|m| format!(", server RSS {m:.0} MB"))
                .unwrap_or_default()
        )?;
        if let Some(st) = &self.server_timings_ms {
            writeln!(
                f,
                "server ms p50: queue {:.3}, inference {:.3}, other {:.3}, total {:.3} (p99 {:.3}); outside the server {:.3}",
                st.queue_p50, st.inference_p50, st.other_p50, st.total_p50, st.total_p99, st.outside_p50
            )?;
        }
        Ok(())
    }
}

/// The fields of a `/classify` answer that the load generator tallies.
#[derive(Deserialize)]
struct ClassifyAnswer {
    timesteps_used: u64,
    class_id: u64,
    #[serde(default)]
    deadline_exit: bool,
}

struct Sample {
    /// The request body: a PNG, or for a tensor package's golden sample its .npy file.
    png: Arc<Vec<u8>>,
    /// The .npy sample's shape, when it is one (sent as `application/x-npy` over HTTP and as a
    /// float32 tensor over gRPC).
    tensor: Option<Arc<(Vec<u32>, Vec<u8>)>>,
    label: usize,
}

#[derive(Default)]
struct Tally {
    latencies_ms: Vec<f64>,
    /// Latency of answers that were not a success (how fast rejections come back).
    error_latencies_ms: Vec<f64>,
    /// 429 / RESOURCE_EXHAUSTED answers that carried Retry-After.
    with_retry_after: u64,
    by_status: BTreeMap<String, u64>,
    timesteps: u64,
    correct: u64,
    ok: u64,
    deadline_exits: u64,
    deadline_correct: u64,
    /// Per successful answer that carried them: the client's latency and the server's timings.
    timed: Vec<(f64, [f64; 3])>,
}

/// Why the load cannot be sent.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Package(#[from] LoadError),
    #[error("{file}")]
    Sample {
        file: String,
        #[source]
        source: crate::npy::NpyError,
    },
    /// A flag or dataset that does not fit; the message says what is accepted.
    #[error("{0}")]
    Invalid(String),
    #[error("cannot build the HTTP client")]
    HttpClient(#[source] reqwest::Error),
    #[error("bad --url {url:?}")]
    Url {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot connect to {url}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("tally poisoned")]
    Poisoned,
}

fn parse_replay(s: &str) -> Result<Vec<(usize, f64)>, BenchError> {
    let bad = |what: String| BenchError::Invalid(what);
    let mut out = Vec::new();
    for part in s.split(',') {
        let (t, p) = part
            .split_once(':')
            .ok_or_else(|| bad(format!("bad --replay-exits entry {part:?}; use t:weight")))?;
        let t: usize = t
            .trim()
            .parse()
            .map_err(|_| bad(format!("bad timestep in {part:?}")))?;
        let p: f64 = p
            .trim()
            .parse()
            .map_err(|_| bad(format!("bad weight in {part:?}")))?;
        if t == 0 || !p.is_finite() || p < 0.0 {
            return Err(bad(format!("bad --replay-exits entry {part:?}")));
        }
        out.push((t, p));
    }
    let total: f64 = out.iter().map(|(_, p)| p).sum();
    if total <= 0.0 {
        return Err(bad("--replay-exits weights sum to 0".into()));
    }
    Ok(out.into_iter().map(|(t, p)| (t, p / total)).collect())
}

fn load_samples(args: &BenchArgs) -> Result<Vec<Sample>, BenchError> {
    if args.data == "fashion-mnist" || args.data == "mnist" {
        let d = crate::dataset::load_idx(&args.data_dir, "test")?;
        d.images
            .iter()
            .zip(&d.labels)
            .map(|(px, l)| {
                Ok(Sample {
                    png: Arc::new(crate::dataset::encode_png(px, d.width, d.height)?),
                    tensor: None,
                    label: *l,
                })
            })
            .collect()
    } else {
        let dir = std::path::Path::new(&args.data);
        let golden = crate::model::read_golden(dir)?
            .ok_or_else(|| BenchError::Invalid(format!("{}: no golden.json", dir.display())))?;
        golden
            .samples
            .iter()
            .map(|s| {
                let bytes = s.read_image(dir)?;
                let tensor = if s.is_npy() {
                    let a = crate::npy::read(&bytes).map_err(|source| BenchError::Sample {
                        file: s.file.clone(),
                        source,
                    })?;
                    let shape = a.shape.iter().map(|d| *d as u32).collect();
                    let raw = a.data.iter().flat_map(|v| v.to_le_bytes()).collect();
                    Some(Arc::new((shape, raw)))
                } else {
                    None
                };
                Ok(Sample {
                    png: Arc::new(bytes),
                    tensor,
                    label: s.label,
                })
            })
            .collect()
    }
}

enum Client {
    Http(reqwest::Client),
    Grpc(pb::classifier_client::ClassifierClient<tonic::transport::Channel>),
}

/// The server's timings of one answer: queue, inference and total, in milliseconds.
type Timed = Option<[f64; 3]>;

/// One answer: the status, (timesteps_used, class_id, deadline_exit) on success, whether it
/// carried Retry-After, and the server's timings when it sent them.
type Answer = (String, Option<(u64, u64, bool)>, bool, Timed);

/// One request (rule `fixed` at `fixed_t` steps when given).
async fn send(
    client: &Client,
    args: &BenchArgs,
    sample: &Sample,
    fixed_t: Option<usize>,
) -> Answer {
    match client {
        Client::Http(c) => match args.get.as_deref() {
            Some(path) => send_get(c, args, path).await,
            None => send_http(c, args, sample, fixed_t).await,
        },
        Client::Grpc(c) => send_grpc(c, args, sample, fixed_t).await,
    }
}

/// The rule and max_timesteps of a request: `fixed` at `fixed_t` when replaying exits.
fn rule_of(args: &BenchArgs, fixed_t: Option<usize>) -> (Option<String>, Option<usize>) {
    let rule = if fixed_t.is_some() {
        Some("fixed".to_string())
    } else {
        args.rule.clone()
    };
    (rule, fixed_t.or(args.max_timesteps))
}

/// `--get PATH`: a GET whose success counts with 0 timesteps and no class.
async fn send_get(c: &reqwest::Client, args: &BenchArgs, path: &str) -> Answer {
    let url = format!("{}{path}", args.url.trim_end_matches('/'));
    match c.get(url).send().await {
        Ok(r) => {
            let status = r.status().as_u16().to_string();
            let ok = r.status().is_success();
            // Read the body, as a classify answer is read.
            let read = r.bytes().await.is_ok();
            let res = (ok && read).then_some((0, u64::MAX, false));
            (status, res, false, None)
        }
        Err(e) if e.is_timeout() => ("timeout".into(), None, false, None),
        Err(_) => ("connection_error".into(), None, false, None),
    }
}

/// A classify request over HTTP: the image or .npy body, the options in the query string.
async fn send_http(
    c: &reqwest::Client,
    args: &BenchArgs,
    sample: &Sample,
    fixed_t: Option<usize>,
) -> Answer {
    let (rule, max_t) = rule_of(args, fixed_t);
    let path = match &args.model {
        Some(m) => format!("{}/v1/models/{m}/classify", args.url.trim_end_matches('/')),
        None => format!("{}/classify", args.url.trim_end_matches('/')),
    };
    let mut q: Vec<(&str, String)> = Vec::new();
    if let Some(r) = &rule {
        q.push(("rule", r.clone()));
    }
    if let Some(a) = args.alpha {
        q.push(("alpha", a.to_string()));
    }
    if let Some(t) = max_t {
        q.push(("max_timesteps", t.to_string()));
    }
    if let Some(ms) = args.deadline_ms {
        q.push(("timeout_ms", ms.to_string()));
    }
    let req = c
        .post(path)
        .query(&q)
        .header(
            "content-type",
            match sample.tensor {
                Some(_) => crate::api::http::NPY_CONTENT_TYPE,
                None => "image/png",
            },
        )
        .body(sample.png.as_ref().clone());
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16().to_string();
            let retry_after = r.headers().contains_key("retry-after");
            let header =
                |name: &str| -> Option<f64> { r.headers().get(name)?.to_str().ok()?.parse().ok() };
            let timed = match (
                header("x-queue-time-ms"),
                header("x-inference-time-ms"),
                header("x-total-time-ms"),
            ) {
                (Some(q), Some(i), Some(t)) => Some([q, i, t]),
                _ => None,
            };
            if r.status().is_success() {
                match r.json::<ClassifyAnswer>().await {
                    Ok(a) => (
                        status,
                        Some((a.timesteps_used, a.class_id, a.deadline_exit)),
                        false,
                        timed,
                    ),
                    Err(_) => ("bad_body".into(), None, false, None),
                }
            } else {
                (status, None, retry_after, None)
            }
        }
        Err(e) if e.is_timeout() => ("timeout".into(), None, false, None),
        Err(_) => ("connection_error".into(), None, false, None),
    }
}

/// A classify request over gRPC: the image or float32 tensor, the options as fields.
async fn send_grpc(
    c: &pb::classifier_client::ClassifierClient<tonic::transport::Channel>,
    args: &BenchArgs,
    sample: &Sample,
    fixed_t: Option<usize>,
) -> Answer {
    let (rule, max_t) = rule_of(args, fixed_t);
    let mut c = c.clone();
    let req = pb::ClassifyRequest {
        model: args.model.clone().unwrap_or_default(),
        input: Some(match &sample.tensor {
            Some(t) => pb::classify_request::Input::Tensor(pb::Tensor {
                shape: t.0.clone(),
                raw: t.1.clone(),
                ..Default::default()
            }),
            None => pb::classify_request::Input::Image(sample.png.as_ref().clone()),
        }),
        rule: rule.unwrap_or_default(),
        alpha: args.alpha.map(|a| a as f32),
        max_timesteps: max_t.map(|t| t as u32),
        ..Default::default()
    };
    let mut req = tonic::Request::new(req);
    if let Some(ms) = args.deadline_ms {
        req.set_timeout(Duration::from_secs_f64(ms / 1e3));
    }
    match c.classify(req).await {
        Ok(r) => {
            let r = r.into_inner();
            let timed = r
                .timings
                .map(|t| [t.queue_seconds, t.inference_seconds, t.total_seconds].map(|x| x * 1e3));
            (
                "OK".into(),
                Some((
                    u64::from(r.timesteps_used),
                    u64::from(r.class_id),
                    r.deadline_exit,
                )),
                false,
                timed,
            )
        }
        Err(s) => (
            format!("{:?}", s.code()),
            None,
            s.metadata().contains_key("retry-after"),
            None,
        ),
    }
}

async fn server_rss_mb(c: &reqwest::Client, url: &str) -> Option<f64> {
    let r = c
        .get(format!("{}/metrics", url.trim_end_matches('/')))
        .send()
        .await
        .ok()?;
    let text = r.text().await.ok()?;
    text.lines()
        .find(|l| l.starts_with("process_resident_memory_bytes "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|b| b / 1048576.0)
}

/// Runs the load and prints the report (JSON with `--json`, a summary otherwise).
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let json = args.json;
    let report = measure(args).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot serialize the report")?
        );
    } else {
        print!("{}", report.render_text());
    }
    Ok(())
}

/// What every request of a run shares: where and what to send, and where answers are tallied.
struct Load {
    client: Client,
    args: BenchArgs,
    samples: Vec<Sample>,
    replay: Option<Vec<(usize, f64)>>,
    tally: Mutex<Tally>,
    bar: indicatif::ProgressBar,
}

impl Load {
    /// The i-th request's sample.
    fn sample(&self, i: usize) -> &Sample {
        &self.samples[i % self.samples.len()]
    }

    /// With `--replay-exits`, the i-th request's exit timestep: a deterministic low-discrepancy
    /// draw, so that the exits follow the distribution.
    fn pick_t(&self, i: usize) -> Option<usize> {
        let r = self.replay.as_ref()?;
        let u = ((i as f64) * 0.618_033_988_749_895).fract();
        let mut acc = 0.0;
        for (t, p) in r {
            acc += p;
            if u < acc {
                return Some(*t);
            }
        }
        r.last().map(|(t, _)| *t)
    }

    /// Tallies one answer that took `ms`.
    fn record(&self, sample: &Sample, (status, res, retry_after, timed): Answer, ms: f64) {
        if let Ok(mut t) = self.tally.lock() {
            *t.by_status.entry(status).or_default() += 1;
            t.with_retry_after += u64::from(retry_after);
            if let Some((steps, class, deadline_exit)) = res {
                let correct = u64::from(class == sample.label as u64);
                t.ok += 1;
                t.timesteps += steps;
                t.correct += correct;
                if deadline_exit {
                    t.deadline_exits += 1;
                    t.deadline_correct += correct;
                }
                t.latencies_ms.push(ms);
                if let Some(st) = timed {
                    t.timed.push((ms, st));
                }
            } else {
                t.error_latencies_ms.push(ms);
            }
        }
    }
}

/// The client for `--protocol`, connected (gRPC) or ready to connect (HTTP).
async fn connect(args: &BenchArgs) -> Result<Client, BenchError> {
    Ok(match args.protocol {
        Protocol::Http => Client::Http(
            reqwest::Client::builder()
                .timeout(Duration::from_secs_f64(args.timeout))
                .tcp_nodelay(true)
                .pool_max_idle_per_host(1024)
                .build()
                .map_err(BenchError::HttpClient)?,
        ),
        Protocol::Grpc => {
            let ch = tonic::transport::Endpoint::from_shared(args.url.clone())
                .map_err(|source| BenchError::Url {
                    url: args.url.clone(),
                    source,
                })?
                .tcp_nodelay(true)
                .timeout(Duration::from_secs_f64(args.timeout))
                .connect()
                .await
                .map_err(|source| BenchError::Connect {
                    url: args.url.clone(),
                    source,
                })?;
            Client::Grpc(
                pb::classifier_client::ClassifierClient::new(ch)
                    .max_decoding_message_size(64 << 20),
            )
        }
    })
}

fn progress_bar(args: &BenchArgs, max_requests: usize) -> indicatif::ProgressBar {
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else if max_requests != usize::MAX {
        indicatif::ProgressBar::new(max_requests as u64)
    } else {
        indicatif::ProgressBar::new(((args.duration.unwrap_or(0.0)) * 10.0) as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("[{bar:40}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Samples the server's resident memory from its /metrics every 500 ms into `peak` until `stop`
/// (HTTP only).
fn sample_rss(
    client: &Client,
    url: &str,
    peak: &Arc<Mutex<Option<f64>>>,
    stop: &Arc<AtomicBool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let Client::Http(c) = client else {
        return None;
    };
    let (c, url, peak, stop) = (c.clone(), url.to_string(), peak.clone(), stop.clone());
    Some(tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            if let Some(mb) = server_rss_mb(&c, &url).await {
                if let Ok(mut p) = peak.lock() {
                    *p = Some(p.map_or(mb, |x: f64| x.max(mb)));
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }))
}

/// Open loop: request i is due at `started + i / rate`, whatever happened to the others; one due
/// while `--max-outstanding` are unanswered is not sent (`client_overrun`).
async fn open_loop(
    load: &Arc<Load>,
    rate: f64,
    max_requests: usize,
    deadline: Option<Instant>,
    started: Instant,
) {
    let mut handles = Vec::new();
    let outstanding = Arc::new(AtomicUsize::new(0));
    let mut i = 0usize;
    while i < max_requests && deadline.is_none_or(|d| Instant::now() < d) {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let fixed = load.pick_t(i);
        if outstanding.load(Ordering::SeqCst) >= load.args.max_outstanding {
            load.record(
                load.sample(i),
                ("client_overrun".into(), None, false, None),
                0.0,
            );
            i += 1;
            continue;
        }
        outstanding.fetch_add(1, Ordering::SeqCst);
        let (load, outstanding) = (load.clone(), outstanding.clone());
        handles.push(tokio::spawn(async move {
            let s = load.sample(i);
            let answer = send(&load.client, &load.args, s, fixed).await;
            outstanding.fetch_sub(1, Ordering::SeqCst);
            load.record(s, answer, due.elapsed().as_secs_f64() * 1e3);
            load.bar.inc(1);
        }));
        i += 1;
    }
    for h in handles {
        let _ = h.await;
    }
}

/// Closed loop: `--concurrency` workers, each sending its next request when the last answered.
async fn closed_loop(
    load: &Arc<Load>,
    max_requests: usize,
    deadline: Option<Instant>,
    stop: &Arc<AtomicBool>,
) {
    let issued = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..load.args.concurrency.max(1) {
        let (load, issued, stop) = (load.clone(), issued.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            loop {
                if stop.load(Ordering::SeqCst) || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let i = issued.fetch_add(1, Ordering::SeqCst);
                if i >= max_requests {
                    break;
                }
                let s = load.sample(i);
                let t0 = Instant::now();
                let answer = send(&load.client, &load.args, s, load.pick_t(i)).await;
                load.record(s, answer, t0.elapsed().as_secs_f64() * 1e3);
                load.bar.inc(1);
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
}

/// Sends the load and measures what came back.
pub async fn measure(args: BenchArgs) -> Result<BenchReport, BenchError> {
    let samples = load_samples(&args)?;
    if samples.is_empty() {
        return Err(BenchError::Invalid("no samples to send".into()));
    }
    let replay = args.replay_exits.as_deref().map(parse_replay).transpose()?;
    let client = connect(&args).await?;
    let max_requests = args.requests.unwrap_or(if args.duration.is_some() {
        usize::MAX
    } else {
        1000
    });
    let deadline = args
        .duration
        .map(|d| Instant::now() + Duration::from_secs_f64(d));
    let load = Arc::new(Load {
        bar: progress_bar(&args, max_requests),
        client,
        args,
        samples,
        replay,
        tally: Mutex::new(Tally::default()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    // The server's peak resident memory during the run, sampled from its /metrics (HTTP only).
    let rss_peak = Arc::new(Mutex::new(None::<f64>));
    let sampler = sample_rss(&load.client, &load.args.url, &rss_peak, &stop);
    let started = Instant::now();
    match load.args.rate {
        Some(rate) => open_loop(&load, rate, max_requests, deadline, started).await,
        None => closed_loop(&load, max_requests, deadline, &stop).await,
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    if let Some(h) = sampler {
        let _ = h.await;
    }
    load.bar.finish_and_clear();
    let tally = std::mem::take(&mut *load.tally.lock().map_err(|_| BenchError::Poisoned)?);
    // The server's resident memory, from its own metrics (HTTP only).
    let rss_mb = match &load.client {
        Client::Http(c) => server_rss_mb(c, &load.args.url).await,
        Client::Grpc(_) => None,
    };
    let sampled = rss_peak.lock().ok().and_then(|p| *p);
    let rss_peak_mb = match (sampled, rss_mb) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    Ok(report(&load.args, tally, elapsed, rss_mb, rss_peak_mb))
}

/// The server's own timings of the answers that carried them.
fn server_timings(timed: &[(f64, [f64; 3])]) -> Option<ServerTimings> {
    (!timed.is_empty()).then(|| {
        let quantile = |f: fn(&(f64, [f64; 3])) -> f64, q: f64| {
            let mut v: Vec<f64> = timed.iter().map(f).collect();
            v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            crate::eval::percentile(&v, q)
        };
        let median = |f: fn(&(f64, [f64; 3])) -> f64| quantile(f, 0.5);
        ServerTimings {
            queue_p50: median(|(_, s)| s[0]),
            inference_p50: median(|(_, s)| s[1]),
            total_p50: median(|(_, s)| s[2]),
            total_p99: quantile(|(_, s)| s[2], 0.99),
            other_p50: median(|(_, s)| s[2] - s[0] - s[1]),
            outside_p50: median(|(ms, s)| ms - s[2]),
        }
    })
}

/// The report of a run of `elapsed` seconds that tallied `t`.
fn report(
    args: &BenchArgs,
    mut t: Tally,
    elapsed: f64,
    rss_mb: Option<f64>,
    rss_peak_mb: Option<f64>,
) -> BenchReport {
    t.latencies_ms
        .sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    t.error_latencies_ms
        .sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let ep = |q| crate::eval::percentile(&t.error_latencies_ms, q);
    let total: u64 = t.by_status.values().sum();
    let errors = total - t.ok;
    let p = |q| crate::eval::percentile(&t.latencies_ms, q);
    let mode = match args.rate {
        Some(r) => Mode::OpenLoopRate(r),
        None => Mode::ClosedLoopConcurrency(args.concurrency),
    };
    let per_ok = |x: u64| {
        if t.ok > 0 {
            x as f64 / t.ok as f64
        } else {
            f64::NAN
        }
    };
    BenchReport {
        url: args.url.clone(),
        protocol: args.protocol,
        mode,
        rule: args.rule.clone(),
        alpha: args.alpha,
        replay_exits: args.replay_exits.clone(),
        requests: total,
        successes: t.ok,
        errors,
        by_status: t.by_status.clone(),
        duration_s: elapsed,
        throughput_rps: t.ok as f64 / elapsed,
        latency_ms: Latency {
            p50: p(0.5),
            p90: p(0.9),
            p99: p(0.99),
            max: t.latencies_ms.last().copied().unwrap_or(f64::NAN),
        },
        avg_timesteps: per_ok(t.timesteps),
        accuracy: per_ok(t.correct),
        deadline_exits: t.deadline_exits,
        deadline_exit_accuracy: match t.deadline_exits {
            0 => f64::NAN,
            n => t.deadline_correct as f64 / n as f64,
        },
        server_rss_mb: rss_mb,
        server_rss_peak_mb: rss_peak_mb,
        offered_rps: total as f64 / elapsed,
        error_latency_ms: ErrorLatency {
            p50: ep(0.5),
            p99: ep(0.99),
            max: t.error_latencies_ms.last().copied().unwrap_or(f64::NAN),
        },
        rejections_with_retry_after: t.with_retry_after,
        server_timings_ms: server_timings(&t.timed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_json_keeps_the_field_names_scripts_read() {
        let report = BenchReport {
            url: "http://x".into(),
            protocol: Protocol::Grpc,
            mode: Mode::OpenLoopRate(50.0),
            rule: None,
            alpha: Some(0.9),
            replay_exits: None,
            requests: 3,
            successes: 0,
            errors: 3,
            by_status: BTreeMap::from([("429".to_string(), 3)]),
            duration_s: 1.0,
            throughput_rps: 0.0,
            latency_ms: Latency {
                p50: f64::NAN,
                p90: f64::NAN,
                p99: f64::NAN,
                max: f64::NAN,
            },
            avg_timesteps: f64::NAN,
            accuracy: f64::NAN,
            deadline_exits: 0,
            deadline_exit_accuracy: f64::NAN,
            server_rss_mb: None,
            server_rss_peak_mb: None,
            offered_rps: 3.0,
            error_latency_ms: ErrorLatency {
                p50: 1.0,
                p99: 2.0,
                max: 3.0,
            },
            rejections_with_retry_after: 3,
            server_timings_ms: None,
        };
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["protocol"], "grpc");
        assert_eq!(v["mode"]["open_loop_rate"], 50.0);
        assert_eq!(v["by_status"]["429"], 3);
        // No answers to measure: null, as before.
        assert!(v["avg_timesteps"].is_null() && v["latency_ms"]["p50"].is_null());
        assert_eq!(v["error_latency_ms"]["max"], 3.0);
        let closed = serde_json::to_value(Mode::ClosedLoopConcurrency(8)).unwrap();
        assert_eq!(closed["closed_loop_concurrency"], 8);
        assert!(report.render_text().contains("3 requests in 1.0 s"));
    }
}
