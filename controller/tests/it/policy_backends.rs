//! The controller's two policy backends behind `InboundPolicies.Watch`, with
//! a real gRPC client: the YAML file (reloaded, a bad file keeps the last
//! good policy) and the `policy.conduit.io` custom resources read from the
//! fake API server. Also: the CRD manifests are the ones the Rust types
//! generate, and the controller's RBAC lets it read them.

use conduit_controller::file::{FileBackend, Settings};
use conduit_controller::identity::{Certifier, Issuer, TokenFileVerifier};
use conduit_controller::metrics::Metrics;
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

async fn serve(dir: &Path, policy: PolicyResources) -> RunningController {
    let discovery = dir.join("discovery.yaml");
    std::fs::write(&discovery, "").unwrap();
    let tokens = dir.join("tokens.yaml");
    std::fs::write(&tokens, "tokens: []\n").unwrap();
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
        TokenFileVerifier::load(&tokens).unwrap(),
        "cluster.local".into(),
        Duration::from_secs(3600),
    ));
    server::start_with_policy(
        ServerConfig {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            backend,
            cluster_domain: "cluster.local".into(),
            certifier,
            metrics: Arc::new(Metrics::new()),
            grpc_tls: None,
        },
        policy,
    )
    .await
    .unwrap()
}

async fn watch(
    ctl: &RunningController,
    labels: &[(&str, &str)],
) -> tonic::Streaming<pb::InboundPolicy> {
    let mut client = InboundPoliciesClient::connect(format!("http://{}", ctl.grpc_addr))
        .await
        .unwrap();
    client
        .watch(pb::Workload {
            namespace: "shop".into(),
            pod: "web-0".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
        .await
        .unwrap()
        .into_inner()
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
    let td = conduit_proxy_tls::TrustDomain::new("cluster.local").unwrap();
    let policy = conduit_controller::policy::file::PolicyFile::start(
        &file,
        Some(td),
        Duration::from_millis(50),
    )
    .unwrap();
    let ctl = serve(dir.path(), policy.resources()).await;

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
    let mut client = InboundPoliciesClient::connect(format!("http://{}", ctl.grpc_addr))
        .await
        .unwrap();
    let e = client
        .watch(pb::Workload {
            namespace: "Not A Label".into(),
            ..Default::default()
        })
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

    let td = conduit_proxy_tls::TrustDomain::new("cluster.local").unwrap();
    let policy =
        conduit_controller::policy::kubernetes::KubernetesPolicy::start(fake.client(), Some(td));
    let dir = tempfile::tempdir().unwrap();
    let ctl = serve(dir.path(), policy.resources()).await;
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
