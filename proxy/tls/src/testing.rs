//! A throwaway certificate authority (rcgen, in memory) for tests in this
//! crate and in the proxy: it issues leaves like the controller's (one
//! SPIFFE URI SAN, serverAuth and clientAuth) and certified
//! [`Credentials`]. Not for production use.

use crate::anchors::{AnchorsError, TrustAnchors};
use crate::credentials::{Credentials, CredentialsError};
use crate::spiffe::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::time::{Duration, SystemTime};

const HOUR: Duration = Duration::from_secs(3600);

/// Why the test CA could not do something.
#[derive(Debug, thiserror::Error)]
pub enum TestCaError {
    #[error("rcgen: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error(transparent)]
    Anchors(#[from] AnchorsError),
    #[error(transparent)]
    Install(#[from] CredentialsError),
    #[error("CSR must have exactly one URI subject alternative name")]
    CsrIdentity,
}

/// A self-signed CA valid from a day ago to a day from now.
pub struct TestCa {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    pub fn new(name: &str) -> Result<Self, TestCaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        params.not_before = (now - 24 * HOUR).into();
        params.not_after = (now + 24 * HOUR).into();
        let cert = params.self_signed(&key)?.der().clone();
        Ok(TestCa {
            cert,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, DER.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub fn anchors(&self) -> Result<TrustAnchors, TestCaError> {
        Ok(TrustAnchors::from_der([self.cert.clone()])?)
    }

    /// A leaf for `public_key` naming `uri`, valid between the given times.
    pub fn sign(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        uri: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<CertificateDer<'static>, TestCaError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(uri.to_owned().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        Ok(params.signed_by(public_key, &self.issuer)?.der().clone())
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
