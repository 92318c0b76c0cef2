//! Layout of the pin directory, and making sure it is on a bpffs.
//!
//! ```text
//! <pin-dir>/CONDUIT_*            maps (pinned by name by the loader)
//! <pin-dir>/prog_<program>       programs
//! <pin-dir>/link_<program>       cgroup attachments (bpf_link)
//! <pin-dir>/pod_<netns cookie>   a pod's sk_lookup attachment (bpf_link)
//! ```

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

const BPF_FS_MAGIC: u32 = 0xcafe4a11;

#[derive(Clone, Debug)]
pub struct Pins {
    pub dir: PathBuf,
}

impl Pins {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }
    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    pub fn prog(&self, name: &str) -> PathBuf {
        self.dir.join(format!("prog_{name}"))
    }
    pub fn link(&self, name: &str) -> PathBuf {
        self.dir.join(format!("link_{name}"))
    }
    pub fn pod_link(&self, netns_cookie: u64) -> PathBuf {
        self.dir.join(format!("pod_{netns_cookie}"))
    }
    /// Netns cookies of the pods that have a pinned sk_lookup link.
    pub fn pod_links(&self) -> Vec<u64> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("pod_")?.parse().ok())
            .collect()
    }
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 as u32 == BPF_FS_MAGIC)
}

/// Creates the pin dir on a bpffs, mounting bpffs at /sys/fs/bpf when the
/// directory would be there and it is not mounted yet.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if dir.starts_with(root) && !is_bpffs(root) {
        std::fs::create_dir_all(root).ok();
        nix::mount::mount(
            Some("bpf"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .context("mounting bpffs at /sys/fs/bpf (needs root)")?;
        tracing::info!("mounted bpffs at /sys/fs/bpf");
    }
    let parent = dir.parent().unwrap_or(dir);
    if !is_bpffs(parent) && !is_bpffs(dir) {
        bail!(
            "{} is not on a bpf filesystem: mount one with `mount -t bpf bpf {}`",
            dir.display(),
            parent.display()
        );
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating pin directory {}", dir.display()))?;
    Ok(())
}
