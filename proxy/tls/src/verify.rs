//! Certificate verification for the mesh: chains to the trust anchors (by
//! webpki), then identities by SPIFFE URI SAN. No DNS-name checks.
//!
//! * [`ServerIdentityVerifier`] (client side): the server must present
//!   exactly the identity that discovery gave for the endpoint.
//! * [`TrustDomainClientVerifier`] (server side): the client must present a
//!   certificate, and its identity must be in our trust domain.

use crate::anchors::TrustAnchors;
use conduit_identity::{SpiffeId, SpiffeIdError, TrustDomain};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use std::sync::Arc;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a peer's certificate does not carry an acceptable identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerIdentityError {
    #[error("peer certificate is not valid X.509: {0}")]
    Malformed(String),
    #[error("peer certificate has no URI subject alternative name (no SPIFFE identity)")]
    NoIdentity,
    #[error(
        "peer certificate has {0} URI subject alternative names; exactly one SPIFFE ID is required"
    )]
    ManyIdentities(usize),
    #[error("peer certificate identity is not a mesh identity: {0}")]
    Invalid(SpiffeIdError),
    #[error("peer presented identity {presented}, expected {expected}")]
    Mismatch {
        expected: SpiffeId,
        presented: SpiffeId,
    },
    #[error("peer identity {presented} is not in trust domain {expected}")]
    WrongTrustDomain {
        expected: TrustDomain,
        presented: SpiffeId,
    },
}

/// The SPIFFE ID in a certificate's (only) URI subject alternative name.
pub fn certificate_identity(cert: &CertificateDer<'_>) -> Result<SpiffeId, PeerIdentityError> {
    let (rest, x509) =
        X509Certificate::from_der(cert).map_err(|e| PeerIdentityError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PeerIdentityError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    let san = x509
        .subject_alternative_name()
        .map_err(|e| PeerIdentityError::Malformed(e.to_string()))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|san| san.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(PeerIdentityError::NoIdentity),
        [uri] => SpiffeId::parse(uri).map_err(PeerIdentityError::Invalid),
        many => Err(PeerIdentityError::ManyIdentities(many.len())),
    }
}

fn refuse(e: PeerIdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// Client side: the server's chain must reach the anchors and its identity
/// must be exactly `expected`.
#[derive(Debug)]
pub(crate) struct ServerIdentityVerifier {
    anchors: TrustAnchors,
    expected: SpiffeId,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerIdentityVerifier {
    pub(crate) fn new(anchors: TrustAnchors, expected: SpiffeId) -> Self {
        ServerIdentityVerifier {
            anchors,
            expected,
            algs: algorithms(),
        }
    }
}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            self.anchors.roots(),
            intermediates,
            now,
            self.algs.all,
        )?;
        let presented = certificate_identity(end_entity).map_err(refuse)?;
        if presented != self.expected {
            return Err(refuse(PeerIdentityError::Mismatch {
                expected: self.expected.clone(),
                presented,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Server side: a client certificate is required; it must chain to the
/// anchors (webpki, client-auth usage) and name an identity in our trust
/// domain.
#[derive(Debug)]
pub(crate) struct TrustDomainClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: TrustDomain,
}

impl TrustDomainClientVerifier {
    pub(crate) fn new(
        anchors: &TrustAnchors,
        trust_domain: TrustDomain,
    ) -> Result<Self, rustls::Error> {
        let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(
            anchors.roots().clone(),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| rustls::Error::General(format!("client certificate verifier: {e}")))?;
        Ok(TrustDomainClientVerifier {
            inner,
            trust_domain,
        })
    }
}

impl ClientCertVerifier for TrustDomainClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let presented = certificate_identity(end_entity).map_err(refuse)?;
        if presented.trust_domain() != &self.trust_domain {
            return Err(refuse(PeerIdentityError::WrongTrustDomain {
                expected: self.trust_domain.clone(),
                presented,
            }));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Verifies that `chain` (leaf first) reaches the anchors at `now` and that
/// the leaf names `identity`. Used to check a freshly issued certificate
/// before it is served.
pub(crate) fn check_own_chain(
    anchors: &TrustAnchors,
    chain: &[CertificateDer<'static>],
    identity: &SpiffeId,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    let verifier = ServerIdentityVerifier::new(anchors.clone(), identity.clone());
    let name = ServerName::try_from("identity.conduit.invalid")
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    verifier.verify_server_cert(leaf, intermediates, &name, &[], now)?;
    // The same certificate is presented as a client certificate.
    TrustDomainClientVerifier::new(anchors, identity.trust_domain().clone())?.verify_client_cert(
        leaf,
        intermediates,
        now,
    )?;
    Ok(())
}

/// The identity error inside a rustls error, if that is why it failed.
pub(crate) fn identity_error(e: &rustls::Error) -> Option<&PeerIdentityError> {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<PeerIdentityError>()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn cert_with(sans: Vec<SanType>) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().clone()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.to_owned().try_into().unwrap())
    }

    #[test]
    fn reads_the_identity_from_the_uri_san() {
        let id = "spiffe://td/ns/a/sa/b";
        let with_dns = cert_with(vec![
            SanType::DnsName("b.a.svc".try_into().unwrap()),
            uri(id),
        ]);
        assert_eq!(certificate_identity(&with_dns).unwrap().to_string(), id);
        assert_eq!(
            certificate_identity(&cert_with(vec![])),
            Err(PeerIdentityError::NoIdentity)
        );
        assert_eq!(
            certificate_identity(&cert_with(vec![uri(id), uri("spiffe://td/ns/a/sa/c")])),
            Err(PeerIdentityError::ManyIdentities(2))
        );
        assert!(matches!(
            certificate_identity(&cert_with(vec![uri("https://td/ns/a/sa/b")])),
            Err(PeerIdentityError::Invalid(SpiffeIdError::NotSpiffe { .. }))
        ));
        assert!(matches!(
            certificate_identity(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])),
            Err(PeerIdentityError::Malformed(_))
        ));
    }
}
