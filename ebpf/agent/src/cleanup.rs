//! `conduit-ebpf cleanup`: unpins everything under the pin dir, which
//! detaches the links and frees programs and maps, then waits until the
//! kernel lists none of ours.

use crate::pins::Pins;
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::time::{Duration, Instant};

/// Kernel names of our programs and maps (truncated to 15 bytes by the kernel).
pub fn is_ours(name: &str) -> bool {
    name.starts_with("conduit_") || name.starts_with("CONDUIT_")
}

pub fn run(pin_dir: &Path) -> Result<()> {
    let pins = Pins::new(pin_dir);
    let mut removed = 0;
    if pin_dir.exists() {
        for entry in std::fs::read_dir(&pins.dir)
            .with_context(|| format!("reading {}", pin_dir.display()))?
        {
            let entry = entry?;
            std::fs::remove_file(entry.path())
                .with_context(|| format!("unpinning {}", entry.path().display()))?;
            removed += 1;
        }
        std::fs::remove_dir(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))?;
    }
    println!("unpinned {removed} object(s) from {}", pin_dir.display());
    // Freeing happens asynchronously in the kernel; wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (progs, maps) = remaining();
        if progs.is_empty() && maps.is_empty() {
            println!("no conduit programs or maps remain in the kernel");
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "still loaded after unpinning: programs [{}], maps [{}]: is a conduit-ebpf agent still running (stop it first), or another pin dir in use?",
                progs.join(", "),
                maps.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn remaining() -> (Vec<String>, Vec<String>) {
    let progs = aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .filter_map(|p| p.name_as_str().map(str::to_string))
        .filter(|n| is_ours(n))
        .collect();
    let maps = aya::maps::loaded_maps()
        .filter_map(|m| m.ok())
        .filter_map(|m| m.name_as_str().map(str::to_string))
        .filter(|n| is_ours(n))
        .collect();
    (progs, maps)
}
