//! conduit-controller: answers proxies' discovery questions (where are the
//! endpoints of this destination, and who are they) over
//! `conduit.destination.v1.Destination/Get`, and signs their certificates
//! over `conduit.identity.v1.Identity/Certify`, and streams each proxy its
//! workload's inbound authorization policy over
//! `conduit.policy.v1.InboundPolicies/Watch`. Backends: Kubernetes (kube-rs
//! reflectors) and a YAML file for use without a cluster.

pub mod admin;
pub mod cli;
pub mod destination;
pub mod file;
pub mod identity;
pub mod inject;
pub mod kubernetes;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod server;
pub mod store;
