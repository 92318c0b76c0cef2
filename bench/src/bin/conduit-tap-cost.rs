//! `conduit-tap-cost`: what tapping costs the proxy per request, counted in
//! instructions (valgrind's callgrind), which a busy machine does not blur
//! the way it blurs latency. Issue 14: "the proxy taps only while someone
//! listens (no cost otherwise)".
//!
//! One real `conduit-proxy` under callgrind forwards `N` and then `2N`
//! sequential HTTP/1.1 requests (one keep-alive connection, fixed
//! destination) to a local `conduit-bench` server; the difference of the
//! two runs' instruction totals over `N` is the cost of one request, free of
//! start-up and shutdown. Three cases:
//!
//! * no tap listener;
//! * one listener attached (`GET /tap` on the operator port, read as it
//!   streams) for the whole run;
//! * a listener attached and gone before the requests (the hub is back to
//!   no listener: must cost what the first case costs).
//!
//!     conduit-tap-cost [--requests 400] [--proxy-bin target/release/conduit-proxy]
//!
//! Needs root (the proxy runs as uid 1337: it refuses taps from its own uid)
//! and valgrind.

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The proxy runs as this uid (the mesh's proxy uid).
const PROXY_UID: u32 = 1337;

#[derive(Parser, Debug)]
#[command(name = "conduit-tap-cost")]
struct Args {
    /// N: the runs forward N and 2N requests.
    #[arg(long, default_value_t = 400)]
    requests: u64,
    /// The proxy (default: conduit-proxy next to this program).
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// Cases measured: none, listening, gone (the first is the baseline).
    #[arg(long, value_delimiter = ',', default_value = "none,listening,gone", value_parser = Case::parse)]
    cases: Vec<Case>,
    /// Where callgrind's output files go (default: a temporary directory).
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    NoListener,
    Listening,
    ListenerGone,
}

impl Case {
    fn parse(s: &str) -> Result<Case, String> {
        [Case::NoListener, Case::Listening, Case::ListenerGone]
            .into_iter()
            .find(|c| c.key() == s)
            .ok_or_else(|| format!("{s:?}: none, listening or gone"))
    }
    fn label(self) -> &'static str {
        match self {
            Case::NoListener => "no tap listener",
            Case::Listening => "one tap listener",
            Case::ListenerGone => "a listener came and went",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Case::NoListener => "none",
            Case::Listening => "listening",
            Case::ListenerGone => "gone",
        }
    }
}

/// Instructions callgrind counted (`summary:` or `totals:` line).
fn callgrind_total(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Instructions per request from the totals of a run of `n` and one of `2n`.
fn per_request(total_n: u64, total_2n: u64, n: u64) -> Option<f64> {
    (n > 0 && total_2n >= total_n).then(|| (total_2n - total_n) as f64 / n as f64)
}

fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.1 GET on `conn`; the response's status line and body length.
fn get(conn: &mut BufReader<TcpStream>, host: &str, path: &str) -> Result<u16> {
    write!(
        conn.get_mut(),
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n"
    )?;
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

/// One proxy under callgrind forwarding `n` requests in `case`; the
/// instructions it executed and the tap bytes the listener got.
fn run(bin: &Path, server: SocketAddr, out: &Path, case: Case, n: u64) -> Result<(u64, u64)> {
    let (outbound, inbound, admin, control) =
        (free_port()?, free_port()?, free_port()?, free_port()?);
    let file = out.join(format!("callgrind.{}.{n}", case.key()));
    // As uid 1337, as in a pod: the proxy refuses taps from its own uid.
    let mut child: Child = Command::new("valgrind")
        .uid(PROXY_UID)
        .gid(PROXY_UID)
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", file.display()))
        .arg(bin)
        .args(["--outbound-addrs", &outbound.to_string()])
        .args(["--inbound-addrs", &inbound.to_string()])
        .args(["--admin-addr", &admin.to_string()])
        .args(["--control-addr", &control.to_string()])
        .args(["--service", &format!("bench@10.96.0.1:80={server}")])
        .args(["--outbound-fixed-dst", "10.96.0.1:80"])
        .args(["--log", "warn"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(file.with_extension("log"))?)
        .spawn()
        .context("starting valgrind (apt-get install valgrind)")?;
    let result = (|| {
        wait_for("the proxy's ports", Duration::from_secs(120), || {
            [outbound, control, admin]
                .iter()
                .all(|a| TcpStream::connect(a).is_ok())
                .then_some(())
        })?;
        let mut listener = match case {
            Case::NoListener => None,
            Case::Listening | Case::ListenerGone => Some(Listener::attach(control)?),
        };
        wait_for("the tap listener count", Duration::from_secs(30), || {
            let want = if listener.is_some() { 1.0 } else { 0.0 };
            (metric(admin, "conduit_tap_listeners") == Some(want)).then_some(())
        })?;
        let mut tap_bytes = 0;
        if case == Case::ListenerGone {
            tap_bytes += listener.take().map_or(0, Listener::close);
            // The hub notices a gone listener on its next event.
            let mut c = BufReader::new(
                TcpStream::connect(outbound).context("connecting to nudge the hub")?,
            );
            get(&mut c, "bench", "/nudge")?;
            wait_for("the listener to go", Duration::from_secs(30), || {
                (metric(admin, "conduit_tap_listeners") == Some(0.0)).then_some(())
            })?;
        }
        let mut conn = BufReader::new(
            TcpStream::connect(outbound).context("connecting to the outbound port")?,
        );
        for _ in 0..n {
            let status = get(&mut conn, "bench", "/")?;
            ensure!(status == 200, "HTTP {status} through the proxy");
        }
        drop(conn);
        tap_bytes += listener.map_or(0, Listener::close);
        Ok(tap_bytes)
    })();
    // SIGTERM: the proxy exits cleanly and callgrind writes its totals.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let exited = wait_for("the proxy to exit", Duration::from_secs(60), || {
        child.try_wait().ok().flatten()
    });
    if exited.is_err() {
        let _ = child.kill();
    }
    let tap_bytes = result?;
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("callgrind output {}", file.display()))?;
    let total = callgrind_total(&text).context("no totals in the callgrind output")?;
    Ok((total, tap_bytes))
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
    let tmp;
    let out = match &args.out_dir {
        Some(d) => d.as_path(),
        None => {
            tmp = std::env::temp_dir().join(format!("conduit-tap-cost-{}", std::process::id()));
            tmp.as_path()
        }
    };
    std::fs::create_dir_all(out)?;
    // callgrind, run as the proxy's uid, writes here.
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o777))?;
    let server = conduit_bench::server::Server::start()?;
    let n = args.requests;
    ensure!(!args.cases.is_empty(), "no --cases");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "proxy {} under callgrind, {n} and {} sequential HTTP/1.1 requests per case; load average {}",
        bin.display(),
        2 * n,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut rows = Vec::new();
    for &case in &args.cases {
        let (a, _) = run(&bin, server.addr, out, case, n)?;
        let (b, bytes) = run(&bin, server.addr, out, case, 2 * n)?;
        let per = per_request(a, b, n).context("the 2N run counted fewer instructions")?;
        eprintln!(
            "{}: {a} and {b} instructions, {bytes} tap bytes",
            case.label()
        );
        rows.push((case, per, bytes));
    }
    let base = rows[0].1;
    println!();
    println!("| case | instructions per request | vs no listener | tap bytes streamed (2N run) |");
    println!("| --- | ---: | ---: | ---: |");
    for (case, per, bytes) in &rows {
        println!(
            "| {} | {:.0} | {:+.1}% | {bytes} |",
            case.label(),
            per,
            (per / base - 1.0) * 100.0
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_callgrind_totals() {
        let text = "version: 1\ncmd: x\nevents: Ir\nsummary: 123456\nfn=main\n";
        assert_eq!(callgrind_total(text), Some(123456));
        assert_eq!(callgrind_total("events: Ir\ntotals: 42 7\n"), Some(42));
        assert_eq!(callgrind_total("events: Ir\n"), None);
    }

    #[test]
    fn per_request_is_the_difference_over_n() {
        assert_eq!(per_request(1_000, 3_000, 100), Some(20.0));
        assert_eq!(per_request(3_000, 1_000, 100), None);
        assert_eq!(per_request(1, 2, 0), None);
    }
}
