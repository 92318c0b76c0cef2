//! Whether a registration may be enrolled, given what is enrolled already.
//! Pure decisions, no I/O: the registry (`registry.rs`) gathers the facts
//! (the proxy's network namespace and its addresses, the current pods) and
//! writes the maps only when [`admit`] says yes.
//!
//! The rules, each a refusal the proxy is told about:
//! * the node's own network namespace (a process on the node, a
//!   `hostNetwork` pod) and the agent's are never enrolled;
//! * a proxy in the root cgroup is refused (its cgroup is how its own
//!   sockets are told apart, and everything outside containers shares it);
//! * one registration per network namespace: while one is open (or a proxy
//!   enrolled by the previous agent is alive and has not re-registered), a
//!   second one is refused;
//! * the addresses enrolled are configured in the proxy's network namespace
//!   (those it claims, or else all of them) and none belongs to another
//!   enrolled pod;
//! * a new namespace needs room in the pods map.

use conduit_ebpf_common::MAX_POD_IPS;
use std::net::IpAddr;

/// Who holds an enrolled network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// A registration with this agent, still open.
    Open,
    /// Enrolled under a previous agent, not re-registered yet; `alive`:
    /// whether that proxy process still runs.
    Adopted { alive: bool },
}

/// One enrolled pod, as the table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    pub netns_cookie: u64,
    /// `namespace/name`, for messages.
    pub pod: String,
    pub ips: Vec<IpAddr>,
    pub proxy_pid: u32,
    pub proxy_start_time: u64,
    pub holder: Holder,
}

/// Everything enrolled on the node, and the pods map's capacity.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub enrolled: Vec<Enrolment>,
    pub capacity: usize,
}

/// Network namespaces no pod may enrol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forbidden {
    /// The node's (`/proc/1/ns/net`).
    pub host: u64,
    /// The agent's own.
    pub agent: u64,
}

/// What the agent found out about a registering proxy.
#[derive(Debug, Clone)]
pub struct Applicant<'a> {
    pub netns_cookie: u64,
    pub proxy_pid: u32,
    pub proxy_start_time: u64,
    /// Addresses configured in the proxy's network namespace (global ones),
    /// as the agent read them there.
    pub netns_ips: &'a [IpAddr],
    /// Addresses the proxy claims; empty: none claimed.
    pub claimed_ips: &'a [IpAddr],
    /// The id of the proxy's cgroup v2 (its sockets are never captured).
    pub proxy_cgroup_id: u64,
}

/// The id of a cgroup v2 hierarchy's root (its directory's inode).
pub const ROOT_CGROUP_ID: u64 = 1;

/// A registration that may go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The addresses to enrol (at most [`MAX_POD_IPS`]).
    pub ips: Vec<IpAddr>,
    /// Addresses of the namespace left out ([`MAX_POD_IPS`] reached).
    pub left_out: Vec<IpAddr>,
    /// The namespace was enrolled under the previous agent, by this proxy
    /// or by one that is gone: its entry is replaced.
    pub replaces: bool,
}

/// Why a registration is refused; the text is what the proxy is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the node's own network namespace cannot be enrolled (the registrant runs on the host \
         or in a hostNetwork pod): capture would take the node's traffic"
    )]
    HostNetns,
    #[error("the agent's own network namespace cannot be enrolled")]
    AgentNetns,
    #[error(
        "the proxy runs in the root cgroup, which it shares with every process not in a \
         container: it cannot be told apart from the application; run it in a cgroup of its own"
    )]
    ProxyInRootCgroup,
    #[error(
        "network namespace {netns_cookie} is already enrolled by pod {pod} (proxy pid {pid}) \
         and that registration is still open: one registration per network namespace"
    )]
    AlreadyEnrolled {
        netns_cookie: u64,
        pod: String,
        pid: u32,
    },
    #[error(
        "network namespace {netns_cookie} is enrolled by pod {pod} under the previous agent and \
         its proxy (pid {pid}) is alive and has not re-registered: one registration per network \
         namespace"
    )]
    AdoptedByAnother {
        netns_cookie: u64,
        pod: String,
        pid: u32,
    },
    #[error(
        "claimed address {ip} is not configured in the proxy's network namespace (it has {have:?})"
    )]
    IpNotInNetns { ip: IpAddr, have: Vec<IpAddr> },
    #[error(
        "address {ip} belongs to pod {pod} (network namespace {netns_cookie}), which is enrolled"
    )]
    IpOfAnotherPod {
        ip: IpAddr,
        pod: String,
        netns_cookie: u64,
    },
    #[error("at most {MAX_POD_IPS} addresses can be enrolled per pod, {got} were claimed")]
    TooManyClaimedIps { got: usize },
    #[error("the pods map is full ({capacity} pods enrolled on this node)")]
    PodsMapFull { capacity: usize },
    #[error("{0}")]
    Limit(#[from] crate::limits::LimitRefusal),
    /// The registration itself is invalid, or the proxy could not be
    /// inspected (the text says what).
    #[error("{0}")]
    Invalid(String),
    /// In a cluster: the pod claim does not match the API server.
    #[error("{0}")]
    Claim(String),
}

impl Refusal {
    /// A short word for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::HostNetns => "host_netns",
            Refusal::AgentNetns => "agent_netns",
            Refusal::ProxyInRootCgroup => "proxy_in_root_cgroup",
            Refusal::AlreadyEnrolled { .. } | Refusal::AdoptedByAnother { .. } => {
                "netns_already_enrolled"
            }
            Refusal::IpNotInNetns { .. } => "ip_not_in_netns",
            Refusal::IpOfAnotherPod { .. } => "ip_of_another_pod",
            Refusal::TooManyClaimedIps { .. } => "too_many_ips",
            Refusal::PodsMapFull { .. } => "pods_map_full",
            Refusal::Limit(_) => "limit",
            Refusal::Invalid(_) => "invalid",
            Refusal::Claim(_) => "pod_claim",
        }
    }
}

/// Decides whether `who` may enrol its network namespace given `table`.
pub fn admit(
    table: &Table,
    forbidden: Forbidden,
    who: &Applicant<'_>,
) -> Result<Admitted, Refusal> {
    if who.netns_cookie == forbidden.host {
        return Err(Refusal::HostNetns);
    }
    if who.netns_cookie == forbidden.agent {
        return Err(Refusal::AgentNetns);
    }
    // The proxy is told apart by its cgroup only: in the root cgroup every
    // process there would escape capture with it.
    if who.proxy_cgroup_id == ROOT_CGROUP_ID {
        return Err(Refusal::ProxyInRootCgroup);
    }
    let mut replaces = false;
    if let Some(e) = table
        .enrolled
        .iter()
        .find(|e| e.netns_cookie == who.netns_cookie)
    {
        let same_proxy = e.proxy_pid == who.proxy_pid && e.proxy_start_time == who.proxy_start_time;
        match e.holder {
            Holder::Open => {
                return Err(Refusal::AlreadyEnrolled {
                    netns_cookie: e.netns_cookie,
                    pod: e.pod.clone(),
                    pid: e.proxy_pid,
                });
            }
            Holder::Adopted { alive: true } if !same_proxy => {
                return Err(Refusal::AdoptedByAnother {
                    netns_cookie: e.netns_cookie,
                    pod: e.pod.clone(),
                    pid: e.proxy_pid,
                });
            }
            Holder::Adopted { .. } => replaces = true,
        }
    }
    let (ips, left_out) = if who.claimed_ips.is_empty() {
        let n = who.netns_ips.len().min(MAX_POD_IPS);
        (who.netns_ips[..n].to_vec(), who.netns_ips[n..].to_vec())
    } else {
        let mut claimed: Vec<IpAddr> = Vec::new();
        for ip in who.claimed_ips {
            if !claimed.contains(ip) {
                claimed.push(*ip);
            }
        }
        if claimed.len() > MAX_POD_IPS {
            return Err(Refusal::TooManyClaimedIps { got: claimed.len() });
        }
        if let Some(ip) = claimed.iter().find(|ip| !who.netns_ips.contains(ip)) {
            return Err(Refusal::IpNotInNetns {
                ip: *ip,
                have: who.netns_ips.to_vec(),
            });
        }
        (claimed, Vec::new())
    };
    for ip in &ips {
        if let Some(owner) = table
            .enrolled
            .iter()
            .find(|e| e.netns_cookie != who.netns_cookie && e.ips.contains(ip))
        {
            return Err(Refusal::IpOfAnotherPod {
                ip: *ip,
                pod: owner.pod.clone(),
                netns_cookie: owner.netns_cookie,
            });
        }
    }
    if !replaces && table.enrolled.len() >= table.capacity {
        return Err(Refusal::PodsMapFull {
            capacity: table.capacity,
        });
    }
    Ok(Admitted {
        ips,
        left_out,
        replaces,
    })
}

#[cfg(test)]
mod tests;
