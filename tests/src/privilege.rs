//! Privileged tests: check for root, cgroup v2 and the `bpf` syscall; skip
//! visibly when they are missing, or fail under `CONDUIT_REQUIRE_PRIVILEGED=1`.

use crate::cgroup;
use std::io::Write;

/// Environment variable that turns a skip into a failure (set by `.ci/run`).
pub const REQUIRE_VAR: &str = "CONDUIT_REQUIRE_PRIVILEGED";

/// Why privileged tests cannot run here, or `None` when they can.
pub fn missing() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root".into());
    }
    if let Err(e) = cgroup::cgroup2_mount() {
        return Some(format!("no cgroup v2: {e:#}"));
    }
    if let Err(e) = crate::sys::probe_bpf_syscall() {
        return Some(format!("the bpf syscall does not work: {e}"));
    }
    None
}

/// True when privileged tests are required to run (skipping is a failure).
pub fn required() -> bool {
    std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1")
}

/// Returns true when the privileged test `test` can run. Otherwise prints
/// `SKIPPED <test>: <reason>` straight to stderr (past the test harness's
/// output capture, so it is always visible) and returns false; but panics,
/// failing the test, when [`REQUIRE_VAR`] is `1`.
pub fn check(test: &str) -> bool {
    let Some(reason) = missing() else { return true };
    if required() {
        panic!("{test} needs root, cgroup v2 and the bpf syscall ({REQUIRE_VAR}=1): {reason}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
    false
}
