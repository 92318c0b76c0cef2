//! Balancing inside the real proxy: a conduit-proxy (in process, outbound
//! listener on loopback, original destination fixed as a captured
//! connection would report it) in front of three real HTTP/1.1 servers
//! found through static discovery. Requests spread; when a server dies no
//! GET is lost (failover and budgeted retries); when it returns it is
//! probed back into rotation, and `conduit_balancer_endpoints` says so.
//! Opaque TCP connections fail over too.

use crate::balance_util;
use crate::support;

use balance_util::{TestServer, client, get, wait_until};
use conduit_proxy::discovery::{Endpoint, ServiceConfig, StaticDiscovery};
use conduit_proxy::{Config, Deps};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const SERVICE: &str = "10.96.0.7:80";

async fn proxy_for(servers: &[&TestServer]) -> conduit_proxy::Running {
    proxy_to(servers.iter().map(|s| s.addr).collect(), false).await
}

/// A proxy whose service (opaque TCP when `opaque`) has these endpoints.
async fn proxy_to(endpoints: Vec<SocketAddr>, opaque: bool) -> conduit_proxy::Running {
    let svc: SocketAddr = SERVICE.parse().unwrap();
    let discovery = StaticDiscovery::from_services(vec![ServiceConfig {
        name: "web.test.svc.cluster.local:80".into(),
        addresses: vec![svc],
        endpoints: endpoints.into_iter().map(Endpoint::plain).collect(),
    }])
    .unwrap();
    let mut cfg = Config::loopback_for_tests();
    cfg.max_attempts = 2;
    if opaque {
        cfg.opaque_ports = vec![svc.port()];
    }
    conduit_proxy::start(cfg.clone(), Deps::fixed(&cfg, svc, Arc::new(discovery)))
        .await
        .expect("proxy starts")
}

/// `n` GETs through the proxy, 8 at a time; returns the statuses.
async fn gets(proxy: SocketAddr, n: usize) -> Vec<Result<u16, String>> {
    let c = client();
    let mut out = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(8) {
        let batch = (chunk * 8..n.min(chunk * 8 + 8)).map(|_| get(&c, proxy));
        out.extend(futures::future::join_all(batch).await);
    }
    out
}

#[tokio::test]
async fn proxy_spreads_fails_over_and_probes_back() {
    let a = TestServer::start(Duration::ZERO, 200).await;
    let b = TestServer::start(Duration::ZERO, 200).await;
    let mut c = TestServer::start(Duration::ZERO, 200).await;
    let proxy = proxy_for(&[&a, &b, &c]).await;
    let entry = proxy.outbound_addrs[0];

    let statuses = gets(entry, 300).await;
    assert!(statuses.iter().all(|s| s == &Ok(200)), "{statuses:?}");
    let hits = [a.hits(), b.hits(), c.hits()];
    assert_eq!(hits.iter().sum::<usize>(), 300);
    assert!(hits.iter().all(|h| *h >= 30), "requests spread: {hits:?}");
    assert_eq!(endpoints(&proxy).await, (3.0, 0.0), "all three in rotation");

    // c dies: its pooled connections close and new ones are refused.
    c.stop().await;
    let before = c.hits();
    let statuses = gets(entry, 300).await;
    assert!(
        statuses.iter().all(|s| s == &Ok(200)),
        "no GET lost when an endpoint dies: {statuses:?}"
    );
    assert_eq!(c.hits(), before);
    assert_eq!(
        endpoints(&proxy).await,
        (2.0, 1.0),
        "the dead endpoint is out of rotation"
    );

    // c returns on the same port: the proxy probes it back.
    c.restart().await;
    let (client, hits) = (client(), c.hits.clone());
    let traffic = tokio::spawn(async move {
        while hits.load(std::sync::atomic::Ordering::SeqCst) < before + 20 {
            let _ = get(&client, entry).await;
        }
    });
    wait_until(
        "the restarted endpoint serves again",
        Duration::from_secs(20),
        || traffic.is_finished(),
    )
    .await;
    support::eventually("all three in rotation again", || async {
        endpoints(&proxy).await == (3.0, 0.0)
    })
    .await;
    proxy.shutdown();
}

/// `conduit_balancer_endpoints` of the service: (available, unavailable).
async fn endpoints(proxy: &conduit_proxy::Running) -> (f64, f64) {
    let m = support::metrics(proxy).await;
    let dst = "dst=\"web.test.svc.cluster.local:80\"";
    let n = |state: &str| {
        support::sample(
            &m,
            "conduit_balancer_endpoints",
            &[dst, &format!("state=\"{state}\"")],
        )
    };
    (n("available"), n("unavailable"))
}

/// A TCP server that answers each connection with `name` and closes it.
async fn tcp_namer(name: &'static str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = s.write_all(name.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn opaque_tcp_connections_fail_over_from_a_dead_endpoint() {
    use tokio::io::AsyncReadExt;
    let refusing = support::refusing();
    let dead = refusing.addr;
    let live = tcp_namer("live").await;
    let proxy = proxy_to(vec![dead, live], true).await;
    for _ in 0..30 {
        let mut s = tokio::net::TcpStream::connect(proxy.outbound_addrs[0])
            .await
            .unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "live", "every connection reaches the live endpoint");
    }
    proxy.shutdown();
}
