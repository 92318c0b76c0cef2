//! Real TLS handshakes on loopback between a TlsConnector and a
//! TlsAcceptor, with certificates from rcgen CAs.

use crate::support;

use conduit_proxy_tls::{
    Alpn, Credentials, Peer, PeerIdentityError, TlsAcceptor, TlsConnector, TlsError,
};
use rustls::{AlertDescription, CertificateError};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/web";
const SERVER: &str = "spiffe://cluster.local/ns/shop/sa/books";

/// Asserts that `err` is a handshake refused over a certificate matching
/// `$cert` (a `CertificateError` pattern).
macro_rules! assert_invalid_cert {
    ($err:expr, $cert:pat) => {{
        let err = $err;
        assert!(
            matches!(
                err,
                TlsError::Handshake(rustls::Error::InvalidCertificate($cert))
            ),
            "{err}"
        );
    }};
}

/// TLS 1.3: the client finishes first, so a refusal by the server arrives on
/// the client's first read; a connection that did come up must fail there.
async fn assert_read_refused<S: tokio::io::AsyncRead + Unpin, E>(conn: Result<S, E>) {
    if let Ok(mut tls) = conn {
        let mut buf = [0u8; 1];
        assert!(
            tokio::io::AsyncReadExt::read(&mut tls, &mut buf)
                .await
                .is_err()
        );
    }
}

/// An inbound listener: every accepted handshake's result goes to the
/// returned channel; established connections echo.
async fn serve(
    acceptor: TlsAcceptor,
) -> (SocketAddr, mpsc::UnboundedReceiver<Result<Peer, TlsError>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok((tls, peer)) => {
                        let _ = tx.send(Ok(peer));
                        echo(tls).await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn server(
    creds: &Credentials,
) -> (SocketAddr, mpsc::UnboundedReceiver<Result<Peer, TlsError>>) {
    serve(TlsAcceptor::new(creds.clone()).unwrap()).await
}

async fn connect(
    creds: &Credentials,
    addr: SocketAddr,
    expected: &str,
    alpn: Alpn,
) -> Result<conduit_proxy_tls::ClientTlsStream<TcpStream>, TlsError> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::new(creds.clone())
        .connect(tcp, &id(expected), alpn)
        .await
}

#[tokio::test]
async fn handshake_with_the_right_identity() {
    let ca = Ca::new("mesh");
    let (client, server_creds) = (certified(&ca, CLIENT), certified(&ca, SERVER));
    let (addr, mut results) = server(&server_creds).await;
    for alpn in Alpn::ALL {
        let mut tls = connect(&client, addr, SERVER, alpn).await.unwrap();
        assert_eq!(
            round_trip(&mut tls, b"hello over mtls").await,
            b"hello over mtls"
        );
        let peer = results.recv().await.unwrap().unwrap();
        assert_eq!(
            peer,
            Peer {
                identity: id(CLIENT),
                alpn
            }
        );
        let conn = tls.get_ref().1;
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(conn.alpn_protocol(), Some(alpn.as_bytes()));
    }
}

#[tokio::test]
async fn refused_when_the_server_has_another_identity() {
    let ca = Ca::new("mesh");
    let client = certified(&ca, CLIENT);
    let impostor = certified(&ca, "spiffe://cluster.local/ns/shop/sa/payments");
    let (addr, mut results) = server(&impostor).await;
    let err = connect(&client, addr, SERVER, Alpn::H2).await.unwrap_err();
    match err {
        TlsError::PeerIdentity(PeerIdentityError::Mismatch {
            expected,
            presented,
        }) => {
            assert_eq!(expected, id(SERVER));
            assert_eq!(
                presented.to_string(),
                "spiffe://cluster.local/ns/shop/sa/payments"
            );
        }
        other => panic!("expected an identity mismatch, got {other}"),
    }
    let io: std::io::Error = TlsError::PeerIdentity(PeerIdentityError::NoIdentity).into();
    assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(
        io.to_string().contains("no URI subject alternative name"),
        "{io}"
    );
    // The server saw the client's refusal.
    let server_err = results.recv().await.unwrap().unwrap_err();
    assert!(
        matches!(
            server_err,
            TlsError::PeerAlert(AlertDescription::CertificateUnknown)
        ),
        "{server_err}"
    );
}

#[tokio::test]
async fn refused_when_the_server_cert_is_from_another_ca() {
    let (ca, rogue) = (Ca::new("mesh"), Ca::new("rogue"));
    let client = certified(&ca, CLIENT);
    // Same identity, signed by a CA the client does not trust.
    let server_creds = certified(&rogue, SERVER);
    let (addr, _results) = server(&server_creds).await;
    let err = connect(&client, addr, SERVER, Alpn::H2).await.unwrap_err();
    assert_invalid_cert!(err, CertificateError::UnknownIssuer);
}

#[tokio::test]
async fn refused_when_the_client_cert_is_from_another_ca() {
    let (ca, rogue) = (Ca::new("mesh"), Ca::new("rogue"));
    let server_creds = certified(&ca, SERVER);
    // The client trusts the server's CA, but its own cert is from the rogue.
    let anchors =
        conduit_proxy_tls::TrustAnchors::from_der([ca.cert.clone(), rogue.cert.clone()]).unwrap();
    let client = Credentials::new(id(CLIENT), anchors);
    let (chain, key) = rogue.issue(CLIENT);
    client.install(chain, key).unwrap();
    let (addr, mut results) = server(&server_creds).await;
    assert_read_refused(connect(&client, addr, SERVER, Alpn::H2).await).await;
    let err = results.recv().await.unwrap().unwrap_err();
    assert_invalid_cert!(err, CertificateError::UnknownIssuer);
}

#[tokio::test]
async fn refused_when_the_client_is_in_another_trust_domain() {
    let ca = Ca::new("shared issuer");
    let server_creds = certified(&ca, SERVER);
    let outsider = certified(&ca, "spiffe://other.example/ns/shop/sa/web");
    let (addr, mut results) = server(&server_creds).await;
    assert_read_refused(connect(&outsider, addr, SERVER, Alpn::H2).await).await;
    let err = results.recv().await.unwrap().unwrap_err();
    match err {
        TlsError::PeerIdentity(PeerIdentityError::WrongTrustDomain {
            expected,
            presented,
        }) => {
            assert_eq!(expected.as_str(), "cluster.local");
            assert_eq!(
                presented.to_string(),
                "spiffe://other.example/ns/shop/sa/web"
            );
        }
        other => panic!("expected a trust domain refusal, got {other}"),
    }
}

/// Credentials whose clock is in the past, holding a certificate that has
/// expired by the real clock.
fn expired(ca: &Ca, identity: &str) -> Credentials {
    let now = SystemTime::now();
    let (not_before, not_after) = (now - 3 * HOUR, now - 2 * HOUR);
    let creds = Credentials::with_clock(
        id(identity),
        ca.anchors(),
        fixed_clock(not_before + HOUR / 2),
    );
    let (chain, key) = ca.issue_between(identity, not_before, not_after);
    creds.install(chain, key).unwrap();
    creds
}

#[tokio::test]
async fn refused_when_the_server_cert_expired() {
    let ca = Ca::new("mesh");
    let client = certified(&ca, CLIENT);
    let (addr, _results) = server(&expired(&ca, SERVER)).await;
    let err = connect(&client, addr, SERVER, Alpn::H2).await.unwrap_err();
    assert_invalid_cert!(err, CertificateError::ExpiredContext { .. });
}

#[tokio::test]
async fn refused_when_the_client_cert_expired() {
    let ca = Ca::new("mesh");
    // The server's certificate is valid at the client's (past) time too, so
    // the refusal is the server's.
    let server_creds = Credentials::new(id(SERVER), ca.anchors());
    let now = SystemTime::now();
    let (chain, key) = ca.issue_between(SERVER, now - 4 * HOUR, now + HOUR);
    server_creds.install(chain, key).unwrap();
    let (addr, mut results) = server(&server_creds).await;
    let _ = connect(&expired(&ca, CLIENT), addr, SERVER, Alpn::H2).await;
    let err = results.recv().await.unwrap().unwrap_err();
    assert_invalid_cert!(err, CertificateError::ExpiredContext { .. });
}

#[tokio::test]
async fn refused_without_a_client_cert() {
    let ca = Ca::new("mesh");
    let server_creds = certified(&ca, SERVER);
    let (addr, mut results) = server(&server_creds).await;
    // A plain TLS client that trusts the CA but has no certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(NoNameCheck(verifier)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"conduit/h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("books").unwrap();
    assert_read_refused(
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await,
    )
    .await;
    let err = results.recv().await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::Handshake(rustls::Error::NoCertificatesPresented)
        ),
        "{err}"
    );
}

/// Chain checks only: lets the test's plain client reach the server.
#[derive(Debug)]
struct NoNameCheck(std::sync::Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for NoNameCheck {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                ..
            }))
            | Ok(_) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            Err(e) => Err(e),
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[tokio::test]
async fn not_ready_without_a_certificate() {
    let ca = Ca::new("mesh");
    let empty = Credentials::new(id(CLIENT), ca.anchors());
    assert!(!empty.is_ready());
    assert_eq!(empty.expiry(), None);
    let server_creds = certified(&ca, SERVER);
    let (addr, _results) = server(&server_creds).await;
    assert!(matches!(
        connect(&empty, addr, SERVER, Alpn::H2).await,
        Err(TlsError::NotReady)
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let acceptor = TlsAcceptor::new(empty).unwrap();
    assert!(matches!(
        acceptor.accept(tcp).await,
        Err(TlsError::NotReady)
    ));
}

#[tokio::test]
async fn a_silent_peer_times_out() {
    let ca = Ca::new("mesh");
    let acceptor = TlsAcceptor::new(certified(&ca, SERVER))
        .unwrap()
        .with_handshake_timeout(Duration::from_millis(200));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _silent = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (tcp, _) = listener.accept().await.unwrap();
    assert!(matches!(
        acceptor.accept(tcp).await,
        Err(TlsError::Timeout(_))
    ));
}
