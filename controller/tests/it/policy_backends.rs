//! The controller's two policy backends behind `InboundPolicies.Watch`, with
//! a real gRPC client: the YAML file (reloaded, a bad file keeps the last
//! good policy) and the `policy.conduit.io` custom resources read from the
//! fake API server. Also: the CRD manifests are the ones the Rust types
//! generate, and the controller's RBAC lets it read them. And the attack:
//! a pod asking for another pod's policy is refused under both token
//! authorities (the token file, Kubernetes TokenReview of a pod-bound token).

use conduit_controller::file::{FileBackend, Settings};
use conduit_controller::identity::{Certifier, Issuer, TokenFileVerifier};
use conduit_controller::kubernetes::mesh::IDENTITY_AUDIENCE;
use conduit_controller::kubernetes::{TokenReviewVerifier, service_account_user};
use conduit_controller::metrics::Metrics;
use conduit_controller::model::TokenVerifier;
use conduit_controller::policy::PolicyResources;
use conduit_controller::server::{self, RunningController, ServerConfig};
use conduit_controller_api::policy::v1 as pb;
use conduit_controller_api::policy::v1::inbound_policies_client::InboundPoliciesClient;
use conduit_kube::fake::FakeApiServer;
use conduit_policy::DefaultPolicy;
use conduit_policy::InboundSpec;
use conduit_policy::crd::{
    AuthorizationPolicy, AuthorizationPolicySpec, InboundDefault, InboundDefaultSpec, Server,
    ServerSpec,
};
use conduit_policy::resources::PodSelector;
use conduit_policy::spec::{ClientsSpec, HttpMatchSpec, PathMatchSpec, ServerProtocol};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const WEB_TOKEN: &str = "web-0-token-0123456789abcdef";
const DB_TOKEN: &str = "db-0-token-0123456789abcdef";
const OTHER_NS_TOKEN: &str = "bank-token-0123456789abcdef";

/// The token file: sa/web runs pod web-0, sa/db pod db-0 (namespace shop).
const TOKENS: &str = r#"
tokens:
  - {token: web-0-token-0123456789abcdef, namespace: shop, serviceAccount: web, pods: {web-0: {app: web}}}
  - {token: db-0-token-0123456789abcdef, namespace: shop, serviceAccount: db, pods: {db-0: {app: db}}}
  - {token: bank-token-0123456789abcdef, namespace: bank, serviceAccount: web, pods: {web-0: {app: web}}}
"#;

fn token_file(dir: &Path) -> TokenFileVerifier {
    let tokens = dir.join("tokens.yaml");
    std::fs::write(&tokens, TOKENS).unwrap();
    TokenFileVerifier::load(&tokens).unwrap()
}

async fn serve<V: TokenVerifier>(
    dir: &Path,
    policy: PolicyResources,
    verifier: V,
) -> (RunningController, Arc<Metrics>) {
    let discovery = dir.join("discovery.yaml");
    std::fs::write(&discovery, "").unwrap();
    let settings = Settings {
        trust_domain: "cluster.local".into(),
        cluster_domain: "cluster.local".into(),
    };
    let backend = FileBackend::start(&discovery, settings, Duration::from_secs(1), None).unwrap();
    let issuer = Issuer::generate(
        "cluster.local",
        SystemTime::now(),
        Duration::from_secs(86400),
    )
    .unwrap();
    let certifier = Arc::new(Certifier::new(
        issuer,
        verifier,
        "cluster.local".parse().unwrap(),
        Duration::from_secs(3600),
    ));
    let metrics = Arc::new(Metrics::new());
    let ctl = server::start_with_policy(
        ServerConfig {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            backend,
            cluster_domain: "cluster.local".into(),
            certifier,
            metrics: metrics.clone(),
            grpc_tls: None,
        },
        policy,
    )
    .await
    .unwrap();
    (ctl, metrics)
}

/// `Watch` for `namespace/pod` claiming `labels`, with `token` as the
/// bearer token (none: no metadata).
async fn try_watch(
    ctl: &RunningController,
    token: Option<&str>,
    (namespace, pod): (&str, &str),
    labels: &[(&str, &str)],
) -> Result<tonic::Streaming<pb::InboundPolicy>, tonic::Status> {
    let mut client = InboundPoliciesClient::connect(format!("http://{}", ctl.grpc_addr))
        .await
        .unwrap();
    let mut req = tonic::Request::new(pb::Workload {
        namespace: namespace.into(),
        pod: pod.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    client.watch(req).await.map(|r| r.into_inner())
}

/// `Watch` of the caller's own pod (web-0 with web's token, db-0 with db's).
async fn watch(
    ctl: &RunningController,
    labels: &[(&str, &str)],
) -> tonic::Streaming<pb::InboundPolicy> {
    let db = labels.contains(&("app", "db"));
    let (token, pod) = if db {
        (DB_TOKEN, "db-0")
    } else {
        (WEB_TOKEN, "web-0")
    };
    try_watch(ctl, Some(token), ("shop", pod), labels)
        .await
        .unwrap()
}

async fn next(s: &mut tonic::Streaming<pb::InboundPolicy>) -> InboundSpec {
    let msg = tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("a policy within 10 s")
        .unwrap()
        .expect("the stream stays open");
    InboundSpec::try_from(msg).unwrap()
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

const FILE: &str = r#"
defaults:
  - {name: shop-deny, namespace: shop, defaultPolicy: deny}
servers:
  - {name: web-http, namespace: shop, podSelector: {matchLabels: {app: web}}, port: 8080, protocol: http}
authorizations:
  - name: frontend-get-api
    namespace: shop
    servers: [web-http]
    from: {serviceAccounts: [frontend]}
    http: [{methods: [GET], path: {prefix: /api/}}]
"#;

#[tokio::test]
async fn file_backend_streams_each_workload_its_policy_and_follows_changes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    write(&file, FILE);
    let td = conduit_identity::TrustDomain::new("cluster.local").unwrap();
    let policy = conduit_controller::policy::file::PolicyFile::start(
        &file,
        Some(td),
        Duration::from_millis(50),
    )
    .unwrap();
    let (ctl, _) = serve(dir.path(), policy.resources(), token_file(dir.path())).await;

    let mut web = watch(&ctl, &[("app", "web")]).await;
    let p = next(&mut web).await;
    assert_eq!(p.default_policy, Some(DefaultPolicy::Deny));
    assert_eq!(p.servers.len(), 1);
    assert_eq!(p.authorizations[0].from.service_accounts, ["shop/frontend"]);
    // Another workload of the namespace: the default only.
    let mut db = watch(&ctl, &[("app", "db")]).await;
    let p = next(&mut db).await;
    assert!(p.servers.is_empty() && p.authorizations.is_empty());

    // A bad file is refused; the next good one is streamed.
    write(&file, &FILE.replace("port: 8080", "port: 0"));
    write(&file, &FILE.replace("[frontend]", "[backend]"));
    let p = next(&mut web).await;
    assert_eq!(p.authorizations[0].from.service_accounts, ["shop/backend"]);

    // A malformed workload is refused.
    let e = try_watch(&ctl, Some(WEB_TOKEN), ("Not A Label", "web-0"), &[])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    ctl.shutdown().await.unwrap();
}

fn meta(name: &str) -> kube::api::ObjectMeta {
    kube::api::ObjectMeta {
        name: Some(name.into()),
        namespace: Some("shop".into()),
        ..Default::default()
    }
}

fn authz(sa: &str) -> AuthorizationPolicy {
    AuthorizationPolicy {
        metadata: meta("frontend-get-api"),
        spec: AuthorizationPolicySpec {
            servers: vec!["web-http".into()],
            from: ClientsSpec {
                service_accounts: vec![sa.into()],
                ..Default::default()
            },
            http: vec![HttpMatchSpec {
                methods: vec!["GET".into()],
                path: Some(PathMatchSpec {
                    prefix: Some("/api/".into()),
                    exact: None,
                }),
                ..Default::default()
            }],
            ..Default::default()
        },
    }
}

#[tokio::test]
async fn kubernetes_backend_reads_the_custom_resources() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply_custom(&InboundDefault {
        metadata: meta("shop-deny"),
        spec: InboundDefaultSpec {
            pod_selector: None,
            default_policy: DefaultPolicy::Deny,
        },
    });
    fake.apply_custom(&Server {
        metadata: meta("web-http"),
        spec: ServerSpec {
            pod_selector: PodSelector {
                match_labels: [("app".to_string(), "web".to_string())].into(),
            },
            port: 8080,
            protocol: ServerProtocol::Http,
            default_policy: None,
        },
    });
    fake.apply_custom(&authz("frontend"));
    // An invalid object is left out, the rest applies.
    let mut bad = authz("Not/Valid");
    bad.metadata.name = Some("broken".into());
    fake.apply_custom(&bad);

    let td = conduit_identity::TrustDomain::new("cluster.local").unwrap();
    let policy =
        conduit_controller::policy::kubernetes::KubernetesPolicy::start(fake.client(), Some(td));
    let dir = tempfile::tempdir().unwrap();
    let (ctl, _) = serve(dir.path(), policy.resources(), token_file(dir.path())).await;
    let mut web = watch(&ctl, &[("app", "web")]).await;
    let mut p = next(&mut web).await;
    // The reflectors fill in one by one: wait for the whole set.
    while p.authorizations.is_empty() || p.servers.is_empty() || p.default_policy.is_none() {
        p = next(&mut web).await;
    }
    assert_eq!(p.default_policy, Some(DefaultPolicy::Deny));
    assert_eq!(p.servers[0].name, "web-http");
    let names: Vec<_> = p.authorizations.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["frontend-get-api"]);

    // Changed live.
    fake.apply_custom(&authz("backend"));
    let p = next(&mut web).await;
    assert_eq!(p.authorizations[0].from.service_accounts, ["shop/backend"]);
    assert!(fake.delete_custom::<AuthorizationPolicy>("shop", "frontend-get-api"));
    let p = next(&mut web).await;
    assert!(p.authorizations.is_empty());
    ctl.shutdown().await.unwrap();
}

#[test]
fn crd_manifests_are_generated_from_the_types() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/conduit/05-policy-crds.yaml");
    let want = conduit_policy::crd::crd_yaml().unwrap();
    if std::env::var_os("CONDUIT_UPDATE_CRDS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is not what the types generate; regenerate with CONDUIT_UPDATE_CRDS=1 cargo test --workspace --test it -- policy_backends::crd",
        path.display()
    );
}

/// The policy file with a server for `app: web` only.
fn file_policy(dir: &Path) -> conduit_controller::policy::file::PolicyFile {
    let file = dir.join("policy.yaml");
    write(&file, FILE);
    let td = conduit_identity::TrustDomain::new("cluster.local").unwrap();
    conduit_controller::policy::file::PolicyFile::start(&file, Some(td), Duration::from_millis(50))
        .unwrap()
}

/// The attack, under `token`: db's proxy asks for web-0's policy (refused),
/// then for its own pod claiming web's labels (gets its own policy: the
/// labels are the authority's, not the claim's).
async fn neighbour_cannot_read_web_policy(ctl: &RunningController, db_token: &str) {
    let e = try_watch(ctl, Some(db_token), ("shop", "web-0"), &[("app", "web")])
        .await
        .map(|_| "a policy stream")
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let mut own = try_watch(ctl, Some(db_token), ("shop", "db-0"), &[("app", "web")])
        .await
        .unwrap();
    let p = next(&mut own).await;
    assert!(
        p.servers.is_empty() && p.authorizations.is_empty(),
        "db-0 claiming app=web got web's policy: {p:?}"
    );
}

#[tokio::test]
async fn file_backend_a_pod_cannot_watch_another_pods_policy() {
    let dir = tempfile::tempdir().unwrap();
    let policy = file_policy(dir.path());
    let (ctl, metrics) = serve(dir.path(), policy.resources(), token_file(dir.path())).await;
    // The owner gets it.
    let p = next(&mut watch(&ctl, &[]).await).await;
    assert_eq!(
        p.servers.len(),
        1,
        "web-0 resolves with app=web from the token file"
    );

    neighbour_cannot_read_web_policy(&ctl, DB_TOKEN).await;
    // Same pod name, same service account, another namespace's token.
    let e = try_watch(&ctl, Some(OTHER_NS_TOKEN), ("shop", "web-0"), &[])
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // No token, an unknown token: fail closed.
    for token in [None, Some("not-a-token-0123456789")] {
        let e = try_watch(&ctl, token, ("shop", "web-0"), &[("app", "web")])
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{token:?}: {e:?}");
    }
    let text = metrics.encode();
    for line in [
        r#"conduit_controller_policy_watches_total{result="ok"} 2"#,
        r#"conduit_controller_policy_watches_total{result="unknown_pod"} 1"#,
        r#"conduit_controller_policy_watches_total{result="other_namespace"} 1"#,
        r#"conduit_controller_policy_watches_total{result="no_token"} 1"#,
        r#"conduit_controller_policy_watches_total{result="token_rejected"} 1"#,
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
    ctl.shutdown().await.unwrap();
}

fn pod(name: &str, uid: &str, sa: &str, app: &str) -> k8s_openapi::api::core::v1::Pod {
    k8s_openapi::api::core::v1::Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            uid: Some(uid.into()),
            labels: Some([("app".to_string(), app.to_string())].into()),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::PodSpec {
            service_account_name: Some(sa.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn kubernetes_a_pod_cannot_watch_another_pods_policy() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(&pod("web-0", "uid-web-0", "web", "web"));
    fake.apply(&pod("db-0", "uid-db-0", "db", "db"));
    let sa = |name| service_account_user("shop", name);
    fake.add_pod_token(
        WEB_TOKEN,
        &sa("web"),
        &[IDENTITY_AUDIENCE],
        "web-0",
        "uid-web-0",
    );
    fake.add_pod_token(
        DB_TOKEN,
        &sa("db"),
        &[IDENTITY_AUDIENCE],
        "db-0",
        "uid-db-0",
    );
    // Not bound to a pod; bound to a pod of another service account.
    fake.add_token("unbound-token-0123456789", &sa("web"), &[IDENTITY_AUDIENCE]);
    fake.add_pod_token(
        "stolen-0123456789",
        &sa("db"),
        &[IDENTITY_AUDIENCE],
        "web-0",
        "uid-web-0",
    );
    // Bound to an earlier db-0 (the pod was recreated since).
    fake.add_pod_token(
        "stale-0123456789",
        &sa("db"),
        &[IDENTITY_AUDIENCE],
        "db-0",
        "uid-old",
    );
    let dir = tempfile::tempdir().unwrap();
    let policy = file_policy(dir.path());
    let verifier = TokenReviewVerifier::new(fake.client(), IDENTITY_AUDIENCE);
    let (ctl, _) = serve(dir.path(), policy.resources(), verifier).await;

    // The owner gets it, with the Pod object's labels (it claims none).
    let mut web = try_watch(&ctl, Some(WEB_TOKEN), ("shop", "web-0"), &[])
        .await
        .unwrap();
    assert_eq!(next(&mut web).await.servers.len(), 1);

    neighbour_cannot_read_web_policy(&ctl, DB_TOKEN).await;
    for token in [
        "unbound-token-0123456789",
        "stolen-0123456789",
        "stale-0123456789",
    ] {
        let pod = if token.starts_with("stale") {
            "db-0"
        } else {
            "web-0"
        };
        let e = try_watch(&ctl, Some(token), ("shop", pod), &[("app", "web")])
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{token}: {e:?}");
        println!("{token}: {}", e.message());
    }
    let e = try_watch(&ctl, None, ("shop", "web-0"), &[])
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    ctl.shutdown().await.unwrap();
}
