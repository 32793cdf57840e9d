//! Start-up and shutdown: load ONNX Runtime and the models, bind HTTP and gRPC, drain on SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::grpc;
use crate::api::http::{self, HttpOptions};
use crate::config::ServeConfig;
use crate::engine::EngineConfig;
use crate::error::{chain, Chain};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::registry::{self, LoadOptions};
use crate::repository::{Loader, ModelControl, Repository};
use crate::runtime::{self, Device, SessionOptions};
use crate::service::adaptive::{Controller, LatencyWindows, Shed};
use crate::service::{Lifecycle, Limits, PolicyAdmin, Service};
use crate::state::StateStore;
use crate::{kserve, openapi};

pub struct RunningServer {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub service: Arc<Service>,
    shutdown_timeout: Duration,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn admin_token(cfg: &ServeConfig) -> Result<Option<String>> {
    if let Some(path) = &cfg.admin_token_file {
        let t = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the admin token", path.display()))?;
        let t = t.trim().to_string();
        if t.is_empty() {
            bail!("{}: the admin token file is empty", path.display());
        }
        return Ok(Some(t));
    }
    Ok(std::env::var("SEENN_ADMIN_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

/// The models to load at start (`--load-model`; none: every model), after checking the
/// repository flags.
fn start_models<'a>(
    cfg: &'a ServeConfig,
    on_disk: &std::collections::BTreeMap<String, crate::model::layout::ModelDir>,
) -> Result<Option<&'a [String]>> {
    if !cfg.load_models.is_empty() && cfg.model_control != ModelControl::Explicit {
        bail!(
            "--load-model is for --model-control explicit; with {} every model loads at start",
            cfg.model_control.as_str()
        );
    }
    if !(cfg.repository_poll_secs > 0.0 && cfg.repository_poll_secs.is_finite()) {
        bail!("--repository-poll-secs must be a positive number of seconds");
    }
    let only = (!cfg.load_models.is_empty()).then_some(cfg.load_models.as_slice());
    if let Some(only) = only {
        if let Some(missing) = only.iter().find(|n| !on_disk.contains_key(*n)) {
            bail!(
                "--load-model {missing:?}: no such model in {}; models there: {}",
                cfg.models.display(),
                on_disk.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    Ok(only)
}

/// Publishes what start-up loaded: queue capacity for every model on disk, and per model
/// loaded its saved exit policy, info and readiness series.
fn publish_loaded(
    cfg: &ServeConfig,
    on_disk: &std::collections::BTreeMap<String, crate::model::layout::ModelDir>,
    registry: &Registry,
    policies: &PolicyAdmin,
    metrics: &Metrics,
) -> Result<()> {
    for name in on_disk.keys() {
        metrics
            .queue_capacity
            .with_label_values(&[name])
            .set(cfg.max_queue as i64);
        metrics.repository_series(name);
    }
    for m in registry.models() {
        let name = &m.manifest.name;
        policies.restore(&m)?;
        metrics.serving(
            name,
            crate::metrics::ModelSeries {
                version: &m.manifest.version,
                timesteps: m.manifest.timesteps,
                provider: &m.provider,
            },
            None,
        );
        tracing::info!(model = %name, version = %m.manifest.version, timesteps = m.manifest.timesteps, provider = %m.provider, "model ready");
    }
    Ok(())
}

/// Builds the service: everything that can fail at start-up fails here with a clear message.
pub fn build_service(cfg: &ServeConfig) -> Result<Arc<Service>> {
    let device = Device::parse(&cfg.device)?;
    if cfg.max_batch == 0 || cfg.max_queue == 0 || cfg.engine_workers == Some(0) {
        bail!("--max-batch, --max-queue and --engine-workers must be at least 1");
    }
    let (env, ort_library) = runtime::init(cfg.ort_lib.as_deref())?;
    tracing::info!(library = %ort_library.display(), device = %device.provider_name(), "ONNX Runtime loaded");
    // Metrics need the largest T for their buckets: read every version's manifest first.
    let (on_disk, _) = crate::model::layout::scan(&cfg.models)?;
    let max_t = on_disk
        .values()
        .flat_map(|m| m.versions.iter())
        .filter_map(|v| crate::model::read_manifest(&v.dir).ok())
        .map(|m| m.timesteps)
        .max()
        .unwrap_or(1);
    let metrics = Arc::new(Metrics::new(max_t, cfg.max_batch).context("metrics")?);
    let opts = LoadOptions {
        env: &env,
        session: SessionOptions {
            device: device.clone(),
            intra_threads: cfg.intra_threads,
        },
        engine: EngineConfig {
            max_batch: cfg.max_batch,
            max_queue: cfg.max_queue,
            batching: cfg.batching,
            ablations: cfg.ablate.clone(),
            workers: cfg.engine_workers.unwrap_or(0),
            shadow_rows: cfg.max_shadow_rows.unwrap_or(0),
            spin: std::time::Duration::from_micros(cfg.engine_spin_us),
            slot_memory: cfg.slot_memory.resolve(&device),
            width: cfg.batch_width,
        },
        metrics: metrics.clone(),
    };
    let only = start_models(cfg, &on_disk)?;
    let (models, errors) = registry::load_all(&cfg.models, &opts, only)?;
    for e in &errors {
        tracing::error!("broken model package: {}", Chain(e));
    }
    if !errors.is_empty() && !cfg.skip_broken {
        bail!(
            "{} broken model package(s): {}; fix them or start with --skip-broken to serve the rest",
            errors.len(),
            errors.iter().map(|e| chain(e)).collect::<Vec<_>>().join("; ")
        );
    }
    if models.is_empty() {
        bail!(
            "no model package under {} (each needs a manifest.json)",
            cfg.models.display()
        );
    }
    let registry = Registry::new(models, cfg.default_model.as_deref())?;
    let repository = Repository::new(
        &cfg.models,
        cfg.model_control,
        Loader {
            env: env.clone(),
            session: opts.session.clone(),
            engine: opts.engine.clone(),
            metrics: metrics.clone(),
        },
    );
    let admin_token = admin_token(cfg)?;
    if let Some(t) = &admin_token {
        crate::admin_token::check_admin_token(t)?;
    }
    if admin_token.is_none() {
        tracing::info!("admin endpoints disabled (no SEENN_ADMIN_TOKEN or --admin-token-file)");
    }
    let store = StateStore::open(&cfg.state_dir)?;
    let policies = PolicyAdmin::new(
        admin_token,
        store,
        metrics.clone(),
        cfg.exit_policy_file.clone(),
    );
    publish_loaded(cfg, &on_disk, &registry, &policies, &metrics)?;
    // Every model on disk gets its latency window, so one loaded later is controlled too.
    let latency = LatencyWindows::new(on_disk.keys().map(String::as_str));
    Ok(Arc::new(Service {
        latency,
        registry,
        repository,
        policies,
        lifecycle: Lifecycle::new().with_reply_spin(Duration::from_micros(cfg.reply_spin_us)),
        metrics,
        limits: Limits {
            request_timeout: Duration::from_secs_f64(cfg.request_timeout.max(0.001)),
            max_image_pixels: cfg.max_image_pixels,
            max_body_bytes: cfg.max_body_bytes,
            max_rows: cfg.max_queue.max(1),
        },
    }))
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

impl RunningServer {
    pub async fn start(cfg: ServeConfig) -> Result<Self> {
        let service = {
            let cfg = cfg.clone();
            tokio::task::spawn_blocking(move || build_service(&cfg))
                .await
                .context("start-up task")??
        };
        crate::service::policy_file::start(&service, cfg.exit_policy_file.as_deref())?;
        Self::serve(service, &cfg).await
    }

    pub async fn serve(state: Arc<Service>, cfg: &ServeConfig) -> Result<Self> {
        let http_listener = TcpListener::bind((cfg.host.as_str(), cfg.http_port))
            .await
            .with_context(|| format!("cannot bind HTTP {}:{}", cfg.host, cfg.http_port))?;
        let grpc_listener = TcpListener::bind((cfg.host.as_str(), cfg.grpc_port))
            .await
            .with_context(|| format!("cannot bind gRPC {}:{}", cfg.host, cfg.grpc_port))?;
        let http_addr = http_listener.local_addr()?;
        let grpc_addr = grpc_listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);

        let listener = crate::api::conn::Listener(http_listener);
        let http_opts = HttpOptions {
            cors_origins: cfg.cors_origins.clone(),
            max_in_flight: cfg.max_http_in_flight,
            max_uri_bytes: cfg.max_uri_bytes,
            enable_fault_injection: cfg.enable_fault_injection,
        };
        let routes = http::routes(&http_opts)
            .merge(kserve::rest::router())
            .route("/openapi.json", axum::routing::get(openapi::openapi_json));
        let app = http::finish(routes, state.clone(), &http_opts);
        let rx = shutdown_rx.clone();
        let http_task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(wait_for(rx))
                .await
            {
                tracing::error!("HTTP server: {}", Chain(&e));
            }
        });

        let svc = grpc::GrpcService {
            state: state.clone(),
        };
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<grpc::pb::classifier_server::ClassifierServer<grpc::GrpcService>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(grpc::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("gRPC reflection")?;
        let max_message = state.limits.max_body_bytes;
        let rx = shutdown_rx.clone();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener);
        tokio::spawn(control_adaptive_alpha(
            state.clone(),
            Duration::from_millis(cfg.adaptive_interval_ms.max(1)),
            shutdown_rx.clone(),
        ));
        tokio::spawn(mirror_health(
            state.clone(),
            health_reporter.clone(),
            shutdown_rx.clone(),
        ));
        if state.repository.control == ModelControl::Poll {
            tokio::spawn(crate::service::models::poll_repository(
                state.clone(),
                Duration::from_secs_f64(cfg.repository_poll_secs),
                shutdown_rx.clone(),
            ));
        }
        let grpc_task = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(health_service)
                .add_service(reflection)
                .add_service(grpc::classifier_server(svc.clone(), max_message))
                .add_service(grpc::admin_server(svc.clone()))
                .add_service(kserve::grpc::server(
                    kserve::grpc::InferenceService {
                        state: svc.state.clone(),
                    },
                    max_message,
                ))
                .serve_with_incoming_shutdown(incoming, wait_for(rx))
                .await;
            if let Err(e) = result {
                tracing::error!("gRPC server: {}", Chain(&e));
            }
        });
        tracing::info!(http = %http_addr, grpc = %grpc_addr, "serving");
        Ok(RunningServer {
            http_addr,
            grpc_addr,
            service: state,
            shutdown_timeout: Duration::from_secs_f64(cfg.shutdown_timeout.max(0.0)),
            shutdown_tx,
            tasks: vec![http_task, grpc_task],
        })
    }

    /// Graceful shutdown: readiness turns 503 and new requests get 503 at once, requests in flight
    /// finish (bounded by `--shutdown-timeout`), then both listeners close.
    pub async fn shutdown(self) {
        let left = self.service.lifecycle.drain(self.shutdown_timeout).await;
        if left > 0 {
            tracing::warn!(
                requests = left,
                "shutdown timeout: requests still in flight"
            );
        }
        let _ = self.shutdown_tx.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(TASK_JOIN_TIMEOUT, t).await;
        }
        tracing::info!("stopped");
    }
}

/// How long shutdown waits for each listener task to finish after it was told to stop.
const TASK_JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The adaptive-α control loop: once per `interval`, every model whose policy has `adaptive` set
/// gets the p99 of its default-policy answers since the last tick, and its controller's move.
async fn control_adaptive_alpha(
    service: Arc<Service>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut controllers: std::collections::BTreeMap<
        String,
        (crate::exit::AdaptiveAlpha, Controller),
    > = Default::default();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Per model: the engine's busy seconds at the last tick, and when that was.
    let mut busy: std::collections::BTreeMap<String, (f64, std::time::Instant)> =
        Default::default();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        for m in service.registry.models() {
            let m = &*m;
            let name = &m.manifest.name;
            let window = service.latency.take(name);
            let (p99, answered_p99) = (window.p99_ms, window.answered_p99_ms);
            let now = (m.engine.busy_seconds(), std::time::Instant::now());
            let utilization = busy.insert(name.clone(), now).and_then(|(b0, t0)| {
                let wall = now.1.duration_since(t0).as_secs_f64() * m.engine.workers() as f64;
                (wall > 0.0).then(|| (now.0 - b0) / wall)
            });
            let policy = m.exit_policy();
            let Some(cfg) = policy.adaptive else {
                controllers.remove(name);
                apply_shed(&service, m, 0);
                continue;
            };
            // The dial: α, or the threshold when the learned rule is the default.
            let learned = policy.rule == crate::exit::RuleKind::Learned;
            let (sweep, current): (Vec<(f64, f64)>, f64) = match (&m.calibration, learned) {
                (Some(c), true) => (
                    c.threshold_sweep()
                        .iter()
                        .map(|r| (r.threshold, r.avg_timesteps))
                        .collect(),
                    m.learned_threshold_in(&policy)
                        .unwrap_or(cfg.configured_alpha),
                ),
                (Some(c), false) => (
                    c.alpha_sweep
                        .iter()
                        .map(|r| (r.alpha, r.avg_timesteps))
                        .collect(),
                    policy.alpha,
                ),
                (None, _) => (Vec::new(), cfg.configured_alpha),
            };
            let entry = controllers
                .entry(name.clone())
                .or_insert_with(|| (cfg, Controller::new(&cfg, &sweep, current)));
            if entry.0 != cfg {
                *entry = (cfg, Controller::new(&cfg, &sweep, current));
            }
            let moved = entry.1.tick_window(&window, utilization);
            tracing::debug!(model = %name, ?p99, ?answered_p99, shed_share = window.shed_share, ?utilization, alpha = entry.1.alpha(), shed = entry.1.shed(), "adaptive tick");
            if let Some(alpha) = moved {
                if let Err(e) = service.policies.apply_adaptive(m, &cfg, alpha, p99) {
                    tracing::error!(model = %name, error = %Chain(&e), "cannot persist the adaptive alpha");
                }
            }
            if let Some(from) = apply_shed(&service, m, entry.1.shed()) {
                let shed = Shed::at(entry.1.shed());
                tracing::info!(
                    model = %name,
                    from,
                    to = entry.1.shed(),
                    batch_limit = m.engine.batch_limit(),
                    queue_budget_ms = shed.queue_budget(cfg.p99_ms).as_secs_f64() * 1e3,
                    ?answered_p99,
                    ?utilization,
                    "adaptive shed level moved"
                );
            }
        }
    }
}

/// Puts `model` at shed `level`: its queue budget share and its workers' batch limit. Returns the
/// level it had when that changed (nothing is written otherwise).
fn apply_shed(
    service: &Service,
    model: &crate::registry::LoadedModel,
    level: usize,
) -> Option<usize> {
    let from = service.latency.set_shed(&model.manifest.name, level);
    if from == level {
        return None;
    }
    model
        .engine
        .set_batch_limit(Shed::at(level).batch_limit(model.engine.batch_width()));
    Some(from)
}

/// Keeps the gRPC health status equal to readiness: waits on the engines' and the drain's
/// `watch` channels and republishes when any of them changes.
async fn mirror_health(
    service: Arc<Service>,
    reporter: tonic_health::server::HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    // The readiness sources are the engines of the versions serving: collected again whenever a
    // version is swapped in or a model unloaded.
    let mut changes = service.registry.watch_changes();
    let sources = |service: &Service| -> Vec<watch::Receiver<bool>> {
        let mut v: Vec<watch::Receiver<bool>> = service
            .registry
            .models()
            .iter()
            .map(|m| m.engine.watch_ready())
            .collect();
        v.push(service.lifecycle.watch_draining());
        v
    };
    let mut watched = sources(&service);
    let mut published = true;
    loop {
        let ready = service.is_ready();
        if ready != published {
            let status = if ready {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            reporter
                .set_service_status("seenn.v1.Classifier", status)
                .await;
            published = ready;
        }
        let resubscribe = {
            let any_change =
                futures::future::select_all(watched.iter_mut().map(|s| Box::pin(s.changed())));
            tokio::select! {
                // A source that closed is an engine that retired: its model changed.
                (changed, _, _) = any_change => changed.is_err(),
                r = changes.changed() => {
                    if r.is_err() { return }
                    true
                }
                _ = stop.changed() => return,
            }
        };
        if resubscribe {
            watched = sources(&service);
        }
    }
}

/// Waits for SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received: draining");
}
