//! In a cluster the agent does not take a proxy's word for which pod it
//! belongs to: before enrolling, it asks the API server whether that pod
//! exists, runs on this node, and has one of the addresses the agent found
//! in the proxy's network namespace (`conduit_kube`'s `PodChecker`).
//! A mismatch is refused; answers that may be a race with the kubelet (pod
//! not visible yet, IP not reported yet, API server unreachable) are asked
//! again until `--claim-timeout`.

use crate::enrol::Candidate;
use anyhow::{Context, Result, bail};
use conduit_kube::pod_check::{NODE_NAME_ENV, PodChecker, PodClaim};
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct KubeOptions {
    /// Check pod claims against the Kubernetes API server (in-cluster
    /// service account or $KUBECONFIG). Implied by --node-name.
    #[arg(long)]
    pub kubernetes: bool,
    /// This node's name; pods claimed by proxies must be scheduled here.
    #[arg(long, env = NODE_NAME_ENV, value_name = "NODE")]
    pub node_name: Option<String>,
    /// How long a claim may stay unconfirmed while the API server's answer
    /// can still change (pod not yet visible, IP not yet reported, API away).
    /// (A duration: `10`, `30s`, `1m`; a bare number is seconds.)
    #[arg(long, default_value = "10", value_name = "DURATION", value_parser = conduit_base::duration::parse)]
    pub claim_timeout: Duration,
}

/// The API server's checker, with the node and timeout it uses.
pub struct Claims {
    checker: PodChecker,
    timeout: Duration,
}

/// The checker when running in a cluster, `None` in the local mesh.
pub async fn checker(opts: &KubeOptions) -> Result<Option<Claims>> {
    let node = opts.node_name.clone().filter(|n| !n.is_empty());
    let node = match (node, opts.kubernetes) {
        (Some(node), _) => node,
        (None, true) => {
            bail!("--kubernetes needs the node's name: pass --node-name or set {NODE_NAME_ENV}")
        }
        (None, false) => return Ok(None),
    };
    let client = conduit_kube::client()
        .await
        .context("making a Kubernetes client (in-cluster service account or $KUBECONFIG)")?;
    let timeout = opts.claim_timeout;
    tracing::info!(node = %node, claim_timeout = ?timeout, "pod claims are checked against the API server");
    Ok(Some(Claims {
        checker: PodChecker::new(client, node, timeout),
        timeout,
    }))
}

/// Checks what `c`'s proxy claims; on refusal, the reason for the proxy.
pub async fn check(claims: &Claims, c: &Candidate) -> Result<(), String> {
    let checker = &claims.checker;
    let claim = PodClaim {
        name: c.pod.name.clone(),
        namespace: c.pod.namespace.clone(),
        // The addresses that will be enrolled: the claimed ones (admission
        // checked they are configured in the namespace), else all of them.
        ips: if c.pod.pod_ips.is_empty() {
            c.ips.clone()
        } else {
            c.pod.pod_ips.clone()
        },
    };
    match checker.check(&claim).await {
        Ok(()) => {
            tracing::debug!(pod = %claim.name, namespace = %claim.namespace, "pod claim confirmed by the API server");
            Ok(())
        }
        Err(e) => {
            let reason = if e.is_transient() {
                format!(
                    "pod claim not confirmed by the API server within {} s on node {}: {e}",
                    claims.timeout.as_secs(),
                    checker.node_name()
                )
            } else {
                format!("pod claim contradicts the API server: {e}")
            };
            let (pod, ns, ips, pid, node) = (
                &claim.name,
                &claim.namespace,
                &claim.ips,
                c.peer.pid,
                checker.node_name(),
            );
            if e.is_transient() {
                tracing::warn!(%pod, namespace = %ns, ?ips, pid, %node, %reason,
                    "registration refused: pod claim could not be confirmed by the API server");
            } else {
                tracing::warn!(%pod, namespace = %ns, ?ips, pid, %node, %reason,
                    "registration refused: pod claim does not match the API server");
            }
            Err(reason)
        }
    }
}
