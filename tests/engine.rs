//! The engine in-process: requests whose client is gone or whose deadline passed leave without
//! computing, and the metrics show it.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use seenn_serve::engine::{Ablation, Batching, EngineConfig, Job, Outcome, RequestRule};
use seenn_serve::error::Error;
use seenn_serve::metrics::Metrics;
use seenn_serve::registry::{self as model, LoadOptions};
use seenn_serve::runtime::{self, Device, SessionOptions};

fn input(pkg: &std::path::Path, m: &seenn_serve::model::manifest::Manifest) -> Vec<f32> {
    let png = sample_bytes(pkg, &golden(pkg).samples[0]);
    seenn_serve::preprocess::image_to_tensor(&png, None, &m.input, 1 << 24).expect("tensor")
}

/// Load options for one CPU session thread and a continuous-batching engine.
fn cpu_options(
    env: &ort::environment::Environment,
    max_batch: usize,
    max_queue: usize,
    ablations: Vec<Ablation>,
    metrics: Arc<Metrics>,
) -> LoadOptions<'_> {
    LoadOptions {
        env,
        session: SessionOptions {
            device: Device::Cpu,
            intra_threads: 1,
        },
        engine: EngineConfig {
            max_batch,
            max_queue,
            batching: Batching::Continuous,
            ablations,
        },
        metrics,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_clients_and_passed_deadlines_stop_the_work() {
    let (env, _) = runtime::init(None).expect("ORT");
    let pkg = policy_package();
    let metrics = Arc::new(Metrics::new(4, 8).expect("metrics"));
    let opts = cpu_options(&env, 8, 16, Vec::new(), metrics.clone());
    let m = model::load_one(&pkg, &opts).expect("loads");
    let x = input(&pkg, &m.manifest);
    let steps = || {
        metrics
            .steps_total
            .with_label_values(&["fashion-mnist"])
            .get()
    };
    let cancelled = |r: &str| {
        metrics
            .cancelled_total
            .with_label_values(&["fashion-mnist", r])
            .get()
    };
    let job = |reply, deadline| Job {
        input: x.clone(),
        rule: RequestRule::Fixed { timesteps: 4 },
        explain: false,
        deadline,
        enqueued: Instant::now(),
        reply,
        progress: None,
    };

    // A normal request runs its 4 steps.
    let (tx, rx) = tokio::sync::oneshot::channel();
    m.engine
        .submit(job(tx, Instant::now() + Duration::from_secs(10)))
        .expect("submit");
    assert_eq!(rx.await.expect("reply").expect("ok").timesteps_used, 4);
    assert_eq!(steps(), 4.0);

    // The client went away before the engine admitted it: nothing is computed.
    let (tx, rx) = tokio::sync::oneshot::channel();
    drop(rx);
    m.engine
        .submit(job(tx, Instant::now() + Duration::from_secs(10)))
        .expect("submit");
    // A deadline that has already passed: answered with DeadlineExceeded, nothing computed.
    let (tx, rx) = tokio::sync::oneshot::channel();
    m.engine.submit(job(tx, Instant::now())).expect("submit");
    let err = rx.await.expect("reply").expect_err("deadline");
    assert!(matches!(err, Error::DeadlineExceeded(_)), "{err:?}");
    assert_eq!(cancelled("client_gone"), 1);
    assert_eq!(cancelled("deadline"), 1);
    assert_eq!(steps(), 4.0, "no step ran for the cancelled requests");

    // A streaming client that hangs up after the first timestep: the request leaves the batch at
    // the next step instead of running all of its T = 32 steps (the converted model).
    let qcfs = models_dir().join("fashion-mnist-qcfs");
    let long = model::load_one(&qcfs, &opts).expect("loads");
    let t_max = long.manifest.timesteps;
    assert!(t_max >= 16);
    let x = input(&qcfs, &long.manifest);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel();
    long.engine
        .submit(Job {
            input: x,
            rule: RequestRule::Fixed { timesteps: t_max },
            explain: false,
            deadline: Instant::now() + Duration::from_secs(10),
            enqueued: Instant::now(),
            reply: tx,
            progress: Some(ptx),
        })
        .expect("submit");
    assert_eq!(prx.recv().await.expect("first step").t, 1);
    drop(prx);
    drop(rx);
    let gone = || {
        metrics
            .cancelled_total
            .with_label_values(&["fashion-mnist-qcfs", "client_gone"])
            .get()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while gone() < 1 {
        assert!(
            Instant::now() < deadline,
            "the engine never noticed the client left"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let ran = metrics
        .steps_total
        .with_label_values(&["fashion-mnist-qcfs"])
        .get();
    assert!(
        ran < t_max as f64,
        "the abandoned request ran {ran} of {t_max} steps"
    );
}

/// The measurement switches (`--ablate`) do the same computation the slow way: every golden sample
/// gets exactly the same logits-derived answer (class, timesteps, probabilities) with the encoder
/// run at every step and with membranes copied between steps, batched together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ablations_compute_the_same_answers() {
    let (env, _) = runtime::init(None).expect("ORT");
    let pkg = policy_package();
    let g = golden(&pkg);
    let mut answers: Vec<Vec<(usize, usize, Vec<f64>)>> = Vec::new();
    for ablations in [
        vec![],
        vec![Ablation::EncoderEveryStep],
        vec![Ablation::CopyMembranes],
    ] {
        let metrics = Arc::new(Metrics::new(4, 8).expect("metrics"));
        let opts = cpu_options(&env, 16, 128, ablations, metrics);
        let m = model::load_one(&pkg, &opts).expect("loads");
        let mut replies = Vec::new();
        for s in &g.samples {
            let x = seenn_serve::preprocess::image_to_tensor(
                &sample_bytes(&pkg, s),
                None,
                &m.manifest.input,
                1 << 24,
            )
            .expect("tensor");
            let (tx, rx) = tokio::sync::oneshot::channel();
            m.engine
                .submit(Job {
                    input: x,
                    rule: RequestRule::Confidence {
                        alpha: 0.94,
                        max_timesteps: 4,
                    },
                    explain: false,
                    deadline: Instant::now() + Duration::from_secs(30),
                    enqueued: Instant::now(),
                    reply: tx,
                    progress: None,
                })
                .expect("submit");
            replies.push(rx);
        }
        let mut got = Vec::new();
        for rx in replies {
            let o: Outcome = rx.await.expect("reply").expect("ok");
            got.push((o.class_id, o.timesteps_used, o.probabilities));
        }
        answers.push(got);
    }
    let base = &answers[0];
    assert!(
        base.iter().any(|a| a.1 > 1),
        "some samples need more than one step"
    );
    for (k, other) in answers.iter().enumerate().skip(1) {
        for (i, (a, b)) in base.iter().zip(other).enumerate() {
            assert_eq!((a.0, a.1), (b.0, b.1), "ablation {k}, sample {i}");
            for (p, q) in a.2.iter().zip(&b.2) {
                assert!((p - q).abs() < 1e-5, "ablation {k}, sample {i}: {p} vs {q}");
            }
        }
    }
}
