//! conduit-controller: answers proxies' discovery questions (where are the
//! endpoints of this destination, and who are they) and signs their
//! certificates (identity). Backends: Kubernetes (kube-rs reflectors) and a
//! YAML file for use without a cluster.

pub mod inject;
pub mod kubernetes;
pub mod model;
