//! The learned exit rule (`exit.onnx`, package format 2) served as `rule=learned`: the golden
//! stop probabilities and exits through ONNX Runtime and through the real server over HTTP and
//! gRPC, batched like serial, the admin's threshold targets, gauges, metrics, persistence and the
//! errors of models without one. Also the SEENN-II policy's dial (the per-action bias scale).

mod common;

use common::*;
use seenn_serve::api::grpc::pb;
use seenn_serve::api::grpc::pb::classifier_client::ClassifierClient;
use seenn_serve::runtime::{self, Device, SessionOptions};
use serde_json::{json, Value};

/// The package with a learned exit rule, and its golden threshold, margin and per-sample scores.
fn learned_golden() -> (std::path::PathBuf, Golden, f64) {
    let pkg = policy_package();
    let g = golden(&pkg);
    let m = seenn_serve::model::read_manifest(&pkg).expect("manifest");
    assert!(m.graphs.exit.is_some(), "fashion-mnist has exit.onnx");
    let threshold = g.learned_threshold.expect("golden learned_threshold");
    assert_eq!(Some(threshold), m.exit.default_threshold);
    assert!(g.learned_min_margin.expect("margin") > 1e-4);
    (pkg, g, threshold)
}

fn calibration(pkg: &std::path::Path) -> seenn_serve::model::manifest::Calibration {
    seenn_serve::model::read_calibration(pkg, 4)
        .expect("calibration.json parses")
        .expect("calibration.json")
}

/// exit.onnx fed the running sums of the golden logits (batch 1) gives the golden scores, and
/// the rule applied to them gives the golden exits: the package is self-consistent.
#[test]
fn golden_scores_reproduce_through_onnx_runtime() {
    let (pkg, g, threshold) = learned_golden();
    let m = seenn_serve::model::read_manifest(&pkg).expect("manifest");
    let (env, _) = runtime::init(None).expect("ORT");
    let opts = SessionOptions {
        device: Device::Cpu,
        intra_threads: 1,
    };
    let mut s = seenn_serve::graphs::load_sessions(&pkg, &m, &env, &opts).expect("sessions");
    let (Some(session), Some(graph)) = (s.exit.as_mut(), m.graphs.exit.as_ref()) else {
        panic!("exit session loaded");
    };
    for sample in &g.samples {
        let scores =
            seenn_serve::graphs::learned_scores(session, graph, &sample.logits).expect("scores");
        let want = sample.learned_scores.as_ref().expect("learned_scores");
        assert_eq!(scores.len(), want.len());
        for (a, b) in scores.iter().zip(want) {
            assert!(
                (f64::from(*a) - b).abs() < 1e-4,
                "{}: {a} vs {b}",
                sample.file
            );
        }
        let rule = seenn_serve::exit::ExitRule::Learned {
            threshold,
            max_timesteps: m.timesteps,
        };
        let exit_t = (1..=m.timesteps)
            .find(|t| rule.should_exit(*t, f64::from(scores[t - 1])))
            .expect("exits by T");
        assert_eq!(
            Some(exit_t),
            sample.learned_exit_timestep,
            "{}",
            sample.file
        );
    }
}

async fn classify(
    s: &seenn_serve::server::RunningServer,
    query: &str,
    png: Vec<u8>,
) -> (u16, Value) {
    let u = url(s, &format!("/v1/models/fashion-mnist/classify?{query}"));
    post_image(&client(), &u, png).await
}

/// Every golden sample over HTTP with `rule=learned`: the golden exit step, class and stop
/// probabilities (within the golden tolerance); sent all at once (batched in the engine) the
/// answers equal the serial ones; the exits are counted under `rule="learned"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn golden_learned_exits_through_the_server_serial_and_batched() {
    let (pkg, g, threshold) = learned_golden();
    let dir = tempfile::tempdir().expect("tmp");
    let s = start(config(dir.path())).await;
    let mut serial = Vec::new();
    for sample in &g.samples {
        let (status, body) =
            classify(&s, "rule=learned&explain=true", sample_bytes(&pkg, sample)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["exit_rule"], "learned");
        assert_eq!(body["threshold"].as_f64(), Some(threshold));
        assert!(body.get("alpha").is_none(), "{body}");
        assert_eq!(
            body["timesteps_used"].as_u64().map(|t| t as usize),
            sample.learned_exit_timestep,
            "{}",
            sample.file
        );
        assert_eq!(
            body["class_id"].as_u64().map(|c| c as usize),
            sample.learned_class_id,
            "{}",
            sample.file
        );
        let want = sample.learned_scores.as_ref().expect("learned_scores");
        let traj = body["trajectory"].as_array().expect("trajectory");
        assert_eq!(Some(traj.len()), sample.learned_exit_timestep);
        for (step, w) in traj.iter().zip(want) {
            let got = step["score"].as_f64().expect("score");
            assert!((got - w).abs() < 1e-4, "{}: {got} vs {w}", sample.file);
        }
        // `confidence` stays the max softmax probability, not the stop probability.
        let top = body["top_k"][0]["probability"].as_f64().expect("top-1");
        assert_eq!(body["confidence"].as_f64(), Some(top));
        serial.push(body);
    }
    let futures = g.samples.iter().map(|sample| {
        let png = sample_bytes(&pkg, sample);
        let s = &s;
        async move { classify(s, "rule=learned&explain=true", png).await }
    });
    let batched = futures::future::join_all(futures).await;
    for ((status, b), a) in batched.iter().zip(&serial) {
        assert_eq!(*status, 200);
        assert_eq!(b["timesteps_used"], a["timesteps_used"]);
        assert_eq!(b["class_id"], a["class_id"]);
        let (ta, tb) = (a["trajectory"].as_array(), b["trajectory"].as_array());
        for (x, y) in ta.into_iter().flatten().zip(tb.into_iter().flatten()) {
            let (x, y) = (x["score"].as_f64(), y["score"].as_f64());
            assert!(
                (x.unwrap_or(0.0) - y.unwrap_or(1.0)).abs() < 1e-5,
                "{x:?} vs {y:?}"
            );
        }
    }
    let text = metrics_text(&s).await;
    let exits = metric_value(
        &text,
        "seenn_exits_total",
        &[("model", "fashion-mnist"), ("rule", "learned")],
    );
    assert_eq!(
        exits,
        2.0 * g.samples.len() as f64,
        "every learned answer counted"
    );
    // A lower per-request threshold never exits later.
    let (_, low) = classify(
        &s,
        "rule=learned&threshold=0.5",
        sample_bytes(&pkg, &g.samples[0]),
    )
    .await;
    assert!(low["timesteps_used"].as_u64() <= serial[0]["timesteps_used"].as_u64());
    assert_eq!(low["threshold"].as_f64(), Some(0.5));
    s.shutdown().await;
}

/// Bad uses of the learned rule get 400s that say what is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn learned_rule_errors_name_what_is_accepted() {
    let (pkg, g, _) = learned_golden();
    let dir = tempfile::tempdir().expect("tmp");
    let s = start(config(dir.path())).await;
    let png = || sample_bytes(&pkg, &g.samples[0]);
    for (query, needle) in [
        (
            "rule=learned&threshold=1.5",
            "accepted: 0 <= threshold <= 1",
        ),
        (
            "rule=learned&threshold=-0.1",
            "accepted: 0 <= threshold <= 1",
        ),
        ("rule=learned&alpha=0.9", "rule learned takes threshold"),
        (
            "rule=confidence&threshold=0.9",
            "threshold applies to rule learned",
        ),
        ("rule=learned&threshold=abc", "is not a number in [0, 1]"),
    ] {
        let (status, body) = classify(&s, query, png()).await;
        assert_eq!(status, 400, "{query}: {body}");
        let msg = body["error"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{query}: {body}");
        assert_eq!(body["code"], "invalid_request", "{query}: {body}");
    }
    // The converted package has no exit.onnx.
    let qcfs = models_dir().join("fashion-mnist-qcfs");
    let qg = golden(&qcfs);
    let r = client()
        .post(url(
            &s,
            "/v1/models/fashion-mnist-qcfs/classify?rule=learned",
        ))
        .header("content-type", "image/png")
        .body(sample_bytes(&qcfs, &qg.samples[0]))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.expect("json");
    let text = body.to_string();
    assert!(
        text.contains("exit.onnx") && text.contains("accepted rules: confidence, fixed"),
        "{text}"
    );
    // The model listing says which models serve the learned rule.
    let models: Value = client()
        .get(url(&s, "/v1/models"))
        .send()
        .await
        .expect("models")
        .json()
        .await
        .expect("json");
    for m in models["models"].as_array().expect("models") {
        let has = m["name"] == "fashion-mnist";
        assert_eq!(m["has_learned"].as_bool(), Some(has), "{m}");
        assert_eq!(m["exit_policy"]["threshold"].is_number(), has, "{m}");
    }
    s.shutdown().await;
}

/// The admin makes `learned` the default rule and resolves targets through the learned threshold
/// sweep; default requests then run it, the gauges follow, and the policy survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_sets_the_learned_rule_its_threshold_and_targets() {
    let (pkg, g, default_threshold) = learned_golden();
    let cal = calibration(&pkg);
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = config_with_admin(dir.path());
    let s = start(cfg.clone()).await;

    let (status, v) = admin_put(&s, "fashion-mnist", json!({"rule": "learned"})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["rule"], "learned");
    assert_eq!(v["threshold"].as_f64(), Some(default_threshold));
    let row = cal.expected_at_threshold(default_threshold).expect("row");
    assert_eq!(
        v["expected_avg_timesteps"].as_f64(),
        Some(row.avg_timesteps)
    );

    // A target resolves through the threshold sweep (the rule stays learned).
    let target = 1.3;
    let want = cal
        .threshold_for_avg_timesteps(target)
        .expect("a threshold reaches 1.3");
    let (status, v) = admin_put(&s, "fashion-mnist", json!({"target_avg_timesteps": target})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["rule"], "learned");
    assert_eq!(v["threshold"].as_f64(), Some(want.threshold));
    assert!(v["expected_avg_timesteps"].as_f64().unwrap_or(9.0) <= target);
    let text = metrics_text(&s).await;
    assert_eq!(
        metric_value(&text, "seenn_exit_threshold", &[("model", "fashion-mnist")]),
        want.threshold
    );
    assert_eq!(
        metric_value(
            &text,
            "seenn_expected_avg_timesteps",
            &[("model", "fashion-mnist")]
        ),
        want.avg_timesteps
    );
    // max_accuracy_drop likewise.
    let want_drop = cal.threshold_for_accuracy_drop(0.002).expect("row");
    let (status, v) = admin_put(&s, "fashion-mnist", json!({"max_accuracy_drop": 0.002})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["threshold"].as_f64(), Some(want_drop.threshold));
    // An explicit threshold.
    let (status, v) = admin_put(&s, "fashion-mnist", json!({"threshold": 0.9})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["threshold"].as_f64(), Some(0.9));

    // Requests without options now run the learned rule at 0.9, on the default-policy series.
    let (status, body) = classify(&s, "", sample_bytes(&pkg, &g.samples[0])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["exit_rule"], "learned");
    assert_eq!(body["threshold"].as_f64(), Some(0.9));
    let text = metrics_text(&s).await;
    assert_eq!(
        metric_value(
            &text,
            "seenn_timesteps_used_count",
            &[
                ("model", "fashion-mnist"),
                ("rule", "learned"),
                ("policy", "default")
            ]
        ),
        1.0
    );

    // Bad updates.
    for (model, body, needle) in [
        (
            "fashion-mnist",
            json!({"threshold": 2.0}),
            "accepted: 0 <= threshold <= 1",
        ),
        (
            "fashion-mnist",
            json!({"threshold": 0.5, "target_avg_timesteps": 2.0}),
            "at most one of",
        ),
        (
            "fashion-mnist-qcfs",
            json!({"rule": "learned"}),
            "accepted rules: confidence, fixed",
        ),
        (
            "fashion-mnist-qcfs",
            json!({"threshold": 0.5}),
            "no learned exit rule",
        ),
    ] {
        let (status, v) = admin_put(&s, model, body.clone()).await;
        assert_eq!(status, 400, "{model} {body}: {v}");
        assert!(v.to_string().contains(needle), "{model} {body}: {v}");
    }
    s.shutdown().await;

    // The policy survives a restart.
    let s = start(cfg).await;
    let v = admin_get(&s, "fashion-mnist").await;
    assert_eq!(v["rule"], "learned");
    assert_eq!(v["threshold"].as_f64(), Some(0.9));
    s.shutdown().await;
}

/// gRPC Classify takes `threshold` and echoes it; the answer equals the golden learned exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_serves_the_learned_rule() {
    let (pkg, g, threshold) = learned_golden();
    let dir = tempfile::tempdir().expect("tmp");
    let s = start(config(dir.path())).await;
    let mut c = ClassifierClient::connect(format!("http://{}", s.grpc_addr))
        .await
        .expect("connect");
    for sample in g.samples.iter().take(8) {
        let req = pb::ClassifyRequest {
            input: Some(pb::classify_request::Input::Image(sample_bytes(
                &pkg, sample,
            ))),
            rule: "learned".into(),
            ..Default::default()
        };
        let r = c.classify(req).await.expect("classify").into_inner();
        assert_eq!(r.exit_rule, "learned");
        assert_eq!(r.threshold, Some(threshold));
        assert_eq!(
            Some(r.timesteps_used as usize),
            sample.learned_exit_timestep
        );
        assert_eq!(Some(r.class_id as usize), sample.learned_class_id);
    }
    let req = pb::ClassifyRequest {
        input: Some(pb::classify_request::Input::Image(sample_bytes(
            &pkg,
            &g.samples[0],
        ))),
        rule: "confidence".into(),
        threshold: Some(0.5),
        ..Default::default()
    };
    let e = c
        .classify(req)
        .await
        .expect_err("threshold needs rule learned");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let models = c
        .list_models(pb::ListModelsRequest {})
        .await
        .expect("list")
        .into_inner()
        .models;
    let fm = models
        .iter()
        .find(|m| m.name == "fashion-mnist")
        .expect("listed");
    assert!(fm.has_learned);
    assert_eq!(fm.threshold, Some(threshold));
    s.shutdown().await;
}

/// Adaptive α under the learned rule moves the threshold: down to the floor calibration allows
/// for `max_accuracy_drop` (the learned sweep) under an objective no server meets, back to the
/// configured threshold when calm; α itself is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adaptive_moves_the_learned_threshold_within_its_calibrated_floor() {
    let (pkg, g, _) = learned_golden();
    let cal = calibration(&pkg);
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = config_with_admin(dir.path());
    cfg.adaptive_interval_ms = 100;
    // One worker, so that the test's clients keep the engine busy on any number of cores.
    cfg.engine_workers = Some(1);
    let s = start(cfg).await;
    let current = || admin_get(&s, "fashion-mnist");
    let (status, v) = admin_put(
        &s,
        "fashion-mnist",
        json!({"rule": "learned", "threshold": 0.999,
               "adaptive": {"p99_ms": 0.001, "max_accuracy_drop": 0.01}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let alpha = v["alpha"].as_f64().expect("alpha");
    let floor = v["adaptive"]["floor_alpha"].as_f64().expect("floor");
    assert_eq!(v["adaptive"]["configured_alpha"].as_f64(), Some(0.999));
    let want_floor = cal
        .threshold_for_accuracy_drop(0.01)
        .expect("row")
        .threshold;
    assert_eq!(floor, want_floor.min(0.999));
    assert!(floor < 0.999, "{v}");
    let png = sample_bytes(&pkg, &g.samples[0]);
    let answers = load_until_dial_at_floor(
        &s,
        "/v1/models/fashion-mnist/classify",
        png.clone(),
        "threshold",
        floor,
        current,
    )
    .await;
    assert_shed_or_dial_at_least(&answers, "threshold", floor);
    assert!(answers
        .iter()
        .all(|(st, r)| *st == 429 || r["exit_rule"] == "learned"));
    assert_eq!(
        current().await["alpha"].as_f64(),
        Some(alpha),
        "α is not the learned rule's dial"
    );
    // No traffic is calm: the threshold climbs back to the configured one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while current().await["threshold"].as_f64() != Some(0.999)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(current().await["threshold"].as_f64(), Some(0.999));
    // Adaptive α refuses rules without a dial.
    let (status, v) = admin_put(&s, "fashion-mnist", json!({"rule": "fixed"})).await;
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("learned rule"), "{v}");
    s.shutdown().await;
}

/// `rule=policy` gets a dial too: the admin resolves a target through the policy's bias sweep,
/// and a negative bias scale sends the golden samples to fewer timesteps than the exported policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_moves_the_policy_along_its_bias_sweep() {
    let (pkg, g, _) = learned_golden();
    let cal = calibration(&pkg);
    let (_dir, s) = start_with_admin().await;
    let (status, v) = admin_put(&s, "fashion-mnist", json!({"rule": "policy"})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["bias_scale"].as_f64(), Some(0.0));
    let target = 2.6;
    let rows = &cal.policy.as_ref().expect("policy calibration").bias_sweep;
    let want = seenn_serve::model::manifest::for_avg_timesteps(rows, target).expect("row");
    let (status, v) = admin_put(&s, "fashion-mnist", json!({"target_avg_timesteps": target})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["rule"], "policy", "{v}");
    assert_eq!(v["bias_scale"].as_f64(), Some(want.bias_scale));
    assert_eq!(
        v["expected_avg_timesteps"].as_f64(),
        Some(want.avg_timesteps)
    );
    assert!(want.avg_timesteps <= target && want.bias_scale < 0.0, "{v}");
    // The most negative bias: every golden sample runs at most as long as the exported policy
    // says, and together fewer timesteps.
    let (status, v) = admin_put(&s, "fashion-mnist", json!({"bias_scale": -14.0})).await;
    assert_eq!(status, 200, "{v}");
    let (mut biased, mut exported) = (0, 0);
    for sample in &g.samples {
        let (status, r) = classify(&s, "", sample_bytes(&pkg, sample)).await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["exit_rule"], "policy");
        let t = r["timesteps_used"].as_u64().expect("t") as usize;
        let t0 = sample.policy_timesteps.expect("golden policy_timesteps");
        assert!(t <= t0, "{}: {t} > {t0}", sample.file);
        biased += t;
        exported += t0;
    }
    assert!(biased < exported, "{biased} vs {exported}");
    for (model, body, needle) in [
        (
            "fashion-mnist",
            json!({"bias_scale": "x"}),
            "malformed exit-policy body",
        ),
        (
            "fashion-mnist",
            json!({"bias_scale": 1.0, "max_accuracy_drop": 0.01}),
            "at most one of",
        ),
        (
            "fashion-mnist-qcfs",
            json!({"bias_scale": 1.0}),
            "no policy network",
        ),
    ] {
        let (status, v) = admin_put(&s, model, body.clone()).await;
        assert_eq!(status, 400, "{model} {body}: {v}");
        assert!(v.to_string().contains(needle), "{model} {body}: {v}");
    }
    s.shutdown().await;
}

/// Shadow runs under the learned rule: with `shadow_fraction` 1.0 every golden sample the learned
/// rule answers before T is followed to T, and `seenn_shadow_total{rule="learned"}` counts exactly
/// the agreements golden.json predicts (learned class against argmax of the full-T sum); the
/// expectation comes from the learned threshold sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shadow_runs_follow_the_learned_rule() {
    let (pkg, g, threshold) = learned_golden();
    let cal = calibration(&pkg);
    let (_dir, s) = start_with_admin().await;
    let (status, v) = admin_put(
        &s,
        "fashion-mnist",
        json!({"rule": "learned", "shadow_fraction": 1.0}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let want = cal
        .expected_shadow_agreement_learned(threshold)
        .expect("the learned sweep has agreement figures");
    let got = v["expected_shadow_agreement"]
        .as_f64()
        .expect("expectation");
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    let (mut early, mut agree) = (0.0, 0.0);
    let learned = [("model", "fashion-mnist"), ("rule", "learned")];
    for sample in &g.samples {
        let (status, r) = classify(&s, "", sample_bytes(&pkg, sample)).await;
        assert_eq!(status, 200, "{r}");
        let t = sample.learned_exit_timestep.expect("golden");
        if t < sample.logits.len() {
            let k = sample.logits[0].len();
            let sum: Vec<f64> = (0..k)
                .map(|c| sample.logits.iter().map(|l| f64::from(l[c])).sum())
                .collect();
            let (_, full, _) = seenn_serve::exit::score(&sum, 1.0);
            early += 1.0;
            agree += f64::from(u8::from(sample.learned_class_id == Some(full)));
            // One at a time, so no shadow is evicted by the next request.
            let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while metric_value(&metrics_text(&s).await, "seenn_shadow_total", &learned) < early {
                assert!(std::time::Instant::now() < until, "{}", sample.file);
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        }
    }
    assert!(
        early > 0.0,
        "some golden samples exit early under the learned rule"
    );
    let text = metrics_text(&s).await;
    let mut agreed = learned.to_vec();
    agreed.push(("agree", "true"));
    assert_eq!(metric_value(&text, "seenn_shadow_total", &learned), early);
    assert_eq!(metric_value(&text, "seenn_shadow_total", &agreed), agree);
    assert_eq!(
        metric_value(
            &text,
            "seenn_shadow_dropped_total",
            &[("model", "fashion-mnist")]
        ),
        0.0
    );
    s.shutdown().await;
}
