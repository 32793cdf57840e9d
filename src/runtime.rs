//! ONNX Runtime: find and load the shared library, build sessions on the chosen device, and check a
//! graph's inputs and outputs against what the manifest promises.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::{TensorElementType, ValueType};

/// The ONNX Runtime release this server is built and tested against.
pub const ORT_VERSION: &str = "1.31.1";

const HOW_TO_GET: &str =
    "run `make ort` (or scripts/fetch_ort.sh), which puts it under .ort/lib/, \
or point --ort-lib / ORT_DYLIB_PATH at libonnxruntime.so 1.31.x from the onnxruntime wheel";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(i32),
}

impl Device {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<i32>) {
                Some(Ok(n)) if n >= 0 => Ok(Device::Cuda(n)),
                _ => Err(format!("unknown device {s:?}; accepted: cpu, cuda, cuda:N")),
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

static ENVIRONMENT: OnceLock<Result<(ort::environment::Environment, PathBuf), String>> =
    OnceLock::new();

/// Loads ONNX Runtime once per process. A missing or too-old library is an error that says how to
/// fix it, never a panic.
pub fn init(flag: Option<&Path>) -> Result<(ort::environment::Environment, PathBuf), String> {
    ENVIRONMENT
        .get_or_init(|| {
            let candidates = candidate_paths(flag);
            let path = candidates
                .iter()
                .find(|p| p.exists())
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "ONNX Runtime library (libonnxruntime.so {ORT_VERSION}) not found; looked at {}; {HOW_TO_GET}",
                        candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                    )
                })?;
            let builder = ort::init_from(&path).map_err(|e| {
                format!("cannot load ONNX Runtime library {}: {e}; {HOW_TO_GET}", path.display())
            })?;
            let env = builder
                .with_name("seenn")
                .build()
                .map_err(|e| format!("cannot create the ONNX Runtime environment: {e}"))?;
            Ok((env, path))
        })
        .clone()
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
) -> Result<Session, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
    builder(env, opts)?.commit_from_memory(&bytes).map_err(|e| {
        format!(
            "{}: not a valid ONNX model for ONNX Runtime: {e}",
            file.display()
        )
    })
}

/// A session of the ONNX model in `bytes` (built by the server itself) on `opts.device`.
pub fn build_session_from_memory(
    env: &ort::environment::Environment,
    bytes: &[u8],
    opts: &SessionOptions,
) -> Result<Session, String> {
    builder(env, opts)?
        .commit_from_memory(bytes)
        .map_err(|e| e.to_string())
}

/// A session builder with `opts`' threads and execution provider.
fn builder(
    env: &ort::environment::Environment,
    opts: &SessionOptions,
) -> Result<ort::session::builder::SessionBuilder, String> {
    #[cfg_attr(not(feature = "cuda"), allow(unused_mut))]
    let mut builder = Session::builder(env)
        .map_err(|e| format!("session builder: {e}"))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| format!("optimization level: {e}"))?
        .with_intra_threads(opts.intra_threads.max(1))
        .map_err(|e| format!("intra threads: {e}"))?;
    match opts.device {
        Device::Cpu => {}
        #[cfg(feature = "cuda")]
        Device::Cuda(id) => {
            let ep = ort::ep::CUDA::default().with_device_id(id).build().error_on_failure();
            builder = builder
                .with_execution_providers([ep])
                .map_err(|e| format!("CUDA execution provider for device {id} failed to register: {e}"))?;
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => {
            return Err("this binary was built without CUDA support; rebuild with `cargo build --release --features cuda` \
                        and use the onnxruntime-gpu library"
                .into())
        }
    }
    Ok(builder)
}

/// The ONNX Runtime environment [`init`] loaded, if it did.
pub fn loaded() -> Result<ort::environment::Environment, String> {
    match ENVIRONMENT.get() {
        Some(Ok((env, _))) => Ok(env.clone()),
        Some(Err(e)) => Err(e.clone()),
        None => Err("ONNX Runtime is not loaded yet".into()),
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
) -> Result<(), String> {
    let names: Vec<&str> = outlets.iter().map(|o| o.name()).collect();
    if outlets.len() != expected.len() {
        return Err(format!(
            "graph has {kind}s {names:?}, the manifest names {:?}",
            expected.iter().map(|e| e.name).collect::<Vec<_>>()
        ));
    }
    for e in expected {
        let outlet = outlets.iter().find(|o| o.name() == e.name).ok_or_else(|| {
            format!(
                "the manifest names {kind} {:?}, the graph has {names:?}",
                e.name
            )
        })?;
        match outlet.dtype() {
            ValueType::Tensor { ty, shape, .. } => {
                if *ty != TensorElementType::Float32 {
                    return Err(format!("{kind} {:?} is {ty:?}, expected float32", e.name));
                }
                let dims: Vec<i64> = shape.iter().copied().collect();
                let ok = dims.len() == e.dims.len() + 1
                    && dims[0] < 0
                    && dims[1..]
                        .iter()
                        .zip(e.dims)
                        .all(|(g, m)| *g < 0 || *g as usize == *m);
                if !ok {
                    return Err(format!(
                        "{kind} {:?} has shape {dims:?}, the manifest says [batch, {}] with a dynamic batch",
                        e.name,
                        e.dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
            other => {
                return Err(format!(
                    "{kind} {:?} is {other:?}, expected a float32 tensor",
                    e.name
                ))
            }
        }
    }
    Ok(())
}

pub fn check_graph(
    session: &Session,
    inputs: &[Expect<'_>],
    outputs: &[Expect<'_>],
) -> Result<(), String> {
    check_outlets("input", session.inputs(), inputs)?;
    check_outlets("output", session.outputs(), outputs)
}
