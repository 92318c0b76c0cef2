//! `ControllerDiscovery` against a real conduit-controller (file backend,
//! gRPC on loopback): endpoints and identities arrive, follow file edits,
//! unknown targets forward unchanged, and a target an unreachable
//! controller never answered about is reported as unanswered.

use conduit_controller::file::{FileBackend, Settings};
use conduit_controller::identity::{Certifier, Issuer, TokenFileVerifier};
use conduit_controller::metrics::Metrics;
use conduit_controller::server::{self, ServerConfig};
use conduit_proxy::balance::{BalanceConfig, Balancers, Lookup};
use conduit_proxy::discovery::ControllerDiscovery;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

fn service(ips: &[&str]) -> String {
    let mut s = String::from(
        "services:\n  - name: web\n    namespace: default\n    clusterIP: 10.96.0.10\n    ports:\n      \
         - port: 80\n        targetPort: 8080\n    endpoints:\n",
    );
    for ip in ips {
        s.push_str(&format!(
            "      - ip: {ip}\n        serviceAccount: web\n        meshed: true\n"
        ));
    }
    s
}

/// Waits at most 10 s until `cond` holds.
async fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    crate::balance_util::wait_until(what, Duration::from_secs(10), cond).await;
}

#[tokio::test]
async fn follows_the_real_controller() {
    let dir = tempfile::tempdir().unwrap();
    let discovery = dir.path().join("discovery.yaml");
    std::fs::write(&discovery, service(&["10.0.0.1"])).unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(&tokens, "tokens: []\n").unwrap();
    let settings = Settings {
        trust_domain: "test.local".into(),
        cluster_domain: "cluster.local".into(),
    };
    let metrics = Arc::new(Metrics::new());
    let backend = FileBackend::start(
        &discovery,
        settings,
        Duration::from_millis(50),
        Some(metrics.clone()),
    )
    .unwrap();
    let issuer =
        Issuer::generate("test.local", SystemTime::now(), Duration::from_secs(86400)).unwrap();
    let certifier = Arc::new(Certifier::new(
        issuer,
        TokenFileVerifier::load(&tokens).unwrap(),
        "test.local".parse().unwrap(),
        Duration::from_secs(3600),
    ));
    let running = server::start(ServerConfig {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        backend: backend.clone(),
        cluster_domain: "cluster.local".into(),
        certifier,
        metrics,
        grpc_tls: None,
    })
    .await
    .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", running.grpc_addr))
        .unwrap()
        .connect_lazy();
    let d = Arc::new(ControllerDiscovery::new(channel, Duration::from_secs(5)).with_capacity(100));
    let balancers = Balancers::with_limits(
        d.clone(),
        BalanceConfig::default(),
        100,
        Duration::from_millis(300),
    );

    let svc: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let b = balancers.get(svc).expect("a service is known (or pending)");
    assert!(b.ready(Duration::from_secs(10)).await, "endpoints arrive");
    let pick = b.pick().unwrap();
    assert_eq!(pick.addr(), "10.0.0.1:8080".parse().unwrap());
    assert_eq!(
        pick.endpoint().identity.as_deref(),
        Some("spiffe://test.local/ns/default/sa/web")
    );
    assert_eq!(pick.endpoint().meshed_inbound_port, Some(4143));
    assert_eq!(&*b.name(), "web.default.svc.cluster.local:80");
    drop(pick);

    // Endpoint changes reach the same balancer.
    let tmp = discovery.with_extension("tmp");
    std::fs::write(&tmp, service(&["10.0.0.2", "10.0.0.3"])).unwrap();
    std::fs::rename(&tmp, &discovery).unwrap();
    wait_until("the new endpoints are balanced over", || {
        b.snapshot().len() == 2
    })
    .await;

    // A target the controller does not know: forwarded unchanged.
    let unknown: SocketAddr = "10.96.0.99:80".parse().unwrap();
    wait_until("the controller says it does not exist", || {
        matches!(balancers.lookup(unknown), Lookup::Unknown)
    })
    .await;
    assert!(balancers.get(unknown).is_none());
    // Both followed by the one cache, one stream each.
    assert_eq!(balancers.len(), 2);
    assert_eq!(d.len(), 2);

    // A destination nobody asks for is forgotten (its stream ends); the
    // one asked for again and again stays.
    wait_until("the idle unknown target is forgotten", || {
        let _ = balancers.lookup(svc);
        balancers.len() == 1 && d.len() == 1
    })
    .await;
    assert!(matches!(balancers.lookup(svc), Lookup::Balanced(_)));
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn unreachable_controller_leaves_new_targets_unanswered() {
    let channel = unreachable_controller();
    let d = ControllerDiscovery::new(channel, Duration::from_millis(200));
    let balancers = Balancers::new(Arc::new(d), BalanceConfig::default());
    let svc: SocketAddr = "10.96.0.10:80".parse().unwrap();
    assert!(
        matches!(balancers.lookup(svc), Lookup::Balanced(_)),
        "pending at first"
    );
    // Not "unknown" (that would send it unchanged, in plaintext): the
    // outbound path decides by the cluster networks.
    wait_until("the target is unanswered", || {
        matches!(balancers.lookup(svc), Lookup::Unanswered)
    })
    .await;
    // The controller is now known to be away: a new target does not wait.
    let other: SocketAddr = "10.96.0.11:80".parse().unwrap();
    assert!(matches!(balancers.lookup(other), Lookup::Unanswered));
}

#[tokio::test]
async fn followed_destinations_are_bounded() {
    // The streams stay pending, which is enough to count what is followed.
    let channel = unreachable_controller();
    let d = ControllerDiscovery::new(channel, Duration::from_secs(5)).with_capacity(3);
    let balancers = Balancers::new(Arc::new(d), BalanceConfig::default());
    let target = |i: u8| SocketAddr::from(([10, 96, 1, i], 80));
    for i in 0..3 {
        let _ = balancers.lookup(target(i));
    }
    assert_eq!(balancers.len(), 3);
    for i in 3..50 {
        let _ = balancers.lookup(target(i));
        assert!(balancers.len() <= 3, "never more than the capacity");
    }
}

/// A channel to a controller address where nothing listens.
fn unreachable_controller() -> tonic::transport::Channel {
    // Leaked: the channel dials it for as long as the test runs.
    let port = Box::leak(Box::new(crate::support::refusing())).addr;
    tonic::transport::Endpoint::from_shared(format!("http://{port}"))
        .unwrap()
        .connect_lazy()
}
