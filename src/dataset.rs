//! Labelled images for `seenn eval` and `seenn bench`: the IDX files of Fashion-MNIST / MNIST
//! (optionally gzip-compressed), or a model package's golden samples.

use std::io::Read;
use std::path::{Path, PathBuf};

pub const DEFAULT_FASHION_DIR: &str = "/usr/share/datasets/fashion-mnist";

pub struct Labelled {
    /// Grayscale images, row-major, `height * width` bytes each.
    pub images: Vec<Vec<u8>>,
    pub labels: Vec<usize>,
    pub height: usize,
    pub width: usize,
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, String> {
    let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("{}: bad gzip: {e}", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses one IDX file of unsigned bytes: returns (dims, data).
pub fn parse_idx(raw: &[u8]) -> Result<(Vec<usize>, &[u8]), String> {
    if raw.len() < 4 || raw[0] != 0 || raw[1] != 0 || raw[2] != 0x08 {
        return Err("not an IDX file of unsigned bytes".into());
    }
    let ndim = raw[3] as usize;
    let header = 4 + 4 * ndim;
    if raw.len() < header {
        return Err("truncated IDX header".into());
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
        .ok_or("IDX dims overflow")?;
    let data = raw
        .get(header..header + count)
        .ok_or("truncated IDX data")?;
    Ok((dims, data))
}

fn find(dir: &Path, stem: &str) -> Result<PathBuf, String> {
    for name in [stem.to_string(), format!("{stem}.gz")] {
        let p = dir.join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(format!(
        "{}: no {stem}[.gz]; install Debian's dataset-fashion-mnist (make setup) or pass --data-dir",
        dir.display()
    ))
}

/// The IDX test (`t10k`) or training split.
pub fn load_idx(dir: &Path, split: &str) -> Result<Labelled, String> {
    let prefix = match split {
        "test" => "t10k",
        "train" => "train",
        other => return Err(format!("unknown split {other:?}; accepted: test, train")),
    };
    let img_raw = read_maybe_gz(&find(dir, &format!("{prefix}-images-idx3-ubyte"))?)?;
    let lab_raw = read_maybe_gz(&find(dir, &format!("{prefix}-labels-idx1-ubyte"))?)?;
    let (idims, idata) = parse_idx(&img_raw)?;
    let (ldims, ldata) = parse_idx(&lab_raw)?;
    if idims.len() != 3 || ldims.len() != 1 || idims[0] != ldims[0] {
        return Err(format!(
            "images {idims:?} and labels {ldims:?} do not match"
        ));
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
pub fn golden_samples(pkg: &Path) -> Result<(Vec<Vec<u8>>, Vec<usize>), String> {
    let path = pkg.join("golden.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for s in v["samples"]
        .as_array()
        .ok_or("golden.json has no samples")?
    {
        let file = s["file"].as_str().ok_or("sample without file")?;
        images.push(std::fs::read(pkg.join(file)).map_err(|e| format!("{file}: {e}"))?);
        labels.push(s["label"].as_u64().ok_or("sample without label")? as usize);
    }
    Ok((images, labels))
}

/// PNG-encodes a grayscale image (what `seenn bench` sends).
pub fn encode_png(pixels: &[u8], width: usize, height: usize) -> Result<Vec<u8>, String> {
    let img = image::GrayImage::from_raw(width as u32, height as u32, pixels.to_vec())
        .ok_or("bad image size")?;
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
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
