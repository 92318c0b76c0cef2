//! The outbound connection seam.

use super::MeshProto;
use super::intent::{NoTls, Peer};
use crate::io::BoxIo;
use conduit_proxy_tls::SpiffeId;
use futures::future::BoxFuture;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// Where to connect, and what discovery says is there: a meshed peer (and
/// whom we expect to find), or an application reached in plaintext and why.
/// The proxy's connector turns this into mTLS or plaintext, or refuses, with
/// [`tls`](Self::tls).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnectTarget {
    pub addr: SocketAddr,
    pub peer: Peer,
    /// What the connection will carry towards a peer proxy (set by
    /// [`open`](super::open) from the transport header); a TLS connector
    /// offers it as ALPN.
    pub proto: Option<MeshProto>,
}

impl ConnectTarget {
    /// An application, reached in plaintext for reason `why`.
    pub fn plain(addr: SocketAddr, why: NoTls) -> Self {
        Self {
            addr,
            peer: Peer::Plain(why),
            proto: None,
        }
    }
    /// A peer proxy with the identity discovery named (if any).
    pub fn meshed(addr: SocketAddr, identity: Option<SpiffeId>) -> Self {
        Self {
            addr,
            peer: Peer::Meshed { identity },
            proto: None,
        }
    }
    pub fn is_meshed(&self) -> bool {
        matches!(self.peer, Peer::Meshed { .. })
    }
    /// The transport decision for this target ([`intent::for_peer`](super::intent::for_peer);
    /// no protocol yet means opaque bytes).
    pub fn tls(&self, local_identity: bool) -> Result<super::Tls, super::Refusal> {
        super::intent::for_peer(
            &self.peer,
            self.proto.unwrap_or(MeshProto::Tcp),
            local_identity,
        )
    }

    /// The identity a meshed peer must prove, when discovery named one.
    pub fn peer_identity(&self) -> Option<&SpiffeId> {
        match &self.peer {
            Peer::Meshed { identity } => identity.as_ref(),
            Peer::Plain(_) => None,
        }
    }
}

/// Opens connections to upstreams (application servers and peer proxies).
/// The mTLS connector wraps [`TcpConnector`] and does the handshake towards
/// a meshed peer with an identity; [`Guarded`](super::guard::Guarded), in
/// front of either, refuses what must not be made and counts plaintext.
pub trait Connector: Send + Sync + 'static {
    fn connect(&self, target: &ConnectTarget) -> BoxFuture<'static, io::Result<BoxIo>>;
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
    fn connect(&self, target: &ConnectTarget) -> BoxFuture<'static, io::Result<BoxIo>> {
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
