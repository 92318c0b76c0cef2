//! A privileged test's environment: pods on a bridge, the test's own cgroup
//! tree, and where its agent listens and pins. Everything is named after the
//! test and removed on drop, pinned BPF state included.

use crate::agent::{AgentConfig, agent_bin};
use crate::bpf::BpfObjects;
use crate::cgroup::{Cgroup, CgroupTree};
use crate::names::Names;
use crate::privilege;
use crate::process::Spawn;
use crate::topology::{Pod, Topology};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The uid (and gid) test proxies run as: unprivileged, like a real sidecar.
pub const PROXY_UID: u32 = 1337;

/// A test's environment. Drop order: pinned state (`conduit-ebpf cleanup`),
/// then processes and cgroups, then pods and bridge, then the run directory.
#[derive(Debug)]
pub struct Env {
    /// Names of everything created.
    pub names: Names,
    cgroups: CgroupTree,
    topology: Topology,
    run_dir: PathBuf,
}

impl Env {
    /// For the privileged test `test`: `Ok(None)` after printing a SKIPPED
    /// line when root, cgroup v2 or bpf is missing (panics instead under
    /// `CONDUIT_REQUIRE_PRIVILEGED=1`); otherwise the environment with `pods`.
    pub fn privileged(test: &str, pods: &[&str]) -> Result<Option<Self>> {
        if !privilege::check(test) {
            return Ok(None);
        }
        Self::new(Names::for_test(test), pods).map(Some)
    }

    /// Creates the environment (removing leftovers of an earlier run first).
    pub fn new(names: Names, pods: &[&str]) -> Result<Self> {
        let run_dir = names.run_dir();
        let pin_dir = names.pin_dir();
        if pin_dir.exists() {
            // A crashed earlier run: remove what its agent left attached.
            if let Ok(bin) = agent_bin() {
                let _ = std::process::Command::new(bin)
                    .args(["cleanup", "--pin-dir"])
                    .arg(&pin_dir)
                    .status();
            }
        }
        let cgroups = CgroupTree::create(&names.cgroup())?;
        let topology = Topology::create(names.clone(), pods)?;
        // A stale agent socket of a crashed run must not be mistaken for ours.
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        Ok(Self {
            names,
            cgroups,
            topology,
            run_dir,
        })
    }

    /// The pods.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The pod `name`.
    pub fn pod(&self, name: &str) -> &Pod {
        self.topology.pod(name)
    }

    /// The test's cgroup (the agent attaches here).
    pub fn cgroup(&self) -> &Cgroup {
        self.cgroups.root()
    }

    /// The BPF objects at the test's cgroup and in its pods' network
    /// namespaces, with the agent's pins in `pin_dir` (bpftool's view).
    pub fn bpf_objects(&self, pin_dir: &Path) -> Result<BpfObjects> {
        let netns: Vec<PathBuf> = self
            .topology
            .pods()
            .iter()
            .map(|p| p.netns().path())
            .collect();
        BpfObjects::collect(self.cgroup().path(), &netns, pin_dir)
    }

    /// The cgroup `<test>/<pod>/<role>` (created on first use).
    pub fn pod_cgroup(&self, pod: &str, role: &str) -> Result<Cgroup> {
        self.cgroups.root().child(pod)?.child(role)
    }

    /// The test's scratch directory (agent socket lives here).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The agent configuration for this test: attach at the test's cgroup,
    /// listen in the run directory, pin in the test's pin directory.
    pub fn agent_config(&self) -> Result<AgentConfig> {
        Ok(AgentConfig {
            bin: agent_bin()?,
            cgroup: self.cgroup().path().to_owned(),
            socket: self.run_dir.join("agent.sock"),
            pin_dir: self.names.pin_dir(),
            extra_args: Vec::new(),
            echo_logs: true,
        })
    }

    /// A process inside pod `pod`'s network namespace and cgroup `<pod>/<role>`.
    pub fn spawn(&self, pod: &str, role: &str, program: impl AsRef<Path>) -> Result<Spawn> {
        let label = format!("{pod}/{role}");
        Spawn::new(label, program)
            .netns(self.pod(pod).netns())?
            .cgroup(&self.pod_cgroup(pod, role)?)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let pin_dir = self.names.pin_dir();
        if pin_dir.exists() {
            match self.agent_config().and_then(|c| c.cleanup()) {
                Ok(()) => {}
                Err(e) => eprintln!(
                    "warning: conduit-ebpf cleanup for {} failed: {e:#}",
                    self.names.test
                ),
            }
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
        // The shared parents go when the last test's environment is gone
        // (removing a non-empty directory fails, which is fine).
        for dir in [self.run_dir.parent(), pin_dir.parent()]
            .into_iter()
            .flatten()
        {
            if dir.file_name().is_some_and(|n| n == "conduit-tests") {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}
