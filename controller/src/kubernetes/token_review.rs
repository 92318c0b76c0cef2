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
        // An authenticator that ignores audiences answers without them; one
        // that checks them must have confirmed ours.
        if let Some(auds) = status.audiences.filter(|a| !a.is_empty())
            && !auds.contains(&self.audience)
        {
            return Err(TokenError::Rejected(format!(
                "token is valid for audiences {auds:?}, not {:?}",
                self.audience
            )));
        }
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
