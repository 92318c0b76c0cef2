//! The outbound connection seam.

use super::intent::{NoTls, Peer};
use super::{MeshProto, TransportHeader};
use crate::io::BoxIo;
use conduit_proxy_tls::SpiffeId;
use futures::future::BoxFuture;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// Where a connection goes: the one next-hop type of the proxy. The
/// address to connect to, what discovery says is there (a meshed peer and
/// whom we expect to find, or an application reached in plaintext and
/// why: the input of [`intent::for_peer`](super::intent::for_peer), by
/// which the connector makes it mTLS, plaintext or refuses it), the
/// application port a peer proxy is asked for, and what the connection
/// carries. Chosen by [`route`](crate::route); used as is by the
/// connectors, [`open`](super::open) and the HTTP client's pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    pub addr: SocketAddr,
    pub peer: Peer,
    /// Meshed: the application port to name in the transport header.
    pub mesh_port: Option<u16>,
    /// What the connection carries: the transport header's protocol and
    /// the ALPN a TLS connector offers towards a peer proxy, and the HTTP
    /// version of an HTTP hop (see [`crate::protocol`]).
    pub proto: MeshProto,
}

/// Hashes the address, the application port and the protocol, not the
/// peer: the pools look a hop up on every request, and the peer's identity
/// is a long string, while two hops to one address and port with different
/// identities are rare (equality still compares everything).
impl std::hash::Hash for NextHop {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.addr.hash(state);
        self.mesh_port.hash(state);
        self.proto.hash(state);
    }
}

impl NextHop {
    /// An application, reached in plaintext for reason `why`.
    pub fn plain(addr: SocketAddr, why: NoTls) -> Self {
        Self {
            addr,
            peer: Peer::Plain(why),
            mesh_port: None,
            proto: MeshProto::Tcp,
        }
    }
    /// A peer proxy at `addr` with the identity discovery named (if any),
    /// asked for the application at `app_port`.
    pub fn meshed(addr: SocketAddr, identity: Option<SpiffeId>, app_port: u16) -> Self {
        Self {
            addr,
            peer: Peer::Meshed { identity },
            mesh_port: Some(app_port),
            proto: MeshProto::Tcp,
        }
    }
    /// The same hop carrying `proto`.
    pub fn carrying(mut self, proto: MeshProto) -> Self {
        self.proto = proto;
        self
    }
    pub fn is_meshed(&self) -> bool {
        matches!(self.peer, Peer::Meshed { .. })
    }
    /// The transport decision for this target ([`intent::for_peer`](super::intent::for_peer);
    /// no protocol yet means opaque bytes).
    pub fn tls(&self, local_identity: bool) -> Result<super::Tls, super::Refusal> {
        super::intent::for_peer(&self.peer, self.proto, local_identity)
    }

    /// The identity a meshed peer must prove, when discovery named one.
    pub fn peer_identity(&self) -> Option<&SpiffeId> {
        match &self.peer {
            Peer::Meshed { identity } => identity.as_ref(),
            Peer::Plain(_) => None,
        }
    }
    /// The transport header to write first (towards a peer proxy).
    pub fn header(&self) -> Option<TransportHeader> {
        self.mesh_port.map(|port| TransportHeader {
            proto: self.proto,
            port,
        })
    }
}

/// Opens connections to upstreams (application servers and peer proxies).
/// The mTLS connector wraps [`TcpConnector`] and does the handshake towards
/// a meshed peer with an identity; [`Guarded`](super::guard::Guarded), in
/// front of either, refuses what must not be made and counts plaintext.
pub trait Connector: Send + Sync + 'static {
    fn connect(&self, target: &NextHop) -> BoxFuture<'static, io::Result<BoxIo>>;
}

/// Plain TCP with a connect timeout and `TCP_NODELAY`.
#[derive(Debug, Clone)]
pub struct TcpConnector {
    pub connect_timeout: Duration,
}

impl TcpConnector {
    pub async fn connect_tcp(
        addr: SocketAddr,
        timeout: Duration,
    ) -> io::Result<tokio::net::TcpStream> {
        let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect to {addr} timed out after {timeout:?}"),
                )
            })??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

impl Connector for TcpConnector {
    fn connect(&self, target: &NextHop) -> BoxFuture<'static, io::Result<BoxIo>> {
        let (addr, timeout) = (target.addr, self.connect_timeout);
        // No identity here: never plaintext to a peer that must be verified.
        let refusal = match target.tls(false) {
            Ok(super::Tls::Plain(_)) => None,
            // Not reached without a local identity; refused all the same.
            Ok(super::Tls::Mutual { server, .. }) => {
                Some(super::Refusal::NoLocalIdentity { identity: server })
            }
            Err(refusal) => Some(refusal),
        };
        if let Some(refusal) = refusal {
            let e = io::Error::from(super::ConnectError::Refused { addr, refusal });
            return Box::pin(async move { Err(e) });
        }
        Box::pin(async move {
            let s = Self::connect_tcp(addr, timeout).await?;
            Ok(Box::new(s) as BoxIo)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conduit_proxy_tls::SpiffeId;
    use std::collections::HashMap;

    /// Hops to one address that differ only in the peer's identity hash
    /// alike but stay apart: equality still compares the peer.
    #[test]
    fn hops_differing_only_in_identity_stay_apart() {
        let addr: SocketAddr = "10.0.0.7:4143".parse().unwrap();
        let id = |sa: &str| Some(SpiffeId::new("cluster.local", "default", sa).unwrap());
        let (a, b) = (
            NextHop::meshed(addr, id("web"), 8080),
            NextHop::meshed(addr, id("api"), 8080),
        );
        assert_ne!(a, b);
        let mut pool = HashMap::new();
        pool.insert(a.clone(), 1);
        pool.insert(b.clone(), 2);
        pool.insert(NextHop::meshed(addr, id("web"), 8080), 3);
        assert_eq!(pool.len(), 2);
        assert_eq!((pool[&a], pool[&b]), (3, 2));
    }
}
