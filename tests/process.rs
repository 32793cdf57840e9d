//! The `seenn` binary as a process: start-up failures, broken packages, SIGTERM draining, a
//! kill -9 right after an admin change, and an injected engine fault.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_seenn");

fn serve_cmd(models: &Path, state: &Path, port: u16, grpc: u16) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(repo())
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--http-port",
            &port.to_string(),
            "--grpc-port",
            &grpc.to_string(),
        ])
        .arg("--models")
        .arg(models)
        .arg("--state-dir")
        .arg(state)
        .env_remove("SEENN_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn wait_ready(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server exited early: {status}");
        }
        if let Ok(r) = reqwest::blocking_get(&format!("http://127.0.0.1:{port}/readyz")) {
            if r == 200 {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("server not ready in 60 s");
}

mod reqwest {
    /// A tiny blocking GET over a raw socket, so readiness polling needs no async runtime.
    pub fn blocking_get(url: &str) -> std::io::Result<u16> {
        use std::io::{Read, Write};
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut s = std::net::TcpStream::connect(host)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        write!(
            s,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok(buf
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0))
    }
}

type Status = Result<u16, ::reqwest::Error>;

/// Sends `n` PNG posts at once, each on its own task; the handles give each one's status.
fn post_many(
    c: &::reqwest::Client,
    url: &str,
    png: &[u8],
    n: usize,
) -> Vec<tokio::task::JoinHandle<Status>> {
    (0..n)
        .map(|_| {
            let (c, url, png) = (c.clone(), url.to_string(), png.to_vec());
            tokio::spawn(async move {
                c.post(url)
                    .header("content-type", "image/png")
                    .body(png)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect()
}

fn stderr_of(child: Child) -> (i32, String) {
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_or_too_old_onnx_runtime_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let child = serve_cmd(&models_dir(), dir.path(), free_port(), free_port())
        .args(["--ort-lib", "/nonexistent/libonnxruntime.so"])
        .spawn()
        .expect("spawn");
    let (code, err) = stderr_of(child);
    assert_ne!(code, 0);
    assert!(
        err.contains("libonnxruntime.so") && err.contains("make ort"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // A file that is not a loadable library (stands in for a wrong or too-old build).
    let fake = dir.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"not a library").expect("write");
    let child = serve_cmd(&models_dir(), dir.path(), free_port(), free_port())
        .arg("--ort-lib")
        .arg(&fake)
        .spawn()
        .expect("spawn");
    let (code, err) = stderr_of(child);
    assert_ne!(code, 0);
    assert!(
        err.contains("cannot load ONNX Runtime library") && err.contains("1.31"),
        "{err}"
    );
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for e in std::fs::read_dir(src).expect("read") {
        let e = e.expect("entry");
        let to = dst.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).expect("copy");
        }
    }
}

#[test]
fn broken_packages_are_named_and_skip_broken_serves_the_rest() {
    let good = policy_package();
    type BreakIt = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, BreakIt, &str)> = vec![
        (
            "missing step.onnx",
            Box::new(|p: &Path| std::fs::remove_file(p.join("step.onnx")).expect("rm")),
            "step.onnx: file missing",
        ),
        (
            "truncated step.onnx",
            Box::new(|p: &Path| {
                let b = std::fs::read(p.join("step.onnx")).expect("read");
                std::fs::write(p.join("step.onnx"), &b[..b.len() / 3]).expect("write");
            }),
            "step.onnx",
        ),
        (
            "corrupt encoder",
            Box::new(|p: &Path| std::fs::write(p.join("encoder.onnx"), b"garbage").expect("write")),
            "encoder.onnx",
        ),
        (
            "manifest disagrees with the graph",
            Box::new(|p: &Path| {
                let t = std::fs::read_to_string(p.join("manifest.json")).expect("read");
                std::fs::write(
                    p.join("manifest.json"),
                    t.replace("\"membrane_in_0\"", "\"membrane_zero\""),
                )
                .expect("write");
            }),
            "membrane_zero",
        ),
        (
            "corrupt calibration",
            Box::new(|p: &Path| {
                std::fs::write(p.join("calibration.json"), b"{\"split\": 3").expect("write")
            }),
            "calibration.json",
        ),
    ];
    for (name, breakit, needle) in cases {
        let dir = tempfile::tempdir().expect("tmp");
        let models = dir.path().join("models");
        copy_dir(&good, &models.join("good"));
        copy_dir(&good, &models.join("broken"));
        let m = std::fs::read_to_string(models.join("broken/manifest.json")).expect("read");
        std::fs::write(
            models.join("broken/manifest.json"),
            m.replacen("\"name\": \"fashion-mnist\"", "\"name\": \"broken\"", 1),
        )
        .expect("write");
        breakit(&models.join("broken"));
        let child = serve_cmd(&models, &dir.path().join("state"), free_port(), free_port())
            .spawn()
            .expect("spawn");
        let (code, err) = stderr_of(child);
        assert_ne!(code, 0, "{name}: must refuse to start");
        assert!(
            err.contains("broken") && err.contains(needle) && err.contains("--skip-broken"),
            "{name}: {err}"
        );
        let port = free_port();
        let mut child = serve_cmd(&models, &dir.path().join("state"), port, free_port())
            .arg("--skip-broken")
            .spawn()
            .expect("spawn");
        wait_ready(port, &mut child);
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn corrupt_state_file_is_a_startup_error() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("exit-policies.json"), b"{\"models\": ").expect("write");
    let child = serve_cmd(&models_dir(), dir.path(), free_port(), free_port())
        .spawn()
        .expect("spawn");
    let (code, err) = stderr_of(child);
    assert_ne!(code, 0);
    assert!(
        err.contains("exit-policies.json") && err.contains("corrupt"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_requests_in_flight_and_rejects_new_ones() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let mut child = serve_cmd(&models_dir(), dir.path(), port, free_port())
        .args(["--max-batch", "1", "--max-queue", "512"])
        .spawn()
        .expect("spawn");
    wait_ready(port, &mut child);
    let pkg = policy_package();
    let png = sample_bytes(&pkg, &golden(&pkg).samples[0]);
    let c = client();
    let url = format!("http://127.0.0.1:{port}/classify?rule=fixed&max_timesteps=4");
    let handles = post_many(&c, &url, &png, 100);
    // Let the requests reach the server, then SIGTERM while most are queued.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    tokio::time::sleep(Duration::from_millis(5)).await;
    let late = c
        .post(&url)
        .header("content-type", "image/png")
        .body(png.clone())
        .send()
        .await;
    let mut ok = 0;
    for h in handles {
        match h.await.expect("task") {
            Ok(200) => ok += 1,
            Ok(503) => {}
            other => panic!("a request sent before SIGTERM got {other:?}"),
        }
    }
    assert!(ok > 0);
    match late {
        Ok(r) => assert_eq!(r.status().as_u16(), 503, "a request after SIGTERM gets 503"),
        Err(e) => assert!(e.is_connect(), "{e}"),
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "exit 0 after draining: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_after_an_admin_change_keeps_the_change() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let spawn = |port: u16| {
        serve_cmd(&models_dir(), dir.path(), port, free_port())
            .env("SEENN_ADMIN_TOKEN", "t0ken-for-the-process-test")
            .spawn()
            .expect("spawn")
    };
    let mut child = spawn(port);
    wait_ready(port, &mut child);
    let r = client()
        .put(format!(
            "http://127.0.0.1:{port}/admin/models/fashion-mnist/exit-policy"
        ))
        .bearer_auth("t0ken-for-the-process-test")
        .json(&serde_json::json!({"alpha": 0.777}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    assert!(Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .expect("kill")
        .success());
    let _ = child.wait();
    let port = free_port();
    let mut child = spawn(port);
    wait_ready(port, &mut child);
    let v: serde_json::Value = client()
        .get(format!(
            "http://127.0.0.1:{port}/admin/models/fashion-mnist/exit-policy"
        ))
        .bearer_auth("t0ken-for-the-process-test")
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(v["alpha"], 0.777);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engine_fault_fails_the_batch_promptly_and_the_model_recovers() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = config(dir.path());
    cfg.enable_fault_injection = true;
    std::env::set_var("SEENN_ADMIN_TOKEN", "fault-token-for-the-process-test");
    let s = start(cfg).await;
    std::env::remove_var("SEENN_ADMIN_TOKEN");
    let pkg = policy_package();
    let png = sample_bytes(&pkg, &golden(&pkg).samples[0]);
    let c = client();
    let r = c
        .post(url(&s, "/admin/models/fashion-mnist/fault"))
        .bearer_auth("fault-token-for-the-process-test")
        .send()
        .await
        .expect("arm");
    assert_eq!(r.status(), 200);
    let started = Instant::now();
    let r = c
        .post(url(&s, "/classify"))
        .header("content-type", "image/png")
        .body(png.clone())
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 500);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the failure is answered promptly"
    );
    let text = metrics_text(&s).await;
    assert_eq!(
        metric_value(
            &text,
            "seenn_engine_failures_total",
            &[("model", "fashion-mnist")]
        ),
        1.0
    );
    // The engine re-checks itself and reports ready again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c
        .get(url(&s, "/readyz"))
        .send()
        .await
        .expect("req")
        .status()
        != 200
    {
        assert!(Instant::now() < deadline, "model did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = c
        .post(url(&s, "/classify"))
        .header("content-type", "image/png")
        .body(png)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    assert_eq!(
        metric_value(
            &metrics_text(&s).await,
            "seenn_model_ready",
            &[("model", "fashion-mnist")]
        ),
        1.0
    );
    s.shutdown().await;
}

/// Clients that reset their connections while their requests run must leave nothing behind:
/// no request counted in flight (drain would wait for ghosts) and no stale active-batch gauge.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abandoned_requests_neither_hold_up_drain_nor_stay_in_the_active_gauge() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let mut child = serve_cmd(&models_dir(), dir.path(), port, free_port())
        .args(["--shutdown-timeout", "20"])
        .spawn()
        .expect("spawn");
    wait_ready(port, &mut child);
    let pkg = policy_package();
    let png = sample_bytes(&pkg, &golden(&pkg).samples[0]);
    let c = ::reqwest::Client::builder()
        .timeout(Duration::from_millis(50))
        .build()
        .expect("client");
    let url = format!("http://127.0.0.1:{port}/v1/models/fashion-mnist-qcfs/classify?rule=fixed");
    let handles = post_many(&c, &url, &png, 200);
    let mut gone = 0;
    for h in handles {
        if h.await.expect("task").is_err() {
            gone += 1;
        }
    }
    assert!(gone > 0, "some clients must have given up after 50 ms");
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let read = |name: &'static str| {
        let c = client();
        let u = metrics_url.clone();
        async move {
            let text = c
                .get(u)
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text");
            metric_value(&text, name, &[("model", "fashion-mnist-qcfs")])
        }
    };
    // The engine notices abandoned requests between steps; give it a moment to empty the batch.
    let deadline = Instant::now() + Duration::from_secs(10);
    while read("seenn_active_requests").await != 0.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        read("seenn_active_requests").await,
        0.0,
        "nothing runs any more"
    );
    let pid = child.id().to_string();
    let sent = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let (code, stderr) = tokio::task::spawn_blocking(move || stderr_of(child))
        .await
        .expect("join");
    let took = sent.elapsed();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        took < Duration::from_secs(10),
        "drain took {took:?}: it waited for requests whose clients were gone\n{stderr}"
    );
    assert!(!stderr.contains("still in flight"), "{stderr}");
    // Requests are logged at debug: the default level keeps start-up and shutdown only.
    assert!(!stderr.contains("classified"), "{stderr}");
}
