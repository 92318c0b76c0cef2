//! Compiles the test gRPC services with protox, so no `protoc` is needed:
//! the mesh test application's (proto/echo.proto) and the one the proxy's
//! gRPC tests run (proto/test_echo.proto, every call kind), here rather than
//! in a production crate's build script.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/echo.proto", "proto/test_echo.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
