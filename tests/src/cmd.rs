//! Running the system tools the harness drives (`ip`, `bpftool`, `openssl`).

use anyhow::{Context, Result, bail};
use std::process::Command;

/// Runs `program args...`, returning its stdout; a failure carries its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    run_with(program, args, None)
}

/// Like [`run`], with `input` on its standard input.
pub fn stdin_output(program: &str, args: &[&str], input: &str) -> Result<String> {
    run_with(program, args, Some(input))
}

fn run_with(program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program} (is it installed?)"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .with_context(|| format!("writing to {program}'s standard input"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {program}"))?;
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
        tracing::debug!(error = format!("{e:#}"), "clean-up step failed");
    }
}
