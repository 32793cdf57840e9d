//! The Open Inference Protocol (KServe v2): what the REST and gRPC transports share.
//!
//! A model takes exactly one input: `input`, an FP32 tensor `[N, C, H, W]` preprocessed as the
//! manifest says, or `image`, a BYTES tensor `[N]` of encoded images (PNG, JPEG, WebP, BMP, GIF).
//! It answers with `class_ids` (INT64 `[N]`), `probabilities` (FP32 `[N, M]`), `timesteps`
//! (INT32 `[N]`, timesteps used) and `labels` (BYTES `[N]`). Each of the N inputs is submitted to the
//! engine as its own request, so each exits on its own.

pub mod grpc;
pub mod rest;

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::manifest::InputSpec;
use crate::registry::LoadedModel;
use crate::service::{ClassifyOptions, ClassifyResult, Input, Service};

pub const INPUT_TENSOR: &str = "input";
pub const INPUT_IMAGE: &str = "image";
pub const OUTPUT_CLASS_IDS: &str = "class_ids";
pub const OUTPUT_PROBABILITIES: &str = "probabilities";
pub const OUTPUT_TIMESTEPS: &str = "timesteps";
pub const OUTPUT_LABELS: &str = "labels";
pub const OUTPUTS: [&str; 4] = [
    OUTPUT_CLASS_IDS,
    OUTPUT_PROBABILITIES,
    OUTPUT_TIMESTEPS,
    OUTPUT_LABELS,
];
pub const PLATFORM: &str = "seenn_onnxruntime";
pub const SERVER_NAME: &str = "seenn-serve";
/// Request parameters that set exit options.
pub const PARAMETER_NAMES: &str = "alpha, threshold, rule, max_timesteps, timeout (µs), timeout_ms";
/// Parameters that clients send for the transport itself; accepted and not used as options.
const TRANSPORT_PARAMETERS: [&str; 3] = ["binary_data_output", "binary_data_size", "binary_data"];

/// A request parameter's value, whichever form it came in.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Param {
    fn text(&self) -> String {
        match self {
            Param::Bool(b) => b.to_string(),
            Param::Int(i) => i.to_string(),
            Param::Float(f) => f.to_string(),
            Param::Str(s) => s.clone(),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Param::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Fp32(Vec<f32>),
    /// UINT8 values (tensor models; cast to float32 unscaled).
    Uint8(Vec<u8>),
    /// BOOL values (tensor models; cast to 0.0 / 1.0).
    Bool(Vec<bool>),
    Bytes(Vec<Vec<u8>>),
}

impl TensorData {
    /// Numeric values as float32 (uint8 unscaled, bool 0/1); `None` for BYTES.
    pub fn to_f32(self) -> Option<Vec<f32>> {
        match self {
            TensorData::Fp32(v) => Some(v),
            TensorData::Uint8(v) => Some(v.into_iter().map(f32::from).collect()),
            TensorData::Bool(v) => Some(v.into_iter().map(|b| f32::from(u8::from(b))).collect()),
            TensorData::Bytes(_) => None,
        }
    }

    /// Decodes the little-endian raw bytes of a numeric datatype (FP32, UINT8, BOOL).
    pub fn from_raw(name: &str, datatype: &str, raw: &[u8]) -> Result<TensorData> {
        Ok(match datatype {
            "FP32" => TensorData::Fp32(fp32_from_raw(raw)?),
            "UINT8" => TensorData::Uint8(raw.to_vec()),
            "BOOL" => TensorData::Bool(
                raw.iter()
                    .enumerate()
                    .map(|(i, b)| match b {
                        0 => Ok(false),
                        1 => Ok(true),
                        other => Err(Error::invalid(format!(
                            "input {name:?} BOOL element {i} is the byte {other}; accepted: 0 or 1"
                        ))),
                    })
                    .collect::<Result<_>>()?,
            ),
            "BYTES" => TensorData::Bytes(bytes_from_raw(raw)?),
            other => {
                return Err(Error::invalid(format!(
                    "input {name:?} has datatype {other:?}; {DATATYPES}"
                )))
            }
        })
    }
}

/// The datatypes an input may have, for errors.
pub const DATATYPES: &str =
    "accepted: FP32, UINT8 or BOOL (tensor inputs) and BYTES (encoded images)";

#[derive(Debug, Clone, PartialEq)]
pub struct InferInput {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

/// A decoded inference request, transport-neutral.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InferRequest {
    pub id: Option<String>,
    pub parameters: Vec<(String, Param)>,
    pub inputs: Vec<InferInput>,
    /// The outputs asked for, in order; `None` means all of them.
    pub outputs: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OutputData {
    Int64(Vec<i64>),
    Int32(Vec<i32>),
    Fp32(Vec<f32>),
    Bytes(Vec<Vec<u8>>),
}

impl OutputData {
    pub fn datatype(&self) -> &'static str {
        match self {
            OutputData::Int64(_) => "INT64",
            OutputData::Int32(_) => "INT32",
            OutputData::Fp32(_) => "FP32",
            OutputData::Bytes(_) => "BYTES",
        }
    }

    /// Little-endian raw bytes; BYTES elements each get a 4-byte length prefix.
    pub fn raw(&self) -> Vec<u8> {
        match self {
            OutputData::Int64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            OutputData::Int32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            OutputData::Fp32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            OutputData::Bytes(v) => {
                let mut out = Vec::new();
                for b in v {
                    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                    out.extend_from_slice(b);
                }
                out
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: OutputData,
}

#[derive(Debug, Clone)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: Option<String>,
    pub outputs: Vec<OutputTensor>,
    /// Rows answered before their exit rule fired because the next timestep would have missed
    /// the request's deadline (the response parameter `deadline_exits`, present when not 0).
    pub deadline_exits: usize,
}

/// Tensor metadata: name, datatype and shape (-1 for the batch).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// Splits a little-endian raw buffer of FP32 values.
pub fn fp32_from_raw(raw: &[u8]) -> Result<Vec<f32>> {
    if !raw.len().is_multiple_of(4) {
        return Err(Error::invalid(format!(
            "raw FP32 data is {} bytes, not a multiple of 4",
            raw.len()
        )));
    }
    Ok(raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Splits a raw BYTES buffer: each element is a 4-byte little-endian length and that many bytes.
pub fn bytes_from_raw(raw: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(Error::invalid(
                "raw BYTES data ends inside a 4-byte length prefix",
            ));
        };
        let n = u32::from_le_bytes(*len) as usize;
        if tail.len() < n {
            return Err(Error::invalid(format!(
                "raw BYTES element of {n} bytes runs past the end of the data ({} bytes left)",
                tail.len()
            )));
        }
        out.push(tail[..n].to_vec());
        rest = &tail[n..];
    }
    Ok(out)
}

/// Looks a model up and checks the version, when one is named.
pub fn model(state: &Service, name: &str, version: Option<&str>) -> Result<Arc<LoadedModel>> {
    if name.is_empty() {
        return Err(Error::invalid("the model name is empty"));
    }
    let m = state.model(Some(name))?;
    if let Some(v) = version.filter(|v| !v.is_empty()) {
        if v != m.manifest.version {
            return Err(Error::ModelNotFound(format!(
                "model {name} has no version {v:?} serving; it serves version {} (every version: POST /v2/repository/index)",
                m.manifest.version
            )));
        }
    }
    Ok(m)
}

pub fn model_ready(state: &Service, name: &str, version: Option<&str>) -> Result<bool> {
    let m = model(state, name, version)?;
    Ok(!state.lifecycle.is_draining() && m.engine.is_ready())
}

pub fn metadata(m: &LoadedModel) -> ModelMetadata {
    let spec = &m.manifest.input;
    let k = m.manifest.num_classes() as i64;
    let tensor = |name: &str, datatype: &str, shape: Vec<i64>| TensorMetadata {
        name: name.into(),
        datatype: datatype.into(),
        shape,
    };
    ModelMetadata {
        name: m.manifest.name.clone(),
        versions: vec![m.manifest.version.clone()],
        platform: PLATFORM.into(),
        inputs: if spec.is_image() {
            vec![
                tensor(INPUT_TENSOR, "FP32", input_shape(spec)),
                tensor(INPUT_IMAGE, "BYTES", vec![-1]),
            ]
        } else {
            vec![tensor(INPUT_TENSOR, spec.dtype.oip(), input_shape(spec))]
        },
        outputs: vec![
            tensor(OUTPUT_CLASS_IDS, "INT64", vec![-1]),
            tensor(OUTPUT_PROBABILITIES, "FP32", vec![-1, k]),
            tensor(OUTPUT_TIMESTEPS, "INT32", vec![-1]),
            tensor(OUTPUT_LABELS, "BYTES", vec![-1]),
        ],
    }
}

/// The `input` tensor's shape in metadata: `[-1, *dims]`, or `[-1, -1, *dims]` (batch, frames)
/// for a per_step input.
pub fn input_shape(spec: &InputSpec) -> Vec<i64> {
    let mut shape = vec![-1];
    if spec.per_step() {
        shape.push(-1);
    }
    shape.extend(spec.dims().iter().map(|d| *d as i64));
    shape
}

/// The exit options set by the request's parameters.
pub fn options(model: &str, parameters: &[(String, Param)]) -> Result<ClassifyOptions> {
    let mut opts = ClassifyOptions {
        model: Some(model.to_string()),
        ..Default::default()
    };
    for (k, v) in parameters {
        match k.as_str() {
            "alpha" | "threshold" | "rule" | "max_timesteps" | "timeout_ms" => {
                opts.set(k, &v.text())?
            }
            // The protocol's own deadline, in microseconds (as Triton's clients send it).
            "timeout" => {
                let us = v.text().trim().parse::<f64>().ok().filter(|us| *us > 0.0);
                let Some(us) = us else {
                    return Err(Error::invalid(format!(
                        "parameter timeout={:?} is not a deadline; accepted: a positive number of microseconds",
                        v.text()
                    )));
                };
                opts.timeout_ms = Some(us / 1e3);
            }
            k if TRANSPORT_PARAMETERS.contains(&k) => {}
            other => {
                return Err(Error::invalid(format!(
                    "unknown request parameter {other:?}; accepted: {PARAMETER_NAMES}"
                )))
            }
        }
    }
    Ok(opts)
}

/// Checks the single input against the model and splits it into one engine input per batch row.
pub fn split_inputs(
    m: &LoadedModel,
    inputs: Vec<InferInput>,
    max_batch: usize,
) -> Result<Vec<Input>> {
    let spec = &m.manifest.input;
    let (tensor_shape, accepted) = accepted_inputs(m);
    let mut inputs = inputs;
    if inputs.len() != 1 {
        return Err(Error::invalid(format!(
            "the request has {} inputs; {accepted}",
            inputs.len()
        )));
    }
    let input = inputs.remove(0);
    let n = batch_rows(&input, max_batch)?;
    // Image models take preprocessed FP32; tensor models FP32, UINT8 or BOOL.
    let numeric = match input.datatype.as_str() {
        "FP32" => true,
        "UINT8" | "BOOL" => !spec.is_image(),
        _ => false,
    };
    match (input.name.as_str(), input.data) {
        (INPUT_TENSOR, data) if numeric && !matches!(data, TensorData::Bytes(_)) => {
            tensor_rows(m, &input.shape, data, n, &tensor_shape)
        }
        (INPUT_IMAGE, TensorData::Bytes(items)) if spec.is_image() && input.datatype == "BYTES" => {
            image_rows(&input.shape, items, n)
        }
        (name, _) => Err(Error::invalid(format!(
            "input {name:?} of datatype {}; {accepted}",
            input.datatype
        ))),
    }
}

/// The tensor shape `m` takes with the batch dimension, and the inputs it accepts, for errors.
fn accepted_inputs(m: &LoadedModel) -> (String, String) {
    let spec = &m.manifest.input;
    let t_max = m.manifest.timesteps;
    let dims_text = spec
        .dims()
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let tensor_shape = if spec.per_step() {
        format!("[N, t, {dims_text}] with 1 ≤ t ≤ {t_max}")
    } else {
        format!("[N, {dims_text}]")
    };
    let accepted = if spec.is_image() {
        format!(
            "accepted: one input, either {INPUT_TENSOR:?} FP32 {tensor_shape} or {INPUT_IMAGE:?} BYTES [N] of encoded images"
        )
    } else {
        format!(
            "accepted: one input, {INPUT_TENSOR:?} FP32|UINT8|BOOL {tensor_shape} (model {} takes tensors, not images)",
            m.manifest.name
        )
    };
    (tensor_shape, accepted)
}

/// The input's batch size N (its first dimension): at least 1, at most `max_batch`.
fn batch_rows(input: &InferInput, max_batch: usize) -> Result<usize> {
    if input.shape.iter().any(|d| *d < 0) {
        return Err(Error::invalid(format!(
            "input {:?} has a negative dimension in shape {:?}",
            input.name, input.shape
        )));
    }
    let n = input.shape.first().copied().unwrap_or(0) as usize;
    if n == 0 {
        return Err(Error::invalid(format!(
            "input {:?} has shape {:?}: the batch dimension must be at least 1",
            input.name, input.shape
        )));
    }
    if n > max_batch {
        return Err(Error::TooLarge(format!(
            "the request carries {n} inputs; at most {max_batch} per request (--max-queue)"
        )));
    }
    Ok(n)
}

/// A numeric input of `shape` [N, *dims] or, per_step, [N, t, *dims]: one shaped input per row.
fn tensor_rows(
    m: &LoadedModel,
    shape: &[i64],
    data: TensorData,
    n: usize,
    tensor_shape: &str,
) -> Result<Vec<Input>> {
    let spec = &m.manifest.input;
    // Each row keeps its own shape.
    let row_shape: Vec<usize> = shape[1..].iter().map(|d| *d as usize).collect();
    if crate::model::check_frames(spec, m.manifest.timesteps, &row_shape).is_err() {
        return Err(Error::invalid(format!(
            "input {INPUT_TENSOR:?} has shape {shape:?}; this model takes {tensor_shape}, FP32{}",
            if spec.is_image() { "" } else { "|UINT8|BOOL" }
        )));
    }
    let per: usize = row_shape.iter().product();
    let values = data
        .to_f32()
        .ok_or_else(|| Error::internal("numeric input without values"))?;
    if values.len() != n * per {
        return Err(Error::invalid(format!(
            "input {INPUT_TENSOR:?} has {} values; shape {shape:?} needs {}",
            values.len(),
            n * per
        )));
    }
    Ok(values
        .chunks_exact(per)
        .map(|c| Input::Shaped {
            shape: row_shape.clone(),
            data: c.to_vec(),
        })
        .collect())
}

/// A BYTES input of shape [N] or [N, 1]: one encoded image per row.
fn image_rows(shape: &[i64], items: Vec<Vec<u8>>, n: usize) -> Result<Vec<Input>> {
    if !(shape.len() == 1 || shape.len() == 2 && shape[1] == 1) {
        return Err(Error::invalid(format!(
            "input {INPUT_IMAGE:?} has shape {shape:?}; accepted: [N] or [N, 1]"
        )));
    }
    if items.len() != n {
        return Err(Error::invalid(format!(
            "input {INPUT_IMAGE:?} has {} elements; shape {shape:?} needs {n}",
            items.len()
        )));
    }
    Ok(items
        .into_iter()
        .map(|bytes| Input::Image { bytes, hint: None })
        .collect())
}

/// Runs an inference request: every row through the engine on its own, then the outputs asked for.
/// `grpc` is the call's metadata over gRPC (its deadline applies too; the earlier one holds).
pub async fn infer(
    state: &Service,
    model_name: &str,
    version: Option<&str>,
    req: InferRequest,
    grpc: Option<&tonic::metadata::MetadataMap>,
) -> Result<InferResponse> {
    let m = model(state, model_name, version)?;
    let mut opts = options(&m.manifest.name, &req.parameters)?;
    opts.take_grpc_deadline(grpc);
    let k = m.manifest.num_classes();
    opts.top_k = Some(k as u64);
    let wanted: Vec<String> = match req.outputs {
        Some(o) if !o.is_empty() => o,
        _ => OUTPUTS.iter().map(|s| s.to_string()).collect(),
    };
    for name in &wanted {
        if !OUTPUTS.contains(&name.as_str()) {
            return Err(Error::invalid(format!(
                "unknown output {name:?}; accepted: {}",
                OUTPUTS.join(", ")
            )));
        }
    }
    let rows = split_inputs(&m, req.inputs, state.limits.max_rows)?;
    let base_id = req
        .id
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let n = rows.len();
    let results: Vec<Result<ClassifyResult>> =
        futures::future::join_all(rows.into_iter().enumerate().map(|(i, input)| {
            let rid = if n == 1 {
                base_id.clone()
            } else {
                format!("{base_id}/{i}")
            };
            state.classify(input, opts.clone(), rid, None)
        }))
        .await;
    let mut done = Vec::with_capacity(n);
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(r) => done.push(r),
            Err(e) if n == 1 => return Err(e),
            Err(e) => return Err(prefix_error(e, i)),
        }
    }
    let mut outputs = Vec::new();
    for name in wanted {
        let (shape, data) = match name.as_str() {
            OUTPUT_CLASS_IDS => (
                vec![n as i64],
                OutputData::Int64(done.iter().map(|r| r.class_id as i64).collect()),
            ),
            OUTPUT_TIMESTEPS => (
                vec![n as i64],
                OutputData::Int32(done.iter().map(|r| r.timesteps_used as i32).collect()),
            ),
            OUTPUT_LABELS => (
                vec![n as i64],
                OutputData::Bytes(done.iter().map(|r| r.label.clone().into_bytes()).collect()),
            ),
            _ => {
                let mut probs = vec![0f32; n * k];
                for (row, r) in done.iter().enumerate() {
                    for s in &r.top_k {
                        if s.class_id < k {
                            probs[row * k + s.class_id] = s.probability as f32;
                        }
                    }
                }
                (vec![n as i64, k as i64], OutputData::Fp32(probs))
            }
        };
        outputs.push(OutputTensor { name, shape, data });
    }
    Ok(InferResponse {
        model_name: m.manifest.name.clone(),
        model_version: m.manifest.version.clone(),
        id: req.id,
        outputs,
        deadline_exits: done.iter().filter(|r| r.deadline_exit).count(),
    })
}

/// Names the batch row in an error of an N > 1 request.
fn prefix_error(e: Error, row: usize) -> Error {
    let p = |s: String| format!("input row {row}: {s}");
    match e {
        Error::InvalidRequest(s) => Error::InvalidRequest(p(s)),
        Error::UnsupportedMediaType(s) => Error::UnsupportedMediaType(p(s)),
        Error::TooLarge(s) => Error::TooLarge(p(s)),
        Error::DeadlineExceeded(s) => Error::DeadlineExceeded(p(s)),
        Error::Internal { message, source } => Error::Internal {
            message: p(message),
            source,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_bytes_round_trip() {
        let d = OutputData::Bytes(vec![b"ab".to_vec(), vec![], b"xyz".to_vec()]);
        assert_eq!(
            bytes_from_raw(&d.raw()).unwrap(),
            vec![b"ab".to_vec(), vec![], b"xyz".to_vec()]
        );
        assert!(bytes_from_raw(&[1, 0, 0]).is_err());
        assert!(bytes_from_raw(&[5, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn raw_fp32() {
        let d = OutputData::Fp32(vec![1.5, -2.0]);
        assert_eq!(fp32_from_raw(&d.raw()).unwrap(), vec![1.5, -2.0]);
        assert!(fp32_from_raw(&[0, 0, 0]).is_err());
    }

    #[test]
    fn parameters() {
        let o = options(
            "m",
            &[
                ("alpha".into(), Param::Float(0.5)),
                ("rule".into(), Param::Str("fixed".into())),
                ("max_timesteps".into(), Param::Int(2)),
                ("binary_data_output".into(), Param::Bool(true)),
            ],
        )
        .unwrap();
        assert_eq!(o.alpha, Some(0.5));
        assert_eq!(o.rule.as_deref(), Some("fixed"));
        assert_eq!(o.max_timesteps, Some(2));
        let o = options(
            "m",
            &[
                ("rule".into(), Param::Str("learned".into())),
                ("threshold".into(), Param::Float(0.75)),
            ],
        )
        .unwrap();
        assert_eq!(o.threshold, Some(0.75));
        assert!(!o.uses_default_policy());
        let e = options("m", &[("apha".into(), Param::Float(0.5))]).unwrap_err();
        assert!(e.to_string().contains("accepted: alpha"), "{e}");
    }
}
