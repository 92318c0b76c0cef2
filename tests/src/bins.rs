//! Finding the binaries the tests run.

use anyhow::{Result, bail};
use std::path::PathBuf;

/// Environment variable naming the directory of the workspace's binaries
/// (set by `cargo xtask test`).
pub const BIN_DIR_VAR: &str = "CONDUIT_BIN_DIR";

/// The node agent / CLI.
pub const AGENT: &str = "conduit-ebpf";
/// The test proxy of this crate.
pub const TEST_PROXY: &str = "conduit-test-proxy";
/// The test client and server of this crate.
pub const TEST_APP: &str = "conduit-test-app";

/// Directories searched, in order: `$CONDUIT_BIN_DIR`; the directory of the
/// running executable and its parent (a test binary lives in
/// `target/debug/deps`); `$CARGO_TARGET_DIR/debug`; the workspace's
/// `target/debug`.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os(BIN_DIR_VAR) {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.to_owned());
        if let Some(up) = dir.parent() {
            dirs.push(up.to_owned());
        }
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(PathBuf::from(t).join("debug"));
    }
    dirs.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    dirs
}

/// The path of binary `name`, or an error saying where it was looked for
/// and how to build it.
pub fn find(name: &str) -> Result<PathBuf> {
    let dirs = search_dirs();
    if let Some(p) = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()) {
        return Ok(p);
    }
    let tried: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    bail!(
        "binary {name} not found (looked in {}); build it with `cargo build --workspace --bins` \
         (after `cargo xtask build-ebpf`; for the release demo \
         `cargo build --release -p conduit-ebpf -p conduit-controller -p conduit-proxy -p conduit-tests --bins`) or set {BIN_DIR_VAR}",
        tried.join(", ")
    )
}
