//! `conduit-ebpf status`: the pinned state at a glance (or as JSON; the
//! schema is documented in docs/ebpf.md). Works whether or not the agent runs.

use crate::enrol::key_ip;
use crate::features::{self, Feature};
use crate::loader::{self, CGROUP_PROGRAMS, cstr, open_map};
use crate::netns;
use crate::pins::Pins;
use anyhow::Result;
use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, SockHash};
use aya::programs::ProgramInfo;
use aya::programs::links::FdLink;
use conduit_ebpf_common::{
    self as common, GlobalConfig, IpKey, OrigDst, PodConfig, TupleKey, counters, programs as p,
};
use serde::Serialize;
use std::net::IpAddr;
use std::path::Path;

#[derive(Debug, Serialize)]
pub struct Status {
    pub pin_dir: String,
    /// Every cgroup program is attached (capture is on for enrolled pods).
    pub attached: bool,
    pub cgroup: Option<String>,
    pub fastpath: bool,
    pub features: Vec<Feature>,
    pub programs: Vec<ProgramStatus>,
    pub maps: Vec<MapStatus>,
    pub pods: Vec<PodStatus>,
    pub counters: Vec<CounterStatus>,
}

#[derive(Debug, Serialize)]
pub struct ProgramStatus {
    pub name: String,
    /// Kernel program type: cgroup_sock_addr, sock_ops, cgroup_sockopt, sk_lookup, sk_msg.
    #[serde(rename = "type")]
    pub kind: String,
    /// cgroup/connect4, ..., sockops, sk_lookup, sk_msg.
    pub attach_type: String,
    /// `cgroup:<path>`, `netns:<cookie>` or `sockhash:CONDUIT_FASTSK`; null when not attached.
    pub attach_point: Option<String>,
    pub id: u32,
    pub link_id: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct MapStatus {
    pub name: String,
    pub id: u32,
    pub entries: usize,
    pub max_entries: u32,
}

#[derive(Debug, Serialize)]
pub struct PodStatus {
    pub name: String,
    pub namespace: String,
    pub netns_cookie: u64,
    pub pod_ips: Vec<IpAddr>,
    pub proxy_pid: u32,
    pub proxy_uid: u32,
    pub proxy_cgroup_id: u64,
    pub proxy_alive: bool,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub admin_port: u16,
    pub skip_inbound_ports: Vec<u16>,
    pub skip_outbound_ports: Vec<u16>,
    pub sk_lookup_link_id: Option<u32>,
    pub enrolled_at: u64,
}

#[derive(Debug, Serialize)]
pub struct CounterStatus {
    pub program: String,
    pub outcome: String,
    pub value: u64,
}

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
    let cgroup = config
        .map(|c| cstr(&c.cgroup_path))
        .filter(|s| !s.is_empty());
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
        .map(|(cookie, c)| PodStatus {
            name: cstr(&c.name),
            namespace: cstr(&c.namespace),
            netns_cookie: cookie,
            pod_ips: c.ips[..(c.ips_len as usize).min(c.ips.len())]
                .iter()
                .map(key_ip)
                .collect(),
            proxy_pid: c.proxy_pid,
            proxy_uid: c.proxy_uid,
            proxy_cgroup_id: c.proxy_cgroup_id,
            proxy_alive: netns::alive(c.proxy_pid, c.proxy_start_time),
            outbound_port: c.outbound_port,
            inbound_port: c.inbound_port,
            admin_port: c.admin_port,
            skip_inbound_ports: c.skip_inbound
                [..(c.skip_inbound_len as usize).min(c.skip_inbound.len())]
                .to_vec(),
            skip_outbound_ports: c.skip_outbound
                [..(c.skip_outbound_len as usize).min(c.skip_outbound.len())]
                .to_vec(),
            sk_lookup_link_id: link_id(&pins.pod_link(cookie)),
            enrolled_at: c.enrolled_at,
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
/// ([`crate::health`]) so that probes get a non-zero exit status.
pub fn run(pin_dir: &Path, json: bool, check: bool, socket: Option<&Path>) -> Result<()> {
    let s = gather(pin_dir);
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", render(&s));
    }
    if check {
        let problems = crate::health::problems(&s, socket);
        if !problems.is_empty() {
            anyhow::bail!("capture is not healthy: {}", problems.join("; "));
        }
    }
    Ok(())
}

pub fn render(s: &Status) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let state = if s.attached {
        "attached"
    } else {
        "NOT attached"
    };
    let _ = writeln!(
        o,
        "capture: {state}  cgroup: {}  pin dir: {}  fast path: {}",
        s.cgroup.as_deref().unwrap_or("-"),
        s.pin_dir,
        if s.fastpath { "on" } else { "off" }
    );
    let missing: Vec<&str> = s
        .features
        .iter()
        .filter(|f| !f.available)
        .map(|f| f.name.as_str())
        .collect();
    let _ = writeln!(
        o,
        "kernel:  {} features probed, {}",
        s.features.len(),
        if missing.is_empty() {
            "all present".to_string()
        } else {
            format!("MISSING: {}", missing.join(", "))
        }
    );
    let _ = writeln!(
        o,
        "\nPROGRAMS\n  {:<22} {:<17} {:<20} {:>6} {:>6}  ATTACH POINT",
        "NAME", "TYPE", "ATTACH", "ID", "LINK"
    );
    for p in &s.programs {
        let _ = writeln!(
            o,
            "  {:<22} {:<17} {:<20} {:>6} {:>6}  {}",
            p.name,
            p.kind,
            p.attach_type,
            p.id,
            p.link_id.map(|l| l.to_string()).unwrap_or("-".into()),
            p.attach_point.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(
        o,
        "\nMAPS\n  {:<18} {:>6} {:>9} {:>9}",
        "NAME", "ID", "ENTRIES", "MAX"
    );
    for m in &s.maps {
        let _ = writeln!(
            o,
            "  {:<18} {:>6} {:>9} {:>9}",
            m.name, m.id, m.entries, m.max_entries
        );
    }
    let _ = writeln!(o, "\nPODS ({})", s.pods.len());
    if !s.pods.is_empty() {
        let _ = writeln!(
            o,
            "  {:<30} {:<22} {:>20} {:>8} {:>6} {:<6} PORTS out/in/admin",
            "NAMESPACE/NAME", "IPS", "NETNS COOKIE", "PROXY", "UID", "ALIVE"
        );
    }
    for p in &s.pods {
        let ips: Vec<String> = p.pod_ips.iter().map(|i| i.to_string()).collect();
        let _ = writeln!(
            o,
            "  {:<30} {:<22} {:>20} {:>8} {:>6} {:<6} {}/{}/{}",
            format!("{}/{}", p.namespace, p.name),
            ips.join(","),
            p.netns_cookie,
            p.proxy_pid,
            p.proxy_uid,
            if p.proxy_alive { "yes" } else { "NO" },
            p.outbound_port,
            p.inbound_port,
            p.admin_port
        );
    }
    let _ = writeln!(o, "\nCOUNTERS (non-zero)");
    let mut any = false;
    for c in s.counters.iter().filter(|c| c.value > 0) {
        any = true;
        let _ = writeln!(o, "  {:<14} {:<22} {:>12}", c.program, c.outcome, c.value);
    }
    if !any {
        let _ = writeln!(o, "  (none)");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_pods_programs_and_only_nonzero_counters() {
        let s = Status {
            pin_dir: "/sys/fs/bpf/conduit".into(),
            attached: true,
            cgroup: Some("/sys/fs/cgroup".into()),
            fastpath: false,
            features: vec![Feature {
                name: "program sk_lookup".into(),
                available: false,
            }],
            programs: vec![ProgramStatus {
                name: p::CONNECT4.into(),
                kind: "cgroup_sock_addr".into(),
                attach_type: "cgroup/connect4".into(),
                attach_point: Some("cgroup:/sys/fs/cgroup".into()),
                id: 7,
                link_id: Some(9),
            }],
            maps: vec![MapStatus {
                name: common::MAP_PODS.into(),
                id: 3,
                entries: 1,
                max_entries: 1024,
            }],
            pods: vec![PodStatus {
                name: "web-1".into(),
                namespace: "default".into(),
                netns_cookie: 4242,
                pod_ips: vec!["10.1.2.3".parse().unwrap()],
                proxy_pid: 77,
                proxy_uid: 1337,
                proxy_cgroup_id: 5,
                proxy_alive: true,
                outbound_port: 4140,
                inbound_port: 4143,
                admin_port: 4191,
                skip_inbound_ports: vec![],
                skip_outbound_ports: vec![],
                sk_lookup_link_id: Some(11),
                enrolled_at: 0,
            }],
            counters: vec![
                CounterStatus {
                    program: "connect4".into(),
                    outcome: "captured".into(),
                    value: 3,
                },
                CounterStatus {
                    program: "connect6".into(),
                    outcome: "captured".into(),
                    value: 0,
                },
            ],
        };
        let t = render(&s);
        assert!(t.contains("capture: attached"), "{t}");
        assert!(t.contains("MISSING: program sk_lookup"), "{t}");
        assert!(
            t.contains("conduit_connect4") && t.contains("cgroup:/sys/fs/cgroup"),
            "{t}"
        );
        assert!(
            t.contains("default/web-1") && t.contains("10.1.2.3") && t.contains("4140/4143/4191"),
            "{t}"
        );
        assert!(t.contains("connect4") && !t.contains("connect6"), "{t}");
        let json: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(json["programs"][0]["type"], "cgroup_sock_addr");
        assert_eq!(json["pods"][0]["pod_ips"][0], "10.1.2.3");
    }

    #[test]
    fn fixed_fields_round_trip_and_truncate() {
        let f: [u8; 8] = loader::to_field("default");
        assert_eq!(cstr(&f), "default");
        let f: [u8; 4] = loader::to_field("namespace");
        assert_eq!(cstr(&f), "nam");
    }
}
