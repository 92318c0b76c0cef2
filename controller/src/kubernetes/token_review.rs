//! [`TokenReviewVerifier`]: proves a proxy's identity with a Kubernetes
//! TokenReview of its projected service-account token.
//!
//! The review asks for the identity audience ([`super::mesh::IDENTITY_AUDIENCE`]
//! by default), so only a token minted for the controller is accepted (not
//! the pod's ordinary API token), and the authenticated user must be the
//! service account named in the requested identity
//! (`system:serviceaccount:<ns>:<sa>`).

use crate::model::{TokenError, TokenVerifier};
use crate::policy::caller::{
    self, BoundPod, Caller, Claim, PodRecord, ProvenWorkload, WorkloadError,
};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;

pub struct TokenReviewVerifier {
    api: Api<TokenReview>,
    client: kube::Client,
    audience: String,
}

/// `user.extra` keys of a projected token bound to a pod.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// The caller a reviewed user stands for: a service account, and the pod
/// its token is bound to (refused when there is none).
pub fn caller_of(user: &UserInfo) -> Result<Caller, WorkloadError> {
    let name = user.username.as_deref().unwrap_or_default();
    let Some((namespace, sa)) = name
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    else {
        return Err(TokenError::Rejected(format!("user {name:?} is not a service account")).into());
    };
    let extra = |key: &str| {
        user.extra
            .as_ref()
            .and_then(|e| e.get(key))
            .and_then(|v| v.first())
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let pod = extra(POD_NAME_EXTRA).ok_or(WorkloadError::NotBoundToPod)?;
    Ok(Caller {
        namespace: namespace.to_owned(),
        service_account: sa.to_owned(),
        pod: Some(BoundPod {
            name: pod,
            uid: extra(POD_UID_EXTRA),
        }),
    })
}

/// A Pod object as [`caller::bind`] compares it.
pub fn pod_record(pod: Pod) -> PodRecord {
    PodRecord {
        name: pod.metadata.name.unwrap_or_default(),
        uid: pod.metadata.uid,
        service_account: pod
            .spec
            .and_then(|s| s.service_account_name)
            .unwrap_or_else(|| "default".into()),
        labels: pod.metadata.labels.unwrap_or_default(),
    }
}

impl std::fmt::Debug for TokenReviewVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewVerifier")
            .field("audience", &self.audience)
            .finish()
    }
}

/// Checks a TokenReview answer's `status.audiences` against the audience we
/// asked for. By the TokenReview API an empty (or absent) list means the
/// token is valid for the API server's own audience, i.e. the authenticator
/// did not confirm ours: the pod's ordinary API token would pass. Refused.
pub fn audiences_confirm(audiences: Option<&[String]>, wanted: &str) -> Result<(), TokenError> {
    match audiences {
        None | Some([]) => Err(TokenError::Rejected(format!(
            "TokenReview confirmed no audience (the authenticator does not check audiences, or \
             the token is for the API server): a token for {wanted:?} is required"
        ))),
        Some(auds) if !auds.iter().any(|a| a == wanted) => Err(TokenError::Rejected(format!(
            "token is valid for audiences {auds:?}, not {wanted:?}"
        ))),
        Some(_) => Ok(()),
    }
}

/// The user name Kubernetes gives a service account.
pub fn service_account_user(namespace: &str, service_account: &str) -> String {
    format!("system:serviceaccount:{namespace}:{service_account}")
}

impl TokenReviewVerifier {
    pub fn new(client: kube::Client, audience: impl Into<String>) -> Self {
        TokenReviewVerifier {
            api: Api::all(client.clone()),
            client,
            audience: audience.into(),
        }
    }

    /// Reviews `token` for our audience: the authenticated user.
    async fn review(&self, token: &str) -> Result<UserInfo, TokenError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| TokenError::Unavailable(format!("TokenReview request failed: {e}")))?;
        let status = answer
            .status
            .ok_or_else(|| TokenError::Unavailable("TokenReview answer has no status".into()))?;
        if status.authenticated != Some(true) {
            let why = status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "not authenticated".into());
            return Err(TokenError::Rejected(format!("TokenReview: {why}")));
        }
        audiences_confirm(status.audiences.as_deref(), &self.audience)?;
        Ok(status.user.unwrap_or_default())
    }
}

impl TokenVerifier for TokenReviewVerifier {
    async fn verify(
        &self,
        token: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<(), TokenError> {
        let user = self.review(token).await?.username.unwrap_or_default();
        let wanted = service_account_user(namespace, service_account);
        if user != wanted {
            return Err(TokenError::WrongIdentity {
                requested: format!("service account {namespace}/{service_account}"),
                actual: match user.strip_prefix("system:serviceaccount:") {
                    Some(rest) => format!("service account {}", rest.replacen(':', "/", 1)),
                    None => format!("user {user:?}"),
                },
            });
        }
        Ok(())
    }

    /// The token's service account and bound pod (TokenReview), then that
    /// pod as the API server has it (its labels, service account, uid).
    async fn prove_workload(
        &self,
        token: &str,
        claim: Claim<'_>,
    ) -> Result<ProvenWorkload, WorkloadError> {
        let who = caller_of(&self.review(token).await?)?;
        // Only the caller's own pod is ever read.
        let bound = who.pod.as_ref().map_or("", |p| p.name.as_str());
        let pod = if who.namespace == claim.namespace && bound == claim.pod {
            Api::<Pod>::namespaced(self.client.clone(), &who.namespace)
                .get_opt(bound)
                .await
                .map_err(|e| {
                    WorkloadError::Unavailable(format!(
                        "reading pod {}/{bound}: {e}",
                        who.namespace
                    ))
                })?
        } else {
            None
        };
        caller::bind(claim, &who, pod.map(pod_record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_are_service_accounts_bound_to_a_pod() {
        let user = |name: &str, pod: Option<&str>| UserInfo {
            username: Some(name.into()),
            extra: pod.map(|p| {
                [
                    (POD_NAME_EXTRA.to_string(), vec![p.to_string()]),
                    (POD_UID_EXTRA.to_string(), vec!["u1".to_string()]),
                ]
                .into()
            }),
            ..Default::default()
        };
        let c = caller_of(&user("system:serviceaccount:shop:web", Some("web-0"))).unwrap();
        assert_eq!(
            (c.namespace.as_str(), c.service_account.as_str()),
            ("shop", "web")
        );
        let pod = c.pod.unwrap();
        assert_eq!(
            (pod.name.as_str(), pod.uid.as_deref()),
            ("web-0", Some("u1"))
        );
        let reason = |u| caller_of(&u).unwrap_err().reason();
        assert_eq!(
            reason(user("system:serviceaccount:shop:web", None)),
            "not_bound_to_pod"
        );
        assert_eq!(
            reason(user("system:serviceaccount:shop:web", Some(""))),
            "not_bound_to_pod"
        );
        assert_eq!(reason(user("alice", Some("web-0"))), "token_rejected");
    }

    #[test]
    fn audiences_must_name_ours() {
        let ours = "conduit.io/identity";
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let table: [(Option<Vec<String>>, bool); 5] = [
            (Some(v(&[ours])), true),
            (Some(v(&["api", ours])), true),
            (Some(v(&["https://kubernetes.default.svc"])), false),
            (Some(vec![]), false),
            (None, false),
        ];
        for (auds, ok) in table {
            let r = audiences_confirm(auds.as_deref(), ours);
            assert_eq!(r.is_ok(), ok, "{auds:?}: {r:?}");
            if let Err(e) = r {
                assert!(matches!(e, TokenError::Rejected(_)), "{e:?}");
            }
        }
    }
}
