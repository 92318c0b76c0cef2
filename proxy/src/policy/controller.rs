//! The policy from the controller: `InboundPolicies.Watch` for this pod,
//! each message compiled and installed. While the controller is away (or
//! before it answers) the policy in force stays: the last one received, or
//! the configured default before the first.
//!
//! The controller answers only about the caller's own pod: each `Watch`
//! carries the service-account token (`--identity-token-file`, re-read on
//! every attempt since projected tokens rotate) as `authorization: Bearer`,
//! which the controller binds to the pod it names. Without a token, or when
//! refused, the proxy keeps the policy in force and retries.

use super::PolicyStore;
use conduit_controller_api::policy::v1 as pb;
use conduit_controller_api::policy::v1::inbound_policies_client::InboundPoliciesClient;
use conduit_policy::InboundSpec;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Follows the controller until the store is dropped (the task holds only
/// a weak reference).
pub fn spawn(
    store: &Arc<PolicyStore>,
    channel: Channel,
    workload: pb::Workload,
    token_file: Option<PathBuf>,
) {
    let weak = Arc::downgrade(store);
    tokio::spawn(async move {
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let mut client = InboundPoliciesClient::new(channel.clone());
            let request = match request(&workload, token_file.as_deref()) {
                Ok(r) => r,
                Err(e) => {
                    warn!("inbound policy: {e}; keeping the policy in force");
                    tonic::Request::new(workload.clone())
                }
            };
            match client.watch(request).await {
                Ok(rsp) => {
                    let mut stream = rsp.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(msg)) => {
                                let Some(store) = weak.upgrade() else { return };
                                backoff = INITIAL_BACKOFF;
                                apply(&store, msg);
                            }
                            Ok(None) => {
                                debug!("inbound policy stream ended; reconnecting");
                                break;
                            }
                            Err(e) => {
                                info!(
                                    "inbound policy stream broke: {e}; keeping the policy in force"
                                );
                                break;
                            }
                        }
                    }
                }
                Err(e) if e.code() == tonic::Code::Unimplemented => {
                    warn!(
                        "the controller does not serve InboundPolicies; keeping the policy in force"
                    );
                    backoff = MAX_BACKOFF * 12;
                }
                Err(e)
                    if matches!(
                        e.code(),
                        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
                    ) =>
                {
                    warn!(
                        "the controller refused this pod's inbound policy: {}; keeping the policy in force",
                        e.message()
                    );
                    backoff = MAX_BACKOFF;
                }
                Err(e) => {
                    debug!(
                        "inbound policy: controller unreachable: {e}; keeping the policy in force"
                    );
                }
            }
            if weak.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(backoff).await;
            if backoff < MAX_BACKOFF {
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    });
}

/// The `Watch` request, with the token of `token_file` when there is one.
fn request(
    workload: &pb::Workload,
    token_file: Option<&Path>,
) -> Result<tonic::Request<pb::Workload>, String> {
    let mut req = tonic::Request::new(workload.clone());
    let Some(path) = token_file else {
        return Err("no --identity-token-file: the controller will refuse to say which policy protects this pod".into());
    };
    let token = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the token {}: {e}", path.display()))?;
    let value = format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| format!("the token {} is not a valid header value", path.display()))?;
    req.metadata_mut().insert("authorization", value);
    Ok(req)
}

fn apply(store: &PolicyStore, msg: pb::InboundPolicy) {
    let spec = match InboundSpec::try_from(msg) {
        Ok(s) => s,
        Err(e) => {
            warn!("inbound policy from the controller refused: {e}; keeping the policy in force");
            return;
        }
    };
    if let Err(e) = store.install(&spec, "controller") {
        warn!("inbound policy from the controller refused: {e}; keeping the policy in force");
    }
}

/// `k=v,k=v` (the pod's labels, from `--pod-labels`).
pub fn parse_labels(s: &str) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for kv in s.split(',').map(str::trim).filter(|kv| !kv.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("{kv:?}: expected key=value"))?;
        if k.is_empty() {
            return Err(format!("{kv:?}: empty label key"));
        }
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let l = parse_labels("app=web, tier=front,").unwrap();
        assert_eq!(l["app"], "web");
        assert_eq!(l["tier"], "front");
        assert!(parse_labels("app").is_err());
        assert!(parse_labels("=x").is_err());
        assert!(parse_labels("").unwrap().is_empty());
    }
}
