//! The fuzz harness of the Open Inference Protocol request decoders, shared by the fuzz target
//! `kserve_request` and `tests/fuzz_regressions.rs` (both include it, and `harness.rs` as
//! `harness`, with `#[path]`).
//!
//! Input framing: byte 0 bit 0 picks the transport: clear, REST (`seenn_serve::kserve::rest::decode`);
//! set, gRPC (the bytes are a protobuf `inference.ModelInferRequest`, decoded by prost, then
//! `seenn_serve::kserve::grpc::decode`). For REST, bit 1 set means bytes 1-2 (little-endian u16)
//! are the `Inference-Header-Content-Length` and the body starts at byte 3; clear, the body starts
//! at byte 1 and has no binary part.
//!
//! Properties: a decode never panics; it fails only with a client error (4xx) that has a message;
//! what it accepts has well-formed inputs (datatype FP32, UINT8, BOOL or BYTES, data of that type), and the
//! request parameters either become exit options or are refused with a client error.
#![allow(dead_code)]

use prost::Message as _;
use seenn_serve::error::Error;
use seenn_serve::kserve::{self, InferRequest, TensorData};

// Both includers (the fuzz target and tests/fuzz_regressions.rs) also include `harness.rs` as
// `harness` at their root: client errors are judged the same way for every target.
use crate::harness::assert_client_error;

pub enum Transport {
    Rest,
    Grpc,
}

/// Builds a fuzz input from its parts (for seeds and tests).
pub fn kserve_input(transport: Transport, header_len: Option<u16>, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 3);
    match (transport, header_len) {
        (Transport::Grpc, _) => v.push(1),
        (Transport::Rest, None) => v.push(0),
        (Transport::Rest, Some(n)) => {
            v.push(2);
            v.extend_from_slice(&n.to_le_bytes());
        }
    }
    v.extend_from_slice(body);
    v
}

fn check_accepted(r: &InferRequest) {
    for inp in &r.inputs {
        match (&inp.data, inp.datatype.as_str()) {
            (TensorData::Fp32(_), "FP32")
            | (TensorData::Uint8(_), "UINT8")
            | (TensorData::Bool(_), "BOOL")
            | (TensorData::Bytes(_), "BYTES") => {}
            (d, t) => panic!("input {:?} of datatype {t} decoded as {d:?}", inp.name),
        }
    }
    match kserve::options("m", &r.parameters) {
        Ok(o) => {
            assert_eq!(o.model.as_deref(), Some("m"));
            // Every exit parameter given is carried into the options.
            for (k, _) in &r.parameters {
                let set = match k.as_str() {
                    "alpha" => o.alpha.is_some(),
                    "rule" => o.rule.is_some(),
                    "max_timesteps" => o.max_timesteps.is_some(),
                    "timeout_ms" => o.timeout_ms.is_some(),
                    _ => true,
                };
                assert!(set, "parameter {k:?} accepted but not applied");
            }
        }
        Err(e) => assert_client_error(&e),
    }
}

/// Decodes one fuzz input; `None` when it is too short to frame.
pub fn kserve_request(data: &[u8]) -> Option<Result<InferRequest, Error>> {
    let (&b0, rest) = data.split_first()?;
    let result = if b0 & 1 == 1 {
        match kserve::grpc::pb::ModelInferRequest::decode(rest) {
            Ok(msg) => kserve::grpc::decode(msg),
            // Not protobuf: tonic refuses it before any of our code runs.
            Err(_) => return None,
        }
    } else if b0 & 2 == 2 {
        let (len, body) = rest.split_first_chunk::<2>()?;
        kserve::rest::decode(body, Some(usize::from(u16::from_le_bytes(*len)))).map(|(r, _)| r)
    } else {
        kserve::rest::decode(rest, None).map(|(r, _)| r)
    };
    match &result {
        Ok(r) => check_accepted(r),
        Err(e) => assert_client_error(e),
    }
    Some(result)
}
