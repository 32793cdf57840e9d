//! The real server over HTTP: parity with the trainer's golden outputs, exit rules, image formats,
//! continuous batching, admin, metrics and every bad input.

mod common;

use std::io::Cursor;
use std::sync::Arc;

use common::*;
use serde_json::{json, Value};

/// ONNX Runtime against ONNX Runtime: the server's own loader and preprocessing reproduce the
/// trainer's per-timestep logits for every golden sample within 1e-4.
#[test]
fn golden_logits_reproduce_through_the_server_runtime() {
    let (env, _) = seenn_serve::runtime::init(None).expect("ORT loads");
    for pkg in packages() {
        let m = seenn_serve::model::read_manifest(&pkg).expect("manifest");
        let opts = seenn_serve::runtime::SessionOptions {
            device: seenn_serve::runtime::Device::Cpu,
            intra_threads: 1,
        };
        let mut s = seenn_serve::graphs::load_sessions(&pkg, &m, &env, &opts).expect("sessions");
        let g = golden(&pkg);
        assert!(
            g.samples.len() >= 8,
            "{}: too few golden samples",
            pkg.display()
        );
        let mut worst = 0f32;
        for sample in &g.samples {
            let x = sample.read_input(&pkg, &m).expect("preprocess");
            let logits =
                seenn_serve::graphs::run_single(&mut s, &m, &x, sample.logits.len()).expect("runs");
            for (got, want) in logits.iter().zip(&sample.logits) {
                assert_eq!(got.len(), want.len());
                for (a, b) in got.iter().zip(want) {
                    worst = worst.max((a - b).abs());
                }
            }
        }
        assert!(
            worst < 1e-4,
            "{}: max logit difference {worst}",
            pkg.display()
        );
    }
}

async fn post_png(
    s: &seenn_serve::server::RunningServer,
    path: &str,
    png: Vec<u8>,
) -> (u16, Value) {
    post_image(&client(), &url(s, path), png).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_golden_sample_exits_where_the_trainer_said() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = start(config(dir.path())).await;
    for pkg in packages() {
        let m = seenn_serve::model::read_manifest(&pkg).expect("manifest");
        let g = golden(&pkg);
        assert_eq!(g.alpha, m.exit.default_alpha);
        for sample in &g.samples {
            // Image samples as images, tensor samples (.npy) as application/x-npy.
            let path = format!("/v1/models/{}/classify", m.name);
            let (status, body) = if sample.is_npy() {
                post_npy(&s, &path, sample_bytes(&pkg, sample)).await
            } else {
                post_png(&s, &path, sample_bytes(&pkg, sample)).await
            };
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                body["timesteps_used"],
                sample.exit_timestep,
                "{} {}",
                pkg.display(),
                sample.file
            );
            assert_eq!(
                body["class_id"],
                sample.class_id,
                "{} {}",
                pkg.display(),
                sample.file
            );
            assert_eq!(body["exit_rule"], "confidence");
        }
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exit_rules_overrides_explain_and_top_k() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = start(config(dir.path())).await;
    let pkg = policy_package();
    let g = golden(&pkg);
    let t_max = g.samples[0].logits.len();
    for sample in g.samples.iter().take(16) {
        let png = sample_bytes(&pkg, sample);
        let (_, b) = post_png(
            &s,
            "/v1/models/fashion-mnist/classify?rule=fixed&max_timesteps=2",
            png.clone(),
        )
        .await;
        assert_eq!(b["timesteps_used"], 2);
        assert_eq!(b["exit_rule"], "fixed");
        let (_, b) = post_png(
            &s,
            "/v1/models/fashion-mnist/classify?alpha=1.0",
            png.clone(),
        )
        .await;
        assert_eq!(b["timesteps_used"], t_max, "alpha = 1 never exits early");
        let (_, b) = post_png(
            &s,
            "/v1/models/fashion-mnist/classify?max_timesteps=1&explain=true",
            png.clone(),
        )
        .await;
        assert_eq!(b["timesteps_used"], 1);
        assert_eq!(b["trajectory"].as_array().expect("trajectory").len(), 1);
        let (_, b) = post_png(
            &s,
            "/v1/models/fashion-mnist/classify?rule=policy",
            png.clone(),
        )
        .await;
        assert_eq!(b["exit_rule"], "policy");
        assert_eq!(
            Some(b["timesteps_used"].as_u64().expect("n") as usize),
            sample.policy_timesteps
        );
        let (_, b) = post_png(
            &s,
            "/v1/models/fashion-mnist/classify?top_k=3&explain=true",
            png,
        )
        .await;
        let top = b["top_k"].as_array().expect("top_k");
        assert_eq!(top.len(), 3);
        assert!(top[0]["probability"].as_f64() >= top[1]["probability"].as_f64());
        assert_eq!(top[0]["class_id"], b["class_id"]);
        let traj = b["trajectory"].as_array().expect("trajectory");
        assert_eq!(traj.len() as u64, b["timesteps_used"].as_u64().expect("n"));
        let last = &traj[traj.len() - 1];
        assert_eq!(last["class_id"], b["class_id"]);
        assert!(
            (last["score"].as_f64().expect("score") - b["confidence"].as_f64().expect("c")).abs()
                < 1e-12
        );
        for step in &traj[..traj.len() - 1] {
            assert!(
                step["score"].as_f64().expect("score") <= g.alpha,
                "an earlier step above alpha would have exited"
            );
        }
    }
    s.shutdown().await;
}

fn reencode(png: &[u8], format: image::ImageFormat) -> Vec<u8> {
    let img = image::load_from_memory(png).expect("decode");
    let img = if format == image::ImageFormat::Jpeg || format == image::ImageFormat::Gif {
        image::DynamicImage::ImageRgb8(img.to_rgb8())
    } else {
        img
    };
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), format)
        .expect("encode");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn image_formats_and_body_forms() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = start(config(dir.path())).await;
    let pkg = policy_package();
    let g = golden(&pkg);
    let sample = &g.samples[0];
    let png = sample_bytes(&pkg, sample);
    let c = client();
    // Lossless forms give exactly the golden answer.
    for (format, ct) in [
        (image::ImageFormat::Png, "image/png"),
        (image::ImageFormat::Bmp, "image/bmp"),
        (image::ImageFormat::WebP, "image/webp"),
        (image::ImageFormat::Gif, "image/gif"),
    ] {
        let bytes = reencode(&png, format);
        for content_type in [ct, "application/octet-stream"] {
            let r = c
                .post(url(&s, "/classify"))
                .header("content-type", content_type)
                .body(bytes.clone())
                .send()
                .await
                .expect("req");
            assert_eq!(r.status(), 200, "{format:?} as {content_type}");
            let b: Value = r.json().await.expect("json");
            assert_eq!(b["class_id"], sample.class_id, "{format:?}");
            assert_eq!(b["timesteps_used"], sample.exit_timestep, "{format:?}");
        }
    }
    // JPEG is lossy: it must decode and classify.
    let r = c
        .post(url(&s, "/classify"))
        .header("content-type", "image/jpeg")
        .body(reencode(&png, image::ImageFormat::Jpeg))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    // Multipart with options as fields.
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(png.clone())
                .file_name("x.png")
                .mime_str("image/png")
                .expect("mime"),
        )
        .text("rule", "fixed")
        .text("max_timesteps", "3");
    let b: Value = c
        .post(url(&s, "/classify"))
        .multipart(form)
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(b["timesteps_used"], 3);
    assert_eq!(b["exit_rule"], "fixed");
    // JSON with base64.
    use base64::Engine as _;
    let body = json!({"image": base64::engine::general_purpose::STANDARD.encode(&png), "model": "fashion-mnist", "top_k": 2});
    let b: Value = c
        .post(url(&s, "/classify"))
        .json(&body)
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(b["class_id"], sample.class_id);
    assert_eq!(b["top_k"].as_array().expect("top").len(), 2);
    // JSON tensor, preprocessed the way the manifest says.
    let m = seenn_serve::model::read_manifest(&pkg).expect("manifest");
    let x =
        seenn_serve::preprocess::image_to_tensor(&png, None, &m.input, 1 << 24).expect("tensor");
    let b: Value = c
        .post(url(&s, "/v1/models/fashion-mnist/classify"))
        .json(&json!({"tensor": x}))
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(b["class_id"], sample.class_id);
    assert_eq!(b["timesteps_used"], sample.exit_timestep);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_batch_together_and_match_serial_answers() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = start(config(dir.path())).await;
    let pkg = policy_package();
    let g = golden(&pkg);
    let pngs: Vec<Vec<u8>> = g.samples.iter().map(|x| sample_bytes(&pkg, x)).collect();
    let mut serial = Vec::new();
    for p in &pngs {
        serial.push(post_png(&s, "/classify?explain=true", p.clone()).await.1);
    }
    let exits: std::collections::BTreeSet<u64> = serial
        .iter()
        .map(|b| b["timesteps_used"].as_u64().expect("n"))
        .collect();
    assert!(
        exits.len() > 1,
        "the samples should exit at different timesteps: {exits:?}"
    );
    let s = Arc::new(s);
    for _round in 0..3 {
        let mut handles = Vec::new();
        for (i, p) in pngs.iter().enumerate() {
            let s = s.clone();
            let p = p.clone();
            handles.push(tokio::spawn(async move {
                (i, post_png(&s, "/classify?explain=true", p).await)
            }));
        }
        for h in handles {
            let (i, (status, b)) = h.await.expect("task");
            assert_eq!(status, 200);
            assert_eq!(b["class_id"], serial[i]["class_id"]);
            assert_eq!(b["timesteps_used"], serial[i]["timesteps_used"]);
            let (a, c) = (
                b["confidence"].as_f64().expect("c"),
                serial[i]["confidence"].as_f64().expect("c"),
            );
            assert!((a - c).abs() < 1e-5, "sample {i}: {a} vs {c}");
        }
    }
    let text = metrics_text(&s).await;
    let count = metric_value(
        &text,
        "seenn_batch_size_count",
        &[("model", "fashion-mnist")],
    );
    let ones = metric_value(
        &text,
        "seenn_batch_size_bucket",
        &[("model", "fashion-mnist"), ("le", "1")],
    );
    assert!(
        count > ones,
        "some step ran more than one request: {ones} of {count} steps had batch 1"
    );
    match Arc::try_unwrap(s) {
        Ok(s) => s.shutdown().await,
        Err(_) => panic!("server still shared"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_auth_alpha_targets_and_persistence() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = "/admin/models/fashion-mnist/exit-policy";
    // No token configured → 403.
    let s = start(config(dir.path())).await;
    let r = client()
        .get(url(&s, path))
        .bearer_auth("x")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 403);
    s.shutdown().await;

    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token-for-the-http-test\n").expect("write");
    let mut cfg = config(&dir.path().join("state"));
    cfg.admin_token_file = Some(token_file.clone());
    let s = start(cfg.clone()).await;
    let c = client();
    assert_eq!(
        c.get(url(&s, path)).send().await.expect("req").status(),
        401
    );
    assert_eq!(
        c.get(url(&s, path))
            .bearer_auth("wrong")
            .send()
            .await
            .expect("req")
            .status(),
        401
    );
    let r = c
        .get(url(&s, path))
        .bearer_auth("s3cret-token-for-the-http-test")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    let before: Value = r.json().await.expect("json");

    // α = 1.0 makes every request run all T steps, from the next request on.
    let pkg = policy_package();
    let png = sample_bytes(&pkg, &golden(&pkg).samples[0]);
    let r = c
        .put(url(&s, path))
        .bearer_auth("s3cret-token-for-the-http-test")
        .json(&json!({"alpha": 1.0}))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["alpha"], 1.0);
    assert_eq!(v["previous"]["alpha"], before["alpha"]);
    let (_, b) = post_png(&s, "/classify", png.clone()).await;
    assert_eq!(b["timesteps_used"], golden(&pkg).samples[0].logits.len());
    assert_eq!(b["alpha"], 1.0);

    // A target resolves through calibration.json: ask for the average of a row in the middle.
    let cal: Value =
        serde_json::from_str(&std::fs::read_to_string(pkg.join("calibration.json")).expect("cal"))
            .expect("json");
    let sweep = cal["alpha_sweep"].as_array().expect("sweep");
    let target = sweep[sweep.len() / 2]["avg_timesteps"]
        .as_f64()
        .expect("avg");
    let r = c
        .put(url(&s, path))
        .bearer_auth("s3cret-token-for-the-http-test")
        .json(&json!({"target_avg_timesteps": target}))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    let resolved = v["alpha"].as_f64().expect("alpha");
    let row = sweep
        .iter()
        .find(|r| r["alpha"].as_f64() == Some(resolved))
        .expect("alpha from the table");
    assert!(row["avg_timesteps"].as_f64().expect("avg") <= target);
    let best_within = sweep
        .iter()
        .filter(|r| r["avg_timesteps"].as_f64().expect("avg") <= target)
        .map(|r| r["accuracy"].as_f64().expect("acc"))
        .fold(0.0, f64::max);
    assert_eq!(
        row["accuracy"].as_f64(),
        Some(best_within),
        "the most accurate alpha within the budget"
    );
    assert_eq!(v["expected_avg_timesteps"], row["avg_timesteps"]);
    let r = c
        .put(url(&s, path))
        .bearer_auth("s3cret-token-for-the-http-test")
        .json(&json!({"max_accuracy_drop": 0.001}))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    let full = cal["accuracy_per_t"]
        .as_array()
        .expect("acc")
        .last()
        .and_then(Value::as_f64)
        .expect("full");
    assert!(v["expected_accuracy"].as_f64().expect("acc") >= full - 0.001 - 1e-12);
    let final_alpha = v["alpha"].clone();
    // Bad admin bodies.
    for bad in [
        json!({"alpha": 0.0}),
        json!({"alpha": 1.5}),
        json!({"rule": "greedy"}),
        json!({"alpha": 0.5, "target_avg_timesteps": 2}),
        json!({"bogus": 1}),
    ] {
        let r = c
            .put(url(&s, path))
            .bearer_auth("s3cret-token-for-the-http-test")
            .json(&bad)
            .send()
            .await
            .expect("req");
        assert_eq!(r.status(), 400, "{bad}");
    }
    s.shutdown().await;

    // The setting survives a restart.
    let s = start(cfg).await;
    let v: Value = client()
        .get(url(&s, path))
        .bearer_auth("s3cret-token-for-the-http-test")
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(v["alpha"], final_alpha);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_known_requests_and_pass_promtool() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = start(config(dir.path())).await;
    let pkg = policy_package();
    let g = golden(&pkg);
    let mut total_t = 0usize;
    for sample in g.samples.iter().take(20) {
        let (status, _) = post_png(&s, "/classify", sample_bytes(&pkg, sample)).await;
        assert_eq!(status, 200);
        total_t += sample.exit_timestep;
    }
    for _ in 0..3 {
        let (status, _) = post_png(
            &s,
            "/classify?rule=fixed&max_timesteps=2",
            sample_bytes(&pkg, &g.samples[0]),
        )
        .await;
        assert_eq!(status, 200);
    }
    let (status, _) = post_png(&s, "/classify?alpha=7", sample_bytes(&pkg, &g.samples[0])).await;
    assert_eq!(status, 400);
    let text = metrics_text(&s).await;
    let conf = [("model", "fashion-mnist"), ("rule", "confidence")];
    assert_eq!(
        metric_value(&text, "seenn_timesteps_used_count", &conf),
        20.0
    );
    assert_eq!(
        metric_value(&text, "seenn_timesteps_used_sum", &conf),
        total_t as f64
    );
    // The drift alert's series: requests on the default policy apart from those with their own.
    let default_conf = [
        ("model", "fashion-mnist"),
        ("rule", "confidence"),
        ("policy", "default"),
    ];
    assert_eq!(
        metric_value(&text, "seenn_timesteps_used_count", &default_conf),
        20.0
    );
    let custom_fixed = [
        ("model", "fashion-mnist"),
        ("rule", "fixed"),
        ("policy", "custom"),
    ];
    assert_eq!(
        metric_value(&text, "seenn_timesteps_used_count", &custom_fixed),
        3.0
    );
    assert_eq!(
        metric_value(
            &text,
            "seenn_requests_total",
            &[
                ("model", "fashion-mnist"),
                ("rule", "confidence"),
                ("status", "200")
            ]
        ),
        20.0
    );
    assert_eq!(
        metric_value(
            &text,
            "seenn_requests_total",
            &[("model", "fashion-mnist"), ("status", "400")]
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            "seenn_exits_total",
            &[
                ("model", "fashion-mnist"),
                ("rule", "fixed"),
                ("timestep", "2")
            ]
        ),
        3.0
    );
    let exits: f64 = (1..=4)
        .map(|t| {
            metric_value(
                &text,
                "seenn_exits_total",
                &[
                    ("model", "fashion-mnist"),
                    ("rule", "confidence"),
                    ("timestep", &t.to_string()),
                ],
            )
        })
        .sum();
    assert_eq!(exits, 20.0);
    assert!(text.contains("seenn_model_info{"));
    assert!(text.contains("process_resident_memory_bytes"));
    let alpha = metric_value(&text, "seenn_exit_alpha", &[("model", "fashion-mnist")]);
    assert_eq!(alpha, g.alpha);
    // promtool (Debian's prometheus package) lints the exposition.
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool installed by `make setup`");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_inputs_get_clear_4xx_and_the_server_stays_up() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = config(dir.path());
    cfg.max_body_bytes = 200_000;
    cfg.max_image_pixels = 10_000;
    let s = start(cfg).await;
    let pkg = policy_package();
    let png = sample_bytes(&pkg, &golden(&pkg).samples[0]);
    let mut truncated = png.clone();
    truncated.truncate(png.len() / 2);
    let mut corrupt = png.clone();
    for b in corrupt.iter_mut().skip(40) {
        *b ^= 0x5a;
    }
    let big = {
        let img = image::GrayImage::new(200, 200);
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .expect("png");
        out
    };
    // A little-endian TIFF header: recognised, but not a format the server accepts.
    let tiff = b"II*\x00\x08\x00\x00\x00\x00\x00".to_vec();
    let c = client();
    let raw = |path: &str, ct: &str, body: Vec<u8>| {
        c.post(url(&s, path))
            .header("content-type", ct.to_string())
            .body(body)
    };
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "empty body",
            raw("/classify", "image/png", vec![]),
            400,
            "invalid_request",
        ),
        (
            "not an image",
            raw(
                "/classify",
                "application/octet-stream",
                b"hello world".to_vec(),
            ),
            415,
            "unsupported_media_type",
        ),
        (
            "text type",
            raw("/classify", "text/plain", b"hello".to_vec()),
            415,
            "unsupported_media_type",
        ),
        (
            "truncated",
            raw("/classify", "image/png", truncated),
            400,
            "invalid_request",
        ),
        (
            "corrupt",
            raw("/classify", "image/png", corrupt),
            400,
            "invalid_request",
        ),
        (
            "tiff",
            raw("/classify", "image/tiff", tiff),
            415,
            "unsupported_media_type",
        ),
        (
            "too many pixels",
            raw("/classify", "image/png", big),
            413,
            "too_large",
        ),
        (
            "body too large",
            raw("/classify", "image/png", vec![0u8; 300_000]),
            413,
            "too_large",
        ),
        (
            "wrong tensor length",
            c.post(url(&s, "/classify"))
                .json(&json!({"tensor": [0.0, 1.0]})),
            400,
            "invalid_request",
        ),
        (
            "huge float",
            c.post(url(&s, "/classify"))
                .json(&json!({"tensor": vec![1e39; 784]})),
            400,
            "invalid_request",
        ),
        (
            "alpha 0",
            raw("/classify?alpha=0", "image/png", png.clone()),
            400,
            "invalid_request",
        ),
        (
            "alpha > 1",
            raw("/classify?alpha=1.01", "image/png", png.clone()),
            400,
            "invalid_request",
        ),
        (
            "alpha NaN",
            raw("/classify?alpha=NaN", "image/png", png.clone()),
            400,
            "invalid_request",
        ),
        (
            "max_timesteps 0",
            raw("/classify?max_timesteps=0", "image/png", png.clone()),
            400,
            "invalid_request",
        ),
        (
            "max_timesteps > T",
            raw("/classify?max_timesteps=99", "image/png", png.clone()),
            400,
            "invalid_request",
        ),
        (
            "unknown model",
            raw("/v1/models/nope/classify", "image/png", png.clone()),
            404,
            "model_not_found",
        ),
        (
            "unknown model option",
            raw("/classify?model=nope", "image/png", png.clone()),
            404,
            "model_not_found",
        ),
        (
            "unknown rule",
            raw("/classify?rule=greedy", "image/png", png.clone()),
            400,
            "invalid_request",
        ),
        (
            "unknown option",
            raw("/classify?colour=red", "image/png", png.clone()),
            400,
            "invalid_request",
        ),
        (
            "malformed json",
            raw("/classify", "application/json", b"{\"image\": ".to_vec()),
            400,
            "invalid_request",
        ),
        (
            "bad base64",
            c.post(url(&s, "/classify")).json(&json!({"image": "@@@"})),
            400,
            "invalid_request",
        ),
        (
            "json without input",
            c.post(url(&s, "/classify")).json(&json!({"alpha": 0.5})),
            400,
            "invalid_request",
        ),
        (
            "malformed multipart",
            raw(
                "/classify",
                "multipart/form-data; boundary=XYZ",
                b"--XYZ\r\nbroken".to_vec(),
            ),
            400,
            "invalid_request",
        ),
        (
            "multipart without image",
            c.post(url(&s, "/classify"))
                .multipart(reqwest::multipart::Form::new().text("alpha", "0.5")),
            400,
            "invalid_request",
        ),
        (
            "top_k 0",
            raw("/classify?top_k=0", "image/png", png.clone()),
            400,
            "invalid_request",
        ),
    ];
    for (name, req, status, code) in cases {
        let r = req.send().await.expect(name);
        assert_eq!(r.status().as_u16(), status, "{name}");
        let b: Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{name}: body is not JSON: {e}"));
        assert_eq!(b["code"], code, "{name}: {b}");
        assert!(
            b["error"].as_str().is_some_and(|e| e.len() > 10),
            "{name}: {b}"
        );
    }
    let (status, _) = post_png(&s, "/classify", png).await;
    assert_eq!(status, 200, "still serving after every bad input");
    assert_eq!(
        client()
            .get(url(&s, "/healthz"))
            .send()
            .await
            .expect("req")
            .status(),
        200
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn model_listing_health_and_request_ids() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = start(config(dir.path())).await;
    let c = client();
    let v: Value = c
        .get(url(&s, "/v1/models"))
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    let models = v["models"].as_array().expect("models");
    assert_eq!(models.len(), packages().len());
    let fm: Value = c
        .get(url(&s, "/v1/models/fashion-mnist"))
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(fm["execution_provider"], "CPUExecutionProvider");
    assert_eq!(fm["has_policy"], true);
    assert_eq!(fm["labels"].as_array().expect("labels").len(), 10);
    assert!(fm["calibration"]["aet"].as_f64().is_some());
    assert_eq!(
        c.get(url(&s, "/readyz"))
            .send()
            .await
            .expect("req")
            .status(),
        200
    );
    let pkg = policy_package();
    let r = c
        .post(url(&s, "/classify"))
        .header("content-type", "image/png")
        .header("x-request-id", "req-42")
        .body(sample_bytes(&pkg, &golden(&pkg).samples[0]))
        .send()
        .await
        .expect("req");
    assert_eq!(r.headers()["x-request-id"], "req-42");
    assert!(r.headers().contains_key("x-total-time-ms"));
    let b: Value = r.json().await.expect("json");
    assert_eq!(b["request_id"], "req-42");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_429_with_retry_after() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = config(dir.path());
    cfg.max_queue = 2;
    cfg.max_batch = 1;
    let s = Arc::new(start(cfg).await);
    let pkg = policy_package();
    let png = sample_bytes(&pkg, &golden(&pkg).samples[0]);
    let mut handles = Vec::new();
    for _ in 0..60 {
        let (s, png) = (s.clone(), png.clone());
        handles.push(tokio::spawn(async move {
            let r = client()
                .post(url(
                    &s,
                    "/v1/models/fashion-mnist-qcfs/classify?rule=fixed&max_timesteps=32",
                ))
                .header("content-type", "image/png")
                .body(png)
                .send()
                .await
                .expect("req");
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap_or("").to_string());
            (r.status().as_u16(), retry)
        }));
    }
    let mut ok = 0;
    let mut rejected = 0;
    for h in handles {
        match h.await.expect("task") {
            (200, _) => ok += 1,
            (429, Some(retry)) => {
                assert_eq!(retry, "1");
                rejected += 1
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(
        ok >= 1 && rejected >= 1,
        "{ok} answered, {rejected} rejected"
    );
    let text = metrics_text(&s).await;
    assert_eq!(
        metric_value(
            &text,
            "seenn_requests_total",
            &[("model", "fashion-mnist-qcfs"), ("status", "429")]
        ),
        rejected as f64
    );
    match Arc::try_unwrap(s) {
        Ok(s) => s.shutdown().await,
        Err(_) => panic!("server still shared"),
    }
}

/// A deadline that passes while the request waits in the queue is answered 504 then (one step's
/// time later at most), not when a worker reaches the request: it comes back while the long
/// requests queued ahead of it still run.
/// The worker then drops the row unrun and counts it as a deadline cancellation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadline_passed_in_the_queue_is_answered_at_the_deadline() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = config(dir.path());
    cfg.engine_workers = Some(1);
    cfg.batch_width = seenn_serve::engine::BatchWidth::Fixed(1);
    let s = Arc::new(start(cfg).await);
    let pkg = policy_package();
    let png = sample_bytes(&pkg, &golden(&pkg).samples[0]);
    let model = ("model", "fashion-mnist-qcfs");
    let cancelled = |text: &str, reason: &str| {
        metric_value(text, "seenn_cancelled_total", &[model, ("reason", reason)])
    };
    let before = metrics_text(&s).await;
    let post = |query: &'static str| {
        let (s, png) = (s.clone(), png.clone());
        tokio::spawn(async move {
            let r = client()
                .post(url(
                    &s,
                    &format!("/v1/models/fashion-mnist-qcfs/classify?{query}"),
                ))
                .header("content-type", "image/png")
                .body(png)
                .send()
                .await
                .expect("req");
            (r.status().as_u16(), std::time::Instant::now())
        })
    };
    // Eight requests of 32 steps, one row at a time: the last ends at least 8 × 32 steps later.
    let ahead: Vec<_> = (0..8)
        .map(|_| post("rule=fixed&max_timesteps=32"))
        .collect();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metric_value(&metrics_text(&s).await, "seenn_queue_depth", &[model]) < 4.0 {
        assert!(std::time::Instant::now() < until, "the queue never filled");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let (status, answered) = post("rule=fixed&max_timesteps=32&timeout_ms=10")
        .await
        .expect("task");
    assert_eq!(status, 504);
    // At least four requests of 32 steps were queued ahead of it: were it answered when a worker
    // reached it, none of them would still be running (give or take the last one's answer on the
    // way out); at its 10 ms deadline two or more still are.
    let mut still_running = 0;
    for h in ahead {
        let (status, at) = h.await.expect("task");
        assert_eq!(status, 200);
        still_running += usize::from(at > answered);
    }
    assert!(
        still_running >= 2,
        "the 504 waited for the requests queued ahead ({still_running} still ran)"
    );
    // The worker reaches the abandoned row once the last request ahead has left.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let after = metrics_text(&s).await;
        if cancelled(&after, "deadline") == cancelled(&before, "deadline") + 1.0 {
            assert_eq!(
                cancelled(&after, "client_gone"),
                cancelled(&before, "client_gone")
            );
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "never counted as a deadline cancellation"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    match Arc::try_unwrap(s) {
        Ok(s) => s.shutdown().await,
        Err(_) => panic!("server still shared"),
    }
}

/// `--max-http-in-flight`: past the limit a request is refused with 429 + Retry-After before its
/// body is read, the admitted ones finish, and probes and metrics still answer meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_admission_limit_sheds_load_and_keeps_probes_up() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = config(dir.path());
    cfg.max_http_in_flight = 2;
    cfg.max_queue = 256;
    cfg.max_batch = 1;
    let s = Arc::new(start(cfg).await);
    let pkg = policy_package();
    let png = sample_bytes(&pkg, &golden(&pkg).samples[0]);
    let mut handles = Vec::new();
    for _ in 0..40 {
        let (s, png) = (s.clone(), png.clone());
        handles.push(tokio::spawn(async move {
            let r = client()
                .post(url(
                    &s,
                    "/v1/models/fashion-mnist-qcfs/classify?rule=fixed&max_timesteps=32",
                ))
                .header("content-type", "image/png")
                .body(png)
                .send()
                .await
                .expect("req");
            let status = r.status().as_u16();
            let retry = r.headers().contains_key("retry-after");
            let body: Value = r.json().await.expect("json");
            (status, retry, body)
        }));
    }
    // While the two admitted requests run, probes and metrics are not shed.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = client().get(url(&s, path)).send().await.expect("probe");
        assert_eq!(r.status(), 200, "{path}");
    }
    let (mut ok, mut shed) = (0, 0);
    for h in handles {
        match h.await.expect("task") {
            (200, _, _) => ok += 1,
            (429, true, body) => {
                assert!(
                    body["error"]
                        .as_str()
                        .unwrap_or("")
                        .contains("--max-http-in-flight"),
                    "{body}"
                );
                shed += 1
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(ok >= 2 && shed >= 1, "{ok} answered, {shed} shed");
    assert_eq!(ok + shed, 40);
    match Arc::try_unwrap(s) {
        Ok(s) => s.shutdown().await,
        Err(_) => panic!("server still shared"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_change_publishes_the_whole_policy_view_as_gauges() {
    let dir = tempfile::tempdir().expect("tmp");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token-for-the-http-test\n").expect("write");
    let mut cfg = config(&dir.path().join("state"));
    cfg.admin_token_file = Some(token_file);
    let s = start(cfg).await;
    let path = "/admin/models/fashion-mnist/exit-policy";
    let gauges = |text: &str| {
        (
            metric_value(text, "seenn_exit_alpha", &[("model", "fashion-mnist")]),
            metric_value(
                text,
                "seenn_expected_avg_timesteps",
                &[("model", "fashion-mnist")],
            ),
        )
    };
    for body in [
        json!({"target_avg_timesteps": 1e9}),
        json!({"alpha": 0.5}),
        json!({"rule": "fixed", "timesteps": 3}),
    ] {
        let v: Value = client()
            .put(url(&s, path))
            .bearer_auth("s3cret-token-for-the-http-test")
            .json(&body)
            .send()
            .await
            .expect("req")
            .json()
            .await
            .expect("json");
        let (alpha, expected) = gauges(&metrics_text(&s).await);
        assert_eq!(Some(alpha), v["alpha"].as_f64(), "{body}: {v}");
        assert_eq!(
            Some(expected),
            v["expected_avg_timesteps"].as_f64(),
            "{body}: the drift alert's reference must follow the policy: {v}"
        );
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_routes_wrong_methods_and_long_targets_answer_in_the_error_format() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = start(config(dir.path())).await;
    let c = client();
    let long = format!("/classify?model={}", "m".repeat(20_000));
    for (req, status, code) in [
        (c.get(url(&s, "/classify")), 405, "method_not_allowed"),
        (c.delete(url(&s, "/v1/models")), 405, "method_not_allowed"),
        (c.get(url(&s, "/no/such/route")), 404, "not_found"),
        (c.post(url(&s, "/v2/models/x/nothing")), 404, "not_found"),
        (c.post(url(&s, &long)), 414, "uri_too_long"),
    ] {
        let r = req.send().await.expect("req");
        assert_eq!(r.status().as_u16(), status);
        assert!(
            r.headers()[reqwest::header::CONTENT_TYPE]
                .to_str()
                .expect("ascii")
                .starts_with("application/json"),
            "{code}"
        );
        let v: Value = r.json().await.expect("a JSON error body");
        assert_eq!(v["code"], code, "{v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    // Rejected by the HTTP parser itself, before any handler: still the JSON error format.
    // (reqwest refuses such a URL, so the request goes over a raw socket.)
    for (request, status, code) in [
        (
            format!(
                "POST /classify?model={} HTTP/1.1\r\nhost: x\r\n\r\n",
                "m".repeat(100_000)
            ),
            "414",
            "uri_too_long",
        ),
        (
            "NOT HTTP AT ALL\r\n\r\n".to_string(),
            "400",
            "malformed_http",
        ),
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(s.http_addr)
            .await
            .expect("connect");
        tcp.write_all(request.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.expect("read");
        let answer = String::from_utf8(answer).expect("utf8");
        let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let v: Value = serde_json::from_str(body).expect("a JSON error body");
        assert_eq!(v["code"], code, "{v}");
    }
    // A model that does not exist is still model_not_found, not a missing route.
    let r = c.get(url(&s, "/v1/models/nope")).send().await.expect("req");
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["code"], "model_not_found");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adaptive_alpha_lowers_under_a_missed_objective_floors_and_recovers() {
    let dir = tempfile::tempdir().expect("tmp");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token-for-the-http-test\n").expect("write");
    let mut cfg = config(&dir.path().join("state"));
    cfg.admin_token_file = Some(token_file);
    cfg.adaptive_interval_ms = 100;
    // One worker, so that the test's clients keep the engine busy on any number of cores.
    cfg.engine_workers = Some(1);
    let s = start(cfg.clone()).await;
    let path = "/admin/models/fashion-mnist/exit-policy";
    let c = client();
    let put = |body: Value| {
        let c = c.clone();
        let u = url(&s, path);
        async move {
            let r = c
                .put(u)
                .bearer_auth("s3cret-token-for-the-http-test")
                .json(&body)
                .send()
                .await
                .expect("req");
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.expect("json")
        }
    };
    let current = || {
        let c = c.clone();
        let u = url(&s, path);
        async move {
            c.get(u)
                .bearer_auth("s3cret-token-for-the-http-test")
                .send()
                .await
                .expect("req")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    // An objective no server meets (1 µs): α must go down to the accuracy floor and stay there.
    let v =
        put(json!({"alpha": 0.94, "adaptive": {"p99_ms": 0.001, "max_accuracy_drop": 0.01}})).await;
    let configured = v["adaptive"]["configured_alpha"]
        .as_f64()
        .expect("configured");
    let floor = v["adaptive"]["floor_alpha"].as_f64().expect("floor");
    assert_eq!(configured, 0.94);
    assert!(floor < configured, "{v}");
    let pkg = policy_package();
    let png = sample_bytes(&pkg, &golden(&pkg).samples[0]);
    let answers =
        load_until_dial_at_floor(&s, "/classify", png.clone(), "alpha", floor, current).await;
    assert!(answers.iter().any(|(st, _)| *st == 200));
    assert_shed_or_dial_at_least(&answers, "alpha", floor);
    // A request that sets its own α is never changed.
    let (_, own) = post_png(&s, "/classify?alpha=0.99", png.clone()).await;
    assert_eq!(own["alpha"].as_f64(), Some(0.99));
    // More slow, busy ticks (at least 6 of them) never go below the floor; past it, the shed
    // levels narrow the workers' batch. They act on the answered requests' p99 while the engine
    // is busy or the server sheds, which an objective of 1 µs may or may not give (it sheds
    // nearly everything at the door, and answers almost nothing): 1 ms, which a busy engine
    // misses, does. The new objective starts again from the configured α and the full batch.
    let batch_limit = || async {
        metric_value(
            &metrics_text(&s).await,
            "seenn_engine_batch_limit",
            &[("model", "fashion-mnist")],
        )
    };
    let v = put(json!({"adaptive": {"p99_ms": 1.0, "max_accuracy_drop": 0.01}})).await;
    assert_eq!(v["adaptive"]["floor_alpha"].as_f64(), Some(floor), "{v}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while batch_limit().await != cfg.max_batch as f64 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(batch_limit().await, cfg.max_batch as f64);
    let started = std::time::Instant::now();
    let (reached, answers) = post_under_load(
        &s,
        "/classify",
        png.clone(),
        16,
        std::time::Duration::from_secs(30),
        || {
            let v = current();
            let b = batch_limit();
            async move {
                started.elapsed() > std::time::Duration::from_millis(600)
                    && v.await["alpha"].as_f64() == Some(floor)
                    && b.await < cfg.max_batch as f64
            }
        },
    )
    .await;
    assert!(
        reached,
        "{} batch limit {}",
        current().await,
        batch_limit().await
    );
    assert_shed_or_dial_at_least(&answers, "alpha", floor);
    // The state is persisted like the rest of the policy.
    let saved =
        std::fs::read_to_string(dir.path().join("state/exit-policies.json")).expect("state");
    assert!(saved.contains("\"adaptive\""), "{saved}");
    // No traffic counts as calm: α climbs back, level by level, to the configured value.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while current().await["alpha"].as_f64() != Some(configured)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(current().await["alpha"].as_f64(), Some(configured));
    // The shed levels came off before α rose: the full batch again.
    assert_eq!(batch_limit().await, cfg.max_batch as f64);
    // Switched off: the adaptive block is gone.
    let v = put(json!({"adaptive": null})).await;
    assert!(v.get("adaptive").is_none(), "{v}");
    assert_eq!(v["alpha"].as_f64(), Some(configured));
    s.shutdown().await;
}

/// Under adaptive α with α at its floor the queue is bounded in time: a burst far over what the
/// engine does within the objective's queue budget gets some answers and some 429 `overloaded`
/// (shed) answers, and every answered request waited at most the budget. Without adaptive α the
/// same burst is queued and answered in full, and requests with their own α are never shed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adaptive_alpha_sheds_requests_that_waited_past_the_queue_budget() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = config_with_admin(dir.path());
    // One worker, so that a burst of 200 outlasts the queue budget on any number of cores.
    cfg.engine_workers = Some(1);
    let s = start(cfg).await;
    let pkg = policy_package();
    let png = sample_bytes(&pkg, &golden(&pkg).samples[0]);
    let burst = |n: usize| {
        let futures = (0..n).map(|_| post_png(&s, "/classify", png.clone()));
        futures::future::join_all(futures)
    };
    let answers = burst(200).await;
    assert!(
        answers.iter().all(|(st, _)| *st == 200),
        "no shedding without adaptive α"
    );

    // A 5 ms queue budget: the first requests of the burst are admitted within it, the tail of
    // 200 waits longer on this machine.
    let objective_ms = 10.0;
    let budget_ms = objective_ms * seenn_serve::service::adaptive::QUEUE_BUDGET;
    let (status, v) = admin_put(
        &s,
        "fashion-mnist",
        json!({"alpha": 0.5, "adaptive": {"p99_ms": objective_ms, "max_accuracy_drop": 0.0}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["adaptive"]["floor_alpha"].as_f64(),
        Some(0.5),
        "α starts at its floor: {v}"
    );
    let answers = burst(200).await;
    let shed: Vec<&Value> = answers
        .iter()
        .filter(|(st, _)| *st == 429)
        .map(|(_, b)| b)
        .collect();
    let answered: Vec<&Value> = answers
        .iter()
        .filter(|(st, _)| *st == 200)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(shed.len() + answered.len(), 200, "only answers and sheds");
    assert!(
        !shed.is_empty() && !answered.is_empty(),
        "{} shed",
        shed.len()
    );
    for b in &shed {
        assert_eq!(b["code"], "overloaded", "{b}");
        assert!(
            b["error"]
                .as_str()
                .unwrap_or("")
                .contains("adaptive p99 objective"),
            "{b}"
        );
    }
    for b in &answered {
        let q = b["timings"]["queue_ms"].as_f64().expect("queue_ms");
        assert!(
            q <= budget_ms + 1e-6,
            "answered after waiting {q} ms > {budget_ms} ms"
        );
    }
    let text = metrics_text(&s).await;
    assert_eq!(
        metric_value(
            &text,
            "seenn_cancelled_total",
            &[("model", "fashion-mnist"), ("reason", "queue_budget")]
        ),
        shed.len() as f64
    );
    // Requests with their own α are neither changed nor shed.
    let futures = (0..200).map(|_| post_png(&s, "/classify?alpha=0.5", png.clone()));
    let own = futures::future::join_all(futures).await;
    assert!(
        own.iter().all(|(st, _)| *st == 200),
        "custom requests are not shed"
    );
    s.shutdown().await;
}

/// `seenn_engine_busy_seconds_total` counts the workers' time on work, not their time waiting:
/// it does not grow while the server is idle, grows by at least the `step.onnx` time under
/// requests, and never by more than the workers' wall time; `seenn_engine_workers` shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engine_busy_seconds_count_work_not_waiting() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = config(dir.path());
    cfg.engine_workers = Some(2);
    let s = start(cfg).await;
    let m = [("model", "fashion-mnist")];
    let read = || async {
        let text = metrics_text(&s).await;
        (
            metric_value(&text, "seenn_engine_busy_seconds_total", &m),
            metric_value(&text, "seenn_step_duration_seconds_sum", &m),
            metric_value(&text, "seenn_engine_workers", &m),
        )
    };
    // Whatever start-up cost is counted once the workers first wait.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (busy0, steps0, workers) = read().await;
    assert_eq!(workers, 2.0);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (idle, _, _) = read().await;
    assert_eq!(idle, busy0, "idle workers are not busy");
    let pkg = policy_package();
    let g = golden(&pkg);
    let started = std::time::Instant::now();
    let answers = futures::future::join_all(
        g.samples
            .iter()
            .map(|x| post_png(&s, "/classify", sample_bytes(&pkg, x))),
    )
    .await;
    let wall = started.elapsed().as_secs_f64();
    assert!(answers.iter().all(|(st, _)| *st == 200));
    // The last step is counted right after it ran, before or while its answer travels back.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let (busy1, steps1, _) = read().await;
    let (busy, steps) = (busy1 - busy0, steps1 - steps0);
    assert!(steps > 0.0);
    assert!(busy >= steps, "busy {busy} s < step.onnx time {steps} s");
    assert!(
        busy <= 2.0 * (wall + 0.05),
        "busy {busy} s > 2 workers × {wall} s"
    );
    s.shutdown().await;
}
