//! Admin changes persisted under `--state-dir`: written atomically (temp file, fsync, rename, fsync of
//! the folder) so a crash leaves either the old or the new file, never a torn one. A corrupt file is
//! a startup error, never a silent reset.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::exit::ExitPolicy;

pub const STATE_FILE: &str = "exit-policies.json";

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub models: BTreeMap<String, ExitPolicy>,
}

/// Why the state file cannot be read, checked or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Not JSON of the state file's schema.
    #[error("corrupt state file (fix or remove it to go back to the manifests' defaults)")]
    Corrupt(#[source] serde_json::Error),
    /// A policy whose values are out of range; the message says which and what is accepted.
    #[error("{0}")]
    OutOfRange(String),
    /// The file `path` is wrong in the way `source` says.
    #[error("{}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: Box<StateError>,
    },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serialize the exit policies")]
    Serialize(#[source] serde_json::Error),
    #[error("state lock poisoned")]
    Poisoned,
}

/// An I/O error on `path` while doing `action` (read, write, …).
fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io {
        action,
        path,
        source,
    }
}

pub struct StateStore {
    path: PathBuf,
    state: Mutex<State>,
}

/// Parses and checks an exit-policies.json body.
pub fn parse_state(bytes: &[u8]) -> Result<State, StateError> {
    let s: State = serde_json::from_slice(bytes).map_err(StateError::Corrupt)?;
    for (name, p) in &s.models {
        if !(p.alpha > 0.0 && p.alpha <= 1.0) || p.timesteps == 0 {
            return Err(StateError::OutOfRange(format!(
                "model {name}: alpha must be in (0, 1] and timesteps >= 1"
            )));
        }
        if let Some(a) = &p.adaptive {
            let in_range = |x: f64| x > 0.0 && x <= 1.0;
            if !(a.p99_ms.is_finite()
                && a.p99_ms > 0.0
                && (0.0..=1.0).contains(&a.max_accuracy_drop)
                && in_range(a.configured_alpha)
                && in_range(a.floor_alpha)
                && a.floor_alpha <= a.configured_alpha)
            {
                return Err(StateError::OutOfRange(format!(
                    "model {name}: adaptive {a:?} is out of range"
                )));
            }
        }
        if !(0.0..=1.0).contains(&p.shadow_fraction) {
            return Err(StateError::OutOfRange(format!(
                "model {name}: shadow_fraction {} is out of range; accepted: 0 <= shadow_fraction <= 1",
                p.shadow_fraction
            )));
        }
    }
    Ok(s)
}

impl StateStore {
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let path = dir.join(STATE_FILE);
        let state = if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(io("read", &path))?;
            parse_state(text.as_bytes()).map_err(|e| StateError::File {
                path: path.clone(),
                source: Box::new(e),
            })?
        } else {
            State {
                version: 1,
                models: BTreeMap::new(),
            }
        };
        Ok(StateStore {
            path,
            state: Mutex::new(state),
        })
    }

    pub fn get(&self, model: &str) -> Option<ExitPolicy> {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.models.get(model).copied())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records the new policy and writes the file before returning.
    pub fn set(&self, model: &str, policy: ExitPolicy) -> Result<(), StateError> {
        let mut guard = self.state.lock().map_err(|_| StateError::Poisoned)?;
        let mut next = guard.clone();
        next.version = 1;
        next.models.insert(model.to_string(), policy);
        write_atomic(&self.path, &next)?;
        *guard = next;
        Ok(())
    }
}

fn write_atomic(path: &Path, state: &State) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let tmp = path.with_extension(format!("json.tmp.{}", std::process::id()));
    let body = serde_json::to_vec_pretty(state).map_err(StateError::Serialize)?;
    let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(&body).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io("replace", path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::RuleKind;

    #[test]
    fn survives_reopen_and_rejects_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path()).expect("open");
        let p = ExitPolicy {
            rule: RuleKind::Confidence,
            alpha: 0.75,
            timesteps: 4,
            adaptive: None,
            threshold: Some(0.5),
            bias_scale: Some(-2.0),
            shadow_fraction: 0.01,
        };
        store.set("m", p).expect("set");
        let again = StateStore::open(dir.path()).expect("reopen");
        assert_eq!(again.get("m"), Some(p));
        std::fs::write(dir.path().join(STATE_FILE), b"{not json").expect("write");
        let e = crate::error::chain(
            &StateStore::open(dir.path())
                .err()
                .expect("corrupt file must fail"),
        );
        assert!(e.contains(STATE_FILE) && e.contains("corrupt"), "{e}");
        // A file without shadow_fraction (written before it existed) reads as off; one out of
        // range is refused.
        let old = parse_state(
            br#"{"version": 1, "models": {"m": {"rule": "confidence", "alpha": 0.9, "timesteps": 4}}}"#,
        )
        .expect("parses");
        assert_eq!(old.models["m"].shadow_fraction, 0.0);
        let e = parse_state(
            br#"{"version": 1, "models": {"m": {"rule": "confidence", "alpha": 0.9, "timesteps": 4, "shadow_fraction": 1.5}}}"#,
        )
        .expect_err("out of range")
        .to_string();
        assert!(e.contains("shadow_fraction"), "{e}");
    }
}
