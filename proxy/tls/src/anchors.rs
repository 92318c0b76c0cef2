//! The trust anchors: the certificates (the identity issuer, or the roots
//! above it) that every peer's certificate must chain to.

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why trust anchors could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AnchorsError {
    #[error("cannot read trust anchors from {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("trust anchors PEM is malformed: {0}")]
    Pem(String),
    #[error("trust anchors PEM has no CERTIFICATE block")]
    Empty,
    #[error("trust anchor certificate {index} is unusable: {source}")]
    Certificate { index: usize, source: rustls::Error },
}

/// A set of trust anchors, cheap to clone.
#[derive(Debug, Clone)]
pub struct TrustAnchors {
    roots: Arc<RootCertStore>,
}

impl TrustAnchors {
    /// From DER certificates.
    pub fn from_der<'a>(
        certs: impl IntoIterator<Item = CertificateDer<'a>>,
    ) -> Result<Self, AnchorsError> {
        let mut roots = RootCertStore::empty();
        for (index, cert) in certs.into_iter().enumerate() {
            roots
                .add(cert)
                .map_err(|source| AnchorsError::Certificate { index, source })?;
        }
        if roots.is_empty() {
            return Err(AnchorsError::Empty);
        }
        Ok(TrustAnchors {
            roots: Arc::new(roots),
        })
    }

    /// From PEM text with one or more `CERTIFICATE` blocks (other blocks are
    /// ignored).
    pub fn from_pem(pem: &[u8]) -> Result<Self, AnchorsError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AnchorsError::Pem(e.to_string()))?;
        Self::from_der(certs)
    }

    /// From a PEM file (for example the issuer certificate that the
    /// controller prints, mounted from a ConfigMap).
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self, AnchorsError> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|source| AnchorsError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_pem(&pem)
    }

    pub(crate) fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }
}
