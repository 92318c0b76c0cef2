//! Inbound connections reach the application at the address they were
//! for, never on loopback unless the port is opted in; and a peer's
//! transport header can never name the proxy's own ports or a skipped
//! port: the connection is closed, logged and counted
//! (`conduit_connections_refused_total{direction="inbound",reason}`), and
//! nothing reaches the named port. Real peer connections to a real proxy on
//! loopback (plaintext peers; the check is the same behind mTLS).

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;
use support::{apps, assert_sample, get_text, metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connects to the inbound port as a peer proxy would, names `port` in the
/// transport header and sends `then`; returns everything read back.
async fn as_peer(inbound: SocketAddr, proto: &str, port: u16, then: &[u8]) -> String {
    let mut s = TcpStream::connect(inbound).await.unwrap();
    s.write_all(format!("CONDUIT/1 {proto} {port}\n").as_bytes())
        .await
        .unwrap();
    // The proxy may close before everything is written: that is the point.
    let _ = s.write_all(then).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the proxy neither answered nor closed");
    String::from_utf8_lossy(&out).into_owned()
}

const SHUTDOWN: &[u8] =
    b"POST /shutdown HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const GET: &[u8] = b"GET /status/200 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn a_peer_cannot_name_the_proxys_own_ports_in_its_transport_header() {
    let app = apps::http_server().await;
    let p = support::plain_outbound(app, |c| c.skip_inbound_ports = vec![9]).await;
    let inbound = p.inbound_addrs[0];
    // Control: naming the application's port reaches it.
    let ok = as_peer(inbound, "http1", app.port(), GET).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");

    let own = [
        ("operator", p.control_addr.port()),
        ("admin", p.admin_addr.port()),
        ("outbound", p.outbound_addrs[0].port()),
        ("inbound", inbound.port()),
    ];
    for (what, port) in own {
        for proto in ["http1", "tcp", "h2"] {
            let out = as_peer(inbound, proto, port, SHUTDOWN).await;
            assert!(
                out.is_empty(),
                "{proto} to the {what} port {port} was answered: {out}"
            );
        }
    }
    let m = metrics(&p).await;
    assert_sample(
        &m,
        "conduit_connections_refused_total",
        &["direction=\"inbound\"", "reason=\"proxy_port\""],
        12.0,
    );
    // The proxy was not shut down, and still serves.
    assert!(!p.stop_token().is_cancelled(), "a peer shut the proxy down");
    assert_eq!(get_text(p.admin_addr, "/ready").await.0, 200);

    let out = as_peer(inbound, "tcp", 9, b"hello").await;
    assert!(out.is_empty(), "{out}");
    assert_sample(
        &metrics(&p).await,
        "conduit_connections_refused_total",
        &["direction=\"inbound\"", "reason=\"skipped_port\""],
        1.0,
    );
}

/// On Linux all of 127.0.0.0/8 is local: 127.0.0.2 stands in for the pod's
/// address, and an application bound to 127.0.0.1 only for a loopback-only
/// service. A connection steered for 127.0.0.2:P must not reach it, unless
/// P is opted in with `--inbound-loopback-ports`.
#[tokio::test]
async fn a_loopback_only_app_is_reached_only_when_its_port_is_opted_in() {
    let app = apps::http_server().await;
    assert_eq!(app.ip().to_string(), "127.0.0.1");
    let pod_dst = SocketAddr::from(([127, 0, 0, 2], app.port()));
    let p = support::transparent_inbound(pod_dst, |_| {}).await;
    let out = exchange(p.inbound_addrs[0], GET).await;
    assert!(
        out.starts_with("HTTP/1.1 502") && out.contains("upstream connect failed"),
        "the loopback-only app was reached: {out}"
    );
    let port = app.port();
    let p =
        support::transparent_inbound(pod_dst, move |c| c.inbound_loopback_ports = vec![port]).await;
    let out = exchange(p.inbound_addrs[0], GET).await;
    assert!(out.starts_with("HTTP/1.1 200"), "opted in: {out}");
}

async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("answered and closed")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}
