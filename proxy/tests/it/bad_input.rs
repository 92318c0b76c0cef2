//! Bad input gets a clear answer and a closed connection, never a hang or a
//! panic: malformed HTTP, oversized heads, too many header fields, slow
//! clients (heads and bodies), the connection limit, a bad transport header, an unreachable
//! upstream.

use crate::support;

use std::time::Duration;
use support::{Mesh, apps, assert_sample, metrics, sample};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `raw`, reads until the proxy closes; returns what came back.
async fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let (out, _) = support::read_until_closed(&mut s).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn malformed_http_gets_400_and_close() {
    let app = apps::http_server().await;
    let mesh = Mesh::start(app).await;
    let out = exchange(
        mesh.entry(),
        b"GET / HTTP/1.1\r\nHost: web\r\nthis is not a header\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    let out = exchange(
        mesh.entry(),
        b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: abc\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    let m = metrics(&mesh.outbound).await;
    assert_sample(
        &m,
        "conduit_errors_total",
        &["reason=\"malformed_http\""],
        2.0,
    );
}

#[tokio::test]
async fn oversized_head_and_too_many_fields_get_431() {
    let app = apps::http_server().await;
    let mesh = Mesh::start_with(app, |c| {
        c.max_header_bytes = 16 * 1024;
        c.max_headers = 20;
    })
    .await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: web\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let out = exchange(mesh.entry(), big.as_bytes()).await;
    assert!(
        out.starts_with("HTTP/1.1 431"),
        "{:?}",
        &out[..out.len().min(80)]
    );
    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let out = exchange(
        mesh.entry(),
        format!("GET / HTTP/1.1\r\nHost: web\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out:?}");
    let m = metrics(&mesh.outbound).await;
    assert_sample(
        &m,
        "conduit_errors_total",
        &["reason=\"header_too_large\""],
        2.0,
    );
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let app = apps::http_server().await;
    let mesh = Mesh::start_with(app, |c| c.header_read_timeout = Duration::from_millis(300)).await;
    let mut s = TcpStream::connect(mesh.entry()).await.unwrap();
    // A request line, then the head never completes.
    s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nX-Slow: ")
        .await
        .unwrap();
    let (_, took) = support::read_until_closed(&mut s).await;
    assert!(took >= Duration::from_millis(250), "{took:?}");
    let m = metrics(&mesh.outbound).await;
    assert_sample(
        &m,
        "conduit_errors_total",
        &["reason=\"header_read_timeout\""],
        1.0,
    );
}

#[tokio::test]
async fn connection_limit_closes_extra_connections() {
    let app = apps::tcp_echo_server().await;
    let p = support::plain_outbound(app, |c| c.max_connections = 2).await;
    let entry = p.outbound_addrs[0];
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(entry).await.unwrap();
        s.write_all(b"\x00hold").await.unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).await.unwrap();
        held.push(s);
    }
    let mut third = TcpStream::connect(entry).await.unwrap();
    let _ = third.write_all(b"\x00x").await;
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut out))
        .await
        .expect("closed at once");
    assert!(
        r.is_err() || out.is_empty(),
        "third connection was served: {out:?}"
    );
    let m = metrics(&p).await;
    assert_sample(
        &m,
        "conduit_connections_refused_total",
        &["reason=\"connection_limit\""],
        1.0,
    );
    // Capacity returns when a connection closes.
    drop(held.pop());
    support::eventually("a slot frees up", || async {
        sample(&metrics(&p).await, "conduit_tcp_close_total", &["outbound"]) >= 1.0
    })
    .await;
    let mut again = TcpStream::connect(entry).await.unwrap();
    again.write_all(b"\x00ok").await.unwrap();
    let mut b = [0u8; 3];
    again.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"\x00ok");
}

#[tokio::test]
async fn bad_transport_header_is_refused() {
    let app = apps::http_server().await;
    let mesh = Mesh::start(app).await;
    let inbound = mesh.inbound.inbound_addrs[0];
    for bad in [
        &b"CONDUIT/1 h3 8080\n"[..],
        b"CONDUIT/1 tcp 99999\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let out = exchange(inbound, bad).await;
        assert_eq!(out, "", "inbound answered a bad header {bad:?}");
    }
    let m = metrics(&mesh.inbound).await;
    assert_sample(
        &m,
        "conduit_errors_total",
        &["reason=\"transport_header\""],
        3.0,
    );
}

#[tokio::test]
async fn unreachable_upstream_gets_502_with_reason() {
    // A port with nothing listening.
    let dead = support::refusing();
    let p = support::plain_outbound(dead.addr, |_| {}).await;
    let mut s = TcpStream::connect(p.outbound_addrs[0]).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let out = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(out.starts_with("http/1.1 502"), "{out}");
    assert!(
        out.contains("conduit-proxy-error: upstream connect failed"),
        "{out}"
    );
    let m = metrics(&p).await;
    assert_sample(&m, "conduit_response_total", &["5xx"], 1.0);
}

#[tokio::test]
async fn stalled_request_bodies_get_408_and_steady_slow_ones_pass() {
    let app = apps::http_server().await;
    let mesh = Mesh::start_with(app, |c| c.body_read_timeout = Duration::from_millis(500)).await;
    // 10 of the 100 declared bytes, then silence: a streamed POST (through
    // the HTTP/2 hop to the inbound proxy) and a buffered, retryable PUT.
    for method in ["POST", "PUT"] {
        let started = std::time::Instant::now();
        let out = exchange(
            mesh.entry(),
            format!(
                "{method} /count HTTP/1.1\r\nHost: web\r\nContent-Length: 100\r\n\r\n0123456789"
            )
            .as_bytes(),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 408"), "{method}: {out:?}");
        assert!(out.contains("request body timeout"), "{method}: {out:?}");
        assert!(started.elapsed() >= Duration::from_millis(500));
    }
    let m = metrics(&mesh.outbound).await;
    assert_sample(
        &m,
        "conduit_errors_total",
        &["reason=\"body_read_timeout\""],
        2.0,
    );
    // The same 100 bytes in ten pieces, each pause (100 ms) well under the
    // limit: 1 s in all, twice the limit, and it goes through.
    let mut s = TcpStream::connect(mesh.entry()).await.unwrap();
    s.write_all(
        b"POST /count HTTP/1.1\r\nHost: web\r\nContent-Length: 100\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(b"0123456789").await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("answered")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out:?}");
    assert!(out.ends_with("100"), "{out:?}");
}

#[tokio::test]
async fn malformed_chunked_request_body_gets_400_not_502() {
    let app = apps::http_server().await;
    let mesh = Mesh::start(app).await;
    // A valid first chunk, then a chunk size that is not hex.
    let out = exchange(
        mesh.entry(),
        b"POST /echo HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\nxyz\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    assert!(out.contains("malformed request body"), "{out:?}");
    let m = metrics(&mesh.outbound).await;
    assert_sample(
        &m,
        "conduit_errors_total",
        &["reason=\"malformed_body\""],
        1.0,
    );
    assert_sample(&m, "conduit_errors_total", &["reason=\"upstream\""], 0.0);
}

#[tokio::test]
async fn content_length_with_transfer_encoding_gets_400() {
    let app = apps::http_server().await;
    let mesh = Mesh::start(app).await;
    for raw in [
        &b"POST /echo HTTP/1.1\r\nHost: web\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"POST /echo HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        // Smuggling shape: the second request hides in the first's body.
        b"POST /echo HTTP/1.1\r\nHost: web\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /status/201 HTTP/1.1\r\nHost: web\r\n\r\n",
    ] {
        let out = exchange(mesh.entry(), raw).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
        assert_eq!(out.matches("HTTP/1.1").count(), 1, "one answer, then close: {out:?}");
    }
    // One framing alone is fine.
    let out = exchange(
        mesh.entry(),
        b"POST /echo HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 200") && out.contains("ok"),
        "{out:?}"
    );
    let m = metrics(&mesh.outbound).await;
    assert_sample(
        &m,
        "conduit_errors_total",
        &["reason=\"ambiguous_framing\""],
        3.0,
    );
}

/// The ambiguous request pipelined behind an innocent one with the same
/// method and target: the innocent one is answered, the ambiguous one
/// refused (the scanner once matched the first head of that method and
/// target, so the second request went through).
#[tokio::test]
async fn an_ambiguous_request_behind_one_with_the_same_target_gets_400() {
    let app = apps::http_server().await;
    let mesh = Mesh::start(app).await;
    let out = exchange(
        mesh.entry(),
        b"POST /echo HTTP/1.1\r\nHost: web\r\nContent-Length: 2\r\n\r\nok\
          POST /echo HTTP/1.1\r\nHost: web\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
          GET /status/201 HTTP/1.1\r\nHost: web\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out:?}");
    assert_eq!(
        out.matches("HTTP/1.1 ").count(),
        2,
        "two answers, then close: {out:?}"
    );
    assert!(out.contains("HTTP/1.1 400"), "{out:?}");
    assert!(!out.contains("HTTP/1.1 201"), "{out:?}");
    let m = metrics(&mesh.outbound).await;
    assert_sample(
        &m,
        "conduit_errors_total",
        &["reason=\"ambiguous_framing\""],
        1.0,
    );
}

/// A client trickling the first bytes of a method must not fall through to
/// opaque TCP after the detection timeout (where no HTTP limit applies and
/// the connection could be held for the TCP idle timeout).
#[tokio::test]
async fn slow_method_bytes_are_held_to_the_header_read_timeout() {
    let app = apps::http_server().await;
    let mesh = Mesh::start_with(app, |c| {
        c.detect_timeout = Duration::from_millis(100);
        c.header_read_timeout = Duration::from_millis(600);
    })
    .await;
    let mut s = TcpStream::connect(mesh.entry()).await.unwrap();
    let start = std::time::Instant::now();
    s.write_all(b"G").await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let _ = s.write_all(b"E").await;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the proxy closes a trickling client at the header read timeout")
        .unwrap_or_default();
    let took = start.elapsed();
    assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
    assert!(took >= Duration::from_millis(550), "closed early: {took:?}");
    let m = metrics(&mesh.outbound).await;
    assert_sample(
        &m,
        "conduit_protocol_detect_total",
        &["protocol=\"slow_http\""],
        1.0,
    );
    assert_sample(
        &m,
        "conduit_errors_total",
        &["reason=\"header_read_timeout\""],
        1.0,
    );
    assert_sample(
        &m,
        "conduit_protocol_detect_total",
        &["protocol=\"opaque\""],
        0.0,
    );
}
