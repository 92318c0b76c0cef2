//! HTTP/1.1 through outbound proxy -> (HTTP/2 between proxies) -> inbound
//! proxy -> application: keep-alive, chunked streaming, 100-continue,
//! hop-by-hop headers, WebSocket upgrade and CONNECT tunnels.

use crate::support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::time::Duration;
use support::client::{self, body, get, text};
use support::{Mesh, apps, assert_sample, metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn keep_alive_and_multiplexed_connections_between_proxies() {
    let app = apps::http_server().await;
    let mesh = Mesh::start(app).await;
    let mut a = client::h1(mesh.entry()).await;
    for i in 0..3 {
        let req = Request::post("/echo")
            .header("host", "web.test:80")
            .body(body(format!("hello {i}")))
            .unwrap();
        let (parts, text) = text(a.send_request(req).await.unwrap()).await;
        assert_eq!(parts.status, 200);
        assert_eq!(text, format!("hello {i}"));
        // The app got HTTP/1.1 with the original Host, no mesh-internal header.
        assert_eq!(parts.headers["x-version"], "HTTP/1.1");
        assert_eq!(parts.headers["x-host"], "web.test:80");
        assert_eq!(parts.headers["x-saw-orig-proto"], "false");
        assert_eq!(parts.version, http::Version::HTTP_11);
    }
    // A second client connection, requests interleaved with the first.
    let mut b = client::h1(mesh.entry()).await;
    let (ra, rb) = tokio::join!(
        a.send_request(get("/echo", "web.test")),
        b.send_request(get("/echo", "web.test"))
    );
    assert_eq!(ra.unwrap().status(), 200);
    assert_eq!(rb.unwrap().status(), 200);

    let m = metrics(&mesh.outbound).await;
    assert_sample(&m, "conduit_tcp_open_total", &["outbound"], 2.0);
    assert_sample(
        &m,
        "conduit_request_total",
        &["outbound", "web.test.svc.cluster.local:80"],
        5.0,
    );
    // Both client connections shared the HTTP/2 connections to the peer:
    // exactly `H2_CONNECTIONS` (two) of them, for five requests.
    let pooled = conduit_proxy::http::client::H2_CONNECTIONS as f64;
    let mi = metrics(&mesh.inbound).await;
    assert_sample(&mi, "conduit_tcp_open_total", &["inbound"], pooled);
    assert_sample(&mi, "conduit_protocol_detect_total", &["peer_h2"], pooled);
    assert_sample(&mi, "conduit_request_total", &["inbound"], 5.0);
}

#[tokio::test]
async fn chunked_bodies_stream_both_ways() {
    let app = apps::http_server().await;
    let mesh = Mesh::start(app).await;
    let mut c = client::h1(mesh.entry()).await;
    // Chunked request body (no content-length), 64 chunks of 16 KiB.
    let chunks: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> = (0..64u8)
        .map(|i| Ok(Frame::data(Bytes::from(vec![i; 16 * 1024]))))
        .collect();
    let req = Request::post("/echo")
        .header("host", "web.test")
        .body(BodyExt::boxed(StreamBody::new(futures::stream::iter(
            chunks,
        ))))
        .unwrap();
    let rsp = c.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let got = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got.len(), 64 * 16 * 1024);
    assert!(
        got.chunks(16 * 1024)
            .enumerate()
            .all(|(i, c)| c.iter().all(|b| *b == i as u8))
    );

    // Chunked response (streamed by the app), read raw to see the framing.
    let mut s = TcpStream::connect(mesh.entry()).await.unwrap();
    s.write_all(b"GET /chunks/100 HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let head =
        String::from_utf8_lossy(&raw[..raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap()])
            .to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
}

#[tokio::test]
async fn expect_100_continue() {
    let app = apps::http_server().await;
    let mesh = Mesh::start(app).await;
    let mut s = TcpStream::connect(mesh.entry()).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    // The body is withheld until the interim response arrives.
    let mut buf = vec![0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("100 Continue")
        .unwrap();
    assert_eq!(&buf, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.unwrap();
    let mut rsp = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.ends_with(b"hello") {
        let n = s.read(&mut rsp).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&rsp[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200 OK"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_end_to_end_ones_kept() {
    let app = apps::http_server().await;
    for meshed in [true, false] {
        let (entry, _guard) = if meshed {
            let m = Mesh::start(app).await;
            (m.entry(), Some(m))
        } else {
            let p = support::plain_outbound(app, |_| {}).await;
            (p.outbound_addrs[0], None)
        };
        let mut c = client::h1(entry).await;
        let req = Request::get("/echo")
            .header("host", "web.test")
            .header("connection", "keep-alive, x-custom")
            .header("keep-alive", "timeout=5")
            .header("x-custom", "hop only")
            .body(body(""))
            .unwrap();
        let (parts, _) = text(c.send_request(req).await.unwrap()).await;
        assert_eq!(
            parts.headers["x-saw-keep-alive"], "false",
            "meshed={meshed}"
        );
        assert_eq!(
            parts.headers["x-saw-custom"], "",
            "header named in Connection must go (meshed={meshed})"
        );
        assert_eq!(parts.headers["x-app"], "echo");

        let req = Request::get("/echo")
            .header("host", "web.test")
            .header("x-custom", "end to end")
            .body(body(""))
            .unwrap();
        let (parts, _) = text(c.send_request(req).await.unwrap()).await;
        assert_eq!(parts.headers["x-saw-custom"], "end to end");
    }
}

#[tokio::test]
async fn websocket_upgrade_through_mesh() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let app = apps::websocket_server().await;
    let mesh = Mesh::start(app).await;
    let tcp = TcpStream::connect(mesh.entry()).await.unwrap();
    let (mut ws, rsp) = tokio_tungstenite::client_async("ws://web.test/chat", tcp)
        .await
        .unwrap();
    assert_eq!(rsp.status(), 101);
    for i in 0..5 {
        ws.send(Message::text(format!("msg {i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("msg {i}"))
        );
    }
    let big = vec![7u8; 1 << 20];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_data().len(),
        big.len()
    );
    // The upgraded connection still counts as open while the tunnel lives.
    let m = metrics(&mesh.outbound).await;
    assert_sample(&m, "conduit_tcp_open_connections", &["outbound"], 1.0);
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    drop(ws);
    support::outbound_closed("tunnel closed", &mesh.outbound, 1.0).await;
    let mi = metrics(&mesh.inbound).await;
    assert_sample(&mi, "conduit_protocol_detect_total", &["peer_http1"], 1.0);
}

/// A minimal HTTP CONNECT proxy as the "application": answers 200 and
/// then echoes bytes.
async fn connect_server() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tcp.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                assert!(
                    head.starts_with(b"CONNECT db.example:5432 HTTP/1.1\r\n"),
                    "{}",
                    String::from_utf8_lossy(&head)
                );
                tcp.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await
                    .unwrap();
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn connect_is_tunnelled() {
    let app = connect_server().await;
    let mesh = Mesh::start(app).await;
    let mut s = TcpStream::connect(mesh.entry()).await.unwrap();
    s.write_all(b"CONNECT db.example:5432 HTTP/1.1\r\nHost: db.example:5432\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).await.unwrap(),
            1,
            "closed: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s.write_all(b"\x00tunnelled bytes").await.unwrap();
    let mut back = [0u8; 16];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"\x00tunnelled bytes");
}

#[tokio::test]
async fn plain_and_transparent_inbound_paths() {
    let app = apps::http_server().await;
    let out = support::plain_outbound(app, |_| {}).await;
    let mut c = client::h1(out.outbound_addrs[0]).await;
    let (parts, got) = text(
        c.send_request(
            Request::post("/echo")
                .header("host", "x")
                .body(body("a"))
                .unwrap(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((parts.status.as_u16(), got.as_str()), (200, "a"));
    assert_eq!(parts.headers["x-version"], "HTTP/1.1");

    let inb = support::transparent_inbound(app, |_| {}).await;
    let mut c = client::h1(inb.inbound_addrs[0]).await;
    let (parts, got) = text(
        c.send_request(
            Request::post("/echo")
                .header("host", "x")
                .body(body("b"))
                .unwrap(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((parts.status.as_u16(), got.as_str()), (200, "b"));
    let m = metrics(&inb).await;
    assert_sample(
        &m,
        "conduit_request_total",
        &["inbound", &format!("app:{}", app.port())],
        1.0,
    );
}

const GET_ECHO: &[u8] = b"GET /echo HTTP/1.1\r\nHost: web.test\r\n\r\n";

/// Reads one response (its head and a `content-length` body) off `s`.
async fn one_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("a response")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let l = l.to_ascii_lowercase();
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text;
            }
        }
    }
}

/// A connection to the mesh's entry that made one request and got its
/// answer: kept alive, waiting for the next.
async fn kept_alive(mesh: &Mesh) -> TcpStream {
    let mut s = TcpStream::connect(mesh.entry()).await.unwrap();
    s.write_all(GET_ECHO).await.unwrap();
    assert!(one_response(&mut s).await.starts_with("HTTP/1.1 200"));
    s
}

/// Asserts the proxy neither closes `s` nor sends on it for `idle`.
async fn stays_open(s: &mut TcpStream, idle: Duration) {
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(idle, s.read(&mut b)).await;
    assert!(r.is_err(), "closed or answered while idle: {r:?}");
}

/// Waits for the proxy to close `s`; how long that took, and that it sent
/// nothing first.
async fn closed_after(s: &mut TcpStream) -> Duration {
    let (out, took) = support::read_until_closed(s).await;
    assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
    took
}

async fn header_timeouts(mesh: &Mesh) -> f64 {
    let m = metrics(&mesh.outbound).await;
    support::sample(
        &m,
        "conduit_errors_total",
        &["reason=\"header_read_timeout\""],
    )
}

/// hyper's header-read timer also runs while a keep-alive connection waits
/// idle for its next request; on its own it closed every connection idle
/// for the header timeout, so the client's pool reconnected (and a request
/// sent as the proxy closed would fail). Idle is not a slow head.
#[tokio::test]
async fn an_idle_keep_alive_connection_outlives_the_header_read_timeout() {
    let app = apps::http_server().await;
    let mesh = Mesh::start_with(app, |c| c.header_read_timeout = Duration::from_millis(200)).await;
    let mut s = kept_alive(&mesh).await;
    // Idle for five header timeouts: still open, and still served.
    stays_open(&mut s, Duration::from_secs(1)).await;
    s.write_all(GET_ECHO).await.unwrap();
    assert!(one_response(&mut s).await.starts_with("HTTP/1.1 200"));
    assert_eq!(header_timeouts(&mesh).await, 0.0);
}

/// A head started after an idle wait gets the header timeout from its
/// first byte, not the idle timeout: a slow client is still cut off.
#[tokio::test]
async fn a_head_stalled_after_an_idle_wait_is_cut_off() {
    let app = apps::http_server().await;
    let mesh = Mesh::start_with(app, |c| c.header_read_timeout = Duration::from_millis(300)).await;
    let mut s = kept_alive(&mesh).await;
    stays_open(&mut s, Duration::from_millis(600)).await;
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: web.test\r\nX-Slow: ")
        .await
        .unwrap();
    let took = closed_after(&mut s).await;
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert_eq!(header_timeouts(&mesh).await, 1.0);
}

/// `--http-idle-timeout` closes a keep-alive connection with no request
/// under way; that is not an error.
#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let app = apps::http_server().await;
    let mesh = Mesh::start_with(app, |c| c.http_idle_timeout = Duration::from_millis(400)).await;
    let mut s = kept_alive(&mesh).await;
    let took = closed_after(&mut s).await;
    assert!(took >= Duration::from_millis(350), "{took:?}");
    assert_eq!(header_timeouts(&mesh).await, 0.0);
}
