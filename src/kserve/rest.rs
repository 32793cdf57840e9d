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
use serde_json::{json, Map, Value};

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

fn param(key: &str, v: &Value) -> Result<Param> {
    match v {
        Value::Bool(b) => Ok(Param::Bool(*b)),
        Value::String(s) => Ok(Param::Str(s.clone())),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Ok(Param::Int(i)),
            None => n
                .as_f64()
                .map(Param::Float)
                .ok_or_else(|| Error::invalid(format!("parameter {key:?}: number out of range"))),
        },
        _ => Err(Error::invalid(format!(
            "parameter {key:?} must be a bool, a number or a string"
        ))),
    }
}

fn params(v: Option<&Value>, what: &str) -> Result<Vec<(String, Param)>> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| Ok((k.clone(), param(k, v)?)))
            .collect(),
        Some(_) => Err(Error::invalid(format!(
            "{what} `parameters` must be an object"
        ))),
    }
}

fn field<'a>(obj: &'a Map<String, Value>, key: &str, what: &str) -> Result<&'a Value> {
    obj.get(key)
        .ok_or_else(|| Error::invalid(format!("{what} has no `{key}`")))
}

fn string(v: &Value, what: &str) -> Result<String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| Error::invalid(format!("{what} must be a string")))
}

/// Flattens nested JSON arrays (row-major) into their leaves.
fn leaves<'a>(v: &'a Value, out: &mut Vec<&'a Value>, depth: usize) -> Result<()> {
    if depth > 8 {
        return Err(Error::invalid("`data` is nested deeper than 8 levels"));
    }
    match v {
        Value::Array(items) => {
            for i in items {
                leaves(i, out, depth + 1)?;
            }
        }
        other => out.push(other),
    }
    Ok(())
}

fn json_data(name: &str, datatype: &str, data: &Value) -> Result<TensorData> {
    let mut flat = Vec::new();
    leaves(data, &mut flat, 0)?;
    match datatype {
        "FP32" => flat
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let f = v.as_f64().map(|f| f as f32).filter(|f| f.is_finite());
                f.ok_or_else(|| {
                    Error::invalid(format!(
                        "input {name:?} element {i} ({v}) is not a finite FP32 number"
                    ))
                })
            })
            .collect::<Result<Vec<f32>>>()
            .map(TensorData::Fp32),
        "BYTES" => flat
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let s = v.as_str().ok_or_else(|| {
                    Error::invalid(format!("input {name:?} element {i} is not a string"))
                })?;
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
        other => Err(Error::invalid(format!(
            "input {name:?} has datatype {other:?}; accepted: FP32 or BYTES"
        ))),
    }
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
    let v: Value = serde_json::from_slice(json_part).map_err(|e| {
        Error::invalid(format!(
            "malformed inference request JSON: {e}; accepted: {{\"inputs\": [{{\"name\", \"shape\", \"datatype\", \"data\"}}], \"outputs\"?, \"parameters\"?, \"id\"?}}"
        ))
    })?;
    let obj = v
        .as_object()
        .ok_or_else(|| Error::invalid("the inference request must be a JSON object"))?;
    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(string(v, "`id`")?),
    };
    let parameters = params(obj.get("parameters"), "request")?;
    let default_binary = parameters
        .iter()
        .find(|(k, _)| k == "binary_data_output")
        .and_then(|(_, v)| v.as_bool())
        .unwrap_or(false);
    let Some(Value::Array(raw_inputs)) = obj.get("inputs") else {
        return Err(Error::invalid("the request needs `inputs`, an array"));
    };
    let mut inputs = Vec::with_capacity(raw_inputs.len());
    for (i, inp) in raw_inputs.iter().enumerate() {
        let what = format!("inputs[{i}]");
        let o = inp
            .as_object()
            .ok_or_else(|| Error::invalid(format!("{what} must be an object")))?;
        let name = string(field(o, "name", &what)?, &format!("{what}.name"))?;
        let datatype = string(field(o, "datatype", &what)?, &format!("{what}.datatype"))?;
        let shape = field(o, "shape", &what)?
            .as_array()
            .and_then(|a| a.iter().map(Value::as_i64).collect::<Option<Vec<i64>>>())
            .ok_or_else(|| Error::invalid(format!("{what}.shape must be an array of integers")))?;
        let p = params(o.get("parameters"), &what)?;
        let binary_size = p
            .iter()
            .find(|(k, _)| k == "binary_data_size")
            .map(|(_, v)| match v {
                Param::Int(n) if *n >= 0 => Ok(*n as usize),
                _ => Err(Error::invalid(format!(
                    "{what}.parameters.binary_data_size must be a non-negative integer"
                ))),
            })
            .transpose()?;
        let data = match (binary_size, o.get("data")) {
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
                binary = rest;
                match datatype.as_str() {
                    "FP32" => TensorData::Fp32(super::fp32_from_raw(chunk)?),
                    "BYTES" => TensorData::Bytes(super::bytes_from_raw(chunk)?),
                    other => {
                        return Err(Error::invalid(format!(
                            "input {name:?} has datatype {other:?}; accepted: FP32 or BYTES"
                        )))
                    }
                }
            }
            (None, Some(d)) => json_data(&name, &datatype, d)?,
            (None, None) => {
                return Err(Error::invalid(format!(
                    "{what} has neither `data` nor parameters.binary_data_size"
                )))
            }
        };
        inputs.push(InferInput {
            name,
            datatype,
            shape,
            data,
        });
    }
    if !binary.is_empty() {
        return Err(Error::invalid(format!(
            "{} bytes of binary data follow the JSON header but no input claims them",
            binary.len()
        )));
    }
    let mut per_output = Vec::new();
    let outputs = match obj.get("outputs") {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => {
            let mut names = Vec::with_capacity(list.len());
            for (i, out) in list.iter().enumerate() {
                let what = format!("outputs[{i}]");
                let o = out
                    .as_object()
                    .ok_or_else(|| Error::invalid(format!("{what} must be an object")))?;
                let name = string(field(o, "name", &what)?, &format!("{what}.name"))?;
                for (k, v) in params(o.get("parameters"), &what)? {
                    match (k.as_str(), v) {
                        ("binary_data", Param::Bool(b)) => per_output.push((name.clone(), b)),
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
                names.push(name);
            }
            Some(names)
        }
        Some(_) => return Err(Error::invalid("`outputs` must be an array")),
    };
    Ok((
        InferRequest {
            id,
            parameters,
            inputs,
            outputs,
        },
        BinaryOutputs {
            default: default_binary,
            per_output,
        },
    ))
}

fn json_values(d: &OutputData) -> Value {
    match d {
        OutputData::Int64(v) => json!(v),
        OutputData::Int32(v) => json!(v),
        OutputData::Fp32(v) => json!(v),
        OutputData::Bytes(v) => Value::Array(
            v.iter()
                .map(|b| Value::String(String::from_utf8_lossy(b).into_owned()))
                .collect(),
        ),
    }
}

/// Encodes a response: the JSON document, then the binary outputs. Returns the body and, when
/// binary data follows, the JSON part's length for `Inference-Header-Content-Length`.
pub fn encode(resp: &InferResponse, binary: &BinaryOutputs) -> (Vec<u8>, Option<usize>) {
    let mut tail = Vec::new();
    let outputs: Vec<Value> = resp
        .outputs
        .iter()
        .map(|o| {
            let mut v = json!({
                "name": o.name,
                "datatype": o.data.datatype(),
                "shape": o.shape,
            });
            if binary.is_binary(&o.name) {
                let raw = o.data.raw();
                v["parameters"] = json!({"binary_data_size": raw.len()});
                tail.extend_from_slice(&raw);
            } else {
                v["data"] = json_values(&o.data);
            }
            v
        })
        .collect();
    let mut doc = json!({
        "model_name": resp.model_name,
        "model_version": resp.model_version,
        "outputs": outputs,
    });
    if let Some(id) = &resp.id {
        doc["id"] = json!(id);
    }
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
}

/// Server metadata: name, version and the protocol extensions supported.
#[utoipa::path(get, path = "/v2", tag = "open-inference",
    responses((status = 200, description = "Server metadata", body = ServerMetadata)))]
pub async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: SERVER_NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: vec!["binary_tensor_data".into()],
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

fn ready_response(state: &Service, name: &str, version: Option<&str>) -> Result<Response> {
    let r = super::model_ready(state, name, version)?;
    let status = if r {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(json!({"name": name, "ready": r}))).into_response())
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
    let resp = super::infer(&state, &model, version.as_deref(), request).await?;
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

/// Inference. Body: `{"id"?, "parameters"? {alpha, rule, max_timesteps, timeout_ms},
/// "inputs": [{"name": "input", "datatype": "FP32", "shape": [N, C, H, W], "data": [...]}
/// | {"name": "image", "datatype": "BYTES", "shape": [N], "data": ["<base64>", ...]}],
/// "outputs"? [{"name": "class_ids" | "probabilities" | "timesteps" | "labels"}]}`.
/// Binary tensor data follows the JSON when `Inference-Header-Content-Length` is set.
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
