//! Getting a certificate: the private key and CSR (made in memory), the
//! token (re-read from its file for every request), and the controller's
//! `Identity.Certify` behind the [`Certifier`] trait.

use conduit_controller_api::identity::v1 as pb;
use conduit_identity::SpiffeId;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How long one `Certify` call may take (connecting included).
pub const DEFAULT_CERTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// Tokens longer than this are refused rather than read.
pub const MAX_TOKEN_BYTES: u64 = 64 * 1024;

/// A certificate signing request for one identity.
#[derive(Debug, Clone)]
pub struct CertifyRequest {
    pub identity: SpiffeId,
    pub token: String,
    /// PKCS#10, DER; its only subject alternative name is `identity`.
    pub csr_der: Vec<u8>,
}

/// What the controller signed.
#[derive(Debug, Clone)]
pub struct Certified {
    pub leaf: CertificateDer<'static>,
    /// The issuer chain, nearest first (sent after the leaf).
    pub intermediates: Vec<CertificateDer<'static>>,
    /// The leaf's expiry as the controller reported it.
    pub valid_until: Option<SystemTime>,
}

/// Why `Certify` failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CertifyError {
    #[error("controller refused the certificate request ({code:?}): {message}")]
    Refused { code: tonic::Code, message: String },
    #[error("controller unreachable: {0}")]
    Unavailable(String),
    #[error("controller's answer is unusable: {0}")]
    BadResponse(String),
}

/// Signs certificates: the controller's `Identity.Certify`.
pub trait Certifier: Send + Sync + 'static {
    fn certify(
        &self,
        request: CertifyRequest,
    ) -> impl Future<Output = Result<Certified, CertifyError>> + Send;
}

/// [`Certifier`] over gRPC (`conduit.identity.v1.Identity/Certify`).
#[derive(Debug, Clone)]
pub struct GrpcCertifier {
    client: pb::identity_client::IdentityClient<tonic::transport::Channel>,
    timeout: Duration,
}

impl GrpcCertifier {
    /// Over an existing channel (shared with discovery, for example).
    pub fn new(channel: tonic::transport::Channel) -> Self {
        GrpcCertifier {
            client: pb::identity_client::IdentityClient::new(channel),
            timeout: DEFAULT_CERTIFY_TIMEOUT,
        }
    }

    /// Gives up on a call (as `Unavailable`, so it is retried) after
    /// `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A lazily connecting channel to `uri` (e.g. `http://controller:8086`).
    pub fn connect_lazy(uri: &str) -> Result<Self, CertifyError> {
        let endpoint = tonic::transport::Endpoint::from_shared(uri.to_owned()).map_err(|e| {
            CertifyError::Unavailable(format!("bad controller address {uri:?}: {e}"))
        })?;
        Ok(Self::new(endpoint.connect_lazy()))
    }
}

impl Certifier for GrpcCertifier {
    async fn certify(&self, request: CertifyRequest) -> Result<Certified, CertifyError> {
        let mut client = self.client.clone();
        let mut grpc_request = tonic::Request::new(pb::CertifyRequest {
            identity: request.identity.to_string(),
            token: request.token,
            certificate_signing_request: request.csr_der,
        });
        grpc_request.set_timeout(self.timeout);
        let response = tokio::time::timeout(self.timeout, client.certify(grpc_request))
            .await
            .map_err(|_| CertifyError::Unavailable(format!("no answer within {:?}", self.timeout)))?
            .map_err(|status| match std::error::Error::source(&status) {
                // The request never reached a controller: a connection or
                // TLS failure (a controller's own answers carry no source).
                Some(cause) => CertifyError::Unavailable(error_chain(cause)),
                None => refused_or_unavailable(&status),
            })?
            .into_inner();
        if response.leaf_certificate.is_empty() {
            return Err(CertifyError::BadResponse("no leaf certificate".into()));
        }
        let valid_until = match response.valid_until {
            Some(ts) => Some(
                SystemTime::try_from(ts)
                    .map_err(|e| CertifyError::BadResponse(format!("valid_until: {e}")))?,
            ),
            None => None,
        };
        Ok(Certified {
            leaf: response.leaf_certificate.into(),
            intermediates: response
                .intermediate_certificates
                .into_iter()
                .map(Into::into)
                .collect(),
            valid_until,
        })
    }
}

fn refused_or_unavailable(status: &tonic::Status) -> CertifyError {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            CertifyError::Unavailable(status.message().to_owned())
        }
        code => CertifyError::Refused {
            code,
            message: status.message().to_owned(),
        },
    }
}

/// `error: its source: its source ...`.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// Why the token could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {path} is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("token file {path} is not UTF-8")]
    NotUtf8 { path: PathBuf },
    #[error("token file {path} is empty")]
    Empty { path: PathBuf },
}

/// The proxy's token, read from a file at every use: Kubernetes rotates
/// projected service account tokens in place.
#[derive(Debug, Clone)]
pub struct TokenFile {
    path: PathBuf,
}

impl TokenFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        TokenFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The token now, without surrounding whitespace.
    pub fn read(&self) -> Result<String, TokenError> {
        let path = || self.path.clone();
        let file = std::fs::File::open(&self.path).map_err(|source| TokenError::Read {
            path: path(),
            source,
        })?;
        let mut bytes = Vec::new();
        file.take(MAX_TOKEN_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| TokenError::Read {
                path: path(),
                source,
            })?;
        if bytes.len() as u64 > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge { path: path() });
        }
        let text = String::from_utf8(bytes).map_err(|_| TokenError::NotUtf8 { path: path() })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty { path: path() });
        }
        Ok(token.to_owned())
    }
}

/// A fresh private key (ECDSA P-256, in memory only) and a CSR whose only
/// subject alternative name is `identity`'s URI.
pub fn key_and_csr(identity: &SpiffeId) -> Result<(PrivateKeyDer<'static>, Vec<u8>), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
    let csr = params.serialize_request(&key)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((key_der, csr.der().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;

    #[test]
    fn csr_names_exactly_the_identity() {
        let id = SpiffeId::parse("spiffe://td/ns/default/sa/web").unwrap();
        let (key, der) = key_and_csr(&id).unwrap();
        let (rest, csr) = X509CertificationRequest::from_der(&der).unwrap();
        assert!(rest.is_empty());
        csr.verify_signature().unwrap();
        let mut names = Vec::new();
        for ext in csr.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                names.extend(san.general_names.iter().map(|n| n.to_string()));
            }
        }
        assert_eq!(
            names,
            vec![GeneralName::URI("spiffe://td/ns/default/sa/web").to_string()]
        );
        // The CSR's public key is the key's.
        let pair = KeyPair::try_from(key.secret_der()).unwrap();
        assert_eq!(
            rcgen::PublicKeyData::subject_public_key_info(&pair),
            csr.certification_request_info.subject_pki.raw
        );
        // A new key each time.
        let (key2, _) = key_and_csr(&id).unwrap();
        assert_ne!(key.secret_der(), key2.secret_der());
    }

    #[test]
    fn token_is_reread_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let token = TokenFile::new(&path);
        assert!(matches!(token.read(), Err(TokenError::Read { .. })));
        std::fs::write(&path, "first\n").unwrap();
        assert_eq!(token.read().unwrap(), "first");
        std::fs::write(&path, "second").unwrap();
        assert_eq!(token.read().unwrap(), "second");
        std::fs::write(&path, " \n").unwrap();
        assert!(matches!(token.read(), Err(TokenError::Empty { .. })));
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert!(matches!(token.read(), Err(TokenError::NotUtf8 { .. })));
        std::fs::write(&path, vec![b'a'; MAX_TOKEN_BYTES as usize + 1]).unwrap();
        assert!(matches!(token.read(), Err(TokenError::TooLarge { .. })));
        assert!(
            token
                .read()
                .unwrap_err()
                .to_string()
                .contains(&path.display().to_string())
        );
    }
}
