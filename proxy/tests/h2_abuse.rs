//! HTTP/2 abuse against the real `conduit-proxy` binary (its own process,
//! so its memory can be read from /proc): rapid reset (HEADERS then
//! RST_STREAM, many times, with the h2 crate as the client), a CONTINUATION
//! flood, SETTINGS and PING floods (raw frames), and many idle connections.
//! In each, another client keeps being served on a connection of its own
//! with bounded latency, and the proxy's resident memory stays bounded.

mod support;

use bytes::{Buf, Bytes, BytesMut};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::apps;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_conduit-proxy");
/// Growth of the proxy's resident memory allowed during an attack.
const MAX_RSS_GROWTH_KB: u64 = 48 * 1024;
/// Longest a request of the bystander client may take during an attack.
const MAX_BYSTANDER_LATENCY: Duration = Duration::from_secs(2);

/// The proxy binary in explicit-proxy mode in front of `app`.
struct Proxy {
    child: Child,
    outbound: SocketAddr,
    admin: SocketAddr,
}

impl Proxy {
    fn start(app: SocketAddr) -> Proxy {
        let mut child = Command::new(BIN)
            .args([
                "--outbound-addrs",
                "127.0.0.1:0",
                "--inbound-addrs",
                "127.0.0.1:0",
            ])
            .args([
                "--admin-addr",
                "127.0.0.1:0",
                "--control-addr",
                "127.0.0.1:0",
            ])
            .args([
                "--outbound-fixed-dst",
                &app.to_string(),
                "--log",
                "warn,conduit_proxy=info",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (outbound, admin) = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("the proxy logs its listeners");
            if let (Some(out), Some(admin)) =
                (line.split("outbound=[").nth(1), line.split("admin=").nth(1))
            {
                let out = out.split(']').next().unwrap().parse().unwrap();
                let admin = admin.split_whitespace().next().unwrap().parse().unwrap();
                break (out, admin);
            }
        };
        // Keep draining the log so the proxy never blocks on stderr.
        std::thread::spawn(move || {
            while let Ok(l) = rx.recv() {
                if std::env::var_os("H2_ABUSE_LOG").is_some() {
                    eprintln!("[proxy] {l}");
                }
            }
        });
        Proxy {
            child,
            outbound,
            admin,
        }
    }

    /// Sum of the samples of metric `name` whose line contains `part`.
    async fn metric(&self, name: &str, part: &str) -> f64 {
        let m = support::get_text(self.admin, "/metrics").await.1;
        support::sample(&m, name, &[part])
    }

    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A well-behaved client on its own HTTP/2 connection, asking every 50 ms
/// while the attack runs; and a sampler of the proxy's peak memory.
struct Watch {
    stop: Arc<AtomicBool>,
    client: tokio::task::JoinHandle<(u32, u32, Duration)>,
    peak_kb: Arc<AtomicU64>,
    sampler: std::thread::JoinHandle<()>,
    baseline_kb: u64,
}

impl Watch {
    async fn start(proxy: &Proxy) -> Watch {
        // Warm up (first connections, pools) before the baseline.
        let mut c = support::client::h2(proxy.outbound).await;
        for _ in 0..20 {
            let rsp = c
                .send_request(support::client::get("/status/200", "web"))
                .await
                .unwrap();
            assert_eq!(rsp.status(), 200);
        }
        let baseline_kb = proxy.rss_kb();
        let stop = Arc::new(AtomicBool::new(false));
        let peak_kb = Arc::new(AtomicU64::new(baseline_kb));
        let sampler = {
            let (stop, peak) = (stop.clone(), peak_kb.clone());
            let path = format!("/proc/{}/status", proxy.child.id());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kb) = std::fs::read_to_string(&path).ok().and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("VmRSS:"))
                            .and_then(|v| v.split_whitespace().next()?.parse().ok())
                    }) {
                        peak.fetch_max(kb, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let client = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed, mut worst) = (0u32, 0u32, Duration::ZERO);
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let r = tokio::time::timeout(
                        MAX_BYSTANDER_LATENCY * 2,
                        c.send_request(support::client::get("/status/200", "web")),
                    )
                    .await;
                    match r {
                        Ok(Ok(rsp)) if rsp.status() == 200 => ok += 1,
                        _ => failed += 1,
                    }
                    worst = worst.max(start.elapsed());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                (ok, failed, worst)
            })
        };
        Watch {
            stop,
            client,
            peak_kb,
            sampler,
            baseline_kb,
        }
    }

    /// Stops watching and checks the bystander and the memory.
    async fn check(self, what: &str, proxy: &mut Proxy) {
        self.stop.store(true, Ordering::Relaxed);
        let (ok, failed, worst) = self.client.await.unwrap();
        self.sampler.join().unwrap();
        let peak = self.peak_kb.load(Ordering::Relaxed);
        let growth = peak.saturating_sub(self.baseline_kb);
        eprintln!(
            "{what}: bystander {ok} ok, {failed} failed, worst {worst:?}; RSS {} kB -> peak {peak} kB (+{growth} kB)",
            self.baseline_kb
        );
        assert!(proxy.alive(), "{what}: the proxy died");
        assert!(
            ok >= 1 && failed == 0,
            "{what}: bystander {ok} ok, {failed} failed"
        );
        assert!(
            worst < MAX_BYSTANDER_LATENCY,
            "{what}: bystander waited {worst:?}"
        );
        assert!(
            growth < MAX_RSS_GROWTH_KB,
            "{what}: RSS grew by {growth} kB (baseline {} kB)",
            self.baseline_kb
        );
    }
}

// Raw frames (RFC 9113 section 4.1).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;

fn frame(out: &mut Vec<u8>, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[ty, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// HPACK: `:method GET`, `:scheme http`, `:path /` (static table), and
/// `:authority web` (literal, indexed name).
const GET_BLOCK: &[u8] = &[0x82, 0x86, 0x84, 0x41, 0x03, b'w', b'e', b'b'];

/// What the server did on an attacking connection.
#[derive(Debug, Default)]
struct ServerSide {
    goaway: Option<u32>,
    closed: bool,
    bytes: u64,
}

/// A raw HTTP/2 connection: preface and SETTINGS sent; the server's frames
/// are read (and dropped) by a task that reports GOAWAY and close, unless
/// `read` is false (a client that never reads).
async fn raw(
    addr: SocketAddr,
    read: bool,
) -> (
    tokio::net::tcp::OwnedWriteHalf,
    tokio::task::JoinHandle<ServerSide>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = tcp.into_split();
    let mut hello = PREFACE.to_vec();
    frame(&mut hello, SETTINGS, 0, 0, &[]);
    w.write_all(&hello).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut side = ServerSide::default();
        if !read {
            // Hold the read half without reading until the test ends.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(r);
            return side;
        }
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            match r.read_buf(&mut buf).await {
                Ok(0) | Err(_) => {
                    side.closed = true;
                    return side;
                }
                Ok(n) => side.bytes += n as u64,
            }
            while buf.len() >= 9 {
                let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                if buf.len() < 9 + len {
                    break;
                }
                let ty = buf[3];
                let payload: Bytes = buf.split_to(9 + len).freeze().slice(9..);
                if ty == GOAWAY && payload.len() >= 8 {
                    side.goaway = Some((&payload[4..8]).get_u32());
                }
            }
        }
    });
    (w, reader)
}

/// Writes `batch` again and again until `total` bytes went out, the server
/// closes, or writing blocks for a second (the server stopped reading).
async fn flood(w: &mut tokio::net::tcp::OwnedWriteHalf, batch: &[u8], total: usize) -> usize {
    let mut sent = 0;
    while sent < total {
        match tokio::time::timeout(Duration::from_secs(1), w.write_all(batch)).await {
            Ok(Ok(())) => sent += batch.len(),
            Ok(Err(_)) | Err(_) => break,
        }
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off_and_others_are_served() {
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
