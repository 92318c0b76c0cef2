//! Compiles the protobuf contract with protox (a pure-Rust protobuf
//! compiler), so no `protoc` is needed on the build machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/conduit/destination/v1/destination.proto",
        "proto/conduit/identity/v1/identity.proto",
        "proto/conduit/policy/v1/policy.proto",
        "proto/conduit/authz/v1/plugin.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::SmallBufferCodec")
        .compile_fds(fds)?;
    Ok(())
}
