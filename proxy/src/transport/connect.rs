//! The outbound connection seam.

use super::MeshProto;
use crate::io::BoxIo;
use futures::future::BoxFuture;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// Where to connect, and (for a meshed peer) whom we expect to find there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnectTarget {
    pub addr: SocketAddr,
    /// Set when the endpoint runs a conduit proxy: the peer's identity as
    /// discovery gave it (`None` when discovery did not name one). A TLS
    /// connector verifies the server against it; plaintext ignores it.
    pub meshed_identity: Option<Option<String>>,
    /// What the connection will carry towards a peer proxy (set by
    /// [`open`](super::open) from the transport header); a TLS connector
    /// offers it as ALPN.
    pub proto: Option<MeshProto>,
}

impl ConnectTarget {
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            meshed_identity: None,
            proto: None,
        }
    }
    pub fn meshed(addr: SocketAddr, identity: Option<String>) -> Self {
        Self {
            addr,
            meshed_identity: Some(identity),
            proto: None,
        }
    }
    pub fn is_meshed(&self) -> bool {
        self.meshed_identity.is_some()
    }
}

/// Opens connections to upstreams (application servers and peer proxies).
/// The mTLS connector wraps [`TcpConnector`] and does the handshake when
/// `target.is_meshed()`.
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
        Box::pin(async move {
            let s = Self::connect_tcp(addr, timeout).await?;
            Ok(Box::new(s) as BoxIo)
        })
    }
}
