//! Where a connection or request goes next. Outbound: the original
//! destination; when discovery knows it, its shared
//! [`Balancer`](crate::balance::Balancer) picks endpoints (an unknown
//! destination is forwarded unchanged). A meshed endpoint is reached through
//! its proxy's inbound port with a transport header. Inbound: the local
//! application at the original port.

use crate::balance::Balancer;
use crate::discovery::Endpoint;
use crate::transport::{ConnectTarget, NoTls};
use std::net::SocketAddr;

pub struct Route {
    /// What the client dialled (inbound from a peer: the application address).
    pub orig_dst: SocketAddr,
    pub target: RouteTarget,
}

pub enum RouteTarget {
    /// One address, no balancing, plaintext for the reason given: an
    /// unresolved destination allowed out unchanged, or the local app.
    Direct(SocketAddr, NoTls),
    /// A discovered destination.
    Balanced(Balancer),
}

/// The chosen next hop.
#[derive(Debug, Clone)]
pub struct Picked {
    pub target: ConnectTarget,
    /// Application port to name in the transport header (meshed peer).
    pub mesh_port: Option<u16>,
}

impl Picked {
    pub fn direct(addr: SocketAddr, why: NoTls) -> Self {
        Picked {
            target: ConnectTarget::plain(addr, why),
            mesh_port: None,
        }
    }
}

impl Route {
    pub fn inbound(orig_dst: SocketAddr, app: SocketAddr) -> Self {
        Route {
            orig_dst,
            target: RouteTarget::Direct(app, NoTls::LocalApplication),
        }
    }

    pub fn outbound(orig_dst: SocketAddr, target: RouteTarget) -> Self {
        Route { orig_dst, target }
    }

    /// Name for metrics and logs: the service name when discovered, else
    /// the address.
    pub fn dst_name(&self) -> String {
        match &self.target {
            RouteTarget::Balanced(b) => b.name().to_string(),
            RouteTarget::Direct(addr, _) => addr.to_string(),
        }
    }
}

/// How to reach one endpoint: straight to it (it runs no proxy), or
/// through its proxy (meshed: mTLS, see `transport::intent`).
pub fn picked_for(ep: &Endpoint) -> Picked {
    match ep.meshed_inbound_port {
        Some(port) => Picked {
            target: ConnectTarget::meshed(SocketAddr::new(ep.addr.ip(), port), ep.identity.clone()),
            mesh_port: Some(ep.addr.port()),
        },
        None => Picked::direct(ep.addr, NoTls::EndpointNotMeshed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meshed_endpoints_go_through_the_peer_proxy() {
        let mut ep = Endpoint::plain("10.0.0.2:8080".parse().unwrap());
        assert_eq!(picked_for(&ep).target.addr, ep.addr);
        assert_eq!(picked_for(&ep).mesh_port, None);
        assert!(!picked_for(&ep).target.is_meshed());
        ep.meshed_inbound_port = Some(4143);
        ep.identity = Some("spiffe://td/ns/a/sa/b".parse().unwrap());
        let p = picked_for(&ep);
        assert_eq!(p.target.addr, "10.0.0.2:4143".parse().unwrap());
        assert_eq!(p.mesh_port, Some(8080));
        assert!(p.target.is_meshed());
    }
}
