//! Kubernetes pieces shared by the controller and the node agent: building a
//! client ([`client`]), checking a proxy's pod claim against the API server
//! ([`pod_check`], used by the agent before it enrols a pod), and, with the
//! `fake-apiserver` feature, a fake API server that speaks the real
//! list/watch wire format for tests ([`fake`]). Kept apart from the
//! controller so the agent does not carry the controller's dependencies.

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
