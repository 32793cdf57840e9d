//! NumPy `.npy` files: a reader for the tensors clients send and packages hold (format versions
//! 1.0, 2.0 and 3.0; little-endian float32 `<f4`, `|u1` uint8 and `|b1` bool; C order), and a writer
//! for float32. Values are cast to float32 unscaled (uint8 0..255 → 0.0..255.0, bool → 0.0/1.0).

use std::fmt;

/// The element types this server reads, as the model package and the wire name them.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    Float32,
    Uint8,
    Bool,
}

/// What a tensor input accepts, for error messages.
pub const ACCEPTED_DTYPES: &str = "float32|uint8|bool";

/// Why a `.npy` file, a dtype name or a tensor's values are refused; every message says what is
/// accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NpyError {
    /// The bytes are not a `.npy` file this server reads: the magic, version, header, dtype,
    /// shape, data size or values are wrong (the text says which).
    #[error("not a readable .npy file: {0}; {ACCEPTED}")]
    Unreadable(String),
    /// A dtype name other than float32, uint8 or bool (and their aliases).
    #[error("dtype {0:?} is not accepted; accepted: {ACCEPTED_DTYPES}")]
    UnknownDtype(String),
    /// Values that their dtype does not allow: a byte count that is not a whole number of
    /// elements, a bool byte other than 0 or 1, a float that is not finite.
    #[error("{0}")]
    Values(String),
    /// A labels file that is not one dimension of non-negative integers.
    #[error("{0}")]
    Labels(String),
    /// Data that does not fill the shape it is written with.
    #[error("{0}")]
    Write(String),
}

impl Dtype {
    pub const ALL: [Dtype; 3] = [Dtype::Float32, Dtype::Uint8, Dtype::Bool];

    /// The name in manifests and requests (`float32`, `uint8`, `bool`).
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Float32 => "float32",
            Dtype::Uint8 => "uint8",
            Dtype::Bool => "bool",
        }
    }

    /// The Open Inference Protocol's name (`FP32`, `UINT8`, `BOOL`).
    pub fn oip(self) -> &'static str {
        match self {
            Dtype::Float32 => "FP32",
            Dtype::Uint8 => "UINT8",
            Dtype::Bool => "BOOL",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::Float32 => 4,
            Dtype::Uint8 | Dtype::Bool => 1,
        }
    }

    /// Parses a request's dtype name (`float32`/`fp32`/`f4`, `uint8`/`u1`, `bool`/`b1`, any case).
    pub fn parse(s: &str) -> Result<Dtype, NpyError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "float32" | "fp32" | "f4" | "<f4" | "float" => Ok(Dtype::Float32),
            "uint8" | "u1" | "|u1" => Ok(Dtype::Uint8),
            "bool" | "b1" | "|b1" => Ok(Dtype::Bool),
            other => Err(NpyError::UnknownDtype(other.to_string())),
        }
    }

    /// Little-endian raw bytes of this dtype → float32 values (uint8 and bool unscaled; a bool
    /// byte must be 0 or 1). Float32 values must be finite.
    pub fn decode(self, raw: &[u8]) -> Result<Vec<f32>, NpyError> {
        match self {
            Dtype::Float32 => {
                if !raw.len().is_multiple_of(4) {
                    return Err(NpyError::Values(format!(
                        "{} bytes of float32 data: not a multiple of 4",
                        raw.len()
                    )));
                }
                let v: Vec<f32> = raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                check_finite(&v)?;
                Ok(v)
            }
            Dtype::Uint8 => Ok(raw.iter().map(|b| f32::from(*b)).collect()),
            Dtype::Bool => {
                // Checked first, then converted as uint8 (collecting Results cannot preallocate).
                if let Some(i) = raw.iter().position(|b| *b > 1) {
                    return Err(NpyError::Values(format!(
                        "bool element {i} is the byte {}; accepted: 0 or 1",
                        raw[i]
                    )));
                }
                Ok(raw.iter().map(|b| f32::from(*b)).collect())
            }
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors unless every value is finite, naming the first that is not.
pub fn check_finite(v: &[f32]) -> Result<(), NpyError> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(NpyError::Values(format!(
            "element {i} is {}; only finite float32 values are accepted",
            v[i]
        ))),
        None => Ok(()),
    }
}

/// A tensor read from a `.npy` file: its shape, the dtype it was stored in, and its values as
/// float32 (C order).
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub data: Vec<f32>,
}

const MAGIC: &[u8] = b"\x93NUMPY";
/// Most elements one file may hold (the header is checked before any data is read).
pub const MAX_ELEMENTS: usize = 1 << 28;
const ACCEPTED: &str = "accepted: .npy version 1.0, 2.0 or 3.0, dtype '<f4' (float32), '|u1' (uint8) or '|b1' (bool), fortran_order False";

/// A `.npy` header: the dtype descriptor as written, the shape, and where the data starts.
struct Header<'a> {
    descr: String,
    shape: Vec<usize>,
    data: &'a [u8],
}

fn err(what: String) -> NpyError {
    NpyError::Unreadable(what)
}

/// The preamble and header of a `.npy` file (any dtype; C order only).
fn header(bytes: &[u8]) -> Result<Header<'_>, NpyError> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(err("it does not start with the magic \\x93NUMPY".into()));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, start) = match major {
        1 => (
            usize::from(u16::from_le_bytes([bytes[8], bytes[9]])),
            10usize,
        ),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(err("the header length is cut off".into()));
            }
            let n = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (n as usize, 12)
        }
        _ => return Err(err(format!("format version {major}.{minor}"))),
    };
    let end = start
        .checked_add(header_len)
        .filter(|e| *e <= bytes.len())
        .ok_or_else(|| {
            err(format!(
                "the header claims {header_len} bytes, the file has {} after the preamble",
                bytes.len().saturating_sub(start)
            ))
        })?;
    let header = std::str::from_utf8(&bytes[start..end])
        .map_err(|_| err("the header is not UTF-8 text".into()))?;
    let descr =
        dict_value(header, "descr").ok_or_else(|| err("no 'descr' in the header".into()))?;
    let descr = unquote(descr).ok_or_else(|| err(format!("dtype {descr}")))?;
    match dict_value(header, "fortran_order") {
        Some("False") => {}
        Some("True") => {
            return Err(err(
                "fortran_order True (column-major); save a C-ordered array (np.ascontiguousarray)"
                    .into(),
            ))
        }
        other => return Err(err(format!("fortran_order {other:?}"))),
    }
    let shape_text =
        dict_value(header, "shape").ok_or_else(|| err("no 'shape' in the header".into()))?;
    let shape = parse_shape(shape_text).ok_or_else(|| err(format!("shape {shape_text}")))?;
    Ok(Header {
        descr,
        shape,
        data: &bytes[end..],
    })
}

/// The element count of `shape`, refused above [`MAX_ELEMENTS`].
fn count_of(shape: &[usize]) -> Result<usize, NpyError> {
    shape
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .filter(|n| *n <= MAX_ELEMENTS)
        .ok_or_else(|| {
            err(format!(
                "shape {shape:?} has more than {MAX_ELEMENTS} elements"
            ))
        })
}

/// Reads a `.npy` file's bytes.
pub fn read(bytes: &[u8]) -> Result<Array, NpyError> {
    let Header { descr, shape, data } = header(bytes)?;
    let dtype = match descr.as_str() {
        "<f4" => Dtype::Float32,
        "|u1" | "<u1" | ">u1" => Dtype::Uint8,
        "|b1" => Dtype::Bool,
        _ => return Err(err(format!("dtype '{descr}'"))),
    };
    let count = count_of(&shape)?;
    let want = count * dtype.size();
    if data.len() != want {
        return Err(err(format!(
            "shape {shape:?} of {dtype} needs {want} data bytes, the file has {}",
            data.len()
        )));
    }
    let data = dtype.decode(data).map_err(|e| err(e.to_string()))?;
    Ok(Array { shape, dtype, data })
}

/// Class labels from a `.npy` file: one dimension of little-endian integers (int64, int32, int16,
/// int8 or their unsigned kinds), none negative.
pub fn read_labels(bytes: &[u8]) -> Result<Vec<usize>, NpyError> {
    let Header { descr, shape, data } = header(bytes)?;
    let (size, signed) = match descr.as_str() {
        "<i8" => (8, true),
        "<u8" => (8, false),
        "<i4" => (4, true),
        "<u4" => (4, false),
        "<i2" => (2, true),
        "<u2" => (2, false),
        "|i1" => (1, true),
        "|u1" => (1, false),
        other => {
            return Err(NpyError::Labels(format!(
                "labels of dtype '{other}'; accepted: integers ('<i8', '<i4', '<i2', '|u1', …)"
            )))
        }
    };
    let [n] = shape[..] else {
        return Err(NpyError::Labels(format!(
            "labels of shape {shape:?}; expected [N]"
        )));
    };
    if data.len() != count_of(&shape)? * size {
        return Err(NpyError::Labels(format!(
            "{n} labels of {size} bytes need {} data bytes, the file has {}",
            n * size,
            data.len()
        )));
    }
    data.chunks_exact(size)
        .enumerate()
        .map(|(i, b)| {
            let negative = signed && b[size - 1] & 0x80 != 0;
            let mut buf = [0u8; 8];
            buf[..size].copy_from_slice(b);
            match usize::try_from(u64::from_le_bytes(buf)) {
                Ok(v) if !negative => Ok(v),
                _ => Err(NpyError::Labels(format!(
                    "label {i} is negative or too large"
                ))),
            }
        })
        .collect()
}

/// The text of `key`'s value in the header's Python dict literal (up to the next top-level comma
/// or the closing brace).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
        if depth < 0 {
            return None;
        }
    }
    None
}

fn unquote(s: &str) -> Option<String> {
    let s = s.trim();
    let inner = s
        .strip_prefix('\'')
        .and_then(|r| r.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|r| r.strip_suffix('"')))?;
    Some(inner.to_string())
}

/// `(2, 3)`, `(4,)` or `()`.
fn parse_shape(s: &str) -> Option<Vec<usize>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.trim_end_matches('L').parse::<usize>().ok())
        .collect()
}

/// A `.npy` file (version 1.0, `<f4`, C order) holding `data` with `shape`.
pub fn write_f32(shape: &[usize], data: &[f32]) -> Result<Vec<u8>, NpyError> {
    write(Dtype::Float32, shape, data)
}

/// A `.npy` file (version 1.0, C order) holding `data` with `shape`, stored as `dtype` (uint8 and
/// bool values are written as the bytes `v as u8`: whole numbers 0..=255, or 0/1).
pub fn write(dtype: Dtype, shape: &[usize], data: &[f32]) -> Result<Vec<u8>, NpyError> {
    let count: usize = shape.iter().product();
    if count != data.len() {
        return Err(NpyError::Write(format!(
            "shape {shape:?} holds {count} values, {} given",
            data.len()
        )));
    }
    let dims = match shape {
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let descr = match dtype {
        Dtype::Float32 => "<f4",
        Dtype::Uint8 => "|u1",
        Dtype::Bool => "|b1",
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let len = u16::try_from(header.len())
        .map_err(|_| NpyError::Write(format!("shape {shape:?}: header too long")))?;
    let mut out = Vec::with_capacity(10 + header.len() + dtype.size() * data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    match dtype {
        Dtype::Float32 => {
            for v in data {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Dtype::Uint8 | Dtype::Bool => out.extend(data.iter().map(|v| *v as u8)),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(version: u8, header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[version, 0]);
        if version == 1 {
            out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn float32_round_trips_through_the_writer() {
        let data = [1.5f32, -2.0, 0.25, 7.0, 8.0, 9.0];
        for shape in [vec![2, 3], vec![6], vec![1, 2, 3]] {
            let bytes = write_f32(&shape, &data).expect("writes");
            assert_eq!((bytes.len() - 4 * 6) % 64, 0, "header padded to 64");
            let a = read(&bytes).expect("reads");
            assert_eq!(a.shape, shape);
            assert_eq!(a.dtype, Dtype::Float32);
            assert_eq!(a.data, data);
        }
        assert!(write_f32(&[4], &data).is_err());
    }

    #[test]
    fn uint8_and_bool_cast_unscaled_and_version_2_reads() {
        let a = read(&file(
            1,
            "{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }\n",
            &[0, 7, 255],
        ))
        .expect("u1");
        assert_eq!((a.dtype, a.data), (Dtype::Uint8, vec![0.0, 7.0, 255.0]));
        let b = read(&file(
            2,
            "{'descr': '|b1', 'fortran_order': False, 'shape': (2, 1), }\n",
            &[1, 0],
        ))
        .expect("b1");
        assert_eq!((b.shape, b.data), (vec![2, 1], vec![1.0, 0.0]));
        let scalar = read(&file(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (), }\n",
            &2.5f32.to_le_bytes(),
        ))
        .expect("0-d");
        assert_eq!((scalar.shape.len(), scalar.data), (0, vec![2.5]));
    }

    #[test]
    fn errors_name_what_is_wrong_and_what_is_accepted() {
        let e = |bytes: Vec<u8>| read(&bytes).unwrap_err().to_string();
        let h = |descr: &str, fortran: &str| {
            format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': (2,), }}\n")
        };
        let m = e(file(1, &h("<f8", "False"), &[0; 16]));
        assert!(m.contains("dtype '<f8'") && m.contains("accepted"), "{m}");
        let m = e(file(1, &h(">f4", "False"), &[0; 8]));
        assert!(m.contains("'>f4'"), "{m}");
        let m = e(file(1, &h("<f4", "True"), &[0; 8]));
        assert!(m.contains("fortran_order True"), "{m}");
        let m = e(file(1, &h("<f4", "False"), &[0; 7]));
        assert!(m.contains("needs 8 data bytes"), "{m}");
        let m = e(file(1, &h("|b1", "False"), &[1, 2]));
        assert!(m.contains("accepted: 0 or 1"), "{m}");
        let m = e(file(1, &h("<f4", "False"), &[0, 0, 0xc0, 0x7f, 0, 0, 0, 0]));
        assert!(m.contains("finite"), "{m}");
        let m = e(b"PK\x03\x04 a zip file".to_vec());
        assert!(m.contains("magic"), "{m}");
        let mut cut = file(1, &h("<f4", "False"), &[0; 8]);
        cut[8] = 0xff;
        assert!(e(cut).contains("header claims"));
        let m = e(file(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (65536, 65536, 65536), }",
            &[],
        ));
        assert!(m.contains("more than"), "{m}");
        let m = e(file(9, "{}", &[]));
        assert!(m.contains("format version 9.0"), "{m}");
    }

    #[test]
    fn dtype_names() {
        assert_eq!(Dtype::parse("FP32"), Ok(Dtype::Float32));
        assert_eq!(Dtype::parse("uint8"), Ok(Dtype::Uint8));
        assert_eq!(Dtype::parse("BOOL"), Ok(Dtype::Bool));
        assert!(Dtype::parse("int64")
            .unwrap_err()
            .to_string()
            .contains(ACCEPTED_DTYPES));
    }
}
