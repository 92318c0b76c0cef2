//! What mTLS between proxies costs: full TLS 1.3 handshakes (ECDSA P-256,
//! client certificate, SPIFFE identity checks) over loopback, one at a time
//! and concurrently, and the cost of installing a renewed certificate.
//! Prints a Markdown table.
//!
//!     cargo run --release -p conduit-bench --bin conduit-tls-bench -- --handshakes 2000

use anyhow::{Context, Result};
use clap::Parser;
use conduit_proxy_tls::testing::TestCa;
use conduit_proxy_tls::{Alpn, SpiffeId, TlsAcceptor, TlsConnector};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Debug)]
#[command(about = "Measure conduit's mTLS handshake and certificate rotation costs")]
struct Args {
    /// Handshakes per row.
    #[arg(long, default_value_t = 2000)]
    handshakes: usize,
    /// Concurrent clients in the concurrent row.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

const CLIENT: &str = "spiffe://cluster.local/ns/bench/sa/client";
const SERVER: &str = "spiffe://cluster.local/ns/bench/sa/server";

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.handshakes > 0 && args.concurrency > 0,
        "--handshakes and --concurrency must be positive"
    );
    let ca = TestCa::new("bench")?;
    let client_id = SpiffeId::parse(CLIENT)?;
    let server_id = SpiffeId::parse(SERVER)?;
    let client = ca.credentials(&client_id)?;
    let server = ca.credentials(&server_id)?;

    let acceptor = TlsAcceptor::new(server.clone())?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok((mut tls, _)) = acceptor.accept(tcp).await {
                    let mut b = [0u8; 1];
                    if tls.read_exact(&mut b).await.is_ok() {
                        let _ = tls.write_all(&b).await;
                        let _ = tls.flush().await;
                    }
                }
            });
        }
    });
    let connector = TlsConnector::new(client.clone());

    println!("| measurement | n | p50 | p99 | max | rate |");
    println!("|---|---|---|---|---|---|");

    let mut tcp_only = Vec::new();
    for _ in 0..args.handshakes.min(500) {
        let start = Instant::now();
        let tcp = TcpStream::connect(addr).await?;
        drop(tcp);
        tcp_only.push(start.elapsed());
    }
    row("TCP connect only (baseline)", &mut tcp_only, None);

    let mut seq = Vec::with_capacity(args.handshakes);
    let started = Instant::now();
    for i in 0..args.handshakes {
        seq.push(
            one(addr, connector.clone(), server_id.clone())
                .await
                .with_context(|| format!("handshake {i}"))?,
        );
    }
    row(
        "mTLS handshake + 1-byte echo, sequential",
        &mut seq,
        Some(started.elapsed()),
    );

    let started = Instant::now();
    let per_task = args.handshakes.div_ceil(args.concurrency);
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (connector, server_id) = (connector.clone(), server_id.clone());
        tasks.push(tokio::spawn(async move {
            let mut v = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                v.push(one(addr, connector.clone(), server_id.clone()).await?);
            }
            anyhow::Ok(v)
        }));
    }
    let mut conc = Vec::new();
    for t in tasks {
        conc.extend(t.await??);
    }
    row(
        &format!("mTLS handshake, {} concurrent", args.concurrency),
        &mut conc,
        Some(started.elapsed()),
    );

    // Rotation: checking and installing a renewed certificate.
    let mut installs = Vec::new();
    let now = SystemTime::now();
    for _ in 0..args.handshakes.min(500) {
        let (chain, key) = ca.issue(
            CLIENT,
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        )?;
        let start = Instant::now();
        client.install(chain, key)?;
        installs.push(start.elapsed());
    }
    row("certificate install (verify + swap)", &mut installs, None);
    let mut keys = Vec::new();
    for _ in 0..args.handshakes.min(500) {
        let start = Instant::now();
        conduit_proxy_tls::key_and_csr(&client_id)?;
        keys.push(start.elapsed());
    }
    row("new key + CSR", &mut keys, None);
    Ok(())
}

/// TCP connect, handshake and one byte each way.
async fn one(
    addr: std::net::SocketAddr,
    connector: TlsConnector,
    server_id: SpiffeId,
) -> Result<Duration> {
    let start = Instant::now();
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(tcp, &server_id, Alpn::H2).await?;
    tls.write_all(b"x").await?;
    tls.flush().await?;
    let mut b = [0u8; 1];
    tls.read_exact(&mut b).await?;
    Ok(start.elapsed())
}

fn row(name: &str, samples: &mut [Duration], total: Option<Duration>) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let rate = total.map_or_else(
        || "-".to_owned(),
        |t| format!("{:.0}/s", samples.len() as f64 / t.as_secs_f64()),
    );
    println!(
        "| {name} | {} | {} | {} | {} | {rate} |",
        samples.len(),
        fmt(pick(0.5)),
        fmt(pick(0.99)),
        fmt(pick(1.0)),
    );
}

fn fmt(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1000.0)
    }
}
