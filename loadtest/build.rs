//! Compiles the echo baseline service without a system `protoc`. Its messages are the
//! `ratemesh.v1` ones, mapped onto `ratemesh_proto::v1` so no type is generated twice.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/echo.proto");
    let fds = protox::compile(["proto/echo.proto"], ["proto", "../proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .extern_path(".ratemesh.v1", "::ratemesh_proto::v1")
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    Ok(())
}
