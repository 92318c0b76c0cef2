//! The inbound seam: every connection a peer proxy makes to the inbound
//! port goes through an [`Acceptor`] before the transport header is read.

use crate::io::BoxIo;
use futures::future::BoxFuture;
use std::io;
use tokio::net::TcpStream;

/// A connection after the acceptor is done with it.
pub struct Accepted {
    pub io: BoxIo,
    /// The peer's verified identity (mTLS, from its certificate); `None`
    /// for plaintext.
    pub peer_identity: Option<conduit_proxy_tls::SpiffeId>,
}

/// Turns an accepted TCP connection from a peer proxy into a stream. The
/// mTLS acceptor does the TLS handshake here and reports the identity.
pub trait Acceptor: Send + Sync + 'static {
    fn accept(&self, tcp: TcpStream) -> BoxFuture<'static, io::Result<Accepted>>;
}

/// Plaintext: the stream as it is.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainAcceptor;

impl Acceptor for PlainAcceptor {
    fn accept(&self, tcp: TcpStream) -> BoxFuture<'static, io::Result<Accepted>> {
        Box::pin(async move {
            Ok(Accepted {
                io: Box::new(tcp),
                peer_identity: None,
            })
        })
    }
}
