//! Labelled images for `seenn eval` and `seenn bench`: the IDX files of Fashion-MNIST / MNIST
//! (optionally gzip-compressed), or a model package's golden samples.

use std::io::Read;
use std::path::{Path, PathBuf};

pub const DEFAULT_FASHION_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Why a dataset cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: bad gzip", path.display())]
    Gzip {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An IDX file that is not one of unsigned bytes, or is cut short.
    #[error("{0}")]
    Idx(&'static str),
    #[error(
        "{}: no {stem}[.gz]; install Debian's dataset-fashion-mnist (make setup) or pass --data-dir",
        dir.display()
    )]
    Missing { dir: PathBuf, stem: String },
    #[error("unknown split {0:?}; accepted: test, train")]
    UnknownSplit(String),
    #[error("images {images:?} and labels {labels:?} do not match")]
    Mismatch {
        images: Vec<usize>,
        labels: Vec<usize>,
    },
    #[error("{}: not JSON", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A golden.json without the samples, files or labels it needs.
    #[error("{0}")]
    Golden(&'static str),
    #[error("bad image size")]
    ImageSize,
    #[error("cannot encode the image as PNG")]
    Png(#[source] image::ImageError),
}

fn read(path: &Path) -> Result<Vec<u8>, DatasetError> {
    std::fs::read(path).map_err(|source| DatasetError::Read {
        path: path.to_path_buf(),
        source,
    })
}

pub struct Labelled {
    /// Grayscale images, row-major, `height * width` bytes each.
    pub images: Vec<Vec<u8>>,
    pub labels: Vec<usize>,
    pub height: usize,
    pub width: usize,
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DatasetError> {
    let raw = read(path)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|source| DatasetError::Gzip {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses one IDX file of unsigned bytes: returns (dims, data).
pub fn parse_idx(raw: &[u8]) -> Result<(Vec<usize>, &[u8]), DatasetError> {
    if raw.len() < 4 || raw[0] != 0 || raw[1] != 0 || raw[2] != 0x08 {
        return Err(DatasetError::Idx("not an IDX file of unsigned bytes"));
    }
    let ndim = raw[3] as usize;
    let header = 4 + 4 * ndim;
    if raw.len() < header {
        return Err(DatasetError::Idx("truncated IDX header"));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            u32::from_be_bytes([
                raw[4 + 4 * i],
                raw[5 + 4 * i],
                raw[6 + 4 * i],
                raw[7 + 4 * i],
            ]) as usize
        })
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, d| a.checked_mul(*d))
        .ok_or(DatasetError::Idx("IDX dims overflow"))?;
    let data = raw
        .get(header..header + count)
        .ok_or(DatasetError::Idx("truncated IDX data"))?;
    Ok((dims, data))
}

fn find(dir: &Path, stem: &str) -> Result<PathBuf, DatasetError> {
    for name in [stem.to_string(), format!("{stem}.gz")] {
        let p = dir.join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(DatasetError::Missing {
        dir: dir.to_path_buf(),
        stem: stem.to_string(),
    })
}

/// The IDX test (`t10k`) or training split.
pub fn load_idx(dir: &Path, split: &str) -> Result<Labelled, DatasetError> {
    let prefix = match split {
        "test" => "t10k",
        "train" => "train",
        other => return Err(DatasetError::UnknownSplit(other.to_string())),
    };
    let img_raw = read_maybe_gz(&find(dir, &format!("{prefix}-images-idx3-ubyte"))?)?;
    let lab_raw = read_maybe_gz(&find(dir, &format!("{prefix}-labels-idx1-ubyte"))?)?;
    let (idims, idata) = parse_idx(&img_raw)?;
    let (ldims, ldata) = parse_idx(&lab_raw)?;
    if idims.len() != 3 || ldims.len() != 1 || idims[0] != ldims[0] {
        return Err(DatasetError::Mismatch {
            images: idims,
            labels: ldims,
        });
    }
    let (h, w) = (idims[1], idims[2]);
    Ok(Labelled {
        images: idata.chunks(h * w).map(<[u8]>::to_vec).collect(),
        labels: ldata.iter().map(|l| *l as usize).collect(),
        height: h,
        width: w,
    })
}

/// A package's golden samples (PNG files) as encoded bytes and labels.
pub fn golden_samples(pkg: &Path) -> Result<(Vec<Vec<u8>>, Vec<usize>), DatasetError> {
    let path = pkg.join("golden.json");
    let v: serde_json::Value =
        serde_json::from_slice(&read(&path)?).map_err(|source| DatasetError::Json {
            path: path.clone(),
            source,
        })?;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for s in v["samples"]
        .as_array()
        .ok_or(DatasetError::Golden("golden.json has no samples"))?
    {
        let file = s["file"]
            .as_str()
            .ok_or(DatasetError::Golden("sample without file"))?;
        images.push(read(&pkg.join(file))?);
        labels.push(
            s["label"]
                .as_u64()
                .ok_or(DatasetError::Golden("sample without label"))? as usize,
        );
    }
    Ok((images, labels))
}

/// PNG-encodes a grayscale image (what `seenn bench` sends).
pub fn encode_png(pixels: &[u8], width: usize, height: usize) -> Result<Vec<u8>, DatasetError> {
    let img = image::GrayImage::from_raw(width as u32, height as u32, pixels.to_vec())
        .ok_or(DatasetError::ImageSize)?;
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(DatasetError::Png)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_idx_and_rejects_truncation() {
        let mut raw = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2];
        raw.extend_from_slice(&[1, 2, 3, 4]);
        let (dims, data) = parse_idx(&raw).expect("parses");
        assert_eq!(dims, vec![2, 1, 2]);
        assert_eq!(data, &[1, 2, 3, 4]);
        assert!(parse_idx(&raw[..18]).is_err());
        assert!(parse_idx(b"\x01\x02").is_err());
    }
}
