//! Shared pieces of the agent's privileged tests: the privilege check, shell
//! commands, the cgroup v2 mount, waiting for conditions, the agent's status
//! and a test pod's setup and teardown.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The agent binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_conduit-ebpf");

/// Whether the test can run (root and cgroup v2); skips visibly otherwise,
/// and panics instead under CONDUIT_REQUIRE_PRIVILEGED=1.
pub fn privileged(test: &str) -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    let cgroup2 =
        std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| m.contains(" - cgroup2 "));
    if root && cgroup2 {
        ensure_bpffs();
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

/// Mounts bpffs at /sys/fs/bpf in this (the node's) mount namespace when it
/// is not there yet. Some tests run the agent in a mount namespace of its
/// own, where the agent's own mount would stay invisible to `status` run
/// from here (on a fresh machine nothing has mounted it before).
fn ensure_bpffs() {
    let mounted = std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines()
            .any(|l| l.contains(" /sys/fs/bpf ") && l.contains(" - bpf "))
    });
    if !mounted {
        sh("mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf");
    }
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

/// `status --json` of the agent whose maps are pinned in `pin_dir`.
pub fn agent_status(pin_dir: &Path) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["status", "--json", "--pin-dir"])
        .arg(pin_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Sets up a test pod: network namespace `ns` joined to the host by the veth
/// pair `{veth}h` (host, `host_ip`/24) and `{veth}p` (pod, `pod_ip`/24), and
/// the cgroups `subs` under `cgroup`. [`teardown`] undoes it.
pub fn setup_pod(ns: &str, veth: &str, host_ip: &str, pod_ip: &str, cgroup: &Path, subs: &[&str]) {
    let v = veth;
    sh(&format!(
        "ip netns add {ns} && ip link add {v}h type veth peer name {v}p && ip link set {v}p netns {ns} \
         && ip addr add {host_ip}/24 dev {v}h && ip link set {v}h up \
         && ip -n {ns} addr add {pod_ip}/24 dev {v}p && ip -n {ns} link set {v}p up && ip -n {ns} link set lo up"
    ));
    for sub in subs {
        std::fs::create_dir_all(cgroup.join(sub)).unwrap();
    }
}

/// Best-effort teardown of a test pod: the agent's `cleanup` of `pin_dir`
/// and `socket`, the network namespace `ns`, the host end `{veth}h` and the
/// cgroups `subs` under `cgroup` (in that order, so list children first).
pub fn teardown(pin_dir: &Path, socket: &Path, ns: &str, veth: &str, cgroup: &Path, subs: &[&str]) {
    let _ = Command::new(BIN)
        .args(["cleanup", "--pin-dir"])
        .arg(pin_dir)
        .arg("--socket")
        .arg(socket)
        .output();
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
    let _ = Command::new("ip")
        .args(["link", "del", &format!("{veth}h")])
        .stderr(Stdio::null())
        .status();
    for sub in subs {
        let _ = std::fs::remove_dir(cgroup.join(sub));
    }
}
