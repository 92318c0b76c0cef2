//! Small helpers shared by the tasks: paths, progress lines, running commands.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// The workspace root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Cargo's target directory for userspace builds (honours CARGO_TARGET_DIR).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                root().join(dir)
            }
        }
        None => root().join("target"),
    }
}

/// Prints a progress line for a step and returns a timer for [`done`].
pub fn step(what: &str) -> Instant {
    eprintln!("==> {what}");
    Instant::now()
}

/// Prints how long a step took.
pub fn done(what: &str, started: Instant) {
    eprintln!(
        "    {what}: done in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// Runs a command with inherited stdio; fails with the command line and a hint.
pub fn exec(cmd: &mut Command, hint: &str) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {shown}: {hint}"))?;
    if !status.success() {
        bail!("{shown} failed ({status}): {hint}");
    }
    Ok(())
}

/// Runs a command and returns its trimmed stdout, or None when it fails.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// True when the current user is root.
pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).as_deref() == Some("0")
}

/// Free space below which a full test build may not fit (measured: a clean
/// `cargo xtask test` leaves about this much in target/, see docs/testing.md).
const LOW_DISK_BYTES: u64 = 6 << 30;

/// Warns, with the numbers, when the disk holding `dir` has little room left:
/// a full disk shows up later as a linker "Bus error" or a failed write deep
/// in cargo's output, far from its cause.
pub fn warn_if_disk_low(dir: &std::path::Path) {
    let probe = std::iter::successors(Some(dir), |d| d.parent()).find(|d| d.exists());
    let Some(probe) = probe else { return };
    let Some(out) = output(Command::new("df").args(["-Pk"]).arg(probe)) else {
        return;
    };
    let avail_kib = out
        .lines()
        .nth(1)
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|n| n.parse::<u64>().ok());
    if let Some(kib) = avail_kib {
        let free = kib * 1024;
        eprintln!("    disk: {:.1} GiB free at {}", gib(free), probe.display());
        if free < LOW_DISK_BYTES {
            eprintln!(
                "warning: only {:.1} GiB free; a clean build and test run needs about {:.1} GiB",
                gib(free),
                gib(LOW_DISK_BYTES)
            );
        }
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}
