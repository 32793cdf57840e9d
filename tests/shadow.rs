//! Shadow runs (the exit policy's `shadow_fraction`): the real server counts, for the golden
//! samples, exactly the agreements golden.json's logits predict; shadows are never live requests;
//! they give their rows to newcomers and never start while requests wait; bad fractions get 400.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use seenn_serve::api::grpc::pb;
use seenn_serve::api::grpc::pb::admin_client::AdminClient;
use seenn_serve::engine::{Job, Outcome, RequestRule};
use seenn_serve::metrics::Metrics;
use seenn_serve::registry::{self as model, LoadedModel};
use seenn_serve::runtime;
use serde_json::{json, Value};

/// Where the confidence rule at `alpha` exits on a golden sample's logits (the trainer's numbers),
/// the class it answers there, and the class after all T steps.
fn expected_exit(s: &GoldenSample, alpha: f64) -> (usize, usize, usize) {
    let t_max = s.logits.len();
    let mut sum = vec![0f64; s.logits[0].len()];
    let mut exit = None;
    for (t, logits) in s.logits.iter().enumerate() {
        for (a, z) in sum.iter_mut().zip(logits) {
            *a += f64::from(*z);
        }
        let (score, class, _) = seenn_serve::exit::score(&sum, 1.0);
        if exit.is_none() && (score > alpha || t + 1 == t_max) {
            exit = Some((t + 1, class));
        }
    }
    let (_, full, _) = seenn_serve::exit::score(&sum, 1.0);
    let (t, class) = exit.unwrap_or((t_max, full));
    (t, class, full)
}

async fn classify(s: &seenn_serve::server::RunningServer, model: &str, png: Vec<u8>) -> Value {
    let r = client()
        .post(url(s, &format!("/v1/models/{model}/classify")))
        .header("content-type", "image/png")
        .body(png)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    r.json().await.expect("json")
}

fn shadow_counts(text: &str, model: &str) -> (f64, f64, f64) {
    let agree = |a: &str| {
        metric_value(
            text,
            "seenn_shadow_total",
            &[("model", model), ("rule", "confidence"), ("agree", a)],
        )
    };
    let dropped = metric_value(text, "seenn_shadow_dropped_total", &[("model", model)]);
    (agree("true"), agree("false"), dropped)
}

/// With `shadow_fraction` 1.0 every golden sample that exits before T is followed to T, and the
/// counters equal what golden.json's per-step logits predict, agreements and disagreements alike
/// (α = 0.5 makes a few early answers differ from the full-T class). Shadows add nothing to the
/// request metrics; their steps are counted on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shadow_counts_equal_what_the_golden_logits_predict() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = start(config_with_admin(dir.path())).await;
    let pkg = policy_package();
    let g = golden(&pkg);
    let m = "fashion-mnist";
    let t_max = g.samples[0].logits.len();
    let alpha = 0.5;

    let (status, view) = admin_put(&s, m, json!({"alpha": alpha, "shadow_fraction": 1.0})).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["shadow_fraction"], 1.0);
    let expected_agreement = view["expected_shadow_agreement"]
        .as_f64()
        .expect("calibration has agreement figures");
    let text = metrics_text(&s).await;
    let gauge = metric_value(
        &text,
        "seenn_shadow_expected_agreement",
        &[("model", m), ("rule", "confidence")],
    );
    assert!(
        (gauge - expected_agreement).abs() < 1e-12,
        "the gauge the alert compares with is the view's: {gauge} vs {expected_agreement}"
    );
    let saved =
        std::fs::read_to_string(dir.path().join("state/exit-policies.json")).expect("state");
    assert!(saved.contains("\"shadow_fraction\": 1.0"), "{saved}");

    let (mut early, mut agree, mut steps, mut shadow_steps) = (0.0, 0.0, 0.0, 0.0);
    for sample in &g.samples {
        let (t, class, full) = expected_exit(sample, alpha);
        let body = classify(&s, m, sample_bytes(&pkg, sample)).await;
        assert_eq!(body["timesteps_used"], t, "{}: {body}", sample.file);
        assert_eq!(body["class_id"], class, "{}: {body}", sample.file);
        steps += t as f64;
        if t < t_max {
            early += 1.0;
            agree += f64::from(u8::from(class == full));
            shadow_steps += (t_max - t) as f64;
            // One at a time: the next request must not find this shadow still in its row.
            let until = Instant::now() + Duration::from_secs(10);
            loop {
                let (a, d, dropped) = shadow_counts(&metrics_text(&s).await, m);
                if a + d + dropped >= early {
                    break;
                }
                assert!(
                    Instant::now() < until,
                    "shadow of {} never finished",
                    sample.file
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
    assert!(
        early > agree && agree > 0.0,
        "the samples must show both outcomes at alpha {alpha}: {agree} of {early}"
    );
    let text = metrics_text(&s).await;
    assert_eq!(shadow_counts(&text, m), (agree, early - agree, 0.0));
    let n = g.samples.len() as f64;
    let model = [("model", m)];
    assert_eq!(metric_value(&text, "seenn_timesteps_used_count", &model), n);
    assert_eq!(
        metric_value(&text, "seenn_timesteps_used_sum", &model),
        steps
    );
    assert_eq!(
        metric_value(&text, "seenn_request_steps_total", &model),
        steps
    );
    assert_eq!(
        metric_value(&text, "seenn_shadow_steps_total", &model),
        shadow_steps
    );
    assert_eq!(metric_value(&text, "seenn_active_requests", &model), 0.0);
    assert_eq!(metric_value(&text, "seenn_shadow_rows", &model), 0.0);

    // Requests with their own rule or α are never shadowed.
    let r = client()
        .post(url(&s, &format!("/v1/models/{m}/classify?alpha=0.5")))
        .header("content-type", "image/png")
        .body(sample_bytes(&pkg, &g.samples[0]))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (a, d, dropped) = shadow_counts(&metrics_text(&s).await, m);
    assert_eq!(
        a + d + dropped,
        early,
        "a custom-policy request was sampled"
    );
    s.shutdown().await;
}

/// `seenn_active_requests` never counts a shadow: after every answer it is back to 0 while the
/// shadows of those answers still run (the converted model's T = 32 leaves them many steps), and
/// live answers under shadow load are the ones without. Out-of-range fractions get 400 and change
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shadows_are_not_live_requests_and_bad_fractions_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = config_with_admin(dir.path());
    cfg.max_batch = 16;
    cfg.max_shadow_rows = Some(8);
    let s = start(cfg).await;
    let m = "fashion-mnist-qcfs";
    let pkg = models_dir().join(m);
    let g = golden(&pkg);
    let pngs: Vec<Vec<u8>> = g.samples.iter().map(|x| sample_bytes(&pkg, x)).collect();

    for bad in [json!(1.5), json!(-0.01), json!(1e300)] {
        let (status, body) = admin_put(&s, m, json!({"shadow_fraction": bad})).await;
        assert_eq!(status, 400, "{bad}: {body}");
        let msg = body["error"].as_str().expect("error");
        assert!(msg.contains("0 <= shadow_fraction <= 1"), "{msg}");
    }
    let (status, body) = admin_put(&s, m, json!({"shadow_fraction": "all"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("shadow_fraction"),
        "{body}"
    );
    let view: Value = client()
        .get(url(&s, &format!("/v1/models/{m}")))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(view["exit_policy"]["shadow_fraction"], 0.0, "{view}");
    // The same over gRPC Admin: INVALID_ARGUMENT out of range, the view shows what was set.
    let mut admin = AdminClient::connect(format!("http://{}", s.grpc_addr))
        .await
        .expect("connect");
    let authed = |fraction: f64| {
        let mut req = tonic::Request::new(pb::SetExitPolicyRequest {
            model: m.into(),
            shadow_fraction: Some(fraction),
            ..Default::default()
        });
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {ADMIN_TOKEN}").parse().expect("meta"),
        );
        req
    };
    let e = admin.set_exit_policy(authed(2.0)).await.expect_err("2.0");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("0 <= shadow_fraction <= 1"), "{e:?}");
    let r = admin
        .set_exit_policy(authed(0.25))
        .await
        .expect("set")
        .into_inner();
    assert_eq!(r.shadow_fraction, 0.25);
    let (status, _) = admin_put(&s, m, json!({"shadow_fraction": 0})).await;
    assert_eq!(status, 200);

    // Without shadows: the reference answers, 8 at a time.
    let burst = |s: Arc<seenn_serve::server::RunningServer>, round: usize| {
        let pngs = pngs.clone();
        async move {
            let mut handles = Vec::new();
            for (i, png) in pngs.iter().enumerate().skip(round * 8).take(8) {
                let (s, png) = (s.clone(), png.clone());
                handles.push(tokio::spawn(async move { (i, classify(&s, m, png).await) }));
            }
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await.expect("task"));
            }
            out
        }
    };
    let s = Arc::new(s);
    let rounds = pngs.len().div_ceil(8);
    let mut reference = vec![Value::Null; pngs.len()];
    for round in 0..rounds {
        for (i, b) in burst(s.clone(), round).await {
            reference[i] = b;
        }
    }
    let (status, _) = admin_put(&s, m, json!({"shadow_fraction": 1.0})).await;
    assert_eq!(status, 200);
    let mut seen_shadows = 0;
    for round in 0..rounds {
        for (i, b) in burst(s.clone(), round).await {
            assert_eq!(b["class_id"], reference[i]["class_id"], "sample {i}");
            assert_eq!(
                b["timesteps_used"], reference[i]["timesteps_used"],
                "sample {i}"
            );
            let (a, c) = (
                b["confidence"].as_f64().expect("c"),
                reference[i]["confidence"].as_f64().expect("c"),
            );
            assert!((a - c).abs() < 1e-5, "sample {i}: {a} vs {c}");
        }
        // Every request of the burst has its answer: none is live any more.
        let text = metrics_text(&s).await;
        let model = [("model", m)];
        assert_eq!(
            metric_value(&text, "seenn_active_requests", &model),
            0.0,
            "round {round}: a shadow counted as an active request"
        );
        seen_shadows += usize::from(metric_value(&text, "seenn_shadow_rows", &model) > 0.0);
    }
    assert!(
        seen_shadows > 0,
        "no shadow was still running after any burst: the check above checked nothing"
    );
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics_text(&s).await;
        if metric_value(&text, "seenn_shadow_rows", &[("model", m)]) == 0.0 {
            let (a, d, dropped) = shadow_counts(&text, m);
            assert!(a + d > 0.0, "shadows ran: {a} {d} {dropped}");
            break;
        }
        assert!(Instant::now() < until, "shadow rows never drained");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    match Arc::try_unwrap(s) {
        Ok(s) => s.shutdown().await,
        Err(_) => panic!("server still shared"),
    }
}

fn submit(
    m: &LoadedModel,
    x: &[f32],
    shadow_fraction: f64,
) -> tokio::sync::oneshot::Receiver<Result<Outcome, seenn_serve::error::Error>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    m.engine
        .submit(Job {
            default_policy: true,
            shadow_fraction,
            ..Job::new(
                x.to_vec(),
                RequestRule::Confidence {
                    alpha: m.manifest.exit.default_alpha,
                    max_timesteps: m.manifest.timesteps,
                },
                Instant::now() + Duration::from_secs(60),
                tx,
            )
        })
        .expect("submit");
    rx
}

/// Priority, on one worker with one row: a request that arrives while a shadow runs takes the
/// shadow's row at once (the shadow is dropped), and while requests wait in the queue no shadow
/// gets a step. The live answers are bit for bit the ones without shadows, and
/// every sampled shadow is either counted or dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_requests_take_shadow_rows_and_waiting_requests_stop_shadows() {
    let (env, _) = runtime::init(None).expect("ORT");
    let pkg = models_dir().join("fashion-mnist-qcfs");
    let metrics = Arc::new(Metrics::new(32, 1).expect("metrics"));
    let m = model::load_one(&pkg, &cpu_options(&env, 1, 64, Vec::new(), metrics.clone()))
        .expect("loads");
    let name = m.manifest.name.clone();
    let t_max = m.manifest.timesteps;
    let g = golden(&pkg);
    let inputs: Vec<Vec<f32>> = g
        .samples
        .iter()
        .map(|s| {
            seenn_serve::preprocess::image_to_tensor(
                &sample_bytes(&pkg, s),
                None,
                &m.manifest.input,
                1 << 24,
            )
            .expect("tensor")
        })
        .collect();
    let counts = || {
        let agree = |a: &str| {
            metrics
                .shadow_total
                .with_label_values(&[&name, "confidence", a])
                .get()
        };
        let dropped = metrics.shadow_dropped.with_label_values(&[&name]).get();
        (agree("true") + agree("false"), dropped)
    };
    let active = || metrics.active_requests.with_label_values(&[&name]).get();
    let wait_accounted = |n: u64| async move {
        let until = Instant::now() + Duration::from_secs(10);
        while counts().0 + counts().1 < n {
            assert!(
                Instant::now() < until,
                "shadows unaccounted: {:?} of {n}",
                counts()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };

    // The reference: one at a time, no shadows.
    let mut reference = Vec::new();
    for x in &inputs[..16] {
        let o = submit(&m, x, 0.0).await.expect("reply").expect("ok");
        reference.push((o.class_id, o.timesteps_used, o.confidence));
    }
    assert_eq!(counts(), (0, 0));

    // Back to back: each request is sent the moment the previous one answered, while that one's
    // shadow (up to 31 steps left) still holds the only row.
    let mut early = 0;
    for (i, x) in inputs[..16].iter().enumerate() {
        let o = submit(&m, x, 1.0).await.expect("reply").expect("ok");
        assert_eq!(
            (o.class_id, o.timesteps_used, o.confidence),
            reference[i],
            "sample {i}: a live answer changed under shadow load"
        );
        assert_eq!(active(), 0, "sample {i}: the shadow counted as active");
        early += u64::from(o.timesteps_used < t_max);
    }
    assert!(early >= 8, "too few early exits to test with: {early}");
    wait_accounted(early).await;
    let (ran, dropped) = counts();
    assert_eq!(ran + dropped, early);
    assert!(
        dropped >= 1,
        "no newcomer ever took a shadow's row ({ran} shadows ran, none dropped)"
    );

    // Sixteen at once: while requests wait, no shadow holds the row or gets a step; only the last
    // request's shadow can run.
    let shadow_steps = || metrics.shadow_steps.with_label_values(&[&name]).get();
    let steps_before = shadow_steps();
    let before = counts();
    let replies: Vec<_> = inputs[16..32].iter().map(|x| submit(&m, x, 1.0)).collect();
    let mut early = 0;
    for rx in replies {
        early += u64::from(rx.await.expect("reply").expect("ok").timesteps_used < t_max);
    }
    wait_accounted(before.0 + before.1 + early).await;
    let ran = counts().0 - before.0;
    assert!(
        ran <= 1,
        "{ran} shadows ran although requests were waiting behind all but the last"
    );
    assert!(
        shadow_steps() - steps_before < t_max as u64,
        "shadow steps ran while requests waited: {}",
        shadow_steps() - steps_before
    );
    assert_eq!(metrics.shadow_rows.with_label_values(&[&name]).get(), 0);
}
