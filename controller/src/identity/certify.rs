//! `Certify`'s checks and signing, independent of gRPC.

use super::issuer::Issuer;
use crate::model::{TokenError, TokenVerifier};
use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType,
    SerialNumber,
};
use std::time::{Duration, SystemTime};
use tonic::Code;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

/// Why a certificate was refused. Each maps to one gRPC status code.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    #[error(
        "identity {0:?} is not a SPIFFE ID of the form spiffe://{1}/ns/<namespace>/sa/<serviceaccount>"
    )]
    BadIdentity(String, String),
    #[error("identity {id:?} is not in this controller's trust domain {expected:?}")]
    WrongTrustDomain { id: String, expected: String },
    #[error("token missing: a service account token (or a token from the token file) is required")]
    NoToken,
    #[error("malformed CSR: {0}")]
    MalformedCsr(String),
    #[error("CSR signature does not verify with the CSR's own public key")]
    BadCsrSignature,
    #[error("CSR has no identity: exactly one URI subject alternative name is required")]
    NoIdentity,
    #[error("CSR has {0} subject alternative names: exactly one (a URI) is required")]
    ManyIdentities(usize),
    #[error("CSR identity is {0}, not a URI subject alternative name")]
    NotUri(String),
    #[error("CSR identity {csr:?} does not match the requested identity {requested:?}")]
    IdentityMismatch { csr: String, requested: String },
    #[error("CSR public key not supported: {0}")]
    UnsupportedKey(String),
    #[error("issuer certificate expired at {0}; install a new issuer")]
    IssuerExpired(time::OffsetDateTime),
    #[error("issuer certificate is not valid before {0}")]
    IssuerNotYetValid(time::OffsetDateTime),
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("signing failed: {0}")]
    Sign(String),
}

impl CertifyError {
    pub fn code(&self) -> Code {
        use CertifyError::*;
        match self {
            BadIdentity(..)
            | WrongTrustDomain { .. }
            | MalformedCsr(_)
            | BadCsrSignature
            | NoIdentity
            | ManyIdentities(_)
            | NotUri(_)
            | IdentityMismatch { .. }
            | UnsupportedKey(_) => Code::InvalidArgument,
            NoToken | Token(TokenError::Rejected(_)) => Code::Unauthenticated,
            Token(TokenError::WrongIdentity { .. }) => Code::PermissionDenied,
            Token(TokenError::Unavailable(_)) => Code::Unavailable,
            IssuerExpired(_) | IssuerNotYetValid(_) => Code::FailedPrecondition,
            Sign(_) => Code::Internal,
        }
    }
}

impl From<CertifyError> for tonic::Status {
    fn from(e: CertifyError) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}

/// A signed leaf.
#[derive(Debug, Clone)]
pub struct Signed {
    pub leaf_der: Vec<u8>,
    /// The issuer chain, nearest first.
    pub chain: Vec<Vec<u8>>,
    pub not_after: SystemTime,
}

/// A SPIFFE ID's Kubernetes parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadId {
    pub namespace: String,
    pub service_account: String,
}

/// Parses `spiffe://<trust_domain>/ns/<ns>/sa/<sa>`.
pub fn parse_spiffe_id(id: &str, trust_domain: &str) -> Result<WorkloadId, CertifyError> {
    let bad = || CertifyError::BadIdentity(id.into(), trust_domain.into());
    let rest = id.strip_prefix("spiffe://").ok_or_else(bad)?;
    let (td, path) = rest.split_once('/').ok_or_else(bad)?;
    let parts: Vec<&str> = path.split('/').collect();
    let ["ns", ns, "sa", sa] = parts.as_slice() else {
        return Err(bad());
    };
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    if !name_ok(ns) || !name_ok(sa) || td.is_empty() {
        return Err(bad());
    }
    if td != trust_domain {
        return Err(CertifyError::WrongTrustDomain {
            id: id.into(),
            expected: trust_domain.into(),
        });
    }
    Ok(WorkloadId {
        namespace: (*ns).into(),
        service_account: (*sa).into(),
    })
}

pub struct Certifier<V> {
    issuer: Issuer,
    verifier: V,
    trust_domain: String,
    leaf_lifetime: Duration,
}

impl<V: TokenVerifier> Certifier<V> {
    pub fn new(issuer: Issuer, verifier: V, trust_domain: String, leaf_lifetime: Duration) -> Self {
        Certifier {
            issuer,
            verifier,
            trust_domain,
            leaf_lifetime,
        }
    }

    /// The token checks (also used to prove which pod a policy watcher is).
    pub fn verifier(&self) -> &V {
        &self.verifier
    }

    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Checks everything, cheapest first, then signs.
    pub async fn certify(
        &self,
        identity: &str,
        token: &str,
        csr_der: &[u8],
    ) -> Result<Signed, CertifyError> {
        let now = SystemTime::now();
        let id = parse_spiffe_id(identity, &self.trust_domain)?;
        if now >= self.issuer.not_after() {
            return Err(CertifyError::IssuerExpired(self.issuer.not_after().into()));
        }
        if now < self.issuer.not_before() {
            return Err(CertifyError::IssuerNotYetValid(
                self.issuer.not_before().into(),
            ));
        }
        let spki = check_csr(csr_der, identity)?;
        if token.is_empty() {
            return Err(CertifyError::NoToken);
        }
        self.verifier
            .verify(token, &id.namespace, &id.service_account)
            .await?;
        self.sign(identity, &spki, now)
    }

    /// Signs a certificate for the controller's own serving key (its gRPC
    /// port under `--grpc-tls`): the same checks of the identity and the
    /// issuer as [`certify`](Self::certify), no token (this never comes from
    /// the network).
    pub fn certify_own(&self, identity: &str, spki_der: &[u8]) -> Result<Signed, CertifyError> {
        let now = SystemTime::now();
        parse_spiffe_id(identity, &self.trust_domain)?;
        if now >= self.issuer.not_after() {
            return Err(CertifyError::IssuerExpired(self.issuer.not_after().into()));
        }
        self.sign(identity, spki_der, now)
    }

    fn sign(
        &self,
        identity: &str,
        spki_der: &[u8],
        now: SystemTime,
    ) -> Result<Signed, CertifyError> {
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|e| CertifyError::UnsupportedKey(e.to_string()))?;
        let not_before = (now - Duration::from_secs(60)).max(self.issuer.not_before());
        let not_after = (now + self.leaf_lifetime).min(self.issuer.not_after());
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = identity
            .to_owned()
            .try_into()
            .map_err(|e: rcgen::Error| CertifyError::Sign(e.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
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
            .signed_by(&public_key, self.issuer.signer())
            .map_err(|e| CertifyError::Sign(e.to_string()))?;
        Ok(Signed {
            leaf_der: cert.der().to_vec(),
            chain: self.issuer.chain().to_vec(),
            not_after: truncate_to_seconds(not_after),
        })
    }
}

/// Certificates carry whole seconds.
fn truncate_to_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// Checks the CSR's form, self-signature and identity; returns its
/// SubjectPublicKeyInfo (DER).
fn check_csr(der: &[u8], requested: &str) -> Result<Vec<u8>, CertifyError> {
    if der.is_empty() {
        return Err(CertifyError::MalformedCsr("empty".into()));
    }
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| CertifyError::MalformedCsr(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertifyError::MalformedCsr(format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }
    csr.verify_signature()
        .map_err(|_| CertifyError::BadCsrSignature)?;
    let mut names: Vec<&GeneralName<'_>> = Vec::new();
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                names.extend(san.general_names.iter());
            }
        }
    }
    match names.as_slice() {
        [] => Err(CertifyError::NoIdentity),
        [GeneralName::URI(uri)] if *uri == requested => {
            Ok(csr.certification_request_info.subject_pki.raw.to_vec())
        }
        [GeneralName::URI(uri)] => Err(CertifyError::IdentityMismatch {
            csr: (*uri).into(),
            requested: requested.into(),
        }),
        [other] => Err(CertifyError::NotUri(other.to_string())),
        many => Err(CertifyError::ManyIdentities(many.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids() {
        let ok = parse_spiffe_id("spiffe://td.local/ns/default/sa/web", "td.local").unwrap();
        assert_eq!(
            ok,
            WorkloadId {
                namespace: "default".into(),
                service_account: "web".into()
            }
        );
        for bad in [
            "spiffe://td.local/ns/default/sa/",
            "spiffe://td.local/ns/default/sa/web/extra",
            "spiffe://td.local/ns/Default/sa/web",
            "https://td.local/ns/default/sa/web",
            "spiffe://td.local/sa/web/ns/default",
            "spiffe:///ns/default/sa/web",
        ] {
            assert!(
                matches!(
                    parse_spiffe_id(bad, "td.local"),
                    Err(CertifyError::BadIdentity(..))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_spiffe_id("spiffe://other/ns/default/sa/web", "td.local"),
            Err(CertifyError::WrongTrustDomain { .. })
        ));
    }
}
