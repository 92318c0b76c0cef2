//! Identity: the issuer (from `conduit-identity`, shared with the tests'
//! CA), `Certify`'s checks and signing, token checks from a token file, the
//! gRPC service, and the controller's own serving certificate
//! ([`serving`]). SPIFFE IDs are `conduit_identity::SpiffeId`, the one
//! grammar of the mesh.

mod certify;
mod service;
pub mod serving;
mod token_file;

pub use certify::{Certifier, CertifyError, Signed, parse_spiffe_id};
pub use conduit_identity::issuer::{Issuer, IssuerError};
pub use conduit_identity::{SpiffeId, SpiffeIdError, TrustDomain};
pub use service::IdentityService;
pub use token_file::{TokenFileError, TokenFileVerifier};

/// The SPIFFE ID of a Kubernetes service account in `trust_domain`
/// (checked: a name Kubernetes would not allow gives no identity).
pub fn spiffe_id(
    trust_domain: &TrustDomain,
    namespace: &str,
    service_account: &str,
) -> Result<SpiffeId, SpiffeIdError> {
    SpiffeId::new(trust_domain.as_str(), namespace, service_account)
}
