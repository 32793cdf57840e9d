//! The one configuration struct, built from flags and `SEENN_*` environment variables.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::engine::Batching;
use crate::repository::ModelControl;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Folder of model packages (one sub-folder with a manifest.json per model).
    #[arg(long, env = "SEENN_MODELS", default_value = "models")]
    pub models: PathBuf,
    /// Address to bind both ports on.
    #[arg(long, env = "SEENN_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// HTTP port (0 picks a free one).
    #[arg(long, env = "SEENN_HTTP_PORT", default_value_t = 8080)]
    pub http_port: u16,
    /// gRPC port (0 picks a free one).
    #[arg(long, env = "SEENN_GRPC_PORT", default_value_t = 50051)]
    pub grpc_port: u16,
    /// Execution device: cpu, cuda or cuda:N.
    #[arg(long, env = "SEENN_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Path of libonnxruntime.so (else ORT_DYLIB_PATH, else .ort/lib/).
    #[arg(long, env = "SEENN_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
    /// ONNX Runtime intra-op threads per session.
    #[arg(long, env = "SEENN_INTRA_THREADS", default_value_t = 1)]
    pub intra_threads: usize,
    /// The widest batch one timestep may run (the rows each worker allocates); --batch-width
    /// chooses how many of them a step uses. Raise it on a GPU.
    #[arg(long, env = "SEENN_MAX_BATCH", default_value_t = 8)]
    pub max_batch: usize,
    /// Requests one engine step runs at most, per model: `auto` measures what a request-step
    /// costs at each batch size when the model loads and takes the narrowest width within 10% of
    /// the cheapest (on a CPU often 1 for a long-T model; on a GPU the cap); a number fixes it.
    /// Never above --max-batch.
    #[arg(long, env = "SEENN_BATCH_WIDTH", default_value = "auto")]
    pub batch_width: crate::engine::BatchWidth,
    /// Engine worker threads per model, each with its own ONNX Runtime sessions and running batch,
    /// all pulling from the model's one queue. Default on the CPU: every core for each model while
    /// all models' workers together stay within twice the cores, else 2 × cores ÷ models, at
    /// least 1; with `--device cuda`: 1.
    #[arg(long, env = "SEENN_ENGINE_WORKERS")]
    pub engine_workers: Option<usize>,
    /// Most shadow runs (the exit policy's `shadow_fraction`) per engine worker at once. Default:
    /// one per eight rows of --max-batch, at least one. Each shadow row costs its share of every
    /// step it is in; newcomers always take rows from shadow runs first.
    #[arg(long, env = "SEENN_MAX_SHADOW_ROWS")]
    pub max_shadow_rows: Option<usize>,
    /// Microseconds an idle engine worker keeps polling its queue (yielding the core between
    /// polls) before it blocks; a job that arrives meanwhile needs no wake-up. 0 blocks at once.
    #[arg(long, env = "SEENN_ENGINE_SPIN_US", default_value_t = 500)]
    pub engine_spin_us: u64,
    /// Microseconds a request that is alone in the server polls for the engine's answer (its
    /// thread yielding between polls) before it parks; longer inferences then wait as usual.
    /// 0 parks at once.
    #[arg(long, env = "SEENN_REPLY_SPIN_US", default_value_t = 1000)]
    pub reply_spin_us: u64,
    /// Where each engine worker keeps its batch's membranes between timesteps. auto: on the GPU
    /// under --device cuda (they never cross the bus; a leaving request's row moves by a device
    /// copy), in host memory on the CPU. device on the CPU runs the GPU's path with ONNX Runtime's
    /// CPU allocator (how it is tested without a GPU).
    #[arg(long, env = "SEENN_SLOT_MEMORY", value_enum, default_value = "auto")]
    pub slot_memory: crate::engine::SlotMemoryChoice,
    /// Most HTTP requests being read or answered at once (all models); more get 429 at once,
    /// before their body is read, so memory stays bounded under overload. Health, readiness and
    /// metrics are not counted.
    #[arg(long, env = "SEENN_MAX_HTTP_IN_FLIGHT", default_value_t = 1024)]
    pub max_http_in_flight: usize,
    /// Most requests waiting per model; more get 429 / RESOURCE_EXHAUSTED.
    #[arg(long, env = "SEENN_MAX_QUEUE", default_value_t = 256)]
    pub max_queue: usize,
    /// Turn an optimisation off to measure it (encoder-every-step, copy-membranes); repeatable.
    #[arg(long, value_enum, hide = true)]
    pub ablate: Vec<crate::engine::Ablation>,
    /// continuous: requests join and leave the batch at every timestep; static: for comparison.
    #[arg(long, env = "SEENN_BATCHING", value_enum, default_value = "continuous")]
    pub batching: Batching,
    /// Default request deadline in seconds (checked between timesteps).
    #[arg(long, env = "SEENN_REQUEST_TIMEOUT", default_value_t = 30.0, value_parser = seconds)]
    pub request_timeout: f64,
    /// Seconds to let requests in flight finish after SIGTERM.
    #[arg(long, env = "SEENN_SHUTDOWN_TIMEOUT", default_value_t = 30.0, value_parser = seconds_or_none)]
    pub shutdown_timeout: f64,
    /// Largest request body in bytes (HTTP) / message (gRPC).
    #[arg(long, env = "SEENN_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Period of the adaptive-α controller (see the admin `adaptive` policy), in milliseconds.
    #[arg(long, env = "SEENN_ADAPTIVE_INTERVAL_MS", default_value_t = 1000)]
    pub adaptive_interval_ms: u64,
    /// Longest HTTP request target (path and query) in bytes; longer ones get 414.
    #[arg(long, env = "SEENN_MAX_URI_BYTES", default_value_t = 8 * 1024)]
    pub max_uri_bytes: usize,
    /// Largest image in pixels, checked from the header before decoding.
    #[arg(long, env = "SEENN_MAX_IMAGE_PIXELS", default_value_t = 16 * 1024 * 1024)]
    pub max_image_pixels: u64,
    /// Where admin changes are persisted.
    #[arg(long, env = "SEENN_STATE_DIR", default_value = "state")]
    pub state_dir: PathBuf,
    /// File holding the admin bearer token (else SEENN_ADMIN_TOKEN; neither: admin disabled).
    #[arg(long, env = "SEENN_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// JSON file of exit policies keyed by model name (each like the admin PUT body), loaded at
    /// start and re-read when it changes; the admin endpoint then refuses changes (409).
    #[arg(long, env = "SEENN_EXIT_POLICY_FILE")]
    pub exit_policy_file: Option<PathBuf>,
    /// Serve the models that load and log the broken ones, instead of refusing to start.
    #[arg(long, env = "SEENN_SKIP_BROKEN")]
    pub skip_broken: bool,
    /// Model used by POST /classify without `model` (default: the first by name).
    #[arg(long, env = "SEENN_DEFAULT_MODEL")]
    pub default_model: Option<String>,
    /// Who may change the loaded models: explicit (the repository API's load and unload), none
    /// (fixed at start), poll (the models folder, rescanned every --repository-poll-secs).
    #[arg(
        long,
        env = "SEENN_MODEL_CONTROL",
        value_enum,
        default_value = "explicit"
    )]
    pub model_control: ModelControl,
    /// With --model-control explicit: the models to load at start (repeatable; default: every
    /// model in the folder).
    #[arg(long = "load-model", env = "SEENN_LOAD_MODELS", value_delimiter = ',')]
    pub load_models: Vec<String>,
    /// With --model-control poll: seconds between rescans of the models folder. A version is
    /// loaded once it has been complete and unchanged for one interval.
    #[arg(long, env = "SEENN_REPOSITORY_POLL_SECS", default_value_t = 5.0)]
    pub repository_poll_secs: f64,
    /// Origins allowed by CORS (repeatable); none means CORS stays closed.
    #[arg(
        long = "cors-origin",
        env = "SEENN_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// Log format.
    #[arg(long, env = "SEENN_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Enables POST /admin/models/{name}/fault, which makes the engine's next step fail (tests only).
    #[arg(long, env = "SEENN_ENABLE_FAULT_INJECTION", hide = true)]
    pub enable_fault_injection: bool,
}

impl ServeConfig {
    /// Defaults for tests and in-process use.
    pub fn for_tests(models: PathBuf, state_dir: PathBuf) -> Self {
        ServeConfig {
            models,
            host: "127.0.0.1".into(),
            http_port: 0,
            grpc_port: 0,
            device: "cpu".into(),
            ort_lib: None,
            intra_threads: 1,
            max_batch: 8,
            // Fixed, so that a test's batching does not depend on a measurement; the width's own
            // tests set `auto`.
            batch_width: crate::engine::BatchWidth::Fixed(8),
            engine_workers: None,
            max_shadow_rows: None,
            engine_spin_us: 500,
            reply_spin_us: 1000,
            slot_memory: crate::engine::SlotMemoryChoice::Auto,
            max_http_in_flight: 1024,
            max_queue: 256,
            batching: Batching::Continuous,
            ablate: Vec::new(),
            request_timeout: 30.0,
            shutdown_timeout: 30.0,
            max_body_bytes: 8 * 1024 * 1024,
            max_uri_bytes: 8 * 1024,
            adaptive_interval_ms: 1000,
            max_image_pixels: 16 * 1024 * 1024,
            state_dir,
            admin_token_file: None,
            exit_policy_file: None,
            skip_broken: false,
            default_model: None,
            model_control: ModelControl::Explicit,
            load_models: Vec::new(),
            repository_poll_secs: 5.0,
            cors_origins: Vec::new(),
            log_format: LogFormat::Text,
            enable_fault_injection: false,
        }
    }
}

/// One day in seconds: the longest timeout a flag or a request may set.
const DAY_SECS: f64 = crate::engine::MAX_DEADLINE.as_secs() as f64;

fn bounded(s: &str, unit: &str, scale: f64, zero: bool) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of {unit}"))?;
    let low_ok = if zero { v >= 0.0 } else { v > 0.0 };
    match v.is_finite() && low_ok && v <= DAY_SECS * scale {
        true => Ok(v),
        false => Err(format!(
            "{s} {unit} is out of range; accepted: {} to {} {unit} (one day)",
            if zero { "0" } else { "more than 0" },
            DAY_SECS * scale
        )),
    }
}

/// A clap parser for a timeout in seconds: more than 0, at most one day.
pub fn seconds(s: &str) -> Result<f64, String> {
    bounded(s, "seconds", 1.0, false)
}

/// A clap parser for a grace period in seconds: 0 (none) to one day.
pub fn seconds_or_none(s: &str) -> Result<f64, String> {
    bounded(s, "seconds", 1.0, true)
}

/// A clap parser for a deadline in milliseconds: more than 0, at most one day.
pub fn milliseconds(s: &str) -> Result<f64, String> {
    bounded(s, "milliseconds", 1e3, false)
}
