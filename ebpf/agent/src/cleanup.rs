//! `conduit-ebpf cleanup`: unpins everything under the pin dir, which
//! detaches the links and frees programs and maps, then waits until the
//! kernel lists none of the programs and maps that were pinned there (other
//! agents with other pin dirs are left alone).

use crate::pins::Pins;
use anyhow::{Context, Result, bail};
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

pub fn run(pin_dir: &Path) -> Result<()> {
    let pins = Pins::new(pin_dir);
    let (prog_ids, map_ids) = pinned_ids(&pins);
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
        let (progs, maps) = remaining(&prog_ids, &map_ids);
        if progs.is_empty() && maps.is_empty() {
            println!(
                "none of its {} program(s) and {} map(s) remain in the kernel",
                prog_ids.len(),
                map_ids.len()
            );
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

/// Ids of the programs pinned here and of every map they use (including
/// unpinned ones such as the log ring buffer), plus the pinned maps.
fn pinned_ids(pins: &Pins) -> (HashSet<u32>, HashSet<u32>) {
    let mut progs = HashSet::new();
    let mut maps = HashSet::new();
    let Ok(rd) = std::fs::read_dir(&pins.dir) else {
        return (progs, maps);
    };
    for entry in rd.filter_map(|e| e.ok()) {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let prog = if name.starts_with("prog_") {
            aya::programs::ProgramInfo::from_pin(&path).ok()
        } else if name.starts_with("link_") || name.starts_with("pod_") {
            let link: Option<aya::programs::links::FdLink> =
                aya::programs::links::PinnedLink::from_pin(&path)
                    .ok()
                    .map(Into::into);
            link.and_then(|l| l.info().ok()).and_then(|i| {
                aya::programs::loaded_programs()
                    .filter_map(|p| p.ok())
                    .find(|p| p.id() == i.program_id())
            })
        } else {
            if let Ok(info) = aya::maps::MapInfo::from_pin(&path) {
                maps.insert(info.id());
            }
            None
        };
        if let Some(p) = prog {
            progs.insert(p.id());
            maps.extend(p.map_ids().ok().flatten().unwrap_or_default());
        }
    }
    (progs, maps)
}

/// Which of `progs` and `maps` the kernel still lists, by name.
fn remaining(progs: &HashSet<u32>, maps: &HashSet<u32>) -> (Vec<String>, Vec<String>) {
    let name = |n: Option<&str>, id: u32| format!("{} (id {id})", n.unwrap_or("?"));
    let p = aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .filter(|p| progs.contains(&p.id()))
        .map(|p| name(p.name_as_str(), p.id()))
        .collect();
    let m = aya::maps::loaded_maps()
        .filter_map(|m| m.ok())
        .filter(|m| maps.contains(&m.id()))
        .map(|m| name(m.name_as_str(), m.id()))
        .collect();
    (p, m)
}
