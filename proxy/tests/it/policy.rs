//! Inbound authorization in the proxy with real mTLS identities: the
//! policy comes from `--inbound-policy-file`. An allowed identity passes,
//! another gets 403 (gRPC: PERMISSION_DENIED) and its request never reaches
//! the application; an opaque connection from it is closed before the
//! application is dialled; a plaintext client is refused under
//! all-authenticated; audit lets through and counts; a rewritten file
//! applies to the next request of an open connection.

use crate::support;

use conduit_policy::DefaultPolicy;
use conduit_proxy::discovery::{Endpoint, ServiceConfig, StaticDiscovery};
use conduit_proxy::{Config, Deps, Running};
use conduit_proxy_tls::SpiffeId;
use conduit_test_support::ca::TestCa;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use support::client::{self, get, text};
use support::{assert_sample, eventually, metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const BACKEND: &str = "spiffe://cluster.local/ns/shop/sa/backend";
const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

const ONLY_FRONTEND: &str = r#"
defaultPolicy: deny
servers:
  - {name: web-http, port: PORT}
authorizations:
  - name: frontend-get-api
    servers: [web-http]
    from: {serviceAccounts: [frontend]}
    http:
      - methods: [GET]
        path: {prefix: /api/}
"#;

/// An application that counts the connections it accepted and the requests
/// it answered (HTTP/1, 200 "app").
struct App {
    addr: SocketAddr,
    conns: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

async fn app() -> App {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (conns, requests) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (c, r) = (conns.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    r.fetch_add(1, Ordering::SeqCst);
                    let mut rsp = http::Response::new(Full::new(bytes::Bytes::from("app")));
                    if let Some(v) = req.headers().get("x-added") {
                        rsp.headers_mut().insert("x-saw-added", v.clone());
                    }
                    async move { Ok::<_, std::convert::Infallible>(rsp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    App {
        addr,
        conns,
        requests,
    }
}

fn write_policy(path: &Path, text: &str, port: u16) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text.replace("PORT", &port.to_string())).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// The receiving proxy (identity WEB, policy from `file`) in front of `app`.
async fn server_proxy(
    ca: &TestCa,
    app: SocketAddr,
    file: &Path,
    default: DefaultPolicy,
) -> Running {
    support::init_tracing();
    let mut cfg = Config::loopback_for_tests();
    cfg.inbound_policy = default;
    cfg.pod_namespace = "shop".into();
    cfg.inbound_policy_file = Some(file.into());
    cfg.discovery_reload = std::time::Duration::from_millis(50);
    let web = ca.credentials(&SpiffeId::parse(WEB).unwrap()).unwrap();
    let deps = Deps::fixed(&cfg, app, Arc::new(conduit_proxy::app::NoDiscovery))
        .with_mtls(&cfg, web)
        .unwrap();
    conduit_proxy::start(cfg, deps).await.unwrap()
}

/// A client-side proxy with `identity`, sending `app`'s traffic to `server`.
async fn client_proxy(ca: &TestCa, server: &Running, app: SocketAddr, identity: &str) -> Running {
    let cfg = Config::loopback_for_tests();
    let svc: SocketAddr = support::SERVICE.parse().unwrap();
    let mut ep = Endpoint::plain(app);
    ep.meshed_inbound_port = Some(server.inbound_addrs[0].port());
    ep.identity = Some(WEB.parse().unwrap());
    let discovery = StaticDiscovery::from_services(vec![ServiceConfig {
        name: "web:80".into(),
        addresses: vec![svc],
        endpoints: vec![ep],
    }])
    .unwrap();
    let creds = ca.credentials(&SpiffeId::parse(identity).unwrap()).unwrap();
    let deps = Deps::fixed(&cfg, svc, Arc::new(discovery))
        .with_mtls(&cfg, creds)
        .unwrap();
    conduit_proxy::start(cfg, deps).await.unwrap()
}

async fn status(c: &mut hyper::client::conn::http1::SendRequest<client::Body>, path: &str) -> u16 {
    let (parts, _) = text(c.send_request(get(path, "web")).await.unwrap()).await;
    parts.status.as_u16()
}

#[tokio::test]
async fn only_frontend_may_get_api_others_get_403_and_never_reach_the_app() {
    let ca = TestCa::new("mesh").unwrap();
    let app = app().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    write_policy(&file, ONLY_FRONTEND, app.addr.port());
    let server = server_proxy(&ca, app.addr, &file, DefaultPolicy::AllUnauthenticated).await;
    let fe = client_proxy(&ca, &server, app.addr, FRONTEND).await;
    let be = client_proxy(&ca, &server, app.addr, BACKEND).await;

    let mut c = client::h1(fe.outbound_addrs[0]).await;
    assert_eq!(status(&mut c, "/api/users").await, 200);
    assert_eq!(app.requests.load(Ordering::SeqCst), 1);
    for path in ["/admin", "/api/../admin", "/%61pi/users"] {
        assert_eq!(status(&mut c, path).await, 403, "{path}");
    }
    let post = http::Request::post("/api/users")
        .header("host", "web")
        .body(client::body("x"))
        .unwrap();
    assert_eq!(c.send_request(post).await.unwrap().status(), 403);

    let mut b = client::h1(be.outbound_addrs[0]).await;
    let (parts, body) = text(b.send_request(get("/api/users", "web")).await.unwrap()).await;
    assert_eq!(parts.status, 403);
    assert!(body.contains("forbidden by inbound policy"), "{body}");
    // None of the refused requests reached the application.
    assert_eq!(app.requests.load(Ordering::SeqCst), 1);

    let m = metrics(&server).await;
    let check = |r: &str, d: &str, n: f64| {
        let (r, d) = (format!("rule=\"{r}\""), format!("decision=\"{d}\""));
        assert_sample(
            &m,
            "conduit_inbound_authz_total",
            &["server=\"web-http\"", &r, &d],
            n,
        );
    };
    check("frontend-get-api", "allow", 1.0);
    check("default", "deny", 3.0);
    check("unnormalized_path", "deny", 2.0);
}

#[tokio::test]
async fn grpc_requests_get_permission_denied() {
    let ca = TestCa::new("mesh").unwrap();
    let app = app().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    write_policy(&file, "defaultPolicy: deny\n", app.addr.port());
    let server = server_proxy(&ca, app.addr, &file, DefaultPolicy::AllUnauthenticated).await;
    let fe = client_proxy(&ca, &server, app.addr, FRONTEND).await;
    let mut c = client::h2(fe.outbound_addrs[0]).await;
    let req = http::Request::post("http://web/pkg.Greeter/Hello")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(client::body(&b"\0\0\0\0\0"[..]))
        .unwrap();
    let rsp = c.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.headers()["grpc-status"], "7");
    assert_eq!(app.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn opaque_connection_from_another_identity_is_closed_before_the_app() {
    let ca = TestCa::new("mesh").unwrap();
    let app = app().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    let policy = r#"
defaultPolicy: deny
servers: [{name: db, port: PORT, protocol: opaque}]
authorizations:
  - {name: frontend-db, servers: [db], from: {serviceAccounts: [frontend]}}
"#;
    write_policy(&file, policy, app.addr.port());
    let server = server_proxy(&ca, app.addr, &file, DefaultPolicy::AllUnauthenticated).await;
    let be = client_proxy(&ca, &server, app.addr, BACKEND).await;
    // Non-HTTP bytes: forwarded as opaque TCP between the proxies.
    let mut s = tokio::net::TcpStream::connect(be.outbound_addrs[0])
        .await
        .unwrap();
    s.write_all(b"\x00\x01binary protocol").await.unwrap();
    let mut got = Vec::new();
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the refused connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "no bytes from the app: {got:?}");
    assert_eq!(
        app.conns.load(Ordering::SeqCst),
        0,
        "the app was never dialled"
    );
    let m = metrics(&server).await;
    assert_sample(
        &m,
        "conduit_inbound_authz_total",
        &["server=\"db\"", "rule=\"default\"", "decision=\"deny\""],
        1.0,
    );

    // The allowed identity gets through to the app.
    let fe = client_proxy(&ca, &server, app.addr, FRONTEND).await;
    let mut s = tokio::net::TcpStream::connect(fe.outbound_addrs[0])
        .await
        .unwrap();
    s.write_all(b"\x00\x01binary protocol").await.unwrap();
    eventually("the app accepts the allowed connection", || {
        let conns = app.conns.clone();
        async move { conns.load(Ordering::SeqCst) == 1 }
    })
    .await;
}

#[tokio::test]
async fn plaintext_client_refused_under_all_authenticated() {
    let app = app().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, "").unwrap();
    // A non-meshed client whose connection sk_lookup steered to the proxy.
    let proxy = support::transparent_inbound(app.addr, |c| {
        c.inbound_policy = DefaultPolicy::AllAuthenticated;
    })
    .await;
    let mut c = client::h1(proxy.inbound_addrs[0]).await;
    assert_eq!(status(&mut c, "/").await, 403);
    assert_eq!(app.requests.load(Ordering::SeqCst), 0);
    // Opaque bytes: closed, the app never dialled.
    let mut s = tokio::net::TcpStream::connect(proxy.inbound_addrs[0])
        .await
        .unwrap();
    s.write_all(b"\x00\x01binary").await.unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got).await;
    assert!(got.is_empty());
    assert_eq!(app.conns.load(Ordering::SeqCst), 0);

    // The same client under all-unauthenticated (the built-in default) passes.
    let open = support::transparent_inbound(app.addr, |_| {}).await;
    let mut c = client::h1(open.inbound_addrs[0]).await;
    assert_eq!(status(&mut c, "/").await, 200);
}

#[tokio::test]
async fn audit_lets_through_and_counts() {
    let ca = TestCa::new("mesh").unwrap();
    let app = app().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    write_policy(
        &file,
        &ONLY_FRONTEND.replace("defaultPolicy: deny", "defaultPolicy: audit"),
        app.addr.port(),
    );
    let server = server_proxy(&ca, app.addr, &file, DefaultPolicy::Deny).await;
    let be = client_proxy(&ca, &server, app.addr, BACKEND).await;
    let mut b = client::h1(be.outbound_addrs[0]).await;
    assert_eq!(status(&mut b, "/api/users").await, 200);
    assert_eq!(status(&mut b, "/other").await, 200);
    assert_eq!(app.requests.load(Ordering::SeqCst), 2);
    let m = metrics(&server).await;
    assert_sample(
        &m,
        "conduit_inbound_authz_total",
        &[
            "server=\"web-http\"",
            "rule=\"default\"",
            "decision=\"audit\"",
        ],
        2.0,
    );
}

#[tokio::test]
async fn a_policy_change_applies_to_the_next_request_of_an_open_connection() {
    let ca = TestCa::new("mesh").unwrap();
    let app = app().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    write_policy(&file, ONLY_FRONTEND, app.addr.port());
    let server = server_proxy(&ca, app.addr, &file, DefaultPolicy::AllUnauthenticated).await;
    let fe = client_proxy(&ca, &server, app.addr, FRONTEND).await;
    let mut c = client::h1(fe.outbound_addrs[0]).await;
    assert_eq!(status(&mut c, "/api/users").await, 200);
    // Now only backend may call.
    write_policy(
        &file,
        &ONLY_FRONTEND.replace("[frontend]", "[backend]"),
        app.addr.port(),
    );
    wait_status(&mut c, "/api/users", 403).await;
    // A bad file keeps the policy in force.
    std::fs::write(&file, "servers: [{name: x, port: nope}]").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(status(&mut c, "/api/users").await, 403);
}

/// A real controller serving the policy file `policy` (and an empty discovery file).
async fn controller(dir: &Path, policy: &Path) -> conduit_controller::server::RunningController {
    use conduit_controller::file::{FileBackend, Settings};
    use conduit_controller::identity::{Certifier, Issuer, TokenFileVerifier};
    use conduit_controller::server::{self, ServerConfig};
    use std::time::{Duration, SystemTime};
    let discovery = dir.join("discovery.yaml");
    std::fs::write(&discovery, "").unwrap();
    // The server proxy's token: it may watch pod web-0's policy only.
    let tokens = dir.join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "tokens: [{{token: {WEB_TOKEN}, namespace: shop, serviceAccount: web, pods: {{web-0: {{app: web}}}}}}]\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("web-token"), WEB_TOKEN).unwrap();
    let metrics = Arc::new(conduit_controller::metrics::Metrics::new());
    let settings = Settings {
        trust_domain: "cluster.local".into(),
        cluster_domain: "cluster.local".into(),
    };
    let backend =
        FileBackend::start(&discovery, settings, Duration::from_millis(50), None).unwrap();
    let issuer = Issuer::generate(
        "cluster.local",
        SystemTime::now(),
        Duration::from_secs(86400),
    )
    .unwrap();
    let certifier = Arc::new(Certifier::new(
        issuer,
        TokenFileVerifier::load(&tokens).unwrap(),
        "cluster.local".parse().unwrap(),
        Duration::from_secs(3600),
    ));
    let td = conduit_proxy_tls::TrustDomain::new("cluster.local").unwrap();
    let resources = conduit_controller::policy::file::PolicyFile::start(
        policy,
        Some(td),
        Duration::from_millis(50),
    )
    .unwrap()
    .resources();
    server::start_with_policy(
        ServerConfig {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            backend,
            cluster_domain: "cluster.local".into(),
            certifier,
            metrics,
            grpc_tls: None,
        },
        resources,
    )
    .await
    .unwrap()
}

const WEB_TOKEN: &str = "web-0-token-0123456789abcdef";

/// The receiving proxy (pod shop/web-0) following `controller_addr` for
/// its policy, showing the token in `token_dir` (written by [`controller`]).
async fn server_proxy_following(
    ca: &TestCa,
    app: SocketAddr,
    controller_addr: SocketAddr,
    token_dir: &Path,
) -> Running {
    support::init_tracing();
    let mut cfg = Config::loopback_for_tests();
    cfg.inbound_policy = DefaultPolicy::Deny;
    cfg.pod_namespace = "shop".into();
    cfg.pod_name = "web-0".into();
    cfg.pod_labels = "app=web".into();
    cfg.identity_token_file = Some(token_dir.join("web-token"));
    let web = ca.credentials(&SpiffeId::parse(WEB).unwrap()).unwrap();
    let mut deps = Deps::fixed(&cfg, app, Arc::new(conduit_proxy::app::NoDiscovery))
        .with_mtls(&cfg, web)
        .unwrap();
    deps.controller = Some(
        tonic::transport::Endpoint::from_shared(format!("http://{controller_addr}"))
            .unwrap()
            .connect_lazy(),
    );
    conduit_proxy::start(cfg, deps).await.unwrap()
}

const SHOP_POLICY: &str = r#"
defaults:
  - {name: shop, namespace: shop, defaultPolicy: deny}
servers:
  - {name: web-http, namespace: shop, podSelector: {matchLabels: {app: web}}, port: PORT, protocol: http}
authorizations:
  - name: frontend-get-api
    namespace: shop
    servers: [web-http]
    from: {serviceAccounts: [frontend]}
    http: [{methods: [GET], path: {prefix: /api/}}]
"#;

async fn wait_status(
    c: &mut hyper::client::conn::http1::SendRequest<client::Body>,
    path: &str,
    want: u16,
) {
    // Each attempt borrows the one connection in turn.
    let c = tokio::sync::Mutex::new(c);
    conduit_test_support::wait_until_async(
        &format!("{path} answering {want}"),
        std::time::Duration::from_secs(10),
        || async {
            let s = status(*c.lock().await, path).await;
            anyhow::ensure!(s == want, "still {s}");
            Ok(())
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn policy_from_the_controller_changes_live_and_outlives_the_controller() {
    let ca = TestCa::new("mesh").unwrap();
    let app = app().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    // Nothing for this pod yet: everything open.
    write_policy(
        &file,
        "defaults: [{name: shop, namespace: shop, defaultPolicy: all-unauthenticated}]\n",
        1,
    );
    let ctl = controller(dir.path(), &file).await;
    let server = server_proxy_following(&ca, app.addr, ctl.grpc_addr, dir.path()).await;
    let be = client_proxy(&ca, &server, app.addr, BACKEND).await;
    let fe = client_proxy(&ca, &server, app.addr, FRONTEND).await;
    let mut b = client::h1(be.outbound_addrs[0]).await;
    let mut f = client::h1(fe.outbound_addrs[0]).await;
    // The configured default (deny) holds until the controller's policy arrives.
    wait_status(&mut b, "/api/users", 200).await;

    // Only frontend now: the open connections' next requests follow.
    write_policy(&file, SHOP_POLICY, app.addr.port());
    wait_status(&mut b, "/api/users", 403).await;
    assert_eq!(status(&mut f, "/api/users").await, 200);
    assert_eq!(status(&mut f, "/other").await, 403);

    // A bad file keeps the last good policy.
    std::fs::write(&file, "servers: [{name: x, namespace: shop, port: 0}]").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(status(&mut f, "/api/users").await, 200);
    assert_eq!(status(&mut b, "/api/users").await, 403);

    // The controller goes away: the proxy keeps the last policy.
    ctl.shutdown().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(status(&mut f, "/api/users").await, 200);
    assert_eq!(status(&mut b, "/api/users").await, 403);
    let mut b2 = client::h1(be.outbound_addrs[0]).await;
    assert_eq!(status(&mut b2, "/api/users").await, 403);
}

#[tokio::test]
async fn before_any_policy_the_configured_default_applies() {
    let ca = TestCa::new("mesh").unwrap();
    let app = app().await;
    // A controller address where nobody answers.
    let refusing = support::refusing();
    let closed = refusing.addr;
    let dir = tempfile::tempdir().unwrap();
    let server = server_proxy_following(&ca, app.addr, closed, dir.path()).await;
    let fe = client_proxy(&ca, &server, app.addr, FRONTEND).await;
    let mut f = client::h1(fe.outbound_addrs[0]).await;
    assert_eq!(status(&mut f, "/api/users").await, 403);
    assert_eq!(app.requests.load(Ordering::SeqCst), 0);
}

mod plugin {
    //! A real gRPC authorization plugin (the `conduit.authz.v1` contract):
    //! allows requests with `x-allow: yes` and adds `x-added: by-plugin`,
    //! denies the rest with 401 and a body; `x-slow` makes it answer late.
    use conduit_controller_api::authz::v1 as pb;
    use std::net::SocketAddr;
    use std::time::Duration;

    pub struct Example;

    #[tonic::async_trait]
    impl pb::authorization_plugin_server::AuthorizationPlugin for Example {
        async fn check(
            &self,
            req: tonic::Request<pb::CheckRequest>,
        ) -> Result<tonic::Response<pb::CheckResponse>, tonic::Status> {
            let r = req.into_inner();
            if r.headers.contains_key("x-slow") {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            let decision = if r.headers.get("x-allow").map(String::as_str) == Some("yes") {
                assert!(r.tls, "the plugin is told the request came over mTLS");
                assert!(
                    r.peer_identity.ends_with("/sa/frontend"),
                    "{}",
                    r.peer_identity
                );
                assert!(
                    !r.headers.contains_key("x-secret"),
                    "only selected headers are sent"
                );
                pb::check_response::Decision::Allow(pb::Allow {
                    add_headers: vec![pb::Header {
                        name: "x-added".into(),
                        value: "by-plugin".into(),
                    }],
                    remove_headers: vec!["x-allow".into()],
                })
            } else {
                pb::check_response::Decision::Deny(pb::Deny {
                    status: 401,
                    body: format!("no x-allow for {} {}", r.method, r.path),
                    headers: vec![],
                })
            };
            Ok(tonic::Response::new(pb::CheckResponse {
                decision: Some(decision),
            }))
        }
    }

    /// [`Example`] served over TLS as `identity` (a certificate from `ca`),
    /// requiring a client certificate from `ca`; the identities of the
    /// clients whose requests it answered.
    pub async fn start_tls(
        ca: &conduit_proxy_tls::testing::TestCa,
        identity: &str,
    ) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use std::sync::{Arc, Mutex};
        let now = std::time::SystemTime::now();
        let hour = Duration::from_secs(3600);
        let (chain, key) = ca.issue(identity, now - hour, now + hour).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.certificate().clone()).unwrap();
        let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(clients)
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let svc = pb::authorization_plugin_server::AuthorizationPluginServer::new(Example);
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    return;
                };
                let (acceptor, svc, record) = (acceptor.clone(), svc.clone(), record.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let client = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| conduit_proxy_tls::certificate_identity(c).ok())
                        .map(|id| id.to_string())
                        .unwrap_or_default();
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            record.lock().unwrap().push(client.clone());
                            let mut svc = svc.clone();
                            async move {
                                let req = req.map(tonic::body::Body::new);
                                tower_service::Service::call(&mut svc, req).await
                            }
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
                });
            }
        });
        (addr, seen)
    }

    pub async fn start() -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(
                    pb::authorization_plugin_server::AuthorizationPluginServer::new(Example),
                )
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
        addr
    }
}

fn plugin_policy(plugin: SocketAddr, failure: &str) -> String {
    plugin_policy_as(plugin, failure, None)
}

/// [`plugin_policy`], the plugin meshed as `identity` when given.
fn plugin_policy_as(plugin: SocketAddr, failure: &str, identity: Option<&str>) -> String {
    let identity = identity.map_or(String::new(), |i| format!(", identity: \"{i}\""));
    format!(
        r#"
defaultPolicy: deny
servers:
  - {{name: web-http, port: PORT}}
plugins:
  - {{name: example, address: "{plugin}", timeoutMs: 300, failure: {failure}, headers: [x-allow, x-slow]{identity}}}
authorizations:
  - name: via-plugin
    servers: [web-http]
    from: {{serviceAccounts: [frontend]}}
    http: [{{path: {{prefix: /api/}}}}]
    plugin: example
"#
    )
}

async fn send(
    c: &mut hyper::client::conn::http1::SendRequest<client::Body>,
    headers: &[(&'static str, &str)],
) -> (http::response::Parts, String) {
    let mut req = get("/api/items", "web");
    for (k, v) in headers {
        req.headers_mut()
            .insert(http::HeaderName::from_static(k), v.parse().unwrap());
    }
    text(c.send_request(req).await.unwrap()).await
}

#[tokio::test]
async fn plugin_allows_denies_and_adds_a_header() {
    let ca = TestCa::new("mesh").unwrap();
    let app = app().await;
    let plugin_addr = plugin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    write_policy(
        &file,
        &plugin_policy(plugin_addr, "closed"),
        app.addr.port(),
    );
    let server = server_proxy(&ca, app.addr, &file, DefaultPolicy::AllUnauthenticated).await;
    let fe = client_proxy(&ca, &server, app.addr, FRONTEND).await;
    let mut c = client::h1(fe.outbound_addrs[0]).await;
    let (parts, body) = send(&mut c, &[("x-allow", "yes"), ("x-secret", "s")]).await;
    assert_eq!(parts.status, 200, "{body}");
    assert_eq!(parts.headers["x-saw-added"], "by-plugin");
    let (parts, body) = send(&mut c, &[]).await;
    assert_eq!(parts.status, 401);
    assert_eq!(body, "no x-allow for GET /api/items");
    assert_eq!(app.requests.load(Ordering::SeqCst), 1);
    // Requests the rule does not send to the plugin: the default.
    let (parts, _) = text(c.send_request(get("/other", "web")).await.unwrap()).await;
    assert_eq!(parts.status, 403);
    let m = metrics(&server).await;
    assert_sample(
        &m,
        "conduit_inbound_authz_total",
        &["rule=\"via-plugin\"", "decision=\"allow\""],
        1.0,
    );
    assert_sample(
        &m,
        "conduit_inbound_authz_total",
        &["rule=\"via-plugin\"", "decision=\"deny\""],
        1.0,
    );
}

#[tokio::test]
async fn plugin_down_or_slow_follows_its_failure_mode_within_its_timeout() {
    let ca = TestCa::new("mesh").unwrap();
    let app = app().await;
    let plugin_addr = plugin::start().await;
    let refusing = support::refusing();
    let down = refusing.addr;
    let dir = tempfile::tempdir().unwrap();
    for (addr, headers, failure, want) in [
        (down, &[][..], "closed", 403),
        (down, &[][..], "open", 200),
        (plugin_addr, &[("x-slow", "1")][..], "closed", 403),
        (plugin_addr, &[("x-slow", "1")][..], "open", 200),
    ] {
        let file = dir.path().join(format!("{failure}-{}.yaml", addr.port()));
        write_policy(&file, &plugin_policy(addr, failure), app.addr.port());
        let server = server_proxy(&ca, app.addr, &file, DefaultPolicy::AllUnauthenticated).await;
        let fe = client_proxy(&ca, &server, app.addr, FRONTEND).await;
        let mut c = client::h1(fe.outbound_addrs[0]).await;
        let start = std::time::Instant::now();
        let (parts, body) = send(&mut c, headers).await;
        let took = start.elapsed();
        assert_eq!(
            parts.status, want,
            "{addr} {headers:?} fail-{failure}: {body}"
        );
        assert!(
            took < std::time::Duration::from_secs(2),
            "{addr} {headers:?}: took {took:?} (timeout 300 ms)"
        );
    }
}

const PLUGIN: &str = "spiffe://cluster.local/ns/shop/sa/authz-plugin";

#[tokio::test]
async fn a_meshed_plugin_is_reached_over_mtls_and_a_wrong_identity_is_refused() {
    let ca = TestCa::new("mesh").unwrap();
    let app = app().await;
    let (plugin_addr, seen) = plugin::start_tls(&ca, PLUGIN).await;
    let dir = tempfile::tempdir().unwrap();
    let impostor = "spiffe://cluster.local/ns/shop/sa/someone-else";
    // (identity the policy requires, failure mode, status, plugin asked)
    for (required, failure, want, asked) in [
        (PLUGIN, "closed", 200, true),
        (impostor, "closed", 403, false),
        (impostor, "open", 200, false),
    ] {
        let file = dir
            .path()
            .join(format!("{failure}-{}.yaml", required.len()));
        write_policy(
            &file,
            &plugin_policy_as(plugin_addr, failure, Some(required)),
            app.addr.port(),
        );
        let server = server_proxy(&ca, app.addr, &file, DefaultPolicy::AllUnauthenticated).await;
        let fe = client_proxy(&ca, &server, app.addr, FRONTEND).await;
        let mut c = client::h1(fe.outbound_addrs[0]).await;
        let before = seen.lock().unwrap().len();
        let (parts, body) = send(&mut c, &[("x-allow", "yes")]).await;
        assert_eq!(parts.status, want, "{required} fail-{failure}: {body}");
        // Decorated only when the plugin answered.
        assert_eq!(
            parts.headers.contains_key("x-saw-added"),
            asked,
            "{required}"
        );
        let calls = seen.lock().unwrap()[before..].to_vec();
        if asked {
            // The proxy presented its own identity to the plugin.
            assert_eq!(calls, [WEB], "{required}");
        } else {
            assert!(
                calls.is_empty(),
                "{required}: the plugin was asked: {calls:?}"
            );
            let m = metrics(&server).await;
            let reason = format!("reason=\"authz_plugin_failed_{failure}\"");
            assert_sample(&m, "conduit_errors_total", &[reason.as_str()], 1.0);
        }
    }
    // Plaintext to a meshed plugin's TLS port gets nowhere either.
    let file = dir.path().join("plaintext.yaml");
    write_policy(
        &file,
        &plugin_policy(plugin_addr, "closed"),
        app.addr.port(),
    );
    let server = server_proxy(&ca, app.addr, &file, DefaultPolicy::AllUnauthenticated).await;
    let fe = client_proxy(&ca, &server, app.addr, FRONTEND).await;
    let mut c = client::h1(fe.outbound_addrs[0]).await;
    let (parts, _) = send(&mut c, &[("x-allow", "yes")]).await;
    assert_eq!(parts.status, 403);
}
