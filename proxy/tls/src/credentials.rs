//! The proxy's current certificate and key, swapped atomically on rotation.
//!
//! [`Credentials`] is the one place the certificate lives. The TLS configs
//! read it through [`CertResolver`] at every handshake, so a rotation changes
//! what new handshakes present and never touches established connections.
//! It is also the readiness signal (a certificate is held) and the source of
//! the certificate-expiry metric.

use crate::anchors::TrustAnchors;
use crate::clock::{Clock, RustlsTime, SystemClock};
use crate::verify::{PeerIdentityError, certificate_identity, check_own_chain};
use conduit_identity::SpiffeId;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::time_provider::TimeProvider;
use rustls::{SignatureScheme, crypto::CryptoProvider};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a certificate was not installed.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("certificate chain is empty")]
    EmptyChain,
    #[error("certificate is not valid X.509: {0}")]
    Malformed(String),
    #[error("certificate identity: {0}")]
    Identity(#[from] PeerIdentityError),
    #[error("certificate is for {presented}, but this proxy is {expected}")]
    NotOurs {
        expected: SpiffeId,
        presented: SpiffeId,
    },
    #[error("private key unusable or does not match the certificate: {0}")]
    Key(rustls::Error),
    #[error("certificate does not verify against the trust anchors: {0}")]
    Untrusted(rustls::Error),
}

/// An installed certificate.
#[derive(Debug)]
pub struct CurrentCert {
    key: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl CurrentCert {
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// The certificate's expiry (for the `identity_cert_expiration` metric).
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The leaf certificate, DER.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.key.cert[0]
    }

    pub(crate) fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.key
    }
}

/// The proxy's identity, trust anchors and current certificate. Cheap to
/// clone; clones share the certificate.
#[derive(Debug, Clone)]
pub struct Credentials {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    identity: SpiffeId,
    anchors: TrustAnchors,
    clock: Arc<dyn Clock>,
    current: watch::Sender<Option<Arc<CurrentCert>>>,
}

impl Credentials {
    /// No certificate yet: not ready until one is installed.
    pub fn new(identity: SpiffeId, anchors: TrustAnchors) -> Self {
        Self::with_clock(identity, anchors, Arc::new(SystemClock))
    }

    /// Like [`Credentials::new`], with validity judged by `clock` (also
    /// in the TLS configs built from these credentials).
    pub fn with_clock(identity: SpiffeId, anchors: TrustAnchors, clock: Arc<dyn Clock>) -> Self {
        let (current, _) = watch::channel(None);
        Credentials {
            shared: Arc::new(Shared {
                identity,
                anchors,
                clock,
                current,
            }),
        }
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.shared.identity
    }

    pub fn anchors(&self) -> &TrustAnchors {
        &self.shared.anchors
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }

    pub(crate) fn time_provider(&self) -> Arc<dyn TimeProvider> {
        Arc::new(RustlsTime(self.shared.clock.clone()))
    }

    /// Checks and installs a certificate: `chain` is the leaf then its
    /// issuers; `key` the leaf's private key (PKCS#8). The leaf must name
    /// this proxy's identity, match the key, be valid now and chain to the
    /// trust anchors. On success new handshakes present it at once.
    pub fn install(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<CurrentCert>, CredentialsError> {
        let leaf = chain.first().ok_or(CredentialsError::EmptyChain)?;
        let presented = certificate_identity(leaf)?;
        if presented != self.shared.identity {
            return Err(CredentialsError::NotOurs {
                expected: self.shared.identity.clone(),
                presented,
            });
        }
        let (not_before, not_after) = validity(leaf)?;
        let now = self.time_provider().current_time().ok_or_else(|| {
            CredentialsError::Untrusted(rustls::Error::General("no current time".into()))
        })?;
        check_own_chain(&self.shared.anchors, &chain, &self.shared.identity, now)
            .map_err(CredentialsError::Untrusted)?;
        let provider: CryptoProvider = rustls::crypto::ring::default_provider();
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(CredentialsError::Key)?;
        let cert = Arc::new(CurrentCert {
            key: Arc::new(key),
            not_before,
            not_after,
        });
        self.shared.current.send_replace(Some(cert.clone()));
        tracing::info!(identity = %self.shared.identity, expires = ?not_after, "certificate installed");
        Ok(cert)
    }

    /// The certificate in use, if any (it may have expired).
    pub fn current(&self) -> Option<Arc<CurrentCert>> {
        self.shared.current.borrow().clone()
    }

    /// The current certificate's expiry, if there is one.
    pub fn expiry(&self) -> Option<SystemTime> {
        self.shared.current.borrow().as_ref().map(|c| c.not_after)
    }

    /// Ready: holds a certificate that has not expired.
    pub fn is_ready(&self) -> bool {
        self.expiry().is_some_and(|t| self.shared.clock.now() < t)
    }

    /// Waits until a certificate is installed.
    pub async fn ready(&self) {
        let mut rx = self.shared.current.subscribe();
        // The sender lives in `self`, so this cannot fail.
        let _ = rx.wait_for(|c| c.is_some()).await;
    }

    /// Follows certificate changes (each install), e.g. to update the
    /// expiry gauge.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<CurrentCert>>> {
        self.shared.current.subscribe()
    }

    pub(crate) fn resolver(&self) -> Arc<CertResolver> {
        Arc::new(CertResolver {
            credentials: self.clone(),
        })
    }
}

/// The leaf's notBefore and notAfter.
fn validity(leaf: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), CredentialsError> {
    let (_, x509) =
        X509Certificate::from_der(leaf).map_err(|e| CredentialsError::Malformed(e.to_string()))?;
    let v = x509.validity();
    Ok((
        to_system(v.not_before.timestamp()),
        to_system(v.not_after.timestamp()),
    ))
}

fn to_system(unix: i64) -> SystemTime {
    if unix >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

/// Presents the current certificate, as client and as server.
#[derive(Debug)]
pub(crate) struct CertResolver {
    credentials: Credentials,
}

impl CertResolver {
    fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.credentials
            .current()
            .map(|c| c.certified_key().clone())
    }
}

impl ResolvesClientCert for CertResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        self.credentials.current().is_some()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}
