//! The mesh's identity vocabulary, shared by the controller, the
//! controller's API client, the policy crate and the proxy (see
//! docs/identity.md):
//!
//! * [`SpiffeId`] and [`TrustDomain`]: one strict grammar for
//!   `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, parsed
//!   once where an identity enters a process (a CSR, a discovery answer, a
//!   flag, a policy, a peer certificate) and carried typed from there on;
//!   refusals are a typed [`SpiffeIdError`].
//! * With the `issuer` feature, [`issuer::Issuer`]: the certificate
//!   authority that mints workload certificates (the controller's, and the
//!   one the tests use).
//!
//! The default build depends on `thiserror` only, so every crate can use it.

mod spiffe;

#[cfg(feature = "issuer")]
pub mod issuer;

pub use spiffe::{NameError, SpiffeId, SpiffeIdError, TrustDomain};
