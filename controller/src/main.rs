//! `conduit-controller`: the mesh's discovery and identity server, and the
//! `inject` tool that adds the proxy to workload YAML.

use clap::Parser;
use conduit_controller::cli::ServeArgs;

/// The conduit controller: Destination (discovery) and Identity
/// (certificates) over gRPC, admin HTTP with /metrics, /ready and /live.
/// With a subcommand, a tool instead (see `inject --help`).
#[derive(Debug, Parser)]
#[command(
    name = "conduit-controller",
    version,
    about,
    long_about = None,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Option<ServeArgs>,
    #[command(flatten)]
    log: conduit_base::logging::LogArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Add the conduit proxy to workloads' pod templates (YAML in, YAML out).
    Inject(conduit_controller::inject::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.log.init()?;
    match (cli.command, cli.serve) {
        (Some(Command::Inject(args)), _) => conduit_controller::inject::run(args),
        (None, Some(serve)) => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(conduit_controller::cli::run(serve))
        }
        (None, None) => {
            use clap::CommandFactory;
            Cli::command().print_help()?;
            std::process::exit(2);
        }
    }
}
