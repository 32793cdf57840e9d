//! One package's ONNX Runtime sessions: built and checked against the manifest, warmed up, and
//! the batch-1 reference run that warm-up, the engine's self-test and the golden tests share.

use std::path::Path;

use ort::session::Session;
use ort::value::Tensor;

use crate::error::Error;
use crate::model::manifest::{Aggregation, ExitGraph, Manifest};
use crate::model::{err, invalid, LoadError, PackageError};
use crate::runtime::{self, Expect, SessionOptions};

/// The model's ONNX Runtime sessions, owned by the engine thread (`Session::run` takes `&mut`).
pub struct Sessions {
    pub encoder: Option<Session>,
    pub step: Session,
    pub policy: Option<Session>,
    /// The learned exit rule (`exit.onnx`), when the package has one.
    pub exit: Option<Session>,
}

fn ort_err(what: &str, e: ort::Error) -> Error {
    Error::internal_from(what, e)
}

/// Runs a graph with one input and returns its one named output, flattened.
pub fn run_single_input(
    session: &mut Session,
    input: &str,
    output: &str,
    shape: Vec<usize>,
    data: Vec<f32>,
) -> Result<Vec<f32>, Error> {
    let tensor = Tensor::from_array((shape, data)).map_err(|e| ort_err("input tensor", e))?;
    let outputs = session
        .run(ort::inputs![input => tensor])
        .map_err(|e| ort_err("onnxruntime run", e))?;
    let value = outputs
        .get(output)
        .ok_or_else(|| Error::internal(format!("graph output {output:?} missing")))?;
    let (_, data) = value
        .try_extract_tensor::<f32>()
        .map_err(|e| ort_err("output tensor", e))?;
    Ok(data.to_vec())
}

/// Runs `exit.onnx` on `rows` requests: `aggregate` holds their running sums `[rows, K]` (float32),
/// `timesteps` their t; returns one stop probability per row.
pub fn run_exit(
    session: &mut Session,
    g: &ExitGraph,
    aggregate: Vec<f32>,
    timesteps: Vec<f32>,
) -> Result<Vec<f32>, Error> {
    let rows = timesteps.len();
    if rows == 0 {
        return Ok(Vec::new());
    }
    let k = aggregate.len() / rows;
    let agg =
        Tensor::from_array((vec![rows, k], aggregate)).map_err(|e| ort_err("aggregate", e))?;
    let ts = Tensor::from_array((vec![rows, 1], timesteps)).map_err(|e| ort_err("timestep", e))?;
    let outputs = session
        .run(ort::inputs![g.aggregate_input.as_str() => agg, g.timestep_input.as_str() => ts])
        .map_err(|e| ort_err("exit.onnx run", e))?;
    let value = outputs
        .get(&g.output)
        .ok_or_else(|| Error::internal(format!("exit.onnx output {:?} missing", g.output)))?;
    let (_, data) = value
        .try_extract_tensor::<f32>()
        .map_err(|e| ort_err("exit.onnx output", e))?;
    if data.len() != rows {
        return Err(Error::internal(format!(
            "exit.onnx returned {} values for {rows} rows",
            data.len()
        )));
    }
    Ok(data.to_vec())
}

/// Builds and checks the sessions of one package, then warms them up (one full T-step run).
pub fn load_sessions(
    dir: &Path,
    m: &Manifest,
    env: &ort::environment::Environment,
    opts: &SessionOptions,
) -> Result<Sessions, LoadError> {
    let graphs = PackageGraphs { dir, env, opts };
    let input_dims = m.input.dims();
    let classes = [m.num_classes()];
    let encoder = match &m.graphs.encoder {
        Some(g) => Some(graphs.load(
            &g.file,
            &[Expect {
                name: &g.input,
                dims: input_dims,
            }],
            &[Expect {
                name: &g.output,
                dims: &g.output_shape,
            }],
        )?),
        None => None,
    };
    let step = graphs.load_step(m, &classes)?;
    let policy = match &m.graphs.policy {
        Some(p) => Some(graphs.load(
            &p.file,
            &[Expect {
                name: &p.input,
                dims: input_dims,
            }],
            &[Expect {
                name: &p.output,
                dims: &[p.actions.len()],
            }],
        )?),
        None => None,
    };
    let exit = match &m.graphs.exit {
        Some(x) => Some(graphs.load(
            &x.file,
            &[
                Expect {
                    name: &x.aggregate_input,
                    dims: &classes,
                },
                Expect {
                    name: &x.timestep_input,
                    dims: &[1],
                },
            ],
            &[Expect {
                name: &x.output,
                dims: &[1],
            }],
        )?),
        None => None,
    };
    let mut sessions = Sessions {
        encoder,
        step,
        policy,
        exit,
    };
    warm_up(&mut sessions, m)
        .map_err(|e| err(&dir.join(&m.graphs.step.file), PackageError::WarmUp(e)))?;
    Ok(sessions)
}

/// Where a package's graphs are and how to build their sessions.
struct PackageGraphs<'a> {
    dir: &'a Path,
    env: &'a ort::environment::Environment,
    opts: &'a SessionOptions,
}

impl PackageGraphs<'_> {
    /// The session of `file`, checked to have exactly these inputs and outputs.
    fn load(
        &self,
        file: &str,
        inputs: &[Expect<'_>],
        outputs: &[Expect<'_>],
    ) -> Result<Session, LoadError> {
        let path = self.dir.join(file);
        if !path.exists() {
            return Err(invalid(&path, "file missing (named in manifest.json)"));
        }
        let s = runtime::build_session(self.env, &path, self.opts).map_err(|e| err(&path, e))?;
        runtime::check_graph(&s, inputs, outputs).map_err(|e| err(&path, e))?;
        Ok(s)
    }

    /// `step.onnx`: the features (the encoder's output, else the input) and every state in, the
    /// logits and every state out.
    fn load_step(&self, m: &Manifest, classes: &[usize]) -> Result<Session, LoadError> {
        let g = &m.graphs.step;
        let feature_dims = match &m.graphs.encoder {
            Some(e) => &e.output_shape[..],
            None => m.input.dims(),
        };
        let mut ins = vec![Expect {
            name: &g.input,
            dims: feature_dims,
        }];
        let mut outs = vec![Expect {
            name: &g.logits,
            dims: classes,
        }];
        for s in &g.states {
            ins.push(Expect {
                name: &s.input,
                dims: &s.shape,
            });
            outs.push(Expect {
                name: &s.output,
                dims: &s.shape,
            });
        }
        self.load(&g.file, &ins, &outs)
    }
}

/// Runs one input alone (batch 1) through the encoder and `timesteps` steps, carrying the
/// membranes, and returns the logits of every step. `input` is one frame (`[*dims]`), or for a
/// per_step input at least `timesteps` frames (`[t, *dims]`; step k reads frame k). The reference
/// path for warm-up, the engine's self-test and the golden-output tests.
pub fn run_single(
    s: &mut Sessions,
    m: &Manifest,
    input: &[f32],
    timesteps: usize,
) -> Result<Vec<Vec<f32>>, Error> {
    let frame = m.input.len();
    let per_step = m.input.per_step();
    if per_step && input.len() < timesteps * frame {
        return Err(Error::internal(format!(
            "{} values hold {} frames of {frame}; {timesteps} steps need {timesteps}",
            input.len(),
            input.len() / frame.max(1)
        )));
    }
    if !per_step && input.len() != frame {
        return Err(Error::internal(format!(
            "{} values for an input of {frame}",
            input.len()
        )));
    }
    let mut shape = vec![1];
    shape.extend_from_slice(m.input.dims());
    let (features, mut fshape) = match (&mut s.encoder, &m.graphs.encoder) {
        (Some(sess), Some(g)) if !per_step => (
            run_single_input(sess, &g.input, &g.output, shape, input.to_vec())?,
            g.output_shape.clone(),
        ),
        _ => (input.to_vec(), m.input.dims().to_vec()),
    };
    fshape.insert(0, 1);
    let g = &m.graphs.step;
    let mut states: Vec<Vec<f32>> = g
        .states
        .iter()
        .map(|st| vec![st.initial_value; st.len()])
        .collect();
    let mut logits = Vec::with_capacity(timesteps);
    for t in 0..timesteps {
        let mut inputs: Vec<(String, ort::session::SessionInputValue<'_>)> =
            Vec::with_capacity(1 + states.len());
        let x = if per_step {
            features[t * frame..(t + 1) * frame].to_vec()
        } else {
            features.clone()
        };
        let f = Tensor::from_array((fshape.clone(), x)).map_err(|e| ort_err("input tensor", e))?;
        inputs.push((g.input.clone(), f.into()));
        for (st, v) in g.states.iter().zip(states) {
            let mut shape = vec![1];
            shape.extend_from_slice(&st.shape);
            inputs.push((
                st.input.clone(),
                Tensor::from_array((shape, v))
                    .map_err(|e| ort_err("state tensor", e))?
                    .into(),
            ));
        }
        let out = s
            .step
            .run(inputs)
            .map_err(|e| ort_err("onnxruntime run", e))?;
        let extract = |name: &str| -> Result<Vec<f32>, Error> {
            let v = out
                .get(name)
                .ok_or_else(|| Error::internal(format!("step output {name} missing")))?;
            Ok(v.try_extract_tensor::<f32>()
                .map_err(|e| ort_err("output tensor", e))?
                .1
                .to_vec())
        };
        logits.push(extract(&g.logits)?);
        states = g
            .states
            .iter()
            .map(|st| extract(&st.output))
            .collect::<Result<_, _>>()?;
    }
    Ok(logits)
}

/// The learned rule's stop probability after every step of `logits` (one request, batch 1), fed
/// the running sum accumulated in float64 and cast to float32, as the engine does.
pub fn learned_scores(
    session: &mut Session,
    g: &ExitGraph,
    logits: &[Vec<f32>],
) -> Result<Vec<f32>, Error> {
    learned_scores_for(session, g, logits, Aggregation::Sum)
}

/// [`learned_scores`] for a model's aggregation: the running sum (`sum` and `mean`: the learned
/// rule always reads the sum), or the last step's logits (`last`).
pub fn learned_scores_for(
    session: &mut Session,
    g: &ExitGraph,
    logits: &[Vec<f32>],
    aggregation: Aggregation,
) -> Result<Vec<f32>, Error> {
    let mut sum: Vec<f64> = Vec::new();
    let mut scores = Vec::with_capacity(logits.len());
    for (t, step) in logits.iter().enumerate() {
        sum.resize(step.len(), 0.0);
        for (s, z) in sum.iter_mut().zip(step) {
            if aggregation == Aggregation::Last {
                *s = f64::from(*z);
            } else {
                *s += f64::from(*z);
            }
        }
        let agg = sum.iter().map(|s| *s as f32).collect();
        scores.extend(run_exit(session, g, agg, vec![(t + 1) as f32])?);
    }
    Ok(scores)
}

/// Start-up warm-up and the engine's self-test: the policy and the exit head once and a few
/// steps on a zero input.
pub fn warm_up(s: &mut Sessions, m: &Manifest) -> Result<(), Error> {
    let steps = m.timesteps.min(4);
    let frames = if m.input.per_step() { steps } else { 1 };
    let zeros = vec![0f32; m.input.len() * frames];
    if let (Some(sess), Some(g)) = (&mut s.exit, &m.graphs.exit) {
        run_exit(sess, g, vec![0.0; m.num_classes()], vec![1.0])?;
    }
    if let (Some(sess), Some(g)) = (&mut s.policy, &m.graphs.policy) {
        let mut shape = vec![1];
        shape.extend_from_slice(m.input.dims());
        run_single_input(sess, &g.input, &g.output, shape, zeros.clone())?;
    }
    run_single(s, m, &zeros, steps).map(|_| ())
}
