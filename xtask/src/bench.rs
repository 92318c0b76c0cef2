//! `cargo xtask bench <what>`: benchmark programs that print tables.

use crate::util::{exec, root, target_dir};
use crate::{build_ebpf, release, setup};
use anyhow::Result;
use std::process::Command;

#[derive(clap::Args)]
pub struct Options {
    /// What to measure.
    #[arg(value_enum)]
    pub what: What,
    /// How long the soak runs (`soak` only), e.g. `30m`.
    #[arg(long)]
    pub duration: Option<String>,
    /// Arguments passed to the benchmark program.
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(clap::ValueEnum, Clone, Copy)]
pub enum What {
    /// One proxy against direct: latency at fixed rates, maximum rate, RSS.
    Proxy,
    /// Controller propagation latency with many watchers, and its RSS.
    Controller,
    /// The controller with the fake API server at cluster scale (10,000
    /// pods, 1,000 services, 1,000 watchers): time to ready, memory, change
    /// propagation, incremental updates against full rebuilds.
    ControllerScale,
    /// How one proxy's cost grows: latency and CPU against rate, RSS against
    /// idle connections, destinations and endpoints; tables and a plot.
    Scaling,
    /// Direct vs eBPF capture vs iptables, two proxies with mTLS.
    Mesh,
    /// Instructions per request through one release proxy under callgrind
    /// (HTTP/1.1 and HTTP/2 by default; `-- --cases none,listening,gone`
    /// for the tap's cost).
    Cost,
    /// The mesh under steady mixed load for a long time: proxies' RSS and
    /// descriptors, eBPF map entries, their slopes and a plot.
    Soak,
}

pub fn run(opts: &Options) -> Result<()> {
    setup::deb_packages()?;
    // Every benchmark program lives in the bench crate (bench/src/bin).
    let bin = match opts.what {
        What::Proxy => "conduit-proxy-bench",
        What::Controller => "conduit-controller-bench",
        What::Cost => {
            // The program runs the release proxy next to it.
            release::build("the cost benchmark runs", release::PROXY)?;
            "conduit-cost"
        }
        What::ControllerScale | What::Scaling => {
            // The benchmark runs the release controller or proxy binary.
            release::build("the benchmark runs", release::SCALE)?;
            match opts.what {
                What::Scaling => "conduit-scaling-bench",
                _ => "conduit-controller-scale-bench",
            }
        }
        What::Mesh | What::Soak => {
            build_ebpf::run(&build_ebpf::Options::default())?;
            // The mesh benchmark runs the agent, the controller, the proxies
            // and the mesh application as separate release binaries.
            release::build("the mesh benchmark runs", release::MESH_BENCH)?;
            match opts.what {
                What::Soak => "conduit-soak",
                _ => "conduit-mesh-bench",
            }
        }
    };
    let mut args = opts.args.clone();
    if let Some(d) = &opts.duration {
        args.extend(["--duration".to_owned(), d.clone()]);
    }
    exec(
        program(bin)
            .args(&args)
            .env("CONDUIT_BIN_DIR", target_dir().join("release"))
            .current_dir(root()),
        "the benchmark failed: see its output above",
    )
}

/// `cargo run` of benchmark program `bin` (bench crate, release), ready for
/// its arguments.
pub fn program(bin: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args([
        "run",
        "--release",
        "-p",
        "conduit-bench",
        "--bin",
        bin,
        "--",
    ]);
    cmd
}
