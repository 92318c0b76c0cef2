//! Where an inbound connection reaches the application, decided without I/O.
//!
//! The application is reached at the pod's own address, the local address
//! the client dialled (a captured connection's original destination; for a
//! peer proxy's connection, the local IP it connected to, at the port its
//! transport header names). Never loopback by default: an application bound
//! only to 127.0.0.1 / ::1 stays private to its pod, as it would be without
//! a mesh. Ports opted in with `--inbound-loopback-ports` are reached on
//! loopback of the same family instead.
//!
//! The proxy's own ports (its listeners: inbound, outbound, admin, operator)
//! and the ports the agent's capture leaves alone (`--skip-inbound-ports`)
//! are never a target: a peer naming one in its transport header, or a
//! connection steered there, is refused.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The ports that decide inbound targets, fixed once the listeners are bound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboundPorts {
    /// Every port the proxy listens on.
    pub proxy: BTreeSet<u16>,
    /// Ports the capture leaves to the application directly.
    pub skipped: BTreeSet<u16>,
    /// Ports reached on loopback (explicit opt-in).
    pub loopback: BTreeSet<u16>,
}

/// Why an inbound connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("port {0} is one of the proxy's own ports")]
    ProxyPort(u16),
    #[error("port {0} is a skipped inbound port (not served through the proxy)")]
    SkippedPort(u16),
}

impl Refused {
    /// Metric label (`conduit_connections_refused_total{reason}`).
    pub fn reason(self) -> &'static str {
        match self {
            Refused::ProxyPort(_) => "proxy_port",
            Refused::SkippedPort(_) => "skipped_port",
        }
    }
}

impl InboundPorts {
    /// The application address for a connection whose local (dialled)
    /// address is `local` and whose application port is `port`.
    pub fn app_target(&self, local: IpAddr, port: u16) -> Result<SocketAddr, Refused> {
        if self.proxy.contains(&port) {
            return Err(Refused::ProxyPort(port));
        }
        if self.skipped.contains(&port) {
            return Err(Refused::SkippedPort(port));
        }
        let local = unmapped(local);
        let ip = if self.loopback.contains(&port) {
            match local {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            }
        } else {
            local
        };
        Ok(SocketAddr::new(ip, port))
    }
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports() -> InboundPorts {
        InboundPorts {
            proxy: [4140, 4143, 4190, 4191].into(),
            skipped: [9000].into(),
            loopback: [7070].into(),
        }
    }

    #[test]
    fn targets() {
        let p = ports();
        let ok = |a: &str| Ok(a.parse::<SocketAddr>().unwrap());
        let cases: &[(&str, u16, Result<SocketAddr, Refused>)] = &[
            // The pod's own address, same port: never loopback by default.
            ("10.0.0.7", 8080, ok("10.0.0.7:8080")),
            ("fd77::2", 8080, ok("[fd77::2]:8080")),
            // A dual-stack listener reports IPv4 as mapped.
            ("::ffff:10.0.0.7", 8080, ok("10.0.0.7:8080")),
            // Opted in: loopback of the same family.
            ("10.0.0.7", 7070, ok("127.0.0.1:7070")),
            ("fd77::2", 7070, ok("[::1]:7070")),
            ("::ffff:10.0.0.7", 7070, ok("127.0.0.1:7070")),
            // The proxy's own ports, whatever the address.
            ("10.0.0.7", 4191, Err(Refused::ProxyPort(4191))),
            ("10.0.0.7", 4190, Err(Refused::ProxyPort(4190))),
            ("10.0.0.7", 4140, Err(Refused::ProxyPort(4140))),
            ("127.0.0.1", 4143, Err(Refused::ProxyPort(4143))),
            ("fd77::2", 4191, Err(Refused::ProxyPort(4191))),
            // Skipped ports are not served through the proxy.
            ("10.0.0.7", 9000, Err(Refused::SkippedPort(9000))),
            // Tests on loopback: the local address is loopback already.
            ("127.0.0.1", 8080, ok("127.0.0.1:8080")),
        ];
        for (local, port, want) in cases {
            let got = p.app_target(local.parse().unwrap(), *port);
            assert_eq!(&got, want, "{local} port {port}");
        }
    }

    #[test]
    fn a_proxy_port_opted_into_loopback_is_still_refused() {
        let mut p = ports();
        p.loopback.insert(4191);
        assert_eq!(
            p.app_target("10.0.0.7".parse().unwrap(), 4191),
            Err(Refused::ProxyPort(4191))
        );
    }

    #[test]
    fn reasons_are_metric_labels() {
        assert_eq!(Refused::ProxyPort(1).reason(), "proxy_port");
        assert_eq!(Refused::SkippedPort(1).reason(), "skipped_port");
    }
}
