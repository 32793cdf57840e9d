//! Generates the gRPC code from `proto/` without protoc (protox parses the files in Rust).
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/seenn/v1/seenn.proto",
        "proto/kserve/grpc_predict_v2.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("seenn_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // A stream event is a step trace or the final answer; the answer is sent once per call,
        // so its size against the trace's is not worth a box.
        .type_attribute(
            ".seenn.v1.ClassifyEvent.event",
            "#[allow(clippy::large_enum_variant)]",
        )
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
