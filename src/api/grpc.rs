//! gRPC API (tonic): `seenn.v1.Classifier` and `seenn.v1.Admin`, plus health and reflection.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::engine::StepTrace;
use crate::error::Error;
use crate::service::policy::AdaptiveObjective;
use crate::service::{
    ClassifyOptions, ClassifyResult, ExitPolicyUpdate, ExitPolicyView, Input, Service,
};

pub mod pb {
    tonic::include_proto!("seenn.v1");
}

pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/seenn_descriptor.bin"));

use pb::admin_server::{Admin, AdminServer};
use pb::classifier_server::{Classifier, ClassifierServer};

#[derive(Clone)]
pub struct GrpcService {
    pub state: Arc<Service>,
}

fn request_id<T>(req: &Request<T>) -> String {
    req.metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn to_input_and_options(r: pb::ClassifyRequest) -> Result<(Input, ClassifyOptions), Error> {
    let input = match r.input {
        Some(pb::classify_request::Input::Image(bytes)) => Input::Image { bytes, hint: None },
        Some(pb::classify_request::Input::Tensor(t)) => {
            let data = if t.raw.is_empty() {
                if !t.dtype.is_empty()
                    && crate::npy::Dtype::parse(&t.dtype).map_err(Error::invalid)?
                        != crate::npy::Dtype::Float32
                {
                    return Err(Error::invalid(format!(
                        "tensor dtype {:?} describes `raw`, which is empty; send the values as `raw` bytes, or as floats in `data` without a dtype",
                        t.dtype
                    )));
                }
                t.data
            } else {
                if !t.data.is_empty() {
                    return Err(Error::invalid(
                        "the tensor has both `data` and `raw`; give one",
                    ));
                }
                let dtype = match t.dtype.as_str() {
                    "" => crate::npy::Dtype::Float32,
                    d => crate::npy::Dtype::parse(d).map_err(Error::invalid)?,
                };
                dtype
                    .decode(&t.raw)
                    .map_err(|e| Error::invalid(format!("tensor `raw` ({dtype}): {e}")))?
            };
            if t.shape.is_empty() {
                Input::Tensor(data)
            } else {
                Input::Shaped {
                    shape: t.shape.iter().map(|d| *d as usize).collect(),
                    data,
                }
            }
        }
        None => {
            return Err(Error::invalid(
                "set `image` (encoded bytes) or `tensor` (values with their shape)",
            ))
        }
    };
    let opts = ClassifyOptions {
        model: Some(r.model).filter(|m| !m.is_empty()),
        rule: Some(r.rule).filter(|m| !m.is_empty()),
        alpha: r.alpha.map(f64::from),
        threshold: r.threshold,
        max_timesteps: r.max_timesteps.map(u64::from),
        top_k: r.top_k.map(u64::from),
        explain: Some(r.explain),
        timeout_ms: None,
    };
    Ok((input, opts))
}

fn trace_pb(t: &StepTrace) -> pb::StepTrace {
    pb::StepTrace {
        timestep: t.t as u32,
        score: t.score as f32,
        class_id: t.class_id as u32,
        probabilities: t.probabilities.clone(),
    }
}

fn result_pb(r: ClassifyResult) -> pb::ClassifyResponse {
    pb::ClassifyResponse {
        model: r.model,
        version: r.version,
        class_id: r.class_id as u32,
        label: r.label,
        confidence: r.confidence as f32,
        top_k: r
            .top_k
            .into_iter()
            .map(|c| pb::ClassScore {
                class_id: c.class_id as u32,
                label: c.label,
                probability: c.probability as f32,
            })
            .collect(),
        timesteps_used: r.timesteps_used as u32,
        max_timesteps: r.max_timesteps as u32,
        exit_rule: r.exit_rule.as_str().into(),
        alpha: r.alpha.map(|a| a as f32),
        threshold: r.threshold,
        timings: Some(pb::Timings {
            queue_seconds: r.timings.queue_ms / 1e3,
            inference_seconds: r.timings.inference_ms / 1e3,
            total_seconds: r.timings.total_ms / 1e3,
        }),
        trajectory: r
            .trajectory
            .unwrap_or_default()
            .iter()
            .map(trace_pb)
            .collect(),
        request_id: r.request_id,
        deadline_exit: r.deadline_exit,
    }
}

fn policy_pb(v: ExitPolicyView) -> pb::ExitPolicyResponse {
    pb::ExitPolicyResponse {
        model: v.model,
        rule: v.rule.as_str().into(),
        alpha: v.alpha as f32,
        timesteps: v.timesteps as u32,
        expected_accuracy: v.expected_accuracy.map(|x| x as f32),
        expected_avg_timesteps: v.expected_avg_timesteps.map(|x| x as f32),
        adaptive: v.adaptive.map(|a| pb::AdaptiveObjective {
            p99_ms: a.p99_ms as f32,
            max_accuracy_drop: a.max_accuracy_drop as f32,
        }),
        configured_alpha: v.adaptive.map(|a| a.configured_alpha as f32),
        floor_alpha: v.adaptive.map(|a| a.floor_alpha as f32),
        threshold: v.threshold,
        bias_scale: v.bias_scale,
        shadow_fraction: v.shadow_fraction,
        expected_shadow_agreement: v.expected_shadow_agreement,
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::ClassifyEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Classifier for GrpcService {
    async fn classify(
        &self,
        req: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        let rid = request_id(&req);
        let (metadata, _, msg) = req.into_parts();
        let (input, mut opts) = to_input_and_options(msg)?;
        opts.take_grpc_deadline(Some(&metadata));
        let r = self.state.classify(input, opts, rid, None).await?;
        Ok(Response::new(result_pb(r)))
    }

    type ClassifyStreamStream = EventStream;

    async fn classify_stream(
        &self,
        req: Request<pb::ClassifyRequest>,
    ) -> Result<Response<Self::ClassifyStreamStream>, Status> {
        let rid = request_id(&req);
        let (metadata, _, msg) = req.into_parts();
        let (input, mut opts) = to_input_and_options(msg)?;
        opts.take_grpc_deadline(Some(&metadata));
        let (step_tx, mut step_rx) = tokio::sync::mpsc::unbounded_channel();
        let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Result<pb::ClassifyEvent, Status>>(64);
        let state = self.state.clone();
        tokio::spawn(async move {
            let forward_tx = out_tx.clone();
            let forward = tokio::spawn(async move {
                while let Some(t) = step_rx.recv().await {
                    let ev = pb::ClassifyEvent {
                        event: Some(pb::classify_event::Event::Step(trace_pb(&t))),
                    };
                    if forward_tx.send(Ok(ev)).await.is_err() {
                        break;
                    }
                }
            });
            let result = state.classify(input, opts, rid, Some(step_tx)).await;
            let _ = forward.await;
            let msg = match result {
                Ok(r) => Ok(pb::ClassifyEvent {
                    event: Some(pb::classify_event::Event::Result(result_pb(r))),
                }),
                Err(e) => Err(Status::from(e)),
            };
            let _ = out_tx.send(msg).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out_rx),
        )))
    }

    async fn list_models(
        &self,
        _req: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let models = self
            .state
            .registry
            .models()
            .iter()
            .map(|m| {
                let p = m.exit_policy();
                pb::ModelInfo {
                    name: m.manifest.name.clone(),
                    version: m.manifest.version.clone(),
                    labels: m.manifest.labels.clone(),
                    timesteps: m.manifest.timesteps as u32,
                    input_shape: m.manifest.input.dims().iter().map(|d| *d as u32).collect(),
                    input_kind: m.manifest.input.kind.as_str().into(),
                    input_dtype: if m.manifest.input.is_image() {
                        String::new()
                    } else {
                        m.manifest.input.dtype.as_str().into()
                    },
                    input_time: if m.manifest.input.is_image() {
                        String::new()
                    } else {
                        m.manifest.input.time.as_str().into()
                    },
                    default_rule: p.rule.as_str().into(),
                    alpha: p.alpha as f32,
                    has_policy: m.has_policy(),
                    has_learned: m.has_learned(),
                    threshold: m.learned_threshold_in(&p),
                    execution_provider: m.provider.clone(),
                    ready: m.engine.is_ready(),
                }
            })
            .collect();
        Ok(Response::new(pb::ListModelsResponse { models }))
    }
}

fn authorize<T>(state: &Service, req: &Request<T>) -> Result<(), Status> {
    let header = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    state.authorize(header).map_err(Status::from)
}

#[tonic::async_trait]
impl Admin for GrpcService {
    async fn get_exit_policy(
        &self,
        req: Request<pb::GetExitPolicyRequest>,
    ) -> Result<Response<pb::ExitPolicyResponse>, Status> {
        authorize(&self.state, &req)?;
        let m = self.state.model(Some(&req.get_ref().model))?;
        Ok(Response::new(policy_pb(self.state.policy_view(&m))))
    }

    async fn set_exit_policy(
        &self,
        req: Request<pb::SetExitPolicyRequest>,
    ) -> Result<Response<pb::ExitPolicyResponse>, Status> {
        authorize(&self.state, &req)?;
        let r = req.into_inner();
        let update = ExitPolicyUpdate {
            rule: Some(r.rule).filter(|s| !s.is_empty()),
            alpha: r.alpha.map(f64::from),
            threshold: r.threshold,
            bias_scale: r.bias_scale,
            target_avg_timesteps: r.target_avg_timesteps.map(f64::from),
            max_accuracy_drop: r.max_accuracy_drop.map(f64::from),
            timesteps: r.timesteps.map(u64::from),
            adaptive: match (r.disable_adaptive, r.adaptive) {
                (true, Some(_)) => {
                    return Err(Status::invalid_argument(
                        "give either adaptive or disable_adaptive, not both",
                    ))
                }
                (true, None) => Some(None),
                (false, Some(a)) => Some(Some(AdaptiveObjective {
                    p99_ms: f64::from(a.p99_ms),
                    max_accuracy_drop: f64::from(a.max_accuracy_drop),
                })),
                (false, None) => None,
            },
            shadow_fraction: r.shadow_fraction,
        };
        let name = if r.model.is_empty() {
            self.state.registry.default_model().to_string()
        } else {
            r.model
        };
        Ok(Response::new(policy_pb(
            self.state.set_exit_policy(&name, update)?,
        )))
    }
}

pub fn classifier_server(svc: GrpcService, max_message: usize) -> ClassifierServer<GrpcService> {
    ClassifierServer::new(svc).max_decoding_message_size(max_message)
}

pub fn admin_server(svc: GrpcService) -> AdminServer<GrpcService> {
    AdminServer::new(svc)
}
