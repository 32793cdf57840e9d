//! Start-up and shutdown: load ONNX Runtime and the models, bind HTTP and gRPC, drain on SIGTERM.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{grpc, http};
use crate::config::ServeConfig;
use crate::engine::EngineConfig;
use crate::metrics::Metrics;
use crate::model::{self, LoadOptions};
use crate::runtime::{self, Device, SessionOptions};
use crate::service::AppState;
use crate::state::StateStore;

pub struct RunningServer {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn admin_token(cfg: &ServeConfig) -> Result<Option<String>, String> {
    if let Some(path) = &cfg.admin_token_file {
        let t = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read the admin token: {e}", path.display()))?;
        let t = t.trim().to_string();
        if t.is_empty() {
            return Err(format!("{}: the admin token file is empty", path.display()));
        }
        return Ok(Some(t));
    }
    Ok(std::env::var("SEENN_ADMIN_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

/// Builds the shared state: everything that can fail at start-up fails here with a clear message.
pub fn build_state(cfg: ServeConfig) -> Result<Arc<AppState>, String> {
    let device = Device::parse(&cfg.device)?;
    if cfg.max_batch == 0 || cfg.max_queue == 0 {
        return Err("--max-batch and --max-queue must be at least 1".into());
    }
    let (env, ort_library) = runtime::init(cfg.ort_lib.as_deref())?;
    tracing::info!(library = %ort_library.display(), device = %device.provider_name(), "ONNX Runtime loaded");
    // Metrics need the largest T for their buckets: read the manifests first.
    let max_t = model::package_dirs(&cfg.models)
        .map_err(|e| e.to_string())?
        .iter()
        .filter_map(|d| model::read_manifest(d).ok())
        .map(|m| m.timesteps)
        .max()
        .unwrap_or(1);
    let metrics =
        Arc::new(Metrics::new(max_t, cfg.max_batch).map_err(|e| format!("metrics: {e}"))?);
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
        },
        metrics: metrics.clone(),
    };
    let (models, errors) = model::load_all(&cfg.models, &opts).map_err(|e| e.to_string())?;
    for e in &errors {
        tracing::error!("broken model package: {e}");
    }
    if !errors.is_empty() && !cfg.skip_broken {
        return Err(format!(
            "{} broken model package(s): {}; fix them or start with --skip-broken to serve the rest",
            errors.len(),
            errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")
        ));
    }
    if models.is_empty() {
        return Err(format!(
            "no model package under {} (each needs a manifest.json)",
            cfg.models.display()
        ));
    }
    let store = StateStore::open(&cfg.state_dir)?;
    for (name, m) in &models {
        if let Some(p) = store.get(name) {
            if p.timesteps > m.manifest.timesteps
                || (p.rule == crate::exit::RuleKind::Policy && !m.has_policy())
            {
                return Err(format!(
                    "{}: the saved policy for {name} does not fit the model",
                    store.path().display()
                ));
            }
            m.set_exit_policy(p);
            tracing::info!(model = %name, policy = ?p, "restored exit policy");
        }
        metrics
            .queue_capacity
            .with_label_values(&[name])
            .set(cfg.max_queue as i64);
        // Series that start at zero, so rates and alerts have data before the first event.
        for reason in ["client_gone", "deadline"] {
            metrics.cancelled_total.with_label_values(&[name, reason]);
        }
        metrics.engine_failures.with_label_values(&[name]);
        metrics
            .model_info
            .with_label_values(&[
                name,
                &m.manifest.version,
                &m.manifest.timesteps.to_string(),
                &m.provider,
            ])
            .set(1);
        metrics.model_ready.with_label_values(&[name]).set(1);
        metrics.queue_depth.with_label_values(&[name]).set(0);
        metrics.active_requests.with_label_values(&[name]).set(0);
        tracing::info!(model = %name, version = %m.manifest.version, timesteps = m.manifest.timesteps, provider = %m.provider, "model ready");
    }
    let default_model = match &cfg.default_model {
        Some(d) if models.contains_key(d) => d.clone(),
        Some(d) => {
            return Err(format!(
                "--default-model {d:?} is not among the loaded models"
            ))
        }
        None => models.keys().next().cloned().unwrap_or_default(),
    };
    let admin_token = admin_token(&cfg)?;
    if let Some(t) = &admin_token {
        crate::admin_token::check_admin_token(t)?;
    }
    if admin_token.is_none() {
        tracing::info!("admin endpoints disabled (no SEENN_ADMIN_TOKEN or --admin-token-file)");
    }
    let http_permits = Arc::new(tokio::sync::Semaphore::new(cfg.max_http_in_flight.max(1)));
    let state = Arc::new(AppState {
        cfg,
        models: models.into_iter().collect::<BTreeMap<_, _>>(),
        default_model,
        metrics,
        admin_token,
        store,
        ready: AtomicBool::new(true),
        draining: AtomicBool::new(false),
        in_flight: AtomicUsize::new(0),
        http_permits,
        ort_library,
        started: Instant::now(),
    });
    for m in state.models.values() {
        state.publish_policy(&state.policy_view(m, None));
    }
    Ok(state)
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

impl RunningServer {
    pub async fn start(cfg: ServeConfig) -> Result<Self, String> {
        let state = tokio::task::spawn_blocking(move || build_state(cfg))
            .await
            .map_err(|e| format!("start-up task: {e}"))??;
        crate::policy_file::start(&state)?;
        Self::serve(state).await
    }

    pub async fn serve(state: Arc<AppState>) -> Result<Self, String> {
        let cfg = &state.cfg;
        let http_listener = TcpListener::bind((cfg.host.as_str(), cfg.http_port))
            .await
            .map_err(|e| format!("cannot bind HTTP {}:{}: {e}", cfg.host, cfg.http_port))?;
        let grpc_listener = TcpListener::bind((cfg.host.as_str(), cfg.grpc_port))
            .await
            .map_err(|e| format!("cannot bind gRPC {}:{}: {e}", cfg.host, cfg.grpc_port))?;
        let http_addr = http_listener.local_addr().map_err(|e| e.to_string())?;
        let grpc_addr = grpc_listener.local_addr().map_err(|e| e.to_string())?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);

        // TCP_NODELAY: without it a keep-alive response written in two segments waits ~40 ms
        // for the client's delayed ACK (Nagle).
        use axum::serve::ListenerExt;
        let listener = http_listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let app = http::router(state.clone());
        let rx = shutdown_rx.clone();
        let http_task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(wait_for(rx))
                .await
            {
                tracing::error!("HTTP server: {e}");
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
            .map_err(|e| format!("gRPC reflection: {e}"))?;
        let max_message = cfg.max_body_bytes;
        let rx = shutdown_rx.clone();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener);
        let health_state = state.clone();
        let grpc_task = tokio::spawn(async move {
            // The health status follows readiness (draining, engine failures).
            let reporter = health_reporter.clone();
            let mut rx_h = rx.clone();
            tokio::spawn(async move {
                let mut last = true;
                loop {
                    let ready = health_state.is_ready();
                    if ready != last {
                        let status = if ready {
                            tonic_health::ServingStatus::Serving
                        } else {
                            tonic_health::ServingStatus::NotServing
                        };
                        reporter.set_service_status("", status).await;
                        reporter
                            .set_service_status("seenn.v1.Classifier", status)
                            .await;
                        last = ready;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = rx_h.changed() => { if *rx_h.borrow() { break; } }
                    }
                }
            });
            let result = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(health_service)
                .add_service(reflection)
                .add_service(grpc::classifier_server(svc.clone(), max_message))
                .add_service(grpc::admin_server(svc.clone()))
                .add_service(crate::kserve::grpc::server(
                    crate::kserve::grpc::InferenceService {
                        state: svc.state.clone(),
                    },
                    max_message,
                ))
                .serve_with_incoming_shutdown(incoming, wait_for(rx))
                .await;
            if let Err(e) = result {
                tracing::error!("gRPC server: {e}");
            }
        });
        tracing::info!(http = %http_addr, grpc = %grpc_addr, "serving");
        Ok(RunningServer {
            http_addr,
            grpc_addr,
            state,
            shutdown_tx,
            tasks: vec![http_task, grpc_task],
        })
    }

    /// Graceful shutdown: readiness turns 503 and new requests get 503 at once, requests in flight
    /// finish (bounded by `--shutdown-timeout`), then both listeners close.
    pub async fn shutdown(self) {
        let state = self.state.clone();
        state.draining.store(true, Ordering::SeqCst);
        let deadline =
            Instant::now() + Duration::from_secs_f64(state.cfg.shutdown_timeout.max(0.0));
        while state.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = state.in_flight.load(Ordering::SeqCst);
        if left > 0 {
            tracing::warn!(
                requests = left,
                "shutdown timeout: requests still in flight"
            );
        }
        let _ = self.shutdown_tx.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        tracing::info!("stopped");
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
