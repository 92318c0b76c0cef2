//! Shared pieces of the agent's privileged tests, on the end-to-end
//! harness's environment (`conduit-tests`): its privilege rule (root, cgroup
//! v2, the bpf syscall; skip visibly, fail under
//! `CONDUIT_REQUIRE_PRIVILEGED=1`), its names (everything a test creates is
//! named after the test, with `CONDUIT_TEST_PREFIX`), its cgroup v2 mount,
//! test-support's `wait_until`; plus shell commands, the agent's status,
//! one test's environment ([`AgentEnv`]: pods, cgroups, the agent, helper
//! processes) and what those helpers run inside the pods ([`pod`]).
#![allow(dead_code)]

mod env;
pub mod pod;

pub use env::{AgentEnv, Pod, expect_line, spawn_lines};

use conduit_base::sync::Unpoisoned;
use conduit_tests::names::Names;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The agent binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_conduit-ebpf");

/// Whether the test can run (root, cgroup v2, the bpf syscall): the tests
/// crate's rule, which prints `SKIPPED <test>: <reason>` past the capture
/// otherwise, and panics instead under `CONDUIT_REQUIRE_PRIVILEGED=1`.
pub fn privileged(test: &str) -> bool {
    if !conduit_tests::privilege::check(test) {
        return false;
    }
    ensure_bpffs();
    true
}

static EXCLUSIVE: Mutex<()> = Mutex::new(());

/// One agent test environment at a time in this binary: the modules' pods
/// use fixed addresses (10.213.x), some of them the same, and before the
/// tests became one binary each module ran in a process of its own, one
/// after the other. Hold the guard for the environment's life.
pub fn exclusive() -> MutexGuard<'static, ()> {
    EXCLUSIVE.locked()
}

/// Names of what one test creates, from the test's name (the tests crate's
/// [`Names`]): network namespaces `ct-<test>-<pod>`, veths `cv<tag>x<n>h` /
/// `...p`, the cgroup `conduit-tests/<test>`, pins
/// `/sys/fs/bpf/conduit-tests-<test>` and the run directory
/// `/run/conduit-tests/<test>`.
#[derive(Debug, Clone)]
pub struct TestNames(Names);

impl TestNames {
    /// Names for the test `test` (pass `conduit_tests::test_name!()`).
    pub fn new(test: &str) -> Self {
        TestNames(Names::for_test(test))
    }

    /// The network namespace of pod `pod`.
    pub fn netns(&self, pod: &str) -> String {
        self.0.netns(pod)
    }

    /// The veth pair of pod number `i` (without the `h`/`p` suffix).
    pub fn veth(&self, i: usize) -> String {
        self.0.host_veth(i)
    }

    /// The test's cgroup (absolute).
    pub fn cgroup(&self) -> PathBuf {
        cgroup2_mount().join(self.0.cgroup())
    }

    /// The agent's pin directory.
    pub fn pin_dir(&self) -> PathBuf {
        self.0.pin_dir()
    }

    /// The test's run directory (agent socket).
    pub fn run_dir(&self) -> PathBuf {
        self.0.run_dir()
    }
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

/// The cgroup v2 mount (the tests crate's detection).
pub fn cgroup2_mount() -> PathBuf {
    conduit_tests::cgroup::cgroup2_mount().expect("cgroup v2 mount")
}

/// Waits at most 15 s until `cond` holds (test-support's `wait_until`);
/// panics naming `what` otherwise.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    conduit_test_support::wait_until(what, Duration::from_secs(15), || {
        anyhow::ensure!(cond(), "not yet");
        Ok(())
    })
    .unwrap();
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
/// pair `{veth}h` (host, `host_ip`/24) and `{veth}p` (pod, `pod_ip`/24).
/// [`AgentEnv`] does it for its pods and undoes it.
pub fn setup_pod(ns: &str, veth: &str, host_ip: &str, pod_ip: &str) {
    let v = veth;
    // Leftovers of a killed run of the same test (the names are the test's).
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
    let _ = Command::new("ip")
        .args(["link", "del", &format!("{v}h")])
        .stderr(Stdio::null())
        .status();
    sh(&format!(
        "ip netns add {ns} && ip link add {v}h type veth peer name {v}p && ip link set {v}p netns {ns} \
         && ip addr add {host_ip}/24 dev {v}h && ip link set {v}h up \
         && ip -n {ns} addr add {pod_ip}/24 dev {v}p && ip -n {ns} link set {v}p up && ip -n {ns} link set lo up"
    ));
}

/// `conduit-ebpf cleanup` of the agent pinned in `pin_dir` with `socket`.
pub fn cleanup_command(pin_dir: &Path, socket: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.args(["cleanup", "--pin-dir"])
        .arg(pin_dir)
        .arg("--socket")
        .arg(socket);
    c
}

/// Starts the agent from `cmd` (its arguments and environment set) with
/// logs at info and no colour; a thread echoes each stderr line and keeps
/// it in `log` (when given). Returns the child once the agent logged
/// "agent ready" (within 30 s), with that line.
pub fn spawn_agent(cmd: &mut Command, log: Option<Arc<Mutex<Vec<String>>>>) -> (Child, String) {
    let mut child = cmd
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("agent: {line}");
            if line.contains("agent ready") {
                let _ = tx.send(line.clone());
            }
            if let Some(log) = &log {
                log.locked().push(line);
            }
        }
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("agent ready within 30 s (see agent log above)");
    (child, ready)
}

/// A running pod as the API server reports it: `namespace/name` on `node`,
/// with the address `ip` (none when empty: the kubelet has not reported it
/// yet).
pub fn api_pod(namespace: &str, name: &str, ip: &str, node: &str) -> k8s::Pod {
    k8s::Pod {
        metadata: k8s::ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(k8s::PodSpec {
            node_name: Some(node.into()),
            ..Default::default()
        }),
        status: Some(k8s::PodStatus {
            phase: Some("Running".into()),
            pod_ip: (!ip.is_empty()).then(|| ip.to_string()),
            pod_ips: (!ip.is_empty()).then(|| vec![k8s::PodIP { ip: ip.into() }]),
            ..Default::default()
        }),
    }
}

/// The Kubernetes types the tests build.
pub mod k8s {
    pub use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodIP, PodSpec, PodStatus};
    pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
}
