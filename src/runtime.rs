//! ONNX Runtime: find and load the shared library, build sessions on the chosen device, and check a
//! graph's inputs and outputs against what the manifest promises.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::{TensorElementType, ValueType};

/// The ONNX Runtime release this server is built and tested against.
pub const ORT_VERSION: &str = "1.31.1";

const HOW_TO_GET: &str =
    "run `make ort` (or scripts/fetch_ort.sh), which puts it under .ort/lib/, \
or point --ort-lib / ORT_DYLIB_PATH at libonnxruntime.so 1.31.x from the onnxruntime wheel";

/// What went wrong loading ONNX Runtime, building a session or checking a graph; an `ort::Error`
/// is kept as the cause.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("unknown device {0:?}; accepted: cpu, cuda, cuda:N")]
    UnknownDevice(String),
    #[error(
        "ONNX Runtime library (libonnxruntime.so {ORT_VERSION}) not found; looked at {looked}; {HOW_TO_GET}"
    )]
    LibraryNotFound { looked: String },
    #[error("cannot load ONNX Runtime library {} ({HOW_TO_GET})", path.display())]
    LibraryLoad {
        path: PathBuf,
        #[source]
        source: ort::LoadDynamicError,
    },
    #[error("cannot create the ONNX Runtime environment")]
    Environment(#[source] ort::Error),
    /// The first [`init`]'s failure, which every later call returns.
    #[error(transparent)]
    Init(Arc<RuntimeError>),
    #[error("ONNX Runtime is not loaded yet")]
    NotLoaded,
    #[error("cannot read the model file")]
    ReadModel(#[source] std::io::Error),
    #[error("not a valid ONNX model for ONNX Runtime")]
    InvalidModel(#[source] ort::Error),
    /// A session option ONNX Runtime refused (`what`: session builder, optimization level, …).
    #[error("{what}")]
    Options {
        what: &'static str,
        #[source]
        source: ort::Error,
    },
    #[error("CUDA execution provider for device {id} failed to register")]
    Cuda {
        id: i32,
        #[source]
        source: ort::Error,
    },
    #[error(
        "this binary was built without CUDA support; rebuild with `cargo build --release --features cuda` \
         and use the onnxruntime-gpu library"
    )]
    NoCuda,
    /// A graph's inputs or outputs differ from what the manifest names.
    #[error("{0}")]
    GraphMismatch(String),
    /// ONNX Runtime refused a model the server built itself.
    #[error(transparent)]
    Ort(#[from] ort::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(i32),
}

impl Device {
    pub fn parse(s: &str) -> Result<Self, RuntimeError> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<i32>) {
                Some(Ok(n)) if n >= 0 => Ok(Device::Cuda(n)),
                _ => Err(RuntimeError::UnknownDevice(s.to_string())),
            },
        }
    }

    pub fn provider_name(&self) -> String {
        match self {
            Device::Cpu => "CPUExecutionProvider".into(),
            Device::Cuda(n) => format!("CUDAExecutionProvider:{n}"),
        }
    }
}

/// Where to look for the library, in order: the flag, `ORT_DYLIB_PATH`, then where setup puts it.
pub fn candidate_paths(flag: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = flag {
        return vec![p.to_path_buf()];
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return vec![PathBuf::from(p)];
    }
    let mut out = vec![PathBuf::from(".ort/lib/libonnxruntime.so")];
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            out.push(dir.join("lib/libonnxruntime.so"));
            out.push(dir.join("../../.ort/lib/libonnxruntime.so"));
        }
    }
    out.push(PathBuf::from("/usr/local/lib/libonnxruntime.so"));
    out
}

type Loaded = (ort::environment::Environment, PathBuf);

static ENVIRONMENT: OnceLock<Result<Loaded, Arc<RuntimeError>>> = OnceLock::new();

/// Loads ONNX Runtime once per process. A missing or too-old library is an error that says how to
/// fix it, never a panic.
pub fn init(flag: Option<&Path>) -> Result<Loaded, RuntimeError> {
    ENVIRONMENT
        .get_or_init(|| load(flag).map_err(Arc::new))
        .clone()
        .map_err(RuntimeError::Init)
}

fn load(flag: Option<&Path>) -> Result<Loaded, RuntimeError> {
    let candidates = candidate_paths(flag);
    let path = candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .ok_or_else(|| RuntimeError::LibraryNotFound {
            looked: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let builder = match ort::init_from(&path) {
        Ok(b) => b,
        Err(source) => return Err(RuntimeError::LibraryLoad { path, source }),
    };
    let env = builder
        .with_name("seenn")
        .build()
        .map_err(RuntimeError::Environment)?;
    Ok((env, path))
}

#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub device: Device,
    pub intra_threads: usize,
}

pub fn build_session(
    env: &ort::environment::Environment,
    file: &Path,
    opts: &SessionOptions,
) -> Result<Session, RuntimeError> {
    let bytes = std::fs::read(file).map_err(RuntimeError::ReadModel)?;
    builder(env, opts)?
        .commit_from_memory(&bytes)
        .map_err(RuntimeError::InvalidModel)
}

/// A session of the ONNX model in `bytes` (built by the server itself) on `opts.device`.
pub fn build_session_from_memory(
    env: &ort::environment::Environment,
    bytes: &[u8],
    opts: &SessionOptions,
) -> Result<Session, RuntimeError> {
    Ok(builder(env, opts)?.commit_from_memory(bytes)?)
}

/// A session builder with `opts`' threads and execution provider.
fn builder(
    env: &ort::environment::Environment,
    opts: &SessionOptions,
) -> Result<ort::session::builder::SessionBuilder, RuntimeError> {
    let refused = |what: &'static str| {
        move |e: ort::Error<ort::session::builder::SessionBuilder>| RuntimeError::Options {
            what,
            source: e.into(),
        }
    };
    #[cfg_attr(not(feature = "cuda"), allow(unused_mut))]
    let mut builder = Session::builder(env)
        .map_err(|source| RuntimeError::Options {
            what: "session builder",
            source,
        })?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(refused("optimization level"))?
        .with_intra_threads(opts.intra_threads.max(1))
        .map_err(refused("intra threads"))?;
    match opts.device {
        Device::Cpu => {}
        #[cfg(feature = "cuda")]
        Device::Cuda(id) => {
            let ep = ort::ep::CUDA::default()
                .with_device_id(id)
                .build()
                .error_on_failure();
            builder = builder
                .with_execution_providers([ep])
                .map_err(|e| RuntimeError::Cuda {
                    id,
                    source: e.into(),
                })?;
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => return Err(RuntimeError::NoCuda),
    }
    Ok(builder)
}

/// The ONNX Runtime environment [`init`] loaded, if it did.
pub fn loaded() -> Result<ort::environment::Environment, RuntimeError> {
    match ENVIRONMENT.get() {
        Some(Ok((env, _))) => Ok(env.clone()),
        Some(Err(e)) => Err(RuntimeError::Init(e.clone())),
        None => Err(RuntimeError::NotLoaded),
    }
}

/// One named tensor a graph must have: float32 with the given trailing dims after a dynamic batch.
pub struct Expect<'a> {
    pub name: &'a str,
    pub dims: &'a [usize],
}

fn check_outlets(
    kind: &str,
    outlets: &[ort::value::Outlet],
    expected: &[Expect<'_>],
) -> Result<(), RuntimeError> {
    let names: Vec<&str> = outlets.iter().map(|o| o.name()).collect();
    if outlets.len() != expected.len() {
        return Err(RuntimeError::GraphMismatch(format!(
            "graph has {kind}s {names:?}, the manifest names {:?}",
            expected.iter().map(|e| e.name).collect::<Vec<_>>()
        )));
    }
    for e in expected {
        let outlet = outlets.iter().find(|o| o.name() == e.name).ok_or_else(|| {
            RuntimeError::GraphMismatch(format!(
                "the manifest names {kind} {:?}, the graph has {names:?}",
                e.name
            ))
        })?;
        match outlet.dtype() {
            ValueType::Tensor { ty, shape, .. } => {
                if *ty != TensorElementType::Float32 {
                    return Err(RuntimeError::GraphMismatch(format!(
                        "{kind} {:?} is {ty:?}, expected float32",
                        e.name
                    )));
                }
                let dims: Vec<i64> = shape.iter().copied().collect();
                let ok = dims.len() == e.dims.len() + 1
                    && dims[0] < 0
                    && dims[1..]
                        .iter()
                        .zip(e.dims)
                        .all(|(g, m)| *g < 0 || *g as usize == *m);
                if !ok {
                    return Err(RuntimeError::GraphMismatch(format!(
                        "{kind} {:?} has shape {dims:?}, the manifest says [batch, {}] with a dynamic batch",
                        e.name,
                        e.dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
                    )));
                }
            }
            other => {
                return Err(RuntimeError::GraphMismatch(format!(
                    "{kind} {:?} is {other:?}, expected a float32 tensor",
                    e.name
                )))
            }
        }
    }
    Ok(())
}

pub fn check_graph(
    session: &Session,
    inputs: &[Expect<'_>],
    outputs: &[Expect<'_>],
) -> Result<(), RuntimeError> {
    check_outlets("input", session.inputs(), inputs)?;
    check_outlets("output", session.outputs(), outputs)
}
