//! What BPF state belongs to a test's agent, read with `bpftool` (so the
//! check does not trust the agent's own report): programs attached at the
//! test's cgroup, sk_lookup links in its pods' namespaces, everything pinned
//! in its pin directory, and the maps those programs use.

use crate::cmd::run;
use crate::status::{ProgramStatus, Status};
use anyhow::{Context, Result};
use serde_json::Value;
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn bpftool(args: &[&str]) -> Result<Value> {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let out = run("bpftool", &all)?;
    if out.trim().is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_str(&out)
        .with_context(|| format!("bpftool {} printed no JSON", args.join(" ")))
}

fn ids(v: &Value, field: &str) -> BTreeSet<u32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|o| o.get(field)?.as_u64())
                .filter_map(|n| u32::try_from(n).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// IDs of BPF objects of one test's agent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BpfObjects {
    /// Program IDs.
    pub progs: BTreeSet<u32>,
    /// Map IDs.
    pub maps: BTreeSet<u32>,
    /// Link IDs.
    pub links: BTreeSet<u32>,
    /// Files in the pin directory.
    pub pinned: Vec<PathBuf>,
}

impl BpfObjects {
    /// Collects what is attached at `cgroup`, linked into the network
    /// namespaces `netns` (paths of namespace files) and pinned under
    /// `pin_dir`, with the maps of all those programs.
    pub fn collect(cgroup: &Path, netns: &[PathBuf], pin_dir: &Path) -> Result<Self> {
        let mut o = Self::default();
        let cg = cgroup.to_string_lossy();
        o.progs
            .extend(ids(&bpftool(&["cgroup", "show", &cg])?, "id"));
        let ns_inodes: BTreeSet<u64> = netns
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.ino())
            .collect();
        let cgroup_id = std::fs::metadata(cgroup)?.ino();
        for link in bpftool(&["link", "show"])?.as_array().into_iter().flatten() {
            let ours = link
                .get("netns_ino")
                .and_then(Value::as_u64)
                .is_some_and(|i| ns_inodes.contains(&i))
                || link.get("cgroup_id").and_then(Value::as_u64) == Some(cgroup_id);
            if ours {
                o.links.extend(
                    link.get("id")
                        .and_then(Value::as_u64)
                        .and_then(|n| u32::try_from(n).ok()),
                );
                o.progs.extend(
                    link.get("prog_id")
                        .and_then(Value::as_u64)
                        .and_then(|n| u32::try_from(n).ok()),
                );
            }
        }
        o.pinned = walk(pin_dir);
        let id_of = |v: &Value, f: &str| {
            v.get(f)
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
        };
        for p in &o.pinned {
            let p = p.to_string_lossy();
            if let Ok(v) = bpftool(&["prog", "show", "pinned", &p]) {
                o.progs.extend(id_of(&v, "id"));
            } else if let Ok(v) = bpftool(&["map", "show", "pinned", &p]) {
                o.maps.extend(id_of(&v, "id"));
            } else if let Ok(v) = bpftool(&["link", "show", "pinned", &p]) {
                o.links.extend(id_of(&v, "id"));
                o.progs.extend(id_of(&v, "prog_id"));
            }
        }
        for id in o.progs.clone() {
            if let Ok(v) = bpftool(&["prog", "show", "id", &id.to_string()])
                && let Some(m) = v.get("map_ids").and_then(Value::as_array)
            {
                o.maps.extend(
                    m.iter()
                        .filter_map(Value::as_u64)
                        .filter_map(|n| u32::try_from(n).ok()),
                );
            }
        }
        Ok(o)
    }

    /// Ensures that bpftool found each of `programs` and every map of
    /// `status` among these objects.
    pub fn ensure_covers<'a>(
        &self,
        programs: impl IntoIterator<Item = &'a ProgramStatus>,
        status: &Status,
    ) -> Result<()> {
        for p in programs {
            anyhow::ensure!(
                self.progs.contains(&p.id),
                "status program {p:?} not seen by bpftool: {self:?}"
            );
        }
        for m in &status.maps {
            anyhow::ensure!(
                self.maps.contains(&m.id),
                "status map {m:?} not seen by bpftool: {self:?}"
            );
        }
        Ok(())
    }

    /// Which of these objects still exist in the kernel (and which pinned
    /// files are still there).
    pub fn still_present(&self) -> Result<BpfObjects> {
        let progs = ids(&bpftool(&["prog", "show"])?, "id");
        let maps = ids(&bpftool(&["map", "show"])?, "id");
        let links = ids(&bpftool(&["link", "show"])?, "id");
        Ok(BpfObjects {
            progs: self.progs.intersection(&progs).copied().collect(),
            maps: self.maps.intersection(&maps).copied().collect(),
            links: self.links.intersection(&links).copied().collect(),
            pinned: self.pinned.iter().filter(|p| p.exists()).cloned().collect(),
        })
    }

    /// True when there is nothing.
    pub fn is_empty(&self) -> bool {
        self.progs.is_empty()
            && self.maps.is_empty()
            && self.links.is_empty()
            && self.pinned.is_empty()
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// Programs attached directly at `cgroup` (`bpftool cgroup show`).
pub fn cgroup_attachments(cgroup: &Path) -> Result<Vec<Value>> {
    Ok(bpftool(&["cgroup", "show", &cgroup.to_string_lossy()])?
        .as_array()
        .cloned()
        .unwrap_or_default())
}
