//! `Certify`'s checks and signing, independent of gRPC.

use crate::model::{TokenError, TokenVerifier};
use conduit_identity::issuer::{Issuer, IssuerError};
use conduit_identity::{SpiffeId, SpiffeIdError, TrustDomain};
use std::time::{Duration, SystemTime};
use tonic::Code;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

/// Why a certificate was refused. Each maps to one gRPC status code.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    #[error(
        "identity {0:?} is not a SPIFFE ID of the form spiffe://{1}/ns/<namespace>/sa/<serviceaccount>: {2}"
    )]
    BadIdentity(String, TrustDomain, SpiffeIdError),
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
    Sign(#[from] IssuerError),
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

/// Parses `id` with the mesh's one grammar ([`SpiffeId`]) and requires it
/// to be in `trust_domain`.
pub fn parse_spiffe_id(id: &str, trust_domain: &TrustDomain) -> Result<SpiffeId, CertifyError> {
    let parsed = SpiffeId::parse(id)
        .map_err(|e| CertifyError::BadIdentity(id.into(), trust_domain.clone(), e))?;
    if parsed.trust_domain() != trust_domain {
        return Err(CertifyError::WrongTrustDomain {
            id: id.into(),
            expected: trust_domain.to_string(),
        });
    }
    Ok(parsed)
}

pub struct Certifier<V> {
    issuer: Issuer,
    verifier: V,
    trust_domain: TrustDomain,
    leaf_lifetime: Duration,
}

impl<V: TokenVerifier> Certifier<V> {
    pub fn new(
        issuer: Issuer,
        verifier: V,
        trust_domain: TrustDomain,
        leaf_lifetime: Duration,
    ) -> Self {
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

    pub fn trust_domain(&self) -> &TrustDomain {
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
            .verify(token, id.namespace(), id.service_account())
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
        let leaf_der = self
            .issuer
            .sign_leaf(&public_key, identity, not_before, not_after)?;
        Ok(Signed {
            leaf_der,
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

    fn td() -> TrustDomain {
        TrustDomain::new("td.local").unwrap()
    }

    #[test]
    fn spiffe_ids() {
        let ok = parse_spiffe_id("spiffe://td.local/ns/default/sa/web", &td()).unwrap();
        assert_eq!((ok.namespace(), ok.service_account()), ("default", "web"));
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
                    parse_spiffe_id(bad, &td()),
                    Err(CertifyError::BadIdentity(..))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_spiffe_id("spiffe://other/ns/default/sa/web", &td()),
            Err(CertifyError::WrongTrustDomain { .. })
        ));
    }

    /// IDs this function used to accept (its own looser grammar: any
    /// `[a-z0-9.-]{1,253}` namespace) that the proxy's `SpiffeId` refused,
    /// so the controller could certify identities no proxy would accept or
    /// a policy match. Refused now, with the reason.
    #[test]
    fn refuses_what_the_proxy_refuses() {
        let long_ns = format!("spiffe://td.local/ns/{}/sa/web", "n".repeat(64));
        for (bad, part) in [
            ("spiffe://td.local/ns/a.b/sa/web", "namespace"),
            (long_ns.as_str(), "namespace"),
            ("spiffe://td.local/ns/-a/sa/web", "namespace"),
            ("spiffe://td.local/ns/a-/sa/web", "namespace"),
            ("spiffe://td.local/ns/default/sa/-web", "service account"),
            ("spiffe://td.local/ns/default/sa/web.", "service account"),
            ("spiffe://td.local/ns/default/sa/a..b", "service account"),
        ] {
            match parse_spiffe_id(bad, &td()) {
                Err(e @ CertifyError::BadIdentity(..)) => {
                    assert!(e.to_string().contains(part), "{bad}: {e}");
                    assert_eq!(e.code(), Code::InvalidArgument);
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
