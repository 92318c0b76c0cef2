//! `InboundPolicies.Watch`: the resolved policy of one workload, sent at
//! once and again whenever the resources change what it resolves to.

use super::PolicyResources;
use super::caller::{self, Claim};
use crate::identity::Certifier;
use crate::metrics::Metrics;
use crate::model::TokenVerifier;
use conduit_controller_api::policy::v1 as pb;
use conduit_policy::InboundSpec;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// Most labels a workload may send (Kubernetes has no hard limit; pods
/// with more than this are unusual).
pub const MAX_LABELS: usize = 128;
/// Largest `Workload` message accepted.
pub const MAX_WORKLOAD_REQUEST: usize = 64 * 1024;

/// Serves each proxy the policy of its own pod: the request's claim is
/// bound to what the caller's token proves ([`caller`]).
pub struct PolicyService<V> {
    resources: PolicyResources,
    /// Its verifier proves who a caller is.
    certifier: Arc<Certifier<V>>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
}

impl<V: TokenVerifier> PolicyService<V> {
    pub fn new(
        resources: PolicyResources,
        certifier: Arc<Certifier<V>>,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        PolicyService {
            resources,
            certifier,
            metrics,
            shutdown,
        }
    }
}

type PolicyStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::InboundPolicy, Status>> + Send + 'static>>;

/// Checks a workload's namespace and labels.
pub fn check_workload(w: &pb::Workload) -> Result<(), String> {
    if !crate::model::is_dns_label(&w.namespace) {
        return Err(format!("namespace {:?} is not a DNS label", w.namespace));
    }
    if w.labels.len() > MAX_LABELS {
        return Err(format!("{} labels; at most {MAX_LABELS}", w.labels.len()));
    }
    Ok(())
}

struct StreamState {
    resources: PolicyResources,
    shutdown: watch::Receiver<bool>,
    namespace: String,
    pod: String,
    labels: BTreeMap<String, String>,
    sent: Option<InboundSpec>,
}

#[tonic::async_trait]
impl<V: TokenVerifier> pb::inbound_policies_server::InboundPolicies for PolicyService<V> {
    type WatchStream = PolicyStream;

    async fn watch(
        &self,
        request: Request<pb::Workload>,
    ) -> Result<Response<PolicyStream>, Status> {
        let proven = {
            let w = request.get_ref();
            check_workload(w).map_err(Status::invalid_argument)?;
            let claim = Claim {
                namespace: &w.namespace,
                pod: &w.pod,
            };
            let proof = match caller::bearer(request.metadata()) {
                Ok(token) => self.certifier.verifier().prove_workload(token, claim).await,
                Err(e) => Err(e),
            };
            match proof {
                Ok(p) => p,
                Err(e) => {
                    self.metrics.policy_watch(e.reason());
                    tracing::warn!(namespace = %w.namespace, pod = %w.pod, reason = e.reason(), "InboundPolicies.Watch refused: {e}");
                    return Err(e.into());
                }
            }
        };
        self.metrics.policy_watch("ok");
        let w = request.into_inner();
        if w.labels
            .iter()
            .any(|(k, v)| proven.labels.get(k) != Some(v))
            || w.labels.len() != proven.labels.len()
        {
            tracing::debug!(namespace = %w.namespace, pod = %w.pod, "InboundPolicies.Watch: the proxy's labels differ from the pod's; resolving with the pod's");
        }
        tracing::debug!(namespace = %w.namespace, pod = %w.pod, "InboundPolicies.Watch");
        let mut resources = self.resources.clone();
        resources.mark_changed();
        let state = StreamState {
            resources,
            shutdown: self.shutdown.clone(),
            namespace: proven.namespace,
            pod: proven.pod,
            labels: proven.labels,
            sent: None,
        };
        let stream = futures::stream::unfold(state, |mut st| async move {
            loop {
                if *st.shutdown.borrow() {
                    return None;
                }
                tokio::select! {
                    changed = st.resources.changed() => changed.ok()?,
                    _ = st.shutdown.changed() => return None,
                }
                let current = st.resources.borrow_and_update().clone();
                let (spec, conflicts) = current.resolve(&st.namespace, &st.labels);
                for c in conflicts {
                    tracing::warn!(namespace = %st.namespace, pod = %st.pod, "inbound policy conflict: {}", c.0);
                }
                if st.sent.as_ref() == Some(&spec) {
                    continue;
                }
                let msg = pb::InboundPolicy::from(&spec);
                st.sent = Some(spec);
                return Some((Ok(msg), st));
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
