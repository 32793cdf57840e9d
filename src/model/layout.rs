//! The model repository on disk: which models and versions the `--models` folder holds, and a
//! fingerprint of each version's files (what poll mode compares between scans).
//!
//! A model folder holds one package (`manifest.json` at its top; the version is the manifest's)
//! or numbered versions (`1/`, `2/`, … each a package; the folder name is the version). Folders
//! whose name starts with `.` are never read: a version is published by writing it under a
//! dot-name and renaming it into place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{read_manifest, LoadError};

/// One version of a model on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionDir {
    pub version: String,
    pub dir: PathBuf,
}

/// A model's versions on disk, oldest first (numeric order; a one-package folder has one).
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub name: String,
    pub folder: PathBuf,
    pub versions: Vec<VersionDir>,
}

impl ModelDir {
    /// The version a `latest` policy serves: the highest.
    pub fn latest(&self) -> Option<&VersionDir> {
        self.versions.last()
    }

    pub fn version(&self, v: &str) -> Option<&VersionDir> {
        self.versions.iter().find(|d| d.version == v)
    }
}

/// What is wrong with a folder of the repository; the rest of the repository is still read.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot read the models folder {}", path.display())]
    ReadFolder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: holds both a manifest.json and numbered version folders; use one layout: a package, \
         or versions 1/, 2/, … each a package",
        folder.display()
    )]
    MixedLayout { folder: PathBuf },
    #[error(
        "{}: version {version} names the model {found:?}, version {first_version} names it \
         {first:?}; every version of a model carries the same manifest name",
        folder.display()
    )]
    NameMismatch {
        folder: PathBuf,
        first: String,
        first_version: String,
        found: String,
        version: String,
    },
    #[error("two folders hold the model {name:?}: {} and {}", first.display(), second.display())]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error(transparent)]
    Package(#[from] LoadError),
}

impl LayoutError {
    /// The model folder the error is about, when there is one.
    pub fn folder(&self) -> Option<&Path> {
        match self {
            LayoutError::ReadFolder { .. } => None,
            LayoutError::MixedLayout { folder } | LayoutError::NameMismatch { folder, .. } => {
                Some(folder)
            }
            LayoutError::Duplicate { second, .. } => Some(second),
            LayoutError::Package(e) => Some(&e.file),
        }
    }
}

fn visible_dirs(folder: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(folder)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.'))
        })
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// A version folder's name: a positive integer without leading zeros.
fn version_number(dir: &Path) -> Option<u64> {
    let name = dir.file_name()?.to_str()?;
    if name.starts_with('0') {
        return None;
    }
    name.parse().ok().filter(|v| *v > 0)
}

/// Reads one model folder: `None` when it holds no package at all (not a model).
pub fn read_model_dir(folder: &Path) -> Result<Option<ModelDir>, LayoutError> {
    let mut numbered: Vec<(u64, PathBuf)> = visible_dirs(folder)
        .map_err(|source| LayoutError::ReadFolder {
            path: folder.to_path_buf(),
            source,
        })?
        .into_iter()
        .filter(|d| d.join("manifest.json").is_file())
        .filter_map(|d| version_number(&d).map(|v| (v, d)))
        .collect();
    numbered.sort();
    let flat = folder.join("manifest.json").is_file();
    match (flat, numbered.is_empty()) {
        (true, false) => Err(LayoutError::MixedLayout {
            folder: folder.to_path_buf(),
        }),
        (false, true) => Ok(None),
        (true, true) => {
            let m = read_manifest(folder)?;
            Ok(Some(ModelDir {
                name: m.name,
                folder: folder.to_path_buf(),
                versions: vec![VersionDir {
                    version: m.version,
                    dir: folder.to_path_buf(),
                }],
            }))
        }
        (false, false) => {
            // A version whose manifest does not read stays listed (a load of it fails with the
            // reason); the model's name comes from the versions that read.
            let mut name: Option<(String, String)> = None;
            let mut first_error = None;
            let mut versions = Vec::with_capacity(numbered.len());
            for (v, dir) in numbered {
                let version = v.to_string();
                match read_manifest(&dir) {
                    Ok(m) => match &name {
                        None => name = Some((m.name, version.clone())),
                        Some((first, first_version)) if *first != m.name => {
                            return Err(LayoutError::NameMismatch {
                                folder: folder.to_path_buf(),
                                first: first.clone(),
                                first_version: first_version.clone(),
                                found: m.name,
                                version,
                            })
                        }
                        Some(_) => {}
                    },
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
                versions.push(VersionDir { version, dir });
            }
            match (name, first_error) {
                (Some((name, _)), _) => Ok(Some(ModelDir {
                    name,
                    folder: folder.to_path_buf(),
                    versions,
                })),
                (None, Some(e)) => Err(e.into()),
                (None, None) => Err(LayoutError::MixedLayout {
                    folder: folder.to_path_buf(),
                }),
            }
        }
    }
}

/// Every model under `root` by name, and the folders that could not be read. A folder that is
/// neither a package nor a folder of versions is not a model and is skipped.
pub fn scan(root: &Path) -> Result<(BTreeMap<String, ModelDir>, Vec<LayoutError>), LayoutError> {
    let mut models: BTreeMap<String, ModelDir> = BTreeMap::new();
    let mut errors = Vec::new();
    let folders = visible_dirs(root).map_err(|source| LayoutError::ReadFolder {
        path: root.to_path_buf(),
        source,
    })?;
    for folder in folders {
        match read_model_dir(&folder) {
            Ok(None) => {}
            Ok(Some(m)) => match models.get(&m.name) {
                Some(first) => errors.push(LayoutError::Duplicate {
                    name: m.name.clone(),
                    first: first.folder.clone(),
                    second: m.folder,
                }),
                None => {
                    models.insert(m.name.clone(), m);
                }
            },
            Err(e) => errors.push(e),
        }
    }
    Ok((models, errors))
}

/// Every file under a version folder with its size and modification time: two equal
/// fingerprints a poll interval apart mean nobody is writing the version.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>)>);

pub fn fingerprint(dir: &Path) -> Fingerprint {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64, Option<SystemTime>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                // A numbered sibling version is not part of this one (one-package folders are
                // walked whole, and hold no numbered folders).
                if version_number(&p).is_none() {
                    walk(&p, out);
                }
            } else {
                out.push((p, meta.len(), meta.modified().ok()));
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    files.sort();
    Fingerprint(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(dir: &Path, name: &str, version: &str) {
        std::fs::create_dir_all(dir).expect("mkdir");
        // Only the fields the layout reads are needed for read_manifest to fail or pass; the
        // committed package's manifest is the valid base.
        let base = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fashion-mnist/manifest.json"),
        )
        .expect("committed manifest");
        let mut m: serde_json::Value = serde_json::from_str(&base).expect("json");
        m["name"] = name.into();
        m["version"] = version.into();
        std::fs::write(dir.join("manifest.json"), m.to_string()).expect("write");
    }

    #[test]
    fn reads_both_layouts_and_orders_versions_numerically() {
        let root = tempfile::tempdir().expect("tempdir");
        package(&root.path().join("flat"), "flat-model", "7");
        for v in ["2", "10", "1"] {
            package(&root.path().join("multi").join(v), "multi", "ignored");
        }
        package(&root.path().join("multi/.3.tmp"), "multi", "x");
        package(&root.path().join("multi/01"), "multi", "x");
        std::fs::create_dir_all(root.path().join("empty")).expect("mkdir");
        let (models, errors) = scan(root.path()).expect("scan");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(models.keys().collect::<Vec<_>>(), ["flat-model", "multi"]);
        assert_eq!(models["flat-model"].versions[0].version, "7");
        let multi = &models["multi"];
        let vs: Vec<_> = multi.versions.iter().map(|v| v.version.as_str()).collect();
        assert_eq!(
            vs,
            ["1", "2", "10"],
            "numeric order; dot-folders and 01 are not versions"
        );
        assert_eq!(multi.latest().map(|v| v.version.as_str()), Some("10"));
    }

    #[test]
    fn refuses_mixed_layouts_name_mismatches_and_duplicates() {
        let root = tempfile::tempdir().expect("tempdir");
        package(&root.path().join("mixed"), "mixed", "1");
        package(&root.path().join("mixed/2"), "mixed", "2");
        package(&root.path().join("names/1"), "a", "1");
        package(&root.path().join("names/2"), "b", "2");
        package(&root.path().join("x1"), "same", "1");
        package(&root.path().join("x2"), "same", "1");
        let (models, errors) = scan(root.path()).expect("scan");
        assert_eq!(models.keys().collect::<Vec<_>>(), ["same"]);
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter().any(|t| t.contains("use one layout")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("version 2 names the model \"b\"")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("two folders hold the model \"same\"")),
            "{text:?}"
        );
    }

    #[test]
    fn fingerprint_changes_with_a_write() {
        let root = tempfile::tempdir().expect("tempdir");
        package(root.path(), "m", "1");
        let a = fingerprint(root.path());
        assert_eq!(a, fingerprint(root.path()));
        std::fs::write(root.path().join("step.onnx"), b"more").expect("write");
        assert_ne!(a, fingerprint(root.path()));
    }
}
