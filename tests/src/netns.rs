//! Named network namespaces (`ip netns`), deleted on drop.

use crate::cmd::{best_effort, ip};
use anyhow::{Context, Result};
use std::fs::File;
use std::path::PathBuf;

/// A named network namespace with its loopback up.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name` (deleting a stale one of that name first)
    /// and brings its loopback up.
    pub fn create(name: &str) -> Result<Self> {
        if Self::path_of(name).exists() {
            best_effort("ip", &["netns", "del", name]);
        }
        ip(&["netns", "add", name])
            .with_context(|| format!("creating network namespace {name}"))?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        // No duplicate address detection: addresses (link-local ones too)
        // are usable at once instead of after a second or two.
        ns.exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ],
        )?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        Self::path_of(&self.name)
    }

    fn path_of(name: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(name)
    }

    /// Opens the namespace file (what `setns` takes).
    pub fn open(&self) -> Result<File> {
        File::open(self.path()).with_context(|| format!("opening {}", self.path().display()))
    }

    /// Runs `ip -n <name> args...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `program args...` inside the namespace (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        best_effort("ip", &["netns", "del", &self.name]);
    }
}
