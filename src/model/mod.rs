//! The model package on disk (`models/README.md`): reading and validating `manifest.json` and
//! `calibration.json`, and the error that names the file at fault. Nothing here runs a graph.

pub mod manifest;

use std::path::{Path, PathBuf};

use manifest::{Calibration, Manifest};

/// A package that failed to load: the file at fault and what is wrong with it.
#[derive(Debug, Clone)]
pub struct LoadError {
    pub file: PathBuf,
    pub message: String,
}

impl std::error::Error for LoadError {}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

pub fn err(file: &Path, message: impl Into<String>) -> LoadError {
    LoadError {
        file: file.to_path_buf(),
        message: message.into(),
    }
}

pub fn read_manifest(dir: &Path) -> Result<Manifest, LoadError> {
    let path = dir.join("manifest.json");
    let text =
        std::fs::read_to_string(&path).map_err(|e| err(&path, format!("cannot read: {e}")))?;
    parse_manifest(text.as_bytes()).map_err(|e| err(&path, e))
}

/// Parses and validates a manifest.json body (the file's bytes).
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, String> {
    let m: Manifest =
        serde_json::from_slice(bytes).map_err(|e| format!("invalid manifest: {e}"))?;
    m.validate()?;
    Ok(m)
}

/// Parses and validates a calibration.json body for a model of `timesteps` steps.
pub fn parse_calibration(bytes: &[u8], timesteps: usize) -> Result<Calibration, String> {
    let c: Calibration =
        serde_json::from_slice(bytes).map_err(|e| format!("invalid calibration: {e}"))?;
    c.validate(timesteps)?;
    Ok(c)
}

pub fn read_calibration(dir: &Path, timesteps: usize) -> Result<Option<Calibration>, LoadError> {
    let path = dir.join("calibration.json");
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&path).map_err(|e| err(&path, format!("cannot read: {e}")))?;
    parse_calibration(text.as_bytes(), timesteps)
        .map(Some)
        .map_err(|e| err(&path, e))
}
