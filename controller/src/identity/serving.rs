//! The controller's own certificate for its gRPC port (`--grpc-tls`).
//!
//! Proxies send their service account tokens to `Certify` and trust what
//! `Destination` tells them, so the port is TLS: the controller makes a key
//! in memory, has its own issuer sign a certificate for its SPIFFE identity
//! (`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`), presents
//! it, and renews it at about 70% of its lifetime (new handshakes get the new
//! one). Proxies verify it against their trust anchors and the identity they
//! are told (`--controller-identity`). Clients present no certificate: a
//! proxy asks for its first one over this connection, and its token is the
//! proof of who it is.

use super::certify::{Certifier, CertifyError};
use crate::model::TokenVerifier;
use conduit_base::sync::UnpoisonedRw;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Retry delay after a failed renewal (the current certificate stays).
const RETRY: Duration = Duration::from_secs(10);

/// Why the serving certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("generating the serving key: {0}")]
    Key(#[from] rcgen::Error),
    #[error("signing the serving certificate: {0}")]
    Certify(#[from] CertifyError),
    #[error("the serving certificate is unusable: {0}")]
    Tls(#[from] rustls::Error),
}

/// The certificate new handshakes present; swapped on renewal.
#[derive(Debug)]
struct Current(RwLock<(Arc<CertifiedKey>, SystemTime, SystemTime)>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read_locked().0.clone())
    }
}

/// TLS for the gRPC port: the acceptor, and the task that renews its
/// certificate (aborted on drop).
pub struct ServingTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub identity: String,
    renew: JoinHandle<()>,
}

impl Drop for ServingTls {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

impl ServingTls {
    /// Certifies `identity` with `certifier`'s issuer now, and keeps it renewed.
    pub fn start<V: TokenVerifier>(
        certifier: Arc<Certifier<V>>,
        identity: String,
    ) -> Result<Self, ServingError> {
        let current = Arc::new(Current(RwLock::new(issue(&certifier, &identity)?)));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        let renew = tokio::spawn(renew(certifier, identity.clone(), current));
        tracing::info!(%identity, "gRPC port serves TLS");
        Ok(ServingTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            identity,
            renew,
        })
    }

    /// Handshakes accepted connections, each on a task of its own (a slow
    /// client delays nobody), and yields the ones that finish in time.
    pub fn incoming(
        &self,
        listener: tokio::net::TcpListener,
    ) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsConn>> {
        let (tx, rx) = mpsc::channel(64);
        let acceptor = self.acceptor.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "gRPC accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, conns) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = conns.send(Ok(TlsConn(tls))).await;
                        }
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "gRPC TLS handshake failed")
                        }
                        Err(_) => tracing::info!(%peer, "gRPC TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A new key, signed: (certified key, not before, not after).
fn issue<V: TokenVerifier>(
    certifier: &Certifier<V>,
    identity: &str,
) -> Result<(Arc<CertifiedKey>, SystemTime, SystemTime), ServingError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let signed = certifier.certify_own(identity, &key.subject_public_key_info())?;
    let mut chain = vec![CertificateDer::from(signed.leaf_der)];
    chain.extend(signed.chain.into_iter().map(CertificateDer::from));
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let certified = CertifiedKey::from_der(chain, key_der, &provider())?;
    Ok((Arc::new(certified), SystemTime::now(), signed.not_after))
}

/// Renews at 70% of each certificate's lifetime; on failure keeps the
/// current one and retries.
async fn renew<V: TokenVerifier>(
    certifier: Arc<Certifier<V>>,
    identity: String,
    current: Arc<Current>,
) {
    loop {
        let (issued, expires) = {
            let c = current.0.read_locked();
            (c.1, c.2)
        };
        let lifetime = expires.duration_since(issued).unwrap_or_default();
        let at = issued + lifetime.mul_f64(0.7);
        let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::sleep(wait.max(Duration::from_millis(100))).await;
        match issue(&certifier, &identity) {
            Ok(next) => {
                tracing::info!(%identity, expires = ?next.2, "gRPC serving certificate renewed");
                *current.0.write_locked() = next;
            }
            Err(e) => {
                tracing::warn!(%identity, error = %e, "renewing the gRPC serving certificate failed; retrying in {RETRY:?}");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// An accepted TLS connection, as tonic's server takes it.
pub struct TlsConn(tokio_rustls::server::TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        let tcp = self.0.get_ref().0;
        tonic::transport::server::TcpConnectInfo {
            local_addr: tcp.local_addr().ok(),
            remote_addr: tcp.peer_addr().ok(),
        }
    }
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
