//! Copies between tensors with `Identity` graphs on the slots' device: ONNX Runtime moves the data
//! (host to device, device to device, device to host) as it does for any run, with the destination
//! given as a preallocated output. One graph copies one tensor (writes and reads); another copies
//! one row of every per-request tensor at once (a leaving request's row moves in one run). One
//! `Copier` per worker, so workers never share it. (The `ort` crate's own `copy_into` deadlocks on
//! its global copy session in this version.) Copies and steps run in different sessions, so on a
//! GPU in different streams: they are ordered because every run ends with a stream
//! synchronisation (the default run options); runs without it would need one shared stream.

#![forbid(unsafe_code)]

use ort::session::Session;
use prost::Message;

use super::ort_core::{Dst, IoNames, Pool, Rows, Src};
use crate::error::Error;
use crate::runtime::Device;

pub struct Copier {
    one: CopyGraph,
    row: CopyGraph,
}

/// A session of [`identity_model`] with `k` tensors, and its names.
struct CopyGraph {
    session: Session,
    names: IoNames,
}

impl CopyGraph {
    fn new(device: &Device, k: usize) -> Result<CopyGraph, Error> {
        let what = || format!("slot copy graph on {}", device.provider_name());
        let env = crate::runtime::loaded().map_err(|e| Error::internal_from(what(), e))?;
        let opts = crate::runtime::SessionOptions {
            device: device.clone(),
            intra_threads: 1,
        };
        let session = crate::runtime::build_session_from_memory(&env, &identity_model(k), &opts)
            .map_err(|e| Error::internal_from(what(), e))?;
        let names = |p: &str| (0..k).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
        let (x, y) = (names("x"), names("y"));
        let (x, y): (Vec<&str>, Vec<&str>) = (
            x.iter().map(String::as_str).collect(),
            y.iter().map(String::as_str).collect(),
        );
        Ok(CopyGraph {
            session,
            names: IoNames::new(&x, &y)?,
        })
    }
}

impl Copier {
    /// For slots with `tensors` per-request tensors (the features and each state).
    pub fn new(device: &Device, tensors: usize) -> Result<Copier, Error> {
        Ok(Copier {
            one: CopyGraph::new(device, 1)?,
            row: CopyGraph::new(device, tensors)?,
        })
    }

    /// Copies `src` into `dst`, two rank-2 tensors of one shape.
    pub fn copy<'a>(
        &mut self,
        pool: &'a mut Pool,
        src: Src<'a>,
        dst: Dst<'a>,
    ) -> Result<(), Error> {
        let g = &mut self.one;
        pool.bind([src], [dst])?
            .run(&mut g.session, &g.names, "slot copy")?;
        Ok(())
    }

    /// Copies each `src[i]` into `dst[i]` (rank-2 rows): one row of every per-request tensor, in
    /// one run.
    pub fn copy_rows(&mut self, pool: &mut Pool, src: &[Rows], dst: &[Rows]) -> Result<(), Error> {
        let g = &mut self.row;
        pool.bind(src.iter().map(|&r| r.into()), dst.iter().map(|&r| r.into()))?
            .run(&mut g.session, &g.names, "slot copy")?;
        Ok(())
    }
}

/// The few messages and fields of `onnx.proto` (proto2, so every singular field is optional) that
/// a graph of `Identity` nodes needs, with ONNX's field numbers. A `oneof` of which one member is
/// used is written as that member (the same bytes).
mod onnx {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        #[prost(int64, optional, tag = "1")]
        pub ir_version: Option<i64>,
        #[prost(string, optional, tag = "2")]
        pub producer_name: Option<String>,
        #[prost(message, optional, tag = "7")]
        pub graph: Option<GraphProto>,
        #[prost(message, repeated, tag = "8")]
        pub opset_import: Vec<OperatorSetIdProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OperatorSetIdProto {
        #[prost(string, optional, tag = "1")]
        pub domain: Option<String>,
        #[prost(int64, optional, tag = "2")]
        pub version: Option<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GraphProto {
        #[prost(message, repeated, tag = "1")]
        pub node: Vec<NodeProto>,
        #[prost(string, optional, tag = "2")]
        pub name: Option<String>,
        #[prost(message, repeated, tag = "11")]
        pub input: Vec<ValueInfoProto>,
        #[prost(message, repeated, tag = "12")]
        pub output: Vec<ValueInfoProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeProto {
        #[prost(string, repeated, tag = "1")]
        pub input: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub output: Vec<String>,
        #[prost(string, optional, tag = "3")]
        pub name: Option<String>,
        #[prost(string, optional, tag = "4")]
        pub op_type: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueInfoProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(message, optional, tag = "2")]
        pub r#type: Option<TypeProto>,
    }

    /// `oneof value`: `tensor_type` only.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TypeProto {
        #[prost(message, optional, tag = "1")]
        pub tensor_type: Option<TensorTypeProto>,
    }

    /// `TypeProto.Tensor`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorTypeProto {
        /// `TensorProto.DataType`: 1 is FLOAT.
        #[prost(int32, optional, tag = "1")]
        pub elem_type: Option<i32>,
        #[prost(message, optional, tag = "2")]
        pub shape: Option<TensorShapeProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorShapeProto {
        #[prost(message, repeated, tag = "1")]
        pub dim: Vec<Dimension>,
    }

    /// `TensorShapeProto.Dimension`, `oneof value`: `dim_param` only.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        #[prost(string, optional, tag = "2")]
        pub dim_param: Option<String>,
    }
}

/// The bytes of an ONNX model (IR 8, opset 13) with `k` `Identity` nodes, float input `x{i}` to
/// output `y{i}`, each of shape `[r{i}, l{i}]` with symbolic dimensions.
fn identity_model(k: usize) -> Vec<u8> {
    use onnx::*;
    let value_info = |name: String, i: usize| ValueInfoProto {
        name: Some(name),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: Some(1),
                shape: Some(TensorShapeProto {
                    dim: [format!("r{i}"), format!("l{i}")]
                        .into_iter()
                        .map(|d| Dimension { dim_param: Some(d) })
                        .collect(),
                }),
            }),
        }),
    };
    ModelProto {
        ir_version: Some(8),
        producer_name: Some("seenn-serve".into()),
        graph: Some(GraphProto {
            node: (0..k)
                .map(|i| NodeProto {
                    input: vec![format!("x{i}")],
                    output: vec![format!("y{i}")],
                    name: Some(format!("copy{i}")),
                    op_type: Some("Identity".into()),
                })
                .collect(),
            name: Some("slot_copy".into()),
            input: (0..k).map(|i| value_info(format!("x{i}"), i)).collect(),
            output: (0..k).map(|i| value_info(format!("y{i}"), i)).collect(),
        }),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_model_decodes_to_k_nodes() {
        let m = onnx::ModelProto::decode(identity_model(3).as_slice()).expect("decode");
        assert_eq!(m.ir_version, Some(8));
        assert_eq!(m.opset_import[0].version, Some(13));
        let g = m.graph.expect("graph");
        assert_eq!(g.node.len(), 3);
        assert_eq!(g.node[2].input, ["x2"]);
        assert_eq!(g.node[2].output, ["y2"]);
        assert_eq!(g.node[2].op_type.as_deref(), Some("Identity"));
        let dims = |v: &onnx::ValueInfoProto| {
            let t = v
                .r#type
                .clone()
                .and_then(|t| t.tensor_type)
                .expect("tensor");
            assert_eq!(t.elem_type, Some(1));
            t.shape
                .expect("shape")
                .dim
                .into_iter()
                .map(|d| d.dim_param.expect("symbolic"))
                .collect::<Vec<_>>()
        };
        assert_eq!(dims(&g.input[1]), ["r1", "l1"]);
        assert_eq!(dims(&g.output[2]), ["r2", "l2"]);
    }

    /// ONNX Runtime loads the model and copies through it, host to host.
    #[test]
    fn the_identity_model_copies() {
        crate::runtime::init(None).expect("ONNX Runtime");
        let mut cp = Copier::new(&Device::Cpu, 2).expect("copier");
        let mut pool = Pool::new();
        let a = pool.add_host(3, &[2]);
        pool.host_mut(a)
            .copy_from_slice(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let mut out = [0f32; 4];
        cp.copy(
            &mut pool,
            a.rows(1, 2).flat().into(),
            Dst::host(&mut out, 2),
        )
        .expect("copy");
        assert_eq!(out, [3.0, 4.0, 5.0, 6.0]);
        let b = pool.add_host(3, &[1]);
        pool.host_mut(b).copy_from_slice(&[7.0, 8.0, 9.0]);
        cp.copy_rows(
            &mut pool,
            &[a.rows(2, 1).flat(), b.rows(2, 1).flat()],
            &[a.rows(0, 1).flat(), b.rows(0, 1).flat()],
        )
        .expect("copy rows");
        assert_eq!(pool.host(a), [5.0, 6.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(pool.host(b), [9.0, 8.0, 9.0]);
    }
}
