//! `cargo xtask bench <what>`: benchmark programs that print tables.

use crate::util::{exec, root};
use crate::{build_ebpf, setup};
use anyhow::Result;
use std::process::Command;

#[derive(clap::Args)]
pub struct Options {
    /// What to measure.
    #[arg(value_enum)]
    pub what: What,
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
}

pub fn run(opts: &Options) -> Result<()> {
    setup::deb_packages()?;
    let (package, bin) = match opts.what {
        What::Proxy => ("conduit-proxy", "conduit-proxy-bench"),
        What::Controller => ("conduit-controller", "conduit-controller-bench"),
        What::Mesh => {
            build_ebpf::run(&build_ebpf::Options::default())?;
            ("conduit-tests", "conduit-mesh-bench")
        }
    };
    exec(
        Command::new("cargo")
            .args(["run", "--release", "-p", package, "--bin", bin, "--"])
            .args(&opts.args)
            .current_dir(root()),
        "the benchmark failed: see its output above",
    )
}
