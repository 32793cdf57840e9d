//! `seenn simulate` (the binary): every step's output and every state, for a batch of samples with
//! no exit, equal bit for bit to running step.onnx directly with ONNX Runtime, step by step, on the
//! same batch.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use ort::value::Tensor;
use seenn_serve::model::manifest::Manifest;
use seenn_serve::npy;

/// step.onnx run directly: `frames[t]` is the batch's input at step t (`[n, *dims]` flat); returns
/// the outputs of every step `[T, n, K]` and every state after every step `[T, n, *shape]`.
fn direct(pkg: &Path, m: &Manifest, n: usize, frames: &[Vec<f32>]) -> (Vec<f32>, Vec<Vec<f32>>) {
    let (env, _) = seenn_serve::runtime::init(None).expect("ONNX Runtime");
    let opts = seenn_serve::runtime::SessionOptions {
        device: seenn_serve::runtime::Device::Cpu,
        intra_threads: 1,
    };
    let g = &m.graphs.step;
    let mut session =
        seenn_serve::runtime::build_session(&env, &pkg.join(&g.file), &opts).expect("session");
    let mut states: Vec<Vec<f32>> = g
        .states
        .iter()
        .map(|st| vec![st.initial_value; n * st.len()])
        .collect();
    let mut outputs = Vec::new();
    let mut state_out = vec![Vec::new(); g.states.len()];
    let mut xshape = vec![n];
    xshape.extend_from_slice(m.input.dims());
    for x in frames {
        let mut inputs: Vec<(String, ort::session::SessionInputValue<'_>)> = vec![(
            g.input.clone(),
            Tensor::from_array((xshape.clone(), x.clone()))
                .expect("x")
                .into(),
        )];
        for (st, v) in g.states.iter().zip(&states) {
            let mut shape = vec![n];
            shape.extend_from_slice(&st.shape);
            inputs.push((
                st.input.clone(),
                Tensor::from_array((shape, v.clone()))
                    .expect("state")
                    .into(),
            ));
        }
        let out = session.run(inputs).expect("run");
        let get = |name: &str| -> Vec<f32> {
            out.get(name)
                .expect("output")
                .try_extract_tensor::<f32>()
                .expect("f32")
                .1
                .to_vec()
        };
        outputs.extend(get(&g.logits));
        for (i, st) in g.states.iter().enumerate() {
            states[i] = get(&st.output);
            state_out[i].extend_from_slice(&states[i]);
        }
    }
    (outputs, state_out)
}

fn simulate(pkg: &Path, input: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_seenn"))
        .args(["simulate", "--model"])
        .arg(pkg)
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .expect("seenn simulate runs")
}

fn read(path: &Path) -> npy::Array {
    npy::read(&std::fs::read(path).expect("output file")).expect("output .npy")
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn simulate_equals_step_onnx_run_directly_for_per_step_frames() {
    let pkg = frames_package();
    let m = seenn_serve::model::read_manifest(&pkg).expect("manifest");
    let g = golden(&pkg);
    let xs: Vec<Vec<f32>> = g
        .samples
        .iter()
        .map(|s| s.read_input(&pkg, &m).expect("sample"))
        .collect();
    let (n, t, frame) = (xs.len(), m.timesteps, m.input.len());
    // [T, N, *dims]: frame t of every sample, sample after sample.
    let frames: Vec<Vec<f32>> = (0..t)
        .map(|k| {
            xs.iter()
                .flat_map(|x| x[k * frame..(k + 1) * frame].iter().copied())
                .collect()
        })
        .collect();
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("x.npy");
    let mut shape = vec![t, n];
    shape.extend_from_slice(m.input.dims());
    std::fs::write(
        &input,
        npy::write_f32(&shape, &frames.concat()).expect("npy"),
    )
    .expect("write");
    let out = dir.path().join("y.npy");
    let prefix = dir.path().join("state_").display().to_string();
    let r = simulate(&pkg, &input, &out, &["--states-out", &prefix]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let y = read(&out);
    assert_eq!(y.shape, [t, n, m.num_classes()]);
    let (want, want_states) = direct(&pkg, &m, n, &frames);
    assert_eq!(
        bits(&y.data),
        bits(&want),
        "outputs differ from step.onnx run directly"
    );
    for (i, st) in m.graphs.step.states.iter().enumerate() {
        let s = read(&dir.path().join(format!("state_{i}.npy")));
        let mut shape = vec![t, n];
        shape.extend_from_slice(&st.shape);
        assert_eq!(s.shape, shape);
        assert_eq!(bits(&s.data), bits(&want_states[i]), "state {i}");
    }
    // The output of each sample equals its golden logits (run alone, batch 1) within atol.
    let k = m.num_classes();
    for (r, s) in g.samples.iter().enumerate() {
        for (step, logits) in s.logits.iter().enumerate() {
            let got = &y.data[(step * n + r) * k..(step * n + r + 1) * k];
            for (a, b) in got.iter().zip(logits) {
                assert!((a - b).abs() < 1e-4, "{} step {step}", s.file);
            }
        }
    }
    // Chunks of 2 rows and fewer steps than frames give the first steps of the same run (chunks
    // are separate runs: compared within atol).
    let r = simulate(&pkg, &input, &out, &["--steps", "3", "--max-batch", "2"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let y3 = read(&out);
    assert_eq!(y3.shape, [3, n, k]);
    for (a, b) in y3.data.iter().zip(&y.data) {
        assert!((a - b).abs() < 1e-5);
    }
}

#[test]
fn simulate_runs_static_inputs_for_the_manifest_t_or_steps() {
    let pkg = static_tensor_package();
    let m = seenn_serve::model::read_manifest(&pkg).expect("manifest");
    let xs: Vec<Vec<f32>> = golden(&pkg)
        .samples
        .iter()
        .map(|s| s.read_input(&pkg, &m).expect("sample"))
        .collect();
    let n = xs.len();
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("x.npy");
    let mut shape = vec![n];
    shape.extend_from_slice(m.input.dims());
    std::fs::write(&input, npy::write_f32(&shape, &xs.concat()).expect("npy")).expect("write");
    let out = dir.path().join("y.npy");
    for steps in [None, Some(6)] {
        let extra: Vec<String> = steps.map_or(vec![], |s| vec!["--steps".into(), s.to_string()]);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let r = simulate(&pkg, &input, &out, &extra);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let t = steps.unwrap_or(m.timesteps);
        let y = read(&out);
        assert_eq!(y.shape, [t, n, m.num_classes()]);
        let (want, _) = direct(&pkg, &m, n, &vec![xs.concat(); t]);
        assert_eq!(bits(&y.data), bits(&want));
    }
}

#[test]
fn simulate_says_what_input_it_takes() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("x.npy");
    let out = dir.path().join("y.npy");
    std::fs::write(
        &input,
        npy::write_f32(&[2, 2, 8, 8], &[0.0; 256]).expect("npy"),
    )
    .expect("w");
    let r = simulate(&frames_package(), &input, &out, &[]);
    assert!(!r.status.success());
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(
        e.contains("[2, 2, 8, 8]") && e.contains("[T, N, 2, 8, 8]"),
        "{e}"
    );
    std::fs::write(&input, b"not an npy file").expect("w");
    let r = simulate(&frames_package(), &input, &out, &[]);
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(e.contains("magic") && e.contains("accepted"), "{e}");
    std::fs::write(
        &input,
        npy::write_f32(&[3, 1, 2, 8, 8], &[0.0; 384]).expect("npy"),
    )
    .expect("w");
    let r = simulate(&frames_package(), &input, &out, &["--steps", "4"]);
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(
        e.contains("--steps 4 is more than the input's 3 frames"),
        "{e}"
    );
    assert!(!out.exists());
}
