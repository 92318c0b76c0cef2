//! Mutual TLS on the transport seams, from `conduit-proxy-tls` (see
//! docs/identity.md).
//!
//! * [`TlsConnector`] is the [`Connector`] for a proxy with an identity: to
//!   a meshed endpoint, TLS presenting our certificate and requiring exactly
//!   the identity discovery gave, with the transport header's protocol as
//!   ALPN (a meshed endpoint without an identity is refused); to an
//!   application, plain TCP.
//! * [`TlsAcceptor`] is the [`Acceptor`] for the inbound port: TLS with a
//!   client certificate from our trust domain required; the verified
//!   identity becomes `peer_identity`.

use super::intent::Tls;
use super::{Accepted, Acceptor, ConnectError, Connector, NextHop, TcpConnector};
use crate::io::BoxIo;
use conduit_proxy_tls::{Credentials, TlsError};
use futures::future::BoxFuture;
use std::io;
use tokio::net::TcpStream;

/// Inbound: keeps the error's kind, adds where it happened.
fn context(e: TlsError, what: String) -> io::Error {
    let e = io::Error::from(e);
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Outbound: mTLS to meshed endpoints with a known identity.
#[derive(Debug, Clone)]
pub struct TlsConnector {
    tcp: TcpConnector,
    tls: conduit_proxy_tls::TlsConnector,
}

impl TlsConnector {
    pub fn new(tcp: TcpConnector, credentials: Credentials) -> Self {
        TlsConnector {
            tcp,
            tls: conduit_proxy_tls::TlsConnector::new(credentials),
        }
    }
}

impl Connector for TlsConnector {
    fn connect(&self, target: &NextHop) -> BoxFuture<'static, io::Result<BoxIo>> {
        let (addr, timeout) = (target.addr, self.tcp.connect_timeout);
        let decision = target.tls(true);
        let tls = self.tls.clone();
        Box::pin(async move {
            let (expected, alpn) = match decision {
                Ok(Tls::Mutual { server, alpn }) => (server, alpn),
                Ok(Tls::Plain(_)) => {
                    let tcp = TcpConnector::connect_tcp(addr, timeout).await?;
                    return Ok(Box::new(tcp) as BoxIo);
                }
                Err(refusal) => return Err(ConnectError::Refused { addr, refusal }.into()),
            };
            let tcp = TcpConnector::connect_tcp(addr, timeout).await?;
            match tls.connect(tcp, &expected, alpn).await {
                Ok(stream) => Ok(Box::new(stream) as BoxIo),
                Err(source) => Err(ConnectError::Mtls {
                    addr,
                    expected,
                    source,
                }
                .into()),
            }
        })
    }
}

/// Inbound: mTLS required on the inbound port.
#[derive(Debug, Clone)]
pub struct TlsAcceptor {
    tls: conduit_proxy_tls::TlsAcceptor,
}

impl TlsAcceptor {
    pub fn new(credentials: Credentials) -> Result<Self, TlsError> {
        Ok(TlsAcceptor {
            tls: conduit_proxy_tls::TlsAcceptor::new(credentials)?,
        })
    }
}

impl Acceptor for TlsAcceptor {
    fn accept(&self, tcp: TcpStream) -> BoxFuture<'static, io::Result<Accepted>> {
        let tls = self.tls.clone();
        Box::pin(async move {
            let client = tcp.peer_addr().ok();
            let (stream, peer) = tls.accept(tcp).await.map_err(|e| {
                let from = client.map_or_else(|| "a peer".to_owned(), |c| c.to_string());
                context(e, format!("mTLS from {from}"))
            })?;
            tracing::debug!(peer = %peer.identity, alpn = %peer.alpn, "inbound mTLS");
            Ok(Accepted {
                io: Box::new(stream),
                peer_identity: Some(peer.identity),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::MeshProto;
    use crate::transport::intent::NoTls;
    use crate::transport::intent::Refusal;
    use conduit_proxy_tls::SpiffeId;
    use conduit_proxy_tls::testing::TestCa;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const CLIENT: &str = "spiffe://td.local/ns/shop/sa/web";
    const SERVER: &str = "spiffe://td.local/ns/shop/sa/books";

    fn tcp() -> TcpConnector {
        TcpConnector {
            connect_timeout: Duration::from_secs(5),
        }
    }

    async fn inbound(
        ca: &TestCa,
    ) -> (
        std::net::SocketAddr,
        tokio::task::JoinHandle<io::Result<Accepted>>,
    ) {
        let server = ca.credentials(&SpiffeId::parse(SERVER).unwrap()).unwrap();
        let acceptor = TlsAcceptor::new(server).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            acceptor.accept(tcp).await
        });
        (addr, task)
    }

    #[tokio::test]
    async fn meshed_endpoints_get_mtls_with_the_identity_checked() {
        let ca = TestCa::new("mesh").unwrap();
        let client = ca.credentials(&SpiffeId::parse(CLIENT).unwrap()).unwrap();
        let connector = TlsConnector::new(tcp(), client);

        let (addr, server) = inbound(&ca).await;
        let target = NextHop::meshed(addr, Some(SpiffeId::parse(SERVER).unwrap()), 8080)
            .carrying(MeshProto::H2);
        let mut io = connector.connect(&target).await.unwrap();
        let mut accepted = server.await.unwrap().unwrap();
        assert_eq!(accepted.peer_identity.as_deref(), Some(CLIENT));
        io.write_all(b"ping").await.unwrap();
        io.flush().await.unwrap();
        let mut buf = [0u8; 4];
        accepted.io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        // Another identity at that address: refused.
        let (addr, _server) = inbound(&ca).await;
        let other = SpiffeId::parse("spiffe://td.local/ns/shop/sa/other").unwrap();
        let target = NextHop::meshed(addr, Some(other), 8080);
        let err = connector.connect(&target).await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        assert!(err.to_string().contains("sa/other"), "{err}");
        // Typed, not sniffed: the peer did not prove the identity.
        assert!(
            matches!(
                ConnectError::of(&err),
                Some(ConnectError::Mtls { source, .. }) if source.is_peer_identity()
            ),
            "{err:?}"
        );
        assert!(crate::transport::error::is_peer_identity(&err));

        // An identity that is not a SPIFFE ID cannot reach a connector: it
        // is refused where discovery's answer is parsed (the API client's
        // `identities_are_parsed_at_the_boundary`).
        assert!(SpiffeId::parse("books").is_err());
    }

    #[tokio::test]
    async fn plain_targets_stay_plain_and_unverifiable_peers_are_refused() {
        let ca = TestCa::new("mesh").unwrap();
        let client = ca.credentials(&SpiffeId::parse(CLIENT).unwrap()).unwrap();
        let connector = TlsConnector::new(tcp(), client);
        let (addr, server) = inbound(&ca).await;
        // A meshed endpoint without an identity: refused, nothing sent.
        let err = connector
            .connect(&NextHop::meshed(addr, None, 8080))
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        assert!(
            matches!(
                ConnectError::of(&err),
                Some(ConnectError::Refused {
                    refusal: Refusal::MeshedWithoutIdentity,
                    ..
                })
            ),
            "{err:?}"
        );
        // An application gets plain TCP; the TLS-requiring inbound side
        // refuses plaintext.
        let mut io = connector
            .connect(&NextHop::plain(addr, NoTls::EndpointNotMeshed))
            .await
            .unwrap();
        io.write_all(b"CONDUIT/1 tcp 8080\n").await.unwrap();
        io.flush().await.unwrap();
        assert!(server.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_connector_without_identity_never_sends_plaintext_to_a_meshed_peer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let err = tcp()
            .connect(&NextHop::meshed(
                addr,
                Some(SpiffeId::parse(SERVER).unwrap()),
                8080,
            ))
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        let accepted = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
        assert!(accepted.is_err(), "no connection was made");
    }

    #[test]
    fn alpn_follows_the_transport_header() {
        for proto in [MeshProto::H2, MeshProto::Http1, MeshProto::Tcp] {
            assert_eq!(MeshProto::from_alpn(proto.alpn()), proto);
        }
        assert_eq!(MeshProto::H2.alpn().as_bytes(), b"conduit/h2");
    }
}
