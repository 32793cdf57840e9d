//! Criterion micro-benchmarks: preprocessing of one image, and one engine step (`step.onnx` over the
//! batch, the way the engine feeds it) at batch 1, 8 and 32, for the committed fashion-mnist package.
//!   cargo bench --bench engine

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ort::value::Tensor;

fn package() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/fashion-mnist")
}

fn sample_png() -> Vec<u8> {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(package().join("golden.json")).expect("golden.json"),
    )
    .expect("json");
    let file = golden["samples"][0]["file"]
        .as_str()
        .expect("file")
        .to_string();
    std::fs::read(package().join(file)).expect("sample")
}

fn preprocessing(c: &mut Criterion) {
    let m = seenn_serve::model::read_manifest(&package()).expect("manifest");
    let png = sample_png();
    let mut g = c.benchmark_group("preprocess");
    g.throughput(Throughput::Elements(1));
    g.bench_function("png_28x28_to_tensor", |b| {
        b.iter(|| {
            seenn_serve::preprocess::image_to_tensor(black_box(&png), None, &m.input, 1 << 24)
                .expect("ok")
        })
    });
    g.finish();
}

fn engine_step(c: &mut Criterion) {
    let (env, _) = seenn_serve::runtime::init(None).expect("ONNX Runtime (make ort)");
    let m = seenn_serve::model::read_manifest(&package()).expect("manifest");
    let opts = seenn_serve::runtime::SessionOptions {
        device: seenn_serve::runtime::Device::Cpu,
        intra_threads: 1,
    };
    let mut s = seenn_serve::graphs::load_sessions(&package(), &m, &env, &opts).expect("sessions");
    let enc = m.graphs.encoder.as_ref().expect("encoder");
    let st = &m.graphs.step;
    let x = seenn_serve::preprocess::image_to_tensor(&sample_png(), None, &m.input, 1 << 24)
        .expect("x");
    let features: Vec<f32> = {
        let out = s
            .encoder
            .as_mut()
            .expect("encoder session")
            .run(ort::inputs![enc.input.as_str() => Tensor::from_array((vec![1usize, 1, 28, 28], x)).expect("t")])
            .expect("encoder");
        out[enc.output.as_str()]
            .try_extract_tensor::<f32>()
            .expect("f32")
            .1
            .to_vec()
    };
    let mut g = c.benchmark_group("engine_step");
    for batch in [1usize, 8, 32] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &n| {
            b.iter(|| {
                let mut fshape = vec![n];
                fshape.extend_from_slice(&enc.output_shape);
                let mut inputs: Vec<(String, ort::session::SessionInputValue<'_>)> = vec![(
                    st.input.clone(),
                    Tensor::from_array((fshape, features.repeat(n)))
                        .expect("t")
                        .into(),
                )];
                for spec in &st.states {
                    let mut shape = vec![n];
                    shape.extend_from_slice(&spec.shape);
                    let v = vec![spec.initial_value; n * spec.len()];
                    inputs.push((
                        spec.input.clone(),
                        Tensor::from_array((shape, v)).expect("t").into(),
                    ));
                }
                let out = s.step.run(inputs).expect("step");
                black_box(
                    out[st.logits.as_str()]
                        .try_extract_tensor::<f32>()
                        .expect("f32")
                        .1[0],
                );
            })
        });
    }
    g.finish();
}

criterion_group!(benches, preprocessing, engine_step);
criterion_main!(benches);
