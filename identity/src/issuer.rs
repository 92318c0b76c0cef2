//! The certificate authority that signs workload certificates: loaded from
//! PEM files, or generated in memory for local use. [`Issuer::sign_leaf`]
//! mints every workload certificate of the mesh: the controller's
//! `Certify` calls it after its checks, and the proxy's test CA
//! (`conduit_proxy_tls::testing::TestCa`) calls it too, so tests exercise
//! the certificates the controller really issues.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use std::time::{Duration, SystemTime};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why an issuer could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("issuer certificate PEM has no CERTIFICATE block")]
    NoCertificate,
    #[error("issuer certificate PEM is malformed: {0}")]
    Pem(String),
    #[error("issuer certificate is not valid X.509: {0}")]
    Certificate(String),
    #[error("issuer key is not a usable private key (PKCS#8 PEM expected): {0}")]
    Key(rcgen::Error),
    #[error("issuer key does not belong to the issuer certificate")]
    KeyMismatch,
    #[error("issuer certificate is not a CA (basicConstraints cA is not set)")]
    NotCa,
    #[error("generating an issuer failed: {0}")]
    Generate(rcgen::Error),
    #[error("the leaf's subject alternative name {uri:?} cannot be encoded (ASCII only): {source}")]
    Uri { uri: String, source: rcgen::Error },
    #[error("signing failed: {0}")]
    Sign(rcgen::Error),
}

/// A certificate authority: the issuer certificate (and its chain) with its
/// key.
pub struct Issuer {
    issuer: rcgen::Issuer<'static, KeyPair>,
    /// DER: the issuer certificate, then any certificates after it in the PEM.
    chain: Vec<Vec<u8>>,
    not_before: SystemTime,
    not_after: SystemTime,
    pem: String,
}

impl Issuer {
    /// From a certificate PEM (the issuer first, optionally followed by its
    /// intermediates) and its PKCS#8 private key PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Issuer, IssuerError> {
        let mut chain = Vec::new();
        for block in pem_blocks(cert_pem)? {
            if block.0 == "CERTIFICATE" {
                chain.push(block.1);
            }
        }
        let first = chain.first().ok_or(IssuerError::NoCertificate)?;
        let (_, cert) = X509Certificate::from_der(first)
            .map_err(|e| IssuerError::Certificate(e.to_string()))?;
        if !cert.is_ca() {
            return Err(IssuerError::NotCa);
        }
        let key = KeyPair::from_pem(key_pem).map_err(IssuerError::Key)?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(IssuerError::KeyMismatch);
        }
        let not_before = to_system(cert.validity().not_before.timestamp());
        let not_after = to_system(cert.validity().not_after.timestamp());
        let issuer = rcgen::Issuer::from_ca_cert_der(&first.clone().into(), key)
            .map_err(|e| IssuerError::Certificate(e.to_string()))?;
        let pem = cert_pem.to_owned();
        Ok(Issuer {
            issuer,
            chain,
            not_before,
            not_after,
            pem,
        })
    }

    /// A new self-signed issuer for `trust_domain`, valid from `not_before`
    /// for `lifetime`. For local use only: nothing outside this process knows
    /// it unless its certificate is written out.
    pub fn generate(
        trust_domain: &str,
        not_before: SystemTime,
        lifetime: Duration,
    ) -> Result<Issuer, IssuerError> {
        let key = KeyPair::generate().map_err(IssuerError::Generate)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("conduit identity issuer ({trust_domain})"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = not_before.into();
        params.not_after = (not_before + lifetime).into();
        let cert = params.self_signed(&key).map_err(IssuerError::Generate)?;
        Self::from_pem(&cert.pem(), &key.serialize_pem())
    }

    pub fn signer(&self) -> &rcgen::Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// A workload certificate (DER) for `public_key`, naming `uri` (a SPIFFE
    /// ID; callers check it) as its only subject alternative name, valid
    /// between the given times, for both TLS server and client use, with a
    /// random serial and the issuer's key identifier. The caller decides the
    /// validity (the controller clamps it to the issuer's own).
    pub fn sign_leaf(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        uri: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Vec<u8>, IssuerError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let san = uri
            .to_owned()
            .try_into()
            .map_err(|source| IssuerError::Uri {
                uri: uri.to_owned(),
                source,
            })?;
        params.subject_alt_names = vec![SanType::URI(san)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(IssuerError::Sign)?;
        Ok(cert.der().to_vec())
    }

    /// DER certificates to send after a leaf: the issuer, then its parents.
    pub fn chain(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// The issuer chain as PEM (for proxies' trust anchors).
    pub fn certificate_pem(&self) -> &str {
        &self.pem
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

fn to_system(unix: i64) -> SystemTime {
    if unix >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

fn pem_blocks(text: &str) -> Result<Vec<(String, Vec<u8>)>, IssuerError> {
    x509_parser::pem::Pem::iter_from_buffer(text.as_bytes())
        .map(|p| {
            p.map(|p| (p.label, p.contents))
                .map_err(|e| IssuerError::Pem(e.to_string()))
        })
        .collect()
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_name_the_uri_and_chain_to_the_issuer() {
        use x509_parser::extensions::{GeneralName, ParsedExtension};
        let now = SystemTime::now();
        let ca = Issuer::generate("td", now, Duration::from_secs(3600)).unwrap();
        let key = KeyPair::generate().unwrap();
        let uri = "spiffe://td/ns/a/sa/b";
        let der = ca
            .sign_leaf(&key, uri, now, now + Duration::from_secs(60))
            .unwrap();
        let (_, leaf) = X509Certificate::from_der(&der).unwrap();
        let (_, issuer) = X509Certificate::from_der(&ca.chain()[0]).unwrap();
        leaf.verify_signature(Some(issuer.public_key())).unwrap();
        assert!(!leaf.is_ca());
        let sans: Vec<_> = leaf
            .extensions()
            .iter()
            .filter_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => Some(san.general_names.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(sans, vec![GeneralName::URI(uri)]);
        assert!(matches!(
            ca.sign_leaf(&key, "spiffe://\u{e9}", now, now).unwrap_err(),
            IssuerError::Uri { .. }
        ));
    }

    #[test]
    fn generated_issuer_round_trips_through_pem() {
        let now = SystemTime::now();
        let a = Issuer::generate("td", now, Duration::from_secs(3600)).unwrap();
        assert!(a.not_after() > now);
        assert_eq!(a.chain().len(), 1);
        // The PEM we produce parses back to the same certificate.
        let blocks = pem_blocks(a.certificate_pem()).unwrap();
        assert_eq!(blocks[0].1, a.chain()[0]);
    }

    #[test]
    fn refuses_a_key_of_another_certificate() {
        let now = SystemTime::now();
        let a = Issuer::generate("td", now, Duration::from_secs(3600)).unwrap();
        let other = KeyPair::generate().unwrap();
        let err = Issuer::from_pem(a.certificate_pem(), &other.serialize_pem())
            .err()
            .unwrap();
        assert!(matches!(err, IssuerError::KeyMismatch), "{err}");
        assert!(matches!(
            Issuer::from_pem("", "").err().unwrap(),
            IssuerError::NoCertificate
        ));
    }
}
