//! `cargo xtask test`: every test, from a fresh machine.
//!
//! Unit, doc and loopback integration tests run in parallel; the end-to-end
//! tests (`tests/tests/e2e/`, the test target `e2e` of `conduit-tests`)
//! share kernel state (pinned maps, cgroup attachments) and run one at a
//! time. Each crate has one integration test binary (`tests/it/main.rs`
//! with one module per theme), so a test filter names `module::test`.
//!
//! Every cargo call below selects the whole workspace, so cargo unifies
//! features the same way each time and compiles each dependency once. (Asking
//! for `-p conduit-tests` alone, or building `--bins` without the test targets,
//! gives tokio, tower and their dependents other feature sets, and the whole
//! dependency tree is compiled, and stored, two or three times over.)

use crate::util::{done, exec, root, step, target_dir, warn_if_disk_low};
use crate::{build_ebpf, fuzz, setup};
use anyhow::Result;
use std::process::Command;

/// The package whose integration tests need root and run one at a time.
const END_TO_END: &str = "conduit-tests";

/// Its one integration test target (`tests/tests/e2e/main.rs`); no other
/// package has a target of that name, so `--workspace --test e2e` selects
/// exactly it while keeping the whole workspace's feature set.
const END_TO_END_TARGET: &str = "e2e";

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
    end_to_end_target_exists()?;
    let e2e_args = args(&["--workspace", "--test", END_TO_END_TARGET]);
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

/// Checks that the end-to-end target is where this file says, so a moved
/// or renamed target fails here with its path instead of running nothing.
fn end_to_end_target_exists() -> Result<()> {
    let main = root()
        .join("tests/tests")
        .join(END_TO_END_TARGET)
        .join("main.rs");
    anyhow::ensure!(
        main.is_file(),
        "the end-to-end test target {END_TO_END_TARGET} ({}) is missing",
        main.display()
    );
    Ok(())
}
