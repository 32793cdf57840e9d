//! The real server over gRPC with the generated tonic client: Classify, ClassifyStream, ListModels,
//! Admin, health, reflection, and the bad inputs with their status codes.

mod common;

use common::*;
use seenn_serve::api::grpc::pb;
use seenn_serve::api::grpc::pb::admin_client::AdminClient;
use seenn_serve::api::grpc::pb::classifier_client::ClassifierClient;
use tonic::Code;

async fn classifier(
    s: &seenn_serve::server::RunningServer,
) -> ClassifierClient<tonic::transport::Channel> {
    ClassifierClient::connect(format!("http://{}", s.grpc_addr))
        .await
        .expect("connect")
}

async fn channel(s: &seenn_serve::server::RunningServer) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{}", s.grpc_addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

fn image_request(bytes: Vec<u8>) -> pb::ClassifyRequest {
    pb::ClassifyRequest {
        input: Some(pb::classify_request::Input::Image(bytes)),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn classify_stream_and_list_models() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = start(config(dir.path())).await;
    let mut c = classifier(&s).await;
    let pkg = policy_package();
    let g = golden(&pkg);
    for sample in g.samples.iter().take(8) {
        let r = c
            .classify(image_request(sample_bytes(&pkg, sample)))
            .await
            .expect("classify")
            .into_inner();
        assert_eq!(r.class_id as usize, sample.class_id);
        assert_eq!(r.timesteps_used as usize, sample.exit_timestep);
        assert_eq!(r.exit_rule, "confidence");
        assert_eq!(r.model, "fashion-mnist");

        let mut req = image_request(sample_bytes(&pkg, sample));
        req.rule = "policy".into();
        let r = c.classify(req).await.expect("policy").into_inner();
        assert_eq!(Some(r.timesteps_used as usize), sample.policy_timesteps);

        // The stream sends one event per timestep, then the result.
        let mut stream = c
            .classify_stream(image_request(sample_bytes(&pkg, sample)))
            .await
            .expect("stream")
            .into_inner();
        let mut steps = Vec::new();
        let mut result = None;
        while let Some(ev) = stream.message().await.expect("event") {
            match ev.event.expect("event body") {
                pb::classify_event::Event::Step(t) => steps.push(t),
                pb::classify_event::Event::Result(r) => result = Some(r),
            }
        }
        let result = result.expect("a final result");
        assert_eq!(steps.len(), result.timesteps_used as usize);
        assert_eq!(
            steps.iter().map(|t| t.timestep).collect::<Vec<_>>(),
            (1..=steps.len() as u32).collect::<Vec<_>>()
        );
        assert_eq!(steps.last().expect("step").class_id, result.class_id);
    }
    // Preprocessed tensor input.
    let m = seenn_serve::model::read_manifest(&pkg).expect("manifest");
    let x = seenn_serve::preprocess::image_to_tensor(
        &sample_bytes(&pkg, &g.samples[0]),
        None,
        &m.input,
        1 << 24,
    )
    .expect("x");
    let r = c
        .classify(pb::ClassifyRequest {
            input: Some(pb::classify_request::Input::Tensor(pb::Tensor {
                shape: vec![1, 28, 28],
                data: x,
                ..Default::default()
            })),
            rule: "fixed".into(),
            max_timesteps: Some(3),
            ..Default::default()
        })
        .await
        .expect("tensor")
        .into_inner();
    assert_eq!(r.timesteps_used, 3);
    let list = c
        .list_models(pb::ListModelsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.models.len(), packages().len());
    let fm = list
        .models
        .iter()
        .find(|m| m.name == "fashion-mnist")
        .expect("fashion-mnist listed");
    assert!(fm.has_policy && fm.ready);
    assert_eq!(fm.execution_provider, "CPUExecutionProvider");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_bad_inputs_map_to_status_codes() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = config(dir.path());
    cfg.max_body_bytes = 100_000;
    let s = start(cfg).await;
    let mut c = classifier(&s).await;
    let pkg = policy_package();
    let png = sample_bytes(&pkg, &golden(&pkg).samples[0]);
    let mut truncated = png.clone();
    truncated.truncate(png.len() / 2);
    let with = |f: &dyn Fn(&mut pb::ClassifyRequest)| {
        let mut r = image_request(png.clone());
        f(&mut r);
        r
    };
    let cases: Vec<(&str, pb::ClassifyRequest, Code)> = vec![
        (
            "no input",
            pb::ClassifyRequest::default(),
            Code::InvalidArgument,
        ),
        ("empty image", image_request(vec![]), Code::InvalidArgument),
        (
            "not an image",
            image_request(b"hello".to_vec()),
            Code::InvalidArgument,
        ),
        ("truncated", image_request(truncated), Code::InvalidArgument),
        (
            "alpha 0",
            with(&|r| r.alpha = Some(0.0)),
            Code::InvalidArgument,
        ),
        (
            "alpha NaN",
            with(&|r| r.alpha = Some(f32::NAN)),
            Code::InvalidArgument,
        ),
        (
            "max_timesteps 0",
            with(&|r| r.max_timesteps = Some(0)),
            Code::InvalidArgument,
        ),
        (
            "max_timesteps > T",
            with(&|r| r.max_timesteps = Some(99)),
            Code::InvalidArgument,
        ),
        (
            "unknown model",
            with(&|r| r.model = "nope".into()),
            Code::NotFound,
        ),
        (
            "unknown rule",
            with(&|r| r.rule = "greedy".into()),
            Code::InvalidArgument,
        ),
        (
            "wrong tensor",
            pb::ClassifyRequest {
                input: Some(pb::classify_request::Input::Tensor(pb::Tensor {
                    shape: vec![],
                    data: vec![0.0; 5],
                    ..Default::default()
                })),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            "NaN tensor",
            pb::ClassifyRequest {
                input: Some(pb::classify_request::Input::Tensor(pb::Tensor {
                    shape: vec![],
                    data: vec![f32::NAN; 784],
                    ..Default::default()
                })),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        // tonic's own decoder limit answers OUT_OF_RANGE before the request reaches the service.
        (
            "message too large",
            image_request(vec![0u8; 200_000]),
            Code::OutOfRange,
        ),
    ];
    for (name, req, code) in cases {
        let err = c.classify(req).await.expect_err(name);
        assert_eq!(err.code(), code, "{name}: {}", err.message());
        assert!(!err.message().is_empty(), "{name}");
    }
    let ok = c.classify(image_request(png)).await;
    assert!(ok.is_ok(), "still serving");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_admin_health_and_reflection() {
    let dir = tempfile::tempdir().expect("tmp");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "grpc-token-for-the-grpc-test").expect("write");
    let mut cfg = config(&dir.path().join("state"));
    cfg.admin_token_file = Some(token_file);
    let s = start(cfg).await;
    let mut admin = AdminClient::connect(format!("http://{}", s.grpc_addr))
        .await
        .expect("connect");
    let get = pb::GetExitPolicyRequest {
        model: "fashion-mnist".into(),
    };
    assert_eq!(
        admin
            .get_exit_policy(get.clone())
            .await
            .expect_err("no token")
            .code(),
        Code::Unauthenticated
    );
    let mut req = tonic::Request::new(pb::SetExitPolicyRequest {
        model: "fashion-mnist".into(),
        alpha: Some(0.75),
        ..Default::default()
    });
    req.metadata_mut().insert(
        "authorization",
        "Bearer grpc-token-for-the-grpc-test".parse().expect("meta"),
    );
    let r = admin.set_exit_policy(req).await.expect("set").into_inner();
    assert_eq!(r.alpha, 0.75);
    assert!(r.adaptive.is_none());
    // Adaptive α over gRPC: on (with its floor from calibration), then off.
    let authed = |body: pb::SetExitPolicyRequest| {
        let mut req = tonic::Request::new(body);
        req.metadata_mut().insert(
            "authorization",
            "Bearer grpc-token-for-the-grpc-test".parse().expect("meta"),
        );
        req
    };
    let r = admin
        .set_exit_policy(authed(pb::SetExitPolicyRequest {
            model: "fashion-mnist".into(),
            adaptive: Some(pb::AdaptiveObjective {
                p99_ms: 50.0,
                max_accuracy_drop: 0.005,
            }),
            ..Default::default()
        }))
        .await
        .expect("adaptive on")
        .into_inner();
    assert_eq!(r.adaptive.map(|a| a.p99_ms), Some(50.0));
    assert_eq!(r.configured_alpha, Some(0.75));
    assert!(r.floor_alpha.is_some_and(|f| f <= 0.75), "{r:?}");
    let both = admin
        .set_exit_policy(authed(pb::SetExitPolicyRequest {
            model: "fashion-mnist".into(),
            adaptive: Some(pb::AdaptiveObjective {
                p99_ms: 50.0,
                max_accuracy_drop: 0.005,
            }),
            disable_adaptive: true,
            ..Default::default()
        }))
        .await
        .expect_err("contradictory");
    assert_eq!(both.code(), Code::InvalidArgument);
    let r = admin
        .set_exit_policy(authed(pb::SetExitPolicyRequest {
            model: "fashion-mnist".into(),
            disable_adaptive: true,
            ..Default::default()
        }))
        .await
        .expect("adaptive off")
        .into_inner();
    assert!(r.adaptive.is_none() && r.configured_alpha.is_none());
    assert_eq!(r.alpha, 0.75);
    let mut req = tonic::Request::new(get);
    req.metadata_mut()
        .insert("authorization", "Bearer wrong".parse().expect("meta"));
    assert_eq!(
        admin
            .get_exit_policy(req)
            .await
            .expect_err("wrong token")
            .code(),
        Code::Unauthenticated
    );

    // Standard health checking.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(&s).await);
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "seenn.v1.Classifier".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Server reflection lists the services.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut refl = ServerReflectionClient::new(channel(&s).await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection")
        .into_inner();
    let resp = stream
        .message()
        .await
        .expect("message")
        .expect("a response");
    let names: Vec<String> = match resp.message_response.expect("body") {
        MessageResponse::ListServicesResponse(l) => l.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected reflection answer {other:?}"),
    };
    for want in [
        "seenn.v1.Classifier",
        "seenn.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    s.shutdown().await;
}

/// The call's deadline (`grpc-timeout`) is the request's: at a third of a full 32-step run the
/// answer is the prediction so far with `deadline_exit`; a deadline already passed on arrival is
/// DEADLINE_EXCEEDED with no step run; without one the request runs its T steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_deadlines_answer_with_the_prediction_so_far() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = config(dir.path());
    cfg.engine_workers = Some(1);
    let s = start(cfg).await;
    let mut c = classifier(&s).await;
    let pkg = models_dir().join("fashion-mnist-qcfs");
    let png = sample_bytes(&pkg, &golden(&pkg).samples[0]);
    let request = |deadline: Option<std::time::Duration>| {
        let mut r = tonic::Request::new(pb::ClassifyRequest {
            model: "fashion-mnist-qcfs".into(),
            rule: "fixed".into(),
            max_timesteps: Some(32),
            explain: true,
            ..image_request(png.clone())
        });
        if let Some(d) = deadline {
            r.set_timeout(d);
        }
        r
    };
    // How long a full run takes here, alone (median of 5).
    let mut totals = Vec::new();
    for _ in 0..5 {
        let r = c.classify(request(None)).await.expect("full").into_inner();
        assert_eq!(r.timesteps_used, 32);
        assert!(!r.deadline_exit);
        totals.push(r.timings.expect("timings").total_seconds);
    }
    totals.sort_by(f64::total_cmp);
    let third = std::time::Duration::from_secs_f64(totals[2] / 3.0);
    // A deadline can land on either side of a step boundary on a busy host, and the client
    // enforces the deadline too (a call whose answer is late on the way back is cancelled by the
    // client): one of five must be answered as a deadline exit.
    let mut hits = 0;
    for _ in 0..5 {
        let r = match c.classify(request(Some(third))).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                assert!(
                    matches!(e.code(), Code::Cancelled | Code::DeadlineExceeded),
                    "{e:?}"
                );
                continue;
            }
        };
        if r.deadline_exit {
            hits += 1;
            assert!((1..32).contains(&r.timesteps_used), "{}", r.timesteps_used);
            let last = r.trajectory.last().expect("trace");
            assert_eq!(last.timestep, r.timesteps_used);
            assert_eq!(last.class_id, r.class_id);
        } else {
            assert_eq!(r.timesteps_used, 32);
        }
    }
    assert!(hits > 0, "no deadline exit with a {third:?} deadline");
    let text = metrics_text(&s).await;
    let series = |name: &str, labels: &[(&str, &str)]| metric_value(&text, name, labels);
    let model = ("model", "fashion-mnist-qcfs");
    // Counted by the server; one the client cancelled on the way back is counted too.
    let counted = series("seenn_deadline_exits_total", &[model, ("rule", "fixed")]);
    assert!(
        counted >= hits as f64 && counted <= 5.0,
        "{counted} counted, {hits} seen"
    );
    let (steps, cancelled) = (
        series("seenn_request_steps_total", &[model]),
        series("seenn_cancelled_total", &[model, ("reason", "deadline")]),
    );
    // A deadline that has passed when the server reads the call (1 ns): refused before the image
    // is decoded, and no step runs. tonic's client applies the call's deadline too, on tokio's
    // millisecond timer, so the client may report CANCELLED first; when the server's answer
    // arrives first it is DEADLINE_EXCEEDED and already counted.
    let e = c
        .classify(request(Some(std::time::Duration::from_nanos(1))))
        .await
        .expect_err("no step fits");
    let text = metrics_text(&s).await;
    let counted = metric_value(
        &text,
        "seenn_cancelled_total",
        &[model, ("reason", "deadline")],
    ) - cancelled;
    match e.code() {
        Code::DeadlineExceeded => assert_eq!(counted, 1.0, "counted as a deadline cancel"),
        Code::Cancelled => assert!(counted <= 1.0, "{counted}"),
        other => panic!("{other:?}: {e:?}"),
    }
    assert_eq!(
        metric_value(&text, "seenn_request_steps_total", &[model]),
        steps,
        "no step ran"
    );
    s.shutdown().await;
}
