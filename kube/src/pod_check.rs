//! Checks what a proxy claims about its pod against the API server, for the
//! node agent: a proxy registering on node N says "I am pod `ns/name`", and
//! the agent knows the IPs of the network namespace the proxy runs in. The
//! claim holds only if the API server has that pod, scheduled on N, with one
//! of those IPs. Otherwise registration must be refused: a compromised pod
//! could else enrol under another pod's name (and identity).
//!
//! [`validate`] asks once; [`validate_until`] retries the answers that can be
//! a race with the kubelet (pod not yet visible, IP not yet reported).
//! [`PodChecker`] bundles the client, the node and the timeout for the
//! agent:
//!
//! ```no_run
//! # async fn agent(name: String, namespace: String, ips: Vec<std::net::IpAddr>) -> Result<(), Box<dyn std::error::Error>> {
//! use conduit_kube::pod_check::{PodChecker, PodClaim};
//! let checker = PodChecker::from_env(std::time::Duration::from_secs(10)).await?;
//! // On each registration, before enrolling:
//! if let Some(checker) = &checker {
//!     checker.check(&PodClaim { name, namespace, ips }).await?; // refuse on Err
//! }
//! # Ok(()) }
//! ```

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// What a proxy says about its pod, with the IPs the agent found in the
/// proxy's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodClaim {
    pub name: String,
    pub namespace: String,
    /// The pod network namespace's addresses (global ones); one of them must
    /// be the pod's.
    pub ips: Vec<IpAddr>,
}

/// Why a claim was refused.
#[derive(Debug, thiserror::Error)]
pub enum PodClaimError {
    #[error("claim has no IP address to check")]
    NoIp,
    #[error("pod {namespace}/{name} does not exist")]
    NotFound { namespace: String, name: String },
    #[error("pod {name} is in namespace {actual}, not {claimed}")]
    WrongNamespace {
        name: String,
        claimed: String,
        actual: String,
    },
    #[error("pod {namespace}/{name} runs on node {actual:?}, not on this node {node:?}")]
    OtherNode {
        namespace: String,
        name: String,
        node: String,
        actual: Option<String>,
    },
    #[error("pod {namespace}/{name} has IPs {actual:?}, none of the claimed {claimed:?}")]
    WrongIp {
        namespace: String,
        name: String,
        claimed: Vec<IpAddr>,
        actual: Vec<IpAddr>,
    },
    #[error("pod {namespace}/{name} has no IP yet")]
    NoIpYet { namespace: String, name: String },
    #[error("pod {namespace}/{name} has finished ({phase})")]
    Finished {
        namespace: String,
        name: String,
        phase: String,
    },
    #[error("cannot ask the API server about pod {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl PodClaimError {
    /// Whether asking again shortly may succeed (the kubelet reports a new
    /// pod's IP a moment after its containers start; the API may be away).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            PodClaimError::NotFound { .. }
                | PodClaimError::NoIpYet { .. }
                | PodClaimError::Api { .. }
        )
    }
}

fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .chain(status.pod_ip.as_deref())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Checks `claim` once against the API server, for a proxy on `node_name`.
pub async fn validate(
    client: &kube::Client,
    node_name: &str,
    claim: &PodClaim,
) -> Result<(), PodClaimError> {
    if claim.ips.is_empty() {
        return Err(PodClaimError::NoIp);
    }
    let api_err = |source| PodClaimError::Api {
        namespace: claim.namespace.clone(),
        name: claim.name.clone(),
        source,
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &claim.namespace);
    let Some(pod) = pods.get_opt(&claim.name).await.map_err(api_err)? else {
        // Same name in another namespace on this node: say so, it is the
        // likely mistake (or lie).
        let on_node: Api<Pod> = Api::all(client.clone());
        let lp = ListParams::default().fields(&format!(
            "spec.nodeName={node_name},metadata.name={}",
            claim.name
        ));
        let others = on_node.list(&lp).await.map_err(api_err)?;
        if let Some(ns) = others
            .items
            .iter()
            .find_map(|p| p.metadata.namespace.clone())
        {
            return Err(PodClaimError::WrongNamespace {
                name: claim.name.clone(),
                claimed: claim.namespace.clone(),
                actual: ns,
            });
        }
        return Err(PodClaimError::NotFound {
            namespace: claim.namespace.clone(),
            name: claim.name.clone(),
        });
    };
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    if node.as_deref() != Some(node_name) {
        return Err(PodClaimError::OtherNode {
            namespace: claim.namespace.clone(),
            name: claim.name.clone(),
            node: node_name.into(),
            actual: node,
        });
    }
    if let Some(phase) = pod.status.as_ref().and_then(|s| s.phase.as_deref())
        && matches!(phase, "Succeeded" | "Failed")
    {
        return Err(PodClaimError::Finished {
            namespace: claim.namespace.clone(),
            name: claim.name.clone(),
            phase: phase.into(),
        });
    }
    let actual = pod_ips(&pod);
    if actual.is_empty() {
        return Err(PodClaimError::NoIpYet {
            namespace: claim.namespace.clone(),
            name: claim.name.clone(),
        });
    }
    if !claim.ips.iter().any(|ip| actual.contains(ip)) {
        return Err(PodClaimError::WrongIp {
            namespace: claim.namespace.clone(),
            name: claim.name.clone(),
            claimed: claim.ips.clone(),
            actual,
        });
    }
    Ok(())
}

/// [`validate`], retrying transient refusals (with backoff from 100 ms to
/// 2 s) until `timeout` has passed; returns the last refusal.
pub async fn validate_until(
    client: &kube::Client,
    node_name: &str,
    claim: &PodClaim,
    timeout: Duration,
) -> Result<(), PodClaimError> {
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(100);
    loop {
        match validate(client, node_name, claim).await {
            Err(e) if e.is_transient() && Instant::now() + backoff < deadline => {
                tracing::debug!(error = %e, "pod claim not confirmed yet; asking again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// Environment variable naming the agent's node (the DaemonSet sets it from
/// `spec.nodeName`); without it the agent is not in a cluster.
pub const NODE_NAME_ENV: &str = "CONDUIT_NODE_NAME";

/// What the agent keeps to check claims: a client, its node, and how long a
/// claim may stay unconfirmed.
#[derive(Clone)]
pub struct PodChecker {
    client: kube::Client,
    node_name: String,
    timeout: Duration,
}

impl std::fmt::Debug for PodChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodChecker")
            .field("node_name", &self.node_name)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Why the checker could not be set up in a cluster.
#[derive(Debug, thiserror::Error)]
#[error("{NODE_NAME_ENV} is set ({node}) but no Kubernetes client could be made: {source}")]
pub struct PodCheckerError {
    pub node: String,
    #[source]
    pub source: kube::Error,
}

impl PodChecker {
    pub fn new(client: kube::Client, node_name: impl Into<String>, timeout: Duration) -> Self {
        PodChecker {
            client,
            node_name: node_name.into(),
            timeout,
        }
    }

    /// In a cluster ([`NODE_NAME_ENV`] set): a checker with the in-cluster
    /// client; outside one (the local mesh): `None`, and claims are not
    /// checked.
    pub async fn from_env(timeout: Duration) -> Result<Option<PodChecker>, PodCheckerError> {
        let Some(node) = std::env::var(NODE_NAME_ENV).ok().filter(|n| !n.is_empty()) else {
            return Ok(None);
        };
        let client = crate::client().await.map_err(|source| PodCheckerError {
            node: node.clone(),
            source,
        })?;
        Ok(Some(PodChecker::new(client, node, timeout)))
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// [`validate_until`] with this checker's node and timeout.
    pub async fn check(&self, claim: &PodClaim) -> Result<(), PodClaimError> {
        validate_until(&self.client, &self.node_name, claim, self.timeout).await
    }
}
