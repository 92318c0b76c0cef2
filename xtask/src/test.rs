//! `cargo xtask test`: every test, from a fresh machine.
//!
//! Unit, doc and loopback integration tests run in parallel; the end-to-end
//! tests in `tests/tests/` share kernel state (pinned maps, cgroup
//! attachments) and run one at a time.
//!
//! Every cargo call below selects the whole workspace, so cargo unifies
//! features the same way each time and compiles each dependency once. (Asking
//! for `-p conduit-tests` alone, or building `--bins` without the test targets,
//! gives tokio, tower and their dependents other feature sets, and the whole
//! dependency tree is compiled, and stored, two or three times over.)

use crate::util::{done, exec, root, step, target_dir, warn_if_disk_low};
use crate::{build_ebpf, fuzz, setup};
use anyhow::{Context, Result};
use std::process::Command;

/// The package whose integration tests need root and run one at a time.
const END_TO_END: &str = "conduit-tests";

#[derive(clap::Args)]
pub struct Options {
    /// Only run tests whose name contains this filter.
    pub filter: Option<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    setup::all()?;
    warn_if_disk_low(&target_dir());
    build_ebpf::run(&build_ebpf::Options { no_setup: true })?;

    let t = step("building all binaries and tests (the end-to-end tests run the binaries)");
    exec(
        Command::new("cargo")
            .args(["build", "--workspace", "--all-targets"])
            .current_dir(root()),
        "the workspace does not build",
    )?;
    done("binaries and tests built", t);

    let filter: Vec<&str> = opts.filter.as_deref().into_iter().collect();
    let e2e = end_to_end_targets()?;
    let mut e2e_args = vec!["--workspace".to_string()];
    for target in &e2e {
        e2e_args.extend(["--test".to_string(), target.clone()]);
    }
    let runs: [(&str, Vec<String>, bool); 4] = [
        (
            "unit tests of every crate",
            args(&["--workspace", "--lib", "--bins"]),
            false,
        ),
        ("doc examples", args(&["--workspace", "--doc"]), false),
        (
            "loopback integration tests",
            args(&["--workspace", "--exclude", END_TO_END, "--test", "*"]),
            false,
        ),
        (
            "end-to-end tests (privileged, one at a time)",
            e2e_args,
            true,
        ),
    ];
    for (what, cargo_args, serial) in runs {
        let t = step(what);
        let mut cmd = Command::new("cargo");
        cmd.arg("test").args(&cargo_args).arg("--");
        if serial {
            cmd.arg("--test-threads=1");
        }
        exec(
            cmd.args(&filter)
                .current_dir(root())
                .env("CONDUIT_BIN_DIR", target_dir().join("debug")),
            &format!("{what} failed"),
        )?;
        done(what, t);
    }
    // A short pass of every fuzz target over its seed corpus (a filter
    // selects tests, so it skips this).
    if opts.filter.is_none() {
        let t = step("fuzzing every parser briefly (cargo xtask fuzz --time for longer)");
        fuzz::ci()?;
        done("fuzz pass", t);
    }
    Ok(())
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_string()).collect()
}

/// The integration test targets of `tests/` (cargo's auto-discovered
/// `tests/tests/*.rs`), named one by one so the selection stays the workspace.
fn end_to_end_targets() -> Result<Vec<String>> {
    let dir = root().join("tests/tests");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            names.push(stem.to_string());
        }
    }
    names.sort();
    anyhow::ensure!(!names.is_empty(), "no test targets in {}", dir.display());
    Ok(names)
}
