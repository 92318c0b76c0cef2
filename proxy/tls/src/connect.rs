//! Mutual TLS between proxies: [`TlsConnector`] (outbound, towards a meshed
//! endpoint) and [`TlsAcceptor`] (inbound, on the proxy's 4143 listener).
//!
//! TLS 1.3 only, no session resumption (every handshake verifies the
//! peer's current certificate); our certificate comes from [`Credentials`]
//! at each handshake.
//! ALPN names the inter-proxy protocol: [`Alpn::H2`] (`conduit/h2`),
//! [`Alpn::Http1`] (`conduit/http1`) or [`Alpn::Opaque`] (`conduit/opaque`).

use crate::credentials::Credentials;
use crate::verify::{
    PeerIdentityError, ServerIdentityVerifier, TrustDomainClientVerifier, certificate_identity,
    identity_error,
};
use conduit_identity::SpiffeId;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{client, server};

/// How long a handshake may take before it is abandoned.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Client configs kept (one per expected identity and protocol).
const MAX_CACHED_CLIENT_CONFIGS: usize = 1024;

/// The inter-proxy protocol, chosen by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alpn {
    /// `conduit/h2`: HTTP/2 between proxies (HTTP/1 and HTTP/2 requests
    /// alike are carried over it).
    H2,
    /// `conduit/http1`: one HTTP/1.1 connection (requests that become byte
    /// streams: `Upgrade`, `CONNECT`).
    Http1,
    /// `conduit/opaque`: a byte stream the proxies do not interpret (TCP,
    /// or protocols not detected).
    Opaque,
}

impl Alpn {
    pub const ALL: [Alpn; 3] = [Alpn::H2, Alpn::Http1, Alpn::Opaque];

    pub const fn as_bytes(self) -> &'static [u8] {
        match self {
            Alpn::H2 => b"conduit/h2",
            Alpn::Http1 => b"conduit/http1",
            Alpn::Opaque => b"conduit/opaque",
        }
    }

    pub fn from_bytes(b: &[u8]) -> Option<Alpn> {
        Alpn::ALL.into_iter().find(|a| a.as_bytes() == b)
    }
}

impl fmt::Display for Alpn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The names are ASCII.
        f.write_str(std::str::from_utf8(self.as_bytes()).unwrap_or("conduit/?"))
    }
}

/// Why a TLS connection was not established.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate yet: this proxy's identity has not been certified")]
    NotReady,
    #[error("TLS handshake did not finish within {0:?}")]
    Timeout(Duration),
    #[error("peer identity refused: {0}")]
    PeerIdentity(#[from] PeerIdentityError),
    #[error("peer refused the handshake (alert {0:?})")]
    PeerAlert(rustls::AlertDescription),
    #[error("TLS handshake failed: {0}")]
    Handshake(rustls::Error),
    #[error("peer did not select an inter-proxy protocol by ALPN")]
    NoAlpn,
    #[error("transport error during the TLS handshake: {0}")]
    Io(std::io::Error),
    #[error("building the TLS configuration failed: {0}")]
    Config(rustls::Error),
}

impl From<std::io::Error> for TlsError {
    fn from(e: std::io::Error) -> Self {
        let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return TlsError::Io(e);
        };
        if let Some(id) = identity_error(tls) {
            return TlsError::PeerIdentity(id.clone());
        }
        match tls {
            rustls::Error::AlertReceived(alert) => TlsError::PeerAlert(*alert),
            other => TlsError::Handshake(other.clone()),
        }
    }
}

impl TlsError {
    /// Whether the peer's identity or certificate is why the handshake
    /// failed (not the network, a timeout or our own readiness): the peer
    /// presented another identity, a certificate that does not verify or
    /// none, or refused ours with an alert.
    pub fn is_peer_identity(&self) -> bool {
        matches!(
            self,
            TlsError::PeerIdentity(_)
                | TlsError::PeerAlert(_)
                | TlsError::Handshake(
                    rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
                )
        )
    }

    /// The I/O error kind this error has on I/O-typed seams: `TimedOut`,
    /// `NotConnected` before the first certificate, `PermissionDenied` for
    /// [peer identity](Self::is_peer_identity) failures, `InvalidData`
    /// otherwise (a transport error keeps its own kind).
    pub fn kind(&self) -> std::io::ErrorKind {
        use std::io::ErrorKind;
        match self {
            TlsError::Io(io) => io.kind(),
            TlsError::Timeout(_) => ErrorKind::TimedOut,
            TlsError::NotReady => ErrorKind::NotConnected,
            e if e.is_peer_identity() => ErrorKind::PermissionDenied,
            _ => ErrorKind::InvalidData,
        }
    }
}

/// For I/O-typed seams: keeps the transport error as it was; the rest get
/// their [`kind`](TlsError::kind), with this error as the inner error (so it
/// can be downcast again).
impl From<TlsError> for std::io::Error {
    fn from(e: TlsError) -> Self {
        match e {
            TlsError::Io(io) => io,
            e => std::io::Error::new(e.kind(), e),
        }
    }
}

/// What the server learnt about an accepted peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The client proxy's identity (from its verified certificate); a label
    /// on inbound metrics.
    pub identity: SpiffeId,
    /// The inter-proxy protocol the client asked for.
    pub alpn: Alpn,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// ALPN of a gRPC server that is not a proxy (an authorization plugin).
const GRPC_ALPN: &[u8] = b"h2";

type ClientConfigs = HashMap<(SpiffeId, &'static [u8]), Arc<ClientConfig>>;

/// Outbound mTLS. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TlsConnector {
    credentials: Credentials,
    configs: Arc<Mutex<ClientConfigs>>,
    timeout: Duration,
}

impl TlsConnector {
    pub fn new(credentials: Credentials) -> Self {
        TlsConnector {
            credentials,
            configs: Default::default(),
            timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Handshakes over `stream`, presenting this proxy's certificate and
    /// requiring the server to present exactly `expected` (from
    /// discovery), chained to the trust anchors. Offers only `alpn`.
    pub async fn connect<S>(
        &self,
        stream: S,
        expected: &SpiffeId,
        alpn: Alpn,
    ) -> Result<client::TlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.credentials.current().is_none() {
            return Err(TlsError::NotReady);
        }
        let config = self.config(expected, alpn.as_bytes())?;
        let tls = match client_handshake(config, stream, self.timeout).await {
            Err(TlsError::PeerIdentity(refused)) => {
                tracing::warn!(expected = %expected, "outbound mTLS refused: {refused}");
                return Err(TlsError::PeerIdentity(refused));
            }
            other => other?,
        };
        if tls.get_ref().1.alpn_protocol() != Some(alpn.as_bytes()) {
            return Err(TlsError::NoAlpn);
        }
        Ok(tls)
    }

    /// Handshakes over `stream` with a gRPC server that is not a proxy (a
    /// meshed authorization plugin): presents this proxy's certificate,
    /// requires the server to present exactly `expected`, offers ALPN `h2`.
    pub async fn connect_grpc<S>(
        &self,
        stream: S,
        expected: &SpiffeId,
    ) -> Result<client::TlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.credentials.current().is_none() {
            return Err(TlsError::NotReady);
        }
        let config = self.config(expected, GRPC_ALPN)?;
        let tls = client_handshake(config, stream, self.timeout)
            .await
            .inspect_err(
                |e| tracing::warn!(expected = %expected, "mTLS to a gRPC server refused: {e}"),
            )?;
        if tls.get_ref().1.alpn_protocol() != Some(GRPC_ALPN) {
            return Err(TlsError::NoAlpn);
        }
        Ok(tls)
    }

    /// One config per (identity, protocol), each with its own verifier.
    fn config(
        &self,
        expected: &SpiffeId,
        alpn: &'static [u8],
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = configs.get(&(expected.clone(), alpn)) {
            return Ok(c.clone());
        }
        let verifier =
            ServerIdentityVerifier::new(self.credentials.anchors().clone(), expected.clone());
        let mut config =
            ClientConfig::builder_with_details(provider(), self.credentials.time_provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(TlsError::Config)?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_client_cert_resolver(self.credentials.resolver());
        config.alpn_protocols = vec![alpn.to_vec()];
        config.enable_sni = false;
        // Every handshake verifies the peer's current certificate (see
        // docs/identity.md: no resumption).
        config.resumption = rustls::client::Resumption::disabled();
        let config = Arc::new(config);
        if configs.len() >= MAX_CACHED_CLIENT_CONFIGS {
            configs.clear();
        }
        configs.insert((expected.clone(), alpn), config.clone());
        Ok(config)
    }
}

/// A client handshake over `stream` within `timeout`. SNI is off and the
/// name is not checked: `config`'s verifier checks the server's identity
/// against its SPIFFE URI SAN.
pub(crate) async fn client_handshake<S>(
    config: Arc<ClientConfig>,
    stream: S,
    timeout: Duration,
) -> Result<client::TlsStream<S>, TlsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = ServerName::try_from("peer.conduit.invalid")
        .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
    let connecting = tokio_rustls::TlsConnector::from(config).connect(name, stream);
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Err(TlsError::Timeout(timeout)),
        Ok(result) => result.map_err(TlsError::from),
    }
}

/// Inbound mTLS. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TlsAcceptor {
    credentials: Credentials,
    config: Arc<ServerConfig>,
    timeout: Duration,
}

impl TlsAcceptor {
    /// Requires client certificates from the credentials' trust domain.
    pub fn new(credentials: Credentials) -> Result<Self, TlsError> {
        let verifier = TrustDomainClientVerifier::new(
            credentials.anchors(),
            credentials.identity().trust_domain().clone(),
        )
        .map_err(TlsError::Config)?;
        let mut config =
            ServerConfig::builder_with_details(provider(), credentials.time_provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(TlsError::Config)?
                .with_client_cert_verifier(Arc::new(verifier))
                .with_cert_resolver(credentials.resolver());
        config.alpn_protocols = Alpn::ALL.iter().map(|a| a.as_bytes().to_vec()).collect();
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(TlsAcceptor {
            credentials,
            config: Arc::new(config),
            timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        })
    }

    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Handshakes over an accepted `stream`; returns the stream and the
    /// peer's verified identity and protocol.
    pub async fn accept<S>(&self, stream: S) -> Result<(server::TlsStream<S>, Peer), TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.credentials.current().is_none() {
            return Err(TlsError::NotReady);
        }
        let accepting = tokio_rustls::TlsAcceptor::from(self.config.clone()).accept(stream);
        let tls = match tokio::time::timeout(self.timeout, accepting).await {
            Err(_) => return Err(TlsError::Timeout(self.timeout)),
            Ok(Err(e)) => {
                let e = TlsError::from(e);
                if let TlsError::PeerIdentity(refused) = &e {
                    tracing::warn!("inbound mTLS refused: {refused}");
                }
                return Err(e);
            }
            Ok(Ok(tls)) => tls,
        };
        let conn = tls.get_ref().1;
        let alpn = conn
            .alpn_protocol()
            .and_then(Alpn::from_bytes)
            .ok_or(TlsError::NoAlpn)?;
        // The verifier required a certificate; read the identity it checked.
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or(PeerIdentityError::NoIdentity)?;
        let identity = certificate_identity(leaf)?;
        Ok((tls, Peer { identity, alpn }))
    }
}
