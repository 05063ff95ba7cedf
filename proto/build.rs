//! Generates the ratemesh.v1 code without a system `protoc`: protox parses the .proto
//! files into a FileDescriptorSet (with source comments), tonic-prost-build turns it into
//! Rust, and the encoded set is written to OUT_DIR for gRPC reflection.

use std::path::PathBuf;

use prost::Message as _;

const PROTO_DIR: &str = "ratemesh/v1";

const PROTOS: &[&str] = &[
    "ratemesh/v1/common.proto",
    "ratemesh/v1/events.proto",
    "ratemesh/v1/ingest.proto",
    "ratemesh/v1/rates.proto",
    "ratemesh/v1/overrides.proto",
    "ratemesh/v1/incentives.proto",
    "ratemesh/v1/partners.proto",
    "ratemesh/v1/policy.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_DIR}");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    // Paths are relative to this crate's root, which is where cargo runs build scripts.
    let fds = protox::compile(PROTOS, ["."])?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("ratemesh_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // An RPC a server has not implemented answers UNIMPLEMENTED instead of failing to
        // compile, so services can grow method by method.
        .generate_default_stubs(true)
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;

    Ok(())
}
