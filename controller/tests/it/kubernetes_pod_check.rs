//! The node agent's check of a proxy's pod claim, against the fake API
//! server: accepted, wrong namespace, wrong IP, pod on another node, unknown
//! pod, finished pod, and an IP reported late (validate_until).

use crate::kubernetes_common;

use conduit_controller::kubernetes::fake::FakeApiServer;
use conduit_controller::kubernetes::pod_check::{
    PodClaim, PodClaimError, validate, validate_until,
};
use kubernetes_common::pod;
use std::time::Duration;

fn claim(ns: &str, name: &str, ips: &[&str]) -> PodClaim {
    PodClaim {
        name: name.into(),
        namespace: ns.into(),
        ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
    }
}

async fn setup() -> (FakeApiServer, kube::Client) {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(&pod(
        "shop",
        "web-0",
        "10.1.0.1",
        "web",
        "node-a",
        true,
        &[],
    ));
    fake.apply(&pod(
        "shop",
        "web-1",
        "10.1.0.2",
        "web",
        "node-b",
        true,
        &[],
    ));
    let client = fake.client();
    (fake, client)
}

#[tokio::test]
async fn accepts_a_true_claim() {
    let (_fake, c) = setup().await;
    validate(&c, "node-a", &claim("shop", "web-0", &["10.1.0.1"]))
        .await
        .unwrap();
    // Extra addresses in the namespace (e.g. IPv6) do not matter.
    validate(
        &c,
        "node-a",
        &claim("shop", "web-0", &["fd00::1", "10.1.0.1"]),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn refuses_a_wrong_namespace() {
    let (_fake, c) = setup().await;
    match validate(&c, "node-a", &claim("kube-system", "web-0", &["10.1.0.1"])).await {
        Err(PodClaimError::WrongNamespace {
            claimed, actual, ..
        }) => {
            assert_eq!((claimed.as_str(), actual.as_str()), ("kube-system", "shop"));
        }
        other => panic!("expected WrongNamespace, got {other:?}"),
    }
}

#[tokio::test]
async fn refuses_a_wrong_ip() {
    let (_fake, c) = setup().await;
    // web-1's IP claiming to be web-0 (both exist; web-0 is on this node).
    let err = validate(&c, "node-a", &claim("shop", "web-0", &["10.1.0.2"]))
        .await
        .unwrap_err();
    assert!(matches!(err, PodClaimError::WrongIp { .. }), "{err:?}");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("10.1.0.1"), "{err}");
}

#[tokio::test]
async fn refuses_a_pod_on_another_node() {
    let (_fake, c) = setup().await;
    match validate(&c, "node-a", &claim("shop", "web-1", &["10.1.0.2"])).await {
        Err(PodClaimError::OtherNode { actual, node, .. }) => {
            assert_eq!(actual.as_deref(), Some("node-b"));
            assert_eq!(node, "node-a");
        }
        other => panic!("expected OtherNode, got {other:?}"),
    }
}

#[tokio::test]
async fn refuses_unknown_and_finished_pods_and_empty_claims() {
    let (fake, c) = setup().await;
    let err = validate(&c, "node-a", &claim("shop", "ghost", &["10.1.0.9"]))
        .await
        .unwrap_err();
    assert!(matches!(err, PodClaimError::NotFound { .. }), "{err:?}");
    assert!(matches!(
        validate(&c, "node-a", &claim("shop", "web-0", &[])).await,
        Err(PodClaimError::NoIp)
    ));
    let mut done = pod("shop", "web-0", "10.1.0.1", "web", "node-a", true, &[]);
    done.status.as_mut().unwrap().phase = Some("Failed".into());
    fake.apply(&done);
    assert!(matches!(
        validate(&c, "node-a", &claim("shop", "web-0", &["10.1.0.1"])).await,
        Err(PodClaimError::Finished { .. })
    ));
}

#[tokio::test]
async fn waits_for_an_ip_the_kubelet_reports_late() {
    let (fake, c) = setup().await;
    fake.apply(&pod("shop", "new-0", "", "web", "node-a", true, &[]));
    let cl = claim("shop", "new-0", &["10.1.0.7"]);
    let err = validate(&c, "node-a", &cl).await.unwrap_err();
    assert!(
        matches!(err, PodClaimError::NoIpYet { .. }) && err.is_transient(),
        "{err:?}"
    );
    let check = tokio::spawn({
        let c = c.clone();
        let cl = cl.clone();
        async move { validate_until(&c, "node-a", &cl, Duration::from_secs(20)).await }
    });
    // The kubelet reports the IP once the check has seen the pod without one.
    let gets = fake.stats().gets;
    kubernetes_common::wait_until("a retried check", || fake.stats().gets > gets).await;
    fake.apply(&pod(
        "shop",
        "new-0",
        "10.1.0.7",
        "web",
        "node-a",
        true,
        &[],
    ));
    check.await.unwrap().unwrap();
    // A permanent refusal is not retried.
    let err = validate_until(
        &c,
        "node-a",
        &claim("shop", "web-1", &["10.1.0.2"]),
        Duration::from_secs(20),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, PodClaimError::OtherNode { .. }));
}

#[tokio::test]
async fn api_server_away_is_an_api_error() {
    let (fake, c) = setup().await;
    drop(fake);
    let err = validate(&c, "node-a", &claim("shop", "web-0", &["10.1.0.1"]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PodClaimError::Api { .. }) && err.is_transient(),
        "{err:?}"
    );
}

#[tokio::test]
async fn checker_bundles_node_and_timeout() {
    use conduit_controller::kubernetes::pod_check::PodChecker;
    let (_fake, c) = setup().await;
    let checker = PodChecker::new(c, "node-b", Duration::from_secs(5));
    checker
        .check(&claim("shop", "web-1", &["10.1.0.2"]))
        .await
        .unwrap();
    let err = checker
        .check(&claim("shop", "web-0", &["10.1.0.1"]))
        .await
        .unwrap_err();
    assert!(matches!(err, PodClaimError::OtherNode { .. }), "{err:?}");
    // Outside a cluster (no node name) there is no checker.
    assert!(std::env::var_os(conduit_controller::kubernetes::pod_check::NODE_NAME_ENV).is_none());
    assert!(
        PodChecker::from_env(Duration::from_secs(1))
            .await
            .unwrap()
            .is_none()
    );
}
