//! cgroup v2: find the mount, make a test's own cgroup tree, empty and
//! remove it.

use crate::wait::wait_cleanup;
use anyhow::{Context, Result, anyhow};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where cgroup v2 is mounted, read from /proc/mounts (`/sys/fs/cgroup` on
/// a pure v2 host, `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_src, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .next()
        .ok_or_else(|| anyhow!("no cgroup2 file system in /proc/mounts"))
}

/// A cgroup (a path under the cgroup v2 mount). Does not own the directory.
#[derive(Debug, Clone)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup id (the inode number of its directory), as BPF sees it.
    pub fn id(&self) -> Result<u64> {
        Ok(fs::metadata(&self.path)
            .with_context(|| format!("stat {}", self.path.display()))?
            .ino())
    }

    /// Creates (if needed) and returns the child cgroup `name`.
    pub fn child(&self, name: &str) -> Result<Cgroup> {
        let path = self.path.join(name);
        if !path.exists() {
            fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        }
        Ok(Cgroup { path })
    }

    /// `cgroup.procs`, opened for writing: writing "0" to it moves the
    /// writer into this cgroup.
    pub fn procs_file(&self) -> Result<fs::File> {
        let p = self.path.join("cgroup.procs");
        fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .with_context(|| format!("opening {}", p.display()))
    }

    /// Pids in this cgroup only (not its children).
    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// True while a process lives in this cgroup or below.
    pub fn populated(&self) -> bool {
        fs::read_to_string(self.path.join("cgroup.events"))
            .map(|s| s.lines().any(|l| l == "populated 1"))
            .unwrap_or(false)
    }
}

/// A test's own cgroup subtree, removed with everything in it on drop.
#[derive(Debug)]
pub struct CgroupTree {
    root: Cgroup,
}

impl CgroupTree {
    /// Creates `<cgroup2 mount>/<relative>`, first removing what a crashed
    /// earlier run left there.
    pub fn create(relative: &str) -> Result<Self> {
        let path = cgroup2_mount()?.join(relative);
        if path.exists() {
            remove_tree(&path)
                .with_context(|| format!("removing stale cgroup {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Self {
            root: Cgroup { path },
        })
    }

    /// The root of the tree (what the agent attaches to in tests).
    pub fn root(&self) -> &Cgroup {
        &self.root
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(self.root.path()) {
            eprintln!(
                "warning: could not remove cgroup {}: {e:#}",
                self.root.path().display()
            );
        }
        // The shared `conduit-tests` parent goes with the last test.
        if let Some(parent) = self.root.path().parent()
            && parent.file_name().is_some_and(|n| n == "conduit-tests")
        {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Kills every process in the subtree at `path`, waits until it is empty and
/// removes its directories, deepest first.
pub fn remove_tree(path: &Path) -> Result<()> {
    let cg = Cgroup {
        path: path.to_owned(),
    };
    if cg.populated() {
        let kill = path.join("cgroup.kill");
        if kill.exists() {
            fs::write(&kill, "1").with_context(|| format!("writing {}", kill.display()))?;
        } else {
            kill_each(path);
        }
        wait_cleanup("the cgroup to empty", Duration::from_secs(10), || {
            if cg.populated() {
                Err(anyhow!("{} still has processes", path.display()))
            } else {
                Ok(())
            }
        })?;
    }
    rmdir_tree(path)
}

fn kill_each(path: &Path) {
    let cg = Cgroup {
        path: path.to_owned(),
    };
    for pid in cg.pids() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                kill_each(&e.path());
            }
        }
    }
}

fn rmdir_tree(path: &Path) -> Result<()> {
    for e in fs::read_dir(path)
        .with_context(|| format!("listing {}", path.display()))?
        .flatten()
    {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            rmdir_tree(&e.path())?;
        }
    }
    fs::remove_dir(path).with_context(|| format!("removing {}", path.display()))
}
