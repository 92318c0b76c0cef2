//! Who may watch which workload's policy.
//!
//! A proxy's `InboundPolicies.Watch` names a namespace and a pod; the
//! policy it gets back is resolved from that pod's labels. Without a check a
//! neighbour pod could name any pod (and any labels) and read the policy
//! that protects it: which identities, networks and paths get in, and which
//! plugin is asked. So the request must carry the proxy's service-account
//! token (`authorization: Bearer <token>`, the token it also shows
//! `Identity.Certify`), and the controller binds the claim to what the token
//! proves ([`bind`]):
//!
//! * Kubernetes (`TokenReview`): the token's service account and the pod
//!   it is bound to (`authentication.kubernetes.io/pod-name` and `pod-uid`
//!   in the review's `user.extra`, present on every projected token); the
//!   labels are the Pod object's, read from the API server, never the
//!   proxy's report. A token bound to no pod is refused.
//! * The token file: the token's service account, and the pods listed
//!   under it (`pods: {name: {labels}}`). A token proves only the service
//!   account, so pods sharing one may read each other's policy (they share
//!   their identity and certificates as well).
//!
//! Everything fails closed: no token, an unknown token, a token check that
//! cannot be made, a pod that does not exist or runs under another service
//! account: no policy.

use crate::model::TokenError;
use std::collections::BTreeMap;
use tonic::{Code, Status};

/// gRPC metadata key carrying the proxy's token on `Watch`.
pub const TOKEN_METADATA: &str = "authorization";

/// What a `Watch` request claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
}

/// What a token proves about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub namespace: String,
    pub service_account: String,
    /// The pod the token is bound to (Kubernetes projected tokens).
    pub pod: Option<BoundPod>,
}

/// The pod a token is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundPod {
    pub name: String,
    pub uid: Option<String>,
}

/// A pod as the authority (API server, token file) knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    pub name: String,
    pub uid: Option<String>,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
}

/// The workload whose policy the caller may watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvenWorkload {
    pub namespace: String,
    pub pod: String,
    pub service_account: String,
    /// The authority's labels (not the proxy's report).
    pub labels: BTreeMap<String, String>,
}

/// Why a `Watch` was refused.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("no service account token (metadata `authorization: Bearer <token>`)")]
    NoToken,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the token is not bound to a pod (a projected service-account token is required)")]
    NotBoundToPod,
    #[error("the token proves namespace {caller:?}, not {claimed:?}")]
    OtherNamespace { claimed: String, caller: String },
    #[error("the token is bound to pod {bound:?}, not {claimed:?}")]
    OtherPod { claimed: String, bound: String },
    #[error("pod {namespace}/{pod} is not known for this token")]
    UnknownPod { namespace: String, pod: String },
    #[error("pod {pod} runs as service account {actual:?}, the token proves {caller:?}")]
    OtherServiceAccount {
        pod: String,
        actual: String,
        caller: String,
    },
    #[error("pod {pod} was replaced (uid {actual:?}, the token is bound to {bound:?})")]
    Replaced {
        pod: String,
        /// The pod's uid now ("" when it has none).
        actual: String,
        bound: String,
    },
    #[error("cannot prove the caller's pod: {0}")]
    Unavailable(String),
}

impl WorkloadError {
    pub fn code(&self) -> Code {
        use WorkloadError::*;
        match self {
            NoToken | Token(TokenError::Rejected(_)) => Code::Unauthenticated,
            Token(TokenError::Unavailable(_)) | Unavailable(_) => Code::Unavailable,
            Token(TokenError::WrongIdentity { .. })
            | NotBoundToPod
            | OtherNamespace { .. }
            | OtherPod { .. }
            | UnknownPod { .. }
            | OtherServiceAccount { .. }
            | Replaced { .. } => Code::PermissionDenied,
        }
    }

    /// Bounded label for the refusal counter.
    pub fn reason(&self) -> &'static str {
        use WorkloadError::*;
        match self {
            NoToken => "no_token",
            Token(TokenError::Rejected(_)) => "token_rejected",
            Token(TokenError::WrongIdentity { .. }) => "wrong_identity",
            Token(TokenError::Unavailable(_)) | Unavailable(_) => "unavailable",
            NotBoundToPod => "not_bound_to_pod",
            OtherNamespace { .. } => "other_namespace",
            OtherPod { .. } => "other_pod",
            UnknownPod { .. } => "unknown_pod",
            OtherServiceAccount { .. } => "other_service_account",
            Replaced { .. } => "replaced",
        }
    }
}

impl From<WorkloadError> for Status {
    fn from(e: WorkloadError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

/// The token in `authorization: Bearer <token>`, if any.
pub fn bearer(meta: &tonic::metadata::MetadataMap) -> Result<&str, WorkloadError> {
    meta.get(TOKEN_METADATA)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(WorkloadError::NoToken)
}

/// The decision: may `caller` watch the pod `claim` names, which the
/// authority knows as `record` (looked up in the caller's namespace)?
pub fn bind(
    claim: Claim<'_>,
    caller: &Caller,
    record: Option<PodRecord>,
) -> Result<ProvenWorkload, WorkloadError> {
    if claim.namespace != caller.namespace {
        return Err(WorkloadError::OtherNamespace {
            claimed: claim.namespace.into(),
            caller: caller.namespace.clone(),
        });
    }
    if let Some(bound) = &caller.pod
        && bound.name != claim.pod
    {
        return Err(WorkloadError::OtherPod {
            claimed: claim.pod.into(),
            bound: bound.name.clone(),
        });
    }
    let Some(record) = record.filter(|r| r.name == claim.pod) else {
        return Err(WorkloadError::UnknownPod {
            namespace: claim.namespace.into(),
            pod: claim.pod.into(),
        });
    };
    if record.service_account != caller.service_account {
        return Err(WorkloadError::OtherServiceAccount {
            pod: record.name,
            actual: record.service_account,
            caller: caller.service_account.clone(),
        });
    }
    if let Some(BoundPod {
        uid: Some(bound), ..
    }) = &caller.pod
        && record.uid.as_ref() != Some(bound)
    {
        return Err(WorkloadError::Replaced {
            pod: record.name,
            actual: record.uid.unwrap_or_default(),
            bound: bound.clone(),
        });
    }
    Ok(ProvenWorkload {
        namespace: caller.namespace.clone(),
        pod: record.name,
        service_account: record.service_account,
        labels: record.labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(pod: Option<(&str, Option<&str>)>) -> Caller {
        Caller {
            namespace: "shop".into(),
            service_account: "web".into(),
            pod: pod.map(|(n, u)| BoundPod {
                name: n.into(),
                uid: u.map(Into::into),
            }),
        }
    }

    fn record(name: &str, uid: Option<&str>, sa: &str) -> PodRecord {
        PodRecord {
            name: name.into(),
            uid: uid.map(Into::into),
            service_account: sa.into(),
            labels: [("app".to_string(), sa.to_string())].into(),
        }
    }

    #[test]
    fn binds_only_the_callers_own_pod() {
        let web0 = || Some(record("web-0", Some("u0"), "web"));
        let claim = |ns, pod| Claim { namespace: ns, pod };
        // (claim, caller, record, Ok or the refusal's reason)
        let table: Vec<(Claim<'_>, Caller, Option<PodRecord>, &str)> = vec![
            (
                claim("shop", "web-0"),
                caller(Some(("web-0", Some("u0")))),
                web0(),
                "ok",
            ),
            (
                claim("shop", "web-0"),
                caller(Some(("web-0", None))),
                web0(),
                "ok",
            ),
            // token file: the service account's listed pod
            (claim("shop", "web-0"), caller(None), web0(), "ok"),
            (
                claim("bank", "web-0"),
                caller(Some(("web-0", Some("u0")))),
                web0(),
                "other_namespace",
            ),
            (
                claim("shop", "db-0"),
                caller(Some(("web-0", Some("u0")))),
                web0(),
                "other_pod",
            ),
            (claim("shop", "db-0"), caller(None), None, "unknown_pod"),
            // a record of another name never stands for the claimed pod
            (claim("shop", "db-0"), caller(None), web0(), "unknown_pod"),
            (
                claim("shop", "db-0"),
                caller(None),
                Some(record("db-0", None, "db")),
                "other_service_account",
            ),
            (
                claim("shop", "web-0"),
                caller(Some(("web-0", Some("old")))),
                web0(),
                "replaced",
            ),
            (
                claim("shop", "web-0"),
                caller(Some(("web-0", Some("u0")))),
                Some(record("web-0", None, "web")),
                "replaced",
            ),
        ];
        for (claim, caller, record, want) in table {
            let got = bind(claim, &caller, record.clone());
            match (&got, want) {
                (Ok(w), "ok") => {
                    assert_eq!(w.pod, claim.pod);
                    assert_eq!(w.labels["app"], "web", "labels come from the record");
                }
                (Err(e), _) => {
                    assert_eq!(e.reason(), want, "{claim:?} {caller:?} {record:?}: {e}");
                    assert_eq!(e.code(), Code::PermissionDenied);
                }
                (Ok(_), _) => panic!("{claim:?} {caller:?} {record:?}: allowed, want {want}"),
            }
        }
    }

    #[test]
    fn token_errors_map_to_codes() {
        let table = [
            (WorkloadError::NoToken, Code::Unauthenticated),
            (
                WorkloadError::Token(TokenError::Rejected("x".into())),
                Code::Unauthenticated,
            ),
            (
                WorkloadError::Token(TokenError::Unavailable("x".into())),
                Code::Unavailable,
            ),
            (WorkloadError::NotBoundToPod, Code::PermissionDenied),
        ];
        for (e, code) in table {
            assert_eq!(e.code(), code, "{e}");
        }
    }

    #[test]
    fn bearer_token_from_metadata() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert!(matches!(bearer(&m), Err(WorkloadError::NoToken)));
        m.insert(TOKEN_METADATA, "Basic abc".parse().unwrap());
        assert!(bearer(&m).is_err());
        m.insert(TOKEN_METADATA, "Bearer ".parse().unwrap());
        assert!(bearer(&m).is_err());
        m.insert(TOKEN_METADATA, "Bearer tok-123".parse().unwrap());
        assert_eq!(bearer(&m).unwrap(), "tok-123");
    }
}
