//! `conduit-scaling-bench` (`cargo xtask bench scaling`): how one
//! `conduit-proxy`'s cost grows with work. Prints Markdown tables and draws
//! a PNG plot; asserts nothing.
//!
//! * `rate`: latency percentiles (open loop, timed from each request's
//!   scheduled send) and the proxy's CPU against the request rate, HTTP/1.1
//!   and HTTP/2, up to saturation (the first rate the proxy does not keep up
//!   with: under 95 % of it served, or errors).
//! * `connections`: the proxy's RSS with 1, 100, 1,000 and 10,000 idle
//!   keep-alive client connections (each made one request and stays open).
//! * `destinations`: RSS with 10, 100 and 1,000 destinations (services, one
//!   endpoint each), once the table is loaded and once each was used.
//! * `endpoints`: RSS with one destination of 10, 100 and 1,000 endpoints,
//!   once loaded and once requests went to them.
//!
//! Client connections reach the proxy through `--outbound-fixed-dst`
//! (rate, connections) or an iptables REDIRECT of 10.123.0.0/16 port 80
//! (destinations, endpoints; needs root). The upstream is one hyper server
//! on 0.0.0.0, so endpoints 127.0.x.y are distinct addresses reaching it.

use anyhow::{Context, Result, bail};
use clap::Parser;
use conduit_bench::loadgen::{self, Protocol, Sample, Target};
use conduit_bench::plot::{self, Line, XyPanel};
use conduit_bench::redirect::Redirect;
use conduit_bench::{procstat, report, server};
use conduit_tests::bins;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(name = "conduit-scaling-bench")]
struct Args {
    /// What to measure: rate, connections, destinations, endpoints.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "rate,connections,destinations,endpoints"
    )]
    what: Vec<String>,
    /// Request rates of the rate sweep (stops after the first saturated one).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "500,1000,2000,4000,8000,12000,16000,24000,32000"
    )]
    rates: Vec<u32>,
    /// Length of each rate step.
    #[arg(long, value_parser = conduit_bench::args::parse_duration, default_value = "3s")]
    duration: Duration,
    /// Protocols of the rate sweep and idle connections: http1, http2.
    #[arg(long, value_delimiter = ',', default_value = "http1,http2")]
    protocols: Vec<String>,
    /// Idle connection counts.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000,10000")]
    connections: Vec<usize>,
    /// Destination and endpoint counts.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    counts: Vec<usize>,
    /// Where the plot is written.
    #[arg(long, default_value = "docs/benchmarks-scaling.png")]
    plot: PathBuf,
}

const SERVICE: &str = "10.123.0.1:80";
const RULE_COMMENT: &str = "conduit-scaling-bench";

fn main() -> Result<()> {
    let args = Args::parse();
    let protocols = conduit_bench::args::protocols(&args.protocols).map_err(anyhow::Error::msg)?;
    raise_nofile();
    let bin = bins::find("conduit-proxy")?;
    let server = server::Server::bind("0.0.0.0:0".parse()?)?;
    let port = server.addr.port();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let load_before = report::load_average();
    let mut out = String::new();
    let mut panels = Vec::new();
    for what in &args.what {
        match what.as_str() {
            "rate" => {
                let (text, mut p) = rate_sweep(&rt, &bin, port, &protocols, &args)?;
                out.push_str(&text);
                panels.append(&mut p);
            }
            "connections" => {
                let (text, p) = idle_connections(&rt, &bin, port, &protocols, &args.connections)?;
                out.push_str(&text);
                panels.push(p);
            }
            "destinations" => {
                let (text, p) = tables(&rt, &bin, port, &args.counts, Shape::Destinations)?;
                out.push_str(&text);
                panels.push(p);
            }
            "endpoints" => {
                let (text, p) = tables(&rt, &bin, port, &args.counts, Shape::Endpoints)?;
                out.push_str(&text);
                panels.push(p);
            }
            other => bail!("unknown --what {other:?} (rate, connections, destinations, endpoints)"),
        }
    }
    drop(server);
    let load = |l: Option<(f64, usize)>| {
        l.map_or("unknown".into(), |(l, n)| format!("{l:.2} on {n} cores"))
    };
    println!();
    println!(
        "{}",
        conduit_bench::args::command_line("conduit-scaling-bench")
    );
    println!(
        "load average before {}, after {}",
        load(load_before),
        load(report::load_average())
    );
    print!("{out}");
    if !panels.is_empty() {
        plot::xy_png(&args.plot, "conduit-proxy: cost against work", &panels, 2)?;
        println!("\nplot: {}", args.plot.display());
    }
    Ok(())
}

/// Room for 10,000 client connections here and in the proxy (inherited).
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        eprintln!("[scaling] could not raise the descriptor limit: {e}");
    }
}

/// A conduit-proxy child process; killed on drop.
struct Proxy {
    child: Child,
    outbound: SocketAddr,
    log: PathBuf,
    _redirect: Option<Redirect>,
}

impl Proxy {
    /// Starts the proxy with `discovery` as its discovery file; `fixed`
    /// sends every outbound connection to [`SERVICE`], otherwise the
    /// iptables REDIRECT brings 10.123.0.0/16:80 to it.
    fn start(bin: &Path, discovery: &str, fixed: bool) -> Result<Proxy> {
        let dir = std::env::temp_dir().join(format!("conduit-scaling-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("discovery.yaml");
        std::fs::write(&file, discovery)?;
        let log = dir.join("proxy.log");
        let port = || -> Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let outbound: SocketAddr = format!("127.0.0.1:{}", port()?).parse()?;
        let admin = port()?;
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--outbound-addrs={outbound}"))
            .arg(format!("--inbound-addrs=127.0.0.1:{}", port()?))
            .arg(format!("--admin-addr=127.0.0.1:{admin}"))
            .arg(format!("--control-addr=127.0.0.1:{}", port()?))
            .arg(format!("--discovery-file={}", file.display()))
            .arg("--log=warn")
            // The allocator setting of a proxy in a pod.
            .env(
                conduit_base::malloc::TUNABLES_VAR,
                conduit_base::malloc::PROXY_TUNABLES,
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        if fixed {
            cmd.arg(format!("--outbound-fixed-dst={SERVICE}"));
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let redirect = if fixed {
            None
        } else {
            Some(Redirect::install(
                "10.123.0.0/16",
                80,
                outbound.port(),
                RULE_COMMENT,
            )?)
        };
        let mut proxy = Proxy {
            child,
            outbound,
            log,
            _redirect: redirect,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(admin) {
            if let Some(status) = proxy.child.try_wait()? {
                bail!("proxy exited ({status}): {}", proxy.log_tail());
            }
            if Instant::now() > deadline {
                bail!("proxy not ready after 30 s: {}", proxy.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(proxy)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss(&self) -> Result<(u64, u64)> {
        Ok((
            procstat::rss_bytes(self.pid())?,
            procstat::rss_anon_bytes(self.pid())?,
        ))
    }

    fn log_tail(&self) -> String {
        conduit_bench::report::log_tail(&self.log, 20)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ready(admin: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", admin)) else {
        return false;
    };
    let mut out = String::new();
    s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_ok()
        && s.read_to_string(&mut out).is_ok()
        && out.starts_with("HTTP/1.1 200")
}

/// Destination `i`'s address and endpoint `j`'s (127.0.0.0/8 reaches the
/// server bound to 0.0.0.0).
fn service_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 123, 0, 1)) + i as u32)
}

fn endpoint_addr(j: usize, port: u16) -> String {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 1, 1)) + j as u32);
    format!("{ip}:{port}")
}

/// A discovery file of `services` destinations with `per` endpoints each.
fn discovery(services: usize, per: usize, port: u16) -> String {
    let mut s = String::from("services:\n");
    for i in 0..services {
        s.push_str(&format!(
            "  - name: svc-{i}.bench.svc.cluster.local:80\n    addresses: [\"{}:80\"]\n    endpoints:\n",
            service_addr(i)
        ));
        for j in 0..per {
            s.push_str(&format!("      - {}\n", endpoint_addr(i * per + j, port)));
        }
    }
    s
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.3}", d.as_secs_f64() * 1e3))
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1024.0 * 1024.0))
}

fn kib_signed(b: f64) -> String {
    format!("{:.1}", b / 1024.0)
}

/// Latency percentiles and CPU against the rate, up to saturation.
fn rate_sweep(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    port: u16,
    protocols: &[Protocol],
    args: &Args,
) -> Result<(String, Vec<XyPanel>)> {
    let mut text = String::from(
        "\n### Latency and CPU against request rate (one proxy, open loop)\n\n\
         | protocol | rate (req/s) | served (req/s) | errors | p50 (ms) | p90 (ms) | p99 (ms) | p99.9 (ms) | proxy CPU (% of a core) | CPU per 1,000 req/s (% of a core) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut panels = Vec::new();
    for &protocol in protocols {
        let proxy = Proxy::start(bin, &discovery(1, 1, port), true)?;
        let target = rt.block_on(async { Target::new(proxy.outbound, protocol) });
        let warm = loadgen::closed_loop(rt.handle(), &target, 1, Duration::from_millis(300));
        if warm.latencies.is_empty() {
            bail!(
                "no request through the proxy succeeded: {}",
                proxy.log_tail()
            );
        }
        let mut lines: Vec<Line> = ["p50", "p99", "p99.9"]
            .iter()
            .map(|l| Line {
                label: (*l).into(),
                points: Vec::new(),
            })
            .collect();
        for &rate in &args.rates {
            eprintln!("[scaling] {} at {rate} req/s", protocol.label());
            let cpu0 = procstat::cpu_time(proxy.pid())?;
            let t0 = Instant::now();
            let s: Sample = loadgen::open_loop(rt.handle(), &target, rate, args.duration);
            let cpu = (procstat::cpu_time(proxy.pid())? - cpu0).as_secs_f64()
                / t0.elapsed().as_secs_f64();
            let served = s.throughput();
            text.push_str(&format!(
                "| {} | {rate} | {served:.0} | {} | {} | {} | {} | {} | {:.1} | {:.2} |\n",
                protocol.label(),
                s.errors,
                ms(s.quantile(0.5)),
                ms(s.quantile(0.9)),
                ms(s.quantile(0.99)),
                ms(s.quantile(0.999)),
                cpu * 100.0,
                cpu * 100.0 / (served / 1000.0).max(1e-9),
            ));
            for (line, q) in lines.iter_mut().zip([0.5, 0.99, 0.999]) {
                if let Some(d) = s.quantile(q) {
                    line.points.push((f64::from(rate), d.as_secs_f64() * 1e3));
                }
            }
            if served < 0.95 * f64::from(rate) || s.errors > 0 {
                text.push_str(&format!(
                    "| {} | saturated at {rate} req/s | | | | | | | | |\n",
                    protocol.label()
                ));
                break;
            }
        }
        panels.push(XyPanel {
            title: format!("{}: latency against rate", protocol.label()),
            x_desc: "offered rate (req/s)".into(),
            y_desc: "latency (ms)".into(),
            log_y: true,
            lines,
        });
    }
    Ok((text, panels))
}

/// RSS with N idle keep-alive client connections (each made one request).
fn idle_connections(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    port: u16,
    protocols: &[Protocol],
    counts: &[usize],
) -> Result<(String, XyPanel)> {
    let mut text = String::from(
        "\n### RSS against idle keep-alive client connections (each made one request)\n\n\
         | protocol | connections | RSS (MiB) | anonymous (MiB) | RSS over no connections, per connection (KiB) |\n\
         |---|---:|---:|---:|---:|\n",
    );
    let mut lines = Vec::new();
    for &protocol in protocols {
        let proxy = Proxy::start(bin, &discovery(1, 1, port), true)?;
        let mut held = Vec::new();
        open_idle(rt, proxy.outbound, protocol, 1, &mut held)?;
        drop(held);
        std::thread::sleep(Duration::from_millis(500));
        let (base, base_anon) = proxy.rss()?;
        text.push_str(&format!(
            "| {} | 0 | {} | {} | |\n",
            protocol.label(),
            mib(base),
            mib(base_anon)
        ));
        let mut held = Vec::new();
        let mut line = Line {
            label: format!("{} RSS (MiB)", protocol.label()),
            points: vec![(0.0, base as f64 / 1048576.0)],
        };
        for &n in counts {
            eprintln!("[scaling] {} idle connections: {n}", protocol.label());
            let more = n.saturating_sub(held.len());
            open_idle(rt, proxy.outbound, protocol, more, &mut held)
                .with_context(|| format!("{n} connections: {}", proxy.log_tail()))?;
            std::thread::sleep(Duration::from_millis(500));
            let (rss, anon) = proxy.rss()?;
            // Measured with every connection still open, or not at all.
            let closed = held.iter().filter(|(_, task)| task.is_finished()).count();
            if closed > 0 {
                bail!(
                    "{closed} of the {n} idle {} connections were closed before the measurement: {}",
                    protocol.label(),
                    proxy.log_tail()
                );
            }
            text.push_str(&format!(
                "| {} | {n} | {} | {} | {} |\n",
                protocol.label(),
                mib(rss),
                mib(anon),
                kib_signed((rss as f64 - base as f64) / n as f64)
            ));
            line.points.push((n as f64, rss as f64 / 1048576.0));
        }
        lines.push(line);
        drop(held);
    }
    Ok((
        text,
        XyPanel {
            title: "RSS against idle connections".into(),
            x_desc: "idle client connections".into(),
            y_desc: "RSS (MiB)".into(),
            log_y: false,
            lines,
        },
    ))
}

/// A client connection kept open: its sender and its connection task.
type Held = (Box<dyn std::any::Any + Send>, tokio::task::JoinHandle<()>);

/// Opens `n` more connections to `addr`, one request each; keeps them.
fn open_idle(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    protocol: Protocol,
    n: usize,
    held: &mut Vec<Held>,
) -> Result<()> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    rt.block_on(async {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..n {
            batch.spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let io = TokioIo::new(stream);
                let req = || {
                    hyper::Request::get("http://bench/")
                        .body(Empty::<bytes::Bytes>::new())
                        .expect("a literal request")
                };
                let out: Held = match protocol {
                    Protocol::Http1 => {
                        let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await?;
                        let task = tokio::spawn(async move {
                            let _ = conn.await;
                        });
                        let resp = tx.send_request(req()).await?;
                        resp.into_body().collect().await?;
                        (Box::new(tx), task)
                    }
                    Protocol::Http2 => {
                        let (mut tx, conn) =
                            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                        let task = tokio::spawn(async move {
                            let _ = conn.await;
                        });
                        let resp = tx.send_request(req()).await?;
                        resp.into_body().collect().await?;
                        (Box::new(tx), task)
                    }
                };
                anyhow::Ok(out)
            });
            // At most 256 handshakes at a time.
            while batch.len() >= 256 {
                if let Some(r) = batch.join_next().await {
                    held.push(r??);
                }
            }
        }
        while let Some(r) = batch.join_next().await {
            held.push(r??);
        }
        anyhow::Ok(())
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// N destinations of one endpoint each.
    Destinations,
    /// One destination of N endpoints.
    Endpoints,
}

/// RSS with N destinations (or endpoints): loaded, then used.
fn tables(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    port: u16,
    counts: &[usize],
    shape: Shape,
) -> Result<(String, XyPanel)> {
    let (what, used) = match shape {
        Shape::Destinations => ("destinations (one endpoint each)", "one request to each"),
        Shape::Endpoints => ("endpoints of one destination", "8 requests per endpoint"),
    };
    let mut text = format!(
        "\n### RSS against {what}\n\n\
         | count | RSS empty table (MiB) | RSS loaded (MiB) | RSS used: {used} (MiB) | anonymous used (MiB) | per item loaded (KiB) | per item used (KiB) |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let empty = {
        let p = Proxy::start(bin, &discovery(1, 1, port), false)?;
        std::thread::sleep(Duration::from_millis(300));
        p.rss()?.0
    };
    let mut loaded_line = Line {
        label: "loaded (MiB)".into(),
        points: Vec::new(),
    };
    let mut used_line = Line {
        label: "used (MiB)".into(),
        points: Vec::new(),
    };
    for &n in counts {
        eprintln!("[scaling] {what}: {n}");
        let file = match shape {
            Shape::Destinations => discovery(n, 1, port),
            Shape::Endpoints => discovery(1, n, port),
        };
        let proxy = Proxy::start(bin, &file, false)?;
        std::thread::sleep(Duration::from_millis(300));
        let (loaded, _) = proxy.rss()?;
        let errors = rt.block_on(async {
            let mut errors = 0usize;
            let (targets, each) = match shape {
                Shape::Destinations => (n, 1),
                Shape::Endpoints => (1, 8 * n),
            };
            for i in 0..targets {
                let addr = SocketAddr::new(service_addr(i).into(), 80);
                let t = Target::new(addr, Protocol::Http1);
                for _ in 0..each {
                    if !t.get().await {
                        errors += 1;
                    }
                }
            }
            errors
        });
        if errors > 0 {
            bail!(
                "{errors} requests failed through the proxy: {}",
                proxy.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
        let (rss, anon) = proxy.rss()?;
        text.push_str(&format!(
            "| {n} | {} | {} | {} | {} | {} | {} |\n",
            mib(empty),
            mib(loaded),
            mib(rss),
            mib(anon),
            kib_signed((loaded as f64 - empty as f64) / n as f64),
            kib_signed((rss as f64 - empty as f64) / n as f64),
        ));
        loaded_line
            .points
            .push((n as f64, loaded as f64 / 1048576.0));
        used_line.points.push((n as f64, rss as f64 / 1048576.0));
    }
    Ok((
        text,
        XyPanel {
            title: format!("RSS against {what}"),
            x_desc: match shape {
                Shape::Destinations => "destinations".into(),
                Shape::Endpoints => "endpoints".into(),
            },
            y_desc: "RSS (MiB)".into(),
            log_y: false,
            lines: vec![loaded_line, used_line],
        },
    ))
}
