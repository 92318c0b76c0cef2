//! `InboundPolicies.Watch`: the resolved policy of one workload, sent at
//! once and again whenever the resources change what it resolves to.

use super::PolicyResources;
use conduit_controller_api::policy::v1 as pb;
use conduit_policy::InboundSpec;
use std::collections::BTreeMap;
use std::pin::Pin;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// Most labels a workload may send (Kubernetes has no hard limit; pods
/// with more than this are unusual).
pub const MAX_LABELS: usize = 128;
/// Largest `Workload` message accepted.
pub const MAX_WORKLOAD_REQUEST: usize = 64 * 1024;

pub struct PolicyService {
    resources: PolicyResources,
    shutdown: watch::Receiver<bool>,
}

impl PolicyService {
    pub fn new(resources: PolicyResources, shutdown: watch::Receiver<bool>) -> Self {
        PolicyService {
            resources,
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
impl pb::inbound_policies_server::InboundPolicies for PolicyService {
    type WatchStream = PolicyStream;

    async fn watch(
        &self,
        request: Request<pb::Workload>,
    ) -> Result<Response<PolicyStream>, Status> {
        let w = request.into_inner();
        check_workload(&w).map_err(Status::invalid_argument)?;
        tracing::debug!(namespace = %w.namespace, pod = %w.pod, "InboundPolicies.Watch");
        let mut resources = self.resources.clone();
        resources.mark_changed();
        let state = StreamState {
            resources,
            shutdown: self.shutdown.clone(),
            namespace: w.namespace,
            pod: w.pod,
            labels: w.labels.into_iter().collect(),
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
