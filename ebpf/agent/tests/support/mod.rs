//! Shared pieces of the agent's privileged tests: the privilege check, shell
//! commands, the cgroup v2 mount, waiting for conditions.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Whether the test can run (root and cgroup v2); skips visibly otherwise,
/// and panics instead under CONDUIT_REQUIRE_PRIVILEGED=1.
pub fn privileged(test: &str) -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    let cgroup2 =
        std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| m.contains(" - cgroup2 "));
    if root && cgroup2 {
        return true;
    }
    let why = if root { "no cgroup v2" } else { "not root" };
    if std::env::var("CONDUIT_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("privileged {test} cannot run ({why}) and CONDUIT_REQUIRE_PRIVILEGED=1");
    }
    // Straight to stderr, past libtest's capture, so the skip is visible.
    let _ = writeln!(std::io::stderr(), "SKIPPED conduit-ebpf {test}: {why}");
    false
}

pub fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(st.success(), "command failed: {cmd}");
}

pub fn cgroup2_mount() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let dir = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(dir))
        })
        .unwrap()
}

pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
