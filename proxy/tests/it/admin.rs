//! The admin server and golden metrics after known traffic, and graceful
//! drain through `POST /shutdown` on the operator listener (the admin
//! server is read-only).

use crate::support;

use http::Request;
use support::client::{self, body, get, text};
use support::{Mesh, apps, assert_sample, get_text, metrics, sample};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn health_endpoints() {
    let p = support::plain_outbound(apps::http_server().await, |_| {}).await;
    assert_eq!(get_text(p.admin_addr, "/live").await.0, 200);
    assert_eq!(get_text(p.admin_addr, "/ready").await.0, 200);
    assert_eq!(get_text(p.admin_addr, "/nope").await.0, 404);
    assert_eq!(
        get_text(p.admin_addr, "/shutdown").await.0,
        404,
        "no /shutdown on the admin server"
    );
    assert_eq!(get_text(p.admin_addr, "/ready").await.0, 200);
}

#[tokio::test]
async fn metrics_after_known_traffic() {
    let app = apps::http_server().await;
    let mesh = Mesh::start(app).await;
    let mut c = client::h1(mesh.entry()).await;
    for _ in 0..3 {
        assert_eq!(
            c.send_request(get("/echo", "web")).await.unwrap().status(),
            200
        );
    }
    let (p, _) = text(c.send_request(get("/status/404", "web")).await.unwrap()).await;
    assert_eq!(p.status, 404);
    // POST is not retried: exactly one 500 reaches the app.
    let req = Request::post("/status/500")
        .header("host", "web")
        .body(body("x"))
        .unwrap();
    assert_eq!(text(c.send_request(req).await.unwrap()).await.0.status, 500);
    // GET is idempotent and bodiless: retried (3 attempts) within the budget.
    assert_eq!(
        text(c.send_request(get("/status/503", "web")).await.unwrap())
            .await
            .0
            .status,
        503
    );
    drop(c);

    let dst = "dst=\"web.test.svc.cluster.local:80\"";
    let m = metrics(&mesh.outbound).await;
    let out = "direction=\"outbound\"";
    assert_sample(&m, "conduit_request_total", &[out, dst], 6.0);
    assert_sample(
        &m,
        "conduit_response_total",
        &[out, dst, "status_class=\"2xx\""],
        3.0,
    );
    assert_eq!(
        sample(
            &m,
            "conduit_response_total",
            &[out, dst, "status_class=\"4xx\""]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "conduit_response_total",
            &[out, dst, "status_class=\"5xx\""]
        ),
        2.0
    );
    assert_eq!(
        sample(&m, "conduit_response_latency_seconds_count", &[out, dst]),
        6.0
    );
    assert_eq!(
        sample(
            &m,
            "conduit_protocol_detect_total",
            &[out, "protocol=\"http1\""]
        ),
        1.0
    );
    assert_eq!(sample(&m, "conduit_tcp_open_total", &[out]), 1.0);
    assert!(
        m.contains("conduit_response_latency_seconds_bucket{"),
        "{m}"
    );
    support::outbound_closed("client connection counted closed", &mesh.outbound, 1.0).await;

    let mi = metrics(&mesh.inbound).await;
    let inb = "direction=\"inbound\"";
    let app_dst = format!("dst=\"app:{}\"", app.port());
    // 3 + 1 + 1 + 3 attempts of the 503.
    assert_sample(&mi, "conduit_request_total", &[inb, &app_dst], 8.0);
    assert_sample(
        &mi,
        "conduit_response_total",
        &[inb, "status_class=\"5xx\""],
        4.0,
    );
    assert!(sample(&mi, "conduit_tcp_read_bytes_total", &[inb]) > 0.0);
    assert_eq!(sample(&mi, "conduit_agent_registered", &[]), 0.0);
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_stops_accepting() {
    let app = apps::http_server().await;
    let mesh = Mesh::start(app).await;
    let entry = mesh.entry();
    let mut c = client::h1(entry).await;
    let slow =
        tokio::spawn(
            async move { text(c.send_request(get("/slow/700", "web")).await.unwrap()).await },
        );
    support::eventually("request in flight", || async {
        sample(&metrics(&mesh.outbound).await, "conduit_request_total", &[]) == 1.0
    })
    .await;

    let out = post_shutdown(mesh.outbound.control_addr, None).await;
    assert!(out.starts_with("HTTP/1.1 202"), "{out}");
    assert_eq!(get_text(mesh.outbound.admin_addr, "/ready").await.0, 503);

    // New connections are no longer accepted...
    support::eventually("listener closed", || async {
        TcpStream::connect(entry).await.is_err()
    })
    .await;
    // ...while the in-flight request completes.
    let (parts, body) = slow.await.unwrap();
    assert_eq!((parts.status.as_u16(), body.as_str()), (200, "slow done"));
    tokio::time::timeout(std::time::Duration::from_secs(5), mesh.outbound.wait())
        .await
        .expect("drained");
}

/// A draining proxy does not close an idle keep-alive HTTP/1 connection
/// under its client's feet (the request the client is sending that moment
/// would fail unanswered): the next request on it is answered, with
/// `Connection: close`, and the connection then ends.
#[tokio::test]
async fn a_draining_proxy_answers_the_next_request_of_an_idle_keep_alive_connection() {
    let app = apps::http_server().await;
    let mesh = Mesh::start(app).await;
    let mut c = client::h1(mesh.entry()).await;
    let (parts, _) = text(c.send_request(get("/count", "web")).await.unwrap()).await;
    assert_eq!(parts.status.as_u16(), 200);
    // The connection is idle, kept alive: the drain starts.
    mesh.outbound.shutdown();
    support::eventually("not ready", || async {
        get_text(mesh.outbound.admin_addr, "/ready").await.0 == 503
    })
    .await;
    c.ready().await.expect("the idle connection is still open");
    let (parts, _) = text(c.send_request(get("/count", "web")).await.unwrap()).await;
    assert_eq!(parts.status.as_u16(), 200);
    assert_eq!(
        parts
            .headers
            .get(http::header::CONNECTION)
            .map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    tokio::time::timeout(std::time::Duration::from_secs(5), mesh.outbound.wait())
        .await
        .expect("drained");
}

async fn post_shutdown(addr: std::net::SocketAddr, token: Option<&str>) -> String {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("POST /shutdown HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The admin server listens on the network: it must not change state,
/// whatever the client's address (before, a loopback client could shut the
/// proxy down there, and the inbound path made every peer look like one).
#[tokio::test]
async fn the_admin_server_is_read_only_even_for_loopback_clients() {
    let p = support::plain_outbound(apps::http_server().await, |_| {}).await;
    assert!(p.admin_addr.ip().is_loopback());
    let out = post_shutdown(p.admin_addr, None).await;
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert!(out.contains("operator listener"), "{out}");
    assert_eq!(get_text(p.admin_addr, "/ready").await.0, 200);
    assert!(!p.stop_token().is_cancelled());
    // The operator listener is a different port, on loopback.
    assert_ne!(p.control_addr.port(), p.admin_addr.port());
    assert!(p.control_addr.ip().is_loopback());
    let mut s = TcpStream::connect(p.control_addr).await.unwrap();
    s.write_all(b"GET /shutdown HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(
        out.starts_with("HTTP/1.1 405"),
        "GET must not shut down: {out}"
    );
    assert!(!p.stop_token().is_cancelled());
}

#[tokio::test]
async fn the_operator_listener_can_require_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("control-token");
    std::fs::write(&token, "op-secret\n").unwrap();
    let t = token.clone();
    let p = support::plain_outbound(apps::http_server().await, move |c| {
        c.control_token_file = Some(t.clone());
    })
    .await;
    for bad in [None, Some("wrong"), Some("op-secre")] {
        let out = post_shutdown(p.control_addr, bad).await;
        assert!(out.starts_with("HTTP/1.1 401"), "{bad:?}: {out}");
        assert!(!p.stop_token().is_cancelled());
    }
    let out = post_shutdown(p.control_addr, Some("op-secret")).await;
    assert!(out.starts_with("HTTP/1.1 202"), "{out}");
    assert!(p.stop_token().is_cancelled());
}
