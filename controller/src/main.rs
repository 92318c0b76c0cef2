//! `conduit-controller`: the mesh's discovery and identity server.

use clap::Parser;
use conduit_controller::cli::ServeArgs;

/// The conduit controller: Destination (discovery) and Identity
/// (certificates) over gRPC, admin HTTP with /metrics, /ready and /live.
#[derive(Debug, Parser)]
#[command(name = "conduit-controller", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(conduit_controller::cli::run(cli.serve))
}
