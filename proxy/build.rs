//! Compiles the test-only gRPC service (tests/proto) with protox, so the
//! proxy's gRPC tests run a real tonic server and client.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "tests/proto/echo.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["tests/proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
