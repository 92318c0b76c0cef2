//! The conduit-proxy binary: parses flags, sets up logging, starts the proxy
//! and drains it on SIGTERM / SIGINT (or `POST /shutdown` on the admin port).

use anyhow::Context as _;
use clap::Parser;
use conduit_proxy::{Config, Deps};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

fn init_logging(cfg: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log)
        .with_context(|| format!("bad --log filter {:?}", cfg.log))?;
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cfg.log_format.as_str() {
        "json" => builder.json().init(),
        "plain" => builder.init(),
        other => anyhow::bail!("bad --log-format {other:?}: use plain or json"),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    init_logging(&cfg)?;
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
