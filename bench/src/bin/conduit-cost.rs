//! `conduit-cost`: what the proxy costs per request, counted in instructions
//! (valgrind's callgrind), which a busy machine does not blur the way it
//! blurs latency. Issue 12 (cost per request) and issue 14 ("the proxy taps
//! only while someone listens (no cost otherwise)").
//!
//! One real `conduit-proxy` under callgrind forwards `N` and then `2N`
//! requests through its outbound listener (fixed destination, static
//! discovery: the balanced path with metrics, retries and the tap hook) to a
//! local `conduit-bench` server; the difference of the two runs' instruction
//! totals over `N` is the cost of one request, free of start-up and
//! shutdown (see `conduit_bench::cost`). Cases:
//!
//! * `http1`: `h2load --h1`, 4 keep-alive connections, one request at a time
//!   on each;
//! * `http2`: `h2load` (HTTP/2 prior knowledge), 4 connections with 4
//!   concurrent streams each;
//! * `none`, `listening`, `gone`: sequential HTTP/1.1 requests on one
//!   keep-alive connection with no tap listener, with one listener (`GET
//!   /tap` on the operator port, read as it streams) attached for the whole
//!   run, and with a listener attached and gone before the requests (must
//!   cost what `none` costs).
//!
//! ```text
//! conduit-cost [--requests 2000] [--rounds 3] [--cases http1,http2] [--proxy-bin target/release/conduit-proxy]
//! ```
//!
//! Needs root (the proxy runs as uid 1337: it refuses taps from its own
//! uid), valgrind and h2load (`cargo xtask setup` installs both).

use anyhow::{Context, Result, ensure};
use clap::Parser;
use conduit_bench::cost::{CallgrindProxy, H2load, H2loadProtocol, median, per_request, wait_for};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "conduit-cost")]
struct Args {
    /// N: each round runs N and 2N requests.
    #[arg(long, default_value_t = 2000)]
    requests: u64,
    /// Rounds per case; the table shows the median.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The proxy (default: conduit-proxy next to this program).
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// Cases measured: http1, http2, none, listening, gone (the first is the
    /// baseline of the table's last column).
    #[arg(long, value_delimiter = ',', default_value = "http1,http2", value_parser = Case::parse)]
    cases: Vec<Case>,
    /// Where callgrind's output files go (default: a temporary directory);
    /// each run's profile stays there for `callgrind_annotate`.
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Http1,
    Http2,
    NoListener,
    Listening,
    ListenerGone,
}

const CASES: [Case; 5] = [
    Case::Http1,
    Case::Http2,
    Case::NoListener,
    Case::Listening,
    Case::ListenerGone,
];

impl Case {
    fn parse(s: &str) -> Result<Case, String> {
        CASES
            .into_iter()
            .find(|c| c.key() == s)
            .ok_or_else(|| format!("{s:?}: http1, http2, none, listening or gone"))
    }
    fn label(self) -> &'static str {
        match self {
            Case::Http1 => "HTTP/1.1 (h2load --h1 -c 4 -m 1)",
            Case::Http2 => "HTTP/2 (h2load -c 4 -m 4)",
            Case::NoListener => "sequential HTTP/1.1, no tap listener",
            Case::Listening => "sequential HTTP/1.1, one tap listener",
            Case::ListenerGone => "sequential HTTP/1.1, a listener came and went",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Case::Http1 => "http1",
            Case::Http2 => "http2",
            Case::NoListener => "none",
            Case::Listening => "listening",
            Case::ListenerGone => "gone",
        }
    }
    /// The `h2load` shape of the load cases; `None` for the tap cases.
    fn h2load(self) -> Option<H2load> {
        let (protocol, streams) = match self {
            Case::Http1 => (H2loadProtocol::Http1, 1),
            Case::Http2 => (H2loadProtocol::Http2, 4),
            _ => return None,
        };
        Some(H2load {
            protocol,
            connections: 4,
            streams,
        })
    }
}

/// One HTTP/1.1 GET on `conn`; the response's status.
fn get(conn: &mut BufReader<TcpStream>, host: &str, path: &str) -> Result<u16> {
    // One write: `write!` on the socket would send each piece of the format
    // as its own segment, and Nagle's algorithm would hold all but the first
    // until the proxy's delayed ACK (40 ms per request).
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n");
    conn.get_mut().write_all(request.as_bytes())?;
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("status line {line:?}"))?;
    let mut len = 0usize;
    loop {
        line.clear();
        conn.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().context("content-length")?;
        }
    }
    let mut body = vec![0; len];
    conn.read_exact(&mut body)?;
    Ok(status)
}

/// A tap listener: the operator port's `/tap`, read on a thread.
struct Listener {
    stream: TcpStream,
    reader: std::thread::JoinHandle<u64>,
}

impl Listener {
    fn attach(control: SocketAddr) -> Result<Listener> {
        let mut s = TcpStream::connect(control).context("connecting to the operator port")?;
        write!(s, "GET /tap HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        let mut r = BufReader::new(s.try_clone()?);
        let mut line = String::new();
        r.read_line(&mut line)?;
        ensure!(line.contains(" 200 "), "GET /tap answered {line:?}");
        let reader = std::thread::spawn(move || {
            let mut n = 0u64;
            let mut buf = [0u8; 16 * 1024];
            while let Ok(k) = r.read(&mut buf) {
                if k == 0 {
                    break;
                }
                n += k as u64;
            }
            n
        });
        Ok(Listener { stream: s, reader })
    }

    /// Closes the stream; the bytes of events received.
    fn close(self) -> u64 {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.reader.join().unwrap_or(0)
    }
}

fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(admin).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

/// The requests of a tap case: sequential on one connection, with the tap
/// listener as the case wants it; the tap bytes the listener got.
fn tap_requests(proxy: &CallgrindProxy, case: Case, n: u64) -> Result<u64> {
    let ports = proxy.ports;
    let mut listener = match case {
        Case::Listening | Case::ListenerGone => Some(Listener::attach(ports.control)?),
        _ => None,
    };
    wait_for("the tap listener count", Duration::from_secs(30), || {
        let want = if listener.is_some() { 1.0 } else { 0.0 };
        (metric(ports.admin, "conduit_tap_listeners") == Some(want)).then_some(())
    })?;
    let mut tap_bytes = 0;
    if case == Case::ListenerGone {
        tap_bytes += listener.take().map_or(0, Listener::close);
        // The hub notices a gone listener on its next event.
        let mut c = BufReader::new(
            TcpStream::connect(ports.outbound).context("connecting to nudge the hub")?,
        );
        get(&mut c, "bench", "/nudge")?;
        wait_for("the listener to go", Duration::from_secs(30), || {
            (metric(ports.admin, "conduit_tap_listeners") == Some(0.0)).then_some(())
        })?;
    }
    let mut conn = BufReader::new(
        TcpStream::connect(ports.outbound).context("connecting to the outbound port")?,
    );
    for _ in 0..n {
        let status = get(&mut conn, "bench", "/")?;
        ensure!(status == 200, "HTTP {status} through the proxy");
    }
    drop(conn);
    tap_bytes += listener.map_or(0, Listener::close);
    Ok(tap_bytes)
}

/// One proxy under callgrind forwarding `n` requests in `case`; the
/// instructions it executed and the tap bytes a listener got.
fn run(
    bin: &Path,
    server: SocketAddr,
    out: &Path,
    case: Case,
    n: u64,
    round: usize,
) -> Result<(u64, u64)> {
    let file = out.join(format!("callgrind.{}.{round}.{n}", case.key()));
    let mut proxy = CallgrindProxy::start(bin, server, file)?;
    let result = match case.h2load() {
        Some(load) => load.run(proxy.ports.outbound, n).map(|()| 0),
        None => tap_requests(&proxy, case, n),
    };
    match result {
        Ok(tap_bytes) => Ok((proxy.finish()?, tap_bytes)),
        Err(e) => {
            proxy.stop_quietly();
            Err(e)
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let bin = match args.proxy_bin {
        Some(b) => b,
        None => std::env::current_exe()?
            .parent()
            .context("directory of this program")?
            .join("conduit-proxy"),
    };
    ensure!(bin.exists(), "no proxy at {}", bin.display());
    ensure!(!args.cases.is_empty(), "no --cases");
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    let n = args.requests;
    // h2load needs at least one request per connection.
    ensure!(n >= 4, "--requests must be at least 4");
    let tmp;
    let out = match &args.out_dir {
        Some(d) => d.as_path(),
        None => {
            tmp = std::env::temp_dir().join(format!("conduit-cost-{}", std::process::id()));
            tmp.as_path()
        }
    };
    std::fs::create_dir_all(out)?;
    // callgrind, run as the proxy's uid, writes here.
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o777))?;
    let server = conduit_bench::server::Server::start()?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "proxy {} under callgrind, {n} and {} requests per case and round, {} round(s); load average {}",
        bin.display(),
        2 * n,
        args.rounds,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut rows = Vec::new();
    for &case in &args.cases {
        let mut pers = Vec::new();
        let mut bytes = 0;
        for round in 0..args.rounds {
            let (a, _) = run(&bin, server.addr, out, case, n, round)?;
            let (b, tap) = run(&bin, server.addr, out, case, 2 * n, round)?;
            let per = per_request(a, b, n).context("the 2N run counted fewer instructions")?;
            eprintln!(
                "{} round {round}: {a} and {b} instructions, {per:.0} per request, {tap} tap bytes",
                case.label()
            );
            pers.push(per);
            bytes = tap;
        }
        let med = median(&pers).context("no rounds")?;
        let spread = pers.iter().copied().fold(f64::NEG_INFINITY, f64::max)
            - pers.iter().copied().fold(f64::INFINITY, f64::min);
        rows.push((case, med, spread, bytes));
    }
    let base = rows[0].1;
    println!("profiles in {}", out.display());
    println!();
    println!(
        "| case | instructions per request | spread over rounds | vs {} | tap bytes streamed (2N run) |",
        rows[0].0.key()
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (case, per, spread, bytes) in &rows {
        println!(
            "| {} | {per:.0} | {spread:.0} | {:+.1}% | {bytes} |",
            case.label(),
            (per / base - 1.0) * 100.0
        );
    }
    Ok(())
}
