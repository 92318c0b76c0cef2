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
    /// Direct vs eBPF capture vs iptables, two proxies with mTLS.
    Mesh,
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
        What::Mesh | What::Soak => {
            build_ebpf::run(&build_ebpf::Options::default())?;
            // The mesh benchmark runs the agent, the controller, the proxies
            // and the mesh application as separate release binaries.
            release::build("the mesh benchmark runs", release::MESH)?;
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
        Command::new("cargo")
            .args(["run", "--release", "-p", "conduit-bench", "--bin", bin, "--"])
            .args(&args)
            .env("CONDUIT_BIN_DIR", target_dir().join("release"))
            .current_dir(root()),
        "the benchmark failed: see its output above",
    )
}
