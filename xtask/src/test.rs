//! `cargo xtask test`: every test, from a fresh machine.
//!
//! Unit and loopback tests run in parallel; the end-to-end tests in `tests/`
//! share kernel state (pinned maps, cgroup attachments) and run one at a time.

use crate::util::{done, exec, root, step, target_dir};
use crate::{build_ebpf, setup};
use anyhow::Result;
use std::process::Command;

#[derive(clap::Args)]
pub struct Options {
    /// Only run tests whose name contains this filter.
    pub filter: Option<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    setup::all()?;
    build_ebpf::run(&build_ebpf::Options { no_setup: true })?;

    let t = step("building all binaries (the end-to-end tests run them)");
    exec(
        Command::new("cargo")
            .args(["build", "--workspace", "--bins"])
            .current_dir(root()),
        "the workspace does not build",
    )?;
    done("binaries built", t);

    let filter: Vec<&str> = opts.filter.as_deref().into_iter().collect();
    let t = step("unit and loopback tests");
    exec(
        Command::new("cargo")
            .args(["test", "--workspace", "--exclude", "conduit-tests", "--"])
            .args(&filter)
            .current_dir(root()),
        "unit tests failed",
    )?;
    done("unit and loopback tests", t);

    let t = step("end-to-end tests (privileged, one at a time)");
    exec(
        Command::new("cargo")
            .args(["test", "-p", "conduit-tests", "--", "--test-threads=1"])
            .args(&filter)
            .current_dir(root())
            .env("CONDUIT_BIN_DIR", target_dir().join("debug")),
        "end-to-end tests failed",
    )?;
    done("end-to-end tests", t);
    Ok(())
}
