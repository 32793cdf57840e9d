//! Model repository: load every package under `--models`, validate it against its graphs, warm it
//! up and start its engine.

pub mod manifest;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ort::value::Tensor;
use serde::{Deserialize, Serialize};

use crate::engine::{self, EngineConfig, EngineHandle, Sessions};
use crate::exit::RuleKind;
use crate::metrics::Metrics;
use crate::runtime::{self, Expect, SessionOptions};
use manifest::{Calibration, Manifest};

/// A model's default exit policy: what a request without overrides runs under.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExitPolicy {
    pub rule: RuleKind,
    pub alpha: f64,
    /// Timesteps for the `fixed` rule (and the cap for the others).
    pub timesteps: usize,
}

pub struct LoadedModel {
    pub manifest: Arc<Manifest>,
    pub calibration: Option<Calibration>,
    pub dir: PathBuf,
    pub engine: EngineHandle,
    pub provider: String,
    pub policy: RwLock<ExitPolicy>,
    /// The package's labelled sample images (`samples/<file>`, label), read once from golden.json.
    pub samples: Vec<(String, String)>,
}

impl LoadedModel {
    pub fn exit_policy(&self) -> ExitPolicy {
        match self.policy.read() {
            Ok(p) => *p,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    pub fn set_exit_policy(&self, p: ExitPolicy) {
        match self.policy.write() {
            Ok(mut g) => *g = p,
            Err(poisoned) => *poisoned.into_inner() = p,
        }
    }

    pub fn has_policy(&self) -> bool {
        self.manifest.graphs.policy.is_some()
    }
}

/// A package that failed to load: the file at fault and what is wrong with it.
#[derive(Debug, Clone)]
pub struct LoadError {
    pub file: PathBuf,
    pub message: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

fn err(file: &Path, message: impl Into<String>) -> LoadError {
    LoadError {
        file: file.to_path_buf(),
        message: message.into(),
    }
}

pub fn read_manifest(dir: &Path) -> Result<Manifest, LoadError> {
    let path = dir.join("manifest.json");
    let text =
        std::fs::read_to_string(&path).map_err(|e| err(&path, format!("cannot read: {e}")))?;
    parse_manifest(text.as_bytes()).map_err(|e| err(&path, e))
}

/// Parses and validates a manifest.json body (the file's bytes).
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, String> {
    let m: Manifest =
        serde_json::from_slice(bytes).map_err(|e| format!("invalid manifest: {e}"))?;
    m.validate()?;
    Ok(m)
}

/// Parses and validates a calibration.json body for a model of `timesteps` steps.
pub fn parse_calibration(bytes: &[u8], timesteps: usize) -> Result<Calibration, String> {
    let c: Calibration =
        serde_json::from_slice(bytes).map_err(|e| format!("invalid calibration: {e}"))?;
    c.validate(timesteps)?;
    Ok(c)
}

pub fn read_calibration(dir: &Path, timesteps: usize) -> Result<Option<Calibration>, LoadError> {
    let path = dir.join("calibration.json");
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&path).map_err(|e| err(&path, format!("cannot read: {e}")))?;
    parse_calibration(text.as_bytes(), timesteps)
        .map(Some)
        .map_err(|e| err(&path, e))
}

/// Builds and checks the sessions of one package, then warms them up (one full T-step run).
pub fn load_sessions(
    dir: &Path,
    m: &Manifest,
    env: &ort::environment::Environment,
    opts: &SessionOptions,
) -> Result<Sessions, LoadError> {
    let input_dims = m.input.shape();
    let open = |file: &str| -> Result<ort::session::Session, LoadError> {
        let path = dir.join(file);
        if !path.exists() {
            return Err(err(&path, "file missing (named in manifest.json)"));
        }
        runtime::build_session(env, &path, opts).map_err(|e| err(&path, e))
    };
    let encoder = match &m.graphs.encoder {
        Some(g) => {
            let s = open(&g.file)?;
            runtime::check_graph(
                &s,
                &[Expect {
                    name: &g.input,
                    dims: &input_dims,
                }],
                &[Expect {
                    name: &g.output,
                    dims: &g.output_shape,
                }],
            )
            .map_err(|e| err(&dir.join(&g.file), e))?;
            Some(s)
        }
        None => None,
    };
    let feature_dims: Vec<usize> = match &m.graphs.encoder {
        Some(g) => g.output_shape.clone(),
        None => input_dims.to_vec(),
    };
    let g = &m.graphs.step;
    let step = open(&g.file)?;
    let classes = [m.num_classes()];
    let mut ins = vec![Expect {
        name: &g.input,
        dims: &feature_dims,
    }];
    let mut outs = vec![Expect {
        name: &g.logits,
        dims: &classes,
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
    runtime::check_graph(&step, &ins, &outs).map_err(|e| err(&dir.join(&g.file), e))?;
    let policy = match &m.graphs.policy {
        Some(p) => {
            let s = open(&p.file)?;
            let actions = [p.actions.len()];
            runtime::check_graph(
                &s,
                &[Expect {
                    name: &p.input,
                    dims: &input_dims,
                }],
                &[Expect {
                    name: &p.output,
                    dims: &actions,
                }],
            )
            .map_err(|e| err(&dir.join(&p.file), e))?;
            Some(s)
        }
        None => None,
    };
    let mut sessions = Sessions {
        encoder,
        step,
        policy,
    };
    warm_up(&mut sessions, m).map_err(|e| {
        err(
            &dir.join(&m.graphs.step.file),
            format!("warm-up run failed: {e}"),
        )
    })?;
    Ok(sessions)
}

/// Runs one input alone (batch 1) through the encoder and `timesteps` steps, carrying the
/// membranes, and returns the logits of every step. The reference path for warm-up, the engine's
/// self-test and the golden-output tests.
pub fn run_single(
    s: &mut Sessions,
    m: &Manifest,
    input: &[f32],
    timesteps: usize,
) -> Result<Vec<Vec<f32>>, String> {
    let shape = vec![1, m.input.channels, m.input.height, m.input.width];
    let (features, mut fshape) = match (&mut s.encoder, &m.graphs.encoder) {
        (Some(sess), Some(g)) => (
            engine::run_single_input(sess, &g.input, &g.output, shape, input.to_vec())
                .map_err(|e| e.to_string())?,
            g.output_shape.clone(),
        ),
        _ => (input.to_vec(), m.input.shape().to_vec()),
    };
    fshape.insert(0, 1);
    let g = &m.graphs.step;
    let mut states: Vec<Vec<f32>> = g
        .states
        .iter()
        .map(|st| vec![st.initial_value; st.len()])
        .collect();
    let mut logits = Vec::with_capacity(timesteps);
    for _ in 0..timesteps {
        let mut inputs: Vec<(String, ort::session::SessionInputValue<'_>)> =
            Vec::with_capacity(1 + states.len());
        let f =
            Tensor::from_array((fshape.clone(), features.clone())).map_err(|e| e.to_string())?;
        inputs.push((g.input.clone(), f.into()));
        for (st, v) in g.states.iter().zip(states) {
            let mut shape = vec![1];
            shape.extend_from_slice(&st.shape);
            inputs.push((
                st.input.clone(),
                Tensor::from_array((shape, v))
                    .map_err(|e| e.to_string())?
                    .into(),
            ));
        }
        let out = s.step.run(inputs).map_err(|e| e.to_string())?;
        let extract = |name: &str| -> Result<Vec<f32>, String> {
            let v = out
                .get(name)
                .ok_or_else(|| format!("step output {name} missing"))?;
            Ok(v.try_extract_tensor::<f32>()
                .map_err(|e| e.to_string())?
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

/// Start-up warm-up and the engine's self-test: the policy once and a few steps on a zero input.
pub fn warm_up(s: &mut Sessions, m: &Manifest) -> Result<(), String> {
    let zeros = vec![0f32; m.input.len()];
    if let (Some(sess), Some(g)) = (&mut s.policy, &m.graphs.policy) {
        let shape = vec![1, m.input.channels, m.input.height, m.input.width];
        engine::run_single_input(sess, &g.input, &g.output, shape, zeros.clone())
            .map_err(|e| e.to_string())?;
    }
    run_single(s, m, &zeros, m.timesteps.min(4)).map(|_| ())
}

pub struct LoadOptions<'a> {
    pub env: &'a ort::environment::Environment,
    pub session: SessionOptions,
    pub engine: EngineConfig,
    pub metrics: Arc<Metrics>,
}

/// Folders under `root` that hold a `manifest.json`, sorted by name.
pub fn package_dirs(root: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let rd = std::fs::read_dir(root)
        .map_err(|e| err(root, format!("cannot read the models folder: {e}")))?;
    let mut dirs: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("manifest.json").is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}

pub fn load_one(dir: &Path, opts: &LoadOptions<'_>) -> Result<LoadedModel, LoadError> {
    let manifest = read_manifest(dir)?;
    let calibration = read_calibration(dir, manifest.timesteps)?;
    let sessions = load_sessions(dir, &manifest, opts.env, &opts.session)?;
    let rule = RuleKind::parse(&manifest.exit.default_rule)
        .map_err(|e| err(&dir.join("manifest.json"), e))?;
    let policy = ExitPolicy {
        rule,
        alpha: manifest.exit.default_alpha,
        timesteps: manifest.timesteps,
    };
    let samples = read_samples(dir, &manifest.labels);
    let manifest = Arc::new(manifest);
    let engine = engine::spawn(
        manifest.clone(),
        sessions,
        opts.engine.clone(),
        opts.metrics.clone(),
    )
    .map_err(|e| err(dir, e.to_string()))?;
    Ok(LoadedModel {
        provider: opts.session.device.provider_name(),
        manifest,
        calibration,
        dir: dir.to_path_buf(),
        engine,
        policy: RwLock::new(policy),
        samples,
    })
}

/// The samples golden.json lists (file name under `samples/`, label); none when it is absent.
fn read_samples(dir: &Path, labels: &[String]) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(dir.join("golden.json")) else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    let Some(list) = v["samples"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|s| {
            let file = s["file"].as_str()?.strip_prefix("samples/")?.to_string();
            let label = labels.get(s["label"].as_u64()? as usize)?.clone();
            Some((file, label))
        })
        .collect()
}

/// Loads every package. Broken packages are returned as errors next to the models that loaded.
pub type Loaded = (BTreeMap<String, Arc<LoadedModel>>, Vec<LoadError>);

pub fn load_all(root: &Path, opts: &LoadOptions<'_>) -> Result<Loaded, LoadError> {
    let mut models = BTreeMap::new();
    let mut errors = Vec::new();
    for dir in package_dirs(root)? {
        match load_one(&dir, opts) {
            Ok(m) => {
                let name = m.manifest.name.clone();
                match models.entry(name) {
                    std::collections::btree_map::Entry::Occupied(o) => errors.push(err(
                        &dir.join("manifest.json"),
                        format!("a second model named {:?}", o.key()),
                    )),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(Arc::new(m));
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    Ok((models, errors))
}
