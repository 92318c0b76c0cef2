//! HTTP/2 abuse against the real `conduit-proxy` binary (its own process,
//! so its memory can be read from /proc): rapid reset (HEADERS then
//! RST_STREAM, many times, with the h2 crate as the client; and paced, each
//! stream reset only once the proxy forwarded it), a CONTINUATION
//! flood, SETTINGS and PING floods (raw frames), and many idle connections.
//! In each, another client keeps being served on a connection of its own
//! with bounded latency, and the proxy's resident memory stays bounded.

use crate::h2_raw;
use crate::support;
use conduit_proxy::http::resets::MAX_PREMATURE_RESETS;
use conduit_proxy::http::server::MAX_CONCURRENT_STREAMS;

use h2_raw::{CONTINUATION, GET_BLOCK, HEADERS, PING, Proxy, SETTINGS, Watch, flood, frame, raw};
use std::time::{Duration, Instant};
use support::apps;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Attack requests the proxy may start (forward upstream) on one connection
/// before it is cut off, whatever the timing: the requests it lets run at
/// once, plus the streams cancelled after being forwarded that it tolerates
/// (one more closes the connection). Streams reset before the proxy took
/// them are never forwarded; more than `MAX_PENDING_ACCEPT_RESETS` of those
/// waiting at once close the connection too.
const ATTACK_STARTED_BOUND: u64 = MAX_CONCURRENT_STREAMS as u64 + MAX_PREMATURE_RESETS + 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off_and_others_are_served() {
    let _serial = h2_raw::one_at_a_time().await;
    // An upstream that does not close the proxy's shared connection over
    // the cancellations the proxy relays (see `http_server_taking_resets`).
    let app = apps::http_server_taking_resets().await;
    let mut proxy = Proxy::start(app);
    let watch = Watch::start(&proxy).await;
    let (before, asked_before) = (
        proxy.metric("conduit_request_total", "outbound").await,
        watch.asked(),
    );
    // The h2 crate as the attacker: each request is sent, then dropped at
    // once, which resets the stream (RST_STREAM CANCEL). The h2 client
    // writes HEADERS frames ahead of the RST_STREAMs queued after them, so
    // the proxy may take (and forward) up to its stream limit before the
    // first reset arrives, or see most resets while the streams still wait
    // to be taken: which one is up to scheduling. The attacker is a
    // neighbour, not a task of this runtime: its loop never waits while the
    // proxy keeps taking streams, and here it would keep a worker of the
    // runtime that serves the upstream app and the bystander to itself.
    let target = proxy.outbound;
    let attacker = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(reset_flood(target))
    });
    let (sent, cut, ended) = tokio::task::spawn_blocking(move || attacker.join().unwrap())
        .await
        .unwrap();
    eprintln!("rapid reset: {sent} streams sent and reset; connection ended: {ended:?}");
    // The server gave up on the connection: h2's GOAWAY ENHANCE_YOUR_CALM
    // (more than 20 reset streams waiting to be taken) or the proxy's own
    // close (more than MAX_PREMATURE_RESETS streams cancelled after being
    // forwarded); the client may see either as a broken pipe, still writing.
    assert!(
        cut,
        "the attacker sent {sent} streams and was never cut off"
    );
    let started = proxy.metric("conduit_request_total", "outbound").await - before;
    // The bystander's requests are in that count too.
    let started = started as u64 - (watch.asked() - asked_before).min(started as u64);
    let closed_by_proxy = proxy.metric("conduit_errors_total", "rapid_reset").await;
    eprintln!(
        "rapid reset: the proxy started {started} of them (bound {ATTACK_STARTED_BOUND}); closed by the premature-reset count: {closed_by_proxy}"
    );
    assert!(
        started <= ATTACK_STARTED_BOUND,
        "{started} of {sent} reset requests were started"
    );
    watch.check("rapid reset", &mut proxy).await;
}

/// Sends requests on one connection and resets each at once, for at most
/// 50 000 streams or 10 s, until the server cuts it off; then waits (10 s at
/// most) for the connection to end. Streams sent, whether the server cut
/// the connection off, and how the connection ended.
async fn reset_flood(target: std::net::SocketAddr) -> (u32, bool, Result<(), h2::Error>) {
    let tcp = TcpStream::connect(target).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let (mut sent, mut cut) = (0u32, false);
    let started = Instant::now();
    while sent < 50_000 && started.elapsed() < Duration::from_secs(10) {
        client = match client.ready().await {
            Ok(c) => c,
            Err(_) => {
                cut = true;
                break;
            }
        };
        let req = http::Request::get("http://web/slow/1000").body(()).unwrap();
        match client.send_request(req, true) {
            Ok((rsp, _)) => drop(rsp),
            Err(_) => {
                cut = true;
                break;
            }
        }
        sent += 1;
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the server ends the attacking connection")
        .unwrap();
    (sent, cut, ended)
}

/// The attack h2's own limit cannot see: each stream is reset only once the
/// proxy has taken it and forwarded its request, so no reset stream ever
/// waits in h2's accept queue. Without a count of its own the proxy forwards
/// every one of them, as long as the attacker likes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_rapid_reset_is_cut_off_after_the_premature_reset_limit() {
    let _serial = h2_raw::one_at_a_time().await;
    let app = apps::http_server().await;
    let mut proxy = Proxy::start(app);
    let watch = Watch::start(&proxy).await;
    let tcp = TcpStream::connect(proxy.outbound).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let rounds = 4 * MAX_PREMATURE_RESETS;
    let mut forwarded = 0u64;
    for _ in 0..rounds {
        let Ok(c) = client.ready().await else { break };
        client = c;
        let base = proxy.metric("conduit_request_total", "outbound").await as u64;
        let asked = watch.asked();
        let req = http::Request::get("http://web/slow/1000").body(()).unwrap();
        let Ok((rsp, _)) = client.send_request(req, true) else {
            break;
        };
        // Until the proxy has forwarded it (or closed the connection).
        support::eventually("the proxy forwards the request", || async {
            let now = proxy.metric("conduit_request_total", "outbound").await as u64;
            now > base + (watch.asked() - asked) || conn.is_finished()
        })
        .await;
        drop(rsp);
        if conn.is_finished() {
            break;
        }
        forwarded += 1;
    }
    eprintln!("paced rapid reset: {forwarded} of {rounds} requests forwarded, then reset");
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the proxy ends the attacking connection")
        .unwrap();
    let closed = proxy.metric("conduit_errors_total", "rapid_reset").await;
    eprintln!("paced rapid reset: connection ended: {ended:?}; rapid_reset closes: {closed}");
    // A few resets may still be on their way when the limit's stream is
    // forwarded.
    assert!(
        forwarded <= MAX_PREMATURE_RESETS + 10,
        "{forwarded} requests forwarded and reset one at a time"
    );
    assert_eq!(closed, 1.0, "closed by the premature-reset count");
    watch.check("paced rapid reset", &mut proxy).await;
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
