//! Kubernetes backend: discovery from Services, EndpointSlices and Pods
//! (kube-rs reflectors, [`KubernetesBackend`]), token checks through
//! TokenReview ([`TokenReviewVerifier`]), the node agent's check of a
//! proxy's pod claim ([`pod_check`]), what makes a pod meshed ([`mesh`],
//! shared with injection), and, with the `fake-apiserver` feature, a fake
//! API server for tests ([`fake`]).

mod backend;
pub mod mesh;
pub mod snapshot;
mod token_review;

#[cfg(feature = "fake-apiserver")]
pub use conduit_kube::fake;
pub use conduit_kube::{client, install_crypto_provider, pod_check};

pub use backend::{KubernetesBackend, KubernetesError, MAX_BATCH, Options, Updates};
pub use token_review::{TokenReviewVerifier, service_account_user};
