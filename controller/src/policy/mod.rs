//! Inbound policy (crate `conduit-policy`): where the user's resources come
//! from ([`file`]: YAML beside the discovery file; [`kubernetes`]: custom
//! resources of `policy.conduit.io`) and `conduit.policy.v1.InboundPolicies`
//! ([`service`]), which streams each proxy the policy of its workload.

pub mod caller;
pub mod file;
pub mod kubernetes;
pub mod service;

use conduit_policy::resources::Resources;
use std::sync::Arc;
use tokio::sync::watch;

/// The policy resources in force, followed by the service.
pub type PolicyResources = watch::Receiver<Arc<Resources>>;

/// No policy resources at all (every workload gets its proxy's default).
pub fn none() -> PolicyResources {
    let (tx, rx) = watch::channel(Arc::new(Resources::default()));
    // Keep the sender alive so that receivers never see a closed channel.
    std::mem::forget(tx);
    rx
}
