//! `conduit-ebpf cleanup`: unpins everything under the pin dir, which
//! detaches the links and frees programs and maps, then waits until the
//! kernel lists none of the programs and maps that were pinned there (other
//! agents with other pin dirs are left alone). It also removes the agent's
//! socket, and the socket's directory when nothing else is in it.

use crate::pins::Pins;
use anyhow::{Context, Result, bail};
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

pub fn run(pin_dir: &Path, socket: &Path) -> Result<()> {
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
    remove_socket(socket)?;
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

/// Removes the agent socket (only if it is a socket) and its directory if
/// that is then empty.
fn remove_socket(socket: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    // A live agent's socket (maybe another agent's, with another pin dir)
    // is never taken away.
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        println!(
            "left {} in place: an agent still accepts registrations there (stop it first)",
            socket.display()
        );
        return Ok(());
    }
    match std::fs::symlink_metadata(socket) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(socket)
                .with_context(|| format!("removing {}", socket.display()))?;
            println!("removed the agent socket {}", socket.display());
        }
        Ok(_) => bail!("{} is not a socket; left alone", socket.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", socket.display())),
    }
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        match std::fs::remove_dir(dir) {
            Ok(()) => println!("removed {}", dir.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                println!("left {} in place: it holds other files", dir.display());
            }
            Err(e) if e.kind() == std::io::ErrorKind::ResourceBusy => {
                println!("left {} in place: it is a mount point", dir.display());
            }
            Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::remove_socket;

    #[test]
    fn removes_the_socket_and_its_empty_directory_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("conduit");
        std::fs::create_dir(&dir).unwrap();
        let sock = dir.join("agent.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        remove_socket(&sock).unwrap();
        assert!(!dir.exists());
        // Already gone: nothing to do.
        remove_socket(&sock).unwrap();

        std::fs::create_dir(&dir).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        std::fs::write(dir.join("other"), b"x").unwrap();
        remove_socket(&sock).unwrap();
        assert!(!sock.exists() && dir.join("other").exists());

        // A live agent's socket stays.
        std::fs::create_dir_all(&dir).unwrap();
        let live = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        remove_socket(&sock).unwrap();
        assert!(sock.exists());
        drop(live);

        // Not a socket: refused, left alone.
        let err = remove_socket(&dir.join("other")).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert!(dir.join("other").exists());
    }
}
