//! `cargo xtask demo`: the local mesh on one machine.

use crate::util::{exec, target_dir};
use crate::{build_ebpf, release, setup};
use anyhow::Result;
use std::process::Command;

#[derive(clap::Args)]
pub struct Options {
    /// Arguments passed to the demo program (e.g. `-- --keep`).
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    setup::all()?;
    build_ebpf::run(&build_ebpf::Options { no_setup: true })?;
    // Only what the demo runs: the mesh's binaries and the demo program.
    let mut bins = release::MESH.to_vec();
    bins.push(release::DEMO);
    release::build("the demo runs", &bins)?;
    exec(
        Command::new(target_dir().join("release/conduit-demo"))
            .args(&opts.args)
            .env("CONDUIT_BIN_DIR", target_dir().join("release")),
        "the demo failed: see its output above",
    )
}
