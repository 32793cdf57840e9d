//! `seenn simulate`: one package run through the serving engine's batch buffers ([`Slots`]) with no
//! exit rule, for holding the server's numbers against the framework a model came from.
//!
//! The input is a `.npy` file: `[T, N, *shape]` for a per_step tensor model (T frames for each of
//! N samples; step k reads frame k), `[N, *shape]` for a static tensor model and `[N, C, H, W]`
//! (preprocessed float32) for an image model, which then run `--steps` steps (default the
//! manifest's T). The output is the step graph's raw output at every step, `[T, N, K]` float32
//! (no aggregation, no softmax), and with `--states-out PREFIX` every state after every step as
//! `PREFIX<i>.npy`, `[T, N, *state_shape]` (i in the manifest's order).
//!
//! The sessions are built as `seenn serve` builds them on the CPU (one intra-op thread unless
//! `--intra-threads`), and all N samples run together as one batch (in chunks of `--max-batch`
//! rows when N is larger): ONNX Runtime may round a row differently depending on how many rows
//! share a run, so a parity run that compares bit for bit batches its rows the same way.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use crate::engine::slots::Slots;
use crate::graphs::{self, Sessions};
use crate::model::manifest::Manifest;
use crate::npy;
use crate::runtime::{self, Device, SessionOptions};

#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// The model package folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Input .npy: [T, N, *shape] (per_step), [N, *shape] (static tensor) or [N, C, H, W]
    /// (image model, preprocessed float32); float32, uint8 or bool.
    #[arg(long)]
    pub input: PathBuf,
    /// Output .npy: the step graph's output at every step, [T, N, K] float32.
    #[arg(long)]
    pub out: PathBuf,
    /// Steps to run: default the manifest's T for static inputs, the input's T for per_step ones
    /// (then at most that many).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Also write every state after every step as PREFIX<i>.npy, [T, N, *state_shape].
    #[arg(long)]
    pub states_out: Option<String>,
    /// Rows per run: the N samples run in chunks of this many (all together when N fits).
    #[arg(long, default_value_t = 256)]
    pub max_batch: usize,
    #[arg(long, default_value_t = 1)]
    pub intra_threads: usize,
    #[arg(long, env = "SEENN_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
}

/// Why the rows cannot be simulated.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// The input or the step count does not fit the model; the message says what it takes.
    #[error("{0}")]
    Invalid(String),
    /// The engine's batch buffers or a graph run failed.
    #[error(transparent)]
    Engine(#[from] crate::error::Error),
}

/// What a simulation produced: the outputs `[T, N, K]` and each state `[T, N, *shape]`, flat.
pub struct Simulation {
    pub steps: usize,
    pub rows: usize,
    pub outputs: Vec<f32>,
    pub states: Vec<Vec<f32>>,
}

/// Runs `seenn simulate` and writes its files.
pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    let (env, _) = runtime::init(args.ort_lib.as_deref())?;
    let m = crate::model::read_manifest(&args.model)?;
    let opts = SessionOptions {
        device: Device::Cpu,
        intra_threads: args.intra_threads.max(1),
    };
    let mut sessions = graphs::load_sessions(&args.model, &m, &env, &opts)?;
    let input = args.input.display();
    let bytes = std::fs::read(&args.input).with_context(|| format!("cannot read {input}"))?;
    let x = npy::read(&bytes).with_context(|| input.to_string())?;
    let sim = simulate(&mut sessions, &m, &x, args.steps, args.max_batch)
        .with_context(|| input.to_string())?;
    let k = m.num_classes();
    write(&args.out, &[sim.steps, sim.rows, k], &sim.outputs)?;
    if let Some(prefix) = &args.states_out {
        for (i, (st, values)) in m.graphs.step.states.iter().zip(&sim.states).enumerate() {
            let mut shape = vec![sim.steps, sim.rows];
            shape.extend_from_slice(&st.shape);
            write(Path::new(&format!("{prefix}{i}.npy")), &shape, values)?;
        }
    }
    eprintln!(
        "simulated {} rows × {} steps of {}: {}",
        sim.rows,
        sim.steps,
        m.name,
        args.out.display()
    );
    Ok(())
}

fn write(path: &Path, shape: &[usize], data: &[f32]) -> anyhow::Result<()> {
    let bytes = npy::write_f32(shape, data)?;
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// What the input must look like, for errors.
fn expected(m: &Manifest) -> String {
    let dims = m
        .input
        .dims()
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if m.input.per_step() {
        format!("[T, N, {dims}] (T frames of N samples)")
    } else {
        format!("[N, {dims}] (N samples)")
    }
}

/// Runs the rows of `x` through the step graph with no exit (see the module docs).
pub fn simulate(
    s: &mut Sessions,
    m: &Manifest,
    x: &npy::Array,
    steps: Option<usize>,
    max_batch: usize,
) -> Result<Simulation, SimulateError> {
    let dims = m.input.dims();
    let frame = m.input.len();
    let per_step = m.input.per_step();
    let lead = if per_step { 2 } else { 1 };
    if x.shape.len() != dims.len() + lead || x.shape[lead..] != *dims {
        return Err(SimulateError::Invalid(format!(
            "input of shape {:?}; model {} takes {}",
            x.shape,
            m.name,
            expected(m)
        )));
    }
    let (frames, rows) = if per_step {
        (x.shape[0], x.shape[1])
    } else {
        (1, x.shape[0])
    };
    let steps = match (per_step, steps) {
        (true, Some(n)) if n > frames => {
            return Err(SimulateError::Invalid(format!(
                "--steps {n} is more than the input's {frames} frames"
            )))
        }
        (true, n) => n.unwrap_or(frames),
        (false, n) => n.unwrap_or(m.timesteps),
    };
    if steps == 0 || rows == 0 {
        return Err(SimulateError::Invalid(format!(
            "nothing to run: {rows} rows, {steps} steps (shape {:?})",
            x.shape
        )));
    }
    let k = m.num_classes();
    let states = &m.graphs.step.states;
    let cap = max_batch.clamp(1, rows);
    let mut slots: Slots = crate::engine::new_slots(m, cap, None)?;
    let mut outputs = vec![0f32; steps * rows * k];
    let mut state_out: Vec<Vec<f32>> = states
        .iter()
        .map(|st| vec![0f32; steps * rows * st.len()])
        .collect();
    // Frame f of row r: x[f, r] (per_step) or x[r] (static).
    let at = |f: usize, r: usize| -> &[f32] {
        let i = if per_step { f * rows + r } else { r };
        &x.data[i * frame..(i + 1) * frame]
    };
    let mut first = 0;
    while first < rows {
        let n = cap.min(rows - first);
        slots.clear();
        let inputs: Vec<&[f32]> = (first..first + n).map(|r| at(0, r)).collect();
        slots.admit(&inputs, s.encoder.as_mut(), true)?;
        let mut next = Vec::with_capacity(n * frame);
        for t in 0..steps {
            if per_step && t > 0 {
                next.clear();
                for r in first..first + n {
                    next.extend_from_slice(at(t, r));
                }
                slots.write_features(0, &next)?;
            }
            slots.step(&mut s.step)?;
            for i in 0..n {
                let row = first + i;
                let o = (t * rows + row) * k;
                outputs[o..o + k].copy_from_slice(slots.logits(i));
                for (si, st) in states.iter().enumerate() {
                    let len = st.len();
                    let v = slots.membrane(si, i)?;
                    let o = (t * rows + row) * len;
                    state_out[si][o..o + len].copy_from_slice(&v);
                }
            }
        }
        first += n;
    }
    Ok(Simulation {
        steps,
        rows,
        outputs,
        states: state_out,
    })
}
