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

/// Environment variable naming features to report missing whatever the
/// kernel says (comma-separated, each matched as a prefix of a feature name,
/// e.g. `program sk_lookup`): how tests check the refusal of a kernel that
/// lacks a hook on a kernel that has them all.
pub const MISSING_FEATURES_ENV: &str = "CONDUIT_EBPF_MISSING_FEATURES";

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
    let forced = std::env::var(MISSING_FEATURES_ENV).unwrap_or_default();
    mark_missing(&mut out, &forced);
    out
}

/// Marks unavailable every feature whose name starts with one of the
/// comma-separated `names` (see [`MISSING_FEATURES_ENV`]).
fn mark_missing(features: &mut [Feature], names: &str) {
    let names: Vec<&str> = names
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    for f in features {
        if names.iter().any(|n| f.name.starts_with(n)) {
            f.available = false;
        }
    }
}

/// One program of the object through this kernel's verifier.
#[derive(Debug)]
pub struct Verdict {
    pub program: String,
    /// `Err` holds the verifier's reason (the last lines of its log).
    pub result: std::result::Result<(), String>,
}

/// Loads every program of `object` on its own (maps created, not pinned,
/// nothing attached) and reports what the verifier said of each.
pub fn verify(object: &[u8]) -> Result<Vec<Verdict>> {
    use aya::programs::Program as P;
    let level: u8 = 0;
    let mut ebpf = aya::EbpfLoader::new()
        .override_global("AYA_LOG_LEVEL", &level, false)
        .load(object)
        .context("loading the eBPF object (maps and BTF)")?;
    let mut out = Vec::new();
    for name in crate::loader::ALL_PROGRAMS {
        let result = match ebpf.program_mut(name) {
            None => Err("not in the object".to_string()),
            Some(P::CgroupSockAddr(x)) => x.load().map_err(reason),
            Some(P::CgroupSockopt(x)) => x.load().map_err(reason),
            Some(P::SockOps(x)) => x.load().map_err(reason),
            Some(P::SkLookup(x)) => x.load().map_err(reason),
            Some(P::SkMsg(x)) => x.load().map_err(reason),
            Some(_) => Err("unexpected program type".to_string()),
        };
        out.push(Verdict {
            program: name.to_string(),
            result,
        });
    }
    Ok(out)
}

/// The verifier's reason: the error, and the last lines of its log.
fn reason(e: aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
            format!("{io_error}: {tail}")
        }
        other => other.to_string(),
    }
}

/// `conduit-ebpf verify`: one line per program; fails when any is rejected.
pub fn run_verify() -> Result<()> {
    let verdicts = verify(crate::object::get()?)?;
    let mut rejected = Vec::new();
    for v in &verdicts {
        match &v.result {
            Ok(()) => println!("PROGRAM {} verified", v.program),
            Err(why) => {
                println!("PROGRAM {} rejected: {why}", v.program);
                rejected.push(v.program.as_str());
            }
        }
    }
    if !rejected.is_empty() {
        bail!("the kernel's verifier rejected {}", rejected.join(", "));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn all_present() -> Vec<Feature> {
        [
            "program sk_lookup",
            "program sk_msg",
            "map ringbuf",
            "cgroup v2",
        ]
        .iter()
        .map(|n| Feature {
            name: (*n).into(),
            available: true,
        })
        .collect()
    }

    #[test]
    fn forced_missing_features_are_refused_by_name() {
        // (override, features reported missing)
        let cases: [(&str, &[&str]); 4] = [
            ("", &[]),
            ("program sk_lookup", &["program sk_lookup"]),
            (" map ringbuf , cgroup", &["map ringbuf", "cgroup v2"]),
            ("program", &["program sk_lookup", "program sk_msg"]),
        ];
        for (forced, want) in cases {
            let mut f = all_present();
            mark_missing(&mut f, forced);
            let missing: Vec<&str> = f
                .iter()
                .filter(|f| !f.available)
                .map(|f| f.name.as_str())
                .collect();
            assert_eq!(missing, want, "{forced:?}");
            let refused = require(&f);
            assert_eq!(refused.is_err(), !want.is_empty());
            if let Err(e) = refused {
                for w in want {
                    assert!(e.to_string().contains(w), "{e}");
                }
            }
        }
    }
}
