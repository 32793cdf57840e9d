//! The user's labelled data for `seenn calibrate` and `seenn eval --data`: an `.npz` file with `x`
//! and `y` (as `numpy.savez` writes it, compressed or not), or a folder of images, one subfolder per
//! class (subfolder names sorted, or named as the model's labels).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::model::manifest::{InputKind, Manifest, TimeMode};
use crate::npy;

/// Samples ready for the engine: each input as a job carries it (a preprocessed image, a tensor, or
/// a per-step model's frames back to back), the labels, and each sample's own shape and values as
/// given (for golden samples).
pub struct Labelled {
    pub inputs: Vec<Vec<f32>>,
    pub labels: Vec<usize>,
    /// One sample's shape as a request carries it (`[T, …]` frames, `[…]` a tensor, `[C, H, W]`).
    pub sample_shape: Vec<usize>,
    pub dtype: npy::Dtype,
    /// Image files (image folders only), for golden samples.
    pub files: Vec<std::path::PathBuf>,
}

/// What DATA may be, for error messages.
pub const ACCEPTED: &str = "an .npz file with `x` ([N, T, …] frames for a per-step model, [N, …] \
     for a static one; float32, uint8 or bool) and `y` (integer labels, [N]), or a folder of images \
     with one subfolder per class";

/// Why the labelled data cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not usable as DATA ({ACCEPTED})", path.display())]
    Npz {
        path: PathBuf,
        #[source]
        source: NpzError,
    },
    #[error("{}: no `{name}` array; DATA is {ACCEPTED}", path.display())]
    MissingArray { path: PathBuf, name: &'static str },
    /// The `x` or `y` array of an .npz file.
    #[error("{}: {name}", path.display())]
    Array {
        path: PathBuf,
        name: &'static str,
        #[source]
        source: npy::NpyError,
    },
    /// A sample image that does not decode or preprocess.
    #[error("{}", path.display())]
    Image {
        path: PathBuf,
        #[source]
        source: crate::error::Error,
    },
    /// The file `path` is wrong in the way `source` says.
    #[error("{}", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<DataError>,
    },
    /// Data that does not fit the model; the message says what it takes.
    #[error("{0}")]
    Invalid(String),
}

/// Why bytes are not an `.npz` archive this reader takes.
#[derive(Debug, thiserror::Error)]
pub enum NpzError {
    #[error("{0}")]
    Format(String),
    #[error("member {name}")]
    Inflate {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// An I/O error on `path` while doing `action` (read, list).
fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DataError {
    let path = path.to_path_buf();
    move |source| DataError::Io {
        action,
        path,
        source,
    }
}

pub fn load(path: &Path, manifest: &Manifest) -> Result<Labelled, DataError> {
    if path.is_dir() {
        return load_image_folder(path, manifest);
    }
    let bytes = std::fs::read(path).map_err(io("read", path))?;
    let entries = read_npz(&bytes).map_err(|source| DataError::Npz {
        path: path.to_path_buf(),
        source,
    })?;
    let get = |name: &'static str| {
        entries
            .iter()
            .find(|(n, _)| *n == format!("{name}.npy"))
            .map(|(_, b)| b.as_slice())
            .ok_or_else(|| DataError::MissingArray {
                path: path.to_path_buf(),
                name,
            })
    };
    let array = |name: &'static str| {
        move |source| DataError::Array {
            path: path.to_path_buf(),
            name,
            source,
        }
    };
    let x = npy::read(get("x")?).map_err(array("x"))?;
    let y = npy::read_labels(get("y")?).map_err(array("y"))?;
    from_arrays(x, y, manifest).map_err(|e| DataError::InFile {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

/// Splits `x` [N, …] into per-sample inputs after checking the shape against the model.
pub fn from_arrays(
    x: npy::Array,
    y: Vec<usize>,
    manifest: &Manifest,
) -> Result<Labelled, DataError> {
    let spec = &manifest.input;
    let dims = spec.dims().to_vec();
    let t_max = manifest.timesteps;
    let Some((&n, sample)) = x.shape.split_first() else {
        return Err(DataError::Invalid("x is a scalar; expected [N, …]".into()));
    };
    if n != y.len() {
        return Err(DataError::Invalid(format!(
            "x holds {n} samples but y {} labels",
            y.len()
        )));
    }
    if n == 0 {
        return Err(DataError::Invalid("x holds no samples".into()));
    }
    let expected = match (spec.kind, spec.time) {
        (InputKind::Tensor, TimeMode::PerStep) => {
            let ok = sample.len() == dims.len() + 1
                && sample[1..] == dims[..]
                && (1..=t_max).contains(&sample[0]);
            (ok, format!("[N, t, {}] with 1 ≤ t ≤ {t_max}", join(&dims)))
        }
        _ => (sample == dims, format!("[N, {}]", join(&dims))),
    };
    if !expected.0 {
        return Err(DataError::Invalid(format!(
            "x has shape [{}]; model {} takes {}",
            join(&x.shape),
            manifest.name,
            expected.1
        )));
    }
    let classes = manifest.labels.len();
    if let Some(bad) = y.iter().find(|&&c| c >= classes) {
        return Err(DataError::Invalid(format!(
            "label {bad} is out of range: the model has {classes} classes"
        )));
    }
    let len: usize = sample.iter().product();
    let inputs = x.data.chunks(len).map(<[f32]>::to_vec).collect();
    Ok(Labelled {
        inputs,
        labels: y,
        sample_shape: sample.to_vec(),
        dtype: x.dtype,
        files: Vec::new(),
    })
}

fn join(v: &[usize]) -> String {
    v.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Images in `dir/<class>/*`: classes are the model's labels when every subfolder is one, else the
/// subfolders in sorted order.
fn load_image_folder(dir: &Path, manifest: &Manifest) -> Result<Labelled, DataError> {
    if manifest.input.kind != InputKind::Image {
        return Err(DataError::Invalid(format!(
            "{}: a folder of images, but model {} takes tensors; DATA is {ACCEPTED}",
            dir.display(),
            manifest.name
        )));
    }
    let mut classes: Vec<String> = std::fs::read_dir(dir)
        .map_err(io("list", dir))?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(DataError::Invalid(format!(
            "{}: no class subfolders; DATA is {ACCEPTED}",
            dir.display()
        )));
    }
    let by_label = classes.iter().all(|c| manifest.labels.contains(c));
    let mut out = Labelled {
        inputs: Vec::new(),
        labels: Vec::new(),
        sample_shape: manifest.input.dims().to_vec(),
        dtype: npy::Dtype::Float32,
        files: Vec::new(),
    };
    for (i, class) in classes.iter().enumerate() {
        let label = if by_label {
            manifest.labels.iter().position(|l| l == class).unwrap_or(i)
        } else {
            i
        };
        if label >= manifest.labels.len() {
            return Err(DataError::Invalid(format!(
                "{}: {} class folders, but model {} has {} classes",
                dir.display(),
                classes.len(),
                manifest.name,
                manifest.labels.len()
            )));
        }
        let mut files: Vec<_> = std::fs::read_dir(dir.join(class))
            .map_err(io("list", &dir.join(class)))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for f in files {
            let bytes = std::fs::read(&f).map_err(io("read", &f))?;
            let x = crate::preprocess::image_to_tensor(&bytes, None, &manifest.input, 1 << 26)
                .map_err(|source| DataError::Image {
                    path: f.clone(),
                    source,
                })?;
            out.inputs.push(x);
            out.labels.push(label);
            out.files.push(f);
        }
    }
    Ok(out)
}

/// Every member of a zip archive (`.npz`): (name, uncompressed bytes). Stored and deflated members,
/// zip64 sizes (numpy writes them), no encryption; members with a trailing data descriptor are
/// refused (numpy never writes them to a file).
pub fn read_npz(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, NpzError> {
    let truncated = || NpzError::Format("truncated zip archive".into());
    let u16_at = |i: usize| -> Result<usize, NpzError> {
        bytes
            .get(i..i + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
            .ok_or_else(truncated)
    };
    let u32_at = |i: usize| -> Result<u64, NpzError> {
        bytes
            .get(i..i + 4)
            .map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .ok_or_else(truncated)
    };
    if bytes.get(..4) != Some(b"PK\x03\x04") {
        return Err(NpzError::Format("not an .npz (zip) file".into()));
    }
    let mut out = Vec::new();
    let mut at = 0usize;
    while bytes.get(at..at + 4) == Some(b"PK\x03\x04") {
        let flags = u16_at(at + 6)?;
        let method = u16_at(at + 8)?;
        let mut csize = u32_at(at + 18)?;
        let mut usize_ = u32_at(at + 22)?;
        let name_len = u16_at(at + 26)?;
        let extra_len = u16_at(at + 28)?;
        let name_bytes = bytes
            .get(at + 30..at + 30 + name_len)
            .ok_or_else(truncated)?;
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        let extra = bytes
            .get(at + 30 + name_len..at + 30 + name_len + extra_len)
            .ok_or_else(truncated)?;
        if csize == 0xFFFF_FFFF || usize_ == 0xFFFF_FFFF {
            (usize_, csize) = zip64_sizes(extra)
                .ok_or_else(|| NpzError::Format("zip64 member without its sizes".into()))?;
        }
        if flags & 0x1 != 0 {
            return Err(NpzError::Format(format!("member {name} is encrypted")));
        }
        if flags & 0x8 != 0 && csize == 0 {
            return Err(NpzError::Format(format!(
                "member {name} has its sizes after the data (a streamed zip); save with numpy.savez to a file"
            )));
        }
        let start = at + 30 + name_len + extra_len;
        let end = usize::try_from(csize)
            .ok()
            .and_then(|c| start.checked_add(c))
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| NpzError::Format(format!("member {name} is truncated")))?;
        let raw = &bytes[start..end];
        let data = match method {
            0 => raw.to_vec(),
            8 => {
                let cap = usize::try_from(usize_)
                    .unwrap_or(0)
                    .min(npy::MAX_ELEMENTS * 4);
                let mut v = Vec::with_capacity(cap);
                flate2::read::DeflateDecoder::new(raw)
                    .take(usize_)
                    .read_to_end(&mut v)
                    .map_err(|source| NpzError::Inflate {
                        name: name.clone(),
                        source,
                    })?;
                v
            }
            m => {
                return Err(NpzError::Format(format!(
                    "member {name}: compression method {m}; accepted: stored, deflate"
                )))
            }
        };
        out.push((name, data));
        at = end;
    }
    Ok(out)
}

fn zip64_sizes(extra: &[u8]) -> Option<(u64, u64)> {
    let mut i = 0;
    while i + 4 <= extra.len() {
        let id = u16::from_le_bytes([extra[i], extra[i + 1]]);
        let len = u16::from_le_bytes([extra[i + 2], extra[i + 3]]) as usize;
        let body = extra.get(i + 4..i + 4 + len)?;
        if id == 1 && body.len() >= 16 {
            let u = u64::from_le_bytes(body[..8].try_into().ok()?);
            let c = u64::from_le_bytes(body[8..16].try_into().ok()?);
            return Some((u, c));
        }
        i += 4 + len;
    }
    None
}
