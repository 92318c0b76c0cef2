//! A Linux bridge and the veth pairs that join pod namespaces to it.

use crate::cmd::{best_effort, ip};
use crate::netns::Netns;
use crate::wait::wait_until;
use anyhow::{Context, Result, anyhow};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// A bridge on the host with the subnet's first addresses; deleted on drop.
#[derive(Debug)]
pub struct Bridge {
    name: String,
}

impl Bridge {
    /// Creates bridge `name` (no STP, no forward delay, no multicast
    /// snooping, so ports forward at once) with `v4/24` and `v6/64`.
    pub fn create(name: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> Result<Self> {
        best_effort("ip", &["link", "del", name]);
        ip(&[
            "link",
            "add",
            name,
            "type",
            "bridge",
            "forward_delay",
            "0",
            "stp_state",
            "0",
            "mcast_snooping",
            "0",
        ])
        .with_context(|| format!("creating bridge {name}"))?;
        let br = Self {
            name: name.to_owned(),
        };
        ip(&["addr", "add", &format!("{v4}/24"), "dev", name])?;
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            name,
            "nodad",
        ])?;
        ip(&["link", "set", name, "up"])?;
        Ok(br)
    }

    /// The bridge's interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        best_effort("ip", &["link", "del", &self.name]);
    }
}

/// A veth pair: `host` on the bridge, `eth0` inside a namespace. Deleting
/// the host end (on drop) deletes both.
#[derive(Debug)]
pub struct Veth {
    host: String,
}

impl Veth {
    /// Joins `ns` to `bridge`: `eth0` in the namespace gets `v4/24` and
    /// `v6/64`, with default routes through the bridge's addresses.
    pub fn attach(
        host: &str,
        bridge: &Bridge,
        ns: &Netns,
        (v4, v6): (Ipv4Addr, Ipv6Addr),
        (gw4, gw6): (Ipv4Addr, Ipv6Addr),
    ) -> Result<Self> {
        best_effort("ip", &["link", "del", host]);
        ip(&[
            "link",
            "add",
            host,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])
        .with_context(|| format!("creating veth {host} for {}", ns.name()))?;
        let veth = Self {
            host: host.to_owned(),
        };
        ip(&["link", "set", host, "master", bridge.name(), "up"])?;
        ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", "default", "via", &gw4.to_string()])?;
        ns.ip(&["-6", "route", "add", "default", "via", &gw6.to_string()])?;
        wait_until("the pod's eth0 to come up", Duration::from_secs(10), || {
            let link = ns.ip(&["-o", "link", "show", "eth0"])?;
            let addrs = ns.ip(&["-o", "addr", "show", "dev", "eth0"])?;
            if link.contains("LOWER_UP") && !addrs.contains("tentative") {
                Ok(())
            } else {
                Err(anyhow!("link: {link} addrs: {addrs}"))
            }
        })?;
        Ok(veth)
    }

    /// The host end's interface name (tcpdump on it sees the pod's traffic).
    pub fn host(&self) -> &str {
        &self.host
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        best_effort("ip", &["link", "del", &self.host]);
    }
}
