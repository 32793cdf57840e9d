//! The Open Inference Protocol over gRPC: `inference.GRPCInferenceService`.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{InferInput, InferRequest, Param, TensorData, SERVER_NAME};
use crate::error::{Error, Result};
use crate::service::Service;

pub mod pb {
    tonic::include_proto!("inference");
}

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use pb::infer_parameter::ParameterChoice;

#[derive(Clone)]
pub struct InferenceService {
    pub state: Arc<Service>,
}

pub fn server(
    svc: InferenceService,
    max_message: usize,
) -> GrpcInferenceServiceServer<InferenceService> {
    GrpcInferenceServiceServer::new(svc)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message)
}

fn param(key: &str, p: &pb::InferParameter) -> Result<Param> {
    match &p.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => Ok(Param::Bool(*b)),
        Some(ParameterChoice::Int64Param(i)) => Ok(Param::Int(*i)),
        Some(ParameterChoice::Uint64Param(u)) => i64::try_from(*u)
            .map(Param::Int)
            .map_err(|_| Error::invalid(format!("parameter {key:?}: {u} is out of range"))),
        Some(ParameterChoice::DoubleParam(d)) => Ok(Param::Float(*d)),
        Some(ParameterChoice::StringParam(s)) => Ok(Param::Str(s.clone())),
        None => Err(Error::invalid(format!("parameter {key:?} has no value"))),
    }
}

fn params(map: &HashMap<String, pb::InferParameter>) -> Result<Vec<(String, Param)>> {
    let mut v = map
        .iter()
        .map(|(k, p)| Ok((k.clone(), param(k, p)?)))
        .collect::<Result<Vec<_>>>()?;
    // Stable order, so errors name the same parameter every time.
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

/// Converts a gRPC request into the transport-neutral form.
pub fn decode(r: pb::ModelInferRequest) -> Result<InferRequest> {
    let parameters = params(&r.parameters)?;
    let raw = r.raw_input_contents;
    if !raw.is_empty() && raw.len() != r.inputs.len() {
        return Err(Error::invalid(format!(
            "{} raw_input_contents for {} inputs; give one per input or none",
            raw.len(),
            r.inputs.len()
        )));
    }
    let mut inputs = Vec::with_capacity(r.inputs.len());
    for (i, inp) in r.inputs.into_iter().enumerate() {
        let contents = inp.contents.unwrap_or_default();
        let data = if let Some(bytes) = raw.get(i) {
            let given = !contents.fp32_contents.is_empty()
                || !contents.bytes_contents.is_empty()
                || !contents.uint_contents.is_empty()
                || !contents.bool_contents.is_empty();
            if given {
                return Err(Error::invalid(format!(
                    "input {:?} has both contents and raw_input_contents; give one",
                    inp.name
                )));
            }
            TensorData::from_raw(&inp.name, &inp.datatype, bytes)?
        } else {
            match inp.datatype.as_str() {
                "FP32" => TensorData::Fp32(contents.fp32_contents),
                "BYTES" => TensorData::Bytes(contents.bytes_contents),
                "BOOL" => TensorData::Bool(contents.bool_contents),
                "UINT8" => TensorData::Uint8(
                    contents
                        .uint_contents
                        .iter()
                        .enumerate()
                        .map(|(i, v)| {
                            u8::try_from(*v).map_err(|_| {
                                Error::invalid(format!(
                                    "input {:?} UINT8 element {i} is {v}; accepted: 0..=255",
                                    inp.name
                                ))
                            })
                        })
                        .collect::<Result<_>>()?,
                ),
                other => {
                    return Err(Error::invalid(format!(
                        "input {:?} has datatype {other:?}; {}",
                        inp.name,
                        super::DATATYPES
                    )))
                }
            }
        };
        if let TensorData::Fp32(v) = &data {
            if let Some(bad) = v.iter().position(|f| !f.is_finite()) {
                return Err(Error::invalid(format!(
                    "input {:?} element {bad} is not a finite FP32 number",
                    inp.name
                )));
            }
        }
        inputs.push(InferInput {
            name: inp.name,
            datatype: inp.datatype,
            shape: inp.shape,
            data,
        });
    }
    let mut outputs = Vec::with_capacity(r.outputs.len());
    for o in r.outputs {
        for k in o.parameters.keys() {
            if k != "binary_data" {
                return Err(Error::invalid(format!(
                    "output {:?}: unknown parameter {k:?}; none are accepted",
                    o.name
                )));
            }
        }
        outputs.push(o.name);
    }
    Ok(InferRequest {
        id: Some(r.id).filter(|s| !s.is_empty()),
        parameters,
        inputs,
        outputs: Some(outputs).filter(|o| !o.is_empty()),
    })
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> std::result::Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> std::result::Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.state.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> std::result::Result<Response<pb::ModelReadyResponse>, Status> {
        let r = req.into_inner();
        let ready = super::model_ready(&self.state, &r.name, Some(&r.version))?;
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> std::result::Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec!["model_repository".into()],
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> std::result::Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = req.into_inner();
        let m = super::model(&self.state, &r.name, Some(&r.version))?;
        let md = super::metadata(&m);
        let tensor = |t: super::TensorMetadata| pb::model_metadata_response::TensorMetadata {
            name: t.name,
            datatype: t.datatype,
            shape: t.shape,
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: md.name,
            versions: md.versions,
            platform: md.platform,
            inputs: md.inputs.into_iter().map(tensor).collect(),
            outputs: md.outputs.into_iter().map(tensor).collect(),
        }))
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> std::result::Result<Response<pb::ModelInferResponse>, Status> {
        let (metadata, _, r) = req.into_parts();
        let model = r.model_name.clone();
        let version = r.model_version.clone();
        let request = decode(r).inspect_err(|e| {
            self.state
                .metrics
                .requests_total
                .with_label_values(&["_unparsed", "none", &e.http_status().as_u16().to_string()])
                .inc();
        })?;
        let resp = super::infer(
            &self.state,
            &model,
            Some(&version),
            request,
            Some(&metadata),
        )
        .await?;
        let mut outputs = Vec::with_capacity(resp.outputs.len());
        let mut raw = Vec::with_capacity(resp.outputs.len());
        for o in resp.outputs {
            outputs.push(pb::model_infer_response::InferOutputTensor {
                name: o.name,
                datatype: o.data.datatype().into(),
                shape: o.shape,
                parameters: HashMap::new(),
                contents: None,
            });
            // Outputs always go back as raw_output_contents, as Triton does.
            raw.push(o.data.raw());
        }
        let mut parameters = HashMap::new();
        if resp.deadline_exits > 0 {
            parameters.insert(
                "deadline_exits".to_string(),
                pb::InferParameter {
                    parameter_choice: Some(pb::infer_parameter::ParameterChoice::Int64Param(
                        resp.deadline_exits as i64,
                    )),
                },
            );
        }
        Ok(Response::new(pb::ModelInferResponse {
            model_name: resp.model_name,
            model_version: resp.model_version,
            id: resp.id.unwrap_or_default(),
            parameters,
            outputs,
            raw_output_contents: raw,
        }))
    }

    async fn repository_index(
        &self,
        req: Request<pb::RepositoryIndexRequest>,
    ) -> std::result::Result<Response<pb::RepositoryIndexResponse>, Status> {
        let r = req.into_inner();
        let models = self
            .state
            .repository_index(r.ready)
            .into_iter()
            .map(|e| pb::repository_index_response::ModelIndex {
                name: e.name,
                version: e.version,
                state: e.state.as_str().into(),
                reason: e.reason,
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        req: Request<pb::RepositoryModelLoadRequest>,
    ) -> std::result::Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        admin(&self.state, &req)?;
        self.state.check_model_control("load")?;
        let r = req.into_inner();
        let mut version = None;
        for (k, v) in &r.parameters {
            use pb::model_repository_parameter::ParameterChoice;
            match (k.as_str(), &v.parameter_choice) {
                ("version", Some(ParameterChoice::StringParam(s))) => version = Some(s.clone()),
                ("version", Some(ParameterChoice::Int64Param(n))) => version = Some(n.to_string()),
                ("version", _) => {
                    return Err(Status::invalid_argument(
                        "parameter version must be a string (or int64) version, or \"latest\"",
                    ))
                }
                (other, _) => {
                    return Err(Status::invalid_argument(format!(
                        "unknown load parameter {other:?}; accepted: version"
                    )))
                }
            }
        }
        self.state
            .load_model(&r.model_name, version.as_deref())
            .await?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        req: Request<pb::RepositoryModelUnloadRequest>,
    ) -> std::result::Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        admin(&self.state, &req)?;
        self.state.check_model_control("unload")?;
        let r = req.into_inner();
        self.state
            .unload_model(&r.model_name, "unloaded by a call")
            .await?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}

/// The admin token from the `authorization` metadata (load and unload).
fn admin<T>(state: &Service, req: &Request<T>) -> std::result::Result<(), Status> {
    let header = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    state.authorize(header).map_err(Status::from)
}
