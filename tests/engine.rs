//! The engine in-process: requests whose client is gone or whose deadline passed leave without
//! computing, and the metrics show it.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use seenn_serve::engine::{Ablation, Job, Outcome, RequestRule, SlotMemory};
use seenn_serve::error::Error;
use seenn_serve::metrics::Metrics;
use seenn_serve::registry::{self as model, LoadOptions};
use seenn_serve::runtime::{self, Device, SessionOptions};

fn input(pkg: &std::path::Path, m: &seenn_serve::model::manifest::Manifest) -> Vec<f32> {
    let png = sample_bytes(pkg, &golden(pkg).samples[0]);
    seenn_serve::preprocess::image_to_tensor(&png, None, &m.input, 1 << 24).expect("tensor")
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
    let job = |reply, deadline| {
        Job::new(
            x.clone(),
            RequestRule::Fixed { timesteps: 4 },
            deadline,
            reply,
        )
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
    // A deadline that has already passed: answered with DeadlineExceeded (before the first
    // step there is no prediction to answer with), nothing computed.
    let (tx, rx) = tokio::sync::oneshot::channel();
    m.engine.submit(job(tx, Instant::now())).expect("submit");
    let err = rx.await.expect("reply").expect_err("deadline");
    assert!(matches!(err, Error::DeadlineExceeded(_)), "{err:?}");
    assert_eq!(cancelled("client_gone"), 1);
    assert_eq!(cancelled("deadline"), 1);
    assert_eq!(steps(), 4.0, "no step ran for the cancelled requests");

    // A streaming client that hangs up after the first timestep: the request leaves the batch at
    // the next step instead of running all of its T = 32 steps (the converted model). Seven
    // requests that run all 32 steps share its batch, so the rest of its steps take long enough
    // that hanging up always comes first, however the threads are scheduled (alone, its 31 steps
    // can finish before this task runs again on a loaded machine).
    let qcfs = models_dir().join("fashion-mnist-qcfs");
    let long = model::load_one(&qcfs, &opts).expect("loads");
    let t_max = long.manifest.timesteps;
    assert!(t_max >= 16);
    let x = input(&qcfs, &long.manifest);
    let mut fillers = Vec::new();
    for _ in 0..7 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        long.engine
            .submit(Job::new(
                x.clone(),
                RequestRule::Fixed { timesteps: t_max },
                Instant::now() + Duration::from_secs(30),
                tx,
            ))
            .expect("submit");
        fillers.push(rx);
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel();
    long.engine
        .submit(Job {
            progress: Some(ptx),
            ..Job::new(
                x,
                RequestRule::Fixed { timesteps: t_max },
                Instant::now() + Duration::from_secs(10),
                tx,
            )
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
    // Counted as gone only if it left before its last step; the others ran to T.
    assert_eq!(gone(), 1);
    for rx in fillers {
        let out = rx.await.expect("reply").expect("ok");
        assert_eq!(out.timesteps_used, t_max);
    }
    assert_eq!(gone(), 1);
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
                .submit(Job::new(
                    x,
                    RequestRule::Confidence {
                        alpha: 0.94,
                        max_timesteps: 4,
                    },
                    Instant::now() + Duration::from_secs(30),
                    tx,
                ))
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

/// Options with `workers` engine workers (one ONNX Runtime thread each).
fn worker_options(
    env: &ort::environment::Environment,
    max_batch: usize,
    max_queue: usize,
    workers: usize,
    metrics: Arc<Metrics>,
) -> LoadOptions<'_> {
    let mut o = cpu_options(env, max_batch, max_queue, Vec::new(), metrics);
    o.engine.workers = workers;
    o
}

/// The converted model (T = 32) with `workers` workers of `max_batch` rows under `width`, a
/// queue of `max_queue`, its metrics, and one of its golden inputs.
fn qcfs_engine(
    max_batch: usize,
    max_queue: usize,
    workers: usize,
    width: seenn_serve::engine::BatchWidth,
) -> (seenn_serve::registry::LoadedModel, Arc<Metrics>, Vec<f32>) {
    let (env, _) = runtime::init(None).expect("ORT");
    let qcfs = models_dir().join("fashion-mnist-qcfs");
    let metrics = Arc::new(Metrics::new(32, max_batch).expect("metrics"));
    let mut opts = worker_options(&env, max_batch, max_queue, workers, metrics.clone());
    opts.engine.width = width;
    let m = model::load_one(&qcfs, &opts).expect("loads");
    let x = input(&qcfs, &m.manifest);
    (m, metrics, x)
}

/// Submits `x` to `m` to run `t` fixed steps, with no deadline to speak of: the receiver of its
/// answer.
fn submit_fixed(
    m: &seenn_serve::registry::LoadedModel,
    x: &[f32],
    t: usize,
) -> tokio::sync::oneshot::Receiver<Result<Outcome, Error>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let far = Instant::now() + Duration::from_secs(60);
    let j = Job::new(x.to_vec(), RequestRule::Fixed { timesteps: t }, far, tx);
    m.engine.submit(j).expect("submit");
    rx
}

/// The batch-1 reference of one input under one rule: every step's (score, class, probabilities)
/// up to the exit, from `graphs::run_single` and the engine's own scoring.
fn reference(
    s: &mut seenn_serve::graphs::Sessions,
    m: &seenn_serve::model::manifest::Manifest,
    x: &[f32],
    rule: seenn_serve::exit::ExitRule,
) -> Vec<(f64, usize, Vec<f64>)> {
    use seenn_serve::model::manifest::Aggregation;
    // A per_step input runs at most as many steps as it has frames.
    let (steps, rule) = match m.input.per_step() {
        true => {
            let frames = x.len() / m.input.len();
            (frames, rule.capped(frames))
        }
        false => (m.timesteps, rule),
    };
    let logits = seenn_serve::graphs::run_single(s, m, x, steps).expect("reference run");
    // The learned rule's stop probabilities, batch 1.
    let stops = match (&rule, s.exit.as_mut(), &m.graphs.exit) {
        (seenn_serve::exit::ExitRule::Learned { .. }, Some(session), Some(g)) => {
            seenn_serve::graphs::learned_scores_for(session, g, &logits, m.exit.aggregation)
                .expect("exit.onnx")
        }
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for (t, l) in logits.iter().enumerate() {
        let agg = aggregates(&logits[..=t], m.exit.aggregation)
            .pop()
            .expect("one step");
        debug_assert!(m.exit.aggregation != Aggregation::Last || agg.len() == l.len());
        let (confidence, class_id, probs) = seenn_serve::exit::score(&agg, m.exit.temperature);
        let score = stops.get(t).map_or(confidence, |s| f64::from(*s));
        out.push((score, class_id, probs));
        if rule.should_exit(t + 1, score) {
            break;
        }
    }
    out
}

/// Requests with different exit points share batches of 3 rows on 2 workers, so rows leave from
/// the middle of the batch at almost every step and the last row moves into their place (the
/// confidence, learned and fixed rules side by side). Every
/// answer, and every step of its trajectory, is bit-identical to the batch-1 reference run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_leaving_mid_batch_and_two_workers_keep_answers_bit_identical() {
    mid_batch_answers_are_bit_identical(SlotMemory::Host).await;
}

/// The same with the slots in ONNX Runtime's device buffers (`--slot-memory device`, the path
/// `--device cuda` takes by default, here on the CPU allocator): rows are written, moved and read
/// by ONNX Runtime copies, and every answer is still bit-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_slots_keep_answers_bit_identical() {
    mid_batch_answers_are_bit_identical(SlotMemory::Device(Device::Cpu)).await;
}

/// Device slots that cannot be allocated (CUDA memory asked of a CPU session) fail the model's
/// load with the reason and the way out, instead of leaving a worker that never answers.
#[test]
fn slots_that_cannot_be_allocated_fail_the_load_with_the_way_out() {
    let (env, _) = runtime::init(None).expect("ORT");
    let metrics = Arc::new(Metrics::new(4, 8).expect("metrics"));
    let mut opts = worker_options(&env, 8, 16, 2, metrics);
    opts.engine.slot_memory = SlotMemory::Device(Device::Cuda(0));
    let err = match model::load_one(&models_dir().join("fashion-mnist"), &opts) {
        Ok(_) => panic!("CUDA slots on a CPU session must not load"),
        Err(e) => seenn_serve::error::chain(&e),
    };
    assert!(err.contains("cannot allocate the slots"), "{err}");
    assert!(err.contains("--slot-memory host"), "{err}");
}

async fn mid_batch_answers_are_bit_identical(memory: SlotMemory) {
    let (env, _) = runtime::init(None).expect("ORT");
    // Every committed package and the tensor packages (per_step frames, `last`, static tensors).
    let all = packages()
        .into_iter()
        .chain([frames_package(), static_tensor_package()]);
    for pkg in all {
        let metrics = Arc::new(Metrics::new(32, 8).expect("metrics"));
        let mut opts = worker_options(&env, 3, 1024, 2, metrics.clone());
        opts.engine.slot_memory = memory.clone();
        let m = model::load_one(&pkg, &opts).expect("loads");
        assert_eq!(m.engine.workers(), 2);
        let man = &m.manifest;
        let name = man.name.clone();
        let t_max = man.timesteps;
        let sopts = SessionOptions {
            device: Device::Cpu,
            intra_threads: 1,
        };
        let mut s = seenn_serve::graphs::load_sessions(&pkg, man, &env, &sopts).expect("sessions");
        let g = golden(&pkg);
        let mut cases = Vec::new();
        for (i, sample) in g.samples.iter().enumerate() {
            let x = sample.read_input(&pkg, man).expect("tensor");
            // Fixed exit points 1..=5 spread over neighbouring samples, beside the confidence rule.
            let fixed = 1 + (i * 3) % t_max.min(5);
            cases.push((
                x.clone(),
                RequestRule::Confidence {
                    alpha: man.exit.default_alpha,
                    max_timesteps: t_max,
                },
            ));
            if let Some(threshold) = man.exit.default_threshold {
                cases.push((
                    x.clone(),
                    RequestRule::Learned {
                        threshold,
                        max_timesteps: t_max,
                    },
                ));
            }
            cases.push((x, RequestRule::Fixed { timesteps: fixed }));
        }
        let mut replies = Vec::new();
        for (x, rule) in &cases {
            let (tx, rx) = tokio::sync::oneshot::channel();
            m.engine
                .submit(Job {
                    explain: true,
                    ..Job::new(
                        x.clone(),
                        *rule,
                        Instant::now() + Duration::from_secs(60),
                        tx,
                    )
                })
                .expect("submit");
            replies.push(rx);
        }
        for (k, ((x, rule), rx)) in cases.iter().zip(replies).enumerate() {
            let o: Outcome = rx.await.expect("reply").expect("ok");
            let want = reference(&mut s, man, x, rule.resolve(None));
            assert_eq!(o.timesteps_used, want.len(), "{name} case {k}");
            let last = &want[want.len() - 1];
            assert_eq!(o.class_id, last.1, "{name} case {k}");
            let top = last.2.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(o.confidence.to_bits(), top.to_bits(), "{name} case {k}");
            assert_eq!(o.probabilities, last.2, "{name} case {k}");
            assert_eq!(o.trajectory.len(), want.len());
            for (got, w) in o.trajectory.iter().zip(&want) {
                assert_eq!(
                    got.score.to_bits(),
                    w.0.to_bits(),
                    "{name} case {k} t {}",
                    got.t
                );
                assert_eq!(got.class_id, w.1);
            }
        }
        let gauge = metrics.active_requests.with_label_values(&[&name]).get();
        assert_eq!(gauge, 0, "{name}: every request left the batch");
        let batches = metrics.batch_size.with_label_values(&[&name]);
        assert!(
            batches.get_sample_sum() > batches.get_sample_count() as f64,
            "{name}: requests were batched"
        );
    }
}

/// With 2 workers: a full queue answers 429, deadlines and gone clients cancel (and the gauge of
/// active requests drops at once), and an injected fault answers its batch with an error, turns
/// the model unready, and the model recovers and answers correctly again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_keep_overload_cancellation_and_fault_recovery() {
    let (env, _) = runtime::init(None).expect("ORT");
    let qcfs = models_dir().join("fashion-mnist-qcfs");
    let metrics = Arc::new(Metrics::new(32, 2).expect("metrics"));
    let opts = worker_options(&env, 2, 4, 2, metrics.clone());
    let m = model::load_one(&qcfs, &opts).expect("loads");
    let x = input(&qcfs, &m.manifest);
    let t_max = m.manifest.timesteps;
    let job = |x: &Vec<f32>, reply, deadline| {
        Job::new(
            x.clone(),
            RequestRule::Fixed { timesteps: t_max },
            deadline,
            reply,
        )
    };
    let later = || Instant::now() + Duration::from_secs(60);

    // 2 workers × 2 rows busy and 4 waiting: more are refused.
    let mut replies = Vec::new();
    let mut overloaded = 0;
    for _ in 0..40 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        match m.engine.submit(job(&x, tx, later())) {
            Ok(()) => replies.push(rx),
            Err(Error::Overloaded { .. }) => overloaded += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(overloaded > 0, "a full queue must refuse");
    assert!(replies.len() >= 4);
    for rx in replies {
        assert_eq!(rx.await.expect("reply").expect("ok").timesteps_used, t_max);
    }
    assert_eq!(m.engine.queue_depth(), 0);

    // Clients that leave mid-run: the gauge of active requests falls to 0 without another step.
    let gauge = || {
        metrics
            .active_requests
            .with_label_values(&["fashion-mnist-qcfs"])
            .get()
    };
    let mut progress = Vec::new();
    let mut keep = Vec::new();
    for _ in 0..4 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (ptx, prx) = tokio::sync::mpsc::unbounded_channel();
        let mut j = job(&x, tx, later());
        j.progress = Some(ptx);
        m.engine.submit(j).expect("submit");
        progress.push(prx);
        keep.push(rx);
    }
    for p in &mut progress {
        assert!(p.recv().await.is_some(), "a first step");
    }
    drop(progress);
    drop(keep);
    let until = Instant::now() + Duration::from_secs(5);
    while gauge() != 0 {
        assert!(Instant::now() < until, "gauge stuck at {}", gauge());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let gone = metrics
        .cancelled_total
        .with_label_values(&["fashion-mnist-qcfs", "client_gone"])
        .get();
    assert_eq!(gone, 4);

    // (A deadline that passes mid-run is answered with the prediction so far:
    // `deadlines_answer_with_the_prediction_so_far`.)

    // An injected fault: that batch fails, the model goes unready, then recovers.
    let mut ready = m.engine.watch_ready();
    m.engine.inject_fault.store(true, Ordering::SeqCst);
    let (tx, rx) = tokio::sync::oneshot::channel();
    m.engine.submit(job(&x, tx, later())).expect("submit");
    let err = rx.await.expect("reply").expect_err("fault");
    assert!(matches!(err, Error::Internal { .. }), "{err:?}");
    let until = Instant::now() + Duration::from_secs(10);
    while !*ready.borrow_and_update() {
        assert!(Instant::now() < until, "never recovered");
        let _ = tokio::time::timeout(Duration::from_millis(50), ready.changed()).await;
    }
    assert!(m.engine.is_ready());
    assert_eq!(
        metrics
            .engine_failures
            .with_label_values(&["fashion-mnist-qcfs"])
            .get(),
        1
    );
    let (tx, rx) = tokio::sync::oneshot::channel();
    m.engine.submit(job(&x, tx, later())).expect("submit");
    assert_eq!(rx.await.expect("reply").expect("ok").timesteps_used, t_max);
    assert_eq!(gauge(), 0);
}

/// Admission at the door (`EngineHandle::check_admission`): a full queue is refused, and under a
/// queue budget a newcomer is shed before it is queued while requests are queued and the last
/// ones the worker admitted had waited past the budget; an empty queue admits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_door_refuses_what_the_queue_would() {
    let (env, _) = runtime::init(None).expect("ORT");
    let qcfs = models_dir().join("fashion-mnist-qcfs");
    let metrics = Arc::new(Metrics::new(32, 2).expect("metrics"));
    // One worker with one row and 16 queue places: each request runs alone for its 32 steps.
    let opts = worker_options(&env, 1, 16, 1, metrics.clone());
    let m = model::load_one(&qcfs, &opts).expect("loads");
    let x = input(&qcfs, &m.manifest);
    let t_max = m.manifest.timesteps;
    let submit = || {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job::new(
            x.clone(),
            RequestRule::Fixed { timesteps: t_max },
            Instant::now() + Duration::from_secs(60),
            tx,
        );
        m.engine.submit(job).map(|()| rx)
    };
    let budget = Some(Duration::from_micros(100));
    let shed = || {
        metrics
            .cancelled_total
            .with_label_values(&["fashion-mnist-qcfs", "queue_budget"])
            .get()
    };
    let wait_for_depth_below = |n: usize| {
        let engine = &m.engine;
        async move {
            let until = Instant::now() + Duration::from_secs(10);
            while engine.queue_depth() >= n {
                assert!(Instant::now() < until, "the worker never took a request");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    assert!(
        m.engine.check_admission(budget).is_ok(),
        "an idle engine admits"
    );

    // One runs its 32 steps; the rest wait behind it until the queue is full. (Submitted until
    // the queue refuses, and again if the worker took one before the door was asked.)
    let first = submit().expect("runs");
    wait_for_depth_below(1).await;
    let mut queued = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < until, "the queue never filled");
        match submit() {
            Ok(rx) => queued.push(rx),
            Err(Error::Overloaded { .. }) => match m.engine.check_admission(None) {
                Err(Error::Overloaded { .. }) => break,
                Err(e) => panic!("unexpected {e:?}"),
                Ok(()) => {}
            },
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(shed(), 0, "a full queue is not a shed");

    // The first finishes; the worker admits the next, which waited (most of) a whole run, and
    // the others are still queued behind it: a newcomer under the budget is shed at the door.
    assert_eq!(
        first.await.expect("reply").expect("ok").timesteps_used,
        t_max
    );
    let until = Instant::now() + Duration::from_secs(10);
    let e = loop {
        assert!(
            Instant::now() < until && m.engine.queue_depth() > 1,
            "never shed at the door while requests were queued past the budget"
        );
        match m.engine.check_admission(budget) {
            Err(e @ Error::Shed(_)) => break e,
            // Still full until the worker takes the next one.
            Err(Error::Overloaded { .. }) | Ok(()) => {
                tokio::time::sleep(Duration::from_millis(1)).await
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    };
    assert!(e.to_string().contains("adaptive p99 objective"), "{e}");
    assert_eq!(shed(), 1, "counted as a queue-budget shed");
    assert!(
        m.engine.check_admission(None).is_ok(),
        "requests without a budget are still admitted"
    );
    assert!(
        m.engine
            .check_admission(Some(Duration::from_secs(60)))
            .is_ok(),
        "a budget over the wait admits"
    );

    // Everything queued is answered (none of it had a budget).
    for rx in queued {
        assert_eq!(rx.await.expect("reply").expect("ok").timesteps_used, t_max);
    }
    assert_eq!(m.engine.queue_depth(), 0);
    // The admission that emptied the queue cleared the wait: a new queue behind a running request
    // is admitted although the last requests of the drain had waited several runs.
    let running = submit().expect("runs");
    wait_for_depth_below(1).await;
    let behind: Vec<_> = (0..2).map(|_| submit().expect("queued")).collect();
    assert!(
        m.engine.check_admission(budget).is_ok(),
        "a queue that has not waited yet admits"
    );
    assert_eq!(shed(), 1);
    for rx in std::iter::once(running).chain(behind) {
        assert_eq!(rx.await.expect("reply").expect("ok").timesteps_used, t_max);
    }
}

/// A request whose next step would miss its deadline is answered with its prediction so far,
/// flagged, long before its full run would end; it is counted by model and rule. Seven rows that run all 32 steps
/// share its batch, so that its own 32 steps take well past the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_answer_with_the_prediction_so_far() {
    let (m, metrics, x) = qcfs_engine(8, 16, 1, seenn_serve::engine::BatchWidth::Fixed(8));
    let t_max = m.manifest.timesteps;
    let fill = || {
        (0..7)
            .map(|_| submit_fixed(&m, &x, t_max))
            .collect::<Vec<_>>()
    };
    // First requests that run their 32 steps in a full batch, twice: how long such a run takes
    // (the faster and the slower of the two, as the host's load varies).
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut fillers = fill();
        runs.push(
            submit_fixed(&m, &x, t_max)
                .await
                .expect("reply")
                .expect("ok")
                .inference,
        );
        for rx in fillers.drain(..) {
            rx.await.expect("reply").expect("ok");
        }
    }
    let (full, slowest) = (runs[0].min(runs[1]), runs[0].max(runs[1]));
    // Then the same in a full batch again, with a deadline at a third of the faster run.
    let mut fillers = fill();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let deadline = Instant::now() + full / 3;
    let j = Job {
        explain: true,
        ..Job::new(
            x.clone(),
            RequestRule::Fixed { timesteps: t_max },
            deadline,
            tx,
        )
    };
    m.engine.submit(j).expect("submit");
    let out = rx.await.expect("reply").expect("an answer, not 504");
    let answered = Instant::now();
    assert!(out.deadline_exit, "flagged as a deadline exit");
    assert!(
        (1..t_max).contains(&out.timesteps_used),
        "answered after {} of {t_max} steps",
        out.timesteps_used
    );
    // The engine skips a step its moving-average step time says would miss the deadline; a step
    // it did start can still run long on a busy host, so the wall-clock bound is loose (a whole
    // run past the deadline); the steps above are the exact check.
    assert!(
        answered <= deadline + slowest,
        "answered {:?} after the deadline, a full run takes {full:?} to {slowest:?}",
        answered - deadline
    );
    // The answer is the prediction of the last step it ran.
    let last = out.trajectory.last().expect("a trace");
    assert_eq!(last.t, out.timesteps_used);
    assert_eq!(last.class_id, out.class_id);
    assert!((f64::from(last.probabilities[out.class_id]) - out.confidence).abs() < 1e-6);
    let counted = |rule: &str| {
        metrics
            .deadline_exits_total
            .with_label_values(&["fashion-mnist-qcfs", rule])
            .get()
    };
    assert_eq!(counted("fixed"), 1);
    assert_eq!(counted("confidence"), 0);
    for rx in fillers.drain(..) {
        let out = rx.await.expect("reply").expect("ok");
        assert_eq!(out.timesteps_used, t_max);
        assert!(!out.deadline_exit);
    }
}

/// Age order under contention: with one row per step, queued requests are admitted oldest first;
/// and a long request is never starved by a stream of newcomers (it steps at every tick, so it
/// ends while the stream still runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_request_goes_first_and_none_starves() {
    let (m, _, x) = qcfs_engine(2, 64, 1, seenn_serve::engine::BatchWidth::Fixed(1));
    let m = Arc::new(m);
    assert_eq!(m.engine.batch_width(), 1);
    let t_max = m.manifest.timesteps;
    let far = || Instant::now() + Duration::from_secs(60);

    // Twelve requests queued at once, each enqueued after the last: admitted in that order.
    let mut replies = Vec::new();
    for _ in 0..12 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let j = Job::new(x.clone(), RequestRule::Fixed { timesteps: 4 }, far(), tx);
        let enqueued = j.enqueued;
        m.engine.submit(j).expect("submit");
        replies.push((enqueued, rx));
    }
    let mut admitted = Vec::new();
    for (enqueued, rx) in replies {
        let out = rx.await.expect("reply").expect("ok");
        admitted.push(enqueued + out.queue);
    }
    assert!(
        admitted.windows(2).all(|w| w[0] <= w[1]),
        "admitted out of age order: {admitted:?}"
    );

    // A stream of one-step newcomers from four clients keeps the queue full for 5 s; a long
    // request joins that queue and is answered while the stream still runs: newcomers that came
    // after it never go before it. (Were the queue last in, first out, it would wait for the
    // stream to end.)
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stream_ends = Instant::now() + Duration::from_secs(5);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (m, x, stop, sent) = (m.clone(), x.clone(), stop.clone(), sent.clone());
            tokio::spawn(async move {
                while Instant::now() < stream_ends && !stop.load(Ordering::SeqCst) {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let j = Job::new(x.clone(), RequestRule::Fixed { timesteps: 1 }, far(), tx);
                    if m.engine.submit(j).is_ok() {
                        sent.fetch_add(1, Ordering::SeqCst);
                        let _ = rx.await;
                    }
                }
            })
        })
        .collect();
    while sent.load(Ordering::SeqCst) < 20 || m.engine.queue_depth() == 0 {
        assert!(Instant::now() < stream_ends, "the stream never queued");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let out = submit_fixed(&m, &x, t_max)
        .await
        .expect("reply")
        .expect("ok");
    let answered = Instant::now();
    let sent_by_then = sent.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("client");
    }
    assert_eq!(out.timesteps_used, t_max);
    assert!(
        answered < stream_ends,
        "the long request waited for the stream to end"
    );
    assert!(sent_by_then >= 20, "{sent_by_then} newcomers");
}

/// `--batch-width auto`: the first worker measures the step's cost at 1, 2, 4 and 8 rows at load;
/// the width is the curve's choice, and the batch limit starts there.
#[test]
fn the_batch_width_is_chosen_from_the_measured_curve() {
    let (m, metrics, _) = qcfs_engine(8, 16, 2, seenn_serve::engine::BatchWidth::Auto);
    let choice = m.engine.width_choice();
    assert_eq!(
        choice.chosen_by,
        seenn_serve::engine::width::ChosenBy::Measured
    );
    let rows: Vec<usize> = choice.curve.iter().map(|p| p.rows).collect();
    assert_eq!(rows, vec![1, 2, 4, 8]);
    assert!(choice
        .curve
        .iter()
        .all(|p| p.step_us > 0.0 && (p.per_row_us * p.rows as f64 - p.step_us).abs() < 1e-6));
    assert_eq!(
        choice.width,
        seenn_serve::engine::width::choose(&choice.curve, 8)
    );
    assert_eq!(m.engine.batch_limit(), choice.width);
    // The curve is exported per row count.
    for p in &choice.curve {
        let g = metrics
            .engine_step_cost
            .with_label_values(&["fashion-mnist-qcfs", &p.rows.to_string()])
            .get();
        assert!((g - p.per_row_us / 1e6).abs() < 1e-12);
    }
    // The adaptive limit cannot raise it past the width.
    m.engine.set_batch_limit(8);
    assert_eq!(m.engine.batch_limit(), choice.width);
}
