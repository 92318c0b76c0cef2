//! Identity fails closed (loopback): with the controller unreachable, a new
//! destination inside the cluster's networks is refused (reset, logged,
//! `conduit_outbound_refused_total{reason="discovery_unavailable"}`), never
//! sent in plaintext; one outside them goes out unchanged and is counted in
//! `conduit_outbound_plaintext_total{reason="not_in_cluster_networks"}`.
//! The netns version with tcpdump is tests/tests/security_identity.rs.

use crate::support;

use conduit_proxy::discovery::ControllerDiscovery;
use conduit_proxy::{Config, Deps, Running};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use support::{metrics, sample};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An outbound proxy whose every connection is for `dst`, discovering
/// through a controller nobody answers for.
async fn proxy_without_controller(dst: SocketAddr, tweak: impl Fn(&mut Config)) -> Running {
    support::init_tracing();
    // Leaked: the proxy keeps dialling the controller for as long as the
    // test runs.
    let nobody = Box::leak(Box::new(support::refusing())).addr;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{nobody}"))
        .unwrap()
        .connect_lazy();
    let discovery = ControllerDiscovery::new(channel, Duration::from_millis(200));
    let mut cfg = Config::loopback_for_tests();
    cfg.connect_timeout = Duration::from_millis(300);
    tweak(&mut cfg);
    conduit_proxy::start(cfg.clone(), Deps::fixed(&cfg, dst, Arc::new(discovery)))
        .await
        .expect("proxy starts")
}

/// One HTTP/1 GET through the proxy: the status line, or the error.
async fn get(proxy: &Running) -> Result<String, String> {
    let mut s = tokio::net::TcpStream::connect(proxy.outbound_addrs[0])
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).into_owned();
    Ok(text.lines().next().unwrap_or("").to_owned())
}

#[tokio::test]
async fn unreachable_controller_refuses_cluster_destinations_and_counts_direct_ones() {
    // Inside the default cluster networks (the netns mesh's pod range).
    let meshed_pod: SocketAddr = "10.77.0.9:8080".parse().unwrap();
    let inside = proxy_without_controller(meshed_pod, |_| {}).await;
    support::eventually("a refusal for the cluster destination", || async {
        let r = get(&inside).await;
        assert!(!matches!(&r, Ok(l) if l.contains("200")), "{r:?}");
        sample(
            &metrics(&inside).await,
            "conduit_outbound_refused_total",
            &["reason=\"discovery_unavailable\""],
        ) >= 1.0
    })
    .await;
    let m = metrics(&inside).await;
    assert_eq!(
        sample(&m, "conduit_outbound_plaintext_total", &[]),
        0.0,
        "nothing went out in plaintext:\n{m}"
    );
    // Refused at once (a reset), not after a timeout.
    let start = std::time::Instant::now();
    let r = get(&inside).await;
    assert!(
        r.as_ref().is_err() || r.as_ref().is_ok_and(|l| l.is_empty()),
        "{r:?}"
    );
    assert!(
        start.elapsed() < Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );

    // Outside them (loopback here): out unchanged, and counted.
    let app = support::apps::http_server().await;
    let outside = proxy_without_controller(app, |_| {}).await;
    support::eventually("the outside destination answers", || async {
        get(&outside).await.is_ok_and(|l| l.contains("200"))
    })
    .await;
    let m = metrics(&outside).await;
    assert!(
        sample(
            &m,
            "conduit_outbound_plaintext_total",
            &["reason=\"not_in_cluster_networks\""]
        ) >= 1.0,
        "{m}"
    );

    // The networks are configurable: with loopback declared a cluster
    // network, the same destination is refused.
    let declared = proxy_without_controller(app, |c| {
        c.cluster_networks = "127.0.0.0/8".parse().unwrap();
    })
    .await;
    support::eventually("the declared network is refused", || async {
        let r = get(&declared).await;
        assert!(!matches!(&r, Ok(l) if l.contains("200")), "{r:?}");
        sample(
            &metrics(&declared).await,
            "conduit_outbound_refused_total",
            &["reason=\"discovery_unavailable\""],
        ) >= 1.0
    })
    .await;
}
