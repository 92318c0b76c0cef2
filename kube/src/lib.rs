//! Kubernetes pieces shared by the controller and the node agent (a crate
//! of its own at the top, `kube/`, since both use it): building a client
//! ([`client`]), checking a proxy's pod claim against the API server
//! ([`pod_check`], used by the agent before it enrols a pod), checking that
//! a discovered proxy is its pod's `conduit-proxy` container
//! ([`proxy_container`]), and, with the `fake-apiserver` feature, a fake API
//! server that speaks the real list/watch wire format, the one Kubernetes
//! the tests run against ([`fake`]). Apart from the controller so the agent
//! does not carry the controller's dependencies.

pub mod pod_check;
pub mod proxy_container;

#[cfg(feature = "fake-apiserver")]
pub mod fake;

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
