//! Opaque TCP through outbound proxy -> inbound proxy -> application:
//! binary data, half-close, server-speaks-first, TLS ClientHello, opaque
//! ports, idle timeout.

use crate::support;

use std::time::Duration;
use support::{Mesh, apps, assert_sample, metrics, sample};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[tokio::test]
async fn opaque_bytes_and_half_close_through_mesh() {
    let app = apps::tcp_echo_server().await;
    let mesh = Mesh::start(app).await;
    let mut c = TcpStream::connect(mesh.entry()).await.unwrap();
    // Binary, not HTTP: detected as opaque at once.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut data = vec![0u8, 1, 2, 0xff];
    data.extend_from_slice(&payload);
    let (mut r, mut w) = c.split();
    let writer = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap(); // half-close: the server then says "bye"
    };
    let mut got = Vec::new();
    let reader = r.read_to_end(&mut got);
    let (_, n) = tokio::join!(writer, reader);
    n.unwrap();
    let mut expected = data.clone();
    expected.extend_from_slice(b"bye");
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "echoed bytes differ");

    // Byte counters: the outbound proxy read exactly what we sent.
    let m = metrics(&mesh.outbound).await;
    assert_eq!(
        sample(&m, "conduit_tcp_read_bytes_total", &["outbound"]),
        data.len() as f64,
        "{m}"
    );
    assert_eq!(
        sample(&m, "conduit_tcp_write_bytes_total", &["outbound"]),
        expected.len() as f64
    );
    assert_eq!(
        sample(
            &m,
            "conduit_protocol_detect_total",
            &["outbound", "protocol=\"opaque\""]
        ),
        1.0
    );
    let mi = metrics(&mesh.inbound).await;
    assert_sample(
        &mi,
        "conduit_protocol_detect_total",
        &["inbound", "protocol=\"peer_tcp\""],
        1.0,
    );
}

async fn smtp_dialog(entry: std::net::SocketAddr) -> Duration {
    let start = std::time::Instant::now();
    let c = TcpStream::connect(entry).await.unwrap();
    let (r, mut w) = c.into_split();
    let mut lines = BufReader::new(r).lines();
    let greeting = lines.next_line().await.unwrap().unwrap();
    let waited = start.elapsed();
    assert_eq!(greeting, "220 mail.test ESMTP ready");
    w.write_all(b"HELO client\r\n").await.unwrap();
    assert_eq!(
        lines.next_line().await.unwrap().unwrap(),
        "250 ok HELO client"
    );
    w.write_all(b"QUIT\r\n").await.unwrap();
    assert_eq!(lines.next_line().await.unwrap().unwrap(), "221 bye");
    waited
}

#[tokio::test]
async fn server_speaks_first_after_the_detect_timeout() {
    let app = apps::greeting_server().await;
    let mesh = Mesh::start_with(app, |c| c.detect_timeout = Duration::from_millis(200)).await;
    let waited = smtp_dialog(mesh.entry()).await;
    assert!(
        waited >= Duration::from_millis(200),
        "greeting arrived before detection gave up: {waited:?}"
    );
    let m = metrics(&mesh.outbound).await;
    assert_sample(
        &m,
        "conduit_protocol_detect_total",
        &["protocol=\"timeout\""],
        1.0,
    );
}

/// A mesh in front of `app` with a 200 ms detection timeout, and a client
/// connection to it that has said nothing for twice that.
async fn silent_client(app: std::net::SocketAddr) -> (Mesh, TcpStream) {
    let mesh = Mesh::start_with(app, |c| c.detect_timeout = Duration::from_millis(200)).await;
    let c = TcpStream::connect(mesh.entry()).await.unwrap();
    // The silence under test, not a wait for something to happen.
    tokio::time::sleep(Duration::from_millis(400)).await;
    (mesh, c)
}

/// An HTTP client's connection opened ahead of its request (a pool's
/// connect that lost the race to an older connection is kept idle) and
/// silent past the detection timeout is served as HTTP once the request
/// comes. Before, it went opaque for its whole life: the request reached
/// the application, but the outbound proxy counted no HTTP request and
/// could neither balance nor retry it.
#[tokio::test]
async fn a_client_silent_past_the_detect_timeout_then_speaking_http_gets_http() {
    let (mesh, mut c) = silent_client(apps::http_server().await).await;
    c.write_all(b"GET /echo HTTP/1.1\r\nHost: web.test\r\n\r\n")
        .await
        .unwrap();
    let mut lines = BufReader::new(c).lines();
    let status = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("an answer")
        .unwrap()
        .unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let m = metrics(&mesh.outbound).await;
    assert_sample(
        &m,
        "conduit_protocol_detect_total",
        &["protocol=\"http1\""],
        1.0,
    );
    assert_sample(
        &m,
        "conduit_protocol_detect_total",
        &["protocol=\"timeout\""],
        0.0,
    );
    assert_sample(&m, "conduit_request_total", &["outbound"], 1.0);
}

/// Silent past the detection timeout, then bytes that are not HTTP: opaque,
/// on a fresh upstream connection, bytes intact.
#[tokio::test]
async fn a_client_silent_past_the_detect_timeout_then_sending_bytes_is_opaque() {
    let (mesh, mut c) = silent_client(apps::tcp_echo_server().await).await;
    let data = [0u8, 1, 2, 0xff, b'\n'];
    c.write_all(&data).await.unwrap();
    let mut back = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut back))
        .await
        .expect("echoed")
        .unwrap();
    assert_eq!(back, data);
    let m = metrics(&mesh.outbound).await;
    assert_sample(
        &m,
        "conduit_protocol_detect_total",
        &["protocol=\"opaque\""],
        1.0,
    );
    assert_sample(
        &m,
        "conduit_protocol_detect_total",
        &["protocol=\"timeout\""],
        0.0,
    );
}

/// Silent both ways after the detection timeout: closed after the opaque
/// idle timeout, never held forever.
#[tokio::test]
async fn a_connection_silent_both_ways_is_closed_after_the_idle_timeout() {
    // One proxy, straight to an application that neither speaks first nor
    // closes an idle connection (a second proxy's own idle timeout would
    // close it from the far side).
    let app = apps::http_server().await;
    let p = support::plain_outbound(app, |c| {
        c.detect_timeout = Duration::from_millis(100);
        c.tcp_idle_timeout = Duration::from_millis(300);
    })
    .await;
    let mut c = TcpStream::connect(p.outbound_addrs[0]).await.unwrap();
    let (_, took) = support::read_until_closed(&mut c).await;
    assert!(took >= Duration::from_millis(350), "{took:?}");
    let m = metrics(&p).await;
    assert_sample(
        &m,
        "conduit_errors_total",
        &["reason=\"idle_timeout\""],
        1.0,
    );
}

#[tokio::test]
async fn opaque_ports_skip_detection() {
    let app = apps::greeting_server().await;
    // The original destination port (the service's, 80) is configured opaque.
    let mesh = Mesh::start_with(app, |c| {
        c.detect_timeout = Duration::from_secs(30);
        c.opaque_ports = vec![80, app.port()];
    })
    .await;
    let waited = smtp_dialog(mesh.entry()).await;
    assert!(
        waited < Duration::from_secs(5),
        "opaque port waited for detection: {waited:?}"
    );
    let m = metrics(&mesh.outbound).await;
    assert_sample(
        &m,
        "conduit_protocol_detect_total",
        &["protocol=\"opaque_port\""],
        1.0,
    );
}

#[tokio::test]
async fn tls_client_hello_is_forwarded_untouched() {
    let app = apps::tcp_echo_server().await;
    let mesh = Mesh::start(app).await;
    let mut c = TcpStream::connect(mesh.entry()).await.unwrap();
    // A TLS 1.2 record header + ClientHello handshake header, then bytes.
    let hello: &[u8] = &[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00];
    c.write_all(hello).await.unwrap();
    let mut back = vec![0u8; hello.len()];
    c.read_exact(&mut back).await.unwrap();
    assert_eq!(back, hello);
    let m = metrics(&mesh.outbound).await;
    assert_sample(
        &m,
        "conduit_protocol_detect_total",
        &["protocol=\"tls\""],
        1.0,
    );
}

#[tokio::test]
async fn idle_opaque_connections_are_closed() {
    let app = apps::tcp_echo_server().await;
    let mesh = Mesh::start_with(app, |c| c.tcp_idle_timeout = Duration::from_millis(300)).await;
    let mut c = TcpStream::connect(mesh.entry()).await.unwrap();
    c.write_all(b"\x00ping").await.unwrap();
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).await.unwrap();
    // Now stay quiet: the proxy closes the connection (EOF, not a hang).
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest)).await;
    assert!(n.is_ok(), "idle connection was not closed");
    let m = metrics(&mesh.outbound).await;
    assert_sample(
        &m,
        "conduit_errors_total",
        &["reason=\"idle_timeout\""],
        1.0,
    );
}

#[tokio::test]
async fn transparent_inbound_forwards_to_the_app_port() {
    let app = apps::tcp_echo_server().await;
    let proxy = support::transparent_inbound(app, |_| {}).await;
    assert_eq!(
        echo(proxy.inbound_addrs[0], b"\x01raw").await,
        b"\x01rawbye"
    );
}

/// Sends `msg` through the proxy at `addr` to the echo server, half-closes,
/// and returns everything that came back.
async fn echo(addr: std::net::SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(msg).await.unwrap();
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.unwrap();
    got
}

#[tokio::test]
async fn transparent_inbound_to_an_ipv6_address_reaches_the_app_there_or_on_opted_in_loopback() {
    let Some(app) = apps::tcp_echo_server_on("[::1]:0").await else {
        eprintln!("SKIP: no IPv6 loopback on this machine");
        return;
    };
    // sk_lookup steered a connection for the pod's own IPv6 address (here
    // [::1] stands in for it): the app is reached at that same address.
    let proxy = support::transparent_inbound(app, |_| {}).await;
    assert_eq!(
        echo(proxy.inbound_addrs[0], b"\x01six").await,
        b"\x01sixbye"
    );
    // For a port opted in to loopback, a connection for another IPv6
    // address of the pod reaches the app on [::1], not IPv4 loopback.
    let pod_dst = std::net::SocketAddr::new("fd77::2".parse().unwrap(), app.port());
    let port = app.port();
    let proxy =
        support::transparent_inbound(pod_dst, move |c| c.inbound_loopback_ports = vec![port]).await;
    assert_eq!(
        echo(proxy.inbound_addrs[0], b"\x01six").await,
        b"\x01sixbye"
    );
}

#[tokio::test]
async fn wildcard_inbound_pair_is_one_dual_stack_listener() {
    let app = apps::tcp_echo_server().await;
    let proxy = support::transparent_inbound(app, |c| {
        c.inbound_addrs = vec!["0.0.0.0:0".parse().unwrap(), "[::]:0".parse().unwrap()];
    })
    .await;
    // One socket (the one registered with the agent, whose sk_lookup hands
    // it both families); without IPv6 on the machine, the IPv4 one.
    assert_eq!(proxy.inbound_addrs.len(), 1, "{:?}", proxy.inbound_addrs);
    let port = proxy.inbound_addrs[0].port();
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(echo(v4, b"\x01four").await, b"\x01fourbye");
    if proxy.inbound_addrs[0].is_ipv6() {
        let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
        assert_eq!(echo(v6, b"\x01six").await, b"\x01sixbye");
    }
}

#[tokio::test]
async fn ipv6_loopback_outbound_listener() {
    let app = apps::tcp_echo_server().await;
    let proxy = support::plain_outbound(app, |c| {
        c.outbound_addrs = vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()];
    })
    .await;
    let Some(v6) = proxy.outbound_addrs.iter().find(|a| a.is_ipv6()) else {
        eprintln!("SKIP: no IPv6 loopback on this machine");
        return;
    };
    assert_eq!(echo(*v6, b"\x00six").await, b"\x00sixbye");
}
