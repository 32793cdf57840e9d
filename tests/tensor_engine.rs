//! Tensor inputs (package format 3) in the engine, in-process: per_step frames written into each
//! row before every step, the `last` aggregation, fewer frames than T, and rows independent of
//! their batch, against the golden logits ONNX Runtime computed for each sample alone.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use seenn_serve::engine::{Job, Outcome, RequestRule, SlotMemory};
use seenn_serve::metrics::Metrics;
use seenn_serve::model::manifest::Manifest;
use seenn_serve::registry::{self, LoadedModel};
use seenn_serve::runtime::{self, Device};

fn load(pkg: &Path, max_batch: usize, memory: SlotMemory) -> LoadedModel {
    let (env, _) = runtime::init(None).expect("ONNX Runtime");
    let metrics = Arc::new(Metrics::new(8, max_batch).expect("metrics"));
    let mut opts = cpu_options(&env, max_batch, 64, Vec::new(), metrics);
    opts.engine.slot_memory = memory;
    registry::load_one(pkg, &opts).expect("the package loads")
}

fn inputs(pkg: &Path, m: &Manifest) -> Vec<Vec<f32>> {
    golden(pkg)
        .samples
        .iter()
        .map(|s| s.read_input(pkg, m).expect("sample input"))
        .collect()
}

async fn run(m: &LoadedModel, input: Vec<f32>, rule: RequestRule) -> Outcome {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut job = Job::new(input, rule, Instant::now() + Duration::from_secs(30), tx);
    job.explain = true;
    m.engine.submit(job).expect("submit");
    rx.await.expect("reply").expect("outcome")
}

/// The outcome's trajectory against the golden logits: the probabilities of softmax(Z_t / T) at
/// every step, and the class.
fn assert_matches_golden(o: &Outcome, logits: &[Vec<f32>], m: &Manifest, what: &str) {
    let aggs = aggregates(logits, m.exit.aggregation);
    assert!(o.trajectory.len() <= aggs.len(), "{what}");
    for (trace, z) in o.trajectory.iter().zip(&aggs) {
        let (score, class, probs) = seenn_serve::exit::score(z, m.exit.temperature);
        assert_eq!(trace.class_id, class, "{what} t={}", trace.t);
        assert!((trace.score - score).abs() < 1e-4, "{what} t={}", trace.t);
        for (a, b) in trace.probabilities.iter().zip(&probs) {
            assert!((f64::from(*a) - b).abs() < 1e-4, "{what} t={}", trace.t);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensor_packages_reproduce_their_golden_logits_and_exits() {
    for pkg in [frames_package(), static_tensor_package()] {
        for memory in [SlotMemory::Host, SlotMemory::Device(Device::Cpu)] {
            let m = load(&pkg, 8, memory.clone());
            let mf = m.manifest.clone();
            let g = golden(&pkg);
            let xs = inputs(&pkg, &mf);
            for (s, x) in g.samples.iter().zip(&xs) {
                let what = format!("{} {} ({memory:?})", mf.name, s.file);
                // Every step of the sample.
                let full = run(
                    &m,
                    x.clone(),
                    RequestRule::Fixed {
                        timesteps: mf.timesteps,
                    },
                )
                .await;
                assert_eq!(full.timesteps_used, s.logits.len(), "{what}");
                assert_matches_golden(&full, &s.logits, &mf, &what);
                // The confidence rule at the golden α: the same exit and class as the trainer's.
                let conf = run(
                    &m,
                    x.clone(),
                    RequestRule::Confidence {
                        alpha: g.alpha,
                        max_timesteps: mf.timesteps,
                    },
                )
                .await;
                assert_eq!(conf.timesteps_used, s.exit_timestep, "{what}");
                assert_eq!(conf.class_id, s.class_id, "{what}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_do_not_depend_on_their_batch_and_frames_follow_each_row() {
    // All samples at once, each at its own step: a per_step row reads its own frame k at its
    // own step k whoever shares the batch; the answers equal the runs alone.
    let pkg = frames_package();
    let m = load(&pkg, 8, SlotMemory::Host);
    let mf = m.manifest.clone();
    let g = golden(&pkg);
    let xs = inputs(&pkg, &mf);
    let rule = RequestRule::Fixed {
        timesteps: mf.timesteps,
    };
    let mut alone = Vec::new();
    for x in &xs {
        alone.push(run(&m, x.clone(), rule).await);
    }
    // Staggered: later rows join while earlier ones are mid-run (the queue admits at every step).
    let together = futures::future::join_all(xs.iter().enumerate().map(|(i, x)| {
        let m = &m;
        let x = x.clone();
        async move {
            tokio::time::sleep(Duration::from_micros(300 * i as u64)).await;
            run(m, x, rule).await
        }
    }))
    .await;
    for ((a, b), s) in alone.iter().zip(&together).zip(&g.samples) {
        assert_eq!(a.class_id, b.class_id, "{}", s.file);
        for (ta, tb) in a.trajectory.iter().zip(&b.trajectory) {
            assert_eq!(ta.probabilities, tb.probabilities, "{} t={}", s.file, ta.t);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_fewer_frames_runs_at_most_that_many_steps() {
    let pkg = frames_package();
    let m = load(&pkg, 4, SlotMemory::Host);
    let mf = m.manifest.clone();
    let g = golden(&pkg);
    let x = inputs(&pkg, &mf).remove(0);
    let frame = mf.input.len();
    for frames in [1, 3] {
        let o = run(
            &m,
            x[..frames * frame].to_vec(),
            RequestRule::Fixed {
                timesteps: mf.timesteps,
            },
        )
        .await;
        assert_eq!(o.timesteps_used, frames);
        assert_eq!(o.rule.max_timesteps(), frames);
        assert_matches_golden(&o, &g.samples[0].logits[..frames], &mf, "prefix");
        let o = run(
            &m,
            x[..frames * frame].to_vec(),
            RequestRule::Confidence {
                alpha: 1.0,
                max_timesteps: mf.timesteps,
            },
        )
        .await;
        assert_eq!(o.timesteps_used, frames, "α = 1 runs every frame it has");
    }
    // Values that are not whole frames, or more frames than T, are refused in the engine too.
    for n in [frame - 1, frame * (mf.timesteps + 1)] {
        let (tx, rx) = tokio::sync::oneshot::channel();
        m.engine
            .submit(Job::new(
                vec![0.0; n],
                RequestRule::Fixed { timesteps: 1 },
                Instant::now() + Duration::from_secs(10),
                tx,
            ))
            .expect("submit");
        let e = rx.await.expect("reply").expect_err("refused");
        assert!(e.to_string().contains("[t, 2, 8, 8]"), "{e}");
    }
    // The engine still serves.
    let o = run(&m, x, RequestRule::Fixed { timesteps: 2 }).await;
    assert_eq!(o.timesteps_used, 2);
}

#[test]
fn the_reference_run_reproduces_the_golden_logits() {
    let (env, _) = runtime::init(None).expect("ONNX Runtime");
    let opts = seenn_serve::runtime::SessionOptions {
        device: Device::Cpu,
        intra_threads: 1,
    };
    for pkg in [frames_package(), static_tensor_package()] {
        let mf = seenn_serve::model::read_manifest(&pkg).expect("manifest");
        let mut s = seenn_serve::graphs::load_sessions(&pkg, &mf, &env, &opts).expect("sessions");
        for (sample, x) in golden(&pkg).samples.iter().zip(inputs(&pkg, &mf)) {
            let logits = seenn_serve::graphs::run_single(&mut s, &mf, &x, sample.logits.len())
                .expect("runs");
            for (a, b) in logits.iter().flatten().zip(sample.logits.iter().flatten()) {
                assert!((a - b).abs() < 1e-4, "{} {a} vs {b}", sample.file);
            }
        }
    }
}

/// A manifest whose tensor shape disagrees with step.onnx does not load: the error names the file
/// and both shapes.
#[test]
fn a_shape_that_disagrees_with_the_graph_is_refused_at_load() {
    let dir = tempfile::tempdir().expect("tmp");
    let pkg = dir.path().join("lif-frames");
    std::fs::create_dir(&pkg).expect("mkdir");
    std::fs::copy(frames_package().join("step.onnx"), pkg.join("step.onnx")).expect("copy");
    let text = std::fs::read_to_string(frames_package().join("manifest.json")).expect("manifest");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["input"]["shape"] = serde_json::json!([2, 8, 9]);
    std::fs::write(pkg.join("manifest.json"), v.to_string()).expect("write");
    let (env, _) = runtime::init(None).expect("ONNX Runtime");
    let metrics = Arc::new(Metrics::new(8, 2).expect("metrics"));
    let opts = cpu_options(&env, 2, 4, Vec::new(), metrics);
    let e = match registry::load_one(&pkg, &opts) {
        Ok(_) => panic!("a shape the graph does not take loaded"),
        Err(e) => seenn_serve::error::chain(&e),
    };
    assert!(e.contains("step.onnx"), "{e}");
    assert!(e.contains("[batch, 2, 8, 9]"), "{e}");
}
