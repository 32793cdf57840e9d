//! The model package on disk (`models/README.md`): reading and validating `manifest.json` and
//! `calibration.json`, and the error that names the file at fault. Nothing here runs a graph.

pub mod layout;
pub mod manifest;

use std::path::{Path, PathBuf};

use manifest::{Calibration, Manifest};

/// A package that failed to load: the file at fault (shown) and what is wrong with it (the
/// source).
#[derive(Debug, thiserror::Error)]
#[error("{}", file.display())]
pub struct LoadError {
    pub file: PathBuf,
    #[source]
    pub source: PackageError,
}

/// What is wrong with one file of a package, or with loading it.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("cannot read")]
    Read(#[source] std::io::Error),
    #[error("cannot read the models folder")]
    ReadFolder(#[source] std::io::Error),
    /// Not JSON of the file's schema (`what`: manifest, calibration, golden.json).
    #[error("invalid {what}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A value that breaks the package contract.
    #[error(transparent)]
    Invalid(#[from] manifest::Invalid),
    /// A `.npy` sample that cannot be read.
    #[error(transparent)]
    Npy(#[from] crate::npy::NpyError),
    /// A sample image that does not decode or preprocess.
    #[error(transparent)]
    Image(crate::error::Error),
    /// A graph that ONNX Runtime cannot load or that does not match the manifest.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// The first run of the loaded graphs failed.
    #[error("warm-up run failed")]
    WarmUp(#[source] crate::error::Error),
    /// The model's engine did not start.
    #[error(transparent)]
    Engine(crate::error::Error),
}

/// `source` as the error of `file`.
pub fn err(file: &Path, source: impl Into<PackageError>) -> LoadError {
    LoadError {
        file: file.to_path_buf(),
        source: source.into(),
    }
}

/// A message as the error of `file` (what is wrong, without a cause).
pub fn invalid(file: &Path, message: impl Into<String>) -> LoadError {
    err(file, manifest::Invalid(message.into()))
}

fn read_text(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|e| err(path, PackageError::Read(e)))
}

pub fn read_manifest(dir: &Path) -> Result<Manifest, LoadError> {
    let path = dir.join("manifest.json");
    parse_manifest(read_text(&path)?.as_bytes()).map_err(|e| err(&path, e))
}

/// Parses and validates a manifest.json body (the file's bytes).
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, PackageError> {
    let m: Manifest = serde_json::from_slice(bytes).map_err(|source| PackageError::Json {
        what: "manifest",
        source,
    })?;
    m.validate()?;
    Ok(m)
}

/// Parses and validates a calibration.json body for a model of `timesteps` steps.
pub fn parse_calibration(bytes: &[u8], timesteps: usize) -> Result<Calibration, PackageError> {
    let c: Calibration = serde_json::from_slice(bytes).map_err(|source| PackageError::Json {
        what: "calibration",
        source,
    })?;
    c.validate(timesteps)?;
    Ok(c)
}

pub fn read_calibration(dir: &Path, timesteps: usize) -> Result<Option<Calibration>, LoadError> {
    let path = dir.join("calibration.json");
    if !path.exists() {
        return Ok(None);
    }
    parse_calibration(read_text(&path)?.as_bytes(), timesteps)
        .map(Some)
        .map_err(|e| err(&path, e))
}

/// `golden.json`: the trainer's reference outputs for the package's sample images. Fields the
/// trainer adds later are ignored, so an older server reads a newer package.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Golden {
    /// The confidence threshold the reference exits were computed with.
    pub alpha: f64,
    pub samples: Vec<GoldenSample>,
    /// The learned rule's threshold the learned exits were computed with (format 2 packages).
    #[serde(default)]
    pub learned_threshold: Option<f64>,
    /// The smallest |stop probability − threshold| over the samples before T: how much rounding
    /// the learned exit steps tolerate.
    #[serde(default)]
    pub learned_min_margin: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GoldenSample {
    /// The image, relative to the package folder (`samples/…`).
    pub file: String,
    /// The true class.
    pub label: usize,
    /// Logits at every timestep, `[T][classes]`.
    pub logits: Vec<Vec<f32>>,
    /// The timestep (1-based) the confidence rule exits at, with `alpha`.
    pub exit_timestep: usize,
    /// The class answered at that exit.
    pub class_id: usize,
    /// The timestep the SEENN-II policy exits at, for packages with a policy.
    #[serde(default)]
    pub policy_timesteps: Option<usize>,
    /// `exit.onnx`'s stop probability after every timestep (format 2 packages).
    #[serde(default)]
    pub learned_scores: Option<Vec<f64>>,
    /// The timestep the learned rule exits at, with `learned_threshold`.
    #[serde(default)]
    pub learned_exit_timestep: Option<usize>,
    /// The class answered at that exit.
    #[serde(default)]
    pub learned_class_id: Option<usize>,
}

impl GoldenSample {
    /// The sample's image bytes, read from the package folder `dir`.
    pub fn read_image(&self, dir: &Path) -> Result<Vec<u8>, LoadError> {
        let path = dir.join(&self.file);
        std::fs::read(&path).map_err(|e| err(&path, PackageError::Read(e)))
    }

    /// Whether the sample is a `.npy` tensor (tensor packages) rather than an image.
    pub fn is_npy(&self) -> bool {
        self.file.ends_with(".npy")
    }

    /// The engine input of this sample for model `m`: a `.npy` file's values (`[*dims]` for a
    /// static input, `[t, *dims]` with 1 ≤ t ≤ T for a per_step one, any dtype the server reads),
    /// or an image preprocessed as the manifest says.
    pub fn read_input(&self, dir: &Path, m: &manifest::Manifest) -> Result<Vec<f32>, LoadError> {
        let path = dir.join(&self.file);
        let bytes = self.read_image(dir)?;
        if self.is_npy() {
            let a = crate::npy::read(&bytes).map_err(|e| err(&path, e))?;
            check_frames(&m.input, m.timesteps, &a.shape).map_err(|e| err(&path, e))?;
            return Ok(a.data);
        }
        if !m.input.is_image() {
            return Err(invalid(
                &path,
                format!(
                    "a tensor model's golden samples are .npy files holding {}",
                    m.input.expected(m.timesteps)
                ),
            ));
        }
        crate::preprocess::image_to_tensor(&bytes, None, &m.input, 1 << 26)
            .map_err(|e| err(&path, PackageError::Image(e)))
    }
}

/// Checks a request tensor's shape against the input: `[*dims]` (static inputs and images) or
/// `[t, *dims]` with 1 ≤ t ≤ `timesteps` (per_step). Returns the frames it holds (1 when static).
pub fn check_frames(
    input: &manifest::InputSpec,
    timesteps: usize,
    shape: &[usize],
) -> Result<usize, manifest::Invalid> {
    let dims = input.dims();
    let ok = if input.per_step() {
        shape.len() == dims.len() + 1 && shape[1..] == *dims && (1..=timesteps).contains(&shape[0])
    } else {
        shape == dims
    };
    if !ok {
        return Err(manifest::Invalid(format!(
            "tensor of shape {shape:?}; expected {}",
            input.expected(timesteps)
        )));
    }
    Ok(if input.per_step() { shape[0] } else { 1 })
}

/// Parses a golden.json body.
pub fn parse_golden(bytes: &[u8]) -> Result<Golden, PackageError> {
    serde_json::from_slice(bytes).map_err(|source| PackageError::Json {
        what: "golden.json",
        source,
    })
}

/// Reads `golden.json`; `None` when the package has none.
pub fn read_golden(dir: &Path) -> Result<Option<Golden>, LoadError> {
    let path = dir.join("golden.json");
    if !path.exists() {
        return Ok(None);
    }
    parse_golden(read_text(&path)?.as_bytes())
        .map(Some)
        .map_err(|e| err(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_tolerates_fields_it_does_not_know() {
        let g = parse_golden(
            br#"{"rule": "confidence", "alpha": 0.9, "new_top_level": [1], "samples": [
                {"file": "samples/a.png", "label": 3, "logits": [[0.5, 1.5]], "exit_timestep": 1,
                 "class_id": 1, "learned_exit_timestep": 2},
                {"file": "samples/b.png", "label": 0, "logits": [[2, 1], [3, 1]], "exit_timestep": 2,
                 "class_id": 0, "policy_timesteps": 2}]}"#,
        )
        .expect("parses");
        assert_eq!(g.alpha, 0.9);
        assert_eq!(g.samples.len(), 2);
        assert_eq!(g.samples[0].policy_timesteps, None);
        assert_eq!(g.samples[0].learned_exit_timestep, Some(2));
        assert_eq!(g.samples[1].learned_exit_timestep, None);
        assert_eq!(g.samples[1].policy_timesteps, Some(2));
        assert_eq!(g.samples[1].logits, vec![vec![2.0, 1.0], vec![3.0, 1.0]]);
        let e = crate::error::chain(
            &parse_golden(br#"{"alpha": 0.9, "samples": [{"file": "a.png"}]}"#).unwrap_err(),
        );
        assert!(e.contains("missing field `label`"), "{e}");
    }

    #[test]
    fn committed_goldens_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for dir in ["models/fashion-mnist", "models/fashion-mnist-qcfs"] {
            let g = read_golden(&root.join(dir))
                .expect("parses")
                .expect("present");
            assert!(!g.samples.is_empty(), "{dir}");
        }
        assert!(read_golden(&root.join("models")).expect("absent").is_none());
    }
}
