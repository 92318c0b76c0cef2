//! The agent refuses a kernel that lacks a hook, naming it. This kernel has
//! every hook, so the probe is told one is missing
//! (`CONDUIT_EBPF_MISSING_FEATURES`, see features.rs); on a kernel really
//! lacking one the same refusal path runs (`cargo xtask kernel-matrix` runs
//! this override in each guest too). Also: every program of the object
//! passes this kernel's verifier (`conduit-ebpf verify`).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::support;

use support::{BIN, privileged, wait_for};

#[test]
fn agent_refuses_a_kernel_without_sk_lookup_naming_it() {
    if !privileged(conduit_tests::test_name!()) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/cebpf-refusal-{}", std::process::id()));
    let mut child = Command::new(BIN)
        .arg("agent")
        .arg("--pin-dir")
        .arg(&pin_dir)
        .arg("--socket")
        .arg(tmp.path().join("agent.sock"))
        .env("CONDUIT_EBPF_MISSING_FEATURES", "program sk_lookup")
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut exited = None;
    // An agent that ignores the override starts and keeps running.
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for("the agent to refuse and exit", || {
            exited = child.try_wait().unwrap();
            exited.is_some()
        })
    }));
    if waited.is_err() {
        let _ = child.kill();
        let _ = child.wait();
        let _ = Command::new(BIN)
            .args(["cleanup", "--pin-dir"])
            .arg(&pin_dir)
            .output();
        panic!("the agent started although sk_lookup was marked missing");
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!exited.unwrap().success(), "{err}");
    assert!(
        err.contains("this kernel lacks what capture needs: program sk_lookup"),
        "{err}"
    );
    // Only the feature marked missing is named.
    assert!(!err.contains("program sk_msg"), "{err}");
    assert!(!pin_dir.exists(), "nothing is pinned by a refused agent");
}

#[test]
fn every_program_passes_this_kernels_verifier() {
    if !privileged(conduit_tests::test_name!()) {
        return;
    }
    let out = Command::new(BIN).arg("verify").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verified = text.lines().filter(|l| l.ends_with(" verified")).count();
    assert_eq!(verified, 8, "{text}");
}
