//! `conduit-ebpf status --json`, typed as docs/ebpf.md documents it (only
//! the fields the tests read; unknown fields are ignored).

use serde::Deserialize;
use std::net::IpAddr;

/// The whole status.
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    /// Pin directory read.
    pub pin_dir: String,
    /// Every cgroup program has its pinned link.
    pub attached: bool,
    /// cgroup attach point.
    pub cgroup: Option<String>,
    /// Fast path enabled.
    pub fastpath: bool,
    /// Programs.
    pub programs: Vec<ProgramStatus>,
    /// Maps.
    pub maps: Vec<MapStatus>,
    /// Enrolled pods.
    pub pods: Vec<PodStatus>,
    /// Counters.
    pub counters: Vec<CounterStatus>,
}

/// One program.
#[derive(Debug, Clone, Deserialize)]
pub struct ProgramStatus {
    /// `conduit_connect4`, ...
    pub name: String,
    /// `cgroup/connect4`, ..., `sk_lookup`.
    pub attach_type: String,
    /// `cgroup:<path>`, `netns:<cookie>`, ... or null.
    pub attach_point: Option<String>,
    /// Program ID.
    pub id: u32,
    /// Link ID.
    pub link_id: Option<u32>,
}

/// One map.
#[derive(Debug, Clone, Deserialize)]
pub struct MapStatus {
    /// `CONDUIT_PODS`, ...
    pub name: String,
    /// Map ID.
    pub id: u32,
    /// Entries now.
    pub entries: usize,
}

/// One enrolled pod.
#[derive(Debug, Clone, Deserialize)]
pub struct PodStatus {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Its netns cookie.
    pub netns_cookie: u64,
    /// Its addresses.
    pub pod_ips: Vec<IpAddr>,
    /// The proxy's pid.
    pub proxy_pid: u32,
    /// The proxy's uid.
    pub proxy_uid: u32,
    /// Whether that proxy still runs.
    pub proxy_alive: bool,
    /// Its sk_lookup link.
    pub sk_lookup_link_id: Option<u32>,
}

/// One counter.
#[derive(Debug, Clone, Deserialize)]
pub struct CounterStatus {
    /// `connect4`, ...
    pub program: String,
    /// `captured`, `skipped_...`, ...
    pub outcome: String,
    /// Sum over CPUs.
    pub value: u64,
}

impl Status {
    /// The pod called `name`, if enrolled.
    pub fn pod(&self, name: &str) -> Option<&PodStatus> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// The value of counter `program`/`outcome` (0 when not listed).
    pub fn counter(&self, program: &str, outcome: &str) -> u64 {
        self.counters
            .iter()
            .filter(|c| c.program == program && c.outcome == outcome)
            .map(|c| c.value)
            .sum()
    }

    /// Names of the enrolled pods, sorted.
    pub fn pod_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.pods.iter().map(|p| p.name.as_str()).collect();
        v.sort_unstable();
        v
    }
}
