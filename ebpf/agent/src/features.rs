//! Kernel feature probes (program and map types the capture needs) and
//! cgroup v2 detection.

use anyhow::{Context, Result, bail};
use aya::maps::MapType;
use aya::programs::ProgramType;
use std::path::{Path, PathBuf};

const CGROUP2_SUPER_MAGIC: u32 = 0x63677270;

pub use conduit_ebpf_status::Feature;

const PROGRAMS: [(&str, ProgramType); 5] = [
    (
        "program cgroup_sock_addr (connect4/6, getpeername4/6)",
        ProgramType::CgroupSockAddr,
    ),
    ("program sock_ops", ProgramType::SockOps),
    (
        "program cgroup_sockopt (getsockopt)",
        ProgramType::CgroupSockopt,
    ),
    ("program sk_lookup", ProgramType::SkLookup),
    ("program sk_msg", ProgramType::SkMsg),
];

const MAPS: [(&str, MapType); 7] = [
    ("map hash", MapType::Hash),
    ("map lru_hash", MapType::LruHash),
    ("map lpm_trie", MapType::LpmTrie),
    ("map array", MapType::Array),
    ("map percpu_array", MapType::PerCpuArray),
    ("map sockhash", MapType::SockHash),
    ("map ringbuf", MapType::RingBuf),
];

/// Probes every hook and map type, and cgroup v2.
pub fn probe() -> Vec<Feature> {
    let mut out = Vec::new();
    for (name, t) in PROGRAMS {
        let available = aya::sys::is_program_supported(t).unwrap_or(false);
        out.push(Feature {
            name: name.to_string(),
            available,
        });
    }
    for (name, t) in MAPS {
        let available = aya::sys::is_map_supported(t).unwrap_or(false);
        out.push(Feature {
            name: name.to_string(),
            available,
        });
    }
    out.push(Feature {
        name: "cgroup v2".into(),
        available: cgroup2_mount().is_some(),
    });
    out
}

/// Fails naming every missing feature.
pub fn require(features: &[Feature]) -> Result<()> {
    let missing: Vec<&str> = features
        .iter()
        .filter(|f| !f.available)
        .map(|f| f.name.as_str())
        .collect();
    if !missing.is_empty() {
        let who = if nix::unistd::Uid::effective().is_root() {
            ""
        } else {
            " (not running as root: the probes need CAP_BPF/CAP_SYS_ADMIN, run the agent as root)"
        };
        bail!(
            "this kernel lacks what capture needs: {}{who}",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Where cgroup v2 is mounted, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    crate::cgroup::topmost(&crate::cgroup::cgroup2_mounts(&info)).map(|m| m.point.clone())
}

/// Checks that `path` is a cgroup v2 directory.
pub fn check_cgroup(path: &Path) -> Result<()> {
    let st = nix::sys::statfs::statfs(path)
        .with_context(|| format!("cgroup {} not found", path.display()))?;
    if st.filesystem_type().0 as u32 != CGROUP2_SUPER_MAGIC {
        bail!("{} is not a cgroup v2 directory", path.display());
    }
    Ok(())
}
