//! The controller's integration tests, one binary: real gRPC on loopback,
//! the real binary, the fake Kubernetes API server, injection golden files
//! (`tests/golden/`) and the manifests; one module per theme.

mod binary_common;
mod common;
mod kubernetes_common;

mod binary;
mod binary_kubernetes;
mod client;
mod destination;
mod file_backend;
mod identity;
mod inject;
mod inject_podsec;
mod kubernetes;
mod kubernetes_fake;
mod kubernetes_pod_check;
mod kubernetes_proxy_container;
mod kubernetes_token_review;
mod manifests;
mod policy_backends;
