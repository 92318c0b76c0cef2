//! Enrolling and removing pods: the map entries and the per-pod sk_lookup
//! attachment.

use crate::admission::{Enrolment, Holder, Table};
use crate::loader::{NodeMaps, pinned_link, to_field};
use crate::netns;
use crate::pins::Pins;
use anyhow::{Context, Result, anyhow, bail};
use aya::programs::SkLookup;
use aya::programs::links::FdLink;
use conduit_ebpf_common::{
    IpKey, MAX_POD_IPS, MAX_SKIP_PORTS, NAME_LEN, POD_SKIP_BY_CGROUP, PodConfig,
};
use conduit_ebpf_status::ip as key_ip;
use conduit_register::{Enrolled, PodInfo};
use nix::sys::socket::{getsockopt, sockopt};
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

/// The maps and the sk_lookup program, under one lock in the agent.
pub struct Node {
    pub pins: Pins,
    pub maps: NodeMaps,
    pub sk_lookup: SkLookup,
}

/// Who asks: from SO_PEERCRED.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
}

pub fn ip_key(ip: IpAddr) -> IpKey {
    match ip {
        IpAddr::V4(v4) => IpKey::v4(u32::from_ne_bytes(v4.octets())),
        IpAddr::V6(v6) => IpKey::from_octets(v6.octets()),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A registration checked locally and ready to enrol: what the agent found
/// out about the proxy. Its pod claim may still need checking against the
/// API server (see `claims`) before [`Node::enrol`].
pub struct Candidate {
    pub peer: Peer,
    pub pod: PodInfo,
    listener: OwnedFd,
    pub netns_cookie: u64,
    /// Every address of the proxy's network namespace (global ones).
    pub ips: Vec<IpAddr>,
    cgroup_dir: PathBuf,
    pub cgroup_id: u64,
    pub start_time: u64,
}

/// Validates a registration and inspects the proxy (network namespace,
/// listener, cgroup); writes nothing.
pub fn inspect(peer: Peer, pod: PodInfo, listener: Option<OwnedFd>) -> Result<Candidate> {
    pod.validate().map_err(|e| anyhow!(e))?;
    if pod.skip_inbound_ports.len() > MAX_SKIP_PORTS
        || pod.skip_outbound_ports.len() > MAX_SKIP_PORTS
    {
        bail!("at most {MAX_SKIP_PORTS} skip-ports per direction");
    }
    if pod.name.len() >= NAME_LEN || pod.namespace.len() >= NAME_LEN {
        bail!("pod name and namespace must be shorter than {NAME_LEN} bytes");
    }
    let listener =
        listener.ok_or_else(|| anyhow!("no inbound listener was passed (SCM_RIGHTS)"))?;
    let accepting = getsockopt(&listener, sockopt::AcceptConn).unwrap_or(false);
    let stype = getsockopt(&listener, sockopt::SockType).ok();
    if !accepting || stype != Some(nix::sys::socket::SockType::Stream) {
        bail!("the passed inbound descriptor is not a listening TCP socket");
    }
    let ns = netns::inspect(peer.pid)?;
    let listener_ns =
        netns::socket_netns_cookie(listener.as_fd()).context("reading the listener's netns")?;
    if listener_ns != ns.cookie {
        bail!("the inbound listener belongs to another network namespace than the proxy");
    }
    let (cgroup_dir, _) = crate::cgroup::of_pid(peer.pid)?;
    let cgroup_id = netns::cgroup_id(&cgroup_dir)?;
    let start_time =
        netns::start_time(peer.pid).ok_or_else(|| anyhow!("pid {} is gone", peer.pid))?;
    Ok(Candidate {
        peer,
        pod,
        listener,
        netns_cookie: ns.cookie,
        ips: ns.ips,
        cgroup_dir,
        cgroup_id,
        start_time,
    })
}

impl Candidate {
    /// Whether this is the very proxy (same pid and start time, same pod
    /// claim) that `cfg` was enrolled for, in the same network namespace.
    pub fn same_as(&self, cookie: u64, cfg: &PodConfig) -> bool {
        cookie == self.netns_cookie
            && cfg.proxy_pid == self.peer.pid
            && cfg.proxy_start_time == self.start_time
            && crate::loader::cstr(&cfg.name) == self.pod.name
            && crate::loader::cstr(&cfg.namespace) == self.pod.namespace
    }
}

impl Node {
    /// Enrols an inspected proxy's pod with the addresses admission chose
    /// (`crate::admission::admit`): capture starts when this returns Ok.
    /// On failure nothing of the namespace stays enrolled.
    pub fn enrol(&mut self, c: Candidate, ips: Vec<IpAddr>) -> Result<Enrolled> {
        let cookie = c.netns_cookie;
        let result = self.write(c, ips);
        if result.is_err() {
            self.remove(cookie);
        }
        result
    }

    fn write(&mut self, c: Candidate, ips: Vec<IpAddr>) -> Result<Enrolled> {
        let Candidate {
            peer,
            pod,
            listener,
            netns_cookie,
            ips: _,
            cgroup_dir: cg_dir,
            cgroup_id,
            start_time: start,
        } = c;
        // The claim check may have taken a while: is the proxy still there?
        if !netns::alive(peer.pid, start) {
            bail!("the proxy (pid {}) exited before it was enrolled", peer.pid);
        }
        let ns = netns::Netns {
            cookie: netns_cookie,
            ips,
        };

        let mut cfg = PodConfig {
            // The proxy is told apart by its cgroup only (never by its uid,
            // which an application can share).
            flags: POD_SKIP_BY_CGROUP,
            proxy_uid: peer.uid,
            proxy_cgroup_id: cgroup_id,
            outbound_port: pod.outbound_port,
            inbound_port: pod.inbound_port,
            admin_port: pod.admin_port,
            skip_inbound_len: pod.skip_inbound_ports.len() as u16,
            skip_outbound_len: pod.skip_outbound_ports.len() as u16,
            ips_len: 0,
            _pad: 0,
            skip_inbound: [0; MAX_SKIP_PORTS],
            skip_outbound: [0; MAX_SKIP_PORTS],
            ips: [IpKey::default(); MAX_POD_IPS],
            proxy_pid: peer.pid,
            _pad2: 0,
            proxy_start_time: start,
            enrolled_at: now_secs(),
            name: to_field(&pod.name),
            namespace: to_field(&pod.namespace),
        };
        cfg.skip_inbound[..pod.skip_inbound_ports.len()].copy_from_slice(&pod.skip_inbound_ports);
        cfg.skip_outbound[..pod.skip_outbound_ports.len()]
            .copy_from_slice(&pod.skip_outbound_ports);
        if ns.ips.len() > MAX_POD_IPS {
            bail!("at most {MAX_POD_IPS} addresses per pod, got {:?}", ns.ips);
        }
        let ips = ns.ips;
        for (i, ip) in ips.iter().enumerate() {
            cfg.ips[i] = ip_key(*ip);
        }
        cfg.ips_len = ips.len() as u16;

        // A previous enrolment of this namespace (proxy restarted): forget
        // its addresses first, keep its sk_lookup attachment.
        self.remove_ips(ns.cookie);
        self.maps
            .listeners
            .insert(ns.cookie, listener.as_fd(), 0)
            .context("storing the inbound listener")?;
        // Our copy of the listener is closed on return: the proxy's exit
        // closes the listener, which drops it from the sockhash.
        drop(listener);
        for ip in &ips {
            self.maps
                .pod_ips
                .insert(ip_key(*ip), ns.cookie, 0)
                .context("storing a pod address")?;
        }
        self.attach_sk_lookup(peer.pid, ns.cookie)?;
        // Last: the pod entry switches capture on.
        self.maps
            .pods
            .insert(ns.cookie, cfg, 0)
            .context("storing the pod in the pods map")?;
        tracing::info!(
            pod = %pod.name, namespace = %pod.namespace, netns_cookie = ns.cookie, pod_ips = ?ips,
            proxy_pid = peer.pid, proxy_uid = peer.uid, proxy_cgroup = %cg_dir.display(),
            "pod enrolled: capture on"
        );
        Ok(Enrolled {
            netns_cookie: ns.cookie,
            pod_ips: ips,
            proxy_uid: peer.uid,
        })
    }

    fn attach_sk_lookup(&mut self, pid: u32, cookie: u64) -> Result<()> {
        let path = self.pins.pod_link(cookie);
        if pinned_link(&path).is_some() {
            return Ok(());
        }
        let ns = File::open(format!("/proc/{pid}/ns/net"))
            .context("opening the pod's network namespace")?;
        let id = self
            .sk_lookup
            .attach(&ns)
            .context("attaching sk_lookup to the pod's network namespace")?;
        let link: FdLink = self.sk_lookup.take_link(id)?.into();
        link.pin(&path)
            .with_context(|| format!("pinning {}", path.display()))?;
        Ok(())
    }

    fn remove_ips(&mut self, cookie: u64) {
        let stale: Vec<IpKey> = self
            .maps
            .pod_ips
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, c)| *c == cookie)
            .map(|(k, _)| k)
            .collect();
        for k in stale {
            let _ = self.maps.pod_ips.remove(&k);
        }
    }

    /// Stops capture for a pod and removes everything of it.
    pub fn remove(&mut self, cookie: u64) {
        let name = self
            .maps
            .pods
            .get(&cookie, 0)
            .map(|c| crate::loader::cstr(&c.name))
            .unwrap_or_default();
        let _ = self.maps.pods.remove(&cookie);
        if let Some(link) = pinned_link(&self.pins.pod_link(cookie)) {
            // Unpinning and dropping the last reference detaches sk_lookup.
            let _ = link.unpin();
        }
        let _ = self.maps.listeners.remove(&cookie);
        self.remove_ips(cookie);
        tracing::info!(pod = %name, netns_cookie = cookie, "pod removed: capture off");
    }

    /// The enrolled pods as admission sees them; `holder` tells who holds
    /// each network namespace.
    pub fn table(&self, holder: impl Fn(u64, &PodConfig) -> Holder) -> Table {
        let enrolled = self
            .pods()
            .into_iter()
            .map(|(cookie, cfg)| Enrolment {
                netns_cookie: cookie,
                pod: format!(
                    "{}/{}",
                    crate::loader::cstr(&cfg.namespace),
                    crate::loader::cstr(&cfg.name)
                ),
                ips: cfg.ips[..(cfg.ips_len as usize).min(MAX_POD_IPS)]
                    .iter()
                    .map(key_ip)
                    .collect(),
                proxy_pid: cfg.proxy_pid,
                proxy_start_time: cfg.proxy_start_time,
                holder: holder(cookie, &cfg),
            })
            .collect();
        Table {
            enrolled,
            capacity: conduit_ebpf_common::MAX_PODS as usize,
        }
    }

    /// Enrolled pods: (netns cookie, config).
    pub fn pods(&self) -> Vec<(u64, PodConfig)> {
        self.maps.pods.iter().filter_map(|r| r.ok()).collect()
    }
}
