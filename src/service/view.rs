//! The typed description of a served model: one struct behind `seenn inspect`, `GET /v1/models`,
//! and the gRPC and Open Inference Protocol metadata.

use serde::Serialize;

use super::policy::{ExitPolicyView, PolicyAdmin};
use super::Service;
use crate::model::manifest::{Aggregation, InputSpec, Summary};
use crate::registry::LoadedModel;

/// How per-step logits become the exit score.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExitScoreView {
    pub aggregation: Aggregation,
    pub temperature: f64,
}

/// What calibration.json measured on the validation split (the sweep itself stays in the file).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CalibrationSummary {
    pub split: String,
    pub samples: usize,
    pub accuracy_per_t: Vec<f64>,
    pub aet: f64,
    pub chosen_alpha: f64,
    #[schema(value_type = Option<Object>)]
    pub policy: Option<Summary>,
    /// The learned rule's threshold chosen on validation (packages with exit.onnx).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chosen_threshold: Option<f64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelView {
    pub name: String,
    pub version: String,
    pub kind: String,
    pub architecture: String,
    pub labels: Vec<String>,
    pub timesteps: usize,
    #[schema(value_type = crate::model::manifest::InputJson)]
    pub input: InputSpec,
    pub exit_score: ExitScoreView,
    pub exit_policy: ExitPolicyView,
    pub has_policy: bool,
    /// The package has a learned exit rule (exit.onnx): `rule=learned` is served.
    pub has_learned: bool,
    pub calibration: Option<CalibrationSummary>,
    pub execution_provider: String,
    /// The engine's batch width, how it was chosen, and the cost curve measured at load.
    pub batching: crate::engine::WidthChoice,
    pub ready: bool,
    pub queue_depth: usize,
    /// Whether requests without a model name go here.
    pub default: bool,
}

impl Service {
    pub fn model_view(&self, m: &LoadedModel) -> ModelView {
        let mf = &m.manifest;
        ModelView {
            name: mf.name.clone(),
            version: mf.version.clone(),
            kind: mf.kind.clone(),
            architecture: mf.architecture.clone(),
            labels: mf.labels.clone(),
            timesteps: mf.timesteps,
            input: mf.input.clone(),
            exit_score: ExitScoreView {
                aggregation: mf.exit.aggregation,
                temperature: mf.exit.temperature,
            },
            exit_policy: PolicyAdmin::view(m, None),
            has_policy: m.has_policy(),
            has_learned: m.has_learned(),
            calibration: m.calibration.as_ref().map(|c| CalibrationSummary {
                split: c.split.clone(),
                samples: c.samples,
                accuracy_per_t: c.accuracy_per_t.clone(),
                aet: c.aet,
                chosen_alpha: c.chosen_alpha,
                policy: c.policy.clone(),
                chosen_threshold: c.learned.as_ref().map(|l| l.chosen_threshold),
            }),
            execution_provider: m.provider.clone(),
            batching: m.engine.width_choice().clone(),
            ready: m.engine.is_ready(),
            queue_depth: m.engine.queue_depth(),
            default: mf.name == self.registry.default_model(),
        }
    }
}
