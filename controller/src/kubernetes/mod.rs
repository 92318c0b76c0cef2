//! Kubernetes backend: discovery from Services, EndpointSlices and Pods
//! (kube-rs reflectors, [`KubernetesBackend`]), token checks through
//! TokenReview ([`TokenReviewVerifier`]), the node agent's check of a
//! proxy's pod claim ([`pod_check`]), what makes a pod meshed ([`mesh`],
//! shared with injection), and, with the `fake-apiserver` feature, a fake
//! API server for tests ([`fake`]).

mod backend;
pub mod mesh;
pub mod pod_check;
pub mod snapshot;
mod token_review;

#[cfg(feature = "fake-apiserver")]
pub mod fake;

pub use backend::{KubernetesBackend, KubernetesError, Options};
pub use token_review::{TokenReviewVerifier, service_account_user};

/// Chooses rustls's ring provider for the process (kube's TLS needs one
/// chosen when several are compiled in). Harmless when already chosen.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client from the in-cluster service account (or `$KUBECONFIG`).
pub async fn client() -> Result<kube::Client, kube::Error> {
    install_crypto_provider();
    kube::Client::try_default().await
}
