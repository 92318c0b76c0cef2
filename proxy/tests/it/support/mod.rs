//! Shared test harness: real servers on loopback and a pair of real
//! proxies (outbound -> inbound -> application) wired through discovery.
#![allow(dead_code)]

pub mod apps;
pub mod client;

use conduit_proxy::discovery::{Discover, Endpoint, ServiceConfig, StaticDiscovery};
use conduit_proxy::{Config, Deps, Running};
use conduit_test_support::wait_until_async;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The address the test "applications" dial; discovery maps it to the app.
pub const SERVICE: &str = "10.96.0.1:80";

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "conduit_proxy=debug".into()))
        .with_test_writer()
        .try_init();
}

/// A loopback address where nothing listens, and nothing will while this
/// lives: a socket bound to an ephemeral port without listening
/// (connections to it are refused) and without `SO_REUSEADDR` (no other
/// bind, ephemeral or not, can take the port). Binding a listener and
/// dropping it leaves the port free for the next ephemeral bind: once a
/// proxy's own listener got it, and the test saw another error.
pub struct Refusing {
    _socket: socket2::Socket,
    pub addr: SocketAddr,
}

pub fn refusing() -> Refusing {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a TCP socket");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("binding an ephemeral loopback port");
    let addr = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("the bound address");
    Refusing {
        _socket: socket,
        addr,
    }
}

#[test]
fn a_refusing_address_refuses_and_keeps_its_port() {
    let r = refusing();
    let err = std::net::TcpStream::connect(r.addr).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(
        std::net::TcpListener::bind(r.addr).is_err(),
        "the port stays taken"
    );
}

pub struct Mesh {
    pub outbound: Running,
    pub inbound: Running,
    pub app: SocketAddr,
}

impl Mesh {
    /// Client -> outbound proxy -> (meshed, HTTP/2 between proxies) inbound proxy -> `app`.
    pub async fn start(app: SocketAddr) -> Mesh {
        Self::start_with(app, |_| {}).await
    }

    pub async fn start_with(app: SocketAddr, tweak: impl Fn(&mut Config)) -> Mesh {
        init_tracing();
        let mut cfg = Config::loopback_for_tests();
        tweak(&mut cfg);
        let inbound = conduit_proxy::start(
            cfg.clone(),
            Deps::fixed(&cfg, app, Arc::new(conduit_proxy::app::NoDiscovery)),
        )
        .await
        .expect("inbound proxy starts");
        let inbound_port = inbound.inbound_addrs[0].port();
        let svc: SocketAddr = SERVICE.parse().unwrap();
        let mut ep = Endpoint::plain(app);
        ep.meshed_inbound_port = Some(inbound_port);
        let discovery = StaticDiscovery::from_services(vec![ServiceConfig {
            name: "web.test.svc.cluster.local:80".into(),
            addresses: vec![svc],
            endpoints: vec![ep],
        }])
        .unwrap();
        let outbound =
            conduit_proxy::start(cfg.clone(), Deps::fixed(&cfg, svc, Arc::new(discovery)))
                .await
                .expect("outbound proxy starts");
        Mesh {
            outbound,
            inbound,
            app,
        }
    }

    /// Where the client connects (stands in for the captured connection).
    pub fn entry(&self) -> SocketAddr {
        self.outbound.outbound_addrs[0]
    }
}

/// One proxy only, outbound, forwarding an unknown destination unchanged.
pub async fn plain_outbound(app: SocketAddr, tweak: impl Fn(&mut Config)) -> Running {
    init_tracing();
    let mut cfg = Config::loopback_for_tests();
    tweak(&mut cfg);
    let d: Arc<dyn Discover> = Arc::new(conduit_proxy::app::NoDiscovery);
    conduit_proxy::start(cfg.clone(), Deps::fixed(&cfg, app, d))
        .await
        .expect("proxy starts")
}

/// One proxy only, inbound, as if sk_lookup had steered a connection for `app`'s port.
pub async fn transparent_inbound(app: SocketAddr, tweak: impl Fn(&mut Config)) -> Running {
    init_tracing();
    let mut cfg = Config::loopback_for_tests();
    tweak(&mut cfg);
    let mut deps = Deps::fixed(&cfg, app, Arc::new(conduit_proxy::app::NoDiscovery));
    deps.inbound_orig_dst = Arc::new(conduit_proxy::orig_dst::Fixed(app));
    conduit_proxy::start(cfg, deps).await.expect("proxy starts")
}

/// GETs the admin server's /metrics text.
pub async fn metrics(p: &Running) -> String {
    get_text(p.admin_addr, "/metrics").await.1
}

/// A plain HTTP/1 GET with a raw socket; returns (status, body).
pub async fn get_text(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

pub use conduit_test_support::metrics::{assert_sample, sample};

/// Reads `s` until the proxy closes it (at most 10 s): what it sent first,
/// and how long the close took.
pub async fn read_until_closed(s: &mut tokio::net::TcpStream) -> (Vec<u8>, std::time::Duration) {
    use tokio::io::AsyncReadExt;
    let start = std::time::Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the proxy closes the connection")
        .unwrap();
    (out, start.elapsed())
}

/// Waits until `p` counts `closed` outbound connections closed.
pub async fn outbound_closed(what: &str, p: &Running, closed: f64) {
    eventually(what, || async {
        sample(&metrics(p).await, "conduit_tcp_close_total", &["outbound"]) == closed
    })
    .await
}

/// Waits (test-support's `wait_until_async`, at most 10 s) until `f`
/// returns true; panics naming `what` on timeout.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_until_async(what, Duration::from_secs(10), || {
        let check = f();
        async move {
            anyhow::ensure!(check.await, "still false");
            Ok(())
        }
    })
    .await
    .unwrap();
}
