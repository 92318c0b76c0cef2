//! Pods on a bridge: the network part of a test or of the demo.

use crate::names::Names;
use crate::netns::Netns;
use crate::network::{Bridge, Veth};
use anyhow::{Context, Result, anyhow};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A "pod": a network namespace joined to the bridge, with one IPv4 and one
/// IPv6 address.
#[derive(Debug)]
pub struct Pod {
    /// Short name within the test (`client`, `server`, ...).
    pub name: String,
    /// Its IPv4 address.
    pub ipv4: Ipv4Addr,
    /// Its IPv6 address.
    pub ipv6: Ipv6Addr,
    veth: Veth,
    netns: Netns,
}

impl Pod {
    /// The pod's network namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The host end of the pod's veth.
    pub fn host_veth(&self) -> &str {
        self.veth.host()
    }

    /// `ipv4:port`.
    pub fn v4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ipv4), port)
    }

    /// `[ipv6]:port`.
    pub fn v6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.ipv6), port)
    }
}

/// A bridge and its pods; pods are deleted before the bridge on drop.
#[derive(Debug)]
pub struct Topology {
    /// Names used for everything created.
    pub names: Names,
    pods: Vec<Pod>,
    bridge: Bridge,
}

impl Topology {
    /// Creates the bridge (host address `.1`) and one pod per name (`.2`, `.3`, ...).
    pub fn create(names: Names, pods: &[&str]) -> Result<Self> {
        if pods.len() > 200 {
            return Err(anyhow!("at most 200 pods per topology"));
        }
        let bridge = Bridge::create(&names.bridge(), names.ipv4(1), names.ipv6(1))?;
        let mut topo = Self {
            names,
            pods: Vec::new(),
            bridge,
        };
        for (i, name) in pods.iter().enumerate() {
            let host = u8::try_from(i + 2)?;
            let n = &topo.names;
            let netns = Netns::create(&n.netns(name))?;
            let (v4, v6) = (n.ipv4(host), n.ipv6(host));
            let veth = Veth::attach(
                &n.host_veth(i),
                &topo.bridge,
                &netns,
                (v4, v6),
                (n.ipv4(1), n.ipv6(1)),
            )
            .with_context(|| format!("wiring pod {name}"))?;
            topo.pods.push(Pod {
                name: (*name).to_owned(),
                ipv4: v4,
                ipv6: v6,
                veth,
                netns,
            });
        }
        Ok(topo)
    }

    /// The pod called `name`; panics if there is none (a bug in the test).
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name} in this topology"))
    }

    /// All pods.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The bridge.
    pub fn bridge(&self) -> &Bridge {
        &self.bridge
    }
}
