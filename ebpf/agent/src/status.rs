//! `conduit-ebpf status`: the pinned state at a glance (or as JSON; the
//! schema is documented in docs/ebpf.md). Works whether or not the agent runs.

use crate::features;
use crate::loader::{self, CGROUP_PROGRAMS, open_map};
use crate::netns;
use crate::pins::Pins;
use anyhow::Result;
use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, SockHash};
use aya::programs::ProgramInfo;
use aya::programs::links::FdLink;
use conduit_ebpf_common::{
    self as common, GlobalConfig, IpKey, OrigDst, PodConfig, TupleKey, counters, programs as p,
};
pub use conduit_ebpf_status::{
    CounterStatus, MapStatus, PodStatus, ProgramStatus, Status, pressure, render,
};
use std::path::Path;

fn prog_type(name: &str) -> &'static str {
    match name {
        p::CONNECT4 | p::CONNECT6 | p::GETPEERNAME4 | p::GETPEERNAME6 => "cgroup_sock_addr",
        p::GETSOCKOPT => "cgroup_sockopt",
        p::SOCKOPS => "sock_ops",
        p::SK_LOOKUP => "sk_lookup",
        _ => "sk_msg",
    }
}

fn link_id(path: &Path) -> Option<u32> {
    let link: FdLink = loader::pinned_link(path)?.into();
    link.info().ok().map(|i| i.id())
}

pub fn gather(pin_dir: &Path) -> Status {
    let pins = Pins::new(pin_dir);
    let config: Option<GlobalConfig> = open_map(&pins, common::MAP_CONFIG)
        .ok()
        .and_then(|m| Array::<MapData, GlobalConfig>::try_from(m).ok())
        .and_then(|a| a.get(&0, 0).ok());
    let cgroup = config.as_ref().and_then(conduit_ebpf_status::cgroup_path);
    let fastpath = config.is_some_and(|c| c.flags & common::CONFIG_FASTPATH != 0);
    let mut programs = Vec::new();
    for (name, label) in CGROUP_PROGRAMS {
        let Ok(info) = ProgramInfo::from_pin(pins.prog(name)) else {
            continue;
        };
        let link = link_id(&pins.link(name));
        programs.push(ProgramStatus {
            name: name.into(),
            kind: prog_type(name).into(),
            attach_type: label.into(),
            attach_point: link.and(cgroup.as_ref().map(|c| format!("cgroup:{c}"))),
            id: info.id(),
            link_id: link,
        });
    }
    let pods = pods(&pins);
    if let Ok(info) = ProgramInfo::from_pin(pins.prog(p::SK_LOOKUP)) {
        if pods.iter().all(|p| p.sk_lookup_link_id.is_none()) {
            programs.push(ProgramStatus {
                name: p::SK_LOOKUP.into(),
                kind: "sk_lookup".into(),
                attach_type: "sk_lookup".into(),
                attach_point: None,
                id: info.id(),
                link_id: None,
            });
        }
        for pod in pods.iter().filter(|p| p.sk_lookup_link_id.is_some()) {
            programs.push(ProgramStatus {
                name: p::SK_LOOKUP.into(),
                kind: "sk_lookup".into(),
                attach_type: "sk_lookup".into(),
                attach_point: Some(format!("netns:{}", pod.netns_cookie)),
                id: info.id(),
                link_id: pod.sk_lookup_link_id,
            });
        }
    }
    if let Ok(info) = ProgramInfo::from_pin(pins.prog(p::SK_MSG)) {
        programs.push(ProgramStatus {
            name: p::SK_MSG.into(),
            kind: "sk_msg".into(),
            attach_type: "sk_msg".into(),
            attach_point: fastpath.then(|| format!("sockhash:{}", common::MAP_FASTPATH)),
            id: info.id(),
            link_id: None,
        });
    }
    let attached = CGROUP_PROGRAMS
        .iter()
        .all(|(n, _)| programs.iter().any(|p| p.name == *n && p.link_id.is_some()));
    Status {
        pin_dir: pin_dir.display().to_string(),
        attached,
        cgroup,
        fastpath,
        features: features::probe(),
        programs,
        maps: maps(&pins),
        pods,
        counters: read_counters(&pins),
    }
}

fn pods(pins: &Pins) -> Vec<PodStatus> {
    let Ok(map) = open_map(pins, common::MAP_PODS) else {
        return Vec::new();
    };
    let Ok(map) = HashMap::<MapData, u64, PodConfig>::try_from(map) else {
        return Vec::new();
    };
    let mut out: Vec<PodStatus> = map
        .iter()
        .filter_map(|r| r.ok())
        .map(|(cookie, c)| {
            conduit_ebpf_status::pod_status(
                cookie,
                &c,
                netns::alive(c.proxy_pid, c.proxy_start_time),
                link_id(&pins.pod_link(cookie)),
            )
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

fn count_entries(pins: &Pins, name: &str) -> Option<usize> {
    let map = open_map(pins, name).ok()?;
    Some(match name {
        common::MAP_PODS => HashMap::<MapData, u64, PodConfig>::try_from(map)
            .ok()?
            .keys()
            .count(),
        common::MAP_POD_IPS => HashMap::<MapData, IpKey, u64>::try_from(map)
            .ok()?
            .keys()
            .count(),
        common::MAP_ORIG_BY_COOKIE => HashMap::<MapData, u64, OrigDst>::try_from(map)
            .ok()?
            .keys()
            .count(),
        common::MAP_ORIG_BY_TUPLE => HashMap::<MapData, TupleKey, OrigDst>::try_from(map)
            .ok()?
            .keys()
            .count(),
        common::MAP_EXCLUDE => LpmTrie::<MapData, [u32; 4], u8>::try_from(map)
            .ok()?
            .keys()
            .count(),
        common::MAP_LISTENERS => SockHash::<MapData, u64>::try_from(map).ok()?.keys().count(),
        common::MAP_FASTPATH => SockHash::<MapData, TupleKey>::try_from(map)
            .ok()?
            .keys()
            .count(),
        common::MAP_COUNTERS => PerCpuArray::<MapData, u64>::try_from(map).ok()?.len() as usize,
        common::MAP_CONFIG => Array::<MapData, GlobalConfig>::try_from(map).ok()?.len() as usize,
        _ => return None,
    })
}

fn maps(pins: &Pins) -> Vec<MapStatus> {
    common::PINNED_MAPS
        .iter()
        .filter_map(|name| {
            let info = aya::maps::MapInfo::from_pin(pins.map(name)).ok()?;
            Some(MapStatus {
                name: (*name).into(),
                id: info.id(),
                entries: count_entries(pins, name).unwrap_or(0),
                max_entries: info.max_entries(),
            })
        })
        .collect()
}

fn read_counters(pins: &Pins) -> Vec<CounterStatus> {
    let array = open_map(pins, common::MAP_COUNTERS)
        .ok()
        .and_then(|m| PerCpuArray::<MapData, u64>::try_from(m).ok());
    let mut out = Vec::new();
    for (pi, outcomes) in counters::VALID.iter().enumerate() {
        for o in *outcomes {
            let index = (pi * counters::OUTCOMES) as u32 + *o as u32;
            let value = array
                .as_ref()
                .and_then(|a| a.get(&index, 0).ok())
                .map(|v| v.iter().sum())
                .unwrap_or(0);
            out.push(CounterStatus {
                program: counters::PROGRAM_NAMES[pi].into(),
                outcome: counters::OUTCOME_NAMES[*o as usize].into(),
                value,
            });
        }
    }
    out
}

/// Prints the status; with `check`, fails naming every problem
/// ([`crate::health`], and every map filled to
/// [`conduit_ebpf_status::WARN_FILL_PERCENT`]) so that probes get a non-zero
/// exit status.
pub fn run(pin_dir: &Path, json: bool, check: bool, socket: Option<&Path>) -> Result<()> {
    let s = gather(pin_dir);
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", render(&s));
    }
    if check {
        let mut problems = crate::health::problems(&s, socket);
        // A map near capacity is a problem before it refuses anything.
        problems.extend(pressure(&s));
        if !problems.is_empty() {
            anyhow::bail!("capture is not healthy: {}", problems.join("; "));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_fields_round_trip_and_truncate() {
        let f: [u8; 8] = loader::to_field("default");
        assert_eq!(loader::cstr(&f), "default");
        let f: [u8; 4] = loader::to_field("namespace");
        assert_eq!(loader::cstr(&f), "nam");
    }
}
