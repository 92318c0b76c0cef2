//! The harness of `h2_abuse.rs`: the real `conduit-proxy` binary as a child
//! process (memory read from /proc), a bystander client and a peak-memory
//! sampler ([`Watch`]), and raw HTTP/2 frames for the floods the h2 crate
//! will not send.

use super::support;
use bytes::{Buf, Bytes, BytesMut};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_conduit-proxy");
/// Growth of the proxy's resident memory allowed during an attack.
pub const MAX_RSS_GROWTH_KB: u64 = 48 * 1024;
/// Longest a request of the bystander client may take during an attack.
pub const MAX_BYSTANDER_LATENCY: Duration = Duration::from_secs(2);

/// The proxy binary in explicit-proxy mode in front of `app`.
pub struct Proxy {
    child: Child,
    pub outbound: SocketAddr,
    admin: SocketAddr,
}

impl Proxy {
    pub fn start(app: SocketAddr) -> Proxy {
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
    pub async fn metric(&self, name: &str, part: &str) -> f64 {
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

/// The attacks run one at a time: each floods a proxy of its own as fast as
/// it can, and several at once on a 2-core machine would measure each
/// other's load rather than the proxy's defences.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// A well-behaved client on its own HTTP/2 connection, asking every 50 ms
/// while the attack runs; and a sampler of the proxy's peak memory.
pub struct Watch {
    stop: Arc<AtomicBool>,
    asked: Arc<AtomicU64>,
    client: tokio::task::JoinHandle<(u32, u32, Duration)>,
    peak_kb: Arc<AtomicU64>,
    sampler: std::thread::JoinHandle<()>,
    baseline_kb: u64,
}

impl Watch {
    pub async fn start(proxy: &Proxy) -> Watch {
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
        let asked = Arc::new(AtomicU64::new(0));
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
            let (stop, asked) = (stop.clone(), asked.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed, mut worst) = (0u32, 0u32, Duration::ZERO);
                while !stop.load(Ordering::Relaxed) {
                    asked.fetch_add(1, Ordering::Relaxed);
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
            asked,
            client,
            peak_kb,
            sampler,
            baseline_kb,
        }
    }

    /// Requests the bystander has sent so far (the warm-up's 20 not
    /// counted), to tell its requests from an attacker's in the proxy's
    /// request count.
    pub fn asked(&self) -> u64 {
        self.asked.load(Ordering::Relaxed)
    }

    /// Stops watching and checks the bystander and the memory.
    pub async fn check(self, what: &str, proxy: &mut Proxy) {
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
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const HEADERS: u8 = 0x1;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;

pub fn frame(out: &mut Vec<u8>, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[ty, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// HPACK: `:method GET`, `:scheme http`, `:path /` (static table), and
/// `:authority web` (literal, indexed name).
pub const GET_BLOCK: &[u8] = &[0x82, 0x86, 0x84, 0x41, 0x03, b'w', b'e', b'b'];

/// What the server did on an attacking connection.
#[derive(Debug, Default)]
pub struct ServerSide {
    pub goaway: Option<u32>,
    pub closed: bool,
    pub bytes: u64,
}

/// A raw HTTP/2 connection: preface and SETTINGS sent; the server's frames
/// are read (and dropped) by a task that reports GOAWAY and close, unless
/// `read` is false (a client that never reads).
pub async fn raw(
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
pub async fn flood(w: &mut tokio::net::tcp::OwnedWriteHalf, batch: &[u8], total: usize) -> usize {
    let mut sent = 0;
    while sent < total {
        match tokio::time::timeout(Duration::from_secs(1), w.write_all(batch)).await {
            Ok(Ok(())) => sent += batch.len(),
            Ok(Err(_)) | Err(_) => break,
        }
    }
    sent
}
