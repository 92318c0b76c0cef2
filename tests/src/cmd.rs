//! Running the system tools the harness drives (`ip`, `bpftool`).

use anyhow::{Context, Result, bail};
use std::process::Command;

/// Runs `program args...`, returning its stdout; a failure carries its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip args...`.
pub fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// Runs a clean-up command, logging (not failing) when it does not succeed.
pub fn best_effort(program: &str, args: &[&str]) {
    if let Err(e) = run(program, args) {
        tracing::debug!("clean-up step failed: {e:#}");
    }
}
