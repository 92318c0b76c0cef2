//! Loads the embedded object and attaches it, or adopts what a previous
//! agent pinned, and opens the maps the agent writes.

use crate::pins::Pins;
use anyhow::{Context, Result, anyhow};
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, SockHash};
use aya::programs::links::{CgroupAttachMode, FdLink, PinnedLink};
use aya::programs::{SkLookup, SkMsg};
use aya::{Ebpf, EbpfLoader};
use conduit_ebpf_common::{self as common, GlobalConfig, IpKey, PodConfig, programs as p};
use std::fs::File;
use std::path::Path;

/// How each cgroup program attaches: (program, attach label).
pub const CGROUP_PROGRAMS: [(&str, &str); 6] = [
    (p::CONNECT4, "cgroup/connect4"),
    (p::CONNECT6, "cgroup/connect6"),
    (p::GETPEERNAME4, "cgroup/getpeername4"),
    (p::GETPEERNAME6, "cgroup/getpeername6"),
    (p::GETSOCKOPT, "cgroup/getsockopt"),
    (p::SOCKOPS, "sockops"),
];

/// Every program, pinned as `prog_<name>`.
pub const ALL_PROGRAMS: [&str; 8] = [
    p::CONNECT4,
    p::CONNECT6,
    p::GETPEERNAME4,
    p::GETPEERNAME6,
    p::GETSOCKOPT,
    p::SOCKOPS,
    p::SK_LOOKUP,
    p::SK_MSG,
];

/// The maps the agent writes.
pub struct NodeMaps {
    pub pods: HashMap<MapData, u64, PodConfig>,
    pub pod_ips: HashMap<MapData, IpKey, u64>,
    pub listeners: SockHash<MapData, u64>,
    pub exclude: LpmTrie<MapData, [u32; 4], u8>,
    pub config: Array<MapData, GlobalConfig>,
}

pub struct Loaded {
    pub maps: NodeMaps,
    pub sk_lookup: SkLookup,
    /// Whether an earlier agent's pinned state was adopted.
    pub adopted: bool,
    /// Keeps the freshly loaded object (and its log buffer) alive.
    pub _ebpf: Option<Ebpf>,
}

pub struct LoadOptions<'a> {
    pub pins: &'a Pins,
    pub cgroup: &'a Path,
    pub object: &'a [u8],
    pub bpf_log: bool,
}

/// Everything a running capture needs is pinned.
pub fn complete(pins: &Pins) -> bool {
    ALL_PROGRAMS.iter().all(|n| pins.prog(n).exists())
        && CGROUP_PROGRAMS.iter().all(|(n, _)| pins.link(n).exists())
        && common::PINNED_MAPS.iter().all(|m| pins.map(m).exists())
}

pub fn load_or_adopt(opts: &LoadOptions<'_>) -> Result<Loaded> {
    let pins = opts.pins;
    if complete(pins) {
        let config = open_map(pins, common::MAP_CONFIG)?;
        let config: Array<MapData, GlobalConfig> = Array::try_from(config)?;
        let attached_at = config
            .get(&0, 0)
            .map(|c| cstr(&c.cgroup_path))
            .unwrap_or_default();
        if !attached_at.is_empty() && Path::new(&attached_at) != opts.cgroup {
            return Err(anyhow!(
                "capture is attached at {attached_at}, not {}: run `conduit-ebpf cleanup --pin-dir {}` first to move it",
                opts.cgroup.display(),
                pins.dir.display()
            ));
        }
        tracing::info!(pin_dir = %pins.dir.display(), cgroup = %attached_at, "adopting the pinned programs, links and maps");
        let sk_lookup = SkLookup::from_pin(pins.prog(p::SK_LOOKUP))
            .context("opening the pinned sk_lookup program")?;
        return Ok(Loaded {
            maps: open_maps(pins)?,
            sk_lookup,
            adopted: true,
            _ebpf: None,
        });
    }
    // Partial state (e.g. an agent killed while loading): start over, but
    // keep the maps (and so the enrolled pods) and the pods' links.
    for name in ALL_PROGRAMS {
        let _ = std::fs::remove_file(pins.prog(name));
    }
    for (name, _) in CGROUP_PROGRAMS {
        let _ = std::fs::remove_file(pins.link(name));
    }
    let level: u8 = if opts.bpf_log { 0xff } else { 0 };
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&pins.dir)
        .override_global("AYA_LOG_LEVEL", &level, false)
        .load(opts.object)
        .context("loading the eBPF object")?;
    if opts.bpf_log {
        match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => spawn_log_reader(logger),
            Err(e) => tracing::warn!(error = %e, "eBPF logs unavailable"),
        }
    }
    let cgroup = File::open(opts.cgroup)
        .with_context(|| format!("opening cgroup {}", opts.cgroup.display()))?;
    for (name, label) in CGROUP_PROGRAMS {
        attach_cgroup(&mut ebpf, pins, name, &cgroup)
            .with_context(|| format!("attaching {label} ({name})"))?;
        tracing::info!(program = name, attach = label, cgroup = %opts.cgroup.display(), "attached");
    }
    for name in [p::SK_LOOKUP, p::SK_MSG] {
        let prog = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
        match prog {
            aya::programs::Program::SkLookup(x) => {
                x.load().with_context(|| format!("loading {name}"))?;
                x.pin(pins.prog(name))?;
            }
            aya::programs::Program::SkMsg(x) => {
                x.load().with_context(|| format!("loading {name}"))?;
                x.pin(pins.prog(name))?;
            }
            _ => return Err(anyhow!("program {name} has an unexpected type")),
        }
    }
    let sk_lookup = SkLookup::from_pin(pins.prog(p::SK_LOOKUP))?;
    Ok(Loaded {
        maps: open_maps(pins)?,
        sk_lookup,
        adopted: false,
        _ebpf: Some(ebpf),
    })
}

fn attach_cgroup(ebpf: &mut Ebpf, pins: &Pins, name: &str, cgroup: &File) -> Result<()> {
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
    let link: FdLink = match prog {
        aya::programs::Program::CgroupSockAddr(x) => {
            x.load()?;
            x.pin(pins.prog(name))?;
            let id = x.attach(cgroup, CgroupAttachMode::Single)?;
            x.take_link(id)?.try_into()?
        }
        aya::programs::Program::CgroupSockopt(x) => {
            x.load()?;
            x.pin(pins.prog(name))?;
            use std::os::fd::AsFd;
            let link = crate::sys::link_create(
                x.fd()?.as_fd(),
                cgroup.as_fd(),
                crate::sys::BPF_CGROUP_GETSOCKOPT,
            )
            .context("bpf_link_create")?;
            crate::sys::obj_pin(link.as_fd(), &pins.link(name)).context("pinning the link")?;
            return Ok(());
        }
        aya::programs::Program::SockOps(x) => {
            x.load()?;
            x.pin(pins.prog(name))?;
            let id = x.attach(cgroup, CgroupAttachMode::Single)?;
            x.take_link(id)?.try_into()?
        }
        _ => return Err(anyhow!("program {name} has an unexpected type")),
    };
    link.pin(pins.link(name))?;
    Ok(())
}

/// Attaches (or re-attaches, which replaces) the pinned sk_msg program to the
/// fast-path sockhash. The attachment belongs to the map from then on: it
/// stays while the map is pinned, whether or not this process lives.
pub fn attach_fastpath(pins: &Pins) -> Result<()> {
    let mut prog = SkMsg::from_pin(pins.prog(p::SK_MSG))?;
    let map: SockHash<MapData, common::TupleKey> =
        SockHash::try_from(open_map(pins, common::MAP_FASTPATH)?)?;
    let id = prog.attach(map.fd())?;
    let link = prog.take_link(id)?;
    // Dropping the link would detach the program; the attachment must
    // outlive the agent (cleanup frees it with the map).
    std::mem::forget(link);
    Ok(())
}

pub fn open_map(pins: &Pins, name: &str) -> Result<Map> {
    let data =
        MapData::from_pin(pins.map(name)).with_context(|| format!("opening pinned map {name}"))?;
    Ok(Map::from_map_data(data)?)
}

fn open_maps(pins: &Pins) -> Result<NodeMaps> {
    Ok(NodeMaps {
        pods: HashMap::try_from(open_map(pins, common::MAP_PODS)?)?,
        pod_ips: HashMap::try_from(open_map(pins, common::MAP_POD_IPS)?)?,
        listeners: SockHash::try_from(open_map(pins, common::MAP_LISTENERS)?)?,
        exclude: LpmTrie::try_from(open_map(pins, common::MAP_EXCLUDE)?)?,
        config: Array::try_from(open_map(pins, common::MAP_CONFIG)?)?,
    })
}

/// A NUL-terminated byte field as text.
pub use conduit_ebpf_status::cstr;

/// Copies `s` into a fixed field, truncated, NUL-padded.
pub fn to_field<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let n = s.len().min(N - 1);
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

/// Forwards the programs' aya-log records to this process's log, from a
/// thread of its own.
fn spawn_log_reader<T: log::Log + Send + Sync + 'static>(mut logger: aya_log::EbpfLogger<T>) {
    std::thread::spawn(move || {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        loop {
            let ready = {
                let mut fds = [PollFd::new(logger.as_fd(), PollFlags::POLLIN)];
                poll(&mut fds, PollTimeout::from(1000u16)).unwrap_or(0)
            };
            if ready > 0 {
                logger.flush();
            }
        }
    });
    tracing::info!("eBPF debug logs enabled");
}

/// Opens a pinned link, if present.
pub fn pinned_link(path: &Path) -> Option<PinnedLink> {
    PinnedLink::from_pin(path).ok()
}
