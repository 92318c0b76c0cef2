//! The conduit-proxy binary: parses flags, sets up logging, starts the proxy
//! and drains it on SIGTERM / SIGINT (or `POST /shutdown` on the admin port).

use anyhow::Context as _;
use clap::Parser;
use conduit_proxy::{Config, Deps};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    conduit_base::logging::init(cfg.log.as_deref(), cfg.log_format)?;
    let rt = conduit_proxy::runtime::build(cfg.workers)
        .with_context(|| format!("starting the runtime ({} workers)", cfg.workers))?;
    rt.block_on(run(cfg))
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let deps = Deps::system(&cfg)?;
    // Handlers first: a SIGTERM right after startup must drain, not kill.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let running = conduit_proxy::start(cfg, deps).await?;
    let stop = running.stop_token();
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: draining"),
        _ = int.recv() => info!("SIGINT: draining"),
        _ = stop.cancelled() => {}
    }
    running.shutdown();
    running.wait().await;
    info!("conduit-proxy stopped");
    Ok(())
}
