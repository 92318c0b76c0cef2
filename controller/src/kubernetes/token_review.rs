//! [`TokenReviewVerifier`]: proves a proxy's identity with a Kubernetes
//! TokenReview of its projected service-account token.
//!
//! The review asks for the identity audience ([`super::mesh::IDENTITY_AUDIENCE`]
//! by default), so only a token minted for the controller is accepted (not
//! the pod's ordinary API token), and the authenticated user must be the
//! service account named in the requested identity
//! (`system:serviceaccount:<ns>:<sa>`).

use crate::model::{TokenError, TokenVerifier};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;

pub struct TokenReviewVerifier {
    api: Api<TokenReview>,
    audience: String,
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
            api: Api::all(client),
            audience: audience.into(),
        }
    }
}

impl TokenVerifier for TokenReviewVerifier {
    async fn verify(
        &self,
        token: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<(), TokenError> {
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
        let user = status.user.and_then(|u| u.username).unwrap_or_default();
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
