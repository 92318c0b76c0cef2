//! Proxy identity and mutual TLS between conduit proxies. Each proxy is a
//! SPIFFE identity (`spiffe://<trust-domain>/ns/<ns>/sa/<service-account>`,
//! [`SpiffeId`]); it makes a private key in memory, has the controller sign
//! a certificate for it (`Identity.Certify`, with the pod's service account
//! token), keeps it renewed ([`Refresher`]), and uses it for mTLS with other
//! proxies: outbound with [`TlsConnector`], which requires the server to
//! present exactly the identity discovery gave; inbound with
//! [`TlsAcceptor`], which requires a client certificate from the trust
//! domain and reports the peer's identity. ALPN names the inter-proxy
//! protocol ([`Alpn`]: `conduit/h2`, `conduit/http1`, `conduit/opaque`). Rotation swaps the
//! certificate that new handshakes present; established connections keep
//! going. The controller's gRPC port is reached over TLS too, with
//! [`ControlConnector`] checking the controller's identity. See docs/identity.md.
//!
//! # Use from the proxy
//!
//! ```no_run
//! use conduit_proxy_tls::{
//!     Alpn, Credentials, GrpcCertifier, Refresher, SpiffeId, TlsAcceptor, TlsConnector, TokenFile,
//!     TrustAnchors,
//! };
//! # async fn proxy() -> Result<(), Box<dyn std::error::Error>> {
//! let me = SpiffeId::new("cluster.local", "default", "web")?;
//! let anchors = TrustAnchors::from_pem_file("/var/run/conduit/identity/trust-anchors.pem")?;
//! let credentials = Credentials::new(me, anchors);
//!
//! // Certify now and renew at ~70% of each certificate's lifetime.
//! let certifier = GrpcCertifier::connect_lazy("http://conduit-controller:8086")?;
//! let token = TokenFile::new("/var/run/secrets/tokens/conduit-identity");
//! tokio::spawn(Refresher::new(credentials.clone(), token, certifier).run());
//!
//! // Readiness (`/ready`) and the expiry gauge.
//! credentials.ready().await;
//! assert!(credentials.is_ready());
//! let _expires = credentials.expiry();
//!
//! // Outbound: to a meshed endpoint whose identity discovery gave.
//! let connector = TlsConnector::new(credentials.clone());
//! let peer: SpiffeId = "spiffe://cluster.local/ns/default/sa/books".parse()?;
//! let tcp = tokio::net::TcpStream::connect("10.0.0.7:4143").await?;
//! let _tls = connector.connect(tcp, &peer, Alpn::H2).await?;
//!
//! // Inbound on 4143.
//! let acceptor = TlsAcceptor::new(credentials.clone())?;
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:4143").await?;
//! let (tcp, _) = listener.accept().await?;
//! let (_tls, peer) = acceptor.accept(tcp).await?;
//! println!("{} speaks {}", peer.identity, peer.alpn);
//! # Ok(())
//! # }
//! ```

mod anchors;
mod certify;
mod clock;
mod connect;
mod control;
mod credentials;
mod refresh;
#[cfg(feature = "testing")]
pub mod testing;
mod verify;

pub use anchors::{AnchorsError, TrustAnchors};
pub use certify::{
    Certified, Certifier, CertifyError, CertifyRequest, DEFAULT_CERTIFY_TIMEOUT, GrpcCertifier,
    MAX_TOKEN_BYTES, TokenError, TokenFile, key_and_csr,
};
pub use clock::{Clock, SystemClock, TokioClock};
/// The identity vocabulary, from `conduit-identity` (one grammar for the
/// whole mesh).
pub use conduit_identity::{NameError, SpiffeId, SpiffeIdError, TrustDomain};
pub use connect::{Alpn, DEFAULT_HANDSHAKE_TIMEOUT, Peer, TlsAcceptor, TlsConnector, TlsError};
pub use control::ControlConnector;
pub use credentials::{Credentials, CredentialsError, CurrentCert};
pub use refresh::{RefreshError, RefreshPolicy, Refresher, refresh_delay, retry_delay};
pub use verify::{PeerIdentityError, certificate_identity};

/// The TLS stream types returned by [`TlsConnector::connect`] and
/// [`TlsAcceptor::accept`].
pub use tokio_rustls::{
    client::TlsStream as ClientTlsStream, server::TlsStream as ServerTlsStream,
};
