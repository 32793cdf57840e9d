//! HTTP API (axum): classification, model metadata, health, metrics and admin.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;

use crate::error::{Chain, Error, ErrorBody};
use crate::npy;
use crate::preprocess;
use crate::service::{
    ClassifyOptions, ClassifyResult, ExitPolicyUpdate, ExitPolicyView, Input, ModelView, Service,
    OPTION_NAMES,
};

pub type Shared = Arc<Service>;

/// Settings of the HTTP transport itself (the service's limits live in `service::Limits`).
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub cors_origins: Vec<String>,
    /// `--max-http-in-flight`: requests read and answered at once before 429.
    pub max_in_flight: usize,
    /// Longest request target (path and query) accepted, in bytes.
    pub max_uri_bytes: usize,
    pub enable_fault_injection: bool,
}

/// Seconds a client is told to wait (Retry-After) when admission refuses it.
pub const RETRY_AFTER_S: u64 = 1;

/// This API's routes, without the layers every HTTP route shares (see [`finish`]).
pub fn routes(opts: &HttpOptions) -> Router<Shared> {
    let app = Router::new()
        .route("/classify", post(classify_default))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{name}", get(get_model))
        .route("/v1/models/{name}/classify", post(classify_named))
        .route(
            "/admin/models/{name}/exit-policy",
            get(get_exit_policy).put(put_exit_policy),
        )
        .route("/admin/repository", get(admin_repository))
        .route("/admin/models/{name}/load", post(admin_load))
        .route("/admin/models/{name}/unload", post(admin_unload))
        .route("/", get(index))
        .route("/v1/models/{name}/samples", get(list_samples))
        .route("/v1/models/{name}/samples/{file}", get(get_sample))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if opts.enable_fault_injection {
        app.route("/admin/models/{name}/fault", post(inject_fault))
    } else {
        app
    }
}

/// What every HTTP route shares, whichever protocol module defined it: errors in the JSON error
/// format for unknown routes, wrong methods and over-long targets; admission (`--max-http-in-flight`);
/// the body limit; CORS.
pub fn finish(routes: Router<Shared>, state: Shared, opts: &HttpOptions) -> Router {
    let admission = Admission {
        permits: Arc::new(tokio::sync::Semaphore::new(opts.max_in_flight.max(1))),
        limit: opts.max_in_flight,
        max_uri_bytes: opts.max_uri_bytes,
        metrics: state.metrics.clone(),
    };
    let app = routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(admission, admit_http))
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .with_state(state);
    match cors_layer(&opts.cors_origins) {
        Some(c) => app.layer(c),
        None => app,
    }
}

#[derive(Clone)]
struct Admission {
    permits: Arc<tokio::sync::Semaphore>,
    limit: usize,
    max_uri_bytes: usize,
    metrics: Arc<crate::metrics::Metrics>,
}

/// Load shedding: at most `--max-http-in-flight` requests are read and answered at once; the
/// next one gets 429 with Retry-After before its body is read. Probes and metrics always pass.
/// A request target over `max_uri_bytes` gets 414 before anything else.
async fn admit_http(
    State(adm): State<Admission>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > adm.max_uri_bytes {
        adm.metrics
            .count_rejected(StatusCode::URI_TOO_LONG.as_u16());
        return Error::UriTooLong(format!(
            "request target of {target} bytes; accepted: at most {} bytes (send options in the body instead)",
            adm.max_uri_bytes
        ))
        .into_response();
    }
    if matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics") {
        return next.run(req).await;
    }
    match adm.permits.clone().try_acquire_owned() {
        Ok(permit) => {
            let resp = next.run(req).await;
            drop(permit);
            resp
        }
        Err(_) => {
            adm.metrics
                .count_rejected(StatusCode::TOO_MANY_REQUESTS.as_u16());
            Error::Overloaded {
                model: "* (HTTP admission, --max-http-in-flight)".into(),
                depth: adm.limit,
                retry_after_s: RETRY_AFTER_S,
            }
            .into_response()
        }
    }
}

fn cors_layer(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let list: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(list)
            .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
            .allow_headers([header::CONTENT_TYPE]),
    )
}

const ROUTES: &str = "GET /v1/models, POST /classify, POST /v1/models/{name}/classify, /v2 (Open Inference Protocol), /healthz, /readyz, /metrics, /openapi.json";

async fn not_found(uri: axum::http::Uri) -> Error {
    Error::NotFound(format!("no route {}; see {ROUTES}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Error {
    Error::MethodNotAllowed(format!(
        "{method} is not accepted on {}; see {ROUTES} (or GET /openapi.json)",
        uri.path()
    ))
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// The JSON form of a classification request: exactly one of `image` or `tensor`, plus options.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonBody {
    /// The encoded image (PNG, JPEG, WebP, BMP or GIF), base64 (image models).
    #[schema(nullable = false)]
    image: Option<String>,
    /// The input's values in row-major (C) order, flat: an image model's preprocessed C×H×W
    /// floats, or a tensor model's values (numbers; `true`/`false` count as 1/0).
    #[schema(nullable = false, value_type = Vec<f64>)]
    tensor: Option<Vec<Scalar>>,
    /// The tensor's shape: `[*shape]` (static) or `[t, *shape]` with 1 ≤ t ≤ T (per_step).
    /// Without it, the values are one frame, or per_step whole frames back to back.
    #[schema(nullable = false)]
    shape: Option<Vec<usize>>,
    /// The values' type: float32 (the default), uint8 (integers 0..=255) or bool (0/1,
    /// true/false); all are cast to float32 unscaled.
    #[schema(nullable = false)]
    dtype: Option<String>,
    model: Option<String>,
    rule: Option<String>,
    alpha: Option<f64>,
    threshold: Option<f64>,
    max_timesteps: Option<u64>,
    top_k: Option<u64>,
    explain: Option<bool>,
    timeout_ms: Option<f64>,
}

fn merge(opts: &mut ClassifyOptions, b: &JsonBody) {
    macro_rules! take {
        ($($f:ident),*) => { $( if b.$f.is_some() { opts.$f = b.$f.clone(); } )* };
    }
    take!(
        model,
        rule,
        alpha,
        threshold,
        max_timesteps,
        top_k,
        explain,
        timeout_ms
    );
}

/// A JSON tensor element: a number, or a bool (1 / 0).
#[derive(Deserialize, Clone, Copy)]
#[serde(untagged, expecting = "a number or a bool")]
pub enum Scalar {
    Number(f64),
    Bool(bool),
}

fn tensor_from_json(values: &[Scalar], dtype: npy::Dtype) -> Result<Vec<f32>, Error> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let x = match *v {
                Scalar::Number(n) => n,
                Scalar::Bool(b) => f64::from(u8::from(b)),
            };
            let ok = match dtype {
                npy::Dtype::Float32 => (x as f32).is_finite(),
                npy::Dtype::Uint8 => x.fract() == 0.0 && (0.0..=255.0).contains(&x),
                npy::Dtype::Bool => x == 0.0 || x == 1.0,
            };
            if ok {
                Ok(x as f32)
            } else {
                Err(Error::invalid(format!(
                    "tensor value at index {i} ({x}) is not a {}",
                    match dtype {
                        npy::Dtype::Float32 => "finite float32",
                        npy::Dtype::Uint8 => "uint8 (an integer 0..=255)",
                        npy::Dtype::Bool => "bool (0, 1, true or false)",
                    }
                )))
            }
        })
        .collect()
}

/// The Content-Type of a `.npy` body.
pub const NPY_CONTENT_TYPE: &str = "application/x-npy";

fn npy_input(body: &[u8]) -> Result<Input, Error> {
    let a = npy::read(body).map_err(Error::invalid)?;
    Ok(Input::Shaped {
        shape: a.shape,
        data: a.data,
    })
}

/// The request header that sets the deadline in milliseconds, as the `timeout_ms` option does.
pub const TIMEOUT_HEADER: &str = "x-timeout-ms";

/// Reads the body in whichever form it came: multipart, JSON, or raw image bytes (at most
/// `max_body_bytes`).
pub async fn parse_request(
    max_body_bytes: usize,
    req: Request,
) -> Result<(Input, ClassifyOptions), Error> {
    let mut opts = ClassifyOptions::default();
    // The deadline may come as a header (a proxy can set it); the query and body override it.
    if let Some(v) = req.headers().get(TIMEOUT_HEADER) {
        let text = v.to_str().map_err(|_| {
            Error::invalid(format!(
                "header {TIMEOUT_HEADER} is not text; accepted: a number of milliseconds"
            ))
        })?;
        opts.set("timeout_ms", text)?;
    }
    if let Some(q) = req.uri().query() {
        for (k, v) in url_pairs(q)? {
            opts.set(&k, &v)?;
        }
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("multipart/form-data") {
        let input = multipart_input(req, max_body_bytes, &mut opts).await?;
        return Ok((input, opts));
    }
    let limit = max_body_bytes;
    let body: Bytes = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| Error::TooLarge(format!("body over {limit} bytes (--max-body-bytes)")))?;
    if content_type.starts_with("application/json") {
        let input = json_input(&body, &mut opts)?;
        return Ok((input, opts));
    }
    // A .npy file: by its Content-Type, or by its magic under application/octet-stream or none.
    let sniffed_npy = body.starts_with(b"\x93NUMPY")
        && (content_type.is_empty() || content_type.starts_with("application/octet-stream"));
    if content_type.starts_with(NPY_CONTENT_TYPE) || sniffed_npy {
        return Ok((npy_input(&body)?, opts));
    }
    let hint = preprocess::format_from_content_type(&content_type);
    if hint.is_none()
        && !content_type.is_empty()
        && !content_type.starts_with("application/octet-stream")
        && image::guess_format(&body).is_err()
    {
        return Err(Error::UnsupportedMediaType(format!(
            "Content-Type {content_type:?} is not accepted; send an image ({}), multipart/form-data with field `image`, a tensor as {NPY_CONTENT_TYPE} (a .npy file), or application/json",
            preprocess::ACCEPTED_FORMATS
        )));
    }
    Ok((
        Input::Image {
            bytes: body.to_vec(),
            hint,
        },
        opts,
    ))
}

/// A multipart/form-data body: the `image` field is the input, every other field an option.
async fn multipart_input(
    req: Request,
    max_body_bytes: usize,
    opts: &mut ClassifyOptions,
) -> Result<Input, Error> {
    let too_large = || {
        Error::TooLarge(format!(
            "body over {max_body_bytes} bytes (--max-body-bytes)"
        ))
    };
    let mut mp = Multipart::from_request(req, &())
        .await
        .map_err(|e| Error::invalid(format!("malformed multipart body: {e}")))?;
    let mut image = None;
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
            Err(e) => return Err(Error::invalid(format!("malformed multipart body: {e}"))),
        };
        let name = field.name().unwrap_or("").to_string();
        let hint = field
            .content_type()
            .and_then(preprocess::format_from_content_type);
        let data = field.bytes().await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                Error::invalid(format!("malformed multipart field {name:?}: {e}"))
            }
        })?;
        if name == "image" {
            image = Some(Input::Image {
                bytes: data.to_vec(),
                hint,
            });
        } else {
            let text = std::str::from_utf8(&data).map_err(|_| {
                Error::invalid(format!("multipart field {name:?} is not UTF-8 text"))
            })?;
            opts.set(&name, text)?;
        }
    }
    image.ok_or_else(|| {
        Error::invalid(format!(
            "multipart body has no `image` field; other fields accepted: {OPTION_NAMES}"
        ))
    })
}

/// A JSON body ([`JsonBody`]): its options merged into `opts`, and its image or tensor.
fn json_input(body: &[u8], opts: &mut ClassifyOptions) -> Result<Input, Error> {
    let b: JsonBody = serde_json::from_slice(body).map_err(|e| {
        Error::invalid(format!(
            "malformed JSON body: {e}; accepted: {{\"image\": \"<base64>\"}} or {{\"tensor\": [values], \"shape\"?: [dims], \"dtype\"?: \"float32|uint8|bool\"}} plus options {OPTION_NAMES}"
        ))
    })?;
    merge(opts, &b);
    if b.tensor.is_none() && (b.shape.is_some() || b.dtype.is_some()) {
        return Err(Error::invalid(
            "`shape` and `dtype` describe `tensor`; this body has no `tensor`",
        ));
    }
    match (&b.image, &b.tensor) {
        (Some(img), None) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(img.trim())
                .map_err(|e| Error::invalid(format!("`image` is not valid base64: {e}")))?;
            Ok(Input::Image { bytes, hint: None })
        }
        (None, Some(t)) => json_tensor(t, b.dtype.as_deref(), b.shape.as_ref()),
        _ => Err(Error::invalid(
            "JSON body needs exactly one of `image` (base64) or `tensor` (values, with `shape`)",
        )),
    }
}

/// A JSON body's `tensor` as `dtype` (float32 when absent), with its `shape` when given.
fn json_tensor(
    t: &[Scalar],
    dtype: Option<&str>,
    shape: Option<&Vec<usize>>,
) -> Result<Input, Error> {
    let dtype = match dtype {
        Some(d) => npy::Dtype::parse(d).map_err(Error::invalid)?,
        None => npy::Dtype::Float32,
    };
    let data = tensor_from_json(t, dtype)?;
    let Some(shape) = shape else {
        return Ok(Input::Tensor(data));
    };
    let n = shape
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .unwrap_or(usize::MAX);
    if n != data.len() {
        return Err(Error::invalid(format!(
            "`tensor` has {} values; `shape` {shape:?} needs {n}",
            data.len()
        )));
    }
    Ok(Input::Shaped {
        shape: shape.clone(),
        data,
    })
}

/// The query string's key/value pairs, sorted so that errors are reported in a stable order.
fn url_pairs(q: &str) -> Result<Vec<(String, String)>, Error> {
    let uri = format!("/?{q}")
        .parse()
        .map_err(|_| Error::invalid("malformed query string"))?;
    let axum::extract::Query(map) =
        axum::extract::Query::<HashMap<String, String>>::try_from_uri(&uri)
            .map_err(|e| Error::invalid(format!("malformed query string: {e}")))?;
    let mut v: Vec<_> = map.into_iter().collect();
    v.sort();
    Ok(v)
}

fn with_headers(result: ClassifyResult) -> Response {
    let mut resp = Json(&result).into_response();
    let h = resp.headers_mut();
    for (name, value) in [
        ("x-queue-time-ms", result.timings.queue_ms),
        ("x-inference-time-ms", result.timings.inference_ms),
        ("x-total-time-ms", result.timings.total_ms),
    ] {
        if let Ok(v) = HeaderValue::from_str(&format!("{value:.3}")) {
            h.insert(name, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&result.timesteps_used.to_string()) {
        h.insert("x-timesteps-used", v);
    }
    resp
}

async fn classify(state: Shared, model: Option<String>, req: Request) -> Response {
    let rid = request_id(req.headers());
    let span = tracing::debug_span!("classify", request_id = %rid);
    let rid_header = HeaderValue::from_str(&rid).ok();
    let mut resp = async move {
        let (input, mut opts) = match parse_request(state.limits.max_body_bytes, req).await {
            Ok(x) => x,
            Err(e) => {
                // Count rejected bodies too, so the error ratio sees them.
                state.metrics.count_rejected(e.http_status().as_u16());
                tracing::debug!(error = %Chain(&e), "rejected");
                return e.into_response();
            }
        };
        if let Some(m) = model {
            if opts.model.as_ref().is_some_and(|o| *o != m) {
                return Error::invalid(format!("the path names model {m:?} and the options {:?}", opts.model)).into_response();
            }
            opts.model = Some(m);
        }
        match state.classify(input, opts, rid, None).await {
            Ok(r) => {
                tracing::debug!(model = %r.model, class = r.class_id, timesteps = r.timesteps_used, total_ms = r.timings.total_ms, "classified");
                with_headers(r)
            }
            Err(e) => {
                tracing::debug!(error = %Chain(&e), "failed");
                e.into_response()
            }
        }
    }
    .instrument(span)
    .await;
    if let Some(v) = rid_header {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Classifies one input, running timesteps until the exit rule fires. The body is raw image bytes
/// (PNG, JPEG, WebP, BMP, GIF), `multipart/form-data` with an `image` field and option fields,
/// a `.npy` file (`application/x-npy`: a tensor model's `[*shape]` or, per_step, `[t, *shape]`
/// frames; float32, uint8 or bool), or JSON; options also come from the query string. A per_step
/// request with t frames runs at most t timesteps; `timesteps_used` is the frames it read.
#[utoipa::path(post, path = "/classify", tag = "classify",
    params(
        ClassifyOptions,
        ("x-request-id" = Option<String>, Header, description = "Echoed back; generated when absent")),
    request_body(description = "An image, a multipart form, a .npy tensor or JSON", content(
        (Vec<u8> = "image/png"), (Vec<u8> = "image/jpeg"), (Vec<u8> = "application/octet-stream"),
        (Vec<u8> = "application/x-npy"), (JsonBody = "application/json"), (Vec<u8> = "multipart/form-data"))),
    responses(
        (status = 200, description = "The prediction, the timesteps used and timings", body = ClassifyResult),
        (status = 400, description = "Malformed request or option out of range", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
        (status = 413, description = "Body or image over the limits", body = ErrorBody),
        (status = 415, description = "Not an accepted image format, or an image sent to a tensor model", body = ErrorBody),
        (status = 429, description = "Queue full; see Retry-After", body = ErrorBody),
        (status = 503, description = "Draining or recovering", body = ErrorBody),
        (status = 504, description = "Deadline passed", body = ErrorBody)))]
pub async fn classify_default(State(state): State<Shared>, req: Request) -> Response {
    classify(state, None, req).await
}

/// Classifies one input, running timesteps until the exit rule fires. The body is raw image bytes
/// (PNG, JPEG, WebP, BMP, GIF), `multipart/form-data` with an `image` field and option fields,
/// a `.npy` file (`application/x-npy`: a tensor model's `[*shape]` or, per_step, `[t, *shape]`
/// frames; float32, uint8 or bool), or JSON; options also come from the query string. A per_step
/// request with t frames runs at most t timesteps; `timesteps_used` is the frames it read.
#[utoipa::path(post, path = "/v1/models/{name}/classify", tag = "classify",
    params(("name" = String, Path, description = "Model name"),
        ClassifyOptions,
        ("x-request-id" = Option<String>, Header, description = "Echoed back; generated when absent")),
    request_body(description = "An image, a multipart form, a .npy tensor or JSON", content(
        (Vec<u8> = "image/png"), (Vec<u8> = "image/jpeg"), (Vec<u8> = "application/octet-stream"),
        (Vec<u8> = "application/x-npy"), (JsonBody = "application/json"), (Vec<u8> = "multipart/form-data"))),
    responses(
        (status = 200, description = "The prediction, the timesteps used and timings", body = ClassifyResult),
        (status = 400, description = "Malformed request or option out of range", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
        (status = 413, description = "Body or image over the limits", body = ErrorBody),
        (status = 415, description = "Not an accepted image format, or an image sent to a tensor model", body = ErrorBody),
        (status = 429, description = "Queue full; see Retry-After", body = ErrorBody),
        (status = 503, description = "Draining or recovering", body = ErrorBody),
        (status = 504, description = "Deadline passed", body = ErrorBody)))]
pub async fn classify_named(
    State(state): State<Shared>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    classify(state, Some(name), req).await
}

/// `GET /v1/models`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelView>,
    pub default_model: String,
}

/// Every served model: labels, T, input spec, exit policy, calibration summary, readiness.
#[utoipa::path(get, path = "/v1/models", tag = "models",
    responses((status = 200, description = "Every model and the default one", body = ModelList)))]
pub async fn list_models(State(state): State<Shared>) -> Response {
    Json(ModelList {
        models: state
            .registry
            .models()
            .iter()
            .map(|m| state.model_view(m))
            .collect(),
        default_model: state.registry.default_model().to_string(),
    })
    .into_response()
}

/// One model's description (the same object as in /v1/models).
#[utoipa::path(get, path = "/v1/models/{name}", tag = "models",
    params(("name" = String, Path, description = "Model name")),
    responses((status = 200, description = "The model", body = ModelView),
              (status = 404, description = "No such model", body = ErrorBody)))]
pub async fn get_model(
    State(state): State<Shared>,
    Path(name): Path<String>,
) -> Result<Response, Error> {
    let m = state.model(Some(&name))?;
    Ok(Json(state.model_view(&m)).into_response())
}

const INDEX_HTML: &str = include_str!("../web/index.html");

/// The web page: everything is in this one embedded file, nothing comes from a CDN.
#[utoipa::path(get, path = "/", tag = "web",
    responses((status = 200, description = "The page", content_type = "text/html", body = String)))]
pub async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'self'; img-src 'self' blob: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

/// The package's labelled sample images, for trying a model without a client.
#[utoipa::path(get, path = "/v1/models/{name}/samples", tag = "models",
    params(("name" = String, Path, description = "Model name")),
    responses((status = 200, description = "`{\"model\", \"samples\": [{\"file\", \"label\", \"url\"}]}`", body = serde_json::Value),
              (status = 404, description = "No such model", body = ErrorBody)))]
pub async fn list_samples(
    State(state): State<Shared>,
    Path(name): Path<String>,
) -> Result<Response, Error> {
    let m = state.model(Some(&name))?;
    let samples: Vec<_> = m
        .samples
        .iter()
        .map(|(file, label)| json!({"file": file, "label": label, "url": format!("/v1/models/{name}/samples/{file}")}))
        .collect();
    Ok(Json(json!({"model": name, "samples": samples})).into_response())
}

/// One sample: an image (PNG), or for a tensor model a .npy file, by the file name
/// /v1/models/{name}/samples lists.
#[utoipa::path(get, path = "/v1/models/{name}/samples/{file}", tag = "models",
    params(("name" = String, Path, description = "Model name"), ("file" = String, Path, description = "Sample file name")),
    responses((status = 200, description = "The image, or a tensor model's .npy file", content_type = "image/png", body = Vec<u8>),
              (status = 404, description = "No such model or sample", body = ErrorBody)))]
pub async fn get_sample(
    State(state): State<Shared>,
    Path((name, file)): Path<(String, String)>,
) -> Result<Response, Error> {
    let m = state.model(Some(&name))?;
    // Only files the package lists are served: no path from the client reaches the file system.
    if !m.samples.iter().any(|(f, _)| *f == file) {
        return Err(Error::ModelNotFound(format!(
            "model {name} has no sample {file:?}; see /v1/models/{name}/samples"
        )));
    }
    let bytes = tokio::fs::read(m.dir.join("samples").join(&file))
        .await
        .map_err(|e| Error::internal_from(format!("sample {file}"), e))?;
    let content_type = if file.ends_with(".npy") {
        NPY_CONTENT_TYPE
    } else {
        "image/png"
    };
    Ok(([(header::CONTENT_TYPE, content_type)], bytes).into_response())
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = serde_json::Value)))]
pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Readiness: every model loaded and its engine serving, not draining.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "`{\"status\": \"ready\"}`", body = serde_json::Value),
              (status = 503, description = "`{\"status\": \"draining\" | \"not ready\"}`", body = serde_json::Value)))]
pub async fn readyz(State(state): State<Shared>) -> Response {
    if state.is_ready() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        let why = if state.lifecycle.is_draining() {
            "draining"
        } else {
            "not ready"
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": why})),
        )
            .into_response()
    }
}

/// Prometheus metrics (text exposition format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Metrics", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

fn auth(state: &Service, headers: &HeaderMap) -> Result<(), Error> {
    state.authorize(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    )
}

/// Every model and version in the models folder with its state and the reason (the same rows as
/// `POST /v2/repository/index`).
#[utoipa::path(get, path = "/admin/repository", tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "One row per model version", body = Vec<crate::repository::IndexEntry>),
              (status = 401, description = "Missing or wrong token", body = ErrorBody)))]
pub async fn admin_repository(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    auth(&state, &headers)?;
    Ok(Json(state.repository_index(false)).into_response())
}

/// The body of `POST /admin/models/{name}/load` (optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadRequest {
    /// The version to serve, pinned; "latest" unpins. Default: the pinned or latest version.
    pub version: Option<String>,
}

/// Loads a model or swaps it to its latest (or the named) version, with no request lost: the
/// version serving keeps serving until the new one is loaded, warmed up and golden-checked.
#[utoipa::path(post, path = "/admin/models/{name}/load", tag = "admin",
    params(("name" = String, Path, description = "Model name")),
    security(("admin_token" = [])),
    request_body(content = LoadRequest, description = "Optional", content_type = "application/json"),
    responses((status = 200, description = "The version serving now", body = crate::service::models::LoadReport),
              (status = 400, description = "The package failed to load or its golden check; the old version keeps serving", body = ErrorBody),
              (status = 401, description = "Missing or wrong token", body = ErrorBody),
              (status = 404, description = "No such model or version on disk", body = ErrorBody),
              (status = 409, description = "Not allowed by --model-control", body = ErrorBody)))]
pub async fn admin_load(
    State(state): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    auth(&state, &headers)?;
    state.check_model_control("load")?;
    let req: LoadRequest = crate::service::models::optional_json(&body, "load")?;
    let report = state.load_model(&name, req.version.as_deref()).await?;
    Ok(Json(report).into_response())
}

/// Stops serving a model: new requests get 404, requests in flight finish.
#[utoipa::path(post, path = "/admin/models/{name}/unload", tag = "admin",
    params(("name" = String, Path, description = "Model name")),
    security(("admin_token" = [])),
    responses((status = 200, description = "Unloaded", body = serde_json::Value),
              (status = 401, description = "Missing or wrong token", body = ErrorBody),
              (status = 404, description = "The model is not loaded", body = ErrorBody),
              (status = 409, description = "Not allowed by --model-control", body = ErrorBody)))]
pub async fn admin_unload(
    State(state): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    auth(&state, &headers)?;
    state.check_model_control("unload")?;
    state.unload_model(&name, "unloaded by a call").await?;
    Ok(Json(serde_json::json!({})).into_response())
}

/// A model's default exit policy and what calibration expects of it.
#[utoipa::path(get, path = "/admin/models/{name}/exit-policy", tag = "admin",
    params(("name" = String, Path, description = "Model name")),
    security(("admin_token" = [])),
    responses((status = 200, description = "The policy", body = ExitPolicyView),
              (status = 401, description = "Missing or wrong token", body = ErrorBody),
              (status = 403, description = "Admin disabled (no token configured)", body = ErrorBody),
              (status = 404, description = "No such model", body = ErrorBody)))]
pub async fn get_exit_policy(
    State(state): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    auth(&state, &headers)?;
    let m = state.model(Some(&name))?;
    Ok(Json(state.policy_view(&m)).into_response())
}

/// Changes a model's default exit policy: a rule, and at most one of its dial (`alpha`; for the
/// learned rule `threshold`; for the policy `bias_scale`), `target_avg_timesteps`,
/// `max_accuracy_drop` (the last two resolved through calibration.json for the policy's rule),
/// `adaptive` and `shadow_fraction` (shadow runs, 0..=1).
/// Persisted atomically before the answer.
#[utoipa::path(put, path = "/admin/models/{name}/exit-policy", tag = "admin",
    params(("name" = String, Path, description = "Model name")),
    security(("admin_token" = [])),
    request_body(content = ExitPolicyUpdate, content_type = "application/json"),
    responses((status = 200, description = "The new policy, with the previous one", body = ExitPolicyView),
              (status = 400, description = "Invalid update", body = ErrorBody),
              (status = 401, description = "Missing or wrong token", body = ErrorBody),
              (status = 403, description = "Admin disabled (no token configured)", body = ErrorBody),
              (status = 404, description = "No such model", body = ErrorBody),
              (status = 409, description = "Policies are managed by --exit-policy-file", body = ErrorBody)))]
pub async fn put_exit_policy(
    State(state): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    auth(&state, &headers)?;
    let update: ExitPolicyUpdate = serde_json::from_slice(&body).map_err(|e| {
        Error::invalid(format!(
            "malformed exit-policy body: {e}; accepted fields: rule, alpha, threshold, bias_scale, target_avg_timesteps, max_accuracy_drop, timesteps, shadow_fraction (0 to 1), adaptive ({{\"p99_ms\", \"max_accuracy_drop\"}} or null)"
        ))
    })?;
    Ok(Json(state.set_exit_policy(&name, update)?).into_response())
}

async fn inject_fault(
    State(state): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    auth(&state, &headers)?;
    let m = state.model(Some(&name))?;
    m.engine
        .inject_fault
        .store(true, std::sync::atomic::Ordering::SeqCst);
    Ok(Json(json!({"model": name, "fault": "armed: the next engine step fails"})).into_response())
}
