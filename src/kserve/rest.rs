//! The Open Inference Protocol over HTTP/JSON, with Triton's binary tensor data extension
//! (`Inference-Header-Content-Length`), which `tritonclient[http]` uses by default.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::{
    InferInput, InferRequest, InferResponse, ModelMetadata, OutputData, Param, TensorData,
    SERVER_NAME,
};
use crate::error::{Error, Result};
use crate::service::Service;

/// The header that gives the JSON part's length when binary tensor data follows it.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Which outputs go back as binary data after the JSON header.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BinaryOutputs {
    /// The request-level `binary_data_output` parameter.
    pub default: bool,
    /// Per-output `parameters.binary_data`.
    pub per_output: Vec<(String, bool)>,
}

impl BinaryOutputs {
    fn is_binary(&self, name: &str) -> bool {
        self.per_output
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| *b)
            .unwrap_or(self.default)
    }
}

/// The JSON part of a REST inference request, as the Open Inference Protocol defines it. Fields
/// this server does not know are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(expecting = "an inference request object")]
pub struct RestRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Option<Parameters>,
    pub inputs: Vec<RestInput>,
    /// The outputs asked for; absent or `null` means all of them.
    #[serde(default)]
    pub outputs: Option<Vec<RestOutput>>,
}

/// One input tensor: its values in `data`, or (binary tensor data extension) in the bytes after
/// the JSON header, `parameters.binary_data_size` of them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(expecting = "an input object {\"name\", \"shape\", \"datatype\", \"data\"}")]
pub struct RestInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Option<Parameters>,
    #[serde(default)]
    pub data: Option<JsonData>,
}

/// One output asked for, and whether it goes back as binary data.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(expecting = "an output object {\"name\", \"parameters\"?}")]
pub struct RestOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<Parameters>,
}

/// A `parameters` object, in the order given. Each value is a bool, a number or a string.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parameters(pub Vec<(String, Param)>);

impl Parameters {
    fn get(&self, key: &str) -> Option<&Param> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

impl<'de> Deserialize<'de> for Parameters {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = Parameters;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a `parameters` object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Parameters, A::Error> {
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value_seed(ParamSeed(&key))?;
                    out.push((key, value));
                }
                Ok(Parameters(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Reads one parameter value; the key names it in the error.
struct ParamSeed<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for ParamSeed<'_> {
    type Value = Param;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Param, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ParamSeed<'_> {
    type Value = Param;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "a bool, a number or a string for parameter {:?}", self.0)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<Param, E> {
        Ok(Param::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Param, E> {
        Ok(Param::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Param, E> {
        Ok(i64::try_from(v).map_or(Param::Float(v as f64), Param::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Param, E> {
        Ok(Param::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Param, E> {
        Ok(Param::Str(v.to_string()))
    }
}

/// How deep `data` may nest arrays.
const MAX_DATA_DEPTH: usize = 8;

/// One element of a JSON `data` array, before the datatype says what it must be.
#[derive(Debug, Clone, PartialEq)]
pub enum Element {
    Number(f64),
    Str(String),
    Bool(bool),
    /// Anything else (`true`, `null`, an object), as it is shown in errors.
    Other(&'static str),
}

impl std::fmt::Display for Element {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Element::Number(n) => write!(f, "{n:?}"),
            Element::Str(s) => write!(f, "{s:?}"),
            Element::Bool(b) => write!(f, "{b}"),
            Element::Other(o) => f.write_str(o),
        }
    }
}

/// A JSON `data` value: nested arrays (row-major) or flat, flattened to its elements. A lone
/// element counts as a one-element array.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JsonData(pub Vec<Element>);

impl<'de> Deserialize<'de> for JsonData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let mut out = Vec::new();
        Flatten {
            out: &mut out,
            depth: 0,
        }
        .deserialize(d)?;
        Ok(JsonData(out))
    }
}

/// Appends the leaves of one `data` value, `depth` arrays down.
struct Flatten<'a> {
    out: &'a mut Vec<Element>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        if self.depth > MAX_DATA_DEPTH {
            return Err(de::Error::custom(format!(
                "`data` is nested deeper than {MAX_DATA_DEPTH} levels"
            )));
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("`data`: an array of numbers or strings, flat or nested")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        let depth = self.depth + 1;
        while seq
            .next_element_seed(Flatten {
                out: &mut *self.out,
                depth,
            })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<(), E> {
        self.out.push(Element::Number(v as f64));
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<(), E> {
        self.out.push(Element::Number(v as f64));
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<(), E> {
        self.out.push(Element::Number(v));
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<(), E> {
        self.out.push(Element::Str(v.to_string()));
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<(), E> {
        self.out.push(Element::Bool(v));
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        self.out.push(Element::Other("null"));
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        while map
            .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
            .is_some()
        {}
        self.out.push(Element::Other("an object"));
        Ok(())
    }
}

fn json_data(name: &str, datatype: &str, data: JsonData) -> Result<TensorData> {
    match datatype {
        "FP32" => data
            .0
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let f = match v {
                    Element::Number(n) => Some(*n as f32).filter(|f| f.is_finite()),
                    _ => None,
                };
                f.ok_or_else(|| {
                    Error::invalid(format!(
                        "input {name:?} element {i} ({v}) is not a finite FP32 number"
                    ))
                })
            })
            .collect::<Result<Vec<f32>>>()
            .map(TensorData::Fp32),
        "BYTES" => data
            .0
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let Element::Str(s) = v else {
                    return Err(Error::invalid(format!(
                        "input {name:?} element {i} is not a string"
                    )));
                };
                base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .map_err(|e| {
                        Error::invalid(format!(
                            "input {name:?} element {i} is not base64 ({e}); in JSON, send encoded images as base64 strings, or raw bytes through the binary tensor data extension"
                        ))
                    })
            })
            .collect::<Result<Vec<Vec<u8>>>>()
            .map(TensorData::Bytes),
        "UINT8" => data
            .0
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Element::Number(n) if n.fract() == 0.0 && (0.0..=255.0).contains(n) => Ok(*n as u8),
                _ => Err(Error::invalid(format!(
                    "input {name:?} element {i} ({v}) is not a UINT8 (an integer 0..=255)"
                ))),
            })
            .collect::<Result<Vec<u8>>>()
            .map(TensorData::Uint8),
        "BOOL" => data
            .0
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Element::Bool(b) => Ok(*b),
                Element::Number(n) if *n == 0.0 || *n == 1.0 => Ok(*n == 1.0),
                _ => Err(Error::invalid(format!(
                    "input {name:?} element {i} ({v}) is not a BOOL (true, false, 0 or 1)"
                ))),
            })
            .collect::<Result<Vec<bool>>>()
            .map(TensorData::Bool),
        other => Err(Error::invalid(format!(
            "input {name:?} has datatype {other:?}; {}",
            super::DATATYPES
        ))),
    }
}

/// Decodes the raw bytes `binary_data_size` gave an input.
fn binary_data(name: &str, datatype: &str, chunk: &[u8]) -> Result<TensorData> {
    TensorData::from_raw(name, datatype, chunk)
}

/// Decodes a REST inference body. `header_len` is the `Inference-Header-Content-Length` header:
/// the JSON part's length, binary input data following it.
pub fn decode(body: &[u8], header_len: Option<usize>) -> Result<(InferRequest, BinaryOutputs)> {
    let (json_part, mut binary) = match header_len {
        Some(n) if n > body.len() => {
            return Err(Error::invalid(format!(
                "Inference-Header-Content-Length is {n} but the body has {} bytes",
                body.len()
            )))
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let req: RestRequest = serde_json::from_slice(json_part).map_err(|e| {
        Error::invalid(format!(
            "malformed inference request JSON: {e}; accepted: {{\"inputs\": [{{\"name\", \"shape\", \"datatype\", \"data\"}}], \"outputs\"?, \"parameters\"?, \"id\"?}}"
        ))
    })?;
    let parameters = req.parameters.unwrap_or_default();
    let default_binary = parameters
        .get("binary_data_output")
        .and_then(Param::as_bool)
        .unwrap_or(false);
    let inputs = req
        .inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| decode_input(i, input, &mut binary))
        .collect::<Result<Vec<_>>>()?;
    if !binary.is_empty() {
        return Err(Error::invalid(format!(
            "{} bytes of binary data follow the JSON header but no input claims them",
            binary.len()
        )));
    }
    let (outputs, per_output) = match req.outputs {
        None => (None, Vec::new()),
        Some(list) => {
            let (names, per_output) = decode_outputs(list)?;
            (Some(names), per_output)
        }
    };
    Ok((
        InferRequest {
            id: req.id,
            parameters: parameters.0,
            inputs,
            outputs,
        },
        BinaryOutputs {
            default: default_binary,
            per_output,
        },
    ))
}

/// Input `i`: its JSON `data`, or the next `binary_data_size` bytes of `binary` (taken off it).
fn decode_input(i: usize, input: RestInput, binary: &mut &[u8]) -> Result<InferInput> {
    let what = format!("inputs[{i}]");
    let binary_size = input
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_size"))
        .map(|v| match v {
            Param::Int(n) => usize::try_from(*n).map_err(|_| ()),
            _ => Err(()),
        })
        .transpose()
        .map_err(|()| {
            Error::invalid(format!(
                "{what}.parameters.binary_data_size must be a non-negative integer"
            ))
        })?;
    let data = match (binary_size, input.data) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid(format!(
                "{what} has both `data` and binary_data_size; give one"
            )))
        }
        (Some(n), None) => {
            if n > binary.len() {
                return Err(Error::invalid(format!(
                    "{what} declares {n} bytes of binary data; {} bytes are left in the body",
                    binary.len()
                )));
            }
            let (chunk, rest) = binary.split_at(n);
            *binary = rest;
            binary_data(&input.name, &input.datatype, chunk)?
        }
        (None, Some(d)) => json_data(&input.name, &input.datatype, d)?,
        (None, None) => {
            return Err(Error::invalid(format!(
                "{what} has neither `data` nor parameters.binary_data_size"
            )))
        }
    };
    Ok(InferInput {
        name: input.name,
        datatype: input.datatype,
        shape: input.shape,
        data,
    })
}

/// Per output: its name and its `binary_data` parameter.
type BinaryFlags = Vec<(String, bool)>;

/// The outputs asked for, by name, and those whose `binary_data` parameter is set.
fn decode_outputs(list: Vec<RestOutput>) -> Result<(Vec<String>, BinaryFlags)> {
    let mut per_output = Vec::new();
    let mut names = Vec::with_capacity(list.len());
    for (i, out) in list.into_iter().enumerate() {
        let what = format!("outputs[{i}]");
        for (k, v) in out.parameters.unwrap_or_default().0 {
            match (k.as_str(), v) {
                ("binary_data", Param::Bool(b)) => per_output.push((out.name.clone(), b)),
                ("binary_data", _) => {
                    return Err(Error::invalid(format!(
                        "{what}.parameters.binary_data must be a bool"
                    )))
                }
                // Triton's classification extension and others are not supported.
                (other, _) => {
                    return Err(Error::invalid(format!(
                        "{what}: unknown output parameter {other:?}; accepted: binary_data"
                    )))
                }
            }
        }
        names.push(out.name);
    }
    Ok((names, per_output))
}

/// The JSON part of a REST inference response.
#[derive(Debug, Serialize)]
struct RestResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<ResponseParameters>,
    outputs: Vec<RestOutputTensor<'a>>,
}

/// The response's parameters: how many rows were answered at their deadline.
#[derive(Debug, Serialize)]
struct ResponseParameters {
    deadline_exits: usize,
}

/// One output: its values in `data`, or their size when they follow the JSON as binary data.
#[derive(Debug, Serialize)]
struct RestOutputTensor<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryDataSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonValues<'a>>,
}

#[derive(Debug, Serialize)]
struct BinaryDataSize {
    binary_data_size: usize,
}

/// Output values in JSON: numbers, or BYTES elements as (lossy UTF-8) strings.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum JsonValues<'a> {
    Int64(&'a [i64]),
    Int32(&'a [i32]),
    Fp32(&'a [f32]),
    Bytes(Vec<std::borrow::Cow<'a, str>>),
}

impl<'a> From<&'a OutputData> for JsonValues<'a> {
    fn from(d: &'a OutputData) -> Self {
        match d {
            OutputData::Int64(v) => JsonValues::Int64(v),
            OutputData::Int32(v) => JsonValues::Int32(v),
            OutputData::Fp32(v) => JsonValues::Fp32(v),
            OutputData::Bytes(v) => {
                JsonValues::Bytes(v.iter().map(|b| String::from_utf8_lossy(b)).collect())
            }
        }
    }
}

/// Encodes a response: the JSON document, then the binary outputs. Returns the body and, when
/// binary data follows, the JSON part's length for `Inference-Header-Content-Length`.
pub fn encode(resp: &InferResponse, binary: &BinaryOutputs) -> (Vec<u8>, Option<usize>) {
    let mut tail = Vec::new();
    let outputs = resp
        .outputs
        .iter()
        .map(|o| {
            let (parameters, data) = if binary.is_binary(&o.name) {
                let raw = o.data.raw();
                let size = raw.len();
                tail.extend_from_slice(&raw);
                (
                    Some(BinaryDataSize {
                        binary_data_size: size,
                    }),
                    None,
                )
            } else {
                (None, Some(JsonValues::from(&o.data)))
            };
            RestOutputTensor {
                name: &o.name,
                datatype: o.data.datatype(),
                shape: &o.shape,
                parameters,
                data,
            }
        })
        .collect();
    let doc = RestResponse {
        model_name: &resp.model_name,
        model_version: &resp.model_version,
        id: resp.id.as_deref(),
        parameters: (resp.deadline_exits > 0).then_some(ResponseParameters {
            deadline_exits: resp.deadline_exits,
        }),
        outputs,
    };
    // Serializing these types cannot fail: every map key is a string.
    let mut body = serde_json::to_vec(&doc).unwrap_or_default();
    if tail.is_empty() {
        (body, None)
    } else {
        let n = body.len();
        body.extend_from_slice(&tail);
        (body, Some(n))
    }
}

type Shared = Arc<Service>;

pub fn router() -> Router<Shared> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/infer", post(infer))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_metadata_version),
        )
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready_version),
        )
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer_version),
        )
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository_unload),
        )
}

/// Server metadata: name, version and the protocol extensions supported.
#[utoipa::path(get, path = "/v2", tag = "open-inference",
    responses((status = 200, description = "Server metadata", body = ServerMetadata)))]
pub async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: SERVER_NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: vec!["binary_tensor_data".into(), "model_repository".into()],
    })
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Live {
    pub live: bool,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Ready {
    pub ready: bool,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/v2/health/live", tag = "open-inference",
    responses((status = 200, description = "Live", body = Live)))]
pub async fn live() -> Json<Live> {
    Json(Live { live: true })
}

/// Readiness: every model loaded and serving, not draining.
#[utoipa::path(get, path = "/v2/health/ready", tag = "open-inference",
    responses((status = 200, description = "Ready", body = Ready),
              (status = 503, description = "Not ready", body = Ready)))]
pub async fn ready(State(state): State<Shared>) -> Response {
    let r = state.is_ready();
    let status = if r {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Ready { ready: r })).into_response()
}

fn metadata_for(state: &Service, name: &str, version: Option<&str>) -> Result<ModelMetadata> {
    let m = super::model(state, name, version)?;
    Ok(super::metadata(&m))
}

/// Model metadata: inputs and outputs with datatypes and shapes (-1 for the batch).
#[utoipa::path(get, path = "/v2/models/{model}", tag = "open-inference",
    params(("model" = String, Path, description = "Model name")),
    responses((status = 200, description = "Model metadata", body = ModelMetadata),
              (status = 404, description = "No such model", body = crate::error::ErrorBody)))]
pub async fn model_metadata(
    State(state): State<Shared>,
    Path(model): Path<String>,
) -> Result<Json<ModelMetadata>> {
    metadata_for(&state, &model, None).map(Json)
}

/// Model metadata for one version (the manifest's `version`).
#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}", tag = "open-inference",
    params(("model" = String, Path, description = "Model name"),
           ("version" = String, Path, description = "Model version")),
    responses((status = 200, description = "Model metadata", body = ModelMetadata),
              (status = 404, description = "No such model or version", body = crate::error::ErrorBody)))]
pub async fn model_metadata_version(
    State(state): State<Shared>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<ModelMetadata>> {
    metadata_for(&state, &model, Some(&version)).map(Json)
}

/// A model's readiness.
#[derive(Serialize)]
struct ModelReady {
    name: String,
    ready: bool,
}

fn ready_response(state: &Service, name: &str, version: Option<&str>) -> Result<Response> {
    let r = super::model_ready(state, name, version)?;
    let status = if r {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = ModelReady {
        name: name.to_string(),
        ready: r,
    };
    Ok((status, Json(body)).into_response())
}

/// Model readiness: 200 when it serves, 503 while it recovers or the server drains.
#[utoipa::path(get, path = "/v2/models/{model}/ready", tag = "open-inference",
    params(("model" = String, Path, description = "Model name")),
    responses((status = 200, description = "Ready", body = Ready),
              (status = 503, description = "Not ready", body = Ready),
              (status = 404, description = "No such model", body = crate::error::ErrorBody)))]
pub async fn model_ready(
    State(state): State<Shared>,
    Path(model): Path<String>,
) -> Result<Response> {
    ready_response(&state, &model, None)
}

/// Model readiness for one version.
#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}/ready", tag = "open-inference",
    params(("model" = String, Path, description = "Model name"),
           ("version" = String, Path, description = "Model version")),
    responses((status = 200, description = "Ready", body = Ready),
              (status = 503, description = "Not ready", body = Ready),
              (status = 404, description = "No such model or version", body = crate::error::ErrorBody)))]
pub async fn model_ready_version(
    State(state): State<Shared>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response> {
    ready_response(&state, &model, Some(&version))
}

async fn run_infer(
    state: Shared,
    model: String,
    version: Option<String>,
    req: Request,
) -> Result<Response> {
    let header_len = match req.headers().get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    Error::invalid("Inference-Header-Content-Length must be a byte count")
                })?,
        ),
    };
    let limit = state.limits.max_body_bytes;
    let body = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| Error::TooLarge(format!("body over {limit} bytes (--max-body-bytes)")))?;
    let (request, binary) = decode(&body, header_len).inspect_err(|e| {
        state
            .metrics
            .requests_total
            .with_label_values(&["_unparsed", "none", &e.http_status().as_u16().to_string()])
            .inc();
    })?;
    let resp = super::infer(&state, &model, version.as_deref(), request, None).await?;
    let (bytes, json_len) = encode(&resp, &binary);
    let mut headers = HeaderMap::new();
    match json_len {
        Some(n) => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(HEADER_LENGTH, HeaderValue::from(n));
        }
        None => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    Ok((StatusCode::OK, headers, Body::from(bytes)).into_response())
}

/// Inference. Body: `{"id"?, "parameters"? {alpha, threshold, rule, max_timesteps, timeout_ms,
/// timeout (µs)},
/// "inputs": [{"name": "input", "datatype": "FP32", "shape": [N, C, H, W], "data": [...]}
/// | {"name": "image", "datatype": "BYTES", "shape": [N], "data": ["<base64>", ...]}],
/// "outputs"? [{"name": "class_ids" | "probabilities" | "timesteps" | "labels"}]}`.
/// Binary tensor data follows the JSON when `Inference-Header-Content-Length` is set. The
/// response's `parameters.deadline_exits` counts the rows answered at their deadline, when not 0.
#[utoipa::path(post, path = "/v2/models/{model}/infer", tag = "open-inference",
    params(("model" = String, Path, description = "Model name")),
    request_body(content = serde_json::Value, description = "Open Inference Protocol request", content_type = "application/json"),
    responses((status = 200, description = "Outputs class_ids, probabilities, timesteps, labels", body = serde_json::Value),
              (status = 400, description = "Malformed request", body = crate::error::ErrorBody),
              (status = 404, description = "No such model", body = crate::error::ErrorBody),
              (status = 413, description = "Too large", body = crate::error::ErrorBody),
              (status = 429, description = "Queue full", body = crate::error::ErrorBody)))]
pub async fn infer(
    State(state): State<Shared>,
    Path(model): Path<String>,
    req: Request,
) -> Result<Response> {
    run_infer(state, model, None, req).await
}

/// Inference on one version.
#[utoipa::path(post, path = "/v2/models/{model}/versions/{version}/infer", tag = "open-inference",
    params(("model" = String, Path, description = "Model name"),
           ("version" = String, Path, description = "Model version")),
    request_body(content = serde_json::Value, description = "Open Inference Protocol request", content_type = "application/json"),
    responses((status = 200, description = "Outputs class_ids, probabilities, timesteps, labels", body = serde_json::Value),
              (status = 400, description = "Malformed request", body = crate::error::ErrorBody),
              (status = 404, description = "No such model or version", body = crate::error::ErrorBody),
              (status = 429, description = "Queue full", body = crate::error::ErrorBody)))]
pub async fn infer_version(
    State(state): State<Shared>,
    Path((model, version)): Path<(String, String)>,
    req: Request,
) -> Result<Response> {
    run_infer(state, model, Some(version), req).await
}

/// The body of `POST /v2/repository/index` (both fields optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct RepositoryIndexRequest {
    /// Ignored: the server has one repository, `--models`.
    #[serde(default)]
    pub repository_name: String,
    /// Only the versions ready to serve.
    #[serde(default)]
    pub ready: bool,
}

/// The body of a repository load or unload (optional). Load takes `parameters.version`: the
/// version to serve, which pins it (`"latest"` unpins).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct RepositoryModelRequest {
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: serde_json::Map<String, serde_json::Value>,
}

fn authorize(state: &Service, headers: &HeaderMap) -> Result<()> {
    state.authorize(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    )
}

/// Every model and version in the repository with its state (READY, LOADING, UNAVAILABLE) and
/// the reason.
#[utoipa::path(post, path = "/v2/repository/index", tag = "open-inference",
    request_body(content = RepositoryIndexRequest, description = "Optional", content_type = "application/json"),
    responses((status = 200, description = "One row per model version", body = Vec<crate::repository::IndexEntry>)))]
pub async fn repository_index(
    State(state): State<Shared>,
    body: axum::body::Bytes,
) -> Result<Response> {
    let req: RepositoryIndexRequest =
        crate::service::models::optional_json(&body, "repository index")?;
    Ok(Json(state.repository_index(req.ready)).into_response())
}

/// Loads a model, or swaps it to its latest (or the named) version; the version serving keeps
/// serving until the new one is ready and checked. Needs the admin token.
#[utoipa::path(post, path = "/v2/repository/models/{model}/load", tag = "open-inference",
    params(("model" = String, Path, description = "Model name")),
    security(("admin_token" = [])),
    request_body(content = RepositoryModelRequest, description = "Optional: parameters.version", content_type = "application/json"),
    responses((status = 200, description = "The version serving now", body = crate::service::models::LoadReport),
              (status = 400, description = "The package failed to load or its golden check; the old version keeps serving", body = crate::error::ErrorBody),
              (status = 401, description = "Missing or wrong token", body = crate::error::ErrorBody),
              (status = 404, description = "No such model or version on disk", body = crate::error::ErrorBody),
              (status = 409, description = "Not allowed by --model-control", body = crate::error::ErrorBody)))]
pub async fn repository_load(
    State(state): State<Shared>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response> {
    authorize(&state, &headers)?;
    state.check_model_control("load")?;
    let req: RepositoryModelRequest =
        crate::service::models::optional_json(&body, "repository load")?;
    let version = match req.parameters.get("version") {
        None => None,
        Some(serde_json::Value::String(v)) => Some(v.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(other) => {
            return Err(Error::invalid(format!(
                "parameters.version {other} is not a version; accepted: a version such as \"2\", or \"latest\""
            )))
        }
    };
    if let Some(k) = req.parameters.keys().find(|k| *k != "version") {
        return Err(Error::invalid(format!(
            "unknown load parameter {k:?}; accepted: version"
        )));
    }
    let report = state.load_model(&model, version.as_deref()).await?;
    Ok(Json(report).into_response())
}

/// Stops serving a model: new requests get 404, requests in flight finish. Needs the admin token.
#[utoipa::path(post, path = "/v2/repository/models/{model}/unload", tag = "open-inference",
    params(("model" = String, Path, description = "Model name")),
    security(("admin_token" = [])),
    request_body(content = RepositoryModelRequest, description = "Optional; parameters are accepted and ignored (unload_dependents: there are none)", content_type = "application/json"),
    responses((status = 200, description = "Unloaded", body = serde_json::Value),
              (status = 401, description = "Missing or wrong token", body = crate::error::ErrorBody),
              (status = 404, description = "The model is not loaded", body = crate::error::ErrorBody),
              (status = 409, description = "Not allowed by --model-control", body = crate::error::ErrorBody)))]
pub async fn repository_unload(
    State(state): State<Shared>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response> {
    authorize(&state, &headers)?;
    state.check_model_control("unload")?;
    let _: RepositoryModelRequest =
        crate::service::models::optional_json(&body, "repository unload")?;
    state.unload_model(&model, "unloaded by a call").await?;
    Ok(Json(serde_json::json!({})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn binary_tail_is_split_per_input() {
        let json = br#"{"inputs":[{"name":"image","datatype":"BYTES","shape":[2],"parameters":{"binary_data_size":13}}],"parameters":{"binary_data_output":true},"outputs":[{"name":"labels","parameters":{"binary_data":false}}]}"#;
        let mut body = json.to_vec();
        body.extend_from_slice(&OutputData::Bytes(vec![b"abc".to_vec(), b"de".to_vec()]).raw());
        let (r, b) = decode(&body, Some(json.len())).unwrap();
        assert_eq!(
            r.inputs[0].data,
            TensorData::Bytes(vec![b"abc".to_vec(), b"de".to_vec()])
        );
        assert!(b.default);
        assert!(!b.is_binary("labels"));
        assert!(b.is_binary("class_ids"));
        // A claimed size past the end, and unclaimed trailing bytes, are errors.
        assert!(decode(&body[..body.len() - 1], Some(json.len())).is_err());
        let mut extra = body.clone();
        extra.push(0);
        assert!(decode(&extra, Some(json.len())).is_err());
        assert!(decode(&body, Some(body.len() + 1)).is_err());
    }

    #[test]
    fn json_fp32_nested() {
        let body = br#"{"id":"x","inputs":[{"name":"input","datatype":"FP32","shape":[1,1,2,2],"data":[[1,2],[3.5,4]]}]}"#;
        let (r, _) = decode(body, None).unwrap();
        assert_eq!(r.id.as_deref(), Some("x"));
        assert_eq!(r.inputs[0].data, TensorData::Fp32(vec![1.0, 2.0, 3.5, 4.0]));
        let bad = br#"{"inputs":[{"name":"input","datatype":"FP32","shape":[1],"data":["a"]}]}"#;
        assert!(decode(bad, None)
            .unwrap_err()
            .to_string()
            .contains("not a finite FP32"));
    }

    fn error(body: &[u8]) -> String {
        match decode(body, None) {
            Ok(r) => panic!("{} accepted: {r:?}", String::from_utf8_lossy(body)),
            Err(e) => {
                assert_eq!(e.http_status(), StatusCode::BAD_REQUEST, "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn json_data_forms() {
        // A lone element is a one-element tensor; BYTES are base64 strings.
        let (r, _) = decode(
            br#"{"inputs":[{"name":"input","datatype":"FP32","shape":[1],"data":7}]}"#,
            None,
        )
        .unwrap();
        assert_eq!(r.inputs[0].data, TensorData::Fp32(vec![7.0]));
        let (r, _) = decode(
            br#"{"inputs":[{"name":"image","datatype":"BYTES","shape":[2],"data":[["YWI="],["Yw=="]]}],"outputs":null,"id":null}"#,
            None,
        )
        .unwrap();
        assert_eq!(
            r.inputs[0].data,
            TensorData::Bytes(vec![b"ab".to_vec(), b"c".to_vec()])
        );
        assert_eq!((r.id, r.outputs), (None, None));
        let deep = format!(
            r#"{{"inputs":[{{"name":"input","datatype":"FP32","shape":[1],"data":{}1{}}}]}}"#,
            "[".repeat(10),
            "]".repeat(10)
        );
        assert!(error(deep.as_bytes()).contains("nested deeper than 8"));
        let e = error(
            br#"{"inputs":[{"name":"input","datatype":"FP32","shape":[1],"data":[1, true]}]}"#,
        );
        assert!(e.contains("element 1 (true) is not a finite FP32"), "{e}");
        let e =
            error(br#"{"inputs":[{"name":"image","datatype":"BYTES","shape":[1],"data":[1]}]}"#);
        assert!(e.contains("element 0 is not a string"), "{e}");
        let e = error(br#"{"inputs":[{"name":"input","datatype":"FP64","shape":[1],"data":[1]}]}"#);
        assert!(e.contains("accepted: FP32, UINT8 or BOOL"), "{e}");
    }

    #[test]
    fn structural_errors_say_what_is_wrong() {
        for (body, why) in [
            (&br#"[]"#[..], "an inference request object"),
            (br#"{}"#, "missing field `inputs`"),
            (br#"{"inputs": {}}"#, "malformed inference request JSON"),
            (br#"{"inputs": [{"name": "input", "datatype": "FP32", "data": [1]}]}"#, "missing field `shape`"),
            (br#"{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1.5], "data": [1]}]}"#, "i64"),
            (br#"{"id": 5, "inputs": []}"#, "a string"),
            (br#"{"inputs": [], "parameters": []}"#, "a `parameters` object"),
            (br#"{"inputs": [], "parameters": {"alpha": null}}"#, "a bool, a number or a string for parameter \"alpha\""),
            (br#"{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1]}]}"#, "neither `data` nor"),
            (br#"{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [1], "parameters": {"binary_data_size": 4}}]}"#, "both `data` and"),
            (br#"{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": -1}}]}"#, "non-negative integer"),
            (br#"{"inputs": [], "outputs": [{"name": "labels", "parameters": {"binary_data": 1}}]}"#, "binary_data must be a bool"),
            (br#"{"inputs": [], "outputs": [{"name": "labels", "parameters": {"class_count": 3}}]}"#, "unknown output parameter \"class_count\""),
            (br#"{"inputs": [], "outputs": [{}]}"#, "missing field `name`"),
        ] {
            let e = error(body);
            assert!(e.contains(why), "{}: {e}", String::from_utf8_lossy(body));
        }
        // Fields this server does not know are ignored.
        let (r, _) = decode(br#"{"inputs": [], "extra": {"a": 1}}"#, None).unwrap();
        assert!(r.inputs.is_empty());
    }

    #[test]
    fn response_json_and_binary() {
        let resp = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: Some("r".into()),
            deadline_exits: 0,
            outputs: vec![
                super::super::OutputTensor {
                    name: "class_ids".into(),
                    shape: vec![2],
                    data: OutputData::Int64(vec![3, 4]),
                },
                super::super::OutputTensor {
                    name: "labels".into(),
                    shape: vec![2],
                    data: OutputData::Bytes(vec![b"a".to_vec(), b"bc".to_vec()]),
                },
            ],
        };
        let (body, n) = encode(&resp, &BinaryOutputs::default());
        assert_eq!(n, None);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"model_name": "m", "model_version": "1", "id": "r", "outputs": [
                {"name": "class_ids", "datatype": "INT64", "shape": [2], "data": [3, 4]},
                {"name": "labels", "datatype": "BYTES", "shape": [2], "data": ["a", "bc"]}]})
        );
        let binary = BinaryOutputs {
            default: false,
            per_output: vec![("labels".into(), true)],
        };
        let (body, n) = encode(&resp, &binary);
        let n = n.expect("binary data follows");
        let v: serde_json::Value = serde_json::from_slice(&body[..n]).unwrap();
        assert_eq!(v["outputs"][1]["parameters"]["binary_data_size"], 11);
        assert!(v["outputs"][1].get("data").is_none());
        assert_eq!(
            &body[n..],
            &OutputData::Bytes(vec![b"a".to_vec(), b"bc".to_vec()]).raw()[..]
        );
    }
}
