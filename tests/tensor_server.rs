//! Tensor models (package format 3) through the real server and real clients: `.npy` and JSON
//! tensors over HTTP, the Open Inference Protocol over REST and gRPC, gRPC Classify; per_step
//! requests with fewer frames than T; and every bad input with the status that names what is
//! accepted, the server still serving after them.

mod common;

use common::*;
use serde_json::{json, Value};

use seenn_serve::api::grpc::pb;
use seenn_serve::api::grpc::pb::classifier_client::ClassifierClient;
use seenn_serve::kserve::grpc::pb as oip;
use seenn_serve::kserve::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use seenn_serve::npy;
use seenn_serve::server::RunningServer;

const FRAMES: &str = "/v1/models/lif-frames/classify";
const STATIC: &str = "/v1/models/lif-static/classify";

fn sample(pkg: &std::path::Path, i: usize) -> (GoldenSample, npy::Array, Vec<u8>) {
    let s = golden(pkg).samples[i].clone();
    let bytes = sample_bytes(pkg, &s);
    let a = npy::read(&bytes).expect("sample .npy");
    (s, a, bytes)
}

async fn post_json(s: &RunningServer, path: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(url(s, path))
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json body"))
}

async fn post_raw(s: &RunningServer, path: &str, ct: &str, body: Vec<u8>) -> (u16, Value) {
    let r = client()
        .post(url(s, path))
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json body"))
}

/// The first `t` frames of a per_step sample, as float32 .npy.
fn frames_npy(a: &npy::Array, t: usize) -> Vec<u8> {
    let frame: usize = a.shape[1..].iter().product();
    let mut shape = a.shape.clone();
    shape[0] = t;
    npy::write_f32(&shape, &a.data[..t * frame]).expect("npy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn npy_and_json_tensors_over_http_match_the_golden_exits() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = start(tensor_config(dir.path())).await;
    for (pkg, path) in [
        (frames_package(), FRAMES),
        (static_tensor_package(), STATIC),
    ] {
        let g = golden(&pkg);
        for (i, gs) in g.samples.iter().enumerate() {
            let (_, a, bytes) = sample(&pkg, i);
            let what = format!("{path} {}", gs.file);
            // The .npy file as it is (uint8, bool or float32).
            let (status, b) = post_npy(&s, path, bytes.clone()).await;
            assert_eq!(status, 200, "{what}: {b}");
            assert_eq!(b["timesteps_used"], gs.exit_timestep, "{what}");
            assert_eq!(b["class_id"], gs.class_id, "{what}");
            // application/octet-stream with the .npy magic is read as .npy too.
            let (status, b) = post_raw(&s, path, "application/octet-stream", bytes).await;
            assert_eq!(
                (status, &b["class_id"]),
                (200, &json!(gs.class_id)),
                "{what}"
            );
            // JSON: flat values with their shape and dtype.
            let dtype = a.dtype.as_str();
            let (status, b) = post_json(
                &s,
                path,
                json!({"tensor": a.data, "shape": a.shape, "dtype": dtype, "explain": true}),
            )
            .await;
            assert_eq!(status, 200, "{what}: {b}");
            assert_eq!(b["timesteps_used"], gs.exit_timestep, "{what}");
            assert_eq!(b["class_id"], gs.class_id, "{what}");
            let trajectory = b["trajectory"].as_array().expect("trajectory");
            assert_eq!(trajectory.len(), gs.exit_timestep);
            // JSON without a shape: one frame, or per_step whole frames back to back.
            let (status, b) = post_json(&s, path, json!({"tensor": a.data})).await;
            assert_eq!(status, 200, "{what}: {b}");
            assert_eq!(b["timesteps_used"], gs.exit_timestep, "{what}");
        }
    }
    // bool values as JSON true/false.
    let (_, a, _) = sample(&frames_package(), 4);
    let bools: Vec<bool> = a.data.iter().map(|v| *v == 1.0).collect();
    let (status, b) = post_json(
        &s,
        FRAMES,
        json!({"tensor": bools, "shape": a.shape, "dtype": "bool"}),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["class_id"], golden(&frames_package()).samples[4].class_id);
    // The package's samples are served as .npy files, and the model list says what the input is.
    let r = client()
        .get(url(&s, "/v1/models/lif-frames/samples/000.npy"))
        .send()
        .await
        .expect("sample");
    assert_eq!(r.headers()["content-type"], "application/x-npy");
    let served = r.bytes().await.expect("bytes");
    assert_eq!(
        served.as_ref(),
        sample_bytes(&frames_package(), &golden(&frames_package()).samples[0])
    );
    let view: Value = client()
        .get(url(&s, "/v1/models/lif-frames"))
        .send()
        .await
        .expect("model")
        .json()
        .await
        .expect("json");
    assert_eq!(
        view["input"],
        json!({"kind": "tensor", "shape": [2, 8, 8], "dtype": "uint8", "time": "per_step"})
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_step_requests_run_at_most_their_frames_and_exit_before_the_rest() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = start(tensor_config(dir.path())).await;
    let pkg = frames_package();
    // Sample 1 exits at step 2 of 8 under the default α.
    let (gs, a, _) = sample(&pkg, 1);
    assert_eq!(gs.exit_timestep, 2);
    let frame: usize = a.shape[1..].iter().product();
    for t in [2, 3, 8] {
        let (status, b) = post_npy(&s, FRAMES, frames_npy(&a, t)).await;
        assert_eq!(status, 200, "{b}");
        assert_eq!(b["timesteps_used"], 2, "{t} frames");
        assert_eq!(
            b["max_timesteps"], t,
            "a request with {t} frames runs at most {t} steps"
        );
        assert_eq!(b["class_id"], gs.class_id);
    }
    // Frames after the exit are never read: other values there give the same answer.
    let mut changed = a.data.clone();
    for v in &mut changed[2 * frame..] {
        *v = 255.0 - *v;
    }
    let (_, b) = post_json(
        &s,
        FRAMES,
        json!({"tensor": changed, "shape": a.shape, "explain": true}),
    )
    .await;
    let (_, want) = post_json(
        &s,
        FRAMES,
        json!({"tensor": a.data, "shape": a.shape, "explain": true}),
    )
    .await;
    assert_eq!(b["trajectory"], want["trajectory"]);
    assert_eq!(b["timesteps_used"], 2);
    // Sample 0 never exits early: with 3 frames it runs 3 steps, whatever the request's cap.
    let (gs0, a0, _) = sample(&pkg, 0);
    assert_eq!(gs0.exit_timestep, 8);
    for q in [
        "",
        "?rule=fixed&max_timesteps=8",
        "?max_timesteps=5",
        "?alpha=1.0",
    ] {
        let (status, b) = post_npy(&s, &format!("{FRAMES}{q}"), frames_npy(&a0, 3)).await;
        assert_eq!(status, 200, "{q}: {b}");
        assert_eq!(b["timesteps_used"], 3, "{q}");
        assert_eq!(b["max_timesteps"], 3, "{q}");
    }
    let (_, b) = post_npy(
        &s,
        &format!("{FRAMES}?rule=fixed&max_timesteps=2"),
        frames_npy(&a0, 3),
    )
    .await;
    assert_eq!(b["timesteps_used"], 2);
    s.shutdown().await;
}

/// Every bad tensor input: the status, and a message that names what was wrong and what is
/// accepted. The server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_tensor_inputs_are_refused_with_what_is_accepted() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = start(tensor_config(dir.path())).await;
    let (_, a, good) = sample(&frames_package(), 0);
    let frame: usize = a.shape[1..].iter().product();
    let expected = "expected [t, 2, 8, 8] with 1 ≤ t ≤ 8, float32|uint8|bool";
    let png = {
        let img = image::GrayImage::from_raw(2, 2, vec![0, 50, 100, 150]).expect("image");
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .expect("png");
        out
    };
    let mut f8 = b"\x93NUMPY\x01\x00".to_vec();
    let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 2, 8, 8), }\n";
    f8.extend_from_slice(&(header.len() as u16).to_le_bytes());
    f8.extend_from_slice(header.as_bytes());
    f8.extend_from_slice(&[0u8; 8 * 128]);
    let nine = {
        let mut d = a.data.clone();
        d.extend_from_slice(&a.data[..frame]);
        npy::write_f32(&[9, 2, 8, 8], &d).expect("npy")
    };
    let cases: Vec<(&str, u16, reqwest::RequestBuilder, Vec<&str>)> = vec![
        (
            "wrong frame shape",
            400,
            client()
                .post(url(&s, FRAMES))
                .header("content-type", "application/x-npy")
                .body(npy::write_f32(&[8, 2, 8, 7], &vec![0.0; 8 * 112]).expect("npy")),
            vec!["[8, 2, 8, 7]", expected],
        ),
        (
            "no time dimension",
            400,
            client()
                .post(url(&s, FRAMES))
                .header("content-type", "application/x-npy")
                .body(npy::write_f32(&[2, 8, 8], &vec![0.0; frame]).expect("npy")),
            vec![expected],
        ),
        (
            "more frames than T",
            400,
            client()
                .post(url(&s, FRAMES))
                .header("content-type", "application/x-npy")
                .body(nine),
            vec!["[9, 2, 8, 8]", expected],
        ),
        (
            "float64 .npy",
            400,
            client()
                .post(url(&s, FRAMES))
                .header("content-type", "application/x-npy")
                .body(f8),
            vec!["'<f8'", "'<f4' (float32), '|u1' (uint8) or '|b1' (bool)"],
        ),
        (
            "not an .npy file",
            400,
            client()
                .post(url(&s, FRAMES))
                .header("content-type", "application/x-npy")
                .body(b"hello".to_vec()),
            vec!["magic", "accepted"],
        ),
        (
            "JSON values that are not whole frames",
            400,
            client()
                .post(url(&s, FRAMES))
                .json(&json!({"tensor": vec![0.0; frame + 1]})),
            vec!["129 values without a shape", "[t, 2, 8, 8]"],
        ),
        (
            "JSON shape that does not hold the values",
            400,
            client()
                .post(url(&s, FRAMES))
                .json(&json!({"tensor": vec![0.0; frame], "shape": [2, 2, 8, 8]})),
            vec!["`shape` [2, 2, 8, 8] needs 256"],
        ),
        (
            "JSON dtype not accepted",
            400,
            client().post(url(&s, FRAMES)).json(
                &json!({"tensor": vec![0.0; frame], "shape": [1, 2, 8, 8], "dtype": "int64"}),
            ),
            vec!["\"int64\"", "float32|uint8|bool"],
        ),
        (
            "uint8 out of range",
            400,
            client().post(url(&s, FRAMES)).json(
                &json!({"tensor": vec![300.0; frame], "shape": [1, 2, 8, 8], "dtype": "uint8"}),
            ),
            vec!["300", "uint8 (an integer 0..=255)"],
        ),
        (
            "non-finite float",
            400,
            client()
                .post(url(&s, FRAMES))
                .json(&json!({"tensor": vec![1e39; frame], "shape": [1, 2, 8, 8]})),
            vec!["finite float32"],
        ),
        (
            "image to a tensor model",
            415,
            client()
                .post(url(&s, FRAMES))
                .header("content-type", "image/png")
                .body(png.clone()),
            vec![
                "takes a tensor, not an image",
                expected,
                "application/x-npy",
            ],
        ),
        (
            "multipart image to a tensor model",
            415,
            client().post(url(&s, STATIC)).multipart(
                reqwest::multipart::Form::new()
                    .part("image", reqwest::multipart::Part::bytes(png.clone())),
            ),
            vec!["takes a tensor, not an image", "[3, 5] float32|uint8|bool"],
        ),
        (
            "JSON image to a tensor model",
            415,
            client().post(url(&s, FRAMES)).json(&json!({
                "image": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &png)
            })),
            vec!["takes a tensor, not an image"],
        ),
        (
            "SEENN-II on per_step frames",
            400,
            client()
                .post(url(&s, &format!("{FRAMES}?rule=policy")))
                .header("content-type", "application/x-npy")
                .body(good.clone()),
            vec![
                "the policy must see the whole input before the SNN runs",
                "accepted rules: confidence, fixed",
            ],
        ),
        (
            "static model given frames",
            400,
            client()
                .post(url(&s, STATIC))
                .header("content-type", "application/x-npy")
                .body(npy::write_f32(&[2, 3, 5], &[0.0; 30]).expect("npy")),
            vec!["[2, 3, 5]", "expected [3, 5] float32|uint8|bool"],
        ),
    ];
    for (what, status, req, needles) in cases {
        let r = req.send().await.expect("request");
        let got = r.status().as_u16();
        let body: Value = r.json().await.expect("json error");
        assert_eq!(got, status, "{what}: {body}");
        let msg = body["error"].as_str().expect("error message");
        for n in needles {
            assert!(msg.contains(n), "{what}: {msg:?} lacks {n:?}");
        }
    }
    // Still serving.
    let (status, b) = post_npy(&s, FRAMES, good).await;
    assert_eq!(status, 200, "{b}");
    let ready = client()
        .get(url(&s, "/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn image_models_take_npy_of_their_preprocessed_shape_only() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = start(config(dir.path())).await;
    let pkg = policy_package();
    let m = seenn_serve::model::read_manifest(&pkg).expect("manifest");
    let gs = &golden(&pkg).samples[0];
    let x = gs.read_input(&pkg, &m).expect("tensor");
    let path = "/v1/models/fashion-mnist/classify";
    let (status, b) = post_npy(&s, path, npy::write_f32(&[1, 28, 28], &x).expect("npy")).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["class_id"], gs.class_id);
    assert_eq!(b["timesteps_used"], gs.exit_timestep);
    let (status, b) = post_npy(&s, path, npy::write_f32(&[28, 28], &x).expect("npy")).await;
    assert_eq!(status, 400, "{b}");
    let msg = b["error"].as_str().expect("message");
    assert!(msg.contains("expected [1, 28, 28] float32"), "{msg}");
    // Today's flat JSON tensor still works.
    let (status, b) = post_json(&s, path, json!({"tensor": x})).await;
    assert_eq!((status, &b["class_id"]), (200, &json!(gs.class_id)), "{b}");
    s.shutdown().await;
}

/// Open Inference Protocol over REST: metadata with the real shape, UINT8/BOOL/FP32 inputs in
/// JSON and in binary, [N, t, *shape] batches, and the errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_inference_rest_takes_tensors() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = start(tensor_config(dir.path())).await;
    let c = client();
    let md: Value = c
        .get(url(&s, "/v2/models/lif-frames"))
        .send()
        .await
        .expect("metadata")
        .json()
        .await
        .expect("json");
    assert_eq!(
        md["inputs"],
        json!([{"name": "input", "datatype": "UINT8", "shape": [-1, -1, 2, 8, 8]}])
    );
    let md: Value = c
        .get(url(&s, "/v2/models/lif-static"))
        .send()
        .await
        .expect("metadata")
        .json()
        .await
        .expect("json");
    assert_eq!(
        md["inputs"],
        json!([{"name": "input", "datatype": "FP32", "shape": [-1, 3, 5]}])
    );

    let pkg = frames_package();
    let g = golden(&pkg);
    // Two uint8 samples as one [2, 8, 2, 8, 8] UINT8 request (JSON integers).
    let (_, a0, _) = sample(&pkg, 0);
    let (_, a1, _) = sample(&pkg, 1);
    let data: Vec<u8> = a0.data.iter().chain(&a1.data).map(|v| *v as u8).collect();
    let infer = |body: Value| {
        let c = client();
        let u = url(&s, "/v2/models/lif-frames/infer");
        async move {
            let r = c.post(u).json(&body).send().await.expect("infer");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.expect("json"))
        }
    };
    let (status, r) = infer(json!({"inputs": [{"name": "input", "datatype": "UINT8",
        "shape": [2, 8, 2, 8, 8], "data": data}]}))
    .await;
    assert_eq!(status, 200, "{r}");
    let out = |r: &Value, name: &str| -> Value {
        r["outputs"]
            .as_array()
            .and_then(|o| o.iter().find(|t| t["name"] == name))
            .map(|t| t["data"].clone())
            .expect("output")
    };
    assert_eq!(
        out(&r, "class_ids"),
        json!([g.samples[0].class_id, g.samples[1].class_id])
    );
    assert_eq!(
        out(&r, "timesteps"),
        json!([g.samples[0].exit_timestep, g.samples[1].exit_timestep])
    );
    // BOOL in JSON (true/false), 3 frames.
    let (_, a4, _) = sample(&pkg, 4);
    let frame = 128;
    let bools: Vec<bool> = a4.data[..3 * frame].iter().map(|v| *v == 1.0).collect();
    let (status, r) = infer(json!({"inputs": [{"name": "input", "datatype": "BOOL",
        "shape": [1, 3, 2, 8, 8], "data": bools}]}))
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        out(&r, "timesteps"),
        json!([3]),
        "three frames, three steps at most"
    );
    // FP32 through the binary tensor data extension.
    let raw: Vec<u8> = a1.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = serde_json::to_vec(&json!({"inputs": [{"name": "input", "datatype": "FP32",
        "shape": [1, 8, 2, 8, 8], "parameters": {"binary_data_size": raw.len()}}]}))
    .expect("json");
    let mut body = header.clone();
    body.extend_from_slice(&raw);
    let r = c
        .post(url(&s, "/v2/models/lif-frames/infer"))
        .header("inference-header-content-length", header.len().to_string())
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .expect("binary infer");
    assert_eq!(r.status().as_u16(), 200);
    let r: Value = r.json().await.expect("json");
    assert_eq!(out(&r, "class_ids"), json!([g.samples[1].class_id]));
    // Errors name the shape and datatypes accepted.
    for (input, needle) in [
        (
            json!({"name": "input", "datatype": "UINT8", "shape": [1, 9, 2, 8, 8], "data": vec![0; 9 * frame]}),
            "this model takes [N, t, 2, 8, 8] with 1 ≤ t ≤ 8, FP32|UINT8|BOOL",
        ),
        (
            json!({"name": "input", "datatype": "UINT8", "shape": [1, 2, 8, 8], "data": vec![0; frame]}),
            "this model takes [N, t, 2, 8, 8]",
        ),
        (
            json!({"name": "input", "datatype": "UINT8", "shape": [1, 1, 2, 8, 8], "data": vec![256; frame]}),
            "not a UINT8",
        ),
        (
            json!({"name": "input", "datatype": "BOOL", "shape": [1, 1, 2, 8, 8], "data": vec![2; frame]}),
            "not a BOOL",
        ),
        (
            json!({"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGVsbG8="]}),
            "takes tensors, not images",
        ),
        (
            json!({"name": "input", "datatype": "INT64", "shape": [1, 1, 2, 8, 8], "data": vec![0; frame]}),
            "accepted: FP32, UINT8 or BOOL",
        ),
    ] {
        let (status, r) = infer(json!({"inputs": [input]})).await;
        assert_eq!(status, 400, "{r}");
        let msg = r["error"].as_str().expect("message");
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }
    let (status, _) = infer(json!({"inputs": [{"name": "input", "datatype": "UINT8",
        "shape": [2, 8, 2, 8, 8], "data": data}]}))
    .await;
    assert_eq!(status, 200, "still serving");
    s.shutdown().await;
}

/// Open Inference Protocol over gRPC (uint_contents, bool_contents, raw_input_contents) and
/// gRPC Classify's tensor (floats or raw bytes with a dtype), with their errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_takes_tensors() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = start(tensor_config(dir.path())).await;
    let pkg = frames_package();
    let g = golden(&pkg);
    let (_, a0, _) = sample(&pkg, 0);
    let (_, a3, _) = sample(&pkg, 3);
    let mut oc = GrpcInferenceServiceClient::connect(format!("http://{}", s.grpc_addr))
        .await
        .expect("connect");
    let md = oc
        .model_metadata(oip::ModelMetadataRequest {
            name: "lif-frames".into(),
            version: String::new(),
        })
        .await
        .expect("metadata")
        .into_inner();
    assert_eq!(md.inputs.len(), 1);
    assert_eq!(
        (md.inputs[0].datatype.as_str(), md.inputs[0].shape.clone()),
        ("UINT8", vec![-1, -1, 2, 8, 8])
    );
    let request = |datatype: &str,
                   shape: Vec<i64>,
                   contents: Option<oip::InferTensorContents>,
                   raw: Vec<Vec<u8>>| {
        oip::ModelInferRequest {
            model_name: "lif-frames".into(),
            inputs: vec![oip::model_infer_request::InferInputTensor {
                name: "input".into(),
                datatype: datatype.into(),
                shape,
                contents,
                ..Default::default()
            }],
            raw_input_contents: raw,
            ..Default::default()
        }
    };
    let class_ids = |r: &oip::ModelInferResponse| -> Vec<i64> {
        let i = r
            .outputs
            .iter()
            .position(|o| o.name == "class_ids")
            .expect("class_ids");
        r.raw_output_contents[i]
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    };
    // UINT8 in uint_contents.
    let uints: Vec<u32> = a0.data.iter().chain(&a3.data).map(|v| *v as u32).collect();
    let r = oc
        .model_infer(request(
            "UINT8",
            vec![2, 8, 2, 8, 8],
            Some(oip::InferTensorContents {
                uint_contents: uints,
                ..Default::default()
            }),
            vec![],
        ))
        .await
        .expect("uint8 infer")
        .into_inner();
    assert_eq!(
        class_ids(&r),
        vec![g.samples[0].class_id as i64, g.samples[3].class_id as i64]
    );
    // UINT8 as raw bytes, and BOOL in bool_contents.
    let raw: Vec<u8> = a3.data.iter().map(|v| *v as u8).collect();
    let r = oc
        .model_infer(request("UINT8", vec![1, 8, 2, 8, 8], None, vec![raw]))
        .await
        .expect("raw infer")
        .into_inner();
    assert_eq!(class_ids(&r), vec![g.samples[3].class_id as i64]);
    let (_, a4, _) = sample(&pkg, 4);
    let r = oc
        .model_infer(request(
            "BOOL",
            vec![1, 8, 2, 8, 8],
            Some(oip::InferTensorContents {
                bool_contents: a4.data.iter().map(|v| *v == 1.0).collect(),
                ..Default::default()
            }),
            vec![],
        ))
        .await
        .expect("bool infer")
        .into_inner();
    assert_eq!(class_ids(&r), vec![g.samples[4].class_id as i64]);
    let e = oc
        .model_infer(request(
            "UINT8",
            vec![1, 8, 2, 8, 9],
            None,
            vec![vec![0; 8 * 144]],
        ))
        .await
        .expect_err("wrong shape");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("[N, t, 2, 8, 8] with 1 ≤ t ≤ 8"),
        "{}",
        e.message()
    );

    // gRPC Classify: floats with a shape, raw uint8 with a dtype.
    let mut c = ClassifierClient::connect(format!("http://{}", s.grpc_addr))
        .await
        .expect("connect");
    let classify = |t: pb::Tensor, model: &str| pb::ClassifyRequest {
        model: model.into(),
        input: Some(pb::classify_request::Input::Tensor(t)),
        ..Default::default()
    };
    let r = c
        .classify(classify(
            pb::Tensor {
                shape: vec![8, 2, 8, 8],
                data: a3.data.clone(),
                ..Default::default()
            },
            "lif-frames",
        ))
        .await
        .expect("float tensor")
        .into_inner();
    assert_eq!(
        (r.class_id as usize, r.timesteps_used as usize),
        (g.samples[3].class_id, g.samples[3].exit_timestep)
    );
    let r = c
        .classify(classify(
            pb::Tensor {
                shape: vec![2, 2, 8, 8],
                dtype: "uint8".into(),
                raw: a0.data[..256].iter().map(|v| *v as u8).collect(),
                ..Default::default()
            },
            "lif-frames",
        ))
        .await
        .expect("raw uint8 tensor")
        .into_inner();
    assert_eq!((r.timesteps_used, r.max_timesteps), (2, 2));
    let sg = golden(&static_tensor_package());
    let (_, sa, _) = sample(&static_tensor_package(), 1);
    let r = c
        .classify(classify(
            pb::Tensor {
                shape: vec![3, 5],
                raw: sa.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ..Default::default()
            },
            "lif-static",
        ))
        .await
        .expect("static raw float32")
        .into_inner();
    assert_eq!(r.class_id as usize, sg.samples[1].class_id);
    for (what, req, needle) in [
        (
            "wrong shape",
            classify(
                pb::Tensor {
                    shape: vec![8, 2, 8],
                    data: vec![0.0; 128],
                    ..Default::default()
                },
                "lif-frames",
            ),
            "expected [t, 2, 8, 8]",
        ),
        (
            "bad dtype",
            classify(
                pb::Tensor {
                    shape: vec![1, 2, 8, 8],
                    dtype: "int16".into(),
                    raw: vec![0; 256],
                    ..Default::default()
                },
                "lif-frames",
            ),
            "float32|uint8|bool",
        ),
        (
            "raw too short",
            classify(
                pb::Tensor {
                    shape: vec![3, 5],
                    raw: vec![0; 7],
                    ..Default::default()
                },
                "lif-static",
            ),
            "not a multiple of 4",
        ),
        (
            "data and raw",
            classify(
                pb::Tensor {
                    shape: vec![3, 5],
                    data: vec![0.0; 15],
                    raw: vec![0; 60],
                    ..Default::default()
                },
                "lif-static",
            ),
            "give one",
        ),
        (
            "an image",
            pb::ClassifyRequest {
                model: "lif-static".into(),
                input: Some(pb::classify_request::Input::Image(vec![
                    0x89, b'P', b'N', b'G',
                ])),
                ..Default::default()
            },
            "takes a tensor, not an image",
        ),
    ] {
        let e = c.classify(req).await.expect_err(what);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{what}");
        assert!(e.message().contains(needle), "{what}: {}", e.message());
    }
    // ListModels says which models take tensors and how.
    let list = c
        .list_models(pb::ListModelsRequest {})
        .await
        .expect("list")
        .into_inner();
    let frames = list
        .models
        .iter()
        .find(|m| m.name == "lif-frames")
        .expect("lif-frames");
    assert_eq!(
        (
            frames.input_kind.as_str(),
            frames.input_dtype.as_str(),
            frames.input_time.as_str()
        ),
        ("tensor", "uint8", "per_step")
    );
    assert_eq!(frames.input_shape, vec![2, 8, 8]);
    s.shutdown().await;
}
