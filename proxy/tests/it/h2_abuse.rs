//! HTTP/2 abuse against the real `conduit-proxy` binary (its own process,
//! so its memory can be read from /proc): rapid reset (HEADERS then
//! RST_STREAM, many times, with the h2 crate as the client), a CONTINUATION
//! flood, SETTINGS and PING floods (raw frames), and many idle connections.
//! In each, another client keeps being served on a connection of its own
//! with bounded latency, and the proxy's resident memory stays bounded.

use crate::h2_raw;
use crate::support;

use h2_raw::{CONTINUATION, GET_BLOCK, HEADERS, PING, Proxy, SETTINGS, Watch, flood, frame, raw};
use std::time::{Duration, Instant};
use support::apps;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off_and_others_are_served() {
    let _serial = h2_raw::one_at_a_time().await;
    let app = apps::http_server().await;
    let mut proxy = Proxy::start(app);
    let watch = Watch::start(&proxy).await;
    // The h2 crate as the attacker: each request is sent, then dropped at
    // once, which resets the stream (RST_STREAM CANCEL).
    let tcp = TcpStream::connect(proxy.outbound).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut sent = 0u32;
    let started = Instant::now();
    while sent < 50_000 && started.elapsed() < Duration::from_secs(10) {
        client = match client.ready().await {
            Ok(c) => c,
            Err(_) => break,
        };
        let req = http::Request::get("http://web/slow/1000").body(()).unwrap();
        match client.send_request(req, true) {
            Ok((rsp, _)) => drop(rsp),
            Err(_) => break,
        }
        sent += 1;
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the server ends the attacking connection")
        .unwrap();
    eprintln!("rapid reset: {sent} streams sent and reset; connection ended: {ended:?}");
    // The server gave up on the connection (GOAWAY ENHANCE_YOUR_CALM once
    // more than 20 streams were reset before being accepted; the client may
    // see it as a broken pipe, still writing), having started only a few
    // of the requests.
    assert!(ended.is_err(), "the attacking connection ended cleanly");
    let started = proxy.metric("conduit_request_total", "outbound").await;
    eprintln!("rapid reset: the proxy started {started} requests");
    assert!(
        started < 1000.0,
        "{started} of {sent} reset requests were started"
    );
    watch.check("rapid reset", &mut proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_is_cut_off_and_others_are_served() {
    let _serial = h2_raw::one_at_a_time().await;
    let app = apps::http_server().await;
    let mut proxy = Proxy::start(app);
    let watch = Watch::start(&proxy).await;
    let (mut w, server) = raw(proxy.outbound, true).await;
    // HEADERS without END_HEADERS, then CONTINUATION frames that never end
    // the block, each full of literal header fields.
    let mut start = Vec::new();
    frame(&mut start, HEADERS, 0, 1, GET_BLOCK);
    w.write_all(&start).await.unwrap();
    let mut field = vec![0x00, 0x01, b'x', 0x64];
    field.extend_from_slice(&[b'a'; 100]);
    let block: Vec<u8> = field.iter().copied().cycle().take(16_000).collect();
    let mut batch = Vec::new();
    for _ in 0..16 {
        frame(&mut batch, CONTINUATION, 0, 1, &block);
    }
    let sent = flood(&mut w, &batch, 256 << 20).await;
    let side = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server closes the connection")
        .unwrap();
    eprintln!("CONTINUATION flood: {sent} bytes sent; server: {side:?}");
    assert!(side.closed, "the server kept the connection: {side:?}");
    assert!(sent < 64 << 20, "{sent} bytes of one header block accepted");
    watch.check("CONTINUATION flood", &mut proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_ping_floods_leave_others_served_with_bounded_memory() {
    let _serial = h2_raw::one_at_a_time().await;
    let app = apps::http_server().await;
    let mut proxy = Proxy::start(app);
    let watch = Watch::start(&proxy).await;
    let mut settings = Vec::new();
    let mut pings = Vec::new();
    for i in 0..1000u64 {
        // SETTINGS_INITIAL_WINDOW_SIZE, changing each time (each needs an ACK).
        let mut s = vec![0x00, 0x04];
        s.extend_from_slice(&(65_535 + i as u32).to_be_bytes());
        frame(&mut settings, SETTINGS, 0, 0, &s);
        frame(&mut pings, PING, 0, 0, &i.to_be_bytes());
    }
    // Clients that read the ACKs, and clients that never read them.
    let mut report = Vec::new();
    for (what, batch) in [("SETTINGS", &settings), ("PING", &pings)] {
        for read in [true, false] {
            let (mut w, server) = raw(proxy.outbound, read).await;
            let sent = flood(&mut w, batch, 32 << 20).await;
            report.push(format!("{what} flood (reading: {read}): {sent} bytes sent"));
            drop(w);
            server.abort();
        }
    }
    eprintln!("{}", report.join("\n"));
    watch.check("SETTINGS and PING floods", &mut proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_idle_connections_leave_others_served_with_bounded_memory() {
    let _serial = h2_raw::one_at_a_time().await;
    let app = apps::http_server().await;
    let mut proxy = Proxy::start(app);
    let watch = Watch::start(&proxy).await;
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(raw(proxy.outbound, false).await);
    }
    // All of them held open by the proxy, as HTTP/2 connections.
    support::eventually("1000 idle connections open", || async {
        proxy.metric("conduit_protocol_detect_total", "http2").await >= 1001.0
            && proxy
                .metric("conduit_tcp_open_connections", "outbound")
                .await
                >= 1001.0
    })
    .await;
    watch
        .check("1000 idle HTTP/2 connections", &mut proxy)
        .await;
    for (_, reader) in &idle {
        reader.abort();
    }
}
