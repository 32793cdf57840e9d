//! Declarative exit policies for servers with several replicas (`--exit-policy-file`,
//! `SEENN_EXIT_POLICY_FILE`). An admin PUT reaches one replica and persists in that replica's state
//! directory; a file that every replica mounts (in Kubernetes, a ConfigMap) gives them all the same
//! policies. The file is a JSON object keyed by model name, each value shaped like the admin PUT
//! body:
//!
//! ```json
//! {"fashion-mnist": {"alpha": 0.95}, "fashion-mnist-qcfs": {"target_avg_timesteps": 2.0}}
//! ```
//!
//! What the file says is the whole policy: a field it leaves out, and a model it leaves out, take
//! the manifest's default, so every replica ends up with the same policy whatever its history.
//! The file is read at start (a bad file stops start-up) and re-read every [`POLL`]; a bad edit is
//! logged and the previous policies stay. While a file manages the policies the admin endpoints
//! still answer reads, and refuse changes with 409 ([`managed_message`](super::policy::managed_message)).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::policy::{target_dial, Dial, ExitPolicyUpdate};
use super::Service;
use crate::error::{chain, Chain};
use crate::exit::RuleKind;
use crate::registry::LoadedModel;

/// How often the file is re-read (a ConfigMap volume changes within about a minute of an edit).
pub const POLL: Duration = Duration::from_secs(2);

/// Model name -> the admin PUT body for it.
pub type PolicyFile = BTreeMap<String, ExitPolicyUpdate>;

/// Why the policy file is refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    #[error("{}: cannot read", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "expected a JSON object of model name -> {{rule, alpha, threshold, bias_scale, \
         target_avg_timesteps, max_accuracy_drop, timesteps, adaptive, shadow_fraction}}"
    )]
    Parse(#[source] serde_json::Error),
    #[error("model {model:?} is not served; served models: {served}")]
    UnknownModel { model: String, served: String },
    /// The admin change's validation refused the model's entry.
    #[error("model {model}")]
    Model {
        model: String,
        #[source]
        source: crate::error::Error,
    },
    /// The file `path` is wrong in the way `source` says.
    #[error("{}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: Box<PolicyFileError>,
    },
}

/// Parses the file's text.
pub fn parse(bytes: &[u8]) -> Result<PolicyFile, PolicyFileError> {
    serde_json::from_slice(bytes).map_err(PolicyFileError::Parse)
}

/// The update that gives `m` exactly the policy of `entry`: what it leaves out comes from the
/// manifest, not from the policy the model has now.
fn from_manifest(m: &LoadedModel, entry: Option<&ExitPolicyUpdate>) -> ExitPolicyUpdate {
    let e = entry.cloned().unwrap_or_default();
    let rule = e
        .rule
        .clone()
        .unwrap_or_else(|| m.manifest.exit.default_rule.as_str().to_string());
    // A target moves one dial (which one depends on the rule); every other dial the entry leaves
    // out is the manifest's.
    let has_target = e.target_avg_timesteps.is_some() || e.max_accuracy_drop.is_some();
    let moved = RuleKind::parse(&rule)
        .ok()
        .filter(|_| has_target)
        .map(|r| target_dial(m, r));
    let reset = |d: Dial| moved != Some(d);
    ExitPolicyUpdate {
        alpha: e
            .alpha
            .or_else(|| reset(Dial::Alpha).then_some(m.manifest.exit.default_alpha)),
        threshold: e.threshold.or_else(|| {
            m.manifest
                .exit
                .default_threshold
                .filter(|_| reset(Dial::Threshold))
        }),
        bias_scale: e
            .bias_scale
            .or_else(|| (m.has_policy() && reset(Dial::BiasScale)).then_some(0.0)),
        rule: Some(rule),
        timesteps: e.timesteps.or(Some(m.manifest.timesteps as u64)),
        // Left out means off: the file is the whole policy.
        adaptive: Some(e.adaptive.flatten()),
        shadow_fraction: Some(e.shadow_fraction.unwrap_or(0.0)),
        ..e
    }
}

/// Applies a parsed file to every served model, through the admin change's own validation.
pub fn apply(service: &Service, file: &PolicyFile) -> Result<(), PolicyFileError> {
    if let Some(unknown) = file
        .keys()
        .find(|k| service.registry.get(Some(k.as_str())).is_err())
    {
        return Err(PolicyFileError::UnknownModel {
            model: unknown.clone(),
            served: service.registry.names().join(", "),
        });
    }
    for m in service.registry.models() {
        let name = &m.manifest.name;
        service
            .policies
            .apply(&m, from_manifest(&m, file.get(name)))
            .map_err(|source| PolicyFileError::Model {
                model: name.clone(),
                source,
            })?;
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>, PolicyFileError> {
    std::fs::read(path).map_err(|source| PolicyFileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads `--exit-policy-file` (an error stops start-up) and starts re-reading it. No file: nothing.
pub fn start(state: &Arc<Service>, path: Option<&Path>) -> Result<(), PolicyFileError> {
    let Some(path) = path.map(Path::to_path_buf) else {
        return Ok(());
    };
    let bytes = read(&path)?;
    let file = parse(&bytes)
        .and_then(|f| apply(state, &f).map(|_| f))
        .map_err(|e| PolicyFileError::File {
            path: path.clone(),
            source: Box::new(e),
        })?;
    tracing::info!(file = %path.display(), models = file.len(), "exit policies loaded from the file; admin changes are refused");
    tokio::spawn(watch(Arc::downgrade(state), path, bytes, file));
    Ok(())
}

/// Re-reads the file every POLL while the server runs; applies it when its bytes change. A bad
/// file is logged once and the last good one is re-applied (a file that fails half-way through must
/// not leave some models on the new policy and some on the old).
async fn watch(state: Weak<Service>, path: PathBuf, mut seen: Vec<u8>, mut good: PolicyFile) {
    let mut last_error: Option<String> = None;
    loop {
        tokio::time::sleep(POLL).await;
        let Some(state) = state.upgrade() else {
            return;
        };
        let result = read(&path).and_then(|bytes| {
            if bytes == seen {
                return Ok(false);
            }
            seen = bytes;
            let file = parse(&seen)?;
            if let Err(e) = apply(&state, &file) {
                if let Err(e2) = apply(&state, &good) {
                    tracing::error!(file = %path.display(), error = %Chain(&e2), "cannot re-apply the previous exit policies");
                }
                return Err(e);
            }
            good = file;
            Ok(true)
        });
        match result {
            Ok(true) => {
                last_error = None;
                tracing::info!(file = %path.display(), "exit policies reloaded from the file");
            }
            Ok(false) => {}
            Err(e) => {
                let e = chain(&e);
                if last_error.as_deref() != Some(e.as_str()) {
                    tracing::error!(file = %path.display(), error = %e, "exit policy file rejected; the previous policies stay");
                    last_error = Some(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::policy::managed_message;

    #[test]
    fn parses_the_admin_body_per_model() {
        let f = parse(
            br#"{"a": {"alpha": 0.9, "shadow_fraction": 0.01}, "b": {"target_avg_timesteps": 2.0, "rule": "confidence"}, "c": {}}"#,
        )
        .expect("parse");
        assert_eq!(f.len(), 3);
        assert_eq!(f["a"].shadow_fraction, Some(0.01));
        assert_eq!(f["b"].shadow_fraction, None);
        assert_eq!(f["a"].alpha, Some(0.9));
        assert_eq!(f["b"].target_avg_timesteps, Some(2.0));
        assert!(f["c"].rule.is_none());
    }

    #[test]
    fn rejects_typos_and_other_shapes() {
        for bad in [
            &br#"{"a": {"alpah": 0.9}}"#[..],
            br#"[{"alpha": 0.9}]"#,
            br#"{"a": 0.9}"#,
            b"{not json",
        ] {
            let e = parse(bad)
                .expect_err(std::str::from_utf8(bad).unwrap_or("?"))
                .to_string();
            assert!(e.contains("model name"), "{e}");
        }
    }

    #[test]
    fn the_409_message_names_the_file_and_the_configmap() {
        let m = managed_message(Path::new("/etc/seenn/exit-policies.json"));
        assert!(
            m.contains("/etc/seenn/exit-policies.json") && m.contains("ConfigMap"),
            "{m}"
        );
    }
}
