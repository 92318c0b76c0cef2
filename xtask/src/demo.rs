//! `cargo xtask demo`: the local mesh on one machine.

use crate::util::{root, exec};
use crate::{build_ebpf, setup};
use anyhow::Result;
use std::process::Command;

#[derive(clap::Args)]
pub struct Options {}

pub fn run(_opts: &Options) -> Result<()> {
    setup::all()?;
    build_ebpf::run(&build_ebpf::Options { no_setup: true })?;
    exec(
        Command::new("cargo")
            .args(["run", "--release", "-p", "conduit-tests", "--bin", "conduit-demo"])
            .current_dir(root()),
        "the demo failed: see its output above",
    )
}
