//! The test certificate authority: leaves like the controller's (one SPIFFE
//! URI SAN, serverAuth and clientAuth) for any identity, CSRs signed as the
//! controller's Certify signs them, and certified [`Credentials`].
//!
//! [`TestCa`] itself lives in `conduit_proxy_tls::testing` (its inside is
//! the controller's issuer's business); tests import it from here. [`Ca`]
//! is the same authority with the errors unwrapped, as tests want it.

use conduit_proxy_tls::{Credentials, SpiffeId, TrustAnchors};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::time::{Duration, SystemTime};

pub use conduit_proxy_tls::testing::{TestCa, TestCaError};

/// An hour, the validity either side of now of [`Ca::issue`]'s leaves.
pub const HOUR: Duration = Duration::from_secs(3600);

/// A [`TestCa`] whose operations panic on failure (a test's setup).
#[derive(Debug)]
pub struct Ca {
    /// The CA's own certificate (the trust anchor).
    pub cert: CertificateDer<'static>,
    inner: TestCa,
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Ca {
        let inner = TestCa::new(name).expect("test CA");
        Ca {
            cert: inner.certificate().clone(),
            inner,
        }
    }

    /// The [`TestCa`] underneath.
    pub fn test_ca(&self) -> &TestCa {
        &self.inner
    }

    /// This CA as the only trust anchor.
    pub fn anchors(&self) -> TrustAnchors {
        self.inner.anchors().expect("test CA anchors")
    }

    /// Signs a CSR (as the controller would), keeping its URI SAN.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> CertificateDer<'static> {
        self.inner
            .sign_csr(csr_der, not_before, not_after)
            .expect("test CA signs the CSR")
    }

    /// A new key and a leaf for it, valid for an hour either side of now.
    pub fn issue(&self, uri: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let now = SystemTime::now();
        self.issue_between(uri, now - HOUR, now + HOUR)
    }

    /// A new key and a leaf for it valid from `not_before` to `not_after`.
    pub fn issue_between(
        &self,
        uri: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        self.inner
            .issue(uri, not_before, not_after)
            .expect("test CA issues")
    }
}

/// `s` as a SPIFFE ID (panics on a bad one: a test's literal).
pub fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).expect("SPIFFE ID")
}

/// Credentials for `identity` holding a fresh certificate from `ca`.
pub fn certified(ca: &Ca, identity: &str) -> Credentials {
    let creds = Credentials::new(id(identity), ca.anchors());
    let (chain, key) = ca.issue(identity);
    creds.install(chain, key).expect("certificate installs");
    creds
}
