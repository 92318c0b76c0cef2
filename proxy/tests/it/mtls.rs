//! Mutual TLS on the proxy's two seams (Connector, Acceptor) with real
//! certificates from a test CA: HTTP and TCP between proxies over mTLS,
//! identities in metrics, a wrong server identity refused, plaintext peers
//! refused by an mTLS inbound port.

use crate::support;

use conduit_proxy::discovery::{Endpoint, ServiceConfig, StaticDiscovery};
use conduit_proxy::{Config, Deps, Running};
use conduit_proxy_tls::SpiffeId;
use conduit_test_support::ca::TestCa;
use std::net::SocketAddr;
use std::sync::Arc;
use support::client::{self, get, text};
use support::{apps, assert_sample, metrics, sample};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";
const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

struct TlsMesh {
    outbound: Running,
    inbound: Running,
}

/// Outbound (identity CLIENT) -> mTLS -> inbound (identity WEB) -> app; discovery
/// tells the outbound proxy to expect `expected`.
async fn tls_mesh(ca: &TestCa, app: SocketAddr, expected: &str) -> TlsMesh {
    support::init_tracing();
    let cfg = Config::loopback_for_tests();
    let web = ca.credentials(&SpiffeId::parse(WEB).unwrap()).unwrap();
    let none = Arc::new(conduit_proxy::app::NoDiscovery);
    let inbound_deps = Deps::fixed(&cfg, app, none).with_mtls(&cfg, web).unwrap();
    let inbound = conduit_proxy::start(cfg.clone(), inbound_deps)
        .await
        .unwrap();

    let svc: SocketAddr = support::SERVICE.parse().unwrap();
    let mut ep = Endpoint::plain(app);
    ep.meshed_inbound_port = Some(inbound.inbound_addrs[0].port());
    ep.identity = Some(expected.parse().unwrap());
    let discovery = StaticDiscovery::from_services(vec![ServiceConfig {
        name: "web:80".into(),
        addresses: vec![svc],
        endpoints: vec![ep],
    }])
    .unwrap();
    let client = ca.credentials(&SpiffeId::parse(CLIENT).unwrap()).unwrap();
    let deps = Deps::fixed(&cfg, svc, Arc::new(discovery))
        .with_mtls(&cfg, client)
        .unwrap();
    let outbound = conduit_proxy::start(cfg, deps).await.unwrap();
    TlsMesh { outbound, inbound }
}

#[tokio::test]
async fn http_and_tcp_over_mtls_with_identities_in_metrics() {
    let ca = TestCa::new("mesh").unwrap();
    let app = apps::http_server().await;
    let mesh = tls_mesh(&ca, app, WEB).await;
    let mut c = client::h1(mesh.outbound.outbound_addrs[0]).await;
    for _ in 0..3 {
        let (parts, _) = text(c.send_request(get("/echo", "web")).await.unwrap()).await;
        assert_eq!(parts.status, 200);
        assert_eq!(parts.headers["x-version"], "HTTP/1.1");
    }
    let m = metrics(&mesh.outbound).await;
    let web_label = format!("peer_identity=\"{WEB}\"");
    assert_sample(
        &m,
        "conduit_response_total",
        &["outbound", &web_label, "2xx"],
        3.0,
    );
    let mi = metrics(&mesh.inbound).await;
    let client_label = format!("peer_identity=\"{CLIENT}\"");
    assert_sample(
        &mi,
        "conduit_response_total",
        &["inbound", &client_label, "2xx"],
        3.0,
    );
    assert!(
        sample(&m, "identity_cert_expiration_timestamp_seconds", &[]) > 1.0e9,
        "{m}"
    );
    assert_eq!(
        support::get_text(mesh.outbound.admin_addr, "/ready")
            .await
            .0,
        200
    );

    // Opaque TCP over mTLS too.
    let echo = apps::tcp_echo_server().await;
    let tcp_mesh = tls_mesh(&ca, echo, WEB).await;
    let mut s = tokio::net::TcpStream::connect(tcp_mesh.outbound.outbound_addrs[0])
        .await
        .unwrap();
    s.write_all(b"\x00secret bytes").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"\x00secret bytesbye");
}

#[tokio::test]
async fn wrong_server_identity_is_refused() {
    let ca = TestCa::new("mesh").unwrap();
    let app = apps::http_server().await;
    let mesh = tls_mesh(
        &ca,
        app,
        "spiffe://cluster.local/ns/default/sa/someone-else",
    )
    .await;
    let mut c = client::h1(mesh.outbound.outbound_addrs[0]).await;
    let (parts, _) = text(c.send_request(get("/echo", "web")).await.unwrap()).await;
    assert_eq!(parts.status, 502);
    let m = metrics(&mesh.outbound).await;
    assert_sample(
        &m,
        "conduit_errors_total",
        &["reason=\"tls_peer_identity\""],
        1.0,
    );
    let mi = metrics(&mesh.inbound).await;
    assert_sample(&mi, "conduit_request_total", &["inbound"], 0.0);
}

#[tokio::test]
async fn plaintext_peer_is_refused_by_an_mtls_inbound() {
    let ca = TestCa::new("mesh").unwrap();
    let app = apps::http_server().await;
    let mesh = tls_mesh(&ca, app, WEB).await;
    let mut s = tokio::net::TcpStream::connect(mesh.inbound.inbound_addrs[0])
        .await
        .unwrap();
    let _ = s
        .write_all(
            format!(
                "CONDUIT/1 http1 {}\nGET /echo HTTP/1.1\r\nHost: x\r\n\r\n",
                app.port()
            )
            .as_bytes(),
        )
        .await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(15), s.read_to_end(&mut out))
        .await
        .expect("closed");
    assert!(
        !String::from_utf8_lossy(&out).contains("200 OK"),
        "plaintext got through"
    );
    let mi = metrics(&mesh.inbound).await;
    assert_sample(&mi, "conduit_errors_total", &["reason=\"accept\""], 1.0);
}
