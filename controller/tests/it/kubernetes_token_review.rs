//! TokenReviewVerifier against the fake API server's TokenReview: accepted,
//! refused, another service account, a token for another audience, and the
//! API server gone.

use conduit_controller::kubernetes::fake::{FakeApiServer, TokenReviewSeen};
use conduit_controller::kubernetes::mesh::IDENTITY_AUDIENCE;
use conduit_controller::kubernetes::{TokenReviewVerifier, service_account_user};
use conduit_controller::model::{TokenError, TokenVerifier};

async fn setup() -> (FakeApiServer, TokenReviewVerifier) {
    let fake = FakeApiServer::start().await.unwrap();
    fake.add_token(
        "web-token",
        &service_account_user("shop", "web"),
        &[IDENTITY_AUDIENCE],
    );
    fake.add_token(
        "db-token",
        &service_account_user("data", "db"),
        &[IDENTITY_AUDIENCE],
    );
    fake.add_token(
        "api-token",
        &service_account_user("shop", "web"),
        &["https://kubernetes.default.svc"],
    );
    let verifier = TokenReviewVerifier::new(fake.client(), IDENTITY_AUDIENCE);
    (fake, verifier)
}

#[tokio::test]
async fn accepts_the_service_accounts_own_token_for_the_identity_audience() {
    let (fake, v) = setup().await;
    v.verify("web-token", "shop", "web").await.unwrap();
    assert_eq!(
        fake.stats().token_reviews,
        [TokenReviewSeen {
            token: "web-token".into(),
            audiences: vec![IDENTITY_AUDIENCE.into()],
        }]
    );
}

#[tokio::test]
async fn refuses_an_unknown_token() {
    let (_fake, v) = setup().await;
    match v.verify("forged", "shop", "web").await {
        Err(TokenError::Rejected(m)) => assert!(m.contains("invalid bearer token"), "{m}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
}

#[tokio::test]
async fn refuses_a_token_of_another_service_account() {
    let (_fake, v) = setup().await;
    match v.verify("db-token", "shop", "web").await {
        Err(TokenError::WrongIdentity { requested, actual }) => {
            assert_eq!(requested, "service account shop/web");
            assert_eq!(actual, "service account data/db");
        }
        other => panic!("expected WrongIdentity, got {other:?}"),
    }
    // Same name, other namespace: also refused.
    assert!(matches!(
        v.verify("web-token", "other", "web").await,
        Err(TokenError::WrongIdentity { .. })
    ));
}

#[tokio::test]
async fn refuses_a_token_minted_for_another_audience() {
    let (_fake, v) = setup().await;
    match v.verify("api-token", "shop", "web").await {
        Err(TokenError::Rejected(m)) => assert!(m.contains("audiences"), "{m}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
}

/// Attack: a pod presents its ordinary API token; an authenticator that does
/// not check audiences answers "authenticated" with an empty audience list.
/// That is not a token for the controller: refused.
#[tokio::test]
async fn empty_token_review_audiences_are_refused() {
    let (fake, v) = setup().await;
    fake.add_token_audience_unaware("unaware-token", &service_account_user("shop", "web"));
    match v.verify("unaware-token", "shop", "web").await {
        Err(TokenError::Rejected(m)) => assert!(m.contains("no audience"), "{m}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
}

#[tokio::test]
async fn api_server_away_is_unavailable_not_a_refusal() {
    let (fake, v) = setup().await;
    drop(fake);
    match v.verify("web-token", "shop", "web").await {
        Err(TokenError::Unavailable(m)) => assert!(m.contains("TokenReview"), "{m}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}
