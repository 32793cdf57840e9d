//! `seenn bench` against a test server: closed and open loop, HTTP and gRPC; the JSON report's
//! counts are consistent.

mod common;

use std::process::Command;

use common::*;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_seenn"))
        .current_dir(repo())
        .arg("bench")
        .args(args)
        .args(["--json", "--quiet"])
        .output()
        .expect("seenn bench runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

fn check(r: &serde_json::Value, expect_requests: Option<u64>) {
    let requests = r["requests"].as_u64().expect("requests");
    let ok = r["successes"].as_u64().expect("successes");
    let errors = r["errors"].as_u64().expect("errors");
    assert_eq!(requests, ok + errors, "{r}");
    let by_status: u64 = r["by_status"]
        .as_object()
        .expect("by_status")
        .values()
        .map(|v| v.as_u64().unwrap_or(0))
        .sum();
    assert_eq!(by_status, requests);
    if let Some(n) = expect_requests {
        assert_eq!(requests, n);
    }
    assert_eq!(errors, 0, "{r}");
    let avg = r["avg_timesteps"].as_f64().expect("avg");
    assert!(
        (1.0..=4.0).contains(&avg),
        "average timesteps {avg} outside [1, T]"
    );
    let lat = &r["latency_ms"];
    assert!(
        lat["p50"].as_f64() <= lat["p99"].as_f64() && lat["p99"].as_f64() <= lat["max"].as_f64()
    );
    assert!(r["accuracy"].as_f64().expect("accuracy") > 0.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_and_open_loop_reports_are_consistent() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = start(config(dir.path())).await;
    let http = format!("http://{}", s.http_addr);
    let grpc = format!("http://{}", s.grpc_addr);
    let (h, g) = (http.clone(), grpc.clone());
    let reports = tokio::task::spawn_blocking(move || {
        vec![
            (
                bench(&["--url", &h, "--concurrency", "8", "--requests", "300"]),
                Some(300),
            ),
            (
                bench(&["--url", &h, "--rate", "200", "--duration", "1"]),
                None,
            ),
            (
                bench(&[
                    "--url",
                    &g,
                    "--protocol",
                    "grpc",
                    "--concurrency",
                    "4",
                    "--requests",
                    "200",
                ]),
                Some(200),
            ),
            (
                bench(&[
                    "--url",
                    &h,
                    "--requests",
                    "200",
                    "--replay-exits",
                    "1:0.5,4:0.5",
                ]),
                Some(200),
            ),
            (
                bench(&["--url", &h, "--get", "/healthz", "--requests", "50"]),
                Some(50),
            ),
        ]
    })
    .await
    .expect("bench runs");
    for (r, n) in &reports[..4] {
        check(r, *n);
        // Every classify answer carries the server's own timings (HTTP headers, gRPC `timings`).
        let st = &r["server_timings_ms"];
        let total = st["total_p50"].as_f64().expect("server total");
        let inference = st["inference_p50"].as_f64().expect("server inference");
        assert!(inference > 0.0 && total >= inference, "{st}");
        assert!(st["outside_p50"].as_f64().expect("outside") >= 0.0, "{st}");
    }
    // --get: the floor of client and HTTP, no model involved.
    let probe = &reports[4].0;
    assert_eq!(probe["successes"], 50, "{probe}");
    assert!(probe["server_timings_ms"].is_null(), "{probe}");
    assert!(probe["latency_ms"]["p50"].as_f64().expect("p50") > 0.0);
    let open = &reports[1].0;
    let sent = open["requests"].as_u64().expect("n");
    assert!(
        (150..=210).contains(&sent),
        "open loop at 200/s for 1 s sent {sent}"
    );
    let replay = reports[3].0["avg_timesteps"].as_f64().expect("avg");
    assert!(
        (replay - 2.5).abs() < 0.05,
        "replayed exits 1 and 4 half each: {replay}"
    );
    s.shutdown().await;
}

/// A tensor package's golden samples (.npy) as the load: sent as `application/x-npy` over HTTP
/// and as a tensor over gRPC; every answer a success and at the golden exit step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_sends_a_tensor_package_samples() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = start(tensor_config(dir.path())).await;
    let http = format!("http://{}", s.http_addr);
    let grpc = format!("http://{}", s.grpc_addr);
    let data = frames_package().display().to_string();
    let g = golden(&frames_package());
    let want =
        g.samples.iter().map(|s| s.exit_timestep).sum::<usize>() as f64 / g.samples.len() as f64;
    let reports = tokio::task::spawn_blocking(move || {
        [("http", http), ("grpc", grpc)].map(|(protocol, u)| {
            bench(&[
                "--url",
                &u,
                "--protocol",
                protocol,
                "--model",
                "lif-frames",
                "--data",
                &data,
                "--concurrency",
                "1",
                "--requests",
                "12",
            ])
        })
    })
    .await
    .expect("bench");
    for r in reports {
        assert_eq!(r["successes"], 12, "{r}");
        let avg = r["avg_timesteps"].as_f64().expect("avg");
        assert!((avg - want).abs() < 1e-9, "{avg} vs {want}: {r}");
    }
    s.shutdown().await;
}
