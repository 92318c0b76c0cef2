//! The real `conduit-controller` binary with `--discovery kubernetes`,
//! against the fake API server (real list/watch wire format): discovery from
//! Services, EndpointSlices and Pods, and `Certify` proven by TokenReview.

use crate::binary_common;
use crate::kubernetes_common;

use binary_common::{BIN, Proc, free_port};
use conduit_controller::kubernetes::fake::FakeApiServer;
use conduit_controller::kubernetes::mesh::IDENTITY_AUDIENCE;
use conduit_controller_api::client::{WatchOptions, watch_destination_with};
use conduit_controller_api::identity::v1::{CertifyRequest, identity_client::IdentityClient};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kubernetes_common::*;
use rcgen::{CertificateParams, KeyPair, SanType};
use std::process::{Command, Stdio};
use tonic::transport::Endpoint;

#[tokio::test]
async fn serves_kubernetes_discovery_and_tokenreview_identity() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(&service(
        "default",
        "web",
        "10.96.0.20",
        &[("http", 80, IntOrString::Int(8080))],
    ));
    fake.apply(&slice(
        "default",
        "web-abc",
        "web",
        &[("http", Some(8080))],
        &[ready("10.0.0.5", "web-0")],
    ));
    fake.apply(&pod(
        "default",
        "web-0",
        "10.0.0.5",
        "web",
        "node-a",
        true,
        &[],
    ));
    fake.add_token(
        "projected-web-token",
        "system:serviceaccount:default:web",
        &[IDENTITY_AUDIENCE],
    );

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, conduit_kube::fake::kubeconfig(&fake.url())).unwrap();
    let (grpc, admin) = (free_port(), free_port());
    let child = Proc(
        Command::new(BIN)
            .arg("--discovery=kubernetes")
            .arg(format!("--grpc-addr=127.0.0.1:{grpc}"))
            .arg(format!("--admin-addr=127.0.0.1:{admin}"))
            .arg(format!("--trust-domain={TD}"))
            // This test is about the Kubernetes backend; TLS on the gRPC
            // port (the default) is tested in binary.rs.
            .arg("--insecure-plaintext-grpc")
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let child = std::sync::Mutex::new(child);
    conduit_test_support::wait_until_async(
        "the controller's readiness (reflectors synced)",
        WAIT,
        || async {
            if let Some(st) = child.lock().unwrap().0.try_wait()? {
                return Err(conduit_test_support::wait::fatal(format!(
                    "controller exited: {st}"
                )));
            }
            anyhow::ensure!(conduit_test_support::http::ready(admin).await, "not ready");
            Ok(())
        },
    )
    .await
    .unwrap();
    let _child = child.into_inner().unwrap();

    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
        .unwrap()
        .connect_lazy();
    let mut rx = watch_destination_with(
        channel.clone(),
        "web.default.svc.cluster.local:80",
        WatchOptions::default(),
    );
    let s = tokio::time::timeout(WAIT, rx.wait_for(|s| !s.endpoints.is_empty()))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert_eq!(s.endpoints[0].addr.to_string(), "10.0.0.5:8080");
    assert_eq!(
        s.endpoints[0].identity.as_deref(),
        Some(&*format!("spiffe://{TD}/ns/default/sa/web"))
    );
    assert_eq!(s.endpoints[0].meshed_inbound_port, Some(4143));

    // A new endpoint appears in Kubernetes; the client follows.
    fake.apply(&pod(
        "default",
        "web-1",
        "10.0.0.6",
        "web",
        "node-a",
        true,
        &[],
    ));
    fake.apply(&slice(
        "default",
        "web-abc",
        "web",
        &[("http", Some(8080))],
        &[ready("10.0.0.5", "web-0"), ready("10.0.0.6", "web-1")],
    ));
    tokio::time::timeout(WAIT, rx.wait_for(|s| s.endpoints.len() == 2))
        .await
        .unwrap()
        .unwrap();

    // Certify, proven by a TokenReview for the identity audience.
    let id = format!("spiffe://{TD}/ns/default/sa/web");
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::URI(id.clone().try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().der().to_vec();
    let mut identity = IdentityClient::new(channel);
    let req = |token: &str| CertifyRequest {
        identity: id.clone(),
        token: token.into(),
        certificate_signing_request: csr.clone(),
    };
    identity
        .certify(req("projected-web-token"))
        .await
        .expect("TokenReview accepts the token");
    let err = identity
        .certify(req("unknown-token"))
        .await
        .expect_err("unknown token refused");
    assert_eq!(
        err.code(),
        tonic::Code::Unauthenticated,
        "{}",
        err.message()
    );
    let seen = fake.stats().token_reviews;
    assert!(
        seen.iter().all(|r| r.audiences == [IDENTITY_AUDIENCE]),
        "{seen:?}"
    );
}
