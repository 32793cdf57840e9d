//! The fuzz harness, shared by the fuzz targets (`fuzz/fuzz_targets/*.rs`) and the regression
//! test (`tests/fuzz_regressions.rs`), which both include this file with `#[path]`: how a fuzz
//! input becomes a call into the server, and the properties every call must keep. A property
//! that does not hold panics, which libFuzzer reports as a crash.
//!
//! Input framing (the seeds under `fuzz/seeds/` and `fuzz/make_seeds.py` follow it):
//!
//! * `http_request`: byte 0 bits 0-3 pick the Content-Type from [`CONTENT_TYPES`], bit 4 the
//!   body limit ([`SMALL_MAX_BODY_BYTES`] when set, else [`MAX_BODY_BYTES`]); byte 1 is the query
//!   string's length n; the next n bytes are the query string, the rest is the body.
//! * `image_preprocess`: byte 0 bits 0-2 pick the format hint from [`HINTS`] (6 and 7: none),
//!   bit 3 the input spec (set: ResNet-19 3x32x32, else Fashion-MNIST 1x28x28), bit 4 the pixel
//!   limit ([`SMALL_MAX_PIXELS`] when set, else [`MAX_PIXELS`]); the rest is the image.
//! * `package_files`: byte 0 modulo 3 picks the parser: 0 `manifest.json`, 1 `calibration.json`
//!   (byte 1 modulo 64, plus 1, is the model's timesteps; the file starts at byte 2),
//!   2 the exit-policy state file; the rest is the file.
#![allow(dead_code)]

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::header;
use image::ImageFormat;
use seenn_serve::error::{chain, Error};
use seenn_serve::model::manifest::{Calibration, InputSpec, Manifest};
use seenn_serve::model::PackageError;
use seenn_serve::service::{ClassifyOptions, Input};
use seenn_serve::state::{State, StateError};
use tower::{Layer, ServiceExt};

pub const FASHION_MNIST_MANIFEST: &[u8] = include_bytes!("../models/fashion-mnist/manifest.json");
pub const RESNET19_MANIFEST: &[u8] = include_bytes!("../models-bench/resnet19-bench/manifest.json");

/// The server's default `--max-body-bytes`.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
pub const SMALL_MAX_BODY_BYTES: usize = 512;
/// `--max-image-pixels` for the fuzz runs: large enough for any image a fuzz input can describe
/// in a few kilobytes, small enough that a decode stays well under libFuzzer's memory limit.
pub const MAX_PIXELS: u64 = 4_000_000;
/// Below the 28x28 and 32x32 of the committed samples, so they are refused as too large.
pub const SMALL_MAX_PIXELS: u64 = 512;

pub const CONTENT_TYPES: [Option<&str>; 16] = [
    Some("image/png"),
    Some("image/jpeg"),
    Some("image/webp"),
    Some("image/bmp"),
    Some("image/gif"),
    Some("application/octet-stream"),
    Some("application/json"),
    Some("multipart/form-data; boundary=X"),
    Some("text/plain"),
    None,
    Some("IMAGE/PNG; charset=binary"),
    Some("image/jpg"),
    Some("image/x-ms-bmp"),
    Some("application/json; charset=utf-8"),
    Some("multipart/form-data"),
    Some("multipart/form-data; boundary=\"X\""),
];

pub const HINTS: [Option<ImageFormat>; 6] = [
    None,
    Some(ImageFormat::Png),
    Some(ImageFormat::Jpeg),
    Some(ImageFormat::WebP),
    Some(ImageFormat::Bmp),
    Some(ImageFormat::Gif),
];

fn committed_manifest(cell: &'static OnceLock<Manifest>, bytes: &[u8]) -> &'static Manifest {
    cell.get_or_init(|| {
        seenn_serve::model::parse_manifest(bytes).expect("a committed manifest.json parses")
    })
}

/// The input spec of models/fashion-mnist (1x28x28).
pub fn fashion_mnist() -> &'static InputSpec {
    static M: OnceLock<Manifest> = OnceLock::new();
    &committed_manifest(&M, FASHION_MNIST_MANIFEST).input
}

/// The input spec of models-bench/resnet19-bench (3x32x32).
pub fn resnet19() -> &'static InputSpec {
    static M: OnceLock<Manifest> = OnceLock::new();
    &committed_manifest(&M, RESNET19_MANIFEST).input
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("tokio runtime")
    })
}

/// Client input is only ever refused with a 4xx and a message, never an internal error.
pub fn assert_client_error(e: &Error) {
    assert!(
        matches!(
            e,
            Error::InvalidRequest(_) | Error::UnsupportedMediaType(_) | Error::TooLarge(_)
        ),
        "client input answered with {e:?}"
    );
    assert!(e.http_status().is_client_error(), "{e:?}");
    assert!(!e.to_string().is_empty(), "{e:?} has no message");
}

/// A preprocessed image is a tensor of the spec's size, finite, that passes the tensor check.
pub fn assert_tensor_result(r: &Result<Vec<f32>, Error>, spec: &InputSpec) {
    match r {
        Ok(t) => {
            assert_eq!(t.len(), spec.len(), "tensor size");
            assert!(t.iter().all(|v| v.is_finite()), "non-finite value");
            seenn_serve::preprocess::check_tensor(t, spec)
                .expect("a preprocessed image passes check_tensor");
        }
        Err(e) => assert_client_error(e),
    }
}

// ---------------------------------------------------------------------------------------------
// http_request

pub struct HttpCase<'a> {
    pub content_type: Option<&'static str>,
    pub max_body_bytes: usize,
    pub query: &'a [u8],
    pub body: &'a [u8],
}

pub fn http_case(data: &[u8]) -> Option<HttpCase<'_>> {
    let (&b0, rest) = data.split_first()?;
    let (&n, rest) = rest.split_first()?;
    let (query, body) = rest.split_at(usize::from(n).min(rest.len()));
    Some(HttpCase {
        content_type: CONTENT_TYPES[usize::from(b0 & 0x0f)],
        max_body_bytes: if b0 & 0x10 != 0 {
            SMALL_MAX_BODY_BYTES
        } else {
            MAX_BODY_BYTES
        },
        query,
        body,
    })
}

/// The inverse of [`http_case`], to frame real bodies as fuzz inputs.
pub fn http_input(content_type: usize, small_limit: bool, query: &str, body: &[u8]) -> Vec<u8> {
    assert!(content_type < CONTENT_TYPES.len() && query.len() < 256);
    let mut v = vec![content_type as u8 | if small_limit { 0x10 } else { 0 }];
    v.push(query.len() as u8);
    v.extend_from_slice(query.as_bytes());
    v.extend_from_slice(body);
    v
}

/// The request target: printable bytes as they are (so malformed escapes reach the parser),
/// the others percent-encoded so that the URI itself is valid.
fn target(query: &[u8]) -> String {
    let mut s = String::from("/classify");
    if !query.is_empty() {
        s.push('?');
        for &b in query {
            if b.is_ascii_graphic() && b != b'#' {
                s.push(char::from(b));
            } else {
                let _ = write!(s, "%{b:02X}");
            }
        }
    }
    s
}

fn request(case: &HttpCase<'_>, with_query: bool) -> Option<Request> {
    let mut b = Request::builder().method("POST").uri(if with_query {
        target(case.query)
    } else {
        target(&[])
    });
    if let Some(ct) = case.content_type {
        b = b.header(header::CONTENT_TYPE, ct);
    }
    b.body(Body::from(case.body.to_vec())).ok()
}

pub enum HttpOutcome {
    Rejected(Error),
    Image {
        opts: ClassifyOptions,
        hint: Option<ImageFormat>,
        bytes: usize,
        tensor: Result<Vec<f32>, Error>,
    },
    Tensor {
        opts: ClassifyOptions,
        values: usize,
        check: Result<(), Error>,
    },
    /// A tensor with its shape (a .npy body, or JSON `tensor` with `shape`), checked against the
    /// Fashion-MNIST input as the service does.
    Shaped {
        opts: ClassifyOptions,
        shape: Vec<usize>,
        check: Result<usize, seenn_serve::model::manifest::Invalid>,
    },
}

impl HttpOutcome {
    pub fn is_ok(&self) -> bool {
        match self {
            HttpOutcome::Rejected(_) => false,
            HttpOutcome::Image { tensor, .. } => tensor.is_ok(),
            HttpOutcome::Tensor { check, .. } => check.is_ok(),
            HttpOutcome::Shaped { check, .. } => check.is_ok(),
        }
    }
}

/// `parse_request` under the same `DefaultBodyLimit` layer as the router (the layer is what caps
/// multipart bodies), then the preprocessing the service runs on what it returns, with the
/// Fashion-MNIST input spec. `None` when the input is too short to frame.
pub fn http_request(data: &[u8]) -> Option<HttpOutcome> {
    let case = http_case(data)?;
    let req = request(&case, true).or_else(|| request(&case, false))?;
    let limit = case.max_body_bytes;
    let svc =
        DefaultBodyLimit::max(limit).layer(tower::service_fn(move |req: Request| async move {
            Ok::<_, Infallible>(seenn_serve::api::http::parse_request(limit, req).await)
        }));
    let result = match runtime().block_on(svc.oneshot(req)) {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let spec = fashion_mnist();
    let ct = case.content_type.unwrap_or("").to_ascii_lowercase();
    Some(match result {
        Err(e) => {
            assert_client_error(&e);
            if matches!(e, Error::TooLarge(_)) {
                assert!(case.body.len() > limit, "{e:?} for a body within the limit");
            }
            HttpOutcome::Rejected(e)
        }
        Ok((Input::Image { bytes, hint }, opts)) => {
            assert!(
                bytes.len() <= limit,
                "an image over the body limit got through"
            );
            assert!(bytes.len() <= case.body.len());
            let tensor = seenn_serve::preprocess::image_to_tensor(&bytes, hint, spec, MAX_PIXELS);
            assert_tensor_result(&tensor, spec);
            HttpOutcome::Image {
                opts,
                hint,
                bytes: bytes.len(),
                tensor,
            }
        }
        Ok((Input::Tensor(values), opts)) => {
            assert!(ct.starts_with("application/json"), "a tensor from {ct:?}");
            assert!(
                values.iter().all(|v| v.is_finite()),
                "non-finite tensor value"
            );
            let check = seenn_serve::preprocess::check_tensor(&values, spec);
            match &check {
                Ok(()) => assert_eq!(values.len(), spec.len()),
                Err(e) => {
                    assert_client_error(e);
                    assert_ne!(values.len(), spec.len(), "{e:?}");
                }
            }
            HttpOutcome::Tensor {
                opts,
                values: values.len(),
                check,
            }
        }
        Ok((Input::Shaped { shape, data }, opts)) => {
            assert!(
                ct.starts_with("application/json")
                    || ct.starts_with("application/x-npy")
                    || case.body.starts_with(b"\x93NUMPY"),
                "a shaped tensor from {ct:?}"
            );
            assert!(
                data.iter().all(|v| v.is_finite()),
                "non-finite tensor value"
            );
            assert_eq!(data.len(), shape.iter().product::<usize>());
            let check = seenn_serve::model::check_frames(spec, 4, &shape);
            HttpOutcome::Shaped { opts, shape, check }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// image_preprocess

pub struct ImageCase<'a> {
    pub hint: Option<ImageFormat>,
    pub spec: &'static InputSpec,
    pub max_pixels: u64,
    pub bytes: &'a [u8],
}

pub fn image_case(data: &[u8]) -> Option<ImageCase<'_>> {
    let (&b0, bytes) = data.split_first()?;
    Some(ImageCase {
        hint: HINTS.get(usize::from(b0 & 0x07)).copied().flatten(),
        spec: if b0 & 0x08 != 0 {
            resnet19()
        } else {
            fashion_mnist()
        },
        max_pixels: if b0 & 0x10 != 0 {
            SMALL_MAX_PIXELS
        } else {
            MAX_PIXELS
        },
        bytes,
    })
}

/// The inverse of [`image_case`]: `hint` indexes [`HINTS`].
pub fn image_input(hint: usize, resnet: bool, small_limit: bool, bytes: &[u8]) -> Vec<u8> {
    assert!(hint < 8);
    let mut v =
        vec![hint as u8 | if resnet { 0x08 } else { 0 } | if small_limit { 0x10 } else { 0 }];
    v.extend_from_slice(bytes);
    v
}

/// `image_to_tensor` on the framed image. `None` when the input is empty.
pub fn image_preprocess(data: &[u8]) -> Option<Result<Vec<f32>, Error>> {
    let case = image_case(data)?;
    let r =
        seenn_serve::preprocess::image_to_tensor(case.bytes, case.hint, case.spec, case.max_pixels);
    assert_tensor_result(&r, case.spec);
    Some(r)
}

// ---------------------------------------------------------------------------------------------
// package_files

// One short-lived value per input: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
pub enum PackageFile {
    Manifest(Result<Manifest, PackageError>),
    Calibration {
        timesteps: usize,
        parsed: Result<Calibration, PackageError>,
    },
    State(Result<State, StateError>),
}

impl PackageFile {
    pub fn is_ok(&self) -> bool {
        match self {
            PackageFile::Manifest(r) => r.is_ok(),
            PackageFile::Calibration { parsed, .. } => parsed.is_ok(),
            PackageFile::State(r) => r.is_ok(),
        }
    }
}

pub const MANIFEST: u8 = 0;
pub const CALIBRATION: u8 = 1;
pub const STATE: u8 = 2;

/// The inverse of the `package_files` framing; `timesteps` only matters for calibration.
pub fn package_input(kind: u8, timesteps: usize, file: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    if kind == CALIBRATION {
        assert!((1..=64).contains(&timesteps));
        v.push((timesteps - 1) as u8);
    }
    v.extend_from_slice(file);
    v
}

/// One of the three package/state parsers on the framed file. `None` when too short to frame.
pub fn package_file(data: &[u8]) -> Option<PackageFile> {
    let (&b0, rest) = data.split_first()?;
    Some(match b0 % 3 {
        0 => {
            let r = seenn_serve::model::parse_manifest(rest);
            match &r {
                Ok(m) => check_manifest(m),
                Err(e) => assert!(!chain(e).is_empty()),
            }
            PackageFile::Manifest(r)
        }
        1 => {
            let (&b1, file) = rest.split_first()?;
            let timesteps = usize::from(b1 % 64) + 1;
            let r = seenn_serve::model::parse_calibration(file, timesteps);
            match &r {
                Ok(c) => check_calibration(c, timesteps),
                Err(e) => assert!(!chain(e).is_empty()),
            }
            PackageFile::Calibration {
                timesteps,
                parsed: r,
            }
        }
        _ => {
            let r = seenn_serve::state::parse_state(rest);
            match &r {
                Ok(s) => check_state(s),
                Err(e) => assert!(!chain(e).is_empty()),
            }
            PackageFile::State(r)
        }
    })
}

/// What the loader and the engine rely on once a manifest has been accepted.
fn check_manifest(m: &Manifest) {
    assert!(!m.labels.is_empty());
    assert!((1..=1024).contains(&m.timesteps));
    let i = &m.input;
    assert!(!i.is_empty() && i.len() == i.dims().iter().product::<usize>());
    if !i.is_image() {
        // A tensor input: a real shape, and no encoder or policy on a per_step one.
        assert!(m.format_version >= 3 && !i.dims().is_empty());
        if i.per_step() {
            assert!(m.graphs.encoder.is_none() && m.graphs.policy.is_none());
        }
        let again = serde_json::to_vec(m).expect("a manifest serializes");
        seenn_serve::model::parse_manifest(&again).expect("a serialized manifest parses again");
        return;
    }
    assert!(i.channels == 1 || i.channels == 3);
    assert!(i.len() == i.channels * i.height * i.width);
    assert_eq!(i.dims(), [i.channels, i.height, i.width]);
    assert!(i.mean.len() == i.channels && i.std.len() == i.channels);
    if m.exit.default_rule == seenn_serve::exit::RuleKind::Policy {
        assert!(
            m.graphs.policy.is_some(),
            "default_rule policy needs graphs.policy"
        );
    }
    if let Some(p) = &m.graphs.policy {
        assert!(p.actions.iter().all(|a| (1..=m.timesteps).contains(a)));
    }
    // The engine allocates `len()` floats per state and request: the size must be a real,
    // non-zero element count, not one that wrapped around.
    for s in &m.graphs.step.states {
        let exact = s
            .shape
            .iter()
            .try_fold(1usize, |acc, d| acc.checked_mul(*d));
        assert!(
            matches!(exact, Some(n) if n > 0),
            "state {:?} with shape {:?} accepted: its element count is not a usize",
            s.input,
            s.shape
        );
        assert_eq!(Some(s.len()), exact);
    }
    // Every pixel value preprocesses to a finite float under the accepted scale, mean and std:
    // (x - mean) / std is monotonic in x, so black and white bound every other value. Only for
    // specs small enough to fill quickly.
    if i.len() <= 3 * 64 * 64 {
        for v in [0u8, 255] {
            let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
                i.width as u32,
                i.height as u32,
                image::Rgb([v; 3]),
            ));
            let t = seenn_serve::preprocess::to_tensor(&img, i);
            assert_eq!(t.len(), i.len());
            assert!(
                t.iter().all(|x| x.is_finite()),
                "input spec accepted but pixel value {v} preprocesses to a non-finite value: \
                 scale {}, mean {:?}, std {:?}, invert {}",
                i.scale,
                i.mean,
                i.std,
                i.invert
            );
        }
    }
    // What the server would write back (e.g. in GET /v1/models) reads in again.
    let again = serde_json::to_vec(m).expect("a manifest serializes");
    seenn_serve::model::parse_manifest(&again).expect("a serialized manifest parses again");
}

fn check_calibration(c: &Calibration, timesteps: usize) {
    assert_eq!(c.accuracy_per_t.len(), timesteps);
    assert!(!c.alpha_sweep.is_empty());
    for alpha in [0.0, 0.5, 0.9, 1.0, f64::NAN] {
        assert!(c.expected_at(alpha).is_some(), "expected_at({alpha})");
    }
    for t in [0.0, 1.0, timesteps as f64] {
        let _ = c.alpha_for_avg_timesteps(t);
    }
    assert!(c.alpha_for_accuracy_drop(f64::INFINITY).is_some());
    let _ = c.alpha_for_accuracy_drop(0.01);
    let again = serde_json::to_vec(c).expect("a calibration serializes");
    seenn_serve::model::parse_calibration(&again, timesteps)
        .expect("a serialized calibration parses again");
}

/// The state file is written by the server itself (`StateStore::set`, pretty JSON) and read at
/// the next start: whatever it accepted must read back the same, or the restart fails.
fn check_state(s: &State) {
    for p in s.models.values() {
        assert!(p.alpha > 0.0 && p.alpha <= 1.0 && p.timesteps >= 1);
    }
    let again = serde_json::to_vec_pretty(s).expect("a state serializes");
    let back = seenn_serve::state::parse_state(&again).expect("a written state file reads back");
    assert_eq!(back.version, s.version);
    assert_eq!(
        back.models.keys().collect::<Vec<_>>(),
        s.models.keys().collect::<Vec<_>>()
    );
    for (a, b) in back.models.values().zip(s.models.values()) {
        assert_eq!((a.rule, a.timesteps), (b.rule, b.timesteps));
        // serde_json parses floats to within one unit in the last place (no `float_roundtrip`).
        assert!(
            (a.alpha - b.alpha).abs() <= f64::EPSILON * b.alpha.abs(),
            "alpha {} read back as {}",
            b.alpha,
            a.alpha
        );
    }
}
