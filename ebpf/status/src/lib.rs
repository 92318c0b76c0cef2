//! What `conduit-ebpf status` shows, without I/O: the status types (its
//! `--json` schema, which serialises and reads back), the decoding of the
//! pinned records (an enrolled pod, the node settings) into them, the map
//! fill levels and their warnings, and the table.
//!
//! A crate of its own so that what reads the JSON uses the types that write
//! it: the agent (`conduit-ebpf status`), the end-to-end harness
//! (`tests/src/status.rs`) and the fuzz target
//! (`fuzz/fuzz_targets/status_records.rs`; the records come from pinned
//! maps, which any process on the node with `CAP_BPF` can write).

use conduit_ebpf_common::{self as common, GlobalConfig, IpKey, PodConfig};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv6Addr};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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

/// A kernel feature capture needs, and whether the probe found it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Feature {
    pub name: String,
    pub available: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MapStatus {
    pub name: String,
    pub id: u32,
    pub entries: usize,
    pub max_entries: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CounterStatus {
    pub program: String,
    pub outcome: String,
    pub value: u64,
}

/// A NUL-terminated (or full) fixed field as text; invalid UTF-8 is replaced.
pub fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// An address key as an address (`::ffff:a.b.c.d` as IPv4).
pub fn ip(k: &IpKey) -> IpAddr {
    let v6 = Ipv6Addr::from(k.octets());
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The cgroup capture is attached at, from the node settings record.
pub fn cgroup_path(c: &GlobalConfig) -> Option<String> {
    Some(cstr(&c.cgroup_path)).filter(|s| !s.is_empty())
}

/// An enrolled pod's record, as status shows it. The lengths in the record
/// are clamped to the arrays (a record written by something else than the
/// agent may claim more); the process checks (`proxy_alive`) and the link
/// are the caller's.
pub fn pod_status(
    netns_cookie: u64,
    c: &PodConfig,
    proxy_alive: bool,
    sk_lookup_link_id: Option<u32>,
) -> PodStatus {
    let clamp = |len: u16, cap: usize| usize::from(len).min(cap);
    PodStatus {
        name: cstr(&c.name),
        namespace: cstr(&c.namespace),
        netns_cookie,
        pod_ips: c.ips[..clamp(c.ips_len, c.ips.len())]
            .iter()
            .map(ip)
            .collect(),
        proxy_pid: c.proxy_pid,
        proxy_uid: c.proxy_uid,
        proxy_cgroup_id: c.proxy_cgroup_id,
        proxy_alive,
        outbound_port: c.outbound_port,
        inbound_port: c.inbound_port,
        admin_port: c.admin_port,
        skip_inbound_ports: c.skip_inbound[..clamp(c.skip_inbound_len, c.skip_inbound.len())]
            .to_vec(),
        skip_outbound_ports: c.skip_outbound[..clamp(c.skip_outbound_len, c.skip_outbound.len())]
            .to_vec(),
        sk_lookup_link_id,
        enrolled_at: c.enrolled_at,
    }
}

/// Fill level from which `status` warns and `status --check` fails.
pub const WARN_FILL_PERCENT: u64 = 90;

/// What a map at capacity does to capture: the warning's second half.
pub fn when_full(map: &str) -> Option<&'static str> {
    Some(match map {
        common::MAP_PODS | common::MAP_POD_IPS | common::MAP_LISTENERS => {
            "new pods are refused registration (capture stays off for them)"
        }
        common::MAP_ORIG_BY_COOKIE | common::MAP_ORIG_BY_TUPLE => {
            "least recently used records are evicted; a connection whose record is evicted before the proxy reads it is closed by the proxy"
        }
        common::MAP_FASTPATH => "new connections skip the fast path (plain loopback TCP)",
        common::MAP_EXCLUDE => "more excluded CIDRs cannot be added",
        // Arrays: always full by construction.
        _ => return None,
    })
}

/// Percent of `max_entries` in use (rounded down; 0 for an empty map type).
pub fn fill_percent(m: &MapStatus) -> u64 {
    if m.max_entries == 0 {
        return 0;
    }
    (m.entries as u64).saturating_mul(100) / u64::from(m.max_entries)
}

/// One warning per map at or above [`WARN_FILL_PERCENT`], naming the map,
/// its fill level and what a full map does.
pub fn pressure(s: &Status) -> Vec<String> {
    s.maps
        .iter()
        .filter_map(|m| {
            let effect = when_full(&m.name)?;
            let pct = fill_percent(m);
            (pct >= WARN_FILL_PERCENT).then(|| {
                format!(
                    "map {} is {pct}% full ({}/{}): when full, {effect}",
                    m.name, m.entries, m.max_entries
                )
            })
        })
        .collect()
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
        "\nMAPS\n  {:<18} {:>6} {:>9} {:>9} {:>5}",
        "NAME", "ID", "ENTRIES", "MAX", "FILL"
    );
    for m in &s.maps {
        let fill = if when_full(&m.name).is_some() {
            format!("{}%", fill_percent(m))
        } else {
            "-".into()
        };
        let _ = writeln!(
            o,
            "  {:<18} {:>6} {:>9} {:>9} {:>5}",
            m.name, m.id, m.entries, m.max_entries, fill
        );
    }
    for w in pressure(s) {
        let _ = writeln!(o, "  WARNING: {w}");
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
mod tests;
