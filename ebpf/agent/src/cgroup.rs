//! Finding a process's cgroup v2 directory, also from inside a container.
//!
//! `/proc/<pid>/cgroup` names the cgroup relative to the **reader's** cgroup
//! namespace: an agent in a pod (its own cgroup namespace) reads a proxy's
//! cgroup as `/../../kubepods/.../<container>`. `/proc/self/mountinfo`
//! gives each cgroup2 mount's root relative to that same namespace (the
//! node's `/sys/fs/cgroup` mounted into the agent shows as `/../..`). So
//! the directory is found lexically: the mount whose root is the longest
//! prefix of the process's path, joined with the rest of the path.
//!
//! Lexical prefixes only work when both paths are spelled from a common
//! root: `/../proxy` (a sibling cgroup) is not under a mount shown as
//! `/../..` although it is in it. So the agent first enters the node's
//! cgroup namespace ([`enter_node_namespace`], through `/proc/1`, which is
//! the node's init with `hostPID`, or `agent --node-cgroup-ns`): then every path and mount root is
//! absolute. Without it (no access to `/proc/1`, e.g. under an AppArmor
//! profile that forbids reading an unconfined process), the agent locates
//! its namespace root in the node's hierarchy by inode
//! ([`namespace_root`]: its own `/sys/fs/cgroup` mount is that directory)
//! and resolves from there; failing that, the error names the mounts.

use anyhow::{Context, Result, anyhow};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// Default for `agent --node-cgroup-ns`: the node's init, which the agent
/// sees with `hostPID`.
pub const NODE_CGROUP_NS: &str = "/proc/1/ns/cgroup";

/// Moves the calling thread (call it before starting any: threads inherit
/// it) into the cgroup namespace `ns` (e.g. `/proc/1/ns/cgroup`) when that
/// differs from ours. Returns whether it switched.
pub fn enter_node_namespace(ns: &std::path::Path) -> Result<bool> {
    let ours = std::fs::metadata("/proc/self/ns/cgroup")
        .context("reading /proc/self/ns/cgroup")?
        .ino();
    let node = std::fs::metadata(ns)
        .with_context(|| {
            format!(
                "reading {} (is the agent in the node's pid namespace?)",
                ns.display()
            )
        })?
        .ino();
    if ours == node {
        return Ok(false);
    }
    let file = std::fs::File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWCGROUP)
        .context("entering the node's cgroup namespace (setns needs CAP_SYS_ADMIN)")?;
    Ok(true)
}

/// A cgroup v2 mount: its root inside the hierarchy (as the agent's cgroup
/// namespace sees it) and where it is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub root: String,
    pub point: PathBuf,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup2 mounts listed in a mountinfo text, in order.
pub fn cgroup2_mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let mut f = left.split_whitespace();
            let root = f.nth(3)?;
            let point = f.next()?;
            Some(Mount {
                root: unescape(root),
                point: PathBuf::from(unescape(point)),
            })
        })
        .collect()
}

/// The mount closest to the hierarchy's root (in a container with its own
/// cgroup namespace, the node's root mounted in, not the container's own
/// cgroup); the first such mount listed.
pub fn topmost(mounts: &[Mount]) -> Option<&Mount> {
    mounts.iter().min_by_key(|m| {
        let c = components(&m.root);
        let up = c.iter().filter(|x| **x == "..").count();
        (c.len() - up, std::cmp::Reverse(up))
    })
}

/// The cgroup v2 line (`0::<path>`) of a `/proc/<pid>/cgroup` text.
pub fn v2_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Path components with `.` and `x/..` folded; leading `..` kept (they climb
/// above the reader's namespace root).
fn components(path: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." if out.last().is_some_and(|l| *l != "..") => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// Candidate directories for the cgroup `path` (as read from
/// `/proc/<pid>/cgroup`), best first: under each mount whose root contains
/// it, the longest root first.
pub fn candidates(path: &str, mounts: &[Mount]) -> Vec<PathBuf> {
    let want = components(path);
    let mut found: Vec<(usize, PathBuf)> = mounts
        .iter()
        .filter_map(|m| {
            let root = components(&m.root);
            // The rest must not climb above the mount's root.
            let inside = want.starts_with(&root) && want.get(root.len()) != Some(&"..");
            inside.then(|| {
                let mut dir = m.point.clone();
                dir.extend(&want[root.len()..]);
                (root.len(), dir)
            })
        })
        .collect();
    // Stable: among equal roots the first mount listed wins.
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found.into_iter().map(|(_, d)| d).collect()
}

/// The cgroup v2 directory of `pid`, and its path as `/proc/<pid>/cgroup`
/// gives it.
pub fn of_pid(pid: u32) -> Result<(PathBuf, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("reading /proc/{pid}/cgroup"))?;
    let path = v2_path(&text)
        .ok_or_else(|| anyhow!("pid {pid} has no cgroup v2 membership"))?
        .to_string();
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mounts = cgroup2_mounts(&mountinfo);
    resolve(&path, &mounts).map(|d| (d, path.clone())).ok_or_else(|| {
        let seen: Vec<String> = mounts
            .iter()
            .map(|m| format!("{} (root {})", m.point.display(), m.root))
            .collect();
        anyhow!(
            "the proxy's cgroup {path} is under none of the cgroup v2 mounts the agent sees [{}]: mount the node's cgroup v2 root into the agent (see docs/kubernetes.md)",
            seen.join(", ")
        )
    })
}

/// The existing directory of cgroup `path` under `mounts`. A path above
/// the reader's namespace root (`/../x`) is first made absolute when the
/// namespace root can be located ([`namespace_root`]).
pub fn resolve(path: &str, mounts: &[Mount]) -> Option<PathBuf> {
    if let Some(d) = candidates(path, mounts).into_iter().find(|d| d.is_dir()) {
        return Some(d);
    }
    if components(path).first() != Some(&"..") {
        return None;
    }
    let ns = namespace_root(mounts)?;
    let abs = |p: &str| format!("{ns}/{p}");
    let mounts: Vec<Mount> = mounts
        .iter()
        .map(|m| Mount {
            root: abs(&m.root),
            point: m.point.clone(),
        })
        .collect();
    candidates(&abs(path), &mounts)
        .into_iter()
        .find(|d| d.is_dir())
}

/// Most directories [`namespace_root`] looks at.
const SEARCH_LIMIT: usize = 100_000;

/// Where the reader's cgroup namespace root lies in the hierarchy (e.g.
/// `/kubepods/pod1/ctr`), found without `setns`: a mount showing root `/`
/// is that directory; a mount showing `/../../..` is the directory so many
/// levels up; the namespace root is the directory that deep below the
/// latter with the former's inode.
pub fn namespace_root(mounts: &[Mount]) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let own = mounts.iter().find(|m| components(&m.root).is_empty())?;
    let own = std::fs::metadata(&own.point).ok()?;
    let top = mounts
        .iter()
        .filter(|m| {
            let c = components(&m.root);
            !c.is_empty() && c.iter().all(|x| *x == "..")
        })
        .max_by_key(|m| components(&m.root).len())?;
    let depth = components(&top.root).len();
    let mut budget = SEARCH_LIMIT;
    let found = find_dir(&top.point, depth, (own.dev(), own.ino()), &mut budget)?;
    Some(format!("/{}", found.join("/")))
}

/// The names leading from `dir`, exactly `depth` levels down, to the
/// directory with (device, inode) `id`.
fn find_dir(
    dir: &std::path::Path,
    depth: usize,
    id: (u64, u64),
    budget: &mut usize,
) -> Option<Vec<String>> {
    use std::os::unix::fs::MetadataExt;
    if depth == 0 {
        let m = std::fs::metadata(dir).ok()?;
        return ((m.dev(), m.ino()) == id).then(Vec::new);
    }
    for entry in std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok()) {
        if *budget == 0 {
            return None;
        }
        *budget -= 1;
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if let Some(mut rest) = find_dir(&entry.path(), depth - 1, id, budget) {
            rest.insert(0, entry.file_name().to_string_lossy().into_owned());
            return Some(rest);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "\
24 1 0:22 / /sys rw,nosuid - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
";

    /// An agent container in its own cgroup namespace: its /sys/fs/cgroup is
    /// its own cgroup, the node's root is mounted at /host/sys/fs/cgroup.
    const POD: &str = "\
612 611 0:51 / / rw - overlay overlay rw
640 612 0:26 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw
641 612 0:26 /../../../.. /host/sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw
642 612 0:26 /../../../../system.slice /host/my\\040slice rw - cgroup2 cgroup2 rw
";

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn parses_cgroup2_mounts_with_escapes() {
        assert_eq!(
            cgroup2_mounts(NODE),
            vec![Mount {
                root: "/".into(),
                point: p("/sys/fs/cgroup")
            }]
        );
        let m = cgroup2_mounts(POD);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].root, "/../../../..");
        assert_eq!(m[2].point, p("/host/my slice"));
        assert_eq!(unescape("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn topmost_prefers_the_node_root() {
        assert_eq!(
            topmost(&cgroup2_mounts(NODE)).unwrap().point,
            p("/sys/fs/cgroup")
        );
        assert_eq!(
            topmost(&cgroup2_mounts(POD)).unwrap().point,
            p("/host/sys/fs/cgroup")
        );
        assert!(topmost(&[]).is_none());
    }

    #[test]
    fn reads_the_v2_line() {
        assert_eq!(
            v2_path("12:cpu:/x\n0::/kubepods/pod1/c1\n"),
            Some("/kubepods/pod1/c1")
        );
        assert_eq!(v2_path("12:cpu:/x\n"), None);
    }

    #[test]
    fn on_the_node_paths_join_the_mount() {
        let m = cgroup2_mounts(NODE);
        assert_eq!(
            candidates("/kubepods/pod1/c1", &m),
            vec![p("/sys/fs/cgroup/kubepods/pod1/c1")]
        );
        assert_eq!(candidates("/", &m), vec![p("/sys/fs/cgroup")]);
    }

    #[test]
    fn from_a_pod_paths_above_the_namespace_use_the_node_mount() {
        let m = cgroup2_mounts(POD);
        // A proxy in another pod: only the node's root mount covers it.
        assert_eq!(
            candidates("/../../../../kubepods/besteffort/pod9/c9", &m),
            vec![p("/host/sys/fs/cgroup/kubepods/besteffort/pod9/c9")]
        );
        // The longest root wins when several cover the path.
        assert_eq!(
            candidates("/../../../../system.slice/x.service", &m),
            vec![
                p("/host/my slice/x.service"),
                p("/host/sys/fs/cgroup/system.slice/x.service")
            ]
        );
        // A process inside the agent's own namespace: its own mount.
        assert_eq!(candidates("/sub", &m), vec![p("/sys/fs/cgroup/sub")]);
    }

    #[test]
    fn dot_dot_inside_a_path_folds() {
        assert_eq!(components("/a/b/../c/./"), vec!["a", "c"]);
        assert_eq!(components("/../../x/.."), vec!["..", ".."]);
        let m = cgroup2_mounts(POD);
        assert_eq!(
            candidates("/../../../../a/../b", &m)[0],
            p("/host/sys/fs/cgroup/b")
        );
        // Above every mount: nothing.
        assert!(candidates("/../../../../../x", &m).is_empty());
        assert!(candidates("/x", &[]).is_empty());
    }

    /// A pod's view without `setns`: the node's hierarchy mounted with root
    /// `/../../..`, the agent's own cgroup mounted with root `/`.
    #[test]
    fn locates_the_namespace_root_by_inode() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path();
        for d in [
            "kubepods/pod1/agent",
            "kubepods/pod2/proxy",
            "kubepods/pod3/x",
        ] {
            std::fs::create_dir_all(host.join(d)).unwrap();
        }
        let mounts = vec![
            Mount {
                root: "/../../..".into(),
                point: host.to_path_buf(),
            },
            Mount {
                root: "/".into(),
                point: host.join("kubepods/pod1/agent"),
            },
        ];
        assert_eq!(
            namespace_root(&mounts).as_deref(),
            Some("/kubepods/pod1/agent")
        );
        assert_eq!(
            resolve("/../../pod2/proxy", &mounts),
            Some(host.join("kubepods/pod2/proxy"))
        );
        // Inside the namespace: the own mount, directly.
        std::fs::create_dir(host.join("kubepods/pod1/agent/sub")).unwrap();
        assert_eq!(
            resolve("/sub", &mounts),
            Some(host.join("kubepods/pod1/agent/sub"))
        );
        assert_eq!(resolve("/../../pod2/gone", &mounts), None);
        // Without a mount of the namespace root there is nothing to anchor.
        assert_eq!(namespace_root(&mounts[..1]), None);
        assert_eq!(resolve("/../../pod2/proxy", &mounts[..1]), None);
    }

    #[test]
    fn finds_our_own_cgroup_directory() {
        let Ok((dir, path)) = of_pid(std::process::id()) else {
            // No cgroup v2 on this machine: nothing to resolve.
            assert!(
                !std::fs::read_to_string("/proc/self/mountinfo")
                    .unwrap()
                    .contains(" - cgroup2 ")
            );
            return;
        };
        assert!(dir.is_dir(), "{}", dir.display());
        assert!(
            dir.ends_with(path.trim_start_matches('/')),
            "{} {path}",
            dir.display()
        );
    }
}
