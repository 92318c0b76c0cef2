//! `cargo xtask demo`: the local mesh on one machine.

use crate::util::{exec, root, target_dir};
use crate::{build_ebpf, setup};
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
    let t = crate::util::step("building the release binaries the demo runs");
    exec(
        Command::new("cargo")
            .args(["build", "--release", "--workspace", "--bins"])
            .current_dir(root()),
        "the workspace does not build",
    )?;
    crate::util::done("release binaries built", t);
    exec(
        Command::new(target_dir().join("release/conduit-demo"))
            .args(&opts.args)
            .env("CONDUIT_BIN_DIR", target_dir().join("release")),
        "the demo failed: see its output above",
    )
}
