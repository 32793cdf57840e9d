//! Shared helpers: start the real server on 127.0.0.1:0 and read the committed packages.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use seenn_serve::config::ServeConfig;
use seenn_serve::server::RunningServer;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn models_dir() -> PathBuf {
    repo().join("models")
}

/// Every committed package.
pub fn packages() -> Vec<PathBuf> {
    let dirs = seenn_serve::registry::package_dirs(&models_dir()).expect("models/ readable");
    assert!(!dirs.is_empty(), "no committed model package under models/");
    dirs
}

/// The committed package with a SEENN-II policy (models/fashion-mnist).
pub fn policy_package() -> PathBuf {
    models_dir().join("fashion-mnist")
}

pub use seenn_serve::model::{Golden, GoldenSample};

pub fn golden(pkg: &Path) -> Golden {
    seenn_serve::model::read_golden(pkg)
        .expect("golden.json parses")
        .expect("golden.json")
}

pub fn sample_bytes(pkg: &Path, s: &GoldenSample) -> Vec<u8> {
    std::fs::read(pkg.join(&s.file)).expect("sample image")
}

pub fn config(state_dir: &Path) -> ServeConfig {
    ServeConfig::for_tests(models_dir(), state_dir.to_path_buf())
}

pub async fn start(cfg: ServeConfig) -> RunningServer {
    RunningServer::start(cfg).await.expect("server starts")
}

pub fn url(s: &RunningServer, path: &str) -> String {
    format!("http://{}{}", s.http_addr, path)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().build().expect("client")
}

pub async fn metrics_text(s: &RunningServer) -> String {
    client()
        .get(url(s, "/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// Sum of the samples of one metric whose label set contains every `labels` pair.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match head.split_once('{') {
                Some((m, r)) => (m, r.trim_end_matches('}')),
                None => (head, ""),
            };
            if metric != name {
                return None;
            }
            let ok = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            if ok {
                value.parse::<f64>().ok()
            } else {
                None
            }
        })
        .sum()
}

/// The admin token the tests configure with [`config_with_admin`].
pub const ADMIN_TOKEN: &str = "s3cret-token-for-the-integration-tests";

/// [`config`] with the admin enabled (token [`ADMIN_TOKEN`] in a file under `dir`) and the state
/// under `dir/state`.
pub fn config_with_admin(dir: &Path) -> ServeConfig {
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).expect("write the token file");
    let mut cfg = config(&dir.join("state"));
    cfg.admin_token_file = Some(token_file);
    cfg
}

/// `PUT /admin/models/{model}/exit-policy` with [`ADMIN_TOKEN`]: the status and the JSON body.
pub async fn admin_put(
    s: &RunningServer,
    model: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = client()
        .put(url(s, &format!("/admin/models/{model}/exit-policy")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .expect("admin request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json body"))
}

/// `GET /admin/models/{model}/exit-policy` with [`ADMIN_TOKEN`].
pub async fn admin_get(s: &RunningServer, model: &str) -> serde_json::Value {
    client()
        .get(url(s, &format!("/admin/models/{model}/exit-policy")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin request")
        .json()
        .await
        .expect("json body")
}

/// A server on the committed models with the admin enabled; keep the folder while it runs.
pub async fn start_with_admin() -> (tempfile::TempDir, RunningServer) {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = start(config_with_admin(dir.path())).await;
    (dir, s)
}

/// Load options for one CPU session thread and one continuous-batching engine worker.
pub fn cpu_options(
    env: &ort::environment::Environment,
    max_batch: usize,
    max_queue: usize,
    ablations: Vec<seenn_serve::engine::Ablation>,
    metrics: std::sync::Arc<seenn_serve::metrics::Metrics>,
) -> seenn_serve::registry::LoadOptions<'_> {
    seenn_serve::registry::LoadOptions {
        env,
        session: seenn_serve::runtime::SessionOptions {
            device: seenn_serve::runtime::Device::Cpu,
            intra_threads: 1,
        },
        engine: seenn_serve::engine::EngineConfig {
            max_batch,
            max_queue,
            batching: seenn_serve::engine::Batching::Continuous,
            ablations,
            workers: 1,
            shadow_rows: 0,
            spin: seenn_serve::engine::DEFAULT_SPIN,
            slot_memory: seenn_serve::engine::SlotMemory::Host,
            width: seenn_serve::engine::BatchWidth::Fixed(max_batch),
        },
        metrics,
    }
}

/// Keeps `clients` concurrent clients posting `png` to `path` (each one request after another),
/// enough to keep the engine busy, until `done` answers true (asked every 50 ms) or `within`
/// has passed. Returns whether `done` was reached and every (status, JSON body) answered.
pub async fn post_under_load<F, Fut>(
    s: &RunningServer,
    path: &str,
    png: Vec<u8>,
    clients: usize,
    within: std::time::Duration,
    mut done: F,
) -> (bool, Vec<(u16, serde_json::Value)>)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (c, u, png, stop) = (client(), url(s, path), png.clone(), stop.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    answers.push(post_image(&c, &u, png.clone()).await);
                }
                answers
            })
        })
        .collect();
    let until = std::time::Instant::now() + within;
    let reached = loop {
        if done().await {
            break true;
        }
        if std::time::Instant::now() > until {
            break false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answers = Vec::new();
    for t in tasks {
        answers.extend(t.await.expect("load client"));
    }
    (reached, answers)
}

/// Under adaptive α every answer is either shed (429 `overloaded`: at the floor, a request that
/// waited past the queue budget) or a 200 whose `dial` (`alpha` or `threshold`) is at least `floor`.
pub fn assert_shed_or_dial_at_least(answers: &[(u16, serde_json::Value)], dial: &str, floor: f64) {
    for (status, r) in answers {
        if *status == 429 {
            assert_eq!(r["code"], "overloaded", "{r}");
        } else {
            assert_eq!(*status, 200, "{r}");
            let d = r[dial].as_f64().expect("the dial in force");
            assert!(d >= floor, "{dial} {d} < floor {floor}: {r}");
        }
    }
}

/// POSTs an image body to `url`: the status and the JSON answer (or error).
pub async fn post_image(c: &reqwest::Client, url: &str, png: Vec<u8>) -> (u16, serde_json::Value) {
    let r = c
        .post(url)
        .header("content-type", "image/png")
        .body(png)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json body"))
}

/// Adaptive α's dial moves only while the engine is busy: keeps 16 clients posting `png` to
/// `path` until the policy view's `dial` (`alpha` or `threshold`, read by `current`) and its gauge
/// `seenn_exit_<dial>{model="fashion-mnist"}` both show `floor`, at most 30 s. Both are read while the load still runs
/// (once it stops, an idle engine sends the dial back up within a few ticks). Returns every answer.
pub async fn load_until_dial_at_floor<F, Fut>(
    s: &RunningServer,
    path: &str,
    png: Vec<u8>,
    dial: &str,
    floor: f64,
    current: F,
) -> Vec<(u16, serde_json::Value)>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = serde_json::Value>,
{
    let gauge = format!("seenn_exit_{dial}");
    let (reached, answers) =
        post_under_load(s, path, png, 16, std::time::Duration::from_secs(30), || {
            let (v, text) = (current(), metrics_text(s));
            let gauge = gauge.clone();
            async move {
                v.await[dial].as_f64() == Some(floor)
                    && metric_value(&text.await, &gauge, &[("model", "fashion-mnist")]) == floor
            }
        })
        .await;
    assert!(
        reached,
        "{dial} did not reach its floor {floor}: {}",
        current().await
    );
    answers
}

/// The small format-3 tensor packages the tests use (`tests/fixtures/make_tensor_packages.py`):
/// `lif-frames` (per_step, uint8 frames [2, 8, 8], aggregation last, T = 8) and `lif-static`
/// (static float32 [3, 5], aggregation sum, T = 4).
pub fn tensor_packages_dir() -> PathBuf {
    repo().join("tests/fixtures/packages")
}

pub fn frames_package() -> PathBuf {
    tensor_packages_dir().join("lif-frames")
}

pub fn static_tensor_package() -> PathBuf {
    tensor_packages_dir().join("lif-static")
}

/// A server on the tensor packages (see [`tensor_packages_dir`]).
pub fn tensor_config(state_dir: &Path) -> ServeConfig {
    ServeConfig::for_tests(tensor_packages_dir(), state_dir.to_path_buf())
}

/// The aggregate Z_t of every step of golden `logits` under the manifest's aggregation
/// (float64), as the engine computes it.
pub fn aggregates(
    logits: &[Vec<f32>],
    aggregation: seenn_serve::model::manifest::Aggregation,
) -> Vec<Vec<f64>> {
    use seenn_serve::model::manifest::Aggregation;
    let mut sum = vec![0f64; logits.first().map_or(0, Vec::len)];
    logits
        .iter()
        .enumerate()
        .map(|(t, step)| {
            for (s, z) in sum.iter_mut().zip(step) {
                match aggregation {
                    Aggregation::Last => *s = f64::from(*z),
                    _ => *s += f64::from(*z),
                }
            }
            match aggregation {
                Aggregation::Mean => sum.iter().map(|s| s / (t + 1) as f64).collect(),
                _ => sum.clone(),
            }
        })
        .collect()
}

/// POSTs a `.npy` body (`application/x-npy`) to `path`: the status and the JSON answer.
pub async fn post_npy(s: &RunningServer, path: &str, npy: Vec<u8>) -> (u16, serde_json::Value) {
    let r = client()
        .post(url(s, path))
        .header("content-type", "application/x-npy")
        .body(npy)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json body"))
}
