//! A throwaway certificate authority for tests in this crate and in the
//! proxy. It is the controller's own issuer
//! ([`conduit_identity::issuer::Issuer`], generated in memory), and its
//! leaves are minted by the same [`Issuer::sign_leaf`] the controller's
//! `Certify` uses, so tests handshake with the certificates the mesh really
//! issues. It adds what tests need on top: any validity window, any URI
//! (to script refusals), certified [`Credentials`]. Not for production use.

use crate::anchors::{AnchorsError, TrustAnchors};
use crate::credentials::{Credentials, CredentialsError};
use conduit_identity::SpiffeId;
use conduit_identity::issuer::{Issuer, IssuerError};
use rcgen::{KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::time::{Duration, SystemTime};

const HOUR: Duration = Duration::from_secs(3600);

/// Why the test CA could not do something.
#[derive(Debug, thiserror::Error)]
pub enum TestCaError {
    #[error("rcgen: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error(transparent)]
    Issuer(#[from] IssuerError),
    #[error(transparent)]
    Anchors(#[from] AnchorsError),
    #[error(transparent)]
    Install(#[from] CredentialsError),
    #[error("CSR must have exactly one URI subject alternative name")]
    CsrIdentity,
}

/// The controller's issuer, self-signed, valid from a day ago to a day from
/// now.
pub struct TestCa {
    cert: CertificateDer<'static>,
    issuer: Issuer,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA; `name` goes into its common name (as the controller's
    /// trust domain does).
    pub fn new(name: &str) -> Result<Self, TestCaError> {
        let now = SystemTime::now();
        let issuer = Issuer::generate(name, now - 24 * HOUR, 48 * HOUR)?;
        let cert = CertificateDer::from(issuer.chain()[0].clone());
        Ok(TestCa { cert, issuer })
    }

    /// The issuer, for tests that sign as the controller does.
    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    /// The CA certificate, DER.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub fn anchors(&self) -> Result<TrustAnchors, TestCaError> {
        Ok(TrustAnchors::from_der([self.cert.clone()])?)
    }

    /// A leaf for `public_key` naming `uri`, valid between the given times
    /// (the issuer's [`sign_leaf`](Issuer::sign_leaf)).
    pub fn sign(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        uri: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<CertificateDer<'static>, TestCaError> {
        let der = self
            .issuer
            .sign_leaf(public_key, uri, not_before, not_after)?;
        Ok(CertificateDer::from(der))
    }

    /// Signs a CSR (as the controller would), keeping its URI SAN.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<CertificateDer<'static>, TestCaError> {
        let csr = rcgen::CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())?;
        let [SanType::URI(uri)] = csr.params.subject_alt_names.as_slice() else {
            return Err(TestCaError::CsrIdentity);
        };
        self.sign(&csr.public_key, uri.as_str(), not_before, not_after)
    }

    /// A new key and a leaf for it naming `uri`.
    pub fn issue(
        &self,
        uri: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TestCaError> {
        let key = KeyPair::generate()?;
        let leaf = self.sign(&key, uri, not_before, not_after)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![leaf], key))
    }

    /// Credentials for `identity`, trusting this CA and holding a
    /// certificate valid for an hour either side of now.
    pub fn credentials(&self, identity: &SpiffeId) -> Result<Credentials, TestCaError> {
        let credentials = Credentials::new(identity.clone(), self.anchors()?);
        let now = SystemTime::now();
        let (chain, key) = self.issue(&identity.to_string(), now - HOUR, now + HOUR)?;
        credentials.install(chain, key)?;
        Ok(credentials)
    }
}
