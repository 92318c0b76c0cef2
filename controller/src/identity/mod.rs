//! Identity: the issuer, `Certify`'s checks and signing, token checks from a
//! token file, the gRPC service, and the controller's own serving
//! certificate ([`serving`]).

mod certify;
mod issuer;
mod service;
pub mod serving;
mod token_file;

pub use certify::{Certifier, CertifyError, Signed, WorkloadId, parse_spiffe_id};
pub use issuer::{Issuer, IssuerError};
pub use service::IdentityService;
pub use token_file::{TokenFileError, TokenFileVerifier};

/// The SPIFFE ID of a Kubernetes service account.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}
